"""Probe faust-streaming against the live Kafka broker, side by side with a plain aiokafka loop.

Question: should Stepstream's services (consume-transform-produce in Kafka transactions, batches,
read_committed, per-partition state restored from a compacted topic) be built on faust-streaming,
or on aiokafka directly? Every worker runs in its own subprocess (so startup and RSS are its own);
the driver (this process) feeds records and times them. Variants, each on its own 1-partition
`bench.fp-<run>-<variant>-in/-out` topics:

  aiokafka-alo       plain loop: getmany -> produce -> commit offsets (at-least-once)
  faust-alo          faust agent, processing_guarantee="at_least_once" (defaults)
  aiokafka-eos       plain loop: one Kafka transaction per fetched batch, send_offsets_to_transaction,
                     read_committed
  faust-eos          faust agent, processing_guarantee="exactly_once", broker_commit_interval=0.1 s,
                     the app also consumes its output topic (see (b))
  faust-eos-default  the same with faust's default broker_commit_interval (2.8 s)
  faust-eos-nosub    exactly_once as in faust's docs: the agent sends to a topic the app does not consume

Probes:
  (a) does each worker start, consume and produce against this broker (Kafka 4.x) at all;
  (b) records per transaction: a burst of B records into each exactly-once worker, then count the
      transaction markers it left in its output partition (each commit writes one marker, which takes
      an offset): markers = (high watermark growth) - B; 0 markers = output not transactional;
  (c) end-to-end latency, sequential (send one, wait for its output on a read_committed consumer),
      variants interleaved record by record, each within a time budget; RSS and CPU of each worker;
  (d) startup time: spawn the process with one record waiting -> that record's output seen;
  (e) a faust Table (changelog topic) survives a restart: counts continue after the worker restarts.

Run (from the repository root; broker from $KAFKA_BOOTSTRAP_SERVERS, default 127.0.0.1:19092):

    .venv/bin/python bench/faust_probe.py            # ~1.5 minutes
    .venv/bin/python bench/faust_probe.py --quick    # ~1 minute

Prints tables; exits non-zero if a worker does not start, a record is lost or late past its
timeout, or the table state is not restored. It stops every process it starts and deletes the
topics it created (`bench.fp-<run>-*`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
WORKER_FETCH_MAX_WAIT_MS = 100  # the aiokafka workers' fetch wait (faust hard-codes 1500)
DRIVER_FETCH_MAX_WAIT_MS = 10


@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # worker kind
    args: tuple[str, ...] = ()
    eos: bool = False


VARIANTS = [
    Variant("aiokafka-alo", "aiokafka", ("--guarantee", "at_least_once")),
    Variant("faust-alo", "faust", ("--guarantee", "at_least_once")),
    Variant("aiokafka-eos", "aiokafka", ("--guarantee", "exactly_once"), eos=True),
    Variant("faust-eos", "faust", ("--guarantee", "exactly_once", "--commit-interval", "0.1", "--subscribe-out"), True),
    Variant("faust-eos-default", "faust", ("--guarantee", "exactly_once", "--subscribe-out"), eos=True),
    Variant("faust-eos-nosub", "faust", ("--guarantee", "exactly_once", "--commit-interval", "0.1"), eos=True),
]


# --------------------------------------------------------------------------- workers (subprocesses)


def run_faust_worker(a: argparse.Namespace) -> None:
    import faust

    app = faust.App(
        a.app_id,
        broker=f"kafka://{BOOTSTRAP}",
        store="memory://",
        web_enabled=False,
        processing_guarantee=a.guarantee,
        broker_commit_interval=a.commit_interval,
        topic_partitions=1,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        datadir=a.datadir,
    )
    in_topic = app.topic(a.in_topic, key_serializer="raw", value_serializer="raw")
    out_topic = app.topic(a.out_topic, key_serializer="raw", value_serializer="raw")

    if a.table:
        counts = app.Table("counts", default=int, partitions=1)

        @app.agent(in_topic)
        async def count(stream):
            async for event in stream.events():
                # str keys: a table's key serializer defaults to json, and raw bytes keys are written as-is
                # but decoded as JSON on recovery, which then stalls ("Error in recovery ...") instead of failing.
                key = event.key.decode()
                counts[key] += 1
                await out_topic.send(key=event.key, value=event.value + b"|count=%d" % counts[key])

    else:

        @app.agent(in_topic)
        async def transform(stream):
            async for event in stream.events():
                await out_topic.send(key=event.key, value=event.value)

    if a.subscribe_out:
        # faust's TransactionManager.send picks the transactional producer from the consumer's metadata
        # for the destination topic; without a subscription to the output there is none (see the ADR).
        @app.agent(out_topic)
        async def drain(stream):
            async for _ in stream.events():
                pass

    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


async def run_aiokafka_worker(a: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    eos = a.guarantee == "exactly_once"
    consumer = AIOKafkaConsumer(
        a.in_topic,
        bootstrap_servers=BOOTSTRAP,
        group_id=a.app_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=WORKER_FETCH_MAX_WAIT_MS,
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=BOOTSTRAP,
        acks="all",
        linger_ms=0,
        enable_idempotence=True,
        transactional_id=f"{a.app_id}-0" if eos else None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            if not batch:
                continue
            offsets = {TopicPartition(tp.topic, tp.partition): msgs[-1].offset + 1 for tp, msgs in batch.items()}
            records = [m for msgs in batch.values() for m in msgs]
            if eos:
                async with producer.transaction():  # one transaction for the whole batch
                    for m in records:
                        await producer.send(a.out_topic, m.value, key=m.key)
                    await producer.send_offsets_to_transaction(offsets, a.app_id)
            else:
                futures = [await producer.send(a.out_topic, m.value, key=m.key) for m in records]
                await asyncio.gather(*futures)
                await consumer.commit(offsets)
    finally:
        await consumer.stop()
        await producer.stop()


def worker_main(argv: list[str]) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--worker", choices=("faust", "aiokafka"), required=True)
    p.add_argument("--app-id", required=True)
    p.add_argument("--in-topic", required=True)
    p.add_argument("--out-topic", required=True)
    p.add_argument("--guarantee", default="at_least_once")
    p.add_argument("--commit-interval", type=float, default=2.8)
    p.add_argument("--subscribe-out", action="store_true")
    p.add_argument("--table", action="store_true")
    p.add_argument("--datadir", default=tempfile.gettempdir())
    a = p.parse_args(argv)
    if a.worker == "faust":
        sys.argv = [sys.argv[0], "worker"]  # faust's Worker reads argv
        run_faust_worker(a)
    else:
        asyncio.run(run_aiokafka_worker(a))


# --------------------------------------------------------------------------- driver


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in KiB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Worker:
    variant: Variant
    run: str
    logdir: Path
    suffix: str = ""
    proc: subprocess.Popen | None = None
    log: Path | None = None

    @property
    def base(self) -> str:
        return f"bench.fp-{self.run}-{self.variant.name}{self.suffix}"

    @property
    def in_topic(self) -> str:
        return f"{self.base}-in"

    @property
    def out_topic(self) -> str:
        return f"{self.base}-out"

    def start(self, *extra: str) -> None:
        self.log = self.logdir / f"{self.variant.name}{self.suffix}-{int(time.time() * 1000)}.log"
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", self.variant.kind, "--app-id", f"{self.base}-app"]
        cmd += ["--in-topic", self.in_topic, "--out-topic", self.out_topic, "--datadir", str(self.logdir / self.base)]
        cmd += [*self.variant.args, *extra]
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self, timeout: float = 20.0) -> float:
        """SIGTERM, wait, SIGKILL if needed; returns the seconds it took to exit."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return time.perf_counter() - t0

    def tail(self, n: int = 15) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])


class Driver:
    """Produces to the workers' input topics and waits for outputs on one read_committed consumer."""

    def __init__(self) -> None:
        self.waiters: dict[bytes, asyncio.Future] = {}
        self.producer = None
        self.consumer = None
        self.reader: asyncio.Task | None = None

    async def start(self, out_topics: list[str]) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        self.producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
        await self.producer.start()
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=BOOTSTRAP, isolation_level="read_committed", fetch_max_wait_ms=DRIVER_FETCH_MAX_WAIT_MS
        )
        await self.consumer.start()
        self.consumer.assign([TopicPartition(t, 0) for t in out_topics])
        await self.consumer.seek_to_beginning()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=1000)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    ident = m.value.split(b"|count=")[0]
                    fut = self.waiters.pop(ident, None)
                    if fut is not None and not fut.done():
                        fut.set_result((now, m.value))

    def expect(self, ident: bytes) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.waiters[ident] = fut
        return fut

    async def send(self, topic: str, ident: bytes, key: bytes = b"k") -> asyncio.Future:
        fut = self.expect(ident)
        await self.producer.send_and_wait(topic, ident, key=key)
        return fut

    async def roundtrip(self, topic: str, ident: bytes, wait_s: float, key: bytes = b"k") -> tuple[float, bytes]:
        t0 = time.perf_counter()
        fut = await self.send(topic, ident, key)
        t1, value = await asyncio.wait_for(fut, wait_s)
        return t1 - t0, value

    async def stop(self) -> None:
        if self.reader:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.reader
        if self.consumer:
            await self.consumer.stop()
        if self.producer:
            await self.producer.stop()


async def high_watermark(topic: str) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    c = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, isolation_level="read_uncommitted")
    await c.start()
    try:
        tp = TopicPartition(topic, 0)
        return (await c.end_offsets([tp]))[tp]
    finally:
        await c.stop()


@dataclass
class Row:
    startup_s: float = float("nan")
    latencies_ms: list[float] = field(default_factory=list)
    budget_hit: bool = False
    cpu_s: float = float("nan")
    rss_mib: float = float("nan")
    hwm_mib: float = float("nan")
    burst_s: float = float("nan")
    markers: int | None = None
    stop_s: float = float("nan")
    idle_cpu_pct: float = float("nan")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def probe(args: argparse.Namespace, logdir: Path) -> int:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # retried metadata errors (NotLeader…) on fresh clients

    run = uuid.uuid4().hex[:8]
    workers = [Worker(v, run, logdir) for v in VARIANTS]
    table_worker = Worker(Variant("faust-table", "faust", ("--guarantee", "at_least_once", "--table")), run, logdir)
    rows = {w.variant.name: Row() for w in workers}
    failures: list[str] = []
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    driver = Driver()
    t_start = time.perf_counter()
    try:
        topics = [t for w in [*workers, table_worker] for t in (w.in_topic, w.out_topic)]
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics])
        await driver.start([w.out_topic for w in [*workers, table_worker]])

        # (a) + (d): start each worker alone, with one record waiting; time to its output
        for w in workers:
            t0 = time.perf_counter()
            fut = await driver.send(w.in_topic, f"{w.variant.name}|start".encode())
            w.start()
            try:
                await asyncio.wait_for(fut, args.start_timeout)
                rows[w.variant.name].startup_s = time.perf_counter() - t0
                print(
                    f"  (d) {w.variant.name:<18} first record after {rows[w.variant.name].startup_s:.2f} s", flush=True
                )
            except TimeoutError:
                failures.append(f"{w.variant.name}: no output within {args.start_timeout} s of start\n{w.tail()}")
        live = [w for w in workers if not any(f.startswith(w.variant.name + ":") for f in failures)]

        # (c): sequential latency, interleaved record by record, each variant within its budget
        cpu0 = {w.variant.name: proc_cpu_s(w.proc.pid) for w in live}
        spent = {w.variant.name: 0.0 for w in live}
        for i in range(args.records):
            shift = i % len(live)
            for w in live[shift:] + live[:shift]:
                row = rows[w.variant.name]
                if spent[w.variant.name] >= args.budget:
                    row.budget_hit = True
                    continue
                try:
                    lat, _ = await driver.roundtrip(w.in_topic, f"{w.variant.name}|{i}".encode(), args.record_timeout)
                except TimeoutError:
                    failures.append(f"{w.variant.name}: record {i} not seen within {args.record_timeout} s")
                    spent[w.variant.name] = args.budget
                    continue
                row.latencies_ms.append(lat * 1000)
                spent[w.variant.name] += lat
        for w in live:
            rows[w.variant.name].cpu_s = proc_cpu_s(w.proc.pid) - cpu0[w.variant.name]
        print("  (c) latency phase done", flush=True)

        # (b): a burst of B records into each worker; count transaction markers in its output
        for w in live:
            hw0 = await high_watermark(w.out_topic)
            t0 = time.perf_counter()
            futs = [driver.expect(f"{w.variant.name}|burst{j}".encode()) for j in range(args.burst)]
            sends = [
                await driver.producer.send(w.in_topic, f"{w.variant.name}|burst{j}".encode(), key=b"k")
                for j in range(args.burst)
            ]
            await asyncio.gather(*sends)
            try:
                await asyncio.wait_for(asyncio.gather(*futs), args.record_timeout + 5)
            except TimeoutError:
                failures.append(f"{w.variant.name}: burst of {args.burst} not fully seen")
                continue
            rows[w.variant.name].burst_s = time.perf_counter() - t0
            await asyncio.sleep(0.3)  # let the last marker land
            rows[w.variant.name].markers = (await high_watermark(w.out_topic)) - hw0 - args.burst
        print("  (b) burst phase done", flush=True)

        idle0 = {w.variant.name: proc_cpu_s(w.proc.pid) for w in live}
        t_idle = time.perf_counter()
        await asyncio.sleep(args.idle)
        for w in live:
            busy = proc_cpu_s(w.proc.pid) - idle0[w.variant.name]
            rows[w.variant.name].idle_cpu_pct = 100 * busy / (time.perf_counter() - t_idle)
        for w in live:
            st = proc_status(w.proc.pid)
            rows[w.variant.name].rss_mib = st["VmRSS"] / 1024
            rows[w.variant.name].hwm_mib = st["VmHWM"] / 1024
        for w in workers:
            rows[w.variant.name].stop_s = w.stop()

        # (e): faust Table with a changelog topic: count 5, restart, the 6th must say count=6
        table = {}
        t0 = time.perf_counter()
        fut = await driver.send(table_worker.in_topic, b"table|start", key=b"t")
        table_worker.start()
        try:
            await asyncio.wait_for(fut, args.start_timeout)
            table["first start (s)"] = time.perf_counter() - t0
            for j in range(4):
                await driver.roundtrip(table_worker.in_topic, f"table|{j}".encode(), args.record_timeout, key=b"t")
            table["stop (s)"] = table_worker.stop()
            t0 = time.perf_counter()
            fut = await driver.send(table_worker.in_topic, b"table|after-restart", key=b"t")
            table_worker.start()
            _, value = await asyncio.wait_for(fut, args.start_timeout)
            table["restart to first record, incl. changelog restore (s)"] = time.perf_counter() - t0
            table["value after restart"] = value.decode()
            if not value.endswith(b"|count=6"):
                failures.append(f"faust-table: expected count=6 after restart, got {value!r}")
        except TimeoutError:
            failures.append(f"faust-table: timed out\n{table_worker.tail()}")
        finally:
            table_worker.stop()
    finally:
        for w in [*workers, table_worker]:
            w.stop(timeout=10)
        await driver.stop()
        with contextlib.suppress(Exception):
            mine = [t for t in await admin.list_topics() if t.startswith(f"bench.fp-{run}")]
            if mine:
                await admin.delete_topics(mine)
        await admin.close()

    print_report(rows, table, args, time.perf_counter() - t_start)
    for f in failures:
        print(f"FAIL: {f}", file=sys.stderr)
    return 1 if failures else 0


def print_report(rows: dict[str, Row], table: dict, args: argparse.Namespace, wall: float) -> None:
    from importlib.metadata import version

    vs = ", ".join(f"{p} {version(p)}" for p in ("faust-streaming", "mode-streaming", "aiokafka"))
    print(
        f"\n# faust_probe  {datetime.now(UTC):%Y-%m-%d %H:%M} UTC  cores={os.cpu_count()}  "
        f"python {platform.python_version()}  broker {BOOTSTRAP}  ({vs})"
    )
    print(
        f"# latency: sequential, up to {args.records} records per variant, interleaved, {args.budget:g} s budget each; "
        f"driver consumer read_committed, fetch_max_wait {DRIVER_FETCH_MAX_WAIT_MS} ms; "
        f"aiokafka workers fetch_max_wait {WORKER_FETCH_MAX_WAIT_MS} ms"
    )
    print(
        f"# burst: {args.burst} records produced at once; 'txns in burst' = transaction markers written into the "
        "output partition (0 for an exactly-once variant = its output was not written in a transaction)"
    )
    print(
        "# CPU ms/rec: worker CPU over the whole latency phase (incl. waiting while other variants ran) / its records; "
        f"idle CPU %: over {args.idle:g} s with no input"
    )
    hdr = (
        f"| {'variant':<18} | {'start→1st rec s':>15} | {'n':>4} | {'p50 ms':>8} | {'p99 ms':>8} | {'CPU ms/rec':>10} "
        f"| {'idle CPU %':>10} | {'RSS MiB':>7} | {'peak MiB':>8} | {'burst s':>7} | {'txns in burst':>13} "
        f"| {'stop s':>6} |"
    )
    print("\n" + hdr)
    print("|" + "|".join("-" * len(c) for c in hdr.split("|")[1:-1]) + "|")
    for name, r in rows.items():
        n = len(r.latencies_ms)
        cpu = r.cpu_s / n * 1000 if n else float("nan")
        txns = "-" if r.markers is None else str(r.markers)
        print(
            f"| {name:<18} | {r.startup_s:>15.2f} | {n:>4} | {pct(r.latencies_ms, 50):>8.1f} "
            f"| {pct(r.latencies_ms, 99):>8.1f} | {cpu:>10.2f} | {r.idle_cpu_pct:>10.1f} | {r.rss_mib:>7.1f} "
            f"| {r.hwm_mib:>8.1f} "
            f"| {r.burst_s:>7.2f} | {txns:>13} | {r.stop_s:>6.2f} |"
        )
    print("\n# ratios faust/aiokafka: ", end="")
    pairs = [("faust-alo", "aiokafka-alo"), ("faust-eos", "aiokafka-eos")]
    parts = []
    for f_name, a_name in pairs:
        f, a = rows[f_name], rows[a_name]
        parts.append(
            f"{f_name}/{a_name}: p50 x{pct(f.latencies_ms, 50) / pct(a.latencies_ms, 50):.2f}, "
            f"p99 x{pct(f.latencies_ms, 99) / pct(a.latencies_ms, 99):.2f}, RSS x{f.rss_mib / a.rss_mib:.2f}, "
            f"startup x{f.startup_s / a.startup_s:.2f}, idle CPU x{f.idle_cpu_pct / max(a.idle_cpu_pct, 0.1):.1f}"
        )
    print("; ".join(parts))
    print("\n# (e) faust Table with changelog, restart: " + "; ".join(f"{k}: {v}" for k, v in table.items()))
    print(f"# wall {wall:.1f} s")


def main() -> int:
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="~1 minute: 100 records, 5 s budget, burst 100")
    p.add_argument("--records", type=int, default=500, help="sequential records per variant (upper bound)")
    p.add_argument("--budget", type=float, default=12.0, help="seconds of round trips per variant in (c)")
    p.add_argument("--burst", type=int, default=200)
    p.add_argument("--idle", type=float, default=3.0, help="seconds of idle CPU measurement")
    p.add_argument("--record-timeout", type=float, default=10.0)
    p.add_argument("--start-timeout", type=float, default=60.0)
    args = p.parse_args()
    if args.quick:
        args.records, args.budget, args.burst = 100, 5.0, 100
    with tempfile.TemporaryDirectory(prefix="faust_probe-") as d:
        try:
            return asyncio.run(asyncio.wait_for(probe(args, Path(d)), timeout=900))
        except Exception as exc:  # any failure is a non-zero exit
            print(f"FAIL: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1


if __name__ == "__main__":
    sys.exit(main())
