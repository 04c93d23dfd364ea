"""Regions of an image, as people name them: a box in percent of the image's width and height
(``--region 10,20,40,30`` is x, y, w, h: from 10 % across and 20 % down, 40 % wide and 30 %
tall), or one of :data:`NAMED_REGIONS` (``--region top-right``). The pixels are
``bot.canvas``'s business; this module stays light so the command parser can use it.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Box:
    """A box in percent of the image: x and y from the top-left corner, width, height."""

    x: float
    y: float
    w: float
    h: float

    def pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``(left, top, right, bottom)`` in pixels of a ``width`` × ``height`` image (at
        least one pixel each way)."""
        left = round(self.x / 100 * width)
        top = round(self.y / 100 * height)
        right = max(left + 1, round((self.x + self.w) / 100 * width))
        bottom = max(top + 1, round((self.y + self.h) / 100 * height))
        return left, top, min(right, width), min(bottom, height)

    def words(self) -> str:
        """How a model is told where: "the area from 10% to 50% across and 20% to 50% down"."""
        return (
            f"the area from {self.x:g}% to {self.x + self.w:g}% across and "
            f"{self.y:g}% to {self.y + self.h:g}% down from the top-left corner"
        )

    def __str__(self) -> str:
        return f"{self.x:g},{self.y:g},{self.w:g},{self.h:g}"


#: Boxes with names (the halves, the quarters, the centre).
NAMED_REGIONS: dict[str, Box] = {
    "left": Box(0, 0, 50, 100),
    "right": Box(50, 0, 50, 100),
    "top": Box(0, 0, 100, 50),
    "bottom": Box(0, 50, 100, 50),
    "center": Box(25, 25, 50, 50),
    "top-left": Box(0, 0, 50, 50),
    "top-right": Box(50, 0, 50, 50),
    "bottom-left": Box(0, 50, 50, 50),
    "bottom-right": Box(50, 50, 50, 50),
}
_ALIASES = {"centre": "center", "middle": "center"}
_NUMBER = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*%?\s*")


def parse_region(text: str) -> Box:
    """The box ``text`` names.

    Raises:
        ValueError: with the message for people: not four numbers or a name, a zero or
            negative size, or a box reaching outside the image.
    """
    value = text.strip().lower()
    value = _ALIASES.get(value, value)
    if value in NAMED_REGIONS:
        return NAMED_REGIONS[value]
    parts = value.split(",")
    numbers = [_NUMBER.fullmatch(p) for p in parts]
    names = ", ".join(NAMED_REGIONS)
    if len(parts) != 4 or not all(numbers):
        raise ValueError(
            f"--region takes x,y,w,h in percent of the image (e.g. 10,20,40,30) or one of "
            f"{names}; got {text.strip()[:40]}"
        )
    x, y, w, h = (float(m.group(1)) for m in numbers if m)
    if w <= 0 or h <= 0:
        raise ValueError(
            f"--region {text.strip()[:40]} has no area: width and height must be over 0"
        )
    if x < 0 or y < 0 or x + w > 100 or y + h > 100:
        raise ValueError(
            f"--region {text.strip()[:40]} reaches outside the image: x and y from 0, "
            "x + w and y + h at most 100 (percent)"
        )
    return Box(x, y, w, h)
