"""Health endpoints for the services that serve no HTTP of their own (projector, scheduler, executor).

``GET /healthz`` answers 200 while the process serves (liveness); ``GET /readyz`` answers 200 once the
service is ready (it has joined its consumer group and restored its partitions), else 503 with the
reason. Anything else is 404. A plain HTTP/1.1 server on asyncio streams: a probe needs no framework.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Readiness = Callable[[], str | None]  # None: ready; else why not
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
_READ_TIMEOUT_S = 5.0


def answer(method: str, path: str, ready: Readiness) -> tuple[int, dict[str, str]]:
    """The status and JSON body for a request line's method and path."""
    path = path.split("?", 1)[0]
    if path not in ("/healthz", "/readyz"):
        return 404, {"error": f"Expected GET /healthz or GET /readyz, but got {method} {path}"}
    if method not in ("GET", "HEAD"):
        return 405, {"error": f"Expected GET {path}, but got {method}"}
    if path == "/healthz":
        return 200, {"status": "ok"}
    problem = ready()
    return (200, {"status": "ready"}) if problem is None else (503, {"status": "not ready", "reason": problem})


async def serve_health(host: str, port: int, ready: Readiness) -> None:
    """Serve the two endpoints on ``host:port`` until cancelled."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)
            while (await asyncio.wait_for(reader.readline(), _READ_TIMEOUT_S)).strip():
                pass  # headers: none matter
            method, path = ([*request_line.decode("latin-1").split(), "", ""])[:2]
            status, body = answer(method, path, ready)
            payload = json.dumps(body).encode()
            head = (
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + (b"" if method == "HEAD" else payload))
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("health endpoints on http://%s:%d/healthz and /readyz", host, port)
    async with server:
        await server.serve_forever()
