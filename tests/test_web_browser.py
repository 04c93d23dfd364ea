"""The web channel in a real headless Chromium (Debian's package), driven by Playwright.

Set WEB_SCREENSHOT=path to keep the screenshot of the channel after the flow (the README's
picture comes from here). Skipped only outside CI when Chromium is not installed; in CI
(CI=true) a missing browser fails the run, since `.ci/run` installs it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from adapters.web import WebSurface
from bot.app import build
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

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
    reason="Debian's chromium is not installed (apt-get install chromium)",
)


async def test_draft_escalate_video_and_refusal_in_a_browser(make_settings, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    screenshot = os.environ.get("WEB_SCREENSHOT")
    policy = write_policy(tmp_path, '[teams.local.channels.web]\napprovers = ["alice"]\n')
    services = build(make_settings(policy=policy))
    surface = WebSurface(services, port=0)
    await surface.start()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page(viewport={"width": 1200, "height": 1400})
            await page.goto(surface.url)
            await page.fill("#name", "alice")
            await page.press("#name", "Tab")
            await page.fill("#command", "/draft a lighthouse at dawn --n 4")
            await page.press("#command", "Enter")

            grid = page.locator(".msg", has=page.locator(".chip", has_text="2️⃣")).first
            await expect(grid.locator("img.media")).to_be_visible(timeout=30_000)
            await expect(grid.locator(":scope > .text")).to_contain_text("local-draft")
            await grid.locator(".chip", has_text="2️⃣").click()

            final = grid.locator(".thread .msg", has_text="✨ Final").first
            await expect(final.locator("img.media")).to_be_visible(timeout=30_000)
            await expect(final).to_contain_text("local-final")
            await final.locator(".chip", has_text="🎬").click()

            video = grid.locator(".thread video.media").first
            await expect(video).to_be_visible(timeout=60_000)
            await page.wait_for_function(
                "v => v.readyState >= 1 && v.duration > 3.5",
                arg=await video.element_handle(),
                timeout=30_000,
            )
            playable = await video.evaluate(
                "v => v.canPlayType('video/mp4; codecs=\"avc1.42E01E\"')"
            )
            assert playable in ("probably", "maybe")
            statuses = page.locator(".status.done")
            await expect(statuses).to_have_count(3, timeout=30_000)
            if screenshot:
                await page.screenshot(path=screenshot, full_page=True)

            await page.fill("#name", "carol")
            await page.press("#name", "Tab")
            grid = page.locator(".msg", has=page.locator(".chip", has_text="1️⃣")).first
            await grid.locator(".chip", has_text="1️⃣").click()
            refusal = page.locator(".msg.private", has_text="Only approvers can spend credits")
            await expect(refusal).to_be_visible(timeout=30_000)
            await expect(refusal).to_contain_text("only you can see this")
            await browser.close()
    finally:
        await surface.stop()
        await services.aclose()


async def test_a_calendar_is_attached_with_the_paperclip(make_settings, tmp_path: Path) -> None:
    from playwright.async_api import async_playwright, expect

    services = build(make_settings())
    surface = WebSurface(services, port=0)
    await surface.start()
    csv = tmp_path / "november.csv"
    csv.write_bytes("date,prompt\n2026-11-23,café launch teaser\n".encode())
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = await browser.new_page()
            await page.goto(surface.url)
            await page.fill("#name", "alice")
            await page.press("#name", "Tab")
            await page.fill("#command", '/tierbot schedule add morning daily 09:00 "a {weekday}"')
            await page.press("#command", "Enter")
            await expect(page.locator(".msg", has_text="Schedule morning added")).to_be_visible()

            await page.set_input_files("#attachment", str(csv))
            await expect(page.locator("#attached")).to_have_text("📎 november.csv ✕")
            await page.fill("#command", "/tierbot schedule calendar morning")
            await page.press("#command", "Enter")
            reply = page.locator(".msg.private", has_text="Calendar for morning")
            await expect(reply).to_contain_text("1 day(s) from 2026-11-23")
            await expect(page.locator("#attached")).to_be_hidden()  # sent once, then cleared
            await browser.close()
    finally:
        await surface.stop()
        await services.aclose()
