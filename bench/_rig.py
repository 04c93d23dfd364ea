"""Shared parts of the benchmarks (not a benchmark: `run_all.py` skips files starting with _).

* :class:`FastProvider`: a provider double for the real core, returning tiny valid PNGs
  (the grid step decodes them) after a fixed latency, or when released.
* :func:`slack_bot`: the bot as `tierbot run` wires it with Slack in HTTP mode: the real core
  (SQLite store, ledger, router, runner, pipeline) and ``SlackSurface`` on the shared HTTP
  server, with the fake Slack of the tests serving the Web API on loopback from a process of
  its own (:class:`FakeSlackProcess`).
* :func:`run_load`: starts ``_loadgen.py`` in a second process and returns its timings.
* :class:`LogTally`: counts the bot's warnings instead of printing hundreds of them.
* RSS readings for the memory benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import platform
import resource
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `tests.fakes` is not an installed package

from PIL import Image  # noqa: E402

from bot.providers import GeneratedFile, GenerationRequest  # noqa: E402

#: Environment prefixes the bot reads; a benchmark never sees the developer's keys or tokens.
_OUR_PREFIXES = ("TIERBOT_", "SLACK_", "DISCORD_", "FAL_", "GEMINI_", "REPLICATE_", "COMFYUI_")


def clean_environ() -> None:
    for name in list(os.environ):
        if name.startswith(_OUR_PREFIXES):
            del os.environ[name]


def machine() -> str:
    """CPU model, cores and Python version, as the README's table states them."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


class LogTally(logging.Handler):
    """Counts the bot's log records at WARNING and above by message template (the bot logs
    every failed Slack call; under overload that is hundreds of lines)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[str(record.msg)] += 1

    @classmethod
    def install(cls) -> LogTally:
        tally = cls()
        logging.getLogger().addHandler(tally)
        return tally

    def take(self) -> str:
        """The counts since the last call, most frequent first, and reset them."""
        text = "; ".join(f"{n} × {msg!r}" for msg, n in self.counts.most_common(3))
        self.counts.clear()
        return text


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def _png(index: int, size: int = 64) -> bytes:
    colour = ((53 * index) % 256, (97 * index) % 256, (151 * index) % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "PNG")
    return buffer.getvalue()


def _tagged(png: bytes, tag: int) -> bytes:
    """``png`` with a tEXt chunk before IEND: still a valid PNG, with its own content hash
    (the asset store is content-addressed, so identical outputs would be written once)."""
    body = b"tEXt" + b"n\x00" + str(tag).encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return png[:-12] + chunk + png[-12:]


class FastProvider:
    """A provider double: answers after ``latency_s`` (or when :meth:`release` is called)
    with 64 px PNGs, each output different.

    Registered under the name ``local``, it serves the shipped catalog's ``local-draft`` with
    no catalog change. ``in_result`` counts the calls currently waiting in ``result``.
    """

    def __init__(self, name: str = "local", latency_s: float = 0.0, gated: bool = False) -> None:
        self.name = name
        self.latency_s = latency_s
        self.gate = asyncio.Event() if gated else None
        self.submitted = 0
        self.outputs = 0
        self.in_result = 0
        self.peak_in_result = 0
        self._pngs = [_png(i) for i in range(1, 10)]

    async def submit(self, request: GenerationRequest) -> str:
        self.submitted += 1
        return f"{self.name}-{self.submitted}"

    async def result(
        self, provider_request_id: str, request: GenerationRequest
    ) -> list[GeneratedFile]:
        self.in_result += 1
        self.peak_in_result = max(self.peak_in_result, self.in_result)
        try:
            if self.gate is not None:
                await self.gate.wait()
            elif self.latency_s:
                await asyncio.sleep(self.latency_s)
        finally:
            self.in_result -= 1
        first, self.outputs = self.outputs, self.outputs + request.n
        return [
            GeneratedFile(
                data=_tagged(self._pngs[i % len(self._pngs)], first + i),
                mime="image/png",
                width=64,
                height=64,
                seed=request.seed + i,
            )
            for i in range(request.n)
        ]

    def release(self) -> None:
        if self.gate is not None:
            self.gate.set()

    async def cancel(self, provider_request_id: str) -> None:
        return None

    async def aclose(self) -> None:
        return None


class FakeSlackProcess:
    """The fake Slack of the tests in its own process (``_fake_slack.py``), as real Slack
    would be: its work and the grids it keeps are not the bot's."""

    def __init__(self, process: asyncio.subprocess.Process, info: dict[str, str]) -> None:
        self._process = process
        self.base_url = info["base_url"]
        self.api_url = info["api_url"]
        self.bot_token = info["bot_token"]
        self.signing_secret = info["signing_secret"]

    @classmethod
    async def start(cls) -> FakeSlackProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).with_name("_fake_slack.py")),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert process.stdout is not None
        return cls(process, json.loads(await process.stdout.readline()))

    async def files(self) -> int:
        """How many files (grids, finals) the bot has uploaded so far."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(b"count\n")
        await self._process.stdin.drain()
        return int(json.loads(await self._process.stdout.readline())["files"])

    async def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        try:
            await asyncio.wait_for(self._process.wait(), 10)
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


@dataclass
class SlackBot:
    services: Any
    surface: Any
    fake: FakeSlackProcess
    provider: FastProvider

    @property
    def events_url(self) -> str:
        return f"{self.surface.server.url}/slack/events"


@contextlib.asynccontextmanager
async def slack_bot(
    provider: FastProvider, concurrency: int | None = None
) -> AsyncIterator[SlackBot]:
    """The bot with Slack in HTTP mode (signing secret set) on 127.0.0.1, a fresh data dir,
    ``provider`` serving ``local``, and the fake Slack's Web API in a process of its own."""
    from adapters import wire
    from adapters.slack import SlackSurface
    from bot.app import freeze_startup_objects
    from bot.providers import ProviderRegistry
    from bot.settings import Settings

    clean_environ()
    fake = await FakeSlackProcess.start()
    with tempfile.TemporaryDirectory(prefix="tierbot-bench-") as folder:
        settings = Settings(
            data_dir=Path(folder) / "data",
            _env_file=None,
            slack_bot_token=fake.bot_token,
            slack_signing_secret=fake.signing_secret,
            slack_api_url=fake.api_url,
            provider_concurrency={provider.name: concurrency} if concurrency else {},
        )
        services = wire(settings, providers=ProviderRegistry({provider.name: provider}, {}))
        surface = SlackSurface(services.surface_context(), port=0, outbox_interval_s=3600)
        await surface.start()
        freeze_startup_objects()  # as `tierbot run` does once serving
        try:
            yield SlackBot(services, surface, fake, provider)
        finally:
            provider.release()
            await surface.stop()
            await services.aclose()
            await fake.stop()


@dataclass
class LoadResult:
    """What the load generator saw: per request, ms from its scheduled send to the response."""

    rate: float
    sent: int
    latencies_ms: list[float]
    statuses: dict[str, int]
    errors: int
    max_send_lag_ms: float

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)


async def run_load(
    url: str,
    secret: str,
    *,
    rate: float,
    duration_s: float,
    text: str,
    response_base: str,
) -> LoadResult:
    """Send ``rate`` signed /draft commands per second for ``duration_s`` from a second
    process (``_loadgen.py``), open loop; waits for it without blocking this event loop."""
    args = {
        "url": url,
        "secret": secret,
        "rate": rate,
        "duration_s": duration_s,
        "text": text,
        "response_base": response_base,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(Path(__file__).with_name("_loadgen.py")),
        json.dumps(args),
        stdout=subprocess.PIPE,
    )
    out, _ = await process.communicate()
    data = json.loads(out)
    return LoadResult(
        rate=rate,
        sent=data["sent"],
        latencies_ms=data["latencies_ms"],
        statuses=data["statuses"],
        errors=data["errors"],
        max_send_lag_ms=data["max_send_lag_ms"],
    )


def rss_mb() -> float:
    """This process's resident set size now (MB), from /proc; ru_maxrss where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return peak_rss_mb()


def workers_peak_rss_mb() -> tuple[int, float]:
    """How many image worker processes (:mod:`bot.cpu`) there are and their summed peak RSS."""
    from bot import cpu

    total = 0.0
    pids = cpu.worker_pids()
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
    return len(pids), total


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
