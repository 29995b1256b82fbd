"""``PendingWork``, given → when → then: what the scheduler holds back, and when it lets it go; and the
model test again for ``TieredPendingWork``, which keeps what is due later on disk."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from stepstream.avro import Codec
from stepstream.core import Delivery, DeliveryRequested, TimerRequested
from stepstream.scheduler.pending import Held, PendingWork, due_ms
from stepstream.scheduler.pending import HeldRecord as ScheduleRecord
from stepstream.scheduler.tiered import TieredPendingWork

T0 = 1_700_000_000_000


def timer(request_id: str, due: int, *, step_index: int = 1) -> TimerRequested:
    return TimerRequested(request_id=request_id, run_id=f"run-{request_id}", step_index=step_index, due_ms=due)


def delivery(request_id: str, not_before: int, *, attempt: int = 1) -> DeliveryRequested:
    return DeliveryRequested(
        request_id=request_id,
        not_before_ms=not_before,
        delivery=Delivery(
            run_id=f"run-{request_id}",
            workflow="order",
            url="http://app.local/workflows/order",
            delivery_id=f"run-{request_id}/1",
            attempt=attempt,
            step_index=0,
            payload="{}",
            steps=(),
            headers=(),
        ),
    )


def given(*records: ScheduleRecord, partition: int = 0) -> PendingWork:
    pending = PendingWork()
    for record in records:
        pending.add(partition, record)
    return pending


def ids(held: list[Held]) -> list[str]:
    return [item.record.request_id for item in held]


# ---------------------------------------------------------------------------------------------
# due_ms


def test_due_ms_of_a_delivery_is_its_not_before_and_of_a_timer_its_due_time() -> None:
    assert due_ms(delivery("d", T0 + 5)) == T0 + 5
    assert due_ms(timer("t", T0 + 7)) == T0 + 7


# ---------------------------------------------------------------------------------------------
# pop_due


def test_pop_due_returns_due_requests_earliest_first_whatever_order_they_arrived_in() -> None:
    pending = given(timer("c", T0 + 30), delivery("a", T0 + 10), timer("b", T0 + 20))

    assert ids(pending.pop_due(T0 + 30)) == ["a", "b", "c"]
    assert len(pending) == 0


def test_pop_due_breaks_ties_in_arrival_order() -> None:
    pending = given(timer("z", T0), delivery("m", T0), timer("a", T0), delivery("q", T0))

    assert ids(pending.pop_due(T0)) == ["z", "m", "a", "q"]


def test_pop_due_returns_nothing_early_and_keeps_it_for_later() -> None:
    pending = given(timer("a", T0 + 10), delivery("b", T0 + 20))

    assert pending.pop_due(T0 + 9) == []
    assert len(pending) == 2
    assert ids(pending.pop_due(T0 + 10)) == ["a"]  # due exactly now counts as due
    assert ids(pending.pop_due(T0 + 19)) == []
    assert ids(pending.pop_due(T0 + 20)) == ["b"]


def test_pop_due_hands_back_the_partition_and_the_record_it_was_given() -> None:
    pending = PendingWork()
    record = delivery("a", T0)
    pending.add(7, record)

    [held] = pending.pop_due(T0)

    assert held == Held(partition=7, record=record)


def test_a_popped_request_is_gone() -> None:
    pending = given(timer("a", T0))
    pending.pop_due(T0)

    assert "a" not in pending
    assert pending.pop_due(T0 + 1_000) == []
    assert pending.next_due_ms() is None


# ---------------------------------------------------------------------------------------------
# A request id seen again replaces the earlier one


def test_a_request_added_again_with_a_later_due_time_does_not_fire_at_the_old_one() -> None:
    pending = given(timer("a", T0 + 10))
    pending.add(0, timer("a", T0 + 50))

    assert pending.pop_due(T0 + 10) == []
    assert len(pending) == 1
    assert pending.next_due_ms() == T0 + 50
    assert ids(pending.pop_due(T0 + 50)) == ["a"]


def test_a_request_added_again_with_an_earlier_due_time_fires_once_at_the_new_one() -> None:
    pending = given(timer("a", T0 + 50))
    pending.add(0, timer("a", T0 + 10))

    assert ids(pending.pop_due(T0 + 10)) == ["a"]
    assert pending.pop_due(T0 + 50) == []
    assert len(pending) == 0


def test_a_request_added_again_at_the_same_due_time_fires_once_with_the_newer_record() -> None:
    pending = PendingWork()
    pending.add(0, delivery("a", T0, attempt=1))
    newer = delivery("a", T0, attempt=2)
    pending.add(3, newer)

    assert pending.pop_due(T0) == [Held(partition=3, record=newer)]
    assert pending.pop_due(T0 + 1_000) == []


def test_a_request_replaced_at_the_same_due_time_takes_its_new_place_among_ties() -> None:
    pending = given(timer("a", T0), timer("b", T0))
    pending.add(0, timer("a", T0, step_index=2))

    assert ids(pending.pop_due(T0)) == ["b", "a"]


# ---------------------------------------------------------------------------------------------
# remove and drop_partitions


def test_remove_forgets_a_request_and_leaves_the_others() -> None:
    pending = given(timer("a", T0), timer("b", T0 + 5))

    pending.remove("a")

    assert "a" not in pending
    assert len(pending) == 1
    assert ids(pending.pop_due(T0 + 5)) == ["b"]


def test_remove_of_an_unknown_request_does_nothing() -> None:
    pending = given(timer("a", T0))

    pending.remove("nope")

    assert ids(pending.pop_due(T0)) == ["a"]


def test_a_removed_request_added_again_is_held_again() -> None:
    pending = given(timer("a", T0 + 10))
    pending.remove("a")
    pending.add(0, timer("a", T0 + 20))

    assert pending.pop_due(T0 + 10) == []
    assert ids(pending.pop_due(T0 + 20)) == ["a"]


def test_drop_partitions_removes_only_those_partitions_requests() -> None:
    pending = PendingWork()
    pending.add(0, timer("p0", T0))
    pending.add(1, timer("p1", T0 + 1))
    pending.add(2, delivery("p2", T0 + 2))
    pending.add(3, timer("p3", T0 + 3))

    pending.drop_partitions({1, 3, 99})

    assert len(pending) == 2
    assert "p1" not in pending
    assert "p3" not in pending
    assert [(held.partition, held.record.request_id) for held in pending.pop_due(T0 + 10)] == [(0, "p0"), (2, "p2")]


def test_drop_partitions_uses_the_partition_of_the_latest_add() -> None:
    pending = PendingWork()
    pending.add(1, timer("a", T0))
    pending.add(2, timer("a", T0 + 1))  # moved to partition 2

    pending.drop_partitions({1})

    assert ids(pending.pop_due(T0 + 1)) == ["a"]


def test_drop_partitions_of_nothing_keeps_everything() -> None:
    pending = given(timer("a", T0), partition=4)

    pending.drop_partitions(set())

    assert "a" in pending


# ---------------------------------------------------------------------------------------------
# next_due_ms, len and contains


def test_next_due_ms_is_none_when_nothing_is_held() -> None:
    assert PendingWork().next_due_ms() is None


def test_next_due_ms_is_the_earliest_due_time() -> None:
    pending = given(timer("a", T0 + 30), delivery("b", T0 + 10), timer("c", T0 + 20))

    assert pending.next_due_ms() == T0 + 10


def test_next_due_ms_ignores_removed_requests() -> None:
    pending = given(timer("a", T0 + 10), timer("b", T0 + 20))
    pending.remove("a")

    assert pending.next_due_ms() == T0 + 20

    pending.remove("b")

    assert pending.next_due_ms() is None


def test_next_due_ms_ignores_replaced_due_times() -> None:
    pending = given(timer("a", T0 + 10), timer("b", T0 + 20))
    pending.add(0, timer("a", T0 + 30))

    assert pending.next_due_ms() == T0 + 20


def test_next_due_ms_ignores_dropped_partitions() -> None:
    pending = PendingWork()
    pending.add(1, timer("a", T0 + 10))
    pending.add(2, timer("b", T0 + 20))
    pending.drop_partitions({1})

    assert pending.next_due_ms() == T0 + 20


def test_len_and_contains_count_request_ids_not_adds() -> None:
    pending = PendingWork()
    assert len(pending) == 0
    assert "a" not in pending

    pending.add(0, timer("a", T0))
    pending.add(0, timer("a", T0 + 1))
    pending.add(0, delivery("b", T0))

    assert len(pending) == 2
    assert "a" in pending
    assert "b" in pending
    assert "c" not in pending


# ---------------------------------------------------------------------------------------------
# Against a model: a plain dict, sorted on every look


class Model:
    """The obvious, slow implementation: request id → (due, partition, record)."""

    def __init__(self) -> None:
        self.held: dict[str, tuple[int, int, ScheduleRecord]] = {}

    def add(self, partition: int, record: ScheduleRecord) -> None:
        self.held[record.request_id] = (due_ms(record), partition, record)

    def remove(self, request_id: str) -> None:
        self.held.pop(request_id, None)

    def drop_partitions(self, partitions: set[int]) -> None:
        self.held = {key: value for key, value in self.held.items() if value[1] not in partitions}

    def next_due_ms(self) -> int | None:
        return min((due for due, _, _ in self.held.values()), default=None)

    def pop_due(self, now_ms: int) -> list[tuple[int, Held]]:
        due = sorted(
            ((when, Held(partition, record)) for when, partition, record in self.held.values() if when <= now_ms),
            key=lambda item: item[0],
        )
        for _, held in due:
            del self.held[held.record.request_id]
        return due


def grouped_by_due(items: list[tuple[int, Held]]) -> list[tuple[int, set[tuple[int, str, ScheduleRecord]]]]:
    """Due times in order; within one due time, which requests (the tie order is tested above)."""
    groups: list[tuple[int, set[tuple[int, str, ScheduleRecord]]]] = []
    for when, held in items:
        if not groups or groups[-1][0] != when:
            groups.append((when, set()))
        groups[-1][1].add((held.partition, held.record.request_id, held.record))
    return groups


Pending = PendingWork | TieredPendingWork


def tiered() -> TieredPendingWork:
    """The scheduler's pending work, with a horizon short enough that most requests go to disk."""
    return TieredPendingWork(Codec(), horizon_ms=10)


@pytest.mark.parametrize("make", [PendingWork, tiered], ids=["memory", "tiered"])
@pytest.mark.parametrize("seed", range(20))
def test_pending_work_agrees_with_a_sorted_model(
    seed: int, make: Callable[[], PendingWork | TieredPendingWork]
) -> None:
    rng = random.Random(seed)
    pending, model = make(), Model()
    now = T0
    request_ids = [f"r{number}" for number in range(15)]  # few ids: many replacements and removals

    for _ in range(400):
        action = rng.random()
        if action < 0.45:
            request_id = rng.choice(request_ids)
            due = now + rng.randint(-5, 40)  # some already overdue; small range: many ties
            partition = rng.randrange(4)
            record: ScheduleRecord = (
                timer(request_id, due, step_index=rng.randrange(3))
                if rng.random() < 0.5
                else delivery(request_id, due, attempt=rng.randint(1, 3))
            )
            pending.add(partition, record)
            model.add(partition, record)
        elif action < 0.55:
            request_id = rng.choice(request_ids)
            pending.remove(request_id)
            model.remove(request_id)
        elif action < 0.6:
            partitions = {rng.randrange(4)}
            pending.drop_partitions(partitions)
            model.drop_partitions(partitions)
        elif action < 0.8:
            now += rng.randint(0, 15)
            popped = pending.pop_due(now)
            expected = model.pop_due(now)
            actual = [(due_ms(held.record), held) for held in popped]
            assert [when for when, _ in actual] == sorted(when for when, _ in actual), "not earliest first"
            assert grouped_by_due(actual) == grouped_by_due(expected)
        else:
            assert pending.next_due_ms() == model.next_due_ms()
        assert len(pending) == len(model.held)
        for request_id in request_ids:
            assert (request_id in pending) == (request_id in model.held)

    assert grouped_by_due([(due_ms(held.record), held) for held in pending.pop_due(now + 1_000)]) == grouped_by_due(
        model.pop_due(now + 1_000)
    )


def test_requests_given_as_encoded_go_to_disk_unread_unless_memory_would_hold_them() -> None:
    codec = Codec()
    work = TieredPendingWork(codec, horizon_ms=10)
    work.pop_due(100)  # memory holds what is due by 110
    near, far = timer("near", 105), timer("far", 1_000)

    work.add_encoded([(0, "near", 105, codec.encode(near)), (1, "far", 1_000, codec.encode(far))])

    assert (work.in_memory(), work.on_disk()) == (1, 1)
    assert work.pop_due(1_000) == [Held(0, near), Held(1, far)]
    work.close()


def test_a_request_held_with_the_encoding_it_came_with_is_given_back_as_it_was() -> None:
    codec = Codec()
    work = TieredPendingWork(codec, horizon_ms=10)
    record = TimerRequested(request_id="t", run_id="r", step_index=1, due_ms=1_000)

    with work.bulk():
        work.add(0, record, codec.encode(record))  # due past the window: on disk, as it came

    assert work.on_disk() == 1
    assert work.pop_due(1_000) == [Held(0, record)]
    work.close()
