"""The benchmark's workflow app: one workflow, ``steps``, served with the Stepstream SDK.

``bench/run.py`` and ``bench/hotpath.py`` run it under uvicorn in its own process::

    STEPSTREAM_SIGNING_KEYS=<the executor's key> uvicorn workflow_app:app --app-dir bench --port 8000

The workflow takes ``{"steps": M, "sleep_ms": S}``: it runs M ``ctx.run`` steps, each of which returns
its index and the wall-clock time (epoch seconds) at which its body started, so the gaps between
consecutive steps can be read from the recorded outputs with the bodies' own clock. When S > 0 it then
sleeps S ms with ``ctx.sleep`` (the sleep's lateness is read from the history). The run's output is the
time at which the code after the last step (or after the sleep) ran.

``GET /bench/stats`` says how many requests the app received, their body bytes in all, and the largest
body (``POST /bench/stats/reset`` starts again): ``bench/hotpath.py`` reads it around its long run to
see what a delivery carries. The count comes from each request's ``Content-Length`` (the executor
sends one), so it costs the app no work per request beyond reading a header.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import timedelta

from fastapi import FastAPI
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream.sdk import WorkflowContext, Workflows

workflows = Workflows()  # verifies deliveries with the keys in STEPSTREAM_SIGNING_KEYS


class StepsPayload(BaseModel):
    steps: int = Field(default=10, ge=0, le=100_000)
    sleep_ms: int = Field(default=0, ge=0)


async def stamp(index: int) -> dict[str, float]:
    """A step body that does nothing but say when it started."""
    return {"i": index, "t": time.time()}


@workflows.workflow("steps", payload=StepsPayload)
async def steps(ctx: WorkflowContext[StepsPayload]) -> dict[str, float]:
    for index in range(ctx.payload.steps):
        await ctx.run(f"step-{index}", stamp, index)
    if ctx.payload.sleep_ms > 0:
        await ctx.sleep("nap", timedelta(milliseconds=ctx.payload.sleep_ms))
    return {"finished_at": time.time()}


@dataclass(slots=True)
class BodyStats:
    """The deliveries the app received: how many, their bodies' bytes in all, and the largest body."""

    requests: int = 0
    body_bytes: int = 0
    largest_body: int = 0


stats = BodyStats()


class CountBodies:
    """ASGI middleware adding each POST under /workflows to :data:`stats`, by its ``Content-Length``."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/workflows"):
            length = next((int(value) for name, value in scope["headers"] if name == b"content-length"), 0)
            stats.requests += 1
            stats.body_bytes += length
            stats.largest_body = max(stats.largest_body, length)
        await self.app(scope, receive, send)


app = FastAPI(title="Stepstream benchmark app")
app.add_middleware(CountBodies)
app.mount("/workflows", workflows.asgi())


@app.get("/bench/stats")
async def body_stats() -> dict[str, int]:
    return asdict(stats)


@app.post("/bench/stats/reset")
async def reset_body_stats() -> dict[str, int]:
    stats.requests = stats.body_bytes = stats.largest_body = 0
    return asdict(stats)


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}
