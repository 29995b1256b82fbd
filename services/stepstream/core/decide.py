"""``decide``: what a command means for a run, as events, or why it cannot be applied.

No I/O, clock or randomness: ``now`` arrives on the command.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import assert_never

from stepstream.core.messages import (
    Command,
    Complete,
    Continue,
    ErrorInfo,
    Event,
    Fail,
    FireTimer,
    Rejected,
    ReportDelivery,
    RunCompleted,
    RunFailed,
    RunStarted,
    SleepFor,
    SleepStarted,
    SleepUntil,
    StepCompleted,
    StepFailed,
    StepKind,
    StepScheduled,
    TriggerRun,
)
from stepstream.core.retry import backoff_ms
from stepstream.core.state import RunState, RunStatus, evolve


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    """Settings a trigger may leave out."""

    retries: int = 3
    retry_base_ms: int = 1_000
    retry_max_ms: int = 3_600_000


def delivery_id(run_id: str, number: int) -> str:
    return f"{run_id}/{number}"


class _Builder:
    """Numbers events and keeps the state current while a decision appends them."""

    def __init__(self, state: RunState | None, run_id: str, now_ms: int) -> None:
        self.state = state
        self.run_id = run_id
        self.now_ms = now_ms
        self.events: list[Event] = []

    @property
    def next_seq(self) -> int:
        return (self.state.seq if self.state else 0) + 1

    def add(self, event: Event) -> None:
        self.events.append(event)
        self.state = evolve(self.state, event)

    def current(self) -> RunState:
        assert self.state is not None
        return self.state

    def schedule(self, *, attempt: int, not_before_ms: int) -> None:
        state = self.current()
        self.add(
            StepScheduled(
                run_id=self.run_id,
                seq=self.next_seq,
                at_ms=self.now_ms,
                step_index=state.next_step_index,
                delivery_id=delivery_id(self.run_id, state.deliveries + 1),
                attempt=attempt,
                not_before_ms=not_before_ms,
            )
        )


def decide(state: RunState | None, command: Command, defaults: Defaults = Defaults()) -> list[Event] | Rejected:
    match command:
        case TriggerRun():
            return _trigger(state, command, defaults)
        case ReportDelivery():
            return _report(state, command, defaults)
        case FireTimer():
            return _fire_timer(state, command)
        case _:
            assert_never(command)


def _trigger(state: RunState | None, command: TriggerRun, defaults: Defaults) -> list[Event] | Rejected:
    if state is not None:
        return Rejected(
            reason=f"Expected a new run id, but run {command.run_id} already exists ({state.status.value})",
            duplicate=True,
        )
    builder = _Builder(None, command.run_id, command.now_ms)
    builder.add(
        RunStarted(
            run_id=command.run_id,
            seq=1,
            at_ms=command.now_ms,
            workflow=command.workflow,
            url=command.url,
            payload=command.payload,
            headers=command.headers,
            label=command.label,
            retries=defaults.retries if command.retries is None else command.retries,
            retry_base_ms=defaults.retry_base_ms if command.retry_base_ms is None else command.retry_base_ms,
        )
    )
    builder.schedule(attempt=1, not_before_ms=max(command.now_ms, command.not_before_ms or 0))
    return builder.events


def _report(state: RunState | None, command: ReportDelivery, defaults: Defaults) -> list[Event] | Rejected:
    if state is None:
        return Rejected(reason=f"Expected a report for a known run, but run {command.run_id} does not exist")
    pending = state.pending_delivery
    if pending is None or pending.delivery_id != command.delivery_id or pending.attempt != command.attempt:
        waiting = f"{pending.delivery_id} attempt {pending.attempt}" if pending else "no delivery"
        return Rejected(
            reason=(
                f"Expected a report for {waiting} of run {command.run_id}, but got one for "
                f"{command.delivery_id} attempt {command.attempt} (a duplicate or late report)"
            ),
            duplicate=True,
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    for step in command.steps:
        expected = builder.current().next_step_index
        if step.index != expected:
            return Rejected(
                reason=f"Expected the report's steps to continue at index {expected}, but got index {step.index}"
            )
        if step.kind is not StepKind.RUN:
            return Rejected(reason=f"Expected only run steps to complete inside a delivery, but got {step.kind.value}")
        builder.add(
            StepCompleted(
                run_id=command.run_id,
                seq=builder.next_seq,
                at_ms=command.now_ms,
                step_index=step.index,
                name=step.name,
                kind=step.kind,
                output=step.output,
                delivery_id=command.delivery_id,
            )
        )
    outcome = command.outcome
    now = command.now_ms
    match outcome:
        case Continue():
            builder.schedule(attempt=1, not_before_ms=now)
        case SleepFor() | SleepUntil():
            expected = builder.current().next_step_index
            if outcome.index != expected:
                return Rejected(reason=f"Expected the sleep at index {expected}, but got index {outcome.index}")
            if isinstance(outcome, SleepFor):
                if outcome.duration_ms < 0:
                    return Rejected(reason=f"Expected a sleep of zero or more ms, but got {outcome.duration_ms}")
                kind, wake_at = StepKind.SLEEP, now + outcome.duration_ms
            else:
                kind, wake_at = StepKind.SLEEP_UNTIL, outcome.wake_at_ms
            builder.add(
                SleepStarted(
                    run_id=command.run_id,
                    seq=builder.next_seq,
                    at_ms=now,
                    step_index=outcome.index,
                    name=outcome.name,
                    kind=kind,
                    wake_at_ms=wake_at,
                )
            )
        case Complete():
            builder.add(RunCompleted(run_id=command.run_id, seq=builder.next_seq, at_ms=now, output=outcome.output))
        case Fail():
            _fail_attempt(builder, outcome, pending.attempt, command.delivery_id, defaults)
        case _:
            assert_never(outcome)
    return builder.events


def _fail_attempt(builder: _Builder, outcome: Fail, attempt: int, failed_delivery: str, defaults: Defaults) -> None:
    state = builder.current()
    now = builder.now_ms
    retry_at: int | None = None
    # Attempts count per step: when the delivery completed steps before failing, the failing step
    # was tried once, whatever the delivery's own attempt number was.
    pending = state.pending_delivery
    same_step = pending is not None and pending.step_index == state.next_step_index
    step_attempt = attempt if same_step else 1
    if outcome.retryable and step_attempt <= state.retries:
        delay = outcome.retry_after_ms
        if delay is None:
            delay = backoff_ms(step_attempt, state.retry_base_ms, defaults.retry_max_ms)
        retry_at = now + max(0, delay)
    builder.add(
        StepFailed(
            run_id=state.run_id,
            seq=builder.next_seq,
            at_ms=now,
            step_index=state.next_step_index,
            name=outcome.step_name,
            delivery_id=failed_delivery,
            attempt=step_attempt,
            error=outcome.error,
            retry_at_ms=retry_at,
        )
    )
    if retry_at is not None:
        builder.schedule(attempt=step_attempt + 1, not_before_ms=retry_at)
    else:
        error = outcome.error
        if outcome.retryable:
            error = ErrorInfo(
                type=error.type,
                message=f"{error.message} (gave up after {step_attempt} attempts)",
            )
        builder.add(RunFailed(run_id=state.run_id, seq=builder.next_seq, at_ms=now, error=error))


def _fire_timer(state: RunState | None, command: FireTimer) -> list[Event] | Rejected:
    if state is None:
        return Rejected(reason=f"Expected a timer for a known run, but run {command.run_id} does not exist")
    sleep = state.pending_sleep
    if state.status is not RunStatus.SLEEPING or sleep is None or sleep.step_index != command.step_index:
        return Rejected(
            reason=(
                f"Expected a timer for the run's current sleep, but run {command.run_id} is "
                f"{state.status.value} and the timer is for step {command.step_index}"
            ),
            duplicate=True,
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    builder.add(
        StepCompleted(
            run_id=command.run_id,
            seq=builder.next_seq,
            at_ms=command.now_ms,
            step_index=sleep.step_index,
            name=sleep.name,
            kind=sleep.kind,
            output="null",
            delivery_id="",
        )
    )
    builder.schedule(attempt=1, not_before_ms=command.now_ms)
    return builder.events
