"""``effects`` and ``deliverable_now``, given → when → then: what the projector asks of the scheduler."""

from __future__ import annotations

import pytest

from stepstream.core import (
    CallDelivery,
    CallRequested,
    CallSpec,
    CancelRun,
    Command,
    Complete,
    Continue,
    Defaults,
    Delivery,
    DeliveryCancelled,
    DeliveryRequested,
    Effect,
    ErrorInfo,
    Fail,
    FireTimer,
    FlowControl,
    Outcome,
    PendingCall,
    PendingSleep,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    PlanRun,
    PlanSleep,
    RecordedStep,
    RecoverRun,
    Recovery,
    Rejected,
    ReportCall,
    ReportDelivery,
    RunState,
    RunStatus,
    ScheduleCancelled,
    ScheduleRecord,
    SleepFor,
    SleepUntil,
    StepKind,
    StepResult,
    Suspend,
    TimerRequested,
    TriggerRun,
    call_deadline_id,
    call_request_id,
    decide,
    deliverable_now,
    effects,
    evolve,
    schedule_key,
    timer_request_id,
)

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
URL = "http://app.local/workflows/order"
HEADERS = (("x-tenant", "acme"), ("authorization", "Bearer t0k3n"))
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000)
BOOM = ErrorInfo(type="RuntimeError", message="boom")


def trigger(*, not_before_ms: int | None = None, flow: FlowControl | None = None) -> TriggerRun:
    return TriggerRun(
        run_id=RUN,
        workflow="order",
        url=URL,
        payload='{"order":42}',
        now_ms=T0,
        headers=HEADERS,
        not_before_ms=not_before_ms,
        flow=flow,
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


def delivery(
    *,
    number: int,
    attempt: int = 1,
    step_index: int,
    steps: tuple[RecordedStep, ...] = (),
    flow_key: str | None = None,
) -> Delivery:
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
        flow_key=flow_key,
    )


# ---------------------------------------------------------------------------------------------
# effects


def test_a_trigger_requests_the_first_delivery_with_the_payload_and_headers() -> None:
    _, records = when(None, trigger())

    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/1#1",
            not_before_ms=T0,
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


def requested(*, not_before_ms: int, flow: FlowControl | None = None) -> DeliveryRequested:
    return DeliveryRequested(
        request_id=f"{RUN}/1#1",
        not_before_ms=not_before_ms,
        delivery=delivery(number=1, step_index=0),
        flow=flow,
    )


@pytest.mark.parametrize("not_before_ms", [T0, T0 - 1], ids=["due-now", "overdue"])
def test_a_due_delivery_without_flow_key_goes_straight_out(not_before_ms: int) -> None:
    record = requested(not_before_ms=not_before_ms)

    assert deliverable_now(record, T0) == record.delivery


def test_a_delivery_due_later_waits_for_the_scheduler() -> None:
    assert deliverable_now(requested(not_before_ms=T0 + 1), T0) is None


def test_a_delivery_under_flow_control_waits_for_the_scheduler_even_when_due() -> None:
    assert deliverable_now(requested(not_before_ms=T0, flow=FlowControl(key="tenant-acme", rate=10)), T0) is None


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


# ---------------------------------------------------------------------------------------------
# Flow control: where each record goes, and what stands in for a call's deadline

RUN_FLOW = FlowControl(key="tenant-acme", rate=10, period_ms=1_000, parallelism=2)
CALL_FLOW = FlowControl(key="api.stripe.com", rate=25, period_ms=1_000)
GRACE = DEFAULTS.call_grace_ms


def charge(*, flow: FlowControl | None = CALL_FLOW, retries: int = 2) -> CallSpec:
    return CallSpec(
        method="POST",
        url="http://api.local/charge",
        headers=(("content-type", "application/json"),),
        body='{"amount":1}',
        timeout_ms=5_000,
        retries=retries,
        flow=flow,
    )


def suspend(*plans: PlannedStep) -> Suspend:
    return Suspend(steps=plans)


def answer(step_index: int, status: int, *, attempt: int = 1, now: int = T0) -> ReportCall:
    return ReportCall(
        run_id=RUN,
        step_index=step_index,
        attempt=attempt,
        now_ms=now,
        status=status,
        headers=(("content-type", "application/json"),),
        body='{"id":"ch_1"}',
    )


def history(*commands: Command) -> tuple[RunState, list[Effect]]:
    """The state after ``commands``, and every effect they called for, in order."""
    state: RunState | None = None
    records: list[Effect] = []
    for command in commands:
        state, more = when(state, command)
        records += more
    assert state is not None
    return state, records


def schedule_records(records: list[Effect]) -> list[ScheduleRecord]:
    return [
        record
        for record in records
        if isinstance(record, DeliveryRequested | CallRequested | TimerRequested | ScheduleCancelled)
    ]


def test_a_run_under_flow_control_requests_its_delivery_under_its_key() -> None:
    _, records = when(None, trigger(flow=RUN_FLOW))

    assert records == [
        DeliveryRequested(
            request_id=f"{RUN}/1#1",
            not_before_ms=T0,
            delivery=delivery(number=1, step_index=0, flow_key=RUN_FLOW.key),
            flow=RUN_FLOW,
        )
    ]
    [record] = records
    assert isinstance(record, DeliveryRequested)
    assert record.flow_key == RUN_FLOW.key
    assert schedule_key(record) == RUN_FLOW.key


@pytest.mark.parametrize(
    "commands",
    [
        (report(1, steps=1, outcome=Continue()),),
        (report(1, outcome=Fail(error=BOOM, retryable=True)),),
        (report(1, outcome=suspend(PlanRun(index=0, name="a"), PlanRun(index=1, name="b"))),),
        (
            report(1, steps=1, outcome=SleepFor(index=1, name="nap", duration_ms=10)),
            FireTimer(run_id=RUN, step_index=1, now_ms=T0 + 10),
        ),
        (report(1, outcome=Fail(error=BOOM, retryable=False)),),
    ],
    ids=["next", "retry", "branches", "after-a-sleep", "failure-handler"],
)  # fmt: skip
def test_every_delivery_of_a_run_under_flow_control_is_requested_under_its_key(commands: tuple[Command, ...]) -> None:
    _, records = history(trigger(flow=RUN_FLOW), *commands)

    deliveries = [record for record in records if isinstance(record, DeliveryRequested)]
    assert len(deliveries) >= 2
    for record in deliveries:
        assert (record.flow, record.delivery.flow_key, schedule_key(record)) == (RUN_FLOW, RUN_FLOW.key, RUN_FLOW.key)


def test_without_flow_control_every_schedule_record_is_keyed_by_its_run() -> None:
    plans = suspend(
        PlanRun(index=0, name="a"),
        PlanCall(index=1, name="pay", call=charge(flow=None)),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=1_000),
    )
    _, records = history(trigger(), report(1, outcome=plans), CancelRun(run_id=RUN, reason=None, now_ms=T0 + 1))

    scheduled = schedule_records(records)
    assert {type(record) for record in scheduled} == {
        DeliveryRequested,
        CallRequested,
        TimerRequested,
        ScheduleCancelled,
    }
    assert {schedule_key(record) for record in scheduled} == {RUN}
    assert all(record.flow is None for record in scheduled if isinstance(record, DeliveryRequested | CallRequested))


def test_a_call_with_its_own_flow_control_is_requested_under_its_key_with_a_lease_instead_of_a_deadline() -> None:
    state = given(trigger(flow=RUN_FLOW))

    after, records = when(state, report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge()))))

    pending = after.pending(0)
    assert isinstance(pending, PendingCall)
    assert records == [
        CallRequested(
            request_id=call_request_id(RUN, 0, 1),
            not_before_ms=T0,
            call=CallDelivery(run_id=RUN, step_index=0, attempt=1, call=charge(), flow_key=CALL_FLOW.key),
            flow=CALL_FLOW,
            lease_ms=pending.deadline_ms - T0,
        )
    ]
    assert pending.deadline_ms - T0 == 5_000 + GRACE
    [record] = records
    assert isinstance(record, CallRequested)
    assert schedule_key(record) == CALL_FLOW.key  # its own key, not the run's


def test_a_call_without_its_own_flow_control_is_not_throttled_by_its_runs() -> None:
    state = given(trigger(flow=RUN_FLOW))

    _, records = when(state, report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge(flow=None)))))

    [requested_call, deadline] = records
    assert isinstance(requested_call, CallRequested)
    assert (requested_call.flow, requested_call.call.flow_key, schedule_key(requested_call)) == (None, None, RUN)
    assert deliverable_now(requested_call, T0) == requested_call.call
    assert deadline == TimerRequested(
        request_id=call_deadline_id(RUN, 0, 1), run_id=RUN, step_index=0, due_ms=T0 + 5_000 + GRACE
    )


def test_a_retry_of_a_call_under_flow_control_has_a_lease_of_its_own_and_no_deadline_to_drop() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge()))))

    after, records = when(state, answer(0, 503, now=T0 + 100))

    pending = after.pending(0)
    assert isinstance(pending, PendingCall)
    [retry] = records
    assert isinstance(retry, CallRequested)
    assert retry.request_id == call_request_id(RUN, 0, 2)
    assert retry.not_before_ms > T0 + 100
    assert (retry.flow, retry.call.flow_key, retry.call.attempt) == (CALL_FLOW, CALL_FLOW.key, 2)
    assert retry.lease_ms == pending.deadline_ms - retry.not_before_ms == 5_000 + GRACE


def test_a_retry_after_a_lease_ended_under_flow_control_drops_no_deadline() -> None:
    state, _ = history(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge()))))
    pending = state.pending(0)
    assert isinstance(pending, PendingCall)

    _, records = when(state, FireTimer(run_id=RUN, step_index=0, now_ms=pending.deadline_ms))

    assert [type(record) for record in records] == [CallRequested]


def test_the_answer_to_a_call_under_flow_control_drops_no_deadline() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge()))))

    _, records = when(state, answer(0, 200, now=T0 + 100))

    assert [type(record) for record in records] == [DeliveryRequested]


def test_a_cancelled_run_drops_each_pending_request_under_the_key_it_was_requested_under() -> None:
    # given a run under flow control with a branch delivery in flight, a call under its own key, and a sleep
    plans = suspend(
        PlanRun(index=0, name="a"),
        PlanCall(index=1, name="pay", call=charge()),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=60_000),
    )
    state, earlier = history(trigger(flow=RUN_FLOW), report(1, outcome=plans))

    # when the run is cancelled
    _, records = when(state, CancelRun(run_id=RUN, reason="operator", now_ms=T0 + 5))

    # then one cancellation per key, each going where its requests went
    assert schedule_records(records) == [
        ScheduleCancelled(run_id=RUN, request_ids=(f"{RUN}/2#1",), flow_key=RUN_FLOW.key),
        ScheduleCancelled(run_id=RUN, request_ids=(call_request_id(RUN, 1, 1),), flow_key=CALL_FLOW.key),
        ScheduleCancelled(run_id=RUN, request_ids=(timer_request_id(RUN, 2),), flow_key=None),
    ]
    went = {
        record.request_id: schedule_key(record)
        for record in schedule_records(earlier)
        if not isinstance(record, ScheduleCancelled)
    }
    for cancelled in schedule_records(records):
        assert isinstance(cancelled, ScheduleCancelled)
        assert all(went[request_id] == schedule_key(cancelled) for request_id in cancelled.request_ids)


@pytest.mark.parametrize(
    ("run_flow", "call_flow"),
    [(None, None), (RUN_FLOW, None), (None, CALL_FLOW), (RUN_FLOW, CALL_FLOW)],
    ids=["none", "run-only", "call-only", "both"],
)
@pytest.mark.parametrize("ending", ["cancelled", "failed"])
def test_a_run_that_ends_drops_every_pending_request_where_it_was_requested(
    run_flow: FlowControl | None, call_flow: FlowControl | None, ending: str
) -> None:
    plans = suspend(
        PlanRun(index=0, name="a"),
        PlanCall(index=1, name="pay", call=charge(flow=call_flow)),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=60_000),
        PlanRun(index=3, name="b"),
    )
    state, earlier = history(trigger(flow=run_flow), report(1, outcome=plans))
    end: Command = (
        CancelRun(run_id=RUN, reason=None, now_ms=T0 + 5)
        if ending == "cancelled"
        else report(3, outcome=Fail(error=BOOM, retryable=False), now=T0 + 5)  # the branch of step 3 fails
    )

    _, records = when(state, end)

    cancelled = [record for record in records if isinstance(record, ScheduleCancelled)]
    went = {
        record.request_id: schedule_key(record)
        for record in schedule_records(earlier)
        if not isinstance(record, ScheduleCancelled)
    }
    dropped = [request_id for record in cancelled for request_id in record.request_ids]
    assert len(dropped) == len(set(dropped))
    assert len({schedule_key(record) for record in cancelled}) == len(cancelled), "one cancellation per key"
    for record in cancelled:
        assert record.run_id == RUN
        for request_id in record.request_ids:
            assert went[request_id] == schedule_key(record), f"{request_id} is not where it was requested"
    # everything still pending is dropped: the other branch, the call (and its deadline, if any), the sleep
    expected = {f"{RUN}/2#1", call_request_id(RUN, 1, 1), timer_request_id(RUN, 2)}
    if call_flow is None:
        expected.add(call_deadline_id(RUN, 1, 1))
    if ending == "cancelled":
        expected.add(f"{RUN}/3#1")
    assert set(dropped) == expected


def test_the_fast_path_never_takes_a_request_under_flow_control() -> None:
    plans = suspend(PlanRun(index=0, name="a"), PlanCall(index=1, name="pay", call=charge()))
    _, records = history(trigger(flow=RUN_FLOW), report(1, outcome=plans), answer(1, 503, now=T0 + 1))

    requests = [record for record in records if isinstance(record, DeliveryRequested | CallRequested)]
    assert {type(record) for record in requests} == {DeliveryRequested, CallRequested}
    assert [deliverable_now(record, T0 + 86_400_000) for record in requests] == [None] * len(requests)


def test_a_child_run_invoked_with_flow_control_is_triggered_under_it() -> None:
    child_flow = FlowControl(key="shipping", parallelism=1)
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}", flow=child_flow)

    _, records = when(given(trigger(flow=RUN_FLOW)), report(1, steps=1, outcome=suspend(plan)))

    [child] = records
    assert isinstance(child, TriggerRun)
    assert (child.flow, child.parent_run_id) == (child_flow, RUN)
    decision = decide(None, child, DEFAULTS)
    assert not isinstance(decision, Rejected), decision.reason
    [first] = effects(None, decision)
    assert isinstance(first, DeliveryRequested)
    assert (first.flow, schedule_key(first)) == (child_flow, "shipping")


def test_a_child_run_invoked_without_flow_control_is_not_under_its_parents() -> None:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}")

    _, [child] = when(given(trigger(flow=RUN_FLOW)), report(1, steps=1, outcome=suspend(plan)))

    assert isinstance(child, TriggerRun)
    assert child.flow is None


def test_a_recovered_run_drops_its_failure_handlers_retry_under_the_runs_key() -> None:
    # given a failed run under flow control whose failure handler failed and is due again later
    state, _ = history(trigger(flow=RUN_FLOW), report(1, outcome=Fail(error=BOOM, retryable=False)))
    handler = state.failure_delivery
    assert handler is not None
    state, [retry] = when(state, report(2, outcome=Fail(error=BOOM, retryable=True), now=T0 + 10))
    assert isinstance(retry, DeliveryRequested)
    assert schedule_key(retry) == RUN_FLOW.key
    assert state.status is RunStatus.FAILED

    # when an operator resumes it
    _, records = when(state, RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=T0 + 20))

    # then the retry is dropped where it waits, under the run's flow key
    cancelled = [record for record in records if isinstance(record, ScheduleCancelled)]
    assert cancelled == [ScheduleCancelled(run_id=RUN, request_ids=(retry.request_id,), flow_key=RUN_FLOW.key)]


# ---------------------------------------------------------------------------------------------
# A run that ends while the executor may be going on with its delivery


@pytest.mark.parametrize(
    "ending",
    [
        pytest.param(CancelRun(run_id=RUN, reason=None, now_ms=T0 + 5), id="cancelled"),
        pytest.param(RecoverRun(run_id=RUN, action=Recovery.DELETE, now_ms=T0 + 5), id="not an ending"),
    ],
)
def test_a_run_cancelled_with_a_delivery_in_flight_tells_the_executor(ending: Command) -> None:
    state = given(trigger())
    assert state is not None

    decision = decide(state, ending)

    records = [] if isinstance(decision, Rejected) else effects(state, decision)
    expected = [DeliveryCancelled(run_id=RUN)] if isinstance(ending, CancelRun) else []
    assert [record for record in records if isinstance(record, DeliveryCancelled)] == expected


def test_a_run_under_flow_control_or_waiting_on_no_delivery_tells_the_executor_nothing() -> None:
    sleeping = given(trigger(), report(1, outcome=SleepFor(index=0, name="nap", duration_ms=60_000)))
    under_flow = given(trigger(flow=RUN_FLOW))

    for state in (sleeping, under_flow):
        _, records = when(state, CancelRun(run_id=RUN, reason=None, now_ms=T0 + 5))
        assert not any(isinstance(record, DeliveryCancelled) for record in records)
