"""How many triggers per second the api takes: N concurrent HTTP clients sending ``POST /v1/runs`` for a
while, against the api as a real process on a real Kafka broker.

Starts a local Kafka broker in a temporary folder on free ports (or uses ``KAFKA_BOOTSTRAP_SERVERS``),
creates the engine's topics under a fresh prefix, and starts ``python -m stepstream.api`` (with its
indexer) and, with ``--services``, other services too (``--services api,projector`` adds the projector,
which then starts the runs, as it would in production). Then ``--clients`` aiohttp clients (one
keep-alive connection each) send triggers back to back, each answer awaited before the next request:
first ``--warmup`` seconds unmeasured, then ``--seconds`` measured. Every accepted trigger is durable
in Kafka when its 202 arrives (the api answers after the broker's ``acks=all``), so triggers/s is the
rate of durable triggers. The workflow's url points at an app that is not started: deliveries are not
what is measured.

It prints triggers/s, the latency of one ``POST`` (p50, p90, p99, max), the answers other than 202,
and the CPU the api process and this one used while measuring, with the api's CPU per trigger (a
process at ~100 % of one core is the limit; CPU per trigger moves least with other load on the
machine). Stops everything it started, also on failure and Ctrl-C (bench/harness.py).

    .venv/bin/python bench/trigger_load.py                         # 64 clients, 3 + 10 s (~30 s in all)
    .venv/bin/python bench/trigger_load.py --clients 16 --seconds 5
    .venv/bin/python bench/trigger_load.py --no-run-id             # let the api name the runs
    .venv/bin/python bench/trigger_load.py --services api,projector --json /tmp/triggers.json
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from harness import (  # bench/harness.py: the broker, the stack, the session and the helpers
    Stack,
    broker,
    cpu_seconds,
    machine,
    percentile,
    progress,
    session,
    wait_for_http,
    write_json,
)


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
        async with aiohttp.ClientSession(base_url, connector=connector) as http:
            sent = 0
            while not stop:
                body: dict[str, Any] = {"workflow": "steps", "payload": payload}
                if args.run_id:
                    body["run_id"] = f"load-{number}-{sent}-{uuid.uuid4().hex[:8]}"
                sent += 1
                began = time.perf_counter()
                try:
                    async with http.post("/v1/runs", json=body) as response:
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
    quantiles = {"p50": 50, "p90": 90, "p99": 99}  # harness.percentile takes 0..100
    return {
        "accepted": len(latencies),
        "seconds": elapsed,
        "triggers_per_s": len(latencies) / elapsed,
        "latency_ms": {name: percentile(latencies, q) * 1000 for name, q in quantiles.items()}
        | {"max": max(latencies, default=float("nan")) * 1000},
        "answers": {str(status): count for status, count in sorted(statuses.items(), key=str)},
        "api_cpu_percent": 100 * api_cpu / elapsed,
        "api_cpu_ms_per_trigger": 1000 * api_cpu / max(1, len(latencies)),
        "load_generator_cpu_percent": 100 * own_cpu / elapsed,
    }


async def measure(args: argparse.Namespace, api_url: str, api_pid: int, stack: Stack) -> dict[str, Any]:
    await wait_for_http(f"{api_url}/readyz", stack, within_s=120)
    progress(f"sending triggers from {args.clients} clients for {args.warmup:g} + {args.seconds:g} s…")
    return await load(args, api_url, api_pid)


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
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, query store)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = dict(pair.split("=", 1) for pair in args.env)
    load_before = machine()["load_average"]
    with session("stepstream-triggers-", keep=args.keep) as bench:
        with broker(bench.directory) as kafka, bench.stack(kafka, partitions=args.partitions, env=env) as stack:
            for name in args.services.split(","):
                stack.start(name.strip())
            result = asyncio.run(measure(args, stack.api_url, stack.processes["api"].pid, stack))
        latency = result["latency_ms"]
        print(
            f"Stepstream trigger load, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"{args.clients} clients, {args.seconds:g} s, services {args.services}, {args.partitions} partitions, "
            f"run ids {'given' if args.run_id else 'by the api'}, load average {load_before[0]:.1f} before / "
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
            parameters = {name: value for name, value in vars(args).items() if name != "json"}
            write_json(args.json, load_before=load_before, parameters=parameters, result=result)
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    raise SystemExit(main())
