"""What the projector keeps of a run that ended long ago (core/retention.py). Pure."""

from __future__ import annotations

from dataclasses import replace

from stepstream.core import ErrorInfo, PendingDelivery, RecordedStep, RunStatus, StepKind
from stepstream.core.retention import COMPACTED_PAYLOAD, compacted, ended_at
from tests.unit.test_core_apart import state

ENDED = state(status=RunStatus.COMPLETED, in_flight=(), output='"done"', updated_at_ms=5_000, label="l")


def test_a_run_may_be_compacted_from_when_it_ended_unless_something_may_still_need_all_of_it() -> None:
    assert ended_at(ENDED) == 5_000
    assert ended_at(replace(ENDED, status=RunStatus.CANCELLED)) == 5_000
    # not while it runs, while its failure handler is due, while it is in the dead-letter list
    assert ended_at(state()) is None
    failed = replace(ENDED, status=RunStatus.FAILED, error=ErrorInfo(type="E", message="m"))
    assert ended_at(failed) == 5_000
    handler = PendingDelivery(delivery_id="run-1/4", step_index=10, attempt=1, not_before_ms=0)
    assert ended_at(replace(failed, failure_delivery=handler)) is None
    assert ended_at(replace(failed, dead_letter=True)) is None
    # and never again once compacted
    assert ended_at(compacted(ENDED)) is None


def test_a_compacted_run_keeps_its_id_status_and_times_and_drops_its_payload_and_results() -> None:
    small = compacted(ENDED)

    assert (small.run_id, small.workflow, small.status, small.seq) == ("run-1", "w", RunStatus.COMPLETED, 7)
    assert (small.created_at_ms, small.updated_at_ms) == (ENDED.created_at_ms, ENDED.updated_at_ms)
    assert (small.payload, small.steps, small.headers, small.label, small.output) == (
        COMPACTED_PAYLOAD,
        (),
        (),
        None,
        None,
    )


def test_a_compacted_child_keeps_its_output_for_a_parent_that_reattaches() -> None:
    child = replace(ENDED, parent_run_id="parent", parent_step_index=2)
    child = replace(child, steps=(RecordedStep(index=0, name="a", kind=StepKind.RUN, output="1"),))

    small = compacted(child)

    assert (small.output, small.parent_run_id, small.parent_step_index, small.steps) == ('"done"', "parent", 2, ())
