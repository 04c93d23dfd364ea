"""The shared steps of every use case, and the vocabulary the use-case modules share.

Each spending use case follows the same steps: validate → route (price known) → authorise
(approvers, threshold) → record the gate → run the job(s) → record assets and lineage →
return what a surface must post. The steps live here, on :class:`UseCases`, once; the use
cases themselves are grouped by family in the sibling modules (``drafting``, ``escalating``,
``decisions``, ``restart``, ``reports``) and composed into :class:`bot.pipeline.Pipeline`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot import cpu, failpoints
from bot.catalog import Catalog
from bot.commands import Invocation
from bot.domain import (
    ASPECT_RATIOS,
    CANCEL_HINT,
    DEFAULT_AR,
    FINAL_REACTIONS,
    MAX_SEED,
    NUMBER_REACTIONS,
    PICTURES,
    AssetKind,
    Capability,
    InboundFile,
    Origin,
    Reaction,
    Reply,
    Stage,
)
from bot.errors import UserError
from bot.failpoints import failpoint
from bot.grid import compose_grid
from bot.ledger import Ledger, credits
from bot.policy import Policy
from bot.providers import GenerationRequest
from bot.router import Route, RouteContext, Router
from bot.runner import CompletedJob, JobFailed, JobPlan, JobRunner
from storage import AssetFiles, Store

log = logging.getLogger(__name__)

UPSCALE_LONG_EDGE = 2048
#: How a result of each stage after the draft is introduced in the chat.
RESULT_LABELS = {
    Stage.FINAL: "✨ Final",
    Stage.EDIT: "✏️ Edit",
    Stage.UPSCALE: "⬆️ Upscale",
    Stage.VIDEO: "🎬 Video",
}
#: Reactions pre-added to a video: render it again, sign it off or discard it.
VIDEO_REACTIONS = [Reaction.REROLL.value, Reaction.APPROVE.value, Reaction.DISCARD.value]
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


async def durable(
    store: Store, origin: Origin, replies: AsyncIterator[Reply]
) -> AsyncIterator[Reply]:
    """``replies`` ready for a surface: each placed in its thread (``thread_id`` resolved
    from ``thread_of`` on ``origin``'s surface), and every public result handed over for
    posting: written to the outbox (claimed by this process) and its jobs marked delivered in
    one transaction. A crash after that is finished by whichever process flushes the outbox,
    from the step where the post stopped; a crash before it leaves the jobs undelivered, and
    recovery makes the reply again. Status lines and private replies are not kept."""
    async for reply in replies:
        if reply.thread_of and reply.thread_id is None:
            thread = store.thread_for_asset(origin.surface, origin.channel, reply.thread_of)
            reply = reply.model_copy(update={"thread_id": thread})
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
    #: Reference images (asset ids) and style references: a reroll keeps them.
    refs: list[str] = field(default_factory=list)
    srefs: list[str] = field(default_factory=list)
    #: What the model is told when it differs from ``prompt``, the words people see (a
    #: variation: "a subtle variation of attached image 1 ...").
    instruction: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @property
    def references(self) -> References:
        return References(list(self.refs), list(self.srefs))


@dataclass(frozen=True)
class References:
    """Images that shape a generation besides its own source: content references (a
    product, a character to keep) and style references (a look to follow), asset ids."""

    content: list[str] = field(default_factory=list)
    style: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.content or self.style)

    @property
    def assets(self) -> list[str]:
        """Every reference, content first: the order the model gets them in after the
        stage's own source image."""
        return [*self.content, *self.style]

    def prompt(self, prompt: str, *, own: int = 0) -> str:
        """``prompt`` with the roles of the reference images spelled out (image models take
        a list of images and follow words about them); ``own`` images (a final's draft, an
        edit's source) come first."""
        if not self:
            return prompt
        parts = [prompt]
        first = own + 1
        if self.content:
            parts.append(
                f"{_numbered(first, len(self.content))}: keep the same product, character or "
                "object, exactly as it looks there."
            )
        if self.style:
            parts.append(
                f"{_numbered(first + len(self.content), len(self.style))}: style only; follow "
                "the colour palette, lighting and texture, not the content."
            )
        return " ".join(parts)


def _numbered(first: int, count: int) -> str:
    if count == 1:
        return f"Attached image {first}"
    return f"Attached images {first} to {first + count - 1}"


class UseCases:
    """The services every use case works over, and the steps they share."""

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

    def link(self, asset_id: str) -> str:
        """The asset page's URL when TIERBOT_PUBLIC_URL is set, else an empty string."""
        return f"{self.public_url}/assets/{asset_id}" if self.public_url else ""

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
        resolution: str | None = None,
        rejected_grids: int = 0,
        references: References | None = None,
        region: bool = False,
    ) -> Route:
        rules = self.policy.rules_for(origin)
        references = references or References()
        return self.router.route(
            RouteContext(
                stage=stage,
                prompt=prompt,
                explicit_model=model,
                hero=hero,
                images=images,
                seconds=seconds,
                aspect_ratio=aspect_ratio,
                resolution=resolution,
                rejected_grids=rejected_grids,
                reroute_after=rules.reroute_after_rejections,
                budget_left=self.ledger.headroom(origin.team, origin.channel).left,
                references=len(references.content),
                style_references=len(references.style),
                region=region,
            )
        )

    def references(
        self, origin: Origin, inv: Invocation, files: Sequence[InboundFile] = ()
    ) -> References:
        """The images a command gave to shape its result: files attached to it (content
        references), and each ``--ref``/``--sref`` value: what a surface fetched for it, an
        image asset id, or a named reference of the team.

        Raises:
            UserError: a value that is none of these, or names a grid or a video.
        """
        fetched = {f.source: f.asset_id for f in files if f.source and f.asset_id}
        attached = [f.asset_id for f in files if not f.source and f.asset_id]

        def resolve(value: str, flag: str) -> list[str]:
            if value in fetched:
                return [fetched[value]]
            asset = self.store.get_asset(value)
            if asset is not None:
                if asset["kind"] not in PICTURES:
                    raise UserError(f"--{flag} {value} is a {asset['kind']}; give an image")
                return [value]
            named = self.store.get_ref(origin.team, value.lower())
            if named is not None:
                return list(named["asset_ids"])
            if "://" in value:
                raise UserError(
                    f"--{flag} {value[:60]}: links are read only from Slack's own file host; "
                    "attach the image to the command instead. Nothing was spent."
                )
            raise UserError(
                f"--{flag} {value[:60]}: no image asset or named reference by that name "
                "(see /tierbot ref list). Nothing was spent."
            )

        content = attached + [a for v in inv.refs for a in resolve(v, "ref")]
        style = [a for v in inv.srefs for a in resolve(v, "sref")]
        return References(list(dict.fromkeys(content)), list(dict.fromkeys(style)))

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

    def motion_prompt(self, words: str, motion: str | None) -> str:
        """What a video's model is told: the motion words (or the picture's own prompt) and
        the motion preset's wording from the catalog (``subtle``, the default: a stable
        camera; the seeds warn that complex motion hallucinates)."""
        preset = self.catalog.motions.get(motion or "subtle")
        return f"{words}. {preset.adds}" if preset else words

    def _enrich(self, prompt: str, style: str | None) -> str:
        if style is None:
            return prompt
        return f"{prompt}, {self.catalog.styles[style].adds}"

    def _asset(self, asset_id: str, kind: AssetKind, what: str) -> dict[str, Any]:
        asset = self._existing(asset_id)
        if asset["kind"] != kind:
            raise UserError(f"{asset_id} is not {what}")
        return asset

    def _image(self, asset_id: str) -> dict[str, Any]:
        asset = self._existing(asset_id)
        if asset["kind"] != AssetKind.IMAGE:
            raise UserError(f"{asset_id} is a {asset['kind']}; this needs an image")
        return asset

    def _existing(self, asset_id: str) -> dict[str, Any]:
        asset = self.store.get_asset(asset_id)
        if asset is None:
            raise UserError(f"no asset {asset_id}; check the id on the message")
        return asset

    def _result_asset(self, asset_id: str) -> dict[str, Any]:
        asset = self._existing(asset_id)
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
        resolution: str | None = None,
        refs: References | None = None,
        own_images: int = 0,
        subject: str | None = None,
        mask: Path | None = None,
        region: str | None = None,
        strength: float | None = None,
    ) -> JobPlan:
        """One job's plan; ``refs`` are added to ``inputs`` (after the ``own_images``, a
        final's draft or an edit's source) and named in the prompt sent; ``subject`` is
        what the result keeps as its prompt when the model is told more than that."""
        refs = refs or References()
        request = GenerationRequest(
            job_id="",
            stage=stage,
            capability=capability,
            model_id=route.primary.model.id,
            provider_model="",  # the runner fills in each candidate's own id
            prompt=refs.prompt(prompt, own=own_images),
            subject=subject or (prompt if refs else None),
            style_references=len(refs.style),
            mask=mask,
            region=region,
            strength=strength,
            negative_prompt=negative,
            n=n,
            seed=seed,
            aspect_ratio=aspect_ratio or DEFAULT_AR,
            long_edge=long_edge,
            duration_s=duration_s,
            resolution=resolution,
            references=[],
        )
        prices = {
            c.key: c.cost(images=n, seconds=duration_s, resolution=resolution)
            for c in route.candidates
        }
        return JobPlan(
            request_id=request_id,
            team=origin.team,
            channel=origin.channel,
            request=request,
            inputs=[*inputs, *refs.assets],
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

    async def _result(
        self,
        label: str,
        job: CompletedJob,
        *,
        thread_of: str,
        extra: str,
        notes: Sequence[str] = (),
        offers: Sequence[str] = (),
    ) -> Reply:
        """The message presenting a job's result; ``notes`` are lines after the reason (a
        seam, the drift), ``offers`` reactions added to the stage's own (🎨, 🪄)."""
        asset_id = job.asset_ids[0]
        asset = self.store.get_asset(asset_id)
        assert asset is not None
        path = await self.files.local(asset["path"])
        lines = "".join(f"\n{note}" for note in notes)
        reactions = reactions_for(Stage(asset["stage"]))
        return Reply(
            text=f"{label} {asset_id} {extra} · {job.label} · {credits(job.cost)}\n{job.reason}"
            + lines,
            files=[path],
            reactions=[*reactions[:-2], *offers, *reactions[-2:]] if offers else reactions,
            asset_id=asset_id,
            thread_of=thread_of,
            job_ids=[job.job_id],
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
        paths = await self.files.paths([d["path"] for d in drafts if d])
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
        # A storyboard's beats can be shot as a sequence straight from its grid.
        shoot = [Reaction.VIDEO.value] if spec.beats else []
        return Reply(
            text=f"{heading}🖼️ Drafts for “{spec.prompt}” · grid {grid_id} · {jobs[0].label} · "
            f"{credits(cost)}\n{jobs[0].reason}\nReact {numbers[0]}–{numbers[-1]} to take a "
            f"draft to the final tier, {'🎬 to shoot the beats as a sequence, ' if shoot else ''}"
            f"🔁 to reroll, ❌ to discard.",
            files=[self.files.path(relative)],
            reactions=[*numbers, *shoot, Reaction.REROLL.value, Reaction.DISCARD.value],
            asset_id=grid_id,
            thread_of=thread_of,
            job_ids=job_ids,
        )
