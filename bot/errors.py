"""The error-to-reply boundary: what a person sees when something goes wrong.

A use case raises :class:`UserError` (bad input, a refusal) before anything is spent; a failed
job raises :class:`~bot.runner.JobFailed`. :func:`guarded` turns both, and anything unexpected,
into replies: a refusal privately to the person, a failure where its status line was, an
unexpected error as a reference to the log, never a stack trace. Every stream a surface posts
goes through it (commands, reactions, scheduled batches, results after a restart).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator

from bot.domain import Reply
from bot.router import RouteRefused
from bot.runner import JobFailed

log = logging.getLogger(__name__)


class UserError(Exception):
    """Bad input or a refused action: shown privately to the person; nothing was spent."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def private_error(text: str) -> Reply:
    """A refusal or bad input, shown only to the person who asked."""
    return Reply(text=text, private=True, error=True)


async def guarded(replies: AsyncIterator[Reply]) -> AsyncIterator[Reply]:
    """``replies`` with the errors a use case raises turned into replies: a refusal or bad
    input privately, a failed job where its status line was, anything else as a reference
    to the log. Every stream a surface posts goes through it (commands, reactions, batches,
    results after a restart)."""
    thread_of: str | None = None  # a failure is reported where its status line was
    try:
        async for reply in replies:
            thread_of = reply.thread_of
            yield reply
    except (UserError, RouteRefused) as exc:
        yield private_error(exc.message)
    except JobFailed as exc:
        prefix = (
            "🚫 Refused by the provider's content policy" if exc.kind == "policy" else "⚠️ Failed"
        )
        yield Reply(
            text=f"{prefix}: {exc.message}. Nothing was charged.",
            thread_of=thread_of,
            error=True,
            job_ids=exc.job_ids,
        )
    except Exception:
        ref = secrets.token_hex(3)
        log.exception("unexpected error (ref %s)", ref)
        yield Reply(
            text=f"⚠️ Something went wrong on our side (ref {ref}). Nothing was charged "
            "for work that did not finish; the team can look the reference up in the logs.",
            error=True,
        )
