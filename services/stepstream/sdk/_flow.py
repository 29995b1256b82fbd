"""``FlowControl``: a key and limits that throttle a ``call``'s request or an ``invoke``'s child run.

Checked when it is built, so a mistake shows where the value is written, not at the step that uses
it; every limit is the protocol's (``stepstream.protocol``), so a checked value always fits what the
engine accepts. The messages read "Expected …, but …".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from stepstream.durations import parse_duration
from stepstream.protocol import MAX_FLOW_KEY_LENGTH, MAX_FLOW_LIMIT, MAX_FLOW_PERIOD_MS, FlowControlSpec

_EXAMPLES: Final = "'1s', '10s', '1m', '1h' or '1d'"


@dataclass(frozen=True, slots=True, init=False)
class FlowControl:
    """Limits shared by all work under one flow-control ``key``; work over them waits, it is never refused.

    ``rate`` is the most starts in any window of ``period``, ``parallelism`` the most started and not
    yet finished; set either or both (a key with neither is counted, but holds nothing back).
    ``period`` is a duration such as ``"1s"``, ``"10s"``, ``"1m"``, ``"1h"`` or ``"1d"`` (or
    ``"1h30m"``, ``"250ms"``: the api's grammar, :mod:`stepstream.durations`), a number of seconds,
    or a ``timedelta``, from 1 ms to 7 days; default one second. Pass it to
    ``ctx.call(..., flow_control=…)`` to throttle the engine's requests under ``key``, or to
    ``ctx.invoke(..., flow_control=…)`` to throttle every delivery of the child run.
    Work in different runs with the same key shares the limits.
    """

    key: str
    rate: int | None
    period: timedelta
    parallelism: int | None

    def __init__(
        self,
        key: str,
        rate: int | None = None,
        period: str | float | timedelta = "1s",
        parallelism: int | None = None,
    ) -> None:
        checked_key = _key(key)
        checked_rate = _limit(rate, "rate", " starts per period")
        period_ms = _period_ms(period)
        checked_parallelism = _limit(parallelism, "parallelism", "")
        object.__setattr__(self, "key", checked_key)
        object.__setattr__(self, "rate", checked_rate)
        object.__setattr__(self, "period", timedelta(milliseconds=period_ms))
        object.__setattr__(self, "parallelism", checked_parallelism)

    @property
    def period_ms(self) -> int:
        """``period`` in whole milliseconds, as the engine counts it."""
        return self.period // timedelta(milliseconds=1)


def flow_control_spec(value: object, name: str) -> FlowControlSpec | None:
    """A step's ``flow_control`` argument as the protocol carries it; None stays None."""
    if value is None:
        return None
    if not isinstance(value, FlowControl):
        raise TypeError(
            f"Expected flow_control to be a FlowControl for step '{name}', such as FlowControl('payments', rate=10), "
            f"but got {type(value).__name__}"
        )
    return FlowControlSpec(key=value.key, rate=value.rate, period_ms=value.period_ms, parallelism=value.parallelism)


def _key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"Expected a flow-control key (str), but got {type(key).__name__}")
    if not 1 <= len(key) <= MAX_FLOW_KEY_LENGTH:
        raise ValueError(
            f"Expected a flow-control key of 1 to {MAX_FLOW_KEY_LENGTH} characters, but got one of {len(key)}"
        )
    return key


def _limit(value: object, what: str, unit: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"Expected a flow-control {what} (int) or None, but got {type(value).__name__}")
    if not 1 <= value <= MAX_FLOW_LIMIT:
        raise ValueError(f"Expected a flow-control {what} of 1 to {MAX_FLOW_LIMIT}{unit}, but got {value}")
    return value


def _period_ms(period: object) -> int:
    if isinstance(period, str):
        # The api's grammar, read by the same code (exactly, to the millisecond), so a text the api takes
        # for flow_control.period is one FlowControl takes too.
        parsed = parse_duration(period, what="a flow-control period")
        if parsed is None:
            raise ValueError(f"Expected a flow-control period such as {_EXAMPLES}, but got {period!r}")
        milliseconds = parsed
    elif isinstance(period, timedelta | int | float) and not isinstance(period, bool):
        seconds = period.total_seconds() if isinstance(period, timedelta) else float(period)
        if not math.isfinite(seconds * 1000):  # round() refuses NaN and infinity
            raise ValueError(_out_of_range(period))
        milliseconds = round(seconds * 1000)
    else:
        raise TypeError(
            f"Expected a flow-control period as a duration such as {_EXAMPLES}, a number of seconds or a timedelta, "
            f"but got {type(period).__name__}"
        )
    if not 1 <= milliseconds <= MAX_FLOW_PERIOD_MS:
        raise ValueError(_out_of_range(period))
    return milliseconds


def _out_of_range(period: object) -> str:
    return f"Expected a flow-control period from 1 ms to 7 days, but got {period!r}"
