"""A delivery's report: the ``run`` steps it completed and how it ended (continue, suspend, complete,
fail or cancel), the retry of an attempt that failed, and the report of a failure handler's delivery.

Apart from :mod:`~stepstream.core.pending`: a delivery runs the workflow's own code, and its report
carries the SDK's outcome; the steps a suspension starts are carried on by that module, which this
one calls.
"""

from __future__ import annotations

from typing import assert_never

from stepstream.core.commands import Rejected, ReportDelivery
from stepstream.core.decision import Builder, Defaults, duplicate, retry_delay_ms
from stepstream.core.events import Event, FailureHandled, FailureHandlerFailed, RunCancelled, RunCompleted, StepFailed
from stepstream.core.messages import ErrorInfo, StepKind, StepResult
from stepstream.core.outcomes import (
    Cancel,
    Complete,
    Continue,
    Continuing,
    Fail,
    PlannedStep,
    PlanSleep,
    SleepFor,
    SleepUntil,
    Suspend,
)
from stepstream.core.pending import start
from stepstream.core.state import PendingDelivery, RunState


def report(state: RunState, command: ReportDelivery, defaults: Defaults) -> list[Event] | Rejected:
    failure = state.failure_delivery
    if failure is not None and failure.delivery_id == command.delivery_id and failure.attempt == command.attempt:
        return _report_failure_handler(state, command, failure, defaults)
    pending = state.delivery(command.delivery_id)
    if pending is None or pending.attempt != command.attempt:
        waiting = ", ".join(f"{d.delivery_id} attempt {d.attempt}" for d in state.in_flight) or "no delivery"
        return duplicate(
            f"Expected a report for {waiting} of run {command.run_id}, but got one for "
            f"{command.delivery_id} attempt {command.attempt} (a duplicate or late report)"
        )
    builder = Builder(state, command.run_id, command.now_ms)
    if pending.execute_only:
        return _report_branch(builder, command, pending, defaults)
    outcome = command.outcome
    steps = command.steps
    if isinstance(outcome, Continuing):
        steps = tuple(step for step in steps if not _reported_before(state, step))
        if not steps:
            return duplicate(
                f"Expected new steps in the report of {command.delivery_id} attempt {command.attempt}, but "
                f"steps {[step.index for step in command.steps]} are recorded already (a report sent twice)"
            )
    for step in steps:
        problem = _claimed(builder.current(), step.index)
        if problem is not None:
            return problem
        if step.kind is not StepKind.RUN:
            return Rejected(reason=f"Expected only run steps to complete inside a delivery, but got {step.kind.value}")
        builder.complete_step(step.index, step.name, step.kind, step.output, command.delivery_id)
    now = command.now_ms
    match outcome:
        case Continuing():
            pass  # the delivery goes on: it stays in flight, and its next report carries the next steps
        case Continue():
            builder.schedule(attempt=1, not_before_ms=now)
        case SleepFor():
            plan = PlanSleep(
                index=outcome.index, name=outcome.name, kind=StepKind.SLEEP, duration_ms=outcome.duration_ms
            )
            return _suspend(builder, (plan,), defaults)
        case SleepUntil():
            plan = PlanSleep(
                index=outcome.index, name=outcome.name, kind=StepKind.SLEEP_UNTIL, wake_at_ms=outcome.wake_at_ms
            )
            return _suspend(builder, (plan,), defaults)
        case Suspend():
            return _suspend(builder, outcome.steps, defaults)
        case Complete():
            builder.add(RunCompleted(run_id=command.run_id, seq=builder.next_seq, at_ms=now, output=outcome.output))
        case Fail():
            # The delivery's attempt counts for the step it started with; a later step it reached
            # (reported here, or earlier while the executor went on with it) fails at its first attempt.
            progressed = bool(steps) or builder.current().first_open_index > pending.step_index
            step_attempt = 1 if progressed else pending.attempt
            _fail_attempt(builder, outcome, step_attempt, command.delivery_id, None, defaults)
        case Cancel():
            builder.add(RunCancelled(run_id=command.run_id, seq=builder.next_seq, at_ms=now, reason=outcome.reason))
        case _:
            assert_never(outcome)
    return builder.events


def _reported_before(state: RunState, step: StepResult) -> bool:
    """Whether ``step`` is recorded already, exactly as reported: a report of a delivery the executor
    went on with, sent again (its recovery after a crash reads back what it reported)."""
    recorded = state.recorded(step.index)
    return recorded is not None and (recorded.name, recorded.kind, recorded.output) == (
        step.name,
        step.kind,
        step.output,
    )


def _report_branch(
    builder: Builder, command: ReportDelivery, pending: PendingDelivery, defaults: Defaults
) -> list[Event] | Rejected:
    """A delivery that executes one step of several started in parallel: its result, or its failure."""
    index = pending.step_index
    outcome = command.outcome
    if isinstance(outcome, Cancel):  # ctx.cancel() reached while replaying up to the branch's step
        builder.add(
            RunCancelled(run_id=command.run_id, seq=builder.next_seq, at_ms=command.now_ms, reason=outcome.reason)
        )
        return builder.events
    if isinstance(outcome, Fail):
        _fail_attempt(builder, outcome, pending.attempt, command.delivery_id, index, defaults)
        return builder.events
    results = [step for step in command.steps if step.index == index]
    if len(command.steps) != 1 or not results or not isinstance(outcome, Continue):
        protocol_error = Fail(
            error=ErrorInfo(
                type="ProtocolError",
                message=(
                    f"Expected the delivery that executes only step {index} to report that step and 'continue', "
                    f"but it reported steps {[step.index for step in command.steps]} and {type(outcome).__name__}"
                ),
            ),
            retryable=False,
        )
        _fail_attempt(builder, protocol_error, pending.attempt, command.delivery_id, index, defaults)
        return builder.events
    step = results[0]
    builder.complete_step(index, step.name, StepKind.RUN, step.output, command.delivery_id)
    builder.continue_if_idle()
    return builder.events


def _suspend(builder: Builder, plans: tuple[PlannedStep, ...], defaults: Defaults) -> list[Event] | Rejected:
    """Start every step the workflow is blocked on."""
    if not plans:
        return Rejected(reason="Expected a suspension to name at least one step, but it names none")
    indexes = [plan.index for plan in plans]
    if len(set(indexes)) != len(indexes):
        return Rejected(reason=f"Expected the suspended steps to have distinct indexes, but got {indexes}")
    for plan in plans:
        problem = _claimed(builder.current(), plan.index) or start(builder, plan, defaults)
        if problem is not None:
            return problem
        if builder.current().status.terminal:
            break
    return builder.events


def _claimed(state: RunState, index: int) -> Rejected | None:
    """Why a delivery cannot report or start step ``index``: it already has a result, or is pending."""
    if state.recorded(index) is not None or state.pending(index) is not None:
        return Rejected(
            reason=f"Expected a new step at index {state.first_open_index} or later, but step {index} "
            "already has a result or is pending"
        )
    return None


def _fail_attempt(
    builder: Builder,
    outcome: Fail,
    step_attempt: int,
    failed_delivery: str,
    branch_index: int | None,
    defaults: Defaults,
) -> None:
    """A delivery failed: retry the step (the whole replay, or the one branch), or fail the run."""
    state = builder.current()
    now = builder.now_ms
    step_index = state.first_open_index if branch_index is None else branch_index
    retry_at: int | None = None
    if outcome.retryable and step_attempt <= state.retries:
        delay = outcome.retry_after_ms
        if delay is None:
            delay = retry_delay_ms(state.retry_delay, step_attempt, state.retry_base_ms, defaults)
        retry_at = now + max(0, delay)
    branch = state.pending(branch_index) if branch_index is not None else None
    builder.add(
        StepFailed(
            run_id=state.run_id,
            seq=builder.next_seq,
            at_ms=now,
            step_index=step_index,
            name=outcome.step_name or (branch.name if branch is not None else None),
            delivery_id=failed_delivery,
            attempt=step_attempt,
            error=outcome.error,
            retry_at_ms=retry_at,
            retryable=outcome.retryable,
        )
    )
    if retry_at is not None:
        name = branch.name if branch is not None else None
        builder.schedule(attempt=step_attempt + 1, not_before_ms=retry_at, step_index=branch_index, name=name)
    else:
        error = outcome.error
        if outcome.retryable:
            error = ErrorInfo(type=error.type, message=f"{error.message} (gave up after {step_attempt} attempts)")
        builder.fail_run(error)


def _report_failure_handler(
    state: RunState, command: ReportDelivery, pending: PendingDelivery, defaults: Defaults
) -> list[Event]:
    builder = Builder(state, command.run_id, command.now_ms)
    outcome = command.outcome
    if not isinstance(outcome, Fail):
        builder.add(
            FailureHandled(
                run_id=state.run_id,
                seq=builder.next_seq,
                at_ms=command.now_ms,
                delivery_id=command.delivery_id,
                attempt=command.attempt,
                error=None,
                retry_at_ms=None,
            )
        )
        return builder.events
    retry_at: int | None = None
    if outcome.retryable and pending.attempt <= state.retries:
        delay = outcome.retry_after_ms
        if delay is None:
            delay = retry_delay_ms(state.retry_delay, pending.attempt, state.retry_base_ms, defaults)
        retry_at = command.now_ms + max(0, delay)
    builder.add(
        FailureHandlerFailed(
            run_id=state.run_id,
            seq=builder.next_seq,
            at_ms=command.now_ms,
            delivery_id=command.delivery_id,
            attempt=command.attempt,
            error=outcome.error,
            retry_at_ms=retry_at,
            retryable=outcome.retryable,
        )
    )
    if retry_at is not None:
        builder.schedule_failure_handler(attempt=pending.attempt + 1, not_before_ms=retry_at)
    return builder.events
