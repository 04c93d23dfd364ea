"""The canvas on an image's asset page, over real HTTP: the page of every image (a draft, a
final, an edit, a hand-fixed version) carries the canvas, its tools and the facts its script
needs (the asset id, the natural size, the edit command); videos, grids and the images people
sent carry none. What the script sends (``edit <id> <instruction> --mask`` with
``mask.png``) is the command the core takes. The painting itself is driven in Chromium
(tests/test_web_browser.py)."""

from __future__ import annotations

import io
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from adapters.web import SECURITY_HEADERS, WebSurface
from tests.images import png
from tests.test_web import Channel, is_grid
from tests.test_web_images import send

Element = tuple[str, dict[str, str]]


class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.found.append((tag, {k: v or "" for k, v in attrs}))


def elements(page: str) -> list[Element]:
    """Every element of ``page``, as (tag, attributes), in document order."""
    parser = _Elements()
    parser.feed(page)
    return parser.found


def by_id(page: str) -> dict[str, Element]:
    return {attrs["id"]: (tag, attrs) for tag, attrs in elements(page) if "id" in attrs}


def mask_png(size: tuple[int, int], box: tuple[int, int, int, int]) -> bytes:
    """A mask as the page builds it: white in ``box`` on black, at the image's size."""
    image = Image.new("RGB", size, "black")
    ImageDraw.Draw(image).rectangle(box, fill="white")
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


async def a_final(channel: Channel) -> tuple[dict[str, Any], dict[str, Any]]:
    """A grid of two drafts and the final of its first: their messages."""
    await channel.say("alice", "/draft a lighthouse at dawn --n 2")
    grid = await channel.wait_for(is_grid)
    await channel.react("alice", grid["id"], "1️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    return grid, final


async def page_of(channel: Channel, asset_id: str) -> str:
    response = await channel.client.get(f"/assets/{asset_id}")
    assert response.status_code == 200
    assert (
        response.headers["Content-Security-Policy"] == SECURITY_HEADERS["Content-Security-Policy"]
    )
    return response.text


def assert_canvas(page: str, asset: dict[str, Any]) -> None:
    """The canvas of ``asset``'s page: over the image, with its tools and its facts."""
    ids = by_id(page)
    _, box = ids["canvas"]
    assert box["data-asset"] == asset["id"]
    assert (box["data-width"], box["data-height"]) == (str(asset["width"]), str(asset["height"]))
    assert box["data-command"] == f"/tierbot edit {asset['id']}"
    assert ids["canvas-image"] == ("img", ids["canvas-image"][1])
    assert ids["canvas-image"][1]["src"] == f"/files/{asset['id']}"
    assert ids["paint"][0] == "canvas" and ids["paint"][1]["aria-label"]
    tools = [a["value"] for t, a in elements(page) if t == "input" and a.get("name") == "tool"]
    assert tools == ["brush", "eraser", "rect"]
    assert ids["brush-size"][1]["type"] == "range"
    assert ids["undo"][0] == "button" and "Ctrl+Z" in ids["undo"][1]["title"]
    assert ids["clear"][0] == "button"
    assert ids["region-edit"][0] == "form" and ids["instruction"][0] == "input"
    assert ids["canvas-name"][0] == "input" and ids["send-edit"][1]["type"] == "submit"
    assert ids["canvas-note"][1]["role"] == "status"
    # Its script comes from /static, after the canvas; nothing inline (the CSP forbids it).
    scripts = [a for t, a in elements(page) if t == "script"]
    assert scripts == [{"src": "/static/canvas.js"}]
    assert page.index("id='canvas'") < page.index("/static/canvas.js")
    assert not [a for _, a in elements(page) if "style" in a or any(k.startswith("on") for k in a)]
    assert "<style" not in page


def assert_no_canvas(page: str) -> None:
    assert "canvas" not in page and "<script" not in page


async def test_the_page_of_an_image_carries_the_canvas(channel: Channel) -> None:
    _, final = await a_final(channel)
    bot = channel.surface.bot
    final_asset = bot.asset(final["asset_id"])
    assert_canvas(await page_of(channel, final["asset_id"]), final_asset)
    draft = bot.store.parents(final["asset_id"])[0]
    assert_canvas(await page_of(channel, draft["id"]), draft)  # a draft is an image too

    fixed = png((250, 250, 240), (160, 120))
    await send(channel, "alice", f"/tierbot upload {final['asset_id']}", [("fixed.png", fixed)])
    version = await channel.wait_for(lambda m: m["text"].startswith("🖌️ Hand-fixed version"))
    page = await page_of(channel, version["asset_id"])
    assert_canvas(page, bot.asset(version["asset_id"]))
    assert by_id(page)["canvas"][1]["data-width"] == "160"  # its own natural size

    script = await channel.client.get("/static/canvas.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "--mask" in script.text and "mask.png" in script.text


async def test_videos_grids_and_images_people_sent_have_no_canvas(channel: Channel) -> None:
    reference = png((30, 120, 200), (96, 64))
    await send(channel, "alice", "/draft a mug on a desk --n 2", [("mug.png", reference)])
    grid = await channel.wait_for(is_grid)
    (upload,) = channel.surface.bot.store.db.query("select * from assets where kind = 'upload'")
    await channel.react("alice", grid["id"], "1️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    await channel.say("alice", f"/tierbot video {final['asset_id']} --seconds 1")
    video = await channel.wait_for(lambda m: m["text"].startswith("🎬 Video"), timeout=60)

    for asset_id in (grid["asset_id"], upload["id"], video["asset_id"]):
        page = await page_of(channel, asset_id)
        assert_no_canvas(page)
    assert "<video controls" in await page_of(channel, video["asset_id"])
    assert f'<a href="/files/{upload["id"]}"><img' in await page_of(channel, upload["id"])


async def test_what_the_canvas_sends_is_an_edit_the_core_takes(channel: Channel) -> None:
    """The page's command, as its script builds it: the edit lands in the source's thread,
    the mask in its lineage."""
    grid, final = await a_final(channel)
    asset = channel.surface.bot.asset(final["asset_id"])
    size = (asset["width"], asset["height"])
    mask = mask_png(size, (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    text = f"/tierbot edit {asset['id']} make the sky stormy --mask"
    response = await send(channel, "alice", text, [("mask.png", mask)])
    assert response.status_code == 202
    echo = next(m for m in await channel.history() if m["id"] == response.json()["message_id"])
    assert echo["text"].startswith(text) and "📎 mask.png" in echo["text"]
    edit = await channel.wait_for(lambda m: m["text"].startswith("✏️ Edit"))
    assert edit["thread_root"] == grid["id"] and edit["files"]
    mask_id = assert_mask_reached_the_core(channel, edit["asset_id"], mask)
    assert_canvas(
        await page_of(channel, edit["asset_id"]), channel.surface.bot.asset(edit["asset_id"])
    )
    assert_no_canvas(await page_of(channel, mask_id))  # a mask is no image to edit


def pixels(data: bytes | Path) -> bytes:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
        return image.convert("L").tobytes()


def assert_mask_reached_the_core(channel: Channel, edit_id: str, mask: bytes) -> str:
    """The edit's parents hold the mask sent, pixel for pixel, as a mask; returns its id."""
    bot = channel.surface.bot
    parents = bot.store.parents(edit_id)
    sent = [p for p in parents if p["kind"] != "image"]
    assert [p["kind"] for p in sent] == ["mask"], [(p["id"], p["kind"]) for p in parents]
    assert pixels(bot.asset_path(sent[0])) == pixels(mask)
    return sent[0]["id"]


def test_the_chips_a_region_edit_may_offer_say_what_they_do() -> None:
    row = {"reactions": ["🎨", "🪄", "✅"], "state": None}
    assert WebSurface._chips(row, "image") == [
        {"emoji": "🎨", "label": "match the source's colours"},
        {"emoji": "🪄", "label": "smooth the seam"},
        {"emoji": "✅", "label": "sign off"},
    ]
