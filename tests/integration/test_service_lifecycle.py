"""The services as the container image runs them: `stepstream <service>` processes against the real
broker, their health endpoints, and a graceful stop on SIGTERM (the executor finishing the delivery
in hand rather than leaving it to be made again)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import wait_until
from tests.stack import Stack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"
SERVICES = ("projector", "scheduler", "executor", "api")
STEPSTREAM = Path(sys.executable).with_name("stepstream")  # the console script, the image's ENTRYPOINT


def test_each_service_command_starts_gets_ready_and_stops_cleanly_on_sigterm(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    stack = Stack(kafka_bootstrap, tmp_path)
    stack.create_topics()
    ports = {name: stack.api_port if name == "api" else free_port() for name in SERVICES}
    try:
        for name in SERVICES:
            env = {**stack.env, "STEPSTREAM_HEALTH_PORT": str(ports[name])}
            with (tmp_path / f"{name}.log").open("ab") as output:
                stack.processes[name] = subprocess.Popen(
                    [str(STEPSTREAM), name], env=env, stdout=output, stderr=subprocess.STDOUT
                )
        for name in SERVICES:
            stack.wait_for_http(f"http://127.0.0.1:{ports[name]}/readyz")
            live = httpx.get(f"http://127.0.0.1:{ports[name]}/healthz", timeout=5)
            assert (live.status_code, live.json()) == (200, {"status": "ok"}), name

        processes = {name: stack.processes.pop(name) for name in SERVICES}
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=30) for name, process in processes.items()}
    finally:
        stack.stop()

    assert codes == dict.fromkeys(SERVICES, 0), stack.logs()
    for name in SERVICES:
        log = (tmp_path / f"{name}.log").read_text()
        assert f"{name} stopped" in log, log[-2000:]
        assert "Traceback" not in log, log[-2000:]


def test_an_executor_stopped_mid_delivery_finishes_it_instead_of_leaving_it_to_be_made_again(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    stack = Stack(kafka_bootstrap, tmp_path)
    stack.create_topics()
    try:
        stack.start("projector", "scheduler", "executor", "api")
        port = stack.start_app("flow", APPS, "flow:app")
        base, tag = f"http://127.0.0.1:{port}", "drain"
        body = {"workflow": "steady", "url": f"{base}/workflows/steady?tag={tag}", "payload": {"ms": [3000]}}
        response = stack.api.post("/v1/runs", json=body)
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]

        def requests() -> list[dict[str, float | None]]:
            answer: list[dict[str, float | None]] = httpx.get(f"{base}/intervals", params={"tag": tag}).json()
            return answer

        # The step's 3-second body is running at the endpoint: stop the executor now.
        assert wait_until(lambda: requests() or None, 60), stack.logs()
        executor = stack.processes.pop("executor")
        stopping = time.monotonic()
        executor.send_signal(signal.SIGTERM)
        code = executor.wait(timeout=30)
        stopped = time.monotonic()

        stack.start("executor:2")  # the run goes on with a new executor
        stack.wait_for_status(run_id, "completed", timeout=60)
        made = requests()
        history = stack.history(run_id)
    finally:
        stack.stop()

    assert code == 0
    # It waited for the delivery in hand (about 3 s), and did not hand it back: the step ran once.
    assert stopped - stopping >= 1.5, stopped - stopping
    completed = [event for event in history if event["type"] == "StepCompleted"]
    assert [event["name"] for event in completed] == ["step-0"], history
    assert len(made) == 1, made  # one delivery ran the step and ended the run; none was made again
    end = made[0]["end"]
    assert end is not None
    assert end <= stopped
    log = (tmp_path / "executor.log").read_text()
    assert "waiting up to 20000 ms for 1 deliveries" in log, log[-2000:]
