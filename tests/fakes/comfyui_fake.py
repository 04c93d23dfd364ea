"""A fake ComfyUI server: a real aiohttp server on 127.0.0.1 speaking ComfyUI's HTTP API.

What it does, as ``server.py`` / ``execution.py`` of Comfy-Org/ComfyUI do (spec:
``/work/shared/specs/providers.md`` §4):

* ``POST /prompt`` validates the graph the way ComfyUI does before queueing (unknown node
  types → 400 ``missing_node_type``; no output node → ``prompt_no_outputs``; a model file it
  does not have, an unfilled ``{{placeholder}}`` in a number input, a LoadImage of a file never
  uploaded → 400 ``prompt_outputs_failed_validation`` with ``node_errors``), honours a
  client-chosen ``prompt_id``, and answers ``{"prompt_id", "number", "node_errors"}``.
* ``GET /history/{id}`` answers ``{}`` while the prompt is queued or running; a prompt runs
  for ``run_polls`` polls, then its entry appears with ``status`` (``success`` or ``error``
  with ``execution_error`` / ``execution_interrupted`` messages) and ``outputs`` whose files
  are real PNG/JPEG images (Pillow, at the graph's width × height × batch size) or a real
  small MP4 (ffmpeg via ``imageio_ffmpeg``).
* An inpainting graph (a ``SetLatentNoiseMask``, ``VAEEncodeForInpaint`` or
  ``InpaintModelConditioning`` node) is "run" for real on the uploaded files: its links are
  followed back to the LoadImage of the source and that of the mask (through ``ImageToMask``
  and its channel, or LoadImage's own MASK output, which is ``1 - alpha`` and empty for an
  image without alpha, as in ComfyUI); the output is the source at the output size with the
  masked pixels (≥ 50 %) painted one flat colour per seed and batch index, the rest kept as
  uploaded. Mask growth (``GrowMask``, ``grow_mask_by``) is not simulated.
* ``GET /queue``, ``POST /queue {"delete" | "clear"}``, ``POST /interrupt {"prompt_id"?}``,
  ``POST /upload/image`` (multipart), ``GET /view`` (real Content-Type from the file name),
  ``GET /prompt``; every route also under ``/api``.
* ComfyUI has no login; ``auth=(user, password)`` puts it behind a basic-auth proxy that
  answers 401 with an HTML body and ``WWW-Authenticate``, as nginx does.

Scripting, for tests (methods of :class:`FakeComfyUI`): ``fail_next`` (HTTP errors,
Retry-After on 429), ``refuse_next`` (a safety-checker node raising), ``fail_execution_next``
(any execution error), ``malformed_next``, ``serve_next_output`` (bytes and content type of
the next output file), ``hold`` / ``release`` (prompts stay queued or running),
``forget_queue`` (a ComfyUI restart loses its in-memory queue). Every request is recorded in
``FakeComfyUI.requests`` (method, path, query, JSON body, form fields, uploaded files,
headers).
"""

from __future__ import annotations

import base64
import functools
import io
import json
import logging
import mimetypes
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import imageio_ffmpeg
from aiohttp import web
from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

#: Node types this ComfyUI "has installed".
KNOWN_NODES = frozenset(
    {
        "CheckpointLoaderSimple",
        "CLIPLoader",
        "CLIPTextEncode",
        "ConditioningZeroOut",
        "EmptyLatentImage",
        "EmptySD3LatentImage",
        "GrowMask",
        "ImageScale",
        "ImageScaleToTotalPixels",
        "ImageToMask",
        "InpaintModelConditioning",
        "KSampler",
        "LoadImage",
        "ModelSamplingAuraFlow",
        "PreviewImage",
        "RepeatLatentBatch",
        "SaveImage",
        "SaveVideo",
        "SetLatentNoiseMask",
        "CreateVideo",
        "UNETLoader",
        "VAEDecode",
        "VAEEncode",
        "VAEEncodeForInpaint",
        "VAELoader",
        "VHS_VideoCombine",
        "WanImageToVideo",
    }
)
IMAGE_SAVERS = frozenset({"SaveImage", "PreviewImage"})
VIDEO_SAVERS = frozenset({"SaveVideo", "VHS_VideoCombine"})
#: Combo inputs naming model files, and the files this server has.
MODEL_INPUTS = ("unet_name", "ckpt_name", "clip_name", "vae_name")
DEFAULT_MODELS = frozenset(
    {
        "z_image_turbo_bf16.safetensors",
        "qwen_3_4b.safetensors",
        "ae.safetensors",
        "sd_xl_base_1.0.safetensors",
        "wan2.2_ti2v_5B_fp16.safetensors",
    }
)
INT_INPUTS = frozenset(
    {"seed", "width", "height", "batch_size", "amount", "steps", "length", "expand"}
)
#: Combo inputs ComfyUI checks against their lists: (node type, input) -> allowed values.
COMBO_INPUTS: dict[tuple[str, str], frozenset[str]] = {
    ("ImageToMask", "channel"): frozenset({"red", "green", "blue", "alpha"}),
    ("ImageScale", "crop"): frozenset({"disabled", "center"}),
    ("ImageScale", "upscale_method"): frozenset(
        {"nearest-exact", "bilinear", "area", "bicubic", "lanczos"}
    ),
}
#: Nodes that make a latent redrawn only under a mask, and their mask and image inputs.
INPAINT_NODES: dict[str, tuple[str, str]] = {
    "SetLatentNoiseMask": ("mask", "samples"),
    "VAEEncodeForInpaint": ("mask", "pixels"),
    "InpaintModelConditioning": ("mask", "pixels"),
}
#: Inputs followed upstream from a mask or a latent to the LoadImage it came from.
_UPSTREAM_INPUTS = ("mask", "image", "images", "pixels", "samples")

_UNAUTHORIZED_HTML = (
    "<html>\r\n<head><title>401 Authorization Required</title></head>\r\n<body>\r\n"
    "<center><h1>401 Authorization Required</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)
_DEFAULT_ERROR_BODIES = {
    429: ("429 Too Many Requests", "text/plain"),
    500: ("500 Internal Server Error\n\nServer got itself in trouble", "text/plain"),
    502: (
        "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway"
        "</h1></center><hr><center>nginx</center></body></html>",
        "text/html",
    ),
    503: ("503 Service Unavailable", "text/plain"),
}


@dataclass
class RecordedRequest:
    """One request the fake received."""

    method: str
    path: str  # without the optional /api prefix
    query: dict[str, str]
    json: Any = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class _Failure:
    method: str
    path: str
    status: int
    remaining: int
    retry_after: float | None
    body: str | None
    content_type: str


@dataclass
class FakePrompt:
    """A queued workflow and what becomes of it."""

    prompt_id: str
    number: int
    graph: dict[str, Any]
    extra_data: dict[str, Any]
    outputs_to_execute: list[str]
    state: str = "pending"  # pending | running | done
    polls_left: int = 1
    held: bool = False
    #: ("success",) | ("error", exception_type, message) | ("interrupted",) | ("malformed",)
    outcome: tuple[str, ...] = ("success",)
    output: tuple[bytes, str] | None = None  # bytes and content type of the first output file
    history: dict[str, Any] | None = None

    def queue_item(self) -> list[Any]:
        return [self.number, self.prompt_id, self.graph, self.extra_data, self.outputs_to_execute]


@functools.cache
def small_mp4() -> bytes:
    """A real 1-second H.264 MP4, 64x64 at 24 fps (made once per test session)."""
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / "clip.mp4"
        writer = imageio_ffmpeg.write_frames(
            str(target), (64, 64), fps=24, macro_block_size=1, ffmpeg_log_level="error"
        )
        writer.send(None)
        for i in range(24):
            shade = 40 + i * 8
            frame = bytes([shade, 255 - shade, 128]) * (64 * 64)
            writer.send(frame)
        writer.close()
        return target.read_bytes()


def _image_bytes(size: tuple[int, int], seed: int, index: int, image_format: str) -> bytes:
    """A real, quick-to-encode picture that differs by seed and batch index."""
    colour = ((seed * 37 + index * 91) % 256, (seed * 11 + 80) % 256, (index * 53 + 40) % 256)
    image = Image.new("RGB", size, colour)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.ellipse((w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=(255 - colour[0], 200, 60))
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, "JPEG", quality=85)
    else:
        image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _inpainted(
    source: Image.Image,
    mask: Image.Image,
    size: tuple[int, int],
    seed: int,
    index: int,
    image_format: str,
) -> bytes:
    """What the fake "inpaints": ``source`` at ``size``, one flat colour (by seed and batch
    index) wherever ``mask`` is at least half white, the rest untouched."""
    colour = ((seed * 37 + index * 91) % 256, (seed * 11 + 80) % 256, (index * 53 + 40) % 256)
    picture = source if source.size == size else source.resize(size, Image.Resampling.LANCZOS)
    inside = mask.resize(size, Image.Resampling.BILINEAR).point(lambda v: 255 if v >= 128 else 0)
    result = Image.composite(Image.new("RGB", size, colour), picture, inside)
    buffer = io.BytesIO()
    if image_format == "JPEG":
        result.save(buffer, "JPEG", quality=85)
    else:
        result.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def _placeholder_left(value: Any) -> bool:
    return isinstance(value, str) and bool(re.search(r"\{\{.*\}\}", value))


def _is_link(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


def _trace(graph: dict[str, Any], link: Any) -> tuple[str, str] | None:
    """Follow a link back to the LoadImage it starts from.

    Returns:
        The LoadImage's ``image`` (the uploaded name) and how its pixels became a mask:
        ``"red"``/``"green"``/``"blue"``/``"alpha"`` (the ``ImageToMask`` nearest the link),
        ``"mask-output"`` (LoadImage's second output) or ``"image"`` (no mask made); None when
        no LoadImage is upstream.
    """
    channel: str | None = None
    for _ in range(len(graph) + 1):  # a cycle cannot loop forever
        if not _is_link(link) or link[0] not in graph:
            return None
        node = graph[link[0]]
        inputs = node.get("inputs") or {}
        if node["class_type"] == "LoadImage":
            how = channel or ("mask-output" if link[1] == 1 else "image")
            return str(inputs.get("image")), how
        if node["class_type"] == "ImageToMask" and channel is None:
            channel = str(inputs.get("channel"))
        link = next((inputs[k] for k in _UPSTREAM_INPUTS if _is_link(inputs.get(k))), None)
    return None


def _mask_of(data: bytes, how: str, size: tuple[int, int]) -> Image.Image:
    """The mask ComfyUI would make of an uploaded file, as an "L" image of ``size``."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if how == "mask-output":  # LoadImage: 1 - alpha; no alpha: an empty (64x64) mask
            if "A" not in image.getbands():
                return Image.new("L", size, 0)
            mask = image.getchannel("A").point(lambda v: 255 - v)
        elif how == "alpha":  # LoadImage's IMAGE output has no alpha left
            raise ValueError("ImageToMask: the image has no alpha channel")
        elif how == "image":  # ComfyUI refuses the link (IMAGE into MASK); close enough
            raise ValueError("a MASK input is linked to an IMAGE output")
        else:
            mask = image.convert("RGB").getchannel({"red": 0, "green": 1, "blue": 2}[how])
    return mask.resize(size, Image.Resampling.BILINEAR)


class FakeComfyUI:
    """A scriptable ComfyUI on 127.0.0.1.

    Args:
        auth: ``(user, password)`` to require HTTP basic auth (a proxy in front); None: open.
        run_polls: how many ``GET /history`` polls a prompt runs before it finishes.
        models: the model files the server has.
        image_format: ``"PNG"`` (SaveImage's format) or ``"JPEG"`` for the images it makes.
    """

    def __init__(
        self,
        *,
        auth: tuple[str, str] | None = None,
        run_polls: int = 1,
        models: frozenset[str] = DEFAULT_MODELS,
        image_format: str = "PNG",
    ) -> None:
        self.auth = auth
        self.run_polls = run_polls
        self.models = models
        self.image_format = image_format
        self.requests: list[RecordedRequest] = []
        self.prompts: dict[str, FakePrompt] = {}
        self.deleted: list[str] = []
        self.interrupted: list[str] = []
        self.uploads: dict[str, bytes] = {}  # "subfolder/name" -> bytes
        self.files: dict[tuple[str, str, str], tuple[bytes, str]] = {}  # (type, sub, name)
        self._failures: list[_Failure] = []
        self._next_outcomes: list[tuple[str, ...]] = []
        self._next_outputs: list[tuple[bytes, str]] = []
        self._malformed_prompt = 0
        self._hold: str | None = None
        self._number = 0
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the base URL (``http://127.0.0.1:<port>``)."""
        app = web.Application(
            middlewares=[self._record, self._authenticate, self._scripted_failures],
            client_max_size=64 * 1024 * 1024,
        )
        routes = [
            ("POST", "/prompt", self._post_prompt),
            ("GET", "/prompt", self._get_prompt),
            ("GET", "/history/{prompt_id}", self._get_history),
            ("GET", "/queue", self._get_queue),
            ("POST", "/queue", self._post_queue),
            ("POST", "/interrupt", self._post_interrupt),
            ("POST", "/upload/image", self._upload_image),
            ("GET", "/view", self._view),
        ]
        for prefix in ("", "/api"):  # ComfyUI serves every route under /api too
            for method, path, handler in routes:
                app.router.add_route(method, prefix + path, handler)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self.url

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeComfyUI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- scripting ---------------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path: str,
        status: int,
        *,
        times: int = 1,
        retry_after: float | None = None,
        body: str | None = None,
        content_type: str | None = None,
    ) -> None:
        """Answer the next ``times`` requests to ``method path*`` with an HTTP error.

        Args:
            method: ``GET`` / ``POST``.
            path: a path prefix without ``/api`` (``/prompt``, ``/history``, ``/view``).
            status: the status code (429 and 5xx get a realistic default body).
            times: how many matching requests fail.
            retry_after: seconds for a ``Retry-After`` header.
            body: the body instead of the default one.
            content_type: its content type (default: that of the default body, or text/plain).
        """
        default_body, default_type = _DEFAULT_ERROR_BODIES.get(status, ("error", "text/plain"))
        self._failures.append(
            _Failure(
                method.upper(),
                path,
                status,
                times,
                retry_after,
                body if body is not None else default_body,
                content_type or default_type,
            )
        )

    def refuse_next(
        self, message: str = "NSFW content detected by the safety checker; image blocked"
    ) -> None:
        """The next queued prompt ends in an ``execution_error`` from a safety-checker node."""
        self._next_outcomes.append(("error", "safety_checker.NSFWContentError", message))

    def fail_execution_next(self, exception_type: str, message: str) -> None:
        """The next queued prompt ends in an ``execution_error`` with this exception."""
        self._next_outcomes.append(("error", exception_type, message))

    def malformed_next(self, where: str = "history") -> None:
        """The next ``POST /prompt`` reply lacks its prompt_id (``"prompt"``), or the next
        finished prompt lists an output without a file name (``"history"``)."""
        if where == "prompt":
            self._malformed_prompt += 1
        else:
            self._next_outcomes.append(("malformed",))

    def serve_next_output(self, data: bytes, content_type: str) -> None:
        """The first output file of the next finished prompt is these bytes, served with
        this content type (an HTML login page, a truncated image...)."""
        self._next_outputs.append((data, content_type))

    def hold(self, state: str = "pending") -> None:
        """Prompts queued from now on stay ``pending`` (or ``running``) until released."""
        self._hold = state

    def release(self) -> None:
        """Let held prompts run."""
        self._hold = None
        for prompt in self.prompts.values():
            prompt.held = False

    def forget_queue(self) -> None:
        """What a ComfyUI restart does: queued and running prompts are gone, history stays."""
        for prompt_id in [p for p, v in self.prompts.items() if v.state != "done"]:
            del self.prompts[prompt_id]

    # -- assertions helpers ------------------------------------------------------------------

    def calls(self, method: str, path: str) -> list[RecordedRequest]:
        """Recorded requests to ``method`` on paths starting with ``path``."""
        return [r for r in self.requests if r.method == method and r.path.startswith(path)]

    @property
    def submissions(self) -> list[dict[str, Any]]:
        """The JSON bodies of every ``POST /prompt``."""
        return [r.json for r in self.calls("POST", "/prompt")]

    # -- middlewares -------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path.removeprefix("/api") or "/"
        recorded = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers=dict(request.headers),
        )
        if request.content_type.startswith("multipart/"):
            form = await request.post()  # cached: the handler reads it again
            for name, value in form.items():
                if isinstance(value, web.FileField):
                    recorded.files[name] = (value.filename, value.file.read())
                    value.file.seek(0)
                else:
                    recorded.form[name] = str(value)
        elif request.can_read_body:
            raw = await request.read()  # cached for the handler's request.json()
            try:
                recorded.json = json.loads(raw) if raw else None
            except ValueError:
                recorded.json = raw.decode("utf-8", "replace")
        self.requests.append(recorded)
        return await handler(request)

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.auth is not None:
            user, password = self.auth
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            if request.headers.get("Authorization") != f"Basic {token}":
                return web.Response(
                    status=401,
                    text=_UNAUTHORIZED_HTML,
                    content_type="text/html",
                    headers={"WWW-Authenticate": 'Basic realm="ComfyUI"'},
                )
        return await handler(request)

    @web.middleware
    async def _scripted_failures(self, request: web.Request, handler: Any) -> web.StreamResponse:
        path = request.path.removeprefix("/api") or "/"
        for failure in self._failures:
            if failure.method == request.method and path.startswith(failure.path):
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                headers = {}
                if failure.retry_after is not None:
                    headers["Retry-After"] = f"{failure.retry_after:g}"
                return web.Response(
                    status=failure.status,
                    body=(failure.body or "").encode(),
                    content_type=failure.content_type,
                    headers=headers,
                )
        return await handler(request)

    # -- routes ------------------------------------------------------------------------------

    async def _post_prompt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400, text="invalid JSON")
        if not isinstance(body, dict) or "prompt" not in body:
            return self._prompt_error("no_prompt", "No prompt provided", "No prompt provided")
        graph = body["prompt"]
        client_prompt_id = body.get("prompt_id")
        if client_prompt_id is not None:
            try:
                if str(uuid.UUID(client_prompt_id)) != client_prompt_id:
                    raise ValueError
            except (ValueError, TypeError, AttributeError):
                return self._prompt_error(
                    "invalid_prompt_id",
                    "prompt_id must be a valid UUID",
                    "prompt_id must be a UUID string in canonical lowercase hyphenated form",
                )
        invalid = self._validate(graph)
        if invalid is not None:
            return invalid
        prompt_id = client_prompt_id or str(uuid.uuid4())
        number = self._number
        self._number += 1
        if self._malformed_prompt:
            self._malformed_prompt -= 1
            return web.json_response({"number": number, "node_errors": {}})
        extra_data = {"client_id": body.get("client_id"), "create_time": int(time.time() * 1000)}
        outputs = [n for n, node in graph.items() if node["class_type"] in IMAGE_SAVERS]
        outputs += [n for n, node in graph.items() if node["class_type"] in VIDEO_SAVERS]
        prompt = FakePrompt(
            prompt_id=prompt_id,
            number=number,
            graph=graph,
            extra_data=extra_data,
            outputs_to_execute=outputs,
            polls_left=self.run_polls,
            held=self._hold is not None,
            state="running" if self._hold == "running" else "pending",
            outcome=self._next_outcomes.pop(0) if self._next_outcomes else ("success",),
        )
        self.prompts[prompt_id] = prompt
        return web.json_response({"prompt_id": prompt_id, "number": number, "node_errors": {}})

    def _prompt_error(
        self,
        kind: str,
        message: str,
        details: str,
        node_errors: dict[str, Any] | None = None,
        extra_info: dict[str, Any] | None = None,
    ) -> web.Response:
        error = {
            "type": kind,
            "message": message,
            "details": details,
            "extra_info": extra_info or {},
        }
        return web.json_response({"error": error, "node_errors": node_errors or {}}, status=400)

    def _validate(self, graph: Any) -> web.Response | None:
        """ComfyUI's ``validate_prompt``, reduced to what a bad template trips on."""
        if not isinstance(graph, dict):
            return self._prompt_error("invalid_prompt", "Invalid prompt", "not an object")
        for node_id, node in graph.items():
            if not isinstance(node, dict) or "class_type" not in node:
                return self._prompt_error(
                    "missing_node_type",
                    f"Node 'ID #{node_id}' has no class_type. The workflow may be corrupted "
                    "or a custom node is missing.",
                    f"Node ID '#{node_id}'",
                    extra_info={"node_id": node_id, "class_type": None},
                )
            if node["class_type"] not in KNOWN_NODES:
                title = node.get("_meta", {}).get("title", node["class_type"])
                return self._prompt_error(
                    "missing_node_type",
                    f"Node '{title}' not found. The custom node may not be installed.",
                    f"Node ID '#{node_id}'",
                    extra_info={"node_id": node_id, "class_type": node["class_type"]},
                )
        outputs = [
            n for n, node in graph.items() if node["class_type"] in IMAGE_SAVERS | VIDEO_SAVERS
        ]
        if not outputs:
            return self._prompt_error("prompt_no_outputs", "Prompt has no outputs", "")
        node_errors: dict[str, Any] = {}
        for node_id, node in graph.items():
            reasons = []
            for name, value in (node.get("inputs") or {}).items():
                allowed = COMBO_INPUTS.get((node["class_type"], name))
                if allowed is not None and value not in allowed:
                    reasons.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: {value!r} not in {sorted(allowed)}",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
                elif name in INT_INPUTS and _placeholder_left(value):
                    reasons.append(
                        {
                            "type": "invalid_input_type",
                            "message": "Failed to convert an input value to a INT value",
                            "details": f"{name}, {value}, invalid literal for int() with base 10",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
                elif name in MODEL_INPUTS and value not in self.models:
                    reasons.append(
                        {
                            "type": "value_not_in_list",
                            "message": "Value not in list",
                            "details": f"{name}: {value!r} not in {sorted(self.models)}",
                            "extra_info": {"input_name": name, "received_value": value},
                        }
                    )
            if node["class_type"] == "LoadImage":
                image = (node.get("inputs") or {}).get("image")
                if image not in self.uploads:
                    reasons.append(
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": f"image - Invalid image file: {image}",
                            "extra_info": {"input_name": "image"},
                        }
                    )
            if reasons:
                node_errors[node_id] = {
                    "errors": reasons,
                    "dependent_outputs": outputs,
                    "class_type": node["class_type"],
                }
        if node_errors:
            details = "\n".join(
                f"{r['message']}: {r['details']}" for e in node_errors.values() for r in e["errors"]
            )
            return self._prompt_error(
                "prompt_outputs_failed_validation",
                "Prompt outputs failed validation",
                details,
                node_errors=node_errors,
            )
        return None

    async def _get_prompt(self, request: web.Request) -> web.Response:
        remaining = sum(1 for p in self.prompts.values() if p.state != "done")
        return web.json_response({"exec_info": {"queue_remaining": remaining}})

    async def _get_history(self, request: web.Request) -> web.Response:
        prompt_id = request.match_info["prompt_id"]
        prompt = self.prompts.get(prompt_id)
        if prompt is None:
            return web.json_response({})
        if prompt.state != "done":
            if prompt.held:
                return web.json_response({})
            if prompt.polls_left > 0:
                prompt.polls_left -= 1
                prompt.state = "running"
                return web.json_response({})
            self._finish(prompt, prompt.outcome)
        return web.json_response({prompt_id: prompt.history})

    async def _get_queue(self, request: web.Request) -> web.Response:
        running = [p.queue_item() for p in self.prompts.values() if p.state == "running"]
        pending = [p.queue_item() for p in self.prompts.values() if p.state == "pending"]
        return web.json_response({"queue_running": running, "queue_pending": pending})

    async def _post_queue(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("clear"):
            for prompt_id in [p for p, v in self.prompts.items() if v.state == "pending"]:
                self.deleted.append(prompt_id)
                del self.prompts[prompt_id]
        for prompt_id in body.get("delete") or []:
            prompt = self.prompts.get(prompt_id)
            if prompt is not None and prompt.state == "pending":
                self.deleted.append(prompt_id)
                del self.prompts[prompt_id]
        return web.Response(status=200)

    async def _post_interrupt(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        wanted = body.get("prompt_id") if isinstance(body, dict) else None
        for prompt in list(self.prompts.values()):
            if prompt.state == "running" and wanted in (None, prompt.prompt_id):
                self.interrupted.append(prompt.prompt_id)
                self._finish(prompt, ("interrupted",))
        return web.Response(status=200)

    async def _upload_image(self, request: web.Request) -> web.Response:
        form = await request.post()
        image = form.get("image")
        if not isinstance(image, web.FileField) or not image.filename:
            return web.Response(status=400)
        subfolder = str(form.get("subfolder") or "")
        if ".." in subfolder or subfolder.startswith("/"):
            return web.Response(status=400)
        name = image.filename
        key = f"{subfolder}/{name}" if subfolder else name
        self.uploads[key] = image.file.read()
        return web.json_response(
            {"name": name, "subfolder": subfolder, "type": str(form.get("type") or "input")}
        )

    async def _view(self, request: web.Request) -> web.Response:
        filename = request.query.get("filename", "")
        if not filename or filename.startswith("/") or ".." in filename:
            return web.Response(status=400)
        subfolder = request.query.get("subfolder", "")
        if ".." in subfolder or subfolder.startswith("/"):
            return web.Response(status=403)
        found = self.files.get((request.query.get("type", "output"), subfolder, filename))
        if found is None:
            return web.Response(status=404)
        data, content_type = found
        return web.Response(
            body=data,
            headers={
                "Content-Type": content_type,
                "Content-Disposition": f'filename="{filename}"',
                "X-Content-Type-Options": "nosniff",
            },
        )

    # -- execution ---------------------------------------------------------------------------

    def _finish(self, prompt: FakePrompt, outcome: tuple[str, ...]) -> None:
        """Run the prompt to its end and write its history entry."""
        now = int(time.time() * 1000)
        messages: list[list[Any]] = [
            ["execution_start", {"prompt_id": prompt.prompt_id, "timestamp": now}],
            ["execution_cached", {"nodes": [], "prompt_id": prompt.prompt_id, "timestamp": now}],
        ]
        outputs: dict[str, Any] = {}
        last_node = list(prompt.graph)[-1]
        if outcome[0] == "success":
            try:
                outputs = self._make_outputs(prompt)
            except (ValueError, OSError) as exc:  # a graph failing as it runs, as ComfyUI says
                outcome = ("error", type(exc).__name__, str(exc))
        kind = outcome[0]
        if kind == "success":
            messages.append(
                ["execution_success", {"prompt_id": prompt.prompt_id, "timestamp": now}]
            )
            status = {"status_str": "success", "completed": True, "messages": messages}
        elif kind == "malformed":
            outputs = {last_node: {"images": [{"subfolder": "", "type": "output"}]}}
            status = {"status_str": "success", "completed": True, "messages": messages}
        elif kind == "interrupted":
            messages.append(
                [
                    "execution_interrupted",
                    {
                        "prompt_id": prompt.prompt_id,
                        "node_id": last_node,
                        "node_type": prompt.graph[last_node]["class_type"],
                        "executed": [],
                        "timestamp": now,
                    },
                ]
            )
            status = {"status_str": "error", "completed": False, "messages": messages}
        else:
            _, exception_type, message = outcome
            messages.append(
                [
                    "execution_error",
                    {
                        "prompt_id": prompt.prompt_id,
                        "node_id": last_node,
                        "node_type": prompt.graph[last_node]["class_type"],
                        "executed": [],
                        "exception_message": f"{message}\n",
                        "exception_type": exception_type,
                        "traceback": ['  File "execution.py", line 1, in execute\n'],
                        "current_inputs": {},
                        "current_outputs": [],
                        "timestamp": now,
                    },
                ]
            )
            status = {"status_str": "error", "completed": False, "messages": messages}
        prompt.state = "done"
        prompt.history = {
            "prompt": prompt.queue_item(),
            "outputs": outputs,
            "status": status,
            "meta": {
                node_id: {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
                for node_id in outputs
            },
        }

    def _make_outputs(self, prompt: FakePrompt) -> dict[str, Any]:
        graph = prompt.graph
        batch, size, seed = 1, None, 0
        for node in graph.values():
            inputs = node.get("inputs") or {}
            if isinstance(inputs.get("batch_size"), int):
                batch = max(batch, inputs["batch_size"])
            if node["class_type"] == "RepeatLatentBatch" and isinstance(inputs.get("amount"), int):
                batch = max(batch, inputs["amount"])
            if isinstance(inputs.get("width"), int) and isinstance(inputs.get("height"), int):
                size = (inputs["width"], inputs["height"])
            if isinstance(inputs.get("seed"), int):
                seed = inputs["seed"]
        inpaint = self._inpaint_inputs(graph)
        if size is None:  # no scaling node: the source's size, cropped to 8s as VAEEncode does
            source = inpaint[0] if inpaint else None
            size = (source.width // 8 * 8, source.height // 8 * 8) if source else (512, 512)
        outputs: dict[str, Any] = {}
        for node_id, node in graph.items():
            class_type = node["class_type"]
            prefix = str((node.get("inputs") or {}).get("filename_prefix") or "ComfyUI")
            subfolder, _, stem = prefix.rpartition("/")
            if class_type in IMAGE_SAVERS:
                file_type = "output" if class_type == "SaveImage" else "temp"
                suffix = "jpg" if self.image_format == "JPEG" else "png"
                items = []
                for index in range(batch):
                    if inpaint:
                        data = _inpainted(*inpaint, size, seed, index, self.image_format)
                    else:
                        data = _image_bytes(size, seed, index, self.image_format)
                    items.append(self._store(subfolder, stem, suffix, file_type, data))
                outputs[node_id] = {"images": items}
            elif class_type in VIDEO_SAVERS:
                item = self._store(subfolder or "video", stem, "mp4", "output", small_mp4())
                if class_type == "VHS_VideoCombine":  # VideoHelperSuite's shape
                    item.update(format="video/h264-mp4", frame_rate=24.0)
                    outputs[node_id] = {"gifs": [item]}
                else:
                    outputs[node_id] = {"images": [item], "animated": [True]}
        return outputs

    def _inpaint_inputs(self, graph: dict[str, Any]) -> tuple[Image.Image, Image.Image] | None:
        """The source image and the mask ("L", the source's size) of an inpainting graph,
        read from the uploads its LoadImage nodes name; None for any other graph."""
        for node in graph.values():
            wanted = INPAINT_NODES.get(node["class_type"])
            if wanted is None:
                continue
            inputs = node.get("inputs") or {}
            mask_from = _trace(graph, inputs.get(wanted[0]))
            image_from = _trace(graph, inputs.get(wanted[1]))
            if mask_from is None or image_from is None:
                raise ValueError(f"{node['class_type']}: no LoadImage upstream of its inputs")
            with Image.open(io.BytesIO(self.uploads[image_from[0]])) as image:
                source = image.convert("RGB")
            mask = _mask_of(self.uploads[mask_from[0]], mask_from[1], source.size)
            return source, mask
        return None

    def _store(
        self, subfolder: str, stem: str, suffix: str, file_type: str, data: bytes
    ) -> dict[str, Any]:
        self._counter += 1
        filename = f"{stem}_{self._counter:05}_.{suffix}"
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if self._next_outputs:
            data, content_type = self._next_outputs.pop(0)
        self.files[(file_type, subfolder, filename)] = (data, content_type)
        return {"filename": filename, "subfolder": subfolder, "type": file_type}
