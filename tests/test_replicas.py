"""Two replicas of ``tierbot run`` on one Postgres: what one receives or fires, the other does
not repeat. A reaction delivered to both acts once; a schedule one added is armed by the other
and its batch and summary are posted once, whichever timer wakes first."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import date

import pytest

from adapters import wire
from bot.app import Services
from bot.domain import ReactionEvent
from bot.settings import Settings
from tests.conftest import Chat
from tests.test_schedules import ADD, Clock, berlin, grids


@pytest.fixture
def replicas(
    make_settings: Callable[..., Settings], database_url: str
) -> Iterator[tuple[Services, Services]]:
    pair = tuple(wire(make_settings(database_url=database_url)) for _ in range(2))
    yield pair
    for services in pair:
        services.store.close()


def chat_on(services: Services, clock: Clock) -> Chat:
    services.scheduler.clock = clock
    chat = Chat(services)
    services.scheduler.deliverers["test"] = lambda origin, replies: chat._post(replies)
    return chat


async def test_a_reaction_delivered_to_both_replicas_acts_once(replicas) -> None:
    one, two = replicas
    clock = Clock(berlin(2026, 11, 23, 8, 0))
    first, second = chat_on(one, clock), chat_on(two, clock)
    (grid,) = [r for r in await first.command("draft", "a red kite --n 2") if r.asset_id]
    second.posted.update(first.posted)  # both see the same channel
    event = ReactionEvent(
        origin=first.origin, event_id="Ev-1", message_id=first.message_of(grid.asset_id), emoji="1️⃣"
    )
    answers = await asyncio.gather(
        first._post(one.bot.handle_reaction(event)), second._post(two.bot.handle_reaction(event))
    )
    finals = [r for replies in answers for r in replies if r.asset_id]
    assert len(finals) == 1
    request_id = one.store.get_asset(grid.asset_id)["request_id"]
    stages = [j["stage"] for j in one.store.jobs_for_request(request_id)]
    assert stages.count("final") == 1


async def test_a_schedule_fires_once_across_replicas(replicas) -> None:
    one, two = replicas
    clock = Clock(berlin(2026, 11, 23, 8, 0))
    first, second = chat_on(one, clock), chat_on(two, clock)
    await two.scheduler.start()  # the second replica was up before the schedule existed
    await first.command("tierbot", ADD.replace("--n 2", "--n 2 --summary 17:00"))
    (schedule,) = one.store.schedules()
    assert two.scheduler._timer.get_job(f"batch:{schedule['id']}") is None
    two.scheduler.sync()  # what `tierbot run` does every lease
    assert two.scheduler._timer.get_job(f"batch:{schedule['id']}") is not None

    clock.now = berlin(2026, 11, 23, 9, 0)
    await asyncio.gather(
        one.scheduler._on_time(schedule["id"]), two.scheduler._on_time(schedule["id"])
    )
    assert len(grids(first)) + len(grids(second)) == 1
    day = date(2026, 11, 23)
    await asyncio.gather(
        one.scheduler.summarize(schedule, day), two.scheduler.summarize(schedule, day)
    )
    summaries = [
        r for chat in (first, second) for r in chat.posted.values() if r.text.startswith("📣")
    ]
    assert len(summaries) == 1

    await first.command("tierbot", "schedule remove morning")
    two.scheduler.sync()
    assert two.scheduler._timer.get_job(f"batch:{schedule['id']}") is None
    two.scheduler.stop()
