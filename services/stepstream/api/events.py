"""Events runs wait on: notify one (``POST /v1/events/{event_id}/notify``, a record on ``triggers`` that
wakes every run waiting on it), and the runs waiting, on one event id or on any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from stepstream.api.auth import actor
from stepstream.api.bodies import Parse, json_text
from stepstream.api.errors import invalid
from stepstream.api.inputs import NotifyBody, check_event_id, seconds
from stepstream.api.publisher import Publish
from stepstream.api.reads import off_loop
from stepstream.avro import NotifyRequest
from stepstream.clock import Clock
from stepstream.config import ApiSettings
from stepstream.store import QueryStore


def add_event_routes(
    app: FastAPI,
    *,
    settings: ApiSettings,
    clock: Clock,
    query_store: Callable[[], QueryStore],
    publish: Publish,
    parse: Parse,
) -> None:
    def event_id_checked(event_id: str) -> str:
        try:
            return check_event_id(event_id)
        except ValueError as error:
            raise invalid(str(error)) from None

    @app.post("/v1/events/{event_id:path}/notify", status_code=202)
    async def notify(event_id: str, request: Request) -> JSONResponse:
        event_id = event_id_checked(event_id)
        body = await parse(request, NotifyBody, optional=True)
        waiting = list(dict.fromkeys(waiter.run_id for waiter in await off_loop(query_store().waiters, event_id)))
        now_ms = clock.now_ms()
        data = json_text(body.data, "data", settings.max_payload_bytes)
        await publish(NotifyRequest(event_id=event_id, data=data, requested_at_ms=now_ms, actor=actor(request)))
        buffer_ms = settings.notify_buffer_ms
        kept = f"the notification is kept for {seconds(buffer_ms)} for runs that start waiting on it"
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
        rows = await off_loop(query_store().all_waiters, limit)
        return {"waiters": [row.to_dict() for row in rows]}

    @app.get("/v1/events/{event_id:path}/waiters")
    async def waiters(event_id: str) -> dict[str, Any]:
        event_id = event_id_checked(event_id)
        found = await off_loop(query_store().waiters, event_id)
        return {
            "event_id": event_id,
            "waiters": [
                {key: value for key, value in waiter.to_dict().items() if key != "event_id"} for waiter in found
            ],
        }
