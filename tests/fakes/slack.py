"""A fake Slack served by aiohttp on 127.0.0.1, for offline tests of the Slack adapter.

It plays both halves of Slack (spec: /work/shared/specs/chat_platforms.md, sections 1 and 2):

* The Web API at ``api_url``, for the real ``slack_sdk.web.async_client.AsyncWebClient``
  (``base_url=fake.api_url``): auth, chat, reactions, the three-step ``files_upload_v2`` flow,
  ``files.info``, usergroups, ``apps.connections.open``. Errors are HTTP 200
  ``{"ok": false, "error": ...}`` as on Slack, and rate limits are HTTP 429 with
  ``Retry-After`` (spec 1.7).
* The file host: ``url_private`` / ``url_private_download`` under ``/files-pri/<team>-<file>/``
  answer the bytes only to ``Authorization: Bearer <bot token>``; without it, Slack's login
  page (HTTP 200, HTML). Every request is kept in ``downloads`` with its headers.
* Slack calling the app: signed HTTP requests to a Bolt ``web_app`` (spec 1.6, 2.2) and
  envelopes over a Socket Mode websocket (spec 2.3), plus the ``response_url`` endpoint (1.2).

All state is plain attributes, so a test can seed it (``members``, ``usergroups``) and assert on
it (``calls``, ``messages``, ``uploads``, ``files``, ``ephemerals``, ``response_url_posts``,
``downloads``). People's files are seeded with ``seed_file`` and sent with ``app_mention``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import mimetypes
import re
import secrets
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web
from slack_sdk.signature import SignatureVerifier

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
Reply = tuple[int, dict[str, Any] | str, float]

_TS = re.compile(r"\d{10}\.\d{6}")
# Lower-case names without colons, optionally with a documented skin-tone suffix (spec 1.3).
_REACTION = re.compile(r"[a-z0-9_+-]+(::skin-tone-[2-6])?")
_SLACK_FILE_IMAGE_TYPES = {"png", "jpg", "jpeg", "gif"}
_NO_AUTH_LOG = {"auth.test", "apps.connections.open"}
#: What files.slack.com answers a request without a valid token: the sign-in page, HTTP 200.
_LOGIN_PAGE = (
    '<!DOCTYPE html><html lang="en-US"><head><title>Slack</title></head><body>'
    "<h1>Sign in to your workspace</h1></body></html>"
)


@dataclass
class Call:
    """One Web API request as the fake received it.

    ``params`` merges the query string, the form body and the JSON body. ``encoding`` says where
    the arguments were: ``"json"`` (chat.*), ``"query"`` (reactions.add, files.*, usergroups.*:
    the SDK puts ``params=`` in the URL even on a POST) or ``"form"``. ``at`` is
    ``time.monotonic()``.
    """

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float
    http_verb: str = "POST"
    encoding: str = "query"


class SlackError(Exception):
    """Raised by a method handler; becomes HTTP 200 ``{"ok": false, "error": error}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass
class _Failure:
    error: str
    status: int
    retry_after: int | None


@dataclass
class _Answer:
    body: Any
    skip: int


class FakeSlack:
    """Slack's Web API, upload host, response_url host and Socket Mode server in one process."""

    def __init__(
        self,
        *,
        bot_token: str = "xoxb-test-token",
        app_token: str = "xapp-test-token",
        signing_secret: str = "test-signing-secret",
        team_id: str = "T0TEST",
        bot_user_id: str = "UBOT",
        bot_id: str = "BBOT",
        app_id: str = "A0TEST",
    ) -> None:
        self.bot_token, self.app_token, self.signing_secret = bot_token, app_token, signing_secret
        self.team_id, self.app_id = team_id, app_id
        self.bot_user_id, self.bot_id = bot_user_id, bot_id
        self.base_url = ""
        self.api_url = ""
        self.max_file_bytes = 1 << 30  # commonly cited per-file limit (spec 1.3)
        #: Slack takes reaction adds at about one per this many seconds (Tier 3, bursts);
        #: each ``reactions.add`` answers after it, so pre-adding nine reactions takes ~2 s.
        self.reaction_pace_s = 0.25
        #: Called with each message as soon as it is stored (before the poster has its
        #: answer): tests click the moment a message appears.
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        #: The last signed request sent to the app (url, body, headers), to replay it.
        self.last_signed: tuple[str, bytes, dict[str, str]] | None = None
        self.calls: list[Call] = []
        self.members: dict[str, set[str]] = {"C0GENERAL": {bot_user_id, "UALICE", "UBOB", "UCAROL"}}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        self.ephemerals: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self.files: dict[str, dict[str, Any]] = {}
        self.usergroups: dict[str, set[str]] = {}
        self.usergroup_handles: dict[str, str] = {}  # usergroup id -> handle (without @)
        self.response_url_posts: list[dict[str, Any]] = []
        self.socket_frames: list[dict[str, Any]] = []  # every frame the client sent us
        self.socket_connections = 0  # websockets accepted so far
        #: Every request to the file host (``/files-pri/...``), headers included.
        self.downloads: list[Call] = []
        #: False: the bot token lacks ``files:read`` (files.info says ``missing_scope``, the
        #: file host answers its sign-in page).
        self.files_read_scope = True
        #: When set, file downloads wait for it (a bot stopped in the middle of one).
        self.hold_downloads: asyncio.Event | None = None
        self._download_redirects: deque[str] = deque()
        self._announced: dict[str, dict[str, Any]] = {}  # file_id -> getUploadURLExternal args
        self._failures: dict[str, deque[_Failure]] = defaultdict(deque)
        self._answers: dict[str, deque[_Answer]] = defaultdict(deque)
        self._ids = itertools.count(1)
        self._last_us = 0
        self._tickets: set[str] = set()
        #: Open Socket Mode connections that take envelopes, oldest first. With several (one
        #: per replica of the app) Slack spreads envelopes across them: here, in turn.
        self._sockets: list[web.WebSocketResponse] = []
        self._turn = 0
        self._all_ws: set[web.WebSocketResponse] = set()
        self._connected = asyncio.Event()
        self._acks: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "apps.connections.open": self._apps_connections_open,
            "chat.postMessage": self._chat_post_message,
            "chat.update": self._chat_update,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "reactions.add": self._reactions_add,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
            "files.info": self._files_info,
            "usergroups.users.list": self._usergroups_users_list,
            "usergroups.list": self._usergroups_list,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind 127.0.0.1 on a free port and serve every route."""
        app = web.Application(client_max_size=max(self.max_file_bytes, 1 << 30) + (1 << 20))
        app.router.add_route("*", "/api/{method}", self._handle_api)
        app.router.add_post("/upload/{file_id}", self._handle_upload)
        app.router.add_get("/files-pri/{team_file}/{tail:.*}", self._handle_download)
        app.router.add_post("/commands/{tail:.*}", self._handle_response_url)
        app.router.add_get("/link/", self._handle_socket)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.base_url = f"http://127.0.0.1:{port}"
        self.api_url = f"{self.base_url}/api/"
        self._session = aiohttp.ClientSession()
        log.debug("fake slack listening on %s", self.base_url)

    async def stop(self) -> None:
        """Close the websockets (code 1001), cancel pending acks, and release the port.

        Close a Socket Mode client first: an SDK client whose socket is closed by the server
        reconnects, and would then retry against a closed port.
        """
        for future in self._acks.values():
            future.cancel()
        self._acks.clear()
        for ws in list(self._all_ws):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server stopping")
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # ------------------------------------------------------------------ test helpers

    def methods(self) -> list[str]:
        """Web API methods called so far, without the auth.test / apps.connections.open noise."""
        return [c.method for c in self.calls if c.method not in _NO_AUTH_LOG]

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``condition`` every 5 ms until it is true; ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s; calls={self.methods()}")
            await asyncio.sleep(0.005)

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10.0,
        where: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """Wait for ``count`` calls of ``method`` (matching ``where``); return all matches."""

        def matching() -> list[Call]:
            return [c for c in self.calls if c.method == method and (where is None or where(c))]

        await self.wait_until(lambda: len(matching()) >= count, timeout)
        return matching()

    def fail_next(
        self,
        method: str,
        error: str,
        *,
        status: int = 200,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next ``times`` calls of ``method`` fail (spec 1.7).

        ``status=429`` answers HTTP 429 with ``Retry-After`` (default 1) and
        ``{"ok": false, "error": "ratelimited"}``; any other status answers that status with
        ``{"ok": false, "error": error}``. ``method="upload"`` targets the upload URL, which
        answers plain text as Slack's file host does.
        """
        for _ in range(times):
            self._failures[method].append(_Failure(error, status, retry_after))

    def answer_next(self, method: str, body: Any, *, skip: int = 0) -> None:
        """Make the call of ``method`` after the next ``skip`` ones answer ``body`` as is (HTTP
        200 JSON), whatever it is: a proxy or an API change answering what Slack would not."""
        self._answers[method].append(_Answer(body, skip))

    def seed_message(
        self, channel: str, text: str, *, user: str = "UALICE", thread_ts: str | None = None
    ) -> str:
        """Store a message someone else posted (e.g. a user's) and return its ts."""
        return self._store(channel, {"user": user, "text": text, "thread_ts": thread_ts})["ts"]

    def seed_file(
        self,
        name: str,
        data: bytes,
        *,
        user: str = "UALICE",
        channel: str | None = "C0GENERAL",
        mimetype: str | None = None,
    ) -> dict[str, Any]:
        """A file someone uploaded (shared in ``channel``, or nowhere when None), as the full
        file object Slack returns for it; its bytes are served on the file host."""
        file_id = f"F0{next(self._ids):08d}"
        self.uploads[file_id] = data
        self.files[file_id] = {
            "filename": name,
            "length": len(data),
            "title": name,
            "user": user,
            "mimetype": mimetype,
            "channel": channel,
            "channels": [channel] if channel else [],
            "thread_ts": None,
            "initial_comment": None,
            "shares": {},
        }
        return self._file_object(file_id, shared=True)

    def delete_file(self, file_id: str) -> None:
        """The file was deleted: files.info says ``file_deleted``, the file host 404s."""
        self.files[file_id]["deleted"] = True

    def redirect_next_download(self, location: str) -> None:
        """Make the next file-host request answer ``302 Location: location``."""
        self._download_redirects.append(location)

    def app_mention(
        self,
        *,
        user: str = "UALICE",
        text: str,
        channel: str = "C0GENERAL",
        files: list[dict[str, Any]] | None = None,
        check_file_info: bool = False,
        thread_ts: str | None = None,
    ) -> dict[str, Any]:
        """The ``app_mention`` event of a message ``user`` posts (stored like any message):
        ``text`` holds the mention as Slack writes it (``<@UBOT> draft ...``); ``files``
        (``seed_file`` results) come as full file objects, or with ``check_file_info`` as
        the bare stubs Slack sends from Slack Connect channels (then ``files.info`` tells
        the rest)."""
        file_ids = [f["id"] for f in files or []]
        msg = self._store(
            channel, {"user": user, "text": text, "thread_ts": thread_ts, "files": file_ids}
        )
        event: dict[str, Any] = {
            "type": "app_mention",
            "user": user,
            "text": text,
            "ts": msg["ts"],
            "client_msg_id": str(uuid.uuid4()),
            "team": self.team_id,
            "channel": channel,
            "event_ts": msg["ts"],
            "blocks": [
                {
                    "type": "rich_text",
                    "block_id": secrets.token_hex(3),
                    "elements": [
                        {"type": "rich_text_section", "elements": [{"type": "text", "text": text}]}
                    ],
                }
            ],
        }
        if thread_ts:
            event["thread_ts"] = thread_ts
        if file_ids:
            event["upload"] = False
            event["display_as_bot"] = False
            event["files"] = [
                {
                    "id": file_id,
                    "mode": "file_access",
                    "file_access": "check_file_info",
                    "created": 0,
                    "timestamp": 0,
                    "user": "",
                }
                if check_file_info
                else self._file_object(file_id, shared=True)
                for file_id in file_ids
            ]
        return event

    # ------------------------------------------------------------------ Web API (spec 1.3, 1.7)

    async def _handle_api(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        params: dict[str, Any] = dict(request.query)
        encoding, parse_error, form_token = "query", None, ""
        if request.content_type == "application/json" and request.can_read_body:
            encoding = "json"
            try:
                body = await request.json()
                if not isinstance(body, dict):
                    raise ValueError("not an object")
                params.update(body)
            except ValueError:
                parse_error = "invalid_json"
        elif request.can_read_body:
            form = await request.post()
            if form:
                encoding = "form"
                params.update({k: v for k, v in form.items() if isinstance(v, str)})
                form_token = str(params.pop("token", ""))  # "alternatively, a POST parameter"
        headers = dict(request.headers)
        self.calls.append(Call(method, params, headers, time.monotonic(), request.method, encoding))
        log.debug("fake slack: %s %s %s", request.method, method, params)

        if self._failures.get(method):
            return self._failure_response(self._failures[method].popleft())
        if answers := self._answers.get(method):
            if answers[0].skip == 0:
                return web.json_response(answers.popleft().body)
            answers[0].skip -= 1
        if method == "reactions.add" and self.reaction_pace_s:
            await asyncio.sleep(self.reaction_pace_s)
        try:
            if parse_error:
                raise SlackError(parse_error)
            handler = self._handlers.get(method)
            if handler is None:
                raise SlackError("unknown_method")
            self._check_token(method, request.headers.get("Authorization", ""), form_token)
            body = handler(params)
        except SlackError as e:
            body = {"ok": False, "error": e.error}
        return web.json_response(body)

    @staticmethod
    def _failure_response(failure: _Failure) -> web.Response:
        if failure.status == 429:
            return web.json_response(
                {"ok": False, "error": "ratelimited"},
                status=429,
                headers={"Retry-After": str(failure.retry_after or 1)},
            )
        return web.json_response({"ok": False, "error": failure.error}, status=failure.status)

    def _check_token(self, method: str, header: str, form_token: str) -> None:
        """Bearer header (or a ``token`` form field); xapp- only for apps.connections.open."""
        token = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        token = token or form_token
        if not token:
            raise SlackError("not_authed")
        wanted, other = (
            (self.app_token, self.bot_token)
            if method == "apps.connections.open"
            else (self.bot_token, self.app_token)
        )
        if token == other:
            raise SlackError("not_allowed_token_type")
        if token != wanted:
            raise SlackError("invalid_auth")

    def _auth_test(self, p: dict[str, Any]) -> dict[str, Any]:
        """What Bolt's single-team authorization caches on the first request (spec 1.4)."""
        return {
            "ok": True,
            "url": "https://fake-workspace.slack.com/",
            "team": "Fake Workspace",
            "user": "tierbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _apps_connections_open(self, p: dict[str, Any]) -> dict[str, Any]:
        """Issue a single-use websocket ticket (spec 2.3)."""
        ticket = uuid.uuid4().hex
        self._tickets.add(ticket)
        url = f"{self.base_url.replace('http', 'ws', 1)}/link/?ticket={ticket}&app_id={self.app_id}"
        return {"ok": True, "url": url}

    def _chat_post_message(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._member_channel(p.get("channel"))
        text, blocks = str(p.get("text") or ""), self._blocks(p.get("blocks"))
        if not text and not blocks and not p.get("attachments"):
            raise SlackError("no_text")
        thread_ts = str(p["thread_ts"]) if p.get("thread_ts") else None
        if thread_ts and (channel, thread_ts) not in self.messages:
            log.warning("chat.postMessage thread_ts=%s is not a message in %s", thread_ts, channel)
        msg = self._store(
            channel,
            {"user": self.bot_user_id, "text": text, "blocks": blocks, "thread_ts": thread_ts},
        )
        return {"ok": True, "channel": channel, "ts": msg["ts"], "message": _public(msg)}

    def _chat_update(self, p: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(p.get("channel") or ""), str(p.get("ts") or "")
        if channel not in self.members:
            raise SlackError("channel_not_found")
        msg = self.messages.get((channel, ts))
        if msg is None:
            raise SlackError("message_not_found")
        if msg["user"] != self.bot_user_id:
            raise SlackError("cant_update_message")
        text, blocks = str(p.get("text") or ""), self._blocks(p.get("blocks"))
        if not text and not blocks and not p.get("attachments"):
            raise SlackError("no_text")
        msg.update(text=text, edited={"user": self.bot_user_id, "ts": self._next_ts()})
        if "blocks" in p:
            msg["blocks"] = blocks
        return {"ok": True, "channel": channel, "ts": ts, "text": text, "message": _public(msg)}

    def _chat_post_ephemeral(self, p: dict[str, Any]) -> dict[str, Any]:
        channel = self._member_channel(p.get("channel"))
        user = str(p.get("user") or "")
        if user not in self.members[channel]:
            raise SlackError("user_not_in_channel")
        text, blocks = str(p.get("text") or ""), self._blocks(p.get("blocks"))
        if not text and not blocks and not p.get("attachments"):
            raise SlackError("no_text")
        message_ts = self._next_ts()
        self.ephemerals.append(
            {
                "channel": channel,
                "user": user,
                "text": text,
                "blocks": blocks,
                "thread_ts": p.get("thread_ts"),
                "message_ts": message_ts,
            }
        )
        return {"ok": True, "message_ts": message_ts}

    def _reactions_add(self, p: dict[str, Any]) -> dict[str, Any]:
        """Errors as listed on the reactions.add method page, in Slack's order of checks."""
        channel, ts, name = (str(p.get(k) or "") for k in ("channel", "timestamp", "name"))
        if not channel or not ts:
            raise SlackError("no_item_specified")
        if not _TS.fullmatch(ts):
            raise SlackError("bad_timestamp")
        if channel not in self.members:
            raise SlackError("channel_not_found")
        msg = self.messages.get((channel, ts))
        if msg is None:
            raise SlackError("message_not_found")
        if not _REACTION.fullmatch(name):
            raise SlackError("invalid_name")
        users = msg["reactions"].setdefault(name, set())
        if self.bot_user_id in users:
            raise SlackError("already_reacted")
        users.add(self.bot_user_id)
        return {"ok": True}

    def _files_get_upload_url(self, p: dict[str, Any]) -> dict[str, Any]:
        """Step 1 of files_upload_v2 (spec 1.3): announce name and length, get a URL."""
        filename = str(p.get("filename") or "")
        try:
            length = int(p["length"])
        except (KeyError, TypeError, ValueError):
            raise SlackError("invalid_arguments") from None
        if not filename or length < 0:
            raise SlackError("invalid_arguments")
        if length > self.max_file_bytes:
            raise SlackError("file_upload_size_restricted")
        file_id = f"F0{next(self._ids):08d}"
        self._announced[file_id] = {
            "filename": filename,
            "length": length,
            "alt_txt": p.get("alt_txt"),
            "snippet_type": p.get("snippet_type"),
        }
        return {"ok": True, "upload_url": f"{self.base_url}/upload/{file_id}", "file_id": file_id}

    async def _handle_upload(self, request: web.Request) -> web.Response:
        """Step 2: the file host takes raw bytes or multipart and answers ``OK - <length>``."""
        failures = self._failures.get("upload")
        if failures:
            failure = failures.popleft()
            retry = {"Retry-After": str(failure.retry_after or 1)} if failure.status == 429 else {}
            return web.Response(status=failure.status, text=failure.error, headers=retry)
        file_id = request.match_info["file_id"]
        announced = self._announced.get(file_id)
        if announced is None:
            return web.Response(status=404, text="file not found")
        if request.content_type == "multipart/form-data":
            data = b""
            async for part in await request.multipart():
                if isinstance(part, aiohttp.BodyPartReader) and part.filename is not None:
                    data = await part.read()
        else:
            data = await request.read()
        if len(data) != announced["length"]:
            log.warning("upload %s: got %d bytes, not %d", file_id, len(data), announced["length"])
            return web.Response(status=400, text=f"length mismatch: {len(data)}")
        self.uploads[file_id] = data
        return web.Response(text=f"OK - {len(data)}")

    def _files_complete_upload(self, p: dict[str, Any]) -> dict[str, Any]:
        """Step 3: share the uploaded files. No message ts comes back (spec 1.3).

        Assumptions (no error name documented): a file never announced, whose bytes never
        arrived, or already completed ("This method can only be called once") is
        ``file_not_found``.
        """
        raw = p.get("files")
        try:
            entries = json.loads(raw) if isinstance(raw, str) else raw
            ids = [str(e["id"]) for e in entries]
        except (TypeError, ValueError, KeyError):
            raise SlackError("invalid_arguments") from None
        if not ids:
            raise SlackError("invalid_arguments")
        channels = [c for c in str(p.get("channels") or "").split(",") if c]
        if p.get("channel_id"):
            channels.insert(0, str(p["channel_id"]))
        for channel in channels:
            self._member_channel(channel)
        for file_id in ids:
            if file_id not in self.uploads or file_id in self.files:
                raise SlackError("file_not_found")
        thread_ts = str(p["thread_ts"]) if p.get("thread_ts") else None
        for channel in channels:
            parent = self.messages.get((channel, thread_ts or ""))
            if thread_ts and (parent is None or parent["thread_ts"] not in (None, thread_ts)):
                log.warning("completeUploadExternal thread_ts=%s is not a parent", thread_ts)
        shares: dict[str, str] = {}  # channel -> ts of the share message Slack posts later
        for channel in channels:
            text = str(p.get("initial_comment") or "")
            share = {"user": self.bot_user_id, "text": text, "thread_ts": thread_ts, "files": ids}
            shares[channel] = self._store(channel, share)["ts"]
        out = []
        for entry in entries:
            file_id, announced = str(entry["id"]), self._announced[str(entry["id"])]
            title = entry.get("title") or announced["filename"]
            self.files[file_id] = {
                **announced,
                "id": file_id,
                "title": title,
                "channel": channels[0] if channels else None,
                "channels": channels,
                "thread_ts": thread_ts,
                "initial_comment": p.get("initial_comment"),
                "shares": shares,
            }
            out.append(self._file_object(file_id))
        return {"ok": True, "files": out}

    def _files_info(self, p: dict[str, Any]) -> dict[str, Any]:
        """``files.info`` (GET, query): the file object, comments and paging. A bot sees only
        files shared in a channel it is in (or its own); others are ``file_not_found``."""
        if not self.files_read_scope:
            raise SlackError("missing_scope")
        file_id = str(p.get("file") or "")
        f = self.files.get(file_id)
        if f is None:
            raise SlackError("file_not_found")
        if f.get("deleted"):
            raise SlackError("file_deleted")
        visible = f.get("user", self.bot_user_id) == self.bot_user_id or any(
            self.bot_user_id in self.members.get(channel, ()) for channel in f["channels"]
        )
        if not visible:
            raise SlackError("file_not_found")
        return {
            "ok": True,
            "file": self._file_object(file_id, shared=True),
            "comments": [],
            "response_metadata": {"next_cursor": ""},
        }

    async def _handle_download(self, request: web.Request) -> web.StreamResponse:
        """The file host: the bytes for the bot token, Slack's sign-in page (HTTP 200, HTML)
        for a missing or wrong one, 404 for a file that is not there."""
        self.downloads.append(
            Call(request.path, dict(request.query), dict(request.headers), time.monotonic(), "GET")
        )
        if self._download_redirects:
            raise web.HTTPFound(self._download_redirects.popleft())
        if self.hold_downloads is not None:
            await self.hold_downloads.wait()
        failures = self._failures.get("download")
        if failures:
            failure = failures.popleft()
            return web.Response(status=failure.status, text=failure.error)
        header = request.headers.get("Authorization", "")
        if header != f"Bearer {self.bot_token}" or not self.files_read_scope:
            return web.Response(text=_LOGIN_PAGE, content_type="text/html")
        team, _, file_id = request.match_info["team_file"].partition("-")
        f = self.files.get(file_id)
        if team != self.team_id or f is None or f.get("deleted") or file_id not in self.uploads:
            return web.Response(status=404, text="file not found", content_type="text/html")
        mime = self._file_object(file_id)["mimetype"]
        return web.Response(body=self.uploads[file_id], content_type=mime)

    def _file_object(self, file_id: str, *, shared: bool = False) -> dict[str, Any]:
        """The file object; ``shared`` (files.info, events) lists where it is shared, which a
        fresh upload's answer does not yet (python-slack-sdk#1277)."""
        f = self.files[file_id]
        ext = f["filename"].rsplit(".", 1)[-1].lower() if "." in f["filename"] else "binary"
        channels = f["channels"] if shared else []
        user = f.get("user", self.bot_user_id)
        url_private = f"{self.base_url}/files-pri/{self.team_id}-{file_id}/{f['filename']}"
        mime = f.get("mimetype") or mimetypes.guess_type(f["filename"])[0]
        return {
            "id": file_id,
            "created": int(time.time()),
            "timestamp": int(time.time()),
            "name": f["filename"],
            "title": f["title"],
            "mimetype": mime or "application/octet-stream",
            "filetype": ext,
            "user": user,
            "user_team": self.team_id,
            "editable": False,
            "size": f["length"],
            "mode": "hosted",
            "is_external": False,
            "external_type": "",
            "is_public": any(c.startswith("C") for c in channels),
            "public_url_shared": False,
            "display_as_bot": False,
            "username": "",
            "url_private": url_private,
            "url_private_download": (
                f"{self.base_url}/files-pri/{self.team_id}-{file_id}/download/{f['filename']}"
            ),
            "permalink": f"{self.base_url}/files/{user}/{file_id}/{f['filename']}",
            "channels": [c for c in channels if c.startswith("C")],
            "groups": [c for c in channels if not c.startswith("C")],
            "ims": [],
            "shares": {},
            "has_rich_preview": False,
            "file_access": "visible",
        }

    def _usergroups_users_list(self, p: dict[str, Any]) -> dict[str, Any]:
        users = self.usergroups.get(str(p.get("usergroup") or ""))
        if users is None:
            raise SlackError("no_such_subteam")
        return {"ok": True, "users": sorted(users)}

    def _usergroups_list(self, p: dict[str, Any]) -> dict[str, Any]:
        """``usergroups.list``: users are included only with ``include_users`` (true/1)."""
        include = str(p.get("include_users", "")).lower() in ("1", "true")
        groups = []
        for group_id, users in sorted(self.usergroups.items()):
            group: dict[str, Any] = {
                "id": group_id,
                "team_id": self.team_id,
                "handle": self.usergroup_handles.get(group_id, group_id.lower()),
                "user_count": len(users),
            }
            if include:
                group["users"] = sorted(users)
            groups.append(group)
        return {"ok": True, "usergroups": groups}

    # ------------------------------------------------------------------ state helpers

    def _member_channel(self, channel: Any) -> str:
        channel = str(channel or "")
        if channel not in self.members:
            raise SlackError("channel_not_found")
        if self.bot_user_id not in self.members[channel]:
            raise SlackError("not_in_channel")
        return channel

    def _blocks(self, raw: Any) -> list[dict[str, Any]] | None:
        """Block Kit checks: JSON list, at most 50 blocks, image ``slack_file`` must be shared."""
        if raw in (None, "", []):
            return None
        try:
            blocks = json.loads(raw) if isinstance(raw, str) else raw
        except ValueError:
            raise SlackError("invalid_blocks_format") from None
        if not isinstance(blocks, list):
            raise SlackError("invalid_blocks_format")
        if len(blocks) > 50 or not all(isinstance(b, dict) and b.get("type") for b in blocks):
            raise SlackError("invalid_blocks")
        for block in blocks:
            file_id = (block.get("slack_file") or {}).get("id")
            if block["type"] == "image" and file_id is not None:
                f = self.files.get(file_id)
                ext = f["filename"].rsplit(".", 1)[-1].lower() if f else ""
                if f is None or not f["channels"] or ext not in _SLACK_FILE_IMAGE_TYPES:
                    raise SlackError("invalid_blocks")  # "invalid slack file" (spec 1.3)
        return blocks

    def _next_ts(self) -> str:
        """Unique, increasing ``"1700000000.000100"``-style timestamps."""
        self._last_us = max(time.time_ns() // 1000, self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _store(self, channel: str, fields: dict[str, Any]) -> dict[str, Any]:
        ts = self._next_ts()
        msg: dict[str, Any] = {
            "type": "message",
            "channel": channel,
            "ts": ts,
            "user": fields["user"],
            "text": fields.get("text", ""),
            "thread_ts": fields.get("thread_ts"),
            "blocks": fields.get("blocks"),
            "files": list(fields.get("files") or []),
            "reactions": {},
        }
        if fields["user"] == self.bot_user_id:
            msg.update(bot_id=self.bot_id, app_id=self.app_id, team=self.team_id)
        self.messages[(channel, ts)] = msg
        if self.on_message is not None:
            self.on_message(msg)
        return msg

    # ------------------------------------------------------------------ Slack calls the app

    def reaction_added(
        self, *, user: str, reaction: str, channel: str, ts: str, item_user: str = "UBOT"
    ) -> dict[str, Any]:
        """The ``reaction_added`` event (spec 1.4); also records it on the stored message."""
        msg = self.messages.get((channel, ts))
        if msg is not None:
            msg["reactions"].setdefault(reaction, set()).add(user)
        return {
            "type": "reaction_added",
            "user": user,
            "reaction": reaction,
            "item_user": item_user,
            "item": {"type": "message", "channel": channel, "ts": ts},
            "event_ts": self._next_ts(),
        }

    def block_action(
        self,
        *,
        user: str,
        action_id: str,
        value: str,
        channel: str = "C0GENERAL",
        message_ts: str = "",
        block_id: str = "actions",
    ) -> dict[str, Any]:
        """A ``block_actions`` interactivity payload for a button click."""
        msg = self.messages.get((channel, message_ts), {"ts": message_ts})
        return {
            "type": "block_actions",
            "user": {"id": user, "username": user[1:].lower(), "team_id": self.team_id},
            "api_app_id": self.app_id,
            "token": "fake-verification-token",
            "container": {"type": "message", "message_ts": message_ts, "channel_id": channel},
            "trigger_id": self._trigger_id(),
            "team": {"id": self.team_id, "domain": "fake-workspace"},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": channel.lower()},
            "message": _public(msg) if "reactions" in msg else msg,
            "state": {"values": {}},
            "response_url": self._response_url(),
            "actions": [
                {
                    "type": "button",
                    "action_id": action_id,
                    "block_id": block_id,
                    "value": value,
                    "action_ts": self._next_ts(),
                }
            ],
        }

    async def send_command(
        self,
        app_url: str,
        command: str,
        text: str,
        *,
        user_id: str = "UALICE",
        channel_id: str = "C0GENERAL",
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Reply:
        """A signed, form-encoded slash command POST, as Slack sends it (spec 1.1, 1.6)."""
        body = urlencode(self._command_payload(command, text, user_id, channel_id))
        return await self.post_signed(
            app_url, body, "application/x-www-form-urlencoded", timestamp=timestamp, secret=secret
        )

    async def send_event(
        self,
        app_url: str,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_num: int | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Reply:
        """A signed JSON ``event_callback``; ``retry_num`` adds X-Slack-Retry-Num/Reason (1.5)."""
        headers = {}
        if retry_num is not None:
            headers = {"X-Slack-Retry-Num": str(retry_num), "X-Slack-Retry-Reason": "http_timeout"}
        body = json.dumps(self._event_callback(event, event_id))
        return await self.post_signed(
            app_url, body, "application/json", timestamp=timestamp, secret=secret, headers=headers
        )

    async def send_interactive(
        self,
        app_url: str,
        payload: dict[str, Any],
        *,
        timestamp: int | None = None,
        secret: str | None = None,
    ) -> Reply:
        """A signed interactivity POST: form-encoded ``payload=<json>`` (spec 1.6)."""
        body = urlencode({"payload": json.dumps(payload)})
        return await self.post_signed(
            app_url, body, "application/x-www-form-urlencoded", timestamp=timestamp, secret=secret
        )

    async def post_signed(
        self,
        app_url: str,
        body: str,
        content_type: str,
        *,
        timestamp: int | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """POST ``body`` signed with v0 HMAC-SHA256 over the exact bytes; time the response."""
        ts = str(int(time.time()) if timestamp is None else timestamp)
        verifier = SignatureVerifier(self.signing_secret if secret is None else secret)
        signed = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": verifier.generate_signature(timestamp=ts, body=body) or "",
            **(headers or {}),
        }
        return await self.post_raw(app_url, body.encode(), signed)

    async def replay(self) -> Reply:
        """Send the last signed request again, byte for byte (a replay within the 5 minutes
        Bolt accepts: only the app's own dedupe can stop it)."""
        assert self.last_signed is not None, "nothing sent yet"
        return await self.post_raw(*self.last_signed)

    async def post_raw(self, app_url: str, body: bytes, signed: dict[str, str]) -> Reply:
        if self._session is None:
            raise RuntimeError("call start() first")
        self.last_signed = (app_url, body, signed)
        started = time.monotonic()
        async with self._session.post(app_url, data=body, headers=signed) as resp:
            raw = await resp.text()
            elapsed = time.monotonic() - started
            parsed: dict[str, Any] | str = raw
            if resp.content_type == "application/json" and raw:
                parsed = json.loads(raw)
            return resp.status, parsed, elapsed

    async def _handle_response_url(self, request: web.Request) -> web.Response:
        """``respond()`` POSTs JSON here (spec 1.2)."""
        self.response_url_posts.append(await request.json())
        return web.Response(text="ok")

    def _command_payload(
        self, command: str, text: str, user_id: str, channel_id: str
    ) -> dict[str, str]:
        return {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "team_domain": "fake-workspace",
            "channel_id": channel_id,
            "channel_name": channel_id.lower(),
            "user_id": user_id,
            "user_name": user_id[1:].lower(),
            "command": command,
            "text": text,
            "api_app_id": self.app_id,
            "is_enterprise_install": "false",
            "response_url": self._response_url(),
            "trigger_id": self._trigger_id(),
        }

    def _event_callback(self, event: dict[str, Any], event_id: str | None) -> dict[str, Any]:
        return {
            "token": "fake-verification-token",
            "team_id": self.team_id,
            "api_app_id": self.app_id,
            "event": {"event_ts": self._next_ts(), **event},
            "type": "event_callback",
            "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
            "event_time": int(time.time()),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": self.team_id,
                    "user_id": self.bot_user_id,
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }

    def _response_url(self) -> str:
        return f"{self.base_url}/commands/{self.team_id}/{next(self._ids)}/{secrets.token_hex(8)}"

    def _trigger_id(self) -> str:
        return f"{next(self._ids)}.{secrets.token_hex(6)}"

    # ------------------------------------------------------------------ Socket Mode (spec 2.3)

    async def _handle_socket(self, request: web.Request) -> web.StreamResponse:
        ticket = request.query.get("ticket", "")
        if ticket not in self._tickets:
            return web.Response(status=401, text="invalid ticket")
        self._tickets.discard(ticket)
        ws = web.WebSocketResponse(autoping=True)  # the SDK pings "sdk-ping-pong:<t>"
        await ws.prepare(request)
        self._all_ws.add(ws)
        self.socket_connections += 1
        self._sockets.append(ws)
        await ws.send_json(
            {
                "type": "hello",
                "num_connections": len(self._sockets),
                "debug_info": {"host": "fake-slack", "approximate_connection_time": 18060},
                "connection_info": {"app_id": self.app_id},
            }
        )
        self._connected.set()
        try:
            async for frame in ws:
                if frame.type != aiohttp.WSMsgType.TEXT:
                    continue
                data = json.loads(frame.data)
                self.socket_frames.append(data)
                waiter = self._acks.pop(str(data.get("envelope_id")), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(data)
        finally:
            self._all_ws.discard(ws)
            self._forget(ws)
        return ws

    def _forget(self, ws: web.WebSocketResponse) -> None:
        if ws in self._sockets:
            self._sockets.remove(ws)
        if not self._sockets:
            self._connected.clear()

    @property
    def open_sockets(self) -> int:
        return len(self._sockets)

    async def wait_socket_connected(self, timeout: float = 10.0) -> None:
        """Wait until a client holds the current websocket (it has been sent ``hello``)."""
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def socket_command(
        self,
        command: str,
        text: str,
        *,
        user_id: str = "UALICE",
        channel_id: str = "C0GENERAL",
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send a ``slash_commands`` envelope; return the ack frame (``payload`` if any)."""
        payload = self._command_payload(command, text, user_id, channel_id)
        return await self._envelope("slash_commands", payload, True, 0, timeout)

    async def socket_event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        timeout: float = 5.0,
    ) -> dict[str, Any]:
        """Send an ``events_api`` envelope (``retry_attempt`` > 0 marks a redelivery)."""
        body = self._event_callback(event, event_id)
        return await self._envelope("events_api", body, False, retry_attempt, timeout)

    async def socket_interactive(
        self, payload: dict[str, Any], *, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send an ``interactive`` envelope (e.g. ``block_action(...)``); return the ack."""
        accepts = payload.get("type") in ("view_submission", "block_suggestion")
        return await self._envelope("interactive", payload, accepts, 0, timeout)

    async def socket_disconnect(self) -> None:
        """Ask the client to reconnect; it calls apps.connections.open and opens a new socket."""
        if not self._sockets:
            raise RuntimeError("no socket mode client connected")
        ws = self._sockets[-1]
        self._forget(ws)  # no further envelopes on this connection
        await ws.send_json(
            {"type": "disconnect", "reason": "refresh_requested", "debug_info": {"host": "fake"}}
        )

    async def _envelope(
        self, kind: str, payload: dict[str, Any], accepts: bool, retry: int, timeout: float
    ) -> dict[str, Any]:
        await self.wait_socket_connected(timeout)
        if not self._sockets:
            raise RuntimeError("the socket mode client went away")
        ws = self._sockets[self._turn % len(self._sockets)]
        self._turn += 1
        envelope_id = str(uuid.uuid4())
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[envelope_id] = waiter
        await ws.send_json(
            {
                "envelope_id": envelope_id,
                "type": kind,
                "payload": payload,
                "accepts_response_payload": accepts,
                "retry_attempt": retry,
                "retry_reason": "timeout" if retry else "",
            }
        )
        try:
            return await asyncio.wait_for(waiter, timeout)
        except TimeoutError:
            raise TimeoutError(f"no ack for {kind} envelope {envelope_id} in {timeout}s") from None
        finally:
            self._acks.pop(envelope_id, None)


def _public(msg: dict[str, Any]) -> dict[str, Any]:
    """A stored message as Slack returns it: no ``None`` fields, reactions as a list."""
    hidden = ("channel", "reactions")
    out = {k: v for k, v in msg.items() if v not in (None, []) and k not in hidden}
    reactions = [
        {"name": name, "users": sorted(users), "count": len(users)}
        for name, users in msg.get("reactions", {}).items()
        if users
    ]
    if reactions:
        out["reactions"] = reactions
    if "files" in out:
        out["files"] = [{"id": file_id} for file_id in out["files"]]
    return out
