"""Records in the Confluent Schema Registry wire format, against a real registry (Apicurio Registry,
tests/integration/conftest.py): what the engine writes, Confluent's own deserializer reads; the engine
reads both formats, so a cluster switches from one to the other with a restart and loses nothing."""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

from stepstream.avro import Codec, DecodeError, SchemaError, SchemaRegistry
from stepstream.avro.codec import CONFLUENT_MAGIC, MAGIC
from stepstream.avro.schemas import default_directory, expand, read_directory
from stepstream.core import RunStarted
from tests.stack import Stack, read_topic
from tests.unit.test_avro_codec import SAMPLES

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

APPS = Path(__file__).resolve().parents[1] / "apps"


@pytest.fixture(scope="module")
def registry(registry_url: str) -> Iterator[SchemaRegistry]:
    client = SchemaRegistry(registry_url)
    yield client
    client.close()


@pytest.fixture(scope="module")
def confluent(registry: SchemaRegistry) -> Codec:
    return Codec(registry=registry, confluent=True)


@pytest.fixture(scope="module")
def deserializer(registry_url: str) -> Iterator[AvroDeserializer]:
    with SchemaRegistryClient({"url": registry_url}) as client:
        yield AvroDeserializer(client)


def _read(deserializer: AvroDeserializer, data: bytes, context: SerializationContext) -> dict[str, Any]:
    """What Confluent's deserializer reads: a plain dict of the record's fields."""
    read = deserializer(data, context)
    assert isinstance(read, dict)
    return read


def test_confluents_deserializer_reads_every_record_the_engine_writes(
    confluent: Codec, deserializer: AvroDeserializer
) -> None:
    context = SerializationContext("stepstream.events", MessageField.VALUE)
    for name, sample in SAMPLES.items():
        data = confluent.encode(sample)
        assert data[:1] == CONFLUENT_MAGIC, name
        read = _read(deserializer, data, context)
        # Confluent's reader gives plain dicts: the record's fields, as the schema names them.
        assert set(read) == {field.name for field in dataclasses.fields(sample)}, name  # type: ignore[arg-type]
        assert confluent.decode(data) == sample, name
    started = SAMPLES["RunStarted.full"]
    assert isinstance(started, RunStarted)
    read = _read(deserializer, confluent.encode(started), context)
    assert (read["run_id"], read["workflow"], json.loads(read["payload"])) == (
        started.run_id,
        started.workflow,
        json.loads(started.payload),
    )


def test_each_format_reads_the_other(registry: SchemaRegistry, confluent: Codec) -> None:
    single = Codec(registry=registry)
    for name, sample in SAMPLES.items():
        written_single, written_confluent = single.encode(sample), confluent.encode(sample)
        assert written_single[:2] == MAGIC, name
        assert confluent.decode(written_single) == sample, name
        assert single.decode(written_confluent) == sample, name


def test_a_codec_that_did_not_register_learns_a_schema_id_from_the_registry(
    registry_url: str, confluent: Codec
) -> None:
    """A record written under an id this process never saw at start (a newer engine's, mid-upgrade):
    looked up once, then read."""
    data = confluent.encode(SAMPLES["RunStarted.full"])
    with SchemaRegistry(registry_url) as registry:
        late = Codec(registry=registry)
        late._by_id.clear()  # as if started before the id existed
        assert late.decode(data) == SAMPLES["RunStarted.full"]


class CountingRegistry(SchemaRegistry):
    """The real registry, counting the schema lookups the codec makes."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.lookups: list[int] = []

    def schema(self, schema_id: int) -> dict[str, Any] | None:
        self.lookups.append(schema_id)
        return super().schema(schema_id)


def test_ids_the_registry_does_not_know_are_looked_up_once_and_a_few_a_minute(registry_url: str) -> None:
    """Any producer can name any schema id: each lookup blocks the service's loop, so an unknown id is
    looked up once, and no more than 20 new ids a minute (the records are dead-lettered, not lost)."""
    with CountingRegistry(registry_url) as registry:
        codec = Codec(registry=registry)
        unknown = b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x02ab"
        for _ in range(3):
            with pytest.raises(DecodeError, match="has no schema"):
                codec.decode(unknown)
        assert registry.lookups == [2**31 - 7]

        for offset in range(1, 20):
            with pytest.raises(DecodeError, match="has no schema"):
                codec.decode(b"\x00" + (2**31 - 7 - offset).to_bytes(4, "big") + b"\x02ab")
        with pytest.raises(DecodeError, match="at most 20 new schema ids a minute"):
            codec.decode(b"\x00" + (2**31 - 100).to_bytes(4, "big") + b"\x02ab")
        assert len(registry.lookups) == 20


def test_the_engines_subjects_are_named_by_record_and_checked_backward(registry_url: str) -> None:
    with SchemaRegistryClient({"url": registry_url}) as client, SchemaRegistry(registry_url) as registry:
        Codec(registry=registry)
        subjects = set(client.get_subjects())
        assert {"stepstream.RunStarted", "stepstream.StepCompleted", "stepstream.TriggerRequest"} <= subjects
        assert client.get_compatibility("stepstream.RunStarted") == "BACKWARD"


def test_an_incompatible_schema_is_refused_naming_the_subject(registry: SchemaRegistry) -> None:
    # A subject of its own, so the shared registry's real subjects are not touched.
    subject = f"stepstream.test.RunCancelled-{uuid.uuid4().hex[:8]}"
    current = expand("stepstream.RunCancelled", read_directory(default_directory()).current)
    registry.register(subject, current)
    incompatible = {**current, "fields": [*current["fields"], {"name": "operator", "type": "string"}]}

    with pytest.raises(SchemaError, match=f"refuses it .*{subject}|{subject}.*refuses it"):
        registry.register(subject, incompatible)
    assert len(registry.versions(subject)) == 1


# -- a cluster switching format ------------------------------------------------------------------


def test_a_cluster_switches_to_the_confluent_format_mid_run_and_loses_nothing(
    kafka_bootstrap: str, registry_url: str, tmp_path: Path, deserializer: AvroDeserializer
) -> None:
    stack = Stack(kafka_bootstrap, tmp_path, STEPSTREAM_SCHEMA_REGISTRY_URL=registry_url)
    stack.create_topics()
    services = ("projector", "scheduler", "executor", "api")
    try:
        stack.start(*services)
        port = stack.start_app("history", APPS, "history:app")
        base = f"http://127.0.0.1:{port}"
        payload = {"base": base, "event_id": f"approval-{uuid.uuid4().hex[:8]}", "wake_at": time.time() + 4}
        body = {"workflow": "journey", "url": f"{base}/workflows/journey", "payload": payload}
        run_id = stack.api.post("/v1/runs", json=body).json()["run_id"]
        stack.wait_for_status(run_id, "sleeping", timeout=60)
        # The switch: every service restarted with the new setting while the run sleeps.
        for name in services:
            stack.kill(name, 15)
        stack.env["STEPSTREAM_RECORD_FORMAT"] = "confluent"
        stack.start(*services)
        waiters = f"/v1/events/{payload['event_id']}/waiters"
        deadline = time.monotonic() + 60
        while not stack.api.get(waiters).json()["waiters"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert stack.api.post(f"/v1/events/{payload['event_id']}/notify", json={"data": "yes"}).status_code == 202
        run = stack.wait_for_status(run_id, "completed", timeout=90)
        history = stack.history(run_id)
    except BaseException:
        print(stack.logs())
        raise
    finally:
        stack.stop()

    assert run["output"]["approval"] == "yes"
    assert [event["seq"] for event in history] == list(range(1, len(history) + 1))
    # Both framings are in the run's stream, and every record of it reads.
    events = read_topic(kafka_bootstrap, stack.prefix + "events")
    framings = {record.value[:1] for record in events if record.key == run_id.encode()}
    assert framings == {MAGIC[:1], CONFLUENT_MAGIC}
    context = SerializationContext(stack.prefix + "events", MessageField.VALUE)
    with SchemaRegistry(registry_url) as registry:
        codec = Codec(registry=registry)
        for record in events:
            assert codec.decode(record.value).run_id == record.key.decode()  # type: ignore[attr-defined]
            if record.value[:1] == CONFLUENT_MAGIC:
                read = _read(deserializer, record.value, context)
                assert read["run_id"] == record.key.decode()
