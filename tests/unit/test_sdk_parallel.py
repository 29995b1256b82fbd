"""Parallel steps: several steps awaited at once (asyncio.gather) are planned together, claim the same
indexes on every delivery whatever the history holds, and each ``run`` branch executes alone.

Driven through ``Workflows.deliver``, given a history, when the workflow runs, then the answer is right.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstream.protocol import (
    CompletedStep,
    CompleteNext,
    ContinueNext,
    DeliveryRequest,
    FailNext,
    PlannedCall,
    PlannedRun,
    PlannedSleep,
    PlannedWait,
    RecordedStep,
    StepKindName,
    SuspendNext,
)
from stepstream.sdk import WorkflowContext, Workflows


def request(
    workflow: str,
    *,
    steps: list[RecordedStep] | None = None,
    budget_ms: int = 0,
    execute_index: int | None = None,
) -> DeliveryRequest:
    return DeliveryRequest(
        run_id="run_1",
        workflow=workflow,
        delivery_id="delivery_1",
        attempt=1,
        steps=steps or [],
        budget_ms=budget_ms,
        execute_index=execute_index,
    )


def recorded(index: int, name: str, output: Any = None, kind: StepKindName = "run") -> RecordedStep:
    return RecordedStep(index=index, name=name, kind=kind, output=output)


def fail_of(next_: Any) -> FailNext:
    assert isinstance(next_, FailNext), next_
    return next_


class Calls:
    """Step functions that count how often they really ran."""

    def __init__(self) -> None:
        self.count: dict[str, int] = {}

    def step(self, name: str, result: Any = None) -> Any:
        async def function() -> Any:
            self.count[name] = self.count.get(name, 0) + 1
            return result

        return function


@pytest.fixture
def workflows() -> Workflows:
    return Workflows(allow_unsigned=True)


@pytest.fixture
def calls() -> Calls:
    return Calls()


def worked_example(workflows: Workflows, calls: Calls) -> None:
    """gather(A, B): A awaits a1 then a2; B awaits gather(b1, b2)."""

    @workflows.workflow
    async def nested(ctx: WorkflowContext[Any]) -> list[Any]:
        async def branch_a() -> list[Any]:
            first = await ctx.run("a1", calls.step("a1", "A1"))
            second = await ctx.run("a2", calls.step("a2", "A2"))
            return [first, second]

        async def branch_b() -> list[Any]:
            return list(
                await asyncio.gather(ctx.run("b1", calls.step("b1", "B1")), ctx.run("b2", calls.step("b2", "B2")))
            )

        return list(await asyncio.gather(branch_a(), branch_b()))


# Fan-out.


@pytest.mark.asyncio
async def test_steps_awaited_together_are_planned_together_and_none_runs(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def fan_out(ctx: WorkflowContext[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                ctx.run("a", calls.step("a")),
                ctx.run("b", calls.step("b")),
                ctx.sleep("c", 5),
                ctx.wait_for_event("d", "order-1", timeout=60),
                ctx.call("e", "https://api.example.com/x"),
            )
        )

    response = await workflows.deliver(request("fan_out", budget_ms=10_000))

    assert response.next == SuspendNext(
        steps=[
            PlannedRun(index=0, name="a"),
            PlannedRun(index=1, name="b"),
            PlannedSleep(index=2, name="c", duration_ms=5_000),
            PlannedWait(index=3, name="d", event_id="order-1", timeout_ms=60_000),
            PlannedCall(index=4, name="e", url="https://api.example.com/x"),
        ]
    )
    assert response.steps == []
    assert calls.count == {}


@pytest.mark.asyncio
async def test_a_ten_way_gather_plans_ten_runs(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def ten(ctx: WorkflowContext[Any]) -> list[Any]:
        return list(await asyncio.gather(*[ctx.run(f"branch-{n}", calls.step(f"branch-{n}", n)) for n in range(10)]))

    response = await workflows.deliver(request("ten"))

    assert response.next == SuspendNext(steps=[PlannedRun(index=n, name=f"branch-{n}") for n in range(10)])
    assert calls.count == {}


@pytest.mark.asyncio
async def test_when_every_branch_is_recorded_the_gather_gives_their_results_in_order(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def ten(ctx: WorkflowContext[Any]) -> int:
        squares = await asyncio.gather(*[ctx.run(f"branch-{n}", calls.step(f"branch-{n}")) for n in range(10)])
        return int(await ctx.run("sum", calls.step("sum", sum(squares))))

    history = [recorded(n, f"branch-{n}", n * n) for n in range(10)]
    response = await workflows.deliver(request("ten", steps=history))

    assert calls.count == {"sum": 1}
    assert response.steps == [CompletedStep(index=10, name="sum", output=285)]
    assert response.next == CompleteNext(output=285)


@pytest.mark.asyncio
async def test_a_task_group_fans_out_like_gather(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def grouped(ctx: WorkflowContext[Any]) -> list[Any]:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(ctx.run(name, calls.step(name, name.upper()))) for name in ("a", "b")]
            nap = group.create_task(ctx.sleep("nap", 1))
        assert nap.done()
        return [task.result() for task in tasks]

    first = await workflows.deliver(request("grouped"))
    history = [recorded(0, "a", "A"), recorded(1, "b", "B"), recorded(2, "nap", kind="sleep")]
    last = await workflows.deliver(request("grouped", steps=history))

    assert first.next == SuspendNext(
        steps=[
            PlannedRun(index=0, name="a"),
            PlannedRun(index=1, name="b"),
            PlannedSleep(index=2, name="nap", duration_ms=1_000),
        ]
    )
    assert last.next == CompleteNext(output=["A", "B"])
    assert calls.count == {}


# The worked example: indexes stay the same whatever the history holds.


@pytest.mark.asyncio
async def test_nested_branches_claim_indexes_level_by_level(workflows: Workflows, calls: Calls) -> None:
    worked_example(workflows, calls)

    response = await workflows.deliver(request("nested", budget_ms=10_000))

    assert response.next == SuspendNext(
        steps=[PlannedRun(index=0, name="a1"), PlannedRun(index=1, name="b1"), PlannedRun(index=2, name="b2")]
    )
    assert calls.count == {}


@pytest.mark.asyncio
async def test_a_step_claimed_several_gathers_deep_is_planned_with_its_siblings(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def deep(ctx: WorkflowContext[Any]) -> list[Any]:
        async def nest(levels: int) -> Any:
            if levels == 0:
                return await ctx.run("deep", calls.step("deep"))
            return (await asyncio.gather(nest(levels - 1)))[0]

        return list(await asyncio.gather(ctx.run("shallow", calls.step("shallow")), nest(5)))

    response = await workflows.deliver(request("deep", budget_ms=10_000))

    # Each level of gather costs turns of the event loop before the deep call is made; a round
    # that closed early would execute "shallow" alone instead.
    assert response.next == SuspendNext(steps=[PlannedRun(index=0, name="shallow"), PlannedRun(index=1, name="deep")])
    assert calls.count == {}


@pytest.mark.asyncio
async def test_with_the_first_round_recorded_the_next_step_claims_the_next_index_and_runs(
    workflows: Workflows, calls: Calls
) -> None:
    worked_example(workflows, calls)
    history = [recorded(0, "a1", "A1"), recorded(1, "b1", "B1"), recorded(2, "b2", "B2")]

    response = await workflows.deliver(request("nested", steps=history))

    assert calls.count == {"a2": 1}
    assert response.steps == [CompletedStep(index=3, name="a2", output="A2")]
    assert response.next == CompleteNext(output=[["A1", "A2"], ["B1", "B2"]])


@pytest.mark.asyncio
async def test_each_branch_of_the_worked_example_executes_alone(workflows: Workflows, calls: Calls) -> None:
    worked_example(workflows, calls)

    response = await workflows.deliver(request("nested", execute_index=1))

    assert calls.count == {"b1": 1}
    assert response.steps == [CompletedStep(index=1, name="b1", output="B1")]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_a_recorded_step_of_another_branch_is_still_checked(workflows: Workflows, calls: Calls) -> None:
    worked_example(workflows, calls)
    history = [recorded(0, "a1", "A1"), recorded(1, "b2", "B2"), recorded(2, "b1", "B1")]

    failed = fail_of((await workflows.deliver(request("nested", steps=history))).next)

    assert failed.error.type == "NondeterminismError"
    assert failed.error.message == (
        "Expected step 1 to be run 'b2' as recorded in the history, but the code called run 'b1'"
    )
    assert failed.retryable is False
    assert calls.count == {}


# execute_index: one branch per delivery.


@pytest.mark.asyncio
async def test_execute_index_runs_only_that_step_and_continues(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def three(ctx: WorkflowContext[Any]) -> list[Any]:
        return list(
            await asyncio.gather(
                ctx.run("a", calls.step("a", 1)), ctx.run("b", calls.step("b", 2)), ctx.run("c", calls.step("c", 3))
            )
        )

    response = await workflows.deliver(request("three", execute_index=1, budget_ms=10_000))

    assert calls.count == {"b": 1}
    assert response.steps == [CompletedStep(index=1, name="b", output=2)]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_execute_index_replays_earlier_rounds_and_skips_recorded_siblings(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def later(ctx: WorkflowContext[Any]) -> list[Any]:
        first = await ctx.run("first", calls.step("first", 0))
        rest = await asyncio.gather(
            ctx.run("a", calls.step("a", 1)), ctx.sleep("nap", 1), ctx.run("b", calls.step("b", 2))
        )
        return [first, *rest]

    # Step 1 finished and the sleep at 2 is over; step 3 is the branch still to run.
    history = [recorded(0, "first", 0), recorded(1, "a", 1), recorded(2, "nap", kind="sleep")]
    response = await workflows.deliver(request("later", steps=history, execute_index=3))

    assert calls.count == {"b": 1}
    assert response.steps == [CompletedStep(index=3, name="b", output=2)]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_execute_index_for_a_step_the_code_does_not_await_is_nondeterministic(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def pair(ctx: WorkflowContext[Any]) -> list[Any]:
        return list(await asyncio.gather(ctx.run("a", calls.step("a")), ctx.run("b", calls.step("b"))))

    failed = fail_of((await workflows.deliver(request("pair", execute_index=5))).next)

    assert failed.error.type == "NondeterminismError"
    assert failed.error.message == (
        "Expected step 5 to be a run step awaited now, as when the engine started it, "
        "but the code awaits run 0 'a', run 1 'b'"
    )
    assert (failed.retryable, failed.index) == (False, 5)
    assert calls.count == {}


@pytest.mark.asyncio
async def test_execute_index_for_a_sleep_is_nondeterministic(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def pair(ctx: WorkflowContext[Any]) -> None:
        await asyncio.gather(ctx.run("a", calls.step("a")), ctx.sleep("nap", 1))

    failed = fail_of((await workflows.deliver(request("pair", execute_index=1))).next)

    assert failed.error.type == "NondeterminismError"
    assert "sleep 1 'nap'" in failed.error.message
    assert calls.count == {}


@pytest.mark.asyncio
async def test_execute_index_when_the_workflow_returns_first_is_nondeterministic(workflows: Workflows) -> None:
    @workflows.workflow
    async def nothing(ctx: WorkflowContext[Any]) -> str:
        return "done"

    failed = fail_of((await workflows.deliver(request("nothing", execute_index=0))).next)

    assert failed.error.type == "NondeterminismError"
    assert "await step 0" in failed.error.message
    assert failed.retryable is False


@pytest.mark.asyncio
async def test_a_branch_that_raises_fails_its_delivery_naming_it(workflows: Workflows) -> None:
    def broken() -> None:
        raise ConnectionError("down")

    @workflows.workflow
    async def pair(ctx: WorkflowContext[Any]) -> None:
        await asyncio.gather(ctx.run("a", lambda: 1), ctx.run("b", broken))

    response = await workflows.deliver(request("pair", execute_index=1))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.retryable, failed.index, failed.name) == ("ConnectionError", True, 1, "b")
    assert response.steps == []


# One new run step among recorded ones runs inline, under the same budget rule as sequential steps.


@pytest.mark.asyncio
async def test_a_single_new_run_step_among_recorded_ones_runs_in_this_delivery(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def pair(ctx: WorkflowContext[Any]) -> list[Any]:
        return list(await asyncio.gather(ctx.run("a", calls.step("a", "A")), ctx.run("b", calls.step("b", "B"))))

    response = await workflows.deliver(request("pair", steps=[recorded(0, "a", "A")]))

    assert calls.count == {"b": 1}
    assert response.steps == [CompletedStep(index=1, name="b", output="B")]
    assert response.next == CompleteNext(output=["A", "B"])


@pytest.mark.asyncio
async def test_a_single_new_run_step_after_an_executed_one_waits_for_the_budget(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def later(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("first", calls.step("first"))
        await asyncio.gather(ctx.run("a", calls.step("a")), ctx.run("b", calls.step("b")))

    # Step 0 is new (it runs: the first of the delivery); a is recorded; b alone is left, and the budget is 0.
    response = await workflows.deliver(request("later", steps=[recorded(1, "a")]))

    assert calls.count == {"first": 1}
    assert response.steps == [CompletedStep(index=0, name="first", output=None)]
    assert response.next == ContinueNext()


@pytest.mark.asyncio
async def test_a_new_run_step_with_another_new_step_is_planned_not_run(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def pair(ctx: WorkflowContext[Any]) -> None:
        await asyncio.gather(ctx.run("a", calls.step("a")), ctx.sleep("nap", 2))

    response = await workflows.deliver(request("pair", budget_ms=10_000))

    assert response.next == SuspendNext(
        steps=[PlannedRun(index=0, name="a"), PlannedSleep(index=1, name="nap", duration_ms=2_000)]
    )
    assert calls.count == {}


@pytest.mark.asyncio
async def test_branches_of_different_lengths_claim_in_rounds(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def uneven(ctx: WorkflowContext[Any]) -> None:
        async def long() -> None:
            await ctx.sleep("l1", 1)
            await ctx.sleep("l2", 1)
            await ctx.sleep("l3", 1)

        async def short() -> None:
            await ctx.sleep("s1", 1)

        await asyncio.gather(long(), short())
        await ctx.sleep("after", 1)

    history = [
        recorded(0, "l1", kind="sleep"),
        recorded(1, "s1", kind="sleep"),
        recorded(2, "l2", kind="sleep"),
        recorded(3, "l3", kind="sleep"),
    ]
    response = await workflows.deliver(request("uneven", steps=history))

    assert response.next == SuspendNext(steps=[PlannedSleep(index=4, name="after", duration_ms=1_000)])


# Waiting on something other than a step, and cleaning up.


@pytest.mark.asyncio
async def test_a_workflow_awaiting_something_else_is_waited_for(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def patient(ctx: WorkflowContext[Any]) -> Any:
        await asyncio.sleep(0.05)  # not a step: quiet for many turns of the loop, but not done
        return await ctx.run("after", calls.step("after", "ran"))

    response = await asyncio.wait_for(workflows.deliver(request("patient")), timeout=5)

    assert calls.count == {"after": 1}
    assert response.next == CompleteNext(output="ran")


@pytest.mark.asyncio
async def test_branches_still_blocked_when_the_delivery_ends_are_cancelled(workflows: Workflows) -> None:
    unwound: list[str] = []

    @workflows.workflow
    async def fan_out(ctx: WorkflowContext[Any]) -> None:
        async def branch(name: str) -> None:
            try:
                await ctx.sleep(name, 1)
            finally:
                unwound.append(name)

        await asyncio.gather(branch("a"), branch("b"))

    response = await workflows.deliver(request("fan_out"))

    assert isinstance(response.next, SuspendNext)
    assert sorted(unwound) == ["a", "b"], "every branch is unwound before the answer goes out"


@pytest.mark.asyncio
async def test_a_step_called_inside_a_steps_function_fails_the_run(workflows: Workflows) -> None:
    @workflows.workflow
    async def nesting(ctx: WorkflowContext[Any]) -> None:
        async def outer() -> str:
            return await ctx.run("inner", lambda: "x")

        await ctx.run("outer", outer)

    response = await workflows.deliver(request("nesting"))

    failed = fail_of(response.next)
    assert (failed.error.type, failed.retryable) == ("NonRetryableError", False)
    assert (failed.index, failed.name) == (0, "outer")
    assert "run 'inner' was called inside the function of step 0 'outer'" in failed.error.message
    assert response.steps == []


@pytest.mark.asyncio
async def test_catching_the_nesting_error_inside_the_step_does_not_record_it(workflows: Workflows) -> None:
    @workflows.workflow
    async def nesting(ctx: WorkflowContext[Any]) -> None:
        async def outer() -> str:
            try:
                await ctx.sleep("inner", 1)
            except Exception:
                return "swallowed"
            return "not reached"

        await ctx.run("outer", outer)

    response = await workflows.deliver(request("nesting"))

    assert fail_of(response.next).error.type == "NonRetryableError"
    assert response.steps == []


@pytest.mark.asyncio
async def test_a_step_function_sees_the_context_variables_of_its_caller(workflows: Workflows) -> None:
    import contextvars

    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="none")

    @workflows.workflow
    async def tenants(ctx: WorkflowContext[Any]) -> list[Any]:
        async def branch(name: str) -> Any:
            tenant.set(name)
            return await ctx.run(name, lambda: tenant.get())

        return list(await asyncio.gather(branch("acme"), branch("globex")))

    await workflows.deliver(request("tenants"))
    first = await workflows.deliver(request("tenants", execute_index=0))
    second = await workflows.deliver(request("tenants", execute_index=1))

    assert first.steps == [CompletedStep(index=0, name="acme", output="acme")]
    assert second.steps == [CompletedStep(index=1, name="globex", output="globex")]


@pytest.mark.asyncio
async def test_a_step_call_after_the_answer_is_decided_changes_nothing(workflows: Workflows, calls: Calls) -> None:
    @workflows.workflow
    async def stubborn(ctx: WorkflowContext[Any]) -> str:
        async def branch() -> None:
            try:
                await ctx.sleep("nap", 1)
            except BaseException:
                await ctx.run("sneaky", calls.step("sneaky"))
                raise

        await asyncio.gather(branch(), ctx.run("a", calls.step("a")))
        return "done"

    response = await workflows.deliver(request("stubborn"))

    assert response.next == SuspendNext(
        steps=[PlannedSleep(index=0, name="nap", duration_ms=1_000), PlannedRun(index=1, name="a")]
    )
    assert response.steps == []
    assert calls.count == {}


# A run from start to end against a stand-in for the engine.


async def run_to_the_end(workflows: Workflows, workflow: str, payload: Any = None, budget_ms: int = 0) -> Any:
    """Deliver as the engine does until the run ends, and return its output.

    Planned steps get their results in reverse order, so every branch's own delivery sees a history
    with gaps where its siblings are still pending, as it may in the engine.
    """
    history: dict[int, RecordedStep] = {}

    def current(**fields: Any) -> DeliveryRequest:
        return DeliveryRequest(
            run_id="run_1",
            workflow=workflow,
            delivery_id=f"run_1/{len(history)}",
            attempt=1,
            payload=payload,
            steps=[history[index] for index in sorted(history)],
            budget_ms=budget_ms,
            **fields,
        )

    for _ in range(100):
        response = await workflows.deliver(current())
        for step in response.steps:
            history[step.index] = recorded(step.index, step.name, step.output)
        next_ = response.next
        if isinstance(next_, CompleteNext):
            return next_.output
        if isinstance(next_, SuspendNext):
            for planned in reversed(next_.steps):
                if isinstance(planned, PlannedRun):
                    branch = await workflows.deliver(current(execute_index=planned.index))
                    assert branch.next == ContinueNext(), branch.next
                    assert [step.index for step in branch.steps] == [planned.index]
                    history[planned.index] = recorded(planned.index, planned.name, branch.steps[0].output)
                else:
                    history[planned.index] = recorded(planned.index, planned.name, kind=planned.kind)
        else:
            assert isinstance(next_, ContinueNext), next_
    raise AssertionError("the run did not end within 100 deliveries")


@pytest.mark.asyncio
@pytest.mark.parametrize("budget_ms", [0, 10_000])
async def test_the_worked_example_runs_to_the_end_with_each_step_once(
    workflows: Workflows, calls: Calls, budget_ms: int
) -> None:
    worked_example(workflows, calls)

    output = await run_to_the_end(workflows, "nested", budget_ms=budget_ms)

    assert output == [["A1", "A2"], ["B1", "B2"]]
    assert calls.count == {"a1": 1, "a2": 1, "b1": 1, "b2": 1}


@pytest.mark.asyncio
async def test_branches_of_steps_and_sleeps_run_to_the_end_with_each_step_once(
    workflows: Workflows, calls: Calls
) -> None:
    @workflows.workflow
    async def fan_out(ctx: WorkflowContext[Any]) -> Any:
        async def process(item: str) -> Any:
            fetched = await ctx.run(f"fetch-{item}", calls.step(f"fetch-{item}", item.upper()))
            await ctx.sleep(f"cool-{item}", 1)
            return await ctx.run(f"store-{item}", calls.step(f"store-{item}", f"{fetched}!"))

        stored, _ = await asyncio.gather(
            asyncio.gather(*(process(item) for item in ("x", "y", "z"))), ctx.sleep("pause", 5)
        )
        total = await ctx.run("total", calls.step("total", len(stored)))
        return [stored, total]

    output = await run_to_the_end(workflows, "fan_out")

    assert output == [["X!", "Y!", "Z!"], 3]
    names = [f"{kind}-{item}" for kind in ("fetch", "store") for item in ("x", "y", "z")]
    assert calls.count == dict.fromkeys([*names, "total"], 1)
