"""A workflow app for the hot-path tests: runs of many consecutive steps, whose bodies say when they
ran, and which can kill the app's own process at a chosen step.

``POST /workflows/steps`` with ``{"steps": n, "step_ms": t, "kill_at": k, "output_bytes": b}``: n
``run`` steps, each appending ``<run id>:<index>`` to ``HOTPATH_COUNTS_FILE`` when its body starts,
then taking t ms, and returning its index (or, with b, a string of b characters);
with ``kill_at`` set, the first time (per run) step k's body starts, the process kills itself with
SIGKILL before anything else: the step before it has been acknowledged durable by then, which is
what the test checks. ``GET /stats`` gives the largest request body the workflows endpoint got.
``HOTPATH_SESSIONS=0``: the SDK keeps no sessions (as an SDK from before them).
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from stepstream.sdk import WorkflowContext, Workflows

# HOTPATH_SESSIONS=0 stands in for an SDK that does not know sessions (it ignores the field, as any
# older SDK does): every request then replays the run.
workflows = Workflows(max_sessions=0 if os.environ.get("HOTPATH_SESSIONS") == "0" else 10_000)
COUNTS = Path(os.environ.get("HOTPATH_COUNTS_FILE", "hotpath-counts.txt"))
_largest_body = 0


class Steps(BaseModel):
    steps: int
    step_ms: float = 0
    kill_at: int | None = None
    output_bytes: int = 0


def _started(run_id: str, index: int, kill_at: int | None) -> None:
    marker = COUNTS.with_suffix(f".killed-{run_id}")
    if index == kill_at and not marker.exists():
        marker.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    with COUNTS.open("a") as counts:
        counts.write(f"{run_id}:{index}\n")


@workflows.workflow("steps", payload=Steps)
async def steps(ctx: WorkflowContext[Steps]) -> int:
    for index in range(ctx.payload.steps):

        async def body(index: int = index) -> int | str:
            _started(ctx.run_id, index, ctx.payload.kill_at)
            if ctx.payload.step_ms:
                await asyncio.sleep(ctx.payload.step_ms / 1000)
            return "x" * ctx.payload.output_bytes if ctx.payload.output_bytes else index

        await ctx.run(f"step-{index}", body)
    return ctx.payload.steps


_inner = workflows.asgi()


async def _counting(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
    """The workflows endpoint, measuring each request's body on the way in."""
    size = 0

    async def counted() -> Any:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        return message

    await _inner(scope, counted, send)
    global _largest_body
    _largest_body = max(_largest_body, size)


app = FastAPI()
app.mount("/workflows", _counting)


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/stats")
async def stats() -> dict[str, int]:
    return {"largest_request_body": _largest_body}
