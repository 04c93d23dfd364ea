"""Acknowledgement latency: signed /draft requests to the Slack HTTP endpoint at 10, 50 and
100 commands per second for 30 s each: p50, p99 and max time to the HTTP 200.

Goal: p99 ≤ 50 ms at 100/s (Slack's hard limit is 3 s). Prints the figures; never fails on time.

This process is the bot: the real core (SQLite store, ledger, router, runner, pipeline, grid)
and ``SlackSurface`` in HTTP mode on the shared HTTP server, with the fake Slack of the tests
serving the Web API on loopback from a second process, as real Slack would not share the
bot's CPU. The load generator (``_loadgen.py``) runs in a third process and sends on an open-loop
schedule; latency is measured from each request's scheduled time, so queueing is not hidden.

Two draft models (:class:`_rig.FastProvider`, 64 px PNGs):

* **instant** (the three rates): answers at once, so every command runs its whole flow here
  (status message, job, 1024 px grid, upload, six reactions) at the command rate while later
  commands arrive. The worst case: a provider that absorbs any load.
* **1 s × 8** (one more run at 100/s): 1 s per job and at most 8 at once, the shipped cap of
  the cloud providers, so results come back at 8 per second and the rest wait in the runner's
  queue, as they would with a real model. Its backlog is cancelled at the end, not drained.
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
REAL_LATENCY_S, REAL_CAP = 1.0, 8


async def load(bot: _rig.SlackBot, rate: float, duration_s: float) -> _rig.LoadResult:
    return await _rig.run_load(
        bot.events_url,
        bot.fake.signing_secret,
        rate=rate,
        duration_s=duration_s,
        text=TEXT,
        response_base=bot.fake.base_url,
    )


async def measure(duration_s: float) -> None:
    tally = _rig.LogTally.install()
    async with _rig.slack_bot(_rig.FastProvider()) as bot:
        # Warm-up (not counted): Bolt's first request fetches auth.test, imports settle.
        await load(bot, 10, 1)
        await bot.surface.idle()
        tally.take()
        for rate in RATES:
            grids_before = await bot.fake.files()
            result = await load(bot, rate, duration_s)
            grids_during = await bot.fake.files() - grids_before
            drain = time.perf_counter()
            await bot.surface.idle()
            background = (
                f"{grids_during} of {result.sent} grids posted during the run, the rest "
                f"{time.perf_counter() - drain:.1f} s later"
            )
            report(f"instant model, {rate}/s", result, background, tally.take())
    provider = _rig.FastProvider(latency_s=REAL_LATENCY_S)
    async with _rig.slack_bot(provider, concurrency=REAL_CAP) as bot:
        await load(bot, 10, 1)
        await bot.surface.idle()
        tally.take()
        grids_before, submitted_before = await bot.fake.files(), provider.submitted
        result = await load(bot, GOAL_RATE, duration_s)
        queued = result.ok - (provider.submitted - submitted_before)
        background = (
            f"{await bot.fake.files() - grids_before} of {result.sent} grids posted during the "
            f"run, {queued} still queued for the model (cancelled)"
        )
        label = f"model 1 s × {REAL_CAP} at once, {GOAL_RATE}/s"
        report(label, result, background, tally.take(), show_goal=True)


def report(
    label: str,
    result: _rig.LoadResult,
    background: str,
    warnings: str,
    show_goal: bool | None = None,
) -> None:
    lat = result.latencies_ms
    p50, p99 = _rig.percentile(lat, 50), _rig.percentile(lat, 99)
    late = sum(1 for v in lat if v > SLACK_LIMIT_MS)
    line = (
        f"slack ack, {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms, "
        f"max {max(lat, default=float('nan')):.1f} ms "
        f"({result.ok}/{result.sent} HTTP 200, {late} over 3 s)"
    )
    if show_goal or (show_goal is None and result.rate == GOAL_RATE):
        line += f"; goal p99 ≤ {GOAL_P99_MS:.0f} ms ({'met' if p99 <= GOAL_P99_MS else 'missed'})"
    print(line)
    print(f"  {background}; load generator late by ≤ {result.max_send_lag_ms:.1f} ms")
    if warnings:
        print(f"  the bot's warnings: {warnings}")
    sys.stdout.flush()


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else DURATION_S
    asyncio.run(measure(seconds))


if __name__ == "__main__":
    main()
