"""Fixtures the integration tests share: a one-partition set of topics and a count of the records each
restore of a changelog read from Kafka (the in-process service tests), and a schema registry."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from stepstream.avro.local_registry import LocalRegistry
from stepstream.config import KafkaSettings
from stepstream.kafka.clients import stream_partitions
from stepstream.store import changelog
from tests.stack import Stack


@pytest.fixture
def kafka(kafka_bootstrap: str, tmp_path: Path) -> KafkaSettings:
    """Settings for in-process services on fresh topics of one partition."""
    stack = Stack(kafka_bootstrap, tmp_path, partitions=1)
    stack.create_topics()
    return KafkaSettings(bootstrap_servers=kafka_bootstrap, topic_prefix=stack.prefix, partitions=1)


@pytest.fixture
def records_read(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """How many records each restore read from Kafka, one number per restore, by changelog (the topic's
    name without its prefix: runs, waiters, timers). Every service restores through store/changelog.py."""
    counts: dict[str, list[int]] = defaultdict(list)

    async def counting(settings: KafkaSettings, topic: str, starts: Mapping[int, int | None]) -> AsyncIterator[Any]:
        restore = counts[topic.rsplit(".", 1)[-1]]
        restore.append(0)
        async for records in stream_partitions(settings, topic, starts):
            restore[-1] += len(records)
            yield records

    monkeypatch.setattr(changelog, "stream_partitions", counting)
    return counts


@pytest.fixture(scope="session")
def registry_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A schema registry speaking the Confluent API: Apicurio Registry, started here (the first run
    downloads it: ``make test`` does that first), or the one ``STEPSTREAM_TEST_REGISTRY`` names. Tests
    may share it: each registers what it needs, and registering again is idempotent."""
    external = os.environ.get("STEPSTREAM_TEST_REGISTRY")
    if external:
        yield external
        return
    with LocalRegistry(data_dir=tmp_path_factory.mktemp("registry")) as registry:
        yield registry.url
