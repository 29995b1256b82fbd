"""A workflow app whose endpoint misbehaves on purpose, for the failure tests.

``POST /<mode>/<count>/<workflow>`` misbehaves on the first ``count`` deliveries of each run, then
serves ``<workflow>`` normally:

- ``http500``: answers 500;
- ``slow``: waits 3 s before answering (longer than the tests' executor timeout);
- ``ok``: never misbehaves.

``big`` records large step outputs: ``{"steps": n, "size": bytes, "sleep_ms": t, "fail_once": true}``
runs n steps that each return a string of that many characters, then sleeps t ms if given, then, if
``fail_once``, runs a step that fails its first attempt (a retry), for the record-size tests.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from stepstream.sdk import NonRetryableError, WorkflowContext, Workflows

workflows = Workflows()
_seen: Counter[str] = Counter()


@workflows.workflow("steady")
async def steady(ctx: WorkflowContext[Any]) -> str:
    first = await ctx.run("first", lambda: "one")
    second = await ctx.run("second", lambda: "two")
    return f"{first}+{second}"


@workflows.workflow("refuses")
async def refuses(ctx: WorkflowContext[Any]) -> None:
    await ctx.run("prepare", lambda: "ready")

    def charge() -> None:
        raise NonRetryableError("card declined: do not retry")

    await ctx.run("charge", charge)


@workflows.workflow("crashes")
async def crashes(ctx: WorkflowContext[Any]) -> None:
    def explode() -> None:
        raise RuntimeError("disk full")

    await ctx.run("explode", explode)


@workflows.workflow("big")
async def big(ctx: WorkflowContext[Any]) -> str:
    for index in range(int(ctx.payload["steps"])):
        await ctx.run(f"big-{index}", lambda: "x" * int(ctx.payload["size"]))
    if ctx.payload.get("sleep_ms"):
        await ctx.sleep("nap", ctx.payload["sleep_ms"] / 1000)
    if ctx.payload.get("fail_once"):
        await ctx.run("flaky", _fails_once, ctx.run_id)
    return "done"


_attempts: Counter[str] = Counter()


def _fails_once(run_id: str) -> str:
    _attempts[run_id] += 1
    if _attempts[run_id] == 1:
        raise RuntimeError("first attempt fails: the retry must carry every result")
    return "second attempt"


_inner = workflows.asgi()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        await _inner(scope, receive, send)
        return
    if scope["path"] == "/healthz":
        await _answer(send, 200, b'{"status":"ok"}')
        return
    parts = scope["path"].strip("/").split("/")
    if len(parts) != 3:
        await _answer(send, 404, b'{"error":"not_found","message":"use /<mode>/<count>/<workflow>"}')
        return
    mode, count, workflow = parts
    headers = dict(scope["headers"])
    run_id = headers.get(b"stepstream-run-id", b"").decode()
    _seen[run_id] += 1
    if _seen[run_id] <= int(count):
        if mode == "http500":
            await _answer(send, 500, b'{"error":"internal","message":"simulated outage"}')
            return
        if mode == "slow":
            await asyncio.sleep(3)
    # Mounted at /<mode>/<count>, as root_path says: the SDK checks the full path a delivery was signed for.
    root_path = f"{scope.get('root_path', '')}/{mode}/{count}"
    await _inner(
        {**scope, "root_path": root_path, "path": f"/{workflow}", "raw_path": f"/{workflow}".encode()}, receive, send
    )


async def _answer(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
