"""``effects`` and ``deliverable_now``, given → when → then: what the projector asks of the scheduler."""

from __future__ import annotations

import pytest

from stepstream.core import (
    Command,
    Complete,
    Continue,
    Defaults,
    Delivery,
    DeliveryRequested,
    Effect,
    ErrorInfo,
    Fail,
    FireTimer,
    Outcome,
    PendingSleep,
    PlanRun,
    RecordedStep,
    Rejected,
    ReportDelivery,
    RunState,
    ScheduleCancelled,
    SleepFor,
    SleepUntil,
    StepKind,
    StepResult,
    Suspend,
    TimerRequested,
    TriggerRun,
    decide,
    deliverable_now,
    effects,
    evolve,
    timer_request_id,
)

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
URL = "http://app.local/workflows/order"
HEADERS = (("x-tenant", "acme"), ("authorization", "Bearer t0k3n"))
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000)
BOOM = ErrorInfo(type="RuntimeError", message="boom")


def trigger(*, not_before_ms: int | None = None) -> TriggerRun:
    return TriggerRun(
        run_id=RUN,
        workflow="order",
        url=URL,
        payload='{"order":42}',
        now_ms=T0,
        headers=HEADERS,
        not_before_ms=not_before_ms,
    )


def report(
    delivery: int, *, outcome: Outcome, steps: int = 0, first: int = 0, now: int = T0, attempt: int = 1
) -> ReportDelivery:
    return ReportDelivery(
        run_id=RUN,
        delivery_id=f"{RUN}/{delivery}",
        attempt=attempt,
        now_ms=now,
        steps=tuple(
            StepResult(index=index, name=f"step-{index}", kind=StepKind.RUN, output=f'"out-{index}"')
            for index in range(first, first + steps)
        ),
        outcome=outcome,
    )


def recorded(index: int) -> RecordedStep:
    return RecordedStep(index=index, name=f"step-{index}", kind=StepKind.RUN, output=f'"out-{index}"')


def given(*commands: Command) -> RunState | None:
    state: RunState | None = None
    for command in commands:
        state, _ = when(state, command)
    return state


def when(state: RunState | None, command: Command) -> tuple[RunState, list[Effect]]:
    """Decide, fold the events into the state, and return the effects, as the projector does."""
    decision = decide(state, command, DEFAULTS)
    assert not isinstance(decision, Rejected), decision.reason
    before = state
    for event in decision:
        state = evolve(state, event)
    assert state is not None
    return state, effects(before, decision)


def delivery(*, number: int, attempt: int = 1, step_index: int, steps: tuple[RecordedStep, ...] = ()) -> Delivery:
    return Delivery(
        run_id=RUN,
        workflow="order",
        url=URL,
        delivery_id=f"{RUN}/{number}",
        attempt=attempt,
        step_index=step_index,
        payload='{"order":42}',
        steps=steps,
        headers=HEADERS,
    )


# ---------------------------------------------------------------------------------------------
# effects


def test_a_trigger_requests_the_first_delivery_with_the_payload_and_headers() -> None:
    _, records = when(None, trigger())

    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/1#1",
            not_before_ms=T0,
            flow_key=None,
            delivery=delivery(number=1, step_index=0),
        )
    ]


def test_a_delayed_trigger_requests_its_delivery_for_later() -> None:
    _, records = when(None, trigger(not_before_ms=T0 + 30_000))

    [record] = records
    assert isinstance(record, DeliveryRequested)
    assert record.not_before_ms == T0 + 30_000


def test_the_next_delivery_carries_every_step_recorded_so_far() -> None:
    state = given(trigger(), report(1, steps=2, outcome=Continue()))

    _, records = when(state, report(2, steps=1, first=2, outcome=Continue(), now=T0 + 50))

    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/3#1",
            not_before_ms=T0 + 50,
            flow_key=None,
            delivery=delivery(number=3, step_index=3, steps=(recorded(0), recorded(1), recorded(2))),
        )
    ]


def test_a_retry_is_requested_for_when_it_is_due_with_its_own_request_id() -> None:
    state = given(trigger())

    _, records = when(state, report(1, outcome=Fail(error=BOOM, retryable=True), now=T0 + 10))

    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/2#2",
            not_before_ms=T0 + 10 + 1_000,
            flow_key=None,
            delivery=delivery(number=2, attempt=2, step_index=0),
        )
    ]


def test_the_request_id_is_the_delivery_id_and_attempt() -> None:
    assert delivery(number=7, attempt=3, step_index=0).request_id == f"{RUN}/7#3"


@pytest.mark.parametrize(
    ("outcome", "kind", "due"),
    [
        (SleepFor(index=1, name="nap", duration_ms=5_000), StepKind.SLEEP, T0 + 5_000),
        (SleepUntil(index=1, name="nap", wake_at_ms=T0 + 86_400_000), StepKind.SLEEP_UNTIL, T0 + 86_400_000),
    ],
    ids=["sleep", "sleep_until"],
)
def test_a_sleep_requests_a_timer_for_its_wake_time(outcome: Outcome, kind: StepKind, due: int) -> None:
    state = given(trigger())

    after, records = when(state, report(1, steps=1, outcome=outcome))

    assert records == [TimerRequested(request_id=timer_request_id(RUN, 1), run_id=RUN, step_index=1, due_ms=due)]
    sleep = after.pending(1)
    assert isinstance(sleep, PendingSleep)
    assert sleep.kind is kind


def test_each_sleep_of_a_run_has_its_own_timer_request_id() -> None:
    ids = {timer_request_id(RUN, index) for index in range(3)} | {timer_request_id("run_other", 0)}

    assert len(ids) == 4


def test_a_fired_timer_requests_the_next_delivery_with_the_sleep_recorded() -> None:
    state = given(trigger(), report(1, steps=1, outcome=SleepFor(index=1, name="nap", duration_ms=10)))

    _, records = when(state, FireTimer(run_id=RUN, step_index=1, now_ms=T0 + 10))

    nap = RecordedStep(index=1, name="nap", kind=StepKind.SLEEP, output="null")
    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/2#1",
            not_before_ms=T0 + 10,
            flow_key=None,
            delivery=delivery(number=2, step_index=2, steps=(recorded(0), nap)),
        )
    ]


def test_a_completed_run_requests_nothing_more() -> None:
    state = given(trigger())

    _, records = when(state, report(1, steps=1, outcome=Complete(output='"done"')))

    # the delivery that just reported was due, so it is no longer in the scheduler: nothing to drop
    assert records == []


def test_a_run_that_ends_drops_its_retries_still_waiting_in_the_scheduler() -> None:
    # given a branch whose retry is due later, beside another branch that fails the run for good
    state = given(
        trigger(),
        report(1, outcome=Suspend(steps=(PlanRun(index=0, name="a"), PlanRun(index=1, name="b")))),
    )
    retrying = report(2, outcome=Fail(error=BOOM, retryable=True), now=T0 + 10)
    state, _ = when(state, retrying)
    retry = next(d for d in state.in_flight if d.step_index == 0)
    assert retry.not_before_ms > T0 + 20

    # when the other branch fails without retry
    _, records = when(state, report(3, outcome=Fail(error=BOOM, retryable=False), now=T0 + 20))

    # then the retry still held by the scheduler is dropped
    assert ScheduleCancelled(run_id=RUN, request_ids=(f"{retry.delivery_id}#{retry.attempt}",)) in records


def test_a_failed_run_requests_only_its_failure_handler() -> None:
    state = given(trigger())

    _, records = when(state, report(1, steps=1, outcome=Fail(error=BOOM, retryable=False)))

    [record] = records
    assert isinstance(record, DeliveryRequested)
    assert record.delivery.failure == BOOM
    assert record.delivery.execute_index is None


# ---------------------------------------------------------------------------------------------
# deliverable_now: the fast path past the scheduler


def requested(*, not_before_ms: int, flow_key: str | None = None) -> DeliveryRequested:
    return DeliveryRequested(
        request_id=f"{RUN}/1#1",
        not_before_ms=not_before_ms,
        flow_key=flow_key,
        delivery=delivery(number=1, step_index=0),
    )


@pytest.mark.parametrize("not_before_ms", [T0, T0 - 1], ids=["due-now", "overdue"])
def test_a_due_delivery_without_flow_key_goes_straight_out(not_before_ms: int) -> None:
    record = requested(not_before_ms=not_before_ms)

    assert deliverable_now(record, T0) == record.delivery


def test_a_delivery_due_later_waits_for_the_scheduler() -> None:
    assert deliverable_now(requested(not_before_ms=T0 + 1), T0) is None


def test_a_delivery_under_flow_control_waits_for_the_scheduler_even_when_due() -> None:
    assert deliverable_now(requested(not_before_ms=T0, flow_key="tenant-acme"), T0) is None


def test_a_timer_never_takes_the_fast_path() -> None:
    record = TimerRequested(request_id=timer_request_id(RUN, 0), run_id=RUN, step_index=0, due_ms=T0)

    assert deliverable_now(record, T0 + 1_000) is None


def test_the_first_delivery_of_a_run_triggered_now_takes_the_fast_path() -> None:
    _, records = when(None, trigger())

    assert [deliverable_now(record, T0) for record in records] == [delivery(number=1, step_index=0)]


def test_a_retry_waits_for_its_backoff_before_taking_the_fast_path() -> None:
    state = given(trigger())
    _, [retry] = when(state, report(1, outcome=Fail(error=BOOM, retryable=True)))

    assert deliverable_now(retry, T0) is None
    assert deliverable_now(retry, T0 + 1_000) is not None
