"""Failures through the real engine: endpoint outages, timeouts and unreachable endpoints are retried
with backoff up to the configured count; a non-retryable error fails the run at once; bad input on
the Kafka triggers topic is dead-lettered with its reason while good input goes on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from stepstream.avro import Codec, DeadLetter, TriggerRequest
from stepstream.core import RecordedStep, RunState, fold
from stepstream.projector.snapshots import Assembly, parse_step_key
from tests.helpers import wait_until
from tests.stack import Stack, free_port, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("failures")
    stack = Stack(
        kafka_bootstrap,
        directory,
        STEPSTREAM_EXECUTOR_TIMEOUT_MS="1000",
        STEPSTREAM_DEFAULT_RETRY_BASE_MS="100",
    )
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api")
    stack.failures_port = stack.start_app("failures", APPS, "failures:app")  # type: ignore[attr-defined]
    yield stack
    stack.stop()


def url(stack: Stack, mode: str, count: int, workflow: str) -> str:
    return f"http://127.0.0.1:{stack.failures_port}/{mode}/{count}/{workflow}"  # type: ignore[attr-defined]


def trigger(stack: Stack, endpoint: str, workflow: str, **options: Any) -> str:
    response = stack.api.post("/v1/runs", json={"workflow": workflow, "url": endpoint, "payload": {}, **options})
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def events_of(stack: Stack, run_id: str, kind: str) -> list[dict[str, Any]]:
    return [event for event in stack.history(run_id) if event["type"] == kind]


@pytest.mark.parametrize(("mode", "reason"), [("http500", "endpoint answered 500"), ("slow", "did not answer")])
def test_outages_and_timeouts_are_retried_with_backoff_then_succeed(stack: Stack, mode: str, reason: str) -> None:
    # given an endpoint that fails the first two deliveries of each run
    run_id = trigger(stack, url(stack, mode, 2, "steady"), "steady", retries=3, retry_base_ms=200)

    # then the run completes after two failed attempts, each recorded with its reason
    run = stack.wait_for_status(run_id, "completed", timeout=60)
    assert run["output"] == "one+two"
    failures = events_of(stack, run_id, "StepFailed")
    assert [failure["attempt"] for failure in failures] == [1, 2]
    assert all(reason in failure["error"]["message"] for failure in failures)
    # and the backoff doubles: the second retry waits twice the first
    assert [failure["retry_at_ms"] - failure["at_ms"] for failure in failures] == [200, 400]
    scheduled = events_of(stack, run_id, "StepScheduled")
    assert [event["attempt"] for event in scheduled[:3]] == [1, 2, 3]


def test_retries_exhausted_fail_the_run_with_the_reason(stack: Stack) -> None:
    # given an endpoint that is always down
    run_id = trigger(stack, url(stack, "http500", 1_000, "steady"), "steady", retries=2, retry_base_ms=50)

    # then the run fails after 1 + 2 attempts, and says why
    run = stack.wait_for_status(run_id, ("failed", "completed"), timeout=60)
    assert run["status"] == "failed"
    assert run["error"]["type"] == "HTTP500"
    assert "simulated outage" in run["error"]["message"]
    assert "gave up after 3 attempts" in run["error"]["message"]
    assert len(events_of(stack, run_id, "StepFailed")) == 3
    assert events_of(stack, run_id, "RunFailed")[0]["error"] == run["error"]


def test_an_unreachable_endpoint_is_retried_then_fails(stack: Stack) -> None:
    closed = f"http://127.0.0.1:{free_port()}/steady"
    run_id = trigger(stack, closed, "steady", retries=1, retry_base_ms=50)

    run = stack.wait_for_status(run_id, ("failed", "completed"), timeout=60)
    assert run["status"] == "failed"
    assert run["error"]["type"] == "ConnectionError"
    assert len(events_of(stack, run_id, "StepFailed")) == 2


def test_a_non_retryable_error_fails_the_run_at_once(stack: Stack) -> None:
    run_id = trigger(stack, url(stack, "ok", 0, "refuses"), "refuses", retries=5)

    run = stack.wait_for_status(run_id, ("failed", "completed"), timeout=60)
    assert run["status"] == "failed"
    assert run["error"] == {"type": "NonRetryableError", "message": "card declined: do not retry"}
    # the step before it is kept; the failing step was tried once
    assert [event["name"] for event in events_of(stack, run_id, "StepCompleted")] == ["prepare"]
    failures = events_of(stack, run_id, "StepFailed")
    assert len(failures) == 1
    assert failures[0]["retry_at_ms"] is None
    assert failures[0]["retryable"] is False  # so the history says "not retried", not "no retry left"


def test_an_exception_in_a_step_is_retried_and_then_fails_the_run(stack: Stack) -> None:
    run_id = trigger(stack, url(stack, "ok", 0, "crashes"), "crashes", retries=1, retry_base_ms=50)

    run = stack.wait_for_status(run_id, ("failed", "completed"), timeout=60)
    assert run["status"] == "failed"
    assert run["error"]["type"] == "RuntimeError"
    assert run["error"]["message"].startswith("disk full")
    assert len(events_of(stack, run_id, "StepFailed")) == 2


def test_kafka_triggers_start_runs_and_malformed_records_are_dead_lettered(stack: Stack, kafka_bootstrap: str) -> None:
    codec = Codec()
    good = TriggerRequest(
        workflow="steady", url=url(stack, "ok", 0, "steady"), payload='{"from":"kafka"}', run_id="kafka-run-1"
    )
    no_id = TriggerRequest(workflow="steady", url=url(stack, "ok", 0, "steady"), payload="{}")

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(stack.prefix + "triggers", b"\xc3\x01garbage", key=b"bad-1")
            await producer.send_and_wait(stack.prefix + "triggers", b'{"workflow": "json is not avro"}', key=b"bad-2")
            await producer.send_and_wait(stack.prefix + "triggers", codec.encode(good), key=b"kafka-run-1")
            await producer.send_and_wait(stack.prefix + "triggers", codec.encode(no_id))
        finally:
            await producer.stop()

    # given two malformed records followed by two good ones on the public triggers topic
    asyncio.run(publish())

    # then the good ones start runs (the engine names the one without an id) that complete
    run = stack.wait_for_status("kafka-run-1", "completed", timeout=60)
    assert run["payload"] == {"from": "kafka"}

    def engine_named_runs() -> list[dict[str, Any]]:
        runs = stack.api.get("/v1/runs", params={"workflow": "steady", "limit": 500}).json()["runs"]
        return [run for run in runs if run["payload"] == {} and run["run_id"].startswith("run_")]

    wait_until(lambda: any(run["status"] == "completed" for run in engine_named_runs()), timeout=60)
    # and each malformed record is in the dead-letter topic with its reason
    letters = [
        codec.decode(record.value, expected=(DeadLetter,))
        for record in read_topic(kafka_bootstrap, stack.prefix + "deadletter")
    ]
    by_key = {letter.key: letter for letter in letters if letter.source_topic == stack.prefix + "triggers"}
    assert set(by_key) >= {b"bad-1", b"bad-2"}
    assert by_key[b"bad-2"].value == b'{"workflow": "json is not avro"}'
    assert by_key[b"bad-2"].reason.startswith("Expected an Avro single-object encoding")
    assert by_key[b"bad-1"].consumer == "projector"


def test_replaying_a_runs_events_gives_exactly_its_snapshot(stack: Stack, kafka_bootstrap: str) -> None:
    # given a run that failed once and then completed
    run_id = trigger(stack, url(stack, "http500", 1, "steady"), "steady", retry_base_ms=50)
    stack.wait_for_status(run_id, "completed", timeout=60)

    # when its events are folded through evolve
    codec = Codec()
    events = [
        codec.decode(r.value) for r in read_topic(kafka_bootstrap, stack.prefix + "events") if r.key == run_id.encode()
    ]
    # and its snapshot is put together from its parts (its state without results, and each result)
    parts = Assembly()
    for record in read_topic(kafka_bootstrap, stack.prefix + "runs"):
        key = record.key.decode()
        step = parse_step_key(key)
        if key == run_id:
            parts.header(key, codec.decode(record.value, expected=(RunState,)))
        elif step is not None and step[0] == run_id:
            parts.step(*step, codec.decode(record.value, expected=(RecordedStep,)))
    (snapshot,) = parts.states()

    # then the result is exactly the snapshot the projector wrote
    assert fold(events) == snapshot  # type: ignore[arg-type]
    assert snapshot.steps  # its results came from the parts
    assert [event.seq for event in events] == list(range(1, len(events) + 1))  # type: ignore[attr-defined]
