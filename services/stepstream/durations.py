"""Durations as Stepstream writes them: ``"10s"``, ``"5m"``, ``"2h"``, ``"1h30m"``, ``"1d"``, ``"250ms"``, ``"1.5s"``.

One or more parts, each a number (ASCII digits, with an optional fraction) and a unit (``ms``, ``s``,
``m``, ``h``, ``d``), with nothing between the parts and no sign; whitespace around the whole is
ignored. The api's ``delay``, ``wait`` and ``flow_control.period`` and the SDK's ``FlowControl.period``
read this grammar with :func:`parse_duration`; :func:`format_duration` writes it back.

The standard library only: the SDK imports this module, and it imports nothing of the engine
(docs/decisions/0018-durations.md).
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import Final

# "1h30m15s250ms" is 13 characters. A longer text is a mistake, and refusing it before any arithmetic
# keeps a number of hundreds of digits from reaching it.
MAX_DURATION_LENGTH: Final = 64

# Largest first: the order in which format_duration writes the units.
_UNIT_MS: Final = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
# ASCII digits only: \d alone matches the digits of every script. "ms" comes before "m", so that "5ms"
# is five milliseconds, not five minutes and a stray "s".
_DURATION: Final = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+", re.ASCII)
_DURATION_PART: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", re.ASCII)


def parse_duration(text: str, *, what: str = "a duration") -> int | None:
    """``text`` in milliseconds, or None if it is not a duration of this grammar.

    Counted exactly and rounded once, to the nearest millisecond (a half to the even one): a float
    would lose milliseconds of a long duration, and a Fraction cannot overflow. None leaves the message
    to the caller, who knows what it expected there and how to quote what it got.

    Raises ValueError ("Expected …, but got …", naming ``what``) for a text of more than
    :data:`MAX_DURATION_LENGTH` characters, whatever it holds.
    """
    stripped = text.strip()
    if len(stripped) > MAX_DURATION_LENGTH:
        raise ValueError(
            f"Expected {what} of at most {MAX_DURATION_LENGTH} characters such as '1h30m', "
            f"but got {len(stripped)} characters"
        )
    if not _DURATION.fullmatch(stripped):
        return None
    return round(sum(Fraction(number) * _UNIT_MS[unit] for number, unit in _DURATION_PART.findall(stripped)))


def format_duration(milliseconds: int) -> str:
    """``milliseconds`` as a duration: each unit from days down to milliseconds that it holds, in whole
    numbers (``5_400_000`` is ``"1h30m"``, ``250`` is ``"250ms"``, ``0`` is ``"0ms"``), so that
    :func:`parse_duration` reads it back to the same number."""
    if milliseconds < 0:
        # The grammar has no sign; "0ms" for a negative number, as a loop over the units alone gives, would
        # hide the mistake that made it.
        raise ValueError(f"Expected zero or more milliseconds, but got {milliseconds}")
    parts: list[str] = []
    rest = milliseconds
    for unit, size in _UNIT_MS.items():
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts) or "0ms"
