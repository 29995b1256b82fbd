"""Benchmark Stepstream's recovery from faults: how long runs stall, and how much the services log.

Starts its own stack as ``bench/run.py`` does (a local Kafka broker in a temporary folder, or the
cluster in ``KAFKA_BOOTSTRAP_SERVERS``; the topics under a fresh prefix; the four services and the
benchmark workflow app, each its own process). It keeps runs flowing — a steady trickle of runs of
the ``steps`` workflow (a few ``ctx.run`` steps, then a ``ctx.sleep``), produced straight to the
``triggers`` topic so the api is not on their path, with the executor at a step budget of 0 so that
every step is a round trip through the projector — and then injects each fault in turn, several times:

* ``none``: nothing happens (the control: what the numbers are without a fault);
* ``projector``, ``scheduler``, ``executor``, ``api``: the service is killed with SIGKILL and started
  again at once (a container restarting in place);
* ``broker-3s``, ``broker-15s``: the broker is stopped, stays down that long, and is started again
  (only with the local broker).

For each fault it measures, from the events every run writes (read as the api's indexer reads them:
read_committed, no consumer group):

* **after end**: the longest a step waited after the fault's end — for every ``StepCompleted`` and
  ``RunCompleted`` whose step became ready (its previous event was recorded; for a sleep, its wake
  time came) from 2 s before the fault until 5 s after its end, the time from the fault's end (or from
  becoming ready, if later) until the step was recorded (``at_ms``, the projector's clock); the largest
  of those. The fault's end is when the restarted process was spawned, or when the restarted broker
  answered. Without a fault it is the usual time of one step (see ``none``).
* **visible**: the same, until this reader received the event (so an open transaction that holds back
  read_committed readers counts too);
* **probe run**: a run of one step triggered through the api at the fault's end, retried until the api
  accepts it: the time until the api shows it completed;
* the ERROR and WARNING lines the services logged from the fault's start until the runs caught in it
  completed.

It prints a table of p50 and max over the repeats, then where the lines came from, and exits 1 if a
service died or the runs did not complete. One command::

    .venv/bin/python bench/recovery.py                       # every fault, 3 times (~10 min)
    .venv/bin/python bench/recovery.py --faults projector,executor --repeats 5
    .venv/bin/python bench/recovery.py --instance-ids pid    # each process its own id (default: host-pid)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from harness import (  # bench/harness.py: the broker, the stack and the helpers
    BENCH_DIR,
    BenchFailure,
    Stack,
    broker,
    delete_topics,
    engine_commit,
    fmt,
    machine,
    percentile,
    progress,
    raise_keyboard_interrupt,
    render,
    wait_for_http,
)

from stepstream.avro import EVENT_TYPES, Codec, DecodeError, TriggerRequest
from stepstream.kafka import LocalKafka, TopicNames

SERVICES = ("projector", "scheduler", "executor", "api")
FAULTS = ("none", "projector", "scheduler", "executor", "api", "broker-3s", "broker-15s")
PROGRESS = ("StepCompleted", "RunCompleted")  # the events that say a run moved on
TERMINAL = ("RunCompleted", "RunFailed", "RunCancelled")
SLEEPS = ("sleep", "sleep_until")
READY_BEFORE_S = 2.0  # steps that became ready from this long before the fault ...
READY_AFTER_S = 5.0  # ... until this long after its end are the ones measured
STEADY_AGE_S = 8.0  # before a fault: every run triggered longer ago than this has completed


# -- what the services do -------------------------------------------------------------------------


@dataclass(slots=True)
class Seen:
    """One event of a run, as this reader received it."""

    type: str
    at: float  # the event's at_ms, in epoch seconds (the projector's clock)
    seen: float  # when this reader received it, epoch seconds
    step_index: int | None = None
    kind: str | None = None
    wake_at: float | None = None  # a SleepStarted's wake time


class Observer:
    """Every event of ``events``, read_committed and without a consumer group, as the api's indexer reads."""

    def __init__(self, bootstrap: str, topic: str, codec: Codec) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.codec = codec
        self.runs: dict[str, dict[int, Seen]] = {}
        self.completed: dict[str, float] = {}  # run id -> when its terminal event was seen
        self.undecodable = 0

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            isolation_level="read_committed",
            enable_auto_commit=False,
            fetch_max_wait_ms=50,
        )
        await consumer.start()
        try:
            partitions = consumer.partitions_for_topic(self.topic)
            while not partitions:
                await consumer._client.force_metadata_update()
                partitions = consumer.partitions_for_topic(self.topic)
                await asyncio.sleep(0.2)
            assigned = [TopicPartition(self.topic, number) for number in sorted(partitions)]
            consumer.assign(assigned)
            await consumer.seek_to_beginning(*assigned)
            while True:
                batch = await consumer.getmany(timeout_ms=500, max_records=2_000)
                now = time.time()
                for records in batch.values():
                    for record in records:
                        self._add(record.key.decode(), record.value, now)
        finally:
            await consumer.stop()

    def _add(self, run_id: str, value: bytes, now: float) -> None:
        try:
            event = self.codec.decode(value, EVENT_TYPES)
        except DecodeError:
            self.undecodable += 1
            return
        kind = getattr(event, "kind", None)
        wake_at_ms = getattr(event, "wake_at_ms", None)
        seen = Seen(
            type=type(event).__name__,
            at=event.at_ms / 1000,  # type: ignore[attr-defined]
            seen=now,
            step_index=getattr(event, "step_index", None),
            kind=None if kind is None else str(kind),
            wake_at=None if wake_at_ms is None else wake_at_ms / 1000,
        )
        self.runs.setdefault(run_id, {})[event.seq] = seen  # type: ignore[attr-defined]
        if seen.type in TERMINAL:
            self.completed[run_id] = now


class Trickle:
    """Triggers a run every 1/rate s, straight to ``triggers`` (the api is one of the faults)."""

    def __init__(
        self, bootstrap: str, topic: str, codec: Codec, *, url: str, rate: float, payload: dict[str, int]
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.codec = codec
        self.url = url
        self.rate = rate
        self.payload = json.dumps(payload)
        self.tag = uuid.uuid4().hex[:6]
        self.triggered: dict[str, float] = {}  # run id -> when it was handed to the producer
        self.failed = 0

    async def run(self) -> None:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=0)
        await producer.start()
        try:
            number = 0
            due = time.monotonic()
            while True:
                run_id = f"rec-{self.tag}-{number:06d}"
                number += 1
                record = TriggerRequest(
                    workflow="steps", url=self.url, payload=self.payload, run_id=run_id, label=f"rec-{self.tag}"
                )
                self.triggered[run_id] = time.time()
                sent = await producer.send(self.topic, value=self.codec.encode(record), key=run_id.encode())
                sent.add_done_callback(lambda future, run_id=run_id: self._sent(run_id, future))
                due += 1 / self.rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
        finally:
            await producer.stop()

    def _sent(self, run_id: str, future: asyncio.Future[Any]) -> None:
        if future.cancelled() or future.exception() is not None:
            # This producer gave up on it (a long broker outage outlasts its request timeout): no run.
            self.failed += 1
            self.triggered.pop(run_id, None)


# -- one fault ------------------------------------------------------------------------------------


@dataclass(slots=True)
class Measurement:
    fault: str
    repeat: int
    started: float  # epoch seconds: the fault began (kill sent, broker stop called)
    ended: float  # … the restarted process was spawned, the restarted broker answered
    after_end_s: float | None = None  # the longest a step waited after the fault's end (recorded)
    visible_s: float | None = None  # the same, until read by a read_committed reader
    stall_s: float | None = None  # the longest a step waited from becoming ready
    steps_measured: int = 0
    incomplete: int = 0  # steps (or runs) in the window still not recorded when measuring stopped
    probe_accepted_s: float | None = None  # the api accepted the probe run's trigger, after the fault's end
    probe_completed_s: float | None = None  # … and showed it completed
    errors: dict[str, int] = field(default_factory=dict)  # per service: ERROR/CRITICAL lines
    warnings: dict[str, int] = field(default_factory=dict)  # per service: WARNING lines, but produce retries
    produce_retries: int = 0  # the WARNING lines of PRODUCE_RETRY, all services
    lines: dict[str, int] = field(default_factory=dict)  # per service: all lines (tracebacks included)
    messages: dict[str, int] = field(default_factory=dict)  # the ERROR/WARNING lines, normalised, counted
    detail: dict[str, float] = field(default_factory=dict)  # e.g. how long the broker took to stop, to start
    exits: list[str] = field(default_factory=list)  # services that exited by themselves (and were started again)

    @property
    def outage_s(self) -> float:
        return self.ended - self.started


def step_waits(
    observer: Observer, trickle: Trickle, *, started: float, ended: float, now: float
) -> tuple[list[float], list[float], list[float], int]:
    """For the steps that became ready in the window around a fault: how long each waited after the
    fault's end (recorded, visible) and from becoming ready; and how many are still not recorded."""
    window = (started - READY_BEFORE_S, ended + READY_AFTER_S)
    after: list[float] = []
    visible: list[float] = []
    stall: list[float] = []
    incomplete = 0
    for run_id, events in observer.runs.items():
        if not run_id.startswith(f"rec-{trickle.tag}-"):
            continue
        for seq, event in events.items():
            if event.type not in PROGRESS:
                continue
            ready = readiness(events, seq)
            if ready is None or not window[0] <= ready <= window[1]:
                continue
            after.append(event.at - max(ready, ended))
            visible.append(event.seen - max(ready, ended))
            stall.append(event.at - ready)
        last_seq = max(events)
        last = events[last_seq]
        if last.type not in TERMINAL:  # its next step is not recorded yet
            ready = last.wake_at if last.type == "SleepStarted" and last.wake_at is not None else last.at
            if window[0] <= ready <= window[1] and ready < now:
                incomplete += 1
                after.append(now - max(ready, ended))  # a lower bound
                visible.append(now - max(ready, ended))
                stall.append(now - ready)
    for run_id, triggered in trickle.triggered.items():
        if run_id not in observer.runs and window[0] <= triggered <= window[1]:
            incomplete += 1  # not even started
    return after, visible, stall, incomplete


def history_problems(observer: Observer) -> tuple[int, int]:
    """Steps recorded more than once, and runs whose events skip a sequence number: each should be 0
    whatever the faults (a repeated delivery's report is rejected, a failed transaction leaves nothing)."""
    repeated = gaps = 0
    for events in observer.runs.values():
        completed = Counter(e.step_index for e in events.values() if e.type == "StepCompleted")
        repeated += sum(count - 1 for count in completed.values() if count > 1)
        if sorted(events) != list(range(1, max(events) + 1)):
            gaps += 1
    return repeated, gaps


def readiness(events: dict[int, Seen], seq: int) -> float | None:
    """When the step that event ``seq`` records became ready: its previous event was recorded (for a
    sleep, also its wake time came)."""
    previous = events.get(seq - 1)
    if previous is None:
        return None
    ready = previous.at
    event = events[seq]
    if event.type == "StepCompleted" and event.kind in SLEEPS:
        sleep = next(
            (e for e in events.values() if e.type == "SleepStarted" and e.step_index == event.step_index), None
        )
        if sleep is not None and sleep.wake_at is not None:
            ready = max(ready, sleep.wake_at)
    return ready


LEVELS = re.compile(r" (ERROR|CRITICAL|WARNING) ")
# What the broker answers (KAFKA-14561) to a transactional produce that arrives while the producer's
# previous transaction is being committed; aiokafka retries it and logs a WARNING each time. It happens
# without any fault (bench/run.py counts it as "produce retries"), so it is counted apart.
PRODUCE_RETRY = "NotEnoughReplicasError"
NUMBERS = re.compile(r"\d+")


def count_log_lines(
    stack: Stack, sizes: dict[str, int]
) -> tuple[dict[str, int], dict[str, int], dict[str, int], Counter[str], int]:
    """ERROR, WARNING (but produce retries) and all lines each service logged after ``sizes``; the
    ERROR/WARNING ones normalised; and the produce retries."""
    retries = 0
    errors: dict[str, int] = {}
    warnings: dict[str, int] = {}
    lines: dict[str, int] = {}
    messages: Counter[str] = Counter()
    for name in SERVICES:
        path = stack.directory / f"{name}.log"
        if not path.exists():
            continue
        with path.open("rb") as log:
            log.seek(sizes.get(name, 0))
            text = log.read().decode(errors="replace").splitlines()
        text = [line for line in text if not line.startswith("=== bench:")]
        lines[name] = len(text)
        errors[name] = warnings[name] = 0
        for line in text:
            level = LEVELS.search(line)
            if level is None:
                continue
            if PRODUCE_RETRY in line:
                retries += 1
                continue
            if level.group(1) == "WARNING":
                warnings[name] += 1
            else:
                errors[name] += 1
            # "2026-11-21 16:05:01,123 ERROR aiokafka: Unable to …" -> "ERROR aiokafka: Unable to …"
            message = line[level.start() + 1 :]
            messages[f"{name}: {NUMBERS.sub('#', message)[:140]}"] += 1
    return errors, warnings, lines, messages, retries


# -- the whole benchmark --------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: Stack, kafka: LocalKafka | None) -> None:
        self.args = args
        self.stack = stack
        self.kafka = kafka
        self.codec = Codec()
        topics = TopicNames(stack.prefix)
        self.observer = Observer(stack.env["KAFKA_BOOTSTRAP_SERVERS"], topics.events, self.codec)
        self.trickle = Trickle(
            stack.env["KAFKA_BOOTSTRAP_SERVERS"],
            topics.triggers,
            self.codec,
            url=stack.workflow_url,
            rate=args.rate,
            payload={"steps": args.steps, "sleep_ms": args.sleep_ms},
        )
        self.api = httpx.AsyncClient(base_url=stack.api_url, timeout=2)
        self.exits_between: list[str] = []  # services that exited by themselves between faults
        self.abandoned: set[str] = set()  # runs stuck for longer than the settle timeout
        self.repeated_steps = self.runs_with_gaps = 0  # see history_problems

    def env(self, name: str) -> dict[str, str]:
        extra = {}
        if self.args.instance_ids == "stable":
            # What the Helm chart gives each pod (its name), which a restarted container keeps.
            extra["STEPSTREAM_INSTANCE_ID"] = f"bench-{name}"
        if name == "executor":
            extra["STEPSTREAM_STEP_BUDGET_MS"] = "0"  # one step per delivery: every step through the projector
        return extra

    def start(self, name: str) -> None:
        self.stack.start(name, **(self.env(name) if name in SERVICES else {}))

    def kill(self, name: str) -> None:
        process = self.stack.processes.pop(name)
        process.kill()
        process.wait()

    def check_alive(self, exits: list[str] | None = None) -> None:
        """Fail if a process exited; with ``exits``, note a service that exited there and start it again,
        as a supervisor (Kubernetes, compose) would."""
        for name, process in list(self.stack.processes.items()):
            code = process.poll()
            if code is None:
                continue
            if exits is None or name not in SERVICES:
                raise BenchFailure(f"{name} exited with exit code {code}")
            progress(f"{name} exited with exit code {code}; starting it again")
            exits.append(f"{name} ({code})")
            self.stack.processes.pop(name)
            self.start(name)

    async def run(self) -> list[Measurement]:
        for name in ("app", *SERVICES):
            self.start(name)
        await wait_for_http(f"{self.stack.api_url}/readyz", self.stack)
        await wait_for_http(f"http://127.0.0.1:{self.stack.app_port}/healthz", self.stack)
        tasks = [asyncio.create_task(self.observer.run()), asyncio.create_task(self.trickle.run())]
        try:
            progress(f"warming up: a run every {1 / self.args.rate:.2f} s, each {self.args.steps} steps and a "
                     f"{self.args.sleep_ms} ms sleep…")  # fmt: skip
            await asyncio.sleep(STEADY_AGE_S)
            await self.steady(tasks)
            measurements = []
            for repeat in range(1, self.args.repeats + 1):
                for fault in self.args.faults:
                    await self.steady(tasks)
                    measurement = await self.inject(fault, repeat, tasks)
                    measurements.append(measurement)
                    progress(
                        f"[{repeat}/{self.args.repeats}] {fault}: after end {fmt(measurement.after_end_s)} s, "
                        f"visible {fmt(measurement.visible_s)} s, probe {fmt(measurement.probe_completed_s)} s, "
                        f"{sum(measurement.errors.values())} ERROR / {sum(measurement.warnings.values())} WARNING lines"
                        + (f", {measurement.incomplete} steps not recorded" if measurement.incomplete else "")
                        + (f", exited: {', '.join(measurement.exits)}" if measurement.exits else "")
                    )
            self.repeated_steps, self.runs_with_gaps = history_problems(self.observer)
            return measurements
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.api.aclose()

    async def steady(self, tasks: list[asyncio.Task[None]]) -> None:
        """Wait until every run triggered more than STEADY_AGE_S ago has completed (no backlog)."""
        deadline = time.monotonic() + self.args.settle_timeout
        while time.monotonic() < deadline:
            self.check_tasks(tasks)
            self.check_alive(self.exits_between)
            cutoff = time.time() - STEADY_AGE_S
            behind = [
                run_id
                for run_id, triggered in self.trickle.triggered.items()
                if triggered < cutoff and run_id not in self.observer.completed and run_id not in self.abandoned
            ]
            if not behind:
                return
            await asyncio.sleep(0.5)
        # Stuck for good (the table shows them as not recorded): go on without them.
        progress(f"{len(behind)} runs did not complete within {self.args.settle_timeout:.0f} s; going on without them")
        self.abandoned.update(behind)

    @staticmethod
    def check_tasks(tasks: list[asyncio.Task[None]]) -> None:
        for task in tasks:
            if task.done():
                raise BenchFailure(f"the bench's own Kafka client stopped: {task.exception()!r}")

    async def inject(self, fault: str, repeat: int, tasks: list[asyncio.Task[None]]) -> Measurement:
        sizes = self.stack.log_sizes()
        detail: dict[str, float] = {}
        started = time.time()
        if fault in SERVICES:
            # In this thread: the children get SIGTERM when the thread that started them ends (PR_SET_PDEATHSIG).
            self.kill(fault)
            self.start(fault)
        elif fault.startswith("broker-"):
            assert self.kafka is not None
            down_s = float(fault.removeprefix("broker-").removesuffix("s"))
            await asyncio.to_thread(self.kafka.stop)
            stopped = time.time()
            detail["broker stop s"] = stopped - started
            await asyncio.sleep(down_s)
            restarting = time.time()
            await asyncio.to_thread(self.kafka.start)
            detail["broker down s"] = restarting - stopped
            detail["broker start s"] = time.time() - restarting
        ended = time.time()
        measurement = Measurement(fault=fault, repeat=repeat, started=started, ended=ended, detail=detail)
        probe = asyncio.create_task(self.probe(ended))
        # Measure once the runs that the window covers have completed (or the settle timeout passed).
        deadline = ended + self.args.settle_timeout
        last_ready = ended + READY_AFTER_S
        while True:
            self.check_tasks(tasks)
            self.check_alive(measurement.exits)
            now = time.time()
            pending = [
                run_id
                for run_id, triggered in self.trickle.triggered.items()
                if triggered <= last_ready and run_id not in self.observer.completed and run_id not in self.abandoned
            ]
            if (now > last_ready + 1 and not pending and probe.done()) or now > deadline:
                break
            await asyncio.sleep(0.25)
        if not probe.done():
            probe.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            accepted, completed = await probe
            measurement.probe_accepted_s = accepted
            measurement.probe_completed_s = completed
        after, visible, stall, incomplete = step_waits(
            self.observer, self.trickle, started=started, ended=ended, now=time.time()
        )
        measurement.after_end_s = max(after, default=None)
        measurement.visible_s = max(visible, default=None)
        measurement.stall_s = max(stall, default=None)
        measurement.steps_measured = len(after)
        measurement.incomplete = incomplete
        errors, warnings, lines, messages, measurement.produce_retries = count_log_lines(self.stack, sizes)
        measurement.errors, measurement.warnings, measurement.lines = errors, warnings, lines
        measurement.messages = dict(messages.most_common(30))
        return measurement

    async def probe(self, ended: float) -> tuple[float | None, float | None]:
        """Trigger a one-step run through the api (retrying until it is accepted); when was it accepted,
        and when did the api show it completed, after the fault's end."""
        run_id = f"probe-{uuid.uuid4().hex[:12]}"
        body = {"workflow": "steps", "run_id": run_id, "payload": {"steps": 1, "sleep_ms": 0}}
        accepted: float | None = None
        while accepted is None:
            with contextlib.suppress(httpx.HTTPError):
                response = await self.api.post("/v1/runs", json=body)
                if response.status_code in (200, 202):
                    accepted = time.time() - ended
                    break
            await asyncio.sleep(0.1)
        while True:
            with contextlib.suppress(httpx.HTTPError):
                response = await self.api.get(f"/v1/runs/{run_id}")
                if response.status_code == 200 and response.json()["status"] == "completed":
                    return accepted, time.time() - ended
            await asyncio.sleep(0.1)


# -- the table ------------------------------------------------------------------------------------


def p50_max(values: list[float | None]) -> tuple[str, str]:
    present = [value for value in values if value is not None]
    if not present:
        return "-", "-"
    return fmt(percentile(present, 50)), fmt(max(present))


def table(measurements: list[Measurement], faults: list[str]) -> str:
    headers = [
        "fault", "n", "outage s", "after end p50 s", "max", "visible p50 s", "max", "probe run p50 s", "max",
        "ERROR lines p50", "max", "WARNING lines p50", "max", "produce retries p50", "not recorded", "exited",
    ]  # fmt: skip
    rows = []
    for fault in faults:
        ours = [m for m in measurements if m.fault == fault]
        if not ours:
            continue
        rows.append(
            [
                fault,
                str(len(ours)),
                fmt(percentile([m.outage_s for m in ours], 50)),
                *p50_max([m.after_end_s for m in ours]),
                *p50_max([m.visible_s for m in ours]),
                *p50_max([m.probe_completed_s for m in ours]),
                *p50_max([float(sum(m.errors.values())) for m in ours]),
                *p50_max([float(sum(m.warnings.values())) for m in ours]),
                fmt(percentile([float(m.produce_retries) for m in ours], 50)),
                str(sum(m.incomplete for m in ours)),
                str(sum(len(m.exits) for m in ours)),
            ]
        )
    return render(headers, rows)


def per_service(measurements: list[Measurement], faults: list[str]) -> str:
    headers = ["fault", *(f"{name} E/W max" for name in SERVICES), "all lines max", "probe accepted p50 s", "detail"]
    rows = []
    for fault in faults:
        ours = [m for m in measurements if m.fault == fault]
        if not ours:
            continue
        cells = [
            f"{max(m.errors.get(name, 0) for m in ours)}/{max(m.warnings.get(name, 0) for m in ours)}"
            for name in SERVICES
        ]
        details: dict[str, list[float]] = {}
        for m in ours:
            for key, value in m.detail.items():
                details.setdefault(key, []).append(value)
        rows.append(
            [
                fault,
                *cells,
                str(max(sum(m.lines.values()) for m in ours)),
                p50_max([m.probe_accepted_s for m in ours])[0],
                ", ".join(f"{key} p50 {fmt(percentile(values, 50))}" for key, values in details.items()),
            ]
        )
    return render(headers, rows, left=(0, len(headers) - 1))


def top_messages(measurements: list[Measurement], faults: list[str], limit: int) -> str:
    parts = []
    for fault in faults:
        counted: Counter[str] = Counter()
        ours = [m for m in measurements if m.fault == fault]
        for m in ours:
            counted.update(m.messages)
        if counted:
            parts.append(f"{fault} ({len(ours)} times), the most frequent ERROR/WARNING lines, all repeats together:")
            parts.extend(f"  {count:>5}  {message}" for message, count in counted.most_common(limit))
    return "\n".join(parts)


# -- setting up -----------------------------------------------------------------------------------


def engine_source() -> str:
    """The commit measured; or, when PYTHONPATH put another copy of the engine first (to measure an
    older version with this bench), where that copy is."""
    import stepstream

    engine = Path(stepstream.__file__).resolve().parents[1]
    if engine != BENCH_DIR.parent / "services":
        return f"engine from {engine}"
    return f"commit {(engine_commit() or '?')[:7]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma-separated, from {', '.join(FAULTS)} "
                        "(default: all; broker-<N>s for an outage of N seconds)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="times each fault is injected (default 3)")
    parser.add_argument("--rate", type=float, default=5.0, help="runs triggered per second (default 5)")
    parser.add_argument("--steps", type=int, default=3, help="ctx.run steps per run (default 3)")
    parser.add_argument("--sleep-ms", type=int, default=1000, help="the ctx.sleep after the steps (default 1000)")
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    parser.add_argument(
        "--instance-ids",
        choices=("stable", "pid"),
        default="stable",
        help="stable: STEPSTREAM_INSTANCE_ID=bench-<service>, kept across a restart, as the Helm chart "
        "does with the pod name (default); pid: unset, so each process gets the default (host and pid)",
    )
    parser.add_argument("--settle-timeout", type=float, default=150.0, help="seconds for the runs caught "
                        "in a fault to complete before it is measured anyway (default 150)")  # fmt: skip
    parser.add_argument("--top", type=int, default=8, help="the most frequent log lines shown per fault (default 8)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write every measurement to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, broker data)")
    args = parser.parse_args(argv)
    args.faults = [item.strip() for item in args.faults.split(",") if item.strip()]
    for fault in args.faults:
        if fault not in (*FAULTS[:5],) and not re.fullmatch(r"broker-\d+(\.\d+)?s", fault):
            parser.error(f"expected faults from {', '.join(FAULTS)}, but got {fault!r}")
    if args.repeats < 1 or args.rate <= 0 or args.steps < 1 or args.sleep_ms < 0:
        parser.error("expected --repeats >= 1, --rate > 0, --steps >= 1 and --sleep-ms >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)  # this process's own clients, in the outages
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    directory = Path(tempfile.mkdtemp(prefix="stepstream-recovery-"))
    stack: Stack | None = None
    code = 1
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    try:
        with broker(directory) as used:
            bootstrap, kafka = used.bootstrap, used.local
            if kafka is None:
                progress("no broker faults against a cluster elsewhere")
                args.faults = [fault for fault in args.faults if not fault.startswith("broker-")]
            stack = Stack(bootstrap, directory, partitions=args.partitions)
            try:
                progress(f"creating topics with prefix {stack.prefix!r} ({args.partitions} partitions)…")
                stack.create_topics()
                bench = Bench(args, stack, kafka)
                measurements = asyncio.run(bench.run())
            finally:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                stack.stop_all()
                if kafka is None:
                    with contextlib.suppress(Exception):
                        asyncio.run(delete_topics(bootstrap, stack.prefix))
        print()
        print(
            f"Stepstream recovery, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {engine_source()}, "
            f"{os.cpu_count()} cores, a run every {1 / args.rate:.2f} s ({args.steps} steps at budget 0 and a "
            f"{args.sleep_ms} ms sleep), {args.partitions} partitions, instance ids {args.instance_ids}, "
            f"{args.repeats} repeats, took {time.monotonic() - began:.0f} s, "
            f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        print(table(measurements, args.faults))
        print(
            f"histories: {len(bench.observer.runs)} runs, {bench.repeated_steps} steps recorded more than once, "
            f"{bench.runs_with_gaps} runs with a gap in their sequence numbers; {bench.trickle.failed} triggers "
            "this bench's own producer gave up on (not counted)"
        )
        if bench.exits_between:
            print(f"services that exited by themselves between faults: {', '.join(bench.exits_between)}")
        print()
        print("ERROR/WARNING lines per service (max over repeats), all lines logged, the api's answer to the probe:")
        print(per_service(measurements, args.faults))
        if args.top:
            print()
            print(top_messages(measurements, args.faults, args.top))
        if args.json:
            document = {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {**machine(), "load_average_before": load_before},
                "commit": engine_commit(),
                "engine": engine_source(),
                "parameters": {key: value for key, value in vars(args).items() if key not in ("json", "keep")},
                "measurements": [asdict(m) | {"outage_s": m.outage_s} for m in measurements],
            }
            args.json.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
            progress(f"wrote {args.json}")
        code = 0
    except (BenchFailure, httpx.HTTPError) as failure:
        print(f"\nbenchmark failed: {failure}", file=sys.stderr)
        if stack is not None:
            print(stack.all_log_tails(), file=sys.stderr)
        args.keep = True
    except KeyboardInterrupt:
        print("\ninterrupted; stopped everything", file=sys.stderr)
        code = 130
    except Exception:
        print("\nbenchmark failed:", file=sys.stderr)
        traceback.print_exc()
        if stack is not None:
            print(stack.all_log_tails(), file=sys.stderr)
        args.keep = True
    finally:
        if args.keep:
            progress(f"kept {directory} (service logs, broker data)")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
