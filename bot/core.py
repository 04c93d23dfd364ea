"""The core's front door: every surface hands it commands and reactions, and posts its replies.

``Tierbot`` parses a command with the one shared parser, maps a reaction through the
vocabulary onto a use case of the pipeline, and turns every error into a clear reply: bad
input and refusals privately to the person, failed jobs in the channel, unexpected errors
with a reference id and never a stack trace. Surfaces call :meth:`Tierbot.record_post` after
posting a reply that presents an asset, so reactions on that message find the asset again,
even after a restart.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from bot.commands import CommandError, Invocation, help_text, parse
from bot.domain import (
    NUMBER_REACTIONS,
    AssetKind,
    CommandEvent,
    Origin,
    Reaction,
    ReactionEvent,
    Reply,
    Stage,
    normalize_emoji,
)
from bot.pipeline import Pipeline, UserError, guarded, private_error
from bot.runner import CompletedJob, JobFailed, JobRunner
from bot.schedules import Scheduler
from storage import Store

log = logging.getLogger(__name__)

_NUMBERS = {normalize_emoji(r.value): i for i, r in enumerate(NUMBER_REACTIONS, start=1)}


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

    async def handle_command(self, event: CommandEvent) -> AsyncIterator[Reply]:
        """Run one slash command; yields replies as the work progresses."""
        try:
            inv = parse(event.command, event.text)
        except CommandError as exc:
            yield private_error(exc.message)
            return
        async for reply in guarded(self._command(event.origin, inv, event.attachment)):
            yield reply

    async def handle_reaction(self, event: ReactionEvent) -> AsyncIterator[Reply]:
        """Act on a reaction to one of the bot's messages, once per delivery."""
        if not self.store.first_delivery(f"{event.origin.surface}:{event.event_id}"):
            log.info("duplicate delivery %s ignored", event.event_id)
            return
        where = (event.origin.surface, event.origin.channel, event.message_id)
        asset_id = self.store.asset_for_message(*where)
        if asset_id is not None:
            replies = self._reaction(event.origin, asset_id, event.emoji)
        elif request_id := self.store.request_for_message(*where):
            replies = self._status_reaction(event.origin, request_id, event.emoji)
        else:
            return  # not one of our messages: reactions there mean nothing to us
        async for reply in guarded(replies):
            yield reply

    async def _status_reaction(
        self, origin: Origin, request_id: str, emoji: str
    ) -> AsyncIterator[Reply]:
        """❌ on a status line cancels the request's running jobs; credits are released."""
        if normalize_emoji(emoji) != normalize_emoji(Reaction.DISCARD):
            raise UserError(f"{emoji} means nothing on a status line: react ❌ to cancel the job")
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

    def record_post(
        self, origin: Origin, message_id: str, reply: Reply, thread_id: str | None = None
    ) -> None:
        """Remember which asset a posted message presents (for reactions on it), the thread
        it lives in (so later results thread under the same root), and, for a status line,
        its request (so ❌ on it cancels)."""
        if reply.asset_id or (reply.status and reply.request_id):
            self.store.record_message(
                origin.surface,
                origin.channel,
                message_id,
                reply.asset_id,
                thread_id,
                request_id=reply.request_id if reply.status else None,
            )

    def thread_of(self, origin: Origin, reply: Reply) -> str | None:
        """The surface message id of the thread ``reply`` belongs in, if it threads."""
        if not reply.thread_of:
            return None
        return self.store.thread_for_asset(origin.surface, origin.channel, reply.thread_of)

    async def resume(self) -> list[CompletedJob | JobFailed]:
        """Finish jobs a previous process left unfinished and post what they made, or why
        they failed, where they were asked for (through the scheduler's surfaces)."""
        by_request: dict[str, list[str]] = {}
        for job in self.store.unfinished_jobs():
            by_request.setdefault(job["request_id"], []).append(job["id"])

        async def finish(job_ids: list[str]) -> list[CompletedJob | JobFailed]:
            # Per request, so a grid is not kept waiting for someone else's long video.
            outcomes = await self.runner.resume(job_ids)
            for origin, replies in self.pipeline.resumed(outcomes):
                await self.scheduler.deliver(origin, replies)
            return outcomes

        finished = await asyncio.gather(*(finish(ids) for ids in by_request.values()))
        return [outcome for outcomes in finished for outcome in outcomes]

    # -- internals ---------------------------------------------------------------------------

    async def _command(
        self, origin: Origin, inv: Invocation, attachment: bytes | None = None
    ) -> AsyncIterator[Reply]:
        pipeline = self.pipeline
        name = inv.name
        if name == "draft":
            replies = pipeline.draft(origin, inv)
        elif name == "final":
            replies = pipeline.select(origin, inv.args[0], inv.index or 0, inv)
        elif name == "reroll":
            replies = pipeline.reroll(origin, inv.args[0])
        elif name == "discard":
            replies = pipeline.discard(origin, inv.args[0])
        elif name == "edit":
            replies = pipeline.edit(origin, inv.args[0], inv)
        elif name == "upscale":
            replies = pipeline.upscale(origin, inv.args[0], inv.model)
        elif name == "video":
            replies = pipeline.video(origin, inv.args[0], inv.seconds, inv.model)
        elif name == "approve":
            replies = pipeline.approve(origin, inv.args[0])
        elif name == "reject":
            replies = pipeline.reject(origin, inv.args[0])
        elif name == "storyboard":
            replies = pipeline.storyboard(origin, inv)
        elif name == "schedule":
            replies = self.scheduler.command(origin, inv, attachment)
        else:
            yield self._read_only(origin, inv)
            return
        async for reply in replies:
            yield reply

    def _read_only(self, origin: Origin, inv: Invocation) -> Reply:
        if inv.name == "lineage":
            return Reply(text=self.pipeline.lineage(inv.args[0]), private=True)
        if inv.name == "budget":
            return Reply(text=self.pipeline.budget(origin), private=True)
        if inv.name == "models":
            return Reply(text=self.pipeline.models(), private=True)
        if inv.name == "help":
            return Reply(text=help_text(inv.args[0] if inv.args else None), private=True)
        raise UserError(f"/tierbot {inv.name} is not available yet")

    async def _reaction(self, origin: Origin, asset_id: str, emoji: str) -> AsyncIterator[Reply]:
        asset = self.store.get_asset(asset_id)
        if asset is None:
            return
        key = normalize_emoji(emoji)
        pipeline = self.pipeline
        if asset["kind"] == AssetKind.GRID:
            if key in _NUMBERS:
                replies = pipeline.select(origin, asset_id, _NUMBERS[key])
            elif key == normalize_emoji(Reaction.REROLL):
                replies = pipeline.reroll(origin, asset_id)
            elif key == normalize_emoji(Reaction.DISCARD):
                replies = pipeline.discard(origin, asset_id)
            else:
                raise UserError(
                    f"{emoji} means nothing on a draft grid: react with a number to take that "
                    "draft to the final tier, 🔁 to reroll or ❌ to discard"
                )
        else:
            is_video = asset["kind"] == AssetKind.VIDEO
            if key == normalize_emoji(Reaction.APPROVE):
                replies = pipeline.approve(origin, asset_id)
            elif key == normalize_emoji(Reaction.DISCARD):
                replies = pipeline.reject(origin, asset_id)
            elif key == normalize_emoji(Reaction.VIDEO) and not is_video:
                replies = pipeline.video(origin, asset_id)
            elif key == normalize_emoji(Reaction.UPSCALE) and not is_video:
                replies = pipeline.upscale(origin, asset_id)
            elif key == normalize_emoji(Reaction.REROLL) and asset["stage"] in (
                Stage.FINAL,
                Stage.EDIT,
            ):
                replies = pipeline.rerender(origin, asset_id)
            else:
                allowed = "✅ or ❌" if is_video else "🎬, ⬆️, ✅, 🔁 or ❌"
                raise UserError(f"{emoji} means nothing on this {asset['stage']}: react {allowed}")
        async for reply in replies:
            yield reply
