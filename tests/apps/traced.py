"""A workflow app with OpenTelemetry, for the tracing test: its tracer provider exports to the OTLP
endpoint in OTEL_EXPORTER_OTLP_ENDPOINT, as an app of a user's would, and its ``traced`` workflow
runs two steps, the second making a span of the app's own inside its step."""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from stepstream.sdk import WorkflowContext, Workflows

provider = TracerProvider(resource=Resource.create({"service.name": "traced-app"}))
provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
trace.set_tracer_provider(provider)
tracer = trace.get_tracer("traced-app")

workflows = Workflows()


def charge() -> str:
    with tracer.start_as_current_span("charge the card"):  # the app's own span, inside the step
        return "charged"


@workflows.workflow("traced")
async def traced(ctx: WorkflowContext[Any]) -> str:
    await ctx.run("reserve", lambda: "reserved")
    return await ctx.run("charge", charge)


_workflows = workflows.asgi()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == "/healthz":  # for the tests' start-up wait
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    await _workflows(scope, receive, send)
