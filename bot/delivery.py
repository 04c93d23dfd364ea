"""The core's side of posting: the port every surface posts its replies through.

A surface gets one :class:`Outbox` (``SurfaceContext.outbox``) and hands it its platform
steps; the core does the bookkeeping around them. :meth:`Outbox.deliver` runs a use case's
replies (private lines, the status line, results); a result is written to the outbox before
it is posted and removed once it landed, and the surface reports each posted message to the
:class:`Steps` it was given (``steps.posted(message_id)``), which links the message to what
it presents in the same transaction. That link cannot wait until ``post`` returns: people
click a reaction the moment it shows, so it is written before the reactions are added.
No surface calls into the store or the core per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from bot import progress
from bot.domain import Origin, Reply
from bot.failpoints import failpoint
from storage import Store

log = logging.getLogger(__name__)

#: What a status line says when posting went wrong in our own code (the traceback is logged).
FAILED_ON_OUR_SIDE = "the bot failed on its side; see the logs"


class StatusView(Protocol):
    """What :meth:`Outbox.deliver` keeps current for one command: its status line."""

    def opened(self, text: str) -> None: ...

    def on_progress(self, job_id: str, state: str, detail: str | None) -> None: ...

    async def finish(self, *, failed: bool, detail: str | None = None) -> None: ...

    async def cancel(self) -> None: ...

    async def interrupt(self) -> None: ...


def kept_for_retry(exc: BaseException) -> str:
    """What a status line says when the platform would not take the result yet."""
    return f"could not post the result yet ({platform_error(exc)}); it is kept and retried"


def platform_error(exc: BaseException) -> str:
    """The platform's error code (Slack's ``error``) or the exception's text."""
    error = getattr(exc, "response", None)
    if isinstance(error, dict) or hasattr(error, "get"):
        with contextlib.suppress(Exception):
            if code := error.get("error"):  # type: ignore[union-attr]
                return str(code)
    return str(exc) or type(exc).__name__


def _at(offset_s: float = 0.0) -> str:
    return (datetime.now(UTC) + timedelta(seconds=offset_s)).isoformat(timespec="microseconds")


class Steps:
    """One reply being posted: the steps that already landed (the anchor's id, each file,
    each reaction), kept in its outbox entry when it has one, so a retry (in this process or
    another after a crash) resumes after the last one and never repeats a step that
    succeeded; and the place the surface reports the message it posted (:meth:`posted`)."""

    def __init__(
        self, store: Store, origin: Origin, reply: Reply, entry_id: int | None = None
    ) -> None:
        self.store = store
        self.origin = origin
        self.reply = reply
        self.entry_id = entry_id
        self._done: dict[str, Any] = store.outbox_progress(entry_id) if entry_id is not None else {}
        self._atomic = False

    def get(self, step: str) -> Any:
        return self._done.get(step)

    def done(self, **steps: Any) -> None:
        """Record ``steps`` (name=value) as landed."""
        self._done.update(steps)
        if self.entry_id is not None:  # one statement: atomic as it is
            self.store.outbox_step(self.entry_id, self._done)

    def posted(self, message_id: str, thread_id: str | None = None, **steps: Any) -> None:
        """The reply's message landed as ``message_id`` (in thread ``thread_id``): remember
        what it presents (an asset, for reactions on it; a status line's request, so ❌
        cancels), and the thread it lives in (later results thread under the same root),
        with ``steps`` in the same transaction: a crash leaves both or neither, never a
        posted message that reactions cannot find."""
        reply = self.reply
        with contextlib.nullcontext() if self._atomic else self.store.transaction():
            if reply.asset_id or (reply.status and reply.request_id):
                self.store.record_message(
                    self.origin.surface,
                    self.origin.channel,
                    message_id,
                    reply.asset_id,
                    thread_id,
                    request_id=reply.request_id if reply.status else None,
                    text=reply.text,
                )
            self.done(**steps)
        failpoint("post.linked")

    @contextlib.contextmanager
    def atomically(self) -> Iterator[None]:
        """Make the surface's own writes and :meth:`posted` one transaction (a surface whose
        post is itself a row in our store: the web channel)."""
        with self.store.transaction():
            self._atomic = True
            try:
                yield
            finally:
                self._atomic = False

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

    async def show_state(self, edit: Callable[[str, str | None, str], Awaitable[None]]) -> None:
        """For a QA decision, once: ``edit(message_id, thread_id, text)`` the message that
        presents the decided asset, to show its state."""
        reply = self.reply
        if not reply.state_of or self.get("state"):
            return
        row = self.store.message_for_asset(self.origin.surface, self.origin.channel, reply.state_of)
        if row is not None:
            await edit(row["message_id"], row["thread_id"], f"{row['text'] or ''}\n{reply.state}")
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

    async def deliver(
        self,
        origin: Origin,
        replies: AsyncIterator[Reply],
        status: StatusView,
        *,
        private: Callable[[Reply], Awaitable[None]],
        open_status: Callable[[Reply, Steps], Awaitable[object | None]],
        result: Callable[[Reply], Awaitable[str | None]],
        stopping: Callable[[], bool],
    ) -> None:
        """Post a use case's replies as they come, keeping ``status`` current.

        The surface supplies the steps: ``private`` shows a reply to the person only;
        ``open_status`` posts a status message, reports it to its steps and returns it (None
        if it could not), and only then does ``status`` start showing progress; ``result``
        posts anything else (through :meth:`send`), and returns None, or what to say when the
        platform would not take it (it is kept for a retry). A private error or a result
        ends the status line (failed if the reply is an error).

        Cancelled while ``stopping()`` (the bot is shutting down) the status line says the
        job resumes after the restart; otherwise (❌ on the status line) it says cancelled;
        the cancellation is re-raised. Any other exception is logged and ends the status
        line as failed, so it is never left moving; it is not re-raised.
        """
        progress.listen(status.on_progress)
        try:
            async for reply in replies:
                if reply.private:
                    await private(reply)
                    if reply.error:
                        await status.finish(failed=True, detail=reply.text)
                elif reply.status:
                    if await open_status(reply, Steps(self.store, origin, reply)) is not None:
                        status.opened(reply.text)
                elif (kept := await result(reply)) is not None:
                    await status.finish(failed=True, detail=kept)
                else:
                    detail = reply.text if reply.error else None
                    await status.finish(failed=reply.error, detail=detail)
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

    async def send(self, origin: Origin, reply: Reply) -> None:
        """Post ``reply`` now; if the platform will not take it, keep it for a retry and
        re-raise the platform's error (the surface may tell the person why)."""
        entry = reply.delivery_id
        if entry is None:
            entry = self.store.add_to_outbox(
                self.surface, origin.model_dump(mode="json"), reply.model_dump(mode="json")
            )
        try:
            await self.post(origin, reply, Steps(self.store, origin, reply, entry))
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
            origin, reply = Origin(**entry["origin"]), Reply(**entry["reply"])
            try:
                await self.post(origin, reply, Steps(self.store, origin, reply, entry["id"]))
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
