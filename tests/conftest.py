"""Fixtures and markers for the whole suite.

``kafka_bootstrap`` gives integration tests a real Kafka broker, once per session and only when a test
asks for it: ``KAFKA_BOOTSTRAP_SERVERS`` when set; a Kafka container when
``STEPSTREAM_TEST_KAFKA=testcontainers`` (needs a Docker engine); otherwise a local broker run from
Maven Central jars (:class:`stepstream.kafka.LocalKafka`, needs Java 17+ and Maven).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: against a real Kafka broker and real HTTP on loopback")
    config.addinivalue_line("markers", "e2e: the whole system as a user runs it: CLI, services as processes")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The bootstrap servers of the session's Kafka broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    mode = os.environ.get("STEPSTREAM_TEST_KAFKA", "local")
    if mode == "testcontainers":
        yield from _kafka_container()
    elif mode == "local":
        yield from _local_kafka(tmp_path_factory)
    else:
        raise pytest.UsageError(f"Expected STEPSTREAM_TEST_KAFKA to be 'local' or 'testcontainers', but got {mode!r}")


def _kafka_container() -> Iterator[str]:
    # Imported here: testcontainers is optional and only works where a Docker engine runs.
    from testcontainers.community.kafka import KafkaContainer

    # testcontainers' Kafka module drives Confluent's image (Kafka 3.6 here) in KRaft mode; choose
    # another with STEPSTREAM_TEST_KAFKA_IMAGE. Not exercised on the project's own machines, which
    # have no Docker engine: the local Kafka 4.1 broker is the one the suite is proven against.
    image = os.environ.get("STEPSTREAM_TEST_KAFKA_IMAGE", "confluentinc/cp-kafka:7.6.0")
    with KafkaContainer(image).with_kraft() as container:
        yield str(container.get_bootstrap_server())


def _local_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # Imported here so that unit tests run without the server extra (aiokafka).
    from stepstream.kafka import LocalKafka, free_port

    port = free_port()
    controller_port = free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(data_dir=tmp_path_factory.mktemp("kafka"), port=port, controller_port=controller_port)
    kafka.start()
    try:
        yield kafka.bootstrap_servers
    finally:
        kafka.stop()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A real PostgreSQL server for the session (tests/postgres.py), started on first use."""
    from tests.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A url of the session's PostgreSQL server with an empty schema of this test's own."""
    from tests.postgres import fresh_schema

    with fresh_schema(postgres_server_url) as url:
        yield url
