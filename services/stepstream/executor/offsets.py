"""The offsets of one partition's records while their work is under way. Pure."""

from __future__ import annotations


class PartitionProgress:
    """Offsets in flight for one partition; the committable offset is the lowest one held (a delivery
    not yet reported), else the one after the highest seen."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.highest_seen = -1

    def start(self, offset: int, *, hold: bool = True) -> None:
        """``hold`` False: the record's work is under way but need not finish before its offset is committed."""
        if hold:
            self.in_flight.add(offset)
        self.highest_seen = max(self.highest_seen, offset)

    def finish(self, offset: int) -> None:
        self.in_flight.discard(offset)

    def committable(self) -> int:
        return min(self.in_flight) if self.in_flight else self.highest_seen + 1
