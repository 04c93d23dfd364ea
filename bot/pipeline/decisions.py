"""Decisions: QA sign-off and rejection of a result (its one current state)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from bot.domain import Decision, Origin, Reply
from bot.errors import UserError
from bot.pipeline.base import UseCases

log = logging.getLogger(__name__)


class Decisions(UseCases):
    """✅ and ❌ on finals, edits, upscales and videos."""

    def approve(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """✅: QA sign-off on a final, upscale, edit or video."""
        return self._decide(origin, asset_id, Decision.APPROVED)

    def reject(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """❌ on a result: record the rejection."""
        return self._decide(origin, asset_id, Decision.REJECTED)

    async def _decide(
        self, origin: Origin, asset_id: str, decision: Decision
    ) -> AsyncIterator[Reply]:
        """Record ``decision`` as the asset's current QA state. The reply says so in the
        asset's thread and has its message edited to show it (a later decision replaces it)."""
        mark, verb, action = _WORDS[decision]
        asset = self._result_asset(asset_id)
        self._authorize_decision(origin, action)
        if not self.store.record_qa(asset_id, decision, user=origin.user, surface=origin.surface):
            raise UserError(f"{asset_id} is already {verb}")
        yield Reply(
            text=f"{mark} {asset['stage'].capitalize()} {asset_id} {verb} by {origin.user}.",
            thread_of=asset_id,
            state_of=asset_id,
            state=f"{mark} {verb.capitalize()} by {origin.user}",
        )


#: How a QA decision is shown: its mark, its verb, and the action approvers are asked for.
_WORDS = {
    Decision.APPROVED: ("✅", "signed off", "signing off"),
    Decision.REJECTED: ("❌", "rejected", "rejecting"),
}
