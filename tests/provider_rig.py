"""The wiring the cloud provider tests share: the real core, built with ``adapters.wire`` so the
adapter is found by its name in the catalog, pointed at a fake provider server.

Use it from a test module's ``wire`` fixture::

    @pytest.fixture
    async def wire(fake, make_settings, catalog_file):
        async with ProviderRig(make_settings, catalog=catalog_file, fal_key=fake.key) as rig:
            yield rig.build

Every build records the runner's backoff instead of sleeping it (``services.sleeps``), and
every wait of a provider's own polling (its :class:`~adapters.providers._http.Hiccups`: poll
intervals and hiccup waits alike) as it sleeps it (``services.waits``). Everything built is
closed at teardown (a test may close services itself first, as a
simulated restart does: closing twice is harmless).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Any

import adapters
from bot.app import Services
from bot.providers import ProviderUnavailable
from bot.settings import Settings

#: Settings every provider test starts from: the fakes listen on plain http at 127.0.0.1,
#: polls are quick, and the runner retries twice before it falls back.
DEFAULTS: dict[str, Any] = {
    "allow_http_hosts": ["127.0.0.1"],
    "poll_interval_s": 0.01,
    "retries": 2,
}

#: The providers that poll through ``_http.Hiccups``.
CLOUD_PROVIDERS = ("comfyui", "fal", "gemini", "replicate")


class ProviderRig:
    """Builds real services from settings and closes them all at the end.

    Args:
        make_settings: conftest's ``make_settings`` fixture (a temporary data dir).
        **defaults: settings of every build, over :data:`DEFAULTS`; a build's own overrides
            win over both.
    """

    def __init__(self, make_settings: Callable[..., Settings], **defaults: Any) -> None:
        self._make_settings = make_settings
        self._defaults = {**DEFAULTS, **defaults}
        self.built: list[Services] = []

    def build(self, **overrides: Any) -> Services:
        """Real services with these settings; ``services.sleeps`` lists the runner's backoff."""
        services = adapters.wire(self._make_settings(**{**self._defaults, **overrides}))
        sleeps: list[float] = []

        async def fake_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        services.runner.sleep = fake_sleep
        services.sleeps = sleeps  # type: ignore[attr-defined]
        waits: list[float] = []

        async def recorded_sleep(seconds: float) -> None:
            waits.append(seconds)
            await asyncio.sleep(seconds)

        for name in CLOUD_PROVIDERS:
            try:
                services.providers.get(name).hiccups.sleep = recorded_sleep  # type: ignore[attr-defined]
            except ProviderUnavailable:
                continue
        services.waits = waits  # type: ignore[attr-defined]
        self.built.append(services)
        return services

    async def aclose(self) -> None:
        for services in self.built:
            await services.aclose()

    async def __aenter__(self) -> ProviderRig:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()
