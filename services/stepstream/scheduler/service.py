"""The scheduler: owns time and flow control.

It consumes ``schedule`` and holds each request until it is due; then it emits the delivery to
``deliveries``, or a ``FireTimer`` command to ``commands``. A delivery or call under a flow-control
key waits, once due, in its key's queue until the key's rate and parallelism allow it
(:mod:`stepstream.core.flow`); the executor's ``FlowSettled`` record, on the same partition, tells
the scheduler when it is done, and it counts in the key's rate window until a period after that.

``schedule`` is keyed by flow key (else run id), so each key has one owner at a time, and the
limits hold across any number of scheduler replicas. The pending work — requests not yet due,
queued requests, and each key's slots (let through and not settled, or settled and still in the
rate window) — is mirrored in the compacted ``timers`` topic, in the same partition number as the
``schedule`` records it came from, so whoever owns a schedule partition next restores exactly that
partition's work, in flight included. Input offsets, outputs and changelog entries are committed in
one transaction. Each key's state goes to the compacted ``flow`` topic for the api to show.

The changelog is mirrored in a file (scheduler/changelog.py), written after each committed transaction,
so that a restart on the same disk reads from Kafka only what it missed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import NamedTuple, cast

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.structs import RecordMetadata

from stepstream import metrics
from stepstream.avro import Codec, DecodeError, codec_for
from stepstream.clock import Clock, SystemClock
from stepstream.config import SchedulerSettings
from stepstream.core import (
    CallRequested,
    DeliveryRequested,
    FireTimer,
    FlowLedger,
    FlowSettled,
    FlowSlot,
    Queued,
    ScheduleCancelled,
    TimerRequested,
    flow_control_problem,
)
from stepstream.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    PartitionListener,
    make_consumer,
    make_producer,
    until_done,
)
from stepstream.kafka.deadletter import DeadLetters
from stepstream.kafka.lag import watch_lag
from stepstream.kafka.progress import Progress, readiness
from stepstream.kafka.topics import TopicNames
from stepstream.scheduler import metrics as scheduler_metrics
from stepstream.scheduler.changelog import Entry, TimersFile
from stepstream.scheduler.pending import HeldRecord, due_ms
from stepstream.scheduler.queues import SpilledQueues
from stepstream.scheduler.tiered import TieredPendingWork
from stepstream.store.changelog import Written, catch_up, state_file

log = logging.getLogger(__name__)

SERVICE = "scheduler"
SCHEDULE_TYPES = (DeliveryRequested, CallRequested, TimerRequested, ScheduleCancelled, FlowSettled)
CHANGELOG_TYPES = (DeliveryRequested, CallRequested, TimerRequested, FlowSlot)
_IDLE_WAIT_MS = 500


class Output(NamedTuple):
    """A record a batch writes."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int | None = None  # None: by key
    due_ms: int | None = None  # a changelog entry's due time, kept beside it in the changelog's file


class Scheduler:
    def __init__(self, settings: SchedulerSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.kafka = settings.kafka
        self.settings = settings
        self.topics = TopicNames(self.kafka.topic_prefix)
        self.codec = codec or codec_for(settings.kafka)
        self.clock = clock or SystemClock()
        self.group_id = f"{self.kafka.topic_prefix}scheduler"
        self.pending = TieredPendingWork(self.codec)  # what is due within a minute in memory, the rest on disk
        # The timers topic as this instance last knew it, for a restart to read only what it missed.
        self.timers = TimersFile(state_file(settings.state_dir, self.kafka, "scheduler"), topic=self.topics.timers)
        # Each flow-control key's first requests in memory, its backlog on disk (scheduler/queues.py).
        self.queues = SpilledQueues(head=settings.flow_queue_head)
        self.flow = FlowLedger(self.queues.queue)
        self.owned: set[int] = set()
        self.ready = asyncio.Event()
        self.progress = Progress(self.clock, stall_ms=self.kafka.stall_ms)
        self.dead_letters = DeadLetters(self.codec, SERVICE, self.kafka.max_record_bytes)
        # A rebalance waits for the batch in hand, and a batch waits for a restore in progress: aiokafka
        # fetches for new partitions while the assignment callback still reads the changelog.
        self._lock = asyncio.Lock()
        self._generation = 0  # counts rebalances: a batch fetched under an earlier one is dropped
        self._states_due_ms = 0  # when the changed keys' state may be published next
        self._consumer = make_consumer(self.kafka, group_id=self.group_id, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        self._producer = make_producer(
            self.kafka, transactional_id=f"{self.kafka.topic_prefix}scheduler-{self.kafka.instance_id}"
        )

    def readiness(self) -> str | None:
        return readiness(self.ready, self.progress)

    async def run(self) -> None:
        await self._producer.start()
        await self._consumer.start()
        unwatch = [
            watch_lag(SERVICE, self._consumer),
            *scheduler_metrics.watch(self.pending, self.flow, self.settings.metrics_flow_keys),
        ]
        try:
            self._consumer.subscribe(
                [self.topics.schedule], listener=PartitionListener(assigned=self.assigned, revoked=self.revoked)
            )
            while True:
                batch = await self._consumer.getmany(timeout_ms=self._wait_ms(), max_records=1_000)
                generation = self._generation
                async with self._lock:
                    if generation != self._generation:
                        continue  # a rebalance came between: the partitions start again at their committed offsets
                    self.progress.waiting(batch)
                    await self._step(batch)
        finally:
            for stop in unwatch:
                stop()
            await self._consumer.stop()
            await self._producer.stop()
            self.timers.released(self.owned, self.clock.now_ms())
            self.timers.close()
            self.pending.close()
            self.queues.close()

    def _wait_ms(self) -> int:
        now = self.clock.now_ms()
        wakes = [self.pending.next_due_ms(), self.flow.next_wake_ms()]
        if self.flow.touched:
            wakes.append(self._states_due_ms)
        due = [when for when in wakes if when is not None]
        return _IDLE_WAIT_MS if not due else max(0, min(_IDLE_WAIT_MS, min(due) - now))

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            new = {tp.partition for tp in partitions if tp.topic == self.topics.schedule} - self.owned
            restored, unreadable = await until_done(lambda: self._restore(new), "restore the scheduler's partitions")
            self.owned |= new
            if unreadable:
                await self.dead_letters.write_apart(
                    self._producer, self.topics.deadletter, unreadable, self.clock.now_ms()
                )
        log.info("scheduler owns schedule partitions %s (restored %d requests and slots)", sorted(self.owned), restored)
        self.ready.set()

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            self.progress.forget(partitions)
            gone = {tp.partition for tp in partitions if tp.topic == self.topics.schedule}
            self.owned -= gone
            self.timers.released(gone, self.clock.now_ms())
            self.pending.drop_partitions(gone)
            self.flow.drop_partitions(gone)

    async def _restore(self, partitions: set[int]) -> tuple[int, list[tuple[ConsumerRecord, str]]]:
        """Bring the changelog's file up to date for ``partitions`` (from Kafka, what it missed), then
        take their entries back, in the order of their last writes (so a key's queue keeps its order
        of arrival). Returns how many entries, and the records that could not be read (another
        producer's, or a newer version's), with why."""
        unreadable: list[tuple[ConsumerRecord, str]] = []
        await catch_up(self.timers, self.kafka, partitions, self.clock.now_ms, self._restorable, unreadable)
        count, now = 0, self.clock.now_ms()
        far = max(now, self.pending.window_end)  # what is due later goes to disk without being decoded
        with self.pending.bulk(), self.queues.bulk():
            for chunk in self.timers.entries(partitions):
                count += len(chunk)
                self.pending.add_encoded(
                    (partition, key.decode(), due, value)
                    for partition, key, _, value, due in chunk
                    if due is not None and due > far
                )
                for entry in chunk:
                    if entry[4] is None or entry[4] <= far:  # its due time
                        self._restore_entry(entry, now, unreadable)
        return count, unreadable

    def _restore_entry(self, entry: Entry, now: int, unreadable: list[tuple[ConsumerRecord, str]]) -> None:
        """Take back one entry of the changelog's file: a key's slot, a request into its key's queue or held."""
        partition, key, offset, value, _ = entry
        try:
            decoded = self.codec.decode(value, expected=CHANGELOG_TYPES)
        except DecodeError as error:  # read when it entered the file: only a file a newer version wrote
            record = _changelog_record(self.topics.timers, partition, offset, key, value)
            unreadable.append((record, f"cannot restore a pending request from this record: {error}"))
            return
        if isinstance(decoded, FlowSlot):
            self.flow.restore(partition, decoded)
            return
        held = cast(HeldRecord, decoded)
        if isinstance(held, DeliveryRequested | CallRequested) and held.flow is not None and due_ms(held) <= now:
            # Due, it waits in its key's queue (its backlog on disk): straight there, in order, not
            # through memory first (a key's backlog of 100,000 peaked at 185 MiB that way).
            self.flow.queue(self._queued(partition, held))
        else:
            self.pending.add(partition, held, value)  # as it came: no encoding again

    def _restorable(self, record: ConsumerRecord) -> str | int | None:
        """Why a record of ``timers`` cannot be restored; else the request's due time (None for a
        slot or a tombstone), kept beside it in the file."""
        if record.key is None:  # not the scheduler's: every entry it writes is keyed by request id
            return "Expected a key (a request id), but the record has none"
        if record.value is None:
            return None
        try:
            entry = self.codec.decode(record.value, expected=CHANGELOG_TYPES)
        except DecodeError as error:
            return f"cannot restore a pending request from this record: {error}"
        return None if isinstance(entry, FlowSlot) else due_ms(cast(HeldRecord, entry))

    async def _step(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        now = self.clock.now_ms()
        outputs: list[Output] = []
        with self.queues.bulk():  # what joins or leaves the keys' queues on disk: one commit
            for tp, records in batch.items():
                for record in records:
                    try:
                        outputs.extend(self._take(tp, record, now))
                    except (DecodeError, ValueError) as error:
                        outputs.append(self._dead_letter(record, str(error), now))
                    except Exception as error:
                        # A value no check foresaw (or a bug): this record is set aside, not the partition.
                        log.exception("scheduler failed on %s[%d]@%d", record.topic, record.partition, record.offset)
                        reason = f"the scheduler failed on this record: {error!r}"
                        outputs.append(self._dead_letter(record, reason, now))
            for held in self.pending.pop_due(now):
                due = held.record
                metrics.TIMER_LATENESS.observe(max(0, now - due_ms(due)) / 1000)
                if isinstance(due, DeliveryRequested | CallRequested) and due.flow is not None:
                    self.flow.queue(self._queued(held.partition, due))  # its changelog entry stays as it is
                    continue
                outputs.append(self._emit(due, now))
                outputs.append(Output(self.topics.timers, due.request_id.encode(), None, held.partition))
            outputs.extend(self._release(now))
        if not outputs and not batch:
            return
        changelog: list[tuple[Output, asyncio.Future[RecordMetadata]]] = []
        began = time.perf_counter()
        try:
            async with self._producer.transaction():
                for output in outputs:
                    sent = await self._producer.send(
                        output.topic, value=output.value, key=output.key, partition=output.partition
                    )
                    if output.topic == self.topics.timers:
                        changelog.append((output, sent))
                if batch:
                    offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}
                    await self._producer.send_offsets_to_transaction(offsets, self.group_id)
        except Exception as error:
            metrics.TRANSACTIONS_FAILED.labels(SERVICE).inc()
            log.exception("scheduler transaction failed; restoring from the changelog and re-reading the batch")
            self.progress.failed(error)
            # Memory ran ahead of what was committed: start again from the changelog, as a new owner would.
            self.pending.drop_partitions(self.owned)
            self.flow.drop_partitions(self.owned)
            self.flow.take_changes()
            # What it cannot read was dead-lettered when first restored.
            await until_done(lambda: self._restore(self.owned), "restore the scheduler's partitions")
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)
            return
        # Committed: the changelog's file takes what went to timers (never before: it holds nothing Kafka does not).
        written = [(output, await sent) for output, sent in changelog]
        self.timers.written(
            (Written(meta.partition, meta.offset, output.key, output.value, output.due_ms) for output, meta in written),
            self.clock.now_ms(),
        )
        self.progress.done(batch)
        metrics.TRANSACTION_DURATION.labels(SERVICE).observe(time.perf_counter() - began)
        for tp, records in batch.items():
            metrics.RECORDS_CONSUMED.labels(SERVICE, tp.topic).inc(len(records))

    def _take(self, tp: TopicPartition, record: ConsumerRecord, now: int) -> list[Output]:
        """Take one ``schedule`` record in: hold it, queue it, or emit it now; returns what to write.

        Raises ``DecodeError`` or ``ValueError`` for a record to dead-letter, before changing anything.
        """
        request = self.codec.decode(record.value, expected=SCHEDULE_TYPES)
        if len(record.value) > self.kafka.max_record_bytes:
            # What is held goes to the changelog as it came, and what is due goes on as a delivery of
            # about its size: either would fail the transaction, batch after batch.
            raise ValueError(
                f"Expected records of at most {self.kafka.max_record_bytes:,} bytes (STEPSTREAM_MAX_RECORD_BYTES), "
                f"but this one has {len(record.value):,}"
            )
        match request:
            case ScheduleCancelled():
                return self._cancel(request)
            case FlowSettled():
                # Counted in the rate window from now: the endpoint saw the request start before
                # this report of its end reached us, whatever the delays and clocks on the way.
                self.flow.settled(request, now)
                return []
        work = cast(HeldRecord, request)
        if isinstance(work, DeliveryRequested | CallRequested) and work.flow is not None:
            problem = flow_control_problem(work.flow)
            if problem is not None:
                raise ValueError(problem)
        changelog = Output(self.topics.timers, work.request_id.encode(), record.value, tp.partition, due_ms(work))
        if due_ms(work) > now:
            # Held at once, so a cancellation later in the same batch finds it.
            self.pending.add(tp.partition, work)
            return [changelog]
        if isinstance(work, DeliveryRequested | CallRequested) and work.flow is not None:
            self.flow.queue(self._queued(tp.partition, work))
            return [changelog]
        if due_ms(work) > 0:  # due already when it came (0: as soon as possible, no due time to be late for)
            metrics.TIMER_LATENESS.observe((now - due_ms(work)) / 1000)
        return [self._emit(work, now)]

    def _dead_letter(self, record: ConsumerRecord, reason: str, now: int) -> Output:
        return Output(self.topics.deadletter, DeadLetters.key(record), self.dead_letters.encode(record, reason, now))

    def _cancel(self, request: ScheduleCancelled) -> list[Output]:
        outputs: list[Output] = []
        for request_id in request.request_ids:
            gone = self.pending.remove(request_id)
            partition = gone.partition if gone is not None else None
            if request.flow_key is not None:
                queued = self.flow.cancel(request.flow_key, request_id)
                partition = queued.partition if queued is not None else partition
            if partition is not None:
                outputs.append(Output(self.topics.timers, request_id.encode(), None, partition))
        return outputs

    def _queued(self, partition: int, request: DeliveryRequested | CallRequested) -> Queued:
        assert request.flow is not None
        if isinstance(request, DeliveryRequested):
            return Queued(
                request_id=request.request_id,
                flow=request.flow,
                partition=partition,
                run_id=request.delivery.run_id,
                value=self.codec.encode(request.delivery),
                apart=request.delivery.steps_apart > 0,
            )
        return Queued(
            request_id=request.request_id,
            flow=request.flow,
            partition=partition,
            run_id=request.call.run_id,
            value=self.codec.encode(request.call),
            call_step_index=request.call.step_index,
            lease_ms=request.lease_ms,
        )

    def _release(self, now: int) -> list[Output]:
        """What flow control lets through now, the deadlines of calls whose lease ended, the
        changelog writes for the keys' slots, and (at most once per interval) the changed keys' state."""
        let_through, expired = self.flow.release(now)
        outputs: list[Output] = [
            Output(self.topics.commands, item.run_id.encode(), item.value)
            if item.apart
            else Output(self.topics.deliveries, item.flow.key.encode(), item.value)
            for item, _ in let_through
        ]
        for slot in expired:
            assert slot.call_step_index is not None
            log.warning("call %s under flow key %r: no report by its lease end", slot.request_id, slot.flow.key)
            # At the lease's end, not now: a lease of an earlier attempt, fired late, then reads as early
            # for a later attempt of the same step (FireTimer names no attempt) and is rejected.
            fired_at = slot.lease_until_ms if slot.lease_until_ms is not None else now
            command = FireTimer(run_id=slot.run_id, step_index=slot.call_step_index, now_ms=fired_at)
            outputs.append(Output(self.topics.commands, slot.run_id.encode(), self.codec.encode(command)))
        for partition, request_id, change in self.flow.take_changes():
            value = None if change is None else self.codec.encode(change)
            outputs.append(Output(self.topics.timers, request_id.encode(), value, partition))
        if self.flow.touched and now >= self._states_due_ms:
            states = self.flow.take_states(now)
            outputs.extend(Output(self.topics.flow, state.key.encode(), self.codec.encode(state)) for state in states)
            self._states_due_ms = now + self.settings.flow_state_interval_ms
        return outputs

    def _emit(self, request: HeldRecord, now: int) -> Output:
        if isinstance(request, DeliveryRequested):
            delivery = request.delivery
            # Held without the run's results (too many for a record): the projector adds them.
            topic = self.topics.commands if delivery.steps_apart else self.topics.deliveries
            return Output(topic, delivery.run_id.encode(), self.codec.encode(delivery))
        if isinstance(request, CallRequested):
            call = request.call
            return Output(self.topics.deliveries, call.run_id.encode(), self.codec.encode(call))
        command = FireTimer(run_id=request.run_id, step_index=request.step_index, now_ms=now)
        return Output(self.topics.commands, request.run_id.encode(), self.codec.encode(command))


def _changelog_record(topic: str, partition: int, offset: int, key: bytes, value: bytes) -> ConsumerRecord:
    """An entry of the changelog's file as the consumer gave it, for its dead letter."""
    return ConsumerRecord(
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp=0,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key),
        serialized_value_size=len(value),
        headers=(),
    )
