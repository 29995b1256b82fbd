"""Pending steps the engine carries out for a run (sleeps, calls, waits, notifications, child runs):
how each starts when a workflow suspends on it, and how its result arrives from outside a delivery
(a timer, a call's answer, a notification, a notify's answer, a child's end).

Apart from :mod:`~stepstream.core.deliveries` because these results come back as commands of their
own, not in a delivery's report; a ``run`` step started in parallel (a branch) starts here too,
with a delivery of its own.
"""

from __future__ import annotations

import json
from typing import assert_never

from stepstream.core.commands import ChildFinished, FireTimer, ReceiveEvent, Rejected, ReportCall, ReportNotify
from stepstream.core.decision import Builder, Defaults, duplicate, option_problem, retry_delay_ms
from stepstream.core.events import (
    CallRetried,
    CallStarted,
    Event,
    EventReceived,
    InvokeStarted,
    NotifyStarted,
    SleepStarted,
    WaitStarted,
    WaitTimedOut,
)
from stepstream.core.messages import ErrorInfo, StepKind
from stepstream.core.outcomes import PlanCall, PlanInvoke, PlannedStep, PlanNotify, PlanRun, PlanSleep, PlanWait
from stepstream.core.retry import RETRYABLE_CLIENT_STATUSES
from stepstream.core.state import (
    PendingCall,
    PendingInvoke,
    PendingNotify,
    PendingSleep,
    PendingWait,
    RunState,
    call_output,
)


def child_run_id(parent_run_id: str, step_index: int) -> str:
    """A child's id follows from its parent's step, so the parent can never start it twice."""
    return f"{parent_run_id}.{step_index}"


def child_url(parent_url: str, workflow: str) -> str:
    """The URL of ``workflow`` served by the same app as the parent: its last path segment replaced."""
    base, _, _ = parent_url.partition("?")
    return f"{base.rstrip('/').rpartition('/')[0]}/{workflow}"


def start(builder: Builder, plan: PlannedStep, defaults: Defaults) -> Rejected | None:
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
            if (problem := option_problem(plan.call.retry_delay, plan.call.flow)) is not None:
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
            if (problem := option_problem(plan.retry_delay, plan.flow)) is not None:
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


def fire_timer(state: RunState, command: FireTimer, defaults: Defaults) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    builder = Builder(state, command.run_id, command.now_ms)
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
            return duplicate(
                f"Expected a timer for a pending sleep, wait or call of run {command.run_id}, but step "
                f"{command.step_index} is {type(pending).__name__ if pending else 'not pending'} "
                "(a duplicate, or a timer for an earlier attempt)"
            )
    builder.continue_if_idle()
    return builder.events


def report_call(state: RunState, command: ReportCall, defaults: Defaults) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingCall) or pending.attempt != command.attempt:
        return duplicate(
            f"Expected the answer to a pending call of run {command.run_id}, but step {command.step_index} attempt "
            f"{command.attempt} is not pending (a duplicate or late report)"
        )
    builder = Builder(state, command.run_id, command.now_ms)
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
    builder: Builder,
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
    retryable = error is not None or status >= 500 or status in RETRYABLE_CLIENT_STATUSES
    if retryable and pending.attempt <= call.retries:
        delay = retry_delay_ms(call.retry_delay, pending.attempt, defaults.retry_base_ms, defaults)
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


def receive_event(state: RunState, command: ReceiveEvent) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingWait) or pending.event_id != command.event_id:
        return duplicate(
            f"Expected step {command.step_index} of run {command.run_id} to wait on event {command.event_id!r}, "
            "but it does not (it timed out, or the notification is a duplicate)"
        )
    builder = Builder(state, command.run_id, command.now_ms)
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


def report_notify(state: RunState, command: ReportNotify) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingNotify):
        return duplicate(f"Expected step {command.step_index} of run {command.run_id} to be a pending notify")
    builder = Builder(state, command.run_id, command.now_ms)
    builder.complete_step(
        command.step_index, pending.name, StepKind.NOTIFY, json.dumps(list(command.notified), separators=(",", ":"))
    )
    builder.continue_if_idle()
    return builder.events


def child_finished(state: RunState, command: ChildFinished) -> list[Event] | Rejected:
    pending = state.pending(command.step_index)
    if not isinstance(pending, PendingInvoke) or pending.child_run_id != command.child_run_id:
        return duplicate(
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
    builder = Builder(state, command.run_id, command.now_ms)
    builder.complete_step(command.step_index, pending.name, StepKind.INVOKE, output)
    builder.continue_if_idle()
    return builder.events
