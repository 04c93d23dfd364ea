"""The chat surface port: what the composition root starts and stops.

A surface is a module ``adapters/<name>.py`` with ``create(services) -> ChatSurface`` that
raises :class:`SurfaceUnavailable` with the reason when it is not configured ("set
SLACK_BOT_TOKEN"). A surface turns platform events into :class:`~bot.domain.CommandEvent` and
:class:`~bot.domain.ReactionEvent` for :class:`~bot.core.Tierbot`, posts the replies, and
calls ``Tierbot.record_post`` for each reply that presents an asset.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Protocol

from bot.domain import Origin, Reply

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
