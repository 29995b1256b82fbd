"""Api replicas sharing one query store on PostgreSQL (store/postgres.py, decision 0010): real
processes, a real Kafka broker and a real PostgreSQL server (tests/postgres.py).

One replica indexes (it holds the store's lock), the other only reads; both answer the same; a request
waiting on a run in the replica that does not index wakes when the run ends (the indexer's
announcement), not at its deadline; and when the indexing replica dies, the other takes over and
indexes what comes next.
"""

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

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]


def test_two_api_replicas_share_one_store_one_indexes_and_the_other_takes_over(
    kafka_bootstrap: str, tmp_path: Path, postgres_url: str
) -> None:
    stack = Stack(kafka_bootstrap, tmp_path, STEPSTREAM_DATABASE=postgres_url)
    stack.create_topics()
    stack.start()  # the first api indexes: it starts first and takes the lock
    port = free_port()
    env = {
        **stack.env,
        "STEPSTREAM_API_PORT": str(port),
        "STEPSTREAM_HEALTH_PORT": str(free_port()),
        "STEPSTREAM_INSTANCE_ID": stack.instance_id("api:2"),
    }
    with (tmp_path / "api-2.log").open("ab") as log:
        second = subprocess.Popen([sys.executable, "-m", "stepstream.api"], env=env, stdout=log, stderr=log)
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/readyz")
        other = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=stack.api.headers, timeout=60)
        wait_until(lambda: "indexer writes the shared query store" in (tmp_path / "api.log").read_text(), timeout=30)
        assert "indexer writes the shared query store" not in (tmp_path / "api-2.log").read_text()

        # given a run triggered through the indexing replica, waited on through the other
        run_id = stack.trigger({"name": "Ada", "sleep_seconds": 1})
        started = time.monotonic()
        waited = other.get(f"/v1/runs/{run_id}", params={"wait": "50s"})
        # then the wait ends when the run does, long before its deadline, and both replicas agree
        assert waited.status_code == 200, waited.text
        assert waited.json()["status"] == "completed"
        assert time.monotonic() - started < 40
        assert stack.run(run_id) == other.get(f"/v1/runs/{run_id}").json()

        # when the indexing replica dies, the other takes the store over and indexes what comes next
        stack.kill("api", signal.SIGKILL)
        later = other.post("/v1/runs", json={"workflow": "onboarding", "payload": {"name": "Bo", "sleep_seconds": 0}})
        assert later.status_code == 202, later.text
        later_id = later.json()["run_id"]
        done = other.get(f"/v1/runs/{later_id}", params={"wait": "50s"})
        assert done.status_code == 200, done.text
        assert done.json()["status"] == "completed"
        assert "indexer writes the shared query store" in (tmp_path / "api-2.log").read_text()
        other.close()
    finally:
        second.terminate()
        second.wait(timeout=20)
        stack.stop()
