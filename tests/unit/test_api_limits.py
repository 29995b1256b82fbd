"""The api's limits, where values are made: every number bounded where it is parsed (by the bounds of
``core.limits`` that the projector applies too), headers as RFC 9110 allows them, payloads no larger
than a Kafka record can hold, and never a 500 for bad input — an unexpected error is a 500 that tells
nothing but where to look."""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from stepstream.api import runs as runs_module
from stepstream.avro import Codec, NotifyRequest, TriggerRequest
from stepstream.core import AllowedHosts, FlowControl, FlowKeyState
from stepstream.core.limits import MAX_DELAY_MS, MAX_EPOCH_MS, MAX_HEADERS
from stepstream.store import QueryStore
from tests.unit.test_api import (
    NOW,
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

# The bounds are what these tests look at: any url host is allowed (tests/unit/test_api.py checks the allow-list).
ANY_HOST = AllowedHosts.parse(["*"])


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
    with api_client(store, published, allowed_url_hosts=ANY_HOST) as client:
        yield client


def cursor_of(json_text: bytes) -> str:
    return base64.urlsafe_b64encode(json_text).decode()


# ---------------------------------------------------------------------------------------------
# The requests of the issue, each a 500 before


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        (
            "POST",
            "/v1/runs",
            {"workflow": "orders", "delay": "1" * 401 + "d"},
            (422, "Expected a duration of at most 64 characters such as '1h30m', but got 402 characters"),
        ),
        (
            "POST",
            "/v1/runs",
            {"workflow": "orders", "flow_control": {"key": "mailer", "rate": 2**70}},
            (422, f"Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got {2**70}"),
        ),
        (
            "POST",
            "/v1/runs",
            {"workflow": "orders", "flow_control": {"key": "mailer", "parallelism": 2**70}},
            (422, f"Expected a flow-control parallelism from 1 to 1,000,000,000, but got {2**70}"),
        ),
        (
            "GET",
            "/v1/runs?created_after=99999999999999999999999",
            None,
            (
                422,
                "Expected created_after as epoch milliseconds from 0 to 253402300799999 (9999-12-31T23:59:59.999Z), "
                "but got 99999999999999999999999",
            ),
        ),
        (
            "GET",
            f"/v1/runs/run_2/history?after_seq={10**23}",
            None,
            (422, "query.after_seq: Input should be less than or equal to 2147483647"),
        ),
        (
            "POST",
            "/v1/runs/cancel",
            {"created_after": 2**70},
            (
                422,
                "Expected created_after as epoch milliseconds from 0 to 253402300799999 (9999-12-31T23:59:59.999Z), "
                f"but got {2**70}",
            ),
        ),
        (
            "POST",
            "/v1/runs/cancel",
            {"created_before": "1" * 24},
            (
                422,
                "Expected created_before as epoch milliseconds from 0 to 253402300799999 (9999-12-31T23:59:59.999Z), "
                f"but got {'1' * 24}",
            ),
        ),
        (
            "GET",
            "/v1/runs?cursor=WzFlOTk5LCAieCJd",  # [1e999, "x"]
            None,
            (400, "Expected a cursor from a previous page, but got 'WzFlOTk5LCAieCJd'"),
        ),
        (
            "GET",
            "/v1/deadletter?cursor=WzFlOTk5LCAieCJd",
            None,
            (400, "Expected a cursor from a previous page, but got 'WzFlOTk5LCAieCJd'"),
        ),
    ],
)
def test_a_value_past_its_bounds_is_a_4xx_that_says_which_bound(
    api: TestClient, published: RecordingPublisher, method: str, path: str, body: Any, expected: tuple[int, str]
) -> None:
    status, error, message = error_of(api.request(method, path, json=body))

    assert (status, message) == expected
    assert error == ("bad_request" if status == 400 else "invalid_request")
    assert published.records == []


# ---------------------------------------------------------------------------------------------
# Numbers and instants at their bounds


@pytest.mark.parametrize(
    ("field", "good", "bad", "message"),
    [
        ("retries", 100, 101, "retries: Input should be less than or equal to 100"),
        ("retry_base_ms", 86_400_000, 86_400_001, "retry_base_ms: Input should be less than or equal to 86400000"),
        ("delay_ms", MAX_DELAY_MS, MAX_DELAY_MS + 1, "delay_ms: Input should be less than or equal to 315360000000"),
        ("delay", "3650d", "3651d", "Expected a delay of at most 3650 days, but got 315446400000 ms"),
        ("delay", "1d" * 32, "1d" * 32 + "1s", "Expected a duration of at most 64 characters such as '1h30m'"),
        ("run_id", "r" * 200, "r" * 201, "run_id: String should have at most 200 characters"),
        ("workflow", "w" * 200, "w" * 201, "workflow: String should have at most 200 characters"),
        ("label", "l" * 200, "l" * 201, "label: String should have at most 200 characters"),
        ("url", "http://app/" + "u" * 1_989, "http://app/" + "u" * 1_990, "url: String should have at most 2000"),
        (
            "failure_url",
            "http://a/" + "u" * 1_991,
            "http://a/" + "u" * 1_992,
            "failure_url: String should have at most",
        ),
    ],
)
def test_a_trigger_field_is_taken_at_its_bound_and_refused_past_it(
    api: TestClient, published: RecordingPublisher, field: str, good: Any, bad: Any, message: str
) -> None:
    body = {"workflow": "orders", "url": "http://app/orders"}
    accepted = api.post("/v1/runs", json={**body, field: good})
    refused = api.post("/v1/runs", json={**body, field: bad})

    assert accepted.status_code == 202, accepted.text
    status, error, text = error_of(refused)
    assert (status, error) == (422, "invalid_request")
    assert text.startswith(message)
    assert len(published.records) == 1


def test_a_long_duration_within_its_bound_is_counted_to_the_millisecond(
    api: TestClient, published: RecordingPublisher
) -> None:
    # 3649.999999999 days: a float sum of the parts would be off by a millisecond.
    response = api.post("/v1/runs", json={"workflow": "orders", "delay": "3649d23h59m59.999s"})

    assert response.json()["not_before_ms"] == NOW + MAX_DELAY_MS - 86_400_000 + 86_399_999


@pytest.mark.parametrize(
    ("created_after", "status"),
    [
        (str(MAX_EPOCH_MS), 200),
        ("9999-12-31T23:59:59.999Z", 200),
        ("0", 200),
        ("1970-01-01T00:00:00Z", 200),
        (str(MAX_EPOCH_MS + 1), 422),
        ("9999-12-31T23:59:59.999-01:00", 422),  # after the last instant, in UTC
        ("1969-12-31T23:59:59.999Z", 422),
        ("0001-01-01T00:00:00+01:00", 422),
        ("\u0661\u0662\u0663", 422),  # Arabic-Indic digits: str.isdigit() says yes, and int() reads them
        ("\u00b2", 422),  # '²': isdigit() says yes, and int() raises
        ("9" * 5_000, 422),  # int() of it is refused by Python itself
    ],
)
def test_an_instant_is_taken_from_1970_to_the_end_of_9999(api: TestClient, created_after: str, status: int) -> None:
    response = api.get("/v1/runs", params={"created_after": created_after})

    assert response.status_code == status, response.text
    if status == 422:
        assert error_of(response)[2].startswith("Expected created_after as epoch milliseconds")


def test_a_not_before_past_the_end_of_9999_is_refused_before_any_arithmetic(api: TestClient) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "not_before": 2**70})

    assert error_of(response)[:2] == (422, "invalid_request")
    assert error_of(response)[2].startswith("Expected not_before as epoch milliseconds from 0 to 253402300799999")


@pytest.mark.parametrize(
    ("path", "field", "value", "message"),
    [
        ("/v1/runs/cancel", "workflow", "w" * 201, "workflow: String should have at most 200 characters"),
        ("/v1/runs/cancel", "label", "l" * 201, "label: String should have at most 200 characters"),
        ("/v1/runs/cancel", "reason", "r" * 1_001, "reason: String should have at most 1000 characters"),
        ("/v1/runs/run_2/cancel", "reason", "r" * 1_001, "reason: String should have at most 1000 characters"),
    ],
)
def test_a_cancel_field_past_its_bound_is_refused(
    api: TestClient, published: RecordingPublisher, path: str, field: str, value: str, message: str
) -> None:
    assert error_of(api.post(path, json={field: value})) == (422, "invalid_request", message)
    assert published.records == []


@pytest.mark.parametrize(
    "cursor",
    [
        cursor_of(b'[NaN, "run_1"]'),
        cursor_of(b'[-1, "run_1"]'),
        cursor_of(b'[253402300800000, "run_1"]'),
        cursor_of(b'[true, "run_1"]'),
        cursor_of(b'[1.5, "run_1"]'),
        cursor_of(b"[1, 2]"),
        cursor_of(b'[1, "run_1", 3]'),
        cursor_of(b'{"created_at_ms": 1}'),
        cursor_of(b"[" * 5_000 + b"]" * 5_000),
        cursor_of(b"\xff\xfe"),
        "!!!!",
        "x" * 5_000,
    ],
)
def test_a_cursor_of_the_wrong_shape_is_a_400(api: TestClient, cursor: str) -> None:
    status, error, message = error_of(api.get("/v1/runs", params={"cursor": cursor}))

    assert (status, error) == (400, "bad_request")
    assert message.startswith("Expected a cursor from a previous page, but got ")
    assert len(message) < 200  # the cursor quoted, cut short


@pytest.mark.parametrize("cursor", [cursor_of(b"[1]"), cursor_of(b'["mailer", 2]'), cursor_of(b"[" * 5_000)])
def test_a_flow_cursor_of_the_wrong_shape_is_a_400(api: TestClient, cursor: str) -> None:
    assert error_of(api.get("/v1/flow-control", params={"cursor": cursor}))[:2] == (400, "bad_request")


def test_a_cursor_from_a_page_still_leads_to_the_next(api: TestClient) -> None:
    first = api.get("/v1/runs", params={"limit": 2}).json()
    second = api.get("/v1/runs", params={"limit": 2, "cursor": first["next_cursor"]}).json()

    assert [run["run_id"] for run in first["runs"] + second["runs"]] == ["run_3", "run_2", "run_1"]


# ---------------------------------------------------------------------------------------------
# Headers (RFC 9110)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"X-Note": "one\r\nX-Injected: two"},
            "Expected header 'X-Note' to hold visible characters, spaces and tabs only (RFC 9110), but it holds '\\r'",
        ),
        (
            {"X-Note": "one\ntwo"},
            "Expected header 'X-Note' to hold visible characters, spaces and tabs only (RFC 9110), but it holds '\\n'",
        ),
        (
            {"X-Note": "nul\x00"},
            "Expected header 'X-Note' to hold visible characters, spaces and tabs only (RFC 9110), "
            "but it holds '\\x00'",
        ),
        (
            {"X Note": "one"},
            "Expected a header name made of letters, digits and !#$%&'*+-.^_`|~ (RFC 9110), but got 'X Note'",
        ),
        ({"": "one"}, "Expected a header name of 1 to 256 characters, but got 0"),
        ({"X-Note": "v" * 8_193}, "Expected header 'X-Note' to have at most 8192 characters, but got 8193"),
        ({f"X-{number}": "v" for number in range(MAX_HEADERS + 1)}, "Expected at most 64 headers, but got 65"),
    ],
)
def test_a_header_that_cannot_be_sent_is_refused(
    api: TestClient, published: RecordingPublisher, headers: dict[str, str], message: str
) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "headers": headers})

    assert error_of(response) == (422, "invalid_request", message)
    assert published.records == []


def test_headers_as_rfc_9110_allows_them_are_carried(api: TestClient, published: RecordingPublisher) -> None:
    headers = {f"X-{number}": "v" for number in range(MAX_HEADERS - 2)}
    headers |= {"X-Signature": "Bearer a\tb c", "X-Latin-1": "caf\u00e9"}  # a tab, a space, obs-text

    response = api.post("/v1/runs", json={"workflow": "orders", "headers": headers})

    assert response.status_code == 202, response.text
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert dict(record.headers) == headers


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

    with api_client(store, published, allowed_url_hosts=ANY_HOST, max_payload_bytes=limit) as api:
        response = api.post("/v1/runs", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 202, response.text[:300]
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert len(record.payload.encode()) == limit


def test_a_trigger_whose_other_fields_outgrow_a_kafka_record_is_a_413(
    store: QueryStore, published: RecordingPublisher
) -> None:
    headers = {f"X-{number}": "v" * 8_000 for number in range(MAX_HEADERS)}  # each header within its own bounds

    with api_client(store, published, allowed_url_hosts=ANY_HOST, max_payload_bytes=262_144) as api:
        response = api.post("/v1/runs", json={"workflow": "orders", "headers": headers})

    status, error, message = error_of(response)
    assert (status, error) == (413, "payload_too_large")
    assert message.startswith("Expected the fields of a trigger other than payload to take at most 65536 bytes as JSON")
    assert message.endswith(f"(headers: {sum(len(name) + len(value) for name, value in headers.items())} characters)")
    assert published.records == []


@pytest.mark.parametrize(
    "record",
    [
        TriggerRequest(workflow="orders", url="http://app.local/w", payload="{}"),
        TriggerRequest(
            workflow="commandes-é",
            url="http://app.local/w",
            payload='{"big":"' + "x" * 1_000 + '"}',
            run_id="order-42",
            headers=(("X-Note", "café"), ("authorization", "Bearer x")),
            label="nightly",
            retries=2,
            retry_base_ms=500,
            not_before_ms=1,
            requested_at_ms=2,
            retry_delay="1000 * pow(2, retried)",
            failure_url="http://app.local/failed",
            flow=FlowControl(key="mailer", rate=10, period_ms=60_000, parallelism=3),
        ),
    ],
)
def test_a_triggers_envelope_is_measured_as_the_json_of_its_fields_but_the_payload(record: TriggerRequest) -> None:
    fields = {name: value for name, value in dataclasses.asdict(record).items() if name != "payload"}

    assert runs_module._envelope_bytes(record) == len(json.dumps(fields, ensure_ascii=False).encode())


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


# ---------------------------------------------------------------------------------------------
# The last line of defence


def test_an_unexpected_error_is_a_500_that_tells_only_where_to_look(
    store: QueryStore, published: RecordingPublisher, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(**_: Any) -> Any:
        raise RuntimeError("disk I/O error in /var/lib/stepstream/secret.db")

    monkeypatch.setattr(store, "list_runs", broken)
    with (
        api_client(store, published, allowed_url_hosts=ANY_HOST) as api,
        caplog.at_level(logging.ERROR, logger="stepstream.api.app"),
    ):
        response = api.get("/v1/runs")

    assert response.status_code == 500
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "internal_error"
    assert body["message"].startswith("Expected to answer, but the api failed unexpectedly (error ")
    assert body["message"].endswith("): see the api's log")
    assert "secret" not in response.text
    assert "Traceback" not in response.text
    (logged,) = caplog.records
    reference = body["message"].split("(error ")[1].split(")")[0]
    assert logged.getMessage() == f"Unexpected error {reference} answering GET /v1/runs"
    assert logged.exc_info is not None
    assert "secret.db" in str(logged.exc_info[1])


def test_an_error_the_api_expects_keeps_its_own_status(api: TestClient) -> None:
    assert error_of(api.get("/v1/runs/nobody"))[:2] == (404, "unknown_run")
    assert error_of(api.get("/v1/nowhere"))[:2] == (404, "not_found")
    assert error_of(api.post("/v1/runs", content="{", headers={"content-type": "application/json"}))[0] == 400


# ---------------------------------------------------------------------------------------------
# Hostile values at every field and every parameter: never a 5xx

# JSON text, put where a field's value goes.
HOSTILE_JSON = {
    "10^25": "1" + "0" * 25,
    "2^63": str(2**63),
    "2^64": str(2**64),
    "4000 digits": "9" * 4_000,
    "5000 digits": "9" * 5_000,
    "-1": "-1",
    "-2^70": str(-(2**70)),
    "NaN": "NaN",
    "Infinity": "Infinity",
    "-Infinity": "-Infinity",
    "10^400": "1e400",
    "10^-400": "1e-400",
    "1.5": "1.5",
    "0": "0",
    "true": "true",
    "false": "false",
    "null": "null",
    "{}": "{}",
    "[]": "[]",
    "object": '{"a": [1, {"b": null}], "c": "d"}',
    "nested 100": "[" * 100 + "]" * 100,
    "nested 5000": "[" * 5_000 + "]" * 5_000,
    "nested objects": '{"a":' * 3_000 + "1" + "}" * 3_000,
    "empty string": '""',
    "blank": '"   "',
    "NUL": '"\\u0000"',
    "CR LF": '"a\\r\\nX-Injected: 1"',
    "lone surrogate": '"\\ud800"',
    "unicode escaped": json.dumps("\u00e9\u6f22\U0001f642\u202e"),
    "unicode raw": json.dumps("\u00e9\u6f22\U0001f642\u202e", ensure_ascii=False),
    "10,000 characters": json.dumps("x" * 10_000),
    "70,000 characters": json.dumps("x" * 70_000),
    "digits": '"' + "9" * 30 + '"',
    "huge duration": json.dumps("1" * 401 + "d"),
    "long duration": json.dumps("9" * 60 + "d"),
    "many durations": json.dumps("1d" * 5_000),
    "last instant": '"9999-12-31T23:59:59.999-23:59"',
    "first instant": '"0001-01-01T00:00:00Z"',
    "other digits": '"\u0661\u0662\u0663"',
    "superscript": '"\u00b2"',
    "url": '"javascript:alert(1)"',
    "bare url": '"http://"',
    "delay rule": '"9**9**9**9"',
}

# A body that is valid without the field; the field's value is put in at HOSTILE.
HOSTILE = "__hostile__"
TRIGGER = {"workflow": "orders", "run_id": "fresh"}
FIELDS = [
    *(("/v1/runs", {**TRIGGER, field: HOSTILE}) for field in ("workflow", "url", "payload", "run_id", "label")),
    *(("/v1/runs", {**TRIGGER, field: HOSTILE}) for field in ("retries", "retry_base_ms", "retry_delay")),
    *(("/v1/runs", {**TRIGGER, field: HOSTILE}) for field in ("failure_url", "delay_ms", "delay", "not_before")),
    *(("/v1/runs", {**TRIGGER, field: HOSTILE}) for field in ("headers", "flow_control", "unknown")),
    ("/v1/runs", {**TRIGGER, "headers": {"X-Note": HOSTILE}}),
    *(
        ("/v1/runs", {**TRIGGER, "flow_control": {"key": "mailer", field: HOSTILE}})
        for field in ("rate", "period", "period_ms", "parallelism")
    ),
    ("/v1/runs", {**TRIGGER, "flow_control": {"key": HOSTILE}}),
    *(
        ("/v1/runs/cancel", {"label": "nothing", field: HOSTILE})
        for field in ("workflow", "created_after", "created_before", "all", "reason")
    ),
    ("/v1/runs/cancel", {"workflow": "nothing", "label": HOSTILE}),
    ("/v1/runs/run_2/cancel", {"reason": HOSTILE}),
    ("/v1/events/order-42/notify", {"data": HOSTILE}),
    *((path, HOSTILE) for path in ("/v1/runs", "/v1/runs/cancel", "/v1/runs/run_2/cancel", "/v1/events/e/notify")),
]


def assert_answered(response: Any, case: str, failures: list[str]) -> None:
    """A 2xx, or a 4xx with an error code and a short message; anything else joins ``failures``."""
    try:
        body = response.json()
    except ValueError:
        failures.append(f"{case}: {response.status_code}, not JSON: {response.text[:200]}")
        return
    if response.status_code >= 500:
        failures.append(f"{case}: {response.status_code} {response.text[:300]}")
    elif response.status_code >= 400 and not (
        isinstance(body, dict)
        and isinstance(body.get("error"), str)
        and isinstance(body.get("message"), str)
        and 0 < len(body["message"]) < 2_000  # a refusal quotes a value cut short, never a whole body
    ):
        failures.append(f"{case}: {response.status_code} without a short error and message: {response.text[:300]}")


@pytest.mark.parametrize(("path", "body"), FIELDS, ids=[f"{path} {json.dumps(body)}" for path, body in FIELDS])
def test_a_hostile_value_in_any_body_field_is_never_a_5xx(api: TestClient, path: str, body: Any) -> None:
    template = json.dumps(body)
    failures: list[str] = []
    for name, token in HOSTILE_JSON.items():
        content = template.replace(json.dumps(HOSTILE), token)
        response = api.post(path, content=content.encode(), headers={"content-type": "application/json"})
        assert_answered(response, name, failures)

    assert failures == []


def test_a_hostile_header_name_is_never_a_5xx(api: TestClient) -> None:
    failures: list[str] = []
    for name, token in HOSTILE_JSON.items():
        if token.startswith('"'):  # an object's keys are strings
            content = '{"workflow": "orders", "headers": {' + token + ': "v"}}'
            response = api.post("/v1/runs", content=content.encode(), headers={"content-type": "application/json"})
            assert_answered(response, name, failures)

    assert failures == []


# Text, put where a query parameter's or a path segment's value goes.
HOSTILE_TEXT = {
    "10^23": "99999999999999999999999",
    "2^63": str(2**63),
    "-1": "-1",
    "1e999": "1e999",
    "NaN": "NaN",
    "Infinity": "Infinity",
    "empty": "",
    "blank": "   ",
    "NUL": "\x00",
    "CR LF": "a\r\nb",
    "unicode": "\u00e9\u6f22\U0001f642\u202e",
    "other digits": "\u0661\u0662\u0663",
    "superscript": "\u00b2",
    "10,000 characters": "x" * 10_000,
    "leading zeros": "0" * 5_000 + "1",
    "5000 digits": "9" * 5_000,
    "true": "true",
    "array": "[1]",
    "last instant": "9999-12-31T23:59:59.999-23:59",
    "first instant": "0001-01-01T00:00:00Z",
    "no zone": "2026-01-31T09:00:00",
    "percent": "%",
    "dots": "../..",
    "cursor [1e999]": cursor_of(b'[1e999, "x"]'),
    "cursor [NaN]": cursor_of(b'[NaN, "x"]'),
    "cursor 10^23": cursor_of(b'[99999999999999999999999, "x"]'),
    "cursor nested": cursor_of(b"[" * 5_000 + b"]" * 5_000),
    "cursor [1]": cursor_of(b"[1]"),
    "cursor not UTF-8": cursor_of(b"\xff\xfe"),
    "not base64": "====",
}

PARAMETERS = [
    *(
        ("/v1/runs", parameter)
        for parameter in ("status", "workflow", "label", "created_after", "created_before", "dead_letter")
    ),
    *(("/v1/runs", parameter) for parameter in ("parent_run_id", "limit", "cursor")),
    *(
        ("/v1/deadletter", parameter)
        for parameter in ("workflow", "label", "created_after", "created_before", "limit", "cursor")
    ),
    ("/v1/runs/run_2/history", "after_seq"),
    ("/v1/flow-control", "limit"),
    ("/v1/flow-control", "cursor"),
]


@pytest.mark.parametrize(("path", "parameter"), PARAMETERS, ids=[f"{path}?{name}" for path, name in PARAMETERS])
def test_a_hostile_value_in_any_query_parameter_is_never_a_5xx(api: TestClient, path: str, parameter: str) -> None:
    failures: list[str] = []
    for name, value in HOSTILE_TEXT.items():
        assert_answered(api.get(path, params={parameter: value}), name, failures)

    assert failures == []


ROUTES = [
    ("GET", "/v1/runs/{}"),
    ("GET", "/v1/runs/{}/steps"),
    ("GET", "/v1/runs/{}/history"),
    ("POST", "/v1/runs/{}/cancel"),
    ("POST", "/v1/events/{}/notify"),
    ("GET", "/v1/events/{}/waiters"),
    ("POST", "/v1/deadletter/{}/resume"),
    ("POST", "/v1/deadletter/{}/restart"),
    ("DELETE", "/v1/deadletter/{}"),
    ("GET", "/v1/flow-control/{}"),
]


@pytest.mark.parametrize(("method", "route"), ROUTES, ids=[f"{method} {route}" for method, route in ROUTES])
def test_a_hostile_value_in_any_path_is_never_a_5xx(api: TestClient, method: str, route: str) -> None:
    failures: list[str] = []
    for name, value in HOSTILE_TEXT.items():
        if value:  # an empty segment is another route
            assert_answered(api.request(method, route.format(quote(value, safe=""))), name, failures)

    assert failures == []
