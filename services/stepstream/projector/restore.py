"""Restoring the partitions the projector is assigned: its files of runs and of waiter indexes
(projector/store.py) brought up to date from the compacted ``runs`` and ``waiters`` topics, from
where each file left off (store/changelog.py), and a record of them it cannot read dead-lettered.

Apart from the service, whose assignment callback only decides when a restore runs (under its lock,
tried again while Kafka cannot be reached) and takes the partitions on once it is done; this module
says what a restore reads and which of its records it keeps.
"""

from __future__ import annotations

from aiokafka import ConsumerRecord

from stepstream.avro import Codec, DecodeError
from stepstream.clock import Clock
from stepstream.config import KafkaSettings
from stepstream.core import RecordedStep, RunState, WaiterState
from stepstream.core.retention import ended_at
from stepstream.kafka.clients import Producer
from stepstream.kafka.deadletter import DeadLetters
from stepstream.projector.snapshots import parse_step_key
from stepstream.projector.store import RunStore, WaiterStore
from stepstream.store.changelog import catch_up


async def restore(
    new: set[int],
    states: RunStore,
    waiters: WaiterStore,
    *,
    kafka: KafkaSettings,
    codec: Codec,
    clock: Clock,
    dead_letters: DeadLetters,
    producer: Producer,
    deadletter: str,
) -> int:
    """Read back the run snapshots and waiter indexes of the ``new`` partitions; returns how many runs.

    These compacted topics are the projector's own. A record in them it cannot read (another
    producer's, or a newer version's during an upgrade) is skipped, and a copy dead-lettered,
    rather than stop the restore; the record itself stays, for a version that can read it.
    """
    unreadable: list[tuple[ConsumerRecord, str]] = []
    now = clock.now_ms
    await catch_up(states, kafka, new, now, lambda record: _restored_run_record(record, codec), unreadable)
    await catch_up(waiters, kafka, new, now, lambda record: _restored_waiters(record, codec), unreadable)
    restored = sum(states.runs_on_disk(partition) for partition in new)
    if unreadable:
        await dead_letters.write_apart(producer, deadletter, unreadable, clock.now_ms())
    return restored


def _restored_waiters(record: ConsumerRecord, codec: Codec) -> str | None:
    """Why a record of ``waiters`` cannot be restored, or None: an event id's index or its tombstone."""
    try:
        _restored(record, codec)
    except DecodeError as error:
        return str(error)
    return None


def _restored_run_record(record: ConsumerRecord, codec: Codec) -> str | int | None:
    """Why a record of ``runs`` cannot be restored (its key or value); else, for a run's state, when
    the run ended if it may be compacted (None for anything else: one of its results, a tombstone)."""
    if record.key is None:
        return "Expected a key (a run id, or a run id and a step index), but the record has none"
    if record.value is None:
        return None
    step = parse_step_key(bytes(record.key).decode(errors="replace"))
    try:
        decoded = codec.decode(record.value, (RunState,) if step is None else (RecordedStep,))
    except DecodeError as error:
        return str(error)
    return ended_at(decoded) if isinstance(decoded, RunState) else None


def _restored(record: ConsumerRecord, codec: Codec) -> tuple[str, WaiterState | None]:
    """The event id and waiter index a ``waiters`` record holds (None: a tombstone); ``DecodeError`` if neither."""
    if record.key is None:
        raise DecodeError("Expected a key (an event id), but the record has none")
    key = bytes(record.key).decode(errors="replace")
    return key, None if record.value is None else codec.decode(record.value, (WaiterState,))
