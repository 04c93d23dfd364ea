"""The ``gemini`` provider: Google's Gemini API for Nano Banana images and Veo videos.

Two APIs stand behind one adapter (spec: /work/shared/specs/providers.md, section 2):

* **Images** (Nano Banana ``gemini-2.5-flash-image``, Nano Banana Pro
  ``gemini-3-pro-image``, Nano Banana 2 ``gemini-3.1-flash-image``) come from
  ``POST /v1beta/models/{model}:generateContent``, a synchronous call whose JSON answer carries
  the image inline as base64. There is no server-side job to remember, so :meth:`submit`
  returns a request id at once without calling anything and :meth:`result` makes the call;
  a restart mid-call therefore repeats that call (nothing can be resumed on Google's side).
  One image per call is the documented behaviour, so ``n`` images are ``n`` concurrent calls.
* **Videos** (Veo ``veo-3.1-generate-001`` and kin) are long-running operations:
  :meth:`submit` posts ``:predictLongRunning`` and returns the operation name, :meth:`result`
  polls ``GET /v1beta/{name}`` until ``done`` and downloads the video from the files
  endpoint (or decodes it when it comes inline). After a restart the runner calls
  :meth:`result` with the stored name, so a video is never paid for twice.

Errors are sorted for the runner: HTTP 429 / 5xx / timeouts are transient (429's
``Retry-After`` header, or Google's ``RetryInfo.retryDelay`` in the body, is honoured), other
4xx are permanent with Google's own message, and safety outcomes, which Google reports as
HTTP 200 (``promptFeedback.blockReason``, a candidate's ``finishReason`` such as
``IMAGE_SAFETY``, Veo's ``raiMediaFilteredReasons``), become :class:`ContentPolicyError`.

The API key travels in the ``x-goog-api-key`` header of API requests only: never in a URL
(so it cannot reach a log line), never to a storage host a download is redirected to, and it
is scrubbed from every error message.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from PIL import Image

from adapters.providers._http import (
    DownloadPolicy,
    GaveUpWaiting,
    GenerationLost,
    Hiccups,
    ReferenceImage,
    check_models,
    check_url,
    decode_in_worker,
    download,
    error_from_exception,
    error_from_response,
    provider_client,
    read_reference,
    same_origin,
    scrub,
)
from bot import cpu
from bot.domain import Capability, Stage
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

API_VERSION = "v1beta"

#: Aspect ratios generateContent documents for image output (SDK docstring; 4:5 and 5:4 per
#: third parties). A ratio outside this list is sent as the nearest one.
IMAGE_ASPECT_RATIOS = ("1:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9")
#: Veo on the Gemini API makes landscape or portrait video only.
VIDEO_ASPECT_RATIOS = ("16:9", "9:16")
#: Models that render at 1K only and take no ``imageSize`` (Gemini 3 image models do).
FIXED_SIZE_MODEL_PREFIXES = ("gemini-2.5-",)
#: ``imageSize`` values by the largest long edge they cover, in pixels.
IMAGE_SIZES = ((1024, "1K"), (2048, "2K"), (4096, "4K"))
#: ``generationConfig.seed`` is an int32 on the wire; the core's seeds go up to 2**32 - 1.
WIRE_SEED_MODULUS = 2**31

#: Candidate finish reasons that mean "refused by Google's safety systems" (types.py
#: FinishReason): shown to the person as a policy refusal, never retried on another model.
POLICY_FINISH_REASONS = frozenset(
    {
        "SAFETY",
        "IMAGE_SAFETY",
        "PROHIBITED_CONTENT",
        "IMAGE_PROHIBITED_CONTENT",
        "BLOCKLIST",
        "SPII",
        "RECITATION",
        "IMAGE_RECITATION",
    }
)
#: Finish reasons where the model simply produced no image this time: another attempt (or
#: the next candidate) may well succeed.
RETRYABLE_FINISH_REASONS = frozenset({"NO_IMAGE", "IMAGE_OTHER", "OTHER"})

#: google.rpc codes of a failed operation that a new submission may get past.
TRANSIENT_RPC_CODES = frozenset({2, 4, 8, 10, 13, 14})  # UNKNOWN, DEADLINE_EXCEEDED, ...
RPC_CANCELLED = 1

#: generateContent answers only when the image is done (Nano Banana Pro at 4K can take well
#: over a minute), so its read timeout is at least this, whatever TIERBOT_PROVIDER_TIMEOUT_S.
GENERATE_TIMEOUT_FLOOR_S = 180.0
#: Room for the JSON around inline base64 images when capping a response's size.
JSON_OVERHEAD_BYTES = 1 << 20

#: Instructions that frame the prompt when the model gets a reference image: without them
#: an image model tends to hand the reference back unchanged.
FINAL_INSTRUCTION = (
    "Render a finished, high-quality image from the attached draft, keeping its composition "
    "and subject: {prompt}"
)
UPSCALE_INSTRUCTION = (
    "Reproduce the attached image at a higher resolution. Keep the composition, subject, "
    "colours and any text exactly the same; only add fine detail and sharpness."
)
NEGATIVE_SUFFIX = "\n\nAvoid: {negative}"  # Gemini has no negative prompt field

IMAGE_CAPABILITIES = frozenset(
    {Capability.TEXT_TO_IMAGE, Capability.IMAGE_TO_IMAGE, Capability.UPSCALE}
)
VIDEO_CAPABILITIES = frozenset({Capability.IMAGE_TO_VIDEO, Capability.TEXT_TO_VIDEO})
#: Image types Gemini accepts inline; anything else is converted to PNG first.
INLINE_IMAGE_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class _OperationGone(GenerationLost):
    """A 404 on a Veo operation: expired or never existed."""


@dataclass(frozen=True)
class Reference:
    """An input image, ready to be sent inline."""

    mime: str
    data_b64: str
    width: int
    height: int


class GeminiProvider:
    """Nano Banana images (generateContent) and Veo videos (predictLongRunning).

    Args:
        settings: the key (``GEMINI_API_KEY``), the base URL (``GEMINI_API_URL``), timeouts,
            poll interval, generation deadline and download limits.

    Raises:
        ProviderUnavailable: no API key is set.
    """

    name = "gemini"

    def __init__(self, settings: Settings) -> None:
        key = settings.gemini_api_key.get_secret_value() if settings.gemini_api_key else ""
        if not key.strip():
            raise ProviderUnavailable("not configured (set GEMINI_API_KEY)")
        if not settings.gemini_api_url:
            raise ProviderUnavailable("not configured (set GEMINI_API_URL)")
        self._key = key.strip()
        self._settings = settings
        # GEMINI_API_URL may be given with or without the version segment.
        self._base_url = settings.gemini_api_url.rstrip("/").removesuffix(f"/{API_VERSION}")
        # The key is NOT a default header of the client: httpx would send default headers to
        # every URL, download hosts included. It is added to API requests one by one.
        self._auth = {"x-goog-api-key": self._key}
        self._client = provider_client(settings, self.name, base_url=self._base_url)
        self.hiccups = Hiccups.from_settings(settings, self.name, self._scrub)
        self._policy = DownloadPolicy.from_settings(settings)

    # -- the Provider protocol ---------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> str:
        """Start a generation and return its request id at once.

        For images the id only names the model (generateContent is one synchronous call,
        made by :meth:`result`); for videos it is the Veo operation's name, with the time of
        submission so the generation deadline survives a restart.

        Args:
            request: the generation to start.

        Returns:
            A small JSON object, opaque to the core.

        Raises:
            PermanentError: unsupported capability, unreadable reference, rejected request.
            TransientError: rate limit, server error or timeout while submitting a video.
        """
        if request.capability in IMAGE_CAPABILITIES:
            return json.dumps({"call": "generateContent", "model": request.provider_model})
        if request.capability in VIDEO_CAPABILITIES:
            body = await self._video_body(request)
            answer = await self._api(
                "POST",
                f"/{API_VERSION}/models/{request.provider_model}:predictLongRunning",
                json_body=body,
            )
            name = answer.get("name")
            if not isinstance(name, str) or not _is_operation_name(name):
                raise PermanentError(
                    "Gemini accepted the video request but sent no usable operation name"
                )
            log.info("gemini: job %s started Veo operation %s", request.job_id, name)
            return json.dumps({"operation": name, "submitted_at": round(time.time())})
        what = str(request.capability).replace("-", " ")
        raise PermanentError(f"the gemini provider cannot do {what}")

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Run (images) or wait for (videos) a generation and return its files.

        Args:
            provider_request_id: what :meth:`submit` returned.
            request: the generation.

        Returns:
            Up to ``request.n`` images, or the video(s).

        Raises:
            ContentPolicyError: Google's safety systems refused the prompt or the output.
            PermanentError: bad request or auth, malformed or unreadable output, too large.
            TransientError: the generation failed or timed out; a resubmission may succeed.
        """
        handle = _parse_request_id(provider_request_id)
        operation = handle.get("operation")
        if isinstance(operation, str):
            submitted_at = float(handle.get("submitted_at") or time.time())
            return await self._video_result(operation, submitted_at, request)
        model = str(handle.get("model") or request.provider_model)
        limit = self._settings.max_generation_s
        try:
            async with asyncio.timeout(limit):
                return await self._images(model, request)
        except TimeoutError:
            raise TransientError(f"no image from {model} within {limit:.0f} s") from None

    async def cancel(self, provider_request_id: str) -> None:
        """Ask Google to cancel a Veo operation; best effort, errors are only logged.

        An image call has nothing to cancel on Google's side: the runner stops it by
        cancelling the task that waits for it.
        """
        operation = _parse_request_id(provider_request_id).get("operation")
        if isinstance(operation, str):
            await self._cancel_operation(operation)

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.aclose()

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """``GET /v1beta/models/{id}`` per model: 404 for a shut-down or unknown id; a bad
        key is a 400 ``API_KEY_INVALID`` (or 403 without one)."""
        return await check_models(
            models,
            lambda model: self._client.get(f"/{API_VERSION}/models/{model}", headers=self._auth),
            key_refused=lambda r: r.status_code in (401, 403) or "API_KEY_INVALID" in r.text,
        )

    # -- images ------------------------------------------------------------------------------

    async def _images(self, model: str, request: GenerationRequest) -> list[GeneratedFile]:
        if request.n < 1:
            raise PermanentError(f"cannot make {request.n} images")
        references = await _load_references(request.references)
        parts: list[dict[str, Any]] = [{"text": _image_prompt(request)}]
        parts += [
            {"inlineData": {"mimeType": ref.mime, "data": ref.data_b64}} for ref in references
        ]
        image_config: dict[str, str] = {"aspectRatio": _image_aspect_ratio(request, references)}
        size = _image_size(model, request)
        if size:
            image_config["imageSize"] = size
        # One image per call is the documented behaviour (candidateCount is unverified for
        # image models), so n images are n concurrent calls, each with its own seed.
        try:
            async with asyncio.TaskGroup() as group:
                calls = [
                    group.create_task(
                        self._generate(model, request, parts, image_config, request.seed + i)
                    )
                    for i in range(request.n)
                ]
        except BaseExceptionGroup as failures:
            raise _most_serious(failures) from None
        files = [file for call in calls for file in call.result()]
        return files[: request.n]

    async def _generate(
        self,
        model: str,
        request: GenerationRequest,
        parts: list[dict[str, Any]],
        image_config: dict[str, str],
        seed: int,
    ) -> list[GeneratedFile]:
        body = {
            "contents": [{"role": "user", "parts": parts}],
            "generationConfig": {
                "responseModalities": ["TEXT", "IMAGE"],
                "imageConfig": image_config,
                "seed": seed % WIRE_SEED_MODULUS,
            },
        }
        settings = self._settings
        read_s = min(
            settings.max_generation_s, max(settings.provider_timeout_s, GENERATE_TIMEOUT_FLOOR_S)
        )
        answer = await self._api(
            "POST",
            f"/{API_VERSION}/models/{model}:generateContent",
            json_body=body,
            timeout=httpx.Timeout(read_s, connect=10.0),
            max_bytes=self._policy.max_bytes * 4 // 3 + JSON_OVERHEAD_BYTES,
        )
        inline = _inline_images(answer, model)
        files = []
        for mime, data_b64 in inline:
            data = self._decode_base64(data_b64, what="image")
            files.append(await decode_in_worker(data, mime, expect="image", seed=seed))
        log.debug("gemini: %s made %d image(s) for job %s", model, len(files), request.job_id)
        return files

    # -- videos ------------------------------------------------------------------------------

    async def _video_body(self, request: GenerationRequest) -> dict[str, Any]:
        references = await _load_references(request.references[:1])
        instance: dict[str, Any] = {}
        if request.prompt:
            instance["prompt"] = request.prompt
        if references:
            ref = references[0]
            instance["image"] = {"bytesBase64Encoded": ref.data_b64, "mimeType": ref.mime}
        elif request.capability is Capability.IMAGE_TO_VIDEO:
            raise PermanentError("image-to-video needs an input image")
        # Veo on the Gemini API takes no seed (the SDK refuses it), so none is sent.
        parameters: dict[str, Any] = {
            "aspectRatio": _video_aspect_ratio(request, references),
            "sampleCount": max(1, request.n),
        }
        if request.duration_s:
            parameters["durationSeconds"] = int(request.duration_s)
        if request.negative_prompt:
            parameters["negativePrompt"] = request.negative_prompt
        # Always said: the catalog prices Veo at 720p (1080p for a wanted 1920 px or more).
        big = request.long_edge and request.long_edge >= 1920
        parameters["resolution"] = "1080p" if big else "720p"
        return {"instances": [instance], "parameters": parameters}

    async def _video_result(
        self, operation: str, submitted_at: float, request: GenerationRequest
    ) -> list[GeneratedFile]:
        # The deadline counts from the submission, which may be before a restart.
        left = submitted_at + self._settings.max_generation_s - time.time()
        done = await self._wait_for(operation, self.hiccups.deadline(left))
        samples = _video_samples(done)
        files = []
        for sample in samples[: max(1, request.n)]:
            video = sample.get("video") if isinstance(sample.get("video"), dict) else sample
            encoded = video.get("encodedVideo") or video.get("bytesBase64Encoded")
            uri = video.get("uri")
            if isinstance(encoded, str) and encoded:
                data = self._decode_base64(encoded, what="video")
                mime = str(video.get("encoding") or video.get("mimeType") or "video/mp4")
                files.append(await decode_in_worker(data, mime, expect="video"))
            elif isinstance(uri, str) and uri:
                files.append(await self._download_video(uri))
            else:
                raise PermanentError("Veo finished but its video has neither a URI nor bytes")
        log.info("gemini: Veo operation %s delivered %d video(s)", operation, len(files))
        return files

    async def _wait_for(self, operation: str, deadline: float) -> dict[str, Any]:
        """Poll an operation until it is done; polling hiccups are ridden out (:class:`Hiccups`).

        A 404 (``_OperationGone``: expired or never existed) ends it at once: polling again
        cannot bring it back, and only a new submission (the runner's retry) can.
        """
        settings = self._settings

        async def poll() -> dict[str, Any]:
            return await self._api("GET", f"/{API_VERSION}/{operation}", missing_is_transient=True)

        while True:
            try:
                state = await self.hiccups.through(poll, f"polling {operation}", deadline)
            except GaveUpWaiting as exc:
                raise TransientError(f"Veo {exc.message}") from None
            if state.get("done") is True:  # proto3 omits done=false: missing means running
                return state
            if self.hiccups.clock() >= deadline:
                await self._cancel_operation(operation)
                raise TransientError(f"Veo did not finish within {settings.max_generation_s:.0f} s")
            await self.hiccups.sleep(settings.poll_interval_s)

    async def _download_video(self, uri: str) -> GeneratedFile:
        """Fetch a generated video; the key goes only to the API's own host."""
        if not uri.startswith(("http://", "https://")):
            # A bare file name ("files/abc"): the files endpoint of this API.
            name = uri.strip("/").removeprefix(f"{API_VERSION}/")
            uri = f"{self._base_url}/{API_VERSION}/{name}"
            if ":download" not in name:
                uri += ":download?alt=media"
        if not same_origin(uri, self._base_url):
            return await download(self._client, uri, self._policy, expect="video")
        check_url(uri, self._policy)
        try:
            async with (
                asyncio.timeout(self._policy.timeout_s),
                self._client.stream("GET", uri, headers=self._auth) as response,
            ):
                location = response.headers.get("location")
                if response.is_redirect and location:
                    # The files endpoint may answer with a redirect to a storage host, which
                    # must not see the key: that download goes through the guarded helper.
                    target = str(response.url.join(location))
                else:
                    data = await self._read_capped(response, self._policy.max_bytes)
                    if response.is_error:
                        raise self._error(response, data)
                    content_type = response.headers.get("content-type", "")
                    return await decode_in_worker(
                        data, content_type.split(";")[0].strip(), expect="video"
                    )
        except TimeoutError:
            raise TransientError(
                f"the video download timed out after {self._policy.timeout_s:.0f} s"
            ) from None
        except httpx.HTTPError as exc:
            raise error_from_exception(exc) from None
        log.debug("gemini: video download redirected to %s", urlsplit(target).hostname)
        return await download(self._client, target, self._policy, expect="video")

    async def _cancel_operation(self, operation: str) -> None:
        try:
            await self._api("POST", f"/{API_VERSION}/{operation}:cancel")
            log.info("gemini: asked Google to cancel %s", operation)
        except ProviderError as exc:
            # google.longrunning says a server may not support cancel (UNIMPLEMENTED).
            log.info("gemini: cancel of %s not accepted: %s", operation, exc.message)

    # -- HTTP --------------------------------------------------------------------------------

    async def _api(
        self,
        method: str,
        path: str,
        *,
        json_body: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
        max_bytes: int = JSON_OVERHEAD_BYTES,
        missing_is_transient: bool = False,
    ) -> dict[str, Any]:
        """One API call with the key; its JSON answer, read under a size cap.

        Args:
            method: HTTP method.
            path: path under the base URL.
            json_body: the request body, if any.
            timeout: overrides the client's timeout (generateContent waits for the image).
            max_bytes: the largest answer accepted.
            missing_is_transient: a 404 means "gone, submit again" (an expired operation)
                rather than a bad request: :class:`_OperationGone`, a transient error.
        """
        extra: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
        try:
            async with self._client.stream(
                method, path, json=json_body, headers=self._auth, **extra
            ) as response:
                data = await self._read_capped(response, max_bytes)
                if response.is_error:
                    if missing_is_transient and response.status_code == 404:
                        raise _OperationGone(f"{path} is gone: {self._error(response, data)}")
                    raise self._error(response, data)
        except httpx.HTTPError as exc:
            raise error_from_exception(exc) from None
        if not data.strip():
            return {}  # e.g. the empty answer to a cancel
        try:
            answer = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PermanentError(
                f"Gemini answered {path} with something that is not JSON"
            ) from None
        if not isinstance(answer, dict):
            raise PermanentError(f"Gemini answered {path} with unexpected JSON")
        return answer

    async def _read_capped(self, response: httpx.Response, limit: int) -> bytes:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise _too_large(int(declared), limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _error(self, response: httpx.Response, data: bytes) -> ProviderError:
        """The runner's error class for an error answer, with Google's words minus the key."""
        complete = httpx.Response(
            response.status_code, headers=response.headers, content=data, request=response.request
        )
        error = error_from_response(complete)
        message = self._scrub(error.message)
        if isinstance(error, TransientError):
            retry_after = error.retry_after
            if retry_after is None:
                retry_after = _retry_delay(data)
            return TransientError(message, retry_after=retry_after)
        return PermanentError(message)

    def _scrub(self, text: str) -> str:
        return scrub(text, self._key)

    def _decode_base64(self, text: str, *, what: str) -> bytes:
        limit = self._policy.max_bytes
        if len(text) * 3 // 4 > limit + 3:  # before decoding: do not build a huge buffer
            raise _too_large(len(text) * 3 // 4, limit)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise PermanentError(f"Gemini sent {what} data that is not valid base64") from None
        if len(data) > limit:
            raise _too_large(len(data), limit)
        return data


def create(settings: Settings) -> GeminiProvider:
    """Build the gemini provider.

    Args:
        settings: needs ``GEMINI_API_KEY``; ``GEMINI_API_URL`` has Google's default.

    Returns:
        A new :class:`GeminiProvider`.

    Raises:
        ProviderUnavailable: ``GEMINI_API_KEY`` is not set.
    """
    return GeminiProvider(settings)


# --------------------------------------------------------------------------- request ids


def _parse_request_id(provider_request_id: str) -> dict[str, Any]:
    """The JSON object :meth:`GeminiProvider.submit` returned (a bare operation name too)."""
    try:
        handle = json.loads(provider_request_id)
    except json.JSONDecodeError:
        handle = None
    if isinstance(handle, dict):
        return handle
    if _is_operation_name(provider_request_id):
        return {"operation": provider_request_id}
    raise PermanentError(f"not a gemini request id: {provider_request_id[:80]!r}")


def _is_operation_name(name: str) -> bool:
    """A relative resource name like ``models/veo-3.1-generate-preview/operations/abc``."""
    segments = name.split("/")
    return (
        "/operations/" in f"/{name}"
        and "://" not in name
        and all(segment and segment not in (".", "..") for segment in segments)
    )


# --------------------------------------------------------------------------- requests


async def _load_references(paths: list[Path]) -> list[Reference]:
    return [await _load_reference(Path(path)) for path in paths]


async def _load_reference(path: Path) -> Reference:
    """Read an input image for inline sending; types Gemini may not take become PNG."""
    image, encoded = await asyncio.to_thread(_read_inline, path)  # file I/O, header only
    if encoded is None:
        encoded = await cpu.run(_png_base64, image.data, path.name)  # decodes: a CPU worker
        return Reference("image/png", encoded, image.width, image.height)
    return Reference(image.mime, encoded, image.width, image.height)


def _read_inline(path: Path) -> tuple[ReferenceImage, str | None]:
    """A reference image and, when Gemini takes its type inline, its base64."""
    image = read_reference(path, accept=None)
    if image.format not in INLINE_IMAGE_TYPES:
        return image, None
    return image, base64.b64encode(image.data).decode("ascii")


def _png_base64(data: bytes, name: str) -> str:
    """``data`` re-encoded as PNG, in base64 (a CPU worker: it decodes the image)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            buffer = io.BytesIO()
            image.convert("RGBA" if "A" in image.getbands() else "RGB").save(buffer, "PNG")
    except Exception:
        raise PermanentError(f"reference image {name!r} is not a readable image") from None
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _image_prompt(request: GenerationRequest) -> str:
    if request.capability is Capability.UPSCALE:
        text = UPSCALE_INSTRUCTION
        if request.prompt:
            text += f" The image shows: {request.prompt}"
    elif request.references and request.stage is Stage.FINAL:
        text = FINAL_INSTRUCTION.format(prompt=request.prompt)
    else:
        text = request.prompt
    if request.negative_prompt:
        text += NEGATIVE_SUFFIX.format(negative=request.negative_prompt)
    return text


def _ratio(text: str) -> float:
    try:
        width, height = (float(part) for part in text.split(":"))
    except ValueError:
        raise PermanentError(f"bad aspect ratio {text!r}, expected W:H") from None
    if width <= 0 or height <= 0:
        raise PermanentError(f"bad aspect ratio {text!r}, expected W:H")
    return width / height


def _nearest(ratio: float, choices: tuple[str, ...]) -> str:
    return min(choices, key=lambda choice: abs(math.log(_ratio(choice) / ratio)))


def _image_aspect_ratio(request: GenerationRequest, references: list[Reference]) -> str:
    """The request's ratio; with a reference, the reference's (a final keeps its draft's
    shape, and an edit or upscale must not be cropped to the core's default 1:1)."""
    if references and request.has_source:
        return _nearest(references[0].width / references[0].height, IMAGE_ASPECT_RATIOS)
    if request.aspect_ratio in IMAGE_ASPECT_RATIOS:
        return request.aspect_ratio
    return _nearest(_ratio(request.aspect_ratio), IMAGE_ASPECT_RATIOS)


def _video_aspect_ratio(request: GenerationRequest, references: list[Reference]) -> str:
    if references:
        return _nearest(references[0].width / references[0].height, VIDEO_ASPECT_RATIOS)
    return _nearest(_ratio(request.aspect_ratio), VIDEO_ASPECT_RATIOS)


def _image_size(model: str, request: GenerationRequest) -> str | None:
    """``imageSize``: the resolution the catalog chose (sent even when it is the default,
    since it is priced), else one for a wanted long edge; None keeps the default 1K."""
    if request.resolution:
        return request.resolution.upper()
    long_edge = request.long_edge
    if not long_edge or long_edge <= IMAGE_SIZES[0][0]:
        return None
    if model.startswith(FIXED_SIZE_MODEL_PREFIXES):
        return None  # 1K only; asking for more is an INVALID_ARGUMENT
    for edge, size in IMAGE_SIZES:
        if long_edge <= edge:
            return size
    return IMAGE_SIZES[-1][1]


# --------------------------------------------------------------------------- responses


def _inline_images(answer: dict[str, Any], model: str) -> list[tuple[str, str]]:
    """``(mime, base64)`` of every image in a generateContent answer, or the reason for none.

    Raises:
        ContentPolicyError: the prompt or the output was blocked.
        TransientError: the model made no image this time (NO_IMAGE and kin).
        PermanentError: the answer is malformed or holds only text.
    """
    feedback = answer.get("promptFeedback")
    if isinstance(feedback, dict) and feedback.get("blockReason"):
        reason = str(feedback["blockReason"])
        detail = feedback.get("blockReasonMessage")
        raise ContentPolicyError(
            f"Gemini blocked the prompt ({reason})" + (f": {detail}" if detail else "")
        )
    candidates = answer.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        raise PermanentError(f"{model} answered without candidates or an image")
    images: list[tuple[str, str]] = []
    texts: list[str] = []
    reasons: list[tuple[str, str]] = []
    for candidate in candidates:
        if not isinstance(candidate, dict):
            continue
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict) or part.get("thought") is True:
                continue  # Gemini 3 may emit its thinking (and interim images) as thoughts
            blob = part.get("inlineData") or part.get("inline_data")
            if isinstance(blob, dict) and blob.get("data"):
                mime = str(blob.get("mimeType") or blob.get("mime_type") or "")
                images.append((mime, str(blob["data"])))
            elif isinstance(part.get("text"), str):
                texts.append(part["text"].strip())
        reason = str(candidate.get("finishReason") or "")
        reasons.append((reason, str(candidate.get("finishMessage") or "")))
    if images:
        return images
    for reason, message in reasons:
        if reason in POLICY_FINISH_REASONS:
            raise ContentPolicyError(
                f"{model} refused ({reason})" + (f": {message}" if message else "")
            )
    for reason, message in reasons:
        if reason in RETRYABLE_FINISH_REASONS:
            raise TransientError(
                f"{model} made no image ({reason})" + (f": {message}" if message else "")
            )
    said = " ".join(text for text in texts if text)
    if said:
        raise PermanentError(f"{model} answered with text instead of an image: {said[:300]}")
    finish = ", ".join(reason for reason, _ in reasons if reason) or "no finish reason"
    raise PermanentError(f"{model} answered without an image ({finish})")


def _video_samples(operation: dict[str, Any]) -> list[dict[str, Any]]:
    """The generated samples of a finished Veo operation.

    Raises:
        ContentPolicyError: every video was filtered by Google's responsible-AI checks.
        TransientError: the operation failed in a way a resubmission may get past.
        PermanentError: it failed otherwise, or the answer is malformed.
    """
    error = operation.get("error")
    if isinstance(error, dict):
        code = error.get("code")
        message = str(error.get("message") or error.get("status") or "no message")
        text = f"Veo failed: {message}"
        if code == RPC_CANCELLED:
            raise PermanentError("the video was cancelled at Google")
        if code in TRANSIENT_RPC_CODES:
            raise TransientError(text)
        raise PermanentError(text)
    response = operation.get("response")
    if not isinstance(response, dict):
        raise PermanentError("Veo finished without a response or an error")
    body = response.get("generateVideoResponse", response)
    if not isinstance(body, dict):
        raise PermanentError("Veo finished with a malformed response")
    samples = body.get("generatedSamples") or body.get("generatedVideos") or []
    samples = [sample for sample in samples if isinstance(sample, dict)]
    reasons = [str(r) for r in body.get("raiMediaFilteredReasons") or [] if r]
    filtered = body.get("raiMediaFilteredCount") or 0
    if not samples:
        if reasons or filtered:
            why = "; ".join(reasons) or f"{filtered} video(s) filtered"
            raise ContentPolicyError(f"Veo filtered the video: {why}")
        raise PermanentError("Veo finished without a video")
    if reasons or filtered:
        log.info("gemini: Veo filtered some videos: %s", "; ".join(reasons) or filtered)
    return samples


def _retry_delay(data: bytes) -> float | None:
    """Seconds from google.rpc.RetryInfo (``"retryDelay": "59s"``) in an error body."""
    try:
        body = json.loads(data)
        details = body["error"]["details"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        return None
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            delay = str(detail.get("retryDelay", "")).strip().removesuffix("s")
            try:
                return max(0.0, float(delay))
            except ValueError:
                return None
    return None


def _too_large(size: int, limit: int) -> PermanentError:
    return PermanentError(
        f"the provider's output is {size:,} bytes, over the {limit:,}-byte limit "
        "(TIERBOT_MAX_DOWNLOAD_BYTES)"
    )


def _most_serious(failures: BaseExceptionGroup[Any]) -> BaseException:
    """The one error to report when concurrent image calls failed: a policy refusal first,
    then a permanent error, then a transient one; anything else is a bug and surfaces."""
    flat: list[BaseException] = []

    def walk(group: BaseExceptionGroup[Any]) -> None:
        for error in group.exceptions:
            if isinstance(error, BaseExceptionGroup):
                walk(error)
            else:
                flat.append(error)

    walk(failures)
    for kind in (ContentPolicyError, PermanentError, TransientError):
        for error in flat:
            if isinstance(error, kind):
                return error
    return failures
