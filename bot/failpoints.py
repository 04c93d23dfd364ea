"""Failpoints: the durable steps where a crash test kills the process.

``failpoint("job.completed", "final")`` does nothing unless the process was started with
``TIERBOT_FAILPOINT=job.completed`` (any stage) or ``TIERBOT_FAILPOINT=job.completed:final``;
then it kills the process with SIGKILL on the spot, as a power cut or the OOM killer would:
no ``finally`` block, no clean shutdown, claims left to lapse. ``tests/test_crash_points.py``
runs a whole draft → final → video flow killed at each point and checks that after a restart
every result is posted once and every job is charged and submitted once.

The variable is read once at import and is for tests only; it is not a setting.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger(__name__)

#: The steps, in the order a flow passes them.
POINTS = (
    "event.received",  # a command or reaction written, not yet acted on
    "files.stored",  # a command's images checked and stored as uploads, nothing reserved
    "job.reserved",  # jobs and reservations written, nothing submitted
    "job.submitted",  # the provider's request id stored
    "job.completed",  # outputs, settlement and success committed; nothing posted
    "result.made",  # a result's reply made (a grid composed and stored), not handed over
    "result.handed_over",  # the reply in the outbox, its jobs marked delivered
    "post.linked",  # the message posted and linked to its asset; reactions not added
    "post.landed",  # every step of the post landed; the outbox entry not yet removed
)

_ARMED = os.environ.get("TIERBOT_FAILPOINT", "")


def failpoint(name: str, stage: str | None = None) -> None:
    """Kill this process here if a test armed ``name`` (or ``name:stage``)."""
    if _ARMED and _ARMED in (name, f"{name}:{stage}"):
        log.warning("failpoint %s: killing the process", _ARMED)
        os.kill(os.getpid(), signal.SIGKILL)


def armed() -> bool:
    """Whether a test armed a failpoint in this process."""
    return bool(_ARMED)
