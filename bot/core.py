"""The core's front door: every surface hands it commands and reactions, and posts its replies.

``Tierbot`` parses a command with the one shared parser, maps a reaction through the
vocabulary onto a use case of the pipeline, and turns every error into a clear reply: bad
input and refusals privately to the person, failed jobs in the channel, unexpected errors
with a reference id and never a stack trace. Surfaces post the replies through the core's
outbox (:mod:`bot.delivery`), which links each posted message to what it presents, so
reactions on that message find the asset again, even after a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar

from bot.commands import COMMANDS, CommandError, Invocation, parse
from bot.domain import (
    INBOX_EXCLUDE,
    NUMBER_REACTIONS,
    UNFINISHED_JOB_STATES,
    AssetKind,
    CommandEvent,
    InboundFile,
    Origin,
    Reaction,
    ReactionEvent,
    Reply,
    Stage,
    normalize_emoji,
    replies_of,
)
from bot.errors import UserError, guarded, private_error
from bot.failpoints import failpoint
from bot.pipeline import Pipeline, durable
from bot.pipeline.reports import LineageNode
from bot.runner import CAUSE, CompletedJob, JobFailed, JobRunner
from bot.schedules import Scheduler
from storage import Store

log = logging.getLogger(__name__)

#: How long a reaction on a message we do not know yet waits for the message to be linked:
#: people click the moment a grid appears, sometimes before our own post call has returned.
LINK_WAIT_S = 5.0
LINK_POLL_S = 0.05


Received = TypeVar("Received", CommandEvent, ReactionEvent)


def _removals(surface: str, act: str) -> str:
    return f"{surface}:removed:{act}:"


def inbox_key(event: CommandEvent | ReactionEvent) -> str | None:
    """The durable key of an inbound event, None when the platform gives no delivery id."""
    if isinstance(event, ReactionEvent):
        return f"{event.origin.surface}:{event.event_id}"
    if event.delivery_id:
        return f"{event.origin.surface}:command:{event.delivery_id}"
    return None


class Tierbot:
    """Commands and reactions in, replies out; shared by every chat surface and the CLI."""

    def __init__(
        self,
        *,
        store: Store,
        pipeline: Pipeline,
        runner: JobRunner,
        scheduler: Scheduler,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self.runner = runner
        self.scheduler = scheduler

    def receive(self, event: CommandEvent | ReactionEvent) -> bool:
        """Write an inbound event durably; False if this delivery was received before (a
        redelivery or a replay: ignore it). Surfaces call this before acknowledging, so an
        acknowledged event is never lost; then they run it with ``received=True``."""
        key = inbox_key(event)
        if key is None:
            return True
        kind = "reaction" if isinstance(event, ReactionEvent) else "command"
        if isinstance(event, CommandEvent):
            # The bytes are kept as received (checked later, when the command runs): a
            # command re-run after a restart still has its images. ``keep`` does it off the
            # event loop; this is the fallback for a surface that did not call it.
            event = event.model_copy(update={"files": self._kept(event.files)})
        event_json = _inbox_json(event)
        if self.store.receive(key, event.origin.surface, kind, event_json):
            failpoint("event.received", kind)
            return True
        log.info("duplicate delivery %s ignored", key)
        return False

    async def keep(self, event: CommandEvent) -> CommandEvent:
        """``event`` with its files' bytes kept in the asset store (in a thread: they can be
        large), so a command re-run after a restart still has them. A surface calls it
        before :meth:`receive` when the bytes came with the request (the web channel), and
        again once it downloaded them after the acknowledgement (Slack, Discord): then the
        inbox learns where they are."""
        if not any(f.data and not f.kept for f in event.files):
            return event
        files = await asyncio.to_thread(self._kept, event.files)
        event = event.model_copy(update={"files": files})
        if (key := inbox_key(event)) is not None:
            self.store.update_received(key, _inbox_json(event))
        return event

    def _kept(self, files: list[InboundFile]) -> list[InboundFile]:
        kept = []
        for file in files:
            if file.data and not file.kept:
                _, where = self.pipeline.files.put(file.data, "application/octet-stream")
                file = file.model_copy(update={"kept": where})
            kept.append(file)
        return kept

    def resolved(self, event: Received, origin: Origin) -> Received:
        """``event`` from ``origin``, which the surface resolved after the acknowledgement
        (approver groups, a thread's parent channel: they need platform calls). Stored when
        it differs, so a re-run after a crash acts for the same person in the same place."""
        if origin == event.origin:
            return event
        event = event.model_copy(update={"origin": origin})
        if (key := inbox_key(event)) is not None:
            self.store.update_received(key, _inbox_json(event))
        return event

    def answered(self, event: Received) -> None:
        """The surface answered ``event`` itself (it could not even fetch its attachment)."""
        if (key := inbox_key(event)) is not None:
            self.store.received_done(key)

    def reaction_id(self, surface: str, act: str) -> str:
        """A delivery id for a platform that gives reactions none (Discord): ``act`` (message,
        person, emoji) numbered by how often it was undone, so a redelivery is the same event
        and removing and adding the reaction again is a new one."""
        return f"{act}:{self.store.count_received(_removals(surface, act))}"

    def reaction_removed(self, surface: str, act: str) -> None:
        """``act`` was undone: its next add is a new event (see :meth:`reaction_id`)."""
        prefix = _removals(surface, act)
        self.store.note_received(f"{prefix}{self.store.count_received(prefix)}", surface)

    async def handle_command(
        self, event: CommandEvent, *, received: bool = False
    ) -> AsyncIterator[Reply]:
        """Run one slash command; yields replies as the work progresses."""
        if not received and not self.receive(event):
            return
        try:
            inv = parse(event.command, event.text)
        except CommandError as exc:
            replies: AsyncIterator[Reply] = replies_of(private_error(exc.message))
        else:
            replies = guarded(self._command(event, inv))
        async for reply in self._handled(event, replies):
            yield reply

    async def handle_reaction(
        self, event: ReactionEvent, *, received: bool = False
    ) -> AsyncIterator[Reply]:
        """Act on a reaction to one of the bot's messages, once per delivery."""
        if not received and not self.receive(event):
            return
        async for reply in self._handled(event, self._reaction_of(event)):
            yield reply

    async def _reaction_of(self, event: ReactionEvent) -> AsyncIterator[Reply]:
        where = (event.origin.surface, event.origin.channel, event.message_id)
        deadline = time.monotonic() + LINK_WAIT_S
        pause = LINK_POLL_S
        # Most reactions in a channel are on other people's messages: look up sparingly
        # (doubling pauses: about a dozen lookups, not a hundred, before giving up).
        while (linked := self.store.message_link(*where)) is None:
            if time.monotonic() >= deadline:
                return  # not one of our messages: reactions there mean nothing to us
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
        asset_id, request_id = linked
        if asset_id is not None:
            asset = self.store.get_asset(asset_id)
            if asset is None:
                return
            replies = self._reaction(event.origin, presents(asset), asset_id, event.emoji)
        else:
            replies = self._reaction(event.origin, "status", request_id, event.emoji)
        async for reply in guarded(replies):
            yield reply

    async def _handled(
        self, event: CommandEvent | ReactionEvent, replies: AsyncIterator[Reply]
    ) -> AsyncIterator[Reply]:
        """Run an event's replies with its inbox key as the cause of the jobs it reserves,
        results handed over durably, and the event marked done once acted on or answered.
        A stop (cancellation) leaves it pending: recovery finishes it."""
        key = inbox_key(event)
        outer = CAUSE.get()
        CAUSE.set(key)  # in the iterating task's context (set, not reset: a generator may be
        try:  # closed from another context)
            async for reply in durable(self.store, event.origin, replies):
                yield reply
        finally:
            CAUSE.set(outer)
        if key is not None:
            self.store.received_done(key)

    # -- reads for surfaces that show assets (the web channel's pages, thread names) --------

    def asset(self, asset_id: str) -> dict[str, Any] | None:
        """The stored facts of one asset (prompt, stage, model, seed, size, cost, file)."""
        return self.store.get_asset(asset_id)

    def asset_location(self, asset: dict[str, Any]) -> Path:
        """Where an asset's file is kept on this machine, without fetching it (to tell
        which file is which)."""
        return self.pipeline.files.location(asset["path"])

    def asset_path(self, asset: dict[str, Any]) -> Path:
        """Where ``asset``'s file is on disk, fetched first where this machine lacks it."""
        return self.pipeline.files.path(asset["path"])

    def decisions(self, asset_id: str) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """Every gate and QA decision on ``asset_id``, oldest first, and its current QA state."""
        return self.store.gates(asset_id), self.store.qa_state(asset_id)

    def lineage_tree(self, asset_id: str) -> list[LineageNode]:
        """``asset_id``'s lineage as trees from its roots (see ``Pipeline.lineage_tree``)."""
        return self.pipeline.lineage_tree(asset_id)

    def approvers(self, origin: Origin) -> list[str]:
        """The approver entries (people, groups) of ``origin``'s team and channel: a surface
        resolves which groups the sender belongs to."""
        return list(self.pipeline.policy.rules_for(origin).approvers)

    async def recover(self) -> list[CompletedJob | JobFailed]:
        """One recovery pass: take over the work nobody live holds and finish it.

        Inbound events that were received but never acted on are run (unless they already
        reserved jobs, which are finished instead); unfinished jobs are resumed (polled by
        their stored request id, or submitted); finished jobs whose result was never handed
        over for posting are posted. Results go where they were asked for, through the
        scheduler's surfaces. Safe to run in several processes at once: every piece of work
        is claimed first. Returns the jobs' outcomes.
        """
        for row in self.store.claimable_inbox():
            if not self.store.claim_inbox(row["key"]):
                continue
            if not row["event"] or self.store.jobs_caused_by(row["key"]):
                self.store.received_done(row["key"])  # its jobs are finished below
                continue
            await self._rerun(row)

        by_request: dict[str, list[dict[str, Any]]] = {}
        for job in self.store.claimable_jobs():
            if self.store.claim_job(job["id"]):
                by_request.setdefault(job["request_id"], []).append(job)

        async def finish(jobs: list[dict[str, Any]]) -> list[CompletedJob | JobFailed]:
            # Per request, so a grid is not kept waiting for someone else's long video.
            unfinished = [j["id"] for j in jobs if j["state"] in UNFINISHED_JOB_STATES]
            outcomes = await self.runner.resume(unfinished) if unfinished else []
            outcomes += [o for j in jobs if (o := self.runner.outcome(j)) is not None]
            for origin, replies in self.pipeline.resumed(outcomes):
                await self.scheduler.deliver(origin, replies)
            return outcomes

        finished = await asyncio.gather(*(finish(jobs) for jobs in by_request.values()))
        return [outcome for outcomes in finished for outcome in outcomes]

    async def recover_forever(self, interval_s: float) -> None:
        """Recover now and then every ``interval_s`` (a lease): work a process left when it
        died is taken over once its lease runs out."""
        while True:
            try:
                await self.recover()
            except Exception:
                log.exception("recovery pass failed")
            await asyncio.sleep(interval_s)

    async def _rerun(self, row: dict[str, Any]) -> None:
        """Run an inbound event a dead process received but never acted on."""
        if row["kind"] == "reaction":
            event: CommandEvent | ReactionEvent = ReactionEvent(**row["event"])
            replies = self.handle_reaction(event, received=True)
        else:
            event = CommandEvent(**row["event"])
            replies = self.handle_command(event, received=True)
        log.info("running %s %s received before a restart", row["kind"], row["key"])
        await self.scheduler.deliver(event.origin, replies)

    # -- internals ---------------------------------------------------------------------------

    async def _command(self, event: CommandEvent, inv: Invocation) -> AsyncIterator[Reply]:
        spec = COMMANDS.get(inv.name)
        if spec is None or spec.handler is None:
            raise UserError(f"/tierbot {inv.name} is not available yet")
        files = event.files
        if files and spec.files is None:
            raise UserError(
                f"{spec.invoke} takes no files; nothing was done. Images go with /draft, "
                "final, edit, video, vary, ref add and upload."
            )
        if spec.files == "images" and any(f.asset_id is None for f in files):
            kept = [f.kept for f in files if f.kept]
            try:
                taken = await self.pipeline.take_files(event.origin, files)
            except UserError:
                await asyncio.to_thread(self.pipeline.forget_kept, kept)  # answered
                raise
            # Stored: a re-run after a restart finds the images by their asset ids.
            if (key := inbox_key(event)) is not None:
                self.store.update_received(key, _inbox_json(event, files=taken))
            failpoint("files.stored")
            await asyncio.to_thread(self.pipeline.forget_kept, kept)
            files = taken
        elif files and spec.files == "csv":
            files = await self.pipeline.restore_files(files)
        async for reply in spec.handler(self, event.origin, inv, files):
            yield reply

    async def _reaction(
        self, origin: Origin, presents: str, target: str, emoji: str
    ) -> AsyncIterator[Reply]:
        handler = REACTIONS.get((presents, normalize_emoji(emoji)))
        if handler is None:
            raise UserError(f"{emoji} means nothing on {MEANINGS[presents]}")
        async for reply in handler(self, origin, target):
            yield reply

    async def cancel(self, origin: Origin, request_id: str) -> AsyncIterator[Reply]:
        """❌ on a status line cancels the request's running jobs; credits are released."""
        request = self.store.get_request(request_id)
        if request is None:
            return
        if request["user"] != origin.user and not self.pipeline.policy.is_approver(origin):
            raise UserError("Only the person who asked, or an approver, can cancel this job.")
        jobs = self.store.unfinished_jobs_for_request(request_id)
        if not jobs:
            raise UserError("Nothing is running for that request any more.")
        cancelled = [job["id"] for job in jobs if await self.runner.cancel(job["id"])]
        yield Reply(
            text=f"🛑 Cancelled by {origin.user}: {len(cancelled)} job(s) stopped; their "
            "reserved credits were released."
        )


def _inbox_json(event: CommandEvent | ReactionEvent, **update: Any) -> dict[str, Any]:
    """``event`` as the inbox keeps it: without the bytes of its files."""
    if isinstance(event, ReactionEvent):
        return event.model_dump(mode="json")
    return event.model_copy(update=update).model_dump(mode="json", exclude=INBOX_EXCLUDE)


def presents(asset: dict[str, Any]) -> str:
    """What a message presenting ``asset`` is, for the reaction table: a draft ``grid``, a
    ``final`` (or an edit: it can go further), an ``upscale`` or a ``video``."""
    if asset["kind"] == AssetKind.GRID:
        return "grid"
    if asset["kind"] == AssetKind.VIDEO:
        return "video"
    return "upscale" if asset["stage"] == Stage.UPSCALE else "final"


ReactionHandler = Callable[[Tierbot, Origin, str], AsyncIterator[Reply]]


def _select(index: int) -> ReactionHandler:
    return lambda bot, origin, grid: bot.pipeline.select(origin, grid, index)


def _key(reaction: Reaction) -> str:
    return normalize_emoji(reaction.value)


_RESULT_DECISIONS: dict[str, ReactionHandler] = {
    _key(Reaction.APPROVE): lambda bot, origin, asset: bot.pipeline.approve(origin, asset),
    _key(Reaction.DISCARD): lambda bot, origin, asset: bot.pipeline.reject(origin, asset),
}
_FURTHER: dict[str, ReactionHandler] = {
    _key(Reaction.VIDEO): lambda bot, origin, asset: bot.pipeline.video(origin, asset),
    # On an upscale the use case refuses, saying why: it is not upscaled twice.
    _key(Reaction.UPSCALE): lambda bot, origin, asset: bot.pipeline.upscale(origin, asset),
    _key(Reaction.VARY): lambda bot, origin, asset: bot.pipeline.vary(origin, asset),
    _key(Reaction.MATCH): lambda bot, origin, asset: bot.pipeline.match_colours(origin, asset),
    _key(Reaction.UNIFY): lambda bot, origin, asset: bot.pipeline.unify(origin, asset),
}

#: The reaction vocabulary: (what the message presents, the reaction) → the use case, given
#: the core, the person and the asset (or, on a status line, the request) it presents.
REACTIONS: dict[tuple[str, str], ReactionHandler] = {
    **{("grid", _key(r)): _select(i) for i, r in enumerate(NUMBER_REACTIONS, start=1)},
    ("grid", _key(Reaction.REROLL)): lambda bot, origin, grid: bot.pipeline.reroll(origin, grid),
    ("grid", _key(Reaction.DISCARD)): lambda bot, origin, grid: bot.pipeline.discard(origin, grid),
    ("grid", _key(Reaction.VIDEO)): lambda bot, origin, grid: bot.pipeline.shots(
        origin, grid, once=True
    ),
    **{("final", k): handler for k, handler in {**_FURTHER, **_RESULT_DECISIONS}.items()},
    ("final", _key(Reaction.REROLL)): lambda bot, origin, asset: bot.pipeline.rerender(
        origin, asset
    ),
    **{("upscale", k): handler for k, handler in {**_FURTHER, **_RESULT_DECISIONS}.items()},
    **{("video", k): handler for k, handler in _RESULT_DECISIONS.items()},
    ("video", _key(Reaction.REROLL)): lambda bot, origin, video: bot.pipeline.revideo(
        origin, video
    ),
    ("status", _key(Reaction.DISCARD)): lambda bot, origin, request: bot.cancel(origin, request),
}

#: What each kind of message means, for a reaction the table does not have.
MEANINGS = {
    "grid": "a draft grid: react with a number to take that draft to the final tier, 🔁 to "
    "reroll, ❌ to discard (🎬 on a storyboard shoots its beats)",
    "final": "this result: react 🎬, ⬆️, ✅, 🔀, 🔁 or ❌ (🎨 and 🪄 where offered)",
    "upscale": "this upscale: react 🎬, ✅, 🔀 or ❌ (🎨 where offered)",
    "video": "this video: react 🔁, ✅ or ❌",
    "status": "a status line: react ❌ to cancel the job",
}
