"""What a batch of the projector writes, and what one command of it does, before any of it is sent.

A command's records are worked out in full (:class:`Change`) and checked against the record limit
before they reach the batch (:class:`Outbox`) or memory, so a command that is set aside leaves no
trace; the batch's records go out in one transaction, and if it fails, memory is put back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from stepstream import tracing
from stepstream.core import Event, RunState, WaiterState
from stepstream.projector.metrics import Applied


class Output(NamedTuple):
    """A record a batch writes."""

    topic: str
    key: bytes
    value: bytes | None
    partition: int | None = None  # None: by key
    headers: tuple[tuple[str, bytes], ...] = ()  # the trace of the command that wrote it (tracing.py)


@dataclass(slots=True)
class Outbox:
    """What one batch writes, in order, and how to undo its effect on memory if the transaction fails."""

    records: list[Output] = field(default_factory=list)
    snapshots: dict[str, bytes] = field(default_factory=dict)  # each run's latest state, encoded
    previous: dict[str, RunState | None] = field(default_factory=dict)
    waiter_snapshots: dict[str, bytes | None] = field(default_factory=dict)  # None: the index's tombstone
    previous_waiters: dict[str, WaiterState | None] = field(default_factory=dict)
    applied: list[Applied] = field(default_factory=list)  # each run command's events, for the metrics

    def add(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.records.append(Output(topic, key.encode(), value, partition))


@dataclass(slots=True)
class Change:
    """What one command does, worked out in full before any of it touches memory or the outbox, so a
    command that cannot be written (too large, or an encoding that fails) changes nothing."""

    records: list[Output] = field(default_factory=list)
    snapshot: bytes | None = None
    events: list[Event] = field(default_factory=list)  # a run command's events
    # Made inside the span of the command (if traced), its records carry it to whoever reads them.
    headers: tuple[tuple[str, bytes], ...] = field(default_factory=lambda: tuple(tracing.kafka_headers()))

    def add(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.records.append(Output(topic, key.encode(), value, partition, self.headers))

    def too_large(self, limit: int, snapshot_topic: str) -> str | None:
        """Why one of the records would not fit (the largest named), or None if all do."""
        sizes = [(len(record.key) + len(record.value or b""), record.topic) for record in self.records]
        if self.snapshot is not None:
            sizes.append((len(self.snapshot), snapshot_topic))
        size, topic = max(sizes, default=(0, ""))
        if size <= limit:
            return None
        return (
            f"Expected records of at most {limit:,} bytes (STEPSTREAM_MAX_RECORD_BYTES), "
            f"but this would write one of {size:,} bytes to {topic}"
        )
