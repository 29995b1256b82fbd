"""Replay a run's recorded history through the current workflow code, with no side effects.

The check Temporal's users run in CI with a replayer: before deploying changed code, feed it the
histories of runs in flight (or exported ones) and see that it asks for the steps they recorded. The
workflow function runs from the top as in a delivery, every recorded step returns its recorded result,
and where the code asks for a step the history has no result for, the replay stops there instead of
executing it: **no step body runs**, nothing is sent. Code outside steps does run, as it does on every
delivery (it must be deterministic anyway).

The report says either that the code replays the whole history (and what it would do next, for a run
still in flight), or the first divergence: the step index, what the history recorded, what the code
asked for, and the line of the workflow that asked. This module knows only the wire protocol
(:class:`ReplayHistory`); ``stepstream.history`` builds one from a run's events, from the api or from
an exported file.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from stepstream.protocol import (
    CancelNext,
    CompleteNext,
    DeliveryRequest,
    FailNext,
    RecordedStep,
    StepKindName,
    SuspendNext,
)
from stepstream.sdk._context import WorkflowContext
from stepstream.sdk._driver import Driver
from stepstream.sdk._machine import ReplayMachine, StepKind
from stepstream.sdk._workflows import Workflows

_SDK_DIRECTORY = str(Path(__file__).parent)
_ASYNCIO_DIRECTORY = str(Path(sys.modules["asyncio"].__file__ or "").parent)

RunEnding = Literal["completed", "failed", "cancelled"]


class StartedStep(BaseModel):
    """A step the history started and has no result for (a sleep in progress, the step a run failed at)."""

    index: int
    name: str
    kind: StepKindName


class ReplayHistory(BaseModel):
    """What a replay needs of a run's history, in the wire protocol's terms."""

    run_id: str
    workflow: str
    payload: Any = None
    steps: list[RecordedStep] = []  # with results, in index order
    started: list[StartedStep] = []  # without results
    ended: RunEnding | None = None  # None: the run is still in flight
    output: Any = None  # the run's output, when it completed
    error_type: str | None = None  # the error's type, when it failed


class Divergence(BaseModel):
    """The first place the code and the history part."""

    index: int | None  # the step index; None when they part outside any step
    recorded: str  # what the history holds there, in words: "run 'charge'", "the run completed"
    code: str  # what the code did there: "sleep 'wait'", "the workflow returned", "raised KeyError: …"
    location: str | None  # "path/to/flows.py:42 in orders": the line of the workflow that asked
    message: str


class ReplayReport(BaseModel):
    run_id: str
    workflow: str
    replayed_steps: int  # recorded steps the code asked for and got back
    divergence: Divergence | None = None
    next_steps: list[str] = Field(default_factory=list)  # for a run in flight: what the code asks for next
    output_matches: bool | None = None  # for a completed run: whether the code returns the recorded output

    @property
    def ok(self) -> bool:
        return self.divergence is None

    def describe(self) -> str:
        """One paragraph a person reads: the verdict, and where and why the code diverges."""
        head = f"run {self.run_id} ({self.workflow})"
        if self.divergence is None:
            line = f"{head}: replays its {self.replayed_steps} recorded steps"
            if self.next_steps:
                line += f"; next the code asks for {', '.join(self.next_steps)}"
            if self.output_matches is False:
                line += "; the workflow now returns another output than the recorded one"
            return line
        where = f" at {self.divergence.location}" if self.divergence.location else ""
        return f"{head}: diverges{where}: {self.divergence.message}"


class _Replaying(ReplayMachine):
    """A machine that never executes: notes where each step was asked for, for the report."""

    def __init__(self, request: DeliveryRequest, last_known: int) -> None:
        super().__init__(request, clock=lambda: 0.0, executes=False)
        # A step started but without a result is history too: ``ctx.patched`` there takes the old branch.
        self._last_recorded = max(self._last_recorded, last_known)
        self.sites: dict[int, str] = {}
        self.mismatch_site: str | None = None

    def claim(self, name: str, kind: StepKind, plan: Any) -> int:
        site = _call_site()
        try:
            index = super().claim(name, kind, plan)
        except Exception:
            self.mismatch_site = site
            raise
        self.sites[index] = site or ""
        return index


async def replay(workflows: Workflows, history: ReplayHistory) -> ReplayReport:
    """Replay ``history`` through the workflow ``workflows`` registers under its name.

    Raises ``LookupError`` for a workflow ``workflows`` does not have, and ``pydantic.ValidationError``
    for a recorded payload the workflow's payload type no longer accepts (both are reported by
    :func:`stepstream.history.replay_runs` as divergences of the run).
    """
    definition = workflows.definition(history.workflow)
    payload = definition.parse_payload(history.payload)
    request = DeliveryRequest(
        run_id=history.run_id,
        workflow=history.workflow,
        delivery_id=f"{history.run_id}/replay",
        attempt=1,
        payload=history.payload,
        steps=history.steps,
    )
    started = {step.index: step for step in history.started}
    last_known = max([step.index for step in history.steps] + list(started), default=-1)
    machine = _Replaying(request, last_known)
    driver = Driver(machine)
    context = WorkflowContext(request, payload, driver, workflow_names=definition.workflow_names)
    await driver.drive(lambda: definition.function(context))
    report = ReplayReport(run_id=history.run_id, workflow=history.workflow, replayed_steps=0)
    answer = machine.response().next
    report.replayed_steps = sum(1 for step in history.steps if step.index in machine.sites)
    report.divergence = _divergence(history, machine, answer, started)
    if report.divergence is None:
        if isinstance(answer, SuspendNext):
            report.next_steps = [f"{step.kind} '{step.name}'" for step in answer.steps]
        if isinstance(answer, CompleteNext) and history.ended == "completed":
            report.output_matches = answer.output == history.output
    return report


def _divergence(
    history: ReplayHistory, machine: _Replaying, answer: Any, started: dict[int, StartedStep]
) -> Divergence | None:
    mismatch = machine.mismatch
    if mismatch is not None:
        where = machine.mismatch_site if mismatch.code != "the workflow returned" else None
        return _parted(mismatch.index, mismatch.recorded, mismatch.code, where)
    if isinstance(answer, SuspendNext):
        for planned in answer.steps:
            asked = f"{planned.kind} '{planned.name}'"
            site = machine.sites.get(planned.index) or None
            step = started.get(planned.index)
            if step is not None and (step.kind, step.name) != (planned.kind, planned.name):
                return _parted(planned.index, f"{step.kind} '{step.name}'", asked, site)
            if step is None and history.ended is not None:
                return _parted(planned.index, f"the run {history.ended}", asked, site)
        return None
    # The workflow ended (returned, raised, cancelled itself): every started step must have been asked for.
    unclaimed = sorted(index for index in started if index not in machine.sites)
    if unclaimed:
        step = started[unclaimed[0]]
        return _parted(step.index, f"{step.kind} '{step.name}'", _ending(answer), None)
    if isinstance(answer, FailNext) and not (history.ended == "failed" and history.error_type == answer.error.type):
        return _parted(None, _recorded_ending(history), _ending(answer), None)
    if isinstance(answer, CancelNext) and history.ended not in ("cancelled", None):
        return _parted(None, _recorded_ending(history), _ending(answer), None)
    if isinstance(answer, CompleteNext) and history.ended in ("failed", "cancelled") and history.started:
        return _parted(None, _recorded_ending(history), _ending(answer), None)
    return None


def _parted(index: int | None, recorded: str, code: str, location: str | None) -> Divergence:
    at = f"step {index}" if index is not None else "the end"
    message = f"at {at} the history records {recorded}, but the code {_verb(code)}"
    return Divergence(index=index, recorded=recorded, code=code, location=location, message=message)


def _verb(code: str) -> str:
    return code if code.startswith(("the workflow", "raised", "cancelled")) else f"asks for {code}"


def _ending(answer: Any) -> str:
    if isinstance(answer, FailNext):
        return f"raised {answer.error.type}: {answer.error.message}"
    if isinstance(answer, CancelNext):
        return "cancelled the run"
    return "the workflow returned"


def _recorded_ending(history: ReplayHistory) -> str:
    if history.ended is None:
        return "the run still in flight"
    if history.ended == "failed" and history.error_type:
        return f"the run failed ({history.error_type})"
    return f"the run {history.ended}"


def _call_site() -> str | None:
    """The innermost frame outside the SDK and asyncio: the workflow's line that called the step."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith((_SDK_DIRECTORY, _ASYNCIO_DIRECTORY)):
            return f"{filename}:{frame.f_lineno} in {frame.f_code.co_name}"
        frame = frame.f_back  # type: ignore[assignment]
    return None
