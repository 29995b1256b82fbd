"""Fixtures the api's unit tests share: an in-memory query store, a publisher that keeps what the
api would have sent to Kafka, the api's run-change feed, and the api app over the three (the
builders are in tests/unit/test_api.py). A module that needs another store or publisher defines its
own fixture of the same name, which pytest takes over these."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from stepstream.api.changes import RunChanges
from stepstream.store import QueryStore, open_query_store
from tests.unit.test_api import FakePublisher, TestClient, api_client


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest) -> Iterator[QueryStore]:
    """The api's tests run on both query stores: SQLite in memory, and a real PostgreSQL server."""
    if request.param == "postgresql":
        store = open_query_store(request.getfixturevalue("postgres_url"))
    else:
        store = QueryStore(":memory:")
    yield store
    store.close()


@pytest.fixture
def published() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def changes() -> RunChanges:
    return RunChanges()


@pytest.fixture
def api(store: QueryStore, published: FakePublisher, changes: RunChanges) -> Iterator[TestClient]:
    with api_client(store, published, changes=changes) as client:
        yield client
