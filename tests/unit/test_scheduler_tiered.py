"""``TieredPendingWork``: what is due beyond the horizon waits on disk, not in memory, and comes
back in order of due time, then of arrival. (Its agreement with a model, over random adds, removals,
dropped partitions and pops: tests/unit/test_scheduler_pending.py.)"""

from __future__ import annotations

from stepstream.avro import Codec
from stepstream.scheduler.tiered import TieredPendingWork
from tests.unit.test_scheduler_pending import T0, delivery, ids, timer

DAY = 86_400_000


def test_a_timer_due_in_a_day_waits_on_disk_until_the_window_reaches_it() -> None:
    pending = TieredPendingWork(Codec(), horizon_ms=60_000)
    pending.pop_due(T0)  # the window now ends a minute after T0
    for number in range(1_000):
        pending.add(number % 3, timer(f"t{number}", T0 + DAY))
    pending.add(0, timer("soon", T0 + 1_000))

    assert (pending.in_memory(), pending.on_disk(), len(pending)) == (1, 1_000, 1_001)
    assert pending.next_due_ms() == T0 + 1_000
    assert ids(pending.pop_due(T0 + 1_000)) == ["soon"]
    assert pending.next_due_ms() == T0 + DAY  # from disk
    assert pending.pop_due(T0 + DAY - 60_001) == []
    assert pending.in_memory() == 0
    assert len(pending.pop_due(T0 + DAY)) == 1_000
    assert len(pending) == 0


def test_ties_keep_their_order_of_arrival_across_the_disk() -> None:
    pending = TieredPendingWork(Codec(), horizon_ms=10)
    for request_id in ("z", "m", "a", "q"):
        pending.add(0, timer(request_id, T0 + 1_000))

    assert ids(pending.pop_due(T0 + 1_000)) == ["z", "m", "a", "q"]


def test_a_request_moves_between_memory_and_disk_when_its_due_time_changes() -> None:
    pending = TieredPendingWork(Codec(), horizon_ms=100)
    pending.pop_due(T0)
    pending.add(2, delivery("a", T0 + DAY))
    pending.add(2, delivery("a", T0 + 50, attempt=2))  # due sooner now: in memory, not on disk
    assert (pending.in_memory(), pending.on_disk()) == (1, 0)
    pending.add(2, delivery("a", T0 + DAY, attempt=3))  # and later again
    assert (pending.in_memory(), pending.on_disk()) == (0, 1)

    held = pending.remove("a")
    assert held is not None
    assert (held.partition, held.record) == (2, delivery("a", T0 + DAY, attempt=3))
    assert "a" not in pending


def test_close_removes_the_file() -> None:
    pending = TieredPendingWork(Codec())
    pending.add(0, timer("t", T0 + DAY))
    path = pending.path
    assert path.exists()
    pending.close()
    assert not path.exists()
