"""Many machines, for real: two ``tierbot run`` processes and two ``tierbot worker`` processes
on one Postgres, a fake Slack in HTTP mode (commands spread across both bots, as a load
balancer would) and a fake fal as the model. 200 drafts; one worker is killed with SIGKILL
while jobs are in flight. Every grid is posted once, every job is charged once and submitted
to the model once (a run taken over polls the stored request id), and no job is lost.

The processes share one data dir for asset files (a volume); docs/deploy.md puts them in an
S3-compatible bucket instead (tests/test_asset_store.py covers that path).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cluster import (
    Process,
    assert_each_once,
    environment,
    grid_uploads,
    running,
    send_drafts,
)
from tests.fakes.fal_fake import FakeFal
from tests.fakes.slack import FakeSlack

DRAFTS = 200
KILL_AFTER_GRIDS = 40


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeSlack, FakeFal]]:
    slack = FakeSlack()
    await slack.start()
    async with FakeFal() as fal:
        yield slack, fal
    await slack.stop()


async def test_two_bots_two_workers_and_a_killed_worker(
    tmp_path: Path, database_url: str, fakes: tuple[FakeSlack, FakeFal]
) -> None:
    slack, fal = fakes
    slack.reaction_pace_s = 0.0  # 200 grids × 4 reactions at Slack's pace: minutes, not the point
    env = environment(tmp_path, database_url, slack, fal)
    logs = tmp_path / "logs"
    logs.mkdir()
    bots = [Process(f"bot{i}", ["run"], env, logs) for i in (1, 2)]
    workers = [Process(f"worker{i}", ["worker", "--concurrency", "8"], env, logs) for i in (1, 2)]
    async with running(bots + workers) as http:
        async with http.get(f"{workers[1].url}/metrics") as scraped:  # workers serve it too
            metrics = await scraped.text()
        assert 'tierbot_processes{role="run"} 2.0' in metrics
        assert 'tierbot_processes{role="worker"} 2.0' in metrics
        await send_drafts(slack, bots, DRAFTS, "cluster draft")
        grids = lambda: len(grid_uploads(slack))  # noqa: E731
        await slack.wait_until(lambda: grids() >= KILL_AFTER_GRIDS, timeout=180)
        in_flight = len(fal.requests) - grids()
        workers[0].kill()  # mid-run: generations are submitted and being polled
        await slack.wait_until(lambda: grids() >= DRAFTS, timeout=300)
        await asyncio.sleep(2)  # anything posted twice would show by now

    assert in_flight > 0, "the kill was meant to land while jobs were running"
    # The survivor found the runs the killed worker held and put them back in the queue.
    assert "lost its worker; queued again" in workers[1].log.read_text()
    assert_each_once(database_url, slack, fal, DRAFTS)


async def test_a_killed_bot_leaves_its_work_to_the_other(
    tmp_path: Path, database_url: str, fakes: tuple[FakeSlack, FakeFal]
) -> None:
    """The commands one bot acknowledged, the jobs it waited on and the grids it was about to
    post are taken over by the other bot once the killed one's lease lapses: every grid is
    shared once (an upload cut off between Slack's steps is finished, not repeated)."""
    slack, fal = fakes
    slack.reaction_pace_s = 0.0
    env = environment(tmp_path, database_url, slack, fal)
    logs = tmp_path / "logs"
    logs.mkdir()
    bots = [Process(f"bot{i}", ["run"], env, logs) for i in (1, 2)]
    worker = Process("worker", ["worker", "--concurrency", "8"], env, logs)
    drafts = 60
    async with running([*bots, worker]):
        await send_drafts(slack, bots, drafts, "handover")
        await slack.wait_until(lambda: len(grid_uploads(slack)) >= 10, timeout=120)
        bots[0].kill()
        await slack.wait_until(lambda: len(grid_uploads(slack)) >= drafts, timeout=180)
        await asyncio.sleep(5)  # past a lease: anything posted twice would show by now
    assert_each_once(database_url, slack, fal, drafts)
