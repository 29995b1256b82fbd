"""``evolve`` and ``fold``, given → when → then: a run's state is exactly the fold of its events."""

from __future__ import annotations

import random

import pytest

from stepstream.core import (
    Command,
    Complete,
    Continue,
    Defaults,
    ErrorInfo,
    Event,
    Fail,
    FireTimer,
    Outcome,
    PendingDelivery,
    PendingSleep,
    RecordedStep,
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
    TriggerRun,
    decide,
    evolve,
    fold,
)

RUN = "run_01JTESTRUN"
T0 = 1_700_000_000_000
BOOM = ErrorInfo(type="RuntimeError", message="boom")
DEFAULTS = Defaults(retries=3, retry_base_ms=1_000, retry_max_ms=60_000)


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


def scheduled(*, seq: int, step_index: int, number: int, attempt: int = 1, at_ms: int = T0) -> StepScheduled:
    return StepScheduled(
        run_id=RUN,
        seq=seq,
        at_ms=at_ms,
        step_index=step_index,
        delivery_id=f"{RUN}/{number}",
        attempt=attempt,
        not_before_ms=at_ms,
    )


def completed(*, seq: int, step_index: int, kind: StepKind = StepKind.RUN, at_ms: int = T0) -> StepCompleted:
    return StepCompleted(
        run_id=RUN,
        seq=seq,
        at_ms=at_ms,
        step_index=step_index,
        name=f"step-{step_index}",
        kind=kind,
        output=f"{step_index}",
        delivery_id=f"{RUN}/1",
    )


def given(*events: Event) -> RunState:
    state = fold(events)
    assert state is not None
    return state


# ---------------------------------------------------------------------------------------------
# evolve, one event at a time


def test_a_run_starts_running_with_nothing_recorded() -> None:
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
        pending_delivery=None,
        pending_sleep=None,
        output=None,
        error=None,
    )
    assert state.next_step_index == 0


def test_a_history_must_begin_with_run_started() -> None:
    with pytest.raises(ValueError, match=r"^Expected RunStarted"):
        evolve(None, scheduled(seq=1, step_index=0, number=1))


def test_a_run_cannot_start_twice() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    with pytest.raises(ValueError, match=r"^Expected one RunStarted"):
        evolve(state, started(seq=3))


def test_step_scheduled_counts_the_delivery_and_makes_it_pending() -> None:
    state = given(started())

    state = evolve(state, scheduled(seq=2, step_index=0, number=1, at_ms=T0 + 5))

    assert state.status is RunStatus.RUNNING
    assert state.deliveries == 1
    assert state.pending_delivery == PendingDelivery(
        delivery_id=f"{RUN}/1", step_index=0, attempt=1, not_before_ms=T0 + 5
    )
    assert (state.seq, state.created_at_ms, state.updated_at_ms) == (2, T0, T0 + 5)


def test_step_completed_records_the_step_and_keeps_the_delivery_pending() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    state = evolve(state, completed(seq=3, step_index=0, at_ms=T0 + 9))

    assert state.steps == (RecordedStep(index=0, name="step-0", kind=StepKind.RUN, output="0"),)
    assert state.next_step_index == 1
    assert state.pending_delivery is not None  # the same delivery may complete more steps
    assert (state.seq, state.updated_at_ms) == (3, T0 + 9)


def test_step_failed_clears_the_pending_delivery() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

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

    assert state.pending_delivery is None
    assert state.status is RunStatus.RUNNING
    assert state.steps == ()


def test_sleep_started_puts_the_run_to_sleep() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    state = evolve(
        state,
        SleepStarted(run_id=RUN, seq=3, at_ms=T0, step_index=0, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 1_000),
    )

    assert state.status is RunStatus.SLEEPING
    assert state.pending_delivery is None
    assert state.pending_sleep == PendingSleep(step_index=0, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 1_000)


def test_the_completed_sleep_is_recorded_and_no_longer_pending() -> None:
    state = given(
        started(),
        scheduled(seq=2, step_index=0, number=1),
        SleepStarted(run_id=RUN, seq=3, at_ms=T0, step_index=0, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 9),
    )

    state = evolve(state, completed(seq=4, step_index=0, kind=StepKind.SLEEP, at_ms=T0 + 9))

    assert state.pending_sleep is None
    assert [recorded.kind for recorded in state.steps] == [StepKind.SLEEP]


def test_run_completed_keeps_the_output_and_ends_the_run() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    state = evolve(state, RunCompleted(run_id=RUN, seq=3, at_ms=T0 + 2, output='"done"'))

    assert state.status is RunStatus.COMPLETED
    assert state.status.terminal
    assert state.output == '"done"'
    assert state.pending_delivery is None


def test_run_failed_keeps_the_error_and_ends_the_run() -> None:
    state = given(started(), scheduled(seq=2, step_index=0, number=1))

    state = evolve(state, RunFailed(run_id=RUN, seq=3, at_ms=T0 + 2, error=BOOM))

    assert state.status is RunStatus.FAILED
    assert state.status.terminal
    assert state.error == BOOM
    assert state.pending_delivery is None
    assert state.pending_sleep is None


@pytest.mark.parametrize("status", [RunStatus.RUNNING, RunStatus.SLEEPING])
def test_running_and_sleeping_are_not_terminal(status: RunStatus) -> None:
    assert not status.terminal


def test_the_fold_of_no_events_is_no_run() -> None:
    assert fold([]) is None


# ---------------------------------------------------------------------------------------------
# Replay: the fold of a run's whole history is the state reached command by command


def trigger(*, retries: int | None = None, now: int = T0) -> TriggerRun:
    return TriggerRun(
        run_id=RUN,
        workflow="order",
        url="http://app.local/workflows/order",
        payload='{"order":42}',
        now_ms=now,
        retries=retries,
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


def test_replaying_the_history_up_to_any_decision_gives_the_state_after_that_decision() -> None:
    journal = Journal()
    checkpoints: list[tuple[int, RunState | None]] = []
    for command in (
        trigger(),
        report(1, steps=1, outcome=Fail(error=BOOM, retryable=True)),
        report(2, steps=1, first=1, attempt=2, outcome=SleepUntil(index=2, name="later", wake_at_ms=T0 + 5)),
        FireTimer(run_id=RUN, step_index=2, now_ms=T0 + 5),
        report(3, outcome=Fail(error=BOOM, retryable=False)),
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
    ):
        assert isinstance(journal.apply(duplicate), Rejected)

    assert (journal.state, journal.events) == before
    then_the_history_replays_to_the_state(journal)


# ---------------------------------------------------------------------------------------------
# Property: random valid runs, with duplicates thrown in, always replay to their state

TERMINAL = (RunCompleted, RunFailed)


def random_outcome(rng: random.Random, state: RunState, steps: int, now: int) -> Outcome:
    next_index = state.next_step_index + steps
    roll = rng.random()
    if roll < 0.30:
        return Continue()
    if roll < 0.45:
        return SleepFor(index=next_index, name=f"sleep-{next_index}", duration_ms=rng.randint(0, 86_400_000))
    if roll < 0.55:
        return SleepUntil(index=next_index, name=f"until-{next_index}", wake_at_ms=now + rng.randint(-1_000, 10**9))
    if roll < 0.65:
        return Complete(output=f'"{rng.random()}"')
    return Fail(
        error=ErrorInfo(type="Flaky", message=f"failure {rng.randint(0, 9)}"),
        retryable=rng.random() < 0.9,
        retry_after_ms=rng.choice([None, None, 0, rng.randint(1, 100_000)]),
        step_index=next_index,
        step_name=f"step-{next_index}",
    )


def next_command(rng: random.Random, state: RunState, now: int) -> Command:
    if state.pending_sleep is not None:
        return FireTimer(
            run_id=RUN, step_index=state.pending_sleep.step_index, now_ms=max(now, state.pending_sleep.wake_at_ms)
        )
    pending = state.pending_delivery
    assert pending is not None, f"a running run has a pending delivery: {state}"
    steps = rng.choice([0, 0, 1, 1, 2, 3])
    first = state.next_step_index
    return ReportDelivery(
        run_id=RUN,
        delivery_id=pending.delivery_id,
        attempt=pending.attempt,
        now_ms=max(now, pending.not_before_ms),
        steps=tuple(
            StepResult(index=index, name=f"step-{index}", kind=StepKind.RUN, output=str(rng.randint(0, 10**6)))
            for index in range(first, first + steps)
        ),
        outcome=random_outcome(rng, state, steps, now),
    )


@pytest.mark.parametrize("seed", range(300))
def test_random_runs_replay_to_their_state_with_gapless_seqs_and_nothing_after_the_end(seed: int) -> None:
    rng = random.Random(seed)
    journal = Journal()
    now = T0 + rng.randint(0, 10**6)
    journal.accept(trigger(retries=rng.randint(0, 4), now=now))
    previous: Command | None = None

    for _ in range(60):
        state = journal.state
        assert state is not None
        if previous is not None and rng.random() < 0.2:
            # at-least-once delivery: the command just applied arrives again
            duplicate = journal.apply(previous)
            assert isinstance(duplicate, Rejected), f"a repeated {previous} was accepted"
            assert duplicate.duplicate
        if state.status.terminal:
            break
        now += rng.randint(0, 5_000)
        previous = next_command(rng, state, now)
        journal.accept(previous)
        now = max(now, previous.now_ms)
        assert fold(journal.events) == journal.state

    then_the_history_replays_to_the_state(journal)
    ends = [index for index, event in enumerate(journal.events) if isinstance(event, TERMINAL)]
    assert ends in ([], [len(journal.events) - 1]), "a terminal event must be the last event of the run"
    assert journal.state is not None
    if ends:
        assert journal.state.status.terminal
        for late in (
            next_command_for_a_finished_run(journal.state, now),
            FireTimer(run_id=RUN, step_index=max(0, journal.state.next_step_index - 1), now_ms=now),
            trigger(now=now),
        ):
            assert isinstance(journal.apply(late), Rejected)
        assert len(journal.events) == ends[0] + 1


def next_command_for_a_finished_run(state: RunState, now: int) -> ReportDelivery:
    return ReportDelivery(
        run_id=RUN,
        delivery_id=f"{RUN}/{state.deliveries}",
        attempt=1,
        now_ms=now,
        steps=(),
        outcome=Continue(),
    )
