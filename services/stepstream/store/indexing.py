"""How one event changes the query store's derived tables: ``runs``, ``steps`` and ``waiters``.

:class:`_Indexing` applies an event that :meth:`~stepstream.store.sqlite.QueryStore.apply` has just
inserted into ``events``, inside that transaction. It is apart from the store (its schema, its
transactions, its reads) because it alone knows what each kind of event means for a run's row and
steps, as the core's ``evolve`` does for a run's state; its SQL is the subset SQLite and PostgreSQL
share, as the store's is.

The run's status follows the same rule as the core's ``RunState.status``: running while a replay
delivery is in flight or a ``run`` or ``call`` step is pending, else waiting while a wait, notify or
invoke step is pending, else sleeping while a sleep is pending; scheduled from a start put off (a
trigger's delay) until its first delivery's answer, with ``wake_at_ms`` when that delivery is due.
"""

from __future__ import annotations

import json
from typing import Any, assert_never

from stepstream.core import (
    CallRetried,
    CallStarted,
    Event,
    EventReceived,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
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
from stepstream.store.rows import ENDED_STATUSES


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
