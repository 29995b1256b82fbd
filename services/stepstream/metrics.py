"""The engine's Prometheus metrics: what each service counts, and the ``/metrics`` page.

Every service exposes them (the api on its own port, the others on their health port; in
``stepstream dev`` the four share a process, and the api's page shows them all). Names follow
Prometheus' conventions: ``stepstream_`` first, ``_total`` on counters, base units (``_seconds``,
``_bytes``), and labels with a bounded set of values: a workflow's name, a status, a step kind, a
topic, a partition; never a run id or a flow key (flow keys are shown only for the keys named in
``STEPSTREAM_METRICS_FLOW_KEYS``, and the ``top`` keys by backlog). docs/operations.md lists each
metric with what it means and the alerts built on it.

Counters of what runs did are counted by the projector once the events that say so are committed
(a batch tried again after a failed transaction is counted once); the services count their own
work (deliveries, transactions, dead letters) as they do it. Gauges that are cheap to read but not
worth updating on every change (timers pending, queue depths, consumer lag) are read when the page
is asked for, through :func:`on_scrape`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import prometheus_client
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Info, generate_latest

from stepstream import __version__

log = logging.getLogger(__name__)

# STEPSTREAM_METRICS=off: nothing is counted (the page keeps the process' own metrics and the build):
# for a deployment that does not scrape, and to measure what counting costs (bench/README.md).
ENABLED = os.environ.get("STEPSTREAM_METRICS", "on").strip().lower() != "off"


class _Off:
    """A metric that counts nothing, in place of each of the engine's when they are off."""

    def labels(self, *_: object, **__: object) -> _Off:
        return self

    def inc(self, *_: object) -> None: ...
    def dec(self, *_: object) -> None: ...
    def set(self, *_: object) -> None: ...
    def observe(self, *_: object) -> None: ...
    def remove(self, *_: object) -> None: ...


def _metric(kind: Any) -> Any:
    return kind if ENABLED else lambda *_, **__: _Off()


Counter = _metric(prometheus_client.Counter)
Gauge = _metric(prometheus_client.Gauge)
Histogram = _metric(prometheus_client.Histogram)

# From a fast step to a week-long sleep: the buckets a run's or a step's duration falls in.
DURATION_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    *(300, 900, 3600, 21600, 86400, 604800),  # minutes to a week
)
# What the engine itself spends (a transaction, an HTTP request): milliseconds to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

BUILD = Info("stepstream_build", "The running Stepstream's version")
BUILD.info({"version": __version__})

# -- runs and steps (the projector, from the events it committed) --------------------------------

RUNS_STARTED = Counter("stepstream_runs_started_total", "Runs started", ["workflow"])
RUNS_ENDED = Counter(
    "stepstream_runs_ended_total", "Runs that ended, by how: completed, failed or cancelled", ["workflow", "status"]
)
RUN_DURATION = Histogram(
    "stepstream_run_duration_seconds",
    "From a run's start to its end",
    ["workflow", "status"],
    buckets=DURATION_BUCKETS,
)
STEPS_COMPLETED = Counter("stepstream_steps_completed_total", "Steps recorded as completed", ["workflow", "kind"])
STEP_DURATION = Histogram(
    "stepstream_step_duration_seconds",
    "From the run's previous event to a step's completion: a step's time, queueing included, for "
    "steps taken one after another (parallel branches: since the latest of them started or ended)",
    ["workflow", "kind"],
    buckets=DURATION_BUCKETS,
)
STEP_FAILURES = Counter("stepstream_step_failures_total", "Failed attempts of steps and deliveries", ["workflow"])
STEP_RETRIES = Counter(
    "stepstream_step_retries_total", "Failed attempts that will be tried again (deliveries and calls)", ["workflow"]
)
DELIVERIES_SCHEDULED = Counter(
    "stepstream_deliveries_scheduled_total", "Deliveries of a run to its endpoint, retries included", ["workflow"]
)
DEAD_LETTER_RUNS = Counter(
    "stepstream_runs_dead_lettered_total", "Runs that failed into the dead-letter list", ["workflow"]
)

# -- the executor's requests ---------------------------------------------------------------------

IN_FLIGHT = Gauge("stepstream_executor_in_flight", "Deliveries and calls the executor is making now", ["kind"])
REQUESTS = Counter(
    "stepstream_executor_requests_total",
    "The executor's HTTP requests by kind (delivery: to a workflow's endpoint; call: a ctx.call step's "
    "attempt) and outcome (2xx, 3xx, 4xx, 5xx, or error: no answer)",
    ["kind", "outcome"],
)
REQUEST_DURATION = Histogram(
    "stepstream_executor_request_duration_seconds",
    "The executor's HTTP requests, from sending to the answer's end",
    ["kind"],
    buckets=LATENCY_BUCKETS,
)

# -- the scheduler (read on scrape) --------------------------------------------------------------

TIMERS_PENDING = Gauge(
    "stepstream_timers_pending", "Requests the scheduler holds until they are due (counted at most once a minute)"
)
TIMER_LATENESS = Histogram(
    "stepstream_timer_lateness_seconds",
    "How long after its due time the scheduler let a timer or a delayed request go (one already due "
    "when it reached the scheduler counts too: a scheduler behind its input makes them late)",
    buckets=LATENCY_BUCKETS,
)
FLOW_QUEUED = Gauge("stepstream_flow_queued", "Requests queued under flow-control keys (all keys)")
FLOW_IN_FLIGHT = Gauge("stepstream_flow_in_flight", "Requests let through under flow-control keys and not settled")
FLOW_KEY_QUEUED = Gauge(
    "stepstream_flow_key_queued",
    "Requests queued under a flow-control key: the keys in STEPSTREAM_METRICS_FLOW_KEYS and the top ones",
    ["key"],
)
FLOW_KEY_IN_FLIGHT = Gauge(
    "stepstream_flow_key_in_flight", "Requests in flight under a flow-control key (the keys shown)", ["key"]
)
WAITERS = Gauge(
    "stepstream_waiters", "Event ids that runs wait on, in the projector's partitions (counted at most once a minute)"
)

# -- every consumer ------------------------------------------------------------------------------

TRANSACTION_DURATION = Histogram(
    "stepstream_transaction_duration_seconds",
    "A batch's Kafka transaction, from its first send to its commit",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
TRANSACTIONS_FAILED = Counter(
    "stepstream_transactions_failed_total", "Kafka transactions that failed (the batch is tried again)", ["service"]
)
DEAD_LETTERED = Counter(
    "stepstream_dead_lettered_records_total",
    "Input records set aside on deadletter, by the topic they came from and why: refused (bad input), "
    "too_large, or error (an unexpected failure)",
    ["service", "topic", "reason"],
)
CONSUMER_LAG = Gauge(
    "stepstream_consumer_lag_records",
    "Records of a partition the service has not fetched yet (its group's share: the partitions it owns)",
    ["service", "topic", "partition"],
)
RECORDS_CONSUMED = Counter(
    "stepstream_records_consumed_total", "Input records a service handled, by topic", ["service", "topic"]
)

# -- the api -------------------------------------------------------------------------------------

API_REQUESTS = Counter(
    "stepstream_api_requests_total", "Requests to the api by route and status class", ["method", "route", "status"]
)
API_REQUEST_DURATION = Histogram(
    "stepstream_api_request_duration_seconds", "Requests to the api", ["method", "route"], buckets=LATENCY_BUCKETS
)
DEAD_LETTER_LIST = Gauge("stepstream_dead_letter_runs", "Runs in the dead-letter list, in the query store")


def reason_class(reason: str) -> str:
    """A dead letter's reason as a label value, one of three (the reason itself is in the dead letter)."""
    if "STEPSTREAM_MAX_RECORD_BYTES" in reason or "larger than" in reason:
        return "too_large"
    if " failed on this record" in reason:
        return "error"
    return "refused"


def status_class(status: int) -> str:
    """An HTTP status as 2xx … 5xx; 0 (no answer) as error."""
    return f"{status // 100}xx" if 100 <= status < 600 else "error"


_before_scrape: list[Callable[[], Awaitable[None] | None]] = []


def on_scrape(refresh: Callable[[], Awaitable[None] | None], *, every_s: float = 0.0) -> Callable[[], None]:
    """Call ``refresh`` (sync or async) before each page is made, to set gauges read from state, or at
    most once per ``every_s`` seconds (a count that reads a file, on the service's loop); returns what
    removes it (a service that stops)."""
    if every_s > 0:
        refresh = _at_most_every(every_s, refresh)
    _before_scrape.append(refresh)
    return lambda: _before_scrape.remove(refresh) if refresh in _before_scrape else None


def _at_most_every(
    seconds: float, refresh: Callable[[], Awaitable[None] | None]
) -> Callable[[], Awaitable[None] | None]:
    last = -seconds

    def throttled() -> Awaitable[None] | None:
        nonlocal last
        if time.monotonic() - last < seconds:
            return None
        last = time.monotonic()
        return refresh()

    return throttled


async def page() -> tuple[bytes, str]:
    """The metrics page in Prometheus' text format, and its content type. A refresh that fails is
    logged and leaves its gauges as they were: the rest of the page is still worth having."""
    for refresh in _before_scrape.copy():  # one may remove itself
        try:
            pending = refresh()
            if pending is not None:
                await pending
        except Exception:
            log.exception("a metrics refresh failed")
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
