"""No credential in Kafka: a run whose trigger and ``ctx.call`` carry ``Authorization`` headers, through
the real stack (tests/apps/credentials.py). Every record of every topic is read back raw, and holds
neither value nor its base64; the app and the third party still get the right headers; and a rotation
of the sealing key mid-run keeps the run working."""

from __future__ import annotations

import base64
import hashlib
import signal
import uuid
from pathlib import Path

import httpx
import pytest

from stepstream.kafka.topics import TopicNames
from stepstream.sealing import new_key
from tests.stack import Stack, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"


def _forms(secret: str) -> list[bytes]:
    """The secret as a record could hold it: as it is, and in base64 (plain and URL-safe)."""
    raw = secret.encode()
    encoded = [base64.b64encode(raw), base64.urlsafe_b64encode(raw)]
    return [raw, *encoded, *(form.rstrip(b"=") for form in encoded)]


def test_credentials_never_reach_kafka_and_a_key_rotation_keeps_the_run_going(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    old_key = new_key()
    stack = Stack(kafka_bootstrap, tmp_path, STEPSTREAM_HEADER_KEYS=old_key)
    stack.create_topics()
    try:
        stack.start("projector", "scheduler", "executor", "api")
        trigger_secret, call_secret = f"Bearer trigger-{uuid.uuid4().hex}", f"Bearer call-{uuid.uuid4().hex}"
        stack.env["CALL_AUTH"] = call_secret  # the app's own credential for the third party
        port = stack.start_app("credentials", APPS, "credentials:app")
        base = f"http://127.0.0.1:{port}"
        response = stack.api.post(
            "/v1/runs",
            json={
                "workflow": "with-secrets",
                "url": f"{base}/workflows/with-secrets",
                "payload": {"base": base, "pause_s": 3},
                "headers": {"Authorization": trigger_secret},
            },
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["run_id"]
        stack.wait_for_status(run_id, "sleeping", timeout=60)

        # The rotation: a new key first, the old one kept to open what it sealed.
        stack.kill("executor", signal.SIGTERM)
        stack.env["STEPSTREAM_HEADER_KEYS"] = f"{new_key()},{old_key}"
        stack.start("executor")
        run = stack.wait_for_status(run_id, "completed", timeout=90)
        seen = httpx.get(f"{base}/seen", timeout=5).json()["seen"]
        history = stack.history(run_id)
    finally:
        stack.stop()

    # The third party got the call's credential both times, the app the trigger's on every delivery.
    received = {"authorization_sha256": hashlib.sha256(call_secret.encode()).hexdigest()}
    assert run["output"] == {"first": received, "second": received}
    assert len(seen) >= 3  # deliveries: before the sleep, after it, and the last
    assert set(seen) == {trigger_secret}
    # The history shows which headers were set, never their values.
    started = next(event for event in history if event["type"] == "RunStarted")
    assert started["headers"] == {"Authorization": "<redacted>"}

    records = 0
    for name in TopicNames(stack.prefix).all():  # every topic the engine writes
        for record in read_topic(kafka_bootstrap, name):
            records += 1
            raw = (record.key or b"") + (record.value or b"") + b"".join(value for _, value in record.headers or ())
            for secret in (trigger_secret, call_secret):
                for form in _forms(secret):
                    assert form not in raw, f"{name}[{record.partition}]@{record.offset} holds {secret!r}"
    assert records > 20
