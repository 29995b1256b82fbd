"""``ctx.patched``: which branch a run takes, from what its history recorded, through ``Workflows.deliver``
(everything the ASGI app does after checking a request). tests/integration/test_history.py replays
real histories from before and after a change."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from stepstream.protocol import (
    CompletedStep,
    CompleteNext,
    DeliveryRequest,
    FailNext,
    RecordedStep,
    StepKindName,
    SuspendNext,
)
from stepstream.sdk import WorkflowContext, Workflows

workflows = Workflows(allow_unsigned=True)
ran: list[str] = []


def step(name: str) -> str:
    ran.append(name)
    return name


@workflows.workflow("ship")
async def ship(ctx: WorkflowContext[Any]) -> str:
    await ctx.run("fetch", step, "fetch")
    if await ctx.patched("tracking"):
        await ctx.run("ship-tracked", step, "ship-tracked")
        return "tracked"
    await ctx.run("ship", step, "ship")
    return "plain"


@workflows.workflow("cleaned")
async def cleaned(ctx: WorkflowContext[Any]) -> str:
    """``ship`` once no run needs the old branch: the patch call is gone."""
    await ctx.run("fetch", step, "fetch")
    await ctx.run("ship-tracked", step, "ship-tracked")
    return "tracked"


@workflows.workflow("parallel")
async def parallel(ctx: WorkflowContext[Any]) -> Any:
    await asyncio.gather(ctx.sleep("a", 10), ctx.sleep("b", 10))
    return await ctx.patched("after-gather")


def deliver(workflow: str, *steps: tuple[str, StepKindName, Any], budget_ms: int = 1_000) -> Any:
    ran.clear()
    recorded = [
        RecordedStep(index=i, name=name, kind=kind, output=output) for i, (name, kind, output) in enumerate(steps)
    ]
    request = DeliveryRequest(
        run_id="r", workflow=workflow, delivery_id="r/1", attempt=1, steps=recorded, budget_ms=budget_ms
    )
    return asyncio.run(workflows.deliver(request))


def test_a_run_that_reaches_the_change_under_new_code_records_the_marker_and_takes_the_new_branch() -> None:
    answer = deliver("ship", ("fetch", "run", "fetch"))

    assert answer.steps == [
        CompletedStep(index=1, name="patched:tracking", output=True),
        CompletedStep(index=2, name="ship-tracked", output="ship-tracked"),
    ]
    assert answer.next == CompleteNext(output="tracked")
    assert ran == ["ship-tracked"]


def test_a_history_recorded_before_the_change_keeps_the_old_branch() -> None:
    answer = deliver("ship", ("fetch", "run", "fetch"), ("ship", "run", "ship"))

    assert answer.next == CompleteNext(output="plain")
    assert ran == []


def test_a_history_with_the_marker_replays_the_new_branch() -> None:
    answer = deliver(
        "ship", ("fetch", "run", "fetch"), ("patched:tracking", "run", True), ("ship-tracked", "run", "ship-tracked")
    )

    assert answer.next == CompleteNext(output="tracked")
    assert ran == []


def test_once_the_patch_call_is_removed_recorded_markers_are_skipped() -> None:
    answer = deliver(
        "cleaned", ("fetch", "run", "fetch"), ("patched:tracking", "run", True), ("ship-tracked", "run", "ship-tracked")
    )
    assert answer.next == CompleteNext(output="tracked")

    # A marker at the end of a history is skipped too: the workflow returning there is no divergence.
    fresh = deliver("cleaned", ("fetch", "run", "fetch"), ("patched:tracking", "run", True))
    assert fresh.steps == [CompletedStep(index=2, name="ship-tracked", output="ship-tracked")]


def test_with_a_budget_of_zero_the_marker_is_a_step_of_its_own() -> None:
    answer = deliver("ship", ("fetch", "run", "fetch"), budget_ms=0)

    assert answer.steps == [CompletedStep(index=1, name="patched:tracking", output=True)]
    assert ran == []  # the next step waits for the next delivery


def test_after_parallel_steps_the_marker_takes_the_next_index() -> None:
    answer = deliver("parallel", ("a", "sleep", None), ("b", "sleep", None))

    assert answer.steps == [CompletedStep(index=2, name="patched:after-gather", output=True)]
    assert answer.next == CompleteNext(output=True)
    waiting = deliver("parallel")
    assert isinstance(waiting.next, SuspendNext)


def test_a_step_may_not_take_the_markers_name() -> None:
    @workflows.workflow("impostor")
    async def impostor(ctx: WorkflowContext[Any]) -> None:
        await ctx.run("patched:tracking", step, "x")

    answer = deliver("impostor")

    assert isinstance(answer.next, FailNext)
    assert "ctx.patched" in answer.next.error.message


@pytest.mark.parametrize("change_id", ["", "x" * 300])
def test_a_change_id_must_make_a_step_name(change_id: str) -> None:
    @workflows.workflow(f"bad-{len(change_id)}")
    async def bad(ctx: WorkflowContext[Any]) -> bool:
        return await ctx.patched(change_id)

    answer = deliver(f"bad-{len(change_id)}")

    assert isinstance(answer.next, FailNext)
    assert answer.next.error.type == "ValueError"
