"""The health endpoints: the api's own, and the server of the projector, scheduler and executor
(over real loopback HTTP), with the metrics page beside them."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stepstream.api.app import create_app
from stepstream.config import ApiSettings, KafkaSettings, health_address
from stepstream.health import serve_health
from stepstream.store import QueryStore
from tests.stack import free_port
from tests.unit.test_api import FakePublisher, TestClient


def ready() -> str | None:
    return None


def catching_up() -> str | None:
    return "the query store is catching up: 12 records behind"


def test_the_health_server_answers_over_http_and_follows_the_service_becoming_ready() -> None:
    port = free_port()
    state: dict[str, str | None] = {"problem": "has not joined its consumer group yet"}

    async def scenario() -> list[tuple[int, Any]]:
        server = asyncio.create_task(serve_health("127.0.0.1", port, lambda: state["problem"]))
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                for _ in range(100):  # until it listens
                    try:
                        await client.get("/healthz")
                        break
                    except httpx.ConnectError:
                        await asyncio.sleep(0.05)
                seen = []
                for path in ("/healthz", "/readyz"):
                    response = await client.get(path)
                    seen.append((response.status_code, response.json()))
                state["problem"] = None
                for method, path in (("GET", "/readyz"), ("HEAD", "/readyz"), ("GET", "/"), ("POST", "/readyz")):
                    response = await client.request(method, path)
                    seen.append((response.status_code, response.json() if method != "HEAD" else None))
                metrics = await client.get("/metrics")
                seen.append((metrics.status_code, "stepstream_build_info{" in metrics.text))
                return seen
        finally:
            server.cancel()

    assert asyncio.run(scenario()) == [
        (200, {"status": "ok"}),
        (503, {"status": "not ready", "reason": "has not joined its consumer group yet"}),
        (200, {"status": "ready"}),
        (200, None),
        (404, {"error": "Expected GET /healthz, GET /readyz or GET /metrics, but got GET /"}),
        (405, {"error": "Expected GET /readyz, but got POST"}),
        (200, True),
    ]


def test_a_taken_port_is_an_os_error_not_an_exit() -> None:
    port = free_port()

    async def scenario() -> None:
        first = asyncio.create_task(serve_health("127.0.0.1", port, lambda: None))
        await asyncio.sleep(0.3)
        try:
            with pytest.raises(OSError, match=r"[Aa]ddress already in use"):
                await serve_health("127.0.0.1", port, lambda: None)
        finally:
            first.cancel()

    asyncio.run(scenario())


def test_the_health_address_defaults_to_every_interface_on_8081_and_can_be_turned_off() -> None:
    assert health_address({}) == ("0.0.0.0", 8081)
    assert health_address({"STEPSTREAM_HEALTH_HOST": "127.0.0.1", "STEPSTREAM_HEALTH_PORT": "9100"}) == (
        "127.0.0.1",
        9100,
    )
    assert health_address({"STEPSTREAM_HEALTH_PORT": "off"}) is None


def api(readiness: Any) -> TestClient:
    settings = ApiSettings(kafka=KafkaSettings())
    app: FastAPI = create_app(settings, store=QueryStore(":memory:"), publisher=FakePublisher(), readiness=readiness)
    return TestClient(app)


def test_the_api_is_ready_once_its_query_store_has_caught_up() -> None:
    state: dict[str, str | None] = {"problem": "the query store is catching up: 3 records behind"}
    with api(lambda: state["problem"]) as client:
        live, before = client.get("/healthz"), client.get("/readyz")
        state["problem"] = None
        after = client.get("/readyz")

    assert (live.status_code, live.json()) == (200, {"status": "ok"})
    assert (before.status_code, before.json()) == (
        503,
        {"status": "not ready", "reason": "the query store is catching up: 3 records behind"},
    )
    assert (after.status_code, after.json()) == (200, {"status": "ready"})
