"""Hostile input against the api: schemathesis generates requests from /openapi.json (which describes
every request body, api/openapi.py) — valid ones and mutated ones, for every operation — and none may
be answered with a 5xx or carry a traceback. The api runs in this process on a SQLite store with a few
runs in it; what it publishes is kept in memory (the publisher is not what is fuzzed here)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from stepstream.api.app import create_app
from stepstream.config import ApiSettings, KafkaSettings
from stepstream.sealing import Sealer, new_key, parse_keys
from stepstream.store import QueryStore
from stepstream.tokens import ROLES, new_token, parse_tokens, token_line
from tests.unit.test_api import FakePublisher, add, completed, failed, sleeping, waiting_run

TOKEN = new_token()
STORE = QueryStore(":memory:")
add(STORE, completed("run_done"), failed("run_failed"), sleeping("run_asleep"), waiting_run("run_waiting"))
APP = create_app(
    ApiSettings(
        kafka=KafkaSettings(),
        workflows={"orders": "http://app.local/workflows/orders"},
        tokens=parse_tokens(token_line("fuzz", ROLES, TOKEN), "test"),
        sealer=Sealer(parse_keys(new_key())),
    ),
    store=STORE,
    publisher=FakePublisher(),
)
# The history stream is a long-lived answer (server-sent events until the run ends): not fuzzed here.
schema = schemathesis.openapi.from_asgi("/openapi.json", APP).exclude(path_regex="/history/stream$")


def no_traceback(ctx: Any, response: Any, case: Any) -> bool | None:
    """An answer never shows the api's insides: no Python traceback, no exception repr."""
    text = response.text
    assert "Traceback (most recent call last)" not in text, text[:500]
    assert 'File "/' not in text, text[:500]
    return None


@pytest.mark.timeout(600)
@schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_no_request_makes_the_api_fail_or_show_its_insides(case: Any) -> None:
    case.call_and_validate(headers={"Authorization": f"Bearer {TOKEN}"}, checks=[not_a_server_error, no_traceback])
