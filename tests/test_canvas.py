"""The canvas: region edits keep every pixel outside the region on every path, seams are
matched and measured, and every final, edit and video is checked for drift from its source.
The web canvas (draw, send, see the result) is driven in Chromium in test_web_browser.py;
ComfyUI's inpaint workflow against its fake in test_provider_comfyui.py."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from adapters import wire
from bot import canvas
from bot.app import Services
from bot.domain import InboundFile, Reply
from bot.providers import GeneratedFile, GenerationRequest
from bot.regions import Box, parse_region
from tests.conftest import Chat, registry_with, write_policy


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def pixels(services: Services, asset_id: str) -> np.ndarray:
    asset = services.store.get_asset(asset_id)
    assert asset is not None
    with Image.open(services.bot.asset_path(asset)) as image:
        return np.asarray(image.convert("RGB"))


def mask_of(services: Services, asset_id: str) -> tuple[str, np.ndarray]:
    (mask,) = [p for p in services.store.parents(asset_id) if p["kind"] == "mask"]
    with Image.open(services.bot.asset_path(mask)) as image:
        return mask["id"], np.asarray(image.convert("L")) >= 128


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def photo(tint: tuple[int, int, int] = (0, 0, 0), seed: int = 0) -> Image.Image:
    """A sky-like gradient with grain (what a seam shows against)."""
    rng = np.random.default_rng(seed)
    base = np.zeros((192, 288, 3))
    base[..., 0] = np.linspace(30, 90, 288)[None, :]
    base[..., 1] = np.linspace(60, 120, 192)[:, None]
    base[..., 2] = 190
    base += rng.normal(0, 6, base.shape) + tint
    return Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))


async def final_of(chat: Chat) -> str:
    grid = grid_of(await chat.command("draft", "a lighthouse at dusk --n 2 --seed 5"))
    return result_of(await chat.react(grid.asset_id, "1️⃣")).asset_id


# ------------------------------------------------------------------------------ regions


def test_boxes_by_numbers_and_by_name() -> None:
    assert parse_region("10,20,40,30") == Box(10, 20, 40, 30)
    assert parse_region(" 10%, 20% ,40,30 ") == Box(10, 20, 40, 30)
    assert parse_region("Top-Right") == Box(50, 0, 50, 50)
    assert parse_region("centre") == parse_region("center") == Box(25, 25, 50, 50)
    assert Box(50, 0, 50, 50).pixels(200, 100) == (100, 0, 200, 50)


@pytest.mark.parametrize(
    ("region", "message"),
    [
        ("0,0,0,10", "has no area"),
        ("90,0,20,10", "reaches outside the image"),
        ("-5,0,20,10", "reaches outside the image"),
        ("a,b,c,d", "--region takes x,y,w,h in percent of the image"),
        ("10,20,30", "--region takes x,y,w,h"),
        ("upper-left", "or one of left, right, top, bottom, center"),
    ],
)
async def test_a_bad_box_is_refused_before_anything_is_reserved(
    chat: Chat, services: Services, region: str, message: str
) -> None:
    final = await final_of(chat)
    before = len(list(services.store.db["ledger"].rows))
    (refusal,) = await chat.command("tierbot", f"edit {final} make it red --region {region}")
    assert refusal.private and refusal.error and message in refusal.text
    assert len(list(services.store.db["ledger"].rows)) == before
    assert list(services.store.db["assets"].rows_where("kind = 'mask'")) == []


# -------------------------------------------------------------- outside kept, every path


async def test_a_native_inpainting_edit_changes_only_the_region(
    chat: Chat, services: Services
) -> None:
    final = await final_of(chat)
    replies = await chat.command("tierbot", f"edit {final} paint the sky red --region top-left")
    assert "region: native mask inpainting" in replies[0].text
    edited = result_of(replies)
    mask_id, inside = mask_of(services, edited.asset_id)
    before, after = pixels(services, final), pixels(services, edited.asset_id)
    assert np.array_equal(before[~inside], after[~inside])  # outside: byte for byte
    assert not np.array_equal(before[inside], after[inside])  # a visible change inside
    assert "seam ΔE" in edited.text
    assert services.store.get_asset(mask_id)["sent_by"] == "test:alice"
    assert f"📎 {mask_id}" in _all_lines(services, edited.asset_id)  # shown on what it shaped


def _all_lines(services: Services, asset_id: str) -> str:
    lines: list[str] = []

    def walk(nodes: Any) -> None:
        for node in nodes:
            lines.append(node.describe())
            walk(node.children)

    walk(services.bot.lineage_tree(asset_id))
    return "\n".join(lines)


class ShiftingEditor:
    """An instruction-only editor that changes its whole picture: another size, a colour
    cast over everything, and its own content in the middle (what real models do)."""

    name = "shifty"

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.capabilities: list[str] = []

    async def submit(self, request: GenerationRequest) -> str:
        return f"shifty-{request.job_id}"

    async def result(self, provider_request_id: str, request: GenerationRequest) -> list[Any]:
        self.prompts.append(request.prompt)
        self.capabilities.append(request.capability.value)
        with Image.open(request.references[0]) as source:
            image = source.convert("RGB").resize((source.width // 2 + 7, source.height // 2))
        cast = np.clip(np.asarray(image, dtype=np.int16) + np.array([45, 15, -35]), 0, 255)
        image = Image.fromarray(cast.astype(np.uint8))
        ImageDraw.Draw(image).ellipse((10, 10, 60, 60), fill=(250, 40, 40))
        data = png(image)
        return [GeneratedFile(data=data, mime="image/png", width=image.width, height=image.height)]

    async def cancel(self, provider_request_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


@pytest.fixture
def shifty(tmp_path: Path, make_settings) -> tuple[Chat, ShiftingEditor]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        "[models.shifty-edit]\n"
        'provider = "shifty"\nprovider_model = "edit"\n'
        'stages = ["edit"]\ncapabilities = ["image-to-image"]\n'
        "price = 2000\nrank = 1\n"
    )
    # A low seam alert: every seam this editor leaves after matching offers 🪄.
    policy = write_policy(tmp_path, "[default]\nseam_alert = 0.5\n")
    settings = make_settings(catalog=catalog, policy=policy)
    editor = ShiftingEditor()
    services = wire(settings, providers=registry_with(settings, shifty=editor))
    return Chat(services), editor


async def test_an_instruction_only_edit_is_told_the_region_and_the_rest_is_kept(shifty) -> None:
    chat, editor = shifty
    services = chat.services
    final = await final_of(chat)
    replies = await chat.command("tierbot", f"edit {final} a red balloon --region 10,10,40,50")
    assert "region: told in words, then only the region is kept" in replies[0].text
    assert editor.capabilities == ["image-to-image"]
    assert "Change only the area from 10% to 50% across and 10% to 60% down" in editor.prompts[0]
    edited = result_of(replies)
    _, inside = mask_of(services, edited.asset_id)
    before, after = pixels(services, final), pixels(services, edited.asset_id)
    assert before.shape == after.shape  # the model's other size is not the result's
    assert np.array_equal(before[~inside], after[~inside])
    facts = services.store.get_asset(edited.asset_id)["facts"]
    assert facts["seam_after"] < facts["seam_before"]  # its colour cast was matched away
    assert services.store.get_asset(edited.asset_id)["prompt"] == "a red balloon"


async def test_a_painted_mask_marks_the_region(chat: Chat, services: Services) -> None:
    final = await final_of(chat)
    size = (services.store.get_asset(final)["width"], services.store.get_asset(final)["height"])
    painted = Image.new("RGBA", (300, 200), (0, 0, 0, 0))  # the canvas's display size
    ImageDraw.Draw(painted).rectangle((150, 100, 299, 199), fill=(255, 80, 80, 255))
    files = [InboundFile(name="mask.png", data=png(painted))]
    replies = await chat.command("tierbot", f"edit {final} a boat --mask", files=files)
    edited = result_of(replies)
    _, inside = mask_of(services, edited.asset_id)
    assert inside.shape == (size[1], size[0])
    assert inside[-1, -1] and not inside[0, 0]  # the bottom-right quarter, scaled
    before, after = pixels(services, final), pixels(services, edited.asset_id)
    assert np.array_equal(before[~inside], after[~inside])


async def test_an_empty_mask_or_none_is_refused_and_nothing_is_spent(
    chat: Chat, services: Services
) -> None:
    final = await final_of(chat)
    before = len(list(services.store.db["ledger"].rows))
    blank = InboundFile(name="mask.png", data=png(Image.new("RGBA", (50, 50), (0, 0, 0, 0))))
    (empty,) = await chat.command("tierbot", f"edit {final} a boat --mask", files=[blank])
    assert empty.private and "the mask marks nothing" in empty.text
    (missing,) = await chat.command("tierbot", f"edit {final} a boat --mask")
    assert missing.private and "--mask needs the mask image attached" in missing.text
    both = await chat.command("tierbot", f"edit {final} a boat --mask --region left")
    assert both[-1].private and "not both" in both[-1].text
    assert len(list(services.store.db["ledger"].rows)) == before


# ------------------------------------------------------------------------------- seams


def test_the_seam_falls_after_matching_a_patch_with_a_colour_shift() -> None:
    source = photo()
    patch = photo(tint=(40, 10, -40), seed=5)  # the model's picture: warmer all over
    ImageDraw.Draw(patch).ellipse((110, 60, 170, 120), fill=(220, 40, 40))
    mask = canvas.box_mask(source.size, Box(30, 25, 40, 50))
    result, seam = canvas.keep_outside(png(source), png(patch), png(mask), seed=3)
    assert seam.before > 8 and seam.after < seam.before / 2
    assert canvas.outside_unchanged(png(source), result, png(mask))
    with Image.open(io.BytesIO(result)) as image:
        red = np.asarray(image.convert("RGB"))[90, 140]
    assert red[0] > 150 and red[1] < 110  # the intended change survives the matching


def test_a_patch_that_already_matches_has_no_seam_to_fix() -> None:
    source = photo()
    mask = canvas.box_mask(source.size, Box(30, 25, 40, 50))
    _, seam = canvas.keep_outside(png(source), png(source), png(mask))
    assert seam.before == 0 and seam.after < 1


# ------------------------------------------------------------------------------- drift


def test_drift_flags_a_hue_shift_and_not_a_reseed_of_the_same_palette() -> None:
    source = photo()
    teal = np.clip(np.asarray(source, dtype=np.int16) + np.array([-60, 30, -40]), 0, 255)
    shifted = canvas.drift(source, Image.fromarray(teal.astype(np.uint8)))
    assert shifted.palette > 10 and shifted.before == "blue"
    assert "palette drift ΔE" in shifted.line(10) and "react 🎨" in shifted.line(10)
    named = canvas.Drift(14.0, 0.9, "blue", "teal").line(10)
    assert "palette drift ΔE 14 — blue → teal" in named
    reseeded = canvas.drift(source, photo(seed=9).transpose(Image.Transpose.FLIP_TOP_BOTTOM))
    assert reseeded.palette < 5 and "close to" in reseeded.line(10)
    assert reseeded.structure < shifted.structure  # the layout moved, the colours did not


async def test_every_final_says_how_close_it_is_to_its_draft(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse at dusk --n 2 --seed 5"))
    final = result_of(await chat.react(grid.asset_id, "1️⃣"))
    assert "🎯 close to draft" in final.text and "🎨" not in final.reactions
    facts = chat.services.store.get_asset(final.asset_id)["facts"]
    assert "drift_palette" in facts and "drift_layout" in facts


async def test_matching_colours_makes_a_free_child_close_to_the_source(shifty) -> None:
    chat, _ = shifty
    services = chat.services
    final = await final_of(chat)
    edited = result_of(await chat.command("tierbot", f"edit {final} make it warmer"))
    assert "palette drift ΔE" in edited.text and "🎨" in edited.reactions
    spent = len(list(services.store.db["ledger"].rows))
    matched = result_of(await chat.react(edited.asset_id, "🎨"))
    assert matched.text.startswith(f"🎨 Colours of {edited.asset_id} matched to")
    assert "close to" in matched.text
    assert len(list(services.store.db["ledger"].rows)) == spent  # free
    parents = [p["id"] for p in services.store.parents(matched.asset_id)]
    assert parents[0] == edited.asset_id
    typed = result_of(await chat.command("tierbot", f"match {edited.asset_id}"))  # the shell's way
    assert typed.text.startswith(f"🎨 Colours of {edited.asset_id} matched to")


async def test_a_visible_seam_offers_a_soft_pass(shifty, tmp_path: Path) -> None:
    chat, _ = shifty
    services = chat.services
    final = await final_of(chat)
    edited = result_of(await chat.command("tierbot", f"edit {final} a red balloon --region left"))
    assert "🪄" in edited.reactions and "react 🪄 for a soft pass" in edited.text
    unified = result_of(await chat.react(edited.asset_id, "🪄"))
    assert unified.text.startswith("🪄 Unified")
    assert services.store.parents(unified.asset_id)[0]["id"] == edited.asset_id


async def test_a_video_is_checked_by_its_first_frame(chat: Chat) -> None:
    final = await final_of(chat)
    video = result_of(await chat.react(final, "🎬"))
    assert "🎯 close to final" in video.text  # its first frame is the final
