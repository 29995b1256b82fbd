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

The run's status follows the same rule as the core's ``RunState.status``: running while a replay
delivery is in flight or a ``run`` or ``call`` step is pending, else waiting while a wait, notify or
invoke step is pending, else sleeping while a sleep is pending; scheduled from a start put off (a
trigger's delay) until its first delivery's answer, with ``wake_at_ms`` when that delivery is due.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, assert_never

from stepstream.core import (
    CallRetried,
    CallStarted,
    Event,
    EventReceived,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    FlowKeyState,
    InvokeStarted,
    NotifyStarted,
    Recovery,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepKind,
    StepScheduled,
    WaitStarted,
    WaitTimedOut,
)
from stepstream.store.history import event_to_dict
from stepstream.store.rows import ENDED_STATUSES, RUN_STATUSES, FlowKeyRow, HistoryPage, RunRow, StepRow, WaiterRow

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


def _sql_list(*kinds: StepKind) -> str:
    return "(" + ", ".join(f"'{kind.value}'" for kind in kinds) + ")"


# How a pending step's kind shows in the run's status (as ``core.state.status_of`` has it).
_SLEEP_KINDS = _sql_list(StepKind.SLEEP, StepKind.SLEEP_UNTIL)
_RUNNING_KINDS = _sql_list(StepKind.RUN, StepKind.CALL)
_WAITING_KINDS = _sql_list(StepKind.WAIT_FOR_EVENT, StepKind.NOTIFY, StepKind.INVOKE)


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def _timeout_output() -> str:
    return '{"timeout":true,"data":null}'


def _received_output(data: str) -> str:
    return f'{{"timeout":false,"data":{data}}}'


class _Indexing:
    """Applies one event to the derived tables, inside the caller's transaction."""

    def __init__(self, cursor: Any, event: Event) -> None:
        self.cursor = cursor
        self.event = event
        self.run_id = event.run_id
        self.changes: dict[str, Any] = {}

    def execute(self, sql: str, parameters: tuple[Any, ...] = ()) -> Any:
        return self.cursor.execute(sql, parameters)

    def apply(self) -> None:
        event = self.event
        if isinstance(event, RunStarted):
            self._start(event)
            return
        current = self.execute(
            "SELECT last_seq, status, replay_delivery_id FROM runs WHERE run_id = ?", (self.run_id,)
        ).fetchone()
        if current is None or current[0] >= event.seq:
            return  # older than what the row shows (or a run we never saw start): history only
        last_seq, status, replay = current
        starts_at: int | None = None
        match event:
            case RunStarted():
                pass  # a second start of the same run id: the first one stands
            case StepScheduled():
                # A delivery that executes one parallel `run` step leaves its step pending; either
                # kind of delivery ends the replay delivery before it (as ``evolve`` does).
                replay = None if event.execute_only else event.delivery_id
                if last_seq == 1 and event.not_before_ms > event.at_ms:
                    starts_at = event.not_before_ms  # the run's first delivery (it follows RunStarted), put off
                if event.execute_only:
                    self._pending(event.step_index, event.name or "", StepKind.RUN.value, {})
            case StepCompleted():
                self._completed(event.step_index, event.name, event.kind.value, event.output)
            case StepFailed():
                self.changes.update(error_type=event.error.type, error_message=event.error.message)
                if event.delivery_id == replay:
                    replay = None
            case SleepStarted():
                replay = None
                self._pending(
                    event.step_index,
                    event.name,
                    event.kind.value,
                    {"wake_at_ms": event.wake_at_ms},
                    wake_at_ms=event.wake_at_ms,
                )
            case CallStarted():
                replay = None
                call = {"method": event.call.method, "url": event.call.url, "attempt": 1}
                self._pending(event.step_index, event.name, StepKind.CALL.value, call)
            case CallRetried():
                self._update_detail(
                    event.step_index,
                    {"attempt": event.attempt + 1, "last_error": event.error, "retry_at_ms": event.retry_at_ms},
                )
            case WaitStarted():
                replay = None
                wait = {"event_id": event.event_id, "timeout_at_ms": event.timeout_at_ms}
                self._pending(event.step_index, event.name, StepKind.WAIT_FOR_EVENT.value, wait)
                self.execute(
                    "INSERT INTO waiters (event_id, run_id, step_index, timeout_at_ms, since_ms)"
                    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (event_id, run_id, step_index) DO UPDATE SET"
                    " timeout_at_ms = excluded.timeout_at_ms, since_ms = excluded.since_ms",
                    (event.event_id, self.run_id, event.step_index, event.timeout_at_ms, event.at_ms),
                )
            case EventReceived() | WaitTimedOut():
                output = _received_output(event.data) if isinstance(event, EventReceived) else _timeout_output()
                self._completed(event.step_index, None, StepKind.WAIT_FOR_EVENT.value, output)
                self.execute(
                    "DELETE FROM waiters WHERE event_id = ? AND run_id = ? AND step_index = ?",
                    (event.event_id, self.run_id, event.step_index),
                )
            case NotifyStarted():
                replay = None
                self._pending(event.step_index, event.name, StepKind.NOTIFY.value, {"event_id": event.event_id})
            case InvokeStarted():
                replay = None
                invoke = {"child_run_id": event.child_run_id, "workflow": event.workflow}
                self._pending(event.step_index, event.name, StepKind.INVOKE.value, invoke)
            case RunCompleted():
                status, replay = "completed", None
                self.changes.update(output=event.output, error_type=None, error_message=None)
                self._stop_waiting()
            case RunFailed():
                status, replay = "failed", None
                self.changes.update(error_type=event.error.type, error_message=event.error.message, dead_letter=1)
                self._stop_waiting()
            case RunCancelled():
                status, replay = "cancelled", None
                self.changes.update(cancel_reason=event.reason)
                self._stop_waiting()
            case RunRecovered():
                self.changes.update(dead_letter=0)
                if event.action is not Recovery.DELETE:
                    # Resumed or restarted: pending steps were set aside (a new delivery plans them
                    # again); a restart sets the results aside too.
                    status, replay = "running", None
                    self.changes.update(output=None, error_type=None, error_message=None, cancel_reason=None)
                    only_pending = " AND status = 'pending'" if event.action is Recovery.RESUME else ""
                    self.execute(f"DELETE FROM steps WHERE run_id = ?{only_pending}", (self.run_id,))
                    self._stop_waiting()
            case ResultIgnored() | FailureHandlerScheduled() | FailureHandled() | FailureHandlerFailed():
                pass  # kept in the history; the run's row does not change
            case _:
                assert_never(event)
        self._update_run(status, replay, starts_at)

    def _start(self, event: RunStarted) -> None:
        self.execute(
            "INSERT INTO runs (run_id, workflow, url, status, label, payload, created_at_ms,"
            " updated_at_ms, last_seq, parent_run_id) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (run_id) DO NOTHING",
            (
                event.run_id,
                event.workflow,
                event.url,
                event.label,
                event.payload,
                event.at_ms,
                event.at_ms,
                event.seq,
                event.parent_run_id,
            ),
        )

    def _pending(
        self, index: int, name: str, kind: str, detail: dict[str, Any], *, wake_at_ms: int | None = None
    ) -> None:
        self.execute(
            "INSERT INTO steps (run_id, step_index, name, kind, status, output, started_at_ms,"
            " completed_at_ms, wake_at_ms, detail) VALUES (?, ?, ?, ?, 'pending', NULL, ?, NULL, ?, ?)"
            " ON CONFLICT (run_id, step_index) DO UPDATE SET name = excluded.name, kind = excluded.kind,"
            " status = 'pending', output = NULL, started_at_ms = excluded.started_at_ms, completed_at_ms = NULL,"
            " wake_at_ms = excluded.wake_at_ms, detail = excluded.detail",
            (self.run_id, index, name, kind, self.event.at_ms, wake_at_ms, _json(detail)),
        )

    def _completed(self, index: int, name: str | None, kind: str, output: str) -> None:
        """Record a step's result; ``name`` None keeps the name the pending step had."""
        at = self.event.at_ms
        self.execute(
            "INSERT INTO steps (run_id, step_index, name, kind, status, output, started_at_ms, completed_at_ms,"
            " detail) VALUES (?, ?, ?, ?, 'completed', ?, ?, ?, '{}')"
            " ON CONFLICT (run_id, step_index) DO UPDATE SET name = COALESCE(?, steps.name), kind = excluded.kind,"
            " status = 'completed', output = excluded.output, completed_at_ms = excluded.completed_at_ms",
            (self.run_id, index, name or "", kind, output, at, at, name),
        )

    def _update_detail(self, index: int, more: dict[str, Any]) -> None:
        row = self.execute(
            "SELECT detail FROM steps WHERE run_id = ? AND step_index = ?", (self.run_id, index)
        ).fetchone()
        if row is not None:
            detail = {**json.loads(row[0]), **more}
            self.execute(
                "UPDATE steps SET detail = ? WHERE run_id = ? AND step_index = ?", (_json(detail), self.run_id, index)
            )

    def _stop_waiting(self) -> None:
        self.execute("DELETE FROM waiters WHERE run_id = ?", (self.run_id,))

    def _update_run(self, status: str, replay: str | None, starts_at: int | None) -> None:
        completed, wake_at, running, waiting, sleeping = self.execute(
            "SELECT COALESCE(SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END), 0),"
            f" MIN(CASE WHEN status = 'pending' AND kind IN {_SLEEP_KINDS} THEN wake_at_ms END),"
            f" COALESCE(MAX(CASE WHEN status = 'pending' AND kind IN {_RUNNING_KINDS} THEN 1 ELSE 0 END), 0),"
            f" COALESCE(MAX(CASE WHEN status = 'pending' AND kind IN {_WAITING_KINDS} THEN 1 ELSE 0 END), 0),"
            f" COALESCE(MAX(CASE WHEN status = 'pending' AND kind IN {_SLEEP_KINDS} THEN 1 ELSE 0 END), 0)"
            " FROM steps WHERE run_id = ?",
            (self.run_id,),
        ).fetchone()
        if status in ENDED_STATUSES:
            wake_at = None
        elif starts_at is not None:
            status, wake_at = "scheduled", starts_at
        elif replay is not None or running:
            status = "running"
        elif waiting:
            status = "waiting"
        elif sleeping:
            status = "sleeping"
        else:
            status = "running"  # nothing pending: a replay delivery is about to be scheduled
        changes = {
            **self.changes,
            "status": status,
            "replay_delivery_id": replay,
            "steps": completed,
            "wake_at_ms": wake_at,
            "updated_at_ms": self.event.at_ms,
            "last_seq": self.event.seq,
        }
        assignments = ", ".join(f"{column} = ?" for column in changes)
        self.execute(f"UPDATE runs SET {assignments} WHERE run_id = ?", (*changes.values(), self.run_id))


class QueryStore:
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

    # -- reads (the api) --------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow | None:
        with self._read_lock:
            row = self._reader.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def list_runs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        workflow: str | None = None,
        label: str | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
        dead_letter: bool | None = None,
        parent_run_id: str | None = None,
        limit: int = 50,
        before: tuple[int, str] | None = None,
    ) -> list[RunRow]:
        """Newest first; every filter given must hold. ``status`` is one status or any of several;
        ``created_after_ms`` is inclusive and ``created_before_ms`` exclusive. ``before`` is the
        (created_at_ms, run_id) of the last row of the previous page.
        """
        clauses: list[str] = []
        parameters: list[Any] = []
        if status is not None:
            statuses = [status] if isinstance(status, str) else list(dict.fromkeys(status))
            if not statuses:
                return []
            clauses.append(f"status IN ({', '.join('?' * len(statuses))})")
            parameters.extend(statuses)
        for clause, value in (
            ("workflow = ?", workflow),
            ("label = ?", label),
            ("parent_run_id = ?", parent_run_id),
            ("created_at_ms >= ?", created_after_ms),
            ("created_at_ms < ?", created_before_ms),
            ("dead_letter = ?", None if dead_letter is None else int(dead_letter)),
        ):
            if value is not None:
                clauses.append(clause)
                parameters.append(value)
        if before is not None:
            clauses.append("(created_at_ms < ? OR (created_at_ms = ? AND run_id < ?))")
            parameters.extend([before[0], before[0], before[1]])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
        with self._read_lock:
            rows = self._reader.execute(query, (*parameters, limit)).fetchall()
        return [_run_row(row) for row in rows]

    def count_runs(
        self,
        *,
        workflow: str | None = None,
        label: str | None = None,
        created_after_ms: int | None = None,
        created_before_ms: int | None = None,
    ) -> dict[str, int]:
        """How many runs have each status (every status, 0 for none), among those the filters select
        (as :meth:`list_runs` reads them)."""
        clauses: list[str] = []
        parameters: list[Any] = []
        for clause, value in (
            ("workflow = ?", workflow),
            ("label = ?", label),
            ("created_at_ms >= ?", created_after_ms),
            ("created_at_ms < ?", created_before_ms),
        ):
            if value is not None:
                clauses.append(clause)
                parameters.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._read_lock:
            rows = self._reader.execute(f"SELECT status, COUNT(*) FROM runs {where} GROUP BY status", parameters)
            counts = {str(status): int(count) for status, count in rows.fetchall()}
        return {status: counts.get(status, 0) for status in RUN_STATUSES}

    def dead_letter_count(self) -> int:
        """How many runs are in the dead-letter list (an index holds exactly them: cheap to count)."""
        with self._read_lock:
            row = self._reader.execute("SELECT COUNT(*) FROM runs WHERE dead_letter = 1").fetchone()
        return int(row[0])

    def steps(self, run_id: str) -> list[StepRow]:
        """The run's steps by index: completed ones and pending ones (a gap is a step not yet started)."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT step_index, name, kind, status, output, started_at_ms, completed_at_ms, detail FROM steps"
                " WHERE run_id = ? ORDER BY step_index",
                (run_id,),
            ).fetchall()
        return [
            StepRow(
                index=index,
                name=name,
                kind=kind,
                status=status,
                output=json.loads(output) if output is not None else None,
                started_at_ms=started_at_ms,
                completed_at_ms=completed_at_ms,
                detail=json.loads(detail),
            )
            for index, name, kind, status, output, started_at_ms, completed_at_ms, detail in rows
        ]

    def waiters(self, event_id: str) -> list[WaiterRow]:
        """The runs waiting on ``event_id`` now, as far as the indexer has read: longest waiting first."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT event_id, run_id, step_index, timeout_at_ms, since_ms FROM waiters WHERE event_id = ?"
                " ORDER BY since_ms, run_id, step_index",
                (event_id,),
            ).fetchall()
        return _waiter_rows(rows)

    def all_waiters(self, limit: int = 200) -> list[WaiterRow]:
        """Every run waiting on an event id, the next to time out first, up to ``limit``."""
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT event_id, run_id, step_index, timeout_at_ms, since_ms FROM waiters"
                " ORDER BY timeout_at_ms, event_id, run_id, step_index LIMIT ?",
                (limit,),
            ).fetchall()
        return _waiter_rows(rows)

    def flow_key(self, key: str) -> FlowKeyRow | None:
        with self._read_lock:
            row = self._reader.execute(f"SELECT {_FLOW_COLUMNS} FROM flow_keys WHERE key = ?", (key,)).fetchone()
        return FlowKeyRow(**dict(zip(_FLOW_FIELDS, row, strict=True))) if row else None

    def flow_keys(self, *, limit: int = 50, after: str | None = None) -> list[FlowKeyRow]:
        """The flow-control keys in order of key; ``after`` is the last key of the previous page."""
        where = "WHERE key > ?" if after is not None else ""
        parameters = (after, limit) if after is not None else (limit,)
        with self._read_lock:
            rows = self._reader.execute(
                f"SELECT {_FLOW_COLUMNS} FROM flow_keys {where} ORDER BY key LIMIT ?", parameters
            ).fetchall()
        return [FlowKeyRow(**dict(zip(_FLOW_FIELDS, row, strict=True))) for row in rows]

    def history(self, run_id: str, *, after_seq: int = 0) -> list[dict[str, Any]]:
        with self._read_lock:
            rows = self._reader.execute(
                "SELECT data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after_seq)
            ).fetchall()
        return [json.loads(data) for (data,) in rows]

    def history_page(self, run_id: str, *, after_seq: int = 0, limit: int = 1_000) -> HistoryPage:
        """The run's row, at most ``limit`` of its events after ``after_seq``, and the type of its last
        event, all as of one committed transaction of the indexer (what following a history needs)."""
        with self._read_lock:
            self._reader.execute(self._SNAPSHOT)  # one snapshot for the three reads
            try:
                row = self._reader.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
                rows = self._reader.execute(
                    "SELECT data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                    (run_id, after_seq, limit),
                ).fetchall()
                run = _run_row(row) if row else None
                last = None
                if run is not None:
                    last = self._reader.execute(
                        "SELECT type FROM events WHERE run_id = ? AND seq = ?", (run_id, run.last_seq)
                    ).fetchone()
            finally:
                self._reader.execute("COMMIT")
        return HistoryPage(run=run, events=[json.loads(data) for (data,) in rows], last_type=last[0] if last else None)


_RUN_COLUMNS = (
    "run_id, workflow, url, status, label, payload, output, error_type, error_message, steps, wake_at_ms,"
    " created_at_ms, updated_at_ms, last_seq, parent_run_id, dead_letter, cancel_reason"
)


_FLOW_FIELDS = ("key", "queued", "in_flight", "starts_in_window", "rate", "period_ms", "parallelism", "updated_at_ms")
_FLOW_COLUMNS = ", ".join(_FLOW_FIELDS)


def _waiter_rows(rows: list[Any]) -> list[WaiterRow]:
    return [
        WaiterRow(event_id=event, run_id=run_id, step_index=step_index, timeout_at_ms=timeout, since_ms=since)
        for event, run_id, step_index, timeout, since in rows
    ]


def _run_row(row: tuple[Any, ...]) -> RunRow:
    (run_id, workflow, url, status, label, payload, output, error_type, error_message, steps, wake_at_ms,
     created_at_ms, updated_at_ms, last_seq, parent_run_id, dead_letter, cancel_reason) = row  # fmt: skip
    return RunRow(
        run_id=run_id,
        workflow=workflow,
        url=url,
        status=status,
        label=label,
        payload=json.loads(payload),
        output=json.loads(output) if output is not None else None,
        error={"type": error_type, "message": error_message} if error_type else None,
        steps=steps,
        wake_at_ms=wake_at_ms,
        created_at_ms=created_at_ms,
        updated_at_ms=updated_at_ms,
        last_seq=last_seq,
        parent_run_id=parent_run_id,
        dead_letter=bool(dead_letter),
        cancel_reason=cancel_reason,
    )
