"""Every workflow primitive through the real engine: a Kafka broker, the four services as processes,
and a workflow app on loopback HTTP (tests/apps/primitives.py), whose third-party endpoints the
engine's ``call`` steps reach."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstream.avro import Codec
from stepstream.core import RunState
from stepstream.core.retention import COMPACTED_PAYLOAD
from tests.helpers import wait_until
from tests.stack import Stack, read_topic

CODEC = Codec()

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"


class Primitives:
    def __init__(self, stack: Stack, port: int) -> None:
        self.stack = stack
        self.base = f"http://127.0.0.1:{port}"
        self.app = httpx.Client(base_url=self.base, timeout=10)

    def trigger(self, workflow: str, payload: Any, **options: Any) -> str:
        body = {"workflow": workflow, "url": f"{self.base}/workflows/{workflow}", "payload": payload, **options}
        response = self.stack.api.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.app.get("/stats").json()
        return stats

    def executions(self, run_id: str, step: str) -> int:
        count: int = self.stats()["executions"].get(f"{run_id}/{step}", 0)
        return count

    def events(self, run_id: str, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.stack.history(run_id) if event["type"] == kind]

    def notify(self, event_id: str, data: Any) -> dict[str, Any]:
        response = self.stack.api.post(f"/v1/events/{event_id}/notify", json={"data": data})
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def waiting_runs(self, event_id: str) -> set[str]:
        response = self.stack.api.get(f"/v1/events/{event_id}/waiters")
        assert response.status_code == 200, response.text
        return {waiter["run_id"] for waiter in response.json()["waiters"]}

    def cancel(self, run_id: str) -> None:
        response = self.stack.api.post(f"/v1/runs/{run_id}/cancel", json={"reason": "test"})
        assert response.status_code == 202, response.text


@pytest.fixture(scope="module")
def primitives(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Primitives]:
    stack = Stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("primitives"),
        STEPSTREAM_DEFAULT_RETRY_BASE_MS="100",
        STEPSTREAM_NOTIFY_BUFFER_MS="30000",
        # Every run compacted about a second after it ends, and two runs in the projector's memory: the
        # primitives (duplicates, children re-attaching, the dead-letter list) must not notice.
        STEPSTREAM_ENDED_RUN_RETENTION_MS="0",
        STEPSTREAM_PROJECTOR_CACHE_RUNS="2",
    )
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api")
    port = stack.start_app("primitives", APPS, "primitives:app")
    primitives = Primitives(stack, port)
    yield primitives
    primitives.app.close()
    stack.stop()


def _event_id() -> str:
    return f"order-{uuid.uuid4().hex[:8]}"


# -- call ------------------------------------------------------------------------------------------


def test_call_waits_for_a_slow_answer_without_holding_the_endpoint(primitives: Primitives) -> None:
    run_id = primitives.trigger("caller", {"url": f"{primitives.base}/thirdparty/slow?ms=2000", "timeout_s": 30})

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)

    assert run["output"] == {"status": 200, "body": {"slept_ms": 2000}, "error": None}
    started = primitives.events(run_id, "CallStarted")[0]
    completed = next(e for e in primitives.events(run_id, "StepCompleted") if e["kind"] == "call")
    assert completed["at_ms"] - started["at_ms"] >= 2000
    # the workflow endpoint answered at once and was called again only once the answer was in
    scheduled = primitives.events(run_id, "StepScheduled")
    assert [event["at_ms"] >= completed["at_ms"] for event in scheduled] == [False, True]


def test_call_is_retried_on_500_and_resumes_with_the_success(primitives: Primitives) -> None:
    key = uuid.uuid4().hex[:8]
    payload = {"url": f"{primitives.base}/thirdparty/flaky/{key}", "retries": 3, "retry_delay": "100"}
    run_id = primitives.trigger("caller", payload)

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)

    assert run["output"]["status"] == 200
    assert run["output"]["body"] == {"attempt": 3}
    retried = primitives.events(run_id, "CallRetried")
    assert [(event["attempt"], event["status"]) for event in retried] == [(1, 500), (2, 500)]
    assert primitives.stats()["flaky"][key] == 3


def test_call_answered_404_is_a_result_not_a_failure(primitives: Primitives) -> None:
    run_id = primitives.trigger("caller", {"url": f"{primitives.base}/thirdparty/missing", "retries": 3})

    run = primitives.stack.wait_for_status(run_id, ("completed", "failed"), timeout=60)

    assert run["status"] == "completed"
    assert run["output"]["status"] == 404
    assert run["output"]["body"] == {"error": "no such thing"}
    assert primitives.events(run_id, "CallRetried") == []  # a 404 is not worth retrying
    assert primitives.executions(run_id, "after-call") == 1


# -- wait for event / notify ---------------------------------------------------------------------


def test_a_notification_just_before_the_wait_starts_still_reaches_the_run(primitives: Primitives) -> None:
    event_id = _event_id()
    run_id = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 60, "pause_s": 3})
    primitives.stack.wait_for_status(run_id, "sleeping", timeout=30)

    # notified while the run still sleeps before its wait: nobody waits yet, so it is kept
    answer = primitives.notify(event_id, {"paid": True})
    assert answer["waiting"] == []

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)
    assert run["output"] == {"timeout": False, "data": {"paid": True}}


def test_a_wait_times_out_and_a_later_notification_does_not_reach_it(primitives: Primitives) -> None:
    event_id = _event_id()
    run_id = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 1})

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)
    assert run["output"] == {"timeout": True, "data": None}
    assert len(primitives.events(run_id, "WaitTimedOut")) == 1

    answer = primitives.notify(event_id, {"late": True})
    assert answer["waiting"] == []
    assert primitives.events(run_id, "EventReceived") == []


def test_two_runs_waiting_on_one_event_id_both_wake(primitives: Primitives) -> None:
    event_id = _event_id()
    first = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 120})
    second = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 120})
    wait_until(lambda: primitives.waiting_runs(event_id) == {first, second}, timeout=60)

    answer = primitives.notify(event_id, "go")

    assert set(answer["waiting"]) == {first, second}
    for run_id in (first, second):
        run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)
        assert run["output"] == {"timeout": False, "data": "go"}


def test_a_workflow_notifies_another_and_learns_who_was_waiting(primitives: Primitives) -> None:
    event_id = _event_id()
    waiting = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 120})
    wait_until(lambda: primitives.waiting_runs(event_id) == {waiting}, timeout=60)

    notifying = primitives.trigger("notifier", {"event_id": event_id, "data": {"from": "workflow"}})

    assert primitives.stack.wait_for_status(notifying, "completed", timeout=60)["output"] == [waiting]
    run = primitives.stack.wait_for_status(waiting, "completed", timeout=60)
    assert run["output"] == {"timeout": False, "data": {"from": "workflow"}}


# -- invoke ----------------------------------------------------------------------------------------


def test_a_parent_invokes_a_child_that_invokes_a_grandchild(primitives: Primitives) -> None:
    run_id = primitives.trigger("chain", {"level": 0, "depth": 2})

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=90)

    assert run["output"] == {
        "level": 0,
        "child_status": "completed",
        "child": {"level": 1, "child_status": "completed", "child": {"level": 2}, "child_error": None},
        "child_error": None,
    }
    child = primitives.stack.run(f"{run_id}.0")
    assert child is not None
    assert child["status"] == "completed"


def test_a_failing_child_is_reported_to_its_parent(primitives: Primitives) -> None:
    run_id = primitives.trigger("chain", {"level": 0, "depth": 1, "fail_at": 1})

    run = primitives.stack.wait_for_status(run_id, ("completed", "failed"), timeout=90)

    assert run["status"] == "completed"
    assert run["output"]["child_status"] == "failed"
    assert run["output"]["child_error"]["type"] == "NonRetryableError"
    assert "level 1 broke" in run["output"]["child_error"]["message"]


# -- parallel steps --------------------------------------------------------------------------------


def test_a_ten_way_gather_runs_its_branches_concurrently_and_fans_in_once(primitives: Primitives) -> None:
    run_id = primitives.trigger("fanout", {"width": 10})

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=90)

    assert run["output"] == sum(n * n for n in range(10))
    assert [primitives.executions(run_id, f"branch-{n}") for n in range(10)] == [1] * 10
    assert primitives.executions(run_id, "after-fanin") == 1
    assert primitives.stats()["max_running"] >= 2  # the endpoint saw branches overlap
    branches = [e for e in primitives.events(run_id, "StepScheduled") if e["execute_only"]]
    assert sorted(event["step_index"] for event in branches) == list(range(10))


# -- cancel ----------------------------------------------------------------------------------------


def test_cancel_during_a_sleep_stops_the_run(primitives: Primitives) -> None:
    run_id = primitives.trigger("sleeper", {"sleep_s": 2})
    primitives.stack.wait_for_status(run_id, "sleeping", timeout=30)

    primitives.cancel(run_id)

    primitives.stack.wait_for_status(run_id, "cancelled", timeout=30)
    time.sleep(3)  # past the sleep's wake time: nothing may happen
    assert primitives.executions(run_id, "after-sleep") == 0
    assert [e for e in primitives.events(run_id, "StepCompleted") if e["kind"] == "sleep"] == []


def test_cancel_during_a_wait_stops_the_run(primitives: Primitives) -> None:
    event_id = _event_id()
    run_id = primitives.trigger("waiter", {"event_id": event_id, "timeout_s": 120})
    wait_until(lambda: primitives.waiting_runs(event_id) == {run_id}, timeout=60)

    primitives.cancel(run_id)

    primitives.stack.wait_for_status(run_id, "cancelled", timeout=30)
    wait_until(lambda: primitives.waiting_runs(event_id) == set(), timeout=30)
    assert primitives.notify(event_id, "too late")["waiting"] == []
    assert primitives.executions(run_id, "after-wait") == 0


def test_cancel_during_an_in_flight_call_ignores_its_late_answer(primitives: Primitives) -> None:
    run_id = primitives.trigger("caller", {"url": f"{primitives.base}/thirdparty/hang?ms=3000", "timeout_s": 30})
    wait_until(lambda: primitives.events(run_id, "CallStarted") != [], timeout=30)

    primitives.cancel(run_id)

    primitives.stack.wait_for_status(run_id, "cancelled", timeout=30)
    # the call's answer arrives after the cancel: recorded as ignored, never applied
    wait_until(lambda: primitives.events(run_id, "ResultIgnored") != [], timeout=30)
    assert "call" in primitives.events(run_id, "ResultIgnored")[0]["what"]
    assert primitives.executions(run_id, "after-call") == 0
    assert primitives.stack.run(run_id)["status"] == "cancelled"  # type: ignore[index]


# -- failure handling and the dead-letter list ---------------------------------------------------


def test_a_run_out_of_retries_calls_its_failure_handler_once_and_resumes_from_the_dead_letter_list(
    primitives: Primitives, kafka_bootstrap: str
) -> None:
    primitives.app.post("/control/broken/on")
    try:
        run_id = primitives.trigger("fragile", {}, retries=1, retry_delay="100")
        primitives.stack.wait_for_status(run_id, "failed", timeout=60)
        wait_until(lambda: primitives.events(run_id, "FailureHandled") != [], timeout=30)
        assert primitives.stats()["failure_calls"].get(run_id) == 1
        listed = primitives.stack.api.get("/v1/deadletter").json()["runs"]
        assert run_id in {run["run_id"] for run in listed}
    finally:
        primitives.app.post("/control/broken/off")
    # while it is in the dead-letter list, the projector keeps it whole (a run that ended is compacted
    # a second after, in these tests: one that completed is)
    done = primitives.trigger("fragile", {})
    primitives.stack.wait_for_status(done, "completed", timeout=60)
    wait_until(lambda: run_states(primitives.stack, kafka_bootstrap)[done].payload == COMPACTED_PAYLOAD, timeout=30)
    assert run_states(primitives.stack, kafka_bootstrap)[run_id].payload != COMPACTED_PAYLOAD

    response = primitives.stack.api.post(f"/v1/deadletter/{run_id}/resume")
    assert response.status_code == 202, response.text

    run = primitives.stack.wait_for_status(run_id, "completed", timeout=60)
    assert run["output"] == "fixed"
    assert primitives.executions(run_id, "prepare") == 1  # resumed from the failed step, not the start
    assert primitives.executions(run_id, "flaky") == 3  # two failed attempts, then the fixed one
    assert primitives.stats()["failure_calls"].get(run_id) == 1
    listed = primitives.stack.api.get("/v1/deadletter").json()["runs"]
    assert run_id not in {run["run_id"] for run in listed}


def run_states(stack: Stack, bootstrap: str) -> dict[str, RunState]:
    """The latest state of each run on the stack's runs topic (its results aside)."""
    latest: dict[str, RunState] = {}
    for record in read_topic(bootstrap, stack.prefix + "runs", 3):
        key = bytes(record.key).decode()
        if "/" not in key and record.value is not None:
            latest[key] = CODEC.decode(record.value, expected=(RunState,))
    return latest


# -- bad input -------------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error_and_nothing_else_is_affected(primitives: Primitives) -> None:
    good = primitives.trigger("caller", {"url": f"{primitives.base}/thirdparty/slow?ms=10"})
    api = primitives.stack.api

    # an event id nobody waits on: accepted, and the answer says so
    unknown = api.post(f"/v1/events/{_event_id()}/notify", json={"data": 1})
    assert unknown.status_code == 202
    assert unknown.json()["waiting"] == []
    assert "No run is waiting" in unknown.json()["message"]

    # an invalid duration, an invalid retry rule, an oversized payload
    invalid = api.post("/v1/runs", json={"workflow": "caller", "url": f"{primitives.base}/workflows/caller",
                                         "delay": "soon"})  # fmt: skip
    assert invalid.status_code == 422
    assert "duration" in invalid.json()["message"]
    rule = api.post("/v1/runs", json={"workflow": "caller", "url": f"{primitives.base}/workflows/caller",
                                      "retry_delay": "import os"})  # fmt: skip
    assert rule.status_code == 422
    too_big = api.post("/v1/runs", json={"workflow": "caller", "payload": "x" * 2_000_000})
    assert too_big.status_code == 413

    # a workflow asking for an invalid duration fails with the reason
    bad = primitives.trigger("bad-duration", {}, retries=0)
    run = primitives.stack.wait_for_status(bad, "failed", timeout=60)
    assert "Expected a sleep of zero or more seconds" in run["error"]["message"]

    assert primitives.stack.wait_for_status(good, "completed", timeout=60)["output"]["status"] == 200
