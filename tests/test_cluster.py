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
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.fakes.fal_fake import FakeFal
from tests.fakes.slack import FakeSlack
from tests.test_provider_fal import CATALOG

DRAFTS = 200
KILL_AFTER_GRIDS = 40


def _port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """One ``tierbot`` command in its own process, with its own HTTP port."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.port = _port()
        self.log = logs / f"{name}.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Process:
        env = {**self.env, "TIERBOT_HTTP_PORT": str(self.port)}
        with self.log.open("wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "import sys; from adapters.shell import main; sys.exit(main())",
                *self.argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def ready(self, http: aiohttp.ClientSession, timeout: float = 60.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            assert self.proc is not None and self.proc.returncode is None, self.tail()
            try:
                async with http.get(f"{self.url}/healthz") as answer:
                    if answer.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} never became ready:\n{self.tail()}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 20)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""


@pytest.fixture
def database_url(postgres_server: Any) -> Iterator[str]:
    from tests.postgres import fresh_database

    with fresh_database(postgres_server) as url:
        yield url


@pytest.fixture
async def fakes() -> AsyncIterator[tuple[FakeSlack, FakeFal]]:
    slack = FakeSlack()
    await slack.start()
    async with FakeFal() as fal:
        yield slack, fal
    await slack.stop()


def _environment(
    tmp_path: Path, database_url: str, slack: FakeSlack, fal: FakeFal
) -> dict[str, str]:
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(CATALOG, encoding="utf-8")
    root = Path(__file__).resolve().parent.parent
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("TIERBOT_", "SLACK_"))}
    return {
        **keep,
        "PYTHONPATH": str(root),
        "TIERBOT_DATABASE_URL": database_url,
        "TIERBOT_RUN_JOBS": "workers",
        "TIERBOT_DATA_DIR": str(tmp_path / "shared-data"),
        "TIERBOT_CATALOG": str(catalog),
        "TIERBOT_LEASE_S": "3",
        "TIERBOT_LOG_LEVEL": "WARNING",
        "TIERBOT_POLL_INTERVAL_S": "0.3",
        "TIERBOT_ALLOW_HTTP_HOSTS": "127.0.0.1",
        "TIERBOT_FAL_QUEUE_URL": fal.url,
        "TIERBOT_FAL_API_URL": fal.url,
        "FAL_KEY": fal.key,
        "SLACK_BOT_TOKEN": slack.bot_token,
        "SLACK_SIGNING_SECRET": slack.signing_secret,
        "SLACK_API_URL": slack.api_url,
    }


async def test_two_bots_two_workers_and_a_killed_worker(
    tmp_path: Path, database_url: str, fakes: tuple[FakeSlack, FakeFal]
) -> None:
    slack, fal = fakes
    slack.reaction_pace_s = 0.0  # 200 grids × 4 reactions at Slack's pace: minutes, not the point
    env = _environment(tmp_path, database_url, slack, fal)
    logs = tmp_path / "logs"
    logs.mkdir()
    bots = [Process(f"bot{i}", ["run"], env, logs) for i in (1, 2)]
    workers = [Process(f"worker{i}", ["worker", "--concurrency", "8"], env, logs) for i in (1, 2)]
    everyone = bots + workers
    async with aiohttp.ClientSession() as http:
        try:
            for process in everyone:
                await process.start()
            for process in everyone:
                await process.ready(http)

            for i in range(DRAFTS):
                bot = bots[i % 2]  # a load balancer in front of both
                answer = await slack.send_command(
                    f"{bot.url}/slack/events", "/draft", f"cluster draft {i} --n 2"
                )
                assert answer[0] == 200, (bot.name, answer)

            grids = lambda: len(_grid_uploads(slack))  # noqa: E731
            await slack.wait_until(lambda: grids() >= KILL_AFTER_GRIDS, timeout=180)
            in_flight = len(fal.requests) - grids()
            workers[0].kill()  # mid-run: generations are submitted and being polled
            await slack.wait_until(lambda: grids() >= DRAFTS, timeout=300)
            await asyncio.sleep(2)  # anything posted twice would show by now
        except BaseException:
            for process in everyone:
                print(f"--- {process.name}\n{process.tail()}")
            raise
        finally:
            for process in everyone:
                await process.stop()

    assert in_flight > 0, "the kill was meant to land while jobs were running"
    # The survivor found the runs the killed worker held and put them back in the queue.
    assert "lost its worker; queued again" in workers[1].log.read_text()
    uploads = _grid_uploads(slack)
    assert len(uploads) == DRAFTS  # every grid posted, once

    from storage import Store

    store = Store(database_url)
    try:
        jobs = list(store.db.query("select * from jobs"))
        assert len(jobs) == DRAFTS  # one model call per draft (two images each)
        assert {j["state"] for j in jobs} == {"succeeded"}  # no job lost
        entries = list(store.db.query("select * from ledger"))
        assert len(entries) == len(jobs) and {e["state"] for e in entries} == {"settled"}
        assert len(fal.requests) == len(jobs)  # nothing submitted twice
        grid_rows = list(store.db.query("select request_id from assets where kind = 'grid'"))
        assert len(grid_rows) == len({r["request_id"] for r in grid_rows}) == DRAFTS
    finally:
        store.close()


def _grid_uploads(slack: FakeSlack) -> list[Any]:
    return [c for c in slack.calls if c.method == "files.completeUploadExternal"]
