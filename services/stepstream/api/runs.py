"""The runs: trigger one (``POST /v1/runs``), list and count them, read one with its steps, and read its
history or follow it as server-sent events.

A request may wait for a run to end (``?wait=``) or follow its history as server-sent events: the
indexer tells :class:`RunChanges` which runs each batch changed, and only their waiters read the store
again (:mod:`stepstream.api.follow`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from stepstream import tracing
from stepstream.api.bodies import ENVELOPE_BYTES, Parse, json_text
from stepstream.api.changes import RunChanges
from stepstream.api.errors import ApiError, invalid
from stepstream.api.follow import ended, history_stream, known, wait_for_run
from stepstream.api.inputs import (
    TriggerBody,
    check_delay_ms,
    parse_duration_ms,
    parse_instant_ms,
    parse_wait_ms,
    seconds,
    shown,
)
from stepstream.api.publisher import Publish
from stepstream.api.reads import instant, off_loop, read_run_cursor, run_page
from stepstream.avro import TriggerRequest
from stepstream.clock import Clock
from stepstream.config import ApiSettings
from stepstream.core import headers_problem, trigger_problem
from stepstream.core.limits import MAX_SEQ, SEALED_PREFIX
from stepstream.projector.inputs import new_run_id, trigger_command
from stepstream.sealing import SealError
from stepstream.store import RUN_STATUSES, QueryStore, RunRow

# How long the history stream waits for a run the store does not know yet before answering 404: a trigger
# just accepted is indexed within milliseconds when the engine keeps up, seconds when it is busy.
APPEAR_WITHIN_S = 10.0


class KnownRun(Protocol):
    """``known_run`` as the app hands it to its routes: ``run``, else the store's, or 404 if there is none."""

    def __call__(self, run_id: str, run: RunRow | None = None) -> RunRow: ...


def add_run_routes(
    app: FastAPI,
    *,
    settings: ApiSettings,
    clock: Clock,
    run_changes: RunChanges,
    query_store: Callable[[], QueryStore],
    publish: Publish,
    known_run: KnownRun,
    parse: Parse,
) -> None:
    url_hosts = settings.url_hosts

    async def run_with_steps(run: RunRow) -> dict[str, Any]:
        steps = await off_loop(query_store().steps, run.run_id)
        return {**run.to_dict(), "steps": [step.to_dict() for step in steps]}

    async def wait_until_ended(run_id: str, wait_ms: int) -> RunRow | None:
        return await wait_for_run(query_store(), run_changes, run_id, wait_ms / 1000, ended)

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
            payload=json_text(body.payload, "payload", settings.max_payload_bytes),
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
        rows = await off_loop(
            query_store().list_runs,
            status=_statuses(status),
            workflow=workflow,
            label=label,
            created_after_ms=instant(created_after, "created_after"),
            created_before_ms=instant(created_before, "created_before"),
            dead_letter=dead_letter,
            parent_run_id=parent_run_id,
            limit=limit,
            before=read_run_cursor(cursor),
        )
        return run_page(rows, limit)

    @app.get("/v1/runs/counts")
    async def count_runs(
        workflow: str | None = None,
        label: str | None = None,
        created_after: str | None = None,
        created_before: str | None = None,
    ) -> dict[str, Any]:
        counts = await off_loop(
            query_store().count_runs,
            workflow=workflow,
            label=label,
            created_after_ms=instant(created_after, "created_after"),
            created_before_ms=instant(created_before, "created_before"),
        )
        return {"counts": counts, "total": sum(counts.values())}

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
        return {"run_id": run_id, "steps": [step.to_dict() for step in await off_loop(query_store().steps, run_id)]}

    @app.get("/v1/runs/{run_id}/history")
    async def history(run_id: str, after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ)] = 0) -> dict[str, Any]:
        known_run(run_id)
        return {"run_id": run_id, "events": await off_loop(query_store().history, run_id, after_seq=after_seq)}

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


def _statuses(values: list[str] | None) -> list[str] | None:
    """``status`` given once or more, each one status or several separated by commas."""
    if not values:
        return None
    statuses = [status.strip() for value in values for status in value.split(",") if status.strip()]
    unknown = [status for status in statuses if status not in RUN_STATUSES]
    if unknown:
        raise invalid(f"Expected status to be among {', '.join(RUN_STATUSES)}, but got {shown(', '.join(unknown))}")
    return statuses or None


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
    waited = "when the api began to shut down" if shutting_down else f"after waiting {seconds(wait_ms)}"
    if run is None:
        return (
            f"Run {run_id!r} is not in the api's store yet {waited} (the trigger is in Kafka; the projector"
            f" has not started the run, or the indexer lags): {how}"
        )
    return f"Run {run_id!r} is still {run.status} {waited}: {how}"


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
