"""Images in, in the core: reference images on every image step, named references,
variations and remixes, the editor round trip, and every inbound image treated as hostile.
Each surface's own way in (Slack mentions and links, Discord attachments, the web's 📎) is
tested with its fake in that surface's test module; the shell's ``--ref <path>`` here."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from adapters import wire
from adapters.shell import run_command
from bot.app import Services
from bot.domain import CommandEvent, InboundFile, Reply
from bot.uploads import MAX_UPLOAD_BYTES, clean_image
from tests.conftest import Chat
from tests.images import BOMB_PIXELS, animated_gif, bomb, png
from tests.test_exactly_once import killed
from tests.test_resume import Posted, with_local


def image_file(name: str = "mug.png", **kwargs: Any) -> InboundFile:
    return InboundFile(name=name, data=png(**kwargs))


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id)


def uploads(services: Services) -> list[dict[str, Any]]:
    return list(services.store.db["assets"].rows_where("kind = 'upload'", order_by="rowid"))


def spent(services: Services) -> list[dict[str, Any]]:
    return list(services.store.db["ledger"].rows)


def drafts_of(services: Services, grid_id: str) -> list[dict[str, Any]]:
    drafts = services.store.parents(grid_id)
    assert drafts, f"grid {grid_id} has no drafts"  # a loop over them checks something
    return drafts


# ----------------------------------------------------------------- references on drafts


async def test_a_draft_with_attached_images_uses_them_and_keeps_them_in_the_lineage(
    chat: Chat, services: Services
) -> None:
    files = [image_file("mug.png"), image_file("logo.png", colour=(20, 40, 220))]
    replies = await chat.command("draft", "our mug on a desk --n 2 --seed 7", files=files)
    grid = grid_of(replies)
    sent = uploads(services)
    assert [u["prompt"] for u in sent] == ["mug.png", "logo.png"]
    assert {u["sent_by"] for u in sent} == {"test:alice"}
    for draft in drafts_of(services, grid.asset_id):
        assert [p["id"] for p in services.store.parents(draft["id"])] == [u["id"] for u in sent]
        assert draft["prompt"] == "our mug on a desk"  # people's words, not the model's
    (job,) = services.store.db["jobs"].rows
    assert '"image-to-image"' in job["params"] and "keep the same product" in job["params"]
    assert "takes 2 images" in replies[0].text  # the router says why it picked the model
    # The offline preview shows the reference: not the draft the same seed makes without it.
    plain = grid_of(await chat.command("draft", "our mug on a desk --n 2 --seed 7"))
    with_ref = services.store.parents(grid.asset_id)[0]["sha256"]
    assert with_ref != services.store.parents(plain.asset_id)[0]["sha256"]


async def test_a_named_reference_shapes_two_drafts_and_can_be_removed(
    chat: Chat, services: Services
) -> None:
    saved = await chat.command("tierbot", "ref add Mug", files=[image_file()])
    assert saved[-1].text.startswith("📌 Reference mug saved by alice: 1 image(s)")
    (upload,) = uploads(services)
    listed = await chat.command("tierbot", "ref list")
    assert listed[-1].private and f"• mug: 1 image(s), {upload['id']}" in listed[-1].text
    for prompt in ("the mug on a beach", "the mug in snow"):
        grid = grid_of(await chat.command("draft", f"{prompt} --n 1 --ref mug"))
        (draft,) = drafts_of(services, grid.asset_id)
        assert [p["id"] for p in services.store.parents(draft["id"])] == [upload["id"]]
    taken = await chat.command("tierbot", "ref add mug", files=[image_file()])
    assert taken[-1].error and "exists already" in taken[-1].text
    assert (await chat.command("tierbot", "ref remove mug"))[-1].text.startswith("🗑️")
    missing = await chat.command("draft", "the mug again --ref mug")
    assert missing[-1].private and "no image asset or named reference" in missing[-1].text
    assert len(uploads(services)) == 2  # the refused "ref add" checked and kept its image


async def test_an_asset_id_is_a_reference_and_a_style_reference(
    chat: Chat, services: Services
) -> None:
    grid = grid_of(await chat.command("draft", "a red mug --n 2"))
    first, second = (d["id"] for d in drafts_of(services, grid.asset_id))
    replies = await chat.command("draft", f"a blue mug --n 1 --ref {first} --sref {second}")
    (draft,) = drafts_of(services, grid_of(replies).asset_id)
    assert [p["id"] for p in services.store.parents(draft["id"])] == [first, second]
    job = services.store.get_job(draft["job_id"])
    assert job["params"]["style_references"] == 1
    assert "Attached image 2: style only" in job["params"]["prompt"]


async def test_references_go_on_to_the_final_and_to_an_edit(chat: Chat, services: Services) -> None:
    grid = grid_of(await chat.command("draft", "a mug --n 2", files=[image_file()]))
    (upload,) = uploads(services)
    final = result_of(await chat.react(grid.asset_id, "2️⃣"))
    parents = [p["id"] for p in services.store.parents(final.asset_id)]
    assert parents[1:] == [upload["id"]]  # the draft first, then the product it kept
    edited = result_of(
        await chat.command(
            "tierbot", f"edit {final.asset_id} make it glossy", files=[image_file("gloss.png")]
        )
    )
    assert len(services.store.parents(edited.asset_id)) == 2


async def test_a_model_that_takes_no_reference_is_skipped_and_the_refusal_names_others(
    tmp_path: Path, make_settings
) -> None:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        "[models.text-only]\n"
        'provider = "local"\nprovider_model = "preview"\n'
        'stages = ["draft"]\ncapabilities = ["text-to-image"]\n'
        "price = 500\nlatency_s = 0.1\n"
    )
    services = wire(make_settings(catalog=catalog))
    chat = Chat(services)
    plain = await chat.command("draft", "a mug --n 1")
    assert "draft on text-only" in plain[0].text
    shaped = await chat.command("draft", "a mug --n 1", files=[image_file()])
    assert "draft on local-draft" in shaped[0].text
    pinned = await chat.command("draft", "a mug --model text-only", files=[image_file()])
    assert pinned[-1].private
    assert "text-only cannot do image-to-image" in pinned[-1].text
    five = [image_file(f"{i}.png", colour=(i * 40, 0, 0)) for i in range(5)]
    refused = await chat.command("draft", "a mug", files=five)
    assert refused[-1].private
    assert "local-draft takes 4 images per call; this needs 5" in refused[-1].text
    assert "models that would take these images: local-final" not in refused[-1].text
    assert "no catalog model takes that many images" in refused[-1].text
    assert len(spent(services)) == 2  # the two drafts made; nothing for the refusals
    await services.aclose()


# --------------------------------------------------------------------- hostile input


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (lambda: b"\x89PNG" + b"\0" * (MAX_UPLOAD_BYTES + 1), "MB; images up to 20 MB"),
        (lambda: b"name,date\nmug,monday\n", "'bad.png' is not a readable image"),
        (bomb, f"is {BOMB_PIXELS}, over the limit of 40,000,000 pixels"),
        (animated_gif, "'bad.png' is a GIF file; send a JPEG, PNG, WEBP image"),
    ],
    ids=["too-big", "not-an-image", "bomb", "animated-gif"],
)
async def test_a_bad_image_is_refused_privately_and_nothing_is_spent_or_kept(
    chat: Chat, services: Services, data: Any, message: str
) -> None:
    files = [image_file("good.png"), InboundFile(name="bad.png", data=data())]
    (refusal,) = await chat.command("draft", "a mug", files=files)
    assert refusal.private and refusal.error
    assert message in refusal.text and refusal.text.startswith("Not used:")
    assert refusal.text.endswith("Nothing was spent.")
    assert spent(services) == [] and list(services.store.db["jobs"].rows) == []
    assert uploads(services) == []  # the good image is not kept either: one refusal, none


def test_an_animated_png_is_refused_and_a_still_one_is_not() -> None:
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, "PNG", save_all=True, append_images=frames[1:])
    with pytest.raises(Exception, match="is animated; send a still image"):
        clean_image(buffer.getvalue(), "apng.png")
    assert clean_image(png(), "still.png").mime == "image/png"


def test_the_location_and_other_metadata_are_dropped_and_the_orientation_applied() -> None:
    image = Image.new("RGB", (40, 20), (10, 120, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # GPS
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert b"Exif" in buffer.getvalue()
    cleaned = clean_image(buffer.getvalue(), "holiday.jpg")
    assert (cleaned.width, cleaned.height) == (20, 40)  # stored upright
    assert b"Exif" not in cleaned.data and b"GPS" not in cleaned.data
    with Image.open(io.BytesIO(cleaned.data)) as stored:
        assert not stored.getexif()


async def test_files_on_a_command_that_takes_none_are_refused(chat: Chat) -> None:
    (refusal,) = await chat.command("tierbot", "budget", files=[image_file()])
    assert refusal.private and "/tierbot budget takes no files" in refusal.text


# ------------------------------------------------------------------ variations, remix


async def test_variations_of_a_draft_of_an_asset_and_a_remix(chat: Chat, services: Services):
    grid = grid_of(await chat.command("draft", "a lighthouse --n 2"))
    second = drafts_of(services, grid.asset_id)[1]
    subtle = await chat.command("tierbot", f"vary {grid.asset_id} 2")
    varied = grid_of(subtle)
    assert subtle[0].text.startswith("🔀 Subtle variations of " + second["id"])
    assert varied.thread_of == grid.asset_id
    for draft in drafts_of(services, varied.asset_id):
        assert [p["id"] for p in services.store.parents(draft["id"])] == [second["id"]]
    strong = await chat.command("tierbot", f"vary {second['id']} --strong --n 1")
    assert "Strong variations" in strong[0].text
    remix = await chat.command("tierbot", f'vary {second["id"]} --prompt "at night, in rain"')
    assert "Remix “at night, in rain”" in remix[0].text


async def test_the_shuffle_reaction_on_a_final_makes_subtle_variations(
    chat: Chat, services: Services
) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse --n 2"))
    final = result_of(await chat.react(grid.asset_id, "1️⃣"))
    assert "🔀" in final.reactions
    replies = await chat.react(final.asset_id, "🔀")
    varied = grid_of(replies)
    assert varied.thread_of == final.asset_id
    for draft in drafts_of(services, varied.asset_id):
        assert [p["id"] for p in services.store.parents(draft["id"])] == [final.asset_id]


async def test_vary_needs_a_draft_number_on_a_grid(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse --n 2"))
    (refusal,) = await chat.command("tierbot", f"vary {grid.asset_id}")
    assert refusal.private and "say which draft" in refusal.text


# ----------------------------------------------------------------- editor round trip


async def test_a_hand_fixed_version_goes_on_like_a_final(chat: Chat, services: Services) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse --n 2"))
    final = result_of(await chat.react(grid.asset_id, "1️⃣"))
    fixed = image_file("fixed.png", colour=(0, 200, 0), size=(96, 64))
    replies = await chat.command("tierbot", f"upload {final.asset_id}", files=[fixed])
    version = result_of(replies)
    row = services.store.get_asset(version.asset_id)
    assert (row["kind"], row["stage"], row["sent_by"]) == ("image", "manual", "test:alice")
    assert version.thread_of == final.asset_id and "🔁" not in version.reactions
    assert services.store.parents(version.asset_id)[0]["id"] == final.asset_id
    upscaled = result_of(await chat.react(version.asset_id, "⬆️"))
    assert services.store.parents(upscaled.asset_id)[0]["id"] == version.asset_id
    (tree,) = chat.services.bot.lineage_tree(upscaled.asset_id)
    assert tree.asset["stage"] == "draft"  # the lineage runs from the draft ...
    lines = []

    def walk(node: Any) -> None:
        lines.append(node.describe())
        for child in node.children:
            walk(child)

    walk(tree)
    assert any("🖌️ manual · fixed by hand by alice" in line for line in lines)  # ... by hand
    twice = await chat.command("tierbot", f"upload {final.asset_id}", files=[fixed, fixed])
    assert twice[-1].private and "attach exactly one image" in twice[-1].text


# -------------------------------------------------------------------------- restarts


async def test_a_command_with_images_received_before_a_crash_runs_after_it(
    make_settings,
) -> None:
    first = with_local(make_settings)
    chat = Chat(first)
    event = CommandEvent(
        origin=chat.origin,
        command="draft",
        text="our mug on a desk --n 1",
        files=[image_file()],
        delivery_id="page:1",
    )
    assert first.bot.receive(event)  # the bytes are kept with the event ...
    killed(first)  # ... and the process dies before running it

    second = with_local(make_settings)
    posted = Posted(second)
    await second.bot.recover()
    (grid,) = [r for _, r in posted.replies if r.asset_id]
    (draft,) = drafts_of(second, grid.asset_id)
    (upload,) = uploads(second)
    assert [p["id"] for p in second.store.parents(draft["id"])] == [upload["id"]]
    await second.aclose()


async def test_images_lost_before_they_were_kept_are_asked_for_again(make_settings) -> None:
    first = with_local(make_settings)
    chat = Chat(first)
    # A surface that downloads after the acknowledgement (Slack, Discord) received the
    # command without the bytes; the process died before the download.
    event = CommandEvent(
        origin=chat.origin,
        command="draft",
        text="our mug --n 1",
        files=[InboundFile(name="mug.png")],
        delivery_id="chat:2",
    )
    assert first.bot.receive(event)
    killed(first)
    second = with_local(make_settings)
    posted = Posted(second)
    await second.bot.recover()
    (reply,) = [r for _, r in posted.replies]
    assert reply.private and "mug.png was lost when the bot restarted" in reply.text
    assert spent(second) == []
    await second.aclose()


# ---------------------------------------------------------------------------- shell


async def test_the_shell_sends_a_file_path_given_as_ref(
    services: Services, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "mug.png"
    path.write_bytes(png())
    assert await run_command(services, ["draft", "a mug", "--n", "1", "--ref", str(path)]) == 0
    assert [u["prompt"] for u in uploads(services)] == ["mug.png"]
    fixed = tmp_path / "fixed.png"
    fixed.write_bytes(png((0, 0, 255)))
    (draft,) = services.store.db["assets"].rows_where("kind = 'image'", limit=1)
    assert await run_command(services, ["upload", draft["id"], "--file", str(fixed)]) == 0
    assert "Hand-fixed version" in capsys.readouterr().out
