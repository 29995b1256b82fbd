"""The api behind tokens, through the real stack: each role does what it may over real HTTP, the CLI
sends its token and says what a refusal means, and the token's name is the actor in the history.
(Every other test of the stack sends a token with every role: tests/stack.py.)"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from stepstream.tokens import ROLES, new_token, token_line
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

READER, WRITER = new_token(), new_token()


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("tokens")
    stack = Stack(kafka_bootstrap, directory)
    tokens = [
        token_line("tests", ROLES, stack.token),
        token_line("dashboard-viewer", ["read"], READER),
        token_line("deploy-bot", ["write"], WRITER),
    ]
    stack.env["STEPSTREAM_API_TOKENS"] = "\n".join(tokens)
    stack.create_topics()
    stack.start()
    yield stack
    stack.stop()


def _as(stack: Stack, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{stack.api_port}", headers=headers, timeout=10)


def _cli(stack: Stack, token: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "STEPSTREAM_API_URL": f"http://127.0.0.1:{stack.api_port}", "STEPSTREAM_API_TOKEN": token}
    return subprocess.run(
        [sys.executable, "-m", "stepstream.cli", *arguments], env=env, capture_output=True, text=True, timeout=60
    )


def test_each_token_does_what_its_roles_allow_and_no_more(stack: Stack) -> None:
    with _as(stack, WRITER) as writer, _as(stack, READER) as reader, _as(stack, None) as nobody:
        started = writer.post("/v1/runs", json={"workflow": "onboarding", "payload": {"name": "Ada"}})
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        stack.wait_for_status(run_id, ("running", "sleeping", "completed"))

        assert reader.get(f"/v1/runs/{run_id}").status_code == 200
        assert reader.get(f"/v1/runs/{run_id}/history").status_code == 200
        refused = reader.post("/v1/runs", json={"workflow": "onboarding", "payload": {}})
        assert (refused.status_code, refused.json()["error"]) == (403, "forbidden")
        assert writer.get("/v1/runs").status_code == 403
        assert writer.post(f"/v1/runs/{run_id}/cancel", json={}).status_code == 403
        assert nobody.get("/v1/runs").status_code == 401
        assert nobody.get("/healthz").status_code == 200
        assert nobody.get("/metrics").status_code == 200


def test_the_cli_sends_its_token_and_a_refusal_exits_2_naming_the_role(stack: Stack) -> None:
    listed = _cli(stack, READER, "runs", "list")
    assert listed.returncode == 0, listed.stderr
    refused = _cli(stack, READER, "trigger", "onboarding", "--payload", '{"name": "Bob"}')
    assert refused.returncode == 2
    assert "403: Expected a token with the write role, but token 'dashboard-viewer' has read" in refused.stderr
    unknown = _cli(stack, new_token(), "runs", "list")
    assert unknown.returncode == 2
    assert "set STEPSTREAM_API_TOKEN" in unknown.stderr


def test_what_a_token_does_is_recorded_under_its_name(stack: Stack) -> None:
    notified = _cli(stack, WRITER, "notify", "tokens-approval", "--data", "1")  # write may notify
    assert notified.returncode == 0, notified.stderr
    with _as(stack, stack.token) as operator:
        run_id = operator.post(
            "/v1/runs", json={"workflow": "onboarding", "payload": {"name": "Cy", "sleep_seconds": 60}}
        ).json()["run_id"]
        stack.wait_for_status(run_id, "sleeping", timeout=60)
        assert operator.post(f"/v1/runs/{run_id}/cancel", json={"reason": "test"}).status_code == 202
    stack.wait_for_status(run_id, "cancelled")
    cancelled = [event for event in stack.history(run_id) if event["type"] == "RunCancelled"]
    assert [(event["actor"], event["reason"]) for event in cancelled] == [("token tests", "test")]
