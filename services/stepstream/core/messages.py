"""Commands (requests to change a run) and events (facts appended to a run's stream).

Commands are in the imperative, events in the past tense. Every value that carries user data
(payloads, step outputs) is JSON text: the core never needs to look inside it, so it passes it on
byte for byte instead of decoding and encoding it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class StepKind(StrEnum):
    """What a step does. Later issues add call, wait_for_event and invoke."""

    RUN = "run"
    SLEEP = "sleep"
    SLEEP_UNTIL = "sleep_until"


# ---------------------------------------------------------------------------------------------
# Values shared by commands and events


@dataclass(frozen=True, slots=True, kw_only=True)
class StepResult:
    """A step that finished inside a delivery, as the endpoint reported it."""

    index: int
    name: str
    kind: StepKind
    output: str  # JSON text


@dataclass(frozen=True, slots=True, kw_only=True)
class ErrorInfo:
    """Why something failed: a type name and a human-readable message."""

    type: str
    message: str


# ---------------------------------------------------------------------------------------------
# What a delivery ended with: the SDK's answer, or the executor's account of why there was none.


@dataclass(frozen=True, slots=True, kw_only=True)
class Continue:
    """The endpoint ran out of its time budget; the next step needs another delivery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SleepFor:
    """The next step is a sleep of a duration, counted from when the report is applied."""

    index: int
    name: str
    duration_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SleepUntil:
    """The next step is a sleep until a wall-clock time (epoch milliseconds)."""

    index: int
    name: str
    wake_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Complete:
    """The workflow function returned."""

    output: str  # JSON text


@dataclass(frozen=True, slots=True, kw_only=True)
class Fail:
    """The delivery failed: the workflow raised, or the endpoint could not be reached or answered badly.

    ``retryable`` False fails the run at once; ``retry_after_ms`` (relative to the report) overrides
    the backoff for the next attempt.
    """

    error: ErrorInfo
    retryable: bool
    retry_after_ms: int | None = None
    step_index: int | None = None
    step_name: str | None = None


Outcome = Continue | SleepFor | SleepUntil | Complete | Fail


# ---------------------------------------------------------------------------------------------
# Commands


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerRun:
    """Start a run. Idempotent on ``run_id``: a second trigger with the same id is rejected."""

    run_id: str
    workflow: str
    url: str
    payload: str  # JSON text
    now_ms: int
    headers: tuple[tuple[str, str], ...] = ()
    label: str | None = None
    retries: int | None = None  # None: the projector's default
    retry_base_ms: int | None = None  # None: the projector's default
    not_before_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportDelivery:
    """The executor's report of one delivery: the steps it completed and how it ended."""

    run_id: str
    delivery_id: str
    attempt: int
    now_ms: int
    steps: tuple[StepResult, ...]
    outcome: Outcome


@dataclass(frozen=True, slots=True, kw_only=True)
class FireTimer:
    """A sleep of the run is due."""

    run_id: str
    step_index: int
    now_ms: int


Command = TriggerRun | ReportDelivery | FireTimer


# ---------------------------------------------------------------------------------------------
# Events. ``seq`` numbers a run's events from 1 without gaps; every consumer deduplicates by
# (run_id, seq).


@dataclass(frozen=True, slots=True, kw_only=True)
class RunStarted:
    run_id: str
    seq: int
    at_ms: int
    workflow: str
    url: str
    payload: str
    headers: tuple[tuple[str, str], ...]
    label: str | None
    retries: int
    retry_base_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepScheduled:
    """A delivery of the run is requested: the endpoint will be called to run step ``step_index``."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    delivery_id: str
    attempt: int
    not_before_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StepCompleted:
    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    kind: StepKind
    output: str
    delivery_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepFailed:
    """An attempt failed. ``retry_at_ms`` is when the next attempt is due, None if there is none."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str | None
    delivery_id: str
    attempt: int
    error: ErrorInfo
    retry_at_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class SleepStarted:
    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    kind: StepKind
    wake_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCompleted:
    run_id: str
    seq: int
    at_ms: int
    output: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunFailed:
    run_id: str
    seq: int
    at_ms: int
    error: ErrorInfo


Event = RunStarted | StepScheduled | StepCompleted | StepFailed | SleepStarted | RunCompleted | RunFailed


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """A command that cannot be applied; ``reason`` reads "Expected …, but …"."""

    reason: str
    duplicate: bool = field(default=False)
