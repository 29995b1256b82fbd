"""The api: trigger, notify and cancel runs, act on the dead-letter list, and read runs, their steps and
histories, and flow-control keys. Stateless: it writes ``triggers`` (through a :class:`Publisher`) and
reads the query store the indexer keeps, so what it reads may lag what it wrote by the indexer's delay.

A request may wait for a run to end (``?wait=``) or follow its history as server-sent events: the
indexer tells :class:`RunChanges` which runs each batch changed, and only their waiters read the store
again (:mod:`stepstream.api.follow`).

Reads by key (a run, a flow-control key) run on the event loop: a lookup by primary key takes
microseconds, on a connection that does not wait for the indexer's writes. Reads that may return many
rows (lists, steps, histories, waiters) run in a worker thread, so a long one holds no other request up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

from fastapi import FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stepstream import metrics, tracing
from stepstream.api.auth import TokenAuth
from stepstream.api.changes import RunChanges
from stepstream.api.cursors import flow_cursor, parse_flow_cursor, parse_run_cursor, run_cursor
from stepstream.api.errors import ApiError, invalid
from stepstream.api.follow import ended, history_stream, known, wait_for_run
from stepstream.api.inputs import (
    CancelBody,
    CancelFilterBody,
    NotifyBody,
    RecoverBody,
    TriggerBody,
    check_delay_ms,
    check_event_id,
    parse_duration_ms,
    parse_instant_ms,
    parse_wait_ms,
    shown,
)
from stepstream.api.openapi import openapi_of
from stepstream.api.points import add_state_routes
from stepstream.api.publisher import KafkaPublisher, Publisher, TriggersRecord
from stepstream.avro import CancelRequest, NotifyRequest, RecoverRequest, TriggerRequest
from stepstream.clock import Clock, SystemClock
from stepstream.config import ApiSettings
from stepstream.core import Recovery, headers_problem, trigger_problem
from stepstream.core.limits import MAX_SEQ, SEALED_PREFIX
from stepstream.projector.inputs import new_run_id, trigger_command
from stepstream.sealing import SealError
from stepstream.store import ACTIVE_STATUSES, RUN_STATUSES, QueryStore, RunRow, open_query_store

log = logging.getLogger(__name__)

BodyT = TypeVar("BodyT", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")

# Runs read from the store per query while cancelling by filter.
_CANCEL_PAGE = 500
# What a trigger may hold besides its payload, as JSON: its other fields, headers among them. With the
# payload's limit it keeps a trigger within one Kafka record.
ENVELOPE_BYTES = 65_536
# A body may send each character of a payload as \uXXXX, as Python's json does by default: "é" is 6
# bytes sent and 2 recorded, "🙂" 12 and 4. So the body is read up to three times the payload's limit
# (and the envelope) before it is refused unread; the payload's limit holds on the text as recorded.
ESCAPED_GROWTH = 3
# An error's message, at most: its sentence names the bound and quotes the value, which need not be whole.
MAX_MESSAGE_LENGTH = 1_000
# How long the history stream waits for a run the store does not know yet before answering 404: a trigger
# just accepted is indexed within milliseconds when the engine keeps up, seconds when it is busy.
APPEAR_WITHIN_S = 10.0


def _error(status: int, error: str, message: str, **more: Any) -> JSONResponse:
    if len(message) > MAX_MESSAGE_LENGTH:  # a value quoted whole, such as a number of 4,000 digits
        message = f"{message[:MAX_MESSAGE_LENGTH]}… ({len(message)} characters)"
    return JSONResponse({"error": error, "message": message, **more}, status_code=status)


def actor(request: Request) -> str | None:
    """Who asks, as the run's history keeps it beside an operator's action: the token's name, or the
    client's address where the api runs without tokens."""
    token = request.scope.get("state", {}).get("token")
    if token is not None:
        return f"token {token}"
    return f"client {request.client.host}" if request.client is not None else None


def _describe(problems: Sequence[Any]) -> str:
    """Pydantic's validation problems as one line: ``field.path: what is wrong; …``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}" for problem in problems
    )


def _run_cursor(cursor: str | None) -> tuple[int, str] | None:
    try:
        return parse_run_cursor(cursor) if cursor else None
    except ValueError as error:
        raise ApiError(400, "bad_request", str(error)) from None


def _flow_cursor(cursor: str | None) -> str | None:
    try:
        return parse_flow_cursor(cursor) if cursor else None
    except ValueError as error:
        raise ApiError(400, "bad_request", str(error)) from None


def _json_text(value: Any, name: str, limit: int) -> str:
    """``value`` as the JSON text the engine records: refused with 422 if it holds a number JSON has no
    text for (NaN, Infinity, or 1e400, which reads as Infinity), with 413 if it is over ``limit`` bytes."""
    try:
        # Not ASCII-escaped: "é" is 2 bytes of UTF-8 as it is and 6 as \u00e9, and the limit is in bytes.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise invalid(
            f"Expected {name} to be JSON, but it holds NaN, Infinity or a number too large for JSON (such as 1e400)"
        ) from None
    size = len(text.encode())
    if size > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"Expected {name} of at most {limit} bytes as JSON (STEPSTREAM_MAX_PAYLOAD_BYTES), but it has {size}",
        )
    return text


def _instant(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_instant_ms(value, name)
    except ValueError as error:
        raise invalid(str(error)) from None


def _statuses(values: list[str] | None) -> list[str] | None:
    """``status`` given once or more, each one status or several separated by commas."""
    if not values:
        return None
    statuses = [status.strip() for value in values for status in value.split(",") if status.strip()]
    unknown = [status for status in statuses if status not in RUN_STATUSES]
    if unknown:
        raise invalid(f"Expected status to be among {', '.join(RUN_STATUSES)}, but got {shown(', '.join(unknown))}")
    return statuses or None


def _page(rows: list[RunRow], limit: int) -> dict[str, Any]:
    next_cursor = run_cursor(rows[-1].created_at_ms, rows[-1].run_id) if len(rows) == limit else None
    return {"runs": [row.to_dict() for row in rows], "next_cursor": next_cursor}


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:g} s"


def _wait_ms(wait: str | None) -> int | None:
    if wait is None:
        return None
    try:
        return parse_wait_ms(wait)
    except ValueError as error:
        raise invalid(str(error)) from None


def _still_going(run_id: str, run: RunRow | None, wait_ms: int, *, shutting_down: bool = False) -> str:
    """What a 202 after a wait says: how the run stands, and how to follow it."""
    path = f"/v1/runs/{run_id}"
    how = f"follow it with GET {path}/history/stream, or wait again with GET {path}?wait=5m"
    waited = "when the api began to shut down" if shutting_down else f"after waiting {_seconds(wait_ms)}"
    if run is None:
        return (
            f"Run {run_id!r} is not in the api's store yet {waited} (the trigger is in Kafka; the projector"
            f" has not started the run, or the indexer lags): {how}"
        )
    return f"Run {run_id!r} is still {run.status} {waited}: {how}"


async def _off_loop(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """A read of many rows, in a worker thread."""
    return await asyncio.to_thread(call, *args, **kwargs)


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
    url_hosts = settings.url_hosts
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
        return _error(422, "invalid_request", _describe(error.errors()))

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

    async def run_with_steps(run: RunRow) -> dict[str, Any]:
        steps = await _off_loop(query_store().steps, run.run_id)
        return {**run.to_dict(), "steps": [step.to_dict() for step in steps]}

    async def wait_until_ended(run_id: str, wait_ms: int) -> RunRow | None:
        return await wait_for_run(query_store(), run_changes, run_id, wait_ms / 1000, ended)

    async def read_body(request: Request) -> bytes:
        """The raw body, read no further than a payload at its limit, escaped, and the envelope need."""
        limit = ESCAPED_GROWTH * settings.max_payload_bytes + ENVELOPE_BYTES
        expected = (
            f"Expected a request body of at most {limit} bytes ({ESCAPED_GROWTH} times STEPSTREAM_MAX_PAYLOAD_BYTES "
            f"for a payload's escaped characters, and {ENVELOPE_BYTES} for the other fields)"
        )
        length = request.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise ApiError(413, "payload_too_large", f"{expected}, but its content-length is {length}")
        raw = bytearray()
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > limit:
                raise ApiError(413, "payload_too_large", f"{expected}, but it is longer")
        return bytes(raw)

    async def parse(request: Request, model: type[BodyT], *, optional: bool = False) -> BodyT:
        """The request's JSON body as ``model``; an empty body is the model's defaults if ``optional``."""
        raw = await read_body(request)
        if optional and not raw.strip():
            return model()
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            if any(problem["type"] == "json_invalid" for problem in error.errors()):
                raise ApiError(400, "bad_request", _describe(error.errors())) from None
            raise invalid(_describe(error.errors())) from None

    # -- runs -------------------------------------------------------------------------------------

    async def trigger(request: Request) -> JSONResponse:
        wait_ms = _wait_ms(request.query_params.get("wait"))
        body = await parse(request, TriggerBody)
        url = body.url or settings.workflows.get(body.workflow)
        if url is None:
            known = ", ".join(sorted(settings.workflows)) or "none registered"
            raise ApiError(
                404,
                "unknown_workflow",
                f"Expected a registered workflow or a url, but {body.workflow!r} is unknown (registered: {known})",
            )
        try:
            flow = body.flow_control.flow() if body.flow_control is not None else None
        except ValueError as error:
            raise invalid(str(error)) from None
        now_ms = clock.now_ms()
        not_before_ms = _not_before(body, now_ms)
        record = TriggerRequest(
            workflow=body.workflow,
            url=url,
            payload=_json_text(body.payload, "payload", settings.max_payload_bytes),
            run_id=body.run_id or new_run_id(),
            headers=tuple(body.headers.items()),
            label=body.label,
            retries=body.retries,
            retry_base_ms=body.retry_base_ms,
            not_before_ms=not_before_ms,
            requested_at_ms=now_ms,
            retry_delay=body.retry_delay,
            failure_url=body.failure_url,
            flow=flow,
        )
        envelope = _envelope_bytes(record)
        if envelope > ENVELOPE_BYTES:
            raise ApiError(
                413,
                "payload_too_large",
                f"Expected the fields of a trigger other than payload to take at most {ENVELOPE_BYTES} bytes as JSON,"
                f" but they take {envelope} (headers: {sum(len(name) + len(value) for name, value in record.headers)}"
                " characters)",
            )
        # The engine's own check of a trigger, the one a record from any producer on triggers meets, so a
        # trigger the api accepts is one the engine starts; and the characters of the headers, which that
        # check leaves to the executor: a run whose deliveries cannot be sent is better refused now.
        problem = trigger_problem(trigger_command(record, now_ms)) or headers_problem(record.headers)
        if problem is not None:
            raise invalid(problem)
        for name, value in (("url", url), ("failure_url", body.failure_url)):
            # The executor would refuse to sign a delivery there (and fail the run); say so now.
            problem = None if value is None else url_hosts.url_problem(value, name=name)
            if problem is not None:
                raise ApiError(422, "url_not_allowed", problem)
        for name, value in record.headers:
            if value.startswith(SEALED_PREFIX):  # the engine's own form: a caller never has a use for it
                raise invalid(f"Expected header {name!r} not to start with {SEALED_PREFIX!r}, the engine's sealed form")
        try:  # credentials never reach Kafka in plaintext (stepstream.sealing)
            record = dataclasses.replace(record, headers=settings.sealer.seal(record.headers))
        except SealError as error:
            raise invalid(str(error)) from None
        if body.run_id is not None:
            existing = query_store().get_run(body.run_id)
            if existing is not None:
                # Idempotent: the same trigger sent again (a client retry) is answered, not refused.
                if wait_ms is not None:
                    return await waited(body.run_id, wait_ms, {"run_id": body.run_id, "duplicate": True})
                return JSONResponse({"run_id": body.run_id, "duplicate": True, "run": existing.to_dict()}, 200)
        # The run's trace starts here (tracing.py), linked to the caller's if its request carried one.
        run_id = record.run_id or ""
        with tracing.span(f"trigger {record.workflow}", run_id, link=request.headers, kind=tracing.SERVER):
            await publish(record)
        answer = {"run_id": record.run_id, "duplicate": False, "not_before_ms": record.not_before_ms}
        if wait_ms is not None:
            return await waited(record.run_id or "", wait_ms, answer)
        return JSONResponse(answer, status_code=202)

    async def waited(run_id: str, wait_ms: int, answer: dict[str, Any]) -> JSONResponse:
        """200 with the run once it has ended within ``wait_ms``; else 202 with ``answer``, the run as far
        as the store knows it, and how to follow it."""
        run = await wait_until_ended(run_id, wait_ms)
        if run is not None and run.ended:
            return JSONResponse({**await run_with_steps(run), **answer}, status_code=200)
        shown_run = await run_with_steps(run) if run is not None else None
        message = _still_going(run_id, run, wait_ms, shutting_down=run_changes.closed)
        return JSONResponse({**answer, "run": shown_run, "message": message}, status_code=202)

    # A plain Starlette route: the api's busiest, and FastAPI's per-request work around an endpoint
    # (solving its parameters as dependencies) was a fifth of a trigger's CPU in the api process; the
    # body and `wait` are parsed here anyway (docs/decisions/0007). api/openapi.py describes it in /openapi.json.
    app.router.add_route("/v1/runs", trigger, methods=["POST"])

    @app.get("/v1/runs")
    async def list_runs(
        status: Annotated[list[str] | None, Query()] = None,
        workflow: str | None = None,
        label: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        dead_letter: bool | None = None,
        parent_run_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        rows = await _off_loop(
            query_store().list_runs,
            status=_statuses(status),
            workflow=workflow,
            label=label,
            created_after_ms=_instant(created_after, "created_after"),
            created_before_ms=_instant(created_before, "created_before"),
            dead_letter=dead_letter,
            parent_run_id=parent_run_id,
            limit=limit,
            before=_run_cursor(cursor),
        )
        return _page(rows, limit)

    @app.get("/v1/runs/counts")
    async def count_runs(
        workflow: str | None = None,
        label: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
    ) -> dict[str, Any]:
        counts = await _off_loop(
            query_store().count_runs,
            workflow=workflow,
            label=label,
            created_after_ms=_instant(created_after, "created_after"),
            created_before_ms=_instant(created_before, "created_before"),
        )
        return {"counts": counts, "total": sum(counts.values())}

    @app.post("/v1/runs/cancel", status_code=202)
    async def cancel_matching(request: Request) -> JSONResponse:
        body = await parse(request, CancelFilterBody)
        criteria: dict[str, Any] = {
            "workflow": body.workflow,
            "label": body.label,
            "created_after_ms": _instant(body.created_after, "created_after"),
            "created_before_ms": _instant(body.created_before, "created_before"),
        }
        if all(value is None for value in criteria.values()) and not body.all:
            raise invalid(
                "Expected at least one of workflow, label, created_after and created_before, "
                'or "all": true to cancel every run that has not ended, but got none'
            )
        run_ids: list[str] = []
        before: tuple[int, str] | None = None
        while True:
            rows = await _off_loop(
                query_store().list_runs, status=ACTIVE_STATUSES, limit=_CANCEL_PAGE, before=before, **criteria
            )
            run_ids.extend(row.run_id for row in rows)
            if len(rows) < _CANCEL_PAGE:
                break
            before = (rows[-1].created_at_ms, rows[-1].run_id)
        now_ms = clock.now_ms()
        who = actor(request)
        await publish(
            *(CancelRequest(run_id=run_id, reason=body.reason, requested_at_ms=now_ms, actor=who) for run_id in run_ids)
        )
        return JSONResponse({"cancelled": run_ids, "count": len(run_ids)}, status_code=202)

    @app.get("/v1/runs/{run_id}", response_model=None)
    async def get_run(run_id: str, wait: str | None = None) -> dict[str, Any] | JSONResponse:
        wait_ms = _wait_ms(wait)
        if wait_ms is None:
            return await run_with_steps(known_run(run_id))
        run = known_run(run_id, await wait_until_ended(run_id, wait_ms))
        if run.ended:
            return await run_with_steps(run)
        message = _still_going(run_id, run, wait_ms, shutting_down=run_changes.closed)
        answer = {"run_id": run_id, "run": await run_with_steps(run), "message": message}
        return JSONResponse(answer, status_code=202)

    @app.get("/v1/runs/{run_id}/steps")
    async def steps(run_id: str) -> dict[str, Any]:
        known_run(run_id)
        return {"run_id": run_id, "steps": [step.to_dict() for step in await _off_loop(query_store().steps, run_id)]}

    @app.get("/v1/runs/{run_id}/history")
    async def history(run_id: str, after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0) -> dict[str, Any]:
        known_run(run_id)
        return {"run_id": run_id, "events": await _off_loop(query_store().history, run_id, after_seq=after_seq)}

    add_state_routes(app, query_store, known_run)

    @app.get("/v1/runs/{run_id}/history/stream", response_model=None)
    async def history_events(
        run_id: str,
        after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0,
        last_event_id: Annotated[str | None, Header()] = None,
    ) -> StreamingResponse:
        """The history as server-sent events, then each new event, until the run has ended (docs/api.md)."""
        if last_event_id is not None:  # a client resuming: the header wins over the url it resumes
            digits = last_event_id.strip()
            if not (digits.isascii() and digits.isdigit() and len(digits) <= 10 and int(digits) <= MAX_SEQ):
                raise invalid(f"Expected Last-Event-ID to be a seq from 0 to {MAX_SEQ}, but got {shown(last_event_id)}")
            after_seq = int(digits)
        # A run just triggered may not be in the store yet: wait a little for it, then say it is unknown.
        known_run(run_id, await wait_for_run(query_store(), run_changes, run_id, APPEAR_WITHIN_S, known))
        return StreamingResponse(
            history_stream(query_store(), run_changes, run_id, after_seq),
            media_type="text/event-stream",
            # Not to be cached or held back by a proxy (X-Accel-Buffering: nginx's buffering of answers).
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.post("/v1/runs/{run_id}/cancel", status_code=202)
    async def cancel(run_id: str, request: Request) -> JSONResponse:
        body = await parse(request, CancelBody, optional=True)
        run = known_run(run_id)
        if run.ended:
            raise ApiError(
                409,
                "run_ended",
                f"Expected a run that has not ended, but run {run_id!r} is {run.status}; nothing to cancel",
                run=run.to_dict(),
            )
        await publish(
            CancelRequest(run_id=run_id, reason=body.reason, requested_at_ms=clock.now_ms(), actor=actor(request))
        )
        later = "results that arrive later are ignored"
        message = f"Cancel of run {run_id!r} requested: nothing more is scheduled for it, and {later}"
        return JSONResponse({"run_id": run_id, "message": message}, status_code=202)

    # -- events -----------------------------------------------------------------------------------

    def event_id_checked(event_id: str) -> str:
        try:
            return check_event_id(event_id)
        except ValueError as error:
            raise invalid(str(error)) from None

    @app.post("/v1/events/{event_id:path}/notify", status_code=202)
    async def notify(event_id: str, request: Request) -> JSONResponse:
        event_id = event_id_checked(event_id)
        body = await parse(request, NotifyBody, optional=True)
        waiting = list(dict.fromkeys(waiter.run_id for waiter in await _off_loop(query_store().waiters, event_id)))
        now_ms = clock.now_ms()
        data = _json_text(body.data, "data", settings.max_payload_bytes)
        await publish(NotifyRequest(event_id=event_id, data=data, requested_at_ms=now_ms, actor=actor(request)))
        buffer_ms = settings.notify_buffer_ms
        kept = f"the notification is kept for {_seconds(buffer_ms)} for runs that start waiting on it"
        if waiting:
            runs = "1 run" if len(waiting) == 1 else f"{len(waiting)} runs"
            message = f"{runs} waiting on event {event_id!r} will receive the notification"
            message += f"; {kept}" if buffer_ms else ""
        elif buffer_ms:
            message = f"No run is waiting on event {event_id!r} now; {kept}"
        else:
            message = (
                f"No run is waiting on event {event_id!r} now, and notifications are not kept "
                "(STEPSTREAM_NOTIFY_BUFFER_MS is 0): no run will receive this one"
            )
        answer = {
            "event_id": event_id,
            "waiting": waiting,
            "buffered_until_ms": now_ms + buffer_ms if buffer_ms else None,
            "message": message,
        }
        return JSONResponse(answer, status_code=202)

    @app.get("/v1/waiters")
    async def all_waiters(limit: Annotated[int, Query(ge=1, le=1_000)] = 200) -> dict[str, Any]:
        rows = await _off_loop(query_store().all_waiters, limit)
        return {"waiters": [row.to_dict() for row in rows]}

    @app.get("/v1/events/{event_id:path}/waiters")
    async def waiters(event_id: str) -> dict[str, Any]:
        event_id = event_id_checked(event_id)
        found = await _off_loop(query_store().waiters, event_id)
        return {
            "event_id": event_id,
            "waiters": [
                {key: value for key, value in waiter.to_dict().items() if key != "event_id"} for waiter in found
            ],
        }

    # -- the dead-letter list ---------------------------------------------------------------------

    @app.get("/v1/deadletter")
    async def dead_letter_list(
        workflow: str | None = None,
        label: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        rows = await _off_loop(
            query_store().list_runs,
            dead_letter=True,
            workflow=workflow,
            label=label,
            created_after_ms=_instant(created_after, "created_after"),
            created_before_ms=_instant(created_before, "created_before"),
            limit=limit,
            before=_run_cursor(cursor),
        )
        return _page(rows, limit)

    async def recover(run_id: str, action: Recovery, request: Request) -> JSONResponse:
        body = await parse(request, RecoverBody, optional=True)
        run = query_store().get_run(run_id)
        if run is None or not run.dead_letter:
            found = "not known (yet)" if run is None else run.status
            if run is not None and run.status == "failed":
                found = "failed but no longer in the list (resumed, restarted or deleted already)"
            raise ApiError(
                404,
                "not_in_dead_letter",
                f"Expected a run in the dead-letter list to {action.value}, but run {shown(run_id)} is {found}",
            )
        await publish(
            RecoverRequest(
                run_id=run_id, action=action, requested_at_ms=clock.now_ms(), actor=actor(request), reason=body.reason
            )
        )
        return JSONResponse({"run_id": run_id, "action": action.value}, status_code=202)

    @app.post("/v1/deadletter/{run_id}/resume", status_code=202)
    async def resume(run_id: str, request: Request) -> JSONResponse:
        return await recover(run_id, Recovery.RESUME, request)

    @app.post("/v1/deadletter/{run_id}/restart", status_code=202)
    async def restart(run_id: str, request: Request) -> JSONResponse:
        return await recover(run_id, Recovery.RESTART, request)

    @app.delete("/v1/deadletter/{run_id}", status_code=202)
    async def delete(run_id: str, request: Request) -> JSONResponse:
        return await recover(run_id, Recovery.DELETE, request)

    # -- flow control -----------------------------------------------------------------------------

    @app.get("/v1/flow-control")
    async def flow_keys(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Every flow-control key by key, as the scheduler last published it (see ``updated_at_ms``)."""
        rows = await _off_loop(query_store().flow_keys, limit=limit, after=_flow_cursor(cursor))
        next_cursor = flow_cursor(rows[-1].key) if len(rows) == limit else None
        return {"flow_keys": [row.to_dict() for row in rows], "next_cursor": next_cursor}

    @app.get("/v1/flow-control/{key:path}")
    async def flow_key(key: str) -> dict[str, Any]:
        """One flow-control key, as the scheduler last published it (see ``updated_at_ms``)."""
        row = query_store().flow_key(key)
        if row is None:
            raise ApiError(
                404,
                "unknown_flow_key",
                f"Expected a flow-control key the scheduler has published, but {shown(key)} is not known (yet): "
                "no work has been scheduled under it, or the scheduler has not published it yet",
            )
        return row.to_dict()

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


_ENVELOPE_FIELDS = tuple(field.name for field in fields(TriggerRequest) if field.name != "payload")


def _envelope_bytes(record: TriggerRequest) -> int:
    """The size of a trigger's fields other than its payload, as JSON (as ``asdict`` would give them)."""
    # Not asdict(record): it deep-copies every field, the payload too, on the path of every trigger.
    envelope = {name: getattr(record, name) for name in _ENVELOPE_FIELDS}
    if record.flow is not None:
        envelope["flow"] = asdict(record.flow)
    return len(json.dumps(envelope, ensure_ascii=False).encode())


def _not_before(body: TriggerBody, now_ms: int) -> int | None:
    """When the run's first delivery is due, from at most one of ``delay_ms``, ``delay`` and ``not_before``."""
    given = [name for name in ("delay_ms", "delay", "not_before") if getattr(body, name) is not None]
    if len(given) > 1:
        raise invalid(f"Expected at most one of delay_ms, delay and not_before, but got {' and '.join(given)}")
    try:
        if body.not_before is not None:
            not_before_ms = parse_instant_ms(body.not_before, "not_before")
            check_delay_ms(not_before_ms - now_ms)
            return not_before_ms if not_before_ms > now_ms else None  # a time past: start now
        if body.delay is not None:
            delay_ms = parse_duration_ms(body.delay)
        elif body.delay_ms is not None:
            delay_ms = check_delay_ms(body.delay_ms)
        else:
            return None
    except ValueError as error:
        raise invalid(str(error)) from None
    return now_ms + delay_ms if delay_ms else None
