"""A changelog's file (store/changelog.py) as the scheduler keeps one (scheduler/changelog.py): the latest
entry of each key per partition in the order of their last writes, positions, and what is too old to
read on from. The projector's files share it (tests/unit/test_projector_store.py)."""

from __future__ import annotations

from pathlib import Path

from stepstream.scheduler.changelog import TimersFile
from stepstream.store.changelog import STALE_MS, Written

T0 = 1_700_000_000_000


def entries(file: TimersFile, *partitions: int) -> list[tuple[int, bytes, int, bytes, int | None]]:
    return [entry for chunk in file.entries(partitions, chunk=2) for entry in chunk]


def test_each_key_keeps_its_latest_write_in_the_order_of_the_last_writes(tmp_path: Path) -> None:
    timers = TimersFile(tmp_path / "t.sqlite3", topic="t.timers")

    # given a changelog read in two chunks: writes, a rewrite, tombstones, a key written again after one
    timers.written([Written(0, 0, b"a", b"1", 10), Written(0, 1, b"b", b"2", 20), Written(0, 2, b"a", b"3", 30)], T0)
    timers.written(
        [
            Written(0, 3, b"c", b"4"),  # a flow-control slot: no due time
            Written(0, 4, b"b", None),
            Written(0, 5, b"c", None),
            Written(0, 6, b"c", b"5", 50),
            Written(1, 0, b"a", b"6", 60),
        ],
        T0,
    )

    # then each partition's latest entry of each key is left, in the order of their last writes
    assert entries(timers, 0, 1) == [(0, b"a", 2, b"3", 30), (0, b"c", 6, b"5", 50), (1, b"a", 0, b"6", 60)]
    assert entries(timers, 1) == [(1, b"a", 0, b"6", 60)]
    assert (timers.position(0), timers.position(1), timers.count(0)) == (7, 1, 2)
    timers.close()

    # and a file opened again (a restart on the same disk) has them and reads on from there
    again = TimersFile(tmp_path / "t.sqlite3", topic="t.timers")
    assert entries(again, 0, 1) == [(0, b"a", 2, b"3", 30), (0, b"c", 6, b"5", 50), (1, b"a", 0, b"6", 60)]
    assert (again.position(0), again.seen_ms(0)) == (7, T0)
    again.close()


def test_a_partition_let_go_of_is_stale_once_a_tombstone_may_be_gone(tmp_path: Path) -> None:
    timers = TimersFile(tmp_path / "t.sqlite3", topic="t.timers")
    timers.written([Written(0, 0, b"a", b"1", 10), Written(1, 0, b"b", b"2", 20)], T0)

    # while held, written at T0; partition 1 let go of an hour later
    timers.released([1], T0 + 3_600_000)

    assert not timers.stale(0, T0 + STALE_MS)
    assert timers.stale(0, T0 + STALE_MS + 1)
    assert not timers.stale(1, T0 + STALE_MS + 1)  # counted from when it was let go
    assert timers.stale(1, T0 + 3_600_000 + STALE_MS + 1)
    assert not timers.stale(2, T0 + 10 * STALE_MS)  # nothing of it: read from the beginning anyway
    timers.reset(0)
    assert (timers.position(0), entries(timers, 0)) == (None, [])
    timers.close()


def test_a_file_of_another_topic_or_layout_is_emptied(tmp_path: Path) -> None:
    timers = TimersFile(tmp_path / "t.sqlite3", topic="t.timers")
    timers.written([Written(0, 0, b"a", b"1", 10)], T0)
    timers.close()

    other = TimersFile(tmp_path / "t.sqlite3", topic="u.timers")
    assert (other.position(0), entries(other, 0)) == (None, [])
    other.written([Written(0, 0, b"a", b"1", 10)], T0)
    other.close()

    class NextLayout(TimersFile):
        LAYOUT = "2"

    newer = NextLayout(tmp_path / "t.sqlite3", topic="u.timers")
    assert (newer.position(0), entries(newer, 0)) == (None, [])
    newer.close()
