"""``decide``: what a command means for a run, as events, or why it cannot be applied.

No I/O, clock or randomness: ``now`` arrives on the command.

This module dispatches; the handlers live by concept: :mod:`~stepstream.core.lifecycle` (trigger,
cancel, recover a run), :mod:`~stepstream.core.deliveries` (a delivery's report, retries, the
failure handler) and :mod:`~stepstream.core.pending` (the steps the engine carries out: sleeps,
calls, waits, notifications, child runs). :mod:`~stepstream.core.decision` holds what they share.
"""

from __future__ import annotations

from typing import assert_never

from stepstream.core.commands import (
    CancelRun,
    ChildFinished,
    Command,
    FireTimer,
    ReceiveEvent,
    RecoverRun,
    Rejected,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    TriggerRun,
)
from stepstream.core.decision import Builder, Defaults, duplicate
from stepstream.core.deliveries import report
from stepstream.core.events import Event, ResultIgnored
from stepstream.core.lifecycle import cancel, recover, trigger
from stepstream.core.messages import ErrorInfo
from stepstream.core.pending import child_finished, fire_timer, receive_event, report_call, report_notify
from stepstream.core.state import RunState, RunStatus


def decide(
    state: RunState | None,
    command: Command,
    # Defaults is frozen, so one instance serves every call; ruff cannot tell from another module.
    defaults: Defaults = Defaults(),  # noqa: B008
) -> list[Event] | Rejected:
    match command:
        case TriggerRun():
            return trigger(state, command, defaults)
        case CancelRun():
            return cancel(state, command)
        case RecoverRun():
            return recover(state, command)
        case ReportDelivery() | FireTimer() | ReportCall() | ReceiveEvent() | ReportNotify() | ChildFinished():
            if state is None:
                return Rejected(reason=f"Expected a command for a known run, but run {command.run_id} does not exist")
            if state.status is RunStatus.CANCELLED and not isinstance(command, FireTimer):
                return _ignored(state, command)
            match command:
                case ReportDelivery():
                    return report(state, command, defaults)
                case FireTimer():
                    return fire_timer(state, command, defaults)
                case ReportCall():
                    return report_call(state, command, defaults)
                case ReceiveEvent():
                    return receive_event(state, command)
                case ReportNotify():
                    return report_notify(state, command)
                case ChildFinished():
                    return child_finished(state, command)
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
        return duplicate(f"Expected a run that has not ended, but run {state.run_id} is {state.status.value}")
    builder = Builder(state, state.run_id, now_ms)
    builder.fail_run(error)
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
