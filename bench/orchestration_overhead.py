"""Orchestration overhead: N = 1,000 draft jobs against a provider with a fixed latency
L = 1 s and a concurrency cap C = 64: the makespan divided by the ideal ceil(N/C)·L.

Goal: ≤ 1.05. Prints the figure; never fails on time.

The real job runner, ledger and SQLite store (in a temporary folder) run every job: reserve,
submit, store the request id, wait for the result, write 4 outputs to the asset store,
settle. Only the provider is a double (:class:`_rig.FastProvider`, ``asyncio.sleep(1)``).
"""

from __future__ import annotations

import asyncio
import math
import tempfile
import time
from pathlib import Path

import _rig

from adapters import wire
from bot.domain import Capability, Stage
from bot.providers import GenerationRequest, ProviderRegistry
from bot.runner import CompletedJob, JobPlan
from bot.settings import Settings

N = 1000
LATENCY_S = 1.0
CAP = 64
IMAGES = 4  # a default /draft
GOAL = 1.05


async def measure(folder: Path) -> None:
    provider = _rig.FastProvider(latency_s=LATENCY_S)
    settings = Settings(
        data_dir=folder / "data", _env_file=None, provider_concurrency={"local": CAP}
    )
    services = wire(settings, providers=ProviderRegistry({"local": provider}, {}))
    candidate = services.catalog.candidate("local-draft")
    assert candidate is not None
    plans = []
    for index in range(N):
        request_id = services.store.create_request(
            origin={"surface": "bench", "team": "T", "channel": "C", "user": "u"},
            command="draft",
            prompt="a lighthouse at dawn",
            options={},
        )
        plans.append(
            JobPlan(
                request_id=request_id,
                team="T",
                channel="C",
                request=GenerationRequest(
                    job_id="",
                    stage=Stage.DRAFT,
                    capability=Capability.TEXT_TO_IMAGE,
                    model_id="",
                    provider_model="",
                    prompt="a lighthouse at dawn",
                    n=IMAGES,
                    seed=index * IMAGES,
                ),
                inputs=[],
                candidates=[candidate],
                reason="bench",
            )
        )
    start = time.perf_counter()
    results = await asyncio.gather(
        *(services.runner.run(plan) for plan in plans), return_exceptions=True
    )
    makespan = time.perf_counter() - start
    await services.aclose()
    done = sum(isinstance(r, CompletedJob) for r in results)
    ideal = math.ceil(N / CAP) * LATENCY_S
    ratio = makespan / ideal
    waves = math.ceil(N / CAP)
    print(
        f"orchestration: {done}/{N} jobs ({IMAGES} images each, L = {LATENCY_S:g} s, "
        f"C = {CAP}) in {makespan:.2f} s; ideal {ideal:.0f} s; ratio {ratio:.3f} "
        f"({(makespan - ideal) / waves * 1000:.0f} ms added per wave of {CAP}); "
        f"goal ≤ {GOAL} ({'met' if ratio <= GOAL else 'missed'})"
    )
    failed = [r for r in results if not isinstance(r, CompletedJob)]
    if failed:
        print(f"  first failure: {failed[0]!r}")


def main() -> None:
    _rig.clean_environ()
    with tempfile.TemporaryDirectory(prefix="tierbot-bench-") as folder:
        asyncio.run(measure(Path(folder)))


if __name__ == "__main__":
    main()
