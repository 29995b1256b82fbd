"""How many triggers per second the api takes: N concurrent HTTP clients sending ``POST /v1/runs`` for a
while, against the api as a real process on a real Kafka broker.

Starts a local Kafka broker in a temporary folder on free ports (or uses ``KAFKA_BOOTSTRAP_SERVERS``),
creates the engine's topics under a fresh prefix, and starts ``python -m stepstream.api`` (with its
indexer) and, with ``--services``, other services too (``--services api,projector`` adds the projector,
which then starts the runs, as it would in production). Then ``--clients`` aiohttp clients (one
keep-alive connection each) send triggers back to back, each answer awaited before the next request:
first ``--warmup`` seconds unmeasured, then ``--seconds`` measured. Every accepted trigger is durable
in Kafka when its 202 arrives (the api answers after the broker's ``acks=all``), so triggers/s is the
rate of durable triggers.

It prints triggers/s, the latency of one ``POST`` (p50, p90, p99, max), the answers other than 202,
and the CPU the api process and this one used while measuring, with the api's CPU per trigger (a
process at ~100 % of one core is the limit). Stops everything it started, also on failure and
Ctrl-C, and deletes its topics from a cluster given by ``KAFKA_BOOTSTRAP_SERVERS``.

    .venv/bin/python bench/trigger_load.py                         # 64 clients, 10 s (~30 s in all)
    .venv/bin/python bench/trigger_load.py --clients 16 --seconds 5
    .venv/bin/python bench/trigger_load.py --no-run-id             # let the api name the runs
    .venv/bin/python bench/trigger_load.py --services api,projector --json /tmp/triggers.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from stepstream.kafka import LocalKafka, TopicNames, free_port

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@contextlib.contextmanager
def broker(directory: Path) -> Iterator[str]:
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        progress(f"using the Kafka cluster at {external} (KAFKA_BOOTSTRAP_SERVERS)")
        yield external
        return
    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(data_dir=directory / "kafka", port=port, controller_port=controller_port)
    progress(f"starting a local Kafka broker on 127.0.0.1:{port}…")
    try:
        kafka.start()
        yield kafka.bootstrap_servers
    finally:
        progress("stopping the Kafka broker…")
        kafka.stop()


class Services:
    """The engine's services as processes, logging into ``directory``."""

    def __init__(self, bootstrap: str, directory: Path, partitions: int, extra_env: dict[str, str]) -> None:
        self.directory = directory
        self.api_port = free_port()
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STEPSTREAM_TOPIC_PREFIX": f"triggers{uuid.uuid4().hex[:8]}.",
            "STEPSTREAM_PARTITIONS": str(partitions),
            "STEPSTREAM_SIGNING_KEYS": uuid.uuid4().hex,
            "STEPSTREAM_DATABASE": str(directory / "query.db"),
            "STEPSTREAM_HEALTH_PORT": "off",
            "STEPSTREAM_API_PORT": str(self.api_port),
            # Nothing serves it: the runs' deliveries are not what is measured here.
            "STEPSTREAM_WORKFLOWS": "load=http://127.0.0.1:9/workflows/load",
            "STEPSTREAM_LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **extra_env,
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def create_topics(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "stepstream.cli", "topics", "create"],
            env=self.env,
            capture_output=True,
            timeout=120,
            check=True,
        )

    def start(self, name: str) -> None:
        with (self.directory / f"{name}.log").open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", f"stepstream.{name}"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop_all(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


async def wait_ready(url: str, services: Services, within_s: float = 120) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            dead = [name for name, process in services.processes.items() if process.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited while starting:\n{services.log_tail(dead[0])}")
            await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} was not ready within {within_s:.0f} s")


async def load(args: argparse.Namespace, base_url: str, api_pid: int) -> dict[str, Any]:
    """Clients send triggers back to back; returns what was measured after the warm-up."""
    latencies: list[float] = []
    statuses: Counter[int | str] = Counter()
    measuring = False
    stop = False
    payload = {"text": "x" * args.payload_bytes} if args.payload_bytes else {"n": 1}

    async def client(number: int) -> None:
        # One connection per client, kept alive: 64 clients are 64 connections, as 64 callers would be.
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(base_url, connector=connector) as session:
            sent = 0
            while not stop:
                body: dict[str, Any] = {"workflow": "load", "payload": payload}
                if args.run_id:
                    body["run_id"] = f"load-{number}-{sent}-{uuid.uuid4().hex[:8]}"
                sent += 1
                began = time.perf_counter()
                try:
                    async with session.post("/v1/runs", json=body) as response:
                        await response.read()
                        status: int | str = response.status
                except aiohttp.ClientError as error:
                    status = type(error).__name__
                took = time.perf_counter() - began
                if measuring:
                    statuses[status] += 1
                    if status == 202:
                        latencies.append(took)

    tasks = [asyncio.create_task(client(number)) for number in range(args.clients)]
    await asyncio.sleep(args.warmup)
    measuring = True
    api_cpu, own_cpu = cpu_seconds(api_pid), time.process_time()
    began = time.perf_counter()
    await asyncio.sleep(args.seconds)
    measuring = False
    elapsed = time.perf_counter() - began
    api_cpu, own_cpu = cpu_seconds(api_pid) - api_cpu, time.process_time() - own_cpu
    stop = True
    await asyncio.gather(*tasks)
    return {
        "accepted": len(latencies),
        "seconds": elapsed,
        "triggers_per_s": len(latencies) / elapsed,
        "latency_ms": {name: percentile(latencies, q) * 1000 for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))}
        | {"max": max(latencies, default=float("nan")) * 1000},
        "answers": {str(status): count for status, count in sorted(statuses.items(), key=str)},
        "api_cpu_percent": 100 * api_cpu / elapsed,
        "api_cpu_ms_per_trigger": 1000 * api_cpu / max(1, len(latencies)),
        "load_generator_cpu_percent": 100 * own_cpu / elapsed,
    }


async def delete_topics(bootstrap: str, prefix: str) -> None:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.delete_topics(list(TopicNames(prefix).all()))
    finally:
        await admin.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    parser.add_argument("--seconds", type=float, default=10, help="measured seconds (default 10)")
    parser.add_argument("--warmup", type=float, default=3, help="unmeasured seconds first (default 3)")
    parser.add_argument("--partitions", type=int, default=12, help="partitions per topic (default 12)")
    parser.add_argument("--payload-bytes", type=int, default=0, help="a payload of about this size")
    parser.add_argument(
        "--no-run-id", dest="run_id", action="store_false", help="let the api name each run (no duplicate check)"
    )
    parser.add_argument("--services", default="api", help="comma-separated services to start (default: api)")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the services (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the numbers as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, store)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop like Ctrl-C: clean up, then exit
    directory = Path(tempfile.mkdtemp(prefix="stepstream-triggers-"))
    extra_env = dict(pair.split("=", 1) for pair in args.env)
    load_before = os.getloadavg()[0]
    with broker(directory) as bootstrap:
        services = Services(bootstrap, directory, args.partitions, extra_env)
        try:
            progress("creating topics…")
            services.create_topics()
            for name in args.services.split(","):
                services.start(name.strip())
            base_url = f"http://127.0.0.1:{services.api_port}"
            asyncio.run(wait_ready(f"{base_url}/readyz", services))
            progress(f"sending triggers from {args.clients} clients for {args.warmup:g} + {args.seconds:g} s…")
            result = asyncio.run(load(args, base_url, services.processes["api"].pid))
        finally:
            services.stop_all()
            if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):  # a cluster not ours: leave no topics behind
                with contextlib.suppress(Exception):
                    asyncio.run(delete_topics(bootstrap, services.env["STEPSTREAM_TOPIC_PREFIX"]))
    if not args.keep:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)
    latency = result["latency_ms"]
    print(
        f"Stepstream trigger load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
        f"{args.clients} clients, {args.seconds:g} s, services {args.services}, {args.partitions} partitions, "
        f"run ids {'given' if args.run_id else 'by the api'}, load average {load_before:.1f} before / "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(
        f"{result['triggers_per_s']:.0f} triggers/s ({result['accepted']} accepted in {result['seconds']:.1f} s); "
        f"POST p50 {latency['p50']:.1f} ms, p90 {latency['p90']:.1f} ms, p99 {latency['p99']:.1f} ms, "
        f"max {latency['max']:.1f} ms; answers {result['answers']}; CPU: api {result['api_cpu_percent']:.0f} % "
        f"({result['api_cpu_ms_per_trigger']:.2f} ms a trigger), "
        f"load generator {result['load_generator_cpu_percent']:.0f} % (of one core)"
    )
    if args.json:
        document = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "parameters": vars(args) | {"json": None}}
        args.json.write_text(json.dumps(document | {"result": result}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
