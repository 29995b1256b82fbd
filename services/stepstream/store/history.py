"""Events as the history shows them: plain JSON data, user values inline, header values redacted."""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import Enum
from functools import cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

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
        elif isinstance(value, list):  # a run state's steps and pending steps
            shown[key] = [_shown(item) if isinstance(item, dict) else item for item in value]
        else:
            shown[key] = value
    return shown


def event_to_dict(event: Event) -> dict[str, Any]:
    """An event as JSON-ready data: user values (payload, output, data) inline as JSON, not as text;
    the values of every ``headers`` field of the event, at any depth, redacted.

    Raises ``ValueError`` if a field that must hold JSON text does not.
    """
    return {"type": type(event).__name__, **record_to_dict(event)}


def record_to_dict(record: object) -> dict[str, Any]:
    """Any of the core's records (an event, a run's state) as the history shows it: see ``event_to_dict``."""
    data: dict[str, Any] = _plain(record)
    return _shown(data)


@cache
def _event_types() -> dict[str, TypeAdapter[Any]]:
    return {kind.__name__: TypeAdapter(kind) for kind in typing.get_args(Event)}


def _unshown(data: dict[str, Any]) -> dict[str, Any]:
    """``_shown`` undone as far as it can be: user values back to JSON text, headers back to pairs
    (their values stay redacted), a call's body back to text."""
    plain: dict[str, Any] = {}
    for key, value in data.items():
        if key == "headers" and isinstance(value, dict):
            plain[key] = list(value.items())
        elif key in _JSON_FIELDS or (key == "body" and value is not None and not isinstance(value, str)):
            plain[key] = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        elif isinstance(value, dict):
            plain[key] = _unshown(value)
        elif isinstance(value, list):
            plain[key] = [_unshown(item) if isinstance(item, dict) else item for item in value]
        else:
            plain[key] = value
    return plain


def event_from_dict(data: dict[str, Any]) -> Event:
    """An event from what :func:`event_to_dict` made of it, to fold into a run's state (the api's
    state at a point, an exported file's). Header values stay redacted; a call's body that was JSON
    comes back as compact JSON text.

    Raises ``ValueError`` naming the type or the field that does not fit.
    """
    kind = data.get("type")
    adapter = _event_types().get(kind) if isinstance(kind, str) else None
    if adapter is None:
        raise ValueError(f"Expected an event type, one of {', '.join(_event_types())}, but got {kind!r}")
    fields = {key: value for key, value in data.items() if key != "type"}
    try:
        event: Event = adapter.validate_python(_unshown(fields))
    except ValidationError as error:
        raise ValueError(f"Expected a valid {kind}, but {error}") from None
    return event
