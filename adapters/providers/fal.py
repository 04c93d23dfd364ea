"""The ``fal`` provider: fal.ai's queue API for drafts, finals, edits, upscales and videos.

Wire format: /work/shared/specs/providers.md §1. One generation is one queue request:

1. :meth:`FalProvider.submit` POSTs the model input to ``{FAL_QUEUE_URL}/{endpoint_id}`` and
   returns at once a small JSON object as the provider request id: fal's ``request_id``, the
   endpoint's ``owner/app`` and the ``status_url`` / ``response_url`` / ``cancel_url`` to use.
   The runner stores it, so after a restart :meth:`FalProvider.result` resumes polling that
   request instead of paying for a new one.
2. :meth:`FalProvider.result` polls the status URL (``IN_QUEUE`` → ``IN_PROGRESS`` →
   ``COMPLETED``; fal has no FAILED state: an infrastructure failure is ``COMPLETED`` with
   ``error``/``error_type``, a model error appears when the result is fetched), fetches the
   result, drops images fal's safety checker flagged, and downloads the outputs under the
   guard of :func:`adapters.providers._http.download`.
3. :meth:`FalProvider.cancel` PUTs the cancel URL, best effort.

fal's URLs are used only when they are on the configured queue origin; otherwise (absent,
or pointing elsewhere) they are rebuilt from ``owner/app`` and the request id, so the key is
never sent to another host. Outputs are downloaded with a second client that carries no key.

The input schema differs per model family (Nano Banana, Z-Image, Seedream, Veo, Seedance,
upscalers; spec §1.6); an unknown endpoint gets a generic input (``prompt``, ``num_images``,
``aspect_ratio``, ``seed``, ``image_url``/``image_urls``), relying on fal apps ignoring fields
they do not declare [GUESS]. Reference images are sent inline as data URIs, as the official
clients' ``encode`` does. With a reference the output keeps the reference's shape (the draft
of a final already has the requested aspect ratio; an edit keeps its source's).

Errors: 429, 5xx and timeouts at submit are :class:`TransientError` (the runner retries and
falls back); the same while *polling* or downloading are ridden out by ``_http.Hiccups`` until
``TIERBOT_MAX_GENERATION_S``. Validation errors and bad keys are :class:`PermanentError` with
fal's message; content-policy refusals (a ``content_policy_violation`` error, or every image
flagged in ``has_nsfw_concepts``) are :class:`ContentPolicyError`. A malformed result is a
:class:`PermanentError` saying what was missing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from adapters.providers._http import (
    TRANSIENT_STATUS,
    DownloadPolicy,
    GaveUpWaiting,
    GenerationLost,
    Hiccups,
    aspect,
    check_models,
    checked,
    download,
    error_from_exception,
    error_from_response,
    image_size,
    json_object,
    provider_client,
    provider_message,
    read_reference,
    same_origin,
    scrub,
)
from bot.domain import RESOLUTION_LONG_EDGE, Capability
from bot.providers import (
    ContentPolicyError,
    GeneratedFile,
    GenerationRequest,
    PermanentError,
    ProviderCheck,
    ProviderError,
    ProviderUnavailable,
    TransientError,
)
from bot.settings import Settings

log = logging.getLogger(__name__)

#: Capabilities whose request must carry a reference image.
NEEDS_REFERENCE = frozenset(
    {Capability.IMAGE_TO_IMAGE, Capability.UPSCALE, Capability.IMAGE_TO_VIDEO}
)
SUPPORTED = NEEDS_REFERENCE | {Capability.TEXT_TO_IMAGE, Capability.TEXT_TO_VIDEO}
VIDEO_CAPABILITIES = frozenset({Capability.IMAGE_TO_VIDEO, Capability.TEXT_TO_VIDEO})

#: fal's documented per-call image range (Nano Banana: 1 to 4; Z-Image: batches up to 4).
MAX_IMAGES_PER_CALL = 4
#: Aspect ratios Nano Banana (all versions) accepts; edits also accept "auto".
NANO_BANANA_RATIOS = frozenset(
    {"21:9", "16:9", "3:2", "4:3", "5:4", "1:1", "4:5", "3:4", "2:3", "9:16"}
)
VEO_RATIOS = frozenset({"16:9", "9:16"})
SEEDANCE_RATIOS = frozenset({"21:9", "16:9", "4:3", "1:1", "3:4", "9:16"})
#: Veo's durations, seconds (sent as "4s"...).
VEO_SECONDS = (4, 6, 8)
#: Reference image types sent inline (fal's clients encode any file; these are the ones the
#: model families above document).
REFERENCE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
#: Pixels per image: Z-Image is priced per megapixel (1 MP default, up to 4 MP); Seedream 4.5
#: needs at least 2560×1440, so it gets ~4 MP.
Z_IMAGE_PIXELS = 1024 * 1024
Z_IMAGE_MAX_PIXELS = 4 * 1024 * 1024
SEEDREAM_PIXELS = 2048 * 2048
#: Upscale factors sent; wider than most upscalers' documented defaults (2) on purpose.
UPSCALE_FACTOR_RANGE = (1.0, 4.0)

_QUEUED_STATES = {"IN_QUEUE", "IN_PROGRESS"}
#: Infrastructure ``error_type`` values that a new submission will not fix.
_PERMANENT_ERROR_TYPES = {"bad_request", "client_cancelled", "client_disconnected"}
# Segments start with a letter or digit: no "..", nothing that changes the URL's path.
_ENDPOINT_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)+", re.ASCII)
_REQUEST_ID = re.compile(r"[A-Za-z0-9][\w.-]{0,127}", re.ASCII)
_POLICY_WORDS = re.compile(
    r"content[ _-]?policy|nsfw|unsafe content|safety (checker|filter|system)|moderation",
    re.IGNORECASE,
)
_NAMESPACES = {"workflows", "comfy"}


class _GenerationTimedOut(Exception):
    """No result within ``max_generation_s`` (queue too slow, or polls kept failing)."""


@dataclass(frozen=True)
class Reference:
    """A reference image ready to send: its data URI and its size."""

    data_uri: str
    width: int
    height: int


@dataclass(frozen=True)
class QueueHandle:
    """What the runner stores as the provider request id: enough to poll and cancel."""

    request_id: str
    app: str
    status_url: str
    response_url: str
    cancel_url: str

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


class FalProvider:
    """fal.ai through its queue API.

    Args:
        settings: ``fal_key``, ``fal_queue_url``, poll and download limits.
    """

    name = "fal"

    def __init__(self, settings: Settings) -> None:
        if settings.fal_key is None or not settings.fal_key.get_secret_value().strip():
            raise ProviderUnavailable("not configured (set FAL_KEY)")
        self._key = settings.fal_key.get_secret_value().strip()
        self._settings = settings
        self._base = settings.fal_queue_url.rstrip("/")
        self._platform = settings.fal_api_url.rstrip("/")
        self._client = provider_client(
            settings,
            "fal",
            base_url=self._base,
            headers={"Authorization": f"Key {self._key}"},
        )
        # Outputs live on fal's CDN: a client without the key, because httpx merges a
        # client's default headers into every request, whatever ``download`` passes.
        self._downloads = provider_client(settings, "fal-downloads")
        self._policy = DownloadPolicy.from_settings(settings)
        self.hiccups = Hiccups.from_settings(settings, self.name, self._scrub)

    # -- the Provider protocol ---------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> str:
        """Queue one generation at fal and return its handle at once.

        Args:
            request: The generation; ``provider_model`` is the fal endpoint id.

        Returns:
            A JSON :class:`QueueHandle` (request id, ``owner/app``, status/result/cancel URLs).

        Raises:
            PermanentError: Unsupported capability, missing or unreadable reference image,
                invalid endpoint id, validation or auth error, malformed answer.
            ContentPolicyError: fal refused the input outright.
            TransientError: 429 (with Retry-After), 5xx, timeout or connection failure.
        """
        endpoint = endpoint_id(request.provider_model)
        if request.capability not in SUPPORTED:
            raise PermanentError(f"the fal adapter cannot do {request.capability.value}")
        references: list[Reference] = []
        if request.capability in NEEDS_REFERENCE:
            references = await load_references(request.references)
        body = model_input(request, endpoint, references)
        response = await checked(self._client.post(f"/{endpoint}", json=body), self._error)
        answer = json_object(response)
        if answer is None:
            raise PermanentError(f"fal answered the submission to {endpoint} with no JSON object")
        request_id = answer.get("request_id")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise PermanentError(
                f"fal's answer to the submission to {endpoint} has no request_id "
                "(is FAL_QUEUE_URL the queue host, https://queue.fal.run?)"
            )
        handle = self._handle(request_id, app_of(endpoint), answer)
        log.info("fal: job %s queued at %s as %s", request.job_id, endpoint, request_id)
        return handle.dumps()

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Poll a queued generation until it is done and return its files.

        Polling hiccups (429, 5xx, gateway errors, timeouts) are retried here with backoff.

        Args:
            provider_request_id: What :meth:`submit` returned (a bare fal request id works
                too: the URLs are then built from ``request.provider_model``).
            request: The generation, for its capability, endpoint and seed.

        Returns:
            The images (PNG/JPEG/WebP) or the video, decoded and checked.

        Raises:
            TransientError: The generation failed on fal's side (runner disconnected, timed
                out...), fal no longer knows the request, or it took longer than
                ``TIERBOT_MAX_GENERATION_S``: a new submission may succeed.
            ContentPolicyError: fal refused the content, or flagged every output as NSFW.
            PermanentError: Validation error, bad key, malformed result, or an output that is
                too large or not an image / video.
        """
        handle = self._parse_handle(provider_request_id, request.provider_model)
        limit = self._settings.max_generation_s
        deadline = self.hiccups.deadline(limit)
        try:
            await self._wait_until_completed(handle, deadline)
            output = await self._fetch_result(handle, deadline)
            return await self._files(output, request, deadline)
        except (_GenerationTimedOut, GaveUpWaiting) as exc:
            await self.cancel(provider_request_id)  # stop paying for what nobody will collect
            raise TransientError(
                f"fal did not finish the generation within {limit:g} s ({exc})"
            ) from None

    async def cancel(self, provider_request_id: str) -> None:
        """Ask fal to cancel a request; failures are logged, never raised."""
        try:
            handle = self._parse_handle(provider_request_id, None)
        except PermanentError as exc:
            log.warning("fal: cannot cancel %r: %s", provider_request_id[:80], exc.message)
            return
        try:
            response = await self._client.put(handle.cancel_url)
        except httpx.HTTPError as exc:
            log.warning("fal: cancel of %s failed: %s", handle.request_id, type(exc).__name__)
            return
        answer = json_object(response) or {}
        log.info(
            "fal: cancel of %s answered HTTP %s %s",
            handle.request_id,
            response.status_code,
            answer.get("status", ""),
        )

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """fal's Platform API (``GET /v1/models?endpoint_id=...``, find mode) per endpoint: an
        endpoint it does not list, or lists as deprecated, is missing."""

        def listed(response: httpx.Response, endpoint: str) -> bool | None:
            answer = json_object(response) or {}
            entries = [m for m in answer.get("models") or [] if isinstance(m, dict)]
            entry = next((m for m in entries if m.get("endpoint_id") == endpoint), None)
            if entry is None:
                return False
            status = (entry.get("metadata") or {}).get("status")
            return status != "deprecated"

        return await check_models(
            models,
            lambda endpoint: self._client.get(
                f"{self._platform}/v1/models", params={"endpoint_id": endpoint}
            ),
            found=listed,
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._downloads.aclose()

    # -- queue handles -----------------------------------------------------------------------

    def _handle(self, request_id: str, app: str, answer: dict[str, Any]) -> QueueHandle:
        """The handle of a request, trusting fal's URLs only on the configured origin."""
        requests = f"{self._base}/{app}/requests/{request_id}"
        built = {
            "status_url": f"{requests}/status",
            "response_url": requests,
            "cancel_url": f"{requests}/cancel",
        }
        urls = {}
        for name, fallback in built.items():
            given = answer.get(name)
            if isinstance(given, str) and same_origin(given, self._base):
                urls[name] = given
            else:
                if given is not None:
                    log.warning("fal: ignoring %s on another origin: %s", name, given[:200])
                urls[name] = fallback
        return QueueHandle(request_id=request_id, app=app, **urls)

    def _parse_handle(self, provider_request_id: str, endpoint: str | None) -> QueueHandle:
        """The handle stored by :meth:`submit`, or one built for a bare fal request id."""
        try:
            stored = json.loads(provider_request_id)
        except json.JSONDecodeError:
            stored = None
        if not isinstance(stored, dict):  # a bare fal request id
            if endpoint is None or not _REQUEST_ID.fullmatch(provider_request_id):
                raise PermanentError(f"not a fal request handle: {provider_request_id[:80]!r}")
            return self._handle(provider_request_id, app_of(endpoint_id(endpoint)), {})
        request_id, app = stored.get("request_id"), stored.get("app")
        if not isinstance(request_id, str) or not _REQUEST_ID.fullmatch(request_id):
            raise PermanentError("the stored fal request handle has no valid request_id")
        if not isinstance(app, str) or not _ENDPOINT_ID.fullmatch(app):
            if endpoint is None:
                raise PermanentError("the stored fal request handle names no app")
            app = app_of(endpoint_id(endpoint))
        # Re-checked at every use: FAL_QUEUE_URL may have changed since the handle was stored.
        return self._handle(request_id, app, stored)

    # -- polling -----------------------------------------------------------------------------

    async def _wait_until_completed(self, handle: QueueHandle, deadline: float) -> None:
        """Poll the status URL until ``COMPLETED``; raise if it completed with an error."""
        unknown_states: set[str] = set()
        while True:
            response = await self._get(
                handle.status_url, deadline, params={"logs": "0"}, model_errors=False
            )
            if response.status_code == 404:
                # Expired (results are kept 1 hour) or never existed: only a new submission
                # can still produce the output.
                raise GenerationLost(f"fal no longer knows request {handle.request_id}")
            if response.is_error:
                raise self._error(response)
            status = json_object(response) or {}
            state = str(status.get("status", "")).upper()
            if state == "COMPLETED":
                if status.get("error"):
                    raise self._failure_from_status(status)
                return
            if state in {"FAILED", "ERROR"}:
                return  # not a documented state: the result call carries the error
            if state in {"CANCELLED", "CANCELED"}:
                raise PermanentError(f"fal request {handle.request_id} was cancelled")
            if state not in _QUEUED_STATES and state not in unknown_states:
                unknown_states.add(state)
                log.warning(
                    "fal: unknown status %r for %s; still polling", state, handle.request_id
                )
            if self.hiccups.clock() + self._settings.poll_interval_s > deadline:
                raise _GenerationTimedOut("still queued or running")
            await self.hiccups.sleep(self._settings.poll_interval_s)

    async def _fetch_result(self, handle: QueueHandle, deadline: float) -> dict[str, Any]:
        response = await self._get(handle.response_url, deadline, model_errors=True)
        if response.is_error:
            raise self._error(response)
        output = json_object(response)
        if output is None:
            raise PermanentError("fal returned a result that is not a JSON object")
        return output

    async def _get(
        self,
        url: str,
        deadline: float,
        *,
        params: dict[str, str] | None = None,
        model_errors: bool,
    ) -> httpx.Response:
        """GET ``url``, its polling hiccups ridden out (:class:`Hiccups`).

        Args:
            url: A status or result URL.
            deadline: On the hiccups' clock: when to give up.
            params: Query parameters.
            model_errors: Whether an error here can be the model's own answer (the result
                URL returns the model's error); then only 429 and gateway errors without any
                fal marker are hiccups, the rest is returned for classification.

        Returns:
            The first response that is not a hiccup.

        Raises:
            GaveUpWaiting: Still failing at the deadline.
        """

        async def get() -> httpx.Response:
            try:
                response = await self._client.get(url, params=params)
            except httpx.HTTPError as exc:
                raise error_from_exception(exc) from None
            if _is_hiccup(response, model_errors=model_errors):
                raise error_from_response(response)
            return response

        return await self.hiccups.through(get, "polling", deadline)

    # -- errors ------------------------------------------------------------------------------

    def _error(self, response: httpx.Response) -> ProviderError:
        """Classify an error answer of fal (submit, status or result)."""
        message = self._scrub(fal_message(response))
        if _is_content_policy(response):
            return ContentPolicyError(message)
        if response.status_code in (401, 403):
            return PermanentError(f"fal refused the credentials (check FAL_KEY): {message}")
        classified = error_from_response(response)
        retryable = response.headers.get("x-fal-retryable", "").lower()
        if retryable == "false":
            return PermanentError(message)
        if retryable == "true" or isinstance(classified, TransientError):
            retry_after = classified.retry_after if isinstance(classified, TransientError) else None
            return TransientError(message, retry_after=retry_after)
        return PermanentError(message)

    def _failure_from_status(self, status: dict[str, Any]) -> ProviderError:
        """A ``COMPLETED`` status carrying ``error``: fal's infrastructure failed the request."""
        error_type = str(status.get("error_type") or "")
        message = self._scrub(
            f"fal: {status.get('error')}" + (f" ({error_type})" if error_type else "")
        )
        if _POLICY_WORDS.search(error_type) or _POLICY_WORDS.search(str(status.get("error"))):
            return ContentPolicyError(message)
        if error_type in _PERMANENT_ERROR_TYPES:
            return PermanentError(message)
        return TransientError(message)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    # -- outputs -----------------------------------------------------------------------------

    async def _files(
        self, output: dict[str, Any], request: GenerationRequest, deadline: float
    ) -> list[GeneratedFile]:
        """Download and decode every output the result names."""
        expect = "video" if request.capability in VIDEO_CAPABILITIES else "image"
        urls = output_urls(output, expect)
        seed = output.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = request.seed if takes_seed(request.provider_model) else None
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(self._fetch(url, expect, seed, deadline)) for url in urls
                ]
        except* (ProviderError, _GenerationTimedOut) as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _fetch(
        self, url: str, expect: str, seed: int | None, deadline: float
    ) -> GeneratedFile:
        """One output, its download retried on CDN hiccups.

        The generation is done and paid for, so a 5xx or timeout of the CDN is retried here
        (until the deadline) rather than raised, which would make the runner submit again.
        """

        async def fetch() -> GeneratedFile:
            return await download(self._downloads, url, self._policy, expect=expect, seed=seed)

        return await self.hiccups.through(fetch, "downloading an output", deadline)


def create(settings: Settings) -> FalProvider:
    """Build the fal provider.

    Raises:
        ProviderUnavailable: ``FAL_KEY`` is not set.
    """
    return FalProvider(settings)


# ------------------------------------------------------------------------- endpoint ids


def endpoint_id(provider_model: str) -> str:
    """A checked fal endpoint id (``owner/app[/path...]``), safe to put in a URL path."""
    endpoint = provider_model.strip().strip("/")
    if not _ENDPOINT_ID.fullmatch(endpoint):
        raise PermanentError(
            f"{provider_model!r} is not a fal endpoint id like fal-ai/nano-banana "
            "(check the catalog)"
        )
    return endpoint


def app_of(endpoint: str) -> str:
    """The ``owner/app`` part of an endpoint id that status, result and cancel URLs use.

    ``fal-ai/nano-banana/edit`` → ``fal-ai/nano-banana``; namespaced ids keep one more segment
    (``workflows/owner/app/...`` → ``workflows/owner/app``).
    """
    segments = endpoint.split("/")
    depth = 3 if segments[0] in _NAMESPACES and len(segments) >= 3 else 2
    return "/".join(segments[:depth])


def takes_seed(endpoint: str) -> bool:
    """Whether the endpoint accepts a seed (Seedream 5, Seedance 2.0 and ESRGAN do not)."""
    return not (
        re.search(r"seedream/v5", endpoint)
        or re.search(r"seedance-2", endpoint)
        or "esrgan" in endpoint
    )


# ---------------------------------------------------------------------------- inputs


async def load_references(paths: list[Path]) -> list[Reference]:
    """Read and check the reference images and turn them into data URIs (in a thread: file
    I/O and base64; the images came from the asset store, checked, so only headers are read).

    Raises:
        PermanentError: None given, a missing file, or a file that is not a readable image
            of a type fal takes.
    """
    if not paths:
        raise PermanentError("this needs a reference image and none was given")
    return [await asyncio.to_thread(_load_reference, Path(path)) for path in paths]


def _load_reference(path: Path) -> Reference:
    image = read_reference(path, REFERENCE_TYPES)
    uri = f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    return Reference(uri, image.width, image.height)


def model_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    """The JSON input of one fal endpoint for ``request`` (schemas: spec §1.6)."""
    for pattern, build in _FAMILIES:
        if re.search(pattern, endpoint):
            return build(request, endpoint, references)
    return _generic_input(request, endpoint, references)


def _images(request: GenerationRequest) -> int:
    """``num_images``: the core splits calls by the catalog's max_images; clamp if it did not."""
    if request.n > MAX_IMAGES_PER_CALL:
        log.warning(
            "fal: %d images asked in one call; fal makes at most %d, sending %d",
            request.n,
            MAX_IMAGES_PER_CALL,
            MAX_IMAGES_PER_CALL,
        )
    return max(1, min(request.n, MAX_IMAGES_PER_CALL))


def _shape(request: GenerationRequest, references: list[Reference]) -> tuple[int, int]:
    """The output's aspect ratio: its source image's when it has one, else the request's."""
    if references and request.has_source:
        return references[0].width, references[0].height
    return aspect(request.aspect_ratio)


def _image_body(request: GenerationRequest) -> dict[str, Any]:
    """The fields every fal image model shares: prompt, count, PNG, seed."""
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "num_images": _images(request),
        "output_format": "png",
    }
    if request.seed_accepted:
        body["seed"] = request.seed
    return body


#: How fal spells our resolutions (Nano Banana Pro and 2 take ``resolution``).
FAL_RESOLUTIONS = {"1k": "1K", "2k": "2K", "4k": "4K"}
#: Video resolution sent on every video call: the catalog prices video at 720p, and fal's
#: defaults differ by model (Seedance Pro Fast: 1080p, which costs more).
VIDEO_RESOLUTION = "720p"


def _nano_banana_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    body = _image_body(request)
    if request.resolution:  # fal's default is 1K: a final asked for at 2K must say so
        body["resolution"] = FAL_RESOLUTIONS[request.resolution]
    if references:
        body["image_urls"] = [r.data_uri for r in references]
    if request.has_source:
        body["aspect_ratio"] = "auto"  # keep the source's shape
    elif request.aspect_ratio in NANO_BANANA_RATIOS:
        body["aspect_ratio"] = request.aspect_ratio
    return body


def _z_image_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    body = _image_body(request)
    if references:
        body["image_url"] = references[0].data_uri
    if request.has_source:
        body["image_size"] = "auto"
        return body
    ratio = aspect(request.aspect_ratio)
    pixels = Z_IMAGE_PIXELS
    if request.long_edge:
        pixels = min(Z_IMAGE_MAX_PIXELS, request.long_edge**2 * min(ratio) // max(ratio))
    body["image_size"] = image_size(ratio, pixels)
    return body


def _seedream_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    pixels = SEEDREAM_PIXELS
    if request.resolution:
        pixels = max(pixels, RESOLUTION_LONG_EDGE[request.resolution] ** 2)
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "num_images": _images(request),
        "image_size": image_size(_shape(request, references), pixels),
    }
    if takes_seed(endpoint) and request.seed_accepted:
        body["seed"] = request.seed
    if references:
        body["image_urls"] = [r.data_uri for r in references[-10:]]  # fal keeps the last 10
    return body


def _veo_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    wanted = request.duration_s or VEO_SECONDS[-1]
    seconds = next((s for s in VEO_SECONDS if s >= wanted), VEO_SECONDS[-1])
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "duration": f"{seconds}s",
        "resolution": VIDEO_RESOLUTION,
        "generate_audio": bool(request.audio),  # fal's default is on, at twice the price
    }
    if request.seed_accepted:
        body["seed"] = request.seed
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    if references:
        body["image_url"] = references[0].data_uri
        body["aspect_ratio"] = "auto"
    elif request.aspect_ratio in VEO_RATIOS:
        body["aspect_ratio"] = request.aspect_ratio
    return body


def _seedance_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    if "seedance-2" in endpoint:
        low, high = 4, 15
    elif "v1.5" in endpoint:
        low, high = 4, 12
    else:
        low, high = 2, 12
    seconds = min(high, max(low, request.duration_s or 5))
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "duration": str(seconds),
        "resolution": VIDEO_RESOLUTION,
    }
    if "seedance-2" in endpoint or "v1.5" in endpoint:  # these make sound, on by default
        body["generate_audio"] = bool(request.audio)
    if takes_seed(endpoint) and request.seed_accepted:
        body["seed"] = request.seed
    if references:
        body["image_url"] = references[0].data_uri
        body["aspect_ratio"] = "auto"
    elif request.aspect_ratio in SEEDANCE_RATIOS:
        body["aspect_ratio"] = request.aspect_ratio
    return body


def _upscale_factor(request: GenerationRequest, reference: Reference) -> float:
    low, high = UPSCALE_FACTOR_RANGE
    if not request.long_edge:
        return 2.0
    factor = request.long_edge / max(reference.width, reference.height)
    return round(min(high, max(low, factor)), 2)


def _upscaler_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    source = references[0]
    factor = _upscale_factor(request, source)
    if "esrgan" in endpoint:
        return {"image_url": source.data_uri, "scale": round(factor), "output_format": "png"}
    body: dict[str, Any] = {
        "image_url": source.data_uri,
        "upscale_factor": factor,
        "seed": request.seed,
        "output_format": "png",
    }
    if re.search(r"clarity|creative", endpoint):  # prompt-guided upscalers
        if request.prompt:
            body["prompt"] = request.prompt
        if request.negative_prompt:
            body["negative_prompt"] = request.negative_prompt
    return body


def _generic_input(
    request: GenerationRequest, endpoint: str, references: list[Reference]
) -> dict[str, Any]:
    body: dict[str, Any] = {"prompt": request.prompt, "seed": request.seed}
    if request.capability not in VIDEO_CAPABILITIES:
        body["num_images"] = _images(request)
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    if references:
        # Single-image apps read image_url, multi-image ones image_urls.
        body["image_url"] = references[0].data_uri
        body["image_urls"] = [r.data_uri for r in references]
    else:
        body["aspect_ratio"] = request.aspect_ratio
    if request.duration_s:
        body["duration"] = str(request.duration_s)
    return body


InputBuilder = Callable[[GenerationRequest, str, list[Reference]], dict[str, Any]]
#: Endpoint-id patterns and the input builder of each model family, first match wins.
_FAMILIES: list[tuple[str, InputBuilder]] = [
    (r"nano-banana|gemini-[\w.-]*image", _nano_banana_input),
    (r"z-image", _z_image_input),
    (r"seedream", _seedream_input),
    (r"/veo\d", _veo_input),
    (r"seedance", _seedance_input),
    (r"upscal|esrgan", _upscaler_input),
]


# --------------------------------------------------------------------------- answers


def _is_hiccup(response: httpx.Response, *, model_errors: bool) -> bool:
    """Whether an answer is a passing failure of fal's queue, not the request's outcome."""
    if response.status_code not in TRANSIENT_STATUS:
        return False
    if not model_errors or response.status_code == 429:
        return True
    # The result URL relays the model's own error (with x-fal-request-id or an error type);
    # a gateway error page (nginx, no fal markers, no JSON) says nothing about the request.
    marked = "x-fal-request-id" in response.headers or "x-fal-error-type" in response.headers
    return not marked and json_object(response) is None


def fal_message(response: httpx.Response) -> str:
    """fal's own words for an error: ``detail`` items as ``field: message``, else the usual."""
    body = json_object(response)
    detail = body.get("detail") if body else None
    if isinstance(detail, list) and detail:
        parts = []
        for item in detail[:3]:
            if not isinstance(item, dict):
                parts.append(str(item))
                continue
            location = [str(p) for p in item.get("loc") or [] if p != "body"]
            text = str(item.get("msg") or item.get("type") or "invalid")
            parts.append(f"{'.'.join(location)}: {text}" if location else text)
        return f"HTTP {response.status_code}: {'; '.join(parts)[:300]}"
    return provider_message(response)


def _is_content_policy(response: httpx.Response) -> bool:
    """Whether an error answer is a content-policy refusal (spec §1.3: a 422 whose detail type
    is ``content_policy_violation``; also accepted: the error type header, or the words)."""
    if _POLICY_WORDS.search(response.headers.get("x-fal-error-type", "")):
        return True
    body = json_object(response) or {}
    if _POLICY_WORDS.search(str(body.get("error_type") or "")):
        return True
    detail = body.get("detail")
    items = detail if isinstance(detail, list) else [detail]
    for item in items:
        if isinstance(item, dict):
            if _POLICY_WORDS.search(str(item.get("type") or "")):
                return True
            if _POLICY_WORDS.search(str(item.get("msg") or "")):
                return True
        elif isinstance(item, str) and _POLICY_WORDS.search(item):
            return True
    return False


def output_urls(output: dict[str, Any], expect: str) -> list[str]:
    """The URLs of a result's outputs, without the images fal's safety checker flagged.

    Raises:
        ContentPolicyError: Every image was flagged NSFW.
        PermanentError: The result names no output, or an output without a URL.
    """
    if expect == "video":
        video = output.get("video")
        items = [video] if video is not None else []
        what = "video"
    else:
        images = output.get("images")
        if isinstance(images, list):
            items = list(images)
        elif output.get("image") is not None:  # upscalers answer with one "image"
            items = [output["image"]]
        else:
            items = []
        what = "images"
    urls = []
    for item in items:
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url:
            raise PermanentError(f"fal's result has an output without a URL: {str(item)[:200]}")
        urls.append(url)
    flags = output.get("has_nsfw_concepts")
    if isinstance(flags, bool):
        flags = [flags] * len(urls)
    if isinstance(flags, list) and len(flags) == len(urls) and any(flags):
        kept = [url for url, flagged in zip(urls, flags, strict=True) if not flagged]
        if not kept:
            raise ContentPolicyError("fal's safety checker flagged every output as NSFW")
        log.info("fal: dropped %d output(s) flagged as NSFW", len(urls) - len(kept))
        urls = kept
    if not urls:
        description = output.get("description")
        said = f"; the model said: {str(description)[:200]}" if description else ""
        raise PermanentError(f"fal's result has no {what}{said}")
    return urls
