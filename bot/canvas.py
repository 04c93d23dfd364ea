"""The canvas: region edits that leave the rest untouched, seams that don't show, and the drift
check from a source to what was made of it. Pixels only (numpy, scikit-image); the pipeline and
the runner decide when. Everything here is CPU work: call it through ``bot.cpu.run``.

**Keeping the outside.** Whatever a model returns, :func:`keep_outside` makes the result the
original with only the region replaced: the model's image is scaled to the original's size,
matched to its surroundings (below), and blended in over a feathered edge that lies *inside*
the region, so every pixel outside it keeps the original's exact value.

**Seams.** A model often shifts the colour temperature or the grain of its whole picture. In a
ring just outside the region the original and the model's picture show the same thing, so their
difference there is the model's drift: the patch is corrected by it, per channel in CIELAB
(mean and spread), and given the original's grain when it is smoother. The seam is reported as
the mean CIEDE2000 colour difference between the model's picture and the original in that ring,
before and after the correction: above about 3 a seam shows.

**Drift.** :func:`drift` compares a result with the image it came from: the dominant palettes
(the source's five colours matched one to one among the result's eight so the total CIEDE2000
is least, weighted by how much of the source each covers: a colour the result only added is
left over) and the composition (structural similarity of small greyscale copies).
A final whose blue turned teal drifts; a re-seeded one of the same palette does not, however
different its layout. :func:`match_colours` is the free fix: the result's colours moved onto
the source's (CIELAB mean and spread), nothing else changed.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import lazy_loader
import numpy as np
from PIL import Image, ImageOps

from bot import footage
from bot.regions import Box

log = logging.getLogger(__name__)

# Loaded on first use (scikit-image's own lazy loader): the bot's process only builds masks;
# the colour maths runs in the CPU workers, which import these when they first need them.
scipy = lazy_loader.load("scipy")
skimage = lazy_loader.load("skimage")

#: Width of the ring around a region where the patch is compared with the original, in pixels
#: at 1024 px on the long edge (scaled with the image).
RING_PX = 24
#: How far inside the region the blend runs from the original to the patch, same scale.
FEATHER_PX = 12
#: Palette size of the drift check, and the side of the copies it compares.
PALETTE_COLOURS = 5
RESULT_COLOURS = 8
DRIFT_SIDE = 128
SSIM_SIDE = 64
#: A region must cover at least this many pixels of the image.
MIN_REGION_PIXELS = 16


@dataclass(frozen=True)
class Seam:
    """CIEDE2000 between the model's picture and the original around the region."""

    before: float
    after: float

    def line(self) -> str:
        return f"seam ΔE {self.before:.1f} → {self.after:.1f} (matched to its surroundings)"


@dataclass(frozen=True)
class Drift:
    """How far a result moved from its source."""

    palette: float  # weighted CIEDE2000 between matched dominant palettes
    structure: float  # SSIM of small greyscale copies, 1 = the same layout
    before: str  # the colour that moved most, named ("blue") ...
    after: str  # ... and what it became ("teal")

    def line(self, threshold: float, source: str = "the source") -> str:
        """One line for the result message."""
        if self.palette <= threshold:
            return (
                f"🎯 close to {source} (palette ΔE {self.palette:.0f}, layout {self.structure:.2f})"
            )
        change = f" — {self.before} → {self.after}" if self.before != self.after else ""
        return (
            f"🎨 palette drift ΔE {self.palette:.0f}{change} from {source} "
            f"(layout {self.structure:.2f}); react 🎨 to match {source}'s colours"
        )


# ------------------------------------------------------------------------------ masks


def _rgb(image: Image.Image) -> np.ndarray:
    """``image`` upright as float RGB in 0..1."""
    return np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float64) / 255.0


def box_mask(size: tuple[int, int], box: Box) -> Image.Image:
    """A mask (mode L, 255 inside) of ``box`` on an image of ``size``."""
    mask = Image.new("L", size, 0)
    mask.paste(255, box.pixels(*size))
    return mask


def painted_mask(painted: Image.Image, size: tuple[int, int]) -> Image.Image:
    """A mask from a painted image (the web canvas, an editor's export): opaque paint on a
    transparent background, or white on black; scaled to ``size``.

    Raises:
        ValueError: it marks nothing (or almost nothing).
    """
    if painted.mode in ("RGBA", "LA", "PA") or "transparency" in painted.info:
        alpha = painted.convert("RGBA").getchannel("A")
        values = np.asarray(alpha)
        marked = values if values.min() < 250 else np.asarray(painted.convert("L"))
    else:
        marked = np.asarray(painted.convert("L"))
    mask = Image.fromarray(np.where(marked >= 128, 255, 0).astype(np.uint8), "L")
    mask = mask.resize(size, Image.Resampling.NEAREST)
    if int(np.count_nonzero(np.asarray(mask))) < MIN_REGION_PIXELS:
        raise ValueError("the mask marks nothing: paint the region to change in white")
    return mask


def mask_box(mask: Image.Image) -> Box:
    """The box around a mask's region, in percent: how an instruction-only model is told."""
    left, top, right, bottom = mask.getbbox() or (0, 0, *mask.size)
    width, height = mask.size
    return Box(
        round(100 * left / width, 1),
        round(100 * top / height, 1),
        round(100 * (right - left) / width, 1),
        round(100 * (bottom - top) / height, 1),
    )


def _scale(size: tuple[int, int], pixels: int) -> int:
    return max(1, round(pixels * max(size) / 1024))


# -------------------------------------------------------------------------- compositing


def _ring(mask: np.ndarray, width: int) -> np.ndarray:
    return scipy.ndimage.binary_dilation(mask, iterations=width) & ~mask


def _match(patch_lab: np.ndarray, ring_patch: np.ndarray, ring_source: np.ndarray) -> np.ndarray:
    """``patch_lab`` moved so its ring statistics (per channel mean and spread) become the
    source's: the model's drift undone, its intended change kept."""
    mean_p, std_p = ring_patch.mean(axis=0), ring_patch.std(axis=0)
    mean_s, std_s = ring_source.mean(axis=0), ring_source.std(axis=0)
    scale = np.where(std_p > 1e-3, std_s / np.maximum(std_p, 1e-3), 1.0)
    scale = np.clip(scale, 0.5, 2.0)  # a flat ring says little about spread
    return (patch_lab - mean_p) * scale + mean_s


def _grain(image: np.ndarray, mask: np.ndarray) -> float:
    """The grain (high-frequency spread) of ``image`` (H×W×3, 0..1) where ``mask``."""
    grey = image.mean(axis=2)
    detail = grey - scipy.ndimage.gaussian_filter(grey, 1.0)
    return float(detail[mask].std()) if mask.any() else 0.0


def keep_outside(
    source_data: bytes, patch_data: bytes, mask_data: bytes, seed: int = 0
) -> tuple[bytes, Seam]:
    """The source with only the mask's region replaced by the patch, matched and feathered.

    Args:
        source_data: the original image file.
        patch_data: the model's image file (any size: it is scaled to the source's).
        mask_data: the mask file (L; white = may change), the source's size.
        seed: for the grain added to a patch smoother than the original.

    Returns:
        The PNG of the result (every pixel outside the mask exactly the source's) and the
        seam report.
    """
    with Image.open(io.BytesIO(source_data)) as opened:
        source_image = ImageOps.exif_transpose(opened).convert("RGB")
    with Image.open(io.BytesIO(patch_data)) as opened:
        patch_image = opened.convert("RGB").resize(source_image.size, Image.Resampling.LANCZOS)
    with Image.open(io.BytesIO(mask_data)) as opened:
        mask_image = opened.convert("L").resize(source_image.size, Image.Resampling.NEAREST)
    source = np.asarray(source_image, dtype=np.float64) / 255.0
    patch = np.asarray(patch_image, dtype=np.float64) / 255.0
    mask = np.asarray(mask_image) >= 128
    ring = _ring(mask, _scale(source_image.size, RING_PX))
    if not ring.any():  # the region is the whole picture: nothing around it to match
        ring = ~mask if (~mask).any() else mask

    source_lab, patch_lab = skimage.color.rgb2lab(source), skimage.color.rgb2lab(patch)
    before = float(skimage.color.deltaE_ciede2000(source_lab[ring], patch_lab[ring]).mean())
    matched_lab = _match(patch_lab, patch_lab[ring], source_lab[ring])
    matched = np.clip(skimage.color.lab2rgb(matched_lab), 0.0, 1.0)
    after = float(
        skimage.color.deltaE_ciede2000(
            source_lab[ring], skimage.color.rgb2lab(matched)[ring]
        ).mean()
    )
    missing = _grain(source, ring) ** 2 - _grain(matched, ring) ** 2
    if missing > 0:
        noise = np.random.default_rng(seed).normal(0.0, math.sqrt(missing), mask.shape)
        matched = np.clip(matched + noise[..., None], 0.0, 1.0)

    # The blend runs from 0 at the region's edge to 1 FEATHER_PX inside it; outside it is 0.
    inside = scipy.ndimage.distance_transform_edt(mask)
    alpha = np.clip(inside / _scale(source_image.size, FEATHER_PX), 0.0, 1.0)[..., None]
    blended = np.rint((source * (1 - alpha) + matched * alpha) * 255).astype(np.uint8)
    original = np.asarray(source_image)
    result = np.where(mask[..., None], blended, original)  # outside: the source, exactly
    out = io.BytesIO()
    Image.fromarray(result, "RGB").save(out, "PNG")
    return out.getvalue(), Seam(round(before, 2), round(after, 2))


def outside_unchanged(source_data: bytes, result_data: bytes, mask_data: bytes) -> bool:
    """Whether every pixel outside the mask is the source's (for checks and tests)."""
    with Image.open(io.BytesIO(source_data)) as opened:
        source = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    with Image.open(io.BytesIO(result_data)) as opened:
        result = np.asarray(opened.convert("RGB"))
    with Image.open(io.BytesIO(mask_data)) as opened:
        mask = np.asarray(opened.convert("L").resize(source.shape[1::-1])) >= 128
    return source.shape == result.shape and bool(np.array_equal(source[~mask], result[~mask]))


# ------------------------------------------------------------------------------- drift


_HUES = (
    (15, "red"),
    (40, "orange"),
    (65, "yellow"),
    (90, "lime"),
    (150, "green"),
    (175, "teal"),
    (195, "cyan"),
    (250, "blue"),
    (285, "violet"),
    (320, "purple"),
    (345, "pink"),
    (360, "red"),
)


def colour_name(rgb: tuple[float, float, float]) -> str:
    """A plain name for a colour (0..1 RGB): "blue", "teal", "dark green", "grey"."""
    lab = skimage.color.rgb2lab(np.array([[rgb]], dtype=np.float64))[0, 0]
    lightness, a, b = (float(v) for v in lab)
    chroma = math.hypot(a, b)
    if chroma < 10:
        return "black" if lightness < 20 else "white" if lightness > 85 else "grey"
    # The familiar names follow HSV hue angles (CIELAB's differ).
    r, g, bl = rgb
    top, low = max(rgb), min(rgb)
    if top == low:
        return "grey"
    if top == r:
        hue = (60 * (g - bl) / (top - low)) % 360
    elif top == g:
        hue = 60 * (bl - r) / (top - low) + 120
    else:
        hue = 60 * (r - g) / (top - low) + 240
    name = next(n for limit, n in _HUES if hue < limit)
    return f"dark {name}" if lightness < 30 else name


def _palette(image: Image.Image, colours: int) -> tuple[np.ndarray, np.ndarray]:
    """The dominant colours (Lab) of ``image`` and the share of the picture each covers."""
    small = image.convert("RGB")
    small.thumbnail((DRIFT_SIDE, DRIFT_SIDE))
    quantised = small.quantize(colours, method=Image.Quantize.MEDIANCUT)
    counts = sorted(quantised.getcolors() or [], reverse=True)
    palette = quantised.getpalette() or []
    rgb = np.array([[palette[3 * i : 3 * i + 3] for _, i in counts]], dtype=np.float64) / 255.0
    shares = np.array([c for c, _ in counts], dtype=np.float64)
    return skimage.color.rgb2lab(rgb)[0], shares / shares.sum()


def drift(source: Image.Image, result: Image.Image) -> Drift:
    """How far ``result`` moved from ``source`` (see the module docstring)."""
    source_lab, source_share = _palette(source, PALETTE_COLOURS)
    result_lab, _ = _palette(result, RESULT_COLOURS)
    cost = skimage.color.deltaE_ciede2000(source_lab[:, None, :], result_lab[None, :, :])
    # One to one, with more colours on the result's side than the source's: a colour the
    # result only added (a caption band, a new prop) is left over, not counted as drift.
    rows, cols = scipy.optimize.linear_sum_assignment(cost)
    weights = source_share[rows]
    distances = cost[rows, cols]
    palette = float((distances * weights).sum() / weights.sum())
    worst = int(np.argmax(distances * weights))
    before = colour_name(tuple(skimage.color.lab2rgb(source_lab[rows[worst]][None, None, :])[0, 0]))
    after = colour_name(tuple(skimage.color.lab2rgb(result_lab[cols[worst]][None, None, :])[0, 0]))
    size = (SSIM_SIDE, SSIM_SIDE)
    grey_source = np.asarray(source.convert("L").resize(size), dtype=np.float64)
    grey_result = np.asarray(result.convert("L").resize(size), dtype=np.float64)
    structure = float(
        skimage.metrics.structural_similarity(grey_source, grey_result, data_range=255.0)
    )
    return Drift(round(palette, 1), round(structure, 2), before, after)


def drift_of(source: Path, result: Path, video: bool = False) -> Drift:
    """:func:`drift` of two stored files (the result may be a video: its first frame)."""
    with Image.open(source) as opened:
        source_image = ImageOps.exif_transpose(opened).convert("RGB")
    if video:
        result_image = footage.first_frame(result)
    else:
        with Image.open(result) as opened:
            result_image = opened.convert("RGB")
    return drift(source_image, result_image)


def match_colours(image_data: bytes, reference: Path) -> bytes:
    """``image_data`` with its colours moved onto ``reference``'s (CIELAB mean and spread of
    the whole picture); the layout untouched. PNG."""
    with Image.open(io.BytesIO(image_data)) as opened:
        image = _rgb(opened)
    with Image.open(reference) as opened:
        target = _rgb(opened)
    image_lab, target_lab = skimage.color.rgb2lab(image), skimage.color.rgb2lab(target)
    flat_image = image_lab.reshape(-1, 3)
    matched = _match(image_lab, flat_image, target_lab.reshape(-1, 3))
    out = io.BytesIO()
    pixels = np.rint(np.clip(skimage.color.lab2rgb(matched), 0.0, 1.0) * 255).astype(np.uint8)
    Image.fromarray(pixels, "RGB").save(out, "PNG")
    return out.getvalue()
