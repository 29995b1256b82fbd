"""Traces (OpenTelemetry): one trace per run, from its trigger through each delivery and step to its end.

Off unless OpenTelemetry's own variables ask for it: ``OTEL_TRACES_EXPORTER`` (``otlp``, ``console``)
or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``; OTLP
over HTTP, the exporter reading the rest of its ``OTEL_EXPORTER_OTLP_*`` settings itself);
``OTEL_SDK_DISABLED=true`` keeps it off. ``OTEL_SERVICE_NAME`` overrides the service's name
(``stepstream-projector`` …).

**One trace per run, found from the run id.** A run lives for days, across restarts and services;
keeping a trace context in its state would mean a field in every snapshot and event. Instead the
trace id, and the id of the run's root span, are derived from the run id (SHA-256), so any service
that handles the run finds its trace with nothing stored. The root span, ``run <workflow>``, is
written by the projector when the run ends, with the run's start as its start; every other span of
the run is in the trace from the moment it ends, whether the root is there yet or not.

**Parents across Kafka and HTTP.** W3C trace context (``traceparent``) travels in the records'
headers: the api's ``trigger`` span is the parent of the projector's span for the trigger, the
projector's span of a command is the parent of the executor's ``deliver`` span for the deliveries it
made, and the executor's span is the parent of the projector's span for its report. The executor sends
``traceparent`` with each delivery, and the SDK (when the app has OpenTelemetry) makes a span per step
under it, so the app's own spans inside a step join the run's trace. A record without a context of
the run's trace (written by an older version, or delayed by the scheduler, which keeps only values)
gets the run's root as its parent. A trigger whose request carried a trace of the caller's is linked
to it, not made its child: the run's trace is the run's.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

log = logging.getLogger(__name__)

Headers = Sequence[tuple[str, bytes]]  # a Kafka record's headers
SERVER, CLIENT = SpanKind.SERVER, SpanKind.CLIENT  # the kinds the services' spans take, besides internal

_tracer: trace.Tracer | None = None  # None: tracing is off
_provider: Any = None
# The ids the next span must have (the run's root, written at its end); None: random ones.
_forced_ids: ContextVar[tuple[int, int] | None] = ContextVar("stepstream_forced_ids", default=None)


def enabled() -> bool:
    return _tracer is not None


def configure(service: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Start tracing for ``service`` if the environment asks for it (see the module); returns whether it does."""
    global _tracer, _provider
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter_name = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if exporter_name == "none" or not (exporter_name or endpoint):
        return False
    if exporter_name not in ("", "otlp", "console"):
        raise ValueError(f"Expected OTEL_TRACES_EXPORTER to be otlp, console or none, but got {exporter_name!r}")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class RunIds(RandomIdGenerator):
        """Random ids, but for the run's root span, whose ids come from its run id."""

        def generate_trace_id(self) -> int:
            forced = _forced_ids.get()
            return forced[0] if forced else super().generate_trace_id()

        def generate_span_id(self) -> int:
            forced = _forced_ids.get()
            return forced[1] if forced else super().generate_span_id()

    exporter: SpanExporter
    if exporter_name == "console":
        exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    resource = Resource.create({"service.name": f"stepstream-{service}"})  # OTEL_SERVICE_NAME wins
    _provider = TracerProvider(resource=resource, id_generator=RunIds())
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    _tracer = _provider.get_tracer("stepstream")
    log.info("tracing on: spans of %s go to %s", service, endpoint or exporter_name)
    return True


def shutdown() -> None:
    """Send the spans still buffered (at the process's end)."""
    global _tracer, _provider
    if _provider is not None:
        _provider.shutdown()
    _tracer, _provider = None, None


def run_ids(run_id: str) -> tuple[int, int]:
    """The trace id of ``run_id``'s trace and the span id of its root span."""
    digest = hashlib.sha256(f"stepstream-run:{run_id}".encode()).digest()
    return int.from_bytes(digest[:16], "big") or 1, int.from_bytes(digest[16:24], "big") or 1


def _root(run_id: str) -> otel_context.Context:
    trace_id, span_id = run_ids(run_id)
    root = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(root), otel_context.Context())


def _carried(headers: Headers | Mapping[str, str] | None) -> otel_context.Context | None:
    if not headers:
        return None
    if isinstance(headers, Mapping):
        return extract(headers)
    return extract({name.lower(): bytes(value).decode("latin-1") for name, value in headers if value is not None})


def parent(run_id: str, headers: Headers | None = None) -> otel_context.Context:
    """The parent of a span about ``run_id``: the context its record carried if it is of the run's
    trace, else the run's root."""
    carried = _carried(headers)
    if carried is not None:
        span = trace.get_current_span(carried).get_span_context()
        if span.is_valid and span.trace_id == run_ids(run_id)[0]:
            return carried
    return _root(run_id)


@contextlib.contextmanager
def span(
    name: str,
    run_id: str,
    *,
    headers: Headers | None = None,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Mapping[str, str | int] | None = None,
    link: Mapping[str, str] | None = None,
) -> Iterator[trace.Span | None]:
    """A span of ``run_id``'s trace, current inside the block (so records and requests made in it carry
    it: :func:`kafka_headers`, :func:`http_headers`); None, and nothing else, while tracing is off.
    ``link``: HTTP headers of a request whose own trace the span links to (a caller's)."""
    if _tracer is None:
        yield None
        return
    links = []
    caller = _carried(link)
    if caller is not None:
        context = trace.get_current_span(caller).get_span_context()
        if context.is_valid:
            links.append(Link(context))
    with _tracer.start_as_current_span(
        name,
        context=parent(run_id, headers),
        kind=kind,
        attributes={"stepstream.run_id": run_id, **(attributes or {})},
        links=links,
    ) as current:
        yield current


def http_headers() -> dict[str, str]:
    """The current span's context as HTTP headers (``traceparent``), for a delivery's request (none
    while tracing is off or outside a span)."""
    if _tracer is None:
        return {}
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def kafka_headers() -> list[tuple[str, bytes]]:
    """The same as Kafka record headers."""
    return [(name, value.encode()) for name, value in http_headers().items()]


def end_of_run(run_id: str, workflow: str, status: str, started_ms: int, ended_ms: int) -> None:
    """Write the run's root span, ``run <workflow>``, from its start to its end."""
    if _tracer is None:
        return
    token = _forced_ids.set(run_ids(run_id))
    try:
        root = _tracer.start_span(
            f"run {workflow}",
            context=otel_context.Context(),  # no parent: the root
            start_time=started_ms * 1_000_000,
            attributes={"stepstream.run_id": run_id, "stepstream.workflow": workflow, "stepstream.status": status},
        )
    finally:
        _forced_ids.reset(token)
    if status == "failed":
        root.set_status(Status(StatusCode.ERROR, "the run failed"))
    root.end(end_time=max(started_ms, ended_ms) * 1_000_000)
