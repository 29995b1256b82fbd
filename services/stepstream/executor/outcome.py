"""What an endpoint's answer means for the run: HTTP results as core outcomes. Pure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from typing import assert_never

from pydantic import ValidationError

from stepstream.core import (
    RETRYABLE_CLIENT_STATUSES,
    CallSpec,
    Cancel,
    Complete,
    Continue,
    ErrorInfo,
    Fail,
    FlowControl,
    Outcome,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    ReportDelivery,
    SleepFor,
    SleepUntil,
    StepKind,
    StepResult,
    Suspend,
)
from stepstream.protocol import (
    MAX_DELAY_MS,
    UNKNOWN_SESSION,
    CancelNext,
    CompleteNext,
    ContinueNext,
    DeliveryResponse,
    FailNext,
    FlowControlSpec,
    Next,
    PlannedCall,
    PlannedInvoke,
    PlannedNotify,
    PlannedRun,
    PlannedSleep,
    PlannedSleepUntil,
    PlannedWait,
    SleepNext,
    SuspendNext,
)

_MAX_MESSAGE = 2_000


def json_text(value: object) -> str:
    """``value`` as compact JSON text; ``ValueError`` for NaN and Infinity."""
    # NaN and Infinity are not JSON: refuse them here rather than store what no reader can parse.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, slots=True)
class Reply:
    """What an endpoint's answer to one request of a delivery says."""

    steps: tuple[StepResult, ...]
    outcome: Outcome
    session_kept: bool = False  # the SDK keeps the workflow waiting: the next request may ``resume``
    unknown_session: bool = False  # a ``resume`` found no session there: send the whole delivery


def from_response(status: int, body: bytes, retry_after_s: float | None) -> tuple[tuple[StepResult, ...], Outcome]:
    """The completed steps and the outcome of a delivery whose endpoint answered ``status``."""
    reply = reply_of(status, body, retry_after_s)
    return reply.steps, reply.outcome


def reply_of(status: int, body: bytes, retry_after_s: float | None) -> Reply:
    """The completed steps, the outcome and the session of an endpoint's answer ``status``."""
    if status == 200:
        try:
            response = DeliveryResponse.model_validate_json(body)
            steps = tuple(
                StepResult(index=step.index, name=step.name, kind=StepKind.RUN, output=json_text(step.output))
                for step in response.steps
            )
            return Reply(steps, _next(response.next), session_kept=response.session == "kept")
        except (ValidationError, ValueError) as error:
            message = f"endpoint answered 200 with a body that is not a delivery response: {error}"
            failed = Fail(error=ErrorInfo(type="InvalidResponse", message=message[:_MAX_MESSAGE]), retryable=True)
            return Reply((), failed)
    if status == 409 and _error_code(body) == UNKNOWN_SESSION:
        return Reply((), Continue(), unknown_session=True)
    return Reply((), _failure(status, body, retry_after_s))


def _failure(status: int, body: bytes, retry_after_s: float | None) -> Fail:
    detail = _error_message(body)
    retryable = status >= 500 or status in RETRYABLE_CLIENT_STATUSES or _replayed(status, body)
    retry_after_ms = int(retry_after_s * 1000) if retry_after_s is not None and retryable else None
    return Fail(
        error=ErrorInfo(type=f"HTTP{status}", message=f"endpoint answered {status}: {detail}"[:_MAX_MESSAGE]),
        retryable=retryable,
        retry_after_ms=retry_after_ms,
    )


def from_transport_error(kind: str, message: str) -> Outcome:
    """The endpoint could not be reached or did not answer in time: always worth another attempt."""
    return Fail(error=ErrorInfo(type=kind, message=message[:_MAX_MESSAGE]), retryable=True)


def unrecordable_delivery(report: ReportDelivery, reason: str) -> ReportDelivery:
    """``report`` in a form that can always be written, for an answer the records cannot hold: a
    failure saying why, without the steps. Not retried: the steps would run again and answer the same
    (a step's output over the record limit), and a run that waits on it would wait for ever."""
    message = f"the endpoint's answer cannot be recorded: {reason}"
    outcome = Fail(error=ErrorInfo(type="RecordTooLarge", message=message[:_MAX_MESSAGE]), retryable=False)
    return replace(report, steps=(), outcome=outcome)


def _next(next_: Next) -> Outcome:
    match next_:
        case ContinueNext():
            return Continue()
        case SleepNext(duration_ms=int() as duration):
            return SleepFor(index=next_.index, name=next_.name, duration_ms=duration)
        case SleepNext(wake_at_ms=int() as wake_at):
            return SleepUntil(index=next_.index, name=next_.name, wake_at_ms=wake_at)
        case SleepNext():
            return Fail(
                error=ErrorInfo(type="InvalidResponse", message="a sleep needs duration_ms or wake_at_ms"),
                retryable=False,
            )
        case CompleteNext():
            return Complete(output=json_text(next_.output))
        case FailNext():
            return Fail(
                error=ErrorInfo(type=next_.error.type, message=next_.error.message[:_MAX_MESSAGE]),
                retryable=next_.retryable,
                retry_after_ms=next_.retry_after_ms,
                step_index=next_.index,
                step_name=next_.name,
            )
        case SuspendNext():
            indexes = [step.index for step in next_.steps]
            if len(set(indexes)) != len(indexes):
                # The same answer would come again: fail the run with the reason rather than retry it.
                message = f"a suspension names each step once, but this one names steps {indexes}"
                return Fail(error=ErrorInfo(type="InvalidResponse", message=message[:_MAX_MESSAGE]), retryable=False)
            return Suspend(steps=tuple(_planned(step) for step in next_.steps))
        case CancelNext():
            return Cancel(reason=next_.reason)
        case _:
            assert_never(next_)


def _planned(
    step: PlannedRun | PlannedSleep | PlannedSleepUntil | PlannedCall | PlannedWait | PlannedNotify | PlannedInvoke,
) -> PlannedStep:
    match step:
        case PlannedRun():
            return PlanRun(index=step.index, name=step.name)
        case PlannedSleep():
            return PlanSleep(index=step.index, name=step.name, kind=StepKind.SLEEP, duration_ms=step.duration_ms)
        case PlannedSleepUntil():
            return PlanSleep(index=step.index, name=step.name, kind=StepKind.SLEEP_UNTIL, wake_at_ms=step.wake_at_ms)
        case PlannedCall():
            call = CallSpec(
                method=step.method,
                url=step.url,
                headers=_headers(step.headers),
                body=step.body,
                timeout_ms=step.timeout_ms,
                retries=step.retries,
                retry_delay=step.retry_delay,
                flow=_flow(step.flow_control),
            )
            return PlanCall(index=step.index, name=step.name, call=call)
        case PlannedWait():
            return PlanWait(index=step.index, name=step.name, event_id=step.event_id, timeout_ms=step.timeout_ms)
        case PlannedNotify():
            return PlanNotify(index=step.index, name=step.name, event_id=step.event_id, data=json_text(step.data))
        case PlannedInvoke():
            return PlanInvoke(
                index=step.index,
                name=step.name,
                workflow=step.workflow,
                url=step.url,
                payload=json_text(step.payload),
                headers=_headers(step.headers),
                label=step.label,
                retries=step.retries,
                retry_delay=step.retry_delay,
                flow=_flow(step.flow_control),
            )
        case _:
            assert_never(step)


def _flow(flow: FlowControlSpec | None) -> FlowControl | None:
    # The protocol's bounds lie within the core's (``flow_control_problem``): a valid answer is a valid setting.
    if flow is None:
        return None
    return FlowControl(key=flow.key, rate=flow.rate, period_ms=flow.period_ms, parallelism=flow.parallelism)


def _headers(headers: list[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((name, value) for name, value in headers)


def _replayed(status: int, body: bytes) -> bool:
    """The SDK's 409 ``replayed``: a copy of this very request (same nonce) reached the endpoint first
    and was accepted, so only the way back failed, as when an answer is lost. Retried, like a
    timeout; a new delivery is signed anew. Any other 409 is the endpoint's own and final."""
    return status == 409 and _error_code(body) == "replayed"


def _error_code(body: bytes) -> str | None:
    """The ``error`` of an SDK's error answer (an ``ErrorBody``), if it is one."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    code = data.get("error") if isinstance(data, dict) else None
    return code if isinstance(code, str) else None


def _error_message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:500].decode(errors="replace") or "(empty body)"
    if isinstance(data, dict) and "message" in data:
        return str(data["message"])
    return json.dumps(data)[:500]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header, at most about a hundred years; None if there is none."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None  # an HTTP date: rare for these endpoints; fall back to the backoff
    if not math.isfinite(seconds):
        return None
    return min(max(0.0, seconds), MAX_DELAY_MS / 1000)
