"""The scheduler's flow-control queues, each key's first requests in memory and the rest on disk.

A key whose limits hold back a backlog (a million emails at ten a second) held every queued request in
memory, ~0.5 KiB each, until it was let through. :class:`SpilledQueues` makes each key's queue a
:class:`SpillingQueue`: the first ``head`` requests in memory, the ones behind them in a SQLite file,
taken into memory in order as the head drains. So the memory of the queues is bounded by the number
of keys, whatever their backlogs. It behaves as :class:`~stepstream.core.flow.MemoryQueue` does
(``tests/unit/test_core_flow.py`` runs the ledger's model test against both).

Like the scheduler's file of timers (``tiered.py``), the file only holds what memory would have: it is
emptied with the partitions (a failed transaction or a revoked partition drops them, and the restore
queues their requests again from the changelog), so it needs no positions of its own, and is a
temporary file, removed when the scheduler stops.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import OrderedDict
from typing import Any, Final

from stepstream.core import FlowControl, Queued
from stepstream.store.files import remove_sqlite, temporary_sqlite, transaction

HEAD: Final = 256  # requests of a key kept in memory: the next ones to let through

_SCHEMA = """
CREATE TABLE queued (
    flow_key TEXT NOT NULL,
    seq INTEGER NOT NULL,            -- arrival order across the file
    request_id TEXT NOT NULL,
    partition INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    value BLOB NOT NULL,
    call_step_index INTEGER,
    lease_ms INTEGER NOT NULL,
    apart INTEGER NOT NULL,
    rate INTEGER,
    period_ms INTEGER NOT NULL,
    parallelism INTEGER,
    PRIMARY KEY (flow_key, seq)
) WITHOUT ROWID;
CREATE UNIQUE INDEX queued_by_id ON queued (flow_key, request_id);
"""
_COLUMNS = "request_id, partition, run_id, value, call_step_index, lease_ms, apart, rate, period_ms, parallelism"


class SpilledQueues:
    """The file of every key's spilled requests; :meth:`queue` makes a key's queue (the ledger's factory)."""

    def __init__(self, *, head: int = HEAD, folder: str | None = None) -> None:
        self.head = max(1, head)
        self.path = temporary_sqlite(self, "stepstream-scheduler-queues-", folder)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Emptied with the partitions and read again from the changelog after any restart: no sync.
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.executescript(_SCHEMA)
        self._seq = 0
        self.spilled = 0  # requests ever written to the file (what memory would have held)

    def queue(self, name: str) -> SpillingQueue:
        return SpillingQueue(name, self)

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def on_disk(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM queued").fetchone()[0])

    def bulk(self) -> contextlib.AbstractContextManager[None]:
        """Many changes in one SQLite transaction (a restore's, a batch's), not one commit each."""
        return transaction(self.db)

    def close(self) -> None:
        self.db.close()
        remove_sqlite(self.path)


class SpillingQueue:
    """One key's queue: ``head`` requests in memory, in order, then the rest on disk, in order."""

    def __init__(self, name: str, queues: SpilledQueues) -> None:
        self.name = name
        self._queues = queues
        self._db = queues.db
        self._head: OrderedDict[str, Queued] = OrderedDict()
        self._on_disk = 0

    def __len__(self) -> int:
        return len(self._head) + self._on_disk

    def __contains__(self, request_id: str) -> bool:
        if request_id in self._head:
            return True
        return bool(self._on_disk) and self._row(request_id) is not None

    def append(self, item: Queued) -> None:
        if not self._on_disk and len(self._head) < self._queues.head:
            self._head[item.request_id] = item
            return
        flow = item.flow
        self._db.execute(
            f"INSERT INTO queued (flow_key, seq, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self.name, self._queues.next_seq(), item.request_id, item.partition, item.run_id, item.value,
             item.call_step_index, item.lease_ms, int(item.apart), flow.rate, flow.period_ms, flow.parallelism),
        )  # fmt: skip
        self._on_disk += 1
        self._queues.spilled += 1

    def remove(self, request_id: str) -> Queued | None:
        item = self._head.pop(request_id, None)
        if item is not None or not self._on_disk:
            return item
        row = self._row(request_id)
        if row is None:
            return None
        self._db.execute("DELETE FROM queued WHERE flow_key = ? AND request_id = ?", (self.name, request_id))
        self._on_disk -= 1
        return self._item(row)

    def head(self) -> Queued | None:
        if not self._head and self._on_disk:
            self._refill()
        return next(iter(self._head.values()), None)

    def popleft(self) -> Queued:
        item = self._head.popitem(last=False)[1]
        if len(self._head) < self._queues.head // 2 and self._on_disk:
            self._refill()
        return item

    def clear(self) -> None:
        self._head.clear()
        if self._on_disk:
            self._db.execute("DELETE FROM queued WHERE flow_key = ?", (self.name,))
            self._on_disk = 0

    def _refill(self) -> None:
        """Take the earliest requests on disk into memory, behind those there (all arrived before them)."""
        rows = self._db.execute(
            f"SELECT seq, {_COLUMNS} FROM queued WHERE flow_key = ? ORDER BY seq LIMIT ?",
            (self.name, self._queues.head - len(self._head)),
        ).fetchall()
        if not rows:
            return
        self._db.execute("DELETE FROM queued WHERE flow_key = ? AND seq <= ?", (self.name, rows[-1][0]))
        self._on_disk -= len(rows)
        for row in rows:
            item = self._item(row[1:])
            self._head[item.request_id] = item

    def _row(self, request_id: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = self._db.execute(
            f"SELECT {_COLUMNS} FROM queued WHERE flow_key = ? AND request_id = ?",
            (self.name, request_id),
        ).fetchone()
        return row

    def _item(self, row: tuple[Any, ...]) -> Queued:
        request_id, partition, run_id, value, call_step_index, lease_ms, apart, rate, period_ms, parallelism = row
        return Queued(
            request_id=request_id,
            flow=FlowControl(key=self.name, rate=rate, period_ms=period_ms, parallelism=parallelism),
            partition=partition,
            run_id=run_id,
            value=bytes(value),
            call_step_index=call_step_index,
            lease_ms=lease_ms,
            apart=bool(apart),
        )
