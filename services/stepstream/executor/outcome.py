"""What an endpoint's answer means for the run: HTTP results as core outcomes. Pure."""

from __future__ import annotations

import json
import math

from pydantic import ValidationError

from stepstream.core import Complete, Continue, ErrorInfo, Fail, Outcome, SleepFor, SleepUntil, StepKind, StepResult
from stepstream.protocol import MAX_DELAY_MS, CompleteNext, ContinueNext, DeliveryResponse, FailNext, SleepNext

# Answers that say "try again later" rather than "this request is wrong".
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
_MAX_MESSAGE = 2_000


def _json(value: object) -> str:
    # NaN and Infinity are not JSON: refuse them here rather than store what no reader can parse.
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def from_response(status: int, body: bytes, retry_after_s: float | None) -> tuple[tuple[StepResult, ...], Outcome]:
    """The completed steps and the outcome of a delivery whose endpoint answered ``status``."""
    if status == 200:
        try:
            response = DeliveryResponse.model_validate_json(body)
            steps = tuple(
                StepResult(index=step.index, name=step.name, kind=StepKind.RUN, output=_json(step.output))
                for step in response.steps
            )
            return steps, _next(response.next)
        except (ValidationError, ValueError) as error:
            message = f"endpoint answered 200 with a body that is not a delivery response: {error}"
            return (), Fail(error=ErrorInfo(type="InvalidResponse", message=message[:_MAX_MESSAGE]), retryable=True)
    detail = _error_message(body)
    retryable = status >= 500 or status in _RETRYABLE_CLIENT_ERRORS
    retry_after_ms = int(retry_after_s * 1000) if retry_after_s is not None and retryable else None
    return (), Fail(
        error=ErrorInfo(type=f"HTTP{status}", message=f"endpoint answered {status}: {detail}"[:_MAX_MESSAGE]),
        retryable=retryable,
        retry_after_ms=retry_after_ms,
    )


def from_transport_error(kind: str, message: str) -> Outcome:
    """The endpoint could not be reached or did not answer in time: always worth another attempt."""
    return Fail(error=ErrorInfo(type=kind, message=message[:_MAX_MESSAGE]), retryable=True)


def _next(next_: ContinueNext | SleepNext | CompleteNext | FailNext) -> Outcome:
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
            return Complete(output=_json(next_.output))
        case FailNext():
            return Fail(
                error=ErrorInfo(type=next_.error.type, message=next_.error.message[:_MAX_MESSAGE]),
                retryable=next_.retryable,
                retry_after_ms=next_.retry_after_ms,
                step_index=next_.index,
                step_name=next_.name,
            )


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
