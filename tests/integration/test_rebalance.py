"""A new owner of a partition restores its state before it handles the partition's records.

aiokafka sets a new assignment, and starts fetching for it, before the assignment callback (which
reads the changelog back) has finished. A record handled in that gap meets no state: a settle for
a slot not restored yet was lost and its key waited for ever (seen in CI, a scheduler killed); a
command for a run not restored yet must not be decided against no run. These tests run the
scheduler and the projector in-process against the real broker, with the restore slowed down so
that records are waiting the whole time it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

import stepstream.projector.service as projector_service
import stepstream.scheduler.service as scheduler_service
from stepstream.avro import Codec
from stepstream.config import KafkaSettings, ProjectorSettings, SchedulerSettings
from stepstream.core import Delivery, DeliveryRequested, FlowControl, FlowSettled
from stepstream.core.commands import CancelRun, TriggerRun
from stepstream.core.events import RunCancelled, RunStarted
from stepstream.kafka.clients import read_partitions_to_end, stream_partitions
from stepstream.kafka.topics import TopicNames
from stepstream.store import changelog

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

RESTORE_DELAY_S = 2.0
WAIT_S = 30.0


@pytest.fixture
def slow_restore(monkeypatch: pytest.MonkeyPatch) -> None:
    """The services read their changelogs back, then wait before using what they read."""

    async def slow_stream(settings: KafkaSettings, topic: str, starts: Mapping[int, int | None]) -> AsyncIterator[Any]:
        async for records in stream_partitions(settings, topic, starts):
            yield records
        await asyncio.sleep(RESTORE_DELAY_S)

    monkeypatch.setattr(changelog, "stream_partitions", slow_stream)  # both services restore through it


@contextlib.asynccontextmanager
async def running(service: Any) -> AsyncIterator[None]:
    """Run ``service`` until the block ends; then stop it as a shutdown would (leaving its group)."""
    task = asyncio.create_task(service.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def produce(kafka: KafkaSettings, topic: str, key: str, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value=value, key=key.encode())
    finally:
        await producer.stop()


async def read_all(kafka: KafkaSettings, topic: str) -> list[Any]:
    """Every committed record of ``topic``, decoded."""
    codec = Codec()
    return [codec.decode(record.value) for record in await read_partitions_to_end(kafka, topic, [0]) if record.value]


async def read_until(kafka: KafkaSettings, topic: str, done: Callable[[list[Any]], bool]) -> list[Any]:
    """Every committed record of ``topic``, decoded, once ``done`` holds for them (or after WAIT_S)."""
    deadline = time.monotonic() + WAIT_S
    values = await read_all(kafka, topic)
    while not done(values) and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        values = await read_all(kafka, topic)
    return values


def keyed_request(run_id: str, key: str) -> DeliveryRequested:
    delivery = Delivery(
        run_id=run_id,
        workflow="w",
        url="http://127.0.0.1:9/workflows/w",
        delivery_id=f"{run_id}/1",
        attempt=1,
        step_index=0,
        payload="{}",
        steps=(),
        headers=(),
    )
    return DeliveryRequested(
        request_id=delivery.request_id, not_before_ms=0, delivery=delivery, flow=FlowControl(key=key, parallelism=1)
    )


@pytest.mark.asyncio
async def test_a_settle_that_arrives_while_the_new_scheduler_restores_frees_the_slot(
    kafka: KafkaSettings, slow_restore: None
) -> None:
    topics, codec, key = TopicNames(kafka.topic_prefix), Codec(), "one-at-a-time"
    first, second = keyed_request("run-a", key), keyed_request("run-b", key)
    settings = SchedulerSettings(kafka=kafka)

    # The first owner lets the first request through (parallelism 1) and holds the second.
    async with running(scheduler_service.Scheduler(settings)):
        for request in (first, second):
            await produce(kafka, topics.schedule, key, codec.encode(request))
        let_through = await read_until(kafka, topics.deliveries, lambda values: len(values) >= 1)
    assert [d.delivery_id for d in let_through] == ["run-a/1"]

    # The executor settles the first while no scheduler runs; the next owner takes a while to restore.
    now = int(time.time() * 1000)
    settle = FlowSettled(request_id=first.request_id, flow_key=key, started_ms=now, settled_ms=now)
    await produce(kafka, topics.schedule, key, codec.encode(settle))
    async with running(scheduler_service.Scheduler(settings)):
        delivered = await read_until(kafka, topics.deliveries, lambda values: len(values) >= 2)
        await asyncio.sleep(1.0)  # nothing more comes
        delivered = await read_all(kafka, topics.deliveries)

    # The settle freed the slot the restore brought back, so the second went out, once; the first not again.
    assert [d.delivery_id for d in delivered] == ["run-a/1", "run-b/1"]


@pytest.mark.asyncio
async def test_a_command_that_arrives_while_the_new_projector_restores_reaches_its_run(
    kafka: KafkaSettings, slow_restore: None
) -> None:
    topics, codec, run_id = TopicNames(kafka.topic_prefix), Codec(), "run-cancel-me"
    settings = ProjectorSettings(kafka=kafka, database="")
    now = int(time.time() * 1000)
    trigger = TriggerRun(
        run_id=run_id,
        workflow="w",
        url="http://127.0.0.1:9/workflows/w",
        payload="{}",
        now_ms=now,
        not_before_ms=now + 3_600_000,  # waits an hour, so nothing else happens to the run meanwhile
    )

    async with running(projector_service.Projector(settings)):
        await produce(kafka, topics.commands, run_id, codec.encode(trigger))
        started = await read_until(kafka, topics.events, lambda values: any(isinstance(v, RunStarted) for v in values))
    assert any(isinstance(value, RunStarted) for value in started)

    # Cancelled while no projector runs; the next owner takes a while to restore the run.
    await produce(kafka, topics.commands, run_id, codec.encode(CancelRun(run_id=run_id, reason="test", now_ms=now)))
    async with running(projector_service.Projector(settings)):
        events = await read_until(kafka, topics.events, lambda values: any(isinstance(v, RunCancelled) for v in values))

    assert [type(value).__name__ for value in events if isinstance(value, RunCancelled)] == ["RunCancelled"]
