"""The executor's reading of an endpoint's answer, given → when → then; and the request it sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepstream.avro import Codec
from stepstream.core import (
    Complete,
    Continue,
    Delivery,
    ErrorInfo,
    Fail,
    Outcome,
    RecordedStep,
    ReportDelivery,
    SleepFor,
    SleepUntil,
    StepKind,
    StepResult,
)
from stepstream.executor.outcome import from_response, from_transport_error, parse_retry_after
from stepstream.executor.service import request_body
from stepstream.protocol import DeliveryRequest

T0 = 1_700_000_000_000
MAX_MESSAGE = 2_000


def answer(**response: Any) -> bytes:
    return json.dumps(response).encode()


def ok(next_: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> tuple[tuple[StepResult, ...], Outcome]:
    body: dict[str, Any] = {"protocol": 1, "next": next_}
    if steps is not None:
        body["steps"] = steps
    return from_response(200, json.dumps(body).encode(), None)


def failed(outcome: Outcome) -> Fail:
    assert isinstance(outcome, Fail), f"expected a Fail, but got {outcome}"
    return outcome


# ---------------------------------------------------------------------------------------------
# 200: the delivery response's `next`


def test_continue_means_deliver_again() -> None:
    steps, outcome = ok({"type": "continue"})

    assert steps == ()
    assert outcome == Continue()


def test_sleep_with_a_duration_is_a_sleep_for() -> None:
    _, outcome = ok({"type": "sleep", "index": 2, "name": "cool-off", "duration_ms": 86_400_000})

    assert outcome == SleepFor(index=2, name="cool-off", duration_ms=86_400_000)


def test_sleep_of_zero_ms_is_still_a_sleep_for() -> None:
    _, outcome = ok({"type": "sleep", "index": 0, "name": "yield", "duration_ms": 0})

    assert outcome == SleepFor(index=0, name="yield", duration_ms=0)


def test_sleep_with_a_wake_time_is_a_sleep_until() -> None:
    _, outcome = ok({"type": "sleep", "index": 1, "name": "until-monday", "wake_at_ms": T0 + 5_000})

    assert outcome == SleepUntil(index=1, name="until-monday", wake_at_ms=T0 + 5_000)


def test_sleep_with_neither_duration_nor_wake_time_fails_the_run_for_good() -> None:
    _, outcome = ok({"type": "sleep", "index": 1, "name": "nap"})

    fail = failed(outcome)
    assert fail.error.type == "InvalidResponse"
    assert fail.retryable is False


def test_complete_carries_the_output_as_json_text() -> None:
    _, outcome = ok({"type": "complete", "output": {"charge_id": "ch_1", "amounts": [1, 2.5], "ok": True}})

    assert isinstance(outcome, Complete)
    assert json.loads(outcome.output) == {"charge_id": "ch_1", "amounts": [1, 2.5], "ok": True}


@pytest.mark.parametrize("output", [None, "text", 0, [], {"nested": {"x": None}}])
def test_complete_output_round_trips_as_json_whatever_its_shape(output: Any) -> None:
    _, outcome = ok({"type": "complete", "output": output})

    assert isinstance(outcome, Complete)
    assert json.loads(outcome.output) == output


def test_complete_without_output_completes_with_null() -> None:
    _, outcome = ok({"type": "complete"})

    assert outcome == Complete(output="null")


def test_fail_that_is_not_retryable_says_so_with_the_workflows_error() -> None:
    _, outcome = ok(
        {
            "type": "fail",
            "error": {"type": "CardDeclined", "message": "card ending 4242 was declined"},
            "retryable": False,
            "index": 3,
            "name": "charge",
        }
    )

    assert outcome == Fail(
        error=ErrorInfo(type="CardDeclined", message="card ending 4242 was declined"),
        retryable=False,
        retry_after_ms=None,
        step_index=3,
        step_name="charge",
    )


def test_fail_that_is_retryable_keeps_its_retry_after() -> None:
    _, outcome = ok(
        {
            "type": "fail",
            "error": {"type": "RateLimited", "message": "slow down"},
            "retryable": True,
            "retry_after_ms": 750,
        }
    )

    fail = failed(outcome)
    assert fail.retryable is True
    assert fail.retry_after_ms == 750
    assert (fail.step_index, fail.step_name) == (None, None)


def test_fail_without_retryable_is_retryable() -> None:
    _, outcome = ok({"type": "fail", "error": {"type": "ValueError", "message": "boom"}})

    fail = failed(outcome)
    assert fail.retryable is True
    assert fail.retry_after_ms is None


def test_fail_with_a_long_message_is_truncated() -> None:
    _, outcome = ok({"type": "fail", "error": {"type": "ValueError", "message": "x" * 10_000}})

    assert failed(outcome).error.message == "x" * MAX_MESSAGE


# ---------------------------------------------------------------------------------------------
# 200: the completed steps


def test_completed_steps_become_step_results_with_json_text_outputs_in_order() -> None:
    steps, outcome = ok(
        {"type": "continue"},
        steps=[
            {"index": 0, "name": "charge", "kind": "run", "output": {"charge_id": "ch_1"}},
            {"index": 1, "name": "count", "output": 7},
            {"index": 2, "name": "nothing"},
            {"index": 3, "name": "label", "output": "plain text"},
        ],
    )

    assert outcome == Continue()
    assert steps == (
        StepResult(index=0, name="charge", kind=StepKind.RUN, output='{"charge_id":"ch_1"}'),
        StepResult(index=1, name="count", kind=StepKind.RUN, output="7"),
        StepResult(index=2, name="nothing", kind=StepKind.RUN, output="null"),
        StepResult(index=3, name="label", kind=StepKind.RUN, output='"plain text"'),
    )
    assert [json.loads(step.output) for step in steps] == [{"charge_id": "ch_1"}, 7, None, "plain text"]


def test_completed_steps_come_back_with_any_next() -> None:
    steps, outcome = ok(
        {"type": "complete", "output": 1}, steps=[{"index": 4, "name": "ship", "output": {"tracking": "T1"}}]
    )

    assert steps == (StepResult(index=4, name="ship", kind=StepKind.RUN, output='{"tracking":"T1"}'),)
    assert outcome == Complete(output="1")


# ---------------------------------------------------------------------------------------------
# 200 with a body that is not a delivery response


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"{}",
        b"[]",
        b'{"next": {"type": "explode"}}',
        b'{"next": {"type": "sleep", "name": "nap"}}',
        b'{"next": {"type": "sleep", "index": 0, "name": "nap", "duration_ms": -1}}',
        b'{"next": {"type": "continue"}, "steps": [{"index": -1, "name": "x"}]}',
        b'{"protocol": 2, "next": {"type": "continue"}}',
        b"\xff\xfe\x00",
    ],
    ids=[
        "empty",
        "not-json",
        "no-next",
        "array",
        "unknown-next",
        "sleep-without-index",
        "negative-duration",
        "negative-step-index",
        "other-protocol",
        "not-utf8",
    ],
)
def test_a_200_that_is_not_a_delivery_response_is_a_retryable_invalid_response(body: bytes) -> None:
    steps, outcome = from_response(200, body, retry_after_s=30)

    assert steps == ()
    fail = failed(outcome)
    assert fail.error.type == "InvalidResponse"
    assert fail.retryable is True
    assert fail.retry_after_ms is None  # Retry-After means nothing on a 200
    assert "not a delivery response" in fail.error.message
    assert len(fail.error.message) <= MAX_MESSAGE


# ---------------------------------------------------------------------------------------------
# Errors from the endpoint


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409, 413, 422])
def test_a_client_error_fails_the_run_for_good_with_the_endpoints_message(status: int) -> None:
    body = answer(error="bad_request", message=f"the endpoint's own words for {status}")

    steps, outcome = from_response(status, body, retry_after_s=None)

    assert steps == ()
    assert outcome == Fail(
        error=ErrorInfo(
            type=f"HTTP{status}", message=f"endpoint answered {status}: the endpoint's own words for {status}"
        ),
        retryable=False,
    )


@pytest.mark.parametrize("status", [400, 401, 404, 413, 422])
def test_a_client_error_ignores_retry_after(status: int) -> None:
    _, outcome = from_response(status, answer(error="x", message="no"), retry_after_s=5)

    fail = failed(outcome)
    assert fail.retryable is False
    assert fail.retry_after_ms is None


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_a_try_again_later_answer_is_retryable_and_honours_retry_after(status: int) -> None:
    _, outcome = from_response(status, answer(error="busy", message="come back later"), retry_after_s=2.5)

    assert outcome == Fail(
        error=ErrorInfo(type=f"HTTP{status}", message=f"endpoint answered {status}: come back later"),
        retryable=True,
        retry_after_ms=2_500,
    )


@pytest.mark.parametrize("status", [429, 503])
def test_a_try_again_later_answer_without_retry_after_leaves_the_delay_to_the_backoff(status: int) -> None:
    _, outcome = from_response(status, b"", retry_after_s=None)

    fail = failed(outcome)
    assert fail.retryable is True
    assert fail.retry_after_ms is None


def test_a_retry_after_of_zero_means_at_once_not_the_backoff() -> None:
    _, outcome = from_response(503, b"", retry_after_s=0.0)

    assert failed(outcome).retry_after_ms == 0


def test_an_error_body_that_is_not_json_is_quoted_as_text() -> None:
    _, outcome = from_response(502, b"<html>Bad Gateway</html>", retry_after_s=None)

    assert failed(outcome).error.message == "endpoint answered 502: <html>Bad Gateway</html>"


def test_an_error_body_that_is_json_without_a_message_is_quoted_as_json() -> None:
    _, outcome = from_response(400, answer(detail="missing field"), retry_after_s=None)

    assert failed(outcome).error.message == 'endpoint answered 400: {"detail": "missing field"}'


def test_an_empty_error_body_says_so() -> None:
    _, outcome = from_response(500, b"", retry_after_s=None)

    assert failed(outcome).error.message == "endpoint answered 500: (empty body)"


def test_an_error_body_that_is_not_utf8_is_still_reported() -> None:
    _, outcome = from_response(500, b"\xffoops", retry_after_s=None)

    message = failed(outcome).error.message
    assert message.startswith("endpoint answered 500: ")
    assert "oops" in message


@pytest.mark.parametrize(
    "body",
    [b"y" * 50_000, answer(error="x", message="y" * 50_000), answer(detail="y" * 50_000)],
    ids=["text", "json-message", "json-without-message"],
)
def test_a_long_error_body_is_truncated(body: bytes) -> None:
    _, outcome = from_response(500, body, retry_after_s=None)

    message = failed(outcome).error.message
    assert message.startswith("endpoint answered 500: ")
    assert len(message) <= MAX_MESSAGE


# ---------------------------------------------------------------------------------------------
# Transport errors


@pytest.mark.parametrize("kind", ["Timeout", "ConnectionError"])
def test_a_transport_error_is_always_retryable(kind: str) -> None:
    outcome = from_transport_error(kind, "could not connect to app.local:80")

    assert outcome == Fail(error=ErrorInfo(type=kind, message="could not connect to app.local:80"), retryable=True)


def test_a_transport_error_with_a_long_message_is_truncated() -> None:
    outcome = from_transport_error("ConnectionError", "z" * 10_000)

    assert failed(outcome).error.message == "z" * MAX_MESSAGE


# ---------------------------------------------------------------------------------------------
# Retry-After


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("0", 0.0),
        ("120", 120.0),
        ("1.5", 1.5),
        (" 7 ", 7.0),
        ("-3", 0.0),
        ("", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
)
def test_parse_retry_after_reads_seconds_and_gives_up_on_anything_else(
    header: str | None, expected: float | None
) -> None:
    assert parse_retry_after(header) == expected


def test_retry_after_seconds_become_milliseconds_on_a_retryable_answer() -> None:
    _, outcome = from_response(429, b"", parse_retry_after("120"))

    assert failed(outcome).retry_after_ms == 120_000


# Whatever an endpoint (or a proxy in front of it) answers, the executor must be able to write its
# report: an outcome the codec refuses raises in the executor, which then never reports the delivery
# and never commits its offset, so the run hangs and the partition's commits stop behind it.
_HUGE = 10**20


@pytest.mark.parametrize(
    ("status", "body", "retry_after"),
    [
        pytest.param(503, b"", "5", id="retry-after-5"),
        pytest.param(503, b"", "inf", id="retry-after-inf"),
        pytest.param(503, b"", "1e400", id="retry-after-1e400"),
        pytest.param(429, b"", "1e20", id="retry-after-1e20"),
        pytest.param(
            200,
            answer(next={"type": "sleep", "index": 0, "name": "nap", "duration_ms": _HUGE}),
            None,
            id="sleep-duration-1e20",
        ),
        pytest.param(
            200,
            answer(next={"type": "fail", "error": {"type": "E", "message": "m"}, "retry_after_ms": _HUGE}),
            None,
            id="fail-retry-after-1e20",
        ),
        pytest.param(
            200,
            answer(steps=[{"index": _HUGE, "name": "x"}], next={"type": "continue"}),
            None,
            id="step-index-1e20",
        ),
    ],
)
def test_whatever_the_endpoint_answers_the_report_can_be_written(
    status: int, body: bytes, retry_after: str | None
) -> None:
    steps, outcome = from_response(status, body, parse_retry_after(retry_after))
    report = ReportDelivery(run_id="r", delivery_id="r/1", attempt=1, now_ms=T0, steps=steps, outcome=outcome)

    codec = Codec()
    assert codec.decode(codec.encode(report), expected=(ReportDelivery,)) == report


# ---------------------------------------------------------------------------------------------
# request_body


def delivery(*, payload: str = '{"order":42}', steps: tuple[RecordedStep, ...] = (), attempt: int = 2) -> Delivery:
    return Delivery(
        run_id="run_01",
        workflow="orders",
        url="http://app.local/workflows/orders",
        delivery_id="run_01/3",
        attempt=attempt,
        step_index=len(steps),
        payload=payload,
        steps=steps,
        headers=(("authorization", "Bearer secret"),),
    )


RECORDED = (
    RecordedStep(index=0, name="charge", kind=StepKind.RUN, output='{"charge_id":"ch_1"}'),
    RecordedStep(index=1, name="cool-off", kind=StepKind.SLEEP, output="null"),
    RecordedStep(index=2, name="until-monday", kind=StepKind.SLEEP_UNTIL, output="null"),
    RecordedStep(index=3, name="count", kind=StepKind.RUN, output="[1,2,3]"),
)


def test_request_body_is_a_delivery_request_the_sdk_accepts() -> None:
    body = request_body(delivery(steps=RECORDED), budget_ms=250)

    request = DeliveryRequest.model_validate_json(body)

    assert request.protocol == 1
    assert (request.run_id, request.workflow, request.delivery_id, request.attempt) == (
        "run_01",
        "orders",
        "run_01/3",
        2,
    )
    assert request.budget_ms == 250
    assert request.payload == {"order": 42}
    assert [(step.index, step.name, step.kind, step.output) for step in request.steps] == [
        (0, "charge", "run", {"charge_id": "ch_1"}),
        (1, "cool-off", "sleep", None),
        (2, "until-monday", "sleep_until", None),
        (3, "count", "run", [1, 2, 3]),
    ]


def test_request_body_carries_payload_and_outputs_as_json_values_not_strings() -> None:
    data = json.loads(request_body(delivery(steps=RECORDED[:1]), budget_ms=0))

    assert data["payload"] == {"order": 42}
    assert data["steps"][0]["output"] == {"charge_id": "ch_1"}
    assert not isinstance(data["payload"], str)


@pytest.mark.parametrize("payload", ["null", '"a string"', "3.5", "[]", '{"deep":{"list":[true,null]}}'])
def test_request_body_passes_any_json_payload_through(payload: str) -> None:
    request = DeliveryRequest.model_validate_json(request_body(delivery(payload=payload), budget_ms=0))

    assert request.payload == json.loads(payload)
    assert request.steps == []


def test_request_body_does_not_leak_the_delivery_headers() -> None:
    body = request_body(delivery(), budget_ms=0)

    assert b"Bearer secret" not in body
    assert b"authorization" not in body


def test_an_output_that_is_not_json_is_an_invalid_response_not_a_stored_nan() -> None:
    # given an endpoint (not the Python SDK, which refuses them) whose output holds NaN
    steps, outcome = from_response(200, b'{"protocol":1,"steps":[],"next":{"type":"complete","output":NaN}}', None)

    # then nothing unreadable is recorded: the delivery failed with a reason, to be retried
    assert steps == ()
    fail = failed(outcome)
    assert fail.error.type == "InvalidResponse"
    assert "NaN" in fail.error.message or "not JSON compliant" in fail.error.message
