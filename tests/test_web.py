"""The local web channel over real HTTP: every endpoint, bad input, the token, the stream."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters import wire
from adapters.web import WebSurface
from bot.commands import CommandError, parse
from bot.surfaces import SurfaceUnavailable
from storage import WebHistory
from tests.conftest import ScriptedProvider, registry_with


class Channel:
    def __init__(self, surface: WebSurface, client: httpx.AsyncClient) -> None:
        self.surface = surface
        self.client = client

    async def say(self, name: str, text: str) -> httpx.Response:
        return await self.client.post("/api/commands", json={"name": name, "text": text})

    async def react(self, name: str, message_id: int, emoji: str, event_id: str = "") -> Any:
        body = {"name": name, "message_id": message_id, "emoji": emoji}
        if event_id:
            body["event_id"] = event_id
        return await self.client.post("/api/reactions", json=body)

    async def history(self, name: str = "alice") -> list[dict[str, Any]]:
        response = await self.client.get("/api/messages", params={"name": name})
        assert response.status_code == 200
        return response.json()["messages"]

    async def wait_for(
        self, test: Callable[[dict[str, Any]], bool], name: str = "alice", timeout: float = 30.0
    ) -> dict[str, Any]:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for message in await self.history(name):
                if test(message):
                    return message
            await asyncio.sleep(0.05)
        raise AssertionError("no such message appeared")


async def _open(services, **kwargs) -> AsyncIterator[Channel]:
    surface = WebSurface(services.surface_context(), port=0, **kwargs)
    await surface.start()
    async with httpx.AsyncClient(base_url=surface.url, timeout=30) as client:
        yield Channel(surface, client)
    await surface.stop()


def error_of(command: str, text: str) -> str:
    with pytest.raises(CommandError) as caught:
        parse(command, text)
    return caught.value.message


def is_grid(message: dict[str, Any]) -> bool:
    return bool(message["reactions"]) and message["reactions"][0] == "1️⃣"


async def test_page_and_static_files(channel: Channel) -> None:
    page = await channel.client.get("/")
    assert page.status_code == 200 and 'id="command"' in page.text
    assert "/static/app.js" in page.text and "http" not in page.text.split("<body>")[1]
    assert 'data-max-files="9"' in page.text and "{{" not in page.text  # 📎 knows the limits
    script = await channel.client.get("/static/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert (await channel.client.get("/static/secrets.txt")).status_code == 404


async def test_draft_select_and_thread_with_status_lines(channel: Channel) -> None:
    response = await channel.say("alice", "/draft a lighthouse at dawn --n 4")
    assert response.status_code == 202
    grid = await channel.wait_for(is_grid)
    assert "local-draft" in grid["text"] and "4 credits" in grid["text"]  # model, reason, price
    assert grid["files"][0]["url"] == f"/files/{grid['asset_id']}"
    messages = await channel.history()
    assert messages[0]["author"] == "alice" and messages[0]["text"].startswith("/draft")
    status = next(m for m in messages if m["state"])
    assert status["state"] == "done" and status["started_at"] and status["finished_at"]

    image = await channel.client.get(grid["files"][0]["url"])
    assert image.headers["content-type"] == "image/jpeg" and image.content[:2] == b"\xff\xd8"
    thumb = await channel.client.get(grid["files"][0]["url"], params={"w": 256})
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"

    assert (await channel.react("alice", grid["id"], "2️⃣")).status_code == 202
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    assert final["thread_root"] == grid["id"]
    assert final["reactions"] == ["🎬", "⬆️", "✅", "🔀", "🔁", "❌"]
    assert "local-final" in final["text"] and "5 credits" in final["text"]


async def test_refusal_is_private_to_the_person(channel: Channel) -> None:
    await channel.say("alice", "/draft a red bicycle --n 2")
    grid = await channel.wait_for(is_grid)
    await channel.react("carol", grid["id"], "1️⃣")
    refusal = await channel.wait_for(lambda m: m["private"], name="carol")
    assert "Only approvers can spend credits here" in refusal["text"]
    assert not [m for m in await channel.history("alice") if m["private"]]
    assert not [m for m in await channel.history("") if m["private"]]


async def test_event_stream_delivers_new_messages_and_status_updates(channel: Channel) -> None:
    seen: list[tuple[str, dict[str, Any]]] = []

    async def listen() -> None:
        async with channel.client.stream("GET", "/api/events", params={"name": "alice"}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = ""
            async for line in r.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, json.loads(line[6:])))
                    if kind == "update" and seen[-1][1]["state"] == "done":
                        return

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.2)
    await channel.say("alice", "/draft a harbour at night --n 2")
    await asyncio.wait_for(task, 30)
    kinds = [k for k, _ in seen]
    assert kinds[0] == "message" and seen[0][1]["author"] == "alice"
    states = [m["state"] for k, m in seen if k == "update"]
    assert states[0] == "running" and states[-1] == "done"
    assert any(is_grid(m) for _, m in seen)


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/api/commands", {"text": "/draft a cat"}, 400, "set your name first"),
        ("/api/commands", {"name": "<script>", "text": "/draft a cat"}, 400, "set your name"),
        ("/api/commands", {"name": "alice", "text": "  "}, 400, "type a command"),
        ("/api/commands", {"name": "alice", "text": "x" * 4001}, 400, "at most 4000"),
        ("/api/commands", ["not", "an", "object"], 400, "must be a JSON object"),
        (
            "/api/commands",
            {"name": "alice", "text": "/tierbot schedule list", "attachment": "%%%"},
            400,
            "not valid base64",
        ),
        (
            "/api/commands",
            {"name": "alice", "text": "/tierbot schedule list", "attachment": 7},
            400,
            "in base64",
        ),
        (
            "/api/reactions",
            {"name": "alice", "message_id": 999, "emoji": "1️⃣"},
            400,
            "no such message",
        ),
        (
            "/api/reactions",
            {"name": "alice", "message_id": "1", "emoji": "1️⃣"},
            400,
            "no such message",
        ),
    ],
)
async def test_bad_requests_get_clear_errors(channel: Channel, path, body, status, error) -> None:
    response = await channel.client.post(path, json=body)
    assert response.status_code == status
    assert error in response.json()["error"]


async def test_not_json_and_too_large(channel: Channel) -> None:
    response = await channel.client.post(
        "/api/commands", content=b"name=alice", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 400 and "send JSON" in response.json()["error"]
    response = await channel.client.post(
        "/api/commands", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]
    big = json.dumps({"name": "alice", "text": "x", "attachment": "A" * 500_000})
    response = await channel.client.post(
        "/api/commands", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413 and "400 KiB" in response.json()["error"]
    assert "multipart/form-data" in response.json()["error"]  # where files go instead
    response = await channel.client.post(
        "/api/reactions", content=big, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 413  # the other endpoints keep the small limit
    assert "400 KiB" in response.json()["error"] and "multipart" not in response.json()["error"]


async def test_a_calendar_attached_with_the_paperclip_reaches_the_schedule(
    channel: Channel,
) -> None:
    await channel.say("alice", '/tierbot schedule add morning daily 09:00 "a {weekday} coffee"')
    await channel.wait_for(lambda m: "Schedule morning added" in m["text"])
    csv = b"date,prompt\n2026-11-23,a launch day teaser\n2026-11-24,a rainy window\n"
    response = await channel.client.post(
        "/api/commands",
        json={
            "name": "alice",
            "text": "/tierbot schedule calendar morning",
            "attachment": base64.b64encode(csv).decode(),
        },
    )
    assert response.status_code == 202
    reply = await channel.wait_for(lambda m: "Calendar for morning" in m["text"])
    assert "2 day(s) from 2026-11-23 to 2026-11-24" in reply["text"] and reply["private"]


async def test_bad_commands_are_answered_privately_in_the_channel(channel: Channel) -> None:
    await channel.say("alice", "hello bot")
    reply = await channel.wait_for(lambda m: m["private"])
    assert reply["text"] == error_of("", "hello bot")  # the parser's words
    assert reply["text"] == "Commands start with / — to draft this, type: /draft hello bot"
    assert reply["error"]
    await channel.say("alice", "/draft a cat --ar 16x9")
    reply = await channel.wait_for(lambda m: m["private"] and "--ar" in m["text"])
    assert "--ar must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 4:5, 21:9; got 16x9" in reply["text"]
    assert reply["error"]


async def test_asset_page_and_files_stay_inside_the_store(channel: Channel) -> None:
    await channel.say("alice", "/draft a fox --n 2 --seed 5")
    grid = await channel.wait_for(is_grid)
    await channel.react("alice", grid["id"], "1️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    page = await channel.client.get(f"/assets/{final['asset_id']}")
    assert page.status_code == 200
    draft = channel.surface.bot.store.parents(final["asset_id"])[0]
    for fact in (
        "a fox",
        "local-final",
        "seed",
        "5 credits",
        f"/files/{draft['id']}?w=128",
        "selected by alice",
        "not signed off yet",
    ):
        assert fact in page.text, fact
    # ✅ then ❌: one current state, on the final's message and its page; history kept.
    await channel.react("alice", final["id"], "✅")
    await channel.react("alice", final["id"], "❌")
    shown = await channel.wait_for(
        lambda m: m["id"] == final["id"] and m["text"].endswith("❌ Rejected by alice")
    )
    assert "Signed off" not in shown["text"]
    page = await channel.client.get(f"/assets/{final['asset_id']}")
    assert "<dd>rejected by alice</dd>" in page.text
    assert "approved by alice" in page.text  # in the history
    assert (await channel.client.get(f"/assets/{draft['id']}")).status_code == 200
    for bad in (
        "/assets/nope",
        "/assets/deadbeef",
        "/files/..%2F..%2Fetc%2Fpasswd",
        "/files/../../etc/passwd",
    ):
        assert (await channel.client.get(bad)).status_code == 404, bad
    response = await channel.client.get(f"/files/{final['asset_id']}", params={"w": 7})
    assert response.status_code == 400 and "w must be one of" in response.json()["error"]


async def test_cross_origin_and_foreign_host_are_refused(channel: Channel) -> None:
    response = await channel.client.post(
        "/api/commands",
        json={"name": "alice", "text": "/draft a cat"},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    response = await channel.client.get("/api/messages", headers={"Host": "evil.example"})
    assert response.status_code == 403


async def test_history_survives_a_restart(make_settings) -> None:
    services = wire(make_settings())
    async for channel in _open(services):
        await channel.say("alice", "/draft a kite --n 2")
        await channel.wait_for(is_grid)
        before = await channel.history()
    await services.aclose()
    again = wire(make_settings())
    async for channel in _open(again):
        assert await channel.history() == before
        grid = next(m for m in before if is_grid(m))
        await channel.react("alice", grid["id"], "1️⃣")  # reactions on old messages still work
        await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    await again.aclose()


async def test_token_is_required_off_loopback(make_settings) -> None:
    with pytest.raises(SurfaceUnavailable, match="TIERBOT_WEB_TOKEN is required"):
        WebSurface(wire(make_settings(http_host="0.0.0.0")).surface_context())
    services = wire(make_settings(web_token="s3cret-token"))
    async for channel in _open(services, host="127.0.0.1"):
        assert (await channel.client.get("/")).status_code == 200  # the page asks for it
        assert (await channel.client.get("/api/messages")).status_code == 401
        response = await channel.client.post(
            "/api/commands", json={"name": "a", "text": "/tierbot help"}
        )
        assert response.status_code == 401
        ok = await channel.client.get(
            "/api/messages", headers={"Authorization": "Bearer s3cret-token"}
        )
        assert ok.status_code == 200
        channel.client.cookies.set("tierbot_token", "s3cret-token")
        assert (await channel.client.get("/api/messages")).status_code == 200
        channel.client.cookies.set("tierbot_token", "wrong")
        assert (await channel.client.get("/api/messages")).status_code == 401
    await services.aclose()


async def test_failed_step_shows_failed_status_with_the_reason(
    make_settings, tmp_path: Path
) -> None:
    from bot.providers import PermanentError
    from tests.conftest import ScriptedProvider, registry_with

    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.local-final]\nprovider = "flaky"\n')
    settings = make_settings(catalog=catalog)
    flaky = ScriptedProvider("flaky", [PermanentError("400 reference too small")])
    services = wire(settings, providers=registry_with(settings, flaky=flaky))
    async for channel in _open(services):
        await channel.say("alice", "/draft a fox --n 2")
        grid = await channel.wait_for(is_grid)
        await channel.react("alice", grid["id"], "1️⃣")
        failed = await channel.wait_for(lambda m: m["state"] == "failed")
        assert "400 reference too small" in failed["detail"]
        assert "Nothing was charged" in failed["detail"]
        notice = await channel.wait_for(lambda m: m["error"] and not m["state"])
        assert notice["thread_root"] == grid["id"] and not notice["private"]
    await services.aclose()


async def test_a_restart_mid_job_marks_the_status_line_interrupted_then_posts_the_result(
    make_settings,
) -> None:
    stalled = ScriptedProvider("local")
    stalled.gate = asyncio.Event()  # never set: the bot stops while the model works
    settings = make_settings()
    services = wire(settings, providers=registry_with(settings, local=stalled))
    async for channel in _open(services):
        await channel.say("alice", "/draft a lighthouse at dawn --n 2")
        await stalled.entered.wait()
        status = await channel.wait_for(lambda m: m["state"] in ("queued", "running"))
    await services.aclose()  # the surface stopped first, with the job still running
    services = wire(make_settings())
    stopped = WebHistory(services.store).get(status["id"])
    assert stopped["state"] == "interrupted"
    assert "interrupted by a restart: the result follows" in stopped["detail"]
    async for channel in _open(services):
        services.scheduler.deliverers["web"] = channel.surface.deliver  # as `tierbot run`
        await services.bot.recover()
        grid = await channel.wait_for(lambda m: "↻ After a restart" in m["text"])
        assert grid["files"] and grid["thread_root"] is None
    await services.aclose()


async def test_status_lines_a_killed_process_left_running_are_closed_at_start(
    make_settings,
) -> None:
    services = wire(make_settings())
    row = WebHistory(services.store).add({"author": "tierbot", "text": "⏳", "state": "running"})
    async for channel in _open(services):
        (message,) = [m for m in await channel.history() if m["id"] == row]
        assert message["state"] == "interrupted" and message["finished_at"]
    await services.aclose()


async def test_text_without_a_slash_gets_a_hint_and_near_misses_a_guess(channel: Channel) -> None:
    await channel.say("alice", "a red fox in snow")
    reply = await channel.wait_for(lambda m: m["private"])
    assert reply["text"] == "Commands start with / — to draft this, type: /draft a red fox in snow"
    await channel.say("alice", "/imagine a red fox")
    reply = await channel.wait_for(lambda m: m["private"] and "/imagine" in m["text"])
    assert "did you mean /draft?" in reply["text"]
    await channel.say("alice", "/final g1 2")
    reply = await channel.wait_for(lambda m: m["private"] and "/final" in m["text"])
    assert "did you mean /tierbot final?" in reply["text"]
    await channel.say("alice", "/tierbot upscal a1")
    reply = await channel.wait_for(lambda m: m["private"] and "upscal" in m["text"])
    assert "did you mean 'upscale'?" in reply["text"]


@pytest.mark.parametrize(
    ("path", "body", "error"),
    [
        ("/api/commands", b'{"name": "alice", "text": "/draft \xff\xfe"}', "UTF-8"),
        ("/api/commands", b"[" * 100_000 + b"]" * 100_000, "nested"),
        (
            "/api/commands",
            b'{"name": "alice", "text": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "nested",
        ),
        ("/api/commands", rb'{"name": "alice", "text": "/draft a \\ud800 fox"}', None),
        ("/api/commands", rb'{"name": "alice", "text": "/draft a \ud800 fox"}', "surrogate"),
        (
            "/api/commands",
            rb'{"name": "alice", "text": "/draft a fox", "x": {"\udfff": 1}}',
            "surrogate",
        ),
        ("/api/reactions", rb'{"name": "alice", "message_id": 1, "emoji": "\ud83d"}', "surrogate"),
        (
            "/api/reactions",
            b'{"name": "alice", "message_id": 1000000000000000000000000000000, "emoji": "1"}',
            "message_id",
        ),
        (
            "/api/reactions",
            b'{"name": "alice", "message_id": 9223372036854775808, "emoji": "1"}',
            "message_id",
        ),
        ("/api/reactions", b'{"name": "alice", "message_id": true, "emoji": "1"}', "message_id"),
        ("/api/reactions", b'{"name": "alice", "message_id": 1.0, "emoji": "1"}', "message_id"),
        ("/api/reactions", b'{"name": "alice", "message_id": 0, "emoji": "1"}', "message_id"),
        ("/api/reactions", b'{"name": "alice", "message_id": -1, "emoji": "1"}', "message_id"),
        ("/api/reactions", b'{"name": "alice", "message_id": 1e400, "emoji": "1"}', "message_id"),
        ("/api/reactions", b'{"name": "alice", "message_id": NaN, "emoji": "1"}', "JSON"),
    ],
)
async def test_malformed_bodies_are_refused_with_a_reason(
    channel: Channel, path: str, body: bytes, error: str | None
) -> None:
    await channel.say("alice", "/tierbot help")  # message 1 exists: `true` must not reach it
    await channel.wait_for(lambda m: m["private"])
    response = await channel.client.post(
        path, content=body, headers={"Content-Type": "application/json"}
    )
    if error is None:  # an escaped backslash is text, not a surrogate
        assert response.status_code == 202
        return
    assert response.status_code == 400, response.text
    assert error in response.json()["error"]


async def test_every_response_forbids_framing_and_sniffing(channel: Channel) -> None:
    await channel.say("alice", "/draft a fox --n 2")
    grid = await channel.wait_for(is_grid)
    requests = [
        ("GET", "/", None),
        ("GET", "/static/app.js", None),
        ("GET", "/static/style.css", None),
        ("GET", "/static/favicon.svg", None),
        ("GET", "/favicon.ico", None),
        ("GET", "/api/messages", None),
        ("GET", f"/assets/{grid['asset_id']}", None),
        ("GET", f"/files/{grid['asset_id']}", None),
        ("GET", f"/files/{grid['asset_id']}?w=7", None),
        ("GET", "/assets/nope", None),
        ("GET", "/no/such/page", None),
        ("POST", "/api/commands", {"text": "/draft"}),
        ("POST", "/api/reactions", {"name": "alice", "message_id": True, "emoji": "1"}),
    ]
    for method, path, body in requests:
        response = await channel.client.request(method, path, json=body)
        headers = response.headers
        assert headers.get("X-Frame-Options") == "DENY", path
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert headers.get("Referrer-Policy") == "no-referrer", path
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
    async with channel.client.stream("GET", "/api/events") as stream:
        assert stream.headers["X-Frame-Options"] == "DENY"
        assert "frame-ancestors 'none'" in stream.headers["Content-Security-Policy"]


async def test_favicon_is_served_and_linked(channel: Channel) -> None:
    page = await channel.client.get("/")
    assert 'rel="icon"' in page.text and "/static/favicon.svg" in page.text
    icon = await channel.client.get("/static/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert icon.text.lstrip().startswith("<svg")
    assert (await channel.client.get("/favicon.ico")).status_code == 200


async def test_chips_name_their_action_and_finished_status_lines_lose_theirs(
    channel: Channel,
) -> None:
    await channel.say("alice", "/draft a fox --n 2")
    grid = await channel.wait_for(is_grid)
    assert grid["chips"] == [
        {"emoji": "1️⃣", "label": "take draft 1 to final"},
        {"emoji": "2️⃣", "label": "take draft 2 to final"},
        {"emoji": "🔁", "label": "reroll the grid"},
        {"emoji": "❌", "label": "discard the grid"},
    ]
    await channel.react("alice", grid["id"], "2️⃣")
    final = await channel.wait_for(lambda m: m["text"].startswith("✨ Final"))
    assert [c["label"] for c in final["chips"]] == [
        "make a video",
        "upscale",
        "sign off",
        "make variations",
        "re-render",
        "reject",
    ]
    statuses = [m for m in await channel.history() if m["state"]]
    assert len(statuses) == 2
    for status in statuses:  # ❌ cancels a running job; a finished one has nothing to cancel
        assert status["state"] == "done"
        assert status["reactions"] == [] and status["chips"] == []
    assert (await channel.react("alice", statuses[0]["id"], "❌")).status_code == 202


async def test_a_running_status_line_offers_cancel_until_it_ends(make_settings) -> None:
    stalled = ScriptedProvider("local")
    stalled.gate = asyncio.Event()  # never set: the job runs until it is cancelled
    settings = make_settings()
    services = wire(settings, providers=registry_with(settings, local=stalled))
    async for channel in _open(services):
        await channel.say("alice", "/draft a lighthouse --n 2")
        await stalled.entered.wait()
        status = await channel.wait_for(lambda m: m["state"] in ("queued", "running"))
        assert status["chips"] == [{"emoji": "❌", "label": "cancel"}]
        assert (await channel.react("alice", status["id"], "❌")).status_code == 202
        ended = {"id": status["id"], "state": "cancelled"}
        ended = await channel.wait_for(lambda m, ended=ended: m.items() >= ended.items())
        assert ended["reactions"] == [] and ended["chips"] == []
        assert "❌ cancels" in status["text"] and "❌ cancels" not in ended["text"]
    await services.aclose()


async def test_a_refusal_of_a_reaction_is_shown_in_that_message_thread(channel: Channel) -> None:
    await channel.say("alice", "/draft a red bicycle --n 2")
    grid = await channel.wait_for(is_grid)
    await channel.react("carol", grid["id"], "1️⃣")
    refusal = await channel.wait_for(lambda m: m["private"], name="carol")
    assert "Only approvers can spend credits here" in refusal["text"]
    assert refusal["thread_root"] == grid["id"]  # next to the chip carol clicked
