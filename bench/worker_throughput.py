"""Throughput with 1, 2 and 4 ``tierbot worker`` processes, side by side in one run.

One ``tierbot run`` (Slack in HTTP mode, a fake Slack) queues drafts on Postgres
(``TIERBOT_RUN_JOBS=workers``); N workers drive them against a fake fal whose generations
finish after two polls (``TIERBOT_POLL_INTERVAL_S`` apart, like a fast draft model) and are
then downloaded. Each worker runs 4 jobs at a time, so the model's latency, not this
machine's 2 cores, is what more workers spread; the bot composes every grid. Prints drafts
per second (from the first command to the last grid posted) for each worker count. Needs
PostgreSQL (Debian's ``postgresql``); prints why it skipped otherwise. Never fails on time.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests` is not an installed package

import _rig  # noqa: E402

DRAFTS = 120
WORKER_COUNTS = (1, 2, 4)
CONCURRENCY = 4
POLL_S = 0.5


async def one_run(server: object, workers: int) -> tuple[float, int]:
    from tests.cluster import Process, environment, grid_uploads, running, send_drafts
    from tests.fakes.fal_fake import FakeFal
    from tests.fakes.slack import FakeSlack
    from tests.postgres import fresh_database

    with (
        tempfile.TemporaryDirectory(prefix="tierbot-bench-") as folder,
        fresh_database(
            server  # type: ignore[arg-type]
        ) as url,
    ):
        slack = FakeSlack()
        slack.reaction_pace_s = 0.0
        await slack.start()
        async with FakeFal() as fal:
            env = environment(Path(folder), url, slack, fal)
            env["TIERBOT_POLL_INTERVAL_S"] = str(POLL_S)
            logs = Path(folder) / "logs"
            logs.mkdir()
            bot = Process("bot", ["run"], env, logs)
            crew = [
                Process(f"worker{i}", ["worker", "--concurrency", str(CONCURRENCY)], env, logs)
                for i in range(workers)
            ]
            async with running([bot, *crew]):
                started = time.perf_counter()
                await send_drafts(slack, [bot], DRAFTS, "bench")
                await slack.wait_until(lambda: len(grid_uploads(slack)) >= DRAFTS, timeout=600)
                elapsed = time.perf_counter() - started
        await slack.stop()
        return elapsed, len(fal.requests)


def main() -> None:
    _rig.clean_environ()
    try:
        from tests.postgres import session_server

        servers = session_server()
        server = servers.__enter__()
    except BaseException as exc:  # pytest.skip / fail when PostgreSQL is missing
        print(f"worker throughput: skipped ({exc})")
        return
    try:
        figures = []
        for workers in WORKER_COUNTS:
            elapsed, calls = asyncio.run(one_run(server, workers))
            figures.append(
                f"{workers} worker(s): {DRAFTS / elapsed:.1f} drafts/s "
                f"({DRAFTS} drafts, {calls} model calls, {elapsed:.1f} s)"
            )
        print(
            f"worker throughput ({CONCURRENCY} jobs per worker, model ~{2 * POLL_S:.1f} s): "
            + "; ".join(figures)
        )
    finally:
        servers.__exit__(None, None, None)


if __name__ == "__main__":
    main()
