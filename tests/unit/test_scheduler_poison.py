"""The scheduler takes each ``schedule`` record in, or sets it aside with the reason, and goes on:
given → when → then on ``_step`` with a fake producer (tests/integration/test_poison.py: the real one)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
from aiokafka import ConsumerRecord, TopicPartition

from stepstream.avro import Codec, DeadLetter
from stepstream.clock import ManualClock
from stepstream.config import KafkaSettings, SchedulerSettings
from stepstream.core import Delivery, DeliveryRequested, FireTimer, FlowControl, TimerRequested
from stepstream.kafka.clients import Producer
from stepstream.kafka.topics import TopicNames
from stepstream.scheduler import service as scheduler_service
from stepstream.scheduler.service import Scheduler

T0 = 1_700_000_000_000
LIMIT = 70_000
CODEC = Codec()
TOPICS = TopicNames(KafkaSettings().topic_prefix)
TP = TopicPartition(TOPICS.schedule, 0)


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def send(self, topic: str, *, value: bytes | None, key: bytes, partition: int | None = None) -> None:
        self.sent.append((topic, None if value is None else CODEC.decode(value)))

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None: ...

    async def stop(self) -> None: ...

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        yield


@pytest_asyncio.fixture
async def scheduler() -> AsyncIterator[Scheduler]:
    made = Scheduler(
        SchedulerSettings(kafka=KafkaSettings(partitions=1, max_record_bytes=LIMIT)), codec=CODEC, clock=ManualClock(T0)
    )
    await made._consumer.stop()  # never started; closed so they do not warn
    await made._producer.stop()
    made._producer = cast(Producer, FakeProducer())
    made.owned = {0}
    yield made


def record(value: bytes | None, offset: int) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=TP.topic, partition=0, offset=offset, timestamp=T0, timestamp_type=0, key=b"k", value=value,
        checksum=None, serialized_key_size=0, serialized_value_size=0, headers=[],
    )  # fmt: skip


def delivery(payload: str = "{}") -> Delivery:
    return Delivery(
        run_id="run-1", workflow="w", url="http://app/w", delivery_id="run-1/1", attempt=1, step_index=0,
        payload=payload, steps=(), headers=(),
    )  # fmt: skip


@pytest.mark.asyncio
async def test_bad_records_are_dead_lettered_with_the_reason_and_the_good_one_beside_them_is_taken(
    scheduler: Scheduler,
) -> None:
    huge = DeliveryRequested(request_id="run-1/1#1", not_before_ms=T0, delivery=delivery('"' + "p" * LIMIT + '"'))
    zero_rate = DeliveryRequested(
        request_id="run-1/1#1", not_before_ms=T0, delivery=delivery(), flow=FlowControl(key="k", rate=0)
    )
    due = TimerRequested(request_id="run-1/sleep/0", run_id="run-1", step_index=0, due_ms=T0)

    await scheduler._step(
        {
            TP: [
                record(None, 1),
                record(CODEC.encode(huge), 2),
                record(CODEC.encode(zero_rate), 3),
                record(CODEC.encode(due), 4),
            ]
        }
    )

    sent = scheduler._producer.sent
    letters = {letter.offset: letter.reason for topic, letter in sent if isinstance(letter, DeadLetter)}
    assert letters[1] == "Expected a record value, but the record has none (a null value, or tombstone)"
    assert letters[2].startswith(f"Expected records of at most {LIMIT:,} bytes (STEPSTREAM_MAX_RECORD_BYTES), but")
    assert letters[3] == "Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got 0"
    assert (TOPICS.commands, FireTimer(run_id="run-1", step_index=0, now_ms=T0)) in sent  # the good one fired
    assert scheduler.progress.problem() is None


@pytest.mark.asyncio
async def test_a_failure_no_check_foresaw_sets_only_that_record_aside(
    scheduler: Scheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(request: object) -> int:
        raise ArithmeticError("a bug")

    monkeypatch.setattr(scheduler_service, "due_ms", broken)
    timer = TimerRequested(request_id="run-1/sleep/0", run_id="run-1", step_index=0, due_ms=T0)

    await scheduler._step({TP: [record(CODEC.encode(timer), 9)]})

    ((topic, letter),) = scheduler._producer.sent
    assert topic == TOPICS.deadletter
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "the scheduler failed on this record: ArithmeticError('a bug')"
