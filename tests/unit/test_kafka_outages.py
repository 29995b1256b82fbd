"""How the Kafka clients ride out a broker outage: reconnect backoff, metadata backoff, and a
coordinator lookup cut off by a closed connection (stepstream.kafka.clients.harden)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    OutOfOrderSequenceNumber,
)

from stepstream.kafka import clients
from stepstream.kafka.clients import Backoff, harden

# -- Backoff ----------------------------------------------------------------------------------


def test_a_key_that_never_failed_is_ready() -> None:
    assert Backoff().ready("node", now=0.0)


def test_each_failure_doubles_the_wait_up_to_the_maximum() -> None:
    backoff = Backoff(first_s=0.05, max_s=1.0)

    delays = [backoff.failed("node", now=0.0) for _ in range(7)]

    assert delays == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_key_is_not_ready_until_its_wait_has_passed() -> None:
    backoff = Backoff(first_s=0.05, max_s=1.0)
    backoff.failed("node", now=10.0)

    assert not backoff.ready("node", now=10.04)
    assert backoff.ready("node", now=10.05)


def test_a_success_starts_the_backoff_again_from_nothing() -> None:
    backoff = Backoff(first_s=0.05, max_s=1.0)
    for _ in range(4):
        backoff.failed("node", now=0.0)

    backoff.succeeded("node")

    assert backoff.ready("node", now=0.0)
    assert backoff.failed("node", now=0.0) == 0.05


def test_keys_back_off_apart() -> None:
    backoff = Backoff(first_s=0.05, max_s=1.0)
    backoff.failed("node 1", now=0.0)

    assert backoff.ready("node 2", now=0.0)


# -- harden: the three patched methods of one aiokafka client ----------------------------------


class FakeClient:
    """The parts of an AIOKafkaClient that harden() patches, with scripted answers."""

    def __init__(self) -> None:
        self._conns: dict[Any, Any] = {}
        self.connect_attempts = 0
        self.connects = False
        self.metadata_answers: list[bool] = []
        self.lookup_error: Exception | None = None

    async def _get_conn(self, node_id: Any, **options: Any) -> Any:
        self.connect_attempts += 1
        return object() if self.connects else None

    async def _metadata_update(self, cluster_metadata: Any, topics: Any) -> bool:
        return self.metadata_answers.pop(0)

    async def coordinator_lookup(self, coordinator_type: Any, coordinator_key: str) -> int:
        if self.lookup_error is not None:
            raise self.lookup_error
        return 1


class Clock:
    """The monotonic time harden() reads, set by the test; and its sleeps, recorded, not slept."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_a_broker_that_just_refused_a_connection_is_not_tried_again_until_its_backoff_passed() -> None:
    client, clock = FakeClient(), Clock()
    harden(client, clock=clock, sleep=clock.sleep)

    async def scenario() -> list[Any]:
        first = await client._get_conn(1)  # refused: backs off 50 ms
        clock.now += 0.01
        during = await client._get_conn(1)  # not tried
        clock.now += 0.05
        client.connects = True
        after = await client._get_conn(1)  # tried, and connected
        return [first, during, after]

    first, during, after = asyncio.run(scenario())

    assert (first, during) == (None, None)
    assert after is not None
    assert client.connect_attempts == 2


def test_a_connection_that_is_up_is_used_whatever_the_backoff() -> None:
    client, clock = FakeClient(), Clock()
    harden(client, clock=clock, sleep=clock.sleep)

    class Connected:
        def connected(self) -> bool:
            return True

    asyncio.run(client._get_conn(1))  # refused: backs off
    connection = Connected()
    client._conns[(1, 0)] = connection

    assert asyncio.run(client._get_conn(1)) is connection


def test_a_failed_metadata_refresh_waits_its_backoff_before_it_reports() -> None:
    client, clock = FakeClient(), Clock()
    client.metadata_answers = [False, False, False, True, False]
    harden(client, clock=clock, sleep=clock.sleep)

    answers = [asyncio.run(client._metadata_update(None, set())) for _ in range(5)]

    assert answers == [False, False, False, True, False]
    assert clock.sleeps == [0.05, 0.1, 0.2, 0.05]  # a success started the backoff again


def test_a_connection_closed_during_a_coordinator_lookup_is_a_broker_not_ready_which_callers_retry() -> None:
    client = FakeClient()
    client.lookup_error = KafkaConnectionError("Connection at 127.0.0.1:9092 closed")
    harden(client)

    with pytest.raises(NodeNotReadyError, match="closed"):
        asyncio.run(client.coordinator_lookup(1, "stepstream.projector-pod-0"))


def test_other_coordinator_lookup_errors_are_left_as_they_are() -> None:
    client = FakeClient()
    client.lookup_error = ValueError("not a connection problem")
    harden(client)

    with pytest.raises(ValueError, match="not a connection problem"):
        asyncio.run(client.coordinator_lookup(1, "key"))


def test_every_client_the_services_make_is_hardened() -> None:
    from stepstream.config import KafkaSettings

    async def build() -> list[Any]:
        settings = KafkaSettings()
        consumer = clients.make_consumer(settings, group_id="group")
        producer = clients.make_producer(settings, transactional_id="id")
        made = [consumer._client, producer.client]
        await consumer.stop()  # never started: nothing to connect, only the objects to close
        await producer.stop()
        return made

    for client in asyncio.run(build()):
        assert client.coordinator_lookup.__name__ == "coordinator_lookup_retried"
        assert client._get_conn.__name__ == "get_conn_with_backoff"
        assert client._metadata_update.__name__ == "metadata_update_with_backoff"


# -- Producer: transactions that commit only what was written, and a producer replaced when broken --


class FakeTxnManager:
    def __init__(self) -> None:
        self.fatal = False

    def is_fatal_error(self) -> bool:
        return self.fatal


class FakeSender:
    def __init__(self) -> None:
        self.sender_task: asyncio.Future[None] | None = None


class FakeAIOKafkaProducer:
    """What Producer uses of an AIOKafkaProducer; records are answered by ``answers`` (None: written)."""

    def __init__(self, number: int) -> None:
        self.number = number
        self._sender = FakeSender()
        self._txn_manager = FakeTxnManager()
        self.answers: list[BaseException | None] = []
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")
        self._sender.sender_task = asyncio.get_running_loop().create_future()

    async def stop(self) -> None:
        self.calls.append("stop")

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> asyncio.Future[str]:
        self.calls.append(f"send {topic}")
        written: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        answer = self.answers.pop(0) if self.answers else None
        if answer is None:
            written.set_result(topic)
        else:
            written.set_exception(answer)
        return written

    async def begin_transaction(self) -> None:
        self.calls.append("begin")

    async def commit_transaction(self) -> None:
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        self.calls.append("abort")

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.calls.append("offsets")


class Built:
    """The factory Producer is given: makes fake producers and keeps them."""

    def __init__(self) -> None:
        self.producers: list[FakeAIOKafkaProducer] = []

    def __call__(self) -> Any:
        self.producers.append(FakeAIOKafkaProducer(len(self.producers)))
        return self.producers[-1]


def run(scenario: Any) -> Any:
    return asyncio.run(scenario())


async def write(producer: clients.Producer, *topics: str, then_raise: BaseException | None = None) -> None:
    """One transaction: a record to each topic, then (if given) the block raises."""
    async with producer.transaction():
        for topic in topics:
            await producer.send(topic, value=b"record")
        if then_raise is not None:
            raise then_raise


def test_a_transaction_commits_once_every_record_sent_in_it_is_written() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> None:
        await producer.start()
        async with producer.transaction():
            await producer.send("events", value=b"1")
            await producer.send_offsets_to_transaction({}, "group")

    run(scenario)

    assert built.producers[0].calls == ["start", "begin", "send events", "offsets", "commit"]


def test_a_transaction_with_a_record_not_written_is_not_committed_and_its_producer_is_replaced() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> None:
        await producer.start()
        built.producers[0].answers = [None, OutOfOrderSequenceNumber()]
        with pytest.raises(OutOfOrderSequenceNumber):
            await write(producer, "events", "runs")
        await write(producer, "events")

    run(scenario)

    first, second = built.producers
    assert first.calls == ["start", "begin", "send events", "send runs", "stop"]  # neither committed nor aborted
    assert second.calls == ["start", "begin", "send events", "commit"]


def test_a_transaction_whose_block_raises_is_aborted() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> None:
        await producer.start()
        with pytest.raises(RuntimeError, match="decide failed"):
            await write(producer, "events", then_raise=RuntimeError("decide failed"))

    run(scenario)

    assert built.producers[0].calls == ["start", "begin", "send events", "abort"]
    assert len(built.producers) == 1  # nothing wrong with the producer


def test_a_producer_whose_sender_died_is_replaced_before_its_next_record() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> None:
        await producer.start()
        task = built.producers[0]._sender.sender_task
        assert task is not None
        task.set_exception(KafkaError("Unexpected error during batch delivery"))
        await producer.send("commands", value=b"report")

    run(scenario)

    first, second = built.producers
    assert first.calls == ["start", "stop"]
    assert second.calls == ["start", "send commands"]


def test_a_producer_in_a_fatal_transaction_state_is_replaced_before_its_next_transaction() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> None:
        await producer.start()
        built.producers[0]._txn_manager.fatal = True
        async with producer.transaction():
            await producer.send("events", value=b"1")

    run(scenario)

    assert [p.calls for p in built.producers] == [["start", "stop"], ["start", "begin", "send events", "commit"]]


def test_a_record_refused_for_its_sequence_number_replaces_the_producer_but_other_refusals_do_not() -> None:
    built = Built()
    producer = clients.Producer(built)

    async def scenario() -> list[BaseException | None]:
        await producer.start()
        built.producers[0].answers = [MessageSizeTooLargeError(), OutOfOrderSequenceNumber()]
        outcomes: list[BaseException | None] = []
        for _ in range(3):
            written = await producer.send("commands", value=b"report")
            await asyncio.sleep(0)  # its sender answers it (done callbacks run)
            outcomes.append(written.exception())
        return outcomes

    outcomes = run(scenario)

    assert [type(outcome) for outcome in outcomes] == [MessageSizeTooLargeError, OutOfOrderSequenceNumber, type(None)]
    assert [p.calls for p in built.producers] == [
        ["start", "send commands", "send commands", "stop"],
        ["start", "send commands"],
    ]


def test_anything_else_is_the_current_producers() -> None:
    built = Built()
    producer = clients.Producer(built)

    assert producer.number == 0
