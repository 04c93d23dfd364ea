"""The use cases of the stage-gate pipeline: draft, select, reroll, discard, edit, upscale,
video, approve, reject, and the read-only lineage, budget and models.

Each spending use case follows the same steps: validate → route (price known) → authorise
(approvers, threshold) → record the gate → run the job(s) → record assets and lineage →
return what a surface must post. Use cases are async generators of :class:`Reply`: first a
status line, then the result, so a surface can show progress and a CLI can print as it goes.

A :class:`UserError` (or a router refusal) is raised before anything is spent; the dispatcher
shows it privately to the person. A failed job is reported in the channel and costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot import cpu, failpoints
from bot.catalog import Catalog
from bot.commands import ASPECT_RATIOS, Invocation
from bot.domain import (
    CANCEL_HINT,
    FINAL_REACTIONS,
    NUMBER_REACTIONS,
    AssetKind,
    Capability,
    Decision,
    Origin,
    Reaction,
    Reply,
    Stage,
)
from bot.failpoints import failpoint
from bot.grid import compose_grid
from bot.ledger import Ledger, credits
from bot.policy import Policy
from bot.providers import GenerationRequest
from bot.router import Route, RouteContext, Router, RouteRefused
from bot.runner import CompletedJob, JobFailed, JobPlan, JobRunner
from storage import AssetFiles, Store

log = logging.getLogger(__name__)

DEFAULT_N = 4
DEFAULT_AR = "1:1"
DEFAULT_VIDEO_SECONDS = 4
UPSCALE_LONG_EDGE = 2048
MAX_SEED = 2**32 - 1
#: How a result of each stage after the draft is introduced in the chat.
RESULT_LABELS = {
    Stage.FINAL: "✨ Final",
    Stage.EDIT: "✏️ Edit",
    Stage.UPSCALE: "⬆️ Upscale",
    Stage.VIDEO: "🎬 Video",
}
#: Reactions pre-added to a video: sign it off or discard it (nothing escalates further).
VIDEO_REACTIONS = [Reaction.APPROVE.value, Reaction.DISCARD.value]
#: Reactions pre-added to an upscale: it is not upscaled again.
UPSCALE_REACTIONS = [r.value for r in FINAL_REACTIONS if r != Reaction.UPSCALE]


def reactions_for(stage: Stage) -> list[str]:
    """The reaction vocabulary a result of ``stage`` is offered with."""
    if stage == Stage.VIDEO:
        return VIDEO_REACTIONS
    if stage == Stage.UPSCALE:
        return UPSCALE_REACTIONS
    return [r.value for r in FINAL_REACTIONS]


def nearest_ratio(width: int, height: int) -> str:
    """The supported aspect ratio closest to ``width``×``height`` (for edits and videos)."""

    def distance(ratio: str) -> float:
        w, h = (int(x) for x in ratio.split(":"))
        return abs(math.log((width / height) / (w / h)))

    return min(ASPECT_RATIOS, key=distance)


def _ratio_of(asset: dict[str, Any]) -> str | None:
    """The supported aspect ratio nearest to an image asset's, None if its size is unknown."""
    if asset["width"] and asset["height"]:
        return nearest_ratio(asset["width"], asset["height"])
    return None


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


async def durable(
    store: Store, origin: Origin, replies: AsyncIterator[Reply]
) -> AsyncIterator[Reply]:
    """``replies`` with every public result handed over for posting before a surface sees
    it: written to the outbox (claimed by this process) and its jobs marked delivered in one
    transaction. A crash after that is finished by whichever process flushes the outbox,
    from the step where the post stopped; a crash before it leaves the jobs undelivered, and
    recovery makes the reply again. Status lines and private replies are not kept."""
    async for reply in replies:
        if not (reply.private or reply.status or reply.delivery_id):
            stage = _stage_of(store, reply)
            failpoint("result.made", stage)
            entry = store.hand_over(
                origin.surface,
                origin.model_dump(mode="json"),
                reply.model_dump(mode="json"),
                reply.job_ids,
            )
            failpoint("result.handed_over", stage)
            reply = reply.model_copy(update={"delivery_id": entry})
        yield reply


def _stage_of(store: Store, reply: Reply) -> str | None:
    """The stage of the asset a reply presents (only asked while a failpoint is armed)."""
    if not (failpoints.armed() and reply.asset_id):
        return None
    asset = store.get_asset(reply.asset_id)
    return asset["stage"] if asset else None


@dataclass(frozen=True)
class Draftspec:
    """The options of a draft request, resolved (defaults applied, seed fixed)."""

    prompt: str
    ar: str
    n: int
    seed: int
    model: str | None
    style: str | None
    negative: str | None
    hero: bool
    #: A storyboard's beats: one draft per beat, all on the same seed for a consistent look.
    beats: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class LineageNode:
    """One asset in a lineage tree, with its gate decisions and later results."""

    asset: dict[str, Any]
    gates: list[dict[str, Any]]
    grids: list[str]
    children: list[LineageNode]

    def describe(self) -> str:
        asset = self.asset
        size = f"{asset['width']}×{asset['height']}"
        if asset["duration_s"]:
            size += f", {asset['duration_s']:.0f} s"
        where = f" in grid {self.grids[0]}" if self.grids else ""
        text = (
            f"{asset['id']} {asset['stage']}{where} · {asset['model_id']} · seed {asset['seed']} · "
            f"{size} · {credits(asset['cost'] or 0)}"
        )
        decisions = ", ".join(f"{g['decision']} by {g['user']}" for g in self.gates)
        return f"{text} · {decisions}" if decisions else text


class Pipeline:
    """The use cases, over the router, the runner, the ledger and the store."""

    def __init__(
        self,
        *,
        store: Store,
        files: AssetFiles,
        catalog: Catalog,
        policy: Policy,
        router: Router,
        ledger: Ledger,
        runner: JobRunner,
        seeds: Callable[[], int] | None = None,
        public_url: str | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.catalog = catalog
        self.policy = policy
        self.router = router
        self.ledger = ledger
        self.runner = runner
        self.public_url = public_url
        self._seeds = seeds or (lambda: random.SystemRandom().randrange(MAX_SEED))

    # -- drafts ------------------------------------------------------------------------------

    async def draft(self, origin: Origin, inv: Invocation) -> AsyncIterator[Reply]:
        """``/draft``: n drafts on the draft tier, posted as one numbered grid."""
        async for reply in self._new_grid(origin, "draft", self._draft_spec(inv)):
            yield reply

    async def storyboard(self, origin: Origin, inv: Invocation) -> AsyncIterator[Reply]:
        """``/tierbot storyboard a | b | c``: one draft per beat, in order, as one grid."""
        async for reply in self._new_grid(origin, "storyboard", self._draft_spec(inv)):
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

    def _draft_spec(self, inv: Invocation) -> Draftspec:
        """A draft request's options resolved: defaults applied, a seed drawn if none given;
        a storyboard's beats become its prompt (joined by " | ") and its number of drafts."""
        self.check_style(inv.style)
        beats = list(inv.beats) or None
        return Draftspec(
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
        self, origin: Origin, command: str, spec: Draftspec, label: str = ""
    ) -> AsyncIterator[Reply]:
        """Route ``spec`` on the draft tier, record the request and post its grid."""
        route = self._route(
            origin, Stage.DRAFT, spec.prompt, model=spec.model, images=spec.n, aspect_ratio=spec.ar
        )
        request_id = self.store.create_request(
            origin=origin.model_dump(), command=command, prompt=spec.prompt, options=spec.as_dict()
        )
        async for reply in self._draft_grid(origin, request_id, spec, route, None, label):
            yield reply

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

    def link(self, asset_id: str) -> str:
        """The asset page's URL when TIERBOT_PUBLIC_URL is set, else an empty string."""
        return f"{self.public_url}/assets/{asset_id}" if self.public_url else ""

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
        route = self._route(
            origin,
            Stage.DRAFT,
            spec.prompt,
            model=spec.model,
            images=spec.n,
            aspect_ratio=spec.ar,
            rejected_grids=rejected,
        )
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

    def _refuse_rejected_grid(self, grid_id: str) -> None:
        """A rerolled or discarded grid is closed: nothing more is spent on it."""
        rejected = [g for g in self.store.gates(grid_id) if g["decision"] == Decision.REJECTED]
        if rejected:
            raise UserError(
                f"grid {grid_id} was rerolled or discarded by {rejected[0]['user']}, so its "
                "drafts can no longer be taken further; nothing was spent. Pick from the "
                "newest grid, or /draft again."
            )

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

    async def _grid_reply(
        self,
        request_id: str,
        spec: Draftspec,
        jobs: list[CompletedJob],
        *,
        heading: str,
        thread_of: str | None,
        job_ids: list[str],
    ) -> Reply:
        """Compose the drafts of ``jobs`` into a numbered grid, store it, and present it;
        ``job_ids`` are every job of the batch (failed ones too) whose outcome it reports."""
        draft_ids = [asset_id for job in jobs for asset_id in job.asset_ids]
        drafts = [self.store.get_asset(a) for a in draft_ids]
        paths = [self.files.path(d["path"]) for d in drafts if d]
        grid = await cpu.run(compose_grid, paths)
        digest, relative = await asyncio.to_thread(self.files.put, grid.data, grid.mime)
        grid_id = self.store.save_asset(
            {
                "job_id": jobs[0].job_id,
                "request_id": request_id,
                "kind": AssetKind.GRID.value,
                "stage": Stage.DRAFT.value,
                "sha256": digest,
                "path": relative,
                "mime": grid.mime,
                "width": grid.width,
                "height": grid.height,
                "bytes": len(grid.data),
                "prompt": spec.prompt,
                "model_id": jobs[0].model.id,
                "seed": spec.seed,
                "cost": 0,
            },
            parents=draft_ids,
        )
        cost = sum(job.cost for job in jobs)
        numbers = [r.value for r in NUMBER_REACTIONS[: len(draft_ids)]]
        return Reply(
            text=f"{heading}🖼️ Drafts for “{spec.prompt}” · grid {grid_id} · {jobs[0].label} · "
            f"{credits(cost)}\n{jobs[0].reason}\nReact {numbers[0]}–{numbers[-1]} to take a "
            f"draft to the final tier, 🔁 to reroll, ❌ to discard.",
            files=[self.files.path(relative)],
            reactions=[*numbers, Reaction.REROLL.value, Reaction.DISCARD.value],
            asset_id=grid_id,
            thread_of=thread_of,
            job_ids=job_ids,
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
        plans = [
            self._plan(
                origin,
                request_id,
                route,
                Stage.DRAFT,
                Capability.TEXT_TO_IMAGE,
                prompt=prompt,
                negative=spec.negative,
                n=size,
                seed=chunk_seed,
                aspect_ratio=spec.ar,
                inputs=[],
            )
            for prompt, size, chunk_seed in chunks
        ]
        return await self._run_all(plans)

    # -- escalations -------------------------------------------------------------------------

    async def select(
        self, origin: Origin, grid_id: str, index: int, inv: Invocation | None = None
    ) -> AsyncIterator[Reply]:
        """1️⃣..9️⃣ on a grid: escalate draft ``index`` to the final tier.

        The draft is the reference image, its seed is kept, and the prompt is enriched by the
        style preset's technical words.
        """
        grid = self._asset(grid_id, AssetKind.GRID, "a draft grid")
        self._refuse_rejected_grid(grid_id)
        drafts = self.store.parents(grid_id)
        if not 1 <= index <= len(drafts):
            raise UserError(f"grid {grid_id} has drafts 1 to {len(drafts)}; got {index}")
        draft = drafts[index - 1]
        request = self.store.get_request(grid["request_id"])
        assert request is not None
        spec = Draftspec(**request["options"])
        style = (inv.style if inv else None) or spec.style
        self.check_style(style)
        hero = spec.hero or bool(inv and inv.hero)
        prompt = self._enrich(draft["prompt"], style)
        route = self._route(
            origin,
            Stage.FINAL,
            prompt,
            model=inv.model if inv else None,
            hero=hero,
            aspect_ratio=None,
        )
        self._authorize(origin, route, f"taking draft {index} to the final tier")
        if not self.store.record_gate(
            draft["id"], Decision.SELECTED, user=origin.user, surface=origin.surface
        ):
            finals = [c["id"] for c in self.store.children(draft["id"]) if c["stage"] == "final"]
            where = f": final {finals[-1]}" if finals else " (the final is on its way)"
            raise UserError(f"draft {index} of grid {grid_id} was already escalated{where}")
        try:
            async for reply in self._run_one(
                origin,
                route,
                request["id"],
                Capability.IMAGE_TO_IMAGE,
                status=f"Rendering the final of draft {index}",
                label=RESULT_LABELS[Stage.FINAL],
                extra=f"from draft {index} of grid {grid_id}, seed {draft['seed']}",
                thread_of=grid_id,
                inputs=[draft["id"]],
                prompt=prompt,
                seed=draft["seed"],
                negative=spec.negative,
                aspect_ratio=spec.ar,
            ):
                yield reply
        except JobFailed:
            self.store.remove_gate(draft["id"], Decision.SELECTED)  # a retry may select again
            raise

    async def rerender(self, origin: Origin, final_id: str) -> AsyncIterator[Reply]:
        """🔁 on a final: reject it and render again from the same reference with a new seed."""
        final = self._image(final_id)
        parents = self.store.parents(final_id)
        if final["stage"] not in (Stage.FINAL, Stage.EDIT) or not parents:
            raise UserError(f"{final_id} is not a final; 🔁 re-renders finals")
        request = self.store.get_request(final["request_id"])
        assert request is not None
        spec = Draftspec(**request["options"])
        route = self._route(origin, Stage(final["stage"]), final["prompt"], hero=spec.hero)
        self._authorize(origin, route, "re-rendering the final")
        self.store.record_qa(final_id, Decision.REJECTED, user=origin.user, surface=origin.surface)
        async for reply in self._run_one(
            origin,
            route,
            request["id"],
            Capability.IMAGE_TO_IMAGE,
            status=f"Re-rendering {final_id}",
            label="✨ Re-rendered final",
            extra=f"replaces {final_id}",
            thread_of=final_id,
            inputs=[parents[0]["id"]],
            prompt=final["prompt"],
            seed=(final["seed"] + 1) % MAX_SEED,
            negative=spec.negative,
            aspect_ratio=spec.ar,
        ):
            yield reply

    async def edit(self, origin: Origin, asset_id: str, inv: Invocation) -> AsyncIterator[Reply]:
        """``/tierbot edit``: image-to-image on an asset with an instruction prompt."""
        source = self._image(asset_id)
        instruction = inv.prompt or ""
        route = self._route(origin, Stage.EDIT, instruction, model=inv.model)
        self._authorize(origin, route, f"editing {asset_id}")
        async for reply in self._run_one(
            origin,
            route,
            source["request_id"],
            Capability.IMAGE_TO_IMAGE,
            status=f"Editing {asset_id}",
            label=RESULT_LABELS[Stage.EDIT],
            extra=f"of {asset_id}",
            thread_of=asset_id,
            inputs=[asset_id],
            prompt=instruction,
            seed=inv.seed if inv.seed is not None else source["seed"] or 0,
            aspect_ratio=_ratio_of(source),
        ):
            yield reply

    async def upscale(
        self, origin: Origin, asset_id: str, model: str | None = None
    ) -> AsyncIterator[Reply]:
        """⬆️: a 2K upscale of an image."""
        source = self._image(asset_id)
        if source["stage"] == Stage.UPSCALE:
            raise UserError(f"{asset_id} is already an upscale; nothing was spent")
        route = self._route(origin, Stage.UPSCALE, source["prompt"] or "", model=model)
        self._authorize(origin, route, f"upscaling {asset_id}")
        async for reply in self._run_one(
            origin,
            route,
            source["request_id"],
            Capability.UPSCALE,
            status=f"Upscaling {asset_id}",
            label=RESULT_LABELS[Stage.UPSCALE],
            extra=f"of {asset_id} to {UPSCALE_LONG_EDGE} px",
            thread_of=asset_id,
            inputs=[asset_id],
            prompt=source["prompt"] or "",
            seed=source["seed"] or 0,
            aspect_ratio=_ratio_of(source),
            long_edge=UPSCALE_LONG_EDGE,
        ):
            yield reply

    async def video(
        self, origin: Origin, asset_id: str, seconds: int | None = None, model: str | None = None
    ) -> AsyncIterator[Reply]:
        """🎬: image-to-video with the image as the first frame."""
        source = self._image(asset_id)
        seconds = seconds or DEFAULT_VIDEO_SECONDS
        route = self._route(
            origin, Stage.VIDEO, source["prompt"] or "", model=model, seconds=seconds
        )
        self._authorize(origin, route, f"making a {seconds}-second video of {asset_id}")
        async for reply in self._run_one(
            origin,
            route,
            source["request_id"],
            Capability.IMAGE_TO_VIDEO,
            status=f"Animating {asset_id} ({seconds} s)",
            label=RESULT_LABELS[Stage.VIDEO],
            extra=f"of {asset_id}",
            thread_of=asset_id,
            inputs=[asset_id],
            prompt=source["prompt"] or "",
            seed=source["seed"] or 0,
            aspect_ratio=_ratio_of(source),
            duration_s=seconds,
        ):
            yield reply

    async def _run_one(
        self,
        origin: Origin,
        route: Route,
        request_id: str,
        capability: Capability,
        *,
        status: str,
        label: str,
        extra: str,
        thread_of: str,
        inputs: list[str],
        prompt: str,
        seed: int,
        negative: str | None = None,
        aspect_ratio: str | None = None,
        long_edge: int | None = None,
        duration_s: int | None = None,
    ) -> AsyncIterator[Reply]:
        """One job on one input (final, edit, upscale, video): a status line, then the result."""
        yield self._status(status, route, thread_of=thread_of, request_id=request_id)
        (job,), _ = await self._run_all(
            [
                self._plan(
                    origin,
                    request_id,
                    route,
                    route.stage,
                    capability,
                    prompt=prompt,
                    negative=negative,
                    n=1,
                    seed=seed,
                    aspect_ratio=aspect_ratio,
                    inputs=inputs,
                    long_edge=long_edge,
                    duration_s=duration_s,
                )
            ]
        )
        yield self._result(label, job, thread_of=thread_of, extra=extra)

    # -- after a restart ---------------------------------------------------------------------

    def resumed(
        self, outcomes: list[CompletedJob | JobFailed]
    ) -> list[tuple[Origin, AsyncIterator[Reply]]]:
        """What to post for jobs a previous process left unfinished and this one finished.

        A draft request gets its grid (in the thread of its newest grid when it was a reroll);
        a final, edit, upscale or video is posted in its source's thread; a failure says so
        there. Each goes to the channel the job was asked for in. The previous process's
        status lines are the surfaces' business (they read "interrupted by a restart").
        """
        flows: list[tuple[Origin, AsyncIterator[Reply]]] = []
        drafts: dict[str, list[CompletedJob | JobFailed]] = {}  # request id -> its batch
        for outcome in outcomes:
            job = self.store.get_job(outcome.job_id) if outcome.job_id else None
            request = self.store.get_request(job["request_id"]) if job else None
            if job is None or request is None:
                continue
            origin = Origin(
                surface=request["surface"],
                team=job["team"],
                channel=job["channel"],
                user=request["user"],
            )
            if job["stage"] == Stage.DRAFT:
                if request["id"] not in drafts:
                    drafts[request["id"]] = []
                    flows.append((origin, self._grid_after_restart(request, drafts[request["id"]])))
                drafts[request["id"]].append(outcome)
            else:
                flows.append((origin, self._result_after_restart(job, outcome)))
        return flows

    async def _grid_after_restart(
        self, request: dict[str, Any], batch: list[CompletedJob | JobFailed]
    ) -> AsyncIterator[Reply]:
        """The grid of draft jobs that finished but were never posted (``batch``), in the
        thread of the request's newest posted grid when it was a reroll."""
        grids = [
            a["id"]
            for job in self.store.jobs_for_request(request["id"])
            if job["stage"] == Stage.DRAFT and job.get("delivered")
            for a in self.store.assets_for_job(job["id"])
            if a["kind"] == AssetKind.GRID
        ]
        thread_of = grids[-1] if grids else None
        spec = Draftspec(**request["options"])
        done = [o for o in batch if isinstance(o, CompletedJob)]
        job_ids = [o.job_id for o in batch if o.job_id]
        if not done:
            failures = [o for o in batch if isinstance(o, JobFailed)]
            reason = failures[0].message if failures else "no draft was made"
            yield Reply(
                text=f"⚠️ The drafts of “{spec.prompt}” failed after a restart: {reason}. "
                "Nothing was charged.",
                thread_of=thread_of,
                error=True,
                job_ids=job_ids,
            )
            return
        yield await self._grid_reply(
            request["id"],
            spec,
            done,
            heading="↻ After a restart: ",
            thread_of=thread_of,
            job_ids=job_ids,
        )

    async def _result_after_restart(
        self, job: dict[str, Any], outcome: CompletedJob | JobFailed
    ) -> AsyncIterator[Reply]:
        stage = Stage(job["stage"])
        source = job["inputs"][0] if job["inputs"] else None
        thread_of = source
        if stage == Stage.FINAL and source:  # a final is posted in its draft's grid thread
            grid = next(
                (c for c in self.store.children(source) if c["kind"] == AssetKind.GRID), None
            )
            thread_of = grid["id"] if grid else source
        if isinstance(outcome, JobFailed):
            if stage == Stage.FINAL and source:
                self.store.remove_gate(source, Decision.SELECTED)  # the draft may be chosen again
            yield Reply(
                text=f"⚠️ Failed after a restart: {outcome.message}. Nothing was charged.",
                thread_of=thread_of,
                error=True,
                job_ids=[job["id"]],
            )
            return
        yield self._result(
            RESULT_LABELS[stage],
            outcome,
            thread_of=thread_of or outcome.asset_ids[0],
            extra=f"of {source} · finished after a restart" if source else "· after a restart",
        )

    # -- decisions ---------------------------------------------------------------------------

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

    # -- read-only ---------------------------------------------------------------------------

    def lineage_tree(self, asset_id: str) -> list[LineageNode]:
        """The lineage of an asset as trees: from its first draft(s) to every later result.

        A grid's lineage is its drafts; anything else walks its first parents up to the root.
        Grids themselves are left out of the tree and named on their drafts instead.

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
            while parents := self.store.parents(root["id"]):
                root = parents[0]
            roots = [root]
        return [self._node(root) for root in roots]

    def _node(self, asset: dict[str, Any]) -> LineageNode:
        children = self.store.children(asset["id"])
        return LineageNode(
            asset=asset,
            gates=self.store.gates(asset["id"]),
            grids=[c["id"] for c in children if c["kind"] == AssetKind.GRID],
            children=[self._node(c) for c in children if c["kind"] != AssetKind.GRID],
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
            now = self.router.serving_now(model)
            serving = now.serving if now else model.providers[0]
            others = [s.provider for s in model.providers if s is not serving]
            lines.append(
                f"{model.id} · {serving.provider} ({serving.model}) · "
                f"{'/'.join(s.value for s in model.stages)} · "
                f"{', '.join(sorted(c.value for c in model.capabilities))} · "
                f"{credits(model.cost(seconds=1, serving=serving))}/{model.unit} · "
                + (f"unavailable: {why}" if why else "available")
                + (f" · also on {', '.join(others)}" if others else "")
            )
        styles = ", ".join(sorted(self.catalog.styles))
        lines.append(f"Styles: {styles}")
        return "\n".join(lines)

    # -- helpers -----------------------------------------------------------------------------

    def _route(
        self,
        origin: Origin,
        stage: Stage,
        prompt: str,
        *,
        model: str | None = None,
        hero: bool = False,
        images: int = 1,
        seconds: int | None = None,
        aspect_ratio: str | None = None,
        rejected_grids: int = 0,
    ) -> Route:
        rules = self.policy.rules_for(origin)
        return self.router.route(
            RouteContext(
                stage=stage,
                prompt=prompt,
                explicit_model=model,
                hero=hero,
                images=images,
                seconds=seconds,
                aspect_ratio=aspect_ratio,
                rejected_grids=rejected_grids,
                reroute_after=rules.reroute_after_rejections,
                budget_left=self.ledger.headroom(origin.team, origin.channel).left,
            )
        )

    def _authorize(self, origin: Origin, route: Route, action: str) -> None:
        price = route.price
        if self.policy.may_spend(origin, price):
            return
        approvers = ", ".join(self.policy.rules_for(origin).approvers)
        raise UserError(
            f"Only approvers can spend credits here: {action} costs {credits(price)}. "
            f"Ask one of: {approvers}. Nothing was spent."
        )

    def _authorize_decision(self, origin: Origin, action: str) -> None:
        if self.policy.is_approver(origin):
            return
        approvers = ", ".join(self.policy.rules_for(origin).approvers)
        raise UserError(f"Only approvers can decide here ({action}). Ask one of: {approvers}.")

    def check_style(self, style: str | None) -> None:
        """Raises UserError unless ``style`` is None or a catalog style preset."""
        if style is not None and style not in self.catalog.styles:
            allowed = ", ".join(sorted(self.catalog.styles))
            raise UserError(f"--style must be one of {allowed}; got {style}")

    def _enrich(self, prompt: str, style: str | None) -> str:
        if style is None:
            return prompt
        return f"{prompt}, {self.catalog.styles[style].adds}"

    def _asset(self, asset_id: str, kind: AssetKind, what: str) -> dict[str, Any]:
        asset = self.store.get_asset(asset_id)
        if asset is None:
            raise UserError(f"no asset {asset_id}; check the id on the message")
        if asset["kind"] != kind:
            raise UserError(f"{asset_id} is not {what}")
        return asset

    def _image(self, asset_id: str) -> dict[str, Any]:
        asset = self.store.get_asset(asset_id)
        if asset is None:
            raise UserError(f"no asset {asset_id}; check the id on the message")
        if asset["kind"] != AssetKind.IMAGE:
            raise UserError(f"{asset_id} is a {asset['kind']}; this needs an image")
        return asset

    def _result_asset(self, asset_id: str) -> dict[str, Any]:
        asset = self.store.get_asset(asset_id)
        if asset is None:
            raise UserError(f"no asset {asset_id}; check the id on the message")
        if asset["kind"] == AssetKind.GRID or asset["stage"] == Stage.DRAFT:
            raise UserError(f"{asset_id} is a draft; pick a draft with its number first")
        return asset

    def _plan(
        self,
        origin: Origin,
        request_id: str,
        route: Route,
        stage: Stage,
        capability: Capability,
        *,
        prompt: str,
        n: int,
        seed: int,
        aspect_ratio: str | None,
        inputs: list[str],
        negative: str | None = None,
        long_edge: int | None = None,
        duration_s: int | None = None,
    ) -> JobPlan:
        request = GenerationRequest(
            job_id="",
            stage=stage,
            capability=capability,
            model_id=route.primary.model.id,
            provider_model="",  # the runner fills in each candidate's own id
            prompt=prompt,
            negative_prompt=negative,
            n=n,
            seed=seed,
            aspect_ratio=aspect_ratio or DEFAULT_AR,
            long_edge=long_edge,
            duration_s=duration_s,
            references=[],
        )
        prices = {c.key: c.cost(images=n, seconds=duration_s) for c in route.candidates}
        return JobPlan(
            request_id=request_id,
            team=origin.team,
            channel=origin.channel,
            request=request,
            inputs=inputs,
            candidates=route.candidates,
            reason=route.reason,
            prices=prices,
        )

    async def _run_all(self, plans: list[JobPlan]) -> tuple[list[CompletedJob], list[str]]:
        """Run jobs concurrently; return those that succeeded and every job's id, or raise if
        none succeeded.

        Jobs that succeeded are kept (and charged) even when a sibling failed: their drafts
        are real and the grid shows them.
        """
        # Every job is reserved before any starts: a batch that does not fit the budget is
        # refused whole, never posted half-made.
        job_ids = self.runner.reserve_all(plans)
        results = await asyncio.gather(
            *(self.runner.drive(j) for j in job_ids), return_exceptions=True
        )
        done = [r for r in results if isinstance(r, CompletedJob)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, JobFailed):
                raise result
        final_ids = [r.job_id for r in results if isinstance(r, CompletedJob | JobFailed)]
        if not done:
            failure = next(r for r in results if isinstance(r, JobFailed))
            raise JobFailed(failure.message, failure.kind, failure.job_id, final_ids)
        return done, [i for i in final_ids if i]

    def _status(self, what: str, route: Route, *, thread_of: str | None, request_id: str) -> Reply:
        return Reply(
            text=f"⏳ {what} · {route.reason} · {credits(route.price)} reserved{CANCEL_HINT}",
            thread_of=thread_of,
            status=True,
            request_id=request_id,
            reactions=[Reaction.DISCARD.value],
        )

    def _result(
        self,
        label: str,
        job: CompletedJob,
        *,
        thread_of: str,
        extra: str,
    ) -> Reply:
        asset_id = job.asset_ids[0]
        asset = self.store.get_asset(asset_id)
        assert asset is not None
        path: Path = self.files.path(asset["path"])
        return Reply(
            text=f"{label} {asset_id} {extra} · {job.label} · {credits(job.cost)}\n{job.reason}",
            files=[path],
            reactions=reactions_for(Stage(asset["stage"])),
            asset_id=asset_id,
            thread_of=thread_of,
            job_ids=[job.job_id],
        )
