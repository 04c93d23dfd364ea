"""Killed at every durable step: `tierbot run` (the web channel, the local provider) is
started with a failpoint armed (``bot/failpoints.py``) and killed with SIGKILL the first
time it passes that step, in the draft, then (restarted, armed again) in the final, then in
the video. A person drives the flow over HTTP as the page does, clicking as soon as a
result shows and sending again, with the same event id, whatever a dead process did not
answer. After the last restart every result must have been posted exactly once, every job
charged once, no reaction lost, nothing left pending.

All points run at once, each in its own data dir and port (they are mostly waiting).
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from bot.failpoints import POINTS

LEASE_S = "0.5"
#: A kill, a restart and a lease per stage: generous on a loaded 2-core machine.
STEP_TIMEOUT_S = 60.0
LIVES_ARMED = 3  # draft, final, video
#: Steps only the draft passes (its command brings a reference image; reactions bring none).
DRAFT_ONLY = {"files.stored"}
#: The reference image the draft is sent with, as the page sends a 📎 file in JSON.
REFERENCE = {
    "name": "kite.png",
    "data": (
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLv"
        "AAAAAElFTkSuQmCC"
    ),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Bot:
    """`tierbot run` in a process of its own, restarted when it dies."""

    def __init__(self, point: str, data_dir: Path) -> None:
        self.point = point
        self.data_dir = data_dir
        self.port = free_port()
        self.lives = 0
        self.process: asyncio.subprocess.Process | None = None
        self.log = data_dir.parent / f"{point}.log"

    async def start(self) -> None:
        armed = self.lives < LIVES_ARMED
        self.lives += 1
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.data_dir.parent),
            "TIERBOT_DATA_DIR": str(self.data_dir),
            "TIERBOT_HTTP_PORT": str(self.port),
            "TIERBOT_LEASE_S": LEASE_S,
            **({"TIERBOT_FAILPOINT": self.point} if armed else {}),
        }
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "adapters.shell",
                "run",
                cwd=self.data_dir.parent,
                env=env,
                stdout=log,
                stderr=log,
                stdin=asyncio.subprocess.DEVNULL,
            )

    @property
    def dead(self) -> bool:
        return self.process is None or self.process.returncode is not None

    async def ensure_up(self) -> None:
        if self.process is not None:
            try:
                await asyncio.wait_for(self.process.wait(), 0.01)
            except TimeoutError:
                return
            assert self.process.returncode == -signal.SIGKILL, self.log.read_text()
        await self.start()

    async def stop(self) -> None:
        if not self.dead:
            assert self.process is not None
            self.process.send_signal(signal.SIGTERM)
            await asyncio.wait_for(self.process.wait(), 20)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def query(data_dir: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"file:{data_dir / 'tierbot.db'}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return []  # not created yet
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # not migrated yet
    finally:
        conn.close()


def posted(data_dir: Path, stage: str, kind: str = "image") -> list[int]:
    """The web messages presenting an asset of ``stage`` and ``kind``."""
    return [
        row[0]
        for row in query(
            data_dir,
            "select m.id from web_messages m join assets a on a.id = m.asset_id "
            "where a.stage = ? and a.kind = ? order by m.id",
            (stage, kind),
        )
    ]


async def drive(bot: Bot, client: httpx.AsyncClient, path: str, body: dict[str, Any], done):
    """Send ``body`` (with its event id) until a process took it, then wait for ``done()``,
    restarting the bot whenever it was killed."""
    sent = False
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    while not done():
        assert asyncio.get_running_loop().time() < deadline, (
            f"{bot.point}: step {body} never finished\n{bot.log.read_text()[-3000:]}"
        )
        await bot.ensure_up()
        if not sent:
            try:
                response = await client.post(f"{bot.url}{path}", json=body, timeout=5)
                sent = response.status_code == 202
                assert sent or response.status_code >= 500, response.text
            except httpx.TransportError:
                pass  # not up yet, or killed while answering: send again (same event id)
        await asyncio.sleep(0.1)


async def run_flow(point: str, root: Path) -> Bot:
    data_dir = root / point / "data"
    data_dir.mkdir(parents=True)
    bot = Bot(point, data_dir)
    async with httpx.AsyncClient() as client:
        await drive(
            bot,
            client,
            "/api/commands",
            {
                "name": "ann",
                "text": "/draft a red kite at dusk --n 2",
                "event_id": "draft-1",
                "files": [REFERENCE],
            },
            lambda: posted(data_dir, "draft", "grid"),
        )
        (grid_message,) = posted(data_dir, "draft", "grid")
        await drive(
            bot,
            client,
            "/api/reactions",
            {"name": "ann", "message_id": grid_message, "emoji": "2️⃣", "event_id": "final-1"},
            lambda: posted(data_dir, "final"),
        )
        (final_message,) = posted(data_dir, "final")
        await drive(
            bot,
            client,
            "/api/reactions",
            {"name": "ann", "message_id": final_message, "emoji": "🎬", "event_id": "video-1"},
            lambda: posted(data_dir, "video", "video"),
        )
    # The person is done; a last process (never armed) settles whatever a killed one left
    # (an outbox entry, an event whose jobs it reserved), then stops.
    bot.lives = max(bot.lives, LIVES_ARMED)
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    while pending(data_dir):
        assert asyncio.get_running_loop().time() < deadline, (
            f"{point}: never settled: {pending(data_dir)}\n{bot.log.read_text()[-3000:]}"
        )
        await bot.ensure_up()
        await asyncio.sleep(0.1)
    await bot.stop()
    return bot


def pending(data_dir: Path) -> list[tuple[Any, ...]]:
    """Work not finished: events not acted on, posts not landed, outcomes not delivered."""
    return [
        *query(data_dir, "select 'event', key from inbox where state != 'done'"),
        *query(data_dir, "select 'post', id from outbox"),
        *query(data_dir, "select 'outcome', id from jobs where delivered is null"),
        *query(data_dir, "select 'job', id from jobs where state in ('queued', 'running')"),
    ]


def check(bot: Bot) -> None:
    data = bot.data_dir
    where = f"{bot.point} ({bot.lives} lives)\n{bot.log.read_text()[-3000:]}"
    kills = bot.log.read_text().count(f"failpoint {bot.point}: killing")
    expected = 1 if bot.point in DRAFT_ONLY else LIVES_ARMED
    assert kills == expected, f"killed {kills} times, not in each stage: {where}"
    # Each result posted exactly once.
    assert len(posted(data, "draft", "grid")) == 1, where
    assert len(posted(data, "final")) == 1, where
    assert len(posted(data, "video", "video")) == 1, where
    # Made once: one job per step, two drafts, one final, one video (none resubmitted as a
    # second job), and no grid composed for drafts that were already shown.
    jobs = query(data, "select stage, state, count(*) from jobs group by stage, state")
    assert sorted(jobs) == [
        ("draft", "succeeded", 1),
        ("final", "succeeded", 1),
        ("video", "succeeded", 1),
    ], where
    assets = query(data, "select stage, kind, count(*) from assets group by stage, kind")
    counts = {(stage, kind): n for stage, kind, n in assets}
    assert counts[("draft", "image")] == 2 and counts[("final", "image")] == 1, where
    assert counts[("video", "video")] == 1, where
    # Charged once each, nothing left reserved.
    ledger = query(data, "select state, count(*) from ledger group by state")
    assert ledger == [("settled", 3)], where
    # Nothing pending: every event acted on, every post landed, every outcome delivered.
    assert pending(data) == [], where


@pytest.mark.timeout(300)
async def test_killed_at_every_durable_step_each_result_is_posted_once(tmp_path: Path) -> None:
    bots = await asyncio.gather(*(run_flow(point, tmp_path) for point in POINTS))
    for bot in bots:
        check(bot)
