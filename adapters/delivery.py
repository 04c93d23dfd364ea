"""Delivery helpers shared by the platform surfaces (Slack, Discord): the loop that posts a
use case's replies (:func:`deliver_replies`), the status line of a command, the outbox of
replies that could not be posted yet, and the set of background tasks (the web channel's too).

Neither is a surface (no ``create``): the web channel keeps its own status in its history
table; Slack and Discord edit one platform message per command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bot import progress
from bot.domain import CANCEL_HINT, Origin, Reply
from bot.failpoints import failpoint
from storage import Store

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


class StatusView(Protocol):
    """What :func:`deliver_replies` keeps current for one command: its status line."""

    def opened(self, text: str) -> None: ...

    def on_progress(self, job_id: str, state: str, detail: str | None) -> None: ...

    async def finish(self, *, failed: bool, detail: str | None = None) -> None: ...

    async def cancel(self) -> None: ...

    async def interrupt(self) -> None: ...


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


#: What a status line says when posting went wrong in our own code (the traceback is logged).
FAILED_ON_OUR_SIDE = "the bot failed on its side; see the logs"


def kept_for_retry(exc: BaseException) -> str:
    """What a status line says when the platform would not take the result yet."""
    return f"could not post the result yet ({platform_error(exc)}); it is kept and retried"


async def deliver_replies(
    replies: AsyncIterator[Reply],
    status: StatusView,
    *,
    private: Callable[[Reply], Awaitable[None]],
    open_status: Callable[[Reply], Awaitable[object | None]],
    result: Callable[[Reply], Awaitable[str | None]],
    stopping: Callable[[], bool],
) -> None:
    """Post a use case's replies as they come, keeping ``status`` current.

    The surface supplies the steps: ``private`` shows a reply to the person only;
    ``open_status`` posts a status message and returns it (None if it could not), and only
    then does ``status`` start showing progress; ``result`` posts anything else, and returns
    None, or what to say when the platform would not take it (it is kept for a retry). A
    private error or a result ends the status line (failed if the reply is an error).

    Cancelled while ``stopping()`` (the bot is shutting down) the status line says the job
    resumes after the restart; otherwise (❌ on the status line) it says cancelled; the
    cancellation is re-raised. Any other exception is logged and ends the status line as
    failed, so it is never left moving; it is not re-raised.
    """
    progress.listen(status.on_progress)
    try:
        async for reply in replies:
            if reply.private:
                await private(reply)
                if reply.error:
                    await status.finish(failed=True, detail=reply.text)
            elif reply.status:
                if await open_status(reply) is not None:
                    status.opened(reply.text)
            elif (kept := await result(reply)) is not None:
                await status.finish(failed=True, detail=kept)
            else:
                await status.finish(failed=reply.error, detail=reply.text if reply.error else None)
    except asyncio.CancelledError:
        if stopping():
            await status.interrupt()
        else:  # ❌ on the status line
            await status.cancel()
        raise
    except Exception:
        log.exception("delivering replies failed")
        await status.finish(failed=True, detail=FAILED_ON_OUR_SIDE)
    await status.finish(failed=False)


def _at(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="microseconds")


class Steps:
    """The steps of one post that already landed (the anchor's id, each file, each
    reaction), kept in its outbox entry: a retry, in this process or another after a crash,
    resumes after the last one and never repeats a step that succeeded."""

    def __init__(self, store: Store, entry_id: int) -> None:
        self.store = store
        self.entry_id = entry_id
        self._done = store.outbox_progress(entry_id)

    def get(self, step: str) -> Any:
        return self._done.get(step)

    def done(self, link: Callable[[], dict[str, Any] | None] | None = None, **steps: Any) -> None:
        """Record ``steps`` (name=value) as landed; ``link`` (the message → asset link of
        a message just posted) is written in the same transaction, so a crash leaves either
        both or neither, never a posted message that reactions cannot find. Steps ``link``
        returns are recorded too (a surface whose post is itself a row: the web channel)."""
        self._done.update(steps)
        if link is None:  # one statement: atomic as it is
            self.store.outbox_step(self.entry_id, self._done)
            return
        with self.store.transaction():
            self._done.update(link() or {})
            self.store.outbox_step(self.entry_id, self._done)
        failpoint("post.linked")

    async def add_reactions(self, emojis: list[str], add: Callable[[str], Awaitable[None]]) -> None:
        """Pre-add ``emojis`` that are not on the message yet; recorded once, also when one
        failed (re-adding one after a crash is harmless: platforms ignore a duplicate)."""
        added = list(self.get("reactions") or [])
        try:
            for emoji in emojis:
                if emoji not in added:
                    await add(emoji)
                    added.append(emoji)
        finally:
            if added != (self.get("reactions") or []):
                self.done(reactions=added)

    async def show_state(
        self,
        reply: Reply,
        shown: Callable[[str], tuple[str, str | None, str] | None],
        edit: Callable[[str, str | None, str], Awaitable[None]],
    ) -> None:
        """For a QA decision, once: ``edit(message_id, thread_id, text)`` the decided
        asset's message (found by ``shown``, ``Tierbot.message_of``) to show its state."""
        if not reply.state_of or self.get("state"):
            return
        if (message := shown(reply.state_of)) is not None:
            message_id, thread_id, text = message
            await edit(message_id, thread_id, f"{text}\n{reply.state}")
        self.done(state=True)


#: How a surface posts one reply, step by step: ``post(origin, reply, steps)``.
Poster = Callable[[Origin, Reply, Steps], Awaitable[None]]


class Outbox:
    """Every public reply a surface posts goes through here: it is written to the outbox
    first (the core already did for results, see ``bot.pipeline.durable``), posted step by
    step, and removed once it landed. A reply the platform would not take stays, and is
    retried with backoff by whichever process is up (after a crash too, once the dead
    process's claim has lapsed).

    Args:
        surface: the surface name the entries belong to.
        store: the store.
        post: posts one reply, recording its steps; raises one of ``errors`` when the
            platform will not take it.
        errors: the exceptions that mean "try again later".
        interval_s: the first retry delay; it doubles per attempt up to an hour.
    """

    def __init__(
        self,
        surface: str,
        store: Store,
        post: Poster,
        errors: tuple[type[BaseException], ...],
        interval_s: float = 30.0,
    ) -> None:
        self.surface = surface
        self.store = store
        self.post = post
        self.errors = errors
        self.interval_s = interval_s

    async def send(self, origin: Origin, reply: Reply) -> None:
        """Post ``reply`` now; if the platform will not take it, keep it for a retry and
        re-raise the platform's error (the surface may tell the person why)."""
        entry = reply.delivery_id
        if entry is None:
            entry = self.store.add_to_outbox(
                self.surface, origin.model_dump(mode="json"), reply.model_dump(mode="json")
            )
        try:
            await self.post(origin, reply, Steps(self.store, entry))
        except self.errors as exc:
            log.warning(
                "%s: posting to %s failed (%r); kept for retry", self.surface, origin.channel, exc
            )
            self.store.outbox_retry_later(entry, platform_error(exc), _at(self.interval_s))
            raise
        failpoint("post.landed")
        self.store.outbox_done(entry)

    async def flush(self) -> int:
        """Try every due reply nobody live is posting once; returns how many were posted."""
        posted = 0
        for entry in self.store.due_in_outbox(self.surface, _at()):
            if not self.store.claim_outbox(entry["id"]):
                continue
            try:
                await self.post(
                    Origin(**entry["origin"]),
                    Reply(**entry["reply"]),
                    Steps(self.store, entry["id"]),
                )
            except self.errors as exc:
                wait = min(3600.0, self.interval_s * 2 ** entry["attempts"])
                self.store.outbox_retry_later(entry["id"], platform_error(exc), _at(wait))
            else:
                self.store.outbox_done(entry["id"])
                posted += 1
        return posted

    async def run(self) -> None:
        """Flush now and then every ``interval_s`` seconds, forever."""
        while True:
            try:
                await self.flush()
            except Exception:
                log.exception("%s: outbox flush failed", self.surface)
            await asyncio.sleep(self.interval_s)


def platform_error(exc: BaseException) -> str:
    """The platform's error code (Slack's ``error``) or the exception's text."""
    error = getattr(exc, "response", None)
    if isinstance(error, dict) or hasattr(error, "get"):
        with contextlib.suppress(Exception):
            if code := error.get("error"):  # type: ignore[union-attr]
                return str(code)
    return str(exc) or type(exc).__name__
