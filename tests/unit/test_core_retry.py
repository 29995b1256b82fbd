"""Retry timing: exponential backoff, and delay rules parsed (never executed) from arithmetic over ``retried``."""

from __future__ import annotations

import pytest

from stepstream.core import backoff_ms, check_delay_rule, delay_rule_ms
from stepstream.core.retry import MAX_RULE_LENGTH

MAX_MS = 3_600_000


# ---------------------------------------------------------------------------------------------
# Backoff


@pytest.mark.parametrize(("retry", "expected"), [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1_000), (200, 1_000)])
def test_backoff_doubles_from_the_base_up_to_the_maximum(retry: int, expected: int) -> None:
    assert backoff_ms(retry, 100, 1_000) == expected


def test_backoff_is_only_defined_from_the_first_retry() -> None:
    with pytest.raises(ValueError, match=r"^Expected"):
        backoff_ms(0, 100, 1_000)


def test_backoff_of_a_huge_retry_number_is_the_maximum() -> None:
    assert backoff_ms(10**9, 1, MAX_MS) == MAX_MS


# ---------------------------------------------------------------------------------------------
# Delay rules that are allowed


@pytest.mark.parametrize(
    ("rule", "delays"),
    [
        ("1000 * pow(2, retried)", [1_000, 2_000, 4_000, 8_000]),
        ("min(60000, 500 + retried * 1000)", [500, 1_500, 2_500, 3_500]),
        ("max(100, 1000 - retried * 400)", [1_000, 600, 200, 100]),
        ("1000", [1_000, 1_000, 1_000, 1_000]),
        ("2 ** retried * 10", [10, 20, 40, 80]),
        ("(retried + 1) * 1.5", [1, 3, 4, 6]),  # fractions of a ms are cut off
        ("retried % 2 * 100", [0, 100, 0, 100]),
        ("1000 / (retried + 1)", [1_000, 500, 333, 250]),
        ("-(-retried) * +10", [0, 10, 20, 30]),
        ("abs(retried - 2) * 10", [20, 10, 0, 10]),
        ("sqrt(retried) * 100", [0, 100, 141, 173]),
        ("floor(exp(retried))", [1, 2, 7, 20]),
        ("ceil(retried / 2) * 10", [0, 10, 10, 20]),
        ("round(retried * 2.6)", [0, 3, 5, 8]),
    ],
)
def test_a_rule_gives_the_delay_before_each_retry(rule: str, delays: list[int]) -> None:
    check_delay_rule(rule)

    assert [delay_rule_ms(rule, retried=retried, max_ms=MAX_MS) for retried in range(4)] == delays


def test_whitespace_and_parentheses_are_allowed() -> None:
    assert delay_rule_ms("  ( ( 1000 ) * ( retried + 1 ) )  ", retried=1, max_ms=MAX_MS) == 2_000


# ---------------------------------------------------------------------------------------------
# Delay rules that are refused, with a message that says why


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("__import__('os').system('rm -rf /')", "Expected calls of abs, ceil, exp, floor, max, min, pow"),
        ("os.system(1)", "Expected calls of"),
        ("print(1)", "Expected calls of"),
        ("os.sep", "Expected a delay rule of numbers"),  # an attribute
        ("x * 1000", "Expected only the variable 'retried'"),
        ("retries * 1000", "Expected only the variable 'retried'"),
        ("'1000'", "Expected only numbers"),
        ("True", "Expected only numbers"),
        ("1j", "Expected only numbers"),
        ("[1000][0]", "Expected a delay rule of numbers"),
        ("lambda: 1", "Expected a delay rule of numbers"),
        ("1000 if retried else 10", "Expected a delay rule of numbers"),
        ("retried > 1", "Expected a delay rule of numbers"),
        ("retried // 2", "Expected a delay rule of numbers"),
        ("1 << retried", "Expected a delay rule of numbers"),
        ("round(1.5, ndigits=1)", "Expected a delay rule of numbers"),  # keyword arguments
        ("(retried)(1)", "Expected calls of"),
        ("1000 *", "Expected a delay rule such as"),
        ("", "Expected a delay rule such as"),
        ("retried = 1", "Expected a delay rule such as"),
        ("1" * (MAX_RULE_LENGTH + 1), f"Expected a delay rule of at most {MAX_RULE_LENGTH} characters"),
    ],
)
def test_a_rule_outside_the_grammar_is_refused(rule: str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^Expected") as refused:
        check_delay_rule(rule)

    assert str(refused.value).startswith(message)
    with pytest.raises(ValueError, match=r"^Expected"):
        delay_rule_ms(rule, retried=0, max_ms=MAX_MS)


@pytest.mark.parametrize(
    "rule",
    ["1 / 0", "retried % 0", "sqrt(-1)", "pow", "min()", "round(1, 2, 3)", "(-8) ** 0.5"],
)
def test_a_rule_that_gives_no_number_for_the_first_retry_is_refused(rule: str) -> None:
    with pytest.raises(ValueError, match=r"^Expected the delay rule .* to give a number, but "):
        check_delay_rule(rule)


def test_a_rule_that_gives_nan_is_refused() -> None:
    with pytest.raises(ValueError, match=r"gives NaN"):
        check_delay_rule("1e308 * 10 - 1e308 * 10")


def test_a_rule_that_only_fails_for_a_later_retry_passes_the_check_but_not_that_retry() -> None:
    rule = "1000 / (1 - retried)"

    check_delay_rule(rule)

    assert delay_rule_ms(rule, retried=0, max_ms=MAX_MS) == 1_000
    with pytest.raises(ValueError, match=r"^Expected the delay rule"):
        delay_rule_ms(rule, retried=1, max_ms=MAX_MS)


# ---------------------------------------------------------------------------------------------
# Clamping and overflow


@pytest.mark.parametrize("rule", ["-1000", "100 - retried * 1000", "-exp(100)"])
def test_a_negative_delay_is_no_delay(rule: str) -> None:
    assert delay_rule_ms(rule, retried=3, max_ms=MAX_MS) == 0


@pytest.mark.parametrize("rule", ["1000 * pow(2, retried)", "retried * 1e12", "1e400"])
def test_a_delay_past_the_maximum_is_the_maximum(rule: str) -> None:
    assert delay_rule_ms(rule, retried=40, max_ms=MAX_MS) == MAX_MS


@pytest.mark.parametrize(
    "rule",
    [
        "10 ** 400",
        "pow(10, 400)",
        "exp(1000)",
        "2 ** (retried * 5000)",  # refused before it is computed: the exponent is too large
        "9 ** 9 ** 9",
        "1e308 * 10",
        "floor(1e308 * 10)",
        "round(exp(1000))",
        "pow(pow(pow(10, 10), 10), 10) * 1e300",
    ],
)
def test_a_rule_that_overflows_gives_the_maximum(rule: str) -> None:
    check_delay_rule(rule)

    assert delay_rule_ms(rule, retried=1, max_ms=MAX_MS) == MAX_MS


def test_the_maximum_bounds_every_rule() -> None:
    assert delay_rule_ms("1000 * pow(2, retried)", retried=3, max_ms=5_000) == 5_000
    assert delay_rule_ms("1000 * pow(2, retried)", retried=3, max_ms=0) == 0
