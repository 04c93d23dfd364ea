"""Run every benchmark in this folder and print their figures (`make bench`)."""

from __future__ import annotations

import os
import platform
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).parent


def main() -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )
    for script in sorted(HERE.glob("*.py")):
        if script.name == Path(__file__).name:
            continue
        sys.stdout.flush()
        runpy.run_path(str(script), run_name="__main__")


if __name__ == "__main__":
    main()
