"""The executor's reading of an endpoint's answer, given → when → then; and the request it sends."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stepstream.avro import Codec
from stepstream.core import (
    CallSpec,
    Cancel,
    Complete,
    Continue,
    Delivery,
    ErrorInfo,
    Fail,
    FlowControl,
    Outcome,
    PlanCall,
    PlanInvoke,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    RecordedStep,
    ReportDelivery,
    SleepFor,
    SleepUntil,
    StepKind,
    StepResult,
    Suspend,
    flow_control_problem,
)
from stepstream.core.messages import FLOW_KEY_MAX_LENGTH, FLOW_PERIOD_MAX_MS
from stepstream.executor.outcome import (
    from_response,
    from_transport_error,
    parse_retry_after,
    unrecordable_delivery,
)
from stepstream.executor.requests import request_body
from stepstream.protocol import (
    MAX_DELAY_MS,
    MAX_EPOCH_MS,
    MAX_FLOW_KEY_LENGTH,
    MAX_FLOW_LIMIT,
    MAX_FLOW_PERIOD_MS,
    DeliveryRequest,
)

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
# 200: suspend (the steps the workflow is blocked on) and cancel


def suspended(*steps: dict[str, Any]) -> Suspend:
    _, outcome = ok({"type": "suspend", "steps": list(steps)})
    assert isinstance(outcome, Suspend), f"expected a Suspend, but got {outcome}"
    return outcome


def test_suspend_on_run_steps_in_parallel_plans_each_in_order() -> None:
    outcome = suspended(
        {"kind": "run", "index": 3, "name": "charge"},
        {"kind": "run", "index": 4, "name": "reserve"},
    )

    assert outcome == Suspend(steps=(PlanRun(index=3, name="charge"), PlanRun(index=4, name="reserve")))


def test_suspend_on_a_sleep_plans_a_sleep_for_its_duration() -> None:
    outcome = suspended({"kind": "sleep", "index": 1, "name": "cool-off", "duration_ms": 60_000})

    assert outcome.steps == (PlanSleep(index=1, name="cool-off", kind=StepKind.SLEEP, duration_ms=60_000),)


def test_suspend_on_a_sleep_until_plans_a_sleep_until_its_wake_time() -> None:
    outcome = suspended({"kind": "sleep_until", "index": 2, "name": "until-monday", "wake_at_ms": T0})

    assert outcome.steps == (PlanSleep(index=2, name="until-monday", kind=StepKind.SLEEP_UNTIL, wake_at_ms=T0),)


def test_suspend_on_a_call_plans_the_call_with_its_headers_as_pairs_and_its_body_as_text() -> None:
    outcome = suspended(
        {
            "kind": "call",
            "index": 5,
            "name": "geocode",
            "url": "https://maps.example/geocode",
            "method": "POST",
            "headers": [["Authorization", "Bearer t"], ["X-Tag", "a"], ["X-Tag", "b"]],
            "body": '{"q": "Berlin"}',
            "timeout_ms": 15_000,
            "retries": 2,
            "retry_delay": "1000 * (1 + retried)",
        }
    )

    assert outcome.steps == (
        PlanCall(
            index=5,
            name="geocode",
            call=CallSpec(
                method="POST",
                url="https://maps.example/geocode",
                headers=(("Authorization", "Bearer t"), ("X-Tag", "a"), ("X-Tag", "b")),
                body='{"q": "Berlin"}',  # byte for byte as the workflow wrote it, not re-encoded
                timeout_ms=15_000,
                retries=2,
                retry_delay="1000 * (1 + retried)",
            ),
        ),
    )


def test_suspend_on_a_call_with_only_a_url_gets_the_protocols_defaults() -> None:
    outcome = suspended({"kind": "call", "index": 0, "name": "ping", "url": "http://svc.local/ping"})

    assert outcome.steps == (
        PlanCall(
            index=0,
            name="ping",
            call=CallSpec(
                method="GET",
                url="http://svc.local/ping",
                headers=(),
                body=None,
                timeout_ms=300_000,
                retries=0,
                retry_delay=None,
            ),
        ),
    )


def test_suspend_on_a_wait_plans_the_wait_for_its_event() -> None:
    outcome = suspended(
        {"kind": "wait_for_event", "index": 6, "name": "approval", "event_id": "order-42-approved", "timeout_ms": 1_000}
    )

    assert outcome.steps == (PlanWait(index=6, name="approval", event_id="order-42-approved", timeout_ms=1_000),)


def test_suspend_on_a_notify_plans_it_with_its_data_as_json_text() -> None:
    outcome = suspended(
        {
            "kind": "notify",
            "index": 7,
            "name": "tell",
            "event_id": "order-42-approved",
            "data": {"by": "ann", "ok": True},
        }
    )

    assert outcome.steps == (
        PlanNotify(index=7, name="tell", event_id="order-42-approved", data='{"by":"ann","ok":true}'),
    )


def test_suspend_on_a_notify_without_data_notifies_null() -> None:
    outcome = suspended({"kind": "notify", "index": 7, "name": "tell", "event_id": "e"})

    assert outcome.steps == (PlanNotify(index=7, name="tell", event_id="e", data="null"),)


def test_suspend_on_an_invoke_plans_the_child_run_with_its_payload_as_json_text() -> None:
    outcome = suspended(
        {
            "kind": "invoke",
            "index": 8,
            "name": "ship",
            "workflow": "shipping",
            "url": "https://shipping.example/workflows/shipping",
            "payload": {"order": 42, "items": [1, 2]},
            "headers": [["X-Tenant", "acme"]],
            "label": "order-42",
            "retries": 5,
            "retry_delay": "2000",
        }
    )

    assert outcome.steps == (
        PlanInvoke(
            index=8,
            name="ship",
            workflow="shipping",
            url="https://shipping.example/workflows/shipping",
            payload='{"order":42,"items":[1,2]}',
            headers=(("X-Tenant", "acme"),),
            label="order-42",
            retries=5,
            retry_delay="2000",
        ),
    )


def test_suspend_on_an_invoke_of_the_same_app_leaves_url_and_options_unset() -> None:
    outcome = suspended({"kind": "invoke", "index": 0, "name": "child", "workflow": "child"})

    assert outcome.steps == (
        PlanInvoke(index=0, name="child", workflow="child", url=None, payload="null", headers=(), label=None),
    )


def test_suspend_on_a_call_with_flow_control_plans_the_call_under_its_key_and_limits() -> None:
    flow = {"key": "payments-api", "rate": 10, "period_ms": 60_000, "parallelism": 2}

    outcome = suspended(
        {"kind": "call", "index": 2, "name": "capture", "url": "https://pay.example/c", "flow_control": flow}
    )

    (step,) = outcome.steps
    assert isinstance(step, PlanCall)
    assert step.call.flow == FlowControl(key="payments-api", rate=10, period_ms=60_000, parallelism=2)


def test_suspend_on_an_invoke_with_flow_control_plans_the_child_run_under_its_key_and_limits() -> None:
    flow = {"key": "receipts", "parallelism": 5}

    outcome = suspended(
        {"kind": "invoke", "index": 3, "name": "receipt", "workflow": "make-receipt", "flow_control": flow}
    )

    assert outcome.steps == (
        PlanInvoke(
            index=3,
            name="receipt",
            workflow="make-receipt",
            url=None,
            payload="null",
            headers=(),
            flow=FlowControl(key="receipts", rate=None, period_ms=1_000, parallelism=5),
        ),
    )


def test_flow_control_with_only_a_key_reaches_the_core_with_no_limits_and_the_default_period() -> None:
    outcome = suspended(
        {"kind": "call", "index": 0, "name": "c", "url": "http://x.local/", "flow_control": {"key": "k"}}
    )

    (step,) = outcome.steps
    assert isinstance(step, PlanCall)
    assert step.call.flow == FlowControl(key="k", rate=None, period_ms=1_000, parallelism=None)


def test_the_protocols_flow_control_bounds_are_the_cores() -> None:
    # An answer the protocol accepts must be a setting the core accepts: the executor does not check it again.
    at_bounds: dict[str, Any] = {
        "key": "k" * MAX_FLOW_KEY_LENGTH,
        "rate": MAX_FLOW_LIMIT,
        "period_ms": MAX_FLOW_PERIOD_MS,
        "parallelism": MAX_FLOW_LIMIT,
    }
    at_least: dict[str, Any] = {"key": "k", "rate": 1, "period_ms": 1, "parallelism": 1}

    outcome = suspended(
        {"kind": "call", "index": 0, "name": "c", "url": "http://x.local/", "flow_control": at_bounds},
        {"kind": "invoke", "index": 1, "name": "i", "workflow": "w", "flow_control": at_least},
    )

    call, invoke = outcome.steps
    assert isinstance(call, PlanCall)
    assert isinstance(invoke, PlanInvoke)
    assert call.call.flow == FlowControl(**at_bounds)
    assert invoke.flow == FlowControl(**at_least)
    assert (flow_control_problem(call.call.flow), flow_control_problem(invoke.flow)) == (None, None)
    assert (MAX_FLOW_KEY_LENGTH, MAX_FLOW_PERIOD_MS) == (FLOW_KEY_MAX_LENGTH, FLOW_PERIOD_MAX_MS)


@pytest.mark.parametrize(
    "flow",
    [
        pytest.param({"key": ""}, id="empty-key"),
        pytest.param({"key": "k" * (MAX_FLOW_KEY_LENGTH + 1)}, id="key-too-long"),
        pytest.param({"key": "k", "rate": 0}, id="rate-0"),
        pytest.param({"key": "k", "period_ms": 0}, id="period-0"),
        pytest.param({"key": "k", "period_ms": MAX_FLOW_PERIOD_MS + 1}, id="period-over-a-week"),
        pytest.param({"key": "k", "parallelism": 0}, id="parallelism-0"),
    ],
)
@pytest.mark.parametrize("kind", ["call", "invoke"])
def test_flow_control_the_core_would_refuse_is_an_invalid_response(flow: dict[str, Any], kind: str) -> None:
    step = {"kind": "call", "url": "http://x.local/"} if kind == "call" else {"kind": "invoke", "workflow": "w"}

    _, outcome = ok({"type": "suspend", "steps": [{**step, "index": 0, "name": "s", "flow_control": flow}]})

    fail = failed(outcome)
    assert (fail.error.type, fail.retryable) == ("InvalidResponse", True)
    assert "flow_control" in fail.error.message
    assert flow_control_problem(FlowControl(**flow)) is not None  # the protocol refuses no more than the core


def test_suspend_on_steps_of_every_kind_at_once_keeps_them_all_in_order() -> None:
    outcome = suspended(
        {"kind": "run", "index": 1, "name": "a"},
        {"kind": "sleep", "index": 2, "name": "b", "duration_ms": 5},
        {"kind": "call", "index": 3, "name": "c", "url": "http://x.local/"},
        {"kind": "wait_for_event", "index": 4, "name": "d", "event_id": "e", "timeout_ms": 9},
        {"kind": "notify", "index": 5, "name": "e", "event_id": "e"},
        {"kind": "invoke", "index": 6, "name": "f", "workflow": "w"},
    )

    assert [(type(step), step.index, step.name) for step in outcome.steps] == [
        (PlanRun, 1, "a"),
        (PlanSleep, 2, "b"),
        (PlanCall, 3, "c"),
        (PlanWait, 4, "d"),
        (PlanNotify, 5, "e"),
        (PlanInvoke, 6, "f"),
    ]


def test_suspend_comes_back_with_the_steps_completed_before_it() -> None:
    steps, outcome = ok(
        {
            "type": "suspend",
            "steps": [{"kind": "run", "index": 1, "name": "b"}, {"kind": "run", "index": 2, "name": "c"}],
        },
        steps=[{"index": 0, "name": "a", "output": "done"}],
    )

    assert steps == (StepResult(index=0, name="a", kind=StepKind.RUN, output='"done"'),)
    assert outcome == Suspend(steps=(PlanRun(index=1, name="b"), PlanRun(index=2, name="c")))


def test_suspend_naming_a_step_twice_fails_the_run_for_good_with_the_reason() -> None:
    _, outcome = ok(
        {
            "type": "suspend",
            "steps": [{"kind": "run", "index": 1, "name": "a"}, {"kind": "run", "index": 1, "name": "b"}],
        }
    )

    fail = failed(outcome)
    assert fail.error.type == "InvalidResponse"
    assert fail.retryable is False
    assert "[1, 1]" in fail.error.message


@pytest.mark.parametrize(
    "data",
    [float("nan"), float("inf"), {"deep": [float("-inf")]}],
    ids=["nan", "infinity", "nested-infinity"],
)
def test_notify_data_that_is_not_json_is_a_retryable_invalid_response(data: Any) -> None:
    body = json.dumps(
        {
            "next": {
                "type": "suspend",
                "steps": [{"kind": "notify", "index": 0, "name": "n", "event_id": "e", "data": data}],
            }
        }
    )

    steps, outcome = from_response(200, body.encode(), None)

    assert steps == ()
    fail = failed(outcome)
    assert (fail.error.type, fail.retryable) == ("InvalidResponse", True)


def test_invoke_payload_that_is_not_json_is_a_retryable_invalid_response() -> None:
    body = b'{"next":{"type":"suspend","steps":[{"kind":"invoke","index":0,"name":"i","workflow":"w","payload":NaN}]}}'

    _, outcome = from_response(200, body, None)

    fail = failed(outcome)
    assert (fail.error.type, fail.retryable) == ("InvalidResponse", True)


def test_cancel_with_a_reason_cancels_the_run_with_it() -> None:
    _, outcome = ok({"type": "cancel", "reason": "the order was withdrawn"})

    assert outcome == Cancel(reason="the order was withdrawn")


def test_cancel_without_a_reason_cancels_the_run() -> None:
    steps, outcome = ok({"type": "cancel"}, steps=[{"index": 0, "name": "check", "output": False}])

    assert steps == (StepResult(index=0, name="check", kind=StepKind.RUN, output="false"),)
    assert outcome == Cancel(reason=None)


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
        b'{"next": {"type": "suspend", "steps": []}}',
        b'{"next": {"type": "suspend"}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "teleport", "index": 0, "name": "x"}]}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "call", "index": 0, "name": "x", "url": "ftp://x/"}]}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "call", "index": 0, "name": "x", "url": "http://x/", '
        b'"method": "TRACE"}]}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "call", "index": 0, "name": "x", "url": "http://x/", '
        b'"timeout_ms": 0}]}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "wait_for_event", "index": 0, "name": "w", '
        b'"event_id": "", "timeout_ms": 5}]}}',
        b'{"next": {"type": "suspend", "steps": [{"kind": "sleep", "index": 0, "name": "s"}]}}',
        b'{"next": {"type": "cancel", "reason": 7}}',
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
        "suspend-on-nothing",
        "suspend-without-steps",
        "suspend-on-an-unknown-kind",
        "call-to-a-non-http-url",
        "call-with-an-unknown-method",
        "call-with-a-zero-timeout",
        "wait-without-an-event-id",
        "planned-sleep-without-duration",
        "cancel-with-a-reason-that-is-not-text",
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


def test_the_sdks_replayed_409_is_retryable_since_a_copy_of_the_request_was_accepted() -> None:
    # A proxy repeated the executor's request and the first copy's answer was lost on the way back.
    _, outcome = from_response(409, answer(error="replayed", message="accepted already"), retry_after_s=None)

    fail = failed(outcome)
    assert (fail.error.type, fail.retryable) == ("HTTP409", True)
    assert fail.error.message == "endpoint answered 409: accepted already"


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
        pytest.param(
            200,
            answer(
                next={
                    "type": "suspend",
                    "steps": [
                        {"kind": "run", "index": 1_000_000, "name": "r" * 256},
                        {"kind": "sleep", "index": 1, "name": "s", "duration_ms": MAX_DELAY_MS},
                        {"kind": "sleep_until", "index": 2, "name": "u", "wake_at_ms": MAX_EPOCH_MS},
                        {
                            "kind": "call",
                            "index": 3,
                            "name": "c",
                            "url": "http://x.local/",
                            "method": "DELETE",
                            "headers": [["A", "1"], ["A", "2"]],
                            "body": "\u00e9\u6f22",
                            "timeout_ms": MAX_DELAY_MS,
                            "retries": 100,
                            "retry_delay": "1000",
                            "flow_control": {
                                "key": "k" * MAX_FLOW_KEY_LENGTH,
                                "rate": MAX_FLOW_LIMIT,
                                "period_ms": MAX_FLOW_PERIOD_MS,
                                "parallelism": MAX_FLOW_LIMIT,
                            },
                        },
                        {"kind": "wait_for_event", "index": 4, "name": "w", "event_id": "e" * 256, "timeout_ms": 0},
                        {"kind": "notify", "index": 5, "name": "n", "event_id": "e", "data": {"x": [1, None]}},
                        {
                            "kind": "invoke",
                            "index": 6,
                            "name": "i",
                            "workflow": "w",
                            "payload": None,
                            "retries": 0,
                            "flow_control": {"key": "k", "rate": MAX_FLOW_LIMIT, "period_ms": MAX_FLOW_PERIOD_MS},
                        },
                    ],
                }
            ),
            None,
            id="suspend-on-every-kind-at-its-bounds",
        ),
        pytest.param(200, answer(next={"type": "cancel", "reason": "r" * 2_000}), None, id="cancel"),
    ],
)
def test_whatever_the_endpoint_answers_the_report_can_be_written(
    status: int, body: bytes, retry_after: str | None
) -> None:
    steps, outcome = from_response(status, body, parse_retry_after(retry_after))
    report = ReportDelivery(run_id="r", delivery_id="r/1", attempt=1, now_ms=T0, steps=steps, outcome=outcome)

    codec = Codec()
    assert codec.decode(codec.encode(report), expected=(ReportDelivery,)) == report


def test_an_unrecordable_delivery_report_becomes_a_failure_that_says_why_and_is_not_retried() -> None:
    report = ReportDelivery(
        run_id="r",
        delivery_id="r/1",
        attempt=2,
        now_ms=T0,
        steps=(StepResult(index=0, name="a", kind=StepKind.RUN, output="1"),),
        outcome=Complete(output="2"),
    )

    replaced = unrecordable_delivery(report, "its report of 2000000 bytes is larger than Kafka accepts")

    assert (replaced.run_id, replaced.delivery_id, replaced.attempt, replaced.now_ms) == ("r", "r/1", 2, T0)
    assert replaced.steps == ()
    fail = failed(replaced.outcome)
    assert (fail.error.type, fail.retryable) == ("RecordTooLarge", False)
    assert "larger than Kafka accepts" in fail.error.message


# ---------------------------------------------------------------------------------------------
# request_body


def delivery(
    *,
    payload: str = '{"order":42}',
    steps: tuple[RecordedStep, ...] = (),
    attempt: int = 2,
    execute_index: int | None = None,
    failure: ErrorInfo | None = None,
) -> Delivery:
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
        execute_index=execute_index,
        failure=failure,
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


def test_request_body_carries_recorded_steps_of_every_kind_with_their_json_outputs() -> None:
    recorded = (
        *RECORDED,
        RecordedStep(
            index=4,
            name="geocode",
            kind=StepKind.CALL,
            output='{"status":200,"headers":{"content-type":"application/json"},"body":{"lat":52.5},"error":null}',
        ),
        RecordedStep(index=5, name="approval", kind=StepKind.WAIT_FOR_EVENT, output='{"timeout":false,"data":"yes"}'),
        RecordedStep(index=6, name="tell", kind=StepKind.NOTIFY, output='["run_a","run_b"]'),
        RecordedStep(
            index=7,
            name="ship",
            kind=StepKind.INVOKE,
            output='{"run_id":"run_c","status":"completed","output":{"tracking":"T1"},"error":null}',
        ),
    )

    request = DeliveryRequest.model_validate_json(request_body(delivery(steps=recorded), budget_ms=0))

    assert [(step.index, step.kind, step.output) for step in request.steps[4:]] == [
        (
            4,
            "call",
            {"status": 200, "headers": {"content-type": "application/json"}, "body": {"lat": 52.5}, "error": None},
        ),
        (5, "wait_for_event", {"timeout": False, "data": "yes"}),
        (6, "notify", ["run_a", "run_b"]),
        (7, "invoke", {"run_id": "run_c", "status": "completed", "output": {"tracking": "T1"}, "error": None}),
    ]


def test_request_body_without_execute_index_or_failure_leaves_them_out() -> None:
    data = json.loads(request_body(delivery(), budget_ms=0))

    assert "execute_index" not in data
    assert "failure" not in data
    request = DeliveryRequest.model_validate(data)
    assert (request.execute_index, request.failure) == (None, None)


def test_request_body_of_a_delivery_that_executes_one_step_names_it() -> None:
    request = DeliveryRequest.model_validate_json(request_body(delivery(execute_index=4), budget_ms=0))

    assert request.execute_index == 4
    assert request.failure is None


def test_request_body_of_an_execute_index_of_zero_still_names_it() -> None:
    data = json.loads(request_body(delivery(execute_index=0), budget_ms=0))

    assert data["execute_index"] == 0


def test_request_body_of_a_failure_handler_delivery_carries_the_error() -> None:
    failure = ErrorInfo(type="CardDeclined", message="gave up after 4 attempts: card ending 4242 was declined")

    data = json.loads(request_body(delivery(failure=failure), budget_ms=0))

    assert data["failure"] == {
        "type": "CardDeclined",
        "message": "gave up after 4 attempts: card ending 4242 was declined",
    }
    request = DeliveryRequest.model_validate(data)
    assert request.failure is not None
    assert (request.failure.type, request.failure.message) == (failure.type, failure.message)
