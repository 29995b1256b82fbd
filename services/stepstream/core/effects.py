"""What the projector asks of the rest of the engine after a decision: deliveries, calls, timers,
and commands for other runs and for the waiter index.

These records are written in the same transaction as the events that caused them: schedule records
to ``schedule`` (or, on the fast path, straight to ``deliveries``), commands to ``commands``.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstream.core.commands import CancelRun, ChildFinished, Recovery, TriggerRun
from stepstream.core.events import (
    CallRetried,
    CallStarted,
    Event,
    EventReceived,
    FailureHandlerScheduled,
    InvokeStarted,
    NotifyStarted,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    SleepStarted,
    StepCompleted,
    StepScheduled,
    WaitStarted,
    WaitTimedOut,
)
from stepstream.core.messages import ErrorInfo, FlowControl, StepKind
from stepstream.core.outcomes import CallSpec
from stepstream.core.state import (
    PendingCall,
    PendingInvoke,
    PendingSleep,
    PendingWait,
    RecordedStep,
    RunState,
    evolve,
)
from stepstream.core.waiters import NotifyEvent, RegisterWaiter, UnregisterWaiter


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One call of the workflow endpoint, carrying what the SDK needs to replay the run.

    ``execute_index`` set: run only that step (one of several started in parallel). ``failure`` set:
    call the workflow's failure handler with it instead of the workflow.
    """

    run_id: str
    workflow: str
    url: str
    delivery_id: str
    attempt: int
    step_index: int
    payload: str
    steps: tuple[RecordedStep, ...]
    headers: tuple[tuple[str, str], ...]
    execute_index: int | None = None
    failure: ErrorInfo | None = None
    flow_key: str | None = None  # the flow-control key it was let through under; the executor reports on it
    # How many recorded steps travel apart from the record, before ``steps`` (``core.apart``): a run whose
    # results add up to more than one Kafka record holds still gets deliveries.
    steps_apart: int = 0

    @property
    def request_id(self) -> str:
        return f"{self.delivery_id}#{self.attempt}"


@dataclass(frozen=True, slots=True, kw_only=True)
class CallDelivery:
    """One attempt of a ``call`` step, for the executor to make."""

    run_id: str
    step_index: int
    attempt: int
    call: CallSpec
    flow_key: str | None = None  # the call's flow-control key; the executor reports on it

    @property
    def request_id(self) -> str:
        return call_request_id(self.run_id, self.step_index, self.attempt)


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRequested:
    """A delivery to emit once it is due and allowed by its flow control (``flow``, if any)."""

    request_id: str
    not_before_ms: int
    delivery: Delivery
    flow: FlowControl | None = None

    @property
    def flow_key(self) -> str | None:
        return None if self.flow is None else self.flow.key


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRequested:
    """An attempt of a call to emit to ``deliveries`` once it is due and allowed by its flow control.

    ``lease_ms`` (with ``flow`` set): how long after it is let through the attempt may go without a
    report before the scheduler counts it as lost, frees its place and fires the call's deadline.
    A call's offset is not held while it runs, so a crashed executor never reports it; without
    flow control the projector's own deadline timer does this.
    """

    request_id: str
    not_before_ms: int
    call: CallDelivery
    flow: FlowControl | None = None
    lease_ms: int = 0

    @property
    def flow_key(self) -> str | None:
        return None if self.flow is None else self.flow.key


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerRequested:
    """A timer: at ``due_ms`` the scheduler sends ``FireTimer`` to ``commands``."""

    request_id: str
    run_id: str
    step_index: int
    due_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ScheduleCancelled:
    """Drop these pending requests: their run ended, or what they were for happened first.

    ``flow_key`` set: the requests are queued under that flow-control key, in its partition.
    """

    run_id: str
    request_ids: tuple[str, ...]
    flow_key: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryCancelled:
    """The run ended (cancelled, or failed) while a delivery of it was in flight: on ``deliveries``,
    keyed by run id, for the executor, which stops going on with that delivery at its next step
    instead of running the rest of the workflow for a run that has ended."""

    run_id: str


ScheduleRecord = DeliveryRequested | CallRequested | TimerRequested | ScheduleCancelled
# Commands for other runs (keyed by run id) and for waiter indexes (keyed by event id).
OutgoingCommand = TriggerRun | CancelRun | ChildFinished | RegisterWaiter | UnregisterWaiter | NotifyEvent
Effect = ScheduleRecord | OutgoingCommand | DeliveryCancelled


def timer_request_id(run_id: str, step_index: int) -> str:
    return f"{run_id}/sleep/{step_index}"


def wait_timer_id(run_id: str, step_index: int) -> str:
    return f"{run_id}/wait/{step_index}"


def call_request_id(run_id: str, step_index: int, attempt: int) -> str:
    return f"{run_id}/call/{step_index}#{attempt}"


def call_deadline_id(run_id: str, step_index: int, attempt: int) -> str:
    return f"{run_id}/deadline/{step_index}#{attempt}"


def schedule_key(record: ScheduleRecord) -> str:
    """The Kafka key of a record on ``schedule`` (and so its partition and scheduler): its flow-control
    key, which gives each key one owner, else its run id."""
    if isinstance(record, TimerRequested):
        return record.run_id
    if isinstance(record, ScheduleCancelled):
        return record.flow_key or record.run_id
    key = record.flow_key
    return (
        key
        if key is not None
        else (record.delivery.run_id if isinstance(record, DeliveryRequested) else record.call.run_id)
    )


def command_key(command: OutgoingCommand) -> str:
    """The Kafka key (and so the partition) an outgoing command goes to: its run, or its event id."""
    if isinstance(command, RegisterWaiter | UnregisterWaiter | NotifyEvent):
        return command.event_id
    return command.run_id


def effects(before: RunState | None, events: list[Event]) -> list[Effect]:
    """The records that ``events``, just decided for the run in state ``before``, call for."""
    records: list[Effect] = []
    state = before
    for event in events:
        previous, state = state, evolve(state, event)
        records.extend(_effects_of(previous, state, event))
    return records


def _delivery(
    state: RunState,
    *,
    delivery_id: str,
    attempt: int,
    step_index: int,
    url: str | None = None,
    execute_index: int | None = None,
    failure: ErrorInfo | None = None,
) -> Delivery:
    return Delivery(
        run_id=state.run_id,
        workflow=state.workflow,
        url=url or state.url,
        delivery_id=delivery_id,
        attempt=attempt,
        step_index=step_index,
        payload=state.payload,
        steps=state.steps,
        headers=state.headers,
        execute_index=execute_index,
        failure=failure,
        flow_key=None if state.flow is None else state.flow.key,
    )


def _call(
    state: RunState, step_index: int, attempt: int, call: CallSpec, not_before_ms: int, deadline_ms: int
) -> list[Effect]:
    flow_key = None if call.flow is None else call.flow.key
    delivery = CallDelivery(run_id=state.run_id, step_index=step_index, attempt=attempt, call=call, flow_key=flow_key)
    if call.flow is not None:
        # Queued behind its key's limits, the attempt may start long after ``not_before_ms``: the
        # scheduler's lease on it, counted from when it is let through, stands in for the deadline.
        lease = max(0, deadline_ms - not_before_ms)
        return [
            CallRequested(
                request_id=delivery.request_id,
                not_before_ms=not_before_ms,
                call=delivery,
                flow=call.flow,
                lease_ms=lease,
            )
        ]
    return [
        CallRequested(request_id=delivery.request_id, not_before_ms=not_before_ms, call=delivery),
        TimerRequested(
            request_id=call_deadline_id(state.run_id, step_index, attempt),
            run_id=state.run_id,
            step_index=step_index,
            due_ms=deadline_ms,
        ),
    ]


def _effects_of(previous: RunState | None, state: RunState, event: Event) -> list[Effect]:
    run_id = state.run_id
    match event:
        case StepScheduled():
            delivery = _delivery(
                state,
                delivery_id=event.delivery_id,
                attempt=event.attempt,
                step_index=event.step_index,
                execute_index=event.step_index if event.execute_only else None,
            )
            return [
                DeliveryRequested(
                    request_id=delivery.request_id,
                    not_before_ms=event.not_before_ms,
                    delivery=delivery,
                    flow=state.flow,
                )
            ]
        case FailureHandlerScheduled():
            delivery = _delivery(
                state,
                delivery_id=event.delivery_id,
                attempt=event.attempt,
                step_index=state.first_open_index,
                url=event.url,
                failure=state.error,
            )
            return [
                DeliveryRequested(
                    request_id=delivery.request_id,
                    not_before_ms=event.not_before_ms,
                    delivery=delivery,
                    flow=state.flow,
                )
            ]
        case SleepStarted():
            return [
                TimerRequested(
                    request_id=timer_request_id(run_id, event.step_index),
                    run_id=run_id,
                    step_index=event.step_index,
                    due_ms=event.wake_at_ms,
                )
            ]
        case CallStarted():
            return _call(state, event.step_index, 1, event.call, event.at_ms, event.deadline_ms)
        case CallRetried():
            pending = state.pending(event.step_index)
            assert isinstance(pending, PendingCall)
            retry = _call(state, event.step_index, pending.attempt, pending.call, event.retry_at_ms, event.deadline_ms)
            if pending.call.flow is not None:
                return retry  # no deadline timer: the scheduler's lease on the attempt ended, or it reported
            deadline = call_deadline_id(run_id, event.step_index, event.attempt)
            return [ScheduleCancelled(run_id=run_id, request_ids=(deadline,)), *retry]
        case StepCompleted(kind=StepKind.CALL):
            pending = previous.pending(event.step_index) if previous is not None else None
            if isinstance(pending, PendingCall) and pending.call.flow is None:
                deadline = call_deadline_id(run_id, event.step_index, pending.attempt)
                return [ScheduleCancelled(run_id=run_id, request_ids=(deadline,))]
            return []
        case WaitStarted():
            return [
                TimerRequested(
                    request_id=wait_timer_id(run_id, event.step_index),
                    run_id=run_id,
                    step_index=event.step_index,
                    due_ms=event.timeout_at_ms,
                ),
                RegisterWaiter(
                    event_id=event.event_id,
                    run_id=run_id,
                    step_index=event.step_index,
                    timeout_at_ms=event.timeout_at_ms,
                    now_ms=event.at_ms,
                ),
            ]
        case EventReceived():
            return [ScheduleCancelled(run_id=run_id, request_ids=(wait_timer_id(run_id, event.step_index),))]
        case WaitTimedOut():
            return [
                UnregisterWaiter(
                    event_id=event.event_id, run_id=run_id, step_index=event.step_index, now_ms=event.at_ms
                )
            ]
        case NotifyStarted():
            return [
                NotifyEvent(
                    event_id=event.event_id,
                    data=event.data,
                    now_ms=event.at_ms,
                    reply_run_id=run_id,
                    reply_step_index=event.step_index,
                    actor=f"run {run_id}",
                )
            ]
        case InvokeStarted():
            return [_child_trigger(state, event)]
        case RunCompleted() | RunFailed() | RunCancelled():
            completed = isinstance(event, RunCompleted)
            return [*_abandon(previous, event.at_ms, completed=completed), *_tell_parent(state, event.at_ms)]
        case RunRecovered():
            # A failure handler still due (a retry of it) is not called for a run that goes on.
            handler = previous.failure_delivery if previous is not None else None
            if handler is not None and event.action is not Recovery.DELETE:
                request_id = f"{handler.delivery_id}#{handler.attempt}"
                return [ScheduleCancelled(run_id=run_id, request_ids=(request_id,), flow_key=_flow_key(state.flow))]
            return []
        case _:
            return []


def _child_trigger(state: RunState, event: InvokeStarted) -> TriggerRun:
    return TriggerRun(
        run_id=event.child_run_id,
        workflow=event.workflow,
        url=event.url,
        payload=event.payload,
        now_ms=event.at_ms,
        headers=event.headers,
        label=event.label,
        retries=event.retries,
        retry_delay=event.retry_delay,
        flow=event.flow,
        parent_run_id=state.run_id,
        parent_step_index=event.step_index,
        depth=state.depth + 1,
    )


def _abandon(previous: RunState | None, now: int, *, completed: bool) -> list[Effect]:
    """A run ended: drop its pending timers and requests, unregister its waits, cancel its children."""
    if previous is None:
        return []
    run_id = previous.run_id
    # Requests live in the partition of their key: the run's flow key for its deliveries, a call's
    # own for the call, the run id for timers. One cancellation per key, in order of first mention.
    by_key: dict[str | None, list[str]] = {}
    # A completed run's only delivery in flight is the one that just reported: nothing to drop.
    deliveries = () if completed else previous.in_flight
    for delivery in deliveries:
        by_key.setdefault(_flow_key(previous.flow), []).append(f"{delivery.delivery_id}#{delivery.attempt}")
    records: list[Effect] = []
    for step in previous.waiting:
        match step:
            case PendingSleep():
                by_key.setdefault(None, []).append(timer_request_id(run_id, step.step_index))
            case PendingWait():
                by_key.setdefault(None, []).append(wait_timer_id(run_id, step.step_index))
                records.append(
                    UnregisterWaiter(event_id=step.event_id, run_id=run_id, step_index=step.step_index, now_ms=now)
                )
            case PendingCall():
                call_key = _flow_key(step.call.flow)
                by_key.setdefault(call_key, []).append(call_request_id(run_id, step.step_index, step.attempt))
                if call_key is None:
                    by_key[None].append(call_deadline_id(run_id, step.step_index, step.attempt))
            case PendingInvoke():
                records.append(
                    CancelRun(
                        run_id=step.child_run_id, reason=f"parent run {run_id} ended", now_ms=now, actor=f"run {run_id}"
                    )
                )
            case _:
                pass
    cancels = [ScheduleCancelled(run_id=run_id, request_ids=tuple(ids), flow_key=key) for key, ids in by_key.items()]
    if previous.flow is None and any(not delivery.execute_only for delivery in deliveries):
        # The executor may be going on with it (only without flow control, and only a replay).
        records.append(DeliveryCancelled(run_id=run_id))
    return [*cancels, *records]


def _flow_key(flow: FlowControl | None) -> str | None:
    return None if flow is None else flow.key


def _tell_parent(state: RunState, now: int) -> list[Effect]:
    if state.parent_run_id is None or state.parent_step_index is None:
        return []
    return [
        ChildFinished(
            run_id=state.parent_run_id,
            step_index=state.parent_step_index,
            child_run_id=state.run_id,
            status=state.status.value,
            output=state.output,
            error=state.error,
            now_ms=now,
        )
    ]


def child_reattached(child: RunState, trigger: TriggerRun) -> ChildFinished | None:
    """A parent started a child that already exists: it was resumed or restarted after starting it.

    Child ids follow from the parent's step, so the second trigger is a duplicate and starts nothing;
    instead the parent re-attaches to the child. A child still going tells the parent when it ends,
    as before; one that has ended is reported now, or the parent would wait forever.
    """
    if trigger.parent_run_id is None or trigger.parent_step_index is None:
        return None
    if child.parent_run_id != trigger.parent_run_id or not child.status.terminal:
        return None
    return ChildFinished(
        run_id=trigger.parent_run_id,
        step_index=trigger.parent_step_index,
        child_run_id=child.run_id,
        status=child.status.value,
        output=child.output,
        error=child.error,
        now_ms=trigger.now_ms,
    )


def deliverable_now(record: Effect, now_ms: int) -> Delivery | CallDelivery | None:
    """The fast path: work due now and under no flow limit skips the scheduler's hop."""
    if isinstance(record, DeliveryRequested | CallRequested) and record.flow is None and record.not_before_ms <= now_ms:
        return record.delivery if isinstance(record, DeliveryRequested) else record.call
    return None
