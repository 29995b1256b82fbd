"""The api over HTTP (httpx's ASGI transport, the app's lifespan run around it), given a query store
the indexer's code path filled and a publisher that records what would go to ``triggers``: validation,
queries, cancel and the dead-letter list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from stepstream.api import control as control_module
from stepstream.api.app import create_app
from stepstream.api.changes import RunChanges
from stepstream.api.indexer import index
from stepstream.api.publisher import TriggersRecord, triggers_key
from stepstream.avro import CancelRequest, NotifyRequest, RecoverRequest, TriggerRequest
from stepstream.clock import ManualClock
from stepstream.config import ApiSettings, KafkaSettings
from stepstream.core import AllowedHosts, Complete, PlanSleep, PlanWait, Recovery, StepKind, check_delay_rule
from stepstream.sealing import Sealer, new_key, parse_keys
from stepstream.store import QueryStore
from tests.unit.test_query_store import Run

T0 = 1_700_000_000_000
NOW = T0 + 3_600_000  # the api's clock: an hour after the runs below started
CALLER = "client 127.0.0.1"  # the test client's address, kept as who asked
ORDERS_URL = "http://app.local/workflows/orders"


class FakePublisher:
    """Records what the api would publish, instead of encoding it for Kafka."""

    def __init__(self) -> None:
        self.records: list[TriggersRecord] = []

    async def publish(self, *records: TriggersRecord) -> None:
        self.records.extend(records)


class TestClient:
    """A synchronous client of the app, in-process: one event loop, the lifespan entered once.

    (Starlette's own TestClient now warns about httpx, and warnings are errors in this suite.)
    """

    __test__ = False  # not a test class, despite its name

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        self.lifespan = app.router.lifespan_context(app)

    def __enter__(self) -> TestClient:
        self.loop.run_until_complete(self.lifespan.__aenter__())
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.loop.run_until_complete(self.lifespan.__aexit__(kind, error, traceback))
        self.loop.run_until_complete(self.client.aclose())
        self.loop.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        return self.loop.run_until_complete(self.client.request(method, path, **options))

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


def api_client(
    store: QueryStore, published: FakePublisher, *, changes: RunChanges | None = None, **settings: Any
) -> TestClient:
    values: dict[str, Any] = {
        "kafka": KafkaSettings(),
        "workflows": {"orders": ORDERS_URL},
        "max_payload_bytes": 2_000,
        "notify_buffer_ms": 60_000,
    }
    app = create_app(
        ApiSettings(**{**values, **settings}), store=store, publisher=published, clock=ManualClock(NOW), changes=changes
    )
    return TestClient(app)


def add(store: QueryStore, *runs: Run) -> None:
    """Index the runs' events the way the indexer does."""
    index(store, [event for run in runs for event in run.events])


def waiting_run(run_id: str, event_id: str = "order-42", *, now: int = T0) -> Run:
    run = Run(run_id, now=now, label=None)
    run.suspend(PlanWait(index=0, name="approval", event_id=event_id, timeout_ms=86_400_000), now=now + 1)
    return run


def completed(run_id: str, *, now: int = T0, workflow: str = "orders", label: str | None = None) -> Run:
    run = Run(run_id, now=now, workflow=workflow, label=label)
    run.report(Complete(output='"done"'), now=now + 1)
    return run


def failed(run_id: str, *, now: int = T0, workflow: str = "orders") -> Run:
    run = Run(run_id, now=now, workflow=workflow, label=None)
    run.fail(now=now + 1)
    return run


def sleeping(run_id: str, *, now: int = T0, workflow: str = "orders", label: str | None = None) -> Run:
    run = Run(run_id, now=now, workflow=workflow, label=label)
    run.suspend(PlanSleep(index=0, name="nap", kind=StepKind.SLEEP, duration_ms=86_400_000), now=now + 1)
    return run


def error_of(response: Any) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["error"], body["message"]


# ---------------------------------------------------------------------------------------------
# POST /v1/runs


def test_a_trigger_publishes_the_run_with_every_option(api: TestClient, published: FakePublisher) -> None:
    response = api.post(
        "/v1/runs",
        json={
            "workflow": "orders",
            "payload": {"order": 42},
            "run_id": "order-42",
            "label": "nightly",
            "retries": 2,
            "retry_delay": "1000 * pow(2, retried)",
            "failure_url": "http://app.local/failures",
            "headers": {"x-tenant": "acme"},
        },
    )

    assert response.status_code == 202, response.text
    assert response.json() == {"run_id": "order-42", "duplicate": False, "not_before_ms": None}
    assert published.records == [
        TriggerRequest(
            workflow="orders",
            url=ORDERS_URL,
            payload='{"order":42}',
            run_id="order-42",
            headers=(("x-tenant", "acme"),),
            label="nightly",
            retries=2,
            not_before_ms=None,
            requested_at_ms=NOW,
            retry_delay="1000 * pow(2, retried)",
            failure_url="http://app.local/failures",
        )
    ]
    assert triggers_key(published.records[0]) == "order-42"


def test_a_triggers_credential_headers_are_sealed_before_they_are_published(
    store: QueryStore, published: FakePublisher
) -> None:
    sealer = Sealer(parse_keys(new_key()))
    headers = {"Authorization": "Bearer s3cret", "X-Api-Key": "k3y", "X-Tenant": "acme"}
    with api_client(store, published, sealer=sealer) as client:
        response = client.post("/v1/runs", json={"workflow": "orders", "payload": {}, "headers": headers})

    assert response.status_code == 202, response.text
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    sealed = dict(record.headers)
    assert sealed["X-Tenant"] == "acme"
    assert sealed["Authorization"].startswith("sealed:v1:")
    assert "s3cret" not in sealed["Authorization"]
    assert sealed["X-Api-Key"].startswith("sealed:v1:")
    assert dict(sealer.open(record.headers)) == headers


def test_a_header_in_the_engines_sealed_form_is_refused(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "headers": {"X-Token": "sealed:v1:abcd:efgh"}})

    assert error_of(response) == (
        422,
        "invalid_request",
        "Expected header 'X-Token' not to start with 'sealed:v1:', the engine's sealed form",
    )
    assert published.records == []


def test_a_credential_header_without_a_key_to_seal_it_is_refused(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "payload": {}, "headers": {"Cookie": "id=1"}})

    assert error_of(response) == (
        422,
        "invalid_request",
        "Expected STEPSTREAM_HEADER_KEYS to be set, so that the value of header 'Cookie' is sealed before it "
        "reaches Kafka (docs/security.md), but it is not: the engine keeps no credential in plaintext",
    )
    assert published.records == []


def test_a_trigger_without_a_run_id_gets_a_new_one(api: TestClient, published: FakePublisher) -> None:
    first = api.post("/v1/runs", json={"workflow": "orders"}).json()["run_id"]
    second = api.post("/v1/runs", json={"workflow": "orders"}).json()["run_id"]

    assert first.startswith("run_")
    assert second.startswith("run_")
    assert first != second
    assert [record.run_id for record in published.records if isinstance(record, TriggerRequest)] == [first, second]


@pytest.mark.parametrize(
    ("when", "not_before_ms"),
    [
        ({"delay": "10s"}, NOW + 10_000),
        ({"delay": "5m"}, NOW + 300_000),
        ({"delay": "1h30m"}, NOW + 5_400_000),
        ({"delay": "1d"}, NOW + 86_400_000),
        ({"delay": "1.5s"}, NOW + 1_500),
        ({"delay": "250ms"}, NOW + 250),
        ({"delay": "0s"}, None),
        ({"delay_ms": 2_500}, NOW + 2_500),
        ({"not_before": NOW + 60_000}, NOW + 60_000),
        ({"not_before": "2023-11-14T23:23:20Z"}, NOW + 600_000),
        ({"not_before": "2023-11-15T00:23:20+01:00"}, NOW + 600_000),
        ({"not_before": "2023-11-14T23:13:20Z"}, None),  # now: no later than now, so start now
        ({"not_before": "2023-11-15T00:13:20.5Z"}, NOW + 3_600_500),
        ({"not_before": T0}, None),  # in the past: start now
    ],
)
def test_a_trigger_may_be_delayed_by_a_duration_or_until_a_time(
    api: TestClient, published: FakePublisher, when: dict[str, Any], not_before_ms: int | None
) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", **when})

    assert response.status_code == 202, response.text
    assert response.json()["not_before_ms"] == not_before_ms
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.not_before_ms == not_before_ms


@pytest.mark.parametrize("delay", ["soon", "10", "", "5 m", "m5", "-5s", "10sec", "1h30", 10, True, ["10s"]])
def test_an_invalid_duration_is_refused_with_an_example_of_a_valid_one(
    api: TestClient, published: FakePublisher, delay: Any
) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "delay": delay})

    status, error, message = error_of(response)
    assert (status, error) == (422, "invalid_request")
    assert message.startswith("Expected a duration such as '10s', '5m' or '2h', but got ")
    assert repr(delay) in message
    assert published.records == []


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"not_before": "2026-01-31T09:00:00"}, "Expected not_before with a time zone"),
        ({"not_before": "tomorrow"}, "Expected not_before as epoch milliseconds or an ISO-8601 time"),
        ({"not_before": -1}, "Expected not_before as epoch milliseconds from 0 to 253402300799999"),
        ({"delay": "10s", "delay_ms": 10}, "Expected at most one of delay_ms, delay and not_before, but got delay_ms"),
        ({"delay": "99999d"}, "Expected a delay of at most 3650 days"),
        ({"not_before": "9999-01-01T00:00:00Z"}, "Expected a delay of at most 3650 days"),
    ],
)
def test_an_invalid_start_time_is_refused(
    api: TestClient, published: FakePublisher, when: dict[str, Any], expected: str
) -> None:
    status, error, message = error_of(api.post("/v1/runs", json={"workflow": "orders", **when}))

    assert (status, error) == (422, "invalid_request")
    assert message.startswith(expected), message
    assert published.records == []


@pytest.mark.parametrize("rule", ["import os", "1000 * pow(2, retried", "retried / 0", "retried * " * 40 + "1"])
def test_an_invalid_retry_delay_rule_is_refused_with_the_rules_own_message(
    api: TestClient, published: FakePublisher, rule: str
) -> None:
    with pytest.raises(ValueError, match="Expected") as raised:
        check_delay_rule(rule)

    status, error, message = error_of(api.post("/v1/runs", json={"workflow": "orders", "retry_delay": rule}))

    assert (status, error) == (422, "invalid_request")
    assert message == f"retry_delay: {raised.value}"
    assert published.records == []


def test_a_failure_url_must_be_http(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "failure_url": "ftp://files/failed"})

    assert error_of(response) == (
        422,
        "invalid_request",
        "Expected failure_url to be an http(s) url, but got 'ftp://files/failed'",
    )
    assert published.records == []


@pytest.mark.parametrize(
    ("field", "url", "shown"),
    [
        ("url", "https://listener.attacker.net/capture", "listener.attacker.net:443"),
        ("failure_url", "http://app.local.attacker.net/failures", "app.local.attacker.net:80"),
        ("url", "http://user@app.local/workflows/orders", None),
    ],
)
def test_a_url_on_a_host_that_is_not_allowed_is_a_422_naming_the_host_and_the_variable(
    api: TestClient, published: FakePublisher, field: str, url: str, shown: str | None
) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", field: url})

    status, error, message = error_of(response)
    assert (status, error) == (422, "url_not_allowed")
    assert message.startswith(f"Expected {field} ")
    if shown is not None:
        assert "STEPSTREAM_ALLOWED_URL_HOSTS" in message
        assert message.endswith(f"but {shown} is not allowed")
    assert published.records == []


def test_by_default_a_url_may_name_any_port_and_path_on_a_registered_workflows_host(
    api: TestClient, published: FakePublisher
) -> None:
    response = api.post(
        "/v1/runs",
        json={"workflow": "other", "url": "http://app.local:9000/other", "failure_url": "https://app.local/f"},
    )

    assert response.status_code == 202, response.text
    assert len(published.records) == 1


def test_the_allowed_hosts_setting_replaces_the_default(store: QueryStore, published: FakePublisher) -> None:
    with api_client(store, published, allowed_url_hosts=AllowedHosts.parse(["*.apps.example.com"])) as api:
        elsewhere = api.post("/v1/runs", json={"workflow": "other", "url": "https://shop.apps.example.com/w"})
        registered = api.post("/v1/runs", json={"workflow": "orders"})

    assert elsewhere.status_code == 202
    assert error_of(registered)[:2] == (422, "url_not_allowed")  # the executor would refuse it too
    assert len(published.records) == 1


def test_an_oversized_trigger_is_refused_with_413(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/runs", json={"workflow": "orders", "payload": "x" * 3_000})

    assert error_of(response) == (
        413,
        "payload_too_large",
        "Expected payload of at most 2000 bytes as JSON (STEPSTREAM_MAX_PAYLOAD_BYTES), but it has 3002",
    )
    assert published.records == []


def test_an_oversized_body_without_a_length_is_cut_off_at_the_limit(api: TestClient, published: FakePublisher) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"workflow": "orders", "payload": "'
        for _ in range(1_000):  # 500 KB, far past three times the payload's 2000 bytes and the envelope's 64 KiB
            yield b"x" * 500
        yield b'"}'

    response = api.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})

    assert error_of(response) == (
        413,
        "payload_too_large",
        "Expected a request body of at most 71536 bytes (3 times STEPSTREAM_MAX_PAYLOAD_BYTES for a payload's "
        "escaped characters, and 65536 for the other fields), but it is longer",
    )
    assert published.records == []


def test_malformed_json_is_a_400_and_a_wrong_field_a_422(api: TestClient, published: FakePublisher) -> None:
    malformed = api.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
    wrong = api.post("/v1/runs", json={"workflow": "orders", "retries": "many"})
    unknown_field = api.post("/v1/runs", json={"workflow": "orders", "priority": 1})

    assert error_of(malformed)[:2] == (400, "bad_request")
    assert error_of(wrong)[:2] == (422, "invalid_request")
    assert "retries" in error_of(wrong)[2]
    assert "priority" in error_of(unknown_field)[2]
    assert published.records == []


def test_an_unknown_workflow_without_a_url_is_a_404_naming_the_registered_ones(
    api: TestClient, published: FakePublisher
) -> None:
    status, error, message = error_of(api.post("/v1/runs", json={"workflow": "nope"}))

    assert (status, error) == (404, "unknown_workflow")
    assert "'nope'" in message
    assert "registered: orders" in message
    assert published.records == []


def test_a_run_id_that_exists_is_reported_as_a_duplicate_with_the_existing_run_and_nothing_is_published(
    api: TestClient, store: QueryStore, published: FakePublisher
) -> None:
    add(store, completed("order-42"))

    response = api.post("/v1/runs", json={"workflow": "orders", "run_id": "order-42"})

    assert response.status_code == 200
    assert response.json()["duplicate"] is True
    assert response.json()["run_id"] == "order-42"
    assert response.json()["run"]["run_id"] == "order-42"
    assert response.json()["run"]["status"] == "completed"
    assert response.json()["run"]["output"] == "done"
    assert published.records == []


# ---------------------------------------------------------------------------------------------
# Notify and waiters


def test_notifying_an_event_nobody_waits_on_says_so_and_how_long_it_is_kept(
    api: TestClient, published: FakePublisher
) -> None:
    response = api.post("/v1/events/order-42/notify", json={"data": {"approved": True}})

    assert response.status_code == 202
    assert response.json() == {
        "event_id": "order-42",
        "waiting": [],
        "buffered_until_ms": NOW + 60_000,
        "message": (
            "No run is waiting on event 'order-42' now; "
            "the notification is kept for 60 s for runs that start waiting on it"
        ),
    }
    assert published.records == [
        NotifyRequest(event_id="order-42", data='{"approved":true}', requested_at_ms=NOW, actor=CALLER)
    ]
    assert triggers_key(published.records[0]) == "order-42"


def test_notifying_an_event_lists_the_runs_waiting_on_it(
    api: TestClient, store: QueryStore, published: FakePublisher
) -> None:
    add(store, waiting_run("run_A"), waiting_run("run_B", now=T0 + 5), waiting_run("run_C", "other"))

    answer = api.post("/v1/events/order-42/notify", json={"data": 1}).json()

    assert answer["waiting"] == ["run_A", "run_B"]
    assert answer["message"].startswith("2 runs waiting on event 'order-42' will receive the notification")
    assert len(published.records) == 1


def test_a_notification_without_a_body_carries_null(api: TestClient, published: FakePublisher) -> None:
    assert api.post("/v1/events/order-42/notify").status_code == 202

    assert published.records == [NotifyRequest(event_id="order-42", data="null", requested_at_ms=NOW, actor=CALLER)]


def test_without_a_buffer_a_notification_nobody_waits_for_is_lost_and_the_answer_says_so(
    store: QueryStore, published: FakePublisher
) -> None:
    with api_client(store, published, notify_buffer_ms=0) as api:
        answer = api.post("/v1/events/order-42/notify", json={"data": 1}).json()

    assert answer["buffered_until_ms"] is None
    assert "notifications are not kept (STEPSTREAM_NOTIFY_BUFFER_MS is 0)" in answer["message"]


def test_an_event_id_longer_than_256_characters_is_refused(api: TestClient, published: FakePublisher) -> None:
    too_long = api.post(f"/v1/events/{'e' * 257}/notify", json={"data": 1})
    longest = api.post(f"/v1/events/{'e' * 256}/notify", json={"data": 1})
    waiters = api.get(f"/v1/events/{'e' * 257}/waiters")

    assert error_of(too_long) == (
        422,
        "invalid_request",
        "Expected an event id of 1 to 256 characters, but got 257 characters",
    )
    assert error_of(waiters)[0] == 422
    assert longest.status_code == 202
    assert [record.event_id for record in published.records if isinstance(record, NotifyRequest)] == ["e" * 256]


def test_an_oversized_notification_is_refused_with_413(api: TestClient, published: FakePublisher) -> None:
    response = api.post("/v1/events/order-42/notify", json={"data": "x" * 3_000})

    assert error_of(response)[:2] == (413, "payload_too_large")
    assert published.records == []


def test_waiters_lists_the_runs_waiting_on_an_event_id(api: TestClient, store: QueryStore) -> None:
    add(store, waiting_run("run_A"), waiting_run("run_C", "other"))

    assert api.get("/v1/events/order-42/waiters").json() == {
        "event_id": "order-42",
        "waiters": [{"run_id": "run_A", "step_index": 0, "timeout_at_ms": T0 + 1 + 86_400_000, "since_ms": T0 + 1}],
    }
    assert api.get("/v1/events/nobody/waiters").json() == {"event_id": "nobody", "waiters": []}


# ---------------------------------------------------------------------------------------------
# Cancel


def test_cancelling_a_run_publishes_a_cancel_request(
    api: TestClient, store: QueryStore, published: FakePublisher
) -> None:
    add(store, sleeping("run_A"))

    response = api.post("/v1/runs/run_A/cancel", json={"reason": "not needed"})

    assert response.status_code == 202
    assert response.json()["run_id"] == "run_A"
    assert published.records == [CancelRequest(run_id="run_A", reason="not needed", requested_at_ms=NOW, actor=CALLER)]


def test_a_cancel_needs_no_body(api: TestClient, store: QueryStore, published: FakePublisher) -> None:
    add(store, sleeping("run_A"))

    assert api.post("/v1/runs/run_A/cancel").status_code == 202
    assert published.records == [CancelRequest(run_id="run_A", reason=None, requested_at_ms=NOW, actor=CALLER)]


def test_cancelling_an_unknown_run_is_a_404_and_an_ended_one_a_409(
    api: TestClient, store: QueryStore, published: FakePublisher
) -> None:
    add(store, completed("run_done"))

    unknown = api.post("/v1/runs/run_nope/cancel")
    ended = api.post("/v1/runs/run_done/cancel")

    assert error_of(unknown) == (404, "unknown_run", "Expected a known run id, but 'run_nope' is not known (yet)")
    assert error_of(ended) == (
        409,
        "run_ended",
        "Expected a run that has not ended, but run 'run_done' is completed; nothing to cancel",
    )
    assert published.records == []


def fleet(store: QueryStore) -> None:
    """Runs of two workflows, some ended, created an hour apart from T0."""
    add(
        store,
        sleeping("run_1", now=T0, workflow="orders", label="nightly"),
        waiting_run("run_2", now=T0 + 3_600_000),
        sleeping("run_3", now=T0 + 7_200_000, workflow="refunds", label="nightly"),
        completed("run_4", now=T0 + 10_800_000, label="nightly"),
        failed("run_5", now=T0 + 14_400_000),
        sleeping("run_6", now=T0 + 18_000_000, workflow="refunds"),
    )


def cancelled(published: FakePublisher) -> list[str]:
    return [record.run_id for record in published.records if isinstance(record, CancelRequest)]


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        ({"all": True}, ["run_6", "run_3", "run_2", "run_1"]),
        ({"workflow": "refunds"}, ["run_6", "run_3"]),
        ({"label": "nightly"}, ["run_3", "run_1"]),
        ({"created_before": T0 + 7_200_000}, ["run_2", "run_1"]),
        ({"created_after": "2023-11-15T00:13:20Z"}, ["run_6", "run_3"]),  # T0 + 2 h
        ({"workflow": "orders", "created_after": T0 + 1}, ["run_2"]),
        ({"workflow": "nope"}, []),
    ],
)
def test_cancel_by_filter_cancels_every_matching_run_that_has_not_ended(
    api: TestClient, store: QueryStore, published: FakePublisher, criteria: dict[str, Any], expected: list[str]
) -> None:
    fleet(store)

    response = api.post("/v1/runs/cancel", json={**criteria, "reason": "cleanup"})

    assert response.status_code == 202, response.text
    assert response.json() == {"cancelled": expected, "count": len(expected)}
    assert cancelled(published) == expected
    assert all(record.reason == "cleanup" for record in published.records if isinstance(record, CancelRequest))


def test_cancel_by_filter_needs_a_criterion_or_all(
    api: TestClient, store: QueryStore, published: FakePublisher
) -> None:
    fleet(store)

    for body in ({}, {"all": False}, {"reason": "oops"}):
        status, error, message = error_of(api.post("/v1/runs/cancel", json=body))
        assert (status, error) == (422, "invalid_request")
        assert message.startswith("Expected at least one of workflow, label, created_after and created_before")
    assert published.records == []


def test_cancel_by_filter_reaches_runs_beyond_one_page_of_the_store(
    api: TestClient, store: QueryStore, published: FakePublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_module, "_CANCEL_PAGE", 2)
    add(store, *(sleeping(f"run_{number}", now=T0 + number) for number in range(7)))

    answer = api.post("/v1/runs/cancel", json={"all": True}).json()

    assert answer["count"] == 7
    assert sorted(answer["cancelled"]) == [f"run_{number}" for number in range(7)]
    assert sorted(cancelled(published)) == sorted(answer["cancelled"])


# ---------------------------------------------------------------------------------------------
# Listing runs


def listed(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [run["run_id"] for run in response.json()["runs"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", ["run_6", "run_5", "run_4", "run_3", "run_2", "run_1"]),
        ("?status=sleeping", ["run_6", "run_3", "run_1"]),
        ("?status=waiting&status=failed", ["run_5", "run_2"]),
        ("?status=completed,failed", ["run_5", "run_4"]),
        ("?workflow=refunds", ["run_6", "run_3"]),
        ("?label=nightly&status=sleeping", ["run_3", "run_1"]),
        (f"?created_after={T0 + 7_200_000}&created_before={T0 + 14_400_000}", ["run_4", "run_3"]),
        ("?created_before=2023-11-14T23:13:20%2B00:00", ["run_1"]),  # T0 + 1 h, exclusive
        ("?dead_letter=true", ["run_5"]),
    ],
)
def test_list_runs_filters(api: TestClient, store: QueryStore, query: str, expected: list[str]) -> None:
    fleet(store)

    assert listed(api.get(f"/v1/runs{query}")) == expected


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "?status=asleep",
            "Expected status to be among scheduled, running, sleeping, waiting, completed, failed, cancelled",
        ),
        ("?created_after=yesterday", "Expected created_after as epoch milliseconds or an ISO-8601 time"),
        ("?created_before=2026-01-01T00:00:00", "Expected created_before with a time zone"),
    ],
)
def test_list_runs_refuses_an_unknown_status_or_time(api: TestClient, query: str, expected: str) -> None:
    status, error, message = error_of(api.get(f"/v1/runs{query}"))

    assert (status, error) == (422, "invalid_request")
    assert message.startswith(expected), message


@pytest.mark.parametrize("limit", [1, 2, 4, 5])
def test_paging_visits_every_run_once_newest_first(api: TestClient, store: QueryStore, limit: int) -> None:
    fleet(store)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit, "status": ["sleeping", "waiting", "completed", "failed"]}

    for _ in range(10):
        page = api.get("/v1/runs", params=params).json()
        seen.extend(run["run_id"] for run in page["runs"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert seen == ["run_6", "run_5", "run_4", "run_3", "run_2", "run_1"]


def test_a_cursor_not_from_a_page_is_a_400(api: TestClient) -> None:
    assert error_of(api.get("/v1/runs?cursor=nonsense"))[:2] == (400, "bad_request")


def test_a_run_shows_its_steps_and_new_fields(api: TestClient, store: QueryStore) -> None:
    add(store, waiting_run("run_A"))

    run = api.get("/v1/runs/run_A").json()
    steps = api.get("/v1/runs/run_A/steps").json()

    assert (run["status"], run["dead_letter"], run["parent_run_id"]) == ("waiting", False, None)
    assert run["steps"] == steps["steps"]
    assert steps == {
        "run_id": "run_A",
        "steps": [
            {
                "index": 0,
                "name": "approval",
                "kind": "wait_for_event",
                "status": "pending",
                "output": None,
                "started_at_ms": T0 + 1,
                "completed_at_ms": None,
                "detail": {"event_id": "order-42", "timeout_at_ms": T0 + 1 + 86_400_000},
            }
        ],
    }


@pytest.mark.parametrize("path", ["/v1/runs/run_nope", "/v1/runs/run_nope/steps", "/v1/runs/run_nope/history"])
def test_an_unknown_run_is_a_404(api: TestClient, path: str) -> None:
    assert error_of(api.get(path))[:2] == (404, "unknown_run")


def test_an_unknown_route_answers_in_the_same_error_shape(api: TestClient) -> None:
    status, error, message = error_of(api.get("/v1/nothing"))

    assert (status, error) == (404, "not_found")
    assert "GET /v1/nothing does not exist" in message


def test_history_shows_header_values_redacted(api: TestClient, store: QueryStore) -> None:
    add(store, waiting_run("run_A"))

    events = api.get("/v1/runs/run_A/history").json()["events"]

    assert events[0]["headers"] == {"x-tenant": "<redacted>"}
    assert [event["type"] for event in events] == ["RunStarted", "StepScheduled", "WaitStarted"]


# ---------------------------------------------------------------------------------------------
# The dead-letter list


def test_the_dead_letter_list_holds_the_failed_runs_not_yet_recovered(api: TestClient, store: QueryStore) -> None:
    fleet(store)
    deleted = failed("run_7", now=T0 + 21_600_000)
    deleted.recover(Recovery.DELETE, now=T0 + 21_600_002)
    add(store, failed("run_8", now=T0 + 25_200_000, workflow="refunds"), deleted)

    assert listed(api.get("/v1/deadletter")) == ["run_8", "run_5"]
    assert listed(api.get("/v1/deadletter?workflow=refunds")) == ["run_8"]
    assert listed(api.get(f"/v1/deadletter?created_before={T0 + 25_200_000}")) == ["run_5"]
    first = api.get("/v1/deadletter?limit=1").json()
    assert listed(api.get(f"/v1/deadletter?limit=1&cursor={first['next_cursor']}")) == ["run_5"]


@pytest.mark.parametrize(
    ("method", "path", "action"),
    [
        ("POST", "/v1/deadletter/run_5/resume", Recovery.RESUME),
        ("POST", "/v1/deadletter/run_5/restart", Recovery.RESTART),
        ("DELETE", "/v1/deadletter/run_5", Recovery.DELETE),
    ],
)
def test_acting_on_a_dead_lettered_run_publishes_a_recover_request(
    api: TestClient, store: QueryStore, published: FakePublisher, method: str, path: str, action: Recovery
) -> None:
    fleet(store)

    response = api.request(method, path)

    assert response.status_code == 202, response.text
    assert response.json() == {"run_id": "run_5", "action": action.value}
    assert published.records == [RecoverRequest(run_id="run_5", action=action, requested_at_ms=NOW, actor=CALLER)]


@pytest.mark.parametrize(
    ("run_id", "expected"),
    [
        ("run_nope", "Expected a run in the dead-letter list to resume, but run 'run_nope' is not known (yet)"),
        ("run_4", "Expected a run in the dead-letter list to resume, but run 'run_4' is completed"),
        ("run_7", "Expected a run in the dead-letter list to resume, but run 'run_7' is failed but no longer in"),
    ],
)
def test_a_run_not_in_the_dead_letter_list_cannot_be_recovered(
    api: TestClient, store: QueryStore, published: FakePublisher, run_id: str, expected: str
) -> None:
    fleet(store)
    deleted = failed("run_7", now=T0 + 21_600_000)
    deleted.recover(Recovery.DELETE, now=T0 + 21_600_002)
    add(store, deleted)

    status, error, message = error_of(api.post(f"/v1/deadletter/{run_id}/resume"))

    assert (status, error) == (404, "not_in_dead_letter")
    assert message.startswith(expected), message
    assert published.records == []


def test_iso_times_and_epoch_ms_name_the_same_instant() -> None:
    # The fixtures above write times both ways; this pins the arithmetic they rely on.
    assert datetime.fromtimestamp(NOW / 1000, tz=UTC).isoformat() == "2023-11-14T23:13:20+00:00"
