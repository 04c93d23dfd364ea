"""Images in on Slack, against the fake Slack (real slack-bolt and slack-sdk).

Slash commands carry no files, so images come in a message that mentions the bot (an
``app_mention`` event with ``files``) or as a Slack file link in ``--ref``/``--sref``. The
surface writes the event down before the ack, downloads after it with the bot token from
Slack's file host only, and hands the bytes to the core, which checks and stores them. The
core's own rules for images are tested in test_images_in.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from adapters import wire
from adapters.slack import REACTION_NAMES, SlackFiles, SlackSurface, mention_command
from bot.app import Services
from bot.uploads import MAX_UPLOAD_BYTES
from tests.fakes.slack import FakeSlack
from tests.images import animated_gif, bomb, png
from tests.test_slack import CHANNEL, Rig, grid_anchor

ROOT = Path(__file__).resolve().parents[1]


# -- images --------------------------------------------------------------------------------


# -- rigs ----------------------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = FakeSlack()
    slack.reaction_pace_s = 0  # Slack's pace of reactions is tested in test_slack.py
    await slack.start()
    yield slack
    await slack.stop()


@pytest.fixture
async def rig(fake: FakeSlack, make_settings) -> AsyncIterator[Rig]:
    wired = Rig(fake, make_settings, None)
    await wired.start()
    yield wired
    await wired.stop()


class Foreign:
    """Another host on 127.0.0.1: it records every request, headers included."""

    def __init__(self) -> None:
        self.requests: list[dict[str, str]] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._record)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _record(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        return web.Response(body=png(), content_type="image/png")


@pytest.fixture
async def foreign() -> AsyncIterator[Foreign]:
    host = Foreign()
    await host.start()
    yield host
    await host.stop()


async def mention(
    rig: Rig, text: str, files: list[dict[str, Any]] | None = None, **kw: Any
) -> dict[str, Any]:
    """Alice posts ``@tierbot <text>`` with ``files``; Slack delivers the app_mention."""
    event = rig.fake.app_mention(text=f"<@UBOT> {text}", files=files)
    await deliver(rig, event, **kw)
    return event


async def deliver(rig: Rig, event: dict[str, Any], **kw: Any) -> None:
    status, _, _ = await rig.fake.send_event(rig.events_url, event, **kw)
    assert status == 200
    await rig.surface.idle()


def uploads(services: Services) -> list[dict[str, Any]]:
    return list(services.store.db["assets"].rows_where("kind = 'upload'", order_by="rowid"))


def nothing_spent(services: Services) -> bool:
    store = services.store
    return (
        services.ledger.report("T0TEST")["day"] == {}
        and store.db.execute("select count(*) from jobs").fetchone()[0] == 0
    )


def references_of_drafts(rig: Rig, anchor: dict[str, Any]) -> list[list[str]]:
    """For each draft of the grid behind ``anchor``: its parents (the reference images)."""
    store = rig.services.store
    grid_id = store.asset_for_message("slack", CHANNEL, anchor["ts"])
    return [[p["id"] for p in store.parents(d["id"])] for d in store.parents(grid_id)]


def the_ephemeral(rig: Rig) -> str:
    (ephemeral,) = rig.fake.ephemerals
    assert ephemeral["user"] == "UALICE" and ephemeral["channel"] == CHANNEL
    return str(ephemeral["text"])


# -- a mention with images -----------------------------------------------------------------


async def test_a_mention_with_two_images_drafts_with_them_as_references(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    logo = rig.fake.seed_file("logo.png", png((20, 40, 220)))
    await mention(rig, "draft a mug on a desk --n 2", [mug, logo], event_id="Ev0MUG")
    anchor = grid_anchor(rig)
    assert "a mug on a desk" in anchor["text"] and "takes 2 images" in anchor["text"]
    sent = uploads(rig.services)
    assert [u["prompt"] for u in sent] == ["mug.png", "logo.png"]
    assert {u["sent_by"] for u in sent} == {"slack:UALICE"}
    assert references_of_drafts(rig, anchor) == [[u["id"] for u in sent]] * 2
    # Read from url_private_download, with the bot token, after the event was acknowledged.
    assert sorted(d.method for d in rig.fake.downloads) == sorted(
        URL(f["url_private_download"]).path for f in (mug, logo)
    )
    assert {d.headers["Authorization"] for d in rig.fake.downloads} == {"Bearer xoxb-test-token"}
    assert rig.fake.ephemerals == []
    (row,) = rig.services.store.db.execute("select key, state from inbox").fetchall()
    assert row == ("slack:command:Ev0MUG", "done")


async def test_a_mention_over_socket_mode_with_file_stubs_asks_files_info(
    fake: FakeSlack, make_settings
) -> None:
    # Slack Connect channels send only {"id", "file_access": "check_file_info"}.
    settings = make_settings(
        slack_bot_token=fake.bot_token, slack_app_token=fake.app_token, slack_api_url=fake.api_url
    )
    services = wire(settings)
    surface = SlackSurface(services.surface_context())
    await surface.start()
    try:
        await fake.wait_socket_connected()
        mug = fake.seed_file("mug.png", png())
        event = fake.app_mention(
            text="<@UBOT> /draft a mug --n 1", files=[mug], check_file_info=True
        )
        assert event["files"][0]["file_access"] == "check_file_info"
        ack = await fake.socket_event(event, event_id="Ev0SOCKMUG")
        assert "payload" not in ack  # an event is acknowledged with its envelope id only
        await surface.idle()
        (info,) = await fake.wait_for("files.info")
        assert info.params["file"] == mug["id"] and info.http_verb == "GET"
        assert any("🖼️ Drafts for “a mug”" in m["text"] for m in fake.messages.values())
        (upload,) = uploads(services)
        assert upload["prompt"] == "mug.png"
    finally:
        await surface.stop()
        await services.aclose()


async def test_a_redelivered_mention_acts_once(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    event = rig.fake.app_mention(text="<@UBOT> draft a mug --n 1", files=[mug])
    await deliver(rig, event, event_id="Ev0TWICE")
    await deliver(rig, event, event_id="Ev0TWICE", retry_num=1)  # Slack retries
    await rig.fake.replay()  # and the same signed bytes once more
    await rig.surface.idle()
    assert len(rig.anchors("🖼️ Drafts for")) == 1
    assert len(rig.fake.downloads) == 1 and len(uploads(rig.services)) == 1
    assert rig.services.store.db.execute("select count(*) from jobs").fetchone()[0] == 1


async def test_a_named_reference_from_a_mention_shapes_two_drafts(rig: Rig) -> None:
    front = rig.fake.seed_file("front.png", png())
    side = rig.fake.seed_file("side.jpg", png((10, 120, 10)), mimetype="image/jpeg")
    await mention(rig, "ref add mug", [front, side])
    (saved,) = rig.anchors("📌 Reference mug saved by UALICE")
    assert "2 image(s)" in saved["text"]
    sent = [u["id"] for u in uploads(rig.services)]
    await rig.command("a mug on a beach --ref mug --n 1")
    await rig.command("a mug in the snow --ref mug --n 1")
    grids = rig.anchors("🖼️ Drafts for")
    assert len(grids) == 2
    for anchor in grids:
        assert references_of_drafts(rig, anchor) == [sent]
    assert len(rig.fake.downloads) == 2  # read once, when the reference was made


async def test_a_calendar_can_come_with_a_mention(rig: Rig) -> None:
    # Not only images: whatever a command takes may be attached to the mention.
    await rig.command(
        'schedule add morning daily 09:00 --tz Europe/Berlin --n 2 "a {weekday} coffee"',
        command="/tierbot",
    )
    csv = rig.fake.seed_file("november.csv", b"date,prompt\n2026-11-23,a latte on a desk\n")
    await mention(rig, "schedule calendar morning", [csv])
    assert len(rig.fake.downloads) == 1
    assert "📅 Calendar for morning: 1 day(s)" in the_ephemeral(rig)


async def test_files_on_a_command_that_takes_none_are_not_downloaded(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    await mention(rig, "budget", [mug])
    assert "takes no files" in the_ephemeral(rig)
    assert rig.fake.downloads == []  # the core refuses before looking at them
    await mention(rig, "drfat a mug", [mug])  # a typo: the parser's answer, no download
    assert rig.fake.downloads == [] and len(rig.fake.ephemerals) == 2


# -- hostile or broken files ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        # 40 MB on Slack, read up to the cap and one byte more: never buffered whole.
        (
            "huge.png",
            lambda: b"\x89PNG" + b"\0" * (2 * MAX_UPLOAD_BYTES),
            "is over 20 MB; images up to 20 MB",
        ),
        ("notes.png", lambda: b"date,prompt\n2026-11-23,a mug\n", "is not a readable image"),
        ("bomb.png", bomb, "over the limit of 40,000,000 pixels"),
        ("spin.gif", animated_gif, "is a GIF file; send a JPEG, PNG, WEBP image"),
    ],
    ids=["too-big", "not-an-image", "decompression-bomb", "animated-gif"],
)
async def test_a_bad_image_is_refused_privately_and_spends_nothing(
    rig: Rig, name: str, data: Any, message: str
) -> None:
    good = rig.fake.seed_file("good.png", png())
    bad = rig.fake.seed_file(name, data())
    await mention(rig, "draft a mug --n 2", [good, bad])
    text = the_ephemeral(rig)
    assert message in text and f"'{name}'" in text, text
    assert text.startswith("Not used:") and text.endswith("Nothing was spent.")
    assert nothing_spent(rig.services) and uploads(rig.services) == []
    assert rig.anchors("🖼️ Drafts for") == []


async def test_without_files_read_a_login_page_is_not_an_image(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    # Without a valid token Slack's file host answers its sign-in page with HTTP 200.
    mug = rig.fake.seed_file("mug.png", png())
    async with aiohttp.ClientSession() as session, session.get(mug["url_private"]) as page:
        assert page.status == 200 and page.content_type == "text/html"
    rig.fake.files_read_scope = False  # the app was installed before it asked for files:read
    with caplog.at_level(logging.WARNING, logger="adapters.slack"):
        await mention(rig, "draft a mug --n 1", [mug])
        assert "'mug.png' is not a readable image" in the_ephemeral(rig)
        await rig.command(f"a mug --n 1 --ref {mug['url_private']}")  # files.info: missing_scope
    assert "the Slack app needs the files:read scope" in rig.fake.ephemerals[-1]["text"]
    assert "files:read" in caplog.text and "xoxb-" not in caplog.text
    assert nothing_spent(rig.services)


async def test_a_download_that_fails_is_answered_privately_and_once(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    rig.fake.fail_next("download", "internal error", status=500)
    await mention(rig, "draft a mug --n 1", [mug])
    text = the_ephemeral(rig)
    assert "answered 500 for mug.png; send it again" in text and "xoxb" not in text
    assert nothing_spent(rig.services)
    assert await rig.services.bot.recover() == []  # answered: nothing left to re-run
    assert rig.anchors("🖼️ Drafts for") == [] and len(rig.fake.ephemerals) == 1


async def test_a_deleted_file_is_explained(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    rig.fake.delete_file(mug["id"])
    event = rig.fake.app_mention(text="<@UBOT> draft a mug", files=[mug], check_file_info=True)
    await deliver(rig, event)
    assert f"I can't find the file {mug['id']} on Slack" in the_ephemeral(rig)
    assert nothing_spent(rig.services) and rig.fake.downloads == []


# -- Slack file links in --ref ---------------------------------------------------------------


async def test_a_slack_file_link_as_ref_on_a_slash_command(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    logo = rig.fake.seed_file("logo.png", png((0, 0, 200)))
    # Slack's link markup, as typed or as Slack escapes it: the parser unwraps both.
    text = f"a mug --n 1 --ref <{mug['url_private']}|mug.png> --sref {logo['url_private']}"
    status, body = await rig.command(text)
    assert status == 200 and body["text"].startswith("⏳ On it")
    infos = [c.params["file"] for c in rig.fake.calls if c.method == "files.info"]
    assert sorted(infos) == sorted([mug["id"], logo["id"]])
    assert all("/download/" in d.method for d in rig.fake.downloads)  # url_private_download
    ((mug_id, logo_id),) = references_of_drafts(rig, grid_anchor(rig))
    assert [u["prompt"] for u in uploads(rig.services)] == ["mug.png", "logo.png"]
    assert [mug_id, logo_id] == [u["id"] for u in uploads(rig.services)]


async def test_a_workspace_permalink_is_read_through_files_info(rig: Rig) -> None:
    # "Copy link" gives https://<team>.slack.com/files/U…/F…/name: never fetched itself.
    mug = rig.fake.seed_file("mug.png", png())
    await rig.command(f"a mug --n 1 --ref https://acme.slack.com/files/UALICE/{mug['id']}/mug.png")
    ((ref,),) = references_of_drafts(rig, grid_anchor(rig))
    assert ref == uploads(rig.services)[0]["id"]
    assert [c.params["file"] for c in rig.fake.calls if c.method == "files.info"] == [mug["id"]]


async def test_a_link_in_a_mention_is_read_like_an_attached_image(rig: Rig) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    logo = rig.fake.seed_file("logo.png", png((0, 0, 200)))
    await mention(rig, f"draft a mug --n 1 --sref <{logo['url_private']}>", [mug])
    ((content, style),) = references_of_drafts(rig, grid_anchor(rig))
    assert [content, style] == [u["id"] for u in uploads(rig.services)]


async def test_a_link_to_a_file_this_channel_cannot_see_is_refused(rig: Rig) -> None:
    # Bob's file in a private channel the bot is in: Alice's link must not pull it here.
    rig.fake.members["G0SECRET"] = {"UBOT", "UBOB"}
    secret = rig.fake.seed_file("plan.png", png(), user="UBOB", channel="G0SECRET")
    await rig.command(f"a mug --n 1 --ref {secret['url_private']}")
    assert "shared only where this channel can't see it" in the_ephemeral(rig)
    assert rig.fake.downloads == [] and nothing_spent(rig.services)


async def test_a_link_on_the_file_host_without_a_file_id_is_not_read(rig: Rig) -> None:
    await rig.command(f"a mug --n 1 --ref {rig.fake.base_url}/files-pri/somewhere/mug.png")
    assert "is not a link to a Slack file" in the_ephemeral(rig)
    assert rig.fake.downloads == [] and nothing_spent(rig.services)


async def test_a_link_to_a_foreign_host_never_gets_the_token(rig: Rig, foreign: Foreign) -> None:
    link = f"{foreign.url}/files-pri/T0TEST-F0FAKE/mug.png"
    await rig.command(f"a mug --n 1 --ref {link}")
    assert "links are read only from Slack's own file host" in the_ephemeral(rig)
    await mention(rig, f"draft a mug --n 1 --ref <{link}>")
    assert "links are read only from Slack's own file host" in rig.fake.ephemerals[-1]["text"]
    assert foreign.requests == [] and rig.fake.downloads == []
    assert "files.info" not in rig.api() and nothing_spent(rig.services)


async def test_a_download_address_off_slacks_file_host_is_not_followed(
    rig: Rig, foreign: Foreign
) -> None:
    mug = rig.fake.seed_file("mug.png", png())
    # files.info (a proxy gone wrong) names another host as the download address ...
    file = {**mug, "url_private_download": f"{foreign.url}/mug.png"}
    rig.fake.answer_next("files.info", {"ok": True, "file": file})
    await rig.command(f"a mug --n 1 --ref {mug['url_private']}")
    assert "pointed me away from its file host for mug.png" in the_ephemeral(rig)
    # ... and the file host redirects there: neither is followed with the token.
    rig.fake.redirect_next_download(f"{foreign.url}/elsewhere.png")
    await mention(rig, "draft a mug --n 1", [mug])
    assert "pointed me away from its file host" in rig.fake.ephemerals[-1]["text"]
    assert foreign.requests == [] and nothing_spent(rig.services)


def test_which_links_are_read() -> None:
    files = SlackFiles(None, "xoxb-1", "http://127.0.0.1:9000/api/")  # type: ignore[arg-type]
    read = [
        "https://files.slack.com/files-pri/T0123-F0456/mug.png",
        "https://FILES.slack.com:443/files-pri/T0123-F0456/download/mug.png",
        "https://acme.slack.com/files/U0123/F0456/mug.png",
        "http://127.0.0.1:9000/files-pri/T0TEST-F0001/mug.png",
    ]
    refused = [
        "http://files.slack.com/files-pri/T0123-F0456/mug.png",  # not https
        "https://files.slack.com.evil.example/files-pri/T0123-F0456/mug.png",
        "https://files.slack.com@evil.example/files-pri/T0123-F0456/mug.png",
        "https://user:pw@files.slack.com/files-pri/T0123-F0456/mug.png",
        "https://acme.slack.com/archives/C0123/p1700000000",  # no file id
        "http://127.0.0.1:9001/files-pri/T0TEST-F0001/mug.png",  # another port
        "https://slack.com/files-pri/T0123-F0456/mug.png",
        "mug",
        "a1b2c3d4",
    ]
    assert [v for v in read if files.readable_link(v)] == read
    assert [v for v in refused if files.readable_link(v)] == []
    # Without SLACK_API_URL only Slack's own file host gets the token.
    assert not SlackFiles(None, "x", None).readable_link(read[3])  # type: ignore[arg-type]


async def test_the_fake_file_host_and_files_info_speak_slacks_wire_format(
    fake: FakeSlack,
) -> None:
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    mug = fake.seed_file("mug.png", png())
    info = await client.files_info(file=mug["id"])
    assert info["file"]["url_private_download"].endswith(f"{mug['id']}/download/mug.png")
    assert info["file"]["channels"] == [CHANNEL] and info["file"]["is_public"] is True
    assert info["comments"] == [] and info["response_metadata"] == {"next_cursor": ""}
    with pytest.raises(SlackApiError, match="file_not_found"):
        await client.files_info(file="F0NOPE")
    hidden = fake.seed_file("elsewhere.png", png(), channel="C0NOBOT")  # the bot is not there
    fake.members["C0NOBOT"] = {"UALICE"}
    with pytest.raises(SlackApiError, match="file_not_found"):
        await client.files_info(file=hidden["id"])
    fake.delete_file(mug["id"])
    with pytest.raises(SlackApiError, match="file_deleted"):
        await client.files_info(file=mug["id"])
    async with aiohttp.ClientSession() as session:
        headers = {"Authorization": f"Bearer {fake.bot_token}"}
        async with session.get(mug["url_private"], headers=headers) as deleted:
            assert deleted.status == 404
        logo = fake.seed_file("logo.png", png())
        async with session.get(logo["url_private_download"], headers=headers) as ok:
            assert ok.status == 200 and ok.content_type == "image/png"
            assert await ok.read() == fake.uploads[logo["id"]]
    assert [d.headers.get("Authorization") for d in fake.downloads] == [
        headers["Authorization"]
    ] * 2


# -- restarts --------------------------------------------------------------------------------


async def test_images_taken_before_a_restart_are_used_after_it(
    fake: FakeSlack, make_settings
) -> None:
    first = Rig(fake, make_settings, None)
    await first.start()
    stopped = asyncio.Event()

    async def stops_here(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        stopped.set()
        await asyncio.Event().wait()  # the process stops before any job is reserved
        yield

    first.services.pipeline.draft = stops_here  # type: ignore[method-assign]
    mug = fake.seed_file("mug.png", png())
    logo = fake.seed_file("logo.png", png((0, 0, 200)))
    event = fake.app_mention(text="<@UBOT> draft a mug on a desk --n 1", files=[mug, logo])
    await fake.send_event(first.events_url, event, event_id="Ev0RESTART")
    await asyncio.wait_for(stopped.wait(), 10)
    sent = [u["id"] for u in uploads(first.services)]
    await first.stop()
    assert len(sent) == 2 and not first.anchors("🖼️ Drafts for")

    second = Rig(fake, make_settings, None)
    await second.start()
    await fake.send_event(second.events_url, event, event_id="Ev0RESTART", retry_num=1)
    await second.services.bot.recover()
    await second.surface.idle()
    (anchor,) = second.anchors("🖼️ Drafts for “a mug on a desk”")
    assert references_of_drafts(second, anchor) == [sent]  # the stored uploads, by id
    assert len(fake.downloads) == 2  # nothing was downloaded again
    await second.stop()


async def test_a_restart_before_the_download_asks_for_the_images_again(
    fake: FakeSlack, make_settings
) -> None:
    first = Rig(fake, make_settings, None)
    await first.start()
    fake.hold_downloads = asyncio.Event()  # Slack's file host is slow today
    mug = fake.seed_file("mug.png", png())
    event = fake.app_mention(text="<@UBOT> draft a mug", files=[mug])
    status, _, elapsed = await fake.send_event(first.events_url, event)
    assert status == 200 and elapsed < 3  # acknowledged without waiting for the download
    await fake.wait_until(lambda: len(fake.downloads) == 1)
    await first.stop()  # acknowledged, written down by name, never downloaded
    fake.hold_downloads.set()

    second = Rig(fake, make_settings, None)
    await second.start()
    await second.services.bot.recover()
    (ephemeral,) = fake.ephemerals
    assert ephemeral["user"] == "UALICE"
    assert ephemeral["text"] == (
        "mug.png was lost when the bot restarted before reading it; send the command with "
        "the image again. Nothing was spent."
    )
    assert nothing_spent(second.services) and uploads(second.services) == []
    await second.stop()


# -- the rest of the vocabulary --------------------------------------------------------------


async def test_shuffle_on_a_final_makes_subtle_variations(rig: Rig) -> None:
    assert REACTION_NAMES["twisted_rightwards_arrows"] == "🔀"
    await rig.command("a kite --n 2")
    await rig.react(grid_anchor(rig)["ts"], "one")
    (final,) = rig.anchors("✨ Final")
    await rig.react(final["ts"], "twisted_rightwards_arrows")
    assert rig.anchors("🔀"), [m["text"] for m in rig.fake.messages.values()]
    assert not any("means nothing" in e["text"] for e in rig.fake.ephemerals)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<@UBOT> draft a mug --n 4", ("draft", "a mug --n 4")),
        ("<@UBOT> /draft a mug", ("draft", "a mug")),
        ("<@UBOT>   Draft\na mug", ("draft", "a mug")),
        ("<@UBOT> final 1a2b3c4d 2", ("tierbot", "final 1a2b3c4d 2")),
        ("<@UBOT|tierbot> tierbot ref add mug", ("tierbot", "ref add mug")),
        ("<@UBOT> /tierbot upload 1a2b3c4d", ("tierbot", "upload 1a2b3c4d")),
        ("hey <@UBOT> help", ("tierbot", "help")),
        ("draft a mug <@UBOT>", ("draft", "a mug")),
        ("<@UBOB> look <@UBOT> draft a &lt;mug&gt; &amp; a cup", ("draft", "a <mug> & a cup")),
        ("<@UBOT>", ("tierbot", "")),
    ],
)
def test_the_command_in_a_mention(text: str, expected: tuple[str, str]) -> None:
    assert mention_command(text, "UBOT") == expected


def test_the_manifest_asks_for_what_images_need() -> None:
    manifest = (ROOT / "slack" / "manifest.yml").read_text(encoding="utf-8")
    scopes = manifest.split("bot:", 1)[1].split("settings:", 1)[0]
    assert "- app_mentions:read" in scopes and "- files:read" in scopes
    events = manifest.split("bot_events:", 1)[1].split("interactivity:", 1)[0]
    assert "- app_mention" in events and "- reaction_added" in events
    draft_hint = manifest.split("command: /draft", 1)[1].split("command: /tierbot", 1)[0]
    assert "--ref" in draft_hint
