"""Operating endpoints on the bot's HTTP listener: ``GET /healthz`` (200 when ready, 503 with
what is not, as JSON) and ``GET /metrics`` (Prometheus' text format). Both are served by every
process that runs ``tierbot run``, with nothing secret in them, so a load balancer or a
scraper needs no token (the web channel's guard leaves them alone)."""

from __future__ import annotations

import logging

from aiohttp import web

from adapters.http_server import HttpServer
from bot.metrics import CONTENT_TYPE, Ops

log = logging.getLogger(__name__)


def add_ops_routes(server: HttpServer, ops: Ops) -> None:
    """Serve ``/healthz`` and ``/metrics`` for ``ops`` on ``server``."""

    async def healthz(request: web.Request) -> web.StreamResponse:
        ready, checks = ops.health()
        return web.json_response({"ready": ready, "checks": checks}, status=200 if ready else 503)

    async def metrics(request: web.Request) -> web.StreamResponse:
        return web.Response(
            body=ops.metrics(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"}
        )

    server.add_external_get("/healthz", healthz)
    server.add_external_get("/metrics", metrics)
