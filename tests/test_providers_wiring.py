"""Keys switch providers on: their models become available with no other change."""

from __future__ import annotations

from adapters import wire
from bot.domain import Stage
from bot.router import RouteContext


def test_no_keys_means_local_serves_everything(make_settings) -> None:
    services = wire(make_settings())
    why = services.router.why_unavailable(services.catalog.models["nano-banana"])
    assert why == (
        "provider gemini not configured (set GEMINI_API_KEY); provider fal not "
        "configured (set FAL_KEY); provider replicate not configured (set "
        "REPLICATE_API_TOKEN)"
    )
    assert services.router.route(RouteContext(Stage.DRAFT, "a cat")).primary.provider == "local"
    services.store.close()


def test_a_key_makes_its_models_available_and_retires_local_for_that_tier(make_settings) -> None:
    services = wire(make_settings(fal_key="fal-test-key"))
    assert services.router.why_unavailable(services.catalog.models["nano-banana"]) is None
    route = services.router.route(RouteContext(Stage.DRAFT, "a lighthouse", images=4))
    assert [c.key for c in route.candidates] == ["z-image-turbo@fal", "nano-banana@fal"]
    final = services.router.route(RouteContext(Stage.FINAL, "a lighthouse"))
    assert final.primary.key == "nano-banana-pro@fal"
    text = services.pipeline.models()
    assert "nano-banana · fal (fal-ai/nano-banana) · draft/edit" in text
    assert "local-draft · local (preview)" in text
    services.store.close()


def test_comfyui_url_serves_z_image_turbo_on_your_gpu(make_settings) -> None:
    services = wire(make_settings(comfyui_url="http://127.0.0.1:8188"))
    route = services.router.route(RouteContext(Stage.DRAFT, "a lighthouse", images=2))
    assert route.primary.key == "z-image-turbo@comfyui" and route.price == 0
    services.store.close()
