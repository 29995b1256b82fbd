"""The CLI's api commands, run in-process against the real app (a query store the indexer's code path
filled, a publisher that records): what they print, what they publish, and their exit codes."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import httpx
import pytest

from stepstream import cli, client
from stepstream.api.auth import TokenAuth
from stepstream.api.changes import RunChanges
from stepstream.api.indexer import index
from stepstream.avro import CancelRequest, NotifyRequest, RecoverRequest, TriggerRequest
from stepstream.cli import output
from stepstream.core import Complete, ErrorInfo, Event, Fail, FlowControl, FlowKeyState, Recovery
from stepstream.history.files import write_export
from stepstream.store import QueryStore, event_to_dict
from stepstream.tokens import parse_tokens
from tests.unit.test_api import (
    CALLER,
    NOW,
    T0,
    FakePublisher,
    TestClient,
    add,
    completed,
    failed,
    fleet,
    sleeping,
    waiting_run,
)
from tests.unit.test_query_store import SCENARIOS, Run


@dataclass
class Result:
    code: int
    out: str
    err: str


Cli = Callable[..., Result]


@pytest.fixture(autouse=True)
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times print in the machine's zone; the tests read them in UTC."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture(autouse=True)
def no_colour_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """rich reads these: a developer's FORCE_COLOR would colour the tables the tests read as a pipe."""
    for name in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def run_cli(api: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``run_cli("runs", "list")``: the CLI's requests go to the app in this process."""
    monkeypatch.setenv("STEPSTREAM_API_URL", "http://api")

    def request(method: str, url: str, *, timeout: Any = None, **options: Any) -> httpx.Response:
        return api.request(method, url, **options)

    @contextmanager
    def stream(method: str, url: str, *, timeout: Any = None, **options: Any) -> Iterator[httpx.Response]:
        """The app's streamed answer, whole: in-process, a response arrives once it has ended (the
        client's read timeout bounding how long that may take)."""
        read = timeout.read if isinstance(timeout, httpx.Timeout) else timeout
        try:
            yield api.loop.run_until_complete(asyncio.wait_for(api.client.request(method, url, **options), read))
        except TimeoutError:
            raise httpx.ReadTimeout("no answer in time") from None

    monkeypatch.setattr(httpx, "request", request)
    monkeypatch.setattr(httpx, "stream", stream)

    def run(*argv: str) -> Result:
        capsys.readouterr()
        try:
            cli.main(list(argv))
            code = 0
        except SystemExit as exit:
            code = int(exit.code or 0)
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


# ---------------------------------------------------------------------------------------------
# trigger


def test_trigger_sends_every_option_and_prints_the_run_id(run_cli: Cli, published: FakePublisher) -> None:
    result = run_cli(
        "trigger",
        "orders",
        "--payload",
        '{"order": 42}',
        "--run-id",
        "order-42",
        "--label",
        "nightly",
        "--retries",
        "2",
        "--retry-delay",
        "1000 * pow(2, retried)",
        "--failure-url",
        "http://app.local/failures",
        "--header",
        "X-Request-Source: cron",
        "--header",
        "x-tenant=acme",
        "--delay",
        "1h30m",
    )

    assert (result.code, result.out) == (0, "order-42\n")
    assert "its first step is due at 2023-11-15 00:43:20" in result.err
    assert published.records == [
        TriggerRequest(
            workflow="orders",
            url="http://app.local/workflows/orders",
            payload='{"order":42}',
            run_id="order-42",
            headers=(("X-Request-Source", "cron"), ("x-tenant", "acme")),
            label="nightly",
            retries=2,
            not_before_ms=NOW + 5_400_000,
            requested_at_ms=NOW,
            retry_delay="1000 * pow(2, retried)",
            failure_url="http://app.local/failures",
        )
    ]


@pytest.mark.parametrize(
    ("not_before", "expected"),
    [
        ("2023-11-15T00:00:00Z", 1_700_006_400_000),
        ("2023-11-15T00:00:00", 1_700_006_400_000),  # no zone: the machine's, UTC in these tests
        (str(NOW + 1_000), NOW + 1_000),
    ],
)
def test_trigger_not_before_takes_a_time(
    run_cli: Cli, published: FakePublisher, not_before: str, expected: int
) -> None:
    assert run_cli("trigger", "orders", "--not-before", not_before).code == 0

    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.not_before_ms == expected


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--delay", "soon"), "stepstream: 422: Expected a duration such as '10s', '5m' or '2h', but got 'soon'"),
        (("--retry-delay", "import os"), "stepstream: 422: retry_delay: Expected a delay rule"),
        (("--payload", "{oops"), "stepstream: --payload is not valid JSON"),
        (("--header", "no separator"), "stepstream: --header: expected 'Name: value', but got 'no separator'"),
        (("--not-before", "next week"), "stepstream: --not-before: expected epoch milliseconds or an ISO-8601 time"),
    ],
)
def test_a_bad_trigger_exits_2_with_the_reason(
    run_cli: Cli, published: FakePublisher, argv: tuple[str, ...], expected: str
) -> None:
    result = run_cli("trigger", "orders", *argv)

    assert result.code == 2
    assert result.err.startswith(expected), result.err
    assert published.records == []


def test_a_trigger_with_an_existing_run_id_says_so_and_starts_nothing(
    run_cli: Cli, store: QueryStore, published: FakePublisher
) -> None:
    add(store, completed("order-42"))

    result = run_cli("trigger", "orders", "--run-id", "order-42")

    assert result.code == 0  # triggers are idempotent: sending one again is not an error
    assert result.out.strip() == "order-42"
    assert "run order-42 already exists (completed): nothing new was started" in result.err
    assert published.records == []


def test_an_api_that_cannot_be_reached_exits_2(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("STEPSTREAM_API_URL", "http://127.0.0.1:9")

    def refuse(method: str, url: str, **options: Any) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    monkeypatch.setattr(httpx, "request", refuse)

    with pytest.raises(SystemExit) as exited:
        cli.main(["runs", "list"])

    assert exited.value.code == 2
    assert "cannot reach the api at http://127.0.0.1:9" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# notify, waiters


def test_notify_prints_nothing_and_explains_when_nobody_waits(run_cli: Cli, published: FakePublisher) -> None:
    result = run_cli("notify", "order-42", "--data", '{"approved": true}')

    assert (result.code, result.out) == (0, "")
    assert result.err == (
        "No run is waiting on event 'order-42' now; "
        "the notification is kept for 60 s for runs that start waiting on it\n"
    )
    assert published.records == [
        NotifyRequest(event_id="order-42", data='{"approved":true}', requested_at_ms=NOW, actor=CALLER)
    ]


def test_notify_prints_the_runs_that_were_waiting(run_cli: Cli, store: QueryStore) -> None:
    add(store, waiting_run("run_A"), waiting_run("run_B", now=T0 + 1))

    result = run_cli("notify", "order-42")

    assert (result.code, result.out, result.err) == (0, "run_A\nrun_B\n", "")


def test_an_event_id_with_a_slash_reaches_the_api_whole(run_cli: Cli, published: FakePublisher) -> None:
    assert run_cli("notify", "orders/42?x").code == 0

    assert [record.event_id for record in published.records if isinstance(record, NotifyRequest)] == ["orders/42?x"]


def test_notify_refuses_data_that_is_not_json(run_cli: Cli, published: FakePublisher) -> None:
    result = run_cli("notify", "order-42", "--data", "approved")

    assert result.code == 2
    assert result.err.startswith("stepstream: --data is not valid JSON")
    assert published.records == []


def test_waiters_lists_who_waits(run_cli: Cli, store: QueryStore) -> None:
    add(store, waiting_run("run_A"))

    assert run_cli("waiters", "order-42").out.splitlines() == [
        "RUN    STEP  WAITING SINCE        TIMES OUT",
        "run_A     0  2023-11-14 22:13:20  2023-11-15 22:13:20",
    ]
    nobody = run_cli("waiters", "nobody")
    assert (nobody.code, nobody.out, nobody.err) == (0, "", "no run is waiting on event 'nobody'\n")


# ---------------------------------------------------------------------------------------------
# cancel


def test_cancel_a_run(run_cli: Cli, store: QueryStore, published: FakePublisher) -> None:
    add(store, sleeping("run_A"))

    result = run_cli("cancel", "run_A", "--reason", "not needed")

    assert result.code == 0
    assert "Cancel of run 'run_A' requested" in result.err
    assert published.records == [CancelRequest(run_id="run_A", reason="not needed", requested_at_ms=NOW, actor=CALLER)]


def test_cancelling_an_unknown_or_ended_run_exits_2(run_cli: Cli, store: QueryStore) -> None:
    add(store, completed("run_done"))

    unknown, ended = run_cli("cancel", "run_nope"), run_cli("cancel", "run_done")

    assert (unknown.code, ended.code) == (2, 2)
    assert "404: Expected a known run id, but 'run_nope' is not known (yet)" in unknown.err
    assert "409: Expected a run that has not ended, but run 'run_done' is completed" in ended.err


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--workflow", "refunds"), ["run_6", "run_3"]),
        (("--label", "nightly"), ["run_3", "run_1"]),
        (("--created-before", "2023-11-14T23:13:20Z"), ["run_1"]),
        (("--all",), ["run_6", "run_3", "run_2", "run_1"]),
    ],
)
def test_cancel_by_filter_prints_the_cancelled_runs(
    run_cli: Cli, store: QueryStore, published: FakePublisher, argv: tuple[str, ...], expected: list[str]
) -> None:
    fleet(store)

    result = run_cli("cancel", *argv)

    assert result.code == 0
    assert result.out.split() == expected
    runs, them = ("1 run", "it") if len(expected) == 1 else (f"{len(expected)} runs", "them")
    assert result.err == (
        f"Cancel of {runs} requested: nothing more is scheduled for {them}, and results that arrive later are ignored\n"
    )
    assert [record.run_id for record in published.records if isinstance(record, CancelRequest)] == expected


@pytest.mark.parametrize("argv", [(), ("run_A", "--all"), ("run_A", "--workflow", "orders")])
def test_cancel_needs_a_run_id_or_filters_but_not_both(
    run_cli: Cli, published: FakePublisher, argv: tuple[str, ...]
) -> None:
    result = run_cli("cancel", *argv)

    assert result.code == 2
    assert result.err.startswith("stepstream: give a run id")
    assert published.records == []


# ---------------------------------------------------------------------------------------------
# runs, deadletter


def test_runs_list_filters_by_status_and_time(run_cli: Cli, store: QueryStore) -> None:
    fleet(store)

    result = run_cli("runs", "list", "--status", "sleeping", "--status", "failed", "--since", "2023-11-15T00:13:20Z")

    assert result.code == 0
    assert result.out.splitlines() == [  # columns as wide as the page's longest values
        "RUN    WORKFLOW  STATUS    STEPS  CREATED",
        "run_6  refunds   sleeping      0  2023-11-15 03:13:20",
        "run_5  orders    failed        0  2023-11-15 02:13:20",
        "run_3  refunds   sleeping      0  2023-11-15 00:13:20",
    ]


def test_a_run_waiting_out_its_delay_is_listed_as_scheduled_not_running(run_cli: Cli, store: QueryStore) -> None:
    # given a run triggered to start in an hour, beside one started now
    add(store, Run("run_later", now=T0, not_before_ms=T0 + 3_600_000))
    add(store, Run("run_now", now=T0 + 1))

    listed = run_cli("runs", "list")
    scheduled = run_cli("runs", "list", "--status", "scheduled")

    assert [line.split()[:3] for line in listed.out.splitlines()[1:]] == [
        ["run_now", "orders", "running"],
        ["run_later", "orders", "scheduled"],
    ]
    assert [line.split()[0] for line in scheduled.out.splitlines()[1:]] == ["run_later"]


def test_runs_list_pages_with_a_cursor(run_cli: Cli, store: QueryStore) -> None:
    fleet(store)

    first = run_cli("runs", "list", "--limit", "4")
    cursor = first.err.split("--cursor ")[1].strip()
    second = run_cli("runs", "list", "--limit", "4", "--cursor", cursor)

    assert [line.split()[0] for line in first.out.splitlines()[1:] + second.out.splitlines()[1:]] == [
        "run_6",
        "run_5",
        "run_4",
        "run_3",
        "run_2",
        "run_1",
    ]
    assert "--cursor" not in second.err


def test_runs_list_with_an_unknown_status_is_a_usage_error(run_cli: Cli) -> None:
    assert run_cli("runs", "list", "--status", "asleep").code == 2


def test_runs_steps_prints_a_table_of_the_steps(run_cli: Cli, store: QueryStore) -> None:
    run = waiting_run("run_A")
    add(store, run)

    result = run_cli("runs", "steps", "run_A")

    assert result.out.splitlines() == [
        "STEP  KIND            STATUS   NAME        DETAIL",
        "   0  wait_for_event  pending  'approval'  waits for event 'order-42' until 2023-11-15 22:13:20",
    ]
    assert run_cli("runs", "steps", "run_nope").code == 2


def test_deadletter_list_shows_the_failed_runs_with_their_errors(run_cli: Cli, store: QueryStore) -> None:
    fleet(store)

    result = run_cli("deadletter", "list")

    assert result.out.splitlines() == [
        "RUN    WORKFLOW  STATUS  STEPS  CREATED              ERROR",
        "run_5  orders    failed      0  2023-11-15 02:13:20  CardDeclined: declined",
    ]


@pytest.mark.parametrize("action", list(Recovery))
def test_deadletter_actions_publish_a_recover_request(
    run_cli: Cli, store: QueryStore, published: FakePublisher, action: Recovery
) -> None:
    fleet(store)

    result = run_cli("deadletter", action.value, "run_5")

    assert result.code == 0
    assert published.records == [RecoverRequest(run_id="run_5", action=action, requested_at_ms=NOW, actor=CALLER)]


def test_deadletter_actions_on_a_run_not_in_the_list_exit_2(run_cli: Cli, store: QueryStore) -> None:
    fleet(store)

    result = run_cli("deadletter", "resume", "run_4")

    assert result.code == 2
    assert "404: Expected a run in the dead-letter list to resume, but run 'run_4' is completed" in result.err
    assert run_cli("deadletter", "resume").code == 2


# ---------------------------------------------------------------------------------------------
# The history printer


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_every_event_kind_prints_as_a_sentence_not_just_its_name(scenario: Callable[[], Run]) -> None:
    for event in scenario().events:
        shown = event_to_dict(event)

        line = output._describe(shown)

        assert line != shown["type"], f"{shown['type']} has no line of its own"
        assert "\n" not in line


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {
                "type": "WaitStarted",
                "step_index": 0,
                "name": "approval",
                "event_id": "o-1",
                "at_ms": 0,
                "timeout_at_ms": 60_000,
            },
            "wait step 0 'approval' waits for event 'o-1' (times out in 60.0 s)",
        ),
        (
            {"type": "EventReceived", "step_index": 0, "event_id": "o-1", "data": {"ok": True}},
            "wait step 0 received event 'o-1' → {\"ok\": true}",
        ),
        (
            {
                "type": "CallRetried",
                "step_index": 2,
                "attempt": 1,
                "status": 503,
                "error": "answered 503",
                "retry_at_ms": 1_000,
            },
            "call step 2 attempt 1 answered 503; retry at 00:00:01.000",
        ),
        (
            {"type": "CallRetried", "step_index": 2, "attempt": 2, "status": 0, "error": "timed out", "retry_at_ms": 0},
            "call step 2 attempt 2 got no answer (timed out); retry at 00:00:00.000",
        ),
        ({"type": "RunCancelled", "reason": "not needed"}, "run cancelled: not needed"),
        ({"type": "RunRecovered", "action": "resume"}, "run resumed by an operator"),
        # who asked and why, where the event says (the audit trail)
        (
            {"type": "RunCancelled", "reason": "duplicate", "actor": "client 10.0.0.7"},
            "run cancelled by client 10.0.0.7: duplicate",
        ),
        (
            {"type": "RunRecovered", "action": "restart", "actor": "client 10.0.0.7", "reason": "fixed"},
            "run restarted by client 10.0.0.7: fixed",
        ),
        (
            {"type": "EventReceived", "step_index": 3, "event_id": "paid", "data": 1, "actor": "run run_B"},
            "wait step 3 received event 'paid' → 1 by run run_B",
        ),
        (
            {
                "type": "InvokeStarted",
                "step_index": 1,
                "name": "refund",
                "child_run_id": "run_A.1",
                "workflow": "refunds",
            },
            "invoke step 1 'refund' started child run run_A.1 of 'refunds'",
        ),
    ],
)
def test_history_lines_for_the_new_event_kinds(event: dict[str, Any], expected: str) -> None:
    assert output._describe(event) == expected


HTTP_404 = {"type": "HTTP404", "message": "endpoint answered 404: no workflow 'x'"}
DECLINED = {"type": "NonRetryableError", "message": "card declined"}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (
            {"type": "StepFailed", "step_index": 0, "attempt": 1, "error": HTTP_404, "retry_at_ms": None},
            "step 0 attempt 1 failed: endpoint answered 404: no workflow 'x', no retry left",  # written before
        ),
        (
            {"type": "StepFailed", "step_index": 0, "attempt": 1, "error": HTTP_404, "retryable": False},
            "step 0 attempt 1 failed: endpoint answered 404: no workflow 'x'; "
            "not retried: a 4xx answer is final (408, 409, 425 and 429 are retried)",
        ),
        (
            {"type": "StepFailed", "step_index": 2, "attempt": 1, "error": DECLINED, "retryable": False},
            "step 2 attempt 1 failed: card declined; not retried: NonRetryableError is final",
        ),
        (
            {"type": "StepFailed", "step_index": 2, "attempt": 4, "error": DECLINED, "retryable": True},
            "step 2 attempt 4 failed: card declined, no retry left",
        ),
        (
            {"type": "StepFailed", "step_index": 2, "attempt": 1, "error": DECLINED, "retry_at_ms": 1_000},
            "step 2 attempt 1 failed: card declined, retry at 00:00:01.000",
        ),
        ({"type": "FailureHandled", "attempt": 1, "error": None}, "failure handler answered"),
        (
            {"type": "FailureHandlerFailed", "attempt": 1, "error": DECLINED, "retry_at_ms": 2_000, "retryable": True},
            "failure handler attempt 1 failed: card declined, retry at 00:00:02.000",
        ),
        (
            {"type": "FailureHandlerFailed", "attempt": 1, "error": HTTP_404, "retryable": False},
            "failure handler attempt 1 failed: endpoint answered 404: no workflow 'x'; "
            "not retried: a 4xx answer is final (408, 409, 425 and 429 are retried)",
        ),
        (  # a failed attempt as histories written before FailureHandlerFailed have it
            {"type": "FailureHandled", "attempt": 3, "error": DECLINED, "retry_at_ms": None},
            "failure handler attempt 3 failed: card declined, no retry left",
        ),
    ],
)
def test_a_failed_attempt_says_when_it_is_retried_or_why_not(event: dict[str, Any], expected: str) -> None:
    assert output._describe(event) == expected


def test_a_failure_handlers_failed_attempt_does_not_read_as_handled(run_cli: Cli, store: QueryStore) -> None:
    # given a run whose failure handler failed once, then answered (as the engine records it)
    scenario = SCENARIOS["delayed+handler"]()
    add(store, scenario)

    lines = run_cli("runs", "history", scenario.run_id).out.splitlines()

    handler = [line for line in lines if "failure handler" in line and "scheduled" not in line]
    assert [line.split()[2] for line in handler] == ["FailureHandlerFailed", "FailureHandled"]
    assert "failed: boom, retry at" in handler[0]
    assert handler[1].endswith("failure handler answered")


def test_runs_history_follow_exits_1_when_the_run_fails_and_0_when_it_completes(
    run_cli: Cli, store: QueryStore
) -> None:
    done = Run("run_done", now=T0)
    done.report(Complete(output='"ok"'), now=T0 + 1)
    add(store, done, failed("run_failed"))

    completed_result = run_cli("runs", "history", "run_done", "--follow", "--timeout", "5")
    failed_result = run_cli("runs", "history", "run_failed", "--follow", "--timeout", "5")

    assert completed_result.code == 0
    assert completed_result.out.splitlines()[-1].endswith('run completed → "ok"')
    assert failed_result.code == 1
    assert "RunFailed" in failed_result.out.splitlines()[-1]


def later(api: TestClient, store: QueryStore, changes: RunChanges, *batches: list[Event]) -> None:
    """The indexer's batches, landing one after another while the CLI's request is in the app."""
    for number, batch in enumerate(batches, start=1):

        def land(events: list[Event] = batch) -> None:
            index(store, events)
            changes.changed({event.run_id for event in events})

        api.loop.call_later(0.02 * number, land)


def history_lines(run_cli: Cli, run_id: str) -> list[str]:
    return run_cli("runs", "history", run_id).out.splitlines()


def test_trigger_watch_follows_the_new_runs_history_from_the_stream_until_it_ends(
    run_cli: Cli, api: TestClient, store: QueryStore, changes: RunChanges
) -> None:
    run = Run("order-77", now=T0)
    started = list(run.events)
    run.report(Complete(output='"shipped"'), outputs=('"packed"',), now=T0 + 1)
    later(api, store, changes, started, run.events[len(started) :])  # not in the store when the trigger is sent

    result = run_cli("trigger", "orders", "--run-id", "order-77", "--watch", "--timeout", "10")

    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0] == "order-77"
    assert lines[1:] == history_lines(run_cli, "order-77")
    assert lines[-1].endswith('run completed → "shipped"')


def test_follow_opens_the_stream_again_after_the_last_event_when_the_connection_breaks(
    run_cli: Cli, store: QueryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    add(store, completed("order-78"))
    events = [event_to_dict(event) for event in completed("order-78").events]
    asked: list[Any] = []

    class Broken:
        """An answer that gives the first event, then loses its connection."""

        status_code = 200

        def iter_lines(self) -> Iterator[str]:
            yield from ["id: 1", f"data: {json.dumps(events[0])}", ""]
            raise httpx.RemoteProtocolError("peer closed connection")

    real_stream = httpx.stream

    @contextmanager
    def stream(method: str, url: str, **options: Any) -> Iterator[Any]:
        asked.append(options["params"])
        if len(asked) == 1:
            yield Broken()
        else:
            with real_stream(method, url, **options) as response:
                yield response

    monkeypatch.setattr(httpx, "stream", stream)

    result = run_cli("runs", "history", "order-78", "--follow", "--timeout", "10")

    assert result.code == 0, result.err
    assert asked == [{"after_seq": 0}, {"after_seq": 1}]
    assert result.out.splitlines() == history_lines(run_cli, "order-78")  # each event once, in order


def test_follow_gives_up_at_its_timeout_when_the_run_does_not_end(run_cli: Cli, store: QueryStore) -> None:
    add(store, sleeping("order-79"))

    result = run_cli("runs", "history", "order-79", "--follow", "--timeout", "0.3")

    assert result.code == 1
    assert "gave up watching order-79 after 0 s; it may still be running" in result.err


def test_trigger_wait_prints_the_output_once_the_run_completes(
    run_cli: Cli, api: TestClient, store: QueryStore, changes: RunChanges, published: FakePublisher
) -> None:
    run = Run("order-80", now=T0)
    started = list(run.events)
    run.report(Complete(output='{"parcel": "P-1"}'), now=T0 + 1)
    later(api, store, changes, started, run.events[len(started) :])

    result = run_cli("trigger", "orders", "--run-id", "order-80", "--wait", "--timeout", "30")

    assert result.code == 0, result.err
    assert result.out == 'order-80\n{\n  "parcel": "P-1"\n}\n'
    assert len(published.records) == 1


def test_trigger_wait_exits_1_with_the_error_when_the_run_fails(run_cli: Cli, store: QueryStore) -> None:
    add(store, failed("order-81"))

    result = run_cli("trigger", "orders", "--run-id", "order-81", "--wait")

    assert result.code == 1
    assert result.out == "order-81\n"
    assert "run order-81 already exists (failed): nothing new was started" in result.err
    assert "run order-81 failed: CardDeclined: declined" in result.err


def test_trigger_wait_asks_again_until_its_timeout_then_says_how_to_follow(
    run_cli: Cli, store: QueryStore, published: FakePublisher
) -> None:
    add(store, sleeping("order-82"))

    result = run_cli("trigger", "orders", "--run-id", "order-82", "--wait", "--timeout", "0.2")

    assert result.code == 1
    assert "gave up waiting for order-82 after 0 s; it is still going" in result.err
    assert "stepstream runs history order-82 --follow" in result.err
    assert published.records == []


def test_trigger_takes_watch_or_wait_not_both(run_cli: Cli, published: FakePublisher) -> None:
    result = run_cli("trigger", "orders", "--watch", "--wait")

    assert result.code == 2
    assert "not allowed with argument" in result.err
    assert published.records == []


# ---------------------------------------------------------------------------------------------
# flow control


def test_trigger_sends_the_flow_control_options(run_cli: Cli, published: FakePublisher) -> None:
    result = run_cli(
        "trigger", "orders", "--flow-key", "mailer", "--rate", "10", "--period", "1m", "--parallelism", "3"
    )

    assert result.code == 0, result.err
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.flow == FlowControl(key="mailer", rate=10, period_ms=60_000, parallelism=3)


def test_trigger_with_only_a_flow_key_groups_without_limits(run_cli: Cli, published: FakePublisher) -> None:
    assert run_cli("trigger", "orders", "--flow-key", "mailer").code == 0

    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.flow == FlowControl(key="mailer")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("--rate", "10"), "stepstream: --rate limit the runs under a flow-control key: give one with --flow-key"),
        (
            ("--period", "1m", "--parallelism", "2"),
            "stepstream: --period, --parallelism limit the runs under a flow-control key: give one with --flow-key",
        ),
        (
            ("--flow-key", "mailer", "--rate", "0"),
            "stepstream: 422: Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got 0",
        ),
        (
            ("--flow-key", "mailer", "--rate", "1", "--period", "a minute"),
            "stepstream: 422: flow_control.period: Expected a duration such as '10s', '5m' or '2h'",
        ),
    ],
)
def test_a_bad_flow_control_exits_2_with_the_reason(
    run_cli: Cli, published: FakePublisher, argv: tuple[str, ...], expected: str
) -> None:
    result = run_cli("trigger", "orders", *argv)

    assert result.code == 2
    assert result.err.startswith(expected), result.err
    assert published.records == []


def flow_state(key: str, **changes: Any) -> FlowKeyState:
    values: dict[str, Any] = {
        "queued": 0,
        "in_flight": 0,
        "starts_in_window": 0,
        "rate": None,
        "period_ms": 1_000,
        "parallelism": None,
        "updated_ms": NOW,
        **changes,
    }
    return FlowKeyState(key=key, **values)


@pytest.fixture
def flow_keys(store: QueryStore) -> None:
    store.apply_flow(
        [
            (
                "mailer",
                flow_state(
                    "mailer", queued=42, in_flight=3, starts_in_window=10, rate=10, period_ms=60_000, parallelism=3
                ),
            ),
            ("billing-api", flow_state("billing-api", queued=0, in_flight=1, parallelism=1, period_ms=5_400_000)),
            ("grouped", flow_state("grouped", starts_in_window=7, period_ms=250)),
        ]
    )


def test_flow_prints_every_key_as_a_table(run_cli: Cli, flow_keys: None) -> None:
    result = run_cli("flow")

    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        "KEY          QUEUED  IN FLIGHT  STARTED  PER    UPDATED",
        "billing-api       0        1/1        0  1h30m  2023-11-14 23:13:20",
        "grouped           0          0        7  250ms  2023-11-14 23:13:20",
        "mailer           42        3/3    10/10  1m     2023-11-14 23:13:20",
    ]


def test_flow_with_a_key_prints_that_key(run_cli: Cli, flow_keys: None) -> None:
    result = run_cli("flow", "mailer")

    assert result.code == 0, result.err
    assert result.out.splitlines()[1:] == ["mailer      42        3/3    10/10  1m   2023-11-14 23:13:20"]


def test_flow_with_an_unknown_key_exits_2(run_cli: Cli, flow_keys: None) -> None:
    result = run_cli("flow", "mailers")

    assert result.code == 2
    assert result.out == ""
    assert result.err.startswith(
        "stepstream: 404: Expected a flow-control key the scheduler has published, but 'mailers'"
    )


def test_flow_pages_with_a_cursor(run_cli: Cli, flow_keys: None) -> None:
    first = run_cli("flow", "--limit", "2")
    cursor = first.err.split("--cursor ")[1].strip()
    second = run_cli("flow", "--limit", "2", "--cursor", cursor)

    keys = [line.split()[0] for line in first.out.splitlines()[1:] + second.out.splitlines()[1:]]
    assert keys == ["billing-api", "grouped", "mailer"]
    assert "--cursor" not in second.err


def test_flow_without_keys_says_so(run_cli: Cli) -> None:
    result = run_cli("flow")

    assert (result.code, result.out) == (0, "")
    assert "no flow-control key is known yet" in result.err


# -- the tables, as a user sees them ----------------------------------------------------------

LONG_RUN_ID = "order-2026-01-31-" + "7" * 80
# Shown as written: rich would read markup and emoji codes in a string (the CLI gives it Text).
LONG_ERROR = "2 errors\n  payload.amount\n    [bold]not an int[/bold] :warning:\n" + " ".join(
    f"field_{n} is required" for n in range(30)
)


def failed_with(run_id: str, message: str, *, now: int) -> Run:
    run = Run(run_id, now=now, workflow="payments", label=None)
    run.report(Fail(error=ErrorInfo(type="ValidationError", message=message), retryable=False), now=now + 1)
    return run


def with_stdout(stdout: IO[str], run_cli: Cli, *argv: str) -> Result:
    """``run_cli(*argv)`` with the CLI's stdout going to ``stdout`` (its ``out`` then empty)."""
    saved, sys.stdout = sys.stdout, stdout
    try:
        return run_cli(*argv)
    finally:
        sys.stdout = saved


def through_a_pipe(run_cli: Cli, *argv: str) -> tuple[Result, str]:
    """What ``stepstream … | cat`` shows. (The output is read once the CLI is done: it must fit in the
    pipe's buffer, 64 KiB, which a few runs do.)"""
    read_end, write_end = os.pipe()
    with open(write_end, "w", encoding="utf-8") as pipe:
        result = with_stdout(pipe, run_cli, *argv)
    with open(read_end, encoding="utf-8") as reader:
        return result, reader.read()


def test_a_table_through_a_pipe_is_plain_text_one_line_a_row_in_aligned_columns(
    run_cli: Cli, store: QueryStore
) -> None:
    fleet(store)
    add(store, failed_with(LONG_RUN_ID, LONG_ERROR, now=T0 + 21_600_000))

    result, out = through_a_pipe(run_cli, "deadletter", "list")

    assert result.code == 0, result.err
    assert "\x1b" not in out  # no colour codes
    assert not [character for character in out if "\u2500" <= character <= "\u257f"]  # no box lines
    header, *rows = out.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "STATUS", "STEPS", "CREATED", "ERROR"]
    assert len(rows) == 2  # a line a run, however long its id and its error: `| grep RUN_ID` finds it whole
    newest, oldest = rows
    assert newest.startswith(f"{LONG_RUN_ID}  payments")
    assert newest[header.index("ERROR") :] == "ValidationError: " + " ".join(LONG_ERROR.split())
    assert oldest[header.index("ERROR") :] == "CardDeclined: declined"
    for row in rows:  # each value starts under its header (STEPS, a number, ends under it)
        assert row[header.index("STATUS") :].startswith("failed ")
        assert row[: header.index("STEPS") + len("STEPS")].endswith(" 0")
        assert row[header.index("CREATED") :].startswith("2023-11-15 0")
        assert row == row.rstrip()


def test_a_table_into_a_closed_pipe_ends_quietly(run_cli: Cli, store: QueryStore) -> None:
    """`stepstream runs list | head -1`: the reader goes away after a line; exit 0, as for a history."""
    fleet(store)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails with EPIPE
    with open(write_end, "w", encoding="utf-8", buffering=1) as pipe:
        result = with_stdout(pipe, run_cli, "runs", "list")

    assert result.code == 0
    assert result.err == ""


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_statuses_are_coloured_and_a_long_error_folds_inside_its_column(
    run_cli: Cli, store: QueryStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("TERM", "xterm-256color")
    fleet(store)
    add(store, failed_with("run_7", LONG_ERROR, now=T0 + 21_600_000))
    terminal = Terminal()

    assert with_stdout(terminal, run_cli, "deadletter", "list").code == 0

    out = terminal.getvalue()
    assert "\x1b[31mfailed\x1b[0m" in out  # red
    lines = re.sub(r"\x1b\[[0-9;]*m", "", out).splitlines()
    assert max(len(line) for line in lines) <= 100
    column = lines[0].index("ERROR")
    first = next(number for number, line in enumerate(lines) if line.startswith("run_7 "))
    folded = [lines[first], *itertools.takewhile(lambda line: line[:column].isspace(), lines[first + 1 :])]
    assert len(folded) > 1
    assert " ".join(line[column:].strip() for line in folded) == "ValidationError: " + " ".join(LONG_ERROR.split())


# -- tokens ------------------------------------------------------------------------------------


def test_token_new_prints_the_token_and_the_line_that_configures_only_its_hash(capsys: Any) -> None:
    cli.main(["token", "new", "deploy-bot", "--roles", "write,read"])
    out, err = capsys.readouterr()

    token = out.strip()
    line = err.strip().splitlines()[-1].strip()
    assert token.startswith("ssk_")
    assert token not in err
    (configured,) = parse_tokens(line, "stderr")
    assert (configured.name, configured.roles) == ("deploy-bot", frozenset({"read", "write"}))
    assert TokenAuth(None, (configured,)).find(token) == configured  # type: ignore[arg-type]


def test_token_new_refuses_unknown_roles(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["token", "new", "x", "--roles", "read,admin"])
    assert exited.value.code == 2
    assert "--roles: expected some of read, write, operate" in capsys.readouterr().err


def test_the_cli_sends_its_token_and_the_local_stacks_only_to_the_local_api(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("STEPSTREAM_API_TOKEN", raising=False)
    monkeypatch.delenv("STEPSTREAM_API_URL", raising=False)
    monkeypatch.setenv("STEPSTREAM_HOME", str(tmp_path))
    assert client.auth_headers() == {}
    (tmp_path / "api-token").write_text("ssk_local\n")
    assert client.auth_headers() == {"Authorization": "Bearer ssk_local"}
    monkeypatch.setenv("STEPSTREAM_API_URL", "https://stepstream.example.com")
    assert client.auth_headers() == {}, "the local stack's token never goes to another api"
    monkeypatch.setenv("STEPSTREAM_API_TOKEN", "ssk_given")
    assert client.auth_headers() == {"Authorization": "Bearer ssk_given"}


def test_a_401_says_which_variable_holds_the_token(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    def refused(method: str, url: str, **options: Any) -> httpx.Response:
        return httpx.Response(401, json={"error": "unauthorized", "message": "Expected a token, but got none"})

    monkeypatch.setattr(httpx, "request", refused)
    with pytest.raises(SystemExit) as exited:
        cli.main(["runs", "list"])
    assert exited.value.code == 2
    assert "401: Expected a token, but got none; set STEPSTREAM_API_TOKEN" in capsys.readouterr().err


# -- what a newcomer sees (issue 17) ----------------------------------------------------------------


def test_a_history_line_is_one_line_with_its_description_aligned_whatever_the_event(capsys: Any) -> None:
    handler = {"type": "FailureHandlerScheduled", "url": "http://app/f", "delivery_id": "run_A/4", "attempt": 1}
    error = {"type": "ValidationError", "message": "2 errors\n  payload.amount\n    not an int"}
    for event in ({"seq": 12, "at_ms": 0, **handler}, {"seq": 9, "at_ms": 0, "type": "RunFailed", "error": error}):
        output.print_event(event)

    scheduled, failed = capsys.readouterr().out.splitlines()  # two events, two lines
    assert failed.endswith("run failed: ValidationError: 2 errors payload.amount not an int")
    assert scheduled.index("failure handler scheduled") == failed.index("run failed")


def test_output_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`stepstream … | head -1`: the reader goes away, and the CLI stops without a traceback."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: every write fails with EPIPE
    try:
        result = subprocess.run(
            [sys.executable, "-m", "stepstream.cli", "--help"], stdout=write_end, stderr=subprocess.PIPE, timeout=60
        )
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert b"Traceback" not in result.stderr
    assert b"BrokenPipeError" not in result.stderr


def test_an_endpoints_escape_sequences_reach_the_terminal_as_text_not_as_commands(
    run_cli: Cli, store: QueryStore
) -> None:
    # given a run failed by an endpoint whose error carries terminal escapes (clear screen, a title,
    # colour) and a bidi override that would show the text reversed
    hostile = "bad\x1b[2J\x1b]0;pwned\x07 answer \x1b[31mred\u202eevil"
    add(store, failed_with("run_esc", hostile, now=T0))

    listed, history = run_cli("deadletter", "list"), run_cli("runs", "history", "run_esc")

    # then both show them escaped, on their one line, and send none of them
    for out in (listed.out, history.out):
        assert not [character for character in out if character in "\x1b\x07\u202e"]
    assert "bad\\x1b[2J\\x1b]0;pwned\\x07 answer \\x1b[31mred\\u202eevil" in listed.out
    assert "\\x1b[2J" in history.out


def test_show_lists_an_exports_runs_as_a_table(run_cli: Cli, tmp_path: Path) -> None:
    # given an export of two runs (as `stepstream export` writes it)
    runs = [failed_with("run_f", "declined", now=T0), Run("run_r", now=T0)]
    exported = tmp_path / "runs.jsonl"
    with exported.open("w") as out:
        write_export(out, [[event_to_dict(event) for event in run.events] for run in runs])

    result = run_cli("show", str(exported))

    assert result.code == 0, result.err
    header, *rows = result.out.splitlines()
    assert header.split() == ["RUN", "WORKFLOW", "STATUS", "EVENTS"]
    assert [row.split() for row in rows] == [
        ["run_f", "payments", "failed", str(len(runs[0].events))],
        ["run_r", "orders", "running", str(len(runs[1].events))],
    ]


def _processes_with(variable: str) -> list[int]:
    """The pids of this user's processes whose environment holds ``variable`` (``NAME=value``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environment = (entry / "environ").read_bytes().split(b"\0")
            except OSError:  # gone, or not ours
                continue
            if variable.encode() in environment:
                found.append(int(entry.name))
    return found


def test_dev_stops_what_it_started_when_a_step_before_the_services_fails(tmp_path: Path) -> None:
    # given `stepstream dev --example` with a setting the topics cannot be created with (the example
    # app is started before that step)
    home = f"STEPSTREAM_HOME={tmp_path}"
    env = {**os.environ, "STEPSTREAM_HOME": str(tmp_path), "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    env |= {"STEPSTREAM_PARTITIONS": "0", "STEPSTREAM_WORKFLOWS": "", "STEPSTREAM_API_TOKENS": ""}

    result = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "dev", "--example"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    # then it says which setting, exits 2, and leaves no process behind (the example app had started)
    assert result.returncode == 2, result.stderr
    assert "Expected STEPSTREAM_PARTITIONS to be at least 1, but got 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert "starting the example app" in result.stderr
    assert (tmp_path / "example-app.log").exists()
    assert _processes_with(home) == []
