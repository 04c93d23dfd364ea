"""Tests for the numbered draft grid."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat

from bot.grid import GridImage, compose_grid, grid_layout

CELL = 128  # small cells keep the tests fast; the geometry does not depend on the size


def encoded(
    size: tuple[int, int], colour: tuple[int, ...] = (90, 120, 160), fmt: str = "PNG"
) -> bytes:
    mode = "RGBA" if len(colour) == 4 else "RGB"
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, fmt)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int) -> bytes:
    """An incompressible image, to push the encoded size up."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", size, rng.randbytes(size[0] * size[1] * 3))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def decode(grid: GridImage) -> Image.Image:
    image = Image.open(io.BytesIO(grid.data))
    image.load()
    return image.convert("RGB")


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    return sum(ImageStat.Stat(ImageChops.difference(a, b)).mean) / 3


def tile_origin(grid: GridImage, index: int, cell: int) -> tuple[int, int]:
    """Top-left corner of tile ``index`` (0-based), inferring the gutter from the width."""
    gutter = (grid.width - grid.columns * cell) // max(1, grid.columns - 1)
    return (index % grid.columns) * (cell + gutter), (index // grid.columns) * (cell + gutter)


@pytest.mark.parametrize(
    ("count", "layout"),
    [(1, (1, 1)), (2, (2, 1)), (3, (2, 2)), (4, (2, 2)), (5, (3, 2)), (6, (3, 2)),
     (7, (3, 3)), (8, (3, 3)), (9, (3, 3))],
)  # fmt: skip
def test_layout_and_dimensions(count: int, layout: tuple[int, int]) -> None:
    assert grid_layout(count) == layout
    grid = compose_grid([encoded((200, 200))] * count, cell=CELL)
    columns, rows = layout
    assert (grid.columns, grid.rows) == layout
    image = decode(grid)
    assert image.size == (grid.width, grid.height)
    if columns == 1:
        assert grid.width == CELL
    else:
        gutter = (grid.width - columns * CELL) / (columns - 1)
        assert gutter == int(gutter) and 0 < gutter <= CELL / 16
        assert grid.height == rows * CELL + (rows - 1) * gutter
    if rows == 1:
        assert grid.height == CELL


def test_default_cell_is_512_and_jpeg() -> None:
    grid = compose_grid([encoded((640, 480))] * 4)
    assert grid.mime == "image/jpeg"
    assert grid.data[:3] == b"\xff\xd8\xff"
    assert 2 * 512 < grid.width <= 2 * 512 + 32
    assert grid.height == 2 * 384 + (grid.width - 2 * 512)  # 4:3 tiles, one gutter
    assert Image.open(io.BytesIO(grid.data)).format == "JPEG"


def test_tiles_take_the_shape_of_the_drafts() -> None:
    wide = compose_grid([encoded((1024, 576))] * 4)
    assert wide.width == 2 * 512 + 8 and wide.height == 2 * 288 + 8
    tall = compose_grid([encoded((576, 1024))] * 2)
    assert tall.width == 2 * 288 + 8 and tall.height == 512
    mixed = compose_grid([encoded((1024, 576)), encoded((512, 512)), encoded((1024, 576))])
    assert mixed.width == 2 * 512 + 8 and mixed.height == 2 * 288 + 8


def test_mixed_sizes_are_letterboxed(tmp_path: Path) -> None:
    red = (220, 30, 30)
    green = (30, 200, 60)
    blue = (40, 60, 220)
    wide_path = tmp_path / "wide.jpg"
    Image.new("RGB", (800, 200), red).save(wide_path, quality=95)
    images: list[bytes | Path] = [
        wide_path,  # a Path input, wide
        encoded((100, 400), green),  # tall and small (scaled up)
        encoded((1500, 1500), blue, "JPEG"),  # big square
    ]
    grid = compose_grid(images, cell=CELL)
    assert (grid.columns, grid.rows) == (2, 2)
    image = decode(grid)

    def pixel(index: int, fx: float, fy: float) -> tuple[int, int, int]:
        x, y = tile_origin(grid, index, CELL)
        return image.getpixel((x + int(fx * (CELL - 1)), y + int(fy * (CELL - 1))))

    def near(actual: tuple[int, int, int], wanted: tuple[int, int, int], tol: int = 40) -> bool:
        return all(abs(a - w) <= tol for a, w in zip(actual, wanted, strict=True))

    # Wide image: centred band, dark above and below (right side, away from the badge).
    assert near(pixel(0, 0.5, 0.5), red)
    assert near(pixel(0, 0.9, 0.5), red)
    assert max(pixel(0, 0.9, 0.05)) < 50 and max(pixel(0, 0.9, 0.95)) < 50
    # Tall image: centred column, dark left and right, filling the full height.
    assert near(pixel(1, 0.5, 0.5), green)
    assert near(pixel(1, 0.5, 0.98), green)
    assert max(pixel(1, 0.05, 0.9)) < 50 and max(pixel(1, 0.95, 0.9)) < 50
    # Square image fills its whole tile.
    assert near(pixel(2, 0.95, 0.95), blue)
    assert near(pixel(2, 0.5, 0.5), blue)
    # The fourth cell is empty (dark).
    assert max(pixel(3, 0.5, 0.5)) < 50


def test_transparent_input_is_flattened() -> None:
    grid = compose_grid([encoded((64, 64), (255, 255, 255, 0))], cell=CELL)
    image = decode(grid)
    assert max(image.getpixel((CELL - 5, CELL - 5))) < 50  # transparent → dark background


def test_tile_numbers_are_drawn() -> None:
    grey = (128, 128, 128)
    grid = compose_grid([encoded((300, 300), grey)] * 4, cell=256)
    image = decode(grid)
    digits = []
    for index in range(4):
        x, y = tile_origin(grid, index, 256)
        badge = image.crop((x, y, x + 64, y + 64))
        centre = image.crop((x + 96, y + 96, x + 224, y + 224))
        assert mean_abs_diff(centre, Image.new("RGB", centre.size, grey)) < 3
        assert mean_abs_diff(badge, Image.new("RGB", badge.size, grey)) > 30
        # High contrast: both near-black (digit, outline) and bright (fill) pixels.
        lightness = badge.convert("L").tobytes()
        assert sum(1 for p in lightness if p < 40) > 100
        assert sum(1 for p in lightness if p > 180) > 400
        digits.append(image.crop((x + 14, y + 14, x + 50, y + 50)))  # inside the badge
    # Different numbers, different digits (JPEG noise alone stays around 3).
    for a in range(4):
        for b in range(a + 1, 4):
            assert mean_abs_diff(digits[a], digits[b]) > 10


def test_badge_is_large_relative_to_the_tile() -> None:
    grid = compose_grid([encoded((512, 512), (128, 128, 128))], cell=512)
    image = decode(grid)
    yellow = [
        (x, y)
        for y in range(0, 200, 2)
        for x in range(0, 200, 2)
        if (p := image.getpixel((x, y)))[0] > 200 and p[1] > 170 and p[2] < 80
    ]
    xs = [x for x, _ in yellow]
    assert max(xs) - min(xs) >= 0.15 * 512  # the badge spans at least ~15% of the tile


def test_stays_under_max_bytes_by_shrinking() -> None:
    images = [noise((256, 256), seed) for seed in range(4)]
    full = compose_grid(images, cell=CELL * 2)
    limit = len(full.data) // 6
    small = compose_grid(images, cell=CELL * 2, max_bytes=limit)
    assert len(small.data) < limit
    assert small.width < full.width  # the cell had to shrink, not just the quality
    assert decode(small).size == (small.width, small.height)
    assert (small.columns, small.rows) == (2, 2)


def test_quality_drops_before_the_cell_shrinks() -> None:
    images = [noise((256, 256), seed) for seed in range(2)]
    full = compose_grid(images, cell=CELL * 2)
    lower = compose_grid(images, cell=CELL * 2, max_bytes=len(full.data))  # just under
    assert len(lower.data) < len(full.data)
    assert lower.width == full.width


def test_impossible_max_bytes_raises() -> None:
    with pytest.raises(ValueError, match="cannot fit"):
        compose_grid([noise((128, 128), 1)], cell=CELL, max_bytes=200)


def test_webp_output() -> None:
    grid = compose_grid([encoded((300, 200)), encoded((200, 300))], image_format="WEBP", cell=CELL)
    assert grid.mime == "image/webp"
    assert grid.data[:4] == b"RIFF" and grid.data[8:12] == b"WEBP"
    image = Image.open(io.BytesIO(grid.data))
    assert image.format == "WEBP"
    assert image.size == (grid.width, grid.height)


def test_deterministic() -> None:
    images = [encoded((300, 200)), noise((100, 100), 3)]
    assert compose_grid(images, cell=CELL) == compose_grid(images, cell=CELL)


@pytest.mark.parametrize("count", [0, 10])
def test_wrong_number_of_images(count: int) -> None:
    with pytest.raises(ValueError, match="1 to 9 images"):
        compose_grid([encoded((10, 10))] * count, cell=CELL)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="image 2 is not a readable image"):
        compose_grid([encoded((10, 10)), b"not an image"], cell=CELL)
    with pytest.raises(ValueError, match="format"):
        compose_grid([encoded((10, 10))], image_format="GIF", cell=CELL)
    with pytest.raises(ValueError, match="cell"):
        compose_grid([encoded((10, 10))], cell=16)
