"""Scale (issue 12): N sleeping runs and N finished runs, each service's memory per run, and how long a
service killed with SIGKILL takes to restore them.

One invocation, one local broker (or ``KAFKA_BOOTSTRAP_SERVERS``), and per phase a fresh stack
(projector, scheduler, executor, api and the workflow app, as processes with the engine's defaults):

* ``sleeping``: N runs of ``{"steps": 1, "sleep_ms": 86_400_000}`` (one step, then a day's sleep),
  done when the api's query store shows N runs sleeping and every service has caught up with its input;
* ``finished``: N runs of ``{"steps": 1, "sleep_ms": 0}``, done when it shows N completed.

Per phase: each service is first SIGKILLed and started again with nothing to restore (the baseline of
a restart), then its RSS is read idle; the triggers are produced straight to ``triggers`` (the api is
not what is measured, and takes ~1,000–2,000 triggers/s), as the api writes them, in two batches (a first
one of K, then the rest), with the RSS read after each; then each service in turn is SIGKILLed and
started again, timed to its ``/readyz`` answering 200 and to its input caught up, its RSS sampled
every 50 ms meanwhile. Targets for N = 1,000,000 are extrapolated linearly from the measured slopes,
and say so. bench/README.md ("Scale") defines every number.

    .venv/bin/python bench/scale.py --quick                 # 5,000 runs a phase, ~2 min
    .venv/bin/python bench/scale.py                         # 100,000 (make bench-scale)
    .venv/bin/python bench/scale.py --runs 200000 --phases sleeping --json /tmp/scale.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from harness import (  # bench/harness.py: the broker, the stack, the session, /proc and the tables
    BENCH_DIR,
    BenchFailure,
    Broker,
    Stack,
    broker,
    engine_commit,
    fmt,
    machine,
    memory,
    progress,
    render,
    session,
    wait_for_http,
    write_json,
)

import stepstream
from stepstream.api.publisher import triggers_key
from stepstream.avro import Codec, TriggerRequest
from stepstream.config import KafkaSettings
from stepstream.kafka import TopicNames, free_port
from stepstream.projector.inputs import new_run_id  # the api's run ids: the same length, the same memory

SERVICES = ("projector", "scheduler", "executor", "api")
DAY_MS = 86_400_000
PHASES = {  # the payload of each phase's runs, and the status the api's query store shows once each is there
    "sleeping": ({"steps": 1, "sleep_ms": DAY_MS}, "sleeping"),
    "finished": ({"steps": 1, "sleep_ms": 0}, "completed"),
}
TARGET_SLEEPING, TARGET_FINISHED, TARGET_FIRST = 1_000_000, 10_000_000, 10_000
TARGET_BYTES, TARGET_RESTORE_S, FINISHED_SLACK = 1e9, 60.0, 1.05  # 5 %: RSS counts what the allocator keeps
PRODUCE_CHUNK = 10_000  # sends in flight before waiting for their acknowledgements
SETTLE_S = 2.0  # after the work is done, before the memory is read: let the processes finish what they do
SAMPLE_S = 0.05  # how often a restoring service's RSS is sampled and its /readyz asked
CHECK_S = 0.5  # how often "done" is checked while runs are processed


def mib(kb: int | None) -> str:
    return "-" if kb is None else fmt(kb / 1024)


@dataclass(slots=True)
class Restore:
    """One SIGKILL and start: seconds from the spawn to /readyz 200, and to its input caught up too; the
    largest RSS (the 50 ms samples, or VmHWM when it saw a higher one) and the RSS settled afterwards."""

    ready_s: float
    caught_up_s: float
    peak_kb: int
    rss_after_kb: int


@dataclass(slots=True)
class Phase:
    name: str
    runs: int
    first: int  # the first batch: the finished target compares memory after it with memory after N
    idle_kb: dict[str, int] = field(default_factory=dict)  # the services, the app and the broker
    first_kb: dict[str, int] = field(default_factory=dict)
    full_kb: dict[str, int] = field(default_factory=dict)
    idle_restores: dict[str, Restore] = field(default_factory=dict)
    restores: dict[str, Restore] = field(default_factory=dict)
    publish_s: float = 0.0  # first send -> last acknowledgement, both batches
    process_s: float = 0.0  # first send -> done, both batches (the pause between them left out)
    topic_bytes: int | None = None  # what the phase's topics hold at the end (the local broker's segments)
    statuses: dict[str, int] = field(default_factory=dict)  # runs by status in the api's query store

    def per_run_b(self, name: str) -> float:
        return (self.full_kb[name] - self.idle_kb[name]) * 1024 / self.runs

    def marginal_b(self, name: str) -> float:
        return (self.full_kb[name] - self.first_kb[name]) * 1024 / (self.runs - self.first)


def total(kb: dict[str, int]) -> int:
    return sum(kb[name] for name in SERVICES)


# -- the stack and its progress --------------------------------------------------------------------


class Lag:
    """How many records each service has not done yet, asked of the broker and the api's store.

    A service's done offsets: its consumer group's committed offsets (the api's indexer has no group: the
    positions it keeps in its query store). They stop short of a topic's end by a transaction marker, or
    by records of an aborted transaction, so a partition behind its end is read from there with
    ``read_committed``: it is caught up if that finds no record before the end.
    """

    def __init__(self, stack: Stack) -> None:
        self.settings = KafkaSettings.from_env(stack.env)
        topics = TopicNames(stack.prefix)
        self.inputs = {
            "projector": (topics.triggers, topics.commands),
            "scheduler": (topics.schedule,),
            "executor": (topics.deliveries,),
            "api": (topics.events, topics.flow),
        }
        self.store = stack.directory / "query.db"
        options = {"bootstrap_servers": self.settings.bootstrap_servers, **self.settings.client_options()}
        self.admin = AIOKafkaAdminClient(**options)
        self.reader = AIOKafkaConsumer(group_id=None, isolation_level="read_committed", **options)

    async def __aenter__(self) -> Lag:
        await self.admin.start()
        await self.reader.start()
        every = [tp for service in SERVICES for tp in self.partitions(service)]
        self.reader.assign(every)  # once: each assign() would refetch metadata, ~1 s a probe
        self.reader.pause(*every)  # … and fetch only where a probe asks, from where it asks
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.reader.stop()
        await self.admin.close()

    def query(self, sql: str, *parameters: Any) -> list[Any]:
        """A read of the api's query store, read-only beside its writer (WAL); nothing before it exists."""
        try:
            with sqlite3.connect(f"file:{self.store}?mode=ro", uri=True, timeout=5) as connection:
                return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:
            return []

    def statuses(self) -> dict[str, int]:
        return dict(self.query("SELECT status, count(*) FROM runs GROUP BY status"))

    async def done_offsets(self, service: str) -> dict[TopicPartition, int]:
        if service == "api":
            rows = self.query("SELECT topic, partition, next_offset FROM positions")
            return {TopicPartition(topic, partition): offset for topic, partition, offset in rows}
        committed = await self.admin.list_consumer_group_offsets(f"{self.settings.topic_prefix}{service}")
        return {tp: meta.offset for tp, meta in committed.items() if meta.offset >= 0}

    def partitions(self, service: str) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t in self.inputs[service] for p in range(self.settings.partitions)]

    async def behind(self, service: str) -> int:
        """Records of the service's input it has not done (0: caught up)."""
        partitions = self.partitions(service)
        done = await self.done_offsets(service)
        ends = await self.reader.end_offsets(partitions)  # read_committed: the last stable offsets
        short = {tp: done.get(tp, 0) for tp in partitions if done.get(tp, 0) < ends[tp]}
        if not short:
            return 0
        for tp, offset in short.items():
            self.reader.seek(tp, offset)
        self.reader.resume(*short)
        unsure, behind, deadline = dict(short), 0, time.monotonic() + 2
        try:
            while unsure and time.monotonic() < deadline:
                batch = await self.reader.getmany(*unsure, timeout_ms=100, max_records=1)
                for tp, records in batch.items():
                    if records and unsure.pop(tp, None) is not None:
                        behind += ends[tp] - short[tp]
                for tp in list(unsure):
                    if await self.reader.position(tp) >= ends[tp]:  # only markers or aborted records there
                        del unsure[tp]
        finally:
            self.reader.pause(*short)
        return behind + sum(ends[tp] - short[tp] for tp in unsure)

    async def all_behind(self) -> dict[str, int]:
        return {name: await self.behind(name) for name in SERVICES}


class Services:
    """The stack's processes, each service with a health port and a stable instance id (kept across a
    restart, as a pod's name is), so a restarted one rejoins its group as the member it replaces."""

    def __init__(self, stack: Stack, *, state_dir: bool = False) -> None:
        self.stack = stack
        self.env = {name: {"STEPSTREAM_INSTANCE_ID": f"bench-{name}"} for name in SERVICES}
        if state_dir:
            # A folder that outlives a restart, as the Helm chart's pod volume does: the projector
            # and the scheduler find their files again and read only what they missed.
            for name in SERVICES:
                self.env[name]["STEPSTREAM_STATE_DIR"] = str(stack.directory / "state")
        self.ready_url = {"api": f"{stack.api_url}/readyz"}  # the api serves /readyz on its own port
        for name in ("projector", "scheduler", "executor"):
            port = free_port()
            self.env[name]["STEPSTREAM_HEALTH_PORT"] = str(port)
            self.ready_url[name] = f"http://127.0.0.1:{port}/readyz"

    def pid(self, name: str) -> int:
        return self.stack.processes[name].pid

    def memory_kb(self, kafka: Broker) -> dict[str, int]:
        kb = {name: memory(self.pid(name)).rss_kb for name in (*SERVICES, "app")}
        broker_pid = kafka.pid()
        if broker_pid is not None:
            kb["broker"] = memory(broker_pid).rss_kb
        return kb

    async def start_all(self, within_s: float) -> None:
        for name in SERVICES:
            self.stack.start(name, **self.env[name])
        self.stack.start("app")
        await wait_for_http(f"{self.stack.app_url}/healthz", self.stack, within_s)
        for name in SERVICES:
            await wait_for_http(self.ready_url[name], self.stack, within_s)

    async def restore(self, name: str, lag: Lag, within_s: float) -> Restore:
        """SIGKILL the service, start it again with the same environment, and time it back to work."""
        process = self.stack.processes[name]
        process.kill()
        process.wait()
        began = time.monotonic()
        self.stack.start(name, **self.env[name])
        pid, peak, ready_s = self.pid(name), 0, None
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if self.stack.dead():
                    raise BenchFailure(f"a process died while {name} restored: {', '.join(self.stack.dead())}")
                peak = max(peak, memory(pid).rss_kb)
                if ready_s is None:
                    try:
                        if (await client.get(self.ready_url[name])).status_code == 200:
                            ready_s = time.monotonic() - began
                    except httpx.HTTPError:
                        pass  # not listening yet
                checked = time.monotonic()  # the done offsets are read first: caught up by then
                if ready_s is not None and await lag.behind(name) == 0:
                    caught_up_s = checked - began
                    break
                if time.monotonic() - began > within_s:
                    state = "ready but behind on its input" if ready_s is not None else "not ready"
                    raise BenchFailure(f"{name} did not restore within {within_s:.0f} s: {state}")
                await asyncio.sleep(SAMPLE_S)
        peak = max(peak, memory(pid).hwm_kb)  # the kernel's peak, in case one came between two samples
        await asyncio.sleep(SETTLE_S / 4)
        return Restore(ready_s, caught_up_s, peak, memory(pid).rss_kb)


# -- a phase ---------------------------------------------------------------------------------------


async def publish(stack: Stack, payload: dict[str, int], count: int, done_before: int, total_runs: int) -> float:
    """Produce ``count`` triggers to ``triggers`` as the api does (its record, its key, no Kafka headers);
    seconds from the first send to the last acknowledgement."""
    settings = KafkaSettings.from_env(stack.env)
    topic, codec, text = TopicNames(stack.prefix).triggers, Codec(), json.dumps(payload)
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,  # batches of many records: the bench's producer must not be what is slow
        max_batch_size=256 * 1024,
        **settings.client_options(),
    )
    await producer.start()
    began, step = time.monotonic(), max(1, total_runs // 10)
    try:
        for first in range(0, count, PRODUCE_CHUNK):
            sent = []
            for _ in range(min(PRODUCE_CHUNK, count - first)):
                now_ms = int(time.time() * 1000)
                record = TriggerRequest(
                    workflow="steps", url=stack.workflow_url, payload=text, run_id=new_run_id(), requested_at_ms=now_ms
                )
                sent.append(await producer.send(topic, value=codec.encode(record), key=triggers_key(record).encode()))
            await asyncio.gather(*sent)
            published = done_before + first + len(sent)
            if published // step > (published - len(sent)) // step or published == total_runs:
                progress(f"  published {published:,} of {total_runs:,} triggers")
    finally:
        await producer.stop()
    return time.monotonic() - began


async def wait_until_done(stack: Stack, lag: Lag, *, status: str, runs: int, within_s: float) -> None:
    """Until the api's query store shows ``runs`` runs in ``status`` and every service has caught up.

    The store's count comes first: it moves only once the projector has written a run's last events,
    and after that nothing but the scheduler (the day's timers) and the indexer has anything left to do.
    """
    began = last_report = time.monotonic()
    while True:
        if stack.dead():
            raise BenchFailure(f"a process died: {', '.join(stack.dead())}")
        statuses = lag.statuses()
        if statuses.get("failed"):
            raise BenchFailure(f"runs failed: {statuses} (the store's runs by status)")
        reached = statuses.get(status, 0) >= runs
        behind = await lag.all_behind() if reached or time.monotonic() - last_report >= 10 else None
        if reached and behind is not None and not any(behind.values()):
            return
        if time.monotonic() - began > within_s:
            behind = behind or await lag.all_behind()
            lagging = ", ".join(f"{name} {count:,} records behind" for name, count in behind.items() if count)
            raise BenchFailure(
                f"not done within {within_s:.0f} s: the api's store shows {statuses.get(status, 0):,} of {runs:,} "
                f"runs {status} ({statuses}); {lagging or 'every service caught up'}"
            )
        if behind is not None and time.monotonic() - last_report >= 10:
            progress(f"  {statuses.get(status, 0):,} of {runs:,} {status}; records behind: {behind}")
            last_report = time.monotonic()
        await asyncio.sleep(CHECK_S)


async def measure_phase(phase: Phase, stack: Stack, kafka: Broker, timeout_s: float, *, state_dir: bool) -> None:
    payload, status = PHASES[phase.name]
    services = Services(stack, state_dir=state_dir)
    await services.start_all(timeout_s)
    async with Lag(stack) as lag:
        progress(f"{phase.name}: restarting each idle service (the baseline of a restore)…")
        for name in SERVICES:
            phase.idle_restores[name] = await services.restore(name, lag, timeout_s)
        await asyncio.sleep(SETTLE_S)
        phase.idle_kb = services.memory_kb(kafka)
        for already, count, snapshot in ((0, phase.first, phase.first_kb), (phase.first, phase.runs, phase.full_kb)):
            progress(f"{phase.name}: {count - already:,} runs of {payload}, straight to triggers…")
            began = time.monotonic()
            phase.publish_s += await publish(stack, payload, count - already, already, phase.runs)
            await wait_until_done(stack, lag, status=status, runs=count, within_s=timeout_s)
            phase.process_s += time.monotonic() - began
            progress(f"  {count:,} runs {status} after {phase.process_s:.1f} s of processing")
            await asyncio.sleep(SETTLE_S)
            snapshot.update(services.memory_kb(kafka))
        for name in SERVICES:
            progress(f"{phase.name}: SIGKILL {name} with {phase.runs:,} runs {status}, and start it again…")
            phase.restores[name] = await services.restore(name, lag, timeout_s)
            progress(f"  ready after {phase.restores[name].ready_s:.1f} s")
        phase.statuses = lag.statuses()
    sizes = kafka.topic_bytes(stack.prefix)
    phase.topic_bytes = None if sizes is None else sum(sizes.values())


# -- the report ------------------------------------------------------------------------------------


def extrapolated(phase: Phase) -> dict[str, Any]:
    """The targets at their scale, from the phase's slopes (linear in N; the measured N says how far)."""
    n = phase.runs
    if phase.name == "sleeping":
        per_run = sum(phase.per_run_b(name) for name in SERVICES)
        rss_b = total(phase.idle_kb) * 1024 + per_run * TARGET_SLEEPING
        # A restore is a fixed cost (the idle restart) plus a part that grows with the runs to read back;
        # never less than measured at N (the api's idle restart is the slower: ~3 s to call empty topics caught up).
        restore = {}
        for name in SERVICES:
            idle, full = phase.idle_restores[name].caught_up_s, phase.restores[name].caught_up_s
            restore[name] = max(full, idle + (full - idle) * TARGET_SLEEPING / n)
        slowest = max(restore, key=lambda name: restore[name])
        return {"per_run_b": per_run, "rss_b": rss_b, "restore_s": restore, "slowest": slowest}
    slope = sum(phase.marginal_b(name) for name in SERVICES)
    at_first = total(phase.first_kb) * 1024 + slope * (TARGET_FIRST - phase.first)
    at_target = at_first + slope * (TARGET_FINISHED - TARGET_FIRST)
    return {
        "marginal_b": slope,
        "ratio": total(phase.full_kb) / total(phase.first_kb),
        "growth_ratio": at_target / at_first,
    }


def table(phases: list[Phase]) -> str:
    rows: list[list[str]] = []

    def row(label: str, cell: Any) -> None:
        rows.append([label, *(cell(phase) for phase in phases)])

    def per_service(label: str, cell: Any, *, app: bool = False, totals: Any = None) -> None:
        row(label, lambda p: "" if totals is None else totals(p))
        for name in (*SERVICES, "app") if app else SERVICES:
            row(f"  {name}", lambda p, name=name: cell(p, name))

    row("runs (first batch)", lambda p: f"{p.runs:,} ({p.first:,})")
    for label, attribute in (("idle", "idle_kb"), ("after the first batch", "first_kb"), ("with N runs", "full_kb")):
        per_service(
            f"RSS MiB {label}, services",
            lambda p, n, a=attribute: mib(getattr(p, a)[n]),
            app=True,
            totals=lambda p, a=attribute: mib(total(getattr(p, a))),
        )
        row("  broker (aside)", lambda p, a=attribute: mib(getattr(p, a).get("broker")))
    per_service(
        "bytes per run, services",
        lambda p, n: fmt(p.per_run_b(n)),
        app=True,
        totals=lambda p: fmt(sum(p.per_run_b(n) for n in SERVICES)),
    )
    row("  first batch -> N, services", lambda p: fmt(sum(p.marginal_b(n) for n in SERVICES)))
    per_service("restore s idle, ready / caught up", lambda p, n: restore_cell(p.idle_restores[n]))
    per_service("restore s with N, ready / caught up", lambda p, n: restore_cell(p.restores[n]))
    per_service("peak RSS MiB while restoring", lambda p, n: mib(p.restores[n].peak_kb))
    per_service(
        "RSS MiB after the restore",
        lambda p, n: mib(p.restores[n].rss_after_kb),
        totals=lambda p: mib(sum(p.restores[n].rss_after_kb for n in SERVICES)),
    )
    row("triggers published per s", lambda p: fmt(p.runs / p.publish_s))
    row("time to process N s", lambda p: fmt(p.process_s))
    row("  runs per s", lambda p: fmt(p.runs / p.process_s))
    row("topics' bytes per run", lambda p: "-" if p.topic_bytes is None else fmt(p.topic_bytes / p.runs))
    return render(["measure", *(phase.name for phase in phases)], rows)


def restore_cell(restore: Restore) -> str:
    return f"{fmt(restore.ready_s)} / {fmt(restore.caught_up_s)}"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "MISS"


def targets(phases: list[Phase]) -> str:
    rows = []
    for phase in phases:
        numbers, n = extrapolated(phase), phase.runs
        how = "measured" if n >= (TARGET_SLEEPING if phase.name == "sleeping" else TARGET_FINISHED) else "extrapolated"
        if phase.name == "sleeping":
            rss, slowest = numbers["rss_b"], numbers["slowest"]
            restore_s = numbers["restore_s"][slowest]
            idle_s = phase.idle_restores[slowest].caught_up_s
            rows += [
                [
                    "1,000,000 sleeping runs in < 1 GB RSS, the 4 services (broker aside)",
                    f"{total(phase.full_kb) / 1024:,.0f} MiB at {n:,}; idle + {numbers['per_run_b']:,.0f} B/run x 1M",
                    f"{rss / 1e9:.2f} GB ({how})",
                    verdict(rss < TARGET_BYTES),
                ],
                [
                    "... restored in < 60 s (the slowest service, start -> caught up)",
                    f"{slowest} {phase.restores[slowest].caught_up_s:.1f} s at {n:,} (idle {idle_s:.1f} s)",
                    f"{restore_s:.0f} s ({how}, linear from idle)",
                    verdict(restore_s < TARGET_RESTORE_S),
                ],
            ]
        else:
            rows.append(
                [
                    "RSS after 10,000,000 finished runs <= after 10,000 (+5 %)",
                    f"{numbers['ratio']:.2f}x from {phase.first:,} to {n:,}; {numbers['marginal_b']:,.0f} B/run",
                    f"{numbers['growth_ratio']:.2f}x ({how})",
                    verdict(numbers["growth_ratio"] <= FINISHED_SLACK),
                ]
            )
    return render(["target (services' RSS)", "measured", "at the target's scale", ""], rows, left=(0, 1))


def engine_source() -> str:
    """The commit measured; or, when PYTHONPATH put another copy of the engine first (a commit exported
    with ``git archive``, to measure it while the tree changes), where that copy is."""
    where = Path(stepstream.__file__).resolve().parents[1]
    if where == BENCH_DIR.parent / "services":
        return f"commit {(engine_commit() or 'unknown')[:9]}"
    return f"engine from {where}"


# -- the command line ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="runs per phase (default 100,000; --quick 5,000)")
    parser.add_argument("--quick", action="store_true", help="5,000 runs a phase and 120-s waits (~2 min)")
    parser.add_argument("--phases", default="sleeping,finished", help="which phases, in order (default: both)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    parser.add_argument("--timeout", type=float, help="seconds for each wait: a batch done, a restore (default 1800)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every number to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, query stores)")
    parser.add_argument(
        "--state-dir",
        action="store_true",
        help="give the services a STEPSTREAM_STATE_DIR that outlives their restart, as the Helm chart does",
    )
    args = parser.parse_args(argv)
    args.runs = args.runs or (5_000 if args.quick else 100_000)
    args.timeout = args.timeout or (120.0 if args.quick else 1800.0)
    args.phases = [name.strip() for name in args.phases.split(",") if name.strip()]
    if unknown := [name for name in args.phases if name not in PHASES]:
        parser.error(f"expected phases among {', '.join(PHASES)}, but got {', '.join(unknown)}")
    if args.runs < 20:
        parser.error("expected --runs >= 20")
    if not Path("/proc/self/status").exists():
        parser.error("expected Linux: the memory is read from /proc/<pid>/status")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    load_before = machine()["load_average"]
    first = min(max(1_000, args.runs // 10), args.runs // 2)
    phases = [Phase(name, args.runs, first) for name in args.phases]
    with session("stepstream-scale-", keep=args.keep) as bench:
        with broker(bench.directory) as kafka:
            for phase in phases:
                with bench.stack(kafka, partitions=args.partitions, folder=phase.name, isolated=True) as stack:
                    progress(f"{phase.name}: a fresh stack in {stack.directory}")
                    asyncio.run(measure_phase(phase, stack, kafka, args.timeout, state_dir=args.state_dir))
        print()
        print(
            f"Stepstream scale, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {engine_source()}, {os.cpu_count()} cores, "
            f"{args.runs:,} runs a phase (one step; sleeping: then a day's sleep), triggers produced straight to "
            f"Kafka, {args.partitions} partitions, "
            f"{'a state folder kept across restarts, ' if args.state_dir else ''}"
            f"took {time.monotonic() - began:.0f} s, "
            f"load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        print(table(phases))
        print()
        print(targets(phases))
        for phase in phases:
            print(f"{phase.name}: the api's query store at the end, runs by status: {phase.statuses}")
        bench.warn_about_logs()
        if args.json:
            write_json(
                args.json,
                load_before=load_before,
                parameters={
                    "runs": args.runs,
                    "first": first,
                    "partitions": args.partitions,
                    "quick": args.quick,
                    "state_dir": args.state_dir,
                    "payloads": {name: PHASES[name][0] for name in args.phases},
                },
                phases=[{**asdict(phase), "extrapolated": extrapolated(phase)} for phase in phases],
                service_log_error_lines=[line for stack in bench.stacks for line in stack.log_problems],
            )
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    sys.exit(main())
