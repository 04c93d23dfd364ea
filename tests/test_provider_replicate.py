"""The replicate provider end to end: the real adapter, driven through the core like a chat
surface, against a fake Replicate on 127.0.0.1 (tests/fakes/replicate_fake.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from bot.app import Services
from bot.domain import Reply
from bot.runner import CompletedJob
from bot.settings import Settings
from tests.conftest import Chat
from tests.fakes.replicate_fake import DEFAULT_TOKEN, REFUSAL, ReplicateFake
from tests.provider_rig import ProviderRig

TOKEN = DEFAULT_TOKEN

UPSCALER_VERSION = "f" * 64

# Test models on the replicate provider, in the catalog's short form. The drafts are cheaper
# than the shipped local-draft, so the router puts them first and falls back between them.
CATALOG = f"""
[models.t-replicate-draft]
provider = "replicate"
provider_model = "google/nano-banana"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 100
max_images = 4
seed = false              # a catalog fact: Replicate's nano-banana takes no seed

[models.t-replicate-draft-b]
provider = "replicate"
provider_model = "bytedance/seedream-4"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 200
max_images = 4
seed = false

[models.t-replicate-final]
provider = "replicate"
provider_model = "google/nano-banana-pro"
stages = ["final", "edit"]
capabilities = ["text-to-image", "image-to-image"]
price = 1000
max_images = 1
seed = false
resolutions = ["1k", "2k", "4k"]
default_resolution = "2k"
prices = {{ "4k" = 2000 }}

[models.t-replicate-video]
provider = "replicate"
provider_model = "google/veo-3.1"
stages = ["video"]
capabilities = ["image-to-video"]
aspect_ratios = ["16:9", "9:16"]
price = 500
unit = "second"
max_seconds = 8
audio = false

# A community model pinned to a version: created with POST /v1/predictions {{"version": ...}}.
[models.t-replicate-upscale]
provider = "replicate"
provider_model = "nightmareai/real-esrgan:{UPSCALER_VERSION}"
stages = ["upscale"]
capabilities = ["upscale"]
price = 300
"""

CREATE_NANO = "/v1/models/google/nano-banana/predictions"
CREATE_SEEDREAM = "/v1/models/bytedance/seedream-4/predictions"


@pytest.fixture
async def fake() -> AsyncIterator[ReplicateFake]:
    async with ReplicateFake(token=TOKEN) as server:
        yield server


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(CATALOG, encoding="utf-8")
    return path


@pytest.fixture
async def wire(
    make_settings: Callable[..., Settings], catalog_file: Path, fake: ReplicateFake
) -> AsyncIterator[Callable[..., Services]]:
    """Build the real core with the replicate adapter pointed at the fake.

    The runner's backoff is recorded instead of slept (``services.sleeps``).
    """
    async with ProviderRig(
        make_settings,
        replicate_api_token=TOKEN,
        replicate_api_url=fake.base_url,
        catalog=catalog_file,
    ) as rig:
        yield rig.build


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def jobs(services: Services, request_id: str) -> list[tuple[str, str, str | None]]:
    return [
        (j["model_id"], j["state"], j["error_kind"])
        for j in services.store.jobs_for_request(request_id)
    ]


def ledger(services: Services) -> list[tuple[str, str, int]]:
    rows = services.store.db["ledger"].rows_where(order_by="created_at")
    return [(r["model_id"], r["state"], r["amount"]) for r in rows]


def only_request_id(services: Services) -> str:
    (request,) = services.store.db["requests"].rows
    return request["id"]


async def job_with_prediction(services: Services, timeout: float = 5.0) -> dict[str, Any]:
    """Wait until the runner has stored a job's provider request id; return the job row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        unfinished = [j for j in services.store.unfinished_jobs() if j["provider_request_id"]]
        if unfinished:
            return unfinished[0]
        await asyncio.sleep(0.01)
    raise TimeoutError("no job got a provider request id")


# --------------------------------------------------------------------------- success


async def test_draft_final_and_video_send_the_right_calls_and_store_real_files(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    services = wire()
    chat = Chat(services)
    store = services.store

    grid = grid_of(
        await chat.command(
            "draft", "a cat on a windowsill --ar 16:9 --n 2 --seed 7 --model t-replicate-draft"
        )
    )
    creates = fake.creates()
    assert [c.path for c in creates] == [CREATE_NANO, CREATE_NANO]  # one prediction per image
    for create in creates:
        assert create.headers["Authorization"] == f"Bearer {TOKEN}"
        # nano-banana takes no seed (spec §6), and its jpg default is overridden with png
        assert create.body == {
            "input": {
                "prompt": "a cat on a windowsill",
                "aspect_ratio": "16:9",
                "output_format": "png",
            }
        }
    drafts = store.parents(grid.asset_id)
    assert [(d["mime"], d["width"], d["height"]) for d in drafts] == [("image/png", 64, 36)] * 2
    (draft_job,) = store.jobs_for_request(drafts[0]["request_id"])
    assert draft_job["provider_request_id"].split(",") == list(fake.predictions)

    final = result_of(
        await chat.command("tierbot", f"final {grid.asset_id} 1 --model t-replicate-final")
    )
    final_create = fake.creates()[-1]
    assert final_create.path == "/v1/models/google/nano-banana-pro/predictions"
    final_input = final_create.body["input"]
    assert final_input["aspect_ratio"] == "match_input_image"  # keeps the draft's 16:9
    assert final_input["resolution"] == "2K"  # the catalog's default, said explicitly
    assert "seed" not in final_input  # a catalog fact: no seed input
    (reference,) = final_input["image_input"]
    assert reference.startswith("data:image/png;base64,")  # small: inline, not uploaded
    assert fake.resolve(reference) == services.files.path(drafts[0]["path"]).read_bytes()
    final_row = store.get_asset(final.asset_id)
    assert (final_row["mime"], final_row["width"], final_row["height"]) == ("image/png", 64, 36)
    assert final_row["seed"] == 7  # the draft's seed, kept by the core

    video = result_of(
        await chat.command("tierbot", f"video {final.asset_id} --model t-replicate-video")
    )
    video_create = fake.creates()[-1]
    assert video_create.path == "/v1/models/google/veo-3.1/predictions"
    video_input = video_create.body["input"]
    assert fake.resolve(video_input["image"]) == services.files.path(final_row["path"]).read_bytes()
    assert (video_input["seed"], video_input["duration"], video_input["aspect_ratio"]) == (
        7,
        4,
        "16:9",  # from the first frame's shape; the core asks 1:1, which Veo refuses
    )
    # Cost-driving defaults are never left to Replicate (Veo 3.1 defaults to 1080p and sound).
    assert (video_input["resolution"], video_input["generate_audio"]) == ("720p", False)
    video_row = store.get_asset(video.asset_id)
    assert (video_row["mime"], video_row["width"], video_row["height"]) == ("video/mp4", 64, 64)
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(video.files[0]))
    assert frames == 24 and round(seconds) == 1

    assert [state for _, state, _ in ledger(services)] == ["settled"] * 3
    assert fake.of("upload") == [] and fake.of("cancel") == []
    downloads = fake.of("download")
    assert len(downloads) == 4  # two drafts, the final, the video
    assert all("Authorization" not in d.headers for d in downloads)  # the key stays home
    assert services.sleeps == []  # type: ignore[attr-defined]


async def test_large_reference_is_uploaded_with_the_files_api(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.image_size, fake.noisy_images = 640, True  # drafts of ~1.2 MB: over the data URI limit
    services = wire()
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a noisy sky --n 1 --model t-replicate-draft"))
    (draft,) = services.store.parents(grid.asset_id)
    assert draft["bytes"] > 1_000_000

    result_of(await chat.command("tierbot", f"final {grid.asset_id} 1 --model t-replicate-final"))
    (upload,) = fake.of("upload")
    assert upload.body["content_type"] == "image/png" and upload.body["size"] == draft["bytes"]
    (reference,) = fake.creates()[-1].body["input"]["image_input"]
    assert reference.startswith(f"{fake.base_url}/v1/files/")
    assert fake.resolve(reference) == services.files.path(draft["path"]).read_bytes()


async def test_upscale_on_a_version_pinned_model(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    services = wire()
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a cat --n 1 --model t-replicate-draft"))
    (draft,) = services.store.parents(grid.asset_id)
    upscale = result_of(
        await chat.command("tierbot", f"upscale {draft['id']} --model t-replicate-upscale")
    )
    create = fake.creates()[-1]
    assert create.path == "/v1/predictions"
    assert create.body["version"] == UPSCALER_VERSION
    # 2048 px wanted from a 64 px draft: capped at 4x, what upscalers commonly take
    assert create.body["input"]["scale"] == 4.0
    assert fake.resolve(create.body["input"]["image"]) == (
        services.files.path(draft["path"]).read_bytes()
    )
    assert services.store.get_asset(upscale.asset_id)["mime"] == "image/png"


# --------------------------------------------------------------------------- transient


async def test_rate_limit_is_retried_after_the_providers_retry_after(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.fail_next(429, retry_after=3)
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft"))
    assert grid.asset_id
    assert services.sleeps == [3]  # type: ignore[attr-defined]
    assert len(fake.creates()) == 2
    (job,) = services.store.jobs_for_request(only_request_id(services))
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert ledger(services) == [("t-replicate-draft", "settled", 100)]


async def test_server_errors_exhaust_retries_then_fall_back_to_the_next_replicate_model(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.fail_next(500, times=3)
    services = wire()
    replies = await Chat(services).command("draft", "a cat --n 1")
    assert "fallback t-replicate-draft-b" in replies[0].text  # the router's plan
    grid = grid_of(replies)
    assert "t-replicate-draft-b" in grid.text
    assert [c.path for c in fake.creates()] == [CREATE_NANO] * 3 + [CREATE_SEEDREAM]
    assert len(services.sleeps) == 2  # type: ignore[attr-defined]
    assert jobs(services, only_request_id(services)) == [
        ("t-replicate-draft", "failed", "transient"),
        ("t-replicate-draft-b", "succeeded", None),
    ]
    assert ledger(services) == [
        ("t-replicate-draft", "released", 100),
        ("t-replicate-draft-b", "settled", 200),
    ]
    (draft,) = services.store.parents(grid.asset_id)
    assert draft["mime"] == "image/png"  # seedream's list output was understood


async def test_polling_hiccups_are_retried_inside_result_without_resubmitting(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.fail_next(503, op="get", times=2)
    fake.fail_next(429, op="get", retry_after=0.05)
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft"))
    assert grid.asset_id
    assert len(fake.creates()) == 1 and len(fake.of("get")) >= 5
    assert services.sleeps == []  # type: ignore[attr-defined]
    assert {0.02, 0.05} <= set(services.waits)  # type: ignore[attr-defined]  # Retry-After
    (job,) = services.store.jobs_for_request(only_request_id(services))
    assert job["attempts"] == 1


async def test_download_hiccups_are_retried_without_paying_again(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.fail_next(503, op="download", times=2)
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft"))
    assert grid.asset_id
    assert len(fake.creates()) == 1 and len(fake.of("download")) == 3
    assert services.sleeps == []  # type: ignore[attr-defined]


async def test_a_generation_over_the_time_limit_is_cancelled_and_retried(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.hold()
    services = wire(max_generation_s=0.1, retries=1)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft")
    assert replies[-1].text.startswith("⚠️ Failed")
    assert "did not finish within 0.1 s" in replies[-1].text
    assert len(fake.creates()) == 2
    cancelled = [r.path.split("/")[3] for r in fake.of("cancel")]
    assert sorted(cancelled) == sorted(fake.predictions)
    assert {p.status for p in fake.predictions.values()} == {"canceled"}
    assert [state for _, state, _ in ledger(services)] == ["released"]


# --------------------------------------------------------------------------- permanent


async def test_content_policy_refusal_is_shown_as_such_and_never_falls_back(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.refuse_next()
    services = wire()
    replies = await Chat(services).command("draft", "something forbidden --n 1")
    assert "fallback t-replicate-draft-b" in replies[0].text  # a fallback existed...
    refusal = replies[-1]
    assert refusal.error
    assert refusal.text.startswith("🚫 Refused by the provider's content policy")
    assert REFUSAL in refusal.text and "Nothing was charged" in refusal.text
    assert len(fake.creates()) == 1  # ...and was not used, nor was the model retried
    assert services.sleeps == []  # type: ignore[attr-defined]
    assert jobs(services, only_request_id(services)) == [("t-replicate-draft", "failed", "policy")]
    assert ledger(services) == [("t-replicate-draft", "released", 100)]


async def test_other_prediction_failures_are_transient(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.fail_prediction_next("CUDA out of memory. Tried to allocate 5.92 GiB (E1001)")
    services = wire()
    grid = grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft"))
    assert grid.asset_id
    assert len(fake.creates()) == 2 and len(services.sleeps) == 1  # type: ignore[attr-defined]


async def test_success_without_output_fails_with_a_clear_message(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.malformed_next()
    services = wire()
    replies = await Chat(services).command("draft", "a cat --n 1")
    assert replies[-1].text.startswith("⚠️ Failed")
    assert "succeeded but sent no output file" in replies[-1].text
    assert len(fake.creates()) == 1 and services.sleeps == []  # type: ignore[attr-defined]
    assert jobs(services, only_request_id(services)) == [
        ("t-replicate-draft", "failed", "permanent")
    ]
    assert ledger(services) == [("t-replicate-draft", "released", 100)]


async def test_output_over_the_download_limit_is_refused(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.output_next("too-large")
    services = wire(max_download_bytes=200_000)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft")
    assert replies[-1].text.startswith("⚠️ Failed")
    assert "MB, over the" in replies[-1].text and "TIERBOT_MAX_DOWNLOAD_BYTES" in replies[-1].text
    assert len(fake.creates()) == 1
    assert services.store.db["assets"].count == 0
    assert ledger(services) == [("t-replicate-draft", "released", 100)]


async def test_output_that_is_not_an_image_is_refused(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.output_next("not-image")
    services = wire()
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-replicate-draft")
    assert replies[-1].text.startswith("⚠️ Failed")
    assert "expected an image, the provider sent text/html" in replies[-1].text
    assert len(fake.creates()) == 1
    assert services.store.db["assets"].count == 0


async def test_bad_token_fails_at_once_with_replicates_message(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    services = wire(replicate_api_token="r8_not_the_right_token")
    replies = await Chat(services).command("draft", "a cat --n 1")
    assert replies[-1].text == (
        "⚠️ Failed: t-replicate-draft failed: HTTP 401: You did not pass a valid "
        "authentication token. Nothing was charged."
    )
    assert len(fake.creates()) == 1 and services.sleeps == []  # type: ignore[attr-defined]
    assert jobs(services, only_request_id(services)) == [
        ("t-replicate-draft", "failed", "permanent")
    ]


async def test_the_key_never_reaches_replies_logs_the_store_or_the_output_host(
    wire: Callable[..., Services], fake: ReplicateFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.echo_token_in_errors = True  # a careless provider echoing the key it was sent
    wrong = "r8_wrong_token_that_must_stay_secret"
    refused = await Chat(wire(replicate_api_token=wrong)).command("draft", "a cat --n 1")
    assert "[REPLICATE_API_TOKEN]" in refused[-1].text  # the echo was there, and scrubbed

    services = wire()
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a cat --n 1 --model t-replicate-draft"))
    replies = refused + await chat.command("tierbot", f"final {grid.asset_id} 1")
    texts = "\n".join(r.text for r in replies)
    stored = repr(list(services.store.db["jobs"].rows))
    for secret in (TOKEN, wrong):
        assert secret not in texts and secret not in caplog.text and secret not in stored
    downloads = fake.of("download")
    assert downloads and all("Authorization" not in d.headers for d in downloads)


# --------------------------------------------------------------------------- durability


async def test_restart_while_queued_resumes_by_the_stored_id_and_pays_once(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.hold()
    services = wire()
    task = asyncio.create_task(
        Chat(services).command("draft", "a lighthouse --n 1 --model t-replicate-draft")
    )
    job = await job_with_prediction(services)
    (prediction,) = fake.predictions.values()
    assert job["provider_request_id"] == prediction.id and prediction.status == "starting"
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await services.aclose()  # the process stops while Replicate still queues the prediction

    fake.release()
    restarted = wire()
    outcomes = await restarted.runner.resume()
    assert [type(o) for o in outcomes] == [CompletedJob]
    assert outcomes[0].job_id == job["id"]
    assert len(fake.creates()) == 1  # polled by the stored id, not paid for again
    assert restarted.store.get_job(job["id"])["state"] == "succeeded"
    assert ledger(restarted) == [("t-replicate-draft", "settled", 100)]
    (asset,) = restarted.store.assets_for_job(job["id"])
    assert asset["mime"] == "image/png"
    assert await restarted.runner.resume() == []


async def test_cancel_while_queued_cancels_the_prediction_and_releases_credits(
    wire: Callable[..., Services], fake: ReplicateFake
) -> None:
    fake.hold()
    services = wire()
    task = asyncio.create_task(
        Chat(services).command("draft", "a lighthouse --n 2 --model t-replicate-draft")
    )
    job = await job_with_prediction(services)
    assert await services.runner.cancel(job["id"]) is True
    with pytest.raises(asyncio.CancelledError):
        await task
    ids = job["provider_request_id"].split(",")
    assert len(ids) == 2
    assert [r.path for r in fake.of("cancel")] == [f"/v1/predictions/{i}/cancel" for i in ids]
    assert {fake.predictions[i].status for i in ids} == {"canceled"}
    assert services.store.get_job(job["id"])["state"] == "cancelled"
    assert ledger(services) == [("t-replicate-draft", "released", 200)]


# --------------------------------------------------------------------------- configuration


async def test_without_a_token_the_models_are_listed_as_unavailable(
    wire: Callable[..., Services],
) -> None:
    services = wire(replicate_api_token=None)
    (listing,) = await Chat(services).command("tierbot", "models")
    line = next(x for x in listing.text.splitlines() if x.startswith("t-replicate-draft ·"))
    assert line.endswith("unavailable: provider replicate not configured (set REPLICATE_API_TOKEN)")
