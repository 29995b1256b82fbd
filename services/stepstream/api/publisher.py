"""How the api writes to the ``triggers`` topic: a port, so the routes never see Kafka or Avro."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, assert_never

from stepstream import tracing
from stepstream.avro import CancelRequest, Codec, NotifyRequest, RecoverRequest, TriggerRequest, codec_for
from stepstream.config import KafkaSettings
from stepstream.kafka.clients import make_producer
from stepstream.kafka.topics import TopicNames

TriggersRecord = TriggerRequest | NotifyRequest | CancelRequest | RecoverRequest

# Records sent at once by one request (cancelling many runs); the producer batches them.
_CONCURRENT_SENDS = 500


def triggers_key(record: TriggersRecord) -> str:
    """A record's key on ``triggers``: the run id, or the event id for a notification."""
    match record:
        case NotifyRequest():
            return record.event_id
        case TriggerRequest() | CancelRequest() | RecoverRequest():
            if record.run_id is None:
                raise ValueError("Expected the api to name every run it triggers, but the run id is None")
            return record.run_id
        case _:
            assert_never(record)


class Publisher(Protocol):
    """Where the api's records go. The app starts and stops the Kafka one it makes; one passed in is
    the caller's."""

    async def publish(self, *records: TriggersRecord) -> None:
        """Write the records to ``triggers``, each under its key; return once all are acknowledged."""
        ...


class Publish(Protocol):
    """``publish`` as the app hands it to its routes: to the publisher its lifespan has opened."""

    async def __call__(self, *records: TriggersRecord) -> None: ...


class KafkaPublisher:
    """The real publisher: Avro-encoded records on the ``triggers`` topic."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self.kafka = kafka
        self.topic = TopicNames(kafka.topic_prefix).triggers
        self._producer: Any = None  # an AIOKafkaProducer, once started
        self._codec: Codec | None = None

    async def start(self) -> None:
        # The codec reads the schemas here, at start-up, not when the app is built: tests build the
        # app with a fake publisher and need neither the schemas nor a broker.
        self._codec = await asyncio.to_thread(codec_for, self.kafka)  # a registry, if set, is called now
        self._producer = make_producer(self.kafka)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()

    async def publish(self, *records: TriggersRecord) -> None:
        if self._codec is None or self._producer is None:
            raise RuntimeError("Expected the publisher to be started before it publishes, but it is not")
        codec, producer = self._codec, self._producer
        encoded = [(triggers_key(record).encode(), codec.encode(record)) for record in records]
        if len(encoded) == 1:  # a trigger: no gather, whose tasks and futures cost more than the send
            key, value = encoded[0]
            # Inside the trigger's span, the record carries it to the projector (tracing.py).
            await producer.send_and_wait(self.topic, value=value, key=key, headers=tracing.kafka_headers() or None)
            return
        for start in range(0, len(encoded), _CONCURRENT_SENDS):
            chunk = encoded[start : start + _CONCURRENT_SENDS]
            await asyncio.gather(*(producer.send_and_wait(self.topic, value=value, key=key) for key, value in chunk))
