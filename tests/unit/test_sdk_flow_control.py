"""``FlowControl`` in the SDK: how it is built and checked, and how ``call`` and ``invoke`` carry it to
the engine, through the wire, into the core's planned steps.

Driven through ``Workflows.deliver``: given a history, when the workflow runs, then the answer is right.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest

import stepstream.sdk
from stepstream.core import FlowControl as CoreFlowControl
from stepstream.core import PlanCall, PlanInvoke, Suspend
from stepstream.executor.outcome import from_response
from stepstream.protocol import (
    MAX_FLOW_KEY_LENGTH,
    MAX_FLOW_LIMIT,
    MAX_FLOW_PERIOD_MS,
    CompleteNext,
    DeliveryRequest,
    DeliveryResponse,
    FlowControlSpec,
    PlannedCall,
    PlannedInvoke,
    PlannedSleep,
    RecordedStep,
    SuspendNext,
)
from stepstream.sdk import CallResponse, FlowControl, WorkflowContext, Workflows

WEEK = timedelta(days=7)


def request(workflow: str, *, steps: list[RecordedStep] | None = None) -> DeliveryRequest:
    return DeliveryRequest(run_id="run_1", workflow=workflow, delivery_id="delivery_1", attempt=1, steps=steps or [])


def planned(response: DeliveryResponse) -> list[Any]:
    assert isinstance(response.next, SuspendNext), response.next
    return list(response.next.steps)


@pytest.fixture
def workflows() -> Workflows:
    return Workflows(allow_unsigned=True)


def returning(workflows: Workflows, step: Callable[[WorkflowContext[Any]], Awaitable[Any]]) -> list[Any]:
    """Registers workflow 'flow' that awaits ``step(ctx)`` and keeps what it returned."""
    seen: list[Any] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        seen.append(await step(ctx))

    return seen


# Building a FlowControl


def test_flow_control_is_exported_by_the_sdk() -> None:
    assert "FlowControl" in stepstream.sdk.__all__
    assert stepstream.sdk.FlowControl is FlowControl


def test_a_flow_control_keeps_its_key_and_limits_with_a_period_of_one_second_by_default() -> None:
    flow = FlowControl("payments-api", rate=10, parallelism=2)

    assert (flow.key, flow.rate, flow.parallelism) == ("payments-api", 10, 2)
    assert flow.period == timedelta(seconds=1)
    assert flow.period_ms == 1_000


def test_a_flow_control_takes_its_arguments_by_keyword_too() -> None:
    flow = FlowControl(key="k", rate=3, period="1m", parallelism=1)

    assert flow == FlowControl("k", 3, "1m", 1)


@pytest.mark.parametrize(
    ("period", "expected_ms"),
    [
        pytest.param("1s", 1_000, id="1s"),
        pytest.param("10s", 10_000, id="10s"),
        pytest.param("1m", 60_000, id="1m"),
        pytest.param("1h", 3_600_000, id="1h"),
        pytest.param("1d", 86_400_000, id="1d"),
        pytest.param("7d", 7 * 86_400_000, id="7d-the-most"),
        pytest.param("250ms", 250, id="250ms"),
        pytest.param("1ms", 1, id="1ms-the-least"),
        pytest.param("1.5s", 1_500, id="1.5s"),
        pytest.param("1h30m", 5_400_000, id="1h30m"),
        pytest.param(" 2m ", 120_000, id="spaces-around"),
        pytest.param(1, 1_000, id="int-seconds"),
        pytest.param(0.25, 250, id="float-seconds"),
        pytest.param(7 * 86_400, 7 * 86_400_000, id="a-week-in-seconds"),
        pytest.param(timedelta(minutes=5), 300_000, id="timedelta"),
        pytest.param(timedelta(milliseconds=1), 1, id="timedelta-1ms"),
        pytest.param(WEEK, 7 * 86_400_000, id="timedelta-a-week"),
    ],
)
def test_a_period_is_a_duration_text_seconds_or_a_timedelta(period: Any, expected_ms: int) -> None:
    flow = FlowControl("k", rate=1, period=period)

    assert flow.period_ms == expected_ms
    assert flow.period == timedelta(milliseconds=expected_ms)


def test_flow_controls_with_the_same_period_written_differently_are_equal() -> None:
    written = {FlowControl("k", rate=5, period=period) for period in ("1m", "60s", 60, timedelta(minutes=1))}

    assert written == {FlowControl("k", rate=5, period=60)}


def test_a_flow_control_with_neither_limit_is_allowed_and_limits_nothing() -> None:
    flow = FlowControl("observed")

    assert (flow.rate, flow.parallelism) == (None, None)


def test_a_flow_control_is_immutable() -> None:
    flow = FlowControl("k", rate=1)

    with pytest.raises(AttributeError):
        flow.rate = 2  # type: ignore[misc]


INVALID: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("key not a str", lambda: FlowControl(7, rate=1), TypeError, "Expected a flow-control key (str), but got int"),  # type: ignore[arg-type]
    ("empty key", lambda: FlowControl("", rate=1), ValueError, "a flow-control key of 1 to 200 characters"),
    (
        "key too long",
        lambda: FlowControl("k" * (MAX_FLOW_KEY_LENGTH + 1), rate=1),
        ValueError,
        f"but got one of {MAX_FLOW_KEY_LENGTH + 1}",
    ),
    ("rate of 0", lambda: FlowControl("k", rate=0), ValueError, "a flow-control rate of 1 to"),
    ("negative rate", lambda: FlowControl("k", rate=-3), ValueError, "but got -3"),
    ("rate too high", lambda: FlowControl("k", rate=MAX_FLOW_LIMIT + 1), ValueError, "a flow-control rate of 1 to"),
    ("rate a float", lambda: FlowControl("k", rate=1.5), TypeError, "a flow-control rate (int) or None, but got float"),  # type: ignore[arg-type]
    ("rate a bool", lambda: FlowControl("k", rate=True), TypeError, "but got bool"),
    ("parallelism of 0", lambda: FlowControl("k", parallelism=0), ValueError, "a flow-control parallelism of 1 to"),
    ("parallelism a str", lambda: FlowControl("k", parallelism="2"), TypeError, "parallelism (int) or None"),  # type: ignore[arg-type]
    ("period in words", lambda: FlowControl("k", rate=1, period="1 minute"), ValueError, "such as '1s', '10s'"),
    ("period without a unit", lambda: FlowControl("k", rate=1, period="10"), ValueError, "but got '10'"),
    ("period of an unknown unit", lambda: FlowControl("k", rate=1, period="1w"), ValueError, "but got '1w'"),
    ("empty period", lambda: FlowControl("k", rate=1, period=""), ValueError, "such as '1s'"),
    ("negative period text", lambda: FlowControl("k", rate=1, period="-1s"), ValueError, "but got '-1s'"),
    ("period over a week", lambda: FlowControl("k", rate=1, period="8d"), ValueError, "from 1 ms to 7 days"),
    ("period of 0", lambda: FlowControl("k", rate=1, period=0), ValueError, "from 1 ms to 7 days, but got 0"),
    ("period of 0s", lambda: FlowControl("k", rate=1, period="0s"), ValueError, "from 1 ms to 7 days"),
    ("period under 1 ms", lambda: FlowControl("k", rate=1, period=0.0004), ValueError, "from 1 ms to 7 days"),
    ("negative period", lambda: FlowControl("k", rate=1, period=-5), ValueError, "from 1 ms to 7 days"),
    (
        "period a week and a ms",
        lambda: FlowControl("k", rate=1, period=WEEK + timedelta(milliseconds=1)),
        ValueError,
        "from 1 ms to 7 days",
    ),
    ("NaN period", lambda: FlowControl("k", rate=1, period=float("nan")), ValueError, "from 1 ms to 7 days"),
    ("infinite period", lambda: FlowControl("k", rate=1, period=float("inf")), ValueError, "from 1 ms to 7 days"),
    ("period a bool", lambda: FlowControl("k", rate=1, period=True), TypeError, "a number of seconds or a timedelta"),
    ("period a list", lambda: FlowControl("k", rate=1, period=[1]), TypeError, "but got list"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("case", "build", "error", "message"), INVALID, ids=[case[0] for case in INVALID])
def test_an_invalid_flow_control_is_refused_where_it_is_built(
    case: str, build: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as raised:
        build()

    assert type(raised.value) is error
    assert message in str(raised.value)
    assert str(raised.value).startswith("Expected")


# call and invoke carry it


@pytest.mark.asyncio
async def test_a_call_with_flow_control_plans_the_request_under_its_key(workflows: Workflows) -> None:
    returning(
        workflows,
        lambda ctx: ctx.call(
            "capture",
            "https://payments.example.com/captures",
            flow_control=FlowControl("payments-api", rate=10, period="1m", parallelism=2),
        ),
    )

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedCall(
            index=0,
            name="capture",
            url="https://payments.example.com/captures",
            flow_control=FlowControlSpec(key="payments-api", rate=10, period_ms=60_000, parallelism=2),
        )
    ]


@pytest.mark.asyncio
async def test_an_invoke_with_flow_control_plans_the_child_run_under_its_key(workflows: Workflows) -> None:
    returning(
        workflows,
        lambda ctx: ctx.invoke("receipt", "make-receipt", {"order": 1}, flow_control=FlowControl("receipts", rate=3)),
    )

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedInvoke(
            index=0,
            name="receipt",
            workflow="make-receipt",
            payload={"order": 1},
            flow_control=FlowControlSpec(key="receipts", rate=3, period_ms=1_000, parallelism=None),
        )
    ]


@pytest.mark.asyncio
async def test_steps_without_flow_control_plan_none(workflows: Workflows) -> None:
    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        await ctx.call("fetch", "https://x.example/a")
        await ctx.invoke("child", "make-receipt")

    fetched = RecordedStep(index=0, name="fetch", kind="call", output={"status": 200, "headers": {}, "body": None})
    first = planned(await workflows.deliver(request("flow")))
    second = planned(await workflows.deliver(request("flow", steps=[fetched])))

    assert [step.flow_control for step in [*first, *second]] == [None, None]


@pytest.mark.asyncio
async def test_the_flow_control_crosses_the_wire_and_reaches_the_core_as_the_engines_setting(
    workflows: Workflows,
) -> None:
    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        await ctx.call(
            "capture",
            "https://payments.example.com/captures",
            method="POST",
            flow_control=FlowControl("payments-api", rate=10, period=timedelta(hours=1), parallelism=2),
        )
        await ctx.invoke("receipt", "make-receipt", flow_control=FlowControl("receipts", parallelism=5, period="10s"))

    call_response = {"status": 200, "headers": {}, "body": None, "error": None}
    answers = [
        await workflows.deliver(request("flow")),
        await workflows.deliver(
            request("flow", steps=[RecordedStep(index=0, name="capture", kind="call", output=call_response)])
        ),
    ]
    wire = [response.model_dump_json().encode() for response in answers]

    outcomes = [from_response(200, body, None)[1] for body in wire]

    assert json.loads(wire[0])["next"]["steps"][0]["flow_control"] == {
        "key": "payments-api",
        "rate": 10,
        "period_ms": 3_600_000,
        "parallelism": 2,
    }
    call, invoke = (outcome.steps[0] for outcome in outcomes if isinstance(outcome, Suspend))
    assert isinstance(call, PlanCall)
    assert call.call.flow == CoreFlowControl(key="payments-api", rate=10, period_ms=3_600_000, parallelism=2)
    assert isinstance(invoke, PlanInvoke)
    assert invoke.flow == CoreFlowControl(key="receipts", rate=None, period_ms=10_000, parallelism=5)


@pytest.mark.asyncio
async def test_flow_control_at_its_bounds_reaches_the_core_unchanged(workflows: Workflows) -> None:
    key = "k" * MAX_FLOW_KEY_LENGTH
    returning(
        workflows,
        lambda ctx: ctx.call(
            "c",
            "https://x.example",
            flow_control=FlowControl(key, rate=MAX_FLOW_LIMIT, period=WEEK, parallelism=MAX_FLOW_LIMIT),
        ),
    )

    wire = (await workflows.deliver(request("flow"))).model_dump_json().encode()
    _, outcome = from_response(200, wire, None)

    assert isinstance(outcome, Suspend)
    step = outcome.steps[0]
    assert isinstance(step, PlanCall)
    assert step.call.flow == CoreFlowControl(
        key=key, rate=MAX_FLOW_LIMIT, period_ms=MAX_FLOW_PERIOD_MS, parallelism=MAX_FLOW_LIMIT
    )


# Replay


@pytest.mark.asyncio
async def test_a_recorded_call_replays_whatever_its_flow_control_is_now(workflows: Workflows) -> None:
    # Like a call's other options, flow control is not in the history: changing it is not nondeterminism.
    seen = returning(
        workflows,
        lambda ctx: ctx.call("fetch", "https://x.example", flow_control=FlowControl("renamed-key", parallelism=9)),
    )
    output = {"status": 200, "headers": {}, "body": "ok", "error": None}

    response = await workflows.deliver(
        request("flow", steps=[RecordedStep(index=0, name="fetch", kind="call", output=output)])
    )

    assert response.next == CompleteNext(output=None)
    assert seen == [CallResponse(status=200, headers={}, body="ok", error=None)]


# The step's argument


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "step",
    [
        pytest.param(
            lambda ctx: ctx.call("s", "https://x.example", flow_control={"key": "k", "rate": 1}),
            id="call-with-a-dict",
        ),
        pytest.param(lambda ctx: ctx.invoke("s", "child", flow_control="payments-api"), id="invoke-with-a-key"),
    ],
)
async def test_a_flow_control_argument_that_is_not_a_flow_control_raises_at_the_call_site(
    workflows: Workflows, step: Callable[[WorkflowContext[Any]], Awaitable[Any]]
) -> None:
    raised: list[Exception] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        try:
            await step(ctx)
        except TypeError as exc:
            raised.append(exc)
        await ctx.sleep("next", 1)

    response = await workflows.deliver(request("flow"))

    assert len(raised) == 1
    assert str(raised[0]).startswith("Expected flow_control to be a FlowControl for step 's'")
    assert planned(response) == [PlannedSleep(index=0, name="next", duration_ms=1_000)]  # no index was claimed
