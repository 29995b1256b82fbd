"""The executor: calls workflow endpoints and reports every outcome as a command.

Many calls are in flight at once (bounded). An input offset is committed only once the reports of
it and of every record before it in its partition are written, so a crash repeats calls but never
loses one: delivery is at least once, and the projector ignores the duplicate reports.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import replace

import aiohttp
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from stepstream import protocol, signing
from stepstream.avro import Codec, DecodeError, EncodeError
from stepstream.clock import Clock, SystemClock
from stepstream.config import ExecutorSettings
from stepstream.core import Delivery, Outcome, ReportDelivery, StepResult
from stepstream.executor.outcome import from_response, from_transport_error, parse_retry_after
from stepstream.kafka.clients import PartitionListener, encode_dead_letter, make_consumer, make_producer
from stepstream.kafka.topics import TopicNames

log = logging.getLogger(__name__)

SERVICE = "executor"


def request_body(delivery: Delivery, budget_ms: int) -> bytes:
    request = {
        "protocol": protocol.PROTOCOL_VERSION,
        "run_id": delivery.run_id,
        "workflow": delivery.workflow,
        "delivery_id": delivery.delivery_id,
        "attempt": delivery.attempt,
        "payload": json.loads(delivery.payload),
        "steps": [
            {"index": step.index, "name": step.name, "kind": step.kind.value, "output": json.loads(step.output)}
            for step in delivery.steps
        ],
        "budget_ms": budget_ms,
    }
    return json.dumps(request, separators=(",", ":")).encode()


class _PartitionProgress:
    """Offsets in flight for one partition; the committable offset is the lowest not yet reported."""

    def __init__(self) -> None:
        self.in_flight: set[int] = set()
        self.highest_seen = -1

    def start(self, offset: int) -> None:
        self.in_flight.add(offset)
        self.highest_seen = max(self.highest_seen, offset)

    def committable(self) -> int:
        return min(self.in_flight) if self.in_flight else self.highest_seen + 1


class Executor:
    def __init__(self, settings: ExecutorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(self.kafka.topic_prefix)
        self.codec = codec or Codec()
        self.clock = clock or SystemClock()
        self.group_id = f"{self.kafka.topic_prefix}executor"
        self.ready = asyncio.Event()
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._progress: dict[TopicPartition, _PartitionProgress] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._consumer = make_consumer(self.kafka, group_id=self.group_id, fetch_max_wait_ms=5)
        self._producer = make_producer(self.kafka)
        self._session: aiohttp.ClientSession | None = None

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, limit_per_host=self.settings.concurrency)
        self._session = aiohttp.ClientSession(connector=connector)
        await self._producer.start()
        await self._consumer.start()
        try:
            self._consumer.subscribe(
                [self.topics.deliveries], listener=PartitionListener(assigned=self.assigned, revoked=self.drain)
            )
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.concurrency)
                for tp, records in batch.items():
                    progress = self._progress.setdefault(tp, _PartitionProgress())
                    for record in records:
                        await self._slots.acquire()
                        progress.start(record.offset)
                        task = asyncio.create_task(self._handle(tp, record))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                await self._commit()
        finally:
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._consumer.stop()
            await self._producer.stop()
            await self._session.close()

    async def _commit(self) -> None:
        offsets = {}
        for tp, progress in self._progress.items():
            offset = progress.committable()
            if offset > self._committed.get(tp, -1) and offset > 0:
                offsets[tp] = offset
        if offsets:
            await self._consumer.commit(offsets)
            self._committed.update(offsets)

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        self.ready.set()

    async def drain(self, partitions: list[TopicPartition]) -> None:
        """Before partitions move away, let their calls finish and commit them."""
        pending = [task for task in self._tasks if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.timeout_ms / 1000 + 5)
        try:
            await self._commit()
        except Exception:  # the group may already be rebalancing; the next owner repeats the calls
            log.warning("executor could not commit before a rebalance", exc_info=True)
        for tp in partitions:
            self._progress.pop(tp, None)
            self._committed.pop(tp, None)

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        try:
            await self._deliver(record)
        except Exception:
            log.exception("executor failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            # Leave the offset uncommitted: a restart or rebalance will try the record again.
            return
        finally:
            self._slots.release()
        progress = self._progress.get(tp)
        if progress is not None:
            progress.in_flight.discard(record.offset)

    async def _deliver(self, record: ConsumerRecord) -> None:
        try:
            delivery = self.codec.decode(record.value, expected=(Delivery,))
        except DecodeError as error:
            value = encode_dead_letter(self.codec, record, str(error), SERVICE, self.clock.now_ms())
            await (await self._producer.send(self.topics.deadletter, value=value, key=record.key))
            return
        started = time.perf_counter()
        steps, outcome = await self._call(delivery)
        report = ReportDelivery(
            run_id=delivery.run_id,
            delivery_id=delivery.delivery_id,
            attempt=delivery.attempt,
            now_ms=self.clock.now_ms(),
            steps=steps,
            outcome=outcome,
        )
        try:
            value = self.codec.encode(report)
        except EncodeError as error:
            # The endpoint's answer does not fit the records (the protocol's bounds should prevent
            # this): report that instead, so the run moves on rather than hang on this delivery.
            invalid = from_transport_error("InvalidResponse", f"the endpoint's answer cannot be recorded: {error}")
            value = self.codec.encode(replace(report, steps=(), outcome=invalid))
        await self._send_report(delivery.run_id, value)
        log.debug(
            "delivered %s#%d in %.1f ms", delivery.delivery_id, delivery.attempt, (time.perf_counter() - started) * 1000
        )

    async def _send_report(self, run_id: str, value: bytes) -> None:
        """Write a report, retrying while Kafka is unreachable: without it the run cannot move on."""
        delay = 0.1
        while True:
            try:
                await (await self._producer.send(self.topics.commands, value=value, key=run_id.encode()))
                return
            except KafkaError as error:
                log.warning("cannot write a report for %s yet (%s); retrying in %.1f s", run_id, error, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _call(self, delivery: Delivery) -> tuple[tuple[StepResult, ...], Outcome]:
        assert self._session is not None
        body = request_body(delivery, self.settings.budget_ms)
        headers = dict(delivery.headers)
        headers.update(
            {
                "Content-Type": "application/json",
                protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION),
                protocol.RUN_ID_HEADER: delivery.run_id,
                protocol.DELIVERY_ID_HEADER: delivery.delivery_id,
                protocol.ATTEMPT_HEADER: str(delivery.attempt),
            }
        )
        if self.settings.signing_keys:
            headers[protocol.SIGNATURE_HEADER] = signing.sign(body, self.settings.signing_keys, int(time.time()))
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_ms / 1000)
        try:
            async with self._session.post(delivery.url, data=body, headers=headers, timeout=timeout) as response:
                answer = await response.read()
                return from_response(response.status, answer, parse_retry_after(response.headers.get("Retry-After")))
        except TimeoutError:
            return (), from_transport_error("Timeout", f"endpoint did not answer within {self.settings.timeout_ms} ms")
        except aiohttp.ClientError as error:
            return (), from_transport_error("ConnectionError", f"{type(error).__name__}: {error}")
