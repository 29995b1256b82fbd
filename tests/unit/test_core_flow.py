"""``FlowLedger``, given → when → then: which of a flow-control key's queued work may start, and when."""

from __future__ import annotations

import copy
import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import pytest

from stepstream.core import (
    FlowControl,
    FlowKeyState,
    FlowLedger,
    FlowSettled,
    FlowSlot,
    Queued,
    most_permissive,
)
from stepstream.scheduler.queues import SpilledQueues

KEY = "tenant-acme"
OTHER = "tenant-globex"
T0 = 1_700_000_000_000


# ---------------------------------------------------------------------------------------------
# Work, written the way a test reads it


def flow(
    *, key: str = KEY, rate: int | None = None, period_ms: int = 1_000, parallelism: int | None = None
) -> FlowControl:
    return FlowControl(key=key, rate=rate, period_ms=period_ms, parallelism=parallelism)


def work(request_id: str, limits: FlowControl, *, partition: int = 0) -> Queued:
    """A delivery of run ``run-<request_id>``, due now, under ``limits``."""
    return Queued(
        request_id=request_id,
        flow=limits,
        partition=partition,
        run_id=f"run-{request_id}",
        value=request_id.encode(),
    )


def call(request_id: str, limits: FlowControl, *, lease_ms: int, step_index: int = 3, partition: int = 0) -> Queued:
    """An attempt of a call (step ``step_index``) that may go ``lease_ms`` without a report once let through."""
    return Queued(
        request_id=request_id,
        flow=limits,
        partition=partition,
        run_id=f"run-{request_id}",
        value=request_id.encode(),
        call_step_index=step_index,
        lease_ms=lease_ms,
    )


def given(*items: Queued, ledger: FlowLedger | None = None) -> FlowLedger:
    ledger = ledger if ledger is not None else FlowLedger()
    for item in items:
        ledger.queue(item)
    return ledger


def released(ledger: FlowLedger, now: int) -> list[str]:
    """The request ids let through at ``now``, in order; no lease may end."""
    let_through, expired = ledger.release(now)
    assert expired == [], f"no lease was expected to end at {now}, but {expired}"
    for item, slot in let_through:
        assert (slot.request_id, slot.flow, slot.run_id, slot.emitted_ms, slot.started_ms) == (
            item.request_id,
            item.flow,
            item.run_id,
            now,
            None,
        )
    return [item.request_id for item, _ in let_through]


def settled(
    ledger: FlowLedger, request_id: str, *, at: int, key: str = KEY, reported: tuple[int, int] | None = None
) -> FlowSlot | None:
    """The executor's ``FlowSettled`` of ``request_id`` reaches the scheduler at ``at``. ``reported``: the
    times the executor stamped on it, its request sent and its report written, on the executor's clock
    (by default 50 and 5 ms before ``at``)."""
    started_ms, settled_ms = reported if reported is not None else (at - 50, at - 5)
    record = FlowSettled(request_id=request_id, flow_key=key, started_ms=started_ms, settled_ms=settled_ms)
    return ledger.settled(record, at)


def state(ledger: FlowLedger, now: int, key: str = KEY) -> FlowKeyState:
    found = ledger.state(key, now)
    assert found is not None, f"{key} is not in the ledger"
    return found


def restored(slots: Mapping[str, FlowSlot | None], *queued: Queued, partition: int = 0) -> FlowLedger:
    """A new owner's ledger: the slots read back from the changelog, then the requests still queued."""
    ledger = FlowLedger()
    for slot in slots.values():
        if slot is not None:
            ledger.restore(partition, slot)
    return given(*queued, ledger=ledger)


# ---------------------------------------------------------------------------------------------
# Order and independence


def test_a_keys_work_is_let_through_first_in_first_out() -> None:
    ledger = given(*(work(name, flow(parallelism=1)) for name in ["c", "a", "b"]))

    order = released(ledger, T0)
    for now in range(T0 + 1, T0 + 3):
        settled(ledger, order[-1], at=now)
        order += released(ledger, now)

    assert order == ["c", "a", "b"]


def test_work_without_limits_is_let_through_at_once_and_only_once() -> None:
    ledger = given(work("a", flow()), work("b", flow()))

    assert released(ledger, T0) == ["a", "b"]
    assert released(ledger, T0 + 10_000) == []
    assert len(ledger) == 0


def test_a_key_at_its_limit_holds_back_no_other_key() -> None:
    ledger = given(work("a1", flow(parallelism=1)), work("a2", flow(parallelism=1)))
    assert released(ledger, T0) == ["a1"]

    given(work("b1", flow(key=OTHER, parallelism=1)), ledger=ledger)

    assert released(ledger, T0 + 1) == ["b1"]
    assert state(ledger, T0 + 1).queued == 1


# ---------------------------------------------------------------------------------------------
# Parallelism: deliveries started and not yet settled


def test_parallelism_lets_that_many_through_and_each_settlement_lets_one_more() -> None:
    ledger = given(*(work(f"r{n}", flow(parallelism=2)) for n in range(5)))

    assert released(ledger, T0) == ["r0", "r1"]
    settled(ledger, "r1", at=T0 + 5)
    assert released(ledger, T0 + 5) == ["r2"]
    assert released(ledger, T0 + 60_000) == []
    assert state(ledger, T0 + 60_000).in_flight == 2


def test_a_settlement_of_unknown_work_changes_nothing() -> None:
    ledger = given(work("a", flow(parallelism=1)), work("b", flow(parallelism=1)))
    assert released(ledger, T0) == ["a"]

    assert settled(ledger, "never-let-through", at=T0 + 1) is None
    assert settled(ledger, "a", at=T0 + 1, key=OTHER) is None
    assert released(ledger, T0 + 1) == []


# ---------------------------------------------------------------------------------------------
# Rate: a delivery counts in the window from when it is let through until period_ms after its
# settlement reached the scheduler, on the scheduler's clock


def test_rate_lets_that_many_through_per_window_and_the_next_a_period_after_a_settlement() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, period_ms=1_000)) for n in range(3)))
    assert released(ledger, T0) == ["r0", "r1"]
    for name in ["r0", "r1"]:
        settled(ledger, name, at=T0)

    assert released(ledger, T0 + 999) == []
    assert released(ledger, T0 + 1_000) == ["r2"]


def test_work_counts_until_a_period_after_its_settlement_reached_the_scheduler() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, period_ms=1_000)) for n in range(3)))
    assert released(ledger, T0) == ["r0", "r1"]
    for name in ["r0", "r1"]:
        settled(ledger, name, at=T0 + 300)

    assert released(ledger, T0 + 300) == []
    assert ledger.next_wake_ms() == T0 + 1_300
    assert released(ledger, T0 + 1_299) == []
    assert released(ledger, T0 + 1_300) == ["r2"]


def test_a_settlement_at_s_counts_in_the_window_up_to_but_not_including_s_plus_the_period() -> None:
    ledger = given(work("a", flow(rate=1, period_ms=1_000)))
    assert released(ledger, T0) == ["a"]
    in_flight = state(ledger, T0 + 5).starts_in_window
    settled(ledger, "a", at=T0 + 20)

    counted = [state(ledger, now).starts_in_window for now in (T0 + 20, T0 + 1_019, T0 + 1_020)]

    assert [in_flight, *counted] == [1, 1, 1, 0]


@pytest.mark.parametrize(
    "reported",
    [(T0, T0 + 100), (T0 + 5_000, T0 + 5_100)],
    ids=["executor-times-earlier", "executor-clock-ahead"],
)
def test_the_window_is_counted_from_when_the_settlement_reached_the_scheduler_not_from_the_executors_times(
    reported: tuple[int, int],
) -> None:
    ledger = given(work("a", flow(rate=1)), work("b", flow(rate=1)))
    assert released(ledger, T0) == ["a"]

    slot = settled(ledger, "a", at=T0 + 400, reported=reported)  # the report waited in `schedule`

    assert slot is not None
    assert (slot.started_ms, slot.settled_ms) == (T0 + 400, reported[1])
    assert released(ledger, T0 + 1_100) == []
    assert ledger.next_wake_ms() == T0 + 1_400
    assert released(ledger, T0 + 1_399) == []
    assert released(ledger, T0 + 1_400) == ["b"]


def test_under_the_more_permissive_of_two_windows_a_settlement_leaves_the_shorter_one_on_time() -> None:
    # the key's slots are kept for the longer window, but the shorter one is in force
    ledger = given(
        work("long", flow(rate=5, period_ms=10_000)), *(work(f"s{n}", flow(rate=2, period_ms=500)) for n in range(4))
    )
    assert released(ledger, T0) == ["long", "s0"]
    for name in ["long", "s0"]:
        settled(ledger, name, at=T0)

    assert released(ledger, T0 + 499) == []
    assert released(ledger, T0 + 500) == ["s1", "s2"]


def test_a_sliding_window_lets_no_boundary_through_twice_the_rate() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, period_ms=1_000)) for n in range(4)))
    assert released(ledger, T0 + 900) == ["r0", "r1"]
    settled(ledger, "r0", at=T0 + 900)
    settled(ledger, "r1", at=T0 + 950)

    # a fixed window would open afresh at T0 + 1000
    assert released(ledger, T0 + 1_000) == []
    assert released(ledger, T0 + 1_900) == ["r2"]
    settled(ledger, "r2", at=T0 + 1_900)
    assert released(ledger, T0 + 1_949) == []
    assert released(ledger, T0 + 1_950) == ["r3"]


def test_work_in_flight_counts_in_the_window_however_long_ago_it_was_let_through() -> None:
    ledger = given(work("a", flow(rate=1)), work("b", flow(rate=1)))
    assert released(ledger, T0) == ["a"]

    # it may reach the endpoint at any moment: only its settlement can open the window
    assert released(ledger, T0 + 5_000) == []
    assert ledger.next_wake_ms() is None
    assert released(ledger, T0 + 86_400_000) == []
    assert state(ledger, T0 + 86_400_000).starts_in_window == 1

    settled(ledger, "a", at=T0 + 86_400_000)

    assert released(ledger, T0 + 86_400_999) == []
    assert released(ledger, T0 + 86_401_000) == ["b"]


def test_next_wake_is_when_enough_settlements_have_left_the_window_to_let_one_more_in() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, period_ms=1_000)) for n in range(3)))
    assert released(ledger, T0) == ["r0", "r1"]
    settled(ledger, "r0", at=T0 + 100)
    settled(ledger, "r1", at=T0 + 300)

    assert released(ledger, T0 + 400) == []

    assert ledger.next_wake_ms() == T0 + 1_100
    assert released(ledger, T0 + 1_100) == ["r2"]


def test_next_wake_keeps_work_in_flight_in_the_window() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, period_ms=1_000)) for n in range(4)))
    assert released(ledger, T0) == ["r0", "r1"]
    settled(ledger, "r1", at=T0 + 300)

    assert released(ledger, T0 + 300) == []
    assert ledger.next_wake_ms() == T0 + 1_300  # r1 leaves the window; r0, in flight, stays
    assert released(ledger, T0 + 1_299) == []
    assert released(ledger, T0 + 1_300) == ["r2"]
    assert ledger.next_wake_ms() is None  # r0 and r2 in flight fill the window: only a settlement opens it


def test_a_settlement_counts_until_it_leaves_the_window() -> None:
    ledger = given(work("a", flow(rate=1)), work("b", flow(rate=1)))
    assert released(ledger, T0) == ["a"]

    slot = settled(ledger, "a", at=T0 + 200, reported=(T0 + 100, T0 + 150))

    assert slot is not None
    assert (slot.started_ms, slot.settled_ms) == (T0 + 200, T0 + 150)
    assert ledger.changes["a"] == slot  # the new owner after a rebalance must know of it
    assert released(ledger, T0 + 1_199) == []
    assert released(ledger, T0 + 1_200) == ["b"]
    assert ledger.changes["a"] is None


def test_a_repeated_settlement_changes_nothing() -> None:
    ledger = given(work("a", flow(rate=1)), work("b", flow(rate=1)))
    assert released(ledger, T0) == ["a"]
    first = settled(ledger, "a", at=T0 + 200)

    assert settled(ledger, "a", at=T0 + 900) is None

    assert ledger.changes["a"] == first
    assert released(ledger, T0 + 1_199) == []
    assert released(ledger, T0 + 1_200) == ["b"]


def test_a_settled_slot_leaves_the_changelog_when_it_leaves_the_window_with_nothing_queued() -> None:
    ledger = given(work("a", flow(rate=1)))
    assert released(ledger, T0) == ["a"]
    settled(ledger, "a", at=T0 + 200)
    assert released(ledger, T0 + 200) == []
    ledger.changes.clear()
    ledger.take_states(T0 + 200)

    assert ledger.next_wake_ms() == T0 + 1_200
    assert released(ledger, T0 + 1_200) == []

    assert ledger.changes == {"a": None}
    assert ledger.keys() == []
    assert ledger.take_states(T0 + 1_200) == [
        FlowKeyState(
            key=KEY,
            queued=0,
            in_flight=0,
            starts_in_window=0,
            rate=1,
            period_ms=1_000,
            parallelism=None,
            updated_ms=T0 + 1_200,
        )
    ]


def test_a_settled_slot_stays_for_the_longest_window_of_the_work_held_and_then_leaves_the_changelog() -> None:
    ledger = given(work("a", flow(rate=2, period_ms=100)))
    assert released(ledger, T0) == ["a"]
    given(work("b", flow(rate=1, period_ms=10_000)), ledger=ledger)  # a longer window comes while a runs
    assert released(ledger, T0 + 50) == ["b"]

    settled(ledger, "a", at=T0 + 300)  # its own window is 100 ms, but b's 10 s is held too
    settled(ledger, "b", at=T0 + 300)
    assert released(ledger, T0 + 300) == []
    ledger.changes.clear()

    assert released(ledger, T0 + 10_299) == []
    assert ledger.changes == {}
    assert released(ledger, T0 + 10_300) == []
    assert ledger.changes == {"a": None, "b": None}
    assert ledger.keys() == []


def test_a_settlement_under_parallelism_alone_keeps_nothing_for_the_window() -> None:
    ledger = given(work("a", flow(parallelism=1)))
    assert released(ledger, T0) == ["a"]

    settled(ledger, "a", at=T0 + 1)

    assert ledger.changes["a"] is None
    released(ledger, T0 + 1)
    assert ledger.keys() == []


# ---------------------------------------------------------------------------------------------
# Limits that change while work is queued


def test_old_queued_work_keeps_its_limits_and_the_key_obeys_the_higher_parallelism_meanwhile() -> None:
    ledger = given(work("a1", flow(parallelism=1)), work("a2", flow(parallelism=1)))
    assert released(ledger, T0) == ["a1"]

    given(work("b1", flow(parallelism=3)), work("b2", flow(parallelism=3)), ledger=ledger)

    assert released(ledger, T0 + 1) == ["a2", "b1"]
    assert (state(ledger, T0 + 1).parallelism, state(ledger, T0 + 1).in_flight) == (3, 3)


def test_after_a_lower_parallelism_the_old_work_drains_under_the_higher_and_then_only_the_new_holds() -> None:
    ledger = given(*(work(f"a{n}", flow(parallelism=2)) for n in range(3)))
    assert released(ledger, T0) == ["a0", "a1"]
    given(work("b1", flow(parallelism=1)), work("b2", flow(parallelism=1)), ledger=ledger)

    settled(ledger, "a0", at=T0 + 1)
    assert released(ledger, T0 + 1) == ["a2"]  # in order: the old work first
    settled(ledger, "a1", at=T0 + 2)
    assert released(ledger, T0 + 2) == ["b1"]  # a2 in flight still holds parallelism 2
    assert state(ledger, T0 + 2).parallelism == 2

    settled(ledger, "a2", at=T0 + 3)

    assert released(ledger, T0 + 3) == []  # b1 in flight: parallelism 1 alone now
    assert state(ledger, T0 + 3).parallelism == 1
    settled(ledger, "b1", at=T0 + 4)
    assert released(ledger, T0 + 4) == ["b2"]


def test_a_higher_rate_queued_later_lets_the_old_work_through_at_that_rate() -> None:
    ledger = given(*(work(f"a{n}", flow(rate=1, period_ms=1_000)) for n in range(3)))
    assert released(ledger, T0) == ["a0"]
    settled(ledger, "a0", at=T0)

    given(work("b", flow(rate=3, period_ms=1_000)), ledger=ledger)

    assert released(ledger, T0 + 1) == ["a1", "a2"]
    for name in ["a1", "a2"]:
        settled(ledger, name, at=T0 + 1)
    assert released(ledger, T0 + 999) == []
    assert released(ledger, T0 + 1_000) == ["b"]


def test_after_a_lower_rate_the_old_work_drains_at_the_old_rate_and_then_the_new_rate_holds() -> None:
    ledger = given(*(work(f"a{n}", flow(rate=2)) for n in range(2)))
    given(*(work(f"b{n}", flow(rate=1)) for n in range(3)), ledger=ledger)

    assert released(ledger, T0) == ["a0", "a1"]
    for name in ["a0", "a1"]:
        settled(ledger, name, at=T0 + 10)
    assert state(ledger, T0 + 10).rate == 1  # only b work is queued or in flight now

    assert released(ledger, T0 + 1_009) == []
    assert released(ledger, T0 + 1_010) == ["b0"]
    settled(ledger, "b0", at=T0 + 1_010)
    assert released(ledger, T0 + 2_009) == []
    assert released(ledger, T0 + 2_010) == ["b1"]


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ([(2, 1_000, 1), (2, 1_000, 3)], (2, 1_000, 3)),
        ([(2, 1_000, 1), (2, 1_000, None)], (2, 1_000, None)),
        ([(1, 1_000, None), (3, 1_000, None)], (3, 1_000, None)),
        ([(10, 60_000, None), (1, 1_000, None)], (1, 1_000, None)),  # 60 a minute beats 10 a minute
        ([(2, 2_000, None), (1, 1_000, None)], (1, 1_000, None)),  # the same rate: the shorter window
        ([(1, 1_000, 2), (None, 500, 1)], (None, 1_000, 2)),  # no rate limit at all is the highest
    ],
)
def test_the_most_permissive_limits_are_the_highest_parallelism_and_the_highest_rate(
    limits: list[tuple[int | None, int, int | None]], expected: tuple[int | None, int, int | None]
) -> None:
    assert most_permissive(Counter(limits)) == expected


def test_no_limits_in_use_have_no_most_permissive() -> None:
    assert most_permissive(Counter()) is None


# ---------------------------------------------------------------------------------------------
# Cancel and duplicates


def test_a_cancelled_request_is_never_let_through_and_the_next_moves_up() -> None:
    ledger = given(*(work(name, flow(parallelism=1)) for name in ["a", "b", "c"]))
    assert released(ledger, T0) == ["a"]

    gone = ledger.cancel(KEY, "b")

    assert gone is not None
    assert gone.request_id == "b"
    assert len(ledger) == 1
    settled(ledger, "a", at=T0 + 1)
    assert released(ledger, T0 + 1) == ["c"]


def test_cancel_leaves_work_already_let_through_in_flight() -> None:
    ledger = given(work("a", flow(parallelism=1)), work("b", flow(parallelism=1)))
    assert released(ledger, T0) == ["a"]

    assert ledger.cancel(KEY, "a") is None

    assert released(ledger, T0 + 1) == []
    assert state(ledger, T0 + 1).in_flight == 1


def test_cancel_of_an_unknown_key_or_request_is_nothing() -> None:
    ledger = given(work("a", flow(parallelism=1)))

    assert ledger.cancel(OTHER, "a") is None
    assert ledger.cancel(KEY, "b") is None
    assert len(ledger) == 1


def test_a_request_queued_again_after_its_cancellation_waits_behind_the_work_queued_meanwhile() -> None:
    ledger = given(work("busy", flow(parallelism=1)))
    assert released(ledger, T0) == ["busy"]
    given(work("a", flow(parallelism=1)), ledger=ledger)
    ledger.cancel(KEY, "a")
    given(work("b", flow(parallelism=1)), work("a", flow(parallelism=1)), ledger=ledger)

    order: list[str] = []
    for now, previous in [(T0 + 1, "busy"), (T0 + 2, "b")]:
        settled(ledger, previous, at=now)
        order += released(ledger, now)

    assert order == ["b", "a"]


def test_cancelling_the_last_queued_request_forgets_the_key_and_shows_it_idle_with_its_last_limits() -> None:
    ledger = given(work("a", flow(rate=5, period_ms=2_000, parallelism=2)))
    ledger.take_states(T0)

    ledger.cancel(KEY, "a")

    assert ledger.keys() == []
    [idle] = ledger.take_states(T0 + 1)
    assert idle == FlowKeyState(
        key=KEY, queued=0, in_flight=0, starts_in_window=0, rate=5, period_ms=2_000, parallelism=2, updated_ms=T0 + 1
    )


def test_a_request_queued_twice_is_let_through_once() -> None:
    ledger = given(work("a", flow(parallelism=5)), work("a", flow(parallelism=5)))
    assert len(ledger) == 1
    assert released(ledger, T0) == ["a"]

    given(work("a", flow(parallelism=5)), ledger=ledger)  # again, while it is in flight

    assert released(ledger, T0 + 1) == []
    assert len(ledger) == 0


# ---------------------------------------------------------------------------------------------
# Leases: a call's offset is not held while it runs, so a lost call must free its place


def test_a_call_with_no_report_by_its_lease_end_expires_and_frees_its_place() -> None:
    ledger = given(call("c1", flow(parallelism=1), lease_ms=5_000), work("d", flow(parallelism=1)))
    assert released(ledger, T0 + 10) == ["c1"]
    assert ledger.next_wake_ms() == T0 + 5_010

    assert released(ledger, T0 + 5_009) == []
    let_through, expired = ledger.release(T0 + 5_010)

    assert [item.request_id for item, _ in let_through] == ["d"]
    assert expired == [
        FlowSlot(
            request_id="c1",
            flow=flow(parallelism=1),
            run_id="run-c1",
            emitted_ms=T0 + 10,
            started_ms=T0 + 5_010,  # it may have reached its endpoint until its lease ended
            settled_ms=T0 + 5_010,
            call_step_index=3,
            lease_until_ms=T0 + 5_010,
        )
    ]


def test_an_expired_call_counts_in_the_window_until_a_period_after_the_release_that_expired_it() -> None:
    limits = flow(rate=1, period_ms=10_000)
    ledger = given(call("c1", limits, lease_ms=5_000), work("d", limits))
    assert released(ledger, T0) == ["c1"]

    # its lease ends at T0 + 5_000, but the scheduler next releases at T0 + 5_200
    let_through, [expired] = ledger.release(T0 + 5_200)

    assert let_through == []
    assert (expired.started_ms, expired.settled_ms) == (T0 + 5_200, T0 + 5_200)
    assert ledger.next_wake_ms() == T0 + 15_200
    assert released(ledger, T0 + 15_199) == []
    assert released(ledger, T0 + 15_200) == ["d"]


def test_a_late_settlement_after_the_lease_ended_is_ignored() -> None:
    ledger = given(*(call(f"c{n}", flow(parallelism=1), lease_ms=1_000) for n in range(3)))
    assert released(ledger, T0) == ["c0"]
    let_through, expired = ledger.release(T0 + 1_000)
    assert ([item.request_id for item, _ in let_through], [slot.request_id for slot in expired]) == (["c1"], ["c0"])

    assert settled(ledger, "c0", at=T0 + 1_500) is None

    assert released(ledger, T0 + 1_500) == []  # c1 still holds the only place
    assert state(ledger, T0 + 1_500).in_flight == 1


def test_a_call_settled_before_its_lease_end_never_expires() -> None:
    ledger = given(call("c1", flow(parallelism=1), lease_ms=1_000))
    assert released(ledger, T0) == ["c1"]

    settled(ledger, "c1", at=T0 + 10)

    assert ledger.release(T0 + 1_000) == ([], [])


def test_a_delivery_has_no_lease() -> None:
    ledger = given(work("d", flow(parallelism=1)))
    assert released(ledger, T0) == ["d"]

    assert ledger.next_wake_ms() is None
    assert ledger.release(T0 + 10**9) == ([], [])
    assert state(ledger, T0 + 10**9).in_flight == 1


# ---------------------------------------------------------------------------------------------
# Restore: a new owner after a rebalance keeps to the same limits


def test_a_new_owner_restored_from_the_changelog_decides_as_the_old_one_would_have() -> None:
    limits = flow(rate=3, period_ms=1_000, parallelism=2)
    queued = [work(f"r{n}", limits) for n in range(8)]
    old = given(*queued)
    assert released(old, T0) == ["r0", "r1"]
    settled(old, "r1", at=T0 + 60)
    assert released(old, T0 + 60) == ["r2"]
    released(old, T0 + 70)

    new = restored(old.changes, *queued[3:])

    for ledger in (old, new):
        assert (state(ledger, T0 + 70).in_flight, state(ledger, T0 + 70).starts_in_window) == (2, 3)
    for request_id, now in [("r0", T0 + 500), ("r2", T0 + 1_000)]:
        assert released(old, now - 1) == released(new, now - 1) == []
        for ledger in (old, new):
            settled(ledger, request_id, at=now)
        assert released(old, now) == released(new, now) == []  # r1's settlement still counts
    assert released(old, T0 + 1_059) == released(new, T0 + 1_059) == []
    assert released(old, T0 + 1_060) == released(new, T0 + 1_060) == ["r3"]
    assert old.next_wake_ms() == new.next_wake_ms() == T0 + 1_500


def test_a_new_owner_decides_as_the_old_one_after_limits_with_a_longer_window_came_and_went() -> None:
    short, long = flow(rate=2, period_ms=300), flow(rate=2, period_ms=1_000)
    old = given(work("x", long), work("keep", short))
    assert released(old, T0) == ["x", "keep"]
    settled(old, "x", at=T0 + 1)
    assert released(old, T0 + 1_001) == []  # x has left; only work under the short window is held now
    given(work("a1", short), work("a2", short), ledger=old)
    assert released(old, T0 + 2_000) == ["a1"]  # keep, in flight, counts
    settled(old, "a1", at=T0 + 2_010)
    released(old, T0 + 2_010)

    new = restored(old.changes, work("a2", short))
    for ledger in (old, new):
        settled(ledger, "keep", at=T0 + 2_350)
        assert released(ledger, T0 + 2_350) == ["a2"]  # a1 has left the short window
        given(work("b", long), ledger=ledger)

    assert released(old, T0 + 2_400) == released(new, T0 + 2_400) == []
    assert old.next_wake_ms() == new.next_wake_ms() == T0 + 2_650


def test_a_new_owner_keeps_a_settlement_for_the_window_exactly_when_the_old_one_does() -> None:
    old = given(work("b", flow(rate=5)), work("a", flow(parallelism=2)))
    assert released(old, T0) == ["b", "a"]
    settled(old, "b", at=T0 + 10)
    new = FlowLedger()
    for name in ["a", "b"]:  # in order of their last writes
        slot = old.changes[name]
        assert slot is not None
        new.restore(0, slot)

    for ledger in (old, new):
        settled(ledger, "a", at=T0 + 20)
        given(work("c", flow(rate=1)), ledger=ledger)

    assert old.changes["a"] == new.changes["a"] is None
    assert released(old, T0 + 30) == released(new, T0 + 30) == []  # b's settlement fills c's window
    assert released(old, T0 + 1_010) == released(new, T0 + 1_010) == ["c"]


def test_a_new_owner_counts_work_in_flight_in_the_window_even_with_a_start_from_an_older_changelog() -> None:
    # as a scheduler that counted from the executor's reported start wrote it
    older = FlowSlot(request_id="a", flow=flow(rate=1), run_id="run-a", emitted_ms=T0, started_ms=T0 + 100)

    new = restored({"a": older}, work("b", flow(rate=1)))

    assert released(new, T0 + 5_000) == []
    assert new.next_wake_ms() is None
    assert state(new, T0 + 5_000).starts_in_window == 1
    slot = settled(new, "a", at=T0 + 5_000)
    assert slot is not None
    assert slot.started_ms == T0 + 5_000
    assert released(new, T0 + 5_999) == []
    assert released(new, T0 + 6_000) == ["b"]


def test_a_new_owner_counts_a_settled_slot_from_its_started_ms_or_else_its_settled_ms() -> None:
    limits = flow(rate=2)
    kept = {
        "x": FlowSlot(
            request_id="x", flow=limits, run_id="run-x", emitted_ms=T0, started_ms=T0 + 100, settled_ms=T0 + 400
        ),
        "y": FlowSlot(request_id="y", flow=limits, run_id="run-y", emitted_ms=T0, settled_ms=T0 + 300),
    }

    new = restored(kept, *(work(f"r{n}", limits) for n in range(2)))

    assert released(new, T0 + 1_099) == []
    assert released(new, T0 + 1_100) == ["r0"]  # x leaves a period after its started_ms
    assert released(new, T0 + 1_299) == []
    assert released(new, T0 + 1_300) == ["r1"]  # y, with none, a period after its settled_ms


def test_take_changes_gives_each_changelog_write_with_its_keys_partition_once() -> None:
    ledger = given(work("a", flow(parallelism=1), partition=3), work("b", flow(key=OTHER, rate=1), partition=5))
    released(ledger, T0)
    settled(ledger, "a", at=T0 + 1)

    changes = ledger.take_changes()

    assert sorted((partition, request_id, slot is None) for partition, request_id, slot in changes) == [
        (3, "a", True),
        (5, "b", False),
    ]
    assert ledger.take_changes() == []
    assert ledger.changes == {}


def test_a_restored_call_expires_at_the_same_lease_end() -> None:
    old = given(call("c", flow(parallelism=1), lease_ms=2_000), work("d", flow(parallelism=1)))
    assert released(old, T0) == ["c"]

    new = restored(old.changes, work("d", flow(parallelism=1)))

    assert released(new, T0 + 1_999) == []
    let_through, expired = new.release(T0 + 2_000)
    assert [slot.request_id for slot in expired] == ["c"]
    assert [item.request_id for item, _ in let_through] == ["d"]


def test_a_restored_slot_read_back_twice_counts_once() -> None:
    old = given(work("a", flow(parallelism=1)), work("b", flow(parallelism=1)))
    assert released(old, T0) == ["a"]
    first = old.changes["a"]
    assert first is not None
    new = FlowLedger()

    new.restore(0, first)
    new.restore(0, first)  # an older and a newer version of the entry, before compaction
    given(work("b", flow(parallelism=1)), ledger=new)
    settled(new, "a", at=T0 + 1)

    assert released(new, T0 + 1) == ["b"]


def test_a_restored_slot_read_back_in_flight_then_settled_counts_once_from_its_settlement() -> None:
    old = given(*(work(f"r{n}", flow(rate=2)) for n in range(3)))
    assert released(old, T0) == ["r0", "r1"]
    in_flight = old.changes["r0"]
    settled(old, "r0", at=T0 + 100)
    now_settled = old.changes["r0"]
    assert in_flight is not None
    assert now_settled is not None
    new = FlowLedger()

    for slot in [in_flight, now_settled, old.changes["r1"]]:  # both versions of r0's entry, before compaction
        assert slot is not None
        new.restore(0, slot)
    given(work("r2", flow(rate=2)), ledger=new)

    assert state(new, T0 + 100).starts_in_window == 2
    assert released(new, T0 + 1_099) == []
    assert released(new, T0 + 1_100) == ["r2"]


# ---------------------------------------------------------------------------------------------
# drop_partitions: another scheduler owns them now


def test_dropping_a_partition_forgets_its_keys_and_nothing_else() -> None:
    ledger = given(
        call("c", flow(parallelism=1), lease_ms=1_000, partition=0),
        work("a2", flow(parallelism=1), partition=0),
        work("b1", flow(key=OTHER, parallelism=1), partition=1),
        work("b2", flow(key=OTHER, parallelism=1), partition=1),
    )
    assert sorted(released(ledger, T0)) == ["b1", "c"]
    ledger.take_states(T0)
    given(work("a3", flow(parallelism=1), partition=0), ledger=ledger)  # touched since

    ledger.drop_partitions({0})

    assert ledger.keys() == [OTHER]
    assert len(ledger) == 1
    assert ledger.state(KEY, T0) is None
    assert ledger.release(T0 + 1_000) == ([], [])  # the dropped call's lease is not this owner's
    assert ledger.take_states(T0 + 1_000) == []
    settled(ledger, "b1", at=T0 + 1_001, key=OTHER)
    assert released(ledger, T0 + 1_001) == ["b2"]


# ---------------------------------------------------------------------------------------------
# take_states: what the api shows


def test_take_states_shows_each_changed_key_once_with_its_queue_work_in_flight_and_window() -> None:
    limits = flow(rate=2, period_ms=1_000, parallelism=3)
    ledger = given(*(work(f"r{n}", limits) for n in range(4)), work("x", flow(key=OTHER)))
    released(ledger, T0)
    settled(ledger, "r1", at=T0 + 30)
    released(ledger, T0 + 30)

    states = ledger.take_states(T0 + 40)

    assert states == [  # in order of key
        FlowKeyState(
            key=KEY, queued=2, in_flight=1, starts_in_window=2, rate=2, period_ms=1_000, parallelism=3,
            updated_ms=T0 + 40,
        ),
        FlowKeyState(
            key=OTHER, queued=0, in_flight=1, starts_in_window=1, rate=None, period_ms=1_000, parallelism=None,
            updated_ms=T0 + 40,
        ),
    ]  # fmt: skip
    assert ledger.take_states(T0 + 50) == []


def test_a_key_shows_its_work_in_flight_in_its_window_whatever_its_age() -> None:
    ledger = given(*(work(f"r{n}", flow(rate=2, parallelism=5)) for n in range(3)))
    released(ledger, T0)

    [shown] = ledger.take_states(T0 + 5_000)

    assert (shown.queued, shown.in_flight, shown.starts_in_window) == (1, 2, 2)


# ---------------------------------------------------------------------------------------------
# Property: random interleavings of a live scheduler's input (with rebalances) never exceed a key's
# limits, lose nothing, and let every request through once.

Cancel = tuple[str, str]  # (flow key, request id)
Input = Queued | FlowSettled | Cancel


@dataclass
class Model:
    """What the ledger should hold, kept by the test from the ledger's own answers."""

    limits: dict[str, FlowControl]  # the limits each key's work is requested with
    changing: bool = False  # each request with limits of its own, at random: the key's change over time
    items: dict[str, Queued] = field(default_factory=dict)  # every request ever queued
    queues: dict[str, list[Queued]] = field(default_factory=dict)  # per key, in order of arrival
    emitted: dict[str, int] = field(default_factory=dict)  # request id → when it was let through
    unsettled: dict[str, Queued] = field(default_factory=dict)
    leases: dict[str, int] = field(default_factory=dict)  # unsettled call → its lease end
    # request id → when the scheduler learnt it settled (its settlement applied, or its lease expired):
    # it counts in the rate window until a period after that
    anchors: dict[str, int] = field(default_factory=dict)
    settled: set[str] = field(default_factory=set)
    cancelled: set[str] = field(default_factory=set)
    changelog: dict[str, tuple[int, FlowSlot]] = field(default_factory=dict)  # request id → (partition, slot)
    seen: Counter[str] = field(default_factory=Counter)  # how often each path was taken

    def queued(self) -> list[Queued]:
        return [item for items in self.queues.values() for item in items]

    def key_of(self, request_id: str) -> str:
        return self.items[request_id].flow.key

    def partition_of(self, key: str) -> int:
        return sorted(self.limits).index(key) % 2


def random_limits(rng: random.Random, key: str) -> FlowControl:
    rate = rng.choice([None, 1, 2, 3, 5])
    parallelism = rng.choice([None, 1, 2, 4])
    return FlowControl(key=key, rate=rate, period_ms=rng.choice([1, 50, 300, 1_000]), parallelism=parallelism)


def random_input(model: Model, rng: random.Random, now: int, serial: int) -> list[Input]:
    """What a live scheduler may read next."""
    roll = rng.random()
    queued = model.queued()
    if roll < 0.35:
        key = rng.choice(sorted(model.limits))
        request_id = f"{key}/r{serial}"
        partition = model.partition_of(key)
        limits = random_limits(rng, key) if model.changing and rng.random() < 0.5 else model.limits[key]
        if rng.random() < 0.4:
            lease_ms = rng.choice([0, 10, 200, 2_000])
            return [call(request_id, limits, lease_ms=lease_ms, partition=partition)]
        return [work(request_id, limits, partition=partition)]
    if roll < 0.40 and (queued or model.unsettled):
        return [rng.choice([*queued, *model.unsettled.values()])]  # at-least-once: it arrives again
    if roll < 0.45 and queued:
        item = rng.choice(queued)
        return [(item.flow.key, item.request_id)]
    if roll < 0.65 and model.unsettled:
        return [random_settlement(model, rng, now, rng.choice(sorted(model.unsettled)))]
    if roll < 0.70 and model.settled:
        late = rng.choice(sorted(model.settled))  # settled or expired already: a late or repeated report
        return [random_settlement(model, rng, now, late)]
    return []


def random_settlement(model: Model, rng: random.Random, now: int, request_id: str) -> FlowSettled:
    """A report with the executor's times on its own clock, which may be behind or ahead of ``now``."""
    emitted = model.emitted[request_id]
    started_ms = emitted + rng.randint(-500, now - emitted + 500)
    settled_ms = started_ms + rng.randint(0, 300)
    return FlowSettled(
        request_id=request_id, flow_key=model.key_of(request_id), started_ms=started_ms, settled_ms=settled_ms
    )


def take(ledger: FlowLedger, one: Input, now: int) -> Queued | FlowSlot | None:
    match one:
        case Queued():
            ledger.queue(one)
            return None
        case FlowSettled():
            return ledger.settled(one, now)
        case (str(key), str(request_id)):
            return ledger.cancel(key, request_id)
    raise AssertionError(one)


def then_the_answer_is_right(model: Model, one: Input, answer: Queued | FlowSlot | None, now: int) -> None:
    match one:
        case Queued() if one.request_id not in model.items:
            model.items[one.request_id] = one
            model.queues.setdefault(one.flow.key, []).append(one)
        case Queued():
            model.seen["duplicate"] += 1  # ignored
        case FlowSettled() if one.request_id in model.unsettled:
            assert isinstance(answer, FlowSlot), f"{one} settled nothing"
            assert answer.settled_ms == one.settled_ms
            settle(model, answer, now)
        case FlowSettled():
            assert answer is None, f"{one.request_id} settled twice"
            model.seen["late report"] += 1
        case (str(key), str(request_id)):
            assert isinstance(answer, Queued)
            assert answer.request_id == request_id
            model.queues[key].remove(answer)
            model.cancelled.add(request_id)


def settle(model: Model, slot: FlowSlot, now: int) -> None:
    """``slot`` settled (or expired) at ``now``: it counts in the rate window until a period after ``now``."""
    assert slot.started_ms == now, f"{slot.request_id} is counted from {slot.started_ms}, not from {now}"
    model.anchors[slot.request_id] = now
    del model.unsettled[slot.request_id]
    model.leases.pop(slot.request_id, None)
    model.settled.add(slot.request_id)


def then_released(model: Model, ledger: FlowLedger, now: int, shadow: FlowLedger | None) -> None:
    """Release at ``now``, check what came out against the model, and the limits after it."""
    let_through, expired = ledger.release(now)
    changes = ledger.take_changes()
    if shadow is not None:  # the owner before the last rebalance, fed the same input, decides the same
        theirs, their_expired = shadow.release(now)
        assert sorted(item.request_id for item, _ in theirs) == sorted(item.request_id for item, _ in let_through)
        assert sorted(their_expired, key=str) == sorted(expired, key=str)
        assert sorted(shadow.take_changes(), key=str) == sorted(changes, key=str)
    for slot in expired:
        assert model.leases.get(slot.request_id, now + 1) <= now, f"{slot.request_id} expired before its lease end"
        assert slot.settled_ms == now
        settle(model, slot, now)
        model.seen["expired"] += 1
    for item, slot in let_through:
        queue = model.queues.get(item.flow.key)
        assert queue, f"{item.request_id} let through, but nothing is queued under {item.flow.key}"
        assert queue[0].request_id == item.request_id, f"{item.request_id} jumped the queue of {item.flow.key}"
        assert item.request_id not in model.emitted, f"{item.request_id} let through twice"
        queue.pop(0)
        assert (slot.request_id, slot.emitted_ms, slot.started_ms) == (item.request_id, now, None)
        model.emitted[item.request_id] = now
        model.unsettled[item.request_id] = item
        if item.call_step_index is not None:
            assert slot.lease_until_ms == now + item.lease_ms
            model.leases[item.request_id] = now + item.lease_ms
    for partition, request_id, change in changes:
        assert partition == model.partition_of(model.key_of(request_id))
        if change is None:
            model.changelog.pop(request_id, None)
        else:
            assert change.request_id == request_id
            model.changelog[request_id] = (partition, change)
    for request_id, (_, kept) in model.changelog.items():
        if kept.settled_ms is None:
            assert kept.started_ms is None, f"{request_id} in flight is written with a start"
            continue
        assert kept.started_ms == model.anchors[request_id]
        if not model.changing:
            period = model.limits[model.key_of(request_id)].period_ms
            assert kept.started_ms + period > now, f"{request_id} stays in the changelog past its window at {now}"
    then_within_limits(model, ledger, now)


def then_within_limits(model: Model, ledger: FlowLedger, now: int) -> None:
    """The ledger's counts are the model's, and within the key's limits at ``now``. Checked after every
    release, so at every moment work is let through: the most that ever count at once."""
    assert len(ledger) == len(model.queued()), "a queued request was lost, or one appeared"
    for key, limits in model.limits.items():
        in_flight = [request_id for request_id, item in model.unsettled.items() if item.flow.key == key]
        shown = ledger.state(key, now)
        if shown is None:
            assert not in_flight
            assert not model.queues.get(key)
        else:
            assert (shown.queued, shown.in_flight) == (len(model.queues.get(key, [])), len(in_flight))
        for request_id in in_flight:
            lease_end = model.leases.get(request_id)
            assert lease_end is None or lease_end > now or model.emitted[request_id] == now, (
                f"{request_id} is still in flight at {now}, past its lease end {lease_end}"
            )
        if model.changing:
            continue  # the limits in force move with the work held (see the unit tests above)
        if limits.parallelism is not None:
            assert len(in_flight) <= limits.parallelism, f"{key}: {len(in_flight)} in flight at {now}, {limits}"
        if limits.rate is not None:
            # in flight (it may reach the endpoint at any moment), or settled less than a period ago
            counted = in_flight + [
                request_id
                for request_id, at in model.anchors.items()
                if model.key_of(request_id) == key and at + limits.period_ms > now
            ]
            assert len(counted) <= limits.rate, f"{key}: {sorted(counted)} count in the window at {now}, {limits}"
            assert shown is None or shown.starts_in_window == len(counted)


def restore(model: Model, ledger: FlowLedger, partitions: set[int], rng: random.Random) -> FlowLedger:
    """An owner taking ``partitions`` over: their changelog read back, then their requests still
    queued, each key's in order. Some work in flight reads back as an older scheduler wrote it, with
    the start its executor reported."""
    for partition, slot in model.changelog.values():
        if partition in partitions:
            if slot.settled_ms is None and rng.random() < 0.3:
                slot = replace(slot, started_ms=slot.emitted_ms + rng.randint(0, 100))
                model.seen["older changelog"] += 1
            ledger.restore(partition, slot)
    for item in model.queued():
        if item.partition in partitions:
            ledger.queue(item)
    return ledger


def random_ledger_run(
    seed: int, steps: int = 150, *, changing: bool = False, spilled: SpilledQueues | None = None
) -> Model:
    """``spilled``: the ledgers' queues keep their first requests in memory and the rest in its file
    (the scheduler's); else all in memory."""
    rng = random.Random(seed)
    keys = [f"key{n}" for n in range(rng.randint(1, 3))]
    model = Model(limits={key: random_limits(rng, key) for key in keys}, changing=changing)

    def new_ledger() -> FlowLedger:
        return FlowLedger() if spilled is None else FlowLedger(spilled.queue)

    ledger, shadow = new_ledger(), None
    now = T0

    def feed(inputs: list[Input]) -> None:
        for one in inputs:
            answer = take(ledger, one, now)
            if shadow is not None:
                assert take(shadow, one, now) == answer
            then_the_answer_is_right(model, one, answer, now)

    for serial in range(steps):
        if rng.random() < 0.03:  # a rebalance: a new owner of every partition
            if spilled is not None:
                ledger.drop_partitions({0, 1})  # a new owner: the old one's file is gone with it
                shadow = None
            else:
                shadow = ledger
            ledger = restore(model, new_ledger(), {0, 1}, rng)
            model.seen["restore"] += 1
        elif rng.random() < 0.03:  # a failed transaction, or a partition revoked and assigned back
            gone = {rng.choice([0, 1])}
            shadow = copy.deepcopy(ledger) if spilled is None else None  # a file is not copied
            ledger.drop_partitions(gone)
            restore(model, ledger, gone, rng)
            model.seen["drop and restore"] += 1
        feed(random_input(model, rng, now, serial))
        then_released(model, ledger, now, shadow)
        wake = ledger.next_wake_ms()
        if wake is not None and rng.random() < 0.3:
            assert wake >= now  # a call with a lease of 0 ms ends as it starts
            now = wake
            model.seen["wake"] += 1
        else:
            now += rng.choice([0, 0, 1, 5, 20, 100, 400])
        then_released(model, ledger, now, shadow)

    # input stops: the executor settles the deliveries in flight (some calls are lost), time runs on
    for _ in range(1_000):
        if not model.queued() and not model.unsettled:
            break
        for request_id in sorted(model.unsettled):
            if request_id not in model.leases or rng.random() < 0.5:
                feed([random_settlement(model, rng, now, request_id)])
        then_released(model, ledger, now, shadow)
        if model.queued() or model.unsettled:
            wake = ledger.next_wake_ms()
            if not [request_id for request_id in model.unsettled if request_id not in model.leases]:
                assert wake is not None, f"work waits at {now} and nothing in flight can report: {model.queued()}"
            now = wake if wake is not None else now + 1
            then_released(model, ledger, now, shadow)
    return model


@pytest.mark.parametrize("seed", range(300))
def test_random_interleavings_keep_every_key_within_its_limits_and_let_all_work_through_once(seed: int) -> None:
    model = random_ledger_run(seed)

    assert model.queued() == []
    assert model.unsettled == {}
    assert set(model.emitted) == set(model.items) - model.cancelled


@pytest.mark.parametrize("seed", range(100))
def test_random_interleavings_with_changing_limits_restore_to_the_same_decisions_and_let_all_work_through(
    seed: int,
) -> None:
    model = random_ledger_run(seed, changing=True)

    assert (model.queued(), model.unsettled) == ([], {})
    assert set(model.emitted) == set(model.items) - model.cancelled


@pytest.mark.parametrize("seed", range(100))
def test_random_interleavings_with_each_keys_backlog_on_disk_decide_as_in_memory(seed: int) -> None:
    # the scheduler's queues, with two requests of a key in memory and the rest in the file
    spilled = SpilledQueues(head=2)
    try:
        model = random_ledger_run(seed, changing=seed % 2 == 1, spilled=spilled)
        assert (model.queued(), model.unsettled) == ([], {})
        assert set(model.emitted) == set(model.items) - model.cancelled
        assert spilled.on_disk() == 0  # every request spilled came back and was let through or cancelled
    finally:
        spilled.close()


def test_the_spilled_interleavings_use_the_file() -> None:
    spilled = SpilledQueues(head=2)
    try:
        for seed in range(20):
            random_ledger_run(seed, spilled=spilled)
        assert spilled.spilled > 100
    finally:
        spilled.close()


def test_the_random_interleavings_reach_every_path() -> None:
    seen: Counter[str] = Counter()
    for seed in range(60):
        model = random_ledger_run(seed)
        seen.update(model.seen)
        seen["let through"] += len(model.emitted)
        seen["cancelled"] += len(model.cancelled)
        seen["calls"] += sum(item.call_step_index is not None for item in model.items.values())
        seen["rate limited keys"] += sum(limits.rate is not None for limits in model.limits.values())
        seen["parallelism limited keys"] += sum(limits.parallelism is not None for limits in model.limits.values())

    assert {"duplicate", "late report", "expired", "restore", "drop and restore", "wake", "older changelog"} <= set(
        seen
    )
    assert min(seen.values()) > 10, seen
