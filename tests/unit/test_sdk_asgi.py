"""The SDK's ASGI app, driven in-process over HTTP: given a request, then the status and body are right."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from pydantic import BaseModel

from stepstream.protocol import SIGNATURE_HEADER, URL_HEADER, DeliveryResponse
from stepstream.sdk import WorkflowContext, Workflows
from stepstream.signing import new_nonce, sign

KEYS = ["current-key", "next-key"]


class Order(BaseModel):
    order_id: str
    amount: int


def make_workflows(**options: Any) -> Workflows:
    workflows = Workflows(**({"signing_keys": ["current-key"]} | options))

    @workflows.workflow("orders", payload=Order)
    async def orders(ctx: WorkflowContext[Order]) -> dict[str, Any]:
        charge_id = await ctx.run("charge", lambda: f"ch_{ctx.payload.order_id}")
        return {"charge_id": charge_id, "amount": ctx.payload.amount}

    @workflows.workflow("refunds")
    async def refunds(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep("wait", 60)

    @workflows.workflow("pair")
    async def pair(ctx: WorkflowContext[Any]) -> list[str]:
        return list(await asyncio.gather(ctx.run("a", lambda: "from a"), ctx.run("b", lambda: "from b")))

    return workflows


def delivery(workflow: str = "orders", payload: Any = None, **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "protocol": 1,
        "run_id": "run_1",
        "workflow": workflow,
        "delivery_id": "delivery_1",
        "attempt": 1,
        "payload": {"order_id": "o_1", "amount": 5} if payload is None else payload,
        "steps": [],
        "budget_ms": 0,
    } | fields
    return json.dumps(body).encode()


def signed(
    body: bytes, keys: list[str] | None = None, timestamp: int | None = None, *, url: str | None = None
) -> dict[str, str]:
    """Headers signing ``body`` as the engine does, for ``url`` (default: the body's workflow's url)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    if url is None:
        try:
            workflow = json.loads(body).get("workflow", "orders")
        except ValueError:
            workflow = "orders"
        url = f"http://endpoint/{workflow}"
    return {
        SIGNATURE_HEADER: sign(body, keys or KEYS, timestamp=stamp, nonce=new_nonce(), url=url),
        URL_HEADER: url,
        "content-type": "application/json",
    }


@pytest_asyncio.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_workflows().asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error", "message"}
    return response.status_code, body["error"]


@pytest.mark.asyncio
async def test_a_signed_delivery_runs_the_workflow_and_answers_200(client: httpx.AsyncClient) -> None:
    body = delivery()

    response = await client.post("/orders", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = DeliveryResponse.model_validate_json(response.content)
    assert [(step.index, step.name, step.output) for step in answer.steps] == [(0, "charge", "ch_o_1")]
    assert answer.next.type == "complete"
    assert answer.next.output == {"charge_id": "ch_o_1", "amount": 5}


@pytest.mark.asyncio
async def test_a_sleep_is_answered_over_http_too(client: httpx.AsyncClient) -> None:
    body = delivery("refunds", payload={})

    response = await client.post("/refunds", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json()["next"] == {
        "type": "suspend",
        "steps": [{"kind": "sleep", "index": 0, "name": "wait", "duration_ms": 60_000}],
    }


@pytest.mark.asyncio
async def test_an_unsigned_delivery_is_401(client: httpx.AsyncClient) -> None:
    response = await client.post("/orders", content=delivery())

    assert error_of(response) == (401, "unauthorized")
    assert SIGNATURE_HEADER in response.json()["message"]


@pytest.mark.asyncio
async def test_a_delivery_signed_with_an_unknown_key_is_401(client: httpx.AsyncClient) -> None:
    body = delivery()

    response = await client.post("/orders", content=body, headers=signed(body, keys=["attacker"]))

    assert error_of(response) == (401, "unauthorized")


@pytest.mark.asyncio
async def test_a_body_changed_after_signing_is_401(client: httpx.AsyncClient) -> None:
    headers = signed(delivery())

    response = await client.post("/orders", content=delivery(attempt=2), headers=headers)

    assert error_of(response) == (401, "unauthorized")


@pytest.mark.asyncio
async def test_a_stale_signature_is_401(client: httpx.AsyncClient) -> None:
    body = delivery()

    response = await client.post("/orders", content=body, headers=signed(body, timestamp=int(time.time()) - 3600))

    assert error_of(response) == (401, "unauthorized")
    assert "old" in response.json()["message"]


@pytest.mark.asyncio
async def test_an_unknown_workflow_is_404_naming_the_known_ones(client: httpx.AsyncClient) -> None:
    body = delivery("invoices")

    response = await client.post("/invoices", content=body, headers=signed(body))

    assert error_of(response) == (404, "unknown_workflow")
    assert "'orders', 'pair', 'refunds'" in response.json()["message"]


@pytest.mark.asyncio
async def test_an_unknown_workflow_is_not_revealed_without_a_signature(client: httpx.AsyncClient) -> None:
    response = await client.post("/invoices", content=delivery("invoices"))

    assert error_of(response) == (401, "unauthorized")


@pytest.mark.asyncio
async def test_a_body_that_is_not_a_delivery_request_is_400(client: httpx.AsyncClient) -> None:
    body = b'{"run_id": "run_1"}'

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (400, "bad_request")
    assert "delivery_id" in response.json()["message"]


@pytest.mark.asyncio
async def test_a_body_that_is_not_json_is_400(client: httpx.AsyncClient) -> None:
    body = b"not json"

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (400, "bad_request")


@pytest.mark.asyncio
async def test_a_body_for_another_workflow_than_the_path_is_400(client: httpx.AsyncClient) -> None:
    body = delivery("refunds")

    response = await client.post("/orders", content=body, headers=signed(body, url="http://endpoint/orders"))

    assert error_of(response) == (400, "bad_request")
    assert "'orders'" in response.json()["message"]


@pytest.mark.asyncio
async def test_a_history_out_of_index_order_is_400(client: httpx.AsyncClient) -> None:
    steps = [
        {"index": 1, "name": "a", "kind": "run", "output": "x"},
        {"index": 0, "name": "b", "kind": "run", "output": "y"},
    ]
    body = delivery(steps=steps)

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (400, "bad_request")
    assert "position 1 has index 0 after index 1" in response.json()["message"]


@pytest.mark.asyncio
async def test_a_history_naming_an_index_twice_is_400(client: httpx.AsyncClient) -> None:
    step = {"index": 0, "name": "charge", "kind": "run", "output": "x"}
    body = delivery(steps=[step, step])

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (400, "bad_request")
    assert "each index once" in response.json()["message"]


@pytest.mark.asyncio
async def test_a_history_with_a_gap_is_served_while_a_parallel_step_is_pending(client: httpx.AsyncClient) -> None:
    # Step 0 still pending in the engine, step 1 recorded: the delivery executes only step 0.
    body = delivery(
        "pair", payload={}, steps=[{"index": 1, "name": "b", "kind": "run", "output": "from b"}], execute_index=0
    )

    response = await client.post("/pair", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json() == {
        "protocol": 1,
        "steps": [{"index": 0, "name": "a", "kind": "run", "output": "from a"}],
        "next": {"type": "continue"},
    }


@pytest.mark.asyncio
async def test_a_payload_that_does_not_fit_the_workflows_type_is_422(client: httpx.AsyncClient) -> None:
    body = delivery(payload={"order_id": "o_1", "amount": "a lot"})

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (422, "invalid_payload")
    assert "amount" in response.json()["message"]


@pytest.mark.asyncio
async def test_get_is_405() -> None:
    transport = httpx.ASGITransport(app=make_workflows().asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        response = await client.get("/orders")

    assert error_of(response) == (405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


@pytest.mark.asyncio
async def test_a_body_over_the_limit_is_413() -> None:
    transport = httpx.ASGITransport(app=make_workflows(max_body_bytes=1024).asgi())
    body = delivery(payload={"order_id": "x" * 2000, "amount": 1})
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (413, "payload_too_large")


@pytest.mark.asyncio
async def test_a_streamed_body_over_the_limit_is_refused_while_reading() -> None:
    transport = httpx.ASGITransport(app=make_workflows(max_body_bytes=1024).asgi())
    chunks_sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        # No content-length: only counting while reading can stop this.
        for number in range(1_000):
            chunks_sent.append(number)
            yield b"x" * 512

    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        response = await client.post("/orders", content=endless(), headers=signed(b"irrelevant"))

    assert error_of(response) == (413, "payload_too_large")
    assert len(chunks_sent) <= 4, "the app stopped reading once past the limit"


@pytest.mark.asyncio
async def test_without_verification_an_unsigned_delivery_is_served() -> None:
    transport = httpx.ASGITransport(app=make_workflows(signing_keys=None, allow_unsigned=True).asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        response = await client.post("/orders", content=delivery())

    assert response.status_code == 200
    assert response.json()["next"]["type"] == "complete"


@pytest.mark.asyncio
async def test_mounted_in_a_fastapi_app_it_serves_under_the_mount_point() -> None:
    app = FastAPI()
    app.mount("/workflows", make_workflows().asgi())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    transport = httpx.ASGITransport(app=app)
    body = delivery()
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        served = await client.post(
            "/workflows/orders", content=body, headers=signed(body, url="http://endpoint/workflows/orders")
        )
        unknown = await client.post(
            "/workflows/invoices",
            content=delivery("invoices"),
            headers=signed(delivery("invoices"), url="http://endpoint/workflows/invoices"),
        )
        health_response = await client.get("/health")

    assert served.status_code == 200
    assert served.json()["next"]["output"] == {"charge_id": "ch_o_1", "amount": 5}
    assert error_of(unknown) == (404, "unknown_workflow")
    assert health_response.json() == {"status": "ok"}


@pytest.mark.asyncio
async def test_fields_added_by_a_later_engine_are_ignored(client: httpx.AsyncClient) -> None:
    body = delivery(priority="high")

    response = await client.post("/orders", content=body, headers=signed(body))

    assert response.status_code == 200
    assert response.json()["next"]["type"] == "complete"


@pytest.mark.asyncio
async def test_an_unknown_protocol_version_is_400(client: httpx.AsyncClient) -> None:
    body = delivery(protocol=2)

    response = await client.post("/orders", content=body, headers=signed(body))

    assert error_of(response) == (400, "bad_request")
    assert "protocol" in response.json()["message"]
