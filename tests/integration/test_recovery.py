"""Recovery through static group membership (docs/decisions/0004): a service killed with SIGKILL and
started again with the same instance id takes its partitions back at once, and one stopped with
SIGTERM leaves its group at once.

The groups here have a session timeout of five minutes, far longer than the tests wait: a restarted
process that had to wait for its predecessor's session to expire (as a new member does) would not
get its partitions in time, and a stopped member that did not leave would still be listed.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import InvalidProducerEpoch, KafkaError, OutOfOrderSequenceNumber, ProducerFenced

from stepstream.config import KafkaSettings
from stepstream.executor.recovery import record_times
from stepstream.kafka.clients import Producer, make_producer
from tests.helpers import wait_until
from tests.stack import Stack, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SESSION_TIMEOUT_MS = 300_000
STEPS = ("create-account", "send-welcome", "wait-before-tips", "send-tips")


@pytest.fixture
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(
        kafka_bootstrap,
        tmp_path,
        STEPSTREAM_KAFKA_SESSION_TIMEOUT_MS=str(SESSION_TIMEOUT_MS),
        STEPSTREAM_STEP_BUDGET_MS="0",  # one step per delivery: every step a round trip through the projector
    )
    stack.create_topics()
    yield stack
    stack.stop()


def group_members(bootstrap: str, group: str) -> list[str]:
    """The member ids of a consumer group; a static member's starts with its group instance id."""

    async def describe() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            [response] = await admin.describe_consumer_groups([group])
        finally:
            await admin.close()
        [(_error, _group, _state, _protocol_type, _protocol, members, *_rest)] = response.groups
        return [member[0] for member in members]

    return asyncio.run(describe())


def assert_each_step_recorded_once(stack: Stack, run_id: str) -> None:
    history = stack.history(run_id)
    assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
    completed = [event["name"] for event in history if event["type"] == "StepCompleted"]
    assert completed == list(STEPS), history
    assert [event["type"] for event in history].count("RunCompleted") == 1


@pytest.mark.parametrize("service", ["projector", "scheduler", "executor"])
def test_a_service_killed_and_started_again_with_its_instance_id_finishes_the_runs_it_had(
    stack: Stack, kafka_bootstrap: str, service: str
) -> None:
    stack.start()
    # given runs in flight: the scheduler is killed while they sleep (its timers pending), the others
    # while their steps are being delivered
    run_ids = [stack.trigger({"name": f"user{index}", "sleep_seconds": 2}) for index in range(6)]
    if service == "scheduler":
        for run_id in run_ids:
            stack.wait_for_status(run_id, "sleeping", timeout=60)
    else:
        time.sleep(0.3)

    # when the service is killed with SIGKILL and started again at once, with the same instance id
    stack.kill(service, signal.SIGKILL)
    stack.start(service)

    # then every run completes (its predecessor's session, five minutes long, did not have to expire),
    # each step recorded once
    for run_id in run_ids:
        stack.wait_for_status(run_id, "completed", timeout=120)
        assert_each_step_recorded_once(stack, run_id)
    if service != "executor":  # a delivery cut off by the executor's death is made again (at least once)
        counts = stack.step_counts()
        ran = {
            f"{run_id}:{step}": counts[f"{run_id}:{step}"] for run_id in run_ids for step in STEPS if step != STEPS[2]
        }
        assert set(ran.values()) == {1}, ran
    # and the group has one member: the restarted process, as the same static member
    members = group_members(kafka_bootstrap, f"{stack.prefix}{service}")
    assert len(members) == 1, members
    assert members[0].startswith(stack.instance_id(service)), members


def test_a_service_stopped_with_sigterm_leaves_its_group_at_once(stack: Stack, kafka_bootstrap: str) -> None:
    # given a scheduler, a static member of its group
    stack.start("scheduler")
    stack.wait_for_http(f"http://127.0.0.1:{stack.health_ports['scheduler']}/readyz")
    group = f"{stack.prefix}scheduler"
    [member] = group_members(kafka_bootstrap, group)
    assert member.startswith(stack.instance_id("scheduler"))

    # when it is stopped with SIGTERM
    process = stack.processes.pop("scheduler")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    # then it has left the group (a static member that did not would stay for its five-minute session)
    assert group_members(kafka_bootstrap, group) == []


def test_a_second_member_gets_the_partitions_of_one_stopped_with_sigterm(stack: Stack, kafka_bootstrap: str) -> None:
    # given two schedulers sharing the partitions
    stack.start("scheduler", "scheduler:2")
    for name in ("scheduler", "scheduler:2"):
        stack.wait_for_http(f"http://127.0.0.1:{stack.health_ports[name]}/readyz")
    group = f"{stack.prefix}scheduler"
    wait_until(lambda: len(group_members(kafka_bootstrap, group)) == 2, timeout=60)

    # when one is stopped with SIGTERM
    process = stack.processes.pop("scheduler")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0

    # then the other owns every partition (it would wait five minutes for a member that did not leave)
    log = stack.directory / "scheduler-2.log"
    wait_until(lambda: "owns schedule partitions [0, 1, 2]" in log.read_text(), timeout=60)
    [member] = group_members(kafka_bootstrap, group)
    assert member.startswith(stack.instance_id("scheduler:2"))


def test_a_transaction_the_broker_aborted_costs_its_records_not_the_producer(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """aiokafka leaves a producer fenced for good once the broker aborted its transaction (here for its
    timeout, as after a broker outage longer than it); the engine's producer replaces itself."""
    stack = Stack(kafka_bootstrap, tmp_path, partitions=1)
    stack.create_topics()
    topic = f"{stack.prefix}deadletter"
    settings = KafkaSettings(
        bootstrap_servers=kafka_bootstrap, topic_prefix=stack.prefix, partitions=1, transaction_timeout_ms=1_000
    )

    async def stale_transaction(producer: Producer) -> None:
        # given a transaction left open past its timeout: the broker aborts it (its check runs every
        # 10 s by default) and fences the producer, whose next record is then refused
        async with producer.transaction():
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await (await producer.send(topic, value=b"stale", key=b"k"))
                await asyncio.sleep(0.5)

    async def scenario() -> type[BaseException]:
        producer = make_producer(settings, transactional_id=f"{stack.prefix}test-fenced")
        await producer.start()
        try:
            try:
                await stale_transaction(producer)
            except KafkaError as error:
                refused = type(error)
            else:
                raise AssertionError("the broker never aborted the transaction")
            # when the engine writes its next transaction
            async with producer.transaction():
                await producer.send(topic, value=b"fresh", key=b"k")
        finally:
            await producer.stop()
        return refused

    refused = asyncio.run(scenario())

    # then it is written (by a new producer), and nothing of the aborted one is
    assert issubclass(refused, ProducerFenced | InvalidProducerEpoch | OutOfOrderSequenceNumber), refused
    assert [record.value for record in read_topic(kafka_bootstrap, topic, partitions=1)] == [b"fresh"]


def test_an_executor_taking_a_partition_whose_last_offset_is_a_commit_marker_has_nothing_to_recover(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """A group commits the offset after the last record it handled; the transaction's commit marker
    comes after that record, so the committed offset is one short of the end. That is not an
    undelivered record: it took the executor 2 s of polling and a WARNING on every restart, and a
    read of a minute of reports, for nothing (found by bench/scale.py)."""
    stack = Stack(kafka_bootstrap, tmp_path, partitions=1)
    stack.create_topics()
    settings = KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=stack.prefix, partitions=1)
    tp = TopicPartition(f"{stack.prefix}deliveries", 0)

    async def scenario() -> tuple[dict[int, int], dict[int, int]]:
        producer = make_producer(settings, transactional_id=f"{stack.prefix}test-marker")
        await producer.start()
        try:
            # given one delivery written in a transaction: the record at offset 0, its marker at 1
            async with producer.transaction():
                await producer.send(tp.topic, value=b"delivery", key=b"run", partition=0)
        finally:
            await producer.stop()
        # then from offset 1 (where a group that handled the record commits) there is nothing to time,
        # and from offset 0 there is the record
        return await record_times(settings, {tp: 1}), await record_times(settings, {tp: 0})

    after_the_record, from_the_record = asyncio.run(scenario())

    assert after_the_record == {}
    assert list(from_the_record) == [0]
