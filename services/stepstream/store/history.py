"""Events as the history shows them: plain JSON data, user values inline, header values redacted."""

from __future__ import annotations

import dataclasses
import json
from enum import Enum
from functools import cache
from typing import Any

from stepstream.core import Event

REDACTED = "<redacted>"

# Fields that always hold JSON text (payloads, step outputs, notification data): shown as JSON values.
_JSON_FIELDS = frozenset({"payload", "output", "data"})


@cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(field.name for field in dataclasses.fields(kind))


def _plain(value: Any) -> Any:
    """A record as plain data: dataclasses as dicts, tuples as lists, enums as their values.

    What ``dataclasses.asdict`` and then these conversions would give, without ``asdict``'s deep copy
    of every value (events are immutable): the indexer does this for every event it stores.
    """
    if isinstance(value, Enum):  # first: a StrEnum is a str too
        return value.value
    if isinstance(value, str | int | float | bool | None):
        return value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {name: _plain(getattr(value, name)) for name in _field_names(type(value))}
    return value


def _redacted_headers(headers: Any) -> dict[str, str]:
    if isinstance(headers, dict):
        return dict.fromkeys(headers, REDACTED)
    return {name: REDACTED for name, _ in headers}


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _shown(data: dict[str, Any]) -> dict[str, Any]:
    """One level of an event's structure, and the records nested in it, as the history shows them.

    User values are parsed after the walk, so a ``headers`` key inside a payload is the user's and kept.
    """
    shown: dict[str, Any] = {}
    for key, value in data.items():
        if key == "headers" and value is not None:
            # Headers travel with every delivery and call and often carry credentials: the history
            # shows which were set, not their values.
            shown[key] = _redacted_headers(value)
        elif key in _JSON_FIELDS and isinstance(value, str):
            shown[key] = json.loads(value)
        elif key == "body" and isinstance(value, str):
            shown[key] = _json_or_text(value)  # a call's request body: JSON when it is JSON, else text
        elif isinstance(value, dict):
            shown[key] = _shown(value)
        else:
            shown[key] = value
    return shown


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data: user values (payload, output, data) inline as JSON, not as text;
    the values of every ``headers`` field of the event, at any depth, redacted.

    Raises ``ValueError`` if a field that must hold JSON text does not.
    """
    data: dict[str, Any] = _plain(event)
    return {"type": type(event).__name__, **_shown(data)}
