"""The executor under flow control, given → when → then: one step per delivery, and every request under
a flow-control key settled on ``schedule``, keyed by the key, after its report.

Kafka and the endpoints are fakes here (the executor's I/O is not the subject; tests/integration has
the real thing), and so is the codec: these tests check what the executor writes, not the schemas.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import aiohttp
import pytest
import pytest_asyncio
from aiokafka import ConsumerRecord, TopicPartition

from stepstream.avro import Codec, DecodeError
from stepstream.clock import ManualClock
from stepstream.config import ExecutorSettings, KafkaSettings
from stepstream.core import (
    AllowedHosts,
    CallDelivery,
    CallSpec,
    Delivery,
    Fail,
    FlowSettled,
    Outcome,
    ReportCall,
    ReportDelivery,
)
from stepstream.executor.offsets import PartitionProgress
from stepstream.executor.service import Executor
from stepstream.kafka.clients import Producer
from stepstream.kafka.topics import TopicNames
from tests.helpers import assert_eventually

T0 = 1_700_000_000_000
KEY = "tenant-7"
HTTP_MS = 40  # how long every fake HTTP exchange takes, on the manual clock
WRITE_MS = 5  # how long the fake broker takes to write a report
BUDGET_MS = 750
OFFSET = 17
TOPICS = TopicNames(KafkaSettings().topic_prefix)
TP = TopicPartition(TOPICS.deliveries, 3)

DELIVERY = Delivery(
    run_id="run_01",
    workflow="orders",
    url="http://app.local/workflows/orders",
    delivery_id="run_01/3",
    attempt=2,
    step_index=1,
    payload='{"order":42}',
    steps=(),
    headers=(),
    flow_key=KEY,
)
CALL = CallDelivery(
    run_id="run_01",
    step_index=4,
    attempt=2,
    call=CallSpec(
        method="POST",
        url="https://maps.example/geocode",
        headers=(("Content-Type", "application/json"),),
        body='{"q":"Berlin"}',
        timeout_ms=15_000,
        retries=3,
    ),
    flow_key=KEY,
)
COMPLETE = json.dumps({"protocol": 1, "steps": [], "next": {"type": "complete", "output": "done"}}).encode()


# ---------------------------------------------------------------------------------------------
# Fakes


class RecordCodec:
    """Stands in for the Avro codec: a value is the index of the record it stands for."""

    def __init__(self) -> None:
        self.records: list[object] = []

    def encode(self, record: object) -> bytes:
        self.records.append(record)
        return str(len(self.records) - 1).encode()

    def decode(self, data: bytes, expected: tuple[type[Any], ...] | None = None) -> object:
        record = self.records[int(data)]
        if expected is not None and not isinstance(record, expected):
            raise DecodeError(f"Expected one of {expected}, but got {record!r}")
        return record


@dataclass(frozen=True)
class Sent:
    topic: str
    key: str
    record: object


@dataclass
class FakeProducer:
    """Kafka as the producer sees it: each record is written when sent, in order. A ``FlowSettled``
    is acknowledged only once ``settlements_acknowledged`` is set."""

    codec: RecordCodec
    clock: ManualClock
    sent: list[Sent] = field(default_factory=list)
    settlements_acknowledged: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.settlements_acknowledged.set()

    async def send(self, topic: str, *, value: bytes, key: bytes) -> Awaitable[None]:
        record = self.codec.decode(value)
        self.sent.append(Sent(topic, key.decode(), record))
        if topic == TOPICS.commands:
            self.clock.advance(WRITE_MS)
        return self._acknowledgement(record)

    async def _acknowledgement(self, record: object) -> None:
        if isinstance(record, FlowSettled):
            await self.settlements_acknowledged.wait()

    def records(self, topic: str) -> list[Sent]:
        return [sent for sent in self.sent if sent.topic == topic]


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes = b""


class FakeResponse:
    def __init__(self, answer: Answer) -> None:
        self.status = answer.status
        self.headers = {"Content-Type": "application/json"}
        self.raw_headers = ((b"Content-Type", b"application/json"),)
        self.content_length = len(answer.body)
        self.content = self
        self._body = answer.body

    async def read(self) -> bytes:
        return self._body

    async def iter_chunked(self, size: int) -> AsyncIterator[bytes]:
        yield self._body


@dataclass
class FakeHttp:
    """Every endpoint and third party: each exchange takes ``HTTP_MS`` and gives ``answer``, or raises it."""

    clock: ManualClock
    answer: Answer | Exception
    requests: list[tuple[int, bytes | None]] = field(default_factory=list)  # (clock when sent, body)

    def post(self, url: str, *, data: bytes, **options: Any) -> Any:
        return self._exchange(data)

    def request(self, method: str, url: str, *, data: bytes | None, **options: Any) -> Any:
        return self._exchange(data)

    @asynccontextmanager
    async def _exchange(self, body: bytes | None) -> AsyncIterator[FakeResponse]:
        self.requests.append((self.clock.now_ms(), body))
        await asyncio.sleep(0)  # the request is in flight: other tasks run meanwhile
        self.clock.advance(HTTP_MS)
        if isinstance(self.answer, Exception):
            raise self.answer
        yield FakeResponse(self.answer)


@dataclass
class Harness:
    executor: Executor
    codec: RecordCodec
    producer: FakeProducer
    http: FakeHttp
    progress: PartitionProgress

    async def start(self, message: Delivery | CallDelivery) -> asyncio.Task[None]:
        """Hand ``message`` to the executor as the record at ``OFFSET``; its work runs in the task returned."""
        record = ConsumerRecord(
            topic=TP.topic,
            partition=TP.partition,
            offset=OFFSET,
            timestamp=T0,
            timestamp_type=0,
            key=message.run_id.encode(),
            value=self.codec.encode(message),
            checksum=None,
            serialized_key_size=0,
            serialized_value_size=0,
            headers=[],
        )
        before = self.executor._deliveries | self.executor._calls
        await self.executor._start(TP, self.progress, record)
        (task,) = (self.executor._deliveries | self.executor._calls) - before
        return task

    async def run(self, message: Delivery | CallDelivery) -> None:
        await (await self.start(message))

    def reports(self) -> list[object]:
        return [sent.record for sent in self.producer.records(TOPICS.commands)]

    def flow_records(self) -> list[Sent]:
        return self.producer.records(TOPICS.schedule)

    def request_body(self) -> dict[str, Any]:
        ((_, body),) = self.http.requests
        assert body is not None
        parsed: dict[str, Any] = json.loads(body)
        return parsed


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Callable[[Answer | Exception], Awaitable[Harness]]]:
    made: list[Executor] = []

    async def harness(answer: Answer | Exception) -> Harness:
        clock = ManualClock(T0)
        codec = RecordCodec()
        settings = ExecutorSettings(
            kafka=KafkaSettings(),
            signing_keys=(),
            budget_ms=BUDGET_MS,
            allowed_url_hosts=AllowedHosts.parse(["app.local"]),
        )
        executor = Executor(settings, codec=cast(Codec, codec), clock=clock)
        # Never started: close them so they do not warn, and put the fakes in their place.
        await executor._consumer.stop()
        await executor._publisher.producer.stop()
        producer = FakeProducer(codec, clock)
        http = FakeHttp(clock, answer)
        executor._publisher.producer = cast(Producer, producer)
        executor._session = executor._call_session = cast(aiohttp.ClientSession, http)
        progress = executor._progress.setdefault(TP, PartitionProgress())
        made.append(executor)
        return Harness(executor, codec, producer, http, progress)

    yield harness
    for executor in made:
        tasks = [*executor._deliveries, *executor._calls]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


Make = Callable[[Answer | Exception], Awaitable[Harness]]


def without_flow_key(message: Delivery | CallDelivery) -> Delivery | CallDelivery:
    if isinstance(message, Delivery):
        return Delivery(**{**_fields(message), "flow_key": None})
    return CallDelivery(**{**_fields(message), "flow_key": None})


def _fields(message: Delivery | CallDelivery) -> dict[str, Any]:
    return {name: getattr(message, name) for name in message.__dataclass_fields__}


def outcome_kind(outcome: Outcome) -> str:
    if isinstance(outcome, Fail):
        return outcome.error.type
    return type(outcome).__name__


# ---------------------------------------------------------------------------------------------
# The step budget


@pytest.mark.asyncio
async def test_a_delivery_under_a_flow_key_asks_the_sdk_for_one_step(make: Make) -> None:
    harness = await make(Answer(200, COMPLETE))

    await harness.run(DELIVERY)

    assert harness.request_body()["budget_ms"] == 0


@pytest.mark.asyncio
async def test_a_delivery_without_a_flow_key_gets_the_configured_budget(make: Make) -> None:
    harness = await make(Answer(200, COMPLETE))

    await harness.run(without_flow_key(DELIVERY))

    assert harness.request_body()["budget_ms"] == BUDGET_MS


# ---------------------------------------------------------------------------------------------
# Reported, then settled: whatever the outcome

DELIVERY_OUTCOMES = [
    pytest.param(Answer(200, COMPLETE), "Complete", id="success"),
    pytest.param(Answer(500, b'{"message": "boom"}'), "HTTP500", id="failure"),
    pytest.param(TimeoutError(), "Timeout", id="timeout"),
    pytest.param(aiohttp.ClientConnectionError("Connection refused"), "ConnectionError", id="unreachable"),
]


@pytest.mark.parametrize(("answer", "outcome"), DELIVERY_OUTCOMES)
@pytest.mark.asyncio
async def test_a_delivery_under_a_flow_key_is_settled_after_its_report(
    make: Make, answer: Answer | Exception, outcome: str
) -> None:
    harness = await make(answer)

    await harness.run(DELIVERY)

    ((sent_at_ms, _),) = harness.http.requests
    (report,) = harness.reports()
    assert isinstance(report, ReportDelivery)
    assert outcome_kind(report.outcome) == outcome
    assert harness.flow_records() == [
        Sent(
            TOPICS.schedule,
            KEY,
            FlowSettled(
                request_id=DELIVERY.request_id,
                flow_key=KEY,
                started_ms=sent_at_ms,  # taken just before the request went out
                settled_ms=T0 + HTTP_MS + WRITE_MS,  # once the report is written, not when it was made
            ),
        ),
    ]
    assert sent_at_ms == T0
    settled_at = harness.producer.sent.index(harness.flow_records()[0])
    assert settled_at > harness.producer.sent.index(harness.producer.records(TOPICS.commands)[0])
    assert harness.progress.committable() == OFFSET + 1


CALL_OUTCOMES = [
    pytest.param(Answer(200, b'{"lat": 52.52}'), 200, id="success"),
    pytest.param(Answer(503, b"busy"), 503, id="failure"),
    pytest.param(TimeoutError(), 0, id="timeout"),
    pytest.param(aiohttp.ClientConnectionError("Connection refused"), 0, id="unreachable"),
]


@pytest.mark.parametrize(("answer", "status"), CALL_OUTCOMES)
@pytest.mark.asyncio
async def test_a_call_under_a_flow_key_is_settled_after_its_report(
    make: Make, answer: Answer | Exception, status: int
) -> None:
    harness = await make(answer)

    await harness.run(CALL)

    ((sent_at_ms, _),) = harness.http.requests
    (report,) = harness.reports()
    assert isinstance(report, ReportCall)
    assert report.status == status
    assert harness.flow_records() == [
        Sent(
            TOPICS.schedule,
            KEY,
            FlowSettled(
                request_id=CALL.request_id, flow_key=KEY, started_ms=sent_at_ms, settled_ms=T0 + HTTP_MS + WRITE_MS
            ),
        ),
    ]
    assert sent_at_ms == T0
    settled_at = harness.producer.sent.index(harness.flow_records()[0])
    assert settled_at > harness.producer.sent.index(harness.producer.records(TOPICS.commands)[0])


@pytest.mark.parametrize("message", [DELIVERY, CALL], ids=["delivery", "call"])
@pytest.mark.asyncio
async def test_work_without_a_flow_key_is_reported_and_nothing_goes_to_schedule(
    make: Make, message: Delivery | CallDelivery
) -> None:
    harness = await make(Answer(200, COMPLETE))

    await harness.run(without_flow_key(message))

    assert len(harness.reports()) == 1
    assert harness.flow_records() == []


# ---------------------------------------------------------------------------------------------
# A delivery's offset waits for its settlement; a call's does not


def settled(harness: Harness) -> list[Sent]:
    return [sent for sent in harness.flow_records() if isinstance(sent.record, FlowSettled)]


async def _turns(count: int = 20) -> None:
    """Let every task that can run, run (the fakes do no real I/O, so nothing else is awaited)."""
    for _ in range(count):
        await asyncio.sleep(0)


@pytest.mark.asyncio
async def test_a_delivery_holds_back_its_offset_until_its_settlement_is_written(make: Make) -> None:
    harness = await make(Answer(200, COMPLETE))
    harness.producer.settlements_acknowledged.clear()

    work = await harness.start(DELIVERY)

    await assert_eventually(lambda: settled(harness), timeout=2, interval=0.001)  # reported, settlement sent
    await _turns()
    assert not work.done()
    assert harness.progress.committable() == OFFSET  # the delivery is not done until it is settled
    harness.producer.settlements_acknowledged.set()
    await work
    assert len(settled(harness)) == 1
    assert harness.progress.committable() == OFFSET + 1


@pytest.mark.asyncio
async def test_a_call_waiting_to_settle_does_not_hold_back_its_offset(make: Make) -> None:
    harness = await make(Answer(200, b"{}"))
    harness.producer.settlements_acknowledged.clear()

    work = await harness.start(CALL)

    await assert_eventually(lambda: settled(harness), timeout=2, interval=0.001)
    await _turns()
    assert not work.done()
    assert harness.progress.committable() == OFFSET + 1
    harness.producer.settlements_acknowledged.set()
    await work
    assert len(settled(harness)) == 1
