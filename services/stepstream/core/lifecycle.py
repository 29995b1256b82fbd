"""Commands on a run as a whole: ``TriggerRun`` starts it, ``CancelRun`` stops it, ``RecoverRun``
takes it off the dead-letter list (resumed, restarted or deleted).

Apart from the other handlers because none of these answers a step: each acts on the run, whatever
its steps are doing.
"""

from __future__ import annotations

from stepstream.core.commands import CancelRun, RecoverRun, Recovery, Rejected, TriggerRun
from stepstream.core.decision import Builder, Defaults, option_problem
from stepstream.core.events import Event, RunCancelled, RunRecovered, RunStarted
from stepstream.core.state import RunState, RunStatus


def trigger(state: RunState | None, command: TriggerRun, defaults: Defaults) -> list[Event] | Rejected:
    if state is not None:
        return Rejected(
            reason=f"Expected a new run id, but run {command.run_id} already exists ({state.status.value})",
            duplicate=True,
        )
    if (problem := option_problem(command.retry_delay, command.flow)) is not None:
        return Rejected(reason=problem)
    builder = Builder(None, command.run_id, command.now_ms)
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


def cancel(state: RunState | None, command: CancelRun) -> list[Event] | Rejected:
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


def recover(state: RunState | None, command: RecoverRun) -> list[Event] | Rejected:
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
    builder = Builder(state, command.run_id, command.now_ms)
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
