"""Operable like any server: ``/healthz`` is ready only once the store, the job queue and each
configured surface are up; ``/metrics`` speaks Prometheus' text format with jobs by state and
stage, credits by stage and team, acknowledgement latency, provider errors and queue depth.
Driven against a real ``tierbot run`` process, as a load balancer and a scraper would."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from bot.metrics import Ops
from bot.providers import PermanentError
from tests.conftest import Chat, ScriptedProvider, registry_with


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_a_running_bot_reports_ready_and_its_metrics(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "TIERBOT_DATA_DIR": str(tmp_path / "data"),
        "TIERBOT_HTTP_PORT": str(port),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "adapters.shell",
        "run",
        env=env,
        cwd=Path.cwd(),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as client:
            for _ in range(300):
                try:
                    health = await client.get("/healthz")
                    if health.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            assert health.status_code == 200
            assert health.json() == {
                "ready": True,
                "checks": {"queue": "up", "store": "up", "web": "up"},
            }
            sent = await client.post(
                "/api/commands", json={"name": "alice", "text": "/tierbot help", "event_id": "e1"}
            )
            assert sent.status_code == 202
            scraped = await client.get("/metrics")  # no token: nothing secret in it
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain; version=0.0.4")
            found = samples(scraped.text)
            assert found[("tierbot_queue_depth", (("queue", "jobs"),))] == 0
            assert found[("tierbot_processes", (("role", "run"),))] == 1
            # The web channel's answer is timed as Slack's and Discord's acks are.
            assert found[("tierbot_command_ack_seconds_count", (("surface", "web"),))] == 1
    finally:
        process.terminate()
        await process.wait()


async def test_metrics_count_jobs_credits_errors_and_depth(tmp_path: Path, make_settings):
    from adapters import wire

    catalog = tmp_path / "catalog.toml"
    catalog.write_text('[models.local-final]\nprovider = "flaky"\n')
    settings = make_settings(catalog=catalog)
    flaky = ScriptedProvider("flaky", [PermanentError("HTTP 400: bad reference")])
    services = wire(settings, providers=registry_with(settings, flaky=flaky))
    chat = Chat(services)
    replies = await chat.command("draft", "a cat --n 2")
    grid = next(r for r in replies if r.asset_id)
    await chat.react(grid.asset_id, "1️⃣")  # the final fails at the provider
    services.ops.ack_seconds.labels("test").observe(0.004)
    found = samples(services.ops.metrics().decode())
    assert found[("tierbot_jobs", (("stage", "draft"), ("state", "succeeded")))] == 1
    assert found[("tierbot_jobs", (("stage", "final"), ("state", "failed")))] == 1
    assert found[("tierbot_credits_spent_total", (("stage", "draft"), ("team", "T1")))] == 2
    errors = ("tierbot_provider_errors_total", (("kind", "permanent"), ("provider", "flaky")))
    assert found[errors] == 1
    assert found[("tierbot_command_ack_seconds_count", (("surface", "test"),))] == 1
    assert found[("tierbot_queue_depth", (("queue", "inbox"),))] == 0
    services.store.close()


def test_not_ready_until_every_part_is_up(tmp_path: Path) -> None:
    from storage import Store

    ops = Ops(Store(tmp_path / "t.db"))
    assert ops.health() == (False, {"store": "up"})  # nothing said it is up yet
    ops.expect("queue")
    ops.expect("slack")
    ops.up("queue")
    ready, checks = ops.health()
    assert not ready and checks == {"queue": "up", "slack": "starting", "store": "up"}
    ops.up("slack")
    assert ops.health()[0]
    ops.up("slack", False)  # a surface that lost its connection
    assert not ops.health()[0]
