"""The SDK's replay machine: given a history, when the workflow runs from the top, then the answer is right.

Driven through ``Workflows.deliver``, which is everything the ASGI app does after checking the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ValidationError

import stepstream.sdk
from stepstream.errors import StepstreamError
from stepstream.protocol import (
    CompletedStep,
    CompleteNext,
    ContinueNext,
    DeliveryRequest,
    FailNext,
    PlannedSleep,
    PlannedSleepUntil,
    RecordedStep,
    SuspendNext,
)
from stepstream.sdk import (
    ConfigurationError,
    NondeterminismError,
    NonRetryableError,
    RetryAfterError,
    StepstreamSDKError,
    WorkflowContext,
    Workflows,
)


class Order(BaseModel):
    order_id: str
    amount: int


class ManualMonotonic:
    """A monotonic clock the test moves by hand, so budget decisions do not depend on real timing."""

    def __init__(self) -> None:
        self.seconds = 100.0

    def __call__(self) -> float:
        return self.seconds


class Calls:
    """Step functions that count how often they really ran."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def step(self, name: str, result: Any = None, clock: ManualMonotonic | None = None, takes_ms: int = 0) -> Any:
        def function() -> Any:
            self.count[name] = self.count.get(name, 0) + 1
            if clock is not None:
                clock.seconds += takes_ms / 1000
            return result

        return function


def request(
    workflow: str,
    *,
    steps: list[RecordedStep] | None = None,
    payload: Any = None,
    budget_ms: int = 0,
    attempt: int = 1,
) -> DeliveryRequest:
    return DeliveryRequest(
        run_id="run_1",
        workflow=workflow,
        delivery_id="delivery_1",
        attempt=attempt,
        payload=payload,
        steps=steps or [],
        budget_ms=budget_ms,
    )


def recorded(
    index: int, name: str, output: Any = None, kind: Literal["run", "sleep", "sleep_until"] = "run"
) -> RecordedStep:
    return RecordedStep(index=index, name=name, kind=kind, output=output)


def fail_of(next_: Any) -> FailNext:
    assert isinstance(next_, FailNext), next_
    return next_


@pytest.fixture
def workflows() -> Workflows:
    return Workflows(allow_unsigned=True)


@pytest.fixture
def calls() -> Calls:
    return Calls()


def three_steps(workflows: Workflows, calls: Calls, clock: ManualMonotonic | None = None, takes_ms: int = 0) -> None:
    @workflows.workflow("three")
    async def three(ctx: WorkflowContext[Any]) -> list[Any]:
        first = await ctx.run("first", calls.step("first", 1, clock, takes_ms))
        second = await ctx.run("second", calls.step("second", 2, clock, takes_ms))
        third = await ctx.run("third", calls.step("third", 3, clock, takes_ms))
        return [first, second, third]


# Fresh runs, budgets and replays.


@pytest.mark.asyncio
async def test_a_fresh_run_with_no_budget_executes_only_its_first_step(workflows: Workflows, calls: Calls) -> None:
    three_steps(workflows, calls)

    response = await workflows.deliver(request("three"))

    assert calls.count == {"first": 1}
    assert response.steps == [CompletedStep(index=0, name="first", output=1)]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_a_budget_lets_one_delivery_execute_several_steps(workflows: Workflows, calls: Calls) -> None:
    three_steps(workflows, calls)

    response = await workflows.deliver(request("three", budget_ms=10_000), clock=ManualMonotonic())

    assert calls.count == {"first": 1, "second": 1, "third": 1}
    assert [step.index for step in response.steps] == [0, 1, 2]
    assert response.next == CompleteNext(output=[1, 2, 3])


@pytest.mark.asyncio
async def test_a_spent_budget_suspends_before_the_next_step(workflows: Workflows, calls: Calls) -> None:
    clock = ManualMonotonic()
    three_steps(workflows, calls, clock, takes_ms=60)

    response = await workflows.deliver(request("three", budget_ms=100), clock=clock)

    # 60 ms after the first step is under the budget; 120 ms after the second is not.
    assert calls.count == {"first": 1, "second": 1}
    assert [step.name for step in response.steps] == ["first", "second"]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_the_first_unrecorded_step_runs_even_if_the_budget_is_already_spent(
    workflows: Workflows, calls: Calls
) -> None:
    clock = ManualMonotonic()
    three_steps(workflows, calls, clock, takes_ms=500)

    response = await workflows.deliver(request("three", budget_ms=1), clock=clock)

    assert calls.count == {"first": 1}
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_recorded_steps_return_their_outputs_without_running_again(workflows: Workflows, calls: Calls) -> None:
    three_steps(workflows, calls)

    response = await workflows.deliver(
        request("three", steps=[recorded(0, "first", "one"), recorded(1, "second", {"two": 2})])
    )

    assert calls.count == {"third": 1}
    assert response.steps == [CompletedStep(index=2, name="third", output=3)]
    assert response.next == CompleteNext(output=["one", {"two": 2}, 3])


@pytest.mark.asyncio
async def test_a_fully_recorded_run_completes_without_running_anything(workflows: Workflows, calls: Calls) -> None:
    three_steps(workflows, calls)

    response = await workflows.deliver(
        request("three", steps=[recorded(0, "first", 1), recorded(1, "second", 2), recorded(2, "third", 3)])
    )

    assert calls.count == {}
    assert response.steps == []
    assert response.next == CompleteNext(output=[1, 2, 3])


@pytest.mark.asyncio
async def test_sync_and_async_step_functions_get_their_arguments(workflows: Workflows) -> None:
    def add(left: int, right: int, *, times: int = 1) -> int:
        return (left + right) * times

    async def greet(name: str, *, punctuation: str) -> str:
        await asyncio.sleep(0)
        return f"hello {name}{punctuation}"

    @workflows.workflow
    async def arguments(ctx: WorkflowContext[Any]) -> list[Any]:
        total = await ctx.run("add", add, 2, 3, times=10)
        greeting = await ctx.run("greet", greet, "ada", punctuation="!")
        return [total, greeting]

    response = await workflows.deliver(request("arguments", budget_ms=10_000))

    assert response.next == CompleteNext(output=[50, "hello ada!"])


# Nondeterminism.


@pytest.mark.asyncio
async def test_a_different_step_name_than_recorded_fails_the_run_as_nondeterministic(
    workflows: Workflows, calls: Calls
) -> None:
    three_steps(workflows, calls)

    response = await workflows.deliver(request("three", steps=[recorded(0, "first", 1), recorded(1, "charge", 2)]))

    failed = fail_of(response.next)
    assert failed.error.type == "NondeterminismError"
    assert failed.error.message == (
        "Expected step 1 to be run 'charge' as recorded in the history, but the code called run 'second'"
    )
    assert failed.retryable is False
    assert (failed.index, failed.name) == (1, "second")
    assert calls.count == {}


@pytest.mark.asyncio
async def test_a_different_step_kind_than_recorded_fails_the_run_as_nondeterministic(workflows: Workflows) -> None:
    @workflows.workflow
    async def waits(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep("wait", 5)

    response = await workflows.deliver(request("waits", steps=[recorded(0, "wait", "charged")]))

    failed = fail_of(response.next)
    assert failed.error.type == "NondeterminismError"
    assert failed.error.message == (
        "Expected step 0 to be run 'wait' as recorded in the history, but the code called sleep 'wait'"
    )
    assert failed.retryable is False


@pytest.mark.asyncio
async def test_catching_the_nondeterminism_error_does_not_change_the_answer(workflows: Workflows) -> None:
    @workflows.workflow
    async def stubborn(ctx: WorkflowContext[Any]) -> str:
        with contextlib.suppress(NondeterminismError):
            await ctx.run("renamed", lambda: 1)
        return "carried on"

    response = await workflows.deliver(request("stubborn", steps=[recorded(0, "original", 1)]))

    assert fail_of(response.next).error.type == "NondeterminismError"


@pytest.mark.asyncio
async def test_returning_before_reaching_recorded_steps_is_nondeterministic(workflows: Workflows) -> None:
    @workflows.workflow
    async def shortened(ctx: WorkflowContext[Any]) -> str:
        await ctx.run("first", lambda: 1)
        return "done early"

    response = await workflows.deliver(request("shortened", steps=[recorded(0, "first", 1), recorded(1, "second", 2)]))

    failed = fail_of(response.next)
    assert failed.error.type == "NondeterminismError"
    assert "step 1 to be run 'second'" in failed.error.message
    assert failed.retryable is False


# Sleeps.


@pytest.mark.asyncio
async def test_an_unrecorded_sleep_suspends_with_its_duration(workflows: Workflows) -> None:
    @workflows.workflow
    async def naps(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("first", lambda: 1)
        await ctx.sleep("cool-off", timedelta(days=1, milliseconds=5))

    response = await workflows.deliver(request("naps"))

    assert response.steps == [CompletedStep(index=0, name="first", output=1)]
    assert response.next == SuspendNext(steps=[PlannedSleep(index=1, name="cool-off", duration_ms=86_400_005)])


@pytest.mark.asyncio
async def test_a_sleep_given_in_seconds_is_sent_in_milliseconds(workflows: Workflows) -> None:
    @workflows.workflow
    async def naps(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep("short", 1.5)

    response = await workflows.deliver(request("naps"))

    assert response.next == SuspendNext(steps=[PlannedSleep(index=0, name="short", duration_ms=1500)])


@pytest.mark.asyncio
async def test_sleep_until_a_datetime_suspends_with_its_wake_time(workflows: Workflows) -> None:
    nine = datetime(2030, 1, 2, 9, 0, tzinfo=timezone(timedelta(hours=2)))

    @workflows.workflow
    async def alarm(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep_until("at-nine", nine)

    response = await workflows.deliver(request("alarm"))

    wake_at_ms = int(datetime(2030, 1, 2, 7, 0, tzinfo=UTC).timestamp() * 1000)
    assert response.next == SuspendNext(steps=[PlannedSleepUntil(index=0, name="at-nine", wake_at_ms=wake_at_ms)])


@pytest.mark.asyncio
async def test_sleep_until_epoch_seconds_suspends_with_its_wake_time(workflows: Workflows) -> None:
    @workflows.workflow
    async def alarm(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep_until("later", 1_900_000_000.25)

    response = await workflows.deliver(request("alarm"))

    assert response.next == SuspendNext(steps=[PlannedSleepUntil(index=0, name="later", wake_at_ms=1_900_000_000_250)])


@pytest.mark.asyncio
async def test_a_recorded_sleep_is_passed_and_the_next_step_runs(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def naps(ctx: WorkflowContext[Any]) -> str:
        await ctx.sleep("nap", 60)
        await ctx.sleep_until("alarm", 1_900_000_000)
        return str(await ctx.run("after", calls.step("after", "awake")))

    response = await workflows.deliver(
        request("naps", steps=[recorded(0, "nap", kind="sleep"), recorded(1, "alarm", kind="sleep_until")])
    )

    assert calls.count == {"after": 1}
    assert response.steps == [CompletedStep(index=2, name="after", output="awake")]
    assert response.next == CompleteNext(output="awake")


@pytest.mark.asyncio
async def test_a_naive_datetime_fails_the_delivery_with_a_clear_message(workflows: Workflows) -> None:
    @workflows.workflow
    async def alarm(ctx: WorkflowContext[Any]) -> None:
        await ctx.sleep_until("at-nine", datetime(2030, 1, 2, 9, 0))  # naive: the mistake under test

    response = await workflows.deliver(request("alarm"))

    failed = fail_of(response.next)
    assert failed.error.type == "ValueError"
    assert "timezone-aware" in failed.error.message


# Completion and failures.


@pytest.mark.asyncio
async def test_returning_completes_the_run_with_the_output(workflows: Workflows) -> None:
    @workflows.workflow
    async def answer(ctx: WorkflowContext[Any]) -> Order:
        return Order(order_id="o_1", amount=3)

    response = await workflows.deliver(request("answer"))

    assert response.steps == []
    assert response.next == CompleteNext(output={"order_id": "o_1", "amount": 3})


@pytest.mark.asyncio
async def test_a_failing_step_fails_the_delivery_retryably_and_keeps_earlier_steps(
    workflows: Workflows, calls: Calls
) -> None:
    def broken() -> None:
        raise ConnectionError("card service unreachable")

    @workflows.workflow
    async def flaky(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("first", calls.step("first", 1))
        await ctx.run("charge", broken)
        await ctx.run("never", calls.step("never"))

    response = await workflows.deliver(request("flaky", budget_ms=10_000))

    assert response.steps == [CompletedStep(index=0, name="first", output=1)]
    failed = fail_of(response.next)
    assert failed.error.type == "ConnectionError"
    assert failed.error.message == "card service unreachable"
    assert failed.retryable is True
    assert failed.retry_after_ms is None
    assert (failed.index, failed.name) == (1, "charge")
    assert "never" not in calls.count


@pytest.mark.asyncio
async def test_a_non_retryable_error_in_a_step_fails_the_run_now(workflows: Workflows) -> None:
    async def declined() -> None:
        raise NonRetryableError("card declined")

    @workflows.workflow
    async def pay(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("charge", declined)

    response = await workflows.deliver(request("pay"))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.error.message, failed.retryable) == ("NonRetryableError", "card declined", False)
    assert (failed.index, failed.name) == (0, "charge")


@pytest.mark.asyncio
async def test_a_subclass_of_non_retryable_error_is_terminal_under_its_own_name(workflows: Workflows) -> None:
    class CardDeclined(NonRetryableError):
        pass

    def declined() -> None:
        raise CardDeclined("insufficient funds")

    @workflows.workflow
    async def pay(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("charge", declined)

    failed = fail_of((await workflows.deliver(request("pay"))).next)

    assert (failed.error.type, failed.retryable) == ("CardDeclined", False)


@pytest.mark.asyncio
async def test_a_retry_after_error_asks_for_a_retry_after_its_delay(workflows: Workflows) -> None:
    def rate_limited() -> None:
        raise RetryAfterError("rate limited", retry_after=timedelta(seconds=30))

    @workflows.workflow
    async def pay(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("charge", rate_limited)

    failed = fail_of((await workflows.deliver(request("pay"))).next)

    assert (failed.error.type, failed.retryable, failed.retry_after_ms) == ("RetryAfterError", True, 30_000)


@pytest.mark.asyncio
async def test_an_exception_in_workflow_code_outside_steps_fails_without_a_step(workflows: Workflows) -> None:
    @workflows.workflow
    async def buggy(ctx: WorkflowContext[Any]) -> None:
        value = await ctx.run("first", lambda: {"a": 1})
        value["missing"]

    response = await workflows.deliver(request("buggy"))

    assert response.steps == [CompletedStep(index=0, name="first", output={"a": 1})]
    failed = fail_of(response.next)
    assert (failed.error.type, failed.error.message, failed.retryable) == ("KeyError", "'missing'", True)
    assert (failed.index, failed.name) == (None, None)


@pytest.mark.asyncio
async def test_retry_after_in_workflow_code_is_honoured_too(workflows: Workflows) -> None:
    @workflows.workflow
    async def later(ctx: WorkflowContext[Any]) -> None:
        raise RetryAfterError("not yet", retry_after=2.5)

    failed = fail_of((await workflows.deliver(request("later"))).next)

    assert (failed.retryable, failed.retry_after_ms) == (True, 2500)


@pytest.mark.asyncio
async def test_catching_a_step_failure_does_not_turn_it_into_success(workflows: Workflows, calls: Calls) -> None:
    def broken() -> None:
        raise RuntimeError("boom")

    @workflows.workflow
    async def swallow(ctx: WorkflowContext[Any]) -> str:
        with contextlib.suppress(RuntimeError):
            await ctx.run("broken", broken)
        await ctx.run("after", calls.step("after"))
        return "pretend all is well"

    response = await workflows.deliver(request("swallow", budget_ms=10_000))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.index, failed.name) == ("RuntimeError", 0, "broken")
    assert response.steps == []
    assert calls.count == {}


@pytest.mark.asyncio
async def test_except_exception_in_user_code_cannot_swallow_a_suspension(workflows: Workflows, calls: Calls) -> None:
    reached_after_suspension: list[str] = []

    @workflows.workflow
    async def careful(ctx: WorkflowContext[Any]) -> str:
        for name in ("first", "second"):
            try:
                await ctx.run(name, calls.step(name, name))
            except Exception:
                reached_after_suspension.append(name)
        await ctx.sleep("nap", 1)
        return "done"

    response = await workflows.deliver(request("careful"))

    assert response.next == ContinueNext()
    assert calls.count == {"first": 1}
    assert reached_after_suspension == []


# Payloads, result types and JSON.


@pytest.mark.asyncio
async def test_a_typed_payload_arrives_validated_into_its_model(workflows: Workflows) -> None:
    seen: list[Order] = []

    @workflows.workflow("orders", payload=Order)
    async def orders(ctx: WorkflowContext[Order]) -> int:
        seen.append(ctx.payload)
        return ctx.payload.amount * 2

    response = await workflows.deliver(request("orders", payload={"order_id": "o_1", "amount": 21}))

    assert seen == [Order(order_id="o_1", amount=21)]
    assert response.next == CompleteNext(output=42)


@pytest.mark.asyncio
async def test_a_payload_that_does_not_fit_its_type_is_refused_before_the_workflow_runs(
    workflows: Workflows,
) -> None:
    ran: list[bool] = []

    @workflows.workflow("orders", payload=Order)
    async def orders(ctx: WorkflowContext[Order]) -> None:
        ran.append(True)

    with pytest.raises(ValidationError, match="amount"):
        await workflows.deliver(request("orders", payload={"order_id": "o_1", "amount": "lots"}))
    assert ran == []


@pytest.mark.asyncio
async def test_without_a_payload_type_the_workflow_gets_the_raw_json(workflows: Workflows) -> None:
    @workflows.workflow
    async def raw(ctx: WorkflowContext[Any]) -> Any:
        return ctx.payload

    response = await workflows.deliver(request("raw", payload={"anything": [1, "two"]}))

    assert response.next == CompleteNext(output={"anything": [1, "two"]})


@pytest.mark.asyncio
async def test_the_context_describes_the_run(workflows: Workflows) -> None:
    @workflows.workflow
    async def describe(ctx: WorkflowContext[Any]) -> list[Any]:
        return [ctx.run_id, ctx.workflow, ctx.delivery_id, ctx.attempt]

    response = await workflows.deliver(request("describe", attempt=3))

    assert response.next == CompleteNext(output=["run_1", "describe", "delivery_1", 3])


@pytest.mark.asyncio
async def test_result_type_gives_the_same_model_on_first_execution_and_on_replay(workflows: Workflows) -> None:
    seen: list[Any] = []

    @workflows.workflow
    async def typed(ctx: WorkflowContext[Any]) -> None:
        order = await ctx.run("load", lambda: Order(order_id="o_1", amount=5), result_type=Order)
        seen.append(order)
        await ctx.sleep("nap", 1)

    await workflows.deliver(request("typed"))
    await workflows.deliver(request("typed", steps=[recorded(0, "load", {"order_id": "o_1", "amount": 5})]))

    assert seen == [Order(order_id="o_1", amount=5), Order(order_id="o_1", amount=5)]


@pytest.mark.asyncio
async def test_without_result_type_a_step_gives_its_json_value_on_first_execution_and_replay(
    workflows: Workflows,
) -> None:
    seen: list[Any] = []

    @workflows.workflow
    async def untyped(ctx: WorkflowContext[Any]) -> None:
        seen.append(await ctx.run("load", lambda: (Order(order_id="o_1", amount=5), ("a", "b"))))
        await ctx.sleep("nap", 1)

    first = await workflows.deliver(request("untyped"))
    await workflows.deliver(request("untyped", steps=[recorded(0, "load", first.steps[0].output)]))

    assert seen == [[{"order_id": "o_1", "amount": 5}, ["a", "b"]]] * 2


@pytest.mark.asyncio
async def test_a_recorded_output_that_does_not_fit_result_type_fails_retryably(workflows: Workflows) -> None:
    @workflows.workflow
    async def typed(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("load", lambda: None, result_type=Order)

    response = await workflows.deliver(request("typed", steps=[recorded(0, "load", {"order_id": "o_1"})]))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.retryable) == ("ValidationError", True)


@pytest.mark.asyncio
async def test_changing_a_returned_value_does_not_change_what_is_recorded(workflows: Workflows) -> None:
    @workflows.workflow
    async def mutates(ctx: WorkflowContext[Any]) -> None:
        value = await ctx.run("load", lambda: {"items": [1]})
        value["items"].append(2)
        await ctx.sleep("nap", 1)

    response = await workflows.deliver(request("mutates"))

    assert response.steps[0].output == {"items": [1]}


@pytest.mark.asyncio
async def test_a_step_output_over_the_limit_fails_the_run_naming_the_step_and_the_limit() -> None:
    workflows = Workflows(allow_unsigned=True, max_output_bytes=1_000)

    @workflows.workflow
    async def large(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("fits", lambda: "x" * 998)  # 1,000 bytes as JSON, with its quotes
        await ctx.run("render", lambda: "é" * 500)  # JSON escapes each as \u00e9: 3,002 bytes

    response = await workflows.deliver(request("large", budget_ms=10_000))

    assert response.steps == [CompletedStep(index=0, name="fits", output="x" * 998)]
    failed = fail_of(response.next)
    assert failed.retryable is False
    assert (failed.index, failed.name) == (1, "render")
    assert failed.error.message.startswith(
        "Expected step 1 'render' to return at most 1,000 bytes of JSON (Workflows(max_output_bytes=...)), "
        "but it returned 3,002"
    )


def test_the_output_limit_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="Expected max_output_bytes to be positive, but got 0"):
        Workflows(allow_unsigned=True, max_output_bytes=0)


@pytest.mark.asyncio
async def test_a_step_output_that_is_not_json_fails_the_run_naming_the_step(workflows: Workflows) -> None:
    @workflows.workflow
    async def unserialisable(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("first", lambda: 1)
        await ctx.run("when", lambda: datetime.now(UTC))

    response = await workflows.deliver(request("unserialisable", budget_ms=10_000))

    assert response.steps == [CompletedStep(index=0, name="first", output=1)]
    failed = fail_of(response.next)
    assert failed.retryable is False
    assert (failed.index, failed.name) == (1, "when")
    assert "Step 1 'when' returned a value that is not JSON serialisable" in failed.error.message
    assert "datetime" in failed.error.message


@pytest.mark.asyncio
async def test_a_nan_step_output_is_not_json(workflows: Workflows) -> None:
    @workflows.workflow
    async def nan(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("ratio", lambda: float("nan"))

    failed = fail_of((await workflows.deliver(request("nan"))).next)

    assert (failed.retryable, failed.name) == (False, "ratio")


@pytest.mark.asyncio
async def test_a_workflow_output_that_is_not_json_fails_the_run(workflows: Workflows) -> None:
    @workflows.workflow
    async def unserialisable(ctx: WorkflowContext[Any]) -> object:
        return object()

    failed = fail_of((await workflows.deliver(request("unserialisable"))).next)

    assert failed.retryable is False
    assert "The workflow returned a value that is not JSON serialisable" in failed.error.message


# Configuration and the public surface.


def test_without_signing_keys_the_workflows_object_refuses_to_start() -> None:
    with pytest.raises(ConfigurationError, match="STEPSTREAM_SIGNING_KEYS"):
        Workflows(environ={})


def test_signing_keys_come_from_the_environment_first_is_current() -> None:
    workflows = Workflows(environ={"STEPSTREAM_SIGNING_KEYS": " current , next ,"})

    assert workflows.signing_keys == ("current", "next")


def test_signing_keys_and_allow_unsigned_together_are_contradictory() -> None:
    with pytest.raises(ConfigurationError, match="either signing_keys or allow_unsigned"):
        Workflows(signing_keys=["k"], allow_unsigned=True)


def test_a_workflow_name_can_be_registered_once(workflows: Workflows) -> None:
    @workflows.workflow("orders")
    async def first(ctx: WorkflowContext[Any]) -> None:
        pass

    with pytest.raises(ConfigurationError, match="'orders' is registered twice"):

        @workflows.workflow("orders")
        async def second(ctx: WorkflowContext[Any]) -> None:
            pass


def test_a_workflow_must_be_async(workflows: Workflows) -> None:
    def blocking(ctx: WorkflowContext[Any]) -> None:
        pass

    register: Callable[[Any], Any] = workflows.workflow("blocking")
    with pytest.raises(ConfigurationError, match="async function"):
        register(blocking)


def test_the_name_defaults_to_the_function_name(workflows: Workflows) -> None:
    @workflows.workflow()
    async def send_invoice(ctx: WorkflowContext[Any]) -> None:
        pass

    assert workflows.names == ("send_invoice",)


def test_the_sdk_errors_share_one_root_under_the_stepstream_root() -> None:
    for error in (ConfigurationError, NondeterminismError, NonRetryableError, RetryAfterError):
        assert issubclass(error, StepstreamSDKError)
    assert issubclass(StepstreamSDKError, StepstreamError)


def test_the_public_surface_is_sorted_and_importable() -> None:
    assert stepstream.sdk.__all__ == sorted(stepstream.sdk.__all__)
    for name in stepstream.sdk.__all__:
        assert getattr(stepstream.sdk, name) is not None


def test_the_sdk_imports_without_the_engine_or_web_framework_dependencies() -> None:
    blocked = ["fastapi", "starlette", "httpx", "aiokafka", "fastavro", "uvicorn", "aiohttp"]
    script = (
        "import sys\n"
        f"for name in {blocked!r}:\n"
        "    sys.modules[name] = None  # makes any import of it fail\n"
        "import stepstream.sdk\n"
        "stepstream.sdk.Workflows(allow_unsigned=True).asgi()\n"
    )

    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
