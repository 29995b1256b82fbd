"""The local Kafka broker and the engine's topics, against a real broker."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stepstream.errors import KafkaProvisioningError
from stepstream.kafka import LocalKafka, TopicNames, ensure_topics, free_port
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def unique_names() -> TopicNames:
    # Each test its own topics, so tests do not see each other's records, also on a shared cluster.
    return TopicNames(f"test{uuid.uuid4().hex[:8]}.")


async def describe(bootstrap_servers: str, names: TopicNames) -> tuple[dict[str, int], dict[str, dict[str, str]]]:
    """Each topic's partition count, and its configs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        await admin.start()
        topics = await admin.describe_topics(list(names.all()))
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names.all()]
        )
    finally:
        await admin.close()
    partitions = {topic["topic"]: len(topic["partitions"]) for topic in topics if topic["error_code"] == 0}
    configs = {
        resource["resource_name"]: {
            entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
        }
        for response in responses
        for resource in response.to_object()["resources"]
    }
    return partitions, configs


async def consume_all(bootstrap_servers: str, topic: str, *, isolation_level: str, expected_count: int) -> list[Any]:
    """The records of ``topic`` from the beginning, once at least ``expected_count`` have arrived."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        isolation_level=isolation_level,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records: list[Any] = []
    try:
        await consumer.start()

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= expected_count

        await assert_eventually(enough, timeout=30)
    finally:
        await consumer.stop()
    return records


@pytest.mark.asyncio
async def test_ensure_topics_creates_every_topic_with_its_partitions_and_configs(kafka_bootstrap: str) -> None:
    names = unique_names()

    await ensure_topics(kafka_bootstrap, names, partitions=3)

    partitions, configs = await describe(kafka_bootstrap, names)
    assert partitions == dict.fromkeys(names.all(), 3)
    assert configs[names.runs]["cleanup.policy"] == "compact"
    assert configs[names.timers]["cleanup.policy"] == "compact"
    assert configs[names.events]["retention.ms"] == "-1"
    assert configs[names.deadletter]["retention.ms"] == "-1"
    assert configs[names.commands]["cleanup.policy"] == "delete"
    assert configs[names.commands]["retention.ms"] != "-1"


@pytest.mark.asyncio
async def test_the_events_topic_keeps_records_as_long_as_the_operator_chose(kafka_bootstrap: str) -> None:
    names = unique_names()

    await ensure_topics(kafka_bootstrap, names, partitions=1, events_retention_ms=30 * 86_400_000)

    _, configs = await describe(kafka_bootstrap, names)
    assert configs[names.events]["retention.ms"] == str(30 * 86_400_000)
    assert configs[names.deadletter]["retention.ms"] == "-1"


@pytest.mark.asyncio
async def test_ensure_topics_twice_changes_nothing_and_warns_about_a_different_partition_count(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = unique_names()
    await ensure_topics(kafka_bootstrap, names, partitions=2)

    await ensure_topics(kafka_bootstrap, names, partitions=2)
    with caplog.at_level(logging.WARNING, logger="stepstream.kafka.topics"):
        await ensure_topics(kafka_bootstrap, names, partitions=4)

    partitions, configs = await describe(kafka_bootstrap, names)
    assert partitions == dict.fromkeys(names.all(), 2)
    assert configs[names.runs]["cleanup.policy"] == "compact"
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    warned_about = [name for name in names.all() if any(f"{name} has 2 partitions, not the 4" in w for w in warnings)]
    assert warned_about == list(names.all())


@pytest.mark.asyncio
async def test_ensure_topics_retries_for_a_bounded_time_then_says_why() -> None:
    nobody_listens = f"127.0.0.1:{free_port()}"

    with pytest.raises(KafkaProvisioningError, match=rf"{nobody_listens} within 2 s; the last problem was .*Connect"):
        await ensure_topics(nobody_listens, unique_names(), timeout_s=2)


@pytest.mark.asyncio
async def test_read_committed_consumers_see_committed_transactions_only(kafka_bootstrap: str) -> None:
    names = unique_names()
    await ensure_topics(kafka_bootstrap, names, partitions=1)
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"test-{uuid.uuid4().hex}")
    await producer.start()
    try:
        await producer.begin_transaction()
        await producer.send_and_wait(names.events, b"aborted", key=b"run-1")
        await producer.abort_transaction()
        async with producer.transaction():
            await producer.send_and_wait(names.events, b"committed", key=b"run-1")
    finally:
        await producer.stop()

    committed = await consume_all(kafka_bootstrap, names.events, isolation_level="read_committed", expected_count=1)
    everything = await consume_all(kafka_bootstrap, names.events, isolation_level="read_uncommitted", expected_count=2)

    assert [record.value for record in committed] == [b"committed"]
    # The aborted record really was written; read_committed skipped it.
    assert [record.value for record in everything] == [b"aborted", b"committed"]


@pytest.mark.asyncio
async def test_a_restarted_broker_keeps_its_topics_and_records(tmp_path: Path) -> None:
    port, controller_port = free_port(), free_port()
    while controller_port == port:
        controller_port = free_port()
    kafka = LocalKafka(data_dir=tmp_path / "kafka", port=port, controller_port=controller_port)
    names = unique_names()
    try:
        await asyncio.to_thread(kafka.start)
        pid = (kafka.data_dir / "kafka.pid").read_text()
        await asyncio.to_thread(kafka.start)  # already running: nothing happens
        assert (kafka.data_dir / "kafka.pid").read_text() == pid
        await ensure_topics(kafka.bootstrap_servers, names, partitions=2)
        producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap_servers, acks="all")
        await producer.start()
        try:
            await producer.send_and_wait(names.runs, b"run state", key=b"run-1")
        finally:
            await producer.stop()

        await asyncio.to_thread(kafka.stop)
        assert not kafka.is_running()
        # A stale pid file naming a live process that is not this broker (this very test) is ignored.
        (kafka.data_dir / "kafka.pid").write_text(f"{os.getpid()}\n")
        await asyncio.to_thread(kafka.start)

        assert kafka.is_running()
        records = await consume_all(
            kafka.bootstrap_servers, names.runs, isolation_level="read_committed", expected_count=1
        )
        assert [(record.key, record.value) for record in records] == [(b"run-1", b"run state")]
    finally:
        await asyncio.to_thread(kafka.stop)
    assert not kafka.is_running()


def test_without_java_the_error_names_the_alternatives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    kafka = LocalKafka(data_dir=tmp_path / "kafka", port=free_port())

    with pytest.raises(KafkaProvisioningError) as raised:
        kafka.start()

    message = str(raised.value)
    assert "java" in message
    assert "KAFKA_BOOTSTRAP_SERVERS" in message
    assert "apt-get install openjdk-17-jre-headless maven" in message
    assert "compose.yaml" in message
    assert not kafka.is_running()


def test_an_old_java_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_java = tmp_path / "java"
    fake_java.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
    fake_java.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)

    with pytest.raises(KafkaProvisioningError, match=r"Java 17 or newer.*Java 11"):
        LocalKafka(data_dir=tmp_path / "kafka").start()


def test_without_maven_the_first_download_is_refused_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs a java without mvn next to it")
    only_java = tmp_path / "bin"
    only_java.mkdir()
    (only_java / "java").symlink_to(java)
    monkeypatch.setenv("PATH", str(only_java))
    monkeypatch.setenv("STEPSTREAM_KAFKA_CACHE", str(tmp_path / "empty-cache"))

    with pytest.raises(KafkaProvisioningError, match=r"Maven \(`mvn`\).*KAFKA_BOOTSTRAP_SERVERS"):
        LocalKafka(data_dir=tmp_path / "kafka").ensure_jars()
