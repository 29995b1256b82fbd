"""The example workflow app: a FastAPI service that serves two workflows with the Stepstream SDK.

- ``onboarding``: steps and a sleep;
- ``order``: parallel steps, an HTTP call the engine makes, a wait for a payment event, and a sleep.

Run it with ``stepstream dev --example`` (which also starts the engine), or alone:

    STEPSTREAM_SIGNING_KEYS=<the engine's key> STEPSTREAM_BASE_URL=http://127.0.0.1:8000 \
        uvicorn app:app --app-dir examples --port 8000

(``STEPSTREAM_BASE_URL``: where the engine reaches it, so that it accepts only deliveries signed for
itself; without it the SDK checks against each request's Host header.)

Every step body counts its executions in ``EXAMPLE_COUNTS_FILE`` (if set), so the tests can prove
each step ran exactly once even across crashes of the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from datetime import timedelta
from pathlib import Path

from fastapi import FastAPI
from pydantic import BaseModel

from stepstream.sdk import WorkflowContext, Workflows

workflows = Workflows()
# The app's log shows each delivery it serves: the SDK logs one line per delivery at INFO.
logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


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


class Order(BaseModel):
    order_id: str
    items: list[str] = ["book", "lamp"]
    payment_timeout_seconds: float = 300


# Where the engine reaches this app's own "third-party" endpoint below (stepstream dev serves it here).
BASE_URL = os.environ.get("EXAMPLE_BASE_URL", "http://127.0.0.1:8000")


@workflows.workflow("order", payload=Order)
async def order(ctx: WorkflowContext[Order]) -> dict[str, object]:
    async def reserve(item: str) -> str:
        _count(f"{ctx.run_id}:reserve-{item}")
        return f"{item} reserved"

    async def ship(quote: float) -> str:
        _count(f"{ctx.run_id}:ship")
        return f"shipped for {quote}"

    # Parallel steps: every item is reserved at once, each in its own delivery.
    reservations = await asyncio.gather(*[ctx.run(f"reserve-{item}", reserve, item) for item in ctx.payload.items])
    # The engine makes this slow call itself; no endpoint compute is held while it is in flight.
    quote = await ctx.call("shipping-quote", f"{BASE_URL}/shipping-quote?items={len(ctx.payload.items)}", timeout=30)
    # The run waits, holding nothing, until the payment service notifies `payment-<order id>`.
    payment = await ctx.wait_for_event(
        "payment", f"payment-{ctx.payload.order_id}", timeout=ctx.payload.payment_timeout_seconds
    )
    if payment.timeout:
        return {"status": "expired", "reservations": reservations}
    # Packing takes a moment: the run sleeps, and nothing runs meanwhile.
    await ctx.sleep("pack", timedelta(seconds=1))
    shipped = await ctx.run("ship", ship, quote.body["price"])
    return {"status": "shipped", "reservations": reservations, "payment": payment.data, "shipping": shipped}


app = FastAPI(title="Stepstream example app")
app.mount("/workflows", workflows.asgi())


@app.get("/healthz")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/shipping-quote")
async def shipping_quote(items: int = 1) -> dict[str, float]:
    """A slow third-party API, as the `order` workflow's call step sees it."""
    await asyncio.sleep(1)
    return {"price": 4.5 + items}
