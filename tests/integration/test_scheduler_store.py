"""The scheduler keeps a copy of its changelog on disk (scheduler/changelog.py): a restart on the same
disk reads from Kafka only what was written while it was away, restores sleeping runs' timers and
wakes them on time; one on a new disk reads the whole changelog.

In-process schedulers against the real broker, one partition. Checked on the records each restore
read and on what the scheduler holds, never on times (only "not before it was due").
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from stepstream.avro import Codec
from stepstream.config import KafkaSettings, SchedulerSettings
from stepstream.core import FireTimer, TimerRequested
from stepstream.kafka.topics import TopicNames
from stepstream.scheduler.service import Scheduler
from tests.helpers import assert_eventually
from tests.integration.test_rebalance import produce, read_until, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

HOUR_MS = 3_600_000


def scheduler(kafka: KafkaSettings, instance: str, state_dir: Path) -> Scheduler:
    return Scheduler(SchedulerSettings(kafka=replace(kafka, instance_id=instance), state_dir=str(state_dir)))


async def sleep_until(kafka: KafkaSettings, topics: TopicNames, codec: Codec, run_id: str, due_ms: int) -> None:
    """A run's sleep, as the projector asks the scheduler for it."""
    timer = TimerRequested(request_id=f"{run_id}/timer", run_id=run_id, step_index=1, due_ms=due_ms)
    await produce(kafka, topics.schedule, run_id, codec.encode(timer))


@pytest.mark.asyncio
async def test_a_restart_on_the_same_disk_reads_only_what_it_missed_and_wakes_sleeps_on_time(
    kafka: KafkaSettings, tmp_path: Path, records_read: dict[str, list[int]]
) -> None:
    topics, codec, now = TopicNames(kafka.topic_prefix), Codec(), int(time.time() * 1000)

    # given a scheduler holding twenty runs' sleeps of an hour, stopped
    first = scheduler(kafka, "scheduler-a", tmp_path / "a")
    async with running(first):
        for number in range(20):
            await sleep_until(kafka, topics, codec, f"run-{number}", now + HOUR_MS)
        await assert_eventually(lambda: first.timers.count(0) == 20, timeout=30)
    assert records_read["timers"] == [0]  # a new topic: nothing to restore

    # and another instance, on its own disk, that took over meanwhile and took five more sleeps, two short
    other = scheduler(kafka, "scheduler-b", tmp_path / "b")
    async with running(other):
        await assert_eventually(lambda: other.ready.is_set(), timeout=30)
        assert records_read["timers"][-1] == 20  # a new disk: the whole changelog
        soon = int(time.time() * 1000) + 15_000
        for number in range(20, 25):
            await sleep_until(kafka, topics, codec, f"run-{number}", soon if number < 22 else now + HOUR_MS)
        await assert_eventually(lambda: other.timers.count(0) == 25, timeout=30)

    # when the first starts again on its disk
    again = scheduler(kafka, "scheduler-a", tmp_path / "a")
    async with running(again):
        await assert_eventually(lambda: again.ready.is_set(), timeout=30)

        # then it read from Kafka only the five entries written while it was away, and holds all 25:
        # the far ones on disk, the two short sleeps in memory once its first batch looks ahead
        assert records_read["timers"][-1] == 5
        assert len(again.pending) == 25
        await assert_eventually(lambda: (len(again.pending), again.pending.in_memory()) == (25, 2))
        # and the short sleeps wake, not before they were due, and no other
        commands = await read_until(
            kafka, topics.commands, lambda values: len([v for v in values if isinstance(v, FireTimer)]) >= 2
        )
        fired = [value for value in commands if isinstance(value, FireTimer)]
        assert sorted(timer.run_id for timer in fired) == ["run-20", "run-21"]
        assert all(timer.now_ms >= soon for timer in fired)
        await assert_eventually(lambda: again.timers.count(0) == 23, timeout=30)  # their entries are gone
