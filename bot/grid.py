"""The draft grid: several drafts composed into one numbered image.

Chat surfaces show one message with one image best: a single grid reads at a glance in
Slack and Discord, where four separate attachments collapse into a gallery or a file list.
Each tile carries a large number in its top-left corner; the number (1-based, left to right,
top to bottom) matches the reaction people click (1️⃣..9️⃣) to choose a draft for the final.

Pure and synchronous: the only I/O is reading inputs given as paths. Callers run it in a
worker process (:func:`bot.cpu.run`).
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

MAX_IMAGES = 9
#: Smallest cell the size guarantee may shrink to before giving up.
MIN_CELL = 64
#: Qualities tried, best first, before the cell size is reduced.
QUALITIES = (85, 75, 65, 55, 45, 35)
#: Factor applied to the cell size at each further step.
CELL_STEP = 0.75

_BACKGROUND = (18, 18, 20)  # letterbox and empty cells
_GUTTER = (58, 58, 64)
_BADGE_FILL = (255, 214, 0)
_BADGE_INK = (0, 0, 0)
_FORMATS = {"JPEG": "image/jpeg", "JPG": "image/jpeg", "WEBP": "image/webp"}


@dataclass(frozen=True)
class GridImage:
    """A composed grid, encoded.

    Attributes:
        data: The encoded image.
        mime: ``image/jpeg`` or ``image/webp``.
        width: Width in pixels.
        height: Height in pixels.
        columns: Tiles per row.
        rows: Rows of tiles.
    """

    data: bytes
    mime: str
    width: int
    height: int
    columns: int
    rows: int


def grid_layout(count: int) -> tuple[int, int]:
    """The near-square layout for ``count`` tiles.

    Args:
        count: Number of images, 1 to 9.

    Returns:
        (columns, rows): ``ceil(sqrt(n))`` columns and as many rows as needed, so 2 → 2×1,
        3 → 2×2 (one empty cell), 4 → 2×2, 5–6 → 3×2, 7–9 → 3×3.

    Raises:
        ValueError: ``count`` is not between 1 and 9.
    """
    if not 1 <= count <= MAX_IMAGES:
        raise ValueError(f"a grid holds 1 to {MAX_IMAGES} images, got {count}")
    columns = math.ceil(math.sqrt(count))
    return columns, math.ceil(count / columns)


def gutter_for(cell: int) -> int:
    """The width of the gutter between cells of size ``cell``."""
    return max(2, cell // 64)


def compose_grid(
    images: Sequence[bytes | Path],
    *,
    image_format: str = "JPEG",
    max_bytes: int = 8_000_000,
    cell: int = 512,
) -> GridImage:
    """Compose 1 to 9 images into one numbered, near-square grid.

    Every tile is ``cell`` px on its long side and shaped like the median image (see
    :func:`tile_size`); each image is letterboxed into its tile (fit inside, aspect kept,
    centred on a dark background), so mixed sizes and aspect ratios line up.
    Tiles are separated by thin gutters and numbered 1..n in a high-contrast badge at their
    top-left corner.

    Args:
        images: Encoded images (bytes) or paths to image files, in tile order.
        image_format: ``"JPEG"`` (default) or ``"WEBP"``.
        max_bytes: The encoded grid is guaranteed to be smaller than this: the quality is
            stepped down first, then the cell size.
        cell: Size of one tile in pixels (at least 64).

    Returns:
        The encoded grid and its geometry.

    Raises:
        ValueError: Wrong number of images, an unreadable image, an unknown format, a cell
            smaller than 64 px, or ``max_bytes`` too small to be met.
        FileNotFoundError: A path in ``images`` does not exist.
    """
    columns, rows = grid_layout(len(images))
    key = image_format.upper()
    if key not in _FORMATS:
        raise ValueError(f"unsupported grid format {image_format!r}; use JPEG or WEBP")
    if cell < MIN_CELL:
        raise ValueError(f"cell must be at least {MIN_CELL} px, got {cell}")
    # Decoding and resizing release the GIL in Pillow, so tiles are prepared in parallel.
    with ThreadPoolExecutor(max_workers=min(4, len(images) or 1)) as pool:
        pictures = list(pool.map(_load, images, range(1, len(images) + 1)))

    size = cell
    while True:
        canvas = _compose(pictures, columns, rows, size)
        for quality in QUALITIES:
            data = _encode(canvas, key, quality)
            if len(data) < max_bytes:
                if size != cell or quality != QUALITIES[0]:
                    log.debug("grid fits %d bytes at cell %d, quality %d", max_bytes, size, quality)
                return GridImage(
                    data=data,
                    mime=_FORMATS[key],
                    width=canvas.width,
                    height=canvas.height,
                    columns=columns,
                    rows=rows,
                )
        if size == MIN_CELL:
            raise ValueError(f"cannot fit a grid of {len(pictures)} images under {max_bytes} bytes")
        size = max(MIN_CELL, int(size * CELL_STEP))


def _load(item: bytes | Path | str | os.PathLike[str], index: int) -> Image.Image:
    """Decode one input to RGB (transparency flattened onto the letterbox colour)."""
    source: io.BytesIO | Path
    if isinstance(item, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(item))
    else:
        source = Path(item)
    try:
        with Image.open(source) as opened:
            opened.load()
            ImageOps.exif_transpose(opened, in_place=True)
            # One copy that outlives the file (closing it frees the decoded pixels).
            image = opened.copy() if opened.mode == "RGB" else opened.convert("RGBA")
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ValueError(f"image {index} is not a readable image") from exc
    except OSError as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"image {index} could not be read: {exc}") from exc
    if image.mode == "RGBA":  # transparency flattened onto the letterbox colour
        flat = Image.new("RGBA", image.size, (*_BACKGROUND, 255))
        image = Image.alpha_composite(flat, image).convert("RGB")
    return image


def tile_size(pictures: Sequence[Image.Image], cell: int) -> tuple[int, int]:
    """Tile width and height: ``cell`` on the long side, shaped like the median picture.

    Drafts of one request share an aspect ratio, so a 16:9 grid gets 16:9 tiles instead of
    wasting half of every square tile on letterbox; odd ones out are letterboxed.
    """
    ratios = sorted(p.width / p.height for p in pictures)
    ratio = min(max(ratios[len(ratios) // 2], 9 / 21), 21 / 9)
    if ratio >= 1:
        return cell, max(1, round(cell / ratio))
    return max(1, round(cell * ratio)), cell


def _compose(pictures: list[Image.Image], columns: int, rows: int, cell: int) -> Image.Image:
    gutter = gutter_for(cell)
    tile_w, tile_h = tile_size(pictures, cell)
    width = columns * tile_w + (columns - 1) * gutter
    height = rows * tile_h + (rows - 1) * gutter
    canvas = Image.new("RGB", (width, height), _GUTTER)
    font = ImageFont.load_default(size=max(10, round(min(tile_w, tile_h) * 0.14)))
    with ThreadPoolExecutor(max_workers=min(4, len(pictures))) as pool:
        fitted = list(pool.map(lambda p: _fit(p, tile_w, tile_h), pictures))
    for index in range(columns * rows):
        x = (index % columns) * (tile_w + gutter)
        y = (index // columns) * (tile_h + gutter)
        tile = Image.new("RGB", (tile_w, tile_h), _BACKGROUND)
        if index < len(pictures):
            picture = fitted[index]
            tile.paste(picture, ((tile_w - picture.width) // 2, (tile_h - picture.height) // 2))
            _badge(tile, index + 1, font)
        canvas.paste(tile, (x, y))
    return canvas


def _fit(picture: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to fit inside width×height, aspect kept.

    ``reducing_gap`` lets Pillow shrink by an integer factor first when the scale is large
    (4× and more) and run Lanczos only on the last step.
    """
    scale = min(width / picture.width, height / picture.height)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if size == picture.size:
        return picture
    return picture.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _badge(
    tile: Image.Image, number: int, font: ImageFont.FreeTypeFont | ImageFont.ImageFont
) -> None:
    """Draw the tile number in a yellow, black-edged badge at the tile's top-left corner."""
    cell = min(tile.size)
    inset = max(3, cell // 40)
    side = max(16, round(cell * 0.2))
    edge = max(2, cell // 128)
    draw = ImageDraw.Draw(tile)
    box = (inset, inset, inset + side, inset + side)
    draw.rounded_rectangle(box, radius=side // 5, fill=_BADGE_FILL, outline=_BADGE_INK, width=edge)
    centre = (inset + side / 2, inset + side / 2)
    stroke = max(1, cell // 256)
    draw.text(
        centre,
        str(number),
        fill=_BADGE_INK,
        font=font,
        anchor="mm",
        stroke_width=stroke,
        stroke_fill=_BADGE_INK,
    )


def _encode(canvas: Image.Image, key: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    if key == "WEBP":
        canvas.save(buffer, "WEBP", quality=quality, method=4)
    else:
        canvas.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()
