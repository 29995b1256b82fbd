"""The api's tokens: no token or an unknown one is a 401, a token without the role a 403, and each
role can do what it may (tests/integration: the whole stack runs with a token; the CLI and the
dashboard send one)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from stepstream.store import QueryStore
from stepstream.tokens import ROLES, needed_role, new_token, parse_tokens, token_line
from tests.unit.test_api import FakePublisher, TestClient, api_client

TOKENS = {role: new_token() for role in ROLES}
EVERY_ROLE = new_token()

# One request of each kind the api takes, and the role it needs.
REQUESTS: list[tuple[str, str, dict[str, Any] | None, str]] = [
    ("GET", "/v1/runs", None, "read"),
    ("GET", "/v1/runs/counts", None, "read"),
    ("GET", "/v1/runs/run_x", None, "read"),
    ("GET", "/v1/runs/run_x/history", None, "read"),
    ("GET", "/v1/runs/run_x/state", None, "read"),
    ("GET", "/v1/waiters", None, "read"),
    ("GET", "/v1/deadletter", None, "read"),
    ("GET", "/v1/flow-control", None, "read"),
    ("POST", "/v1/runs", {"workflow": "orders", "payload": {}}, "write"),
    ("POST", "/v1/events/paid/notify", {"data": 1}, "write"),
    ("POST", "/v1/runs/run_x/cancel", {}, "operate"),
    ("POST", "/v1/runs/cancel", {"all": True}, "operate"),
    ("POST", "/v1/deadletter/run_x/resume", {}, "operate"),
    ("POST", "/v1/deadletter/run_x/restart", {}, "operate"),
    ("DELETE", "/v1/deadletter/run_x", None, "operate"),
]


@pytest.fixture
def published() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def api(published: FakePublisher) -> Iterator[TestClient]:
    lines = [token_line(f"only-{role}", [role], token) for role, token in TOKENS.items()]
    lines.append(token_line("oncall", ROLES, EVERY_ROLE))
    tokens = parse_tokens("\n".join(lines), "test")
    store = QueryStore(":memory:")
    with api_client(store, published, tokens=tokens) as client:
        yield client
    store.close()


def _call(api: TestClient, method: str, path: str, body: dict[str, Any] | None, token: str | None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return api.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body", "role"), REQUESTS)
def test_each_role_may_do_its_requests_and_gets_403_for_the_others(
    api: TestClient, method: str, path: str, body: dict[str, Any] | None, role: str
) -> None:
    assert needed_role(method, path) == role
    for held, token in TOKENS.items():
        answer = _call(api, method, path, body, token)
        if held == role:
            assert answer.status_code not in (401, 403), (held, answer.text)
        else:
            assert answer.status_code == 403, (held, answer.text)
            assert answer.json() == {
                "error": "forbidden",
                "message": f"Expected a token with the {role} role, but token 'only-{held}' has {held}",
            }
    assert _call(api, method, path, body, EVERY_ROLE).status_code not in (401, 403)


@pytest.mark.parametrize(("method", "path", "body", "role"), REQUESTS)
def test_no_token_or_an_unknown_one_is_a_401_that_says_so(
    api: TestClient, method: str, path: str, body: dict[str, Any] | None, role: str
) -> None:
    missing = _call(api, method, path, body, None)
    wrong = _call(api, method, path, body, new_token())
    assert (missing.status_code, wrong.status_code) == (401, 401)
    assert missing.headers["www-authenticate"] == 'Bearer realm="stepstream"'
    assert missing.json()["message"] == "Expected a token (Authorization: Bearer <token>), but got none"
    assert wrong.json()["message"] == "Expected a known token, but this one is not (or was revoked)"
    assert _call(api, method, path, body, "").status_code == 401
    scheme = api.request(method, path, json=body, headers={"Authorization": f"Basic {EVERY_ROLE}"})
    assert scheme.status_code == 401


def test_health_metrics_docs_and_the_dashboards_files_need_no_token(api: TestClient) -> None:
    for path in ("/healthz", "/metrics", "/docs", "/openapi.json", "/ui/", "/ui/app.js"):
        assert api.get(path).status_code == 200, path


def test_a_cookie_carries_a_token_for_reads_only(api: TestClient) -> None:
    """The browser's EventSource sends no header: the dashboard's cookie authorises its reads, and
    never a change (another site could make a browser send it)."""
    cookie = {"Cookie": f"stepstream_token={EVERY_ROLE}"}

    assert api.get("/v1/runs", headers=cookie).status_code == 200
    assert api.post("/v1/runs/cancel", json={"all": True}, headers=cookie).status_code == 401
    assert api.get("/v1/runs", headers={"Cookie": "stepstream_token=nope"}).status_code == 401
    assert api.get("/v1/runs", headers={"Cookie": "garbage;;=="}).status_code == 401


def test_the_tokens_name_is_the_actor_of_what_it_does(api: TestClient, published: FakePublisher) -> None:
    assert _call(api, "POST", "/v1/events/paid/notify", {"data": 1}, TOKENS["write"]).status_code == 202
    assert _call(api, "POST", "/v1/runs/cancel", {"all": True, "reason": "x"}, EVERY_ROLE).status_code == 202

    assert [getattr(record, "actor", None) for record in published.records] == ["token only-write"]
