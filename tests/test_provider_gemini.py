"""The gemini adapter driven through the real core and job runner, against a fake Gemini API.

Every test builds the real services with ``adapters.wire`` (so the composition root finds
``adapters.providers.gemini`` by the provider name in the catalog), talks to them like a chat
surface, and asserts on what the fake received and what the store recorded.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from adapters import load_providers
from adapters.providers import gemini
from bot.app import Services
from bot.domain import Reply
from bot.providers import ProviderUnavailable
from bot.settings import Settings
from tests.conftest import Chat
from tests.fakes.gemini_fake import FakeGemini
from tests.provider_rig import ProviderRig

DRAFT_MODEL = "gemini-2.5-flash-image"
FALLBACK_MODEL = "gemini-3.1-flash-image"
FINAL_MODEL = "gemini-3-pro-image"
VIDEO_MODEL = "veo-3.1-generate-001"  # a current-looking id the fake serves

CATALOG = f"""
[models.t-gemini-draft]
provider = "gemini"
provider_model = "{DRAFT_MODEL}"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 500              # cheaper than the shipped drafts: routed first without --model
max_images = 4

[models.t-gemini-draft-b]
provider = "gemini"
provider_model = "{FALLBACK_MODEL}"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 800              # the fallback candidate
max_images = 4

[models.t-gemini-final]
provider = "gemini"
provider_model = "{FINAL_MODEL}"
stages = ["final", "edit"]
capabilities = ["text-to-image", "image-to-image"]
price = 5000
max_images = 1

[models.t-gemini-video]
provider = "gemini"
provider_model = "{VIDEO_MODEL}"
stages = ["video"]
capabilities = ["image-to-video"]
price = 1000
unit = "second"
max_seconds = 8
"""

REFUSED = "🚫 Refused by the provider's content policy"
FAILED = "⚠️ Failed"


@pytest.fixture
async def fake() -> AsyncIterator[FakeGemini]:
    server = FakeGemini()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def wire(
    fake: FakeGemini, make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Callable[..., Services]]:
    """Builds real services wired to the fake; the runner's backoff is recorded, not slept."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    async with ProviderRig(
        make_settings, gemini_api_key=fake.api_key, gemini_api_url=fake.base_url, catalog=catalog
    ) as rig:
        yield rig.build


@pytest.fixture
def services(wire: Callable[..., Services]) -> Services:
    return wire()


@pytest.fixture
def chat(services: Services) -> Chat:
    return Chat(services)


# --------------------------------------------------------------------------- helpers


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def error_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.error)


def ledger(services: Services) -> list[tuple[str, str, int]]:
    return [
        (row["model_id"], row["state"], row["amount"])
        for row in services.store.db["ledger"].rows_where(order_by="created_at")
    ]


def jobs_of(services: Services, asset_id: str, stage: str | None = None) -> list[dict[str, Any]]:
    asset = services.store.get_asset(asset_id)
    assert asset is not None
    jobs = services.store.jobs_for_request(asset["request_id"])
    return [job for job in jobs if stage is None or job["stage"] == stage]


def all_jobs(services: Services) -> list[dict[str, Any]]:
    rows = services.store.db["jobs"].rows_where(order_by="created_at")
    return [services.store.get_job(row["id"]) for row in rows]  # type: ignore[misc]


def image_part(body: dict[str, Any]) -> dict[str, str]:
    return next(p["inlineData"] for p in body["contents"][0]["parts"] if "inlineData" in p)


def text_part(body: dict[str, Any]) -> str:
    return next(p["text"] for p in body["contents"][0]["parts"] if "text" in p)


async def make_final(chat: Chat) -> str:
    """A one-draft grid, then its final on the final model; the final's asset id."""
    grid = grid_of(await chat.command("draft", "a red fox in snow --n 1 --ar 16:9 --seed 42"))
    final = await chat.command("tierbot", f"final {grid.asset_id} 1 --model t-gemini-final")
    return result_of(final).asset_id


async def wait_for_request_id(services: Services, asset_id: str) -> dict[str, Any]:
    """The video job of ``asset_id``'s request, once its provider request id is stored."""
    for _ in range(500):
        jobs = [j for j in jobs_of(services, asset_id, "video") if j["provider_request_id"]]
        if jobs:
            return jobs[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the video job never stored a provider request id")


# --------------------------------------------------------------------------- configuration


def test_without_a_key_the_provider_is_unavailable_with_the_variable_to_set(make_settings):
    settings = make_settings()
    with pytest.raises(ProviderUnavailable, match=r"not configured \(set GEMINI_API_KEY\)"):
        gemini.create(settings)
    registry = load_providers({"gemini"}, settings)
    assert registry.why_unavailable("gemini") == "not configured (set GEMINI_API_KEY)"


# --------------------------------------------------------------------------- images


async def test_draft_and_final_send_prompt_ratio_seed_and_reference(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    replies = await chat.command(
        "draft", "a red fox in snow --n 2 --ar 16:9 --seed 42 --model t-gemini-draft"
    )
    grid = grid_of(replies)
    calls = fake.calls("generateContent")
    assert [c.path for c in calls] == [f"/v1beta/models/{DRAFT_MODEL}:generateContent"] * 2
    assert all(c.headers["x-goog-api-key"] == fake.api_key and not c.query for c in calls)
    for call in calls:
        assert text_part(call.body) == "a red fox in snow"
        config = call.body["generationConfig"]
        assert config["imageConfig"] == {"aspectRatio": "16:9"}  # 2.5 flash: no imageSize
        assert "IMAGE" in config["responseModalities"]
    assert sorted(c.body["generationConfig"]["seed"] for c in calls) == [42, 43]

    drafts = services.store.parents(grid.asset_id)
    assert [(d["mime"], d["width"], d["height"], d["seed"]) for d in drafts] == [
        ("image/png", 96, 54, 42),
        ("image/png", 96, 54, 43),
    ]
    (job,) = jobs_of(services, grid.asset_id)
    assert json.loads(job["provider_request_id"])["model"] == DRAFT_MODEL
    assert ledger(services) == [("t-gemini-draft", "settled", 1000)]

    fake.image_format = "JPEG"
    final = result_of(
        await chat.command("tierbot", f"final {grid.asset_id} 1 --model t-gemini-final")
    )
    (call,) = fake.calls("generateContent")[2:]
    assert call.path == f"/v1beta/models/{FINAL_MODEL}:generateContent"
    draft_bytes = services.files.path(drafts[0]["path"]).read_bytes()
    reference = image_part(call.body)
    assert reference["mimeType"] == "image/png"
    assert base64.b64decode(reference["data"]) == draft_bytes
    assert "a red fox in snow" in text_part(call.body)
    # The final keeps the draft's shape and seed.
    assert call.body["generationConfig"]["imageConfig"]["aspectRatio"] == "16:9"
    assert call.body["generationConfig"]["seed"] == 42
    asset = services.store.get_asset(final.asset_id)
    assert asset is not None and asset["mime"] == "image/jpeg" and asset["seed"] == 42
    assert services.store.unfinished_jobs() == []


async def test_thought_images_of_gemini_3_are_skipped(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    fake.next_image("thought")
    grid = grid_of(await chat.command("draft", "a cat --n 1 --model t-gemini-draft"))
    (draft,) = services.store.parents(grid.asset_id)
    assert (draft["width"], draft["height"]) == (96, 96)  # the real image, not the 8 px thought


@pytest.mark.parametrize(
    ("retry_after", "retry_delay", "expected"),
    [(7, None, 7.0), (None, "3s", 3.0)],
    ids=["retry-after-header", "retryinfo-body"],
)
async def test_rate_limit_then_success_honours_the_providers_delay(
    chat: Chat,
    fake: FakeGemini,
    services: Services,
    retry_after: float | None,
    retry_delay: str | None,
    expected: float,
) -> None:
    fake.fail_next(429, retry_after=retry_after, retry_delay=retry_delay, match=":generateContent")
    grid = grid_of(await chat.command("draft", "a cat --n 1 --model t-gemini-draft"))
    assert services.sleeps == [expected]  # type: ignore[attr-defined]
    assert len(fake.calls("generateContent")) == 2
    (job,) = jobs_of(services, grid.asset_id)
    assert job["state"] == "succeeded" and job["attempts"] == 2
    assert ledger(services) == [("t-gemini-draft", "settled", 500)]


async def test_server_errors_three_times_fall_back_to_the_next_gemini_model(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    fake.fail_next(500, times=3, match=":generateContent")
    grid = grid_of(await chat.command("draft", "a cat --n 1"))
    paths = [c.path for c in fake.calls("generateContent")]
    assert paths == [f"/v1beta/models/{DRAFT_MODEL}:generateContent"] * 3 + [
        f"/v1beta/models/{FALLBACK_MODEL}:generateContent"
    ]
    assert len(services.sleeps) == 2  # type: ignore[attr-defined]
    first, second = jobs_of(services, grid.asset_id)
    assert (first["model_id"], first["state"], first["error_kind"]) == (
        "t-gemini-draft",
        "failed",
        "transient",
    )
    assert "HTTP 500" in first["last_error"]
    assert (second["model_id"], second["state"]) == ("t-gemini-draft-b", "succeeded")
    assert ledger(services) == [
        ("t-gemini-draft", "released", 500),
        ("t-gemini-draft-b", "settled", 800),
    ]


@pytest.mark.parametrize(
    ("outcome", "reason", "shown"),
    [
        ("refuse", "IMAGE_SAFETY", "refused (IMAGE_SAFETY)"),
        ("refuse", "IMAGE_PROHIBITED_CONTENT", "Responsible AI practices"),
        ("block", "PROHIBITED_CONTENT", "blocked the prompt (PROHIBITED_CONTENT)"),
    ],
)
async def test_content_policy_refusal_is_shown_never_retried_never_charged(
    chat: Chat, fake: FakeGemini, services: Services, outcome: str, reason: str, shown: str
) -> None:
    fake.next_image(outcome, reason=reason)
    replies = await chat.command("draft", "something forbidden --n 1")
    error = error_of(replies)
    assert error.text.startswith(REFUSED) and shown in error.text
    assert "Nothing was charged" in error.text
    assert len(fake.calls("generateContent")) == 1  # no retry, no fallback candidate
    (job,) = all_jobs(services)
    assert (job["state"], job["error_kind"]) == ("failed", "policy")
    assert ledger(services) == [("t-gemini-draft", "released", 500)]
    assert services.sleeps == []  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        ("malformed", "answered without candidates or an image"),
        ("text_only", "answered with text instead of an image"),
        ("bad_base64", "not valid base64"),
        ("not_image", "not a readable image"),
    ],
)
async def test_malformed_or_unreadable_image_answer_fails_at_once(
    chat: Chat, fake: FakeGemini, services: Services, outcome: str, shown: str
) -> None:
    fake.next_image(outcome)
    error = error_of(await chat.command("draft", "a cat --n 1 --model t-gemini-draft"))
    assert error.text.startswith(FAILED) and shown in error.text
    assert len(fake.calls("generateContent")) == 1
    (job,) = all_jobs(services)
    assert job["error_kind"] == "permanent"
    assert ledger(services) == [("t-gemini-draft", "released", 500)]


async def test_no_image_this_time_is_retried(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    fake.next_image("no_image")
    grid = grid_of(await chat.command("draft", "a cat --n 1 --model t-gemini-draft"))
    assert len(fake.calls("generateContent")) == 2
    assert len(services.store.parents(grid.asset_id)) == 1


async def test_image_over_the_download_limit_is_refused(
    wire: Callable[..., Services], fake: FakeGemini
) -> None:
    services = wire(max_download_bytes=2000)  # the fake's PNGs are ~ 28 kB
    error = error_of(await Chat(services).command("draft", "a cat --n 1 --model t-gemini-draft"))
    assert error.text.startswith(FAILED) and "over the 2,000-byte limit" in error.text
    assert len(fake.calls("generateContent")) == 1
    assert ledger(services) == [("t-gemini-draft", "released", 500)]
    assert list(services.files.root.rglob("*.png")) == []


async def test_bad_key_fails_at_once_with_googles_message(
    wire: Callable[..., Services], fake: FakeGemini
) -> None:
    services = wire(gemini_api_key="AIza-not-the-right-key")
    error = error_of(await Chat(services).command("draft", "a cat --n 1"))
    assert error.text.startswith(FAILED)
    assert "HTTP 400: API key not valid. Please pass a valid API key." in error.text
    assert len(fake.calls("generateContent")) == 1  # no retry, no fallback
    assert services.sleeps == []  # type: ignore[attr-defined]
    (job,) = all_jobs(services)
    assert job["error_kind"] == "permanent"


async def test_the_key_never_reaches_replies_or_logs(
    chat: Chat, fake: FakeGemini, services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    replies = await chat.command("draft", "a cat --n 1 --model t-gemini-draft")
    fake.fail_next(429, retry_after=1, match=":generateContent")
    replies += await chat.command("draft", "a dog --n 1 --model t-gemini-draft")
    # A provider that quotes the key back: the adapter scrubs it from the message.
    fake.fail_next(400, message=f"key {fake.api_key} may not use this model")
    replies += await chat.command("draft", "a bird --n 1 --model t-gemini-draft")
    texts = "\n".join(r.text for r in replies)
    assert "[redacted] may not use this model" in texts
    assert fake.api_key not in texts
    assert fake.api_key not in caplog.text
    assert caplog.records  # the run did log (httpx, runner, adapter)


# --------------------------------------------------------------------------- videos


async def test_video_sends_the_first_frame_and_downloads_the_mp4(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    video = result_of(
        await chat.command("tierbot", f"video {final_id} --seconds 4 --model t-gemini-video")
    )
    (call,) = fake.calls("predictLongRunning")
    assert call.path == f"/v1beta/models/{VIDEO_MODEL}:predictLongRunning"
    final = services.store.get_asset(final_id)
    assert final is not None
    instance = call.body["instances"][0]
    assert instance["prompt"].startswith("a red fox in snow")
    frame = services.files.path(final["path"]).read_bytes()
    assert base64.b64decode(instance["image"]["bytesBase64Encoded"]) == frame
    assert instance["image"]["mimeType"] == "image/png"
    assert call.body["parameters"] == {
        "aspectRatio": "16:9",
        "sampleCount": 1,
        "durationSeconds": 4,
        "resolution": "720p",  # what the catalog prices, said explicitly
    }
    operation = next(iter(fake.operations))
    assert [p.path for p in fake.polls()] == [f"/v1beta/{operation}"] * 3  # 2 running, 1 done
    (download,) = fake.calls("download")
    assert download.headers["x-goog-api-key"] == fake.api_key
    asset = services.store.get_asset(video.asset_id)
    assert asset is not None
    assert (asset["kind"], asset["mime"], asset["width"], asset["height"]) == (
        "video",
        "video/mp4",
        64,
        64,
    )
    assert asset["duration_s"] == pytest.approx(1.0, abs=0.1)
    (job,) = jobs_of(services, final_id, "video")
    assert json.loads(job["provider_request_id"])["operation"] == operation
    assert ledger(services)[-1] == ("t-gemini-video", "settled", 1000)


async def test_video_redirected_to_storage_is_fetched_without_the_key(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.next_video("redirect")
    video = result_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    (storage,) = [r for r in fake.requests if r.path.startswith("/storage/")]
    assert "x-goog-api-key" not in {name.lower() for name in storage.headers}
    asset = services.store.get_asset(video.asset_id)
    assert asset is not None and asset["mime"] == "video/mp4"


async def test_inline_video_bytes_are_decoded(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.next_video("inline")
    video = result_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    assert fake.calls("download") == []
    asset = services.store.get_asset(video.asset_id)
    assert asset is not None and asset["mime"] == "video/mp4" and asset["width"] == 64


async def test_polling_hiccups_are_retried_inside_the_adapter(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.fail_next(503, times=2, match="/operations/")
    fake.fail_next(429, retry_after=0.05, match="/operations/")
    video = result_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    assert video.asset_id
    assert len(fake.calls("predictLongRunning")) == 1  # never resubmitted, never paid twice
    assert services.sleeps == []  # type: ignore[attr-defined]  # the runner saw no failure
    assert {0.02, 0.05} <= set(services.waits)  # type: ignore[attr-defined]  # Retry-After


async def test_failed_operation_is_resubmitted(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.next_video("error", code=13, message="Internal error encountered.")
    video = result_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    assert video.asset_id
    assert len(fake.calls("predictLongRunning")) == 2
    assert len(services.sleeps) == 1  # type: ignore[attr-defined]


async def test_filtered_video_is_a_policy_refusal(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.next_video("filtered", reasons=["The input image contains content that was blocked."])
    error = error_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    assert error.text.startswith(REFUSED)
    assert "The input image contains content that was blocked." in error.text
    assert len(fake.calls("predictLongRunning")) == 1
    assert ledger(services)[-1] == ("t-gemini-video", "released", 4000)


@pytest.mark.parametrize(
    ("outcome", "shown"),
    [
        ("huge", "over the 209,715,200-byte limit"),
        ("not_video", "expected a video, the provider sent text/html"),
        ("malformed", "neither a URI nor bytes"),
    ],
)
async def test_unusable_video_fails_at_once(
    chat: Chat, fake: FakeGemini, services: Services, outcome: str, shown: str
) -> None:
    final_id = await make_final(chat)
    fake.next_video(outcome, size=300 << 20)
    error = error_of(await chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    assert error.text.startswith(FAILED) and shown in error.text
    assert len(fake.calls("predictLongRunning")) == 1
    assert ledger(services)[-1] == ("t-gemini-video", "released", 4000)


async def test_restart_while_queued_resumes_the_same_operation(
    wire: Callable[..., Services], fake: FakeGemini
) -> None:
    first = wire()
    chat = Chat(first)
    final_id = await make_final(chat)
    fake.hold()
    task = asyncio.create_task(chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    job = await wait_for_request_id(first, final_id)
    task.cancel()  # the process dies while Veo still works
    await asyncio.gather(task, return_exceptions=True)
    await first.aclose()

    second = wire()
    assert [j["id"] for j in second.store.unfinished_jobs()] == [job["id"]]
    fake.release()
    (outcome,) = await second.runner.resume()
    assert outcome.job_id == job["id"] and len(outcome.asset_ids) == 1
    assert len(fake.calls("predictLongRunning")) == 1  # exactly one submission
    assert second.store.unfinished_jobs() == []
    rows = [r for r in second.store.db["ledger"].rows if r["job_id"] == job["id"]]
    assert [(r["state"], r["amount"]) for r in rows] == [("settled", 1000)]
    asset = second.store.get_asset(outcome.asset_ids[0])
    assert asset is not None and asset["mime"] == "video/mp4"


async def test_cancel_while_queued_calls_googles_cancel_and_releases_credits(
    chat: Chat, fake: FakeGemini, services: Services
) -> None:
    final_id = await make_final(chat)
    fake.hold()
    task = asyncio.create_task(chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    job = await wait_for_request_id(services, final_id)
    assert await services.runner.cancel(job["id"]) is True
    await asyncio.gather(task, return_exceptions=True)
    operation = json.loads(job["provider_request_id"])["operation"]
    (cancel,) = fake.calls("cancel")
    assert (cancel.method, cancel.path) == ("POST", f"/v1beta/{operation}:cancel")
    assert fake.operations[operation].cancelled
    row = services.store.get_job(job["id"])
    assert row is not None and row["state"] == "cancelled"
    assert services.store.ledger_entry(job["id"])["state"] == "released"  # type: ignore[index]
    fake.release()


async def test_operation_google_no_longer_knows_is_resubmitted_at_once(
    wire: Callable[..., Services], fake: FakeGemini
) -> None:
    first = wire()
    chat = Chat(first)
    final_id = await make_final(chat)
    fake.hold()
    task = asyncio.create_task(chat.command("tierbot", f"video {final_id} --model t-gemini-video"))
    job = await wait_for_request_id(first, final_id)
    task.cancel()  # the process dies while Veo still works...
    await asyncio.gather(task, return_exceptions=True)
    await first.aclose()
    lost = json.loads(job["provider_request_id"])["operation"]
    fake.operations.clear()  # ...and by the restart Google has forgotten the operation
    fake.release()

    second = wire()
    polls_before = len(fake.polls())
    (outcome,) = await second.runner.resume()
    assert outcome.job_id == job["id"] and len(outcome.asset_ids) == 1
    # One 404 stops the polling at once; the runner's retry submits the video again.
    after = [p.path for p in fake.polls()[polls_before:]]
    assert after.count(f"/v1beta/{lost}") == 1
    assert len(fake.calls("predictLongRunning")) == 2
    assert len(second.sleeps) == 1  # type: ignore[attr-defined]
    row = second.store.get_job(job["id"])
    assert row is not None and row["state"] == "succeeded"
