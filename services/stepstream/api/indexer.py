"""The indexer: keeps a query store from ``events`` and ``flow``, for the api that owns the store.

Each api replica runs an indexer of its own over a store of its own: it reads every partition of both
topics (no consumer group) and keeps how far it has read in the store itself, so a restart goes on
where the store left off and a new or wiped store is rebuilt from the topics. Until it has caught up
with the ends the topics had when it started, :meth:`Indexer.lag` says how far behind it is (the
api's readiness).

Every event kind is indexed (see :mod:`stepstream.store.indexing`); the store is idempotent by
(run id, seq), so a batch read again after a crash changes nothing. From the compacted ``flow`` topic
it keeps each flow-control key's latest state, as the scheduler published it; reading it again ends in
the same rows.

After each batch of events is committed it tells :class:`~stepstream.api.changes.RunChanges` which runs
changed, waking the api's requests that wait on them (``?wait=``, the history stream).

On a store shared by every replica (PostgreSQL, :mod:`stepstream.store.postgres`) one indexer writes:
the replica that holds the store's lock. The others follow: they are ready once the store has what
the topics held when they started (by the positions the writer saves), try for the lock every few
seconds (it is free once its holder's session ends), and learn of changed runs from the writer's
announcements through the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING, cast

from aiokafka import ConsumerRecord, TopicPartition

from stepstream.api.changes import RunChanges
from stepstream.avro import EVENT_TYPES, Codec, DecodeError, codec_for
from stepstream.config import KafkaSettings
from stepstream.core import Event, FlowKeyState
from stepstream.kafka.clients import make_consumer, topic_partitions
from stepstream.kafka.deadletter import DeadLetterWriter
from stepstream.kafka.topics import TopicNames
from stepstream.store import QueryStore

if TYPE_CHECKING:
    from stepstream.store.postgres import PostgresQueryStore

log = logging.getLogger(__name__)

_FORGET_AT_ONCE = 1_000  # ended runs removed in one transaction: about as many writes as a batch
FlowChange = tuple[str, FlowKeyState | None]  # a key and its new state; None: the key's tombstone


class Indexer:
    """``dead_letters``: where a record that cannot be read or indexed goes, with the reason (else it is
    only logged). Every api replica indexes every record, so each writes its own dead letter of a bad
    one: they name the same topic, partition and offset. ``changes``: told which runs each batch changed,
    once the store has them."""

    def __init__(
        self,
        kafka: KafkaSettings,
        store: QueryStore,
        *,
        codec: Codec | None = None,
        dead_letters: DeadLetterWriter | None = None,
        changes: RunChanges | None = None,
        retention_ms: int = 0,
    ) -> None:
        self.topics = TopicNames(kafka.topic_prefix)
        self.store = store
        self.codec = codec or codec_for(kafka)
        self.dead_letters = dead_letters
        self.changes = changes
        # The broker answers a fetch as soon as committed records are there, so the wait bounds only how
        # often an idle indexer asks again. Measured (commit → getmany, read_committed): p50 1–5 ms with
        # 20 ms and with 500 ms alike; but at 20 ms an idle api spent 4.6 % of a core asking, at 500, 0.7 %.
        self._consumer = make_consumer(kafka, group_id=None, fetch_max_wait_ms=500)
        self._targets: dict[TopicPartition, int] | None = None  # the topics' ends at start: caught up once there
        self._positions: dict[TopicPartition, int] = {}
        self._caught_up = False
        # How long the store keeps an ended run (STEPSTREAM_QUERY_STORE_RETENTION_MS); 0: for ever.
        self.retention_ms = retention_ms
        self._forget_due = 0.0

    def lag(self) -> str | None:
        """None once the store holds what the topics held when the indexer started; else how far behind."""
        if self._caught_up:
            return None
        if self._targets is None:
            return "the indexer has not started reading the events and flow topics yet"
        behind = sum(max(0, end - self._positions.get(tp, 0)) for tp, end in self._targets.items())
        return f"the query store is catching up: {behind} records behind the events and flow topics"

    async def run(self) -> None:
        await self._consumer.start()
        if self.dead_letters is not None:
            await self.dead_letters.start()
        stop_listening = threading.Event()
        if self.store.shared:
            self._listen(stop_listening)
        try:
            while not await asyncio.to_thread(self.store.lead):
                await self._follow()
            if self.store.shared:
                log.info("indexer writes the shared query store (this replica holds its lock)")
            targets = await self._assign()
            await self._check_caught_up(targets)  # a restart over a store that has it all is ready at once
            while True:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=1_000)
                if batch:
                    await self._index(batch)
                if not self._caught_up:
                    await self._check_caught_up(targets)
                if self.retention_ms:
                    await self._forget_ended()
        finally:
            stop_listening.set()
            await self._consumer.stop()
            if self.dead_letters is not None:
                await self.dead_letters.stop()

    async def _forget_ended(self) -> None:
        """At most once a minute (at once again while there was more), remove the runs that ended
        before the store's retention window, a thousand at a time."""
        if time.monotonic() < self._forget_due:
            return
        cutoff = int(time.time() * 1000) - self.retention_ms
        forgotten = await asyncio.to_thread(self.store.forget_ended_before, cutoff, _FORGET_AT_ONCE)
        if forgotten:
            log.info("query store: removed %d runs that ended before the retention window", forgotten)
        self._forget_due = time.monotonic() + (0 if forgotten == _FORGET_AT_ONCE else 60)

    def _listen(self, stop: threading.Event) -> None:
        """Wake the requests waiting on runs when the shared store's writer announces them changed."""
        loop = asyncio.get_running_loop()
        store = cast("PostgresQueryStore", self.store)

        def changed(run_ids: list[str]) -> None:
            if self.changes is not None:
                with contextlib.suppress(RuntimeError):  # the loop has closed: the api is stopping
                    loop.call_soon_threadsafe(self.changes.changed, run_ids)

        threading.Thread(target=store.listen, args=(changed, stop), name="query-store-listener", daemon=True).start()

    async def _follow(self) -> None:
        """While another replica writes the shared store: ready once the store has what the topics held
        when this replica started; then try for the lock again a few seconds later."""
        if self._targets is None:
            partitions = [
                TopicPartition(topic, number)
                for topic in (self.topics.events, self.topics.flow)
                for number in sorted(await self._partitions_of(topic))
            ]
            self._targets = await self._consumer.end_offsets(partitions)
        saved = await asyncio.to_thread(self.store.positions)
        self._positions = {tp: saved.get((tp.topic, tp.partition), 0) for tp in self._targets}
        caught_up = all(self._positions[tp] >= end for tp, end in self._targets.items())
        if caught_up and not self._caught_up:
            log.info("the shared query store has caught up (another replica writes it)")
        self._caught_up = caught_up
        await asyncio.sleep(2)

    async def _check_caught_up(self, targets: dict[TopicPartition, int]) -> None:
        # Every partition's position, not only those of the last batch: a transaction marker at a
        # partition's end moves its position without giving a record.
        self._positions = {tp: await self._consumer.position(tp) for tp in targets}
        self._caught_up = all(self._positions[tp] >= end for tp, end in targets.items())
        if self._caught_up:
            log.info("indexer caught up with %s and %s", self.topics.events, self.topics.flow)

    async def _assign(self) -> dict[TopicPartition, int]:
        """Every partition of both topics, each from where the store left off (else the beginning);
        returns their ends now, which the indexer has caught up with once it reaches them."""
        partitions: list[TopicPartition] = []
        for topic in (self.topics.events, self.topics.flow):
            numbers = await self._partitions_of(topic)
            partitions += [TopicPartition(topic, number) for number in sorted(numbers)]
        self._consumer.assign(partitions)
        saved = self.store.positions()
        unread = []
        for tp in partitions:
            offset = saved.get((tp.topic, tp.partition))
            if offset is None:
                unread.append(tp)
            else:
                self._consumer.seek(tp, offset)
                self._positions[tp] = offset
        if unread:
            # In one call: each call waits for the fetch in flight (up to fetch_max_wait_ms, 0.5 s), so
            # one a partition made a restart with twelve never-written partitions take 6 s to be ready.
            await self._consumer.seek_to_beginning(*unread)
        self._targets = await self._consumer.end_offsets(partitions)
        return self._targets

    async def _partitions_of(self, topic: str) -> set[int]:
        """The topic's partitions; waits (not ready meanwhile) while the topic does not exist yet."""
        waited = False
        while True:
            numbers = await topic_partitions(self._consumer, topic)
            if numbers:
                return numbers
            if not waited:
                log.warning("indexer waits for the topic %r to be created (`stepstream topics create`)", topic)
                waited = True
            await asyncio.sleep(2)

    async def _index(self, batch: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        events: list[tuple[ConsumerRecord, Event]] = []
        flow: list[FlowChange] = []
        for records in batch.values():
            for record in records:
                try:
                    if record.topic == self.topics.flow:
                        flow.append(flow_change(self.codec, record))
                    else:
                        events.append((record, cast(Event, self.codec.decode(record.value, EVENT_TYPES))))
                except DecodeError as error:
                    # The projector and scheduler wrote these topics: a record we cannot read is another
                    # producer's, or a deploy mistake (an older indexer). Set it aside; never stop.
                    await self._dead_letter(record, str(error))
        if events:
            failures = await asyncio.to_thread(index, self.store, [event for _, event in events])
            changed = {event.run_id for _, event in events}
            if self.changes is not None:  # back on the event loop, the batch committed
                self.changes.changed(changed)
            if self.store.shared:  # the other replicas' requests may wait on them too
                await asyncio.to_thread(self.store.announce, changed)
            for record, event in events:
                failure = failures.get(id(event))
                if failure is not None:
                    await self._dead_letter(record, f"the indexer cannot apply {type(event).__name__}: {failure!r}")
        if flow:
            await asyncio.to_thread(self.store.apply_flow, flow)
        # After what they gave is applied: a crash in between reads them again, which changes nothing.
        # The consumer's position, not the last record's offset: read_committed skips transaction markers.
        positions = {(tp.topic, tp.partition): await self._consumer.position(tp) for tp in batch}
        await asyncio.to_thread(self.store.save_positions, positions)

    async def _dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        log.error("indexer skips %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:1_000])
        if self.dead_letters is not None:
            await self.dead_letters.write(record, reason, int(time.time() * 1000))


def flow_change(codec: Codec, record: ConsumerRecord) -> FlowChange:
    """A record of ``flow`` as a change of its key's state; ``DecodeError`` for one that cannot be read.

    A tombstone (no value) forgets its key.
    """
    if record.value is None:
        if record.key is None:
            raise DecodeError("Expected a flow-control key on a tombstone, but the record has none")
        return bytes(record.key).decode(errors="replace"), None
    state = codec.decode(record.value, (FlowKeyState,))
    return state.key, state


def index(store: QueryStore, events: list[Event]) -> dict[int, Exception]:
    """Apply a batch of events to the store; an event it cannot apply is left out, not the batch.
    Returns the errors of those left out, by ``id()`` of the event.

    The store applies a batch in one transaction, so one bad event (an output that is not JSON text,
    a number SQLite cannot hold) would roll back the rest: then each is applied alone.
    """
    errors: tuple[type[Exception], ...] = (ValueError, OverflowError, *store.value_errors)
    try:
        store.apply(events)
        return {}
    except errors:
        pass
    failures: dict[int, Exception] = {}
    for event in events:
        try:
            store.apply([event])
        except errors as error:
            log.error("indexer cannot apply %s %s#%d: %s", type(event).__name__, event.run_id, event.seq, error)
            failures[id(event)] = error
    return failures
