"""Faults injected into the running system: services killed with SIGKILL mid-run, and the whole
stack restarted while a run sleeps."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path)
    stack.create_topics()
    stack.start()
    yield stack
    stack.stop()


def assert_each_step_recorded_once(stack: Stack, run_id: str) -> None:
    history = stack.history(run_id)
    assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
    completed = [(event["step_index"], event["name"]) for event in history if event["type"] == "StepCompleted"]
    assert completed == [(0, "create-account"), (1, "send-welcome"), (2, "wait-before-tips"), (3, "send-tips")]
    assert [event["type"] for event in history].count("RunCompleted") == 1


@pytest.mark.parametrize("service", ["projector", "executor"])
def test_service_killed_mid_run_is_restarted_and_the_run_completes(stack: Stack, service: str) -> None:
    # given runs in the middle of their sleep
    run_ids = [stack.trigger({"name": f"user{index}", "sleep_seconds": 3}) for index in range(3)]
    for run_id in run_ids:
        stack.wait_for_status(run_id, "sleeping", timeout=60)

    # when the service is killed with SIGKILL and started again
    stack.kill(service, signal.SIGKILL)
    time.sleep(0.5)
    stack.start(service)

    # then every run completes, each step recorded exactly once
    for run_id in run_ids:
        stack.wait_for_status(run_id, "completed", timeout=120)
        assert_each_step_recorded_once(stack, run_id)


def test_service_killed_while_steps_are_delivered(stack: Stack) -> None:
    # given many runs being delivered at once
    run_ids = [stack.trigger({"name": f"busy{index}", "sleep_seconds": 0.2}) for index in range(20)]

    # when the executor and then the projector are killed mid-stream
    time.sleep(0.3)
    stack.kill("executor", signal.SIGKILL)
    stack.start("executor")
    time.sleep(0.3)
    stack.kill("projector", signal.SIGKILL)
    stack.start("projector")

    # then all complete and no step is recorded twice
    for run_id in run_ids:
        stack.wait_for_status(run_id, "completed", timeout=120)
        assert_each_step_recorded_once(stack, run_id)


def test_sleeping_run_survives_a_restart_of_the_whole_stack_broker_included(tmp_path: Path) -> None:
    """The stack here has a broker of its own, so that the broker restarts too."""
    from stepstream.kafka import LocalKafka, free_port

    port = free_port()
    kafka = LocalKafka(data_dir=tmp_path / "kafka", port=port, controller_port=free_port())
    kafka.start()
    stack = Stack(kafka.bootstrap_servers, tmp_path / "stack")
    try:
        stack.create_topics()
        stack.start()
        # given a run sleeping
        run_id = stack.trigger({"name": "sleepy", "sleep_seconds": 4})
        stack.wait_for_status(run_id, "sleeping", timeout=60)

        # when every service, the app and the broker stop, and start again after the wake time has passed
        for name in ("api", "executor", "scheduler", "projector", "app"):
            stack.kill(name, signal.SIGTERM)
        kafka.stop()
        time.sleep(4.5)
        kafka.start()
        stack.start()

        # then it wakes and completes, each step once
        stack.wait_for_status(run_id, "completed", timeout=120)
        assert_each_step_recorded_once(stack, run_id)
        assert stack.step_counts()[f"{run_id}:send-tips"] == 1
    finally:
        stack.stop()
        kafka.stop()
