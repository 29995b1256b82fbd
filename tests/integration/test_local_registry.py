"""The local schema registry (Apicurio Registry, stepstream.avro.local_registry) as Confluent's own client sees it.

``STEPSTREAM_TEST_REGISTRY`` set to the URL of an existing Confluent-compatible registry runs these tests
against it instead (e.g. ``http://localhost:8081`` for Confluent's, ``…/apis/ccompat/v7`` for Apicurio).
The tests may run in any order and again on the same registry: each registers what it needs, and the
only change a test makes to the subject is its compatibility level, which every test tolerates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

# Confluent's client, not the engine's own codec: the point is that the registry speaks the API real
# Confluent producers and consumers use (the engine's side: test_schema_registry.py).
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

# The first run downloads the registry (~160 MB with Maven) inside the fixture's set-up, which this
# timeout covers too; later starts take seconds.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

TOPIC = "t"
SUBJECT = "t-value"  # Confluent's default subject name strategy: the topic's name and "-value"

FIELDS: list[dict[str, Any]] = [{"name": "text", "type": "string"}, {"name": "count", "type": "long"}]
ORIGINAL: dict[str, Any] = {"type": "record", "name": "Greeting", "namespace": "dev.stepstream.test", "fields": FIELDS}
# A field without a default: new readers cannot read records written before it, so BACKWARD refuses it
# (whether the latest version is ORIGINAL or COMPATIBLE, which lack it both: the tests' order is free).
INCOMPATIBLE = {**ORIGINAL, "fields": [*FIELDS, {"name": "mood", "type": "string"}]}
# A new field with a default: BACKWARD compatible.
COMPATIBLE = {**ORIGINAL, "fields": [*FIELDS, {"name": "language", "type": "string", "default": "en"}]}


def avro(schema: dict[str, Any]) -> Schema:
    return Schema(json.dumps(schema), "AVRO")


@pytest.fixture
def client(registry_url: str) -> Iterator[SchemaRegistryClient]:
    # Closed, or its HTTP connection is reported unclosed when collected (and warnings are errors here).
    with SchemaRegistryClient({"url": registry_url}) as schema_registry:
        yield schema_registry


def test_a_schema_registers_under_its_subject_and_gets_an_id(client: SchemaRegistryClient) -> None:
    schema_id = client.register_schema(SUBJECT, avro(ORIGINAL))

    assert schema_id > 0
    assert SUBJECT in client.get_subjects()
    assert client.register_schema(SUBJECT, avro(ORIGINAL)) == schema_id, "registering again is idempotent"
    assert client.get_schema(schema_id).schema_str is not None
    assert json.loads(client.get_schema(schema_id).schema_str or "") == ORIGINAL
    assert client.lookup_schema(SUBJECT, avro(ORIGINAL)).schema_id == schema_id


def test_a_record_round_trips_through_the_serializer_and_deserializer(client: SchemaRegistryClient) -> None:
    serializer = AvroSerializer(client, json.dumps(ORIGINAL))
    deserializer = AvroDeserializer(client)
    context = SerializationContext(TOPIC, MessageField.VALUE)
    record = {"text": "hello, registry", "count": 2**40}

    data = serializer(record, context)

    assert data is not None
    assert deserializer(data, context) == record


def test_serialized_bytes_start_with_magic_byte_zero_and_the_schema_id(client: SchemaRegistryClient) -> None:
    schema_id = client.register_schema(SUBJECT, avro(ORIGINAL))
    serializer = AvroSerializer(client, json.dumps(ORIGINAL))

    data = serializer({"text": "x", "count": 1}, SerializationContext(TOPIC, MessageField.VALUE))

    assert data is not None
    assert data[0] == 0, "Confluent's wire format starts with magic byte 0"
    assert int.from_bytes(data[1:5], "big") == schema_id, "then the schema's id, 4 bytes big-endian"


def test_an_incompatible_change_is_refused_under_backward_compatibility(client: SchemaRegistryClient) -> None:
    client.register_schema(SUBJECT, avro(ORIGINAL))
    client.set_compatibility(subject_name=SUBJECT, level="BACKWARD")
    assert client.get_compatibility(SUBJECT) == "BACKWARD"
    versions_before = client.get_versions(SUBJECT)

    with pytest.raises(SchemaRegistryError) as refusal:
        client.register_schema(SUBJECT, avro(INCOMPATIBLE))

    assert refusal.value.http_status_code in (409, 422), refusal.value
    assert client.get_versions(SUBJECT) == versions_before


def test_a_compatible_change_is_accepted_under_backward_compatibility(client: SchemaRegistryClient) -> None:
    # The other side of the refusal above: the rule judges the change, it does not refuse every change.
    client.register_schema(SUBJECT, avro(ORIGINAL))
    client.set_compatibility(subject_name=SUBJECT, level="BACKWARD")

    schema_id = client.register_schema(SUBJECT, avro(COMPATIBLE))

    assert client.get_latest_version(SUBJECT).schema_id == schema_id
