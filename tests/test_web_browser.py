"""The web channel in a real headless Chromium (Debian's package), driven by Playwright.

Set WEB_SCREENSHOT=path to keep the screenshot of the channel after the flow (the README's
picture comes from here), and WEB_SCREENSHOT_PHONE=path for the page on a 390 px phone.
Skipped only outside CI when Chromium is not installed; in CI (CI=true) a missing browser
fails the run, since `.ci/run` installs it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import wire
from adapters.web import WebSurface
from bot.settings import Settings
from bot.uploads import MAX_UPLOAD_BYTES
from tests.conftest import write_policy

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: Runs in every page before its scripts: Content-Security-Policy violations are collected.
CSP_WATCH = """
window.__csp = [];
document.addEventListener("securitypolicyviolation",
  (e) => window.__csp.push(`${e.violatedDirective} ${e.blockedURI}`));
"""

#: Whether the whole element is inside the message list's visible area (not under the
#: header or the composer), or null if it is not shown at all.
IN_VIEW = """el => {
  const r = el.getBoundingClientRect();
  const v = document.getElementById("messages").getBoundingClientRect();
  if (!r.height) return null;
  return r.top >= v.top - 1 && r.bottom <= v.bottom + 1 && r.bottom <= window.innerHeight;
}"""

#: The element's image or video has its size (loaded).
MEDIA_READY = """el => {
  const m = el.querySelector(":scope > a > img.media, :scope > img.media, :scope > video.media");
  return !!m && (m.tagName === "IMG" ? m.complete && m.naturalWidth > 0 : m.readyState >= 1);
}"""

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


@asynccontextmanager
async def served_in_chromium(settings: Settings) -> AsyncIterator[tuple[WebSurface, Any]]:
    """The web channel on a free port, and headless Chromium to look at it."""
    from playwright.async_api import async_playwright

    services = wire(settings)
    surface = WebSurface(services.surface_context(), port=0)
    await surface.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                yield surface, browser
            finally:
                await browser.close()
    finally:
        await surface.stop()
        await services.aclose()


async def test_draft_escalate_video_and_refusal_in_a_browser(make_settings, tmp_path: Path) -> None:
    from playwright.async_api import expect

    screenshot = os.environ.get("WEB_SCREENSHOT")
    policy = write_policy(tmp_path, '[teams.local.channels.web]\napprovers = ["alice"]\n')
    async with served_in_chromium(make_settings(policy=policy)) as (surface, browser):
        page = await browser.new_page(viewport={"width": 1200, "height": 1400})
        await page.add_init_script(CSP_WATCH)
        failed: list[str] = []
        page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")
        await page.fill("#command", "/draft a lighthouse at dawn --n 4")
        await page.press("#command", "Enter")

        grid = page.locator(".msg", has=page.locator(".chip", has_text="2️⃣")).first
        await expect(grid.locator("img.media")).to_be_visible(timeout=30_000)
        await expect(grid.locator(":scope > .text")).to_contain_text("local-draft")
        two = grid.locator(".chip", has_text="2️⃣")
        await expect(two).to_have_attribute("aria-label", "take draft 2 to final")
        await expect(two).to_have_attribute("title", "2️⃣ take draft 2 to final")
        await two.click()

        final = grid.locator(".thread .msg", has_text="✨ Final").first
        await expect(final.locator("img.media")).to_be_visible(timeout=30_000)
        await expect(final).to_contain_text("local-final")
        labels = await final.locator(":scope > .chips .chip").evaluate_all(
            "chips => chips.map(c => [c.getAttribute('aria-label'), c.title])"
        )
        assert labels == [
            ["make a video", "🎬 make a video"],
            ["upscale", "⬆️ upscale"],
            ["sign off", "✅ sign off"],
            ["make variations", "🔀 make variations"],
            ["re-render", "🔁 re-render"],
            ["reject", "❌ reject"],
        ]
        await final.locator(".chip", has_text="🎬").click()

        video = grid.locator(".thread video.media").first
        await expect(video).to_be_visible(timeout=60_000)
        await page.wait_for_function(
            "v => v.readyState >= 1 && v.duration > 3.5",
            arg=await video.element_handle(),
            timeout=30_000,
        )
        playable = await video.evaluate("v => v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"')")
        assert playable in ("probably", "maybe")
        statuses = page.locator(".status.done")
        await expect(statuses).to_have_count(3, timeout=30_000)
        # A finished status line has nothing left to cancel: no ❌ chip.
        finished = page.locator(".msg", has=page.locator(":scope > .status.done"))
        await expect(finished.locator(":scope > .chips")).to_have_count(0)
        assert await page.evaluate("window.__csp") == []  # the page works under its CSP
        assert failed == []  # the favicon too
        icon = await page.evaluate(
            "fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)"
        )
        assert icon == 200
        if screenshot:  # the whole conversation: a window tall enough to show it all
            height = await page.evaluate(
                "document.body.offsetHeight - document.getElementById('messages').clientHeight"
                " + document.getElementById('messages').scrollHeight"
            )
            await page.set_viewport_size({"width": 1200, "height": min(height, 2400)})
            await page.wait_for_timeout(100)
            await page.screenshot(path=screenshot)
            await page.set_viewport_size({"width": 1200, "height": 1400})

        await page.fill("#name", "carol")
        await page.press("#name", "Tab")
        grid = page.locator(".msg", has=page.locator(".chip", has_text="1️⃣")).first
        await grid.locator(".chip", has_text="1️⃣").click()
        refusal = page.locator(".msg.private", has_text="Only approvers can spend credits")
        await expect(refusal).to_be_visible(timeout=30_000)
        await expect(refusal).to_contain_text("only you can see this")


async def test_a_calendar_is_attached_with_the_paperclip(make_settings, tmp_path: Path) -> None:
    from playwright.async_api import expect

    csv = tmp_path / "november.csv"
    csv.write_bytes("date,prompt\n2026-11-23,café launch teaser\n".encode())
    async with served_in_chromium(make_settings()) as (surface, browser):
        page = await browser.new_page()
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")
        await page.fill("#command", '/tierbot schedule add morning daily 09:00 "a {weekday}"')
        await page.press("#command", "Enter")
        await expect(page.locator(".msg", has_text="Schedule morning added")).to_be_visible()

        await page.set_input_files("#attachment", str(csv))
        chip = page.locator("#attached .chip")
        await expect(chip).to_have_attribute("aria-label", "remove november.csv (43 B)")
        await expect(chip).to_contain_text("📎 november.csv")
        await page.fill("#command", "/tierbot schedule calendar morning")
        await page.press("#command", "Enter")
        reply = page.locator(".msg.private", has_text="Calendar for morning")
        await expect(reply).to_contain_text("1 day(s) from 2026-11-23")
        await expect(page.locator("#attached")).to_be_hidden()  # sent once, then cleared


def _grids(page):
    """The draft grids shown, oldest first (the messages with a 1️⃣ chip)."""
    return page.locator("#messages > .msg", has=page.locator(".chip", has_text="1️⃣"))


async def _grid_of(page, prompt: str):
    """Type a /draft and wait for its grid to be shown with its picture loaded."""
    before = await _grids(page).count()
    await page.fill("#command", f"/draft {prompt} --n 4")
    await page.press("#command", "Enter")
    grid = _grids(page).nth(before)
    await grid.wait_for(timeout=30_000)
    handle = await grid.element_handle()
    await page.wait_for_function(MEDIA_READY, arg=handle, timeout=30_000)
    return grid, handle


async def test_a_result_is_shown_where_the_person_is_looking(make_settings) -> None:
    from playwright.async_api import expect

    async with served_in_chromium(make_settings()) as (surface, browser):
        page = await browser.new_page(viewport={"width": 1100, "height": 800})
        await page.add_init_script(CSP_WATCH)
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")

        handles = []
        for prompt in ("a lighthouse", "a red kite", "a harbour", "a fox in snow"):
            _, handle = await _grid_of(page, prompt)
            handles.append(handle)
            # A new grid is shown whole once its picture has loaded, not cut by the fold.
            await page.wait_for_function(IN_VIEW, arg=handle, timeout=5_000)
        first = handles[0]
        assert await first.evaluate(IN_VIEW) is False  # scrolled out of view by the others

        # Scroll up by hand to the first grid and take its draft 2 to the final tier.
        await page.mouse.move(500, 400)
        for _ in range(40):
            if await first.evaluate(IN_VIEW):
                break
            await page.mouse.wheel(0, -400)
            await page.wait_for_timeout(50)
        assert await first.evaluate(IN_VIEW)
        await _grids(page).first.locator(".chip", has_text="2️⃣").click()

        final = _grids(page).first.locator(".thread .msg", has_text="✨ Final")
        await final.wait_for(timeout=30_000)
        final_handle = await final.element_handle()
        await page.wait_for_function(MEDIA_READY, arg=final_handle, timeout=30_000)
        await page.wait_for_function(IN_VIEW, arg=final_handle, timeout=5_000)
        box = await final_handle.evaluate(
            "el => [el.getBoundingClientRect().top, el.getBoundingClientRect().bottom,"
            " window.innerHeight]"
        )
        assert box[0] >= 0 and box[1] <= box[2], box

        # A command typed at the bottom whose result threads under an old grid: the
        # result is brought into view there.
        await page.mouse.wheel(0, 100_000)
        await page.wait_for_timeout(200)
        asset = await final_handle.get_attribute("data-asset")
        await page.fill("#command", f"/tierbot upscale {asset}")
        await page.press("#command", "Enter")
        upscale = _grids(page).first.locator(
            ".thread .msg", has=page.locator(":scope > .text", has_text="⬆️ Upscale")
        )
        await upscale.wait_for(timeout=30_000)
        upscale_handle = await upscale.element_handle()
        await page.wait_for_function(MEDIA_READY, arg=upscale_handle, timeout=30_000)
        await page.wait_for_function(IN_VIEW, arg=upscale_handle, timeout=5_000)

        # Someone else's message out of view does not move the page: a button points at it.
        await page.mouse.move(500, 400)
        await page.mouse.wheel(0, -100_000)
        await page.wait_for_timeout(200)
        async with httpx.AsyncClient(base_url=surface.url) as client:
            await client.post("/api/commands", json={"name": "bob", "text": "/draft a moth"})
        moth = _grids(page).filter(has_text="a moth")
        await moth.wait_for(timeout=30_000)
        jump = page.locator("#jump")
        await expect(jump).to_have_text("new message ↓")
        top = await page.evaluate("document.getElementById('messages').scrollTop")
        assert top == 0
        await jump.click()
        await expect(jump).to_be_hidden()
        await page.wait_for_function(IN_VIEW, arg=await moth.element_handle(), timeout=5_000)
        assert await page.evaluate("window.__csp") == []


async def test_the_page_fits_a_phone(make_settings, tmp_path: Path) -> None:
    screenshot = os.environ.get("WEB_SCREENSHOT_PHONE") or str(tmp_path / "phone.png")
    async with served_in_chromium(make_settings()) as (surface, browser):
        page = await browser.new_page(viewport={"width": 390, "height": 844})
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")
        _, handle = await _grid_of(page, "a lighthouse at dawn")
        await page.wait_for_function(IN_VIEW, arg=handle, timeout=5_000)
        rows = await page.evaluate(
            """() => new Set([...document.querySelectorAll("header > *")]
                 .filter(e => e.getBoundingClientRect().height)
                 .map(e => Math.round(e.getBoundingClientRect().top / 8))).size"""
        )
        header = await page.evaluate("document.querySelector('header').offsetHeight")
        assert rows <= 2 and header <= 80, (rows, header)
        assert await page.evaluate("document.documentElement.scrollWidth") <= 390
        await page.screenshot(path=screenshot)


async def test_the_channel_cannot_be_framed(make_settings) -> None:
    """A page of another site that frames the channel (to clickjack its chips) gets nothing."""
    async with served_in_chromium(make_settings()) as (surface, browser):
        page = await browser.new_page()
        await page.set_content(f"<iframe src='{surface.url}/' width=600 height=400></iframe>")
        await page.wait_for_timeout(1000)
        (frame,) = page.main_frame.child_frames
        assert not frame.url.startswith(surface.url)  # Chromium shows its error page
        assert await frame.locator("#command").count() == 0


async def test_images_attached_with_the_paperclip_shape_the_drafts(
    make_settings, tmp_path: Path
) -> None:
    from PIL import Image
    from playwright.async_api import expect

    paths = []
    for name, colour in (("mug-front.png", (200, 60, 40)), ("mug-side.png", (40, 60, 200))):
        path = tmp_path / name
        Image.new("RGB", (96, 64), colour).save(path)
        paths.append(str(path))
    stray = tmp_path / "stray.png"
    Image.new("RGB", (8, 8)).save(stray)
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    async with served_in_chromium(make_settings()) as (surface, browser):
        page = await browser.new_page()
        await page.add_init_script(CSP_WATCH)
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")

        # Two pictures at once, a third picked after and removed with its ✕; one too big
        # for the bot is not even attached.
        await page.set_input_files("#attachment", paths)
        await page.set_input_files("#attachment", [str(stray), str(huge)])
        too_big = page.locator(".msg.private", has_text="huge.png is 20.1 MB")
        await expect(too_big).to_contain_text("files up to 20 MB are accepted")
        chips = page.locator("#attached .chip")
        await expect(chips).to_have_count(3)
        await page.locator("#attached .chip", has_text="stray.png").click()
        await expect(chips).to_have_count(2)
        await expect(chips.nth(0)).to_contain_text("📎 mug-front.png")
        label = await chips.nth(1).get_attribute("aria-label")
        assert label is not None and label.startswith("remove mug-side.png (")

        await page.fill("#command", "/draft a mug on a desk --n 2")
        await page.press("#command", "Enter")
        await expect(page.locator("#attached")).to_be_hidden()  # sent once, then cleared
        echo = page.locator("#messages > .msg", has_text="/draft a mug on a desk").first
        await expect(echo).to_contain_text("📎 mug-front.png")
        grid = page.locator("#messages > .msg", has=page.locator(".chip", has_text="1️⃣"))
        await expect(grid.locator("img.media")).to_be_visible(timeout=30_000)
        await page.wait_for_function(MEDIA_READY, arg=await grid.element_handle(), timeout=30_000)

        store = surface.bot.store
        sent = [a for a in store.db.query("select * from assets where kind = 'upload'")]
        assert [a["prompt"] for a in sent] == ["mug-front.png", "mug-side.png"]
        grid_id = await grid.get_attribute("data-asset")
        for draft in store.parents(grid_id):
            assert [p["id"] for p in store.parents(draft["id"])] == [a["id"] for a in sent]
        assert await page.evaluate("window.__csp") == []


#: The alpha of the canvas's pixel at (x, y), in fractions of its size (0 where unpainted).
PAINTED_AT = """([x, y]) => {
  const c = document.getElementById("paint");
  return c.getContext("2d").getImageData(Math.floor(x * c.width), Math.floor(y * c.height), 1, 1)
    .data[3];
}"""


async def test_a_region_painted_on_the_canvas_is_edited(make_settings, tmp_path: Path) -> None:
    """A final's page: paint a box with the mouse, say what to change, send; the edit lands
    in the channel's thread and the core got the mask, at the image's size, white in the box."""
    from PIL import Image
    from playwright.async_api import expect

    policy = write_policy(tmp_path, '[teams.local.channels.web]\napprovers = ["alice"]\n')
    async with served_in_chromium(make_settings(policy=policy)) as (surface, browser):
        page = await browser.new_page(viewport={"width": 900, "height": 1000})
        await page.add_init_script(CSP_WATCH)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")
        grid, _ = await _grid_of(page, "a lighthouse at dawn")
        await grid.locator(".chip", has_text="1️⃣").click()
        final = grid.locator(".thread .msg", has_text="✨ Final").first
        await expect(final.locator("img.media")).to_be_visible(timeout=30_000)
        final_id = await final.get_attribute("data-asset")
        await final.locator("a:has(img.media)").click()  # the picture opens its page

        await page.wait_for_url(f"**/assets/{final_id}")
        paint = page.locator("#paint")
        await page.wait_for_function(
            "() => document.getElementById('paint').width > 0", timeout=10_000
        )
        await expect(page.locator("#canvas-name")).to_have_value("alice")  # the channel's name
        send = page.locator("#send-edit")
        note = page.locator("#canvas-note")
        await page.fill("#instruction", "make the sky stormy")
        await send.click()  # nothing painted yet: refused on the page
        await expect(note).to_have_text(
            "paint the area to change first: brush or box over the image"
        )

        await paint.scroll_into_view_if_needed()
        box = await paint.bounding_box()
        assert box is not None
        x, y, w, h = box["x"], box["y"], box["width"], box["height"]
        # A brush stroke, taken back with Ctrl+Z.
        await page.mouse.move(x + w * 0.1, y + h * 0.85)
        await page.mouse.down()
        await page.mouse.move(x + w * 0.2, y + h * 0.9, steps=4)
        await page.mouse.up()
        assert await page.evaluate(PAINTED_AT, [0.15, 0.875]) > 0
        await page.keyboard.press("Control+z")
        assert await page.evaluate(PAINTED_AT, [0.15, 0.875]) == 0
        await expect(page.locator("#undo")).to_be_disabled()
        # A box, dragged from 25 %, 20 % to 75 %, 60 % of the image.
        await page.check("input[name=tool][value=rect]")
        assert await paint.bounding_box() == box  # the page did not move
        await page.mouse.move(x + w * 0.25, y + h * 0.2)
        await page.mouse.down()
        await page.mouse.move(x + w * 0.75, y + h * 0.6, steps=6)
        await page.mouse.up()
        assert await page.evaluate(PAINTED_AT, [0.5, 0.4]) > 0
        assert await page.evaluate(PAINTED_AT, [0.1, 0.1]) == 0
        await page.fill("#instruction", "")
        await send.click()  # painted, but no instruction: refused on the page
        await expect(note).to_have_text("say what to change in the painted area")
        await expect(page.locator("#instruction")).to_be_focused()
        await page.fill("#instruction", "make the sky stormy")
        await send.click()

        # Sent: the channel opens and shows the edit in the final's thread.
        await page.wait_for_url(f"{surface.url}/")
        edit = page.locator(".thread .msg", has=page.locator(":scope > .text", has_text="✏️ Edit"))
        await expect(edit.locator("img.media")).to_be_visible(timeout=30_000)
        assert (await edit.locator(":scope > .text").inner_text()).startswith("✏️ Edit")
        handle = await edit.element_handle()
        await page.wait_for_function(MEDIA_READY, arg=handle, timeout=30_000)
        await page.wait_for_function(IN_VIEW, arg=handle, timeout=5_000)  # brought to you
        root = await edit.evaluate("el => el.closest('#messages > .msg').dataset.asset")
        assert root == await _grids(page).first.get_attribute("data-asset")
        echo = page.locator("#messages > .msg", has_text=f"/tierbot edit {final_id}")
        await expect(echo).to_contain_text("make the sky stormy --mask")
        await expect(echo).to_contain_text("📎 mask.png")
        assert await page.evaluate("window.__csp") == []

        edit_id = await edit.get_attribute("data-asset")

        # Back on the image's page, the painting and the words are there to send again.
        await page.go_back()
        await page.wait_for_url(f"**/assets/{final_id}")
        await expect(page.locator("#instruction")).to_have_value("make the sky stormy")
        await expect(page.locator("#send-edit")).to_be_enabled()
        await page.wait_for_function(PAINTED_AT, arg=[0.5, 0.4], timeout=5_000)
        assert await page.evaluate(PAINTED_AT, [0.1, 0.1]) == 0
        assert await page.evaluate("window.__csp") == []
        assert errors == []

        # The core got the mask: the image's natural size, white in the box, black outside.
        store = surface.bot.store
        parents = store.parents(edit_id)
        assert [p["kind"] for p in parents] == ["image", "mask"]
        assert parents[0]["id"] == final_id
        source = surface.bot.asset(final_id)
        with Image.open(surface.bot.asset_path(parents[1])) as mask:
            assert mask.size == (source["width"], source["height"])
            grey = mask.convert("L")
            inside = [(0.5, 0.4), (0.3, 0.25), (0.7, 0.55)]
            outside = [(0.1, 0.1), (0.9, 0.5), (0.5, 0.7), (0.15, 0.875)]  # the last undone
            for points, value in ((inside, 255), (outside, 0)):
                for fx, fy in points:
                    pixel = grey.getpixel((int(fx * mask.width), int(fy * mask.height)))
                    assert pixel == value, (fx, fy, pixel)

        # On a phone a finger paints (pointer events) and does not scroll the page.
        phone = await browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True)
        touch = await phone.new_page()
        await touch.goto(f"{surface.url}/assets/{final_id}")
        await touch.wait_for_function("() => document.getElementById('paint').width > 0")
        box = await touch.locator("#paint").bounding_box()
        assert box is not None
        cdp = await phone.new_cdp_session(touch)
        path = [(0.2 + 0.1 * i, 0.5) for i in range(7)]
        for i, (fx, fy) in enumerate(path):
            kind = "touchStart" if i == 0 else "touchMove"
            point = {"x": box["x"] + fx * box["width"], "y": box["y"] + fy * box["height"]}
            await cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": [point]})
        await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})
        assert await touch.evaluate("window.scrollY") == 0
        for fx in (0.2, 0.5, 0.8):
            assert await touch.evaluate(PAINTED_AT, [fx, 0.5]) > 0
        assert await touch.evaluate(PAINTED_AT, [0.5, 0.2]) == 0
        await expect(touch.locator("#undo")).to_be_enabled()
        await phone.close()


async def test_a_sequence_plays_on_its_page(make_settings, tmp_path: Path) -> None:
    """A storyboard shot as a sequence: the stitch and its shots play in the channel; its
    page plays the stitch to its full length and lists the shots as stitched, each playable
    and linked to its own page. WEB_SCREENSHOT_SEQUENCE=path keeps a picture of the page."""
    from playwright.async_api import expect

    policy = write_policy(tmp_path, '[teams.local.channels.web]\napprovers = ["alice"]\n')
    async with served_in_chromium(make_settings(policy=policy)) as (surface, browser):
        page = await browser.new_page(viewport={"width": 1100, "height": 1200})
        await page.add_init_script(CSP_WATCH)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        failed: list[str] = []
        page.on(
            "response",
            lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None,
        )
        await page.goto(surface.url)
        await page.fill("#name", "alice")
        await page.press("#name", "Tab")
        await page.fill(
            "#command", "/tierbot storyboard a fox wakes | it sees snow | it leaps --seed 3"
        )
        await page.press("#command", "Enter")
        storyboard = _grids(page).first
        await expect(storyboard.locator("img.media")).to_be_visible(timeout=30_000)
        grid_id = await storyboard.get_attribute("data-asset")
        await page.fill("#command", f"/tierbot shots {grid_id} --seconds 2")
        await page.press("#command", "Enter")

        # In the channel: the stitch plays inline, its three shots follow, numbered.
        message = storyboard.locator(".thread .msg", has_text="🎞️ Sequence")
        stitch = message.locator(":scope > video.media")
        await expect(stitch).to_be_visible(timeout=90_000)
        shots = message.locator(".shots figure")
        await expect(shots).to_have_count(3)
        await expect(shots.locator("figcaption")).to_have_text(
            [re.compile(rf"^shot {k} · [0-9a-f]{{8}}$") for k in (1, 2, 3)]
        )
        await page.wait_for_function(MEDIA_READY, arg=await message.element_handle())
        stitch_id = await message.get_attribute("data-asset")
        assert stitch_id
        length = surface.bot.asset(stitch_id)["duration_s"]
        await message.locator(":scope > a", has_text=f"asset {stitch_id}").click()

        # Its page: the stitch plays, to its full length; the shots as stitched, each playable.
        await page.wait_for_url(f"**/assets/{stitch_id}")
        video = page.locator(".media video")
        handle = await video.element_handle()
        await page.wait_for_function(
            "v => v.readyState >= 1 && v.duration > 0", arg=handle, timeout=30_000
        )
        assert abs(await video.evaluate("v => v.duration") - length) < 0.1
        await video.evaluate("v => { v.muted = true; return v.play(); }")
        await page.wait_for_function(
            "v => v.readyState >= 2 && v.currentTime > 0", arg=handle, timeout=30_000
        )
        parents = [p["id"] for p in surface.bot.store.parents(stitch_id)]
        listed = page.locator("#sequence .shot")
        assert await listed.evaluate_all("l => l.map(s => s.dataset.asset)") == parents
        await expect(listed.locator(".number")).to_have_text(["shot 1", "shot 2", "shot 3"])
        await expect(listed.locator(".beat")).to_have_text(
            ["a fox wakes", "it sees snow", "it leaps"]
        )
        for k in range(3):
            small = listed.nth(k).locator("video")
            await page.wait_for_function(
                "v => v.readyState >= 1 && Math.abs(v.duration - 2) < 0.2",
                arg=await small.element_handle(),
                timeout=30_000,
            )
        order = page.locator("#sequence code.command", has_text="/tierbot order")
        assert await order.evaluate("c => getComputedStyle(c).userSelect") == "all"
        if os.environ.get("WEB_SCREENSHOT_SEQUENCE"):
            await page.screenshot(path=os.environ["WEB_SCREENSHOT_SEQUENCE"], full_page=True)
        # A shot's page leads back to the sequence.
        await listed.nth(1).locator(f"a[href='/assets/{parents[1]}']").click()
        await page.wait_for_url(f"**/assets/{parents[1]}")
        await page.locator("#part-of a").first.click()
        await page.wait_for_url(f"**/assets/{stitch_id}")
        assert await page.evaluate("window.__csp") == []
        assert errors == [] and failed == []
