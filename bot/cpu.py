"""CPU-heavy work (decoding, drawing, resizing and encoding images) in worker processes.

Why processes and not ``asyncio.to_thread``: Pillow releases the GIL only inside its C
loops, and a thread composing grids takes the interpreter away from the event loop for up
to 5 ms at a time, over and over. Under load that made the bot acknowledge Slack commands
hundreds of milliseconds late (``bench/slack_ack.py``). In a process the work only competes
for a core, and the workers run at a lower CPU priority (``nice``), so on a busy machine the
loop that acknowledges commands gets the core first.

One pool serves the whole process (like asyncio's default executor), made on first use with
``min(4, cores)`` workers started by ``spawn`` (forking a process that runs threads can
deadlock the child). A worker that dies (killed for memory, say) breaks the pool; the next
call gets a fresh one and the call that saw it break is tried once more.

What runs here must be a module-level function with picklable arguments and result. As with
any ``spawn`` pool, a worker imports the main script again, so a script that drives the bot
must keep its top-level code under ``if __name__ == "__main__":`` (the ``tierbot`` command and
the benchmarks do).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, ParamSpec, TypeVar

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

#: Added to the workers' niceness: the event loop process wins a contended core.
WORKER_NICENESS = 10
MAX_WORKERS = 4

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


#: How often a worker checks that the bot that started it is still there.
PARENT_CHECK_S = 1.0


def _init_worker(parent: int) -> None:
    # Ctrl+C reaches the whole process group; the bot stops its workers itself, so a worker
    # busy with a grid must not die mid-way with a traceback of its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Where lowering the priority is not permitted the work still runs, at normal priority.
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICENESS)
    # A bot killed with SIGKILL (or by the OOM killer) cannot stop its workers, and an idle
    # worker never notices: hundreds of orphans piled up in a crash test. So each worker
    # leaves once its parent is gone (it is then re-parented, so its parent id changes).
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def workers() -> int:
    """How many worker processes the pool has (or will have)."""
    return min(MAX_WORKERS, os.cpu_count() or 1)


def _get_pool() -> ProcessPoolExecutor:
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(
                max_workers=workers(),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(os.getpid(),),
            )
        return _pool


def _replace_broken(broken: ProcessPoolExecutor) -> None:
    global _pool
    with _lock:
        if _pool is broken:
            _pool = None
    broken.shutdown(wait=False, cancel_futures=True)


async def run(func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """``func(*args, **kwargs)`` in a worker process; its exception is raised here."""
    call = functools.partial(func, *args, **kwargs)
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        pool = _get_pool()
        try:
            return await loop.run_in_executor(pool, call)
        except BrokenProcessPool:
            _replace_broken(pool)
            if attempt == 2:
                raise
            log.warning("a CPU worker process died; starting new ones and retrying once")
    raise AssertionError("unreachable")  # pragma: no cover


def _preload() -> int:
    importlib.import_module("bot.grid")  # and with it Pillow
    return os.getpid()


def warm_up() -> None:
    """Start the workers now (``tierbot run`` at start-up), so the first grid does not wait
    for interpreters to start and import Pillow. Returns at once."""
    pool = _get_pool()
    for _ in range(workers()):
        pool.submit(_preload)  # the pool starts a worker per call until it has them all


def worker_pids() -> list[int]:
    """The worker processes' ids (for the memory benchmark); empty before first use."""
    pool = _pool
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    return list(processes)


def shutdown() -> None:
    """Stop the workers (at exit; also safe to call when none were started)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


atexit.register(shutdown)
