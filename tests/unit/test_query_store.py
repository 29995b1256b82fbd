"""The query store, given → when → then: the run rows and histories the api serves, built from events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

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
    Rejected,
    ReportDelivery,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunState,
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
)
from stepstream.store import QueryStore, RunRow, event_to_dict

T0 = 1_700_000_000_000
DEFAULTS = Defaults(retries=1, retry_base_ms=1_000, retry_max_ms=60_000)
BOOM = ErrorInfo(type="ValueError", message="boom")


class Run:
    """A run driven through ``decide``: every command must be accepted; its events pile up in order."""

    def __init__(
        self,
        run_id: str = "run_A",
        *,
        now: int = T0,
        workflow: str = "orders",
        label: str | None = "nightly",
        payload: str = '{"order":42,"items":["a","b"]}',
    ) -> None:
        self.run_id = run_id
        self.state: RunState | None = None
        self.events: list[Event] = []
        self.deliveries = 0
        self.attempt = 1
        self.apply(
            TriggerRun(
                run_id=run_id,
                workflow=workflow,
                url=f"http://app.local/workflows/{workflow}",
                payload=payload,
                now_ms=now,
                headers=(("x-tenant", "acme"),),
                label=label,
            )
        )

    def apply(self, command: Command) -> list[Event]:
        decision = decide(self.state, command, DEFAULTS)
        assert not isinstance(decision, Rejected), decision.reason
        for event in decision:
            self.state = evolve(self.state, event)
            if isinstance(event, StepScheduled):
                self.deliveries, self.attempt = int(event.delivery_id.rsplit("/", 1)[1]), event.attempt
        self.events.extend(decision)
        return decision

    def report(self, outcome: Outcome, *, outputs: tuple[str, ...] = (), now: int = T0) -> list[Event]:
        assert self.state is not None
        first = self.state.next_step_index
        steps = tuple(
            StepResult(index=first + offset, name=f"step-{first + offset}", kind=StepKind.RUN, output=output)
            for offset, output in enumerate(outputs)
        )
        return self.apply(
            ReportDelivery(
                run_id=self.run_id,
                delivery_id=f"{self.run_id}/{self.deliveries}",
                attempt=self.attempt,
                now_ms=now,
                steps=steps,
                outcome=outcome,
            )
        )

    def fire(self, step_index: int, *, now: int) -> list[Event]:
        return self.apply(FireTimer(run_id=self.run_id, step_index=step_index, now_ms=now))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[QueryStore]:
    store = QueryStore(tmp_path / "nested" / "stepstream.db")  # the directory is created on demand
    yield store
    store.close()


def row(store: QueryStore, run_id: str = "run_A") -> RunRow:
    found = store.get_run(run_id)
    assert found is not None, f"no row for {run_id}"
    return found


# ---------------------------------------------------------------------------------------------
# The run row, as a run moves through its life


def test_a_started_run_is_running_with_its_payload_as_a_json_value(store: QueryStore) -> None:
    run = Run()

    store.apply(run.events)

    assert row(store) == RunRow(
        run_id="run_A",
        workflow="orders",
        url="http://app.local/workflows/orders",
        status="running",
        label="nightly",
        payload={"order": 42, "items": ["a", "b"]},
        output=None,
        error=None,
        steps=0,
        wake_at_ms=None,
        created_at_ms=T0,
        updated_at_ms=T0,
        last_seq=2,
    )


def test_an_unknown_run_has_no_row(store: QueryStore) -> None:
    store.apply(Run().events)

    assert store.get_run("run_B") is None
    assert store.history("run_B") == []


def test_a_run_goes_running_sleeping_running_completed(store: QueryStore) -> None:
    run = Run()
    store.apply(run.events)

    store.apply(
        run.report(SleepFor(index=1, name="nap", duration_ms=5_000), outputs=('{"charge":"ch_1"}',), now=T0 + 10)
    )
    sleeping = row(store)
    assert (sleeping.status, sleeping.steps, sleeping.wake_at_ms) == ("sleeping", 1, T0 + 5_010)
    assert sleeping.updated_at_ms == T0 + 10

    store.apply(run.fire(1, now=T0 + 5_010))
    awake = row(store)
    assert (awake.status, awake.steps, awake.wake_at_ms) == ("running", 2, None)

    store.apply(run.report(Complete(output='{"shipped":true}'), outputs=('"T-1"', "3"), now=T0 + 6_000))
    done = row(store)
    assert (done.status, done.steps, done.wake_at_ms) == ("completed", 4, None)
    assert done.output == {"shipped": True}
    assert done.error is None
    assert done.created_at_ms == T0
    assert done.updated_at_ms == T0 + 6_000
    assert run.state is not None
    assert done.last_seq == run.state.seq


def test_a_sleep_until_shows_its_wake_time(store: QueryStore) -> None:
    run = Run()
    run.report(SleepUntil(index=0, name="monday", wake_at_ms=T0 + 86_400_000), now=T0 + 1)

    store.apply(run.events)

    assert (row(store).status, row(store).wake_at_ms, row(store).steps) == ("sleeping", T0 + 86_400_000, 0)


def test_a_run_that_fails_for_good_shows_the_error(store: QueryStore) -> None:
    run = Run()
    run.report(Continue(), outputs=("1",), now=T0 + 1)
    run.report(Fail(error=ErrorInfo(type="CardDeclined", message="declined"), retryable=False), now=T0 + 2)
    assert isinstance(run.events[-1], RunFailed)

    store.apply(run.events)

    failed = row(store)
    assert failed.status == "failed"
    assert failed.error == {"type": "CardDeclined", "message": "declined"}
    assert failed.output is None
    assert failed.steps == 1


def test_a_failed_attempt_that_will_be_retried_keeps_the_run_running_and_shows_the_last_error(
    store: QueryStore,
) -> None:
    run = Run()
    events = run.report(Fail(error=BOOM, retryable=True), now=T0 + 1)
    assert [type(event) for event in events] == [StepFailed, StepScheduled]

    store.apply(run.events)

    assert row(store).status == "running"
    assert row(store).error == {"type": "ValueError", "message": "boom"}


def test_a_run_that_completes_after_a_failed_attempt_clears_the_error(store: QueryStore) -> None:
    run = Run()
    run.report(Fail(error=BOOM, retryable=True), now=T0 + 1)
    run.report(Complete(output="null"), now=T0 + 2_000)

    store.apply(run.events)

    assert row(store).status == "completed"
    assert row(store).error is None
    assert row(store).output is None


def test_a_run_that_runs_out_of_retries_fails_with_the_last_error(store: QueryStore) -> None:
    run = Run()
    run.report(Fail(error=BOOM, retryable=True), now=T0 + 1)
    run.report(Fail(error=BOOM, retryable=True), now=T0 + 2_000)  # DEFAULTS allow one retry

    store.apply(run.events)

    failed = row(store)
    assert failed.status == "failed"
    assert failed.error is not None
    assert failed.error["type"] == "ValueError"
    assert failed.error["message"].startswith("boom")


def test_events_applied_one_batch_at_a_time_give_the_same_row_as_all_at_once(tmp_path: Path) -> None:
    run = Run()
    run.report(SleepFor(index=1, name="nap", duration_ms=10), outputs=("1",), now=T0 + 1)
    run.fire(1, now=T0 + 11)
    run.report(Fail(error=BOOM, retryable=True), now=T0 + 12)
    run.report(Complete(output="[1]"), outputs=("2",), now=T0 + 2_000)

    with closing(QueryStore(":memory:")) as together, closing(QueryStore(tmp_path / "b.db")) as one_by_one:
        together.apply(run.events)
        for event in run.events:
            one_by_one.apply([event])

        assert row(together) == row(one_by_one)
        assert together.history("run_A") == one_by_one.history("run_A")


# ---------------------------------------------------------------------------------------------
# Idempotent by (run_id, seq)


def completed_run() -> Run:
    run = Run()
    run.report(SleepFor(index=1, name="nap", duration_ms=10), outputs=("1",), now=T0 + 1)
    run.fire(1, now=T0 + 11)
    run.report(Complete(output='"done"'), outputs=("2",), now=T0 + 20)
    return run


def test_applying_the_same_events_again_changes_nothing(store: QueryStore) -> None:
    run = completed_run()
    store.apply(run.events)
    before, history = row(store), store.history("run_A")

    store.apply(run.events)
    store.apply(run.events[2:5])

    assert row(store) == before
    assert store.history("run_A") == history
    assert len(history) == len(run.events)


def test_an_older_event_applied_after_a_newer_one_does_not_move_the_row_back(store: QueryStore) -> None:
    run = completed_run()
    store.apply(run.events)
    before = row(store)
    sleep_started = next(event for event in run.events if isinstance(event, SleepStarted))

    store.apply([sleep_started])

    assert row(store) == before
    assert row(store).status == "completed"


def test_an_older_event_seen_for_the_first_time_after_a_newer_one_does_not_move_the_row_back(
    store: QueryStore,
) -> None:
    run = completed_run()
    sleep_started = next(event for event in run.events if isinstance(event, SleepStarted))
    store.apply([event for event in run.events if event is not sleep_started])
    before = row(store)

    store.apply([sleep_started])

    assert row(store) == before
    assert (row(store).status, row(store).wake_at_ms) == ("completed", None)
    assert [event["seq"] for event in store.history("run_A")] == list(range(1, len(run.events) + 1))


def test_an_event_with_an_old_seq_but_new_content_is_ignored(store: QueryStore) -> None:
    run = completed_run()
    store.apply(run.events)
    before, history = row(store), store.history("run_A")
    last = run.events[-1]
    assert isinstance(last, RunCompleted)

    store.apply([RunFailed(run_id="run_A", seq=last.seq, at_ms=last.at_ms + 1, error=BOOM)])

    assert row(store) == before
    assert store.history("run_A") == history


def test_a_second_run_started_with_the_same_id_does_not_replace_the_first(store: QueryStore) -> None:
    store.apply(Run(workflow="orders").events)

    store.apply(Run(workflow="refunds").events)

    assert row(store).workflow == "orders"


def test_a_failing_batch_is_rolled_back_entirely(store: QueryStore) -> None:
    run = Run()
    good = run.events
    bad = StepCompleted(
        run_id="run_A", seq=3, at_ms=T0, step_index=0, name="x", kind=StepKind.RUN, output="{not json", delivery_id=""
    )

    with pytest.raises(ValueError, match="Expecting"):  # the bad output cannot be stored as a JSON value
        store.apply([*good, bad])

    assert store.get_run("run_A") is None
    assert store.history("run_A") == []
    store.apply(good)  # and the store is still usable
    assert row(store).status == "running"


# ---------------------------------------------------------------------------------------------
# history


def test_history_returns_the_events_in_seq_order_with_json_values(store: QueryStore) -> None:
    run = completed_run()
    store.apply(list(reversed(run.events[2:])))  # out of order; the row ignores the stale ones...
    store.apply(run.events[:2])

    history = store.history("run_A")

    assert [event["seq"] for event in history] == list(range(1, len(run.events) + 1))  # ...history does not
    assert [event["type"] for event in history] == [type(event).__name__ for event in run.events]
    assert history == [event_to_dict(event) for event in run.events]
    started, completed = history[0], history[-1]
    assert started["payload"] == {"order": 42, "items": ["a", "b"]}
    assert started["headers"] == {"x-tenant": "<redacted>"}  # names shown, values (often credentials) not
    assert completed["output"] == "done"
    steps = [event for event in history if event["type"] == "StepCompleted"]
    assert [(step["step_index"], step["kind"], step["output"]) for step in steps] == [
        (0, "run", 1),
        (1, "sleep", None),
        (2, "run", 2),
    ]


def test_history_after_seq_returns_only_later_events(store: QueryStore) -> None:
    run = completed_run()
    store.apply(run.events)

    assert [event["seq"] for event in store.history("run_A", after_seq=3)] == list(range(4, len(run.events) + 1))
    assert store.history("run_A", after_seq=len(run.events)) == []
    assert len(store.history("run_A", after_seq=0)) == len(run.events)


def test_history_keeps_runs_apart(store: QueryStore) -> None:
    first, second = Run("run_A"), Run("run_B")
    second.report(Complete(output="2"), now=T0 + 1)
    store.apply([*first.events, *second.events])

    assert {event["run_id"] for event in store.history("run_A")} == {"run_A"}
    assert [event["type"] for event in store.history("run_B")] == [
        "RunStarted",
        "StepScheduled",
        "RunCompleted",
    ]


def test_event_to_dict_writes_errors_and_kinds_as_plain_data() -> None:
    failed = StepFailed(
        run_id="r", seq=3, at_ms=T0, step_index=0, name=None, delivery_id="r/1", attempt=1, error=BOOM, retry_at_ms=None
    )
    sleep = SleepStarted(run_id="r", seq=4, at_ms=T0, step_index=0, name="nap", kind=StepKind.SLEEP, wake_at_ms=T0 + 1)
    started = RunStarted(
        run_id="r",
        seq=1,
        at_ms=T0,
        workflow="w",
        url="http://x",
        payload='"text payload"',
        headers=(),
        label=None,
        retries=0,
        retry_base_ms=0,
    )

    assert event_to_dict(failed)["error"] == {"type": "ValueError", "message": "boom"}
    assert event_to_dict(sleep)["kind"] == "sleep"
    assert type(event_to_dict(sleep)["kind"]) is str
    assert event_to_dict(started)["payload"] == "text payload"
    assert event_to_dict(started)["headers"] == {}
    assert event_to_dict(started)["type"] == "RunStarted"


# ---------------------------------------------------------------------------------------------
# list_runs


def many_runs(store: QueryStore) -> list[Run]:
    """25 runs: pairs and triples share a created_at_ms; statuses, workflows and labels vary."""
    runs: list[Run] = []
    for number in range(25):
        run = Run(
            f"run_{number:02d}",
            now=T0 + (number // 3) * 1_000,
            workflow="orders" if number % 2 else "refunds",
            label="nightly" if number % 5 == 0 else None,
        )
        if number % 3 == 1:
            run.report(Complete(output=str(number)), now=T0 + 100_000)
        elif number % 3 == 2:
            run.report(SleepFor(index=0, name="nap", duration_ms=1), now=T0 + 100_000)
        runs.append(run)
    # Apply in a scrambled order: the listing must not depend on arrival.
    for run in runs[::2] + runs[1::2]:
        store.apply(run.events)
    return runs


def newest_first(runs: list[Run]) -> list[str]:
    created = {run.run_id: run.events[0].at_ms for run in runs}
    return sorted(created, key=lambda run_id: (created[run_id], run_id), reverse=True)


def test_list_runs_is_newest_first_with_ties_by_run_id(store: QueryStore) -> None:
    runs = many_runs(store)

    listed = store.list_runs(limit=100)

    assert [found.run_id for found in listed] == newest_first(runs)
    assert [found.run_id for found in listed][:3] == ["run_24", "run_23", "run_22"]


def test_list_runs_respects_the_limit(store: QueryStore) -> None:
    many_runs(store)

    assert len(store.list_runs(limit=7)) == 7
    assert len(store.list_runs()) == 25  # the default limit, 50, is more than there are


@pytest.mark.parametrize("limit", [1, 2, 3, 4, 7, 10, 24, 25])
def test_paging_with_before_visits_every_run_once_in_order(store: QueryStore, limit: int) -> None:
    runs = many_runs(store)
    seen: list[str] = []
    before: tuple[int, str] | None = None

    for _ in range(30):
        page = store.list_runs(limit=limit, before=before)
        assert len(page) <= limit
        if not page:
            break
        seen.extend(found.run_id for found in page)
        before = (page[-1].created_at_ms, page[-1].run_id)

    assert seen == newest_first(runs)  # no overlap, no gap


def test_paging_continues_within_a_group_of_equal_created_times(store: QueryStore) -> None:
    many_runs(store)  # run_21, run_22 and run_23 share created_at_ms
    run_23 = row(store, "run_23")

    page = store.list_runs(limit=2, before=(run_23.created_at_ms, "run_23"))

    assert [found.run_id for found in page] == ["run_22", "run_21"]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"status": "completed"}, lambda number: number % 3 == 1),
        ({"status": "sleeping"}, lambda number: number % 3 == 2),
        ({"status": "running"}, lambda number: number % 3 == 0),
        ({"status": "failed"}, lambda number: False),
        ({"workflow": "orders"}, lambda number: number % 2 == 1),
        ({"label": "nightly"}, lambda number: number % 5 == 0),
        ({"status": "completed", "workflow": "refunds"}, lambda number: number % 3 == 1 and number % 2 == 0),
        ({"workflow": "orders", "label": "nightly"}, lambda number: number % 2 == 1 and number % 5 == 0),
    ],
    ids=["completed", "sleeping", "running", "failed", "workflow", "label", "status+workflow", "workflow+label"],
)
def test_list_runs_filters(store: QueryStore, filters: dict[str, str], expected: Callable[[int], bool]) -> None:
    runs = many_runs(store)
    wanted = [run for number, run in enumerate(runs) if expected(number)]

    listed = store.list_runs(
        status=filters.get("status"), workflow=filters.get("workflow"), label=filters.get("label"), limit=100
    )

    assert [found.run_id for found in listed] == newest_first(wanted)
    for found in listed:
        for column, value in filters.items():
            assert getattr(found, column) == value


def test_paging_a_filtered_list_stays_filtered_and_complete(store: QueryStore) -> None:
    runs = many_runs(store)
    wanted = newest_first([run for number, run in enumerate(runs) if number % 2 == 1])
    seen: list[str] = []
    before: tuple[int, str] | None = None

    while page := store.list_runs(workflow="orders", limit=4, before=before):
        seen.extend(found.run_id for found in page)
        before = (page[-1].created_at_ms, page[-1].run_id)
        assert len(seen) <= len(wanted)

    assert seen == wanted


def test_list_runs_of_an_empty_store_is_empty() -> None:
    with closing(QueryStore(":memory:")) as store:
        assert store.list_runs() == []
        assert store.list_runs(status="running", before=(T0, "run_x")) == []


def test_a_reopened_store_keeps_its_runs_and_still_ignores_repeats(tmp_path: Path) -> None:
    run = completed_run()
    with closing(QueryStore(tmp_path / "q.db")) as first:
        first.apply(run.events)
        before, history = row(first), first.history("run_A")

    with closing(QueryStore(tmp_path / "q.db")) as second:
        second.apply(run.events)

        assert row(second) == before
        assert second.history("run_A") == history
