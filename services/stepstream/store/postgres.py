"""The query store on PostgreSQL, shared by every api replica (``STEPSTREAM_DATABASE=postgresql://…``).

With SQLite, each api replica builds its own store from ``events`` (decision 0003): at ten million
runs that is tens of GB and hours per replica before it is ready. On PostgreSQL one store serves
them all (decision 0010): **one indexer writes** — whichever replica holds the store's advisory lock
(:meth:`PostgresQueryStore.lead`); the others only read, and take the lock over if its holder's
session ends — and **every replica reads**. The indexer announces the runs each batch changed with
``NOTIFY``, and each other replica ``LISTEN``s (:meth:`PostgresQueryStore.listen`), so requests waiting
on a run wake in any replica, not only in the one that indexes. It is still rebuilt from Kafka: an empty
database is filled from the topics' beginning, as a new SQLite file is.

The SQL is :class:`~stepstream.store.sqlite.QueryStore`'s, which keeps to what both databases
understand; this module supplies psycopg connections behind the small part of the ``sqlite3``
interface that class uses, with its ``?`` placeholders turned into psycopg's ``%s``.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from stepstream.store.sqlite import _ADDED_RUN_COLUMNS, _INDEXES, _TABLES, QueryStore

log = logging.getLogger(__name__)

SCHEMES = ("postgresql://", "postgres://")
# The advisory lock the indexing replica holds (any number that other applications of the database
# do not use; "stepstream" in ASCII, folded into 63 bits).
INDEXER_LOCK = 0x73746570737472
CHANNEL = "stepstream_runs"  # and the store's schema: deployments that share a database do not hear each other
_NOTIFY_BYTES = 7_000  # PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more


def is_postgres(url: str) -> bool:
    return url.startswith(SCHEMES)


@functools.lru_cache(maxsize=256)
def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")  # no literal ? in the store's SQL


class _Cursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        self._cursor.execute(_placeholders(sql), tuple(parameters))
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Cursor:
        self._cursor.executemany(_placeholders(sql), list(rows))
        return self

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount)


class _Connection:
    """A psycopg connection in autocommit mode, where ``BEGIN`` and ``COMMIT`` are statements, as the
    store sends them to SQLite."""

    def __init__(self, url: str) -> None:
        import psycopg  # an optional dependency: only a store on PostgreSQL needs it

        self.raw = psycopg.connect(url, autocommit=True)

    def cursor(self) -> _Cursor:
        return _Cursor(self.raw.cursor())

    def execute(self, sql: str, parameters: Sequence[Any] = ()) -> _Cursor:
        return self.cursor().execute(sql, parameters)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> _Cursor:
        return self.cursor().executemany(sql, rows)

    def executescript(self, script: str) -> None:
        self.raw.execute(script)  # several statements, no parameters: one simple query

    def close(self) -> None:
        self.raw.close()


class PostgresQueryStore(QueryStore):
    # READ COMMITTED sees a new state at each statement: a read of several needs one snapshot.
    _SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
    shared = True

    def __init__(self, url: str) -> None:
        import psycopg

        self.path = url
        # Not OperationalError: a lost connection is not the event's fault (the api stops, and starts again).
        self.value_errors = (psycopg.DataError, psycopg.IntegrityError)
        connection = _Connection(url)
        # Two replicas starting together would both create the tables: one at a time.
        connection.execute("SELECT pg_advisory_lock(?)", (INDEXER_LOCK + 1,))
        try:
            connection.executescript(_TABLES)
            for column, declaration in _ADDED_RUN_COLUMNS.items():
                connection.execute(f"ALTER TABLE runs ADD COLUMN IF NOT EXISTS {column} {declaration}")
            connection.executescript(_INDEXES)
        finally:
            connection.execute("SELECT pg_advisory_unlock(?)", (INDEXER_LOCK + 1,))
        self._connection: Any = connection
        (schema,) = connection.execute("SELECT current_schema()").fetchone()
        self.channel = f"{CHANNEL}_{re.sub(r'[^a-z0-9_]', '_', str(schema).lower())}"[:63]
        self._lock = threading.Lock()
        self._reader: Any = _Connection(url)
        self._read_lock = threading.Lock()
        self._closed = threading.Event()  # ends the listener's loop, which closes its own connection
        self._leading = False

    def close(self) -> None:
        self._closed.set()
        super().close()

    # -- one indexer ----------------------------------------------------------------------------

    def lead(self) -> bool:
        """Whether this replica's indexer writes the store: it takes the advisory lock if no other
        session holds it, and keeps it for as long as its connection lives."""
        if not self._leading:
            with self._lock:
                row = self._connection.execute("SELECT pg_try_advisory_lock(?)", (INDEXER_LOCK,)).fetchone()
            self._leading = bool(row[0])
        return self._leading

    def announce(self, run_ids: Iterable[str]) -> None:
        """Tell every replica's listener which runs the last committed batch changed."""
        chunk: list[str] = []
        size = 0
        with self._lock:
            for run_id in sorted(set(run_ids)):
                if chunk and size + len(run_id) + 4 > _NOTIFY_BYTES:
                    self._connection.execute("SELECT pg_notify(?, ?)", (self.channel, json.dumps(chunk)))
                    chunk, size = [], 0
                chunk.append(run_id)
                size += len(run_id) + 4
            if chunk:
                self._connection.execute("SELECT pg_notify(?, ?)", (self.channel, json.dumps(chunk)))

    def listen(self, changed: Callable[[list[str]], None], stop: threading.Event) -> None:
        """Call ``changed`` with the run ids of each announcement another process made, until ``stop``
        is set or the store is closed; blocks (run it in a thread of its own). This process's own
        announcements are skipped: its indexer wakes its requests itself, at once."""
        own = self._connection.raw.info.backend_pid
        import psycopg

        def stopped() -> bool:
            return stop.is_set() or self._closed.is_set()

        while not stopped():
            try:
                listener = _Connection(self.path)
                try:
                    listener.execute(f'LISTEN "{self.channel}"')
                    while not stopped():
                        for notification in listener.raw.notifies(timeout=0.5):
                            if notification.pid != own:
                                changed(json.loads(notification.payload))
                finally:
                    listener.close()
            except (psycopg.OperationalError, OSError):
                if stopped():
                    return
                # Until it is back, requests waiting on runs here wake at their deadline only.
                log.warning("lost the query store's announcements; listening again in 1 s", exc_info=True)
                stop.wait(1)
