"""The indexer: keeps the query store from ``events`` (its own consumer group), for the api."""

from __future__ import annotations

import asyncio
import logging

from stepstream.avro import Codec, DecodeError
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
                            events.append(self.codec.decode(record.value))  # type: ignore[arg-type]
                        except DecodeError as error:
                            # The projector wrote it; a record here we cannot read is a deploy mistake
                            # (an older indexer). Skip it loudly rather than stop the query store.
                            log.error("indexer cannot decode %s@%d: %s", record.topic, record.offset, error)
                await asyncio.to_thread(self.store.apply, events)
                await self._consumer.commit({tp: records[-1].offset + 1 for tp, records in batch.items()})
        finally:
            await self._consumer.stop()
