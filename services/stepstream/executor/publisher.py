"""What the executor writes to Kafka: the report of each delivery and call on ``commands``, kept
within the size Kafka accepts; the settlement of work under a flow-control key on ``schedule``; and a
record it cannot handle on the dead-letter topic. Each is one produce, awaited (acknowledged by the
brokers) and retried while Kafka is unreachable.

Apart from the service because the deliveries, the calls and the loop's dead letters all write
through it, and what a write must hold to is the same for each: a run never hangs on a report the
engine cannot keep, and a flow-control key's place is freed only once the report is written.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from aiokafka import ConsumerRecord
from aiokafka.errors import KafkaError, MessageSizeTooLargeError

from stepstream import tracing
from stepstream.avro import Codec, EncodeError
from stepstream.clock import Clock
from stepstream.core import FlowSettled, ReportCall, ReportDelivery
from stepstream.kafka.clients import Producer
from stepstream.kafka.deadletter import DeadLetters
from stepstream.kafka.topics import TopicNames

log = logging.getLogger(__name__)

ReportT = TypeVar("ReportT", ReportCall, ReportDelivery)


@dataclass(frozen=True, slots=True)
class _Flight:
    """A request under a flow-control key whose HTTP request has begun, until it is settled."""

    request_id: str
    flow_key: str
    started_ms: int  # just before the request went out; informational, in ``FlowSettled``


class Publisher:
    """Writes the executor's records through ``producer`` (started and stopped by the service)."""

    def __init__(
        self,
        producer: Producer,
        codec: Codec,
        topics: TopicNames,
        clock: Clock,
        *,
        max_record_bytes: int,
        dead_letters: DeadLetters,
    ) -> None:
        self.producer = producer
        self.codec = codec
        self.topics = topics
        self.clock = clock
        self.max_record_bytes = max_record_bytes
        self.dead_letters = dead_letters

    # ------------------------------------------------------------------------------------------
    # Reports

    async def report(self, run_id: str, report: ReportT, unrecordable: Callable[[ReportT, str], ReportT]) -> bool:
        """Write ``report``; if it cannot be encoded or is too large for Kafka, write what
        ``unrecordable`` makes of it instead, so the run moves on rather than hang on it. Returns
        whether ``report`` itself was written."""
        reason: str | None = None
        try:
            value = self.codec.encode(report)
        except EncodeError as error:
            # The answer does not fit the records (the protocol's bounds should prevent this).
            reason = str(error)
        else:
            limit = self.max_record_bytes
            if len(value) > limit:
                reason = f"its report of {len(value):,} bytes is over the {limit:,} bytes "
                reason += "STEPSTREAM_MAX_RECORD_BYTES allows"
        if reason is None:
            try:
                await self._send(self.topics.commands, run_id, value)
                return True
            except MessageSizeTooLargeError as error:
                reason = f"its report of {len(value)} bytes is larger than Kafka accepts ({error})"
        await self._send(self.topics.commands, run_id, self.codec.encode(unrecordable(report, reason)))
        return False

    async def dead_letter(self, record: ConsumerRecord, reason: str) -> None:
        """Set ``record`` aside on the dead-letter topic, saying why."""
        value = self.dead_letters.encode(record, reason, self.clock.now_ms())
        await self._send(self.topics.deadletter, DeadLetters.key(record).decode(errors="replace"), value)

    async def _send(self, topic: str, key: str, value: bytes) -> None:
        """Write a record, retrying while Kafka is unreachable: without a report the run cannot move
        on, and without a settlement its flow-control key keeps a place taken.

        Raises :class:`MessageSizeTooLargeError`, which no retry mends.
        """
        delay = 0.1
        while True:
            try:
                # Inside a delivery's or a call's span, a report carries it to the projector (tracing.py).
                traced = {"headers": headers} if (headers := tracing.kafka_headers()) else {}
                await (await self.producer.send(topic, value=value, key=key.encode(), **traced))
                return
            except MessageSizeTooLargeError:
                raise
            except KafkaError as error:
                log.warning("cannot write to %s for %s yet (%s); retrying in %.1f s", topic, key, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    # ------------------------------------------------------------------------------------------
    # Flow control

    def begin(self, request_id: str, flow_key: str | None) -> _Flight | None:
        """Note that the request under ``flow_key`` starts now (called just before it is sent); None
        without a key. Nothing is written: the scheduler counts from letting the request through."""
        if flow_key is None:
            return None
        return _Flight(request_id=request_id, flow_key=flow_key, started_ms=self.clock.now_ms())

    async def settle(self, flight: _Flight | None) -> None:
        """Tell the key's scheduler the request is done (its report is written)."""
        if flight is None:
            return
        settled = FlowSettled(
            request_id=flight.request_id,
            flow_key=flight.flow_key,
            started_ms=flight.started_ms,
            settled_ms=self.clock.now_ms(),
        )
        await self._send(self.topics.schedule, flight.flow_key, self.codec.encode(settled))
