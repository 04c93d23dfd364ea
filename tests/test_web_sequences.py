"""Shot sequences in the web channel, over real HTTP: a storyboard's 🎬 posts the stitch with
its shots, the sequence's asset page plays it and lists its shots as stitched (a failed one
with the reshoot that makes it), a shot's page links back to its sequences, and a new order
makes a page that lists them reordered."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from adapters import load_providers, wire
from tests.conftest import registry_with, write_policy
from tests.test_sequences import FailingShots
from tests.test_web import Channel, _open, is_grid

BEATS = ["a fox wakes", "it sees snow", "it leaps"]
STORYBOARD = f"/tierbot storyboard {' | '.join(BEATS)} --seed 3"
#: A shot in a sequence's page: its beat's number and (made) its asset.
SHOT = re.compile(r"<li class='shot[^']*' data-shot='(\d+)'(?: data-asset='([0-9a-f]{8})')?")
POLICY = '[teams.local.channels.web]\napprovers = ["alice"]\n'


def is_sequence(message: dict[str, Any]) -> bool:
    return message["text"].startswith("🎞️ Sequence")


def sequence_id(message: dict[str, Any]) -> str:
    return message["text"].split()[2]


def shots_on(page: str) -> list[tuple[int, str]]:
    """The shots a sequence's page lists, in its order: (beat number, asset id or "")."""
    return [(int(number), asset) for number, asset in SHOT.findall(page)]


async def test_a_sequence_plays_in_the_channel_and_on_its_page(channel: Channel) -> None:
    store = channel.surface.bot.store
    await channel.say("alice", STORYBOARD)
    grid = await channel.wait_for(is_grid)
    assert (await channel.react("alice", grid["id"], "🎬")).status_code == 202
    message = await channel.wait_for(is_sequence, timeout=90)
    seq = sequence_id(message)
    stitch = message["asset_id"]
    shots = [p["id"] for p in store.parents(stitch)]
    assert len(shots) == 3 and message["thread_root"] == grid["id"]

    # The channel's message: the stitch first (it plays inline), then each shot, numbered.
    files = message["files"]
    assert [f["asset_id"] for f in files] == [stitch, *shots]
    assert [f["mime"] for f in files] == ["video/mp4"] * 4
    assert files[0]["stage"] == "sequence" and files[0]["url"] == f"/files/{stitch}"
    assert [f["label"] for f in files[1:]] == ["shot 1", "shot 2", "shot 3"]
    assert [f["title"] for f in files[1:]] == BEATS
    video = await channel.client.get(files[0]["url"], headers={"Range": "bytes=0-99"})
    assert video.status_code == 206 and video.headers["content-type"] == "video/mp4"

    # The sequence's page: the stitch plays; what it is; its shots as stitched; commands.
    page = (await channel.client.get(f"/assets/{stitch}")).text
    assert f'<video controls preload="metadata" src="/files/{stitch}"></video>' in page
    assert f"🎞️ sequence {stitch}" in page
    length = store.get_asset(stitch)["duration_s"]
    assert f"<dd>{seq} · 3 shots · {length:.1f} s</dd>" in page
    assert shots_on(page) == [(1, shots[0]), (2, shots[1]), (3, shots[2])]
    listed = page[page.index("<ul class='shots'>") :]
    for shot, beat in zip(shots, BEATS, strict=True):
        draft = store.parents(shot)[0]["id"]  # its poster: the picture it was made from
        assert (
            f"<video muted controls preload='metadata' poster='/files/{draft}?w=256' "
            f"src='/files/{shot}'>" in listed
        )
        assert f"<a href='/assets/{shot}'>{shot}</a>" in listed
        assert f"<q class='beat'>{beat}</q>" in listed
    assert [listed.index(beat) for beat in BEATS] == sorted(listed.index(b) for b in BEATS)
    assert f"<a href='/assets/{grid['asset_id']}'>" in page  # the storyboard it came from
    assert f"<code class='command'>/tierbot reshoot {seq} &lt;k&gt; [motion words]</code>" in page
    assert f"<code class='command'>/tierbot order {seq} 3,2,1</code>" in page
    assert f"<code class='command'>/tierbot reshoot {seq} 2</code>" in page
    assert "<script" not in page and "style=" not in page  # the CSP allows neither inline

    # A shot's page links back to the sequence it is part of.
    shot_page = (await channel.client.get(f"/assets/{shots[1]}")).text
    part_of = shot_page[shot_page.index("<h2>Part of</h2>") :]
    assert f"<a href='/assets/{stitch}'>" in part_of
    assert f"sequence {seq} · shot 2 of 3 · {length:.1f} s · the latest stitch" in part_of

    # A new order: a new stitch whose page and message list the shots reordered.
    await channel.say("alice", f"/tierbot order {seq} 3,1,2")
    reordered = await channel.wait_for(lambda m: is_sequence(m) and "new order" in m["text"])
    again = reordered["asset_id"]
    assert again != stitch and reordered["thread_root"] == grid["id"]
    assert [f["asset_id"] for f in reordered["files"]] == [again, shots[2], shots[0], shots[1]]
    assert [f["label"] for f in reordered["files"][1:]] == ["shot 3", "shot 1", "shot 2"]
    page = (await channel.client.get(f"/assets/{again}")).text
    assert shots_on(page) == [(3, shots[2]), (1, shots[0]), (2, shots[1])]
    assert "order 3,1,2." in page and f"/tierbot order {seq} 2,1,3</code>" in page
    # The first stitch keeps its own order, and points at the newer one.
    old = (await channel.client.get(f"/assets/{stitch}")).text
    assert shots_on(old) == [(1, shots[0]), (2, shots[1]), (3, shots[2])]
    assert f"A newer stitch of this sequence: <a href='/assets/{again}'>" in old
    # The shot is in both stitches now, at its place in each; the newer one is the latest.
    shot_page = (await channel.client.get(f"/assets/{shots[1]}")).text
    assert f"sequence {seq} · shot 2 of 3 · {length:.1f} s</span>" in shot_page
    assert f"sequence {seq} · shot 2 of 3 · {length:.1f} s · the latest stitch" in shot_page
    assert shot_page.index(f"/assets/{stitch}'") < shot_page.index(f"/assets/{again}'")


async def test_a_failed_shot_is_named_on_the_page_with_the_reshoot_to_type(
    make_settings, tmp_path: Path
) -> None:
    settings = make_settings(policy=write_policy(tmp_path, POLICY))
    provider = FailingShots(load_providers({"local"}, settings).get("local"))
    services = wire(settings, providers=registry_with(settings, local=provider))
    async for channel in _open(services):
        await channel.say("alice", STORYBOARD)
        grid = await channel.wait_for(is_grid)
        await channel.say("alice", f"/tierbot shots {grid['asset_id']} --seconds 2")
        message = await channel.wait_for(is_sequence, timeout=90)
        seq, stitch = sequence_id(message), message["asset_id"]
        shots = [p["id"] for p in services.store.parents(stitch)]
        assert len(shots) == 2
        assert [f["label"] for f in message["files"][1:]] == ["shot 1", "shot 2"]
        page = (await channel.client.get(f"/assets/{stitch}")).text
        assert f"<dd>{seq} · 2 of 3 shots · " in page
        assert shots_on(page) == [(1, shots[0]), (2, shots[1]), (3, "")]
        failed = page[page.index("<li class='shot failed' data-shot='3'>") :]
        failed = failed[: failed.index("</li>")]
        assert "<q class='beat'>it leaps</q>" in failed
        assert "failed: HTTP 422: the model refused this motion" in failed
        assert f"<code class='command'>/tierbot reshoot {seq} 3</code>" in failed

        provider.fail = None
        await channel.say("alice", f"/tierbot reshoot {seq} 3")
        done = await channel.wait_for(
            lambda m: is_sequence(m) and "reshot" in m["text"], timeout=60
        )
        page = (await channel.client.get(f"/assets/{done['asset_id']}")).text
        assert [n for n, _ in shots_on(page)] == [1, 2, 3] and "failed:" not in page
        old = (await channel.client.get(f"/assets/{stitch}")).text
        assert shots_on(old)[2] == (3, "") and "not in this stitch; made since" in old
        assert f"<a href='/assets/{done['asset_id']}'>the latest stitch</a>" in old
    await services.aclose()
