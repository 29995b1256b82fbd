"""A workflow app using every primitive, plus the third-party endpoints its ``call`` steps reach.

Served at ``/workflows/<name>``. It counts what it does, in memory, and shows it at ``GET /stats``:
step executions per ``<run id>/<step>``, the most ``run`` steps seen executing at once, and failure
handler calls per run. ``POST /control/<flag>/<on|off>`` flips a flag (``broken``: the ``fragile``
workflow's step raises while it is on).

Third-party endpoints for ``ctx.call``:

- ``/thirdparty/slow?ms=N``: answers 200 after N ms;
- ``/thirdparty/flaky/<key>``: answers 500 to the first two calls per key, then 200;
- ``/thirdparty/missing``: answers 404;
- ``/thirdparty/hang?ms=N``: like slow, for calls that are cancelled while in flight.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any
from urllib.parse import parse_qs

from stepstream.sdk import FailureInfo, NonRetryableError, WorkflowContext, Workflows

workflows = Workflows()

executions: Counter[str] = Counter()
failure_calls: Counter[str] = Counter()
flaky_calls: Counter[str] = Counter()
flags: dict[str, bool] = {"broken": False}
_running = 0
max_running = 0


def _count(ctx: WorkflowContext[Any], step: str) -> None:
    executions[f"{ctx.run_id}/{step}"] += 1


@workflows.workflow("caller")
async def caller(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    """Payload: url, retries, timeout_s, retry_delay. Returns what the call answered."""
    response = await ctx.call(
        "call",
        ctx.payload["url"],
        retries=ctx.payload.get("retries", 0),
        timeout=ctx.payload.get("timeout_s", 30),
        retry_delay=ctx.payload.get("retry_delay"),
    )
    await ctx.run("after-call", lambda: _count(ctx, "after-call"))
    return {"status": response.status, "body": response.body, "error": response.error}


@workflows.workflow("waiter")
async def waiter(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    """Payload: event_id, timeout_s, pause_s (a sleep before the wait starts)."""
    if ctx.payload.get("pause_s"):
        await ctx.sleep("pause", ctx.payload["pause_s"])
    result = await ctx.wait_for_event("wait", ctx.payload["event_id"], timeout=ctx.payload["timeout_s"])
    await ctx.run("after-wait", lambda: _count(ctx, "after-wait"))
    return {"timeout": result.timeout, "data": result.data}


@workflows.workflow("notifier")
async def notifier(ctx: WorkflowContext[Any]) -> list[str]:
    return await ctx.notify("notify", ctx.payload["event_id"], ctx.payload.get("data"))


@workflows.workflow("chain")
async def chain(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    """Payload: level, depth, fail_at. Invokes itself one level deeper until ``depth``."""
    level, depth, fail_at = ctx.payload["level"], ctx.payload["depth"], ctx.payload.get("fail_at")
    if level == fail_at:

        def broken() -> None:
            raise NonRetryableError(f"level {level} broke")

        await ctx.run("break", broken)
    if level < depth:
        child = await ctx.invoke("child", "chain", {**ctx.payload, "level": level + 1})
        return {"level": level, "child_status": child.status, "child": child.output, "child_error": child.error}
    return {"level": level}


async def _branch(ctx: WorkflowContext[Any], number: int) -> int:
    global _running, max_running
    _count(ctx, f"branch-{number}")
    _running += 1
    max_running = max(max_running, _running)
    try:
        await asyncio.sleep(0.5)
    finally:
        _running -= 1
    return number * number


@workflows.workflow("fanout")
async def fanout(ctx: WorkflowContext[Any]) -> int:
    width = ctx.payload.get("width", 10)
    squares = await asyncio.gather(*[ctx.run(f"branch-{n}", _branch, ctx, n) for n in range(width)])
    await ctx.run("after-fanin", lambda: _count(ctx, "after-fanin"))
    return sum(squares)


@workflows.workflow("sleeper")
async def sleeper(ctx: WorkflowContext[Any]) -> str:
    await ctx.sleep("nap", ctx.payload["sleep_s"])
    await ctx.run("after-sleep", lambda: _count(ctx, "after-sleep"))
    return "woke"


async def _on_failure(ctx: WorkflowContext[Any], error: FailureInfo) -> str:
    failure_calls[ctx.run_id] += 1
    return f"handled {error.type}"


@workflows.workflow("fragile", on_failure=_on_failure)
async def fragile(ctx: WorkflowContext[Any]) -> str:
    await ctx.run("prepare", lambda: _count(ctx, "prepare"))

    def flaky() -> str:
        _count(ctx, "flaky")
        if flags["broken"]:
            raise RuntimeError("the endpoint is broken")
        return "fixed"

    return await ctx.run("flaky", flaky)


@workflows.workflow("bad-duration")
async def bad_duration(ctx: WorkflowContext[Any]) -> None:
    await ctx.sleep("never", -1)


_workflows_app = workflows.asgi()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await _workflows_app(scope, receive, send)
        return
    path: str = scope["path"]
    if path.startswith("/workflows/"):
        await _workflows_app({**scope, "root_path": scope.get("root_path", "") + "/workflows"}, receive, send)
        return
    query = {key: values[-1] for key, values in parse_qs(scope.get("query_string", b"").decode()).items()}
    if path == "/healthz":
        await _answer(send, 200, {"status": "ok"})
    elif path == "/stats":
        await _answer(
            send,
            200,
            {
                "executions": executions,
                "failure_calls": failure_calls,
                "max_running": max_running,
                "flaky": flaky_calls,
            },
        )
    elif path.startswith("/control/"):
        _, _, flag, value = path.split("/")
        flags[flag] = value == "on"
        await _answer(send, 200, flags)
    elif path in ("/thirdparty/slow", "/thirdparty/hang"):
        await asyncio.sleep(int(query.get("ms", "1000")) / 1000)
        await _answer(send, 200, {"slept_ms": int(query.get("ms", "1000"))})
    elif path.startswith("/thirdparty/flaky/"):
        key = path.rsplit("/", 1)[1]
        flaky_calls[key] += 1
        if flaky_calls[key] <= 2:
            await _answer(send, 500, {"error": "try again"})
        else:
            await _answer(send, 200, {"attempt": flaky_calls[key]})
    elif path == "/thirdparty/missing":
        await _answer(send, 404, {"error": "no such thing"})
    else:
        await _answer(send, 404, {"error": "not_found"})


async def _answer(send: Any, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})
