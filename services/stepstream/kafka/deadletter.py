"""Dead letters: input a consumer cannot decode or apply, kept on ``deadletter`` with the reason.

Every consumer goes on past such a record instead of stopping (or retrying it for ever), and loses
nothing: the dead letter holds the record's topic, partition, offset, key and value byte for byte,
so an operator can see what came and why it was refused, and write it back once mended.

The one exception to "byte for byte": a value so large that the dead letter around it would not fit
in a Kafka record keeps only its first bytes, and the reason says how many of how many. Otherwise
the dead letter of an oversized record would wedge its consumer exactly as the record did.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aiokafka import ConsumerRecord

from stepstream import metrics
from stepstream.avro import Codec, DeadLetter
from stepstream.config import KafkaSettings
from stepstream.kafka.clients import Producer, make_producer
from stepstream.kafka.topics import TopicNames

log = logging.getLogger(__name__)

# Room in a record for everything of a dead letter but the original value: its key, the reason and
# the other fields (a reason is a sentence, an event id or run id at most a few hundred bytes).
_ENVELOPE_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class DeadLetters:
    """Makes the dead letters of one consumer (``consumer``: the service's name)."""

    codec: Codec
    consumer: str
    max_record_bytes: int

    def letter(self, record: ConsumerRecord, reason: str, now_ms: int) -> DeadLetter:
        value: bytes | None = record.value
        room = max(0, self.max_record_bytes - _ENVELOPE_BYTES - len(record.key or b""))
        if value is not None and len(value) > room:
            reason = f"{reason} (value truncated: the first {room} of its {len(value)} bytes are kept)"
            value = value[:room]
        return DeadLetter(
            source_topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=value,
            reason=reason[:4_000],
            consumer=self.consumer,
            at_ms=now_ms,
        )

    def encode(self, record: ConsumerRecord, reason: str, now_ms: int) -> bytes:
        """The dead letter of ``record`` as a record value for ``deadletter``; logs it, once, at WARNING."""
        log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason[:1_000])
        metrics.DEAD_LETTERED.labels(self.consumer, record.topic, metrics.reason_class(reason)).inc()
        return self.codec.encode(self.letter(record, reason, now_ms))

    async def write_apart(
        self, producer: Producer, topic: str, letters: list[tuple[ConsumerRecord, str]], now_ms: int
    ) -> None:
        """Dead-letter records found outside a batch (a restore that cannot read them) to ``topic``, in
        a transaction of their own. If that fails it is logged: the records stay where they are, and
        the next restore finds them again."""
        try:
            async with producer.transaction():
                for record, reason in letters:
                    await producer.send(topic, value=self.encode(record, reason, now_ms), key=self.key(record))
        except Exception:
            log.exception("%s could not dead-letter %d records it cannot restore", self.consumer, len(letters))

    @staticmethod
    def key(record: ConsumerRecord) -> bytes:
        """The dead letter's key: the original record's, so it lands where an operator looks for that run."""
        return bytes(record.key) if record.key else b""


class DeadLetterWriter:
    """Writes dead letters with a plain idempotent producer, for a consumer outside any transaction
    (the api's indexer, which reads ``events`` and ``flow`` without a group)."""

    def __init__(self, kafka: KafkaSettings, codec: Codec, consumer: str) -> None:
        self._letters = DeadLetters(codec, consumer, kafka.max_record_bytes)
        self._topic = TopicNames(kafka.topic_prefix).deadletter
        self._producer = make_producer(kafka)

    async def start(self) -> None:
        await self._producer.start()

    async def stop(self) -> None:
        await self._producer.stop()

    async def write(self, record: ConsumerRecord, reason: str, now_ms: int) -> None:
        value = self._letters.encode(record, reason, now_ms)
        await (await self._producer.send(self._topic, value=value, key=DeadLetters.key(record)))
