"""The query store's reads, for the api: a run, pages and counts of runs, a run's steps and history
(whole, or a page as of one snapshot), the runs waiting on an event id, and the flow-control keys.

:class:`_Reads` is the half of :class:`~stepstream.store.sqlite.QueryStore` that the api calls. It is
apart from the schema and the indexer's writes because it only reads, on what each store (SQLite's,
PostgreSQL's) sets up for reading as its database needs: the connection ``_reader``, used under
``_read_lock``, and ``_SNAPSHOT``, which makes a read of several statements see one committed state.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from typing import Any

from stepstream.store.rows import RUN_STATUSES, FlowKeyRow, HistoryPage, RunRow, StepRow, WaiterRow


class _Reads:
    """The reads of :class:`~stepstream.store.sqlite.QueryStore`, which sets up what they read through."""

    _SNAPSHOT: str
    _reader: sqlite3.Connection
    _read_lock: threading.Lock

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
