"""The benchmark's workflow app: one workflow, ``steps``, served with the Stepstream SDK.

``bench/run.py`` runs it under uvicorn in its own process::

    STEPSTREAM_SIGNING_KEYS=<the executor's key> uvicorn workflow_app:app --app-dir bench --port 8000

The workflow takes ``{"steps": M, "sleep_ms": S}``: it runs M ``ctx.run`` steps, each of which returns
its index and the wall-clock time (epoch seconds) at which its body started, so the gaps between
consecutive steps can be read from the recorded outputs with the bodies' own clock. When S > 0 it then
sleeps S ms with ``ctx.sleep`` (the sleep's lateness is read from the history). The run's output is the
time at which the code after the last step (or after the sleep) ran.
"""

from __future__ import annotations

import time
from datetime import timedelta

from fastapi import FastAPI
from pydantic import BaseModel, Field

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


app = FastAPI(title="Stepstream benchmark app")
app.mount("/workflows", workflows.asgi())


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}
