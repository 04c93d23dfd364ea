"""The tiered router: which model for this stage of this request, and which fallbacks.

The rules, in the order they apply (each has a table-driven test in ``tests/test_router.py``):

1. **Tier.** A stage is served by the catalog models listed for it. Drafts of a request whose
   grids were rejected ``reroute_after`` times in a row route up to the final tier.
2. **Capability.** The model must do what the stage needs (a final re-renders a reference
   image, so it needs image-to-image; video needs image-to-video), support the aspect ratio and
   the video length asked for.
3. **Explicit ``--model``.** Only that model, no fallback; refused with the reason when it is
   unknown, unavailable, lacks the capability, is cooling down or is over budget.
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

from bot.catalog import Catalog, ModelSpec, nearest
from bot.domain import STAGE_NEEDS, Capability, Stage
from bot.ledger import credits
from bot.policy import HealthRules

log = logging.getLogger(__name__)

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
    rejected_grids: int = 0
    reroute_after: int = 2
    #: Milli-credits left under the tightest budget cap; None when uncapped.
    budget_left: int | None = None


@dataclass(frozen=True)
class Route:
    stage: Stage
    tier: Stage
    candidates: list[ModelSpec]
    reason: str
    prices: dict[str, int] = field(default_factory=dict)

    @property
    def primary(self) -> ModelSpec:
        return self.candidates[0]


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

    def why_unavailable(self, model: ModelSpec) -> str | None:
        reason = self.unavailable(model.provider)
        return f"provider {model.provider} {reason}" if reason else None

    def price(self, model: ModelSpec, ctx: RouteContext) -> int:
        return model.cost(images=ctx.images, seconds=ctx.seconds)

    def _misfit(self, model: ModelSpec, ctx: RouteContext, need: Capability) -> str | None:
        if need not in model.capabilities:
            return f"{model.id} cannot do {need.value} ({ctx.stage.value} needs {need.value})"
        if ctx.aspect_ratio and ctx.aspect_ratio not in model.aspect_ratios:
            allowed = ", ".join(model.aspect_ratios)
            return f"{model.id} does not render {ctx.aspect_ratio} (it does {allowed})"
        if ctx.seconds and model.max_seconds and ctx.seconds > model.max_seconds:
            return f"{model.id} makes at most {model.max_seconds} s of video"
        return None

    def route(self, ctx: RouteContext) -> Route:
        """Choose the candidates for ``ctx``.

        Raises:
            RouteRefused: with a message for people, before anything is spent.
        """
        need = STAGE_NEEDS[ctx.stage]
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

        models = [m for m in self.catalog.for_stage(tier) if self.why_unavailable(m) is None]
        models = [m for m in models if self._misfit(m, ctx, need) is None]
        if not models:
            raise RouteRefused(self._nothing_serves(ctx, tier, need))
        models.sort(key=self._order(ctx, tier))

        skipped: list[str] = []
        healthy = [m for m in models if self.health.cooling_for(m.id) == 0]
        if not healthy:
            waits = ", ".join(f"{m.id} {self.health.cooling_for(m.id):.0f} s" for m in models)
            raise RouteRefused(
                f"every {tier.value} model is cooling down after repeated failures ({waits}); "
                "try again shortly"
            )
        skipped += [f"{m.id} (cooling down)" for m in models if m not in healthy]

        prices = {m.id: self.price(m, ctx) for m in healthy}
        affordable = [
            m for m in healthy if ctx.budget_left is None or prices[m.id] <= ctx.budget_left
        ]
        if not affordable:
            cheapest = min(healthy, key=lambda m: prices[m.id])
            raise RouteRefused(
                f"not enough budget: {ctx.stage.value} on {cheapest.id} costs "
                f"{credits(prices[cheapest.id])}; {credits(ctx.budget_left or 0)} left"
            )
        skipped += [
            f"{m.id} (costs {credits(prices[m.id])}, over budget)"
            for m in healthy
            if m not in affordable
        ]
        if several_subjects(ctx.prompt):
            blending = [m for m in affordable if not m.multi_subject]
            if blending and len(blending) < len(affordable):
                affordable = [m for m in affordable if m.multi_subject]
                skipped += [f"{m.id} (blends several subjects)" for m in blending]
        return self._route(ctx, tier, affordable, why, skipped, prices)

    def _order(self, ctx: RouteContext, tier: Stage) -> Callable[[ModelSpec], tuple]:
        if ctx.hero and ctx.stage is Stage.FINAL:
            return lambda m: (-m.quality, m.rank)
        if tier in (Stage.DRAFT, Stage.VIDEO):
            return lambda m: (self.price(m, ctx), m.latency_s)
        return lambda m: (m.rank, self.price(m, ctx))

    def _route(
        self,
        ctx: RouteContext,
        tier: Stage,
        candidates: list[ModelSpec],
        why: str,
        skipped: list[str],
        prices: dict[str, int],
    ) -> Route:
        fallbacks = ", ".join(m.id for m in candidates[1:]) or "none"
        reason = f"{ctx.stage.value} on {candidates[0].id}: {why}; fallback {fallbacks}"
        if skipped:
            reason += "; skipped " + ", ".join(skipped)
        return Route(ctx.stage, tier, candidates, reason, prices)

    def _route_explicit(self, ctx: RouteContext, need: Capability) -> Route:
        model_id = ctx.explicit_model or ""
        model = self.catalog.get(model_id)
        if model is None:
            hint = nearest(model_id, self.catalog.models)
            suggestion = f"; did you mean {hint}?" if hint else ""
            raise RouteRefused(f"unknown model {model_id}{suggestion} (see /tierbot models)")
        unavailable = self.why_unavailable(model)
        if unavailable:
            raise RouteRefused(f"{model.id} is unavailable: {unavailable}")
        misfit = self._misfit(model, ctx, need)
        if misfit:
            raise RouteRefused(f"--model {misfit}")
        cooling = self.health.cooling_for(model.id)
        if cooling:
            raise RouteRefused(
                f"{model.id} is cooling down after repeated failures; try again in "
                f"{cooling:.0f} s or drop --model"
            )
        price = self.price(model, ctx)
        if ctx.budget_left is not None and price > ctx.budget_left:
            raise RouteRefused(
                f"not enough budget: {ctx.stage.value} on {model.id} costs {credits(price)}; "
                f"{credits(ctx.budget_left)} left"
            )
        return Route(
            ctx.stage,
            ctx.stage,
            [model],
            f"{ctx.stage.value} on {model.id}: asked for with --model; fallback none",
            {model.id: price},
        )

    def _nothing_serves(self, ctx: RouteContext, tier: Stage, need: Capability) -> str:
        reasons = []
        for model in self.catalog.for_stage(tier):
            why = self.why_unavailable(model) or self._misfit(model, ctx, need)
            if why:
                reasons.append(f"{model.id}: {why}")
        detail = "; ".join(reasons) if reasons else "the catalog lists none"
        return f"no model can do this {ctx.stage.value} ({detail})"
