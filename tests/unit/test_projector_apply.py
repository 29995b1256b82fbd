"""The projector's handling of one input record, given → when → then: applied, or set aside with the
reason; a run that asks to record more than a Kafka record holds fails with the reason; and nothing
of a record that is set aside reaches memory or the batch's writes.

The real codec, no broker: ``Applier.apply`` is called directly and the batch's writes read from
its outbox (tests/integration/test_poison.py drives the same through Kafka).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_asyncio
from aiokafka import ConsumerRecord

from stepstream.avro import Codec, DeadLetter, NotifyRequest, TriggerRequest
from stepstream.clock import ManualClock
from stepstream.config import KafkaSettings, ProjectorSettings
from stepstream.core import (
    BufferedNotification,
    CancelRun,
    Complete,
    Continuing,
    Delivery,
    DeliveryRequested,
    DeliverySteps,
    ErrorInfo,
    Fail,
    FailureHandlerScheduled,
    FireTimer,
    FlowSettled,
    ReceiveEvent,
    ReportDelivery,
    RunFailed,
    RunState,
    RunStatus,
    SleepFor,
    StepKind,
    StepResult,
    Waiter,
    WaiterState,
)
from stepstream.core.apart import join
from stepstream.core.outcomes import Continue
from stepstream.kafka.topics import TopicNames
from stepstream.projector import applier as projector_applier
from stepstream.projector.outbox import Outbox
from stepstream.projector.service import Projector

T0 = 1_700_000_000_000
LIMIT = 70_000
TOPICS = TopicNames(KafkaSettings().topic_prefix)
CODEC = Codec()


@pytest_asyncio.fixture
async def projector() -> AsyncIterator[Projector]:
    settings = ProjectorSettings(kafka=KafkaSettings(partitions=1, max_record_bytes=LIMIT))
    made = Projector(settings, codec=CODEC, clock=ManualClock(T0))
    made.applier.owned = {0}
    made.applier.commands_partitions = 1
    yield made
    await made._consumer.stop()  # never started; closed so they do not warn
    await made._producer.stop()


def record(topic: str, value: bytes | None, key: bytes | None = b"run-1", offset: int = 5) -> ConsumerRecord[Any, Any]:
    return ConsumerRecord(
        topic=topic, partition=0, offset=offset, timestamp=T0, timestamp_type=0, key=key, value=value,
        checksum=None, serialized_key_size=0, serialized_value_size=0, headers=[],
    )  # fmt: skip


def trigger(run_id: str = "run-1", payload: str = "{}", **more: Any) -> bytes:
    return CODEC.encode(TriggerRequest(workflow="w", url="http://app/w", payload=payload, run_id=run_id, **more))


def apply(projector: Projector, *records: ConsumerRecord[Any, Any]) -> Outbox:
    outbox = Outbox()
    for each in records:
        projector.applier.apply(each, outbox)
    return outbox


def written(outbox: Outbox, topic: str) -> list[object]:
    return [CODEC.decode(out.value) for out in outbox.records if out.topic == topic]


def dead_letters(outbox: Outbox) -> list[DeadLetter]:
    return [letter for letter in written(outbox, TOPICS.deadletter) if isinstance(letter, DeadLetter)]


def started(projector: Projector, run_id: str = "run-1") -> RunState:
    apply(projector, record(TOPICS.triggers, trigger(run_id)))
    return projector.states[run_id]


def report(state: RunState, output: str) -> bytes:
    (pending,) = state.in_flight
    step = StepResult(index=0, name="a", kind=StepKind.RUN, output=output)
    return CODEC.encode(
        ReportDelivery(
            run_id=state.run_id,
            delivery_id=pending.delivery_id,
            attempt=pending.attempt,
            now_ms=T0,
            steps=(step,),
            outcome=Continue(),
        )
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "Expected a record value, but the record has none (a null value, or tombstone)"),
        (b"", "Expected at least 10 bytes"),
        (trigger(retries=1_000), "Expected retries from 0 to 100, but got 1000"),
        (trigger(not_before_ms=2**63 - 1), "Expected not_before_ms within 3650 days from now"),
        (trigger(payload="NaN"), "Expected payload to be JSON text, but it is not (NaN is not a JSON value)"),
        (trigger(run_id="no spaces"), "Expected a run id of letters, digits and _.:- only"),
    ],
)
async def test_a_record_that_cannot_be_applied_is_dead_lettered_and_changes_nothing(
    projector: Projector, value: bytes | None, reason: str
) -> None:
    outbox = apply(projector, record(TOPICS.triggers, value))

    (letter,) = dead_letters(outbox)
    assert letter.reason.startswith(reason)
    assert (letter.source_topic, letter.partition, letter.offset, letter.value) == (TOPICS.triggers, 0, 5, value)
    assert [topic for topic, *_ in outbox.records] == [TOPICS.deadletter]
    assert projector.states.keys_in_memory() == []


@pytest.mark.asyncio
async def test_a_trigger_too_large_to_record_is_dead_lettered_whole_and_starts_nothing(projector: Projector) -> None:
    payload = '"' + "p" * LIMIT + '"'

    outbox = apply(projector, record(TOPICS.triggers, trigger(payload=payload)))

    (letter,) = dead_letters(outbox)
    assert letter.reason.startswith(f"Expected records of at most {LIMIT:,} bytes (STEPSTREAM_MAX_RECORD_BYTES), ")
    assert "value truncated" in letter.reason  # the dead letter itself must fit
    assert projector.states.keys_in_memory() == []
    assert outbox.snapshots == {}


@pytest.mark.asyncio
async def test_a_result_too_large_to_record_fails_the_run_with_the_reason(projector: Projector) -> None:
    state = started(projector)

    outbox = apply(projector, record(TOPICS.commands, report(state, '"' + "x" * LIMIT + '"')))

    events = written(outbox, TOPICS.events)
    assert [type(event) for event in events] == [RunFailed, FailureHandlerScheduled]
    failed = events[0]
    assert isinstance(failed, RunFailed)
    assert failed.error.type == "RecordTooLarge"
    assert failed.error.message.startswith(
        f"cannot record the answer to delivery run-1/1 (attempt 1): Expected records of at most {LIMIT:,} bytes"
    )
    assert projector.states["run-1"].status is RunStatus.FAILED
    assert projector.states["run-1"].steps == ()  # the output was not kept
    assert CODEC.decode(outbox.snapshots["run-1"], expected=(RunState,)) == projector.states["run-1"]
    assert dead_letters(outbox) == []


@pytest.mark.asyncio
async def test_a_result_that_fits_is_recorded(projector: Projector) -> None:
    state = started(projector)

    outbox = apply(projector, record(TOPICS.commands, report(state, '"' + "x" * (LIMIT // 2) + '"')))

    assert projector.states["run-1"].status is RunStatus.RUNNING
    assert len(projector.states["run-1"].steps) == 1
    assert dead_letters(outbox) == []


@pytest.mark.asyncio
async def test_a_failure_in_deciding_sets_the_record_aside_and_nothing_of_it_is_written(
    projector: Projector, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = started(projector)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(projector_applier, "effects", broken)  # fails after the events are worked out
    outbox = apply(projector, record(TOPICS.commands, CODEC.encode(
        ReportDelivery(run_id="run-1", delivery_id=state.in_flight[0].delivery_id, attempt=1, now_ms=T0, steps=(),
                       outcome=Complete(output='"done"'))
    )))  # fmt: skip

    (letter,) = dead_letters(outbox)
    assert letter.reason == "the projector failed on this record: RuntimeError('a bug')"
    assert [topic for topic, *_ in outbox.records] == [TOPICS.deadletter]
    assert projector.states["run-1"] == state  # untouched
    assert outbox.previous == {}


@pytest.mark.asyncio
async def test_a_notification_too_large_to_keep_for_later_waiters_still_reaches_the_runs_waiting_now(
    projector: Projector,
) -> None:
    # given an index that keeps a large notification already, and a run waiting
    kept = BufferedNotification(data=big(0.6), at_ms=T0, expires_at_ms=T0 + 60_000, delivered_to=())
    waiting = Waiter(run_id="run-9", step_index=2, timeout_at_ms=T0 + 60_000)
    projector.waiters["paid"] = WaiterState(event_id="paid", waiters=(waiting,), buffered=(kept,))

    # when a second large one comes: both would not fit in the index's record
    data = big(0.6)
    outbox = apply(projector, record(TOPICS.triggers, CODEC.encode(NotifyRequest(event_id="paid", data=data))))

    # then the waiting run receives it, and the index keeps only what it kept before
    (received,) = written(outbox, TOPICS.commands)
    assert isinstance(received, ReceiveEvent)
    assert (received.run_id, received.step_index, received.data) == ("run-9", 2, data)
    assert projector.waiters["paid"] == WaiterState(event_id="paid", waiters=(), buffered=(kept,))
    assert dead_letters(outbox) == []


def big(share: float) -> str:
    """A JSON string taking ``share`` of a record."""
    return '"' + "d" * int(LIMIT * share) + '"'


# ---------------------------------------------------------------------------------------------
# A run whose results add up past a record: its deliveries travel in parts (core/apart.py)


def recorded_past_the_limit(projector: Projector, outcome: Any) -> Outbox:
    """A run that recorded four results of 40 % of a record each (1.6 records in all), the last report
    ending with ``outcome``; what that last report wrote."""
    (pending,) = started(projector).in_flight
    for index in range(4):
        step = StepResult(index=index, name=f"s{index}", kind=StepKind.RUN, output=big(0.4))
        command = ReportDelivery(
            run_id="run-1",
            delivery_id=pending.delivery_id,
            attempt=pending.attempt,
            now_ms=T0,
            steps=(step,),
            outcome=outcome if index == 3 else Continuing(),
        )
        outbox = apply(projector, record(TOPICS.commands, CODEC.encode(command)))
        assert dead_letters(outbox) == []
    return outbox


def deliveries_written(outbox: Outbox) -> list[tuple[bytes, object]]:
    return [(out.key, CODEC.decode(out.value)) for out in outbox.records if out.topic == TOPICS.deliveries]


def joined_from(written_records: list[tuple[bytes, object]]) -> Delivery:
    """The delivery the records put together, checking their shape: parts first, then the delivery."""
    *parts, (_, delivery) = written_records
    assert isinstance(delivery, Delivery)
    assert delivery.steps_apart > 0
    assert all(isinstance(part, DeliverySteps) for _, part in parts)
    joined = join(delivery, [part for _, part in parts if isinstance(part, DeliverySteps)])
    assert joined is not None
    return joined


@pytest.mark.asyncio
async def test_a_delivery_after_a_sleep_whose_results_pass_the_limit_is_written_in_parts(projector: Projector) -> None:
    recorded_past_the_limit(projector, SleepFor(index=4, name="nap", duration_ms=1_000))
    assert projector.states["run-1"].status is RunStatus.SLEEPING
    assert isinstance(projector.clock, ManualClock)
    projector.clock.advance(1_000)

    outbox = apply(projector, record(TOPICS.commands, CODEC.encode(FireTimer(run_id="run-1", step_index=4, now_ms=0))))

    # then the delivery's results go first, as many to a record as fit, then the delivery, all keyed by run
    written_records = deliveries_written(outbox)
    assert {key for key, _ in written_records} == {b"run-1"}
    assert len(written_records) == 3  # two results of 40 % to a part (the sleep's with the last two), then the delivery
    assert all(len(out.value) <= LIMIT for out in outbox.records if out.value is not None)
    # and joined, it is the delivery the run asked for, with every result
    joined = joined_from(written_records)
    assert joined.steps == projector.states["run-1"].steps
    assert [step.index for step in joined.steps] == [0, 1, 2, 3, 4]
    assert dead_letters(outbox) == []


@pytest.mark.asyncio
async def test_a_retry_whose_results_pass_the_limit_waits_without_them_and_gets_them_when_let_through(
    projector: Projector,
) -> None:
    # given a run past the limit whose delivery failed, to be retried after a backoff
    outbox = recorded_past_the_limit(projector, Fail(error=ErrorInfo(type="HTTP 503", message="busy"), retryable=True))

    # then the retry waits on schedule without the run's results
    (request,) = written(outbox, TOPICS.schedule)
    assert isinstance(request, DeliveryRequested)
    assert (request.delivery.steps, request.delivery.steps_apart) == ((), 4)
    assert request.not_before_ms > T0
    # and when the scheduler lets it through to the projector, it goes to the executor with them, in parts
    outbox = apply(projector, record(TOPICS.commands, CODEC.encode(request.delivery)))
    joined = joined_from(deliveries_written(outbox))
    assert joined == replace(request.delivery, steps=projector.states["run-1"].steps, steps_apart=0)
    assert written(outbox, TOPICS.events) == []  # nothing happens to the run itself
    assert dead_letters(outbox) == []


@pytest.mark.asyncio
async def test_a_delivery_let_through_for_a_run_that_no_longer_awaits_it_is_not_sent_and_frees_its_flow_key(
    projector: Projector,
) -> None:
    # given a delivery held without its results, under a flow key, for a run that was cancelled since
    outbox = recorded_past_the_limit(projector, Fail(error=ErrorInfo(type="HTTP 503", message="busy"), retryable=True))
    (request,) = written(outbox, TOPICS.schedule)
    assert isinstance(request, DeliveryRequested)
    apply(projector, record(TOPICS.commands, CODEC.encode(CancelRun(run_id="run-1", now_ms=T0, reason="test"))))
    held = replace(request.delivery, flow_key="tenant:a")

    outbox = apply(projector, record(TOPICS.commands, CODEC.encode(held)))

    # then nothing goes to the executor, and the key's place is freed as the executor would
    assert deliveries_written(outbox) == []
    (settled,) = written(outbox, TOPICS.schedule)
    assert isinstance(settled, FlowSettled)
    assert (settled.request_id, settled.flow_key) == (held.request_id, "tenant:a")
    assert dead_letters(outbox) == []
