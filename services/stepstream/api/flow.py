"""Flow-control keys, as the scheduler last published them (docs/flow-control.md): every key, in pages by
key, and one key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query

from stepstream.api.cursors import flow_cursor, parse_flow_cursor
from stepstream.api.errors import ApiError
from stepstream.api.inputs import shown
from stepstream.api.reads import off_loop
from stepstream.store import QueryStore


def add_flow_routes(app: FastAPI, *, query_store: Callable[[], QueryStore]) -> None:
    @app.get("/v1/flow-control")
    async def flow_keys(
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Every flow-control key by key, as the scheduler last published it (see ``updated_at_ms``)."""
        rows = await off_loop(query_store().flow_keys, limit=limit, after=_flow_cursor(cursor))
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


def _flow_cursor(cursor: str | None) -> str | None:
    try:
        return parse_flow_cursor(cursor) if cursor else None
    except ValueError as error:
        raise ApiError(400, "bad_request", str(error)) from None
