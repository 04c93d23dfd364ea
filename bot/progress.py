"""Job progress: how a surface learns that the jobs it started are queued, running, retrying,
done or failed, without the core knowing anything about messages.

A surface calls :func:`listen` in the task that runs a command; the job runner calls
:func:`report` as a job moves. The listener lives in a context variable, so it follows the
task and the tasks it spawns (``asyncio.gather``), and two commands running at once never see
each other's progress.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

log = logging.getLogger(__name__)

#: ``(job_id, state, detail)``; state is queued, running, retrying, succeeded or failed.
ProgressListener = Callable[[str, str, str | None], None]

_listener: ContextVar[ProgressListener | None] = ContextVar("tierbot_progress", default=None)


def listen(listener: ProgressListener | None) -> None:
    """Send progress of jobs started from the current task (and its children) to ``listener``."""
    _listener.set(listener)


def report(job_id: str, state: str, detail: str | None = None) -> None:
    """Tell the current listener, if any; a failing listener never breaks a job."""
    listener = _listener.get()
    if listener is None:
        return
    try:
        listener(job_id, state, detail)
    except Exception:
        log.exception("progress listener failed for job %s", job_id)
