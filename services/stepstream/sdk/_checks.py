"""Checks on the arguments of step calls, raised at the call site before any index is claimed.

Every limit is the protocol's (``stepstream.protocol``), so an answer the SDK builds from checked
arguments always fits what the engine accepts; the messages read "Expected …, but …".
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal, cast
from urllib.parse import urlsplit

from stepstream.protocol import (
    HTTP_METHODS,
    MAX_DELAY_MS,
    MAX_EPOCH_MS,
    MAX_EVENT_ID_LENGTH,
    MAX_NAME_LENGTH,
    MAX_RETRIES,
)
from stepstream.sdk._machine import PATCH_PREFIX, to_json_value

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

MAX_LABEL_LENGTH = 200
MAX_WORKFLOW_NAME_LENGTH = 200
MAX_RULE_LENGTH = 200
MAX_REASON_LENGTH = 2_000

# RFC 9110 token characters: what a header name may be made of.
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def step_name(name: object, *, marker: bool = False) -> str:
    if not isinstance(name, str):
        raise TypeError(f"Expected a step name (str) as the first argument, but got {type(name).__name__}")
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ValueError(
            f"Expected a step name of 1 to {MAX_NAME_LENGTH} characters, but got one of {len(name)}: {name[:40]!r}"
        )
    if not marker and name.startswith(PATCH_PREFIX):
        # A step of that name would be taken for a versioning marker, and skipped in replays.
        raise ValueError(f"Expected a step name not starting with {PATCH_PREFIX!r}, which ctx.patched uses: {name!r}")
    return name


def seconds_of(value: object, what: str, name: str) -> float:
    """``value`` (a ``timedelta`` or a number of seconds) in seconds; refuses other types and non-finite numbers."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise TypeError(
            f"Expected {what} as a timedelta or a number of seconds for step '{name}', but got {type(value).__name__}"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"Expected a finite {what} for step '{name}', but got {value!r}")
    return seconds


def delay_ms(value: object, what: str, name: str, *, minimum_ms: int = 0) -> int:
    """A delay in whole milliseconds, between ``minimum_ms`` and the protocol's maximum (about a century)."""
    seconds = seconds_of(value, what, name)
    if seconds < 0:
        raise ValueError(f"Expected a {what} of zero or more seconds, but got {value!r} for step '{name}'")
    if seconds * 1000 > MAX_DELAY_MS:
        raise ValueError(
            f"Expected a {what} of at most {MAX_DELAY_MS // 86_400_000} days, but got {value!r} for step '{name}'"
        )
    milliseconds = round(seconds * 1000)
    if milliseconds < minimum_ms:
        raise ValueError(f"Expected a {what} of at least {minimum_ms} ms, but got {value!r} for step '{name}'")
    return milliseconds


def wake_at_ms(wake_at: object, name: str) -> int:
    if isinstance(wake_at, datetime):
        if wake_at.tzinfo is None or wake_at.utcoffset() is None:
            raise ValueError(
                f"Expected a timezone-aware datetime for step '{name}', but got the naive {wake_at!r}: "
                "say which zone it is in, for example datetime(..., tzinfo=timezone.utc)"
            )
        seconds = wake_at.timestamp()
    elif isinstance(wake_at, int | float) and not isinstance(wake_at, bool):
        seconds = float(wake_at)
    else:
        raise TypeError(
            f"Expected a timezone-aware datetime or epoch seconds for step '{name}', but got {type(wake_at).__name__}"
        )
    if not math.isfinite(seconds) or not 0 <= seconds * 1000 <= MAX_EPOCH_MS:
        raise ValueError(
            f"Expected a time between 1970 and the end of year 9999 for step '{name}', but got {wake_at!r}"
        )
    return round(seconds * 1000)


def event_id(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"Expected an event id (str) for step '{name}', but got {type(value).__name__}")
    if not 1 <= len(value) <= MAX_EVENT_ID_LENGTH:
        raise ValueError(
            f"Expected an event id of 1 to {MAX_EVENT_ID_LENGTH} characters for step '{name}', "
            f"but got one of {len(value)}"
        )
    return value


def http_url(url: object, what: str, name: str) -> str:
    if not isinstance(url, str):
        raise TypeError(f"Expected {what} to be a str for step '{name}', but got {type(url).__name__}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"Expected {what} to be an http:// or https:// URL for step '{name}', but {exc}") from None
    if not url.startswith(("http://", "https://")) or not parts.hostname:
        raise ValueError(
            f"Expected {what} to be an http:// or https:// URL with a host for step '{name}', but got {url!r}"
        )
    if any(character.isspace() or ord(character) < 32 for character in url):
        raise ValueError(f"Expected {what} without spaces or control characters for step '{name}', but got {url!r}")
    return url


def http_method(method: object, name: str) -> HttpMethod:
    if not isinstance(method, str):
        raise TypeError(f"Expected an HTTP method (str) for step '{name}', but got {type(method).__name__}")
    upper = method.upper()
    if upper not in HTTP_METHODS:
        raise ValueError(
            f"Expected an HTTP method, one of {', '.join(HTTP_METHODS)}, for step '{name}', but got {method!r}"
        )
    return cast("HttpMethod", upper)


def headers(value: Mapping[str, str] | Sequence[tuple[str, str]] | None, name: str) -> list[tuple[str, str]]:
    if value is None:
        return []
    if isinstance(value, Mapping):
        pairs = list(value.items())
    elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
        pairs = list(value)
    else:
        raise TypeError(
            f"Expected headers as a mapping or a list of (name, value) pairs for step '{name}', "
            f"but got {type(value).__name__}"
        )
    checked: list[tuple[str, str]] = []
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise TypeError(f"Expected each header as a (name, value) pair for step '{name}', but got {pair!r}")
        header, text = pair
        if not isinstance(header, str) or not isinstance(text, str):
            raise TypeError(f"Expected header names and values to be str for step '{name}', but got {pair!r}")
        if not _HEADER_NAME.match(header):
            raise ValueError(f"Expected a header name made of token characters for step '{name}', but got {header!r}")
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"Expected the value of header {header!r} on one line for step '{name}', but it breaks")
        checked.append((header, text))
    return checked


def retries(value: object, name: str, *, optional: bool) -> int | None:
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Expected retries to be an int for step '{name}', but got {type(value).__name__}")
    if not 0 <= value <= MAX_RETRIES:
        raise ValueError(f"Expected retries between 0 and {MAX_RETRIES} for step '{name}', but got {value}")
    return value


def retry_delay(value: object, name: str) -> str | None:
    """A delay rule for the engine: a rule as text (``"1000 * pow(2, retried)"``, in ms), or a fixed delay."""
    if value is None:
        return None
    if isinstance(value, str):
        if not value.strip() or len(value) > MAX_RULE_LENGTH:
            raise ValueError(
                f"Expected retry_delay as a rule of 1 to {MAX_RULE_LENGTH} characters for step '{name}', "
                f"such as '1000 * pow(2, retried)', but got {value[:40]!r}"
            )
        return value
    return str(delay_ms(value, "retry delay", name))


def label(value: object, name: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Expected label to be a str for step '{name}', but got {type(value).__name__}")
    if len(value) > MAX_LABEL_LENGTH:
        raise ValueError(
            f"Expected a label of at most {MAX_LABEL_LENGTH} characters for step '{name}', but got {len(value)}"
        )
    return value


def workflow_name(value: str, name: str) -> str:
    if not value or len(value) > MAX_WORKFLOW_NAME_LENGTH or "/" in value or value.strip() != value:
        raise ValueError(
            f"Expected a workflow name of 1 to {MAX_WORKFLOW_NAME_LENGTH} characters usable as one URL path "
            f"segment for step '{name}', but got {value!r}"
        )
    return value


def json_value(value: Any, what: str, name: str) -> Any:
    try:
        return to_json_value(value)
    except (TypeError, ValueError) as exc:
        error = TypeError if isinstance(exc, TypeError) else ValueError
        raise error(
            f"Expected {what} to be JSON serialisable for step '{name}' (dict, list, str, int, float, bool, None "
            f"or a pydantic model), but {exc}"
        ) from None


def reason(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"Expected a cancellation reason (str), but got {type(value).__name__}")
    if len(value) > MAX_REASON_LENGTH:
        raise ValueError(
            f"Expected a cancellation reason of at most {MAX_REASON_LENGTH} characters, but got {len(value)}"
        )
    return value
