"""The engine as users run it, for tests: each service a real process, the example app a real HTTP
server on loopback, all against the session's real Kafka broker.

Each ``Stack`` uses its own topic prefix, query store and ports, so tests do not see each other's runs.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from stepstream.sealing import new_key
from stepstream.tokens import ROLES, new_token, token_line

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("projector", "scheduler", "executor", "api")
TERMINAL = ("completed", "failed")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Stack:
    def __init__(self, bootstrap: str, directory: Path, *, partitions: int = 3, **env: str) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.api_port = free_port()
        self.app_port = free_port()
        self.counts_file = directory / "step-counts.jsonl"
        self.prefix = f"test{uuid.uuid4().hex[:8]}."
        self.workflow_url = f"http://127.0.0.1:{self.app_port}/workflows/onboarding"
        key = uuid.uuid4().hex
        self.token = new_token()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STEPSTREAM_TOPIC_PREFIX": self.prefix,
            "STEPSTREAM_PARTITIONS": str(partitions),
            "STEPSTREAM_SIGNING_KEYS": key,
            # The api wants a token: one with every role, which the CLI run with this env sends too.
            "STEPSTREAM_API_TOKENS": token_line("tests", ROLES, self.token),
            "STEPSTREAM_API_TOKEN": self.token,
            # Credential headers are sealed before they reach Kafka (stepstream.sealing).
            "STEPSTREAM_HEADER_KEYS": new_key(),
            "STEPSTREAM_DATABASE": str(directory / "query.db"),
            "STEPSTREAM_API_PORT": str(self.api_port),
            # Its host, 127.0.0.1, is also where the executor may deliver by default (any port), so the
            # tests' other apps on other ports need no STEPSTREAM_ALLOWED_URL_HOSTS.
            "STEPSTREAM_WORKFLOWS": f"onboarding={self.workflow_url}",
            "STEPSTREAM_DEFAULT_RETRY_BASE_MS": "200",
            "STEPSTREAM_LOG_LEVEL": "INFO",
            "EXAMPLE_COUNTS_FILE": str(self.counts_file),
            "EXAMPLE_BASE_URL": f"http://127.0.0.1:{self.app_port}",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.health_ports: dict[str, int] = {}  # the health port of each service process started
        self.api = httpx.Client(
            base_url=f"http://127.0.0.1:{self.api_port}",
            timeout=10,
            headers={"Authorization": f"Bearer {self.token}"},
        )

    # -- processes --------------------------------------------------------------------------------

    def create_topics(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "stepstream.cli", "topics", "create"], env=self.env, check=True, capture_output=True
        )

    def start(self, *names: str) -> None:
        for name in names or (*SERVICES, "app"):
            if name == "app":
                command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", str(ROOT / "examples"),
                           "--port", str(self.app_port), "--log-level", "warning"]  # fmt: skip
            else:  # "scheduler:2" is a second scheduler process
                command = [sys.executable, "-m", f"stepstream.{name.split(':')[0]}"]
            log_name = name.replace(":", "-")
            # Each process its own health port: several services share this host.
            self.health_ports[name] = free_port()
            env = {
                **self.env,
                "STEPSTREAM_HEALTH_PORT": str(self.health_ports[name]),
                # As the Helm chart gives each pod its name: unique per process, and the same when the
                # same process is started again, so a restart fences its predecessor and takes its
                # partitions back at once (tests run several stacks on one broker: the prefix tells them apart).
                "STEPSTREAM_INSTANCE_ID": self.instance_id(name),
            }
            with (self.directory / f"{log_name}.log").open("ab") as log:  # the child keeps its own descriptor
                self.processes[name] = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        if "api" in names or not names:
            self.wait_for_http(f"http://127.0.0.1:{self.api_port}/readyz")
        if "app" in names or not names:
            self.wait_for_http(f"http://127.0.0.1:{self.app_port}/healthz")

    def instance_id(self, name: str) -> str:
        """The STEPSTREAM_INSTANCE_ID of the process ``name`` ("scheduler:2" is a second scheduler)."""
        return f"{self.prefix}{name.replace(':', '-')}"

    def start_app(self, name: str, app_dir: Path, target: str, port: int | None = None) -> int:
        """Another workflow app, as its own process on its own port (``port``: the one it had before a
        restart); returns the port."""
        port = port or free_port()
        command = [sys.executable, "-m", "uvicorn", target, "--app-dir", str(app_dir), "--port", str(port),
                   "--log-level", "warning"]  # fmt: skip
        with (self.directory / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.wait_for_http(f"http://127.0.0.1:{port}/healthz")
        return port

    def kill(self, name: str, signum: int = signal.SIGKILL) -> None:
        process = self.processes.pop(name)
        process.send_signal(signum)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.api.close()

    def logs(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def wait_for_http(self, url: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{url} did not answer within {timeout} s\n{self.logs()}")

    # -- the api --------------------------------------------------------------------------------

    def trigger(self, payload: Any, **options: Any) -> str:
        response = self.api.post("/v1/runs", json={"workflow": "onboarding", "payload": payload, **options})
        assert response.status_code in (200, 202), response.text
        run_id: str = response.json()["run_id"]
        return run_id

    def run(self, run_id: str) -> dict[str, Any] | None:
        response = self.api.get(f"/v1/runs/{run_id}")
        if response.status_code == 404:
            return None
        response.raise_for_status()
        run: dict[str, Any] = response.json()
        return run

    def wait_for_status(self, run_id: str, status: str | tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        wanted = (status,) if isinstance(status, str) else status
        deadline = time.monotonic() + timeout
        run = None
        while time.monotonic() < deadline:
            run = self.run(run_id)
            if run is not None and run["status"] in wanted:
                return run
            time.sleep(0.1)
        raise AssertionError(f"run {run_id} is {run and run['status']}, not {wanted}, after {timeout} s\n{self.logs()}")

    def history(self, run_id: str) -> list[dict[str, Any]]:
        response = self.api.get(f"/v1/runs/{run_id}/history")
        response.raise_for_status()
        events: list[dict[str, Any]] = response.json()["events"]
        return events

    def step_counts(self) -> Counter[str]:
        if not self.counts_file.exists():
            return Counter()
        return Counter(json.loads(line)["step"] for line in self.counts_file.read_text().splitlines() if line)


def read_topic(bootstrap: str, topic: str, partitions: int = 3) -> list[Any]:
    """Every committed record now in ``topic``, read with a plain consumer (no group)."""
    import asyncio

    from stepstream.config import KafkaSettings
    from stepstream.kafka.clients import read_partitions_to_end

    settings = KafkaSettings(bootstrap_servers=bootstrap)
    return asyncio.run(read_partitions_to_end(settings, topic, range(partitions)))
