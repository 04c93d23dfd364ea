"""The Slack surface against a fake Slack on 127.0.0.1 (real slack-bolt and slack-sdk)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import adapters.slack as slack_adapter
from adapters import wire
from adapters.slack import SlackSurface
from bot.delivery import Steps
from bot.surfaces import SurfaceUnavailable
from tests.conftest import ScriptedProvider, registry_with, write_policy
from tests.fakes.slack import FakeSlack

CHANNEL = "C0GENERAL"
QUIET = {"auth.test", "apps.connections.open", "chat.update"}


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = FakeSlack()
    await slack.start()
    yield slack
    await slack.stop()


class Rig:
    """A Slack surface wired to the fake, rebuilt on demand to simulate restarts."""

    def __init__(
        self, fake: FakeSlack, make_settings, policy: Path | None, local: Any = None, **settings
    ) -> None:
        self.fake = fake
        self.local = local  # stands in for the local model when given
        self.make_settings = make_settings
        self.policy = policy
        self.settings = settings
        self.surface: SlackSurface | None = None
        self.services = None

    async def start(self) -> SlackSurface:
        settings = self.make_settings(
            slack_bot_token=self.fake.bot_token,
            slack_signing_secret=self.fake.signing_secret,
            slack_api_url=self.fake.api_url,
            policy=self.policy,
            **self.settings,
        )
        providers = registry_with(settings, local=self.local) if self.local else None
        self.services = wire(settings, providers=providers)
        self.surface = SlackSurface(self.services.surface_context(), port=0, outbox_interval_s=3600)
        await self.surface.start()
        self.services.scheduler.deliverers["slack"] = self.surface.deliver  # as `tierbot run`
        return self.surface

    async def stop(self) -> None:
        await self.surface.stop()
        await self.services.aclose()

    @property
    def events_url(self) -> str:
        return f"{self.surface.server.url}/slack/events"

    def api(self) -> list[str]:
        return [c.method for c in self.fake.calls if c.method not in QUIET]

    def since(self, mark: int) -> list[str]:
        return [c.method for c in self.fake.calls[mark:] if c.method not in QUIET]

    async def command(self, text: str, command: str = "/draft", **kw) -> tuple[int, Any]:
        status, body, _ = await self.fake.send_command(self.events_url, command, text, **kw)
        await self.surface.idle()
        return status, body

    async def react(self, ts: str, reaction: str, user: str = "UALICE", **kw) -> int:
        event = self.fake.reaction_added(user=user, reaction=reaction, channel=CHANNEL, ts=ts)
        status, _, _ = await self.fake.send_event(self.events_url, event, **kw)
        await self.surface.idle()
        return status

    def anchors(self, needle: str) -> list[dict[str, Any]]:
        return [m for m in self.fake.messages.values() if needle in m["text"]]


@pytest.fixture
async def rig(fake: FakeSlack, make_settings) -> AsyncIterator[Rig]:
    wired = Rig(fake, make_settings, None)
    await wired.start()
    yield wired
    await wired.stop()


def grid_anchor(rig: Rig) -> dict[str, Any]:
    (anchor,) = rig.anchors("🖼️ Drafts for")
    return anchor


async def test_signed_draft_posts_anchor_grid_in_thread_and_reactions(rig: Rig) -> None:
    status, body = await rig.command("a lighthouse at dawn --n 4")
    assert status == 200 and body["response_type"] == "ephemeral"
    assert body["text"].startswith("⏳ On it: /draft a lighthouse at dawn")
    assert rig.api() == [
        "chat.postMessage",  # the status message
        "reactions.add",  # ❌ on it cancels
        "chat.postMessage",  # the grid's anchor: prompt, model, reason, price
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
        *["reactions.add"] * 6,
    ]
    anchor = grid_anchor(rig)
    assert "local-draft" in anchor["text"] and "4 credits" in anchor["text"]
    assert "cheapest available draft model" in anchor["text"]
    (upload,) = rig.fake.files.values()
    assert upload["thread_ts"] == anchor["ts"] and upload["channel"] == CHANNEL
    names = [c.params["name"] for c in rig.fake.calls if c.method == "reactions.add"][1:]
    assert names == ["one", "two", "three", "four", "repeat", "x"]
    updates = [c.params["text"] for c in rig.fake.calls if c.method == "chat.update"]
    assert updates and re.search(r"\n_done in \d+ s_$", updates[-1]), updates


async def test_bad_signature_and_stale_timestamp_are_rejected(rig: Rig) -> None:
    import time

    status, _, _ = await rig.fake.send_command(rig.events_url, "/draft", "a cat", secret="wrong")
    assert status == 401
    stale = int(time.time()) - 301
    status, _, _ = await rig.fake.send_command(rig.events_url, "/draft", "a cat", timestamp=stale)
    assert status == 401
    assert rig.api() == []


async def test_a_timestamp_that_is_not_a_number_is_refused_not_a_500(rig: Rig) -> None:
    await rig.fake.send_command(rig.events_url, "/draft", "a cat")
    url, body, headers = rig.fake.last_signed
    for bad in ("soon", "", "1.5e9", "١٢٣"):
        status, _, _ = await rig.fake.post_raw(
            url, body, {**headers, "X-Slack-Request-Timestamp": bad}
        )
        assert status == 401, bad


async def test_full_flow_draft_select_video_with_exact_calls(rig: Rig) -> None:
    await rig.command("a lighthouse at dawn --n 4")
    anchor = grid_anchor(rig)
    mark = len(rig.fake.calls)
    assert await rig.react(anchor["ts"], "two") == 200
    assert rig.since(mark) == [
        "chat.postMessage",  # status in the grid's thread
        "reactions.add",  # ❌ on it cancels
        "chat.postMessage",  # the final's anchor in the thread
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
        *["reactions.add"] * 6,  # 🎬 ⬆️ ✅ 🔀 🔁 ❌
    ]
    (final,) = rig.anchors("✨ Final")
    assert final["thread_ts"] == anchor["ts"] and "local-final" in final["text"]
    assert "twisted_rightwards_arrows" in final["reactions"]  # 🔀: subtle variations
    mark = len(rig.fake.calls)
    await rig.react(final["ts"], "movie_camera")
    assert rig.since(mark) == [
        "chat.postMessage",
        "reactions.add",
        "chat.postMessage",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
        *["reactions.add"] * 3,  # 🔁 ✅ ❌
    ]
    (video,) = rig.anchors("🎬 Video")
    assert video["thread_ts"] == anchor["ts"]  # results stay in the grid's thread
    uploads = list(rig.fake.files.values())
    assert uploads[-1]["filename"].endswith(".mp4") and uploads[-1]["thread_ts"] == anchor["ts"]


async def test_duplicate_event_delivery_is_acted_on_once(rig: Rig) -> None:
    await rig.command("a kite --n 2")
    anchor = grid_anchor(rig)
    await rig.react(anchor["ts"], "one", event_id="Ev0DUP")
    await rig.react(anchor["ts"], "one", event_id="Ev0DUP", retry_num=1)
    assert len(rig.anchors("✨ Final")) == 1
    assert rig.fake.ephemerals == []


async def test_restart_between_draft_and_reaction(fake: FakeSlack, make_settings) -> None:
    first = Rig(fake, make_settings, None)
    await first.start()
    await first.command("a harbour at night --n 2")
    anchor = grid_anchor(first)
    await first.stop()
    second = Rig(fake, make_settings, None)  # same data dir: a restarted bot
    await second.start()
    await second.react(anchor["ts"], "two", event_id="Ev0AFTER")
    (final,) = second.anchors("✨ Final")
    assert final["thread_ts"] == anchor["ts"]
    await second.react(anchor["ts"], "two", event_id="Ev0AFTER", retry_num=1)
    assert len(second.anchors("✨ Final")) == 1
    await second.stop()


async def test_a_draft_cut_off_by_a_restart_is_posted_when_the_bot_is_back(
    fake: FakeSlack, make_settings
) -> None:
    stalled = ScriptedProvider("local")
    stalled.gate = asyncio.Event()  # never set: the bot stops while the model works
    first = Rig(fake, make_settings, None, local=stalled)
    await first.start()
    status, _, _ = await fake.send_command(first.events_url, "/draft", "a harbour at night --n 2")
    assert status == 200
    await stalled.entered.wait()
    await first.stop()
    assert not first.anchors("🖼️ Drafts for")
    (status,) = first.anchors("⏳ Drafting 2")
    assert status["text"].endswith(
        "_interrupted by a restart: the result follows once the bot is back_"
    )

    second = Rig(fake, make_settings, None)
    await second.start()
    await second.services.bot.recover()
    (anchor,) = second.anchors("🖼️ Drafts for “a harbour at night”")
    assert anchor["text"].startswith("↻ After a restart") and anchor["channel"] == CHANNEL
    (upload,) = fake.files.values()
    assert upload["thread_ts"] == anchor["ts"]
    await second.stop()


async def test_cross_on_the_status_line_cancels_and_says_so(fake: FakeSlack, make_settings) -> None:
    stalled = ScriptedProvider("local")
    stalled.gate = asyncio.Event()
    rig = Rig(fake, make_settings, None, local=stalled)
    await rig.start()
    await fake.send_command(rig.events_url, "/draft", "a harbour at night --n 2")
    await stalled.entered.wait()
    (status,) = rig.anchors("⏳ Drafting 2")
    await rig.react(status["ts"], "x")
    (status,) = rig.anchors("⏳ Drafting 2")
    assert status["text"].endswith("_cancelled_")
    assert "❌ cancels" not in status["text"]  # nothing is left to cancel
    assert rig.anchors("🛑 Cancelled by UALICE")
    await rig.stop()


async def test_unauthorized_reaction_is_ephemeral_and_spends_nothing(
    fake: FakeSlack, make_settings, tmp_path: Path
) -> None:
    fake.usergroups["S0LEADS"] = {"UCAROL"}
    fake.usergroup_handles["S0LEADS"] = "leads"
    fake.usergroups["S0ART"] = {"UDAN"}
    fake.usergroup_handles["S0ART"] = "art"
    fake.members[CHANNEL] |= {"UDAN"}
    policy = write_policy(
        tmp_path, f'[teams.T0TEST.channels.{CHANNEL}]\napprovers = ["UBOB", "S0LEADS", "@art"]\n'
    )
    rig = Rig(fake, make_settings, policy)
    await rig.start()
    await rig.command("a red bicycle --n 2")
    anchor = grid_anchor(rig)
    spent = rig.services.ledger.report("T0TEST")["day"]
    mark = len(fake.calls)
    await rig.react(anchor["ts"], "one", user="UALICE")
    assert rig.since(mark) == ["chat.postEphemeral"]
    (ephemeral,) = fake.ephemerals
    assert ephemeral["user"] == "UALICE"
    assert "Only approvers can spend credits here" in ephemeral["text"]
    assert rig.services.ledger.report("T0TEST")["day"] == spent
    await rig.react(anchor["ts"], "one", user="UCAROL")  # in the S0LEADS user group
    assert len(rig.anchors("✨ Final")) == 1
    await rig.react(anchor["ts"], "two", user="UDAN")  # in the @art user group
    assert len(rig.anchors("✨ Final")) == 2
    await rig.stop()


async def test_meaningless_reaction_and_own_reactions(rig: Rig) -> None:
    await rig.command("a kite --n 2")
    anchor = grid_anchor(rig)
    mark = len(rig.fake.calls)
    await rig.react(anchor["ts"], "tada")
    assert rig.since(mark) == ["chat.postEphemeral"]
    assert "means nothing on a draft grid" in rig.fake.ephemerals[-1]["text"]
    mark = len(rig.fake.calls)
    await rig.react(anchor["ts"], "one", user="UBOT")  # the bot's own reaction
    assert rig.since(mark) == []


async def test_rate_limited_post_is_retried_with_retry_after(rig: Rig) -> None:
    rig.fake.fail_next("chat.postMessage", "ratelimited", status=429, retry_after=1)
    await rig.command("a kite --n 2")
    assert rig.api().count("chat.postMessage") == 3  # status: the 429 and its retry; anchor
    assert len(rig.anchors("🖼️ Drafts for")) == 1


async def test_not_in_channel_explained_and_result_kept_for_later(rig: Rig) -> None:
    rig.fake.members["C0OTHER"] = {"UALICE"}  # the bot was not invited
    await rig.command("a kite --n 2", channel_id="C0OTHER")
    hints = [p["text"] for p in rig.fake.response_url_posts]
    assert any("/invite @tierbot" in h for h in hints)
    assert rig.anchors("🖼️ Drafts for") == []
    rig.fake.members["C0OTHER"].add(rig.fake.bot_user_id)  # now invited
    rig.services.store.db.execute("update outbox set next_at = '0'")
    assert await rig.surface.outbox.flush() == 1
    assert [
        channel for (channel, _), m in rig.fake.messages.items() if "🖼️ Drafts for" in m["text"]
    ] == ["C0OTHER"]
    assert await rig.surface.outbox.flush() == 0


async def test_failed_post_goes_to_the_outbox_and_is_retried(rig: Rig) -> None:
    rig.fake.fail_next("files.completeUploadExternal", "internal_error")
    await rig.command("a kite --n 2")
    assert rig.fake.files == {}
    rig.services.store.db.execute("update outbox set next_at = '0'")
    assert await rig.surface.outbox.flush() == 1
    assert len(rig.fake.files) == 1


async def test_an_unreadable_answer_keeps_the_result_for_a_retry(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # The grid's anchor gets an answer slack-sdk cannot read (a JSON array, not an object):
    # the status line says it failed, and the grid stays in the outbox for a retry.
    rig.fake.answer_next("chat.postMessage", [], skip=1)
    with caplog.at_level(logging.ERROR, logger="adapters.delivery"):
        await rig.command("a kite --n 2")
    (status,) = rig.anchors("⏳ Drafting 2")
    assert "could not post the result yet" in status["text"]
    assert rig.anchors("🖼️ Drafts for") == []
    assert rig.services.store.db.execute("select count(*) from outbox").fetchone()[0] == 1
    await rig.surface.outbox.flush()  # not due yet: nothing is posted twice early
    assert rig.anchors("🖼️ Drafts for") == []


async def test_file_over_the_limit_is_linked(rig: Rig, monkeypatch) -> None:
    monkeypatch.setattr(slack_adapter, "MAX_UPLOAD_BYTES", 10)
    await rig.command("a kite --n 2")
    assert rig.fake.files == {}
    assert rig.anchors("over Slack's upload limit")


async def test_socket_mode_serves_the_same_flow(fake: FakeSlack, make_settings) -> None:
    settings = make_settings(
        slack_bot_token=fake.bot_token, slack_app_token=fake.app_token, slack_api_url=fake.api_url
    )
    services = wire(settings)
    surface = SlackSurface(services.surface_context())
    assert surface.server is None  # no signing secret: Socket Mode only
    line = await surface.start()
    assert "Socket Mode" in line
    await fake.wait_socket_connected()
    ack = await fake.socket_command("/draft", "a lighthouse at dawn --n 2")
    assert ack["payload"]["text"].startswith("⏳ On it")
    await surface.idle()
    anchor = next(m for m in fake.messages.values() if "🖼️ Drafts for" in m["text"])
    await fake.socket_event(
        fake.reaction_added(user="UALICE", reaction="one", channel=CHANNEL, ts=anchor["ts"]),
        event_id="Ev0SOCK",
    )
    await surface.idle()
    assert any("✨ Final" in m["text"] for m in fake.messages.values())
    await surface.stop()
    await services.aclose()


async def test_invalid_auth_is_reported_at_start(fake: FakeSlack, make_settings) -> None:
    settings = make_settings(
        slack_bot_token="xoxb-wrong", slack_signing_secret="s", slack_api_url=fake.api_url
    )
    services = wire(settings)
    surface = SlackSurface(services.surface_context(), port=0)
    with pytest.raises(SurfaceUnavailable, match="invalid_auth"):
        await surface.start()
    await services.aclose()


def test_slack_needs_its_tokens(make_settings) -> None:
    with pytest.raises(SurfaceUnavailable, match="set SLACK_BOT_TOKEN"):
        SlackSurface(wire(make_settings()).surface_context())
    with pytest.raises(SurfaceUnavailable, match="SLACK_APP_TOKEN"):
        SlackSurface(wire(make_settings(slack_bot_token="xoxb-1")).surface_context())


async def test_messages_link_to_the_asset_page_with_a_public_url(
    fake: FakeSlack, make_settings
) -> None:
    rig = Rig(fake, make_settings, None, public_url="https://tierbot.example.com")
    await rig.start()
    await rig.command("a kite --n 2")
    anchor = grid_anchor(rig)
    grid_id = rig.services.store.asset_for_message("slack", CHANNEL, anchor["ts"])
    assert f"<https://tierbot.example.com/assets/{grid_id}|asset page>" in anchor["text"]
    await rig.stop()


async def test_a_schedule_runs_end_to_end_on_slack(rig: Rig) -> None:
    from datetime import date

    status, _ = await rig.command(
        'schedule add morning daily 09:00 --tz Europe/Berlin --n 2 "a {weekday} coffee"',
        command="/tierbot",
    )
    assert status == 200
    assert rig.anchors("Schedule morning added")
    (schedule,) = rig.services.store.schedules()
    assert schedule["channel"] == CHANNEL and schedule["origin"]["user"] == "UALICE"
    await rig.services.scheduler.fire(schedule, date(2026, 11, 23))
    await rig.surface.idle()
    anchor = grid_anchor(rig)
    assert "📅 morning · Monday 23 November 2026" in anchor["text"]
    assert "a Monday coffee" in anchor["text"]
    await rig.react(anchor["ts"], "one")
    (final,) = rig.anchors("✨ Final")
    assert final["thread_ts"] == anchor["ts"]


# -- exactly once -----------------------------------------------------------------------------


async def test_a_click_the_moment_the_grid_appears_is_acted_on(rig: Rig) -> None:
    # Slack adds reactions at its own pace; a person clicks 2️⃣ as soon as the anchor shows,
    # before our chat.postMessage has even returned.
    clicks: list[asyncio.Task[Any]] = []

    def click(message: dict[str, Any]) -> None:
        if "🖼️ Drafts for" in message["text"] and not clicks:
            event = rig.fake.reaction_added(
                user="UALICE", reaction="two", channel=CHANNEL, ts=message["ts"]
            )
            clicks.append(asyncio.create_task(rig.fake.send_event(rig.events_url, event)))

    rig.fake.on_message = click
    await rig.command("a kite --n 2")
    await asyncio.gather(*clicks)
    await rig.surface.idle()
    (final,) = rig.anchors("✨ Final")
    assert "from draft 2" in final["text"]


async def test_a_replayed_slash_command_runs_once(rig: Rig) -> None:
    await rig.command("a kite --n 2")
    status, _, _ = await rig.fake.replay()  # the same signed bytes, seconds later
    await rig.surface.idle()
    assert status == 200
    assert len(rig.anchors("🖼️ Drafts for")) == 1
    assert len(rig.services.store.jobs_for_request(grid_request(rig))) == 1


def grid_request(rig: Rig) -> str:
    anchor = grid_anchor(rig)
    asset_id = rig.services.store.asset_for_message("slack", CHANNEL, anchor["ts"])
    return rig.services.store.get_asset(asset_id)["request_id"]


async def test_a_step_that_fails_is_resumed_without_posting_twice(rig: Rig) -> None:
    def fail_a_reaction(message: dict[str, Any]) -> None:
        if "🖼️ Drafts for" in message["text"]:
            rig.fake.fail_next("reactions.add", "internal_error")  # the grid's first reaction

    rig.fake.on_message = fail_a_reaction
    await rig.command("a kite --n 2")
    rig.fake.on_message = None
    anchor = grid_anchor(rig)
    assert anchor["reactions"] == {}
    store = rig.services.store
    store.db.execute("update outbox set next_at = ''")  # due now
    assert await rig.surface.outbox.flush() == 1
    (anchor,) = rig.anchors("🖼️ Drafts for")  # the anchor was not posted again
    assert set(anchor["reactions"]) == {"one", "two", "repeat", "x"}
    assert len(rig.fake.files) == 1  # nor the file uploaded again
    assert store.db.execute("select count(*) from outbox").fetchone()[0] == 0
    await rig.react(anchor["ts"], "one")  # and the grid works
    assert rig.anchors("✨ Final")


@pytest.mark.parametrize(
    "stopped", ["after sharing", "after sharing, no files:read", "before sharing", "before sending"]
)
async def test_an_upload_cut_off_is_finished_without_sharing_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, stopped: str
) -> None:
    """A post stopped between two of Slack's upload steps (a process killed there) is taken
    over: the file is shared into the thread once. Slack's share call cannot be repeated
    and says nothing once it landed; the post knows from its own steps whether the bytes
    arrived, so it needs no files:read to tell."""
    real_done = Steps.done
    cut = {"done": False}

    def stop_once(self: Steps, **steps: Any) -> None:
        if not cut["done"] and steps.get("file0") is True and stopped.startswith("after"):
            cut["done"] = True
            raise ConnectionError("killed before recording the shared file")
        real_done(self, **steps)

    monkeypatch.setattr(Steps, "done", stop_once)
    rig.fake.files_read_scope = "files:read" not in stopped
    if stopped == "before sharing":
        rig.fake.fail_next("files.completeUploadExternal", "internal_error")
    if stopped == "before sending":
        rig.fake.fail_next("upload", "internal_error", status=500)
    await rig.command("a kite --n 2")
    store = rig.services.store
    assert store.db.execute("select count(*) from outbox").fetchone()[0] == 1
    # Due now, and nobody's: the process that began the post is gone (its lease lapsed).
    store.db.execute("update outbox set next_at = '', claimed_by = null")
    assert await rig.surface.outbox.flush() == 1
    assert store.db.execute("select count(*) from outbox").fetchone()[0] == 0
    (anchor,) = rig.anchors("🖼️ Drafts for")
    shared = [f for f in rig.fake.files.values() if f["thread_ts"] == anchor["ts"]]
    assert len(shared) == 1
    announced = len([c for c in rig.fake.calls if c.method == "files.getUploadURLExternal"])
    assert announced == (2 if stopped == "before sending" else 1)
    await rig.react(anchor["ts"], "one")  # and the grid works
    assert rig.anchors("✨ Final")


async def test_sign_off_is_one_state_shown_on_the_message(rig: Rig) -> None:
    await rig.command("a kite --n 2")
    await rig.react(grid_anchor(rig)["ts"], "one")
    (final,) = rig.anchors("✨ Final")
    await rig.react(final["ts"], "white_check_mark")
    shown = rig.fake.messages[(CHANNEL, final["ts"])]["text"]
    assert shown.endswith("✅ Signed off by UALICE")
    await rig.react(final["ts"], "x")
    shown = rig.fake.messages[(CHANNEL, final["ts"])]["text"]
    assert shown.endswith("❌ Rejected by UALICE") and "Signed off" not in shown
    asset_id = rig.services.store.asset_for_message("slack", CHANNEL, final["ts"])
    assert rig.services.store.qa_state(asset_id)["decision"] == "rejected"


async def test_a_command_redelivered_during_start_up_runs_once(fake: FakeSlack, make_settings):
    # Slack sends while the bot starts; the recovery pass of `tierbot run` runs meanwhile.
    rig = Rig(fake, make_settings, None)
    await rig.start()
    try:
        send = asyncio.create_task(rig.command("a kite --n 2"))
        recovering = asyncio.create_task(rig.services.bot.recover())
        await asyncio.gather(send, recovering)
        await rig.surface.idle()
        assert len(rig.anchors("🖼️ Drafts for")) == 1
        assert await rig.services.bot.recover() == []
    finally:
        await rig.stop()
