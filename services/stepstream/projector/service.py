"""The projector: the single writer of every run.

It consumes ``triggers`` and ``commands``, folds each run's state (restored from ``runs`` when a
partition is assigned), decides with the pure core, and writes the resulting events, the new
snapshot and the schedule records — and commits its input offsets — in one Kafka transaction per
batch of input records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from aiokafka import ConsumerRecord, TopicPartition
from ulid import ULID

from stepstream.avro import Codec, DecodeError, TriggerRequest
from stepstream.clock import Clock, SystemClock
from stepstream.config import ProjectorSettings
from stepstream.core import (
    Defaults,
    FireTimer,
    Rejected,
    ReportDelivery,
    RunState,
    TriggerRun,
    decide,
    deliverable_now,
    effects,
    evolve,
)
from stepstream.core.effects import DeliveryRequested
from stepstream.kafka.clients import (
    PartitionListener,
    encode_dead_letter,
    make_consumer,
    make_producer,
    partition_for,
    read_partitions_to_end,
)
from stepstream.kafka.topics import TopicNames

log = logging.getLogger(__name__)

SERVICE = "projector"


def new_run_id() -> str:
    return f"run_{ULID()}"


def trigger_command(request: TriggerRequest, now_ms: int) -> TriggerRun:
    """A trigger from the public topic as a core command; the engine names runs the caller did not."""
    return TriggerRun(
        run_id=request.run_id or new_run_id(),
        workflow=request.workflow,
        url=request.url,
        payload=request.payload,
        now_ms=now_ms,
        headers=request.headers,
        label=request.label,
        retries=request.retries,
        retry_base_ms=request.retry_base_ms,
        not_before_ms=request.not_before_ms,
    )


@dataclass(slots=True)
class _Outbox:
    """What one batch writes, in order, and how to undo its effect on memory if the transaction fails."""

    records: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)
    snapshots: dict[str, RunState] = field(default_factory=dict)
    previous: dict[str, RunState | None] = field(default_factory=dict)

    def add(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.records.append((topic, key.encode(), value, partition))


class Projector:
    def __init__(self, settings: ProjectorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.codec = codec or Codec()
        self.clock = clock or SystemClock()
        self.defaults = Defaults(retries=settings.default_retries, retry_base_ms=settings.default_retry_base_ms)
        self.group_id = f"{self.kafka.topic_prefix}projector"
        self.states: dict[str, RunState] = {}
        self.owned: set[int] = set()  # the commands partitions this instance writes runs for
        self.commands_partitions = settings.kafka.partitions
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()  # a rebalance waits for the batch in hand
        self._consumer = make_consumer(
            self.kafka, group_id=self.group_id, max_poll_records=settings.max_batch, fetch_max_wait_ms=5
        )
        self._producer = make_producer(
            self.kafka, transactional_id=f"{self.kafka.topic_prefix}projector-{self.kafka.instance_id}"
        )

    async def run(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        try:
            partitions = self._consumer.partitions_for_topic(self.topics.commands)
            if partitions:
                self.commands_partitions = len(partitions)
            self._consumer.subscribe(
                [self.topics.triggers, self.topics.commands],
                listener=PartitionListener(assigned=self.assigned, revoked=self.revoked),
            )
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.max_batch)
                if batch:
                    async with self._lock:
                        await self._process(batch)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    # -- partition ownership -----------------------------------------------------------------

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions if tp.topic == self.topics.commands} - self.owned
        records = await read_partitions_to_end(self.kafka, self.topics.runs, new)
        restored: set[str] = set()
        for record in records:  # oldest first: the last snapshot of a run wins
            run_id = record.key.decode()
            if record.value is None:
                self.states.pop(run_id, None)
                restored.discard(run_id)
                continue
            try:
                state = self.codec.decode(record.value, expected=(RunState,))
            except DecodeError as error:
                log.error("cannot restore run %s from %s: %s", run_id, self.topics.runs, error)
                continue
            self.states[run_id] = state
            restored.add(run_id)
        self.owned |= new
        log.info("projector owns commands partitions %s (restored %d runs)", sorted(self.owned), len(restored))
        self.ready.set()

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        async with self._lock:
            gone = {tp.partition for tp in partitions if tp.topic == self.topics.commands}
            self.owned -= gone
            for run_id in [r for r in self.states if partition_for(r, self.commands_partitions) in gone]:
                del self.states[run_id]

    # -- the batch ------------------------------------------------------------------------------

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        outbox = _Outbox()
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for record in records:
                self._apply(record, outbox)
            offsets[tp] = records[-1].offset + 1
        for run_id, state in outbox.snapshots.items():
            outbox.add(
                self.topics.runs, run_id, self.codec.encode(state), partition_for(run_id, self.commands_partitions)
            )
        try:
            async with self._producer.transaction():
                sends = [
                    await self._producer.send(topic, value=value, key=key, partition=partition)
                    for topic, key, value, partition in outbox.records
                ]
                await self._producer.send_offsets_to_transaction(offsets, self.group_id)
            await asyncio.gather(*sends)
        except Exception:
            # Nothing of the batch is visible: put memory back and read the batch again.
            log.exception("projector transaction failed; re-reading the batch")
            for run_id, previous in outbox.previous.items():
                if previous is None:
                    self.states.pop(run_id, None)
                else:
                    self.states[run_id] = previous
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)

    def _apply(self, record: ConsumerRecord, outbox: _Outbox) -> None:
        now = self.clock.now_ms()
        try:
            if record.topic == self.topics.triggers:
                request = self.codec.decode(record.value, expected=(TriggerRequest,))
                command: TriggerRun | ReportDelivery | FireTimer = trigger_command(request, now)
            else:
                decoded = self.codec.decode(record.value, expected=(TriggerRun, ReportDelivery, FireTimer))
                command = replace(decoded, now_ms=now)
        except DecodeError as error:
            outbox.add(
                self.topics.deadletter, _key(record), encode_dead_letter(self.codec, record, str(error), SERVICE, now)
            )
            return
        run_id = command.run_id
        partition = partition_for(run_id, self.commands_partitions)
        if partition not in self.owned:
            # Another instance owns this run (a producer partitioned the trigger differently, or the
            # topics differ in partition count): hand the command to the run's own partition.
            outbox.add(self.topics.commands, run_id, self.codec.encode(command), partition)
            return
        state = self.states.get(run_id)
        result = decide(state, command, self.defaults)
        if isinstance(result, Rejected):
            if result.duplicate:
                log.info("ignored: %s", result.reason)
            else:
                outbox.add(
                    self.topics.deadletter,
                    _key(record),
                    encode_dead_letter(self.codec, record, result.reason, SERVICE, now),
                )
            return
        if run_id not in outbox.previous:
            outbox.previous[run_id] = state
        for event in result:
            state = evolve(state, event)
            outbox.add(self.topics.events, run_id, self.codec.encode(event))
        assert state is not None
        self.states[run_id] = state
        outbox.snapshots[run_id] = state
        for schedule_record in effects(state, result):
            delivery = deliverable_now(schedule_record, now)
            if delivery is not None:
                outbox.add(self.topics.deliveries, run_id, self.codec.encode(delivery))
            else:
                key = schedule_record.flow_key if isinstance(schedule_record, DeliveryRequested) else None
                outbox.add(self.topics.schedule, key or run_id, self.codec.encode(schedule_record))


def _key(record: ConsumerRecord) -> str:
    return record.key.decode(errors="replace") if record.key else ""
