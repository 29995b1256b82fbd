"""The waiter index of one event id: which runs wait on it, and notifications that came early.

Notifications are keyed by event id, not run id, so the projector that owns an event id's partition
keeps this index for it (snapshots in the compacted ``waiters`` topic). A run that starts waiting
registers here; a notification wakes every registered run and is also kept for ``buffer_ms``, so a
run that starts waiting shortly after still receives it — from the buffer, each run at most once per
notification (a run waiting twice on one id at the same moment is woken in each wait).
Pure, like the rest of the core: ``now`` arrives on the command.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import assert_never

from stepstream.core.commands import ReceiveEvent, ReportNotify

# A waiter whose run never unregistered (it was deleted, or its unregister was lost) is dropped this
# long after its timeout, so the index cannot grow without bound.
STALE_WAITER_MS = 3_600_000


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiter:
    run_id: str
    step_index: int
    timeout_at_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BufferedNotification:
    data: str  # JSON text
    at_ms: int
    expires_at_ms: int
    delivered_to: tuple[str, ...]  # run ids that already received it
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class WaiterState:
    event_id: str
    waiters: tuple[Waiter, ...]
    buffered: tuple[BufferedNotification, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RegisterWaiter:
    event_id: str
    run_id: str
    step_index: int
    timeout_at_ms: int
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class UnregisterWaiter:
    """The run stopped waiting (timed out, cancelled, failed)."""

    event_id: str
    run_id: str
    step_index: int
    now_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyEvent:
    """Wake the runs waiting on ``event_id``; ``reply_run_id``/``reply_step_index`` name a ``notify`` step to answer."""

    event_id: str
    data: str  # JSON text
    now_ms: int
    reply_run_id: str | None = None
    reply_step_index: int | None = None
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


WaiterCommand = RegisterWaiter | UnregisterWaiter | NotifyEvent
WaiterOutput = ReceiveEvent | ReportNotify


def decide_waiters(
    state: WaiterState | None, command: WaiterCommand, *, buffer_ms: int
) -> tuple[WaiterState | None, list[WaiterOutput]]:
    """The event id's new index (None: nothing left to keep) and the commands for the runs it wakes."""
    now = command.now_ms
    current = _pruned(state or WaiterState(event_id=command.event_id, waiters=(), buffered=()), now)
    outputs: list[WaiterOutput] = []
    match command:
        case RegisterWaiter():
            for position, early in enumerate(current.buffered):
                if command.run_id not in early.delivered_to:
                    outputs.append(
                        _receive(command.run_id, command.step_index, command.event_id, early.data, now, early.actor)
                    )
                    delivered = replace(early, delivered_to=(*early.delivered_to, command.run_id))
                    buffered = (*current.buffered[:position], delivered, *current.buffered[position + 1 :])
                    current = replace(current, buffered=buffered)
                    break
            else:
                waiter = Waiter(
                    run_id=command.run_id, step_index=command.step_index, timeout_at_ms=command.timeout_at_ms
                )
                others = tuple(
                    w for w in current.waiters if (w.run_id, w.step_index) != (waiter.run_id, waiter.step_index)
                )
                current = replace(current, waiters=(*others, waiter))
        case UnregisterWaiter():
            waiters = tuple(
                w for w in current.waiters if (w.run_id, w.step_index) != (command.run_id, command.step_index)
            )
            current = replace(current, waiters=waiters)
        case NotifyEvent():
            woken = current.waiters
            outputs.extend(
                _receive(w.run_id, w.step_index, command.event_id, command.data, now, command.actor) for w in woken
            )
            buffered = current.buffered
            if buffer_ms > 0:
                early = BufferedNotification(
                    data=command.data,
                    at_ms=now,
                    expires_at_ms=now + buffer_ms,
                    delivered_to=tuple(dict.fromkeys(w.run_id for w in woken)),
                    actor=command.actor,
                )
                buffered = (*buffered, early)
            current = replace(current, waiters=(), buffered=buffered)
            if command.reply_run_id is not None and command.reply_step_index is not None:
                outputs.append(
                    ReportNotify(
                        run_id=command.reply_run_id,
                        step_index=command.reply_step_index,
                        notified=tuple(dict.fromkeys(w.run_id for w in woken)),
                        now_ms=now,
                    )
                )
        case _:
            assert_never(command)
    if not current.waiters and not current.buffered:
        return None, outputs
    return current, outputs


def _pruned(state: WaiterState, now: int) -> WaiterState:
    return replace(
        state,
        waiters=tuple(w for w in state.waiters if w.timeout_at_ms + STALE_WAITER_MS > now),
        buffered=tuple(b for b in state.buffered if b.expires_at_ms > now),
    )


def _receive(run_id: str, step_index: int, event_id: str, data: str, now: int, actor: str | None) -> ReceiveEvent:
    return ReceiveEvent(run_id=run_id, step_index=step_index, event_id=event_id, data=data, now_ms=now, actor=actor)
