"""The projector: the single writer of every run.

It consumes ``triggers`` and ``commands``, folds each run's state (restored from ``runs`` when a
partition is assigned), decides with the pure core, and writes the resulting events, the new
snapshot and the schedule records — and commits its input offsets — in one Kafka transaction per
batch of input records.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import cast

from aiokafka import ConsumerRecord, TopicPartition
from ulid import ULID

from stepstream.avro import (
    RUN_COMMAND_TYPES,
    WAITER_COMMAND_TYPES,
    CancelRequest,
    Codec,
    DecodeError,
    NotifyRequest,
    RecoverRequest,
    TriggerRequest,
)
from stepstream.clock import Clock, SystemClock
from stepstream.config import ProjectorSettings
from stepstream.core import (
    CancelRun,
    Command,
    Defaults,
    NotifyEvent,
    RecoverRun,
    RegisterWaiter,
    Rejected,
    RunState,
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
    flow_control_problem,
    schedule_key,
)
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
        retry_delay=request.retry_delay,
        failure_url=request.failure_url,
        flow=request.flow,
    )


def _check_json(field_name: str, text: str) -> None:
    try:
        json.loads(text)
    except ValueError as error:
        raise ValueError(f"Expected {field_name} to be JSON text, but it is not ({error}): {text[:100]!r}") from None


PublicRequest = TriggerRequest | NotifyRequest | CancelRequest | RecoverRequest
PUBLIC_TYPES = (TriggerRequest, NotifyRequest, CancelRequest, RecoverRequest)


def public_command(request: PublicRequest, now_ms: int) -> Command | WaiterCommand:
    """A record from the public ``triggers`` topic as the core command it asks for.

    Raises ``ValueError`` saying why for a record the engine cannot carry out (user data that is not
    JSON text), so it is dead-lettered before it can break a delivery.
    """
    if isinstance(request, TriggerRequest):
        _check_json("payload", request.payload)
        if request.flow is not None and (problem := flow_control_problem(request.flow)) is not None:
            raise ValueError(problem)
    elif isinstance(request, NotifyRequest):
        _check_json("data", request.data)
    match request:
        case TriggerRequest():
            return trigger_command(request, now_ms)
        case NotifyRequest():
            return NotifyEvent(event_id=request.event_id, data=request.data, now_ms=now_ms)
        case CancelRequest():
            return CancelRun(run_id=request.run_id, reason=request.reason, now_ms=now_ms)
        case RecoverRequest():
            return RecoverRun(run_id=request.run_id, action=request.action, now_ms=now_ms)


@dataclass(slots=True)
class _Outbox:
    """What one batch writes, in order, and how to undo its effect on memory if the transaction fails."""

    records: list[tuple[str, bytes, bytes | None, int | None]] = field(default_factory=list)
    snapshots: dict[str, RunState] = field(default_factory=dict)
    previous: dict[str, RunState | None] = field(default_factory=dict)
    waiter_snapshots: dict[str, WaiterState | None] = field(default_factory=dict)
    previous_waiters: dict[str, WaiterState | None] = field(default_factory=dict)

    def add(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.records.append((topic, key.encode(), value, partition))


class Projector:
    def __init__(self, settings: ProjectorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(settings.kafka.topic_prefix)
        self.codec = codec or Codec()
        self.clock = clock or SystemClock()
        self.defaults = Defaults(
            retries=settings.default_retries,
            retry_base_ms=settings.default_retry_base_ms,
            max_invoke_depth=settings.max_invoke_depth,
            call_grace_ms=settings.call_grace_ms,
        )
        self.group_id = f"{self.kafka.topic_prefix}projector"
        self.states: dict[str, RunState] = {}
        self.waiters: dict[str, WaiterState] = {}  # the waiter index of each event id this instance owns
        self.owned: set[int] = set()  # the commands partitions this instance writes runs for
        self.commands_partitions = settings.kafka.partitions
        self.ready = asyncio.Event()
        # A rebalance waits for the batch in hand, and a batch waits for a restore in progress: aiokafka
        # fetches for new partitions while the assignment callback still reads their snapshots.
        self._lock = asyncio.Lock()
        self._generation = 0  # counts rebalances: a batch fetched under an earlier one is dropped
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
                generation = self._generation
                if batch:
                    async with self._lock:
                        if generation != self._generation:
                            continue  # a rebalance came between: the partitions start again at their committed offsets
                        await self._process(batch)
        finally:
            await self._consumer.stop()
            await self._producer.stop()

    # -- partition ownership -----------------------------------------------------------------

    async def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            new = {tp.partition for tp in partitions if tp.topic == self.topics.commands} - self.owned
            restored = await self._restore(new)
            self.owned |= new
        log.info(
            "projector owns commands partitions %s (restored %d runs, %d event ids with waiters)",
            sorted(self.owned),
            restored,
            len(self.waiters),
        )
        self.ready.set()

    async def _restore(self, new: set[int]) -> int:
        """Read back the run snapshots and waiter indexes of the ``new`` partitions; returns how many runs."""
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
        waiter_records = await read_partitions_to_end(self.kafka, self.topics.waiters, new)
        for record in waiter_records:
            event_id = record.key.decode()
            if record.value is None:
                self.waiters.pop(event_id, None)
                continue
            try:
                self.waiters[event_id] = self.codec.decode(record.value, expected=(WaiterState,))
            except DecodeError as error:
                log.error("cannot restore the waiters of %r from %s: %s", event_id, self.topics.waiters, error)
        return len(restored)

    async def revoked(self, partitions: Iterable[TopicPartition]) -> None:
        self._generation += 1
        async with self._lock:
            gone = {tp.partition for tp in partitions if tp.topic == self.topics.commands}
            self.owned -= gone
            for run_id in [r for r in self.states if partition_for(r, self.commands_partitions) in gone]:
                del self.states[run_id]
            for event_id in [e for e in self.waiters if partition_for(e, self.commands_partitions) in gone]:
                del self.waiters[event_id]

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
        for event_id, waiters in outbox.waiter_snapshots.items():
            value = None if waiters is None else self.codec.encode(waiters)
            outbox.add(self.topics.waiters, event_id, value, partition_for(event_id, self.commands_partitions))
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
            for event_id, previous_waiters in outbox.previous_waiters.items():
                if previous_waiters is None:
                    self.waiters.pop(event_id, None)
                else:
                    self.waiters[event_id] = previous_waiters
            for tp, records in batch.items():
                self._consumer.seek(tp, records[0].offset)
            await asyncio.sleep(0.5)

    def _apply(self, record: ConsumerRecord, outbox: _Outbox) -> None:
        now = self.clock.now_ms()
        try:
            if record.topic == self.topics.triggers:
                # decode checks the type against ``expected``: the casts only tell mypy what it checked.
                request = cast(PublicRequest, self.codec.decode(record.value, expected=PUBLIC_TYPES))
                command = public_command(request, now)
            else:
                decoded = self.codec.decode(record.value, expected=RUN_COMMAND_TYPES + WAITER_COMMAND_TYPES)
                command = replace(cast(Command | WaiterCommand, decoded), now_ms=now)
        except (DecodeError, ValueError) as error:
            outbox.add(
                self.topics.deadletter, _key(record), encode_dead_letter(self.codec, record, str(error), SERVICE, now)
            )
            return
        key = command_key(command) if isinstance(command, WAITER_COMMAND_TYPES) else command.run_id
        partition = partition_for(key, self.commands_partitions)
        if partition not in self.owned:
            # Another instance owns this run or event id (a producer partitioned the record
            # differently, or the topics differ in partition count): hand the command to its owner.
            outbox.add(self.topics.commands, key, self.codec.encode(command), partition)
            return
        if isinstance(command, RegisterWaiter | UnregisterWaiter | NotifyEvent):
            self._apply_to_waiters(command, outbox)
        else:
            self._apply_to_run(command, record, outbox, now)

    def _apply_to_waiters(self, command: WaiterCommand, outbox: _Outbox) -> None:
        event_id = command.event_id
        state = self.waiters.get(event_id)
        if event_id not in outbox.previous_waiters:
            outbox.previous_waiters[event_id] = state
        new_state, outputs = decide_waiters(state, command, buffer_ms=self.settings.notify_buffer_ms)
        if new_state is None:
            self.waiters.pop(event_id, None)
        else:
            self.waiters[event_id] = new_state
        if new_state != state:
            outbox.waiter_snapshots[event_id] = new_state
        for output in outputs:
            self._send_command(output, outbox)

    def _apply_to_run(self, command: Command, record: ConsumerRecord, outbox: _Outbox, now: int) -> None:
        run_id = command.run_id
        state = self.states.get(run_id)
        result = decide(state, command, self.defaults)
        if isinstance(result, Rejected):
            reattached = child_reattached(state, command) if state and isinstance(command, TriggerRun) else None
            if reattached is not None:
                self._send_command(reattached, outbox)
            elif result.duplicate:
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
        before = state
        for event in result:
            state = evolve(state, event)
            outbox.add(self.topics.events, run_id, self.codec.encode(event))
        assert state is not None
        self.states[run_id] = state
        outbox.snapshots[run_id] = state
        for effect in effects(before, result):
            if isinstance(effect, RUN_COMMAND_TYPES + WAITER_COMMAND_TYPES):
                self._send_command(effect, outbox)
                continue
            work = deliverable_now(effect, now)
            if work is not None:
                outbox.add(self.topics.deliveries, run_id, self.codec.encode(work))
            else:
                outbox.add(self.topics.schedule, schedule_key(effect), self.codec.encode(effect))

    def _send_command(self, command: Command | WaiterCommand, outbox: _Outbox) -> None:
        key = command_key(command) if isinstance(command, WAITER_COMMAND_TYPES) else command.run_id
        outbox.add(self.topics.commands, key, self.codec.encode(command), partition_for(key, self.commands_partitions))


def _key(record: ConsumerRecord) -> str:
    return record.key.decode(errors="replace") if record.key else ""
