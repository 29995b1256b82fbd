"""The SDK accepts a signed delivery only for the URL it is served at, and only once: given a request
signed by the engine's key, when it is sent elsewhere or sent again, then it is refused and nothing runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI

from stepstream.protocol import SIGNATURE_HEADER, URL_HEADER
from stepstream.sdk import ConfigurationError, WorkflowContext, Workflows, WorkflowsApp
from stepstream.sdk._nonces import NonceCache
from stepstream.signing import new_nonce, sign

KEY = "current-key"
NOW = 1_700_000_000


class Counted:
    """Workflows whose step bodies count their runs, served with a wall clock the test moves."""

    def __init__(self, **options: Any) -> None:
        self.runs = 0
        self.now = float(NOW)
        self.workflows = Workflows(**({"signing_keys": [KEY], "environ": {}} | options))

        @self.workflows.workflow("orders")
        async def orders(ctx: WorkflowContext[Any]) -> str:
            return await ctx.run("charge", self.charge)

    def charge(self) -> str:
        self.runs += 1
        return "charged"

    def app(self) -> WorkflowsApp:
        return WorkflowsApp(self.workflows, wall_clock=lambda: self.now)


def delivery(delivery_id: str = "run_1/1") -> bytes:
    body = {"protocol": 1, "run_id": "run_1", "workflow": "orders", "delivery_id": delivery_id, "attempt": 1}
    return json.dumps(body).encode()


def signed(url: str, body: bytes, *, timestamp: int = NOW, nonce: str | None = None) -> dict[str, str]:
    """The headers the executor sends with a POST of ``body`` to ``url``."""
    header = sign(body, [KEY], timestamp=timestamp, nonce=nonce or new_nonce(), url=url)
    return {SIGNATURE_HEADER: header, URL_HEADER: url, "content-type": "application/json"}


@pytest_asyncio.fixture
async def counted() -> Counted:
    return Counted()


@pytest_asyncio.fixture
async def client(counted: Counted) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=counted.app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app.internal:8000") as client:
        yield client


def error_of(response: httpx.Response) -> tuple[int, str]:
    body = response.json()
    assert set(body) == {"error", "message"}
    return response.status_code, body["error"]


# ---------------------------------------------------------------------------------------------
# Replays


@pytest.mark.asyncio
async def test_a_replayed_request_is_409_and_runs_nothing(client: httpx.AsyncClient, counted: Counted) -> None:
    body = delivery()
    headers = signed("http://app.internal:8000/orders", body)
    first = await client.post("/orders", content=body, headers=headers)
    assert first.status_code == 200
    assert counted.runs == 1

    # when the same bytes arrive again within the tolerance
    counted.now += 120
    replay = await client.post("/orders", content=body, headers=headers)

    assert error_of(replay) == (409, "replayed")
    assert "nothing was run" in replay.json()["message"]
    assert counted.runs == 1


@pytest.mark.asyncio
async def test_two_copies_arriving_together_run_once(client: httpx.AsyncClient, counted: Counted) -> None:
    body = delivery()
    headers = signed("http://app.internal:8000/orders", body)

    answers = await asyncio.gather(*(client.post("/orders", content=body, headers=headers) for _ in range(5)))

    assert sorted(answer.status_code for answer in answers) == [200, 409, 409, 409, 409]
    assert counted.runs == 1


@pytest.mark.asyncio
async def test_a_redelivery_of_the_same_delivery_with_a_new_signature_is_accepted(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    # The engine crashed before recording the answer: it repeats the delivery, signed anew.
    body = delivery("run_1/1")
    first = await client.post("/orders", content=body, headers=signed("http://app.internal:8000/orders", body))
    again = await client.post("/orders", content=body, headers=signed("http://app.internal:8000/orders", body))

    assert (first.status_code, again.status_code) == (200, 200)
    assert counted.runs == 2  # at least once: the step's work runs again, as for any redelivery


@pytest.mark.asyncio
async def test_a_replay_after_the_tolerance_is_refused_as_stale_and_its_nonce_forgotten(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    body = delivery()
    headers = signed("http://app.internal:8000/orders", body)
    await client.post("/orders", content=body, headers=headers)

    counted.now += 301
    fresh = signed("http://app.internal:8000/orders", body, timestamp=NOW + 301)
    late = await client.post("/orders", content=body, headers=fresh)
    replay = await client.post("/orders", content=body, headers=headers)

    assert late.status_code == 200  # a fresh one still runs; accepting it forgot the expired nonce
    assert len(counted.workflows.nonces) == 1
    assert error_of(replay) == (401, "unauthorized")
    assert "301 s old" in replay.json()["message"]
    assert counted.runs == 2


def test_the_nonce_cache_forgets_a_nonce_once_its_signature_is_stale() -> None:
    cache = NonceCache(capacity=10)

    assert cache.accept("a" * 32, expires_at=NOW + 300, now=NOW)
    assert not cache.accept("a" * 32, expires_at=NOW + 300, now=NOW + 300)  # at the edge: still a replay
    assert cache.accept("b" * 32, expires_at=NOW + 600, now=NOW + 301)

    assert "a" * 32 not in cache
    assert "b" * 32 in cache


def test_the_nonce_cache_is_bounded_and_forgets_the_least_recently_seen_first() -> None:
    cache = NonceCache(capacity=3)
    for name in "abc":
        cache.accept(name * 16, expires_at=NOW + 300, now=NOW)
    assert not cache.accept("a" * 16, expires_at=NOW + 300, now=NOW)  # a replay of a: now the most recent

    cache.accept("d" * 16, expires_at=NOW + 300, now=NOW)

    assert len(cache) == 3
    assert "b" * 16 not in cache
    assert {"a" * 16, "c" * 16, "d" * 16} <= {name * 16 for name in "abcd" if name * 16 in cache}
    assert cache.evicted == 1


def test_the_nonce_cache_stays_bounded_under_a_flood() -> None:
    cache = NonceCache(capacity=100)

    for number in range(10_000):
        cache.accept(f"{number:032x}", expires_at=NOW + 300, now=NOW)

    assert len(cache) == 100
    assert len(cache._by_expiry) <= 200
    assert cache.evicted == 9_900


# ---------------------------------------------------------------------------------------------
# The signed URL must name this endpoint


@pytest.mark.asyncio
async def test_a_request_signed_for_another_url_is_401_and_runs_nothing(
    client: httpx.AsyncClient, counted: Counted
) -> None:
    body = delivery()
    # The executor delivered to an api caller's listener; the listener replays the request here.
    headers = signed("http://listener.attacker.net:9000/orders", body)

    response = await client.post("/orders", content=body, headers=headers)

    assert error_of(response) == (401, "unauthorized")
    message = response.json()["message"]
    assert "app.internal:8000/orders" in message
    assert "signed for listener.attacker.net:9000/orders" in message
    assert counted.runs == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "http://app.internal:8000/refunds",  # another path on this host
        "http://app.internal:8001/orders",  # another port
        "http://app.internal/orders",  # the default port is another port
        "http://app.internal:8000/orders/x",
        "http://app.internal:99999/orders",  # not a port at all
    ],
)
async def test_a_request_signed_for_another_path_or_port_is_401(
    client: httpx.AsyncClient, counted: Counted, url: str
) -> None:
    body = delivery()

    response = await client.post("/orders", content=body, headers=signed(url, body))

    assert error_of(response) == (401, "unauthorized")
    assert counted.runs == 0


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url",
    [
        "https://app.internal:8000/orders",  # the scheme is not compared (TLS ends at a proxy)
        "http://APP.internal.:8000/orders",  # nor the host's case or trailing dot
        "http://app.internal:8000/%6Frders",  # the path is compared percent-decoded
        "http://app.internal:8000/orders?tag=blue",  # the query is signed, not compared
    ],
)
async def test_the_same_place_written_another_way_is_accepted(client: httpx.AsyncClient, url: str) -> None:
    body = delivery()

    response = await client.post("/orders", content=body, headers=signed(url, body))

    assert response.status_code == 200, response.text


@pytest.mark.asyncio
async def test_a_request_without_the_url_header_is_401(client: httpx.AsyncClient) -> None:
    body = delivery()
    headers = signed("http://app.internal:8000/orders", body)
    del headers[URL_HEADER]

    response = await client.post("/orders", content=body, headers=headers)

    assert error_of(response) == (401, "unauthorized")
    assert "Stepstream-Url" in response.json()["message"]


@pytest.mark.asyncio
async def test_without_a_base_url_a_forged_host_header_gets_through_the_url_check() -> None:
    # The documented weakness of the fallback: the Host header is the replayer's to choose. The nonce
    # check still stops a second replay here, but not the first replay of a request captured elsewhere.
    counted = Counted()
    body = delivery()
    headers = signed("http://listener.attacker.net:9000/orders", body) | {"host": "listener.attacker.net:9000"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=counted.app()), base_url="http://app") as client:
        response = await client.post("/orders", content=body, headers=headers)

    assert response.status_code == 200
    assert counted.runs == 1


@pytest.mark.asyncio
async def test_with_a_base_url_a_forged_host_header_does_not_help() -> None:
    counted = Counted(base_url="https://shop.example.com")
    body = delivery()
    headers = signed("http://listener.attacker.net:9000/orders", body) | {"host": "listener.attacker.net:9000"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=counted.app()), base_url="http://app") as client:
        response = await client.post("/orders", content=body, headers=headers)

    assert error_of(response) == (401, "unauthorized")
    assert "shop.example.com/orders" in response.json()["message"]
    assert counted.runs == 0


@pytest.mark.asyncio
async def test_with_a_base_url_the_host_the_request_arrived_with_does_not_matter() -> None:
    # Behind a proxy: the engine posts to https://shop.example.com, the app sees http://10.0.0.7:8000.
    counted = Counted(base_url="https://shop.example.com")
    body = delivery()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=counted.app()), base_url="http://10.0.0.7:8000"
    ) as client:
        response = await client.post("/orders", content=body, headers=signed("https://shop.example.com/orders", body))

    assert response.status_code == 200, response.text
    assert counted.runs == 1


@pytest.mark.asyncio
async def test_base_urls_from_the_environment_with_a_prefix_and_a_mount_point() -> None:
    # STEPSTREAM_BASE_URL lists where the app is reached: a proxy that strips /shop, and inside the cluster.
    environ = {"STEPSTREAM_BASE_URL": "https://example.com/shop/, http://shop.apps.svc:8000"}
    counted = Counted(environ=environ)
    app = FastAPI()
    app.mount("/workflows", counted.app())
    transport = httpx.ASGITransport(app=app)
    statuses = []
    async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.7:8000") as client:
        for url in (
            "https://example.com/shop/workflows/orders",
            "http://shop.apps.svc:8000/workflows/orders",
            "https://example.com/workflows/orders",  # without the proxy's prefix
            "http://shop.apps.svc:8000/orders",  # without the mount point
            "http://10.0.0.7:8000/workflows/orders",  # the request's own host: not a base url
        ):
            body = delivery()
            response = await client.post("/workflows/orders", content=body, headers=signed(url, body))
            statuses.append(response.status_code)

    assert [base.text for base in counted.workflows.base_urls] == [
        "https://example.com/shop/",
        "http://shop.apps.svc:8000",
    ]
    assert statuses == [200, 200, 401, 401, 401]
    assert counted.runs == 2


@pytest.mark.asyncio
async def test_a_wrapper_that_sets_root_path_keeps_the_full_path_comparable() -> None:
    # An ASGI wrapper that hands the SDK only the workflow's segment says where it mounted it in root_path.
    counted = Counted()
    inner = counted.app()

    async def wrapper(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        mode, workflow = scope["path"].strip("/").split("/")
        await inner({**scope, "root_path": f"/{mode}", "path": f"/{workflow}"}, receive, send)

    body = delivery()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapper), base_url="http://app:81") as client:
        accepted = await client.post("/ok/orders", content=body, headers=signed("http://app:81/ok/orders", body))
        refused = await client.post("/ok/orders", content=body, headers=signed("http://app:81/orders", body))

    assert (accepted.status_code, refused.status_code) == (200, 401)


@pytest.mark.parametrize(
    ("base_url", "reason"),
    [
        ("shop.example.com", "like https://app.example.com[/prefix]"),
        ("ftp://shop.example.com", "like https://app.example.com[/prefix]"),
        ("https://shop.example.com/?a=1", "without user, query or fragment"),
        ("https://user@shop.example.com", "without user, query or fragment"),
    ],
)
def test_a_malformed_base_url_is_a_configuration_error(base_url: str, reason: str) -> None:
    with pytest.raises(ConfigurationError, match="Expected base_url") as raised:
        Workflows(signing_keys=[KEY], base_url=base_url)
    assert reason in str(raised.value)
    with pytest.raises(ConfigurationError, match="Expected STEPSTREAM_BASE_URL"):
        Workflows(signing_keys=[KEY], environ={"STEPSTREAM_BASE_URL": base_url})


def test_a_nonce_cache_of_nothing_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="nonce_cache_size to be positive"):
        Workflows(signing_keys=[KEY], nonce_cache_size=0)
