"""Events: the facts appended to a run's stream, in the past tense, and ``Event``, their union.

Only ``evolve`` (:mod:`stepstream.core.state`) turns them into state. An event's meaning never
changes: a new shape is a new schema version in ``schemas/``, and ``stepstream.avro`` reads older
records into the current one.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstream.core.commands import Recovery
from stepstream.core.messages import ErrorInfo, FlowControl, StepKind
from stepstream.core.outcomes import CallSpec

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
    retry_delay: str | None = None
    failure_url: str | None = None
    parent_run_id: str | None = None
    parent_step_index: int | None = None
    depth: int = 0
    flow: FlowControl | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StepScheduled:
    """A delivery of the run is requested: the endpoint will be called to run step ``step_index``.

    ``execute_only``: the delivery runs that one step of several started in parallel, and nothing
    after it; otherwise the workflow replays and runs on from its first step without a result.
    """

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    delivery_id: str
    attempt: int
    not_before_ms: int
    execute_only: bool = False
    name: str | None = None  # the step's name, for an ``execute_only`` delivery


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
    # False: a failure no retry mends (a 4xx answer, a non-retryable error), so none was made whatever
    # the retries left; the history says so instead of "no retry left". None: written before this field.
    retryable: bool | None = None


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
class CallStarted:
    """The executor is asked to make the step's HTTP call (attempt 1); ``deadline_ms`` bounds the wait for it."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    call: CallSpec
    deadline_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRetried:
    """An attempt of a call got no usable answer; attempt ``attempt + 1`` is due at ``retry_at_ms``."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    attempt: int  # the attempt that failed
    status: int  # 0: no HTTP answer
    error: str
    retry_at_ms: int
    deadline_ms: int  # of the next attempt


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitStarted:
    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    event_id: str
    timeout_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EventReceived:
    """The wait ended with a notification; the step's result is ``{"timeout": false, "data": data}``."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    event_id: str
    data: str  # JSON text
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitTimedOut:
    """The wait ended without a notification; the step's result is ``{"timeout": true, "data": null}``."""

    run_id: str
    seq: int
    at_ms: int
    step_index: int
    event_id: str


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyStarted:
    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    event_id: str
    data: str  # JSON text


@dataclass(frozen=True, slots=True, kw_only=True)
class InvokeStarted:
    run_id: str
    seq: int
    at_ms: int
    step_index: int
    name: str
    child_run_id: str
    workflow: str
    url: str
    payload: str  # JSON text
    headers: tuple[tuple[str, str], ...]  # the child's, after the parent's
    label: str | None
    retries: int | None
    retry_delay: str | None
    flow: FlowControl | None = None


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RunCancelled:
    run_id: str
    seq: int
    at_ms: int
    reason: str | None
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultIgnored:
    """A result arrived for a run that had been cancelled: kept in the history, never applied."""

    run_id: str
    seq: int
    at_ms: int
    what: str  # which result, in words: "report of delivery run_x/3", "call step 2 answered 200"


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureHandlerScheduled:
    """The failed run's failure handler is to be called: a delivery with the error, to ``url``."""

    run_id: str
    seq: int
    at_ms: int
    delivery_id: str
    attempt: int
    not_before_ms: int
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureHandled:
    """The failure handler answered. (Records written before :class:`FailureHandlerFailed` existed
    also used this event, with ``error`` set, for a failed attempt: read them as that event.)"""

    run_id: str
    seq: int
    at_ms: int
    delivery_id: str
    attempt: int
    error: ErrorInfo | None
    retry_at_ms: int | None  # when ``error`` is set and another attempt is due


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureHandlerFailed:
    """An attempt of the failure handler failed: another is due at ``retry_at_ms``, or None is left.

    Its own event, not ``FailureHandled`` with an error, so that a history read line by line never
    shows "handled" for a handler that failed."""

    run_id: str
    seq: int
    at_ms: int
    delivery_id: str
    attempt: int
    error: ErrorInfo
    retry_at_ms: int | None
    retryable: bool  # False: a failure no retry mends, so none was made (as StepFailed.retryable)


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecovered:
    """An operator acted on the failed run: resumed it, restarted it, or deleted it from the dead-letter list."""

    run_id: str
    seq: int
    at_ms: int
    action: Recovery
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before
    reason: str | None = None  # why, as the operator gave it


Event = (
    RunStarted
    | StepScheduled
    | StepCompleted
    | StepFailed
    | SleepStarted
    | CallStarted
    | CallRetried
    | WaitStarted
    | EventReceived
    | WaitTimedOut
    | NotifyStarted
    | InvokeStarted
    | RunCompleted
    | RunFailed
    | RunCancelled
    | ResultIgnored
    | FailureHandlerScheduled
    | FailureHandled
    | FailureHandlerFailed
    | RunRecovered
)
