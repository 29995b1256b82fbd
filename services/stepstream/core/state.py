"""A run's state, and ``evolve``: the only code that changes it.

The state is the left fold of the run's events through :func:`evolve`, starting from ``None``.
Replaying a run's ``events`` must give exactly the snapshot the projector keeps in ``runs``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import assert_never

from stepstream.core.messages import (
    ErrorInfo,
    Event,
    RunCompleted,
    RunFailed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepKind,
    StepScheduled,
)


class RunStatus(StrEnum):
    RUNNING = "running"  # a delivery is scheduled or in flight
    SLEEPING = "sleeping"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def terminal(self) -> bool:
        return self in (RunStatus.COMPLETED, RunStatus.FAILED)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PendingSleep:
    step_index: int
    name: str
    kind: StepKind
    wake_at_ms: int


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
    steps: tuple[RecordedStep, ...]
    deliveries: int  # how many deliveries have been scheduled, retries included; numbers the next one
    pending_delivery: PendingDelivery | None
    pending_sleep: PendingSleep | None
    output: str | None
    error: ErrorInfo | None

    @property
    def next_step_index(self) -> int:
        return len(self.steps)


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
            pending_delivery=None,
            pending_sleep=None,
            output=None,
            error=None,
        )
    if state is None:
        raise ValueError(
            f"Expected RunStarted as the first event of run {event.run_id}, but got {type(event).__name__}"
        )
    state = replace(state, seq=event.seq, updated_at_ms=event.at_ms)
    match event:
        case StepScheduled():
            return replace(
                state,
                status=RunStatus.RUNNING,
                deliveries=state.deliveries + 1,
                pending_delivery=PendingDelivery(
                    delivery_id=event.delivery_id,
                    step_index=event.step_index,
                    attempt=event.attempt,
                    not_before_ms=event.not_before_ms,
                ),
                pending_sleep=None,
            )
        case StepCompleted():
            step = RecordedStep(index=event.step_index, name=event.name, kind=event.kind, output=event.output)
            return replace(state, steps=(*state.steps, step), pending_sleep=None)
        case StepFailed():
            return replace(state, pending_delivery=None)
        case SleepStarted():
            return replace(
                state,
                status=RunStatus.SLEEPING,
                pending_delivery=None,
                pending_sleep=PendingSleep(
                    step_index=event.step_index, name=event.name, kind=event.kind, wake_at_ms=event.wake_at_ms
                ),
            )
        case RunCompleted():
            return replace(state, status=RunStatus.COMPLETED, pending_delivery=None, output=event.output)
        case RunFailed():
            return replace(state, status=RunStatus.FAILED, pending_delivery=None, pending_sleep=None, error=event.error)
        case RunStarted():  # handled above; here for exhaustiveness
            raise ValueError(f"Expected one RunStarted per run, but run {event.run_id} got a second")
        case _:
            assert_never(event)


def fold(events: list[Event] | tuple[Event, ...]) -> RunState | None:
    state: RunState | None = None
    for event in events:
        state = evolve(state, event)
    return state
