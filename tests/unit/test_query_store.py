"""The query store, given → when → then: the run rows and histories the api serves, built from events."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import pytest

from stepstream.api.indexer import index
from stepstream.core import (
    CallSpec,
    CallStarted,
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
    FireTimer,
    Outcome,
    PendingCall,
    PendingInvoke,
    PendingSleep,
    PendingWait,
    PlanCall,
    PlanInvoke,
    PlannedStep,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    ReceiveEvent,
    RecoverRun,
    Recovery,
    Rejected,
    ReportCall,
    ReportDelivery,
    ReportNotify,
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
from stepstream.store import HistoryPage, QueryStore, RunRow, StepRow, WaiterRow, event_to_dict, open_query_store
from stepstream.store import history as history_module
from stepstream.store.rows import RUN_STATUSES

T0 = 1_700_000_000_000
DEFAULTS = Defaults(retries=1, retry_base_ms=1_000, retry_max_ms=60_000)
BOOM = ErrorInfo(type="ValueError", message="boom")


class Run:
    """A run driven through ``decide``: every command must be accepted; its events pile up in order,
    and ``states`` holds the core's state after each of them, to compare the store with."""

    def __init__(
        self,
        run_id: str = "run_A",
        *,
        now: int = T0,
        workflow: str = "orders",
        label: str | None = "nightly",
        payload: str = '{"order":42,"items":["a","b"]}',
        parent_run_id: str | None = None,
        not_before_ms: int | None = None,
    ) -> None:
        self.run_id = run_id
        self.state: RunState | None = None
        self.events: list[Event] = []
        self.states: list[RunState] = []
        self.apply(
            TriggerRun(
                run_id=run_id,
                workflow=workflow,
                url=f"http://app.local/workflows/{workflow}",
                payload=payload,
                now_ms=now,
                headers=(("x-tenant", "acme"),),
                label=label,
                parent_run_id=parent_run_id,
                parent_step_index=0 if parent_run_id else None,
                depth=1 if parent_run_id else 0,
                not_before_ms=not_before_ms,
            )
        )

    @property
    def current(self) -> RunState:
        assert self.state is not None
        return self.state

    def apply(self, command: Command) -> list[Event]:
        decision = decide(self.state, command, DEFAULTS)
        assert not isinstance(decision, Rejected), decision.reason
        for event in decision:
            self.state = evolve(self.state, event)
            self.states.append(self.state)
        self.events.extend(decision)
        return decision

    def report(self, outcome: Outcome, *, outputs: tuple[str, ...] = (), now: int = T0) -> list[Event]:
        """The replay delivery in flight reports ``outputs`` as run steps from the first open index."""
        replay = next(delivery for delivery in self.current.in_flight if not delivery.execute_only)
        first = self.current.first_open_index
        steps = tuple(
            StepResult(index=first + offset, name=f"step-{first + offset}", kind=StepKind.RUN, output=output)
            for offset, output in enumerate(outputs)
        )
        return self.apply(
            ReportDelivery(
                run_id=self.run_id,
                delivery_id=replay.delivery_id,
                attempt=replay.attempt,
                now_ms=now,
                steps=steps,
                outcome=outcome,
            )
        )

    def suspend(self, *plans: PlannedStep, now: int = T0) -> list[Event]:
        return self.report(Suspend(steps=plans), now=now)

    def branch(self, index: int, output: str | None, *, now: int = T0) -> list[Event]:
        """The delivery of parallel run step ``index`` reports its result, or fails (output None)."""
        delivery = next(d for d in self.current.in_flight if d.execute_only and d.step_index == index)
        result = StepResult(index=index, name=f"branch-{index}", kind=StepKind.RUN, output=output or "null")
        return self.apply(
            ReportDelivery(
                run_id=self.run_id,
                delivery_id=delivery.delivery_id,
                attempt=delivery.attempt,
                now_ms=now,
                steps=() if output is None else (result,),
                outcome=Fail(error=BOOM, retryable=True) if output is None else Continue(),
            )
        )

    def fire(self, step_index: int, *, now: int) -> list[Event]:
        return self.apply(FireTimer(run_id=self.run_id, step_index=step_index, now_ms=now))

    def answer_call(self, index: int, status: int, body: str, *, now: int = T0) -> list[Event]:
        pending = self.current.pending(index)
        assert isinstance(pending, PendingCall)
        return self.apply(
            ReportCall(
                run_id=self.run_id,
                step_index=index,
                attempt=pending.attempt,
                now_ms=now,
                status=status,
                headers=(("set-cookie", "session=secret"),),
                body=body,
            )
        )

    def receive(self, index: int, event_id: str, data: str, *, now: int = T0) -> list[Event]:
        return self.apply(ReceiveEvent(run_id=self.run_id, step_index=index, event_id=event_id, data=data, now_ms=now))

    def notified(self, index: int, run_ids: tuple[str, ...], *, now: int = T0) -> list[Event]:
        return self.apply(ReportNotify(run_id=self.run_id, step_index=index, notified=run_ids, now_ms=now))

    def child_finished(self, index: int, output: str, *, now: int = T0) -> list[Event]:
        pending = self.current.pending(index)
        assert isinstance(pending, PendingInvoke)
        return self.apply(
            ChildFinished(
                run_id=self.run_id,
                step_index=index,
                child_run_id=pending.child_run_id,
                status="completed",
                output=output,
                error=None,
                now_ms=now,
            )
        )

    def fail(self, *, now: int = T0) -> list[Event]:
        return self.report(Fail(error=ErrorInfo(type="CardDeclined", message="declined"), retryable=False), now=now)

    def cancel(self, reason: str | None = "not needed", *, now: int = T0) -> list[Event]:
        return self.apply(CancelRun(run_id=self.run_id, reason=reason, now_ms=now))

    def recover(self, action: Recovery, *, now: int = T0) -> list[Event]:
        return self.apply(RecoverRun(run_id=self.run_id, action=action, now_ms=now))


def call_spec(**changes: Any) -> CallSpec:
    values: dict[str, Any] = {
        "method": "POST",
        "url": "https://api.example.com/charge",
        "headers": (("authorization", "Bearer sk_live_123"),),
        "body": '{"amount":5}',
        "timeout_ms": 10_000,
        "retries": 2,
    }
    return CallSpec(**{**values, **changes})


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QueryStore]:
    """Every test of the store, on SQLite and on a real PostgreSQL server (tests/postgres.py)."""
    if request.param == "postgresql":
        store = open_query_store(request.getfixturevalue("postgres_url"))
    else:
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
    run.fail(now=T0 + 2)
    assert any(isinstance(event, RunFailed) for event in run.events)

    store.apply(run.events)

    failed = row(store)
    assert failed.status == "failed"
    assert failed.error == {"type": "CardDeclined", "message": "declined"}
    assert failed.output is None
    assert failed.steps == 1
    assert failed.dead_letter is True


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


def asdict_reference(event: Event) -> dict[str, Any]:
    """An event as the history showed it when ``event_to_dict`` began with ``dataclasses.asdict``."""

    def plain(value: Any) -> Any:
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        return value

    data = plain(dataclasses.asdict(event))
    return {"type": type(event).__name__, **history_module._shown(data)}


def test_event_to_dict_gives_what_asdict_gave_for_every_event_of_every_scenario() -> None:
    events = [event for scenario in SCENARIOS.values() for event in scenario().events]

    assert {type(event).__name__ for event in events} >= {"RunStarted", "CallStarted", "StepFailed", "InvokeStarted"}
    for event in events:
        assert event_to_dict(event) == asdict_reference(event), type(event).__name__
        assert json.dumps(event_to_dict(event)) == json.dumps(asdict_reference(event))


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


def test_a_read_does_not_wait_for_the_indexer_to_finish_writing_and_sees_what_was_committed(
    store: QueryStore,
) -> None:
    store.apply(Run("run_A").events)
    writing, release = threading.Event(), threading.Event()

    def batch() -> Iterator[Event]:  # a batch the indexer is in the middle of applying
        yield from Run("run_B").events
        writing.set()
        release.wait(timeout=10)

    writer = threading.Thread(target=store.apply, args=(batch(),))
    writer.start()
    try:
        assert writing.wait(timeout=10)
        during = (store.get_run("run_A"), store.get_run("run_B"), store.history_page("run_B").events)
    finally:
        release.set()
        writer.join()

    assert during[0] is not None
    assert during[1:] == (None, [])  # not committed yet: not shown
    assert row(store, "run_B").status == "running"


def test_a_history_page_holds_the_run_its_events_after_a_seq_and_the_type_of_its_last_event(
    store: QueryStore,
) -> None:
    run = completed_run()
    store.apply(run.events)

    page = store.history_page("run_A", after_seq=2, limit=3)
    rest = store.history_page("run_A", after_seq=5)

    assert page.run == row(store)
    assert [event["seq"] for event in page.events] == [3, 4, 5]
    assert page.last_type == "RunCompleted"
    assert page.settled
    assert [event["seq"] for event in rest.events] == list(range(6, len(run.events) + 1))
    assert store.history_page("run_B") == HistoryPage(run=None, events=[], last_type=None)
    assert not store.history_page("run_B").settled


# ---------------------------------------------------------------------------------------------
# Every event kind: after each event, the row, the steps and the waiters agree with the core's state


def sleep_then_complete() -> Run:
    return completed_run()


def parallel_steps() -> Run:
    run = Run()
    run.suspend(
        PlanRun(index=0, name="a"),
        PlanRun(index=1, name="b"),
        PlanSleep(index=2, name="nap", kind=StepKind.SLEEP, duration_ms=1_000),
        now=T0 + 1,
    )
    run.branch(0, '"A"', now=T0 + 2)
    run.branch(1, None, now=T0 + 3)  # fails; retried (DEFAULTS allow one retry)
    run.branch(1, '"B"', now=T0 + 1_500)
    run.fire(2, now=T0 + 1_501)
    run.report(Complete(output='"done"'), now=T0 + 1_502)
    return run


def call_retried_then_answered() -> Run:
    run = Run()
    run.suspend(PlanCall(index=0, name="charge", call=call_spec()), now=T0 + 1)
    run.answer_call(0, 503, '"busy"', now=T0 + 2)
    run.answer_call(0, 200, '{"ok":true}', now=T0 + 3_000)
    run.report(Complete(output="1"), now=T0 + 3_001)
    return run


def wait_and_sleep_in_parallel() -> Run:
    run = Run()
    run.suspend(
        PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000),
        PlanSleep(index=1, name="nap", kind=StepKind.SLEEP, duration_ms=10),
        now=T0 + 1,
    )
    run.fire(1, now=T0 + 11)
    run.receive(0, "order-42", '{"approved":true}', now=T0 + 20)
    run.report(Complete(output="null"), now=T0 + 21)
    return run


def wait_times_out_fails_and_restarts() -> Run:
    run = Run()
    run.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=1_000), now=T0 + 1)
    run.fire(0, now=T0 + 1_001)
    run.report(Continue(), outputs=('"x"',), now=T0 + 1_002)
    run.fail(now=T0 + 1_003)
    run.recover(Recovery.RESTART, now=T0 + 5_000)
    run.report(Complete(output="2"), outputs=('"y"',), now=T0 + 5_001)
    return run


def notify_and_invoke() -> Run:
    run = Run()
    run.suspend(
        PlanNotify(index=0, name="tell", event_id="order-42", data='{"paid":true}'),
        PlanInvoke(
            index=1,
            name="refund",
            workflow="refunds",
            url=None,
            payload='{"amount":5}',
            headers=(("authorization", "Bearer child"),),
        ),
        now=T0 + 1,
    )
    run.notified(0, ("run_B", "run_C"), now=T0 + 2)
    run.child_finished(1, '"refunded"', now=T0 + 3)
    run.report(Complete(output="3"), now=T0 + 4)
    return run


def cancelled_while_waiting() -> Run:
    run = Run()
    run.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000), now=T0 + 1)
    run.cancel(now=T0 + 2)
    run.receive(0, "order-42", "1", now=T0 + 3)  # too late: recorded as ignored
    return run


def failed_handled_and_resumed() -> Run:
    run = Run()
    run.report(Continue(), outputs=('"kept"',), now=T0 + 1)
    run.suspend(PlanSleep(index=1, name="nap", kind=StepKind.SLEEP, duration_ms=5), now=T0 + 2)
    run.fire(1, now=T0 + 7)
    run.fail(now=T0 + 8)
    handler = run.current.failure_delivery
    assert handler is not None
    run.apply(
        ReportDelivery(
            run_id=run.run_id,
            delivery_id=handler.delivery_id,
            attempt=handler.attempt,
            now_ms=T0 + 9,
            steps=(),
            outcome=Complete(output="null"),
        )
    )
    run.recover(Recovery.RESUME, now=T0 + 10_000)
    run.report(Complete(output='"fixed"'), now=T0 + 10_001)
    return run


def delayed_then_the_handler_retried() -> Run:
    """Scheduled until its first delivery answers; then failed, its handler failing once before it answers."""
    run = Run(not_before_ms=T0 + 60_000)
    run.report(Continue(), outputs=('"first"',), now=T0 + 60_001)
    run.fail(now=T0 + 60_002)
    for outcome in (Fail(error=BOOM, retryable=True), Complete(output="null")):
        handler = run.current.failure_delivery
        assert handler is not None
        run.apply(
            ReportDelivery(
                run_id=run.run_id,
                delivery_id=handler.delivery_id,
                attempt=handler.attempt,
                now_ms=T0 + 70_000 + handler.attempt * 10_000,
                steps=(),
                outcome=outcome,
            )
        )
    return run


def failed_and_deleted() -> Run:
    run = Run()
    run.fail(now=T0 + 1)
    run.recover(Recovery.DELETE, now=T0 + 2)
    return run


SCENARIOS: dict[str, Callable[[], Run]] = {
    "sleep": sleep_then_complete,
    "parallel": parallel_steps,
    "call": call_retried_then_answered,
    "wait+sleep": wait_and_sleep_in_parallel,
    "timeout+restart": wait_times_out_fails_and_restarts,
    "notify+invoke": notify_and_invoke,
    "cancel": cancelled_while_waiting,
    "resume": failed_handled_and_resumed,
    "delete": failed_and_deleted,
    "delayed+handler": delayed_then_the_handler_retried,
}


def stored_waiters(store: QueryStore, run: Run) -> set[tuple[str, int]]:
    event_ids = {event.event_id for event in run.events if isinstance(event, EventReceived | ReceiveEvent)}
    event_ids |= {p.event_id for state in run.states for p in state.waiting if isinstance(p, PendingWait)}
    return {
        (waiter.event_id, waiter.step_index)
        for event_id in event_ids
        for waiter in store.waiters(event_id)
        if waiter.run_id == run.run_id
    }


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_after_every_event_the_store_agrees_with_the_core(scenario: Callable[[], Run]) -> None:
    run = scenario()

    with closing(QueryStore(":memory:")) as store:
        for event, state in zip(run.events, run.states, strict=True):
            store.apply([event])

            found, steps = row(store, run.run_id), store.steps(run.run_id)
            after = f"after {type(event).__name__} (seq {event.seq})"
            assert found.status == state.status.value, after
            assert found.dead_letter == state.dead_letter, after
            assert found.steps == len(state.steps), after
            completed = {step.index: step.output for step in steps if step.status == "completed"}
            assert completed == {step.index: json.loads(step.output) for step in state.steps}, after
            waits = {(p.event_id, p.step_index) for p in state.waiting if isinstance(p, PendingWait)}
            assert stored_waiters(store, run) == waits, after
            if not state.status.terminal:
                pending = {step.index for step in steps if step.status == "pending"}
                assert pending == {p.step_index for p in state.waiting}, after
                sleeps = [p.wake_at_ms for p in state.waiting if isinstance(p, PendingSleep)]
                if state.status is RunStatus.SCHEDULED:  # when the first delivery is due
                    sleeps = [delivery.not_before_ms for delivery in state.in_flight]
                assert found.wake_at_ms == (min(sleeps) if sleeps else None), after
            else:
                assert found.wake_at_ms is None, after


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_event_kind_is_kept_in_the_history(scenario: Callable[[], Run]) -> None:
    run = scenario()
    with closing(QueryStore(":memory:")) as store:
        store.apply(run.events)

        assert [event["type"] for event in store.history(run.run_id)] == [type(e).__name__ for e in run.events]


def test_a_run_whose_start_is_put_off_is_listed_as_scheduled_until_its_first_answer(store: QueryStore) -> None:
    # given a run triggered to start in a minute, and one triggered now
    later, now = Run("run_later", not_before_ms=T0 + 60_000), Run("run_now")
    store.apply([*later.events, *now.events])
    # then the first is scheduled, with when it starts; the second is running
    assert (row(store, "run_later").status, row(store, "run_later").wake_at_ms) == ("scheduled", T0 + 60_000)
    assert row(store, "run_now").status == "running"
    assert [run.run_id for run in store.list_runs(status="scheduled")] == ["run_later"]
    assert store.count_runs()["scheduled"] == 1
    # when its first delivery answers, it is running like any other
    store.apply(later.report(Continue(), outputs=('"first"',), now=T0 + 60_001))
    assert (row(store, "run_later").status, row(store, "run_later").wake_at_ms) == ("running", None)


def test_the_scenarios_cover_every_event_kind() -> None:
    seen = {type(event).__name__ for scenario in SCENARIOS.values() for event in scenario().events}

    assert seen == {kind.__name__ for kind in get_args(Event)}


def test_a_wait_shows_as_waiting_even_while_a_sleep_is_pending(store: QueryStore) -> None:
    run = Run()
    run.suspend(
        PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000),
        PlanSleep(index=1, name="nap", kind=StepKind.SLEEP, duration_ms=10),
        now=T0 + 1,
    )

    store.apply(run.events)

    assert (row(store).status, row(store).wake_at_ms) == ("waiting", T0 + 11)


# ---------------------------------------------------------------------------------------------
# steps


def test_steps_list_each_step_with_its_kind_status_output_and_times(store: QueryStore) -> None:
    run = Run()
    run.report(Continue(), outputs=('{"charge":"ch_1"}',), now=T0 + 5)
    run.suspend(
        PlanCall(index=1, name="charge", call=call_spec()),
        PlanWait(index=2, name="approval", event_id="order-42", timeout_ms=60_000),
        PlanSleep(index=3, name="nap", kind=StepKind.SLEEP, duration_ms=1_000),
        now=T0 + 10,
    )
    run.answer_call(1, 200, '{"ok":true}', now=T0 + 20)

    store.apply(run.events)

    assert store.steps("run_A") == [
        StepRow(
            index=0,
            name="step-0",
            kind="run",
            status="completed",
            output={"charge": "ch_1"},
            started_at_ms=T0 + 5,
            completed_at_ms=T0 + 5,
            detail={},
        ),
        StepRow(
            index=1,
            name="charge",
            kind="call",
            status="completed",
            output={"status": 200, "headers": {"set-cookie": "session=secret"}, "body": {"ok": True}, "error": None},
            started_at_ms=T0 + 10,
            completed_at_ms=T0 + 20,
            detail={"method": "POST", "url": "https://api.example.com/charge", "attempt": 1},
        ),
        StepRow(
            index=2,
            name="approval",
            kind="wait_for_event",
            status="pending",
            output=None,
            started_at_ms=T0 + 10,
            completed_at_ms=None,
            detail={"event_id": "order-42", "timeout_at_ms": T0 + 60_010},
        ),
        StepRow(
            index=3,
            name="nap",
            kind="sleep",
            status="pending",
            output=None,
            started_at_ms=T0 + 10,
            completed_at_ms=None,
            detail={"wake_at_ms": T0 + 1_010},
        ),
    ]
    assert row(store).status == "waiting"
    assert store.steps("run_B") == []


def test_a_retried_call_shows_its_attempt_and_last_error(store: QueryStore) -> None:
    run = Run()
    run.suspend(PlanCall(index=0, name="charge", call=call_spec()), now=T0 + 1)
    run.answer_call(0, 503, '"busy"', now=T0 + 2)

    store.apply(run.events)

    (call,) = store.steps("run_A")
    assert (call.status, call.detail["attempt"], call.detail["last_error"]) == ("pending", 2, "answered 503")
    assert row(store).status == "running"


def test_a_received_event_completes_the_wait_with_its_data(store: QueryStore) -> None:
    run = Run()
    run.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000), now=T0 + 1)
    run.receive(0, "order-42", '{"approved":true}', now=T0 + 30)

    store.apply(run.events)

    (wait,) = store.steps("run_A")
    assert (wait.name, wait.kind, wait.status) == ("approval", "wait_for_event", "completed")
    assert wait.output == {"timeout": False, "data": {"approved": True}}
    assert (wait.started_at_ms, wait.completed_at_ms) == (T0 + 1, T0 + 30)


def test_a_timed_out_wait_completes_with_timeout_true(store: QueryStore) -> None:
    run = Run()
    run.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=1_000), now=T0 + 1)
    run.fire(0, now=T0 + 1_001)

    store.apply(run.events)

    assert store.steps("run_A")[0].output == {"timeout": True, "data": None}


def test_a_restart_sets_every_step_aside_and_a_resume_only_the_pending_ones(tmp_path: Path) -> None:
    def failed_with_a_pending_branch() -> Run:
        run = Run()
        run.report(Continue(), outputs=('"first"',), now=T0 + 1)
        run.suspend(PlanRun(index=1, name="a"), PlanRun(index=2, name="b"), now=T0 + 2)
        run.branch(1, '"A"', now=T0 + 3)
        run.apply(  # branch 2 fails for good: the run fails with the branch still pending
            ReportDelivery(
                run_id=run.run_id,
                delivery_id=next(d for d in run.current.in_flight if d.step_index == 2).delivery_id,
                attempt=1,
                now_ms=T0 + 4,
                steps=(),
                outcome=Fail(error=BOOM, retryable=False),
            )
        )
        return run

    resumed, restarted = failed_with_a_pending_branch(), failed_with_a_pending_branch()
    resumed.recover(Recovery.RESUME, now=T0 + 10)
    restarted.recover(Recovery.RESTART, now=T0 + 10)

    with closing(QueryStore(tmp_path / "a.db")) as first, closing(QueryStore(tmp_path / "b.db")) as second:
        first.apply(resumed.events)
        second.apply(restarted.events)

        assert [(step.index, step.status) for step in first.steps("run_A")] == [(0, "completed"), (1, "completed")]
        assert second.steps("run_A") == []
        for store in (first, second):
            assert (row(store).status, row(store).error, row(store).dead_letter) == ("running", None, False)


# ---------------------------------------------------------------------------------------------
# waiters


def test_a_waiting_run_is_listed_under_its_event_id_until_the_event_arrives(store: QueryStore) -> None:
    first, second = Run("run_A"), Run("run_B", now=T0 + 5)
    first.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000), now=T0 + 1)
    second.suspend(
        PlanSleep(index=0, name="nap", kind=StepKind.SLEEP, duration_ms=1),
        PlanWait(index=1, name="approval", event_id="order-42", timeout_ms=1_000),
        now=T0 + 6,
    )
    store.apply([*first.events, *second.events])

    assert store.waiters("order-42") == [
        WaiterRow(event_id="order-42", run_id="run_A", step_index=0, timeout_at_ms=T0 + 60_001, since_ms=T0 + 1),
        WaiterRow(event_id="order-42", run_id="run_B", step_index=1, timeout_at_ms=T0 + 1_006, since_ms=T0 + 6),
    ]
    assert store.waiters("order-43") == []

    store.apply(first.receive(0, "order-42", "1", now=T0 + 10))

    assert [waiter.run_id for waiter in store.waiters("order-42")] == ["run_B"]


@pytest.mark.parametrize(
    "end",
    [
        lambda run: run.fire(0, now=T0 + 1_001),
        lambda run: run.cancel(now=T0 + 2),
        lambda run: run.cancel(None, now=T0 + 2),
    ],
    ids=["timed out", "cancelled", "cancelled without a reason"],
)
def test_a_run_stops_waiting_when_the_wait_times_out_or_the_run_is_cancelled(
    store: QueryStore, end: Callable[[Run], list[Event]]
) -> None:
    run = Run()
    run.suspend(PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=1_000), now=T0 + 1)
    store.apply(run.events)
    assert len(store.waiters("order-42")) == 1

    store.apply(end(run))

    assert store.waiters("order-42") == []


def test_a_run_that_fails_while_waiting_stops_waiting(store: QueryStore) -> None:
    run = Run()
    run.suspend(
        PlanWait(index=0, name="approval", event_id="order-42", timeout_ms=60_000),
        PlanRun(index=1, name="charge"),
        now=T0 + 1,
    )
    run.apply(
        ReportDelivery(
            run_id=run.run_id,
            delivery_id=next(d for d in run.current.in_flight if d.step_index == 1).delivery_id,
            attempt=1,
            now_ms=T0 + 2,
            steps=(),
            outcome=Fail(error=BOOM, retryable=False),
        )
    )

    store.apply(run.events)

    assert row(store).status == "failed"
    assert store.waiters("order-42") == []


def test_a_cancelled_run_shows_why(store: QueryStore) -> None:
    run = Run()
    run.cancel("customer changed their mind", now=T0 + 7)

    store.apply(run.events)

    assert (row(store).status, row(store).cancel_reason, row(store).updated_at_ms) == (
        "cancelled",
        "customer changed their mind",
        T0 + 7,
    )


# ---------------------------------------------------------------------------------------------
# The dead-letter list and child runs


def test_a_failed_run_is_in_the_dead_letter_list_until_deleted_from_it(store: QueryStore) -> None:
    failed, completed = Run("run_A"), Run("run_B")
    failed.fail(now=T0 + 1)
    completed.report(Complete(output="1"), now=T0 + 1)
    store.apply([*failed.events, *completed.events])

    assert [found.run_id for found in store.list_runs(dead_letter=True)] == ["run_A"]
    assert [found.run_id for found in store.list_runs(dead_letter=False)] == ["run_B"]

    store.apply(failed.recover(Recovery.DELETE, now=T0 + 2))

    assert store.list_runs(dead_letter=True) == []
    assert (row(store).status, row(store).dead_letter) == ("failed", False)


def test_a_child_run_names_its_parent(store: QueryStore) -> None:
    store.apply(Run("run_A").events)
    store.apply(Run("run_A.0", parent_run_id="run_A").events)

    assert row(store, "run_A.0").parent_run_id == "run_A"
    assert row(store, "run_A").parent_run_id is None
    assert [found.run_id for found in store.list_runs(parent_run_id="run_A")] == ["run_A.0"]


# ---------------------------------------------------------------------------------------------
# History: headers redacted wherever they are, user values inline


def test_headers_are_redacted_at_every_depth_and_user_values_are_shown_as_json(store: QueryStore) -> None:
    run = Run(payload='{"headers":{"mine":"kept"}}')
    run.suspend(
        PlanCall(index=0, name="charge", call=call_spec()),
        PlanInvoke(
            index=1,
            name="refund",
            workflow="refunds",
            url=None,
            payload='{"amount":5}',
            headers=(("authorization", "Bearer child"),),
        ),
        now=T0 + 1,
    )
    store.apply(run.events)

    history = {event["type"]: event for event in store.history("run_A")}
    text = json.dumps(store.history("run_A"))

    for secret in ("acme", "sk_live_123", "Bearer child"):
        assert secret not in text
    assert history["RunStarted"]["headers"] == {"x-tenant": "<redacted>"}
    assert history["RunStarted"]["payload"] == {"headers": {"mine": "kept"}}  # the user's value, untouched
    assert history["CallStarted"]["call"]["headers"] == {"authorization": "<redacted>"}
    assert history["CallStarted"]["call"]["body"] == {"amount": 5}
    assert history["InvokeStarted"]["headers"] == {"x-tenant": "<redacted>", "authorization": "<redacted>"}
    assert history["InvokeStarted"]["payload"] == {"amount": 5}


def test_a_call_body_that_is_not_json_is_shown_as_text() -> None:
    started = CallStarted(
        run_id="r",
        seq=3,
        at_ms=T0,
        step_index=0,
        name="ping",
        call=call_spec(body="plain text", headers=()),
        deadline_ms=T0 + 1,
    )

    assert event_to_dict(started)["call"]["body"] == "plain text"
    assert event_to_dict(started)["call"]["headers"] == {}


def test_notification_data_is_shown_as_json(store: QueryStore) -> None:
    run = Run()
    run.suspend(PlanNotify(index=0, name="tell", event_id="order-42", data='{"paid":true}'), now=T0 + 1)
    run.notified(0, ("run_B",), now=T0 + 2)
    store.apply(run.events)

    history = {event["type"]: event for event in store.history("run_A")}

    assert history["NotifyStarted"]["data"] == {"paid": True}
    assert store.steps("run_A")[0].output == ["run_B"]


# ---------------------------------------------------------------------------------------------
# More filters


def test_list_runs_takes_several_statuses(store: QueryStore) -> None:
    runs = many_runs(store)
    wanted = [run for number, run in enumerate(runs) if number % 3 != 0]

    listed = store.list_runs(status=["completed", "sleeping"], limit=100)

    assert [found.run_id for found in listed] == newest_first(wanted)
    assert store.list_runs(status=[]) == []


def test_list_runs_by_creation_time_includes_the_start_and_excludes_the_end(store: QueryStore) -> None:
    runs = many_runs(store)  # created at T0 + (number // 3) s
    wanted = [run for number, run in enumerate(runs) if 2 <= number // 3 < 5]

    listed = store.list_runs(created_after_ms=T0 + 2_000, created_before_ms=T0 + 5_000, limit=100)

    assert [found.run_id for found in listed] == newest_first(wanted)


def test_every_waiter_is_listed_the_next_to_time_out_first(store: QueryStore) -> None:
    runs = [Run(f"run_{number}", now=T0) for number in range(3)]
    for number, run in enumerate(runs):
        # the later run waits the shorter time: it times out first
        run.suspend(PlanWait(index=0, name="approval", event_id=f"ev-{number}", timeout_ms=60_000 - number * 1_000))
        store.apply(run.events)

    listed = store.all_waiters()

    assert [(waiter.event_id, waiter.run_id) for waiter in listed] == [
        ("ev-2", "run_2"),
        ("ev-1", "run_1"),
        ("ev-0", "run_0"),
    ]
    assert [waiter.event_id for waiter in store.all_waiters(limit=1)] == ["ev-2"]


def test_runs_are_counted_by_status_under_the_list_s_filters(store: QueryStore) -> None:
    many_runs(store)  # number % 3: 0 running, 1 completed, 2 sleeping; odd numbers are orders
    status_of = {0: "running", 1: "completed", 2: "sleeping"}

    def expected(numbers: range | list[int]) -> dict[str, int]:
        counts = dict.fromkeys(RUN_STATUSES, 0)
        for number in numbers:
            counts[status_of[number % 3]] += 1
        return counts

    assert store.count_runs() == expected(range(25))
    assert store.count_runs(workflow="orders") == expected([n for n in range(25) if n % 2])
    assert store.count_runs(label="nightly") == expected([n for n in range(25) if n % 5 == 0])
    assert store.count_runs(created_after_ms=T0 + 2_000, created_before_ms=T0 + 5_000) == expected(range(6, 15))
    assert sum(store.count_runs(workflow="nobody").values()) == 0


# ---------------------------------------------------------------------------------------------
# A store written by an older indexer, and the indexer's batch


def test_a_store_written_by_an_older_indexer_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as old:
        old.executescript(
            """
            CREATE TABLE runs (run_id TEXT PRIMARY KEY, workflow TEXT NOT NULL, url TEXT NOT NULL,
                status TEXT NOT NULL, label TEXT, payload TEXT NOT NULL, output TEXT, error_type TEXT,
                error_message TEXT, steps INTEGER NOT NULL DEFAULT 0, wake_at_ms INTEGER,
                created_at_ms INTEGER NOT NULL, updated_at_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL);
            INSERT INTO runs VALUES ('run_old', 'orders', 'http://x', 'completed', NULL, '1', '2', NULL, NULL,
                1, NULL, 5, 6, 4);
            """
        )
        old.commit()

    with closing(QueryStore(path)) as store:
        old_run = row(store, "run_old")
        assert (old_run.status, old_run.dead_letter, old_run.parent_run_id) == ("completed", False, None)
        run = Run()
        run.fail(now=T0 + 1)
        store.apply(run.events)
        assert row(store).dead_letter is True


def test_the_indexer_skips_an_event_it_cannot_apply_and_keeps_the_rest_of_the_batch(store: QueryStore) -> None:
    run = Run()
    bad = StepCompleted(
        run_id="run_B", seq=1, at_ms=T0, step_index=0, name="x", kind=StepKind.RUN, output="{not", delivery_id=""
    )

    index(store, [bad, *run.events])

    assert row(store).status == "running"
    assert store.history("run_B") == []


# ---------------------------------------------------------------------------------------------
# Retention of the store (STEPSTREAM_QUERY_STORE_RETENTION_MS)


def test_runs_that_ended_before_the_window_are_forgotten_oldest_first_and_the_others_kept(store: QueryStore) -> None:
    # given two runs that completed, one that failed into the dead-letter list, and one still going
    old, newer = completed_run(), Run("run_B", now=T0 + 100)
    newer.report(Complete(output='"done"'), now=T0 + 200)
    failed, going = Run("run_C", now=T0), Run("run_D", now=T0)
    failed.fail(now=T0 + 5)
    for run in (old, newer, failed, going):
        store.apply(run.events)

    # when the runs that ended before T0 + 150 are forgotten, one at a time
    assert store.forget_ended_before(T0 + 150, limit=1) == 1
    assert store.forget_ended_before(T0 + 150, limit=1) == 0

    # then the completed run that ended before it is gone with its steps and history
    assert store.get_run("run_A") is None
    assert store.steps("run_A") == []
    assert store.history("run_A") == []
    # and the later one, the dead-lettered one and the one going are as they were
    assert row(store, "run_B").status == "completed"
    assert row(store, "run_C").dead_letter is True
    assert row(store, "run_D").status == "running"
    assert len(store.history("run_C")) == len(failed.events)
    # and once the window passes the later one too, it goes
    assert store.forget_ended_before(T0 + 1_000) == 1
    assert store.get_run("run_B") is None
