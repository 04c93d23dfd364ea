"""Memory: peak RSS of the bot process with 1,000 jobs in flight (the real core, a provider
holding every job until all 1,000 are waiting on it), measured in a fresh process so earlier
benchmarks do not inflate it.

Goal: ≤ 250 MB. Prints the figure; never fails on time.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _rig

N = 1000
GOAL_MB = 250.0


async def hold_jobs() -> int:
    from bot.app import build
    from bot.domain import Capability, Stage
    from bot.providers import GenerationRequest, ProviderRegistry
    from bot.runner import JobPlan
    from bot.settings import Settings

    with tempfile.TemporaryDirectory() as folder:
        catalog = Path(folder) / "catalog.toml"
        catalog.write_text(f"[providers.local]\nconcurrency = {N}\n")
        settings = Settings(data_dir=Path(folder) / "data", catalog=catalog, _env_file=None)
        provider = _rig.FastProvider(gated=True)
        services = build(settings, providers=ProviderRegistry({"local": provider}, {}))
        request_id = services.store.create_request(
            origin={"surface": "bench", "team": "T", "channel": "C", "user": "u"},
            command="draft",
            prompt="a lighthouse",
            options={},
        )
        candidate = services.catalog.candidate("local-draft@local")
        tasks = [
            asyncio.ensure_future(
                services.runner.run(
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
                            prompt="a lighthouse",
                            n=1,
                            seed=i,
                        ),
                        inputs=[],
                        candidates=[candidate],
                        reason="bench",
                    )
                )
            )
            for i in range(N)
        ]
        while provider.in_result < N:
            await asyncio.sleep(0.05)
        in_flight = provider.in_result
        provider.release()
        await asyncio.gather(*tasks)
        await services.aclose()
    return in_flight


def child() -> None:
    _rig.clean_environ()
    in_flight = asyncio.run(hold_jobs())
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(f"{in_flight} {peak_mb:.1f}")


def main() -> None:
    done = subprocess.run(
        [sys.executable, __file__, "--child"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    in_flight, peak_mb = done.stdout.split()
    print(
        f"memory: peak RSS {float(peak_mb):.0f} MB with {in_flight} jobs in flight; goal ≤ "
        f"{GOAL_MB:.0f} MB ({'met' if float(peak_mb) <= GOAL_MB else 'missed'})"
    )


if __name__ == "__main__":
    child() if "--child" in sys.argv else main()
