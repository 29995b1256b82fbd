"""A workflow app for flow-control tests: it records when each request arrives and ends.

Every request to ``/workflows/...`` or ``/thirdparty/...`` is recorded with the ``tag`` from its
query string (tests give each key its own tag in the workflow or call URL): arrival and end, as
seconds on this process's monotonic clock. ``GET /intervals?tag=T`` returns them, in arrival order,
with the path, so a test can check concurrency and starts per window as the endpoint saw them.

Workflows (payload ``{"ms": [..]}``: how long each step's body takes):

- ``steady``: three ``run`` steps;
- ``caller``: a ``run`` step, a ``ctx.call`` to ``/thirdparty/slow`` under its own flow-control key
  (payload ``call_key``, ``call_parallelism``, ``call_ms``, ``call_tag``), then a ``run`` step.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from typing import Any
from urllib.parse import parse_qs

from stepstream.sdk import FlowControl, WorkflowContext, Workflows

workflows = Workflows()
intervals: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)


async def _work(ms: int) -> str:
    await asyncio.sleep(ms / 1000)
    return f"slept {ms} ms"


@workflows.workflow("steady")
async def steady(ctx: WorkflowContext[Any]) -> list[str]:
    durations = ctx.payload.get("ms", [50, 50, 50])
    return [await ctx.run(f"step-{number}", _work, ms) for number, ms in enumerate(durations)]


@workflows.workflow("caller")
async def caller(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    payload = ctx.payload
    await ctx.run("before", _work, payload.get("step_ms", 50))
    answer = await ctx.call(
        "call",
        f"{payload['base']}/thirdparty/slow?ms={payload['call_ms']}&tag={payload['call_tag']}",
        flow_control=FlowControl(key=payload["call_key"], parallelism=payload["call_parallelism"]),
    )
    await ctx.run("after", _work, payload.get("step_ms", 50))
    return {"status": answer.status}


_workflows_app = workflows.asgi()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await _workflows_app(scope, receive, send)
        return
    path: str = scope["path"]
    query = {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/healthz":
        await _answer(send, 200, {"status": "ok"})
        return
    if path == "/intervals":
        await _answer(send, 200, intervals.get(query.get("tag", ""), []))
        return
    record = {"path": path, "start": time.monotonic(), "end": None}
    intervals[query.get("tag", "")].append(record)
    try:
        if path.startswith("/workflows/"):
            await _workflows_app({**scope, "root_path": scope.get("root_path", "") + "/workflows"}, receive, send)
        elif path == "/thirdparty/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000)
            await _answer(send, 200, {"slept_ms": int(query.get("ms", "100"))})
        else:
            await _answer(send, 404, {"error": "not_found"})
    finally:
        record["end"] = time.monotonic()


async def _answer(send: Any, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
