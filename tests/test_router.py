"""The router's rules, table by table (see the rule list in bot/router.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.catalog import load_catalog
from bot.domain import Capability, Stage
from bot.policy import HealthRules
from bot.router import Health, RouteContext, Router, RouteRefused, several_subjects

CATALOG = """
[models.turbo]
provider = "on"
provider_model = "t"
stages = ["draft"]
capabilities = ["text-to-image"]
multi_subject = false
price = 500

[models.flash]
provider = "on"
provider_model = "f"
stages = ["draft"]
capabilities = ["text-to-image", "image-to-image"]
aspect_ratios = ["1:1", "16:9"]
max_images = 1
price = 3900

[models.mid]
provider = "on"
provider_model = "m"
stages = ["final"]
capabilities = ["image-to-image"]
price = 6700
quality = 8
rank = 1

[models.pro]
provider = "on"
provider_model = "p"
stages = ["final"]
capabilities = ["text-to-image", "image-to-image"]
price = 13400
quality = 10
rank = 2

[models.vid]
provider = "on"
provider_model = "v"
stages = ["video"]
capabilities = ["image-to-video"]
unit = "second"
price = 2000
max_seconds = 8

[models.vid-cheap]
provider = "on"
provider_model = "vc"
stages = ["video"]
capabilities = ["image-to-video"]
unit = "second"
price = 1000
max_seconds = 5

[models.cloud]
provider = "off"
provider_model = "c"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 1
"""


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def router(tmp_path: Path, clock: Clock) -> Router:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    catalog = load_catalog(path)
    catalog.models = {
        k: v
        for k, v in catalog.models.items()
        if k.startswith(("turbo", "flash", "mid", "pro", "vid", "cloud"))
    }  # drop the shipped models
    health = Health(HealthRules(failures=3, window_s=60, cooldown_s=120), clock=clock)
    return Router(catalog, lambda p: None if p == "on" else "not configured", health)


ROUTES = [
    # (context, expected candidates, words the reason must contain)
    (
        RouteContext(Stage.DRAFT, "a lighthouse at dawn", images=4),
        ["turbo", "flash"],
        "draft on turbo: cheapest available draft model; fallback flash",
    ),
    (
        RouteContext(Stage.DRAFT, "two knights fighting a dragon"),
        ["flash"],
        "skipped turbo (blends several subjects)",
    ),
    (RouteContext(Stage.DRAFT, "a cat", aspect_ratio="4:5"), ["turbo"], "fallback none"),
    (RouteContext(Stage.FINAL, "a cat"), ["mid", "pro"], "preferred final model"),
    (
        RouteContext(Stage.FINAL, "a cat", hero=True),
        ["pro", "mid"],
        "--hero takes the best final model",
    ),
    (RouteContext(Stage.VIDEO, "a cat", seconds=4), ["vid-cheap", "vid"], "cheapest"),
    (RouteContext(Stage.VIDEO, "a cat", seconds=8), ["vid"], "video on vid"),
    (
        RouteContext(Stage.DRAFT, "a cat", images=4, budget_left=3000),
        ["turbo"],
        "skipped flash (costs 15.6 credits, over budget)",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", rejected_grids=2, reroute_after=2),
        ["pro"],
        "routed up to the final tier after 2 rejected grids",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", rejected_grids=1, reroute_after=2),
        ["turbo", "flash"],
        "cheapest",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", explicit_model="flash"),
        ["flash"],
        "asked for with --model; fallback none",
    ),
]


@pytest.mark.parametrize(("ctx", "expected", "reason"), ROUTES)
def test_routes(router: Router, ctx: RouteContext, expected: list[str], reason: str) -> None:
    route = router.route(ctx)
    assert [c.label for c in route.candidates] == expected
    assert reason in route.reason


REFUSALS = [
    (
        RouteContext(Stage.FINAL, "a cat", explicit_model="turbo"),
        "--model turbo cannot do image-to-image (final needs image-to-image)",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", explicit_model="turbbo"),
        "unknown model turbbo; did you mean turbo?",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", explicit_model="cloud"),
        "cloud is unavailable: provider off not configured",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", explicit_model="flash", aspect_ratio="4:5"),
        "--model flash does not render 4:5",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", explicit_model="flash", budget_left=100),
        "not enough budget: draft on flash costs 3.9 credits; 0.1 credits left",
    ),
    (
        RouteContext(Stage.DRAFT, "a cat", images=4, budget_left=1000),
        "not enough budget: draft on turbo costs 2 credits; 1 credit left",
    ),
    (RouteContext(Stage.VIDEO, "a cat", seconds=10), "no model can do this video"),
    (RouteContext(Stage.UPSCALE, "a cat"), "no model can do this upscale"),
]


@pytest.mark.parametrize(("ctx", "message"), REFUSALS)
def test_refusals(router: Router, ctx: RouteContext, message: str) -> None:
    with pytest.raises(RouteRefused) as refused:
        router.route(ctx)
    assert message in refused.value.message


def test_failing_model_cools_down_then_recovers(router: Router, clock: Clock) -> None:
    for _ in range(3):
        router.health.record_failure("turbo@on")
    route = router.route(RouteContext(Stage.DRAFT, "a cat"))
    assert [c.label for c in route.candidates] == ["flash"]
    assert "skipped turbo (cooling down)" in route.reason
    with pytest.raises(RouteRefused, match="cooling down"):
        router.route(RouteContext(Stage.DRAFT, "a cat", explicit_model="turbo"))
    clock.now += 121
    assert router.route(RouteContext(Stage.DRAFT, "a cat")).primary.label == "turbo"


def test_failures_outside_the_window_do_not_add_up(router: Router, clock: Clock) -> None:
    for _ in range(2):
        router.health.record_failure("turbo@on")
    clock.now += 61
    router.health.record_failure("turbo@on")
    assert router.health.cooling_for("turbo@on") == 0


def test_everything_cooling_down_is_refused(router: Router) -> None:
    for model in ("turbo", "flash"):
        for _ in range(3):
            router.health.record_failure(f"{model}@on")
    with pytest.raises(RouteRefused, match="every draft model is cooling down"):
        router.route(RouteContext(Stage.DRAFT, "a cat"))


def test_only_turbo_left_still_serves_a_complex_scene(router: Router) -> None:
    for _ in range(3):
        router.health.record_failure("flash@on")
    assert router.route(RouteContext(Stage.DRAFT, "two cats")).primary.label == "turbo"


@pytest.mark.parametrize(
    ("prompt", "several"),
    [
        ("astronaut in an overgrown jungle", False),
        ("a lighthouse at dawn", False),
        ("portrait of a woman with a red scarf", False),
        ("two astronauts shaking hands", True),
        ("a family having a picnic", True),
        ("a cat and a dog playing with a ball", True),
        ("the knight and the dragon", True),
        ("boxers fighting in a ring", True),
        ("dancers facing each other", True),
    ],
)
def test_several_subjects_heuristic(prompt: str, several: bool) -> None:
    assert several_subjects(prompt) is several


def test_shipped_catalog_offline_serves_every_stage_locally(make_settings) -> None:
    from adapters import wire

    services = wire(make_settings())
    for stage, ctx in [
        (Stage.DRAFT, {"images": 4}),
        (Stage.FINAL, {}),
        (Stage.EDIT, {}),
        (Stage.UPSCALE, {}),
        (Stage.VIDEO, {"seconds": 4}),
    ]:
        route = services.router.route(RouteContext(stage, "a cat", **ctx))
        assert route.primary.provider == "local", stage
    services.store.close()


MULTI = """
[models.banana]
stages = ["draft"]
capabilities = ["text-to-image"]
price = 4000

[[models.banana.providers]]
provider = "gemini"
model = "gemini-2.5-flash-image"

[[models.banana.providers]]
provider = "fal"
model = "fal-ai/nano-banana"
models = { "image-to-image" = "fal-ai/nano-banana/edit" }
price = 3900

[models.turbo]
provider = "fal"
provider_model = "fal-ai/z-image/turbo"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 5000
"""


@pytest.fixture
def multi(tmp_path: Path, clock: Clock):
    path = tmp_path / "multi.toml"
    path.write_text(MULTI, encoding="utf-8")
    catalog = load_catalog(path)
    catalog.models = {
        k: v for k, v in catalog.models.items() if k in ("banana", "turbo", "local-draft")
    }
    configured = {"gemini", "fal", "local"}

    def make(*providers: str) -> Router:
        configured.clear()
        configured.update(providers)
        return Router(
            catalog,
            lambda p: None if p in configured else "not configured",
            Health(HealthRules(), clock=clock),
        )

    return make


def test_a_model_falls_back_across_its_providers_before_another_model(multi) -> None:
    route = multi("gemini", "fal", "local").route(RouteContext(Stage.DRAFT, "a cat"))
    assert [c.key for c in route.candidates] == ["banana@gemini", "banana@fal", "turbo@fal"]
    assert "draft on banana@gemini" in route.reason
    assert route.candidates[1].serving.model_for(Capability.IMAGE_TO_IMAGE) == (
        "fal-ai/nano-banana/edit"
    )


def test_local_models_stop_serving_a_tier_once_a_real_provider_does(multi) -> None:
    keys = [c.key for c in multi("fal", "local").route(RouteContext(Stage.DRAFT, "a")).candidates]
    assert keys == ["banana@fal", "turbo@fal"]
    keys = [c.key for c in multi("local").route(RouteContext(Stage.DRAFT, "a")).candidates]
    assert keys == ["local-draft@local"]
    asked = multi("fal", "local").route(
        RouteContext(Stage.DRAFT, "a", explicit_model="local-draft")
    )
    assert [c.key for c in asked.candidates] == ["local-draft@local"]  # by name, still served


def test_model_pinned_to_a_provider(multi) -> None:
    router = multi("gemini", "fal")
    route = router.route(RouteContext(Stage.DRAFT, "a", explicit_model="banana@fal"))
    assert [c.key for c in route.candidates] == ["banana@fal"]
    route = router.route(RouteContext(Stage.DRAFT, "a", explicit_model="banana"))
    assert [c.key for c in route.candidates] == ["banana@gemini", "banana@fal"]
    with pytest.raises(
        RouteRefused, match=r"banana is not served by replicate \(served by gemini, fal\)"
    ):
        router.route(RouteContext(Stage.DRAFT, "a", explicit_model="banana@replicate"))
    with pytest.raises(
        RouteRefused, match="banana@gemini is unavailable: provider gemini not configured"
    ):
        multi("fal").route(RouteContext(Stage.DRAFT, "a", explicit_model="banana@gemini"))


def test_health_is_per_provider(multi) -> None:
    router = multi("gemini", "fal")
    for _ in range(3):
        router.health.record_failure("banana@gemini")
    route = router.route(RouteContext(Stage.DRAFT, "a"))
    assert [c.key for c in route.candidates] == ["banana@fal", "turbo@fal"]
    assert "skipped banana@gemini (cooling down)" in route.reason


def test_provider_price_overrides_the_model_price(multi) -> None:
    route = multi("fal").route(RouteContext(Stage.DRAFT, "a", images=2))
    assert route.prices == {"banana@fal": 7800, "turbo@fal": 10000}
