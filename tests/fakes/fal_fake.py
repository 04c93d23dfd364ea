"""A fake fal.ai queue API served by aiohttp on 127.0.0.1, for offline tests of the fal adapter.

It follows the wire format of /work/shared/specs/providers.md §1 and its fake-server checklist
(§1.7):

* ``POST /{endpoint_id}`` submits: 200 with ``request_id`` and the ``status_url``,
  ``response_url`` and ``cancel_url`` built on ``/{owner}/{app}/requests/{id}`` (only the first
  two segments of the endpoint id, three for namespaced ``workflows/`` and ``comfy/`` ids).
* ``GET .../requests/{id}/status`` answers 202 ``IN_QUEUE`` (with ``queue_position``), then 202
  ``IN_PROGRESS`` (with ``logs`` when ``logs`` is truthy), then 200 ``COMPLETED`` (with
  ``metrics.inference_time``); an infrastructure failure is ``COMPLETED`` plus ``error`` and
  ``error_type``. There is no FAILED state, as on fal.
* ``GET .../requests/{id}`` returns the model output (schemas of §1.6, by endpoint family) with
  an ``x-fal-request-id`` header, or the model's error (422 ``{"detail": [...]}``).
* ``PUT .../requests/{id}/cancel`` answers 202 ``CANCELLATION_REQUESTED``, 400
  ``ALREADY_COMPLETED`` or 404 ``NOT_FOUND`` (codes partly [GUESS] in the spec).
* Every API call needs ``Authorization: Key <key>``: none is 401, a wrong key 403, both with a
  ``{"detail": ...}`` body ([GUESS] in the spec).
* Outputs are real images (PNG, or JPEG when ``output_format`` asks for it) made with Pillow
  and a real H.264 MP4, served from the fake's own ``/files/`` URLs with real Content-Types.

Scenarios a test can script: :meth:`FakeFal.fail_next` (HTTP errors on one operation, with
``Retry-After`` on 429, optionally shaped as an nginx "ingress" error without
``x-fal-request-id``), :meth:`FakeFal.next_outcome` (content-policy refusal, NSFW-flagged
output, malformed result, oversized or non-image output, infrastructure failure...),
:meth:`FakeFal.hold` / :meth:`FakeFal.release` (requests stay queued), and ``url_style`` (the
submit answer carries fal's URLs, none, or URLs on a foreign origin). Every request is
recorded in :attr:`FakeFal.calls`.

Webhooks (``?fal_webhook=``, checklist item 5) are not implemented: tierbot polls.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import io
import json
import logging
import re
import tempfile
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import imageio_ffmpeg
from aiohttp import web
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

Operation = Literal["submit", "status", "result", "cancel", "file"]
#: How a generation ends. ``ok``: the model output. ``content_policy``: 422 with a
#: ``content_policy_violation`` detail. ``nsfw`` / ``nsfw_some``: 200 with every / the last
#: image flagged in ``has_nsfw_concepts`` (and blacked out, as fal's safety checker does).
#: ``malformed``: 200 with an image that has no ``url``. ``not_image``: the output URL serves
#: an HTML page. ``corrupt``: it serves garbage labelled ``image/png``. ``too_large``: it
#: serves a large (~800 KB) PNG. ``infra_error``: ``COMPLETED`` with ``runner_disconnected``.
#: ``validation_error``: 422 with a pydantic-style ``detail`` list.
Outcome = Literal[
    "ok",
    "content_policy",
    "nsfw",
    "nsfw_some",
    "malformed",
    "not_image",
    "corrupt",
    "too_large",
    "infra_error",
    "validation_error",
]
UrlStyle = Literal["fal", "missing", "foreign"]

_STATUS = re.compile(r"^/(?P<app>.+)/requests/(?P<id>[\w-]+)/status$")
_CANCEL = re.compile(r"^/(?P<app>.+)/requests/(?P<id>[\w-]+)/cancel$")
_RESULT = re.compile(r"^/(?P<app>.+)/requests/(?P<id>[\w-]+)/?$")
_NAMESPACES = {"workflows", "comfy"}
#: Long edge of the images the fake makes: small, so tests stay fast.
_LONG_EDGE = 64
_PRESETS = {
    "square_hd": (1, 1),
    "square": (1, 1),
    "portrait_4_3": (3, 4),
    "portrait_16_9": (9, 16),
    "landscape_4_3": (4, 3),
    "landscape_16_9": (16, 9),
}


@dataclass
class Call:
    """One HTTP request as the fake received it.

    ``op`` is ``submit``, ``status``, ``result``, ``cancel``, ``file`` or ``unknown``; ``body``
    is the parsed JSON body (None when there is none).
    """

    op: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


@dataclass
class FalRequest:
    """One submitted generation and where it is in the queue."""

    request_id: str
    endpoint: str
    app: str
    input: dict[str, Any]
    outcome: Outcome
    state: str = "IN_QUEUE"
    polls: int = 0
    cancelled: bool = False
    files: list[str] = field(default_factory=list)


@dataclass
class _Failure:
    op: Operation
    status: int
    retry_after: float | None
    detail: Any
    error_type: str | None
    ingress: bool


class FakeFal:
    """The fake fal queue API. Use as ``async with FakeFal() as fal:``; ``fal.url`` is the base.

    Attributes:
        key: The only key accepted (``Authorization: Key <key>``).
        calls: Every request received, in order.
        requests: Accepted generations by request id.
        url_style: What the submit answer says about URLs: ``fal`` (status/response/cancel URLs
            on the fake, as fal does), ``missing`` (only ``request_id``) or ``foreign`` (URLs on
            another origin, ``http://localhost:<port>``, that a careful client must not trust).
    """

    def __init__(self, key: str = "fal-test-key-id:fal-test-key-secret") -> None:
        self.key = key
        self.calls: list[Call] = []
        self.requests: dict[str, FalRequest] = {}
        self.url_style: UrlStyle = "fal"
        self._failures: deque[_Failure] = deque()
        self._outcomes: deque[Outcome] = deque()
        self._held = False
        self._files: dict[str, tuple[bytes, str]] = {}
        self._runner: web.AppRunner | None = None
        self.url = ""
        #: Endpoints the Platform API does not list (gone from fal) or lists as deprecated.
        self.missing_endpoints: set[str] = {"fal-ai/veo3/image-to-video"}
        self.deprecated_endpoints: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> FakeFal:
        """Serve on 127.0.0.1 on a free port; sets :attr:`url`."""
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeFal:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scenarios ---------------------------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        op: Operation = "submit",
        times: int = 1,
        retry_after: float | None = None,
        detail: Any = None,
        error_type: str | None = None,
        ingress: bool = False,
    ) -> None:
        """Answer the next ``times`` calls of ``op`` with an HTTP error.

        Args:
            status: The HTTP status.
            op: Which operation fails.
            times: How many calls in a row.
            retry_after: Seconds for a ``Retry-After`` header (429s).
            detail: The ``detail`` of the JSON body; a default message when None.
            error_type: Sent as ``error_type`` and ``X-Fal-Error-Type`` (request errors).
            ingress: Shape the error as fal's nginx gateway does: an HTML body, no
                ``x-fal-request-id`` (spec §1.2, client retry semantics).
        """
        for _ in range(times):
            self._failures.append(_Failure(op, status, retry_after, detail, error_type, ingress))

    def next_outcome(self, outcome: Outcome, times: int = 1) -> None:
        """Make the next ``times`` submitted generations end with ``outcome``."""
        self._outcomes.extend([outcome] * times)

    def hold(self) -> None:
        """Keep every unfinished generation ``IN_QUEUE`` until :meth:`release`."""
        self._held = True

    def release(self) -> None:
        self._held = False

    # -- views for assertions ----------------------------------------------------------------

    def calls_of(self, op: str) -> list[Call]:
        return [c for c in self.calls if c.op == op]

    @property
    def submitted(self) -> list[FalRequest]:
        """Accepted generations, in order."""
        return list(self.requests.values())

    # -- dispatch ----------------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        op = self._operation(request.method, path)
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except json.JSONDecodeError:
            body = raw.decode("utf-8", "replace")
        self.calls.append(
            Call(op, request.method, path, dict(request.query), body, dict(request.headers))
        )
        if op == "file":  # the CDN: no key needed, but it can fail too
            failure = self._take_failure(op)
            if failure is not None:
                return _failure_response(failure)
            return self._file(path.removeprefix("/files/"))
        denied = self._check_auth(request)
        if denied is not None:
            return denied
        if op == "unknown":
            return _json({"detail": "Not Found"}, 404)
        failure = self._take_failure(op)
        if failure is not None:
            return _failure_response(failure)
        if op == "models":
            return self._models(request.query.getall("endpoint_id", []))
        if op == "submit":
            return self._submit(path.strip("/"), body, request)
        match = (_STATUS if op == "status" else _CANCEL if op == "cancel" else _RESULT).match(path)
        assert match is not None
        generation = self.requests.get(match["id"])
        if generation is None or generation.app != match["app"]:
            if op == "cancel":
                return _json({"status": "NOT_FOUND"}, 404)
            return _json({"detail": f"Request {match['id']} not found"}, 404)
        if op == "status":
            return self._status(generation, request)
        if op == "cancel":
            return self._cancel(generation)
        return self._result(generation, request)

    @staticmethod
    def _operation(method: str, path: str) -> str:
        if method == "GET" and path.startswith("/files/"):
            return "file"
        if method == "GET" and path == "/v1/models":
            return "models"
        if method == "POST":
            return "submit"
        if method == "GET" and _STATUS.match(path):
            return "status"
        if method == "PUT" and _CANCEL.match(path):
            return "cancel"
        if method == "GET" and _RESULT.match(path):
            return "result"
        return "unknown"

    def _check_auth(self, request: web.Request) -> web.Response | None:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Key "):
            return _json({"detail": "Missing or malformed Authorization header"}, 401)
        if header.removeprefix("Key ") != self.key:
            return _json({"detail": "Invalid API key"}, 403)
        return None

    def _take_failure(self, op: str) -> _Failure | None:
        for failure in self._failures:
            if failure.op == op:
                self._failures.remove(failure)
                return failure
        return None

    # -- queue operations --------------------------------------------------------------------

    def _submit(self, endpoint: str, body: Any, request: web.Request) -> web.Response:
        if not isinstance(body, dict):
            return _json({"detail": "Request body must be a JSON object"}, 422)
        segments = endpoint.split("/")
        depth = 3 if segments[0] in _NAMESPACES else 2
        if len(segments) < depth:
            return _json({"detail": f"Application {endpoint!r} not found"}, 404)
        request_id = str(uuid.uuid4())
        outcome = self._outcomes.popleft() if self._outcomes else "ok"
        generation = FalRequest(request_id, endpoint, "/".join(segments[:depth]), body, outcome)
        self.requests[request_id] = generation
        return web.json_response(
            {"status": "IN_QUEUE", "request_id": request_id, **self._urls(generation, request)},
            headers={"x-fal-request-id": request_id},
        )

    def _urls(self, generation: FalRequest, request: web.Request) -> dict[str, Any]:
        if self.url_style == "missing":
            return {}
        origin = self.url
        if self.url_style == "foreign":
            origin = self.url.replace("127.0.0.1", "localhost")
        base = f"{origin}/{generation.app}/requests/{generation.request_id}"
        return {
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
            "queue_position": 0,
        }

    def _status(self, generation: FalRequest, request: web.Request) -> web.Response:
        generation.polls += 1
        state = generation.state
        if state != "COMPLETED" and not self._held:
            # Seen once in the queue, once in progress, then done.
            generation.state = {"IN_QUEUE": "IN_PROGRESS", "IN_PROGRESS": "COMPLETED"}[state]
        with_logs = request.query.get("logs", "0").lower() in {"1", "true"}
        body: dict[str, Any] = {
            "status": state,
            "request_id": generation.request_id,
            **self._urls(generation, request),
        }
        body.pop("queue_position", None)
        if state == "IN_QUEUE":
            body["queue_position"] = 0
            return _json(body, 202)
        body["logs"] = (
            [{"message": "step 4/8", "level": "INFO", "source": "USER", "timestamp": _NOW}]
            if with_logs
            else None
        )
        if state == "IN_PROGRESS":
            return _json(body, 202)
        body["metrics"] = {"inference_time": 0.42}
        if generation.cancelled:
            body.update(error="Request was cancelled by the client", error_type="client_cancelled")
        elif generation.outcome == "infra_error":
            body.update(error="Runner disconnected", error_type="runner_disconnected")
        return _json(body, 200)

    def _cancel(self, generation: FalRequest) -> web.Response:
        if generation.state == "COMPLETED":
            return _json({"status": "ALREADY_COMPLETED"}, 400)
        generation.cancelled = True
        generation.state = "COMPLETED"
        return _json({"status": "CANCELLATION_REQUESTED"}, 202)

    def _result(self, generation: FalRequest, request: web.Request) -> web.Response:
        headers = {"x-fal-request-id": generation.request_id}
        if generation.state != "COMPLETED":
            return _json({"detail": "Request is still in progress"}, 400, headers)
        if generation.cancelled:
            return _json({"detail": "Request was cancelled by the client"}, 400, headers)
        outcome = generation.outcome
        if outcome == "content_policy":
            detail = [
                {
                    "loc": ["body", "prompt"],
                    "msg": "The content could not be processed because it contained material "
                    "flagged by a content checker.",
                    "type": "content_policy_violation",
                    "url": "https://docs.fal.ai/errors/#content_policy_violation",
                }
            ]
            return _json({"detail": detail}, 422, {**headers, "X-Fal-Retryable": "false"})
        if outcome == "validation_error":
            detail = [{"loc": ["body", "prompt"], "msg": "field required", "type": "missing"}]
            return _json({"detail": detail}, 422, headers)
        if outcome == "infra_error":
            return _json(
                {"detail": "Runner disconnected", "error_type": "runner_disconnected"},
                503,
                {**headers, "X-Fal-Error-Type": "runner_disconnected"},
            )
        return _json(self._output(generation), 200, headers)

    # -- outputs -----------------------------------------------------------------------------

    def _models(self, endpoints: list[str]) -> web.Response:
        """The Platform API's model search in find mode (``GET /v1/models?endpoint_id=``)."""
        found = [
            {
                "endpoint_id": endpoint,
                "metadata": {
                    "display_name": endpoint,
                    "status": "deprecated" if endpoint in self.deprecated_endpoints else "active",
                },
            }
            for endpoint in endpoints
            if endpoint not in self.missing_endpoints
        ]
        return _json({"models": found, "next_cursor": None, "has_more": False}, 200)

    def _output(self, generation: FalRequest) -> dict[str, Any]:
        """The model output for the endpoint's family (spec §1.6)."""
        endpoint, body = generation.endpoint, generation.input
        seed = body.get("seed") if isinstance(body.get("seed"), int) else 1234
        if any(word in endpoint for word in ("veo", "seedance", "video")):
            video = self._publish(generation, _sample_mp4(), "video/mp4", "output.mp4")
            output: dict[str, Any] = {"video": video}
            if "seedance" in endpoint:
                output["seed"] = seed
            return output
        count = 1 if "upscale" in endpoint or "esrgan" in endpoint else body.get("num_images", 1)
        size = _output_size(body, upscale="upscale" in endpoint or "esrgan" in endpoint)
        fmt = str(body.get("output_format") or ("jpeg" if "seedream" in endpoint else "png"))
        images = []
        for index in range(count):
            flagged = generation.outcome == "nsfw" or (
                generation.outcome == "nsfw_some" and index == count - 1
            )
            images.append(self._image(generation, seed + index, size, fmt, flagged))
        if "upscale" in endpoint or "esrgan" in endpoint:
            return {"image": images[0], "seed": seed}
        output = {"images": images}
        if generation.outcome in ("nsfw", "nsfw_some"):
            output["has_nsfw_concepts"] = [
                generation.outcome == "nsfw" or i == count - 1 for i in range(count)
            ]
        if "z-image" in endpoint:
            output.update(
                seed=seed,
                prompt=body.get("prompt", ""),
                has_nsfw_concepts=output.get("has_nsfw_concepts", [False] * count),
                timings={"inference": 0.41},
            )
        elif "seedream" in endpoint:
            output["seed"] = seed
        else:
            output["description"] = "Here is your image."
        return output

    def _image(
        self, generation: FalRequest, seed: int, size: tuple[int, int], fmt: str, black: bool
    ) -> dict[str, Any]:
        outcome = generation.outcome
        if outcome == "malformed":
            return {"content_type": "image/png", "file_name": "out.png"}  # no url
        if outcome == "not_image":
            page = b"<html><body>502 Bad Gateway</body></html>"
            described = self._publish(generation, page, "text/html", "out.png")
            return {**described, "content_type": "image/png"}  # the JSON claims an image
        if outcome == "corrupt":
            return self._publish(generation, b"\x89PNG\r\n\x1a\nnot really", "image/png", "x.png")
        if outcome == "too_large":
            data = _noise_png((512, 512), seed)
            return self._publish(generation, data, "image/png", "big.png")
        mime = "image/jpeg" if fmt in ("jpeg", "jpg") else "image/png"
        data = _picture(size, seed, mime, black=black)
        name = "out.jpg" if mime == "image/jpeg" else "out.png"
        described = self._publish(generation, data, mime, name)
        return {**described, "width": size[0], "height": size[1]}

    def _publish(
        self, generation: FalRequest, data: bytes, mime: str, file_name: str
    ) -> dict[str, Any]:
        name = f"{uuid.uuid4().hex}-{file_name}"
        self._files[name] = (data, mime)
        generation.files.append(name)
        return {
            "url": f"{self.url}/files/{name}",
            "content_type": mime,
            "file_name": file_name,
            "file_size": len(data),
        }

    def _file(self, name: str) -> web.Response:
        if name not in self._files:
            return web.Response(status=404, text="not found")
        data, mime = self._files[name]
        return web.Response(body=data, headers={"Content-Type": mime})


# ------------------------------------------------------------------------------- helpers

_NOW = "2026-01-05T10:00:01.123Z"


def _json(body: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers)


def _failure_response(failure: _Failure) -> web.Response:
    headers: dict[str, str] = {}
    if failure.retry_after is not None:
        headers["Retry-After"] = f"{failure.retry_after:g}"
    if failure.ingress:
        page = (
            f"<html><head><title>{failure.status}</title></head><body><center><h1>"
            f"{failure.status}</h1></center><hr><center>nginx</center></body></html>"
        )
        return web.Response(status=failure.status, text=page, content_type="text/html")
    headers["x-fal-request-id"] = str(uuid.uuid4())
    body: dict[str, Any] = {"detail": failure.detail or _default_detail(failure.status)}
    if failure.error_type:
        body["error_type"] = failure.error_type
        headers["X-Fal-Error-Type"] = failure.error_type
    return _json(body, failure.status, headers)


def _default_detail(status: int) -> str:
    return {
        429: "Rate limit exceeded, please retry later",
        500: "Internal server error",
        502: "Bad gateway",
        503: "Service temporarily unavailable",
        504: "Request timed out",
    }.get(status, f"HTTP {status}")


def _reference_ratio(body: dict[str, Any]) -> tuple[int, int] | None:
    """The (width, height) of the first reference image sent as a data URI, if any."""
    refs = body.get("image_urls") or ([body["image_url"]] if body.get("image_url") else [])
    if not refs or not isinstance(refs[0], str) or not refs[0].startswith("data:"):
        return None
    try:
        data = base64.b64decode(refs[0].split(",", 1)[1], validate=True)
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (IndexError, binascii.Error, OSError):
        return None


def _output_size(body: dict[str, Any], *, upscale: bool) -> tuple[int, int]:
    """A small output size with the aspect ratio the input asks for."""
    ratio: tuple[float, float] = (1, 1)
    size = body.get("image_size")
    aspect = body.get("aspect_ratio")
    if isinstance(size, dict):
        ratio = (float(size.get("width", 1)), float(size.get("height", 1)))
    elif isinstance(size, str) and size in _PRESETS:
        ratio = _PRESETS[size]
    elif isinstance(aspect, str) and re.fullmatch(r"\d+:\d+", aspect):
        w, h = aspect.split(":")
        ratio = (float(w), float(h))
    elif (reference := _reference_ratio(body)) is not None:
        ratio = reference
    long_edge = _LONG_EDGE * 2 if upscale else _LONG_EDGE
    # Nano Banana Pro and 2 render at the resolution asked (1K by default), scaled down here.
    long_edge *= {"1K": 1, "2K": 2, "4K": 4}.get(str(body.get("resolution", "1K")), 1)
    scale = long_edge / max(ratio)
    return max(1, round(ratio[0] * scale)), max(1, round(ratio[1] * scale))


def _picture(size: tuple[int, int], seed: int, mime: str, *, black: bool) -> bytes:
    """A small picture whose colours depend on the seed (black when NSFW-flagged)."""
    digest = hashlib.sha256(str(seed).encode()).digest()
    image = Image.new("RGB", size, (0, 0, 0) if black else tuple(digest[:3]))
    if not black:
        draw = ImageDraw.Draw(image)
        w, h = size
        draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=tuple(digest[3:6]))
    out = io.BytesIO()
    image.save(out, format="JPEG" if mime == "image/jpeg" else "PNG")
    return out.getvalue()


def _noise_png(size: tuple[int, int], seed: int) -> bytes:
    """An incompressible PNG (random pixels): large on purpose."""
    rng = hashlib.shake_256(str(seed).encode()).digest(size[0] * size[1] * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", size, rng).save(out, format="PNG")
    return out.getvalue()


@functools.cache
def _sample_mp4() -> bytes:
    """A real one-second 64×64 H.264 MP4 (24 frames), made once per test session."""
    with tempfile.TemporaryDirectory(prefix="fal-fake-") as folder:
        path = Path(folder) / "sample.mp4"
        writer = imageio_ffmpeg.write_frames(str(path), (64, 64), fps=24, macro_block_size=16)
        writer.send(None)  # start the generator
        for frame in range(24):
            shade = bytes([frame * 10 % 256, 80, 200 - frame * 5])
            writer.send(shade * (64 * 64))
        writer.close()
        return path.read_bytes()
