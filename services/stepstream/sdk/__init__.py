"""Write durable workflows as async Python functions and serve them from your own ASGI app.

Needs only pydantic and the standard library::

    from datetime import timedelta

    from fastapi import FastAPI
    from pydantic import BaseModel

    from stepstream.sdk import WorkflowContext, Workflows

    workflows = Workflows()  # signing keys from STEPSTREAM_SIGNING_KEYS, its own url from STEPSTREAM_BASE_URL


    class Order(BaseModel):
        order_id: str
        amount: int


    @workflows.workflow("orders", payload=Order)
    async def orders(ctx: WorkflowContext[Order]) -> dict[str, str]:
        charge_id = await ctx.run("charge", charge_card, ctx.payload.order_id, ctx.payload.amount)
        await ctx.sleep("cool-off", timedelta(days=1))
        await ctx.run("ship", ship, ctx.payload.order_id)
        return {"charge_id": charge_id}


    app = FastAPI()
    app.mount("/workflows", workflows.asgi())  # the engine POSTs deliveries to /workflows/orders

The engine calls the endpoint once per step (or a few steps, within a time budget) with the run's
recorded steps; the function runs from the top and every recorded step returns its recorded result
instead of running again. Steps: ``run``, ``sleep``, ``sleep_until``, ``call`` (an HTTP request the
engine makes), ``wait_for_event`` and ``notify``, ``invoke`` (a child run), several at once with
``asyncio.gather``; ``ctx.cancel()`` ends the run, and ``on_failure=`` handles its failure.
``FlowControl`` throttles a ``call``'s requests or an ``invoke``'s child run under a key. See
``docs/sdk.md`` for a guide and ``docs/protocol.md`` for the wire protocol.
"""

from stepstream.sdk._asgi import WorkflowsApp
from stepstream.sdk._context import WorkflowContext
from stepstream.sdk._errors import (
    ConfigurationError,
    NondeterminismError,
    NonRetryableError,
    RetryAfterError,
    StepstreamSDKError,
)
from stepstream.sdk._flow import FlowControl
from stepstream.sdk._replay import Divergence, ReplayHistory, ReplayReport, StartedStep, replay
from stepstream.sdk._results import CallResponse, FailureInfo, InvokeResult, WaitResult
from stepstream.sdk._workflows import WorkflowDecorator, WorkflowDefinition, Workflows

__all__ = [
    "CallResponse",
    "ConfigurationError",
    "Divergence",
    "FailureInfo",
    "FlowControl",
    "InvokeResult",
    "NonRetryableError",
    "NondeterminismError",
    "ReplayHistory",
    "ReplayReport",
    "RetryAfterError",
    "StartedStep",
    "StepstreamSDKError",
    "WaitResult",
    "WorkflowContext",
    "WorkflowDecorator",
    "WorkflowDefinition",
    "Workflows",
    "WorkflowsApp",
    "replay",
]
