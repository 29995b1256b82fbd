"""The hot path in the executor, given → when → then: while the workflow runs one step after another,
the executor reports each step (durable) before it asks the endpoint for the next, in one delivery;
it stops where the chain must end; and after a crash it resumes from what was reported, never
running a reported step again. Kafka and the endpoint are fakes (tests/e2e has the real thing)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any, cast

import aiohttp
import pytest
from aiokafka import ConsumerRecord

from stepstream.avro import DeadLetter
from stepstream.core import (
    Complete,
    Continue,
    Continuing,
    DeliveryCancelled,
    RecordedStep,
    ReportDelivery,
    StepKind,
    StepResult,
    Suspend,
)
from stepstream.core.apart import split
from stepstream.executor.apart import PartsInHand
from stepstream.executor.chain import Cancelled, Chain, Recovered, may_chain
from stepstream.executor.recovery import fold_reports
from tests.unit.test_executor_flow import DELIVERY, HTTP_MS, OFFSET, TP, Answer, FakeResponse, Harness, Make
from tests.unit.test_executor_flow import make as make  # the harness, a fixture

PLAIN = replace(DELIVERY, flow_key=None)  # chains happen only outside flow control


def answer(*, step: int | None, then: dict[str, Any]) -> Answer:
    steps = [] if step is None else [{"index": step, "name": f"s{step}", "kind": "run", "output": step * 10}]
    return Answer(200, json.dumps({"protocol": 1, "steps": steps, "next": then}).encode())


CONTINUE = {"type": "continue"}
COMPLETE = {"type": "complete", "output": "done"}


@dataclass
class ScriptedHttp:
    """An endpoint that answers each request with the next answer of its script."""

    harness: Harness
    script: list[Answer]
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def post(self, url: str, *, data: bytes, **options: Any) -> Any:
        return self._exchange(data)

    @asynccontextmanager
    async def _exchange(self, body: bytes) -> AsyncIterator[FakeResponse]:
        self.bodies.append(json.loads(body))
        await asyncio.sleep(0)
        self.harness.http.clock.advance(HTTP_MS)
        yield FakeResponse(self.script.pop(0))


def scripted(harness: Harness, *script: Answer) -> ScriptedHttp:
    http = ScriptedHttp(harness, list(script))
    harness.executor._session = cast(aiohttp.ClientSession, http)
    return http


def reports(harness: Harness) -> list[ReportDelivery]:
    found = harness.reports()
    assert all(isinstance(report, ReportDelivery) for report in found)
    return cast(list[ReportDelivery], found)


def recorded(body: dict[str, Any]) -> list[int]:
    return [step["index"] for step in body["steps"]]


def result(index: int) -> StepResult:
    return StepResult(index=index, name=f"s{index}", kind=StepKind.RUN, output=str(index * 10))


@pytest.mark.asyncio
async def test_each_step_is_reported_before_the_next_is_asked_for_in_one_delivery(make: Make) -> None:
    harness = await make(Answer(200))
    http = scripted(
        harness,
        answer(step=0, then=CONTINUE),
        answer(step=1, then=CONTINUE),
        answer(step=2, then=COMPLETE),
    )

    await harness.run(PLAIN)

    # three reports of one delivery: two that go on, and its end
    sent = reports(harness)
    assert [(report.delivery_id, report.attempt) for report in sent] == [(PLAIN.delivery_id, PLAIN.attempt)] * 3
    assert [type(report.outcome) for report in sent] == [Continuing, Continuing, Complete]
    assert [[step.index for step in report.steps] for report in sent] == [[0], [1], [2]]
    # and each request replays what the reports before it made durable
    assert [recorded(body) for body in http.bodies] == [[], [0], [0, 1]]
    # and each report was written before the next request went out
    order = [type(sent.record).__name__ for sent in harness.producer.sent]
    assert order == ["ReportDelivery"] * 3
    assert harness.progress.committable() == OFFSET + 1


@pytest.mark.asyncio
async def test_the_delivery_ends_where_the_workflow_waits_on_anything_else(make: Make) -> None:
    harness = await make(Answer(200))
    suspend = {"type": "suspend", "steps": [{"kind": "sleep", "index": 1, "name": "nap", "duration_ms": 5}]}
    scripted(harness, answer(step=0, then=CONTINUE), answer(step=None, then=suspend))

    await harness.run(PLAIN)

    assert [type(report.outcome) for report in reports(harness)] == [Continuing, Suspend]


@pytest.mark.parametrize(
    "delivery",
    [
        pytest.param(DELIVERY, id="under a flow-control key"),
        pytest.param(replace(PLAIN, execute_index=3), id="one parallel branch"),
    ],
)
@pytest.mark.asyncio
async def test_a_delivery_that_may_not_go_on_ends_at_continue(make: Make, delivery: Any) -> None:
    harness = await make(Answer(200))
    scripted(harness, answer(step=0, then=CONTINUE))

    await harness.run(delivery)

    assert [type(report.outcome) for report in reports(harness)] == [Continue]
    assert not may_chain(delivery)


@pytest.mark.asyncio
async def test_while_letting_partitions_go_a_delivery_stops_at_its_next_step(make: Make) -> None:
    harness = await make(Answer(200))
    scripted(harness, answer(step=0, then=CONTINUE))
    harness.executor._letting_go = True

    await harness.run(PLAIN)

    # the projector schedules the rest as a new delivery, which the partition's next owner makes
    assert [type(report.outcome) for report in reports(harness)] == [Continue]


@pytest.mark.asyncio
async def test_a_cancelled_run_is_not_gone_on_with(make: Make) -> None:
    harness = await make(Answer(200))
    scripted(harness, answer(step=0, then=CONTINUE))
    harness.executor._cancelled.add(PLAIN.run_id, 0)

    await harness.run(PLAIN)

    assert [type(report.outcome) for report in reports(harness)] == [Continue]


@pytest.mark.asyncio
async def test_after_a_crash_a_delivery_resumes_after_its_last_reported_step(make: Make) -> None:
    harness = await make(Answer(200))
    http = scripted(harness, answer(step=2, then=COMPLETE))
    harness.executor._recovered[(PLAIN.delivery_id, PLAIN.attempt)] = (0, Recovered(steps=(result(0), result(1))))

    await harness.run(PLAIN)

    assert [recorded(body) for body in http.bodies] == [[0, 1]]  # steps 0 and 1 are not run again
    assert [[step.index for step in report.steps] for report in reports(harness)] == [[2]]


@pytest.mark.asyncio
async def test_after_a_crash_a_delivery_that_was_reported_is_not_made_again(make: Make) -> None:
    harness = await make(Answer(200))
    http = scripted(harness)
    harness.executor._recovered[(PLAIN.delivery_id, PLAIN.attempt)] = (0, Recovered(steps=(result(0),), ended=True))

    await harness.run(PLAIN)

    assert http.bodies == []
    assert reports(harness) == []
    assert harness.progress.committable() == OFFSET + 1


def report(*steps: int, outcome: Any, attempt: int = 2, delivery_id: str = PLAIN.delivery_id) -> ReportDelivery:
    return ReportDelivery(
        run_id=PLAIN.run_id,
        delivery_id=delivery_id,
        attempt=attempt,
        now_ms=0,
        steps=tuple(result(index) for index in steps),
        outcome=outcome,
    )


def test_reports_read_back_say_what_each_delivery_did() -> None:
    found = fold_reports(
        [
            report(0, outcome=Continuing()),
            report(1, outcome=Continuing()),
            report(1, outcome=Continuing()),  # sent twice: the first wins
            report(0, outcome=Continuing(), attempt=3),
            report(outcome=Complete(output="1"), delivery_id="other/1"),
            report(2, outcome=Continuing(), attempt=3),
        ]
    )

    assert found == {
        (PLAIN.delivery_id, 2): Recovered(steps=(result(0), result(1)), ended=False),
        (PLAIN.delivery_id, 3): Recovered(steps=(result(0), result(2)), ended=False),
        ("other/1", 2): Recovered(steps=(), ended=True),
    }


def test_a_chain_replays_what_it_came_with_and_what_it_added() -> None:
    start = replace(PLAIN, steps=(), step_index=0)
    chain = Chain.resuming(start, Recovered(steps=(result(0),)))

    chain.record((result(1),))
    chain.record((result(1),))  # a step recorded once

    assert [step.index for step in chain.current.steps] == [0, 1]
    assert chain.current.step_index == 2
    assert chain.length == 2


@pytest.mark.asyncio
async def test_a_cancellation_on_deliveries_is_remembered_and_its_offset_is_done(make: Make) -> None:
    harness = await make(Answer(200))
    record = ConsumerRecord(
        topic=TP.topic, partition=TP.partition, offset=OFFSET, timestamp=0, timestamp_type=0, key=b"run_01",
        value=harness.codec.encode(DeliveryCancelled(run_id=PLAIN.run_id)), checksum=None, serialized_key_size=0,
        serialized_value_size=0, headers=[],
    )  # fmt: skip

    await harness.executor._start(TP, harness.progress, record)

    assert PLAIN.run_id in harness.executor._cancelled
    assert not harness.executor._may_go_on(PLAIN)
    assert harness.progress.committable() == OFFSET + 1


def kept(reply: Answer) -> Answer:
    """``reply`` as an SDK that keeps the session says it."""
    return Answer(reply.status, json.dumps(json.loads(reply.body) | {"session": "kept"}).encode())


@pytest.mark.asyncio
async def test_while_the_sdk_keeps_the_session_a_request_only_resumes_it(make: Make) -> None:
    harness = await make(Answer(200))
    http = scripted(
        harness,
        kept(answer(step=0, then=CONTINUE)),
        kept(answer(step=1, then=CONTINUE)),
        answer(step=2, then=COMPLETE),
    )

    await harness.run(PLAIN)

    first, second, third = http.bodies
    assert first["session"]
    assert "resume" not in first
    assert "steps" in first
    assert second == third
    assert second["session"] == first["session"]
    assert second["resume"] is True
    assert "steps" not in second
    assert "payload" not in second
    assert [type(report.outcome) for report in reports(harness)] == [Continuing, Continuing, Complete]


@pytest.mark.asyncio
async def test_a_session_the_sdk_lost_is_followed_by_the_whole_delivery_without_sessions(make: Make) -> None:
    harness = await make(Answer(200))
    lost = Answer(409, json.dumps({"error": "unknown_session", "message": "served elsewhere"}).encode())
    http = scripted(
        harness,
        kept(answer(step=0, then=CONTINUE)),
        lost,
        answer(step=1, then=CONTINUE),
        answer(step=2, then=COMPLETE),
    )

    await harness.run(PLAIN)

    assert [
        ("resume" in body, "session" in body, recorded(body) if "steps" in body else None) for body in http.bodies
    ] == [
        (False, True, []),
        (True, True, None),
        (False, False, [0]),
        (False, False, [0, 1]),
    ]
    assert [[step.index for step in report.steps] for report in reports(harness)] == [[0], [1], [2]]


def test_cancelled_runs_are_remembered_for_a_while_and_at_most_so_many() -> None:
    cancelled = Cancelled(limit=2, kept_ms=1_000)

    cancelled.add("a", 0)
    cancelled.add("b", 700)
    cancelled.add("c", 1_600)  # over the limit: "a" is older than kept_ms, and goes

    assert ("a" in cancelled, "b" in cancelled, "c" in cancelled) == (False, True, True)
    cancelled.add("d", 1_700)  # over the limit again: the oldest goes, kept or not
    assert ("b" in cancelled, "d" in cancelled) == (False, True)


def on_deliveries(harness: Harness, offset: int, message: object) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=TP.topic, partition=TP.partition, offset=offset, timestamp=0, timestamp_type=0, key=b"run_01",
        value=harness.codec.encode(message), checksum=None, serialized_key_size=0, serialized_value_size=0,
        headers=[],
    )  # fmt: skip


@pytest.mark.asyncio
async def test_a_delivery_whose_results_came_apart_is_made_with_all_of_them_and_its_parts_offsets_wait_for_it(
    make: Make,
) -> None:
    # given a delivery of a run with four results, two of them in each of two parts just before it
    harness = await make(Answer(200))
    http = scripted(harness, answer(step=4, then=COMPLETE))
    steps = tuple(
        RecordedStep(index=index, name=f"s{index}", kind=StepKind.RUN, output=str(index)) for index in range(4)
    )
    full = replace(PLAIN, steps=steps, step_index=4)
    parts, rest = split(full, room=2, size=lambda step: 1)
    assert len(parts) == 2

    # when the executor reads the parts, their offsets are held
    for offset, part in enumerate(parts, start=OFFSET):
        await harness.executor._start(TP, harness.progress, on_deliveries(harness, offset, part))
    assert harness.progress.committable() == OFFSET
    # and when it reads the delivery, it makes it with every result, in order
    await harness.executor._start(TP, harness.progress, on_deliveries(harness, OFFSET + 2, rest))
    await asyncio.gather(*harness.executor._deliveries)
    assert [recorded(body) for body in http.bodies] == [[0, 1, 2, 3]]
    assert [type(report.outcome) for report in reports(harness)] == [Complete]
    # and then the parts' offsets and the delivery's are done together
    assert harness.progress.committable() == OFFSET + 3
    assert len(harness.executor._parts) == 0


@pytest.mark.asyncio
async def test_a_delivery_whose_parts_were_not_read_is_dead_lettered_not_made_without_its_results(make: Make) -> None:
    harness = await make(Answer(200))
    http = scripted(harness)
    rest = replace(PLAIN, steps=(), steps_apart=3)

    await harness.executor._start(TP, harness.progress, on_deliveries(harness, OFFSET, rest))
    await asyncio.gather(*harness.executor._deliveries)

    assert http.bodies == []
    (letter,) = [sent.record for sent in harness.producer.sent]
    assert isinstance(letter, DeadLetter)
    assert "Expected the 3 results of delivery" in letter.reason
    assert harness.progress.committable() == OFFSET + 1


def test_parts_read_twice_count_once_and_a_partition_let_go_forgets_its_parts() -> None:
    steps = tuple(RecordedStep(index=index, name=f"s{index}", kind=StepKind.RUN, output="1") for index in range(3))
    parts, rest = split(replace(PLAIN, steps=steps), room=1, size=lambda step: 1)
    held = PartsInHand()
    for _ in range(2):  # the partition read again from an earlier offset
        for offset, part in enumerate(parts, start=OFFSET):
            held.add(TP.partition, offset, part)

    joined, offsets = held.take(TP.partition, rest)

    assert joined is not None
    assert joined.steps == steps
    assert offsets == [OFFSET, OFFSET + 1, OFFSET + 2]
    held.add(TP.partition, OFFSET, parts[0])
    held.drop([TP.partition])
    assert len(held) == 0
