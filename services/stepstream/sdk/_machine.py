"""The replay machine: decides what one delivery does. No I/O, no asyncio.

The workflow function runs from the top on every delivery. Each step call claims the next index
(0, 1, 2, … in call order) and checks the recorded name and kind, if the history has that index;
then the call blocks until the driver (``_driver``) finds the workflow quiet and asks the machine
what the steps blocked at that moment (one *round*) come to:

- every one has a recorded result: resume them all, in index order;
- exactly one has none, it is a ``run`` step, and it is the first step executed in this delivery or
  the time budget is not spent: execute it, then resume them all; with the budget spent: ``continue``;
- otherwise: ``suspend``, naming every step without a result, for the engine to start them all.

A delivery with ``execute_index`` set replays the same way up to the first round with new steps;
that round must hold the step at ``execute_index``, a ``run`` step, which alone is executed before
the answer ``continue``. A delivery with ``failure`` set runs the failure handler, which may not
call steps.

The first decision that ends the delivery (a suspension, a failure, a cancellation, the return
value) is final: later calls cannot change it, so user code that catches an exception and carries
on cannot make the SDK report steps the engine would reject.

``ctx.patched(change_id)`` (versioning, docs/history.md) is a ``run`` step named
``patched:<change_id>`` that returns true: recorded where new code first passes it, so the history
says which branch the run took. A history that has another step at that index was recorded by the
code before the change: ``patched`` answers false there and claims nothing. Markers the code no
longer asks for are skipped, so the ``patched`` call can be removed once no run needs the old branch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from stepstream.protocol import (
    CancelNext,
    CompletedStep,
    CompleteNext,
    ContinueNext,
    DeliveryRequest,
    DeliveryResponse,
    ErrorDetail,
    FailNext,
    Next,
    PlannedStep,
    RecordedStep,
    StepKindName,
    SuspendNext,
)
from stepstream.sdk._errors import DeliverySuspended, NondeterminismError, NonRetryableError, RetryAfterError

StepKind = StepKindName
Plan = Callable[[int], PlannedStep]


@dataclass(frozen=True, slots=True)
class Claim:
    """A step call: its index, name and kind, and what to ask the engine for if it has no result."""

    index: int
    name: str
    kind: StepKind
    plan: PlannedStep | None  # None: the history has it


@dataclass(frozen=True, slots=True)
class Resume:
    """Every blocked step has a result: hand each its result, in index order."""


@dataclass(frozen=True, slots=True)
class Execute:
    """Run the function of step ``index`` now, report it, then (unless decided) resume every blocked step."""

    index: int


@dataclass(frozen=True, slots=True)
class Pause:
    """Answer with the steps done so far and ``continue``, and keep the workflow waiting: the engine
    makes them durable and resumes the session (``DeliveryRequest.session``) for the next step."""


Round = Resume | Execute | Pause | None  # None: the delivery's answer is decided

PATCH_PREFIX = "patched:"


def patch_step_name(change_id: str) -> str:
    """The name of the ``run`` step that records ``ctx.patched(change_id)`` in a run's history."""
    return PATCH_PREFIX + change_id


def is_patch_marker(step: RecordedStep) -> bool:
    return step.kind == "run" and step.name.startswith(PATCH_PREFIX)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """Where the code and the history part: the step ``index``, what each holds there, in words."""

    index: int
    recorded: str
    code: str


def history_problem(request: DeliveryRequest) -> str | None:
    """Why the request's recorded steps cannot be replayed, or ``None`` if they can.

    Indexes must be strictly increasing, so each appears once. They may have gaps: while steps run
    in parallel, some have results and others are still pending.
    """
    previous = -1
    for position, step in enumerate(request.steps):
        if step.index <= previous:
            return (
                f"Expected recorded steps in increasing index order, each index once, "
                f"but the step at position {position} has index {step.index} after index {previous}"
            )
        previous = step.index
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
    """The state of one delivery: the history, the claims, the steps completed so far, the answer.

    ``clock`` returns monotonic seconds; it decides only whether the time budget is spent.
    """

    def __init__(
        self,
        request: DeliveryRequest,
        *,
        clock: Callable[[], float],
        started_at: float | None = None,
        keeps_session: bool = False,
        max_output_bytes: int | None = None,
        executes: bool = True,
    ) -> None:
        problem = history_problem(request)
        if problem is not None:
            raise ValueError(problem)
        self._history: dict[int, RecordedStep] = {step.index: step for step in request.steps}
        self._last_recorded = max(self._history, default=-1)
        # False: a replay against history (``_replay``): a step without a result is never executed, the
        # delivery suspends there instead, and says what the code asked for.
        self._executes = executes
        self.mismatch: Mismatch | None = None
        self._budget_ms = request.budget_ms
        # ``keeps_session``: pause at ``continue`` instead of ending (the caller keeps the workflow for the
        # session's next request). Only where the engine may go on: a branch's delivery, or a failure
        # handler's, ends at its first answer.
        self._keeps_session = keeps_session and request.execute_index is None and request.failure is None
        self._execute_index = request.execute_index
        self._handling_failure = request.failure is not None
        self._clock = clock
        self._started_at = clock() if started_at is None else started_at
        self._max_output_bytes = max_output_bytes
        self._next_index = 0
        self._claims: dict[int, Claim] = {}
        self._outputs: dict[int, str] = {}  # JSON text of the steps executed here, until resumed
        self._completed: list[CompletedStep] = []
        self._executing: Claim | None = None
        self._outcome: Next | None = None

    @property
    def decided(self) -> bool:
        """True once the delivery's answer is fixed."""
        return self._outcome is not None

    def claim(self, name: str, kind: StepKind, plan: Plan) -> int:
        """A step is called: its index. Raises ``DeliverySuspended`` once decided, ``NondeterminismError``
        if the history records another step at this index."""
        if self.decided:
            raise DeliverySuspended
        if self._handling_failure:
            misuse = NonRetryableError(
                f"Expected no steps in a failure handler, but it called {kind} '{name}': the handler runs once, "
                "outside the run's history; call the code directly"
            )
            self._decide(failure(misuse, name=name))
            raise misuse
        index, recorded = self._recorded_next(name)
        self._next_index = index + 1
        if recorded is not None and (recorded.kind != kind or recorded.name != name):
            self.mismatch = Mismatch(index, f"{recorded.kind} '{recorded.name}'", f"{kind} '{name}'")
            mismatch = NondeterminismError(
                f"Expected step {index} to be {recorded.kind} '{recorded.name}' as recorded in the history, "
                f"but the code called {kind} '{name}'"
            )
            self._decide(failure(mismatch, index=index, name=name))
            raise mismatch
        self._claims[index] = Claim(index, name, kind, None if recorded is not None else plan(index))
        return index

    def takes_patch(self, change_id: str) -> bool:
        """Whether ``ctx.patched(change_id)`` is true here: its marker is recorded at the next index, or
        the history ends before it (new code on new ground, which records the marker). False where
        the history has another step there, or a step still pending (a gap before later steps):
        that part was recorded by the code before the change."""
        if self.decided:
            raise DeliverySuspended
        name = patch_step_name(change_id)
        index, recorded = self._recorded_next(name)
        if recorded is None:
            return index > self._last_recorded
        return recorded.kind == "run" and recorded.name == name

    def _recorded_next(self, wanted: str) -> tuple[int, RecordedStep | None]:
        """The next index to claim and its recorded step, past patch markers other than ``wanted``."""
        index = self._next_index
        recorded = self._history.get(index)
        while recorded is not None and is_patch_marker(recorded) and recorded.name != wanted:
            index += 1
            recorded = self._history.get(index)
        return index, recorded

    def nested(self, name: str, kind: StepKind, running_index: int) -> BaseException:
        """A step was called inside the function of step ``running_index``: the error to raise there."""
        if self.decided:
            return DeliverySuspended()
        running = self._claims[running_index]
        error = NonRetryableError(
            f"Expected steps to be called from the workflow, but {kind} '{name}' was called inside the function "
            f"of step {running.index} '{running.name}': await steps one after another, or together with "
            "asyncio.gather, from the workflow function"
        )
        self._decide(failure(error, index=running.index, name=running.name))
        return error

    def next_round(self, blocked: Sequence[int]) -> Round:
        """The workflow is quiet with the steps ``blocked`` (indexes in order) awaited: what now."""
        if self.decided:
            return None
        new = [self._claims[index] for index in blocked if self._claims[index].plan is not None]
        if not new:
            return Resume()
        if self._execute_index is not None:
            target = next((claim for claim in new if claim.index == self._execute_index), None)
            if target is None or target.kind != "run":
                awaited = ", ".join(f"{claim.kind} {claim.index} '{claim.name}'" for claim in new)
                mismatch = NondeterminismError(
                    f"Expected step {self._execute_index} to be a run step awaited now, as when the engine started "
                    f"it, but the code awaits {awaited}"
                )
                self._decide(failure(mismatch, index=self._execute_index))
                return None
            self._executing = target
            return Execute(target.index)
        if not self._executes:
            self._decide(SuspendNext(steps=[claim.plan for claim in new if claim.plan is not None]))
            return None
        if len(new) == 1 and new[0].kind == "run":
            if self._completed and not self._within_budget():
                if self._keeps_session:
                    return Pause()
                self._decide(ContinueNext())
                return None
            self._executing = new[0]
            return Execute(new[0].index)
        steps = [claim.plan for claim in new if claim.plan is not None]
        self._decide(SuspendNext(steps=steps))
        return None

    def name_of(self, index: int) -> str:
        return self._claims[index].name

    def run_succeeded(self, index: int, result: Any) -> None:
        """The executing step returned ``result``: record its JSON value."""
        claim = self._finish_executing(index)
        if self.decided:
            return
        try:
            text = to_json_text(result)
        except (TypeError, ValueError) as exc:
            error = NonRetryableError(
                f"Step {index} '{claim.name}' returned a value that is not JSON serialisable ({exc}); "
                "return JSON values (dict, list, str, int, float, bool, None) or a pydantic model"
            )
            self._decide(failure(error, index=index, name=claim.name))
            return
        size = len(text.encode())
        if self._max_output_bytes is not None and size > self._max_output_bytes:
            # Checked here, where the value is made, so the step fails with the reason in the run's
            # history instead of the engine refusing a record it cannot write.
            error = NonRetryableError(
                f"Expected step {index} '{claim.name}' to return at most {self._max_output_bytes:,} bytes of JSON "
                f"(Workflows(max_output_bytes=...)), but it returned {size:,}; keep large data elsewhere "
                "and return a reference to it"
            )
            self._decide(failure(error, index=index, name=claim.name))
            return
        self._completed.append(CompletedStep(index=index, name=claim.name, output=json.loads(text)))
        self._outputs[index] = text
        if self._execute_index is not None:
            self._decide(ContinueNext())

    def run_failed(self, index: int, exc: BaseException) -> None:
        """The executing step raised ``exc``: the delivery fails, naming the step."""
        claim = self._finish_executing(index)
        self._decide(failure(exc, index=index, name=claim.name))

    def result(self, index: int) -> Any:
        """The result the call of step ``index`` returns: its recorded output, or what it returned here."""
        recorded = self._history.get(index)
        if recorded is not None:
            return recorded.output
        # A fresh copy for the caller, so mutating it cannot change what is reported.
        return json.loads(self._outputs.pop(index))

    def complete(self, output: Any) -> None:
        """The workflow function returned ``output``."""
        if self.decided:
            return
        if self._execute_index is not None:
            early = NondeterminismError(
                f"Expected the workflow to await step {self._execute_index}, as when the engine started it, "
                "but it returned first"
            )
            self._decide(failure(early, index=self._execute_index))
            return
        # A failure handler gets the run's history too, but replays none of it.
        unconsumed = min(
            (index for index, step in self._history.items() if index >= self._next_index and not is_patch_marker(step)),
            default=None,
        )
        if unconsumed is not None and not self._handling_failure:
            step = self._history[unconsumed]
            self.mismatch = Mismatch(step.index, f"{step.kind} '{step.name}'", "the workflow returned")
            error = NondeterminismError(
                f"Expected step {step.index} to be {step.kind} '{step.name}' as recorded in the history, "
                "but the workflow returned before calling it"
            )
            self._decide(failure(error, index=step.index, name=step.name))
            return
        try:
            value = to_json_value(output)
        except (TypeError, ValueError) as exc:
            not_json = NonRetryableError(
                f"The {'failure handler' if self._handling_failure else 'workflow'} returned a value that is not "
                f"JSON serialisable ({exc}); return JSON values (dict, list, str, int, float, bool, None) "
                "or a pydantic model"
            )
            self._decide(failure(not_json))
            return
        self._decide(CompleteNext(output=value))

    def fail(self, exc: BaseException) -> None:
        """Workflow code outside any step raised ``exc``."""
        self._decide(failure(exc))

    def cancel(self, reason: str | None) -> None:
        """The workflow cancelled its own run."""
        self._decide(CancelNext(reason=reason))

    def paused(self) -> DeliveryResponse:
        """The answer of a request that ends at a pause: the steps done since the last one, and ``continue``."""
        return DeliveryResponse(steps=list(self._completed), next=ContinueNext(), session="kept")

    def resumed(self, clock_now: float) -> None:
        """The steps of the last answer are durable: a new request, with its own budget, goes on."""
        self._completed = []
        self._started_at = clock_now

    def response(self) -> DeliveryResponse:
        """The answer: every step completed in this delivery, then what comes next."""
        if self._outcome is None:
            raise RuntimeError("Expected the delivery to be decided before answering, but it is not")
        return DeliveryResponse(steps=list(self._completed), next=self._outcome)

    def _finish_executing(self, index: int) -> Claim:
        claim = self._executing
        if claim is None or claim.index != index:
            raise RuntimeError(f"Expected step {index} to be executing, but {claim} is")
        self._executing = None
        return claim

    def _within_budget(self) -> bool:
        elapsed_ms = (self._clock() - self._started_at) * 1000
        return self._budget_ms > 0 and elapsed_ms < self._budget_ms

    def _decide(self, outcome: Next) -> None:
        if self._outcome is None:
            self._outcome = outcome
