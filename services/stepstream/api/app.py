"""The api: trigger runs, read them and their histories. Stateless: it writes ``triggers`` and reads
the query store the indexer keeps.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from stepstream.avro import Codec, TriggerRequest
from stepstream.config import ApiSettings
from stepstream.kafka.clients import make_producer
from stepstream.kafka.topics import TopicNames
from stepstream.projector.service import new_run_id
from stepstream.store import QueryStore


class TriggerBody(BaseModel):
    """``POST /v1/runs``: start a run of a workflow."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=200)
    url: str | None = Field(default=None, description="The endpoint; defaults to the registered one")
    payload: Any = None
    run_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    label: str | None = Field(default=None, max_length=200)
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_base_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    delay_ms: int | None = Field(default=None, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)


class ApiError(Exception):
    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message


def _error(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


def _describe(problems: Sequence[Any]) -> str:
    """Pydantic's validation problems as one line: ``field.path: what is wrong; …``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}" for problem in problems
    )


def _cursor(created_at_ms: int, run_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([created_at_ms, run_id]).encode()).decode()


def _parse_cursor(cursor: str) -> tuple[int, str]:
    try:
        created_at_ms, run_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return int(created_at_ms), str(run_id)
    except (ValueError, TypeError) as error:
        raise ApiError(400, "bad_request", f"Expected a cursor from a previous page, but got {cursor!r}") from error


def create_app(settings: ApiSettings, *, store: QueryStore | None = None) -> FastAPI:
    topics = TopicNames(settings.kafka.topic_prefix)
    codec = Codec()
    state: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        producer: AIOKafkaProducer = make_producer(settings.kafka)
        await producer.start()
        state["producer"] = producer
        state["store"] = store or QueryStore(settings.database)
        try:
            yield
        finally:
            await producer.stop()
            if store is None:
                state["store"].close()

    app = FastAPI(title="Stepstream", version="1", lifespan=lifespan)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error(error.status, error.error, error.message)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", _describe(error.errors()))

    def query_store() -> QueryStore:
        result: QueryStore = state["store"]
        return result

    @app.post("/v1/runs", status_code=202)
    async def trigger(request: Request) -> JSONResponse:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > settings.max_payload_bytes:
            raise ApiError(
                413, "payload_too_large", f"Expected at most {settings.max_payload_bytes} bytes, but got {length}"
            )
        raw = bytearray()
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > settings.max_payload_bytes:
                raise ApiError(413, "payload_too_large", f"Expected at most {settings.max_payload_bytes} bytes")
        try:
            body = TriggerBody.model_validate_json(bytes(raw))
        except ValidationError as error:
            kind = (
                "bad_request"
                if any(problem["type"] == "json_invalid" for problem in error.errors())
                else "invalid_request"
            )
            status = 400 if kind == "bad_request" else 422
            message = _describe(error.errors())
            raise ApiError(status, kind, message) from None
        url = body.url or settings.workflows.get(body.workflow)
        if url is None:
            known = ", ".join(sorted(settings.workflows)) or "none registered"
            raise ApiError(
                404,
                "unknown_workflow",
                f"Expected a registered workflow or a url, but {body.workflow!r} is unknown (registered: {known})",
            )
        if not url.startswith(("http://", "https://")):
            raise ApiError(422, "invalid_request", f"Expected an http(s) url, but got {url!r}")
        if body.run_id is not None and query_store().get_run(body.run_id) is not None:
            return JSONResponse({"run_id": body.run_id, "duplicate": True}, status_code=200)
        run_id = body.run_id or new_run_id()
        now_ms = time.time_ns() // 1_000_000
        request_record = TriggerRequest(
            workflow=body.workflow,
            url=url,
            payload=json.dumps(body.payload, separators=(",", ":")),
            run_id=run_id,
            headers=tuple(body.headers.items()),
            label=body.label,
            retries=body.retries,
            retry_base_ms=body.retry_base_ms,
            not_before_ms=now_ms + body.delay_ms if body.delay_ms else None,
            requested_at_ms=now_ms,
        )
        producer: AIOKafkaProducer = state["producer"]
        await producer.send_and_wait(topics.triggers, value=codec.encode(request_record), key=run_id.encode())
        return JSONResponse({"run_id": run_id, "duplicate": False}, status_code=202)

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        run = query_store().get_run(run_id)
        if run is None:
            raise ApiError(404, "unknown_run", f"Expected a known run id, but {run_id!r} is not known (yet)")
        steps = [event for event in query_store().history(run_id) if event["type"] == "StepCompleted"]
        return {
            **run.to_dict(),
            "steps": [{key: step[key] for key in ("step_index", "name", "kind", "output", "at_ms")} for step in steps],
        }

    @app.get("/v1/runs")
    async def list_runs(
        status: str | None = None,
        workflow: str | None = None,
        label: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        before = _parse_cursor(cursor) if cursor else None
        rows = query_store().list_runs(status=status, workflow=workflow, label=label, limit=limit, before=before)
        next_cursor = _cursor(rows[-1].created_at_ms, rows[-1].run_id) if len(rows) == limit else None
        return {"runs": [row.to_dict() for row in rows], "next_cursor": next_cursor}

    @app.get("/v1/runs/{run_id}/history")
    async def history(run_id: str, after_seq: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
        if query_store().get_run(run_id) is None:
            raise ApiError(404, "unknown_run", f"Expected a known run id, but {run_id!r} is not known (yet)")
        return {"run_id": run_id, "events": query_store().history(run_id, after_seq=after_seq)}

    @app.get("/healthz")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
