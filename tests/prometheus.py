"""A real Prometheus server for the metrics tests: it scrapes the services as an operator's would.

Debian's ``prometheus`` package (``make test`` installs it when missing, as it does PostgreSQL), or the
binary named by ``STEPSTREAM_TEST_PROMETHEUS``. Each server gets its own configuration, naming the
targets to scrape every second, and its own storage in a temporary folder, on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from tests.stack import free_port


def binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` (or ``promtool``, beside it)."""
    given = os.environ.get("STEPSTREAM_TEST_PROMETHEUS")
    if given:
        return str(Path(given).parent / name) if name != "prometheus" else given
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(
            f"Expected {name} for the metrics tests, but found none: `make test` installs Debian's prometheus "
            "package; or set STEPSTREAM_TEST_PROMETHEUS to a prometheus binary (promtool beside it)"
        )
    return found


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, expression: str) -> list[dict[str, Any]]:
        """The result of an instant query: one entry per series, ``metric`` (labels) and ``value``."""
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expression}, timeout=5)
        response.raise_for_status()
        result: list[dict[str, Any]] = response.json()["data"]["result"]
        return result

    def value(self, expression: str) -> float | None:
        """The value of a query that gives one series, or None when it gives none."""
        result = self.query(expression)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


@contextlib.contextmanager
def prometheus_server(targets: Mapping[str, str], directory: Path | None = None) -> Iterator[Prometheus]:
    """A server scraping each ``targets`` job (name: ``host:port``) every second, until the block ends."""
    home = directory or Path(tempfile.mkdtemp(prefix="stepstream-prometheus-"))
    home.mkdir(parents=True, exist_ok=True)
    jobs = "".join(
        f"  - job_name: {name}\n    static_configs:\n      - targets: ['{target}']\n"
        for name, target in targets.items()
    )
    config = home / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n{jobs}")
    port = free_port()
    command = [
        binary(),
        f"--config.file={config}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with (home / "prometheus.log").open("ab") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/-/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"prometheus did not start: {(home / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield Prometheus(url)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if directory is None:
            shutil.rmtree(home, ignore_errors=True)
