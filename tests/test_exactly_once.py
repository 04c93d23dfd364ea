"""Exactly once, in the core: a job is driven by one process at a time (a claim with a
lease, not start-up order), a finished job's result is posted after a crash (once), an
acknowledged command is run after a crash (once), and closed grids and upscales spend
nothing. The surfaces' side (links before reactions, step-wise posts, replays) is tested in
test_slack.py and test_discord.py; whole processes killed at each step in
test_crash_points.py."""

from __future__ import annotations

import asyncio

import pytest

from adapters import wire
from bot.app import Services
from bot.delivery import Steps
from bot.domain import CommandEvent, Reaction, ReactionEvent
from bot.pipeline import Pipeline
from tests.conftest import Chat, ScriptedProvider, collect, write_policy
from tests.test_resume import Posted, stalled, with_local


@pytest.fixture
def make_settings(make_settings, db_location):
    """Every test here runs on SQLite and on Postgres (a fresh database each)."""
    if not db_location.startswith("postgresql://"):
        return make_settings
    return lambda **overrides: make_settings(database_url=db_location, **overrides)


def killed(services: Services) -> None:
    """What SIGKILL leaves behind: no clean stop, and a heartbeat that never comes again
    (here: one older than any lease), so the process's claims lapse."""
    services.store.db.execute(
        "update workers set heartbeat_at = '2000-01-01' where id = ?", [services.store.worker_id]
    )
    services.store.db.close()


class Died(BaseException):
    """Stops a flow the way a kill would: nothing after this point runs."""


def origin_event(chat: Chat, text: str, delivery_id: str | None = None) -> CommandEvent:
    return CommandEvent(origin=chat.origin, command="draft", text=text, delivery_id=delivery_id)


async def test_a_job_held_by_a_live_process_is_not_run_by_another(make_settings):
    first = with_local(make_settings, stalled())
    chat = Chat(first)
    flow = asyncio.create_task(collect(first.bot.handle_command(origin_event(chat, "a fox"))))
    provider = first.runner.providers.get("local")
    await provider.entered.wait()  # the first process is running the job

    second = with_local(make_settings, ScriptedProvider("local"))  # `tierbot run` starting
    assert await second.bot.recover() == []  # the job is claimed by a live process
    assert second.runner.providers.get("local").submits == []

    flow.cancel()
    await asyncio.gather(flow, return_exceptions=True)
    killed(first)  # ... until that process dies: then it is taken over, once
    Posted(second)
    (outcome,) = await second.bot.recover()
    assert outcome.asset_ids
    assert await second.bot.recover() == []
    await second.aclose()


async def test_drafts_charged_before_a_crash_are_posted_as_a_grid_once(
    make_settings, monkeypatch: pytest.MonkeyPatch
):
    first = with_local(make_settings)
    chat = Chat(first)

    async def dies(*args, **kwargs):
        raise Died

    monkeypatch.setattr(Pipeline, "_grid_reply", dies)  # the drafts are made and charged
    with pytest.raises(Died):
        await collect(first.bot.handle_command(origin_event(chat, "a harbour --n 2")))
    (job,) = first.store.jobs_for_request(
        first.store.db.execute("select id from requests").fetchone()[0]
    )
    assert job["state"] == "succeeded" and not job["delivered"]
    killed(first)
    monkeypatch.undo()

    second = with_local(make_settings)
    posted = Posted(second)
    await second.bot.recover()
    ((_, grid),) = posted.replies
    assert grid.text.startswith("↻ After a restart: 🖼️ Drafts for “a harbour”")
    assert second.store.get_job(job["id"])["delivered"] == 1
    await second.bot.recover()
    assert len(posted.replies) == 1  # never twice
    ledger = second.store.db.execute("select state, count(*) from ledger group by state")
    assert ledger.fetchall() == [("settled", 1)]
    await second.aclose()


async def test_an_acknowledged_command_is_run_after_a_crash(make_settings):
    first = with_local(make_settings)
    chat = Chat(first)
    event = origin_event(chat, "a lighthouse --n 2", delivery_id="trigger-1")
    assert first.bot.receive(event)  # written before the acknowledgement ...
    assert not first.bot.receive(event)  # (a redelivery is ignored)
    killed(first)  # ... and the process dies before running it

    second = with_local(make_settings)
    posted = Posted(second)
    await second.bot.recover()
    assert [r.text.split(" · ")[0] for _, r in posted.replies if not r.status] == [
        "🖼️ Drafts for “a lighthouse”"
    ]
    await second.bot.recover()
    assert len([r for _, r in posted.replies if not r.status]) == 1
    await second.aclose()


async def test_a_command_whose_jobs_were_reserved_is_not_run_again(make_settings):
    first = with_local(make_settings, stalled())
    chat = Chat(first)
    event = origin_event(chat, "a kite --n 1", delivery_id="trigger-2")
    assert first.bot.receive(event)
    flow = asyncio.create_task(collect(first.bot.handle_command(event, received=True)))
    await first.runner.providers.get("local").entered.wait()
    flow.cancel()
    await asyncio.gather(flow, return_exceptions=True)
    killed(first)

    second = with_local(make_settings)
    posted = Posted(second)
    outcomes = await second.bot.recover()
    assert len(outcomes) == 1  # the job was finished, the command not run a second time
    assert second.store.db.execute("select count(*) from jobs").fetchone()[0] == 1
    assert [r.text.split(" · ")[0] for _, r in posted.replies] == [
        "↻ After a restart: 🖼️ Drafts for “a kite”"
    ]
    await second.aclose()


@pytest.mark.parametrize("closing", [Reaction.DISCARD, Reaction.REROLL])
async def test_a_closed_grid_refuses_escalation_and_spends_nothing(chat: Chat, closing):
    (_, grid) = await chat.command("draft", "a red kite --n 2")
    await chat.react(grid.asset_id, closing.value)
    spent = chat.services.store.db.execute("select count(*) from ledger").fetchone()[0]
    (refusal,) = await chat.react(grid.asset_id, "1️⃣")
    assert refusal.private and refusal.error
    assert "rerolled or discarded" in refusal.text and "nothing was spent" in refusal.text
    (refusal,) = await chat.command("tierbot", f"final {grid.asset_id} 2")
    assert refusal.private and "rerolled or discarded" in refusal.text
    assert chat.services.store.db.execute("select count(*) from ledger").fetchone()[0] == spent


async def test_an_upscale_is_not_offered_or_accepted_for_upscaling(chat: Chat):
    (_, grid) = await chat.command("draft", "a red kite --n 2")
    (_, final) = await chat.react(grid.asset_id, "1️⃣")
    (_, upscale) = await chat.react(final.asset_id, "⬆️")
    assert Reaction.UPSCALE.value not in upscale.reactions
    assert Reaction.VIDEO.value in upscale.reactions
    spent = chat.services.store.db.execute("select count(*) from ledger").fetchone()[0]
    (refusal,) = await chat.react(upscale.asset_id, "⬆️")
    assert refusal.private and "already an upscale" in refusal.text
    assert chat.services.store.db.execute("select count(*) from ledger").fetchone()[0] == spent


async def test_a_reaction_that_arrives_before_its_link_waits_for_it(chat: Chat):
    (_, grid) = await chat.command("draft", "a red kite --n 2")
    store = chat.services.store
    message_id = chat.message_of(grid.asset_id)
    store.db.execute("delete from messages where message_id = ?", [message_id])  # not linked yet
    event = ReactionEvent(origin=chat.origin, event_id="early", message_id=message_id, emoji="2️⃣")
    flow = asyncio.create_task(collect(chat.services.bot.handle_reaction(event)))
    await asyncio.sleep(0.3)
    assert not flow.done()  # waiting, not dropped
    Steps(store, chat.origin, grid).posted(message_id)  # the post call returns
    (_, final) = await flow
    assert final.text.startswith("✨ Final")


async def test_a_command_run_after_a_crash_keeps_its_senders_groups(make_settings, tmp_path):
    # Approvers are a user group; the surface learns the sender's groups after the ack.
    policy = write_policy(tmp_path, '[teams.T1.channels.C1]\napprovers = ["S0LEADS"]\n')
    settings = make_settings(policy=policy)
    first = wire(settings)
    chat = Chat(first)
    (_, grid) = await chat.as_user("bob", groups=("S0LEADS",)).command("draft", "a kite --n 2")
    final = CommandEvent(
        origin=chat.origin.model_copy(update={"user": "bob"}),
        command="tierbot",
        text=f"final {grid.asset_id} 1",
        delivery_id="trigger-3",
    )
    assert first.bot.receive(final)  # written before the ack, groups not known yet
    first.bot.resolved(final, final.origin.model_copy(update={"groups": ("S0LEADS",)}))
    killed(first)

    second = wire(settings)
    posted = Posted(second)
    await second.bot.recover()
    texts = [r.text for _, r in posted.replies]
    assert any(t.startswith("✨ Final") for t in texts), texts
    await second.aclose()
