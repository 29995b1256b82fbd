"""aiokafka clients configured the way every Stepstream service needs them.

Translates aiokafka's exceptions nowhere: callers treat a failed transaction as "redo the batch".

Each client's connection handling is hardened for broker outages (:func:`harden`): aiokafka 0.14
retries a lost broker in a loop without backoff and can lose a transactional producer for good to
one closed connection (docs/decisions/0004).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.client import ConnectionGroup
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    UnknownProducerId,
)
from aiokafka.partitioner import murmur2
from aiokafka.producer import sender as aiokafka_sender

from stepstream.config import KafkaSettings

log = logging.getLogger(__name__)


PartitionsChanged = Callable[[list[TopicPartition]], Awaitable[None]]
ResultT = TypeVar("ResultT")

# How long a service's consumer lets the broker hold a fetch while there is nothing to read. The
# broker answers as soon as data (or a transaction's commit marker) arrives, so this costs no latency;
# a short one only makes an idle consumer ask again and again (5 ms: ~200 fetches a second per
# consumer, most of an idle stack's CPU).
IDLE_FETCH_WAIT_MS = 500

# A transaction that begins right after the previous one (the projector's and scheduler's, batch after
# batch) is refused CONCURRENT_TRANSACTIONS until the broker has written the previous one's commit
# markers, a millisecond or a few. aiokafka then waits a fixed 20 ms (KAFKA-5477's "better than
# 100 ms"), which made most of such a transaction's time: measured on the local broker, one record per
# transaction back to back, p50 27-29 ms with 20 ms, 11-14 ms with 2-5 ms (docs/decisions/0008). No
# setting reaches it; the module attribute is read at each retry.
_CONCURRENT_TRANSACTIONS_BACKOFF_S = 0.005
aiokafka_sender.BACKOFF_OVERRIDE = _CONCURRENT_TRANSACTIONS_BACKOFF_S


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

    In a group, it is a static member (KIP-345) named by the instance id, unless
    ``settings.static_membership`` is off: a process restarted with the same id takes its partitions
    back at once, instead of waiting for the session timeout of its predecessor. aiokafka's static
    members never leave their group; this one does when it is stopped (:class:`_Consumer`), so a
    graceful stop still hands its partitions over at once.
    """
    static = group_id is not None and settings.static_membership
    consumer = _Consumer(
        bootstrap_servers=settings.bootstrap_servers,
        group_id=group_id,
        group_instance_id=settings.instance_id if static else None,
        client_id=f"stepstream-{group_id or 'reader'}",
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=fetch_max_wait_ms,
        partition_assignment_strategy=(RangePartitionAssignor,),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        **settings.client_options(),
        **options,
    )
    harden(consumer._client)
    return consumer


class _Consumer(AIOKafkaConsumer):  # type: ignore[misc]
    """An AIOKafkaConsumer whose static membership ends with a LeaveGroup when it is stopped.

    aiokafka 0.14 sends no LeaveGroup for a member with a group instance id
    (``GroupCoordinator._maybe_leave_group``), so a stopped static member keeps its partitions until
    its session times out. The broker accepts aiokafka's LeaveGroup (v0/v1, by member id) from a
    static member and removes it (measured: docs/decisions/0004), so on a stop, and only then, the
    member leaves as a dynamic one would. A member that crashes still keeps its partitions for its
    successor, which is what static membership is for.
    """

    async def start(self) -> None:
        await super().start()
        coordinator = self._coordinator
        if self._group_instance_id is None or coordinator is None:
            return  # no group, or a dynamic member: aiokafka leaves the group itself
        leave = coordinator._maybe_leave_group

        async def leave_when_closing() -> None:
            if not coordinator._closing.done():  # not a stop: aiokafka's own rules apply
                await leave()
                return
            instance_id = coordinator._group_instance_id
            coordinator._group_instance_id = None  # what makes aiokafka send its LeaveGroup
            try:
                await leave()
            finally:
                coordinator._group_instance_id = instance_id

        coordinator._maybe_leave_group = leave_when_closing


def make_producer(settings: KafkaSettings, *, transactional_id: str | None = None, **options: Any) -> Producer:
    """An idempotent producer (transactional with ``transactional_id``) that survives what aiokafka's
    does not: see :class:`Producer`."""

    def build() -> AIOKafkaProducer:
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            enable_idempotence=True,
            acks="all",
            linger_ms=0,
            # The broker answers CONCURRENT_TRANSACTIONS while the previous commit settles; the default
            # 100 ms backoff then shows up as a p99 step latency (docs/decisions/0002).
            retry_backoff_ms=20,
            transactional_id=transactional_id,
            transaction_timeout_ms=settings.transaction_timeout_ms,
            # Above the engine's own bound, which the services check before they write: a record past
            # it is theirs to refuse with a reason, not the client's to fail a whole transaction with.
            max_request_size=max(1_048_576, settings.max_record_bytes + 65_536),
            **settings.client_options(),
            **options,
        )
        harden(producer.client)
        return producer

    return Producer(build)


# Errors after which a producer's sequence numbers or epoch no longer match the broker's: every later
# record it sends to that partition would be refused too (Java clients reset the producer id).
_PRODUCER_STATE_ERRORS = (OutOfOrderSequenceNumber, ProducerFenced, InvalidProducerEpoch, UnknownProducerId)


class Producer:
    """An AIOKafkaProducer, replaced by a new one with the same settings when it cannot go on, whose
    transactions commit only when every record sent in them was written.

    aiokafka 0.14 commits a transaction whatever became of its batches (``flush_for_commit`` waits
    for them, then commits): a batch the broker refused (an ``OutOfOrderSequenceNumber`` after the
    broker aborted a transaction that outlived its timeout during an outage) was left out of a
    committed transaction, input offsets included. And once its sender task has died or its
    transaction state is fatal, an aiokafka producer refuses every later transaction or record, and
    the service retrying it is stuck until the process restarts (measured: bench/recovery.py, a 70-s
    broker outage; docs/decisions/0004).

    So :meth:`transaction` waits for the records sent in it before it commits, and when one failed,
    ends without committing; the producer is then replaced before its next use, as it is when its
    sender died, its state is fatal, or a record was refused for a sequence or epoch error. The new
    producer has the same transactional id: starting, it fences the old one and the broker aborts the
    transaction the old one left open, so nothing of a failed transaction is ever committed. Anything
    else is the current AIOKafkaProducer's.
    """

    def __init__(self, build: Callable[[], AIOKafkaProducer]) -> None:
        self._build = build
        self._producer = build()
        self._started = False
        self._broken: str | None = None  # why the current producer must be replaced
        self._sent: list[asyncio.Future[Any]] | None = None  # the records of the transaction in hand

    def __getattr__(self, name: str) -> Any:
        return getattr(self._producer, name)

    async def start(self) -> None:
        await self._producer.start()
        self._started = True

    async def stop(self) -> None:
        await self._producer.stop()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, **options: Any) -> Any:
        if self._sent is None:
            await self._replace_if_broken()
        sent = await self._producer.send(topic, value=value, key=key, **options)
        sent.add_done_callback(self._check_sent)
        if self._sent is not None:
            self._sent.append(sent)
        return sent

    async def send_and_wait(
        self, topic: str, value: bytes | None = None, key: bytes | None = None, **options: Any
    ) -> Any:
        return await (await self.send(topic, value=value, key=key, **options))

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        await self._producer.send_offsets_to_transaction(offsets, group_id)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[Producer]:
        """Begin a transaction; commit it when the block ends, once every record sent in it is
        written; abort it when the block raises. Raises the error of a record that was not written."""
        await self._replace_if_broken()
        producer = self._producer
        await producer.begin_transaction()
        self._sent = []
        try:
            yield self
            results = await asyncio.gather(*self._sent, return_exceptions=True)
        except BaseException:
            self._sent = None
            if not producer._txn_manager.is_fatal_error():
                await producer.abort_transaction()
            raise
        self._sent = None
        failed = next((result for result in results if isinstance(result, BaseException)), None)
        if failed is not None:
            # Not committed, and not aborted either (aborting needs the epoch the error may have cost):
            # the new producer's start aborts it.
            self._broken = f"a record of its transaction was not written ({failed!r})"
            raise failed
        await producer.commit_transaction()

    def _check_sent(self, sent: asyncio.Future[Any]) -> None:
        if not sent.cancelled() and isinstance(sent.exception(), _PRODUCER_STATE_ERRORS):
            self._broken = f"a record was refused ({sent.exception()!r})"

    def _why_broken(self) -> str | None:
        if self._broken is not None:
            return self._broken
        sender = self._producer._sender.sender_task
        if self._started and (sender is None or sender.done()):
            error = sender.exception() if sender is not None and not sender.cancelled() else None
            return f"its sender stopped ({error!r})"
        txn_manager = self._producer._txn_manager
        if txn_manager is not None and txn_manager.is_fatal_error():
            return "its transaction state is fatal"
        return None

    async def _replace_if_broken(self) -> None:
        reason = self._why_broken()
        if reason is None:
            return
        log.warning("the Kafka producer cannot go on: %s; starting a new one", reason)
        old, self._producer = self._producer, self._build()
        self._broken = None
        with contextlib.suppress(Exception):
            # Its batches fail with the rest; do not wait for a broker that may be away.
            await asyncio.wait_for(old.stop(), timeout=5)
        await self._producer.start()


# -- broker outages ---------------------------------------------------------------------------


class Backoff:
    """An exponential backoff per key (a broker, the metadata): after a failure, wait ``first_s``,
    doubling with each further failure up to ``max_s``; a success starts again from nothing.

    What Java clients call reconnect.backoff.ms and reconnect.backoff.max.ms (50 ms, 1 s), which
    aiokafka lacks. Pure: the caller passes the time (``time.monotonic()``).
    """

    def __init__(self, first_s: float = 0.05, max_s: float = 1.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._delay: dict[Hashable, float] = {}
        self._until: dict[Hashable, float] = {}

    def ready(self, key: Hashable, now: float) -> bool:
        """Whether an attempt for ``key`` may be made at ``now``."""
        return now >= self._until.get(key, 0.0)

    def failed(self, key: Hashable, now: float) -> float:
        """Note a failed attempt; returns how long to wait before the next one."""
        delay = min(self.max_s, self._delay[key] * 2) if key in self._delay else self.first_s
        self._delay[key] = delay
        self._until[key] = now + delay
        return delay

    def succeeded(self, key: Hashable) -> None:
        self._delay.pop(key, None)
        self._until.pop(key, None)


def harden(
    client: Any,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Make an ``AIOKafkaClient`` (a consumer's ``_client``, a producer's ``client``) ride out a broker
    outage: it reconnects with backoff and keeps its transactional producer alive.

    aiokafka 0.14, when a broker is unreachable, tries to connect again on every request of every
    caller: the metadata refresh has no backoff at all (a producer waiting for a partition leader
    asks for metadata again the moment the last attempt failed), so a 3-second outage made tens of
    thousands of connection attempts per service, each logging two ERROR lines, and the CPU they took
    slowed the broker's own restart (bench/recovery.py). And a connection that closes while the
    producer looks up its transaction coordinator raises ``KafkaConnectionError``, which aiokafka's
    sender does not retry (``Sender._find_coordinator``): the sender task ends, and the producer
    refuses every later transaction (``FATAL_ERROR -> IN_TRANSACTION``) until the process restarts.

    This patches three methods of the one client instance: a connection attempt to a broker that
    just failed waits its backoff (the caller sees the broker as not ready, which every caller
    retries), a failed metadata refresh waits its backoff before it reports, and a connection lost
    during a coordinator lookup is reported as ``NodeNotReadyError``, which every caller retries.
    """
    backoff = Backoff()
    get_conn = client._get_conn
    metadata_update = client._metadata_update
    coordinator_lookup = client.coordinator_lookup

    async def get_conn_with_backoff(node_id: Any, **options: Any) -> Any:
        connection = client._conns.get((node_id, options.get("group", ConnectionGroup.DEFAULT)))
        if connection is not None and connection.connected():
            return connection
        if not backoff.ready(("node", node_id), clock()):
            return None  # as aiokafka answers for a broker it cannot reach
        connection = await get_conn(node_id, **options)
        if connection is None:
            backoff.failed(("node", node_id), clock())
        else:
            backoff.succeeded(("node", node_id))
        return connection

    async def metadata_update_with_backoff(cluster_metadata: Any, topics: Any) -> bool:
        updated: bool = await metadata_update(cluster_metadata, topics)
        if updated:
            backoff.succeeded("metadata")
        else:
            await sleep(backoff.failed("metadata", clock()))
        return updated

    async def coordinator_lookup_retried(coordinator_type: Any, coordinator_key: str) -> Any:
        try:
            return await coordinator_lookup(coordinator_type, coordinator_key)
        except KafkaConnectionError as error:
            raise NodeNotReadyError(f"the connection closed during a coordinator lookup: {error}") from error

    client._get_conn = get_conn_with_backoff
    client._metadata_update = metadata_update_with_backoff
    client.coordinator_lookup = coordinator_lookup_retried


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
    """Every committed record now in ``topic``'s ``partitions``: used to restore state on assignment
    (for state small enough to read whole; :func:`stream_partitions` reads it in chunks)."""
    chunks = stream_partitions(settings, topic, dict.fromkeys(partitions))
    return [record async for records in chunks for record in records]


async def stream_partitions(
    settings: KafkaSettings, topic: str, starts: Mapping[int, int | None], *, chunk: int = 5_000
) -> AsyncIterator[list[ConsumerRecord]]:
    """The committed records of ``topic``'s partitions from ``starts`` (an offset to read from, or None
    for the beginning) to their end as it is now, in chunks of at most ``chunk``: a restore that
    never holds a whole topic in memory. A start outside what the partition holds (compacted or
    deleted away before it, or past its end: the topic was made again) raises ``OffsetOutOfRange``,
    so that the caller can read that partition again from the beginning."""
    wanted = [TopicPartition(topic, partition) for partition in starts]
    if not wanted:
        return
    reader = make_consumer(settings, group_id=None, fetch_max_wait_ms=50)
    await reader.start()
    try:
        reader.assign(wanted)
        first = await reader.beginning_offsets(wanted)
        end = await reader.end_offsets(wanted)
        for tp in wanted:
            start = starts[tp.partition]
            if start is None:
                reader.seek(tp, first[tp])
            elif not first[tp] <= start <= end[tp]:
                raise OffsetOutOfRange(tp.partition, start, first[tp], end[tp])
            else:
                reader.seek(tp, start)
        remaining = {tp for tp in wanted if await reader.position(tp) < end[tp]}
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=200, max_records=chunk)
            records = [record for items in batch.values() for record in items]
            if records:
                yield records
            for tp in list(remaining):
                # With read_committed the position can stop short of the end offset only at
                # transaction markers; position() moves past them.
                if await reader.position(tp) >= end[tp]:
                    remaining.discard(tp)
    finally:
        await reader.stop()


class OffsetOutOfRange(Exception):
    """A partition was to be read from an offset it does not hold (see :func:`stream_partitions`)."""

    def __init__(self, partition: int, offset: int, first: int, end: int) -> None:
        super().__init__(f"partition {partition} holds offsets {first} to {end}, not {offset}")
        self.partition = partition


async def until_done(work: Callable[[], Awaitable[ResultT]], what: str, *, delay_s: float = 1.0) -> ResultT:
    """``work()``, tried again while Kafka cannot be reached.

    For what must not fail half-way, such as restoring a partition's state from its changelog when it
    is assigned: aiokafka only logs an error raised in an assignment callback and keeps the
    assignment, and a service would then own partitions without their state.
    """
    while True:
        try:
            return await work()
        except KafkaError as error:
            log.warning("cannot %s yet (%s); trying again in %.0f s", what, error, delay_s)
            await asyncio.sleep(delay_s)
