"""The example workflow (three run steps and a sleep) through the real engine: Kafka, the four
services as processes, and the example app over loopback HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

EXPECTED_STEPS = [
    ("run", "create-account"),
    ("run", "send-welcome"),
    ("sleep", "wait-before-tips"),
    ("run", "send-tips"),
]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path_factory.mktemp("stack"))
    stack.create_topics()
    stack.start()
    yield stack
    stack.stop()


def completed_steps(history: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(event["kind"], event["name"]) for event in history if event["type"] == "StepCompleted"]


def test_example_workflow_completes_with_each_step_once_and_history_in_order(stack: Stack) -> None:
    # given a running engine and the example app
    # when a run is triggered over the api
    run_id = stack.trigger({"name": "Ada", "sleep_seconds": 1})

    # then it completes with the workflow's return value
    run = stack.wait_for_status(run_id, "completed")
    assert run["output"] == {
        "account": "acct-ada",
        "welcome": "welcome mail sent to acct-ada",
        "tips": "tips sent to acct-ada",
    }
    # and each step body ran exactly once
    counts = stack.step_counts()
    assert {step: counts[f"{run_id}:{step}"] for step in ("create-account", "send-welcome", "send-tips")} == {
        "create-account": 1,
        "send-welcome": 1,
        "send-tips": 1,
    }
    # and the history holds the expected events in order, numbered without gaps
    history = stack.history(run_id)
    assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
    assert history[0]["type"] == "RunStarted"
    assert history[-1]["type"] == "RunCompleted"
    assert completed_steps(history) == EXPECTED_STEPS
    sleep = next(event for event in history if event["type"] == "SleepStarted")
    woke = next(event for event in history if event["type"] == "StepCompleted" and event["kind"] == "sleep")
    assert woke["at_ms"] >= sleep["wake_at_ms"], "the sleep must not end early"
    assert [event["step_index"] for event in history if event["type"] == "StepCompleted"] == [0, 1, 2, 3]


def test_a_trigger_that_waits_answers_with_the_runs_output(stack: Stack) -> None:
    # given a running engine and the example app
    # when a caller triggers the example and waits for its result
    response = stack.api.post(
        "/v1/runs",
        params={"wait": "30s"},
        json={"workflow": "onboarding", "payload": {"name": "Wu", "sleep_seconds": 0.5}},
        timeout=45,
    )

    # then the answer is the ended run, with the workflow's return value
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "completed"
    assert run["duplicate"] is False
    assert run["output"] == {
        "account": "acct-wu",
        "welcome": "welcome mail sent to acct-wu",
        "tips": "tips sent to acct-wu",
    }
    assert [(step["kind"], step["name"]) for step in run["steps"]] == EXPECTED_STEPS
    # and the same trigger again (a retry) answers the same run at once, starting nothing
    again = stack.api.post(
        "/v1/runs?wait=30s",
        json={"workflow": "onboarding", "payload": {"name": "Wu"}, "run_id": run["run_id"]},
    )
    assert (again.status_code, again.json()["duplicate"], again.json()["output"]) == (200, True, run["output"])
    assert stack.step_counts()[f"{run['run_id']}:create-account"] == 1


def sse_messages(response: httpx.Response) -> Iterator[dict[str, str]]:
    """The server-sent events of a streamed response, as their fields (comments left out)."""
    fields: dict[str, str] = {}
    for line in response.iter_lines():
        if not line:
            if fields:
                yield fields
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value


def test_a_followed_run_streams_every_event_of_its_history_in_order_and_ends(stack: Stack) -> None:
    # given a run just triggered, its first events not necessarily indexed yet
    run_id = stack.trigger({"name": "Xi", "sleep_seconds": 1})

    # when a client follows its history as server-sent events
    with stack.api.stream("GET", f"/v1/runs/{run_id}/history/stream", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        found = list(sse_messages(response))  # the response ends by itself: the run ends

    # then it got every event of the history, in order, each with its seq as id, and the end
    events = [json.loads(message["data"]) for message in found if "id" in message]
    assert events == stack.history(run_id)
    assert [int(message["id"]) for message in found[:-1]] == list(range(1, len(events) + 1))
    assert events[-1]["type"] == "RunCompleted"
    assert completed_steps(events) == EXPECTED_STEPS
    assert found[-1]["event"] == "end"
    assert json.loads(found[-1]["data"])["status"] == "completed"
    # and a client that lost its connection after the third event resumes after it
    with stack.api.stream(
        "GET", f"/v1/runs/{run_id}/history/stream", headers={"Last-Event-ID": "3"}, timeout=30
    ) as response:
        resumed = [json.loads(message["data"]) for message in sse_messages(response) if "id" in message]
    assert resumed == events[3:]


def test_trigger_with_the_same_run_id_starts_one_run(stack: Stack) -> None:
    # given a run started with a caller-chosen id
    run_id = stack.trigger({"name": "Bo", "sleep_seconds": 0}, run_id="order-42")
    stack.wait_for_status(run_id, "completed")

    # when the same id is triggered again
    response = stack.api.post("/v1/runs", json={"workflow": "onboarding", "payload": {"name": "Bo"}, "run_id": run_id})

    # then it is reported as a duplicate and no step runs again
    assert response.status_code == 200
    assert response.json()["run_id"] == run_id
    assert response.json()["duplicate"] is True
    assert response.json()["run"]["status"] == "completed"
    assert stack.step_counts()[f"{run_id}:create-account"] == 1
    assert sum(1 for event in stack.history(run_id) if event["type"] == "RunStarted") == 1


def test_bad_triggers_get_clear_4xx_and_start_nothing(stack: Stack) -> None:
    # unknown workflow
    response = stack.api.post("/v1/runs", json={"workflow": "nope", "payload": {}})
    assert response.status_code == 404
    assert response.json()["error"] == "unknown_workflow"
    assert "nope" in response.json()["message"]
    # malformed JSON
    response = stack.api.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"] == "bad_request"
    # oversized payload
    response = stack.api.post("/v1/runs", json={"workflow": "onboarding", "payload": "x" * 2_000_000})
    assert response.status_code == 413
    # a field of the wrong type
    response = stack.api.post("/v1/runs", json={"workflow": "onboarding", "retries": "many"})
    assert response.status_code == 422
    assert "retries" in response.json()["message"]
    # and none of them left a run behind
    assert stack.api.get("/v1/runs", params={"workflow": "nope"}).json()["runs"] == []


def test_payload_rejected_by_the_workflow_fails_the_run_with_the_reason(stack: Stack) -> None:
    # given a payload the workflow's pydantic model refuses (no name)
    run_id = stack.trigger({"sleep_seconds": 0})

    # then the run fails at once (a 422 from the endpoint is not worth retrying), reason recorded
    run = stack.wait_for_status(run_id, ("failed", "completed"))
    assert run["status"] == "failed"
    assert "name" in run["error"]["message"]
    failures = [event for event in stack.history(run_id) if event["type"] == "StepFailed"]
    assert len(failures) == 1
    assert failures[0]["retry_at_ms"] is None
    assert failures[0]["retryable"] is False


def _cli(stack: Stack, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{stack.api_port}"}
    command = [sys.executable, "-m", "stepstream.cli", *arguments]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=90)


def test_cli_says_a_4xx_answer_is_not_retried_rather_than_out_of_retries(stack: Stack) -> None:
    # given a run asked to retry, whose endpoint answers 404 (a workflow name the app does not serve)
    url = stack.workflow_url.rsplit("/", 1)[0] + "/no-such-workflow"
    triggered = _cli(stack, "trigger", "onboarding", "--url", url, "--retries", "1", "--wait", "--timeout", "60")
    assert triggered.returncode == 1, triggered.stderr
    run_id = triggered.stdout.strip()
    # then it failed at once, and its history says why no retry was made
    history = _cli(stack, "runs", "history", run_id)
    [failed] = [line for line in history.stdout.splitlines() if "StepFailed" in line]
    assert "endpoint answered 404" in failed
    assert "not retried: a 4xx answer is final" in failed, failed
    assert "no retry left" not in history.stdout


def test_cli_lists_a_run_waiting_out_its_delay_as_scheduled(stack: Stack) -> None:
    # given a run triggered to start in an hour
    triggered = _cli(stack, "trigger", "onboarding", "--payload", '{"name": "Ed"}', "--delay", "1h")
    assert triggered.returncode == 0, triggered.stderr
    run_id = triggered.stdout.strip()
    # then it is listed as scheduled (not running), with the time it starts, and --status finds it
    run = stack.wait_for_status(run_id, "scheduled", timeout=30)
    assert run["wake_at_ms"] >= run["created_at_ms"] + 3_590_000
    listed = _cli(stack, "runs", "list", "--status", "scheduled")
    [row] = [line for line in listed.stdout.splitlines() if run_id in line]
    assert "scheduled" in row.split()
    # and cancelling it leaves it cancelled before it ever ran
    assert _cli(stack, "cancel", run_id).returncode == 0
    stack.wait_for_status(run_id, "cancelled", timeout=30)
    assert [event["type"] for event in stack.history(run_id)] == ["RunStarted", "StepScheduled", "RunCancelled"]


def test_cli_triggers_a_run_and_watches_it_to_completion(stack: Stack) -> None:
    # given the engine's api
    env = {**stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{stack.api_port}"}

    # when a newcomer triggers the example from the CLI and watches it
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream.cli",
            "trigger",
            "onboarding",
            "--payload",
            '{"name": "Cy", "sleep_seconds": 0.5}',
            "--watch",
            "--timeout",
            "60",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )

    # then it prints the run id and every event until the run completes
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    run_id = lines[0].strip()
    assert run_id.startswith("run_")
    assert "RunStarted" in lines[1]
    assert "RunCompleted" in lines[-1]
    assert "tips sent to acct-cy" in lines[-1]
    assert sum("StepCompleted" in line for line in lines) == 4
    # and `runs history` prints the same history
    history = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "runs", "history", run_id], env=env, capture_output=True, text=True
    )
    assert history.stdout.splitlines() == lines[1:]


def test_cli_trigger_wait_prints_the_runs_output(stack: Stack) -> None:
    env = {**stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{stack.api_port}"}

    payload = '{"name": "Di", "sleep_seconds": 0.2}'
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepstream.cli",
            "trigger",
            "onboarding",
            "--payload",
            payload,
            "--wait",
            "--timeout",
            "60",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )

    assert result.returncode == 0, result.stderr
    run_id, output = result.stdout.split("\n", 1)
    assert run_id.startswith("run_")
    assert json.loads(output) == {
        "account": "acct-di",
        "welcome": "welcome mail sent to acct-di",
        "tips": "tips sent to acct-di",
    }


def test_cli_reports_a_bad_trigger_clearly(stack: Stack) -> None:
    env = {**stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{stack.api_port}"}
    result = subprocess.run(
        [sys.executable, "-m", "stepstream.cli", "trigger", "no-such-workflow"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "404" in result.stderr
    assert "no-such-workflow" in result.stderr


def test_the_example_order_reserves_in_parallel_calls_out_and_waits_for_its_payment(stack: Stack) -> None:
    # given an order run of the example app (the README's second demo)
    order_id = uuid.uuid4().hex[:8]
    url = stack.workflow_url.rsplit("/", 1)[0] + "/order"
    run_id = stack.trigger({"order_id": order_id, "items": ["book", "lamp", "mug"]}, workflow="order", url=url)

    # when it waits for its payment, and the payment service notifies it
    stack.wait_for_status(run_id, "waiting", timeout=60)
    response = stack.api.post(f"/v1/events/payment-{order_id}/notify", json={"data": {"amount": 30}})
    assert response.status_code == 202
    assert response.json()["waiting"] == [run_id]

    # then it ships, having reserved every item once, in parallel deliveries
    run = stack.wait_for_status(run_id, "completed", timeout=60)
    assert run["output"] == {
        "status": "shipped",
        "reservations": ["book reserved", "lamp reserved", "mug reserved"],
        "payment": {"amount": 30},
        "shipping": "shipped for 7.5",
    }
    counts = stack.step_counts()
    assert [counts[f"{run_id}:reserve-{item}"] for item in ("book", "lamp", "mug")] == [1, 1, 1]
    assert counts[f"{run_id}:ship"] == 1
    branches = [event for event in stack.history(run_id) if event["type"] == "StepScheduled" and event["execute_only"]]
    assert len(branches) == 3
