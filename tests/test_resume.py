"""A bot stopped mid-job finishes the job after a restart and posts what it made (or why it
failed) where it was asked for: grids in the channel, finals in the grid's thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from adapters import load_providers, wire
from bot.app import Services
from bot.delivery import Steps
from bot.domain import AssetKind, CommandEvent, Decision, Origin, ReactionEvent, Reply
from bot.providers import PermanentError
from bot.settings import Settings
from tests.conftest import Chat, ScriptedProvider, collect, registry_with


class Posted:
    """The deliverer of a running surface: records what it was given, per channel."""

    def __init__(self, services: Services, surface: str = "test") -> None:
        self.replies: list[tuple[Origin, Reply]] = []
        self.services = services
        services.scheduler.deliverers[surface] = self.deliver

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        async for reply in replies:
            self.replies.append((origin, reply))
            Steps(self.services.store, origin, reply).posted(f"after-{len(self.replies)}")


def with_local(make_settings: Callable[..., Settings], provider: Any | None = None) -> Services:
    """The bot on the shared data dir; ``provider`` stands in for the local model."""
    settings = make_settings()
    if provider is None:
        return wire(settings)
    return wire(settings, providers=registry_with(settings, local=provider))


async def stopped_mid_job(services: Services, flow: AsyncIterator[Reply]) -> list[Reply]:
    """Run ``flow`` until the model is working, then stop it the way a crash would."""
    provider = services.runner.providers.get("local")
    posted: list[Reply] = []

    async def consume() -> None:
        async for reply in flow:
            posted.append(reply)

    task = asyncio.create_task(consume())
    await provider.entered.wait()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await services.aclose()
    return posted


def stalled() -> ScriptedProvider:
    provider = ScriptedProvider("local")
    provider.gate = asyncio.Event()  # never set
    return provider


async def test_a_draft_interrupted_mid_job_is_posted_as_a_grid_after_restart(make_settings):
    first = with_local(make_settings, stalled())
    chat = Chat(first)
    flow = first.bot.handle_command(chat_event(chat, "draft", "a lighthouse at dawn --n 4"))
    status = await stopped_mid_job(first, flow)
    assert [r.status for r in status] == [True]  # the status line, then the stop

    second = with_local(make_settings)
    posted = Posted(second)
    outcomes = await second.bot.recover()

    assert len(outcomes) == 1
    ((origin, grid),) = posted.replies
    assert origin.channel == chat.origin.channel and origin.team == chat.origin.team
    assert grid.text.startswith("↻ After a restart: ") and "🖼️ Drafts for “a lighthouse" in grid.text
    asset = second.store.get_asset(grid.asset_id)
    assert asset["kind"] == AssetKind.GRID and len(second.store.parents(grid.asset_id)) == 4
    assert grid.files and grid.files[0].exists()
    assert grid.thread_of is None  # a new grid goes in the channel
    assert await second.bot.recover() == [] and len(posted.replies) == 1  # never twice
    await second.aclose()


async def test_a_final_interrupted_mid_job_is_posted_in_the_grid_thread(make_settings):
    first = with_local(make_settings)
    chat = Chat(first)
    (_, grid) = await chat.command("draft", "a harbour at night --n 2")
    await first.aclose()

    second = with_local(make_settings, stalled())
    chat.services = second
    flow = second.bot.handle_reaction(chat_reaction(chat, chat.message_of(grid.asset_id), "2️⃣"))
    await stopped_mid_job(second, flow)

    third = with_local(make_settings)
    posted = Posted(third)
    await third.bot.recover()

    ((_, final),) = posted.replies
    assert final.text.startswith("✨ Final") and "finished after a restart" in final.text
    assert final.thread_of == grid.asset_id
    assert third.store.get_asset(final.asset_id)["stage"] == "final"
    await third.aclose()


async def test_a_job_that_fails_after_restart_says_so_and_frees_the_draft(make_settings):
    first = with_local(make_settings)
    chat = Chat(first)
    (_, grid) = await chat.command("draft", "a harbour at night --n 2")
    draft_id = first.store.parents(grid.asset_id)[1]["id"]
    await first.aclose()

    second = with_local(make_settings, stalled())
    chat.services = second
    flow = second.bot.handle_reaction(chat_reaction(chat, chat.message_of(grid.asset_id), "2️⃣"))
    await stopped_mid_job(second, flow)

    third = with_local(make_settings, ScriptedProvider("local", [PermanentError("bad ref")]))
    posted = Posted(third)
    await third.bot.recover()

    ((_, failure),) = posted.replies
    assert failure.error and "Failed after a restart" in failure.text and "bad ref" in failure.text
    assert "Nothing was charged" in failure.text and failure.thread_of == grid.asset_id
    assert Decision.SELECTED not in [g["decision"] for g in third.store.gates(draft_id)]
    await third.aclose()


async def test_results_for_a_surface_not_running_here_are_made_and_logged(make_settings, caplog):
    first = with_local(make_settings, stalled())
    chat = Chat(first)
    await stopped_mid_job(first, first.bot.handle_command(chat_event(chat, "draft", "a fox")))

    second = with_local(make_settings)  # no deliverer for the "test" surface
    with caplog.at_level("INFO"):
        (outcome,) = await second.bot.recover()
    assert outcome.asset_ids
    assert "not running here" in caplog.text and "Drafts for “a fox”" in caplog.text
    await second.aclose()


def chat_event(chat: Chat, command: str, text: str) -> CommandEvent:
    return CommandEvent(origin=chat.origin, command=command, text=text)


def chat_reaction(chat: Chat, message_id: str, emoji: str) -> ReactionEvent:
    event_id = f"resume-{message_id}-{emoji}"
    return ReactionEvent(origin=chat.origin, event_id=event_id, message_id=message_id, emoji=emoji)


class HoldsOnePrompt:
    """The real local model, except that a prompt containing ``held`` waits for ``release``."""

    def __init__(self, settings: Settings, held: str) -> None:
        self.real = load_providers({"local"}, settings).get("local")
        self.held = held
        self.release = asyncio.Event()

    async def submit(self, request: Any) -> str:
        return await self.real.submit(request)

    async def result(self, provider_request_id: str, request: Any) -> Any:
        if self.held in request.prompt:
            await self.release.wait()
        return await self.real.result(provider_request_id, request)

    async def cancel(self, provider_request_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_each_request_is_posted_as_soon_as_its_own_jobs_finish(make_settings):
    first = with_local(make_settings, stalled())
    chat = Chat(first)
    provider = first.runner.providers.get("local")
    flows = [
        asyncio.create_task(collect(first.bot.handle_command(chat_event(chat, "draft", text))))
        for text in ("a quick fox --n 1", "a slow tortoise --n 1")
    ]
    while len(provider.results) < 2:
        await asyncio.sleep(0.01)
    for flow in flows:
        flow.cancel()
    await asyncio.gather(*flows, return_exceptions=True)
    await first.aclose()

    settings = make_settings()
    holding = HoldsOnePrompt(settings, held="tortoise")
    second = wire(settings, providers=registry_with(settings, local=holding))
    posted = Posted(second)
    resuming = asyncio.create_task(second.bot.recover())

    async def first_post() -> None:
        while not posted.replies:
            await asyncio.sleep(0.01)

    await asyncio.wait_for(first_post(), timeout=20)  # not held back by the tortoise
    assert "a quick fox" in posted.replies[0][1].text and not resuming.done()
    holding.release.set()
    assert len(await resuming) == 2
    assert "a slow tortoise" in posted.replies[1][1].text
    await second.aclose()
