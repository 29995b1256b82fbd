"""The cursors of the paged lists: base64 of a small JSON array, opaque to a client.

A cursor comes back from the client, so it is input like any other: one that does not decode to the
exact shape the api wrote (a NaN or 1e999 where the instant was, a number past what SQLite can bind,
arrays nested a thousand deep) is refused with ``ValueError`` before it reaches the store.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

from stepstream.api.inputs import shown
from stepstream.core.limits import MAX_EPOCH_MS

# A run cursor holds an instant and a run id (a child's id grows with each invoke); a flow cursor, a
# key of at most 200 characters, each escaped to at most 6 by JSON: either fits in far less.
MAX_CURSOR_LENGTH: Final = 4_096


def run_cursor(created_at_ms: int, run_id: str) -> str:
    return _encode([created_at_ms, run_id])


def parse_run_cursor(cursor: str) -> tuple[int, str]:
    """The (created_at_ms, run_id) of the last run of the previous page."""
    value = _decode(cursor)
    # type() and not isinstance(): JSON's true would pass for 1.
    if isinstance(value, list) and len(value) == 2 and type(value[0]) is int and isinstance(value[1], str):
        created_at_ms, run_id = value
        if 0 <= created_at_ms <= MAX_EPOCH_MS:
            return created_at_ms, run_id
    raise _refused(cursor)


def flow_cursor(key: str) -> str:
    return _encode([key])


def parse_flow_cursor(cursor: str) -> str:
    """The last flow-control key of the previous page."""
    value = _decode(cursor)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        key: str = value[0]
        return key
    raise _refused(cursor)


def _encode(value: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()


def _decode(cursor: str) -> Any:
    if len(cursor) > MAX_CURSOR_LENGTH:
        raise _refused(cursor)
    try:
        return json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON; or nested too deep to read
        raise _refused(cursor) from None


def _refused(cursor: str) -> ValueError:
    return ValueError(f"Expected a cursor from a previous page, but got {shown(cursor)}")
