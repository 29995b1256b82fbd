"""The SDK's part of a run's trace, when the app has OpenTelemetry (``opentelemetry-api``).

The executor sends each delivery with a ``traceparent`` header of its span; the SDK makes that the
current context while it serves the delivery, and runs each ``run`` step inside a span of its own
(``step <name>``), so the spans the app makes inside a step join the run's trace under it. The app's
own tracer provider exports them (nothing is exported without one: OpenTelemetry's API alone makes
no spans). Without OpenTelemetry installed, all of this is skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.propagate import extract
except ImportError:  # the app has no OpenTelemetry: no spans
    trace = None  # type: ignore[assignment]

_TRACE_HEADERS = (b"traceparent", b"tracestate")


@contextlib.contextmanager
def delivery(headers: Iterable[tuple[bytes, bytes]]) -> Iterator[None]:
    """Serve a delivery inside the trace context its request carried (if any)."""
    if trace is None:
        yield
        return
    carrier = {
        bytes(name).decode("latin-1"): bytes(value).decode("latin-1")
        for name, value in headers
        if name in _TRACE_HEADERS
    }
    if not carrier:
        yield
        return
    token = otel_context.attach(extract(carrier))
    try:
        yield
    finally:
        otel_context.detach(token)


def step(name: str, index: int) -> contextlib.AbstractContextManager[Any]:
    """A span around a ``run`` step's function, current while it runs."""
    if trace is None:
        return contextlib.nullcontext()
    attributes: dict[str, str | int] = {"stepstream.step": name, "stepstream.step_index": index}
    return trace.get_tracer("stepstream.sdk").start_as_current_span(f"step {name}", attributes=attributes)
