"""Every step primitive: its first delivery plans the right step, its recorded result comes back typed,
its arguments are checked at the call site; plus cancel and the failure handler.

Driven through ``Workflows.deliver``: given a history, when the workflow runs, then the answer is right.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from stepstream.protocol import (
    MAX_EVENT_ID_LENGTH,
    CancelNext,
    CompletedStep,
    CompleteNext,
    DeliveryRequest,
    ErrorDetail,
    FailNext,
    PlannedCall,
    PlannedInvoke,
    PlannedNotify,
    PlannedSleep,
    PlannedWait,
    RecordedStep,
    StepKindName,
    SuspendNext,
)
from stepstream.sdk import (
    CallResponse,
    FailureInfo,
    InvokeResult,
    NonRetryableError,
    RetryAfterError,
    WaitResult,
    WorkflowContext,
    Workflows,
)


class Receipt(BaseModel):
    receipt_id: str
    amount: int


def request(
    workflow: str,
    *,
    steps: list[RecordedStep] | None = None,
    payload: Any = None,
    failure: ErrorDetail | None = None,
    budget_ms: int = 0,
) -> DeliveryRequest:
    return DeliveryRequest(
        run_id="run_1",
        workflow=workflow,
        delivery_id="delivery_1",
        attempt=1,
        payload=payload,
        steps=steps or [],
        failure=failure,
        budget_ms=budget_ms,
    )


def recorded(index: int, name: str, kind: StepKindName, output: Any = None) -> RecordedStep:
    return RecordedStep(index=index, name=name, kind=kind, output=output)


def planned(response: Any) -> list[Any]:
    assert isinstance(response.next, SuspendNext), response.next
    return list(response.next.steps)


def fail_of(next_: Any) -> FailNext:
    assert isinstance(next_, FailNext), next_
    return next_


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


# call


@pytest.mark.asyncio
async def test_a_call_plans_the_request_for_the_engine(workflows: Workflows) -> None:
    returning(
        workflows,
        lambda ctx: ctx.call(
            "charge",
            "https://payments.example.com/charges",
            method="post",
            headers={"authorization": "Bearer t"},
            json={"amount": 250},
            timeout=timedelta(seconds=30),
            retries=3,
            retry_delay="1000 * pow(2, retried)",
        ),
    )

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedCall(
            index=0,
            name="charge",
            url="https://payments.example.com/charges",
            method="POST",
            headers=[("authorization", "Bearer t"), ("content-type", "application/json")],
            body='{"amount":250}',
            timeout_ms=30_000,
            retries=3,
            retry_delay="1000 * pow(2, retried)",
        )
    ]
    assert response.steps == []


@pytest.mark.asyncio
async def test_a_call_with_defaults_is_a_get_with_a_five_minute_timeout(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.call("fetch", "http://inventory.internal/items/1"))

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedCall(index=0, name="fetch", url="http://inventory.internal/items/1", timeout_ms=300_000)
    ]


@pytest.mark.asyncio
async def test_a_call_keeps_its_own_content_type_and_sends_text_or_utf8_bytes(workflows: Workflows) -> None:
    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        await asyncio.gather(
            ctx.call(
                "a", "https://x.example/a", method="PUT", json=[1], headers=[("Content-Type", "application/vnd+json")]
            ),
            ctx.call("b", "https://x.example/b", method="POST", body="plain"),
            ctx.call("c", "https://x.example/c", method="POST", body="é".encode(), retry_delay=timedelta(seconds=2)),
        )

    steps = planned(await workflows.deliver(request("flow")))

    assert [(step.headers, step.body) for step in steps] == [
        ([("Content-Type", "application/vnd+json")], "[1]"),
        ([], "plain"),
        ([], "é"),
    ]
    assert steps[2].retry_delay == "2000"


@pytest.mark.asyncio
async def test_a_recorded_call_returns_its_response_and_a_404_is_a_result(workflows: Workflows) -> None:
    seen = returning(workflows, lambda ctx: ctx.call("fetch", "https://x.example/missing"))
    output = {"status": 404, "headers": {"content-type": "application/json"}, "body": {"error": "no"}, "error": None}

    response = await workflows.deliver(request("flow", steps=[recorded(0, "fetch", "call", output)]))

    assert response.next == CompleteNext(output=None)
    assert seen == [
        CallResponse(status=404, headers={"content-type": "application/json"}, body={"error": "no"}, error=None)
    ]
    assert seen[0].ok is False


@pytest.mark.asyncio
async def test_a_call_without_an_answer_has_status_0_and_the_reason(workflows: Workflows) -> None:
    seen = returning(workflows, lambda ctx: ctx.call("fetch", "https://unreachable.example"))
    output = {"status": 0, "headers": {}, "body": None, "error": "connection refused"}

    await workflows.deliver(request("flow", steps=[recorded(0, "fetch", "call", output)]))

    assert seen == [CallResponse(status=0, headers={}, body=None, error="connection refused")]


@pytest.mark.asyncio
async def test_a_recorded_output_of_the_wrong_shape_fails_the_run(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.call("fetch", "https://x.example"))

    response = await workflows.deliver(request("flow", steps=[recorded(0, "fetch", "call", "not a response")]))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.retryable) == ("NonRetryableError", False)
    assert "Expected a recorded call step's output" in failed.error.message


# wait_for_event and notify


@pytest.mark.asyncio
async def test_a_wait_plans_its_event_id_and_timeout(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.wait_for_event("paid", "order-7", timeout=timedelta(days=1)))

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [PlannedWait(index=0, name="paid", event_id="order-7", timeout_ms=86_400_000)]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ({"timeout": False, "data": {"paid": True}}, WaitResult(data={"paid": True}, timeout=False)),
        ({"timeout": True, "data": None}, WaitResult(data=None, timeout=True)),
    ],
)
async def test_a_recorded_wait_returns_the_notification_or_the_timeout(
    workflows: Workflows, output: Any, expected: WaitResult
) -> None:
    seen = returning(workflows, lambda ctx: ctx.wait_for_event("paid", "order-7", timeout=60))

    await workflows.deliver(request("flow", steps=[recorded(0, "paid", "wait_for_event", output)]))

    assert seen == [expected]


@pytest.mark.asyncio
async def test_a_notify_plans_its_event_id_and_data(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.notify("tell", "order-7", Receipt(receipt_id="r1", amount=3)))

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedNotify(index=0, name="tell", event_id="order-7", data={"receipt_id": "r1", "amount": 3})
    ]


@pytest.mark.asyncio
async def test_a_recorded_notify_returns_the_runs_it_woke(workflows: Workflows) -> None:
    seen = returning(workflows, lambda ctx: ctx.notify("tell", "order-7"))

    await workflows.deliver(request("flow", steps=[recorded(0, "tell", "notify", ["run_a", "run_b"])]))

    assert seen == [["run_a", "run_b"]]


# invoke


@pytest.mark.asyncio
async def test_an_invoke_plans_the_child_run(workflows: Workflows) -> None:
    returning(
        workflows,
        lambda ctx: ctx.invoke(
            "child",
            "billing",
            {"order": 1},
            url="https://billing.example/workflows/billing",
            headers={"x-tenant": "acme"},
            label="nightly",
            retries=2,
            retry_delay=1.5,
        ),
    )

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [
        PlannedInvoke(
            index=0,
            name="child",
            workflow="billing",
            url="https://billing.example/workflows/billing",
            payload={"order": 1},
            headers=[("x-tenant", "acme")],
            label="nightly",
            retries=2,
            retry_delay="1500",
        )
    ]


@pytest.mark.asyncio
async def test_an_invoke_of_a_registered_function_uses_its_registered_name(workflows: Workflows) -> None:
    @workflows.workflow("send-receipt")
    async def send_receipt(ctx: WorkflowContext[Any]) -> None:
        pass

    returning(workflows, lambda ctx: ctx.invoke("child", send_receipt))

    response = await workflows.deliver(request("flow"))

    assert planned(response) == [PlannedInvoke(index=0, name="child", workflow="send-receipt")]


@pytest.mark.asyncio
async def test_a_completed_child_gives_its_output_validated_into_result_type(workflows: Workflows) -> None:
    seen = returning(workflows, lambda ctx: ctx.invoke("child", "billing", result_type=Receipt))
    output = {"run_id": "run_1.0", "status": "completed", "output": {"receipt_id": "r1", "amount": 3}, "error": None}

    await workflows.deliver(request("flow", steps=[recorded(0, "child", "invoke", output)]))

    assert seen == [
        InvokeResult(run_id="run_1.0", status="completed", output=Receipt(receipt_id="r1", amount=3), error=None)
    ]


@pytest.mark.asyncio
async def test_a_failed_child_is_a_result_with_its_error(workflows: Workflows) -> None:
    seen = returning(workflows, lambda ctx: ctx.invoke("child", "billing", result_type=Receipt))
    error = {"type": "NonRetryableError", "message": "card declined"}
    output = {"run_id": "run_1.0", "status": "failed", "output": None, "error": error}

    response = await workflows.deliver(request("flow", steps=[recorded(0, "child", "invoke", output)]))

    assert seen == [InvokeResult(run_id="run_1.0", status="failed", output=None, error=error)]
    assert response.next == CompleteNext(output=None)


# cancel


@pytest.mark.asyncio
async def test_cancel_answers_cancel_with_the_reason_and_keeps_earlier_steps(workflows: Workflows) -> None:
    after: list[str] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        total = await ctx.run("total", lambda: 0)
        if total == 0:
            ctx.cancel("nothing to charge")
        after.append("ran on")

    response = await workflows.deliver(request("flow", budget_ms=10_000))

    assert response.next == CancelNext(reason="nothing to charge")
    assert response.steps == [CompletedStep(index=0, name="total", output=0)]
    assert after == []


@pytest.mark.asyncio
async def test_cancel_inside_except_exception_still_cancels(workflows: Workflows) -> None:
    swallowed: list[BaseException] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> str:
        try:
            ctx.cancel()
        except Exception as exc:
            swallowed.append(exc)
        return "carried on"

    response = await workflows.deliver(request("flow"))

    assert response.next == CancelNext(reason=None)
    assert swallowed == []


@pytest.mark.asyncio
async def test_cancel_in_one_branch_cancels_the_run_and_plans_nothing(workflows: Workflows) -> None:
    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        async def stop() -> None:
            with contextlib.suppress(Exception):
                ctx.cancel("stop")

        await asyncio.gather(ctx.sleep("nap", 1), stop())

    response = await workflows.deliver(request("flow"))

    assert response.next == CancelNext(reason="stop")


@pytest.mark.asyncio
async def test_cancel_inside_a_step_function_cancels_the_run(workflows: Workflows) -> None:
    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        def check() -> None:
            ctx.cancel("out of stock")

        await ctx.run("check", check)

    response = await workflows.deliver(request("flow"))

    assert response.next == CancelNext(reason="out of stock")
    assert response.steps == []


# The failure handler


def with_failure_handler(workflows: Workflows, handler: Any) -> list[str]:
    ran: list[str] = []

    @workflows.workflow("flow", on_failure=handler)
    async def flow(ctx: WorkflowContext[Any]) -> None:
        ran.append("workflow")

    return ran


FAILURE = ErrorDetail(type="ConnectionError", message="card service unreachable")


@pytest.mark.asyncio
async def test_a_failure_delivery_calls_the_handler_once_with_the_error_instead_of_the_workflow(
    workflows: Workflows,
) -> None:
    handled: list[tuple[Any, FailureInfo]] = []

    async def handler(ctx: WorkflowContext[Any], error: FailureInfo) -> dict[str, str]:
        handled.append((ctx.payload, error))
        return {"alerted": error.type}

    ran = with_failure_handler(workflows, handler)

    history = [recorded(0, "prepare", "run", "ready"), recorded(1, "nap", "sleep")]
    response = await workflows.deliver(request("flow", payload={"order": 1}, steps=history, failure=FAILURE))

    assert handled == [({"order": 1}, FailureInfo(type="ConnectionError", message="card service unreachable"))]
    assert ran == []
    assert response.next == CompleteNext(output={"alerted": "ConnectionError"})
    assert response.steps == []


@pytest.mark.asyncio
async def test_a_failure_handler_that_raises_answers_fail(workflows: Workflows) -> None:
    async def handler(ctx: WorkflowContext[Any], error: FailureInfo) -> None:
        raise RetryAfterError("pager down", retry_after=10)

    with_failure_handler(workflows, handler)

    failed = fail_of((await workflows.deliver(request("flow", failure=FAILURE))).next)

    assert (failed.error.type, failed.retryable, failed.retry_after_ms) == ("RetryAfterError", True, 10_000)


@pytest.mark.asyncio
async def test_a_failure_handler_may_not_call_steps(workflows: Workflows) -> None:
    async def handler(ctx: WorkflowContext[Any], error: FailureInfo) -> None:
        await ctx.run("alert", lambda: None)

    with_failure_handler(workflows, handler)

    failed = fail_of((await workflows.deliver(request("flow", failure=FAILURE))).next)

    assert (failed.error.type, failed.retryable) == ("NonRetryableError", False)
    assert "Expected no steps in a failure handler, but it called run 'alert'" in failed.error.message


@pytest.mark.asyncio
async def test_without_a_handler_a_failure_delivery_completes_at_once(workflows: Workflows) -> None:
    ran = with_failure_handler(workflows, None)

    response = await workflows.deliver(request("flow", failure=FAILURE))

    assert response.next == CompleteNext(output=None)
    assert ran == []


def test_a_failure_handler_must_be_async(workflows: Workflows) -> None:
    from stepstream.sdk import ConfigurationError

    def handler(ctx: WorkflowContext[Any], error: FailureInfo) -> None:
        pass

    with pytest.raises(ConfigurationError, match="failure handler of workflow 'flow' to be an async function"):
        with_failure_handler(workflows, handler)


# Nondeterminism: the recorded kind or name differs


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("kind", "step"),
    [
        ("sleep", lambda ctx: ctx.call("s", "https://x.example")),
        ("call", lambda ctx: ctx.wait_for_event("s", "e", timeout=1)),
        ("wait_for_event", lambda ctx: ctx.notify("s", "e")),
        ("notify", lambda ctx: ctx.invoke("s", "child")),
        ("invoke", lambda ctx: ctx.sleep_until("s", 1_900_000_000)),
        ("sleep_until", lambda ctx: ctx.run("s", lambda: None)),
        ("run", lambda ctx: ctx.sleep("s", 1)),
    ],
)
async def test_a_recorded_kind_other_than_the_call_is_nondeterministic(
    workflows: Workflows, kind: StepKindName, step: Callable[[WorkflowContext[Any]], Awaitable[Any]]
) -> None:
    returning(workflows, step)

    failed = fail_of((await workflows.deliver(request("flow", steps=[recorded(0, "s", kind)]))).next)

    assert failed.error.type == "NondeterminismError"
    assert failed.error.message.startswith(f"Expected step 0 to be {kind} 's' as recorded in the history, but")
    assert failed.retryable is False


@pytest.mark.asyncio
async def test_a_recorded_name_other_than_the_call_is_nondeterministic(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.wait_for_event("paid", "order-7", timeout=60))
    history = [recorded(0, "shipped", "wait_for_event", {"timeout": True, "data": None})]

    failed = fail_of((await workflows.deliver(request("flow", steps=history))).next)

    assert failed.error.message == (
        "Expected step 0 to be wait_for_event 'shipped' as recorded in the history, "
        "but the code called wait_for_event 'paid'"
    )


# Arguments are checked at the call site, before the step takes an index


INVALID: list[tuple[str, Callable[[WorkflowContext[Any]], Awaitable[Any]], type[Exception], str]] = [
    ("empty step name", lambda ctx: ctx.sleep("", 1), ValueError, "Expected a step name of 1 to 256"),
    ("step name not a str", lambda ctx: ctx.sleep(3, 1), TypeError, "Expected a step name (str)"),  # type: ignore[arg-type]
    ("negative sleep", lambda ctx: ctx.sleep("s", -1), ValueError, "Expected a sleep of zero or more seconds"),
    ("NaN sleep", lambda ctx: ctx.sleep("s", float("nan")), ValueError, "Expected a finite sleep"),
    ("infinite sleep", lambda ctx: ctx.sleep("s", float("inf")), ValueError, "Expected a finite sleep"),
    ("sleep over a century", lambda ctx: ctx.sleep("s", timedelta(days=40_000)), ValueError, "at most 36600 days"),
    ("sleep as text", lambda ctx: ctx.sleep("s", "5"), TypeError, "as a timedelta or a number"),  # type: ignore[arg-type]
    ("naive datetime", lambda ctx: ctx.sleep_until("s", datetime(2030, 1, 1)), ValueError, "timezone-aware"),
    ("wake before 1970", lambda ctx: ctx.sleep_until("s", -5), ValueError, "between 1970 and"),
    ("empty event id", lambda ctx: ctx.wait_for_event("s", "", timeout=1), ValueError, "Expected an event id of 1"),
    (
        "long event id",
        lambda ctx: ctx.notify("s", "e" * (MAX_EVENT_ID_LENGTH + 1)),
        ValueError,
        f"but got one of {MAX_EVENT_ID_LENGTH + 1}",
    ),
    (
        "negative wait timeout",
        lambda ctx: ctx.wait_for_event("s", "e", timeout=-1),
        ValueError,
        "Expected a timeout of zero or more",
    ),
    ("notify data not JSON", lambda ctx: ctx.notify("s", "e", object()), TypeError, "Expected data to be JSON"),
    ("ftp url", lambda ctx: ctx.call("s", "ftp://x.example"), ValueError, "http:// or https:// URL"),
    ("url without host", lambda ctx: ctx.call("s", "https://"), ValueError, "http:// or https:// URL with a host"),
    (
        "bad method",
        lambda ctx: ctx.call("s", "https://x.example", method="FETCH"),
        ValueError,
        "Expected an HTTP method",
    ),
    (
        "body and json",
        lambda ctx: ctx.call("s", "https://x.example", body="a", json={"a": 1}),
        ValueError,
        "Expected body or json",
    ),
    ("body a dict", lambda ctx: ctx.call("s", "https://x.example", body={"a": 1}), TypeError, "pass json="),  # type: ignore[arg-type]
    ("zero timeout", lambda ctx: ctx.call("s", "https://x.example", timeout=0), ValueError, "at least 1 ms"),
    ("negative retries", lambda ctx: ctx.call("s", "https://x.example", retries=-1), ValueError, "between 0 and 100"),
    ("retries a bool", lambda ctx: ctx.call("s", "https://x.example", retries=True), TypeError, "retries to be an int"),
    (
        "header with a line break",
        lambda ctx: ctx.call("s", "https://x.example", headers={"x-a": "1\r\nx-b: 2"}),
        ValueError,
        "on one line",
    ),
    ("long retry rule", lambda ctx: ctx.call("s", "https://x.example", retry_delay="1" * 201), ValueError, "rule of 1"),
    ("empty workflow", lambda ctx: ctx.invoke("s", ""), ValueError, "Expected a workflow name of 1"),
    ("unregistered function", lambda ctx: ctx.invoke("s", asyncio.sleep), TypeError, "is not registered"),
    ("invoke url", lambda ctx: ctx.invoke("s", "child", url="child"), ValueError, "http:// or https:// URL"),
    ("long label", lambda ctx: ctx.invoke("s", "child", label="l" * 201), ValueError, "a label of at most 200"),
    ("payload not JSON", lambda ctx: ctx.invoke("s", "child", float("nan")), ValueError, "payload to be JSON"),
    ("run of a non-function", lambda ctx: ctx.run("s", 42), TypeError, "Expected a function to run"),  # type: ignore[call-overload]
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("case", "step", "error", "message"), INVALID, ids=[case[0] for case in INVALID])
async def test_an_invalid_argument_raises_at_the_call_site_without_claiming_an_index(
    workflows: Workflows,
    case: str,
    step: Callable[[WorkflowContext[Any]], Awaitable[Any]],
    error: type[Exception],
    message: str,
) -> None:
    raised: list[Exception] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> None:
        try:
            await step(ctx)
        except (TypeError, ValueError) as exc:
            raised.append(exc)
        await ctx.sleep("next", 1)

    response = await workflows.deliver(request("flow"))

    assert len(raised) == 1
    assert type(raised[0]) is error
    assert message in str(raised[0])
    assert str(raised[0]).startswith("Expected")
    assert planned(response) == [PlannedSleep(index=0, name="next", duration_ms=1_000)]


@pytest.mark.asyncio
async def test_an_uncaught_invalid_argument_fails_the_delivery_with_the_message(workflows: Workflows) -> None:
    returning(workflows, lambda ctx: ctx.sleep("never", -1))

    failed = fail_of((await workflows.deliver(request("flow"))).next)

    assert failed.error.type == "ValueError"
    assert failed.error.message == "Expected a sleep of zero or more seconds, but got -1 for step 'never'"


@pytest.mark.asyncio
async def test_a_cancel_reason_over_the_limit_is_refused(workflows: Workflows) -> None:
    raised: list[Exception] = []

    @workflows.workflow("flow")
    async def flow(ctx: WorkflowContext[Any]) -> str:
        try:
            ctx.cancel("r" * 2_001)
        except ValueError as exc:
            raised.append(exc)
        return "not cancelled"

    response = await workflows.deliver(request("flow"))

    assert response.next == CompleteNext(output="not cancelled")
    assert "Expected a cancellation reason of at most 2000 characters" in str(raised[0])


def test_the_result_types_are_immutable() -> None:
    response = CallResponse(status=200, headers={}, body="ok")

    with pytest.raises(AttributeError):
        response.status = 500  # type: ignore[misc]
    assert response.ok is True
    assert issubclass(NonRetryableError, Exception)
