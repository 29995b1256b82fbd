"""The api's payload limit: a payload (or a notification's data) no larger than a Kafka record can hold,
measured as the JSON text the engine records, and a request body read no further than it needs."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest

from stepstream.avro import Codec, NotifyRequest, TriggerRequest
from stepstream.core import FlowKeyState
from stepstream.core.limits import MAX_HEADERS
from stepstream.store import QueryStore
from tests.unit.test_api import (
    T0,
    FakePublisher,
    TestClient,
    add,
    api_client,
    completed,
    error_of,
    failed,
    sleeping,
)

LIMIT = 2_000  # the payload limit these tests give the api (api_client's max_payload_bytes)


class RecordingPublisher(FakePublisher):
    """Records what the api would publish after encoding it as the real publisher does, and reading its
    JSON text back strictly: a value the api accepts but Kafka or the engine cannot take fails here."""

    codec = Codec()

    async def publish(self, *records: Any) -> None:
        for record in records:
            self.codec.encode(record)
            if isinstance(record, TriggerRequest | NotifyRequest):
                text = record.payload if isinstance(record, TriggerRequest) else record.data
                json.loads(text, parse_constant=_refuse_constant)
        await super().publish(*records)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"Expected JSON the engine records to hold numbers only, but it holds {name}")


@pytest.fixture
def store() -> Iterator[QueryStore]:
    store = QueryStore(":memory:")
    add(
        store,
        completed("run_1", now=T0),
        sleeping("run_2", now=T0 + 1_000, label="night"),
        failed("run_3", now=T0 + 2_000),
    )
    mailer = FlowKeyState(
        key="mailer",
        queued=1,
        in_flight=0,
        starts_in_window=0,
        rate=10,
        period_ms=60_000,
        parallelism=None,
        updated_ms=T0,
    )
    store.apply_flow([("mailer", mailer)])
    yield store
    store.close()


@pytest.fixture
def published() -> RecordingPublisher:
    return RecordingPublisher()


@pytest.fixture
def api(store: QueryStore, published: RecordingPublisher) -> Iterator[TestClient]:
    with api_client(store, published) as client:
        yield client


def cursor_of(json_text: bytes) -> str:
    return base64.urlsafe_b64encode(json_text).decode()


# ---------------------------------------------------------------------------------------------
# Payloads: the JSON text the engine records, within what a Kafka record holds


def string_of_json_size(size: int, character: str = "x") -> str:
    """A string whose compact JSON text is ``size`` bytes of UTF-8 (``character`` must divide it)."""
    count, rest = divmod(size - 2, len(character.encode()))  # the two quotes
    assert rest == 0
    return character * count


@pytest.mark.parametrize("character", ["x", "\u00e9", "\u20ac", "\U0001f642"], ids=["ascii", "2 bytes", "3 bytes", "4"])
def test_a_payload_of_exactly_the_limit_is_taken_and_one_byte_more_is_a_413(
    api: TestClient, published: RecordingPublisher, character: str
) -> None:
    width = len(character.encode())
    at_limit = string_of_json_size(LIMIT - (LIMIT - 2) % width, character)
    past_limit = at_limit + "x" * (LIMIT - len(json.dumps(at_limit, ensure_ascii=False).encode()) + 1)

    accepted = api.post("/v1/runs", json={"workflow": "orders", "payload": at_limit})
    refused = api.post("/v1/runs", json={"workflow": "orders", "payload": past_limit})

    assert accepted.status_code == 202, accepted.text
    assert error_of(refused) == (
        413,
        "payload_too_large",
        f"Expected payload of at most {LIMIT} bytes as JSON (STEPSTREAM_MAX_PAYLOAD_BYTES), but it has {LIMIT + 1}",
    )
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.payload == json.dumps(at_limit, ensure_ascii=False)  # recorded as text, not \\u escapes


def test_a_payload_is_measured_as_recorded_not_as_sent(api: TestClient, published: RecordingPublisher) -> None:
    # Sent with every character escaped (6 bytes each, 5,996 in all), recorded as UTF-8 (2 bytes each).
    body = '{"workflow": "orders", "payload": "' + "\\u00e9" * 999 + '"}'

    response = api.post("/v1/runs", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert len(record.payload.encode()) == LIMIT


def test_a_notification_of_exactly_the_limit_is_taken_and_one_byte_more_is_a_413(
    api: TestClient, published: RecordingPublisher
) -> None:
    accepted = api.post("/v1/events/order-42/notify", json={"data": string_of_json_size(LIMIT, "\u00e9")})
    refused = api.post("/v1/events/order-42/notify", json={"data": string_of_json_size(LIMIT + 1)})

    assert accepted.status_code == 202, accepted.text
    assert error_of(refused) == (
        413,
        "payload_too_large",
        f"Expected data of at most {LIMIT} bytes as JSON (STEPSTREAM_MAX_PAYLOAD_BYTES), but it has {LIMIT + 1}",
    )
    assert len(published.records) == 1


def test_a_body_longer_than_an_escaped_payload_and_its_envelope_is_a_413_before_it_is_read(api: TestClient) -> None:
    body = json.dumps({"workflow": "orders", "label": "x" * 80_000})

    assert error_of(api.post("/v1/runs", content=body, headers={"content-type": "application/json"})) == (
        413,
        "payload_too_large",
        "Expected a request body of at most 71536 bytes (3 times STEPSTREAM_MAX_PAYLOAD_BYTES for a payload's "
        f"escaped characters, and 65536 for the other fields), but its content-length is {len(body)}",
    )


def test_a_payload_at_its_limit_is_taken_when_every_character_is_sent_escaped(
    store: QueryStore, published: RecordingPublisher
) -> None:
    limit = 131_072  # large enough that the envelope alone would not make room for the escapes
    emoji, rest = divmod(limit - 2, 4)
    payload = "\U0001f642" * emoji + "x" * rest  # as JSON text, exactly the limit
    body = json.dumps({"workflow": "orders", "payload": payload})  # ASCII: 12 bytes for each 4 recorded
    assert len(body) > limit + 65_536

    with api_client(store, published, max_payload_bytes=limit) as api:
        response = api.post("/v1/runs", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text[:300]
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert len(record.payload.encode()) == limit


def test_a_trigger_whose_other_fields_outgrow_a_kafka_record_is_a_413(
    store: QueryStore, published: RecordingPublisher
) -> None:
    headers = {f"X-{number}": "v" * 8_000 for number in range(MAX_HEADERS)}  # each header within its own bounds

    with api_client(store, published, max_payload_bytes=262_144) as api:
        response = api.post("/v1/runs", json={"workflow": "orders", "headers": headers})

    status, error, message = error_of(response)
    assert (status, error) == (413, "payload_too_large")
    assert message.startswith("Expected the fields of a trigger other than payload to take at most 65536 bytes as JSON")
    assert message.endswith(f"(headers: {sum(len(name) + len(value) for name, value in headers.items())} characters)")
    assert published.records == []


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e400", '[1, {"a": -1e999}]'])
@pytest.mark.parametrize(("path", "field"), [("/v1/runs", "payload"), ("/v1/events/order-42/notify", "data")])
def test_a_value_json_cannot_hold_is_refused(
    api: TestClient, published: RecordingPublisher, path: str, field: str, token: str
) -> None:
    body = '{"workflow": "orders", "payload": ' + token + "}" if field == "payload" else '{"data": ' + token + "}"

    response = api.post(path, content=body, headers={"content-type": "application/json"})

    assert error_of(response) == (
        422,
        "invalid_request",
        f"Expected {field} to be JSON, but it holds NaN, Infinity or a number too large for JSON (such as 1e400)",
    )
    assert published.records == []
