"""Temporary SQLite files for a service's own state (the projector's runs when no state folder is
set, the scheduler's timers due later): made in a folder, removed with their owner."""

from __future__ import annotations

import contextlib
import os
import tempfile
import weakref
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
