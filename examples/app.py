"""The example workflow app: a FastAPI service that serves one workflow with the Stepstream SDK.

Run it with ``stepstream dev --example`` (which also starts the engine), or alone:

    STEPSTREAM_SIGNING_KEYS=<the engine's key> uvicorn app:app --app-dir examples --port 8000

Every step body counts its executions in ``EXAMPLE_COUNTS_FILE`` (if set), so the tests can prove
each step ran exactly once even across crashes of the engine.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

from stepstream.sdk import WorkflowContext, Workflows

workflows = Workflows()


class Signup(BaseModel):
    name: str
    sleep_seconds: float = 2.0


def _count(step: str) -> None:
    """Record that a step body ran (for the demo's tests); appends are atomic for short lines."""
    path = os.environ.get("EXAMPLE_COUNTS_FILE")
    if path:
        with Path(path).open("a") as counts:
            counts.write(json.dumps({"step": step}) + "\n")


@workflows.workflow("onboarding", payload=Signup)
async def onboarding(ctx: WorkflowContext[Signup]) -> dict[str, str]:
    async def create_account() -> str:
        _count(f"{ctx.run_id}:create-account")
        return f"acct-{ctx.payload.name.lower()}"

    async def send_welcome(account: str) -> str:
        _count(f"{ctx.run_id}:send-welcome")
        return f"welcome mail sent to {account}"

    async def send_tips(account: str) -> str:
        _count(f"{ctx.run_id}:send-tips")
        return f"tips sent to {account}"

    account = await ctx.run("create-account", create_account)
    welcome = await ctx.run("send-welcome", send_welcome, account)
    await ctx.sleep("wait-before-tips", timedelta(seconds=ctx.payload.sleep_seconds))
    tips = await ctx.run("send-tips", send_tips, account)
    return {"account": account, "welcome": welcome, "tips": tips}


app = FastAPI(title="Stepstream example app")
app.mount("/workflows", workflows.asgi())


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}
