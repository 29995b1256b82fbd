"""The duration grammar (``stepstream.durations``): what it reads, what it refuses, how exactly it counts,
how durations are written back, and that the api and the SDK, which both read it, agree on every text."""

from __future__ import annotations

import random
import re

import pytest

from stepstream.api.inputs import FlowControlBody, duration_ms
from stepstream.durations import MAX_DURATION_LENGTH, format_duration, parse_duration
from stepstream.sdk import FlowControl

DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        ("10s", 10_000),
        ("5m", 300_000),
        ("2h", 7_200_000),
        ("1h30m", 5_400_000),
        ("1d", DAY_MS),
        ("250ms", 250),
        ("1.5s", 1_500),
        ("1.5h", 5_400_000),
        ("0s", 0),
        ("0ms", 0),
        ("5ms", 5),  # "ms" is read before "m": five milliseconds, not five minutes and a stray "s"
        ("1m5s", 65_000),
        ("1d2h3m4s5ms", DAY_MS + 2 * 3_600_000 + 3 * 60_000 + 4_000 + 5),
        ("30m1h", 5_400_000),  # the parts add up, in any order
        ("1m1m", 120_000),
        ("007s", 7_000),
        (" 2m ", 120_000),
        ("\t1s\n", 1_000),
    ],
)
def test_a_duration_is_read_in_milliseconds(text: str, expected_ms: int) -> None:
    assert parse_duration(text) == expected_ms


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("10", id="a-number-without-a-unit"),
        pytest.param("1.5", id="a-fraction-without-a-unit"),
        pytest.param("s", id="a-unit-without-a-number"),
        pytest.param("1w", id="an-unknown-unit"),
        pytest.param("10sec", id="a-unit-in-longer-words"),
        pytest.param("1S", id="an-upper-case-unit"),
        pytest.param("1h30", id="a-last-part-without-a-unit"),
        pytest.param("5 m", id="a-space-before-the-unit"),
        pytest.param("1h 30m", id="a-space-between-parts"),
        pytest.param("-5s", id="negative"),
        pytest.param("+5s", id="a-plus-sign"),
        pytest.param(".5s", id="no-whole-part"),
        pytest.param("1.s", id="no-fraction-after-the-point"),
        pytest.param("1,5s", id="a-decimal-comma"),
        pytest.param("1e3s", id="an-exponent"),
        pytest.param("1_000ms", id="an-underscore"),
        pytest.param("infs", id="infinity"),
        pytest.param("\u0661s", id="arabic-indic-digit"),
        pytest.param("\uff11s", id="fullwidth-digit"),
        pytest.param("\u00b2s", id="superscript-two"),
        pytest.param("1\u0660s", id="an-ascii-digit-then-another-script's"),
    ],
)
def test_a_text_outside_the_grammar_is_not_a_duration(text: str) -> None:
    assert parse_duration(text) is None


def test_a_text_of_the_longest_length_is_read_and_whitespace_around_it_does_not_count() -> None:
    text = "0s" * 31 + "1s"
    assert len(text) == MAX_DURATION_LENGTH

    assert parse_duration(text) == 1_000
    assert parse_duration(f"  {text}\n") == 1_000


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("1d" * 32 + "1s", id="a-valid-form-one-part-too-long"),
        pytest.param("1" * 401 + "d", id="a-number-of-hundreds-of-digits"),
        pytest.param("x" * 65, id="not-a-duration-either"),
    ],
)
def test_a_text_over_the_longest_length_is_refused_before_it_is_read(text: str) -> None:
    with pytest.raises(ValueError, match=r"^Expected a duration of at most 64 characters such as '1h30m', but got"):
        parse_duration(text)


def test_the_refusal_of_a_text_too_long_names_what_was_expected() -> None:
    message = "Expected a flow-control period of at most 64 characters such as '1h30m', but got 80 characters"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        parse_duration("1d" * 40, what="a flow-control period")


@pytest.mark.parametrize(
    ("text", "expected_ms"),
    [
        # 8.64e19 ms: past the 2**53 a float holds exactly, where the last millisecond would be lost.
        ("999999999999d1ms", 999_999_999_999 * DAY_MS + 1),
        ("3649d23h59m59.999s", 3650 * DAY_MS - 1),
        ("0.1s", 100),  # 0.1 is no float, exactly
        # A half millisecond goes to the even one, counted exactly: 0.5015 * 1000 in floats is 501.49999…
        ("0.5015s", 502),
        ("0.5025s", 502),
        ("0.0005s", 0),
        ("0.0015s", 2),
    ],
)
def test_a_duration_is_counted_exactly_and_rounded_once(text: str, expected_ms: int) -> None:
    assert parse_duration(text) == expected_ms


@pytest.mark.parametrize(
    ("milliseconds", "expected"),
    [
        (0, "0ms"),
        (1, "1ms"),
        (250, "250ms"),
        (1_000, "1s"),
        (1_500, "1s500ms"),
        (60_000, "1m"),
        (5_400_000, "1h30m"),
        (DAY_MS, "1d"),
        (WEEK_MS, "7d"),
        (DAY_MS + 1, "1d1ms"),
        (3650 * DAY_MS - 1, "3649d23h59m59s999ms"),
    ],
)
def test_milliseconds_are_written_in_the_largest_units_they_hold(milliseconds: int, expected: str) -> None:
    assert format_duration(milliseconds) == expected


def test_a_written_duration_reads_back_to_the_same_milliseconds() -> None:
    rng = random.Random(18)
    edges = [0, 1, 999, 1_000, 59_999, 60_000, 3_599_999, 3_600_000, DAY_MS - 1, DAY_MS, WEEK_MS, 2**53 + 1]
    for milliseconds in edges + [rng.randrange(10**12) for _ in range(2_000)]:
        assert parse_duration(format_duration(milliseconds)) == milliseconds, milliseconds


def test_a_negative_number_of_milliseconds_is_not_written() -> None:
    with pytest.raises(ValueError, match=r"^Expected zero or more milliseconds, but got -5$"):
        format_duration(-5)


def test_the_api_refuses_a_number_for_a_duration_and_points_to_the_field_of_milliseconds() -> None:
    message = "Expected a duration such as '10s', '5m' or '2h', but got 10 (for milliseconds, use delay_ms)"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        duration_ms(10)


# ---------------------------------------------------------------------------------------------
# The api and the SDK read the same texts: a flow-control period written for one is taken by the other.

# Each text, and the period in milliseconds that both take it for, or None where both refuse it.
PERIODS: list[tuple[str, int | None]] = [
    ("1s", 1_000),
    ("10s", 10_000),
    ("1m", 60_000),
    ("1h30m", 5_400_000),
    ("250ms", 250),
    ("1ms", 1),
    ("1.5s", 1_500),
    ("7d", WEEK_MS),
    (" 2m ", 120_000),
    ("0.5015s", 502),  # before the one parser, the SDK counted 501 (floats) and the api 502
    ("0.0015s", 2),
    ("0.0005s", None),  # 0 ms: below the least period
    ("0s", None),
    ("8d", None),
    ("6d23h59m59.9995s", WEEK_MS),  # 604,799,999.5 ms, rounded to the even millisecond: a week, the most
    ("99999d", None),
    ("", None),
    ("10", None),
    ("1w", None),
    ("1 minute", None),
    ("-1s", None),
    ("\u0661s", None),  # an Arabic-Indic one: the SDK took it, for a second, when it read \d of every script
    ("1d" * 32 + "1s", None),  # too long
    ("0s" * 32 + "1s", None),  # a second, but too long: the SDK read it before, having no bound
    ("9" * 60 + "d", None),
]


def api_period_ms(text: str) -> int | None:
    try:
        return FlowControlBody(key="k", rate=1, period=text).flow().period_ms
    except ValueError:
        return None


def sdk_period_ms(text: str) -> int | None:
    try:
        return FlowControl("k", rate=1, period=text).period_ms
    except ValueError:
        return None


@pytest.mark.parametrize(("text", "expected_ms"), PERIODS, ids=[repr(text)[:30] for text, _ in PERIODS])
def test_the_api_and_the_sdk_take_and_refuse_the_same_periods(text: str, expected_ms: int | None) -> None:
    assert (api_period_ms(text), sdk_period_ms(text)) == (expected_ms, expected_ms)


def test_the_sdk_keeps_its_own_words_for_a_period_that_is_not_a_duration() -> None:
    message = "Expected a flow-control period such as '1s', '10s', '1m', '1h' or '1d', but got '١s'"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FlowControl("k", rate=1, period="\u0661s")


def test_the_sdk_refuses_a_period_text_too_long_naming_the_period() -> None:
    message = "Expected a flow-control period of at most 64 characters such as '1h30m', but got 66 characters"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FlowControl("k", rate=1, period="1d" * 32 + "1s")
