"""``decide``, given → when → then: what each command means for a run, and what it may not do."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from stepstream.core import (
    CallSpec,
    CallStarted,
    CancelRun,
    Command,
    Complete,
    Continue,
    Defaults,
    ErrorInfo,
    Event,
    Fail,
    FailureHandlerScheduled,
    FireTimer,
    FlowControl,
    InvokeStarted,
    Outcome,
    PendingDelivery,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    Rejected,
    ReportDelivery,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunState,
    RunStatus,
    SleepFor,
    SleepStarted,
    SleepUntil,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
    Suspend,
    TriggerRun,
    decide,
    evolve,
)

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000)
BOOM = ErrorInfo(type="ValueError", message="boom")


# ---------------------------------------------------------------------------------------------
# Commands, written the way a test reads them


def trigger(
    *,
    run_id: str = RUN,
    now: int = T0,
    retries: int | None = None,
    retry_base_ms: int | None = None,
    not_before_ms: int | None = None,
    flow: FlowControl | None = None,
) -> TriggerRun:
    return TriggerRun(
        run_id=run_id,
        workflow="order",
        url="http://app.local/workflows/order",
        payload='{"order":42}',
        now_ms=now,
        headers=(("x-tenant", "acme"),),
        label="nightly",
        retries=retries,
        retry_base_ms=retry_base_ms,
        not_before_ms=not_before_ms,
        flow=flow,
    )


def step(index: int, name: str | None = None, *, kind: StepKind = StepKind.RUN) -> StepResult:
    return StepResult(index=index, name=name or f"step-{index}", kind=kind, output=f'{{"result":{index}}}')


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


def timer(step_index: int, *, now: int = T0, run_id: str = RUN) -> FireTimer:
    return FireTimer(run_id=run_id, step_index=step_index, now_ms=now)


def fail(*, retryable: bool = True, retry_after_ms: int | None = None) -> Fail:
    return Fail(error=BOOM, retryable=retryable, retry_after_ms=retry_after_ms)


# ---------------------------------------------------------------------------------------------
# given / when / then


def apply(state: RunState | None, events: list[Event]) -> RunState | None:
    for event in events:
        state = evolve(state, event)
    return state


def given(*commands: Command, defaults: Defaults = DEFAULTS) -> RunState:
    """The state after each command was decided and its events applied; every one must be accepted."""
    state: RunState | None = None
    for command in commands:
        decision = decide(state, command, defaults)
        assert not isinstance(decision, Rejected), f"given {command} was rejected: {decision.reason}"
        state = apply(state, decision)
    assert state is not None
    return state


def when(state: RunState | None, command: Command, defaults: Defaults = DEFAULTS) -> list[Event]:
    decision = decide(state, command, defaults)
    assert not isinstance(decision, Rejected), f"expected {command} to be accepted, but: {decision.reason}"
    return decision


def when_rejected(state: RunState | None, command: Command, defaults: Defaults = DEFAULTS) -> Rejected:
    decision = decide(state, command, defaults)
    assert isinstance(decision, Rejected), f"expected {command} to be rejected, but got {decision}"
    assert decision.reason.startswith("Expected"), decision.reason
    return decision


def given_events(state: RunState, events: list[Event]) -> RunState:
    after = apply(state, events)
    assert after is not None
    return after


def then_seqs_continue(state: RunState | None, events: list[Event]) -> None:
    first = (state.seq if state else 0) + 1
    assert [event.seq for event in events] == list(range(first, first + len(events)))
    assert all(event.run_id == RUN for event in events)


# ---------------------------------------------------------------------------------------------
# TriggerRun


def test_trigger_starts_the_run_and_schedules_its_first_delivery() -> None:
    events = when(None, trigger(retries=5, retry_base_ms=250))

    assert events == [
        RunStarted(
            run_id=RUN,
            seq=1,
            at_ms=T0,
            workflow="order",
            url="http://app.local/workflows/order",
            payload='{"order":42}',
            headers=(("x-tenant", "acme"),),
            label="nightly",
            retries=5,
            retry_base_ms=250,
        ),
        StepScheduled(run_id=RUN, seq=2, at_ms=T0, step_index=0, delivery_id=f"{RUN}/1", attempt=1, not_before_ms=T0),
    ]


def test_trigger_without_retry_settings_takes_the_defaults() -> None:
    events = when(None, trigger(), Defaults(retries=7, retry_base_ms=42))

    started = events[0]
    assert isinstance(started, RunStarted)
    assert (started.retries, started.retry_base_ms) == (7, 42)


def test_trigger_with_zero_retries_keeps_zero_rather_than_the_default() -> None:
    events = when(None, trigger(retries=0, retry_base_ms=0), Defaults(retries=7, retry_base_ms=42))

    started = events[0]
    assert isinstance(started, RunStarted)
    assert (started.retries, started.retry_base_ms) == (0, 0)


@pytest.mark.parametrize(
    ("not_before_ms", "expected"),
    [(None, T0), (T0 + 60_000, T0 + 60_000), (T0 - 60_000, T0), (T0, T0)],
    ids=["unset", "future", "past", "now"],
)
def test_trigger_schedules_the_first_delivery_no_earlier_than_now(not_before_ms: int | None, expected: int) -> None:
    events = when(None, trigger(not_before_ms=not_before_ms))

    scheduled = events[1]
    assert isinstance(scheduled, StepScheduled)
    assert scheduled.not_before_ms == expected


def test_trigger_leaves_the_run_running_with_its_first_delivery_in_flight() -> None:
    state = given(trigger())

    assert state.status is RunStatus.RUNNING
    assert state.seq == 2
    assert state.deliveries == 1
    assert state.in_flight == (PendingDelivery(delivery_id=f"{RUN}/1", step_index=0, attempt=1, not_before_ms=T0),)
    assert state.waiting == ()


@pytest.mark.parametrize(
    ("not_before_ms", "expected"),
    [(None, RunStatus.RUNNING), (T0 + 60_000, RunStatus.SCHEDULED), (T0 - 60_000, RunStatus.RUNNING)],
    ids=["unset", "future", "past"],
)
def test_a_run_whose_start_is_put_off_is_scheduled_until_its_first_delivery_answers(
    not_before_ms: int | None, expected: RunStatus
) -> None:
    # given a run triggered to start later (or now)
    state = given(trigger(not_before_ms=not_before_ms))
    assert state.status is expected
    # when its first delivery answers, then it is running like any other
    after = given_events(state, when(state, report(1, outcome=Continue(), now=T0 + 60_001)))
    assert after.status is RunStatus.RUNNING
    # and a scheduled run can be cancelled like a running one
    cancelled = given_events(state, when(state, CancelRun(run_id=RUN, reason=None, now_ms=T0 + 1)))
    assert cancelled.status is RunStatus.CANCELLED


def test_a_second_trigger_for_the_same_run_is_a_duplicate() -> None:
    state = given(trigger())

    rejected = when_rejected(state, trigger(now=T0 + 5))

    assert rejected.duplicate
    assert RUN in rejected.reason


def test_a_trigger_for_a_finished_run_is_a_duplicate_too() -> None:
    state = given(trigger(), report(1, outcome=Complete(output='"done"')))

    assert when_rejected(state, trigger()).duplicate


# ---------------------------------------------------------------------------------------------
# ReportDelivery: completed steps and what comes next


def test_a_report_records_each_completed_step_in_order_and_continues_with_a_new_delivery() -> None:
    state = given(trigger())
    now = T0 + 300

    events = when(state, report(1, steps=(step(0, "charge"), step(1, "ship")), outcome=Continue(), now=now))

    assert events == [
        StepCompleted(
            run_id=RUN,
            seq=3,
            at_ms=now,
            step_index=0,
            name="charge",
            kind=StepKind.RUN,
            output='{"result":0}',
            delivery_id=f"{RUN}/1",
        ),
        StepCompleted(
            run_id=RUN,
            seq=4,
            at_ms=now,
            step_index=1,
            name="ship",
            kind=StepKind.RUN,
            output='{"result":1}',
            delivery_id=f"{RUN}/1",
        ),
        StepScheduled(run_id=RUN, seq=5, at_ms=now, step_index=2, delivery_id=f"{RUN}/2", attempt=1, not_before_ms=now),
    ]
    then_seqs_continue(state, events)


def test_continue_after_a_retried_delivery_starts_a_fresh_first_attempt() -> None:
    state = given(trigger(), report(1, outcome=fail()))  # delivery 2 is attempt 2 of step 0

    events = when(state, report(2, attempt=2, steps=(step(0),), outcome=Continue(), now=T0 + 2_000))

    assert events[-1] == StepScheduled(
        run_id=RUN, seq=6, at_ms=T0 + 2_000, step_index=1, delivery_id=f"{RUN}/3", attempt=1, not_before_ms=T0 + 2_000
    )


def test_sleep_for_starts_a_sleep_counted_from_the_report() -> None:
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=SleepFor(index=1, name="nap", duration_ms=5_000)))

    assert events[-1] == SleepStarted(
        run_id=RUN, seq=4, at_ms=T0, step_index=1, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 5_000
    )
    then_seqs_continue(state, events)
    after = apply(state, events)
    assert after is not None
    assert after.status is RunStatus.SLEEPING
    assert after.in_flight == ()


def test_a_sleep_of_zero_ms_is_allowed() -> None:
    state = given(trigger())

    events = when(state, report(1, outcome=SleepFor(index=0, name="yield", duration_ms=0)))

    assert isinstance(events[-1], SleepStarted)
    assert events[-1].wake_at_ms == T0


def test_sleep_until_starts_a_sleep_until_the_given_time() -> None:
    state = given(trigger())
    wake_at = T0 + 86_400_000

    events = when(state, report(1, outcome=SleepUntil(index=0, name="tomorrow", wake_at_ms=wake_at), now=T0 + 10))

    assert events == [
        SleepStarted(
            run_id=RUN,
            seq=3,
            at_ms=T0 + 10,
            step_index=0,
            name="tomorrow",
            kind=StepKind.SLEEP_UNTIL,
            wake_at_ms=wake_at,
        )
    ]


def test_complete_completes_the_run_with_its_output() -> None:
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=Complete(output='{"ok":true}'), now=T0 + 9))

    assert events[-1] == RunCompleted(run_id=RUN, seq=4, at_ms=T0 + 9, output='{"ok":true}')
    after = apply(state, events)
    assert after is not None
    assert after.status is RunStatus.COMPLETED
    assert after.output == '{"ok":true}'
    assert after.in_flight == ()


# ---------------------------------------------------------------------------------------------
# ReportDelivery: failures and retries


def test_a_retryable_failure_retries_the_same_step_after_the_backoff() -> None:
    state = given(trigger())
    now = T0 + 100

    events = when(state, report(1, outcome=fail(), now=now))

    assert events == [
        StepFailed(
            run_id=RUN,
            seq=3,
            at_ms=now,
            step_index=0,
            name=None,
            delivery_id=f"{RUN}/1",
            attempt=1,
            error=BOOM,
            retry_at_ms=now + 1_000,
            retryable=True,
        ),
        StepScheduled(
            run_id=RUN,
            seq=4,
            at_ms=now,
            step_index=0,
            delivery_id=f"{RUN}/2",
            attempt=2,
            not_before_ms=now + 1_000,
        ),
    ]


def test_the_failed_step_is_named_when_the_report_names_it() -> None:
    state = given(trigger())

    events = when(state, report(1, outcome=Fail(error=BOOM, retryable=True, step_index=0, step_name="charge")))

    failed = events[0]
    assert isinstance(failed, StepFailed)
    assert failed.name == "charge"


def test_each_retry_waits_twice_as_long_as_the_one_before() -> None:
    state = given(trigger(retries=3, retry_base_ms=500))
    retry_ats = []
    for attempt in (1, 2, 3):
        now = T0 + attempt * 100_000
        events = when(state, report(attempt, attempt=attempt, outcome=fail(), now=now))
        failed, scheduled = events
        assert isinstance(failed, StepFailed)
        assert isinstance(scheduled, StepScheduled)
        assert failed.retry_at_ms is not None
        assert (scheduled.attempt, scheduled.step_index) == (attempt + 1, 0)
        assert scheduled.not_before_ms == failed.retry_at_ms
        retry_ats.append(failed.retry_at_ms - now)
        state = given_events(state, events)

    assert retry_ats == [500, 1_000, 2_000]


def test_the_backoff_never_exceeds_the_maximum() -> None:
    defaults = Defaults(retries=10, retry_base_ms=1_000, retry_max_ms=3_000)
    state = given(trigger(), defaults=defaults)
    delays = []
    for attempt in range(1, 6):
        events = when(state, report(attempt, attempt=attempt, outcome=fail()), defaults)
        failed = events[0]
        assert isinstance(failed, StepFailed)
        assert failed.retry_at_ms is not None
        delays.append(failed.retry_at_ms - T0)
        state = given_events(state, events)

    assert delays == [1_000, 2_000, 3_000, 3_000, 3_000]


def test_retry_after_overrides_the_backoff() -> None:
    state = given(trigger())

    events = when(state, report(1, outcome=fail(retry_after_ms=42_000), now=T0 + 7))

    failed, scheduled = events
    assert isinstance(failed, StepFailed)
    assert isinstance(scheduled, StepScheduled)
    assert failed.retry_at_ms == T0 + 7 + 42_000
    assert scheduled.not_before_ms == T0 + 7 + 42_000


def test_a_non_retryable_failure_fails_the_run_at_once() -> None:
    state = given(trigger(retries=5))

    events = when(state, report(1, outcome=fail(retryable=False), now=T0 + 3))

    assert events[:2] == [
        StepFailed(
            run_id=RUN,
            seq=3,
            at_ms=T0 + 3,
            step_index=0,
            name=None,
            delivery_id=f"{RUN}/1",
            attempt=1,
            error=BOOM,
            retry_at_ms=None,
            retryable=False,  # so the history says no retry was made, not that none was left
        ),
        RunFailed(run_id=RUN, seq=4, at_ms=T0 + 3, error=BOOM),
    ]
    assert isinstance(events[2], FailureHandlerScheduled)  # covered in test_core_primitives
    after = apply(state, events)
    assert after is not None
    assert after.status is RunStatus.FAILED
    assert after.error == BOOM
    assert after.in_flight == ()


def test_retries_counts_the_retries_after_the_first_attempt_and_then_gives_up() -> None:
    state = given(trigger(retries=2), report(1, outcome=fail()), report(2, attempt=2, outcome=fail()))

    events = when(state, report(3, attempt=3, outcome=fail(), now=T0 + 50))

    failed, run_failed, _handler = events
    assert isinstance(failed, StepFailed)
    assert (failed.attempt, failed.retry_at_ms) == (3, None)
    assert isinstance(run_failed, RunFailed)
    assert run_failed.error.type == "ValueError"
    assert "boom" in run_failed.error.message
    assert "gave up after 3 attempts" in run_failed.error.message


def test_zero_retries_gives_up_after_the_first_attempt() -> None:
    state = given(trigger(retries=0))

    events = when(state, report(1, outcome=fail()))

    run_failed = events[1]
    assert isinstance(run_failed, RunFailed)
    assert "gave up after 1 attempts" in run_failed.error.message


def test_steps_completed_before_a_failure_are_kept_and_the_failed_step_retries_as_its_second_attempt() -> None:
    state = given(trigger(), report(1, outcome=fail()))  # delivery 2 is attempt 2 of step 0
    now = T0 + 5_000

    events = when(state, report(2, attempt=2, steps=(step(0), step(1)), outcome=fail(), now=now))

    completed, completed_too, failed, scheduled = events
    assert isinstance(completed, StepCompleted)
    assert isinstance(completed_too, StepCompleted)
    assert (completed.step_index, completed_too.step_index) == (0, 1)
    assert isinstance(failed, StepFailed)
    assert failed.step_index == 2
    assert failed.attempt == 1  # step 2 was tried once, in attempt 2 of the delivery
    assert failed.retry_at_ms == now + 1_000  # the first retry's backoff
    assert scheduled == StepScheduled(
        run_id=RUN,
        seq=state.seq + 4,
        at_ms=now,
        step_index=2,
        delivery_id=f"{RUN}/3",
        attempt=2,
        not_before_ms=failed.retry_at_ms,
    )
    after = apply(state, events)
    assert after is not None
    assert [recorded.index for recorded in after.steps] == [0, 1]


def test_a_failure_after_completed_steps_does_not_count_against_the_earlier_steps_attempts() -> None:
    # Step 0 used its last attempt; the delivery completed it and then step 1 failed: step 1 still retries.
    state = given(trigger(retries=1), report(1, outcome=fail()))

    events = when(state, report(2, attempt=2, steps=(step(0),), outcome=fail()))

    assert isinstance(events[-1], StepScheduled)
    assert (events[-1].step_index, events[-1].attempt) == (1, 2)


# ---------------------------------------------------------------------------------------------
# ReportDelivery: what is rejected


def test_a_report_for_an_unknown_run_is_rejected() -> None:
    rejected = when_rejected(None, report(1, outcome=Continue()))

    assert not rejected.duplicate


def test_a_second_report_of_the_same_delivery_is_a_duplicate() -> None:
    first = report(1, steps=(step(0),), outcome=Continue())
    state = given(trigger(), first)

    rejected = when_rejected(state, first)

    assert rejected.duplicate


def test_a_duplicate_report_with_a_different_result_cannot_rewrite_history() -> None:
    state = given(trigger(), report(1, steps=(step(0, "first"),), outcome=Continue()))

    rejected = when_rejected(state, report(1, steps=(step(0, "second"),), outcome=Complete(output="1")))

    assert rejected.duplicate
    # the run carries on from the first report: step 1 is next, on delivery 2
    assert isinstance(when(state, report(2, steps=(step(1),), outcome=Continue()))[0], StepCompleted)


def test_a_late_report_of_a_failed_attempt_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=fail()))  # delivery 1 failed; delivery 2 is pending

    assert when_rejected(state, report(1, outcome=Complete(output="1"))).duplicate


def test_a_report_for_the_wrong_attempt_of_the_pending_delivery_is_a_duplicate() -> None:
    state = given(trigger())

    assert when_rejected(state, report(1, attempt=2, outcome=Continue())).duplicate


def test_a_report_for_a_delivery_not_yet_scheduled_is_rejected() -> None:
    state = given(trigger())

    assert when_rejected(state, report(2, outcome=Continue())).duplicate


def test_a_report_while_the_run_sleeps_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=SleepFor(index=0, name="nap", duration_ms=10)))

    assert when_rejected(state, report(1, outcome=Continue())).duplicate


def test_a_report_that_repeats_an_index_is_rejected() -> None:
    state = given(trigger())

    rejected = when_rejected(state, report(1, steps=(step(0), step(0)), outcome=Continue()))

    assert not rejected.duplicate
    assert "step 0 already has a result" in rejected.reason


def test_a_step_already_recorded_cannot_be_reported_again() -> None:
    state = given(trigger(), report(1, steps=(step(0),), outcome=Continue()))

    assert not when_rejected(state, report(2, steps=(step(0),), outcome=Continue())).duplicate


def test_a_sleep_cannot_be_reported_as_a_completed_step() -> None:
    state = given(trigger())

    when_rejected(state, report(1, steps=(step(0, kind=StepKind.SLEEP),), outcome=Continue()))


@pytest.mark.parametrize(
    "outcome",
    [
        SleepFor(index=0, name="nap", duration_ms=10),
        SleepUntil(index=0, name="nap", wake_at_ms=T0),
    ],
    ids=["sleep-for", "sleep-until"],
)
def test_a_sleep_at_an_index_that_already_has_a_result_is_rejected(outcome: Outcome) -> None:
    state = given(trigger())

    rejected = when_rejected(state, report(1, steps=(step(0),), outcome=outcome))

    assert not rejected.duplicate


def test_a_sleep_of_negative_duration_is_rejected() -> None:
    state = given(trigger())

    rejected = when_rejected(state, report(1, outcome=SleepFor(index=0, name="nap", duration_ms=-1)))

    assert not rejected.duplicate


# ---------------------------------------------------------------------------------------------
# FireTimer


@pytest.mark.parametrize(
    ("outcome", "kind"),
    [
        (SleepFor(index=1, name="nap", duration_ms=60_000), StepKind.SLEEP),
        (SleepUntil(index=1, name="nap", wake_at_ms=T0 + 60_000), StepKind.SLEEP_UNTIL),
    ],
    ids=["sleep", "sleep_until"],
)
def test_a_timer_completes_the_sleep_and_schedules_the_next_step(outcome: Outcome, kind: StepKind) -> None:
    state = given(trigger(), report(1, steps=(step(0),), outcome=outcome))
    now = T0 + 60_003

    events = when(state, timer(1, now=now))

    assert events == [
        StepCompleted(run_id=RUN, seq=5, at_ms=now, step_index=1, name="nap", kind=kind, output="null", delivery_id=""),
        StepScheduled(run_id=RUN, seq=6, at_ms=now, step_index=2, delivery_id=f"{RUN}/2", attempt=1, not_before_ms=now),
    ]
    after = apply(state, events)
    assert after is not None
    assert after.status is RunStatus.RUNNING
    assert after.waiting == ()


def test_a_second_timer_for_the_same_sleep_is_a_duplicate() -> None:
    state = given(trigger(), report(1, outcome=SleepFor(index=0, name="nap", duration_ms=10)), timer(0, now=T0 + 10))

    assert when_rejected(state, timer(0, now=T0 + 11)).duplicate


def test_a_timer_before_the_sleep_ends_is_a_duplicate() -> None:
    # the timer of an earlier sleep at the same index (before a recovery), fired just before it was dropped
    state = given(trigger(), report(1, outcome=SleepFor(index=0, name="nap", duration_ms=60_000)))

    assert when_rejected(state, timer(0, now=T0 + 59_999)).duplicate


def test_a_timer_for_an_unknown_run_is_rejected() -> None:
    assert not when_rejected(None, timer(0)).duplicate


def test_a_timer_for_a_run_that_is_not_sleeping_is_rejected() -> None:
    state = given(trigger())

    when_rejected(state, timer(0))


def test_a_timer_for_another_step_than_the_current_sleep_is_rejected() -> None:
    state = given(trigger(), report(1, steps=(step(0),), outcome=SleepFor(index=1, name="nap", duration_ms=10)))

    when_rejected(state, timer(0))
    when_rejected(state, timer(2))


# ---------------------------------------------------------------------------------------------
# Terminal runs accept nothing more


def completed_run() -> RunState:
    return given(trigger(), report(1, steps=(step(0),), outcome=Complete(output='"done"')))


def failed_run() -> RunState:
    # delivery 2 is the failure handler's; once it answered, nothing of the run is in flight
    return given(trigger(), report(1, steps=(step(0),), outcome=fail(retryable=False)), report(2, outcome=Continue()))


def run_that_gave_up_after_a_sleep() -> RunState:
    return given(
        trigger(retries=0),
        report(1, outcome=SleepFor(index=0, name="nap", duration_ms=1)),
        timer(0, now=T0 + 1),
        report(2, outcome=fail()),
        report(3, outcome=Continue()),  # the failure handler
    )


@pytest.mark.parametrize("finished", [completed_run, failed_run, run_that_gave_up_after_a_sleep])
@pytest.mark.parametrize(
    "command",
    [
        report(1, outcome=Continue()),
        report(1, steps=(step(1),), outcome=Complete(output="2")),
        report(2, outcome=Continue()),
        report(3, outcome=Continue()),
        timer(0),
        timer(1),
    ],
    ids=[
        "report-delivery-1",
        "report-delivery-1-again-with-steps",
        "report-delivery-2",
        "report-delivery-3",
        "timer-0",
        "timer-1",
    ],
)
def test_a_finished_run_accepts_no_reports_or_timers(finished: Callable[[], RunState], command: Command) -> None:
    state = finished()
    assert state.status.terminal

    assert when_rejected(state, command).duplicate


# ---------------------------------------------------------------------------------------------
# Flow control settings: refused at the trigger, or failing the run that plans them

WEEK_MS = 7 * 24 * 3_600_000
INVALID_FLOWS = [
    (FlowControl(key="", rate=1), "Expected a flow-control key of 1 to 200 characters, but got 0"),
    (FlowControl(key="k" * 201, rate=1), "Expected a flow-control key of 1 to 200 characters, but got 201"),
    (
        FlowControl(key="acme", rate=0),
        "Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got 0",
    ),
    (
        FlowControl(key="acme", rate=-3),
        "Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got -3",
    ),
    (FlowControl(key="acme", rate=1, period_ms=0), "Expected a flow-control period from 1 ms to 7 days, but got 0 ms"),
    (
        FlowControl(key="acme", rate=1, period_ms=WEEK_MS + 1),
        f"Expected a flow-control period from 1 ms to 7 days, but got {WEEK_MS + 1} ms",
    ),
    (FlowControl(key="acme", parallelism=0), "Expected a flow-control parallelism from 1 to 1,000,000,000, but got 0"),
]
INVALID_IDS = [
    "empty-key",
    "long-key",
    "zero-rate",
    "negative-rate",
    "zero-period",
    "period-over-a-week",
    "zero-parallelism",
]
VALID_FLOWS = [
    FlowControl(key="k" * 200, rate=1, period_ms=1),
    FlowControl(key="acme", rate=100, period_ms=WEEK_MS, parallelism=1),
    FlowControl(key="acme", parallelism=5),
    FlowControl(key="acme"),  # a key alone: queued in order, nothing held back
]
VALID_IDS = ["longest-key-shortest-period", "longest-period", "parallelism-only", "no-limits"]


def charge(flow: FlowControl | None) -> CallSpec:
    return CallSpec(
        method="POST", url="http://api.local/charge", headers=(), body="{}", timeout_ms=5_000, retries=1, flow=flow
    )


def suspend(*plans: PlannedStep) -> Suspend:
    return Suspend(steps=plans)


@pytest.mark.parametrize("flow", VALID_FLOWS, ids=VALID_IDS)
def test_a_trigger_under_flow_control_starts_the_run_under_it(flow: FlowControl) -> None:
    events = when(None, trigger(flow=flow))

    started = events[0]
    assert isinstance(started, RunStarted)
    assert started.flow == flow
    assert given(trigger(flow=flow)).flow == flow


@pytest.mark.parametrize(("flow", "reason"), INVALID_FLOWS, ids=INVALID_IDS)
def test_a_trigger_with_an_invalid_flow_control_is_rejected_with_the_reason(flow: FlowControl, reason: str) -> None:
    rejected = when_rejected(None, trigger(flow=flow))

    assert rejected.reason == reason
    assert not rejected.duplicate


@pytest.mark.parametrize("flow", VALID_FLOWS, ids=VALID_IDS)
def test_a_planned_call_under_flow_control_starts_under_it(flow: FlowControl) -> None:
    events = when(given(trigger()), report(1, outcome=suspend(PlanCall(index=0, name="pay", call=charge(flow)))))

    [started] = [event for event in events if isinstance(event, CallStarted)]
    assert started.call.flow == flow


@pytest.mark.parametrize(("flow", "reason"), INVALID_FLOWS, ids=INVALID_IDS)
def test_a_planned_call_with_an_invalid_flow_control_fails_the_run(flow: FlowControl, reason: str) -> None:
    state = given(trigger())

    events = when(state, report(1, steps=(step(0),), outcome=suspend(PlanCall(index=1, name="pay", call=charge(flow)))))

    assert [type(event) for event in events] == [StepCompleted, RunFailed, FailureHandlerScheduled]
    failed = events[1]
    assert isinstance(failed, RunFailed)
    assert failed.error == ErrorInfo(type="InvalidCall", message=f"step 1 'pay': {reason}")
    then_seqs_continue(state, events)


@pytest.mark.parametrize("flow", VALID_FLOWS, ids=VALID_IDS)
def test_an_invoke_under_flow_control_starts_its_child_under_it(flow: FlowControl) -> None:
    plan = PlanInvoke(index=0, name="ship", workflow="ship", url=None, payload="{}", flow=flow)

    events = when(given(trigger()), report(1, outcome=suspend(plan)))

    [started] = [event for event in events if isinstance(event, InvokeStarted)]
    assert started.flow == flow


@pytest.mark.parametrize(("flow", "reason"), INVALID_FLOWS, ids=INVALID_IDS)
def test_an_invoke_with_an_invalid_flow_control_fails_the_run(flow: FlowControl, reason: str) -> None:
    state = given(trigger())
    plan = PlanInvoke(index=1, name="ship", workflow="ship", url=None, payload="{}", flow=flow)

    events = when(state, report(1, steps=(step(0),), outcome=suspend(plan)))

    assert [type(event) for event in events] == [StepCompleted, RunFailed, FailureHandlerScheduled]
    failed = events[1]
    assert isinstance(failed, RunFailed)
    assert failed.error == ErrorInfo(type="InvalidInvoke", message=f"step 1 'ship': {reason}")
