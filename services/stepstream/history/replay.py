"""Replay recorded histories through the current workflow code: from the cluster, from exported files,
and in a user's CI (``assert_replays``).

A history is folded with the core's ``evolve`` into what the SDK's replay needs (the steps with their
results, the steps started without one, how the run ended); the SDK then runs the workflow against it
without executing any step (``stepstream.sdk.replay``).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from stepstream.core import Event, RunState, RunStatus, evolve
from stepstream.core.events import RunCancelled, RunFailed, StepFailed
from stepstream.core.state import PendingBranch, PendingCall, PendingInvoke, PendingNotify, PendingSleep, PendingWait
from stepstream.history.files import read_export
from stepstream.history.points import events_of
from stepstream.protocol import RecordedStep, StepKindName
from stepstream.sdk import Divergence, ReplayHistory, ReplayReport, StartedStep, Workflows, replay
from stepstream.sdk._workflows import SIGNING_KEYS_VARIABLE

_KINDS: Mapping[type, StepKindName] = {
    PendingBranch: "run",
    PendingCall: "call",
    PendingWait: "wait_for_event",
    PendingNotify: "notify",
    PendingInvoke: "invoke",
}


def replay_input(events: Iterable[Event]) -> ReplayHistory:
    """What the SDK's replay needs, from a run's events (its whole history)."""
    state: RunState | None = None
    before_end: RunState | None = None
    failed_step: StartedStep | None = None
    for event in events:
        if isinstance(event, RunFailed | RunCancelled):
            before_end = state  # the end clears what was pending: the replay must still see it
        if isinstance(event, StepFailed) and event.name is not None and event.retry_at_ms is None:
            failed_step = StartedStep(index=event.step_index, name=event.name, kind="run")
        state = evolve(state, event)
    if state is None:
        raise ValueError("Expected a run's history, but it has no events")
    ended = state.status.value if state.status.terminal else None
    pending_from = before_end if ended is not None and before_end is not None else state
    started = {step.step_index: _started(step) for step in pending_from.waiting}
    recorded = {step.index for step in state.steps}
    if state.status is RunStatus.FAILED and failed_step is not None and failed_step.index not in recorded:
        started.setdefault(failed_step.index, failed_step)
    return ReplayHistory(
        run_id=state.run_id,
        workflow=state.workflow,
        payload=json.loads(state.payload),
        steps=[
            RecordedStep(index=step.index, name=step.name, kind=step.kind.value, output=json.loads(step.output))
            for step in state.steps
        ],
        started=[started[index] for index in sorted(started)],
        ended=ended,  # type: ignore[arg-type]  # a terminal status is one of the three endings
        output=json.loads(state.output) if state.output is not None else None,
        error_type=state.error.type if state.error is not None and ended == "failed" else None,
    )


def _started(step: Any) -> StartedStep:
    kind = step.kind.value if isinstance(step, PendingSleep) else _KINDS[type(step)]
    return StartedStep(index=step.step_index, name=step.name, kind=kind)


async def replay_history(workflows: Workflows, history: Iterable[Mapping[str, Any]]) -> ReplayReport:
    """Replay one run's history (its events as the api shows them) through ``workflows``.

    A history the code cannot even start on (its workflow is not registered, or its recorded payload
    no longer fits the payload type) is reported as a divergence, not raised.
    """
    given = replay_input(events_of(history))
    try:
        return await replay(workflows, given)
    except (LookupError, ValidationError) as error:
        reason = str(error).splitlines()[0]
        divergence = Divergence(
            index=None,
            recorded=f"workflow '{given.workflow}'",
            code=reason,
            location=None,
            message=f"the code cannot start the run: {reason}",
        )
        return ReplayReport(run_id=given.run_id, workflow=given.workflow, replayed_steps=0, divergence=divergence)


async def replay_file(workflows: Workflows, path: Path | str) -> list[ReplayReport]:
    """Replay every run of an export file (``stepstream export``), in the file's order."""
    return [await replay_history(workflows, history) for history in read_export(path).values()]


def assert_replays(workflows: Workflows, *paths: Path | str) -> list[ReplayReport]:
    """For a test: replay every run of the export files named (a folder: its ``*.jsonl`` files) and
    raise ``AssertionError`` listing each run whose history the code no longer replays.

    Call it from a plain (not ``async``) test::

        def test_current_code_replays_recorded_runs():
            assert_replays(workflows, Path(__file__).parent / "histories")
    """
    files = [file for path in map(Path, paths) for file in (sorted(path.glob("*.jsonl")) if path.is_dir() else [path])]
    if not files:
        named = ", ".join(map(str, paths))
        raise AssertionError(f"Expected export files (*.jsonl) to replay in {named}, but found none")

    async def replay_all() -> list[ReplayReport]:
        return [report for file in files for report in await replay_file(workflows, file)]

    reports = asyncio.run(replay_all())
    diverged = [report.describe() for report in reports if not report.ok]
    if diverged:
        raise AssertionError(f"{len(diverged)} of {len(reports)} recorded runs diverge:\n" + "\n".join(diverged))
    return reports


def load_workflows(spec: str) -> Workflows:
    """The ``Workflows`` object named ``module.path:attribute`` (as uvicorn names apps), importing the
    module from the current directory too."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(
            f"Expected workflows as 'module.path:attribute', such as 'myapp.flows:workflows', but got {spec!r}"
        )
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    # A replay serves no request, so it needs no signing keys; but ``Workflows()`` refuses to be made
    # without them, and a CI job or a laptop has none: a placeholder while the module is imported.
    placeholder = SIGNING_KEYS_VARIABLE not in os.environ
    if placeholder:
        os.environ[SIGNING_KEYS_VARIABLE] = "replay-serves-no-requests"
    try:
        module = importlib.import_module(module_name)
    finally:
        if placeholder:
            del os.environ[SIGNING_KEYS_VARIABLE]
    found = getattr(module, attribute, None)
    if not isinstance(found, Workflows):
        raise ValueError(f"Expected {spec} to be a stepstream.sdk.Workflows, but it is {type(found).__name__}")
    return found
