"""Run every benchmark in this folder, each in its own process, and print their figures
(`make bench`). Files starting with ``_`` are shared helpers, not benchmarks."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
GOAL_S = 600.0  # `make bench` on a 2-core machine

import _rig  # noqa: E402


def main() -> None:
    print(f"machine: {_rig.machine()}", flush=True)
    started = time.perf_counter()
    for script in sorted(HERE.glob("*.py")):
        if script.name.startswith("_") or script.name == Path(__file__).name:
            continue
        done = subprocess.run([sys.executable, str(script)], check=False)
        if done.returncode:
            print(f"{script.name} stopped with exit status {done.returncode}", flush=True)
    total = time.perf_counter() - started
    print(
        f"all benchmarks: {total:.0f} s; goal ≤ {GOAL_S:.0f} s "
        f"({'met' if total <= GOAL_S else 'missed'})"
    )


if __name__ == "__main__":
    main()
