"""The query store: runs, their steps and histories, who waits on which event id, and the state of
each flow-control key; kept by the indexer, read by the api."""

from stepstream.store.history import REDACTED, event_to_dict
from stepstream.store.rows import (
    ACTIVE_STATUSES,
    ENDED_STATUSES,
    RUN_STATUSES,
    FlowKeyRow,
    HistoryPage,
    RunRow,
    StepRow,
    WaiterRow,
)
from stepstream.store.sqlite import QueryStore


def open_query_store(url: str) -> QueryStore:
    """The query store at ``url`` (``STEPSTREAM_DATABASE``): a SQLite file (or ``:memory:``) of this
    process's own, or a PostgreSQL database shared by every api replica (``postgresql://…``)."""
    from stepstream.store.postgres import PostgresQueryStore, is_postgres

    return PostgresQueryStore(url) if is_postgres(url) else QueryStore(url)


__all__ = [
    "ACTIVE_STATUSES",
    "ENDED_STATUSES",
    "REDACTED",
    "RUN_STATUSES",
    "FlowKeyRow",
    "HistoryPage",
    "QueryStore",
    "RunRow",
    "StepRow",
    "WaiterRow",
    "event_to_dict",
    "open_query_store",
]
