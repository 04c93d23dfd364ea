"""The composition root: settings and providers in, a wired :class:`~bot.core.Tierbot` out.

The core knows no adapter: which providers and surfaces exist is found at the edge
(``adapters/__init__.py``), which hands :func:`build` the providers the catalog names.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.catalog import Catalog, ProviderConfig, load_catalog
from bot.core import Tierbot
from bot.ledger import Ledger
from bot.metrics import Ops
from bot.pipeline import Pipeline
from bot.policy import Policy, load_policy
from bot.providers import ProviderRegistry
from bot.router import Health, Router
from bot.runner import JobRunner
from bot.schedules import Scheduler
from bot.settings import Settings
from bot.surfaces import SurfaceContext
from storage import AssetFiles, S3Bucket, Store, WebHistory
from storage.queue import JobQueue

log = logging.getLogger(__name__)


@dataclass
class Services:
    """Everything the composition root wires, for the CLI, surfaces and tests."""

    settings: Settings
    store: Store
    files: AssetFiles
    catalog: Catalog
    policy: Policy
    providers: ProviderRegistry
    router: Router
    ledger: Ledger
    runner: JobRunner
    pipeline: Pipeline
    bot: Tierbot
    scheduler: Scheduler
    #: This process's metrics and readiness (``/metrics``, ``/healthz``).
    ops: Ops
    #: The job queue to ``tierbot worker`` processes (``TIERBOT_RUN_JOBS=workers``), or None.
    queue: JobQueue | None = None
    #: Resources adapters share within one process (e.g. the one HTTP server), by name.
    shared: dict[str, Any] = field(default_factory=dict)
    _heartbeat: asyncio.Task[None] | None = None

    def surface_context(self) -> SurfaceContext:
        """What a chat surface is given (see :class:`~bot.surfaces.SurfaceContext`)."""
        return SurfaceContext(
            self.bot,
            self.settings,
            self.catalog,
            WebHistory(self.store),
            self.store,
            self.shared,
            self.ops,
        )

    def start(self) -> None:
        """Keep this process's claims alive (in the running loop) until :meth:`aclose`."""
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            self.store.heartbeat()
            await asyncio.sleep(self.store.lease_s / 3)

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        self.scheduler.stop()
        await self.providers.aclose()
        if self.queue is not None:
            await self.queue.aclose()
        self.store.close()  # retires this worker: its claims are free at once


def freeze_startup_objects() -> None:
    """Hide everything made so far from the garbage collector (call once serving).

    Modules, clients, the catalog and the surfaces live until exit, yet every full collection
    walks them again, and a full collection pauses the event loop; under a backlog of
    thousands of commands those pauses were the worst Slack acknowledgements
    (``bench/slack_ack.py``). Frozen objects are still freed normally by reference counting.
    """
    gc.collect()
    gc.freeze()


#: Creates the providers a catalog names (``adapters.load_providers`` finds them by name).
ProviderLoader = Callable[[set[str]], ProviderRegistry]


def build(settings: Settings, providers: ProviderRegistry | ProviderLoader) -> Services:
    """Wire the core from settings and the providers the edge gives it (``adapters.wire``
    discovers them; tests and benchmarks pass their own)."""
    catalog = load_catalog(settings.catalog)
    for provider, limit in settings.provider_concurrency.items():  # the setting wins
        catalog.providers[provider] = ProviderConfig(concurrency=limit)
    policy = load_policy(settings.policy)
    store = Store(settings.store_location, lease_s=settings.lease_s)
    # With TIERBOT_ASSET_URL the bucket is the source of truth and the asset dir its cache.
    remote = (
        S3Bucket(
            settings.asset_url, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        )
        if settings.asset_url
        else None
    )
    files = AssetFiles(settings.asset_dir, remote=remote)
    registry = (
        providers
        if isinstance(providers, ProviderRegistry)
        else providers(catalog.provider_names())
    )
    health = Health(policy.health)
    router = Router(catalog, registry.why_unavailable, health)
    ledger = Ledger(store, policy)
    ops = Ops(store)
    # Workers beat four times a lease; a run whose worker missed a lease's worth of beats is
    # put back (never less than four beats: a live worker must not look dead).
    beat_s = max(0.5, settings.lease_s / 4)
    queue = (
        JobQueue(
            settings.store_location, heartbeat_s=beat_s, stalled_s=max(settings.lease_s, 4 * beat_s)
        )
        if settings.run_jobs == "workers"
        else None
    )
    runner = JobRunner(
        store=store,
        files=files,
        ledger=ledger,
        catalog=catalog,
        providers=registry,
        health=health,
        retries=settings.retries,
        max_backoff_s=settings.max_backoff_s,
        on_error=lambda provider, kind: ops.provider_errors.labels(provider, kind).inc(),
        queue=queue,
    )
    pipeline = Pipeline(
        store=store,
        files=files,
        catalog=catalog,
        policy=policy,
        router=router,
        ledger=ledger,
        runner=runner,
        public_url=settings.public_url,
    )
    scheduler = Scheduler(
        store=store,
        pipeline=pipeline,
        catalog=catalog,
        policy=policy,
        grace_s=settings.schedule_grace_s,
    )
    bot = Tierbot(store=store, pipeline=pipeline, runner=runner, scheduler=scheduler)
    return Services(
        settings,
        store,
        files,
        catalog,
        policy,
        registry,
        router,
        ledger,
        runner,
        pipeline,
        bot,
        scheduler,
        ops,
        queue=queue,
    )
