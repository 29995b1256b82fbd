"""A run's history put to use: its state at any point, replays against new code, export and import.

Everything here works from the history as the api shows it (``GET /v1/runs/{id}/history``, one JSON
object per event, ``stepstream.store.history``) and folds it with the core's ``evolve``; it needs
neither Kafka nor Avro, so a user's CI can replay exported histories with the base install
(docs/history.md).
"""

from stepstream.history.files import EXPORT_FORMAT, ExportError, read_export, write_export
from stepstream.history.points import Change, diff, events_of, fold_to, state_to_dict
from stepstream.history.replay import (
    assert_replays,
    load_workflows,
    replay_file,
    replay_history,
    replay_input,
)

__all__ = [
    "EXPORT_FORMAT",
    "Change",
    "ExportError",
    "assert_replays",
    "diff",
    "events_of",
    "fold_to",
    "load_workflows",
    "read_export",
    "replay_file",
    "replay_history",
    "replay_input",
    "state_to_dict",
    "write_export",
]
