"""The projector's sweep of ended runs past the retention window (:mod:`stepstream.core.retention`).

Between batches, at most every minute, the projector looks in its store for runs of its partitions
that ended before the window, and in one transaction writes each one's compact state and a
tombstone for each of its results to ``runs``; the store's file takes the same once committed, and
the runs leave memory. A run is compacted at most a tenth of the window (at most a minute) late.
"""

from __future__ import annotations

import asyncio
import logging

from stepstream.avro import Codec
from stepstream.clock import Clock
from stepstream.config import ProjectorSettings
from stepstream.core.retention import compacted, ended_at
from stepstream.kafka.clients import Producer
from stepstream.projector.snapshots import step_key
from stepstream.projector.store import RunStore
from stepstream.store.changelog import Written

log = logging.getLogger(__name__)


class Retention:
    def __init__(
        self, states: RunStore, producer: Producer, codec: Codec, clock: Clock, settings: ProjectorSettings, topic: str
    ) -> None:
        self.states = states
        self.producer = producer
        self.codec = codec
        self.clock = clock
        self.window_ms = settings.ended_run_retention_ms
        self.max_runs = settings.max_batch
        self.topic = topic
        self.due_ms = 0  # when to look next

    async def compact_when_due(self, partitions: set[int]) -> None:
        now = self.clock.now_ms()
        if now < self.due_ms or not partitions:
            return
        self.due_ms = now + min(max(self.window_ms // 10, 1_000), 60_000)
        try:
            count = await self.compact(partitions)
        except Exception:
            # Nothing of it is visible (one transaction): the runs stay whole and are tried again later.
            log.warning("projector could not compact ended runs; trying again later", exc_info=True)
            return
        if count:
            log.info("compacted %d runs that ended before the retention window", count)
            self.due_ms = now  # more may be due: go on after the next batch

    async def compact(self, partitions: set[int]) -> int:
        """Compact up to a batch's worth of runs of ``partitions`` past the window; returns how many.
        Between batches only (the caller holds the projector's lock): every run in memory is then as
        it is on disk."""
        cutoff = self.clock.now_ms() - self.window_ms
        outputs: list[tuple[bytes, bytes | None, int]] = []
        run_ids: list[str] = []
        for run_id, partition, indexes in self.states.ended_before(cutoff, partitions, self.max_runs):
            state = self.states.get(run_id)
            if state is None or ended_at(state) is None:
                continue
            outputs.extend((step_key(run_id, index).encode(), None, partition) for index in indexes)
            outputs.append((run_id.encode(), self.codec.encode(compacted(state)), partition))
            run_ids.append(run_id)
        if not outputs:
            return 0
        async with self.producer.transaction():
            sends = [
                await self.producer.send(self.topic, value=value, key=key, partition=partition)
                for key, value, partition in outputs
            ]
        written = await asyncio.gather(*sends)
        self.states.written(
            (
                Written(metadata.partition, metadata.offset, key, value)  # at_ms None: compacted for good
                for (key, value, _), metadata in zip(outputs, written, strict=True)
            ),
            self.clock.now_ms(),
        )
        for run_id in run_ids:
            self.states.drop(run_id)
        self.states.trim()
        return len(run_ids)
