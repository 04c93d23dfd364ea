"""The fake Slack against the real slack_sdk and slack_bolt clients (spec sections 1 and 2).

Web API: a real ``AsyncWebClient(base_url=fake.api_url)``. Socket Mode: a real ``AsyncApp`` behind
``AsyncSocketModeHandler``. HTTP mode: the same app's ``web_app()`` on an aiohttp site.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.request.async_request import AsyncBoltRequest
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
from slack_sdk.web.async_client import AsyncWebClient

from tests.fakes.slack import FakeSlack

GENERAL = "C0GENERAL"


@pytest.fixture
async def fake() -> AsyncIterator[FakeSlack]:
    slack = FakeSlack()
    await slack.start()
    yield slack
    await slack.stop()


@pytest.fixture
def client(fake: FakeSlack) -> AsyncWebClient:
    return AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)


async def api_error(call: Any) -> SlackApiError:
    with pytest.raises(SlackApiError) as caught:
        await call
    return caught.value


# ---------------------------------------------------------------- Web API


async def test_post_update_ephemeral_and_their_encodings(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    posted = await client.chat_postMessage(channel=GENERAL, text="Drafting…")
    ts = posted["ts"]
    assert re.fullmatch(r"\d{10}\.\d{6}", ts)
    assert posted["channel"] == GENERAL and posted["message"]["text"] == "Drafting…"
    reply = await client.chat_postMessage(channel=GENERAL, text="in thread", thread_ts=ts)
    assert reply["ts"] > ts and fake.messages[(GENERAL, reply["ts"])]["thread_ts"] == ts

    updated = await client.chat_update(channel=GENERAL, ts=ts, text="Done")
    assert (updated["ts"], updated["text"]) == (ts, "Done")
    assert fake.messages[(GENERAL, ts)]["text"] == "Done"
    assert fake.messages[(GENERAL, ts)]["user"] == fake.bot_user_id

    eph = await client.chat_postEphemeral(channel=GENERAL, user="UBOB", text="only you")
    assert eph["message_ts"] and fake.ephemerals[0]["user"] == "UBOB"

    # chat.* carry a JSON body; the token is always a Bearer header (spec 1.3).
    for call in fake.calls:
        assert call.encoding == "json" and call.headers["Authorization"] == "Bearer xoxb-test-token"
    assert fake.methods() == [
        "chat.postMessage",
        "chat.postMessage",
        "chat.update",
        "chat.postEphemeral",
    ]


async def test_chat_errors(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.members["C0RANDOM"] = {"UALICE"}
    err = await api_error(client.chat_postMessage(channel="C0RANDOM", text="hi"))
    assert err.response["error"] == "not_in_channel" and err.response.status_code == 200
    err = await api_error(client.chat_postMessage(channel="C0NOPE", text="hi"))
    assert err.response["error"] == "channel_not_found"
    with pytest.warns(UserWarning, match="top-level `text` argument is missing"):
        err = await api_error(client.chat_postMessage(channel=GENERAL, text=""))
    assert err.response["error"] == "no_text"
    err = await api_error(client.chat_update(channel=GENERAL, ts="1700000000.000100", text="x"))
    assert err.response["error"] == "message_not_found"
    err = await api_error(client.chat_postEphemeral(channel=GENERAL, user="UEVE", text="x"))
    assert err.response["error"] == "user_not_in_channel"
    user_ts = fake.seed_message(GENERAL, "mine")
    err = await api_error(client.chat_update(channel=GENERAL, ts=user_ts, text="x"))
    assert err.response["error"] == "cant_update_message"
    bad = [{"type": "image", "slack_file": {"id": "F0NOTSHARED"}, "alt_text": "grid"}]
    err = await api_error(client.chat_postMessage(channel=GENERAL, text="x", blocks=bad))
    assert err.response["error"] == "invalid_blocks"
    err = await api_error(client.api_call("conversations.kick", json={"channel": GENERAL}))
    assert err.response["error"] == "unknown_method"


async def test_auth_errors(fake: FakeSlack) -> None:
    wrong = AsyncWebClient(token="xoxb-wrong", base_url=fake.api_url)
    err = await api_error(wrong.chat_postMessage(channel=GENERAL, text="hi"))
    assert err.response["error"] == "invalid_auth"
    anonymous = AsyncWebClient(base_url=fake.api_url)
    err = await api_error(anonymous.chat_postMessage(channel=GENERAL, text="hi"))
    assert err.response["error"] == "not_authed"
    bot = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    err = await api_error(bot.apps_connections_open(app_token=fake.bot_token))
    assert err.response["error"] == "not_allowed_token_type"
    opened = await bot.apps_connections_open(app_token=fake.app_token)
    assert opened["url"].startswith(fake.base_url.replace("http", "ws") + "/link/?ticket=")
    me = await bot.auth_test()
    assert (me["user_id"], me["bot_id"], me["team_id"]) == ("UBOT", "BBOT", "T0TEST")
    assert fake.messages == {}  # rejected calls are still logged
    assert fake.methods() == ["chat.postMessage", "chat.postMessage"]


async def test_reactions_add(fake: FakeSlack, client: AsyncWebClient) -> None:
    ts = (await client.chat_postMessage(channel=GENERAL, text="grid"))["ts"]
    for name in ("one", "two", "three", "four"):
        assert (await client.reactions_add(channel=GENERAL, timestamp=ts, name=name))["ok"]
    assert fake.messages[(GENERAL, ts)]["reactions"]["three"] == {"UBOT"}
    err = await api_error(client.reactions_add(channel=GENERAL, timestamp=ts, name="one"))
    assert err.response["error"] == "already_reacted"
    err = await api_error(client.reactions_add(channel=GENERAL, timestamp=ts, name=":one:"))
    assert err.response["error"] == "invalid_name"
    err = await api_error(client.reactions_add(channel=GENERAL, timestamp=ts, name="✅"))
    assert err.response["error"] == "invalid_name"
    missing = "1600000000.000001"
    err = await api_error(client.reactions_add(channel=GENERAL, timestamp=missing, name="x"))
    assert err.response["error"] == "message_not_found"
    # reactions.add: arguments in the query string of a POST, not a body (spec 1.3).
    call = (await fake.wait_for("reactions.add"))[0]
    assert (call.http_verb, call.encoding) == ("POST", "query")
    assert call.params == {"channel": GENERAL, "timestamp": ts, "name": "one"}


async def test_files_upload_v2_end_to_end(fake: FakeSlack, client: AsyncWebClient) -> None:
    anchor = (await client.chat_postMessage(channel=GENERAL, text="Your grid"))["ts"]
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    resp = await client.files_upload_v2(
        channel=GENERAL, thread_ts=anchor, file=png, filename="grid.png", title="Grid"
    )
    assert fake.methods() == [
        "chat.postMessage",
        "files.getUploadURLExternal",
        "files.completeUploadExternal",
    ]
    file_id = resp["file"]["id"]
    assert resp["files"][0]["title"] == "Grid" and resp["file"]["name"] == "grid.png"
    assert "ts" not in resp.data  # no message ts comes back (spec 1.3)
    assert fake.uploads[file_id] == png
    stored = fake.files[file_id]
    assert (stored["channel"], stored["thread_ts"], stored["length"]) == (GENERAL, anchor, len(png))
    get_url, complete = fake.calls[1], fake.calls[2]
    assert get_url.encoding == "query" and get_url.params["length"] == str(len(png))
    assert complete.params["channel_id"] == GENERAL and complete.params["thread_ts"] == anchor
    # once shared, the file may be referenced from an image block
    block = [{"type": "image", "slack_file": {"id": file_id}, "alt_text": "grid"}]
    assert (await client.chat_postMessage(channel=GENERAL, text="grid", blocks=block))["ok"]

    fake.max_file_bytes = 100
    err = await api_error(client.files_upload_v2(channel=GENERAL, file=png, filename="big.png"))
    assert err.response["error"] == "file_upload_size_restricted"
    err = await api_error(
        client.files_completeUploadExternal(files=[{"id": "F0MISSING", "title": "x"}])
    )
    assert err.response["error"] == "file_not_found"


async def test_upload_url_checks_length_and_can_fail(
    fake: FakeSlack, client: AsyncWebClient
) -> None:
    ticket = await client.files_getUploadURLExternal(filename="a.png", length=3)
    async with aiohttp.ClientSession() as http:
        async with http.post(ticket["upload_url"], data=b"four") as resp:
            assert resp.status == 400
        async with http.post(ticket["upload_url"], data=b"abc") as resp:
            assert (resp.status, await resp.text()) == (200, "OK - 3")
        form = aiohttp.FormData()  # curl -F filename=@a.png style, as the method page allows
        form.add_field("filename", b"xyz", filename="a.png")
        async with http.post(ticket["upload_url"], data=form) as resp:
            assert resp.status == 200 and fake.uploads[ticket["file_id"]] == b"xyz"
    fake.fail_next("upload", "internal error", status=500)
    with pytest.raises(SlackRequestError, match="status: 500"):
        await client.files_upload_v2(channel=GENERAL, content=b"abc", filename="b.png")


async def test_429_retried_only_with_the_rate_limit_handler(fake: FakeSlack) -> None:
    plain = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    ts = (await plain.chat_postMessage(channel=GENERAL, text="grid"))["ts"]
    fake.fail_next("reactions.add", "ratelimited", status=429, retry_after=1)
    err = await api_error(plain.reactions_add(channel=GENERAL, timestamp=ts, name="one"))
    assert err.response.status_code == 429 and err.response["error"] == "ratelimited"
    assert err.response.headers["Retry-After"] == "1"
    assert len(await fake.wait_for("reactions.add")) == 1

    retrying = AsyncWebClient(
        token=fake.bot_token,
        base_url=fake.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.fail_next("reactions.add", "ratelimited", status=429, retry_after=1)
    started = time.monotonic()
    assert (await retrying.reactions_add(channel=GENERAL, timestamp=ts, name="one"))["ok"]
    assert time.monotonic() - started >= 1.0  # Retry-After honoured
    assert len(await fake.wait_for("reactions.add")) == 3


async def test_usergroups_users_list(fake: FakeSlack, client: AsyncWebClient) -> None:
    fake.usergroups["S0APPROVERS"] = {"UBOB", "UALICE"}
    assert (await client.usergroups_users_list(usergroup="S0APPROVERS"))["users"] == [
        "UALICE",
        "UBOB",
    ]
    err = await api_error(client.usergroups_users_list(usergroup="S0NOPE"))
    assert err.response["error"] == "no_such_subteam"
    assert fake.calls[0].http_verb == "GET"


# ---------------------------------------------------------------- Bolt: Socket Mode and HTTP


def build_app(fake: FakeSlack, seen: list[tuple[str, Any]]) -> AsyncApp:
    web_client = AsyncWebClient(token=fake.bot_token, base_url=fake.api_url)
    app = AsyncApp(client=web_client, signing_secret=fake.signing_secret)

    @app.command("/draft")
    async def draft(ack: Any, command: dict[str, Any], respond: Any) -> None:
        await ack(response_type="ephemeral", text=f"Drafting: {command['text']}")
        seen.append(("command", command))
        await respond(text="draft ready")

    @app.event("reaction_added")
    async def reaction(event: dict[str, Any], request: AsyncBoltRequest) -> None:
        seen.append(("reaction", event))
        seen.append(("retry", request.headers.get("x-slack-retry-num")))

    @app.action("approve")
    async def approve(ack: Any, body: dict[str, Any]) -> None:
        await ack()
        seen.append(("action", body["actions"][0]["value"]))

    return app


async def test_socket_mode_with_real_bolt(fake: FakeSlack) -> None:
    seen: list[tuple[str, Any]] = []
    handler = AsyncSocketModeHandler(build_app(fake, seen), fake.app_token)
    await handler.connect_async()
    try:
        await fake.wait_socket_connected()
        ack = await fake.socket_command("/draft", "a cat")
        assert ack["payload"] == {"response_type": "ephemeral", "text": "Drafting: a cat"}
        await fake.wait_until(lambda: fake.response_url_posts != [])
        assert fake.response_url_posts[0]["text"] == "draft ready"
        assert seen[0][1]["user_id"] == "UALICE" and seen[0][1]["channel_id"] == GENERAL

        ts = fake.seed_message(GENERAL, "grid")
        event = fake.reaction_added(user="UALICE", reaction="three", channel=GENERAL, ts=ts)
        ack = await fake.socket_event(event, retry_attempt=1)
        assert "payload" not in ack  # events are acked empty, at once
        await fake.wait_until(lambda: any(kind == "reaction" for kind, _ in seen))
        assert ("retry", ["1"]) in seen
        own = fake.reaction_added(user="UBOT", reaction="one", channel=GENERAL, ts=ts)
        await fake.socket_event(own)  # acked, but Bolt drops the bot's own reaction
        assert sum(kind == "reaction" for kind, _ in seen) == 1

        click = fake.block_action(user="UBOB", action_id="approve", value="7", message_ts=ts)
        assert "payload" not in await fake.socket_interactive(click)
        await fake.wait_until(lambda: ("action", "7") in seen)

        await fake.socket_disconnect()
        await fake.wait_socket_connected()
        assert fake.socket_connections == 2
        assert [c.method for c in fake.calls].count("apps.connections.open") == 2
        ack = await fake.socket_command("/draft", "again")
        assert ack["payload"]["text"] == "Drafting: again"
    finally:
        await handler.close_async()


@pytest.fixture
async def http_app_url(fake: FakeSlack) -> AsyncIterator[tuple[str, list[tuple[str, Any]]]]:
    seen: list[tuple[str, Any]] = []
    runner = web.AppRunner(build_app(fake, seen).web_app(path="/slack/events"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/slack/events", seen
    await runner.cleanup()


async def test_http_mode_signed_requests(
    fake: FakeSlack, http_app_url: tuple[str, list[tuple[str, Any]]]
) -> None:
    url, seen = http_app_url
    status, body, seconds = await fake.send_command(url, "/draft", "a cat")
    assert (status, body) == (200, {"response_type": "ephemeral", "text": "Drafting: a cat"})
    assert seconds < 1.0
    await fake.wait_until(lambda: fake.response_url_posts != [])

    status, _, _ = await fake.send_command(url, "/draft", "x", secret="not-the-secret")
    assert status == 401
    status, _, _ = await fake.send_command(url, "/draft", "x", timestamp=int(time.time()) - 301)
    assert status == 401
    status, _, _ = await fake.send_command(url, "/draft", "x", timestamp=int(time.time()) - 200)
    assert status == 200

    event = fake.reaction_added(user="UCAROL", reaction="two", channel=GENERAL, ts="1.000000")
    status, _, _ = await fake.send_event(url, event, retry_num=2)
    assert status == 200
    await fake.wait_until(lambda: ("retry", ["2"]) in seen)

    payload = fake.block_action(user="UBOB", action_id="approve", value="9")
    status, _, _ = await fake.send_interactive(url, payload)
    assert status == 200
    await fake.wait_until(lambda: ("action", "9") in seen)
    assert fake.methods() == []  # only auth.test reached the Web API
