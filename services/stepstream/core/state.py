"""A run's state, and ``evolve``: the only code that changes it.

The state is the left fold of the run's events through :func:`evolve`, starting from ``None``.
Replaying a run's ``events`` must give exactly the snapshot the projector keeps in ``runs``.

A run waits on any number of things at once (steps started in parallel): deliveries in flight
(``in_flight``) and steps whose result comes from outside a delivery (``waiting``: sleeps, calls,
waits for events, notifications, child runs, and ``run`` steps that have a delivery of their own).
The next replay delivery is scheduled once both are empty.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import assert_never

from stepstream.core.commands import Recovery
from stepstream.core.events import (
    CallRetried,
    CallStarted,
    Event,
    EventReceived,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    InvokeStarted,
    NotifyStarted,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    WaitStarted,
    WaitTimedOut,
)
from stepstream.core.messages import ErrorInfo, FlowControl, StepKind
from stepstream.core.outcomes import CallSpec


class RunStatus(StrEnum):
    # Triggered with a delay or a not-before time: its first delivery is not yet due (or not yet
    # answered). Told apart from running, which a run waiting out its --delay is not.
    SCHEDULED = "scheduled"
    RUNNING = "running"  # a delivery or an engine-side call is scheduled or in flight
    SLEEPING = "sleeping"  # only sleeps are pending
    WAITING = "waiting"  # for an event, a notification's answer or a child run
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedStep:
    index: int
    name: str
    kind: StepKind
    output: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingDelivery:
    delivery_id: str
    step_index: int
    attempt: int
    not_before_ms: int
    execute_only: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingSleep:
    step_index: int
    name: str
    kind: StepKind
    wake_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingBranch:
    """A ``run`` step started in parallel with others; its own delivery is in ``in_flight``."""

    step_index: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingCall:
    step_index: int
    name: str
    call: CallSpec
    attempt: int
    deadline_ms: int  # no report by then: the attempt counts as failed


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingWait:
    step_index: int
    name: str
    event_id: str
    timeout_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingNotify:
    step_index: int
    name: str
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingInvoke:
    step_index: int
    name: str
    child_run_id: str


PendingStep = PendingSleep | PendingBranch | PendingCall | PendingWait | PendingNotify | PendingInvoke


@dataclass(frozen=True, slots=True, kw_only=True)
class RunState:
    run_id: str
    seq: int  # the seq of the last event applied
    workflow: str
    url: str
    payload: str
    headers: tuple[tuple[str, str], ...]
    label: str | None
    retries: int
    retry_base_ms: int
    status: RunStatus
    created_at_ms: int
    updated_at_ms: int
    steps: tuple[RecordedStep, ...]  # by index; a gap is a step still pending
    deliveries: int  # how many deliveries have been scheduled, retries included; numbers the next one
    in_flight: tuple[PendingDelivery, ...]
    waiting: tuple[PendingStep, ...]
    output: str | None
    error: ErrorInfo | None
    retry_delay: str | None = None
    failure_url: str | None = None
    parent_run_id: str | None = None
    parent_step_index: int | None = None
    depth: int = 0
    failure_delivery: PendingDelivery | None = None  # the failure handler's delivery, while due
    dead_letter: bool = False  # failed, and not yet resumed, restarted or deleted by an operator
    flow: FlowControl | None = None  # the limits every delivery of the run is under

    @property
    def first_open_index(self) -> int:
        """The lowest index with neither a result nor a pending step: where a replay delivery runs next."""
        steps = self.steps
        if not self.waiting and (not steps or steps[-1].index == len(steps) - 1):
            return len(steps)  # steps 0..n-1 recorded, nothing pending: the usual case, without a set
        taken = {step.index for step in steps} | {step.step_index for step in self.waiting}
        index = 0
        while index in taken:
            index += 1
        return index

    def recorded(self, index: int) -> RecordedStep | None:
        # ``steps`` is in index order: a search, not a scan, so a long run's step costs what a short one's does.
        position = bisect.bisect_left(self.steps, index, key=lambda step: step.index)
        if position < len(self.steps) and self.steps[position].index == index:
            return self.steps[position]
        return None

    def pending(self, index: int) -> PendingStep | None:
        for step in self.waiting:
            if step.step_index == index:
                return step
        return None

    def delivery(self, delivery_id: str) -> PendingDelivery | None:
        for delivery in self.in_flight:
            if delivery.delivery_id == delivery_id:
                return delivery
        return None

    @property
    def idle(self) -> bool:
        """Nothing in flight and nothing pending: the run needs a replay delivery to move on."""
        return not self.in_flight and not self.waiting


def status_of(in_flight: tuple[PendingDelivery, ...], waiting: tuple[PendingStep, ...]) -> RunStatus:
    if in_flight or any(isinstance(step, PendingBranch | PendingCall) for step in waiting):
        return RunStatus.RUNNING
    if any(isinstance(step, PendingWait | PendingNotify | PendingInvoke) for step in waiting):
        return RunStatus.WAITING
    if waiting:
        return RunStatus.SLEEPING
    return RunStatus.RUNNING  # nothing pending: a replay delivery is about to be scheduled


def wait_output(*, timeout: bool, data: str) -> str:
    """A ``wait_for_event`` step's result as JSON text; ``data`` is JSON text, passed through."""
    return f'{{"timeout":{"true" if timeout else "false"},"data":{data}}}'


def _record(steps: tuple[RecordedStep, ...], step: RecordedStep) -> tuple[RecordedStep, ...]:
    if not steps or steps[-1].index < step.index:
        return (*steps, step)  # the usual case, the next step: no need to sort a long run's steps again
    return tuple(sorted((*[s for s in steps if s.index != step.index], step), key=lambda s: s.index))


def _without(waiting: tuple[PendingStep, ...], index: int) -> tuple[PendingStep, ...]:
    return tuple(step for step in waiting if step.step_index != index)


def _replace_pending(state: RunState, step: PendingStep) -> tuple[PendingStep, ...]:
    return tuple(sorted((*_without(state.waiting, step.step_index), step), key=lambda s: s.step_index))


def _moved(
    state: RunState,
    *,
    in_flight: tuple[PendingDelivery, ...] | None = None,
    waiting: tuple[PendingStep, ...] | None = None,
    steps: tuple[RecordedStep, ...] | None = None,
) -> RunState:
    """The state with new pending sets (and steps), its status following them."""
    in_flight = state.in_flight if in_flight is None else in_flight
    waiting = state.waiting if waiting is None else waiting
    return replace(
        state,
        in_flight=in_flight,
        waiting=waiting,
        steps=state.steps if steps is None else steps,
        status=status_of(in_flight, waiting),
    )


def _replay_ended(state: RunState) -> tuple[PendingDelivery, ...]:
    """The in-flight deliveries once the replay delivery has answered (by suspending on steps)."""
    return tuple(delivery for delivery in state.in_flight if delivery.execute_only)


def evolve(state: RunState | None, event: Event) -> RunState:
    """Apply one event. Events are facts: this never refuses one that ``decide`` produced."""
    if isinstance(event, RunStarted) and state is None:
        return RunState(
            run_id=event.run_id,
            seq=event.seq,
            workflow=event.workflow,
            url=event.url,
            payload=event.payload,
            headers=event.headers,
            label=event.label,
            retries=event.retries,
            retry_base_ms=event.retry_base_ms,
            status=RunStatus.RUNNING,
            created_at_ms=event.at_ms,
            updated_at_ms=event.at_ms,
            steps=(),
            deliveries=0,
            in_flight=(),
            waiting=(),
            output=None,
            error=None,
            retry_delay=event.retry_delay,
            failure_url=event.failure_url,
            parent_run_id=event.parent_run_id,
            parent_step_index=event.parent_step_index,
            depth=event.depth,
            flow=event.flow,
        )
    if state is None:
        raise ValueError(
            f"Expected RunStarted as the first event of run {event.run_id}, but got {type(event).__name__}"
        )
    state = replace(state, seq=event.seq, updated_at_ms=event.at_ms)
    match event:
        case StepScheduled():
            delivery = PendingDelivery(
                delivery_id=event.delivery_id,
                step_index=event.step_index,
                attempt=event.attempt,
                not_before_ms=event.not_before_ms,
                execute_only=event.execute_only,
            )
            if event.execute_only:
                # A parallel `run` step: its own delivery, and the step pending until it reports.
                in_flight = (*_replay_ended(state), delivery)
                branch = PendingBranch(step_index=event.step_index, name=event.name or "")
                waiting = _replace_pending(state, branch)
                return replace(_moved(state, in_flight=in_flight, waiting=waiting), deliveries=state.deliveries + 1)
            in_flight = (*_replay_ended(state), delivery)
            moved = replace(_moved(state, in_flight=in_flight), deliveries=state.deliveries + 1)
            if state.deliveries == 0 and event.not_before_ms > event.at_ms:
                return replace(moved, status=RunStatus.SCHEDULED)  # the run's start was put off
            return moved
        case StepCompleted():
            step = RecordedStep(index=event.step_index, name=event.name, kind=event.kind, output=event.output)
            in_flight = tuple(
                delivery
                for delivery in state.in_flight
                if not (delivery.execute_only and delivery.delivery_id == event.delivery_id)
            )
            return _moved(
                state,
                steps=_record(state.steps, step),
                waiting=_without(state.waiting, event.step_index),
                in_flight=in_flight,
            )
        case StepFailed():
            in_flight = tuple(d for d in state.in_flight if d.delivery_id != event.delivery_id)
            return _moved(state, in_flight=in_flight)
        case SleepStarted():
            sleep = PendingSleep(
                step_index=event.step_index, name=event.name, kind=event.kind, wake_at_ms=event.wake_at_ms
            )
            return _moved(state, in_flight=_replay_ended(state), waiting=_replace_pending(state, sleep))
        case CallStarted():
            call = PendingCall(
                step_index=event.step_index,
                name=event.name,
                call=event.call,
                attempt=1,
                deadline_ms=event.deadline_ms,
            )
            return _moved(state, in_flight=_replay_ended(state), waiting=_replace_pending(state, call))
        case CallRetried():
            current = state.pending(event.step_index)
            if not isinstance(current, PendingCall):
                raise ValueError(f"Expected a pending call at step {event.step_index} of run {event.run_id}")
            retried = replace(current, attempt=event.attempt + 1, deadline_ms=event.deadline_ms)
            return _moved(state, waiting=_replace_pending(state, retried))
        case WaitStarted():
            wait = PendingWait(
                step_index=event.step_index,
                name=event.name,
                event_id=event.event_id,
                timeout_at_ms=event.timeout_at_ms,
            )
            return _moved(state, in_flight=_replay_ended(state), waiting=_replace_pending(state, wait))
        case EventReceived() | WaitTimedOut():
            current = state.pending(event.step_index)
            name = current.name if current is not None else ""
            if isinstance(event, EventReceived):
                output = wait_output(timeout=False, data=event.data)
            else:
                output = wait_output(timeout=True, data="null")
            step = RecordedStep(index=event.step_index, name=name, kind=StepKind.WAIT_FOR_EVENT, output=output)
            return _moved(state, steps=_record(state.steps, step), waiting=_without(state.waiting, event.step_index))
        case NotifyStarted():
            notify = PendingNotify(step_index=event.step_index, name=event.name, event_id=event.event_id)
            return _moved(state, in_flight=_replay_ended(state), waiting=_replace_pending(state, notify))
        case InvokeStarted():
            invoke = PendingInvoke(step_index=event.step_index, name=event.name, child_run_id=event.child_run_id)
            return _moved(state, in_flight=_replay_ended(state), waiting=_replace_pending(state, invoke))
        case RunCompleted():
            return replace(state, status=RunStatus.COMPLETED, in_flight=(), waiting=(), output=event.output)
        case RunFailed():
            return replace(
                state, status=RunStatus.FAILED, in_flight=(), waiting=(), error=event.error, dead_letter=True
            )
        case RunCancelled():
            return replace(state, status=RunStatus.CANCELLED, in_flight=(), waiting=())
        case ResultIgnored():
            return state
        case FailureHandlerScheduled():
            return replace(
                state,
                failure_delivery=PendingDelivery(
                    delivery_id=event.delivery_id,
                    step_index=state.first_open_index,
                    attempt=event.attempt,
                    not_before_ms=event.not_before_ms,
                ),
                deliveries=state.deliveries + 1,
            )
        case FailureHandled() | FailureHandlerFailed():
            return replace(state, failure_delivery=None)
        case RunRecovered():
            if event.action is Recovery.DELETE:
                return replace(state, dead_letter=False)
            steps = () if event.action is Recovery.RESTART else state.steps
            return replace(
                state,
                status=RunStatus.RUNNING,
                steps=steps,
                in_flight=(),
                waiting=(),
                output=None,
                error=None,
                failure_delivery=None,
                dead_letter=False,
            )
        case RunStarted():  # handled above; here for exhaustiveness
            raise ValueError(f"Expected one RunStarted per run, but run {event.run_id} got a second")
        case _:
            assert_never(event)


def fold(events: list[Event] | tuple[Event, ...]) -> RunState | None:
    state: RunState | None = None
    for event in events:
        state = evolve(state, event)
    return state


def call_output(*, status: int, headers: tuple[tuple[str, str], ...], body: str, error: str | None) -> str:
    """A ``call`` step's result as JSON text: status, headers (the last of a repeated name wins), body."""
    header_text = json.dumps(dict(headers), separators=(",", ":"))
    error_text = json.dumps(error)
    return f'{{"status":{status},"headers":{header_text},"body":{body},"error":{error_text}}}'
