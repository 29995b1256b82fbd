"""Sessions in the SDK, over HTTP in-process: a workflow kept running between the requests of a
delivery the engine goes on with. Each step's body runs once, after the step before it was
acknowledged; a ``resume`` carries nothing of the run; a resume the SDK cannot serve is a 409 that
tells the engine to send the whole delivery."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from stepstream.sdk import WorkflowContext, Workflows
from tests.unit.test_sdk_asgi import delivery, signed

STEPS = 4


def counted_workflows(**options: Any) -> tuple[Workflows, list[int]]:
    workflows = Workflows(signing_keys=["current-key"], **options)
    runs: list[int] = []  # the index of each step body, each time it runs

    @workflows.workflow("loop")
    async def loop(ctx: WorkflowContext[Any]) -> int:
        total = 0
        for index in range(STEPS):

            def body(index: int = index) -> int:
                runs.append(index)
                return index * 10

            total += await ctx.run(f"step-{index}", body)
        return total

    return workflows, runs


@pytest_asyncio.fixture
async def served() -> AsyncIterator[tuple[httpx.AsyncClient, Workflows, list[int]]]:
    workflows, runs = counted_workflows()
    transport = httpx.ASGITransport(app=workflows.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        yield client, workflows, runs


async def post(client: httpx.AsyncClient, **fields: Any) -> httpx.Response:
    body = delivery("loop", payload={}, **fields)
    return await client.post("/loop", content=body, headers=signed(body))


async def resume(client: httpx.AsyncClient, session: str, **fields: Any) -> httpx.Response:
    """A resume as the executor sends it: no payload, no steps."""
    request = {"protocol": 1, "run_id": "run_1", "workflow": "loop", "delivery_id": "delivery_1", "attempt": 1}
    body = json.dumps(request | {"budget_ms": 0, "session": session, "resume": True} | fields).encode()
    return await client.post("/loop", content=body, headers=signed(body))


@pytest.mark.asyncio
async def test_a_session_answers_one_step_per_request_and_runs_each_body_once(
    served: tuple[httpx.AsyncClient, Workflows, list[int]],
) -> None:
    client, workflows, runs = served

    first = await post(client, session="s1")
    answers = [first.json()]
    while answers[-1]["next"]["type"] == "continue":
        assert answers[-1]["session"] == "kept"
        resumed = await resume(client, "s1")
        answers.append(resumed.json())

    assert [[step["index"] for step in answer["steps"]] for answer in answers] == [[0], [1], [2], [3]]
    assert answers[-1]["next"] == {"type": "complete", "output": 60}
    assert "session" not in answers[-1]  # nothing kept: the delivery is over
    assert runs == [0, 1, 2, 3]  # every body once, nothing replayed
    assert workflows.sessions is not None
    assert len(workflows.sessions) == 0


@pytest.mark.asyncio
async def test_the_next_step_runs_only_when_the_session_is_resumed(
    served: tuple[httpx.AsyncClient, Workflows, list[int]],
) -> None:
    client, _, runs = served

    await post(client, session="s1")

    assert runs == [0]  # step 1 waits for the acknowledgement of step 0


@pytest.mark.asyncio
async def test_a_resume_of_a_session_this_process_does_not_keep_is_a_409_and_runs_nothing(
    served: tuple[httpx.AsyncClient, Workflows, list[int]],
) -> None:
    client, _, runs = served

    response = await resume(client, "elsewhere")

    assert response.status_code == 409
    assert response.json()["error"] == "unknown_session"
    assert runs == []


@pytest.mark.asyncio
async def test_a_resume_for_another_delivery_is_refused_and_the_session_dropped(
    served: tuple[httpx.AsyncClient, Workflows, list[int]],
) -> None:
    client, workflows, runs = served
    await post(client, session="s1")

    response = await resume(client, "s1", delivery_id="another")

    assert response.status_code == 409
    assert runs == [0]
    assert workflows.sessions is not None
    assert len(workflows.sessions) == 0


@pytest.mark.asyncio
async def test_without_a_session_the_sdk_replays_as_before() -> None:
    workflows, runs = counted_workflows()
    transport = httpx.ASGITransport(app=workflows.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        first = await post(client)
        second = await post(client, steps=[{"index": 0, "name": "step-0", "kind": "run", "output": 0}])

    assert [first.json()["next"]["type"], second.json()["next"]["type"]] == ["continue", "continue"]
    assert "session" not in first.json()
    assert runs == [0, 1]


@pytest.mark.asyncio
async def test_sessions_can_be_turned_off() -> None:
    workflows, runs = counted_workflows(max_sessions=0)
    transport = httpx.ASGITransport(app=workflows.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        first = await post(client, session="s1")
        resumed = await resume(client, "s1")

    assert first.status_code == 200
    assert first.json()["next"] == {"type": "continue"}
    assert "session" not in first.json()
    assert resumed.status_code == 409
    assert runs == [0]


@pytest.mark.asyncio
async def test_a_session_not_resumed_in_time_is_dropped_and_its_workflow_cancelled() -> None:
    now = [0.0]
    workflows, runs = counted_workflows(session_ttl_s=5)
    assert workflows.sessions is not None
    workflows.sessions._clock = lambda: now[0]
    transport = httpx.ASGITransport(app=workflows.asgi())
    async with httpx.AsyncClient(transport=transport, base_url="http://endpoint") as client:
        await post(client, session="s1")
        now[0] = 6.0
        response = await resume(client, "s1")

    assert response.status_code == 409
    assert runs == [0]
