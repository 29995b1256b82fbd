"""The results of a delivery that travel apart from it (:mod:`stepstream.core.apart`), held from when
the executor reads them until it reads their delivery, just after them in the same partition."""

from __future__ import annotations

from collections.abc import Iterable

from stepstream.core import Delivery, DeliverySteps
from stepstream.core.apart import join


class PartsInHand:
    """``DeliverySteps`` read and not yet joined to their delivery, by partition and request id.

    Their offsets are held in the partition's progress like the delivery's own, so a crash before the
    delivery reports makes the next owner read the parts again with it."""

    def __init__(self) -> None:
        # By offset: a part read twice (the partition read again from an earlier offset) counts once.
        self._held: dict[tuple[int, str], dict[int, DeliverySteps]] = {}

    def add(self, partition: int, offset: int, part: DeliverySteps) -> None:
        self._held.setdefault((partition, f"{part.delivery_id}#{part.attempt}"), {})[offset] = part

    def take(self, partition: int, delivery: Delivery) -> tuple[Delivery | None, list[int]]:
        """``delivery`` with its results joined (None if some were not read), and the parts' offsets."""
        held = self._held.pop((partition, delivery.request_id), {})
        offsets = sorted(held)
        return join(delivery, [held[offset] for offset in offsets]), offsets

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the parts of partitions let go: their next owner reads them again."""
        gone = set(partitions)
        for key in [key for key in self._held if key[0] in gone]:
            del self._held[key]

    def __len__(self) -> int:
        return sum(len(held) for held in self._held.values())
