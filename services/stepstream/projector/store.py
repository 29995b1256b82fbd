"""The projector's runs: every run on disk, the runs in use in memory.

The compacted ``runs`` topic is the changelog of the projector's state (a run's state without its
results under the run id, each result under ``<run id>/<index>``; snapshots.py). Held in a dict, that
state grew with every run ever started, finished ones and their outputs included, and a restore
read the whole topic into memory. Here the topic is mirrored in a SQLite file, record for record
(the latest value of each key, and for each partition the offset to read from next), and only the
runs in use stay in memory, up to ``cache_runs`` of them:

- a run is read from memory, or put together from its records on disk (and kept in memory);
- the projector changes runs in memory during a batch; once the batch's transaction is committed it
  hands the records it wrote to ``runs``, with their offsets, to :meth:`RunStore.written`, and only
  then may the least recently used runs leave memory (a changed run never leaves before its records
  are on disk, so memory and disk never disagree about a run that is not in memory);
- a restore streams the changelog from where the file left off (:meth:`RunStore.position`), in
  chunks, so a replica restarting on the same disk reads only what it missed, and one on a new disk
  never holds the whole topic in memory.

The file is a cache of Kafka's state, never the truth: it is written only after Kafka committed,
and a file that does not match the topic (another cluster or prefix, a topic made again, offsets
past the end or behind what compaction kept) is emptied for that partition and read again.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from stepstream.avro import Codec
from stepstream.config import ProjectorSettings
from stepstream.core import RecordedStep, RunState
from stepstream.projector.snapshots import Assembly, parse_step_key
from stepstream.store.files import remove_sqlite, temporary_sqlite

HEADER = -1  # the index under which a run's own record (its state without results) is kept
# A file last written longer ago than this is read again from the beginning: Kafka keeps a tombstone
# on a compacted topic for delete.retention.ms after compaction reaches it (a day by default; the
# topics keep the default), and a file that missed a tombstone since would keep what it deleted.
STORE_STALE_MS = 12 * 3_600_000

# The file's layout; a file of another is emptied and read again from Kafka (it is only a cache).
LAYOUT = "2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,        -- the result's index, or -1 for the run's own record
    partition INTEGER NOT NULL,
    value BLOB NOT NULL,
    ended_ms INTEGER,            -- a run's own record: when it ended, while it may be compacted (retention.py)
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ended ON records (ended_ms) WHERE ended_ms IS NOT NULL;
CREATE TABLE IF NOT EXISTS positions (
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL  -- the offset of runs to read from next
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def state_file(settings: ProjectorSettings) -> Path | None:
    """The store's file for this projector: one per topic prefix and instance id in the state folder
    (a stable instance id, as the Helm chart's pod names are, finds its file again after a restart);
    None, for a temporary file, when no folder is set."""
    if not settings.state_dir:
        return None
    name = f"{settings.kafka.topic_prefix}projector-{settings.kafka.instance_id}"
    return Path(settings.state_dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}.sqlite3"


@dataclass(frozen=True, slots=True)
class Written:
    """One record of ``runs``, as the changelog holds it: a tombstone's ``value`` is None."""

    partition: int
    offset: int
    key: bytes
    value: bytes | None
    ended_ms: int | None = None  # a run's own record: when the run ended, if it may be compacted later


class RunStore:
    """Runs by id: on disk, and the ``cache_runs`` most recently used in memory (see the module)."""

    def __init__(self, path: Path | None, codec: Codec, *, topic: str, cache_runs: int) -> None:
        """``path``: the SQLite file (made if missing); None: a temporary file, removed by :meth:`close`.
        ``topic``: the changelog's name; a file written for another topic is emptied."""
        self.codec = codec
        self.cache_runs = max(1, cache_runs)
        self._memory: OrderedDict[str, RunState | None] = OrderedDict()
        self._temporary: Path | None = None
        if path is None:
            path = self._temporary = temporary_sqlite(self, "stepstream-projector-")
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
        if layout is None or layout[0] != LAYOUT:
            self._db.executescript("DROP TABLE IF EXISTS records; DROP TABLE IF EXISTS positions; DELETE FROM meta;")
            self._db.execute("INSERT INTO meta VALUES ('layout', ?)", (LAYOUT,))
        self._db.executescript(_SCHEMA)
        stored = self._db.execute("SELECT value FROM meta WHERE name = 'topic'").fetchone()
        if stored is None or stored[0] != topic:
            with self._transaction():
                self._db.execute("DELETE FROM records")
                self._db.execute("DELETE FROM positions")
                self._db.execute("INSERT OR REPLACE INTO meta VALUES ('topic', ?)", (topic,))

    def close(self) -> None:
        self._db.close()
        if self._temporary is not None:
            remove_sqlite(self._temporary)

    # -- runs -----------------------------------------------------------------------------------

    def get(self, run_id: str) -> RunState | None:
        if run_id in self._memory:
            self._memory.move_to_end(run_id)
            return self._memory[run_id]
        state = self._read(run_id)
        if state is not None:
            self._memory[run_id] = state
        return state

    def __getitem__(self, run_id: str) -> RunState:
        state = self.get(run_id)
        if state is None:
            raise KeyError(run_id)
        return state

    def __setitem__(self, run_id: str, state: RunState) -> None:
        """The run's new state, in memory until the batch's records reach :meth:`written`."""
        self._memory[run_id] = state
        self._memory.move_to_end(run_id)

    def pop(self, run_id: str) -> None:
        """Forget a run that the batch made and did not write (its transaction failed)."""
        self._memory[run_id] = None  # not on disk either: remembered as absent until the next trim

    def in_memory(self) -> int:
        return sum(1 for state in self._memory.values() if state is not None)

    def drop(self, run_id: str) -> None:
        """Drop a run from memory (its partition is no longer this instance's); the file keeps it,
        for when the partition comes back."""
        self._memory.pop(run_id, None)

    def run_ids_in_memory(self) -> list[str]:
        return list(self._memory)

    def trim(self) -> None:
        """Let the least recently used runs leave memory, down to ``cache_runs``. Only between
        batches: every run in memory is then as it is on disk."""
        for run_id in [run_id for run_id, state in self._memory.items() if state is None]:
            del self._memory[run_id]
        while len(self._memory) > self.cache_runs:
            self._memory.popitem(last=False)

    def _read(self, run_id: str) -> RunState | None:
        rows = self._db.execute("SELECT idx, value FROM records WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        if not rows or rows[0][0] != HEADER:
            return None
        assembly = Assembly()
        assembly.header(run_id, self.codec.decode(rows[0][1], (RunState,)))
        for index, value in rows[1:]:
            assembly.step(run_id, index, self.codec.decode(value, (RecordedStep,)))
        return next(iter(assembly.states()))

    # -- the changelog --------------------------------------------------------------------------

    def written(self, records: Iterable[Written], now_ms: int, *, read_to: Mapping[int, int] | None = None) -> None:
        """Records of ``runs`` now committed (written by this projector, or read back in a restore),
        in offset order per partition: the file takes them, and each partition's position moves past
        them, or to ``read_to`` (a restore also moves past the records it could not read)."""
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('written_ms', ?)", (str(now_ms),))
            ends: dict[int, int] = dict(read_to or {})
            for record in records:
                self._put(record)
                ends[record.partition] = max(ends.get(record.partition, 0), record.offset + 1)
            self._db.executemany(
                "INSERT INTO positions VALUES (?, ?) ON CONFLICT (partition) "
                "DO UPDATE SET next_offset = MAX(next_offset, excluded.next_offset)",
                ends.items(),
            )

    def _put(self, record: Written) -> None:
        key = record.key.decode(errors="replace")
        step = parse_step_key(key)
        run_id, index = step if step is not None else (key, HEADER)
        if record.value is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
                (run_id, index, record.partition, record.value, record.ended_ms),
            )
        elif index == HEADER:  # the run is gone, its results with it (as snapshots.Assembly reads it)
            self._db.execute("DELETE FROM records WHERE run_id = ?", (run_id,))
        else:
            self._db.execute("DELETE FROM records WHERE run_id = ? AND idx = ?", (run_id, index))

    def position(self, partition: int) -> int | None:
        """The offset of ``runs`` to read this partition from; None: the file has nothing of it."""
        row = self._db.execute("SELECT next_offset FROM positions WHERE partition = ?", (partition,)).fetchone()
        return None if row is None else int(row[0])

    def reset(self, partition: int) -> None:
        """Empty what the file holds of ``partition``, to read it again from the beginning. Between
        batches only: memory is emptied too (every run in it is on disk then, so nothing is lost)."""
        with self._transaction():
            self._db.execute("DELETE FROM records WHERE partition = ?", (partition,))
            self._db.execute("DELETE FROM positions WHERE partition = ?", (partition,))
        self._memory.clear()

    def written_ms(self) -> int | None:
        """When the file last took records (epoch ms), None if never."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'written_ms'").fetchone()
        return None if row is None else int(row[0])

    def ended_before(self, cutoff_ms: int, partitions: Iterable[int], limit: int) -> list[tuple[str, int, list[int]]]:
        """Up to ``limit`` runs of ``partitions`` that ended before ``cutoff_ms`` and may be compacted,
        oldest first: each run id, partition and the indexes of its results."""
        chosen = sorted(partitions)
        if not chosen:
            return []
        marks = ",".join("?" * len(chosen))
        rows = self._db.execute(
            f"SELECT run_id, partition FROM records WHERE ended_ms IS NOT NULL AND ended_ms < ? "
            f"AND partition IN ({marks}) ORDER BY ended_ms LIMIT ?",
            (cutoff_ms, *chosen, limit),
        ).fetchall()
        return [
            (
                run_id,
                partition,
                [
                    index
                    for (index,) in self._db.execute("SELECT idx FROM records WHERE run_id = ? AND idx >= 0", (run_id,))
                ],
            )
            for run_id, partition in rows
        ]

    def runs_on_disk(self, partition: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM records WHERE partition = ? AND idx = ?", (partition, HEADER)
        ).fetchone()
        return int(row[0])

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
