"""Discord: app commands, draft grids, approval by reaction.

A ``discord.Client`` with an ``app_commands.CommandTree``, started with ``client.start()`` as a
task in the shared event loop (never ``client.run()``, which owns the loop). Intents: guilds
and guild reactions only; nothing privileged. What Discord needs, and where it is handled
(see ``shared/specs/chat_platforms.md`` §3):

- **3-second window.** Every command's first act is ``defer(thinking=True, ephemeral=True)``,
  so "Unknown interaction" is never reached. The deferred reply is the person's private line:
  it shows errors, the status of the job, and read-only answers (help, budget, lineage).
- **Bot token for results.** Grids go to the channel with ``channel.send`` and results into a
  thread created from the grid message, all with the bot token, never the 15-minute
  interaction token, so a 20-minute video still arrives.
- **Reactions.** ``on_raw_reaction_add`` (it fires for messages outside the cache, so grids
  posted before a restart work: the message → asset mapping is in SQLite). The bot's own
  reactions are ignored. A refusal goes to the person by DM, or if DMs are closed as a short
  reply that deletes itself.
- **Images in.** Every command that takes images (``CommandSpec.files == "images"``) has
  attachment options (``image``, ``image2``... :data:`IMAGE_OPTIONS`); the files are read from
  Discord's CDN after the deferral and handed to the core, which checks and stores them. A file
  over the core's cap is refused without downloading it; a download that fails is answered
  privately. The received command keeps the files' names, so one a restart interrupts before
  the download asks for its images again rather than running without them.
- **Limits and errors.** Files are fitted to the upload limit (images re-encoded, a video too
  big is linked); 429s are handled by discord.py; ``Missing Permissions`` is explained to the
  person with what to grant; a reply that cannot be posted goes to the outbox and is retried.
- **Command sync.** ``DISCORD_GUILD_IDS`` syncs to those guilds at start (instant); global
  sync is rate-limited, so it is a deliberate act: ``tierbot discord sync``.
- **Shards.** ``DISCORD_SHARDS`` (``0,1/4``) makes the client a ``discord.AutoShardedClient``
  running those shards only, so replicas split the bot's guilds (a guild's events reach only
  the replica running its shard); unset, a plain ``discord.Client`` on one connection. Only the
  replica with shard 0 syncs the commands.

``DISCORD_API_URL`` and ``DISCORD_GATEWAY_URL`` redirect discord.py's REST base
(``Route.BASE``) and gateway (``DiscordWebSocket.DEFAULT_GATEWAY``) for proxies and tests;
they are process-wide class attributes, which is fine for one bot per process.
"""

import asyncio
import inspect
import io
import logging
import re
import typing
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands
from PIL import Image

from adapters.delivery import Pace, StatusLine, Tasks
from bot import cpu
from bot.commands import (
    ASPECT_RATIOS,
    COMMANDS,
    FLAGS,
    RESOLUTIONS,
    CommandSpec,
    FlagSpec,
    Invocation,
)
from bot.delivery import Steps, kept_for_retry
from bot.domain import CommandEvent, InboundFile, Origin, ReactionEvent, Reply, replies_of
from bot.errors import UserError, private_error
from bot.shards import Shards
from bot.surfaces import SurfaceContext, SurfaceUnavailable
from bot.uploads import DOWNLOAD_TIMEOUT_S, MAX_UPLOAD_BYTES, too_big

log = logging.getLogger(__name__)

SURFACE = "discord"
MAX_CONTENT = 2000
DEFAULT_FILESIZE_LIMIT = 10 * 1024 * 1024
MISSING_PERMISSIONS = 50013
#: Gateway close codes: IDENTIFY's shard is invalid; the session would hold too many guilds.
INVALID_SHARD, SHARDING_REQUIRED = 4010, 4011
THREAD_EXISTS = 160004
#: Exactly what the bot needs in a channel; printed in the invite URL at start.
PERMISSIONS = discord.Permissions(
    view_channel=True,
    send_messages=True,
    attach_files=True,
    add_reactions=True,
    read_message_history=True,
    create_public_threads=True,
    send_messages_in_threads=True,
)
PERMISSION_HINT = (
    "I'm missing permissions in this channel. Please grant me View Channel, Send Messages, "
    "Attach Files, Add Reactions, Read Message History, Create Public Threads and Send "
    "Messages in Threads."
)
DISCORD_ERRORS = (discord.HTTPException, discord.ConnectionClosed, OSError, TimeoutError)


def _quote(value: str) -> str:
    """Quote a value for the shared command parser (options arrive already separated)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _given(value: Any) -> bool:
    return value is not None and value is not False and value != ""


def command_text(*positionals: Any, **flags: Any) -> str:
    """Rebuild the command text from app-command options, so one parser validates them all.

    Each positional is quoted (it is one option on Discord, whatever it contains); each flag
    given becomes ``--name "value"``, and a switch that is on (``True``) a bare ``--name``.
    """
    return _text(positionals, flags)


def _text(positionals: Sequence[Any], flags: Mapping[str, Any], verbatim: bool = False) -> str:
    """:func:`command_text`; ``verbatim`` passes the positionals on as typed, unquoted."""
    parts = [str(p).strip() if verbatim else _quote(str(p)) for p in positionals if _given(p)]
    for name, value in flags.items():
        if value is True:
            parts.append(f"--{name}")
        elif _given(value):
            parts.append(f"--{name} {_quote(str(value))}")
    return " ".join(p for p in parts if p)


# -- app commands, generated from the command registry -----------------------------------------
#
# Every /draft and /tierbot option is declared once, in bot.commands: a command's positionals,
# free text and flags come from its CommandSpec, a flag's name and help from its FlagSpec, and
# an option's type and bounds from the Invocation field it fills. discord.py reads a command's
# options from its callback's signature, so each command gets a callback whose signature is
# built here (``__signature__``, which ``inspect.signature`` honours) and the public
# describe / rename / choices / autocomplete decorators. What the registry does not say yet is
# in DISCORD_SHAPES, POSITIONAL_FIELDS and _flag_values below.

#: The /tierbot group's description (the registry describes commands, not the group).
GROUP_DESCRIPTION = "tierbot: finals, video, lineage, budget, models, help"
#: Discord's limits: characters in a description, choices offered for an option.
MAX_DESCRIPTION = 100
MAX_CHOICES = 25
#: What ``/tierbot schedule`` does (bot.schedules reads the action word).
SCHEDULE_ACTIONS = ("add", "list", "pause", "resume", "remove", "run-now", "calendar")
#: Most options one command may have (Discord refuses more).
MAX_OPTIONS = 25
#: Attachment options offered on a command that takes images: ``image``, ``image2``...
#: Discord has no multi-file option, and each one is its own drop zone in the command bar;
#: four cover a product from a few angles or a character sheet and keep the bar usable. The
#: core takes up to ``bot.uploads.MAX_FILES``; more images than four go in as a named
#: reference or two (``/tierbot ref add``), then ``--ref a,b``.
IMAGE_OPTIONS = 4
IMAGE_HELP = "a reference image to keep (PNG, JPEG or WebP)"
MORE_IMAGE_HELP = "another reference image"
#: Flag descriptions where the registry's help speaks of other surfaces (Slack links, shell
#: paths) or is past Discord's 100 characters. An option is given once on Discord: commas.
DISCORD_FLAG_HELP: dict[str, str] = {
    "ref": "reference images: asset ids or named references (/tierbot ref list), comma-separated",
    "sref": "style references: images whose palette, light and texture to follow (as ref)",
    "region": "edit only this box: x,y,w,h in percent, or left, top-right, center...",
}


@dataclass(frozen=True)
class DiscordShape:
    """What Discord needs to know about a command that its CommandSpec does not say (yet).

    Attributes:
        text: The Discord name of the free text when ``prompt_metavar`` is not one ``<word>``.
        text_help: The description of that option (else the spec's ``prompt_label``).
        verbatim: Positionals and free text reach the parser as typed, unquoted: the command
            reads its own words and quotes out of them (schedule's ``"<prompt template>"``).
        choices: The only values of a positional, by placeholder (schedule's ``action``).
        file: ``(name, description)`` of a file sent with the command (schedule's calendar).
        hidden: Positionals not offered on Discord (help's optional ``command``).
        images: How many image options a command that takes images offers.
        image_help: The description of its first image option.
        image_required: The first image must be attached (``upload``: the fixed version).
    """

    text: str = ""
    text_help: str = ""
    verbatim: bool = False
    choices: Mapping[str, Sequence[str]] = field(default_factory=dict)
    file: tuple[str, str] | None = None
    hidden: tuple[str, ...] = ()
    images: int = IMAGE_OPTIONS
    image_help: str = IMAGE_HELP
    image_required: bool = False


DISCORD_SHAPES: dict[str, DiscordShape] = {
    "schedule": DiscordShape(
        text="details",
        text_help='for add: <name> daily HH:MM "<prompt template>"; otherwise the name',
        verbatim=True,
        choices={"action": SCHEDULE_ACTIONS},
        file=("calendar", "for calendar: a CSV (date, prompt, optional style, ar, n)"),
    ),
    "help": DiscordShape(hidden=("command",)),
    # The beats are one option; quoted whole they would be one beat (Slack sends them raw).
    "storyboard": DiscordShape(verbatim=True),
    "ref": DiscordShape(image_help="for add: a picture of the reference (PNG, JPEG or WebP)"),
    # How a clip moves: the words go to the model with the motion preset's.
    "video": DiscordShape(text="movement", text_help="how it moves: slow dolly-in, pan left..."),
    "reshoot": DiscordShape(text="movement", text_help="new motion words for the shot (optional)"),
    # Exactly one image: the version fixed by hand (the core refuses two).
    "upload": DiscordShape(
        images=1,
        image_help="the version you fixed by hand (PNG, JPEG or WebP)",
        image_required=True,
    ),
}
#: Positionals whose type the registry does not give: the Invocation field each one fills
#: (the parser puts the draft number ``k`` in ``index``) and its description.
POSITIONAL_FIELDS: dict[str, tuple[str, str]] = {"k": ("index", "which draft of the grid")}

#: Runs a command: ``send(interaction, slash, text, attachments, files)``, where ``text`` is
#: what a person would type after ``/slash``, ``attachments`` the files attached to it, in
#: option order, and ``files`` the command's ``CommandSpec.files`` (``"images"``, ``"csv"``).
Send = Callable[
    [discord.Interaction, str, str, list[discord.Attachment], str | None], Awaitable[None]
]
Values = Callable[[], Sequence[str]]


@dataclass(frozen=True)
class _Option:
    """One Discord option of a command and where its value goes in the command text."""

    name: str
    kind: str  # "arg": a positional or the free text; "flag"; "file": an attachment
    annotation: Any
    required: bool
    description: str
    choices: Sequence[str] = ()
    suggest: Values | None = None  # autocomplete from these


def _flag_values(catalog: Any) -> dict[str, tuple[Values, bool]]:
    """Where a flag's values come from, by flag name, and whether they are the only ones.

    The registry's converters check a value but cannot list them. The only values are offered
    as choices (as autocomplete past 25, so none is out of reach); other lists only as
    autocomplete suggestions (a model id may be typed; the pipeline checks it).
    """
    return {
        "ar": (lambda: ASPECT_RATIOS, True),
        "res": (lambda: RESOLUTIONS, True),
        "style": (lambda: sorted(catalog.styles), True),
        "model": (lambda: sorted(catalog.models), False),
    }


def _short(text: str) -> str:
    text = text.strip()
    return text if len(text) <= MAX_DESCRIPTION else text[: MAX_DESCRIPTION - 1] + "…"


def _typed(field_name: str) -> Any:
    """The annotation of an option that fills ``Invocation.<field_name>``: a whole number
    (within the field's ``ge``/``le`` bounds) if the field is one, else text."""
    info = Invocation.model_fields.get(field_name)
    if info is None:
        return str
    kinds = [t for t in typing.get_args(info.annotation) or (info.annotation,) if t is not NoneType]
    if kinds != [int]:
        return str
    low = next((m.ge for m in info.metadata if getattr(m, "ge", None) is not None), None)
    high = next((m.le for m in info.metadata if getattr(m, "le", None) is not None), None)
    if low is None and high is None:
        return int
    return app_commands.Range[int, low, high]


def _text_name(spec: CommandSpec, shape: DiscordShape) -> str:
    """The Discord name of the free text: ``beats``, or the ``<word>`` of its metavar."""
    if shape.text:
        return shape.text
    if spec.beats:
        return "beats"
    word = re.fullmatch(r"<([a-z][a-z0-9-]*)>", spec.prompt_metavar)
    return word.group(1) if word else "text"


def _options(
    spec: CommandSpec,
    flags: Mapping[str, FlagSpec],
    shape: DiscordShape,
    values: Mapping[str, tuple[Values, bool]],
) -> list[_Option]:
    """A command's options in the order its text is written: positionals, free text, flags."""
    options = []
    for arg in spec.args + spec.optional_args:
        if arg in shape.hidden:
            continue
        field_name, help_ = POSITIONAL_FIELDS.get(arg, ("", f"the {arg.replace('-', ' ')}"))
        name = arg.removesuffix("-id")  # grid-id -> grid, asset-id -> asset
        required = arg in spec.args
        choices = shape.choices.get(arg, ())
        options.append(_Option(name, "arg", _typed(field_name), required, help_, choices))
    if spec.takes_prompt:
        required = not spec.prompt_optional
        help_ = shape.text_help or spec.prompt_label
        options.append(_Option(_text_name(spec, shape), "arg", str, required, help_))
    for name in spec.flags:
        flag = flags[name]
        if flag.metavar is None:  # a switch
            options.append(_Option(name, "flag", bool, False, flag.help))
            continue
        choices, suggest = (), None
        if name in values:
            listed, only = values[name]
            current = listed()
            if only and 0 < len(current) <= MAX_CHOICES:
                choices = current
            elif current or not only:
                suggest = listed
        help_ = DISCORD_FLAG_HELP.get(name, flag.help)
        options.append(_Option(name, "flag", _typed(flag.field), False, help_, choices, suggest))
    if spec.files == "images":
        for number in range(1, shape.images + 1):
            name = "image" if number == 1 else f"image{number}"
            required = number == 1 and shape.image_required
            help_ = shape.image_help if number == 1 else MORE_IMAGE_HELP
            options.append(_Option(name, "file", discord.Attachment, required, help_))
    if shape.file is not None:
        name, help_ = shape.file
        options.append(_Option(name, "file", discord.Attachment, False, help_))
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        raise ValueError(f"/{spec.name}: two Discord options share a name in {names}")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"/{spec.name}: {len(options)} Discord options; at most {MAX_OPTIONS}")
    return options


def _suggest(listed: Values) -> Callable[..., Awaitable[list[app_commands.Choice[str]]]]:
    async def suggest(
        interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        needle = current.lower()
        return [
            app_commands.Choice(name=value, value=value)
            for value in listed()
            if needle in value.lower()
        ][:MAX_CHOICES]

    return suggest


_POSITIONAL = inspect.Parameter.POSITIONAL_OR_KEYWORD
_KEYWORD = inspect.Parameter.KEYWORD_ONLY


def _command(
    name: str,
    description: str,
    options: list[_Option],
    send: Send,
    slash: str,
    prefix: str,
    verbatim: bool,
    files: str | None = None,
) -> app_commands.Command[Any, ..., None]:
    """One app command whose options are ``options``; running it sends ``/slash prefix ...``
    (the text rebuilt from the options, for the shared parser) and the files attached to it
    through ``send``, with the kind of ``files`` the command takes."""
    # The callback's own parameter names; Discord sees the options' names (rename).
    named = [(f"o{i}", option) for i, option in enumerate(options)]

    async def callback(interaction: discord.Interaction, **given: Any) -> None:
        words, switches, attachments = [], {}, []
        for key, option in named:
            value = given.get(key)
            if option.kind == "file":
                if value is not None:
                    attachments.append(value)
            elif option.kind == "flag":
                switches[option.name] = value
            else:
                words.append(value)
        text = " ".join(p for p in (prefix, _text(words, switches, verbatim)) if p)
        await send(interaction, slash, text, attachments, files)

    parameters = [inspect.Parameter("interaction", _POSITIONAL, annotation=discord.Interaction)]
    for key, option in named:
        default = None if option.annotation is not bool else False
        if option.required:
            default = inspect.Parameter.empty
        parameters.append(
            inspect.Parameter(key, _KEYWORD, annotation=option.annotation, default=default)
        )
    callback.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    app_commands.rename(**{key: option.name for key, option in named})(callback)
    app_commands.describe(**{key: _short(option.description) for key, option in named})(callback)
    choices = {
        key: [app_commands.Choice(name=value, value=value) for value in option.choices]
        for key, option in named
        if option.choices
    }
    if choices:
        app_commands.choices(**choices)(callback)
    suggest = {key: _suggest(option.suggest) for key, option in named if option.suggest}
    if suggest:
        app_commands.autocomplete(**suggest)(callback)
    return app_commands.Command(name=name, description=_short(description), callback=callback)


def app_commands_from_registry(
    catalog: Any,
    send: Send,
    registry: Iterable[CommandSpec] = COMMANDS,
    flags: Mapping[str, FlagSpec] = FLAGS,
    shapes: Mapping[str, DiscordShape] = DISCORD_SHAPES,
) -> list[app_commands.Command[Any, ..., None] | app_commands.Group]:
    """The app commands for every command in ``registry``.

    A command typed as its own slash command (``spec.invoke`` is ``/draft``) is a top-level
    command; the others are subcommands of their slash command's group (``/tierbot final``).
    Running one calls ``send(interaction, slash, text, attachments, files)`` with the text a
    person would type after the slash command, so the shared parser checks every option, and
    the files attached to it (image options, the calendar).

    Args:
        catalog: The model catalog: ``--style`` choices and ``--model`` autocomplete.
        send: Where a command goes (``DiscordSurface._command``).
        registry: The commands (``bot.commands.COMMANDS``).
        flags: The flag specs by name (``bot.commands.FLAGS``).
        shapes: What Discord needs that a command's spec does not say.

    Raises:
        ValueError: Two options of a command would share a Discord name.
    """
    values = _flag_values(catalog)
    commands: list[app_commands.Command[Any, ..., None] | app_commands.Group] = []
    groups: dict[str, app_commands.Group] = {}
    for spec in registry:
        slash, _, sub = spec.invoke.removeprefix("/").partition(" ")
        shape = shapes.get(spec.name, DiscordShape())
        options = _options(spec, flags, shape, values)
        if not sub:
            commands.append(
                _command(slash, spec.help, options, send, slash, "", shape.verbatim, spec.files)
            )
            continue
        if slash not in groups:
            groups[slash] = app_commands.Group(name=slash, description=GROUP_DESCRIPTION)
        command = _command(sub, spec.help, options, send, slash, sub, shape.verbatim, spec.files)
        groups[slash].add_command(command)
    return [*commands, *groups.values()]


class _Client(discord.Client):
    def __init__(self, surface: "DiscordSurface", **options: Any) -> None:
        super().__init__(intents=discord.Intents(guilds=True, guild_reactions=True), **options)
        self.surface = surface
        self.tree = app_commands.CommandTree(self)

    async def setup_hook(self) -> None:
        await self.surface._sync_guilds()

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.surface._on_reaction(payload)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        self.surface._on_reaction_removed(payload)


def _nonce(reply: Reply, steps: Steps) -> str | None:
    """The same for every try at posting one reply (its outbox entry), at most 25 characters
    as Discord allows; None for a post that is not in the outbox (nothing to retry)."""
    if steps.entry_id is None:
        return None
    return f"tb{reply.asset_id or ''}{steps.entry_id}"[:25]


class _ShardedClient(_Client, discord.AutoShardedClient):
    """:class:`_Client` on the shards ``shard_ids`` of ``shard_count``, one websocket each."""


def _client(surface: "DiscordSurface", shards: Shards | None, **options: Any) -> _Client:
    """The one place the client's kind is chosen: unsharded, discord.py's single connection
    (no ``shard`` in IDENTIFY); sharded, exactly these shards, with the count given, so
    discord.py asks nothing of ``GET /gateway/bot`` and every replica agrees on it."""
    if shards is None:
        return _Client(surface, **options)
    return _ShardedClient(surface, shard_ids=list(shards.ids), shard_count=shards.count, **options)


class DiscordSurface:
    """tierbot in Discord guilds."""

    name = SURFACE

    def __init__(
        self,
        context: SurfaceContext,
        *,
        api_url: str | None = None,
        gateway_url: str | None = None,
        guild_ready_timeout: float = 2.0,
        outbox_interval_s: float = 30.0,
    ) -> None:
        settings = context.settings
        if settings.discord_bot_token is None:
            raise SurfaceUnavailable("set DISCORD_BOT_TOKEN")
        self.bot = context.bot
        self._ops = context.ops
        self.catalog = context.catalog
        self.token = settings.discord_bot_token.get_secret_value()
        self.guild_ids = list(settings.discord_guild_ids)
        self.shards: Shards | None = settings.discord_shards
        self.public_url = settings.public_url
        api_url = api_url or settings.discord_api_url
        gateway_url = gateway_url or settings.discord_gateway_url
        if api_url:
            discord.http.Route.BASE = api_url.rstrip("/")
        if gateway_url:
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)
        self.client = _client(self, self.shards, guild_ready_timeout=guild_ready_timeout)
        self._register_commands()
        self.outbox = context.outbox(SURFACE, self.post, DISCORD_ERRORS, outbox_interval_s)
        self.tasks = Tasks()
        self._spawn = self.tasks.spawn
        self._stopping = False
        self._runner: asyncio.Task[None] | None = None
        self._outbox_task: asyncio.Future[Any] | None = None  # apart: idle() never waits on it
        #: The upload limit each guild's interactions report (attachment_size_limit).
        self._upload_limits: dict[int, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> str:
        """Log in, connect the gateway and wait until ready.

        Raises:
            SurfaceUnavailable: Discord refused the token or could not be reached.
        """
        self._runner = asyncio.ensure_future(self.client.start(self.token))
        while not self.client.is_ready():
            if self._runner.done():
                raise SurfaceUnavailable(self._start_failure(self._runner.exception()))
            await asyncio.sleep(0.02)
        self._outbox_task = asyncio.ensure_future(self.outbox.run())
        invite = discord.utils.oauth_url(
            self.client.application_id or 0,
            permissions=PERMISSIONS,
            scopes=("bot", "applications.commands"),
        )
        guilds = len(self.client.guilds)
        shards = "" if self.shards is None else f" on shard(s) {self.shards}"
        return f"Discord: on as {self.client.user} in {guilds} guild(s){shards}; invite: {invite}"

    def _start_failure(self, error: BaseException | None) -> str:
        if isinstance(error, discord.LoginFailure):
            return "Discord refused DISCORD_BOT_TOKEN (login failed)"
        code = error.code if isinstance(error, discord.ConnectionClosed) else None
        if code == INVALID_SHARD:
            return f"Discord refused DISCORD_SHARDS={self.shards} (4010 invalid shard)"
        if code == SHARDING_REQUIRED:
            now = "one connection" if self.shards is None else f"DISCORD_SHARDS={self.shards}"
            return (
                f"Discord requires sharding (4011: too many guilds for {now}); give every "
                "replica DISCORD_SHARDS with a larger shard count"
            )
        return f"Discord could not start: {error}"

    async def stop(self) -> None:
        self._stopping = True
        if self._outbox_task is not None:
            self._outbox_task.cancel()
            await asyncio.gather(self._outbox_task, return_exceptions=True)
        await self.tasks.cancel_all()
        await self.client.close()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until every command and reaction in flight has been answered."""
        await self.tasks.idle()

    @property
    def syncs_commands(self) -> bool:
        """Whether this process registers the commands at start. Registration is per bot, not
        per shard (a bulk overwrite over REST, rate-limited by Discord), so with replicas
        splitting the shards only the one running shard 0 does it; the others answer the
        same commands all the same (they are declared in every replica's tree)."""
        return self.shards is None or 0 in self.shards.ids

    async def _sync_guilds(self) -> None:
        if not self.syncs_commands:
            return
        for guild_id in self.guild_ids:
            guild = discord.Object(id=guild_id)
            self.client.tree.copy_global_to(guild=guild)
            await self.client.tree.sync(guild=guild)

    async def sync_global(self) -> int:
        """Publish the commands to every guild (rate-limited by Discord: a deliberate act)."""
        await self.client.login(self.token)
        try:
            return len(await self.client.tree.sync())
        finally:
            await self.client.close()

    # -- commands ----------------------------------------------------------------------------

    def _register_commands(self) -> None:
        """Declare /draft and /tierbot's subcommands, generated from the command registry."""

        async def send(
            interaction: discord.Interaction,
            command: str,
            text: str,
            attachments: list[discord.Attachment],
            files: str | None,
        ) -> None:
            await self._command(interaction, command, text, attachments, files)

        for command in app_commands_from_registry(self.catalog, send):
            self.client.tree.add_command(command)

    async def _command(
        self,
        interaction: discord.Interaction,
        command: str,
        text: str,
        attachments: Sequence[discord.Attachment] = (),
        files: str | None = None,
    ) -> None:
        # Written first (a local insert, well inside Discord's 3 s): a deferred command
        # survives a crash, and the same interaction delivered twice runs once. Images are
        # named without their bytes (read after the deferral): a command re-run after a
        # restart that came before the download asks for them again instead of running
        # without them. A calendar is not named: re-run, the command asks for the file.
        named = [InboundFile(name=a.filename) for a in attachments] if files == "images" else []
        event = CommandEvent(
            origin=Origin(
                surface=SURFACE,
                team=str(interaction.guild_id or "dm"),
                channel=str(interaction.channel_id),
                user=str(interaction.user.id),
            ),
            command=command,
            text=text,
            files=named,
            delivery_id=str(interaction.id),
        )
        if not self.bot.receive(event):
            return
        await interaction.response.defer(thinking=True, ephemeral=True)
        if self._ops is not None:  # from the interaction's creation (its snowflake) to now
            waited = (discord.utils.utcnow() - interaction.created_at).total_seconds()
            self._ops.ack_seconds.labels(SURFACE).observe(max(0.0, waited))
        if interaction.guild_id is not None:
            self._upload_limits[interaction.guild_id] = interaction.filesize_limit
        self._spawn(self._run_command(interaction, event, list(attachments), files == "images"))

    async def _run_command(
        self,
        interaction: discord.Interaction,
        event: CommandEvent,
        attachments: Sequence[discord.Attachment] = (),
        images: bool = False,
    ) -> None:
        origin = await self._origin(interaction.guild_id, interaction.channel_id, interaction.user)
        event = self.bot.resolved(event, origin)
        try:
            for attachment in attachments:  # all, before any is downloaded
                _check_size(attachment, images)
            files = list(await asyncio.gather(*(self._download(a) for a in attachments)))
        except _NotTaken as refusal:
            self.bot.answered(event)
            await self._deliver(origin, replies_of(private_error(refusal.message)), interaction)
            return
        # Kept before anything else: a restart from here on still has the files.
        event = await self.bot.keep(event.model_copy(update={"files": files}))
        replies = self.bot.handle_command(event, received=True)
        await self._deliver(origin, replies, interaction)

    async def _download(self, attachment: discord.Attachment) -> InboundFile:
        """One attachment's bytes from Discord's CDN (the core checks them).

        Raises:
            _NotTaken: the CDN did not give it (an error, an expired link, no answer).
        """
        name = attachment.filename
        try:
            async with asyncio.timeout(DOWNLOAD_TIMEOUT_S):
                data = await attachment.read()
        except discord.HTTPException as exc:
            raise _NotTaken(
                f"Not used: I could not download {name} from Discord ({exc.status}); attach it "
                "again. Nothing was spent."
            ) from None
        except (aiohttp.ClientError, OSError, TimeoutError):
            raise _NotTaken(
                f"Not used: I could not download {name} from Discord; attach it again. "
                "Nothing was spent."
            ) from None
        return InboundFile(name=name, data=data)

    # -- reactions ---------------------------------------------------------------------------

    async def _on_reaction(self, payload: discord.RawReactionActionEvent) -> None:
        if self.client.user is not None and payload.user_id == self.client.user.id:
            return  # our own pre-added reactions echo back
        if payload.guild_id is None:
            return
        reaction = ReactionEvent(
            origin=Origin(
                surface=SURFACE,
                team=str(payload.guild_id),
                channel=str(payload.channel_id),
                user=str(payload.user_id),
            ),
            event_id=self.bot.reaction_id(SURFACE, _act(payload)),
            message_id=str(payload.message_id),
            emoji=str(payload.emoji),
        )
        if self.bot.receive(reaction):
            self._spawn(self._run_reaction(payload, reaction))

    def _on_reaction_removed(self, payload: discord.RawReactionActionEvent) -> None:
        if payload.guild_id is None:
            return
        self.bot.reaction_removed(SURFACE, _act(payload))

    async def _run_reaction(
        self, payload: discord.RawReactionActionEvent, reaction: ReactionEvent
    ) -> None:
        user = payload.member or discord.Object(id=payload.user_id)
        origin = await self._origin(payload.guild_id, payload.channel_id, user)
        reaction = self.bot.resolved(reaction, origin)
        replies = self.bot.handle_reaction(reaction, received=True)
        await self._deliver(origin, replies, None)

    async def _origin(self, guild_id: int | None, channel_id: int | None, user: Any) -> Origin:
        """The person and their roles; threads count as their parent channel (policy, budget)."""
        parent = await self._parent_id(channel_id or 0)
        roles = tuple(str(role.id) for role in getattr(user, "roles", []) or [])
        return Origin(
            surface=SURFACE,
            team=str(guild_id or "dm"),
            channel=str(parent),
            user=str(user.id),
            groups=roles,
        )

    async def _parent_id(self, channel_id: int) -> int:
        channel = await self._channel(channel_id)
        if isinstance(channel, discord.Thread) and channel.parent_id:
            return channel.parent_id
        return channel_id

    async def _channel(self, channel_id: int) -> Any:
        channel = self.client.get_channel(channel_id)
        if channel is None:
            channel = await self.client.fetch_channel(channel_id)
        return channel

    # -- outbound ----------------------------------------------------------------------------

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies nobody typed a command for (scheduled batches) in ``origin``'s channel."""
        await self._deliver(origin, replies, None)

    async def _deliver(
        self,
        origin: Origin,
        replies: AsyncIterator[Reply],
        interaction: discord.Interaction | None,
    ) -> None:
        """Post a use case's replies as they come, keeping its status line current."""
        state: dict[str, Any] = {"message": None, "original_used": False}

        async def edit(text: str) -> None:
            if interaction is not None:
                await interaction.edit_original_response(content=text[:MAX_CONTENT])
            elif state["message"] is not None:
                await state["message"].edit(content=text[:MAX_CONTENT])

        async def open_status(reply: Reply, steps: Steps) -> discord.Message | None:
            if interaction is not None:  # the person's private line: no reactions
                state["original_used"] = True
                return await self._safely(
                    interaction.edit_original_response(content=reply.text[:MAX_CONTENT])
                )
            state["message"] = await self._safely(self._post_status(origin, reply, steps))
            return state["message"]

        async def private(reply: Reply) -> None:
            await self._private(origin, reply, interaction, state)

        async def result(reply: Reply) -> str | None:
            return await self._post_or_keep(origin, reply, interaction)

        await self.outbox.deliver(
            origin,
            replies,
            StatusLine(edit, Pace(self._spawn)),
            private=private,
            open_status=open_status,
            result=result,
            stopping=lambda: self._stopping,
        )
        if interaction is not None and not state["original_used"]:
            await self._safely(interaction.delete_original_response())

    async def _safely(self, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except DISCORD_ERRORS as exc:
            log.warning("discord: %s", exc)
            return None

    async def _private(
        self,
        origin: Origin,
        reply: Reply,
        interaction: discord.Interaction | None,
        state: dict[str, Any],
    ) -> None:
        """An ephemeral follow-up where an interaction exists, else a DM, else a short
        reply in the channel that deletes itself."""
        text = reply.text[:MAX_CONTENT]
        if interaction is not None:
            try:
                if not state["original_used"]:
                    state["original_used"] = True
                    await interaction.edit_original_response(content=text)
                else:
                    await interaction.followup.send(text, ephemeral=True)
                return
            except DISCORD_ERRORS as exc:
                log.info("interaction expired (%s); falling back to a DM", exc)
        try:
            user = self.client.get_user(int(origin.user)) or await self.client.fetch_user(
                int(origin.user)
            )
            await user.send(text)
        except DISCORD_ERRORS:
            channel = await self._channel(int(origin.channel))
            await self._safely(
                channel.send(f"<@{origin.user}> {text}"[:MAX_CONTENT], delete_after=30)
            )

    async def _post_status(self, origin: Origin, reply: Reply, steps: Steps) -> discord.Message:
        """A public status message, with ❌ pre-added to cancel the job."""
        target, _ = await self._target(origin, reply)
        message = await target.send(reply.text[:MAX_CONTENT])
        steps.posted(str(message.id))  # before the ❌ shows
        for emoji in reply.reactions:
            await message.add_reaction(emoji)
        return message

    async def _post_or_keep(
        self, origin: Origin, reply: Reply, interaction: discord.Interaction | None
    ) -> str | None:
        try:
            await self.outbox.send(origin, reply)
        except DISCORD_ERRORS as exc:
            if getattr(exc, "code", None) == MISSING_PERMISSIONS:
                hint = Reply(
                    text=f"{PERMISSION_HINT} The result is kept and will be posted once I can.",
                    private=True,
                )
                await self._private(origin, hint, interaction, {"original_used": True})
            return kept_for_retry(exc)
        return None

    async def post(self, origin: Origin, reply: Reply, steps: Steps) -> None:
        """Post one reply with the bot token: grids in the channel, results in the grid's
        thread. The message is linked to its asset as soon as Discord returns its id, then
        the reaction vocabulary is pre-added, and a QA decision edits the decided asset's
        message to show it; each step is recorded in ``steps``, so a retry resumes after the
        last one that landed."""
        target, root = await self._target(origin, reply)
        message_id = steps.get("message")
        if message_id is None:
            text = self._text(reply)
            files, notes = await self._files(reply, self._filesize_limit(target))
            if notes:
                text = f"{text}\n{notes}"
            # Discord keeps the nonce a few minutes and, with enforce_nonce (which discord.py
            # sends with it), answers a repeat with the message it already made: a post
            # taken over after a crash between sending and recording is not posted twice.
            nonce = _nonce(reply, steps)
            message = await target.send(text[:MAX_CONTENT], files=files, nonce=nonce)
            message_id = str(message.id)
            steps.posted(message_id, thread_id=root, message=message_id)
        partial = target.get_partial_message(int(message_id))

        async def edit(message_id: str, thread_id: str | None, text: str) -> None:
            # A thread's id is its root message's id.
            place = await self._channel(int(thread_id or origin.channel))
            decided = self._text(reply.model_copy(update={"text": text}))
            await place.get_partial_message(int(message_id)).edit(content=decided[:MAX_CONTENT])

        await steps.add_reactions(reply.reactions, partial.add_reaction)
        await steps.show_state(edit)

    async def _target(self, origin: Origin, reply: Reply) -> tuple[Any, str | None]:
        """Where ``reply`` goes (the channel, or its thread, created from the root message
        if need be) and the thread's root message id (None in the channel)."""
        channel = await self._channel(int(origin.channel))
        root = reply.thread_id
        if root is None:
            return channel, None
        thread = self.client.get_channel(int(root))
        if isinstance(thread, discord.Thread):
            return thread, root
        asset = self.bot.asset(reply.thread_of or "")
        name = f"tierbot · {(asset or {}).get('prompt') or 'results'}"[:100]
        try:
            thread = await channel.get_partial_message(int(root)).create_thread(
                name=name, auto_archive_duration=1440
            )
        except discord.HTTPException as exc:
            if exc.code != THREAD_EXISTS:
                raise
            thread = await self.client.fetch_channel(int(root))
        return thread, root

    def _filesize_limit(self, target: Any) -> int:
        """The guild's upload limit: what its interactions last reported, else its tier's."""
        guild = getattr(target, "guild", None)
        if guild is not None and guild.id in self._upload_limits:
            return self._upload_limits[guild.id]
        return getattr(guild, "filesize_limit", None) or DEFAULT_FILESIZE_LIMIT

    async def _files(self, reply: Reply, limit: int) -> tuple[list[discord.File], str]:
        """The reply's files for one message: as they are when they fit ``limit``, images
        re-encoded until they do, anything else too big linked in the returned notes."""
        files, notes = [], []
        for path in reply.files:
            name = f"tierbot-{reply.asset_id or 'file'}"
            if path.stat().st_size <= limit:
                files.append(discord.File(path, filename=f"{name}{path.suffix}"))
                continue
            data = await cpu.run(_fit, path, limit) if _is_image(path) else None
            if data is None:
                where = (
                    f"{self.public_url}/assets/{reply.asset_id}"
                    if self.public_url
                    else f"asset {reply.asset_id} in tierbot's store"
                )
                notes.append(
                    f"The file is over Discord's {limit // 2**20} MiB upload limit: {where}"
                )
                continue
            files.append(discord.File(io.BytesIO(data), filename=f"{name}.jpg"))
        return files, "\n".join(notes)

    def _text(self, reply: Reply) -> str:
        if self.public_url and reply.asset_id:
            return f"{reply.text}\n<{self.public_url}/assets/{reply.asset_id}>"
        return reply.text


class _NotTaken(UserError):
    """An attachment the surface could not take (too big, or not downloaded): the message
    is the person's private answer."""


def _check_size(attachment: discord.Attachment, image: bool) -> None:
    """Refuse a file over the core's cap from the size Discord declares, before reading it
    (a Nitro user may attach 500 MB); for an image in the core's own words.

    Raises:
        _NotTaken: it is too big.
    """
    if attachment.size <= MAX_UPLOAD_BYTES:
        return
    cap = f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB"
    if image:  # in the core's own words
        raise _NotTaken(f"Not used: {too_big(attachment.filename)}. Nothing was spent.")
    raise _NotTaken(
        f"Not used: {attachment.filename!r} is {attachment.size / 1e6:.1f} MB, too big to take "
        f"from Discord (the limit is {cap}). Nothing was spent."
    )


def _act(payload: discord.RawReactionActionEvent) -> str:
    """One person's reaction with one emoji on one message (Discord gives it no id)."""
    return f"{payload.message_id}:{payload.user_id}:{payload.emoji}"


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in _IMAGE_SUFFIXES


def _fit(path: Path, limit: int) -> bytes | None:
    """An image too big for ``limit`` re-encoded as JPEG (smaller each try) until it fits;
    None if even the smallest try does not."""
    with Image.open(path) as image:
        picture = image.convert("RGB")
    for scale in (1.0, 0.75, 0.5, 0.35, 0.25):
        size = (max(1, int(picture.width * scale)), max(1, int(picture.height * scale)))
        resized = picture if scale == 1.0 else picture.resize(size, Image.Resampling.LANCZOS)
        for quality in (90, 80, 70, 60):
            buffer = io.BytesIO()
            resized.save(buffer, "JPEG", quality=quality, optimize=True)
            if buffer.tell() <= limit:
                return buffer.getvalue()
    return None


def create(context: SurfaceContext) -> DiscordSurface:
    """Discord switches on with DISCORD_BOT_TOKEN.

    Raises:
        SurfaceUnavailable: naming the variable to set.
    """
    return DiscordSurface(context)


async def cli(context: SurfaceContext, args: list[str]) -> int:
    """``tierbot discord sync``: publish the commands globally (rate-limited by Discord)."""
    if args != ["sync"]:
        print("usage: tierbot discord sync   (publish /draft and /tierbot to every guild)")
        return 2
    try:
        surface = DiscordSurface(context)
    except SurfaceUnavailable as exc:
        print(f"Discord: {exc}")
        return 2
    count = await surface.sync_global()
    print(f"Discord: {count} command(s) synced globally; they can take up to an hour to appear.")
    return 0
