"""``decide``: what a command means for a run, as events, or why it cannot be applied.

No I/O, clock or randomness: ``now`` arrives on the command.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import assert_never

from stepstream.core.messages import (
    CallRetried,
    CallStarted,
    Cancel,
    CancelRun,
    ChildFinished,
    Command,
    Complete,
    Continue,
    Continuing,
    ErrorInfo,
    Event,
    EventReceived,
    Fail,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    FireTimer,
    FlowControl,
    InvokeStarted,
    NotifyStarted,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    ReceiveEvent,
    RecoverRun,
    Recovery,
    Rejected,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    RunStarted,
    SleepFor,
    SleepStarted,
    SleepUntil,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
    Suspend,
    TriggerRun,
    WaitStarted,
    WaitTimedOut,
    flow_control_problem,
)
from stepstream.core.retry import backoff_ms, check_delay_rule, delay_rule_ms
from stepstream.core.state import (
    PendingCall,
    PendingDelivery,
    PendingInvoke,
    PendingNotify,
    PendingSleep,
    PendingWait,
    RunState,
    RunStatus,
    call_output,
    evolve,
)

# Answers of an engine-side call that say "try again later" rather than "this request is wrong".
RETRYABLE_CALL_STATUSES = frozenset({408, 425, 429})


@dataclass(frozen=True, slots=True, kw_only=True)
class Defaults:
    """Settings a trigger may leave out, and the engine's bounds."""

    retries: int = 3
    retry_base_ms: int = 1_000
    retry_max_ms: int = 3_600_000
    max_invoke_depth: int = 100
    # How long past a call's timeout the engine waits for the executor's report before counting the
    # attempt as lost (the executor crashed mid-call) and trying again.
    call_grace_ms: int = 60_000


def delivery_id(run_id: str, number: int) -> str:
    return f"{run_id}/{number}"


def child_run_id(parent_run_id: str, step_index: int) -> str:
    """A child's id follows from its parent's step, so the parent can never start it twice."""
    return f"{parent_run_id}.{step_index}"


def child_url(parent_url: str, workflow: str) -> str:
    """The URL of ``workflow`` served by the same app as the parent: its last path segment replaced."""
    base, _, _ = parent_url.partition("?")
    return f"{base.rstrip('/').rpartition('/')[0]}/{workflow}"


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

    def complete_step(self, index: int, name: str, kind: StepKind, output: str, delivery_id: str = "") -> None:
        """Record step ``index``'s result; ``delivery_id`` empty for results that came from outside a delivery."""
        self.add(
            StepCompleted(
                run_id=self.run_id,
                seq=self.next_seq,
                at_ms=self.now_ms,
                step_index=index,
                name=name,
                kind=kind,
                output=output,
                delivery_id=delivery_id,
            )
        )

    def schedule(
        self, *, attempt: int, not_before_ms: int, step_index: int | None = None, name: str | None = None
    ) -> None:
        state = self.current()
        self.add(
            StepScheduled(
                run_id=self.run_id,
                seq=self.next_seq,
                at_ms=self.now_ms,
                step_index=state.first_open_index if step_index is None else step_index,
                delivery_id=delivery_id(self.run_id, state.deliveries + 1),
                attempt=attempt,
                not_before_ms=not_before_ms,
                execute_only=step_index is not None,
                name=name,
            )
        )

    def continue_if_idle(self) -> None:
        """Every pending step has its result: deliver again so the workflow runs on."""
        state = self.current()
        if not state.status.terminal and state.idle:
            self.schedule(attempt=1, not_before_ms=self.now_ms)

    def fail_run(self, error: ErrorInfo) -> None:
        self.add(RunFailed(run_id=self.run_id, seq=self.next_seq, at_ms=self.now_ms, error=error))
        self.schedule_failure_handler(attempt=1, not_before_ms=self.now_ms)

    def schedule_failure_handler(self, *, attempt: int, not_before_ms: int) -> None:
        state = self.current()
        self.add(
            FailureHandlerScheduled(
                run_id=self.run_id,
                seq=self.next_seq,
                at_ms=self.now_ms,
                delivery_id=delivery_id(self.run_id, state.deliveries + 1),
                attempt=attempt,
                not_before_ms=not_before_ms,
                url=state.failure_url or state.url,
            )
        )


def decide(state: RunState | None, command: Command, defaults: Defaults = Defaults()) -> list[Event] | Rejected:
    match command:
        case TriggerRun():
            return _trigger(state, command, defaults)
        case CancelRun():
            return _cancel(state, command)
        case RecoverRun():
            return _recover(state, command)
        case ReportDelivery() | FireTimer() | ReportCall() | ReceiveEvent() | ReportNotify() | ChildFinished():
            if state is None:
                return Rejected(reason=f"Expected a command for a known run, but run {command.run_id} does not exist")
            if state.status is RunStatus.CANCELLED and not isinstance(command, FireTimer):
                return _ignored(state, command)
            match command:
                case ReportDelivery():
                    return _report(state, command, defaults)
                case FireTimer():
                    return _fire_timer(state, command, defaults)
                case ReportCall():
                    return _report_call(state, command, defaults)
                case ReceiveEvent():
                    return _receive_event(state, command)
                case ReportNotify():
                    return _report_notify(state, command)
                case ChildFinished():
                    return _child_finished(state, command)
                case _:
                    assert_never(command)
        case _:
            assert_never(command)


def fail_run(state: RunState | None, error: ErrorInfo, now_ms: int) -> list[Event] | Rejected:
    """The run fails with ``error``, whatever it was waiting for: for what the engine itself finds it
    cannot carry out, such as a command whose result would not fit in a Kafka record. Not a command,
    since nobody sends it: the projector decides it in place of the command that asked too much.
    """
    if state is None:
        return Rejected(reason="Expected a run to fail, but there is none")
    if state.status.terminal:
        return _duplicate(f"Expected a run that has not ended, but run {state.run_id} is {state.status.value}")
    builder = _Builder(state, state.run_id, now_ms)
    builder.fail_run(error)
    return builder.events


def _trigger(state: RunState | None, command: TriggerRun, defaults: Defaults) -> list[Event] | Rejected:
    if state is not None:
        return Rejected(
            reason=f"Expected a new run id, but run {command.run_id} already exists ({state.status.value})",
            duplicate=True,
        )
    if (problem := _option_problem(command.retry_delay, command.flow)) is not None:
        return Rejected(reason=problem)
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
            retry_delay=command.retry_delay,
            failure_url=command.failure_url,
            parent_run_id=command.parent_run_id,
            parent_step_index=command.parent_step_index,
            depth=command.depth,
            flow=command.flow,
        )
    )
    builder.schedule(attempt=1, not_before_ms=max(command.now_ms, command.not_before_ms or 0))
    return builder.events


def _option_problem(retry_delay: str | None, flow: FlowControl | None) -> str | None:
    """What is wrong with a run's, call's or child run's retry delay rule or flow control, if anything."""
    if retry_delay is not None:
        try:
            check_delay_rule(retry_delay)
        except ValueError as error:
            return str(error)
    return None if flow is None else flow_control_problem(flow)


def _cancel(state: RunState | None, command: CancelRun) -> list[Event] | Rejected:
    if state is None:
        return Rejected(reason=f"Expected a run to cancel, but run {command.run_id} does not exist")
    if state.status.terminal:
        return Rejected(
            reason=f"Expected a run that has not ended, but run {command.run_id} is {state.status.value}",
            duplicate=True,
        )
    cancelled = RunCancelled(
        run_id=command.run_id, seq=state.seq + 1, at_ms=command.now_ms, reason=command.reason, actor=command.actor
    )
    return [cancelled]


def _recover(state: RunState | None, command: RecoverRun) -> list[Event] | Rejected:
    if state is None:
        return Rejected(reason=f"Expected a failed run, but run {command.run_id} does not exist")
    if not state.dead_letter:
        listed = "failed but already taken off" if state.status is RunStatus.FAILED else state.status.value
        return Rejected(
            reason=(
                f"Expected a run in the dead-letter list to {command.action.value}, "
                f"but run {command.run_id} is {listed}"
            ),
            duplicate=True,
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    builder.add(
        RunRecovered(
            run_id=command.run_id,
            seq=builder.next_seq,
            at_ms=command.now_ms,
            action=command.action,
            actor=command.actor,
            reason=command.reason,
        )
    )
    if command.action is not Recovery.DELETE:
        builder.schedule(attempt=1, not_before_ms=command.now_ms)
    return builder.events


def _ignored(state: RunState, command: Command) -> list[Event]:
    match command:
        case ReportDelivery():
            what = f"report of delivery {command.delivery_id} attempt {command.attempt}"
        case ReportCall():
            what = f"answer {command.status} to the call of step {command.step_index} (attempt {command.attempt})"
        case ReceiveEvent():
            what = f"notification of event {command.event_id!r} for step {command.step_index}"
        case ReportNotify():
            what = f"answer to the notify of step {command.step_index}"
        case ChildFinished():
            what = f"child run {command.child_run_id} {command.status}"
        case _:
            what = type(command).__name__
    return [ResultIgnored(run_id=state.run_id, seq=state.seq + 1, at_ms=command.now_ms, what=what)]


def _duplicate(message: str) -> Rejected:
    return Rejected(reason=message, duplicate=True)


def _report(state: RunState, command: ReportDelivery, defaults: Defaults) -> list[Event] | Rejected:
    failure = state.failure_delivery
    if failure is not None and failure.delivery_id == command.delivery_id and failure.attempt == command.attempt:
        return _report_failure_handler(state, command, failure, defaults)
    pending = state.delivery(command.delivery_id)
    if pending is None or pending.attempt != command.attempt:
        waiting = ", ".join(f"{d.delivery_id} attempt {d.attempt}" for d in state.in_flight) or "no delivery"
        return _duplicate(
            f"Expected a report for {waiting} of run {command.run_id}, but got one for "
            f"{command.delivery_id} attempt {command.attempt} (a duplicate or late report)"
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    if pending.execute_only:
        return _report_branch(builder, command, pending, defaults)
    outcome = command.outcome
    steps = command.steps
    if isinstance(outcome, Continuing):
        steps = tuple(step for step in steps if not _reported_before(state, step))
        if not steps:
            return _duplicate(
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
    builder: _Builder, command: ReportDelivery, pending: PendingDelivery, defaults: Defaults
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


def _suspend(builder: _Builder, plans: tuple[PlannedStep, ...], defaults: Defaults) -> list[Event] | Rejected:
    """Start every step the workflow is blocked on."""
    if not plans:
        return Rejected(reason="Expected a suspension to name at least one step, but it names none")
    indexes = [plan.index for plan in plans]
    if len(set(indexes)) != len(indexes):
        return Rejected(reason=f"Expected the suspended steps to have distinct indexes, but got {indexes}")
    for plan in plans:
        problem = _claimed(builder.current(), plan.index) or _start(builder, plan, defaults)
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


def _start(builder: _Builder, plan: PlannedStep, defaults: Defaults) -> Rejected | None:
    state = builder.current()
    run_id, now, seq = state.run_id, builder.now_ms, builder.next_seq
    match plan:
        case PlanRun():
            builder.schedule(attempt=1, not_before_ms=now, step_index=plan.index, name=plan.name)
        case PlanSleep():
            if plan.kind is StepKind.SLEEP and plan.duration_ms is not None:
                if plan.duration_ms < 0:
                    return Rejected(reason=f"Expected a sleep of zero or more ms, but got {plan.duration_ms}")
                wake_at = now + plan.duration_ms
            elif plan.kind is StepKind.SLEEP_UNTIL and plan.wake_at_ms is not None:
                wake_at = plan.wake_at_ms
            else:
                return Rejected(
                    reason=f"Expected a sleep with duration_ms or a sleep_until with wake_at_ms, but step {plan.index} "
                    f"is {plan.kind.value} with neither"
                )
            builder.add(
                SleepStarted(
                    run_id=run_id,
                    seq=seq,
                    at_ms=now,
                    step_index=plan.index,
                    name=plan.name,
                    kind=plan.kind,
                    wake_at_ms=wake_at,
                )
            )
        case PlanCall():
            if (problem := _option_problem(plan.call.retry_delay, plan.call.flow)) is not None:
                builder.fail_run(ErrorInfo(type="InvalidCall", message=f"step {plan.index} '{plan.name}': {problem}"))
                return None
            builder.add(
                CallStarted(
                    run_id=run_id,
                    seq=seq,
                    at_ms=now,
                    step_index=plan.index,
                    name=plan.name,
                    call=plan.call,
                    deadline_ms=now + plan.call.timeout_ms + defaults.call_grace_ms,
                )
            )
        case PlanWait():
            if plan.timeout_ms < 0:
                return Rejected(reason=f"Expected a wait timeout of zero or more ms, but got {plan.timeout_ms}")
            builder.add(
                WaitStarted(
                    run_id=run_id,
                    seq=seq,
                    at_ms=now,
                    step_index=plan.index,
                    name=plan.name,
                    event_id=plan.event_id,
                    timeout_at_ms=now + plan.timeout_ms,
                )
            )
        case PlanNotify():
            builder.add(
                NotifyStarted(
                    run_id=run_id,
                    seq=seq,
                    at_ms=now,
                    step_index=plan.index,
                    name=plan.name,
                    event_id=plan.event_id,
                    data=plan.data,
                )
            )
        case PlanInvoke():
            if state.depth + 1 > defaults.max_invoke_depth:
                builder.fail_run(
                    ErrorInfo(
                        type="InvokeDepthExceeded",
                        message=(
                            f"Expected invoke depth at most {defaults.max_invoke_depth}, but step {plan.index} "
                            f"'{plan.name}' would start a run at depth {state.depth + 1}"
                        ),
                    )
                )
                return None
            # An invalid option would get the child's trigger rejected, and the parent would wait forever.
            if (problem := _option_problem(plan.retry_delay, plan.flow)) is not None:
                builder.fail_run(ErrorInfo(type="InvalidInvoke", message=f"step {plan.index} '{plan.name}': {problem}"))
                return None
            builder.add(
                InvokeStarted(
                    run_id=run_id,
                    seq=seq,
                    at_ms=now,
                    step_index=plan.index,
                    name=plan.name,
                    child_run_id=child_run_id(run_id, plan.index),
                    workflow=plan.workflow,
                    url=plan.url or child_url(state.url, plan.workflow),
                    payload=plan.payload,
                    headers=state.headers + plan.headers,
                    label=plan.label,
                    retries=plan.retries,
                    retry_delay=plan.retry_delay,
                    flow=plan.flow,
                )
            )
        case _:
            assert_never(plan)
    return None


def _retry_delay(rule: str | None, step_attempt: int, base_ms: int, defaults: Defaults) -> int:
    if rule is not None:
        try:
            return delay_rule_ms(rule, retried=step_attempt - 1, max_ms=defaults.retry_max_ms)
        except ValueError:
            pass  # checked when the rule was given; a rule that fails for a later retry falls back to the backoff
    return backoff_ms(step_attempt, base_ms, defaults.retry_max_ms)


def _fail_attempt(
    builder: _Builder,
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
            delay = _retry_delay(state.retry_delay, step_attempt, state.retry_base_ms, defaults)
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
    builder = _Builder(state, command.run_id, command.now_ms)
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
            delay = _retry_delay(state.retry_delay, pending.attempt, state.retry_base_ms, defaults)
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


def _fire_timer(state: RunState, command: FireTimer, defaults: Defaults) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    builder = _Builder(state, command.run_id, command.now_ms)
    now = command.now_ms
    match pending:
        case PendingSleep() if now >= pending.wake_at_ms:
            builder.complete_step(pending.step_index, pending.name, pending.kind, "null")
        case PendingWait() if now >= pending.timeout_at_ms:
            builder.add(
                WaitTimedOut(
                    run_id=command.run_id,
                    seq=builder.next_seq,
                    at_ms=now,
                    step_index=pending.step_index,
                    event_id=pending.event_id,
                )
            )
        case PendingCall() if now >= pending.deadline_ms:
            message = (
                f"no answer reported within {pending.call.timeout_ms} ms (plus {defaults.call_grace_ms} ms grace); "
                "the executor may have stopped mid-call"
            )
            _call_answered(builder, pending, status=0, headers=(), body="null", error=message, defaults=defaults)
        case _:
            return _duplicate(
                f"Expected a timer for a pending sleep, wait or call of run {command.run_id}, but step "
                f"{command.step_index} is {type(pending).__name__ if pending else 'not pending'} "
                "(a duplicate, or a timer for an earlier attempt)"
            )
    builder.continue_if_idle()
    return builder.events


def _report_call(state: RunState, command: ReportCall, defaults: Defaults) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingCall) or pending.attempt != command.attempt:
        return _duplicate(
            f"Expected the answer to a pending call of run {command.run_id}, but step {command.step_index} attempt "
            f"{command.attempt} is not pending (a duplicate or late report)"
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    _call_answered(
        builder,
        pending,
        status=command.status,
        headers=command.headers,
        body=command.body,
        error=command.error,
        defaults=defaults,
    )
    builder.continue_if_idle()
    return builder.events


def _call_answered(
    builder: _Builder,
    pending: PendingCall,
    *,
    status: int,
    headers: tuple[tuple[str, str], ...],
    body: str,
    error: str | None,
    defaults: Defaults,
) -> None:
    """An attempt of a call ended: retry it, or record the answer (any status) as the step's result."""
    state = builder.current()
    now = builder.now_ms
    call = pending.call
    retryable = error is not None or status >= 500 or status in RETRYABLE_CALL_STATUSES
    if retryable and pending.attempt <= call.retries:
        delay = _retry_delay(call.retry_delay, pending.attempt, defaults.retry_base_ms, defaults)
        builder.add(
            CallRetried(
                run_id=state.run_id,
                seq=builder.next_seq,
                at_ms=now,
                step_index=pending.step_index,
                attempt=pending.attempt,
                status=status,
                error=error or f"answered {status}",
                retry_at_ms=now + delay,
                deadline_ms=now + delay + call.timeout_ms + defaults.call_grace_ms,
            )
        )
        return
    builder.complete_step(
        pending.step_index,
        pending.name,
        StepKind.CALL,
        call_output(status=status, headers=headers, body=body, error=error),
    )


def _receive_event(state: RunState, command: ReceiveEvent) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingWait) or pending.event_id != command.event_id:
        return _duplicate(
            f"Expected step {command.step_index} of run {command.run_id} to wait on event {command.event_id!r}, "
            "but it does not (it timed out, or the notification is a duplicate)"
        )
    builder = _Builder(state, command.run_id, command.now_ms)
    builder.add(
        EventReceived(
            run_id=command.run_id,
            seq=builder.next_seq,
            at_ms=command.now_ms,
            step_index=command.step_index,
            event_id=command.event_id,
            data=command.data,
            actor=command.actor,
        )
    )
    builder.continue_if_idle()
    return builder.events


def _report_notify(state: RunState, command: ReportNotify) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingNotify):
        return _duplicate(f"Expected step {command.step_index} of run {command.run_id} to be a pending notify")
    builder = _Builder(state, command.run_id, command.now_ms)
    builder.complete_step(
        command.step_index, pending.name, StepKind.NOTIFY, json.dumps(list(command.notified), separators=(",", ":"))
    )
    builder.continue_if_idle()
    return builder.events


def _child_finished(state: RunState, command: ChildFinished) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingInvoke) or pending.child_run_id != command.child_run_id:
        return _duplicate(
            f"Expected step {command.step_index} of run {command.run_id} to wait on child {command.child_run_id}, "
            "but it does not (a duplicate, or the child ended again after a resume)"
        )
    error = None if command.error is None else {"type": command.error.type, "message": command.error.message}
    output = (
        '{"run_id":'
        + json.dumps(command.child_run_id)
        + ',"status":'
        + json.dumps(command.status)
        + ',"output":'
        + (command.output if command.output is not None else "null")
        + ',"error":'
        + json.dumps(error, separators=(",", ":"))
        + "}"
    )
    builder = _Builder(state, command.run_id, command.now_ms)
    builder.complete_step(command.step_index, pending.name, StepKind.INVOKE, output)
    builder.continue_if_idle()
    return builder.events
