"""``decide_waiters``, given → when → then: the waiter index of one event id."""

from __future__ import annotations

from stepstream.core import (
    BufferedNotification,
    NotifyEvent,
    ReceiveEvent,
    RegisterWaiter,
    ReportNotify,
    UnregisterWaiter,
    Waiter,
    WaiterCommand,
    WaiterState,
    decide_waiters,
)
from stepstream.core.waiters import STALE_WAITER_MS, WaiterOutput

EVENT = "order-42"
T0 = 1_700_000_000_000
BUFFER_MS = 10_000
TIMEOUT_AT = T0 + 60_000


def register(run_id: str, *, step_index: int = 1, now: int = T0, timeout_at_ms: int = TIMEOUT_AT) -> RegisterWaiter:
    return RegisterWaiter(event_id=EVENT, run_id=run_id, step_index=step_index, timeout_at_ms=timeout_at_ms, now_ms=now)


def unregister(run_id: str, *, step_index: int = 1, now: int = T0) -> UnregisterWaiter:
    return UnregisterWaiter(event_id=EVENT, run_id=run_id, step_index=step_index, now_ms=now)


def notify(data: str = '{"paid":true}', *, now: int = T0, reply: tuple[str, int] | None = None) -> NotifyEvent:
    return NotifyEvent(
        event_id=EVENT,
        data=data,
        now_ms=now,
        reply_run_id=reply[0] if reply else None,
        reply_step_index=reply[1] if reply else None,
    )


def received(run_id: str, *, step_index: int = 1, data: str = '{"paid":true}', now: int = T0) -> ReceiveEvent:
    return ReceiveEvent(run_id=run_id, step_index=step_index, event_id=EVENT, data=data, now_ms=now)


def given(*commands: WaiterCommand, buffer_ms: int = BUFFER_MS) -> WaiterState | None:
    state: WaiterState | None = None
    for command in commands:
        state, _ = decide_waiters(state, command, buffer_ms=buffer_ms)
    return state


def when(
    state: WaiterState | None, command: WaiterCommand, *, buffer_ms: int = BUFFER_MS
) -> tuple[WaiterState | None, list[WaiterOutput]]:
    return decide_waiters(state, command, buffer_ms=buffer_ms)


# ---------------------------------------------------------------------------------------------
# Waiting first, then the notification


def test_a_registered_waiter_is_kept_in_the_index() -> None:
    state, outputs = when(None, register("run_a"))

    assert outputs == []
    assert state == WaiterState(
        event_id=EVENT, waiters=(Waiter(run_id="run_a", step_index=1, timeout_at_ms=TIMEOUT_AT),), buffered=()
    )


def test_a_notification_wakes_the_registered_run_with_its_data() -> None:
    state = given(register("run_a"))

    _, outputs = when(state, notify(now=T0 + 5))

    assert outputs == [received("run_a", now=T0 + 5)]


def test_a_notification_wakes_every_waiter_and_leaves_none_waiting() -> None:
    state = given(register("run_a", step_index=1), register("run_b", step_index=4))

    after, outputs = when(state, notify())

    assert outputs == [received("run_a", step_index=1), received("run_b", step_index=4)]
    assert after is not None
    assert after.waiters == ()


def test_a_woken_run_is_not_woken_again_by_a_later_notification() -> None:
    state = given(register("run_a"), notify("1"))

    _, outputs = when(state, notify("2", now=T0 + 1))

    assert outputs == []


def test_a_notify_step_is_answered_with_the_runs_it_woke() -> None:
    state = given(register("run_a"), register("run_b"))

    _, outputs = when(state, notify(reply=("run_notifier", 3), now=T0 + 2))

    assert outputs[-1] == ReportNotify(run_id="run_notifier", step_index=3, notified=("run_a", "run_b"), now_ms=T0 + 2)


def test_a_notify_step_with_nobody_waiting_is_answered_with_an_empty_list() -> None:
    _, outputs = when(None, notify(reply=("run_notifier", 3)))

    assert outputs == [ReportNotify(run_id="run_notifier", step_index=3, notified=(), now_ms=T0)]


def test_registering_the_same_step_again_keeps_one_waiter_with_the_new_timeout() -> None:
    state = given(register("run_a", timeout_at_ms=T0 + 1), register("run_a", timeout_at_ms=T0 + 2))

    assert state is not None
    assert state.waiters == (Waiter(run_id="run_a", step_index=1, timeout_at_ms=T0 + 2),)


def test_two_steps_of_the_same_run_wait_separately() -> None:
    state = given(register("run_a", step_index=1), register("run_a", step_index=2))

    _, outputs = when(state, notify())

    assert outputs == [received("run_a", step_index=1), received("run_a", step_index=2)]


# ---------------------------------------------------------------------------------------------
# The notification first, then the wait: the buffer


def test_a_notification_with_nobody_waiting_is_buffered() -> None:
    state, outputs = when(None, notify(now=T0))

    assert outputs == []
    assert state == WaiterState(
        event_id=EVENT,
        waiters=(),
        buffered=(BufferedNotification(data='{"paid":true}', at_ms=T0, expires_at_ms=T0 + BUFFER_MS, delivered_to=()),),
    )


def test_a_run_that_starts_waiting_within_the_buffer_is_woken_at_once() -> None:
    state = given(notify(now=T0))

    after, outputs = when(state, register("run_a", now=T0 + BUFFER_MS - 1))

    assert outputs == [received("run_a", now=T0 + BUFFER_MS - 1)]
    assert after is not None
    assert after.waiters == ()  # woken, so not waiting


def test_a_buffered_notification_wakes_each_run_once() -> None:
    state = given(notify(now=T0), register("run_a", step_index=1, now=T0 + 1))

    # run_a waits again (a second wait on the same event id): the notification it had is not repeated
    after, outputs = when(state, register("run_a", step_index=5, now=T0 + 2))

    assert outputs == []
    assert after is not None
    assert after.waiters == (Waiter(run_id="run_a", step_index=5, timeout_at_ms=TIMEOUT_AT),)


def test_a_buffered_notification_wakes_other_runs_too() -> None:
    state = given(notify(now=T0), register("run_a", now=T0 + 1))

    _, outputs = when(state, register("run_b", now=T0 + 2))

    assert outputs == [received("run_b", now=T0 + 2)]


def test_runs_woken_when_the_notification_came_do_not_get_it_again_from_the_buffer() -> None:
    state = given(register("run_a", step_index=1), notify(now=T0))

    after, outputs = when(state, register("run_a", step_index=2, now=T0 + 1))

    assert outputs == []
    assert after is not None
    assert [waiter.step_index for waiter in after.waiters] == [2]


def test_a_run_gets_the_buffered_notifications_one_wait_at_a_time() -> None:
    state = given(notify("1", now=T0), notify("2", now=T0 + 1))

    state, first = when(state, register("run_a", step_index=1, now=T0 + 2))
    state, second = when(state, register("run_a", step_index=2, now=T0 + 3))
    _, third = when(state, register("run_a", step_index=3, now=T0 + 4))

    assert first == [received("run_a", step_index=1, data="1", now=T0 + 2)]
    assert second == [received("run_a", step_index=2, data="2", now=T0 + 3)]
    assert third == []


def test_a_run_that_starts_waiting_after_the_buffer_expired_is_not_woken() -> None:
    state = given(notify(now=T0))

    after, outputs = when(state, register("run_a", now=T0 + BUFFER_MS))

    assert outputs == []
    assert after is not None
    assert after.buffered == ()
    assert [waiter.run_id for waiter in after.waiters] == ["run_a"]


def test_without_a_buffer_a_notification_nobody_waits_for_is_lost() -> None:
    state, outputs = when(None, notify(), buffer_ms=0)

    assert (state, outputs) == (None, [])
    assert when(state, register("run_a", now=T0), buffer_ms=0)[1] == []


# ---------------------------------------------------------------------------------------------
# Unregistering and pruning


def test_an_unregistered_waiter_is_not_woken() -> None:
    state = given(register("run_a"), register("run_b"), unregister("run_a"))

    _, outputs = when(state, notify())

    assert outputs == [received("run_b")]


def test_unregistering_only_removes_that_step() -> None:
    state = given(register("run_a", step_index=1), register("run_a", step_index=2), unregister("run_a", step_index=1))

    assert state is not None
    assert [waiter.step_index for waiter in state.waiters] == [2]


def test_an_index_with_nothing_left_to_keep_is_none() -> None:
    assert given(register("run_a"), unregister("run_a")) is None
    assert given(register("run_a"), notify(), buffer_ms=0) is None
    assert given(notify(now=T0), unregister("run_x", now=T0 + BUFFER_MS)) is None  # the buffer expired


def test_unregistering_from_an_empty_index_is_harmless() -> None:
    assert when(None, unregister("run_a")) == (None, [])


def test_a_waiter_long_past_its_timeout_is_dropped() -> None:
    state = given(register("run_a", timeout_at_ms=T0 + 10))

    kept, _ = when(state, unregister("run_other", now=T0 + 10 + STALE_WAITER_MS - 1))
    _, outputs = when(state, notify(now=T0 + 10 + STALE_WAITER_MS))

    assert kept is not None
    assert [waiter.run_id for waiter in kept.waiters] == ["run_a"]
    assert outputs == []
