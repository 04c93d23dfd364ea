"""The tiered router: which model for this stage of this request, and which fallbacks.

The rules, in the order they apply (each has a table-driven test in ``tests/test_router.py``):

1. **Tier.** A stage is served by the catalog models listed for it, each on every configured
   provider that serves it, in the catalog's order (a provider failing falls back to the same
   model elsewhere first). The offline ``local`` models serve a tier only while no real
   provider does. Drafts of a request whose grids were rejected ``reroute_after`` times in a
   row route up to the final tier.
2. **Capability.** The model must do what the stage needs (a final re-renders a reference
   image, so it needs image-to-image; video needs image-to-video), support the aspect ratio and
   the video length asked for.
3. **Explicit ``--model``.** Only that model (on any of its providers, or ``model@provider``
   pinned); refused with the reason when it is unknown, unavailable, lacks the capability, is
   cooling down or is over budget.
4. **Order.** ``--hero`` finals take the highest ``quality`` regardless of price; drafts and
   video go cheapest first (then fastest); final, edit and upscale follow the catalog ``rank``.
5. **Health.** A model that failed ``failures`` times within ``window_s`` cools down for
   ``cooldown_s`` (in memory, per process).
6. **Budget.** A candidate the remaining budget cannot pay for is skipped; if none is left the
   request is refused before anything is spent, with the price and what is left.
7. **Scene complexity.** A prompt with several interacting subjects skips models marked
   ``multi_subject = false`` (turbo models blend subjects) unless nothing else is left.

The result carries a one-line reason that the bot shows to people.
"""

from __future__ import annotations

import logging
import re
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.catalog import Candidate, Catalog, ModelSpec, nearest
from bot.domain import STAGE_NEEDS, Capability, Stage
from bot.ledger import credits
from bot.policy import HealthRules

log = logging.getLogger(__name__)

#: The offline provider: it serves a tier only while no real provider does.
LOCAL = "local"

_COUNT_WORDS = (
    r"two|three|four|five|six|several|multiple|many|group|crowd|couple|pair|team|family|"
    r"trio|duo|both|dozens?"
)
_INTERACTIONS = (
    r"fighting|hugging|kissing|holding hands|shaking hands|dancing with|talking to|"
    r"playing with|arguing|chasing|versus|vs\.?|interacting|together|each other|one another|"
    r"handing|passing .* to|sitting with|standing next to"
)
_SEVERAL = re.compile(rf"\b({_COUNT_WORDS})\b", re.IGNORECASE)
_INTERACT = re.compile(rf"\b({_INTERACTIONS})\b", re.IGNORECASE)
# "a cat and a dog", "the knight and the dragon": two subjects joined by "and"
_JOINED = re.compile(r"\b(a|an|the|one)\s+[\w-]+(\s+[\w-]+)?\s+and\s+(a|an|the|one)\s+", re.I)


def _region_way(ctx: RouteContext, candidate: Candidate) -> str:
    """How a region edit goes on ``candidate``, for the reason people read."""
    if not ctx.region:
        return ""
    if Capability.INPAINT in candidate.model.capabilities:
        return "; region: native mask inpainting, the rest kept exactly"
    return "; region: told in words, then only the region is kept from its image"


def _images(count: int) -> str:
    return f"{count} image" if count == 1 else f"{count} images"


def several_subjects(prompt: str) -> bool:
    """Whether a prompt asks for several interacting subjects.

    A deliberately simple heuristic: a counting word ("two", "group", "family"), an
    interaction ("shaking hands", "each other") or two article-led subjects joined by "and".
    It errs towards True: the cost of a false positive is only skipping a turbo draft model.
    """
    return bool(_SEVERAL.search(prompt) or _INTERACT.search(prompt) or _JOINED.search(prompt))


class Health:
    """Per-model failure counts in a sliding window, and cool-downs (in memory)."""

    def __init__(self, rules: HealthRules, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self.clock = clock
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._cooling_until: dict[str, float] = {}

    def record_failure(self, model_id: str) -> None:
        now = self.clock()
        failures = self._failures[model_id]
        failures.append(now)
        while failures and failures[0] < now - self.rules.window_s:
            failures.popleft()
        if len(failures) >= self.rules.failures:
            self._cooling_until[model_id] = now + self.rules.cooldown_s
            failures.clear()
            log.warning("model %s cools down for %.0f s", model_id, self.rules.cooldown_s)

    def record_success(self, model_id: str) -> None:
        self._failures.pop(model_id, None)

    def cooling_for(self, model_id: str) -> float:
        """Seconds of cool-down left for a model (0 when healthy)."""
        return max(0.0, self._cooling_until.get(model_id, 0.0) - self.clock())


@dataclass(frozen=True)
class RouteContext:
    """What the router needs to know about one stage of one request."""

    stage: Stage
    prompt: str = ""
    explicit_model: str | None = None
    hero: bool = False
    images: int = 1
    seconds: int | None = None
    aspect_ratio: str | None = None
    #: ``--res``: a resolution every candidate must offer; None takes each model's default.
    resolution: str | None = None
    rejected_grids: int = 0
    reroute_after: int = 2
    #: Milli-credits left under the tightest budget cap; None when uncapped.
    budget_left: int | None = None
    #: Images people gave to shape the result (``--ref``, attachments), beyond the stage's
    #: own source image, and those given as a style to follow (``--sref``).
    references: int = 0
    style_references: int = 0
    #: A region edit: a model with native inpainting fits as well as an image-to-image one.
    region: bool = False

    @property
    def need(self) -> Capability:
        """The capability asked of a model: a draft with references is image-to-image."""
        if self.stage is Stage.DRAFT and self.references + self.style_references:
            return Capability.IMAGE_TO_IMAGE
        return STAGE_NEEDS[self.stage]

    @property
    def input_images(self) -> int:
        """Images one call takes: the stage's own source (a final's draft, an edit's or a
        video's image) and the references."""
        own = 0 if self.stage is Stage.DRAFT else 1
        return own + self.references + self.style_references


@dataclass(frozen=True)
class Route:
    stage: Stage
    tier: Stage
    candidates: list[Candidate]
    reason: str
    #: Milli-credits of each candidate (by ``model@provider`` key) for this request.
    prices: dict[str, int] = field(default_factory=dict)

    @property
    def primary(self) -> Candidate:
        return self.candidates[0]

    @property
    def price(self) -> int:
        return self.prices.get(self.primary.key, 0)


class RouteRefused(Exception):
    """No model can serve the request; ``message`` says why, for people."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Router:
    """Pure routing decisions over the catalog, provider availability, health and budget."""

    def __init__(
        self,
        catalog: Catalog,
        unavailable: Callable[[str], str | None],
        health: Health,
    ) -> None:
        """
        Args:
            catalog: the model catalog.
            unavailable: provider name → why it cannot serve, or None when it can.
            health: failure tracking shared with the job runner.
        """
        self.catalog = catalog
        self.unavailable = unavailable
        self.health = health
        #: ``model@provider`` → why the provider says it does not exist (``tierbot doctor``'s
        #: live check at start): out of routing until the next check.
        self.missing: dict[str, str] = {}

    def why_not(self, candidate: Candidate) -> str | None:
        """Why ``candidate`` cannot serve here (retired, missing at the provider, the
        provider not configured), or None when it can."""
        if candidate.retired:
            return (
                f"{candidate.serving.model} on {candidate.provider} is retired: {candidate.retired}"
            )
        if (missing := self.missing.get(candidate.key)) is not None:
            return f"{candidate.provider}: {missing}"
        if (reason := self.unavailable(candidate.provider)) is not None:
            return f"provider {candidate.provider} {reason}"
        return None

    def why_unavailable(self, model: ModelSpec) -> str | None:
        """None when some provider of ``model`` can serve it here, else every reason."""
        reasons = []
        for serving in model.providers:
            reason = self.why_not(Candidate(model, serving))
            if reason is None:
                return None
            reasons.append(reason)
        return "; ".join(reasons)

    def serving_now(self, model: ModelSpec) -> Candidate | None:
        """The candidate that would serve ``model`` now: its first available provider."""
        return next(iter(self._available(model)), None)

    def _available(self, model: ModelSpec, pinned: str | None = None) -> list[Candidate]:
        """``model`` on each provider that can serve it here (only ``pinned``, if given)."""
        candidates = [
            Candidate(model, s) for s in model.providers if pinned is None or s.provider == pinned
        ]
        return [c for c in candidates if self.why_not(c) is None]

    def price(self, candidate: Candidate, ctx: RouteContext) -> int:
        return candidate.cost(images=ctx.images, seconds=ctx.seconds, resolution=ctx.resolution)

    @staticmethod
    def _misfit(candidate: Candidate, ctx: RouteContext, need: Capability) -> str | None:
        """Why ``candidate``'s facts forbid ``ctx`` (the request is never sent), or None."""
        model = candidate.model
        inpaints = ctx.region and Capability.INPAINT in model.capabilities
        if need not in model.capabilities and not inpaints:
            return f"{model.id} cannot do {need.value} ({ctx.stage.value} needs {need.value})"
        if ctx.aspect_ratio and ctx.aspect_ratio not in candidate.aspect_ratios:
            allowed = ", ".join(candidate.aspect_ratios)
            return f"{candidate.label} does not render {ctx.aspect_ratio} (it does {allowed})"
        if ctx.resolution and ctx.resolution not in candidate.resolutions:
            offered = ", ".join(candidate.resolutions) or "one size only"
            return f"{candidate.label} does not render {ctx.resolution} ({offered})"
        if ctx.seconds and model.max_seconds and ctx.seconds > model.max_seconds:
            return f"{model.id} makes at most {model.max_seconds} s of video"
        if ctx.seconds and model.durations and ctx.seconds not in model.durations:
            lengths = ", ".join(str(d) for d in model.durations)
            return f"{model.id} makes videos of {lengths} s only"
        if ctx.input_images > candidate.max_references:
            return (
                f"{candidate.label} takes {_images(candidate.max_references)} per call; "
                f"this needs {ctx.input_images}"
            )
        if ctx.style_references and not candidate.style_reference:
            return f"{candidate.label} takes no style reference (--sref)"
        return None

    def _fitting(
        self, model: ModelSpec, ctx: RouteContext, need: Capability, pinned: str | None = None
    ) -> list[Candidate]:
        """``model`` on each provider that can serve it here and whose facts allow ``ctx``."""
        return [c for c in self._available(model, pinned) if self._misfit(c, ctx, need) is None]

    def _why_not_fitting(self, model: ModelSpec, ctx: RouteContext, need: Capability) -> str:
        """Why no deployment of ``model`` fits ``ctx``: each one's reason, once."""
        reasons = dict.fromkeys(
            self._misfit(c, ctx, need) or "" for c in (Candidate(model, s) for s in model.providers)
        )
        return "; ".join(r for r in reasons if r)

    def route(self, ctx: RouteContext) -> Route:
        """Choose the candidates for ``ctx``.

        Raises:
            RouteRefused: with a message for people, before anything is spent.
        """
        need = ctx.need
        if ctx.explicit_model:
            return self._route_explicit(ctx, need)

        tier = ctx.stage
        why = {
            Stage.DRAFT: "cheapest available draft model",
            Stage.FINAL: "preferred final model",
            Stage.EDIT: "preferred edit model",
            Stage.UPSCALE: "preferred upscaler",
            Stage.VIDEO: "cheapest available video model",
        }[ctx.stage]
        if ctx.stage is Stage.DRAFT and ctx.rejected_grids >= ctx.reroute_after:
            tier = Stage.FINAL
            why = f"routed up to the final tier after {ctx.rejected_grids} rejected grids"
        if ctx.hero and ctx.stage is Stage.FINAL:
            why = "--hero takes the best final model"
        if given := ctx.references + ctx.style_references:
            why += f" that takes {_images(ctx.input_images)}"
            why += f" ({given} given as references)" if ctx.input_images != given else ""

        available = {m.id: self._fitting(m, ctx, need) for m in self.catalog.for_stage(tier)}
        models = [m for m in self.catalog.for_stage(tier) if available[m.id]]
        if not models:
            raise RouteRefused(self._nothing_serves(ctx, tier, need))
        models.sort(key=self._order(ctx, tier, available))
        # Each model on each provider that serves it, in order: a failing provider falls back
        # to the same model elsewhere before another model is tried.
        candidates = [c for m in models for c in available[m.id]]
        if any(c.provider != LOCAL for c in candidates):
            # Offline previews stop serving a tier once a real provider does (ask by name).
            candidates = [c for c in candidates if c.provider != LOCAL]

        skipped: list[str] = []
        healthy = [c for c in candidates if self.health.cooling_for(c.key) == 0]
        if not healthy:
            waits = ", ".join(
                f"{c.label} {self.health.cooling_for(c.key):.0f} s" for c in candidates
            )
            raise RouteRefused(
                f"every {tier.value} model is cooling down after repeated failures ({waits}); "
                "try again shortly"
            )
        skipped += [f"{c.label} (cooling down)" for c in candidates if c not in healthy]

        prices = {c.key: self.price(c, ctx) for c in healthy}
        affordable = [
            c for c in healthy if ctx.budget_left is None or prices[c.key] <= ctx.budget_left
        ]
        if not affordable:
            cheapest = min(healthy, key=lambda c: prices[c.key])
            raise RouteRefused(
                f"not enough budget: {ctx.stage.value} on {cheapest.label} costs "
                f"{credits(prices[cheapest.key])}; {credits(ctx.budget_left or 0)} left"
            )
        skipped += [
            f"{c.label} (costs {credits(prices[c.key])}, over budget)"
            for c in healthy
            if c not in affordable
        ]
        if several_subjects(ctx.prompt):
            blending = [c for c in affordable if not c.model.multi_subject]
            if blending and len(blending) < len(affordable):
                affordable = [c for c in affordable if c.model.multi_subject]
                skipped += [f"{c.label} (blends several subjects)" for c in blending]
        return self._route(ctx, tier, affordable, why, skipped, prices)

    def _order(
        self, ctx: RouteContext, tier: Stage, fitting: dict[str, list[Candidate]]
    ) -> Callable[[ModelSpec], tuple]:
        """The sort key of a tier's models; a model costs what its cheapest deployment that
        fits ``ctx`` costs (``fitting``: each model's, as :meth:`route` found them)."""
        if ctx.hero and ctx.stage is Stage.FINAL:
            return lambda m: (-m.quality, m.rank)

        def cost(m: ModelSpec) -> int:
            return min(self.price(c, ctx) for c in fitting[m.id])

        if tier in (Stage.DRAFT, Stage.VIDEO):
            return lambda m: (cost(m), m.latency_s)
        return lambda m: (m.rank, cost(m))

    def _route(
        self,
        ctx: RouteContext,
        tier: Stage,
        candidates: list[Candidate],
        why: str,
        skipped: list[str],
        prices: dict[str, int],
    ) -> Route:
        fallbacks = ", ".join(c.label for c in candidates[1:]) or "none"
        reason = f"{ctx.stage.value} on {candidates[0].label}: {why}; fallback {fallbacks}"
        if skipped:
            reason += "; skipped " + ", ".join(skipped)
        return Route(ctx.stage, tier, candidates, reason + _region_way(ctx, candidates[0]), prices)

    def _route_explicit(self, ctx: RouteContext, need: Capability) -> Route:
        """``--model ID`` (any provider of it, in order) or ``--model ID@PROVIDER`` (pinned)."""
        asked = ctx.explicit_model or ""
        model_id, _, pinned = asked.partition("@")
        model = self.catalog.get(model_id)
        if model is None:
            hint = nearest(model_id, self.catalog.models)
            suggestion = f"; did you mean {hint}?" if hint else ""
            raise RouteRefused(f"unknown model {model_id}{suggestion} (see /tierbot models)")
        if pinned and all(s.provider != pinned for s in model.providers):
            served = ", ".join(s.provider for s in model.providers)
            raise RouteRefused(f"{model.id} is not served by {pinned} (served by {served})")
        deployments = [
            Candidate(model, s) for s in model.providers if not pinned or s.provider == pinned
        ]
        misfits = [m for c in deployments if (m := self._misfit(c, ctx, need))]
        if len(misfits) == len(deployments):
            raise RouteRefused(f"--model {'; '.join(dict.fromkeys(misfits))}")
        candidates = self._fitting(model, ctx, need, pinned or None)
        if not candidates:
            reasons = [
                why
                for c in deployments
                if self._misfit(c, ctx, need) is None and (why := self.why_not(c))
            ]
            raise RouteRefused(f"{asked} is unavailable: {'; '.join(reasons)}")
        healthy = [c for c in candidates if self.health.cooling_for(c.key) == 0]
        if not healthy:
            cooling = min(self.health.cooling_for(c.key) for c in candidates)
            raise RouteRefused(
                f"{asked} is cooling down after repeated failures; try again in "
                f"{cooling:.0f} s or drop --model"
            )
        prices = {c.key: self.price(c, ctx) for c in healthy}
        price = prices[healthy[0].key]
        if ctx.budget_left is not None and price > ctx.budget_left:
            raise RouteRefused(
                f"not enough budget: {ctx.stage.value} on {healthy[0].label} costs "
                f"{credits(price)}; {credits(ctx.budget_left)} left"
            )
        fallbacks = ", ".join(c.label for c in healthy[1:]) or "none"
        return Route(
            ctx.stage,
            ctx.stage,
            healthy,
            f"{ctx.stage.value} on {healthy[0].label}: asked for with --model; "
            f"fallback {fallbacks}" + _region_way(ctx, healthy[0]),
            prices,
        )

    def _nothing_serves(self, ctx: RouteContext, tier: Stage, need: Capability) -> str:
        reasons = []
        for model in self.catalog.for_stage(tier):
            why = self.why_unavailable(model) or self._why_not_fitting(model, ctx, need)
            if why:
                reasons.append(f"{model.id}: {why}")
        detail = "; ".join(reasons) if reasons else "the catalog lists none"
        message = f"no model can do this {ctx.stage.value} ({detail})"
        if ctx.references or ctx.style_references:
            would = [
                m.id
                for m in self.catalog.models.values()
                if ctx.stage in m.stages
                and any(self._misfit(Candidate(m, s), ctx, need) is None for s in m.providers)
            ]
            message += (
                f"; models that would take these images: {', '.join(would)}"
                if would
                else "; no catalog model takes that many images for this step"
            )
        return message
