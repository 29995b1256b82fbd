"""The hot path in the core: a delivery the executor goes on with reports its steps as it makes them
(``Continuing``), each report durable before the next step runs; the delivery stays in flight until
its last report says how it ended."""

from __future__ import annotations

from stepstream.core import (
    Complete,
    Continuing,
    Fail,
    RunCompleted,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
)
from tests.unit.test_core_decide import (
    BOOM,
    RUN,
    T0,
    given,
    given_events,
    report,
    step,
    then_seqs_continue,
    trigger,
    when,
    when_rejected,
)


def test_a_report_of_the_steps_so_far_records_them_and_keeps_the_delivery_in_flight() -> None:
    state = given(trigger())

    events = when(state, report(1, outcome=Continuing(), steps=(step(0),)))

    assert events == [
        StepCompleted(
            run_id=RUN, seq=3, at_ms=T0, step_index=0, name="step-0", kind=StepKind.RUN, output='{"result":0}',
            delivery_id=f"{RUN}/1",
        )
    ]  # fmt: skip
    after = given_events(state, events)
    assert [delivery.delivery_id for delivery in after.in_flight] == [f"{RUN}/1"]  # no new delivery
    assert after.first_open_index == 1


def test_reports_of_one_delivery_go_on_until_its_end() -> None:
    state = given(
        trigger(),
        report(1, outcome=Continuing(), steps=(step(0),)),
        report(1, outcome=Continuing(), steps=(step(1),)),
    )

    events = when(state, report(1, outcome=Complete(output='"done"'), steps=(step(2),)))

    then_seqs_continue(state, events)
    assert [type(event) for event in events] == [StepCompleted, RunCompleted]
    assert given_events(state, events).in_flight == ()


def test_a_report_sent_again_changes_nothing() -> None:
    # the executor's recovery after a crash reads back what it reported, and may send a step twice
    state = given(trigger(), report(1, outcome=Continuing(), steps=(step(0),)))

    rejected = when_rejected(state, report(1, outcome=Continuing(), steps=(step(0),)))

    assert rejected.duplicate
    assert "recorded already" in rejected.reason


def test_a_report_with_a_step_recorded_and_a_new_one_records_the_new_one() -> None:
    state = given(trigger(), report(1, outcome=Continuing(), steps=(step(0),)))

    events = when(state, report(1, outcome=Continuing(), steps=(step(0), step(1))))

    assert [(type(event), getattr(event, "step_index", None)) for event in events] == [(StepCompleted, 1)]


def test_a_different_result_for_a_recorded_step_is_refused() -> None:
    state = given(trigger(), report(1, outcome=Continuing(), steps=(step(0),)))
    other = StepResult(index=0, name="step-0", kind=StepKind.RUN, output='{"result":"other"}')

    rejected = when_rejected(state, report(1, outcome=Continuing(), steps=(other,)))

    assert not rejected.duplicate


def test_the_attempt_of_a_delivery_counts_for_its_first_step_only() -> None:
    # given a run whose first delivery failed once: delivery 2, attempt 2, is in flight for step 0
    state = given(trigger(retries=3), report(1, outcome=Fail(error=BOOM, retryable=True)))
    (pending,) = state.in_flight
    assert (pending.delivery_id, pending.step_index, pending.attempt) == (f"{RUN}/2", 0, 2)
    # and it goes on past step 0 before step 1 fails
    state = given_events(state, when(state, report(2, attempt=2, outcome=Continuing(), steps=(step(0),))))

    events = when(state, report(2, attempt=2, outcome=Fail(error=BOOM, retryable=True)))

    # then step 1 failed at its first attempt, and its retry is the second
    failed = [event for event in events if isinstance(event, StepFailed)]
    assert [(event.step_index, event.attempt) for event in failed] == [(1, 1)]
    retried = [event for event in events if isinstance(event, StepScheduled)]
    assert [(event.step_index, event.attempt) for event in retried] == [(1, 2)]


def test_a_delivery_that_fails_on_its_first_step_counts_its_attempt() -> None:
    state = given(trigger(retries=3), report(1, outcome=Fail(error=BOOM, retryable=True)))

    events = when(state, report(2, attempt=2, outcome=Fail(error=BOOM, retryable=True)))

    failed = [event for event in events if isinstance(event, StepFailed)]
    assert [(event.step_index, event.attempt) for event in failed] == [(0, 2)]
