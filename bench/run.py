"""Benchmark Stepstream end to end: N concurrent runs of an M-step workflow on a real stack.

Starts its own stack: a local Kafka broker in a temporary folder on free ports (or the cluster in
``KAFKA_BOOTSTRAP_SERVERS``), the engine's topics under a fresh prefix, the four services as separate
processes (``python -m stepstream.projector|scheduler|executor|api``) and the benchmark workflow app
(``bench/workflow_app.py``) under uvicorn. Then, for each executor step budget (``--budgets``, default
``0,default``: one step per delivery, and the engine's default budget), it (re)starts the executor with
that ``STEPSTREAM_STEP_BUDGET_MS``, warms up with a few small runs, triggers N runs at once through the
api, waits for all of them to complete, and reads their histories; it does that ``--rounds`` times per
mode, the modes alternating, and pools the rounds of each mode. ``--flow`` adds two modes whose runs
are all triggered under one flow-control key per mode (docs/flow-control.md): with limits too high to
bind, and with none; the executor gives a delivery under a key a budget of 0, so they compare with
budget 0 (the cost of flow control's bookkeeping: the scheduler's hop and the executor's reports).
It measures:

* step gap: the time between the starts of consecutive step bodies of a run, by the bodies' own clock
  (the bodies do nothing, so this is the engine's overhead per step);
* steps/s and runs/s: all steps (runs) over the wall time from a round's first trigger to its last
  RunCompleted, summed over the rounds;
* first step: from just before the trigger's POST to the start of the run's first step body;
* sleep late: when the sleep's StepCompleted was recorded minus the wake time asked for;
* deliveries per run: the StepScheduled events of a run (endpoint calls the engine made);
* details: a step gap across deliveries split at the projector's record of the earlier step, the
  code's resumption after the sleep, the api's trigger rate, and the NotEnoughReplicas produce
  retries the services logged meanwhile.

It prints one table, a row per mode and ratio rows (each mode against the first; keyed modes against
the default budget too), then the details, writes the numbers as JSON with ``--json``, and stops
everything it started (services, app, broker) on success, failure or Ctrl-C. It exits 1 when a
run fails, does not complete in time, or a service dies, printing the run's last events and the tail
of the service logs.

    .venv/bin/python bench/run.py                      # 3 rounds of 100 runs x 10 steps, sleep 500 ms, ~1.5 min
    .venv/bin/python bench/run.py --quick              # 1 round of 10 runs x 5 steps, sleep 200 ms, ~25 s
    .venv/bin/python bench/run.py --runs 200 --steps 20 --sleep-ms 1000 --json /tmp/bench.json
    .venv/bin/python bench/run.py --flow --runs 100 --steps 5 --sleep-ms 0 --rounds 5   # make bench-flow, ~2 min
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from harness import (  # bench/harness.py: the broker, the stack, the session and the tables
    PRODUCE_RETRY,
    BenchFailure,
    Stack,
    broker,
    describe_event,
    fmt,
    fmt_ratio,
    machine,
    percentile,
    progress,
    render,
    session,
    summary,
    wait_for_http,
    write_json,
)

from stepstream.config import ExecutorSettings, KafkaSettings

SERVICES = ("projector", "scheduler", "api", "app")  # the executor starts per mode
DEFAULT_BUDGET_MS = ExecutorSettings(kafka=KafkaSettings(), signing_keys=()).budget_ms  # the engine's own default
TRIGGER_CONCURRENCY = 64
HISTORY_CONCURRENCY = 8
POLL_INTERVAL_S = 0.25


# -- one measurement ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FlowSpec:
    """A trigger's ``flow_control`` but its key (each mode gets a key of its own, for all its rounds)."""

    name: str
    rate: int | None = None
    period: str = "1s"
    parallelism: int | None = None

    def body(self, key: str) -> dict[str, Any]:
        body: dict[str, Any] = {"key": key}
        if self.rate is not None:
            body |= {"rate": self.rate, "period": self.period}
        if self.parallelism is not None:
            body["parallelism"] = self.parallelism
        return body


# --flow: limits far above what the benchmark reaches (a few hundred starts a second, --runs in flight),
# so they are checked on every delivery and never bind; and a key with no limits (counted, never held back).
FLOW_NEVER_BINDS = FlowSpec("limits never bind", rate=1_000_000, period="1s", parallelism=100_000)
FLOW_NO_LIMITS = FlowSpec("no limits")


@dataclass(frozen=True, slots=True)
class Mode:
    budget_ms: int | None  # None: the executor's default (the variable unset)
    flow: FlowSpec | None = None  # every run of the mode triggered under one flow key with these limits

    @property
    def name(self) -> str:
        if self.flow is not None:
            # The executor sends a delivery under a key with a budget of 0 whatever its own setting.
            return f"key, {self.flow.name} (budget 0)"
        return (
            "budget 0"
            if self.budget_ms == 0
            else f"budget {self.effective_ms}" + (" (default)" if self.budget_ms is None else "")
        )

    @property
    def effective_ms(self) -> int:
        if self.flow is not None:
            return 0
        return DEFAULT_BUDGET_MS if self.budget_ms is None else self.budget_ms

    def executor_env(self) -> dict[str, str]:
        return {} if self.budget_ms is None else {"STEPSTREAM_STEP_BUDGET_MS": str(self.budget_ms)}

    def flow_control(self, key: str) -> dict[str, Any] | None:
        return None if self.flow is None else self.flow.body(key)


@dataclass(slots=True)
class Result:
    mode: str
    budget_ms: int
    runs: int
    steps_per_run: int
    sleep_ms: int
    wall_s: float
    steps_per_s: float
    runs_per_s: float
    deliveries_per_run: float
    step_gap_ms: dict[str, float] = field(default_factory=dict)
    first_step_ms: dict[str, float] = field(default_factory=dict)
    sleep_late_ms: dict[str, float] = field(default_factory=dict)
    resume_late_ms: dict[str, float] = field(default_factory=dict)
    # A gap between steps of different deliveries, split at the projector's record of the earlier step.
    gap_to_recorded_ms: dict[str, float] = field(default_factory=dict)
    gap_recorded_to_next_ms: dict[str, float] = field(default_factory=dict)
    run_duration_ms: dict[str, float] = field(default_factory=dict)
    triggers_per_s: float = 0.0
    trigger_post_ms: dict[str, float] = field(default_factory=dict)
    produce_retries: int = 0
    rounds: list[dict[str, float | None]] = field(default_factory=list)
    flow_control: dict[str, Any] | None = None  # the trigger's flow_control, if the mode has one


async def list_statuses(client: httpx.AsyncClient, label: str) -> dict[str, str]:
    statuses: dict[str, str] = {}
    cursor = None
    while True:
        params: dict[str, Any] = {"label": label, "limit": 500}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/v1/runs", params=params)
        response.raise_for_status()
        body = response.json()
        statuses.update({run["run_id"]: run["status"] for run in body["runs"]})
        cursor = body.get("next_cursor")
        if not cursor:
            return statuses


async def history(client: httpx.AsyncClient, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/v1/runs/{run_id}/history")
    if response.status_code == 404:
        return []
    response.raise_for_status()
    events: list[dict[str, Any]] = response.json()["events"]
    return events


async def failing_runs_report(client: httpx.AsyncClient, run_ids: list[str], limit: int = 3) -> str:
    parts = []
    for run_id in run_ids[:limit]:
        try:
            events = await history(client, run_id)
        except httpx.HTTPError as error:
            parts.append(f"run {run_id}: could not read its history: {error}")
            continue
        if not events:
            parts.append(f"run {run_id}: not known to the api (no RunStarted indexed)")
            continue
        parts.append(f"run {run_id}: last {min(10, len(events))} of {len(events)} events")
        parts.extend(describe_event(event) for event in events[-10:])
    if len(run_ids) > limit:
        parts.append(f"… and {len(run_ids) - limit} more")
    return "\n".join(parts)


@dataclass(frozen=True, slots=True)
class RoundData:
    triggered_at: dict[str, float]  # epoch seconds just before each trigger's POST
    accepted_at: dict[str, float]  # … and when its answer came back
    histories: dict[str, list[dict[str, Any]]]


async def trigger_and_wait(
    client: httpx.AsyncClient,
    stack: Stack,
    *,
    label: str,
    runs: int,
    payload: dict[str, int],
    timeout_s: float,
    flow_control: dict[str, Any] | None = None,
    quiet: bool = False,
) -> RoundData:
    """Trigger ``runs`` runs at once (each under ``flow_control``, if given), wait until all complete;
    when each was triggered, and the histories."""
    run_ids = [f"{label}-{index:05d}" for index in range(runs)]
    triggered_at: dict[str, float] = {}
    accepted_at: dict[str, float] = {}
    slots = asyncio.Semaphore(TRIGGER_CONCURRENCY)

    async def trigger(run_id: str) -> None:
        body = {"workflow": "steps", "url": stack.workflow_url, "payload": payload, "run_id": run_id, "label": label}
        if flow_control is not None:
            body["flow_control"] = flow_control
        async with slots:
            triggered_at[run_id] = time.time()
            for attempt in range(1, 4):
                try:
                    response = await client.post("/v1/runs", json=body)
                    break
                except httpx.TransportError as error:
                    # A pooled keep-alive connection the server closed just now; triggering again with
                    # the same run id is idempotent. Said out loud, since the api might be the cause.
                    progress(f"  trigger of {run_id} failed ({error!r}), attempt {attempt} of 3")
                    if attempt == 3 or stack.dead():
                        raise BenchFailure(f"could not trigger {run_id}: {error!r}") from error
                    await asyncio.sleep(0.2)
        accepted_at[run_id] = time.time()
        if response.status_code not in (200, 202):
            raise BenchFailure(f"the api refused the trigger of {run_id}: {response.status_code} {response.text}")

    started = time.monotonic()
    await asyncio.gather(*(trigger(run_id) for run_id in run_ids))
    deadline = started + timeout_s
    last_report = 0.0
    last_done = -1
    while True:
        statuses = await list_statuses(client, label)
        done = sum(1 for status in statuses.values() if status == "completed")
        failed = sorted(run_id for run_id, status in statuses.items() if status == "failed")
        now = time.monotonic()
        if not quiet and ((done != last_done and now - last_report >= 1.0) or done == runs):
            progress(f"  completed {done}/{runs} runs ({now - started:.1f} s)…")
            last_report, last_done = now, done
        if failed:
            report = await failing_runs_report(client, failed)
            raise BenchFailure(f"{len(failed)} of {runs} runs failed:\n{report}")
        if done == runs:
            break
        if stack.dead():
            raise BenchFailure(f"a service died while runs were in flight: {', '.join(stack.dead())}")
        if now > deadline:
            unfinished = [run_id for run_id in run_ids if statuses.get(run_id) != "completed"]
            counts = {s: sum(1 for v in statuses.values() if v == s) for s in sorted(set(statuses.values()))}
            report = await failing_runs_report(client, unfinished)
            raise BenchFailure(
                f"only {done} of {runs} runs completed within {timeout_s:.0f} s "
                f"(statuses: {counts}, {runs - len(statuses)} not indexed):\n{report}"
            )
        await asyncio.sleep(POLL_INTERVAL_S)

    slots = asyncio.Semaphore(HISTORY_CONCURRENCY)

    async def read(run_id: str) -> list[dict[str, Any]]:
        async with slots:
            return await history(client, run_id)

    histories = dict(zip(run_ids, await asyncio.gather(*(read(run_id) for run_id in run_ids)), strict=True))
    return RoundData(triggered_at, accepted_at, histories)


@dataclass(slots=True)
class Samples:
    """The raw measurements of one mode, over all its rounds."""

    runs: int = 0
    steps: int = 0
    wall_s: float = 0.0
    deliveries: int = 0
    gaps: list[float] = field(default_factory=list)
    first: list[float] = field(default_factory=list)
    sleep_late: list[float] = field(default_factory=list)
    resume_late: list[float] = field(default_factory=list)
    to_recorded: list[float] = field(default_factory=list)
    recorded_to_next: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    trigger_s: float = 0.0  # from the first trigger's POST to the last one's answer, summed over the rounds
    trigger_post: list[float] = field(default_factory=list)
    produce_retries: int = 0  # NotEnoughReplicas retries logged by the services while the rounds ran
    rounds: list[dict[str, float | None]] = field(default_factory=list)


def collect(
    samples: Samples,
    *,
    steps: int,
    sleep_ms: int,
    data: RoundData,
) -> dict[str, float | None]:
    """Add one round's runs to ``samples``; that round's headline numbers."""
    triggered_at, histories = data.triggered_at, data.histories
    trigger_s = max(data.accepted_at.values()) - min(triggered_at.values())
    samples.trigger_s += trigger_s
    samples.trigger_post.extend((data.accepted_at[r] - triggered_at[r]) * 1000 for r in triggered_at)
    completed_at: list[float] = []
    round_gaps: list[float] = []
    for run_id, events in histories.items():
        run_steps = sorted(
            (e for e in events if e["type"] == "StepCompleted" and e["kind"] == "run"), key=lambda e: e["step_index"]
        )
        completion = next((e for e in events if e["type"] == "RunCompleted"), None)
        if [e["step_index"] for e in run_steps] != list(range(steps)) or completion is None:
            raise BenchFailure(
                f"run {run_id} completed with run steps {[e['step_index'] for e in run_steps]}, "
                f"expected 0..{steps - 1} and a RunCompleted:\n" + "\n".join(describe_event(e) for e in events)
            )
        starts = [float(e["output"]["t"]) for e in run_steps]
        round_gaps.extend((later - earlier) * 1000 for earlier, later in itertools.pairwise(starts))
        for (step, start), (next_step, next_start) in itertools.pairwise(zip(run_steps, starts, strict=True)):
            if step["delivery_id"] != next_step["delivery_id"]:
                samples.to_recorded.append(step["at_ms"] - start * 1000)
                samples.recorded_to_next.append(next_start * 1000 - step["at_ms"])
        samples.first.append((starts[0] - triggered_at[run_id]) * 1000)
        completed_at.append(completion["at_ms"] / 1000)
        samples.durations.append(completion["at_ms"] - triggered_at[run_id] * 1000)
        samples.deliveries += sum(1 for e in events if e["type"] == "StepScheduled")
        if sleep_ms > 0:
            started = next(e for e in events if e["type"] == "SleepStarted")
            woke = next(e for e in events if e["type"] == "StepCompleted" and e["kind"] == "sleep")
            samples.sleep_late.append(woke["at_ms"] - started["wake_at_ms"])
            samples.resume_late.append(float(completion["output"]["finished_at"]) * 1000 - started["wake_at_ms"])
    wall_s = max(completed_at) - min(triggered_at.values())
    samples.runs += len(histories)
    samples.steps += len(histories) * steps
    samples.wall_s += wall_s
    samples.gaps.extend(round_gaps)
    headline = {
        "wall_s": wall_s,
        "steps_per_s": len(histories) * steps / wall_s,
        "triggers_per_s": len(histories) / trigger_s,
        "step_gap_p50_ms": percentile(round_gaps, 50) if round_gaps else None,
    }
    samples.rounds.append(headline)
    return headline


def result(mode: Mode, samples: Samples, *, steps: int, sleep_ms: int, flow_key: str) -> Result:
    return Result(
        mode=mode.name,
        budget_ms=mode.effective_ms,
        runs=samples.runs,
        steps_per_run=steps,
        sleep_ms=sleep_ms,
        wall_s=samples.wall_s,
        steps_per_s=samples.steps / samples.wall_s,
        runs_per_s=samples.runs / samples.wall_s,
        deliveries_per_run=samples.deliveries / samples.runs,
        step_gap_ms=summary(samples.gaps),
        first_step_ms=summary(samples.first),
        sleep_late_ms=summary(samples.sleep_late),
        resume_late_ms=summary(samples.resume_late),
        gap_to_recorded_ms=summary(samples.to_recorded),
        gap_recorded_to_next_ms=summary(samples.recorded_to_next),
        run_duration_ms=summary(samples.durations),
        triggers_per_s=samples.runs / samples.trigger_s,
        trigger_post_ms=summary(samples.trigger_post),
        produce_retries=samples.produce_retries,
        rounds=samples.rounds,
        flow_control=mode.flow_control(flow_key),
    )


# -- the table ----------------------------------------------------------------------------------

COLUMNS: list[tuple[str, Any]] = [
    ("mode", lambda r: r.mode),
    ("runs", lambda r: r.runs),
    ("steps/run", lambda r: r.steps_per_run),
    ("deliv/run", lambda r: r.deliveries_per_run),
    ("wall s", lambda r: r.wall_s),
    ("steps/s", lambda r: r.steps_per_s),
    ("runs/s", lambda r: r.runs_per_s),
    ("step gap p50 ms", lambda r: r.step_gap_ms.get("p50")),
    ("p99", lambda r: r.step_gap_ms.get("p99")),
    ("first step p50 ms", lambda r: r.first_step_ms.get("p50")),
    ("p99", lambda r: r.first_step_ms.get("p99")),
    ("sleep late p50 ms", lambda r: r.sleep_late_ms.get("p50")),
    ("p99", lambda r: r.sleep_late_ms.get("p99")),
]


def ratios(base: Result, other: Result) -> dict[str, float | None]:
    """Each column of ``other`` divided by the same column of ``base`` (e.g. default / budget 0)."""
    values: dict[str, float | None] = {}
    for index, (header, get) in enumerate(COLUMNS[4:], start=4):
        a, b = get(base), get(other)
        key = header if header != "p99" else f"{COLUMNS[index - 1][0].replace(' p50', '')} p99"
        values[key] = b / a if isinstance(a, int | float) and isinstance(b, int | float) and a else None
    return values


BREAKDOWN: list[tuple[str, Any]] = [
    ("mode", lambda r: r.mode),
    ("gaps across deliveries", lambda r: r.gap_to_recorded_ms.get("n", 0)),
    ("body -> recorded p50 ms", lambda r: r.gap_to_recorded_ms.get("p50")),
    ("p99", lambda r: r.gap_to_recorded_ms.get("p99")),
    ("recorded -> next body p50 ms", lambda r: r.gap_recorded_to_next_ms.get("p50")),
    ("p99", lambda r: r.gap_recorded_to_next_ms.get("p99")),
    ("woke -> code resumed p50 ms", lambda r: _difference(r.resume_late_ms.get("p50"), r.sleep_late_ms.get("p50"))),
    ("run p50 ms", lambda r: r.run_duration_ms.get("p50")),
    ("triggers/s", lambda r: r.triggers_per_s),
    ("trigger POST p50 ms", lambda r: r.trigger_post_ms.get("p50")),
    ("produce retries", lambda r: r.produce_retries),
]


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def comparisons(results: list[Result]) -> list[tuple[Result, Result]]:
    """The pairs (other, base) the table gives ratios of: every mode against the first; and, with modes
    under a flow key, each of those against the last mode without one too (the default budget)."""
    pairs = [(other, results[0]) for other in results[1:]]
    unkeyed = [result for result in results if result.flow_control is None]
    if len(unkeyed) >= 2:
        pairs += [(other, unkeyed[-1]) for other in results if other.flow_control is not None]
    return pairs


def short(mode: str) -> str:
    return mode.split(" (")[0]


def table(results: list[Result]) -> str:
    """The main table: a row per mode, then the ratios of each pair of :func:`comparisons`."""
    rows = [[fmt(get(result)) for _, get in COLUMNS] for result in results]
    for other, base in comparisons(results):
        rows.append(
            [f"ratio {short(other.mode)} / {short(base.mode)}", "", "", ""]
            + [fmt_ratio(value) for value in ratios(base, other).values()]
        )
    return render([header for header, _ in COLUMNS], rows)


def breakdown(results: list[Result]) -> str:
    """Where the time between two steps of separate deliveries goes, split at the projector's record."""
    return render(
        [header for header, _ in BREAKDOWN], [[fmt(get(result)) for _, get in BREAKDOWN] for result in results]
    )


# -- the whole benchmark ------------------------------------------------------------------------


async def benchmark(args: argparse.Namespace, stack: Stack, modes: list[Mode]) -> list[Result]:
    for name in SERVICES:
        stack.start(name)
    await wait_for_http(f"{stack.api_url}/healthz", stack)
    await wait_for_http(f"http://127.0.0.1:{stack.app_port}/healthz", stack)
    samples = {mode: Samples() for mode in modes}
    tag = uuid.uuid4().hex[:6]
    flow_keys = {mode: f"bench-{tag}-m{index}" for index, mode in enumerate(modes)}  # used by keyed modes only
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them under a request.
    limits = httpx.Limits(
        max_connections=TRIGGER_CONCURRENCY, max_keepalive_connections=TRIGGER_CONCURRENCY, keepalive_expiry=4
    )
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=30, limits=limits) as client:
        for round_number in range(args.rounds):
            # Alternate the order, so a drift of the machine's load does not favour one mode.
            order = modes if round_number % 2 == 0 else modes[::-1]
            for mode in order:
                where = f"[round {round_number + 1}/{args.rounds}, {mode.name}]"
                label = f"{tag}-r{round_number}-m{modes.index(mode)}"
                stack.stop("executor")
                stack.start("executor", **mode.executor_env())
                # The warm-up takes every path the measurement takes (a short sleep: the scheduler and
                # its timers), so first-use costs (connections, group joins, transactions) stay out of it.
                warmup_sleep_ms = min(args.sleep_ms, 50)
                progress(f"{where} warming up ({args.warmup} runs of 2 steps)…")
                await trigger_and_wait(
                    client,
                    stack,
                    label=f"warmup-{label}",
                    runs=args.warmup,
                    payload={"steps": 2, "sleep_ms": warmup_sleep_ms},
                    timeout_s=args.timeout,
                    flow_control=mode.flow_control(flow_keys[mode]),
                    quiet=True,
                )
                progress(
                    f"{where} triggering {args.runs} runs of {args.steps} steps"
                    + (f" and a {args.sleep_ms} ms sleep" if args.sleep_ms else "")
                    + "…"
                )
                sizes = stack.log_sizes()
                data = await trigger_and_wait(
                    client,
                    stack,
                    label=f"bench-{label}",
                    runs=args.runs,
                    payload={"steps": args.steps, "sleep_ms": args.sleep_ms},
                    timeout_s=args.timeout,
                    flow_control=mode.flow_control(flow_keys[mode]),
                )
                headline = collect(samples[mode], steps=args.steps, sleep_ms=args.sleep_ms, data=data)
                samples[mode].produce_retries += stack.count_in_logs_since(sizes, PRODUCE_RETRY)
                progress(
                    f"{where} {headline['steps_per_s']:.0f} steps/s, step gap p50 {fmt(headline['step_gap_p50_ms'])} ms"
                )
    return [
        result(mode, samples[mode], steps=args.steps, sleep_ms=args.sleep_ms, flow_key=flow_keys[mode])
        for mode in modes
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, help="concurrent runs per mode (default 100; --quick 10)")
    parser.add_argument("--steps", type=int, help="ctx.run steps per run (default 10; --quick 5)")
    parser.add_argument("--sleep-ms", type=int, help="one ctx.sleep per run after the steps, 0 for none "
                        "(default 500; --quick 200)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="a small run, about 30 s")
    parser.add_argument(
        "--budgets",
        default="0,default",
        help="comma-separated executor step budgets in ms, one table row each; 'default' leaves "
        "STEPSTREAM_STEP_BUDGET_MS unset (default: 0,default)",
    )
    parser.add_argument(
        "--flow",
        action="store_true",
        help="add two modes under a flow-control key (one key per mode): limits that never bind "
        "(rate 1,000,000/s, parallelism 100,000), and no limits; the executor runs them at budget 0",
    )
    parser.add_argument("--partitions", type=int, default=3, help="partitions per topic (default 3)")
    parser.add_argument(
        "--rounds", type=int, help="measurements per mode, modes alternating, pooled (default 3; --quick 1)"
    )
    parser.add_argument("--warmup", type=int, default=5, help="small runs before each measurement (default 5)")
    parser.add_argument("--timeout", type=float, help="seconds for all runs of one mode to complete (default 180)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the numbers to PATH as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, query store)")
    args = parser.parse_args(argv)
    quick = args.quick
    args.runs = args.runs if args.runs is not None else (10 if quick else 100)
    args.rounds = args.rounds if args.rounds is not None else (1 if quick else 3)
    args.steps = args.steps if args.steps is not None else (5 if quick else 10)
    args.sleep_ms = args.sleep_ms if args.sleep_ms is not None else (200 if quick else 500)
    args.timeout = args.timeout if args.timeout is not None else (90 if quick else 180)
    if args.runs < 1 or args.steps < 1 or args.sleep_ms < 0 or args.warmup < 1 or args.rounds < 1:
        parser.error("expected --runs, --steps, --rounds and --warmup >= 1, and --sleep-ms >= 0")
    try:
        args.modes = [
            Mode(None if item.strip() == "default" else int(item)) for item in args.budgets.split(",") if item.strip()
        ]
        args.modes = list(dict.fromkeys(args.modes))  # each budget once
    except ValueError:
        parser.error(f"expected --budgets like '0,default' or '0,250,1000', but got {args.budgets!r}")
    if not args.modes or any(mode.budget_ms is not None and mode.budget_ms < 0 for mode in args.modes):
        parser.error(f"expected at least one budget of 0 ms or more, but got {args.budgets!r}")
    if args.flow:
        args.modes += [Mode(None, FLOW_NEVER_BINDS), Mode(None, FLOW_NO_LIMITS)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    load_before = machine()["load_average"]
    with session("stepstream-bench-", keep=args.keep) as bench:
        with broker(bench.directory) as kafka, bench.stack(kafka, partitions=args.partitions) as stack:
            results = asyncio.run(benchmark(args, stack, args.modes))
        took = time.monotonic() - began
        print()
        print(
            f"Stepstream benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores, "
            f"{args.runs} concurrent runs x {args.steps} steps"
            + (f" + one {args.sleep_ms} ms sleep" if args.sleep_ms else "")
            + f", {args.rounds} round{'s' if args.rounds > 1 else ''} per mode, {args.partitions} partitions, "
            f"took {took:.0f} s, load average {load_before[0]:.1f} before / {os.getloadavg()[0]:.1f} after"
        )
        if args.flow:
            print(
                "Modes 'key, …': every run under one flow-control key per mode (its deliveries through the "
                "scheduler's queue; the executor gives each a budget of 0); the others: no key."
            )
        print(table(results))
        for other, base in comparisons(results):
            ratio = ratios(base, other)
            print(
                f"{other.mode} vs {base.mode}: {fmt_ratio(ratio['steps/s'])} the steps/s, "
                f"{fmt_ratio(ratio['runs/s'])} the runs/s, step gap p50 {fmt_ratio(ratio['step gap p50 ms'])}"
            )
        if args.rounds > 1:  # the spread between rounds: how much of a ratio is noise
            print(
                "steps/s per round: "
                + "; ".join(
                    f"{result.mode}: {', '.join(fmt(one['steps_per_s']) for one in result.rounds)}"
                    for result in results
                )
            )
        print()
        print(
            "Details: a step gap across deliveries split at the projector's record of the earlier step; "
            "the code's resumption after a sleep; a run's duration; the api's trigger rate:"
        )
        print(breakdown(results))
        bench.warn_about_logs()
        if args.json:
            write_json(
                args.json,
                load_before=load_before,
                parameters={
                    "runs": args.runs,
                    "steps": args.steps,
                    "sleep_ms": args.sleep_ms,
                    "partitions": args.partitions,
                    "warmup": args.warmup,
                    "rounds": args.rounds,
                    "budgets": [mode.effective_ms for mode in args.modes],
                    "modes": [mode.name for mode in args.modes],
                },
                results=[asdict(result) for result in results],
                ratio_last_over_first=ratios(results[0], results[-1]) if len(results) >= 2 else None,
                ratios={f"{other.mode} / {base.mode}": ratios(base, other) for other, base in comparisons(results)},
                service_log_error_lines=stack.log_problems,
                service_log_startup_noise_lines=stack.log_noise,
            )
        bench.code = 0
    return bench.code


if __name__ == "__main__":
    sys.exit(main())
