"""Signed deliveries through the real engine: a delivery captured wherever it was sent cannot be
replayed to the real app, and the engine delivers only to allowed hosts, whoever wrote the trigger.

The example app is told its base urls (where the engine reaches it: directly, and through a proxy
the test runs); a listener stands in for an api caller's own endpoint, allowed explicitly.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from stepstream.avro import Codec, TriggerRequest
from stepstream.protocol import SIGNATURE_HEADER, URL_HEADER
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

# Headers that belong to one connection, not to the request: a proxy or a replayer sets its own.
_HOP_BY_HOP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "accept-encoding"}


@dataclass(frozen=True)
class Captured:
    path: str
    headers: dict[str, str]
    body: bytes

    def replay_headers(self, **overrides: str) -> dict[str, str]:
        kept = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        return kept | overrides


@dataclass
class Recorder:
    """An HTTP server on loopback that records every POST; forwards it to ``upstream`` if given
    (a proxy that rewrites the Host, as a TLS terminator would), else answers 503 (a listener)."""

    upstream: str | None = None
    captured: list[Captured] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> Recorder:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                captured = Captured(self.path, dict(self.headers.items()), body)
                recorder.captured.append(captured)
                if recorder.upstream is None:
                    status, answer = 503, b'{"error":"listener","message":"captured"}'
                else:
                    forwarded = httpx.post(
                        recorder.upstream + self.path, content=body, headers=captured.replay_headers(), timeout=30
                    )
                    status, answer = forwarded.status_code, forwarded.content
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@dataclass
class Setup:
    stack: Stack
    listener: Recorder
    proxy: Recorder

    @property
    def app_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.app_port}/workflows/onboarding"

    @property
    def listener_url(self) -> str:
        return f"http://localhost:{self.listener.port}/workflows/onboarding"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}/workflows/onboarding"


@pytest.fixture(scope="module")
def setup(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    listener = Recorder().start()
    proxy = Recorder().start()
    # The listener is reached as localhost:<its port>, which only this setting allows; 127.0.0.1 (any
    # port) is where the app and the proxy are.
    stack = Stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp("signed"),
        STEPSTREAM_ALLOWED_URL_HOSTS=f"127.0.0.1,localhost:{listener.port}",
    )
    proxy.upstream = f"http://127.0.0.1:{stack.app_port}"
    # Where the engine reaches the app: directly, and through the proxy.
    stack.env["STEPSTREAM_BASE_URL"] = f"http://127.0.0.1:{stack.app_port},http://127.0.0.1:{proxy.port}"
    stack.create_topics()
    stack.start()
    yield Setup(stack, listener, proxy)
    stack.stop()
    listener.stop()
    proxy.stop()


def trigger(stack: Stack, url: str, **options: Any) -> str:
    response = stack.api.post(
        "/v1/runs",
        json={"workflow": "onboarding", "url": url, "payload": {"name": "Ada", "sleep_seconds": 0.2}} | options,
    )
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def run_steps(stack: Stack, run_id: str) -> dict[str, int]:
    return {step: count for step, count in stack.step_counts().items() if step.startswith(f"{run_id}:")}


def test_a_delivery_captured_at_a_listener_is_refused_by_the_real_app(setup: Setup) -> None:
    # given a run an api caller pointed at their own listener (allowed here, so the engine signs for it)
    run_id = trigger(setup.stack, setup.listener_url, retries=0)
    setup.stack.wait_for_status(run_id, "failed", timeout=60)
    captured = next(request for request in setup.listener.captured if run_id in request.body.decode())
    assert captured.headers[URL_HEADER] == setup.listener_url
    assert ",n=" in captured.headers[SIGNATURE_HEADER]

    # when the listener replays those exact bytes to the real app, as they are and with a forged Host
    as_is = httpx.post(setup.app_url, content=captured.body, headers=captured.replay_headers(), timeout=10)
    forged = httpx.post(
        setup.app_url,
        content=captured.body,
        headers=captured.replay_headers(host=f"localhost:{setup.listener.port}"),
        timeout=10,
    )

    # then the app refuses both: they were signed for another url, and its base url is not the Host
    for answer in (as_is, forged):
        assert answer.status_code == 401, answer.text
        assert answer.json()["error"] == "unauthorized"
        assert f"signed for localhost:{setup.listener.port}/workflows/onboarding" in answer.json()["message"]
    assert run_steps(setup.stack, run_id) == {}


def test_a_delivery_captured_on_its_way_to_the_real_app_runs_once_however_often_it_is_replayed(
    setup: Setup,
) -> None:
    # given a run delivered to the app through a proxy that records every request
    run_id = trigger(setup.stack, setup.proxy_url)
    run = setup.stack.wait_for_status(run_id, ("completed", "failed"), timeout=90)
    assert run["status"] == "completed", run
    deliveries = [request for request in setup.proxy.captured if run_id in request.body.decode()]
    assert len(deliveries) >= 2  # the steps before the sleep, and after it
    counts = run_steps(setup.stack, run_id)
    assert counts == {f"{run_id}:create-account": 1, f"{run_id}:send-welcome": 1, f"{run_id}:send-tips": 1}

    # when each captured delivery is replayed, straight to the app and through the proxy again
    answers = []
    for captured in deliveries:
        answers.append(httpx.post(setup.app_url, content=captured.body, headers=captured.replay_headers(), timeout=10))
        answers.append(
            httpx.post(setup.proxy_url, content=captured.body, headers=captured.replay_headers(), timeout=10)
        )

    # then every replay is refused as such, and no step body ran again
    assert {(answer.status_code, answer.json()["error"]) for answer in answers} == {(409, "replayed")}
    assert run_steps(setup.stack, run_id) == counts
    nonces = {captured.headers[SIGNATURE_HEADER].split(",")[1] for captured in deliveries}
    assert len(nonces) == len(deliveries), "every request the engine sends has its own nonce"


def test_a_trigger_written_to_kafka_for_a_host_not_allowed_fails_the_run_with_the_reason(
    setup: Setup, kafka_bootstrap: str
) -> None:
    url = "http://collector.invalid:8000/workflows/onboarding"
    codec = Codec()
    trigger_request = TriggerRequest(
        workflow="onboarding", url=url, payload='{"name":"Mallory"}', run_id="kafka-not-allowed-1"
    )

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                setup.stack.prefix + "triggers", codec.encode(trigger_request), key=b"kafka-not-allowed-1"
            )
        finally:
            await producer.stop()

    # given a trigger that skips the api (which refuses this url: see the last assertion)
    asyncio.run(publish())

    # then the executor signs and sends nothing, and the run fails at once, not retried, saying why
    run = setup.stack.wait_for_status("kafka-not-allowed-1", ("failed", "completed"), timeout=60)
    assert run["status"] == "failed", run
    assert run["error"]["type"] == "UrlNotAllowed"
    assert "collector.invalid:8000 is not allowed" in run["error"]["message"]
    history = setup.stack.history("kafka-not-allowed-1")
    assert "UrlNotAllowed" in json.dumps(history)
    assert [event["type"] for event in history].count("StepFailed") <= 1
    refused = setup.stack.api.post("/v1/runs", json={"workflow": "onboarding", "url": url})
    assert (refused.status_code, refused.json()["error"]) == (422, "url_not_allowed")
    assert "STEPSTREAM_ALLOWED_URL_HOSTS" in refused.json()["message"]
