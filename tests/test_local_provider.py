"""Tests for the offline, deterministic ``local`` provider."""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image, ImageChops, ImageFont, ImageStat

from adapters.providers import local
from adapters.providers.local import LocalProvider, _drawable, create, render_draft
from bot.domain import Capability, Stage
from bot.providers import GeneratedFile, GenerationRequest, PermanentError, Provider

PROMPT = "a lighthouse on a cliff at dusk, volumetric fog"


def make_request(**overrides: object) -> GenerationRequest:
    fields: dict[str, object] = {
        "job_id": "job-1",
        "stage": Stage.DRAFT,
        "capability": Capability.TEXT_TO_IMAGE,
        "model_id": "nano-banana",
        "provider_model": "local-draft",
        "prompt": PROMPT,
        "seed": 7,
        "n": 1,
    }
    fields.update(overrides)
    return GenerationRequest(**fields)


def decode(file: GeneratedFile) -> Image.Image:
    image = Image.open(io.BytesIO(file.data))
    image.load()
    return image


def mean_abs_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference, 0..255."""
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


@pytest.fixture
def provider() -> LocalProvider:
    return create(None)


@pytest.fixture
def still(tmp_path: Path) -> Path:
    """A 640×480 draft-like reference image with structure (not flat)."""
    image = render_draft("a red barn in a wheat field", "nano-banana", 3, (640, 480))
    path = tmp_path / "draft.png"
    image.save(path)
    return path


# --------------------------------------------------------------------------- protocol


async def test_protocol_submit_cancel_close(provider: LocalProvider) -> None:
    assert isinstance(provider, Provider)
    assert provider.name == "local"
    assert await provider.submit(make_request(job_id="abc")) == "local-abc"
    assert await provider.cancel("local-abc") is None
    assert await provider.aclose() is None


# --------------------------------------------------------------------------- drafts


async def test_draft_is_deterministic(provider: LocalProvider) -> None:
    request = make_request()
    first = await provider.result("local-job-1", request)
    again = await create(object()).result("local-job-1", request)  # a "restarted" provider
    assert [f.data for f in first] == [f.data for f in again]


async def test_different_seed_gives_a_different_layout(provider: LocalProvider) -> None:
    a = (await provider.result("x", make_request(seed=1)))[0]
    b = (await provider.result("x", make_request(seed=2)))[0]
    assert a.data != b.data
    # The composition above the label band must differ visibly, not by a pixel or two.
    top = (0, 0, a.width, a.height // 2)
    assert mean_abs_diff(decode(a).crop(top), decode(b).crop(top)) > 8


async def test_n_drafts_use_consecutive_seeds(provider: LocalProvider) -> None:
    files = await provider.result("x", make_request(n=3, seed=10))
    assert [f.seed for f in files] == [10, 11, 12]
    assert len({f.data for f in files}) == 3
    assert all(f.mime == "image/png" for f in files)
    # Image i is exactly the single draft for seed + i.
    single = await provider.result("x", make_request(n=1, seed=11))
    assert files[1].data == single[0].data


async def test_zero_drafts_is_refused(provider: LocalProvider) -> None:
    with pytest.raises(PermanentError):
        await provider.result("x", make_request(n=0))


@pytest.mark.parametrize(
    ("aspect_ratio", "long_edge", "size"),
    [
        ("1:1", None, (1024, 1024)),
        ("4:3", None, (1024, 768)),
        ("3:4", None, (768, 1024)),
        ("16:9", None, (1024, 576)),
        ("9:16", None, (576, 1024)),
        ("4:5", None, (816, 1024)),
        ("21:9", None, (1024, 440)),
        ("16:9", 512, (512, 288)),
        ("3:4", 500, (376, 496)),
    ],
)
def test_draft_size_per_aspect_ratio(
    aspect_ratio: str, long_edge: int | None, size: tuple[int, int]
) -> None:
    width, height = local.draft_size(aspect_ratio, long_edge or local.DRAFT_LONG_EDGE)
    assert (width, height) == size
    assert width % 8 == 0 and height % 8 == 0


@pytest.mark.parametrize("aspect_ratio", ["16:9", "9:16", "21:9"])
async def test_draft_file_has_the_requested_size(
    provider: LocalProvider, aspect_ratio: str
) -> None:
    file = (await provider.result("x", make_request(aspect_ratio=aspect_ratio, long_edge=512)))[0]
    image = decode(file)
    assert image.size == (file.width, file.height)
    assert image.size == local.draft_size(aspect_ratio, 512)


@pytest.mark.parametrize("aspect_ratio", ["banana", "0:1", "16:0", "1:20"])
async def test_bad_aspect_ratio_is_refused(provider: LocalProvider, aspect_ratio: str) -> None:
    with pytest.raises(PermanentError, match="aspect ratio"):
        await provider.result("x", make_request(aspect_ratio=aspect_ratio))


async def test_draft_is_not_blank(provider: LocalProvider) -> None:
    image = decode((await provider.result("x", make_request()))[0]).convert("RGB")
    composition = image.crop((0, 0, image.width, image.height // 2))
    assert min(ImageStat.Stat(composition).stddev) > 5
    assert len(composition.getcolors(maxcolors=1 << 20) or []) > 100


async def test_draft_carries_the_offline_label_band(provider: LocalProvider) -> None:
    request = make_request(aspect_ratio="4:3")
    image = decode((await provider.result("x", request))[0]).convert("RGB")
    plain = local._scene(request.prompt, request.seed, image.size)
    height = image.height
    # The band covers the bottom of the picture: darkened, with bright text on it.
    band = image.crop((0, round(height * 0.85), image.width, height))
    assert mean_abs_diff(band, plain.crop((0, round(height * 0.85), image.width, height))) > 20
    pixels = band.convert("L").tobytes()
    bright = sum(1 for p in pixels if p > 200) / len(pixels)
    dark = sum(1 for p in pixels if p < 40) / len(pixels)
    assert bright > 0.01  # text
    assert dark > 0.4  # the band itself
    # The yellow "OFFLINE PREVIEW" title: many saturated yellow pixels in the lower part.
    lower = image.crop((0, height // 2, image.width, height))
    raw = lower.tobytes()
    yellow = sum(
        1
        for r, g, b in zip(raw[0::3], raw[1::3], raw[2::3], strict=True)
        if r > 220 and g > 180 and b < 60
    )
    assert yellow > 2000
    # And the label depends on the prompt, the model and the seed.
    other = render_draft(request.prompt, "another-model", request.seed, image.size)
    assert mean_abs_diff(image, other) > 0


# --------------------------------------------------------------------------- finals and edits


async def test_final_rerenders_the_reference_larger(provider: LocalProvider, still: Path) -> None:
    request = make_request(
        stage=Stage.FINAL, capability=Capability.IMAGE_TO_IMAGE, seed=99, references=[still]
    )
    files = await provider.result("x", request)
    assert len(files) == 1
    file = files[0]
    image = decode(file)
    assert file.mime == "image/png" and file.seed == 99
    assert max(image.size) == 1536 and image.size == (file.width, file.height)
    assert image.size == (1536, 1152)  # aspect ratio of the 640×480 reference kept
    # It is the reference, re-rendered: below the label it looks like a plain resize.
    plain = Image.open(still).convert("RGB").resize(image.size, Image.Resampling.LANCZOS)
    body = (0, image.height // 4, image.width, image.height)
    assert mean_abs_diff(image.crop(body), plain.crop(body)) < 12
    # ... and it carries a label at the top that the plain resize does not have.
    head = (0, 0, image.width, round(image.height * 0.05))
    assert mean_abs_diff(image.crop(head), plain.crop(head)) > 20
    assert (await provider.result("x", request))[0].data == file.data


async def test_a_final_of_an_offline_draft_names_its_own_model_in_the_band(
    provider: LocalProvider, tmp_path: Path
) -> None:
    draft = (await provider.result("x", make_request(model_id="local-draft")))[0]
    path = tmp_path / "draft.png"
    path.write_bytes(draft.data)
    band_height = int(decode(draft).info["tierbot-preview-band"])
    request = make_request(
        stage=Stage.FINAL,
        capability=Capability.IMAGE_TO_IMAGE,
        model_id="local-final",
        references=[path],
    )
    final = decode((await provider.result("x", request))[0])
    scale = final.height / decode(draft).height
    band = (0, final.height - round(band_height * scale), final.width, final.height)
    relabelled = decode(draft).convert("RGB").resize(final.size, Image.Resampling.LANCZOS)
    # The band was drawn anew (the draft's "model local-draft" line is gone) ...
    assert mean_abs_diff(final.crop(band), relabelled.crop(band)) > 5
    # ... while a reference that is not an offline draft keeps its bottom as it was.
    plain = tmp_path / "plain.png"
    Image.new("RGB", (640, 480), (200, 40, 40)).save(plain)
    other = decode(
        (await provider.result("x", request.model_copy(update={"references": [plain]})))[0]
    )
    bottom = other.crop((0, other.height - 40, other.width, other.height)).convert("RGB")
    assert ImageStat.Stat(bottom).mean[0] > 150  # still red, no black band


async def test_final_honours_long_edge(provider: LocalProvider, still: Path) -> None:
    request = make_request(
        stage=Stage.FINAL, capability=Capability.IMAGE_TO_IMAGE, long_edge=800, references=[still]
    )
    file = (await provider.result("x", request))[0]
    assert (file.width, file.height) == (800, 600)


async def test_edit_differs_from_its_source(provider: LocalProvider, still: Path) -> None:
    common = {"capability": Capability.IMAGE_TO_IMAGE, "references": [still], "prompt": "snow"}
    final = decode((await provider.result("x", make_request(stage=Stage.FINAL, **common)))[0])
    edit = decode((await provider.result("x", make_request(stage=Stage.EDIT, **common)))[0])
    assert edit.size == final.size
    body = (0, edit.height // 4, edit.width, edit.height)
    assert mean_abs_diff(edit.crop(body), final.crop(body)) > 15
    source = Image.open(still).convert("RGB").resize(edit.size, Image.Resampling.LANCZOS)
    assert mean_abs_diff(edit.crop(body), source.crop(body)) > 15
    # Another instruction is another edit.
    other = await provider.result(
        "x", make_request(stage=Stage.EDIT, **{**common, "prompt": "rain"})
    )
    assert mean_abs_diff(decode(other[0]).crop(body), edit.crop(body)) > 5


# --------------------------------------------------------------------------- upscale


async def test_upscale_to_2048_without_label(provider: LocalProvider, still: Path) -> None:
    request = make_request(stage=Stage.UPSCALE, capability=Capability.UPSCALE, references=[still])
    file = (await provider.result("x", request))[0]
    image = decode(file).convert("RGB")
    assert file.mime == "image/png"
    assert (file.width, file.height) == image.size == (2048, 1536)
    plain = Image.open(still).convert("RGB").resize(image.size, Image.Resampling.LANCZOS)
    # Close to a plain Lanczos resize everywhere (sharpened only), including the top edge.
    assert mean_abs_diff(image, plain) < 4
    head = (0, 0, image.width, 80)
    assert mean_abs_diff(image.crop(head), plain.crop(head)) < 4
    assert image.tobytes() != plain.tobytes()  # but it was sharpened


# --------------------------------------------------------------------------- video


def probe(path: Path) -> str:
    """ffmpeg's description of a media file (stderr of ``ffmpeg -i``)."""
    done = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stderr


def read_frames(path: Path) -> list[Image.Image]:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    width, height = meta["size"]
    return [Image.frombytes("RGB", (width, height), bytes(frame)) for frame in reader]


async def test_video_is_an_h264_mp4_of_four_seconds(
    provider: LocalProvider, still: Path, tmp_path: Path
) -> None:
    request = make_request(
        stage=Stage.VIDEO, capability=Capability.IMAGE_TO_VIDEO, references=[still]
    )
    file = (await provider.result("x", request))[0]
    assert file.mime == "video/mp4"
    assert (file.width, file.height) == (1280, 960)
    assert file.duration_s == pytest.approx(4.0)
    path = tmp_path / "video.mp4"
    path.write_bytes(file.data)
    assert file.data[4:8] == b"ftyp"
    assert 0 <= file.data.find(b"moov") < file.data.find(b"mdat")  # +faststart

    info = probe(path)
    assert re.search(r"Video: h264", info), info
    assert "yuv420p" in info and "1280x960" in info
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(path))
    assert frames == 96
    assert seconds == pytest.approx(4.0, abs=0.1)

    # A smooth move: the first frame is the still, the last one is zoomed in, and no two
    # neighbouring frames jump.
    decoded = read_frames(path)
    assert len(decoded) == 96
    source = Image.open(still).convert("RGB").resize(decoded[0].size, Image.Resampling.LANCZOS)
    assert mean_abs_diff(decoded[0], source) < 6
    assert mean_abs_diff(decoded[-1], source) > mean_abs_diff(decoded[0], source) + 3
    steps = [mean_abs_diff(a, b) for a, b in zip(decoded[::8], decoded[1::8], strict=False)]
    assert max(steps) < 6


async def test_video_is_deterministic_and_honours_duration(
    provider: LocalProvider, still: Path
) -> None:
    request = make_request(
        stage=Stage.VIDEO, capability=Capability.IMAGE_TO_VIDEO, duration_s=1, references=[still]
    )
    first = (await provider.result("x", request))[0]
    again = (await provider.result("x", request))[0]
    assert first.duration_s == pytest.approx(1.0)
    assert first.data == again.data


def test_video_size_keeps_aspect_with_even_dims() -> None:
    assert local.video_size((1536, 864)) == (1280, 720)
    assert local.video_size((1024, 1536)) == (854, 1280)
    assert local.video_size((1000, 333)) == (1280, 426)
    for size in [(1536, 864), (1024, 1536), (1000, 333), (777, 777)]:
        width, height = local.video_size(size)
        assert width % 2 == 0 and height % 2 == 0 and max(width, height) == 1280


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("capability", "words"),
    [(Capability.TEXT_TO_VIDEO, "text to video")],
)
async def test_unsupported_capability(
    provider: LocalProvider, capability: Capability, words: str
) -> None:
    request = make_request(capability=capability)
    with pytest.raises(PermanentError, match=f"cannot do {words}"):
        await provider.submit(request)
    with pytest.raises(PermanentError, match=f"cannot do {words}"):
        await provider.result("x", request)


@pytest.mark.parametrize(
    ("stage", "capability"),
    [
        (Stage.FINAL, Capability.IMAGE_TO_IMAGE),
        (Stage.UPSCALE, Capability.UPSCALE),
        (Stage.VIDEO, Capability.IMAGE_TO_VIDEO),
    ],
)
async def test_missing_reference(
    provider: LocalProvider, tmp_path: Path, stage: Stage, capability: Capability
) -> None:
    missing = tmp_path / "gone.png"
    request = make_request(stage=stage, capability=capability, references=[missing])
    with pytest.raises(PermanentError) as caught:
        await provider.result("x", request)
    assert "gone.png" in caught.value.message
    assert "does not exist" in caught.value.message
    assert str(tmp_path) not in caught.value.message


async def test_unreadable_reference(provider: LocalProvider, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not a png")
    request = make_request(
        stage=Stage.FINAL, capability=Capability.IMAGE_TO_IMAGE, references=[garbage]
    )
    with pytest.raises(PermanentError, match=r"'garbage\.png' is not a readable image") as caught:
        await provider.result("x", request)
    assert str(tmp_path) not in caught.value.message


async def test_truncated_reference(provider: LocalProvider, still: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(still.read_bytes()[:2000])
    request = make_request(
        stage=Stage.UPSCALE, capability=Capability.UPSCALE, references=[truncated]
    )
    with pytest.raises(PermanentError, match=r"truncated\.png"):
        await provider.result("x", request)


async def test_no_reference(provider: LocalProvider) -> None:
    request = make_request(stage=Stage.FINAL, capability=Capability.IMAGE_TO_IMAGE)
    with pytest.raises(PermanentError, match="needs a reference image"):
        await provider.result("x", request)


async def test_transparent_reference_is_flattened(provider: LocalProvider, tmp_path: Path) -> None:
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (300, 200), (255, 0, 0, 128)).save(path)
    request = make_request(stage=Stage.UPSCALE, capability=Capability.UPSCALE, references=[path])
    image = decode((await provider.result("x", request))[0])
    assert image.mode == "RGB" and image.size == (2048, 1365)


def test_labels_never_draw_missing_glyph_boxes() -> None:
    ascii_only = ImageFont.load_default(size=24)  # Pillow's built-in font: ASCII and quotes
    assert _drawable("café über — “noir” 日本", ascii_only) == "cafe uber - “noir” ??"
    assert _drawable("plain ASCII stays", ascii_only) == "plain ASCII stays"

    image = render_draft("café au lait — 日本のカフェ", "local-draft", 7, (512, 512))
    assert image.size == (512, 512)
