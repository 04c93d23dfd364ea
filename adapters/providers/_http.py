"""What every cloud provider adapter shares: its HTTP client, error classification, and the
guarded download of outputs.

- :func:`provider_client` builds the ``httpx.AsyncClient`` of one provider: explicit timeouts
  (httpx's default is 5 s), and the provider's request rate from ``TIERBOT_PROVIDER_RATES``
  enforced by an ``aiolimiter`` leaky bucket in a request hook, so polls count too.
- :func:`error_from_response` maps an HTTP error to the runner's classes: 408/409/425/429/5xx
  are transient (429's ``Retry-After`` honoured), other 4xx permanent with the provider's own
  message; :func:`error_from_exception` does the same for timeouts and connection failures.
- :func:`download` fetches an output under guard: https only (plain http only for hosts in
  ``TIERBOT_ALLOW_HTTP_HOSTS`` and ``COMFYUI_URL``'s host), a size cap, a timeout, the content
  type checked, and the bytes decoded (images under Pillow's decompression-bomb limit, videos
  probed with ffmpeg) before anything can enter the asset store.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import tempfile
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
IMAGE_TYPES = {"image/png", "image/jpeg", "image/webp", "image/gif"}
VIDEO_TYPES = {"video/mp4", "video/quicktime", "video/webm"}


def provider_client(
    settings: Settings,
    provider: str,
    *,
    base_url: str = "",
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """The HTTP client of one provider, with timeouts and its rate limit.

    Args:
        settings: for ``provider_timeout_s`` and ``provider_rates``.
        provider: the provider's name (``fal``, ``gemini``...), the key of its rate.
        base_url: the API base.
        headers: auth headers; they are sent only to ``base_url``'s requests made through this
            client, never to download hosts (see :func:`download`).
        transport: for tests that want httpx's ``MockTransport``; normally None.
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
        transport=transport,
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


async def checked(response_or_call: Any) -> httpx.Response:
    """Await an httpx call and raise the runner's error class unless it succeeded."""
    try:
        response: httpx.Response = await response_or_call
    except httpx.HTTPError as exc:
        raise error_from_exception(exc) from None
    if response.is_error:
        raise error_from_response(response)
    return response


@dataclass(frozen=True)
class DownloadPolicy:
    allow_http_hosts: frozenset[str]
    max_bytes: int
    timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings) -> DownloadPolicy:
        hosts = {h.lower() for h in settings.allow_http_hosts}
        if settings.comfyui_url:
            hosts.add((urlsplit(settings.comfyui_url).hostname or "").lower())
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
        url: the output's URL.
        policy: scheme, host, size and time limits.
        expect: ``"image"`` or ``"video"``.
        seed: the seed to record on the file.
        headers: headers for this download only (a ComfyUI behind auth, say).

    Raises:
        PermanentError: refused URL, too large, wrong content type, undecodable.
        TransientError: timeout, connection failure, 5xx.
    """
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
            mime = {
                "PNG": "image/png",
                "JPEG": "image/jpeg",
                "WEBP": "image/webp",
                "GIF": "image/gif",
            }.get(kind)
            if mime is None:
                raise PermanentError(f"the provider sent an unsupported image type {kind}")
            return mime, image.width, image.height
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise PermanentError("the provider sent an image too large to decode safely") from None
    except PermanentError:
        raise
    except Exception:
        raise PermanentError("the provider sent something that is not a readable image") from None


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
