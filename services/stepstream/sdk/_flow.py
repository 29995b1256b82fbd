"""``FlowControl``: a key and limits that throttle a ``call``'s request or an ``invoke``'s child run.

Checked when it is built, so a mistake shows where the value is written, not at the step that uses
it; every limit is the protocol's (``stepstream.protocol``), so a checked value always fits what the
engine accepts. The messages read "Expected …, but …".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from stepstream.protocol import MAX_FLOW_KEY_LENGTH, MAX_FLOW_LIMIT, MAX_FLOW_PERIOD_MS, FlowControlSpec

# The api's duration grammar: "1s", "10s", "1m", "1h", "1d", "250ms", "1.5s", "1h30m".
_UNIT_MS: Final = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_EXAMPLES: Final = "'1s', '10s', '1m', '1h' or '1d'"


@dataclass(frozen=True, slots=True, init=False)
class FlowControl:
    """Limits shared by all work under one flow-control ``key``; work over them waits, it is never refused.

    ``rate`` is the most starts in any window of ``period``, ``parallelism`` the most started and not
    yet finished; set either or both (a key with neither is counted, but holds nothing back).
    ``period`` is a duration such as ``"1s"``, ``"10s"``, ``"1m"``, ``"1h"`` or ``"1d"`` (or
    ``"1h30m"``, ``"250ms"``), a number of seconds, or a ``timedelta``, from 1 ms to 7 days; default
    one second. Pass it to ``ctx.call(..., flow_control=…)`` to throttle the engine's requests under
    ``key``, or to ``ctx.invoke(..., flow_control=…)`` to throttle every delivery of the child run.
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
        text = period.strip()
        if not _DURATION.fullmatch(text):
            raise ValueError(f"Expected a flow-control period such as {_EXAMPLES}, but got {period!r}")
        milliseconds = sum(float(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(text))
    elif isinstance(period, timedelta):
        milliseconds = period.total_seconds() * 1000
    elif isinstance(period, int | float) and not isinstance(period, bool):
        milliseconds = float(period) * 1000
    else:
        raise TypeError(
            f"Expected a flow-control period as a duration such as {_EXAMPLES}, a number of seconds or a timedelta, "
            f"but got {type(period).__name__}"
        )
    if not math.isfinite(milliseconds) or not 1 <= round(milliseconds) <= MAX_FLOW_PERIOD_MS:
        raise ValueError(f"Expected a flow-control period from 1 ms to 7 days, but got {period!r}")
    return round(milliseconds)
