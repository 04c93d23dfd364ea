"""Discord shards split across replicas (``DISCORD_SHARDS``): the setting, the fake gateway's
sharding (as Discord shards), and two real discord.py sharded clients in two replicas sharing
one bot, one store and one fake Discord."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import discord
import pytest

from adapters import wire
from adapters.discord import DiscordSurface
from bot.settings import SettingsError, load_settings
from bot.shards import Shards, parse_shards
from bot.surfaces import SurfaceUnavailable
from tests.fakes.discord_api import FakeDiscord, shard_of
from tests.test_discord import ALICE, Rig

INTENTS = discord.Intents(guilds=True, guild_reactions=True).value
COMMANDS_PUT = "PUT /applications/{app}/guilds/{guild}/commands"

# -- the setting ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ids", "count"),
    [
        ("0,1/4", (0, 1), 4),
        ("2-3/4", (2, 3), 4),
        (" 3, 0-1 / 4 ", (0, 1, 3), 4),
        ("0/1", (0,), 1),
        ("0-2,5/8", (0, 1, 2, 5), 8),
    ],
)
def test_discord_shards_are_ids_and_ranges_of_a_count(
    monkeypatch: pytest.MonkeyPatch, text: str, ids: tuple[int, ...], count: int
) -> None:
    monkeypatch.setenv("DISCORD_SHARDS", text)
    shards = load_settings(_env_file=None).discord_shards
    assert shards == Shards(ids, count)
    assert str(shards) == f"{','.join(map(str, ids))}/{count}"


@pytest.mark.parametrize("text", [None, "", "  "])
def test_no_discord_shards_is_one_connection(
    monkeypatch: pytest.MonkeyPatch, text: str | None
) -> None:
    if text is not None:
        monkeypatch.setenv("DISCORD_SHARDS", text)
    assert load_settings(_env_file=None).discord_shards is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("2/2", "shard 2 is not one of the 2 shard(s) (ids go from 0 to 1)"),
        ("0-4/4", "shard 4 is not one of the 4 shard(s)"),
        ("0/0", "the shard count must be at least 1"),
        ("0,1,0/4", "shard 0 is listed twice"),
        ("0-2,1/4", "shard 1 is listed twice"),
        ("3-1/4", "the range '3-1' goes down"),
        ("1", "expected IDS/COUNT, e.g. 0,1/4 or 2-3/4"),
        ("0/2/4", "expected IDS/COUNT"),
        ("0/four", "the shard count after '/' must be a whole number"),
        ("-1/2", "shard ids must be whole numbers or ranges such as 2-3"),
        ("/2", "shard ids must be whole numbers"),
        ("a,1/2", "got 'a' in 'a,1/2'"),
    ],
)
def test_an_invalid_discord_shards_stops_the_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, text: str, why: str
) -> None:
    monkeypatch.setenv("DISCORD_SHARDS", text)
    with pytest.raises(SettingsError) as caught:
        load_settings(_env_file=None)
    (line,) = [ln for ln in str(caught.value).splitlines() if "DISCORD_SHARDS" in ln]
    assert why in line


def test_shards_know_their_guilds() -> None:
    assert parse_shards("1/2") == Shards((1,), 2)
    assert Shards((1,), 2).owns(1 << 22) and not Shards((1,), 2).owns(2 << 22)
    assert Shards((0,), 1).owns(123456789 << 22)
    with pytest.raises(ValueError, match="listed twice"):
        Shards((1, 1), 2)


# -- the fake gateway shards as Discord does ----------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    server = FakeDiscord()
    server.reaction_pace_s = 0.01  # pre-added reactions are not what these tests are about
    await server.start()
    with server.redirect():
        yield server
    await server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def identify(
    http: aiohttp.ClientSession, fake: FakeDiscord, shard: Any = None
) -> aiohttp.ClientWebSocketResponse:
    """A raw gateway connection: HELLO, then IDENTIFY (with ``shard`` unless None)."""
    ws = await http.ws_connect(f"{fake.gateway_url}?v=10&encoding=json")
    assert (await ws.receive_json(timeout=5))["op"] == 10
    d: dict[str, Any] = {"token": fake.token, "intents": INTENTS, "properties": {"os": "linux"}}
    if shard is not None:
        d["shard"] = shard
    await ws.send_json({"op": 2, "d": d})
    return ws


async def dispatches(ws: aiohttp.ClientWebSocketResponse, count: int) -> list[dict[str, Any]]:
    frames = []
    while len(frames) < count:
        frame = await ws.receive_json(timeout=5)
        if frame["op"] == 0:
            frames.append(frame)
    return frames


async def test_each_shard_is_a_connection_with_its_guilds_and_their_events(
    fake: FakeDiscord,
    http: aiohttp.ClientSession,
) -> None:
    other, other_channel = fake.add_guild(shard=(1, 2), name="Second")
    assert shard_of(fake.guild_id, 2) == 0 and shard_of(other, 2) == 1
    zero, one = await identify(http, fake, [0, 2]), await identify(http, fake, [1, 2])
    ready, guild = await dispatches(zero, 2)
    assert ready["t"] == "READY" and ready["d"]["shard"] == [0, 2]
    assert ready["d"]["guilds"] == [{"id": str(fake.guild_id), "unavailable": True}]
    assert (guild["t"], guild["d"]["id"]) == ("GUILD_CREATE", str(fake.guild_id))
    ready, guild = await dispatches(one, 2)
    assert ready["d"]["shard"] == [1, 2]
    assert [g["id"] for g in ready["d"]["guilds"]] == [str(other)]
    assert guild["d"]["name"] == "Second"
    assert [c["id"] for c in guild["d"]["channels"]] == [str(other_channel)]
    assert set(fake.shards) == {(0, 2), (1, 2)}

    # A reaction in the second guild, a command in the first: each reaches its shard only.
    url = f"{fake.api_base}/channels/{other_channel}/messages"
    headers = {"Authorization": f"Bot {fake.token}"}
    async with http.post(url, json={"content": "hi"}, headers=headers) as response:
        message_id = int((await response.json())["id"])
    await fake.react(message_id, "👍", user_id=ALICE)
    await fake.interaction("draft", {"prompt": "fox"}, channel_id=fake.channel_id)
    (reaction,) = await dispatches(one, 1)
    assert reaction["t"] == "MESSAGE_REACTION_ADD" and reaction["d"]["guild_id"] == str(other)
    (command,) = await dispatches(zero, 1)
    assert command["t"] == "INTERACTION_CREATE"
    assert command["d"]["guild_id"] == str(fake.guild_id)
    assert fake.events((0, 2)) == ["READY", "GUILD_CREATE", "INTERACTION_CREATE"]
    assert fake.events((1, 2)) == ["READY", "GUILD_CREATE", "MESSAGE_REACTION_ADD"]

    # One connection without `shard` is every guild, and READY carries no shard.
    whole = await identify(http, fake)
    ready, *guilds = await dispatches(whole, 3)
    assert "shard" not in ready["d"] and len(ready["d"]["guilds"]) == 2
    assert {g["d"]["id"] for g in guilds} == {str(fake.guild_id), str(other)}
    assert set(fake.shards) == {(0, 1), (0, 2), (1, 2)}

    # The bot joins a guild on shard 0: its GUILD_CREATE goes to shard 0 and to the whole.
    third, _ = fake.add_guild(shard=(0, 2), name="Third")
    for ws in (zero, whole):
        (joined,) = await dispatches(ws, 1)
        assert (joined["t"], joined["d"]["name"]) == ("GUILD_CREATE", "Third")
    assert fake.events((1, 2)) == ["READY", "GUILD_CREATE", "MESSAGE_REACTION_ADD"]
    assert shard_of(third, 2) == 0
    for ws in (zero, one, whole):
        await ws.close()


@pytest.mark.parametrize("shard", [[2, 2], [0, 0], [-1, 2], [1], [0, 2, 1], "0,2", [True, 2]])
async def test_an_invalid_shard_closes_4010(
    fake: FakeDiscord,
    http: aiohttp.ClientSession,
    shard: Any,
) -> None:
    ws = await identify(http, fake, shard)
    closed = await ws.receive(timeout=5)
    assert closed.type is aiohttp.WSMsgType.CLOSE
    assert (closed.data, closed.extra) == (4010, "Invalid shard.")
    assert fake.identifies == 0 and fake.shards == {}


async def test_too_many_guilds_for_one_session_closes_4011_and_gateway_bot_recommends(
    fake: FakeDiscord,
    http: aiohttp.ClientSession,
) -> None:
    fake.add_guild(shard=(1, 2))
    async with http.get(
        f"{fake.api_base}/gateway/bot", headers={"Authorization": f"Bot {fake.token}"}
    ) as response:
        assert (await response.json())["shards"] == 1  # one per 1000 guilds
    fake.recommended_shards = 2
    async with http.get(
        f"{fake.api_base}/gateway/bot", headers={"Authorization": f"Bot {fake.token}"}
    ) as response:
        assert (await response.json())["shards"] == 2

    fake.max_guilds_per_session = 1
    ws = await identify(http, fake)
    closed = await ws.receive(timeout=5)
    assert (closed.data, closed.extra) == (4011, "Sharding required.")
    ws = await identify(http, fake, [1, 2])
    (ready, _guild) = await dispatches(ws, 2)
    assert ready["d"]["shard"] == [1, 2]
    await ws.close()


# -- replicas -----------------------------------------------------------------------------------


class Replica(Rig):
    """A ``tierbot run`` with ``DISCORD_SHARDS``; records which guilds' commands and reactions
    reached its adapter (its client's gateway connections)."""

    def __init__(self, fake: FakeDiscord, make_settings: Any, shards: str, **settings: Any):
        settings = {"discord_shards": shards, "discord_guild_ids": fake.guild_ids, **settings}
        super().__init__(fake, make_settings, **settings)
        self.commands: list[int | None] = []
        self.reactions: list[tuple[int | None, int]] = []  # (guild, user)

    async def start(self) -> Replica:
        await super().start()
        surface = self.surface
        command, reaction = surface._command, surface._on_reaction

        async def on_command(interaction: discord.Interaction, *args: Any) -> None:
            self.commands.append(interaction.guild_id)
            await command(interaction, *args)

        async def on_reaction(payload: discord.RawReactionActionEvent) -> None:
            self.reactions.append((payload.guild_id, payload.user_id))
            await reaction(payload)

        surface._command = on_command  # type: ignore[method-assign]
        surface._on_reaction = on_reaction  # type: ignore[method-assign]
        return self


async def settle(*replicas: Replica) -> None:
    await asyncio.sleep(0.05)
    for replica in replicas:
        await replica.surface.idle()


def posted(fake: FakeDiscord, channel_id: int, needle: str) -> dict[str, Any]:
    found = [m for m in fake.messages.values() if m["channel_id"] == channel_id]
    found = [m for m in found if needle in m["content"]]
    assert found, f"no message with {needle!r} in {channel_id}"
    return found[-1]


@pytest.fixture
async def replicas(
    fake: FakeDiscord, make_settings: Any
) -> AsyncIterator[Callable[..., Awaitable[Replica]]]:
    """Starts replicas (``await replicas("1/2")``); stops every one started, pass or fail."""
    started: list[Replica] = []

    async def start(shards: str = "", **settings: Any) -> Replica:
        replica = Replica(fake, make_settings, shards, **settings)
        await replica.start()
        started.append(replica)
        return replica

    yield start
    for replica in reversed(started):
        await replica.stop()


async def test_two_replicas_split_the_guilds_and_each_answers_its_own(
    fake: FakeDiscord, replicas: Callable[..., Awaitable[Replica]]
) -> None:
    other, other_channel = fake.add_guild(shard=(1, 2), name="Second")
    # Shard 1's replica starts first and registers no command; shard 0's registers them once,
    # in both guilds (registration is per bot over REST, not per shard).
    one = await replicas("1/2")
    assert fake.route_names().count(COMMANDS_PUT) == 0 and not one.surface.syncs_commands
    zero = await replicas("0/2")
    puts = [r.path for r in fake.requests if f"{r.method} {r.route}" == COMMANDS_PUT]
    assert puts == [
        f"/applications/{fake.app_id}/guilds/{fake.guild_id}/commands",
        f"/applications/{fake.app_id}/guilds/{other}/commands",
    ]
    assert set(fake.shards) == {(0, 2), (1, 2)}
    assert "in 1 guild(s) on shard(s) 1/2" in one.started
    assert "in 1 guild(s) on shard(s) 0/2" in zero.started
    assert isinstance(one.surface.client, discord.AutoShardedClient)
    assert [g.id for g in one.surface.client.guilds] == [other]
    assert [g.id for g in zero.surface.client.guilds] == [fake.guild_id]
    assert one.surface.client.shard_count == 2 and list(one.surface.client.shards) == [1]

    # /draft in each guild: answered by the replica running that guild's shard only.
    grids = {}
    for channel, prompt in ((fake.channel_id, "a lighthouse"), (other_channel, "a fox")):
        handle = await fake.interaction("draft", {"prompt": prompt, "n": 2}, channel_id=channel)
        await handle.deferred()
        await settle(zero, one)
        grids[channel] = posted(fake, channel, "🖼️ Drafts for")
    assert zero.commands == [fake.guild_id] and one.commands == [other]
    assert "a lighthouse" in grids[fake.channel_id]["content"]
    assert "a fox" in grids[other_channel]["content"]

    # 2️⃣ on each grid: the final comes from the grid's replica, in the grid's thread.
    for channel, grid in grids.items():
        await fake.react(grid["id"], "2️⃣", user_id=ALICE, channel_id=channel)
        await settle(zero, one)
        final = posted(fake, grid["id"], "✨ Final")
        assert "from draft 2" in final["content"]
    # (the bot's own pre-added reactions echo back to the replica that added them)
    assert {g for g, _ in zero.reactions} == {fake.guild_id}
    assert {g for g, _ in one.reactions} == {other}
    assert [g for g, user in zero.reactions + one.reactions if user == ALICE] == [
        fake.guild_id,
        other,
    ]
    assert fake.events((1, 2)).count("INTERACTION_CREATE") == 1
    assert fake.events((0, 2)).count("INTERACTION_CREATE") == 1


async def test_unsharded_is_one_plain_client_that_registers_the_commands(
    fake: FakeDiscord, replicas: Callable[..., Awaitable[Replica]]
) -> None:
    rig = await replicas(discord_shards=None)
    client = rig.surface.client
    assert not isinstance(client, discord.AutoShardedClient) and client.shard_count is None
    assert "shard" not in (fake.identify or {}) and set(fake.shards) == {(0, 1)}
    assert rig.surface.syncs_commands and fake.route_names().count(COMMANDS_PUT) == 1
    assert "shard" not in rig.started


@pytest.mark.parametrize(
    ("shards", "now"), [(None, "one connection"), ("0/1", "DISCORD_SHARDS=0/1")]
)
async def test_sharding_required_is_explained_at_start(
    fake: FakeDiscord, make_settings: Any, shards: str | None, now: str
) -> None:
    fake.add_guild(shard=(1, 2))
    fake.max_guilds_per_session = 1
    settings = make_settings(
        discord_bot_token=fake.token,
        discord_api_url=fake.api_base,
        discord_gateway_url=fake.gateway_url,
        discord_shards=shards,
    )
    services = wire(settings)
    surface = DiscordSurface(services.surface_context(), guild_ready_timeout=0.05)
    try:
        with pytest.raises(SurfaceUnavailable, match="4011") as caught:
            await surface.start()
        assert f"too many guilds for {now}" in str(caught.value)
        assert "DISCORD_SHARDS with a larger shard count" in str(caught.value)
    finally:
        await surface.stop()
        await services.aclose()
