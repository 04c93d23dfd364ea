"""The load generator of the acknowledgement benchmark, run in its own process.

Sends signed, form-encoded ``/draft`` slash commands exactly as Slack does (v0 HMAC-SHA256
over the body and timestamp) at a fixed rate on an open-loop schedule: request i goes out at
``start + i / rate`` whatever became of the earlier ones, and its latency is measured from
that scheduled time to the HTTP response (so a slow server cannot hide its queueing by
slowing the sender down). Prints one JSON object on stdout.

Usage: ``_loadgen.py '{"url": ..., "secret": ..., "rate": 100, "duration_s": 30, ...}'``
"""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from collections import Counter
from typing import Any
from urllib.parse import urlencode

import aiohttp
from slack_sdk.signature import SignatureVerifier

TEAM, APP, CHANNEL, USER = "T0TEST", "A0TEST", "C0GENERAL", "UALICE"  # the fake's defaults
TIMEOUT_S = 10.0


def _body(index: int, text: str, response_base: str) -> str:
    return urlencode(
        {
            "token": "fake-verification-token",
            "team_id": TEAM,
            "team_domain": "fake-workspace",
            "channel_id": CHANNEL,
            "channel_name": CHANNEL.lower(),
            "user_id": USER,
            "user_name": USER[1:].lower(),
            "command": "/draft",
            "text": f"{text} --seed {index}",
            "api_app_id": APP,
            "is_enterprise_install": "false",
            "response_url": f"{response_base}/commands/{TEAM}/{index}/{secrets.token_hex(8)}",
            "trigger_id": f"{index}.{secrets.token_hex(6)}",
        }
    )


async def main(args: dict[str, Any]) -> dict[str, Any]:
    url, rate, duration = args["url"], float(args["rate"]), float(args["duration_s"])
    verifier = SignatureVerifier(args["secret"])
    count = round(rate * duration)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    lags: list[float] = []
    errors = 0

    async def send(session: aiohttp.ClientSession, index: int, due: float) -> None:
        nonlocal errors
        body = _body(index, args["text"], args["response_base"])
        ts = str(int(time.time()))
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": verifier.generate_signature(timestamp=ts, body=body) or "",
        }
        lags.append(time.perf_counter() - due)
        try:
            async with session.post(url, data=body.encode(), headers=headers) as response:
                await response.read()
                statuses[str(response.status)] += 1
                if response.status == 200:
                    latencies.append((time.perf_counter() - due) * 1000)
        except (aiohttp.ClientError, TimeoutError):
            errors += 1

    connector = aiohttp.TCPConnector(limit=0)  # no client-side queueing
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = []
        start = time.perf_counter() + 0.05
        for index in range(count):
            due = start + index / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send(session, index, due)))
        await asyncio.gather(*tasks)
    return {
        "sent": count,
        "latencies_ms": latencies,
        "statuses": dict(statuses),
        "errors": errors,
        "max_send_lag_ms": max(lags, default=0.0) * 1000,
    }


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(json.loads(sys.argv[1])))))
