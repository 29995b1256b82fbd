"""aiokafka clients configured the way every Stepstream service needs them.

Translates aiokafka's exceptions nowhere: callers treat a failed transaction as "redo the batch".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.producer.transaction_manager import TransactionState

from stepstream.config import KafkaSettings

log = logging.getLogger(__name__)


PartitionsChanged = Callable[[list[TopicPartition]], Awaitable[None]]

# How long a service's consumer lets the broker hold a fetch while there is nothing to read. The
# broker answers as soon as data (or a transaction's commit marker) arrives, so this costs no latency;
# a short one only makes an idle consumer ask again and again (5 ms: ~200 fetches a second per
# consumer, most of an idle stack's CPU).
IDLE_FETCH_WAIT_MS = 500


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
        # Above the engine's own bound, which the services check before they write: a record past it
        # is theirs to refuse with a reason, not the client's to fail a whole transaction with.
        max_request_size=max(1_048_576, settings.max_record_bytes + 65_536),
        **settings.client_options(),
        **options,
    )


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


@asynccontextmanager
async def transaction(producer: AIOKafkaProducer) -> AsyncIterator[None]:
    """A Kafka transaction that is aborted whenever it fails, the commit included.

    aiokafka's own ``producer.transaction()`` aborts when its block raises, but not when the commit
    does: a record the broker refused inside the transaction (too large for a topic, say) fails
    the commit, and the producer is left in its abortable-error state, where the next transaction
    hangs for ever. Kafka's rule is that a failed commit must be followed by an abort; this does it.
    A fatal error (the producer fenced by a newer one with the same transactional id) is raised as
    it is: no abort can mend it.
    """
    await producer.begin_transaction()
    try:
        yield
        await producer.commit_transaction()
    except BaseException:
        manager = producer._txn_manager
        if manager.state in (TransactionState.IN_TRANSACTION, TransactionState.ABORTABLE_ERROR):
            try:
                await producer.abort_transaction()
            except Exception:
                log.warning("could not abort a failed transaction", exc_info=True)
        raise


async def renewed(producer: AIOKafkaProducer, make: Callable[[], AIOKafkaProducer]) -> AIOKafkaProducer:
    """A new transactional producer in place of one whose transaction failed.

    aiokafka keeps counting the sequence numbers of batches the broker refused, so once the cause is
    gone (a topic's limit raised, say) every later transaction of the same producer fails with
    OutOfOrderSequenceNumber (Java's producer bumps its epoch instead, KIP-360; aiokafka does not).
    A new producer with the same transactional id gets a new epoch from the broker, with sequences
    from 0, and fences only its predecessor. Measured: docs/decisions/0005-poison-input.md.
    """
    try:
        await asyncio.wait_for(producer.stop(), timeout=10)
    except Exception:  # it is being replaced: whatever it still holds, its transaction is aborted
        log.warning("a failed producer did not stop cleanly", exc_info=True)
    delay = 0.5
    while True:
        fresh = make()
        try:
            await fresh.start()
            return fresh
        except KafkaError as error:  # the broker is away: the work waits for it, the service stays up
            log.warning("cannot start a new producer yet (%s); retrying in %.1f s", error, delay)
            await fresh.stop()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def raise_if_fatal(producer: AIOKafkaProducer, error: BaseException) -> None:
    """Raise ``error`` again if it left ``producer`` unusable (fenced by a newer producer with the same
    transactional id): retrying cannot help, and another instance now does this one's work."""
    if producer._txn_manager is not None and producer._txn_manager.is_fatal_error():
        raise error
