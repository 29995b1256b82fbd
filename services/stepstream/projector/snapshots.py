"""A run's snapshot on the compacted ``runs`` topic, written as deltas. Pure.

A run's state holds every step's result. Written whole after every batch, the snapshot of a long run
would grow with each step and the bytes written with the square of its length. So the snapshot is in
parts, each a record of its own in the run's partition:

- the run's state without its step results (``RunState`` with ``steps`` empty), under the run id,
  rewritten after each batch that changes the run: small, whatever the run's length;
- each step's result (``RecordedStep``), under ``<run id>/<index>``, written once, when it is
  recorded (and a tombstone if it is set aside, as a restart from the dead-letter list does).

Compaction keeps the latest of each key, so the topic holds each result once. A restore puts the
parts together again; a snapshot written whole by an earlier version (its ``steps`` set) reads as it
is, the parts written since added to it. The fold of a run's events gives exactly the assembled state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from stepstream.core import RecordedStep, RunState

_SEPARATOR = "/"  # not in run ids (letters, digits and _.:- only)


def step_key(run_id: str, index: int) -> str:
    return f"{run_id}{_SEPARATOR}{index}"


def parse_step_key(key: str) -> tuple[str, int] | None:
    """The run id and index a step record's key names; None for a run's own key."""
    run_id, separator, index = key.rpartition(_SEPARATOR)
    if not separator or not index.isdigit():
        return None
    return run_id, int(index)


@dataclass(frozen=True, slots=True)
class Parts:
    """What to write for a run after a change: its state without results, the results recorded since,
    and the indexes whose results were set aside (tombstones)."""

    header: RunState
    recorded: tuple[RecordedStep, ...]
    removed: tuple[int, ...]


def parts(before: RunState | None, after: RunState) -> Parts:
    """The records that take the run's snapshot from ``before`` to ``after``."""
    header = replace(after, steps=())
    known = before.steps if before is not None else ()
    if after.steps[: len(known)] == known:  # results only added at the end, the usual case: no dicts
        return Parts(header=header, recorded=after.steps[len(known) :], removed=())
    earlier = {step.index: step for step in known}
    now = {step.index: step for step in after.steps}
    recorded = tuple(step for index, step in now.items() if earlier.get(index) != step)
    removed = tuple(index for index in earlier if index not in now)
    return Parts(header=header, recorded=recorded, removed=removed)


@dataclass(slots=True)
class Assembly:
    """Runs read back from ``runs``, in the order the records were written; the latest of each key wins."""

    headers: dict[str, RunState] = field(default_factory=dict)
    steps: dict[str, dict[int, RecordedStep]] = field(default_factory=dict)

    def header(self, run_id: str, state: RunState | None) -> None:
        if state is None:  # the run is gone, its results with it
            self.headers.pop(run_id, None)
            self.steps.pop(run_id, None)
        else:
            self.headers[run_id] = state

    def step(self, run_id: str, index: int, step: RecordedStep | None) -> None:
        if step is None:
            self.steps.get(run_id, {}).pop(index, None)
        else:
            self.steps.setdefault(run_id, {})[index] = step

    def states(self) -> Iterable[RunState]:
        """Each run with every result it holds, in index order."""
        for run_id, header in self.headers.items():
            results = {step.index: step for step in header.steps} | self.steps.get(run_id, {})
            yield replace(header, steps=tuple(results[index] for index in sorted(results)))
