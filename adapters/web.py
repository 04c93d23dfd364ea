"""The local web channel: the whole bot in a browser page, with no accounts.

A chat surface like Slack and Discord: the page's command box sends the same ``/draft`` and
``/tierbot`` text to the same core, reaction chips are the same reactions, and the bot's
replies come back over server-sent events. Unlike Slack and Discord there is no platform to
keep the history, so messages live in the ``web_messages`` table and survive a restart.

Endpoints (all JSON unless noted):

- ``GET /`` the page; ``GET /static/<file>`` its script, style and icon (shipped, no CDN);
  ``GET /favicon.ico`` the icon.
- ``GET /api/messages?name=N`` the history N may see (private replies go to one name). Each
  message lists its reactions as ``chips``: the emoji and the action it takes ("take draft 2
  to final", "make a video", "cancel", ...); a finished status line has none.
- ``GET /api/events?name=N`` server-sent events: ``message`` (new; ``by`` names whose command
  or reaction it answers, so that person's page brings it into view) and ``update`` (a status
  line moved: queued → running → done | failed).
- ``POST /api/commands`` ``{"name", "text", "event_id"}`` → 202; replies arrive as events.
  Files sent with the command (📎: reference images, a hand-fixed version, a calendar's CSV)
  come as ``multipart/form-data`` instead: the same fields plus one ``file`` part per file,
  up to ``MAX_FILES`` of ``MAX_UPLOAD_BYTES`` each (small files may also come in the JSON as
  ``files``: ``[{"name", "data"}]`` in base64). The core checks and stores the images.
- ``POST /api/reactions`` ``{"name", "message_id", "emoji", "event_id"}`` → 202.
- ``GET /assets/<id>`` the asset page (HTML): the file, its facts, gate decisions and the
  lineage as a tree of thumbnails. ``GET /files/<id>[?w=256]`` the file or a thumbnail.
  An image's page is also a canvas (``web_static/canvas.js``): paint the region to change,
  and the page sends ``/tierbot edit <id> <instruction> --mask`` with ``mask.png`` (white:
  may change, at the image's natural size) to ``/api/commands``, as the channel's name.
  A stitched sequence's page (stage ``sequence``) plays the stitch and lists its shots as
  stitched (each playable, its beat's words, a link to its page; a failed one with the
  ``reshoot`` to type) and the ``reshoot`` and ``order`` commands; a shot's page lists the
  stitches it is part of. In the channel a sequence's message plays the stitch, its shots
  small under it.

Safety: binds 127.0.0.1 by default; any other address needs ``TIERBOT_WEB_TOKEN``, checked on
every request but the page itself (header ``Authorization: Bearer`` or the ``tierbot_token``
cookie the page sets after asking). Requests from another origin, or to a Host that is not
this server (DNS rebinding), are refused; JSON bodies are capped at 400 KiB (``MAX_BODY``,
room for a calendar in base64) and must be strict objects in UTF-8 (no lone surrogates, no
deep nesting, ids whole numbers in range); a command's multipart body is read part by part,
each file up to ``MAX_UPLOAD_BYTES`` and the whole up to ``MAX_COMMAND_BODY`` (a clear 413
otherwise, before anything is received); every response forbids framing (``X-Frame-Options: DENY``
and a ``Content-Security-Policy`` with ``frame-ancestors 'none'``, scripts, styles and media
only from this server), MIME sniffing and referrers. A name is only a label, so on a shared
machine "private" means "not shown to other names", not secret.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import html
import ipaddress
import json
import logging
import os
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from PIL import Image

from adapters.delivery import INTERRUPTED, Tasks
from adapters.http_server import MAX_BODY, http_server
from bot import cpu
from bot.commands import MAX_PROMPT_CHARS
from bot.delivery import Steps
from bot.domain import (
    CANCEL_HINT,
    MANUAL_STAGE,
    NUMBER_REACTIONS,
    SEQUENCE_STAGE,
    UPLOAD_STAGE,
    AssetKind,
    CommandEvent,
    InboundFile,
    Origin,
    Reaction,
    ReactionEvent,
    Reply,
    Stage,
    normalize_emoji,
)
from bot.errors import UserError
from bot.ledger import credits
from bot.pipeline import LineageNode
from bot.surfaces import SurfaceContext, SurfaceUnavailable
from bot.uploads import MAX_FILES, MAX_UPLOAD_BYTES

log = logging.getLogger(__name__)

SURFACE = "web"
CHANNEL = "web"
BOT_NAME = "tierbot"
MAX_TEXT = 4000
THUMB_WIDTHS = (128, 256, 512)
NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
EVENT_ID = re.compile(r"^[\w-]{1,64}$")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
ASSET_ID = re.compile(r"^[0-9a-f]{8}$")
_ASSET_ID_IN_TEXT = re.compile(r"\b[0-9a-f]{8}\b")
KEEPALIVE_S = 15.0
#: Message ids are SQLite rowids: whole numbers from 1 to 2**63 - 1.
MAX_ID = 2**63 - 1
#: The request bodies are flat objects; anything nested deeper than this is refused.
MAX_DEPTH = 8
#: A text field of a multipart command (name, text, event id), in bytes of UTF-8.
MAX_FIELD_BYTES = 4 * MAX_TEXT
#: A command's multipart body: ``MAX_FILES`` images of ``MAX_UPLOAD_BYTES`` and room for the
#: text fields and the parts' headers. The only request allowed past ``MAX_BODY``.
MAX_COMMAND_BODY = MAX_FILES * MAX_UPLOAD_BYTES + 1024 * 1024
#: The fields of a multipart command besides its ``file`` parts.
FORM_FIELDS = ("name", "text", "event_id")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
STATIC_FILES = {
    "app.js": "text/javascript",
    "canvas.js": "text/javascript",
    "style.css": "text/css",
    "favicon.svg": "image/svg+xml",
}
#: Sent with every response of the web channel: nothing may frame its pages (so the spending
#: chips cannot be clickjacked), scripts and styles come only from /static (no inline code),
#: images, videos and the event stream only from this server.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_NUMBERS = {normalize_emoji(r.value): i for i, r in enumerate(NUMBER_REACTIONS, start=1)}
#: What each chip does, by what it sits on (shown as its tooltip and read by screen readers).
_GRID_CHIPS = {
    normalize_emoji(Reaction.VIDEO): "make a sequence",  # a storyboard's beats, shot
    normalize_emoji(Reaction.REROLL): "reroll the grid",
    normalize_emoji(Reaction.DISCARD): "discard the grid",
}
_RESULT_CHIPS = {
    normalize_emoji(Reaction.VIDEO): "make a video",
    normalize_emoji(Reaction.UPSCALE): "upscale",
    normalize_emoji(Reaction.APPROVE): "sign off",
    normalize_emoji(Reaction.VARY): "make variations",
    normalize_emoji(Reaction.MATCH): "match the source's colours",
    normalize_emoji(Reaction.UNIFY): "smooth the seam",
    normalize_emoji(Reaction.REROLL): "re-render",
    normalize_emoji(Reaction.DISCARD): "reject",
}
_STATUS_CHIPS = {normalize_emoji(Reaction.DISCARD): "cancel"}
#: A status line in one of these states has finished: its ❌ (cancel) has nothing to cancel.
FINISHED = ("done", "failed", "interrupted", "cancelled")


class BadInput(Exception):
    """A request the channel refuses; the message is shown in the page."""


class TooLarge(BadInput):
    """A request over a size limit (answered 413); the message names the limit."""


def file_size(size: int, *, over: bool = False) -> str:
    """``size`` bytes as the page and the core say file sizes (decimal KB and MB);
    ``over``: rounded up, so a file refused as too big never reads as the limit itself."""
    if size < 1000:
        return f"{size} B"
    if size < 1_000_000:
        return f"{-(-size // 1000) if over else size // 1000} KB"
    tenths = -(-size // 100_000) if over else size // 100_000
    return f"{tenths / 10:.1f}".removesuffix(".0") + " MB"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(eq=False)
class _Listener:
    name: str
    queue: asyncio.Queue[tuple[str, dict[str, Any]]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1000)
    )


class WebSurface:
    """The aiohttp application of the web channel, on the shared event loop."""

    name = SURFACE

    def __init__(
        self, context: SurfaceContext, *, host: str | None = None, port: int | None = None
    ) -> None:
        settings = context.settings
        self.bot = context.bot
        self._ops = context.ops
        self.history = context.history
        self.data_dir = settings.data_dir
        self.token = settings.web_token.get_secret_value() if settings.web_token else None
        bind = host or settings.http_host
        if not is_loopback(bind) and not self.token:
            raise SurfaceUnavailable(
                f"TIERBOT_WEB_TOKEN is required to serve the web channel on {bind}; "
                "set it, or bind TIERBOT_HTTP_HOST=127.0.0.1"
            )
        self.server = http_server(context, host=host, port=port)
        self._listeners: set[_Listener] = set()
        self.tasks = Tasks()
        self._spawn = self.tasks.spawn
        self._stopping = False
        # Posting a row cannot fail; the outbox matters after a crash: what a killed process
        # handed over is posted here, once its claim lapses (checked every lease).
        self.outbox = context.outbox(SURFACE, self.post, (), interval_s=settings.lease_s)
        self._outbox: asyncio.Future[Any] | None = None
        self._add_routes(self.server.app)

    # -- lifecycle ---------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)
        app.on_response_prepare.append(self._secure)
        app.router.add_get("/", self._page)
        app.router.add_get("/favicon.ico", self._favicon)
        app.router.add_get("/static/{name}", self._static)
        app.router.add_get("/api/messages", self._messages)
        app.router.add_get("/api/events", self._events)
        app.router.add_post("/api/commands", self._command)
        app.router.add_post("/api/reactions", self._reaction)
        app.router.add_get("/assets/{asset_id}", self._asset_page)
        app.router.add_get("/files/{asset_id}", self._file)

    @property
    def url(self) -> str:
        return self.server.url

    async def start(self) -> str:
        """Serve on the shared HTTP server; returns the console line."""
        # Status lines a previous process left moving (it was killed mid-job): their jobs are
        # resumed now, and the results are posted as new messages.
        self.history.interrupt_statuses(INTERRUPTED)
        url = await self.server.start()
        self._outbox = asyncio.ensure_future(self.outbox.run())
        return f"Web channel: {url}  (open it in a browser, set your name, type /draft ...)"

    async def stop(self) -> None:
        self._stopping = True
        if self._outbox is not None:
            self._outbox.cancel()
            await asyncio.gather(self._outbox, return_exceptions=True)
        await self.tasks.cancel_all()
        for listener in list(self._listeners):
            listener.queue.put_nowait(("close", {}))
        await self.server.stop()

    # -- middleware --------------------------------------------------------------------------

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.server.is_external(request.path):
            return await handler(request)  # signed by its platform (Slack)
        if not self._host_allowed(request.host):
            return web.json_response({"error": "unknown host"}, status=403)
        origin = request.headers.get("Origin")
        if request.method == "POST" and origin and origin.split("://", 1)[-1] != request.host:
            return web.json_response({"error": "cross-origin requests are refused"}, status=403)
        public = request.path in ("/", "/favicon.ico") or request.path.startswith("/static/")
        if self.token and not public and not self._authorised(request):
            return web.json_response({"error": "token required"}, status=401)
        try:
            return await handler(request)
        except TooLarge as exc:
            return web.json_response({"error": str(exc)}, status=413)
        except BadInput as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except web.HTTPRequestEntityTooLarge:
            error = f"request too large (limit {MAX_BODY // 1024} KiB)"
            if request.path == "/api/commands":
                error += (
                    f"; send files as multipart/form-data (the page's 📎 does): up to "
                    f"{MAX_FILES} of {file_size(MAX_UPLOAD_BYTES)} each"
                )
            return web.json_response({"error": error}, status=413)

    async def _secure(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every response of the channel, errors and the event stream included."""
        if not self.server.is_external(request.path):
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)

    def _host_allowed(self, host: str) -> bool:
        if not is_loopback(self.server.host):
            return True  # behind a proxy or on a LAN the token is the guard
        hostname = host.rsplit(":", 1)[0].strip("[]") if host else ""
        return is_loopback(hostname)

    def _authorised(self, request: web.Request) -> bool:
        assert self.token is not None
        header = request.headers.get("Authorization", "")
        given = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        given = given or request.cookies.get("tierbot_token", "")
        return hmac.compare_digest(given.encode(), self.token.encode())

    # -- the page ----------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._static_file("index.html")

    async def _favicon(self, request: web.Request) -> web.StreamResponse:
        return self._static_file("favicon.svg")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in STATIC_FILES:
            raise web.HTTPNotFound()
        return self._static_file(name)

    def _static_file(self, name: str) -> web.Response:
        text = resources.files("adapters").joinpath("web_static", name).read_text("utf-8")
        if name == "index.html":  # the 📎 input knows the limits, to say so before sending
            text = text.replace("{{MAX_FILES}}", str(MAX_FILES))
            text = text.replace("{{MAX_UPLOAD_BYTES}}", str(MAX_UPLOAD_BYTES))
        return web.Response(
            text=text,
            content_type=STATIC_FILES.get(name, "text/html"),
            headers={"Cache-Control": "no-cache"},
        )

    # -- the channel -------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request.query.get("name", ""), required=False)
        rows = self.history.visible_to(name)
        return web.json_response({"messages": [self._view(r) for r in rows]})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        listener = _Listener(self._name(request.query.get("name", ""), required=False) or "")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        self._listeners.add(listener)
        try:
            await response.write(b"retry: 2000\n\n")
            while True:
                try:
                    kind, data = await asyncio.wait_for(listener.queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\n\n")
                    continue
                if kind == "close":
                    break
                payload = json.dumps(data, ensure_ascii=False)
                await response.write(f"event: {kind}\ndata: {payload}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._listeners.discard(listener)
        return response

    async def _command(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()
        if request.content_type == "multipart/form-data":
            body, files = await self._form(request)
        else:
            body = await self._json(request)
            files = None
        name = self._name(body.get("name"), required=True)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadInput("type a command, e.g. /draft a lighthouse at dawn --n 4")
        if len(text) > MAX_TEXT:
            raise BadInput(f"a command is at most {MAX_TEXT} characters; got {len(text)}")
        if files is None:
            files = self._files(body)
        event_id = self._event_id(body.get("event_id"))
        origin = self._origin(name)
        # "/draft a fox" is the command draft; "a fox" (no slash) is no command at all. An
        # unknown or missing command is the parser's to refuse, in the same words everywhere.
        command, rest = "", text.strip()
        if rest.startswith("/"):
            command, rest = (*rest.split(maxsplit=1), "")[:2]
        event = CommandEvent(
            origin=origin,
            command=command.lstrip("/"),
            text=rest,
            files=files,
            delivery_id=f"{name}:{event_id}",
        )
        # Written before the answer: a command the page was told about survives a crash, and
        # the page sending it again (same event id) after a lost answer runs it once. Its
        # files' bytes are kept first, off the event loop.
        event = await self.bot.keep(event)
        if not self.bot.receive(event):
            return web.json_response({"ok": True, "duplicate": True}, status=202)
        shown = text.strip()
        if files:  # what was sent with it; the core checks the images and may refuse them
            shown += "\n📎 " + ", ".join(f"{f.name} ({file_size(len(f.data))})" for f in files)
        echo = self._post_row({"author": name, "text": shown}, by=name)
        replies = self.bot.handle_command(event, received=True)
        self._spawn(self._deliver(origin, replies))
        if self._ops is not None:  # as on Slack and Discord: arrival to answer
            self._ops.ack_seconds.labels(SURFACE).observe(time.monotonic() - arrived)
        return web.json_response({"ok": True, "message_id": echo}, status=202)

    @staticmethod
    def _event_id(value: Any) -> str:
        """The page's id for one command or reaction (made here if it sent none)."""
        event_id = value or uuid.uuid4().hex
        if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
            raise BadInput("event_id must be 1 to 64 letters, digits, - or _")
        return event_id

    async def _reaction(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        name = self._name(body.get("name"), required=True)
        message_id = body.get("message_id")
        emoji = body.get("emoji")
        # bool is an int in Python: `true` must not be taken for message 1.
        if type(message_id) is not int or not 1 <= message_id <= MAX_ID:
            raise BadInput(f"no such message: message_id must be a whole number from 1 to {MAX_ID}")
        if self.history.get(message_id) is None:
            raise BadInput("no such message")
        if not isinstance(emoji, str) or not 0 < len(emoji) <= 16:
            raise BadInput("a reaction is one emoji")
        event_id = self._event_id(body.get("event_id"))
        origin = self._origin(name)
        event = ReactionEvent(
            origin=origin, event_id=f"{name}:{event_id}", message_id=str(message_id), emoji=emoji
        )
        if not self.bot.receive(event):
            return web.json_response({"ok": True, "duplicate": True}, status=202)
        replies = self.bot.handle_reaction(event, received=True)
        self._spawn(self._deliver(origin, replies, near=message_id))
        return web.json_response({"ok": True}, status=202)

    # -- delivering replies ------------------------------------------------------------------

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies nobody typed a command for (scheduled batches) in the channel."""
        await self._deliver(origin, replies)

    async def _deliver(
        self, origin: Origin, replies: AsyncIterator[Reply], near: int | None = None
    ) -> None:
        """Post a use case's replies as they come; keep its status line moving.

        ``near`` is the message a reaction was on: a private reply that threads nowhere (a
        refusal) is shown in that message's thread, next to the chip that was clicked.
        """
        status = _StatusLine(self)

        async def private(reply: Reply) -> None:
            self._post(origin, reply, near=near)

        async def open_status(reply: Reply, steps: Steps) -> int:
            status.message_id = self._post(origin, reply, state="queued", near=near)
            steps.posted(str(status.message_id), thread_id=reply.thread_id)
            return status.message_id

        async def result(reply: Reply) -> None:
            await self.outbox.send(origin, reply)  # a row cannot be refused: never kept

        await self.outbox.deliver(
            origin,
            replies,
            status,
            private=private,
            open_status=open_status,
            result=result,
            stopping=lambda: self._stopping,
        )

    def _post(
        self, origin: Origin, reply: Reply, state: str | None = None, near: int | None = None
    ) -> int:
        """Post one reply; the live event names who it answers, so their page can show it."""
        root = reply.thread_id
        thread_root = int(root) if root is not None else None
        if thread_root is None and reply.private and near is not None:
            reacted = self.history.get(near)
            thread_root = (reacted["thread_root"] or near) if reacted else None
        message_id = self._post_row(
            {
                "author": BOT_NAME,
                "text": reply.text,
                "files": self._shown(reply),
                "reactions": reply.reactions,
                "thread_root": thread_root,
                "asset_id": reply.asset_id,
                "private_to": origin.user if reply.private else None,
                "state": state,
                "error": int(reply.error),
            },
            by=origin.user,
        )
        return message_id

    def _shown(self, reply: Reply) -> list[str]:
        """The assets a reply's files are, shown in its message by id, in the reply's order:
        the asset it presents first, then (a sequence's shots; a named reference's images,
        which no one asset presents) the ids its text names whose files it carries, so only
        the reply's own files are ever shown."""
        if not reply.files:
            return []
        shown: list[str] = []
        own: set[Path] = set()
        if reply.asset_id:
            shown.append(reply.asset_id)
            if (presented := self.bot.asset(reply.asset_id)) is not None:
                own.add(self.bot.asset_location(presented))
        rest = [path for path in reply.files if path not in own]
        if not rest:
            return shown
        named: dict[Path, list[str]] = {}  # a file's path -> the named assets it is
        for asset_id in dict.fromkeys(_ASSET_ID_IN_TEXT.findall(reply.text)):
            asset = self.bot.asset(asset_id) if asset_id not in shown else None
            if asset is not None:
                named.setdefault(self.bot.asset_location(asset), []).append(asset_id)
        for path in rest:
            if named.get(path):
                shown.append(named[path].pop(0))
        return shown

    async def post(self, origin: Origin, reply: Reply, steps: Steps) -> None:
        """Post a result: its message (the row and its asset link in one transaction with
        the step), then for a QA decision the decided asset's message edited to show it."""
        if steps.get("message") is None:
            with steps.atomically():
                message_id = self._post(origin, reply)
                steps.posted(str(message_id), thread_id=reply.thread_id, message=message_id)

        async def edit(message_id: str, thread_id: str | None, text: str) -> None:
            self.update(int(message_id), text=text)

        await steps.show_state(edit)

    def _post_row(self, row: dict[str, Any], by: str | None = None) -> int:
        message_id = self.history.add(row)
        self._publish("message", message_id, by=by)
        return message_id

    def update(self, message_id: int, **fields: Any) -> None:
        self.history.update(message_id, **fields)
        self._publish("update", message_id)

    def _publish(self, kind: str, message_id: int, by: str | None = None) -> None:
        row = self.history.get(message_id)
        if row is None:
            return
        view = self._view(row)
        if by:  # only live: whose command or reaction this answers (the page scrolls to it)
            view["by"] = by
        for listener in list(self._listeners):
            if row["private_to"] and row["private_to"] != listener.name:
                continue
            try:
                listener.queue.put_nowait((kind, view))
            except asyncio.QueueFull:
                # A page that stopped reading: end its stream; it reconnects and reloads.
                log.warning("web listener %r is not reading; closing its stream", listener.name)
                while not listener.queue.empty():
                    listener.queue.get_nowait()
                listener.queue.put_nowait(("close", {}))
                self._listeners.discard(listener)

    def _view(self, row: dict[str, Any]) -> dict[str, Any]:
        files = []
        labels: dict[str, str] = {}  # a sequence's shots: "shot 2" (its beat's number)
        for asset_id in row["files"]:
            asset = self.bot.asset(asset_id)
            if asset is None:
                continue
            if not files and asset["stage"] == SEQUENCE_STAGE:
                labels = {
                    slot.shot["id"]: f"shot {slot.number}"
                    for slot in self._sequence_slots(asset)
                    if slot.shot is not None
                }
            files.append(
                {
                    "asset_id": asset_id,
                    "url": f"/files/{asset_id}",
                    "page": f"/assets/{asset_id}",
                    "mime": asset["mime"],
                    "kind": asset["kind"],
                    "stage": asset["stage"],
                    "label": labels.get(asset_id, ""),
                    "title": asset["prompt"] or "",
                }
            )
        asset = self.bot.asset(row["asset_id"]) if row["asset_id"] else None
        kind = asset["kind"] if asset is not None else None
        chips = self._chips(row, kind)
        return {
            "id": row["id"],
            "at": row["at"],
            "author": row["author"],
            "text": row["text"],
            "files": files,
            "reactions": [chip["emoji"] for chip in chips],
            "chips": chips,
            "thread_root": row["thread_root"],
            "asset_id": row["asset_id"],
            "kind": kind,
            "private": bool(row["private_to"]),
            "state": row["state"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "detail": row["detail"],
            "error": row["error"],
        }

    @staticmethod
    def _chips(row: dict[str, Any], kind: str | None) -> list[dict[str, str]]:
        """The message's reactions, each with the action it takes (its tooltip and label).

        A finished status line keeps none: its ❌ (cancel) has nothing left to cancel.
        """
        reactions: list[str] = row["reactions"] or []
        if row["state"] in FINISHED:
            return []
        if row["state"]:
            labels = _STATUS_CHIPS
        else:
            labels = _GRID_CHIPS if kind == AssetKind.GRID else _RESULT_CHIPS
        chips = []
        for emoji in reactions:
            key = normalize_emoji(emoji)
            if key in _NUMBERS:
                label = f"take draft {_NUMBERS[key]} to final"
            else:
                label = labels.get(key, f"react {emoji}")
            chips.append({"emoji": emoji, "label": label})
        return chips

    # -- assets ------------------------------------------------------------------------------

    def _asset(self, request: web.Request) -> dict[str, Any]:
        asset_id = request.match_info["asset_id"]
        asset = self.bot.asset(asset_id) if ASSET_ID.match(asset_id) else None
        if asset is None:
            raise web.HTTPNotFound(text=f"no asset {asset_id[:16]}")
        return asset

    async def _file(self, request: web.Request) -> web.StreamResponse:
        asset = self._asset(request)
        try:  # in a thread: with an object store, a file new to this machine is fetched
            path = await asyncio.to_thread(self.bot.asset_path, asset)
        except FileNotFoundError:
            raise web.HTTPNotFound(text=f"the file of asset {asset['id']} is gone") from None
        width = request.query.get("w")
        if width is None or asset["kind"] == "video":
            return web.FileResponse(
                path, headers={"Content-Type": asset["mime"], "Cache-Control": "max-age=86400"}
            )
        if not width.isdigit() or int(width) not in THUMB_WIDTHS:
            raise BadInput(f"w must be one of {', '.join(map(str, THUMB_WIDTHS))}")
        target = self.data_dir / "thumbs" / f"{asset['sha256']}-{width}.jpg"
        if not target.exists():
            await cpu.run(make_thumbnail, path, target, int(width))
        return web.FileResponse(
            target, headers={"Content-Type": "image/jpeg", "Cache-Control": "max-age=86400"}
        )

    async def _asset_page(self, request: web.Request) -> web.StreamResponse:
        asset = self._asset(request)
        try:
            trees = self.bot.lineage_tree(asset["id"])
        except UserError as exc:
            raise web.HTTPNotFound(text=exc.message) from None
        gates, qa = self.bot.decisions(asset["id"])
        e = html.escape
        paintable = asset["kind"] == AssetKind.IMAGE
        if asset["kind"] == "video":
            media = f'<video controls preload="metadata" src="/files/{e(asset["id"])}"></video>'
        elif paintable:  # the canvas: paint the region an edit may change
            media = _canvas_html(asset)
        else:
            media = (
                f'<a href="/files/{e(asset["id"])}"><img src="/files/{e(asset["id"])}" '
                f'alt="{e(asset["prompt"] or "")}"></a>'
            )
        sent = asset["kind"] == AssetKind.UPLOAD
        # An upload and a manual version were made by a person, not a model: no model, no
        # price; who sent or fixed it instead.
        facts = [("file" if sent else "prompt", asset["prompt"] or ""), ("stage", asset["stage"])]
        if asset.get("sent_by"):
            facts.append(("sent by" if sent else "fixed by hand by", _person(asset["sent_by"])))
        if asset["model_id"]:
            facts.append(("model", asset["model_id"]))
        if asset["seed"] is not None:
            facts.append(("seed", str(asset["seed"])))
        facts.append(
            (
                "size",
                f"{asset['width']}×{asset['height']}"
                + (f", {asset['duration_s']:.0f} s" if asset["duration_s"] else ""),
            )
        )
        if asset["model_id"] or asset["cost"]:
            facts.append(("cost", credits(asset["cost"] or 0)))
        facts.append(("created", asset["created_at"][:19].replace("T", " ") + " UTC"))
        if asset["stage"] not in (Stage.DRAFT, UPLOAD_STAGE):  # the one current QA state
            facts.append(
                ("QA", f"{qa['decision']} by {qa['user']}" if qa else "not signed off yet")
            )
        decisions = (
            "".join(
                f"<li>{e(g['decision'])} by {e(g['user'])} ({e(g['surface'])}), "
                f"{e(g['at'][:19].replace('T', ' '))} UTC</li>"
                for g in gates
            )
            or "<li>none yet</li>"
        )
        references = self._references(asset)
        shaped = (
            "<h2>Shaped by</h2><ul class='tree refs'>"
            + "".join(f"<li>{self._node_html(r, _sent_line(r))}</li>" for r in references)
            + "</ul>"
            if references
            else ""
        )
        title = {
            UPLOAD_STAGE: "📎 upload",
            MANUAL_STAGE: "🖌️ manual",
            SEQUENCE_STAGE: "🎞️ sequence",
        }.get(asset["stage"], asset["stage"])
        sequence = self._sequence_of(asset)
        if sequence is not None:  # a stitch: what it is, its shots, how to change it
            slots = self._sequence_slots(asset, sequence)
            made = sum(1 for slot in slots if slot.shot is not None)
            count = len(sequence["beats"])
            shots = f"{made} of {count} shots" if made < count else f"{count} shots"
            facts.insert(
                0, ("sequence", f"{sequence['id']} · {shots} · {asset['duration_s'] or 0:.1f} s")
            )
            parts = _sequence_html(asset, sequence, slots)
        else:
            parts = self._part_of_html(asset)
        body = (
            f"<h1>{e(title)} {e(asset['id'])}</h1><div class='media'>{media}</div>"
            "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>"
            f"{parts}<h2>Decisions</h2><ul>{decisions}</ul>{shaped}"
            "<h2>Lineage</h2><ul class='tree'>"
            + "".join(self._tree_html(t, asset["id"]) for t in trees)
            + "</ul>"
        )
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>tierbot · {e(asset['id'])}</title>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='/static/favicon.svg' type='image/svg+xml'>"
            "<link rel='stylesheet' href='/static/style.css'></head>"
            f"<body class='asset-page'><p><a href='/'>← channel</a></p>{body}"
            + ("<script src='/static/canvas.js'></script>" if paintable else "")
            + "</body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    def _sequence_of(self, asset: dict[str, Any]) -> dict[str, Any] | None:
        """The sequence row of a stitch (a video of stage ``sequence``), or None."""
        if asset["stage"] != SEQUENCE_STAGE:
            return None
        sequence_id = asset["facts"].get("sequence")
        return self.bot.store.get_sequence(sequence_id) if isinstance(sequence_id, str) else None

    def _sequence_slots(
        self, stitch: dict[str, Any], sequence: dict[str, Any] | None = None
    ) -> list[_Slot]:
        """The beats of a stitch as it plays: its shots in stitch order (its parents), each
        with its beat's number, and each beat missing from it (a failed shot) where the
        sequence's order puts it."""
        sequence = sequence or self._sequence_of(stitch)
        if sequence is None:
            return []
        store = self.bot.store
        beats: list[str] = sequence["beats"]
        current: list[str | None] = sequence["shots"]
        sources: list[str] = sequence["sources"]

        slots = []
        for shot in store.parents(stitch["id"]):
            if shot["kind"] != AssetKind.VIDEO:
                continue
            made_from = [p["id"] for p in store.parents(shot["id"]) if p["kind"] == AssetKind.IMAGE]
            poster = made_from[0] if made_from else None
            if shot["id"] in current:
                k: int | None = current.index(shot["id"])
            else:  # reshot since: its beat is the draft (or final) it was made from
                k = next((sources.index(p) for p in made_from if p in sources), None)
            if k is None:
                slot = _Slot(number=None, beat=shot["prompt"] or "", shot=shot, poster=poster)
            else:
                slot = _Slot(number=k + 1, beat=beats[k], shot=shot, poster=poster)
            slots.append(slot)
        present = {slot.number for slot in slots}
        order: list[int] = sequence["order"] or list(range(len(beats)))
        for position, k in enumerate(order):
            if k + 1 in present or not 0 <= k < len(beats):
                continue
            failed = current[k] is None
            slot = _Slot(
                number=k + 1,
                beat=beats[k],
                shot=None,
                failure=sequence["failures"].get(str(k), "not made") if failed else None,
            )
            slots.insert(min(position, len(slots)), slot)
        return slots

    def _part_of_html(self, asset: dict[str, Any]) -> str:
        """A shot's page: the sequences it is stitched into (its children of stage
        ``sequence``), each with the shot's place in it."""
        if asset["kind"] != AssetKind.VIDEO:
            return ""
        items = []
        for stitch in self.bot.store.children(asset["id"]):
            sequence = self._sequence_of(stitch)
            if sequence is None:
                continue
            slots = self._sequence_slots(stitch, sequence)
            shot = next((s for s in slots if s.shot and s.shot["id"] == asset["id"]), None)
            where = f"shot {shot.number}" if shot and shot.number else "a shot"
            latest = " · the latest stitch" if sequence["asset_id"] == stitch["id"] else ""
            text = (
                f"sequence {sequence['id']} · {where} of {len(slots)} · "
                f"{stitch['duration_s'] or 0:.1f} s{latest}"
            )
            items.append(f"<li>{self._node_html(stitch, text)}</li>")
        if not items:
            return ""
        return "<h2>Part of</h2><ul class='tree part-of' id='part-of'>" + "".join(items) + "</ul>"

    def _references(self, asset: dict[str, Any]) -> list[dict[str, Any]]:
        """The images people sent that shaped ``asset`` (its upload parents; a grid's are its
        drafts'), in the order given."""
        store = self.bot.store
        parents = store.parents(asset["id"])
        if asset["kind"] == AssetKind.GRID:
            parents = [p for draft in parents for p in store.parents(draft["id"])]
        uploads = {p["id"]: p for p in parents if p["kind"] == AssetKind.UPLOAD}
        return list(uploads.values())

    def _tree_html(self, node: LineageNode, focus: str) -> str:
        asset = node.asset
        here = " class='focus'" if asset["id"] == focus else ""
        children = "".join(self._tree_html(c, focus) for c in node.children)
        return (
            f"<li{here}>{self._node_html(asset, node.describe())}"
            + "".join(
                f"<div class='shaped'>{self._node_html(r, _sent_line(r))}</div>"
                for r in node.references
            )
            + (f"<ul>{children}</ul>" if children else "")
            + "</li>"
        )

    @staticmethod
    def _node_html(asset: dict[str, Any], text: str) -> str:
        e = html.escape
        thumb = (
            f'<video muted preload="metadata" src="/files/{e(asset["id"])}"></video>'
            if asset["kind"] == "video"
            else f'<img loading="lazy" src="/files/{e(asset["id"])}?w=128" alt="">'
        )
        return f"<a href='/assets/{e(asset['id'])}'>{thumb}</a><span>{e(text)}</span>"

    # -- input -------------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        """The body as a JSON object: strict UTF-8, shallow, no lone surrogates, no NaN."""
        if request.content_type != "application/json":
            raise BadInput("send JSON (Content-Type: application/json)")
        raw = await request.read()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadInput(f"the request body is not UTF-8 (byte {exc.start})") from None
        try:
            body = json.loads(text, parse_constant=_no_constant)
        except (json.JSONDecodeError, ValueError):
            raise BadInput("the request body is not valid JSON") from None
        except RecursionError:
            raise BadInput(f"the request body is nested too deeply (limit {MAX_DEPTH})") from None
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object")
        _check_json(body)
        return body

    async def _form(self, request: web.Request) -> tuple[dict[str, str], list[InboundFile]]:
        """A multipart command: its text fields and its files, read part by part so a body
        over the limits is refused as soon as it shows, never held whole.

        Raises:
            TooLarge: a file over ``MAX_UPLOAD_BYTES``, more than ``MAX_FILES`` files, or a
                body over ``MAX_COMMAND_BODY`` (or of unknown length).
            BadInput: a malformed body, an unknown or repeated field, a field not in UTF-8.
        """
        limits = f"up to {MAX_FILES} files of {file_size(MAX_UPLOAD_BYTES)} each"
        length = request.content_length
        if length is None or length > MAX_COMMAND_BODY:
            # Known before a byte is read (browsers and HTTP clients always send it).
            raise TooLarge(
                f"request too large: a command takes {limits}"
                if length
                else "send the Content-Length of a multipart command"
            )
        fields: dict[str, str] = {}
        files: list[InboundFile] = []
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise BadInput("a multipart command has no nested parts")
                if part.name == "file":
                    name = _file_name(part.filename)
                    if len(files) == MAX_FILES:
                        raise TooLarge(f"too many files: a command takes {limits}")
                    data, size = await _read_part(part, MAX_UPLOAD_BYTES)
                    if size > MAX_UPLOAD_BYTES:
                        raise TooLarge(
                            f"{name} is {file_size(size, over=True)}; files up to "
                            f"{file_size(MAX_UPLOAD_BYTES)} are accepted. Nothing was done."
                        )
                    files.append(InboundFile(name=name, data=data))
                elif part.name in FORM_FIELDS:
                    if part.name in fields:
                        raise BadInput(f"{part.name} is given twice; give it once")
                    raw, size = await _read_part(part, MAX_FIELD_BYTES)
                    if size > MAX_FIELD_BYTES:
                        raise TooLarge(f"{part.name} is over {MAX_FIELD_BYTES // 1024} KiB")
                    try:
                        fields[part.name] = raw.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise BadInput(f"{part.name} is not UTF-8 (byte {exc.start})") from None
                else:
                    raise BadInput(
                        f"unexpected part {str(part.name)[:40]!r}: send name, text, event_id "
                        "and one file part per file"
                    )
        except (ValueError, RuntimeError, HttpProcessingError) as exc:
            # aiohttp's words for a broken body: a bad boundary, headers too long or too many
            raise BadInput(f"the multipart body is malformed ({str(exc)[:80]})") from None
        return fields, files

    @staticmethod
    def _name(value: Any, *, required: bool) -> str | None:
        if value in (None, "") and not required:
            return None
        if not isinstance(value, str) or not NAME.match(value.strip()):
            raise BadInput("set your name first: 1 to 40 letters, digits, spaces, '.', '@' or '-'")
        return value.strip()

    @staticmethod
    def _files(body: dict[str, Any]) -> list[InboundFile]:
        """Files sent with a command (📎): ``files``, a list of ``{"name", "data"}`` with
        the bytes in base64 (``attachment``, one file's base64, is still read)."""
        given = body.get("files")
        if given in (None, ""):
            given = []
        if not isinstance(given, list) or len(given) > MAX_FILES:
            raise BadInput(f"files must be a list of at most {MAX_FILES} files")
        if body.get("attachment"):
            given = [*given, {"name": "attachment", "data": body["attachment"]}]
        files = []
        for item in given:
            if not isinstance(item, dict) or not isinstance(item.get("data"), str):
                raise BadInput("each file must be {name, data} with the bytes in base64")
            name = str(item.get("name") or "file")[:120]
            try:
                data = base64.b64decode(item["data"], validate=True)
            except binascii.Error:
                raise BadInput(f"{name} is not valid base64") from None
            files.append(InboundFile(name=name, data=data))
        return files

    @staticmethod
    def _origin(name: str) -> Origin:
        return Origin(surface=SURFACE, team="local", channel=CHANNEL, user=name)


class _StatusLine:
    """The live status line of one command: queued → running (elapsed) → done | failed.

    A :class:`adapters.delivery.StatusView`: the web channel keeps its state in its history
    rows (the page draws it), where Slack and Discord edit a message's text."""

    def __init__(self, surface: WebSurface) -> None:
        self.surface = surface
        self.message_id: int | None = None
        self.text = ""
        self.started = 0.0
        self.closed = False

    def opened(self, text: str) -> None:
        self.closed, self.text = False, text

    def on_progress(self, job_id: str, state: str, detail: str | None) -> None:
        if self.message_id is None or self.closed:
            return
        # Until one job runs nothing is running, so the first running job starts the clock.
        if state in ("running", "retrying") and not self.started:
            self.started = time.monotonic()
            self.surface.update(self.message_id, state="running", detail=detail, stamp="started_at")
        elif state == "retrying":
            self.surface.update(self.message_id, detail=detail)

    async def finish(self, *, failed: bool, detail: str | None = None) -> None:
        self._end("failed" if failed else "done", detail)

    async def cancel(self) -> None:
        """❌ on the status line stopped the job."""
        self._end("cancelled", None)

    async def interrupt(self) -> None:
        """The bot is stopping; the job resumes at the next start (not a failure)."""
        self._end("interrupted", INTERRUPTED)

    def _end(self, state: str, detail: str | None) -> None:
        if self.message_id is None or self.closed:
            return
        self.closed = True
        fields: dict[str, Any] = {"state": state, "stamp": "finished_at"}
        if CANCEL_HINT in self.text:  # nothing is left to cancel
            fields["text"] = self.text.replace(CANCEL_HINT, "")
        if detail:
            fields["detail"] = detail
        with contextlib.suppress(Exception):
            self.surface.update(self.message_id, **fields)


def _person(sent_by: str) -> str:
    """``"web:alice"`` (an asset's ``sent_by``) as ``"alice (web)"``."""
    surface, _, user = sent_by.partition(":")
    return f"{user} ({surface})" if user else surface


def _sent_line(asset: dict[str, Any]) -> str:
    """An upload in a list: who sent it, its name and size."""
    who = _person(asset["sent_by"]) if asset.get("sent_by") else "someone"
    return (
        f"{asset['id']} 📎 sent by {who} · {asset['prompt'] or 'image'} · "
        f"{asset['width']}×{asset['height']}"
    )


@dataclass
class _Slot:
    """One beat of a stitched sequence: its number, its words, its shot (None: not in the
    stitch) and, if its shot failed, why."""

    number: int | None
    beat: str
    shot: dict[str, Any] | None
    failure: str | None = None
    #: The image the shot was made from (its first frame, near enough): its thumbnail.
    poster: str | None = None


def _command_html(text: str) -> str:
    """A command to type, shown whole and selected whole with one click (to copy)."""
    return f"<code class='command'>{html.escape(text)}</code>"


def _sequence_html(asset: dict[str, Any], sequence: dict[str, Any], slots: list[_Slot]) -> str:
    """A stitch's shots as it plays them, each playable and linked to its own page; a
    failed shot's reason and the reshoot that completes it; the commands that change it."""
    e = html.escape
    sequence_id = sequence["id"]
    items = []
    for slot in slots:
        number = slot.number or "?"
        reshoot = _command_html(f"/tierbot reshoot {sequence_id} {number}")
        if slot.shot is not None:
            shot_id = e(slot.shot["id"])
            words = slot.shot["prompt"] or slot.beat
            beat = f" · beat “{e(slot.beat)}”" if words != slot.beat else ""
            length = f" · {slot.shot['duration_s']:.1f} s" if slot.shot["duration_s"] else ""
            poster = f" poster='/files/{e(slot.poster)}?w=256'" if slot.poster else ""
            items.append(
                f"<li class='shot' data-shot='{number}' data-asset='{shot_id}'>"
                f"<video muted controls preload='metadata'{poster} src='/files/{shot_id}'>"
                "</video>"
                f"<div><span class='number'>shot {number}</span> "
                f"<q class='beat'>{e(words)}</q>{beat}<br>"
                f"<a href='/assets/{shot_id}'>{shot_id}</a>{length}"
                f"<br><span class='muted'>again:</span> {reshoot}</div></li>"
            )
        elif slot.failure is not None:
            items.append(
                f"<li class='shot failed' data-shot='{number}'>"
                "<div class='missing' aria-hidden='true'>✖</div>"
                f"<div><span class='number'>shot {number}</span> "
                f"<q class='beat'>{e(slot.beat)}</q><br>"
                f"<span class='failure'>failed: {e(slot.failure)}</span><br>"
                f"<span class='muted'>make it:</span> {reshoot}</div></li>"
            )
        else:  # made since this stitch (a reshoot): the latest stitch has it
            latest = sequence["asset_id"] or ""
            items.append(
                f"<li class='shot missing-here' data-shot='{number}'>"
                "<div class='missing' aria-hidden='true'>…</div>"
                f"<div><span class='number'>shot {number}</span> "
                f"<q class='beat'>{e(slot.beat)}</q><br>not in this stitch; made since: "
                f"<a href='/assets/{e(latest)}'>the latest stitch</a></div></li>"
            )
    numbers = [slot.number for slot in slots if slot.number]
    if sorted(numbers) != list(range(1, len(sequence["beats"]) + 1)):
        numbers = list(range(1, len(sequence["beats"]) + 1))
    example = ",".join(map(str, reversed(numbers)))
    newer = (
        f" A newer stitch of this sequence: <a href='/assets/{e(sequence['asset_id'])}'>"
        f"{e(sequence['asset_id'])}</a>."
        if sequence["asset_id"] and sequence["asset_id"] != asset["id"]
        else ""
    )
    return (
        f"<section id='sequence' class='sequence' data-sequence='{e(sequence_id)}'>"
        f"<h2>Shots, as stitched</h2><p>Sequence {e(sequence_id)}, from storyboard "
        f"<a href='/assets/{e(sequence['grid_id'])}'>{e(sequence['grid_id'])}</a>: "
        f"order {','.join(map(str, numbers))}.{newer}</p>"
        f"<ul class='shots'>{''.join(items)}</ul>"
        "<h2>Change it</h2><p>Type these in the channel (click one to select it):</p>"
        "<dl class='commands'>"
        "<dt>reshoot shot k (a new take; words after k are its new motion)</dt>"
        f"<dd>{_command_html(f'/tierbot reshoot {sequence_id} <k> [motion words]')}</dd>"
        "<dt>re-order (free; every shot once, in the new order)</dt>"
        f"<dd>{_command_html(f'/tierbot order {sequence_id} {example}')}</dd></dl></section>"
    )


def _canvas_html(asset: dict[str, Any]) -> str:
    """An image with the canvas over it (``web_static/canvas.js`` draws on it): paint the
    region an edit may change, say what to change, Send. The page sends
    ``/tierbot edit <id> <instruction> --mask`` with ``mask.png`` (white: may change, black:
    keep) at the image's natural size, ``data-width`` × ``data-height``."""
    e = html.escape
    asset_id = e(asset["id"])
    tools = "".join(
        f"<label class='tool'><input type='radio' name='tool' value='{value}'"
        f"{' checked' if value == 'brush' else ''}> {e(label)}</label>"
        for value, label in (("brush", "🖌️ brush"), ("eraser", "🧽 eraser"), ("rect", "▭ box"))
    )
    return (
        f"<div id='canvas' class='canvas' data-asset='{asset_id}' "
        f"data-width='{int(asset['width'])}' data-height='{int(asset['height'])}' "
        f"data-command='/tierbot edit {asset_id}'>"
        f"<div class='stage'><img id='canvas-image' src='/files/{asset_id}' "
        f"alt='{e(asset['prompt'] or '')}'>"
        "<canvas id='paint' aria-label='paint the area the edit may change'></canvas></div>"
        "<form id='region-edit' class='region-edit' autocomplete='off'>"
        "<p class='hint'>Paint over what may change; everything else is kept exactly. "
        "Then say what to change and send: the edit shows in the channel.</p>"
        f"<div class='tools' role='group' aria-label='paint tools'>{tools}"
        "<label class='tool'>size <input id='brush-size' type='range' min='4' max='160' "
        "value='40' aria-label='brush size'></label>"
        "<button type='button' id='undo' title='undo (Ctrl+Z)' disabled>↶ undo</button>"
        "<button type='button' id='clear' disabled>clear</button></div>"
        "<div class='ask'>"
        "<input id='canvas-name' maxlength='40' placeholder='your name' "
        "autocomplete='nickname' aria-label='your name'>"
        f"<input id='instruction' maxlength='{MAX_PROMPT_CHARS}' "
        "placeholder='what to change there, e.g. make the sky stormy' "
        "aria-label='what to change in the painted area'>"
        "<button type='submit' id='send-edit'>Send</button></div>"
        "<p id='canvas-note' class='canvas-note' role='status' aria-live='polite'></p>"
        f"</form></div><p><a href='/files/{asset_id}'>open the file</a></p>"
    )


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_json(body: dict[str, Any]) -> None:
    """Refuse a body nested deeper than ``MAX_DEPTH`` or with a lone surrogate in a string.

    JSON's ``\\ud800`` escapes decode to lone surrogates, which are not text: they cannot be
    stored or sent back as UTF-8.

    Raises:
        BadInput: What is wrong, for the page to show.
    """
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise BadInput(f"the request body is nested too deeply (limit {MAX_DEPTH})")
        if isinstance(value, dict):
            stack += [(k, depth) for k in value]
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, list):
            stack += [(v, depth + 1) for v in value]
        elif isinstance(value, str) and _SURROGATE.search(value):
            raise BadInput("the request body has a lone surrogate (\\ud800-\\udfff) in a string")


async def _read_part(part: BodyPartReader, limit: int) -> tuple[bytes, int]:
    """A part's bytes and its size; past ``limit`` the bytes are dropped but the part is read
    to its end (bounded by the body's length), so the answer can say how big it was and the
    sender, still sending, receives it."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await part.read_chunk(256 * 1024):
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        else:
            chunks.clear()
    return b"".join(chunks), size


def _file_name(raw: str | None) -> str:
    """A file's name as sent, fit to show: no folders, no control characters, not too long."""
    name = re.split(r"[/\\]", raw or "")[-1]
    name = _SURROGATE.sub("\ufffd", _CONTROL.sub("", name)).strip()
    return name[:120] or "file"


def make_thumbnail(path: Path, target: Path, width: int) -> Path:
    """Write a JPEG of ``path`` at most ``width`` px wide to ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image.thumbnail((width, width * 4))
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        image.convert("RGB").save(tmp, "JPEG", quality=85)
        tmp.replace(target)
    return target


def create(context: SurfaceContext) -> WebSurface:
    """The web channel needs no account; off the loopback it needs TIERBOT_WEB_TOKEN.

    Raises:
        SurfaceUnavailable: bound to a non-loopback address without a token.
    """
    return WebSurface(context)
