"""The composition root: settings in, a wired :class:`~bot.core.Tierbot` out.

Providers are found by name: a catalog model whose provider is ``fal`` is served by the
module ``adapters.providers.fal``, whose ``create(settings)`` returns a provider or raises
``ProviderUnavailable`` with the reason (usually a missing key). Adding a provider is one new
module plus catalog entries; nothing here changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any

from bot.catalog import Catalog, ProviderConfig, load_catalog
from bot.core import Tierbot
from bot.ledger import Ledger
from bot.pipeline import Pipeline
from bot.policy import Policy, load_policy
from bot.providers import Provider, ProviderRegistry, ProviderUnavailable
from bot.router import Health, Router
from bot.runner import JobRunner
from bot.schedules import Scheduler
from bot.settings import Settings
from bot.surfaces import ChatSurface, SurfaceUnavailable
from storage import AssetFiles, Store

log = logging.getLogger(__name__)


def load_providers(names: set[str], settings: Settings) -> ProviderRegistry:
    """Create every provider the catalog names that can serve here."""
    providers: dict[str, Provider] = {}
    unavailable: dict[str, str] = {}
    for name in sorted(names):
        try:
            module = importlib.import_module(f"adapters.providers.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"adapters.providers.{name}":
                raise
            unavailable[name] = "not configured (no adapter installed yet)"
            continue
        try:
            providers[name] = module.create(settings)
        except ProviderUnavailable as exc:
            unavailable[name] = str(exc)
    return ProviderRegistry(providers, unavailable)


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
    #: Resources adapters share within one process (e.g. the one HTTP server), by name.
    shared: dict[str, Any] = field(default_factory=dict)
    _heartbeat: asyncio.Task[None] | None = None

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
        self.store.close()  # retires this worker: its claims are free at once


#: Surfaces people expect, named in the start-up report even before their adapter exists.
EXPECTED_SURFACES = {"slack": "SLACK_BOT_TOKEN", "discord": "DISCORD_BOT_TOKEN"}


def load_surfaces(services: Services) -> tuple[list[ChatSurface], dict[str, str]]:
    """Create every chat surface module in ``adapters/`` that can start here.

    Returns:
        The surfaces to start, and for the others the reason they are off.
    """
    adapters = importlib.import_module("adapters")
    surfaces: list[ChatSurface] = []
    off: dict[str, str] = {}
    names = sorted(m.name for m in pkgutil.iter_modules(adapters.__path__) if not m.ispkg)
    for name in names:
        module = importlib.import_module(f"adapters.{name}")
        if not hasattr(module, "create"):
            continue
        try:
            surfaces.append(module.create(services))
        except SurfaceUnavailable as exc:
            off[name] = str(exc)
    for name, variable in EXPECTED_SURFACES.items():
        if name not in names:
            token_set = getattr(services.settings, variable.lower(), None) is not None
            off[name] = "adapter not installed in this version" if token_set else f"set {variable}"
    return surfaces, off


def freeze_startup_objects() -> None:
    """Hide everything made so far from the garbage collector (call once serving).

    Modules, clients, the catalog and the surfaces live until exit, yet every full collection
    walks them again, and a full collection pauses the event loop; under a backlog of
    thousands of commands those pauses were the worst Slack acknowledgements
    (``bench/slack_ack.py``). Frozen objects are still freed normally by reference counting.
    """
    gc.collect()
    gc.freeze()


def surface_cli(name: str) -> Any | None:
    """A surface's own shell command (``tierbot discord sync``), if ``name`` is a surface."""
    try:
        module = importlib.import_module(f"adapters.{name}")
    except ModuleNotFoundError:
        return None
    return getattr(module, "cli", None)


def build(settings: Settings, providers: ProviderRegistry | None = None) -> Services:
    """Wire the core from settings; ``providers`` overrides discovery (tests, benchmarks)."""
    catalog = load_catalog(settings.catalog)
    for provider, limit in settings.provider_concurrency.items():  # the setting wins
        catalog.providers[provider] = ProviderConfig(concurrency=limit)
    policy = load_policy(settings.policy)
    store = Store(settings.db_path, lease_s=settings.lease_s)
    files = AssetFiles(settings.asset_dir)
    registry = providers or load_providers(catalog.provider_names(), settings)
    health = Health(policy.health)
    router = Router(catalog, registry.why_unavailable, health)
    ledger = Ledger(store, policy)
    runner = JobRunner(
        store=store,
        files=files,
        ledger=ledger,
        catalog=catalog,
        providers=registry,
        health=health,
        retries=settings.retries,
        max_backoff_s=settings.max_backoff_s,
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
    )
