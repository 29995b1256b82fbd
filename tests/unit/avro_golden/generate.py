"""Sample records of every type, and the golden files: their encodings as a past version wrote them.

Run ``python tests/unit/avro_golden/generate.py`` after adding a sample. It writes only the golden
files that are missing and never rewrites one: a golden file is a record as it was written then,
which the codec must read for as long as such records may exist in Kafka. If a golden file stops
decoding to its sample, the schema change that did it is incompatible: keep the earlier shape with
``python -m stepstream.avro freeze <Name>`` (and an upcaster where resolution cannot bridge
the change) instead of regenerating the file.
"""

from __future__ import annotations

from pathlib import Path

from stepstream.avro import Codec, DeadLetter, TriggerRequest
from stepstream.core import (
    Complete,
    Continue,
    Delivery,
    DeliveryRequested,
    ErrorInfo,
    Fail,
    FireTimer,
    PendingDelivery,
    PendingSleep,
    RecordedStep,
    ReportDelivery,
    RunCompleted,
    RunFailed,
    RunStarted,
    RunState,
    RunStatus,
    SleepFor,
    SleepStarted,
    SleepUntil,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
    TimerRequested,
    TriggerRun,
)

GOLDEN_DIRECTORY = Path(__file__).resolve().parent

RUN_ID = "run_01JD3QX7Q8M0K1Y2VJ6R5T4S3N"
URL = "https://orders.internal.example/api/workflows/checkout"
PAYLOAD = '{"order_id":"ord_7731","items":[{"sku":"SKU-1","quantity":2}],"note":"gift: ✓ 🎁"}'
HEADERS = (("Authorization", "Bearer token-abc"), ("X-Tenant", "acme"), ("X-Tenant", "acme-eu"))
NOW_MS = 1_732_190_400_123
STEPS = (
    RecordedStep(index=0, name="reserve-stock", kind=StepKind.RUN, output='{"reserved":true}'),
    RecordedStep(index=1, name="cool-down", kind=StepKind.SLEEP, output="null"),
    RecordedStep(index=2, name="until-opening", kind=StepKind.SLEEP_UNTIL, output="null"),
)
ERROR = ErrorInfo(type="HTTP 503", message="payment gateway unavailable: upstream timed out after 30 s")
DELIVERY = Delivery(
    run_id=RUN_ID,
    workflow="checkout",
    url=URL,
    delivery_id=f"{RUN_ID}/4",
    attempt=2,
    step_index=3,
    payload=PAYLOAD,
    steps=STEPS,
    headers=HEADERS,
)


def report(outcome: Continue | SleepFor | SleepUntil | Complete | Fail, *, steps: int = 1) -> ReportDelivery:
    step_results = (
        StepResult(index=3, name="charge-card", kind=StepKind.RUN, output='{"charge_id":"ch_9"}'),
        StepResult(index=4, name="send-receipt", kind=StepKind.RUN, output='"sent"'),
    )
    return ReportDelivery(
        run_id=RUN_ID, delivery_id=f"{RUN_ID}/4", attempt=2, now_ms=NOW_MS, steps=step_results[:steps], outcome=outcome
    )


def run_state(**changes: object) -> RunState:
    values: dict[str, object] = {
        "run_id": RUN_ID,
        "seq": 9,
        "workflow": "checkout",
        "url": URL,
        "payload": PAYLOAD,
        "headers": HEADERS,
        "label": "vip-customer",
        "retries": 5,
        "retry_base_ms": 2_000,
        "status": RunStatus.RUNNING,
        "created_at_ms": NOW_MS - 60_000,
        "updated_at_ms": NOW_MS,
        "steps": STEPS,
        "deliveries": 4,
        "pending_delivery": PendingDelivery(delivery_id=f"{RUN_ID}/4", step_index=3, attempt=2, not_before_ms=NOW_MS),
        "pending_sleep": PendingSleep(step_index=2, name="until-opening", kind=StepKind.SLEEP_UNTIL, wake_at_ms=NOW_MS),
        "output": '{"receipt":"r_1"}',
        "error": ERROR,
    }
    values.update(changes)
    return RunState(**values)  # type: ignore[arg-type]


# Keyed by golden file stem: "<Type>.<case>". "full" sets every optional field, "minimal" none.
SAMPLES: dict[str, object] = {
    "TriggerRequest.full": TriggerRequest(
        workflow="checkout",
        url=URL,
        payload=PAYLOAD,
        run_id=RUN_ID,
        headers=HEADERS,
        label="vip-customer",
        retries=5,
        retry_base_ms=2_000,
        not_before_ms=NOW_MS + 3_600_000,
        requested_at_ms=NOW_MS - 15,
    ),
    "TriggerRequest.minimal": TriggerRequest(workflow="checkout", url=URL, payload="{}"),
    "TriggerRun.full": TriggerRun(
        run_id=RUN_ID,
        workflow="checkout",
        url=URL,
        payload=PAYLOAD,
        now_ms=NOW_MS,
        headers=HEADERS,
        label="vip-customer",
        retries=0,
        retry_base_ms=250,
        not_before_ms=NOW_MS + 1,
    ),
    "TriggerRun.minimal": TriggerRun(run_id=RUN_ID, workflow="checkout", url=URL, payload="null", now_ms=NOW_MS),
    "ReportDelivery.continue": report(Continue(), steps=2),
    "ReportDelivery.sleep_for": report(SleepFor(index=4, name="cool-down", duration_ms=86_400_000)),
    "ReportDelivery.sleep_until": report(SleepUntil(index=4, name="until-opening", wake_at_ms=NOW_MS + 7_200_000)),
    "ReportDelivery.complete": report(Complete(output='{"receipt":"r_1"}')),
    "ReportDelivery.fail_full": report(
        Fail(error=ERROR, retryable=True, retry_after_ms=30_000, step_index=4, step_name="send-receipt")
    ),
    "ReportDelivery.fail_minimal": report(Fail(error=ERROR, retryable=False), steps=0),
    "FireTimer.full": FireTimer(run_id=RUN_ID, step_index=2, now_ms=NOW_MS),
    "RunStarted.full": RunStarted(
        run_id=RUN_ID,
        seq=1,
        at_ms=NOW_MS,
        workflow="checkout",
        url=URL,
        payload=PAYLOAD,
        headers=HEADERS,
        label="vip-customer",
        retries=5,
        retry_base_ms=2_000,
    ),
    "RunStarted.minimal": RunStarted(
        run_id=RUN_ID,
        seq=1,
        at_ms=NOW_MS,
        workflow="checkout",
        url=URL,
        payload="{}",
        headers=(),
        label=None,
        retries=3,
        retry_base_ms=1_000,
    ),
    "StepScheduled.full": StepScheduled(
        run_id=RUN_ID, seq=2, at_ms=NOW_MS, step_index=0, delivery_id=f"{RUN_ID}/1", attempt=1, not_before_ms=NOW_MS
    ),
    "StepCompleted.full": StepCompleted(
        run_id=RUN_ID,
        seq=3,
        at_ms=NOW_MS,
        step_index=0,
        name="reserve-stock",
        kind=StepKind.RUN,
        output='{"reserved":true}',
        delivery_id=f"{RUN_ID}/1",
    ),
    "StepFailed.full": StepFailed(
        run_id=RUN_ID,
        seq=4,
        at_ms=NOW_MS,
        step_index=1,
        name="charge-card",
        delivery_id=f"{RUN_ID}/2",
        attempt=1,
        error=ERROR,
        retry_at_ms=NOW_MS + 2_000,
    ),
    "StepFailed.minimal": StepFailed(
        run_id=RUN_ID,
        seq=4,
        at_ms=NOW_MS,
        step_index=1,
        name=None,
        delivery_id=f"{RUN_ID}/2",
        attempt=6,
        error=ErrorInfo(type="ConnectError", message=""),
        retry_at_ms=None,
    ),
    "SleepStarted.full": SleepStarted(
        run_id=RUN_ID,
        seq=5,
        at_ms=NOW_MS,
        step_index=2,
        name="until-opening",
        kind=StepKind.SLEEP_UNTIL,
        wake_at_ms=NOW_MS + 7_200_000,
    ),
    "RunCompleted.full": RunCompleted(run_id=RUN_ID, seq=10, at_ms=NOW_MS, output='{"receipt":"r_1"}'),
    "RunFailed.full": RunFailed(run_id=RUN_ID, seq=10, at_ms=NOW_MS, error=ERROR),
    "RunState.full": run_state(),
    "RunState.minimal": run_state(
        label=None, steps=(), pending_delivery=None, pending_sleep=None, output=None, error=None, headers=()
    ),
    "RunState.failed": run_state(status=RunStatus.FAILED, pending_delivery=None, pending_sleep=None, output=None),
    "Delivery.full": DELIVERY,
    "DeliveryRequested.full": DeliveryRequested(
        request_id=f"{RUN_ID}/4#2", not_before_ms=NOW_MS + 2_000, flow_key="tenant:acme", delivery=DELIVERY
    ),
    "DeliveryRequested.minimal": DeliveryRequested(
        request_id=f"{RUN_ID}/4#2", not_before_ms=NOW_MS, flow_key=None, delivery=DELIVERY
    ),
    "TimerRequested.full": TimerRequested(
        request_id=f"{RUN_ID}/sleep/2", run_id=RUN_ID, step_index=2, due_ms=NOW_MS + 7_200_000
    ),
    "DeadLetter.full": DeadLetter(
        source_topic="stepstream.commands",
        partition=7,
        offset=123_456_789_012,
        key=RUN_ID.encode(),
        value=b"\xc3\x01\x00\xffnot a known fingerprint",
        reason="Expected a record written by a known schema, but fingerprint 00ff6e6f74206120 is not ...",
        consumer="projector",
        at_ms=NOW_MS,
    ),
    "DeadLetter.minimal": DeadLetter(
        source_topic="stepstream.timers",
        partition=0,
        offset=0,
        key=None,
        value=None,
        reason="Expected a value, but the record is a tombstone",
        consumer="scheduler",
        at_ms=NOW_MS,
    ),
}


def golden_path(stem: str) -> Path:
    return GOLDEN_DIRECTORY / f"{stem}.bin"


def main() -> None:
    codec = Codec()
    for stem, record in SAMPLES.items():
        path = golden_path(stem)
        if path.exists():
            continue  # a golden file is history: never rewritten
        path.write_bytes(codec.encode(record))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
