"""Health and metrics for the services that serve no HTTP of their own (projector, scheduler, executor).

``GET /healthz`` answers 200 while the process serves (liveness); ``GET /readyz`` answers 200 once the
service is ready (it has joined its consumer group and restored its partitions), else 503 with the
reason; ``GET /metrics`` is the Prometheus page (:mod:`stepstream.metrics`). Anything else is a 404
naming the three. Served by uvicorn, as the api is (it was a hand-written HTTP/1.1 loop, which a
metrics page and a scraper's keep-alive connections would have had to grow into).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable, Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stepstream import metrics

log = logging.getLogger(__name__)

Readiness = Callable[[], str | None]  # None: ready; else why not
_PATHS = "GET /healthz, GET /readyz or GET /metrics"


def health_app(ready: Readiness) -> Starlette:
    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        problem = ready()
        if problem is None:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)

    async def metrics_page(_: Request) -> Response:
        body, content_type = await metrics.page()
        return Response(body, media_type=content_type)

    async def not_found(request: Request, _: Exception) -> Response:
        return JSONResponse({"error": f"Expected {_PATHS}, but got {request.method} {request.url.path}"}, 404)

    async def not_allowed(request: Request, _: Exception) -> Response:
        return JSONResponse({"error": f"Expected GET {request.url.path}, but got {request.method}"}, 405)

    routes = [
        Route("/healthz", healthz, methods=["GET", "HEAD"]),
        Route("/readyz", readyz, methods=["GET", "HEAD"]),
        Route("/metrics", metrics_page, methods=["GET", "HEAD"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_allowed})


class QuietServer(uvicorn.Server):
    """uvicorn as one task among a service's: the process's own signal handlers decide when it stops."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_health(host: str, port: int, ready: Readiness) -> None:
    """Serve the endpoints on ``host:port`` until cancelled. Raises ``OSError`` if the address is taken
    (bound here, before uvicorn, which would end the process instead)."""
    listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    config = uvicorn.Config(health_app(ready), log_level="warning", log_config=None, lifespan="off", access_log=False)
    server = QuietServer(config)
    log.info("health endpoints and metrics on http://%s:%d/healthz, /readyz and /metrics", host, port)
    sockets: list[Any] = [listener]
    try:
        await server.serve(sockets=sockets)
    finally:
        listener.close()
