"""The engine on a locked-down cluster: a local broker that requires SASL/SCRAM over TLS (its own CA and
certificate, SCRAM users made at format time: stepstream.kafka.local_tls), with transactions and
consumer groups as every service uses them. The whole stack runs a workflow with every primitive on it,
and a wrong password or an untrusted certificate stops a service at start with what to fix."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepstream.kafka.local import LocalKafka
from tests.helpers import wait_until
from tests.stack import Stack, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalKafka]:
    kafka = LocalKafka(
        data_dir=tmp_path_factory.mktemp("sasl-ssl-kafka"), port=free_port(), controller_port=free_port(), sasl_ssl=True
    )
    kafka.start()
    yield kafka
    kafka.stop()


def test_the_stack_runs_every_primitive_on_a_sasl_ssl_broker(broker: LocalKafka, tmp_path: Path) -> None:
    env = broker.client_env()
    assert env["STEPSTREAM_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    stack = Stack(env["KAFKA_BOOTSTRAP_SERVERS"], tmp_path)
    stack.env.update(env)
    stack.create_topics()
    try:
        stack.start("projector", "scheduler", "executor", "api")
        port = stack.start_app("history", APPS, "history:app")
        base = f"http://127.0.0.1:{port}"
        event_id = f"approval-{uuid.uuid4().hex[:8]}"
        payload = {"base": base, "event_id": event_id, "wake_at": time.time() + 0.5}
        started = stack.api.post(
            "/v1/runs", json={"workflow": "journey", "url": f"{base}/workflows/journey", "payload": payload}
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        wait_until(lambda: stack.api.get(f"/v1/events/{event_id}/waiters").json()["waiters"], timeout=90)
        assert stack.api.post(f"/v1/events/{event_id}/notify", json={"data": "yes"}).status_code == 202
        run = stack.wait_for_status(run_id, "completed", timeout=120)
        types = {event["type"] for event in stack.history(run_id)}
    finally:
        stack.stop()
    assert run["output"]["approval"] == "yes"
    assert run["output"]["quote"] == {"price": 42}
    assert run["output"]["child"] == 24  # the child run's step doubled the seat
    assert {"SleepStarted", "CallStarted", "WaitStarted", "EventReceived", "NotifyStarted", "InvokeStarted"} <= types


def _start_alone(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "stepstream.projector"], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"STEPSTREAM_KAFKA_SASL_PASSWORD": "not-the-password"}, "to accept user 'stepstream' with SCRAM-SHA-512"),
        ({"STEPSTREAM_KAFKA_SSL_CAFILE": ""}, "to present a certificate that the system's certificate authorities"),
    ],
)
def test_a_wrong_password_or_an_untrusted_certificate_stops_a_service_at_start_saying_why(
    broker: LocalKafka, tmp_path: Path, change: dict[str, str], expected: str
) -> None:
    stack = Stack(broker.bootstrap_servers, tmp_path)
    env = {**stack.env, **broker.client_env(), "STEPSTREAM_HEALTH_PORT": "off", "STEPSTREAM_STATE_DIR": str(tmp_path)}
    env |= change

    result = _start_alone(env)

    assert result.returncode == 3, result.stdout + result.stderr
    assert f"Expected Kafka at {broker.bootstrap_servers} {expected}" in result.stdout + result.stderr
