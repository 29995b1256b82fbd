"""The query store on SQLite (one file, WAL mode, so the api reads while the indexer writes).

Every write is idempotent by (run id, seq): events are inserted once, and a run's row only moves
forward, so re-reading ``events`` after a crash changes nothing.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from stepstream.core import (
    Event,
    RunCompleted,
    RunFailed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
)

_JSON_FIELDS = ("payload", "output")
REDACTED = "<redacted>"

_SCHEMA = """
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
    steps INTEGER NOT NULL DEFAULT 0,
    wake_at_ms INTEGER,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL,
    last_seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at_ms DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, created_at_ms DESC);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data: user values (payload, output) inline as JSON, not as text."""
    data = {key: _plain(value) for key, value in dataclasses.asdict(event).items()}
    for name in _JSON_FIELDS:
        if isinstance(data.get(name), str):
            data[name] = json.loads(data[name])
    if "headers" in data:
        # Headers travel with every delivery and often carry credentials: the history shows
        # which were set, not their values.
        data["headers"] = {name: REDACTED for name, _ in data["headers"]}
    return {"type": type(event).__name__, **data}


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRow:
    run_id: str
    workflow: str
    url: str
    status: str
    label: str | None
    payload: Any
    output: Any
    error: dict[str, str] | None
    steps: int
    wake_at_ms: int | None
    created_at_ms: int
    updated_at_ms: int
    last_seq: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class QueryStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        self._connection.execute("PRAGMA busy_timeout=5000")
        self._connection.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        self._connection.close()

    # -- writes (the indexer) -------------------------------------------------------------------

    def apply(self, events: list[Event]) -> None:
        """Apply events in one SQLite transaction; ones already applied are skipped."""
        with self._lock:
            cursor = self._connection.cursor()
            cursor.execute("BEGIN")
            try:
                for event in events:
                    inserted = cursor.execute(
                        "INSERT OR IGNORE INTO events (run_id, seq, type, at_ms, data) VALUES (?, ?, ?, ?, ?)",
                        (event.run_id, event.seq, type(event).__name__, event.at_ms, json.dumps(event_to_dict(event))),
                    ).rowcount
                    if inserted:
                        self._apply_to_run(cursor, event)
                cursor.execute("COMMIT")
            except BaseException:
                cursor.execute("ROLLBACK")
                raise

    @staticmethod
    def _apply_to_run(cursor: sqlite3.Cursor, event: Event) -> None:
        if isinstance(event, RunStarted):
            cursor.execute(
                "INSERT OR IGNORE INTO runs (run_id, workflow, url, status, label, payload, created_at_ms,"
                " updated_at_ms, last_seq) VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
                (
                    event.run_id,
                    event.workflow,
                    event.url,
                    event.label,
                    event.payload,
                    event.at_ms,
                    event.at_ms,
                    event.seq,
                ),
            )
            return
        changes: dict[str, Any] = {}
        if isinstance(event, StepScheduled):
            changes = {"status": "running", "wake_at_ms": None}
        elif isinstance(event, StepCompleted):
            changes = {"steps": event.step_index + 1}
        elif isinstance(event, SleepStarted):
            changes = {"status": "sleeping", "wake_at_ms": event.wake_at_ms}
        elif isinstance(event, StepFailed):
            changes = {"error_type": event.error.type, "error_message": event.error.message}
        elif isinstance(event, RunCompleted):
            changes = {"status": "completed", "output": event.output, "error_type": None, "error_message": None}
        elif isinstance(event, RunFailed):
            changes = {"status": "failed", "error_type": event.error.type, "error_message": event.error.message}
        assignments = ", ".join(f"{column} = ?" for column in changes)
        prefix = f"{assignments}, " if assignments else ""
        cursor.execute(
            f"UPDATE runs SET {prefix}updated_at_ms = ?, last_seq = ? WHERE run_id = ? AND last_seq < ?",
            (*changes.values(), event.at_ms, event.seq, event.run_id, event.seq),
        )

    # -- reads (the api) --------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunRow | None:
        with self._lock:
            row = self._connection.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return _run_row(row) if row else None

    def list_runs(
        self,
        *,
        status: str | None = None,
        workflow: str | None = None,
        label: str | None = None,
        limit: int = 50,
        before: tuple[int, str] | None = None,
    ) -> list[RunRow]:
        """Newest first. ``before`` is the (created_at_ms, run_id) of the last row of the previous page."""
        clauses: list[str] = []
        parameters: list[Any] = []
        for column, value in (("status", status), ("workflow", workflow), ("label", label)):
            if value is not None:
                clauses.append(f"{column} = ?")
                parameters.append(value)
        if before is not None:
            clauses.append("(created_at_ms < ? OR (created_at_ms = ? AND run_id < ?))")
            parameters.extend([before[0], before[0], before[1]])
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY created_at_ms DESC, run_id DESC LIMIT ?"
        with self._lock:
            rows = self._connection.execute(query, (*parameters, limit)).fetchall()
        return [_run_row(row) for row in rows]

    def history(self, run_id: str, *, after_seq: int = 0) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT data FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after_seq)
            ).fetchall()
        return [json.loads(data) for (data,) in rows]


_RUN_COLUMNS = (
    "run_id, workflow, url, status, label, payload, output, error_type, error_message, steps, wake_at_ms,"
    " created_at_ms, updated_at_ms, last_seq"
)


def _run_row(row: tuple[Any, ...]) -> RunRow:
    (run_id, workflow, url, status, label, payload, output, error_type, error_message, steps, wake_at_ms,
     created_at_ms, updated_at_ms, last_seq) = row  # fmt: skip
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
    )
