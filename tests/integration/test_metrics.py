"""The services' Prometheus metrics against the real stack (docs/operations.md): after runs that
complete, fail and are retried, each service's ``/metrics`` page, parsed with prometheus-client's
own parser, counts exactly what happened; consumer lag comes back to 0; and a real Prometheus server
scrapes all four and sees the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_until
from tests.integration.test_failures import APPS, trigger, url
from tests.prometheus import Prometheus, prometheus_server
from tests.stack import SERVICES, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path_factory.mktemp("metrics"), STEPSTREAM_DEFAULT_RETRY_BASE_MS="100")
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api")
    stack.failures_port = stack.start_app("failures", APPS, "failures:app")  # type: ignore[attr-defined]
    yield stack
    stack.stop()


def metrics_url(stack: Stack, service: str) -> str:
    port = stack.api_port if service == "api" else stack.health_ports[service]
    return f"http://127.0.0.1:{port}/metrics"


def scrape(stack: Stack, service: str) -> Samples:
    """Every sample of the service's page, by name and labels, parsed as Prometheus would."""
    response = httpx.get(metrics_url(stack, service), timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")  # the text format
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def lags(samples: Samples, service: str) -> dict[str, float]:
    return {
        f"{dict(labels)['topic']}[{dict(labels)['partition']}]": sample
        for (name, labels), sample in samples.items()
        if name == "stepstream_consumer_lag_records" and dict(labels)["service"] == service
    }


@pytest.fixture(scope="module")
def runs(stack: Stack) -> dict[str, list[str]]:
    """Three runs that complete, two that complete after one failed delivery each, one that fails, and
    one that sleeps (a timer the scheduler holds)."""
    ids: dict[str, list[str]] = {
        "ok": [trigger(stack, url(stack, "ok", 0, "steady"), "steady") for _ in range(3)],
        "retried": [trigger(stack, url(stack, "http500", 1, "steady"), "steady", retries=3) for _ in range(2)],
        "failed": [trigger(stack, url(stack, "ok", 0, "refuses"), "refuses")],
        "slept": [trigger(stack, url(stack, "ok", 0, "big"), "big", payload={"steps": 1, "size": 1, "sleep_ms": 2000})],
    }
    for run_id in ids["ok"] + ids["retried"] + ids["slept"]:
        stack.wait_for_status(run_id, "completed")
    stack.wait_for_status(ids["failed"][0], "failed")
    return ids


def test_the_projector_counts_runs_steps_failures_and_retries_by_workflow(stack: Stack, runs: Any) -> None:
    samples = scrape(stack, "projector")
    expected = {
        ("stepstream_runs_started_total", (("workflow", "steady"),)): 5,
        ("stepstream_runs_started_total", (("workflow", "refuses"),)): 1,
        ("stepstream_runs_ended_total", (("status", "completed"), ("workflow", "steady"))): 5,
        ("stepstream_runs_ended_total", (("status", "failed"), ("workflow", "refuses"))): 1,
        ("stepstream_run_duration_seconds_count", (("status", "completed"), ("workflow", "steady"))): 5,
        ("stepstream_steps_completed_total", (("kind", "run"), ("workflow", "steady"))): 10,  # two steps each
        ("stepstream_steps_completed_total", (("kind", "run"), ("workflow", "refuses"))): 1,  # "prepare"
        ("stepstream_step_duration_seconds_count", (("kind", "run"), ("workflow", "steady"))): 10,
        ("stepstream_step_failures_total", (("workflow", "steady"),)): 2,  # the two 500s
        ("stepstream_step_retries_total", (("workflow", "steady"),)): 2,
        ("stepstream_step_failures_total", (("workflow", "refuses"),)): 1,  # NonRetryableError: no retry
        ("stepstream_runs_dead_lettered_total", (("workflow", "refuses"),)): 1,
    }
    assert {key: samples.get(key) for key in expected} == expected
    assert value(samples, "stepstream_step_retries_total", workflow="refuses") is None
    assert value(samples, "stepstream_build_info", version="0.1.0") == 1
    # a run's duration is its own: the five runs took well under a minute
    bucket = {"workflow": "steady", "status": "completed", "le": "60.0"}
    assert value(samples, "stepstream_run_duration_seconds_bucket", **bucket) == 5
    assert (value(samples, "stepstream_transaction_duration_seconds_count", service="projector") or 0) > 0


def test_the_executor_counts_its_requests_by_outcome(stack: Stack, runs: Any) -> None:
    samples = scrape(stack, "executor")
    assert value(samples, "stepstream_executor_requests_total", kind="delivery", outcome="5xx") == 2
    # at least one answered request per run (a run's steps may go on in one delivery: executor/chain.py)
    assert (value(samples, "stepstream_executor_requests_total", kind="delivery", outcome="2xx") or 0) >= 7
    assert value(samples, "stepstream_executor_in_flight", kind="delivery") == 0
    assert value(samples, "stepstream_executor_request_duration_seconds_count", kind="delivery") == sum(
        sample
        for (name, labels), sample in samples.items()
        if name == "stepstream_executor_requests_total" and ("kind", "delivery") in labels
    )


def test_the_scheduler_counts_what_it_held_and_the_api_its_requests_and_dead_letter_list(
    stack: Stack, runs: Any
) -> None:
    scheduler = scrape(stack, "scheduler")
    assert (value(scheduler, "stepstream_timer_lateness_seconds_count") or 0) >= 1  # the sleep, at least
    assert value(scheduler, "stepstream_timers_pending") == 0
    assert value(scheduler, "stepstream_flow_queued") == 0

    def api_counts() -> Samples | None:
        samples = scrape(stack, "api")
        return samples if value(samples, "stepstream_dead_letter_runs") == 1 else None

    api = wait_until(api_counts, timeout=30)
    assert api is not None
    assert value(api, "stepstream_api_requests_total", method="POST", route="/v1/runs", status="2xx") == 7
    # a run id is never a label: the route is the template
    assert (value(api, "stepstream_api_requests_total", method="GET", route="/v1/runs/{run_id}", status="2xx") or 0) > 0


def test_consumer_lag_is_shown_per_partition_and_comes_back_to_zero(stack: Stack, runs: Any) -> None:
    def settled() -> dict[str, dict[str, float]] | None:
        seen = {service: lags(scrape(stack, service), service) for service in SERVICES if service != "api"}
        return seen if all(seen.values()) and all(v == 0 for lag in seen.values() for v in lag.values()) else None

    seen = wait_until(settled, timeout=30)
    assert seen is not None
    assert set(seen["projector"]) >= {f"{stack.prefix}commands[{p}]" for p in range(3)}
    assert set(seen["scheduler"]) == {f"{stack.prefix}schedule[{p}]" for p in range(3)}
    assert set(seen["executor"]) == {f"{stack.prefix}deliveries[{p}]" for p in range(3)}


def test_a_real_prometheus_scrapes_every_service(stack: Stack, runs: Any, tmp_path: Path) -> None:
    targets = {service: metrics_url(stack, service).split("/")[2] for service in SERVICES}
    with prometheus_server(targets, tmp_path / "prometheus") as prometheus:

        def scraped(server: Prometheus = prometheus) -> dict[str, float] | None:
            up = {result["metric"]["job"]: float(result["value"][1]) for result in server.query("up")}
            return up if len(up) == len(SERVICES) and all(v == 1 for v in up.values()) else None

        assert wait_until(scraped, timeout=30) == dict.fromkeys(SERVICES, 1.0)
        assert prometheus.value('sum(stepstream_runs_started_total{job="projector"})') == 7
        assert prometheus.value('stepstream_runs_ended_total{workflow="refuses",status="failed"}') == 1
        assert prometheus.value('stepstream_executor_requests_total{kind="delivery",outcome="5xx"}') == 2
