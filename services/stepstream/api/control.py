"""An operator's actions on runs: cancel one, or every run that has not ended and matches a filter; and
the dead-letter list (failed runs an operator has not dealt with yet): list it, and resume, restart or
delete a run in it. Each action is a record on ``triggers`` (through the :class:`Publish` the app hands
in) that names who asked (:func:`~stepstream.api.auth.actor`); the projector decides it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse

from stepstream.api.auth import actor
from stepstream.api.bodies import Parse
from stepstream.api.errors import ApiError, invalid
from stepstream.api.inputs import CancelBody, CancelFilterBody, RecoverBody, shown
from stepstream.api.publisher import Publish
from stepstream.api.reads import instant, off_loop, read_run_cursor, run_page
from stepstream.avro import CancelRequest, RecoverRequest
from stepstream.clock import Clock
from stepstream.core import Recovery
from stepstream.store import ACTIVE_STATUSES, QueryStore, RunRow

# Runs read from the store per query while cancelling by filter.
_CANCEL_PAGE = 500


def add_control_routes(
    app: FastAPI,
    *,
    clock: Clock,
    query_store: Callable[[], QueryStore],
    publish: Publish,
    known_run: Callable[[str], RunRow],
    parse: Parse,
) -> None:
    @app.post("/v1/runs/cancel", status_code=202)
    async def cancel_matching(request: Request) -> JSONResponse:
        body = await parse(request, CancelFilterBody)
        criteria: dict[str, Any] = {
            "workflow": body.workflow,
            "label": body.label,
            "created_after_ms": instant(body.created_after, "created_after"),
            "created_before_ms": instant(body.created_before, "created_before"),
        }
        if all(value is None for value in criteria.values()) and not body.all:
            raise invalid(
                "Expected at least one of workflow, label, created_after and created_before, "
                'or "all": true to cancel every run that has not ended, but got none'
            )
        run_ids: list[str] = []
        before: tuple[int, str] | None = None
        while True:
            rows = await off_loop(
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
        rows = await off_loop(
            query_store().list_runs,
            dead_letter=True,
            workflow=workflow,
            label=label,
            created_after_ms=instant(created_after, "created_after"),
            created_before_ms=instant(created_before, "created_before"),
            limit=limit,
            before=read_run_cursor(cursor),
        )
        return run_page(rows, limit)

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
