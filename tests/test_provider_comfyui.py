"""The ComfyUI adapter, driven through the real core and job runner against a fake ComfyUI.

Every test builds the real services (``adapters.wire``) with ``COMFYUI_URL`` pointing at
:class:`tests.fakes.comfyui_fake.FakeComfyUI`, talks to them like a chat surface, and checks
both sides: what the fake received (method, path, body) and what the store recorded (jobs,
ledger, assets).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageDraw

import adapters
from adapters.providers.comfyui import (
    SHIPPED_WORKFLOWS,
    ComfyUIProvider,
    fill_workflow,
    load_workflow,
    output_size,
    workflow_name,
)
from bot.app import Services
from bot.domain import Capability, Reply, Stage
from bot.providers import GenerationRequest, PermanentError, TransientError
from bot.settings import Settings
from tests.conftest import Chat
from tests.fakes.comfyui_fake import FakeComfyUI
from tests.provider_rig import ProviderRig

CATALOG = """
[providers.comfyui]
concurrency = 2

# The shipped Z-Image Turbo also runs on ComfyUI (for nothing: your own GPU); hidden here so
# the test models below are the only candidates (it has its own test).
[models.z-image-turbo]
enabled = false

[models.t-comfyui-draft]
provider = "comfyui"
provider_model = "z-image-turbo-t2i.json"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 1000
max_images = 4

[models.t-comfyui-backup]
provider = "comfyui"
provider_model = "sdxl-backup-t2i.json"
stages = ["draft"]
capabilities = ["text-to-image"]
price = 2000
max_images = 4

[models.t-comfyui-final]
provider = "comfyui"
provider_model = "z-image-turbo"
stages = ["final", "edit"]
capabilities = ["image-to-image"]
price = 3000
max_images = 1

[models.t-comfyui-video]
provider = "comfyui"
provider_model = "wan-i2v.json"
stages = ["video"]
capabilities = ["image-to-video"]
price = 500
unit = "second"
max_seconds = 10
"""

#: A user workflow with a real negative prompt (SDXL at cfg 6), in the user folder.
SDXL_BACKUP = {
    "1": {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"},
    },
    "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{prompt}}", "clip": ["1", 1]}},
    "3": {
        "class_type": "CLIPTextEncode",
        "inputs": {"text": "{{negative_prompt}}", "clip": ["1", 1]},
    },
    "4": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": "{{batch_size}}"},
    },
    "5": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": 25,
            "cfg": 6,
            "sampler_name": "dpmpp_2m",
            "scheduler": "karras",
            "denoise": 1,
            "model": ["1", 0],
            "positive": ["2", 0],
            "negative": ["3", 0],
            "latent_image": ["4", 0],
        },
    },
    "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
    "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},  # temp copies
    "8": {"class_type": "SaveImage", "inputs": {"filename_prefix": "backup", "images": ["6", 0]}},
}

#: A user image-to-video workflow (Wan 2.2 shaped), wrapped as POST /prompt takes it.
WAN_I2V = {
    "prompt": {
        "1": {"class_type": "LoadImage", "inputs": {"image": "{{image}}"}},
        "2": {
            "class_type": "WanImageToVideo",
            "inputs": {
                "width": "{{width}}",
                "height": "{{height}}",
                "length": "{{frames}}",
                "batch_size": 1,
                "start_image": ["1", 0],
            },
        },
        "3": {"class_type": "CreateVideo", "inputs": {"images": ["2", 0], "fps": 16}},
        "4": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["3", 0], "filename_prefix": "video/tierbot", "format": "auto"},
        },
    }
}


@pytest.fixture
async def comfy() -> AsyncIterator[FakeComfyUI]:
    async with FakeComfyUI() as fake:
        yield fake


@pytest.fixture
async def wire(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> AsyncIterator[Callable[..., Services]]:
    """Build the real services against a fake ComfyUI, the runner's backoff recorded."""
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    workflows = tmp_path / "data" / "comfyui_workflows"
    workflows.mkdir(parents=True)
    (workflows / "sdxl-backup-t2i.json").write_text(json.dumps(SDXL_BACKUP), encoding="utf-8")
    (workflows / "wan-i2v.json").write_text(json.dumps(WAN_I2V), encoding="utf-8")
    # max_generation_s: a broken adapter fails the test instead of hanging it.
    async with ProviderRig(make_settings, catalog=catalog, max_generation_s=10) as rig:

        def make(fake: FakeComfyUI, *, url: str | None = None, **overrides: Any) -> Services:
            return rig.build(comfyui_url=url or fake.url, **overrides)

        yield make


# --------------------------------------------------------------------------- helpers


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def jobs(services: Services) -> list[dict[str, Any]]:
    """Every job of the (only) request, oldest first."""
    (request,) = services.store.db["requests"].rows
    return services.store.jobs_for_request(request["id"])


def ledger(services: Services) -> list[tuple[str, int]]:
    return [(row["state"], row["amount"]) for row in services.store.db["ledger"].rows]


async def submitted_job(services: Services) -> dict[str, Any]:
    """Wait until the runner has stored ComfyUI's prompt id on the job row."""
    for _ in range(500):
        unfinished = services.store.unfinished_jobs()
        if unfinished and unfinished[0].get("provider_request_id"):
            return unfinished[0]
        await asyncio.sleep(0.01)
    raise AssertionError("no job was submitted to ComfyUI")


def host_of(fake: FakeComfyUI) -> str:
    return fake.url.removeprefix("http://")


# --------------------------------------------------------------------------- success


async def test_draft_final_and_video_send_the_right_calls(comfy, wire) -> None:
    services = wire(comfy)
    chat = Chat(services)
    store = services.store

    grid = grid_of(
        await chat.command(
            "draft", "a red fox in snow --n 2 --ar 16:9 --seed 42 --model t-comfyui-draft"
        )
    )
    (body,) = comfy.submissions
    graph = body["prompt"]
    assert graph["5"]["inputs"]["text"] == "a red fox in snow"
    assert graph["8"]["inputs"]["seed"] == 42
    assert graph["7"]["inputs"] == {"width": 1360, "height": 768, "batch_size": 2}  # 16:9, ~1 MP
    assert graph["1"]["inputs"]["unet_name"] == "z_image_turbo_bf16.safetensors"
    assert body["client_id"] and uuid.UUID(body["prompt_id"])
    assert comfy.calls("POST", "/upload/image") == []  # text-to-image: nothing to upload
    views = comfy.calls("GET", "/view")
    assert [(v.query["subfolder"], v.query["type"]) for v in views] == [("tierbot", "output")] * 2
    drafts = store.parents(grid.asset_id)
    assert [(d["mime"], d["width"], d["height"], d["seed"]) for d in drafts] == [
        ("image/png", 1360, 768, 42)
    ] * 2
    assert "t-comfyui-draft" in grid.text
    assert ledger(services) == [("settled", 2000)]

    comfy.image_format = "JPEG"
    final = result_of(
        await chat.command("tierbot", f"final {grid.asset_id} 2 --model t-comfyui-final")
    )
    (upload,) = comfy.calls("POST", "/upload/image")
    uploaded_name, uploaded_bytes = upload.files["image"]
    assert uploaded_bytes == services.files.path(drafts[1]["path"]).read_bytes()
    assert upload.form == {"type": "input", "subfolder": "tierbot", "overwrite": "true"}
    graph = comfy.submissions[1]["prompt"]  # z-image-turbo + image-to-image → the -i2i file
    assert graph["11"] == {
        "class_type": "LoadImage",
        "inputs": {"image": f"tierbot/{uploaded_name}"},
        "_meta": {"title": "Reference image"},
    }
    assert (graph["12"]["inputs"]["width"], graph["12"]["inputs"]["height"]) == (1360, 768)
    assert graph["8"]["inputs"]["seed"] == 42 and graph["8"]["inputs"]["denoise"] == 0.6
    final_row = store.get_asset(final.asset_id)
    assert (final_row["mime"], final_row["width"], final_row["height"]) == ("image/jpeg", 1360, 768)
    assert [p["id"] for p in store.parents(final.asset_id)] == [drafts[1]["id"]]

    video = result_of(
        await chat.command("tierbot", f"video {final.asset_id} --seconds 5 --model t-comfyui-video")
    )
    graph = comfy.submissions[2]["prompt"]  # the user's workflow, unwrapped and filled
    assert graph["2"]["inputs"]["length"] == 81  # 5 s at 16 fps, plus one
    assert graph["1"]["inputs"]["image"].startswith("tierbot/tierbot-")
    video_row = store.get_asset(video.asset_id)
    assert (video_row["mime"], video_row["width"], video_row["height"]) == ("video/mp4", 64, 64)
    assert video_row["duration_s"] == pytest.approx(1.0, abs=0.1)
    assert [state for state, _ in ledger(services)] == ["settled"] * 3
    assert services.sleeps == []


async def test_a_rate_limited_submission_waits_for_retry_after(comfy, wire) -> None:
    services = wire(comfy)
    comfy.fail_next("POST", "/prompt", 429, retry_after=7)
    grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft"))
    assert services.sleeps == [7]  # ComfyUI's (proxy's) Retry-After, not the default backoff
    assert len(comfy.submissions) == 2
    (job,) = jobs(services)
    assert (job["state"], job["attempts"]) == ("succeeded", 2)
    assert ledger(services) == [("settled", 1000)]


async def test_its_own_server_may_answer_over_plain_http_without_the_allow_list(
    comfy, wire
) -> None:
    services = wire(comfy, allow_http_hosts=[])  # COMFYUI_URL is http://127.0.0.1:<port>
    grid = grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft"))
    assert len(services.store.parents(grid.asset_id)) == 1
    assert len(comfy.calls("GET", "/view")) == 1


async def test_server_errors_fall_back_to_the_next_model(comfy, wire) -> None:
    services = wire(comfy)
    comfy.fail_next("POST", "/prompt", 500, times=3)
    grid = grid_of(await Chat(services).command("draft", "a cat on a roof --n 2 --no blurry"))
    first, second = jobs(services)
    assert (first["model_id"], first["state"], first["attempts"]) == (
        "t-comfyui-draft",
        "failed",
        3,
    )
    assert (second["model_id"], second["state"]) == ("t-comfyui-backup", "succeeded")
    assert len(services.sleeps) == 2  # retries=2 on the first model, then the fallback
    assert ledger(services) == [("released", 2000), ("settled", 4000)]
    graph = comfy.submissions[-1]["prompt"]  # the backup's user workflow, negative filled in
    assert graph["3"]["inputs"]["text"] == "blurry"
    assert graph["4"]["inputs"]["batch_size"] == 2
    views = comfy.calls("GET", "/view")  # the saved files, not PreviewImage's temp copies
    assert [(v.query["type"], v.query["subfolder"]) for v in views] == [("output", "")] * 2
    assert "t-comfyui-backup" in grid.text


async def test_polling_hiccups_are_retried_inside_the_adapter(comfy, wire) -> None:
    services = wire(comfy)
    comfy.fail_next("GET", "/history", 503, times=2)
    comfy.fail_next("GET", "/history", 429, retry_after=0.05)
    grid_of(await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft"))
    (job,) = jobs(services)
    assert (job["state"], job["attempts"]) == ("succeeded", 1)
    assert len(comfy.submissions) == 1 and services.sleeps == []  # never paid for twice
    assert {0.02, 0.05} <= set(services.waits)  # Retry-After honoured


async def test_a_prompt_comfyui_lost_is_submitted_again(comfy, wire) -> None:
    services = wire(comfy, max_generation_s=600)  # noticed at once, not when time runs out
    comfy.hold("pending")
    task = asyncio.create_task(
        Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    )
    await submitted_job(services)
    comfy.forget_queue()  # ComfyUI restarted: its in-memory queue is gone
    comfy.release()
    async with asyncio.timeout(5):
        grid_of(await task)
    assert len(comfy.submissions) == 2
    (job,) = jobs(services)
    assert (job["state"], job["attempts"]) == ("succeeded", 2)


async def test_the_shipped_z_image_turbo_entry_runs_on_comfyui(comfy, make_settings) -> None:
    services = adapters.wire(
        make_settings(comfyui_url=comfy.url, allow_http_hosts=["127.0.0.1"], poll_interval_s=0.01)
    )
    try:
        grid = grid_of(
            await Chat(services).command("draft", "a cat --n 2 --model z-image-turbo@comfyui")
        )
        assert len(services.store.parents(grid.asset_id)) == 2
    finally:
        await services.aclose()
    (body,) = comfy.submissions
    assert body["prompt"]["1"]["inputs"]["unet_name"] == "z_image_turbo_bf16.safetensors"


# --------------------------------------------------------------------------- refusals


async def test_a_safety_checker_refusal_is_a_content_policy_refusal(comfy, wire) -> None:
    services = wire(comfy)
    comfy.refuse_next()
    replies = await Chat(services).command("draft", "a cat --n 1")  # a fallback exists
    text = replies[-1].text
    assert text.startswith("🚫 Refused by the provider's content policy")
    assert "NSFW content detected" in text and "Nothing was charged" in text
    (job,) = jobs(services)  # no second model tried
    assert job["state"] == "failed"
    assert len(comfy.submissions) == 1 and services.sleeps == []
    assert ledger(services) == [("released", 1000)]


@pytest.mark.parametrize(
    ("exception_type", "message", "retried"),
    [
        ("torch.OutOfMemoryError", "Allocation on device\nThis error means you ran out", True),
        ("RuntimeError", "mat1 and mat2 shapes cannot be multiplied (77x2048 and 768x320)", False),
    ],
)
async def test_execution_errors(comfy, wire, exception_type, message, retried) -> None:
    services = wire(comfy)
    comfy.fail_execution_next(exception_type, message)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    if retried:  # out of GPU memory: ComfyUI unloads its models, a new submission may pass
        grid_of(replies)
        assert len(comfy.submissions) == 2 and len(services.sleeps) == 1
    else:
        assert replies[-1].text.startswith("⚠️ Failed")
        assert "SaveImage (node 10): mat1 and mat2 shapes" in replies[-1].text
        assert len(comfy.submissions) == 1 and services.sleeps == []
        assert ledger(services) == [("released", 1000)]


async def test_a_workflow_comfyui_rejects_fails_with_its_reason(comfy, wire) -> None:
    services = wire(comfy)
    comfy.models = frozenset({"qwen_3_4b.safetensors", "ae.safetensors"})  # no Z-Image weights
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    text = replies[-1].text
    assert text.startswith("⚠️ Failed")
    assert "UNETLoader (node 1): Value not in list" in text
    assert "z_image_turbo_bf16.safetensors" in text
    assert len(comfy.submissions) == 1 and services.sleeps == []


@pytest.mark.parametrize("where", ["prompt", "history"])
async def test_a_malformed_reply_fails_permanently(comfy, wire, where) -> None:
    services = wire(comfy)
    comfy.malformed_next(where)
    replies = await Chat(services).command("draft", "a cat --n 1")
    text = replies[-1].text
    assert text.startswith("⚠️ Failed") and "malformed" in text
    assert len(comfy.submissions) == 1 and services.sleeps == []
    assert len(jobs(services)) == 1  # permanent: no fallback
    assert ledger(services) == [("released", 1000)]


async def test_an_output_over_the_size_limit_is_refused(comfy, wire) -> None:
    services = wire(comfy, max_download_bytes=1000)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    text = replies[-1].text
    assert text.startswith("⚠️ Failed") and "over the" in text and "limit" in text
    assert services.store.db["assets"].count == 0
    assert ledger(services) == [("released", 1000)]


@pytest.mark.parametrize(
    ("data", "content_type", "reason"),
    [
        (b"<html><body>Please log in</body></html>", "text/html", "the provider sent text/html"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png", "not a readable image"),
    ],
)
async def test_an_output_that_is_not_an_image_is_refused(
    comfy, wire, data, content_type, reason
) -> None:
    services = wire(comfy)
    comfy.serve_next_output(data, content_type)
    replies = await Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    assert replies[-1].text.startswith("⚠️ Failed") and reason in replies[-1].text
    assert services.store.db["assets"].count == 0
    assert ledger(services) == [("released", 1000)]


# --------------------------------------------------------------------------- durability


async def test_a_restart_while_queued_resumes_without_paying_twice(comfy, wire) -> None:
    services = wire(comfy)
    comfy.hold("pending")
    task = asyncio.create_task(
        Chat(services).command("draft", "a lighthouse --n 2 --model t-comfyui-draft")
    )
    job = await submitted_job(services)
    task.cancel()  # the process dies while ComfyUI still has the prompt queued
    with suppress(asyncio.CancelledError):
        await task
    await services.aclose()

    restarted = wire(comfy)
    comfy.release()
    outcomes = await restarted.runner.resume()
    assert [o.job_id for o in outcomes] == [job["id"]]
    assert len(comfy.submissions) == 1  # polled by the stored prompt id, not queued again
    assert restarted.store.get_job(job["id"])["state"] == "succeeded"
    assert ledger(restarted) == [("settled", 2000)]
    assert len(list(restarted.store.db["assets"].rows_where("job_id = ?", [job["id"]]))) == 2


@pytest.mark.parametrize("state", ["pending", "running"])
async def test_cancel_reaches_comfyui_and_releases_the_credits(comfy, wire, state) -> None:
    services = wire(comfy)
    comfy.hold(state)
    task = asyncio.create_task(
        Chat(services).command("draft", "a cat --n 1 --model t-comfyui-draft")
    )
    job = await submitted_job(services)
    prompt_id = job["provider_request_id"]
    assert await services.runner.cancel(job["id"]) is True
    with suppress(asyncio.CancelledError):
        await task
    assert [r.json for r in comfy.calls("POST", "/queue")] == [{"delete": [prompt_id]}]
    interrupts = [r.json for r in comfy.calls("POST", "/interrupt")]
    if state == "pending":
        assert comfy.deleted == [prompt_id] and interrupts == []
    else:  # only a running prompt is interrupted, and only that one
        assert interrupts == [{"prompt_id": prompt_id}] and comfy.interrupted == [prompt_id]
    assert services.store.get_job(job["id"])["state"] == "cancelled"
    assert ledger(services) == [("released", 1000)]


# --------------------------------------------------------------------------- credentials


async def test_credentials_in_the_url_are_sent_and_never_shown(wire, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeComfyUI(auth=("tierbot", "s3cret-Pa55")) as fake:
        services = wire(fake, url=f"http://tierbot:s3cret-Pa55@{host_of(fake)}")
        grid = grid_of(await Chat(services).command("draft", "a cat --n 1"))
    token = base64.b64encode(b"tierbot:s3cret-Pa55").decode()
    assert {r.headers.get("Authorization") for r in fake.requests} == {f"Basic {token}"}
    assert fake.calls("GET", "/view")  # the output download carried them too
    assert "s3cret-Pa55" not in caplog.text and token not in caplog.text
    assert "s3cret-Pa55" not in grid.text


async def test_bad_credentials_fail_at_once_and_never_show_the_password(wire, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with FakeComfyUI(auth=("tierbot", "right-password")) as fake:
        services = wire(fake, url=f"http://tierbot:wrong-Pa55-123@{host_of(fake)}")
        replies = await Chat(services).command("draft", "a cat --n 1")
    text = replies[-1].text
    assert text.startswith("⚠️ Failed") and "HTTP 401" in text and "COMFYUI_URL" in text
    assert len(fake.submissions) == 1 and services.sleeps == []  # no retry, no fallback
    assert len(jobs(services)) == 1
    assert ledger(services) == [("released", 1000)]
    assert all("wrong-Pa55-123" not in reply.text for reply in replies)
    assert "wrong-Pa55-123" not in caplog.text


async def test_without_a_url_the_provider_says_how_to_configure_it(make_settings, tmp_path):
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    services = adapters.wire(make_settings(catalog=catalog))
    try:
        assert services.providers.why_unavailable("comfyui") == "not configured (set COMFYUI_URL)"
    finally:
        await services.aclose()


# --------------------------------------------------------------------------- workflow files


def test_workflow_names_and_the_user_folder_first(tmp_path: Path) -> None:
    assert workflow_name("z-image-turbo", Capability.IMAGE_TO_IMAGE) == "z-image-turbo-i2i.json"
    assert workflow_name("mine.json", Capability.IMAGE_TO_VIDEO) == "mine.json"
    assert workflow_name("z-image-turbo", Capability.INPAINT) == "z-image-turbo-inpaint.json"
    shipped = load_workflow("z-image-turbo-t2i.json", tmp_path)
    assert shipped.path.parent == SHIPPED_WORKFLOWS and shipped.images == 0
    assert not shipped.mask
    i2i = load_workflow("z-image-turbo-i2i.json", tmp_path)
    assert (i2i.images, i2i.mask) == (1, False)
    inpaint = load_workflow("z-image-turbo-inpaint.json", tmp_path)
    assert (inpaint.images, inpaint.mask) == (1, True)
    override = {"1": {"class_type": "SaveImage", "inputs": {"filename_prefix": "{{prompt}}"}}}
    (tmp_path / "z-image-turbo-t2i.json").write_text(json.dumps(override), encoding="utf-8")
    assert load_workflow("z-image-turbo-t2i.json", tmp_path).graph == override


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("missing.json", None, "no ComfyUI workflow missing.json"),
        ("../escape.json", None, "plain file name"),
        ("ui.json", {"nodes": [], "links": []}, "Export (API)"),
        ("bad.json", {"1": {"inputs": {}}}, "API format"),
        ("odd.json", {"1": {"class_type": "X", "inputs": {"v": "{{colour}}"}}}, "{{colour}}"),
        ("odd.json", {"1": {"class_type": "X", "inputs": {"v": "{{masks}}"}}}, "{{mask}}"),
    ],
)
def test_unusable_workflow_files_are_refused(tmp_path, name, content, reason) -> None:
    if content is not None:
        (tmp_path / name).write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(PermanentError, match=None) as refused:
        load_workflow(name, tmp_path)
    assert reason in refused.value.message


def test_placeholders_keep_their_types() -> None:
    graph = {
        "1": {
            "class_type": "KSampler",
            "inputs": {"seed": "{{seed}}", "note": "seed {{ seed }} for {{prompt}}", "m": ["2", 0]},
        }
    }
    filled = fill_workflow(graph, {"seed": 7, "prompt": "a fox"})
    assert filled["1"]["inputs"] == {"seed": 7, "note": "seed 7 for a fox", "m": ["2", 0]}
    assert graph["1"]["inputs"]["seed"] == "{{seed}}"  # the template is left untouched
    assert output_size(1.0, None) == (1024, 1024)
    assert output_size(4 / 5, 2048) == (1632, 2048)


# --------------------------------------------------------------------------- region edits
#
# The adapter is driven directly with the GenerationRequest the core sends for a region edit
# (``capability`` inpaint, ``references[0]`` the source, ``mask`` a greyscale PNG of its size).

SOURCE_SIZE = (256, 192)
#: The white box of the test mask: (left, top, right, bottom), right and bottom excluded.
MASK_BOX = (64, 48, 128, 96)


def write_png(path: Path, image: Image.Image) -> Path:
    image.save(path, "PNG")
    return path


def source_image(size: tuple[int, int] = SOURCE_SIZE) -> Image.Image:
    """A picture whose every pixel differs from its neighbours' (so a shift or a rescale
    shows): red runs across, green down."""
    across = Image.linear_gradient("L").rotate(90).resize(size)
    down = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (across, down, Image.new("L", size, 128)))


def mask_image(size: tuple[int, int] = SOURCE_SIZE, box: tuple[int, ...] = MASK_BOX) -> Image.Image:
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask


def region_edit(
    folder: Path,
    *,
    provider_model: str = "z-image-turbo",
    capability: Capability = Capability.INPAINT,
    mask: bool = True,
    size: tuple[int, int] = SOURCE_SIZE,
    mask_size: tuple[int, int] | None = None,
    long_edge: int | None = None,
) -> GenerationRequest:
    """The request the core sends for ``/tierbot edit <id> <instruction> --region <box>``."""
    source = write_png(folder / "source.png", source_image(size))
    mask_path = write_png(folder / "mask.png", mask_image(mask_size or size))
    return GenerationRequest(
        job_id="job-edit-1",
        stage=Stage.EDIT,
        capability=capability,
        model_id="z-image-turbo",
        provider_model=provider_model,
        prompt="a brass door knocker",
        seed=7,
        long_edge=long_edge,
        references=[source],
        mask=mask_path if mask else None,
    )


@pytest.fixture
async def comfyui(
    comfy: FakeComfyUI, make_settings: Callable[..., Settings]
) -> AsyncIterator[ComfyUIProvider]:
    """The real adapter, on its own, pointed at the fake."""
    settings = make_settings(
        comfyui_url=comfy.url,
        allow_http_hosts=["127.0.0.1"],
        poll_interval_s=0.01,
        max_generation_s=10,
    )
    provider = ComfyUIProvider(settings)
    yield provider
    await provider.aclose()


def user_workflow(make_settings: Callable[..., Settings], name: str, graph: Any) -> None:
    folder = make_settings().data_dir / "comfyui_workflows"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(graph), encoding="utf-8")


def shipped_graph(name: str) -> dict[str, Any]:
    return json.loads((SHIPPED_WORKFLOWS / name).read_text(encoding="utf-8"))


async def test_an_inpaint_request_uploads_the_image_and_the_mask(comfy, comfyui, tmp_path) -> None:
    request = region_edit(tmp_path)
    prompt_id = await comfyui.submit(request)
    files = await comfyui.result(prompt_id, request)

    image_upload, mask_upload = comfy.calls("POST", "/upload/image")
    image_name, image_bytes = image_upload.files["image"]
    mask_name, mask_bytes = mask_upload.files["image"]
    assert image_bytes == request.references[0].read_bytes()
    assert mask_bytes == Path(request.mask).read_bytes()  # sent as it is, no alpha trick
    assert image_name.startswith("tierbot-") and mask_name.startswith("tierbot-mask-")
    assert (
        image_upload.form
        == mask_upload.form
        == {
            "type": "input",
            "subfolder": "tierbot",
            "overwrite": "true",
        }
    )
    (body,) = comfy.submissions  # z-image-turbo + inpaint → the shipped -inpaint file
    graph = body["prompt"]
    assert graph["11"]["inputs"]["image"] == f"tierbot/{image_name}"
    assert graph["15"]["inputs"]["image"] == f"tierbot/{mask_name}"
    assert graph["17"]["inputs"]["channel"] == "red"
    for scale in ("12", "16"):  # the source's own size, image and mask alike, never cropped
        inputs = graph[scale]["inputs"]
        assert (inputs["width"], inputs["height"], inputs["crop"]) == (256, 192, "disabled")
    assert graph["8"]["inputs"]["seed"] == 7 and graph["8"]["inputs"]["denoise"] == 1
    assert graph["8"]["inputs"]["latent_image"] == ["19", 0]  # SetLatentNoiseMask

    (output,) = files  # the fake's inpainting: one colour inside the mask, the rest as sent
    assert (output.mime, output.width, output.height, output.seed) == ("image/png", 256, 192, 7)
    result = Image.open(io.BytesIO(output.data)).convert("RGB")
    source = Image.open(request.references[0]).convert("RGB")
    assert ImageChops.difference(result, source).getbbox() == MASK_BOX
    assert len(result.crop(MASK_BOX).getcolors()) == 1  # the region, all of it, redrawn


async def test_a_retry_reuses_the_uploaded_mask(comfy, comfyui, tmp_path) -> None:
    request = region_edit(tmp_path)
    comfy.fail_next("POST", "/prompt", 500)
    with pytest.raises(TransientError):
        await comfyui.submit(request)
    await comfyui.submit(request)  # what the runner does on the next attempt

    uploads = comfy.calls("POST", "/upload/image")
    names = [upload.files["image"][0] for upload in uploads]
    assert names[:2] == names[2:]  # the same content names both times: overwritten, not added
    assert len(comfy.uploads) == 2
    first, second = comfy.submissions
    assert first["prompt"]["15"]["inputs"] == second["prompt"]["15"]["inputs"]
    assert second["prompt"]["15"]["inputs"]["image"] == f"tierbot/{names[1]}"


@pytest.mark.parametrize(
    ("size", "long_edge", "expected"),
    [
        ((1000, 750), None, (992, 752)),  # its own size, in multiples of 16
        ((4096, 3072), None, (2048, 1536)),  # a 4K upscale: its aspect at a 2048 long edge
        ((1000, 750), 1600, (1600, 1200)),  # a long edge asked for is honoured
    ],
)
async def test_a_region_edit_is_made_at_the_source_size(
    comfy, comfyui, tmp_path, size, long_edge, expected
) -> None:
    await comfyui.submit(region_edit(tmp_path, size=size, long_edge=long_edge))
    graph = comfy.submissions[0]["prompt"]
    assert (graph["12"]["inputs"]["width"], graph["12"]["inputs"]["height"]) == expected
    assert (graph["16"]["inputs"]["width"], graph["16"]["inputs"]["height"]) == expected


I2I_WITH_MASK = {
    **shipped_graph("z-image-turbo-inpaint.json"),
    "10": {"class_type": "SaveImage", "inputs": {"filename_prefix": "m", "images": ["9", 0]}},
}


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no mask", "z-image-turbo-inpaint.json was asked to inpaint without a mask"),
        ("no {{mask}}", "mine-inpaint.json loads no {{mask}}, so it cannot inpaint"),
        ("i2i loads {{mask}}", "masked-i2i.json loads a {{mask}}, but this image-to-image"),
        ("wrong size", "the mask 'mask.png' is 128x96 but its source image is 256x192"),
        ("mask gone", "the mask 'mask.png' does not exist"),
    ],
)
async def test_a_region_edit_that_cannot_work_fails_before_anything_is_sent(
    comfy, comfyui, tmp_path, make_settings, case, reason
) -> None:
    user_workflow(make_settings, "mine-inpaint.json", shipped_graph("z-image-turbo-i2i.json"))
    user_workflow(make_settings, "masked-i2i.json", I2I_WITH_MASK)
    request = {
        "no mask": lambda: region_edit(tmp_path, mask=False),
        "no {{mask}}": lambda: region_edit(tmp_path, provider_model="mine"),
        "i2i loads {{mask}}": lambda: region_edit(
            tmp_path,
            provider_model="masked-i2i.json",
            capability=Capability.IMAGE_TO_IMAGE,
            mask=False,
        ),
        "wrong size": lambda: region_edit(tmp_path, mask_size=(128, 96)),
        "mask gone": lambda: region_edit(tmp_path),
    }[case]()
    if case == "mask gone":
        Path(request.mask).unlink()
    with pytest.raises(PermanentError) as refused:
        await comfyui.submit(request)
    assert reason in refused.value.message
    assert comfy.requests == []  # nothing uploaded, nothing queued


async def test_an_instruction_only_edit_leaves_the_mask_alone(comfy, comfyui, tmp_path) -> None:
    """An image-to-image workflow gets no mask even when the request has one: the region
    is in the prompt's words, and the core composites."""
    request = region_edit(tmp_path, capability=Capability.IMAGE_TO_IMAGE)
    await comfyui.submit(request)
    (upload,) = comfy.calls("POST", "/upload/image")
    assert upload.files["image"][1] == request.references[0].read_bytes()
    assert comfy.submissions[0]["prompt"]["11"]["inputs"]["image"].startswith("tierbot/tierbot-")


async def test_loadimage_mask_output_of_a_mask_without_alpha_is_empty(
    comfy, comfyui, tmp_path, make_settings
) -> None:
    """Why the template reads the mask with ImageToMask: LoadImage's own MASK output is the
    alpha channel, and a greyscale mask has none, so nothing would be redrawn (the fake
    behaves as ComfyUI does here)."""
    graph = shipped_graph("z-image-turbo-inpaint.json")
    graph["19"]["inputs"]["mask"] = ["15", 1]
    user_workflow(make_settings, "alpha-inpaint.json", graph)
    request = region_edit(tmp_path, provider_model="alpha")
    (output,) = await comfyui.result(await comfyui.submit(request), request)
    result = Image.open(io.BytesIO(output.data)).convert("RGB")
    assert ImageChops.difference(result, source_image()).getbbox() is None


async def test_a_drafts_reference_does_not_set_its_shape(comfy, comfyui, tmp_path) -> None:
    """As on fal, Gemini and Replicate: a draft with a reference image is the ratio asked for
    (the reference is only a reference); a final keeps its draft's shape."""
    wide = write_png(tmp_path / "wide.png", source_image((256, 128)))
    draft = GenerationRequest(
        job_id="job-draft-1",
        stage=Stage.DRAFT,
        capability=Capability.IMAGE_TO_IMAGE,
        model_id="z-image-turbo",
        provider_model="z-image-turbo",
        prompt="a mug like this one",
        seed=7,
        aspect_ratio="1:1",
        references=[wide],
    )
    await comfyui.submit(draft)
    await comfyui.submit(draft.model_copy(update={"stage": Stage.FINAL, "job_id": "job-final-1"}))
    sizes = [
        next(
            (node["inputs"]["width"], node["inputs"]["height"])
            for node in submission["prompt"].values()
            if {"width", "height"} <= set(node.get("inputs", {}))
        )
        for submission in comfy.submissions
    ]
    assert sizes[0][0] == sizes[0][1]  # square, as asked
    assert abs(sizes[1][0] / sizes[1][1] - 2) < 0.05  # the final keeps its draft's 2:1
