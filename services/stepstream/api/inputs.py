"""What the api accepts: request bodies, durations such as ``"1h30m"`` (the grammar of :mod:`stepstream.durations`,
which the SDK reads too) and instants (epoch ms or ISO-8601).

Parsing errors are ``ValueError`` with a message of the form "Expected …, but got …"; the app answers
them with a 422. Every number is bounded here, where it is parsed, by the bounds of
:mod:`stepstream.core.limits` that the projector applies to a record on ``triggers`` too: a value past
them would fail later and farther away (an Avro ``long``, an SQLite integer, a float's range).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from stepstream.core import FlowControl, flow_control_problem
from stepstream.core.limits import (
    MAX_DELAY_MS,
    MAX_EPOCH_MS,
    MAX_LABEL_LENGTH,
    MAX_REASON_LENGTH,
    MAX_RETRIES,
    MAX_RETRY_BASE_MS,
    MAX_RUN_ID_LENGTH,
    MAX_URL_LENGTH,
    MAX_WORKFLOW_LENGTH,
    RUN_ID_PATTERN,
)
from stepstream.core.messages import FLOW_KEY_MAX_LENGTH
from stepstream.durations import parse_duration

MAX_EVENT_ID_LENGTH: Final = 256
# How long one request may wait for a run (``?wait=``). Longer waits are better made again, with the run's
# id: a connection held for many minutes meets proxies' idle timeouts and api restarts.
MAX_WAIT_MS: Final = 300_000
_SHOWN: Final = 100  # characters of a refused value quoted back in a message

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_LAST_INSTANT: Final = "9999-12-31T23:59:59.999Z"

Instant = StrictInt | StrictStr  # epoch milliseconds, or an ISO-8601 time with a zone


def shown(value: Any) -> str:
    """``value`` as a message quotes it: its repr, cut short, so a refusal never echoes a whole body."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}… ({len(text)} characters)"


def seconds(milliseconds: int) -> str:
    """A duration as a message says it: ``"1.5 s"``."""
    return f"{milliseconds / 1000:g} s"


def parse_duration_ms(value: Any) -> int:
    """``"10s"``, ``"5m"``, ``"2h"``, ``"1h30m"``, ``"1d"``, ``"250ms"``, ``"1.5s"`` as milliseconds."""
    return check_delay_ms(duration_ms(value))


def duration_ms(value: Any, *, milliseconds_field: str = "delay_ms") -> int:
    """A duration as :func:`parse_duration_ms` reads it, without its limit; a number is refused with a
    pointer to ``milliseconds_field``, the field that takes milliseconds instead."""
    milliseconds = parse_duration(value) if isinstance(value, str) else None
    if milliseconds is None:
        hint = f" (for milliseconds, use {milliseconds_field})" if isinstance(value, int | float) else ""
        raise ValueError(f"Expected a duration such as '10s', '5m' or '2h', but got {shown(value)}{hint}")
    return milliseconds


def parse_wait_ms(value: str) -> int:
    """A request's ``wait``, such as ``"30s"``: how long it may wait for a run, at most :data:`MAX_WAIT_MS`."""
    try:
        wait_ms = duration_ms(value)
    except ValueError as error:
        raise ValueError(f"wait: {error}") from None
    if wait_ms > MAX_WAIT_MS:
        raise ValueError(f"Expected wait of at most 5m ({MAX_WAIT_MS} ms), but got {shown(value)} ({wait_ms} ms)")
    return wait_ms


def check_delay_ms(delay_ms: int) -> int:
    if delay_ms > MAX_DELAY_MS:
        raise ValueError(f"Expected a delay of at most {MAX_DELAY_MS // 86_400_000} days, but got {delay_ms} ms")
    return delay_ms


def parse_instant_ms(value: int | str, name: str) -> int:
    """Epoch milliseconds (a number, or digits in a query string), or an ISO-8601 time with a zone;
    from 0 (1970) to :data:`~stepstream.core.limits.MAX_EPOCH_MS` (the end of year 9999)."""
    if isinstance(value, int):
        return _check_instant(value, name)
    text = value.strip()
    if text.isascii() and text.isdigit():  # isdigit alone takes other scripts' digits, and '²'
        if len(text.lstrip("0")) > len(str(MAX_EPOCH_MS)):  # out of range; and int() of many digits is slow
            raise ValueError(_instant_range(name, _digits(text.lstrip("0"))))
        return _check_instant(int(text), name)
    example = "'2026-01-31T09:00:00Z'"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"Expected {name} as epoch milliseconds or an ISO-8601 time such as {example}, but got {shown(value)}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"Expected {name} with a time zone, such as {example}, but {shown(value)} has none")
    return _check_instant((moment - _EPOCH) // timedelta(milliseconds=1), name)


def _check_instant(instant_ms: int, name: str) -> int:
    if not 0 <= instant_ms <= MAX_EPOCH_MS:
        raise ValueError(_instant_range(name, _digits(str(instant_ms))))
    return instant_ms


def _digits(number: str) -> str:
    """A number as a message quotes it: whole, unless it is absurdly long."""
    return number if len(number) <= 40 else f"a number of {len(number.lstrip('-'))} digits"


def _instant_range(name: str, got: str) -> str:
    return f"Expected {name} as epoch milliseconds from 0 to {MAX_EPOCH_MS} ({_LAST_INSTANT}), but got {got}"


def check_event_id(event_id: str) -> str:
    if not 1 <= len(event_id) <= MAX_EVENT_ID_LENGTH:
        raise ValueError(
            f"Expected an event id of 1 to {MAX_EVENT_ID_LENGTH} characters, but got {len(event_id)} characters"
        )
    return event_id


class FlowControlBody(BaseModel):
    """A trigger's ``flow_control``: the key its deliveries share limits under, and the limits."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=FLOW_KEY_MAX_LENGTH)
    rate: StrictInt | None = Field(default=None, description="Starts per period, at most")
    period: Any = Field(default=None, description="The rate's window as a duration such as '1m'; default 1s")
    period_ms: StrictInt | None = Field(default=None, description="The same in milliseconds")
    parallelism: StrictInt | None = Field(default=None, description="Deliveries in flight at once, at most")

    def flow(self) -> FlowControl:
        """The setting the trigger carries; ``ValueError`` ("Expected …, but …") if it is not a valid one."""
        if self.period is not None and self.period_ms is not None:
            raise ValueError("Expected at most one of flow_control.period and flow_control.period_ms, but got both")
        flow = FlowControl(key=self.key, rate=self.rate, parallelism=self.parallelism)  # the default period
        if self.period is not None:
            try:
                flow = replace(flow, period_ms=duration_ms(self.period, milliseconds_field="flow_control.period_ms"))
            except ValueError as error:
                raise ValueError(f"flow_control.period: {error}") from None
        elif self.period_ms is not None:
            flow = replace(flow, period_ms=self.period_ms)
        problem = flow_control_problem(flow)
        if problem is not None:
            raise ValueError(problem)
        return flow


class TriggerBody(BaseModel):
    """``POST /v1/runs``: start a run of a workflow."""

    model_config = ConfigDict(extra="forbid")

    workflow: str = Field(min_length=1, max_length=MAX_WORKFLOW_LENGTH)
    url: str | None = Field(
        default=None, max_length=MAX_URL_LENGTH, description="The endpoint; default the registered one"
    )
    payload: Any = None
    run_id: str | None = Field(default=None, min_length=1, max_length=MAX_RUN_ID_LENGTH, pattern=RUN_ID_PATTERN)
    label: str | None = Field(default=None, max_length=MAX_LABEL_LENGTH)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    retry_base_ms: int | None = Field(default=None, ge=0, le=MAX_RETRY_BASE_MS)
    retry_delay: str | None = Field(default=None, description="A delay rule such as '1000 * pow(2, retried)'")
    failure_url: str | None = Field(default=None, max_length=MAX_URL_LENGTH)
    delay_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    delay: Any = Field(default=None, description="A duration such as '10s', '5m' or '1h30m'")
    not_before: Instant | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="Checked by headers_problem (RFC 9110)")
    flow_control: FlowControlBody | None = None


class NotifyBody(BaseModel):
    """``POST /v1/events/{event_id}/notify``."""

    model_config = ConfigDict(extra="forbid")

    data: Any = None


class CancelBody(BaseModel):
    """``POST /v1/runs/{run_id}/cancel``."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


class RecoverBody(BaseModel):
    """``POST /v1/deadletter/{run_id}/resume`` and ``/restart``, ``DELETE /v1/deadletter/{run_id}``: optional."""

    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)


class CancelFilterBody(BaseModel):
    """``POST /v1/runs/cancel``: cancel every run that matches and has not ended."""

    model_config = ConfigDict(extra="forbid")

    workflow: Annotated[str | None, Field(min_length=1, max_length=MAX_WORKFLOW_LENGTH)] = None
    label: Annotated[str | None, Field(min_length=1, max_length=MAX_LABEL_LENGTH)] = None
    created_after: Instant | None = None
    created_before: Instant | None = None
    all: bool = False
    reason: str | None = Field(default=None, max_length=MAX_REASON_LENGTH)
