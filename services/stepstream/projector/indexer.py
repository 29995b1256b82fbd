"""The indexer: keeps the query store from ``events`` and ``flow`` (its own consumer group), for the api.

Every event kind is indexed (see :mod:`stepstream.store.sqlite`); the store is idempotent by
(run id, seq), so a batch read again after a crash changes nothing. From the compacted ``flow`` topic
it keeps each flow-control key's latest state, as the scheduler published it; reading it again ends in
the same rows.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import cast

from aiokafka import ConsumerRecord

from stepstream.avro import EVENT_TYPES, Codec, DecodeError
from stepstream.config import KafkaSettings
from stepstream.core import Event, FlowKeyState
from stepstream.kafka.clients import make_consumer
from stepstream.kafka.topics import TopicNames
from stepstream.store import QueryStore

log = logging.getLogger(__name__)

FlowChange = tuple[str, FlowKeyState | None]  # a key and its new state; None: the key's tombstone


class Indexer:
    def __init__(self, kafka: KafkaSettings, store: QueryStore, *, codec: Codec | None = None) -> None:
        self.topics = TopicNames(kafka.topic_prefix)
        self.store = store
        self.codec = codec or Codec()
        self._consumer = make_consumer(kafka, group_id=f"{kafka.topic_prefix}indexer", fetch_max_wait_ms=20)

    async def run(self) -> None:
        await self._consumer.start()
        try:
            self._consumer.subscribe([self.topics.events, self.topics.flow])
            while True:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=1_000)
                if not batch:
                    continue
                events: list[Event] = []
                flow: list[FlowChange] = []
                for records in batch.values():
                    for record in records:
                        if record.topic == self.topics.flow:
                            change = flow_change(self.codec, record)
                            if change is not None:
                                flow.append(change)
                            continue
                        try:
                            events.append(cast(Event, self.codec.decode(record.value, EVENT_TYPES)))
                        except DecodeError as error:
                            # The projector wrote it; a record here we cannot read is a deploy mistake
                            # (an older indexer). Skip it loudly rather than stop the query store.
                            log.error("indexer cannot decode %s@%d: %s", record.topic, record.offset, error)
                if events:
                    await asyncio.to_thread(index, self.store, events)
                if flow:
                    await asyncio.to_thread(self.store.apply_flow, flow)
                await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        finally:
            await self._consumer.stop()


def flow_change(codec: Codec, record: ConsumerRecord) -> FlowChange | None:
    """A record of ``flow`` as a change of its key's state; None, logged, for one that cannot be read.

    A tombstone (no value) forgets its key. The scheduler wrote the record; one we cannot decode is a
    deploy mistake (an older indexer), skipped loudly rather than stopping the query store.
    """
    if record.value is None:
        if record.key is None:
            log.error("indexer skips %s@%d: a tombstone without a key", record.topic, record.offset)
            return None
        return bytes(record.key).decode(errors="replace"), None
    try:
        state = codec.decode(record.value, (FlowKeyState,))
    except DecodeError as error:
        log.error("indexer cannot decode %s@%d: %s", record.topic, record.offset, error)
        return None
    return state.key, state


def index(store: QueryStore, events: list[Event]) -> None:
    """Apply a batch of events to the store; an event it cannot apply is skipped, loudly, not the batch.

    The store applies a batch in one transaction, so one bad event (an output that is not JSON text)
    would roll back the rest: then each is applied alone and only the bad one is left out.
    """
    try:
        store.apply(events)
    except (ValueError, sqlite3.Error):
        for event in events:
            try:
                store.apply([event])
            except (ValueError, sqlite3.Error) as error:
                log.error("indexer cannot apply %s %s#%d: %s", type(event).__name__, event.run_id, event.seq, error)
