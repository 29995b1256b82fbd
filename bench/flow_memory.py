"""Measure the scheduler's memory with many deliveries queued under one flow-control key, and how long a
restarted scheduler takes to restore them.

Starts its own stack as ``bench/run.py`` does (a local Kafka broker or ``KAFKA_BOOTSTRAP_SERVERS``, the
topics under a fresh prefix), but only the projector, the scheduler and the api: no executor and no
workflow app, so nothing the scheduler lets through is ever settled. Then:

1. reads the scheduler's ``VmRSS``/``VmHWM`` (``/proc/<pid>/status``) once it owns its partitions,
   restarts it once with nothing to restore (the baseline of a restart), and reads them again (idle);
2. triggers one real run of the benchmark workflow under a key with parallelism 1 (``POST /v1/runs``):
   the scheduler lets its first delivery through, where it stays in flight for good, and the benchmark
   reads that ``DeliveryRequested`` back from ``schedule`` as its template;
3. produces N copies of it (default 100,000), each for a run of its own (a run id of the same length),
   straight to ``schedule`` keyed by the flow key, as the projector writes them; they queue behind the
   one in flight. It waits until the api (``GET /v1/flow-control/{key}``) shows N queued, and reads
   the memory again;
4. stops the scheduler (SIGTERM) and starts a new one, and times it: to its log line saying it owns the
   partitions (``restored M requests and slots``, read from the changelog), and to the key's state
   published again (``updated_at_ms``) with N queued; then reads the memory once more.

It also gives the sizes of the records involved, and what the same N items take in a ``FlowLedger``
built in this process (``tracemalloc``): the bookkeeping alone, without the process around it.

    .venv/bin/python bench/flow_memory.py                   # 100,000 queued, ~2 min (make bench-flow-memory)
    .venv/bin/python bench/flow_memory.py --queued 10000 --json /tmp/flow-memory.json
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import sys
import time
import tracemalloc
import uuid
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaProducer
from harness import (  # bench/harness.py: the broker, the stack, the session and the helpers
    BenchFailure,
    Memory,
    Stack,
    broker,
    fmt,
    machine,
    memory,
    progress,
    render,
    session,
    wait_for_http,
    write_json,
)

from stepstream.avro import Codec
from stepstream.config import KafkaSettings
from stepstream.core import (
    DeliveryRequested,
    FlowKeyState,
    FlowLedger,
    Queued,
    RecordedStep,
    StepKind,
    delivery_id,
)
from stepstream.kafka.clients import partition_for, read_partitions_to_end
from stepstream.kafka.topics import TopicNames

# The scheduler's log line once it has restored its partitions and owns them; its time is the process's own.
OWNS = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ \S+: "
    r"scheduler owns schedule partitions \[[0-9, ]*\] \(restored (\d+) requests and slots\)",
    re.MULTILINE,
)
PAYLOAD = {"steps": 10, "sleep_ms": 500}  # the payload of run.py's default workload
PRODUCE_CHUNK = 10_000  # sends in flight before waiting for their acknowledgements
SETTLE_S = 3.0  # after a change, before the memory is read: let the process finish what it was doing
POLL_INTERVAL_S = 0.2


def scheduler_memory(stack: Stack) -> Memory:
    return memory(stack.processes["scheduler"].pid)


def log_size(stack: Stack, name: str) -> int:
    path = stack.directory / f"{name}.log"
    return path.stat().st_size if path.exists() else 0


async def wait_for_log(
    stack: Stack, name: str, pattern: re.Pattern[str], offset: int, within_s: float
) -> re.Match[str]:
    """The first match of ``pattern`` in ``name``'s log after ``offset``, once it is written."""
    path = stack.directory / f"{name}.log"
    deadline = time.monotonic() + within_s
    while True:
        with path.open("rb") as log:
            log.seek(offset)
            match = pattern.search(log.read().decode(errors="replace"))
        if match is not None:
            return match
        if stack.dead():
            raise BenchFailure(f"a process died: {', '.join(stack.dead())}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"{name} did not log {pattern.pattern!r} within {within_s:.0f} s")
        await asyncio.sleep(0.02)


async def start_scheduler(stack: Stack, within_s: float) -> tuple[float, float, int]:
    """Start the scheduler: when (epoch s), when it logged that it owns its partitions (the time on that
    log line, local time to the millisecond), and how many requests and slots it restored."""
    offset = log_size(stack, "scheduler")
    began = time.time()
    stack.start("scheduler")
    match = await wait_for_log(stack, "scheduler", OWNS, offset, within_s)
    logged = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()  # naive: local time
    return began, logged, int(match.group(2))


async def published_at_ms(stack: Stack, key: str, *, queued: int, after_ms: int) -> int:
    """When the scheduler first published ``key`` with ``queued`` queued after ``after_ms``: the timestamp of
    that record on the ``flow`` topic (set by its producer when it sent it, after the step that made it)."""
    settings = KafkaSettings.from_env(stack.env)
    codec = Codec()
    records = await read_partitions_to_end(
        settings, TopicNames(stack.prefix).flow, [partition_for(key, settings.partitions)]
    )
    for record in records:
        if record.key != key.encode() or record.timestamp < after_ms or record.value is None:
            continue
        if codec.decode(record.value, expected=(FlowKeyState,)).queued == queued:
            return int(record.timestamp)
    raise BenchFailure(f"found no state of {key!r} with {queued} queued on the flow topic")


async def key_state(client: httpx.AsyncClient, key: str) -> dict[str, Any] | None:
    response = await client.get(f"/v1/flow-control/{key}")
    if response.status_code == 404:
        return None
    response.raise_for_status()
    state: dict[str, Any] = response.json()
    return state


async def wait_for_key(
    client: httpx.AsyncClient, stack: Stack, key: str, *, queued: int, in_flight: int, after_ms: int, within_s: float
) -> dict[str, Any]:
    """The key's state, once the api shows it with ``queued`` and ``in_flight``, published after ``after_ms``."""
    deadline = time.monotonic() + within_s
    last_report = time.monotonic()
    state = None
    while True:
        state = await key_state(client, key)
        if (
            state is not None
            and state["updated_at_ms"] >= after_ms
            and (state["queued"], state["in_flight"]) == (queued, in_flight)
        ):
            return state
        if stack.dead():
            raise BenchFailure(f"a process died: {', '.join(stack.dead())}")
        if time.monotonic() > deadline:
            raise BenchFailure(f"the key did not show {queued} queued within {within_s:.0f} s; last seen: {state}")
        if time.monotonic() - last_report >= 5 and state is not None:
            progress(f"  the key shows {state['queued']} queued, {state['in_flight']} in flight…")
            last_report = time.monotonic()
        await asyncio.sleep(POLL_INTERVAL_S)


async def read_template(stack: Stack, key: str) -> tuple[DeliveryRequested, bytes]:
    """The DeliveryRequested the projector wrote to ``schedule`` for the run under ``key``, and its bytes."""
    settings = KafkaSettings.from_env(stack.env)
    topic = TopicNames(stack.prefix).schedule
    codec = Codec()
    for record in await read_partitions_to_end(settings, topic, range(settings.partitions)):
        message = codec.decode(record.value)
        if isinstance(message, DeliveryRequested) and message.flow_key == key:
            return message, record.value
    raise BenchFailure(f"found no DeliveryRequested under {key!r} on {topic}")


def copy_for(template: DeliveryRequested, run_id: str) -> DeliveryRequested:
    """The template's request as it would be for run ``run_id``: the same delivery of another run."""
    number = int(template.delivery.delivery_id.rsplit("/", 1)[1])
    delivery = replace(template.delivery, run_id=run_id, delivery_id=delivery_id(run_id, number))
    return replace(template, request_id=delivery.request_id, delivery=delivery)


async def produce_copies(stack: Stack, template: DeliveryRequested, run_ids: list[str]) -> None:
    """Write a copy of ``template`` for each run to ``schedule``, in the key's partition."""
    settings = KafkaSettings.from_env(stack.env)
    assert template.flow is not None
    key = template.flow.key.encode()
    partition = partition_for(template.flow.key, settings.partitions)  # where the projector would write it
    topic = TopicNames(stack.prefix).schedule
    codec = Codec()
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        linger_ms=20,  # batches of many records: the fill is bounded by the scheduler, not by this
        max_batch_size=256 * 1024,
        **settings.client_options(),
    )
    await producer.start()
    try:
        for first in range(0, len(run_ids), PRODUCE_CHUNK):
            sent = [
                await producer.send(topic, value=codec.encode(copy_for(template, run_id)), key=key, partition=partition)
                for run_id in run_ids[first : first + PRODUCE_CHUNK]
            ]
            await asyncio.gather(*sent)
    finally:
        await producer.stop()


def ledger_bytes(template: DeliveryRequested, run_ids: list[str]) -> int:
    """What the queued items take in a FlowLedger in this process, built as the scheduler builds them:
    each record decoded (fresh strings), its delivery encoded again (``tracemalloc``: the objects, the
    encoded deliveries, the ids, the queue and its index; the records themselves are not kept)."""
    codec = Codec()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        # In memory, all of it (MemoryQueue): what the scheduler's ledger held before it kept each
        # key's backlog on disk, and what the scheduler's RSS above is compared with.
        ledger = FlowLedger()
        for run_id in run_ids:
            request = codec.decode(codec.encode(copy_for(template, run_id)), expected=(DeliveryRequested,))
            assert request.flow is not None
            ledger.queue(
                Queued(
                    request_id=request.request_id,
                    flow=request.flow,  # one per record, as decoded; the ledger interns it
                    partition=0,
                    run_id=request.delivery.run_id,
                    value=codec.encode(request.delivery),
                )
            )
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    if len(ledger) != len(run_ids):
        raise BenchFailure(f"the ledger holds {len(ledger)} items, expected {len(run_ids)}")
    return used


def with_history(template: DeliveryRequested, steps: int) -> DeliveryRequested:
    """The template as a later delivery of the same run, carrying ``steps`` recorded steps of the
    benchmark workflow (each output ``{"i": index, "t": epoch seconds}``)."""
    recorded = tuple(
        RecordedStep(index=index, name=f"step-{index}", kind=StepKind.RUN, output=json.dumps({"i": index, "t": 1.7e9}))
        for index in range(steps)
    )
    return replace(template, delivery=replace(template.delivery, steps=recorded, step_index=steps))


async def measure(args: argparse.Namespace, stack: Stack) -> dict[str, Any]:
    numbers: dict[str, Any] = {}
    for name in ("projector", "api"):
        stack.start(name)
    await wait_for_http(f"{stack.api_url}/healthz", stack)
    progress("starting the scheduler…")
    began_s, owns_s, _ = await start_scheduler(stack, args.timeout)
    numbers["first_start_s"] = owns_s - began_s
    numbers["memory_after_first_start"] = scheduler_memory(stack)
    progress("restarting the idle scheduler (the baseline of a restart)…")
    began = time.monotonic()
    stack.stop("scheduler")
    numbers["idle_stop_s"] = time.monotonic() - began
    began_s, owns_s, numbers["idle_restored"] = await start_scheduler(stack, args.timeout)
    numbers["idle_restart_s"] = owns_s - began_s
    await asyncio.sleep(SETTLE_S)
    idle = numbers["memory_idle"] = scheduler_memory(stack)

    tag = uuid.uuid4().hex[:8]
    key = f"flowmem-{tag}"
    run_ids = [f"flowmem-{tag}-{index:06d}" for index in range(args.queued + 1)]  # the first one is real
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30) as client:
        progress(f"triggering one run under {key!r} (parallelism 1), with no executor…")
        body = {
            "workflow": "steps",
            "url": stack.workflow_url,
            "payload": PAYLOAD,
            "run_id": run_ids[0],
            "flow_control": {"key": key, "parallelism": 1},
        }
        response = await client.post("/v1/runs", json=body)
        if response.status_code not in (200, 202):
            raise BenchFailure(f"the api refused the trigger: {response.status_code} {response.text}")
        await wait_for_key(client, stack, key, queued=0, in_flight=1, after_ms=0, within_s=args.timeout)
        template, template_value = await read_template(stack, key)
        if template.request_id != template.delivery.request_id:
            raise BenchFailure(f"unexpected request id {template.request_id!r} for {template.delivery.request_id!r}")

        progress(f"producing {args.queued:,} copies of its DeliveryRequested to schedule…")
        fill_began_ms = int(time.time() * 1000)
        began = time.monotonic()
        await produce_copies(stack, template, run_ids[1:])
        numbers["produce_s"] = time.monotonic() - began
        progress(f"  produced in {numbers['produce_s']:.1f} s; waiting for the key to show {args.queued:,} queued…")
        await wait_for_key(
            client, stack, key, queued=args.queued, in_flight=1, after_ms=fill_began_ms, within_s=args.timeout
        )
        full_ms = await published_at_ms(stack, key, queued=args.queued, after_ms=fill_began_ms)
        numbers["fill_s"] = (full_ms - fill_began_ms) / 1000
        await asyncio.sleep(SETTLE_S)
        filled = numbers["memory_full"] = scheduler_memory(stack)

        progress("restarting the scheduler with the queue full…")
        began = time.monotonic()
        stack.stop("scheduler")
        numbers["full_stop_s"] = time.monotonic() - began
        began_s, owns_s, numbers["full_restored"] = await start_scheduler(stack, args.timeout)
        numbers["full_restart_s"] = owns_s - began_s
        restored = await wait_for_key(
            client, stack, key, queued=args.queued, in_flight=1, after_ms=int(began_s * 1000), within_s=args.timeout
        )
        numbers["full_visible_s"] = time.time() - began_s  # in the api: + the indexer, + up to one poll
        restored_ms = await published_at_ms(stack, key, queued=args.queued, after_ms=int(began_s * 1000))
        numbers["full_published_s"] = restored_ms / 1000 - began_s
        await asyncio.sleep(SETTLE_S)
        numbers["memory_restored"] = scheduler_memory(stack)
        numbers["state_restored"] = restored

    numbers["per_queued_full_b"] = (filled.rss_kb - idle.rss_kb) * 1024 / args.queued
    numbers["per_queued_restored_b"] = (numbers["memory_restored"].rss_kb - idle.rss_kb) * 1024 / args.queued
    codec = Codec()
    numbers["record_value_b"] = len(template_value)
    numbers["record_key_b"] = len(key.encode())
    numbers["delivery_b"] = len(codec.encode(template.delivery))
    numbers["record_value_with_history_b"] = {
        steps: len(codec.encode(with_history(template, steps))) for steps in (5, 10)
    }
    progress("building the same queue in a FlowLedger in this process (tracemalloc)…")
    numbers["ledger_per_queued_b"] = ledger_bytes(template, run_ids[1:]) / args.queued
    numbers["key"] = key
    return numbers


def mib(kb: int) -> str:
    return f"{kb / 1024:.1f} MiB"


def report(args: argparse.Namespace, numbers: dict[str, Any]) -> str:
    n = args.queued
    first, idle = numbers["memory_after_first_start"], numbers["memory_idle"]
    full, restored = numbers["memory_full"], numbers["memory_restored"]
    history = numbers["record_value_with_history_b"]
    state = numbers["state_restored"]
    restore_s = numbers["full_published_s"] - numbers["idle_restart_s"]
    rows = [
        ("scheduler RSS after its first start", mib(first.rss_kb), "VmRSS, once it owns its partitions"),
        ("scheduler RSS idle (before)", mib(idle.rss_kb), f"after an idle restart, {SETTLE_S:.0f} s settled"),
        (f"scheduler RSS with {n:,} queued (after)", mib(full.rss_kb), f"peak so far (VmHWM) {mib(full.hwm_kb)}"),
        ("  per queued delivery", f"{numbers['per_queued_full_b']:,.0f} B", "(after - before) / N"),
        ("scheduler RSS after a restart and restore", mib(restored.rss_kb), f"peak (VmHWM) {mib(restored.hwm_kb)}"),
        ("  per queued delivery", f"{numbers['per_queued_restored_b']:,.0f} B", "(after restore - before) / N"),
        (
            "the ledger alone, per queued delivery",
            f"{numbers['ledger_per_queued_b']:,.0f} B",
            "tracemalloc of the same N records queued in a FlowLedger held all in memory (MemoryQueue)",
        ),
        ("fill: produce N records", f"{fmt(numbers['produce_s'])} s", "to schedule, acks=all"),
        (
            "fill: first send -> key published with N queued",
            f"{fmt(numbers['fill_s'])} s",
            f"{n / numbers['fill_s']:,.0f} deliveries/s queued (the state is published at most once a second)",
        ),
        (
            "restart, nothing to restore: start -> owns",
            f"{fmt(numbers['idle_restart_s'])} s",
            "process start, Kafka clients, group join (the baseline)",
        ),
        ("restart, N queued: stop", f"{fmt(numbers['full_stop_s'])} s", "SIGTERM -> exit"),
        (
            "restart, N queued: start -> owns",
            f"{fmt(numbers['full_restart_s'])} s",
            f"its log: restored {numbers['full_restored']:,} requests and slots (read back from timers)",
        ),
        (
            "restart, N queued: start -> state published",
            f"{fmt(numbers['full_published_s'])} s",
            f"its record on flow: queued {state['queued']:,}, in flight {state['in_flight']}; owns -> published "
            f"{fmt(numbers['full_published_s'] - numbers['full_restart_s'])} s; in the api after "
            f"{fmt(numbers['full_visible_s'])} s",
        ),
        ("  restore, all told", f"{fmt(restore_s)} s", "start -> state published, minus the baseline"),
        (
            "queued record on schedule (DeliveryRequested)",
            f"{numbers['record_value_b']} B",
            f"value; key {numbers['record_key_b']} B; the same value again in the timers changelog",
        ),
        ("  its delivery, as held in memory", f"{numbers['delivery_b']} B", "the encoded Delivery in Queued.value"),
        (
            "  the same with 5 / 10 recorded steps",
            f"{history[5]} / {history[10]} B",
            "a later delivery carries the run's history",
        ),
    ]
    return render(["measure", "value", "how"], [list(row) for row in rows], left=(0, 2))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queued", type=int, default=100_000, help="deliveries to queue (default 100,000)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for each wait (default 600)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, query store)")
    args = parser.parse_args(argv)
    if args.queued < 1:
        parser.error("expected --queued >= 1")
    if not Path("/proc/self/status").exists():
        parser.error("expected Linux: the memory is read from /proc/<pid>/status")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    load_before = machine()["load_average"]
    with session("stepstream-flowmem-", keep=args.keep) as bench:
        with broker(bench.directory) as kafka, bench.stack(kafka, partitions=args.partitions) as stack:
            numbers = asyncio.run(measure(args, stack))
        took = time.monotonic() - began
        print()
        print(
            f"Stepstream flow-control memory, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"{args.queued:,} deliveries queued under one key (parallelism 1, one in flight, no executor), "
            f"{args.partitions} partitions, took {took:.0f} s, "
            f"load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        print(report(args, numbers))
        bench.warn_about_logs()
        if args.json:
            write_json(
                args.json,
                load_before=load_before,
                parameters={"queued": args.queued, "partitions": args.partitions, "payload": PAYLOAD},
                results={
                    name: (asdict(value) if isinstance(value, Memory) else value) for name, value in numbers.items()
                },
                service_log_error_lines=stack.log_problems,
            )
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    sys.exit(main())
