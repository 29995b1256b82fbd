"""A run's state at any point of its history, and what changed between two points (docs/history.md).

The stored history, read back into the core's events and folded with ``evolve`` up to the point:
``stepstream.history`` does the work, these routes read the store and say what they cannot answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import FastAPI, Query

from stepstream.api.errors import ApiError, invalid
from stepstream.api.inputs import parse_instant_ms
from stepstream.core import RunState
from stepstream.core.limits import MAX_SEQ
from stepstream.history.points import diff, events_of, fold_to, state_to_dict
from stepstream.store import QueryStore, RunRow

Seq = Annotated[int, Query(ge=1, le=MAX_SEQ)]


def add_state_routes(
    app: FastAPI, *, query_store: Callable[[], QueryStore], known_run: Callable[[str], RunRow]
) -> None:
    async def history(run_id: str) -> list[dict[str, Any]]:
        known_run(run_id)
        return await asyncio.to_thread(query_store().history, run_id)

    @app.get("/v1/runs/{run_id}/state")
    async def state_at(run_id: str, seq: Seq | None = None, at: str | None = None) -> dict[str, Any]:
        """The run's state after its event ``seq``, or as of the time ``at``; without either, now."""
        at_ms = None
        if at is not None:
            try:
                at_ms = parse_instant_ms(at, "at")
            except ValueError as error:
                raise invalid(str(error)) from None
        return {"run_id": run_id, **_point(run_id, await history(run_id), seq, at_ms, at)}

    @app.get("/v1/runs/{run_id}/state/diff")
    async def state_diff(run_id: str, from_seq: Seq, to_seq: Seq | None = None) -> dict[str, Any]:
        """What changed in the run's state from after event ``from_seq`` to after ``to_seq`` (default: its last)."""
        events = await history(run_id)
        before = _point(run_id, events, from_seq, None, None)
        after = _point(run_id, events, to_seq, None, None)
        changes = diff(before["state"], after["state"])
        return {
            "run_id": run_id,
            "from_seq": before["seq"],
            "to_seq": after["seq"],
            "changes": [change.to_dict() for change in changes],
        }


def _point(
    run_id: str, history: list[dict[str, Any]], seq: int | None, at_ms: int | None, at: str | None
) -> dict[str, Any]:
    """The state after the events up to ``seq`` and written by ``at_ms``, with the last event applied."""
    applied = [
        event
        for event in history
        if (seq is None or event["seq"] <= seq) and (at_ms is None or event["at_ms"] <= at_ms)
    ]
    try:
        state: RunState | None = fold_to(events_of(applied))
    except ValueError as error:  # an event the core cannot read back: the store's fault, said plainly
        raise ApiError(500, "unreadable_history", f"Expected a history the core can fold, but {error}") from None
    if state is None:
        point = f"seq {seq}" if seq is not None else f"{at}"
        message = f"Expected a point in run {run_id!r}'s history, but {point} is before its first event"
        raise ApiError(404, "before_the_run", message)
    last = applied[-1]
    return {"seq": last["seq"], "at_ms": last["at_ms"], "event": last["type"], "state": state_to_dict(state)}
