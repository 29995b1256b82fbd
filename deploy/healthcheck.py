#!/usr/bin/env python3
"""The image's health check: ``stepstream-healthcheck [--ready] [SERVICE]``.

Exits 0 when the service this container runs answers ``200`` on ``/healthz`` (or on ``/readyz`` with
``--ready``), and 1 otherwise. One image runs every service, each on its own port, so without SERVICE
the check finds out which one runs here from the container's processes:

- ``stepstream api``: ``STEPSTREAM_API_PORT`` (default 8080);
- ``stepstream projector|scheduler|executor``: ``STEPSTREAM_HEALTH_PORT`` (default 8081; ``off``: the
  check passes, as there is nothing to ask);
- the example app (``python -m uvicorn app:app … --port N``): its ``--port`` (default 8000);
- anything else (``stepstream topics create``, a CLI command) serves nothing: the check passes.

Standard library only: it runs in the image's Python with nothing else installed.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

SERVICES = ("api", "projector", "scheduler", "executor")
TIMEOUT_SECONDS = 4


def _command_lines() -> Iterator[list[str]]:
    """Every process's argv, oldest process first (the container's own command is PID 1 or near)."""
    pids = sorted(int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        yield [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _target(service: str | None) -> tuple[str, int | None] | None:
    """The (what, port) to ask (port None: its health server is off), or None when nothing here serves."""
    if service in SERVICES:
        return service, _service_port(service)
    for argv in _command_lines():
        for index, part in enumerate(argv[:-1]):
            if os.path.basename(part) == "stepstream" and argv[index + 1] in SERVICES:
                return argv[index + 1], _service_port(argv[index + 1])
        if "uvicorn" in argv:
            port = argv[argv.index("--port") + 1] if "--port" in argv[:-1] else "8000"
            return "example app", int(port)
    return None


def _service_port(service: str) -> int | None:
    if service == "api":
        return int(os.environ.get("STEPSTREAM_API_PORT") or "8080")
    configured = (os.environ.get("STEPSTREAM_HEALTH_PORT") or "8081").strip()
    return None if configured.lower() == "off" else int(configured)


def _host(what: str) -> str:
    configured = os.environ.get("STEPSTREAM_API_HOST" if what == "api" else "STEPSTREAM_HEALTH_HOST", "")
    return configured if configured not in ("", "0.0.0.0", "::") else "127.0.0.1"


def main(argv: list[str]) -> int:
    ready = "--ready" in argv
    names = [arg for arg in argv if not arg.startswith("-")]
    target = _target(names[0] if names else None)
    if target is None:
        print("no Stepstream service runs in this container (a one-shot command?): nothing to check")
        return 0
    what, port = target
    if port is None:
        print(f"{what}: STEPSTREAM_HEALTH_PORT=off, so it serves no health endpoints: nothing to check")
        return 0
    path = "/readyz" if ready and what in SERVICES else "/healthz"
    url = f"http://{_host(what)}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
            status = answer.status
    except urllib.error.HTTPError as error:
        status = error.code
    except (OSError, ValueError) as error:
        print(f"{what}: expected {url} to answer, but {error}")
        return 1
    if status != 200:
        print(f"{what}: expected 200 from {url}, but got {status}")
        return 1
    print(f"{what}: {url} answered 200")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
