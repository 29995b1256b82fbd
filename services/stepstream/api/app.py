"""The api: trigger, notify and cancel runs, act on the dead-letter list, and read runs, their steps and
histories, and flow-control keys. Stateless: it writes ``triggers`` (through a :class:`Publisher`) and
reads the query store the indexer keeps, so what it reads may lag what it wrote by the indexer's delay.

This module assembles the app: its lifespan (the publisher and the query store), the middleware, the
error handlers, what the routes share (the store, ``publish``, a known run, ``parse``), and the pages
outside ``/v1/`` (health, metrics, docs, the dashboard). The ``/v1/`` routes are attached by group, each
by its module's ``add_…_routes``: :mod:`~stepstream.api.runs` (trigger, read, history),
:mod:`~stepstream.api.points` (a run's state), :mod:`~stepstream.api.control` (cancel, the dead-letter
list), :mod:`~stepstream.api.events` (notify, waiters) and :mod:`~stepstream.api.flow` (flow control).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepstream import metrics
from stepstream.api.auth import TokenAuth
from stepstream.api.bodies import body_parser, describe
from stepstream.api.changes import RunChanges
from stepstream.api.control import add_control_routes
from stepstream.api.errors import ApiError
from stepstream.api.events import add_event_routes
from stepstream.api.flow import add_flow_routes
from stepstream.api.inputs import shown
from stepstream.api.openapi import openapi_of
from stepstream.api.points import add_state_routes
from stepstream.api.publisher import KafkaPublisher, Publisher, TriggersRecord
from stepstream.api.runs import add_run_routes
from stepstream.clock import Clock, SystemClock
from stepstream.config import ApiSettings
from stepstream.store import QueryStore, RunRow, open_query_store

log = logging.getLogger(__name__)

# An error's message, at most: its sentence names the bound and quotes the value, which need not be whole.
MAX_MESSAGE_LENGTH = 1_000


def _error(status: int, error: str, message: str, **more: Any) -> JSONResponse:
    if len(message) > MAX_MESSAGE_LENGTH:  # a value quoted whole, such as a number of 4,000 digits
        message = f"{message[:MAX_MESSAGE_LENGTH]}… ({len(message)} characters)"
    return JSONResponse({"error": error, "message": message, **more}, status_code=status)


def create_app(
    settings: ApiSettings,
    *,
    store: QueryStore | None = None,
    publisher: Publisher | None = None,
    clock: Clock | None = None,
    readiness: Callable[[], str | None] | None = None,
    changes: RunChanges | None = None,
) -> FastAPI:
    """The api. A ``store`` or ``publisher`` passed in is the caller's to close; the app opens its own
    (the store at ``settings.database``, a Kafka publisher) otherwise, when it starts. ``readiness``
    says why the api is not ready yet (its query store catching up), or None once it is. ``changes``
    is where the indexer of the store announces the runs it changed (the app makes one otherwise; then
    nothing announces, and a wait lasts until its deadline)."""
    clock = clock or SystemClock()
    run_changes = changes if changes is not None else RunChanges()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own_publisher = KafkaPublisher(settings.kafka) if publisher is None else None
        if own_publisher is not None:
            await own_publisher.start()
        state["publisher"] = publisher or own_publisher
        state["store"] = store or open_query_store(settings.database)
        stop_counting = metrics.on_scrape(lambda: metrics.DEAD_LETTER_LIST.set(state["store"].dead_letter_count()))
        try:
            yield
        finally:
            stop_counting()
            run_changes.close()
            if own_publisher is not None:
                await own_publisher.stop()
            if store is None:
                state["store"].close()

    # /docs from Swagger UI's files vendored here (api/swagger/), not FastAPI's CDN links: the api's
    # pages work with no internet access, as the dashboard does. No ReDoc page: it would need a CDN.
    app = FastAPI(title="Stepstream", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    if settings.tokens is not None:
        app.add_middleware(TokenAuth, tokens=settings.tokens)  # inside the others: refusals are counted
    app.add_middleware(InternalErrors)
    app.add_middleware(RequestMetrics, router=app.router)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.error, error.message, **error.more)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", describe(error.errors()))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = f"Expected one of the api's routes (see docs/api.md), but {request.method} {request.url.path}"
        detail = "does not exist" if error.status_code == 404 else str(error.detail).lower()
        return _error(error.status_code, codes.get(error.status_code, "http_error"), f"{message} {detail}")

    def query_store() -> QueryStore:
        result: QueryStore = state["store"]
        return result

    async def publish(*records: TriggersRecord) -> None:
        sink: Publisher = state["publisher"]
        await sink.publish(*records)

    def known_run(run_id: str, run: RunRow | None = None) -> RunRow:
        run = run or query_store().get_run(run_id)
        if run is None:
            raise ApiError(404, "unknown_run", f"Expected a known run id, but {shown(run_id)} is not known (yet)")
        return run

    parse = body_parser(settings.max_payload_bytes)
    add_run_routes(
        app,
        settings=settings,
        clock=clock,
        run_changes=run_changes,
        query_store=query_store,
        publish=publish,
        known_run=known_run,
        parse=parse,
    )
    add_state_routes(app, query_store=query_store, known_run=known_run)
    add_control_routes(app, clock=clock, query_store=query_store, publish=publish, known_run=known_run, parse=parse)
    add_event_routes(app, settings=settings, clock=clock, query_store=query_store, publish=publish, parse=parse)
    add_flow_routes(app, query_store=query_store)

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    # The dashboard: static files of this package, which read the endpoints above (docs/decisions/0013).
    app.mount("/ui", StaticFiles(directory=Path(__file__).parent / "ui", html=True), name="ui")
    app.mount("/docs/assets", StaticFiles(directory=Path(__file__).parent / "swagger"), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Stepstream api",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/metrics", include_in_schema=False)
    async def metrics_page() -> Response:
        body, content_type = await metrics.page()
        return Response(body, media_type=content_type)

    @app.get("/readyz", response_model=None)
    async def ready() -> dict[str, str] | JSONResponse:
        problem = readiness() if readiness is not None else None
        if problem is not None:
            return JSONResponse({"status": "not ready", "reason": problem}, status_code=503)
        return {"status": "ready"}

    # Every request body in /openapi.json (api/openapi.py): the routes read their bodies themselves.
    app.openapi = openapi_of(app, tokens=settings.tokens is not None)  # type: ignore[method-assign]
    return app


class RequestMetrics:
    """Counts each request by method, route and status class, and times it (stepstream.metrics). The
    route is the path template a request matched (``/v1/runs/{run_id}``), never the path itself,
    so that run ids do not become label values; a path no route matched counts as ``unmatched``."""

    def __init__(self, app: ASGIApp, router: Any) -> None:
        self.app = app
        self.router = router
        self._paths: dict[Any, str] = {}  # endpoint -> its route's path, for routes that do not say

    def _route(self, scope: Scope) -> str:
        route = scope.get("route")  # FastAPI's routes put themselves here; Starlette's own only the endpoint
        if route is not None:
            return str(route.path)
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return "unmatched"
        if endpoint not in self._paths:
            paths = [route.path for route in self.router.routes if getattr(route, "endpoint", None) is endpoint]
            self._paths[endpoint] = paths[0] if paths else "unmatched"
        return self._paths[endpoint]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # if the app raises before it answers
        began = time.perf_counter()

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, method = self._route(scope), scope["method"]
            metrics.API_REQUESTS.labels(method, route, metrics.status_class(status)).inc()
            metrics.API_REQUEST_DURATION.labels(method, route).observe(time.perf_counter() - began)


class InternalErrors:
    """The last line of defence: an exception no route turned into an answer is logged with its traceback
    and answered 500 with a reference to that log line, never with the exception's text, which may
    hold what the client must not see (a query, a path, another run's data).

    An ASGI middleware rather than an ``exception_handler(Exception)``: Starlette re-raises after such a
    handler, so the server would log the traceback a second time, without the reference.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            reference = uuid.uuid4().hex[:12]
            log.exception("Unexpected error %s answering %s %s", reference, scope["method"], scope["path"])
            if started:  # too late for another answer: the server ends the response
                raise
            message = f"Expected to answer, but the api failed unexpectedly (error {reference}): see the api's log"
            await JSONResponse({"error": "internal_error", "message": message}, status_code=500)(scope, receive, send)
