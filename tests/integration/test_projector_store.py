"""The projector keeps every run on disk and only the runs in use in memory (projector/store.py).

In-process projectors against the real broker, with a cache of three runs: runs that have ended,
and runs that wait, leave memory and stay on disk; a command for a run no longer in memory finds
it there; a duplicate trigger of a run that ended long ago is still a duplicate; a restart on the
same file reads only what it missed, and one on a new file streams the topic to disk and loads no
run into memory. Checked on the store's state and on the records read, never on times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

import stepstream.projector.service as projector_service
from stepstream.avro import Codec
from stepstream.config import KafkaSettings, ProjectorSettings
from stepstream.core import (
    Complete,
    NotifyEvent,
    ReceiveEvent,
    RegisterWaiter,
    ReportDelivery,
    RunCompleted,
    RunStatus,
    StepKind,
    StepResult,
)
from stepstream.core.commands import CancelRun, TriggerRun
from stepstream.core.events import RunCancelled, RunStarted
from stepstream.core.retention import COMPACTED_PAYLOAD
from stepstream.kafka.clients import read_partitions_to_end
from stepstream.kafka.topics import TopicNames
from tests.integration.test_rebalance import produce, read_all, read_until, running

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CACHE = 3
RUNS = 10


@pytest.fixture
def kafka(kafka: KafkaSettings) -> KafkaSettings:
    """One partition, and a stable instance id: a restart finds the projector's files again."""
    return replace(kafka, instance_id="store-test")


def trigger(run_id: str, now: int) -> TriggerRun:
    # Waits an hour before its first delivery, so nothing but these commands happens to the run.
    return TriggerRun(
        run_id=run_id,
        workflow="w",
        url="http://127.0.0.1:9/workflows/w",
        payload="{}",
        now_ms=now,
        not_before_ms=now + 3_600_000,
    )


def of_type(values: list[Any], kind: type[Any], run_id: str | None = None) -> list[Any]:
    found: list[Any] = [value for value in values if isinstance(value, kind)]
    return [value for value in found if run_id in (None, value.run_id)]


@pytest.mark.asyncio
async def test_runs_leave_memory_stay_on_disk_and_a_restart_reads_only_what_it_missed(
    kafka: KafkaSettings, tmp_path: Path, records_read: dict[str, list[int]]
) -> None:
    topics, codec, now = TopicNames(kafka.topic_prefix), Codec(), int(time.time() * 1000)
    settings = ProjectorSettings(kafka=kafka, state_dir=str(tmp_path / "state"), cache_runs=CACHE)
    run_ids = [f"run-{number}" for number in range(RUNS)]

    projector = projector_service.Projector(settings)
    async with running(projector):
        for run_id in run_ids:
            await produce(kafka, topics.commands, run_id, codec.encode(trigger(run_id, now)))
        await read_until(kafka, topics.events, lambda values: len(of_type(values, RunStarted)) >= RUNS)
        # The first half end; the second half keep waiting. Ten runs, three in memory at most.
        for run_id in run_ids[: RUNS // 2]:
            await produce(
                kafka, topics.commands, run_id, codec.encode(CancelRun(run_id=run_id, reason="t", now_ms=now))
            )
        events = await read_until(kafka, topics.events, lambda values: len(of_type(values, RunCancelled)) >= RUNS // 2)
        assert len(of_type(events, RunCancelled)) == RUNS // 2
        assert projector.states.in_memory() <= CACHE
        assert projector.states.runs_on_disk(0) == RUNS

        # A run that left memory long ago is found on disk: cancelling it works,
        cancel = CancelRun(run_id=run_ids[-1], reason="late", now_ms=now)
        await produce(kafka, topics.commands, run_ids[-1], codec.encode(cancel))
        # and a trigger with the id of a run that ended is still a duplicate (a marker run after it
        # shows the projector got that far: one partition, in order).
        await produce(kafka, topics.commands, run_ids[0], codec.encode(trigger(run_ids[0], now)))
        await produce(kafka, topics.commands, "marker", codec.encode(trigger("marker", now)))
        events = await read_until(kafka, topics.events, lambda values: bool(of_type(values, RunStarted, "marker")))
        assert len(of_type(events, RunCancelled, run_ids[-1])) == 1
        assert len(of_type(events, RunStarted, run_ids[0])) == 1
        assert projector.states.in_memory() <= CACHE
        states = {run_id: projector.states[run_id] for run_id in run_ids}
    first_restore = records_read["runs"][-1]

    # A restart on the same file reads only what was written after it: nothing.
    again = projector_service.Projector(settings)
    async with running(again):
        await read_until(kafka, topics.events, lambda values: again.ready.is_set())
        assert again.ready.is_set()
        assert records_read["runs"][-1] == 0 <= first_restore
        assert again.states.runs_on_disk(0) == RUNS + 1
        assert again.states.in_memory() == 0

    # One on a new file streams the whole topic to disk, and still loads no run into memory.
    fresh = projector_service.Projector(
        ProjectorSettings(kafka=kafka, state_dir=str(tmp_path / "other"), cache_runs=CACHE)
    )
    async with running(fresh):
        await read_until(kafka, topics.events, lambda values: fresh.ready.is_set())
        assert fresh.ready.is_set()
        assert records_read["runs"][-1] >= RUNS + 1  # every run's record, at least
        assert fresh.states.runs_on_disk(0) == RUNS + 1
        assert fresh.states.in_memory() == 0
        # and what it restored is what the runs are.
        assert {run_id: fresh.states[run_id] for run_id in run_ids} == states
    assert [type(value).__name__ for value in of_type(await read_all(kafka, topics.events), RunStarted)].count(
        "RunStarted"
    ) == RUNS + 1


@pytest.mark.asyncio
async def test_runs_that_ended_before_the_retention_window_are_compacted_and_still_known(
    kafka: KafkaSettings, tmp_path: Path
) -> None:
    topics, codec, now = TopicNames(kafka.topic_prefix), Codec(), int(time.time() * 1000)
    # A window of 0: a run is compacted at the first sweep after it ends (at most a second later).
    settings = ProjectorSettings(
        kafka=kafka, state_dir=str(tmp_path / "state"), cache_runs=CACHE, ended_run_retention_ms=0
    )
    ended, live = ["ended-0", "ended-1"], "live"

    projector = projector_service.Projector(settings)
    async with running(projector):
        for run_id in [*ended, live]:
            await produce(kafka, topics.commands, run_id, codec.encode(trigger(run_id, now)))
        await read_until(kafka, topics.events, lambda values: len(of_type(values, RunStarted)) >= 3)
        # given two runs that record two results each and complete, and one that waits
        for run_id in ended:
            (pending,) = projector.states[run_id].in_flight
            steps = tuple(
                StepResult(index=i, name=f"s{i}", kind=StepKind.RUN, output='"' + "r" * 500 + '"') for i in range(2)
            )
            report = ReportDelivery(
                run_id=run_id,
                delivery_id=pending.delivery_id,
                attempt=pending.attempt,
                now_ms=now,
                steps=steps,
                outcome=Complete(output='"done"'),
            )
            await produce(kafka, topics.commands, run_id, codec.encode(report))
        await read_until(kafka, topics.events, lambda values: len(of_type(values, RunCompleted)) >= 2)

        # then the ended runs are compacted: their payload and results are gone, from the store and
        # from the topic (tombstones), and nothing of them is left to compact
        def compacted_all() -> bool:
            return all(projector.states[run_id].payload == COMPACTED_PAYLOAD for run_id in ended)

        await wait_for(compacted_all)
        for run_id in ended:
            small = projector.states[run_id]
            assert (small.status, small.steps, small.payload) == (RunStatus.COMPLETED, (), COMPACTED_PAYLOAD)
        assert projector.states.ended_before(now + 3_600_000, {0}, 100) == []
        latest = {bytes(record.key): record.value for record in await read_partitions_to_end(kafka, topics.runs, [0])}
        for run_id in ended:
            assert latest[f"{run_id}/0".encode()] is None
            assert latest[f"{run_id}/1".encode()] is None
            assert len(latest[run_id.encode()] or b"") < 200
        # and the run that waits is whole
        assert projector.states[live].payload == "{}"
        assert projector.states[live].status is RunStatus.SCHEDULED  # its first delivery is an hour away

        # and a trigger with a compacted run's id is still a duplicate (the marker shows it got that far)
        await produce(kafka, topics.commands, ended[0], codec.encode(trigger(ended[0], now)))
        await produce(kafka, topics.commands, "marker", codec.encode(trigger("marker", now)))
        events = await read_until(kafka, topics.events, lambda values: bool(of_type(values, RunStarted, "marker")))
        assert len(of_type(events, RunStarted, ended[0])) == 1
        states = {run_id: projector.states[run_id] for run_id in [*ended, live]}

    # and a projector on a new file restores the compact states, and finds nothing more to compact
    fresh = projector_service.Projector(
        ProjectorSettings(kafka=kafka, state_dir=str(tmp_path / "other"), cache_runs=CACHE, ended_run_retention_ms=0)
    )
    async with running(fresh):
        await wait_for(fresh.ready.is_set)
        assert {run_id: fresh.states[run_id] for run_id in [*ended, live]} == states
        assert fresh.states.ended_before(now + 3_600_000, {0}, 100) == []


async def wait_for(condition: Callable[[], bool], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.2)


@pytest.mark.asyncio
async def test_waiter_indexes_leave_memory_stay_on_disk_and_a_restart_reads_only_what_it_missed(
    kafka: KafkaSettings, tmp_path: Path, records_read: dict[str, list[int]]
) -> None:
    topics, codec, now = TopicNames(kafka.topic_prefix), Codec(), int(time.time() * 1000)
    settings = ProjectorSettings(kafka=kafka, state_dir=str(tmp_path / "state"), cache_runs=CACHE)
    event_ids = [f"paid-{number}" for number in range(RUNS)]

    projector = projector_service.Projector(settings)
    async with running(projector):
        # given ten runs waiting on ten event ids, three indexes in memory at most
        for number, event_id in enumerate(event_ids):
            register = RegisterWaiter(
                event_id=event_id, run_id=f"run-{number}", step_index=1, timeout_at_ms=now + 3_600_000, now_ms=now
            )
            await produce(kafka, topics.commands, event_id, codec.encode(register))
        await read_until(kafka, topics.waiters, lambda values: len(values) >= RUNS)
        assert projector.waiters.in_memory() <= CACHE
        assert projector.waiters.on_disk(0) == RUNS
        # when the first event id, long out of memory, is notified
        notify = NotifyEvent(event_id=event_ids[0], data='{"paid":true}', now_ms=now)
        await produce(kafka, topics.commands, event_ids[0], codec.encode(notify))
        # then its run is woken, from the index on disk
        commands = await read_until(kafka, topics.commands, lambda values: bool(of_type(values, ReceiveEvent)))
        (received,) = of_type(commands, ReceiveEvent)
        assert (received.run_id, received.step_index, received.data) == ("run-0", 1, '{"paid":true}')
    first_restore = records_read["waiters"][-1]

    # A restart on the same files reads only what was written after them: nothing.
    again = projector_service.Projector(settings)
    async with running(again):
        await wait_for(again.ready.is_set)
        assert records_read["waiters"][-1] == 0 <= first_restore
        assert again.waiters.in_memory() == 0
        assert again.waiters.on_disk(0) == RUNS
        assert again.waiters["paid-5"].waiters[0].run_id == "run-5"
