"""The ``local`` provider: offline, deterministic stand-ins for every stage of the pipeline.

It exists so that anybody can try tierbot end to end (draft grid → final → edit → upscale →
video) without an account, a key or a network connection, and so that tests and demos have
a provider whose output is a pure function of the request: the same request (prompt, seed,
size, references) always gives the same bytes, which also means that calling ``result``
again after a restart returns exactly what the first call would have.

Nothing here pretends to be a real model. Drafts are abstract compositions (palette from a
stable hash of the prompt, layout from the seed) and carry a large ``OFFLINE PREVIEW``
band; finals and edits are Lanczos re-renders of their reference with an ``OFFLINE FINAL`` /
``OFFLINE EDIT`` label; upscales are plain Lanczos plus light sharpening; videos are a slow
pan/zoom over the still, encoded to H.264 by the ffmpeg binary that the ``imageio-ffmpeg``
wheel ships. All CPU work runs in worker processes (:func:`bot.cpu.run`).
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import io
import logging
import math
import random
import re
import subprocess
import tempfile
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import imageio_ffmpeg
from PIL import (
    Image,
    ImageDraw,
    ImageEnhance,
    ImageFilter,
    ImageFont,
    ImageOps,
    PngImagePlugin,
    UnidentifiedImageError,
)

from bot import cpu
from bot.domain import DEFAULT_VIDEO_SECONDS, RESOLUTION_LONG_EDGE, Capability, Stage
from bot.providers import GeneratedFile, GenerationRequest, PermanentError, ProviderCheck

log = logging.getLogger(__name__)

#: Default long edge of a draft, a final / edit and an upscale, in pixels.
DRAFT_LONG_EDGE = 1024
FINAL_LONG_EDGE = 1536
UPSCALE_LONG_EDGE = 2048

#: Video output: long edge, frame rate, default length and how far the camera zooms in.
VIDEO_LONG_EDGE = 1280
VIDEO_FPS = 24
VIDEO_MAX_ZOOM = 1.15
#: Fraction of the free margin (at the current zoom) the camera pans across.
VIDEO_PAN = 0.8

SUPPORTED: frozenset[Capability] = frozenset(
    {
        Capability.TEXT_TO_IMAGE,
        Capability.IMAGE_TO_IMAGE,
        Capability.INPAINT,
        Capability.UPSCALE,
        Capability.IMAGE_TO_VIDEO,
    }
)

_PNG = "image/png"
_MP4 = "video/mp4"
_BAND_COLOUR = (0, 0, 0, 200)
_TITLE_COLOUR = (255, 214, 0)
_TEXT_COLOUR = (245, 245, 245)
_META_COLOUR = (190, 190, 190)


class LocalProvider:
    """Offline provider: drafts, finals, edits, upscales and videos made on this machine.

    Stateless and deterministic: the output of :meth:`result` depends only on the request.
    """

    name = "local"

    async def submit(self, request: GenerationRequest) -> str:
        """Accept a request and return its request id (``local-<job_id>``) at once.

        Args:
            request: The generation to run.

        Returns:
            The provider request id to pass to :meth:`result`.

        Raises:
            PermanentError: The local provider cannot serve the request's capability.
        """
        _check_capability(request)
        return f"local-{request.job_id}"

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        """Render the request's output; the same request always gives the same bytes.

        Args:
            provider_request_id: The id :meth:`submit` returned (only used for logging).
            request: The generation to run.

        Returns:
            The generated files: ``request.n`` PNGs for a draft, one PNG for a final, edit
            or upscale, one MP4 for a video.

        Raises:
            PermanentError: Unsupported capability, bad parameters, or a missing or
                unreadable reference image.
        """
        _check_capability(request)
        log.debug(
            "local %s: %s for job %s", provider_request_id, request.capability, request.job_id
        )
        drafting = request.capability is Capability.TEXT_TO_IMAGE or (
            request.capability is Capability.IMAGE_TO_IMAGE and request.stage is Stage.DRAFT
        )
        match request.capability:
            case _ if drafting:
                if request.n < 1:
                    raise PermanentError(f"the local provider cannot make {request.n} images")
                size = draft_size(request.aspect_ratio, request.long_edge or DRAFT_LONG_EDGE)
                return list(
                    await asyncio.gather(
                        *(
                            cpu.run(_render_draft, request, request.seed + i, size)
                            for i in range(request.n)
                        )
                    )
                )
            case Capability.IMAGE_TO_IMAGE:
                return [await cpu.run(_render_final, request)]
            case Capability.INPAINT:
                return [await cpu.run(_render_inpaint, request)]
            case Capability.UPSCALE:
                return [await cpu.run(_render_upscale, request)]
            case Capability.IMAGE_TO_VIDEO:
                return [await cpu.run(_render_video, request)]
        raise AssertionError("unreachable")  # pragma: no cover - _check_capability guards

    async def cancel(self, provider_request_id: str) -> None:
        """Do nothing: local work is short and cannot be interrupted half way."""

    async def aclose(self) -> None:
        """Do nothing: the local provider holds no connections."""

    async def check(self, models: Sequence[str]) -> ProviderCheck:
        """Every local model is this file's own: nothing to ask."""
        return ProviderCheck(exists=dict.fromkeys(models, True))


def create(settings: object) -> LocalProvider:
    """Build the local provider.

    Args:
        settings: Ignored; the local provider needs no configuration.

    Returns:
        A new :class:`LocalProvider`.
    """
    return LocalProvider()


# --------------------------------------------------------------------------- helpers


def _check_capability(request: GenerationRequest) -> None:
    if request.capability not in SUPPORTED:
        what = str(request.capability).replace("-", " ")
        raise PermanentError(f"the local provider cannot do {what}")


def _round8(value: float) -> int:
    return max(8, round(value / 8) * 8)


def _even(value: float) -> int:
    return max(2, round(value / 2) * 2)


def draft_size(aspect_ratio: str, long_edge: int) -> tuple[int, int]:
    """Return the (width, height) of a draft: long edge given, both multiples of 8.

    Args:
        aspect_ratio: ``"W:H"``, e.g. ``"16:9"``.
        long_edge: Wanted length of the longer side in pixels.

    Returns:
        The size in pixels.

    Raises:
        PermanentError: The aspect ratio or long edge is malformed.
    """
    try:
        w_text, h_text = aspect_ratio.split(":")
        w, h = int(w_text), int(h_text)
    except ValueError:
        raise PermanentError(f"bad aspect ratio {aspect_ratio!r}, expected W:H") from None
    if w <= 0 or h <= 0 or max(w, h) > 8 * min(w, h):
        raise PermanentError(f"unsupported aspect ratio {aspect_ratio!r}")
    if not 64 <= long_edge <= 8192:
        raise PermanentError(f"unsupported image size {long_edge}px")
    if w >= h:
        return _round8(long_edge), _round8(long_edge * h / w)
    return _round8(long_edge * w / h), _round8(long_edge)


def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x00".join(str(p) for p in parts).encode()).digest()


def _palette(prompt: str) -> list[tuple[int, int, int]]:
    """Five colours from a stable hash of the prompt (analogous plus complementary hues)."""
    d = _digest("palette", prompt)
    base = d[0] / 255
    colours = []
    for k, offset in enumerate((0.0, 0.07, 0.5, 0.57, 0.15)):
        hue = (base + offset + d[k + 1] / 255 * 0.04) % 1.0
        sat = 0.45 + d[k + 6] / 255 * 0.45
        val = 0.55 + d[k + 11] / 255 * 0.40
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(max(0, min(255, round(c * factor))) for c in colour)  # type: ignore[return-value]


#: Fonts with accents, typographic punctuation, Greek and Cyrillic that Debian (and most Linux
#: desktops) install; the first present is used, else Pillow's built-in font, which has ASCII
#: only. Either way a character the font lacks is drawn as its nearest ASCII (see _drawable).
SYSTEM_FONTS = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
    Path("/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf"),
    Path("/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"),
)
_ASCII_PUNCTUATION = str.maketrans(
    {"—": "-", "–": "-", "‒": "-", "“": '"', "”": '"', "„": '"', "‘": "'", "’": "'", "…": "..."}
)


@functools.cache
def _font_file() -> Path | None:
    return next((path for path in SYSTEM_FONTS if path.is_file()), None)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Not cached: a FreeType face must not be shared by threads rendering at the same time.
    path = _font_file()
    if path is not None:
        return ImageFont.truetype(str(path), max(8, size))
    return ImageFont.load_default(size=max(8, size))


def _drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """``text`` with each character ``font`` lacks replaced by its nearest ASCII ("café" →
    "cafe", "—" → "-"), or "?" when there is none, so a label never shows empty boxes."""
    box = "\ue000"  # private use: no font we use maps it, so it draws the missing-glyph box
    missing = (font.getbbox(box), bytes(font.getmask(box)))
    known: dict[str, bool] = {}

    def has(char: str) -> bool:
        if char not in known:
            looks = (font.getbbox(char), bytes(font.getmask(char)))
            known[char] = char.isspace() or looks != missing
        return known[char]

    out = []
    for char in text:
        if has(char):
            out.append(char)
            continue
        plain = unicodedata.normalize("NFKD", char.translate(_ASCII_PUNCTUATION))
        plain = "".join(c for c in plain if not unicodedata.combining(c))
        out.append(plain if plain and all(has(c) for c in plain) else "?")
    return "".join(out)


def _fit_font(
    text: str, max_width: float, max_size: int
) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """The largest default font, at most ``max_size``, in which ``text`` fits ``max_width``."""
    size = max(8, max_size)
    font = _font(size)
    length = font.getlength(text)
    if length > max_width:
        size = max(8, int(size * max_width / length))
        font = _font(size)
        while size > 8 and font.getlength(text) > max_width:
            size -= 1
            font = _font(size)
    return font


def _ellipsize(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> str:
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text.rstrip() + "…"


def _wrap(
    text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float, max_lines: int
) -> list[str]:
    """Word-wrap ``text`` to ``width`` pixels, at most ``max_lines`` lines (the last ellipsized)."""
    words = " ".join(text.split()).split(" ")
    lines: list[str] = []
    current = ""
    for word in words:
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = word
        while font.getlength(current) > width and len(current) > 1:  # break very long words
            cut = len(current) - 1
            while cut > 1 and font.getlength(current[:cut]) > width:
                cut -= 1
            lines.append(current[:cut])
            current = current[cut:]
        if len(lines) > max_lines:
            break
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        kept = lines[:max_lines]
        kept[-1] = _ellipsize(kept[-1] + " " + lines[max_lines], font, width)
        return kept
    return lines


#: A PNG text chunk on offline drafts: the height of their ``OFFLINE PREVIEW`` band, so a
#: final made from one relabels the band with its own model (a real image is left alone).
_BAND_CHUNK = "tierbot-preview-band"


def _png(image: Image.Image, band_height: int | None = None) -> bytes:
    buffer = io.BytesIO()
    info = None
    if band_height is not None:
        info = PngImagePlugin.PngInfo()
        info.add_text(_BAND_CHUNK, str(band_height))
    image.save(buffer, "PNG", compress_level=6, pnginfo=info)
    return buffer.getvalue()


def _clean_prompt(prompt: str) -> str:
    return " ".join(prompt.split()) or "(no prompt)"


# --------------------------------------------------------------------------- drafts


@dataclass(frozen=True)
class _Band:
    """Layout of a draft's ``OFFLINE PREVIEW`` band: fonts, lines and its height."""

    title: ImageFont.FreeTypeFont | ImageFont.ImageFont
    title_size: int
    body: ImageFont.FreeTypeFont | ImageFont.ImageFont
    line_height: int
    prompt_lines: list[str]
    meta: str
    margin: int
    stripe: int
    pad: int
    height: int


def _font_size(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, fallback: int) -> int:
    return round(getattr(font, "size", fallback))


def _band_layout(size: tuple[int, int], prompt: str, model_id: str, seed: int) -> _Band:
    width, height = size
    margin = max(6, round(width * 0.03))
    text_width = width - 2 * margin
    title = _fit_font("OFFLINE PREVIEW", text_width, round(min(width * 0.1, height * 0.075)))
    title_size = _font_size(title, 16)
    body = _font(max(12, round(title_size * 0.36)))
    line_height = round(_font_size(body, 12) * 1.25)
    prompt_lines = _wrap(_drawable(_clean_prompt(prompt), body), body, text_width, max_lines=3)
    meta = _ellipsize(f"model {model_id} · seed {seed}", body, text_width)
    stripe = max(4, title_size // 5)
    pad = max(6, title_size // 4)
    band = stripe + pad + title_size + pad + line_height * (len(prompt_lines) + 1) + pad
    return _Band(
        title=title,
        title_size=title_size,
        body=body,
        line_height=line_height,
        prompt_lines=prompt_lines,
        meta=meta,
        margin=margin,
        stripe=stripe,
        pad=pad,
        height=min(band, height // 2),
    )


def _scene(
    prompt: str, seed: int, size: tuple[int, int], floor: float | None = None
) -> Image.Image:
    """The unlabelled draft composition: sky, sun, blobs, hills and foreground shapes.

    The palette comes from the prompt; every placement from a ``random.Random`` seeded by the
    seed and the prompt hash, so different seeds give visibly different layouts.

    Args:
        prompt: The prompt (palette and layout).
        seed: The seed (layout).
        size: (width, height) in pixels.
        floor: The y below which the picture will be covered (by the label band); the horizon
            and the shapes are placed above it. Defaults to the bottom edge.

    Returns:
        The composition, RGB.
    """
    width, height = size
    floor = float(height) if floor is None else floor
    short = min(width, height)
    palette = _palette(prompt)
    rng = random.Random(int.from_bytes(_digest("scene", seed, prompt)[:8], "big"))

    # Sky: a vertical gradient from a dark shade of one colour to a light shade of another.
    top = _shade(palette[rng.randrange(2)], 0.45)
    bottom = _shade(palette[1], 1.15)
    mask = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    image = Image.composite(Image.new("RGB", size, bottom), Image.new("RGB", size, top), mask)

    horizon = rng.uniform(0.45, 0.7) * floor

    # Sun with a soft glow, somewhere above the horizon.
    glow = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(glow)
    sx = rng.uniform(0.1, 0.9) * width
    sy = rng.uniform(0.1, 0.8) * horizon
    radius = rng.uniform(0.05, 0.13) * short
    sun = _shade(palette[4], 1.3)
    draw.ellipse((sx - radius * 2, sy - radius * 2, sx + radius * 2, sy + radius * 2), (*sun, 90))
    # Blobs: translucent soft ellipses scattered over the sky.
    for _ in range(rng.randint(4, 8)):
        bx, by = rng.uniform(-0.1, 1.1) * width, rng.uniform(0.0, 0.95) * floor
        rx, ry = rng.uniform(0.05, 0.22) * width, rng.uniform(0.03, 0.12) * height
        colour = palette[rng.randrange(len(palette))]
        draw.ellipse((bx - rx, by - ry, bx + rx, by + ry), (*colour, rng.randint(70, 150)))
    glow = glow.filter(ImageFilter.GaussianBlur(max(2, short // 40)))
    image.paste(glow, (0, 0), glow)
    draw = ImageDraw.Draw(image)
    draw.ellipse((sx - radius, sy - radius, sx + radius, sy + radius), sun)

    # Two layers of hills with wavy ridges.
    for layer, factor in ((0, 0.8), (1, 0.5)):
        base = horizon + layer * rng.uniform(0.08, 0.2) * (floor - horizon)
        waves = [
            (rng.uniform(0.01, 0.05) * floor, rng.uniform(1.0, 4.0), rng.uniform(0, math.tau))
            for _ in range(3)
        ]
        points = [(0.0, float(height))]
        steps = 48
        for i in range(steps + 1):
            x = width * i / steps
            y = base + sum(a * math.sin(f * math.tau * i / steps + p) for a, f, p in waves)
            points.append((x, y))
        points.append((float(width), float(height)))
        draw.polygon(points, fill=_shade(palette[2 + layer], factor))

    # Foreground shapes: towers, pyramids and discs standing on the ground.
    line = max(1, short // 200)
    for _ in range(rng.randint(3, 6)):
        colour = _shade(palette[rng.randrange(len(palette))], rng.uniform(0.5, 1.0))
        outline = _shade(colour, 0.5)
        x = rng.uniform(0.03, 0.97) * width
        ground = rng.uniform(horizon + 0.3 * (floor - horizon), floor - 0.02 * height)
        w = rng.uniform(0.03, 0.12) * width
        h = rng.uniform(0.15, 0.6) * ground
        kind = rng.randrange(3)
        if kind == 0:
            draw.rectangle((x - w / 2, ground - h, x + w / 2, ground), colour, outline, line)
        elif kind == 1:
            draw.polygon([(x - w, ground), (x + w, ground), (x, ground - h)], colour, outline, line)
        else:
            draw.ellipse((x - w / 2, ground - w, x + w / 2, ground), colour, outline, line)
    return image


def _label_draft(image: Image.Image, band: _Band) -> Image.Image:
    """Write the ``OFFLINE PREVIEW`` band (title, prompt, model, seed) along the bottom."""
    width, height = image.size
    y0 = height - band.height
    out = image.convert("RGBA")
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    draw.rectangle((0, y0, width, height), _BAND_COLOUR)
    # Hazard stripes along the top of the band: nobody mistakes this for a real render.
    stripe, step = band.stripe, band.stripe * 2
    for x in range(-stripe, width + stripe, step * 2):
        draw.polygon(
            [(x, y0 + stripe), (x + stripe, y0), (x + stripe + step, y0), (x + step, y0 + stripe)],
            (*_TITLE_COLOUR, 255),
        )
    out = Image.alpha_composite(out, overlay)
    draw = ImageDraw.Draw(out)
    y = y0 + stripe + band.pad
    draw.text((band.margin, y), "OFFLINE PREVIEW", _TITLE_COLOUR, font=band.title)
    y += band.title_size + band.pad
    for text in band.prompt_lines:
        draw.text((band.margin, y), text, _TEXT_COLOUR, font=band.body)
        y += band.line_height
    draw.text((band.margin, y), band.meta, _META_COLOUR, font=band.body)
    return out.convert("RGB")


def render_draft(prompt: str, model_id: str, seed: int, size: tuple[int, int]) -> Image.Image:
    """Render one labelled offline draft.

    Args:
        prompt: The prompt (palette, layout and label).
        model_id: The catalog model id written on the label.
        seed: The seed (layout and label).
        size: (width, height) in pixels.

    Returns:
        The labelled draft, RGB.
    """
    band = _band_layout(size, prompt, model_id, seed)
    scene = _scene(prompt, seed, size, floor=size[1] - band.height)
    return _label_draft(scene, band)


def _render_draft(request: GenerationRequest, seed: int, size: tuple[int, int]) -> GeneratedFile:
    band = _band_layout(size, request.prompt, request.model_id, seed)
    scene = _scene(request.prompt, seed, size, floor=size[1] - band.height)
    if request.references:
        scene = _show_references(scene, request, seed, floor=size[1] - band.height, lead=True)
    image = _label_draft(scene, band)
    return GeneratedFile(
        data=_png(image, band.height), mime=_PNG, width=image.width, height=image.height, seed=seed
    )


def _preview_band(path: Path) -> int | None:
    """The height of an offline draft's band (from its PNG chunk), None for other images."""
    try:
        with Image.open(path) as opened:
            return int(opened.info[_BAND_CHUNK])
    except (OSError, KeyError, ValueError):
        return None


# --------------------------------------------------------------------------- references


def _open_reference(request: GenerationRequest) -> Image.Image:
    """Open and decode ``request.references[0]`` as RGB, or fail with a person-readable reason."""
    if not request.references:
        what = str(request.stage)
        raise PermanentError(f"the local provider needs a reference image for the {what} stage")
    path = Path(request.references[0])
    try:
        with Image.open(path) as opened:
            image = ImageOps.exif_transpose(opened)
            image.load()
    except FileNotFoundError:
        raise PermanentError(f"reference image {path.name!r} does not exist") from None
    except (UnidentifiedImageError, Image.DecompressionBombError):
        raise PermanentError(f"reference image {path.name!r} is not a readable image") from None
    except OSError as exc:  # truncated data, permissions, a directory …
        reason = exc.strerror or "it is damaged or unreadable"
        raise PermanentError(f"reference image {path.name!r} could not be read: {reason}") from None
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def _open_image(path: Path) -> Image.Image:
    """A reference as RGB (the asset store holds checked images only)."""
    try:
        with Image.open(path) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except (OSError, Image.DecompressionBombError):
        raise PermanentError(f"reference image {path.name!r} could not be read") from None


def _show_references(
    image: Image.Image, request: GenerationRequest, seed: int, *, floor: int, lead: bool
) -> Image.Image:
    """Make the references visible, as a real model's use of them would be: a style
    reference tints the picture with its mean colour; content references appear in it, the
    first one large at a place the seed picks (``lead``: a draft shaped by it), the others as
    framed insets along the top.

    ``request.references`` are the stage's own source (not shown again: a final or an edit
    already is its source), then content references, then ``style_references`` style ones.
    """
    paths = [Path(p) for p in request.references]
    own = 0 if lead else 1
    style = paths[len(paths) - request.style_references :] if request.style_references else []
    content = paths[own : len(paths) - len(style)]
    out = image.convert("RGB")
    width, height = out.size
    for path in style:
        mean = _open_image(path).resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        out = Image.blend(out, Image.new("RGB", out.size, mean), 0.35)
    rng = random.Random(seed)
    insets = content
    if lead and content:
        first = _open_image(content[0])
        box = max(16, round(min(width, floor) * 0.6))
        first.thumbnail((box, box), Image.Resampling.LANCZOS)
        framed = ImageOps.expand(first, border=max(2, box // 80), fill=(255, 255, 255))
        x = rng.randint(0, max(0, width - framed.width))
        y = rng.randint(0, max(0, floor - framed.height))
        out.paste(framed, (x, y))
        insets = content[1:]
    side = max(16, round(min(width, height) * 0.16))
    margin = max(4, side // 10)
    for index, path in enumerate(insets):
        thumb = _open_image(path)
        thumb.thumbnail((side, side), Image.Resampling.LANCZOS)
        framed = ImageOps.expand(thumb, border=max(2, side // 40), fill=(255, 255, 255))
        x = width - (index + 1) * (side + margin)
        if x < 0:
            break
        out.paste(framed, (x, margin * 6))
    return out


def _scaled(size: tuple[int, int], long_edge: int) -> tuple[int, int]:
    width, height = size
    if not 16 <= long_edge <= 8192:
        raise PermanentError(f"unsupported image size {long_edge}px")
    scale = long_edge / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _tint(prompt: str) -> tuple[int, int, int]:
    d = _digest("edit", prompt)
    r, g, b = colorsys.hsv_to_rgb(d[0] / 255, 0.75, 1.0)
    return round(r * 255), round(g * 255), round(b * 255)


def _label_top(image: Image.Image, heading: str, prompt: str) -> Image.Image:
    """A small two-line label bar across the top (heading, then the prompt on one line)."""
    width, height = image.size
    size = max(12, round(min(width, height) * 0.028))
    margin = max(6, size // 2)
    head_font = _fit_font(heading, width - 2 * margin, size)
    body = _font(max(10, round(size * 0.72)))
    body_size = _font_size(body, 10)
    line = _ellipsize(_drawable(_clean_prompt(prompt), body), body, width - 2 * margin)
    bar = margin + size + margin // 2 + round(body_size * 1.2) + margin // 2

    out = image.convert("RGBA")
    overlay = Image.new("RGBA", out.size, (0, 0, 0, 0))
    ImageDraw.Draw(overlay).rectangle((0, 0, width, bar), (0, 0, 0, 235))
    out = Image.alpha_composite(out, overlay)
    draw = ImageDraw.Draw(out)
    draw.text((margin, margin), heading, _TITLE_COLOUR, font=head_font)
    draw.text((margin, margin + size + margin // 2), line, _TEXT_COLOUR, font=body)
    return out.convert("RGB")


def _render_final(request: GenerationRequest) -> GeneratedFile:
    source = _open_reference(request)
    long_edge = request.long_edge or RESOLUTION_LONG_EDGE.get(request.resolution or "")
    size = _scaled(source.size, long_edge or FINAL_LONG_EDGE)
    image = source.resize(size, Image.Resampling.LANCZOS)
    image = ImageEnhance.Contrast(image).enhance(1.08)
    image = ImageEnhance.Sharpness(image).enhance(1.3)
    if request.stage is Stage.EDIT and request.strength is not None:
        # A soft pass (🪄): light, colour and grain evened out, the picture kept.
        softened = image.filter(ImageFilter.GaussianBlur(0.8))
        image = Image.blend(image, softened, min(1.0, request.strength * 2))
        image = Image.blend(image, ImageOps.autocontrast(image, cutoff=1), request.strength)
        kind = "OFFLINE SOFT PASS"
    elif request.stage is Stage.EDIT:
        # Visibly apply "the instruction": a tint and a warmer contrast derived from the prompt.
        image = Image.blend(image, Image.new("RGB", size, _tint(request.prompt)), 0.28)
        image = ImageEnhance.Color(image).enhance(1.25)
        kind = "OFFLINE EDIT"
    else:
        kind = "OFFLINE FINAL"
    if len(request.references) > 1:
        image = _show_references(image, request, request.seed, floor=size[1], lead=False)
    if (drawn := _preview_band(Path(request.references[0]))) is not None:
        # The draft's band named the draft model: say which model made this instead.
        band = _band_layout(size, request.prompt, request.model_id, request.seed)
        band = replace(band, height=max(band.height, math.ceil(drawn * size[1] / source.height)))
        # The band is translucent: blank the draft's band first, so its text does not show.
        ImageDraw.Draw(image).rectangle((0, size[1] - band.height, size[0], size[1]), "black")
        image = _label_draft(image, band)
    heading = f"{kind} · {request.model_id} · seed {request.seed}"
    image = _label_top(image, heading, request.prompt)
    return GeneratedFile(
        data=_png(image), mime=_PNG, width=image.width, height=image.height, seed=request.seed
    )


def _render_inpaint(request: GenerationRequest) -> GeneratedFile:
    """A region edit done for real: the instruction's tint (as an edit's) inside the mask
    only, at the source's own size, the rest of the picture as it was."""
    if request.mask is None:
        raise PermanentError("the local provider needs a mask to inpaint")
    source = _open_reference(request)
    try:
        with Image.open(request.mask) as opened:
            mask = opened.convert("L").resize(source.size, Image.Resampling.NEAREST)
    except OSError:
        raise PermanentError("the region's mask could not be read") from None
    edited = Image.blend(source, Image.new("RGB", source.size, _tint(request.prompt)), 0.45)
    edited = ImageEnhance.Color(edited).enhance(1.3)
    image = Image.composite(edited, source, mask)
    return GeneratedFile(
        data=_png(image), mime=_PNG, width=image.width, height=image.height, seed=request.seed
    )


def _render_upscale(request: GenerationRequest) -> GeneratedFile:
    source = _open_reference(request)
    size = _scaled(source.size, request.long_edge or UPSCALE_LONG_EDGE)
    image = source.resize(size, Image.Resampling.LANCZOS)
    image = image.filter(ImageFilter.UnsharpMask(radius=1.5, percent=60, threshold=3))
    return GeneratedFile(
        data=_png(image), mime=_PNG, width=image.width, height=image.height, seed=request.seed
    )


# --------------------------------------------------------------------------- video


def video_size(size: tuple[int, int], long_edge: int = VIDEO_LONG_EDGE) -> tuple[int, int]:
    """The video frame size for a still: ``long_edge`` on the long side, even dimensions.

    Args:
        size: The still's (width, height).
        long_edge: Wanted long edge of the video.

    Returns:
        (width, height), both even, keeping the still's aspect ratio.
    """
    width, height = size
    if width >= height:
        return _even(long_edge), _even(long_edge * height / width)
    return _even(long_edge * width / height), _even(long_edge)


#: Motion words and where they move the camera (radians, as ``_frames`` takes them: 0 pans
#: right, pi/2 down); a pull-back zooms out instead of in.
_PAN_WORDS = {"right": 0.0, "down": math.pi / 2, "left": math.pi, "up": -math.pi / 2}
_PULL_BACK = ("pull back", "pull-back", "zoom out", "dolly out", "dolly-out", "pulls back")


@dataclass(frozen=True)
class Move:
    """How the offline camera moves through a still."""

    direction: float  # of the pan
    pan: float = VIDEO_PAN  # fraction of the free margin crossed
    zoom: float = VIDEO_MAX_ZOOM  # deepest zoom
    out: bool = False  # start zoomed in and pull back


def move_for(prompt: str, seed: int) -> Move:
    """The camera move the motion words ask for ("pan left", "slow dolly-in", "pull back",
    the ``dynamic`` preset's "dynamic"), else one the seed picks; the same words always
    move the same way."""
    words = prompt.lower()
    direction = _digest("pan", seed, prompt)[0] / 256 * math.tau
    for word, angle in _PAN_WORDS.items():
        if re.search(rf"\b{word}(ward)?s?\b", words):
            direction = angle
            break
    dynamic = "dynamic" in words
    return Move(
        direction=direction,
        pan=VIDEO_PAN if dynamic else VIDEO_PAN / 2,
        zoom=1.0 + (VIDEO_MAX_ZOOM - 1.0) * (2.0 if dynamic else 1.0),
        out=any(phrase in words for phrase in _PULL_BACK),
    )


def _frames(
    source: Image.Image, out: tuple[int, int], count: int, move: Move
) -> Iterator[Image.Image]:
    """Yield ``count`` RGB frames: an eased zoom (in from the whole still, or out to it) with
    a pan, as ``move`` says. A zoom in starts on the whole still: the first frame is the
    image the video was made from."""
    # Work from a copy with just enough resolution for the deepest zoom.
    work_size = _scaled(source.size, round(max(out) * move.zoom))
    work = source.resize(work_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    ww, wh = work.size
    dx, dy = math.cos(move.direction), math.sin(move.direction)
    for i in range(count):
        t = i / (count - 1) if count > 1 else 0.0
        ease = 0.5 - 0.5 * math.cos(math.pi * t)
        zoom = 1.0 + (move.zoom - 1.0) * ((1 - ease) if move.out else ease)
        bw, bh = ww / zoom, wh / zoom
        cx = ww / 2 + dx * (ww - bw) / 2 * move.pan
        cy = wh / 2 + dy * (wh - bh) / 2 * move.pan
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        yield work.resize(out, Image.Resampling.BILINEAR, box=box)


def _render_video(request: GenerationRequest) -> GeneratedFile:
    seconds = request.duration_s or DEFAULT_VIDEO_SECONDS
    if not 1 <= seconds <= 60:
        raise PermanentError(f"the local provider cannot make a {seconds} s video")
    source = _open_reference(request)
    if len(request.references) > 1:
        source = _show_references(source, request, request.seed, floor=source.height, lead=False)
    out = video_size(source.size)
    count = seconds * VIDEO_FPS
    move = move_for(request.prompt, request.seed)

    with tempfile.TemporaryDirectory(prefix="tierbot-local-") as tmp:
        target = Path(tmp) / "video.mp4"
        errors = Path(tmp) / "ffmpeg.log"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-hide_banner",
            "-loglevel",
            "error",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "-video_size",
            f"{out[0]}x{out[1]}",
            "-framerate",
            str(VIDEO_FPS),
            "-i",
            "pipe:0",
            "-an",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-crf",
            "20",
            "-threads",
            "2",  # pinned: x264 output depends on the thread count
            "-pix_fmt",
            "yuv420p",
            "-movflags",
            "+faststart",
            "-map_metadata",
            "-1",
            "-fflags",
            "+bitexact",
            "-flags",
            "+bitexact",
            "-y",
            str(target),
        ]
        with errors.open("wb") as log_file:
            process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=log_file
            )
            assert process.stdin is not None
            try:
                for frame in _frames(source, out, count, move):
                    process.stdin.write(frame.tobytes())
                process.stdin.close()
            except BrokenPipeError:
                pass
            except BaseException:
                process.kill()
                process.wait()
                raise
            code = process.wait()
        if code != 0 or not target.exists():
            detail = errors.read_text(errors="replace").strip().splitlines()
            log.error("local video: ffmpeg exited with %s: %s", code, detail[-5:])
            last = detail[-1] if detail else f"exit status {code}"
            raise PermanentError(f"the local video encoder failed: {last}")
        data = target.read_bytes()
    return GeneratedFile(
        data=data,
        mime=_MP4,
        width=out[0],
        height=out[1],
        duration_s=count / VIDEO_FPS,
        seed=request.seed,
    )
