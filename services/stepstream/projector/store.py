"""The projector's runs and waiter indexes: every one on disk, the ones in use in memory.

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
and what does not match the topic is emptied and read again (store/changelog.py, which the scheduler's
file of timers shares).

The waiter index of each event id (the compacted ``waiters`` topic) is kept the same way, in a file
of its own (:class:`WaiterStore`); :class:`Mirror` is what the two share.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Generic, TypeVar

from stepstream.avro import Codec
from stepstream.core import RecordedStep, RunState, WaiterState
from stepstream.projector.snapshots import Assembly, parse_step_key
from stepstream.store.changelog import ChangelogFile, Written

T = TypeVar("T")
HEADER = -1  # the index under which a run's own record (its state without results) is kept

_RUNS = """
CREATE TABLE IF NOT EXISTS records (
    run_id TEXT NOT NULL,
    idx INTEGER NOT NULL,        -- the result's index, or -1 for the run's own record
    partition INTEGER NOT NULL,
    value BLOB NOT NULL,
    ended_ms INTEGER,            -- a run's own record: when it ended, while it may be compacted (retention.py)
    PRIMARY KEY (run_id, idx)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ended ON records (ended_ms) WHERE ended_ms IS NOT NULL;
"""
_WAITERS = """
CREATE TABLE IF NOT EXISTS waiters (
    event_id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
-- Counting a partition's event ids (the waiters metric) reads this, not the table's values.
CREATE INDEX IF NOT EXISTS waiters_by_partition ON waiters (partition);
"""


class Mirror(ChangelogFile, Generic[T]):
    """A compacted topic of the projector's in a SQLite file (store/changelog.py), with the most
    recently used values decoded in memory (see the module). Subclasses say how a record is kept
    (:meth:`_put`) and how a value is read back (:meth:`_read`)."""

    LAYOUT = "4"

    def __init__(self, path: Path | None, codec: Codec, *, topic: str, cache: int, prefix: str) -> None:
        super().__init__(path, topic=topic, prefix=prefix)
        self.codec = codec
        self.cache = max(1, cache)
        self._memory: OrderedDict[str, T | None] = OrderedDict()

    def _read(self, key: str) -> T | None:
        raise NotImplementedError

    # -- values ---------------------------------------------------------------------------------

    def get(self, key: str) -> T | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        value = self._read(key)
        if value is not None:
            self._memory[key] = value
        return value

    def __getitem__(self, key: str) -> T:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: T) -> None:
        """The key's new value, in memory until the batch's records reach :meth:`written`."""
        self._memory[key] = value
        self._memory.move_to_end(key)

    def pop(self, key: str) -> None:
        """Forget a value the batch made and did not write (its transaction failed), or removed."""
        self._memory[key] = None  # as on disk once the batch is written: absent until the next trim

    def in_memory(self) -> int:
        return sum(1 for value in self._memory.values() if value is not None)

    def drop(self, key: str) -> None:
        """Drop a key from memory (its partition is no longer this instance's); the file keeps it,
        for when the partition comes back."""
        self._memory.pop(key, None)

    def keys_in_memory(self) -> list[str]:
        return list(self._memory)

    def trim(self) -> None:
        """Let the least recently used values leave memory, down to ``cache``. Only between batches:
        every value in memory is then as it is on disk."""
        for key in [key for key, value in self._memory.items() if value is None]:
            del self._memory[key]
        while len(self._memory) > self.cache:
            self._memory.popitem(last=False)

    def reset(self, partition: int) -> None:
        """Empty what the file holds of ``partition``, to read it again from the beginning. Between
        batches only: memory is emptied too (every value in it is on disk then, so nothing is lost)."""
        super().reset(partition)
        self._memory.clear()


class RunStore(Mirror[RunState]):
    """Runs by id: on disk, and the ``cache_runs`` most recently used in memory (see the module)."""

    _SCHEMA = _RUNS
    _TABLES = ("records",)

    def __init__(self, path: Path | None, codec: Codec, *, topic: str, cache_runs: int) -> None:
        super().__init__(path, codec, topic=topic, cache=cache_runs, prefix="stepstream-projector-")

    def _read(self, run_id: str) -> RunState | None:
        rows = self._db.execute("SELECT idx, value FROM records WHERE run_id = ? ORDER BY idx", (run_id,)).fetchall()
        if not rows or rows[0][0] != HEADER:
            return None
        assembly = Assembly()
        assembly.header(run_id, self.codec.decode(rows[0][1], (RunState,)))
        for index, value in rows[1:]:
            assembly.step(run_id, index, self.codec.decode(value, (RecordedStep,)))
        return next(iter(assembly.states()))

    def _put(self, record: Written) -> None:
        key = record.key.decode(errors="replace")
        step = parse_step_key(key)
        run_id, index = step if step is not None else (key, HEADER)
        if record.value is not None:
            self._db.execute(
                "INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?, ?)",
                (run_id, index, record.partition, record.value, record.at_ms),
            )
        elif index == HEADER:  # the run is gone, its results with it (as snapshots.Assembly reads it)
            self._db.execute("DELETE FROM records WHERE run_id = ?", (run_id,))
        else:
            self._db.execute("DELETE FROM records WHERE run_id = ? AND idx = ?", (run_id, index))

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
        results = "SELECT idx FROM records WHERE run_id = ? AND idx >= 0"
        return [
            (run_id, partition, [index for (index,) in self._db.execute(results, (run_id,))])
            for run_id, partition in rows
        ]

    def runs_on_disk(self, partition: int) -> int:
        row = self._db.execute(
            "SELECT COUNT(*) FROM records WHERE partition = ? AND idx = ?", (partition, HEADER)
        ).fetchone()
        return int(row[0])


class WaiterStore(Mirror[WaiterState]):
    """The waiter index of each event id (who waits on it, notifications kept for late waiters): on
    disk, mirroring the compacted ``waiters`` topic, and the ``cache`` most recently used in memory.
    A million runs waiting on events of their own cost a file, not memory."""

    _SCHEMA = _WAITERS
    _TABLES = ("waiters",)

    def __init__(self, path: Path | None, codec: Codec, *, topic: str, cache: int) -> None:
        super().__init__(path, codec, topic=topic, cache=cache, prefix="stepstream-projector-waiters-")

    def _read(self, key: str) -> WaiterState | None:
        row = self._db.execute("SELECT value FROM waiters WHERE event_id = ?", (key,)).fetchone()
        return None if row is None else self.codec.decode(row[0], (WaiterState,))

    def _put(self, record: Written) -> None:
        event_id = record.key.decode(errors="replace")
        if record.value is None:
            self._db.execute("DELETE FROM waiters WHERE event_id = ?", (event_id,))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO waiters VALUES (?, ?, ?)", (event_id, record.partition, record.value)
            )

    def on_disk(self, partition: int) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM waiters WHERE partition = ?", (partition,)).fetchone()
        return int(row[0])
