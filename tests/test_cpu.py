"""bot.cpu: image work runs in worker processes, errors come back, a dead worker is survived."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bot import cpu
from bot.providers import PermanentError


def _pid_and_niceness(value: int) -> tuple[int, int, int]:
    return os.getpid(), os.nice(0), value * 2


def _refuse(reason: str) -> None:
    raise PermanentError(reason)


def _die_once(marker: str) -> str:
    """Kill this worker the first time (as the OOM killer would), answer the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return "answered"


async def test_runs_in_a_lower_priority_worker_process() -> None:
    pid, niceness, doubled = await cpu.run(_pid_and_niceness, 21)

    assert doubled == 42
    assert pid != os.getpid()
    assert pid in cpu.worker_pids()
    assert niceness >= os.nice(0) + cpu.WORKER_NICENESS or niceness == 19


async def test_errors_raised_in_the_worker_are_raised_here() -> None:
    with pytest.raises(PermanentError, match="no reference image"):
        await cpu.run(_refuse, "no reference image")


async def test_a_dead_worker_is_replaced_and_the_call_retried(tmp_path: Path) -> None:
    await cpu.run(_pid_and_niceness, 1)  # the pool is up
    before = set(cpu.worker_pids())

    assert await cpu.run(_die_once, str(tmp_path / "marker")) == "answered"

    assert (tmp_path / "marker").read_text() == "died"
    assert set(cpu.worker_pids()).isdisjoint(before)


async def test_warm_up_starts_every_worker_without_waiting() -> None:
    cpu.warm_up()
    await cpu.run(_pid_and_niceness, 1)

    assert len(cpu.worker_pids()) == cpu.workers()


_KILLED_BOT = """
import os, signal, sys, time
from bot import cpu

if __name__ == "__main__":
    cpu.warm_up()
    while len(cpu.worker_pids()) < cpu.workers():
        time.sleep(0.05)
    print(" ".join(map(str, cpu.worker_pids())), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer or a crash test would
"""


def _alive(pid: int) -> bool:
    """Running (a zombie nobody reaped has left too)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_workers_leave_when_their_bot_is_killed(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    script = tmp_path / "killed_bot.py"
    script.write_text(_KILLED_BOT, encoding="utf-8")
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    pids = [int(p) for p in done.stdout.split()]
    assert done.returncode == -9 and len(pids) == cpu.workers()
    deadline = time.monotonic() + 10 * cpu.PARENT_CHECK_S
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids), "orphaned CPU workers outlived their bot"
