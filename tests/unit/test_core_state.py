"""``evolve`` and ``fold``, given → when → then: a run's state is exactly the fold of its events."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import assert_never, get_args

import pytest

from stepstream.core import (
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
    ErrorInfo,
    Event,
    EventReceived,
    Fail,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    FireTimer,
    InvokeStarted,
    NotifyStarted,
    Outcome,
    PendingBranch,
    PendingCall,
    PendingDelivery,
    PendingInvoke,
    PendingNotify,
    PendingSleep,
    PendingStep,
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
    Rejected,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
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
    WaitStarted,
    WaitTimedOut,
    decide,
    evolve,
    fold,
)
from stepstream.core.state import status_of

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
BOOM = ErrorInfo(type="RuntimeError", message="boom")
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000, max_invoke_depth=2, call_grace_ms=5_000)
CALL = CallSpec(method="GET", url="http://api.local/price", headers=(), body=None, timeout_ms=1_000, retries=2)


def started(*, seq: int = 1, at_ms: int = T0) -> RunStarted:
    return RunStarted(
        run_id=RUN,
        seq=seq,
        at_ms=at_ms,
        workflow="order",
        url="http://app.local/workflows/order",
        payload='{"order":42}',
        headers=(("x-tenant", "acme"),),
        label="nightly",
        retries=2,
        retry_base_ms=500,
    )


def scheduled(
    *,
    seq: int,
    step_index: int,
    number: int,
    attempt: int = 1,
    at_ms: int = T0,
    execute_only: bool = False,
    name: str | None = None,
) -> StepScheduled:
    return StepScheduled(
        run_id=RUN,
        seq=seq,
        at_ms=at_ms,
        step_index=step_index,
        delivery_id=f"{RUN}/{number}",
        attempt=attempt,
        not_before_ms=at_ms,
        execute_only=execute_only,
        name=name,
    )


def completed(
    *, seq: int, step_index: int, kind: StepKind = StepKind.RUN, at_ms: int = T0, number: int = 1
) -> StepCompleted:
    return StepCompleted(
        run_id=RUN,
        seq=seq,
        at_ms=at_ms,
        step_index=step_index,
        name=f"step-{step_index}",
        kind=kind,
        output=f"{step_index}",
        delivery_id=f"{RUN}/{number}",
    )


def sleep_started(*, seq: int, step_index: int, wake_at_ms: int = T0 + 1_000) -> SleepStarted:
    return SleepStarted(
        run_id=RUN, seq=seq, at_ms=T0, step_index=step_index, name="nap", kind=StepKind.SLEEP, wake_at_ms=wake_at_ms
    )


def call_started(*, seq: int, step_index: int) -> CallStarted:
    return CallStarted(
        run_id=RUN, seq=seq, at_ms=T0, step_index=step_index, name="price", call=CALL, deadline_ms=T0 + 9
    )


def wait_started(*, seq: int, step_index: int) -> WaitStarted:
    return WaitStarted(
        run_id=RUN, seq=seq, at_ms=T0, step_index=step_index, name="paid", event_id="order-42", timeout_at_ms=T0 + 60
    )


def given(*events: Event) -> RunState:
    state = fold(events)
    assert state is not None
    return state


def given_in_flight_replay() -> RunState:
    """A run whose first (replay) delivery is in flight."""
    return given(started(), scheduled(seq=2, step_index=0, number=1))


# ---------------------------------------------------------------------------------------------
# evolve, one event at a time


def test_a_run_starts_running_with_nothing_recorded_or_pending() -> None:
    state = evolve(None, started(at_ms=T0 + 1))

    assert state == RunState(
        run_id=RUN,
        seq=1,
        workflow="order",
        url="http://app.local/workflows/order",
        payload='{"order":42}',
        headers=(("x-tenant", "acme"),),
        label="nightly",
        retries=2,
        retry_base_ms=500,
        status=RunStatus.RUNNING,
        created_at_ms=T0 + 1,
        updated_at_ms=T0 + 1,
        steps=(),
        deliveries=0,
        in_flight=(),
        waiting=(),
        output=None,
        error=None,
    )
    assert state.first_open_index == 0
    assert state.idle


def test_a_run_started_by_a_parent_keeps_its_parent_depth_and_failure_url() -> None:
    event = RunStarted(
        run_id=f"{RUN}.3",
        seq=1,
        at_ms=T0,
        workflow="ship",
        url="http://app.local/workflows/ship",
        payload="{}",
        headers=(),
        label=None,
        retries=1,
        retry_base_ms=100,
        retry_delay="1000 * pow(2, retried)",
        failure_url="http://app.local/failures",
        parent_run_id=RUN,
        parent_step_index=3,
        depth=4,
    )

    state = evolve(None, event)

    assert (state.parent_run_id, state.parent_step_index, state.depth) == (RUN, 3, 4)
    assert (state.retry_delay, state.failure_url) == ("1000 * pow(2, retried)", "http://app.local/failures")
    assert (state.failure_delivery, state.dead_letter) == (None, False)


def test_a_history_must_begin_with_run_started() -> None:
    with pytest.raises(ValueError, match=r"^Expected RunStarted"):
        evolve(None, scheduled(seq=1, step_index=0, number=1))


def test_a_run_cannot_start_twice() -> None:
    state = given_in_flight_replay()

    with pytest.raises(ValueError, match=r"^Expected one RunStarted"):
        evolve(state, started(seq=3))


def test_step_scheduled_counts_the_delivery_and_puts_it_in_flight() -> None:
    state = given(started())

    state = evolve(state, scheduled(seq=2, step_index=0, number=1, at_ms=T0 + 5))

    assert state.status is RunStatus.RUNNING
    assert state.deliveries == 1
    assert state.in_flight == (PendingDelivery(delivery_id=f"{RUN}/1", step_index=0, attempt=1, not_before_ms=T0 + 5),)
    assert state.waiting == ()
    assert not state.idle
    assert (state.seq, state.created_at_ms, state.updated_at_ms) == (2, T0, T0 + 5)


def test_step_completed_records_the_step_and_keeps_the_replay_delivery_in_flight() -> None:
    state = given_in_flight_replay()

    state = evolve(state, completed(seq=3, step_index=0, at_ms=T0 + 9))

    assert state.steps == (RecordedStep(index=0, name="step-0", kind=StepKind.RUN, output="0"),)
    assert state.first_open_index == 1
    assert [d.delivery_id for d in state.in_flight] == [f"{RUN}/1"]  # the same delivery may complete more steps
    assert (state.seq, state.updated_at_ms) == (3, T0 + 9)


def test_step_failed_takes_the_delivery_out_of_flight() -> None:
    state = given_in_flight_replay()

    state = evolve(
        state,
        StepFailed(
            run_id=RUN,
            seq=3,
            at_ms=T0,
            step_index=0,
            name=None,
            delivery_id=f"{RUN}/1",
            attempt=1,
            error=BOOM,
            retry_at_ms=T0 + 500,
        ),
    )

    assert state.in_flight == ()
    assert state.status is RunStatus.RUNNING
    assert state.steps == ()


def test_execute_only_deliveries_end_the_replay_delivery_and_make_their_steps_pending_branches() -> None:
    state = given_in_flight_replay()

    state = evolve(state, scheduled(seq=3, step_index=0, number=2, execute_only=True, name="a"))
    state = evolve(state, scheduled(seq=4, step_index=1, number=3, execute_only=True, name="b"))

    assert [(d.delivery_id, d.step_index, d.execute_only) for d in state.in_flight] == [
        (f"{RUN}/2", 0, True),
        (f"{RUN}/3", 1, True),
    ]
    assert state.waiting == (PendingBranch(step_index=0, name="a"), PendingBranch(step_index=1, name="b"))
    assert state.deliveries == 3
    assert state.status is RunStatus.RUNNING
    assert state.first_open_index == 2


def test_a_completed_branch_leaves_flight_and_the_other_branches_stay() -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        scheduled(seq=3, step_index=0, number=2, execute_only=True, name="a"),
        scheduled(seq=4, step_index=1, number=3, execute_only=True, name="b"),
    )

    state = evolve(state, completed(seq=5, step_index=1, number=3))

    assert [d.delivery_id for d in state.in_flight] == [f"{RUN}/2"]
    assert state.waiting == (PendingBranch(step_index=0, name="a"),)
    assert [step.index for step in state.steps] == [1]
    assert state.first_open_index == 2

    state = evolve(state, completed(seq=6, step_index=0, number=2))

    assert state.idle
    assert state.first_open_index == 2


def test_a_failed_branch_stays_pending_while_its_retry_is_scheduled() -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        scheduled(seq=3, step_index=0, number=2, execute_only=True, name="a"),
    )

    state = evolve(
        state,
        StepFailed(
            run_id=RUN,
            seq=4,
            at_ms=T0,
            step_index=0,
            name="a",
            delivery_id=f"{RUN}/2",
            attempt=1,
            error=BOOM,
            retry_at_ms=T0 + 500,
        ),
    )

    assert state.in_flight == ()
    assert state.waiting == (PendingBranch(step_index=0, name="a"),)
    assert state.status is RunStatus.RUNNING
    assert not state.idle


def test_sleep_started_puts_the_run_to_sleep_and_ends_the_replay_delivery() -> None:
    state = given_in_flight_replay()

    state = evolve(state, sleep_started(seq=3, step_index=0))

    assert state.status is RunStatus.SLEEPING
    assert state.in_flight == ()
    assert state.waiting == (PendingSleep(step_index=0, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 1_000),)
    assert state.pending(0) == state.waiting[0]
    assert state.first_open_index == 1


def test_the_completed_sleep_is_recorded_and_no_longer_pending() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1), sleep_started(seq=3, step_index=0))

    state = evolve(state, completed(seq=4, step_index=0, kind=StepKind.SLEEP, at_ms=T0 + 9))

    assert state.waiting == ()
    assert [recorded.kind for recorded in state.steps] == [StepKind.SLEEP]
    assert state.idle


def test_a_started_call_keeps_the_run_running_and_a_retry_moves_to_the_next_attempt() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    state = evolve(state, call_started(seq=3, step_index=0))

    assert state.status is RunStatus.RUNNING
    assert state.in_flight == ()
    assert state.waiting == (PendingCall(step_index=0, name="price", call=CALL, attempt=1, deadline_ms=T0 + 9),)

    state = evolve(
        state,
        CallRetried(
            run_id=RUN,
            seq=4,
            at_ms=T0,
            step_index=0,
            attempt=1,
            status=503,
            error="answered 503",
            retry_at_ms=T0 + 1_000,
            deadline_ms=T0 + 2_000,
        ),
    )

    assert state.waiting == (PendingCall(step_index=0, name="price", call=CALL, attempt=2, deadline_ms=T0 + 2_000),)


def test_a_call_retried_without_a_pending_call_is_not_a_fact_evolve_accepts() -> None:
    state = given_in_flight_replay()
    retried = CallRetried(
        run_id=RUN, seq=3, at_ms=T0, step_index=0, attempt=1, status=0, error="x", retry_at_ms=T0, deadline_ms=T0
    )

    with pytest.raises(ValueError, match=r"^Expected a pending call"):
        evolve(state, retried)


@pytest.mark.parametrize(
    ("ending", "output"),
    [
        (
            EventReceived(run_id=RUN, seq=4, at_ms=T0, step_index=0, event_id="order-42", data='{"paid":true}'),
            '{"timeout":false,"data":{"paid":true}}',
        ),
        (WaitTimedOut(run_id=RUN, seq=4, at_ms=T0, step_index=0, event_id="order-42"), '{"timeout":true,"data":null}'),
    ],
    ids=["event-received", "timed-out"],
)
def test_a_wait_makes_the_run_wait_and_records_how_it_ended(ending: Event, output: str) -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1), wait_started(seq=3, step_index=0))
    assert state.status is RunStatus.WAITING
    assert state.waiting == (PendingWait(step_index=0, name="paid", event_id="order-42", timeout_at_ms=T0 + 60),)

    state = evolve(state, ending)

    assert state.steps == (RecordedStep(index=0, name="paid", kind=StepKind.WAIT_FOR_EVENT, output=output),)
    assert state.idle


def test_notify_and_invoke_make_the_run_wait() -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        NotifyStarted(run_id=RUN, seq=3, at_ms=T0, step_index=0, name="tell", event_id="order-42", data="1"),
        InvokeStarted(
            run_id=RUN,
            seq=4,
            at_ms=T0,
            step_index=1,
            name="ship",
            child_run_id=f"{RUN}.1",
            workflow="ship",
            url="http://app.local/workflows/ship",
            payload="{}",
            headers=(),
            label=None,
            retries=None,
            retry_delay=None,
        ),
    )

    assert state.status is RunStatus.WAITING
    assert state.waiting == (
        PendingNotify(step_index=0, name="tell", event_id="order-42"),
        PendingInvoke(step_index=1, name="ship", child_run_id=f"{RUN}.1"),
    )
    assert state.in_flight == ()


@pytest.mark.parametrize(
    ("pending", "status"),
    [
        ((sleep_started(seq=3, step_index=0),), RunStatus.SLEEPING),
        ((sleep_started(seq=3, step_index=0), wait_started(seq=4, step_index=1)), RunStatus.WAITING),
        ((sleep_started(seq=3, step_index=0), call_started(seq=4, step_index=1)), RunStatus.RUNNING),
        ((wait_started(seq=3, step_index=0), call_started(seq=4, step_index=1)), RunStatus.RUNNING),
    ],
    ids=["sleep", "sleep-and-wait", "sleep-and-call", "wait-and-call"],
)
def test_the_status_follows_the_most_active_pending_step(pending: tuple[Event, ...], status: RunStatus) -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1), *pending)

    assert state.status is status


def test_the_first_open_index_skips_recorded_and_pending_steps() -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        completed(seq=3, step_index=0),
        sleep_started(seq=4, step_index=1),
        wait_started(seq=5, step_index=3),
    )

    assert state.first_open_index == 2


@pytest.mark.parametrize(
    ("ending", "status"),
    [
        (RunCompleted(run_id=RUN, seq=5, at_ms=T0 + 2, output='"done"'), RunStatus.COMPLETED),
        (RunFailed(run_id=RUN, seq=5, at_ms=T0 + 2, error=BOOM), RunStatus.FAILED),
        (RunCancelled(run_id=RUN, seq=5, at_ms=T0 + 2, reason="operator"), RunStatus.CANCELLED),
    ],
    ids=["completed", "failed", "cancelled"],
)
def test_the_end_of_a_run_drops_everything_in_flight_or_pending(ending: Event, status: RunStatus) -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        scheduled(seq=3, step_index=0, number=2, execute_only=True, name="a"),
        sleep_started(seq=4, step_index=1),
    )

    state = evolve(state, ending)

    assert state.status is status
    assert state.status.terminal
    assert (state.in_flight, state.waiting) == ((), ())
    assert state.steps == ()


def test_run_completed_keeps_the_output() -> None:
    state = evolve(given_in_flight_replay(), RunCompleted(run_id=RUN, seq=3, at_ms=T0 + 2, output='"done"'))

    assert (state.output, state.error, state.dead_letter) == ('"done"', None, False)


def test_run_failed_keeps_the_error_and_puts_the_run_in_the_dead_letter_list() -> None:
    state = evolve(given_in_flight_replay(), RunFailed(run_id=RUN, seq=3, at_ms=T0 + 2, error=BOOM))

    assert (state.output, state.error, state.dead_letter) == (None, BOOM, True)


@pytest.mark.parametrize("status", [RunStatus.SCHEDULED, RunStatus.RUNNING, RunStatus.SLEEPING, RunStatus.WAITING])
def test_scheduled_running_sleeping_and_waiting_are_not_terminal(status: RunStatus) -> None:
    assert not status.terminal


def test_an_ignored_result_changes_nothing_but_the_seq() -> None:
    state = given(
        started(), scheduled(seq=2, step_index=0, number=1), RunCancelled(run_id=RUN, seq=3, at_ms=T0, reason=None)
    )

    after = evolve(state, ResultIgnored(run_id=RUN, seq=4, at_ms=T0 + 7, what="late report"))

    assert after == replace(state, seq=4, updated_at_ms=T0 + 7)


def failed_with_steps() -> RunState:
    return given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        completed(seq=3, step_index=0),
        RunFailed(run_id=RUN, seq=4, at_ms=T0, error=BOOM),
    )


def test_the_failure_handler_delivery_is_counted_and_kept_until_it_is_handled() -> None:
    state = failed_with_steps()

    state = evolve(
        state,
        FailureHandlerScheduled(
            run_id=RUN, seq=5, at_ms=T0, delivery_id=f"{RUN}/2", attempt=1, not_before_ms=T0, url="http://fail"
        ),
    )

    assert state.failure_delivery == PendingDelivery(delivery_id=f"{RUN}/2", step_index=1, attempt=1, not_before_ms=T0)
    assert state.deliveries == 2
    assert state.in_flight == ()
    assert state.status is RunStatus.FAILED

    state = evolve(
        state,
        FailureHandled(run_id=RUN, seq=6, at_ms=T0, delivery_id=f"{RUN}/2", attempt=1, error=None, retry_at_ms=None),
    )

    assert state.failure_delivery is None
    assert state.dead_letter  # handling the failure does not take the run off the dead-letter list


@pytest.mark.parametrize(
    ("action", "status", "steps", "error"),
    [
        (Recovery.RESUME, RunStatus.RUNNING, (0,), None),
        (Recovery.RESTART, RunStatus.RUNNING, (), None),
        (Recovery.DELETE, RunStatus.FAILED, (0,), BOOM),
    ],
    ids=["resume", "restart", "delete"],
)
def test_recovery_takes_the_run_off_the_dead_letter_list(
    action: Recovery, status: RunStatus, steps: tuple[int, ...], error: ErrorInfo | None
) -> None:
    state = evolve(failed_with_steps(), RunRecovered(run_id=RUN, seq=5, at_ms=T0, action=action))

    assert not state.dead_letter
    assert state.status is status
    assert tuple(step.index for step in state.steps) == steps
    assert state.error == error


def test_the_fold_of_no_events_is_no_run() -> None:
    assert fold([]) is None


# ---------------------------------------------------------------------------------------------
# Replay: the fold of a run's whole history is the state reached command by command


def trigger(*, retries: int | None = None, now: int = T0, depth: int = 0, retry_delay: str | None = None) -> TriggerRun:
    return TriggerRun(
        run_id=RUN,
        workflow="order",
        url="http://app.local/workflows/order",
        payload='{"order":42}',
        now_ms=now,
        retries=retries,
        depth=depth,
        retry_delay=retry_delay,
    )


def report(
    delivery: int, *, outcome: Outcome, steps: int = 0, first: int = 0, attempt: int = 1, now: int = T0
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


class Journal:
    """Decides commands one after another, keeping the state and every event appended."""

    def __init__(self) -> None:
        self.state: RunState | None = None
        self.events: list[Event] = []

    def apply(self, command: Command) -> list[Event] | Rejected:
        decision = decide(self.state, command, DEFAULTS)
        if isinstance(decision, Rejected):
            return decision
        for event in decision:
            self.state = evolve(self.state, event)
        self.events.extend(decision)
        return decision

    def accept(self, *commands: Command) -> None:
        for command in commands:
            decision = self.apply(command)
            assert not isinstance(decision, Rejected), f"{command} was rejected: {decision.reason}"


def then_the_history_replays_to_the_state(journal: Journal) -> None:
    assert fold(journal.events) == journal.state
    assert [event.seq for event in journal.events] == list(range(1, len(journal.events) + 1))
    assert {event.run_id for event in journal.events} == {RUN}
    assert journal.state is not None
    assert journal.state.seq == len(journal.events)


def test_replaying_a_whole_run_gives_the_state_reached_step_by_step() -> None:
    journal = Journal()
    # given a run that did two steps and a sleep in one delivery, woke, failed once, and completed
    journal.accept(
        trigger(now=T0),
        report(1, steps=2, outcome=SleepFor(index=2, name="nap", duration_ms=60_000), now=T0 + 10),
        FireTimer(run_id=RUN, step_index=2, now_ms=T0 + 60_010),
        report(2, steps=1, first=3, outcome=Fail(error=BOOM, retryable=True), now=T0 + 60_020),
        report(3, steps=1, first=4, attempt=2, outcome=Continue(), now=T0 + 61_020),
        report(4, outcome=Complete(output='"shipped"'), now=T0 + 61_030),
    )

    # then
    then_the_history_replays_to_the_state(journal)
    state = journal.state
    assert state is not None
    assert state.status is RunStatus.COMPLETED
    assert state.output == '"shipped"'
    assert [(recorded.index, recorded.kind) for recorded in state.steps] == [
        (0, StepKind.RUN),
        (1, StepKind.RUN),
        (2, StepKind.SLEEP),
        (3, StepKind.RUN),
        (4, StepKind.RUN),
    ]
    assert state.deliveries == 4
    assert [type(event).__name__ for event in journal.events] == [
        "RunStarted",
        "StepScheduled",
        "StepCompleted",
        "StepCompleted",
        "SleepStarted",
        "StepCompleted",
        "StepScheduled",
        "StepCompleted",
        "StepFailed",
        "StepScheduled",
        "StepCompleted",
        "StepScheduled",
        "RunCompleted",
    ]


def test_replaying_a_run_of_parallel_steps_gives_the_state_reached_step_by_step() -> None:
    journal = Journal()
    plans: tuple[PlannedStep, ...] = (
        PlanRun(index=1, name="charge"),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=100),
        PlanCall(index=3, name="price", call=CALL),
        PlanWait(index=4, name="paid", event_id="order-42", timeout_ms=1_000),
        PlanNotify(index=5, name="tell", event_id="order-41", data="1"),
        PlanInvoke(index=6, name="ship", workflow="ship", url=None, payload="{}"),
    )
    journal.accept(
        trigger(),
        report(1, steps=1, outcome=Suspend(steps=plans)),
        report(2, steps=1, first=1, outcome=Continue()),
        FireTimer(run_id=RUN, step_index=2, now_ms=T0 + 100),
        ReportCall(run_id=RUN, step_index=3, attempt=1, now_ms=T0 + 5, status=200, headers=(), body="7"),
        ReceiveEvent(run_id=RUN, step_index=4, event_id="order-42", data="true", now_ms=T0 + 6),
        ReportNotify(run_id=RUN, step_index=5, notified=("run_b",), now_ms=T0 + 7),
        ChildFinished(
            run_id=RUN, step_index=6, child_run_id=f"{RUN}.6", status="completed", output="1", error=None, now_ms=T0 + 8
        ),
        report(3, outcome=Complete(output="null"), now=T0 + 200),
    )

    then_the_history_replays_to_the_state(journal)
    assert journal.state is not None
    assert [step.index for step in journal.state.steps] == list(range(7))
    assert journal.state.status is RunStatus.COMPLETED


def test_replaying_the_history_up_to_any_decision_gives_the_state_after_that_decision() -> None:
    journal = Journal()
    checkpoints: list[tuple[int, RunState | None]] = []
    for command in (
        trigger(),
        report(1, steps=1, outcome=Fail(error=BOOM, retryable=True)),
        report(2, steps=1, first=1, attempt=2, outcome=SleepUntil(index=2, name="later", wake_at_ms=T0 + 5)),
        FireTimer(run_id=RUN, step_index=2, now_ms=T0 + 5),
        report(3, outcome=Fail(error=BOOM, retryable=False)),
        report(4, outcome=Continue()),  # the failure handler
        RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=T0 + 9),
        CancelRun(run_id=RUN, reason="enough", now_ms=T0 + 10),
    ):
        journal.accept(command)
        checkpoints.append((len(journal.events), journal.state))

    for length, state in checkpoints:
        assert fold(journal.events[:length]) == state


def test_rejected_commands_leave_no_trace_in_the_history() -> None:
    journal = Journal()
    journal.accept(trigger(), report(1, steps=1, outcome=Continue()))
    before = (journal.state, list(journal.events))

    for duplicate in (
        trigger(),
        report(1, steps=1, outcome=Continue()),
        report(1, steps=1, outcome=Complete(output="1")),
        FireTimer(run_id=RUN, step_index=1, now_ms=T0),
        RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=T0),
        ReportCall(run_id=RUN, step_index=1, attempt=1, now_ms=T0, status=200, headers=(), body="1"),
    ):
        assert isinstance(journal.apply(duplicate), Rejected)

    assert (journal.state, journal.events) == before
    then_the_history_replays_to_the_state(journal)


# ---------------------------------------------------------------------------------------------
# Property: random valid runs of every primitive, with duplicates thrown in, always replay to their state

TERMINAL = (RunCompleted, RunFailed, RunCancelled)
RETRY_RULES = [None, None, None, "1000 * pow(2, retried)", "min(60000, 500 + retried * 1000)"]
EVENT_IDS = ["order-42", "order-43"]


def free_indexes(state: RunState, count: int) -> list[int]:
    """The lowest ``count`` indexes with neither a result nor a pending step."""
    taken = {step.index for step in state.steps} | {step.step_index for step in state.waiting}
    indexes: list[int] = []
    index = 0
    while len(indexes) < count:
        if index not in taken:
            indexes.append(index)
        index += 1
    return indexes


def random_plan(rng: random.Random, index: int, now: int) -> PlannedStep:
    name = f"step-{index}"
    roll = rng.random()
    if roll < 0.30:
        return PlanRun(index=index, name=name)
    if roll < 0.42:
        return PlanSleep(index=index, name=name, kind=StepKind.SLEEP, duration_ms=rng.randint(0, 86_400_000))
    if roll < 0.47:
        return PlanSleep(index=index, name=name, kind=StepKind.SLEEP_UNTIL, wake_at_ms=now + rng.randint(-1_000, 10**9))
    if roll < 0.65:
        # now and then a rule the engine refuses: the run fails when the call would start
        rule = rng.choice([*RETRY_RULES, "__import__('os')"])
        call = CallSpec(
            method="POST",
            url="http://api.local/charge",
            headers=(("content-type", "application/json"),),
            body='{"amount":1}',
            timeout_ms=rng.randint(1, 30_000),
            retries=rng.randint(0, 3),
            retry_delay=rule,
        )
        return PlanCall(index=index, name=name, call=call)
    if roll < 0.80:
        return PlanWait(index=index, name=name, event_id=rng.choice(EVENT_IDS), timeout_ms=rng.randint(0, 10**7))
    if roll < 0.90:
        return PlanNotify(index=index, name=name, event_id=rng.choice(EVENT_IDS), data=f"{rng.randint(0, 9)}")
    return PlanInvoke(
        index=index,
        name=name,
        workflow="ship",
        url=rng.choice([None, "http://other.local/ship"]),
        payload="{}",
        headers=(("x-child", "1"),),
    )


def random_outcome(rng: random.Random, indexes: list[int], now: int) -> Outcome:
    index = indexes[0]
    roll = rng.random()
    if roll < 0.20:
        return Continue()
    if roll < 0.28:
        return SleepFor(index=index, name=f"sleep-{index}", duration_ms=rng.randint(0, 86_400_000))
    if roll < 0.32:
        return SleepUntil(index=index, name=f"until-{index}", wake_at_ms=now + rng.randint(-1_000, 10**9))
    if roll < 0.60:
        width = rng.randint(1, len(indexes))
        return Suspend(steps=tuple(random_plan(rng, plan_index, now) for plan_index in indexes[:width]))
    if roll < 0.64:
        return Complete(output=f'"{rng.random()}"')
    if roll < 0.65:
        return Cancel(reason=rng.choice([None, "done early"]))
    return random_fail(rng, index)


def random_fail(rng: random.Random, index: int) -> Fail:
    return Fail(
        error=ErrorInfo(type="Flaky", message=f"failure {rng.randint(0, 9)}"),
        retryable=rng.random() < 0.9,
        retry_after_ms=rng.choice([None, None, 0, rng.randint(1, 100_000)]),
        step_index=index,
        step_name=f"step-{index}",
    )


def report_for(rng: random.Random, state: RunState, delivery: PendingDelivery, now: int) -> ReportDelivery:
    now = max(now, delivery.not_before_ms)
    if delivery.execute_only:
        branch = state.pending(delivery.step_index)
        assert isinstance(branch, PendingBranch), f"an execute-only delivery has a pending branch: {state}"
        if rng.random() < 0.75:
            result = StepResult(index=branch.step_index, name=branch.name, kind=StepKind.RUN, output='"branch"')
            steps: tuple[StepResult, ...] = (result,)
            outcome: Outcome = Continue()
        else:
            steps, outcome = (), random_fail(rng, branch.step_index)
    else:
        count = rng.choice([0, 0, 1, 1, 2, 3])
        indexes = free_indexes(state, count + 4)
        steps = tuple(
            StepResult(index=index, name=f"step-{index}", kind=StepKind.RUN, output=str(rng.randint(0, 10**6)))
            for index in indexes[:count]
        )
        outcome = random_outcome(rng, indexes[count:], now)
    return ReportDelivery(
        run_id=RUN,
        delivery_id=delivery.delivery_id,
        attempt=delivery.attempt,
        now_ms=now,
        steps=steps,
        outcome=outcome,
    )


def answer_to(rng: random.Random, step: PendingStep, now: int) -> Command:
    """A command that ends (or moves on) a pending step other than a branch (its delivery's report does)."""
    index = step.step_index
    match step:
        case PendingSleep():
            return FireTimer(run_id=RUN, step_index=index, now_ms=max(now, step.wake_at_ms))
        case PendingCall():
            if rng.random() < 0.2:
                return FireTimer(run_id=RUN, step_index=index, now_ms=max(now, step.deadline_ms))
            status = rng.choice([0, 200, 201, 404, 408, 429, 500, 503])
            return ReportCall(
                run_id=RUN,
                step_index=index,
                attempt=step.attempt,
                now_ms=now,
                status=status,
                headers=(("content-type", "application/json"),),
                body="null" if status == 0 else '{"ok":true}',
                error="connection refused" if status == 0 else None,
            )
        case PendingWait():
            if rng.random() < 0.3:
                return FireTimer(run_id=RUN, step_index=index, now_ms=max(now, step.timeout_at_ms))
            return ReceiveEvent(run_id=RUN, step_index=index, event_id=step.event_id, data='{"paid":true}', now_ms=now)
        case PendingNotify():
            notified = tuple(f"run_{n}" for n in range(rng.randint(0, 3)))
            return ReportNotify(run_id=RUN, step_index=index, notified=notified, now_ms=now)
        case PendingInvoke():
            ending = rng.choice(["completed", "failed", "cancelled"])
            return ChildFinished(
                run_id=RUN,
                step_index=index,
                child_run_id=step.child_run_id,
                status=ending,
                output='"shipped"' if ending == "completed" else None,
                error=BOOM if ending == "failed" else None,
                now_ms=now,
            )
        case PendingBranch():
            raise AssertionError("a branch ends with its delivery's report")
        case _:
            assert_never(step)


def next_command(rng: random.Random, state: RunState, now: int) -> Command | None:
    """A command a live engine could send next; None when the run has nothing left to do."""
    if state.status is RunStatus.FAILED:
        failed_options: list[Command] = []
        if state.failure_delivery is not None:
            failed_options.append(report_for_failure_handler(rng, state.failure_delivery, now))
        if state.dead_letter and rng.random() < 0.5:
            failed_options.append(RecoverRun(run_id=RUN, action=rng.choice(list(Recovery)), now_ms=now))
        return rng.choice(failed_options) if failed_options else None
    if state.status.terminal:
        return None
    if rng.random() < 0.01:
        return CancelRun(run_id=RUN, reason=rng.choice([None, "operator"]), now_ms=now)
    # a branch's result comes with its delivery's report
    targets = [*state.in_flight, *(step for step in state.waiting if not isinstance(step, PendingBranch))]
    target = rng.choice(targets)
    if isinstance(target, PendingDelivery):
        return report_for(rng, state, target, now)
    return answer_to(rng, target, now)


def report_for_failure_handler(rng: random.Random, failure: PendingDelivery, now: int) -> ReportDelivery:
    outcome: Outcome = Continue() if rng.random() < 0.6 else random_fail(rng, failure.step_index)
    return ReportDelivery(
        run_id=RUN,
        delivery_id=failure.delivery_id,
        attempt=failure.attempt,
        now_ms=max(now, failure.not_before_ms),
        steps=(),
        outcome=outcome,
    )


def then_the_state_is_consistent(state: RunState) -> None:
    if state.status.terminal:
        assert (state.in_flight, state.waiting) == ((), ())
        return
    assert state.status is status_of(state.in_flight, state.waiting)
    assert not state.idle, "a live run always waits on something, or it would never move again"
    replays = [delivery for delivery in state.in_flight if not delivery.execute_only]
    assert len(replays) <= 1
    if replays:
        assert state.waiting == (), "a replay delivery is only scheduled once nothing else is pending"
    branches = {step.step_index for step in state.waiting if isinstance(step, PendingBranch)}
    assert branches == {delivery.step_index for delivery in state.in_flight if delivery.execute_only}


def then_nothing_happens_after_the_end(events: list[Event]) -> None:
    ended: type[Event] | None = None
    for event in events:
        if ended is RunCompleted:
            raise AssertionError(f"{event} after the run completed")
        if ended is RunCancelled:
            assert isinstance(event, ResultIgnored), f"{event} after the run was cancelled"
        if ended is RunFailed:
            assert isinstance(event, FailureHandlerScheduled | FailureHandled | FailureHandlerFailed | RunRecovered), (
                f"{event} after failure"
            )
        if isinstance(event, RunRecovered) and event.action is not Recovery.DELETE:
            ended = None
        elif isinstance(event, TERMINAL):
            ended = type(event)


def random_run(seed: int, commands: int = 80) -> tuple[Journal, int, list[tuple[int, RunState]]]:
    """A random run, the time after its last command, and the state after each decision."""
    rng = random.Random(seed)
    journal = Journal()
    checkpoints: list[tuple[int, RunState]] = []
    now = T0 + rng.randint(0, 10**6)
    journal.accept(
        trigger(retries=rng.randint(0, 4), now=now, depth=rng.randint(0, 2), retry_delay=rng.choice(RETRY_RULES))
    )
    previous: Command | None = None

    for _ in range(commands):
        state = journal.state
        assert state is not None
        if previous is not None and rng.random() < 0.2:
            # at-least-once delivery: the command just applied arrives again
            again = journal.apply(previous)
            if state.status is RunStatus.CANCELLED and not isinstance(again, Rejected):
                assert [type(event) for event in again] == [ResultIgnored]
            else:
                assert isinstance(again, Rejected), f"a repeated {previous} was accepted: {again}"
                assert again.duplicate, again.reason
            state = journal.state
            assert state is not None
        now += rng.randint(0, 5_000)
        command = next_command(rng, state, now)
        if command is None:
            break
        journal.accept(command)
        previous = command
        now = max(now, command.now_ms)
        assert journal.state is not None
        then_the_state_is_consistent(journal.state)
        checkpoints.append((len(journal.events), journal.state))
    return journal, now, checkpoints


@pytest.mark.parametrize("seed", range(300))
def test_random_runs_replay_to_their_state_with_gapless_seqs_and_nothing_after_the_end(seed: int) -> None:
    journal, now, checkpoints = random_run(seed)

    then_the_history_replays_to_the_state(journal)
    for length, reached in random.Random(seed).sample(checkpoints, min(5, len(checkpoints))):
        assert fold(journal.events[:length]) == reached
    then_nothing_happens_after_the_end(journal.events)
    state = journal.state
    assert state is not None
    if state.status.terminal and state.failure_delivery is None and not state.dead_letter:
        length = len(journal.events)
        for late in (
            report_of_the_last_delivery(state, now),
            FireTimer(run_id=RUN, step_index=max(0, state.first_open_index - 1), now_ms=now),
            trigger(now=now),
            RecoverRun(run_id=RUN, action=Recovery.RESUME, now_ms=now),
            CancelRun(run_id=RUN, reason=None, now_ms=now),
        ):
            decision = journal.apply(late)
            if state.status is RunStatus.CANCELLED and isinstance(late, ReportDelivery):
                assert not isinstance(decision, Rejected)
                assert [type(event) for event in decision] == [ResultIgnored]
            else:
                assert isinstance(decision, Rejected), f"{late} was accepted by a {state.status.value} run"
        assert len(journal.events) - length <= 1
        then_nothing_happens_after_the_end(journal.events)


def test_the_random_runs_reach_every_event_and_every_pending_step() -> None:
    seen: set[type] = set()
    for seed in range(150):
        journal, _, _ = random_run(seed)
        state: RunState | None = None
        for event in journal.events:
            seen.add(type(event))
            state = evolve(state, event)
            seen.update(type(step) for step in state.waiting)

    assert set(get_args(Event)) <= seen
    assert {PendingSleep, PendingBranch, PendingCall, PendingWait, PendingNotify, PendingInvoke} <= seen


def report_of_the_last_delivery(state: RunState, now: int) -> ReportDelivery:
    return ReportDelivery(
        run_id=RUN,
        delivery_id=f"{RUN}/{state.deliveries}",
        attempt=1,
        now_ms=now,
        steps=(),
        outcome=Continue(),
    )
