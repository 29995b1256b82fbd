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
]
