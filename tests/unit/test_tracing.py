"""Tracing's pure parts (tracing.py): off unless OpenTelemetry's variables ask for it, a run's trace
found from its run id alone, and the parent a span takes from a record's headers."""

from __future__ import annotations

import pytest
from opentelemetry import trace

from stepstream import tracing


def test_tracing_is_off_unless_an_exporter_or_endpoint_is_set() -> None:
    assert tracing.configure("projector", {}) is False
    assert tracing.configure("projector", {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "x"}) is False
    assert tracing.configure("projector", {"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}) is False
    assert not tracing.enabled()
    assert (tracing.kafka_headers(), tracing.http_headers()) == ([], {})
    with tracing.span("deliver w", "run-1") as span:
        assert span is None


def test_an_unknown_exporter_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Expected OTEL_TRACES_EXPORTER to be otlp, console or none, but got 'zipkin'"):
        tracing.configure("api", {"OTEL_TRACES_EXPORTER": "zipkin"})


def test_a_run_s_trace_and_root_come_from_its_id_alone() -> None:
    first, again, other = tracing.run_ids("run-1"), tracing.run_ids("run-1"), tracing.run_ids("run-2")

    assert first == again != other
    trace_id, span_id = first
    assert 0 < trace_id < 2**128
    assert 0 < span_id < 2**64


def parent_of(run_id: str, traceparent: str | None) -> tuple[int, int]:
    headers = [] if traceparent is None else [("traceparent", traceparent.encode())]
    context = trace.get_current_span(tracing.parent(run_id, headers)).get_span_context()
    return context.trace_id, context.span_id


def test_a_span_s_parent_is_what_its_record_carried_if_it_is_of_the_run_s_trace_else_the_run_s_root() -> None:
    trace_id, root_id = tracing.run_ids("run-1")
    of_the_run = f"00-{trace_id:032x}-{0xABC:016x}-01"
    of_another = f"00-{'1' * 32}-{0xABC:016x}-01"

    assert parent_of("run-1", of_the_run) == (trace_id, 0xABC)
    assert parent_of("run-1", of_another) == (trace_id, root_id)  # a caller's trace: not the run's
    assert parent_of("run-1", None) == (trace_id, root_id)  # an older record, or one the scheduler held
    assert parent_of("run-1", "garbage") == (trace_id, root_id)
