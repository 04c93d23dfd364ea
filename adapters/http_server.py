"""The bot's one HTTP listener (``TIERBOT_HTTP_HOST:TIERBOT_HTTP_PORT``), shared by surfaces.

The web channel registers its pages on it; Slack's HTTP mode adds ``/slack/events``.
Surfaces register in their constructors and every ``start`` call after the first is a
no-op, so whichever surfaces are configured, one server runs in the shared event loop.
External paths are authenticated by their platform (Slack signs its requests), so the web
channel's guard leaves them alone.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from bot.surfaces import SurfaceContext

log = logging.getLogger(__name__)

#: Requests are small JSON or Slack payloads; the largest is a content calendar sent from the
#: web channel as JSON (base64 adds a third to bot.schedules.MAX_CALENDAR_BYTES). The one
#: exception is the web channel's command with files (images): it comes as multipart and is
#: read part by part under its own limits (``adapters.web.MAX_COMMAND_BODY``), never whole.
MAX_BODY = 400 * 1024


class HttpServer:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.app = web.Application(client_max_size=MAX_BODY)
        self.url = ""
        self._external: list[str] = []
        self._runner: web.AppRunner | None = None

    def add_external_post(self, path: str, handler: Any) -> None:
        """Serve POST ``path`` with ``handler``; its platform authenticates it (Slack signs)."""
        self.app.router.add_post(path, handler)
        self._external.append(path)

    def add_external_get(self, path: str, handler: Any) -> None:
        """Serve GET ``path`` with ``handler``, open to anyone (health and metrics)."""
        self.app.router.add_get(path, handler)
        self._external.append(path)

    def is_external(self, path: str) -> bool:
        return path in self._external

    async def start(self) -> str:
        """Listen (port 0 picks a free port); returns the base URL. Idempotent."""
        if self._runner is None:
            self._runner = web.AppRunner(self.app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            await site.start()
            server = site._server  # aiohttp keeps the bound socket here; port 0 needs it
            if server is not None and server.sockets:  # type: ignore[union-attr]
                self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self.url = f"http://{self.host}:{self.port}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()


def http_server(
    context: SurfaceContext, *, host: str | None = None, port: int | None = None
) -> HttpServer:
    """The process's one server, shared by its surfaces (created on first use)."""
    server = context.shared.get("http_server")
    if server is None:
        settings = context.settings
        server = HttpServer(
            host or settings.http_host, settings.http_port if port is None else port
        )
        context.shared["http_server"] = server
    return server
