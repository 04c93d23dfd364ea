"""Slack in Socket Mode with two replicas of the bot on one Postgres: each replica opens its
own connection and Slack spreads envelopes across them (the fake in turn). Every command is
answered once, by whichever replica got it, and an event redelivered to the other replica
acts once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from adapters import wire
from adapters.slack import SlackSurface
from bot.app import Services
from bot.settings import Settings
from tests.fakes.slack import FakeSlack

CHANNEL = "C0GENERAL"


@pytest.fixture
async def replicas(
    make_settings: Callable[..., Settings], database_url: str
) -> AsyncIterator[tuple[FakeSlack, list[tuple[Services, SlackSurface]]]]:
    fake = FakeSlack()
    await fake.start()
    running = []
    for _ in range(2):
        settings = make_settings(
            slack_bot_token=fake.bot_token,
            slack_app_token=fake.app_token,
            slack_api_url=fake.api_url,
            database_url=database_url,
        )
        services = wire(settings)
        services.start()
        surface = SlackSurface(services.surface_context())
        await surface.start()
        services.scheduler.deliverers["slack"] = surface.deliver
        running.append((services, surface))
    yield fake, running
    for services, surface in running:
        await surface.stop()
        await services.aclose()
    await fake.stop()


async def idle(running: list[tuple[Services, SlackSurface]]) -> None:
    for _ in range(3):  # one replica's post can start work on the other (a reaction)
        for _services, surface in running:
            await surface.idle()


def anchors(fake: FakeSlack, text: str) -> list[dict[str, Any]]:
    return [m for m in fake.messages.values() if text in m["text"]]


async def test_commands_spread_across_replicas_are_each_answered_once(replicas) -> None:
    fake, running = replicas
    for _ in range(100):
        if fake.open_sockets == 2:
            break
        await asyncio.sleep(0.05)
    assert fake.open_sockets == 2
    for i in range(6):
        ack = await fake.socket_command("/draft", f"a paper boat {i} --n 2")
        assert ack["payload"]["text"].startswith("⏳ On it")
    await idle(running)
    grids = anchors(fake, "🖼️ Drafts for")
    assert len(grids) == 6
    store = running[0][0].store
    by_worker = {row["claimed_by"] for row in store.db.query("select claimed_by from inbox")} - {
        None
    }
    assert {services.store.worker_id for services, _ in running} <= by_worker

    grid = grids[0]
    reaction = fake.reaction_added(user="UALICE", reaction="one", channel=CHANNEL, ts=grid["ts"])
    await fake.socket_event(reaction, event_id="Ev0REPLICA")
    await fake.socket_event(reaction, event_id="Ev0REPLICA", retry_attempt=1)  # the other one
    await idle(running)
    assert len(anchors(fake, "✨ Final")) == 1
