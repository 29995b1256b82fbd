"""The protocol's combinations, as docs/protocol.md says they behave: an engine that goes on with
deliveries and offers sessions, with an SDK that keeps them or not, and an engine that offers none.
In every one, each step is durable before the next runs (each recorded once, each body run once);
only with both is a request small whatever the run's length."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

APPS = Path(__file__).resolve().parents[1] / "apps"
STEPS = 40


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path_factory.mktemp("combinations"))
    stack.create_topics()
    stack.start("projector", "scheduler", "api")
    yield stack
    stack.stop()


@pytest.mark.parametrize(
    ("engine_sessions", "sdk_sessions", "small"),
    [
        pytest.param("1", "1", True, id="both keep sessions"),
        pytest.param("1", "0", False, id="an SDK without sessions"),
        pytest.param("0", "1", False, id="an engine without sessions"),
    ],
)
def test_each_step_is_durable_and_run_once_in_every_combination(
    stack: Stack, tmp_path: Path, engine_sessions: str, sdk_sessions: str, small: bool
) -> None:
    counts = tmp_path / "counts.txt"
    stack.env |= {"STEPSTREAM_SESSIONS": engine_sessions, "HOTPATH_SESSIONS": sdk_sessions}
    stack.env["HOTPATH_COUNTS_FILE"] = str(counts)
    stack.start("executor")
    port = stack.start_app("hotpath", APPS, "hotpath:app")
    try:
        run_id = f"combination-{engine_sessions}{sdk_sessions}"
        url = f"http://127.0.0.1:{port}/workflows/steps"
        response = stack.api.post(
            "/v1/runs", json={"workflow": "steps", "url": url, "payload": {"steps": STEPS}, "run_id": run_id}
        )
        assert response.status_code == 202, response.text

        stack.wait_for_status(run_id, "completed", timeout=120)

        history = stack.history(run_id)
        assert [event["step_index"] for event in history if event["type"] == "StepCompleted"] == list(range(STEPS))
        # one delivery: the executor went on with it, step after step, in every combination
        assert [event["type"] for event in history].count("StepScheduled") == 1
        lines = counts.read_text().splitlines()
        assert Counter(int(line.split(":")[1]) for line in lines) == Counter(range(STEPS))
        largest = httpx.get(f"http://127.0.0.1:{port}/stats", timeout=5).json()["largest_request_body"]
        # 40 results replayed take ~1.5 KB; a resume, ~200 bytes
        assert (largest < 600) is small, largest
    finally:
        stack.kill("executor")
        stack.kill("hotpath")
