"""The hot-path benchmark: Stepstream against a plain-HTTP floor, one table, one invocation.

Measures, on one machine and in one invocation, side by side:

* the **floor**: a trivial FastAPI endpoint (``bench/floor_app.py``) under uvicorn in its own process;
  a "run" of it is 10 sequential POSTs by one aiohttp client;
* Stepstream in each **mode** — a set of environment variables for every service and the workflow
  app; ``durable`` is the engine's defaults (no extra variables), ``--mode NAME=VAR=value,…`` adds
  others. Each mode runs on a fresh stack (new processes, new topics, a new query store; the broker
  stays), and a "run" is one trigger of the benchmark app's ``steps`` workflow with 10 ``ctx.run``
  steps, until the client knows its result.

For each: the 10-step run's p50/p99 one at a time; steps/s and runs/s with 16 concurrent clients;
CPU ms per run of each process (utime+stime from /proc, the broker included, the client not); peak
memory (VmHWM) of each process; the idle stack's CPU; the lateness of 1 s sleeps with 100 runs in
flight; the cost of steps 1–10 against steps 491–500 of one 500-step run, with what the app received
and the broker stored meanwhile. Ratios to the floor, and the targets with PASS/MISS.

It uses only the engine's public api, the benchmark app and /proc, so it measures the engine as it
is and as it will be: whether the api can wait for a run's result (``POST /v1/runs?wait=30s``
answering 200 with the ended run) is detected at run time, and the client polls
``GET /v1/runs/{id}`` otherwise. bench/README.md defines every number.

    .venv/bin/python bench/hotpath.py                       # make bench, ~3 min
    .venv/bin/python bench/hotpath.py --quick               # ~1.4 min
    .venv/bin/python bench/hotpath.py --mode budget0=STEPSTREAM_STEP_BUDGET_MS=0 --json /tmp/hotpath.json
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import itertools
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from harness import (  # bench/harness.py: the broker, the stack, the session, /proc and the tables
    PRODUCE_RETRY,
    BenchFailure,
    Broker,
    Session,
    Stack,
    broker,
    cpu_seconds,
    describe_event,
    engine_commit,
    fmt,
    fmt_ratio,
    machine_cpu_seconds,
    memory,
    percentile,
    progress,
    render,
    session,
    summary,
    wait_for_http,
    write_json,
)

STEPS = 10  # ctx.run steps of the measured run, and POSTs of the floor's run
CLIENTS = 16  # concurrent clients of the throughput phase
SERVICES = ("projector", "scheduler", "executor", "api", "app")
ENDED = ("completed", "failed", "cancelled")
WAIT = "30s"  # the api's wait for a run's result, when it has one
HISTORY_CONCURRENCY = 8
TRIGGER_CONCURRENCY = 16
SETTLE_S = 3.0  # after the warm-up, before the idle measurement: let the stack finish what it was doing
RUN_TIMEOUT_S = 120.0  # for one run to end (the long one: --timeout)


class Retry(Exception):
    """A request to send again: the connection broke under it (a keep-alive the server had closed)."""


# -- what is measured ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mode:
    name: str
    env: dict[str, str]

    def describe(self) -> str:
        return describe_env(self.env)


def describe_env(env: Mapping[str, str]) -> str:
    return " ".join(f"{name}={value}" for name, value in env.items()) or "the engine's defaults"


@dataclass(frozen=True, slots=True)
class Sizes:
    """How much of each phase: ``--quick`` or the default."""

    floor_runs: int  # floor runs one at a time
    engine_runs: int  # engine runs one at a time
    warmup_s: float  # of the throughput phase, before its window
    window_s: float  # the throughput phase's measured window
    idle_s: float
    sleepers: int  # runs in flight, each sleeping sleep_ms
    sleep_ms: int
    long_steps: int  # steps of the long run
    broker_warmup_s: float  # runs thrown away before the first mode, so that no mode meets a cold JVM


FULL = Sizes(
    floor_runs=300,
    engine_runs=200,
    warmup_s=3,
    window_s=15,
    idle_s=15,
    sleepers=100,
    sleep_ms=1000,
    long_steps=500,
    broker_warmup_s=20,
)
QUICK = Sizes(
    floor_runs=100,
    engine_runs=20,
    warmup_s=1,
    window_s=5,
    idle_s=5,
    sleepers=100,
    sleep_ms=1000,
    long_steps=100,
    broker_warmup_s=8,
)


@dataclass(slots=True)
class Throughput:
    clients: int
    window_s: float
    runs: int  # completed within the window
    steps_per_s: float
    runs_per_s: float
    run_ms: dict[str, float]  # each completed run's time under load
    cpu_ms_per_run: dict[str, float]  # by process, and "total" (servers only)
    client_cpu_ms_per_run: float  # this process: the clients (not in the total)
    others_percent: float  # of a core, over the window: CPU of the machine's other processes
    steal_percent: float


@dataclass(slots=True)
class Idle:
    seconds: float
    percent_of_core: dict[str, float]  # by process, and "total"
    others_percent: float


@dataclass(slots=True)
class Sleeps:
    runs: int
    sleep_ms: int
    lateness_ms: dict[str, float]  # the code after the sleep ran − the sleep's due time
    recorded_lateness_ms: dict[str, float]  # the wake's StepCompleted.at_ms − the due time


@dataclass(slots=True)
class LongRun:
    steps: int
    seconds: float  # trigger → RunCompleted.at_ms
    first_ms_per_step: float  # steps 1–10: (start of step 11 − start of step 1) / 10
    last_ms_per_step: float  # the last 10: (the code after them ran − start of the first of them) / 10
    ratio: float
    first_gaps_ms: list[float]  # each of steps 1–10 (one preemption can make a mean of ten)
    last_gaps_ms: list[float]  # each of the last 10
    deliveries: int  # StepScheduled events of the run
    app_requests: int  # POSTs the app received meanwhile
    largest_body_bytes: int
    body_bytes: int
    topic_bytes: dict[str, int] | None  # written to each topic meanwhile (a local broker's log segments)

    @property
    def first_median_ms(self) -> float:
        return percentile(self.first_gaps_ms, 50)

    @property
    def last_median_ms(self) -> float:
        return percentile(self.last_gaps_ms, 50)

    @property
    def largest_body_kb(self) -> float:
        return self.largest_body_bytes / 1000

    @property
    def body_kb(self) -> float:
        return self.body_bytes / 1000

    @property
    def topic_kb(self) -> dict[str, float] | None:
        if self.topic_bytes is None:
            return None
        return {
            **{topic: size / 1000 for topic, size in self.topic_bytes.items()},
            "total": sum(self.topic_bytes.values()) / 1000,
        }


@dataclass(slots=True)
class Measured:
    """One column of the table: the floor, or a mode of the engine."""

    name: str
    env: dict[str, str]
    method: str  # how the client learnt a run's result
    latency_ms: dict[str, float]  # one run at a time, from the client's side
    latency_others_percent: float  # of a core, meanwhile: CPU of the machine's other processes
    server_ms: dict[str, float] = field(default_factory=dict)  # trigger POST → RunCompleted.at_ms
    # The same runs' time split by their histories and the step bodies' clocks (see split_run).
    split_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    polls_per_run: float | None = None
    throughput: Throughput | None = None
    peak_mib: dict[str, float] = field(default_factory=dict)  # VmHWM by process, and "total"
    idle: Idle | None = None
    sleeps: Sleeps | None = None
    long_run: LongRun | None = None
    produce_retries: int | None = None  # the services' log lines of a retried produce, after the warm-up
    notes: list[str] = field(default_factory=list)


# -- /proc over a phase -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """CPU seconds used so far by each process measured, by this one (the clients), and by the machine."""

    at: float  # perf_counter
    processes: dict[str, float]
    client: float
    busy: float  # all cores
    steal: float


def read_cpu(pids: Mapping[str, int]) -> Reading:
    processes: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            processes[name] = cpu_seconds(pid)
        except OSError as error:
            raise BenchFailure(f"{name} (pid {pid}) is gone: {error}") from error
    busy, steal = machine_cpu_seconds()
    return Reading(time.perf_counter(), processes, cpu_seconds(os.getpid()), busy, steal)


@dataclass(frozen=True, slots=True)
class Usage:
    """The CPU used between two readings."""

    seconds: float
    processes: dict[str, float]  # CPU seconds by process, and their "total" (the client not in it)
    client: float
    others_percent: float  # of one core: the machine busy with none of these processes nor the client
    steal_percent: float  # of one core: taken by the hypervisor

    def percent(self) -> dict[str, float]:
        """Each process's CPU, and the total, as % of one core."""
        return {name: used / self.seconds * 100 for name, used in self.processes.items()}


def usage(before: Reading, after: Reading) -> Usage:
    processes = {name: after.processes[name] - before.processes[name] for name in before.processes}
    client = after.client - before.client
    ours = sum(processes.values()) + client
    seconds = after.at - before.at
    # /proc/stat and the processes' times are sampled apart; a small negative difference is noise.
    others = max(0.0, after.busy - before.busy - ours)
    return Usage(
        seconds=seconds,
        processes={**processes, "total": sum(processes.values())},
        client=client,
        others_percent=others / seconds * 100,
        steal_percent=(after.steal - before.steal) / seconds * 100,
    )


def peak_memory(pids: Mapping[str, int]) -> dict[str, float]:
    peaks = {name: memory(pid).hwm_kb / 1024 for name, pid in pids.items()}
    return {**peaks, "total": sum(peaks.values())}


# -- the client ---------------------------------------------------------------------------------


def client_session(base_url: str | None = None) -> aiohttp.ClientSession:
    """The one HTTP client of every measurement: aiohttp, keep-alive connections dropped before
    uvicorn's 5 s keep-alive timeout could close one under a request."""
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=4)
    return aiohttp.ClientSession(base_url, connector=connector, timeout=aiohttp.ClientTimeout(total=RUN_TIMEOUT_S))


async def post_json(client: aiohttp.ClientSession, url: str, body: Any) -> tuple[int, Any]:
    """POST ``body`` as JSON; the status and the JSON answer. A broken connection raises :class:`Retry`."""
    return await _request(client.post(url, json=body))


async def get_json(client: aiohttp.ClientSession, url: str, **params: Any) -> tuple[int, Any]:
    """GET; the status and the JSON answer. A broken connection raises :class:`Retry`."""
    return await _request(client.get(url, params=params))


async def _request(request: Any) -> tuple[int, Any]:
    try:
        async with request as response:
            return response.status, await response.json(content_type=None)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as error:
        raise Retry(repr(error)) from error


async def twice(request: Callable[[], Awaitable[tuple[int, Any]]], what: str) -> tuple[int, Any]:
    """A request, sent once more if its connection broke (safe: a trigger carries its run id)."""
    try:
        return await request()
    except Retry as error:
        progress(f"  {what}: the connection broke ({error}); sending it again")
        return await request()


# -- the floor ----------------------------------------------------------------------------------


async def floor_run(client: aiohttp.ClientSession, url: str) -> None:
    for index in range(STEPS):
        status, _ = await twice(functools.partial(post_json, client, url, {"i": index}), "a floor POST")
        if status != 200:
            raise BenchFailure(f"the floor answered {status}")


async def measure_floor(name: str, sizes: Sizes, stack: Stack) -> Measured:
    stack.start("floor")
    await wait_for_http(f"{stack.app_url}/healthz", stack)
    url = f"{stack.app_url}/echo"
    pids = {"app": stack.processes["floor"].pid}
    async with client_session() as client:
        progress(f"{name}: warming up, then {sizes.floor_runs} runs of {STEPS} POSTs one at a time…")
        for _ in range(20):
            await floor_run(client, url)
        latency = []
        before = read_cpu(pids)
        for _ in range(sizes.floor_runs):
            began = time.perf_counter()
            await floor_run(client, url)
            latency.append((time.perf_counter() - began) * 1000)
        meanwhile = usage(before, read_cpu(pids))
        progress(f"{name}: {CLIENTS} clients for {sizes.warmup_s:.0f} + {sizes.window_s:.0f} s…")
        throughput = await measure_throughput(lambda client_index, n: floor_run(client, url), sizes, pids)
    return Measured(
        name=name,
        env={},
        method=f"{STEPS} POSTs",
        latency_ms=summary(latency),
        latency_others_percent=meanwhile.others_percent,
        throughput=throughput,
        peak_mib=peak_memory(pids),
    )


# -- the engine ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    run_id: str
    posted_at: float  # epoch seconds just before the trigger's POST
    elapsed_ms: float  # until the client knew the result
    polls: int
    run: dict[str, Any]


class Engine:
    """Runs through the api, the way a user's client would: trigger, then learn the result by waiting
    (``?wait=``) when the api can, by polling ``GET /v1/runs/{id}`` every ``poll_s`` otherwise."""

    def __init__(self, client: aiohttp.ClientSession, *, poll_s: float) -> None:
        self.client = client
        self.poll_s = poll_s
        self.waits: bool | None = None  # unknown until the first run
        self.first_answer: int | None = None  # the status of the first trigger, which asked to wait
        self.fallbacks = 0  # waits answered without the run's result (then polled)

    def method(self) -> str:
        if self.waits:
            return f"POST /v1/runs?wait={WAIT} (the api waits for the result)"
        return (
            f"polling GET /v1/runs/{{id}} every {self.poll_s * 1000:g} ms "
            f"(POST /v1/runs?wait={WAIT} answered {self.first_answer} without the result)"
        )

    async def trigger(self, run_id: str, payload: dict[str, int], *, label: str, wait: bool) -> tuple[int, Any]:
        body = {"workflow": "steps", "payload": payload, "run_id": run_id, "label": label}
        url = f"/v1/runs?wait={WAIT}" if wait else "/v1/runs"
        status, answer = await twice(lambda: post_json(self.client, url, body), f"trigger of {run_id}")
        if status not in (200, 202):
            raise BenchFailure(f"the api refused the trigger of {run_id}: {status} {answer}")
        return status, answer

    async def run(self, run_id: str, payload: dict[str, int], *, label: str) -> Outcome:
        """One run, from just before its trigger until the client knows its result."""
        wait = self.waits is not False
        posted_at = time.time()
        began = time.perf_counter()
        status, answer = await self.trigger(run_id, payload, label=label, wait=wait)
        self.first_answer = self.first_answer or status
        # The ended run, as GET /v1/runs/{id} shows it, at the top of the answer or under "run".
        run = answer.get("run", answer) if isinstance(answer, dict) else {}
        polls = 0
        if status == 200 and run.get("status") in ENDED:
            self.waits = self.waits if self.waits is not None else wait
        else:
            if wait:
                self.fallbacks += 1
                if self.waits is None:
                    self.waits = False
            deadline = began + RUN_TIMEOUT_S
            while True:
                await asyncio.sleep(self.poll_s)
                polls += 1
                status, run = await twice(lambda: get_json(self.client, f"/v1/runs/{run_id}"), f"poll of {run_id}")
                if status == 200 and run["status"] in ENDED:
                    break
                if status not in (200, 404):  # 404: not indexed yet
                    raise BenchFailure(f"GET /v1/runs/{run_id} answered {status}: {run}")
                if time.perf_counter() > deadline:
                    raise BenchFailure(
                        f"run {run_id} did not end within {RUN_TIMEOUT_S:.0f} s:\n" + await self.tail(run_id)
                    )
        elapsed_ms = (time.perf_counter() - began) * 1000
        if run["status"] != "completed":
            raise BenchFailure(f"run {run_id} ended {run['status']}: {run.get('error')}\n{await self.tail(run_id)}")
        return Outcome(run_id, posted_at, elapsed_ms, polls, run)

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        status, body = await get_json(self.client, f"/v1/runs/{run_id}/history")
        if status != 200:
            raise BenchFailure(f"GET /v1/runs/{run_id}/history answered {status}: {body}")
        events: list[dict[str, Any]] = body["events"]
        return events

    async def histories(self, run_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
        slots = asyncio.Semaphore(HISTORY_CONCURRENCY)

        async def read(run_id: str) -> list[dict[str, Any]]:
            async with slots:
                return await self.history(run_id)

        return dict(zip(run_ids, await asyncio.gather(*(read(run_id) for run_id in run_ids)), strict=True))

    async def tail(self, run_id: str) -> str:
        try:
            events = await self.history(run_id)
        except (BenchFailure, aiohttp.ClientError) as error:
            return f"  (its history: {error})"
        return "\n".join(describe_event(event) for event in events[-10:])

    async def wait_for_label(self, label: str, runs: int, timeout_s: float, stack: Stack) -> None:
        """Until all ``runs`` runs under ``label`` have ended (the list, every 100 ms; not a latency)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, page = await get_json(self.client, "/v1/runs", label=label, limit=500)
            if status != 200:
                raise BenchFailure(f"GET /v1/runs?label={label} answered {status}: {page}")
            statuses = [run["status"] for run in page["runs"]]
            failed = [run["run_id"] for run in page["runs"] if run["status"] in ("failed", "cancelled")]
            if failed:
                raise BenchFailure(f"{len(failed)} runs failed, e.g. {failed[0]}:\n{await self.tail(failed[0])}")
            if len(statuses) == runs and all(status == "completed" for status in statuses):
                return
            if stack.dead():
                raise BenchFailure(f"a process died: {', '.join(stack.dead())}")
            if time.monotonic() > deadline:
                ended = sum(1 for status in statuses if status in ENDED)
                raise BenchFailure(f"only {ended} of {runs} runs under {label} ended within {timeout_s:.0f} s")
            await asyncio.sleep(0.1)


def split_run(outcomes: list[Outcome], histories: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """Where a run's time went, by the events' ``at_ms`` and the step bodies' own clocks (``output.t``):
    POST → RunStarted (the api and the trigger's way to the engine), RunStarted → the first step's body
    (to the first delivery), first → last step body (the steps), last body → RunCompleted (the result's
    way back), RunCompleted → the client knew (waiting or polling). An event the engine does not
    record leaves its parts out."""
    parts: dict[str, list[float]] = {
        "post_to_started": [],
        "started_to_first_step": [],
        "first_to_last_step": [],
        "last_step_to_completed": [],
        "completed_to_client": [],
    }
    for outcome in outcomes:
        events = histories[outcome.run_id]
        started = next((event["at_ms"] for event in events if event["type"] == "RunStarted"), None)
        completed = completion_ms(events, outcome.run_id)
        bodies = sorted(
            float(event["output"]["t"]) * 1000
            for event in events
            if event["type"] == "StepCompleted" and event["kind"] == "run"
        )
        posted = outcome.posted_at * 1000
        if started is not None:
            parts["post_to_started"].append(started - posted)
            parts["started_to_first_step"].append(bodies[0] - started)
        parts["first_to_last_step"].append(bodies[-1] - bodies[0])
        parts["last_step_to_completed"].append(completed - bodies[-1])
        parts["completed_to_client"].append(posted + outcome.elapsed_ms - completed)
    return {name: summary(values) for name, values in parts.items()}


def completion_ms(events: list[dict[str, Any]], run_id: str) -> float:
    completed = next((event for event in events if event["type"] == "RunCompleted"), None)
    if completed is None:
        raise BenchFailure(f"run {run_id} has no RunCompleted:\n" + "\n".join(map(describe_event, events[-10:])))
    return float(completed["at_ms"])


async def measure_throughput(
    one_run: Callable[[int, int], Awaitable[None]], sizes: Sizes, pids: Mapping[str, int]
) -> Throughput:
    """``CLIENTS`` clients doing runs back to back; the runs completed within a window after a warm-up,
    and the CPU the processes used in that window."""
    finished: list[tuple[float, float]] = []  # (began, ended), perf_counter
    stop = asyncio.Event()

    async def client(index: int) -> None:
        count = 0
        while not stop.is_set():
            began = time.perf_counter()
            await one_run(index, count)
            finished.append((began, time.perf_counter()))
            count += 1

    tasks = [asyncio.create_task(client(index)) for index in range(CLIENTS)]
    try:
        await asyncio.sleep(sizes.warmup_s)
        before = read_cpu(pids)
        await asyncio.sleep(sizes.window_s)
        after = read_cpu(pids)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), RUN_TIMEOUT_S)  # the runs in flight end; a failure raises
    finally:
        for task in tasks:
            task.cancel()
    window = [(began, ended) for began, ended in finished if before.at <= ended < after.at]
    if not window:
        raise BenchFailure(f"no run completed within the {sizes.window_s:.0f} s window")
    used = usage(before, after)
    return Throughput(
        clients=CLIENTS,
        window_s=used.seconds,
        runs=len(window),
        steps_per_s=len(window) * STEPS / used.seconds,
        runs_per_s=len(window) / used.seconds,
        run_ms=summary([(ended - began) * 1000 for began, ended in window]),
        cpu_ms_per_run={name: value * 1000 / len(window) for name, value in used.processes.items()},
        client_cpu_ms_per_run=used.client * 1000 / len(window),
        others_percent=used.others_percent,
        steal_percent=used.steal_percent,
    )


async def measure_mode(mode: Mode, sizes: Sizes, stack: Stack, kafka: Broker, args: argparse.Namespace) -> Measured:
    for name in SERVICES:
        stack.start(name)
    await wait_for_http(f"{stack.api_url}/healthz", stack)
    await wait_for_http(f"{stack.app_url}/healthz", stack)
    pids = {name: stack.processes[name].pid for name in SERVICES}
    broker_pid = kafka.pid()
    if broker_pid is not None:
        pids["broker"] = broker_pid
    tag = uuid.uuid4().hex[:6]
    ten = {"steps": STEPS, "sleep_ms": 0}
    async with client_session(stack.api_url) as client:
        engine = Engine(client, poll_s=args.poll_ms / 1000)
        where = f"{mode.name}:"

        progress(f"{where} warming up…")
        await engine.run(f"warm-{tag}-0", ten, label=f"warm-{tag}")  # learns whether the api waits
        progress(f"{where} the client learns a run's result by {engine.method()}")
        for index in range(1, 6):
            await engine.run(f"warm-{tag}-{index}", ten, label=f"warm-{tag}")
        naps = {"steps": 1, "sleep_ms": 50}  # the scheduler's timers too
        await asyncio.gather(*(engine.run(f"warm-{tag}-s{index}", naps, label=f"warm-{tag}") for index in range(4)))
        await asyncio.gather(
            *(engine.run(f"warm-{tag}-c{index}", ten, label=f"warm-{tag}") for index in range(CLIENTS))
        )

        log_sizes = stack.log_sizes()
        progress(f"{where} idle for {SETTLE_S:.0f} + {sizes.idle_s:.0f} s…")
        await asyncio.sleep(SETTLE_S)
        before = read_cpu(pids)
        await asyncio.sleep(sizes.idle_s)
        used = usage(before, read_cpu(pids))
        idle = Idle(seconds=used.seconds, percent_of_core=used.percent(), others_percent=used.others_percent)

        progress(f"{where} {sizes.engine_runs} runs of {STEPS} steps one at a time…")
        before = read_cpu(pids)
        outcomes = [
            await engine.run(f"one-{tag}-{index}", ten, label=f"one-{tag}") for index in range(sizes.engine_runs)
        ]
        meanwhile = usage(before, read_cpu(pids))
        histories = await engine.histories([outcome.run_id for outcome in outcomes])
        server = [completion_ms(histories[o.run_id], o.run_id) - o.posted_at * 1000 for o in outcomes]
        split = split_run(outcomes, histories)

        progress(f"{where} {CLIENTS} clients for {sizes.warmup_s:.0f} + {sizes.window_s:.0f} s…")

        async def throughput_run(client_index: int, count: int) -> None:
            await engine.run(f"load-{tag}-{client_index}-{count}", ten, label=f"load-{tag}")

        throughput = await measure_throughput(throughput_run, sizes, pids)

        progress(f"{where} {sizes.sleepers} runs in flight, each sleeping {sizes.sleep_ms} ms…")
        sleeps = await measure_sleeps(engine, stack, sizes, tag, args.timeout)

        progress(f"{where} one run of {sizes.long_steps} steps…")
        long_run = await measure_long_run(engine, stack, kafka, sizes, tag, args.timeout)

    return Measured(
        name=mode.name,
        env=mode.env,
        method=engine.method(),
        latency_ms=summary([outcome.elapsed_ms for outcome in outcomes]),
        latency_others_percent=meanwhile.others_percent,
        server_ms=summary(server),
        split_ms=split,
        polls_per_run=sum(outcome.polls for outcome in outcomes) / len(outcomes),
        throughput=throughput,
        peak_mib=peak_memory(pids),
        idle=idle,
        sleeps=sleeps,
        long_run=long_run,
        produce_retries=stack.count_in_logs_since(log_sizes, PRODUCE_RETRY),
        notes=[f"{engine.fallbacks} waits answered without the result"] if engine.waits and engine.fallbacks else [],
    )


async def measure_sleeps(engine: Engine, stack: Stack, sizes: Sizes, tag: str, timeout_s: float) -> Sleeps:
    """``sizes.sleepers`` runs of one step and one sleep, triggered at once; how late the code after the
    sleep ran, and how late the engine recorded the wake, against the due time in the history."""
    label = f"sleep-{tag}"
    run_ids = [f"{label}-{index}" for index in range(sizes.sleepers)]
    slots = asyncio.Semaphore(TRIGGER_CONCURRENCY)

    async def trigger(run_id: str) -> None:
        async with slots:
            await engine.trigger(run_id, {"steps": 1, "sleep_ms": sizes.sleep_ms}, label=label, wait=False)

    await asyncio.gather(*(trigger(run_id) for run_id in run_ids))
    await engine.wait_for_label(label, len(run_ids), timeout_s, stack)
    late, recorded = [], []
    for events in (await engine.histories(run_ids)).values():
        due = next(event["wake_at_ms"] for event in events if event["type"] == "SleepStarted")
        woke = next(event for event in events if event["type"] == "StepCompleted" and event["kind"] == "sleep")
        completed = next(event for event in events if event["type"] == "RunCompleted")
        late.append(float(completed["output"]["finished_at"]) * 1000 - due)
        recorded.append(woke["at_ms"] - due)
    return Sleeps(len(run_ids), sizes.sleep_ms, summary(late), summary(recorded))


async def app_stats(engine: Engine, stack: Stack, *, reset: bool = False) -> dict[str, int]:
    if reset:
        status, stats = await post_json(engine.client, f"{stack.app_url}/bench/stats/reset", None)
    else:
        status, stats = await get_json(engine.client, f"{stack.app_url}/bench/stats")
    if status != 200:
        raise BenchFailure(f"the app's /bench/stats answered {status}")
    return dict(stats)


async def measure_long_run(
    engine: Engine, stack: Stack, kafka: Broker, sizes: Sizes, tag: str, timeout_s: float
) -> LongRun:
    """One run of ``sizes.long_steps`` steps: the mean cost of a step at its start and at its end, by the
    steps' own clocks; and what its deliveries carried (the app's request bodies, the broker's topics)."""
    label = f"long-{tag}"
    run_id = f"{label}-0"
    await app_stats(engine, stack, reset=True)
    topics_before = kafka.topic_bytes(stack.prefix)
    posted_at = time.time()
    await engine.trigger(run_id, {"steps": sizes.long_steps, "sleep_ms": 0}, label=label, wait=False)
    await engine.wait_for_label(label, 1, timeout_s, stack)
    stats = await app_stats(engine, stack)
    topics_after = kafka.topic_bytes(stack.prefix)
    events = await engine.history(run_id)
    steps = sorted(
        (event for event in events if event["type"] == "StepCompleted" and event["kind"] == "run"),
        key=lambda event: event["step_index"],
    )
    if [event["step_index"] for event in steps] != list(range(sizes.long_steps)):
        raise BenchFailure(f"the long run {run_id} recorded steps {[e['step_index'] for e in steps][:20]}…")
    starts = [float(event["output"]["t"]) * 1000 for event in steps]
    completed = next(event for event in events if event["type"] == "RunCompleted")
    finished = float(completed["output"]["finished_at"]) * 1000
    # A step's cost: from its body's start to the next one's (the last one's: to the code after it).
    first_gaps = [later - earlier for earlier, later in itertools.pairwise(starts[: STEPS + 1])]
    last_gaps = [later - earlier for earlier, later in itertools.pairwise([*starts[-STEPS:], finished])]
    first, last = sum(first_gaps) / STEPS, sum(last_gaps) / STEPS
    written = None
    if topics_before is not None and topics_after is not None:
        written = {topic: size - topics_before.get(topic, 0) for topic, size in sorted(topics_after.items())}
    return LongRun(
        steps=sizes.long_steps,
        seconds=(completed["at_ms"] - posted_at * 1000) / 1000,
        first_ms_per_step=first,
        last_ms_per_step=last,
        ratio=last / first if first > 0 else float("nan"),
        first_gaps_ms=first_gaps,
        last_gaps_ms=last_gaps,
        deliveries=sum(1 for event in events if event["type"] == "StepScheduled"),
        app_requests=stats["requests"],
        largest_body_bytes=stats["largest_body"],
        body_bytes=stats["body_bytes"],
        topic_bytes=written,
    )


# -- the table ----------------------------------------------------------------------------------

PROCESSES = ("projector", "scheduler", "executor", "api", "app", "broker")


# (label, path, ratio to the floor?)
ROWS: list[tuple[str, str, bool]] = [
    (f"{STEPS}-step run p50 ms, one at a time", "latency_ms.p50", True),
    ("  p99 ms", "latency_ms.p99", True),
    ("  server side p50 ms (POST -> RunCompleted)", "server_ms.p50", False),
    ("  server side p99 ms", "server_ms.p99", False),
    ("  p50s: POST -> RunStarted", "split_ms.post_to_started.p50", False),
    ("    RunStarted -> 1st step body", "split_ms.started_to_first_step.p50", False),
    (f"    1st -> {STEPS}th step body", "split_ms.first_to_last_step.p50", False),
    (f"    {STEPS}th step body -> RunCompleted", "split_ms.last_step_to_completed.p50", False),
    ("    RunCompleted -> client knew", "split_ms.completed_to_client.p50", False),
    ("  polls per run", "polls_per_run", False),
    (f"steps/s, {CLIENTS} clients", "throughput.steps_per_s", True),
    (f"runs/s, {CLIENTS} clients", "throughput.runs_per_s", True),
    ("  run p50 ms under load", "throughput.run_ms.p50", True),
    ("CPU ms per run, servers", "throughput.cpu_ms_per_run.total", True),
    *((f"  {name}", f"throughput.cpu_ms_per_run.{name}", False) for name in PROCESSES),
    ("  bench client (not counted)", "throughput.client_cpu_ms_per_run", True),
    ("peak memory MiB, servers", "peak_mib.total", True),
    *((f"  {name}", f"peak_mib.{name}", False) for name in PROCESSES),
    ("idle CPU % of a core", "idle.percent_of_core.total", False),
    *((f"  {name}", f"idle.percent_of_core.{name}", False) for name in PROCESSES),
    ("sleep lateness p50 ms", "sleeps.lateness_ms.p50", False),
    ("  p99 ms", "sleeps.lateness_ms.p99", False),
    ("  max ms", "sleeps.lateness_ms.max", False),
    ("  recorded (wake's at_ms) p50 ms", "sleeps.recorded_lateness_ms.p50", False),
    ("  recorded p99 ms", "sleeps.recorded_lateness_ms.p99", False),
    ("produce retries logged (NotEnoughReplicas)", "produce_retries", False),
]


# The machine meanwhile: CPU that none of the measured processes nor the clients used (other work on it).
NOISE_ROWS: list[tuple[str, str, bool]] = [
    ("others' CPU % of a core: runs one at a time", "latency_others_percent", False),
    (f"  {CLIENTS}-client window", "throughput.others_percent", False),
    ("  idle measurement", "idle.others_percent", False),
    (f"  steal, {CLIENTS}-client window", "throughput.steal_percent", False),
]


def long_rows(steps: int) -> list[tuple[str, str, bool]]:
    return [
        (f"long run: ms per step, steps 1-{STEPS}", "long_run.first_ms_per_step", False),
        (f"  steps {steps - STEPS + 1}-{steps}", "long_run.last_ms_per_step", False),
        (f"  steps {steps - STEPS + 1}-{steps} / steps 1-{STEPS}", "long_run.ratio", False),
        (f"  median step, steps 1-{STEPS} ms", "long_run.first_median_ms", False),
        (f"  median step, steps {steps - STEPS + 1}-{steps} ms", "long_run.last_median_ms", False),
        ("  run s (POST -> RunCompleted)", "long_run.seconds", False),
        ("  deliveries", "long_run.deliveries", False),
        ("  largest delivery body KB", "long_run.largest_body_kb", False),
        ("  delivery bodies KB, all", "long_run.body_kb", False),
        ("  written to runs KB", "long_run.topic_kb.runs", False),
        ("  written to deliveries KB", "long_run.topic_kb.deliveries", False),
        ("  written to all topics KB", "long_run.topic_kb.total", False),
    ]


def floor_value(floors: list[Measured], path: str) -> float | None:
    """The floor's number: the mean of its measurements (before and after the modes)."""
    numbers = [found for floor in floors if isinstance(found := value(floor, path), int | float)]
    return sum(numbers) / len(numbers) if numbers else None


def ratio_to_floor(mode: Measured, floors: list[Measured], path: str) -> float | None:
    mine, base = value(mode, path), floor_value(floors, path)
    return mine / base if isinstance(mine, int | float) and base else None


def table(floors: list[Measured], modes: list[Measured], steps: int) -> str:
    headers = ["measure", *(floor.name for floor in floors)]
    for mode in modes:
        headers += [mode.name, "x floor"]
    rows = []
    for label, path, ratio in [*ROWS, *long_rows(steps), *NOISE_ROWS]:
        row = [label, *(fmt(value(floor, path)) for floor in floors)]
        for mode in modes:
            row += [fmt(value(mode, path)), fmt_ratio(ratio_to_floor(mode, floors, path)) if ratio else ""]
        rows.append(row)
    return render(headers, rows)


def value(measured: Measured, path: str) -> Any:
    """A number of ``measured`` by a dotted path (``latency_ms.p50``); None where there is none."""
    found: Any = measured
    for part in path.split("."):
        if found is None:
            return None
        found = found.get(part) if isinstance(found, dict) else getattr(found, part)
    return found


@dataclass(frozen=True, slots=True)
class Target:
    label: str
    measure: Callable[[Measured, list[Measured]], float | None]  # (mode, floors) → the number compared
    limit: float
    at_most: bool  # PASS when the number is ≤ limit (else ≥ limit; a strict < for "under")
    unit: str  # "x" for ratios to the floor


TARGETS = [
    Target(
        f"{STEPS}-step run p50 <= 4x the floor (Restate: 4.8x)",
        lambda mode, floors: ratio_to_floor(mode, floors, "latency_ms.p50"),
        4,
        True,
        "x",
    ),
    Target(
        f"steps/s at {CLIENTS} clients >= 0.25x the floor (Restate: 0.19-0.23x)",
        lambda mode, floors: ratio_to_floor(mode, floors, "throughput.steps_per_s"),
        0.25,
        False,
        "x",
    ),
    Target(
        "CPU per run <= 8x the floor (Restate: ~8-10x)",
        lambda mode, floors: ratio_to_floor(mode, floors, "throughput.cpu_ms_per_run.total"),
        8,
        True,
        "x",
    ),
    Target(
        "steps {last} within 1.2x of steps 1-10",
        lambda mode, floors: value(mode, "long_run.ratio"),
        1.2,
        True,
        "x",
    ),
    Target("idle < 3 % of a core", lambda mode, floors: value(mode, "idle.percent_of_core.total"), 3, True, " %"),
    Target("sleep lateness p99 < 20 ms", lambda mode, floors: value(mode, "sleeps.lateness_ms.p99"), 20, True, " ms"),
]


def verdicts(mode: Measured, floors: list[Measured], steps: int) -> list[dict[str, Any]]:
    found = []
    for target in TARGETS:
        number = target.measure(mode, floors)
        passed = None if number is None else (number <= target.limit if target.at_most else number >= target.limit)
        label = target.label.format(last=f"{steps - STEPS + 1}-{steps}")
        found.append({"target": label, "value": number, "limit": target.limit, "pass": passed})
    return found


def targets_table(floors: list[Measured], modes: list[Measured], steps: int) -> str:
    rows = [[verdict["target"]] for verdict in verdicts(floors[0], floors, steps)]
    for mode in modes:
        for row, target, verdict in zip(rows, TARGETS, verdicts(mode, floors, steps), strict=True):
            number = verdict["value"]
            shown = fmt_ratio(number) if target.unit == "x" else f"{fmt(number)}{target.unit}"
            row.append(f"{shown} {'-' if verdict['pass'] is None else 'PASS' if verdict['pass'] else 'MISS'}")
    return render(["target (ratios to the floor's mean above)", *(mode.name for mode in modes)], rows)


# -- the whole benchmark ------------------------------------------------------------------------


def run_all(bench: Session, kafka: Broker, args: argparse.Namespace) -> tuple[list[Measured], list[Measured]]:
    """The floor, each mode on a fresh stack, and the floor again (the machine's drift meanwhile)."""
    sizes: Sizes = args.sizes

    def floor(name: str) -> Measured:
        with bench.stack(kafka, partitions=args.partitions, folder=name.replace(" ", "-"), topics=False) as stack:
            return asyncio.run(measure_floor(name, sizes, stack))

    floors = [floor("floor before")]
    # Without this the first mode pays for the broker's JIT. Two identical columns after a fresh JVM:
    # p50 104 against 67 ms, the broker's CPU per run 10.6 against 5.6 ms; with 20 s thrown away first,
    # 71 against 66 and 7.6 against 6.8. The first column's p50 stays the slower, by up to 1.5x, with
    # more warm-up or a full-size heap too (cause not found): compare modes in both orders
    # (bench/README.md, "Results after the hot path").
    if sizes.broker_warmup_s > 0:
        with bench.stack(kafka, partitions=args.partitions, folder="broker-warm-up", isolated=True) as stack:
            progress(f"the broker: warming up for {sizes.broker_warmup_s:.0f} s on a stack of its own…")
            asyncio.run(warm_broker(sizes, stack))
    modes = []
    for index, mode in enumerate(args.modes, start=1):
        folder = f"mode-{index}"
        with bench.stack(kafka, partitions=args.partitions, folder=folder, env=mode.env, isolated=True) as stack:
            progress(f"{mode.name}: a fresh stack ({mode.describe()}) in {stack.directory}")
            modes.append(asyncio.run(measure_mode(mode, sizes, stack, kafka, args)))
    floors.append(floor("floor after"))
    return floors, modes


async def warm_broker(sizes: Sizes, stack: Stack) -> None:
    """``CLIENTS`` clients doing runs back to back for ``sizes.broker_warmup_s``; nothing is kept."""
    for name in SERVICES:
        stack.start(name)
    await wait_for_http(f"{stack.api_url}/healthz", stack)
    await wait_for_http(f"{stack.app_url}/healthz", stack)
    tag = uuid.uuid4().hex[:6]
    ten = {"steps": STEPS, "sleep_ms": 0}
    async with client_session(stack.api_url) as client:
        engine = Engine(client, poll_s=0.002)
        deadline = time.monotonic() + sizes.broker_warmup_s

        async def runs(index: int) -> None:
            for count in itertools.count():
                if time.monotonic() >= deadline:
                    return
                await engine.run(f"jit-{tag}-{index}-{count}", ten, label=f"jit-{tag}")

        await asyncio.gather(*(runs(index) for index in range(CLIENTS)))


def parse_mode(text: str) -> Mode:
    """``NAME=VAR=value,VAR=value`` (``NAME=`` for the engine's defaults under another name)."""
    name, _, assignments = text.partition("=")
    env: dict[str, str] = {}
    for assignment in filter(None, (item.strip() for item in assignments.split(","))):
        variable, equals, setting = assignment.partition("=")
        if not equals or not variable:
            raise argparse.ArgumentTypeError(f"expected VAR=value in {text!r}, but got {assignment!r}")
        env[variable] = setting
    if not name.strip() or "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=VAR=value,VAR=value, but got {text!r}")
    return Mode(name.strip(), env)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small version, about a minute")
    parser.add_argument(
        "--mode",
        action="append",
        type=parse_mode,
        default=[],
        metavar="NAME=VAR=value,…",
        help="another column: the services (and the app) with these environment variables, on a fresh stack "
        "(repeatable), e.g. budget0=STEPSTREAM_STEP_BUDGET_MS=0",
    )
    parser.add_argument("--no-durable", action="store_true", help="leave out the engine's defaults (durable)")
    parser.add_argument(
        "--poll-ms", type=float, default=2, help="the client's poll interval when the api cannot wait (default 2)"
    )
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    parser.add_argument(
        "--timeout", type=float, default=300, help="seconds for the sleeping runs, and the long run (default 300)"
    )
    parser.add_argument(
        "--broker-warmup-s",
        type=float,
        help="seconds of runs thrown away before the first mode (default 20, 8 with --quick; 0: none)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, query stores)")
    args = parser.parse_args(argv)
    args.sizes = QUICK if args.quick else FULL
    if args.broker_warmup_s is not None:
        args.sizes = dataclasses.replace(args.sizes, broker_warmup_s=max(0.0, args.broker_warmup_s))
    args.modes = ([] if args.no_durable else [Mode("durable", {})]) + args.mode
    names = [mode.name for mode in args.modes]
    if not args.modes or len(set(names)) != len(names) or "floor" in names:
        parser.error(f"expected at least one mode, each named once and none 'floor', but got {names}")
    if args.poll_ms <= 0:
        parser.error("expected --poll-ms > 0")
    return args


def header(args: argparse.Namespace, modes: list[Measured], took_s: float, load_before: float) -> str:
    sizes: Sizes = args.sizes
    commit = (engine_commit() or "unknown")[:9]
    lines = [
        f"Stepstream hot path, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, commit {commit}, {os.cpu_count()} cores, "
        f"load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after, took {took_s:.0f} s"
        + (" (--quick)" if args.quick else ""),
        f"floor: {STEPS} sequential POSTs to a FastAPI endpoint (uvicorn, own process), aiohttp client; "
        f"{sizes.floor_runs} runs one at a time; measured before and after the modes, ratios to the mean",
    ]
    lines += [
        f"{mode.name}: {describe_env(mode.env)}; a run = trigger "
        f"of {STEPS} ctx.run steps until the client knows the result, by {mode.method}; "
        f"{sizes.engine_runs} runs one at a time"
        for mode in modes
    ]
    lines.append(
        f"throughput: {CLIENTS} clients back to back, {sizes.warmup_s:g} s warm-up, {sizes.window_s:g} s window; "
        f"CPU from /proc over the window / runs completed in it (servers: engine processes + broker, or the "
        f"floor's endpoint); idle over {sizes.idle_s:g} s; {sizes.sleepers} runs sleeping {sizes.sleep_ms} ms; "
        f"a long run of {sizes.long_steps} steps; before the first mode, {sizes.broker_warmup_s:g} s of runs thrown "
        "away (the broker's JIT)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    with session("stepstream-hotpath-", keep=args.keep) as bench:
        with broker(bench.directory) as kafka:
            floors, modes = run_all(bench, kafka, args)
        print()
        print(header(args, modes, time.monotonic() - began, load_before))
        print(table(floors, modes, args.sizes.long_steps))
        print()
        print(targets_table(floors, modes, args.sizes.long_steps))
        for column in [*floors, *modes]:
            for note in column.notes:
                print(f"note, {column.name}: {note}")
        bench.warn_about_logs()
        if args.json:
            write_json(
                args.json,
                load_before=load_before,
                parameters={
                    "quick": args.quick,
                    "sizes": asdict(args.sizes),
                    "steps": STEPS,
                    "clients": CLIENTS,
                    "poll_ms": args.poll_ms,
                    "partitions": args.partitions,
                    "modes": {mode.name: mode.env for mode in args.modes},
                },
                floors=[asdict(floor) for floor in floors],
                modes=[asdict(mode) for mode in modes],
                targets={mode.name: verdicts(mode, floors, args.sizes.long_steps) for mode in modes},
                service_log_error_lines=[line for stack in bench.stacks for line in stack.log_problems],
            )
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    sys.exit(main())
