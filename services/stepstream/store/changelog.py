"""A compacted changelog topic mirrored in a SQLite file, read again only from where it left off.

A service that keeps its state in a compacted topic (the projector its runs and waiter indexes, the
scheduler its pending timers and flow-control slots) restores a partition by reading that topic.
Reading it from the beginning on every restart costs time in proportion to everything ever pending
(a million sleeping runs' timers: half a minute). :class:`ChangelogFile` keeps, in a file, the latest
value of each key as the topic holds it and, for each partition, the offset to read from next:

- the service hands it the records it wrote once their transaction is committed, with their offsets
  (:meth:`ChangelogFile.written`), never before, so the file holds nothing Kafka does not;
- a restore (:func:`catch_up`) reads each partition from the file's position to the end of the
  topic, in chunks, so a replica restarting on the same disk reads only what it missed, and one on
  a new disk never holds the whole topic in memory.

The file is a cache of Kafka, never the truth. What does not match the topic is emptied and read again
from the beginning: a file of another layout or topic (another cluster or prefix), a position the
partition no longer holds (the topic was made again), or a partition this instance let go of longer
ago than a tombstone is sure to be kept (:data:`STALE_MS`).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiokafka import ConsumerRecord

from stepstream.config import KafkaSettings
from stepstream.kafka.clients import OffsetOutOfRange, stream_partitions
from stepstream.store.files import remove_sqlite, temporary_sqlite, transaction

log = logging.getLogger(__name__)

# A partition last seen longer ago than this is read again from the beginning: Kafka keeps a tombstone
# on a compacted topic for delete.retention.ms after compaction reaches it (a day by default; the
# topics keep the default), and a file that missed a tombstone since would keep what it deleted.
# "Seen": written or read by this instance, or held by it until it was let go (ChangelogFile.released).
STALE_MS = 12 * 3_600_000

_POSITIONS = """
CREATE TABLE IF NOT EXISTS positions (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL,  -- the offset of the topic to read from next
    seen_ms INTEGER NOT NULL       -- when this instance last knew the partition to be up to date
);
"""


def state_file(state_dir: str, kafka: KafkaSettings, kind: str) -> Path | None:
    """A file for a service's ``kind`` of state (``projector``, ``projector-waiters``, ``scheduler``):
    one per topic prefix and instance id in ``state_dir`` (a stable instance id, as a pod's name is
    across its container's restarts, finds its file again); None, for a temporary file, with no folder."""
    if not state_dir:
        return None
    name = f"{kafka.topic_prefix}{kind}-{kafka.instance_id}"
    return Path(state_dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.sqlite3"


@dataclass(frozen=True, slots=True)
class Written:
    """One record of a changelog, as the topic holds it: a tombstone's ``value`` is None."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None
    # A time the file keeps beside the record, for the owner to find it by: when a run ended (if it
    # may be compacted later, projector/retention.py), when a pending request is due (the scheduler).
    at_ms: int | None = None


class ChangelogFile:
    """The SQLite file of one changelog topic (see the module). Subclasses give their tables
    (``_SCHEMA``, ``_TABLES``, each with a ``partition`` column) and say how a record is kept (:meth:`_put`)."""

    _SCHEMA: str = ""
    _TABLES: tuple[str, ...] = ()
    LAYOUT: str = "1"  # the tables' layout; a file of another is emptied and read again from Kafka

    def __init__(self, path: Path | None, *, topic: str, prefix: str) -> None:
        """``path``: the SQLite file (made if missing); None: a temporary file, removed by :meth:`close`.
        ``topic``: the changelog's name; a file written for another topic is emptied."""
        self.topic = topic
        self._temporary: Path | None = None
        if path is None:
            path = self._temporary = temporary_sqlite(self, prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # isolation_level=None: transactions are begun and ended here, one per batch or chunk.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL without a sync on every commit: the file is a cache of Kafka, so losing its last
        # transactions to a power cut only means reading them again; WAL keeps it consistent.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        layout = self._db.execute("SELECT value FROM meta WHERE name = 'layout'").fetchone()
        if layout is None or layout[0] != self.LAYOUT:
            drops = "".join(f"DROP TABLE IF EXISTS {table}; " for table in (*self._TABLES, "positions"))
            self._db.executescript(f"{drops}DELETE FROM meta;")
            self._db.execute("INSERT INTO meta VALUES ('layout', ?)", (self.LAYOUT,))
        self._db.executescript(self._SCHEMA + _POSITIONS)
        stored = self._db.execute("SELECT value FROM meta WHERE name = 'topic'").fetchone()
        if stored is None or stored[0] != topic:
            with self._transaction():
                for table in (*self._TABLES, "positions"):
                    self._db.execute(f"DELETE FROM {table}")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('topic', ?)", (topic,))

    def close(self) -> None:
        self._db.close()
        if self._temporary is not None:
            remove_sqlite(self._temporary)

    def _put(self, record: Written) -> None:
        raise NotImplementedError

    def written(self, records: Iterable[Written], now_ms: int, *, read_to: Mapping[int, int] | None = None) -> None:
        """Records of the topic now committed (written by this instance, or read back in a restore),
        in offset order per partition: the file takes them, and each partition's position moves past
        them, or to ``read_to`` (a restore also moves past the records it could not read)."""
        with self._transaction():
            ends: dict[int, int] = dict(read_to or {})
            for record in records:
                self._put(record)
                ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            self._db.executemany(
                "INSERT INTO positions VALUES (?, ?, ?) ON CONFLICT (partition) "
                "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset), seen_ms = excluded.seen_ms",
                [(partition, end, now_ms) for partition, end in ends.items()],
            )

    def released(self, partitions: Iterable[int], now_ms: int) -> None:
        """This instance lets go of ``partitions`` (a rebalance, a stop): up to date until now. From now
        on another may write to them, and what this file misses is read again when they come back."""
        self._db.executemany(
            "UPDATE positions SET seen_ms = ? WHERE partition = ?", [(now_ms, partition) for partition in partitions]
        )

    def position(self, partition: int) -> int | None:
        """The offset of the topic to read this partition from; None: the file has nothing of it."""
        row = self._db.execute("SELECT next_offset FROM positions WHERE partition = ?", (partition,)).fetchone()
        return None if row is None else int(row[0])

    def seen_ms(self, partition: int) -> int | None:
        """When this instance last knew the partition to be up to date (epoch ms), None if never."""
        row = self._db.execute("SELECT seen_ms FROM positions WHERE partition = ?", (partition,)).fetchone()
        return None if row is None else int(row[0])

    def stale(self, partition: int, now_ms: int) -> bool:
        """Whether what the file holds of ``partition`` is too old to read on from (see :data:`STALE_MS`)."""
        seen = self.seen_ms(partition)
        return seen is not None and now_ms - seen > STALE_MS

    def reset(self, partition: int) -> None:
        """Empty what the file holds of ``partition``, to read it again from the beginning."""
        with self._transaction():
            for table in (*self._TABLES, "positions"):
                self._db.execute(f"DELETE FROM {table} WHERE partition = ?", (partition,))

    def _transaction(self) -> contextlib.AbstractContextManager[None]:
        return transaction(self._db)


async def catch_up(
    file: ChangelogFile,
    kafka: KafkaSettings,
    partitions: Iterable[int],
    now_ms: Callable[[], int],
    check: Callable[[ConsumerRecord], str | int | None],
    unreadable: list[tuple[ConsumerRecord, str]],
) -> None:
    """Bring ``file``'s copy of its topic up to date for ``partitions``: from where it left off, or
    from the beginning when it has nothing of a partition, holds it from too long ago, or names an
    offset the partition no longer holds. ``check`` says why a record cannot be kept (a string: the
    record is added to ``unreadable`` with why, and skipped), else the time kept beside it (``at_ms``)."""
    starts: dict[int, int | None] = {}
    for partition in partitions:
        if file.stale(partition, now_ms()):
            log.info("reading %s partition %d again from the beginning: its file is too old", file.topic, partition)
            file.reset(partition)
        starts[partition] = file.position(partition)
    while True:
        try:
            async for records in stream_partitions(kafka, file.topic, starts):
                readable: list[Written] = []
                for record in records:
                    kept = check(record)
                    if isinstance(kept, str):
                        unreadable.append((record, f"cannot restore from this record of {file.topic}: {kept}"))
                    else:
                        readable.append(Written(record.partition, record.offset, bytes(record.key), record.value, kept))
                read_to = {record.partition: record.offset + 1 for record in records}
                file.written(readable, now_ms(), read_to=read_to)
            # Read to the end: up to date now, records or not (a partition with nothing new is not stale).
            ends = {partition: position for partition in starts if (position := file.position(partition)) is not None}
            file.written([], now_ms(), read_to=ends)
            return
        except OffsetOutOfRange as error:
            log.info("reading %s partition %d again from the beginning: %s", file.topic, error.partition, error)
            file.reset(error.partition)
            starts[error.partition] = None
