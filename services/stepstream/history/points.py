"""A run's state at any point of its history, and what changed between two points.

The state at a point is the fold of the run's events up to it through the core's ``evolve``: the
same function the projector applies, so what this shows is what the engine held then. The events
come from the history as the api shows it, read back into the core's records
(:func:`stepstream.store.history.event_from_dict`): they were decoded from Kafka through the codec's
upcasters when the indexer stored them, so an event written in an older schema folds as the engine
reads it today. Header values are redacted in the history, and stay so in the state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from stepstream.core import Event, RunState, evolve
from stepstream.store.history import event_from_dict, record_to_dict


def events_of(history: Iterable[Mapping[str, Any]]) -> list[Event]:
    """The core's events from a history's JSON objects; raises ``ValueError`` naming the one that is not."""
    events = []
    for position, shown in enumerate(history):
        try:
            events.append(event_from_dict(dict(shown)))
        except ValueError as error:
            raise ValueError(f"event {position} (seq {shown.get('seq')}): {error}") from None
    return events


def fold_to(events: Iterable[Event], *, seq: int | None = None, at_ms: int | None = None) -> RunState | None:
    """The run's state after its events up to ``seq`` (inclusive) and written at or before ``at_ms``;
    ``None`` if no event is that early. Without either bound: its state after every event."""
    state: RunState | None = None
    for event in events:
        if (seq is not None and event.seq > seq) or (at_ms is not None and event.at_ms > at_ms):
            break
        state = evolve(state, event)
    return state


def state_to_dict(state: RunState | None) -> dict[str, Any] | None:
    """The state as JSON data, shown as events are: user values inline, header values redacted."""
    return None if state is None else record_to_dict(state)


@dataclass(frozen=True, slots=True)
class Change:
    """One value that differs: ``path`` such as ``steps[2].output`` or ``status``; ``None`` where absent."""

    path: str
    before: Any
    after: Any

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "before": self.before, "after": self.after}


def diff(before: Any, after: Any, path: str = "") -> list[Change]:
    """Every leaf value that differs between two states as :func:`state_to_dict` shows them.

    Records compare field by field and lists item by item, so a step recorded between the two
    points is one change (``steps[3]``: absent before), not a rewrite of the whole list.
    """
    if isinstance(before, dict) and isinstance(after, dict):
        changes: list[Change] = []
        for key in list(before) + [key for key in after if key not in before]:
            changes += diff(before.get(key), after.get(key), f"{path}.{key}" if path else str(key))
        return changes
    if isinstance(before, list) and isinstance(after, list):
        changes = []
        for position in range(max(len(before), len(after))):
            earlier = before[position] if position < len(before) else None
            later = after[position] if position < len(after) else None
            changes += diff(earlier, later, f"{path}[{position}]")
        return changes
    return [] if before == after else [Change(path, before, after)]
