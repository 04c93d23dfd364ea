"""Escalating: taking an asset further (a draft to its final, an edit, an upscale, a video, a
re-render), one job on one input.

Every escalation is the same steps: route → authorise → record the gate → run → post. What
differs is how its source is found and checked and what the job is asked to do; that is one
``prepare`` function per kind in :data:`ESCALATIONS`, and :meth:`Escalating.escalate` drives
them all. A new kind is one function and one row.
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from bot import canvas, cpu
from bot.commands import Invocation
from bot.domain import (
    DEFAULT_VIDEO_SECONDS,
    MASK_STAGE,
    MAX_SEED,
    PICTURES,
    AssetKind,
    Capability,
    Decision,
    InboundFile,
    Origin,
    Reaction,
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
    reactions_for,
)
from bot.regions import Box, parse_region
from bot.runner import JobFailed

log = logging.getLogger(__name__)

#: Assets that are pictures of something (what a colour match can take its colours from).


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
    #: Draws a region edit's mask (mode L, the source's size; white may change), off the
    #: event loop; stored as a ``mask`` asset once the step is authorised. ``painted`` is the
    #: upload it was painted on.
    draw_mask: Callable[[], Image.Image] | None = None
    painted: str | None = None
    #: Cheaper than a full re-render: a soft pass (🪄) asks the model for little change.
    strength: float | None = None
    #: What the result keeps as its prompt when the model is told more (a video's motion
    #: preset words).
    subject: str | None = None


class Escalating(UseCases):
    """Finals, edits, upscales, videos and re-renders: :meth:`escalate` and its table."""

    async def escalate(
        self, origin: Origin, kind: str, *args: Any, refs: References | None = None
    ) -> AsyncIterator[Reply]:
        """Run the escalation ``kind`` (a row of :data:`ESCALATIONS`) on ``args``; ``refs``
        are images given with the command, added to those the step brings."""
        step = ESCALATIONS[kind](self, *args)
        mask = None
        if step.draw_mask is not None:
            try:
                mask = await asyncio.to_thread(_drawn, step.draw_mask)
            except ValueError as exc:  # a painted image that marks nothing, or cannot
                raise UserError(f"{exc}; nothing was spent") from None
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
            region=mask is not None,
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
        mask_id, mask_path = (None, None)
        if mask is not None:
            mask_id, mask_path = await self._store_mask(origin, step, mask)
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
            mask=mask_path,
            region=str(mask.box) if mask is not None else None,
            subject=step.subject,
            strength=step.strength,
            long_edge=step.long_edge,
            duration_s=step.seconds,
            resolution=step.resolution,
        )
        if mask_id is not None:  # a lineage parent of the result, written with it
            plan.inputs.append(mask_id)
        try:
            (job,), _ = await self._run_all([plan])
        except JobFailed:
            if step.gate is not None:  # a retry may take the same step again
                self.store.remove_gate(step.gate[0], step.gate[1])
            raise
        label = step.label or RESULT_LABELS[step.stage]
        notes, offers = await self._measure(origin, job.asset_ids[0], step.source, mask_id)
        yield await self._result(
            label, job, thread_of=step.thread_of, extra=step.extra, notes=notes, offers=offers
        )

    async def _store_mask(self, origin: Origin, step: Escalation, mask: _Mask) -> tuple[str, Path]:
        """Keep a region edit's mask as an asset (it shapes the result: the lineage shows it).
        Returns its id and its path in the asset store, relative: the job may run on another
        machine, whose runner finds the file there (``JobRunner._request_for``)."""
        data = mask.png
        digest, relative = await asyncio.to_thread(self.files.put, data, "image/png")
        parents = [step.source, *([step.painted] if step.painted else [])]
        mask_id = self.store.save_asset(
            {
                "kind": AssetKind.MASK.value,
                "stage": MASK_STAGE,
                "sha256": digest,
                "path": relative,
                "mime": "image/png",
                "width": mask.size[0],
                "height": mask.size[1],
                "bytes": len(data),
                "prompt": str(mask.box),
                "sent_by": f"{origin.surface}:{origin.user}",
                "cost": 0,
            },
            parents=parents,
        )
        return mask_id, Path(relative)

    async def _measure(
        self, origin: Origin, result_id: str, source_id: str, mask_id: str | None
    ) -> tuple[list[str], list[str]]:
        """What the result message says of the result besides itself: a region edit's seam,
        and how far it drifted from its source; and the reactions that fix what shows (🪄 a
        visible seam, 🎨 drifted colours)."""
        result = self.store.get_asset(result_id)
        source = self.store.get_asset(source_id)
        assert result is not None and source is not None
        rules = self.policy.rules_for(origin)
        notes: list[str] = []
        offers: list[str] = []
        if mask_id is not None:
            facts = result["facts"]
            seam = canvas.Seam(facts.get("seam_before", 0.0), facts.get("seam_after", 0.0))
            visible = seam.after > rules.seam_alert
            hint = "; react 🪄 for a soft pass that unifies it" if visible else ""
            notes.append(seam.line() + hint)
            if visible:
                offers.append(Reaction.UNIFY.value)
        made = (AssetKind.IMAGE, AssetKind.VIDEO)
        if source["kind"] in PICTURES and result["kind"] in made:
            try:
                before, after = await self.files.paths([source["path"], result["path"]])
                moved = await cpu.run(
                    canvas.drift_of, before, after, result["kind"] == AssetKind.VIDEO
                )
            except Exception:  # a measurement never loses the result it is about
                log.warning("drift check of %s failed", result_id, exc_info=True)
                return notes, offers
            self.store.add_facts(
                result_id, drift_palette=moved.palette, drift_layout=moved.structure
            )
            notes.append(moved.line(rules.drift_alert, f"{source['stage']} {source_id}"))
            if moved.palette > rules.drift_alert and result["kind"] == AssetKind.IMAGE:
                offers.append(Reaction.MATCH.value)
        return notes, offers

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
        self,
        origin: Origin,
        asset_id: str,
        inv: Invocation,
        files: Sequence[InboundFile] = (),
    ) -> AsyncIterator[Reply]:
        """``/tierbot edit``: image-to-image on an asset with an instruction prompt; with
        ``--region`` or ``--mask`` (the first attached image marks the region) only that
        region changes. Other attached images are references."""
        painted: str | None = None
        if inv.mask:
            if inv.region:
                raise UserError("give --region or --mask, not both; nothing was spent")
            attached = [f for f in files if not f.source and f.asset_id]
            if not attached:
                raise UserError(
                    "--mask needs the mask image attached: white (or paint) where the image "
                    "may change; nothing was spent"
                )
            painted = attached[0].asset_id
            files = [f for f in files if f is not attached[0]]
        refs = self.references(origin, inv, files)
        return self.escalate(origin, "edit", asset_id, inv, painted, refs=refs)

    def unify(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """🪄 on a region edit whose seam shows: a soft, low-strength pass over the whole
        image that evens out light, colour and grain (spends, like an edit)."""
        return self.escalate(origin, "unify", asset_id)

    async def match_colours(self, origin: Origin, asset_id: str) -> AsyncIterator[Reply]:
        """🎨 on a result whose colours drifted from its source: the result with its colours
        moved onto the source's, done here (free), as a new child of both."""
        result = self._image(asset_id)
        parents = [p for p in self.store.parents(asset_id) if p["kind"] in PICTURES]
        if not parents:
            raise UserError(f"{asset_id} has no source image to match")
        source = parents[0]
        result_path, source_path = await self.files.paths([result["path"], source["path"]])
        data = await asyncio.to_thread(result_path.read_bytes)
        matched = await cpu.run(canvas.match_colours, data, source_path)
        digest, relative = await asyncio.to_thread(self.files.put, matched, "image/png")
        matched_id = self.store.save_asset(
            {
                "request_id": result["request_id"],
                "kind": AssetKind.IMAGE.value,
                "stage": Stage.EDIT.value,
                "sha256": digest,
                "path": relative,
                "mime": "image/png",
                "width": result["width"],
                "height": result["height"],
                "bytes": len(matched),
                "prompt": f"{result['prompt'] or ''} (colours matched to {source['id']})".strip(),
                "model_id": "colour-match",
                "seed": result["seed"],
                "cost": 0,
            },
            parents=[asset_id, source["id"]],
        )
        moved = await cpu.run(canvas.drift_of, source_path, self.files.path(relative))
        yield Reply(
            text=f"🎨 Colours of {asset_id} matched to {source['stage']} {source['id']}: "
            f"{matched_id} · local colour transfer · free\n"
            + moved.line(
                self.policy.rules_for(origin).drift_alert, f"{source['stage']} {source['id']}"
            ),
            files=[self.files.path(relative)],
            reactions=reactions_for(Stage.EDIT),
            asset_id=matched_id,
            thread_of=asset_id,
        )

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
        inv: Invocation | None = None,
    ) -> AsyncIterator[Reply]:
        """🎬 and ``/tierbot video <asset-id> [motion text] [--motion subtle|dynamic]``:
        image-to-video with the image as the first frame, moving as the words say."""
        return self.escalate(origin, "video", asset_id, seconds, model, inv, refs=refs)

    def revideo(self, origin: Origin, video_id: str) -> AsyncIterator[Reply]:
        """🔁 on a video: the same clip rendered again with a new seed (spends)."""
        return self.escalate(origin, "revideo", video_id)

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


@dataclass(frozen=True)
class _Mask:
    """A drawn mask as it is stored and described: its PNG, size and the box around it."""

    png: bytes
    size: tuple[int, int]
    box: Box


def _drawn(draw: Callable[[], Image.Image]) -> _Mask:
    """Draw a mask and encode it (in a worker thread: decoding and encoding a full-size
    image would hold the event loop)."""
    mask = draw()
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    return _Mask(buffer.getvalue(), mask.size, canvas.mask_box(mask))


def _edit(uc: Escalating, asset_id: str, inv: Invocation, painted: str | None = None) -> Escalation:
    source = uc._image(asset_id)
    prompt = inv.prompt or ""
    draw_mask: Callable[[], Image.Image] | None = None
    if inv.region or painted:
        size = (source["width"], source["height"])
        if painted is not None:
            upload = uc.store.get_asset(painted)
            assert upload is not None

            def draw_mask() -> Image.Image:  # may fetch the upload from the bucket first
                with Image.open(uc.files.path(upload["path"])) as image:
                    return canvas.painted_mask(image, size)

        else:
            box = parse_region(inv.region or "")  # checked now: bad input costs nothing
            draw_mask = functools.partial(canvas.box_mask, size, box)
    return _on_image(
        source,
        Stage.EDIT,
        Capability.IMAGE_TO_IMAGE,
        draw_mask=draw_mask,
        painted=painted,
        prompt=prompt,
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
    uc: Escalating,
    asset_id: str,
    seconds: int | None = None,
    model: str | None = None,
    inv: Invocation | None = None,
) -> Escalation:
    seconds = seconds or DEFAULT_VIDEO_SECONDS
    source = uc._image(asset_id)
    words = (inv.prompt if inv else None) or source["prompt"] or ""
    motion = (inv.motion if inv else None) or "subtle"
    return _on_image(
        source,
        Stage.VIDEO,
        Capability.IMAGE_TO_VIDEO,
        prompt=uc.motion_prompt(words, motion),
        subject=words,
        action=f"making a {seconds}-second video of {asset_id}",
        status=f"Animating {asset_id} ({seconds} s, {motion} motion)",
        extra=f"of {asset_id}",
        model=model,
        seconds=seconds,
    )


def _revideo(uc: Escalating, video_id: str) -> Escalation:
    video = uc._existing(video_id)
    parents = [p for p in uc.store.parents(video_id) if p["kind"] == AssetKind.IMAGE]
    if video["kind"] != AssetKind.VIDEO or video["stage"] != Stage.VIDEO or not parents:
        raise UserError(f"{video_id} is not a video made from an image; 🔁 re-renders videos")
    source = parents[0]
    job = uc.store.get_job(video["job_id"]) if video["job_id"] else None
    prompt = job["params"]["prompt"] if job else uc.motion_prompt(video["prompt"] or "", None)
    seconds = job["params"].get("duration_s") if job else None
    return _on_image(
        source,
        Stage.VIDEO,
        Capability.IMAGE_TO_VIDEO,
        prompt=prompt,
        subject=video["prompt"],
        seed=((video["seed"] or 0) + 1) % MAX_SEED,
        thread_of=video_id,
        action=f"re-rendering video {video_id}",
        status=f"Re-rendering video {video_id} with a new seed",
        extra=f"replaces {video_id}",
        label="🎬 Re-rendered video",
        seconds=seconds or round(video["duration_s"] or DEFAULT_VIDEO_SECONDS),
        qa=(video_id, Decision.REJECTED),
    )


#: What a soft pass asks: the seeds' unifying step after a patch, at low strength.
UNIFY_PROMPT = (
    "Unify this image: even out lighting, colour temperature and film grain across the whole "
    "picture so no patch or seam shows; change nothing else."
)
UNIFY_STRENGTH = 0.2


def _unify(uc: Escalating, asset_id: str) -> Escalation:
    source = uc._image(asset_id)
    return _on_image(
        source,
        Stage.EDIT,
        Capability.IMAGE_TO_IMAGE,
        prompt=UNIFY_PROMPT,
        action=f"unifying {asset_id}",
        status=f"Unifying {asset_id} (a soft pass)",
        extra=f"of {asset_id}, a soft pass over the whole image",
        label="🪄 Unified",
        strength=UNIFY_STRENGTH,
    )


#: Every escalation, by kind: how it prepares its one job (see :class:`Escalation`).
ESCALATIONS: dict[str, Callable[..., Escalation]] = {
    "final": _final,
    "rerender": _rerender,
    "edit": _edit,
    "unify": _unify,
    "upscale": _upscale,
    "video": _video,
    "revideo": _revideo,
}
