"""How the routes read the query store, and the parameters of its lists of runs (all runs, the
dead-letter list): the instants they are filtered by, and the cursor of a page.

Reads by key (a run, a flow-control key) run on the event loop: a lookup by primary key takes
microseconds, on a connection that does not wait for the indexer's writes. Reads that may return many
rows (lists, steps, histories, waiters) run in a worker thread, so a long one holds no other request up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from stepstream.api.cursors import parse_run_cursor, run_cursor
from stepstream.api.errors import ApiError, invalid
from stepstream.api.inputs import parse_instant_ms
from stepstream.store import RunRow

P = ParamSpec("P")
R = TypeVar("R")


async def off_loop(call: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """A read of many rows, in a worker thread."""
    return await asyncio.to_thread(call, *args, **kwargs)


def instant(value: int | str | None, name: str) -> int | None:
    if value is None:
        return None
    try:
        return parse_instant_ms(value, name)
    except ValueError as error:
        raise invalid(str(error)) from None


def read_run_cursor(cursor: str | None) -> tuple[int, str] | None:
    try:
        return parse_run_cursor(cursor) if cursor else None
    except ValueError as error:
        raise ApiError(400, "bad_request", str(error)) from None


def run_page(rows: list[RunRow], limit: int) -> dict[str, Any]:
    next_cursor = run_cursor(rows[-1].created_at_ms, rows[-1].run_id) if len(rows) == limit else None
    return {"runs": [row.to_dict() for row in rows], "next_cursor": next_cursor}
