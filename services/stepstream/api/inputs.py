"""What the api accepts: request bodies, durations such as ``"1h30m"`` and instants (epoch ms or ISO-8601).

Parsing errors are ``ValueError`` with a message of the form "Expected …, but got …"; the app answers
them with a 422.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

MAX_EVENT_ID_LENGTH: Final = 256
MAX_DELAY_MS: Final = 3_650 * 86_400_000  # ten years: later than that is a mistake, not a plan

_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)

Instant = StrictInt | StrictStr  # epoch milliseconds, or an ISO-8601 time with a zone


def parse_duration_ms(value: Any) -> int:
    """``"10s"``, ``"5m"``, ``"2h"``, ``"1h30m"``, ``"1d"``, ``"250ms"``, ``"1.5s"`` as milliseconds."""
    text = value.strip() if isinstance(value, str) else None
    if not text or not _DURATION.fullmatch(text):
        hint = " (for milliseconds, use delay_ms)" if isinstance(value, int | float) else ""
        raise ValueError(f"Expected a duration such as '10s', '5m' or '2h', but got {value!r}{hint}")
    total = sum(float(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(text))
    return check_delay_ms(round(total))


def check_delay_ms(delay_ms: int) -> int:
    if delay_ms > MAX_DELAY_MS:
        raise ValueError(f"Expected a delay of at most {MAX_DELAY_MS // 86_400_000} days, but got {delay_ms} ms")
    return delay_ms


def parse_instant_ms(value: int | str, name: str) -> int:
    """Epoch milliseconds (a number, or digits in a query string), or an ISO-8601 time with a zone."""
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"Expected {name} as epoch milliseconds of zero or more, but got {value}")
        return value
    text = value.strip()
    if text.isdigit():
        return int(text)
    example = "'2026-01-31T09:00:00Z'"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Expected {name} as epoch milliseconds or an ISO-8601 time such as {example}, but got {value!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"Expected {name} with a time zone, such as {example}, but {value!r} has none")
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def check_event_id(event_id: str) -> str:
    if not 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise ValueError(
            f"Expected an event id of 1 to {MAX_EVENT_ID_LENGTH} characters, but got {len(event_id)} characters"
        )
    return event_id


class TriggerBody(BaseModel):
    """``POST /v1/runs``: start a run of a workflow."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=200)
    url: str | None = Field(default=None, description="The endpoint; defaults to the registered one")
    payload: Any = None
    run_id: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:\-]+$")
    label: str | None = Field(default=None, max_length=200)
    retries: int | None = Field(default=None, ge=0, le=100)
    retry_base_ms: int | None = Field(default=None, ge=0, le=86_400_000)
    retry_delay: str | None = Field(default=None, description="A delay rule such as '1000 * pow(2, retried)'")
    failure_url: str | None = Field(default=None, max_length=2_000)
    delay_ms: int | None = Field(default=None, ge=0)
    delay: Any = Field(default=None, description="A duration such as '10s', '5m' or '1h30m'")
    not_before: Instant | None = None
    headers: dict[str, str] = Field(default_factory=dict)


class NotifyBody(BaseModel):
    """``POST /v1/events/{event_id}/notify``."""

    model_config = ConfigDict(extra="forbid")

    data: Any = None


class CancelBody(BaseModel):
    """``POST /v1/runs/{run_id}/cancel``."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=1_000)


class CancelFilterBody(BaseModel):
    """``POST /v1/runs/cancel``: cancel every run that matches and has not ended."""

    model_config = ConfigDict(extra="forbid")

    workflow: Annotated[str | None, Field(min_length=1)] = None
    label: Annotated[str | None, Field(min_length=1)] = None
    created_after: Instant | None = None
    created_before: Instant | None = None
    all: bool = False
    reason: str | None = Field(default=None, max_length=1_000)
