"""aiokafka clients configured the way every Stepstream service needs them.

Translates aiokafka's exceptions nowhere: callers treat a failed transaction as "redo the batch".
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.partitioner import murmur2

from stepstream.avro import Codec, DeadLetter
from stepstream.config import KafkaSettings

log = logging.getLogger(__name__)


PartitionsChanged = Callable[[list[TopicPartition]], Awaitable[None]]


class PartitionListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands a consumer's rebalances to its service: restore state on assignment, settle on revocation."""

    def __init__(self, *, assigned: PartitionsChanged, revoked: PartitionsChanged) -> None:
        self._assigned = assigned
        self._revoked = revoked

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self._revoked(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self._assigned(assigned)


def partition_for(key: str, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client) picks for ``key``."""
    return int((murmur2(key.encode()) & 0x7FFFFFFF) % partitions)


def make_consumer(
    settings: KafkaSettings, *, group_id: str | None, fetch_max_wait_ms: int = 10, **options: Any
) -> AIOKafkaConsumer:
    """A consumer that reads only committed records and commits only what its owner says.

    The range assignor gives one member the same partition numbers of every co-partitioned topic,
    which the projector relies on (a run's triggers and commands meet in one owner).
    """
    return AIOKafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        client_id=f"stepstream-{group_id or 'reader'}",
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
        **settings.client_options(),
        **options,
    )


def make_producer(settings: KafkaSettings, *, transactional_id: str | None = None, **options: Any) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        enable_idempotence=True,
        acks="all",
        linger_ms=0,
        # The broker answers CONCURRENT_TRANSACTIONS while the previous commit settles; the default
        # 100 ms backoff then shows up as a p99 step latency (docs/decisions/0002).
        retry_backoff_ms=20,
        transactional_id=transactional_id,
        **settings.client_options(),
        **options,
    )


def dead_letter(record: ConsumerRecord, reason: str, consumer: str, now_ms: int) -> DeadLetter:
    return DeadLetter(
        source_topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
        value=record.value,
        reason=reason,
        consumer=consumer,
        at_ms=now_ms,
    )


def encode_dead_letter(codec: Codec, record: ConsumerRecord, reason: str, consumer: str, now_ms: int) -> bytes:
    log.warning("dead-lettering %s[%d]@%d: %s", record.topic, record.partition, record.offset, reason)
    return codec.encode(dead_letter(record, reason, consumer, now_ms))


async def topic_partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partition numbers of ``topic`` from fresh cluster metadata; empty if there is no such topic.

    (aiokafka's ``partitions_for_topic`` answers only from metadata the client holds already, which
    a consumer that subscribes to nothing does not have, and ``topics()`` does not keep what it fetches.)
    """
    cluster = await consumer._client.fetch_all_metadata()
    numbers: set[int] | None = cluster.partitions_for_topic(topic)
    return numbers or set()


async def read_partitions_to_end(
    settings: KafkaSettings, topic: str, partitions: Iterable[int]
) -> list[ConsumerRecord]:
    """Every committed record now in ``topic``'s ``partitions``: used to restore state on assignment."""
    wanted = [TopicPartition(topic, partition) for partition in partitions]
    if not wanted:
        return []
    reader = make_consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await reader.start()
    try:
        reader.assign(wanted)
        await reader.seek_to_beginning(*wanted)
        end = await reader.end_offsets(wanted)
        remaining = {tp for tp in wanted if end[tp] > 0}
        records: list[ConsumerRecord] = []
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=200, max_records=5_000)
            for items in batch.values():
                records.extend(items)
            for tp in list(remaining):
                # With read_committed the position can stop short of the end offset only at
                # transaction markers; position() moves past them.
                if await reader.position(tp) >= end[tp]:
                    remaining.discard(tp)
        return records
    finally:
        await reader.stop()
