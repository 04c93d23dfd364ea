"""Drafting: ``/draft``, storyboards, scheduled batches, reroll and discard.

Every draft request becomes one numbered grid: its images are split into the calls the model
allows, reserved together (a batch that does not fit the budget is refused whole), run
concurrently, composed, and posted as one reply.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from bot.commands import Invocation
from bot.domain import (
    CANCEL_HINT,
    DEFAULT_AR,
    DEFAULT_N,
    MAX_SEED,
    PICTURES,
    AssetKind,
    Capability,
    Decision,
    Origin,
    Reaction,
    Reply,
    Stage,
)
from bot.errors import UserError
from bot.ledger import credits
from bot.pipeline.base import Draftspec, References, UseCases, _ratio_of
from bot.router import Route, RouteContext, RouteRefused
from bot.runner import CompletedJob, JobFailed

log = logging.getLogger(__name__)


class Drafting(UseCases):
    """Draft grids: made, rerolled, discarded."""

    async def draft(
        self, origin: Origin, inv: Invocation, refs: References | None = None
    ) -> AsyncIterator[Reply]:
        """``/draft``: n drafts on the draft tier, posted as one numbered grid; with
        reference images, on a draft model that takes them."""
        async for reply in self._new_grid(origin, "draft", self._draft_spec(inv, refs)):
            yield reply

    async def storyboard(
        self, origin: Origin, inv: Invocation, refs: References | None = None
    ) -> AsyncIterator[Reply]:
        """``/tierbot storyboard a | b | c``: one draft per beat, in order, as one grid; the
        same references (a character, a style) shape every beat."""
        async for reply in self._new_grid(origin, "storyboard", self._draft_spec(inv, refs)):
            yield reply

    async def vary(
        self,
        origin: Origin,
        target: str,
        index: int | None = None,
        inv: Invocation | None = None,
    ) -> AsyncIterator[Reply]:
        """``/tierbot vary <grid-id> <k>`` or ``vary <asset-id>`` (and 🔀 on a final): a new
        grid of variations of that image on the draft tier, the image as the reference and
        new seeds; subtle unless ``--strong``; ``--prompt`` remixes it with new text."""
        asset = self._existing(target)
        if asset["kind"] == AssetKind.GRID:
            if index is None:
                raise UserError(f"{target} is a grid; say which draft: /tierbot vary {target} 2")
            drafts = self.store.parents(target)
            if not 1 <= index <= len(drafts):
                raise UserError(f"grid {target} has drafts 1 to {len(drafts)}; got {index}")
            source = drafts[index - 1]
        elif asset["kind"] in PICTURES:
            if index is not None:
                raise UserError(f"{target} is one image; vary it without a draft number")
            source = asset
        else:
            raise UserError(f"{target} is a {asset['kind']}; variations are made of images")
        strong = bool(inv and inv.strong)
        remix = inv.remix if inv else None
        subject = source["prompt"] if source["kind"] != AssetKind.UPLOAD else ""
        if remix:
            instruction = f"Remix of attached image 1: {remix}. Keep what this does not change."
            what = f"remix “{remix}”"
        elif strong:
            instruction = (
                "A loose variation of attached image 1: the same subject and idea, a new "
                f"composition, pose and framing. {subject}"
            ).strip()
            what = "strong variations"
        else:
            instruction = (
                "A subtle variation of attached image 1: keep its subject, composition and "
                f"colours; change only small details. {subject}"
            ).strip()
            what = "subtle variations"
        spec = Draftspec(
            prompt=remix or subject or f"variations of {source['id']}",
            instruction=instruction,
            ar=_ratio_of(source) or DEFAULT_AR,
            n=(inv.n if inv and inv.n else DEFAULT_N),
            seed=self._seeds(),
            model=inv.model if inv else None,
            style=None,
            negative=None,
            hero=False,
            refs=[source["id"]],
        )
        async for reply in self._new_grid(
            origin,
            "vary",
            spec,
            f"🔀 {what.capitalize()} of {source['id']}",
            thread_of=target,
            action=f"making {what} of {source['id']}",
        ):
            yield reply

    async def batch(self, origin: Origin, inv: Invocation, label: str) -> AsyncIterator[Reply]:
        """A scheduled batch: a draft grid like ``/draft``, posted in the channel under
        ``label``; when the budget cannot pay for the whole batch, a notice instead."""
        spec = self._draft_spec(inv)
        try:
            async for reply in self._new_grid(origin, "schedule", spec, label):
                yield reply
        except RouteRefused as refused:  # raised by the routing, before any reply
            yield Reply(
                text=f"{label}\n⚠️ Not posted: {self._budget_notice(origin, spec, refused)}",
                error=True,
            )

    def _draft_spec(self, inv: Invocation, refs: References | None = None) -> Draftspec:
        """A draft request's options resolved: defaults applied, a seed drawn if none given;
        a storyboard's beats become its prompt (joined by " | ") and its number of drafts."""
        self.check_style(inv.style)
        beats = list(inv.beats) or None
        refs = refs or References()
        return Draftspec(
            refs=refs.content,
            srefs=refs.style,
            prompt=" | ".join(beats) if beats else inv.prompt or "",
            ar=inv.ar or DEFAULT_AR,
            n=len(beats) if beats else inv.n or DEFAULT_N,
            seed=inv.seed if inv.seed is not None else self._seeds(),
            model=inv.model,
            style=inv.style,
            negative=inv.negative,
            hero=inv.hero,
            beats=beats,
        )

    async def _new_grid(
        self,
        origin: Origin,
        command: str,
        spec: Draftspec,
        label: str = "",
        *,
        thread_of: str | None = None,
        action: str | None = None,
    ) -> AsyncIterator[Reply]:
        """Route ``spec`` on the draft tier, authorise it (when ``action`` names what is
        done: only approvers may spend on work that builds on an asset), record the request
        and post its grid."""
        route = self._draft_route(origin, spec)
        if action is not None:
            self._authorize(origin, route, action)
        request_id = self.store.create_request(
            origin=origin.model_dump(), command=command, prompt=spec.prompt, options=spec.as_dict()
        )
        async for reply in self._draft_grid(origin, request_id, spec, route, thread_of, label):
            yield reply

    def _draft_route(self, origin: Origin, spec: Draftspec, rejected_grids: int = 0) -> Route:
        return self._route(
            origin,
            Stage.DRAFT,
            spec.prompt,
            model=spec.model,
            images=spec.n,
            aspect_ratio=spec.ar,
            references=spec.references,
            rejected_grids=rejected_grids,
        )

    def _budget_notice(self, origin: Origin, spec: Draftspec, refused: RouteRefused) -> str:
        headroom = self.ledger.headroom(origin.team, origin.channel)
        if headroom.left is None:
            return refused.message
        try:
            unbudgeted = self.router.route(
                RouteContext(
                    stage=Stage.DRAFT, prompt=spec.prompt, images=spec.n, aspect_ratio=spec.ar
                )
            )
        except RouteRefused:
            return refused.message
        approvers = self.policy.rules_for(origin).approvers
        who = (
            f"an approver ({', '.join(approvers)}) can raise it"
            if approvers
            else "whoever keeps the policy file (TIERBOT_POLICY) can raise it"
        )
        return (
            f"the batch of {spec.n} drafts costs {credits(unbudgeted.price)} and only "
            f"{headroom.describe()}; {who}."
        )

    async def reroll(self, origin: Origin, grid_id: str) -> AsyncIterator[Reply]:
        """🔁 on a grid: reject it and draft again with new seeds (up a tier after K rejections)."""
        grid = self._asset(grid_id, AssetKind.GRID, "a draft grid")
        request = self.store.get_request(grid["request_id"])
        assert request is not None
        old = Draftspec(**request["options"])
        spec = Draftspec(**{**old.as_dict(), "seed": (old.seed + old.n * 7919) % MAX_SEED})
        rejected = self.store.count_rejected_grids(request["id"])
        if not any(g["decision"] == Decision.REJECTED for g in self.store.gates(grid_id)):
            rejected += 1
        route = self._draft_route(origin, spec, rejected)
        self._authorize(origin, route, "rerolling the drafts")
        if not self.store.record_gate(
            grid_id, Decision.REJECTED, user=origin.user, surface=origin.surface
        ):
            raise UserError(f"grid {grid_id} was already rerolled or discarded")
        self.store.update_request_options(request["id"], spec.as_dict())
        try:
            async for reply in self._draft_grid(
                origin, request["id"], spec, route, thread_of=grid_id
            ):
                yield reply
        except JobFailed:
            self.store.remove_gate(grid_id, Decision.REJECTED)  # the grid may be rerolled again
            raise

    async def discard(self, origin: Origin, grid_id: str) -> AsyncIterator[Reply]:
        """❌ on a grid: record the rejection; nothing more is spent on it."""
        self._asset(grid_id, AssetKind.GRID, "a draft grid")
        self._authorize_decision(origin, "discarding a grid")
        if not self.store.record_gate(
            grid_id, Decision.REJECTED, user=origin.user, surface=origin.surface
        ):
            raise UserError(f"grid {grid_id} was already rerolled or discarded")
        yield Reply(text=f"🗑️ Grid {grid_id} discarded by {origin.user}.", thread_of=grid_id)

    async def _draft_grid(
        self,
        origin: Origin,
        request_id: str,
        spec: Draftspec,
        route: Route,
        thread_of: str | None,
        label: str = "",
    ) -> AsyncIterator[Reply]:
        price = route.price
        heading = f"{label}\n" if label else ""
        yield Reply(
            text=f"{heading}⏳ Drafting {spec.n} × “{spec.prompt}” ({spec.ar}, seed {spec.seed}) · "
            f"{route.reason} · {credits(price)} reserved{CANCEL_HINT}",
            thread_of=thread_of,
            status=True,
            request_id=request_id,
            reactions=[Reaction.DISCARD.value],
        )
        jobs, job_ids = await self._run_chunks(origin, request_id, spec, route)
        yield await self._grid_reply(
            request_id, spec, jobs, heading=heading, thread_of=thread_of, job_ids=job_ids
        )

    async def _run_chunks(
        self, origin: Origin, request_id: str, spec: Draftspec, route: Route
    ) -> tuple[list[CompletedJob], list[str]]:
        """Split n images into calls the model allows (max_images per call) and run them."""
        per_call = route.primary.model.max_images
        chunks: list[tuple[str, int, int]] = []  # (prompt, images, seed)
        if spec.beats:
            chunks = [(beat, 1, spec.seed) for beat in spec.beats]
        else:
            seed = spec.seed
            for start in range(0, spec.n, per_call):
                size = min(per_call, spec.n - start)
                chunks.append((spec.prompt, size, seed))
                seed += size
        refs = spec.references
        plans = [
            self._plan(
                origin,
                request_id,
                route,
                Stage.DRAFT,
                Capability.IMAGE_TO_IMAGE if refs else Capability.TEXT_TO_IMAGE,
                prompt=spec.instruction or prompt,
                subject=prompt if spec.instruction else None,
                negative=spec.negative,
                n=size,
                seed=chunk_seed,
                aspect_ratio=spec.ar,
                inputs=[],
                refs=refs,
            )
            for prompt, size, chunk_seed in chunks
        ]
        return await self._run_all(plans)
