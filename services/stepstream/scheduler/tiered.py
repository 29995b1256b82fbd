"""The scheduler's pending work, with what is due later than a horizon on disk.

A sleeping run has a timer held by the scheduler until it is due; a run that sleeps for weeks held
its ~0.5 KB for weeks, and a million sleeping runs took their memory. :class:`TieredPendingWork`
keeps in memory (a :class:`~stepstream.scheduler.pending.PendingWork`) only what is due before
``window_end``, which :meth:`pop_due` moves to ``now + horizon``; everything due later waits in a
SQLite file, and comes into memory in order of due time (then of arrival) when the window reaches
it. It behaves as ``PendingWork`` does, one request per id, ties in order of arrival
(``tests/unit/test_scheduler_pending.py`` runs the same model test against both).

The file only spills what memory would have held: it is written as memory would have been (before
the batch's transaction commits) and emptied with it (a failed transaction or a revoked partition
drops the partitions, and the restore fills it again from the changelog's file, changelog.py), so
it needs no positions of its own. It is a temporary file, removed when the scheduler stops.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable

from stepstream.avro import Codec
from stepstream.scheduler.pending import Held, HeldRecord, PendingWork, due_ms
from stepstream.store.files import remove_sqlite, temporary_sqlite, transaction

HORIZON_MS = 60_000  # what is due within the next minute stays in memory

_SCHEMA = """
CREATE TABLE held (
    request_id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    due_ms INTEGER NOT NULL,
    arrival INTEGER NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX held_by_due ON held (due_ms, arrival);
"""


class TieredPendingWork:
    """``PendingWork``'s interface: requests by id, due ones popped in order; the far ones on disk."""

    def __init__(self, codec: Codec, *, horizon_ms: int = HORIZON_MS, folder: str | None = None) -> None:
        self.codec = codec
        self.horizon_ms = horizon_ms
        self.window_end = 0  # memory holds what is due at or before this; the file what is due after
        self._memory = PendingWork()
        self._arrivals = 0
        self.path = temporary_sqlite(self, "stepstream-scheduler-", folder)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # A spill file, read again from the changelog after any restart: no sync, no journal to keep.
        self._db.execute("PRAGMA journal_mode=OFF")
        self._db.execute("PRAGMA synchronous=OFF")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()
        remove_sqlite(self.path)

    def __len__(self) -> int:
        return len(self._memory) + self.on_disk()

    def on_disk(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM held").fetchone()[0])

    def in_memory(self) -> int:
        return len(self._memory)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._memory or self._on_disk(request_id) is not None

    def add(self, partition: int, record: HeldRecord, value: bytes | None = None) -> None:
        """Hold ``record``; ``value``: its encoding, when the caller has it (a restore, from the changelog)."""
        if due_ms(record) <= self.window_end:
            self._db.execute("DELETE FROM held WHERE request_id = ?", (record.request_id,))
            self._memory.add(partition, record)
            return
        self._memory.remove(record.request_id)
        self._arrivals += 1
        self._db.execute(
            "INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?, ?)",
            (record.request_id, partition, due_ms(record), self._arrivals, value or self.codec.encode(record)),
        )

    def bulk(self) -> contextlib.AbstractContextManager[None]:
        """Many changes in one SQLite transaction: a restore's, which would otherwise commit each of a
        million rows on its own (twice as slow, measured)."""
        return transaction(self._db)

    def remove(self, request_id: str) -> Held | None:
        held = self._memory.remove(request_id)
        if held is not None:
            return held
        row = self._on_disk(request_id)
        if row is None:
            return None
        self._db.execute("DELETE FROM held WHERE request_id = ?", (request_id,))
        partition, value = row
        return Held(partition, self._decode(value))

    def next_due_ms(self) -> int | None:
        due = self._memory.next_due_ms()
        if due is not None:
            return due  # everything on disk is due later than anything in memory
        row = self._db.execute("SELECT MIN(due_ms) FROM held").fetchone()
        return None if row[0] is None else int(row[0])

    def pop_due(self, now_ms: int) -> list[Held]:
        """Every held request due at ``now_ms``, earliest first; then memory holds what is due within
        the horizon."""
        end = now_ms + self.horizon_ms
        if end > self.window_end:
            rows = self._db.execute(
                "SELECT partition, value FROM held WHERE due_ms <= ? ORDER BY due_ms, arrival", (end,)
            ).fetchall()
            self._db.execute("DELETE FROM held WHERE due_ms <= ?", (end,))
            self.window_end = end
            for partition, value in rows:
                self._memory.add(partition, self._decode(value))
        return self._memory.pop_due(now_ms)

    def drop_partitions(self, partitions: set[int]) -> None:
        self._memory.drop_partitions(partitions)
        self._db.executemany("DELETE FROM held WHERE partition = ?", [(partition,) for partition in partitions])

    def add_encoded(self, rows: Iterable[tuple[int, str, int, bytes]]) -> None:
        """Requests as the changelog holds them (partition, request id, due time, encoding): those due
        after ``window_end`` to disk as they are, not decoded (a restore's far timers)."""
        for partition, request_id, due, value in rows:
            if due <= self.window_end:
                self._memory.add(partition, self._decode(value))
                continue
            self._memory.remove(request_id)
            self._arrivals += 1
            row = (request_id, partition, due, self._arrivals, value)
            self._db.execute("INSERT OR REPLACE INTO held VALUES (?, ?, ?, ?, ?)", row)

    def _on_disk(self, request_id: str) -> tuple[int, bytes] | None:
        row = self._db.execute("SELECT partition, value FROM held WHERE request_id = ?", (request_id,)).fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _decode(self, value: bytes) -> HeldRecord:
        record: HeldRecord = self.codec.decode(value)  # type: ignore[assignment]  # written by add, one of the three
        return record
