"""The slash-command grammar: one parser shared by Slack, Discord, the web page and the CLI.

A surface hands :func:`parse` the slash command it received (``draft`` or ``tierbot``) and
the text typed after it. The result is a typed :class:`Invocation`, or a
:class:`CommandError` whose ``message`` is shown to the person as it is.

Grammar, briefly::

    /tierbot <command> <words and options in any order>
    /draft <words and options>            same as /tierbot draft <...>

* Text is split into tokens at whitespace. ``"..."`` and ``'...'`` group words into one
  token, and so do the "smart" quotes phones and Slack type (“...”, ‘...’, „...“). A quote
  only opens at the start of a token (or right after ``=``), so the apostrophe in ``dog's``
  and the inch mark in ``12"`` are plain text. A single quote that is never closed is taken
  as an apostrophe (``'90s``); a double quote that is never closed is an error. ``\\"``
  writes a literal quote.
* An option is ``--name value`` or ``--name=value``, anywhere in the text: before, inside
  or after the prompt. Names are case-insensitive. An em dash or en dash (``—ar``, ``–n``),
  which Slack, macOS and phones substitute for ``--``, works the same, as long as the word
  after it is an option name (or a near miss of one); otherwise the dash is prose.
  ``--no`` takes every word up to the next option (or one quoted string); ``--hero``
  takes no value; every other option takes exactly one token. A token that starts with a
  quote is never an option, so ``"--ar"`` is plain text.
* What is left is, in order, the command's positional arguments (asset ids, a draft
  number) and then, for the commands that take one, the free-text prompt. Whitespace in
  the prompt is collapsed to single spaces. ``storyboard`` splits its text at ``|`` into
  2 to 9 beats.
* Control characters (and invisible zero-width / bidi-override characters) are removed
  before anything else.

Commands are declared as :class:`CommandSpec` values in the :data:`COMMANDS` registry,
which also drives :func:`help_text`. Every user-facing message lives in the ``MSG_*``
constants below.
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bot.domain import ASPECT_RATIOS, DEFAULT_N, DEFAULT_VIDEO_SECONDS, MAX_SEED, RESOLUTIONS
from bot.regions import NAMED_REGIONS, parse_region

log = logging.getLogger(__name__)

__all__ = [
    "ASPECT_RATIOS",
    "COMMANDS",
    "DEFAULT_N",
    "DEFAULT_VIDEO_SECONDS",
    "FLAGS",
    "MAX_N",
    "MAX_PROMPT_CHARS",
    "MAX_SEED",
    "VIDEO_SECONDS",
    "CommandError",
    "CommandRegistry",
    "CommandSpec",
    "DuplicateCommandError",
    "FlagSpec",
    "Invocation",
    "RegistrationError",
    "help_text",
    "parse",
    "register",
    "unknown_slash",
]

# --------------------------------------------------------------------------- limits

MAX_PROMPT_CHARS = 1000
MAX_N = 9
VIDEO_SECONDS = (1, 10)
#: A storyboard has this many beats, at least and at most.
STORYBOARD_BEATS = (2, 9)
#: Longest --model / --style value.
MAX_NAME_CHARS = 100
#: Longest piece of the person's own text quoted back in an error message.
MAX_ECHO_CHARS = 40
#: Most --ref (and --sref) values one command takes; a model's own limit may be lower.
MAX_REFERENCES = 9
#: Longest --ref value (a Slack file link is long).
MAX_REFERENCE_CHARS = 500

#: The slash commands the bot registers on each surface, and the command each one fixes
#: (``None``: the first word of the text names the command).
SLASH_COMMANDS: dict[str, str | None] = {"draft": "draft", "tierbot": None}

# ------------------------------------------------------------------------- messages
# Every message a person can see. Plain text, no markup: they are posted as they are on
# every surface. Placeholders are filled with str.format.

MSG_UNKNOWN_SLASH = "unknown slash command /{command}; tierbot answers /draft and /tierbot"
MSG_UNKNOWN_SLASH_GUESS = (
    "unknown slash command /{command}; did you mean {suggestion}? "
    "tierbot answers /draft and /tierbot"
)
MSG_NO_SLASH = "Commands start with / — to draft this, type: /draft {text}"
MSG_NO_SLASH_LONG = "Commands start with / — to draft this, type /draft and then your prompt"
MSG_NO_SLASH_COMMAND = "Commands start with / — type: {suggestion}"
MSG_UNKNOWN_COMMAND = "unknown command '{word}'; did you mean '{suggestion}'? Try /tierbot help"
MSG_UNKNOWN_COMMAND_PLAIN = "unknown command '{word}'. Try /tierbot help"
MSG_COMMAND_FIRST = (
    "start with a command, e.g. /tierbot draft a red fox --ar 16:9; got {token} first. "
    "Try /tierbot help"
)
MSG_UNKNOWN_OPTION = "unknown option --{name}; did you mean --{suggestion}?"
MSG_UNKNOWN_OPTION_LIST = "unknown option --{name}; {command} takes {options}"
MSG_UNKNOWN_OPTION_NONE = "unknown option --{name}; {command} takes no options"
MSG_NOT_APPLICABLE = "--{name} does not apply to {command}"
MSG_REPEATED = "--{name} is given twice; give it once"
MSG_TOO_MANY = "--{name} takes at most {limit} images"
MSG_NEEDS_VALUE = "--{name} needs a value"
MSG_TAKES_NO_VALUE = "--{name} takes no value; got {value}"
MSG_CHOICE = "--{name} must be one of {choices}; got {value}"
MSG_RANGE = "--{name} must be a whole number from {low} to {high}; got {value}"
MSG_OPTION_TOO_LONG = "--{name} is {length} characters; the limit is {limit}"
MSG_UNCLOSED_QUOTE = "unclosed quote {quote} before '{context}'; close it or remove it"
MSG_UNCLOSED_QUOTE_AT_END = "unclosed quote {quote} at the end; close it or remove it"
MSG_NEEDS_PROMPT = "{invoke} needs {label}, e.g. {example}"
MSG_PROMPT_TOO_LONG = "the prompt is {length} characters; the limit is {limit}"
MSG_NEEDS_ARGS = "{invoke} needs {what}; usage: {usage}"
MSG_NO_ARGS = "{invoke} takes no arguments; got '{extra}'"
MSG_EXTRA_ARGS = "{invoke} takes only {what}; got extra '{extra}'; usage: {usage}"
MSG_INDEX = "the draft number <k> must be a whole number from 1 to {high}; got {value}"
MSG_BEAT_COUNT = "a storyboard needs {low} to {high} beats separated by |; got {count}"
MSG_EMPTY_BEAT = "storyboard beat {number} is empty; write something between each pair of |"
MSG_BEAT_TOO_LONG = "storyboard beat {number} is {length} characters; the limit is {limit}"

#: How an argument placeholder of a usage line reads in a sentence.
ARG_DESCRIPTIONS: dict[str, str] = {
    "asset-id": "an asset id",
    "grid-id": "a grid id",
    "k": f"a draft number from 1 to {MAX_N}",
    "command": "a command name",
    "action": "add, list or remove",
    "name": "a reference name",
    "sequence-id": "a sequence id",
    "shot-order": "the shots in their new order, e.g. 3,1,2",
}

HELP_HEADER = "tierbot commands (/tierbot help <command> for details):"


class CommandError(ValueError):
    """A command the parser cannot accept; ``message`` is shown to the person as it is."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class RegistrationError(ValueError):
    """A :class:`CommandSpec` that cannot be registered: a programming error, not user input."""


class DuplicateCommandError(RegistrationError):
    """Two commands claim the same name or alias."""


# ----------------------------------------------------------------------- invocation


class Invocation(BaseModel):
    """One parsed command. Option fields are ``None`` (or empty) when not given.

    ``args`` holds the positional ids: the asset or grid id, or the command name for
    ``help``. For ``final`` the draft number goes to ``index``, not ``args``. For
    ``storyboard`` the beats go to ``beats`` and ``prompt`` is them joined by ``" | "``.
    """

    model_config = ConfigDict(extra="forbid")

    name: str
    prompt: str | None = None
    args: list[str] = Field(default_factory=list)
    ar: str | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED)
    model: str | None = None
    style: str | None = None
    negative: str | None = None
    hero: bool = False
    resolution: str | None = None
    seconds: int | None = Field(default=None, ge=VIDEO_SECONDS[0], le=VIDEO_SECONDS[1])
    index: int | None = Field(default=None, ge=1, le=MAX_N)
    beats: list[str] = Field(default_factory=list)
    #: Schedules: time zone, day list and the hour of the "ready to publish" summary,
    #: checked by ``bot.schedules`` (it knows the rules).
    tz: str | None = None
    days: str | None = None
    summary: str | None = None
    #: Reference images (``--ref``) and style references (``--sref``): asset ids, named
    #: references, and what a surface fetched for the command (a Slack link, a shell path).
    refs: list[str] = Field(default_factory=list)
    srefs: list[str] = Field(default_factory=list)
    #: ``vary --strong``: a loose variation rather than a subtle one.
    strong: bool = False
    #: ``vary --prompt "..."``: remix the image with new text.
    remix: str | None = None
    #: ``edit --region``: the box to change (``x,y,w,h`` in percent); ``--mask``: the
    #: attached image marks it instead.
    region: str | None = None
    mask: bool = False
    #: Videos and shots: ``--motion subtle|dynamic`` (a catalog preset); ``shots --finals``.
    motion: str | None = None
    finals: bool = False


# --------------------------------------------------------------------------- helpers

_WHITESPACE = re.compile(r"\s+")
_DIGITS = re.compile(r"[0-9]{1,30}")
#: Removed before parsing: C0/C1 control characters (other than the usual whitespace,
#: which becomes a space), zero-width space, BOM/word joiner and bidi overrides. Zero-width
#: joiners stay: emoji and some scripts need them.
_STRIP = {c: None for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))}
_STRIP.update({ord(c): " " for c in "\t\n\r\x0b\x0c"})
_STRIP.update({c: None for c in (0x200B, 0x2060, 0xFEFF, *range(0x202A, 0x202F))})
_STRIP.update({c: None for c in range(0x2066, 0x206A)})


def _clean(text: str) -> str:
    """Remove control and invisible formatting characters (whitespace becomes a space)."""
    return text.translate(_STRIP)


def _normalise(text: str) -> str:
    """Collapse runs of whitespace to one space and strip the ends."""
    return _WHITESPACE.sub(" ", text).strip()


def _shown(value: str, limit: int = MAX_ECHO_CHARS) -> str:
    """The person's text as quoted back in a message: one line, at most ``limit`` chars."""
    value = _normalise(value)
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _nfkc(value: str) -> str:
    """Fold full-width and other compatibility forms (``１６：９``) for numbers and ratios."""
    return unicodedata.normalize("NFKC", value).strip()


def _region(name: str, raw: str) -> str:
    """A --region value, checked (zero area, outside the image, not numbers) and kept as
    typed; ``bot.regions.parse_region`` reads it again where it is used."""
    try:
        return str(parse_region(raw))
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _reference(raw: str) -> str:
    """A --ref value: Slack's link markup (``<https://...|name>``) unwrapped."""
    value = raw.strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1].split("|", 1)[0]
    if len(value) > MAX_REFERENCE_CHARS:
        raise CommandError(
            MSG_OPTION_TOO_LONG.format(name="ref", length=len(value), limit=MAX_REFERENCE_CHARS)
        )
    return value


def reference_values(command: str, text: str) -> list[str]:
    """The ``--ref`` and ``--sref`` values of a command, for a surface that must fetch some
    of them before the core runs it (Slack file links, shell paths); empty when the command
    does not parse (the core will say why)."""
    try:
        invocation = parse(command, text)
    except CommandError:
        return []
    return [*invocation.refs, *invocation.srefs]


def _join_and(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------- flags

Converter = Callable[[str, str], object]


def _choice(choices: tuple[str, ...]) -> Converter:
    def convert(name: str, raw: str) -> str:
        value = _nfkc(raw)
        if value not in choices:
            raise CommandError(
                MSG_CHOICE.format(name=name, choices=", ".join(choices), value=_shown(raw))
            )
        return value

    return convert


def _whole(low: int, high: int, template: str = MSG_RANGE) -> Callable[[str, str], int]:
    def convert(name: str, raw: str) -> int:
        value = _nfkc(raw)
        if _DIGITS.fullmatch(value) and low <= int(value) <= high:
            return int(value)
        raise CommandError(template.format(name=name, low=low, high=high, value=_shown(raw)))

    return convert


def _text(limit: int) -> Converter:
    def convert(name: str, raw: str) -> str:
        value = _normalise(raw)
        if len(value) > limit:
            raise CommandError(
                MSG_OPTION_TOO_LONG.format(name=name, length=len(value), limit=limit)
            )
        return value

    return convert


@dataclass(frozen=True)
class FlagSpec:
    """One option: its name (no dashes), the :class:`Invocation` field it fills, help.

    ``metavar`` is ``None`` for a switch that takes no value (``--hero``). ``greedy``
    options take every word up to the next option (``--no``).
    """

    name: str
    field: str
    help: str
    metavar: str | None = None
    convert: Converter | None = None
    greedy: bool = False
    #: May be given more than once (and takes comma-separated values): its field is a list.
    repeatable: bool = False

    @property
    def usage(self) -> str:
        """The option as it appears in a usage line, e.g. ``[--ar W:H]``."""
        if self.metavar is None:
            return f"[--{self.name}]"
        return f"[--{self.name} {self.metavar}]"


FLAGS: dict[str, FlagSpec] = {
    flag.name: flag
    for flag in (
        FlagSpec(
            "ar", "ar", "aspect ratio: " + ", ".join(ASPECT_RATIOS), "W:H", _choice(ASPECT_RATIOS)
        ),
        FlagSpec(
            "n", "n", f"how many drafts (default {DEFAULT_N})", f"1..{MAX_N}", _whole(1, MAX_N)
        ),
        FlagSpec(
            "seed", "seed", f"seed to repeat a result, 0 to {MAX_SEED}", "N", _whole(0, MAX_SEED)
        ),
        FlagSpec("model", "model", "model id (see /tierbot models)", "ID", _text(MAX_NAME_CHARS)),
        FlagSpec("style", "style", "named style preset", "NAME", _text(MAX_NAME_CHARS)),
        FlagSpec(
            "no",
            "negative",
            "what to keep out: every word up to the next option",
            "TEXT",
            _text(MAX_PROMPT_CHARS),
            greedy=True,
        ),
        FlagSpec("hero", "hero", "hero asset: use the top-quality tier"),
        FlagSpec(
            "res",
            "resolution",
            "output resolution: " + ", ".join(RESOLUTIONS) + " (default 2k where offered)",
            "1k|2k|4k",
            lambda name, raw: _choice(RESOLUTIONS)(name, raw.lower()),
        ),
        FlagSpec(
            "tz", "tz", "time zone of a schedule, e.g. Europe/Berlin", "ZONE", _text(MAX_NAME_CHARS)
        ),
        FlagSpec(
            "days",
            "days",
            "days a schedule runs, e.g. mon-fri or mon,wed,fri",
            "DAYS",
            _text(MAX_NAME_CHARS),
        ),
        FlagSpec(
            "summary",
            "summary",
            "hour of the ready-to-publish summary, e.g. 17:00",
            "HH:MM",
            _text(MAX_NAME_CHARS),
        ),
        FlagSpec(
            "ref",
            "refs",
            "reference image: an asset id, a named reference (/tierbot ref list), an image link "
            "on Slack, a file path in the shell; repeat it or separate with commas",
            "REF",
            lambda name, raw: _reference(raw),
            repeatable=True,
        ),
        FlagSpec(
            "sref",
            "srefs",
            "style reference: an image whose palette, light and texture to follow (as --ref)",
            "REF",
            lambda name, raw: _reference(raw),
            repeatable=True,
        ),
        FlagSpec("strong", "strong", "vary: a loose variation rather than a subtle one"),
        FlagSpec(
            "region",
            "region",
            "edit only this box: x,y,w,h in percent, or " + ", ".join(NAMED_REGIONS),
            "BOX",
            _region,
        ),
        FlagSpec("mask", "mask", "edit only where the attached mask image is white"),
        FlagSpec(
            "motion",
            "motion",
            "how the shot moves: subtle (a stable camera, the default) or dynamic",
            "subtle|dynamic",
            _choice(("subtle", "dynamic")),
        ),
        FlagSpec("finals", "finals", "shots: render each beat on the final tier first"),
        FlagSpec(
            "prompt",
            "remix",
            "vary: remix the image with this text",
            "TEXT",
            _text(MAX_PROMPT_CHARS),
        ),
        FlagSpec(
            "seconds",
            "seconds",
            f"clip length in seconds (default {DEFAULT_VIDEO_SECONDS})",
            f"{VIDEO_SECONDS[0]}..{VIDEO_SECONDS[1]}",
            _whole(*VIDEO_SECONDS),
        ),
    )
}

_DASHES = "-—–"  # hyphen-minus, em dash, en dash
_FLAG_GUESS_CUTOFF = 0.75  # how close a word after an em dash must be to an option name


# ------------------------------------------------------------------------- commands

_SHORTCUTS = {target for target in SLASH_COMMANDS.values() if target}
_NAME_RE = re.compile(r"[a-z][a-z0-9-]*")


#: Runs a parsed command: ``(bot, origin, invocation, files) -> replies``; ``files`` are the
#: ``InboundFile``s sent with it (images already checked and stored, see ``bot.uploads``).
Handler = Callable[[Any, Any, "Invocation", Any], AsyncIterator[Any]]


async def _answer(text: str) -> AsyncIterator[Any]:
    """A read-only answer: one private reply."""
    from bot.domain import Reply  # the parser itself needs no reply type

    yield Reply(text=text, private=True)


@dataclass(frozen=True)
class CommandSpec:
    """A command as declared in the registry.

    Attributes:
        name: Canonical name, lower case (``final``).
        help: One line for the overview.
        aliases: Other names that mean the same command (``select``).
        args: Required positional placeholders in order (``("grid-id", "k")``).
        optional_args: Optional positional placeholders after those.
        takes_prompt: Whether free text follows the positionals.
        beats: Whether the free text is split at ``|`` into storyboard beats.
        prompt_metavar: How the free text appears in the usage line.
        prompt_label: How the free text reads in "needs ..." (``a prompt``).
        flags: Names of the options it accepts (keys of :data:`FLAGS`).
        example: A complete example, shown in help and in "needs a prompt" errors.
        usage: The usage line; generated from the fields above when left empty.
        handler: What runs it: ``handler(bot, origin, invocation, files)`` returns the
            replies (``bot`` is the core's front door, :class:`bot.core.Tierbot`).
        files: What files it takes: ``"images"`` (checked and stored as uploads before the
            handler runs), ``"csv"`` (passed as sent), or ``None`` (files are refused).
    """

    name: str
    help: str
    aliases: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    optional_args: tuple[str, ...] = ()
    takes_prompt: bool = False
    #: With ``takes_prompt``: the free text may be empty (``schedule list``).
    prompt_optional: bool = False
    beats: bool = False
    prompt_metavar: str = "<prompt>"
    prompt_label: str = "a prompt"
    flags: tuple[str, ...] = ()
    example: str = ""
    usage: str = ""
    handler: Handler | None = field(default=None, compare=False, repr=False)
    files: str | None = None

    def __post_init__(self) -> None:
        if not self.usage:
            parts = [self.invoke, *(f"<{a}>" for a in self.args)]
            parts += [f"[{a}]" for a in self.optional_args]
            if self.takes_prompt:
                parts.append(self.prompt_metavar)
            parts += [FLAGS[f].usage for f in self.flags if f in FLAGS]
            object.__setattr__(self, "usage", " ".join(parts))

    @property
    def invoke(self) -> str:
        """How a person types the command: ``/draft`` or ``/tierbot <name>``."""
        return f"/{self.name}" if self.name in _SHORTCUTS else f"/tierbot {self.name}"

    @property
    def min_args(self) -> int:
        return len(self.args)

    @property
    def max_args(self) -> int:
        return len(self.args) + len(self.optional_args)

    def detail(self) -> str:
        """The full help of this command: usage, help, aliases, options, example."""
        lines = [self.usage, self.help]
        others = [f"/tierbot {self.name}"] if self.name in _SHORTCUTS else []
        others += [f"/tierbot {alias}" for alias in self.aliases]
        if others:
            lines.append("Also: " + ", ".join(others))
        if self.flags:
            lines.append("Options:")
            width = max(len(FLAGS[f].usage) for f in self.flags) - 2
            for name in self.flags:
                flag = FLAGS[name]
                lines.append(f"  {flag.usage[1:-1]:<{width}}  {flag.help}")
        if self.example:
            lines.append(f"Example: {self.example}")
        return "\n".join(lines)


class CommandRegistry:
    """Commands by name and alias. Registering a clashing name raises at once."""

    def __init__(self) -> None:
        self._specs: dict[str, CommandSpec] = {}
        self._lookup: dict[str, CommandSpec] = {}

    def register(self, spec: CommandSpec) -> CommandSpec:
        """Add ``spec``; return it (so this works as a one-line registration).

        Raises:
            DuplicateCommandError: The name or an alias is taken (or repeated in ``spec``).
            RegistrationError: A malformed name, an unknown flag, beats without a prompt.
        """
        keys = (spec.name, *spec.aliases)
        for key in keys:
            if not _NAME_RE.fullmatch(key):
                raise RegistrationError(f"command name {key!r} must be lower-case a-z, 0-9, -")
        if len(set(keys)) != len(keys):
            raise DuplicateCommandError(f"command {spec.name!r} repeats a name in its aliases")
        for key in keys:
            if key in self._lookup:
                owner = self._lookup[key].name
                raise DuplicateCommandError(
                    f"command name or alias {key!r} of {spec.name!r} is already taken by {owner!r}"
                )
        unknown = [f for f in spec.flags if f not in FLAGS]
        if unknown:
            raise RegistrationError(f"command {spec.name!r} names unknown options {unknown}")
        if spec.beats and not spec.takes_prompt:
            raise RegistrationError(f"command {spec.name!r} has beats but takes no prompt")
        self._specs[spec.name] = spec
        for key in keys:
            self._lookup[key] = spec
        return spec

    def get(self, name: str) -> CommandSpec | None:
        """The command called ``name`` (or aliased so), case-insensitively; else ``None``."""
        return self._lookup.get(name.lower())

    def names(self) -> list[str]:
        """Every name and alias."""
        return list(self._lookup)

    def __iter__(self) -> Iterator[CommandSpec]:
        return iter(self._specs.values())

    def __len__(self) -> int:
        return len(self._specs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._lookup


#: Every command the bot understands, in help order.
COMMANDS = CommandRegistry()


def register(spec: CommandSpec, registry: CommandRegistry = COMMANDS) -> CommandSpec:
    """Register ``spec`` in ``registry`` (the module's :data:`COMMANDS` by default).

    Args:
        spec: The command to add.
        registry: Where to add it.

    Returns:
        ``spec``, unchanged.

    Raises:
        DuplicateCommandError: Its name or an alias is already registered. At import time
            this stops the bot from starting, which is the point: no silent renames.
    """
    return registry.register(spec)


_EXAMPLE_ID = "3fa2c1d0"
_IMAGE_FLAGS = ("ar", "n", "seed", "model", "style", "no", "hero", "ref", "sref")


def _refs(bot: Any, origin: Any, inv: Invocation, files: Any) -> Any:
    """The reference images of a command (attachments, ``--ref``, ``--sref``)."""
    return bot.pipeline.references(origin, inv, files)


register(
    CommandSpec(
        "draft",
        "Draft a grid of quick, cheap images from a prompt (attach images, or --ref, to draft "
        "with your product, character or style).",
        takes_prompt=True,
        flags=_IMAGE_FLAGS,
        example="/draft astronaut in an overgrown jungle --ar 16:9",
        handler=lambda bot, origin, inv, files: bot.pipeline.draft(
            origin, inv, _refs(bot, origin, inv, files)
        ),
        files="images",
    )
)
register(
    CommandSpec(
        "final",
        f"Render draft k (1 to {MAX_N}) of a grid with a final-quality model.",
        aliases=("select",),
        args=("grid-id", "k"),
        flags=("model", "style", "hero", "res", "ref", "sref"),
        example=f"/tierbot final {_EXAMPLE_ID} 2 --hero --res 4k",
        handler=lambda bot, origin, inv, files: bot.pipeline.select(
            origin, inv.args[0], inv.index or 0, inv, _refs(bot, origin, inv, files)
        ),
        files="images",
    )
)
register(
    CommandSpec(
        "edit",
        "Edit an image by describing the change.",
        args=("asset-id",),
        takes_prompt=True,
        prompt_metavar="<instruction>",
        prompt_label="an instruction",
        flags=("model", "seed", "res", "ref", "sref", "region", "mask"),
        example=f"/tierbot edit {_EXAMPLE_ID} make the sky stormy",
        handler=lambda bot, origin, inv, files: bot.pipeline.edit(origin, inv.args[0], inv, files),
        files="images",
    )
)
register(
    CommandSpec(
        "vary",
        "Variations of an image: draft k of a grid, or any image asset (subtle unless "
        "--strong; --prompt remixes it with new text).",
        args=("asset-id",),
        optional_args=("k",),
        flags=("strong", "prompt", "n", "model"),
        example=f"/tierbot vary {_EXAMPLE_ID} 2 --strong",
        usage=f"/tierbot vary <grid-id> <k> | <asset-id> [--strong] [--prompt TEXT] "
        f"[--n 1..{MAX_N}] [--model ID]",
        handler=lambda bot, origin, inv, _: bot.pipeline.vary(origin, inv.args[0], inv.index, inv),
    )
)
register(
    CommandSpec(
        "ref",
        "Named references of the team: ref add <name> with images attached, ref list, "
        "ref remove <name>; use them with --ref <name> or --sref <name>.",
        args=("action",),
        optional_args=("name",),
        flags=("ref",),
        example="/tierbot ref add mug",
        handler=lambda bot, origin, inv, files: bot.pipeline.ref(origin, inv, files),
        files="images",
    )
)
register(
    CommandSpec(
        "upload",
        "Bring back a version of an asset fixed by hand in an editor (attach it): it goes on "
        "like a final, and the lineage shows the hand step.",
        args=("asset-id",),
        example=f"/tierbot upload {_EXAMPLE_ID}",
        handler=lambda bot, origin, inv, files: bot.pipeline.upload(origin, inv.args[0], files),
        files="images",
    )
)
register(
    CommandSpec(
        "upscale",
        "Upscale an image to high resolution.",
        args=("asset-id",),
        flags=("model",),
        example=f"/tierbot upscale {_EXAMPLE_ID}",
        handler=lambda bot, origin, inv, _: bot.pipeline.upscale(origin, inv.args[0], inv.model),
    )
)
register(
    CommandSpec(
        "video",
        "Animate an image into a short clip; say how it moves (a slow dolly-in, pan left...).",
        args=("asset-id",),
        takes_prompt=True,
        prompt_optional=True,
        prompt_metavar="[motion text]",
        flags=("seconds", "motion", "model", "ref", "sref"),
        example=f"/tierbot video {_EXAMPLE_ID} slow dolly-in --seconds 6",
        handler=lambda bot, origin, inv, files: bot.pipeline.video(
            origin, inv.args[0], inv.seconds, inv.model, _refs(bot, origin, inv, files), inv
        ),
        files="images",
    )
)
register(
    CommandSpec(
        "shots",
        "Animate a storyboard grid: each beat a short shot, stitched into one video (🎬 on the "
        "grid does the same).",
        args=("grid-id",),
        flags=("seconds", "finals", "motion", "model"),
        example=f"/tierbot shots {_EXAMPLE_ID} --seconds 3 --finals",
        handler=lambda bot, origin, inv, _: bot.pipeline.shots(origin, inv.args[0], inv),
    )
)
register(
    CommandSpec(
        "reshoot",
        "Render shot k of a sequence again (new motion words optional) and re-stitch.",
        args=("sequence-id", "k"),
        takes_prompt=True,
        prompt_optional=True,
        prompt_metavar="[motion text]",
        example=f"/tierbot reshoot {_EXAMPLE_ID} 2 slow pan left",
        handler=lambda bot, origin, inv, _: bot.pipeline.reshoot(
            origin, inv.args[0], inv.index or 0, inv.prompt
        ),
    )
)
register(
    CommandSpec(
        "order",
        "Re-stitch a sequence's shots in a new order (free).",
        args=("sequence-id", "shot-order"),
        example=f"/tierbot order {_EXAMPLE_ID} 3,1,2",
        handler=lambda bot, origin, inv, _: bot.pipeline.order(origin, inv.args[0], inv.args[1]),
    )
)
# Commands that take one id and run the use case of the same name on it.
# (Reactions have these too, for surfaces without reactions, the shell, and scripts.)
for _name, _summary, _arg, _use_case in (
    ("reroll", "Draft a grid again with the same prompt.", "grid-id", "reroll"),
    ("discard", "Discard a grid.", "grid-id", "discard"),
    ("approve", "Approve an asset (sign-off).", "asset-id", "approve"),
    ("reject", "Reject an asset.", "asset-id", "reject"),
    (
        "match",
        "Move a result's colours back onto its source's (free; 🎨).",
        "asset-id",
        "match_colours",
    ),
    (
        "unify",
        "A soft pass over a region edit's whole image, for a seam that shows (🪄).",
        "asset-id",
        "unify",
    ),
):
    register(
        CommandSpec(
            _name,
            _summary,
            args=(_arg,),
            example=f"/tierbot {_name} {_EXAMPLE_ID}",
            handler=lambda bot, origin, inv, _, use_case=_use_case: getattr(bot.pipeline, use_case)(
                origin, inv.args[0]
            ),
        )
    )
register(
    CommandSpec(
        "storyboard",
        f"Draft a storyboard: {STORYBOARD_BEATS[0]} to {STORYBOARD_BEATS[1]} beats separated"
        " by |, one frame each.",
        takes_prompt=True,
        beats=True,
        prompt_metavar="<beat> | <beat> | ...",
        prompt_label=f"{STORYBOARD_BEATS[0]} to {STORYBOARD_BEATS[1]} beats separated by |",
        flags=("ar", "seed", "style", "model", "ref", "sref"),
        example="/tierbot storyboard a fox wakes | it sees snow | it leaps into a drift --ar 16:9",
        handler=lambda bot, origin, inv, files: bot.pipeline.storyboard(
            origin, inv, _refs(bot, origin, inv, files)
        ),
        files="images",
    )
)
register(
    CommandSpec(
        "schedule",
        "Daily batches of drafts: add, list, pause, resume, remove, run-now, calendar.",
        args=("action",),
        takes_prompt=True,
        prompt_optional=True,
        prompt_metavar='<name> [daily HH:MM "<prompt template>"]',
        flags=("tz", "days", "n", "ar", "style", "summary"),
        example="/tierbot schedule add morning daily 09:00 --tz Europe/Berlin --days mon-fri "
        '"a {weekday} coffee flat lay"',
        handler=lambda bot, origin, inv, files: bot.scheduler.command(
            origin, inv, files[0].data if files else None
        ),
        files="csv",
    )
)
register(
    CommandSpec(
        "lineage",
        "Show where an asset came from: prompts, models and parents.",
        args=("asset-id",),
        example=f"/tierbot lineage {_EXAMPLE_ID}",
        handler=lambda bot, origin, inv, _: _answer(bot.pipeline.lineage(inv.args[0])),
    )
)
register(
    CommandSpec(
        "budget",
        "Show the spend so far and the budget left.",
        example="/tierbot budget",
        handler=lambda bot, origin, inv, _: _answer(bot.pipeline.budget(origin)),
    )
)
register(
    CommandSpec(
        "models",
        "List the models for each stage.",
        example="/tierbot models",
        handler=lambda bot, origin, inv, _: _answer(bot.pipeline.models()),
    )
)
register(
    CommandSpec(
        "help",
        "Show this help, or the details of one command.",
        optional_args=("command",),
        example="/tierbot help draft",
        handler=lambda bot, origin, inv, _: _answer(help_text(inv.args[0] if inv.args else None)),
    )
)


def _unknown_command(word: str) -> CommandError:
    match = difflib.get_close_matches(word.lower(), COMMANDS.names(), n=1)
    if match:
        return CommandError(MSG_UNKNOWN_COMMAND.format(word=_shown(word), suggestion=match[0]))
    return CommandError(MSG_UNKNOWN_COMMAND_PLAIN.format(word=_shown(word)))


def help_text(name: str | None = None) -> str:
    """The help a person sees.

    Args:
        name: A command name or alias (a leading ``/`` is ignored); ``None`` for the
            overview of every command.

    Returns:
        Without ``name``: a header, then each command's usage line and one line of help.
        With ``name``: that command's usage, help, aliases, options and an example.

    Raises:
        CommandError: ``name`` is not a command (the message suggests the nearest one).
    """
    if name is None or not name.strip():
        lines = [HELP_HEADER]
        for spec in COMMANDS:
            lines += [spec.usage, f"    {spec.help}"]
        return "\n".join(lines)
    word = name.strip().removeprefix("/")
    spec = COMMANDS.get(word)
    if spec is None:
        raise _unknown_command(word)
    return spec.detail()


# ------------------------------------------------------------------------ tokeniser

_DOUBLE_OPENERS = frozenset('"“”„')
_DOUBLE_CLOSERS = frozenset('"“”')
_SINGLE_QUOTES = frozenset("'‘’")
_ALL_QUOTES = _DOUBLE_OPENERS | _SINGLE_QUOTES
_ESCAPED_QUOTE = re.compile(r"\\([" + "".join(sorted(_ALL_QUOTES)) + "])")


@dataclass(frozen=True)
class _Token:
    text: str
    quoted: bool = False  # some of it came from inside quotes
    opens_quoted: bool = False  # it starts with a quote: never an option


def _closers(text: str) -> tuple[list[int], list[int]]:
    """For each index, where the next double / single closing quote is (len(text) if none).

    A single quote only closes when no letter or digit follows it, so ``'dog's toy'`` is one
    token. Precomputing keeps tokenising linear whatever the input.
    """
    size = len(text)
    next_double = [size] * (size + 1)
    next_single = [size] * (size + 1)
    for j in range(size - 1, -1, -1):
        ch = text[j]
        escaped = j > 0 and text[j - 1] == "\\"
        double = ch in _DOUBLE_CLOSERS and not escaped
        single = ch in _SINGLE_QUOTES and not escaped
        single = single and (j + 1 == size or not text[j + 1].isalnum())
        next_double[j] = j if double else next_double[j + 1]
        next_single[j] = j if single else next_single[j + 1]
    return next_double, next_single


def _tokenise(text: str) -> list[_Token]:
    """Split cleaned text into tokens, shell-like (see the module docstring).

    Raises:
        CommandError: A double quote is never closed.
    """
    next_double, next_single = _closers(text)
    tokens: list[_Token] = []
    buf: list[str] = []
    started = quoted = opens_quoted = False
    size = len(text)
    i = 0
    while i < size:
        ch = text[i]
        if ch.isspace():
            if started:
                tokens.append(_Token("".join(buf), quoted, opens_quoted))
                buf, started, quoted, opens_quoted = [], False, False, False
            i += 1
            continue
        at_start = not started or (buf and buf[-1] == "=")
        close = size
        if at_start and ch in _DOUBLE_OPENERS:
            close = next_double[i + 1]
            if close >= size:
                rest = text[i + 1 :]
                if not rest.strip():
                    raise CommandError(MSG_UNCLOSED_QUOTE_AT_END.format(quote=ch))
                raise CommandError(MSG_UNCLOSED_QUOTE.format(quote=ch, context=_shown(rest, 30)))
        elif at_start and ch in _SINGLE_QUOTES:
            close = next_single[i + 1]  # never closed: an apostrophe, kept as text
        if close < size:
            buf.append(_ESCAPED_QUOTE.sub(r"\1", text[i + 1 : close]))
            opens_quoted = opens_quoted or not started
            started = quoted = True
            i = close + 1
            continue
        if ch == "\\" and i + 1 < size and text[i + 1] in _ALL_QUOTES:
            ch = text[i + 1]
            i += 1
        buf.append(ch)
        started = True
        i += 1
    if started:
        tokens.append(_Token("".join(buf), quoted, opens_quoted))
    return tokens


def _as_flag(token: _Token) -> tuple[str, str | None] | None:
    """``(name, inline value or None)`` if the token is an option, else ``None``.

    ``--`` followed by a letter always makes an option (unknown names are errors). An em
    or en dash does only when the word is an option name or a near miss of one, so a dash
    used as punctuation stays in the prompt.
    """
    if token.opens_quoted:
        return None
    text = token.text
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)  # full-width －－ａｒ
    if not text or text[0] not in _DASHES:
        return None
    body = text.lstrip(_DASHES)
    prefix = text[: len(text) - len(body)]
    if prefix == "-" or not body or not body[0].isalpha():
        return None
    name, sep, value = body.partition("=")
    name = name.lower()
    if sep and "=" in token.text:
        value = token.text.partition("=")[2]  # the value as typed, not NFKC-folded
    if (
        set(prefix) != {"-"}
        and name not in FLAGS
        and not difflib.get_close_matches(name, FLAGS, n=1, cutoff=_FLAG_GUESS_CUTOFF)
    ):
        return None
    return name, (value if sep else None)


# --------------------------------------------------------------------------- parser


def _unknown_option(name: str, spec: CommandSpec) -> CommandError:
    shown = _shown(name)
    match = difflib.get_close_matches(name, spec.flags, n=1)
    if match:
        return CommandError(MSG_UNKNOWN_OPTION.format(name=shown, suggestion=match[0]))
    if spec.flags:
        options = ", ".join(f"--{f}" for f in spec.flags)
        return CommandError(
            MSG_UNKNOWN_OPTION_LIST.format(name=shown, command=spec.name, options=options)
        )
    return CommandError(MSG_UNKNOWN_OPTION_NONE.format(name=shown, command=spec.name))


def _take_options(
    spec: CommandSpec, tokens: list[_Token]
) -> tuple[list[_Token], dict[str, object]]:
    """Pull the options out of ``tokens``; return the other tokens and the option values."""
    flags = [_as_flag(t) for t in tokens]
    words: list[_Token] = []
    values: dict[str, object] = {}
    i = 0
    while i < len(tokens):
        hit = flags[i]
        if hit is None:
            words.append(tokens[i])
            i += 1
            continue
        name, inline = hit
        flag = FLAGS.get(name)
        if flag is None:
            raise _unknown_option(name, spec)
        if name not in spec.flags:
            raise CommandError(MSG_NOT_APPLICABLE.format(name=name, command=spec.name))
        if flag.field in values and not flag.repeatable:
            raise CommandError(MSG_REPEATED.format(name=name))
        quoted_inline = tokens[i].quoted
        i += 1
        if flag.metavar is None:
            if inline is not None:
                raise CommandError(MSG_TAKES_NO_VALUE.format(name=name, value=_shown(inline)))
            values[flag.field] = True
            continue
        parts: list[str] = []
        if inline is not None:
            parts.append(inline)
            more = flag.greedy and not quoted_inline
        elif i < len(tokens) and flags[i] is None:
            parts.append(tokens[i].text)
            more = flag.greedy and not tokens[i].opens_quoted
            i += 1
        else:
            more = False
        while more and i < len(tokens) and flags[i] is None:
            parts.append(tokens[i].text)
            i += 1
        raw = _normalise(" ".join(parts))
        if not raw:
            raise CommandError(MSG_NEEDS_VALUE.format(name=name))
        assert flag.convert is not None
        if flag.repeatable:
            given = values.setdefault(flag.field, [])
            assert isinstance(given, list)
            given += [flag.convert(name, part) for part in raw.split(",") if part.strip()]
            if len(given) > MAX_REFERENCES:
                raise CommandError(MSG_TOO_MANY.format(name=name, limit=MAX_REFERENCES))
        else:
            values[flag.field] = flag.convert(name, raw)
    return words, values


def _split_beats(spec: CommandSpec, words: list[_Token]) -> list[str]:
    """Split storyboard text at ``|`` (outside quotes) into checked, normalised beats."""
    pieces: list[list[str]] = [[]]
    for word in words:
        if word.quoted:
            pieces[-1].append(word.text)
            continue
        first, *rest = word.text.split("|")
        pieces[-1].append(first)
        pieces += [[piece] for piece in rest]
    beats = [_normalise(" ".join(piece)) for piece in pieces]
    if not any(beats):
        raise CommandError(
            MSG_NEEDS_PROMPT.format(
                invoke=spec.invoke, label=spec.prompt_label, example=spec.example
            )
        )
    for number, beat in enumerate(beats, start=1):
        if not beat:
            raise CommandError(MSG_EMPTY_BEAT.format(number=number))
    low, high = STORYBOARD_BEATS
    if not low <= len(beats) <= high:
        raise CommandError(MSG_BEAT_COUNT.format(low=low, high=high, count=len(beats)))
    for number, beat in enumerate(beats, start=1):
        if len(beat) > MAX_PROMPT_CHARS:
            raise CommandError(
                MSG_BEAT_TOO_LONG.format(number=number, length=len(beat), limit=MAX_PROMPT_CHARS)
            )
    return beats


def _parse_spec(spec: CommandSpec, tokens: list[_Token]) -> Invocation:
    words, values = _take_options(spec, tokens)
    words = [w for w in words if w.text.strip()]
    if len(words) < spec.min_args:
        what = _join_and([ARG_DESCRIPTIONS.get(a, f"<{a}>") for a in spec.args])
        raise CommandError(MSG_NEEDS_ARGS.format(invoke=spec.invoke, what=what, usage=spec.usage))
    positional = [_normalise(w.text) for w in words[: spec.max_args]]
    rest = words[spec.max_args :]
    if spec.takes_prompt:
        positional, rest = positional[: spec.min_args], words[spec.min_args :]
    elif rest:
        extra = _shown(" ".join(w.text for w in rest))
        if spec.max_args == 0:
            raise CommandError(MSG_NO_ARGS.format(invoke=spec.invoke, extra=extra))
        what = _join_and(
            [ARG_DESCRIPTIONS.get(a, f"<{a}>") for a in spec.args + spec.optional_args]
        )
        raise CommandError(
            MSG_EXTRA_ARGS.format(invoke=spec.invoke, what=what, extra=extra, usage=spec.usage)
        )

    prompt: str | None = None
    beats: list[str] = []
    if spec.beats:
        beats = _split_beats(spec, rest)
        prompt = " | ".join(beats)
    elif spec.takes_prompt:
        prompt = _normalise(" ".join(w.text for w in rest))
        if not prompt and spec.prompt_optional:
            prompt = None
        elif not prompt:
            raise CommandError(
                MSG_NEEDS_PROMPT.format(
                    invoke=spec.invoke, label=spec.prompt_label, example=spec.example
                )
            )
        if prompt and len(prompt) > MAX_PROMPT_CHARS:
            raise CommandError(
                MSG_PROMPT_TOO_LONG.format(length=len(prompt), limit=MAX_PROMPT_CHARS)
            )

    index: int | None = None
    placeholders = spec.args + spec.optional_args
    if "k" in placeholders and placeholders.index("k") < len(positional):
        index = _whole(1, MAX_N, MSG_INDEX)("k", positional.pop(placeholders.index("k")))
    if "command" in spec.args + spec.optional_args and positional:
        topic = COMMANDS.get(positional[0].removeprefix("/"))
        if topic is None:
            raise _unknown_command(positional[0])
        positional[0] = topic.name
    return Invocation(
        name=spec.name, prompt=prompt, args=positional, index=index, beats=beats, **values
    )


#: Other bots' words for "make a picture" (Midjourney's /imagine): tierbot's is /draft.
_DRAFT_SYNONYMS = frozenset({"imagine", "dream", "draw", "generate", "gen", "create", "image"})
#: Longest text quoted back whole in the "type: /draft <text>" hint (so it can be copied).
_MAX_HINT_CHARS = 200


def unknown_slash(command: str, text: str) -> CommandError:
    """The error for a slash command tierbot does not answer, naming the one meant if it can.

    Args:
        command: The slash command, lower-case, without its ``/``. Empty when the person typed
            text without any command (the web page's box): the hint then says how to draft it,
            or, if the text starts with a command's name, adds the missing slash.
        text: What was typed after it.

    Returns:
        The :class:`CommandError` to raise: ``/imagine`` and other bots' drawing commands
        suggest ``/draft``; a ``/tierbot`` command typed as its own slash command (``/final``)
        or a near miss (``/upscal``, ``/drafts``) suggests the command it resembles.
    """
    rest = _normalise(text)
    if not command:
        first, _, after = rest.partition(" ")
        word = first.lower().removeprefix("/")
        named = COMMANDS.get(word)
        if word in SLASH_COMMANDS or named is not None:
            invoke = f"/{word}" if word in SLASH_COMMANDS or named is None else named.invoke
            suggestion = f"{invoke} {after}".strip()
            if len(suggestion) > _MAX_HINT_CHARS:
                suggestion = f"{invoke} …"
            return CommandError(MSG_NO_SLASH_COMMAND.format(suggestion=suggestion))
        if len(rest) > _MAX_HINT_CHARS:
            return CommandError(MSG_NO_SLASH_LONG)
        return CommandError(MSG_NO_SLASH.format(text=rest))
    spec = COMMANDS.get(command)
    if spec is None and command not in _DRAFT_SYNONYMS:
        near = difflib.get_close_matches(command, COMMANDS.names(), n=1)
        spec = COMMANDS.get(near[0]) if near else None
    if spec is not None:
        suggestion = spec.invoke
    elif command in _DRAFT_SYNONYMS:
        suggestion = "/draft"
    elif near := difflib.get_close_matches(command, list(SLASH_COMMANDS), n=1):
        suggestion = f"/{near[0]}"
    else:
        return CommandError(MSG_UNKNOWN_SLASH.format(command=_shown(command)))
    return CommandError(
        MSG_UNKNOWN_SLASH_GUESS.format(command=_shown(command), suggestion=suggestion)
    )


def parse(command: str, text: str) -> Invocation:
    """Parse one slash command.

    Args:
        command: The slash command as received, without or with its ``/``: ``draft`` or
            ``tierbot`` (case-insensitive). Empty for text typed without a command (the web
            page's box): the error then says that commands start with ``/``.
        text: Everything typed after it. For ``tierbot`` the first word names the command
            (an empty text means ``help``); ``/draft X`` is the same as ``/tierbot draft X``.

    Returns:
        The typed invocation. Options not given stay ``None``; the caller applies defaults.

    Raises:
        CommandError: Anything the person has to fix; ``.message`` says what and how.
    """
    slash = _normalise(_clean(command)).lower().removeprefix("/")
    if slash not in SLASH_COMMANDS:
        raise unknown_slash(slash, _clean(text))
    tokens = _tokenise(_clean(text))
    fixed = SLASH_COMMANDS[slash]
    if fixed is not None:
        spec = COMMANDS.get(fixed)
        assert spec is not None, f"/{slash} fixes an unregistered command {fixed!r}"
    elif not tokens:
        spec, tokens = COMMANDS.get("help"), []
        assert spec is not None
    else:
        first, tokens = tokens[0], tokens[1:]
        if _as_flag(first) is not None:
            raise CommandError(MSG_COMMAND_FIRST.format(token=_shown(first.text)))
        word = _normalise(first.text).removeprefix("/")
        found = COMMANDS.get(word)
        if found is None:
            raise _unknown_command(word)
        spec = found
    invocation = _parse_spec(spec, tokens)
    log.debug("parsed /%s into %s", slash, invocation.name)
    return invocation
