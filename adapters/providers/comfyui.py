"""The ``comfyui`` provider: generations on a self-hosted ComfyUI server (``COMFYUI_URL``).

ComfyUI runs *workflows*: graphs of nodes in its "API format" (``{node_id: {"class_type",
"inputs"}}``). tierbot ships three, and anybody can add their own without touching code.

How a generation runs (ComfyUI's own HTTP API, no websocket needed):

1. each reference image the workflow uses, and a region edit's mask, is sent with
   ``POST /upload/image`` (multipart, subfolder ``tierbot``, named by its content hash so a
   retry re-uses the same file);
2. the filled-in workflow is queued with ``POST /prompt {"prompt", "client_id",
   "prompt_id"}``; ComfyUI's ``prompt_id`` is the request id :meth:`ComfyUIProvider.submit`
   returns at once (a plain string: the runner stores it, and after a restart polling resumes
   with it instead of queueing the work twice);
3. ``GET /history/{prompt_id}`` is polled: ``{}`` while queued or running, then the entry with
   its ``status`` and ``outputs``; while it is empty ``GET /queue`` is checked now and then, so
   a prompt that ComfyUI lost (a restart empties its in-memory queue) is resubmitted instead
   of awaited forever;
4. every output file is fetched with ``GET /view?filename=&subfolder=&type=`` through the
   guarded :func:`~adapters.providers._http.download` (size cap, content type, full decode).

Cancel is best effort: ``POST /queue {"delete": [id]}`` drops a prompt still waiting, and
``POST /interrupt {"prompt_id": id}`` stops it when ``GET /queue`` shows it running (only
then: servers older than targeted interrupts stop whatever runs, maybe somebody else's work).

**Workflows.** A catalog model's ``provider_model`` names a workflow file::

    [models.my-flux]
    provider = "comfyui"
    provider_model = "my-flux-t2i.json"     # one file for the model's capability
    ...
    provider_model = "z-image-turbo"        # no ".json": one file per capability, named
                                            # z-image-turbo-t2i.json, z-image-turbo-i2i.json

Without the ``.json`` suffix the capability picks the file: ``-t2i`` (text-to-image),
``-i2i`` (image-to-image), ``-upscale``, ``-i2v`` (image-to-video), ``-t2v``
(text-to-video), ``-inpaint``. Files are looked up first in the user folder
``TIERBOT_DATA_DIR/comfyui_workflows/`` (``data/comfyui_workflows/`` by default), then in the
shipped folder next to this module, so a user file of the same name replaces a shipped one.
Files are read at every submission: an edit takes effect without a restart.

To add your own workflow: build it in ComfyUI, export it with *Workflow → Export (API)*,
save the JSON in the user folder, and replace the values tierbot should fill with
placeholders (a string value that is exactly ``"{{seed}}"`` becomes the number, a placeholder
inside a longer string is replaced as text)::

    {{prompt}}            the prompt
    {{negative_prompt}}   the negative prompt ("" when none; only matters at cfg > 1)
    {{seed}}              the seed
    {{width}} {{height}}  the output size: the aspect ratio (a reference image's own, when
                          there is one) at the requested long edge, else about 1 megapixel;
                          for a region edit (inpaint) the source's own size instead (long
                          edge at most 2048); multiples of 16
    {{long_edge}}         the longer of the two
    {{batch_size}}        how many images to make in this call
    {{image}}             the uploaded first reference image, for LoadImage's "image" input
    {{image_2}} ...       further reference images ({{image_1}} is {{image}})
    {{mask}}              the uploaded mask of a region edit, for a LoadImage node: a greyscale
                          image the source's size, white where the image may change, black
                          where it must not (take it with ImageToMask, channel "red": the
                          MASK output of LoadImage is the alpha channel, and the mask has none)
    {{duration_s}}        video length in seconds
    {{frames}}            frames for that length at 16 fps plus one (Wan's 4n+1 rule: 81 for 5 s)

An unknown placeholder, a missing reference, or a workflow that takes no ``{{image}}`` for an
image-to-image, inpaint, upscale or video request fails at once with a message naming the
file; so does an inpaint request without a mask, an inpaint workflow that takes no
``{{mask}}``, and a workflow that takes a ``{{mask}}`` when the request has none. The mask is
a plain upload rather than ``POST /upload/mask`` (which writes it into the alpha channel of a
copy of the source, for the mask editor), so it stays one content-named file a retry re-uses.
Wrapped exports (``{"prompt": {...}}``) are accepted; the UI format (``nodes``/``links``) is
refused with a hint to export the API format.

The shipped templates run **Z-Image Turbo** (8 steps, cfg 1, ``res_multistep``/``simple``,
``ModelSamplingAuraFlow`` shift 3; files ``z_image_turbo_bf16.safetensors``,
``qwen_3_4b.safetensors``, ``ae.safetensors`` from Hugging Face ``Comfy-Org/z_image_turbo``).
Their negative is ``ConditioningZeroOut``: at cfg 1 ComfyUI never evaluates a negative prompt.
The image-to-image template re-noises the reference at denoise 0.6.

The inpaint template (``z-image-turbo-inpaint.json``) encodes the source with ``VAEEncode``
and marks the region with ``SetLatentNoiseMask``: at every one of the 8 steps the sampler puts
the (re-noised) source back outside the mask, so only the region is drawn anew (denoise 1),
in keeping with what surrounds it. That needs no inpainting training and works at any step
count, and Z-Image Turbo has none: ``VAEEncodeForInpaint`` greys the region out for models
trained to fill grey (below denoise 1 the grey shows through), and
``InpaintModelConditioning`` only adds inputs that inpainting models (SD inpaint, Flux Fill)
read. As the source stays under the mask, a copy of the template at a lower denoise (0.6, as
in the image-to-image template) keeps the region's layout and colours and redraws its detail.
``GrowMask`` widens the region by 16 pixels: the mask is shrunk to the latent grid (one cell
per 8 pixels), and its soft edge should fall outside the region, where tierbot puts the
original pixels back anyway (the core composites every region edit over its source, whatever
a workflow returns). The mask and the source are scaled without cropping, so the core's
plain resize back to the source's size lines every pixel up again.

A batch of images shares one seed (ComfyUI draws the noise of a whole batch from it), so every
image of a call is recorded with the request's seed.

**Credentials.** ComfyUI has no login of its own; one behind a reverse proxy with basic auth
is reached with ``COMFYUI_URL=https://user:password@host``. The user and password are sent as
an ``Authorization`` header (to the ComfyUI host only), never kept in a URL that could be
logged, and never appear in a message.

**Errors.** Connection failures, timeouts, 429 (``Retry-After`` honoured) and 5xx are
transient; polling and download hiccups are ridden out here (``_http.Hiccups``) until the
generation's deadline before they count. A workflow
ComfyUI rejects (HTTP 400: a missing node type or model file, a bad value) is permanent, with
ComfyUI's own words. An ``execution_error`` while running is permanent, except running out of
GPU memory and an interrupt from elsewhere (transient: a new submission may succeed).
ComfyUI has no content policy; a workflow may add a safety-checker node that raises, and an
execution error whose exception names NSFW content, a safety checker or a content policy is
reported as a content-policy refusal. A success reply without the fields it must have, or an
output that is not a readable image or video, is permanent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlencode, urlsplit, urlunsplit

import httpx

from adapters.providers._http import (
    DownloadPolicy,
    GenerationLost,
    Hiccups,
    checked,
    download,
    error_from_response,
    json_object,
    provider_client,
    provider_message,
    read_reference,
)
from bot.domain import DEFAULT_VIDEO_SECONDS, Capability
from bot.imaging import FORMAT_MIME, check_image_pixels
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

#: The shipped workflow templates (package data).
SHIPPED_WORKFLOWS = Path(__file__).resolve().parent / "comfyui_workflows"
#: The user's workflow folder, under the data dir; looked up before the shipped one.
USER_WORKFLOWS = "comfyui_workflows"

#: File-name suffix of each capability's workflow when ``provider_model`` has no ``.json``.
CAPABILITY_SUFFIX: dict[Capability, str] = {
    Capability.TEXT_TO_IMAGE: "t2i",
    Capability.IMAGE_TO_IMAGE: "i2i",
    Capability.INPAINT: "inpaint",
    Capability.UPSCALE: "upscale",
    Capability.IMAGE_TO_VIDEO: "i2v",
    Capability.TEXT_TO_VIDEO: "t2v",
}
#: Capabilities that work on a reference image: their workflow must load one.
NEEDS_IMAGE = frozenset(
    {
        Capability.IMAGE_TO_IMAGE,
        Capability.INPAINT,
        Capability.UPSCALE,
        Capability.IMAGE_TO_VIDEO,
    }
)
VIDEO_CAPABILITIES = frozenset({Capability.IMAGE_TO_VIDEO, Capability.TEXT_TO_VIDEO})

#: Output area when no long edge is asked for: about one megapixel, what Z-Image, SDXL and
#: Flux are trained at.
DEFAULT_PIXELS = 1024 * 1024
#: Latent sizes must divide by 8 (16 for Flux-family patching); 16 suits every model.
SIZE_MULTIPLE = 16
MIN_EDGE = 64
#: Frame rate behind ``{{frames}}`` (Wan 2.x renders 16 fps, 4n+1 frames).
FRAMES_PER_SECOND = 16
#: A region edit keeps the source's own size up to this long edge. Past it (a 4K upscale),
#: the source's aspect at this edge: image models lose coherence far above their training
#: sizes (about 1-4 MP), and the core scales the result back to the source's size anyway.
MAX_INPAINT_EDGE = 2048

#: While the history is empty, ``GET /queue`` is checked on the first poll and every n-th.
QUEUE_CHECK_EVERY = 5

UPLOAD_SUBFOLDER = "tierbot"
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".mkv"})
#: Output keys whose items are files: SaveImage/SaveVideo use "images", VideoHelperSuite "gifs".
MEDIA_KEYS = frozenset({"images", "gifs", "videos", "video"})

_PLACEHOLDER = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_IMAGE_PLACEHOLDER = re.compile(r"image(?:_([1-9]))?")
_MASK_PLACEHOLDER = "mask"
_SCALAR_PLACEHOLDERS = frozenset(
    {
        "prompt",
        "negative_prompt",
        "seed",
        "width",
        "height",
        "long_edge",
        "batch_size",
        "duration_s",
        "frames",
    }
)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.json")
_POLICY_WORDS = re.compile(
    r"nsfw|safety[ _-]?check|content[ _-]?policy|unsafe[ _-]?content|moderation", re.IGNORECASE
)
_OUT_OF_MEMORY = re.compile(r"out ?of ?memory|OutOfMemory", re.IGNORECASE)
_FORMAT_SUFFIX = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}

_T = TypeVar("_T")


# --------------------------------------------------------------------------- workflows


@dataclass(frozen=True)
class Workflow:
    """A workflow template, read and checked.

    Attributes:
        name: the file name, as the catalog names it.
        path: where it was found (user folder or shipped folder).
        graph: the API-format graph, placeholders unfilled.
        images: how many reference images it loads (``{{image}}`` … ``{{image_N}}``).
        mask: whether it loads a region edit's mask (``{{mask}}``).
    """

    name: str
    path: Path
    graph: dict[str, Any]
    images: int
    mask: bool = False


def workflow_name(provider_model: str, capability: Capability) -> str:
    """The workflow file a catalog ``provider_model`` names for one capability.

    Args:
        provider_model: ``name.json`` (used as is) or a stem (the capability adds a suffix).
        capability: what the request asks for.

    Returns:
        A file name such as ``z-image-turbo-t2i.json``.
    """
    if provider_model.endswith(".json"):
        return provider_model
    return f"{provider_model}-{CAPABILITY_SUFFIX[capability]}.json"


def find_workflow(name: str, user_dir: Path) -> Path:
    """The path of workflow ``name``: the user's folder first, then the shipped one.

    Raises:
        PermanentError: the name is not a plain ``.json`` file name, or no folder has it.
    """
    if not _SAFE_NAME.fullmatch(name):
        raise PermanentError(
            f"ComfyUI workflow name {name!r} must be a plain file name ending in .json"
        )
    for folder in (user_dir, SHIPPED_WORKFLOWS):
        path = folder / name
        if path.is_file():
            return path
    shipped = ", ".join(sorted(p.name for p in SHIPPED_WORKFLOWS.glob("*.json")))
    raise PermanentError(
        f"no ComfyUI workflow {name}: put it in {user_dir} (shipped: {shipped or 'none'})"
    )


def load_workflow(name: str, user_dir: Path) -> Workflow:
    """Find, read and check a workflow template.

    Raises:
        PermanentError: missing, not JSON, not API format, or an unknown placeholder.
    """
    path = find_workflow(name, user_dir)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PermanentError(f"ComfyUI workflow {name} is not readable JSON: {exc}") from None
    graph = raw
    wrapped = isinstance(raw, dict) and isinstance(raw.get("prompt"), dict)
    if wrapped and "class_type" not in raw["prompt"]:  # {"prompt": {...}} as POST /prompt takes
        graph = raw["prompt"]
    if isinstance(graph, dict) and "nodes" in graph and "links" in graph:
        raise PermanentError(
            f"ComfyUI workflow {name} is in the UI format; export it with "
            "Workflow → Export (API) instead"
        )
    if not (
        isinstance(graph, dict)
        and graph
        and all(
            isinstance(node, dict)
            and isinstance(node.get("class_type"), str)
            and isinstance(node.get("inputs", {}), dict)
            for node in graph.values()
        )
    ):
        raise PermanentError(
            f"ComfyUI workflow {name} is not in ComfyUI's API format "
            '({"<node id>": {"class_type": ..., "inputs": {...}}})'
        )
    images = 0
    placeholders = _placeholders(graph)
    for placeholder in sorted(placeholders - {_MASK_PLACEHOLDER}):
        image = _IMAGE_PLACEHOLDER.fullmatch(placeholder)
        if image:
            images = max(images, int(image.group(1) or 1))
        elif placeholder not in _SCALAR_PLACEHOLDERS:
            known = ", ".join("{{" + p + "}}" for p in sorted(_SCALAR_PLACEHOLDERS))
            raise PermanentError(
                f"ComfyUI workflow {name} uses an unknown placeholder {{{{{placeholder}}}}}; "
                f"known: {known}, {{{{image}}}}, {{{{image_2}}}}…, {{{{mask}}}}"
            )
    return Workflow(
        name=name,
        path=path,
        graph=graph,
        images=images,
        mask=_MASK_PLACEHOLDER in placeholders,
    )


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)


def _placeholders(graph: dict[str, Any]) -> set[str]:
    """Every placeholder name used in the graph's node inputs."""
    return {
        match.group(1)
        for node in graph.values()
        for text in _strings(node.get("inputs", {}))
        for match in _PLACEHOLDER.finditer(text)
    }


def fill_workflow(graph: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``graph`` with its placeholders replaced by ``values``.

    A string that is exactly one placeholder takes the value itself (an int stays an int, as
    ComfyUI's INT inputs want); a placeholder inside a longer string is replaced as text.
    Only node inputs are touched: class types and titles stay as written.
    """

    def fill(value: Any) -> Any:
        if isinstance(value, str):
            whole = _PLACEHOLDER.fullmatch(value)
            if whole:
                return values[whole.group(1)]
            return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
        if isinstance(value, list):
            return [fill(item) for item in value]
        if isinstance(value, dict):
            return {key: fill(item) for key, item in value.items()}
        return value

    return {
        node_id: {**node, "inputs": fill(node.get("inputs", {}))} for node_id, node in graph.items()
    }


def _ratio(aspect_ratio: str) -> float:
    try:
        width, height = (float(part) for part in aspect_ratio.split(":"))
    except ValueError:
        raise PermanentError(f"bad aspect ratio {aspect_ratio!r}, expected W:H") from None
    if width <= 0 or height <= 0 or max(width, height) > 8 * min(width, height):
        raise PermanentError(f"unsupported aspect ratio {aspect_ratio!r}")
    return width / height


def _multiple(value: float) -> int:
    return max(MIN_EDGE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)


def output_size(ratio: float, long_edge: int | None) -> tuple[int, int]:
    """The (width, height) to render: ``ratio`` at ``long_edge``, else about 1 megapixel.

    Args:
        ratio: width / height.
        long_edge: wanted length of the longer side in pixels, if any.

    Returns:
        Both sides rounded to multiples of 16 (at least 64).
    """
    if long_edge:
        if ratio >= 1:
            return _multiple(long_edge), _multiple(long_edge / ratio)
        return _multiple(long_edge * ratio), _multiple(long_edge)
    width = math.sqrt(DEFAULT_PIXELS * ratio)
    return _multiple(width), _multiple(width / ratio)


def _check_mask(name: str, workflow: Workflow, request: GenerationRequest) -> None:
    """A region edit and its workflow must agree on the mask, before anything is uploaded.

    A mask the workflow does not load is left alone (an instruction-only image-to-image
    workflow gets the region in the prompt's words; the core composites either way).

    Raises:
        PermanentError: an inpaint request without a mask, an inpaint workflow without
            ``{{mask}}``, or a workflow that loads ``{{mask}}`` for a request without one or
            with no ``{{image}}`` to apply it to.
    """
    inpaint = request.capability is Capability.INPAINT
    if inpaint and request.mask is None:
        raise PermanentError(
            f"ComfyUI workflow {name} was asked to inpaint without a mask (the request has "
            "none: a region edit needs --region or --mask)"
        )
    if inpaint and not workflow.mask:
        raise PermanentError(
            f"ComfyUI workflow {name} loads no {{{{mask}}}}, so it cannot inpaint: add a "
            'LoadImage node whose image is "{{mask}}" and feed it through ImageToMask'
        )
    if workflow.mask and request.mask is None:
        raise PermanentError(
            f"ComfyUI workflow {name} loads a {{{{mask}}}}, but this "
            f"{request.capability.value} request has no mask"
        )
    if workflow.mask and workflow.images == 0:
        raise PermanentError(
            f"ComfyUI workflow {name} loads a {{{{mask}}}} but no {{{{image}}}} it could mask"
        )


# --------------------------------------------------------------------------- references


@dataclass(frozen=True)
class _Reference:
    """A reference image ready to upload: named by its content, so retries re-use it."""

    name: str
    data: bytes
    mime: str
    size: tuple[int, int]


def _read_reference(path: Path) -> _Reference:
    """Read a reference image and its size (header only; it came from our asset store)."""
    image = read_reference(path, accept=None)  # ComfyUI's LoadImage takes what Pillow reads
    digest = hashlib.sha256(image.data).hexdigest()[:24]
    return _Reference(
        name=f"tierbot-{digest}.{_FORMAT_SUFFIX.get(image.format, 'png')}",
        data=image.data,
        mime=image.mime,
        size=(image.width, image.height),
    )


def _read_mask(path: Path, source: tuple[int, int]) -> _Reference:
    """Read a region edit's mask and check it fits its source.

    A mask of another size would be stretched over the source by the workflow's scaling and
    mark the wrong pixels; the core makes masks the source's size, so a mismatch is a bug to
    stop at, not to paper over.

    Args:
        path: the mask file (a greyscale PNG from the asset store).
        source: (width, height) of the source image it belongs to.

    Raises:
        PermanentError: the mask is missing, unreadable, not an image, or not the source's size.
    """
    subject = f"the mask {path.name!r}"
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PermanentError(f"{subject} does not exist") from None
    except OSError as exc:
        raise PermanentError(f"{subject} could not be read: {exc.strerror or exc}") from None
    kind, width, height = check_image_pixels(data, subject=subject)
    if (width, height) != source:
        raise PermanentError(
            f"{subject} is {width}x{height} but its source image is {source[0]}x{source[1]}; "
            "a mask must be the size of the image it edits"
        )
    digest = hashlib.sha256(data).hexdigest()[:24]
    return _Reference(
        name=f"tierbot-mask-{digest}.{_FORMAT_SUFFIX.get(kind, 'png')}",
        data=data,
        mime=FORMAT_MIME.get(kind, "application/octet-stream"),
        size=(width, height),
    )


# --------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class _OutputFile:
    """One file a finished prompt lists in its history outputs."""

    filename: str
    subfolder: str
    type: str
    kind: str | None  # "image", "video", or None for anything else


def _json_body(response: httpx.Response, what: str) -> dict[str, Any]:
    body = json_object(response)
    if body is None:
        raise PermanentError(f"ComfyUI sent a malformed reply to {what} (not a JSON object)")
    return body


def _malformed(what: str) -> PermanentError:
    return PermanentError(f"ComfyUI sent a malformed reply: {what}")


def _validation_message(response: httpx.Response) -> str | None:
    """ComfyUI's reason for refusing a workflow (HTTP 400 from ``POST /prompt``), or None."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    if isinstance(error, str):
        return f"ComfyUI rejected the request: {error}"[:400]
    if not isinstance(error, dict):
        return None
    summary = str(error.get("message") or error.get("type") or "invalid workflow")
    reasons = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, dict):
        for node_id, info in node_errors.items():
            if not isinstance(info, dict):
                continue
            for reason in info.get("errors") or []:
                if isinstance(reason, dict):
                    reasons.append(
                        f"{info.get('class_type', '?')} (node {node_id}): "
                        f"{reason.get('message', '')}: {reason.get('details', '')}".rstrip(": ")
                    )
    if not reasons and error.get("details"):
        reasons.append(str(error["details"]))
    detail = "; ".join(reasons)
    return f"ComfyUI rejected the workflow: {summary}{' — ' + detail if detail else ''}"[:400]


def _execution_failure(messages: Any) -> ProviderError:
    """The runner's error for a prompt whose history status is ``error``."""
    for message in messages if isinstance(messages, list) else []:
        if not (isinstance(message, list | tuple) and len(message) == 2):
            continue
        event, data = message
        if not isinstance(data, dict):
            continue
        if event == "execution_interrupted":
            return TransientError("the generation was interrupted on the ComfyUI server")
        if event != "execution_error":
            continue
        kind = str(data.get("exception_type") or "")
        text = str(data.get("exception_message") or "").strip()
        first_line = text.splitlines()[0].strip() if text else kind or "an error"
        where = f"{data.get('node_type', 'a node')} (node {data.get('node_id', '?')})"
        if _POLICY_WORDS.search(kind) or _POLICY_WORDS.search(text):
            return ContentPolicyError(f"the ComfyUI workflow's {where} blocked it: {first_line}")
        if _OUT_OF_MEMORY.search(kind) or _OUT_OF_MEMORY.search(text):
            return TransientError(f"ComfyUI ran out of GPU memory in {where}")
        return PermanentError(f"ComfyUI failed in {where}: {first_line}"[:400])
    return PermanentError("ComfyUI reported that the workflow failed, without details")


def _kind(filename: str, media_format: Any) -> str | None:
    suffix = PurePosixPath(filename).suffix.lower()
    if suffix in VIDEO_SUFFIXES or str(media_format or "").startswith("video/"):
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def _output_files(outputs: Any, expect: str) -> list[_OutputFile]:
    """The files of kind ``expect`` a finished prompt made, saved ones before previews.

    Raises:
        PermanentError: the outputs are malformed, or hold no file of that kind.
    """
    if not isinstance(outputs, dict):
        raise _malformed("the finished generation has no outputs")
    found: list[_OutputFile] = []
    for node_id, node_output in outputs.items():
        if not isinstance(node_output, dict):
            raise _malformed(f"the outputs of node {node_id} are not an object")
        for key, items in node_output.items():
            if key not in MEDIA_KEYS:
                continue  # "text", "animated" and custom nodes' UI values are no files
            if not isinstance(items, list):
                raise _malformed(f"the {key} of node {node_id} are not a list")
            for item in items:
                filename = item.get("filename") if isinstance(item, dict) else None
                if not isinstance(filename, str) or not filename:
                    raise _malformed(f"an output of node {node_id} has no file name")
                found.append(
                    _OutputFile(
                        filename=filename,
                        subfolder=str(item.get("subfolder") or ""),
                        type=str(item.get("type") or "output"),
                        kind=_kind(filename, item.get("format")),
                    )
                )
    wanted = [f for f in found if f.kind == expect]
    saved = [f for f in wanted if f.type == "output"]  # PreviewImage writes "temp" copies
    if not (saved or wanted):
        node = "SaveImage" if expect == "image" else "SaveVideo"
        raise PermanentError(
            f"the ComfyUI workflow finished without any {expect} output (does it end in a "
            f"{node} node?)"
        )
    return saved or wanted


def _queued_ids(queue: Any) -> set[str]:
    """Prompt ids in ``GET /queue`` (items are ``[number, prompt_id, prompt, extra, ...]``)."""
    if not isinstance(queue, dict):
        raise _malformed("GET /queue is not an object")
    ids: set[str] = set()
    for key in ("queue_running", "queue_pending"):
        for item in queue.get(key) or []:
            if isinstance(item, list | tuple) and len(item) > 1:
                ids.add(str(item[1]))
            elif isinstance(item, dict) and "prompt_id" in item:
                ids.add(str(item["prompt_id"]))
    return ids


def _running_ids(queue: Any) -> set[str]:
    running = queue.get("queue_running") if isinstance(queue, dict) else None
    return _queued_ids({"queue_running": running or []})


def _split_credentials(url: str) -> tuple[str, dict[str, str]]:
    """``url`` without its ``user:password@`` part, and the header that carries them."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, {}
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"  # IPv6
    netloc = f"{host}:{parts.port}" if parts.port else host
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return urlunsplit(parts._replace(netloc=netloc)), {"Authorization": f"Basic {token}"}


# --------------------------------------------------------------------------- the provider


class ComfyUIProvider:
    """Runs workflow templates on one ComfyUI server.

    Args:
        settings: ``comfyui_url`` (required), ``data_dir`` (user workflows),
            ``poll_interval_s``, ``max_generation_s`` and the HTTP/download limits.
    """

    name = "comfyui"

    def __init__(self, settings: Settings) -> None:
        if not settings.comfyui_url:
            raise ProviderUnavailable("not configured (set COMFYUI_URL)")
        self._base_url, auth_headers = _split_credentials(settings.comfyui_url)
        self._has_credentials = bool(auth_headers)
        self._client = provider_client(
            settings, self.name, base_url=self._base_url, headers=auth_headers
        )
        # Plain http is fine for the configured server itself (often on the LAN), and for this
        # provider only: the other providers' outputs must still come over https.
        own_host = urlsplit(self._base_url).hostname or ""
        self._policy = DownloadPolicy.from_settings(settings, http_hosts=[own_host])
        self._user_workflows = settings.data_dir / USER_WORKFLOWS
        self._poll_interval_s = settings.poll_interval_s
        self._max_generation_s = settings.max_generation_s
        # One client id per process: ComfyUI tags the prompt's websocket events with it.
        self._client_id = uuid.uuid4().hex
        self.hiccups = Hiccups.from_settings(settings, self.name)

    # -- the provider port -------------------------------------------------------------------

    async def submit(self, request: GenerationRequest) -> str:
        """Upload the references, fill the workflow in and queue it.

        Args:
            request: the generation; ``provider_model`` names the workflow.

        Returns:
            ComfyUI's ``prompt_id``.

        Raises:
            PermanentError: workflow missing or unfit (an inpaint workflow without
                ``{{mask}}``), reference or mask unreadable, an inpaint request without a
                mask, ComfyUI rejected the workflow, bad credentials, or a malformed reply.
            TransientError: ComfyUI unreachable, overloaded or failing (5xx).
        """
        name = workflow_name(request.provider_model, request.capability)
        workflow = await asyncio.to_thread(load_workflow, name, self._user_workflows)
        if request.capability in NEEDS_IMAGE and workflow.images == 0:
            raise PermanentError(
                f"ComfyUI workflow {name} loads no {{{{image}}}}, so it cannot do "
                f"{request.capability.value}"
            )
        if workflow.images > len(request.references):
            raise PermanentError(
                f"ComfyUI workflow {name} needs {workflow.images} reference image(s); "
                f"the request has {len(request.references)}"
            )
        _check_mask(name, workflow, request)
        # Only the images the workflow loads are read and uploaded; the first one also gives
        # the output its aspect ratio.
        references = [
            await asyncio.to_thread(_read_reference, Path(path))
            for path in request.references[: workflow.images]
        ]
        mask = None
        if workflow.mask and request.mask is not None:  # both, by _check_mask
            mask = await asyncio.to_thread(_read_mask, Path(request.mask), references[0].size)
        uploaded = [await self._upload(reference) for reference in references]
        values = self._values(request, references, uploaded)
        if mask is not None:
            values[_MASK_PLACEHOLDER] = await self._upload(mask)
        body = {
            "prompt": fill_workflow(workflow.graph, values),
            "client_id": self._client_id,
            # Servers that accept a client-chosen id keep it; older ones mint their own.
            "prompt_id": str(uuid.uuid4()),
        }
        reply = _json_body(await self._send("POST", "/prompt", json=body), "POST /prompt")
        prompt_id = reply.get("prompt_id")
        if not isinstance(prompt_id, str) or not prompt_id:
            raise _malformed("POST /prompt returned no prompt_id")
        log.info(
            "comfyui: job %s queued as prompt %s (workflow %s from %s)",
            request.job_id,
            prompt_id,
            name,
            "user folder" if workflow.path.parent != SHIPPED_WORKFLOWS else "shipped",
        )
        return prompt_id

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Poll the prompt's history until it finishes, then fetch its files.

        Args:
            provider_request_id: the ``prompt_id`` :meth:`submit` returned.
            request: the generation (capability, ``n`` and seed of the outputs).

        Returns:
            Up to ``request.n`` images, or one video.

        Raises:
            TransientError: ComfyUI lost the prompt, was interrupted, ran out of memory, took
                longer than ``max_generation_s``, or stopped answering.
            ContentPolicyError: a safety-checker node in the workflow refused the output.
            PermanentError: the workflow failed, made no output, or an output is malformed,
                too large or not decodable.
        """
        prompt_id = provider_request_id
        deadline = self.hiccups.deadline(self._max_generation_s)
        polls = 0
        while True:
            entry = await self._history_entry(prompt_id, deadline)
            if entry is not None:
                return await self._collect(prompt_id, entry, request, deadline)
            if polls % QUEUE_CHECK_EVERY == 0 and not await self._is_queued(prompt_id, deadline):
                entry = await self._history_entry(prompt_id, deadline)  # it may have just finished
                if entry is not None:
                    return await self._collect(prompt_id, entry, request, deadline)
                raise GenerationLost(
                    "ComfyUI no longer knows this generation (restarted, or its queue cleared)"
                )
            if self.hiccups.clock() >= deadline:
                await self.cancel(prompt_id)  # do not leave the GPU busy with abandoned work
                raise TransientError(
                    f"the ComfyUI generation took longer than {self._max_generation_s:.0f} s "
                    "(TIERBOT_MAX_GENERATION_S)"
                )
            polls += 1
            await self.hiccups.sleep(self._poll_interval_s)

    async def cancel(self, provider_request_id: str) -> None:
        """Drop the prompt from ComfyUI's queue, or interrupt it if it is running.

        Best effort: failures are logged, never raised.
        """
        prompt_id = provider_request_id
        try:
            await self._send("POST", "/queue", json={"delete": [prompt_id]})
            queue = _json_body(await self._send("GET", "/queue"), "GET /queue")
            if prompt_id in _running_ids(queue):
                await self._send("POST", "/interrupt", json={"prompt_id": prompt_id})
            log.info("comfyui: cancelled prompt %s", prompt_id)
        except ProviderError as exc:
            log.warning("comfyui: cancel of prompt %s failed: %s", prompt_id, exc.message)

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """The server answers ``GET /system_stats``, and each workflow file is found (a
        workflow's nodes and checkpoints are only checked when it runs)."""
        try:
            await self._send("GET", "/system_stats")
        except ProviderError as exc:
            return ProviderCheck(key_problem=f"unreachable: {exc.message}")
        exists: dict[str, bool | None] = {}
        notes: dict[str, str] = {}
        for name in models:
            try:
                find_workflow(name, self._user_workflows)
                exists[name] = True
            except PermanentError as exc:
                exists[name], notes[name] = False, exc.message
        return ProviderCheck(exists=exists, notes=notes)

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    # -- internals ---------------------------------------------------------------------------

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One call to ComfyUI, its failures as the runner's error classes."""
        return await checked(self._client.request(method, path, **kwargs), self._error)

    def _error(self, response: httpx.Response) -> ProviderError:
        """:func:`~adapters.providers._http.error_from_response`, plus ComfyUI's own 400 body
        (the node errors of a rejected workflow) and a hint for refused credentials."""
        if response.status_code in (401, 403):
            hint = (
                "check the user and password in COMFYUI_URL"
                if self._has_credentials
                else "it sits behind a login: put the user and password in COMFYUI_URL "
                "(https://user:password@host)"
            )
            return PermanentError(f"ComfyUI refused access ({provider_message(response)}); {hint}")
        if response.status_code == 400:
            message = _validation_message(response)
            if message:
                return PermanentError(message)
        return error_from_response(response)

    async def _get_json(self, path: str, deadline: float) -> dict[str, Any]:
        """A poll while a generation runs: its hiccups must not throw the generation away
        (the runner would queue it again), so they are ridden out (:class:`Hiccups`)."""

        async def get() -> dict[str, Any]:
            return _json_body(await self._send("GET", path), f"GET {path}")

        return await self.hiccups.through(get, f"GET {path}", deadline)

    async def _history_entry(self, prompt_id: str, deadline: float) -> dict[str, Any] | None:
        """The prompt's history entry, or None while it is queued or running."""
        history = await self._get_json(f"/history/{quote(prompt_id, safe='')}", deadline)
        entry = history.get(prompt_id)
        if entry is None:
            return None
        if not isinstance(entry, dict):
            raise _malformed("the history entry is not an object")
        return entry

    async def _is_queued(self, prompt_id: str, deadline: float) -> bool:
        return prompt_id in _queued_ids(await self._get_json("/queue", deadline))

    async def _upload(self, reference: _Reference) -> str:
        """Upload one reference or mask; returns the name LoadImage takes
        (``subfolder/name``)."""
        response = await self._send(
            "POST",
            "/upload/image",
            files={"image": (reference.name, reference.data, reference.mime)},
            data={"type": "input", "subfolder": UPLOAD_SUBFOLDER, "overwrite": "true"},
        )
        reply = _json_body(response, "POST /upload/image")
        name = reply.get("name")
        if not isinstance(name, str) or not name:
            raise _malformed("POST /upload/image returned no name")
        subfolder = reply.get("subfolder") or ""
        return f"{subfolder}/{name}" if subfolder else name

    def _values(
        self, request: GenerationRequest, references: list[_Reference], uploaded: list[str]
    ) -> dict[str, Any]:
        """What the placeholders stand for in this request."""
        long_edge = request.long_edge
        if references and request.has_source:  # a draft's references do not set its shape
            width, height = references[0].size
            ratio = width / height
            if request.capability is Capability.INPAINT and not long_edge:
                # A region edit is composited back over its source: made at the source's
                # own size, it is neither squeezed to 1 MP nor rescaled to fit there.
                long_edge = min(max(width, height), MAX_INPAINT_EDGE)
        else:
            ratio = _ratio(request.aspect_ratio)
        width, height = output_size(ratio, long_edge)
        seconds = request.duration_s or DEFAULT_VIDEO_SECONDS
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or "",
            "seed": request.seed,
            "width": width,
            "height": height,
            "long_edge": max(width, height),
            "batch_size": max(1, request.n),
            "duration_s": seconds,
            "frames": seconds * FRAMES_PER_SECOND + 1,
        }
        for index, name in enumerate(uploaded, start=1):
            values[f"image_{index}"] = name
        if uploaded:
            values["image"] = uploaded[0]
        return values

    async def _collect(
        self, prompt_id: str, entry: dict[str, Any], request: GenerationRequest, deadline: float
    ) -> list[GeneratedFile]:
        """Check a finished prompt's status and fetch its output files."""
        status = entry.get("status")
        if isinstance(status, dict) and status.get("status_str") == "error":
            raise _execution_failure(status.get("messages"))
        expect = "video" if request.capability in VIDEO_CAPABILITIES else "image"
        files = _output_files(entry.get("outputs"), expect)
        wanted = 1 if expect == "video" else max(1, request.n)
        results = []
        # One after the other: a few files from a local server, and a failure stops the rest.
        for output in files[:wanted]:
            query = urlencode(
                {"filename": output.filename, "subfolder": output.subfolder, "type": output.type}
            )
            url = f"{self._base_url}/view?{query}"

            async def fetch(url: str = url) -> GeneratedFile:
                return await download(
                    self._client, url, self._policy, expect=expect, seed=request.seed
                )

            fetched = await self.hiccups.through(fetch, f"GET /view {output.filename}", deadline)
            results.append(fetched)
        log.info("comfyui: prompt %s made %d %s file(s)", prompt_id, len(results), expect)
        return results


def create(settings: Settings) -> ComfyUIProvider:
    """Build the ComfyUI provider.

    Raises:
        ProviderUnavailable: ``COMFYUI_URL`` is not set.
    """
    return ComfyUIProvider(settings)
