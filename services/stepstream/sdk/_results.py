"""What the steps other than ``run`` give back, and what a failure handler receives.

Each is built from the step's recorded JSON output (see ``RecordedStep`` in ``stepstream.protocol``
for the shape per kind), so the first delivery after the step and every later replay see the same
value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from stepstream.sdk._errors import NonRetryableError

OutputT = TypeVar("OutputT")

InvokeStatus = Literal["completed", "failed", "cancelled"]
_INVOKE_STATUSES: tuple[InvokeStatus, ...] = ("completed", "failed", "cancelled")


@dataclass(frozen=True, slots=True, kw_only=True)
class CallResponse:
    """How the engine's HTTP request for a ``call`` step was answered.

    A non-2xx status is a result, not an exception: look at ``status``. ``body`` is the JSON value
    when the answer was JSON, else its text. ``status`` 0 means no HTTP answer came at all (the host
    was unreachable, or every attempt timed out); ``error`` then says why.
    """

    status: int
    headers: dict[str, str]
    body: Any
    error: str | None = None

    @property
    def ok(self) -> bool:
        """True for a 2xx answer."""
        return 200 <= self.status < 300


@dataclass(frozen=True, slots=True, kw_only=True)
class WaitResult:
    """How a ``wait_for_event`` step ended: notified with ``data``, or ``timeout`` with ``data`` None."""

    data: Any
    timeout: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class InvokeResult(Generic[OutputT]):
    """How the child run of an ``invoke`` step ended.

    ``output`` is the child's output when it completed (validated into ``result_type`` if one was
    given), else None; ``error`` is ``{"type", "message"}`` when it failed.
    """

    run_id: str
    status: InvokeStatus
    output: OutputT | None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FailureInfo:
    """The error a run failed with, as a workflow's failure handler receives it."""

    type: str
    message: str


def call_response(output: Any) -> CallResponse:
    record = _record(output, "call", ("status", "headers", "body"))
    status, headers, error = record["status"], record["headers"], record.get("error")
    if not isinstance(status, int) or isinstance(status, bool) or not isinstance(headers, dict):
        raise _malformed("call", output)
    if error is not None and not isinstance(error, str):
        raise _malformed("call", output)
    return CallResponse(
        status=status,
        headers={str(key): str(value) for key, value in headers.items()},
        body=record["body"],
        error=error,
    )


def wait_result(output: Any) -> WaitResult:
    record = _record(output, "wait_for_event", ("timeout",))
    if not isinstance(record["timeout"], bool):
        raise _malformed("wait_for_event", output)
    return WaitResult(data=record.get("data"), timeout=record["timeout"])


def notified_runs(output: Any) -> list[str]:
    if not isinstance(output, list) or not all(isinstance(run_id, str) for run_id in output):
        raise _malformed("notify", output)
    return list(output)


def invoke_result(output: Any) -> InvokeResult[Any]:
    record = _record(output, "invoke", ("run_id", "status"))
    status, error = record["status"], record.get("error")
    if not isinstance(record["run_id"], str) or status not in _INVOKE_STATUSES:
        raise _malformed("invoke", output)
    if error is not None and not isinstance(error, dict):
        raise _malformed("invoke", output)
    return InvokeResult(run_id=record["run_id"], status=status, output=record.get("output"), error=error)


def _record(output: Any, kind: str, required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(output, dict) or any(key not in output for key in required):
        raise _malformed(kind, output)
    return output


def _malformed(kind: str, output: Any) -> NonRetryableError:
    # The engine writes these outputs; one of another shape means engine and SDK disagree on the
    # protocol, which a retry cannot fix.
    text = repr(output)
    shown = text if len(text) <= 200 else text[:200] + "…"
    return NonRetryableError(f"Expected a recorded {kind} step's output as the protocol describes it, but got {shown}")
