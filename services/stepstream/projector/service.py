"""The projector: the single writer of every run.

It consumes ``triggers`` and ``commands``, folds each run's state (restored from ``runs`` when a
partition is assigned), decides with the pure core, and writes the resulting events, the new
snapshot and the schedule records — and commits its input offsets — in one Kafka transaction per
batch of input records.

What one record does is worked out by :mod:`stepstream.projector.applier`, and what a newly assigned
partition holds read back by :mod:`stepstream.projector.restore`; this module is the loop around
them: consume, apply the batch, commit it in the transaction.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from aiokafka import ConsumerRecord, TopicPartition

from stepstream import metrics
from stepstream.avro import Codec, codec_for
from stepstream.clock import Clock, SystemClock
from stepstream.config import ProjectorSettings
from stepstream.core.retention import ended_at
from stepstream.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    PartitionListener,
    make_consumer,
    make_producer,
    partition_for,
    until_done,
)
from stepstream.kafka.deadletter import DeadLetters
from stepstream.kafka.lag import watch_lag
from stepstream.kafka.progress import Progress, readiness
from stepstream.kafka.topics import TopicNames
from stepstream.projector.applier import Applier
from stepstream.projector.metrics import observe
from stepstream.projector.outbox import Outbox
from stepstream.projector.restore import restore
from stepstream.projector.retention import Retention
from stepstream.projector.snapshots import parse_step_key
from stepstream.projector.store import RunStore, WaiterStore
from stepstream.store.changelog import Written, state_file

log = logging.getLogger(__name__)

SERVICE = "projector"


class Projector:
    def __init__(self, settings: ProjectorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.codec = codec or codec_for(settings.kafka)
        self.clock = clock or SystemClock()
        self.group_id = f"{self.kafka.topic_prefix}projector"
        self.states = RunStore(
            state_file(settings.state_dir, self.kafka, "projector"),
            self.codec,
            topic=self.topics.runs,
            cache_runs=settings.cache_runs,
        )
        # The waiter index of each event id this instance owns: on disk, the ones in use in memory.
        self.waiters = WaiterStore(
            state_file(settings.state_dir, self.kafka, "projector-waiters"),
            self.codec,
            topic=self.topics.waiters,
            cache=settings.cache_runs,
        )
        self.ready = asyncio.Event()
        self.progress = Progress(self.clock, stall_ms=self.kafka.stall_ms)
        self.dead_letters = DeadLetters(self.codec, SERVICE, self.kafka.max_record_bytes)
        # Each input record is applied to its run or waiter index there (projector/applier.py), which
        # also holds the commands partitions this instance owns, by which it routes each record.
        self.applier = Applier(
            settings,
            codec=self.codec,
            clock=self.clock,
            topics=self.topics,
            states=self.states,
            waiters=self.waiters,
            dead_letters=self.dead_letters,
        )
        # A rebalance waits for the batch in hand, and a batch waits for a restore in progress: aiokafka
        # fetches for new partitions while the assignment callback still reads their snapshots.
        self._lock = asyncio.Lock()
        self._generation = 0  # counts rebalances: a batch fetched under an earlier one is dropped
        self._consumer = make_consumer(
            self.kafka,
            group_id=self.group_id,
            max_poll_records=settings.max_batch,
            fetch_max_wait_ms=IDLE_FETCH_WAIT_MS,
        )
        self._producer = make_producer(
            self.kafka, transactional_id=f"{self.kafka.topic_prefix}projector-{self.kafka.instance_id}"
        )
        # Ended runs past the retention window are compacted between batches (projector/retention.py).
        self.retention = Retention(self.states, self._producer, self.codec, self.clock, settings, self.topics.runs)

    def readiness(self) -> str | None:
        return readiness(self.ready, self.progress)

    async def run(self) -> None:
        await self._producer.start()
        await self._consumer.start()

        def count_waiters() -> None:
            metrics.WAITERS.set(sum(self.waiters.on_disk(partition) for partition in self.applier.owned))

        # At most once a minute: a count reads the waiters' file, on the service's loop.
        unwatch = [watch_lag(SERVICE, self._consumer), metrics.on_scrape(count_waiters, every_s=60)]
        try:
            partitions = self._consumer.partitions_for_topic(self.topics.commands)
            if partitions:
                self.applier.commands_partitions = len(partitions)
            self._consumer.subscribe(
                [self.topics.triggers, self.topics.commands],
                listener=PartitionListener(assigned=self.assigned, revoked=self.revoked),
            )
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.max_batch)
                generation = self._generation
                async with self._lock:
                    if generation != self._generation:
                        continue  # a rebalance came between: the partitions start again at their committed offsets
                    if batch:
                        self.progress.waiting(batch)
                        await self._process(batch)
                    await self.retention.compact_when_due(self.applier.owned)
        finally:
            for stop in unwatch:
                stop()
            await self._consumer.stop()
            await self._producer.stop()
            for mirror in (self.states, self.waiters):
                mirror.released(self.applier.owned, self.clock.now_ms())
                mirror.close()

    # -- partition ownership -----------------------------------------------------------------

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            new = {tp.partition for tp in partitions if tp.topic == self.topics.commands} - self.applier.owned
            restored = await until_done(
                lambda: restore(
                    new,
                    self.states,
                    self.waiters,
                    kafka=self.kafka,
                    codec=self.codec,
                    clock=self.clock,
                    dead_letters=self.dead_letters,
                    producer=self._producer,
                    deadletter=self.topics.deadletter,
                ),
                "restore the projector's partitions",
            )
            self.applier.owned |= new
        log.info(
            "projector owns commands partitions %s (restored %d runs, %d event ids with waiters)",
            sorted(self.applier.owned),
            restored,
            sum(self.waiters.on_disk(partition) for partition in new),
        )
        self.ready.set()

    def _ended_at(self, key: bytes, value: bytes | None) -> int | None:
        """For a run's own record this batch wrote, when the run ended if it may be compacted later."""
        if value is None or parse_step_key(key.decode(errors="replace")) is not None:
            return None
        state = self.states.get(key.decode())
        return None if state is None else ended_at(state)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            self.progress.forget(partitions)
            gone = {tp.partition for tp in partitions if tp.topic == self.topics.commands}
            self.applier.owned -= gone
            for mirror in (self.states, self.waiters):  # run ids and event ids, both keyed to commands partitions
                mirror.released(gone, self.clock.now_ms())
                for key in mirror.keys_in_memory():
                    if partition_for(key, self.applier.commands_partitions) in gone:
                        mirror.drop(key)  # its file keeps it, for when the partition comes back

    # -- the batch ------------------------------------------------------------------------------

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        outbox = Outbox()
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for record in records:
                self.applier.apply(record, outbox)
            offsets[tp] = records[-1].offset + 1
        for run_id, snapshot in outbox.snapshots.items():
            outbox.add(self.topics.runs, run_id, snapshot, partition_for(run_id, self.applier.commands_partitions))
        for event_id, waiters in outbox.waiter_snapshots.items():
            outbox.add(
                self.topics.waiters, event_id, waiters, partition_for(event_id, self.applier.commands_partitions)
            )
        began = time.perf_counter()
        try:
            async with self._producer.transaction():
                sends = [
                    await self._producer.send(
                        topic, value=value, key=key, partition=partition, headers=list(headers) or None
                    )
                    for topic, key, value, partition, headers in outbox.records
                ]
                await self._producer.send_offsets_to_transaction(offsets, self.group_id)
            written = await asyncio.gather(*sends)
        except Exception as error:
            metrics.TRANSACTIONS_FAILED.labels(SERVICE).inc()
            # Nothing of the batch is visible: put memory back and read the batch again. What each
            # command writes was checked against the record limit before, so what fails here is the
            # broker's (unreachable, a transaction fenced or timed out) and worth trying again.
            log.exception("projector transaction failed; re-reading the batch")
            self.progress.failed(error)
            for run_id, previous in outbox.previous.items():
                if previous is None:
                    self.states.pop(run_id)
                else:
                    self.states[run_id] = previous
            for event_id, previous_waiters in outbox.previous_waiters.items():
                if previous_waiters is None:
                    self.waiters.pop(event_id)
                else:
                    self.waiters[event_id] = previous_waiters
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)
            return
        # Committed: the store's file takes what went to runs, and then runs may leave memory.
        self.states.written(
            (
                Written(metadata.partition, metadata.offset, out.key, out.value, self._ended_at(out.key, out.value))
                for out, metadata in zip(outbox.records, written, strict=True)
                if out.topic == self.topics.runs
            ),
            self.clock.now_ms(),
        )
        self.waiters.written(
            (
                Written(metadata.partition, metadata.offset, out.key, out.value)
                for out, metadata in zip(outbox.records, written, strict=True)
                if out.topic == self.topics.waiters
            ),
            self.clock.now_ms(),
        )
        self.states.trim()
        self.waiters.trim()
        self.progress.done(batch)
        metrics.TRANSACTION_DURATION.labels(SERVICE).observe(time.perf_counter() - began)
        for tp, records in batch.items():
            metrics.RECORDS_CONSUMED.labels(SERVICE, tp.topic).inc(len(records))
        observe(outbox.applied)
