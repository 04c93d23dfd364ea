"""A fake Replicate served by aiohttp on 127.0.0.1, for offline tests of the replicate provider.

It follows ``/work/shared/specs/providers.md`` §3:

* ``POST /v1/models/{owner}/{name}/predictions`` and ``POST /v1/predictions`` (with a
  ``version``) answer 201 with a prediction object (``id``, ``model``, ``version``, ``status``
  ``starting``, ``input``, ``output`` null, ``urls.get``/``urls.cancel``...). Inputs are checked
  against a small schema per known model (§3.6), as Replicate does at creation: a bad input is
  a 422 problem-details body.
* ``GET /v1/predictions/{id}`` moves a prediction ``starting`` → ``processing`` →
  ``succeeded`` (or ``failed``) over ``polls_to_finish`` polls; :meth:`ReplicateFake.hold`
  keeps every prediction ``starting`` until :meth:`ReplicateFake.release`.
* ``POST /v1/predictions/{id}/cancel`` → ``canceled``; ``POST /v1/files`` (multipart field
  ``content``) → a file object whose ``urls.get`` the fake can resolve later.
* Outputs are real files at ``/delivery/...`` (Replicate serves them from replicate.delivery,
  without auth): PNG or JPEG made with Pillow as the input's ``output_format`` asks, and for
  video models a real 64×64, 24-frame H.264 MP4 made once with ``imageio_ffmpeg``.
* Every ``/v1`` route needs ``Authorization: Bearer <token>`` (old ``Token <token>`` too) and
  answers 401 ``{"title": "Unauthenticated", ...}`` otherwise. Errors are RFC 7807 problem
  details (§3.4); 429 carries ``Retry-After``.

Scenarios: :meth:`fail_next` (HTTP errors on one operation), :meth:`refuse_next` (a content
policy refusal, E005), :meth:`fail_prediction_next`, :meth:`malformed_next` (succeeded with no
output), :meth:`output_next` (``"too-large"`` or ``"not-image"``), :meth:`hold`. Every request
is recorded in :attr:`requests`.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import itertools
import logging
import os
import re
import secrets
import tempfile
from collections import defaultdict, deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web
from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_TOKEN = "r8_fake_token_for_tests_0123456789abcdef"
REFUSAL = (
    "The input or output was flagged as sensitive. Please try again with different inputs. (E005)"
)
#: Aspect ratios of Nano Banana / Seedream (§3.6, "match_input_image,1:1,2:3,...,21:9").
IMAGE_RATIOS = {
    "match_input_image",
    "1:1",
    "2:3",
    "3:2",
    "3:4",
    "4:3",
    "4:5",
    "5:4",
    "9:16",
    "16:9",
    "21:9",
}
VIDEO_RATIOS = {"16:9", "9:16"}
SEEDREAM_RATIOS = frozenset(
    {"match_input_image", "1:1", "4:3", "3:4", "16:9", "9:16", "3:2", "2:3", "21:9"}
)


@dataclass(frozen=True)
class ModelSchema:
    """The part of a model's input schema the fake checks (§3.6)."""

    images_field: str | None
    images_as_list: bool
    ratios: frozenset[str]
    video: bool = False
    durations: frozenset[int] | None = None
    list_output: bool = False
    default_format: str = "png"
    seed: bool = True
    width_height: bool = False


KNOWN_MODELS: dict[str, ModelSchema] = {
    "google/nano-banana": ModelSchema(
        "image_input", True, frozenset(IMAGE_RATIOS), default_format="jpg", seed=False
    ),
    "google/nano-banana-pro": ModelSchema(
        "image_input", True, frozenset(IMAGE_RATIOS), default_format="jpg", seed=False
    ),
    # Seedream's enum has no 4:5 (spec update 2026-12-06): a 4:5 is a 422 naming the enum.
    "bytedance/seedream-4": ModelSchema(
        "image_input", True, SEEDREAM_RATIOS, list_output=True, seed=False
    ),
    "bytedance/seedream-4.5": ModelSchema(
        "image_input", True, SEEDREAM_RATIOS, list_output=True, seed=False
    ),
    # Width and height; an aspect_ratio is not in its schema.
    "prunaai/z-image-turbo": ModelSchema(None, False, frozenset(), width_height=True),
    "google/veo-3": ModelSchema(
        "image", False, frozenset(VIDEO_RATIOS), video=True, durations=frozenset({4, 6, 8})
    ),
    "bytedance/seedance-1-pro": ModelSchema(
        "image", False, frozenset(VIDEO_RATIOS | {"adaptive"}), video=True
    ),
    "google/veo-3.1": ModelSchema(
        "image", False, frozenset(VIDEO_RATIOS), video=True, durations=frozenset({4, 6, 8})
    ),
    "google/veo-3-fast": ModelSchema(
        "image", False, frozenset(VIDEO_RATIOS), video=True, durations=frozenset({4, 6, 8})
    ),
    "bytedance/seedance-2.0": ModelSchema(
        "image", False, frozenset(VIDEO_RATIOS | {"adaptive"}), video=True
    ),
}
_OPS = ("create", "get", "cancel", "upload", "download")
_TERMINAL = {"succeeded", "failed", "canceled"}


@dataclass
class RecordedRequest:
    """One request as the fake received it.

    Attributes:
        op: ``create``, ``get``, ``cancel``, ``upload``, ``file`` or ``download``.
        method: the HTTP method.
        path: the URL path.
        body: the parsed JSON body, ``{"filename", "content_type", "size"}`` for an upload,
            else None.
        headers: the request headers.
    """

    op: str
    method: str
    path: str
    body: Any
    headers: dict[str, str]


_RECORDED = web.RequestKey("recorded", RecordedRequest)


@dataclass
class FakePrediction:
    """A prediction's state in the fake."""

    id: str
    model: str
    version: str
    input: dict[str, Any]
    outcome: str
    error: str | None
    created_at: str
    status: str = "starting"
    polls: int = 0
    output: Any = None
    completed_at: str | None = None


@dataclass
class _Failure:
    status: int
    retry_after: float | None
    detail: str | None


@dataclass
class _Scenario:
    outcome: str
    error: str | None = None


@dataclass
class UploadedFile:
    """A file stored with ``POST /v1/files``."""

    id: str
    name: str
    content_type: str
    data: bytes


class ReplicateFake:
    """Replicate's prediction and files API plus its output host, on one local port."""

    def __init__(self, *, token: str = DEFAULT_TOKEN, polls_to_finish: int = 2) -> None:
        """
        Args:
            token: the one API token the fake accepts.
            polls_to_finish: how many GETs a prediction takes to reach its outcome.
        """
        self.token = token
        self.polls_to_finish = polls_to_finish
        self.base_url = ""
        #: Long edge of output images, in pixels.
        self.image_size = 64
        #: Fill output images with noise (incompressible: a large PNG) instead of flat colour.
        self.noisy_images = False
        #: Put the presented (wrong) token into 401 bodies, to test that adapters scrub it.
        self.echo_token_in_errors = False
        self.holding = False
        self.requests: list[RecordedRequest] = []
        self.predictions: dict[str, FakePrediction] = {}
        self.uploads: dict[str, UploadedFile] = {}
        self.outputs: dict[str, tuple[bytes, str]] = {}  # path -> (bytes, content type)
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._scenarios: deque[_Scenario] = deque()
        self._counter = itertools.count(1)
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve every route."""
        app = web.Application(middlewares=[self._record], client_max_size=200 << 20)
        app.router.add_post("/v1/models/{owner}/{name}/predictions", self._create)
        app.router.add_get("/v1/models/{owner}/{name}", self._model)
        app.router.add_post("/v1/predictions", self._create)
        app.router.add_get("/v1/predictions/{id}", self._get)
        app.router.add_post("/v1/predictions/{id}/cancel", self._cancel)
        app.router.add_post("/v1/files", self._upload)
        app.router.add_get("/v1/files/{id}", self._file)
        app.router.add_get("/delivery/{tail:.+}", self._download)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base_url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        log.debug("fake replicate listening on %s", self.base_url)

    async def stop(self) -> None:
        """Release the port."""
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> ReplicateFake:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ scenarios

    def fail_next(
        self,
        status: int,
        *,
        op: str = "create",
        times: int = 1,
        retry_after: float | None = None,
        detail: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests of ``op`` with HTTP ``status``.

        Args:
            status: e.g. 429 (sent with ``Retry-After``, default 1), 500, 503, 422.
            op: ``create``, ``get``, ``cancel``, ``upload`` or ``download``.
            times: how many requests in a row fail.
            retry_after: the ``Retry-After`` seconds (429 only unless given).
            detail: the problem's ``detail``; a fitting default otherwise.
        """
        if op not in _OPS:
            raise ValueError(f"op must be one of {_OPS}")
        if status == 429 and retry_after is None:
            retry_after = 1
        for _ in range(times):
            self._failures[op].append(_Failure(status, retry_after, detail))

    def refuse_next(self, message: str = REFUSAL) -> None:
        """The next prediction ends ``failed`` with a content-policy error (E005)."""
        self._scenarios.append(_Scenario("failed", message))

    def fail_prediction_next(self, message: str = "E1000: An unknown error occurred") -> None:
        """The next prediction ends ``failed`` with ``message``."""
        self._scenarios.append(_Scenario("failed", message))

    def malformed_next(self) -> None:
        """The next prediction ends ``succeeded`` with ``output: null``."""
        self._scenarios.append(_Scenario("no-output"))

    def output_next(self, kind: str) -> None:
        """The next prediction succeeds with a bad file: ``too-large`` or ``not-image``.

        ``too-large`` is a real 512×512 noise PNG (about 790 kB); ``not-image`` is an HTML
        page served as ``text/html``, as a CDN error page would be.
        """
        if kind not in ("too-large", "not-image"):
            raise ValueError("kind must be too-large or not-image")
        self._scenarios.append(_Scenario(kind))

    def hold(self) -> None:
        """Keep every prediction ``starting`` (waiting in Replicate's queue) until released."""
        self.holding = True

    def release(self) -> None:
        """Let held predictions run on."""
        self.holding = False

    # ------------------------------------------------------------------ test helpers

    def of(self, op: str) -> list[RecordedRequest]:
        """The recorded requests of one operation, in order."""
        return [r for r in self.requests if r.op == op]

    def creates(self) -> list[RecordedRequest]:
        """The recorded create-prediction requests, in order."""
        return self.of("create")

    def resolve(self, uri: str) -> bytes:
        """The bytes a model would read for an input file: a data URI or an uploaded file URL."""
        if uri.startswith("data:"):
            header, _, payload = uri.partition(",")
            assert header.endswith(";base64"), header
            return base64.b64decode(payload, validate=True)
        match = re.fullmatch(re.escape(self.base_url) + r"/v1/files/([\w-]+)", uri)
        assert match, f"not a data URI or a file of this fake: {uri[:80]}"
        return self.uploads[match.group(1)].data

    # ------------------------------------------------------------------ plumbing

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        op = _op_of(request)
        body: Any = None
        if op == "upload":
            body = None  # filled in by _upload once the multipart body is read
        elif request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                body = {"_unparsed": (await request.text())[:200]}
        recorded = RecordedRequest(op, request.method, request.path, body, dict(request.headers))
        self.requests.append(recorded)
        request[_RECORDED] = recorded
        if self._failures.get(op):
            return self._failure(self._failures[op].popleft())
        if op != "download" and not self._authorised(request):
            presented = request.headers.get("Authorization", "")
            detail = "You did not pass a valid authentication token"
            if self.echo_token_in_errors and presented:
                detail += f" (got {presented})"
            return _problem(401, "Unauthenticated", detail)
        return await handler(request)

    def _authorised(self, request: web.Request) -> bool:
        presented = request.headers.get("Authorization", "")
        return presented in (f"Bearer {self.token}", f"Token {self.token}")

    def _failure(self, failure: _Failure) -> web.Response:
        titles = {
            429: ("Too many requests", "Request was throttled. Expected available in 1 second."),
            500: ("Internal Server Error", "An unexpected error occurred."),
            502: ("Bad Gateway", "The upstream server failed."),
            503: ("Service Unavailable", "Replicate is temporarily unavailable."),
        }
        title, detail = titles.get(failure.status, ("Error", "Something went wrong."))
        response = _problem(failure.status, title, failure.detail or detail)
        if failure.retry_after is not None:
            response.headers["Retry-After"] = f"{failure.retry_after:g}"
        return response

    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    # ------------------------------------------------------------------ predictions

    async def _model(self, request: web.Request) -> web.Response:
        """``models.get``: the model's public description, or 404 for an unknown model."""
        model = f"{request.match_info['owner']}/{request.match_info['name']}"
        if model not in KNOWN_MODELS:
            return _problem(404, "Not found", "The requested resource could not be found.")
        owner, name = model.split("/")
        return web.json_response(
            {
                "url": f"https://replicate.com/{model}",
                "owner": owner,
                "name": name,
                "visibility": "public",
                "latest_version": None,
            }
        )

    async def _create(self, request: web.Request) -> web.Response:
        body = request[_RECORDED].body
        if not isinstance(body, dict):
            return _problem(400, "Bad request", "The request body is not a JSON object.")
        if "owner" in request.match_info:
            model = f"{request.match_info['owner']}/{request.match_info['name']}"
            if model not in KNOWN_MODELS:
                return _problem(404, "Not found", "The requested resource could not be found.")
            version = "hidden"  # [GUESS] in the spec: official models hide their version
            schema: ModelSchema | None = KNOWN_MODELS[model]
        else:
            version = str(body.get("version", ""))
            if not re.fullmatch(r"[0-9a-f]{64}", version):
                return _problem(422, "Invalid version", "Invalid version or not permitted.")
            model, schema = "community/model", None
        model_input = body.get("input")
        if not isinstance(model_input, dict):
            return _problem(422, "Input validation failed", "- input: input is required")
        problems = _validate(model_input, schema)
        if problems:
            detail = "\n".join(f"- input.{p}" for p in problems)
            return _problem(422, "Input validation failed", detail)
        scenario = self._scenarios.popleft() if self._scenarios else _Scenario("succeeded")
        prediction_id = self._new_id()
        prediction = FakePrediction(
            id=prediction_id,
            model=model,
            version=version,
            input=model_input,
            outcome=scenario.outcome,
            error=scenario.error,
            created_at=_now(),
        )
        self.predictions[prediction_id] = prediction
        return web.json_response(self._json(prediction), status=201)

    async def _get(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status not in _TERMINAL and not self.holding:
            prediction.polls += 1
            if prediction.polls < self.polls_to_finish:
                prediction.status = "processing"
            else:
                self._finish(prediction)
        return web.json_response(self._json(prediction))

    async def _cancel(self, request: web.Request) -> web.Response:
        prediction = self.predictions.get(request.match_info["id"])
        if prediction is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        if prediction.status not in _TERMINAL:
            prediction.status = "canceled"
            prediction.completed_at = _now()
        return web.json_response(self._json(prediction))

    def _finish(self, prediction: FakePrediction) -> None:
        prediction.completed_at = _now()
        if prediction.outcome == "failed":
            prediction.status = "failed"
            return
        prediction.status = "succeeded"
        if prediction.outcome == "no-output":
            return
        schema = KNOWN_MODELS.get(prediction.model)
        if prediction.outcome == "not-image":
            path = f"/delivery/xezq/{prediction.id}/output.png"
            page = b"<html><body><h1>503 Service Temporarily Unavailable</h1></body></html>"
            self.outputs[path] = (page, "text/html; charset=utf-8")
        elif prediction.outcome == "too-large":
            path = f"/delivery/xezq/{prediction.id}/output.png"
            self.outputs[path] = (noise_png(512), "image/png")
        elif schema is not None and schema.video:
            path = f"/delivery/xezq/{prediction.id}/output.mp4"
            self.outputs[path] = (small_mp4(), "video/mp4")
        else:
            fmt = str(prediction.input.get("output_format") or (schema and schema.default_format))
            fmt = "jpg" if fmt in ("jpg", "jpeg") else "png"
            size = self._output_size(prediction.input)
            data = self._image(prediction.id, size, fmt)
            path = f"/delivery/xezq/{prediction.id}/output.{fmt}"
            self.outputs[path] = (data, "image/jpeg" if fmt == "jpg" else "image/png")
        url = self._url(path)
        prediction.output = [url] if schema is not None and schema.list_output else url

    def _output_size(self, model_input: dict[str, Any]) -> tuple[int, int]:
        ratio = str(model_input.get("aspect_ratio", "1:1"))
        if ratio == "match_input_image":
            images = model_input.get("image_input") or [model_input.get("image")]
            try:
                with Image.open(io.BytesIO(self.resolve(images[0]))) as reference:
                    return reference.size
            except Exception:
                ratio = "1:1"
        w, h = (int(x) for x in ratio.split(":")) if ":" in ratio else (1, 1)
        edge = self.image_size
        if w >= h:
            return edge, max(1, round(edge * h / w))
        return max(1, round(edge * w / h)), edge

    def _image(self, seed_text: str, size: tuple[int, int], fmt: str) -> bytes:
        if self.noisy_images:
            image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
        else:
            # A flat colour derived from the prediction id: every output has different bytes,
            # so the content-addressed asset store keeps them apart.
            digest = hashlib.sha256(seed_text.encode()).digest()
            image = Image.new("RGB", size, (digest[0], digest[1], digest[2]))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG" if fmt == "jpg" else "PNG")
        return buffer.getvalue()

    def _json(self, prediction: FakePrediction) -> dict[str, Any]:
        base = self._url(f"/v1/predictions/{prediction.id}")
        finished = prediction.status in _TERMINAL
        return {
            "id": prediction.id,
            "model": prediction.model,
            "version": prediction.version,
            "input": prediction.input,
            "logs": "",
            "output": prediction.output,
            "error": prediction.error if prediction.status == "failed" else None,
            "status": prediction.status,
            "created_at": prediction.created_at,
            "started_at": prediction.created_at if prediction.status != "starting" else None,
            "completed_at": prediction.completed_at,
            "metrics": {"predict_time": 0.42, "total_time": 0.5} if finished else {},
            "urls": {
                "get": base,
                "cancel": f"{base}/cancel",
                "stream": f"https://stream.replicate.com/v1/files/{prediction.id}",
            },
        }

    def _new_id(self) -> str:
        # Replicate ids look like "gm3qorzdhgbfurvjtvhg6dckhu": 26 lowercase base32 characters.
        raw = base64.b32encode(secrets.token_bytes(15) + next(self._counter).to_bytes(2, "big"))
        return raw.decode().lower().rstrip("=")[:26]

    # ------------------------------------------------------------------ files

    async def _upload(self, request: web.Request) -> web.Response:
        form = await request.post()
        content = form.get("content")
        if not isinstance(content, web.FileField):
            return _problem(400, "Bad request", "Expected a multipart file field named content.")
        data = content.file.read()
        file_id = self._new_id()
        uploaded = UploadedFile(file_id, content.filename, content.content_type, data)
        self.uploads[file_id] = uploaded
        request[_RECORDED].body = {
            "filename": uploaded.name,
            "content_type": uploaded.content_type,
            "size": len(data),
        }
        return web.json_response(
            {
                "id": file_id,
                "name": uploaded.name,
                "content_type": uploaded.content_type,
                "size": len(data),
                "etag": hashlib.md5(data).hexdigest(),  # an etag, not security
                "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
                "metadata": {},
                "created_at": _now(),
                "expires_at": None,
                "urls": {"get": self._url(f"/v1/files/{file_id}")},
            },
            status=201,
        )

    async def _file(self, request: web.Request) -> web.Response:
        uploaded = self.uploads.get(request.match_info["id"])
        if uploaded is None:
            return _problem(404, "Not found", "The requested resource could not be found.")
        return web.Response(body=uploaded.data, content_type=uploaded.content_type)

    async def _download(self, request: web.Request) -> web.Response:
        found = self.outputs.get(request.path)
        if found is None:
            return web.Response(status=404, text="Not Found")
        data, content_type = found
        return web.Response(body=data, headers={"Content-Type": content_type})


# --------------------------------------------------------------------------- helpers


def _op_of(request: web.Request) -> str:
    path = request.path
    if path.startswith("/delivery/"):
        return "download"
    if path == "/v1/files":
        return "upload"
    if path.startswith("/v1/files/"):
        return "file"
    if path.endswith("/cancel"):
        return "cancel"
    if request.method == "GET":
        return "get"
    return "create"


def _validate(model_input: dict[str, Any], schema: ModelSchema | None) -> list[str]:
    """Schema problems of an input, worded like Replicate's 422 details."""
    if schema is None:
        return []
    problems = []
    prompt = model_input.get("prompt")
    if not isinstance(prompt, str) or not prompt:
        problems.append("prompt: prompt is required")
    ratio = model_input.get("aspect_ratio")
    if schema.width_height:
        if ratio is not None:
            problems.append("aspect_ratio: Additional property aspect_ratio is not allowed")
        for side in ("width", "height"):
            if not isinstance(model_input.get(side), int):
                problems.append(f"{side}: {side} is required")
    elif ratio is not None and ratio not in schema.ratios:
        allowed = ", ".join(sorted(schema.ratios))
        problems.append(f"aspect_ratio: aspect_ratio must be one of the following: {allowed}")
    for key in ("image_input", "image"):
        if key in model_input and key != schema.images_field:
            problems.append(f"{key}: Additional property {key} is not allowed")
    images = model_input.get(schema.images_field or "")
    if images is not None:
        items = images if schema.images_as_list else [images]
        if schema.images_as_list and not isinstance(images, list):
            problems.append(f"{schema.images_field}: Invalid type. Expected: array")
        elif not all(isinstance(i, str) and i.startswith(("data:", "http")) for i in items):
            problems.append(f"{schema.images_field}: Does not match format 'uri'")
    if "seed" in model_input and not schema.seed:
        problems.append("seed: Additional property seed is not allowed")
    if "seed" in model_input and not isinstance(model_input["seed"], int):
        problems.append("seed: Invalid type. Expected: integer")
    duration = model_input.get("duration")
    if schema.durations is not None and duration is not None and duration not in schema.durations:
        allowed = ", ".join(str(d) for d in sorted(schema.durations))
        problems.append(f"duration: duration must be one of the following: {allowed}")
    return problems


def _problem(status: int, title: str, detail: str) -> web.Response:
    return web.json_response(
        {"title": title, "detail": detail, "status": status},
        status=status,
        content_type="application/problem+json",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def noise_png(edge: int) -> bytes:
    """A real PNG of random pixels: incompressible, so about ``3 * edge**2`` bytes."""
    image = Image.frombytes("RGB", (edge, edge), os.urandom(edge * edge * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@functools.cache
def small_mp4() -> bytes:
    """A real 64×64, 24-frame (1 s) H.264 MP4, encoded once per test session."""
    with tempfile.TemporaryDirectory(prefix="fake-replicate-") as folder:
        target = Path(folder) / "clip.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(target), (64, 64), fps=24, codec="libx264", pix_fmt_out="yuv420p"
        )
        writer.send(None)  # start ffmpeg
        for index in range(24):
            shade = index * 10
            writer.send(bytes([shade, 255 - shade, 128]) * (64 * 64))
        writer.close()
        return target.read_bytes()
