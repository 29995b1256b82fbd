"""What the projector asks of the rest of the engine after a decision: deliveries and timers.

These records go to the ``schedule`` topic (or, on the fast path, straight to ``deliveries``) in the
same transaction as the events that caused them.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstream.core.messages import Event, SleepStarted, StepScheduled
from stepstream.core.state import RecordedStep, RunState


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivery:
    """One call of the workflow endpoint, carrying what the SDK needs to replay the run."""

    run_id: str
    workflow: str
    url: str
    delivery_id: str
    attempt: int
    step_index: int
    payload: str
    steps: tuple[RecordedStep, ...]
    headers: tuple[tuple[str, str], ...]

    @property
    def request_id(self) -> str:
        return f"{self.delivery_id}#{self.attempt}"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryRequested:
    """A delivery to emit once it is due (and, with a later issue, allowed by flow control)."""

    request_id: str
    not_before_ms: int
    flow_key: str | None
    delivery: Delivery


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerRequested:
    """A sleep to wake: at ``due_ms`` the scheduler sends ``FireTimer`` to ``commands``."""

    request_id: str
    run_id: str
    step_index: int
    due_ms: int


ScheduleRecord = DeliveryRequested | TimerRequested


def timer_request_id(run_id: str, step_index: int) -> str:
    return f"{run_id}/sleep/{step_index}"


def effects(state: RunState, events: list[Event]) -> list[ScheduleRecord]:
    """The schedule records that ``events`` (just decided, already folded into ``state``) call for."""
    records: list[ScheduleRecord] = []
    for event in events:
        if isinstance(event, StepScheduled):
            delivery = Delivery(
                run_id=state.run_id,
                workflow=state.workflow,
                url=state.url,
                delivery_id=event.delivery_id,
                attempt=event.attempt,
                step_index=event.step_index,
                payload=state.payload,
                steps=state.steps,
                headers=state.headers,
            )
            records.append(
                DeliveryRequested(
                    request_id=delivery.request_id,
                    not_before_ms=event.not_before_ms,
                    flow_key=None,
                    delivery=delivery,
                )
            )
        elif isinstance(event, SleepStarted):
            records.append(
                TimerRequested(
                    request_id=timer_request_id(event.run_id, event.step_index),
                    run_id=event.run_id,
                    step_index=event.step_index,
                    due_ms=event.wake_at_ms,
                )
            )
    return records


def deliverable_now(record: ScheduleRecord, now_ms: int) -> Delivery | None:
    """The fast path: a delivery due now and under no flow limit skips the scheduler's hop."""
    if isinstance(record, DeliveryRequested) and record.flow_key is None and record.not_before_ms <= now_ms:
        return record.delivery
    return None
