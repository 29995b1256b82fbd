"""No input can stop the engine: every record a service cannot decode, validate or apply goes to
``deadletter`` with the reason, and the service goes on, on every topic it reads; a run that asks
the engine to record more than a Kafka record holds fails with the reason; a partition that makes
no progress is reported by ``/readyz``.

Against the real broker, with each service a real process (one, then two replicas of each).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stepstream.avro import Codec, DeadLetter, DecodeError, TriggerRequest
from stepstream.avro.codec import HEADER_SIZE, MAGIC
from stepstream.core import (
    Delivery,
    DeliveryRequested,
    DeliverySteps,
    FireTimer,
    FlowControl,
    FlowKeyState,
    ReportDelivery,
    RunStarted,
    StepCompleted,
    StepKind,
    TimerRequested,
    TriggerRun,
    WaiterState,
    fold,
)
from stepstream.core.outcomes import Continue
from stepstream.kafka.clients import partition_for
from tests.helpers import wait_until
from tests.stack import Stack, read_topic

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

APPS = Path(__file__).resolve().parents[1] / "apps"
T = TypeVar("T")
PARTITIONS = 3
LIMIT = 200_000  # STEPSTREAM_MAX_RECORD_BYTES of these stacks: small, so records at and past it are quick to make
CODEC = Codec()
T0 = 1_700_000_000_000


@dataclass(frozen=True)
class Poison:
    """A bad record: where it goes, what it is, and what its dead letter's reason must say."""

    topic: str  # without the prefix
    kind: str
    key: bytes | None
    value: bytes | None
    reason: str


def _started(run_id: str = "poison-run") -> RunStarted:
    return RunStarted(
        run_id=run_id, seq=1, at_ms=T0, workflow="w", url="http://127.0.0.1:1/w", payload="{}", headers=(),
        label=None, retries=0, retry_base_ms=1,
    )  # fmt: skip


def _delivery() -> Delivery:
    return Delivery(
        run_id="poison-run", workflow="w", url="http://127.0.0.1:1/w", delivery_id="poison-run/1", attempt=1,
        step_index=0, payload="{}", steps=(), headers=(),
    )  # fmt: skip


# A valid record of each topic's own type (cut in half, it is the "truncated" poison), and a record of
# another topic's type (the "wrong type" poison).
RIGHT_TYPE: dict[str, object] = {
    "triggers": TriggerRequest(workflow="w", url="http://127.0.0.1:1/w", payload="{}", run_id="poison-run"),
    "commands": FireTimer(run_id="poison-run", step_index=0, now_ms=T0),
    "schedule": TimerRequested(request_id="poison-run/sleep/0", run_id="poison-run", step_index=0, due_ms=T0),
    "deliveries": _delivery(),
    "events": _started(),
    "flow": FlowKeyState(
        key="k", queued=0, in_flight=0, starts_in_window=0, rate=None, period_ms=1, parallelism=None, updated_ms=T0
    ),
    "runs": fold([_started()]),
    "waiters": WaiterState(event_id="e", waiters=(), buffered=()),
    "timers": TimerRequested(request_id="poison-run/sleep/0", run_id="poison-run", step_index=0, due_ms=T0),
}
WRONG_TYPE = FlowKeyState(
    key="k", queued=0, in_flight=0, starts_in_window=0, rate=None, period_ms=1, parallelism=None, updated_ms=T0
)

# Records with values out of the bounds the engine keeps, per topic.
OUT_OF_RANGE: dict[str, list[tuple[str, object, str]]] = {
    "triggers": [
        (
            "not_before past 2^63",
            TriggerRequest(
                workflow="w", url="http://127.0.0.1:1/w", payload="{}", run_id="far", not_before_ms=2**63 - 1
            ),
            "Expected not_before_ms within 3650 days from now",
        ),
        (
            "a million retries",
            TriggerRequest(workflow="w", url="http://127.0.0.1:1/w", payload="{}", run_id="many", retries=10**6),
            "Expected retries from 0 to 100, but got 1000000",
        ),
        (
            "payload not JSON",
            TriggerRequest(workflow="w", url="http://127.0.0.1:1/w", payload="{nope", run_id="notjson"),
            "Expected payload to be JSON text",
        ),
    ],
    "commands": [
        (
            "child trigger with a rate of 0",
            TriggerRun(
                run_id="zero-rate",
                workflow="w",
                url="http://127.0.0.1:1/w",
                payload="{}",
                now_ms=T0,
                flow=FlowControl(key="k", rate=0),
            ),
            "Expected a flow-control rate from 1 to 1,000,000,000",
        ),
        (
            "a report for no run",
            # Applied where its run id belongs (else it is handed on to that partition): the "no run" of
            # each partition is a run id that hashes to it; see poisons().
            ReportDelivery(run_id="nobody", delivery_id="nobody/1", attempt=1, now_ms=T0, steps=(), outcome=Continue()),
            "Expected a command for a known run, but run nobody",
        ),
    ],
    "schedule": [
        (
            "a delivery under a rate of 0",
            DeliveryRequested(
                request_id="r#1", not_before_ms=T0, delivery=_delivery(), flow=FlowControl(key="k", rate=0)
            ),
            "Expected a flow-control rate from 1 to 1,000,000,000",
        ),
    ],
    "events": [
        (
            "an output that is not JSON",
            StepCompleted(
                run_id="poison-run",
                seq=1,
                at_ms=T0,
                step_index=0,
                name="x",
                kind=StepKind.RUN,
                output="{no",
                delivery_id="",
            ),
            "the indexer cannot apply StepCompleted",
        ),
    ],
}

# Who reads each topic, and whether it reads it only when it restores a partition (then a null value
# is a tombstone, not poison).
READERS = {
    "triggers": "projector",
    "commands": "projector",
    "schedule": "scheduler",
    "deliveries": "executor",
    "events": "indexer",
    "flow": "indexer",
    "runs": "projector",
    "waiters": "projector",
    "timers": "scheduler",
}
CHANGELOGS = ("runs", "waiters", "timers", "flow")


def run_on(partition: int) -> str:
    """A run id that Kafka's default partitioner puts on ``partition``."""
    return next(
        f"nobody-{number}" for number in range(1_000) if partition_for(f"nobody-{number}", PARTITIONS) == partition
    )


def poisons(topic: str, partition: int) -> list[Poison]:
    valid = CODEC.encode(RIGHT_TYPE[topic])
    noise = random.Random(topic).randbytes(64)
    found = [
        Poison(topic, "empty", b"poison-empty", b"", "Expected at least 10 bytes"),
        Poison(topic, "random bytes", b"poison-random", b"\x17" + noise, "Expected an Avro single-object encoding"),
        Poison(topic, "JSON", b"poison-json", b'{"workflow": "w"}', "Expected an Avro single-object encoding"),
        Poison(
            topic,
            "unknown fingerprint",
            b"poison-fp",
            MAGIC + b"\xff" * 8 + b"body",
            "is not written by any known schema",
        ),
        Poison(
            topic,
            "truncated",
            b"poison-cut",
            valid[: HEADER_SIZE + (len(valid) - HEADER_SIZE) // 2],
            "but it is corrupt",
        ),
    ]
    if topic != "flow":
        found.append(Poison(topic, "wrong type", b"poison-type", CODEC.encode(WRONG_TYPE), "the record is a"))
    # (A record without a key cannot reach a compacted topic: the broker refuses it. And a null value
    # there is a tombstone, not poison.)
    if topic not in CHANGELOGS:
        found.append(Poison(topic, "null value", b"poison-null", None, "a null value, or tombstone"))
    for kind, record, reason in OUT_OF_RANGE.get(topic, []):
        if isinstance(record, ReportDelivery):
            record = replace(record, run_id=run_on(partition), delivery_id=f"{run_on(partition)}/1")
        found.append(Poison(topic, kind, b"poison-range", CODEC.encode(record), reason))
    return found


Written = dict[tuple[str, int, int], Poison]  # (topic, partition, offset) → the poison written there


async def _publish(bootstrap: str, prefix: str, topics: tuple[str, ...]) -> Written:
    """Every poison of ``topics`` on every partition; returns where each landed."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=2_000_000)
    await producer.start()
    written: Written = {}
    try:
        for topic in topics:
            for partition in range(PARTITIONS):
                for poison in poisons(topic, partition):
                    sent = await producer.send_and_wait(
                        prefix + topic, poison.value, key=poison.key, partition=partition
                    )
                    written[(prefix + topic, partition, sent.offset)] = poison
    finally:
        await producer.stop()
    return written


def dead_letters(stack: Stack, bootstrap: str) -> dict[tuple[str, int, int], list[DeadLetter]]:
    found: dict[tuple[str, int, int], list[DeadLetter]] = {}
    for record in read_topic(bootstrap, stack.prefix + "deadletter", PARTITIONS):
        letter = CODEC.decode(record.value, expected=(DeadLetter,))
        found.setdefault((letter.source_topic, letter.partition, letter.offset), []).append(letter)
    return found


def readyz(stack: Stack, name: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{stack.health_ports[name]}/readyz", timeout=5)


SERVICES = ("projector", "scheduler", "executor")


def all_ready(stack: Stack) -> bool:
    names = [name for name in stack.health_ports if name.split(":")[0] in SERVICES]
    return all(readyz(stack, name).status_code == 200 for name in names)


@pytest.fixture(scope="module", params=[1, 2], ids=["one replica", "two replicas"])
def poisoned(
    request: pytest.FixtureRequest, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, Written]]:
    replicas: int = request.param
    stack = Stack(
        kafka_bootstrap,
        tmp_path_factory.mktemp(f"poison-{replicas}"),
        partitions=PARTITIONS,
        STEPSTREAM_MAX_RECORD_BYTES=str(LIMIT),
        STEPSTREAM_STEP_BUDGET_MS="0",  # one step per delivery: outputs pile up in the run's state, not in one report
        STEPSTREAM_DEFAULT_RETRY_BASE_MS="100",
    )
    stack.create_topics()
    # What the services read back when they take a partition over is poisoned before they start.
    written = asyncio.run(_publish(kafka_bootstrap, stack.prefix, ("runs", "waiters", "timers")))
    stack.start(*SERVICES, "api", "app")
    for number in range(2, replicas + 1):
        stack.start(*(f"{name}:{number}" for name in SERVICES))
    stack.big_port = stack.start_app("failures", APPS, "failures:app")  # type: ignore[attr-defined]
    wait_until(lambda: all_ready(stack), timeout=60)
    written |= asyncio.run(
        _publish(kafka_bootstrap, stack.prefix, ("triggers", "commands", "schedule", "deliveries", "events", "flow"))
    )
    yield stack, written
    stack.stop()


def test_every_bad_record_on_every_topic_is_dead_lettered_with_its_reason_and_good_runs_complete(
    poisoned: tuple[Stack, Written], kafka_bootstrap: str
) -> None:
    stack, written = poisoned
    # given poison on every partition of every topic a service reads, then good runs on every partition
    runs = [stack.trigger({"name": f"n{number}", "sleep_seconds": 0.2}) for number in range(12)]

    # then the good runs complete, each step once
    for run_id in runs:
        stack.wait_for_status(run_id, "completed", timeout=120)
        assert [event["type"] for event in stack.history(run_id)].count("StepCompleted") == 4

    # and every bad record is in the dead-letter topic, by topic, partition and offset, with its reason
    def all_dead_lettered() -> dict[tuple[str, int, int], list[DeadLetter]]:
        found = dead_letters(stack, kafka_bootstrap)
        missing = [(where, poison.kind) for where, poison in written.items() if where not in found]
        assert not missing, missing
        return found

    found = wait_until(all_dead_lettered, timeout=60)
    for where, poison in written.items():
        for letter in found[where]:
            assert poison.reason in letter.reason, (poison.kind, letter.reason)
            assert letter.consumer == READERS[poison.topic]
            assert (letter.key, letter.value) == (poison.key, poison.value)
    # and every service is still running and ready
    for name, process in stack.processes.items():
        assert process.poll() is None, f"{name} exited\n{stack.logs()}"
    assert all_ready(stack), [
        readyz(stack, name).json() for name in stack.health_ports if ":" in name or name in SERVICES
    ]


def big(stack: Stack, steps: int, size: int, run_id: str, sleep_ms: int = 0, **more: Any) -> str:
    url = f"http://127.0.0.1:{stack.big_port}/ok/0/big"  # type: ignore[attr-defined]
    payload = {"steps": steps, "size": size, "sleep_ms": sleep_ms, "fail_once": more.pop("fail_once", False)}
    body = {"workflow": "big", "url": url, "payload": payload, "run_id": run_id, **more}
    response = stack.api.post("/v1/runs", json=body)
    assert response.status_code == 202, response.text
    return run_id


def test_a_run_whose_results_add_up_past_a_record_completes_and_one_output_past_it_fails_with_the_reason(
    poisoned: tuple[Stack, Written], kafka_bootstrap: str
) -> None:
    stack, _ = poisoned
    # given a run whose one output is past the limit; one whose outputs add up past it, step after step;
    # one whose outputs add up past it before a sleep, after which a new delivery must carry them all;
    # one whose delivery fails after that, so that its retry waits in the scheduler; and one under flow
    # control, every delivery of which waits in the scheduler
    past = big(stack, 1, LIMIT + 1_000, "big-past")
    adding_up = big(stack, 6, LIMIT // 4, "big-adding-up")
    before_a_sleep = big(stack, 6, LIMIT // 4, "big-before-a-sleep", sleep_ms=50)
    retried = big(stack, 6, LIMIT // 4, "big-retried", sleep_ms=50, fail_once=True)
    throttled = big(stack, 6, LIMIT // 4, "big-throttled", flow_control={"key": "big", "parallelism": 1})

    # then the first fails, saying why
    failed = stack.wait_for_status(past, ("failed", "completed"), timeout=60)
    assert failed["status"] == "failed"
    assert failed["error"]["type"] == "RecordTooLarge"
    assert f"over the {LIMIT:,} bytes STEPSTREAM_MAX_RECORD_BYTES allows" in failed["error"]["message"]
    # and every other completes: each result is a record of its own, in the history and in the
    # snapshot, and a delivery that carries more than a record holds travels in parts
    for run_id in (adding_up, before_a_sleep, retried, throttled):
        done = stack.wait_for_status(run_id, ("failed", "completed"), timeout=90)
        assert done["status"] == "completed", done
        assert done["output"] == "done"
    # and the retried one replayed every result: its flaky step ran twice, the big ones once each
    history = stack.history(retried)
    assert [event["type"] for event in history].count("StepFailed") == 1
    completed = [event["name"] for event in history if event["type"] == "StepCompleted"]
    assert completed == [*(f"big-{index}" for index in range(6)), "nap", "flaky"]
    # and the ways they took were the long ones: results in parts on deliveries (after the sleeps and
    # the retry), and deliveries held without them in the scheduler, handed to the projector to fill in
    parts = Counter(part.run_id for part in readable(stack, kafka_bootstrap, "deliveries", DeliverySteps))
    assert {before_a_sleep, retried, throttled} <= set(parts), parts
    filled_in = Counter(delivery.run_id for delivery in readable(stack, kafka_bootstrap, "commands", Delivery))
    assert filled_in[retried] == 1  # its retry
    assert filled_in[throttled] >= 1  # each delivery past the limit
    assert before_a_sleep not in filled_in
    # and a run triggered after them completes
    later = stack.trigger({"name": "later", "sleep_seconds": 0})
    stack.wait_for_status(later, "completed", timeout=60)


def readable(stack: Stack, bootstrap: str, topic: str, record_type: type[T]) -> list[T]:
    """The records of ``record_type`` on ``topic``, past the poison this module writes."""
    found: list[T] = []
    for record in read_topic(bootstrap, stack.prefix + topic, PARTITIONS):
        try:
            found.append(CODEC.decode(record.value, expected=(record_type,)))
        except DecodeError:
            continue
    return found


def test_a_trigger_too_large_to_record_is_dead_lettered_and_one_at_the_limit_runs(
    poisoned: tuple[Stack, Written], kafka_bootstrap: str
) -> None:
    stack, _ = poisoned
    url = f"http://127.0.0.1:{stack.big_port}/ok/0/big"  # type: ignore[attr-defined]

    def trigger(run_id: str, padding: int) -> bytes:
        payload = f'{{"steps":0,"size":0,"padding":"{"p" * padding}"}}'
        return CODEC.encode(TriggerRequest(workflow="big", url=url, payload=payload, run_id=run_id))

    async def publish() -> int:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, max_request_size=2_000_000)
        await producer.start()
        try:
            await producer.send_and_wait(stack.prefix + "triggers", trigger("at-limit", LIMIT - 2_000), key=b"at-limit")
            sent = await producer.send_and_wait(
                stack.prefix + "triggers", trigger("past-limit", LIMIT + 10), key=b"past-limit"
            )
            # about Kafka's own limit: its dead letter keeps the start of it
            await producer.send_and_wait(stack.prefix + "triggers", trigger("huge", 1_000_000), key=b"huge")
            return int(sent.offset)
        finally:
            await producer.stop()

    asyncio.run(publish())

    assert stack.wait_for_status("at-limit", ("failed", "completed"), timeout=60)["status"] == "completed"

    def letter(key: bytes) -> DeadLetter:
        letters = [
            letter
            for found in dead_letters(stack, kafka_bootstrap).values()
            for letter in found
            if letter.key == key and letter.source_topic == stack.prefix + "triggers"
        ]
        assert letters
        return letters[0]

    past = wait_until(lambda: letter(b"past-limit"), timeout=60)
    assert f"Expected records of at most {LIMIT:,} bytes (STEPSTREAM_MAX_RECORD_BYTES)" in past.reason
    huge = wait_until(lambda: letter(b"huge"), timeout=60)
    assert "value truncated: the first" in huge.reason
    assert huge.value is not None
    assert len(huge.value) < LIMIT
    assert stack.run("past-limit") is None
    assert stack.run("huge") is None


def test_a_header_with_a_line_break_written_to_kafka_fails_its_run_with_the_reason(
    poisoned: tuple[Stack, Written], kafka_bootstrap: str
) -> None:
    stack, _ = poisoned

    async def publish() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            record = TriggerRequest(
                workflow="onboarding", url=stack.workflow_url, payload='{"name": "crlf"}', run_id="crlf",
                headers=(("X-Note", "a\r\nInjected: yes"),),
            )  # fmt: skip
            await producer.send_and_wait(stack.prefix + "triggers", CODEC.encode(record), key=b"crlf")
        finally:
            await producer.stop()

    asyncio.run(publish())

    run = stack.wait_for_status("crlf", ("failed", "completed"), timeout=60)
    assert run["status"] == "failed"
    assert run["error"] == {
        "type": "InvalidRequest",
        "message": "Expected header 'X-Note' to hold visible characters, spaces and tabs only (RFC 9110), "
        "but it holds '\\r'",
    }
    assert stack.step_counts()["crlf:create-account"] == 0  # nothing was sent


# -- /readyz tells the truth ---------------------------------------------------------------------------


@pytest.fixture
def stalling(kafka_bootstrap: str, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(kafka_bootstrap, tmp_path, partitions=1, STEPSTREAM_STALL_MS="2000")
    stack.create_topics()
    stack.start("projector", "scheduler", "executor", "api", "app")
    wait_until(lambda: readyz(stack, "projector").status_code == 200, timeout=60)
    yield stack
    stack.stop()


async def _set_max_message_bytes(bootstrap: str, topic: str, size: int | None) -> None:
    """Set (None: reset) the topic's own record size limit, keeping its other setting (AlterConfigs
    replaces a topic's whole configuration)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = {"retention.ms": "-1"} | ({} if size is None else {"max.message.bytes": str(size)})
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, configs=configs)])
    finally:
        await admin.close()


def test_readyz_turns_not_ready_while_a_partition_is_wedged_and_ready_again_when_it_moves(
    stalling: Stack, kafka_bootstrap: str
) -> None:
    stack = stalling
    # given the events topic refusing the projector's records (its own limit set below the engine's, by
    # mistake; still above a transaction marker's size, or the broker could not end any transaction)
    asyncio.run(_set_max_message_bytes(kafka_bootstrap, stack.prefix + "events", 150))
    try:
        run_id = stack.trigger({"name": "wedged", "sleep_seconds": 0})

        # then the projector, whose transactions cannot complete, says so and names the partition
        def not_ready() -> dict[str, Any]:
            answer = readyz(stack, "projector")
            assert answer.status_code == 503
            body: dict[str, Any] = answer.json()
            return body

        body = wait_until(not_ready, timeout=90)
        assert body["status"] == "not ready"
        assert "without progress on " in body["reason"]
        assert f"{stack.prefix}triggers[0]" in body["reason"]
        assert "last error: MessageSizeTooLargeError" in body["reason"]
        assert stack.processes["projector"].poll() is None  # alive: restarting it would not mend the broker
    finally:
        asyncio.run(_set_max_message_bytes(kafka_bootstrap, stack.prefix + "events", None))

    # and once the writes go through again, it is ready and the run completes
    started = time.monotonic()
    wait_until(lambda: readyz(stack, "projector").status_code == 200, timeout=120)
    stack.wait_for_status(run_id, "completed", timeout=120 - (time.monotonic() - started))
