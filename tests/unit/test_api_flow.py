"""The api's flow control: a trigger's ``flow_control`` (validated, carried on the ``TriggerRequest``)
and the flow-control keys the indexer stored from the scheduler's ``flow`` topic."""

from __future__ import annotations

from typing import Any

import pytest

from stepstream.avro import TriggerRequest
from stepstream.core import FlowControl, FlowKeyState
from stepstream.store import QueryStore
from tests.unit.test_api import NOW, FakePublisher, TestClient, error_of


def trigger(api: TestClient, flow_control: Any) -> Any:
    return api.post("/v1/runs", json={"workflow": "orders", "run_id": "order-42", "flow_control": flow_control})


# ---------------------------------------------------------------------------------------------
# POST /v1/runs with flow_control


@pytest.mark.parametrize(
    ("flow_control", "expected"),
    [
        (
            {"key": "mailer", "rate": 10, "period": "1m", "parallelism": 3},
            FlowControl(key="mailer", rate=10, period_ms=60_000, parallelism=3),
        ),
        ({"key": "mailer", "rate": 5, "period": "1h30m"}, FlowControl(key="mailer", rate=5, period_ms=5_400_000)),
        ({"key": "mailer", "rate": 5, "period": "250ms"}, FlowControl(key="mailer", rate=5, period_ms=250)),
        ({"key": "mailer", "rate": 5, "period_ms": 2_500}, FlowControl(key="mailer", rate=5, period_ms=2_500)),
        ({"key": "mailer", "rate": 5, "period": "7d"}, FlowControl(key="mailer", rate=5, period_ms=604_800_000)),
        ({"key": "mailer", "rate": 5}, FlowControl(key="mailer", rate=5, period_ms=1_000)),  # a second by default
        ({"key": "mailer", "parallelism": 1}, FlowControl(key="mailer", parallelism=1)),
        ({"key": "tenant/42 é"}, FlowControl(key="tenant/42 é")),  # counted and shown, never held back
        ({"key": "k" * 200, "rate": 1}, FlowControl(key="k" * 200, rate=1)),
    ],
)
def test_a_trigger_carries_its_flow_control(
    api: TestClient, published: FakePublisher, flow_control: dict[str, Any], expected: FlowControl
) -> None:
    response = trigger(api, flow_control)

    assert response.status_code == 202, response.text
    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.flow == expected
    assert (record.run_id, record.requested_at_ms) == ("order-42", NOW)


def test_a_trigger_without_flow_control_carries_none(api: TestClient, published: FakePublisher) -> None:
    assert api.post("/v1/runs", json={"workflow": "orders"}).status_code == 202

    (record,) = published.records
    assert isinstance(record, TriggerRequest)
    assert record.flow is None


@pytest.mark.parametrize(
    ("flow_control", "expected"),
    [
        ({"rate": 10}, "flow_control.key: Field required"),
        ({"key": "", "rate": 10}, "flow_control.key: String should have at least 1 character"),
        ({"key": "k" * 201, "rate": 10}, "flow_control.key: String should have at most 200 characters"),
        (
            {"key": "mailer", "rate": 0},
            "Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got 0",
        ),
        (
            {"key": "mailer", "rate": -3},
            "Expected a flow-control rate from 1 to 1,000,000,000 starts per period, but got -3",
        ),
        ({"key": "mailer", "parallelism": 0}, "Expected a flow-control parallelism from 1 to 1,000,000,000, but got 0"),
        (
            {"key": "mailer", "rate": 1, "period": "0s"},
            "Expected a flow-control period from 1 ms to 7 days, but got 0 ms",
        ),
        (
            {"key": "mailer", "rate": 1, "period": "8d"},
            "Expected a flow-control period from 1 ms to 7 days, but got 691200000 ms",
        ),
        (
            {"key": "mailer", "rate": 1, "period": "99999d"},
            "Expected a flow-control period from 1 ms to 7 days, but got 8639913600000 ms",
        ),
        (
            {"key": "mailer", "rate": 1, "period_ms": 0},
            "Expected a flow-control period from 1 ms to 7 days, but got 0 ms",
        ),
        (
            {"key": "mailer", "rate": 1, "period": "a minute"},
            "flow_control.period: Expected a duration such as '10s', '5m' or '2h', but got 'a minute'",
        ),
        (
            {"key": "mailer", "rate": 1, "period": 60},
            "flow_control.period: Expected a duration such as '10s', '5m' or '2h', but got 60"
            " (for milliseconds, use flow_control.period_ms)",
        ),
        (
            {"key": "mailer", "rate": 1, "period": "1m", "period_ms": 60_000},
            "Expected at most one of flow_control.period and flow_control.period_ms, but got both",
        ),
        ({"key": "mailer", "rate": "10"}, "flow_control.rate: Input should be a valid integer"),
        ({"key": "mailer", "rate": 1.5}, "flow_control.rate: Input should be a valid integer"),
        ({"key": "mailer", "parallelism": True}, "flow_control.parallelism: Input should be a valid integer"),
        ({"key": "mailer", "ratePerSecond": 10}, "flow_control.ratePerSecond: Extra inputs are not permitted"),
        ("mailer", "flow_control: Input should be an object"),
    ],
)
def test_an_invalid_flow_control_is_refused_with_a_422_and_nothing_is_published(
    api: TestClient, published: FakePublisher, flow_control: Any, expected: str
) -> None:
    status, error, message = error_of(trigger(api, flow_control))

    assert (status, error) == (422, "invalid_request")
    assert message.startswith(expected), message
    assert published.records == []


# ---------------------------------------------------------------------------------------------
# GET /v1/flow-control and /v1/flow-control/{key}


def state(key: str, *, queued: int = 0, updated_ms: int = NOW - 500, **changes: Any) -> FlowKeyState:
    values: dict[str, Any] = {
        "in_flight": 0,
        "starts_in_window": 0,
        "rate": None,
        "period_ms": 1_000,
        "parallelism": None,
        **changes,
    }
    return FlowKeyState(key=key, queued=queued, updated_ms=updated_ms, **values)


def test_a_key_shows_the_schedulers_latest_state(api: TestClient, store: QueryStore) -> None:
    store.apply_flow([("mailer", state("mailer", queued=50, in_flight=2, starts_in_window=2, rate=10))])
    store.apply_flow(
        [
            (
                "mailer",
                state(
                    "mailer",
                    queued=42,
                    in_flight=5,
                    starts_in_window=10,
                    rate=10,
                    period_ms=60_000,
                    parallelism=5,
                    updated_ms=NOW - 200,
                ),
            )
        ]
    )

    response = api.get("/v1/flow-control/mailer")

    assert response.status_code == 200, response.text
    assert response.json() == {
        "key": "mailer",
        "queued": 42,
        "in_flight": 5,
        "starts_in_window": 10,
        "rate": 10,
        "period_ms": 60_000,
        "parallelism": 5,
        "updated_at_ms": NOW - 200,
    }


def test_a_key_without_limits_shows_them_as_null(api: TestClient, store: QueryStore) -> None:
    store.apply_flow([("grouped", state("grouped", queued=1))])

    shown = api.get("/v1/flow-control/grouped").json()

    assert (shown["rate"], shown["parallelism"], shown["period_ms"]) == (None, None, 1_000)


def test_a_key_with_a_slash_or_other_reserved_characters_is_found(api: TestClient, store: QueryStore) -> None:
    store.apply_flow([("tenant/42 ?#", state("tenant/42 ?#", queued=3))])

    response = api.get("/v1/flow-control/tenant/42%20%3F%23")

    assert response.status_code == 200, response.text
    assert response.json()["key"] == "tenant/42 ?#"
    assert response.json()["queued"] == 3


def test_an_unknown_key_is_a_404_that_says_why_it_may_be_unknown(api: TestClient, store: QueryStore) -> None:
    store.apply_flow([("mailer", state("mailer"))])

    status, error, message = error_of(api.get("/v1/flow-control/mailers"))

    assert (status, error) == (404, "unknown_flow_key")
    assert message.startswith("Expected a flow-control key the scheduler has published, but 'mailers' is not known")


def test_the_key_list_is_sorted_by_key(api: TestClient, store: QueryStore) -> None:
    store.apply_flow([(key, state(key, queued=index)) for index, key in enumerate(["b", "a/x", "C", "a"])])

    response = api.get("/v1/flow-control")

    assert response.status_code == 200, response.text
    body = response.json()
    assert [key["key"] for key in body["flow_keys"]] == ["C", "a", "a/x", "b"]
    assert body["flow_keys"][1] == {
        "key": "a",
        "queued": 3,
        "in_flight": 0,
        "starts_in_window": 0,
        "rate": None,
        "period_ms": 1_000,
        "parallelism": None,
        "updated_at_ms": NOW - 500,
    }
    assert body["next_cursor"] is None


def test_the_key_list_of_an_empty_store_is_empty(api: TestClient) -> None:
    assert api.get("/v1/flow-control").json() == {"flow_keys": [], "next_cursor": None}


@pytest.mark.parametrize("limit", [1, 2, 3, 5])
def test_paging_the_key_list_visits_every_key_once_in_order(api: TestClient, store: QueryStore, limit: int) -> None:
    keys = [f"key-{number}" for number in range(5)]
    store.apply_flow([(key, state(key)) for key in reversed(keys)])
    seen: list[str] = []
    params: dict[str, Any] = {"limit": limit}

    for _ in range(10):
        page = api.get("/v1/flow-control", params=params).json()
        assert len(page["flow_keys"]) <= limit
        seen.extend(key["key"] for key in page["flow_keys"])
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]

    assert seen == keys


@pytest.mark.parametrize(
    ("query", "status", "error"),
    [
        ("?cursor=nonsense", 400, "bad_request"),
        ("?cursor=WzEsMl0=", 400, "bad_request"),  # [1,2]: JSON, but not a page's cursor
        ("?limit=0", 422, "invalid_request"),
        ("?limit=501", 422, "invalid_request"),
    ],
)
def test_the_key_list_refuses_a_bad_cursor_or_limit(api: TestClient, query: str, status: int, error: str) -> None:
    assert error_of(api.get(f"/v1/flow-control{query}"))[:2] == (status, error)
