"""Slack: slash commands, draft grids in threads, approval by reaction.

Built on slack-bolt's ``AsyncApp`` in the shared event loop (never ``app.start()``, which
owns the loop). Socket Mode runs when ``SLACK_APP_TOKEN`` is set; HTTP mode is mounted at
``/slack/events`` on the bot's HTTP server when ``SLACK_SIGNING_SECRET`` is set; both can run.

What Slack needs, and where it is handled (see ``shared/specs/chat_platforms.md`` §1):

- **3-second ack.** ``/draft`` and ``/tierbot`` ack first with a short private text; the work
  runs in a task this surface keeps a strong reference to. Results are posted with the bot
  token (``chat.postMessage``), never ``response_url``, so a long job still lands.
- **Grids.** A shared file returns no message ``ts``, so every asset gets an *anchor*
  message we own (text, model, reason, price), the file is uploaded into the anchor's thread
  (always the thread's parent ``ts``), and the reactions are pre-added to the anchor. The
  upload is Slack's three steps done here (not ``files_upload_v2``), the file id recorded
  before its bytes are sent, so a post taken over after a crash finishes that upload rather
  than share the file twice.
- **Progress.** One status message per command, edited with ``chat.update`` as its jobs move,
  only when the text changes; a channel's status lines take turns at one edit a second
  (Slack's limit is per channel), and the final edit goes out at once.
- **Reactions.** ``reaction_added`` goes to the core with the ``event_id``; the core persists
  it, so a retried delivery, even after a restart, acts once. Bolt drops the bot's own
  reactions (it learns its user id from ``auth.test``). Refusals are ``chat.postEphemeral``.
- **Errors.** 429s are retried by slack-sdk's ``AsyncRateLimitErrorRetryHandler`` honouring
  ``Retry-After``; ``not_in_channel`` is explained to the person with how to invite the bot;
  ``invalid_auth`` stops the surface at start-up with a clear line; a file over Slack's limit
  is linked instead of uploaded; a reply that cannot be posted goes to the persistent outbox
  and is retried until it lands.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import ClientError, ClientResponse, ClientSession, ClientTimeout, TCPConnector, web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient
from yarl import URL

from adapters.delivery import Pace, StatusLine, Tasks
from adapters.http_server import http_server
from bot import uploads
from bot.commands import COMMANDS, CommandError, parse, reference_values
from bot.delivery import Steps, kept_for_retry, platform_error
from bot.domain import CommandEvent, InboundFile, Origin, ReactionEvent, Reply
from bot.errors import UserError, private_error
from bot.surfaces import SurfaceContext, SurfaceUnavailable

log = logging.getLogger(__name__)

SURFACE = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
#: Slack's per-file upload limit (1 GB); bigger files are linked instead.
MAX_UPLOAD_BYTES = 1_000_000_000
GROUP_CACHE_S = 300.0
API_TIMEOUT_S = 30
#: Sending a file's bytes to Slack's upload URL (a grid of 4K finals, a long video).
UPLOAD_TIMEOUT_S = 300
#: Web API calls in flight at once; the rest wait their turn. Slack itself accepts about one
#: message a second per channel, so more never helps, and under a burst of commands a bound
#: keeps each turn of the event loop short, so acknowledgements are not kept waiting.
MAX_API_CONNECTIONS = 16

#: Slack reaction names ↔ the core's reaction vocabulary.
REACTION_NAMES = {
    "one": "1️⃣",
    "two": "2️⃣",
    "three": "3️⃣",
    "four": "4️⃣",
    "five": "5️⃣",
    "six": "6️⃣",
    "seven": "7️⃣",
    "eight": "8️⃣",
    "nine": "9️⃣",
    "repeat": "🔁",
    "x": "❌",
    "movie_camera": "🎬",
    "arrow_up": "⬆️",
    "white_check_mark": "✅",
    "twisted_rightwards_arrows": "🔀",
    "art": "🎨",
    "magic_wand": "🪄",
}
EMOJI_NAMES = {emoji: name for name, emoji in REACTION_NAMES.items()}
_USERGROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_NOT_A_MEMBER = ("not_in_channel", "channel_not_found", "is_archived")
#: What "Slack will not take this now" looks like: such replies go to the outbox.
SLACK_ERRORS = (SlackApiError, SlackRequestError, ClientError, TimeoutError)

#: Where Slack serves files (``url_private``, ``url_private_download``, shared file links):
#: the one host, besides ``SLACK_API_URL``'s when it is set, that gets the bot token.
SLACK_FILE_HOST = "files.slack.com"
#: Redirects followed on Slack's file host (never off it).
MAX_REDIRECTS = 3
_REDIRECTS = (301, 302, 303, 307, 308)
#: A path segment holding a Slack file id: ``F0456`` in a permalink (``/files/U1/F0456/a.png``)
#: or ``T0123-F0456`` in a file-host link (``/files-pri/T0123-F0456/a.png``).
_FILE_ID = re.compile(r"(?:[A-Z0-9]+-)?(F[A-Z0-9]{2,})")
_MENTION = re.compile(r"<@([UW][A-Z0-9]+)(?:\|[^>]*)?>")

INVITE_HINT = (
    "I can't post in this channel yet: invite me with `/invite @tierbot` (or add the app "
    "from the channel's details), then try again."
)


def mention_command(text: str, bot_user_id: str | None) -> tuple[str, str]:
    """The command in a message that mentions the bot, as ``(command, text)`` for the core.

    ``@tierbot draft a mug --n 4`` is ``/draft a mug --n 4``; anything else is a ``/tierbot``
    command (``@tierbot final <grid> 2``, ``@tierbot ref add mug``); a leading ``/`` or
    ``tierbot`` is dropped, as people type it out of habit. The command is what follows the
    bot's mention (what precedes it, if nothing follows). Slack's escapes are undone.
    """
    mentions = [m for m in _MENTION.finditer(text) if bot_user_id in (None, m.group(1))]
    if mentions:
        start, end = mentions[0].span()
        after, before = text[end:], text[:start]
        text = after if after.strip() else before
    words = text.split(None, 1) or [""]
    word = words[0].lower().lstrip("/")
    command = "draft" if word == "draft" else "tierbot"
    if word in ("draft", "tierbot"):
        text = words[1] if len(words) > 1 else ""
    return command, _unescape(text.strip())


def _unescape(text: str) -> str:
    """Slack escapes exactly these three in message and command text."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _url(value: str) -> URL | None:
    """``value`` as the URL aiohttp would request (one parser for the check and the fetch),
    or None when it is not an absolute http(s) URL without credentials."""
    try:
        url = URL(value)
    except (ValueError, TypeError):
        return None
    if url.scheme not in ("http", "https") or not url.host or url.user or url.password:
        return None
    return url


def _file_id(url: URL) -> str | None:
    for segment in url.path.split("/"):
        if found := _FILE_ID.fullmatch(segment):
            return found.group(1)
    return None


def _link_name(url: URL) -> str:
    return url.name or "linked image"


def _file_name(file: dict[str, Any]) -> str:
    """A file's name as people saw it; a bare stub (Slack Connect) has only its id."""
    return str(file.get("name") or file.get("title") or f"the file {file.get('id', '')}".strip())


def _takes_files(command: str, text: str, count: int) -> bool:
    """Whether the core would read files sent with this command: nothing is downloaded for
    a command it refuses before looking at them (a typo, a command that takes no files,
    too many files); it says why with the placeholders alone."""
    try:
        invocation = parse(command, text)
    except CommandError:
        return False
    spec = COMMANDS.get(invocation.name)
    return spec is not None and spec.files is not None and count <= uploads.MAX_FILES


class FileRefused(UserError):
    """A file Slack would not hand over; ``message`` tells the person who sent it."""


class SlackFiles:
    """Reads the files people send the bot: attached to a mention, or linked in ``--ref``.

    The bot token goes to Slack's file host (``files.slack.com``, or ``SLACK_API_URL``'s host
    and port when that is set: a proxy, a test fake) and nowhere else: a link elsewhere is
    not read (the core refuses it), a download address or redirect off that host is refused,
    and redirects are followed by hand so aiohttp never carries the header elsewhere. A file
    is read up to one byte past the core's size cap, so a huge file is never buffered and
    the core still refuses it with its own message.
    """

    def __init__(self, client: AsyncWebClient, token: str, api_url: str | None) -> None:
        self.client = client
        self._token = token
        self._hosts = {("https", SLACK_FILE_HOST, 443)}
        api = _url(api_url) if api_url else None
        if api is not None:
            self._hosts.add((api.scheme, api.host or "", api.port or 0))

    def on_file_host(self, url: URL) -> bool:
        """Whether ``url`` is on a host that may be sent the bot token."""
        return (url.scheme, url.host or "", url.port or 0) in self._hosts

    def readable_link(self, value: str) -> bool:
        """Whether a ``--ref`` value is a Slack file link this surface reads: a link on the
        file host, or a workspace permalink (``https://<team>.slack.com/files/U…/F…/name``,
        what "Copy link" gives), resolved through ``files.info`` and never fetched itself."""
        url = _url(value)
        if url is None:
            return False
        if self.on_file_host(url):
            return True
        host = url.host or ""
        return url.scheme == "https" and host.endswith(".slack.com") and _file_id(url) is not None

    def _redirect(self, url: URL, location: str) -> URL | None:
        try:
            return _url(str(url.join(URL(location)))) if location else None
        except (ValueError, TypeError):
            return None

    async def read_attached(self, file: dict[str, Any]) -> InboundFile:
        """A file attached to the person's message (an ``app_mention``'s ``files`` entry).

        Raises:
            FileRefused: Slack would not give it (deleted, hidden, unreachable).
        """
        name = _file_name(file)
        if file.get("mode") in ("tombstone", "hidden_by_limit") or (
            file.get("file_access") == "access_denied"
        ):
            raise FileRefused(
                f"Not used: Slack does not let me read {name} (deleted, or hidden by the "
                "workspace's plan). Nothing was spent."
            )
        url = file.get("url_private_download") or file.get("url_private")
        if file.get("file_access") == "check_file_info" or not url:
            # Slack Connect channels (and some events) send only the id: ask for the rest.
            info = await self._info(str(file.get("id", "")), name)
            name = _file_name(info)
            url = info.get("url_private_download") or info.get("url_private")
        return InboundFile(name=name, data=await self._download(str(url or ""), name))

    async def read_link(self, value: str, origin: Origin) -> InboundFile:
        """The file behind a Slack link given as ``--ref``/``--sref`` ``value``, for the
        person in ``origin``: only a file they sent themselves or one shared where they are
        (this channel, or a public one), so a link cannot pull a private channel's file
        into another through the bot's access.

        Raises:
            FileRefused: not a file Slack gives us, or not one this person may use here.
        """
        url = _url(value)
        if url is None or not self.readable_link(value):  # the caller checked: never here
            raise FileRefused(f"Not used: {value[:60]} is not a Slack file link.")
        name = _link_name(url)
        file_id = _file_id(url)
        if file_id is None:  # who may see it is unknown without its id: not read
            raise FileRefused(
                f"Not used: --ref {value[:60]} is not a link to a Slack file; copy the file's "
                "link in Slack, or attach the image to your message. Nothing was spent."
            )
        info = await self._info(file_id, name)
        name = _file_name(info)
        shared_in = {*(info.get("channels") or ()), *(info.get("groups") or ())}
        shared_in.update(info.get("ims") or ())
        for kind in (info.get("shares") or {}).values():
            if isinstance(kind, dict):  # {"public": {"C…": [...]}, "private": {...}}
                shared_in.update(kind)
        if not (
            info.get("user") == origin.user or origin.channel in shared_in or info.get("is_public")
        ):
            raise FileRefused(
                f"Not used: --ref {name} is a file shared only where this channel can't see "
                "it; share it here or attach it to your message. Nothing was spent."
            )
        url_private = info.get("url_private_download") or info.get("url_private") or ""
        return InboundFile(name=name, data=await self._download(url_private, name), source=value)

    async def _info(self, file_id: str, name: str) -> dict[str, Any]:
        """``files.info``: where the file is, its name, where it is shared."""
        try:
            answer = await self.client.files_info(file=file_id)
        except SlackApiError as exc:
            error = exc.response.get("error")
            if error == "missing_scope":
                log.warning("files.info needs the files:read scope: reinstall the Slack app")
                raise FileRefused(
                    f"Not used: I can't read {name} yet: the Slack app needs the files:read "
                    "scope (an admin reinstalls it from slack/manifest.yml). Nothing was spent."
                ) from None
            if error in ("file_not_found", "file_deleted"):
                raise FileRefused(
                    f"Not used: I can't find {name} on Slack (deleted, or shared only in "
                    "channels I'm not in); attach it to your message instead. Nothing was spent."
                ) from None
            raise FileRefused(
                f"Not used: Slack would not tell me where {name} is ({error}); try again in "
                "a moment. Nothing was spent."
            ) from None
        except (SlackRequestError, ClientError, TimeoutError):
            raise FileRefused(
                f"Not used: Slack did not answer when I asked for {name}; try again in a "
                "moment. Nothing was spent."
            ) from None
        file = answer.get("file")
        if not isinstance(file, dict):
            raise FileRefused(f"Not used: Slack sent no details of {name}. Nothing was spent.")
        return file

    async def _download(self, address: str, name: str) -> bytes:
        """The file's bytes from Slack's file host, at most one past the core's cap."""
        url = _url(address)
        for _ in range(MAX_REDIRECTS + 1):
            if url is None or not self.on_file_host(url):
                if url is not None:
                    log.warning("not reading %r from %s: not Slack's file host", name, url.host)
                raise FileRefused(
                    f"Not used: Slack pointed me away from its file host for {name}, so I did "
                    "not read it; attach it to your message. Nothing was spent."
                )
            try:
                async with self._session().get(
                    url,
                    headers={"Authorization": f"Bearer {self._token}"},
                    allow_redirects=False,
                    timeout=ClientTimeout(total=uploads.DOWNLOAD_TIMEOUT_S),
                ) as response:
                    if response.status in _REDIRECTS:
                        url = self._redirect(url, response.headers.get("Location", ""))
                        continue
                    if response.status != 200:
                        raise FileRefused(
                            f"Not used: Slack's file host answered {response.status} for "
                            f"{name}; send it again. Nothing was spent."
                        )
                    if response.content_type == "text/html":
                        # A login page instead of the file: the token cannot read files. The
                        # core refuses the page as "not an image"; the operator learns why.
                        log.warning(
                            "Slack answered a login page for %r: is the files:read scope "
                            "granted (reinstall the app)?",
                            name,
                        )
                    return await _read_capped(response)
            except (ClientError, TimeoutError):
                raise FileRefused(
                    f"Not used: I could not download {name} from Slack; send it again. "
                    "Nothing was spent."
                ) from None
        raise FileRefused(
            f"Not used: Slack redirected {name} too often; send it again. Nothing was spent."
        )

    def _session(self) -> ClientSession:
        session = self.client.session
        if session is None:  # start() makes it; a download before start() is a bug
            raise RuntimeError("SlackSurface.start() was not called")
        return session


async def _read_capped(response: ClientResponse) -> bytes:
    """The body, stopping one byte past the core's cap (the rest is never read)."""
    limit = uploads.MAX_UPLOAD_BYTES + 1
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        chunk = chunk[: limit - size]
        chunks.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(chunks)


class SlackSurface:
    """tierbot in a Slack workspace."""

    name = SURFACE

    def __init__(
        self,
        context: SurfaceContext,
        *,
        api_url: str | None = None,
        host: str | None = None,
        port: int | None = None,
        outbox_interval_s: float = 30.0,
    ) -> None:
        settings = context.settings
        if settings.slack_bot_token is None:
            raise SurfaceUnavailable("set SLACK_BOT_TOKEN")
        if settings.slack_app_token is None and settings.slack_signing_secret is None:
            raise SurfaceUnavailable(
                "set SLACK_APP_TOKEN (Socket Mode) or SLACK_SIGNING_SECRET (HTTP mode)"
            )
        self.bot = context.bot
        self._ops = context.ops
        self.public_url = settings.public_url
        base_url = (api_url or settings.slack_api_url or DEFAULT_API_URL).rstrip("/") + "/"
        token = settings.slack_bot_token.get_secret_value()
        self.client = AsyncWebClient(
            token=token,
            base_url=base_url,
            timeout=API_TIMEOUT_S,
            retry_handlers=[
                AsyncConnectionErrorRetryHandler(),
                AsyncRateLimitErrorRetryHandler(max_retry_count=3),
            ],
        )
        secret = settings.slack_signing_secret
        self.app = AsyncApp(
            client=self.client,
            signing_secret=secret.get_secret_value() if secret else "",
            logger=log,
            # Our listeners only ack and spawn, so running them before answering costs
            # nothing and spares the 10 ms polls Bolt otherwise waits on ack() with.
            process_before_response=True,
        )
        self.app.command("/draft")(self._on_command)
        self.app.command("/tierbot")(self._on_command)
        self.app.event("reaction_added")(self._on_reaction)
        self.app.event("reaction_removed")(self._ignore)
        self.app.event("app_mention")(self._on_mention)
        self.files = SlackFiles(self.client, token, api_url or settings.slack_api_url)
        self.socket: AsyncSocketModeHandler | None = None
        if settings.slack_app_token is not None:
            self.socket = AsyncSocketModeHandler(
                self.app, app_token=settings.slack_app_token.get_secret_value()
            )
        self.server = None
        if secret is not None:
            self.server = http_server(context, host=host, port=port)
            self.server.add_external_post("/slack/events", self._on_http)
        self.outbox = context.outbox(SURFACE, self.post, SLACK_ERRORS, outbox_interval_s)
        self.tasks = Tasks()
        self._spawn = self.tasks.spawn
        self._outbox: asyncio.Future[Any] | None = None  # runs apart: idle() never waits on it
        self._groups: dict[str, tuple[float, set[str]]] = {}
        self._stopping = False
        # One pace of status edits per channel (Slack's limit is per channel).
        self._paces: defaultdict[str, Pace] = defaultdict(lambda: Pace(self._spawn))

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Check the token, then connect Socket Mode and/or serve HTTP mode.

        Raises:
            SurfaceUnavailable: Slack refused the token (``invalid_auth``) or is unreachable.
        """
        # One keep-alive session for every Web API call; without it slack-sdk opens (and
        # TLS-handshakes) a new connection per call. aiohttp hands a connection back as soon
        # as a response is read, so a 429's Retry-After sleep does not hold one.
        self.client.session = ClientSession(
            timeout=ClientTimeout(total=API_TIMEOUT_S),
            connector=TCPConnector(limit=MAX_API_CONNECTIONS),
        )
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            await self.client.session.close()
            error = exc.response.get("error", "error")
            raise SurfaceUnavailable(
                f"Slack refused SLACK_BOT_TOKEN ({error}); check the token and reinstall the app"
            ) from None
        except (ClientError, SlackRequestError, TimeoutError) as exc:
            await self.client.session.close()
            raise SurfaceUnavailable(f"Slack is unreachable: {exc}") from None
        modes = []
        if self.socket is not None:
            await self.socket.connect_async()
            modes.append("Socket Mode")
        if self.server is not None:
            url = await self.server.start()
            modes.append(f"HTTP mode at {url}/slack/events")
        self._outbox = asyncio.ensure_future(self.outbox.run())
        return f"Slack: on as @{auth.get('user')} in {auth.get('team')} ({', '.join(modes)})"

    async def stop(self) -> None:
        self._stopping = True
        if self.socket is not None:
            await self.socket.close_async()
        if self._outbox is not None:
            self._outbox.cancel()
            await asyncio.gather(self._outbox, return_exceptions=True)
        await self.tasks.cancel_all()
        if self.server is not None:
            await self.server.stop()
        if self.client.session is not None:
            await self.client.session.close()

    async def idle(self) -> None:
        """Wait until every command and reaction in flight has been answered."""
        await self.tasks.idle()

    # -- inbound -----------------------------------------------------------------------------

    async def _on_http(self, request: web.Request) -> web.Response:
        """HTTP mode: Bolt verifies the signature and timestamp, dispatches and acks."""
        timestamp = request.headers.get("X-Slack-Request-Timestamp", "")
        if not (timestamp.isascii() and timestamp.isdigit()):  # Bolt's int() would 500
            return web.json_response({"error": "invalid request"}, status=401)
        response = await self.app.async_dispatch(await to_bolt_request(request))
        return await to_aiohttp_response(response)

    async def _on_command(self, ack: Any, command: dict[str, Any], respond: Any) -> None:
        arrived = time.monotonic()
        name = command["command"].lstrip("/")
        text = _unescape(command.get("text", ""))
        origin = Origin(
            surface=SURFACE,
            team=command["team_id"],
            channel=command["channel_id"],
            user=command["user_id"],
        )
        links = self._links(name, text)
        event = CommandEvent(
            origin=origin,
            command=name,
            text=text,
            files=[InboundFile(name=_link_name(URL(v)), source=v) for v in links],
            delivery_id=command.get("trigger_id"),
        )
        # Written before the ack: an acknowledged command survives a crash, and a replayed
        # one (same trigger_id) is acknowledged and ignored.
        if not self.bot.receive(event):
            await ack()
            return
        await ack(response_type="ephemeral", text=f"⏳ On it: /{name} {text}".strip())
        if self._ops is not None:
            self._ops.ack_seconds.labels(SURFACE).observe(time.monotonic() - arrived)
        self._spawn(self._run_command(event, [], respond))

    async def _on_mention(self, event: dict[str, Any], body: dict[str, Any], context: Any) -> None:
        """A message that mentions the bot: a command, with the images attached to it.

        Written down (file names only: downloading could outlast Slack's 3 seconds) before
        Bolt acks the event, keyed by its ``event_id``, so a redelivery acts once. A restart
        before the download leaves the names without bytes: the core then asks the person to
        send the images again, and spends nothing.
        """
        if not event.get("user") or not event.get("channel"):
            return  # another app's post (bot_id, no user): nobody to answer
        name, text = mention_command(str(event.get("text") or ""), context.get("bot_user_id"))
        attached = [f for f in event.get("files") or () if isinstance(f, dict) and f.get("id")]
        links = self._links(name, text)
        origin = Origin(
            surface=SURFACE,
            team=body.get("team_id") or event.get("team", ""),
            channel=event["channel"],
            user=event["user"],
        )
        placeholders = [InboundFile(name=_file_name(f)) for f in attached]
        placeholders += [InboundFile(name=_link_name(URL(v)), source=v) for v in links]
        command = CommandEvent(
            origin=origin,
            command=name,
            text=text,
            files=placeholders,
            delivery_id=body.get("event_id") or f"mention:{event['channel']}:{event.get('ts')}",
        )
        if self.bot.receive(command):
            self._spawn(self._run_command(command, attached, None, event.get("thread_ts")))

    def _links(self, command: str, text: str) -> list[str]:
        """The ``--ref``/``--sref`` values that are Slack file links this surface reads. Any
        other link is left alone: the core refuses it, and nothing is fetched from it."""
        if "ref" not in text.casefold():  # most commands have none: no second parse
            return []
        values = reference_values(command, text)
        return list(dict.fromkeys(v for v in values if self.files.readable_link(v)))

    async def _run_command(
        self,
        event: CommandEvent,
        attached: list[dict[str, Any]],
        respond: Any,
        thread_ts: str | None = None,
    ) -> None:
        origin = await self._origin(event.origin.team, event.origin.channel, event.origin.user)
        if event.files and _takes_files(event.command, event.text, len(event.files)):
            try:
                files = await self._read_files(event, attached, origin)
            except FileRefused as exc:
                reply = private_error(exc.message).model_copy(update={"thread_id": thread_ts})
                await self._ephemeral(origin, reply, respond)
                self.bot.answered(event)
                return
            # Kept before anything else: a restart from here on still has the images.
            event = await self.bot.keep(event.model_copy(update={"files": files}))
        event = self.bot.resolved(event, origin)
        replies = self.bot.handle_command(event, received=True)
        await self._deliver(origin, replies, respond)

    async def _read_files(
        self, event: CommandEvent, attached: list[dict[str, Any]], origin: Origin
    ) -> list[InboundFile]:
        """Download what came with a command (after its ack), in the placeholders' order.

        Raises:
            FileRefused: the first file Slack would not give; the rest are dropped.
        """
        links = [f.source for f in event.files if f.source is not None]
        results = await asyncio.gather(
            *(self.files.read_attached(f) for f in attached),
            *(self.files.read_link(v, origin) for v in links),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return [r for r in results if isinstance(r, InboundFile)]

    async def _on_reaction(self, event: dict[str, Any], body: dict[str, Any]) -> None:
        item = event.get("item", {})
        if item.get("type") != "message":
            return
        name = event.get("reaction", "").split("::", 1)[0]  # drop skin tones
        emoji = REACTION_NAMES.get(name, f":{name}:")
        team = body.get("team_id") or event.get("team", "")
        reaction = ReactionEvent(
            origin=Origin(surface=SURFACE, team=team, channel=item["channel"], user=event["user"]),
            event_id=body.get("event_id")
            or f"{item['channel']}:{item['ts']}:{event['user']}:{emoji}",
            message_id=item["ts"],
            emoji=emoji,
        )
        # Written before Bolt acks the event: a redelivery (same event_id) acts once.
        if self.bot.receive(reaction):
            self._spawn(self._run_reaction(reaction))

    async def _run_reaction(self, reaction: ReactionEvent) -> None:
        basic = reaction.origin
        origin = await self._origin(basic.team, basic.channel, basic.user)
        reaction = self.bot.resolved(reaction, origin)
        replies = self.bot.handle_reaction(reaction, received=True)
        await self._deliver(origin, replies, respond=None)

    async def _ignore(self) -> None:
        return None

    async def _origin(self, team: str, channel: str, user: str) -> Origin:
        """The person, with the approver user groups (ids or @handles) they belong to."""
        origin = Origin(surface=SURFACE, team=team, channel=channel, user=user)
        groups = []
        for entry in self.bot.approvers(origin):
            if (_USERGROUP_ID.match(entry) or entry.startswith("@")) and user in (
                await self._group_members(entry)
            ):
                groups.append(entry)
        return origin.model_copy(update={"groups": tuple(groups)})

    async def _group_members(self, entry: str) -> set[str]:
        cached = self._groups.get(entry)
        if cached and time.monotonic() - cached[0] < GROUP_CACHE_S:
            return cached[1]
        members: set[str] = set()
        try:
            if entry.startswith("@"):
                listing = await self.client.usergroups_list(include_users=True)
                for group in listing.get("usergroups", []):
                    if group.get("handle") == entry[1:]:
                        members = set(group.get("users", []))
            else:
                members = set(
                    (await self.client.usergroups_users_list(usergroup=entry)).get("users", [])
                )
        except SlackApiError as exc:
            log.warning("cannot read user group %s: %s", entry, exc.response.get("error"))
        self._groups[entry] = (time.monotonic(), members)
        return members

    # -- outbound ----------------------------------------------------------------------------

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies nobody typed a command for (scheduled batches) in ``origin``'s channel."""
        await self._deliver(origin, replies, respond=None)

    async def _deliver(
        self, origin: Origin, replies: AsyncIterator[Reply], respond: Any | None
    ) -> None:
        """Post a use case's replies as they come, keeping its status message current."""
        status_ts: str | None = None

        async def edit(text: str) -> None:
            await self.client.chat_update(channel=origin.channel, ts=status_ts, text=text)

        async def open_status(reply: Reply, steps: Steps) -> str | None:
            nonlocal status_ts
            status_ts = await self._post_status(origin, reply, steps)
            return status_ts

        async def private(reply: Reply) -> None:
            await self._ephemeral(origin, reply, respond)

        async def result(reply: Reply) -> str | None:
            return await self._post_or_queue(origin, reply, respond)

        await self.outbox.deliver(
            origin,
            replies,
            StatusLine(edit, self._paces[origin.channel]),
            private=private,
            open_status=open_status,
            result=result,
            stopping=lambda: self._stopping,
        )

    async def _post_status(self, origin: Origin, reply: Reply, steps: Steps) -> str | None:
        """The status message, with ❌ pre-added to cancel; its ts, or None if Slack refused."""
        try:
            posted = await self.client.chat_postMessage(
                channel=origin.channel,
                text=reply.text,
                thread_ts=reply.thread_id,
            )
        except SLACK_ERRORS as exc:
            log.warning("status message in %s failed: %r", origin.channel, exc)
            return None
        steps.posted(posted["ts"])  # before the ❌ shows
        try:
            for emoji in reply.reactions:
                await self.client.reactions_add(
                    channel=origin.channel, timestamp=posted["ts"], name=EMOJI_NAMES[emoji]
                )
        except SLACK_ERRORS as exc:
            log.warning("pre-adding ❌ in %s failed: %r", origin.channel, exc)
        return str(posted["ts"])

    async def _ephemeral(self, origin: Origin, reply: Reply, respond: Any | None) -> None:
        try:
            await self.client.chat_postEphemeral(
                channel=origin.channel,
                user=origin.user,
                text=reply.text,
                thread_ts=reply.thread_id,
            )
        except SlackApiError as exc:
            if respond is None:
                log.warning("ephemeral to %s failed: %s", origin.user, exc.response.get("error"))
                return
            text = reply.text
            if exc.response.get("error") in _NOT_A_MEMBER:
                text = f"{INVITE_HINT}\n\n{text}"
            await respond(text=text, response_type="ephemeral", replace_original=False)

    async def _post_or_queue(self, origin: Origin, reply: Reply, respond: Any | None) -> str | None:
        """Post a reply; if Slack will not take it now, it stays in the outbox for a retry
        and the returned text says so."""
        try:
            await self.outbox.send(origin, reply)
        except SLACK_ERRORS as exc:
            if platform_error(exc) in _NOT_A_MEMBER and respond is not None:
                await respond(
                    text=f"{INVITE_HINT} The result is kept and will be posted once I'm in.",
                    response_type="ephemeral",
                    replace_original=False,
                )
            return kept_for_retry(exc)
        return None

    async def post(self, origin: Origin, reply: Reply, steps: Steps) -> None:
        """Post one reply in its thread: an anchor message we own (linked to its asset at
        once, so a click on it is never lost), the file uploaded into the thread, the
        reaction vocabulary pre-added to the anchor, and for a QA decision the decided
        asset's message edited to show it. Each step is recorded in ``steps`` as it lands:
        a retry resumes after the last one."""
        thread_ts = reply.thread_id
        ts = steps.get("anchor")
        if ts is None:
            anchor = await self.client.chat_postMessage(
                channel=origin.channel,
                text=self._text(reply),
                thread_ts=thread_ts,
                unfurl_links=False,
            )
            ts = str(anchor["ts"])
            steps.posted(ts, thread_id=thread_ts, anchor=ts)
        root = thread_ts or ts
        for index, path in enumerate(reply.files):
            if steps.get(f"file{index}"):
                continue
            await self._upload(origin, reply, root, path, steps, f"file{index}")
            steps.done(**{f"file{index}": True})

        async def add(emoji: str) -> None:
            try:
                await self.client.reactions_add(
                    channel=origin.channel, timestamp=ts, name=EMOJI_NAMES[emoji]
                )
            except SlackApiError as exc:
                if exc.response.get("error") != "already_reacted":
                    raise

        async def edit(message_id: str, thread_id: str | None, text: str) -> None:
            text = self._text(reply.model_copy(update={"text": text}))
            await self.client.chat_update(channel=origin.channel, ts=message_id, text=text)

        await steps.add_reactions(reply.reactions, add)
        await steps.show_state(edit)

    async def _upload(
        self, origin: Origin, reply: Reply, root: str, path: Any, steps: Steps, step: str
    ) -> None:
        """Slack's three upload steps (announce, send the bytes, share into the thread), each
        recorded as it lands: the file's id when Slack gives it, then that its bytes arrived.
        Sharing cannot be repeated and says nothing when it landed, so a post taken over
        after a crash shares a file whose bytes arrived (Slack refusing a second share as
        ``file_not_found`` means the first one landed), and uploads afresh one whose bytes
        may not have: a grid is never posted twice."""
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            await self._link_instead(origin, reply, root, size)
            return
        title = reply.text.splitlines()[0][:200]
        if steps.get(f"{step}_sent"):  # the crash came after the bytes, maybe after sharing
            try:
                await self._share(origin, steps.get(f"{step}_id"), root, title)
            except SlackApiError as exc:
                if exc.response.get("error") != "file_not_found":
                    raise
            return
        # Read off the loop: the file can be large.
        data = await asyncio.to_thread(path.read_bytes)
        try:
            ticket = await self.client.files_getUploadURLExternal(
                filename=f"tierbot-{reply.asset_id or 'file'}{path.suffix}", length=len(data)
            )
        except SlackApiError as exc:
            if exc.response.get("error") != "file_upload_size_restricted":
                raise
            await self._link_instead(origin, reply, root, size)
            return
        file_id = str(ticket["file_id"])
        steps.done(**{f"{step}_id": file_id})
        session = self.client.session
        assert session is not None, "start() gives the client its session"
        async with session.post(
            str(ticket["upload_url"]), data=data, timeout=ClientTimeout(total=UPLOAD_TIMEOUT_S)
        ) as sent:
            if sent.status != 200:
                raise SlackApiError(
                    f"file upload failed with HTTP {sent.status}",
                    {"ok": False, "error": f"upload_http_{sent.status}"},
                )
        steps.done(**{f"{step}_sent": True})
        await self._share(origin, file_id, root, title)

    async def _share(self, origin: Origin, file_id: str, root: str, title: str) -> None:
        await self.client.files_completeUploadExternal(
            files=[{"id": file_id, "title": title}], channel_id=origin.channel, thread_ts=root
        )

    async def _link_instead(self, origin: Origin, reply: Reply, root: str, size: int) -> None:
        where = (
            f"<{self.public_url}/assets/{reply.asset_id}|open it on its asset page>"
            if self.public_url
            else f"it is asset {reply.asset_id} in tierbot's store"
        )
        await self.client.chat_postMessage(
            channel=origin.channel,
            thread_ts=root,
            text=f"The file is {size / 1e6:,.0f} MB, over Slack's upload limit: {where}.",
        )

    def _text(self, reply: Reply) -> str:
        if self.public_url and reply.asset_id:
            return f"{reply.text}\n<{self.public_url}/assets/{reply.asset_id}|asset page>"
        return reply.text


def create(context: SurfaceContext) -> SlackSurface:
    """Slack switches on with SLACK_BOT_TOKEN plus SLACK_APP_TOKEN and/or SLACK_SIGNING_SECRET.

    Raises:
        SurfaceUnavailable: naming the variable to set.
    """
    return SlackSurface(context)
