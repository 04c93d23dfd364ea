"""Escalating: taking an asset further (a draft to its final, an edit, an upscale, a video, a
re-render), one job on one input.

Every escalation is the same steps: route → authorise → record the gate → run → post. What
differs is how its source is found and checked and what the job is asked to do; that is one
``prepare`` function per kind in :data:`ESCALATIONS`, and :meth:`Escalating.escalate` drives
them all. A new kind is one function and one row.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from bot.commands import Invocation
from bot.domain import (
    DEFAULT_VIDEO_SECONDS,
    MAX_SEED,
    AssetKind,
    Capability,
    Decision,
    Origin,
    Reply,
    Stage,
)
from bot.errors import UserError
from bot.pipeline.base import (
    RESULT_LABELS,
    UPSCALE_LONG_EDGE,
    Draftspec,
    References,
    UseCases,
    _ratio_of,
)
from bot.runner import JobFailed

log = logging.getLogger(__name__)


@dataclass
class Escalation:
    """One job on one input, ready to route: what to make, from what, and how it is shown."""

    stage: Stage
    capability: Capability
    request_id: str
    source: str  # the input asset (lineage parent and reference image)
    prompt: str
    seed: int
    thread_of: str  # the asset whose thread the status line and result go in
    action: str  # for the approvers' refusal: "taking draft 2 to the final tier"
    status: str  # the status line: "Rendering the final of draft 2"
    extra: str  # after the result's id: "from draft 2 of grid …"
    label: str = ""  # defaults to the stage's result label
    model: str | None = None
    hero: bool = False
    negative: str | None = None
    aspect_ratio: str | None = None
    long_edge: int | None = None
    #: ``--res``: every candidate must offer it; None takes each model's default.
    resolution: str | None = None
    seconds: int | None = None
    #: A decision recorded once before the job runs and withdrawn if it fails (a draft may be
    #: selected again), with the refusal when it is already there.
    gate: tuple[str, Decision, str] | None = None
    #: A QA decision the escalation implies (a re-render rejects what it replaces).
    qa: tuple[str, Decision] | None = None
    #: Images besides the source that shape the result (``--ref``/``--sref``, or those the
    #: draft was made with: a final keeps the product its draft kept).
    refs: References = field(default_factory=References)


class Escalating(UseCases):
    """Finals, edits, upscales, videos and re-renders: :meth:`escalate` and its table."""

    async def escalate(
        self, origin: Origin, kind: str, *args: Any, refs: References | None = None
    ) -> AsyncIterator[Reply]:
        """Run the escalation ``kind`` (a row of :data:`ESCALATIONS`) on ``args``; ``refs``
        are images given with the command, added to those the step brings."""
        step = ESCALATIONS[kind](self, *args)
        if refs:
            step.refs = References(
                list(dict.fromkeys([*step.refs.content, *refs.content])),
                list(dict.fromkeys([*step.refs.style, *refs.style])),
            )
        route = self._route(
            origin,
            step.stage,
            step.prompt,
            model=step.model,
            hero=step.hero,
            seconds=step.seconds,
            aspect_ratio=None,
            resolution=step.resolution,
            references=step.refs,
        )
        self._authorize(origin, route, step.action)
        if step.gate is not None:
            asset_id, decision, refusal = step.gate
            if not self.store.record_gate(
                asset_id, decision, user=origin.user, surface=origin.surface
            ):
                raise UserError(refusal)
        if step.qa is not None:
            self.store.record_qa(step.qa[0], step.qa[1], user=origin.user, surface=origin.surface)
        yield self._status(step.status, route, thread_of=step.thread_of, request_id=step.request_id)
        plan = self._plan(
            origin,
            step.request_id,
            route,
            route.stage,
            step.capability,
            prompt=step.prompt,
            negative=step.negative,
            n=1,
            seed=step.seed,
            aspect_ratio=step.aspect_ratio,
            inputs=[step.source],
            refs=step.refs,
            own_images=1,
            long_edge=step.long_edge,
            duration_s=step.seconds,
            resolution=step.resolution,
        )
        try:
            (job,), _ = await self._run_all([plan])
        except JobFailed:
            if step.gate is not None:  # a retry may take the same step again
                self.store.remove_gate(step.gate[0], step.gate[1])
            raise
        label = step.label or RESULT_LABELS[step.stage]
        yield self._result(label, job, thread_of=step.thread_of, extra=step.extra)

    # The named use cases, as the command registry and the reaction table call them.

    def select(
        self,
        origin: Origin,
        grid_id: str,
        index: int,
        inv: Invocation | None = None,
        refs: References | None = None,
    ) -> AsyncIterator[Reply]:
        """1️⃣..9️⃣ on a grid: draft ``index`` to the final tier (its seed kept, the draft as
        the reference, the prompt enriched by the style preset's technical words)."""
        return self.escalate(origin, "final", grid_id, index, inv, refs=refs)

    def rerender(self, origin: Origin, final_id: str) -> AsyncIterator[Reply]:
        """🔁 on a final: reject it and render again from the same reference, a new seed."""
        return self.escalate(origin, "rerender", final_id)

    def edit(
        self, origin: Origin, asset_id: str, inv: Invocation, refs: References | None = None
    ) -> AsyncIterator[Reply]:
        """``/tierbot edit``: image-to-image on an asset with an instruction prompt."""
        return self.escalate(origin, "edit", asset_id, inv, refs=refs)

    def upscale(
        self, origin: Origin, asset_id: str, model: str | None = None
    ) -> AsyncIterator[Reply]:
        """⬆️: a 2K upscale of an image."""
        return self.escalate(origin, "upscale", asset_id, model)

    def video(
        self,
        origin: Origin,
        asset_id: str,
        seconds: int | None = None,
        model: str | None = None,
        refs: References | None = None,
    ) -> AsyncIterator[Reply]:
        """🎬: image-to-video with the image as the first frame."""
        return self.escalate(origin, "video", asset_id, seconds, model, refs=refs)

    def _refuse_rejected_grid(self, grid_id: str) -> None:
        """A rerolled or discarded grid is closed: nothing more is spent on it."""
        rejected = [g for g in self.store.gates(grid_id) if g["decision"] == Decision.REJECTED]
        if rejected:
            raise UserError(
                f"grid {grid_id} was rerolled or discarded by {rejected[0]['user']}, so its "
                "drafts can no longer be taken further; nothing was spent. Pick from the "
                "newest grid, or /draft again."
            )

    def _spec_of(self, request_id: str) -> Draftspec:
        request = self.store.get_request(request_id)
        assert request is not None
        return Draftspec(**request["options"])


# -- the table: how each kind finds and checks its source and what it asks for --------------


def _final(uc: Escalating, grid_id: str, index: int, inv: Invocation | None = None) -> Escalation:
    grid = uc._asset(grid_id, AssetKind.GRID, "a draft grid")
    uc._refuse_rejected_grid(grid_id)
    drafts = uc.store.parents(grid_id)
    if not 1 <= index <= len(drafts):
        raise UserError(f"grid {grid_id} has drafts 1 to {len(drafts)}; got {index}")
    draft = drafts[index - 1]
    spec = uc._spec_of(grid["request_id"])
    style = (inv.style if inv else None) or spec.style
    uc.check_style(style)
    finals = [c["id"] for c in uc.store.children(draft["id"]) if c["stage"] == Stage.FINAL]
    where = f": final {finals[-1]}" if finals else " (the final is on its way)"
    return Escalation(
        refs=spec.references,
        stage=Stage.FINAL,
        capability=Capability.IMAGE_TO_IMAGE,
        request_id=grid["request_id"],
        source=draft["id"],
        prompt=uc._enrich(draft["prompt"], style),
        seed=draft["seed"],
        thread_of=grid_id,
        action=f"taking draft {index} to the final tier",
        status=f"Rendering the final of draft {index}",
        extra=f"from draft {index} of grid {grid_id}, seed {draft['seed']}",
        model=inv.model if inv else None,
        hero=spec.hero or bool(inv and inv.hero),
        resolution=inv.resolution if inv else None,
        negative=spec.negative,
        aspect_ratio=spec.ar,
        gate=(
            draft["id"],
            Decision.SELECTED,
            f"draft {index} of grid {grid_id} was already escalated{where}",
        ),
    )


def _rerender(uc: Escalating, final_id: str) -> Escalation:
    final = uc._image(final_id)
    parents = uc.store.parents(final_id)
    if final["stage"] not in (Stage.FINAL, Stage.EDIT) or not parents:
        raise UserError(f"{final_id} is not a final; 🔁 re-renders finals")
    spec = uc._spec_of(final["request_id"])
    return Escalation(
        refs=spec.references,
        stage=Stage(final["stage"]),
        capability=Capability.IMAGE_TO_IMAGE,
        request_id=final["request_id"],
        source=parents[0]["id"],
        prompt=final["prompt"],
        seed=(final["seed"] + 1) % MAX_SEED,
        thread_of=final_id,
        action="re-rendering the final",
        status=f"Re-rendering {final_id}",
        extra=f"replaces {final_id}",
        label="✨ Re-rendered final",
        hero=spec.hero,
        negative=spec.negative,
        aspect_ratio=spec.ar,
        qa=(final_id, Decision.REJECTED),
    )


def _on_image(
    source: dict[str, Any], stage: Stage, capability: Capability, **fields: Any
) -> Escalation:
    """An escalation of the image ``source`` itself: its request, prompt, seed and shape,
    posted in its thread (``fields`` override or add to these)."""
    return Escalation(
        **{
            "stage": stage,
            "capability": capability,
            "request_id": source["request_id"],
            "source": source["id"],
            "prompt": source["prompt"] or "",
            "seed": source["seed"] or 0,
            "thread_of": source["id"],
            "aspect_ratio": _ratio_of(source),
            **fields,
        }
    )


def _edit(uc: Escalating, asset_id: str, inv: Invocation) -> Escalation:
    source = uc._image(asset_id)
    return _on_image(
        source,
        Stage.EDIT,
        Capability.IMAGE_TO_IMAGE,
        prompt=inv.prompt or "",
        seed=inv.seed if inv.seed is not None else source["seed"] or 0,
        action=f"editing {asset_id}",
        status=f"Editing {asset_id}",
        extra=f"of {asset_id}",
        model=inv.model,
        resolution=inv.resolution,
    )


def _upscale(uc: Escalating, asset_id: str, model: str | None = None) -> Escalation:
    source = uc._image(asset_id)
    if source["stage"] == Stage.UPSCALE:
        raise UserError(f"{asset_id} is already an upscale; nothing was spent")
    return _on_image(
        source,
        Stage.UPSCALE,
        Capability.UPSCALE,
        action=f"upscaling {asset_id}",
        status=f"Upscaling {asset_id}",
        extra=f"of {asset_id} to {UPSCALE_LONG_EDGE} px",
        model=model,
        long_edge=UPSCALE_LONG_EDGE,
    )


def _video(
    uc: Escalating, asset_id: str, seconds: int | None = None, model: str | None = None
) -> Escalation:
    seconds = seconds or DEFAULT_VIDEO_SECONDS
    return _on_image(
        uc._image(asset_id),
        Stage.VIDEO,
        Capability.IMAGE_TO_VIDEO,
        action=f"making a {seconds}-second video of {asset_id}",
        status=f"Animating {asset_id} ({seconds} s)",
        extra=f"of {asset_id}",
        model=model,
        seconds=seconds,
    )


#: Every escalation, by kind: how it prepares its one job (see :class:`Escalation`).
ESCALATIONS: dict[str, Callable[..., Escalation]] = {
    "final": _final,
    "rerender": _rerender,
    "edit": _edit,
    "upscale": _upscale,
    "video": _video,
}
