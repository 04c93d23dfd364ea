"""The local web channel: the whole bot in a browser page, with no accounts.

A chat surface like Slack and Discord: the page's command box sends the same ``/draft`` and
``/tierbot`` text to the same core, reaction chips are the same reactions, and the bot's
replies come back over server-sent events. Unlike Slack and Discord there is no platform to
keep the history, so messages live in the ``web_messages`` table and survive a restart.

Endpoints (all JSON unless noted):

- ``GET /`` the page; ``GET /static/<file>`` its script and style (shipped, no CDN).
- ``GET /api/messages?name=N`` the history N may see (private replies go to one name).
- ``GET /api/events?name=N`` server-sent events: ``message`` (new) and ``update`` (a status
  line moved: queued → running → done | failed).
- ``POST /api/commands`` ``{"name", "text"}`` → 202; replies arrive as events.
- ``POST /api/reactions`` ``{"name", "message_id", "emoji", "event_id"}`` → 202.
- ``GET /assets/<id>`` the asset page (HTML): the file, its facts, gate decisions and the
  lineage as a tree of thumbnails. ``GET /files/<id>[?w=256]`` the file or a thumbnail.

Safety: binds 127.0.0.1 by default; any other address needs ``TIERBOT_WEB_TOKEN``, checked on
every request but the page itself (header ``Authorization: Bearer`` or the ``tierbot_token``
cookie the page sets after asking). Requests from another origin, or to a Host that is not
this server (DNS rebinding), are refused; bodies are capped at 400 KiB (``MAX_BODY``, room for
a calendar in base64); a name is only a label, so on a shared machine "private" means "not
shown to other names", not secret.
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

from aiohttp import web
from PIL import Image

from adapters.delivery import FAILED_ON_OUR_SIDE, INTERRUPTED, Tasks
from adapters.http_server import MAX_BODY, http_server
from bot import cpu, progress
from bot.app import Services
from bot.domain import CommandEvent, Origin, ReactionEvent, Reply
from bot.ledger import credits
from bot.pipeline import LineageNode, UserError
from bot.surfaces import SurfaceUnavailable
from storage.store import utcnow

log = logging.getLogger(__name__)

SURFACE = "web"
CHANNEL = "web"
BOT_NAME = "tierbot"
MAX_TEXT = 4000
THUMB_WIDTHS = (128, 256, 512)
NAME = re.compile(r"^[\w][\w .@-]{0,39}$")
EVENT_ID = re.compile(r"^[\w-]{1,64}$")
ASSET_ID = re.compile(r"^[0-9a-f]{8}$")
KEEPALIVE_S = 15.0


class BadInput(Exception):
    """A request the channel refuses; the message is shown in the page."""


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
        self, services: Services, *, host: str | None = None, port: int | None = None
    ) -> None:
        settings = services.settings
        self.services = services
        self.token = settings.web_token.get_secret_value() if settings.web_token else None
        bind = host or settings.http_host
        if not is_loopback(bind) and not self.token:
            raise SurfaceUnavailable(
                f"TIERBOT_WEB_TOKEN is required to serve the web channel on {bind}; "
                "set it, or bind TIERBOT_HTTP_HOST=127.0.0.1"
            )
        self.server = http_server(services, host=host, port=port)
        self._listeners: set[_Listener] = set()
        self.tasks = Tasks()
        self._spawn = self.tasks.spawn
        self._stopping = False
        self._add_routes(self.server.app)

    # -- lifecycle ---------------------------------------------------------------------------

    def _add_routes(self, app: web.Application) -> None:
        app.middlewares.append(self._guard)
        app.router.add_get("/", self._page)
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
        self.services.store.interrupt_web_statuses(INTERRUPTED, utcnow())
        url = await self.server.start()
        return f"Web channel: {url}  (open it in a browser, set your name, type /draft ...)"

    async def stop(self) -> None:
        self._stopping = True
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
        public = request.path == "/" or request.path.startswith("/static/")
        if self.token and not public and not self._authorised(request):
            return web.json_response({"error": "token required"}, status=401)
        try:
            return await handler(request)
        except BadInput as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except web.HTTPRequestEntityTooLarge:
            return web.json_response(
                {"error": f"request too large (limit {MAX_BODY // 1024} KiB)"}, status=413
            )

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

    async def _static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in ("app.js", "style.css"):
            raise web.HTTPNotFound()
        return self._static_file(name)

    def _static_file(self, name: str) -> web.Response:
        text = resources.files("adapters").joinpath("web_static", name).read_text("utf-8")
        kinds = {"html": "text/html", "js": "text/javascript", "css": "text/css"}
        return web.Response(
            text=text,
            content_type=kinds[name.rsplit(".", 1)[1]],
            headers={"Cache-Control": "no-cache"},
        )

    # -- the channel -------------------------------------------------------------------------

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        name = self._name(request.query.get("name", ""), required=False)
        rows = self.services.store.web_messages(name)
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
        body = await self._json(request)
        name = self._name(body.get("name"), required=True)
        text = body.get("text")
        if not isinstance(text, str) or not text.strip():
            raise BadInput("type a command, e.g. /draft a lighthouse at dawn --n 4")
        if len(text) > MAX_TEXT:
            raise BadInput(f"a command is at most {MAX_TEXT} characters; got {len(text)}")
        attachment = self._attachment(body.get("attachment"))
        origin = self._origin(name)
        echo = self._post_row({"author": name, "text": text.strip()})
        command, _, rest = text.strip().partition(" ")
        # An unknown command is the parser's to refuse, in the same words as on every surface.
        replies = self.services.bot.handle_command(
            CommandEvent(
                origin=origin, command=command.lstrip("/"), text=rest, attachment=attachment
            )
        )
        self._spawn(self._deliver(origin, replies))
        return web.json_response({"ok": True, "message_id": echo}, status=202)

    async def _reaction(self, request: web.Request) -> web.StreamResponse:
        body = await self._json(request)
        name = self._name(body.get("name"), required=True)
        message_id = body.get("message_id")
        emoji = body.get("emoji")
        event_id = body.get("event_id") or uuid.uuid4().hex
        if not isinstance(message_id, int) or self.services.store.web_message(message_id) is None:
            raise BadInput("no such message")
        if not isinstance(emoji, str) or not 0 < len(emoji) <= 16:
            raise BadInput("a reaction is one emoji")
        if not isinstance(event_id, str) or not EVENT_ID.match(event_id):
            raise BadInput("event_id must be 1 to 64 letters, digits, - or _")
        origin = self._origin(name)
        replies = self.services.bot.handle_reaction(
            ReactionEvent(
                origin=origin,
                event_id=f"{name}:{event_id}",
                message_id=str(message_id),
                emoji=emoji,
            )
        )
        self._spawn(self._deliver(origin, replies))
        return web.json_response({"ok": True}, status=202)

    # -- delivering replies ------------------------------------------------------------------

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies nobody typed a command for (scheduled batches) in the channel."""
        await self._deliver(origin, replies)

    async def _deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post a use case's replies as they come; keep its status line moving."""
        status = _StatusLine(self)
        progress.listen(status.on_progress)
        try:
            async for reply in replies:
                if reply.status:
                    status.open(self._post(origin, reply, state="queued"))
                    continue
                self._post(origin, reply)
                if not reply.private or reply.error:
                    status.close(failed=reply.error, detail=reply.text if reply.error else None)
        except asyncio.CancelledError:
            if self._stopping:
                status.interrupt()
            else:  # ❌ on the status line
                status.close(failed=True, detail="cancelled")
            raise
        except Exception:
            log.exception("web delivery failed")
            status.close(failed=True, detail=FAILED_ON_OUR_SIDE)
        finally:
            status.close(failed=True, detail="stopped")

    def _post(self, origin: Origin, reply: Reply, state: str | None = None) -> int:
        root = self.services.bot.thread_of(origin, reply)
        thread_root = int(root) if root is not None else None
        message_id = self._post_row(
            {
                "author": BOT_NAME,
                "text": reply.text,
                "files": [reply.asset_id] if reply.files and reply.asset_id else [],
                "reactions": reply.reactions,
                "thread_root": thread_root,
                "asset_id": reply.asset_id,
                "private_to": origin.user if reply.private else None,
                "state": state,
                "error": int(reply.error),
            }
        )
        self.services.bot.record_post(origin, str(message_id), reply, thread_id=root)
        return message_id

    def _post_row(self, row: dict[str, Any]) -> int:
        message_id = self.services.store.add_web_message(row)
        self._publish("message", message_id)
        return message_id

    def update(self, message_id: int, **fields: Any) -> None:
        self.services.store.update_web_message(message_id, **fields)
        self._publish("update", message_id)

    def _publish(self, kind: str, message_id: int) -> None:
        row = self.services.store.web_message(message_id)
        if row is None:
            return
        view = self._view(row)
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
        for asset_id in row["files"]:
            asset = self.services.store.get_asset(asset_id)
            if asset is not None:
                files.append(
                    {
                        "asset_id": asset_id,
                        "url": f"/files/{asset_id}",
                        "page": f"/assets/{asset_id}",
                        "mime": asset["mime"],
                        "kind": asset["kind"],
                    }
                )
        return {
            "id": row["id"],
            "at": row["at"],
            "author": row["author"],
            "text": row["text"],
            "files": files,
            "reactions": row["reactions"],
            "thread_root": row["thread_root"],
            "asset_id": row["asset_id"],
            "private": bool(row["private_to"]),
            "state": row["state"],
            "started_at": row["started_at"],
            "finished_at": row["finished_at"],
            "detail": row["detail"],
            "error": row["error"],
        }

    # -- assets ------------------------------------------------------------------------------

    def _asset(self, request: web.Request) -> dict[str, Any]:
        asset_id = request.match_info["asset_id"]
        asset = self.services.store.get_asset(asset_id) if ASSET_ID.match(asset_id) else None
        if asset is None:
            raise web.HTTPNotFound(text=f"no asset {asset_id[:16]}")
        return asset

    async def _file(self, request: web.Request) -> web.StreamResponse:
        asset = self._asset(request)
        path = self.services.files.path(asset["path"])
        width = request.query.get("w")
        if width is None or asset["kind"] == "video":
            return web.FileResponse(
                path, headers={"Content-Type": asset["mime"], "Cache-Control": "max-age=86400"}
            )
        if not width.isdigit() or int(width) not in THUMB_WIDTHS:
            raise BadInput(f"w must be one of {', '.join(map(str, THUMB_WIDTHS))}")
        target = self.services.settings.data_dir / "thumbs" / f"{asset['sha256']}-{width}.jpg"
        if not target.exists():
            await cpu.run(make_thumbnail, path, target, int(width))
        return web.FileResponse(
            target, headers={"Content-Type": "image/jpeg", "Cache-Control": "max-age=86400"}
        )

    async def _asset_page(self, request: web.Request) -> web.StreamResponse:
        asset = self._asset(request)
        try:
            trees = self.services.pipeline.lineage_tree(asset["id"])
        except UserError as exc:
            raise web.HTTPNotFound(text=exc.message) from None
        gates = self.services.store.gates(asset["id"])
        e = html.escape
        media = (
            f'<video controls preload="metadata" src="/files/{e(asset["id"])}"></video>'
            if asset["kind"] == "video"
            else f'<a href="/files/{e(asset["id"])}"><img src="/files/{e(asset["id"])}" '
            f'alt="{e(asset["prompt"] or "")}"></a>'
        )
        facts = [
            ("prompt", asset["prompt"] or ""),
            ("stage", asset["stage"]),
            ("model", asset["model_id"]),
            ("seed", str(asset["seed"])),
            (
                "size",
                f"{asset['width']}×{asset['height']}"
                + (f", {asset['duration_s']:.0f} s" if asset["duration_s"] else ""),
            ),
            ("cost", credits(asset["cost"] or 0)),
            ("created", asset["created_at"][:19].replace("T", " ") + " UTC"),
        ]
        decisions = (
            "".join(
                f"<li>{e(g['decision'])} by {e(g['user'])} ({e(g['surface'])}), "
                f"{e(g['at'][:19].replace('T', ' '))} UTC</li>"
                for g in gates
            )
            or "<li>none yet</li>"
        )
        body = (
            f"<h1>{e(asset['stage'])} {e(asset['id'])}</h1><div class='media'>{media}</div>"
            "<dl>" + "".join(f"<dt>{e(k)}</dt><dd>{e(v)}</dd>" for k, v in facts) + "</dl>"
            f"<h2>Decisions</h2><ul>{decisions}</ul>"
            "<h2>Lineage</h2><ul class='tree'>"
            + "".join(self._tree_html(t, asset["id"]) for t in trees)
            + "</ul>"
        )
        page = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>tierbot · {e(asset['id'])}</title>"
            "<link rel='stylesheet' href='/static/style.css'></head>"
            f"<body class='asset-page'><p><a href='/'>← channel</a></p>{body}</body></html>"
        )
        return web.Response(text=page, content_type="text/html")

    def _tree_html(self, node: LineageNode, focus: str) -> str:
        e = html.escape
        asset = node.asset
        thumb = (
            f'<video muted preload="metadata" src="/files/{e(asset["id"])}"></video>'
            if asset["kind"] == "video"
            else f'<img loading="lazy" src="/files/{e(asset["id"])}?w=128" alt="">'
        )
        here = " class='focus'" if asset["id"] == focus else ""
        children = "".join(self._tree_html(c, focus) for c in node.children)
        return (
            f"<li{here}><a href='/assets/{e(asset['id'])}'>{thumb}</a>"
            f"<span>{e(node.describe())}</span>"
            + (f"<ul>{children}</ul>" if children else "")
            + "</li>"
        )

    # -- input -------------------------------------------------------------------------------

    async def _json(self, request: web.Request) -> dict[str, Any]:
        if request.content_type != "application/json":
            raise BadInput("send JSON (Content-Type: application/json)")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            raise BadInput("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadInput("the request body must be a JSON object")
        return body

    @staticmethod
    def _name(value: Any, *, required: bool) -> str | None:
        if value in (None, "") and not required:
            return None
        if not isinstance(value, str) or not NAME.match(value.strip()):
            raise BadInput("set your name first: 1 to 40 letters, digits, spaces, '.', '@' or '-'")
        return value.strip()

    @staticmethod
    def _attachment(value: Any) -> bytes | None:
        """A file sent with a command (📎), base64-encoded in the JSON body."""
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise BadInput("attachment must be the file's bytes in base64")
        try:
            return base64.b64decode(value, validate=True)
        except binascii.Error:
            raise BadInput("attachment is not valid base64") from None

    @staticmethod
    def _origin(name: str) -> Origin:
        return Origin(surface=SURFACE, team="local", channel=CHANNEL, user=name)


class _StatusLine:
    """The live status line of one command: queued → running (elapsed) → done | failed."""

    def __init__(self, surface: WebSurface) -> None:
        self.surface = surface
        self.message_id: int | None = None
        self.started = 0.0
        self.closed = False

    def open(self, message_id: int) -> None:
        self.message_id, self.closed = message_id, False

    def on_progress(self, job_id: str, state: str, detail: str | None) -> None:
        if self.message_id is None or self.closed:
            return
        # Until one job runs nothing is running, so the first running job starts the clock.
        if state in ("running", "retrying") and not self.started:
            self.started = time.monotonic()
            self.surface.update(
                self.message_id, state="running", started_at=utcnow(), detail=detail
            )
        elif state == "retrying":
            self.surface.update(self.message_id, detail=detail)

    def close(self, *, failed: bool, detail: str | None) -> None:
        self._end("failed" if failed else "done", detail)

    def interrupt(self) -> None:
        """The bot is stopping; the job resumes at the next start (not a failure)."""
        self._end("interrupted", INTERRUPTED)

    def _end(self, state: str, detail: str | None) -> None:
        if self.message_id is None or self.closed:
            return
        self.closed = True
        fields: dict[str, Any] = {"state": state, "finished_at": utcnow()}
        if detail:
            fields["detail"] = detail
        with contextlib.suppress(Exception):
            self.surface.update(self.message_id, **fields)


def make_thumbnail(path: Path, target: Path, width: int) -> Path:
    """Write a JPEG of ``path`` at most ``width`` px wide to ``target`` (atomically)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(path) as image:
        image.thumbnail((width, width * 4))
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        image.convert("RGB").save(tmp, "JPEG", quality=85)
        tmp.replace(target)
    return target


def create(services: Services) -> WebSurface:
    """The web channel needs no account; off the loopback it needs TIERBOT_WEB_TOKEN.

    Raises:
        SurfaceUnavailable: bound to a non-loopback address without a token.
    """
    return WebSurface(services)
