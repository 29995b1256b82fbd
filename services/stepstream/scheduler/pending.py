"""The scheduler's pending work: requests held until they are due. Pure: the caller passes ``now``."""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from stepstream.core import CallRequested, DeliveryRequested, TimerRequested

# What the scheduler holds: everything on ``schedule`` except cancellations, which act on these.
HeldRecord = DeliveryRequested | CallRequested | TimerRequested


def due_ms(record: HeldRecord) -> int:
    if isinstance(record, DeliveryRequested | CallRequested):
        return record.not_before_ms
    return record.due_ms


@dataclass(frozen=True, slots=True)
class Held:
    partition: int  # the schedule partition it came from; its changelog entry lives there too
    record: HeldRecord
    arrival: int = field(default=0, compare=False)  # which heap entry is current for this request


class PendingWork:
    """Requests by id, and a heap by due time. A request id seen again replaces the earlier one."""

    def __init__(self) -> None:
        self._held: dict[str, Held] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._counter = 0  # breaks ties in arrival order

    def __len__(self) -> int:
        return len(self._held)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._held

    def add(self, partition: int, record: HeldRecord) -> None:
        self._counter += 1
        self._held[record.request_id] = Held(partition, record, self._counter)
        heapq.heappush(self._heap, (due_ms(record), self._counter, record.request_id))

    def remove(self, request_id: str) -> Held | None:
        return self._held.pop(request_id, None)

    def next_due_ms(self) -> int | None:
        self._discard_stale()
        return self._heap[0][0] if self._heap else None

    def pop_due(self, now_ms: int) -> list[Held]:
        """Every held request due at ``now_ms``, earliest first."""
        due: list[Held] = []
        while True:
            self._discard_stale()
            if not self._heap or self._heap[0][0] > now_ms:
                return due
            _, _, request_id = heapq.heappop(self._heap)
            due.append(self._held.pop(request_id))

    def drop_partitions(self, partitions: set[int]) -> None:
        for request_id in [rid for rid, held in self._held.items() if held.partition in partitions]:
            del self._held[request_id]

    def _discard_stale(self) -> None:
        # Removed or replaced requests leave heap entries behind; skip them lazily.
        while self._heap:
            _, arrival, request_id = self._heap[0]
            held = self._held.get(request_id)
            if held is not None and held.arrival == arrival:
                return
            heapq.heappop(self._heap)


__all__ = ["Held", "HeldRecord", "PendingWork", "due_ms"]
