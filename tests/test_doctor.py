"""The live check (``tierbot doctor``, and ``tierbot run`` at start) against the fake Gemini,
Replicate and fal servers: a bad key, a missing model and all good, with the shipped catalog;
and catalog facts the router enforces before anything is reserved."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from adapters import wire
from bot.app import Services
from bot.doctor import Finding, live_check, take_out_missing
from bot.domain import Stage
from bot.router import RouteContext, RouteRefused
from tests.conftest import Chat
from tests.fakes.fal_fake import _LONG_EDGE as FAL_LONG_EDGE
from tests.fakes.fal_fake import FakeFal
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.replicate_fake import ReplicateFake

TOKEN = "r8_doctor_test_token_0123456789"


@pytest.fixture
async def gemini() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def replicate() -> AsyncIterator[ReplicateFake]:
    async with ReplicateFake(token=TOKEN) as server:
        yield server


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal() as server:
        yield server


def _by_subject(findings: list[Finding]) -> dict[str, Finding]:
    return {f.subject: f for f in findings}


async def _services(make_settings: Any, **settings: Any) -> Services:
    return wire(make_settings(allow_http_hosts=["127.0.0.1"], **settings))


async def _stale_gemini(make_settings: Any, gemini: FakeGemini, tmp_path: Any) -> Services:
    """Gemini with an operator's catalog still naming Nano Banana Pro's shut-down preview id."""
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[[models.nano-banana-pro.providers]]\nprovider = "gemini"\n'
        'model = "gemini-3-pro-image-preview"\n'
    )
    return await _services(
        make_settings, gemini_api_key=gemini.api_key, gemini_api_url=gemini.base_url, catalog=path
    )


async def test_all_good_on_gemini_with_the_shipped_catalog(make_settings, gemini) -> None:
    services = await _services(
        make_settings, gemini_api_key=gemini.api_key, gemini_api_url=gemini.base_url
    )
    findings = _by_subject(await live_check(services.catalog, services.providers))
    assert findings["nano-banana-pro@gemini"].ok is True
    assert findings["nano-banana-2@gemini"].ok is True
    assert findings["nano-banana@gemini"].ok is True
    assert findings["veo-3.1@gemini"].ok is True
    # Retired ids are listed with their reason and never asked about.
    assert findings["veo-3@gemini"].ok is None
    assert "retired" in findings["veo-3@gemini"].text
    asked = {c.path for c in gemini.requests}
    assert "/v1beta/models/veo-3.0-generate-001" not in asked
    assert findings["fal"].ok is None and "set FAL_KEY" in findings["fal"].text
    assert take_out_missing(services.router, list(findings.values())) == []
    await services.aclose()


async def test_a_bad_key_is_one_line_naming_the_provider(make_settings, gemini) -> None:
    services = await _services(
        make_settings, gemini_api_key="not-the-key-0123456789", gemini_api_url=gemini.base_url
    )
    findings = _by_subject(await live_check(services.catalog, services.providers))
    assert findings["gemini"].ok is False
    assert "the key was refused" in findings["gemini"].text
    assert "not-the-key" not in findings["gemini"].line()
    assert not any(k.endswith("@gemini") and f.ok for k, f in findings.items())
    await services.aclose()


async def test_a_model_the_provider_does_not_know_leaves_routing(
    make_settings, gemini, tmp_path
) -> None:
    services = await _stale_gemini(make_settings, gemini, tmp_path)
    findings = _by_subject(await live_check(services.catalog, services.providers))
    stale = findings["nano-banana-pro@gemini"]
    assert stale.ok is False and "gemini-3-pro-image-preview does not exist" in stale.text
    assert "set its current id" in stale.text
    assert take_out_missing(services.router, list(findings.values())) == ["nano-banana-pro@gemini"]
    (models,) = await Chat(services).command("tierbot", "models")
    assert "gemini-3-pro-image-preview does not exist at gemini" in models.text
    route = services.router.route(RouteContext(stage=Stage.FINAL))
    assert all(c.key != "nano-banana-pro@gemini" for c in route.candidates)
    await services.aclose()


async def test_replicate_and_fal_say_which_ids_they_know(make_settings, replicate, fal) -> None:
    services = await _services(
        make_settings,
        replicate_api_token=TOKEN,
        replicate_api_url=replicate.base_url,
        fal_key=fal.key,
        fal_queue_url=fal.url,
        fal_api_url=fal.url,
    )
    fal.deprecated_endpoints.add("fal-ai/seedvr/upscale/image")
    findings = _by_subject(await live_check(services.catalog, services.providers))
    assert findings["seedream-4@replicate"].ok is True
    assert findings["nano-banana-pro@replicate"].ok is True
    assert findings["seedream-4.5@replicate"].ok is True
    assert findings["veo-3@replicate"].ok is True
    assert findings["veo-3.1@replicate"].ok is True
    assert findings["nano-banana-pro@fal"].ok is True
    assert findings["seedvr-upscale@fal"].ok is False  # listed as deprecated
    assert findings["veo-3@fal"].ok is None  # retired in the catalog: not asked
    await services.aclose()


async def test_a_wrong_replicate_token_is_reported(make_settings, replicate) -> None:
    services = await _services(
        make_settings, replicate_api_token="r8_wrong", replicate_api_url=replicate.base_url
    )
    findings = _by_subject(await live_check(services.catalog, services.providers))
    assert findings["replicate"].ok is False and "refused" in findings["replicate"].text
    await services.aclose()


async def test_seedream_on_replicate_is_never_sent_4_by_5(make_settings, replicate) -> None:
    """Replicate's Seedream enum has no 4:5 (its fake answers 422): the router takes fal's
    Seedream or another model, and with --model pinned to Replicate refuses before spending."""
    services = await _services(
        make_settings, replicate_api_token=TOKEN, replicate_api_url=replicate.base_url
    )
    with pytest.raises(RouteRefused, match=r"seedream-4@replicate does not render 4:5"):
        services.router.route(
            RouteContext(
                stage=Stage.FINAL, explicit_model="seedream-4@replicate", aspect_ratio="4:5"
            )
        )
    route = services.router.route(RouteContext(stage=Stage.FINAL, aspect_ratio="4:5"))
    assert all(c.key != "seedream-4@replicate" for c in route.candidates)
    refused = await Chat(services).command("draft", "a mug --ar 4:5 --model seedream-4@replicate")
    assert refused[0].private and "does not render 4:5" in refused[0].text
    assert services.store.db.execute("select count(*) from ledger").fetchone()[0] == 0
    await services.aclose()


async def test_a_final_is_rendered_and_charged_at_the_resolution_asked(make_settings, fal) -> None:
    services = await _services(
        make_settings, fal_key=fal.key, fal_queue_url=fal.url, fal_api_url=fal.url
    )
    chat = Chat(services)
    (_, grid) = await chat.command("draft", "a blue mug --n 1 --model local-draft")
    (status, final) = await chat.command(
        "tierbot", f"final {grid.asset_id} 1 --model nano-banana-pro@fal --res 4k"
    )
    assert "30 credits" in status.text  # the price shown is the 4K price...
    (submit,) = [c for c in fal.calls if c.op == "submit"]
    assert submit.path == "/fal-ai/nano-banana-pro/edit"
    assert submit.body["resolution"] == "4K"
    asset = services.store.get_asset(final.asset_id)
    assert max(asset["width"], asset["height"]) == 4 * FAL_LONG_EDGE  # 4K, scaled down
    spent = services.store.db.execute(
        "select amount from ledger where state = 'settled' and job_id in "
        "(select id from jobs where model_id = 'nano-banana-pro')"
    ).fetchone()[0]
    assert spent == 30_000  # ...and the price charged
    await services.aclose()


async def test_tierbot_run_checks_in_the_background_and_routes_around_a_missing_id(
    make_settings, gemini, tmp_path, capsys
) -> None:
    from adapters.shell import _check_providers

    services = await _stale_gemini(make_settings, gemini, tmp_path)
    chat = Chat(services)
    (_, grid) = await chat.command("draft", "a kite --n 1 --model local-draft")
    await _check_providers(services)  # what `tierbot run` starts at start-up
    assert "nano-banana-pro@gemini out of routing" in capsys.readouterr().out
    # The preferred final model would be first; it is skipped, and the next one that exists
    # renders the final. No call reaches the shut-down id.
    (status, final) = await chat.command("tierbot", f"final {grid.asset_id} 1")
    assert "final on nano-banana-2@gemini" in status.text
    assert not [r for r in gemini.requests if "pro-image-preview:generate" in r.path]
    assert final.text.startswith("✨ Final")
    await services.aclose()
