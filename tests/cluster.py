"""Processes of a tierbot cluster for tests and benchmarks: ``tierbot run`` and
``tierbot worker`` as real subprocesses, configured for a fake Slack (HTTP mode) and a fake
fal on loopback, all on one Postgres database (tests/test_cluster.py, bench/worker_throughput.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from tests.fakes.fal_fake import FakeFal
from tests.fakes.slack import FakeSlack
from tests.test_provider_fal import CATALOG


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Process:
    """One ``tierbot`` command in its own process, with its own HTTP port."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        self.port = free_port()
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


def environment(
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


def grid_uploads(slack: FakeSlack) -> list[Any]:
    return [c for c in slack.calls if c.method == "files.completeUploadExternal"]


@contextlib.asynccontextmanager
async def running(processes: list[Process]) -> AsyncIterator[aiohttp.ClientSession]:
    """Start ``processes``, wait until each answers ``/healthz``, and stop them at the end
    (their logs printed when something failed)."""
    async with aiohttp.ClientSession() as http:
        try:
            for process in processes:
                await process.start()
            for process in processes:
                await process.ready(http)
            yield http
        except BaseException:
            for process in processes:
                print(f"--- {process.name}\n{process.tail()}")
            raise
        finally:
            for process in processes:
                await process.stop()


async def send_drafts(slack: FakeSlack, bots: list[Process], count: int, words: str) -> None:
    """``count`` signed /draft commands, spread over ``bots`` as a load balancer would."""
    for i in range(count):
        bot = bots[i % len(bots)]
        answer = await slack.send_command(f"{bot.url}/slack/events", "/draft", f"{words} {i} --n 2")
        assert answer[0] == 200, (bot.name, answer)


def assert_each_once(database_url: str, slack: FakeSlack, fal: FakeFal, drafts: int) -> None:
    """Every draft's job succeeded and was charged and submitted once; every grid made and
    shared once."""
    from storage import Store

    store = Store(database_url)
    try:
        jobs = list(store.db.query("select * from jobs"))
        assert len(jobs) == drafts  # one model call per draft (two images each)
        assert {j["state"] for j in jobs} == {"succeeded"}  # no job lost
        entries = list(store.db.query("select state from ledger"))
        assert len(entries) == drafts and {e["state"] for e in entries} == {"settled"}
        assert len(fal.requests) == drafts  # nothing submitted twice
        grids = list(store.db.query("select request_id from assets where kind = 'grid'"))
        assert len(grids) == len({g["request_id"] for g in grids}) == drafts
        assert len(grid_uploads(slack)) == drafts  # every grid shared once
    finally:
        store.close()
