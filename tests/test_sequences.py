"""Shot sequences: storyboard beats animated as short shots and stitched, reshoots and new
orders, a failing shot and a restart in the middle; motion words on every video."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from adapters import load_providers, wire
from bot import footage
from bot.app import Services
from bot.domain import Reply
from bot.providers import GenerationRequest, PermanentError
from tests.conftest import Chat, collect, registry_with
from tests.test_exactly_once import killed
from tests.test_resume import Posted

FRAME_S = 1 / footage.FPS
BEATS = "a fox wakes in its den | it sees the first snow | it leaps into a drift"


def path_to(nodes: list[Any], asset_id: str) -> list[str]:
    """The asset ids from a lineage tree's root down to ``asset_id`` ([] if absent)."""
    for node in nodes:
        if node.asset["id"] == asset_id:
            return [asset_id]
        if below := path_to(node.children, asset_id):
            return [node.asset["id"], *below]
    return []


def grid_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.asset_id and r.reactions and r.reactions[0] == "1️⃣")


def sequence_of(replies: list[Reply]) -> Reply:
    return next(r for r in replies if r.text.startswith("🎞️ Sequence"))


def sequence_id(reply: Reply) -> str:
    return reply.text.split()[2]


def ledger(services: Services) -> list[tuple[str, str]]:
    return [(r["stage"], r["state"]) for r in services.store.db["ledger"].rows]


def first_frame(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    frame = next(reader)
    reader.close()
    width, height = meta["size"]
    return np.frombuffer(frame, dtype=np.uint8).reshape(height, width, 3)


def looks_like(frame: np.ndarray, image_path: Path) -> bool:
    with Image.open(image_path) as image:
        still = np.asarray(image.convert("RGB").resize(frame.shape[1::-1]), dtype=np.float64)
    return float(np.abs(still - frame).mean()) < 12  # H.264 at crf 20, and a resize


async def storyboard(chat: Chat) -> Reply:
    return grid_of(await chat.command("tierbot", f"storyboard {BEATS} --seed 11 --ar 16:9"))


async def test_a_storyboard_becomes_a_stitched_sequence_of_its_beats(
    chat: Chat, services: Services
) -> None:
    grid = await storyboard(chat)
    replies = await chat.react(grid.asset_id, "🎬")
    status = replies[0]
    assert status.status and "3 shots of 3 s" in status.text
    assert "reserved for the whole sequence" in status.text
    sequence = sequence_of(replies)
    assert sequence.thread_of == grid.asset_id and sequence.reactions == ["✅", "❌"]
    stitched = services.store.get_asset(sequence.asset_id)
    shots = services.store.parents(sequence.asset_id)
    drafts = services.store.parents(grid.asset_id)
    assert len(shots) == 3
    # Each shot's motion is its own beat's words, in beat order.
    assert [s["prompt"] for s in shots] == BEATS.split(" | ")
    for shot, draft in zip(shots, drafts, strict=True):
        assert [p["id"] for p in services.store.parents(shot["id"])] == [draft["id"]]
        assert looks_like(
            first_frame(services.bot.asset_path(shot)), services.bot.asset_path(draft)
        )
    lengths = [footage.probe(services.bot.asset_path(s))[2] for s in shots]
    assert abs(stitched["duration_s"] - sum(lengths)) <= FRAME_S
    assert sorted(ledger(services)).count(("video", "settled")) == 3
    # The lineage shows each beat's branch, the stitch under its first shot.
    assert path_to(services.bot.lineage_tree(sequence.asset_id), sequence.asset_id)[-2:] == [
        shots[0]["id"],
        sequence.asset_id,
    ]


async def test_reshoot_replaces_exactly_one_shot_and_order_is_free(
    chat: Chat, services: Services
) -> None:
    grid = await storyboard(chat)
    first = sequence_of(await chat.command("tierbot", f"shots {grid.asset_id} --seconds 2"))
    seq = sequence_id(first)
    before = [p["id"] for p in services.store.parents(first.asset_id)]
    spent = len(ledger(services))
    again = sequence_of(await chat.command("tierbot", f"reshoot {seq} 2 slow pan left"))
    after = [p["id"] for p in services.store.parents(again.asset_id)]
    assert after[0] == before[0] and after[2] == before[2] and after[1] != before[1]
    assert len(ledger(services)) == spent + 1  # one shot paid for
    reshot = services.store.get_asset(after[1])
    assert reshot["prompt"] == "slow pan left"
    reordered = sequence_of(await chat.command("tierbot", f"order {seq} 3,1,2"))
    assert "free" in reordered.text
    assert [p["id"] for p in services.store.parents(reordered.asset_id)] == [
        after[2],
        after[0],
        after[1],
    ]
    assert len(ledger(services)) == spent + 1  # the new order spent nothing
    (bad,) = await chat.command("tierbot", f"order {seq} 1,1,2")
    assert bad.private and "a permutation of 1 to 3" in bad.text
    signed = await chat.react(reordered.asset_id, "✅")
    assert signed[-1].state_of == reordered.asset_id


async def test_a_second_clapperboard_on_a_grid_spends_nothing(
    chat: Chat, services: Services
) -> None:
    grid = await storyboard(chat)
    sequence_of(await chat.react(grid.asset_id, "🎬"))
    spent = len(ledger(services))
    (again,) = await chat.as_user("bob").react(grid.asset_id, "🎬")
    assert again.private and "already being shot as a sequence" in again.text
    assert len(ledger(services)) == spent


async def test_only_storyboards_make_sequences_of_short_shots(chat: Chat) -> None:
    plain = grid_of(await chat.command("draft", "a fox --n 2"))
    (refusal,) = await chat.react(plain.asset_id, "🎬")
    assert refusal.private and "is not a storyboard" in refusal.text
    grid = await storyboard(chat)
    (long,) = await chat.command("tierbot", f"shots {grid.asset_id} --seconds 6")
    assert long.private and "shots are 2 to 3 seconds" in long.text


class FailingShots:
    """The offline provider, except that a shot whose words say "leaps" fails at the
    provider, and a shot can be held (to stop a process in the middle of a sequence)."""

    name = "local"

    def __init__(self, local: Any, fail: str | None = "leaps") -> None:
        self.local = local
        self.fail = fail
        self.hold: asyncio.Event | None = None
        self.held = asyncio.Event()

    async def submit(self, request: GenerationRequest) -> str:
        return await self.local.submit(request)

    async def result(self, provider_request_id: str, request: GenerationRequest) -> list[Any]:
        if request.capability.value == "image-to-video":
            if self.fail and self.fail in request.prompt:
                raise PermanentError("HTTP 422: the model refused this motion")
            if self.hold is not None and "leaps" in request.prompt:
                self.held.set()
                await self.hold.wait()
        return await self.local.result(provider_request_id, request)

    async def cancel(self, provider_request_id: str) -> None:
        return None

    async def aclose(self) -> None:
        await self.local.aclose()


def with_provider(make_settings, provider: Any) -> Services:
    settings = make_settings()
    return wire(settings, providers=registry_with(settings, local=provider))


async def test_a_failed_shot_keeps_the_others_and_reshoot_completes_it(make_settings) -> None:
    local = load_providers({"local"}, make_settings()).get("local")
    provider = FailingShots(local)
    services = with_provider(make_settings, provider)
    chat = Chat(services)
    grid = await storyboard(chat)
    sequence = sequence_of(await chat.react(grid.asset_id, "🎬"))
    assert "2 of 3 shots" in sequence.text
    assert "shot 3 failed: " in sequence.text and "the model refused this motion" in sequence.text
    seq = sequence_id(sequence)
    assert len(services.store.parents(sequence.asset_id)) == 2
    states = sorted(ledger(services))
    assert states.count(("video", "settled")) == 2 and ("video", "released") in states
    provider.fail = None
    done = sequence_of(await chat.command("tierbot", f"reshoot {seq} 3"))
    assert "3 shots" in done.text and "failed" not in done.text
    assert len(services.store.parents(done.asset_id)) == 3
    await services.aclose()


async def test_a_restart_in_the_middle_keeps_every_shot_and_charges_each_once(
    make_settings,
) -> None:
    local = load_providers({"local"}, make_settings()).get("local")
    provider = FailingShots(local, fail=None)
    provider.hold = asyncio.Event()  # the third shot never finishes in the first process
    first = with_provider(make_settings, provider)
    chat = Chat(first)
    grid = await storyboard(chat)
    task = asyncio.create_task(collect(first.bot.handle_command(_shots(chat, grid))))
    await asyncio.wait_for(provider.held.wait(), 30)
    for _ in range(300):  # the other two shots finish while the third is held
        done = first.store.db.execute(
            "select count(*) from jobs where stage = 'video' and state = 'succeeded'"
        ).fetchone()[0]
        if done == 2:
            break
        await asyncio.sleep(0.05)
    assert done == 2
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    killed(first)  # the process dies with the third shot in flight

    second = wire(make_settings())
    posted = Posted(second)
    await second.bot.recover()
    (sequence,) = [r for _, r in posted.replies if r.text.startswith("🎞️ Sequence")]
    assert "after a restart" in sequence.text and "3 shots" in sequence.text
    assert len(second.store.parents(sequence.asset_id)) == 3
    assert sorted(ledger(second)).count(("video", "settled")) == 3  # each charged once
    assert ("video", "released") not in ledger(second)
    await second.aclose()


def _shots(chat: Chat, grid: Reply) -> Any:
    from bot.domain import CommandEvent

    return CommandEvent(
        origin=chat.origin, command="tierbot", text=f"shots {grid.asset_id}", delivery_id="s-1"
    )


def test_a_crossfade_shortens_the_stitch_by_one_fade_per_join(tmp_path: Path) -> None:
    clips = []
    for index, colour in enumerate(((200, 40, 40), (40, 200, 40), (40, 40, 200))):
        path = tmp_path / f"{index}.mp4"
        frames = [np.full((64, 96, 3), colour, np.uint8).tobytes()] * (2 * footage.FPS)
        writer = imageio_ffmpeg.write_frames(str(path), (96, 64), fps=footage.FPS)
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
        clips.append(path)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(footage.stitch(clips))
    faded = tmp_path / "faded.mp4"
    faded.write_bytes(footage.stitch(clips, crossfade_s=0.5))
    assert abs(footage.probe(cut)[2] - 6.0) <= FRAME_S
    assert abs(footage.probe(faded)[2] - 5.0) <= FRAME_S


# ------------------------------------------------------------------- motion on videos


async def test_a_video_moves_as_its_words_say_and_can_be_rendered_again(
    chat: Chat, services: Services
) -> None:
    grid = grid_of(await chat.command("draft", "a harbour at dawn --n 1"))
    final = next(r for r in await chat.react(grid.asset_id, "1️⃣") if r.asset_id)
    replies = await chat.command(
        "tierbot", f"video {final.asset_id} slow pan left --motion dynamic --seconds 2"
    )
    video = next(r for r in replies if r.asset_id)
    row = services.store.get_asset(video.asset_id)
    assert row["prompt"] == "slow pan left"
    job = services.store.get_job(row["job_id"])
    assert "dynamic cinematic camera movement" in job["params"]["prompt"]
    assert video.reactions[:1] == ["🔁"]
    again = next(r for r in await chat.react(video.asset_id, "🔁") if r.asset_id)
    redone = services.store.get_asset(again.asset_id)
    assert redone["seed"] == (row["seed"] or 0) + 1 and redone["prompt"] == "slow pan left"
    assert services.store.qa_state(video.asset_id)["decision"] == "rejected"


@pytest.mark.parametrize(
    ("words", "direction"),
    [("pan left", np.pi), ("tilt up slowly", -np.pi / 2), ("drift right", 0.0)],
)
def test_the_offline_camera_follows_the_motion_words(words: str, direction: float) -> None:
    from adapters.providers.local import move_for

    move = move_for(words, seed=3)
    assert move.direction == pytest.approx(direction)
    assert move_for("pull back from the harbour", 3).out
    assert move_for(words + ", dynamic", 3).zoom > move.zoom
