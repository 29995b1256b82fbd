"""SQLite files for a service's own state (the projector's runs and waiters, the scheduler's timers
due later and flow-control backlogs): temporary ones made in a folder and removed with their owner,
and the transactions they are written in."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path


def temporary_sqlite(owner: object, prefix: str, folder: str | None = None) -> Path:
    """A new empty file in ``folder`` (the system's temporary folder if None), removed with its
    companions when ``owner`` is garbage-collected or the process exits, if not before."""
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".sqlite3", dir=folder or None)
    os.close(handle)
    path = Path(name)
    weakref.finalize(owner, remove_sqlite, path)  # also when the owner is never closed (in tests)
    return path


def remove_sqlite(path: Path) -> None:
    """Remove a SQLite file and the write-ahead log and shared-memory files beside it."""
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()


@contextlib.contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One SQLite transaction on a connection in autocommit mode (``isolation_level=None``): many
    changes in one commit, not one each (a restore's million rows), undone together on an error."""
    db.execute("BEGIN")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
