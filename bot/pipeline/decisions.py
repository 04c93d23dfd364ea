"""Decisions: QA sign-off and rejection of a result (its one current state)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from bot.domain import Decision, Origin, Reply
from bot.errors import UserError
from bot.pipeline.base import UseCases

log = logging.getLogger(__name__)


class Decisions(UseCases):
    """✅ and ❌ on finals, edits, upscales and videos."""

    async def approve(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """✅: QA sign-off on a final, upscale, edit or video."""
        asset = self._result_asset(asset_id)
        self._authorize_decision(origin, "signing off")
        if not self.store.record_qa(
            asset_id, Decision.APPROVED, user=origin.user, surface=origin.surface
        ):
            raise UserError(f"{asset_id} is already signed off")
        yield self._qa_reply(asset, "✅", "signed off", origin.user)

    async def reject(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """❌ on a result: record the rejection."""
        asset = self._result_asset(asset_id)
        self._authorize_decision(origin, "rejecting")
        if not self.store.record_qa(
            asset_id, Decision.REJECTED, user=origin.user, surface=origin.surface
        ):
            raise UserError(f"{asset_id} is already rejected")
        yield self._qa_reply(asset, "❌", "rejected", origin.user)

    @staticmethod
    def _qa_reply(asset: dict[str, Any], mark: str, verb: str, user: str) -> Reply:
        """A QA decision: said in the asset's thread, and its message edited to show the
        asset's one current state (a later decision replaces it)."""
        return Reply(
            text=f"{mark} {asset['stage'].capitalize()} {asset['id']} {verb} by {user}.",
            thread_of=asset["id"],
            state_of=asset["id"],
            state=f"{mark} {verb.capitalize()} by {user}",
        )
