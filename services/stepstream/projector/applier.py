"""Applying one input record of the projector: the command it asks for, decided with the pure core
and folded into its run's state or its event id's waiter index, with every record that writes (the
events, the snapshot's parts, the commands, deliveries and schedule records its effects ask for)
worked out in full and checked against the record limit; or, for a record it cannot apply, a dead
letter saying why. A record whose run or event id another instance owns is forwarded to it.

Apart from the service, whose loop only hands each record of a batch here and commits what the
batch's outbox then holds in one transaction (putting memory back if that fails). Nothing here
writes to Kafka or waits: what one record does reaches memory and the outbox whole, or not at all
(:class:`stepstream.projector.outbox.Change`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import cast

from aiokafka import ConsumerRecord

from stepstream import tracing
from stepstream.avro import RUN_COMMAND_TYPES, TOPIC_TYPES, WAITER_COMMAND_TYPES, Codec, DecodeError
from stepstream.clock import Clock
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
from stepstream.kafka.clients import partition_for
from stepstream.kafka.deadletter import DeadLetters
from stepstream.kafka.topics import TopicNames
from stepstream.logs import log_context
from stepstream.projector.deliveries import delivery_records, schedule_value
from stepstream.projector.inputs import PUBLIC_TYPES, PublicRequest, public_command
from stepstream.projector.outbox import Change, Outbox, Output
from stepstream.projector.snapshots import parts, step_key
from stepstream.projector.store import RunStore, WaiterStore

# The name these lines had while they were the service's: log searches name it (docs/operations.md).
log = logging.getLogger("stepstream.projector.service")


class Applier:
    """Applies input records to the runs and waiter indexes of the commands partitions this instance
    owns (``owned``), held in ``states`` and ``waiters``, adding what each writes to a batch's outbox."""

    def __init__(
        self,
        settings: ProjectorSettings,
        *,
        codec: Codec,
        clock: Clock,
        topics: TopicNames,
        states: RunStore,
        waiters: WaiterStore,
        dead_letters: DeadLetters,
    ) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = topics
        self.codec = codec
        self.clock = clock
        self.defaults = Defaults(
            retries=settings.default_retries,
            retry_base_ms=settings.default_retry_base_ms,
            max_invoke_depth=settings.max_invoke_depth,
            call_grace_ms=settings.call_grace_ms,
        )
        self.states = states
        self.waiters = waiters
        self.dead_letters = dead_letters
        self.owned: set[int] = set()  # the commands partitions this instance writes runs for
        self.commands_partitions = settings.kafka.partitions

    def apply(self, record: ConsumerRecord, outbox: Outbox) -> None:
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
