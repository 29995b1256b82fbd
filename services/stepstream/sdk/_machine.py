"""The replay machine: decides, step call by step call, what one delivery does. No I/O, no asyncio.

The workflow function runs from the top on every delivery. Each step call claims the next index
(0, 1, 2, … in call order) and asks the machine what to do:

- the index is in the history: check the recorded name and kind, then replay the recorded output;
- it is not, and it is a ``run`` step: execute it if it is the first one this delivery, or if the
  delivery's time budget is not spent yet; otherwise suspend and answer ``continue``;
- it is not, and it is a sleep: suspend and answer ``sleep``.

The first decision that ends the delivery (a suspension, a failure, the return value) is final:
later calls cannot change it, so user code that catches an exception and carries on cannot make the
SDK report steps the engine would reject.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from pydantic import BaseModel

from stepstream.protocol import (
    CompletedStep,
    CompleteNext,
    ContinueNext,
    DeliveryRequest,
    DeliveryResponse,
    ErrorDetail,
    FailNext,
    Next,
    RecordedStep,
    SleepNext,
)
from stepstream.sdk._errors import DeliverySuspended, NondeterminismError, NonRetryableError, RetryAfterError

StepKind = Literal["run", "sleep", "sleep_until"]


@dataclass(frozen=True, slots=True)
class Replay:
    """The step is in the history: its call returns ``output`` without running anything."""

    output: Any


@dataclass(frozen=True, slots=True)
class Execute:
    """The step has no record: the caller runs it now and reports back under ``index``."""

    index: int


def history_problem(request: DeliveryRequest) -> str | None:
    """Why the request's recorded steps cannot be replayed, or ``None`` if they can.

    Replay claims indexes in call order, so the history must be exactly steps 0..n-1 in order.
    """
    for position, step in enumerate(request.steps):
        if step.index != position:
            return (
                f"Expected recorded steps numbered 0..n-1 in order, "
                f"but the step at position {position} has index {step.index}"
            )
    return None


def to_json_value(value: Any) -> Any:
    """``value`` as JSON would carry it; raises ``TypeError``/``ValueError`` if JSON cannot.

    Returning the round trip rather than ``value`` itself makes a step's first execution see the
    same value as every later replay of it.
    """
    return json.loads(to_json_text(value))


def to_json_text(value: Any) -> str:
    return json.dumps(value, default=_json_default, allow_nan=False, separators=(",", ":"))


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serialisable")


def failure(exc: BaseException, *, index: int | None = None, name: str | None = None) -> FailNext:
    """How the engine should treat ``exc``: terminal, retry after a delay, or retry with backoff."""
    retry_after_ms = exc.retry_after_ms if isinstance(exc, RetryAfterError) else None
    retryable = not isinstance(exc, NonRetryableError | NondeterminismError)
    return FailNext(
        error=ErrorDetail(type=type(exc).__name__, message=str(exc)),
        retryable=retryable,
        retry_after_ms=retry_after_ms,
        index=index,
        name=name,
    )


class ReplayMachine:
    """The state of one delivery: the history, the next index, the steps completed so far, the answer.

    ``clock`` returns monotonic seconds; it decides only whether the time budget is spent.
    """

    def __init__(
        self, request: DeliveryRequest, *, clock: Callable[[], float], started_at: float | None = None
    ) -> None:
        problem = history_problem(request)
        if problem is not None:
            raise ValueError(problem)
        self._history: dict[int, RecordedStep] = {step.index: step for step in request.steps}
        self._budget_ms = request.budget_ms
        self._clock = clock
        self._started_at = clock() if started_at is None else started_at
        self._next_index = 0
        self._completed: list[CompletedStep] = []
        self._executing: tuple[int, str] | None = None
        self._outcome: Next | None = None

    @property
    def decided(self) -> bool:
        """True once the delivery's answer is fixed."""
        return self._outcome is not None

    def start_run(self, name: str) -> Replay | Execute:
        """A ``run`` step is called: replay it, execute it, or suspend (raises ``DeliverySuspended``)."""
        index = self._claim(name, "run")
        recorded = self._history.get(index)
        if recorded is not None:
            return Replay(recorded.output)
        if self._completed and not self._within_budget():
            self._suspend(ContinueNext())
        self._executing = (index, name)
        return Execute(index)

    def run_succeeded(self, index: int, result: Any) -> Any:
        """The executing step returned ``result``: record it and return its JSON value for the caller."""
        name = self._finish_executing(index)
        if self.decided:
            # Decided while this step ran (a parallel call was caught): nothing more is recorded.
            raise DeliverySuspended
        try:
            text = to_json_text(result)
        except (TypeError, ValueError) as exc:
            error = NonRetryableError(
                f"Step {index} '{name}' returned a value that is not JSON serialisable ({exc}); "
                "return JSON values (dict, list, str, int, float, bool, None) or a pydantic model"
            )
            self._decide(failure(error, index=index, name=name))
            raise error from exc
        self._completed.append(CompletedStep(index=index, name=name, output=json.loads(text)))
        # A second copy for the caller, so mutating it cannot change what is reported.
        return json.loads(text)

    def run_failed(self, index: int, exc: BaseException) -> None:
        """The executing step raised ``exc``: the delivery fails, naming the step."""
        name = self._finish_executing(index)
        if isinstance(exc, Exception):
            self._decide(failure(exc, index=index, name=name))

    def sleep(self, name: str, *, duration_ms: int | None = None, wake_at_ms: int | None = None) -> None:
        """A sleep step is called: return if the history has it, else suspend with ``next: sleep``."""
        kind: StepKind = "sleep" if wake_at_ms is None else "sleep_until"
        index = self._claim(name, kind)
        if index in self._history:
            return
        self._suspend(SleepNext(index=index, name=name, duration_ms=duration_ms, wake_at_ms=wake_at_ms))

    def complete(self, output: Any) -> None:
        """The workflow function returned ``output``."""
        if self.decided:
            return
        unconsumed = self._history.get(self._next_index)
        if unconsumed is not None:
            error = NondeterminismError(
                f"Expected step {unconsumed.index} to be {unconsumed.kind} '{unconsumed.name}' as recorded in "
                "the history, but the workflow returned before calling it"
            )
            self._decide(failure(error, index=unconsumed.index, name=unconsumed.name))
            return
        try:
            value = to_json_value(output)
        except (TypeError, ValueError) as exc:
            not_json = NonRetryableError(
                f"The workflow returned a value that is not JSON serialisable ({exc}); "
                "return JSON values (dict, list, str, int, float, bool, None) or a pydantic model"
            )
            self._decide(failure(not_json))
            return
        self._decide(CompleteNext(output=value))

    def fail(self, exc: Exception) -> None:
        """Workflow code outside any step raised ``exc``."""
        self._decide(failure(exc))

    def response(self) -> DeliveryResponse:
        """The answer: every step completed in this delivery, then what comes next."""
        if self._outcome is None:
            raise RuntimeError("Expected the delivery to be decided before answering, but it is not")
        return DeliveryResponse(steps=list(self._completed), next=self._outcome)

    def _claim(self, name: str, kind: StepKind) -> int:
        if self.decided:
            raise DeliverySuspended
        index = self._next_index
        if self._executing is not None:
            running_index, running_name = self._executing
            error = NonRetryableError(
                f"Step {index} '{name}' was called while step {running_index} '{running_name}' is still running: "
                "steps must be awaited one at a time (parallel steps, such as asyncio.gather over ctx.run, "
                "come in a later version of Stepstream)"
            )
            self._decide(failure(error, index=index, name=name))
            raise error
        self._next_index += 1
        recorded = self._history.get(index)
        if recorded is not None and (recorded.kind != kind or recorded.name != name):
            mismatch = NondeterminismError(
                f"Expected step {index} to be {recorded.kind} '{recorded.name}' as recorded in the history, "
                f"but the code called {kind} '{name}'"
            )
            self._decide(failure(mismatch, index=index, name=name))
            raise mismatch
        return index

    def _finish_executing(self, index: int) -> str:
        if self._executing is None or self._executing[0] != index:
            raise RuntimeError(f"Expected step {index} to be executing, but {self._executing} is")
        name = self._executing[1]
        self._executing = None
        return name

    def _within_budget(self) -> bool:
        elapsed_ms = (self._clock() - self._started_at) * 1000
        return self._budget_ms > 0 and elapsed_ms < self._budget_ms

    def _suspend(self, outcome: Next) -> NoReturn:
        self._decide(outcome)
        raise DeliverySuspended

    def _decide(self, outcome: Next) -> None:
        if self._outcome is None:
            self._outcome = outcome
