"""The executor signs each delivery for the url it posts to, with a new nonce each time, and refuses
to sign or send one to a url whose host is not allowed: given a delivery, then what goes out (or the
failure reported instead) is right.

Kafka and the endpoints are the fakes of ``test_executor_flow``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio

from stepstream.avro import Codec
from stepstream.clock import ManualClock
from stepstream.config import ExecutorSettings, KafkaSettings
from stepstream.core import AllowedHosts, Fail, ReportCall, ReportDelivery
from stepstream.executor.offsets import PartitionProgress
from stepstream.executor.service import Executor
from stepstream.kafka.clients import Producer
from stepstream.protocol import SIGNATURE_HEADER, URL_HEADER
from stepstream.signing import verify
from tests.unit.test_executor_flow import (
    CALL,
    COMPLETE,
    DELIVERY,
    T0,
    TOPICS,
    TP,
    Answer,
    FakeHttp,
    FakeProducer,
    Harness,
    RecordCodec,
)

KEYS = ("current-key", "next-key")
ALLOWED = AllowedHosts.parse(["app.local", "*.apps.example.com"])


@dataclass
class RecordingHttp(FakeHttp):
    """``FakeHttp`` that also keeps where each delivery was posted and with which headers."""

    posts: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    def post(self, url: str, *, data: bytes, **options: Any) -> Any:
        self.posts.append((url, dict(options["headers"]), data))
        return self._exchange(data)


Make = Callable[..., Awaitable[tuple[Harness, RecordingHttp]]]


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Make]:
    made: list[Executor] = []

    async def harness(**settings: Any) -> tuple[Harness, RecordingHttp]:
        clock = ManualClock(T0)
        codec = RecordCodec()
        values: dict[str, Any] = {"kafka": KafkaSettings(), "signing_keys": KEYS, "allowed_url_hosts": ALLOWED}
        executor = Executor(ExecutorSettings(**(values | settings)), codec=cast(Codec, codec), clock=clock)
        await executor._consumer.stop()
        await executor._publisher.producer.stop()
        producer = FakeProducer(codec, clock)
        http = RecordingHttp(clock, Answer(200, COMPLETE))
        executor._publisher.producer = cast(Producer, producer)
        executor._session = executor._call_session = cast(aiohttp.ClientSession, http)
        progress = executor._progress.setdefault(TP, PartitionProgress())
        made.append(executor)
        return Harness(executor, codec, producer, http, progress), http

    yield harness
    for executor in made:
        tasks = [*executor._deliveries, *executor._calls]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def reports(harness: Harness) -> list[ReportDelivery]:
    return [
        sent.record for sent in harness.producer.records(TOPICS.commands) if isinstance(sent.record, ReportDelivery)
    ]


@pytest.mark.asyncio
async def test_a_delivery_is_signed_for_the_url_it_is_posted_to(make: Make) -> None:
    harness, http = await make()

    await harness.run(DELIVERY)

    ((url, headers, body),) = http.posts
    assert url == "http://app.local/workflows/orders"
    assert headers[URL_HEADER] == url
    # signed at the wall clock's time, not the executor's (manual) clock
    signed = verify(body, headers[SIGNATURE_HEADER], ["next-key"], url=headers[URL_HEADER], now=int(time.time()))
    assert signed.url == url
    assert headers[SIGNATURE_HEADER].count("v2=") == 2
    assert "v1=" not in headers[SIGNATURE_HEADER]


@pytest.mark.asyncio
async def test_the_url_signed_and_posted_is_the_one_the_http_client_sends(make: Make) -> None:
    harness, http = await make()
    delivery = replace(DELIVERY, url="http://APP.local:80/workflows/x/../orders?tag=a#part")

    await harness.run(delivery)

    ((url, headers, _),) = http.posts
    assert url == headers[URL_HEADER] == "http://app.local/workflows/orders?tag=a"


@pytest.mark.asyncio
async def test_a_redelivery_of_the_same_delivery_gets_a_new_nonce(make: Make) -> None:
    harness, http = await make()

    await harness.run(DELIVERY)
    await harness.run(DELIVERY)  # the same delivery id and attempt, as after a crash

    (_, first, body_1), (_, second, body_2) = http.posts
    assert body_1 == body_2
    nonce_1, nonce_2 = (headers[SIGNATURE_HEADER].split(",")[1] for headers in (first, second))
    assert nonce_1.startswith("n=")
    assert nonce_1 != nonce_2


@pytest.mark.asyncio
async def test_during_an_upgrade_it_can_sign_v1_too_for_older_endpoints(make: Make) -> None:
    harness, http = await make(sign_v1=True)

    await harness.run(DELIVERY)

    ((_, headers, _),) = http.posts
    names = [part.split("=")[0] for part in headers[SIGNATURE_HEADER].split(",")]
    assert names == ["t", "n", "v2", "v2", "v1", "v1"]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://listener.attacker.net/capture", "listener.attacker.net:443 is not allowed"),
        ("http://app.local.attacker.net/workflows/orders", "app.local.attacker.net:80 is not allowed"),
        ("http://user@app.local/workflows/orders", "without user information"),
        ("http://evil.example\\@app.local/workflows/orders", "without backslashes"),
    ],
)
async def test_a_delivery_to_a_url_not_allowed_is_neither_signed_nor_sent_and_fails_the_run(
    make: Make, url: str, reason: str
) -> None:
    harness, http = await make()

    await harness.run(replace(DELIVERY, url=url))

    assert http.posts == []
    (report,) = reports(harness)
    assert report.steps == ()
    assert isinstance(report.outcome, Fail)
    assert report.outcome.retryable is False
    assert report.outcome.error.type == "UrlNotAllowed"
    assert reason in report.outcome.error.message
    assert harness.progress.committable() == 18, "reported, so its offset is done"


@pytest.mark.asyncio
async def test_a_refused_delivery_under_a_flow_key_still_settles_its_slot(make: Make) -> None:
    harness, _ = await make()

    await harness.run(replace(DELIVERY, url="https://listener.attacker.net/capture"))

    assert [type(sent.record).__name__ for sent in harness.producer.sent] == ["ReportDelivery", "FlowSettled"]


@pytest.mark.asyncio
async def test_an_executor_that_allows_nothing_refuses_every_delivery(make: Make) -> None:
    harness, http = await make(allowed_url_hosts=AllowedHosts())

    await harness.run(DELIVERY)

    assert http.posts == []
    (report,) = reports(harness)
    assert isinstance(report.outcome, Fail)
    assert "STEPSTREAM_ALLOWED_URL_HOSTS" in report.outcome.error.message


@pytest.mark.asyncio
async def test_engine_side_calls_are_not_subject_to_the_allow_list(make: Make) -> None:
    harness, http = await make(allowed_url_hosts=AllowedHosts())

    await harness.run(CALL)  # to https://maps.example, a third party

    assert len(http.requests) == 1
    (report,) = [sent.record for sent in harness.producer.records(TOPICS.commands)]
    assert isinstance(report, ReportCall)
