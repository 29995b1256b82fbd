"""What the query store answers: a run, one of its steps, a run waiting on an event id, a flow-control key."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Final

from stepstream.core.state import RunStatus

# The core's statuses, as the store keeps them. A run in one of the ended ones accepts no cancel, and
# only a failed one may be recovered.
ENDED_STATUSES: Final = tuple(status.value for status in RunStatus if status.terminal)
ACTIVE_STATUSES: Final = tuple(status.value for status in RunStatus if not status.terminal)
RUN_STATUSES: Final = ACTIVE_STATUSES + ENDED_STATUSES


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    run_id: str
    workflow: str
    url: str
    status: str  # one of RUN_STATUSES
    label: str | None
    payload: Any
    output: Any
    error: dict[str, str] | None
    steps: int  # how many steps have a result
    wake_at_ms: int | None  # the earliest wake time of the run's pending sleeps; scheduled: when it starts
    created_at_ms: int
    updated_at_ms: int
    last_seq: int
    parent_run_id: str | None = None  # the run that invoked this one
    dead_letter: bool = False  # failed, and not yet resumed, restarted or deleted from the dead-letter list
    cancel_reason: str | None = None

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class HistoryPage:
    """A page of a run's history with the run as it stood then (:meth:`QueryStore.history_page`)."""

    run: RunRow | None  # None: the store does not know the run (yet)
    events: list[dict[str, Any]]  # in order of seq, as the history shows them
    last_type: str | None  # the type of the run's last event, at ``run.last_seq``

    @property
    def settled(self) -> bool:
        """The run has ended, and its last event is not a ``RunFailed`` whose ``FailureHandlerScheduled``
        (which the engine writes with it, in one transaction) the store has yet to show."""
        return self.run is not None and self.run.ended and self.last_type != "RunFailed"


@dataclass(frozen=True, slots=True, kw_only=True)
class StepRow:
    """A step of a run: ``pending`` from when the engine started it, ``completed`` once it has a result.

    A ``run`` step executed inside a delivery has no separate start: its ``started_at_ms`` is when its
    result was recorded. ``detail`` holds what the step is waiting on, by kind: a sleep's
    ``wake_at_ms``, a call's ``method``, ``url`` and ``attempt``, a wait's ``event_id`` and
    ``timeout_at_ms``, a notify's ``event_id``, an invoke's ``child_run_id`` and ``workflow``.
    """

    index: int
    name: str
    kind: str
    status: str  # "pending" or "completed"
    output: Any  # the step's result as a JSON value; None while pending
    started_at_ms: int
    completed_at_ms: int | None
    detail: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class WaiterRow:
    """A run's step waiting on an event id, as the indexer last saw it."""

    event_id: str
    run_id: str
    step_index: int
    timeout_at_ms: int
    since_ms: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowKeyRow:
    """A flow-control key as its scheduler last published it, at ``updated_at_ms`` (at most about once a
    second while it changes): work queued under its limits, deliveries in flight, starts in the current
    rate window, and the limits in force (``rate`` and ``parallelism`` None: no such limit)."""

    key: str
    queued: int
    in_flight: int
    starts_in_window: int
    rate: int | None
    period_ms: int
    parallelism: int | None
    updated_at_ms: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
