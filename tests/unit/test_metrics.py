"""What the services count (stepstream.metrics), as pure logic: the projector's counts from a run's
committed events, the scheduler's policy for flow-key labels, and the label values that must stay
bounded. The pages themselves are scraped from the real stack in tests/integration/test_metrics.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY

from stepstream import metrics
from stepstream.core import Complete, Continue, Fail, FlowControl, FlowLedger, Queued, RunState
from stepstream.core.commands import CancelRun
from stepstream.projector.metrics import Applied, observe
from stepstream.scheduler.metrics import TOP_KEYS, flow_refresher
from tests.unit.test_query_store import BOOM, T0, Run


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counted(action: Callable[[], Any], *samples: tuple[str, dict[str, str]]) -> list[float]:
    """How much each sample grew while ``action`` ran (the registry is the process's, shared by tests)."""
    before = [sample(name, **labels) for name, labels in samples]
    action()
    return [sample(name, **labels) - was for (name, labels), was in zip(samples, before, strict=True)]


def commands(run: Run, *steps: Callable[[], list[Any]]) -> list[Applied]:
    """Each command a run took, as the projector hands it to observe: before, events, after."""
    applied: list[Applied] = []
    for step in steps:
        before: RunState | None = run.state
        events = step()
        applied.append((before, events, run.current))
    return applied


def test_a_run_is_counted_once_when_its_events_commit_with_its_duration_and_steps() -> None:
    run = Run("run-metrics-1", workflow="billing", now=T0)
    applied: list[Applied] = [(None, list(run.events), run.current)]  # the trigger
    applied += commands(
        run,
        lambda: run.report(Continue(), outputs=('"a"',), now=T0 + 2_000),
        lambda: run.report(Fail(error=BOOM, retryable=True), now=T0 + 3_000),  # a retry is scheduled
    )
    retry = run.current.in_flight[0]
    applied += commands(run, lambda: run.report(Complete(output='"done"'), outputs=('"b"',), now=T0 + 9_000))
    assert retry.attempt == 2

    grown = counted(
        lambda: observe(applied),
        ("stepstream_runs_started_total", {"workflow": "billing"}),
        ("stepstream_steps_completed_total", {"workflow": "billing", "kind": "run"}),
        ("stepstream_step_failures_total", {"workflow": "billing"}),
        ("stepstream_step_retries_total", {"workflow": "billing"}),
        ("stepstream_runs_ended_total", {"workflow": "billing", "status": "completed"}),
        ("stepstream_run_duration_seconds_sum", {"workflow": "billing", "status": "completed"}),
        ("stepstream_step_duration_seconds_sum", {"workflow": "billing", "kind": "run"}),
    )

    # one start, two steps, one failed attempt retried, one end after 9 s; the first step took the 2 s
    # since the run started, the second the 6 s since the failure
    assert grown == [1, 2, 1, 1, 1, 9.0, 2.0 + 6.0]


def test_a_cancelled_run_and_a_run_into_the_dead_letter_list_are_counted_by_how_they_ended() -> None:
    cancelled = Run("run-metrics-2", workflow="audit", now=T0)
    failed = Run("run-metrics-3", workflow="audit", now=T0)
    applied = commands(
        cancelled, lambda: cancelled.apply(CancelRun(run_id=cancelled.run_id, reason="t", now_ms=T0 + 500))
    )
    applied += commands(failed, lambda: failed.report(Fail(error=BOOM, retryable=False), now=T0 + 100))
    assert failed.current.dead_letter

    grown = counted(
        lambda: observe(applied),
        ("stepstream_runs_ended_total", {"workflow": "audit", "status": "cancelled"}),
        ("stepstream_runs_ended_total", {"workflow": "audit", "status": "failed"}),
        ("stepstream_runs_dead_lettered_total", {"workflow": "audit"}),
        ("stepstream_step_retries_total", {"workflow": "audit"}),
    )

    assert grown == [1, 1, 1, 0]


def queued(key: str, number: int) -> Queued:
    return Queued(
        request_id=f"{key}-{number}",
        flow=FlowControl(key=key, parallelism=1),
        partition=0,
        run_id=f"run-{key}-{number}",
        value=b"",
    )


def test_flow_keys_are_labels_only_for_the_longest_queues_and_the_named_ones() -> None:
    ledger = FlowLedger()
    # given twenty keys with queues of 1..20 (each lets one through: parallelism 1), and one named key
    for size in range(1, 21):
        for number in range(size + 1):
            ledger.queue(queued(f"key-{size:02}", number))
    ledger.release(T0)
    refresh = flow_refresher(ledger, named={"key-01"})

    refresh()
    shown = {
        labels["key"]
        for family in REGISTRY.collect()
        if family.name == "stepstream_flow_key_queued"
        for labels in (sample.labels for sample in family.samples)
    }

    assert shown == {f"key-{size:02}" for size in range(21 - TOP_KEYS, 21)} | {"key-01"}
    assert sample("stepstream_flow_key_queued", key="key-20") == 20
    assert sample("stepstream_flow_key_in_flight", key="key-20") == 1
    assert sample("stepstream_flow_queued") == sum(range(1, 21))
    assert sample("stepstream_flow_in_flight") == 20
    # and a key whose queue drained is no longer a label
    ledger.drop_partitions({0})
    refresh()
    assert sample("stepstream_flow_key_queued", key="key-20") == 0
    assert REGISTRY.get_sample_value("stepstream_flow_key_queued", {"key": "key-20"}) is None


def test_a_refresh_asked_to_wait_runs_at_most_once_per_interval_however_often_the_page_is_made(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [1_000.0]
    monkeypatch.setattr("stepstream.metrics.time", SimpleNamespace(monotonic=lambda: clock[0]))
    calls = {"throttled": 0, "every": 0}
    stops = [
        metrics.on_scrape(lambda: calls.__setitem__("throttled", calls["throttled"] + 1), every_s=60),
        metrics.on_scrape(lambda: calls.__setitem__("every", calls["every"] + 1)),
    ]
    try:
        for advance in (0, 30, 29, 1, 0.5):  # made at 0, 30, 59, 60 and 60.5 s
            clock[0] += advance
            asyncio.run(metrics.page())
    finally:
        for stop in stops:
            stop()

    assert calls == {"throttled": 2, "every": 5}  # at 0 s and at 60 s


def test_label_values_stay_bounded() -> None:
    assert [metrics.status_class(status) for status in (200, 302, 404, 503, 0, 999)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "error",
        "error",
    ]
    assert metrics.reason_class("Expected records of at most 1,000 bytes (STEPSTREAM_MAX_RECORD_BYTES), but") == (
        "too_large"
    )
    assert metrics.reason_class("the scheduler failed on this record: KeyError('x')") == "error"
    assert metrics.reason_class("Expected a TriggerRequest, but got bytes that are not Avro") == "refused"
