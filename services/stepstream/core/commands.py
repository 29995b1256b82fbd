"""Commands: requests to change a run, in the imperative, and ``Rejected``, the answer to one that
cannot be applied.

The projector decides each into events (:mod:`stepstream.core.events`) or a ``Rejected``. The
waiter index has commands of its own (:mod:`stepstream.core.waiters`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from stepstream.core.messages import ErrorInfo, FlowControl, StepResult
from stepstream.core.outcomes import Outcome

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected:
    """A command that cannot be applied; ``reason`` reads "Expected …, but …"."""

    reason: str
    duplicate: bool = field(default=False)
