"""The fake Discord against the real discord.py 2.7 client (spec sections 3 and 4).

A small ``discord.Client`` + ``app_commands.CommandTree`` bot runs the flow the adapter will:
``/draft`` defers, posts a grid with a followup, adds four keycap reactions; a user's vote
(``on_raw_reaction_add``) starts a thread on the grid message and posts the final image in it.
Redirection is the two module attributes of spec 4.2, restored after each test.
"""

from __future__ import annotations

import asyncio
import io
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import discord
import discord.gateway
import discord.http
import pytest
from discord import app_commands

from tests.fakes.discord_api import ADD_REACTIONS, CREATE_PUBLIC_THREADS, FakeDiscord, Req

KEYCAPS = [f"{n}\N{COMBINING ENCLOSING KEYCAP}" for n in "1234"]
REACTIONS_ROUTE = "PUT /channels/{channel}/messages/{message}/reactions/{emoji}/@me"


def png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\xff\x80\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PNG = png(2, 2)


class DraftBot(discord.Client):
    """What the adapter does, in miniature; every handler error is kept in ``errors``."""

    def __init__(self, guild_id: int) -> None:
        super().__init__(
            intents=discord.Intents(guilds=True, guild_reactions=True), guild_ready_timeout=0.05
        )
        self.tree = app_commands.CommandTree(self)
        self.guild_ref = discord.Object(guild_id)
        self.grid_bytes = PNG
        self.grids: dict[int, discord.WebhookMessage] = {}
        self.own_reactions: list[discord.RawReactionActionEvent] = []
        self.votes: list[discord.RawReactionActionEvent] = []
        self.finals: list[discord.Message] = []
        self.errors: list[BaseException] = []
        self.filesize_limits: list[int] = []
        self.callback_responses: list[discord.InteractionCallbackResponse[Any]] = []
        self.looked: list[tuple[Any, ...]] = []  # what /look read of its attachments
        self._register()

    def _register(self) -> None:
        tree, guild = self.tree, self.guild_ref

        @tree.command(name="draft", description="Draft a grid of four images", guild=guild)
        @app_commands.describe(prompt="What to draw")
        async def draft(interaction: discord.Interaction, prompt: str) -> None:
            self.filesize_limits.append(interaction.filesize_limit)
            response = await interaction.response.defer(thinking=True)
            assert response is not None
            self.callback_responses.append(response)
            grid = discord.File(io.BytesIO(self.grid_bytes), "grid.png")
            message = await interaction.followup.send(f"Drafts for {prompt}", file=grid, wait=True)
            self.grids[message.id] = message
            for keycap in KEYCAPS:
                await message.add_reaction(keycap)

        @draft.autocomplete("prompt")
        async def prompt_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [
                app_commands.Choice(name=f"{current} {animal}", value=f"{current}-{animal}")
                for animal in ("fox", "owl")
            ]

        @tree.command(name="note", description="Reply, then edit the reply", guild=guild)
        async def note(interaction: discord.Interaction, text: str) -> None:
            response = await interaction.response.send_message(f"noting {text}")
            self.callback_responses.append(response)
            await interaction.edit_original_response(content=f"noted {text}")

        @tree.command(name="look", description="Read the images attached", guild=guild)
        async def look(
            interaction: discord.Interaction,
            image: discord.Attachment,
            second: discord.Attachment | None = None,
        ) -> None:
            await interaction.response.defer(thinking=True, ephemeral=True)
            for attachment in (image, second):
                if attachment is None:
                    continue
                try:
                    data = await attachment.read()
                except discord.HTTPException as exc:
                    self.looked.append((attachment.filename, exc.status))
                    continue
                kind, width = attachment.content_type, attachment.width
                self.looked.append((attachment.filename, kind, width, data))

        @tree.error
        async def on_tree_error(
            interaction: discord.Interaction, error: app_commands.AppCommandError
        ) -> None:
            self.errors.append(getattr(error, "original", error))

    async def setup_hook(self) -> None:
        await self.tree.sync(guild=self.guild_ref)

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s here before every IDENTIFY but the first (identify rate
        limit); a test doesn't need that."""

    async def on_error(self, event_method: str, /, *args: Any, **kwargs: Any) -> None:
        self.errors.append(sys.exc_info()[1] or RuntimeError(event_method))

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        if self.user is not None and payload.user_id == self.user.id:
            self.own_reactions.append(payload)
            return
        self.votes.append(payload)
        if payload.message_id not in self.grids:
            return
        channel = self.get_channel(payload.channel_id)
        assert isinstance(channel, discord.TextChannel)
        starter = channel.get_partial_message(payload.message_id)
        thread = await starter.create_thread(name=f"final {payload.emoji}")
        final = discord.File(io.BytesIO(PNG), "final.png")
        self.finals.append(await thread.send(file=final))


# ---------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as server:
        with server.redirect():
            yield server


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[DraftBot]:
    client = DraftBot(fake.guild_id)
    task = asyncio.create_task(client.start(fake.token))
    await asyncio.sleep(0)  # login() sets up the client before wait_until_ready() may be called
    try:
        ready = asyncio.create_task(client.wait_until_ready())
        done, _ = await asyncio.wait({ready, task}, timeout=5, return_when="FIRST_COMPLETED")
        if ready not in done:
            ready.cancel()
            raise AssertionError(f"client not ready: {task.exception() if task.done() else done}")
        yield client
    finally:
        await client.close()
        await asyncio.wait_for(task, 5)


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def run_draft(fake: FakeDiscord, prompt: str = "fox") -> int:
    """/draft until its four reactions are on the grid; returns the grid message id."""
    handle = await fake.interaction("draft", {"prompt": prompt})
    await handle.deferred()
    (grid_id,) = await handle.wait_followups()
    await eventually(
        lambda: all(1001 in fake.messages[grid_id]["reactions"].get(k, ()) for k in KEYCAPS)
    )
    return grid_id


def statuses(requests: list[Req]) -> list[int | None]:
    return [r.status for r in requests]


# ---------------------------------------------------------------------- login and gateway


async def test_login_identify_guild_sync_and_cache(fake: FakeDiscord, bot: DraftBot) -> None:
    assert fake.route_names()[:3] == [
        "GET /users/@me",
        "GET /oauth2/applications/@me",
        "PUT /applications/{app}/guilds/{guild}/commands",
    ]
    assert fake.routes()[2] == "PUT /applications/1000/guilds/2000/commands"
    assert all(r.headers["Authorization"] == "Bot fake-bot-token" for r in fake.requests)
    assert fake.requests[2].headers["Content-Type"] == "application/json"
    assert sorted(c["name"] for c in fake.commands["guild:2000"]) == ["draft", "look", "note"]

    assert fake.identify is not None
    assert fake.identify["intents"] == discord.Intents(guilds=True, guild_reactions=True).value
    assert fake.identify["intents"] == 1025
    assert fake.identify["properties"]["browser"] == "discord.py"
    assert fake.connections == ["/gateway/?v=10&encoding=json&compress=zlib-stream"]
    assert fake.heartbeats >= 1 and fake.identifies == 1

    assert bot.user is not None and bot.user.id == 1001 and bot.application_id == 1000
    guild = bot.get_guild(2000)
    assert guild is not None and guild.me is not None
    channel = guild.get_channel(3000)
    assert isinstance(channel, discord.TextChannel) and channel.name == "general"
    perms = channel.permissions_for(guild.me)
    assert perms.create_public_threads and perms.add_reactions and perms.attach_files
    assert guild.filesize_limit == 10 * 1024 * 1024

    user = await bot.fetch_user(4002)
    await user.send("your final is ready")
    assert fake.dms == {4002: ["your final is ready"]}


async def test_redirect_is_restored() -> None:
    base = discord.http.Route.BASE
    gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    async with FakeDiscord() as server:
        with server.redirect():
            assert server.api_base == discord.http.Route.BASE
            assert str(discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY) == server.gateway_url
    assert discord.http.Route.BASE == base == "https://discord.com/api/v10"
    assert gateway == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY


async def test_wrong_token_is_a_login_failure(fake: FakeDiscord) -> None:
    client = discord.Client(intents=discord.Intents(guilds=True))
    try:
        with pytest.raises(discord.LoginFailure):
            await client.start("not-the-token")
    finally:
        await client.close()
    assert statuses(fake.requests) == [401]


# ---------------------------------------------------------------------- the draft flow


async def test_draft_flow_exact_rest_sequence(fake: FakeDiscord, bot: DraftBot) -> None:
    handle = await fake.interaction("draft", {"prompt": "fox"})
    assert await handle.deferred() == {"type": 5}
    await fake.wait_for("PUT", "/reactions/", count=4)
    grid_id = handle.followups[0]
    assert grid_id == handle.original_id  # the first followup replaces "thinking..."
    await eventually(lambda: len(bot.own_reactions) == 4)

    await fake.react(grid_id, KEYCAPS[1], user_id=4002)
    await fake.wait_for("POST", f"/channels/{grid_id}/messages")

    assert fake.route_names()[3:] == [
        "POST /interactions/{id}/{token}/callback",
        "POST /webhooks/{app}/{token}",
        *[REACTIONS_ROUTE] * 4,
        "POST /channels/{channel}/messages/{message}/threads",
        "POST /channels/{channel}/messages",
    ]
    callback, followup, *reactions, thread_post, final_post = fake.requests[3:]
    assert callback.path == f"/interactions/{handle.id}/{handle.token}/callback"
    assert callback.query == {"with_response": "1"} and callback.json == {"type": 5}
    assert followup.path == f"/webhooks/1000/{handle.token}"
    assert followup.query["wait"] == "1"
    assert [name for name, _ in followup.files] == ["grid.png"]
    assert followup.files[0][1].startswith(b"\x89PNG")
    assert "Authorization" not in followup.headers  # the interaction token is the credential
    assert [r.path for r in reactions] == [
        f"/channels/3000/messages/{grid_id}/reactions/{k}/@me" for k in KEYCAPS
    ]
    assert thread_post.json == {
        "name": "final 2\N{COMBINING ENCLOSING KEYCAP}",
        "auto_archive_duration": 1440,
        "rate_limit_per_user": None,
    }
    assert final_post.path == f"/channels/{grid_id}/messages"
    assert [name for name, _ in final_post.files] == ["final.png"]

    grid = fake.messages[grid_id]
    assert grid["content"] == "Drafts for fox" and grid["webhook_id"] == 1000
    assert grid["attachments"][0]["filename"] == "grid.png"
    assert grid["attachments"][0]["size"] == len(PNG)
    assert grid["reactions"] == {
        **{k: {1001} for k in KEYCAPS},
        KEYCAPS[1]: {1001, 4002},
    }
    assert fake.threads[grid_id]["parent_id"] == 3000
    assert fake.threads[grid_id]["messages"] == [bot.finals[0].id]

    # What the library made of the answers.
    assert bot.filesize_limits == [fake.filesize_limit]
    assert bot.callback_responses[0].is_thinking()
    webhook_message = bot.grids[grid_id]
    assert webhook_message.attachments[0].width == 2
    assert [str(p.emoji) for p in bot.own_reactions] == KEYCAPS
    assert all(p.member is not None and p.member.bot for p in bot.own_reactions)
    (vote,) = bot.votes
    assert (vote.user_id, vote.channel_id, vote.guild_id) == (4002, 3000, 2000)
    assert vote.member is not None and vote.member.name == "bob"
    assert vote.message_author_id == 1001 and vote.type is discord.ReactionType.normal
    assert isinstance(bot.get_channel(grid_id), discord.Thread)  # THREAD_CREATE was cached
    assert bot.finals[0].channel.id == grid_id
    assert bot.errors == []


async def test_autocomplete_round_trip(fake: FakeDiscord, bot: DraftBot) -> None:
    choices = await fake.autocomplete("draft", "prompt", "cat")
    assert choices == [
        {"name": "cat fox", "value": "cat-fox"},
        {"name": "cat owl", "value": "cat-owl"},
    ]
    (callback,) = await fake.wait_for("POST", "/callback")
    assert callback.json["type"] == 8 and callback.status == 200
    assert bot.errors == []


async def test_send_message_then_edit_original_response(fake: FakeDiscord, bot: DraftBot) -> None:
    handle = await fake.interaction("note", {"text": "hi"})
    (edit,) = await fake.wait_for("PATCH", "/messages/@original")
    assert edit.path == f"/webhooks/1000/{handle.token}/messages/@original"
    assert edit.json["content"] == "noted hi" and edit.status == 200
    assert handle.callback_type == 4
    original = fake.messages[handle.original_id or 0]
    assert original["content"] == "noted hi" and original["edited_timestamp"] is not None
    # discord.py 2.7 parsed the ?with_response=1 body into an InteractionCallbackResponse.
    response = bot.callback_responses[0]
    assert response.message_id == handle.original_id
    assert isinstance(response.resource, discord.InteractionMessage)
    assert response.resource.content == "noting hi"
    assert bot.errors == []


# ---------------------------------------------------------------------- errors and limits


async def test_library_retries_429_and_honours_bucket_headers(
    fake: FakeDiscord, bot: DraftBot
) -> None:
    fake.fail_next("POST", "/webhooks/", status=429, retry_after=0.2)
    fake.fail_next("PUT", "/reactions/", status=429, retry_after=0.3)
    await run_draft(fake)
    webhooks = await fake.wait_for("POST", "/webhooks/", count=2)
    reactions = await fake.wait_for("PUT", "/reactions/", count=5)
    assert statuses(webhooks) == [429, 200]
    assert statuses(reactions) == [429, 204, 204, 204, 204]
    assert webhooks[1].at - webhooks[0].at >= 0.19
    assert reactions[1].at - reactions[0].at >= 0.29
    assert bot.errors == []

    # A real bucket: 1 reaction per 0.15 s. discord.py reads X-RateLimit-Remaining: 0 and
    # waits before the next request instead of running into 429s.
    fake.ratelimits[REACTIONS_ROUTE] = (1, 0.15)
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("pace me")
    for keycap in KEYCAPS[:3]:
        await message.add_reaction(keycap)
    paced = [r for r in fake.requests if str(message.id) in r.path]
    assert statuses(paced) == [204, 204, 204]
    assert paced[2].at - paced[0].at >= 0.28


async def test_429_without_via_is_raised_not_retried(fake: FakeDiscord, bot: DraftBot) -> None:
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("vote here")
    fake.fail_next("PUT", "/reactions/", status=429, via=False)
    with pytest.raises(discord.HTTPException) as caught:
        await message.add_reaction(KEYCAPS[0])
    assert caught.value.status == 429
    assert statuses([r for r in fake.requests if "/reactions/" in r.path]) == [429]


async def test_upload_over_the_limit_is_413(fake: FakeDiscord, bot: DraftBot) -> None:
    fake.filesize_limit = 1024
    bot.grid_bytes = PNG + bytes(2048)
    handle = await fake.interaction("draft", {"prompt": "huge"})
    await handle.deferred()
    (followup,) = await fake.wait_for("POST", "/webhooks/")
    assert followup.status == 413
    await eventually(lambda: bot.errors)
    (error,) = bot.errors
    assert isinstance(error, discord.HTTPException)
    assert (error.status, error.code, error.text) == (413, 40005, "Request entity too large")
    assert bot.filesize_limits == [1024]  # Interaction.filesize_limit = attachment_size_limit

    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as caught:
        await channel.send(file=discord.File(io.BytesIO(bytes(1025)), "big.png"))
    assert (caught.value.status, caught.value.code) == (413, 40005)
    small = await channel.send(file=discord.File(io.BytesIO(bytes(1024)), "ok.png"))
    assert small.attachments[0].size == 1024


async def test_missing_permissions_surface_as_forbidden(fake: FakeDiscord, bot: DraftBot) -> None:
    fake.fail_next("POST", "/threads", status=403, code=50013)
    grid_id = await run_draft(fake)
    await fake.react(grid_id, KEYCAPS[0], user_id=4001)
    await eventually(lambda: bot.errors)
    (error,) = bot.errors
    assert isinstance(error, discord.Forbidden)
    assert (error.status, error.code, error.text) == (403, 50013, "Missing Permissions")

    # Enforced, not only injected: without Add Reactions the bot can't add a *new* emoji,
    # but can add one somebody already used (it only needs Read Message History then).
    fake.bot_permissions &= ~ADD_REACTIONS
    channel = bot.get_channel(3000)
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("permissions")
    with pytest.raises(discord.Forbidden) as caught:
        await message.add_reaction("\N{FOX FACE}")
    assert caught.value.code == 50013
    await fake.react(message.id, "\N{FOX FACE}", user_id=4003)
    await message.add_reaction("\N{FOX FACE}")
    with pytest.raises(discord.HTTPException) as garbage:
        await message.add_reaction("thumbsup")
    assert (garbage.value.status, garbage.value.code) == (400, 10014)
    fake.bot_permissions &= ~CREATE_PUBLIC_THREADS
    with pytest.raises(discord.Forbidden) as no_threads:
        await channel.get_partial_message(grid_id).create_thread(name="again")
    assert no_threads.value.code == 50013


async def test_interaction_token_rules(fake: FakeDiscord, bot: DraftBot) -> None:
    handle = await fake.interaction("note", {"text": "once"})
    await fake.wait_for("PATCH", "/messages/@original")
    base = fake.api_base
    async with aiohttp.ClientSession() as http:

        async def call(method: str, path: str, **kw: Any) -> tuple[int, str, Any]:
            async with http.request(method, base + path, **kw) as resp:
                return resp.status, resp.headers.get("Content-Type", ""), await resp.json()

        again = f"/interactions/{handle.id}/{handle.token}/callback"
        assert await call("POST", again, json={"type": 4, "data": {"content": "x"}}) == (
            400,
            "application/json",
            {"message": "Interaction has already been acknowledged.", "code": 40060},
        )
        unknown = await call("POST", "/webhooks/1000/not-a-token?wait=1", json={"content": "x"})
        assert unknown[0] == 404 and unknown[2]["code"] == 10015
        handle.expire()
        expired = await call("POST", f"/webhooks/1000/{handle.token}", json={"content": "x"})
        assert expired[0] == 401 and expired[2]["code"] == 50027
        assert await call("GET", "/nope") == (
            404,
            "application/json",
            {"message": "404: Not Found", "code": 0},
        )
        assert (await call("GET", "/users/@me"))[0] == 401
        assert (await call("GET", "/gateway"))[2] == {"url": fake.gateway_url.rstrip("/")}

    # Past the 3 s window (here 0 s) the first callback is 404 Unknown interaction.
    fake.interaction_timeout = 0.0
    await fake.interaction("note", {"text": "late"})
    await eventually(lambda: bot.errors)
    (error,) = bot.errors
    assert isinstance(error, discord.NotFound) and error.code == 10062


# ---------------------------------------------------------------------- gateway scenarios


async def test_reconnect_resume_replays_a_missed_reaction(fake: FakeDiscord, bot: DraftBot) -> None:
    grid_id = await run_draft(fake)
    session_id = bot.ws.session_id

    async with fake.outage():  # op 7; the client is held off until the block ends
        await fake.react(grid_id, KEYCAPS[2], user_id=4003)
    assert fake.resumes == 1 and fake.identifies == 1
    assert fake.replayed == ["MESSAGE_REACTION_ADD"]
    assert fake.connections[-1].startswith("/resume?v=10")  # READY's resume_gateway_url
    resume = next(f for f in fake.gateway_frames if f["op"] == 6)["d"]
    assert resume["session_id"] == session_id and resume["token"] == fake.token
    await fake.wait_for("POST", f"/channels/{grid_id}/messages")
    assert [v.user_id for v in bot.votes] == [4003]

    await fake.drop_connection(code=None)  # TCP gone: the client sees 1006 and resumes
    await fake.drop_connection(code=4000)
    assert fake.resumes == 3
    await fake.reconnect(op=9)  # INVALID_SESSION d=false: a fresh IDENTIFY
    assert fake.identifies == 2 and bot.ws.session_id != session_id
    handle = await fake.interaction("note", {"text": "still alive"})
    await handle.responded()
    await fake.wait_for("PATCH", "/messages/@original")
    assert bot.errors == []


# ---------------------------------------------------------------------- attachments in


async def test_attachments_arrive_resolved_and_come_from_a_signed_cdn_link(
    fake: FakeDiscord, bot: DraftBot
) -> None:
    look = next(c for c in fake.commands["guild:2000"] if c["name"] == "look")
    assert [(o["name"], o["type"], o["required"]) for o in look["options"]] == [
        ("image", 11, True),
        ("second", 11, False),
    ]
    handle = await fake.interaction(
        "look", {"image": ("fox.png", PNG), "second": ("notes.txt", b"hello")}
    )
    data = handle.payload["data"]
    options = {o["name"]: o for o in data["options"]}
    resolved = data["resolved"]["attachments"]
    assert options["image"]["type"] == 11 and set(resolved) == {
        options["image"]["value"],
        options["second"]["value"],
    }
    fox = resolved[options["image"]["value"]]
    host = fake.api_base.removesuffix("/api/v10")
    assert fox["url"].startswith(f"{host}/ephemeral-attachments/3000/{fox['id']}/fox.png?ex=")
    assert "&is=" in fox["url"] and "&hm=" in fox["url"] and fox["proxy_url"] == fox["url"]
    assert (fox["size"], fox["width"], fox["height"], fox["ephemeral"]) == (len(PNG), 2, 2, True)
    await eventually(lambda: len(bot.looked) == 2)
    # the type is what the name says (the client declares it); no size for text
    assert bot.looked == [
        ("fox.png", "image/png", 2, PNG),
        ("notes.txt", "text/plain", None, b"hello"),
    ]

    with pytest.raises(discord.NotFound):  # a link whose signature does not match
        await bot.http.get_from_cdn(fox["url"].replace("hm=", "hm=0"))
    fake.fail_cdn(fox["id"], status=500)
    with pytest.raises(discord.HTTPException) as caught:
        await bot.http.get_from_cdn(fox["url"])
    assert caught.value.status == 500
    assert await bot.http.get_from_cdn(fox["url"]) == PNG  # failed once, as asked
    assert [status for _, status in fake.cdn_requests] == [200, 200, 404, 500, 200]

    fake.cdn_ttl_s = -1.0  # links expire: the CDN answers 404, discord.py raises NotFound
    await fake.interaction("look", {"image": ("late.png", PNG)})
    await eventually(lambda: len(bot.looked) == 3)
    assert bot.looked[-1] == ("late.png", 404)


async def test_command_registration_is_checked_as_discord_does(
    fake: FakeDiscord, bot: DraftBot
) -> None:
    def option(name: str, kind: int = 3, required: bool = False, **extra: Any) -> dict[str, Any]:
        return {"name": name, "description": "x", "type": kind, "required": required, **extra}

    def command(*options: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": "c", "description": "d", "type": 1, "options": list(options)}]

    refused = [
        (
            command(option("a"), option("b", required=True)),
            "In 0.options.1: Required options must be placed before non-required options",
        ),
        (
            command(option("s", 1, options=[option("a"), option("b", required=True)])),
            "In 0.options.0.options.1: Required options must be placed before",
        ),
        (command(*(option(f"o{i}") for i in range(26))), "Must be 25 or fewer in length."),
        (command(option("a"), option("a")), "Option names must be unique"),
        (command(option("Image", 11)), "In 0.options.0.name: Invalid name"),
        (command(option("image", 11, autocomplete=True)), "In 0.options.0: Not allowed"),
        (command(option("image", 12)), "In 0.options.0.type"),
    ]
    for body, message in refused:
        with pytest.raises(discord.HTTPException) as caught:
            await bot.http.bulk_upsert_guild_commands(fake.app_id, fake.guild_id, body)
        assert (caught.value.status, caught.value.code) == (400, 50035)
        assert message in caught.value.text, body
    accepted = command(option("asset", required=True), option("image", 11), option("image2", 11))
    (echoed,) = await bot.http.bulk_upsert_guild_commands(fake.app_id, fake.guild_id, accepted)
    assert [o["name"] for o in echoed["options"]] == ["asset", "image", "image2"]
