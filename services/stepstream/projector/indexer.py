"""The indexer: keeps the query store from ``events`` (its own consumer group), for the api.

Every event kind is indexed (see :mod:`stepstream.store.sqlite`); the store is idempotent by
(run id, seq), so a batch read again after a crash changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from typing import cast

from stepstream.avro import EVENT_TYPES, Codec, DecodeError
from stepstream.config import KafkaSettings
from stepstream.core import Event
from stepstream.kafka.clients import make_consumer
from stepstream.kafka.topics import TopicNames
from stepstream.store import QueryStore

log = logging.getLogger(__name__)


class Indexer:
    def __init__(self, kafka: KafkaSettings, store: QueryStore, *, codec: Codec | None = None) -> None:
        self.topics = TopicNames(kafka.topic_prefix)
        self.store = store
        self.codec = codec or Codec()
        self._consumer = make_consumer(kafka, group_id=f"{kafka.topic_prefix}indexer", fetch_max_wait_ms=20)

    async def run(self) -> None:
        await self._consumer.start()
        try:
            self._consumer.subscribe([self.topics.events])
            while True:
                batch = await self._consumer.getmany(timeout_ms=500, max_records=1_000)
                if not batch:
                    continue
                events: list[Event] = []
                for records in batch.values():
                    for record in records:
                        try:
                            events.append(cast(Event, self.codec.decode(record.value, EVENT_TYPES)))
                        except DecodeError as error:
                            # The projector wrote it; a record here we cannot read is a deploy mistake
                            # (an older indexer). Skip it loudly rather than stop the query store.
                            log.error("indexer cannot decode %s@%d: %s", record.topic, record.offset, error)
                await asyncio.to_thread(index, self.store, events)
                await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        finally:
            await self._consumer.stop()


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
