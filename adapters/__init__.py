"""Adapters: the edges of tierbot (chat surfaces, model providers, the shell), and the edge of
the composition root: which of them exist is found here, by name, so the core never imports
one.

- A provider named ``x`` in the catalog is served by ``adapters/providers/x.py`` and its
  ``create(settings)`` (raising ``ProviderUnavailable`` with the reason, e.g. a missing key).
- A chat surface is a module ``adapters/<name>.py`` with ``create(services)`` (raising
  ``SurfaceUnavailable("set ...")`` when not configured); ``tierbot run`` starts every one
  that can start. A module may also offer ``cli(services, args)``: ``tierbot <name> ...``.

:func:`wire` is :func:`bot.app.build` with the providers found here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
from typing import Any

from bot.app import Services, build
from bot.providers import Provider, ProviderRegistry, ProviderUnavailable
from bot.settings import Settings
from bot.surfaces import ChatSurface, SurfaceUnavailable

log = logging.getLogger(__name__)


def wire(settings: Settings, providers: ProviderRegistry | None = None) -> Services:
    """The core wired from settings, with the providers found here (or ``providers``)."""
    return build(settings, providers or (lambda names: load_providers(names, settings)))


def load_providers(names: set[str], settings: Settings) -> ProviderRegistry:
    """Create every provider the catalog names that can serve here."""
    providers: dict[str, Provider] = {}
    unavailable: dict[str, str] = {}
    for name in sorted(names):
        try:
            module = importlib.import_module(f"{__name__}.providers.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.providers.{name}":
                raise
            unavailable[name] = "not configured (no adapter installed yet)"
            continue
        try:
            providers[name] = module.create(settings)
        except ProviderUnavailable as exc:
            unavailable[name] = str(exc)
    return ProviderRegistry(providers, unavailable)


#: Surfaces people expect, named in the start-up report even before their adapter exists.
EXPECTED_SURFACES = {"slack": "SLACK_BOT_TOKEN", "discord": "DISCORD_BOT_TOKEN"}


def load_surfaces(services: Services) -> tuple[list[ChatSurface], dict[str, str]]:
    """Create every chat surface module in ``adapters/`` that can start here.

    Returns:
        The surfaces to start, and for the others the reason they are off.
    """
    surfaces: list[ChatSurface] = []
    off: dict[str, str] = {}
    context = services.surface_context()
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.ispkg)
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        if not hasattr(module, "create"):
            continue
        try:
            surfaces.append(module.create(context))
        except SurfaceUnavailable as exc:
            off[name] = str(exc)
    for name, variable in EXPECTED_SURFACES.items():
        if name not in names:
            token_set = getattr(services.settings, variable.lower(), None) is not None
            off[name] = "adapter not installed in this version" if token_set else f"set {variable}"
    return surfaces, off


def surface_cli(name: str) -> Any | None:
    """A surface's own shell command (``tierbot discord sync``), if ``name`` is a surface."""
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError:
        return None
    return getattr(module, "cli", None)
