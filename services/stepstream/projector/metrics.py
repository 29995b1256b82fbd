"""What the projector reports of runs and steps once their events are committed: the counts and
durations of stepstream.metrics, and the root span of an ended run's trace (tracing.py).

Reported after the batch's transaction commits, from the events each command appended, so a batch
tried again after a failed transaction counts once, and the counts agree with the ``events`` topic.
The state before the command gives the run's workflow and when it started and last moved.
"""

from __future__ import annotations

from collections.abc import Iterable

from stepstream import metrics, tracing
from stepstream.core import (
    CallRetried,
    Event,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunState,
    StepCompleted,
    StepFailed,
    StepScheduled,
)

Applied = tuple[RunState | None, list[Event], RunState]  # a run before a command, its events, after


def observe(applied: Iterable[Applied]) -> None:
    for before, events, after in applied:
        workflow = after.workflow
        started_ms = before.created_at_ms if before is not None else after.created_at_ms
        last_ms = before.updated_at_ms if before is not None else after.created_at_ms
        for event in events:
            match event:
                case RunStarted():
                    metrics.RUNS_STARTED.labels(workflow).inc()
                case StepScheduled():
                    metrics.DELIVERIES_SCHEDULED.labels(workflow).inc()
                case StepCompleted():
                    metrics.STEPS_COMPLETED.labels(workflow, event.kind.value).inc()
                    metrics.STEP_DURATION.labels(workflow, event.kind.value).observe(
                        max(0, event.at_ms - last_ms) / 1000
                    )
                case StepFailed():
                    metrics.STEP_FAILURES.labels(workflow).inc()
                    if event.retry_at_ms is not None:
                        metrics.STEP_RETRIES.labels(workflow).inc()
                case CallRetried():
                    metrics.STEP_FAILURES.labels(workflow).inc()
                    metrics.STEP_RETRIES.labels(workflow).inc()
                case RunCompleted() | RunFailed() | RunCancelled():
                    status = {RunCompleted: "completed", RunFailed: "failed", RunCancelled: "cancelled"}[type(event)]
                    metrics.RUNS_ENDED.labels(workflow, status).inc()
                    metrics.RUN_DURATION.labels(workflow, status).observe(max(0, event.at_ms - started_ms) / 1000)
                    tracing.end_of_run(after.run_id, workflow, status, started_ms, event.at_ms)
            last_ms = event.at_ms
        if after.dead_letter and (before is None or not before.dead_letter):
            metrics.DEAD_LETTER_RUNS.labels(workflow).inc()
