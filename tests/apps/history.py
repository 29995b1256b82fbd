"""Workflows whose histories the history tests record, replay, export and fold (tests/integration/test_history.py).

``journey`` uses every primitive; ``leaf`` is its child; ``doomed`` fails, for the dead-letter list.
``versioned`` exists twice: ``before`` is the code before a change, served at ``/before/...``;
``workflows`` has it with ``ctx.patched`` (both branches), served at ``/workflows/...``.
``executions`` counts every step body run in this process, so a test that replays in-process can
see that none ran.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from stepstream.sdk import NonRetryableError, WorkflowContext, Workflows

workflows = Workflows()
before = Workflows()
executions: Counter[str] = Counter()


def counted(step: str, value: Any = None) -> Any:
    executions[step] += 1
    return value


@workflows.workflow("journey")
async def journey(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    """Payload: base (this app's url), event_id, wake_at (epoch seconds)."""
    reserved = await ctx.run("reserve", counted, "reserve", {"seat": 12})
    await ctx.sleep("pause", 0.2)
    await ctx.sleep_until("until", ctx.payload["wake_at"])
    quote = await ctx.call("quote", f"{ctx.payload['base']}/quote", method="POST", json={"seat": reserved["seat"]})
    packed = await asyncio.gather(ctx.run("pack-a", counted, "pack-a", "a"), ctx.run("pack-b", counted, "pack-b", "b"))
    approval = await ctx.wait_for_event("approval", ctx.payload["event_id"], timeout=120)
    woken = await ctx.notify("tell", f"{ctx.payload['event_id']}-done", {"approved": approval.data})
    child = await ctx.invoke("child", "leaf", {"seat": reserved["seat"]})
    return {"quote": quote.body, "packed": packed, "approval": approval.data, "woken": woken, "child": child.output}


@workflows.workflow("leaf")
async def leaf(ctx: WorkflowContext[Any]) -> int:
    seat: int = await ctx.run("double", counted, "double", ctx.payload["seat"] * 2)
    return seat


@workflows.workflow("doomed")
async def doomed(ctx: WorkflowContext[Any]) -> None:
    """Fails at once, every time: a run for the dead-letter list and its operators."""

    def refuse() -> None:
        raise NonRetryableError("the card was refused")

    await ctx.run("charge", refuse)


@before.workflow("versioned")
async def versioned_before(ctx: WorkflowContext[Any]) -> str:
    await ctx.run("fetch", counted, "fetch")
    await ctx.run("ship", counted, "ship")
    return "shipped"


@workflows.workflow("versioned")
async def versioned(ctx: WorkflowContext[Any]) -> str:
    await ctx.run("fetch", counted, "fetch")
    if await ctx.patched("tracking"):
        await ctx.run("ship-tracked", counted, "ship-tracked")
        await ctx.run("send-tracking", counted, "send-tracking")
        return "shipped with tracking"
    await ctx.run("ship", counted, "ship")
    return "shipped"


_apps = {"/workflows": workflows.asgi(), "/before": before.asgi()}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path: str = scope.get("path", "")
    for prefix, served in _apps.items():
        if path.startswith(prefix + "/"):
            await served({**scope, "root_path": scope.get("root_path", "") + prefix}, receive, send)
            return
    if scope["type"] != "http":  # the lifespan
        await _apps["/workflows"](scope, receive, send)
        return
    body = b'{"price":42}' if path == "/quote" else b'{"status":"ok"}'
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
