"""The job runner: retries, Retry-After, fallback, permanent and policy errors, durability."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import adapters
from bot.domain import Capability, Stage
from bot.providers import ContentPolicyError, GenerationRequest, PermanentError, TransientError
from bot.runner import JobFailed, JobPlan
from tests.conftest import ScriptedProvider, registry_with

CATALOG = """
[providers.scripted]
concurrency = 2

[models.alpha]
provider = "scripted"
provider_model = "alpha-v1"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 1000

[models.beta]
provider = "fallback"
provider_model = "beta-v1"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 3000
"""


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


@pytest.fixture
def wire(make_settings, catalog_file):
    built = []

    def make(alpha: ScriptedProvider, beta: ScriptedProvider | None = None):
        settings = make_settings(catalog=catalog_file, retries=2)
        providers = registry_with(
            settings, scripted=alpha, fallback=beta or ScriptedProvider("fallback")
        )
        services = adapters.wire(settings, providers=providers)
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        services.runner.sleep = fake_sleep
        services.sleeps = sleeps  # type: ignore[attr-defined]
        built.append(services)
        return services

    yield make
    for services in built:
        services.store.close()


def plan(services, candidates=("alpha", "beta"), n=2) -> JobPlan:
    request_id = services.store.create_request(
        origin={"surface": "test", "team": "T1", "channel": "C1", "user": "u"},
        command="draft",
        prompt="a fox",
        options={},
    )
    return JobPlan(
        request_id=request_id,
        team="T1",
        channel="C1",
        request=GenerationRequest(
            job_id="",
            stage=Stage.DRAFT,
            capability=Capability.TEXT_TO_IMAGE,
            model_id="",
            provider_model="",
            prompt="a fox",
            n=n,
            seed=10,
        ),
        inputs=[],
        candidates=[services.catalog.candidate(c) for c in candidates],
        reason="test",
    )


def ledger_rows(services):
    return list(services.store.db["ledger"].rows_where(order_by="created_at"))


async def test_success_stores_assets_request_id_and_settles_once(wire):
    alpha = ScriptedProvider("scripted")
    services = wire(alpha)
    done = await services.runner.run(plan(services))
    job = services.store.get_job(done.job_id)
    assert job["state"] == "succeeded"
    assert job["provider_request_id"] == "scripted-req-1"
    assert [a["seed"] for a in map(services.store.get_asset, done.asset_ids)] == [10, 11]
    assert [(r["state"], r["amount"]) for r in ledger_rows(services)] == [("settled", 2000)]
    assert alpha.submits[0].provider_model == "alpha-v1"


async def test_transient_error_is_retried_honouring_retry_after(wire):
    alpha = ScriptedProvider("scripted", [TransientError("429 slow down", retry_after=7)])
    services = wire(alpha)
    done = await services.runner.run(plan(services))
    assert services.sleeps == [7]
    assert len(alpha.submits) == 2  # the failed generation is submitted afresh
    assert services.store.get_job(done.job_id)["attempts"] == 2
    assert [r["state"] for r in ledger_rows(services)] == ["settled"]


async def test_backoff_grows_without_retry_after(wire):
    alpha = ScriptedProvider("scripted", [TransientError("503"), TransientError("503")])
    services = wire(alpha)
    await services.runner.run(plan(services))
    assert len(services.sleeps) == 2
    assert all(0 < s <= services.settings.max_backoff_s for s in services.sleeps)


async def test_exhausted_retries_fall_back_to_next_candidate(wire):
    alpha = ScriptedProvider("scripted", [TransientError("500")] * 3)
    beta = ScriptedProvider("fallback")
    services = wire(alpha, beta)
    done = await services.runner.run(plan(services))
    assert done.model.id == "beta"
    assert len(alpha.submits) == 3 and len(beta.submits) == 1
    states = [(r["model_id"], r["state"]) for r in ledger_rows(services)]
    assert states == [("alpha", "released"), ("beta", "settled")]
    jobs = services.store.jobs_for_request(done.request_id)
    assert [(j["model_id"], j["state"], j["error_kind"]) for j in jobs] == [
        ("alpha", "failed", "transient"),
        ("beta", "succeeded", None),
    ]


async def test_repeated_failures_cool_a_model_down(wire):
    alpha = ScriptedProvider("scripted", [TransientError("500")] * 9)
    services = wire(alpha)
    for _ in range(3):
        await services.runner.run(plan(services))
    assert services.router.health.cooling_for("alpha@scripted") > 0


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (PermanentError("400 invalid aspect ratio"), "permanent"),
        (ContentPolicyError("IMAGE_SAFETY"), "policy"),
    ],
)
async def test_permanent_and_policy_errors_fail_at_once_without_fallback(wire, error, kind):
    alpha = ScriptedProvider("scripted", [error])
    beta = ScriptedProvider("fallback")
    services = wire(alpha, beta)
    with pytest.raises(JobFailed) as failed:
        await services.runner.run(plan(services))
    assert failed.value.kind == kind
    assert error.message in failed.value.message
    assert len(alpha.submits) == 1 and beta.submits == [] and services.sleeps == []
    assert [r["state"] for r in ledger_rows(services)] == ["released"]


async def test_job_interrupted_mid_flight_completes_once_after_restart(wire):
    alpha = ScriptedProvider("scripted")
    alpha.gate = asyncio.Event()  # never set: the first runner stops while waiting
    services = wire(alpha)
    task = asyncio.create_task(services.runner.run(plan(services)))
    await alpha.entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (job,) = services.store.unfinished_jobs()
    assert job["state"] == "running" and job["provider_request_id"] == "scripted-req-1"
    services.store.close()

    after = ScriptedProvider("scripted")
    restarted = wire(after)
    outcomes = await restarted.runner.resume()
    assert len(outcomes) == 1 and outcomes[0].job_id == job["id"]
    assert after.submits == []  # polled by the stored id, not paid for again
    assert after.results == ["scripted-req-1"]
    assert [(r["state"], r["amount"]) for r in ledger_rows(restarted)] == [("settled", 2000)]
    assert len(restarted.store.assets_for_job(job["id"])) == 2
    assert await restarted.runner.resume() == []  # nothing left: never twice


async def test_queued_job_without_request_id_is_resubmitted_on_resume(wire):
    alpha = ScriptedProvider("scripted")
    services = wire(alpha)
    job_id = services.runner._reserve(**_reserve_args(services))
    assert await services.runner.resume() == []  # this live process holds it: not doubled
    outcomes = await services.runner.resume([job_id])  # its owner drives it
    assert [o.job_id for o in outcomes] == [job_id]
    assert len(alpha.submits) == 1


def _reserve_args(services):
    p = plan(services)
    return dict(
        request_id=p.request_id,
        team=p.team,
        channel=p.channel,
        request=p.request,
        inputs=p.inputs,
        candidates=p.candidates,
        reason=p.reason,
        prices={},
    )


async def test_cancel_stops_a_running_job_and_releases_credits(wire):
    alpha = ScriptedProvider("scripted")
    alpha.gate = asyncio.Event()
    services = wire(alpha)
    task = asyncio.create_task(services.runner.run(plan(services)))
    await alpha.entered.wait()
    (job,) = services.store.unfinished_jobs()
    assert await services.runner.cancel(job["id"]) is True
    with pytest.raises(asyncio.CancelledError):
        await task
    assert services.store.get_job(job["id"])["state"] == "cancelled"
    assert alpha.cancelled == ["scripted-req-1"]
    assert [r["state"] for r in ledger_rows(services)] == ["released"]
    assert await services.runner.cancel(job["id"]) is False


async def test_concurrency_is_limited_per_provider(wire):
    alpha = ScriptedProvider("scripted")
    alpha.gate = asyncio.Event()
    services = wire(alpha)
    tasks = [
        asyncio.create_task(services.runner.run(plan(services, ("alpha",), n=1))) for _ in range(5)
    ]
    await alpha.entered.wait()
    await asyncio.sleep(0.05)
    assert len(alpha.results) == 2  # catalog: [providers.scripted] concurrency = 2
    alpha.gate.set()
    await asyncio.gather(*tasks)
    assert len(alpha.results) == 5


async def test_progress_reaches_the_listener_of_the_task_that_started_the_job(wire):
    from bot import progress

    alpha = ScriptedProvider("scripted", [TransientError("503", retry_after=2)])
    beta = ScriptedProvider("fallback", [PermanentError("400 nope")])
    services = wire(alpha, beta)
    seen: list[tuple[str, str | None]] = []

    async def run_with_listener(candidates):
        progress.listen(lambda job_id, state, detail: seen.append((state, detail)))
        return await services.runner.run(plan(services, candidates))

    await asyncio.create_task(run_with_listener(("alpha",)))
    assert [s for s, _ in seen] == ["queued", "running", "retrying", "succeeded"]
    assert seen[2][1] == "503; retrying in 2 s"
    seen.clear()
    with pytest.raises(JobFailed):
        await asyncio.create_task(run_with_listener(("beta",)))
    assert seen[-1] == ("failed", "400 nope")
    await services.runner.run(plan(services, ("alpha",)))  # no listener here: nothing reported
    assert seen[-1] == ("failed", "400 nope")
