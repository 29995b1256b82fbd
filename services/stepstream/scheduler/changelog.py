"""The scheduler's changelog (the compacted ``timers`` topic) in a file that outlives a restart.

Everything the scheduler holds — requests not yet due, flow-control queues, each key's slots — is in
``timers``, and a new owner of a ``schedule`` partition restores it from there. Read from the
beginning, that took ~30 s for a million sleeping runs on every restart. :class:`TimersFile` mirrors
the topic (store/changelog.py) with, beside each request, when it is due, so that:

- a scheduler restarting on the same disk reads from Kafka only what was written since it stopped;
- a request due later than what memory holds goes from the file to the file of far timers
  (scheduler/tiered.py) as it is, without being decoded; only what is due soon, the flow-control
  queues and slots are decoded into memory.

Each record read from Kafka is decoded once, when it enters the file: one that cannot be read is
dead-lettered then and kept out, so the file holds only what the scheduler can restore.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from stepstream.store.changelog import ChangelogFile, Written

# partition, key, offset, value, due time (None for a flow-control slot)
Entry = tuple[int, bytes, int, bytes, int | None]

_ENTRIES = """
CREATE TABLE IF NOT EXISTS entries (
    partition INTEGER NOT NULL,
    key BLOB NOT NULL,           -- a request id (or a flow-control slot's)
    offset INTEGER NOT NULL,     -- of its latest write: a restore keeps the order of arrival
    value BLOB NOT NULL,
    due_ms INTEGER,              -- a request's due time; NULL for a flow-control slot
    PRIMARY KEY (partition, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_in_order ON entries (partition, offset);
"""


class TimersFile(ChangelogFile):
    """The latest entry of each request and slot of ``timers``, per partition (see the module)."""

    _SCHEMA = _ENTRIES
    _TABLES = ("entries",)

    def __init__(self, path: Path | None, *, topic: str) -> None:
        super().__init__(path, topic=topic, prefix="stepstream-scheduler-timers-")

    def _put(self, record: Written) -> None:
        if record.value is None:
            self._db.execute("DELETE FROM entries WHERE partition = ? AND key = ?", (record.partition, record.key))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?)",
                (record.partition, record.key, record.offset, record.value, record.at_ms),
            )

    def entries(self, partitions: Iterable[int], chunk: int = 5_000) -> Iterator[list[Entry]]:
        """The entries of ``partitions``, each partition's in the order of their latest writes, in
        chunks of at most ``chunk`` (a million never all in memory)."""
        for partition in sorted(partitions):
            cursor = self._db.execute(
                "SELECT key, offset, value, due_ms FROM entries WHERE partition = ? ORDER BY offset", (partition,)
            )
            while rows := cursor.fetchmany(chunk):
                yield [(partition, bytes(key), int(offset), bytes(value), due) for key, offset, value, due in rows]

    def count(self, partition: int) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM entries WHERE partition = ?", (partition,)).fetchone()
        return int(row[0])
