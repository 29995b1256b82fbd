"""Measure how fast a new api replica rebuilds its query store from the topics, and how fast it is ready
again when restarted over the store it already has.

Starts a local Kafka broker in a temporary folder (or uses ``KAFKA_BOOTSTRAP_SERVERS``), creates the
engine's topics under a fresh prefix (12 partitions, like the default), and produces N completed run
histories to ``events``, keyed by run id, as the projector writes them: one run of M steps driven
through the core's ``decide``/``evolve``, one step per delivery (RunStarted, StepScheduled, then per
step a StepCompleted and the next StepScheduled, the last step's StepCompleted and RunCompleted: 2 + 2M
events a run), copied for each run (its run id and delivery ids, its times moved on), encoded with the
engine's Avro codec; batched, ``acks=all``, idempotent, not transactional. ``flow`` stays empty.

Then, in this process:

1. **rebuild**: an ``Indexer`` (the api's) over a fresh query store, run as an asyncio task, timed
   from the task's start until ``lag()`` is None (polled every 50 ms): it has read every partition of
   ``events`` and ``flow`` up to the ends they had when it started. Reports the events indexed, the
   seconds, events/s, the store's size at that moment, bytes per event, and this process's resident
   memory: before, and the peak during the rebuild (the kernel's ``VmHWM``, reset just before through
   ``/proc/self/clear_refs``, and ``VmRSS`` sampled at every poll);
2. **restart**: the indexer stopped (its task cancelled) and the store closed, the same store opened
   again and a new ``Indexer``, timed the same way: it starts from the positions kept in the store, so
   it has nothing to read.

After each phase it checks the store: every event once, every run ``completed``. Last, to tell the
store's share from Kafka's, **store alone**: the same events, encoded in memory, decoded and applied to
another fresh store in this thread as the indexer applies them (``QueryStore.apply`` in batches of
1,000, the indexer's ``max_records``, then ``save_positions`` and ``announce``), without Kafka or asyncio.

``--store`` picks the query store (``STEPSTREAM_DATABASE``'s two kinds): ``sqlite`` (the default), a
file in the temporary folder; ``postgresql``, a new schema for each phase (rebuild and restart share
one) on the server of ``--postgres-url``, else on one started for this run by the tests' helper
(``tests/postgres.py``: ``initdb`` in a temporary folder, ``fsync=off``); ``both``, the phases on each,
over the same topics, then a table of the two side by side. A SQLite store's size is its database file
and its ``-wal``; a PostgreSQL store's, ``pg_total_relation_size`` (table, indexes, TOAST) summed over
the tables of its schema (the server's WAL is shared, not counted). The memory is this process's only:
a PostgreSQL server's is not in it. ``--json`` writes each store's numbers with its name (``store``):
one object under ``results``, or, with ``both``, a list of them.

    .venv/bin/python bench/indexer_rebuild.py              # 20,000 runs x 5 steps = 240,000 events
    .venv/bin/python bench/indexer_rebuild.py --quick      # 2,000 runs x 5 steps
    .venv/bin/python bench/indexer_rebuild.py --runs 50000 --steps 10 --json /tmp/rebuild.json
    .venv/bin/python bench/indexer_rebuild.py --store both     # SQLite, then PostgreSQL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import re
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from aiokafka import AIOKafkaProducer
from harness import (  # bench/harness.py: the broker, the session and the helpers
    BenchFailure,
    broker,
    delete_topics,
    fmt,
    machine,
    progress,
    render,
    session,
    write_json,
)

from stepstream.api.indexer import Indexer
from stepstream.avro import EVENT_TYPES, Codec
from stepstream.config import KafkaSettings
from stepstream.core import (
    Complete,
    Continue,
    Defaults,
    Event,
    Outcome,
    Rejected,
    ReportDelivery,
    RunState,
    StepKind,
    StepResult,
    TriggerRun,
    decide,
    evolve,
)
from stepstream.kafka import TopicNames, ensure_topics
from stepstream.store import QueryStore, open_query_store

PRODUCE_CHUNK = 10_000  # sends in flight before waiting for their acknowledgements
POLL_S = 0.05  # how often lag() is asked (and VmRSS sampled)
PROGRESS_EVERY_S = 5.0
STORE_BATCH = 1_000  # events a batch in the store-alone phase: the indexer's max_records
DEFAULTS = Defaults()
WORKFLOW = "steps"
URL = "http://127.0.0.1:8000/workflows/steps"
BEHIND = re.compile(r"(\d+) records behind")
STORES = ("sqlite", "postgresql")
# tests/postgres.py starts the PostgreSQL server, as for the tests: bench/ alone is on sys.path.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))


# -- the runs -----------------------------------------------------------------------------------


def run_history(run_id: str, steps: int, started_ms: int) -> list[Event]:
    """The events of one completed run of ``steps`` steps, one step per delivery (budget 0), as the
    projector decides them: the trigger, then a report per delivery, the last one completing the run."""
    state: RunState | None = None
    events: list[Event] = []

    def apply(command: TriggerRun | ReportDelivery) -> None:
        nonlocal state
        decision = decide(state, command, DEFAULTS)
        if isinstance(decision, Rejected):
            raise BenchFailure(f"the core rejected a command of {run_id}: {decision.reason}")
        for event in decision:
            state = evolve(state, event)
        events.extend(decision)

    apply(
        TriggerRun(
            run_id=run_id,
            workflow=WORKFLOW,
            url=URL,
            payload=json.dumps({"steps": steps, "sleep_ms": 0}),
            now_ms=started_ms,
            headers=(("x-tenant", "acme"),),
            label="rebuild",
        )
    )
    for index in range(steps):
        assert state is not None
        now = started_ms + 10 * (index + 1)
        delivery = next(d for d in state.in_flight if not d.execute_only)
        output = json.dumps({"i": index, "t": now / 1000})
        last = index == steps - 1
        outcome: Outcome = Complete(output=json.dumps({"finished_at": now / 1000})) if last else Continue()
        apply(
            ReportDelivery(
                run_id=run_id,
                delivery_id=delivery.delivery_id,
                attempt=delivery.attempt,
                now_ms=now,
                steps=(StepResult(index=index, name=f"step-{index}", kind=StepKind.RUN, output=output),),
                outcome=outcome,
            )
        )
    return events


TIMES = ("at_ms", "not_before_ms")  # the event fields that are times, shifted for each copy


def copy_history(template: list[Event], template_id: str, run_id: str, shift_ms: int) -> list[Event]:
    """``template``'s events as those of run ``run_id``: its id in every text field (the run id, the
    delivery ids) replaced, and its times moved by ``shift_ms``."""
    copies: list[Event] = []
    for event in template:
        changes: dict[str, Any] = {}
        for field in fields(event):
            value = getattr(event, field.name)
            if isinstance(value, str) and template_id in value:
                changes[field.name] = value.replace(template_id, run_id)
            elif field.name in TIMES and isinstance(value, int):
                changes[field.name] = value + shift_ms
        copies.append(replace(event, **changes))
    return copies


@dataclass(frozen=True, slots=True)
class Produced:
    runs: int
    events: int
    value_bytes: int  # the encoded values (and keys) produced, without Kafka's record and batch overhead
    seconds: float


async def produce(settings: KafkaSettings, runs: int, steps: int) -> Produced:
    """Write ``runs`` run histories to ``events``, each record keyed by its run id."""
    topic = TopicNames(settings.topic_prefix).events
    codec = Codec()
    tag = uuid.uuid4().hex[:8]
    base_ms = int(time.time() * 1000) - 86_400_000  # a day ago, a run every 2 ms
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=20,
        max_batch_size=256 * 1024,
        **settings.client_options(),
    )
    template_id = f"rebuild-{tag}-template"
    template = run_history(template_id, steps, base_ms)
    began = last_report = time.monotonic()
    events = size = 0
    await producer.start()
    try:
        pending: list[asyncio.Future[Any]] = []
        for number in range(runs):
            run_id = f"rebuild-{tag}-{number:07d}"
            key = run_id.encode()
            for event in copy_history(template, template_id, run_id, 2 * number):
                value = codec.encode(event)
                pending.append(await producer.send(topic, value=value, key=key))
                events += 1
                size += len(value) + len(key)
            if len(pending) >= PRODUCE_CHUNK:
                await asyncio.gather(*pending)
                pending.clear()
                if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                    elapsed = time.monotonic() - began
                    progress(f"  produced {number + 1:,} runs, {events:,} events in {elapsed:.0f} s…")
                    last_report = time.monotonic()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return Produced(runs=runs, events=events, value_bytes=size, seconds=time.monotonic() - began)


# -- memory -------------------------------------------------------------------------------------


def memory_kb() -> tuple[int, int]:
    """This process's VmRSS and VmHWM (its peak since start, or since the last reset), in kB."""
    fields: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak() -> bool:
    """Reset VmHWM to the current VmRSS (Linux 4.0+); False if the kernel would not."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    rss, hwm = memory_kb()
    return hwm <= rss + 1024  # it did go down to about now (the process may grow a little in between)


# -- the indexer --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Phase:
    name: str
    seconds: float
    events_indexed: int  # rows the store gained
    db_bytes: int  # the store when the indexer was ready: SQLite's database file, PostgreSQL's tables
    wal_bytes: int  # SQLite's -wal then; 0 on PostgreSQL
    rss_before_kb: int
    rss_peak_kb: int  # the highest of VmHWM (if reset) and the sampled VmRSS
    hwm_reset: bool


def file_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


COUNT = (  # SQL both databases understand: PostgreSQL cannot sum a boolean
    "SELECT (SELECT count(*) FROM events), count(*),"
    " coalesce(sum(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0) FROM runs"
)
# Every table of the store's schema (events, runs, steps, waiters, flow_keys, positions), with its
# indexes and TOAST.
PG_SIZE = (
    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c"
    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
)


@dataclass(frozen=True, slots=True)
class Target:
    """Where one query store lives: a SQLite file, or a PostgreSQL schema (the url's ``search_path``)."""

    store: str  # one of STORES
    location: str  # the file's path, or the url

    def open(self) -> QueryStore:
        return open_query_store(self.location)

    def count(self) -> tuple[int, int, int]:
        """The store's events, runs, and completed runs, read through a connection of its own; zeros
        while there is no store yet."""
        if self.store == "sqlite":
            if not Path(self.location).exists():
                return 0, 0, 0
            with contextlib.closing(sqlite3.connect(f"file:{self.location}?mode=ro", uri=True)) as connection:
                row = connection.execute(COUNT).fetchone()
        else:
            import psycopg  # only a run on PostgreSQL needs it

            with psycopg.connect(self.location, autocommit=True) as connection:
                if connection.execute("SELECT to_regclass('runs')").fetchone() == (None,):
                    return 0, 0, 0
                row = connection.execute(COUNT).fetchone()
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])

    def size(self) -> tuple[int, int]:
        """The store's bytes: SQLite's database file and its ``-wal``; PostgreSQL's tables, and 0."""
        if self.store == "sqlite":
            return file_size(Path(self.location)), file_size(Path(f"{self.location}-wal"))
        import psycopg

        with psycopg.connect(self.location, autocommit=True) as connection:
            row = connection.execute(PG_SIZE).fetchone()
        assert row is not None
        return int(row[0]), 0


@contextlib.contextmanager
def fresh_target(store: str, directory: Path, name: str, server: str | None) -> Iterator[Target]:
    """A new, empty store: a file under ``directory``, or a schema of its own on ``server``, dropped after."""
    if store == "sqlite":
        yield Target(store, str(directory / store / name / "stepstream.db"))
        return
    from tests.postgres import fresh_schema

    assert server is not None
    with fresh_schema(server) as url:
        yield Target(store, url)


async def time_indexer(
    name: str,
    factory: Callable[[KafkaSettings, QueryStore], Indexer],
    settings: KafkaSettings,
    target: Target,
    *,
    timeout_s: float,
) -> Phase:
    """Start an Indexer over the store at ``target`` and time it until it has caught up; then stop it."""
    before_events = target.count()[0]
    gc.collect()
    store = target.open()
    rss_before, _ = memory_kb()
    hwm_reset = reset_peak()
    peak = rss_before
    indexer = factory(settings, store)
    began = last_report = time.monotonic()
    task = asyncio.create_task(indexer.run(), name=f"indexer ({name})")
    try:
        while (lag := indexer.lag()) is not None:
            if task.done():
                task.result()  # raises what stopped it
                raise BenchFailure("the indexer returned before it caught up")
            elapsed = time.monotonic() - began
            if elapsed > timeout_s:
                raise BenchFailure(f"the indexer did not catch up within {timeout_s:.0f} s: {lag}")
            if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                behind = BEHIND.search(lag)
                left = f"{int(behind.group(1)):,} records behind" if behind else lag
                progress(f"  {name}: {elapsed:.0f} s, {left}, RSS {peak / 1024:.0f} MiB so far…")
                last_report = time.monotonic()
            await asyncio.sleep(POLL_S)
            peak = max(peak, memory_kb()[0])
        seconds = time.monotonic() - began
        rss, hwm = memory_kb()
        peak = max(peak, rss, hwm if hwm_reset else 0)
        db_bytes, wal_bytes = target.size()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        store.close()
    return Phase(
        name=name,
        seconds=seconds,
        events_indexed=target.count()[0] - before_events,
        db_bytes=db_bytes,
        wal_bytes=wal_bytes,
        rss_before_kb=rss_before,
        rss_peak_kb=peak,
        hwm_reset=hwm_reset,
    )


def check(target: Target, produced: Produced) -> None:
    events, runs, completed = target.count()
    if (events, runs, completed) != (produced.events, produced.runs, produced.runs):
        raise BenchFailure(
            f"the store holds {events:,} events and {runs:,} runs ({completed:,} completed); "
            f"expected {produced.events:,} events and {produced.runs:,} completed runs"
        )


@dataclass(frozen=True, slots=True)
class StoreAlone:
    """The same events decoded and applied to a fresh store in this thread, without Kafka or asyncio."""

    events: int
    seconds: float
    decode_seconds: float  # of which decoding the records
    db_bytes: int
    wal_bytes: int


def store_alone(target: Target, runs: int, steps: int, batch: int) -> StoreAlone:
    """Apply the runs' events to a fresh store at ``target`` in batches of ``batch`` as the indexer does
    (decode, ``QueryStore.apply`` in one transaction, ``save_positions``, ``announce``), timing only that."""
    codec = Codec()
    template_id = "rebuild-alone-template"
    template = run_history(template_id, steps, int(time.time() * 1000))
    values = [
        codec.encode(event)
        for number in range(runs)
        for event in copy_history(template, template_id, f"rebuild-alone-{number:07d}", 2 * number)
    ]
    store = target.open()
    decoding = 0.0
    try:
        began = time.monotonic()
        for first in range(0, len(values), batch):
            decode_began = time.monotonic()
            events = [cast(Event, codec.decode(value, EVENT_TYPES)) for value in values[first : first + batch]]
            decoding += time.monotonic() - decode_began
            store.apply(events)
            store.save_positions({("events", partition): first for partition in range(12)})
            store.announce({event.run_id for event in events})  # a NOTIFY on PostgreSQL, nothing on SQLite
        seconds = time.monotonic() - began
        db_bytes, wal_bytes = target.size()
    finally:
        store.close()
    return StoreAlone(
        events=len(values), seconds=seconds, decode_seconds=decoding, db_bytes=db_bytes, wal_bytes=wal_bytes
    )


# -- the benchmark ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Numbers:
    store: str
    indexer_module: str
    produced: Produced
    rebuild: Phase
    restart: Phase
    alone: StoreAlone
    db_bytes_closed: int  # the store once closed (SQLite: its WAL checkpointed into the file)


async def measure(
    args: argparse.Namespace, settings: KafkaSettings, directory: Path, server: str | None
) -> list[Numbers]:
    """Produce the runs once, then time the phases on each store of ``--store`` over the same topics."""
    names = TopicNames(settings.topic_prefix)
    progress(f"creating topics with prefix {settings.topic_prefix!r} ({args.partitions} partitions)…")
    await ensure_topics(
        settings.bootstrap_servers,
        names,
        partitions=args.partitions,
        replication_factor=settings.replication_factor,
        client_options=settings.client_options(),
    )
    events = args.runs * (2 + 2 * args.steps)
    progress(f"producing {args.runs:,} runs x {args.steps} steps ({events:,} events) to {names.events}…")
    produced = await produce(settings, args.runs, args.steps)
    progress(
        f"  produced {produced.events:,} events ({produced.value_bytes / 1e6:.1f} MB of keys and values) in "
        f"{produced.seconds:.1f} s, {produced.events / produced.seconds:,.0f} events/s"
    )
    return [await measure_store(store, args, settings, produced, directory, server) for store in args.stores]


async def measure_store(
    store: str,
    args: argparse.Namespace,
    settings: KafkaSettings,
    produced: Produced,
    directory: Path,
    server: str | None,
) -> Numbers:
    module, factory = Indexer.__module__, Indexer
    with fresh_target(store, directory, "store", server) as target:
        progress(f"rebuild: an Indexer ({module}) over a fresh query store on {store}…")
        rebuild = await time_indexer("rebuild", factory, settings, target, timeout_s=args.timeout)
        check(target, produced)
        progress(f"  ready after {rebuild.seconds:.1f} s, {rebuild.events_indexed / rebuild.seconds:,.0f} events/s")
        progress(f"restart: a new Indexer over the same store on {store}…")
        restart = await time_indexer("restart", factory, settings, target, timeout_s=args.timeout)
        check(target, produced)
        progress(f"  ready after {restart.seconds:.2f} s")
        db_bytes_closed = target.size()[0]
    progress(f"store alone: the same events decoded and applied to a fresh store on {store}, {STORE_BATCH:,} a batch…")
    with fresh_target(store, directory, "alone", server) as target:
        alone = store_alone(target, args.runs, args.steps, STORE_BATCH)
    progress(f"  applied in {alone.seconds:.1f} s, {alone.events / alone.seconds:,.0f} events/s")
    return Numbers(
        store=store,
        indexer_module=module,
        produced=produced,
        rebuild=rebuild,
        restart=restart,
        alone=alone,
        db_bytes_closed=db_bytes_closed,
    )


def mib(kb: int) -> str:
    return f"{kb / 1024:.0f}"


def report(numbers: Numbers) -> str:
    headers = [
        "phase",
        "events indexed",
        "s to ready",
        "events/s",
        "store MB (db + wal)",
        "B/event",
        "RSS before MiB",
        "peak RSS MiB",
        "growth MiB",
    ]
    rows = []
    for phase in (numbers.rebuild, numbers.restart):
        store = phase.db_bytes + phase.wal_bytes
        rows.append(
            [
                f"{phase.name} (fresh store)" if phase is numbers.rebuild else f"{phase.name} (same store)",
                f"{phase.events_indexed:,}",
                fmt(phase.seconds),
                f"{phase.events_indexed / phase.seconds:,.0f}" if phase.events_indexed else "-",
                f"{store / 1e6:.1f} ({phase.db_bytes / 1e6:.1f} + {phase.wal_bytes / 1e6:.1f})",
                f"{store / numbers.produced.events:,.0f}",
                mib(phase.rss_before_kb),
                mib(phase.rss_peak_kb) + ("" if phase.hwm_reset else " (sampled)"),
                mib(phase.rss_peak_kb - phase.rss_before_kb),
            ]
        )
    alone = numbers.alone
    store = alone.db_bytes + alone.wal_bytes
    rows.append(
        [
            "store alone (no Kafka)",
            f"{alone.events:,}",
            fmt(alone.seconds),
            f"{alone.events / alone.seconds:,.0f}",
            f"{store / 1e6:.1f} ({alone.db_bytes / 1e6:.1f} + {alone.wal_bytes / 1e6:.1f})",
            f"{store / alone.events:,.0f}",
            "-",
            "-",
            "-",
        ]
    )
    return render(headers, rows)


def side_by_side(results: list[Numbers]) -> str:
    """The stores' main numbers in a column each, and the second's as a ratio of the first's."""
    metrics: list[tuple[str, Callable[[Numbers], float], Callable[[float], str]]] = [
        ("rebuild events/s", lambda n: n.rebuild.events_indexed / n.rebuild.seconds, lambda v: f"{v:,.0f}"),
        ("rebuild s to ready", lambda n: n.rebuild.seconds, fmt),
        ("store B/event at ready", lambda n: (n.rebuild.db_bytes + n.rebuild.wal_bytes) / n.produced.events, fmt),
        ("store B/event closed", lambda n: n.db_bytes_closed / n.produced.events, fmt),
        ("restart s to ready", lambda n: n.restart.seconds, fmt),
        ("store alone events/s", lambda n: n.alone.events / n.alone.seconds, lambda v: f"{v:,.0f}"),
    ]
    first, second = results
    headers = ["", first.store, second.store, f"{second.store} / {first.store}"]
    rows = [
        [name, shown(value(first)), shown(value(second)), f"{value(second) / value(first):.2f}"]
        for name, value, shown in metrics
    ]
    return render(headers, rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="completed runs on the events topic (default 20,000; --quick 2,000)")
    parser.add_argument("--steps", type=int, default=5, help="steps per run, one delivery each (default 5)")
    parser.add_argument("--quick", action="store_true", help="2,000 runs")
    parser.add_argument("--partitions", type=int, default=12, help="partitions per topic (default 12)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds for each phase (default 1800)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (the store, the broker data)")
    parser.add_argument(
        "--store", choices=(*STORES, "both"), default="sqlite", help="the query store's database (default sqlite)"
    )
    parser.add_argument(
        "--postgres-url", metavar="URL", help="a PostgreSQL server whose user may create schemas (default: start one)"
    )
    args = parser.parse_args(argv)
    args.stores = STORES if args.store == "both" else (args.store,)
    args.runs = args.runs if args.runs is not None else (2_000 if args.quick else 20_000)
    if args.runs < 1 or args.steps < 1 or args.partitions < 1:
        parser.error("expected --runs, --steps and --partitions >= 1")
    if not Path("/proc/self/status").exists():
        parser.error("expected Linux: the memory is read from /proc/self/status")
    return args


def settings_for(bootstrap: str, prefix: str, partitions: int) -> KafkaSettings:
    """The settings the api would have: the security ones from the environment, the rest ours."""
    environ = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "STEPSTREAM_TOPIC_PREFIX": prefix,
        "STEPSTREAM_PARTITIONS": str(partitions),
    }
    return KafkaSettings.from_env(environ)


@contextlib.contextmanager
def topics_deleted(bootstrap: str, prefix: str, ours: bool) -> Iterator[None]:
    """On a cluster not ours, delete the topics at the end (ours goes with its folder)."""
    try:
        yield
    finally:
        if not ours:
            with contextlib.suppress(Exception):
                asyncio.run(delete_topics(bootstrap, prefix))


@contextlib.contextmanager
def postgres(args: argparse.Namespace) -> Iterator[str | None]:
    """The PostgreSQL server's url: ``--postgres-url``, or one started for this run; None on SQLite alone."""
    if "postgresql" not in args.stores:
        yield None
    elif args.postgres_url:
        yield args.postgres_url
    else:
        from tests.postgres import postgres_server

        progress("starting a PostgreSQL server (tests/postgres.py)…")
        with postgres_server() as url:
            yield url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # not its retries while new topics get leaders
    prefix = f"bench{uuid.uuid4().hex[:8]}."
    began = time.monotonic()
    load_before = machine()["load_average"]
    with session("stepstream-rebuild-", keep=args.keep) as bench:
        with (
            postgres(args) as server,
            broker(bench.directory) as kafka,
            topics_deleted(kafka.bootstrap, prefix, kafka.ours),
        ):
            settings = settings_for(kafka.bootstrap, prefix, args.partitions)
            try:
                results = asyncio.run(measure(args, settings, bench.directory, server))
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # let the broker and the server stop, the topics go
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
        took = time.monotonic() - began
        produced = results[0].produced
        print()
        print(
            f"Stepstream query store rebuild, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"{produced.runs:,} runs x {args.steps} steps = {produced.events:,} events "
            f"({produced.value_bytes / produced.events:.0f} B a record's key and value) on {args.partitions} "
            f"partitions, produced in {produced.seconds:.0f} s ({produced.events / produced.seconds:,.0f} events/s), "
            f"took {took:.0f} s, load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        for numbers in results:
            if len(results) > 1:
                print(f"\n{numbers.store}:")
            print(report(numbers))
            closed = "file once closed (WAL checkpointed)" if numbers.store == "sqlite" else "tables once closed"
            print(
                f"Indexer from {numbers.indexer_module}; store on {numbers.store}, {closed}: "
                f"{numbers.db_bytes_closed / 1e6:.1f} MB, {numbers.db_bytes_closed / produced.events:.0f} B/event; "
                f"store alone: {numbers.alone.decode_seconds:.1f} s of its {numbers.alone.seconds:.1f} s decoding"
            )
        if len(results) > 1:
            print()
            print(side_by_side(results))
        if args.json:
            write_json(
                args.json,
                load_before=load_before,
                parameters={"runs": args.runs, "steps": args.steps, "partitions": args.partitions, "store": args.store},
                results=asdict(results[0]) if len(results) == 1 else [asdict(numbers) for numbers in results],
            )
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    sys.exit(main())
