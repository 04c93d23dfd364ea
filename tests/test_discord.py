"""The Discord surface against a fake Discord (REST + gateway) on 127.0.0.1, real discord.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import discord
import pytest
from discord import app_commands

from adapters import wire
from adapters.discord import (
    DISCORD_FLAG_HELP,
    IMAGE_OPTIONS,
    PERMISSION_HINT,
    DiscordSurface,
    app_commands_from_registry,
    command_text,
)
from bot.commands import (
    ASPECT_RATIOS,
    COMMANDS,
    FLAGS,
    MAX_N,
    MAX_SEED,
    RESOLUTIONS,
    VIDEO_SECONDS,
    CommandRegistry,
    CommandSpec,
    FlagSpec,
)
from bot.delivery import Steps
from bot.surfaces import SurfaceUnavailable
from tests.conftest import write_policy
from tests.fakes.discord_api import FakeDiscord

ALICE, BOB, CAROL = 4001, 4002, 4003
REACT = "PUT /channels/{channel}/messages/{message}/reactions/{emoji}/@me"
SEND = "POST /channels/{channel}/messages"


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    await server.start()
    with server.redirect():
        yield server
    await server.stop()


class Rig:
    def __init__(
        self, fake: FakeDiscord, make_settings, policy: Path | None = None, **settings: Any
    ) -> None:
        self.fake, self.make_settings, self.policy, self.settings = (
            fake,
            make_settings,
            policy,
            settings,
        )

    async def start(self) -> Rig:
        options = {
            "discord_bot_token": self.fake.token,
            "discord_guild_ids": [self.fake.guild_id],
            "discord_api_url": self.fake.api_base,
            "discord_gateway_url": self.fake.gateway_url,
            "policy": self.policy,
            **self.settings,  # a test's own settings win
        }
        settings = self.make_settings(**options)
        self.services = wire(settings)
        self.surface = DiscordSurface(
            self.services.surface_context(), guild_ready_timeout=0.05, outbox_interval_s=3600
        )
        self.services.scheduler.deliverers["discord"] = self.surface.deliver  # as `tierbot run`
        self.started = await self.surface.start()
        return self

    async def stop(self) -> None:
        await self.surface.stop()
        await self.services.aclose()

    async def settle(self) -> None:
        await asyncio.sleep(0.05)  # let the gateway deliver what the fake pushed
        await self.surface.idle()

    async def draft(self, text: str = "a lighthouse at dawn", **options: Any) -> dict[str, Any]:
        handle = await self.fake.interaction("draft", {"prompt": text, **options})
        body = await handle.deferred()
        assert body["data"]["flags"] == 64  # the deferred line is private
        await self.settle()
        return self.message("🖼️ Drafts for")

    async def react(self, message: dict[str, Any], emoji: str, user: int = ALICE) -> None:
        await self.fake.react(message["id"], emoji, user_id=user, channel_id=message["channel_id"])
        await self.settle()

    def message(self, needle: str) -> dict[str, Any]:
        found = self.messages(needle)
        assert found, f"no message with {needle!r}"
        return found[-1]

    def messages(self, needle: str) -> list[dict[str, Any]]:
        return [m for m in self.fake.messages.values() if needle in m["content"]]

    def since(self, mark: int) -> list[str]:
        return [r for r in self.fake.route_names()[mark:] if not r.startswith("PATCH")]


@pytest.fixture
async def rig(fake: FakeDiscord, make_settings) -> AsyncIterator[Rig]:
    wired = await Rig(fake, make_settings).start()
    yield wired
    await wired.stop()


async def test_start_identifies_with_minimal_intents_syncs_guild_and_prints_invite(
    rig: Rig,
) -> None:
    assert rig.fake.identify["intents"] == discord.Intents(guilds=True, guild_reactions=True).value
    synced = rig.fake.commands[f"guild:{rig.fake.guild_id}"]
    assert {c["name"] for c in synced} == {"draft", "tierbot"}
    assert "global" not in rig.fake.commands  # global sync is `tierbot discord sync`
    assert "scope=bot+applications.commands" in rig.started
    assert "permissions=" in rig.started


async def test_full_flow_draft_select_video_with_rest_calls(rig: Rig) -> None:
    mark = len(rig.fake.requests)
    grid = await rig.draft(n=4)
    assert rig.since(mark) == ["POST /interactions/{id}/{token}/callback", SEND, *[REACT] * 6]
    assert list(grid["reactions"]) == ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "🔁", "❌"]
    assert "local-draft" in grid["content"] and "4 credits" in grid["content"]
    assert grid["attachments"][0]["filename"].endswith(".jpg")

    mark = len(rig.fake.requests)
    await rig.react(grid, "2️⃣")
    assert rig.since(mark) == [  # the thread, the status (❌ cancels), the final
        "POST /channels/{channel}/messages/{message}/threads",
        SEND,
        REACT,
        SEND,
        *[REACT] * 6,
    ]
    final = rig.message("✨ Final")
    assert final["channel_id"] == grid["id"]  # the thread started from the grid message
    assert "local-final" in final["content"]
    assert list(final["reactions"]) == ["🎬", "⬆️", "✅", "🔀", "🔁", "❌"]

    mark = len(rig.fake.requests)
    await rig.react(final, "🎬")
    assert rig.since(mark) == [SEND, REACT, SEND, REACT, REACT, REACT]  # 🔁 ✅ ❌ on the video
    video = rig.message("🎬 Video")
    assert video["channel_id"] == grid["id"]
    assert video["attachments"][0]["filename"].endswith(".mp4")


async def test_rate_limit_is_handled_by_the_library(rig: Rig) -> None:
    rig.fake.fail_next(
        "POST", f"/channels/{rig.fake.channel_id}/messages", status=429, retry_after=0.2
    )
    await rig.draft(n=2)
    posts = [
        r
        for r in rig.fake.requests
        if r.method == "POST" and r.path == f"/channels/{rig.fake.channel_id}/messages"
    ]
    assert [r.status for r in posts] == [429, 200]


async def test_own_reactions_are_ignored(rig: Rig) -> None:
    grid = await rig.draft(n=2)
    mark = len(rig.fake.requests)
    await rig.react(grid, "1️⃣", user=rig.fake.bot_user_id)
    assert rig.since(mark) == []
    assert rig.messages("✨ Final") == []


async def test_unauthorized_reaction_gets_a_dm_and_spends_nothing(
    fake: FakeDiscord, make_settings, tmp_path: Path
) -> None:
    leads = fake.add_role("leads")
    fake.roles[CAROL] = [leads]
    policy = write_policy(
        tmp_path,
        f'[teams."{fake.guild_id}".channels."{fake.channel_id}"]\n'
        f'approvers = ["{BOB}", "{leads}"]\n',
    )
    rig = await Rig(fake, make_settings, policy).start()
    grid = await rig.draft(n=2)
    spent = rig.services.ledger.report(str(fake.guild_id))["day"]
    await rig.react(grid, "1️⃣", user=ALICE)
    assert "Only approvers can spend credits here" in fake.dms[ALICE][-1]
    assert rig.messages("✨ Final") == []
    assert rig.services.ledger.report(str(fake.guild_id))["day"] == spent
    fake.dm_blocked.add(ALICE)  # DMs closed: a short reply in the channel instead
    await rig.react(grid, "2️⃣", user=ALICE)
    assert rig.messages(f"<@{ALICE}> Only approvers")
    await rig.react(grid, "1️⃣", user=CAROL)  # has the approver role
    assert len(rig.messages("✨ Final")) == 1
    await rig.stop()


async def test_reaction_on_a_grid_posted_before_a_restart(fake: FakeDiscord, make_settings) -> None:
    first = await Rig(fake, make_settings).start()
    grid = await first.draft(n=2)
    await first.stop()
    second = await Rig(fake, make_settings).start()  # same data dir, empty cache
    await second.react(grid, "2️⃣")
    assert second.message("✨ Final")["channel_id"] == grid["id"]
    await second.stop()


async def test_gateway_reconnect_resumes_without_losing_reactions(rig: Rig) -> None:
    grid = await rig.draft(n=2)
    async with rig.fake.outage():
        await rig.fake.react(grid["id"], "1️⃣", user_id=ALICE, channel_id=grid["channel_id"])
    await rig.settle()
    assert rig.fake.resumes >= 1
    assert len(rig.messages("✨ Final")) == 1


async def test_uploads_fit_the_limit_and_big_videos_are_linked(
    fake: FakeDiscord, make_settings
) -> None:
    fake.filesize_limit = 60_000
    rig = await Rig(fake, make_settings, public_url="https://tierbot.example.com").start()
    grid = await rig.draft(n=4)
    (attachment,) = grid["attachments"]
    assert attachment["size"] <= 60_000 and attachment["filename"].endswith(".jpg")
    await rig.react(grid, "1️⃣")
    final = rig.message("✨ Final")
    await rig.react(final, "🎬")
    video = rig.message("🎬 Video")
    assert video["attachments"] == []
    assert "over Discord's" in video["content"]
    assert "https://tierbot.example.com/assets/" in video["content"]
    await rig.stop()


async def test_missing_permissions_explained_and_result_kept(rig: Rig) -> None:
    rig.fake.fail_next(
        "POST",
        f"/channels/{rig.fake.channel_id}/messages",
        status=403,
        code=50013,
        message="Missing Permissions",
    )
    handle = await rig.fake.interaction("draft", {"prompt": "a kite", "n": 2})
    await handle.deferred()
    await rig.settle()
    assert rig.messages("🖼️ Drafts for") == []
    hints = [
        m["content"] for m in rig.fake.messages.values() if PERMISSION_HINT[:30] in m["content"]
    ]
    assert hints and "Create Public Threads" in hints[0]
    rig.services.store.db.execute("update outbox set next_at = '0'")
    assert await rig.surface.outbox.flush() == 1
    assert rig.messages("🖼️ Drafts for")


async def test_a_post_cut_off_after_sending_is_not_sent_twice(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process killed after Discord made the grid's message but before it was recorded:
    the post is taken over and sent again with the same nonce, and Discord (enforce_nonce)
    answers with the message it already made."""
    real_posted = Steps.posted
    cut = {"done": False}

    def stop_once(self: Steps, message_id: str, *args: Any, **steps: Any) -> None:
        if not cut["done"] and self.reply.asset_id and self.entry_id is not None:
            cut["done"] = True
            raise ConnectionError("killed before recording the message")
        real_posted(self, message_id, *args, **steps)

    monkeypatch.setattr(Steps, "posted", stop_once)
    handle = await rig.fake.interaction("draft", {"prompt": "a kite", "n": 2})
    await handle.deferred()
    await rig.settle()
    assert cut["done"] and len(rig.messages("🖼️ Drafts for")) == 1
    store = rig.services.store
    # Due now, and nobody's: the process that began the post is gone (its lease lapsed).
    store.db.execute("update outbox set next_at = '0', claimed_by = null")
    assert await rig.surface.outbox.flush() == 1
    (grid,) = rig.messages("🖼️ Drafts for")  # the same message, linked now
    assert store.db.execute("select count(*) from outbox").fetchone()[0] == 0
    await rig.react(grid, "1️⃣")
    assert rig.messages("✨ Final")


async def test_single_option_commands_name_their_option_after_what_it_takes(rig: Rig) -> None:
    synced = rig.fake.commands[f"guild:{rig.fake.guild_id}"]
    group = next(c for c in synced if c["name"] == "tierbot")
    options = {sub["name"]: [o["name"] for o in sub.get("options", [])] for sub in group["options"]}
    assert options["reroll"] == options["discard"] == ["grid"]
    assert options["approve"] == options["reject"] == options["lineage"] == ["asset"]
    assert options["help"] == []

    handle = await rig.fake.interaction("tierbot", {"grid": "nope"}, subcommand="reroll")
    await handle.deferred()
    await rig.settle()
    # the grid id reached /tierbot reroll (and was looked up)
    assert "no asset nope" in rig.fake.messages[handle.original_id]["content"]


async def test_bad_input_is_answered_privately_on_the_deferred_line(rig: Rig) -> None:
    handle = await rig.fake.interaction("tierbot", {"asset": "nope"}, subcommand="upscale")
    await handle.deferred()
    await rig.settle()
    original = rig.fake.messages[handle.original_id]
    assert "no asset nope" in original["content"]
    assert rig.messages("Drafts for") == []


async def test_model_autocomplete_comes_from_the_catalog(rig: Rig) -> None:
    choices = await rig.fake.autocomplete("draft", "model", "nano", options={"prompt": "a cat"})
    assert {c["value"] for c in choices} >= {"nano-banana", "nano-banana-pro", "nano-banana-2"}


async def test_invalid_token_is_reported_at_start(fake: FakeDiscord, make_settings) -> None:
    settings = make_settings(
        discord_bot_token="wrong",
        discord_api_url=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )
    services = wire(settings)
    surface = DiscordSurface(services.surface_context(), guild_ready_timeout=0.05)
    with pytest.raises(SurfaceUnavailable, match="refused DISCORD_BOT_TOKEN"):
        await surface.start()
    await surface.stop()
    await services.aclose()


@pytest.mark.parametrize(
    ("args", "flags", "text"),
    [
        (("a cat",), {"ar": "16:9", "n": 4}, '"a cat" --ar "16:9" --n "4"'),
        (('say "hi" --n 3',), {}, '"say \\"hi\\" --n 3"'),
        (("g1", 2), {"hero": True}, '"g1" "2" --hero'),
    ],
)
def test_options_become_one_parser_text(args, flags, text) -> None:
    assert command_text(*args, **flags) == text


async def test_global_sync_is_a_deliberate_cli_act(
    fake: FakeDiscord, make_settings, capsys
) -> None:
    from adapters.discord import cli

    settings = make_settings(
        discord_bot_token=fake.token,
        discord_api_url=fake.api_base,
        discord_gateway_url=fake.gateway_url,
    )
    services = wire(settings)
    assert await cli(services.surface_context(), ["sync"]) == 0
    assert {c["name"] for c in fake.commands["global"]} == {"draft", "tierbot"}
    assert "2 command(s) synced globally" in capsys.readouterr().out
    assert await cli(services.surface_context(), ["nope"]) == 2
    await services.aclose()


async def test_schedules_from_discord(rig: Rig) -> None:
    handle = await rig.fake.interaction(
        "tierbot",
        {
            "action": "add",
            "details": 'morning daily 09:00 "a {weekday} flat lay"',
            "tz": "Europe/Berlin",
            "n": 2,
        },
        subcommand="schedule",
    )
    await handle.deferred()
    await rig.settle()
    (schedule,) = rig.services.store.schedules()
    assert (schedule["name"], schedule["tz"], schedule["n"]) == ("morning", "Europe/Berlin", 2)
    assert schedule["channel"] == str(rig.fake.channel_id)
    assert rig.messages("Schedule morning added")


async def test_a_calendar_is_attached_to_the_schedule_command(rig: Rig) -> None:
    await rig.fake.interaction(
        "tierbot",
        {"action": "add", "details": 'morning daily 09:00 "a {weekday} flat lay"'},
        subcommand="schedule",
    )
    await rig.settle()
    csv = b"date,prompt\n2026-11-23,a launch day teaser\n"
    handle = await rig.fake.interaction(
        "tierbot",
        {"action": "calendar", "details": "morning", "calendar": ("november.csv", csv)},
        subcommand="schedule",
    )
    await handle.deferred()
    await rig.settle()
    (schedule,) = rig.services.store.schedules()
    assert schedule["calendar"] == csv.decode()
    assert rig.messages("Calendar for morning: 1 day(s) from 2026-11-23")
    assert not (rig.services.settings.data_dir / "calendars").exists()  # nothing kept on disk


# -- exactly once -----------------------------------------------------------------------------


async def test_a_click_the_moment_the_grid_appears_is_acted_on(fake: FakeDiscord, rig) -> None:
    clicks: list[asyncio.Task[Any]] = []

    def click(message: dict[str, Any]) -> None:
        if "🖼️ Drafts for" in message["content"] and not clicks:
            task = fake.react(message["id"], "2️⃣", user_id=ALICE, channel_id=message["channel_id"])
            clicks.append(asyncio.ensure_future(task))

    fake.on_message = click
    await rig.draft(n=2)
    await asyncio.gather(*clicks)
    for _ in range(100):  # the pre-added reactions take their time
        await rig.settle()
        if rig.messages("✨ Final"):
            break
    assert "from draft 2" in rig.message("✨ Final")["content"]


async def test_removing_and_adding_a_reaction_again_acts_again(fake: FakeDiscord, rig) -> None:
    grid = await rig.draft(n=2)
    await rig.react(grid, "1️⃣")
    final = rig.message("✨ Final")
    await rig.react(final, "✅")
    await rig.react(final, "❌")
    await fake.unreact(final["id"], "✅", user_id=ALICE, channel_id=final["channel_id"])
    await rig.settle()
    await rig.react(final, "✅")  # signs it off again: a new act, not a redelivery
    shown = fake.messages[final["id"]]["content"]
    assert shown.endswith("✅ Signed off by " + str(ALICE))
    asset_id = rig.services.store.asset_for_message(
        "discord", str(grid["channel_id"]), str(final["id"])
    )
    assert rig.services.store.qa_state(asset_id)["decision"] == "approved"


async def test_a_reaction_delivered_while_the_bot_starts_acts_once(
    fake: FakeDiscord, make_settings
) -> None:
    first = await Rig(fake, make_settings).start()
    grid = await first.draft(n=2)
    await first.stop()
    second = Rig(fake, make_settings)
    starting = asyncio.create_task(second.start())
    await asyncio.sleep(0)
    await fake.wait_ready()  # the gateway is up: people click while we are still starting
    assert not starting.done()
    clicking = asyncio.create_task(
        fake.react(grid["id"], "2️⃣", user_id=ALICE, channel_id=grid["channel_id"])
    )
    await starting
    recovering = asyncio.create_task(second.services.bot.recover())  # as `tierbot run` does
    await asyncio.gather(clicking, recovering)
    await second.settle()
    assert len(second.messages("✨ Final")) == 1
    await second.stop()


# -- app commands generated from the command registry -----------------------------------------

STRING, INTEGER, BOOLEAN, ATTACHMENT = 3, 4, 5, 11
#: The Discord name of each positional placeholder and of each command's free text.
POSITIONAL_NAMES = {
    "grid-id": "grid",
    "asset-id": "asset",
    "k": "k",
    "action": "action",
    "name": "name",
    "sequence-id": "sequence",
    "shot-order": "shot-order",
}
TEXT_NAMES = {
    "draft": "prompt",
    "edit": "instruction",
    "storyboard": "beats",
    "schedule": "details",
    "video": "movement",
    "reshoot": "movement",
}
#: The whole-number flags and positionals, with their bounds.
WHOLE = {"n": (1, MAX_N), "seed": (0, MAX_SEED), "seconds": VIDEO_SECONDS, "k": (1, MAX_N)}


def _synced(rig: Rig) -> dict[str, dict[str, Any]]:
    """The synced commands by how they are typed: ``draft``, ``tierbot final``..."""
    found = {}
    for command in rig.fake.commands[f"guild:{rig.fake.guild_id}"]:
        subs = [o for o in command.get("options", []) if o["type"] == 1]
        if not subs:
            found[command["name"]] = command
        for sub in subs:
            found[f"{command['name']} {sub['name']}"] = sub
    return found


async def test_synced_commands_declare_every_option_of_the_registry(rig: Rig) -> None:
    synced = _synced(rig)
    styles = sorted(rig.services.catalog.styles)
    assert len(synced) == len(COMMANDS)
    for spec in COMMANDS:
        command = synced[spec.invoke.removeprefix("/")]
        options = {o["name"]: o for o in command.get("options", [])}
        expected = [POSITIONAL_NAMES[a] for a in spec.args]
        if spec.name != "help":  # /tierbot help takes no option on Discord
            expected += [POSITIONAL_NAMES[a] for a in spec.optional_args]
        if spec.takes_prompt:
            expected.append(TEXT_NAMES[spec.name])
        expected += list(spec.flags)
        if spec.files == "images":  # image, image2...: reference images attached
            expected += ["image", *(f"image{i}" for i in range(2, IMAGE_OPTIONS + 1))]
        if spec.name == "schedule":
            expected.append("calendar")
        if spec.name == "upload":  # one image, the fixed version: required
            expected = ["asset", "image"]
        assert [o["name"] for o in command.get("options", [])] == expected, spec.name
        assert 1 <= len(command["description"]) <= 100

        for arg in spec.args:
            option = options[POSITIONAL_NAMES[arg]]
            assert option["required"] is True
            assert option["type"] == (INTEGER if arg in WHOLE else STRING)
            if arg in WHOLE:
                assert (option["min_value"], option["max_value"]) == WHOLE[arg]
        if spec.takes_prompt:
            text = options[TEXT_NAMES[spec.name]]
            assert (text["type"], text["required"]) == (STRING, not spec.prompt_optional)

        for name in spec.flags:
            flag, option = FLAGS[name], options[name]
            assert option["required"] is False
            assert option["description"] == DISCORD_FLAG_HELP.get(name, flag.help), name
            if flag.metavar is None:
                assert option["type"] == BOOLEAN
            elif name in WHOLE:
                assert option["type"] == INTEGER, (spec.name, name)
                assert (option["min_value"], option["max_value"]) == WHOLE[name]
            else:
                assert option["type"] == STRING, (spec.name, name)
                assert "min_value" not in option and "max_value" not in option
            choices = [c["value"] for c in option.get("choices", [])]
            assert choices == {
                "ar": list(ASPECT_RATIOS),
                "style": styles,
                "res": list(RESOLUTIONS),
            }.get(name, [])
            assert option.get("autocomplete", False) is (name == "model")

        for name, option in options.items():
            if name.startswith("image"):
                assert option["type"] == ATTACHMENT
                assert option["required"] is (spec.name == "upload")

    schedule = {o["name"]: o for o in synced["tierbot schedule"]["options"]}
    assert schedule["calendar"]["type"] == ATTACHMENT
    assert [c["value"] for c in schedule["action"]["choices"]] == [
        "add", "list", "pause", "resume", "remove", "run-now", "calendar"
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("slash", "sub", "options", "sent"),
    [
        (
            "draft",
            None,
            {
                "prompt": 'say "hi" --n 3',
                "ar": "16:9",
                "n": 4,
                "seed": 0,
                "model": "local-draft",
                "style": "cinematic",
                "no": "text, logos",
                "hero": True,
            },
            '"say \\"hi\\" --n 3" --ar "16:9" --n "4" --seed "0" --model "local-draft" '
            '--style "cinematic" --no "text, logos" --hero',
        ),
        ("draft", None, {"prompt": "a cat", "hero": False}, '"a cat"'),
        (
            "tierbot",
            "final",
            {"grid": "g1", "k": 3, "model": "m", "style": "product", "hero": True},
            'final "g1" "3" --model "m" --style "product" --hero',
        ),
        (
            "tierbot",
            "edit",
            {"asset": "a1", "instruction": "x --n 3", "seed": 7},
            'edit "a1" "x --n 3" --seed "7"',
        ),
        ("tierbot", "upscale", {"asset": "a1"}, 'upscale "a1"'),
        (
            "tierbot",
            "video",
            {"asset": "a1", "seconds": 6, "model": "m"},
            'video "a1" --seconds "6" --model "m"',
        ),
        (  # the beats as typed, so the parser splits them at | (quoted, they were one beat)
            "tierbot",
            "storyboard",
            {"beats": "a | b", "ar": "16:9", "seed": 3, "style": "social", "model": "m"},
            'storyboard a | b --ar "16:9" --seed "3" --style "social" --model "m"',
        ),
        (  # schedule's details keep their own quotes: they reach the parser as typed
            "tierbot",
            "schedule",
            {
                "action": "add",
                "details": 'm daily 10:00 "a {weekday} flat lay"',
                "tz": "UTC",
                "days": "mon-fri",
                "n": 3,
                "ar": "4:3",
                "style": "social",
                "summary": "17:00",
            },
            'schedule add m daily 10:00 "a {weekday} flat lay" --tz "UTC" --days "mon-fri" '
            '--n "3" --ar "4:3" --style "social" --summary "17:00"',
        ),
        ("tierbot", "schedule", {"action": "list"}, "schedule list"),
        ("tierbot", "reroll", {"grid": "g 1"}, 'reroll "g 1"'),
        ("tierbot", "budget", {}, "budget"),
        ("tierbot", "help", {}, "help"),
    ],
)
async def test_generated_commands_send_the_text_a_person_would_type(
    rig: Rig, monkeypatch: pytest.MonkeyPatch, slash, sub, options, sent
) -> None:
    received: list[tuple[str, str, Any]] = []

    async def record(interaction, command, text, attachments=(), files=None) -> None:
        received.append((command, text, attachments))

    monkeypatch.setattr(rig.surface, "_command", record)
    await rig.fake.interaction(slash, options, subcommand=sub)
    for _ in range(250):
        if received:
            break
        await asyncio.sleep(0.02)
    assert received == [(slash, sent, [])]


async def test_a_calendar_arrives_as_the_attachment_of_the_schedule_command(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    received: list[tuple[str, str, Any]] = []

    async def record(interaction, command, text, attachments=(), files=None) -> None:
        received.append((command, text, attachments))

    monkeypatch.setattr(rig.surface, "_command", record)
    options = {"action": "calendar", "details": "morning", "calendar": ("nov.csv", b"date\n")}
    await rig.fake.interaction("tierbot", options, subcommand="schedule")
    for _ in range(250):
        if received:
            break
        await asyncio.sleep(0.02)
    ((command, text, (attachment,)),) = received
    assert (command, text, attachment.filename) == (
        "tierbot",
        "schedule calendar morning",
        "nov.csv",
    )


def _by_name(commands: list[Any]) -> dict[str, Any]:
    found = {}
    for command in commands:
        if isinstance(command, app_commands.Group):
            found.update({f"{command.name} {c.name}": c for c in command.commands})
        else:
            found[command.name] = command
    return found


CATALOG = SimpleNamespace(styles={"noir": {}, "film": {}}, models={"m-fast": {}, "m-pro": {}})


async def test_a_flag_added_to_the_registry_is_a_discord_option(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    added = (
        FlagSpec("loop", "loop", "loop the clip"),  # a switch
        FlagSpec("caption", "caption", "text under the clip", "TEXT"),  # fills no int field
        FlagSpec("takes", "n", "how many takes", "N"),  # fills Invocation.n: 1..MAX_N
    )
    for flag in added:
        monkeypatch.setitem(FLAGS, flag.name, flag)
    registry = CommandRegistry()
    for spec in COMMANDS:
        if spec.name == "video":
            spec = replace(spec, flags=(*spec.flags, *(f.name for f in added)))
        registry.register(spec)
    sent: list[tuple[str, str, Any]] = []

    async def send(interaction, command, text, attachments, files) -> None:
        sent.append((command, text, attachments))

    video = _by_name(app_commands_from_registry(CATALOG, send, registry))["tierbot video"]
    params = {p.display_name: p for p in video.parameters}
    images = ["image", *(f"image{i}" for i in range(2, IMAGE_OPTIONS + 1))]
    flags = ["seconds", "motion", "model", "ref", "sref", "loop", "caption", "takes"]
    assert list(params) == ["asset", "movement", *flags, *images]
    loop, caption, takes = params["loop"], params["caption"], params["takes"]
    assert (loop.type, loop.required, loop.description) == (
        discord.AppCommandOptionType.boolean,
        False,
        "loop the clip",
    )
    assert caption.type == discord.AppCommandOptionType.string
    assert caption.description == "text under the clip"
    assert (takes.type, takes.min_value, takes.max_value) == (
        discord.AppCommandOptionType.integer,
        1,
        MAX_N,
    )

    given = {"asset": "a1", "loop": True, "caption": "the end", "takes": 2}
    await video.callback(None, **{p.name: given.get(p.display_name) for p in params.values()})
    assert sent == [
        ("tierbot", 'video "a1" --loop --caption "the end" --takes "2"', [])
    ]  # fmt: skip
    # the stock registry is untouched
    stock = _by_name(app_commands_from_registry(CATALOG, send))["tierbot video"]
    assert [p.display_name for p in stock.parameters] == [
        "asset", "movement", "seconds", "motion", "model", "ref", "sref", *images
    ]  # fmt: skip


async def test_catalog_values_are_choices_up_to_25_then_autocomplete() -> None:
    async def send(*args: Any) -> None:
        raise AssertionError("not run")

    small = _by_name(app_commands_from_registry(CATALOG, send))["draft"]
    style = next(p for p in small.parameters if p.display_name == "style")
    assert [c.value for c in style.choices] == ["film", "noir"]
    model = next(p for p in small.parameters if p.display_name == "model")
    assert model.autocomplete and not model.choices

    many = SimpleNamespace(styles={f"style-{i:02}": {} for i in range(30)}, models={})
    big = _by_name(app_commands_from_registry(many, send))["draft"]
    style = next(p for p in big.parameters if p.display_name == "style")
    assert style.autocomplete and not style.choices  # none of the 30 is out of reach


def test_two_options_with_one_name_are_refused() -> None:
    async def send(*args: Any) -> None:
        raise AssertionError("not run")

    clash = CommandSpec(
        "clash", "A flag named like its positional.", args=("seed",), flags=("seed",)
    )
    with pytest.raises(ValueError, match="share a name"):
        app_commands_from_registry(CATALOG, send, [clash])


async def test_a_storyboard_from_discord_is_one_draft_per_beat(rig) -> None:
    handle = await rig.fake.interaction(
        "tierbot", {"beats": "a fox wakes | it sees snow"}, subcommand="storyboard"
    )
    await handle.deferred()
    for _ in range(100):
        await rig.settle()
        if rig.messages("🖼️ Drafts for"):
            break
    assert "a fox wakes | it sees snow" in rig.message("🖼️ Drafts for")["content"]
