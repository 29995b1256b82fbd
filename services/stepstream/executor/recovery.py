"""After a crash: what the reports of a partition's deliveries already say, so none is made twice.

A delivery's offset is committed only once it and every delivery before it in its partition have
reported, so after a crash the next owner of the partition reads deliveries again that may have been
made, and reported, already; and one the crashed executor went on with (see :mod:`chain`) may have
reported steps that its record on ``deliveries`` does not carry. Making it again from that record
would run those steps again and, worse, go on from results the history does not hold.

So when it is given a partition with records not yet committed, the executor first reads back the
reports written since the oldest of them (on ``commands``, where reports go, keyed by run id, so
the partition with the same number when no flow-control key sets the key), and then, for each
delivery it reads again: one that ended is done; one that went on resumes after its last reported
step. Reading from the oldest uncommitted record's time, less a margin for clocks, keeps it to what
a crash can have left: the reports of the deliveries in flight then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from stepstream.avro import Codec, DecodeError
from stepstream.config import KafkaSettings
from stepstream.core import Continuing, ReportDelivery
from stepstream.executor.chain import Recovered
from stepstream.kafka.clients import make_consumer

log = logging.getLogger(__name__)

# Reports are stamped by the executor that wrote them, deliveries by the projector or scheduler:
# on other hosts, so their clocks may differ by this much.
CLOCK_MARGIN_MS = 60_000

DeliveryKey = tuple[str, int]  # delivery id, attempt


def fold_reports(reports: Iterable[ReportDelivery]) -> dict[DeliveryKey, Recovered]:
    """What reports say of each delivery, in the order they were written: the steps reported while it
    went on (the first report of a step wins, as in the history), and whether a last report came."""
    seen: dict[DeliveryKey, set[int]] = {}
    found: dict[DeliveryKey, Recovered] = {}
    for report in reports:
        key = (report.delivery_id, report.attempt)
        known = found.get(key, Recovered())
        if known.ended:
            continue
        indexes = seen.setdefault(key, set())
        new = tuple(step for step in report.steps if step.index not in indexes)
        indexes.update(step.index for step in new)
        found[key] = Recovered(steps=known.steps + new, ended=not isinstance(report.outcome, Continuing))
    return found


async def read_reports(
    kafka: KafkaSettings, codec: Codec, commands_topic: str, since_ms: Mapping[int, int]
) -> dict[DeliveryKey, Recovered]:
    """The reports on ``commands_topic``'s partitions written since each partition's time in ``since_ms``."""
    wanted = [TopicPartition(commands_topic, partition) for partition in since_ms]
    if not wanted:
        return {}
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=50)
    await reader.start()
    try:
        reader.assign(wanted)
        starts = await reader.offsets_for_times({tp: max(0, since_ms[tp.partition] - CLOCK_MARGIN_MS) for tp in wanted})
        ends = await reader.end_offsets(wanted)
        remaining = set()
        for tp in wanted:
            start = starts.get(tp)
            if start is None:  # nothing written since: no report to read
                continue
            reader.seek(tp, start.offset)
            if start.offset < ends[tp]:
                remaining.add(tp)
        reports: list[ReportDelivery] = []
        read = 0
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=200, max_records=5_000)
            for records in batch.values():
                read += len(records)
                reports.extend(_reports(codec, records))
            for tp in list(remaining):
                if await reader.position(tp) >= ends[tp]:  # past transaction markers too
                    remaining.discard(tp)
        found = fold_reports(reports)
        log.info(
            "read %d records of %s back after taking partitions over: %d deliveries reported before",
            read,
            commands_topic,
            len(found),
        )
        return found
    finally:
        await reader.stop()


async def oldest_uncommitted(
    consumer: AIOKafkaConsumer, kafka: KafkaSettings, partitions: list[TopicPartition]
) -> dict[int, int]:
    """For each of a group member's ``partitions`` with records not committed yet, the time of the
    oldest of them, by partition number."""
    if not partitions:
        return {}
    ends = await consumer.end_offsets(partitions)
    firsts = await consumer.beginning_offsets(partitions)
    # Not committed yet: the group reads the partition from its beginning (auto_offset_reset).
    starts = {tp: (await consumer.committed(tp)) or firsts[tp] for tp in partitions}
    behind = {tp: offset for tp, offset in starts.items() if offset < ends[tp]}
    if not behind:
        return {}
    return await record_times(kafka, behind)


async def record_times(kafka: KafkaSettings, offsets: Mapping[TopicPartition, int]) -> dict[int, int]:
    """The time of the first record at or after each partition's offset, by partition number; a
    partition with none left to read is not in the answer."""
    reader = make_consumer(kafka, group_id=None, fetch_max_wait_ms=50)
    await reader.start()
    try:
        reader.assign(list(offsets))
        for tp, offset in offsets.items():
            reader.seek(tp, offset)
        ends = await reader.end_offsets(list(offsets))
        times: dict[int, int] = {}
        remaining = set(offsets)
        for _ in range(10):  # 2 s: a record there, committed, comes at the first fetch
            if not remaining:
                break
            batch = await reader.getmany(*remaining, timeout_ms=200, max_records=1)
            for tp, records in batch.items():
                if records:
                    times[tp.partition] = records[0].timestamp
                    remaining.discard(tp)
            for tp in list(remaining):
                # A group commits the offset after the last record it handled, and the transaction's
                # commit marker follows that record: a partition whose only offsets left are markers
                # (or aborted records) has nothing uncommitted. Its position moves past them.
                if await reader.position(tp) >= ends[tp]:
                    remaining.discard(tp)
        for tp in remaining:  # nothing readable there (aborted writes only): from now on
            log.warning("no record to time at %s[%d]; reading reports from a minute ago", tp.topic, tp.partition)
            times[tp.partition] = int(time.time() * 1000)
        return times
    finally:
        await reader.stop()


def _reports(codec: Codec, records: Iterable[ConsumerRecord]) -> Iterable[ReportDelivery]:
    for record in records:
        try:
            decoded = codec.decode(record.value)
        except DecodeError:
            continue  # the projector dead-letters it; nothing here to learn from it
        if isinstance(decoded, ReportDelivery):
            yield decoded
