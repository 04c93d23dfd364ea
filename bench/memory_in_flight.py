"""Memory: peak RSS of the bot process with 1,000 jobs in flight.

Goal: ≤ 250 MB. Prints the figure; never fails on time.

This process is the bot as `tierbot run` wires it with Slack in HTTP mode (see
``slack_ack.py``; the fake Slack runs in a process of its own and is not counted, and the
image workers' peak is printed separately). A load generator in another process sends 1,000
signed ``/draft`` commands (4 drafts each); the model (:class:`_rig.FastProvider`, cap raised
to 1,000) holds every job until all 1,000 are waiting on it, so each command's whole state is
alive at once: its Bolt request, task, status line, job row and reservation, runner slot and
provider call. Then it lets them all finish (1,000 grids composed and posted); the figure is
the peak over both phases. ``run_all.py``
runs each benchmark in its own process, so earlier benchmarks do not inflate the figure.
"""

from __future__ import annotations

import asyncio
import time

import _rig

N = 1000
RATE = 200  # commands per second from the load generator
GOAL_MB = 250.0
TEXT = "a lighthouse at dawn --n 4"


async def measure() -> None:
    provider = _rig.FastProvider(gated=True)
    async with _rig.slack_bot(provider, concurrency=N) as bot:
        idle_mb = _rig.rss_mb()
        result = await _rig.run_load(
            bot.events_url,
            bot.fake.signing_secret,
            rate=RATE,
            duration_s=N / RATE,
            text=TEXT,
            response_base=bot.fake.base_url,
        )
        deadline = time.monotonic() + 120
        while provider.in_result < result.ok and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        in_flight, held_mb = provider.in_result, _rig.rss_mb()
        held_peak_mb = _rig.peak_rss_mb()
        provider.release()
        await bot.surface.idle()
        grids = await bot.fake.files()
        workers, workers_mb = _rig.workers_peak_rss_mb()
    peak_mb = _rig.peak_rss_mb()
    print(
        f"memory: peak RSS {peak_mb:.0f} MB with {in_flight} jobs in flight; goal ≤ "
        f"{GOAL_MB:.0f} MB ({'met' if peak_mb <= GOAL_MB else 'missed'})"
    )
    print(
        f"  {idle_mb:.0f} MB idle; {held_mb:.0f} MB (peak {held_peak_mb:.0f} MB) while all of "
        f"them wait on the model; {peak_mb:.0f} MB as they finish ({grids} grids posted)"
    )
    print(
        f"  plus {workers_mb:.0f} MB peak across the {workers} image worker processes "
        "that composed the grids",
        flush=True,
    )


def main() -> None:
    asyncio.run(measure())


if __name__ == "__main__":
    main()
