"""The stage-gate pipeline end to end through the core, as a chat surface drives it."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import pytest
from PIL import Image

from adapters import wire
from tests.conftest import Chat, write_policy


def grid_of(replies):
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def result_of(replies):
    return next(r for r in replies if r.asset_id)


async def test_draft_select_upscale_video_lineage(chat: Chat) -> None:
    replies = await chat.command(
        "draft", "astronaut in an overgrown jungle --ar 16:9 --n 4 --seed 42 --style cinematic"
    )
    status, grid = replies
    assert status.status and "draft on local-draft" in status.text
    assert grid.reactions == ["1️⃣", "2️⃣", "3️⃣", "4️⃣", "🔁", "❌"]
    assert "4 credits" in grid.text and "local-draft" in grid.text
    with Image.open(grid.files[0]) as image:
        assert image.format == "JPEG"
    store = chat.services.store
    drafts = store.parents(grid.asset_id)
    assert [d["seed"] for d in drafts] == [42, 43, 44, 45]
    assert (drafts[0]["width"], drafts[0]["height"]) == (1024, 576)

    final = result_of(await chat.react(grid.asset_id, "2️⃣"))
    final_row = store.get_asset(final.asset_id)
    assert final_row["stage"] == "final" and final_row["seed"] == 43  # the draft's seed
    assert [p["id"] for p in store.parents(final.asset_id)] == [drafts[1]["id"]]  # reference
    assert "anamorphic 35mm lens" in final_row["prompt"]  # enriched by the cinematic preset
    assert final.thread_of == grid.asset_id
    assert final.reactions == ["🎬", "⬆️", "✅", "🔀", "🔁", "❌"]
    assert [g["decision"] for g in store.gates(drafts[1]["id"])] == ["selected"]

    upscale = result_of(await chat.react(final.asset_id, "⬆️"))
    with Image.open(upscale.files[0]) as image:
        assert max(image.size) == 2048

    video = result_of(await chat.react(final.asset_id, "🎬"))
    frames, seconds = imageio_ffmpeg.count_frames_and_secs(str(video.files[0]))
    assert round(seconds) == 4 and frames == 96
    assert video.reactions == ["🔁", "✅", "❌"]

    (lineage,) = await chat.command("tierbot", f"lineage {video.asset_id}")
    lines = lineage.text.splitlines()
    assert lines[1].startswith(drafts[1]["id"]) and f"in grid {grid.asset_id}" in lines[1]
    assert "selected by alice" in lines[1]
    assert lines[2].strip().startswith(final.asset_id)
    assert {lines[3].split()[0], lines[4].split()[0]} == {upscale.asset_id, video.asset_id}
    assert lines[4].endswith("◀") or lines[3].endswith("◀")

    (budget,) = await chat.command("tierbot", "budget")
    assert "Today: 19 credits" in budget.text  # 4 drafts + final 5 + upscale 2 + video 8


async def test_same_reaction_delivered_twice_acts_once(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse at dawn --n 2"))
    first = await chat.react(grid.asset_id, "1️⃣", event_id="Ev1")
    again = await chat.react(grid.asset_id, "1️⃣", event_id="Ev1")
    assert result_of(first).asset_id and again == []
    other_event = await chat.react(grid.asset_id, "1️⃣", event_id="Ev2")
    assert other_event[0].private and "already escalated" in other_event[0].text
    finals = [a for a in chat.services.store.db["assets"].rows if a["stage"] == "final"]
    assert len(finals) == 1


async def test_non_approver_is_told_privately_and_nothing_is_spent(
    tmp_path: Path, make_settings
) -> None:
    policy = write_policy(
        tmp_path,
        """
[teams.T1.channels.C1]
approvers = ["bob", "group:leads"]
""",
    )
    services = wire(make_settings(policy=policy))
    alice = Chat(services)
    grid = grid_of(await alice.command("draft", "a red bicycle --n 2"))  # drafting is open
    spent = services.ledger.report("T1")["day"]

    refused = await alice.react(grid.asset_id, "1️⃣")
    assert len(refused) == 1 and refused[0].private and refused[0].error
    assert "Only approvers can spend credits here" in refused[0].text and "bob" in refused[0].text
    assert services.ledger.report("T1")["day"] == spent
    assert services.store.gates(services.store.parents(grid.asset_id)[0]["id"]) == []

    lead = alice.as_user("carol", groups=("group:leads",))
    assert result_of(await lead.react(grid.asset_id, "1️⃣")).asset_id
    services.store.close()


async def test_open_spend_threshold_lets_anyone_take_cheap_steps(
    tmp_path: Path, make_settings
) -> None:
    policy = write_policy(
        tmp_path,
        """
[teams.T1]
approvers = ["bob"]
open_spend_credits = 5
""",
    )
    services = wire(make_settings(policy=policy))
    alice = Chat(services)
    grid = grid_of(await alice.command("draft", "a red bicycle --n 2"))
    final = result_of(await alice.react(grid.asset_id, "1️⃣"))  # 5 credits: within threshold
    refused = await alice.react(final.asset_id, "🎬")  # 8 credits: needs an approver
    assert refused[0].private and "costs 8 credits" in refused[0].text
    signoff = await alice.react(final.asset_id, "✅")  # a decision: approvers only
    assert signoff[0].private and "Only approvers can decide" in signoff[0].text
    services.store.close()


async def test_budget_refuses_before_spending_with_price_and_what_is_left(
    tmp_path: Path, make_settings
) -> None:
    policy = write_policy(tmp_path, "[teams.T1]\ndaily_credits = 6\n")
    services = wire(make_settings(policy=policy))
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a cat --n 4"))  # 4 of 6
    refused = await chat.react(grid.asset_id, "1️⃣")  # 5 more would pass the cap
    assert refused[0].private
    assert (
        refused[0].text == "not enough budget: final on local-final costs 5 credits; 2 credits left"
    )
    (again,) = await chat.command("draft", "a dog --n 4")
    assert "costs 4 credits; 2 credits left" in again.text
    assert services.store.db.execute("select count(*) from requests").fetchone()[0] == 1
    services.store.close()


async def test_reroll_then_route_up_after_rejected_grids(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a lighthouse at dawn --n 2 --seed 7"))
    second = grid_of(await chat.react(grid.asset_id, "🔁"))
    assert second.thread_of == grid.asset_id
    assert "draft on local-draft" in second.text  # one rejection: still the draft tier
    third = grid_of(await chat.react(second.asset_id, "🔁"))
    assert "routed up to the final tier after 2 rejected grids" in third.text
    assert "local-final" in third.text
    seeds = {chat.services.store.parents(g.asset_id)[0]["seed"] for g in (grid, second, third)}
    assert len(seeds) == 3


async def test_discard_records_rejection_and_spends_nothing(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a cat --n 2"))
    before = chat.services.ledger.report("T1")["day"]
    (reply,) = await chat.react(grid.asset_id, "❌")
    assert "discarded" in reply.text
    assert chat.services.ledger.report("T1")["day"] == before
    (again,) = await chat.react(grid.asset_id, "🔁")
    assert again.private and "already rerolled or discarded" in again.text


async def test_meaningless_reaction_is_explained_privately(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a cat --n 2"))
    (reply,) = await chat.react(grid.asset_id, "⬆️")
    assert reply.private and "means nothing on a draft grid" in reply.text
    (reply,) = await chat.react(grid.asset_id, "5️⃣")
    assert reply.private and "has drafts 1 to 2; got 5" in reply.text


async def test_approve_reject_and_rerender_a_final(chat: Chat) -> None:
    grid = grid_of(await chat.command("draft", "a cat --n 2"))
    final = result_of(await chat.react(grid.asset_id, "1️⃣"))
    rerendered = result_of(await chat.react(final.asset_id, "🔁"))
    store = chat.services.store
    assert (
        store.get_asset(rerendered.asset_id)["seed"] == store.get_asset(final.asset_id)["seed"] + 1
    )
    assert [g["decision"] for g in store.gates(final.asset_id)] == ["rejected"]
    (ok,) = await chat.react(rerendered.asset_id, "✅")
    assert "signed off by alice" in ok.text
    assert chat.services.ledger.report("T1")["approved_finals"] == 1


async def test_edit_and_storyboard_commands(chat: Chat) -> None:
    board = grid_of(await chat.command("tierbot", "storyboard a seed | a sprout | a tree --seed 3"))
    drafts = chat.services.store.parents(board.asset_id)
    assert [d["prompt"] for d in drafts] == ["a seed", "a sprout", "a tree"]
    final = result_of(await chat.react(board.asset_id, "3️⃣"))
    assert chat.services.store.get_asset(final.asset_id)["prompt"] == "a tree"
    edit = result_of(await chat.command("tierbot", f'edit {final.asset_id} "make it autumn"'))
    assert chat.services.store.get_asset(edit.asset_id)["stage"] == "edit"


@pytest.mark.parametrize(
    ("command", "text", "message"),
    [
        ("draft", "", "/draft needs a prompt"),
        (
            "draft",
            "a cat --ar 16x9",
            "--ar must be one of 1:1, 4:3, 3:4, 16:9, 9:16, 4:5, 21:9; got 16x9",
        ),
        ("draft", "a cat --style noir", "--style must be one of cinematic, editorial"),
        (
            "draft",
            "a cat --model nano-banana",
            "nano-banana is unavailable: provider gemini not configured",
        ),
        ("draft", "a cat --model local-video", "--model local-video cannot do text-to-image"),
        ("tierbot", "upscale nope", "no asset nope"),
        ("tierbot", "lineage nope", "no asset nope"),
        ("tierbot", "upscal x", "did you mean 'upscale'"),
    ],
)
async def test_bad_input_gets_a_private_specific_message_and_writes_nothing(
    chat: Chat, command: str, text: str, message: str
) -> None:
    replies = await chat.command(command, text)
    assert len(replies) == 1 and replies[0].private and replies[0].error
    assert message in replies[0].text
    assert "Traceback" not in replies[0].text
    db = chat.services.store.db
    assert db.execute("select count(*) from requests").fetchone()[0] == 0
    assert db.execute("select count(*) from ledger").fetchone()[0] == 0


async def test_models_and_help_are_private(chat: Chat) -> None:
    (models,) = await chat.command("tierbot", "models")
    assert models.private
    assert "local-draft · local" in models.text and "available" in models.text
    assert "nano-banana-pro · gemini (gemini-3-pro-image)" in models.text
    assert "unavailable: provider gemini not configured" in models.text
    (help_reply,) = await chat.command("tierbot", "help")
    assert "/draft" in help_reply.text or "draft" in help_reply.text


async def test_unexpected_error_gets_a_reference_not_a_traceback(
    chat: Chat, monkeypatch, caplog
) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(chat.services.pipeline, "models", boom)
    (reply,) = await chat.command("tierbot", "models")
    assert "Something went wrong on our side (ref " in reply.text
    assert "disk on fire" not in reply.text
    assert "disk on fire" in caplog.text


@pytest.fixture
def flaky_final(tmp_path: Path, make_settings):
    """The shipped catalog with local-final served by a scripted provider."""
    from bot.providers import ContentPolicyError, PermanentError
    from tests.conftest import ScriptedProvider, registry_with

    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.local-final]\nprovider = "flaky"\n')
    settings = make_settings(catalog=catalog)
    flaky = ScriptedProvider(
        "flaky", [PermanentError("400 reference too small"), ContentPolicyError("IMAGE_SAFETY")]
    )
    services = wire(settings, providers=registry_with(settings, flaky=flaky))
    yield Chat(services)
    services.store.close()


async def test_failed_final_is_reported_charges_nothing_and_can_be_retried(flaky_final) -> None:
    chat = flaky_final
    grid = grid_of(await chat.command("draft", "a cat --n 2"))
    failed = await chat.react(grid.asset_id, "1️⃣")
    assert failed[-1].error and not failed[-1].private
    assert failed[-1].text == (
        "⚠️ Failed: local-final failed: 400 reference too small. Nothing was charged."
    )
    refused = await chat.react(grid.asset_id, "1️⃣")  # the gate was released: may try again
    assert refused[-1].text.startswith("🚫 Refused by the provider's content policy")
    final = result_of(await chat.react(grid.asset_id, "1️⃣"))
    assert final.asset_id
    states = [r["state"] for r in chat.services.store.db["ledger"].rows_where("stage = 'final'")]
    assert sorted(states) == ["released", "released", "settled"]


async def test_cross_on_a_status_line_cancels_the_running_job(
    tmp_path: Path, make_settings
) -> None:
    import asyncio

    from tests.conftest import ScriptedProvider, registry_with

    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.local-final]\nprovider = "gated"\n')
    settings = make_settings(catalog=catalog)
    gated = ScriptedProvider("gated")
    gated.gate = asyncio.Event()  # the final never finishes on its own
    services = wire(settings, providers=registry_with(settings, gated=gated))
    chat = Chat(services)
    grid = grid_of(await chat.command("draft", "a cat --n 2"))
    selecting = asyncio.create_task(chat.react(grid.asset_id, "1️⃣"))
    await gated.entered.wait()
    status = next(m for m, r in chat.posted.items() if r.status and r.thread_of == grid.asset_id)
    assert chat.posted[status].reactions == ["❌"]

    (nothing,) = await chat.react_to(status, "🎬")
    assert nothing.private and "react ❌ to cancel" in nothing.text
    (cancelled,) = await chat.react_to(status, "❌")
    assert cancelled.text.startswith("🛑 Cancelled by alice: 1 job(s) stopped")
    with pytest.raises(asyncio.CancelledError):
        await selecting
    assert gated.cancelled == ["gated-req-1"]
    final_jobs = [j for j in services.store.db["jobs"].rows if j["stage"] == "final"]
    assert [j["state"] for j in final_jobs] == ["cancelled"]
    states = [r["state"] for r in services.store.db["ledger"].rows_where("stage = 'final'")]
    assert states == ["released"]
    (again,) = await chat.react_to(status, "❌", event_id="second")
    assert "Nothing is running" in again.text
    services.store.close()


@pytest.mark.parametrize(
    ("size", "ratio"),
    [
        ((1536, 864), "16:9"),
        ((1024, 1024), "1:1"),
        ((864, 1080), "4:5"),
        ((576, 1024), "9:16"),
        ((2100, 900), "21:9"),
    ],
)
def test_results_keep_the_shape_of_their_source(size, ratio) -> None:
    from bot.pipeline import nearest_ratio

    assert nearest_ratio(*size) == ratio
