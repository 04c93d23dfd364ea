"""The fake Slack of the tests, served from its own process for the benchmarks.

Real Slack does not share the bot's CPU; a fake in the bot's event loop would bill its own
work (and every uploaded grid it keeps) to the bot. It also runs at a lower CPU priority: it
answers some fifteen API calls per command, and on a 2-core machine it would otherwise take
about a core from the bot it stands in for as a remote service.

On start it prints one JSON line with its URLs and secrets; then it answers each line on
stdin with one JSON line of counts (``{"files": n}``) and stops when stdin closes.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.fakes` is not an installed package

from tests.fakes.slack import FakeSlack  # noqa: E402

NICENESS = 10


def _say(fields: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    os.nice(NICENESS)
    fake = FakeSlack()
    # The tests pace reaction adds as Slack does (0.25 s each); here we measure the bot's own
    # costs, so the fake answers at once, as it did for the figures in the README.
    fake.reaction_pace_s = 0
    await fake.start()
    _say(
        {
            "base_url": fake.base_url,
            "api_url": fake.api_url,
            "bot_token": fake.bot_token,
            "signing_secret": fake.signing_secret,
        }
    )
    loop = asyncio.get_running_loop()
    try:
        while await loop.run_in_executor(None, sys.stdin.readline):
            _say({"files": len(fake.files)})
    finally:
        await fake.stop()


if __name__ == "__main__":
    asyncio.run(serve())
