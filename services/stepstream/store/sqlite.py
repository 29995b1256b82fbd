"""The query store on SQLite (one file, WAL mode, so the api reads while the indexer writes).

Four tables from ``events``: ``events`` (each run's history as the api shows it), ``runs`` (one row
per run), ``steps`` (each run's steps, pending or completed) and ``waiters`` (which runs wait on which
event id). Every write is idempotent by (run id, seq): an event is inserted once, and the derived
tables change only for an event newer than the run's ``last_seq``, so re-reading ``events`` after a
crash changes nothing and a run's row never moves back.

A fifth, ``flow_keys``, mirrors the compacted ``flow`` topic: each flow-control key's state as its
scheduler last published it, the later record replacing the earlier (as compaction does), so
re-reading the topic after a crash ends in the same rows.

Reads do not wait for the indexer's writes: a store on a file has a connection for reads beside the
one the indexer writes with, and in WAL mode a read sees the last committed transaction while the
next one is being written. (An in-memory store, for tests, has one connection for both.)

``positions`` holds how far the indexer has read each partition of ``events`` and ``flow``: the
store, not a consumer group, knows what it holds, so every api replica keeps a store of its own and
a new or wiped one reads the topics again from their beginning.

Every table is created if missing when the store opens, so a store written by an older indexer gains
the tables (and the columns of ``runs``) added since.

How an event changes the derived tables is in :mod:`stepstream.store.indexing`; the api's reads
are in :mod:`stepstream.store.reads`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from stepstream.core import Event, FlowKeyState
from stepstream.store.history import event_to_dict
from stepstream.store.indexing import _Indexing
from stepstream.store.reads import _Reads

_TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    workflow TEXT NOT NULL,
    url TEXT NOT NULL,
    status TEXT NOT NULL,
    label TEXT,
    payload TEXT NOT NULL,
    output TEXT,
    error_type TEXT,
    error_message TEXT,
    steps BIGINT NOT NULL DEFAULT 0,
    wake_at_ms BIGINT,
    created_at_ms BIGINT NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    last_seq BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    step_index BIGINT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    output TEXT,
    started_at_ms BIGINT NOT NULL,
    completed_at_ms BIGINT,
    wake_at_ms BIGINT,
    detail TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_id, step_index)
);
CREATE TABLE IF NOT EXISTS waiters (
    event_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    step_index BIGINT NOT NULL,
    timeout_at_ms BIGINT NOT NULL,
    since_ms BIGINT NOT NULL,
    PRIMARY KEY (event_id, run_id, step_index)
);
CREATE TABLE IF NOT EXISTS flow_keys (
    key TEXT PRIMARY KEY,
    queued BIGINT NOT NULL,
    in_flight BIGINT NOT NULL,
    starts_in_window BIGINT NOT NULL,
    rate BIGINT,
    period_ms BIGINT NOT NULL,
    parallelism BIGINT,
    updated_at_ms BIGINT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (
    topic TEXT NOT NULL,
    partition BIGINT NOT NULL,
    next_offset BIGINT NOT NULL,
    PRIMARY KEY (topic, partition)
);
"""

# Columns added to ``runs`` after its first release: a store written by an older indexer gains them
# (with these defaults) when it is opened.
_ADDED_RUN_COLUMNS = {
    "parent_run_id": "TEXT",
    "dead_letter": "BIGINT NOT NULL DEFAULT 0",
    "cancel_reason": "TEXT",
    "replay_delivery_id": "TEXT",  # the replay delivery in flight, if any: it keeps the run running
}

_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at_ms DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at_ms DESC);
CREATE INDEX IF NOT EXISTS runs_by_workflow ON runs (workflow, created_at_ms DESC);
CREATE INDEX IF NOT EXISTS runs_in_dead_letter ON runs (created_at_ms DESC, run_id DESC) WHERE dead_letter = 1;
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS waiters_by_run ON waiters (run_id);
CREATE INDEX IF NOT EXISTS waiters_by_timeout ON waiters (timeout_at_ms);
CREATE INDEX IF NOT EXISTS runs_ended ON runs (updated_at_ms) WHERE status IN ('completed', 'failed', 'cancelled');
"""


class QueryStore(_Reads):
    """The store. Its methods may be called from any thread: the indexer writes from a worker thread
    while the api reads on its event loop (lookups by key) and in worker threads (lists, histories).

    The SQL is the subset SQLite and PostgreSQL share (``INSERT … ON CONFLICT``, ``?`` placeholders
    that :mod:`stepstream.store.postgres` turns into psycopg's), so one class serves both."""

    # How a read of several statements sees one committed state: SQLite's deferred transaction does.
    _SNAPSHOT = "BEGIN"
    # Every api replica has a store of its own, so its indexer always writes it.
    shared = False
    # What the database raises for a value it cannot take: the indexer sets that event aside.
    value_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        in_memory = self.path == ":memory:"
        if not in_memory:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._connection.executescript(_TABLES)
        present = {row[1] for row in self._connection.execute("PRAGMA table_info(runs)")}
        for column, declaration in _ADDED_RUN_COLUMNS.items():
            if column not in present:
                self._connection.execute(f"ALTER TABLE runs ADD COLUMN {column} {declaration}")
        self._connection.executescript(_INDEXES)
        self._lock = threading.Lock()  # the writing connection: one transaction at a time
        if in_memory:  # another connection would open another, empty, database
            self._reader, self._read_lock = self._connection, self._lock
        else:
            # A lookup by key on the api's event loop then takes microseconds, instead of waiting for the
            # indexer's transaction (a batch of up to a thousand events) to commit.
            self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._reader.execute("PRAGMA query_only=1")
            self._read_lock = threading.Lock()

    def close(self) -> None:
        if self._reader is not self._connection:
            self._reader.close()
        self._connection.close()

    def lead(self) -> bool:
        """Whether this process's indexer writes the store: always, for a store of its own."""
        return True

    def announce(self, run_ids: Iterable[str]) -> None:
        """Tell other processes which runs changed: none reads a store of this process's own."""

    # -- writes (the indexer) -------------------------------------------------------------------

    def apply(self, events: Iterable[Event]) -> None:
        """Apply events in one SQLite transaction; ones already applied are skipped."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            try:
                for event in events:
                    inserted = cursor.execute(
                        "INSERT INTO events (run_id, seq, type, at_ms, data) VALUES (?, ?, ?, ?, ?)"
                        " ON CONFLICT (run_id, seq) DO NOTHING",
                        (event.run_id, event.seq, type(event).__name__, event.at_ms, json.dumps(event_to_dict(event))),
                    ).rowcount
                    if inserted:
                        _Indexing(cursor, event).apply()
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise

    def apply_flow(self, changes: Iterable[tuple[str, FlowKeyState | None]]) -> None:
        """Keep each key's latest state, in one transaction: for each (key, state) in topic order, the
        state replaces the key's row, or, if None (a tombstone on ``flow``), the key is forgotten."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            try:
                for key, state in changes:
                    if state is None:
                        cursor.execute("DELETE FROM flow_keys WHERE key = ?", (key,))
                        continue
                    cursor.execute(
                        "INSERT INTO flow_keys (key, queued, in_flight, starts_in_window, rate, period_ms,"
                        " parallelism, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET"
                        " queued = excluded.queued, in_flight = excluded.in_flight,"
                        " starts_in_window = excluded.starts_in_window, rate = excluded.rate,"
                        " period_ms = excluded.period_ms, parallelism = excluded.parallelism,"
                        " updated_at_ms = excluded.updated_at_ms",
                        (
                            key,
                            state.queued,
                            state.in_flight,
                            state.starts_in_window,
                            state.rate,
                            state.period_ms,
                            state.parallelism,
                            state.updated_ms,
                        ),
                    )
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise

    def save_positions(self, positions: Mapping[tuple[str, int], int]) -> None:
        """Record the next offset to read of each (topic, partition), after what they gave was applied."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            cursor.executemany(
                "INSERT INTO positions (topic, partition, next_offset) VALUES (?, ?, ?)"
                " ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [(topic, partition, offset) for (topic, partition), offset in positions.items()],
            )
            cursor.execute("COMMIT")

    def forget_ended_before(self, cutoff_ms: int, limit: int = 1_000) -> int:
        """Remove up to ``limit`` runs that ended before ``cutoff_ms`` (their row, steps and history),
        oldest first; returns how many. A run in the dead-letter list stays until an operator acts:
        its resume and restart are answered from here. (The retention of the store, not of Kafka:
        ``events`` keeps the histories for as long as it is configured to.)"""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            try:
                run_ids = [
                    run_id
                    for (run_id,) in cursor.execute(
                        "SELECT run_id FROM runs WHERE status IN ('completed', 'failed', 'cancelled')"
                        " AND dead_letter = 0 AND updated_at_ms < ? ORDER BY updated_at_ms LIMIT ?",
                        (cutoff_ms, limit),
                    ).fetchall()
                ]
                for table in ("events", "steps", "waiters", "runs"):
                    cursor.executemany(f"DELETE FROM {table} WHERE run_id = ?", [(run_id,) for run_id in run_ids])
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise
        return len(run_ids)

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read of each (topic, partition) read so far."""
        with self._lock:
            rows = self._connection.execute("SELECT topic, partition, next_offset FROM positions").fetchall()
        return {(topic, partition): offset for topic, partition, offset in rows}
