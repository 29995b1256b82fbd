"""What the projector keeps of a run that ended long ago. Pure.

Once a run has ended (completed, cancelled, or failed and out of the dead-letter list), what can still
reach it is a late report or timer, a duplicate trigger with its id, a cancellation, its parent's
re-attachment: each needs to find that the run exists and has ended, and is rejected or ignored on
that alone. None needs its payload, headers or results. So, once it has been over for the retention
window (``STEPSTREAM_ENDED_RUN_RETENTION_MS``), the projector replaces its state with a compact one
(:func:`compacted`) and removes its results from ``runs``: its id stays known for ever, duplicates
are still answered as such, and it costs ~200 bytes on disk and in the changelog, nothing in memory.
Its history stays in ``events``, and the api's query store keeps the whole run.

A run in the dead-letter list is kept whole, for as long as it is there: resume and restart replay it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Final

from stepstream.core.state import RunState

# No trigger has an empty payload (payloads are strict JSON), so it marks a state already compacted.
COMPACTED_PAYLOAD: Final = ""


def ended_at(state: RunState) -> int | None:
    """When the run ended, if its state may be compacted once the window has passed; None while
    something may still need all of it (a live run, a failure handler due, the dead-letter list), or
    once it is compacted."""
    if not state.status.terminal or state.dead_letter or state.failure_delivery is not None:
        return None
    if state.payload == COMPACTED_PAYLOAD:
        return None
    return state.updated_at_ms


def compacted(state: RunState) -> RunState:
    """``state`` with only what the commands that may still come need: its id, workflow, status, times
    and family. A child run keeps its output and error, which a parent re-attaching after a resume or
    restart is given (``child_reattached``); a top-level run's are in its history."""
    child = state.parent_run_id is not None
    return replace(
        state,
        payload=COMPACTED_PAYLOAD,
        headers=(),
        label=None,
        steps=(),
        in_flight=(),
        waiting=(),
        output=state.output if child else None,
        error=state.error if child else None,
        flow=None,
    )
