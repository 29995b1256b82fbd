"""Commands (requests to change a run) and events (facts appended to a run's stream).

Commands are in the imperative, events in the past tense. Every value that carries user data
(payloads, step outputs) is JSON text: the core never needs to look inside it, so it passes it on
byte for byte instead of decoding and encoding it again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class StepKind(StrEnum):
    """What a step does."""

    RUN = "run"  # user code, run by the SDK inside a delivery
    SLEEP = "sleep"
    SLEEP_UNTIL = "sleep_until"
    CALL = "call"  # an HTTP call the executor makes on the run's behalf
    WAIT_FOR_EVENT = "wait_for_event"
    NOTIFY = "notify"  # wakes the runs waiting on an event id
    INVOKE = "invoke"  # a child run


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


FLOW_KEY_MAX_LENGTH = 200
FLOW_PERIOD_MAX_MS = 7 * 24 * 3_600_000  # a week: longer windows are better served by a sleep
FLOW_LIMIT_MAX = 1_000_000_000  # a rate or a parallelism: far beyond any real limit, and fits every record


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowControl:
    """Limits shared by all work under one flow-control key (docs/flow-control.md).

    ``rate`` starts per ``period_ms`` (a sliding window) and ``parallelism`` deliveries started and
    not yet settled; either may be None (no such limit). Each queued delivery carries its own copy,
    so a change of limits applies to work queued after it.
    """

    key: str
    rate: int | None = None
    period_ms: int = 1_000
    parallelism: int | None = None

    @property
    def limits(self) -> tuple[int | None, int, int | None]:
        return (self.rate, self.period_ms, self.parallelism)


def flow_control_problem(flow: FlowControl) -> str | None:
    """Why ``flow`` is not a valid setting ("Expected …, but …"), or None if it is."""
    if not flow.key or len(flow.key) > FLOW_KEY_MAX_LENGTH:
        return f"Expected a flow-control key of 1 to {FLOW_KEY_MAX_LENGTH} characters, but got {len(flow.key)}"
    if flow.rate is not None and not 1 <= flow.rate <= FLOW_LIMIT_MAX:
        return f"Expected a flow-control rate from 1 to {FLOW_LIMIT_MAX:,} starts per period, but got {flow.rate}"
    if not 1 <= flow.period_ms <= FLOW_PERIOD_MAX_MS:
        return f"Expected a flow-control period from 1 ms to 7 days, but got {flow.period_ms} ms"
    if flow.parallelism is not None and not 1 <= flow.parallelism <= FLOW_LIMIT_MAX:
        return f"Expected a flow-control parallelism from 1 to {FLOW_LIMIT_MAX:,}, but got {flow.parallelism}"
    return None


# ---------------------------------------------------------------------------------------------
# What a delivery ended with: the SDK's answer, or the executor's account of why there was none.


@dataclass(frozen=True, slots=True, kw_only=True)
class Continue:
    """The endpoint ran out of its time budget; the next step needs another delivery."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Continuing:
    """Not an end: the executor goes on with the delivery itself, and reports the steps done so far.

    The hot path: the executor makes each step durable by reporting it (one produce) before it asks
    the endpoint for the next, instead of ending the delivery and waiting for the projector to
    schedule another. The delivery stays in flight; its later reports carry the following steps.
    """


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


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanRun:
    """A ``run`` step started alongside others: it gets a delivery of its own that executes only it."""

    index: int
    name: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanSleep:
    """A sleep: ``duration_ms`` from when the report is applied (kind sleep), or until ``wake_at_ms``."""

    index: int
    name: str
    kind: StepKind  # SLEEP or SLEEP_UNTIL
    duration_ms: int | None = None
    wake_at_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSpec:
    """An HTTP request the executor makes for a ``call`` step, and how hard it tries."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: str | None  # the request body as text; None: no body
    timeout_ms: int
    retries: int  # further attempts after the first, on no answer, 5xx, 408, 425 or 429
    retry_delay: str | None = None  # a delay rule (see ``core.retry``); None: exponential from 1 s
    flow: FlowControl | None = None  # the call's own key and limits; None: not throttled


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanCall:
    index: int
    name: str
    call: CallSpec


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanWait:
    """Wait until an event with ``event_id`` is notified, or ``timeout_ms`` has passed."""

    index: int
    name: str
    event_id: str
    timeout_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanNotify:
    """Notify ``event_id`` with ``data``; the step's result is the list of runs that were waiting."""

    index: int
    name: str
    event_id: str
    data: str  # JSON text


@dataclass(frozen=True, slots=True, kw_only=True)
class PlanInvoke:
    """Start a child run of ``workflow`` and resume with how it ended.

    ``url`` None: the parent's URL with its last path segment replaced by ``workflow`` (a workflow
    served by the same app). Unset options inherit the engine's defaults; the parent's headers are
    sent too, with ``headers`` added after them.
    """

    index: int
    name: str
    workflow: str
    url: str | None
    payload: str  # JSON text
    headers: tuple[tuple[str, str], ...] = ()
    label: str | None = None
    retries: int | None = None
    retry_delay: str | None = None
    flow: FlowControl | None = None  # the child run's flow control; None: none


PlannedStep = PlanRun | PlanSleep | PlanCall | PlanWait | PlanNotify | PlanInvoke


@dataclass(frozen=True, slots=True, kw_only=True)
class Suspend:
    """The workflow is blocked on these steps, started together (one, or several awaited in parallel).

    The engine starts each; when every one of them has a result it delivers again.
    """

    steps: tuple[PlannedStep, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Cancel:
    """The workflow cancelled its own run (``ctx.cancel()``)."""

    reason: str | None = None


Outcome = Continue | SleepFor | SleepUntil | Complete | Fail | Suspend | Cancel | Continuing


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
    retry_delay: str | None = None  # a delay rule (see ``core.retry``); None: exponential from retry_base_ms
    failure_url: str | None = None  # where the failure handler is called; None: the workflow's own url
    parent_run_id: str | None = None  # set for a child run started by ``invoke``
    parent_step_index: int | None = None
    depth: int = 0  # 0 for a run triggered from outside; a child's is its parent's plus one
    flow: FlowControl | None = None  # every delivery of the run is under these limits; None: none


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
    """A timer of the run is due: a sleep ends, a wait times out, or a call's deadline passes."""

    run_id: str
    step_index: int
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportCall:
    """The executor's account of one attempt of a ``call`` step.

    ``status`` 0 with ``error`` set: no HTTP answer (unreachable, timed out). ``body`` is the
    response body as JSON text: its JSON value if it was JSON, else a JSON string of its text.
    """

    run_id: str
    step_index: int
    attempt: int
    now_ms: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: str
    error: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReceiveEvent:
    """A notification for an event id the run is waiting on (sent by the event id's waiter index)."""

    run_id: str
    step_index: int
    event_id: str
    data: str  # JSON text
    now_ms: int
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportNotify:
    """The answer to the run's ``notify`` step: the runs that were waiting and were woken."""

    run_id: str
    step_index: int
    notified: tuple[str, ...]
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ChildFinished:
    """A child run this run invoked ended (``status`` completed, failed or cancelled)."""

    run_id: str  # the parent's
    step_index: int
    child_run_id: str
    status: str
    output: str | None  # JSON text, when completed
    error: ErrorInfo | None
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRun:
    """Stop the run: no further deliveries; results that arrive later are recorded as ignored."""

    run_id: str
    reason: str | None
    now_ms: int
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


class Recovery(StrEnum):
    """What an operator does with a failed run in the dead-letter list."""

    RESUME = "resume"  # from the failed step, keeping the recorded results
    RESTART = "restart"  # from the start, recorded results set aside
    DELETE = "delete"  # take it off the dead-letter list; the run and its history stay


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverRun:
    run_id: str
    action: Recovery
    now_ms: int
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before
    reason: str | None = None  # why, as the operator gave it


Command = (
    TriggerRun
    | ReportDelivery
    | FireTimer
    | ReportCall
    | ReceiveEvent
    | ReportNotify
    | ChildFinished
    | CancelRun
    | RecoverRun
)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """A command that cannot be applied; ``reason`` reads "Expected …, but …"."""

    reason: str
    duplicate: bool = field(default=False)
