"""A fake Discord (REST API v10 + gateway websocket) served by aiohttp on 127.0.0.1.

It plays Discord for the *real* discord.py 2.7 client, over the wire (spec:
/work/shared/specs/chat_platforms.md, sections 3 and 4). Point the library at it with::

    async with FakeDiscord() as fake:
        with fake.redirect():  # Route.BASE and DiscordWebSocket.DEFAULT_GATEWAY, restored on exit
            task = asyncio.create_task(client.start(fake.token))
            await fake.wait_ready()
            handle = await fake.interaction("draft", {"prompt": "fox"})
            await handle.deferred()
            grid_id = (await handle.wait_followups())[0]
            await fake.react(grid_id, "2\N{COMBINING ENCLOSING KEYCAP}", user_id=4002)
            ...
            await client.close()
            await task

Test-only behaviour to know: ``react``/``interaction`` raise without a gateway session;
``react`` raises ``KeyError`` for a message the fake doesn't hold; ``wait_for`` counts answered
requests, whatever their status.

What it reproduces (each checked against the discord.py sources):

* REST answers carry ``Content-Type: application/json`` exactly (discord.py parses nothing else),
  errors are ``{"message", "code"}`` with Discord's codes, every answer has ``X-RateLimit-*``
  headers from a real per-route bucket (``ratelimits``), a 429 carries ``Via`` and a JSON
  ``retry_after`` so the library retries it, multipart ``payload_json`` + ``files[n]`` uploads are
  checked against ``filesize_limit`` (413, code 40005), and the bot's permissions
  (``bot_permissions``) are enforced on sends, reactions and thread creation (403, code 50013).
* Application command registration checked as Discord checks it (``50035`` Invalid Form Body):
  names, descriptions, option types 1-11, at most 25 options, unique option names, required
  options before optional ones, no choices or autocomplete on an attachment (type 11) option.
* Files attached to a slash command: the option's value is the attachment id, the objects are
  in ``data.resolved.attachments`` (id, filename, size, url, proxy_url, content_type from the
  file name, width and height for images, ``ephemeral``), and the bytes are served at the
  signed ``/ephemeral-attachments/{channel}/{id}/{filename}?ex=&is=&hm=`` link on the fake's
  host, which stops working after ``cdn_ttl_s`` (404, as the real CDN does). ``fail_cdn`` makes
  the CDN fail; ``cdn_requests`` records every CDN GET.
* The interaction life cycle: the 3 s window for the first callback (10062), one callback only
  (40060), ``?with_response=1`` answers, the first followup after a defer replacing the "thinking"
  message, unknown webhook tokens (10015), expired ones (401, 50027).
* The gateway: HELLO, heartbeats, IDENTIFY → READY + GUILD_CREATE, dispatches filtered by the
  identified intents, RECONNECT (op 7), INVALID_SESSION (op 9), RESUME with the replay of the
  events the client missed, then RESUMED. Frames are uncompressed text, which discord.py accepts
  although it asks for ``compress=zlib-stream``.
* Sharding: IDENTIFY's ``shard: [id, count]`` makes the connection that shard; each shard is its
  own websocket and session, READY echoes ``shard`` and lists only the shard's guilds, and a
  guild's events (GUILD_CREATE, INTERACTION_CREATE, MESSAGE_*, reactions, threads, roles) go
  only to the sessions of shard ``(guild_id >> 22) % count``, DMs only to shard 0. An invalid
  shard closes with 4010 "Invalid shard.", a session that would hold more than
  ``max_guilds_per_session`` guilds with 4011 "Sharding required.". ``GET /gateway/bot``
  recommends a shard count (``recommended_shards``, else one per 1000 guilds). A new IDENTIFY
  for a shard replaces that shard's session; other shards' sessions live on. The guild of the
  constructor (by default id 2000, below ``1 << 22``) is on shard 0 of any count;
  ``add_guild(shard=(1, 2))`` adds another guild, with its own text channel, on a given shard.

All state is plain attributes, so a test can seed it and assert on it: ``requests``,
``messages``, ``threads``, ``dms``, ``commands``, ``roles``, ``identify``, ``resumes``...
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import io
import itertools
import json
import logging
import math
import mimetypes
import re
import secrets
import time
import unicodedata
import urllib.parse
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import discord.gateway
import discord.http
import yarl
from aiohttp import WSMsgType, web
from PIL import Image

log = logging.getLogger(__name__)

API_PREFIX = "/api/v10"
DISCORD_EPOCH_MS = 1420070400000

# Permission bits (https://discord.com/developers/docs/topics/permissions).
ADD_REACTIONS = 1 << 6
VIEW_CHANNEL = 1 << 10
SEND_MESSAGES = 1 << 11
MANAGE_MESSAGES = 1 << 13
EMBED_LINKS = 1 << 14
ATTACH_FILES = 1 << 15
READ_MESSAGE_HISTORY = 1 << 16
USE_APPLICATION_COMMANDS = 1 << 31
CREATE_PUBLIC_THREADS = 1 << 35
SEND_MESSAGES_IN_THREADS = 1 << 38
EVERYONE_PERMISSIONS = VIEW_CHANNEL | READ_MESSAGE_HISTORY | USE_APPLICATION_COMMANDS
DEFAULT_BOT_PERMISSIONS = (
    VIEW_CHANNEL
    | SEND_MESSAGES
    | EMBED_LINKS
    | ATTACH_FILES
    | READ_MESSAGE_HISTORY
    | ADD_REACTIONS
    | CREATE_PUBLIC_THREADS
    | SEND_MESSAGES_IN_THREADS
    | USE_APPLICATION_COMMANDS
)

# Gateway intents.
GUILDS = 1 << 0
GUILD_MEMBERS = 1 << 1
GUILD_PRESENCES = 1 << 8
GUILD_MESSAGES = 1 << 9
GUILD_MESSAGE_REACTIONS = 1 << 10
DIRECT_MESSAGES = 1 << 12
DIRECT_MESSAGE_REACTIONS = 1 << 13
MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT

# Channel types.
GUILD_TEXT = 0
DM = 1
PUBLIC_THREAD = 11

# Message flags.
#: How long Discord remembers a message's nonce for ``enforce_nonce`` ("a few minutes").
NONCE_WINDOW_S = 300.0
EPHEMERAL = 1 << 6
LOADING = 1 << 7

# Interaction types and callback types.
APPLICATION_COMMAND = 2
AUTOCOMPLETE = 4
CHANNEL_MESSAGE_WITH_SOURCE = 4
DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE = 5
AUTOCOMPLETE_RESULT = 8
MODAL = 9
_CALLBACKS_FOR = {
    APPLICATION_COMMAND: {CHANNEL_MESSAGE_WITH_SOURCE, DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE, MODAL},
    AUTOCOMPLETE: {AUTOCOMPLETE_RESULT},
}

ERROR_MESSAGES = {
    10003: "Unknown Channel",
    10004: "Unknown Guild",
    10007: "Unknown Member",
    10008: "Unknown Message",
    10013: "Unknown User",
    10014: "Unknown Emoji",
    10015: "Unknown Webhook",
    10062: "Unknown interaction",
    30010: "Maximum number of reactions reached (20)",
    40005: "Request entity too large",
    40060: "Interaction has already been acknowledged.",
    50001: "Missing Access",
    50005: "Cannot edit a message authored by another user",
    50006: "Cannot send an empty message",
    50007: "Cannot send messages to this user",
    50013: "Missing Permissions",
    50024: "Cannot execute action on this channel type",
    50027: "Invalid Webhook Token",
    50033: "Invalid Recipient(s)",
    50035: "Invalid Form Body",
    50109: "The request body contains invalid JSON.",
    160004: "A thread has already been created for this message",
}
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Request Entity Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
}
# Routes Discord serves without the bot token: the interaction token is the credential.
_NO_AUTH_PREFIXES = ("/interactions/", "/webhooks/")
_NOT_RATE_LIMITED = {"POST /interactions/{id}/{token}/callback"}
_ARCHIVE_DURATIONS = {60, 1440, 4320, 10080}
# Application command option types: SUB_COMMAND 1, SUB_COMMAND_GROUP 2, STRING 3 ... ATTACHMENT 11.
SUB_COMMAND, SUB_COMMAND_GROUP, STRING, INTEGER, NUMBER, ATTACHMENT = 1, 2, 3, 4, 10, 11
MAX_COMMAND_OPTIONS = 25
# A CHAT_INPUT command or option name (Discord's rule, simplified to \w for the scripts).
_OPTION_NAME = re.compile(r"[-_'\w]{1,32}")
#: What the CDN answers for a link that expired or whose signature does not match.
CDN_GONE = "This content is no longer available."
_EMOJI_GLUE = {0x200D, 0xFE0E, 0xFE0F, 0x20E3}


class DiscordError(Exception):
    """Raised inside a handler; becomes Discord's JSON error body."""

    def __init__(
        self, status: int, code: int = 0, message: str = "", errors: dict | None = None
    ) -> None:
        self.status, self.code = status, code
        self.message = message or ERROR_MESSAGES.get(code) or f"{status}: {_REASONS[status]}"
        self.errors = errors
        super().__init__(f"{status} {code} {self.message}")

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors:
            out["errors"] = self.errors
        return out


def _form_error(path: str, code: str, message: str) -> DiscordError:
    """400 Invalid Form Body (50035) with Discord's nested ``errors`` object."""
    node: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path.split(".")):
        node = {key: node}
    return DiscordError(400, 50035, errors=node)


@dataclass
class Req:
    """One REST request as the fake received it.

    ``path`` is relative to ``/api/v10``, decoded, with real ids and without the query;
    ``route`` is the same path templated (``/channels/{channel}/messages``). ``json`` is the JSON
    body or the multipart ``payload_json``; ``files`` are the multipart ``files[n]`` parts.
    ``status`` is the status the fake answered; ``at`` is ``time.monotonic()``.
    """

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[tuple[str, bytes]]
    headers: dict[str, str]
    route: str = ""
    status: int | None = None
    at: float = 0.0


_REQ = web.RequestKey("fake_discord_req", Req)


@dataclass
class _Failure:
    method: str
    path_contains: str
    status: int
    code: int
    message: str
    retry_after: float | None
    via: bool
    is_global: bool
    times: int


@dataclass
class Interaction:
    """A pushed INTERACTION_CREATE and what the bot answered to it."""

    fake: FakeDiscord
    id: int
    token: str
    type: int
    name: str
    user_id: int
    channel_id: int
    guild_id: int | None
    payload: dict[str, Any]
    created: float = field(default_factory=time.monotonic)
    callbacks: list[dict[str, Any]] = field(default_factory=list)  # callback bodies, in order
    original_id: int | None = None  # the response message (loading one after a defer)
    loading: bool = False  # deferred with thinking and not yet followed up or edited
    followups: list[int] = field(default_factory=list)  # message ids posted via the webhook
    expired: bool = False

    @property
    def callback_type(self) -> int | None:
        return self.callbacks[0].get("type") if self.callbacks else None

    async def responded(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first callback body once the bot has sent it."""
        await self.fake._wait_until(lambda: bool(self.callbacks), timeout, f"callback to {self}")
        return self.callbacks[0]

    async def deferred(self, timeout: float = 5.0) -> dict[str, Any]:
        """Wait for the callback and check it is a defer (type 5)."""
        body = await self.responded(timeout)
        if body.get("type") != DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            raise AssertionError(f"expected a defer (type 5), the bot answered {body}")
        return body

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[int]:
        await self.fake._wait_until(
            lambda: len(self.followups) >= count, timeout, f"{count} followup(s) to {self}"
        )
        return list(self.followups)

    def expire(self) -> None:
        """Make the token expire as after 15 minutes: webhook calls get 401, code 50027."""
        self.expired = True

    def __repr__(self) -> str:
        return f"<Interaction /{self.name} id={self.id} type={self.type}>"


@dataclass(eq=False)
class _Conn:
    ws: web.WebSocketResponse
    request: web.Request
    path: str
    session: _Session | None = None
    draining: bool = False  # told to go away: further dispatches are kept for the resume


@dataclass(eq=False)
class _Session:
    id: str
    intents: int
    #: ``(shard_id, num_shards)``; an IDENTIFY without ``shard`` is ``(0, 1)``: every guild.
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    log: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    conn: _Conn | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def receives(self, guild_id: int | None) -> bool:
        """Discord's rule: a guild's events go to its shard; DMs (no guild) to shard 0."""
        number, count = self.shard
        return number == 0 if guild_id is None else shard_of(guild_id, count) == number


@dataclass(eq=False)
class _Guild:
    """A guild other than the constructor's (that one's fields are FakeDiscord attributes)."""

    id: int
    name: str
    channel_id: int  # its one text channel
    channel_name: str
    bot_role_id: int
    roles: dict[int, dict[str, Any]]


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard that receives ``guild_id``'s events when a bot runs ``shard_count`` shards."""
    return (guild_id >> 22) % shard_count


class FakeDiscord:
    """Discord's REST API and gateway for one bot in one guild with one text channel (more
    with :meth:`add_guild`), over one connection or several shards."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        app_id: int = 1000,
        bot_user_id: int = 1001,
        guild_id: int = 2000,
        channel_id: int = 3000,
        users: dict[int, str] | None = None,
    ) -> None:
        self.token, self.app_id, self.bot_user_id = token, app_id, bot_user_id
        self.guild_id, self.channel_id = guild_id, channel_id
        self.users: dict[int, str] = dict(users or {4001: "alice", 4002: "bob", 4003: "carol"})
        self.bot_name = "tierbot"
        self.guild_name = "Fake Guild"
        self.channel_name = "general"
        self.owner_id = next(iter(self.users))  # application and guild owner
        self.bot_role_id = guild_id + 1
        self.api_base = ""
        self.gateway_url = ""
        self.resume_url = ""
        self.uploaded: dict[int, dict[str, Any]] = {}  # files users sent with a command
        self.cdn_ttl_s: float = 86_400.0  # how long a signed ephemeral-attachment link works
        # ---- knobs a test may change
        self.filesize_limit: int = 10 * 1024 * 1024  # attachment_size_limit; enforced (413)
        self.premium_tier = 0
        self.bot_permissions: int = DEFAULT_BOT_PERMISSIONS  # enforced on REST (403 50013)
        self.privileged_intents: int = 0  # enabled in the developer portal; others close 4014
        self.recommended_shards: int | None = None  # GET /gateway/bot; None: 1 per 1000 guilds
        self.max_guilds_per_session = 2500  # more guilds on one session: close 4011
        self.commands_scope = True  # False: guild command PUT → 403 50001 (bot-only install)
        self.interaction_timeout: float | None = 3.0  # first callback window (10062 after it)
        self.heartbeat_interval_ms = 41250
        self.ack_heartbeats = True
        self.ratelimits: dict[str, tuple[int, float]] = {}  # route name -> (limit, per seconds)
        self.default_ratelimit: tuple[int, float] = (50, 1.0)
        self.dm_blocked: set[int] = set()  # users whose DMs are closed (403 50007)
        # ---- state
        self.requests: list[Req] = []
        self.messages: dict[int, dict[str, Any]] = {}
        #: (author, nonce) -> (message id, when): messages sent with ``enforce_nonce``.
        self._nonces: dict[tuple[int, str], tuple[int, float]] = {}
        #: Discord takes reaction adds at about one per this many seconds per channel; each
        #: PUT answers after it, so pre-adding a grid's reactions takes a couple of seconds.
        self.reaction_pace_s = 0.25
        #: Called with each message as soon as it exists (before its poster has the answer):
        #: tests click the moment a message appears.
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self.threads: dict[int, dict[str, Any]] = {}
        self.dms: dict[int, list[str]] = {}
        self.dm_channels: dict[int, int] = {}  # DM channel id -> user id
        self.commands: dict[str, list[dict[str, Any]]] = {}
        self.roles: dict[int, list[int]] = {uid: [] for uid in self.users}  # role ids, any guild
        self.other_guilds: dict[int, _Guild] = {}  # add_guild
        self.guild_roles: dict[int, dict[str, Any]] = {
            guild_id: {"name": "@everyone", "permissions": EVERYONE_PERMISSIONS},
            self.bot_role_id: {"name": self.bot_name, "permissions": None, "bot": True},
        }
        self.interactions: dict[int, Interaction] = {}
        self.cdn_requests: list[tuple[str, int]] = []  # (path, status) of every CDN GET
        # ---- gateway record
        self.identify: dict[str, Any] | None = None  # the last IDENTIFY's d
        self.identifies = 0
        self.resumes = 0
        self.heartbeats = 0
        self.connections: list[str] = []  # path + query of every websocket, in order
        self.gateway_frames: list[dict[str, Any]] = []  # every frame the client sent
        self.dispatched: list[tuple[str, dict[str, Any]]] = []  # every DISPATCH (t, d)
        self.replayed: list[str] = []  # event names re-sent on a RESUME
        # ---- internals
        self._sessions: dict[tuple[int, int], _Session] = {}  # by shard
        self._conns: set[_Conn] = set()
        self._handshakes = 0  # READY+GUILD_CREATE or RESUMED sent
        self._gate = asyncio.Event()
        self._gate.set()
        self._changed = asyncio.Event()
        self._failures: list[_Failure] = []
        self._buckets: dict[tuple[str, str], list[float]] = {}
        self._by_token: dict[str, Interaction] = {}
        self._last_snowflake = 0
        self._inc = itertools.count()
        self._started = datetime.now(UTC)
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Future[Any]] = set()
        self._cdn_base = ""
        self._host = ""
        self._cdn_failures: list[list[Any]] = []  # [path substring, status, times left]
        self._cdn_key = secrets.token_bytes(16)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        app = web.Application(middlewares=[self._middleware], client_max_size=1 << 30)
        r = app.router
        for path in ("/gateway", "/gateway/", "/resume", "/resume/"):
            r.add_get(path, self._gateway)
        r.add_get("/attachments/{channel}/{attachment}/{filename}", self._cdn)
        r.add_get("/ephemeral-attachments/{channel}/{attachment}/{filename}", self._cdn)
        a = API_PREFIX
        routes: list[tuple[str, str, Callable[..., Any]]] = [
            ("GET", "/users/@me", self._get_me),
            ("POST", "/users/@me/channels", self._create_dm),
            ("GET", "/users/{user}", self._get_user),
            ("GET", "/oauth2/applications/@me", self._get_application),
            ("GET", "/gateway", self._get_gateway),
            ("GET", "/gateway/bot", self._get_gateway_bot),
            ("PUT", "/applications/{app}/guilds/{guild}/commands", self._put_commands),
            ("GET", "/applications/{app}/guilds/{guild}/commands", self._get_commands),
            ("PUT", "/applications/{app}/commands", self._put_commands),
            ("GET", "/applications/{app}/commands", self._get_commands),
            ("POST", "/interactions/{id}/{token}/callback", self._callback),
            ("POST", "/webhooks/{app}/{token}", self._followup),
            ("GET", "/webhooks/{app}/{token}/messages/{message}", self._webhook_message),
            ("PATCH", "/webhooks/{app}/{token}/messages/{message}", self._webhook_message),
            ("DELETE", "/webhooks/{app}/{token}/messages/{message}", self._webhook_message),
            ("GET", "/channels/{channel}", self._get_channel),
            ("POST", "/channels/{channel}/typing", self._typing),
            ("POST", "/channels/{channel}/messages", self._post_message),
            ("GET", "/channels/{channel}/messages/{message}", self._get_message),
            ("PATCH", "/channels/{channel}/messages/{message}", self._edit_message),
            ("DELETE", "/channels/{channel}/messages/{message}", self._delete_message),
            ("PUT", "/channels/{channel}/messages/{message}/reactions/{emoji}/@me", self._react),
            (
                "DELETE",
                "/channels/{channel}/messages/{message}/reactions/{emoji}/@me",
                self._unreact,
            ),
            ("POST", "/channels/{channel}/messages/{message}/threads", self._create_thread),
            ("GET", "/guilds/{guild}/members/{user}", self._get_member),
            ("GET", "/guilds/{guild}/roles", self._get_roles),
        ]
        for method, path, handler in routes:
            r.add_route(method, a + path, handler)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.api_base = f"http://127.0.0.1:{port}{API_PREFIX}"
        self.gateway_url = f"ws://127.0.0.1:{port}/gateway/"
        self.resume_url = f"ws://127.0.0.1:{port}/resume"
        self._host = f"http://127.0.0.1:{port}"
        self._cdn_base = f"{self._host}/attachments"

    async def stop(self) -> None:
        self._gate.set()
        for conn in list(self._conns):
            with contextlib.suppress(Exception):
                await conn.ws.close(code=1001, message=b"fake stopped")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def redirect(self) -> Iterator[FakeDiscord]:
        """Point discord.py at the fake (REST, webhooks and gateway); restore on exit."""
        route, ws_cls = discord.http.Route, discord.gateway.DiscordWebSocket
        old_base, old_gateway = route.BASE, ws_cls.DEFAULT_GATEWAY
        route.BASE = self.api_base
        ws_cls.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            route.BASE = old_base
            ws_cls.DEFAULT_GATEWAY = old_gateway

    # ------------------------------------------------------------------ test helpers

    def routes(self) -> list[str]:
        """``"METHOD /path"`` of every request, with the real ids."""
        return [f"{r.method} {r.path}" for r in self.requests]

    def route_names(self) -> list[str]:
        """``"METHOD /templated/path"`` of every request (``{channel}``, ``{message}``...)."""
        return [f"{r.method} {r.route}" for r in self.requests]

    async def wait_for(
        self, method: str, path_contains: str, count: int = 1, timeout: float = 10.0
    ) -> list[Req]:
        """The requests matching method and path substring, once there are ``count`` of them."""

        def matching() -> list[Req]:
            return [
                r
                for r in self.requests
                if r.method == method.upper() and path_contains in r.path and r.status is not None
            ]

        await self._wait_until(
            lambda: len(matching()) >= count, timeout, f"{count}x {method} *{path_contains}*"
        )
        return matching()

    def fail_next(
        self,
        method: str,
        path_contains: str,
        *,
        status: int,
        code: int = 0,
        message: str = "",
        retry_after: float | None = None,
        times: int = 1,
        via: bool = True,
        is_global: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with an error, before any side effect.

        A 429 gets ``{"message": "You are being rate limited.", "retry_after", "global"}`` with
        ``Via`` and ``X-RateLimit-*`` headers, so discord.py sleeps and retries. ``via=False``
        models a Cloudflare ban instead (no ``Via``, HTML body): discord.py raises.
        """
        self._failures.append(
            _Failure(
                method.upper(),
                path_contains,
                status,
                code,
                message,
                retry_after,
                via,
                is_global,
                times,
            )
        )

    def fail_cdn(self, path_contains: str = "", *, status: int, times: int = 1) -> None:
        """Answer the next ``times`` CDN GETs whose path contains ``path_contains`` with
        ``status`` (a plain-text body, as the CDN's errors are)."""
        self._cdn_failures.append([path_contains, status, times])

    async def wait_ready(
        self, timeout: float = 10.0, *, shard: tuple[int, int] | None = None
    ) -> None:
        """IDENTIFY received and READY + GUILD_CREATE sent (the client's on_ready comes later,
        after its ``guild_ready_timeout``): on any connection, or on ``shard``'s."""

        def ready() -> bool:
            if shard is not None:
                session = self._sessions.get(shard)
                return session is not None and session.conn is not None
            return any(s.conn is not None for s in self._sessions.values())

        await self._wait_until(ready, timeout, f"gateway IDENTIFY / READY (shard {shard})")

    @property
    def shards(self) -> dict[tuple[int, int], str]:
        """The live sessions' ids by shard ``(id, count)``; ``(0, 1)`` is an unsharded one."""
        return {shard: session.id for shard, session in self._sessions.items()}

    def events(self, shard: tuple[int, int] = (0, 1)) -> list[str]:
        """The events sent to the live session of ``shard`` (or kept for its RESUME), in order,
        READY and GUILD_CREATE included."""
        session = self._sessions.get(shard)
        return [t for _, t, _ in session.log] if session is not None else []

    @property
    def guild_ids(self) -> list[int]:
        """Every guild the bot is in: the constructor's, then :meth:`add_guild`'s."""
        return [self.guild_id, *self.other_guilds]

    def add_guild(
        self,
        *,
        shard: tuple[int, int] | None = None,
        name: str = "Other Guild",
        channel_name: str = "general",
    ) -> tuple[int, int]:
        """Another guild the bot is in, with one text channel; ``(guild id, channel id)``.

        With ``shard=(id, count)`` the guild's id (a snowflake) is picked so that the guild
        is on that shard when the bot runs ``count`` shards. A connected session of that shard
        gets its GUILD_CREATE, as when the bot joins a guild.
        """
        guild_id = self._snowflake()
        if shard is not None:
            number, count = shard
            high = guild_id >> 22
            high += (number - high % count) % count
            guild_id = (high << 22) | (guild_id & ((1 << 22) - 1))
            self._last_snowflake = max(self._last_snowflake, guild_id)
        bot_role_id = self._snowflake()
        self.other_guilds[guild_id] = _Guild(
            id=guild_id,
            name=name,
            channel_id=self._snowflake(),
            channel_name=channel_name,
            bot_role_id=bot_role_id,
            roles={
                guild_id: {"name": "@everyone", "permissions": EVERYONE_PERMISSIONS},
                bot_role_id: {"name": self.bot_name, "permissions": None, "bot": True},
            },
        )
        if self._sessions:
            self._spawn(self._announce_guild(guild_id))
        return guild_id, self.other_guilds[guild_id].channel_id

    def add_role(self, name: str, permissions: int = 0, *, guild_id: int | None = None) -> int:
        """A new role in the guild (GUILD_ROLE_CREATE is pushed if a client is connected)."""
        guild_id = guild_id or self.guild_id
        role_id = self._snowflake()
        self._roles_of(guild_id)[role_id] = {"name": name, "permissions": permissions}
        if self._sessions:
            d = {"guild_id": str(guild_id), "role": self._role_json(role_id, guild_id)}
            self._spawn(self._dispatch("GUILD_ROLE_CREATE", d, intent=GUILDS))
        return role_id

    async def interaction(
        self,
        name: str,
        options: list[dict[str, Any]] | dict[str, Any] | None = None,
        *,
        user_id: int = 4001,
        subcommand: str | None = None,
        channel_id: int | None = None,
        type: int = APPLICATION_COMMAND,
        locale: str = "en-US",
    ) -> Interaction:
        """Push an INTERACTION_CREATE for ``/name`` as Discord would when a user runs it.

        ``options`` is Discord's option list, or a ``{name: value}`` dict (types inferred: str 3,
        int 4, bool 5, float 10, and a ``(filename, bytes)`` pair an uploaded file, type 11: its
        value is the attachment id, described in ``data.resolved.attachments`` and served by the
        CDN at a signed ephemeral-attachment link). ``data.guild_id`` is set when the command is
        a guild command (looked up in ``commands``; unknown commands count as guild commands).
        """
        self._require_session()
        channel_id = channel_id or self.channel_id
        guild_id = self._guild_of_channel(channel_id)
        opts = _options(options)
        resolved: dict[str, Any] = {}
        for opt in opts:
            if opt["type"] == ATTACHMENT and isinstance(opt["value"], tuple):
                (att,) = self._attachments(channel_id, [opt["value"]], ephemeral=True)
                self.uploaded[att["id"]] = att
                opt["value"] = str(att["id"])
                resolved[str(att["id"])] = {
                    **{k: v for k, v in att.items() if k != "data"},
                    "id": str(att["id"]),
                    "proxy_url": att["url"],  # media.discordapp.net, same path and query
                    "ephemeral": True,
                }
        if subcommand is not None:
            opts = [{"type": 1, "name": subcommand, "options": opts}]
        command_id, command_guild = self._command_lookup(name, guild_id)
        data: dict[str, Any] = {"id": str(command_id), "name": name, "type": 1}
        if opts:
            data["options"] = opts
        if resolved:
            data["resolved"] = {"attachments": resolved}
        if command_guild is not None:
            data["guild_id"] = str(command_guild)
        iid = self._snowflake()
        token = "aW50ZXJhY3Rpb246" + secrets.token_urlsafe(60)
        in_dm = guild_id is None
        payload: dict[str, Any] = {
            "id": str(iid),
            "application_id": str(self.app_id),
            "type": type,
            "data": data,
            "channel_id": str(channel_id),
            "channel": self._channel_json(channel_id, with_permissions=True),
            "token": token,
            "version": 1,
            "locale": locale,
            "entitlements": [],
            "entitlement_sku_ids": [],
            "app_permissions": str(self._bot_perms()),
            "attachment_size_limit": self.filesize_limit,
        }
        if in_dm:
            payload["user"] = self._user_json(user_id)
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": str(user_id)}
        else:
            payload["guild_id"] = str(guild_id)
            payload["guild"] = {"id": str(guild_id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            member = self._member_json(user_id, guild_id)
            member["permissions"] = str(self._perms_of(user_id, guild_id))
            payload["member"] = member
            payload["context"] = 0
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
        handle = Interaction(
            fake=self,
            id=iid,
            token=token,
            type=type,
            name=name,
            user_id=user_id,
            channel_id=channel_id,
            guild_id=guild_id,
            payload=payload,
        )
        self.interactions[iid] = handle
        self._by_token[token] = handle
        await self._dispatch("INTERACTION_CREATE", payload)
        return handle

    async def autocomplete(
        self,
        name: str,
        focused_option: str,
        value: str,
        *,
        options: list[dict[str, Any]] | dict[str, Any] | None = None,
        option_type: int = 3,
        user_id: int = 4001,
        subcommand: str | None = None,
        channel_id: int | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Push a type 4 interaction while the user types ``value``; return the bot's choices."""
        opts = _options(options)
        opts.append({"name": focused_option, "type": option_type, "value": value, "focused": True})
        handle = await self.interaction(
            name,
            opts,
            user_id=user_id,
            subcommand=subcommand,
            channel_id=channel_id,
            type=AUTOCOMPLETE,
        )
        body = await handle.responded(timeout)
        if body.get("type") != AUTOCOMPLETE_RESULT:
            raise AssertionError(f"expected an autocomplete result (type 8), got {body}")
        return list(body.get("data", {}).get("choices", []))

    async def react(
        self, message_id: int, emoji: str, *, user_id: int = 4001, channel_id: int | None = None
    ) -> None:
        """A user adds a reaction: MESSAGE_REACTION_ADD (kept for a RESUME if disconnected)."""
        self._require_session()
        msg = self._known_message(message_id, channel_id)
        users = msg["reactions"].setdefault(emoji, set())
        if user_id in users:
            return  # Discord sends nothing for a duplicate
        users.add(user_id)
        await self._dispatch_reaction("MESSAGE_REACTION_ADD", msg, emoji, user_id)

    async def unreact(
        self, message_id: int, emoji: str, *, user_id: int = 4001, channel_id: int | None = None
    ) -> None:
        """A user removes a reaction: MESSAGE_REACTION_REMOVE."""
        self._require_session()
        msg = self._known_message(message_id, channel_id)
        users = msg["reactions"].get(emoji, set())
        if user_id not in users:
            return
        users.discard(user_id)
        if not users:
            msg["reactions"].pop(emoji, None)
        await self._dispatch_reaction("MESSAGE_REACTION_REMOVE", msg, emoji, user_id)

    async def reconnect(
        self,
        *,
        op: int = 7,
        resumable: bool = False,
        wait: bool = True,
        timeout: float = 10.0,
        shard: int | None = None,
    ) -> None:
        """Send op 7 RECONNECT (the client resumes at ``resume_url``), or with ``op=9`` an
        INVALID_SESSION with ``d=resumable`` (false: the client IDENTIFYs again). With several
        shards connected, ``shard`` says whose connection."""
        before = self._handshakes
        await self._kick(op=op, resumable=resumable, shard=shard)
        if wait:
            await self._wait_until(lambda: self._handshakes > before, timeout, "reconnect")

    async def drop_connection(
        self,
        *,
        code: int | None = 4000,
        wait: bool = True,
        timeout: float = 10.0,
        shard: int | None = None,
    ) -> None:
        """Close the websocket from the server side (``code=None``: drop the TCP connection,
        the client sees 1006). The client reconnects and RESUMEs."""
        before = self._handshakes
        await self._kick(close_code=code, abort=code is None, shard=shard)
        if wait:
            await self._wait_until(lambda: self._handshakes > before, timeout, "reconnect")

    @contextlib.asynccontextmanager
    async def outage(
        self,
        *,
        op: int = 7,
        close_code: int | None = None,
        abort: bool = False,
        timeout: float = 10.0,
        shard: int | None = None,
    ) -> AsyncIterator[None]:
        """Disconnect the client and hold its way back in while the body runs: events pushed in
        the body are missed by the client, then replayed on its RESUME. The disconnect is op 7
        (or op 9, resumable), a server close with ``close_code``, or with ``abort`` a dropped TCP
        connection. On exit, wait until the client has resumed."""
        before = self._handshakes
        self._gate.clear()
        try:
            await self._kick(op=op, resumable=True, close_code=close_code, abort=abort, shard=shard)
            yield
        finally:
            self._gate.set()
        await self._wait_until(lambda: self._handshakes > before, timeout, "resume after outage")

    # ------------------------------------------------------------------ REST plumbing

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/"):
            return await handler(request)
        match = request.match_info
        route = request.path[len(API_PREFIX) :]
        if match.http_exception is None:
            route = match.route.resource.canonical[len(API_PREFIX) :]  # type: ignore[union-attr]
        req = Req(
            method=request.method,
            path=request.path[len(API_PREFIX) :],
            query=dict(request.query),
            json=None,
            files=[],
            headers=dict(request.headers),
            route=route,
            at=time.monotonic(),
        )
        self.requests.append(req)
        try:
            await self._parse_body(request, req)
            response = await self._serve(request, req, handler)
        except DiscordError as exc:
            response = _json(exc.body(), exc.status)
        req.status = response.status
        self._notify()
        return response

    async def _parse_body(self, request: web.Request, req: Req) -> None:
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                data = bytes(await part.read())  # type: ignore[union-attr]
                name = part.name or ""  # type: ignore[union-attr]
                if name == "payload_json":
                    req.json = _loads(data)
                elif part.filename is not None:  # type: ignore[union-attr]
                    req.files.append((part.filename, data))  # type: ignore[union-attr]
        else:
            raw = await request.read()
            if raw:
                req.json = _loads(raw)

    async def _serve(
        self, request: web.Request, req: Req, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None:
            status = match.http_exception.status
            raise DiscordError(status if status in (404, 405) else 404)
        needs_token = req.route != "/gateway" and not req.route.startswith(_NO_AUTH_PREFIXES)
        if needs_token and request.headers.get("Authorization") != f"Bot {self.token}":
            raise DiscordError(401)
        injected = self._injected(req)
        if injected is not None:
            return injected
        bucket = self._take_bucket(req, match)
        if isinstance(bucket, web.Response):
            return bucket
        for filename, data in req.files:
            if len(data) > self.filesize_limit:
                log.info(
                    "fake discord: %s is %d bytes > %d", filename, len(data), self.filesize_limit
                )
                raise DiscordError(413, 40005)
        request[_REQ] = req
        response = await handler(request)
        if bucket is not None:
            response.headers.update(bucket)
        return response

    def _injected(self, req: Req) -> web.Response | None:
        for failure in self._failures:
            if (
                failure.times > 0
                and failure.method == req.method
                and failure.path_contains in req.path
            ):
                failure.times -= 1
                break
        else:
            return None
        if failure.status != 429:
            return _json(
                DiscordError(failure.status, failure.code, failure.message).body(), failure.status
            )
        retry_after = 0.05 if failure.retry_after is None else failure.retry_after
        if not failure.via:  # what Cloudflare answers to a banned IP
            return web.Response(
                status=429,
                body=b"<html><body>error code: 1015</body></html>",
                headers={"Content-Type": "text/html", "Retry-After": str(math.ceil(retry_after))},
            )
        body = {
            "message": failure.message or "You are being rate limited.",
            "retry_after": retry_after,
            "global": failure.is_global,
        }
        if failure.code:
            body["code"] = failure.code
        headers = {
            "Via": "1.1 google",
            "Retry-After": str(math.ceil(retry_after)),
            "X-RateLimit-Scope": "global" if failure.is_global else "user",
        }
        if failure.is_global:
            headers["X-RateLimit-Global"] = "true"
        else:
            headers.update(
                {
                    "X-RateLimit-Limit": "1",
                    "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": f"{time.time() + retry_after:.3f}",
                    "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                    "X-RateLimit-Bucket": _bucket_hash(f"{req.method} {req.route}"),
                }
            )
        return _json(body, 429, headers)

    def _take_bucket(self, req: Req, match: Any) -> dict[str, str] | web.Response | None:
        """A per-route, per-major-parameter window bucket; its state goes in the headers."""
        name = f"{req.method} {req.route}"
        if name in _NOT_RATE_LIMITED:
            return None
        limit, per = self.ratelimits.get(name, self.default_ratelimit)
        major = "+".join(str(match[k]) for k in ("channel", "guild", "app", "token") if k in match)
        now = time.monotonic()
        state = self._buckets.setdefault((name, major), [float(limit), now + per, limit, per])
        if now >= state[1] or (state[2], state[3]) != (limit, per):  # new window or new rule
            state[:] = [float(limit), now + per, limit, per]
        reset_after = max(state[1] - now, 0.0)
        headers = {
            "X-RateLimit-Limit": str(limit),
            "X-RateLimit-Remaining": str(max(int(state[0]) - 1, 0)),
            "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
            "X-RateLimit-Reset-After": f"{reset_after:.3f}",
            "X-RateLimit-Bucket": _bucket_hash(name),
        }
        if state[0] <= 0:
            body = {
                "message": "You are being rate limited.",
                "retry_after": round(reset_after, 3),
                "global": False,
            }
            headers.update(
                {
                    "X-RateLimit-Remaining": "0",
                    "Via": "1.1 google",
                    "Retry-After": str(math.ceil(reset_after)),
                    "X-RateLimit-Scope": "user",
                }
            )
            return _json(body, 429, headers)
        state[0] -= 1
        return headers

    # ------------------------------------------------------------------ REST: identity

    async def _get_me(self, request: web.Request) -> web.Response:
        me = self._user_json(self.bot_user_id)
        me.update({"verified": True, "mfa_enabled": False, "locale": "en-US", "email": None})
        return _json(me)

    async def _get_user(self, request: web.Request) -> web.Response:
        uid = _snowflake_arg(request, "user", 10013)
        if uid != self.bot_user_id and uid not in self.users:
            raise DiscordError(404, 10013)
        return _json(self._user_json(uid))

    async def _get_application(self, request: web.Request) -> web.Response:
        return _json(
            {
                "id": str(self.app_id),
                "name": self.bot_name,
                "icon": None,
                "description": "",
                "summary": "",
                "type": None,
                "hook": True,
                "bot_public": True,
                "bot_require_code_grant": False,
                "verify_key": "a" * 64,
                "owner": self._user_json(self.owner_id),
                "team": None,
                "flags": self._app_flags(),
                "bot": self._user_json(self.bot_user_id),
                "interactions_endpoint_url": None,
                "redirect_uris": [],
                "tags": [],
                "approximate_guild_count": len(self.guild_ids),
                "integration_types_config": {"0": {}},
            }
        )

    async def _get_gateway(self, request: web.Request) -> web.Response:
        return _json({"url": self.gateway_url.rstrip("/")})

    async def _get_gateway_bot(self, request: web.Request) -> web.Response:
        shards = self.recommended_shards or max(1, math.ceil(len(self.guild_ids) / 1000))
        return _json(
            {
                "url": self.gateway_url.rstrip("/"),
                "shards": shards,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000 - self.identifies,
                    "reset_after": 86_400_000,
                    "max_concurrency": 1,
                },
            }
        )

    def _guild_arg(self, request: web.Request) -> int:
        guild_id = _snowflake_arg(request, "guild", 10004)
        if guild_id not in self.guild_ids:
            raise DiscordError(404, 10004)
        return guild_id

    async def _get_member(self, request: web.Request) -> web.Response:
        guild_id = self._guild_arg(request)
        uid = _snowflake_arg(request, "user", 10007)
        if uid != self.bot_user_id and uid not in self.users:
            raise DiscordError(404, 10007)
        return _json(self._member_json(uid, guild_id))

    async def _get_roles(self, request: web.Request) -> web.Response:
        guild_id = self._guild_arg(request)
        return _json([self._role_json(rid, guild_id) for rid in self._roles_of(guild_id)])

    # ------------------------------------------------------------------ REST: commands

    def _commands_key(self, request: web.Request) -> str:
        if _snowflake_arg(request, "app", 0) != self.app_id:
            raise DiscordError(403, 50001)
        if "guild" not in request.match_info:
            return "global"
        guild_id = self._guild_arg(request)
        if not self.commands_scope:
            raise DiscordError(403, 50001)
        return f"guild:{guild_id}"

    async def _put_commands(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        key = self._commands_key(request)
        body = req.json
        if not isinstance(body, list):
            raise _form_error("_errors", "BASE_TYPE_ARRAY", "Must be an array.")
        previous = {c["name"]: c["id"] for c in self.commands.get(key, [])}
        echoed = []
        for index, command in enumerate(body):
            name, ctype = command.get("name", ""), command.get("type", 1)
            if not (1 <= len(name) <= 32) or (ctype == 1 and name != name.lower()):
                raise _form_error(
                    f"{index}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name"
                )
            description = command.get("description", "")
            if ctype == 1 and not (1 <= len(description) <= 100):
                raise _form_error(
                    f"{index}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            if ctype == 1:
                _check_options(command.get("options") or [], f"{index}.options")
            out = {
                "id": previous.get(name) or str(self._snowflake()),
                "application_id": str(self.app_id),
                "version": str(self._snowflake()),
                "default_member_permissions": None,
                "type": ctype,
                "nsfw": False,
                **command,
            }
            if key != "global":
                out["guild_id"] = key.removeprefix("guild:")
            echoed.append(out)
        self.commands[key] = echoed
        return _json(echoed)

    async def _get_commands(self, request: web.Request) -> web.Response:
        return _json(self.commands.get(self._commands_key(request), []))

    def _command_lookup(self, name: str, guild_id: int | None) -> tuple[int, int | None]:
        for command in self.commands.get(f"guild:{guild_id}", []):
            if command["name"] == name:
                return int(command["id"]), guild_id
        for command in self.commands.get("global", []):
            if command["name"] == name:
                return int(command["id"]), None
        return self._snowflake(), guild_id

    # ------------------------------------------------------------------ REST: interactions

    async def _callback(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        it = self.interactions.get(_snowflake_arg(request, "id", 10062))
        if it is None or it.token != request.match_info["token"]:
            raise DiscordError(404, 10062)
        if it.callbacks:
            raise DiscordError(400, 40060)
        if (
            self.interaction_timeout is not None
            and time.monotonic() - it.created > self.interaction_timeout
        ):
            raise DiscordError(404, 10062)
        body = req.json if isinstance(req.json, dict) else {}
        cb_type = body.get("type")
        if cb_type not in _CALLBACKS_FOR.get(it.type, set()):
            raise _form_error("type", "INTERACTION_RESPONSE_TYPE_INVALID", "Invalid response type")
        data = body.get("data") or {}
        message = None
        if cb_type == CHANNEL_MESSAGE_WITH_SOURCE:
            _check_message(data, req.files)
            message = self._create_message(
                it.channel_id,
                data,
                req.files,
                interaction=it,
                flags=data.get("flags", 0) & EPHEMERAL,
            )
        elif cb_type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE:
            flags = LOADING | (data.get("flags", 0) & EPHEMERAL)
            message = self._create_message(
                it.channel_id, {"content": ""}, [], interaction=it, flags=flags
            )
            it.loading = True
        elif cb_type == AUTOCOMPLETE_RESULT:
            choices = data.get("choices", [])
            if len(choices) > 25:
                raise _form_error(
                    "data.choices", "BASE_TYPE_BAD_LENGTH", "Must be 25 or fewer in length."
                )
        it.callbacks.append(body)
        if message is not None:
            it.original_id = message["id"]
            await self._announce_create(message)
        self._notify()
        if req.query.get("with_response", "").lower() not in ("1", "true"):
            return web.Response(status=204)
        answer: dict[str, Any] = {
            "interaction": {
                "id": str(it.id),
                "type": it.type,
                "response_message_loading": cb_type == DEFERRED_CHANNEL_MESSAGE_WITH_SOURCE,
                "response_message_ephemeral": bool(message and message["flags"] & EPHEMERAL),
            },
            "resource": {"type": cb_type},
        }
        if message is not None:
            answer["interaction"]["response_message_id"] = str(message["id"])
        if cb_type == CHANNEL_MESSAGE_WITH_SOURCE and message is not None:
            answer["resource"]["message"] = self._message_json(message)
        return _json(answer)

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        it = self._by_token.get(request.match_info["token"])
        app_ok = request.match_info["app"] == str(self.app_id)
        if not app_ok or it is None or not it.callbacks or it.type == AUTOCOMPLETE:
            raise DiscordError(404, 10015)
        if it.expired:
            raise DiscordError(401, 50027)
        return it

    async def _followup(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        it = self._webhook_interaction(request)
        payload = req.json if isinstance(req.json, dict) else {}
        _check_message(payload, req.files)
        original = self.messages.get(it.original_id or 0)
        if it.loading and original is not None:  # the first followup replaces "thinking..."
            it.loading = False
            self._apply_edit(original, payload, req.files, edited=False)
            original["flags"] &= ~LOADING
            message = original
            await self._announce_update(message)
        else:
            flags = payload.get("flags", 0) & EPHEMERAL
            message = self._create_message(
                it.channel_id, payload, req.files, interaction=it, flags=flags
            )
            await self._announce_create(message)
        it.followups.append(message["id"])
        self._notify()
        if req.query.get("wait", "").lower() in ("1", "true"):
            return _json(self._message_json(message))
        return web.Response(status=204)

    async def _webhook_message(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        it = self._webhook_interaction(request)
        raw_id = request.match_info["message"]
        mid = it.original_id if raw_id == "@original" else _int(raw_id)
        message = self.messages.get(mid or 0)
        if message is None or message.get("interaction_id") != it.id:
            raise DiscordError(404, 10008)
        if req.method == "GET":
            return _json(self._message_json(message))
        if req.method == "DELETE":
            await self._remove_message(message)
            return web.Response(status=204)
        payload = req.json if isinstance(req.json, dict) else {}
        _check_message(payload, req.files, edit=True)
        self._apply_edit(message, payload, req.files)
        if message["flags"] & LOADING:
            message["flags"] &= ~LOADING
            it.loading = False
        await self._announce_update(message)
        self._notify()
        return _json(self._message_json(message))

    # ------------------------------------------------------------------ REST: channels

    async def _get_channel(self, request: web.Request) -> web.Response:
        cid = _snowflake_arg(request, "channel", 10003)
        self._channel_kind(cid)
        return _json(self._channel_json(cid, with_guild_id=True))

    async def _typing(self, request: web.Request) -> web.Response:
        cid = _snowflake_arg(request, "channel", 10003)
        self._require(cid, SEND_MESSAGES)
        return web.Response(status=204)

    async def _post_message(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        cid = _snowflake_arg(request, "channel", 10003)
        kind = self._channel_kind(cid)
        payload = req.json if isinstance(req.json, dict) else {}
        if kind == "dm":
            if self.dm_channels[cid] in self.dm_blocked:
                raise DiscordError(403, 50007)
        else:
            needed = SEND_MESSAGES_IN_THREADS if kind == "thread" else SEND_MESSAGES
            self._require(cid, needed | (ATTACH_FILES if req.files else 0))
        _check_message(payload, req.files)
        reference = payload.get("message_reference")
        if reference:
            ref_id = _int(reference.get("message_id"))
            ref = self.messages.get(ref_id or 0)
            if ref is None or ref["channel_id"] != cid:
                if reference.get("fail_if_not_exists", True):
                    raise _form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
                reference = None
        nonce = payload.get("nonce")
        if nonce is not None and len(str(nonce)) > 25:
            raise _form_error("nonce", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        if nonce is not None and payload.get("enforce_nonce"):
            # Discord: the same author's message with this nonce in the past few minutes is
            # returned, and no new one is made.
            earlier = self._nonces.get((self.bot_user_id, str(nonce)))
            if earlier is not None and time.monotonic() - earlier[1] < NONCE_WINDOW_S:
                known = self.messages.get(earlier[0])
                if known is not None:
                    return _json(self._message_json(known))
        message = self._create_message(cid, payload, req.files, reference=reference)
        if nonce is not None:
            self._nonces[(self.bot_user_id, str(nonce))] = (message["id"], time.monotonic())
        if kind == "dm":
            self.dms.setdefault(self.dm_channels[cid], []).append(message["content"])
        await self._announce_create(message)
        self._notify()
        return _json(self._message_json(message))

    async def _get_message(self, request: web.Request) -> web.Response:
        message = self._message_in(request)
        self._require(message["channel_id"], READ_MESSAGE_HISTORY)
        return _json(self._message_json(message))

    async def _edit_message(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        message = self._message_in(request)
        if message["author_id"] != self.bot_user_id:
            raise DiscordError(403, 50005)
        payload = req.json if isinstance(req.json, dict) else {}
        _check_message(payload, req.files, edit=True)
        self._apply_edit(message, payload, req.files)
        await self._announce_update(message)
        self._notify()
        return _json(self._message_json(message))

    async def _delete_message(self, request: web.Request) -> web.Response:
        message = self._message_in(request)
        if message["author_id"] != self.bot_user_id:
            self._require(message["channel_id"], MANAGE_MESSAGES)
        await self._remove_message(message)
        self._notify()
        return web.Response(status=204)

    async def _react(self, request: web.Request) -> web.Response:
        if self.reaction_pace_s:
            await asyncio.sleep(self.reaction_pace_s)
        message = self._message_in(request)
        emoji = request.match_info["emoji"]
        if not self._valid_emoji(emoji):
            raise DiscordError(400, 10014)
        if message["flags"] & EPHEMERAL:
            raise DiscordError(404, 10008)
        users = message["reactions"].get(emoji)
        needed = READ_MESSAGE_HISTORY | (0 if users else ADD_REACTIONS)
        self._require(message["channel_id"], needed)
        if users is None and len(message["reactions"]) >= 20:
            raise DiscordError(400, 30010)
        users = message["reactions"].setdefault(emoji, set())
        if self.bot_user_id not in users:
            users.add(self.bot_user_id)
            await self._dispatch_reaction("MESSAGE_REACTION_ADD", message, emoji, self.bot_user_id)
        self._notify()
        return web.Response(status=204)

    async def _unreact(self, request: web.Request) -> web.Response:
        message = self._message_in(request)
        emoji = request.match_info["emoji"]
        if not self._valid_emoji(emoji):
            raise DiscordError(400, 10014)
        users = message["reactions"].get(emoji, set())
        if self.bot_user_id in users:
            users.discard(self.bot_user_id)
            if not users:
                message["reactions"].pop(emoji, None)
            await self._dispatch_reaction(
                "MESSAGE_REACTION_REMOVE", message, emoji, self.bot_user_id
            )
        self._notify()
        return web.Response(status=204)

    async def _create_thread(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        message = self._message_in(request)
        parent = message["channel_id"]
        if self._channel_kind(parent) != "text":
            raise DiscordError(400, 50024)
        if message.get("thread_id") is not None:
            raise DiscordError(400, 160004)
        self._require(parent, CREATE_PUBLIC_THREADS)
        body = req.json if isinstance(req.json, dict) else {}
        name = body.get("name") or ""
        if not 1 <= len(name) <= 100:
            raise _form_error(
                "name", "BASE_TYPE_BAD_LENGTH", "Must be between 1 and 100 in length."
            )
        duration = body.get("auto_archive_duration") or 1440
        if duration not in _ARCHIVE_DURATIONS:
            raise _form_error(
                "auto_archive_duration",
                "BASE_TYPE_CHOICES",
                "Value must be one of {60, 1440, 4320, 10080}.",
            )
        tid = message["id"]
        self.threads[tid] = {
            "id": tid,
            "name": name,
            "parent_id": parent,
            "owner_id": self.bot_user_id,
            "messages": [],
            "auto_archive_duration": duration,
            "created_at": _iso(),
            "archived": False,
            "locked": False,
        }
        message["thread_id"] = tid
        thread = self._thread_json(tid, with_member=True)
        await self._dispatch("THREAD_CREATE", {**thread, "newly_created": True}, intent=GUILDS)
        self._notify()
        return _json(thread, 201)

    async def _create_dm(self, request: web.Request) -> web.Response:
        req = request[_REQ]
        body = req.json if isinstance(req.json, dict) else {}
        uid = _int(body.get("recipient_id"))
        if uid is None or uid not in self.users:
            raise DiscordError(400, 50033)
        cid = next((c for c, u in self.dm_channels.items() if u == uid), None)
        if cid is None:
            cid = self._snowflake()
            self.dm_channels[cid] = uid
        return _json(self._channel_json(cid))

    async def _cdn(self, request: web.Request) -> web.Response:
        response = self._cdn_answer(request)
        self.cdn_requests.append((request.path, response.status))
        self._notify()
        return response

    def _cdn_answer(self, request: web.Request) -> web.Response:
        for failure in self._cdn_failures:
            if failure[2] > 0 and failure[0] in request.path:
                failure[2] -= 1
                return web.Response(status=failure[1], text=_REASONS.get(failure[1], "Error"))
        att_id = _int(request.match_info["attachment"])
        if request.path.startswith("/ephemeral-attachments/"):
            att = self.uploaded.get(att_id or 0)
            if att is None or not self._signed(request):
                return web.Response(status=404, text=CDN_GONE)
            return web.Response(body=att["data"], headers={"Content-Type": att["content_type"]})
        for message in self.messages.values():
            for att in message["attachments"]:
                if att["id"] == att_id:
                    return web.Response(body=att["data"], content_type=att["content_type"])
        return web.Response(status=404, text="404: Not Found")

    def _signature(self, path: str, expires: str, issued: str) -> str:
        message = f"{path}|{expires}|{issued}".encode()
        return hmac.new(self._cdn_key, message, hashlib.sha256).hexdigest()

    def _signed(self, request: web.Request) -> bool:
        """The link's ``hm`` signs its path, ``ex`` and ``is``, and ``ex`` is still ahead."""
        expires, issued = request.query.get("ex", ""), request.query.get("is", "")
        expected = self._signature(request.path, expires, issued)
        if not hmac.compare_digest(request.query.get("hm", ""), expected):
            return False
        try:
            return int(expires, 16) > time.time()
        except ValueError:
            return False

    # ------------------------------------------------------------------ gateway

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Conn(ws=ws, request=request, path=request.path)
        self.connections.append(request.path_qs)
        self._conns.add(conn)
        try:
            hello = {
                "op": 10,
                "d": {"heartbeat_interval": self.heartbeat_interval_ms},
                "s": None,
                "t": None,
            }
            await ws.send_str(_dumps(hello))
            async for msg in ws:
                if msg.type is not WSMsgType.TEXT:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                try:
                    frame = json.loads(msg.data)
                except ValueError:
                    await ws.close(code=4002, message=b"Error while decoding payload.")
                    break
                self.gateway_frames.append(frame)
                if not await self._on_frame(conn, frame):
                    break
        finally:
            self._conns.discard(conn)
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
            self._notify()
        return ws

    async def _on_frame(self, conn: _Conn, frame: dict[str, Any]) -> bool:
        op, d = frame.get("op"), frame.get("d")
        if op == 1:
            self.heartbeats += 1
            if self.ack_heartbeats:
                await _send(conn, {"op": 11, "d": None, "s": None, "t": None})
            return True
        if op == 2:
            return await self._on_identify(conn, d or {})
        if op == 6:
            return await self._on_resume(conn, d or {})
        if op in (3, 4, 8):  # presence, voice state, request members: accepted, not modelled
            return True
        await conn.ws.close(code=4001, message=b"Unknown opcode.")
        return False

    async def _on_identify(self, conn: _Conn, d: dict[str, Any]) -> bool:
        await self._gate.wait()
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return False
        if d.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return False
        intents = d.get("intents")
        if not isinstance(intents, int) or intents < 0 or intents >= 1 << 26:
            await conn.ws.close(code=4013, message=b"Invalid intent(s).")
            return False
        if intents & PRIVILEGED_INTENTS & ~self.privileged_intents:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return False
        shard = _shard(d.get("shard", [0, 1]))
        if shard is None:
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return False
        session = _Session(id=secrets.token_hex(16), intents=intents, shard=shard)
        guild_ids = [g for g in self.guild_ids if session.receives(g)]
        if len(guild_ids) > self.max_guilds_per_session:
            await conn.ws.close(code=4011, message=b"Sharding required.")
            return False
        self.identify = d
        self.identifies += 1
        old = self._sessions.get(shard)
        self._sessions[shard] = session
        if old is not None and old.conn is not None and old.conn is not conn:
            old.conn.draining = True
        async with session.lock:
            conn.session = session
            session.conn = conn
            ready = {
                "v": 10,
                "user": {
                    **self._user_json(self.bot_user_id),
                    "verified": True,
                    "mfa_enabled": False,
                },
                "session_id": session.id,
                "session_type": "normal",
                "resume_gateway_url": self.resume_url,
                "guilds": [{"id": str(g), "unavailable": True} for g in guild_ids],
                "application": {"id": str(self.app_id), "flags": self._app_flags()},
                "private_channels": [],
                "relationships": [],
                "presences": [],
                "guild_join_requests": [],
                "geo_ordered_rtc_regions": ["us-east"],
                "user_settings": {},
                "_trace": ['["fake-discord-gateway",{"micros":0}]'],
            }
            if "shard" in d:
                ready["shard"] = list(shard)
            await self._send_dispatch(session, "READY", ready)
            for guild_id in guild_ids:
                guild = self._guild_json(intents, guild_id)
                await self._send_dispatch(session, "GUILD_CREATE", guild)
        self._handshakes += 1
        self._notify()
        return True

    async def _on_resume(self, conn: _Conn, d: dict[str, Any]) -> bool:
        await self._gate.wait()
        session = next((s for s in self._sessions.values() if s.id == d.get("session_id")), None)
        if d.get("token") != self.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return False
        if session is None or d.get("session_id") != session.id:
            await _send(conn, {"op": 9, "d": False, "s": None, "t": None})
            return True
        seq = d.get("seq") or 0
        self.resumes += 1
        async with session.lock:
            old = session.conn
            if old is not None and old is not conn:
                old.draining = True
            conn.session = session
            session.conn = conn
            for s, t, data in session.log:
                if s > seq:
                    self.replayed.append(t)
                    await _send(conn, {"op": 0, "t": t, "s": s, "d": data})
            session.seq += 1
            await _send(
                conn, {"op": 0, "t": "RESUMED", "s": session.seq, "d": {"_trace": ["fake"]}}
            )
        self._handshakes += 1
        self._notify()
        return True

    async def _kick(
        self,
        *,
        op: int | None = None,
        resumable: bool = False,
        close_code: int | None = None,
        abort: bool = False,
        shard: int | None = None,
    ) -> None:
        """Send op 7 / op 9, close the websocket with ``close_code``, or drop the TCP link."""
        session = self._session_of(shard)
        conn = session.conn if session is not None else None
        if conn is None:
            raise RuntimeError("no client is connected to the fake gateway")
        conn.draining = True
        if abort:
            transport = conn.request.transport
            if transport is not None:
                transport.abort()
        elif close_code is not None:
            self._spawn(conn.ws.close(code=close_code, message=b"fake close"))
        elif op in (7, 9):
            if op == 9 and not resumable:  # the client must IDENTIFY again
                self._sessions.pop(session.shard, None)
            frame = {"op": op, "d": resumable if op == 9 else None, "s": None, "t": None}
            await _send(conn, frame)
        else:
            raise ValueError(f"op must be 7 or 9, not {op}")

    async def _dispatch(self, t: str, d: dict[str, Any], *, intent: int = 0) -> None:
        """Number and log the event in each session of the shard of its ``guild_id`` (no
        guild: shard 0), and send it unless that session's client is away (then it waits for
        a RESUME). A session whose identified intents don't include ``intent`` gets nothing."""
        guild_id = _int(d.get("guild_id"))
        sessions = [
            s
            for s in list(self._sessions.values())
            if s.receives(guild_id) and not (intent and not s.intents & intent)
        ]
        if sessions:
            self.dispatched.append((t, d))
        for session in sessions:
            async with session.lock:
                await self._send_dispatch(session, t, d)

    async def _announce_guild(self, guild_id: int) -> None:
        """GUILD_CREATE to the sessions of the guild's shard (the bot joined it)."""
        for session in list(self._sessions.values()):
            if session.receives(guild_id) and session.intents & GUILDS:
                guild = self._guild_json(session.intents, guild_id)
                self.dispatched.append(("GUILD_CREATE", guild))
                async with session.lock:
                    await self._send_dispatch(session, "GUILD_CREATE", guild)

    async def _send_dispatch(self, session: _Session, t: str, d: dict[str, Any]) -> None:
        session.seq += 1
        session.log.append((session.seq, t, d))
        conn = session.conn
        if conn is not None and not conn.draining:
            await _send(conn, {"op": 0, "t": t, "s": session.seq, "d": d})

    async def _dispatch_reaction(
        self, t: str, msg: dict[str, Any], emoji: str, user_id: int
    ) -> None:
        d: dict[str, Any] = {
            "user_id": str(user_id),
            "type": 0,
            "message_id": str(msg["id"]),
            "channel_id": str(msg["channel_id"]),
            "emoji": _emoji_json(emoji),
            "burst": False,
        }
        if t == "MESSAGE_REACTION_ADD":
            d["message_author_id"] = str(msg["author_id"])
            d["burst_colors"] = []
        if msg["guild_id"] is not None:
            d["guild_id"] = str(msg["guild_id"])
            if t == "MESSAGE_REACTION_ADD":
                d["member"] = self._member_json(user_id, msg["guild_id"])
            intent = GUILD_MESSAGE_REACTIONS
        else:
            intent = DIRECT_MESSAGE_REACTIONS
        await self._dispatch(t, d, intent=intent)

    async def _announce_create(self, message: dict[str, Any]) -> None:
        if message["flags"] & EPHEMERAL:
            return
        await self._dispatch(
            "MESSAGE_CREATE", self._gateway_message(message), intent=self._message_intent(message)
        )

    async def _announce_update(self, message: dict[str, Any]) -> None:
        if message["flags"] & EPHEMERAL:
            return
        await self._dispatch(
            "MESSAGE_UPDATE", self._gateway_message(message), intent=self._message_intent(message)
        )

    async def _remove_message(self, message: dict[str, Any]) -> None:
        self.messages.pop(message["id"], None)
        thread = self.threads.get(message["channel_id"])
        if thread is not None and message["id"] in thread["messages"]:
            thread["messages"].remove(message["id"])
        if message["flags"] & EPHEMERAL:
            return
        d = {"id": str(message["id"]), "channel_id": str(message["channel_id"])}
        if message["guild_id"] is not None:
            d["guild_id"] = str(message["guild_id"])
        await self._dispatch("MESSAGE_DELETE", d, intent=self._message_intent(message))

    def _message_intent(self, message: dict[str, Any]) -> int:
        return GUILD_MESSAGES if message["guild_id"] is not None else DIRECT_MESSAGES

    def _gateway_message(self, message: dict[str, Any]) -> dict[str, Any]:
        d = self._message_json(message)
        if message["guild_id"] is not None:
            d["guild_id"] = str(message["guild_id"])
            member = self._member_json(message["author_id"], message["guild_id"])
            member.pop("user")
            d["member"] = member
        return d

    # ------------------------------------------------------------------ model

    def _create_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        *,
        interaction: Interaction | None = None,
        flags: int = 0,
        reference: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        kind = self._channel_kind(channel_id)
        guild_id = self._guild_of_channel(channel_id)
        mid = self._snowflake()
        message: dict[str, Any] = {
            "id": mid,
            "channel_id": channel_id,
            "guild_id": guild_id,
            "content": payload.get("content") or "",
            "attachments": [],
            "embeds": list(payload.get("embeds") or []),
            "components": list(payload.get("components") or []),
            "reactions": {},
            "author_id": self.bot_user_id,
            "flags": flags | (payload.get("flags", 0) & ~(EPHEMERAL | LOADING)),
            "type": 0,
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": bool(payload.get("tts")),
            "message_reference": None,
        }
        if interaction is not None:
            message.update(
                webhook_id=self.app_id,
                application_id=self.app_id,
                interaction_id=interaction.id,
                type=20 if interaction.original_id is None else 0,
            )
        if reference:
            message["type"] = 19
            message["message_reference"] = {
                "type": 0,
                "message_id": str(reference["message_id"]),
                "channel_id": str(channel_id),
                **({"guild_id": str(guild_id)} if guild_id is not None else {}),
            }
        message["attachments"] = self._attachments(channel_id, files)
        self.messages[mid] = message
        if kind == "thread":
            thread = self.threads[channel_id]
            thread["messages"].append(mid)
            message["position"] = len(thread["messages"]) - 1
        if self.on_message is not None:
            self.on_message(message)
        return message

    def _apply_edit(
        self,
        message: dict[str, Any],
        payload: dict[str, Any],
        files: list[tuple[str, bytes]],
        *,
        edited: bool = True,
    ) -> None:
        if "content" in payload:
            message["content"] = payload["content"] or ""
        if "embeds" in payload:
            message["embeds"] = list(payload["embeds"] or [])
        if "components" in payload:
            message["components"] = list(payload["components"] or [])
        if "attachments" in payload:
            keep = {_int(a.get("id")) for a in payload["attachments"] or []}
            kept = [a for a in message["attachments"] if a["id"] in keep]
            message["attachments"] = kept + self._attachments(message["channel_id"], files)
        elif files:
            message["attachments"] += self._attachments(message["channel_id"], files)
        if "flags" in payload and payload["flags"] is not None:
            message["flags"] = (message["flags"] & (EPHEMERAL | LOADING)) | (
                payload["flags"] & ~(EPHEMERAL | LOADING)
            )
        if edited:
            message["edited_timestamp"] = _iso()

    def _attachments(
        self, channel_id: int, files: list[tuple[str, bytes]], *, ephemeral: bool = False
    ) -> list[dict[str, Any]]:
        """Attachment objects for uploaded files. A person's upload with a slash command is
        ``ephemeral``: its type is what the name says (the client declares it), its link is
        signed and expires; the bot's uploads are typed from their bytes."""
        out = []
        for filename, data in files:
            att_id = self._snowflake()
            path = f"/{channel_id}/{att_id}/{filename}"
            if ephemeral:
                path = f"/ephemeral-attachments{path}"
                issued = f"{int(time.time()):x}"
                expires = f"{int(time.time() + self.cdn_ttl_s):x}"
                signature = self._signature(path, expires, issued)
                link = urllib.parse.quote(path)
                url = f"{self._host}{link}?ex={expires}&is={issued}&hm={signature}&"
                kind = mimetypes.guess_type(filename)[0] or _content_type(filename, data)
            else:
                url = f"{self._cdn_base}{path}"
                kind = _content_type(filename, data)
            att: dict[str, Any] = {
                "id": att_id,
                "filename": filename,
                "size": len(data),
                "content_type": kind,
                "data": data,
                "url": url,
            }
            size = _image_size(data)
            if size is not None:
                att["width"], att["height"] = size
            out.append(att)
        return out

    def _message_json(self, m: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": str(m["id"]),
            "channel_id": str(m["channel_id"]),
            "author": self._user_json(m["author_id"]),
            "content": m["content"],
            "timestamp": m["timestamp"],
            "edited_timestamp": m["edited_timestamp"],
            "tts": m["tts"],
            "mention_everyone": False,
            "mentions": [],
            "mention_roles": [],
            "attachments": [
                {k: (str(v) if k == "id" else v) for k, v in a.items() if k != "data"}
                | {"proxy_url": a["url"]}
                for a in m["attachments"]
            ],
            "embeds": m["embeds"],
            "components": m["components"],
            "reactions": [
                {
                    "emoji": _emoji_json(emoji),
                    "count": len(users),
                    "count_details": {"burst": 0, "normal": len(users)},
                    "burst_colors": [],
                    "me_burst": False,
                    "burst_me": False,
                    "me": self.bot_user_id in users,
                    "burst_count": 0,
                }
                for emoji, users in m["reactions"].items()
            ],
            "pinned": False,
            "type": m["type"],
            "flags": m["flags"],
        }
        if m.get("webhook_id") is not None:
            out["webhook_id"] = str(m["webhook_id"])
            out["application_id"] = str(m["application_id"])
        if m.get("interaction_id") is not None:
            it = self.interactions[m["interaction_id"]]
            out["interaction_metadata"] = {
                "id": str(it.id),
                "type": it.type,
                "name": it.name,
                "command_type": 1,
                "user": self._user_json(it.user_id),
                "authorizing_integration_owners": it.payload.get(
                    "authorizing_integration_owners", {}
                ),
            }
        if m["message_reference"] is not None:
            out["message_reference"] = m["message_reference"]
            ref = self.messages.get(int(m["message_reference"]["message_id"]))
            out["referenced_message"] = None if ref is None else self._message_json(ref)
        if "position" in m:
            out["position"] = m["position"]
        if m.get("thread_id") in self.threads:
            out["thread"] = self._thread_json(m["thread_id"], with_member=False)
        return out

    def _known_message(self, message_id: int, channel_id: int | None) -> dict[str, Any]:
        msg = self.messages.get(message_id)
        if msg is None or (channel_id is not None and msg["channel_id"] != channel_id):
            raise KeyError(f"the fake has no message {message_id} (channel {channel_id})")
        return msg

    def _message_in(self, request: web.Request) -> dict[str, Any]:
        cid = _snowflake_arg(request, "channel", 10003)
        self._channel_kind(cid)
        message = self.messages.get(_snowflake_arg(request, "message", 10008))
        if message is None or message["channel_id"] != cid:
            raise DiscordError(404, 10008)
        return message

    def _channel_kind(self, cid: int) -> str:
        if cid == self.channel_id or any(g.channel_id == cid for g in self.other_guilds.values()):
            return "text"
        if cid in self.threads:
            return "thread"
        if cid in self.dm_channels:
            return "dm"
        raise DiscordError(404, 10003)

    def _channel_json(
        self, cid: int, *, with_guild_id: bool = False, with_permissions: bool = False
    ) -> dict[str, Any]:
        kind = self._channel_kind(cid)
        if kind == "thread":
            out = self._thread_json(cid, with_member=False)
        elif kind == "dm":
            out = {
                "id": str(cid),
                "type": DM,
                "last_message_id": self._last_message_id(cid),
                "flags": 0,
                "recipients": [self._user_json(self.dm_channels[cid])],
            }
        else:
            guild_id = self._guild_of_channel(cid)
            other = self.other_guilds.get(guild_id or 0)
            out = {
                "id": str(cid),
                "type": GUILD_TEXT,
                "name": self.channel_name if other is None else other.channel_name,
                "position": 0,
                "permission_overwrites": [],
                "parent_id": None,
                "topic": None,
                "nsfw": False,
                "last_message_id": self._last_message_id(cid),
                "rate_limit_per_user": 0,
                "flags": 0,
            }
            if with_guild_id or with_permissions:
                out["guild_id"] = str(guild_id)
        if with_permissions and kind != "dm":
            out["permissions"] = str(self._bot_perms())
        return out

    def _thread_json(self, tid: int, *, with_member: bool) -> dict[str, Any]:
        t = self.threads[tid]
        out: dict[str, Any] = {
            "id": str(tid),
            "guild_id": str(self._guild_of_channel(t["parent_id"])),
            "parent_id": str(t["parent_id"]),
            "owner_id": str(t["owner_id"]),
            "type": PUBLIC_THREAD,
            "name": t["name"],
            "last_message_id": self._last_message_id(tid),
            "message_count": len(t["messages"]),
            "total_message_sent": len(t["messages"]),
            "member_count": 1,
            "rate_limit_per_user": 0,
            "flags": 0,
            "thread_metadata": {
                "archived": t["archived"],
                "archive_timestamp": t["created_at"],
                "auto_archive_duration": t["auto_archive_duration"],
                "locked": t["locked"],
                "create_timestamp": t["created_at"],
            },
        }
        if with_member:
            out["member"] = {
                "id": str(tid),
                "user_id": str(self.bot_user_id),
                "join_timestamp": t["created_at"],
                "flags": 1,
            }
        return out

    def _last_message_id(self, cid: int) -> str | None:
        ids = [m for m, msg in self.messages.items() if msg["channel_id"] == cid]
        return str(max(ids)) if ids else None

    def _user_json(self, uid: int) -> dict[str, Any]:
        if uid == self.bot_user_id:
            name = self.bot_name
        elif uid in self.users:
            name = self.users[uid]
        else:
            raise KeyError(f"the fake has no user {uid}")
        return {
            "id": str(uid),
            "username": name,
            "discriminator": "0",
            "global_name": None if uid == self.bot_user_id else name.title(),
            "avatar": None,
            "avatar_decoration_data": None,
            "banner": None,
            "accent_color": None,
            "public_flags": 0,
            "flags": 0,
            "bot": uid == self.bot_user_id,
        }

    def _member_json(self, uid: int, guild_id: int | None = None) -> dict[str, Any]:
        """``uid`` as a member of ``guild_id`` (default: the constructor's guild), with the
        roles of ``roles[uid]`` that are not another guild's."""
        guild_id = guild_id or self.guild_id
        if uid == self.bot_user_id:
            other = self.other_guilds.get(guild_id)
            roles = [self.bot_role_id if other is None else other.bot_role_id]
        else:
            roles = [r for r in self.roles.get(uid, []) if self._role_guild(r) in (None, guild_id)]
        return {
            "user": self._user_json(uid),
            "roles": [str(r) for r in roles],
            "joined_at": self._started.isoformat(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "banner": None,
            "communication_disabled_until": None,
        }

    def _role_json(self, rid: int, guild_id: int | None = None) -> dict[str, Any]:
        guild_id = guild_id or self.guild_id
        role = self._roles_of(guild_id)[rid]
        perms = self.bot_permissions if role.get("bot") else role["permissions"]
        out: dict[str, Any] = {
            "id": str(rid),
            "name": role["name"],
            "permissions": str(perms),
            "position": 0 if rid == guild_id else 1,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "managed": bool(role.get("bot")),
            "mentionable": False,
            "flags": 0,
        }
        if role.get("bot"):
            out["tags"] = {"bot_id": str(self.bot_user_id)}
        return out

    def _guild_json(self, intents: int, guild_id: int | None = None) -> dict[str, Any]:
        guild_id = guild_id or self.guild_id
        other = self.other_guilds.get(guild_id)
        channel_id = self.channel_id if other is None else other.channel_id
        member_ids = [self.bot_user_id]
        if intents & GUILD_MEMBERS:  # without it Discord only sends the bot's own member
            member_ids += list(self.users)
        threads = [t for t, v in self.threads.items() if v["parent_id"] == channel_id]
        return {
            "id": str(guild_id),
            "name": self.guild_name if other is None else other.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "nsfw": False,
            "application_id": None,
            "system_channel_id": str(channel_id),
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "max_stage_video_channel_users": 50,
            "vanity_url_code": None,
            "premium_tier": self.premium_tier,
            "premium_subscription_count": 0,
            "premium_progress_bar_enabled": False,
            "preferred_locale": "en-US",
            "widget_enabled": False,
            "incidents_data": None,
            "features": [],
            "roles": [self._role_json(rid, guild_id) for rid in self._roles_of(guild_id)],
            "emojis": [],
            "stickers": [],
            "joined_at": self._started.isoformat(),
            "large": False,
            "unavailable": False,
            "lazy": True,
            "member_count": len(self.users) + 1,
            "voice_states": [],
            "members": [self._member_json(uid, guild_id) for uid in member_ids],
            "channels": [self._channel_json(channel_id)],
            "threads": [self._thread_json(tid, with_member=False) for tid in threads],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "embedded_activities": [],
            "activity_instances": [],
        }

    def _app_flags(self) -> int:
        flags = 1 << 23  # APPLICATION_COMMAND_BADGE
        if self.privileged_intents & GUILD_PRESENCES:
            flags |= 1 << 13
        if self.privileged_intents & GUILD_MEMBERS:
            flags |= 1 << 15
        if self.privileged_intents & MESSAGE_CONTENT:
            flags |= 1 << 19
        return flags

    def _bot_perms(self) -> int:
        return EVERYONE_PERMISSIONS | self.bot_permissions

    def _perms_of(self, uid: int, guild_id: int | None = None) -> int:
        perms = EVERYONE_PERMISSIONS
        roles = self._roles_of(guild_id or self.guild_id)
        for rid in self.roles.get(uid, []):
            role = roles.get(rid)
            if role is not None and not role.get("bot"):
                perms |= role["permissions"]
        return perms

    def _roles_of(self, guild_id: int) -> dict[int, dict[str, Any]]:
        if guild_id == self.guild_id:
            return self.guild_roles
        if guild_id not in self.other_guilds:
            raise DiscordError(404, 10004)
        return self.other_guilds[guild_id].roles

    def _role_guild(self, role_id: int) -> int | None:
        """The guild whose role ``role_id`` is (None: none the fake knows)."""
        return next((g for g in self.guild_ids if role_id in self._roles_of(g)), None)

    def _guild_of_channel(self, cid: int) -> int | None:
        """The guild of a text channel or thread; None for a DM. Unknown: 404 10003."""
        kind = self._channel_kind(cid)
        if kind == "dm":
            return None
        if kind == "thread":
            return self._guild_of_channel(self.threads[cid]["parent_id"])
        if cid == self.channel_id:
            return self.guild_id
        return next(g.id for g in self.other_guilds.values() if g.channel_id == cid)

    def _require(self, channel_id: int, bits: int) -> None:
        if self._channel_kind(channel_id) == "dm":
            return
        if (self._bot_perms() & (bits | VIEW_CHANNEL)) != (bits | VIEW_CHANNEL):
            raise DiscordError(403, 50013)

    def _valid_emoji(self, emoji: str) -> bool:
        """Unicode emoji (keycaps, ZWJ sequences, flags, skin tones) are accepted; names such as
        ``thumbsup`` or ``:smile:`` and unknown custom ``name:id`` emoji are Unknown Emoji."""
        if ":" in emoji or not emoji or len(emoji) > 32:
            return False
        symbol = False
        for index, ch in enumerate(emoji):
            cp = ord(ch)
            if cp in _EMOJI_GLUE or 0x1F3FB <= cp <= 0x1F3FF or 0xE0020 <= cp <= 0xE007F:
                continue
            if ch in "0123456789#*":
                if "\u20e3" not in emoji[index:]:
                    return False
                symbol = True
                continue
            if cp < 0x80 or unicodedata.category(ch)[0] in "LNZC":
                return False
            symbol = True
        return symbol

    def _snowflake(self) -> int:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        value = (ms << 22) | (1 << 17) | (next(self._inc) & 0xFFF)
        value = max(value, self._last_snowflake + 1)
        self._last_snowflake = value
        return value

    def _require_session(self) -> None:
        if not self._sessions:
            raise RuntimeError("no gateway session: start the client and await fake.wait_ready()")

    def _session_of(self, shard: int | None) -> _Session | None:
        """The session of shard ``shard``; None: the only one (several: say which)."""
        sessions = [s for s in self._sessions.values() if shard is None or s.shard[0] == shard]
        if shard is None and len(sessions) > 1:
            raise ValueError(f"{len(sessions)} shards are connected: pass shard=")
        return sessions[-1] if sessions else None

    # ------------------------------------------------------------------ waiting

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_until(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            changed = self._changed
            if predicate():
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"fake discord: timed out waiting for {what}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


# ---------------------------------------------------------------------- helpers


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with ``Content-Type: application/json`` exactly: discord.py checks it with ``==``."""
    all_headers = {"Content-Type": "application/json"}
    all_headers.update(headers or {})
    return web.Response(status=status, body=_dumps(data).encode(), headers=all_headers)


async def _send(conn: _Conn, frame: dict[str, Any]) -> None:
    if conn.ws.closed:
        return
    with contextlib.suppress(ConnectionError, RuntimeError):
        await conn.ws.send_str(_dumps(frame))


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        raise DiscordError(400, 50109) from None


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _shard(value: Any) -> tuple[int, int] | None:
    """IDENTIFY's ``shard``: ``[shard_id, num_shards]`` with ``0 <= shard_id < num_shards``."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return None
    number, count = value
    return (number, count) if 0 <= number < count else None


def _snowflake_arg(request: web.Request, name: str, code: int) -> int:
    """A path id; Discord answers a malformed snowflake with 404 and the route's Unknown code."""
    value = _int(request.match_info[name])
    if value is None:
        raise DiscordError(404, code)
    return value


def _bucket_hash(route: str) -> str:
    return hashlib.sha1(route.encode()).hexdigest()[:32]


def _iso(when: datetime | None = None) -> str:
    return (when or datetime.now(UTC)).isoformat()


def _emoji_json(emoji: str) -> dict[str, Any]:
    return {"id": None, "name": emoji}


def _content_type(filename: str, data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if filename.endswith(".mp4"):
        return "video/mp4"
    return "application/octet-stream"


def _image_size(data: bytes) -> tuple[int, int] | None:
    """An image's width and height from its header (Discord probes images it stores)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:
        return None


def _check_options(options: list[dict[str, Any]], path: str) -> None:
    """A command's (or subcommand's) options as Discord checks them on registration."""
    if len(options) > MAX_COMMAND_OPTIONS:
        raise _form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
    names: set[str] = set()
    optional_seen = False
    for index, option in enumerate(options):
        where = f"{path}.{index}"
        kind, name = option.get("type"), option.get("name", "")
        if kind not in range(SUB_COMMAND, ATTACHMENT + 1):
            raise _form_error(f"{where}.type", "BASE_TYPE_CHOICES", "Value must be one of 1-11.")
        if not _OPTION_NAME.fullmatch(name) or name != name.lower():
            raise _form_error(f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name")
        if name in names:
            raise _form_error(
                where,
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                "Option names must be unique",
            )
        names.add(name)
        if not 1 <= len(option.get("description", "")) <= 100:
            raise _form_error(
                f"{where}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        if kind in (SUB_COMMAND, SUB_COMMAND_GROUP):
            _check_options(option.get("options") or [], f"{where}.options")
            continue
        required = bool(option.get("required"))
        if required and optional_seen:
            raise _form_error(
                where,
                "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                "Required options must be placed before non-required options",
            )
        optional_seen = optional_seen or not required
        if option.get("choices") and kind not in (STRING, INTEGER, NUMBER):
            raise _form_error(
                f"{where}.choices", "APPLICATION_COMMAND_OPTION_CHOICES_INVALID", "Not allowed"
            )
        if kind == ATTACHMENT and (
            option.get("autocomplete") or "min_value" in option or "max_value" in option
        ):
            raise _form_error(where, "APPLICATION_COMMAND_OPTION_TYPE_INVALID", "Not allowed")


def _check_message(
    payload: dict[str, Any], files: list[tuple[str, bytes]], *, edit: bool = False
) -> None:
    content = payload.get("content")
    if content is not None and len(content) > 2000:
        raise _form_error("content", "BASE_TYPE_MAX_LENGTH", "Must be 2000 or fewer in length.")
    if edit:
        return
    if not (
        content
        or files
        or payload.get("embeds")
        or payload.get("sticker_ids")
        or payload.get("components")
        or payload.get("poll")
    ):
        raise DiscordError(400, 50006)


def _options(options: list[dict[str, Any]] | dict[str, Any] | None) -> list[dict[str, Any]]:
    if options is None:
        return []
    if isinstance(options, list):
        return [dict(o) for o in options]
    out = []
    for name, value in options.items():
        if isinstance(value, tuple):
            kind = ATTACHMENT  # (filename, bytes) the user uploaded with the command
        elif isinstance(value, bool):
            kind = 5
        elif isinstance(value, int):
            kind = 4
        elif isinstance(value, float):
            kind = 10
        else:
            kind = 3
        out.append({"name": name, "type": kind, "value": value})
    return out


__all__ = ["DiscordError", "FakeDiscord", "Interaction", "Req"]
