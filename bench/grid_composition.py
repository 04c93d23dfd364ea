"""Grid composition: 4 images of 1024×1024 into one grid, median of 20 runs.

Goal: ≤ 100 ms. Prints the figure; never fails on time.
"""

from __future__ import annotations

import io
import random
import statistics
import time

from PIL import Image

from bot.grid import compose_grid

GOAL_MS = 100.0


def _image(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.effect_noise((1024, 1024), 40).convert("RGB")
    image = Image.blend(
        image, Image.new("RGB", image.size, tuple(rng.randrange(256) for _ in range(3))), 0.6
    )
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def main() -> None:
    images = [_image(i) for i in range(4)]
    compose_grid(images)  # warm-up: font loading, codec set-up
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        grid = compose_grid(images)
        timings.append((time.perf_counter() - start) * 1000)
    median = statistics.median(timings)
    print(
        f"grid composition (4 × 1024², JPEG {len(grid.data) / 1e6:.2f} MB): "
        f"median {median:.1f} ms over 20 runs; goal ≤ {GOAL_MS:.0f} ms "
        f"({'met' if median <= GOAL_MS else 'missed'})"
    )


if __name__ == "__main__":
    main()
