"""Images in, on Discord: reference images attached to the slash commands, against the fake
Discord (REST, gateway and CDN) with the real discord.py client and the offline ``local``
provider. The core's own checks of an image are tested in test_images_in.py; here, that
Discord's attachments reach them, and what a person sees when they do not."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.providers import PermanentError
from bot.uploads import MAX_UPLOAD_BYTES, clean_image
from tests.fakes.discord_api import EPHEMERAL, FakeDiscord
from tests.images import BOMB_PIXELS, animated_gif, bomb, jpeg, png
from tests.test_discord import ALICE, Rig

ATTACHMENT = 11


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    server.reaction_pace_s = 0.01  # pre-added reactions are not what these tests are about
    await server.start()
    with server.redirect():
        yield server
    await server.stop()


@pytest.fixture
async def rig(fake: FakeDiscord, make_settings) -> AsyncIterator[Rig]:
    wired = await Rig(fake, make_settings).start()
    yield wired
    await wired.stop()


async def command(rig: Rig, sub: str | None, options: dict[str, Any]) -> int:
    """Run ``/draft`` (``sub`` None) or ``/tierbot <sub>`` until answered; its private line's
    message id."""
    slash = "draft" if sub is None else "tierbot"
    handle = await rig.fake.interaction(slash, options, subcommand=sub)
    await handle.deferred()
    await rig.settle()
    assert handle.original_id is not None
    return handle.original_id


def private_line(rig: Rig, message_id: int) -> str:
    """The text of a command's deferred line, which only its sender sees."""
    message = rig.fake.messages[message_id]
    assert message["flags"] & EPHEMERAL
    return str(message["content"])


def asset_of(rig: Rig, message: dict[str, Any]) -> str:
    asset_id = rig.services.store.asset_for_message(
        "discord", str(rig.fake.channel_id), str(message["id"])
    )
    assert asset_id is not None
    return asset_id


def uploads(rig: Rig) -> list[dict[str, Any]]:
    return list(rig.services.store.db["assets"].rows_where("kind = 'upload'", order_by="rowid"))


def nothing_spent(rig: Rig) -> bool:
    db = rig.services.store.db
    return list(db["ledger"].rows) == [] and list(db["jobs"].rows) == []


def reference_parents(rig: Rig, grid_id: str) -> list[list[str]]:
    """For each draft of a grid, the ids of the images it was made from."""
    store = rig.services.store
    return [[p["id"] for p in store.parents(d["id"])] for d in store.parents(grid_id)]


# ------------------------------------------------------------------------ the options


async def test_every_command_that_takes_images_offers_attachment_options(rig: Rig) -> None:
    synced = {}
    for command in rig.fake.commands[f"guild:{rig.fake.guild_id}"]:
        subs = [o for o in command.get("options", []) if o["type"] == 1]
        synced.update({f"tierbot {s['name']}": s for s in subs} if subs else {"draft": command})

    def attachments(name: str) -> list[tuple[str, bool]]:
        options = synced[name].get("options", [])
        return [(o["name"], o["required"]) for o in options if o["type"] == ATTACHMENT]

    four = [("image", False), ("image2", False), ("image3", False), ("image4", False)]
    for name in ("draft", "final", "edit", "video", "storyboard", "ref"):
        assert attachments(name if name == "draft" else f"tierbot {name}") == four, name
    assert attachments("tierbot upload") == [("image", True)]  # exactly one: the fixed one
    assert attachments("tierbot schedule") == [("calendar", False)]
    for name in ("vary", "upscale", "budget", "lineage", "approve"):
        assert attachments(f"tierbot {name}") == [], name
    ref = next(o for o in synced["draft"]["options"] if o["name"] == "ref")
    assert "named references" in ref["description"] and "comma" in ref["description"]


# ------------------------------------------------------------------ images that arrive


async def test_a_draft_with_two_attached_images_keeps_them_in_its_lineage(rig: Rig) -> None:
    options = {
        "prompt": "our mug on a desk",
        "n": 2,
        "image": ("mug.png", png()),
        "image2": ("logo.jpg", jpeg()),
    }
    await command(rig, None, options)
    grid = rig.message("🖼️ Drafts for")
    sent = uploads(rig)
    assert [(u["prompt"], u["sent_by"]) for u in sent] == [
        ("mug.png", f"discord:{ALICE}"),
        ("logo.jpg", f"discord:{ALICE}"),
    ]
    assert reference_parents(rig, asset_of(rig, grid)) == [[u["id"] for u in sent]] * 2
    # Both came from their signed ephemeral-attachment links, once each.
    assert [(path.split("/")[1], status) for path, status in rig.fake.cdn_requests] == [
        ("ephemeral-attachments", 200),
        ("ephemeral-attachments", 200),
    ]


async def test_a_named_reference_added_on_discord_shapes_two_drafts(rig: Rig) -> None:
    options = {
        "action": "add",
        "name": "mug",
        "image": ("front.png", png()),
        "image2": ("side.png", png((30, 30, 200))),
    }
    await command(rig, "ref", options)
    saved = rig.message("📌 Reference mug saved")
    assert len(saved["attachments"]) == 2  # the team sees what "mug" is
    kept = [u["id"] for u in uploads(rig)]
    assert len(kept) == 2
    for prompt in ("the mug on a beach", "the mug in snow"):
        await command(rig, None, {"prompt": prompt, "n": 1, "ref": "mug"})
        assert reference_parents(rig, asset_of(rig, rig.message(f"“{prompt}”"))) == [kept]
    assert [u["id"] for u in uploads(rig)] == kept  # used by name, not sent again


async def test_a_final_offers_shuffle_and_a_hand_fixed_version_comes_back_as_manual(
    rig: Rig,
) -> None:
    grid = await rig.draft(n=2)
    await rig.react(grid, "1️⃣")
    final = rig.message("✨ Final")
    final_id = asset_of(rig, final)
    assert "🔀" in final["reactions"]  # pre-added with the final's other reactions

    await rig.react(final, "🔀")
    varied = rig.messages("🔀 Subtle variations")[-1]
    assert "🖼️ Drafts for" in varied["content"] and varied["channel_id"] == grid["id"]
    assert list(varied["reactions"]) == ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "🔁", "❌"]
    assert reference_parents(rig, asset_of(rig, varied)) == [[final_id]] * 4

    options = {"asset": final_id, "image": ("fixed.png", png((0, 200, 0), (96, 64)))}
    await command(rig, "upload", options)
    version = rig.message("🖌️ Hand-fixed version")
    assert version["channel_id"] == grid["id"]
    row = rig.services.store.get_asset(asset_of(rig, version))
    assert (row["kind"], row["stage"], row["sent_by"]) == ("image", "manual", f"discord:{ALICE}")
    assert rig.services.store.parents(row["id"])[0]["id"] == final_id
    assert list(version["reactions"]) == ["🎬", "⬆️", "✅", "🔀", "❌"]  # no re-render


# ---------------------------------------------------------------- images that do not


def core_refusal(name: str, data: bytes) -> str:
    """What the core says about ``data`` sent as ``name``."""
    with pytest.raises(PermanentError) as refused:
        clean_image(data, name)
    return f"Not used: {refused.value.message}. Nothing was spent."


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (lambda: b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_UPLOAD_BYTES, "MB; images up to"),
        (lambda: b"date,prompt\n2026-11-23,a mug\n", "is not a readable image"),
        (animated_gif, "is a GIF file; send a JPEG, PNG, WEBP image"),
        (bomb, f"is {BOMB_PIXELS}, over the limit of 40,000,000 pixels"),
    ],
    ids=["too-big", "not-an-image", "animated-gif", "bomb"],
)
async def test_a_bad_image_is_refused_privately_and_nothing_is_spent(
    rig: Rig, data: Any, says: str
) -> None:
    bad = data()
    options = {"prompt": "a mug", "image": ("good.png", png()), "image2": ("bad.png", bad)}
    line = private_line(rig, await command(rig, None, options))
    assert says in line and line == core_refusal("bad.png", bad)  # the core's words
    assert nothing_spent(rig) and uploads(rig) == []
    assert rig.messages("Drafts for") == []
    downloaded = [path.rsplit("/", 1)[-1] for path, _ in rig.fake.cdn_requests]
    if len(bad) > MAX_UPLOAD_BYTES:
        assert downloaded == []  # refused from its declared size: never fetched
    else:
        assert downloaded == ["good.png", "bad.png"]


async def test_a_huge_calendar_is_refused_unread(rig: Rig) -> None:
    huge = b"date,prompt\n" + b"2026-11-23,a mug\n" * (MAX_UPLOAD_BYTES // 17 + 1)
    options = {"action": "calendar", "details": "morning", "calendar": ("year.csv", huge)}
    line = private_line(rig, await command(rig, "schedule", options))
    size = f"{len(huge) / 1e6:.1f} MB"
    assert line.startswith(f"Not used: 'year.csv' is {size}, too big to take from Discord")
    assert rig.fake.cdn_requests == []


@pytest.mark.parametrize("failure", ["500", "404", "expired"])
async def test_an_attachment_the_cdn_does_not_give_is_asked_for_again(
    rig: Rig, failure: str
) -> None:
    if failure == "expired":
        rig.fake.cdn_ttl_s = -1.0  # the link's ex is already past: the CDN answers 404
    else:
        rig.fake.fail_cdn("mug.png", status=int(failure))
    options = {"prompt": "a mug", "image": ("mug.png", png())}
    line = private_line(rig, await command(rig, None, options))
    status = "404" if failure == "expired" else failure
    assert line == (
        f"Not used: I could not download mug.png from Discord ({status}); attach it again. "
        "Nothing was spent."
    )
    assert nothing_spent(rig) and uploads(rig) == []
    states = rig.services.store.db.execute("select state from inbox").fetchall()
    assert states == [("done",)]  # answered: a restart does not run it again


# -------------------------------------------------------------------------- a restart


async def test_images_of_a_command_cut_off_by_a_restart_are_asked_for_again(
    fake: FakeDiscord, make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await Rig(fake, make_settings).start()

    async def stopped(*args: Any) -> None:
        """The process stops between the deferral and the download."""

    monkeypatch.setattr(first.surface, "_run_command", stopped)
    handle = await fake.interaction(
        "draft", {"prompt": "our mug", "n": 1, "image": ("mug.png", png())}
    )
    await handle.deferred()
    await first.settle()
    (row,) = first.services.store.db.execute("select event, state from inbox").fetchall()
    event = json.loads(row[0])
    assert row[1] == "pending"
    assert [f["name"] for f in event["files"]] == ["mug.png"]  # named, without the bytes
    assert all(not f.get("data") and not f.get("kept") for f in event["files"])
    await first.stop()

    second = await Rig(fake, make_settings).start()
    await second.services.bot.recover()  # as `tierbot run` does at start
    await second.settle()
    # The interaction's token is not the new process's: the person hears by DM.
    assert "mug.png was lost when the bot restarted" in fake.dms[ALICE][-1]
    assert nothing_spent(second) and uploads(second) == []
    assert second.messages("Drafts for") == []  # not drafted without the image
    assert fake.cdn_requests == []
    await second.stop()


async def test_a_calendar_cut_off_by_a_restart_asks_for_the_file(
    fake: FakeDiscord, make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = await Rig(fake, make_settings).start()
    await fake.interaction(
        "tierbot",
        {"action": "add", "details": 'morning daily 09:00 "a {weekday} flat lay"'},
        subcommand="schedule",
    )
    await first.settle()

    async def stopped(*args: Any) -> None:
        """The process stops between the deferral and the download."""

    monkeypatch.setattr(first.surface, "_run_command", stopped)
    options = {"action": "calendar", "details": "morning", "calendar": ("nov.csv", b"date\n")}
    await (await fake.interaction("tierbot", options, subcommand="schedule")).deferred()
    await first.stop()

    second = await Rig(fake, make_settings).start()
    await second.services.bot.recover()
    await second.settle()
    assert "attach the calendar's CSV file" in fake.dms[ALICE][-1]
    (schedule,) = second.services.store.schedules()
    assert not schedule["calendar"]  # nothing half-read was stored
    await second.stop()
