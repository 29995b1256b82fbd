"""The executor: calls workflow endpoints and reports every outcome as a command; and makes the
engine-side HTTP calls of ``call`` steps and reports their answers.

Many deliveries are in flight at once (bounded). A delivery's input offset is committed only once the
reports of it and of every delivery before it in its partition are written, so a crash repeats
deliveries but never loses one: delivery is at least once, and the projector ignores the duplicate
reports.

Calls are bounded apart (``call_concurrency``), so slow third parties never take delivery slots, and
a call's offset is committable as soon as the call has started: the projector keeps a deadline timer
for every call attempt and treats one whose report never comes as unanswered (to be retried), so a
crash mid-call loses nothing, and a call that takes an hour does not hold back the commits of its
partition, or a rebalance, for an hour. The executor never retries a call itself: the projector
decides from the report.

Work under a flow-control key (``flow_key`` set) is counted by the key's scheduler from the moment
it lets the work through until ``period`` after the work's settlement reaches it, so the executor
tells it of the settlement: ``FlowSettled`` on ``schedule``, keyed by the flow key, once the report
is written, whatever the outcome. It carries the time taken just before the HTTP request went out,
for information only (the scheduler counts on its own clock). Such a delivery asks for one step
(``budget_ms`` 0), since every step start counts against the key's limits. A delivery's offset waits
for its settlement as for its report, so a crash between the two repeats the delivery and settles it
then; a call's settlement lost in a crash is made good by the scheduler's lease on the call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Sequence
from typing import Any, cast

import aiohttp
from aiokafka import ConsumerRecord, TopicPartition

from stepstream import metrics, tracing
from stepstream.avro import TOPIC_TYPES, Codec, DecodeError, codec_for
from stepstream.clock import Clock, SystemClock
from stepstream.config import ExecutorSettings
from stepstream.core import CallDelivery, Delivery, DeliveryCancelled, DeliverySteps
from stepstream.executor import calls
from stepstream.executor.apart import PartsInHand
from stepstream.executor.chain import Cancelled, Recovered, may_chain
from stepstream.executor.deliveries import deliver, report_failure
from stepstream.executor.offsets import PartitionProgress
from stepstream.executor.publisher import Publisher
from stepstream.executor.recovery import DeliveryKey, oldest_uncommitted, read_reports
from stepstream.executor.requests import send_call
from stepstream.kafka.clients import (
    IDLE_FETCH_WAIT_MS,
    PartitionListener,
    make_consumer,
    make_producer,
    topic_partitions,
    until_done,
)
from stepstream.kafka.deadletter import DeadLetters
from stepstream.kafka.lag import watch_lag
from stepstream.kafka.progress import Progress, readiness
from stepstream.kafka.topics import TopicNames
from stepstream.logs import log_context

log = logging.getLogger(__name__)

SERVICE = "executor"

# How long what the reports said after a crash is kept for the deliveries read again.
RECOVERED_KEPT_MS = 600_000


class Executor:
    def __init__(self, settings: ExecutorSettings, *, codec: Codec | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.kafka = settings.kafka
        self.topics = TopicNames(self.kafka.topic_prefix)
        self.codec = codec or codec_for(settings.kafka)
        self.clock = clock or SystemClock()
        self.group_id = f"{self.kafka.topic_prefix}executor"
        if not settings.allowed_url_hosts:
            log.warning(
                "no url host is allowed (STEPSTREAM_ALLOWED_URL_HOSTS and STEPSTREAM_WORKFLOWS are empty): "
                "every delivery will fail with UrlNotAllowed"
            )
        self.ready = asyncio.Event()
        # A partition stalls when its oldest delivery in hand has not let its offset move for longer
        # than a delivery may take, plus the stall bound.
        self.progress = Progress(self.clock, stall_ms=settings.timeout_ms + self.kafka.stall_ms)
        self.dead_letters = DeadLetters(self.codec, SERVICE, self.kafka.max_record_bytes)
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._call_slots = asyncio.Semaphore(settings.call_concurrency)
        self._progress: dict[TopicPartition, PartitionProgress] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._deliveries: set[asyncio.Task[None]] = set()  # each holds back its offset until it reports (and settles)
        # What the reports written before a crash say of the deliveries read again since (recovery).
        self._recovered: dict[DeliveryKey, tuple[int, Recovered]] = {}  # when it was read, and what
        # While partitions are let go (a rebalance, a shutdown), deliveries stop going on past a step.
        self._letting_go = False
        # Runs cancelled lately: a delivery of one stops going on (DeliveryCancelled on deliveries).
        self._cancelled = Cancelled()
        self._lock = asyncio.Lock()  # an assignment's recovery, against the batch loop
        self._generation = 0  # counts rebalances: a batch fetched under an earlier one is dropped
        self._calls: set[asyncio.Task[None]] = set()  # none holds back an offset
        self._parts = PartsInHand()  # results read apart from their delivery (core.apart), until it comes
        self._consumer = make_consumer(self.kafka, group_id=self.group_id, fetch_max_wait_ms=IDLE_FETCH_WAIT_MS)
        self._publisher = Publisher(
            make_producer(self.kafka),
            self.codec,
            self.topics,
            self.clock,
            max_record_bytes=self.kafka.max_record_bytes,
            dead_letters=self.dead_letters,
        )
        self._session: aiohttp.ClientSession | None = None
        self._call_session: aiohttp.ClientSession | None = None

    def readiness(self) -> str | None:
        return readiness(self.ready, self.progress)

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.settings.concurrency, limit_per_host=self.settings.concurrency)
        # No cookie jars: a cookie one answer sets must not ride along on another run's request.
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
        self._call_session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.call_concurrency), cookie_jar=aiohttp.DummyCookieJar()
        )
        await self._publisher.producer.start()
        await self._consumer.start()
        unwatch = watch_lag(SERVICE, self._consumer)
        try:
            self._consumer.subscribe(
                [self.topics.deliveries], listener=PartitionListener(assigned=self.assigned, revoked=self.drain)
            )
            while True:
                batch = await self._consumer.getmany(timeout_ms=200, max_records=self.settings.concurrency)
                generation = self._generation
                async with self._lock:
                    if generation != self._generation:
                        continue  # a rebalance came between: the partitions start again at their committed offsets
                    for tp, records in batch.items():
                        progress = self._progress.setdefault(tp, PartitionProgress())
                        for record in records:
                            await self._start(tp, progress, record)
                        metrics.RECORDS_CONSUMED.labels(SERVICE, tp.topic).inc(len(records))
                await self._commit()
        finally:
            unwatch()
            await self._finish_in_flight()
            tasks = [*self._deliveries, *self._calls]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._consumer.stop()
            await self._publisher.producer.stop()
            await self._session.close()
            await self._call_session.close()

    async def _start(self, tp: TopicPartition, progress: PartitionProgress, record: ConsumerRecord) -> None:
        """Start the work of one record, once a slot of its kind is free."""
        message: Delivery | DeliverySteps | CallDelivery | DeliveryCancelled | DecodeError
        try:
            decoded = self.codec.decode(record.value, expected=TOPIC_TYPES["deliveries"])
            message = cast(Delivery | DeliverySteps | CallDelivery | DeliveryCancelled, decoded)
        except DecodeError as error:
            message = error
        if isinstance(message, DeliverySteps):
            # Held back, like its delivery's offset, until the delivery that follows it has reported.
            self._parts.add(tp.partition, record.offset, message)
            progress.start(record.offset)
            return
        if isinstance(message, DeliveryCancelled):
            self._cancelled.add(message.run_id, self.clock.now_ms())
            progress.start(record.offset, hold=False)
            return
        if isinstance(message, CallDelivery):
            await self._call_slots.acquire()
            progress.start(record.offset, hold=False)
            self._spawn(self._calls, self._handle_call(message, record.headers))
        else:
            parts: list[int] = []
            if isinstance(message, Delivery) and message.steps_apart:
                joined, parts = self._parts.take(tp.partition, message)
                if joined is None:  # never written so, but a record from elsewhere might be
                    message = DecodeError(
                        f"Expected the {message.steps_apart} results of delivery {message.request_id} "
                        "in DeliverySteps records just before it, but they were not there"
                    )
                else:
                    message = joined
            await self._slots.acquire()
            progress.start(record.offset)
            self.progress.waiting((tp,))
            self._spawn(self._deliveries, self._handle(tp, record, message, parts))

    @staticmethod
    def _spawn(tasks: set[asyncio.Task[None]], work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def _commit(self) -> None:
        offsets = {}
        for tp, progress in self._progress.items():
            offset = progress.committable()
            if offset > self._committed.get(tp, -1) and offset > 0:
                offsets[tp] = offset
        if offsets:
            await self._consumer.commit(offsets)
            self._committed.update(offsets)
            for tp in offsets:
                self.progress.done((tp,), more=bool(self._progress[tp].in_flight))

    async def assigned(self, partitions: list[TopicPartition]) -> None:
        """Before reading new partitions, read back what their deliveries not yet committed reported
        already (:mod:`stepstream.executor.recovery`), so that none is made twice."""
        self._generation += 1
        # aiokafka fetches for new partitions while this callback still runs: the batch loop waits for
        # the lock, so no delivery starts before what was reported of it is known.
        async with self._lock:
            self._letting_go = False
            new = [tp for tp in partitions if tp.partition not in self._owned()]
            reported = await until_done(lambda: self._reported(new), "read back what was reported")
            # What the reports say of deliveries that were committed already is never asked for: it
            # goes with the next assignment after it (a backlog is read within minutes, not hours).
            now = self.clock.now_ms()
            self._recovered = {
                key: (at, recovered) for key, (at, recovered) in self._recovered.items() if at > now - RECOVERED_KEPT_MS
            } | {key: (now, recovered) for key, recovered in reported.items()}
        self.ready.set()

    async def _reported(self, partitions: list[TopicPartition]) -> dict[DeliveryKey, Recovered]:
        """What was reported of the deliveries of ``partitions`` not committed yet (recovery.py)."""
        since = await oldest_uncommitted(self._consumer, self.kafka, partitions)
        if not since:
            return {}
        commands = await topic_partitions(self._consumer, self.topics.commands)
        if len(commands) != len(await topic_partitions(self._consumer, self.topics.deliveries)):
            # Reports are keyed by run id on commands: without the same partition count, a delivery's
            # reports may be on any partition of it.
            since = dict.fromkeys(commands, min(since.values()))
        return await read_reports(self.kafka, self.codec, self.topics.commands, since)

    def _owned(self) -> set[int]:
        return {tp.partition for tp in self._progress}

    async def _finish_in_flight(self) -> None:
        """On shutdown: give the deliveries in flight up to the grace period to finish and report, and
        commit them; the rest are handed back (uncommitted, made again by the partition's next owner).
        Calls are not waited for: their offsets are committed already, and a lost attempt is retried
        at its deadline."""
        self.ready.clear()
        self._letting_go = True
        pending = [task for task in self._deliveries if not task.done()]
        if pending:
            log.info(
                "executor stopping: waiting up to %d ms for %d deliveries",
                self.settings.shutdown_grace_ms,
                len(pending),
            )
            _, unfinished = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_ms / 1000)
            if unfinished:
                log.warning("executor stopping: handing back %d deliveries still in flight", len(unfinished))
        try:
            await self._commit()
        except Exception:
            log.warning(
                "executor could not commit while stopping; the next owner repeats those deliveries", exc_info=True
            )

    async def drain(self, partitions: list[TopicPartition]) -> None:
        """Before partitions move away, let their deliveries finish and commit them.

        Calls are not waited for (one may take hours): their offsets are committable already, and
        their reports, written whenever they end, are as good from this member as from any. A delivery
        the executor goes on with stops at its next step: the new owner gets the rest as a new one.
        """
        self._generation += 1
        self._letting_go = True
        pending = [task for task in self._deliveries if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.settings.timeout_ms / 1000 + 5)
        try:
            await self._commit()
        except Exception:  # the group may already be rebalancing; the next owner repeats the deliveries
            log.warning("executor could not commit before a rebalance", exc_info=True)
        for tp in partitions:
            self._progress.pop(tp, None)
            self._committed.pop(tp, None)
        self._parts.drop(tp.partition for tp in partitions)
        self.progress.forget(partitions)

    # ------------------------------------------------------------------------------------------
    # Deliveries

    async def _handle(
        self, tp: TopicPartition, record: ConsumerRecord, message: Delivery | DecodeError, parts: Sequence[int] = ()
    ) -> None:
        """Make one delivery and report it; whatever happens, the record is done with at the end (reported,
        or else dead-lettered), so no record can hold back its partition's offsets. ``parts``: the
        offsets of the records its results came in, done with at the same time."""
        try:
            if isinstance(message, DecodeError):
                await self._publisher.dead_letter(record, str(message))
            else:
                # Its log lines name the run; its span (if traced) is the parent of the app's and of the
                # projector's for its reports.
                attributes: dict[str, str | int] = {
                    "stepstream.delivery_id": message.delivery_id,
                    "stepstream.attempt": message.attempt,
                }
                with (
                    log_context(
                        run_id=message.run_id,
                        workflow=message.workflow,
                        step=message.step_index,
                        delivery_id=message.delivery_id,
                    ),
                    tracing.span(
                        f"deliver {message.workflow}",
                        message.run_id,
                        headers=record.headers,
                        kind=tracing.CLIENT,
                        attributes=attributes,
                    ),
                ):
                    try:
                        await self._deliver(message)
                    except Exception as error:
                        # A bug, or a value no check foresaw: the run must not wait for ever on this
                        # delivery. Reported as a retryable failure, it is tried again, then fails the run.
                        log.exception("executor failed on delivery %s#%d", message.delivery_id, message.attempt)
                        await report_failure(
                            message, f"{type(error).__name__}: {error}", clock=self.clock, publisher=self._publisher
                        )
        except Exception as error:
            # Not even a report could be written (Kafka refused it for good): set the record aside.
            log.exception("executor failed on %s[%d]@%d", record.topic, record.partition, record.offset)
            try:
                await self._publisher.dead_letter(record, f"the executor failed on this record: {error!r}")
            except Exception:
                log.exception("executor could not dead-letter %s[%d]@%d", record.topic, record.partition, record.offset)
        finally:
            self._slots.release()
            progress = self._progress.get(tp)
            if progress is not None:
                for offset in (*parts, record.offset):
                    progress.finish(offset)

    async def _deliver(self, delivery: Delivery) -> None:
        """Make ``delivery`` (:mod:`stepstream.executor.deliveries`) with what the loop knows of it:
        what its reports said before a crash, and whether it may go on past a step now."""
        _, recovered = self._recovered.pop((delivery.delivery_id, delivery.attempt), (0, None))
        assert self._session is not None
        await deliver(
            delivery,
            recovered,
            http=self._session,
            may_go_on=self._may_go_on,
            settings=self.settings,
            clock=self.clock,
            publisher=self._publisher,
        )

    def _may_go_on(self, delivery: Delivery) -> bool:
        """Whether to go on with ``delivery`` past a ``continue``: not while letting partitions go (the
        next owner gets a fresh delivery from the projector instead), nor for a cancelled run."""
        return may_chain(delivery) and not self._letting_go and delivery.run_id not in self._cancelled

    # ------------------------------------------------------------------------------------------
    # Engine-side calls

    async def _handle_call(self, call: CallDelivery, headers: tracing.Headers) -> None:
        with (
            log_context(run_id=call.run_id, step=call.step_index, delivery_id=call.request_id),
            tracing.span(f"call {call.call.method}", call.run_id, headers=headers, kind=tracing.CLIENT),
        ):
            await self._make_call(call)

    async def _make_call(self, call: CallDelivery) -> None:
        started = time.perf_counter()
        try:
            flight = self._publisher.begin(call.request_id, call.flow_key)
            assert self._call_session is not None
            report = await send_call(self._call_session, call, self.settings.sealer, self.clock)
            await self._publisher.report(call.run_id, report, calls.unrecordable)
            await self._publisher.settle(flight)
        except Exception:
            # Nothing to hold back: the projector's deadline timer for this attempt retries it (under
            # flow control, the scheduler's lease on it, which frees its place too).
            log.exception("executor failed on call %s", call.request_id)
            return
        finally:
            self._call_slots.release()
        log.debug("called %s in %.1f ms", call.request_id, (time.perf_counter() - started) * 1000)
