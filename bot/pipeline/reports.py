"""Reports: lineage, budget and models, answered privately and spending nothing."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from bot.catalog import Candidate
from bot.domain import DEFAULT_VIDEO_SECONDS, MANUAL_STAGE, SEQUENCE_STAGE, AssetKind, Origin
from bot.errors import UserError
from bot.ledger import credits
from bot.pipeline.base import UseCases

log = logging.getLogger(__name__)

#: Assets that shape what is made without being made from: images people sent, masks.
_SHAPING = (AssetKind.UPLOAD, AssetKind.MASK)


@dataclass
class LineageNode:
    """One asset in a lineage tree, with its gate decisions and later results."""

    asset: dict[str, Any]
    gates: list[dict[str, Any]]
    grids: list[str]
    children: list[LineageNode]
    #: Images people sent that shaped this asset (uploads: references, a hand-fixed file).
    references: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        asset = self.asset
        size = f"{asset['width']}×{asset['height']}"
        if asset["duration_s"]:
            size += f", {asset['duration_s']:.0f} s"
        sender = (asset.get("sent_by") or "").split(":", 1)[-1]
        if asset["kind"] == AssetKind.UPLOAD:
            text = f"{asset['id']} 📎 upload “{asset['prompt']}” · sent by {sender} · {size}"
        elif asset["kind"] == AssetKind.MASK:
            text = f"{asset['id']} ✂️ mask of region {asset['prompt']} · by {sender} · {size}"
        elif asset["stage"] == SEQUENCE_STAGE:
            text = (
                f"{asset['id']} 🎞️ sequence · stitched from its shots · {size} · "
                f"{credits(asset['cost'] or 0)}"
            )
        elif asset["stage"] == MANUAL_STAGE:
            text = f"{asset['id']} 🖌️ manual · fixed by hand by {sender} · {size}"
        else:
            where = f" in grid {self.grids[0]}" if self.grids else ""
            text = (
                f"{asset['id']} {asset['stage']}{where} · {asset['model_id']} · "
                f"seed {asset['seed']} · {size} · {credits(asset['cost'] or 0)}"
            )
        if self.references:
            text += " · shaped by " + ", ".join(f"📎 {r['id']}" for r in self.references)
        decisions = ", ".join(f"{g['decision']} by {g['user']}" for g in self.gates)
        return f"{text} · {decisions}" if decisions else text


class Reports(UseCases):
    """Read-only answers."""

    def lineage_tree(self, asset_id: str) -> list[LineageNode]:
        """The lineage of an asset as trees: from its first draft(s) to every later result.

        A grid's lineage is its drafts; anything else walks its first parents up to the root.
        Grids themselves are left out of the tree and named on their drafts instead. Images
        people sent (uploads) are not walked through: they are listed on the nodes they
        shaped, so a named reference used by many drafts does not join their lineages; an
        upload's own lineage is what it shaped.

        Raises:
            UserError: no such asset.
        """
        asset = self.store.get_asset(asset_id)
        if asset is None:
            raise UserError(f"no asset {asset_id}")
        if asset["kind"] == AssetKind.GRID:
            roots = self.store.parents(asset_id)
        else:
            root = asset
            while parents := self._made_from(root):
                root = parents[0]
            roots = [root]
        return [self._node(root) for root in roots]

    def _made_from(self, asset: dict[str, Any]) -> list[dict[str, Any]]:
        """``asset``'s parents that were made here (not images people sent or masks)."""
        if asset["kind"] in _SHAPING:
            return []
        return [p for p in self.store.parents(asset["id"]) if p["kind"] not in _SHAPING]

    def _node(self, asset: dict[str, Any]) -> LineageNode:
        children = self.store.children(asset["id"])
        shaping = asset["kind"] in _SHAPING
        # A result is a child of the asset it was made from, not of what only shaped it.
        made = [c for c in children if c["kind"] not in (AssetKind.GRID, *_SHAPING)]
        if not shaping:
            made = [c for c in made if [p["id"] for p in self._made_from(c)[:1]] == [asset["id"]]]
        return LineageNode(
            asset=asset,
            gates=self.store.gates(asset["id"]),
            grids=[c["id"] for c in children if c["kind"] == AssetKind.GRID],
            children=[self._node(c) for c in made],
            references=[]
            if shaping
            else [p for p in self.store.parents(asset["id"]) if p["kind"] in _SHAPING],
        )

    def lineage(self, asset_id: str) -> str:
        """The lineage tree as text, the asset asked about marked with ◀."""
        lines = [f"Lineage of {asset_id}:"]

        def walk(node: LineageNode, indent: str) -> None:
            mark = "  ◀" if node.asset["id"] == asset_id else ""
            lines.append(f"{indent}{node.describe()}{mark}")
            for child in node.children:
                walk(child, indent + "  ")

        for root in self.lineage_tree(asset_id):
            walk(root, "")
        return "\n".join(lines)

    def budget(self, origin: Origin) -> str:
        report = self.ledger.report(origin.team)
        headroom = self.ledger.headroom(origin.team, origin.channel)
        lines = [f"Budget for team {origin.team}, channel {origin.channel}: {headroom.describe()}"]
        for label, key in (("Today", "day"), ("This month", "month")):
            by_stage = report[key]
            total = sum(sum(v.values()) for v in by_stage.values())
            parts = [f"{stage} {credits(sum(v.values()))}" for stage, v in sorted(by_stage.items())]
            lines.append(f"{label}: {credits(total)}" + (f" ({', '.join(parts)})" if parts else ""))
        per_final = report["per_approved_final"]
        lines.append(
            f"Approved finals this month: {report['approved_finals']}"
            + (f", {credits(per_final)} each all told" if per_final is not None else "")
        )
        return "\n".join(lines)

    def models(self) -> str:
        lines = ["id · provider now (its model id) · stages · capabilities · price · status"]
        for model in sorted(self.catalog.models.values(), key=lambda m: (m.stages[0], m.id)):
            why = self.router.why_unavailable(model)
            now = self.router.serving_now(model) or Candidate(model, model.providers[0])
            others = [
                s.provider + (" (retired)" if s.retired else "")
                for s in model.providers
                if s is not now.serving
            ]
            lines.append(
                f"{model.id} · {now.provider} ({now.serving.model}) · "
                f"{'/'.join(s.value for s in model.stages)} · "
                f"{', '.join(sorted(c.value for c in model.capabilities))} · "
                f"{_price_list(now)} · "
                + (f"unavailable: {why}" if why else "available")
                + (f" · also on {', '.join(others)}" if others else "")
            )
        styles = ", ".join(sorted(self.catalog.styles))
        lines.append(f"Styles: {styles}")
        return "\n".join(lines)


def _price_list(candidate: Candidate) -> str:
    """What one call costs on ``candidate``: per image at each resolution it offers (the
    default marked), per megapixel, or per second of video and for the default clip."""
    model = candidate.model
    if model.unit == "second":
        seconds = DEFAULT_VIDEO_SECONDS
        if model.durations:
            seconds = min(model.durations, key=lambda d: abs(d - seconds))
        sound = {True: ", with sound", False: ", no sound"}.get(candidate.audio, "")
        return (
            f"{credits(candidate.cost(seconds=1))}/second, "
            f"{credits(candidate.cost(seconds=seconds))} for {seconds} s{sound}"
        )
    if model.unit == "megapixel":
        return f"{credits(candidate.unit_price())}/megapixel ({credits(candidate.cost())}/image)"
    if not candidate.resolutions:
        return f"{credits(candidate.cost())}/image"
    default = candidate.resolution_for(None)
    return ", ".join(
        f"{credits(candidate.cost(resolution=r))}/image at {r.upper()}"
        + (" (default)" if r == default else "")
        for r in candidate.resolutions
    )
