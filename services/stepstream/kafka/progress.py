"""Whether a consumer keeps up with its input: the truth behind a service's ``/readyz``.

Joining the group and restoring its partitions makes a service ready; staying ready needs more. A
partition that has had input for longer than the stall bound without any of it being done (its
batch's transaction failing again and again, a delivery that never reports, a consume loop that
hangs) turns the service not ready, naming the partitions and the last error, until it moves again.
The service stays alive meanwhile: what is stuck is usually outside it (the broker, a topic's
settings), and restarting it would not help, but the operator must see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from aiokafka import TopicPartition

from stepstream.clock import Clock

_SHOWN = 6  # partitions named in the reason; the rest are counted


class Progress:
    """Per partition, since when it has had input not yet done; and the last error, for the reason."""

    def __init__(self, clock: Clock, *, stall_ms: int) -> None:
        self._clock = clock
        self.stall_ms = stall_ms
        self._since: dict[TopicPartition, int] = {}
        self._last_error: str | None = None

    def waiting(self, partitions: Iterable[TopicPartition]) -> None:
        """Input was fetched for ``partitions``; a partition already waiting keeps its first time."""
        now = self._clock.now_ms()
        for tp in partitions:
            self._since.setdefault(tp, now)

    def done(self, partitions: Iterable[TopicPartition], *, more: bool = False) -> None:
        """The input fetched for ``partitions`` so far is done (``more``: some is still in hand,
        so the partition waits again from now)."""
        now = self._clock.now_ms()
        for tp in partitions:
            if more:
                self._since[tp] = now
            else:
                self._since.pop(tp, None)
        if not self._since:
            self._last_error = None

    def failed(self, error: BaseException | str) -> None:
        self._last_error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def forget(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` moved to another member: their input is no longer this one's to do."""
        for tp in partitions:
            self._since.pop(tp, None)

    def problem(self) -> str | None:
        """None while every partition's input moves; else which have stalled, for how long, and why."""
        now = self._clock.now_ms()
        stalled = sorted(
            ((tp, now - since) for tp, since in self._since.items() if now - since > self.stall_ms),
            key=lambda item: (item[0].topic, item[0].partition),
        )
        if not stalled:
            return None
        names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp, _ in stalled[:_SHOWN])
        if len(stalled) > _SHOWN:
            names += f" and {len(stalled) - _SHOWN} more"
        longest = max(waited for _, waited in stalled) / 1000
        reason = f"input has waited {longest:.0f} s without progress on {names}"
        if self._last_error is not None:
            reason += f"; last error: {self._last_error[:500]}"
        return reason


def readiness(joined: asyncio.Event, progress: Progress) -> str | None:
    """A consuming service's readiness: None once it has joined its group and restored its
    partitions, and while none of them stalls; else why not."""
    if not joined.is_set():
        return "has not joined its consumer group and restored its partitions yet"
    return progress.problem()
