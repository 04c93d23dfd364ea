"""Slack: slash commands, draft grids in threads, approval by reaction.

Built on slack-bolt's ``AsyncApp`` in the shared event loop (never ``app.start()``, which
owns the loop). Socket Mode runs when ``SLACK_APP_TOKEN`` is set; HTTP mode is mounted at
``/slack/events`` on the bot's HTTP server when ``SLACK_SIGNING_SECRET`` is set; both can run.

What Slack needs, and where it is handled (see ``shared/specs/chat_platforms.md`` §1):

- **3-second ack.** ``/draft`` and ``/tierbot`` ack first with a short private text; the work
  runs in a task this surface keeps a strong reference to. Results are posted with the bot
  token (``chat.postMessage``), never ``response_url``, so a long job still lands.
- **Grids.** ``files_upload_v2`` returns no message ``ts``, so every asset gets an *anchor*
  message we own (text, model, reason, price), the file is uploaded into the anchor's thread
  (always the thread's parent ``ts``), and the reactions are pre-added to the anchor.
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

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.async_app import AsyncApp
from slack_sdk.errors import SlackApiError, SlackRequestError
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.web.async_client import AsyncWebClient

from adapters.delivery import Pace, StatusLine, Tasks
from adapters.http_server import http_server
from bot.delivery import Steps, kept_for_retry, platform_error
from bot.domain import CommandEvent, Origin, ReactionEvent, Reply
from bot.surfaces import SurfaceContext, SurfaceUnavailable

log = logging.getLogger(__name__)

SURFACE = "slack"
DEFAULT_API_URL = "https://slack.com/api/"
#: Slack's per-file upload limit (1 GB); bigger files are linked instead.
MAX_UPLOAD_BYTES = 1_000_000_000
GROUP_CACHE_S = 300.0
API_TIMEOUT_S = 30
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
}
EMOJI_NAMES = {emoji: name for name, emoji in REACTION_NAMES.items()}
_USERGROUP_ID = re.compile(r"^S[A-Z0-9]{2,}$")
_NOT_A_MEMBER = ("not_in_channel", "channel_not_found", "is_archived")
#: What "Slack will not take this now" looks like: such replies go to the outbox.
SLACK_ERRORS = (SlackApiError, SlackRequestError, ClientError, TimeoutError)

INVITE_HINT = (
    "I can't post in this channel yet: invite me with `/invite @tierbot` (or add the app "
    "from the channel's details), then try again."
)


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
        self.public_url = settings.public_url
        base_url = (api_url or settings.slack_api_url or DEFAULT_API_URL).rstrip("/") + "/"
        self.client = AsyncWebClient(
            token=settings.slack_bot_token.get_secret_value(),
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
        name = command["command"].lstrip("/")
        # Slack escapes exactly these three in command text.
        text = command.get("text", "").replace("&lt;", "<").replace("&gt;", ">")
        text = text.replace("&amp;", "&")
        origin = Origin(
            surface=SURFACE,
            team=command["team_id"],
            channel=command["channel_id"],
            user=command["user_id"],
        )
        event = CommandEvent(
            origin=origin, command=name, text=text, delivery_id=command.get("trigger_id")
        )
        # Written before the ack: an acknowledged command survives a crash, and a replayed
        # one (same trigger_id) is acknowledged and ignored.
        if not self.bot.receive(event):
            await ack()
            return
        await ack(response_type="ephemeral", text=f"⏳ On it: /{name} {text}".strip())
        self._spawn(self._run_command(event, respond))

    async def _run_command(self, event: CommandEvent, respond: Any) -> None:
        origin = await self._origin(event.origin.team, event.origin.channel, event.origin.user)
        event = self.bot.resolved(event, origin)
        replies = self.bot.handle_command(event, received=True)
        await self._deliver(origin, replies, respond)

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
            await self._upload(origin, reply, root, path)
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

    async def _upload(self, origin: Origin, reply: Reply, root: str, path: Any) -> None:
        size = path.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            await self._link_instead(origin, reply, root, size)
            return
        # Read off the loop: given a path, slack-sdk reads the whole file synchronously.
        data = await asyncio.to_thread(path.read_bytes)
        try:
            await self.client.files_upload_v2(
                channel=origin.channel,
                thread_ts=root,
                file=data,
                filename=f"tierbot-{reply.asset_id or 'file'}{path.suffix}",
                title=reply.text.splitlines()[0][:200],
            )
        except SlackApiError as exc:
            if exc.response.get("error") != "file_upload_size_restricted":
                raise
            await self._link_instead(origin, reply, root, size)

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
