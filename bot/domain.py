"""The vocabulary of tierbot: stages, capabilities, events in and replies out.

These types are shared by the core, the storage layer and every adapter. They carry no
platform or provider detail: a Slack ``ts`` or a Discord snowflake is just a ``message_id``
string here.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


#: The aspect ratios a request may ask for (a model's catalog entry may allow fewer).
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "16:9", "9:16", "4:5", "21:9")
DEFAULT_AR = "1:1"
#: Drafts per grid unless asked; seeds are 0 to MAX_SEED; a video is this long unless asked.
DEFAULT_N = 4
MAX_SEED = 2**32 - 1
DEFAULT_VIDEO_SECONDS = 4
#: Output resolutions, as people type them (``--res 2k``); adapters spell them per provider.
RESOLUTIONS = ("1k", "2k", "4k")
#: The long edge each resolution means, in pixels, for providers that take a size.
RESOLUTION_LONG_EDGE = {"1k": 1024, "2k": 2048, "4k": 4096}


class Stage(StrEnum):
    """A step of the stage-gate pipeline; also the tier a catalog model serves."""

    DRAFT = "draft"
    FINAL = "final"
    EDIT = "edit"
    UPSCALE = "upscale"
    VIDEO = "video"


class Capability(StrEnum):
    """What a model can do; the router matches a stage's need against these."""

    TEXT_TO_IMAGE = "text-to-image"
    IMAGE_TO_IMAGE = "image-to-image"
    INPAINT = "inpaint"
    UPSCALE = "upscale"
    IMAGE_TO_VIDEO = "image-to-video"
    TEXT_TO_VIDEO = "text-to-video"


#: The capability each stage needs from a model.
STAGE_NEEDS: dict[Stage, Capability] = {
    Stage.DRAFT: Capability.TEXT_TO_IMAGE,
    Stage.FINAL: Capability.IMAGE_TO_IMAGE,  # a final re-renders the chosen draft
    Stage.EDIT: Capability.IMAGE_TO_IMAGE,
    Stage.UPSCALE: Capability.UPSCALE,
    Stage.VIDEO: Capability.IMAGE_TO_VIDEO,  # the final is the first frame
}


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class AssetKind(StrEnum):
    IMAGE = "image"
    VIDEO = "video"
    GRID = "grid"
    #: An image someone sent (a reference, a named reference's picture): stored as sent,
    #: checked and stripped of its location, never generated.
    UPLOAD = "upload"
    #: A region edit's mask (white: may change), kept in the lineage of what it shaped.
    MASK = "mask"


#: The ``stage`` of assets nobody generated: an image sent in (a reference), and a version
#: fixed by hand in an editor and brought back with ``/tierbot upload`` (it goes on like a
#: final: upscale, video, QA).
UPLOAD_STAGE = "upload"
MANUAL_STAGE = "manual"
#: The ``stage`` of a stitched shot sequence and of a region edit's mask.
SEQUENCE_STAGE = "sequence"
MASK_STAGE = "mask"
#: Asset kinds that are still pictures a model can start from (made, or sent in).
PICTURES = (AssetKind.IMAGE, AssetKind.UPLOAD)


class Decision(StrEnum):
    """A human decision recorded on an asset (a gate)."""

    SELECTED = "selected"  # a draft chosen from its grid for the final tier
    APPROVED = "approved"  # QA sign-off on a final
    REJECTED = "rejected"  # a grid rerolled or discarded, a final rejected
    SHOT = "shot"  # a storyboard grid's beats shot as a sequence (🎬 acts once per grid)


class Reaction(StrEnum):
    """The reaction vocabulary, the same on every surface."""

    ONE = "1️⃣"
    TWO = "2️⃣"
    THREE = "3️⃣"
    FOUR = "4️⃣"
    FIVE = "5️⃣"
    SIX = "6️⃣"
    SEVEN = "7️⃣"
    EIGHT = "8️⃣"
    NINE = "9️⃣"
    REROLL = "🔁"
    DISCARD = "❌"
    VIDEO = "🎬"
    UPSCALE = "⬆️"
    APPROVE = "✅"
    #: Subtle variations of a final: 🔀 is :twisted_rightwards_arrows: on Slack and a
    #: standard emoji on Discord.
    VARY = "🔀"
    #: A result whose colours drifted from its source: move them back (free, local).
    MATCH = "🎨"
    #: A region edit whose seam shows: a soft pass over the whole image to unify it.
    UNIFY = "🪄"


NUMBER_REACTIONS: tuple[Reaction, ...] = (
    Reaction.ONE,
    Reaction.TWO,
    Reaction.THREE,
    Reaction.FOUR,
    Reaction.FIVE,
    Reaction.SIX,
    Reaction.SEVEN,
    Reaction.EIGHT,
    Reaction.NINE,
)

#: Reactions pre-added under a final (or an upscale / edit result).
FINAL_REACTIONS: tuple[Reaction, ...] = (
    Reaction.VIDEO,
    Reaction.UPSCALE,
    Reaction.APPROVE,
    Reaction.VARY,
    Reaction.REROLL,
    Reaction.DISCARD,
)


#: The end of a running job's status line; a surface drops it once the job has ended.
CANCEL_HINT = " · ❌ cancels"


def normalize_emoji(emoji: str) -> str:
    """Drop variation selectors so "⬆" and "⬆️" compare equal."""
    return emoji.replace("\ufe0f", "").strip()


class Origin(BaseModel):
    """Where an event came from: surface, team (workspace/guild), channel and person."""

    model_config = ConfigDict(frozen=True)

    surface: str = "cli"
    team: str = "local"
    channel: str = "cli"
    user: str = "local"
    #: The person's groups or roles on the platform, for approver rules (Slack user groups,
    #: Discord role ids). Empty where the surface has none.
    groups: tuple[str, ...] = ()


class InboundFile(BaseModel):
    """A file that came with a command, as the platform delivered it: untrusted bytes.

    Surfaces pass the bytes; the core never reads a path or fetches a link typed in a chat
    message (a surface that may, the shell, or must, Slack's file links, fetches it and says
    which ``--ref``/``--sref`` value it was fetched for in ``source``).
    """

    #: The file's name as sent (shown back in messages; never used as a path).
    name: str = ""
    #: The bytes; not kept in the inbox (a stored image is kept as ``asset_id`` instead).
    data: bytes = b""
    #: The ``--ref``/``--sref`` value this file was fetched for (a Slack file link, a path
    #: given to the shell); None for a file attached to the command itself.
    source: str | None = None
    #: Where the bytes were kept, as received, in the asset store (unchecked; a command
    #: re-run after a restart reads them from there).
    kept: str | None = None
    #: Once checked and stored as an upload asset: its id.
    asset_id: str | None = None


#: What of a command event is kept in the inbox: everything but the files' bytes.
INBOX_EXCLUDE = {"files": {"__all__": {"data"}}}


class CommandEvent(BaseModel):
    """A slash command as a surface received it: the raw text after the command name."""

    origin: Origin
    command: str  # "draft" or "tierbot"
    text: str
    #: Files sent with the command: reference images, a hand-fixed version, a content
    #: calendar's CSV.
    files: list[InboundFile] = Field(default_factory=list)
    #: The platform's id of this delivery (Slack's trigger_id, Discord's interaction id): a
    #: replayed or redelivered command with the same id is acted on once. None: no dedupe.
    delivery_id: str | None = None


class ReactionEvent(BaseModel):
    """An emoji reaction on one of the bot's messages."""

    origin: Origin
    event_id: str  # platform delivery id; the same id delivered twice is acted on once
    message_id: str
    emoji: str


class Reply(BaseModel):
    """What a surface must post for the core: one message.

    ``asset_id`` names the asset the message presents, so the surface records the posted
    message against it and reactions on that message find their way back. ``thread_of``
    names the asset whose message this one threads under.
    """

    text: str
    files: list[Path] = Field(default_factory=list)
    reactions: list[str] = Field(default_factory=list)
    asset_id: str | None = None
    thread_of: str | None = None
    private: bool = False
    #: True when the reply reports bad input, a refusal or a failure (CLI exit status).
    error: bool = False
    #: True for a short status line ("drafting 4 on …") that a surface may later replace.
    status: bool = False
    #: The request a status line is about: ❌ on the status message cancels its running jobs.
    request_id: str | None = None
    #: The jobs whose outcome this reply presents: handing the reply over for posting marks
    #: them delivered, so after a crash a result is posted once, never twice or never.
    job_ids: list[str] = Field(default_factory=list)
    #: The outbox entry this reply is posted from (set by the core before a surface posts
    #: it); the surface records there each step that landed, so a retry resumes after it.
    delivery_id: int | None = None
    #: The surface message id of the thread the reply goes in: ``thread_of``'s thread,
    #: resolved by the core before a surface sees the reply (None: the channel itself).
    thread_id: str | None = None
    #: The asset whose QA state this reply changes: its message is edited to show ``state``.
    state_of: str | None = None
    state: str = ""


async def replies_of(*replies: Reply) -> AsyncIterator[Reply]:
    """Replies already made, as the stream a surface delivers."""
    for reply in replies:
        yield reply
