"""How the Kafka clients ride out a broker outage: reconnect backoff, metadata backoff, and a
coordinator lookup cut off by a closed connection (stepstream.kafka.clients.harden)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaConnectionError, NodeNotReadyError

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
