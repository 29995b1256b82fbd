"""The bounds on what a run may be given: one set of checks for the api and for records on ``triggers``."""

from __future__ import annotations

from dataclasses import replace

import pytest

from stepstream.core import FlowControl, TriggerRun, header_problem, headers_problem, run_id_problem, trigger_problem
from stepstream.core.limits import MAX_DELAY_MS, MAX_HEADERS

NOW = 1_700_000_000_000
TRIGGER = TriggerRun(
    run_id="run-1", workflow="onboarding", url="http://app/workflows/onboarding", payload="{}", now_ms=NOW
)


def test_a_plain_trigger_has_no_problem() -> None:
    assert trigger_problem(TRIGGER) is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"run_id": ""}, "Expected a run id of 1 to 200 characters, but got 0"),
        ({"run_id": "a b"}, "Expected a run id of letters, digits and _.:- only, but got 'a b'"),
        ({"workflow": "w" * 201}, "Expected workflow of 1 to 200 characters, but got 201"),
        ({"url": "ftp://x"}, "Expected url to be an http(s) url, but got 'ftp://x'"),
        ({"failure_url": "x" * 2_001}, "Expected failure_url of at most 2000 characters, but got 2001"),
        ({"label": "l" * 201}, "Expected label of 0 to 200 characters, but got 201"),
        ({"retries": 101}, "Expected retries from 0 to 100, but got 101"),
        ({"retries": -1}, "Expected retries from 0 to 100, but got -1"),
        ({"retry_base_ms": 2**62}, f"Expected retry_base_ms from 0 to 86400000, but got {2**62}"),
        (
            {"not_before_ms": 2**63 - 1},
            f"Expected not_before_ms within 3650 days from now ({NOW}), but got {2**63 - 1}",
        ),
        ({"not_before_ms": -1}, f"Expected not_before_ms within 3650 days from now ({NOW}), but got -1"),
        ({"headers": (("X", "v"),) * (MAX_HEADERS + 1)}, "Expected at most 64 headers, but got 65"),
        ({"headers": (("X", "v" * 8_193),)}, "Expected header 'X' to have at most 8192 characters, but got 8193"),
        (
            {"headers": tuple((f"X-{n}", "v" * 8_000) for n in range(9))},
            "Expected headers of at most 65536 characters in all, but got 72027",
        ),
        ({"flow": FlowControl(key="k", rate=2**70)}, "Expected a flow-control rate from 1 to 1,000,000,000"),
        ({"retry_delay": "import os"}, "retry_delay: "),
    ],
)
def test_a_trigger_out_of_bounds_says_which_bound(change: dict[str, object], expected: str) -> None:
    problem = trigger_problem(replace(TRIGGER, **change))  # type: ignore[arg-type]
    assert problem is not None
    assert problem.startswith(expected)


def test_the_latest_not_before_is_ten_years_from_now() -> None:
    assert trigger_problem(replace(TRIGGER, not_before_ms=NOW + MAX_DELAY_MS)) is None


def test_header_characters_are_the_executors_to_refuse_not_the_triggers() -> None:
    # A run from any producer starts, and its delivery fails with the reason (its history says why).
    assert trigger_problem(replace(TRIGGER, headers=(("X", "a\r\nb"),))) is None
    assert headers_problem((("X", "a\r\nb"),)) == (
        "Expected header 'X' to hold visible characters, spaces and tabs only (RFC 9110), but it holds '\\r'"
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Trace", "abc 123\tok"), ("Authorization", "Bearer a.b.c"), ("x!#$%&'*+-.^_`|~9", ""), ("X", "caf\xe9")],
)
def test_valid_headers(name: str, value: str) -> None:
    assert header_problem(name, value) is None


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("X", "a\nb", "but it holds '\\n'"),
        ("X", "a\x00b", "but it holds '\\x00'"),
        ("X", "snow\u2603", "but it holds '\u2603'"),
        ("Bad Name", "v", "Expected a header name made of letters"),
        ("X:Y", "v", "Expected a header name made of letters"),
        ("", "v", "Expected a header name of 1 to 256 characters, but got 0"),
    ],
)
def test_invalid_headers(name: str, value: str, expected: str) -> None:
    problem = header_problem(name, value)
    assert problem is not None
    assert expected in problem


def test_run_ids() -> None:
    assert run_id_problem("run_01HZ.x:y-z") is None
    assert run_id_problem("r" * 201) == "Expected a run id of 1 to 200 characters, but got 201"
