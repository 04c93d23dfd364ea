"""The ``replicate`` provider: image and video models hosted on Replicate (api.replicate.com).

Wire format: ``/work/shared/specs/providers.md`` §3 (replicate-python @ 0110c2c and the
replicate.com docs). One generation goes like this:

1. :meth:`ReplicateProvider.submit` turns the request into a model input, attaches the
   reference images (as ``data:`` URIs up to 1 MB, which Replicate's docs recommend only for
   small files, else uploaded with ``POST /v1/files`` and passed by their ``urls.get``) and
   creates one prediction per wanted image: ``POST /v1/models/{owner}/{name}/predictions`` for
   an official model, ``POST /v1/predictions`` with ``{"version": ...}`` for a pinned version
   (catalog ``provider_model = "owner/name:version"``). No ``Prefer: wait``: the runner must get
   the prediction ids at once. The ids, joined by commas, are the request id the runner stores,
   so after a restart :meth:`~ReplicateProvider.result` polls the same predictions instead of
   paying for new ones.
2. :meth:`~ReplicateProvider.result` polls ``GET /v1/predictions/{id}`` every
   ``poll_interval_s`` until each is ``succeeded``, ``failed`` or ``canceled``, retrying its own
   polling hiccups (429, 5xx, timeouts) with backoff, and gives up after ``max_generation_s``
   (cancelling at Replicate, then :class:`TransientError`).
3. Outputs (a URI string, a list of URIs, or ``data:`` URIs, depending on the model) are
   fetched with :func:`adapters.providers._http.download` through a client that carries no
   token, so the key never travels to ``replicate.delivery``.

Errors: HTTP errors are classified by :func:`~adapters.providers._http.checked` (429 with
``Retry-After`` and 5xx transient; 401, 402, 404, 422 permanent with Replicate's RFC 7807
``detail``). A prediction that ends ``failed`` is a content-policy refusal when its error says
so (``(E005)`` "flagged as sensitive", "NSFW content detected", safety filters) and otherwise
transient: Replicate validates inputs against the model's schema when the prediction is
created (a 422), so what fails later is the model or its machine (E1000 unknown, E1001 out of
memory, E6716 start timeout), where another attempt or another model may well succeed.

Input names differ per model family (``image_input`` list on Nano Banana and Seedream, a
single ``image`` on Veo and Seedance; seeds only where the model takes one): see
:data:`FAMILIES`. Unknown models get the common names (``prompt``, ``aspect_ratio``, ``seed``,
``image``, ``negative_prompt``).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from adapters.providers._http import (
    DownloadPolicy,
    GenerationLost,
    Hiccups,
    aspect,
    check_models,
    checked,
    download,
    error_from_response,
    image_size,
    json_object,
    provider_client,
    read_reference,
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

#: References up to this size go inline as ``data:`` URIs; Replicate's docs recommend data
#: URIs "only if the file is less than 1MB" and the files API (up to 100 MB) above that.
DATA_URI_MAX_BYTES = 1_000_000
#: Largest factor asked of an upscaler (most on Replicate take 2-4; Real-ESRGAN up to 10).
MAX_UPSCALE = 4.0

_VIDEO = frozenset({Capability.IMAGE_TO_VIDEO, Capability.TEXT_TO_VIDEO})
_NEEDS_REFERENCE = frozenset(
    {Capability.IMAGE_TO_IMAGE, Capability.IMAGE_TO_VIDEO, Capability.UPSCALE}
)
SUPPORTED: frozenset[Capability] = frozenset(
    {
        Capability.TEXT_TO_IMAGE,
        Capability.IMAGE_TO_IMAGE,
        Capability.UPSCALE,
        Capability.IMAGE_TO_VIDEO,
        Capability.TEXT_TO_VIDEO,
    }
)
_RUNNING = frozenset({"starting", "processing"})
#: Replicate prediction ids are short lowercase base32 strings; anything else in a stored
#: request id means the row was not written by this adapter.
_PREDICTION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_VERSION_ID = re.compile(r"[0-9a-f]{64}")
#: How Replicate and the models it hosts word a content-policy refusal: Replicate's own
#: "The input or output was flagged as sensitive ... (E005)", cog models' "NSFW content
#: detected", and the safety-filter wording of the Google and ByteDance models.
_POLICY = re.compile(
    r"\bE005\b|nsfw|flagged as sensitive|sensitive content|flagged by (?:the |our )?safety"
    r"|safety (?:filter|system|checker|policy)|content (?:policy|moderation|filter)"
    r"|usage polic|responsible ai|prohibited content|inappropriate content",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ModelFamily:
    """How one family of Replicate models names its inputs (each model has its own schema).

    Attributes:
        prefix: ``owner/name`` prefix of the models in the family (``""`` matches any model).
        images_field: the input that takes reference images.
        images_as_list: whether that input is a list (``image_input``) or a single URI.
        negative_prompt: whether the model takes a ``negative_prompt``.
        match_input_image: whether ``aspect_ratio`` accepts ``match_input_image`` (then used
            whenever a reference is given, so a final keeps its draft's shape).
        duration_field: the input that takes a video's length in seconds.
        resolution_field: the input that takes the catalog's resolution (``resolution`` on
            Nano Banana Pro, ``size`` on Seedream), sent as "1K", "2K" or "4K".
        width_height: the model takes ``width`` and ``height`` and ignores ``aspect_ratio``.
        audio_field: the input that switches a video's sound (sent on every call: priced).
        extra: fixed inputs sent on every call.

    Whether a model takes a seed is a catalog fact (``GenerationRequest.seed_accepted``).
    """

    prefix: str
    images_field: str = "image"
    images_as_list: bool = False
    negative_prompt: bool = True
    match_input_image: bool = False
    duration_field: str = "duration"
    resolution_field: str | None = None
    width_height: bool = False
    audio_field: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


#: Families from the model pages quoted in the spec (§3.6); the first matching prefix wins.
FAMILIES: tuple[ModelFamily, ...] = (
    # google/nano-banana, google/nano-banana-pro: no seed; output_format defaults to jpg, and
    # a final re-rendered from a JPEG draft would be compressed twice.
    ModelFamily(
        "google/nano-banana",
        images_field="image_input",
        images_as_list=True,
        negative_prompt=False,
        match_input_image=True,
        resolution_field="resolution",  # Pro only (default 2K); the catalog sends it there
        extra={"output_format": "png"},
    ),
    # bytedance/seedream-4 (and 4.5): image_input 1-10, aspect_ratio default match_input_image,
    # size 1K/2K/4K (default 2K).
    ModelFamily(
        "bytedance/seedream",
        images_field="image_input",
        images_as_list=True,
        negative_prompt=False,
        match_input_image=True,
        resolution_field="size",
    ),
    # prunaai/z-image-turbo: width and height; aspect_ratio is silently ignored.
    ModelFamily("prunaai/z-image-turbo", negative_prompt=False, width_height=True),
    # google/veo-3.1, veo-3-fast: image (first frame), negative_prompt, seed, duration,
    # resolution (default 1080p), generate_audio.
    ModelFamily("google/veo", audio_field="generate_audio"),
    # bytedance/seedance-2.0 (-fast): image, seed, duration, resolution (720p),
    # generate_audio; no negative prompt. Seedance 1 makes no sound: no such input.
    ModelFamily("bytedance/seedance-2", negative_prompt=False, audio_field="generate_audio"),
    ModelFamily("bytedance/seedance", negative_prompt=False),
)
#: Video resolution sent on every video call (the catalog prices video at 720p; Veo 3.1's
#: default on Replicate is 1080p).
VIDEO_RESOLUTION = "720p"
#: Pixels of a width/height model's image when no resolution is asked (its price is per MP).
DEFAULT_PIXELS = 1024 * 1024
GENERIC = ModelFamily("")


def family_of(provider_model: str) -> ModelFamily:
    """The input naming of a catalog ``provider_model`` (``owner/name`` or ``owner/name:ver``)."""
    name = provider_model.partition(":")[0].lower()
    return next((f for f in FAMILIES if name.startswith(f.prefix)), GENERIC)


@dataclass(frozen=True)
class Reference:
    """A reference image as the model input takes it: a ``data:`` URI or an uploaded file URL."""

    uri: str
    width: int
    height: int


class ReplicateProvider:
    """Runs generations on Replicate predictions; see the module docstring for the protocol."""

    name = "replicate"

    def __init__(self, settings: Settings) -> None:
        """Build the provider's HTTP clients.

        Args:
            settings: ``replicate_api_token`` (required), ``replicate_api_url``, the poll
                interval, the generation time limit and the download guard settings.
        """
        assert settings.replicate_api_token is not None  # create() checks it
        self._token = settings.replicate_api_token.get_secret_value().strip()
        self._api = provider_client(
            settings,
            "replicate",
            base_url=settings.replicate_api_url,
            headers={"Authorization": f"Bearer {self._token}"},
        )
        # Outputs come from another host (replicate.delivery). httpx sends a client's default
        # headers with every request, absolute URLs included, so downloads get their own
        # client without the token. Its rate key is separate: the CDN is not the API.
        self._downloads = provider_client(settings, "replicate-delivery")
        self._policy = DownloadPolicy.from_settings(settings)
        self._poll_interval = settings.poll_interval_s
        self._max_generation = settings.max_generation_s
        self.hiccups = Hiccups.from_settings(settings, self.name, self._scrub)

    # -- the Provider protocol ---------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> str:
        """Create the request's predictions and return their ids at once.

        One prediction per wanted image (``request.n``; a video is always one): no model the
        spec lists returns several independent variants from one call.

        Args:
            request: the generation to start.

        Returns:
            The prediction ids joined by commas, e.g. ``"gm3qorzdhgbfurvjtvhg6dckhu"``.

        Raises:
            PermanentError: unsupported capability, a missing or unreadable reference, a bad
                model name, or Replicate refused the input (401, 402, 404, 422...).
            TransientError: 429 (with its Retry-After), 5xx, timeouts.
        """
        with self._secret_kept():
            return await self._submit(request)

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Poll the predictions until they finish and return their downloaded outputs.

        Args:
            provider_request_id: what :meth:`submit` returned (possibly in an earlier process).
            request: the generation, for the expected output kind and the seeds.

        Returns:
            One file per prediction, in submission order.

        Raises:
            ContentPolicyError: a prediction was refused as sensitive / NSFW content.
            TransientError: a prediction failed or was aborted on Replicate's side, vanished,
                or did not finish within ``max_generation_s``; a new submission may succeed.
            PermanentError: bad auth, a prediction canceled elsewhere, a malformed or
                undecodable output, an output over the size limit.
        """
        with self._secret_kept():
            return await self._result(_prediction_ids(provider_request_id), request)

    async def cancel(self, provider_request_id: str) -> None:
        """Ask Replicate to cancel the predictions (``POST /v1/predictions/{id}/cancel``).

        Best effort: failures are logged, never raised, since the job is cancelled in tierbot
        whatever Replicate answers.

        Args:
            provider_request_id: what :meth:`submit` returned.
        """
        try:
            ids = _prediction_ids(provider_request_id)
        except PermanentError as exc:
            log.warning("replicate: nothing to cancel: %s", exc.message)
            return
        await self._cancel_all(ids)

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """``GET /v1/models/{owner}/{name}`` per model (a pinned version's model)."""
        return await check_models(
            models,
            lambda model: self._api.get(f"/v1/models/{model.partition(':')[0]}"),
        )

    async def aclose(self) -> None:
        """Close both HTTP clients."""
        await self._api.aclose()
        await self._downloads.aclose()

    # -- submit ------------------------------------------------------------------------------

    async def _submit(self, request: GenerationRequest) -> str:
        if request.capability not in SUPPORTED:
            what = str(request.capability).replace("-", " ")
            raise PermanentError(f"the replicate provider cannot do {what}")
        if request.capability in _NEEDS_REFERENCE and not request.references:
            what = str(request.capability).replace("-", " ")
            raise PermanentError(f"{what} on Replicate needs a reference image")
        family = family_of(request.provider_model)
        references = [await self._reference(Path(path)) for path in request.references]
        count = 1 if request.capability in _VIDEO else max(1, request.n)
        created: list[str] = []
        try:
            for index in range(count):
                model_input = build_input(request, family, references, index)
                created.append(await self._create(request.provider_model, model_input))
        except BaseException:
            # A later create failed: the earlier predictions are running and billed, and
            # nobody will ever poll them. Stop them before the runner retries afresh.
            await self._cancel_all(created)
            raise
        log.info(
            "replicate: job %s started prediction(s) %s on %s",
            request.job_id,
            ", ".join(created),
            request.provider_model,
        )
        return ",".join(created)

    async def _create(self, provider_model: str, model_input: dict[str, Any]) -> str:
        path, body = prediction_call(provider_model, model_input)
        response = await checked(self._api.post(path, json=body))
        prediction = _json_object(response, "the new prediction")
        prediction_id = prediction.get("id")
        if not isinstance(prediction_id, str) or not _PREDICTION_ID.fullmatch(prediction_id):
            raise PermanentError("Replicate accepted the prediction but sent no usable id")
        return prediction_id

    async def _reference(self, path: Path) -> Reference:
        image = await asyncio.to_thread(read_reference, path)
        width, height = image.width, image.height
        if len(image.data) <= DATA_URI_MAX_BYTES:
            encoded = base64.b64encode(image.data).decode("ascii")
            return Reference(f"data:{image.mime};base64,{encoded}", width, height)
        response = await checked(
            self._api.post("/v1/files", files={"content": (path.name, image.data, image.mime)})
        )
        uploaded = _json_object(response, "the uploaded file")
        urls = uploaded.get("urls")
        url = urls.get("get") if isinstance(urls, dict) else None
        if not isinstance(url, str) or not url.startswith(("https://", "http://")):
            raise PermanentError("Replicate stored the reference image but sent no URL for it")
        return Reference(url, width, height)

    # -- result ------------------------------------------------------------------------------

    async def _result(self, ids: list[str], request: GenerationRequest) -> list[GeneratedFile]:
        deadline = self.hiccups.deadline(self._max_generation)
        done: dict[str, dict[str, Any]] = {}
        while True:
            for prediction_id in ids:
                if prediction_id in done:
                    continue
                prediction = await self._poll(prediction_id, deadline)
                status = prediction.get("status")
                if status in _RUNNING:
                    continue
                if status == "succeeded":
                    done[prediction_id] = prediction
                    continue
                await self._cancel_all([p for p in ids if p not in done and p != prediction_id])
                raise _ended_without_output(prediction_id, prediction)
            if len(done) == len(ids):
                break
            if self.hiccups.clock() >= deadline:
                await self._cancel_all([p for p in ids if p not in done])
                raise TransientError(
                    f"Replicate did not finish within {self._max_generation:g} s "
                    "(TIERBOT_MAX_GENERATION_S); the prediction was cancelled"
                )
            await self.hiccups.sleep(self._poll_interval)
        expect = "video" if request.capability in _VIDEO else "image"
        urls = [_first_output(prediction_id, done[prediction_id]) for prediction_id in ids]
        # A TaskGroup, not gather: when one download fails the others are cancelled, not
        # left running (and holding their bytes) after the error has gone to the runner.
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [
                    group.create_task(
                        self._fetch(
                            url,
                            expect,
                            request.seed + index if request.seed_accepted else None,
                            deadline,
                        )
                    )
                    for index, url in enumerate(urls)
                ]
        except* ProviderError as failed:
            raise failed.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _poll(self, prediction_id: str, deadline: float) -> dict[str, Any]:
        """One ``GET /v1/predictions/{id}``, its polling hiccups ridden out (:class:`Hiccups`)."""

        def error(response: httpx.Response) -> ProviderError:
            if response.status_code == 404:
                # Replicate forgets API predictions after about an hour: the work is lost,
                # so the runner may as well submit again.
                return GenerationLost(f"Replicate no longer knows prediction {prediction_id}")
            return error_from_response(response)

        async def get() -> dict[str, Any]:
            path = f"/v1/predictions/{quote(prediction_id)}"
            response = await checked(self._api.get(path), error)
            return _json_object(response, f"prediction {prediction_id}")

        return await self.hiccups.through(get, f"polling {prediction_id}", deadline)

    async def _fetch(
        self, url: str, expect: str, seed: int | None, deadline: float
    ) -> GeneratedFile:
        """One output (a URL, or an inline ``data:`` URI), its download retried on CDN
        hiccups: the output is paid for already."""

        async def fetch() -> GeneratedFile:
            return await download(self._downloads, url, self._policy, expect=expect, seed=seed)

        return await self.hiccups.through(fetch, "downloading an output", deadline)

    # -- cancel ------------------------------------------------------------------------------

    async def _cancel_all(self, ids: list[str]) -> None:
        for prediction_id in ids:
            try:
                await checked(self._api.post(f"/v1/predictions/{quote(prediction_id)}/cancel"))
                log.info("replicate: cancelled prediction %s", prediction_id)
            except ProviderError as exc:
                log.warning(
                    "replicate: cancel of %s failed: %s", prediction_id, self._scrub(exc.message)
                )

    # -- secrets -----------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return scrub(text, self._token, "[REPLICATE_API_TOKEN]")

    @contextmanager
    def _secret_kept(self) -> Iterator[None]:
        """Remove the token from any error message (a provider might echo what it was sent)."""
        try:
            yield
        except ProviderError as exc:
            if self._token and self._token in exc.message:
                exc.message = self._scrub(exc.message)
                exc.args = (exc.message,)
            raise


def create(settings: Settings) -> ReplicateProvider:
    """Build the Replicate provider.

    Args:
        settings: needs ``replicate_api_token`` (``REPLICATE_API_TOKEN``).

    Returns:
        A new :class:`ReplicateProvider`.

    Raises:
        ProviderUnavailable: no token is set.
    """
    token = settings.replicate_api_token
    if token is None or not token.get_secret_value().strip():
        raise ProviderUnavailable("not configured (set REPLICATE_API_TOKEN)")
    return ReplicateProvider(settings)


# --------------------------------------------------------------------------- wire helpers


def build_input(
    request: GenerationRequest, family: ModelFamily, references: list[Reference], index: int = 0
) -> dict[str, Any]:
    """The model ``input`` of one prediction.

    Args:
        request: the generation.
        family: the model's input naming.
        references: the request's reference images, already encoded.
        index: which of the request's ``n`` predictions this is (its seed is ``seed + index``).

    Returns:
        The ``input`` object of the create call.
    """
    if request.capability is Capability.UPSCALE:
        source = references[0]
        wanted = request.long_edge or 2 * max(source.width, source.height)
        scale = min(MAX_UPSCALE, max(1.0, round(wanted / max(source.width, source.height, 1), 2)))
        return {"image": source.uri, "scale": scale}
    model_input: dict[str, Any] = {"prompt": request.prompt}
    if references:
        uris = [r.uri for r in references]
        model_input[family.images_field] = uris if family.images_as_list else uris[0]
    if request.capability in _VIDEO:
        model_input["aspect_ratio"] = _video_aspect_ratio(request, references)
        model_input["resolution"] = VIDEO_RESOLUTION
        if family.audio_field:
            model_input[family.audio_field] = bool(request.audio)
        if request.duration_s:
            model_input[family.duration_field] = request.duration_s
    elif family.width_height:
        edge = RESOLUTION_LONG_EDGE.get(request.resolution or "")
        pixels = edge * edge if edge else DEFAULT_PIXELS
        model_input.update(image_size(aspect(request.aspect_ratio), pixels))
    elif request.has_source and family.match_input_image:
        # The core sends the ratio nearest to the reference's (an approximation from its
        # list); the reference's own shape is what a final or an edit should keep exactly.
        model_input["aspect_ratio"] = "match_input_image"
    else:
        model_input["aspect_ratio"] = request.aspect_ratio
    if request.resolution and family.resolution_field:
        model_input[family.resolution_field] = request.resolution.upper()
    if request.seed_accepted:
        model_input["seed"] = request.seed + index
    if family.negative_prompt and request.negative_prompt:
        model_input["negative_prompt"] = request.negative_prompt
    model_input.update(family.extra)
    return model_input


def _video_aspect_ratio(request: GenerationRequest, references: list[Reference]) -> str:
    """16:9 or 9:16, the only video shapes of Veo and Seedance: the first frame's shape wins."""
    if references:
        first = references[0]
        return "16:9" if first.width >= first.height else "9:16"
    return request.aspect_ratio if request.aspect_ratio in ("16:9", "9:16") else "16:9"


def prediction_call(provider_model: str, model_input: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The path and body that create a prediction on ``provider_model``.

    Args:
        provider_model: ``owner/name`` (an official model, always its latest version),
            ``owner/name:<version>`` or a bare 64-hex version id.
        model_input: the ``input`` object.

    Returns:
        ``(path, body)`` for ``POST``.

    Raises:
        PermanentError: the name is neither form.
    """
    name, _, version = provider_model.strip().partition(":")
    if version:
        return "/v1/predictions", {"version": version, "input": model_input}
    if _VERSION_ID.fullmatch(name):
        return "/v1/predictions", {"version": name, "input": model_input}
    owner, slash, model = name.partition("/")
    if not owner or not slash or not model or "/" in model:
        raise PermanentError(
            f"bad Replicate model name {provider_model!r} in the catalog: expected owner/name "
            "or owner/name:version"
        )
    return f"/v1/models/{quote(owner)}/{quote(model)}/predictions", {"input": model_input}


def _prediction_ids(provider_request_id: str) -> list[str]:
    ids = [part.strip() for part in provider_request_id.split(",") if part.strip()]
    if not ids or not all(_PREDICTION_ID.fullmatch(i) for i in ids):
        raise PermanentError(f"{provider_request_id[:80]!r} is not a Replicate prediction id")
    return ids


def _json_object(response: httpx.Response, what: str) -> dict[str, Any]:
    body = json_object(response)
    if body is None:
        raise PermanentError(f"Replicate sent a malformed response for {what} (not a JSON object)")
    return body


def _ended_without_output(prediction_id: str, prediction: dict[str, Any]) -> ProviderError:
    """The error for a prediction that reached a terminal state other than ``succeeded``."""
    status = prediction.get("status")
    error = prediction.get("error")
    reason = " ".join(str(error).split())[:300] if error else ""
    if status == "failed":
        if _POLICY.search(reason):
            return ContentPolicyError(f"Replicate: {reason}")
        return TransientError(f"the prediction failed on Replicate: {reason or 'no reason given'}")
    if status == "canceled":
        return PermanentError(f"prediction {prediction_id} was canceled on Replicate")
    if status == "aborted":  # terminated before it started (e.g. a deadline): not our input
        return TransientError(f"Replicate aborted prediction {prediction_id}")
    return PermanentError(
        f"Replicate sent a malformed prediction {prediction_id}: unknown status {status!r}"
    )


def output_urls(output: Any) -> list[str]:
    """Every file URL in a prediction's ``output``, in order.

    Models return a URI string, a list of them, or (some) an object holding them; outputs may
    also be ``data:`` URIs (replicate-python's ``FileOutput`` accepts both).
    """
    if isinstance(output, str):
        return [output] if output.startswith(("https://", "http://", "data:")) else []
    if isinstance(output, list):
        return [url for item in output for url in output_urls(item)]
    if isinstance(output, dict):
        return [url for value in output.values() for url in output_urls(value)]
    return []


def _first_output(prediction_id: str, prediction: dict[str, Any]) -> str:
    urls = output_urls(prediction.get("output"))
    if not urls:
        raise PermanentError(
            f"Replicate reported prediction {prediction_id} succeeded but sent no output file"
        )
    return urls[0]
