"""The hot path with faults injected: a run of consecutive steps, each durable before the next runs,
through SIGKILLs of the app, the executor and the projector in the middle of it; a run of a thousand
steps whose requests stay small. Real broker, services as processes, the app on loopback."""

from __future__ import annotations

import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from stepstream.kafka.clients import partition_for
from tests.helpers import wait_until
from tests.stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"


class HotPath:
    """The stack and the hot-path app, with what the app's step bodies wrote."""

    def __init__(self, stack: Stack, counts: Path) -> None:
        self.stack = stack
        self.counts = counts
        self.port = stack.start_app("hotpath", APPS, "hotpath:app")

    def restart_app(self) -> None:
        self.stack.processes.pop("hotpath", None)
        self.stack.start_app("hotpath", APPS, "hotpath:app", port=self.port)

    def trigger(self, run_id: str, **payload: Any) -> str:
        url = f"http://127.0.0.1:{self.port}/workflows/steps"
        # Retries enough to outlast an app's restart (2^10 × 100 ms).
        trigger = {"workflow": "steps", "url": url, "payload": payload, "run_id": run_id, "retries": 10}
        response = self.stack.api.post("/v1/runs", json=trigger)
        assert response.status_code == 202, response.text
        return run_id

    def bodies_run(self, run_id: str) -> Counter[int]:
        """How many times each step's body started, by index."""
        lines = self.counts.read_text().splitlines() if self.counts.exists() else []
        return Counter(int(line.split(":")[1]) for line in lines if line.split(":")[0] == run_id)

    def recorded(self, run_id: str) -> list[int]:
        history = self.stack.history(run_id)
        assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
        return [event["step_index"] for event in history if event["type"] == "StepCompleted"]

    def largest_request(self) -> int:
        stats = httpx.get(f"http://127.0.0.1:{self.port}/stats", timeout=5).json()
        return int(stats["largest_request_body"])


@pytest.fixture
def hot(kafka_bootstrap: str, tmp_path: Path) -> Iterator[HotPath]:
    stack = Stack(kafka_bootstrap, tmp_path, STEPSTREAM_DEFAULT_RETRY_BASE_MS="100")
    counts = tmp_path / "hotpath-counts.txt"
    stack.env["HOTPATH_COUNTS_FILE"] = str(counts)
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api")
    yield HotPath(stack, counts)
    stack.stop()


def test_a_step_acknowledged_before_the_app_is_killed_is_never_run_again(hot: HotPath) -> None:
    # given a run whose app dies (SIGKILL) when step 5's body starts: step 4 was durable by then
    run_id = hot.trigger("killed-app", steps=8, kill_at=5)
    wait_until(lambda: hot.stack.processes["hotpath"].poll() is not None, timeout=60)

    # when the app comes back
    hot.restart_app()

    # then the run completes; steps 0-4 ran once each, step 5 once to completion (its first start died
    # before it could write), and every step is recorded once
    hot.stack.wait_for_status(run_id, "completed", timeout=120)
    assert hot.bodies_run(run_id) == Counter(range(8))
    assert hot.recorded(run_id) == list(range(8))


def test_the_executor_killed_in_the_middle_of_a_run_goes_on_from_what_was_reported(hot: HotPath) -> None:
    # given a long run of slow steps under way
    run_id = hot.trigger("killed-executor", steps=30, step_ms=100)
    wait_until(lambda: sum(hot.bodies_run(run_id).values()) >= 8, timeout=60)

    # when the executor is killed with SIGKILL and started again
    hot.stack.kill("executor", signal.SIGKILL)
    hot.stack.start("executor")

    # then the run completes, each step recorded once; only the step in flight at the kill may have run
    # twice: the new executor read back what its predecessor reported and went on after it
    hot.stack.wait_for_status(run_id, "completed", timeout=120)
    assert hot.recorded(run_id) == list(range(30))
    runs = hot.bodies_run(run_id)
    assert set(runs) == set(range(30))
    assert sum(runs.values()) - 30 <= 1, runs


def test_the_projector_killed_in_the_middle_of_a_run_loses_nothing_and_repeats_nothing(hot: HotPath) -> None:
    run_id = hot.trigger("killed-projector", steps=30, step_ms=50)
    wait_until(lambda: sum(hot.bodies_run(run_id).values()) >= 8, timeout=60)

    hot.stack.kill("projector", signal.SIGKILL)
    hot.stack.start("projector")

    # the executor went on meanwhile: the projector's restart is off the steps' path
    hot.stack.wait_for_status(run_id, "completed", timeout=120)
    assert hot.recorded(run_id) == list(range(30))
    assert hot.bodies_run(run_id) == Counter(range(30))


def test_a_thousand_step_run_completes_and_its_requests_stay_small(hot: HotPath) -> None:
    run_id = hot.trigger("long-run", steps=1_000)

    hot.stack.wait_for_status(run_id, "completed", timeout=240)

    assert hot.recorded(run_id) == list(range(1_000))
    assert hot.bodies_run(run_id) == Counter(range(1_000))
    # each request resumes the app's session: no request carries the run's history (1,000 results
    # would take ~40 KB)
    assert hot.largest_request() < 2_000


def test_a_run_of_two_thousand_steps_with_ten_mb_of_results_completes_and_the_next_run_too(hot: HotPath) -> None:
    """A run's size is the sum of its steps, not a record (issue 12): 2,000 results of 5,000 bytes are
    10 MB in all, ten times what a Kafka record holds; each is reported and kept as a record of its own."""
    run_id = hot.trigger("ten-mb", steps=2_000, output_bytes=5_000)
    # a run on the same partition, triggered after it: its commands wait behind the long run's
    same = partition_for(run_id, 3)
    neighbour = next(f"after-{n}" for n in range(1_000) if partition_for(f"after-{n}", 3) == same)
    after = hot.trigger(neighbour, steps=1)

    assert hot.stack.wait_for_status(run_id, ("completed", "failed"), timeout=240)["status"] == "completed"
    assert hot.recorded(run_id) == list(range(2_000))
    assert hot.bodies_run(run_id) == Counter(range(2_000))
    assert hot.largest_request() < 2_000  # the requests resume the session: none carries the results
    hot.stack.wait_for_status(after, "completed", timeout=60)
