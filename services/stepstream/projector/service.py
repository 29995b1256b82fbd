"""The projector: the single writer of every run.

It consumes ``triggers`` and ``commands``, folds each run's state (restored from ``runs`` when a
partition is assigned), decides with the pure core, and writes the resulting events, the new
snapshot and the schedule records — and commits its input offsets — in one Kafka transaction per
batch of input records.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import replace
from typing import cast

from aiokafka import ConsumerRecord, TopicPartition

from stepstream import metrics, tracing
from stepstream.avro import (
    RUN_COMMAND_TYPES,
    TOPIC_TYPES,
    WAITER_COMMAND_TYPES,
    Codec,
    DecodeError,
    codec_for,
)
from stepstream.clock import Clock, SystemClock
from stepstream.config import ProjectorSettings
from stepstream.core import (
    ChildFinished,
    Command,
    Defaults,
    Delivery,
    DeliveryCancelled,
    DeliveryRequested,
    ErrorInfo,
    Event,
    FlowSettled,
    NotifyEvent,
    ReceiveEvent,
    RecordedStep,
    RegisterWaiter,
    Rejected,
    ReportCall,
    ReportDelivery,
    RunState,
    ScheduleRecord,
    TriggerRun,
    UnregisterWaiter,
    WaiterCommand,
    WaiterState,
    child_reattached,
    command_key,
    decide,
    decide_waiters,
    deliverable_now,
    effects,
    evolve,
    fail_run,
    schedule_key,
    trigger_problem,
)
from stepstream.core.apart import filled
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
from stepstream.logs import log_context
from stepstream.projector.deliveries import delivery_records, schedule_value
from stepstream.projector.inputs import PUBLIC_TYPES, PublicRequest, public_command
from stepstream.projector.metrics import observe
from stepstream.projector.outbox import Change, Outbox, Output
from stepstream.projector.retention import Retention
from stepstream.projector.snapshots import parse_step_key, parts, step_key
from stepstream.projector.store import RunStore, WaiterStore
from stepstream.store.changelog import Written, catch_up, state_file

log = logging.getLogger(__name__)

SERVICE = "projector"


class Projector:
    def __init__(self, settings: ProjectorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.codec = codec or codec_for(settings.kafka)
        self.clock = clock or SystemClock()
        self.defaults = Defaults(
            retries=settings.default_retries,
            retry_base_ms=settings.default_retry_base_ms,
            max_invoke_depth=settings.max_invoke_depth,
            call_grace_ms=settings.call_grace_ms,
        )
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
        self.owned: set[int] = set()  # the commands partitions this instance writes runs for
        self.commands_partitions = settings.kafka.partitions
        self.ready = asyncio.Event()
        self.progress = Progress(self.clock, stall_ms=self.kafka.stall_ms)
        self.dead_letters = DeadLetters(self.codec, SERVICE, self.kafka.max_record_bytes)
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
            metrics.WAITERS.set(sum(self.waiters.on_disk(partition) for partition in self.owned))

        # At most once a minute: a count reads the waiters' file, on the service's loop.
        unwatch = [watch_lag(SERVICE, self._consumer), metrics.on_scrape(count_waiters, every_s=60)]
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
                generation = self._generation
                async with self._lock:
                    if generation != self._generation:
                        continue  # a rebalance came between: the partitions start again at their committed offsets
                    if batch:
                        self.progress.waiting(batch)
                        await self._process(batch)
                    await self.retention.compact_when_due(self.owned)
        finally:
            for stop in unwatch:
                stop()
            await self._consumer.stop()
            await self._producer.stop()
            for mirror in (self.states, self.waiters):
                mirror.released(self.owned, self.clock.now_ms())
                mirror.close()

    # -- partition ownership -----------------------------------------------------------------

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            new = {tp.partition for tp in partitions if tp.topic == self.topics.commands} - self.owned
            restored = await until_done(lambda: self._restore(new), "restore the projector's partitions")
            self.owned |= new
        log.info(
            "projector owns commands partitions %s (restored %d runs, %d event ids with waiters)",
            sorted(self.owned),
            restored,
            sum(self.waiters.on_disk(partition) for partition in new),
        )
        self.ready.set()

    async def _restore(self, new: set[int]) -> int:
        """Read back the run snapshots and waiter indexes of the ``new`` partitions; returns how many runs.

        These compacted topics are the projector's own. A record in them it cannot read (another
        producer's, or a newer version's during an upgrade) is skipped, and a copy dead-lettered,
        rather than stop the restore; the record itself stays, for a version that can read it.
        """
        unreadable: list[tuple[ConsumerRecord, str]] = []
        now = self.clock.now_ms
        await catch_up(self.states, self.kafka, new, now, self._restored_run_record, unreadable)
        await catch_up(self.waiters, self.kafka, new, now, self._restored_waiters, unreadable)
        restored = sum(self.states.runs_on_disk(partition) for partition in new)
        if unreadable:
            await self.dead_letters.write_apart(self._producer, self.topics.deadletter, unreadable, self.clock.now_ms())
        return restored

    def _restored_waiters(self, record: ConsumerRecord) -> str | None:
        """Why a record of ``waiters`` cannot be restored, or None: an event id's index or its tombstone."""
        try:
            _restored(record, self.codec)
        except DecodeError as error:
            return str(error)
        return None

    def _restored_run_record(self, record: ConsumerRecord) -> str | int | None:
        """Why a record of ``runs`` cannot be restored (its key or value); else, for a run's state, when
        the run ended if it may be compacted (None for anything else: one of its results, a tombstone)."""
        if record.key is None:
            return "Expected a key (a run id, or a run id and a step index), but the record has none"
        if record.value is None:
            return None
        step = parse_step_key(bytes(record.key).decode(errors="replace"))
        try:
            decoded = self.codec.decode(record.value, (RunState,) if step is None else (RecordedStep,))
        except DecodeError as error:
            return str(error)
        return ended_at(decoded) if isinstance(decoded, RunState) else None

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
            self.owned -= gone
            for mirror in (self.states, self.waiters):  # run ids and event ids, both keyed to commands partitions
                mirror.released(gone, self.clock.now_ms())
                for key in mirror.keys_in_memory():
                    if partition_for(key, self.commands_partitions) in gone:
                        mirror.drop(key)  # its file keeps it, for when the partition comes back

    # -- the batch ------------------------------------------------------------------------------

    async def _process(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        outbox = Outbox()
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for record in records:
                self._apply(record, outbox)
            offsets[tp] = records[-1].offset + 1
        for run_id, snapshot in outbox.snapshots.items():
            outbox.add(self.topics.runs, run_id, snapshot, partition_for(run_id, self.commands_partitions))
        for event_id, waiters in outbox.waiter_snapshots.items():
            outbox.add(self.topics.waiters, event_id, waiters, partition_for(event_id, self.commands_partitions))
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

    def _apply(self, record: ConsumerRecord, outbox: Outbox) -> None:
        """Apply one input record, or dead-letter it with the reason; never raise, so no record can stop
        the partitions of this projector."""
        now = self.clock.now_ms()
        try:
            command = self._command(record, now)
        except (DecodeError, ValueError) as error:
            self._dead_letter(record, str(error), outbox, now)
            return
        try:
            with log_context(run_id=getattr(command, "run_id", None)):
                key = command_key(command) if isinstance(command, WAITER_COMMAND_TYPES) else command.run_id
                partition = partition_for(key, self.commands_partitions)
                if partition not in self.owned:
                    # Another instance owns this run or event id (a producer partitioned the record
                    # differently, or the topics differ in partition count): hand the command to its owner.
                    self._forward(command, key, partition, record, outbox, now)
                elif isinstance(command, Delivery):
                    self._let_through(command, record, outbox, now)
                elif isinstance(command, RegisterWaiter | UnregisterWaiter | NotifyEvent):
                    self._apply_to_waiters(command, record, outbox, now)
                else:
                    state = self.states.get(command.run_id)
                    workflow = state.workflow if state is not None else getattr(command, "workflow", "")
                    # A span per command of a traced run, under the span that sent it (tracing.py).
                    name = f"{type(command).__name__} {workflow}"
                    with log_context(workflow=workflow), tracing.span(name, command.run_id, headers=record.headers):
                        self._apply_to_run(command, record, outbox, now)
        except Exception as error:
            # A value no check foresaw (or a bug): this record is set aside, its run and every other
            # run of the partition go on. Nothing of it reached memory or the outbox (see Change).
            log.exception("projector failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            self._dead_letter(record, f"the projector failed on this record: {error!r}", outbox, now)

    def _command(self, record: ConsumerRecord, now: int) -> Command | WaiterCommand | Delivery:
        """The core command an input record asks for (or a delivery the scheduler let through without its
        results); ``DecodeError`` or ``ValueError`` saying why not."""
        if record.topic == self.topics.triggers:
            # decode checks the type against ``expected``: the casts only tell mypy what it checked.
            request = cast(PublicRequest, self.codec.decode(record.value, expected=PUBLIC_TYPES))
            return public_command(request, now)
        decoded = self.codec.decode(record.value, expected=TOPIC_TYPES["commands"])
        if isinstance(decoded, Delivery):
            return decoded
        command = replace(cast(Command | WaiterCommand, decoded), now_ms=now)
        if isinstance(command, TriggerRun) and (problem := trigger_problem(command)) is not None:
            raise ValueError(problem)
        return command

    def _dead_letter(self, record: ConsumerRecord, reason: str, outbox: Outbox, now: int) -> None:
        outbox.records.append(
            Output(self.topics.deadletter, DeadLetters.key(record), self.dead_letters.encode(record, reason, now))
        )

    def _forward(
        self,
        command: Command | WaiterCommand | Delivery,
        key: str,
        partition: int,
        record: ConsumerRecord,
        outbox: Outbox,
        now: int,
    ) -> None:
        change = Change()
        change.add(self.topics.commands, key, self.codec.encode(command), partition)
        self._commit_or_dead_letter(change, record, outbox, now)

    def _commit_or_dead_letter(self, change: Change, record: ConsumerRecord, outbox: Outbox, now: int) -> bool:
        problem = change.too_large(self.kafka.max_record_bytes, self.topics.runs)
        if problem is not None:
            self._dead_letter(record, problem, outbox, now)
            return False
        outbox.records.extend(change.records)
        return True

    def _apply_to_waiters(self, command: WaiterCommand, record: ConsumerRecord, outbox: Outbox, now: int) -> None:
        event_id = command.event_id
        state = self.waiters.get(event_id)
        new_state, change = self._waiter_change(state, command, self.settings.notify_buffer_ms)
        if change.too_large(self.kafka.max_record_bytes, self.topics.waiters) is not None and isinstance(
            command, NotifyEvent
        ):
            # The index would not fit with this notification kept for late waiters: deliver it to the
            # runs waiting now, and keep none of it.
            log.warning("notification of %r too large to keep for runs that wait later; delivered only now", event_id)
            new_state, change = self._waiter_change(state, command, 0)
        problem = change.too_large(self.kafka.max_record_bytes, self.topics.waiters)
        if problem is not None:
            self._dead_letter(record, problem, outbox, now)
            return
        outbox.previous_waiters.setdefault(event_id, state)
        if new_state is None:
            self.waiters.pop(event_id)
        else:
            self.waiters[event_id] = new_state
        if new_state != state:
            outbox.waiter_snapshots[event_id] = change.snapshot
        outbox.records.extend(change.records)

    def _waiter_change(
        self, state: WaiterState | None, command: WaiterCommand, buffer_ms: int
    ) -> tuple[WaiterState | None, Change]:
        new_state, outputs = decide_waiters(state, command, buffer_ms=buffer_ms)
        change = Change(snapshot=None if new_state is None else self.codec.encode(new_state))
        for output in outputs:
            self._send_command(output, change)
        return new_state, change

    def _apply_to_run(self, command: Command, record: ConsumerRecord, outbox: Outbox, now: int) -> None:
        run_id = command.run_id
        state = self.states.get(run_id)
        result = decide(state, command, self.defaults)
        if isinstance(result, Rejected):
            reattached = child_reattached(state, command) if state and isinstance(command, TriggerRun) else None
            if reattached is not None:
                change = Change()
                self._send_command(reattached, change)
                self._commit_or_dead_letter(change, record, outbox, now)
            elif result.duplicate:
                log.info("ignored: %s", result.reason)
            else:
                self._dead_letter(record, result.reason, outbox, now)
            return
        new_state, change = self._run_change(state, result, now)
        problem = change.too_large(self.kafka.max_record_bytes, self.topics.runs)
        if problem is not None and state is not None:
            # The run cannot record what this command asks: it fails with the reason instead (its
            # failure handler is called, and it can be resumed from the dead-letter list), rather
            # than wait for ever on a result that was set aside.
            log.warning("run %s fails: %s", run_id, problem)
            failed = fail_run(
                state, ErrorInfo(type="RecordTooLarge", message=f"cannot record {_what(command)}: {problem}"), now
            )
            if not isinstance(failed, Rejected):
                # The failure handler's delivery carries the run's results, which may be what does not
                # fit: then it goes without them (the handler replays nothing; the history has them).
                for lean in (False, True):
                    new_state, change = self._run_change(state, failed, now, lean=lean)
                    if change.too_large(self.kafka.max_record_bytes, self.topics.runs) is None:
                        problem = None
                        break
        if problem is not None:
            # A trigger too large to start, or a run too large even to fail: set the command aside.
            self._dead_letter(record, problem, outbox, now)
            return
        outbox.previous.setdefault(run_id, state)
        outbox.applied.append((state, change.events, new_state))
        self.states[run_id] = new_state
        assert change.snapshot is not None
        outbox.snapshots[run_id] = change.snapshot
        outbox.records.extend(change.records)

    def _run_change(
        self, before: RunState | None, events: list[Event], now: int, *, lean: bool = False
    ) -> tuple[RunState, Change]:
        """The run's state after ``events``, and every record they write: the events, the commands and
        schedule records their effects ask for, and the new snapshot. ``lean``: a failure handler's
        delivery goes without the run's results."""
        change = Change(events=events)
        state = before
        run_id = events[0].run_id
        for event in events:
            state = evolve(state, event)
            change.add(self.topics.events, run_id, self.codec.encode(event))
        assert state is not None
        for effect in effects(before, events):
            if isinstance(effect, RUN_COMMAND_TYPES + WAITER_COMMAND_TYPES):
                self._send_command(effect, change)
                continue
            if isinstance(effect, DeliveryCancelled):
                change.add(self.topics.deliveries, run_id, self.codec.encode(effect))
                continue
            scheduled = without_results(effect) if lean else effect
            work = deliverable_now(scheduled, now)
            if isinstance(work, Delivery):
                self._add_delivery(change, work)
            elif work is not None:
                change.add(self.topics.deliveries, run_id, self.codec.encode(work))
            else:
                key = schedule_key(scheduled)
                limit = self.kafka.max_record_bytes
                change.add(self.topics.schedule, key, schedule_value(scheduled, key, self.codec, limit))
        # The snapshot as deltas: the state without results, and each result once (snapshots.py).
        delta = parts(before, state)
        partition = partition_for(run_id, self.commands_partitions)
        for step in delta.recorded:
            change.add(self.topics.runs, step_key(run_id, step.index), self.codec.encode(step), partition)
        for index in delta.removed:
            change.add(self.topics.runs, step_key(run_id, index), None, partition)
        change.snapshot = self.codec.encode(delta.header)
        return state, change

    def _add_delivery(self, change: Change, delivery: Delivery) -> None:
        """``delivery`` on ``deliveries``, its results in parts first if they do not fit on it."""
        key = delivery.flow_key or delivery.run_id
        for value in delivery_records(delivery, key, self.codec, self.kafka.max_record_bytes):
            change.add(self.topics.deliveries, key, value)

    def _let_through(self, delivery: Delivery, record: ConsumerRecord, outbox: Outbox, now: int) -> None:
        """A delivery the scheduler held without the run's results (too many for a record) and has let
        through: send it with them, or not at all if the run no longer awaits it."""
        change = Change()
        full = filled(delivery, self.states.get(delivery.run_id))
        if full is not None:
            self._add_delivery(change, full)
        else:
            log.info("delivery %s no longer awaited: not sent", delivery.request_id)
            if delivery.flow_key is not None:
                # Let through under its key, it holds one of the key's places: free it, as the executor
                # does when it is done with a delivery.
                settled = FlowSettled(
                    request_id=delivery.request_id, flow_key=delivery.flow_key, started_ms=now, settled_ms=now
                )
                change.add(self.topics.schedule, delivery.flow_key, self.codec.encode(settled))
        self._commit_or_dead_letter(change, record, outbox, now)

    def _send_command(self, command: Command | WaiterCommand, change: Change) -> None:
        key = command_key(command) if isinstance(command, WAITER_COMMAND_TYPES) else command.run_id
        change.add(self.topics.commands, key, self.codec.encode(command), partition_for(key, self.commands_partitions))


def _restored(record: ConsumerRecord, codec: Codec) -> tuple[str, WaiterState | None]:
    """The event id and waiter index a ``waiters`` record holds (None: a tombstone); ``DecodeError`` if neither."""
    if record.key is None:
        raise DecodeError("Expected a key (an event id), but the record has none")
    key = bytes(record.key).decode(errors="replace")
    return key, None if record.value is None else codec.decode(record.value, (WaiterState,))


def without_results(record: ScheduleRecord) -> ScheduleRecord:
    """``record`` with a failure handler's delivery stripped of the run's results."""
    if isinstance(record, DeliveryRequested) and record.delivery.failure is not None:
        return replace(record, delivery=replace(record.delivery, steps=()))
    return record


def _what(command: Command) -> str:
    """The command's result, in words, for the reason a run fails with."""
    match command:
        case ReportDelivery():
            return f"the answer to delivery {command.delivery_id} (attempt {command.attempt})"
        case ReportCall():
            return f"the answer to the call of step {command.step_index}"
        case ReceiveEvent():
            return f"the notification of event {command.event_id!r} for step {command.step_index}"
        case ChildFinished():
            return f"the result of child run {command.child_run_id}"
        case _:
            return f"the {type(command).__name__} command"
