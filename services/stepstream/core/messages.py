"""The values the messages are made of: step kinds, step results, errors, and flow control with its bounds.

The messages themselves live by kind, each module built on this one: :mod:`stepstream.core.commands`
(requests to change a run, in the imperative), :mod:`stepstream.core.outcomes` (how a delivery
ended, as its report says) and :mod:`stepstream.core.events` (facts appended to a run's stream, in
the past tense).

Every value that carries user data (payloads, step outputs) is JSON text: the core never needs to
look inside it, so it passes it on byte for byte instead of decoding and encoding it again.
"""

from __future__ import annotations

from dataclasses import dataclass
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
