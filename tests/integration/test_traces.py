"""Traces of a run through the real stack (tracing.py): the api, projector and executor export to an
in-test OTLP receiver, and so does the workflow app (its own tracer provider, tests/apps/traced.py).
One run is one trace, found from its run id; parents cross Kafka (record headers) and HTTP (the
delivery's traceparent); a span per step in the app, the app's own span inside its step; and the
run's root span once it ends."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stepstream.tracing import run_ids
from tests.otlp import Receiver, Span, otlp_receiver
from tests.stack import Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

APPS = Path(__file__).resolve().parents[1] / "apps"
CALLER = "4bf92f3577b34da6a3ce929d0e0e4736"  # the trace of whoever called the api


@pytest.fixture(scope="module")
def traced(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, int, Receiver]]:
    with otlp_receiver() as (endpoint, receiver):
        stack = Stack(
            kafka_bootstrap,
            tmp_path_factory.mktemp("traces"),
            OTEL_EXPORTER_OTLP_ENDPOINT=endpoint,
            OTEL_BSP_SCHEDULE_DELAY="100",  # export spans every 100 ms, not every 5 s
            STEPSTREAM_STEP_BUDGET_MS="0",  # a delivery per step
        )
        stack.create_topics()
        stack.start("projector", "scheduler", "executor", "api")
        port = stack.start_app("traced", APPS, "traced:app")
        yield stack, port, receiver
        stack.stop()


def spans_of(receiver: Receiver, trace_id: str, *, until: set[str], timeout: float = 30) -> list[Span]:
    deadline = time.monotonic() + timeout
    while True:
        spans = [span for span in receiver.snapshot() if span.trace_id == trace_id]
        if until <= {span.name for span in spans} or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def test_a_run_is_one_trace_from_its_trigger_through_kafka_and_http_to_its_steps(
    traced: tuple[Stack, int, Receiver],
) -> None:
    stack, port, receiver = traced
    response = stack.api.post(
        "/v1/runs",
        json={"workflow": "traced", "url": f"http://127.0.0.1:{port}/traced", "payload": {}},
        headers={"traceparent": f"00-{CALLER}-00f067aa0ba902b7-01"},
    )
    assert response.status_code == 202, response.text
    run_id = response.json()["run_id"]
    stack.wait_for_status(run_id, "completed")

    trace_number, root_number = run_ids(run_id)
    trace_id, root_id = format(trace_number, "032x"), format(root_number, "016x")
    expected = {"run traced", "trigger traced", "TriggerRun traced", "deliver traced", "ReportDelivery traced"}
    # (each service exports on its own schedule: the root may come before the last delivery's span)
    spans = spans_of(receiver, trace_id, until=expected | {"step reserve", "step charge", "charge the card"})
    named: dict[str, list[Span]] = {}
    for span in spans:
        named.setdefault(span.name, []).append(span)
    by_id = {span.span_id: span for span in spans}

    # one trace, from the run id: its root is the run, from the projector, with the id the run id gives
    [root] = named["run traced"]
    assert (root.span_id, root.parent_id, root.service) == (root_id, "", "stepstream-projector")
    assert root.attributes["stepstream.status"] == "completed"
    # the api's trigger, under the run, linked to the caller's trace (not part of it)
    [trigger] = named["trigger traced"]
    assert (trigger.parent_id, trigger.service, trigger.links) == (root_id, "stepstream-api", (CALLER,))
    # across Kafka: the projector's span of the trigger is the api's span's child
    [started] = named["TriggerRun traced"]
    assert (started.parent_id, started.service) == (trigger.span_id, "stepstream-projector")
    # each delivery: the executor's span, child of the projector's span that made it
    deliveries = named["deliver traced"]  # one or more: the executor may go on with a run's next step
    assert deliveries[0].parent_id == started.span_id  # the first, made with the trigger
    for delivery in deliveries:
        assert delivery.service == "stepstream-executor"
        assert by_id[delivery.parent_id].service == "stepstream-projector"
    # and each report, the projector's span under the executor's
    reports = named["ReportDelivery traced"]
    assert {by_id[report.parent_id].name for report in reports} == {"deliver traced"}
    # across HTTP: the app's span per step, under a delivery, and the app's own span inside its step
    for step in ("step reserve", "step charge"):
        [span] = named[step]
        assert (span.service, by_id[span.parent_id].name) == ("traced-app", "deliver traced")
    [inside] = named["charge the card"]
    assert inside.parent_id == named["step charge"][0].span_id
    # and every span of the run leads up to its root
    for span in spans:
        hops = 0
        while span.parent_id:
            span, hops = by_id[span.parent_id], hops + 1
            assert hops < 20
        assert span.span_id == root_id
