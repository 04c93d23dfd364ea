"""Images in, through the web channel over real HTTP: files sent with a command as
multipart/form-data (📎), checked and stored by the core as upload assets, used as
references, named, varied and brought back fixed by hand; refusals before anything is
spent; a restart between receiving a command and running it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from PIL import Image

from adapters import wire
from adapters.web import MAX_COMMAND_BODY
from bot.app import Services
from bot.core import Tierbot
from bot.pipeline import Pipeline
from bot.uploads import MAX_FILES, MAX_UPLOAD_BYTES, Uploads
from tests.images import animated, bomb, jpeg_with_location, png
from tests.test_web import Channel, _open, is_grid

File = tuple[str, bytes]


async def send(
    channel: Channel, name: str, text: str, files: list[File], event_id: str | None = None
) -> httpx.Response:
    """A command with files, as the page's 📎 sends it."""
    fields = {"name": name, "text": text}
    if event_id:
        fields["event_id"] = event_id
    parts = [("file", (filename, data, "application/octet-stream")) for filename, data in files]
    return await channel.client.post("/api/commands", data=fields, files=parts)


def bot_of(channel: Channel) -> Tierbot:
    return channel.surface.bot


def uploads(channel: Channel) -> list[dict[str, Any]]:
    store = bot_of(channel).store
    return list(store.db.query("select * from assets where kind = 'upload' order by rowid"))


def spent(channel: Channel) -> list[Any]:
    """What the ledger and the job table hold: nothing after a refusal."""
    db = bot_of(channel).store.db
    return [
        *db.execute("select * from ledger").fetchall(),
        *db.execute("select * from jobs").fetchall(),
        *db.execute("select * from requests").fetchall(),
    ]


def drafts_of(channel: Channel, grid: dict[str, Any]) -> list[dict[str, Any]]:
    return bot_of(channel).store.parents(grid["asset_id"])


def shaped_by(channel: Channel, asset_id: str) -> list[str]:
    """The upload assets among ``asset_id``'s parents."""
    parents = bot_of(channel).store.parents(asset_id)
    return [p["id"] for p in parents if p["kind"] == "upload"]


async def test_a_draft_with_two_images_uses_them_and_shows_where_they_came_from(
    channel: Channel,
) -> None:
    files = [("mug-front.png", png()), ("mug-side.jpg", jpeg_with_location())]
    response = await send(channel, "alice", "/draft a mug on a desk --n 2", files)
    assert response.status_code == 202
    grid = await channel.wait_for(is_grid)
    echo = (await channel.history())[0]
    assert echo["author"] == "alice" and echo["text"].startswith("/draft a mug on a desk")
    assert "📎 mug-front.png (" in echo["text"] and "mug-side.jpg (" in echo["text"]

    sent = uploads(channel)
    assert [u["prompt"] for u in sent] == ["mug-front.png", "mug-side.jpg"]
    assert {u["sent_by"] for u in sent} == {"web:alice"} and {u["cost"] for u in sent} == {0}
    ids = [u["id"] for u in sent]
    drafts = drafts_of(channel, grid)
    assert len(drafts) == 2
    for draft in drafts:  # the grid's parents' parents: the two images shaped every draft
        assert shaped_by(channel, draft["id"]) == ids
    # Stored without its location: the phone's EXIF is gone.
    photo = bot_of(channel).asset_path(bot_of(channel).asset(ids[1]))
    with Image.open(photo) as image:
        assert not image.getexif() and "exif" not in image.info
    # The inbox keeps the event by the images' asset ids, not their bytes.
    (event,) = [
        json.loads(row[0]) for row in bot_of(channel).store.db.execute("select event from inbox")
    ]
    assert [(f["name"], f["asset_id"]) for f in event["files"]] == [
        ("mug-front.png", ids[0]),
        ("mug-side.jpg", ids[1]),
    ]
    assert all("data" not in f for f in event["files"])

    # A draft's page names the images it was shaped by, and its lineage starts at the one
    # that heads it; an upload's page says who sent it (no model, seed or price).
    page = (await channel.client.get(f"/assets/{drafts[0]['id']}")).text
    assert "<h2>Shaped by</h2>" in page
    assert f"{ids[0]} 📎 sent by alice (web) · mug-front.png · 64×48" in page
    assert f"{ids[1]} 📎 sent by alice (web) · mug-side.jpg · 80×60" in page
    assert f"/files/{ids[1]}?w=128" in page and "None" not in page
    grid_page = (await channel.client.get(f"/assets/{grid['asset_id']}")).text
    assert "<h2>Shaped by</h2>" in grid_page and "mug-side.jpg" in grid_page
    upload_page = await channel.client.get(f"/assets/{ids[0]}")
    assert upload_page.status_code == 200
    text = upload_page.text
    assert f"<h1>📎 upload {ids[0]}</h1>" in text
    assert "<dt>sent by</dt><dd>alice (web)</dd>" in text
    assert "<dt>file</dt><dd>mug-front.png</dd>" in text
    for absent in ("None", "<dt>model</dt>", "<dt>seed</dt>", "<dt>cost</dt>", "<dt>QA</dt>"):
        assert absent not in text, absent
    for draft in drafts:  # what it shaped hangs under it
        assert f"/assets/{draft['id']}" in text
    thumb = await channel.client.get(f"/files/{ids[1]}", params={"w": 128})
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
    await channel.say("alice", f"/tierbot lineage {ids[0]}")
    lineage = await channel.wait_for(lambda m: m["private"] and "Lineage of" in m["text"])
    assert not lineage["error"]


async def test_a_named_reference_shapes_two_drafts(channel: Channel) -> None:
    response = await send(
        channel, "alice", "/tierbot ref add mug", [("a.png", png()), ("b.png", png((9, 9, 9)))]
    )
    assert response.status_code == 202
    saved = await channel.wait_for(lambda m: "Reference mug saved" in m["text"])
    ids = [u["id"] for u in uploads(channel)]
    assert [f["asset_id"] for f in saved["files"]] == ids  # its pictures are shown
    assert all(f["kind"] == "upload" for f in saved["files"])

    await channel.say("alice", "/draft a mug on a desk --ref mug --n 2")
    first = await channel.wait_for(is_grid)
    await channel.say("alice", "/draft a mug in the snow --ref mug --n 2")
    second = await channel.wait_for(lambda m: is_grid(m) and m["id"] != first["id"])
    for grid in (first, second):
        for draft in drafts_of(channel, grid):
            assert shaped_by(channel, draft["id"]) == ids
    assert [u["id"] for u in uploads(channel)] == ids  # stored once, used twice

    # The reference's page shows everything it shaped; one draft's page only its own line.
    reference = (await channel.client.get(f"/assets/{ids[0]}")).text
    mine = drafts_of(channel, first)[0]["id"]
    other = drafts_of(channel, second)[0]["id"]
    assert f"/assets/{mine}" in reference and f"/assets/{other}" in reference
    lineage = (await channel.client.get(f"/assets/{mine}")).text.split("<h2>Lineage</h2>")[1]
    assert f"/assets/{ids[0]}" in lineage and f"/assets/{other}" not in lineage

    await channel.say("alice", "/tierbot ref list")
    listed = await channel.wait_for(lambda m: m["private"] and "Named references" in m["text"])
    assert f"mug: 2 image(s), {ids[0]}, {ids[1]}" in listed["text"]
    assert spent(channel)  # the drafts were charged as any draft


async def test_small_images_may_come_in_the_json_body(channel: Channel) -> None:
    import base64

    body = {
        "name": "alice",
        "text": "/draft a red mug --n 1",
        "files": [{"name": "small.png", "data": base64.b64encode(png()).decode()}],
    }
    assert (await channel.client.post("/api/commands", json=body)).status_code == 202
    grid = await channel.wait_for(is_grid)
    (upload,) = uploads(channel)
    assert shaped_by(channel, drafts_of(channel, grid)[0]["id"]) == [upload["id"]]


async def test_vary_a_draft_and_the_variations_chip_on_a_final(channel: Channel) -> None:
    await channel.say("alice", "/draft a blue teapot --n 2")
    grid = await channel.wait_for(is_grid)
    draft = drafts_of(channel, grid)[1]
    await channel.say("alice", f"/tierbot vary {grid['asset_id']} 2")
    varied = await channel.wait_for(lambda m: is_grid(m) and "🔀 Subtle variations" in m["text"])
    assert varied["thread_root"] == grid["id"]
    for new in drafts_of(channel, varied):
        assert bot_of(channel).store.parents(new["id"])[0]["id"] == draft["id"]

    await channel.react("alice", grid["id"], "1️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    chip = next(c for c in final["chips"] if c["emoji"] == "🔀")
    assert chip["label"] == "make variations"
    assert (await channel.react("alice", final["id"], "🔀")).status_code == 202
    await channel.wait_for(lambda m: is_grid(m) and final["asset_id"] in m["text"])


async def test_a_version_fixed_by_hand_comes_back_and_goes_on(channel: Channel) -> None:
    await channel.say("alice", "/draft a lighthouse --n 2")
    grid = await channel.wait_for(is_grid)
    await channel.react("alice", grid["id"], "1️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))

    fixed = png((250, 250, 240), (128, 128))
    response = await send(
        channel, "alice", f"/tierbot upload {final['asset_id']}", [("fixed.png", fixed)]
    )
    assert response.status_code == 202
    version = await channel.wait_for(lambda m: m["text"].startswith("🖌️ Hand-fixed version"))
    assert version["thread_root"] == grid["id"] and version["files"]
    assert version["reactions"] == ["🎬", "⬆️", "✅", "🔀", "❌"]  # like a final, no re-render
    (upload,) = uploads(channel)
    asset = bot_of(channel).asset(version["asset_id"])
    assert asset["stage"] == "manual" and asset["sent_by"] == "web:alice"
    parents = [p["id"] for p in bot_of(channel).store.parents(version["asset_id"])]
    assert parents == [final["asset_id"], upload["id"]]

    page = await channel.client.get(f"/assets/{version['asset_id']}")
    assert page.status_code == 200
    text = page.text
    assert f"<h1>🖌️ manual {version['asset_id']}</h1>" in text
    assert "<dt>fixed by hand by</dt><dd>alice (web)</dd>" in text
    assert "<dd>not signed off yet</dd>" in text and "None" not in text
    assert f"{version['asset_id']} 🖌️ manual · fixed by hand by alice · 128×128" in text
    assert f"{upload['id']} 📎 sent by alice (web) · fixed.png" in text  # shaped by
    assert f"/assets/{final['asset_id']}" in text  # the lineage runs through the final
    upload_page = (await channel.client.get(f"/assets/{upload['id']}")).text
    assert "🖌️ manual · fixed by hand by alice" in upload_page

    await channel.react("alice", version["id"], "⬆️")  # it goes on like a final
    upscale = await channel.wait_for(lambda m: m["text"].startswith("⬆️ Upscale"))
    up = bot_of(channel).store.parents(upscale["asset_id"])
    assert up[0]["id"] == version["asset_id"]
    await channel.react("alice", version["id"], "✅")
    await channel.wait_for(lambda m: m["id"] == version["id"] and "Signed off" in m["text"])
    page = (await channel.client.get(f"/assets/{version['asset_id']}")).text
    assert "<dd>approved by alice</dd>" in page


@pytest.mark.parametrize(
    ("filename", "data", "said"),
    [
        (
            "notes.png",
            b"just some text, not a picture\n" * 10,
            "'notes.png' is not a readable image",
        ),
        ("bomb.png", bomb(), "'bomb.png' is 2,500,000,000 pixels"),
        ("spin.gif", animated("GIF"), "'spin.gif' is a GIF file"),
        ("spin.png", animated("PNG"), "'spin.png' is animated; send a still image"),
    ],
)
async def test_a_refused_image_is_answered_privately_and_spends_nothing(
    channel: Channel, filename: str, data: bytes, said: str
) -> None:
    response = await send(
        channel, "alice", "/draft a mug --n 2", [("ok.png", png()), (filename, data)]
    )
    assert response.status_code == 202
    refusal = await channel.wait_for(lambda m: m["private"] and m["author"] == "tierbot")
    assert said in refusal["text"] and "Nothing was spent" in refusal["text"]
    assert refusal["error"]
    assert not [m for m in await channel.history("bob") if m["private"]]  # alice's only
    await asyncio.sleep(0.2)
    assert spent(channel) == []  # no request, no job, nothing in the ledger
    assert uploads(channel) == []  # one refused image stores none of the batch
    assert not [m for m in await channel.history() if is_grid(m) or m["state"]]


async def test_too_big_or_too_many_files_are_refused_before_anything_is_received(
    channel: Channel,
) -> None:
    big = png() + b"\0" * (MAX_UPLOAD_BYTES + 1 - len(png()))
    response = await send(channel, "alice", "/draft a mug", [("ok.png", png()), ("huge.png", big)])
    assert response.status_code == 413
    assert response.json()["error"] == (
        "huge.png is 20.1 MB; files up to 20 MB are accepted. Nothing was done."
    )
    many = [(f"{i}.png", png()) for i in range(MAX_FILES + 1)]
    response = await send(channel, "alice", "/draft a mug", many)
    assert response.status_code == 413
    assert f"a command takes up to {MAX_FILES} files of 20 MB each" in response.json()["error"]
    # A body announced bigger than the command's limit is refused before it is read.
    port = int(channel.surface.url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /api/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: multipart/form-data; boundary=b\r\n"
        b"Content-Length: " + str(MAX_COMMAND_BODY + 1).encode() + b"\r\n\r\n"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 413")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[
            1
        ]
    )
    assert b"a command takes up to 9 files of 20 MB each" in await reader.readexactly(length)
    writer.close()
    db = bot_of(channel).store.db
    assert db.execute("select count(*) from inbox").fetchone()[0] == 0
    assert await channel.history() == [] and spent(channel) == [] and uploads(channel) == []


async def test_files_with_a_command_that_takes_none_are_refused(channel: Channel) -> None:
    await send(channel, "alice", "/tierbot budget", [("a.png", png())])
    refusal = await channel.wait_for(lambda m: m["private"] and m["author"] == "tierbot")
    assert "takes no files; nothing was done" in refusal["text"]
    assert uploads(channel) == []


@pytest.mark.parametrize(
    ("parts", "error"),
    [
        ({"name": "alice", "text": "/draft a mug", "colour": "red"}, "unexpected part 'colour'"),
        ({"text": "/draft a mug"}, "set your name first"),
        ({"name": "alice", "text": ""}, "type a command"),
        ({"name": "alice", "text": "/draft a mug", "event_id": "no spaces"}, "event_id must be"),
    ],
)
async def test_malformed_multipart_commands_get_a_reason(
    channel: Channel, parts: dict[str, str], error: str
) -> None:
    response = await channel.client.post(
        "/api/commands", data=parts, files=[("file", ("a.png", png(), "image/png"))]
    )
    assert response.status_code == 400 and error in response.json()["error"]
    assert uploads(channel) == []


async def test_bad_bytes_in_a_multipart_body_get_a_reason(channel: Channel) -> None:
    def body(*parts: bytes) -> bytes:
        return b"".join(b"--b\r\n" + p + b"\r\n" for p in parts) + b"--b--\r\n"

    name = b'Content-Disposition: form-data; name="name"\r\n\r\nalice'
    cases = [
        (body(name, b'Content-Disposition: form-data; name="text"\r\n\r\n/draft \xff'), "UTF-8"),
        (body(name, name), "name is given twice"),
        (b"no boundary here", "malformed"),
        (body(name.replace(b"\r\n\r\n", b"\r\nX: " + b"y" * 9000 + b"\r\n\r\n")), "malformed"),
    ]
    for content, error in cases:
        response = await channel.client.post(
            "/api/commands",
            content=content,
            headers={"Content-Type": "multipart/form-data; boundary=b"},
        )
        assert response.status_code == 400, content
        assert error in response.json()["error"], response.json()


async def test_the_same_command_sent_twice_is_run_once(channel: Channel) -> None:
    files = [("a.png", png())]
    first = await send(channel, "alice", "/draft a mug --n 1", files, event_id="evt-1")
    again = await send(channel, "alice", "/draft a mug --n 1", files, event_id="evt-1")
    assert first.status_code == again.status_code == 202 and again.json()["duplicate"]
    await channel.wait_for(is_grid)
    await asyncio.sleep(0.3)
    assert len([m for m in await channel.history() if is_grid(m)]) == 1
    assert len(uploads(channel)) == 1


async def test_the_page_checks_origin_and_token_before_reading_files(make_settings) -> None:
    services = wire(make_settings(web_token="s3cret-token"))
    async for channel in _open(services, host="127.0.0.1"):
        response = await send(channel, "alice", "/draft a mug", [("a.png", png())])
        assert response.status_code == 401
        channel.client.cookies.set("tierbot_token", "s3cret-token")
        response = await channel.client.post(
            "/api/commands",
            data={"name": "alice", "text": "/draft a mug"},
            files=[("file", ("a.png", png(), "image/png"))],
            headers={"Origin": "https://evil.example"},
        )
        assert response.status_code == 403
        assert services.store.db.execute("select count(*) from assets").fetchone()[0] == 0
    await services.aclose()


# -- a restart between receiving a command and running it --------------------------------


async def _stopped_with(
    make_settings, monkeypatch: pytest.MonkeyPatch, where: Any, name: str, files: list[File]
) -> list[str]:
    """Send a /draft with ``files`` and stop the bot while ``where.name`` runs (it never
    returns: the process dies there). Returns the inbox's stored form of the files."""
    reached = asyncio.Event()

    async def stuck(*args: Any, **kwargs: Any) -> Any:
        reached.set()
        await asyncio.Event().wait()

    async def stuck_gen(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        await stuck()
        yield  # pragma: no cover

    monkeypatch.setattr(where, name, stuck_gen if name == "draft" else stuck)
    services = wire(make_settings())
    async for channel in _open(services):
        response = await send(channel, "alice", "/draft a mug on a desk --n 2", files)
        assert response.status_code == 202
        await asyncio.wait_for(reached.wait(), 30)
    stored = json.loads(services.store.db.execute("select event from inbox").fetchone()[0])
    await services.aclose()  # the surface stopped first, the command unfinished
    monkeypatch.undo()
    return stored["files"]


async def _restarted(make_settings) -> AsyncIterator[tuple[Services, Channel]]:
    services = wire(make_settings())
    async for channel in _open(services):
        services.scheduler.deliverers["web"] = channel.surface.deliver  # as `tierbot run`
        await services.bot.recover()
        yield services, channel
    await services.aclose()


async def test_a_restart_after_the_images_were_stored_runs_the_command_with_them(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = [("front.png", png()), ("side.png", png((10, 200, 10)))]
    stored = await _stopped_with(make_settings, monkeypatch, Pipeline, "draft", files)
    assert [f["name"] for f in stored] == ["front.png", "side.png"]
    assert all(f["asset_id"] and "data" not in f for f in stored)  # by asset id, no bytes
    async for services, channel in _restarted(make_settings):
        grid = await channel.wait_for(is_grid)
        assert "a mug on a desk" in grid["text"]
        ids = [f["asset_id"] for f in stored]
        assert [u["id"] for u in uploads(channel)] == ids  # the same images, stored once
        for draft in drafts_of(channel, grid):
            assert shaped_by(channel, draft["id"]) == ids
        await services.bot.recover()
        await asyncio.sleep(0.2)
        assert len([m for m in await channel.history() if is_grid(m)]) == 1  # run once


async def test_a_restart_before_the_images_were_checked_runs_the_command_with_them(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inbox keeps a command's files as received (their bytes in the asset store, not in
    the row) until the images are checked and stored as uploads: a process that died in
    between loses nothing."""
    stored = await _stopped_with(
        make_settings, monkeypatch, Uploads, "take", [("front.png", png())]
    )
    (file,) = stored
    assert file["kept"] and file["asset_id"] is None and "data" not in file  # bytes kept aside
    async for _, channel in _restarted(make_settings):
        grid = await channel.wait_for(is_grid)
        (upload,) = uploads(channel)
        assert upload["prompt"] == "front.png" and upload["sent_by"] == "web:alice"
        for draft in drafts_of(channel, grid):
            assert shaped_by(channel, draft["id"]) == [upload["id"]]


async def test_images_lost_in_a_restart_are_asked_for_again(
    make_settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the kept bytes are gone too (a disk wiped between the two runs), the person is
    told privately to send the command again; nothing is spent."""
    stored = await _stopped_with(
        make_settings, monkeypatch, Uploads, "take", [("front.png", png())]
    )
    (make_settings().data_dir / "assets" / stored[0]["kept"]).unlink()
    async for _, channel in _restarted(make_settings):
        notice = await channel.wait_for(lambda m: m["private"] and m["author"] == "tierbot")
        assert "front.png was lost when the bot restarted" in notice["text"]
        assert "Nothing was spent" in notice["text"] and notice["error"]
        assert spent(channel) == [] and uploads(channel) == []
