"""The fal adapter, driven through the real core and job runner against a fake fal queue API.

Every test builds the core with ``adapters.wire`` (so the adapter is found by its name in the
catalog), talks to it like a chat surface, and checks what the fake received and what the store
recorded: jobs, ledger rows and assets.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bot.app import Services
from bot.domain import Reply
from bot.runner import CompletedJob
from bot.settings import Settings
from tests.conftest import Chat
from tests.fakes.fal_fake import FakeFal
from tests.provider_rig import ProviderRig

# Test models on fal, in the catalog's short form. The shipped draft models that could outrank
# them (local-draft, z-image-turbo) are switched off so routing and fallback are predictable.
CATALOG = """
[models.local-draft]
enabled = false

[models.z-image-turbo]
enabled = false

[models.t-fal-draft]
provider = "fal"
provider_model = "fal-ai/nano-banana"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 1000
max_images = 4

# Drafts with reference images: dearer, so only chosen when references are given.
[models.t-fal-refs]
stages = ["draft"]
capabilities = ["text-to-image", "image-to-image"]
max_references = 3
price = 5000

[[models.t-fal-refs.providers]]
provider = "fal"
model = "fal-ai/nano-banana"
models = { "image-to-image" = "fal-ai/nano-banana/edit" }

[models.t-fal-backup]
provider = "fal"
provider_model = "fal-ai/z-image/turbo"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 2000
max_images = 4

[models.t-fal-final]
provider = "fal"
provider_model = "fal-ai/bytedance/seedream/v4/edit"
stages = ["final", "edit"]
capabilities = ["image-to-image"]
price = 5000
max_images = 1

[models.t-fal-upscale]
provider = "fal"
provider_model = "fal-ai/seedvr/upscale/image"
stages = ["upscale"]
capabilities = ["upscale"]
price = 1000

[models.t-fal-video]
provider = "fal"
provider_model = "fal-ai/veo3.1/image-to-video"
stages = ["video"]
capabilities = ["image-to-video"]
price = 1000
unit = "second"
max_seconds = 8
"""


@pytest.fixture
async def fal() -> AsyncIterator[FakeFal]:
    async with FakeFal() as fake:
        yield fake


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


@pytest.fixture
async def wire(
    fal: FakeFal, make_settings: Callable[..., Settings], catalog_file: Path
) -> AsyncIterator[Callable[..., Services]]:
    """Build the real core wired to the fake; the runner's backoff sleeps are recorded."""
    async with ProviderRig(
        make_settings, fal_key=fal.key, fal_queue_url=fal.url, catalog=catalog_file
    ) as rig:
        yield rig.build


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def all_jobs(services: Services) -> list[dict[str, Any]]:
    return [services.store.get_job(row["id"]) for row in services.store.db["jobs"].rows]


def ledger(services: Services) -> list[tuple[str, str, int]]:
    rows = services.store.db["ledger"].rows_where(order_by="created_at")
    return [(r["model_id"], r["state"], r["amount"]) for r in rows]


def data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"


async def submitted_job(services: Services) -> dict[str, Any]:
    """Wait until the runner has stored a fal request id on a job, and return the job."""
    for _ in range(500):
        jobs = [j for j in services.store.unfinished_jobs() if j["provider_request_id"]]
        if jobs:
            return jobs[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no job was submitted to fal")


# ------------------------------------------------------------------------------ success


async def test_draft_sends_prompt_ratio_and_seed_and_stores_the_images(fal, wire) -> None:
    services = wire()
    chat = Chat(services)
    grid = grid_of(
        await chat.command(
            "draft", "a red fox in snow --n 2 --ar 16:9 --seed 42 --model t-fal-draft"
        )
    )

    (generation,) = fal.submitted
    assert generation.endpoint == "fal-ai/nano-banana"
    assert generation.input == {
        "prompt": "a red fox in snow",
        "num_images": 2,
        "aspect_ratio": "16:9",
        "seed": 42,
        "output_format": "png",
    }
    (submit,) = fal.calls_of("submit")
    assert submit.headers["Authorization"] == f"Key {fal.key}"
    requests = f"/fal-ai/nano-banana/requests/{generation.request_id}"
    assert {c.path for c in fal.calls_of("status")} == {f"{requests}/status"}
    assert len(fal.calls_of("status")) == 3  # IN_QUEUE, IN_PROGRESS, COMPLETED
    assert [c.path for c in fal.calls_of("result")] == [requests]
    downloads = fal.calls_of("file")
    assert len(downloads) == 2
    assert all("Authorization" not in c.headers for c in downloads)  # the key stays at fal

    drafts = services.store.parents(grid.asset_id)
    assert [(d["mime"], d["width"], d["height"], d["seed"]) for d in drafts] == [
        ("image/png", 64, 36, 42)
    ] * 2
    (job,) = all_jobs(services)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert json.loads(job["provider_request_id"])["request_id"] == generation.request_id
    assert ledger(services) == [("t-fal-draft", "settled", 2000)]


async def test_a_draft_with_references_goes_to_the_edit_endpoint_at_the_asked_ratio(
    fal, wire
) -> None:
    services = wire()
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a mug --n 1 --ar 1:1"))
    (mug,) = services.store.parents(grid.asset_id)
    replies = await chat.command(
        "draft", f"the mug on a desk --n 1 --ar 16:9 --ref {mug['id']} --model t-fal-refs"
    )
    generation = fal.submitted[-1]
    assert generation.endpoint == "fal-ai/nano-banana/edit"
    assert len(generation.input["image_urls"]) == 1
    assert generation.input["image_urls"][0].startswith("data:image/png;base64,")
    assert generation.input["aspect_ratio"] == "16:9"  # the draft's ratio, not the mug's
    assert "Attached image 1: keep the same product" in generation.input["prompt"]
    (draft,) = services.store.parents(grid_of(replies).asset_id)
    assert draft["prompt"] == "the mug on a desk"


@pytest.mark.parametrize("url_style", ["fal", "missing", "foreign"])
async def test_final_upscale_and_video_send_the_reference_image(fal, wire, url_style) -> None:
    fal.url_style = url_style
    services = wire()
    chat = Chat(services)
    store, files = services.store, services.files
    grid = grid_of(
        await chat.command("draft", "a red fox --n 1 --ar 16:9 --seed 7 --model t-fal-draft")
    )
    (draft,) = store.parents(grid.asset_id)

    final = result_of(await chat.command("tierbot", f"final {grid.asset_id} 1 --model t-fal-final"))
    generation = fal.submitted[1]
    assert generation.endpoint == "fal-ai/bytedance/seedream/v4/edit"
    assert generation.input == {
        "prompt": "a red fox",
        "num_images": 1,
        "seed": 7,
        "image_size": {"width": 2736, "height": 1536},  # ~4 MP in the draft's 16:9
        "image_urls": [data_uri(files.path(draft["path"]), "image/png")],
    }
    final_row = store.get_asset(final.asset_id)
    assert (final_row["mime"], final_row["width"], final_row["height"]) == ("image/jpeg", 64, 36)

    upscale = result_of(
        await chat.command("tierbot", f"upscale {final.asset_id} --model t-fal-upscale")
    )
    generation = fal.submitted[2]
    assert generation.endpoint == "fal-ai/seedvr/upscale/image"
    assert generation.input == {
        "image_url": data_uri(files.path(final_row["path"]), "image/jpeg"),
        "upscale_factor": 4.0,  # 2048 px asked of a 64 px image, capped
        "seed": 7,
        "output_format": "png",
    }
    assert store.get_asset(upscale.asset_id)["width"] == 128

    video = result_of(await chat.command("tierbot", f"video {final.asset_id} --model t-fal-video"))
    generation = fal.submitted[3]
    assert generation.endpoint == "fal-ai/veo3.1/image-to-video"
    assert generation.input == {
        "prompt": f"a red fox. {chat.services.catalog.motions['subtle'].adds}",
        "duration": "4s",
        "seed": 7,
        "image_url": data_uri(files.path(final_row["path"]), "image/jpeg"),
        "aspect_ratio": "auto",
        # Cost-driving defaults said explicitly: fal's are sound on and, for some, 1080p.
        "resolution": "720p",
        "generate_audio": False,
    }
    video_row = store.get_asset(video.asset_id)
    assert (video_row["mime"], video_row["width"], video_row["height"]) == ("video/mp4", 64, 64)
    assert video_row["duration_s"] == pytest.approx(1.0, abs=0.1)

    # Status, result and cancel live under owner/app, whatever the endpoint's sub-path, and the
    # key only ever went to the configured origin (never to a foreign URL fal might return).
    apps = {c.path.split("/requests/")[0] for c in fal.calls_of("status") + fal.calls_of("result")}
    assert apps == {"/fal-ai/nano-banana", "/fal-ai/bytedance", "/fal-ai/seedvr", "/fal-ai/veo3.1"}
    assert {c.headers["Host"] for c in fal.calls} == {fal.url.removeprefix("http://")}
    assert [state for _, state, _ in ledger(services)] == ["settled"] * 4


# ------------------------------------------------------------------------ transient errors


async def test_rate_limit_is_retried_after_the_providers_retry_after(fal, wire) -> None:
    fal.fail_next(429, op="submit", retry_after=3)
    services = wire()
    grid_of(await Chat(services).command("draft", "a cat --n 2 --model t-fal-draft"))
    assert services.sleeps == [3]
    assert len(fal.calls_of("submit")) == 2 and len(fal.submitted) == 1
    (job,) = all_jobs(services)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert ledger(services) == [("t-fal-draft", "settled", 2000)]


async def test_server_errors_fall_back_to_the_next_fal_model(fal, wire) -> None:
    fal.fail_next(500, op="submit", times=3)
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 2 --seed 5"))
    assert "t-fal-backup" in grid.text
    assert [c.path for c in fal.calls_of("submit")] == ["/fal-ai/nano-banana"] * 3 + [
        "/fal-ai/z-image/turbo"
    ]
    assert fal.submitted[0].input == {
        "prompt": "a cat",
        "num_images": 2,
        "output_format": "png",
        "seed": 5,
        "image_size": {"width": 1024, "height": 1024},
    }
    assert len(services.sleeps) == 2  # retries=2 on the first model, then the fallback
    request_id = services.store.get_asset(grid.asset_id)["request_id"]
    jobs = services.store.jobs_for_request(request_id)
    assert [(j["model_id"], j["state"], j["error_kind"]) for j in jobs] == [
        ("t-fal-draft", "failed", "transient"),
        ("t-fal-backup", "succeeded", None),
    ]
    assert "HTTP 500: Internal server error" in jobs[0]["last_error"]
    assert ledger(services) == [
        ("t-fal-draft", "released", 2000),
        ("t-fal-backup", "settled", 4000),
    ]


async def test_polling_hiccups_are_retried_inside_the_adapter(fal, wire) -> None:
    fal.fail_next(503, op="status", times=2)
    fal.fail_next(502, op="result", ingress=True)  # nginx page, no x-fal-request-id
    fal.fail_next(429, op="result", retry_after=0.05)
    fal.fail_next(503, op="file")  # fal's CDN
    services = wire()
    grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-fal-draft"))
    assert len(fal.submitted) == 1 and services.sleeps == []  # never paid for twice
    # The second hiccup in a row waits twice the first; Retry-After is honoured.
    assert {0.02, 0.05} <= set(services.waits)
    assert len(fal.calls_of("result")) == 3 and len(fal.calls_of("file")) == 2
    (job,) = all_jobs(services)
    assert job["state"] == "succeeded" and job["attempts"] == 1


@pytest.mark.parametrize("failure", ["completed_with_error", "model_5xx"])
async def test_a_failed_generation_is_submitted_again(fal, wire, failure) -> None:
    if failure == "completed_with_error":
        fal.next_outcome("infra_error")  # COMPLETED + error_type runner_disconnected
    else:
        fal.fail_next(500, op="result")  # the model's own error: x-fal-request-id set
    services = wire()
    grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-fal-draft"))
    assert len(fal.submitted) == 2 and len(services.sleeps) == 1
    failed, retried = fal.submitted
    fetched = {c.path.rsplit("/", 1)[1] for c in fal.calls_of("result")}
    # An error in the COMPLETED status is final: its result is not even fetched.
    assert (failed.request_id in fetched) is (failure == "model_5xx")
    assert retried.request_id in fetched
    (job,) = all_jobs(services)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert job["provider_request_id"] and fal.submitted[1].request_id in job["provider_request_id"]
    assert ledger(services) == [("t-fal-draft", "settled", 1000)]


async def test_a_generation_that_takes_too_long_is_cancelled_at_fal(fal, wire) -> None:
    fal.hold()
    services = wire(max_generation_s=0.2, retries=0)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-fal-draft")
    assert replies[-1].text.startswith("⚠️ Failed: t-fal-draft failed: fal did not finish")
    (generation,) = fal.submitted
    assert [c.path for c in fal.calls_of("cancel")] == [
        f"/fal-ai/nano-banana/requests/{generation.request_id}/cancel"
    ]
    assert ledger(services) == [("t-fal-draft", "released", 1000)]


# ---------------------------------------------------------------- permanent and policy


@pytest.mark.parametrize("outcome", ["content_policy", "nsfw"])
async def test_content_policy_refusal_is_shown_and_not_retried_elsewhere(
    fal, wire, outcome
) -> None:
    fal.next_outcome(outcome)
    services = wire()
    replies = await Chat(services).command("draft", "a cat --n 2")  # t-fal-backup could serve
    failure = replies[-1]
    assert failure.error
    assert failure.text.startswith("🚫 Refused by the provider's content policy")
    assert failure.text.endswith("Nothing was charged.")
    assert len(fal.submitted) == 1 and services.sleeps == []
    assert ledger(services) == [("t-fal-draft", "released", 2000)]
    (job,) = all_jobs(services)
    assert (job["state"], job["error_kind"]) == ("failed", "policy")


async def test_nsfw_flagged_images_are_dropped_and_not_charged(fal, wire) -> None:
    fal.next_outcome("nsfw_some")  # the second of two images is flagged
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 2 --model t-fal-draft"))
    assert len(services.store.parents(grid.asset_id)) == 1
    assert ledger(services) == [("t-fal-draft", "settled", 1000)]


@pytest.mark.parametrize(
    ("outcome", "reason"),
    [
        ("malformed", "fal's result has an output without a URL"),
        ("validation_error", "HTTP 422: prompt: field required"),
        ("not_image", "expected an image, the provider sent text/html"),
        ("corrupt", "the provider sent something that is not a readable image"),
    ],
)
async def test_bad_results_fail_at_once_with_a_clear_reason(fal, wire, outcome, reason) -> None:
    fal.next_outcome(outcome)
    services = wire()
    replies = await Chat(services).command("draft", "a cat --n 1")
    assert replies[-1].text.startswith("⚠️ Failed: t-fal-draft failed: ")
    assert reason in replies[-1].text
    assert len(fal.submitted) == 1 and services.sleeps == []  # no retry, no fallback
    assert ledger(services) == [("t-fal-draft", "released", 1000)]


async def test_an_output_over_the_download_limit_is_refused(fal, wire) -> None:
    services = wire(max_download_bytes=200_000)
    chat = Chat(services)
    grid_of(await chat.command("draft", "a cat --n 1 --model t-fal-draft"))  # small: fine
    fal.next_outcome("too_large")
    replies = await chat.command("draft", "a dog --n 1 --model t-fal-draft")
    assert "MB limit (TIERBOT_MAX_DOWNLOAD_BYTES)" in replies[-1].text
    assert [state for _, state, _ in ledger(services)] == ["settled", "released"]


async def test_bad_key_fails_at_once_with_fals_reason(fal, wire) -> None:
    services = wire(fal_key="not-the-right-key")
    replies = await Chat(services).command("draft", "a cat --n 1")
    assert replies[-1].text == (
        "⚠️ Failed: t-fal-draft failed: fal refused the credentials (check FAL_KEY): "
        "HTTP 403: Invalid API key. Nothing was charged."
    )
    assert len(fal.calls_of("submit")) == 1 and services.sleeps == []  # no retry, no fallback


async def test_the_key_never_appears_in_replies_logs_or_the_database(fal, wire, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = fal.key.split(":")[1]
    fal.fail_next(400, op="submit", detail=f"bad request for key {fal.key} ({secret})")
    fal.fail_next(503, op="status")
    services = wire()
    chat = Chat(services)
    replies = await chat.command("draft", "a cat --n 1 --model t-fal-draft")
    assert "bad request for key [redacted]" in replies[-1].text
    replies += await chat.command("draft", "a dog --n 1 --model t-fal-draft")
    fal.hold()
    task = asyncio.create_task(chat.command("draft", "a cow --n 1 --model t-fal-draft"))
    job = await submitted_job(services)
    await services.runner.cancel(job["id"])
    with contextlib.suppress(asyncio.CancelledError):
        await task
    texts = " ".join(r.text for r in replies)
    database = b"".join(p.read_bytes() for p in services.settings.data_dir.glob("tierbot.db*"))
    for leak in (fal.key, secret, fal.key.split(":")[0]):
        assert leak not in texts
        assert leak not in caplog.text
        assert leak.encode() not in database
    assert "fal: job" in caplog.text  # the adapter did log


# ------------------------------------------------------------------- restart and cancel


async def test_restart_while_queued_resumes_polling_without_paying_twice(fal, wire) -> None:
    fal.hold()
    services = wire()
    task = asyncio.create_task(Chat(services).command("draft", "a cat --n 2 --model t-fal-draft"))
    job = await submitted_job(services)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await services.aclose()

    fal.release()
    restarted = wire()
    (outcome,) = await restarted.runner.resume()
    assert isinstance(outcome, CompletedJob) and outcome.job_id == job["id"]
    assert len(fal.submitted) == 1  # polled by the stored id, not submitted again
    assert len(restarted.store.assets_for_job(job["id"])) == 2
    assert ledger(restarted) == [("t-fal-draft", "settled", 2000)]
    assert restarted.store.unfinished_jobs() == []


async def test_cancel_while_queued_calls_fals_cancel_and_releases_credits(fal, wire) -> None:
    fal.hold()
    services = wire()
    task = asyncio.create_task(Chat(services).command("draft", "a cat --n 2 --model t-fal-draft"))
    job = await submitted_job(services)
    assert await services.runner.cancel(job["id"]) is True
    with contextlib.suppress(asyncio.CancelledError):
        await task
    (generation,) = fal.submitted
    (cancel,) = fal.calls_of("cancel")
    assert (cancel.method, cancel.path) == (
        "PUT",
        f"/fal-ai/nano-banana/requests/{generation.request_id}/cancel",
    )
    assert generation.cancelled
    assert services.store.get_job(job["id"])["state"] == "cancelled"
    assert ledger(services) == [("t-fal-draft", "released", 2000)]


# ------------------------------------------------------------------------ configuration


async def test_without_a_key_fal_models_are_unavailable_with_the_reason(wire) -> None:
    services = wire(fal_key=None)
    chat = Chat(services)
    (models,) = await chat.command("tierbot", "models")
    line = next(x for x in models.text.splitlines() if x.startswith("t-fal-draft"))
    assert line.endswith("unavailable: provider fal not configured (set FAL_KEY)")
    (refusal,) = await chat.command("draft", "a cat --model t-fal-draft")
    assert refusal.private and "not configured (set FAL_KEY)" in refusal.text
