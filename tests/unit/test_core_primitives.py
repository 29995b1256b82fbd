"""Every primitive beyond ``run`` and ``sleep``, given → when → then: parallel steps, call, wait, notify,
invoke, cancel, the failure handler and dead-letter recovery — the events ``decide`` appends and the
records ``effects`` asks of the rest of the engine for them."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from stepstream.core import (
    CallDelivery,
    CallRequested,
    CallRetried,
    CallSpec,
    CallStarted,
    Cancel,
    CancelRun,
    ChildFinished,
    Command,
    Complete,
    Continue,
    Defaults,
    Delivery,
    DeliveryCancelled,
    DeliveryRequested,
    Effect,
    ErrorInfo,
    Event,
    EventReceived,
    Fail,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    FireTimer,
    InvokeStarted,
    NotifyEvent,
    NotifyStarted,
    Outcome,
    PendingBranch,
    PendingCall,
    PendingInvoke,
    PendingNotify,
    PendingWait,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    ReceiveEvent,
    RecordedStep,
    RecoverRun,
    Recovery,
    RegisterWaiter,
    Rejected,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    ResultIgnored,
    RunCancelled,
    RunFailed,
    RunRecovered,
    RunStarted,
    RunState,
    RunStatus,
    ScheduleCancelled,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
    Suspend,
    TimerRequested,
    TriggerRun,
    UnregisterWaiter,
    WaitStarted,
    WaitTimedOut,
    call_deadline_id,
    call_request_id,
    child_reattached,
    child_run_id,
    child_url,
    command_key,
    decide,
    deliverable_now,
    effects,
    evolve,
    fold,
    timer_request_id,
    wait_timer_id,
)

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
URL = "http://app.local/workflows/order"
HEADERS = (("x-tenant", "acme"),)
GRACE = 5_000
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000, max_invoke_depth=3, call_grace_ms=GRACE)
BOOM = ErrorInfo(type="ValueError", message="boom")
CHARGE = CallSpec(
    method="POST",
    url="http://payments.local/charges",
    headers=(("content-type", "application/json"),),
    body='{"amount":5}',
    timeout_ms=10_000,
    retries=2,
)


# ---------------------------------------------------------------------------------------------
# Commands, written the way a test reads them


def trigger(
    *,
    run_id: str = RUN,
    now: int = T0,
    retries: int | None = None,
    depth: int = 0,
    failure_url: str | None = None,
    retry_delay: str | None = None,
) -> TriggerRun:
    return TriggerRun(
        run_id=run_id,
        workflow="order",
        url=URL,
        payload='{"order":42}',
        now_ms=now,
        headers=HEADERS,
        retries=retries,
        depth=depth,
        failure_url=failure_url,
        retry_delay=retry_delay,
    )


def step(index: int, name: str | None = None) -> StepResult:
    return StepResult(index=index, name=name or f"step-{index}", kind=StepKind.RUN, output=f'"out-{index}"')


def recorded(index: int, name: str | None = None) -> RecordedStep:
    return RecordedStep(index=index, name=name or f"step-{index}", kind=StepKind.RUN, output=f'"out-{index}"')


def report(
    delivery: int,
    *,
    outcome: Outcome,
    steps: tuple[StepResult, ...] = (),
    attempt: int = 1,
    now: int = T0,
    run_id: str = RUN,
) -> ReportDelivery:
    """A report for delivery number ``delivery`` of the run (its id is ``<run>/<delivery>``)."""
    return ReportDelivery(
        run_id=run_id,
        delivery_id=f"{run_id}/{delivery}",
        attempt=attempt,
        now_ms=now,
        steps=steps,
        outcome=outcome,
    )


def suspend(*plans: PlannedStep) -> Suspend:
    return Suspend(steps=plans)


def branch_done(delivery: int, index: int, *, attempt: int = 1, now: int = T0) -> ReportDelivery:
    """The report of an execute-only delivery: its one step, then 'continue'."""
    return report(delivery, steps=(step(index, f"branch-{index}"),), outcome=Continue(), attempt=attempt, now=now)


def timer(step_index: int, *, now: int = T0) -> FireTimer:
    return FireTimer(run_id=RUN, step_index=step_index, now_ms=now)


def answer(step_index: int, status: int, *, attempt: int = 1, now: int = T0, body: str = '{"id":"ch_1"}') -> ReportCall:
    return ReportCall(
        run_id=RUN,
        step_index=step_index,
        attempt=attempt,
        now_ms=now,
        status=status,
        headers=(("content-type", "application/json"),),
        body=body,
    )


def no_answer(step_index: int, *, attempt: int = 1, now: int = T0) -> ReportCall:
    return ReportCall(
        run_id=RUN,
        step_index=step_index,
        attempt=attempt,
        now_ms=now,
        status=0,
        headers=(),
        body="null",
        error="connection refused",
    )


# ---------------------------------------------------------------------------------------------
# given / when / then


def given(*commands: Command, defaults: Defaults = DEFAULTS) -> RunState:
    """The state after each command was decided and its events applied; every one must be accepted."""
    state: RunState | None = None
    for command in commands:
        decision = decide(state, command, defaults)
        assert not isinstance(decision, Rejected), f"given {command} was rejected: {decision.reason}"
        state = then_applied(state, decision)
    assert state is not None
    return state


def when(state: RunState | None, command: Command, defaults: Defaults = DEFAULTS) -> list[Event]:
    decision = decide(state, command, defaults)
    assert not isinstance(decision, Rejected), f"expected {command} to be accepted, but: {decision.reason}"
    first = (state.seq if state else 0) + 1
    assert [event.seq for event in decision] == list(range(first, first + len(decision)))
    return decision


def when_rejected(state: RunState | None, command: Command, defaults: Defaults = DEFAULTS) -> Rejected:
    decision = decide(state, command, defaults)
    assert isinstance(decision, Rejected), f"expected {command} to be rejected, but got {decision}"
    assert decision.reason.startswith("Expected"), decision.reason
    return decision


def when_effects(state: RunState | None, command: Command, defaults: Defaults = DEFAULTS) -> list[Effect]:
    """The records the projector writes for ``command``: ``effects`` of the state before and the events."""
    return effects(state, when(state, command, defaults))


def then_applied(state: RunState | None, events: list[Event]) -> RunState:
    for event in events:
        state = evolve(state, event)
    assert state is not None
    return state


def delivery(
    *,
    number: int,
    step_index: int,
    steps: tuple[RecordedStep, ...] = (),
    attempt: int = 1,
    execute_index: int | None = None,
    url: str = URL,
    failure: ErrorInfo | None = None,
) -> Delivery:
    return Delivery(
        run_id=RUN,
        workflow="order",
        url=url,
        delivery_id=f"{RUN}/{number}",
        attempt=attempt,
        step_index=step_index,
        payload='{"order":42}',
        steps=steps,
        headers=HEADERS,
        execute_index=execute_index,
        failure=failure,
    )


def requested(record: Delivery, *, not_before_ms: int = T0) -> DeliveryRequested:
    return DeliveryRequested(request_id=record.request_id, not_before_ms=not_before_ms, delivery=record)


def replays(events: list[Event]) -> list[StepScheduled]:
    return [event for event in events if isinstance(event, StepScheduled) and not event.execute_only]


# ---------------------------------------------------------------------------------------------
# Parallel run steps: one execute-only delivery each, one replay delivery after the last


BRANCHES = tuple(PlanRun(index=index, name=f"branch-{index}") for index in range(1, 11))


def fanned_out() -> RunState:
    """Step 0 done; steps 1..10 run in parallel on deliveries 2..11."""
    return given(trigger(), report(1, steps=(step(0),), outcome=suspend(*BRANCHES)))


def test_a_ten_way_parallel_plan_schedules_ten_execute_only_deliveries_and_no_replay() -> None:
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=suspend(*BRANCHES), now=T0 + 5))

    assert events[1:] == [
        StepScheduled(
            run_id=RUN,
            seq=3 + index,
            at_ms=T0 + 5,
            step_index=index,
            delivery_id=f"{RUN}/{index + 1}",
            attempt=1,
            not_before_ms=T0 + 5,
            execute_only=True,
            name=f"branch-{index}",
        )
        for index in range(1, 11)
    ]
    after = then_applied(state, events)
    assert after.waiting == tuple(PendingBranch(step_index=index, name=f"branch-{index}") for index in range(1, 11))
    assert [d.delivery_id for d in after.in_flight] == [f"{RUN}/{number}" for number in range(2, 12)]
    assert after.status is RunStatus.RUNNING


def test_each_branch_delivery_executes_only_its_step_and_carries_the_recorded_steps() -> None:
    records = when_effects(given(trigger()), report(1, steps=(step(0),), outcome=suspend(*BRANCHES)))

    assert records == [
        requested(delivery(number=index + 1, step_index=index, steps=(recorded(0),), execute_index=index))
        for index in range(1, 11)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_the_replay_delivery_is_scheduled_exactly_once_after_the_last_branch_reports(seed: int) -> None:
    state = fanned_out()
    order = list(range(1, 11))
    random.Random(seed).shuffle(order)
    all_events: list[Event] = []

    for position, index in enumerate(order):
        events = when(state, branch_done(index + 1, index, now=T0 + position))
        all_events += events
        state = then_applied(state, events)
        assert events[0] == StepCompleted(
            run_id=RUN,
            seq=events[0].seq,
            at_ms=T0 + position,
            step_index=index,
            name=f"branch-{index}",
            kind=StepKind.RUN,
            output=f'"out-{index}"',
            delivery_id=f"{RUN}/{index + 1}",
        )
        if position < 9:
            assert events[1:] == [], "no replay before every branch has its result"

    assert replays(all_events) == [
        StepScheduled(
            run_id=RUN,
            seq=state.seq,
            at_ms=T0 + 9,
            step_index=11,
            delivery_id=f"{RUN}/12",
            attempt=1,
            not_before_ms=T0 + 9,
        )
    ]
    assert [recorded.index for recorded in state.steps] == list(range(11))


def test_the_replay_after_the_branches_carries_every_branch_result() -> None:
    state = fanned_out()
    for index in range(1, 10):
        state = then_applied(state, when(state, branch_done(index + 1, index)))

    records = when_effects(state, branch_done(11, 10))

    steps = (recorded(0), *(recorded(index, f"branch-{index}") for index in range(1, 11)))
    assert records == [requested(delivery(number=12, step_index=11, steps=steps))]


def test_a_branch_report_is_accepted_once() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanRun(index=0, name="a"), PlanRun(index=1, name="b"))))
    state = then_applied(state, when(state, report(2, steps=(step(0, "a"),), outcome=Continue())))

    assert when_rejected(state, report(2, steps=(step(0, "a"),), outcome=Continue())).duplicate


def test_parallel_steps_of_different_kinds_start_together_and_the_replay_waits_for_all_of_them() -> None:
    plans = (
        PlanRun(index=1, name="charge"),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=100),
        PlanWait(index=3, name="paid", event_id="order-42", timeout_ms=1_000),
    )
    state = given(trigger(), report(1, steps=(step(0),), outcome=suspend(*plans)))
    assert state.status is RunStatus.RUNNING

    state = then_applied(state, when(state, report(2, steps=(step(1, "charge"),), outcome=Continue())))
    assert state.status is RunStatus.WAITING  # a sleep and a wait are left
    state = then_applied(state, when(state, timer(2, now=T0 + 100)))
    events = when(state, ReceiveEvent(run_id=RUN, step_index=3, event_id="order-42", data="1", now_ms=T0 + 200))

    assert [type(event) for event in events] == [EventReceived, StepScheduled]
    assert replays(events)[0].step_index == 4


def test_a_failing_branch_retries_alone_with_backoff() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanRun(index=0, name="a"), PlanRun(index=1, name="b"))))

    events = when(state, report(2, outcome=Fail(error=BOOM, retryable=True), now=T0 + 10))

    assert events == [
        StepFailed(
            run_id=RUN,
            seq=5,
            at_ms=T0 + 10,
            step_index=0,
            name="a",
            delivery_id=f"{RUN}/2",
            attempt=1,
            error=BOOM,
            retry_at_ms=T0 + 10 + 1_000,
            retryable=True,
        ),
        StepScheduled(
            run_id=RUN,
            seq=6,
            at_ms=T0 + 10,
            step_index=0,
            delivery_id=f"{RUN}/4",
            attempt=2,
            not_before_ms=T0 + 10 + 1_000,
            execute_only=True,
            name="a",
        ),
    ]
    after = then_applied(state, events)
    assert [(d.delivery_id, d.step_index) for d in after.in_flight] == [(f"{RUN}/3", 1), (f"{RUN}/4", 0)]
    assert effects(state, events) == [
        requested(delivery(number=4, step_index=0, attempt=2, execute_index=0), not_before_ms=T0 + 1_010)
    ]


def test_each_retry_of_a_branch_waits_twice_as_long() -> None:
    state = given(trigger(retries=3), report(1, outcome=suspend(PlanRun(index=0, name="a"))))
    delays = []
    for attempt, number in ((1, 2), (2, 3), (3, 4)):
        events = when(state, report(number, attempt=attempt, outcome=Fail(error=BOOM, retryable=True)))
        failed = events[0]
        assert isinstance(failed, StepFailed)
        assert failed.retry_at_ms is not None
        delays.append(failed.retry_at_ms - T0)
        state = then_applied(state, events)

    assert delays == [1_000, 2_000, 4_000]


def test_a_branch_that_exhausts_its_retries_fails_the_run_and_drops_the_other_branches() -> None:
    state = given(
        trigger(retries=1),
        report(1, outcome=suspend(PlanRun(index=0, name="a"), PlanRun(index=1, name="b"))),
        report(2, outcome=Fail(error=BOOM, retryable=True)),  # branch a's retry is delivery 4
    )

    events = when(state, report(4, attempt=2, outcome=Fail(error=BOOM, retryable=True), now=T0 + 50))

    failed, run_failed, handler = events
    assert isinstance(failed, StepFailed)
    assert (failed.step_index, failed.attempt, failed.retry_at_ms) == (0, 2, None)
    assert run_failed == RunFailed(
        run_id=RUN,
        seq=run_failed.seq,
        at_ms=T0 + 50,
        error=ErrorInfo(type="ValueError", message="boom (gave up after 2 attempts)"),
    )
    assert isinstance(handler, FailureHandlerScheduled)
    records = effects(state, events)
    assert records[0] == ScheduleCancelled(run_id=RUN, request_ids=(f"{RUN}/3#1",))  # branch b's delivery


def test_a_non_retryable_branch_failure_fails_the_run_at_once() -> None:
    state = given(trigger(retries=5), report(1, outcome=suspend(PlanRun(index=0, name="a"))))

    events = when(state, report(2, outcome=Fail(error=BOOM, retryable=False)))

    assert [type(event) for event in events] == [StepFailed, RunFailed, FailureHandlerScheduled]
    assert then_applied(state, events).error == BOOM


def test_a_branch_delivery_that_cancels_the_run_cancels_it() -> None:
    # given two branches in flight
    state = given(trigger(), report(1, outcome=Suspend(steps=(PlanRun(index=0, name="a"), PlanRun(index=1, name="b")))))

    # when replaying up to branch a reaches ctx.cancel()
    events = when(state, report(2, outcome=Cancel(reason="not needed")))

    # then the run is cancelled, not failed
    assert [type(event) for event in events] == [RunCancelled]


@pytest.mark.parametrize(
    "wrong",
    [
        report(2, steps=(), outcome=Continue()),
        report(2, steps=(step(1),), outcome=Continue()),
        report(2, steps=(step(0), step(1)), outcome=Continue()),
        report(2, steps=(step(0),), outcome=Complete(output="1")),
    ],
    ids=["no-step", "another-step", "more-steps", "not-continue"],
)
def test_a_branch_delivery_that_reports_anything_but_its_step_fails_the_run_with_a_protocol_error(
    wrong: ReportDelivery,
) -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanRun(index=0, name="a"))))

    events = when(state, wrong)

    run_failed = events[1]
    assert isinstance(run_failed, RunFailed)
    assert run_failed.error.type == "ProtocolError"
    assert run_failed.error.message.startswith("Expected the delivery that executes only step 0")


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ((), "Expected a suspension to name at least one step"),
        ((PlanRun(index=0, name="a"), PlanRun(index=0, name="b")), "Expected the suspended steps to have distinct"),
        ((PlanWait(index=0, name="w", event_id="e", timeout_ms=-1),), "Expected a wait timeout of zero or more"),
        ((PlanSleep(index=0, name="s", kind=StepKind.SLEEP),), "Expected a sleep with duration_ms or a sleep_until"),
        ((PlanSleep(index=0, name="s", kind=StepKind.SLEEP, duration_ms=-5),), "Expected a sleep of zero or more"),
    ],
    ids=["empty", "same-index-twice", "negative-wait", "sleep-without-time", "negative-sleep"],
)
def test_a_malformed_suspension_is_rejected(plans: tuple[PlannedStep, ...], message: str) -> None:
    state = given(trigger())

    rejected = when_rejected(state, report(1, outcome=suspend(*plans)))

    assert rejected.reason.startswith(message)
    assert not rejected.duplicate


def test_a_suspension_cannot_start_a_step_that_is_already_recorded() -> None:
    state = given(trigger())

    assert not when_rejected(state, report(1, steps=(step(0),), outcome=suspend(PlanRun(index=0, name="a")))).duplicate


# ---------------------------------------------------------------------------------------------
# call: the executor makes the request; retried on no answer, 5xx, 408, 425, 429


def calling(call: CallSpec = CHARGE, *, retries: int | None = None) -> RunState:
    """Step 0 is a pending call of ``call``."""
    return given(trigger(retries=retries), report(1, outcome=suspend(PlanCall(index=0, name="charge", call=call))))


def test_a_call_starts_with_a_deadline_past_its_timeout() -> None:
    events = when(given(trigger()), report(1, outcome=suspend(PlanCall(index=0, name="charge", call=CHARGE))))

    assert events == [
        CallStarted(
            run_id=RUN, seq=3, at_ms=T0, step_index=0, name="charge", call=CHARGE, deadline_ms=T0 + 10_000 + GRACE
        )
    ]


def test_a_started_call_requests_its_first_attempt_now_and_a_deadline_timer() -> None:
    records = when_effects(given(trigger()), report(1, outcome=suspend(PlanCall(index=0, name="charge", call=CHARGE))))

    attempt = CallDelivery(run_id=RUN, step_index=0, attempt=1, call=CHARGE)
    assert records == [
        CallRequested(request_id=call_request_id(RUN, 0, 1), not_before_ms=T0, call=attempt),
        TimerRequested(request_id=call_deadline_id(RUN, 0, 1), run_id=RUN, step_index=0, due_ms=T0 + 10_000 + GRACE),
    ]
    assert deliverable_now(records[0], T0) == attempt
    assert attempt.request_id == call_request_id(RUN, 0, 1)


def test_500_500_200_with_two_retries_retries_twice_then_completes_with_200() -> None:
    state = calling()
    events: list[Event] = []
    for attempt, status, now in ((1, 500, T0 + 100), (2, 500, T0 + 2_000), (3, 200, T0 + 5_000)):
        decided = when(state, answer(0, status, attempt=attempt, now=now))
        events += decided
        state = then_applied(state, decided)

    assert events[:2] == [
        CallRetried(
            run_id=RUN,
            seq=4,
            at_ms=T0 + 100,
            step_index=0,
            attempt=1,
            status=500,
            error="answered 500",
            retry_at_ms=T0 + 100 + 1_000,
            deadline_ms=T0 + 100 + 1_000 + 10_000 + GRACE,
        ),
        CallRetried(
            run_id=RUN,
            seq=5,
            at_ms=T0 + 2_000,
            step_index=0,
            attempt=2,
            status=500,
            error="answered 500",
            retry_at_ms=T0 + 2_000 + 2_000,
            deadline_ms=T0 + 2_000 + 2_000 + 10_000 + GRACE,
        ),
    ]
    completed = events[2]
    assert isinstance(completed, StepCompleted)
    assert (completed.kind, completed.name, completed.step_index) == (StepKind.CALL, "charge", 0)
    assert json.loads(completed.output) == {
        "status": 200,
        "headers": {"content-type": "application/json"},
        "body": {"id": "ch_1"},
        "error": None,
    }
    assert [type(event) for event in events[3:]] == [StepScheduled]  # the workflow runs on
    assert state.status is RunStatus.RUNNING


def test_a_retried_call_replaces_the_old_deadline_and_requests_the_next_attempt_when_due() -> None:
    state = calling()

    records = when_effects(state, answer(0, 503, now=T0 + 100))

    second = CallDelivery(run_id=RUN, step_index=0, attempt=2, call=CHARGE)
    assert records == [
        ScheduleCancelled(run_id=RUN, request_ids=(call_deadline_id(RUN, 0, 1),)),
        CallRequested(request_id=call_request_id(RUN, 0, 2), not_before_ms=T0 + 1_100, call=second),
        TimerRequested(
            request_id=call_deadline_id(RUN, 0, 2), run_id=RUN, step_index=0, due_ms=T0 + 1_100 + 10_000 + GRACE
        ),
    ]
    assert deliverable_now(records[1], T0 + 100) is None


def test_the_answer_ends_the_call_and_drops_its_deadline() -> None:
    state = calling()

    records = when_effects(state, answer(0, 200))

    assert records[0] == ScheduleCancelled(run_id=RUN, request_ids=(call_deadline_id(RUN, 0, 1),))
    assert isinstance(records[1], DeliveryRequested)


@pytest.mark.parametrize("status", [200, 201, 204, 301, 400, 404, 409, 422])
def test_an_answer_that_is_not_retryable_completes_the_step_at_once_with_that_answer(status: int) -> None:
    state = calling()

    events = when(state, answer(0, status, body='"nope"'))

    completed = events[0]
    assert isinstance(completed, StepCompleted)
    assert json.loads(completed.output)["status"] == status
    assert json.loads(completed.output)["body"] == "nope"


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504])
def test_an_answer_that_says_try_later_is_retried(status: int) -> None:
    events = when(calling(), answer(0, status))

    assert [type(event) for event in events] == [CallRetried]


def test_no_answer_at_all_is_retried_with_the_reason() -> None:
    events = when(calling(), no_answer(0))

    [retried] = events
    assert isinstance(retried, CallRetried)
    assert (retried.status, retried.error) == (0, "connection refused")


def test_a_call_that_never_gets_a_usable_answer_completes_with_the_last_one() -> None:
    state = calling()
    for attempt in (1, 2):
        state = then_applied(state, when(state, answer(0, 500, attempt=attempt)))

    events = when(state, no_answer(0, attempt=3))

    completed = events[0]
    assert isinstance(completed, StepCompleted)
    assert json.loads(completed.output) == {"status": 0, "headers": {}, "body": None, "error": "connection refused"}


def test_a_call_with_zero_retries_completes_with_its_first_answer_even_a_500() -> None:
    call = CallSpec(method="GET", url="http://x.local", headers=(), body=None, timeout_ms=100, retries=0)

    events = when(calling(call), answer(0, 500))

    assert isinstance(events[0], StepCompleted)


def test_no_report_by_the_deadline_counts_as_a_lost_attempt_and_is_retried() -> None:
    state = calling()
    deadline = T0 + 10_000 + GRACE

    events = when(state, timer(0, now=deadline))

    [retried] = events
    assert isinstance(retried, CallRetried)
    assert (retried.attempt, retried.status) == (1, 0)
    assert retried.error.startswith("no answer reported within 10000 ms")
    assert then_applied(state, events).pending(0) == PendingCall(
        step_index=0, name="charge", call=CHARGE, attempt=2, deadline_ms=retried.deadline_ms
    )


def test_a_deadline_timer_before_the_deadline_is_a_duplicate() -> None:
    assert when_rejected(calling(), timer(0, now=T0 + 10_000)).duplicate


def test_the_deadline_timer_of_an_earlier_attempt_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="charge", call=CHARGE))), answer(0, 500))

    # the first attempt's deadline timer was dropped, but fires anyway (it was already on its way)
    assert when_rejected(state, timer(0, now=T0 + 10_000 + GRACE)).duplicate


def test_an_answer_for_an_earlier_attempt_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="charge", call=CHARGE))), answer(0, 500))

    assert when_rejected(state, answer(0, 200, attempt=1)).duplicate
    assert when_rejected(state, answer(0, 200, attempt=3)).duplicate


def test_an_answer_for_a_step_that_is_no_call_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=suspend(PlanWait(index=0, name="w", event_id="e", timeout_ms=1))))

    assert when_rejected(state, answer(0, 200)).duplicate


def test_a_call_retry_delay_rule_sets_the_delay_before_each_retry() -> None:
    call = CallSpec(
        method="GET",
        url="http://x.local",
        headers=(),
        body=None,
        timeout_ms=100,
        retries=3,
        retry_delay="250 * pow(2, retried)",
    )
    state = calling(call)
    delays = []
    for attempt in (1, 2, 3):
        [retried] = when(state, answer(0, 500, attempt=attempt))
        assert isinstance(retried, CallRetried)
        delays.append(retried.retry_at_ms - T0)
        state = then_applied(state, [retried])

    assert delays == [250, 500, 1_000]


def test_a_call_retry_delay_rule_that_breaks_on_a_later_retry_falls_back_to_the_backoff() -> None:
    # "1000 / (1 - retried)" is fine for the first retry and divides by zero on the second
    call = CallSpec(
        method="GET",
        url="http://x.local",
        headers=(),
        body=None,
        timeout_ms=100,
        retries=3,
        retry_delay="1000 / (1 - retried)",
    )
    state = given(trigger(), report(1, outcome=suspend(PlanCall(index=0, name="c", call=call))), answer(0, 500))

    [retried] = when(state, answer(0, 500, attempt=2))

    assert isinstance(retried, CallRetried)
    assert retried.retry_at_ms == T0 + 2_000  # the backoff before the second retry


def test_a_call_with_an_invalid_retry_delay_rule_fails_the_run() -> None:
    call = CallSpec(
        method="GET", url="http://x.local", headers=(), body=None, timeout_ms=100, retries=1, retry_delay="os.system(1)"
    )

    events = when(given(trigger()), report(1, outcome=suspend(PlanCall(index=0, name="c", call=call))))

    run_failed = events[0]
    assert isinstance(run_failed, RunFailed)
    assert run_failed.error.type == "InvalidCall"
    assert run_failed.error.message.startswith("step 0 'c': Expected")
    assert isinstance(events[1], FailureHandlerScheduled)


# ---------------------------------------------------------------------------------------------
# wait_for_event: an event id's notification, or a timeout


def waiting_for_payment(*, timeout_ms: int = 60_000) -> RunState:
    """Step 0 done; step 1 waits on event ``order-42`` for ``timeout_ms``."""
    plan = PlanWait(index=1, name="paid", event_id="order-42", timeout_ms=timeout_ms)
    return given(trigger(), report(1, steps=(step(0),), outcome=suspend(plan)))


def test_a_wait_starts_a_timeout_timer_and_registers_with_the_event_ids_waiter_index() -> None:
    plan = PlanWait(index=1, name="paid", event_id="order-42", timeout_ms=60_000)
    state = given(trigger())
    command = report(1, steps=(step(0),), outcome=suspend(plan), now=T0 + 1)

    events = when(state, command)
    records = effects(state, events)

    assert events[-1] == WaitStarted(
        run_id=RUN, seq=4, at_ms=T0 + 1, step_index=1, name="paid", event_id="order-42", timeout_at_ms=T0 + 60_001
    )
    assert records == [
        TimerRequested(request_id=wait_timer_id(RUN, 1), run_id=RUN, step_index=1, due_ms=T0 + 60_001),
        RegisterWaiter(event_id="order-42", run_id=RUN, step_index=1, timeout_at_ms=T0 + 60_001, now_ms=T0 + 1),
    ]
    assert isinstance(records[1], RegisterWaiter)
    assert command_key(records[1]) == "order-42"  # goes to the partition that keeps the event id's waiters
    after = then_applied(state, events)
    assert after.status is RunStatus.WAITING
    assert after.pending(1) == PendingWait(step_index=1, name="paid", event_id="order-42", timeout_at_ms=T0 + 60_001)


def test_a_notification_ends_the_wait_with_its_data_and_drops_the_timeout() -> None:
    state = waiting_for_payment()
    notification = ReceiveEvent(run_id=RUN, step_index=1, event_id="order-42", data='{"paid":true}', now_ms=T0 + 9)

    events = when(state, notification)
    records = effects(state, events)

    assert events[0] == EventReceived(
        run_id=RUN, seq=5, at_ms=T0 + 9, step_index=1, event_id="order-42", data='{"paid":true}'
    )
    paid = RecordedStep(
        index=1, name="paid", kind=StepKind.WAIT_FOR_EVENT, output='{"timeout":false,"data":{"paid":true}}'
    )
    assert records == [
        ScheduleCancelled(run_id=RUN, request_ids=(wait_timer_id(RUN, 1),)),
        requested(delivery(number=2, step_index=2, steps=(recorded(0), paid)), not_before_ms=T0 + 9),
    ]


def test_the_timeout_ends_the_wait_without_data_and_unregisters_the_waiter() -> None:
    state = waiting_for_payment()

    events = when(state, timer(1, now=T0 + 60_000))
    records = effects(state, events)

    assert events[0] == WaitTimedOut(run_id=RUN, seq=5, at_ms=T0 + 60_000, step_index=1, event_id="order-42")
    timed_out = RecordedStep(index=1, name="paid", kind=StepKind.WAIT_FOR_EVENT, output='{"timeout":true,"data":null}')
    assert records == [
        UnregisterWaiter(event_id="order-42", run_id=RUN, step_index=1, now_ms=T0 + 60_000),
        requested(delivery(number=2, step_index=2, steps=(recorded(0), timed_out)), not_before_ms=T0 + 60_000),
    ]


def test_a_wait_of_zero_ms_times_out_at_once_when_its_timer_fires() -> None:
    state = waiting_for_payment(timeout_ms=0)

    assert isinstance(when(state, timer(1))[0], WaitTimedOut)


def test_a_timer_before_the_wait_times_out_is_a_duplicate() -> None:
    assert when_rejected(waiting_for_payment(), timer(1, now=T0 + 59_999)).duplicate


def test_a_timer_after_the_event_arrived_is_a_duplicate() -> None:
    state = given(
        trigger(),
        report(
            1, steps=(step(0),), outcome=suspend(PlanWait(index=1, name="paid", event_id="order-42", timeout_ms=60))
        ),
        ReceiveEvent(run_id=RUN, step_index=1, event_id="order-42", data="1", now_ms=T0 + 1),
    )

    assert when_rejected(state, timer(1, now=T0 + 60)).duplicate


def test_a_notification_after_the_timeout_is_a_duplicate() -> None:
    state = given(
        trigger(),
        report(
            1, steps=(step(0),), outcome=suspend(PlanWait(index=1, name="paid", event_id="order-42", timeout_ms=60))
        ),
        timer(1, now=T0 + 60),
    )

    late = ReceiveEvent(run_id=RUN, step_index=1, event_id="order-42", data="1", now_ms=T0 + 61)
    assert when_rejected(state, late).duplicate


def test_a_notification_for_another_event_id_is_a_duplicate() -> None:
    other = ReceiveEvent(run_id=RUN, step_index=1, event_id="order-43", data="1", now_ms=T0)

    assert when_rejected(waiting_for_payment(), other).duplicate


# ---------------------------------------------------------------------------------------------
# notify: wakes the runs waiting on an event id; the step's result is who was woken


def notifying() -> RunState:
    plan = PlanNotify(index=0, name="tell", event_id="order-42", data='{"paid":true}')
    return given(trigger(), report(1, outcome=suspend(plan)))


def test_a_notify_asks_the_event_ids_waiter_index_to_wake_its_runs_and_answer() -> None:
    plan = PlanNotify(index=0, name="tell", event_id="order-42", data='{"paid":true}')
    state = given(trigger())

    events = when(state, report(1, outcome=suspend(plan)))
    records = effects(state, events)

    assert events == [
        NotifyStarted(run_id=RUN, seq=3, at_ms=T0, step_index=0, name="tell", event_id="order-42", data='{"paid":true}')
    ]
    assert records == [
        NotifyEvent(
            event_id="order-42",
            data='{"paid":true}',
            now_ms=T0,
            reply_run_id=RUN,
            reply_step_index=0,
            actor=f"run {RUN}",
        )
    ]
    assert isinstance(records[0], NotifyEvent)
    assert command_key(records[0]) == "order-42"
    assert then_applied(state, events).pending(0) == PendingNotify(step_index=0, name="tell", event_id="order-42")


def test_the_notify_answer_completes_the_step_with_the_runs_that_were_woken() -> None:
    events = when(notifying(), ReportNotify(run_id=RUN, step_index=0, notified=("run_a", "run_b"), now_ms=T0 + 3))

    assert events[0] == StepCompleted(
        run_id=RUN,
        seq=4,
        at_ms=T0 + 3,
        step_index=0,
        name="tell",
        kind=StepKind.NOTIFY,
        output='["run_a","run_b"]',
        delivery_id="",
    )
    assert [type(event) for event in events[1:]] == [StepScheduled]


def test_a_notify_that_woke_nobody_completes_with_an_empty_list() -> None:
    events = when(notifying(), ReportNotify(run_id=RUN, step_index=0, notified=(), now_ms=T0))

    assert isinstance(events[0], StepCompleted)
    assert events[0].output == "[]"


def test_a_second_notify_answer_is_a_duplicate() -> None:
    state = given(
        trigger(),
        report(1, outcome=suspend(PlanNotify(index=0, name="tell", event_id="order-42", data="1"))),
        ReportNotify(run_id=RUN, step_index=0, notified=(), now_ms=T0),
    )

    assert when_rejected(state, ReportNotify(run_id=RUN, step_index=0, notified=(), now_ms=T0)).duplicate


# ---------------------------------------------------------------------------------------------
# invoke: a child run, and how it ended


def invoking(*, depth: int = 0, url: str | None = None) -> RunState:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=url, payload='{"to":"Oslo"}')
    return given(trigger(depth=depth), report(1, steps=(step(0),), outcome=suspend(plan)))


def test_an_invoke_starts_a_child_with_an_id_from_the_parent_step_and_a_url_from_the_parents() -> None:
    plan = PlanInvoke(
        index=1,
        name="ship",
        workflow="ship",
        url=None,
        payload='{"to":"Oslo"}',
        headers=(("x-child", "1"),),
        label="shipping",
        retries=2,
        retry_delay="1000 * retried",
    )

    events = when(given(trigger()), report(1, steps=(step(0),), outcome=suspend(plan)))

    assert events[-1] == InvokeStarted(
        run_id=RUN,
        seq=4,
        at_ms=T0,
        step_index=1,
        name="ship",
        child_run_id=f"{RUN}.1",
        workflow="ship",
        url="http://app.local/workflows/ship",
        payload='{"to":"Oslo"}',
        headers=(("x-tenant", "acme"), ("x-child", "1")),
        label="shipping",
        retries=2,
        retry_delay="1000 * retried",
    )


def test_an_invoke_with_its_own_url_keeps_it_and_the_parent_waits_for_the_child() -> None:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url="http://shipping.local/ship", payload="{}")
    state = given(trigger())

    events = when(state, report(1, outcome=suspend(plan)))

    [started] = events
    assert isinstance(started, InvokeStarted)
    assert started.url == "http://shipping.local/ship"
    after = then_applied(state, events)
    assert after.pending(1) == PendingInvoke(step_index=1, name="ship", child_run_id=f"{RUN}.1")
    assert after.status is RunStatus.WAITING


def test_an_invoke_triggers_the_child_run_one_level_deeper() -> None:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload='{"to":"Oslo"}')
    state = given(trigger(depth=1))

    [child] = when_effects(state, report(1, steps=(step(0),), outcome=suspend(plan), now=T0 + 4))

    assert child == TriggerRun(
        run_id=f"{RUN}.1",
        workflow="ship",
        url="http://app.local/workflows/ship",
        payload='{"to":"Oslo"}',
        now_ms=T0 + 4,
        headers=HEADERS,
        parent_run_id=RUN,
        parent_step_index=1,
        depth=2,
    )
    assert command_key(child) == f"{RUN}.1"
    started = when(None, child)[0]
    assert isinstance(started, RunStarted)
    assert (started.parent_run_id, started.parent_step_index, started.depth) == (RUN, 1, 2)


def test_a_parent_restarted_after_its_child_ended_gets_the_childs_end_instead_of_waiting_forever() -> None:
    # given a parent whose child completed, and which then failed and was restarted
    plan = PlanInvoke(index=0, name="ship", workflow="ship", url=None, payload="{}")
    child_trigger = when_effects(given(trigger()), report(1, outcome=suspend(plan)))[0]
    assert isinstance(child_trigger, TriggerRun)
    child = given(child_trigger, report(1, run_id=child_trigger.run_id, outcome=Complete(output='"sent"')))
    parent = given(
        trigger(),
        report(1, outcome=suspend(plan)),
        ChildFinished(run_id=RUN, step_index=0, child_run_id=child.run_id, status="completed", output='"sent"',
                      error=None, now_ms=T0 + 1),
        report(2, outcome=Fail(error=ErrorInfo(type="E", message="m"), retryable=False), now=T0 + 2),
        RecoverRun(run_id=RUN, action=Recovery.RESTART, now_ms=T0 + 3),
    )  # fmt: skip

    # when the replay invokes the same child again (same step, so the same child id)
    again = when_effects(parent, report(4, outcome=suspend(plan), now=T0 + 4))[0]
    assert isinstance(again, TriggerRun)
    assert again.run_id == child.run_id
    assert isinstance(when_rejected(child, again), Rejected)  # the child exists: nothing starts

    # then the parent re-attaches, and the ended child's result completes its step
    finished = child_reattached(child, again)
    assert finished == ChildFinished(
        run_id=RUN, step_index=0, child_run_id=child.run_id, status="completed", output='"sent"', error=None,
        now_ms=T0 + 4,
    )  # fmt: skip
    waiting = then_applied(parent, when(parent, report(4, outcome=suspend(plan), now=T0 + 4)))
    assert type(when(waiting, finished)[0]) is StepCompleted


def test_a_still_running_child_is_not_reported_again_when_its_parent_re_attaches() -> None:
    plan = PlanInvoke(index=0, name="ship", workflow="ship", url=None, payload="{}")
    child_trigger = when_effects(given(trigger()), report(1, outcome=suspend(plan)))[0]
    assert isinstance(child_trigger, TriggerRun)

    assert child_reattached(given(child_trigger), child_trigger) is None  # it tells the parent when it ends
    assert child_reattached(given(trigger()), child_trigger) is None  # a run that is not this parent's child


def test_an_invoke_past_the_depth_limit_fails_the_run() -> None:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}")
    state = given(trigger(depth=3))

    events = when(state, report(1, steps=(step(0),), outcome=suspend(plan), now=T0 + 2))

    run_failed = events[1]
    assert isinstance(run_failed, RunFailed)
    assert run_failed.error.type == "InvokeDepthExceeded"
    assert run_failed.error.message == (
        "Expected invoke depth at most 3, but step 1 'ship' would start a run at depth 4"
    )
    assert isinstance(events[2], FailureHandlerScheduled)
    assert not any(isinstance(record, TriggerRun) for record in effects(state, events))


def test_an_invoke_at_the_depth_limit_is_allowed() -> None:
    assert isinstance(invoking(depth=2).pending(1), PendingInvoke)


def test_the_steps_started_before_an_invoke_past_the_depth_limit_are_dropped_with_the_run() -> None:
    plans = (
        PlanRun(index=0, name="a"),
        PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}"),
        PlanRun(index=2, name="never"),
    )
    state = given(trigger(depth=3))

    events = when(state, report(1, outcome=suspend(*plans)))

    assert [type(event) for event in events] == [StepScheduled, RunFailed, FailureHandlerScheduled]
    assert ScheduleCancelled(run_id=RUN, request_ids=(f"{RUN}/2#1",)) in effects(state, events)


def test_an_invoke_with_an_invalid_retry_delay_rule_fails_the_run_instead_of_waiting_forever() -> None:
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}", retry_delay="import os")
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=suspend(plan)))

    run_failed = events[1]
    assert isinstance(run_failed, RunFailed)
    assert run_failed.error.type == "InvalidInvoke"
    assert run_failed.error.message.startswith("step 1 'ship': Expected")


@pytest.mark.parametrize(
    ("status", "output", "error", "expected"),
    [
        ("completed", '{"tracking":"T1"}', None, {"tracking": "T1"}),
        ("failed", None, BOOM, None),
        ("cancelled", None, None, None),
    ],
)
def test_the_childs_end_completes_the_invoke_step_with_how_it_ended(
    status: str, output: str | None, error: ErrorInfo | None, expected: object
) -> None:
    state = invoking()
    finished = ChildFinished(
        run_id=RUN, step_index=1, child_run_id=f"{RUN}.1", status=status, output=output, error=error, now_ms=T0 + 7
    )

    events = when(state, finished)

    completed = events[0]
    assert isinstance(completed, StepCompleted)
    assert (completed.kind, completed.name, completed.step_index) == (StepKind.INVOKE, "ship", 1)
    assert json.loads(completed.output) == {
        "run_id": f"{RUN}.1",
        "status": status,
        "output": expected,
        "error": None if error is None else {"type": "ValueError", "message": "boom"},
    }
    assert [type(event) for event in events[1:]] == [StepScheduled]


def test_the_end_of_another_child_or_a_second_end_is_a_duplicate() -> None:
    state = invoking()
    finished = ChildFinished(
        run_id=RUN, step_index=1, child_run_id=f"{RUN}.1", status="completed", output="1", error=None, now_ms=T0
    )
    stranger = ChildFinished(
        run_id=RUN, step_index=1, child_run_id="run_other", status="completed", output="1", error=None, now_ms=T0
    )

    assert when_rejected(state, stranger).duplicate
    assert when_rejected(then_applied(state, when(state, finished)), finished).duplicate


@pytest.mark.parametrize(
    ("ending", "status", "output", "error"),
    [
        (report(1, outcome=Cancel(reason="x"), run_id=f"{RUN}.1"), "cancelled", None, None),
        (report(1, outcome=Fail(error=BOOM, retryable=False), run_id=f"{RUN}.1"), "failed", None, BOOM),
        (
            report(1, outcome=Complete(output='"shipped"'), run_id=f"{RUN}.1"),
            "completed",
            '"shipped"',
            None,
        ),
    ],
    ids=["cancelled", "failed", "completed"],
)
def test_a_child_tells_its_parent_how_it_ended(
    ending: ReportDelivery, status: str, output: str | None, error: ErrorInfo | None
) -> None:
    child = given(
        TriggerRun(
            run_id=f"{RUN}.1",
            workflow="ship",
            url="http://app.local/workflows/ship",
            payload="{}",
            now_ms=T0,
            parent_run_id=RUN,
            parent_step_index=1,
            depth=1,
        )
    )

    records = when_effects(child, ending)

    assert (
        ChildFinished(
            run_id=RUN,
            step_index=1,
            child_run_id=f"{RUN}.1",
            status=status,
            output=output,
            error=error,
            now_ms=T0,
        )
        in records
    )


def test_a_run_without_a_parent_tells_nobody() -> None:
    state = given(trigger())

    records = when_effects(state, report(1, outcome=Cancel()))

    assert not any(isinstance(record, ChildFinished) for record in records)


@pytest.mark.parametrize(
    ("parent_url", "workflow", "expected"),
    [
        ("http://app.local/workflows/order", "ship", "http://app.local/workflows/ship"),
        ("http://app.local/workflows/order/", "ship", "http://app.local/workflows/ship"),
        ("http://app.local/workflows/order?tenant=acme", "ship", "http://app.local/workflows/ship"),
        ("http://app.local/order", "ship", "http://app.local/ship"),
    ],
    ids=["plain", "trailing-slash", "query", "top-level"],
)
def test_a_childs_url_replaces_the_last_path_segment_of_the_parents(
    parent_url: str, workflow: str, expected: str
) -> None:
    assert child_url(parent_url, workflow) == expected


def test_a_childs_id_follows_from_the_parent_and_the_step() -> None:
    assert child_run_id("run_a", 7) == "run_a.7"
    assert child_run_id("run_a.7", 0) == "run_a.7.0"


# ---------------------------------------------------------------------------------------------
# Cancel: the run stops; what was pending is dropped; late results are kept but ignored


def run_blocked_on(plan: PlannedStep) -> RunState:
    return given(trigger(), report(1, steps=(step(0),), outcome=suspend(plan)))


SLEEP = PlanSleep(index=1, name="nap", kind=StepKind.SLEEP, duration_ms=60_000)
WAIT = PlanWait(index=1, name="paid", event_id="order-42", timeout_ms=60_000)
CALL = PlanCall(index=1, name="charge", call=CHARGE)
BRANCH = PlanRun(index=1, name="branch-1")
INVOKE = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}")


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (SLEEP, [ScheduleCancelled(run_id=RUN, request_ids=(timer_request_id(RUN, 1),))]),
        (
            WAIT,
            [
                ScheduleCancelled(run_id=RUN, request_ids=(wait_timer_id(RUN, 1),)),
                UnregisterWaiter(event_id="order-42", run_id=RUN, step_index=1, now_ms=T0 + 5),
            ],
        ),
        (
            CALL,
            [ScheduleCancelled(run_id=RUN, request_ids=(call_request_id(RUN, 1, 1), call_deadline_id(RUN, 1, 1)))],
        ),
        (BRANCH, [ScheduleCancelled(run_id=RUN, request_ids=(f"{RUN}/2#1",))]),
        (INVOKE, [CancelRun(run_id=f"{RUN}.1", reason=f"parent run {RUN} ended", now_ms=T0 + 5, actor=f"run {RUN}")]),
    ],
    ids=["sleep", "wait", "call", "branch", "invoke"],
)
def test_cancelling_a_blocked_run_drops_what_it_was_blocked_on(plan: PlannedStep, expected: list[Effect]) -> None:
    state = run_blocked_on(plan)
    cancel = CancelRun(run_id=RUN, reason="operator", now_ms=T0 + 5)

    events = when(state, cancel)

    assert events == [RunCancelled(run_id=RUN, seq=state.seq + 1, at_ms=T0 + 5, reason="operator")]
    assert effects(state, events) == expected
    after = then_applied(state, events)
    assert after.status is RunStatus.CANCELLED
    assert (after.in_flight, after.waiting) == ((), ())


def test_cancelling_a_run_blocked_on_many_things_drops_them_all() -> None:
    state = given(
        trigger(),
        report(1, outcome=suspend(PlanRun(index=0, name="a"), SLEEP, PlanCall(index=2, name="c", call=CHARGE))),
    )

    records = when_effects(state, CancelRun(run_id=RUN, reason=None, now_ms=T0))

    assert records == [
        ScheduleCancelled(
            run_id=RUN,
            request_ids=(
                f"{RUN}/2#1",
                timer_request_id(RUN, 1),
                call_request_id(RUN, 2, 1),
                call_deadline_id(RUN, 2, 1),
            ),
        )
    ]


def test_cancelling_while_a_delivery_is_in_flight_drops_it_and_stops_the_executor_going_on_with_it() -> None:
    state = given(trigger())

    assert when_effects(state, CancelRun(run_id=RUN, reason=None, now_ms=T0)) == [
        ScheduleCancelled(run_id=RUN, request_ids=(f"{RUN}/1#1",)),
        DeliveryCancelled(run_id=RUN),
    ]


def test_the_workflow_can_cancel_its_own_run() -> None:
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=Cancel(reason="nothing to do"), now=T0 + 1))

    assert events[-1] == RunCancelled(run_id=RUN, seq=4, at_ms=T0 + 1, reason="nothing to do")
    assert then_applied(state, events).steps == (recorded(0),)


def cancelled_while_blocked_on(plan: PlannedStep) -> RunState:
    return given(
        trigger(), report(1, steps=(step(0),), outcome=suspend(plan)), CancelRun(run_id=RUN, reason=None, now_ms=T0)
    )


@pytest.mark.parametrize(
    ("plan", "late", "what"),
    [
        (BRANCH, branch_done(2, 1, now=T0 + 9), f"report of delivery {RUN}/2 attempt 1"),
        (CALL, answer(1, 200, now=T0 + 9), "answer 200 to the call of step 1 (attempt 1)"),
        (
            INVOKE,
            ChildFinished(
                run_id=RUN,
                step_index=1,
                child_run_id=f"{RUN}.1",
                status="cancelled",
                output=None,
                error=None,
                now_ms=T0 + 9,
            ),
            f"child run {RUN}.1 cancelled",
        ),
        (
            WAIT,
            ReceiveEvent(run_id=RUN, step_index=1, event_id="order-42", data="1", now_ms=T0 + 9),
            "notification of event 'order-42' for step 1",
        ),
        (
            PlanNotify(index=1, name="tell", event_id="order-42", data="1"),
            ReportNotify(run_id=RUN, step_index=1, notified=(), now_ms=T0 + 9),
            "answer to the notify of step 1",
        ),
    ],
    ids=["delivery", "call", "child", "event", "notify"],
)
def test_a_late_result_on_a_cancelled_run_is_recorded_as_ignored(plan: PlannedStep, late: Command, what: str) -> None:
    state = cancelled_while_blocked_on(plan)

    events = when(state, late)

    assert events == [ResultIgnored(run_id=RUN, seq=state.seq + 1, at_ms=T0 + 9, what=what)]
    assert effects(state, events) == []
    after = then_applied(state, events)
    assert (after.status, after.steps, after.waiting) == (RunStatus.CANCELLED, state.steps, ())


@pytest.mark.parametrize("plan", [SLEEP, WAIT, CALL], ids=["sleep", "wait", "call"])
def test_a_timer_on_a_cancelled_run_is_a_duplicate(plan: PlannedStep) -> None:
    state = cancelled_while_blocked_on(plan)

    assert when_rejected(state, timer(1, now=T0 + 10**9)).duplicate


def test_a_finished_run_cannot_be_cancelled() -> None:
    cancelled = cancelled_while_blocked_on(SLEEP)
    failed = given(trigger(), report(1, outcome=Fail(error=BOOM, retryable=False)))

    for state in (cancelled, failed):
        rejected = when_rejected(state, CancelRun(run_id=RUN, reason=None, now_ms=T0))
        assert rejected.duplicate
        assert "Expected a run that has not ended" in rejected.reason


def test_an_unknown_run_cannot_be_cancelled() -> None:
    assert not when_rejected(None, CancelRun(run_id=RUN, reason=None, now_ms=T0)).duplicate


# ---------------------------------------------------------------------------------------------
# The failure handler: called once the run has failed, with the error


def failing(*, failure_url: str | None = None, retries: int | None = None) -> tuple[RunState, list[Event]]:
    state = given(trigger(failure_url=failure_url, retries=retries))
    return state, when(state, report(1, steps=(step(0),), outcome=Fail(error=BOOM, retryable=False), now=T0 + 3))


def test_a_failed_run_schedules_its_failure_handler() -> None:
    _, events = failing()

    assert events[-2:] == [
        RunFailed(run_id=RUN, seq=5, at_ms=T0 + 3, error=BOOM),
        FailureHandlerScheduled(
            run_id=RUN, seq=6, at_ms=T0 + 3, delivery_id=f"{RUN}/2", attempt=1, not_before_ms=T0 + 3, url=URL
        ),
    ]


@pytest.mark.parametrize(
    ("failure_url", "url"), [(None, URL), ("http://app.local/failures", "http://app.local/failures")]
)
def test_the_failure_handler_is_a_delivery_with_the_error_to_the_failure_url_if_given(
    failure_url: str | None, url: str
) -> None:
    state, events = failing(failure_url=failure_url)

    records = effects(state, events)

    assert records == [
        requested(delivery(number=2, step_index=1, steps=(recorded(0),), url=url, failure=BOOM), not_before_ms=T0 + 3)
    ]


def handler_due(*, retries: int | None = None) -> RunState:
    state, events = failing(retries=retries)
    return then_applied(state, events)


def test_the_handlers_answer_is_recorded_as_handled() -> None:
    state = handler_due()

    events = when(state, report(2, outcome=Continue(), now=T0 + 8))

    assert events == [
        FailureHandled(run_id=RUN, seq=7, at_ms=T0 + 8, delivery_id=f"{RUN}/2", attempt=1, error=None, retry_at_ms=None)
    ]
    after = then_applied(state, events)
    assert after.failure_delivery is None
    assert (after.status, after.dead_letter) == (RunStatus.FAILED, True)
    assert effects(state, events) == []


def test_a_retryable_failure_of_the_handler_is_retried_with_backoff() -> None:
    state = handler_due()
    error = ErrorInfo(type="HTTPError", message="503")

    events = when(state, report(2, outcome=Fail(error=error, retryable=True), now=T0 + 8))

    assert events == [
        FailureHandlerFailed(
            run_id=RUN,
            seq=7,
            at_ms=T0 + 8,
            delivery_id=f"{RUN}/2",
            attempt=1,
            error=error,
            retry_at_ms=T0 + 8 + 1_000,
            retryable=True,
        ),
        FailureHandlerScheduled(
            run_id=RUN,
            seq=8,
            at_ms=T0 + 8,
            delivery_id=f"{RUN}/3",
            attempt=2,
            not_before_ms=T0 + 8 + 1_000,
            url=URL,
        ),
    ]
    [retry] = effects(state, events)
    assert isinstance(retry, DeliveryRequested)
    assert (retry.request_id, retry.not_before_ms, retry.delivery.failure) == (f"{RUN}/3#2", T0 + 1_008, BOOM)


def test_the_handler_gives_up_after_the_runs_retries() -> None:
    state = given(
        trigger(retries=1),
        report(1, outcome=Fail(error=BOOM, retryable=False)),
        report(2, outcome=Fail(error=BOOM, retryable=True)),
    )

    events = when(state, report(3, attempt=2, outcome=Fail(error=BOOM, retryable=True)))

    [failed] = events
    assert isinstance(failed, FailureHandlerFailed)
    assert (failed.attempt, failed.error, failed.retry_at_ms, failed.retryable) == (2, BOOM, None, True)


def test_a_non_retryable_failure_of_the_handler_is_not_retried() -> None:
    events = when(handler_due(), report(2, outcome=Fail(error=BOOM, retryable=False)))

    assert [type(event) for event in events] == [FailureHandlerFailed]
    assert events[0].retryable is False  # type: ignore[union-attr]


def test_a_second_answer_of_the_handler_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=Fail(error=BOOM, retryable=False)), report(2, outcome=Continue()))

    assert when_rejected(state, report(2, outcome=Continue())).duplicate


# ---------------------------------------------------------------------------------------------
# Recovery of a failed run from the dead-letter list


def failed_after_two_steps() -> RunState:
    """Steps 0 and 1 recorded, step 2 failed for good; the handler (delivery 2) answered."""
    return given(
        trigger(),
        report(1, steps=(step(0), step(1)), outcome=Fail(error=BOOM, retryable=False)),
        report(2, outcome=Continue()),
    )


def test_resume_keeps_the_recorded_steps_and_delivers_from_the_first_open_index() -> None:
    state = failed_after_two_steps()
    command = RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=T0 + 60)

    events = when(state, command)

    assert events == [
        RunRecovered(run_id=RUN, seq=state.seq + 1, at_ms=T0 + 60, action=Recovery.RESUME),
        StepScheduled(
            run_id=RUN,
            seq=state.seq + 2,
            at_ms=T0 + 60,
            step_index=2,
            delivery_id=f"{RUN}/3",
            attempt=1,
            not_before_ms=T0 + 60,
        ),
    ]
    after = then_applied(state, events)
    assert (after.status, after.dead_letter, after.error) == (RunStatus.RUNNING, False, None)
    assert effects(state, events) == [
        requested(delivery(number=3, step_index=2, steps=(recorded(0), recorded(1))), not_before_ms=T0 + 60)
    ]


def test_restart_sets_the_recorded_steps_aside_and_delivers_from_the_start() -> None:
    state = failed_after_two_steps()

    events = when(state, RecoverRun(run_id=RUN, action=Recovery.RESTART, now_ms=T0 + 60))

    scheduled = events[1]
    assert isinstance(scheduled, StepScheduled)
    assert (scheduled.step_index, scheduled.delivery_id) == (0, f"{RUN}/3")
    after = then_applied(state, events)
    assert after.steps == ()
    assert effects(state, events) == [requested(delivery(number=3, step_index=0), not_before_ms=T0 + 60)]


def test_delete_only_takes_the_run_off_the_dead_letter_list() -> None:
    state = failed_after_two_steps()

    events = when(state, RecoverRun(run_id=RUN, action=Recovery.DELETE, now_ms=T0 + 60))

    assert events == [RunRecovered(run_id=RUN, seq=state.seq + 1, at_ms=T0 + 60, action=Recovery.DELETE)]
    after = then_applied(state, events)
    assert after == replace(state, seq=state.seq + 1, updated_at_ms=T0 + 60, dead_letter=False)
    assert effects(state, events) == []


def test_a_timer_of_the_sleep_before_a_restart_does_not_end_the_sleep_after_it() -> None:
    hour = 3_600_000
    plans = (PlanRun(index=0, name="a"), PlanSleep(index=1, name="nap", kind=StepKind.SLEEP, duration_ms=hour))
    state = given(
        trigger(),
        report(1, outcome=suspend(*plans)),
        report(2, outcome=Fail(error=BOOM, retryable=False)),  # branch a fails the run; the sleep is dropped
        RecoverRun(run_id=RUN, action=Recovery.RESTART, now_ms=T0 + 60_000),
        report(4, outcome=suspend(*plans), now=T0 + 60_000),  # delivery 3 was the failure handler's
    )

    # the first sleep's timer had fired before it could be dropped, and arrives now
    assert when_rejected(state, timer(1, now=T0 + hour)).duplicate
    assert isinstance(when(state, timer(1, now=T0 + 60_000 + hour))[0], StepCompleted)


def test_a_resumed_run_can_fail_and_be_recovered_again() -> None:
    state = given(
        trigger(retries=0),
        report(1, outcome=Fail(error=BOOM, retryable=False)),
        RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=T0),
        report(3, outcome=Fail(error=BOOM, retryable=False)),
    )

    assert state.dead_letter
    assert isinstance(when(state, RecoverRun(run_id=RUN, action=Recovery.RESTART, now_ms=T0))[0], RunRecovered)


@pytest.mark.parametrize("action", list(Recovery))
def test_recovering_a_run_not_in_the_dead_letter_list_is_rejected(action: Recovery) -> None:
    running = given(trigger())
    completed = given(trigger(), report(1, outcome=Complete(output="1")))
    deleted = given(
        trigger(),
        report(1, outcome=Fail(error=BOOM, retryable=False)),
        RecoverRun(run_id=RUN, action=Recovery.DELETE, now_ms=T0),
    )
    command = RecoverRun(run_id=RUN, action=action, now_ms=T0)

    for state in (running, completed, deleted):
        rejected = when_rejected(state, command)
        assert rejected.duplicate
        assert rejected.reason.startswith(f"Expected a run in the dead-letter list to {action.value}")
    assert "failed but already taken off" in when_rejected(deleted, command).reason
    assert not when_rejected(None, command).duplicate


# ---------------------------------------------------------------------------------------------
# Retry delay rules on the trigger


def test_a_trigger_with_an_invalid_retry_delay_rule_is_rejected_with_a_message() -> None:
    rejected = when_rejected(None, trigger(retry_delay="__import__('os').system('rm -rf /')"))

    assert not rejected.duplicate
    assert "delay rule" in rejected.reason


def test_a_trigger_with_a_rule_that_fails_on_the_first_retry_is_rejected() -> None:
    assert (
        "Expected the delay rule '1 / 0' to give a number" in when_rejected(None, trigger(retry_delay="1 / 0")).reason
    )


def test_the_runs_retry_delay_rule_sets_the_delay_before_each_retry() -> None:
    state = given(trigger(retries=3, retry_delay="500 + retried * 1000"))
    delays = []
    for attempt in (1, 2, 3):
        events = when(state, report(attempt, attempt=attempt, outcome=Fail(error=BOOM, retryable=True)))
        failed = events[0]
        assert isinstance(failed, StepFailed)
        assert failed.retry_at_ms is not None
        delays.append(failed.retry_at_ms - T0)
        state = then_applied(state, events)

    assert delays == [500, 1_500, 2_500]


def test_a_runs_rule_that_breaks_on_a_later_retry_falls_back_to_the_backoff() -> None:
    state = given(
        trigger(retries=3, retry_delay="1000 / (1 - retried)"), report(1, outcome=Fail(error=BOOM, retryable=True))
    )

    failed = when(state, report(2, attempt=2, outcome=Fail(error=BOOM, retryable=True)))[0]

    assert isinstance(failed, StepFailed)
    assert failed.retry_at_ms == T0 + 2_000


# ---------------------------------------------------------------------------------------------
# A whole run of every primitive replays to its state


def test_a_run_of_every_primitive_replays_to_the_state_reached_command_by_command() -> None:
    state: RunState | None = None
    history: list[Event] = []
    commands: list[Command] = [
        trigger(),
        report(
            1,
            steps=(step(0),),
            outcome=suspend(BRANCH, PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=5)),
        ),
        branch_done(2, 1),
        timer(2, now=T0 + 5),
        report(3, outcome=suspend(PlanCall(index=3, name="charge", call=CHARGE)), now=T0 + 6),
        answer(3, 500, now=T0 + 7),
        answer(3, 200, attempt=2, now=T0 + 1_007),
        report(4, outcome=suspend(PlanWait(index=4, name="paid", event_id="e", timeout_ms=9)), now=T0 + 1_008),
        timer(4, now=T0 + 1_017),
        report(5, outcome=suspend(PlanInvoke(index=5, name="ship", workflow="ship", url=None, payload="1"))),
        CancelRun(run_id=RUN, reason="stop", now_ms=T0 + 2_000),
        ChildFinished(
            run_id=RUN,
            step_index=5,
            child_run_id=f"{RUN}.5",
            status="cancelled",
            output=None,
            error=None,
            now_ms=T0 + 2_001,
        ),
    ]
    for command in commands:
        events = when(state, command)
        history += events
        state = then_applied(state, events)

    assert fold(history) == state
    assert state is not None
    assert state.status is RunStatus.CANCELLED
    assert [step.index for step in state.steps] == [0, 1, 2, 3, 4]
    assert isinstance(history[-1], ResultIgnored)
