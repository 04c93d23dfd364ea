"""What every cloud provider adapter shares: its HTTP client, error classification, and the
guarded download of outputs.

- :func:`provider_client` builds the ``httpx.AsyncClient`` of one provider: explicit timeouts
  (httpx's default is 5 s), and the provider's request rate from ``TIERBOT_PROVIDER_RATES``
  enforced by an ``aiolimiter`` leaky bucket in a request hook, so polls count too.
- :func:`error_from_response` maps an HTTP error to the runner's classes: 408/409/425/429/5xx
  are transient (429's ``Retry-After`` honoured), other 4xx permanent with the provider's own
  message; :func:`error_from_exception` does the same for timeouts and connection failures.
- :func:`download` fetches an output under guard: https only (plain http only for hosts in
  ``TIERBOT_ALLOW_HTTP_HOSTS``, and for ComfyUI its own ``COMFYUI_URL`` host), a size cap, a
  timeout, the content type checked, and the bytes decoded (images under Pillow's
  decompression-bomb limit, videos probed with ffmpeg) before anything can enter the asset
  store. An inline ``data:`` output goes through the same size cap and decoding.
- :func:`read_reference` reads a reference image from the asset store for sending.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import imageio_ffmpeg
from aiolimiter import AsyncLimiter
from PIL import Image

from bot import cpu
from bot.providers import GeneratedFile, PermanentError, ProviderError, TransientError
from bot.settings import Settings

log = logging.getLogger(__name__)

#: Headers that carry credentials; stripped from downloads to other hosts.
SECRET_HEADERS = {"authorization", "x-goog-api-key", "x-api-key", "x-key", "cookie"}
TRANSIENT_STATUS = {408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529}
#: Pillow's format names of the image types accepted as outputs, and their MIME types.
FORMAT_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
IMAGE_TYPES = set(FORMAT_MIME.values())
VIDEO_TYPES = {"video/mp4", "video/quicktime", "video/webm"}


def provider_client(
    settings: Settings,
    provider: str,
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
) -> httpx.AsyncClient:
    """The HTTP client of one provider, with timeouts and its rate limit.

    Args:
        settings: for ``provider_timeout_s`` and ``provider_rates``.
        provider: the provider's name (``fal``, ``gemini``...), the key of its rate.
        base_url: the API base.
        headers: auth headers; they are sent only to ``base_url``'s requests made through this
            client, never to download hosts (see :func:`download`).
    """
    hooks: dict[str, list[Any]] = {}
    rate = settings.provider_rates.get(provider)
    if rate:
        limiter = AsyncLimiter(max_rate=rate, time_period=1.0)

        async def throttle(request: httpx.Request) -> None:
            await limiter.acquire()

        hooks["request"] = [throttle]
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers or {},
        timeout=httpx.Timeout(settings.provider_timeout_s, connect=10.0),
        event_hooks=hooks,
        follow_redirects=False,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def provider_message(response: httpx.Response) -> str:
    """The provider's own words for an error, from the usual JSON shapes, else the status."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    message = ""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("status") or "")
        elif isinstance(error, str):
            message = error
        detail = body.get("detail")
        if not message and isinstance(detail, str):
            message = detail
        elif not message and isinstance(detail, list) and detail:
            first = detail[0]
            message = str(first.get("msg", first)) if isinstance(first, dict) else str(first)
        message = message or str(body.get("message") or body.get("title") or "")
    text = message or response.reason_phrase or "error"
    return f"HTTP {response.status_code}: {text[:300]}"


def error_from_response(response: httpx.Response) -> ProviderError:
    """The runner's error class for a failed HTTP response."""
    message = provider_message(response)
    if response.status_code in TRANSIENT_STATUS:
        return TransientError(message, retry_after=_retry_after(response))
    return PermanentError(message)


def error_from_exception(exc: httpx.HTTPError) -> ProviderError:
    """Timeouts and connection failures are transient; anything else httpx raises too."""
    kind = type(exc).__name__
    return TransientError(f"{kind} talking to the provider")


async def checked(
    response_or_call: Any,
    classify: Callable[[httpx.Response], ProviderError] = error_from_response,
) -> httpx.Response:
    """Await an httpx call and raise the runner's error class unless it succeeded.

    Args:
        response_or_call: the awaitable httpx call (``client.post(...)``).
        classify: the error for an error answer; a provider with its own words for some
            answers (a content-policy refusal, a rejected workflow) passes its own.
    """
    try:
        response: httpx.Response = await response_or_call
    except httpx.HTTPError as exc:
        raise error_from_exception(exc) from None
    if response.is_error:
        raise classify(response)
    return response


def json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The response's JSON body if it is an object, else None (not JSON, or another type)."""
    try:
        body = response.json()
    except ValueError:  # JSONDecodeError and UnicodeDecodeError both are
        return None
    return body if isinstance(body, dict) else None


def same_origin(url: str, base: str) -> bool:
    """Whether ``url`` has the scheme and host (with port) of ``base``."""
    given, ours = urlsplit(url), urlsplit(base)
    return (given.scheme, given.netloc.lower()) == (ours.scheme, ours.netloc.lower())


def scrub(text: str, secret: str, placeholder: str = "[redacted]") -> str:
    """``text`` with ``secret``, and either half (8 characters or more) of an ``id:secret``
    key, replaced by ``placeholder``."""
    halves = {part for part in secret.split(":") if len(part) >= 8}
    for part in sorted({secret, *halves} - {""}, key=len, reverse=True):
        text = text.replace(part, placeholder)
    return text


@dataclass(frozen=True)
class DownloadPolicy:
    allow_http_hosts: frozenset[str]
    max_bytes: int
    timeout_s: float

    @classmethod
    def from_settings(
        cls, settings: Settings, *, http_hosts: Collection[str] = ()
    ) -> DownloadPolicy:
        """The settings' limits; plain http for ``TIERBOT_ALLOW_HTTP_HOSTS`` and ``http_hosts``
        (a provider's own server, such as ComfyUI's host, for that provider only)."""
        hosts = {h.lower() for h in [*settings.allow_http_hosts, *http_hosts] if h}
        return cls(frozenset(hosts), settings.max_download_bytes, settings.provider_timeout_s)


def check_url(url: str, policy: DownloadPolicy) -> None:
    """Refuse a download URL that is not https (or http to an allowed host)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme == "https" and host:
        return
    if parts.scheme == "http" and host and host in policy.allow_http_hosts:
        return
    raise PermanentError(
        f"refused to download {parts.scheme or 'a'} URL from {host or 'nowhere'}: only https "
        "(or http to a host in TIERBOT_ALLOW_HTTP_HOSTS)"
    )


async def download(
    client: httpx.AsyncClient,
    url: str,
    policy: DownloadPolicy,
    *,
    expect: str,
    seed: int | None = None,
    headers: dict[str, str] | None = None,
) -> GeneratedFile:
    """Fetch one output under guard and return it decoded.

    Args:
        client: an HTTP client; its credential headers go only to its own base URL's host
            (a Gemini file download needs the key), never to a CDN or other host.
        url: the output's URL, or an inline base64 ``data:`` URI (some models answer so).
        policy: scheme, host, size and time limits.
        expect: ``"image"`` or ``"video"``.
        seed: the seed to record on the file.
        headers: headers for this download only (a ComfyUI behind auth, say).

    Raises:
        PermanentError: refused URL, too large, wrong content type, undecodable.
        TransientError: timeout, connection failure, 5xx.
    """
    if url.startswith("data:"):
        mime, data = _data_uri(url, policy)
        return await decode_in_worker(data, mime, expect=expect, seed=seed)
    check_url(url, policy)
    request = client.build_request("GET", url, headers=headers or {})
    if urlsplit(url).hostname != client.base_url.host:
        # httpx merges the client's default headers into every request: an API key must
        # never travel to a CDN or any other host the provider points us at.
        for name in list(request.headers):
            if name.lower() in SECRET_HEADERS and not (headers and name in headers):
                del request.headers[name]
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(policy.timeout_s):
            response = await client.send(request, stream=True, follow_redirects=False)
            try:
                if response.is_error:
                    await response.aread()
                    raise error_from_response(response)
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > policy.max_bytes:
                    raise _too_large(int(declared), policy)
                content_type = response.headers.get("content-type", "").split(";")[0].strip()
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise _too_large(size, policy)
                    chunks.append(chunk)
            finally:
                await response.aclose()
    except TimeoutError:
        raise TransientError(f"download timed out after {policy.timeout_s:.0f} s") from None
    except httpx.HTTPError as exc:
        raise error_from_exception(exc) from None
    return await decode_in_worker(b"".join(chunks), content_type, expect=expect, seed=seed)


def _data_uri(uri: str, policy: DownloadPolicy) -> tuple[str, bytes]:
    """``(mime, bytes)`` of a base64 ``data:`` URI, its size checked before decoding."""
    header, comma, payload = uri.partition(",")
    if not comma or not header.endswith(";base64"):
        raise PermanentError("the provider sent an output data URI that is not base64")
    estimated = len(payload) * 3 // 4
    if estimated > policy.max_bytes:  # before decoding: do not build a huge buffer
        raise _too_large(estimated, policy)
    mime = header.removeprefix("data:").removesuffix(";base64").split(";")[0].strip()
    try:
        return mime, base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise PermanentError("the provider sent an output data URI that does not decode") from None


def _too_large(size: int, policy: DownloadPolicy) -> PermanentError:
    return PermanentError(
        f"the provider's output is {_megabytes(size)}, over the {_megabytes(policy.max_bytes)} "
        "limit (TIERBOT_MAX_DOWNLOAD_BYTES)"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size:,} bytes"


def decode(
    data: bytes, content_type: str, *, expect: str, seed: int | None = None
) -> GeneratedFile:
    """Check and decode bytes claimed to be an image or a video."""
    if expect == "image":
        if content_type and content_type not in IMAGE_TYPES | {
            "application/octet-stream",
            "binary/octet-stream",
        }:
            raise PermanentError(f"expected an image, the provider sent {content_type}")
        mime, width, height = image_info(data)
        return GeneratedFile(data=data, mime=mime, width=width, height=height, seed=seed)
    if content_type and content_type not in VIDEO_TYPES | {
        "application/octet-stream",
        "binary/octet-stream",
    }:
        raise PermanentError(f"expected a video, the provider sent {content_type}")
    width, height, seconds = video_info(data)
    return GeneratedFile(
        data=data, mime="video/mp4", width=width, height=height, duration_s=seconds, seed=seed
    )


def image_info(data: bytes) -> tuple[str, int, int]:
    """``(mime, width, height)`` of an image, fully decoded under the bomb limit.

    Raises:
        PermanentError: not an image, or a decompression bomb.
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes: truncated or hostile data fails here, not later
            kind = (image.format or "").upper()
            mime = FORMAT_MIME.get(kind)
            if mime is None:
                raise PermanentError(f"the provider sent an unsupported image type {kind}")
            return mime, image.width, image.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PermanentError("the provider sent an image too large to decode safely") from None
    except PermanentError:
        raise
    except Exception:
        raise PermanentError("the provider sent something that is not a readable image") from None


@dataclass(frozen=True)
class ReferenceImage:
    """A reference image read for sending to a provider.

    Attributes:
        data: the file's bytes, as stored.
        format: Pillow's name of its type (``PNG``, ``JPEG``...).
        mime: its MIME type; ``application/octet-stream`` for a type outside
            :data:`FORMAT_MIME` (only when :func:`read_reference` was told to accept any).
        width: in pixels.
        height: in pixels.
    """

    data: bytes
    format: str
    mime: str
    width: int
    height: int


def read_reference(path: Path, accept: Collection[str] | None = IMAGE_TYPES) -> ReferenceImage:
    """Read a reference image and its type and size from its header (file I/O: run it in a
    thread). References come from the asset store, where :func:`decode` checked them fully,
    so they are not decoded again.

    Args:
        path: the image file.
        accept: the MIME types the provider takes; None takes any type Pillow recognises.

    Raises:
        PermanentError: the file is missing, unreadable, not an image, or of a type not in
            ``accept``.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"reference image {path.name!r} does not exist") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise PermanentError(f"reference image {path.name!r} could not be read: {reason}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:  # reads the header only
            kind = (image.format or "").upper()
            width, height = image.size
    except Exception:
        raise PermanentError(f"reference image {path.name!r} is not a readable image") from None
    mime = FORMAT_MIME.get(kind, "application/octet-stream")
    if accept is not None and mime not in accept:
        raise PermanentError(f"reference image {path.name!r} is a {kind or 'unknown'} image")
    return ReferenceImage(data=data, format=kind, mime=mime, width=width, height=height)


_STREAM = re.compile(r"Video: (\w+).*?, (\d{2,5})x(\d{2,5})")
_DURATION = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")


def video_info(data: bytes) -> tuple[int, int, float]:
    """``(width, height, seconds)`` of a video, probed with the bundled ffmpeg.

    Raises:
        PermanentError: not a decodable video.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "probe"
        path.write_bytes(data)
        probe = subprocess.run(
            [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    stream = _STREAM.search(probe.stderr)
    duration = _DURATION.search(probe.stderr)
    if stream is None or duration is None:
        raise PermanentError("the provider sent something that is not a readable video")
    hours, minutes, seconds = duration.groups()
    total = int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return int(stream.group(2)), int(stream.group(3)), total


async def decode_in_worker(
    data: bytes, content_type: str, *, expect: str, seed: int | None = None
) -> GeneratedFile:
    """:func:`decode` in a worker process (Pillow and ffmpeg are CPU work)."""
    return await cpu.run(decode, data, content_type, expect=expect, seed=seed)
