"""What every handler of ``decide`` shares: the ``Builder`` a decision appends its events through,
the ``Defaults`` it decides under, and the helpers more than one handler needs.

Apart from ``decide`` and its handlers so that all of them import it without a cycle: ``decide``
imports the handlers' modules, and they import this one.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstream.core.commands import Rejected
from stepstream.core.events import Event, FailureHandlerScheduled, RunFailed, StepCompleted, StepScheduled
from stepstream.core.messages import ErrorInfo, FlowControl, StepKind, flow_control_problem
from stepstream.core.retry import backoff_ms, check_delay_rule, delay_rule_ms
from stepstream.core.state import RunState, evolve


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


class Builder:
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


def duplicate(message: str) -> Rejected:
    """A repeat or late command: expected under at-least-once delivery, it changes nothing."""
    return Rejected(reason=message, duplicate=True)


def option_problem(retry_delay: str | None, flow: FlowControl | None) -> str | None:
    """What is wrong with a run's, call's or child run's retry delay rule or flow control, if anything."""
    if retry_delay is not None:
        try:
            check_delay_rule(retry_delay)
        except ValueError as error:
            return str(error)
    return None if flow is None else flow_control_problem(flow)


def retry_delay_ms(rule: str | None, step_attempt: int, base_ms: int, defaults: Defaults) -> int:
    """How long after attempt ``step_attempt`` failed the next is due: by the delay rule, else the backoff."""
    if rule is not None:
        try:
            return delay_rule_ms(rule, retried=step_attempt - 1, max_ms=defaults.retry_max_ms)
        except ValueError:
            pass  # checked when the rule was given; a rule that fails for a later retry falls back to the backoff
    return backoff_ms(step_attempt, base_ms, defaults.retry_max_ms)
