"""A run's history put to use, through the real engine (a Kafka broker, the four services as processes,
the workflow app tests/apps/history.py on loopback): its state at every point, replays of it against
the current code and against changed code, export and import, and versioning with ``ctx.patched``."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import linecache
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstream.avro import Codec
from stepstream.core import RunState
from stepstream.history import (
    assert_replays,
    diff,
    events_of,
    fold_to,
    load_workflows,
    read_export,
    replay_file,
    replay_history,
    state_to_dict,
)
from stepstream.sdk import WorkflowContext, Workflows
from stepstream.store import REDACTED
from tests.helpers import wait_until
from tests.stack import Stack, free_port, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"
WORKFLOWS = "tests.apps.history:workflows"
# As `stepstream replay` loads them (no signing keys needed: a replay serves no request); its step
# counters tell whether a replay in this process ran any step.
workflows = load_workflows(WORKFLOWS)
app = sys.modules["tests.apps.history"]


class Recorded:
    """The stack, and the runs it recorded once for every test of the module."""

    def __init__(self, stack: Stack, base: str, directory: Path) -> None:
        self.stack, self.base, self.directory = stack, base, directory
        self.runs: dict[str, str] = {}

    def trigger(self, workflow: str, payload: Any, prefix: str = "/workflows") -> str:
        body = {"workflow": workflow, "url": f"{self.base}{prefix}/{workflow}", "payload": payload}
        response = self.stack.api.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def cli(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "stepstream.cli", *arguments],
            env={**self.stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{self.stack.api_port}"},
            cwd=APPS.parent.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )


@pytest.fixture(scope="module")
def recorded(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recorded]:
    directory = tmp_path_factory.mktemp("history")
    stack = Stack(kafka_bootstrap, directory, STEPSTREAM_DEFAULT_RETRY_BASE_MS="100")
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api")
    port = stack.start_app("history", APPS, "history:app")
    recorded = Recorded(stack, f"http://127.0.0.1:{port}", directory)
    event_id = f"approval-{uuid.uuid4().hex[:8]}"
    payload = {"base": recorded.base, "event_id": event_id, "wake_at": time.time() + 0.5}
    recorded.runs["journey"] = recorded.trigger("journey", payload)
    # One run stays in flight, waiting for an approval that never comes.
    recorded.runs["waiting"] = recorded.trigger("journey", {**payload, "event_id": f"never-{event_id}"})
    recorded.runs["before"] = recorded.trigger("versioned", None, prefix="/before")
    recorded.runs["patched"] = recorded.trigger("versioned", None)
    waiters = f"/v1/events/{event_id}/waiters"
    wait_until(lambda: stack.api.get(waiters).json()["waiters"], timeout=60)
    assert stack.api.post(f"/v1/events/{event_id}/notify", json={"data": "yes"}).status_code == 202
    for name in ("journey", "before", "patched"):
        stack.wait_for_status(recorded.runs[name], "completed", timeout=90)
    stack.wait_for_status(recorded.runs["waiting"], "waiting", timeout=60)
    wait_until(lambda: any(e["type"] == "WaitStarted" for e in stack.history(recorded.runs["waiting"])), timeout=30)
    recorded.runs["leaf"] = _child_of(stack.history(recorded.runs["journey"]))
    yield recorded
    stack.stop()


def _child_of(history: list[dict[str, Any]]) -> str:
    child: str = next(event["child_run_id"] for event in history if event["type"] == "InvokeStarted")
    return child


def _types(history: list[dict[str, Any]]) -> set[str]:
    return {event["type"] for event in history}


# -- state at a point ---------------------------------------------------------------------------


def test_the_state_after_each_event_is_the_fold_of_the_events_up_to_it(recorded: Recorded) -> None:
    stack = recorded.stack
    for name in ("journey", "leaf", "waiting", "patched"):
        run_id = recorded.runs[name]
        history = stack.history(run_id)
        for position, event in enumerate(history, start=1):
            answer = stack.api.get(f"/v1/runs/{run_id}/state", params={"seq": event["seq"]}).json()
            assert answer["seq"] == event["seq"]
            assert answer["event"] == event["type"]
            assert answer["state"] == state_to_dict(fold_to(events_of(history[:position]))), (name, event)
    # The journey's history has an event of every primitive.
    journey = stack.history(recorded.runs["journey"])
    assert {"SleepStarted", "CallStarted", "WaitStarted", "EventReceived", "NotifyStarted", "InvokeStarted"} <= (
        _types(journey)
    )


def test_the_state_after_the_last_event_is_the_projectors_snapshot(recorded: Recorded) -> None:
    """The api's fold of the stored history gives what the projector itself holds for the run."""
    codec, stack = Codec(), recorded.stack
    records = read_topic(stack.env["KAFKA_BOOTSTRAP_SERVERS"], stack.prefix + "runs")
    snapshots = {record.key.decode(): codec.decode(record.value) for record in records if record.value is not None}
    for name in ("journey", "waiting"):
        run_id = recorded.runs[name]
        shown = stack.api.get(f"/v1/runs/{run_id}/state").json()["state"]
        snapshot = snapshots[run_id]
        assert isinstance(snapshot, RunState)
        expected = state_to_dict(snapshot)
        assert expected is not None
        expected["headers"] = dict.fromkeys(expected["headers"], REDACTED)  # the history redacts them
        # The projector keeps a run's results beside its snapshot, not in it (docs/architecture.md).
        assert expected.pop("steps") == []
        steps = shown.pop("steps")
        assert shown == expected
        recorded_steps = stack.api.get(f"/v1/runs/{run_id}/steps").json()["steps"]
        assert [(step["index"], step["name"], step["output"]) for step in steps] == [
            (step["index"], step["name"], step["output"]) for step in recorded_steps if step["status"] == "completed"
        ]


def test_the_state_as_of_a_time_and_the_difference_between_two_points(recorded: Recorded) -> None:
    stack, run_id = recorded.stack, recorded.runs["journey"]
    history = stack.history(run_id)
    sleep = next(event for event in history if event["type"] == "SleepStarted")
    as_of = stack.api.get(f"/v1/runs/{run_id}/state", params={"at": str(sleep["at_ms"])}).json()
    assert as_of["seq"] >= sleep["seq"]
    assert as_of["state"]["status"] in ("sleeping", "running")
    assert stack.api.get(f"/v1/runs/{run_id}/state", params={"at": "2000-01-01T00:00:00Z"}).status_code == 404

    changed = stack.api.get(f"/v1/runs/{run_id}/state/diff", params={"from_seq": sleep["seq"]}).json()
    paths = {change["path"]: change for change in changed["changes"]}
    assert paths["status"] == {"path": "status", "before": "sleeping", "after": "completed"}
    assert paths["output"]["before"] is None
    assert paths["output"]["after"]["quote"] == {"price": 42}
    assert any(path.startswith("steps[") for path in paths)
    # Computed locally from the history, the same difference.
    first = state_to_dict(fold_to(events_of(history), seq=sleep["seq"]))
    last = state_to_dict(fold_to(events_of(history)))
    assert [change.to_dict() for change in diff(first, last)] == changed["changes"]

    cli = recorded.cli("state", run_id, "--diff", str(sleep["seq"]))
    assert cli.returncode == 0, cli.stderr
    assert 'status: "sleeping" -> "completed"' in cli.stdout


# -- replay -------------------------------------------------------------------------------------


def test_the_unchanged_code_replays_every_recorded_run_without_running_a_step(recorded: Recorded) -> None:
    app.executions.clear()
    for name, run_id in recorded.runs.items():
        report = asyncio.run(replay_history(workflows, recorded.stack.history(run_id)))
        assert report.ok, (name, report.describe())
        steps = recorded.stack.api.get(f"/v1/runs/{run_id}/steps").json()["steps"]
        assert report.replayed_steps == sum(1 for step in steps if step["status"] == "completed")
    assert app.executions == {}  # no step body ran in this process
    waiting = asyncio.run(replay_history(workflows, recorded.stack.history(recorded.runs["waiting"])))
    assert waiting.next_steps == ["wait_for_event 'approval'"]

    cli = recorded.cli(
        "replay", recorded.runs["journey"], recorded.runs["waiting"], "--workflows", "tests.apps.history:workflows"
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert cli.stdout.count("ok ") == 2
    assert "2 of 2 runs replay" in cli.stderr


def _changed(step: str, change: str) -> Workflows:
    """``journey`` with one change at ``step``: renamed, removed, moved after the next step, or another kind."""
    changed = Workflows(allow_unsigned=True)

    @changed.workflow("journey")
    async def journey(ctx: WorkflowContext[Any]) -> Any:
        async def reserve() -> Any:
            if step == "reserve" and change == "renamed":
                return await ctx.run("reserve-seat", app.counted, "reserve", {"seat": 12})
            if step == "reserve" and change == "kind":
                await ctx.sleep("reserve", 1)
                return {"seat": 12}
            return await ctx.run("reserve", app.counted, "reserve", {"seat": 12})

        async def pause() -> None:
            if not (step == "pause" and change == "removed"):
                await ctx.sleep("pause", 0.2)

        if step == "reserve" and change == "reordered":
            await pause()
            reserved = await reserve()
        else:
            reserved = await reserve()
            await pause()
        await ctx.sleep_until("until", ctx.payload["wake_at"])
        await ctx.call("quote", f"{ctx.payload['base']}/quote", method="POST", json={"seat": reserved["seat"]})
        return None

    return changed


@pytest.mark.parametrize(
    ("step", "change", "index", "recorded_step", "asked"),
    [
        ("reserve", "renamed", 0, "run 'reserve'", "run 'reserve-seat'"),
        ("reserve", "kind", 0, "run 'reserve'", "sleep 'reserve'"),
        ("reserve", "reordered", 0, "run 'reserve'", "sleep 'pause'"),
        ("pause", "removed", 1, "sleep 'pause'", "sleep_until 'until'"),
    ],
)
def test_changed_code_reports_the_first_divergence_where_the_code_asks(
    recorded: Recorded, step: str, change: str, index: int, recorded_step: str, asked: str
) -> None:
    app.executions.clear()
    report = asyncio.run(replay_history(_changed(step, change), recorded.stack.history(recorded.runs["journey"])))
    assert report.divergence is not None, report
    assert (report.divergence.index, report.divergence.recorded, report.divergence.code) == (
        index,
        recorded_step,
        asked,
    )
    assert report.divergence.location is not None
    # The location is the line of this file that asked for the step.
    file, line = report.divergence.location.split(" in ")[0].rsplit(":", 1)
    assert file == __file__
    asked_name = asked.split("'")[1]
    assert f'"{asked_name}"' in linecache.getline(file, int(line))
    assert app.executions == {}


def test_code_that_returns_early_diverges_at_the_first_step_it_no_longer_asks_for(recorded: Recorded) -> None:
    shorter = Workflows(allow_unsigned=True)

    @shorter.workflow("journey")
    async def journey(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("reserve", app.counted, "reserve", {"seat": 12})

    report = asyncio.run(replay_history(shorter, recorded.stack.history(recorded.runs["journey"])))
    assert report.divergence is not None
    assert (report.divergence.index, report.divergence.recorded, report.divergence.code) == (
        1,
        "sleep 'pause'",
        "the workflow returned",
    )


# -- export and import --------------------------------------------------------------------------


def test_export_then_import_gives_the_same_histories_and_they_replay(recorded: Recorded, tmp_path: Path) -> None:
    stack, exported = recorded.stack, tmp_path / "runs.jsonl"
    cli = recorded.cli("export", *recorded.runs.values(), "-o", str(exported))
    assert cli.returncode == 0, cli.stderr
    assert f"exported {len(recorded.runs)} runs" in cli.stderr

    histories = read_export(exported)
    assert {run_id: stack.history(run_id) for run_id in recorded.runs.values()} == histories
    first_line = exported.read_text().splitlines()[1]
    assert first_line.startswith('{"schema":"stepstream.RunStarted","event":{"type":"RunStarted"')
    app.executions.clear()
    reports = asyncio.run(replay_file(workflows, exported))
    assert [report.ok for report in reports] == [True] * len(recorded.runs)
    assert assert_replays(workflows, tmp_path)
    assert app.executions == {}

    shown = recorded.cli("show", str(exported))
    assert shown.returncode == 0
    assert recorded.runs["journey"] in shown.stdout
    assert "completed" in shown.stdout
    replayed = recorded.cli("replay", "--file", str(exported), "--workflows", WORKFLOWS)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr

    # The same file against changed code: the CLI says which run diverges, and exits 1.
    with pytest.raises(AssertionError, match="diverge"):
        assert_replays(_changed("reserve", "renamed"), exported)


def test_an_export_of_runs_matching_a_filter(recorded: Recorded, tmp_path: Path) -> None:
    exported = tmp_path / "versioned.jsonl"
    cli = recorded.cli("export", "--workflow", "versioned", "-o", str(exported))
    assert cli.returncode == 0, cli.stderr
    assert set(read_export(exported)) == {recorded.runs["before"], recorded.runs["patched"]}


def test_a_file_that_is_not_an_export_is_refused_with_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"hello": 1}\n')
    result = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "show", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"{bad}:1: expected an export" in result.stderr


# -- versioning -----------------------------------------------------------------------------------


def test_a_patched_workflow_replays_histories_from_before_and_after_the_change(recorded: Recorded) -> None:
    stack = recorded.stack
    before, after = stack.history(recorded.runs["before"]), stack.history(recorded.runs["patched"])
    assert stack.wait_for_status(recorded.runs["before"], "completed")["output"] == "shipped"
    assert stack.wait_for_status(recorded.runs["patched"], "completed")["output"] == "shipped with tracking"
    names = [event["name"] for event in after if event["type"] == "StepCompleted"]
    assert names == ["fetch", "patched:tracking", "ship-tracked", "send-tracking"]

    app.executions.clear()
    for history in (before, after):
        report = asyncio.run(replay_history(workflows, history))
        assert (report.ok, report.output_matches) == (True, True), report.describe()
    assert app.executions == {}

    # Without the patch, the new code cannot replay the old history...
    unpatched = Workflows(allow_unsigned=True)

    @unpatched.workflow("versioned")
    async def versioned(ctx: WorkflowContext[Any]) -> str:
        await ctx.run("fetch", app.counted, "fetch")
        await ctx.run("ship-tracked", app.counted, "ship-tracked")
        await ctx.run("send-tracking", app.counted, "send-tracking")
        return "shipped with tracking"

    report = asyncio.run(replay_history(unpatched, before))
    assert report.divergence is not None
    assert report.divergence.index == 1
    # ...but once the old runs are gone, the patch can be removed: its marker is skipped.
    cleaned = asyncio.run(replay_history(unpatched, after))
    assert (cleaned.ok, cleaned.output_matches) == (True, True), cleaned.describe()


def test_the_state_api_says_what_it_cannot_find(recorded: Recorded) -> None:
    api: httpx.Client = recorded.stack.api
    assert api.get("/v1/runs/no-such-run/state").status_code == 404
    assert api.get(f"/v1/runs/{recorded.runs['journey']}/state", params={"seq": 0}).status_code == 422


# -- the audit trail ------------------------------------------------------------------------------


def test_operator_actions_are_in_the_history_with_who_and_why(recorded: Recorded) -> None:
    stack, api = recorded.stack, recorded.stack.api
    caller = "token tests"  # the name of the token the stack's client sends
    run_id = recorded.trigger("doomed", None)
    for action, method, path in (
        ("resume", "POST", f"/v1/deadletter/{run_id}/resume"),
        ("restart", "POST", f"/v1/deadletter/{run_id}/restart"),
        ("delete", "DELETE", f"/v1/deadletter/{run_id}"),
    ):
        wait_until(lambda: (stack.run(run_id) or {}).get("dead_letter"), timeout=60)
        answer = api.request(method, path, json={"reason": f"{action}: ticket 7"})
        assert answer.status_code == 202, answer.text
        wait_until(functools.partial(_recovered, stack, run_id, action), timeout=60)
    recovered = [(e["action"], e["actor"], e["reason"]) for e in stack.history(run_id) if e["type"] == "RunRecovered"]
    assert recovered == [
        ("resume", caller, "resume: ticket 7"),
        ("restart", caller, "restart: ticket 7"),
        ("delete", caller, "delete: ticket 7"),
    ]
    # A failed run replays too: the code asks for the step it failed at, which the history started.
    report = asyncio.run(replay_history(workflows, stack.history(run_id)))
    assert report.ok, report.describe()

    event_id = f"approval-{uuid.uuid4().hex[:8]}"
    payload = {"base": recorded.base, "event_id": event_id, "wake_at": 0}
    waiting = recorded.trigger("journey", payload)
    wait_until(lambda: api.get(f"/v1/events/{event_id}/waiters").json()["waiters"], timeout=60)
    assert api.post(f"/v1/events/{event_id}/notify", json={"data": "ok"}).status_code == 202
    wait_until(lambda: any(e["type"] == "EventReceived" for e in stack.history(waiting)), timeout=60)
    received = next(e for e in stack.history(waiting) if e["type"] == "EventReceived")
    assert (received["actor"], received["data"]) == (caller, "ok")
    # The fixture's notification too: every wake-up from the api names its caller.
    other = recorded.runs["journey"]
    assert [e.get("actor") for e in stack.history(other) if e["type"] == "EventReceived"] == [caller]

    cancelled = recorded.trigger("journey", {**payload, "event_id": f"never-{event_id}"})
    stack.wait_for_status(cancelled, "waiting", timeout=60)
    assert api.post(f"/v1/runs/{cancelled}/cancel", json={"reason": "duplicate order"}).status_code == 202
    stack.wait_for_status(cancelled, "cancelled", timeout=60)
    ended = next(e for e in stack.history(cancelled) if e["type"] == "RunCancelled")
    assert (ended["actor"], ended["reason"]) == (caller, "duplicate order")


def _recovered(stack: Stack, run_id: str, action: str) -> bool:
    return any(event.get("action") == action for event in stack.history(run_id))


def test_a_query_store_rebuilt_from_events_equals_the_live_one(recorded: Recorded, tmp_path: Path) -> None:
    """A second api on a new, empty store reads every topic from the beginning: it must end with the
    same rows as the api that indexed the same events as they were written."""
    stack = recorded.stack
    live = stack.directory / "query.db"
    rebuilt = tmp_path / "rebuilt.db"
    port = free_port()
    env = {
        **stack.env,
        "STEPSTREAM_DATABASE": str(rebuilt),
        "STEPSTREAM_API_PORT": str(port),
        "STEPSTREAM_HEALTH_PORT": str(free_port()),
        "STEPSTREAM_INSTANCE_ID": f"{stack.prefix}api-rebuilt",
    }
    with (stack.directory / "api-rebuilt.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "stepstream.api"], env=env, stdout=log, stderr=log)
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/readyz", timeout=120)
        # Nothing moves any more (every run has ended or waits with no deadline close): the two stores
        # read the same events; wait until both have the last of them.
        wait_until(lambda: _rows(live) == _rows(rebuilt), timeout=30)
    finally:
        process.terminate()
        process.wait(timeout=30)
    tables = _rows(live)
    assert tables == _rows(rebuilt)
    assert len(tables["runs"]) >= len(recorded.runs)
    assert len(tables["events"]) > 50


_OWN_TABLES = frozenset({"positions"})  # where each store has read to: its own, not the events'


def _rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of a query store, but how far each store has read (its own positions)."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        names = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {
            name: sorted(db.execute(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in names
            if name not in _OWN_TABLES
        }
