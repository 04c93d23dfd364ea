"""The chat surface port: what a surface is given, and what the composition root starts.

A surface is a module ``adapters/<name>.py`` with ``create(context) -> ChatSurface`` that
raises :class:`SurfaceUnavailable` with the reason when it is not configured ("set
SLACK_BOT_TOKEN"). It gets a :class:`SurfaceContext`, not the whole service bag: the core's
front door (:class:`~bot.core.Tierbot`), an outbox to post through, the settings, the
catalog (for choices it offers) and, for a surface that is its own platform, the history
table. A surface turns platform events into :class:`~bot.domain.CommandEvent` and
:class:`~bot.domain.ReactionEvent` for the core, and posts the replies through its
:class:`~bot.delivery.Outbox`, reporting each posted message to the ``Steps`` it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from bot.catalog import Catalog
from bot.delivery import Outbox, Poster
from bot.domain import Origin, Reply
from bot.settings import Settings
from storage import Store, WebHistory

if TYPE_CHECKING:
    from bot.core import Tierbot
    from bot.metrics import Ops

log = logging.getLogger(__name__)


class SurfaceUnavailable(Exception):
    """The surface cannot start here; the message says what to set."""


class ChatSurface(Protocol):
    name: str

    async def start(self) -> str:
        """Start serving in the running event loop; return a line for the console."""
        ...

    async def stop(self) -> None: ...

    async def deliver(self, origin: Origin, replies: AsyncIterator[Reply]) -> None:
        """Post replies in ``origin``'s channel unprompted (scheduled batches, summaries)."""
        ...


@dataclass
class SurfaceContext:
    """What a surface may use."""

    bot: Tierbot
    settings: Settings
    catalog: Catalog
    #: The web channel's messages (the one surface that is its own platform).
    history: WebHistory
    _store: Store
    #: Resources surfaces share within one process (the one HTTP server), by name.
    shared: dict[str, Any] = field(default_factory=dict)
    #: Where a surface reports its acknowledgement latency and whether it is up.
    ops: Ops | None = None

    def outbox(
        self,
        surface: str,
        post: Poster,
        errors: tuple[type[BaseException], ...],
        interval_s: float = 30.0,
    ) -> Outbox:
        """The outbox ``surface`` posts every reply through (see :class:`Outbox`)."""
        return Outbox(surface, self._store, post, errors, interval_s)
