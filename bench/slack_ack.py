"""Acknowledgement latency: signed /draft requests to the Slack HTTP endpoint at 10, 50 and
100 commands per second for 30 s each: p50, p99 and max time to the HTTP 200.

Goal: p99 ≤ 50 ms at 100/s (Slack's hard limit is 3 s). Prints the figures; never fails on time.

This process is the bot: the real core (SQLite store, ledger, router, runner, pipeline, grid)
and ``SlackSurface`` in HTTP mode on the shared HTTP server, with the fake Slack of the tests
serving the Web API on loopback. The load generator (``_loadgen.py``) runs in a second process
and sends on an open-loop schedule; latency is measured from each request's scheduled time.
The draft model is a :class:`FastProvider` answering at once with 64 px PNGs, so every
command also runs its whole flow here (status message, job, 1024 px grid, upload, reactions)
while later commands arrive: the acknowledgement is measured under the bot's own load.
"""

from __future__ import annotations

import asyncio
import sys
import time

import _rig

RATES = (10, 50, 100)
DURATION_S = 30.0
GOAL_P99_MS = 50.0
GOAL_RATE = 100
SLACK_LIMIT_MS = 3000.0
TEXT = "a lighthouse at dawn --n 4"


async def measure(duration_s: float) -> None:
    provider = _rig.FastProvider()
    async with _rig.slack_bot(provider) as bot:
        fake = bot.fake
        # Warm-up (not counted): Bolt's first request fetches auth.test, imports settle.
        await _rig.run_load(
            bot.events_url,
            fake.signing_secret,
            rate=10,
            duration_s=1,
            text=TEXT,
            response_base=fake.base_url,
        )
        await bot.surface.idle()
        for rate in RATES:
            grids_before = len(fake.files)
            result = await _rig.run_load(
                bot.events_url,
                fake.signing_secret,
                rate=rate,
                duration_s=duration_s,
                text=TEXT,
                response_base=fake.base_url,
            )
            grids_during = len(fake.files) - grids_before
            drain = time.perf_counter()
            await bot.surface.idle()
            drain_s = time.perf_counter() - drain
            report(result, grids_during, len(fake.files) - grids_before, drain_s)


def report(result: _rig.LoadResult, grids_during: int, grids: int, drain_s: float) -> None:
    lat = result.latencies_ms
    p50, p99 = _rig.percentile(lat, 50), _rig.percentile(lat, 99)
    late = sum(1 for v in lat if v > SLACK_LIMIT_MS)
    failed = result.sent - result.ok
    line = (
        f"slack ack at {result.rate:g}/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(lat, default=float('nan')):.1f} ms "
        f"({result.ok}/{result.sent} HTTP 200, {failed} not 200, {late} over 3 s)"
    )
    if result.rate == GOAL_RATE:
        line += f"; goal p99 ≤ {GOAL_P99_MS:.0f} ms ({'met' if p99 <= GOAL_P99_MS else 'missed'})"
    print(line)
    print(
        f"  background: {grids_during} of {result.sent} grids posted during the run, "
        f"{grids} after {drain_s:.1f} s more; load generator late by ≤ "
        f"{result.max_send_lag_ms:.1f} ms"
    )
    sys.stdout.flush()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else DURATION_S
    asyncio.run(measure(seconds))


if __name__ == "__main__":
    main()
