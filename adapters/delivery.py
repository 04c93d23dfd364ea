"""Status lines shared by the surfaces: the text of one command's status as its jobs move
(:class:`StatusLine`), the pace of a platform's message edits (:class:`Pace`), and the set
of a surface's background tasks (:class:`Tasks`). Posting itself goes through the core's
port, :class:`bot.delivery.Outbox`.

Not a surface (no ``create``): the web channel keeps its own status in its history table;
Slack and Discord edit one platform message per command.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bot.domain import CANCEL_HINT

log = logging.getLogger(__name__)

STATUS_MIN_INTERVAL_S = 1.0
#: A status line cut off by a restart (its job resumes and its result follows).
INTERRUPTED = "interrupted by a restart: the result follows once the bot is back"
_STATE_WORDS = {"queued": "queued", "running": "running", "succeeded": "finishing"}


class Tasks:
    """A surface's work in the background (commands, reactions, status edits): kept alive
    (asyncio holds tasks only weakly), waited for by :meth:`idle`, cancelled at stop."""

    def __init__(self) -> None:
        self._running: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        task = asyncio.ensure_future(work)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    async def idle(self) -> None:
        """Wait until every task, and every task those start meanwhile, has ended."""
        while pending := [task for task in self._running if not task.done()]:
            await asyncio.gather(*pending, return_exceptions=True)

    async def cancel_all(self) -> None:
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)


class Pace:
    """The status edits of one message stream, at most one per ``interval`` seconds.

    Slack allows about one message edit per second per *channel*, so a Slack surface keeps
    one pace per channel for all its status lines; a Discord status line is its own
    interaction's message and gets a pace of its own. A status line that changed waits in
    line once, however often it changes, and one task sends the waiting lines in turn, each
    with its latest text: a backlog of commands costs one entry each, not a task each.
    """

    def __init__(
        self,
        spawn: Callable[[Awaitable[None]], asyncio.Future[Any]],
        interval: float = STATUS_MIN_INTERVAL_S,
    ) -> None:
        self.spawn = spawn
        self.interval = interval
        self._next = 0.0
        self._waiting: dict[StatusLine, None] = {}  # in order of arrival
        self._sender: asyncio.Future[Any] | None = None

    def used(self) -> None:
        """Something was just sent (a post, a final edit): the next edit waits a full turn."""
        self._next = max(self._next, time.monotonic() + self.interval)

    def request(self, line: StatusLine) -> None:
        """``line`` has a new text to show; it is sent at its turn."""
        self._waiting.setdefault(line, None)
        if self._sender is None or self._sender.done():
            self._sender = self.spawn(self._send_in_turn())

    def withdraw(self, line: StatusLine) -> None:
        """``line`` has ended; if nothing else waits, the sender stops sleeping for it."""
        self._waiting.pop(line, None)
        if not self._waiting and self._sender is not None and not self._sender.done():
            self._sender.cancel()

    async def _send_in_turn(self) -> None:
        while self._waiting:
            wait = self._next - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue  # lines may have left or joined meanwhile
            line = next(iter(self._waiting))
            del self._waiting[line]
            self._next = time.monotonic() + self.interval
            await asyncio.shield(line.send_current())  # a started edit is not cut off


class StatusLine:
    """The status text of one command, sent through ``send`` as its jobs move.

    Progress edits go out only when the text changes, at the ``pace`` the line shares (see
    :class:`Pace`). The final "done in N s" / "failed: ..." goes out at once: a command's end
    is never held back.
    """

    def __init__(self, send: Callable[[str], Awaitable[None]], pace: Pace) -> None:
        self.send = send
        self.pace = pace
        self.base = ""
        self.text = ""
        self.open = False
        self.started = 0.0

    def opened(self, text: str) -> None:
        """The status message now shows ``text`` (the surface has just posted it)."""
        self.base = self.text = text
        self.open = True
        self.started = 0.0
        self.pace.used()

    def on_progress(self, job_id: str, state: str, detail: str | None) -> None:
        """A :mod:`bot.progress` listener."""
        if not self.open:
            return
        if state == "running" and not self.started:
            self.started = time.monotonic()
        if state == "retrying":
            word = f"retrying ({detail})"
        elif state == "failed":
            word = f"failed: {detail}"
        else:
            word = _STATE_WORDS.get(state, state)
        text = f"{self.base}\n_{word}_"
        if text != self.text:
            self.text = text
            self.pace.request(self)

    async def send_current(self) -> None:
        """Send the current text (the pace calls this at the line's turn)."""
        if self.open:
            await self._send(self.text)

    async def _send(self, text: str) -> None:
        try:
            await self.send(text)
        except Exception as exc:  # a status edit is never worth failing a job over
            log.warning("status update failed: %r", exc)

    async def finish(self, *, failed: bool, detail: str | None = None) -> None:
        elapsed = f" in {time.monotonic() - self.started:.0f} s" if self.started else ""
        await self._close(f"failed: {detail}" if failed else f"done{elapsed}")

    async def cancel(self) -> None:
        """❌ on the status line stopped the job: it was cancelled, not failed."""
        await self._close("cancelled")

    async def interrupt(self) -> None:
        """The bot is stopping mid-command. Its jobs stay in the store, the next start resumes
        them and posts what they make (``Tierbot.resume``), so this is not a failure."""
        await self._close(INTERRUPTED)

    async def _close(self, word: str) -> None:
        if not self.open:
            return
        self.open = False
        self.pace.withdraw(self)
        final = f"{self.base.replace(CANCEL_HINT, '')}\n_{word}_"
        if final != self.text:
            self.text = final
            self.pace.used()
            await self._send(final)
