"""How a delivery ended, as its report says (``ReportDelivery.outcome``): the SDK's answer, or the
executor's account of why there was none; and the steps a suspension plans (``PlannedStep``).

Apart from the commands because an outcome is no request of its own: it is the end of one delivery,
which the report carries and ``decide`` matches on. ``CallSpec`` lives with ``PlanCall``; the
``CallStarted`` event carries it on.
"""

from __future__ import annotations

from dataclasses import dataclass

from stepstream.core.messages import ErrorInfo, FlowControl, StepKind

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
