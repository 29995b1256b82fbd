"""The scheduler: owns time (and, with a later issue, flow control).

It consumes ``schedule`` and holds each request until it is due; then it emits the delivery to
``deliveries``, or a ``FireTimer`` command to ``commands``. Its pending work is mirrored in the
compacted ``timers`` topic, in the same partition number as the ``schedule`` record it came from, so
whoever owns a schedule partition restores exactly that partition's pending work. Input offsets,
outputs and changelog entries are committed in one transaction.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import cast

from aiokafka import ConsumerRecord, TopicPartition

from stepstream.avro import Codec, DecodeError
from stepstream.clock import Clock, SystemClock
from stepstream.config import SchedulerSettings
from stepstream.core import (
    CallRequested,
    DeliveryRequested,
    FireTimer,
    ScheduleCancelled,
    TimerRequested,
)
from stepstream.kafka.clients import (
    PartitionListener,
    encode_dead_letter,
    make_consumer,
    make_producer,
    read_partitions_to_end,
)
from stepstream.kafka.topics import TopicNames
from stepstream.scheduler.pending import Held, HeldRecord, PendingWork, due_ms

log = logging.getLogger(__name__)

SERVICE = "scheduler"
SCHEDULE_TYPES = (DeliveryRequested, CallRequested, TimerRequested, ScheduleCancelled)
_IDLE_WAIT_MS = 500


class Scheduler:
    def __init__(self, settings: SchedulerSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.kafka = settings.kafka
        self.topics = TopicNames(self.kafka.topic_prefix)
        self.codec = codec or Codec()
        self.clock = clock or SystemClock()
        self.group_id = f"{self.kafka.topic_prefix}scheduler"
        self.pending = PendingWork()
        self.owned: set[int] = set()
        self.ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._consumer = make_consumer(self.kafka, group_id=self.group_id, fetch_max_wait_ms=5)
        self._producer = make_producer(
            self.kafka, transactional_id=f"{self.kafka.topic_prefix}scheduler-{self.kafka.instance_id}"
        )

    async def run(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        try:
            self._consumer.subscribe(
                [self.topics.schedule], listener=PartitionListener(assigned=self.assigned, revoked=self.revoked)
            )
            while True:
                next_due = self.pending.next_due_ms()
                wait = _IDLE_WAIT_MS if next_due is None else max(0, min(_IDLE_WAIT_MS, next_due - self.clock.now_ms()))
                batch = await self._consumer.getmany(timeout_ms=wait, max_records=1_000)
                async with self._lock:
                    await self._step(batch)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        new = {tp.partition for tp in partitions if tp.topic == self.topics.schedule} - self.owned
        before = len(self.pending)
        for record in await read_partitions_to_end(self.kafka, self.topics.timers, new):
            request_id = record.key.decode()
            if record.value is None:
                self.pending.remove(request_id)
                continue
            try:
                held = self.codec.decode(record.value, expected=(DeliveryRequested, CallRequested, TimerRequested))
            except DecodeError as error:
                log.error("cannot restore pending request %s: %s", request_id, error)
                continue
            self.pending.add(record.partition, held)
        self.owned |= new
        restored = len(self.pending) - before
        log.info("scheduler owns schedule partitions %s (restored %d pending)", sorted(self.owned), restored)
        self.ready.set()

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        async with self._lock:
            gone = {tp.partition for tp in partitions if tp.topic == self.topics.schedule}
            self.owned -= gone
            self.pending.drop_partitions(gone)

    async def _step(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now = self.clock.now_ms()
        outputs: list[tuple[str, bytes, bytes | None, int | None]] = []
        added: list[Held] = []
        cancelled: list[Held] = []
        for tp, records in batch.items():
            for record in records:
                try:
                    # decode checks the type against ``expected``; the cast only tells mypy.
                    request = cast(
                        HeldRecord | ScheduleCancelled, self.codec.decode(record.value, expected=SCHEDULE_TYPES)
                    )
                except DecodeError as error:
                    outputs.append(
                        (
                            self.topics.deadletter,
                            record.key or b"",
                            encode_dead_letter(self.codec, record, str(error), SERVICE, now),
                            None,
                        )
                    )
                    continue
                if isinstance(request, ScheduleCancelled):
                    for request_id in request.request_ids:
                        gone = self.pending.remove(request_id)
                        if gone is not None:
                            cancelled.append(gone)
                            outputs.append((self.topics.timers, request_id.encode(), None, gone.partition))
                    continue
                if due_ms(request) <= now:
                    outputs.append(self._emit(request, now))
                else:
                    # Held at once, so a cancellation later in the same batch finds it.
                    held = Held(tp.partition, request)
                    added.append(held)
                    self.pending.add(held.partition, held.record)
                    outputs.append((self.topics.timers, request.request_id.encode(), record.value, tp.partition))
        fired = self.pending.pop_due(now)
        for held in fired:
            outputs.append(self._emit(held.record, now))
            outputs.append((self.topics.timers, held.record.request_id.encode(), None, held.partition))
        if not outputs and not batch:
            return
        try:
            async with self._producer.transaction():
                for topic, key, value, partition in outputs:
                    await self._producer.send(topic, value=value, key=key, partition=partition)
                if batch:
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await self._producer.send_offsets_to_transaction(offsets, self.group_id)
        except Exception:
            log.exception("scheduler transaction failed; re-reading the batch")
            for held in added:
                self.pending.remove(held.record.request_id)
            for held in (*fired, *cancelled):
                if all(held.record.request_id != new.record.request_id for new in added):
                    self.pending.add(held.partition, held.record)
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)

    def _emit(self, request: HeldRecord, now: int) -> tuple[str, bytes, bytes | None, int | None]:
        if isinstance(request, DeliveryRequested):
            delivery = request.delivery
            return (
                self.topics.deliveries,
                (request.flow_key or delivery.run_id).encode(),
                self.codec.encode(delivery),
                None,
            )
        if isinstance(request, CallRequested):
            call = request.call
            return self.topics.deliveries, (request.flow_key or call.run_id).encode(), self.codec.encode(call), None
        command = FireTimer(run_id=request.run_id, step_index=request.step_index, now_ms=now)
        return self.topics.commands, request.run_id.encode(), self.codec.encode(command), None
