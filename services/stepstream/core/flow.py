"""Flow control: which of a key's queued deliveries may start now. Pure: the caller passes ``now``.

A flow-control key limits the work under it by **rate** (at most ``rate`` starts in any window of
``period_ms``: a sliding window, so no boundary lets twice the rate through) and **parallelism**
(at most ``parallelism`` deliveries started and not yet settled). Work over a limit waits in its
key's queue, first in first out, and is never dropped.

The :class:`FlowLedger` is the scheduler's account of its keys. Each key lives in one ``schedule``
partition, so it has one owner at a time; the ledger's slots (work let through, not yet settled, or
settled and still inside the rate window) are written to the scheduler's changelog, so a new owner
after a rebalance knows what is in flight and what started lately, and keeps to the same limits.

The rate window is on the scheduler's clock, so that it holds as the endpoint sees the starts: a slot
counts in it from the moment it is let through (its request may reach the endpoint at any time after
that) until ``period_ms`` after its settlement reaches the scheduler, or after its lease ends for a
call that was never reported; the request reached the endpoint, if at all, before then. So an
unsettled slot counts whatever its age, and the times the executor reports are not used: neither its
clock nor the delays between it and the endpoint matter.

Each queued item carries the limits it was requested with; a key obeys the most permissive limits
among its queued and unsettled work, so after a change the old work drains under the higher of the
two, and the new limits alone hold once it has.
"""

from __future__ import annotations

import bisect
import heapq
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from stepstream.core.messages import FlowControl

Limits = tuple[int | None, int, int | None]  # rate, period_ms, parallelism


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSettled:
    """The executor is done with a delivery (or call) under ``flow_key``: answered, failed or timed
    out, and reported. Its place under the key's parallelism is free. On ``schedule``.

    Its times are the executor's clock. The ledger counts the slot in the rate window from when this
    record reaches the scheduler, not from ``started_ms`` (kept for information)."""

    request_id: str
    flow_key: str
    started_ms: int
    settled_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowSlot:
    """A request let through its key's limits: in flight until settled, and counted in the rate
    window until ``period_ms`` after the scheduler learnt it settled. Kept in the scheduler's changelog.

    ``started_ms`` is the moment the rate window counts it from: when the scheduler learnt it settled
    (None while in flight, when it counts whatever its age). ``settled_ms`` is when it settled, as
    reported (the executor's clock), or when its lease ended.

    ``call_step_index`` and ``lease_until_ms`` are set for a call: its offset is not held while it
    runs, so if no report comes by ``lease_until_ms`` the scheduler frees the place and fires the
    call's deadline timer (the projector then retries the attempt).
    """

    request_id: str
    flow: FlowControl
    run_id: str
    emitted_ms: int
    started_ms: int | None = None
    settled_ms: int | None = None
    call_step_index: int | None = None
    lease_until_ms: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class FlowKeyState:
    """A key at a moment, as the api shows it: its queue, its work in flight, the starts in its
    current rate window, and the limits in force (the most permissive of its queued and in-flight
    work's, or the last seen when it has none)."""

    key: str
    queued: int
    in_flight: int
    starts_in_window: int
    rate: int | None
    period_ms: int
    parallelism: int | None
    updated_ms: int


@dataclass(slots=True, kw_only=True)
class Queued:
    """A request waiting for its key's limits. ``value`` is the encoded record to emit."""

    request_id: str
    flow: FlowControl
    partition: int
    run_id: str
    value: bytes
    call_step_index: int | None = None
    lease_ms: int = 0
    # A delivery held without its results (``core.apart``): let through, it goes to the projector,
    # which adds them, instead of straight to the executor.
    apart: bool = False


class KeyQueue(Protocol):
    """A key's queued requests, first in first out, by request id. :class:`MemoryQueue` holds them in
    memory; the scheduler's keeps only each key's first ones there and the rest on disk
    (``scheduler/queues.py``), so a key's backlog of a million costs a file, not memory."""

    def __len__(self) -> int: ...
    def __contains__(self, request_id: str) -> bool: ...
    def append(self, item: Queued) -> None: ...
    def remove(self, request_id: str) -> Queued | None: ...
    def head(self) -> Queued | None: ...
    def popleft(self) -> Queued: ...
    def clear(self) -> None: ...


class MemoryQueue:
    """A key's queue in memory: insertion order is arrival order, and a request taken out (cancelled)
    leaves its place at once."""

    def __init__(self, name: str = "") -> None:
        self._items: OrderedDict[str, Queued] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._items

    def append(self, item: Queued) -> None:
        self._items[item.request_id] = item

    def remove(self, request_id: str) -> Queued | None:
        return self._items.pop(request_id, None)

    def head(self) -> Queued | None:
        return next(iter(self._items.values()), None)

    def popleft(self) -> Queued:
        return self._items.popitem(last=False)[1]

    def clear(self) -> None:
        self._items.clear()


def most_permissive(limits: Counter[Limits]) -> Limits | None:
    """The limits a key obeys while work with each of ``limits`` is queued or in flight: the highest
    parallelism, and the highest rate per time (no limit is the highest of all)."""
    if not limits:
        return None
    present = list(limits)
    parallelism = None if any(p is None for _, _, p in present) else max(p for _, _, p in present if p is not None)
    rates = [(rate, period) for rate, period, _ in present if rate is not None]
    if len(rates) < len(present):
        return (None, max(period for _, period, _ in present), parallelism)
    best_rate, best_period = rates[0]
    for rate, period in rates[1:]:
        # rate / period > best_rate / best_period, in integers; on a tie the shorter window.
        if rate * best_period > best_rate * period or (
            rate * best_period == best_rate * period and period < best_period
        ):
            best_rate, best_period = rate, period
    return (best_rate, best_period, parallelism)


class _Key:
    __slots__ = (
        "anchors",
        "last_limits",
        "limits",
        "name",
        "partition",
        "periods",
        "queue",
        "slots",
        "unsettled",
        "wake_ms",
    )

    def __init__(self, name: str, partition: int, queue: KeyQueue) -> None:
        self.name = name
        self.partition = partition
        self.queue = queue  # the requests waiting for the key's limits, in arrival order
        self.slots: dict[str, FlowSlot] = {}
        self.unsettled = 0  # each counts in the rate window, whatever its age
        # The settled slots kept for the rate window, as (anchor: their started_ms, when the scheduler
        # learnt they settled; request id), sorted. Kept exactly while the anchor is inside window_ms.
        self.anchors: list[tuple[int, str]] = []
        self.limits: Counter[Limits] = Counter()  # of queued and unsettled work
        self.last_limits: Limits = (None, 1_000, None)
        # The periods of queued work and of slots: anchors older than the longest no longer matter. Of
        # the work held now, not of all seen, so a new owner restored from the changelog prunes alike.
        self.periods: Counter[int] = Counter()
        self.wake_ms: int | None = None  # the earliest wake of this key in the ledger's heap, if any

    def effective(self) -> Limits:
        return most_permissive(self.limits) or self.last_limits

    def add_limits(self, flow: FlowControl) -> None:
        self.limits[flow.limits] += 1
        self.last_limits = flow.limits

    def drop_limits(self, flow: FlowControl) -> None:
        self.limits[flow.limits] -= 1
        if self.limits[flow.limits] <= 0:
            del self.limits[flow.limits]

    @property
    def window_ms(self) -> int:
        return max(self.periods) if self.periods else 0

    def drop_period(self, flow: FlowControl) -> None:
        self.periods[flow.period_ms] -= 1
        if self.periods[flow.period_ms] <= 0:
            del self.periods[flow.period_ms]

    def starts_in_window(self, now: int, period_ms: int) -> int:
        settled = len(self.anchors) - bisect.bisect_right(self.anchors, (now - period_ms, "\U0010ffff"))
        return settled + self.unsettled  # an unsettled slot may be starting at the endpoint right now

    @property
    def idle(self) -> bool:
        return len(self.queue) == 0 and not self.slots


class FlowLedger:
    """Queues, slots and rate windows of every flow-control key a scheduler owns.

    Changes to slots are collected in :attr:`changes` (a slot to write to the changelog, or None to
    delete it), for the caller to persist; :meth:`take_states` gives the keys that changed since it
    was last called, for the caller to publish.
    """

    def __init__(self, queues: Callable[[str], KeyQueue] = MemoryQueue) -> None:
        """``queues``: makes the queue of a key, given its name (by default in memory)."""
        self._queues = queues
        self._keys: dict[str, _Key] = {}
        self._dirty: set[str] = set()  # keys whose queue may move
        self._wakes: list[tuple[int, str]] = []  # (when a key's window opens or a start leaves it, key); may be stale
        self._leases: list[tuple[int, str, str]] = []  # (lease end, key, request id); may be stale
        self._flows: dict[FlowControl, FlowControl] = {}  # one object per distinct setting
        self.changes: dict[str, FlowSlot | None] = {}
        self._change_partitions: dict[str, int] = {}
        self.touched: set[str] = set()
        self._gone: dict[str, Limits] = {}  # keys forgotten (idle) since take_states, with their last limits

    def __len__(self) -> int:
        return sum(len(key.queue) for key in self._keys.values())

    def keys(self) -> list[str]:
        return list(self._keys)

    def _key(self, name: str, partition: int) -> _Key:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = _Key(name, partition, self._queues(name))
        return key

    def _intern(self, flow: FlowControl) -> FlowControl:
        return self._flows.setdefault(flow, flow)

    def queue(self, item: Queued) -> None:
        """Add a request that is due; it starts when its key's limits allow, after those before it."""
        item.flow = self._intern(item.flow)
        key = self._key(item.flow.key, item.partition)
        if item.request_id in key.slots or item.request_id in key.queue:
            return  # a duplicate of a request already queued or let through
        key.queue.append(item)  # queued again after a cancellation, it goes to the back
        key.add_limits(item.flow)
        key.periods[item.flow.period_ms] += 1
        self._dirty.add(key.name)
        self.touched.add(key.name)

    def cancel(self, flow_key: str, request_id: str) -> Queued | None:
        """Take a queued request out; one already let through stays in flight until it settles."""
        key = self._keys.get(flow_key)
        item = key.queue.remove(request_id) if key is not None else None
        if key is None or item is None:
            return None
        key.drop_limits(item.flow)
        key.drop_period(item.flow)
        self._dirty.add(key.name)
        self.touched.add(key.name)
        self._forget_if_idle(key)
        return item

    def restore(self, partition: int, slot: FlowSlot) -> None:
        """A slot read back from the changelog, when the scheduler takes over its partition."""
        if slot.settled_ms is None:
            anchor = None  # in flight, it counts whatever its age (older code may have written a start)
        else:
            anchor = slot.started_ms if slot.started_ms is not None else slot.settled_ms
        slot = replace(slot, flow=self._intern(slot.flow), started_ms=anchor)
        key = self._key(slot.flow.key, partition)
        earlier = key.slots.get(slot.request_id)
        if earlier is not None:  # an older version of the same entry, read back before compaction
            self._unaccount(key, earlier)
            key.drop_period(earlier.flow)
        key.last_limits = slot.flow.limits
        key.slots[slot.request_id] = slot
        key.periods[slot.flow.period_ms] += 1
        if slot.settled_ms is None:
            key.unsettled += 1
            key.add_limits(slot.flow)
            if slot.lease_until_ms is not None:
                heapq.heappush(self._leases, (slot.lease_until_ms, key.name, slot.request_id))
        if anchor is not None:
            bisect.insort(key.anchors, (anchor, slot.request_id))
        self._dirty.add(key.name)
        self.touched.add(key.name)

    def settled(self, record: FlowSettled, now_ms: int) -> FlowSlot | None:
        """The slot the report settles, or None if it was unknown or settled already. It counts in the
        rate window until ``period_ms`` after ``now_ms``, when the report reached the scheduler (the
        request reached the endpoint before that); the executor's ``record.started_ms`` is not used."""
        key = self._keys.get(record.flow_key)
        slot = key.slots.get(record.request_id) if key is not None else None
        if key is None or slot is None or slot.settled_ms is not None:
            return None
        return self._settle(key, slot, record.settled_ms, now_ms)

    def release(self, now_ms: int) -> tuple[list[tuple[Queued, FlowSlot]], list[FlowSlot]]:
        """Let through every queued request the limits allow at ``now_ms``, in order per key.

        Returns what was let through (each with its new slot), and the calls whose lease ended
        unsettled (their places are free now; the caller fires their deadlines).
        """
        expired: list[FlowSlot] = []
        while self._leases and self._leases[0][0] <= now_ms:
            _, name, request_id = heapq.heappop(self._leases)
            key = self._keys.get(name)
            slot = key.slots.get(request_id) if key is not None else None
            if key is None or slot is None or slot.settled_ms is not None or slot.lease_until_ms is None:
                continue
            # the call may have reached its endpoint at any time until now
            expired.append(self._settle(key, slot, now_ms, now_ms))
        while self._wakes and self._wakes[0][0] <= now_ms:
            _, name = heapq.heappop(self._wakes)
            key = self._keys.get(name)
            if key is not None and key.wake_ms is not None and key.wake_ms <= now_ms:
                key.wake_ms = None
            self._dirty.add(name)
        let_through: list[tuple[Queued, FlowSlot]] = []
        dirty, self._dirty = self._dirty, set()
        for name in dirty:
            key = self._keys.get(name)
            if key is None:
                continue
            self._prune(key, now_ms)
            let_through.extend(self._drain(key, now_ms))
            self._wake_when_a_settled_slot_leaves(key)
            self._forget_if_idle(key)
        return let_through, expired

    def next_wake_ms(self) -> int | None:
        """When ``release`` may next let something through with no new input (a window opening, or a
        lease ending); None: only new input can."""
        candidates = [when for when, *_ in self._wakes[:1]] + [when for when, *_ in self._leases[:1]]
        return min(candidates) if candidates else None

    def state(self, name: str, now_ms: int) -> FlowKeyState | None:
        key = self._keys.get(name)
        if key is None:
            return None
        rate, period, parallelism = key.effective()
        return FlowKeyState(
            key=name,
            queued=len(key.queue),
            in_flight=key.unsettled,
            starts_in_window=key.starts_in_window(now_ms, period),
            rate=rate,
            period_ms=period,
            parallelism=parallelism,
            updated_ms=now_ms,
        )

    def depths(self) -> list[tuple[str, int, int]]:
        """Each key held: its name, requests queued, and requests let through and not settled."""
        return [(name, len(key.queue), key.unsettled) for name, key in self._keys.items()]

    def take_changes(self) -> list[tuple[int, str, FlowSlot | None]]:
        """The changelog writes since the last call, each with its key's partition: a slot to keep,
        or None to delete it."""
        taken = [(self._change_partitions[rid], rid, slot) for rid, slot in self.changes.items()]
        self.changes.clear()
        self._change_partitions.clear()
        return taken

    def take_states(self, now_ms: int) -> list[FlowKeyState]:
        """The state of every key that changed since the last call (an idle key shows zeros and the
        limits it last had)."""
        states: list[FlowKeyState] = []
        for name in sorted(self.touched):
            state = self.state(name, now_ms)
            if state is not None:
                states.append(state)
            else:
                rate, period, parallelism = self._gone.get(name, (None, 1_000, None))
                states.append(
                    FlowKeyState(
                        key=name,
                        queued=0,
                        in_flight=0,
                        starts_in_window=0,
                        rate=rate,
                        period_ms=period,
                        parallelism=parallelism,
                        updated_ms=now_ms,
                    )
                )
        self.touched.clear()
        self._gone.clear()
        return states

    def drop_partitions(self, partitions: set[int]) -> None:
        for name in [name for name, key in self._keys.items() if key.partition in partitions]:
            self._keys.pop(name).queue.clear()
            self._dirty.discard(name)
            self.touched.discard(name)
            self._gone.pop(name, None)

    # -- inside ----------------------------------------------------------------------------------

    def _drain(self, key: _Key, now: int) -> list[tuple[Queued, FlowSlot]]:
        out: list[tuple[Queued, FlowSlot]] = []
        while (item := key.queue.head()) is not None:
            request_id = item.request_id
            rate, period, parallelism = key.effective()
            if parallelism is not None and key.unsettled >= parallelism:
                return out  # a settlement will wake the key
            if rate is not None and key.starts_in_window(now, period) >= rate:
                self._wake_when_window_opens(key, now, rate, period)
                return out
            key.queue.popleft()
            slot = FlowSlot(
                request_id=request_id,
                flow=item.flow,
                run_id=item.run_id,
                emitted_ms=now,
                call_step_index=item.call_step_index,
                lease_until_ms=now + item.lease_ms if item.call_step_index is not None else None,
            )
            key.slots[request_id] = slot
            key.unsettled += 1
            if slot.lease_until_ms is not None:
                heapq.heappush(self._leases, (slot.lease_until_ms, key.name, request_id))
            self._change(key, request_id, slot)
            self.touched.add(key.name)
            out.append((item, slot))
        return out

    def _wake_when_window_opens(self, key: _Key, now: int, rate: int, period: int) -> None:
        """Rate-blocked: wake when enough settled slots have left the window to let one more in.
        If the unsettled slots alone fill it, only a settlement can open it."""
        first = bisect.bisect_right(key.anchors, (now - period, "\U0010ffff"))
        must_leave = key.starts_in_window(now, period) - rate + 1
        if must_leave <= len(key.anchors) - first:
            self._wake_at(key, key.anchors[first + must_leave - 1][0] + period)

    def _wake_when_a_settled_slot_leaves(self, key: _Key) -> None:
        """A settled slot stays (in the changelog too) until its anchor leaves the longest window:
        wake then to delete it, though nothing may be queued to wake the key otherwise."""
        if key.anchors:
            self._wake_at(key, key.anchors[0][0] + key.window_ms)

    def _wake_at(self, key: _Key, when: int) -> None:
        # One wake per key in the heap at a time, the earliest (waking, the key sets its next): a
        # blocked key is dirtied by every record it gets, and would push a wake for each.
        if key.wake_ms is None or when < key.wake_ms:
            key.wake_ms = when
            heapq.heappush(self._wakes, (when, key.name))

    def _settle(self, key: _Key, slot: FlowSlot, settled_ms: int, now: int) -> FlowSlot:
        """Free ``slot``'s place; it counts in the rate window until ``period`` after ``now``."""
        settled = replace(slot, started_ms=now, settled_ms=settled_ms)
        self._unaccount(key, slot)
        # Kept for the window if it, or the work held now, has a rate (not the last limits seen: a
        # new owner restored from the changelog does not know those, and must decide alike).
        in_force = most_permissive(key.limits)
        if slot.flow.rate is not None or (in_force is not None and in_force[0] is not None):
            key.slots[slot.request_id] = settled
            bisect.insort(key.anchors, (now, slot.request_id))
            self._change(key, slot.request_id, settled)
        else:
            key.drop_period(slot.flow)
            self._change(key, slot.request_id, None)
        self._dirty.add(key.name)
        self.touched.add(key.name)
        return settled

    def _unaccount(self, key: _Key, slot: FlowSlot) -> None:
        """Take ``slot`` out of the key: out of its slots, its counts and its window."""
        del key.slots[slot.request_id]
        if slot.settled_ms is None:
            key.unsettled -= 1
            key.drop_limits(slot.flow)
        elif slot.started_ms is not None:  # always, for a settled slot
            self._remove_anchor(key, slot.started_ms, slot.request_id)

    def _change(self, key: _Key, request_id: str, slot: FlowSlot | None) -> None:
        self.changes[request_id] = slot
        self._change_partitions[request_id] = key.partition

    def _remove_anchor(self, key: _Key, anchor: int, request_id: str) -> None:
        index = bisect.bisect_left(key.anchors, (anchor, request_id))
        if index < len(key.anchors) and key.anchors[index] == (anchor, request_id):
            del key.anchors[index]

    def _prune(self, key: _Key, now: int) -> None:
        """Settled slots whose anchor is older than the longest window no longer count, and are done
        (and with them gone, the longest window may be shorter)."""
        while cut := bisect.bisect_right(key.anchors, (now - key.window_ms, "\U0010ffff")):
            for _, request_id in key.anchors[:cut]:
                slot = key.slots.pop(request_id)
                key.drop_period(slot.flow)
                self._change(key, request_id, None)
            del key.anchors[:cut]
            self.touched.add(key.name)

    def _forget_if_idle(self, key: _Key) -> None:
        if key.idle:
            self._keys.pop(key.name, None)
            self._gone[key.name] = key.last_limits
            self.touched.add(key.name)


__all__ = [
    "FlowKeyState",
    "FlowLedger",
    "FlowSettled",
    "FlowSlot",
    "KeyQueue",
    "Limits",
    "MemoryQueue",
    "Queued",
    "most_permissive",
]
