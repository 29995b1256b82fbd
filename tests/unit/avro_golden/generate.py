"""Sample records of every type, and the golden files: their encodings as a past version wrote them.

Run ``python tests/unit/avro_golden/generate.py`` after adding a sample. It writes only the golden
files that are missing and never rewrites one: a golden file is a record as it was written then,
which the codec must read for as long as such records may exist in Kafka. If a golden file stops
decoding to its sample, the schema change that did it is incompatible: keep the earlier shape with
``python -m stepstream.avro freeze <Name>`` (and an upcaster where resolution cannot bridge
the change) instead of regenerating the file.

A sample is the record its golden file decodes to *today*. For a golden file an earlier schema wrote,
that is the record as the current codec reads it: fields added since take their defaults, and
``RunState`` v1 files go through their upcaster (``pending_delivery``/``pending_sleep`` became
``in_flight``/``waiting``). So the samples below that were written by an earlier shape (the first
group) are kept as they decode, never "updated" to show new fields: new fields get new samples.
A field removed since is not in the sample either: ``DeliveryRequested``/``CallRequested`` files
written with a ``flow_key`` (never acted on) read as requests without flow control.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from stepstream.avro import CancelRequest, Codec, DeadLetter, NotifyRequest, RecoverRequest, TriggerRequest
from stepstream.core import (
    BufferedNotification,
    CallDelivery,
    CallRequested,
    CallRetried,
    CallSpec,
    CallStarted,
    Cancel,
    CancelRun,
    ChildFinished,
    Complete,
    Continue,
    Continuing,
    Delivery,
    DeliveryCancelled,
    DeliveryRequested,
    DeliverySteps,
    ErrorInfo,
    EventReceived,
    Fail,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    FireTimer,
    FlowControl,
    FlowKeyState,
    FlowSettled,
    FlowSlot,
    InvokeStarted,
    NotifyEvent,
    NotifyStarted,
    Outcome,
    PendingBranch,
    PendingCall,
    PendingDelivery,
    PendingInvoke,
    PendingNotify,
    PendingSleep,
    PendingWait,
    PlanCall,
    PlanInvoke,
    PlanNotify,
    PlanRun,
    PlanSleep,
    PlanWait,
    ReceiveEvent,
    RecordedStep,
    RecoverRun,
    Recovery,
    RegisterWaiter,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    RunStarted,
    RunState,
    RunStatus,
    ScheduleCancelled,
    SleepFor,
    SleepStarted,
    SleepUntil,
    StepCompleted,
    StepFailed,
    StepKind,
    StepResult,
    StepScheduled,
    Suspend,
    TimerRequested,
    TriggerRun,
    UnregisterWaiter,
    Waiter,
    WaiterState,
    WaitStarted,
    WaitTimedOut,
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


def report(outcome: Outcome, *, steps: int = 1) -> ReportDelivery:
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
        # RunState v1's pending_delivery and pending_sleep, as its upcaster reads them.
        "in_flight": (PendingDelivery(delivery_id=f"{RUN_ID}/4", step_index=3, attempt=2, not_before_ms=NOW_MS),),
        "waiting": (PendingSleep(step_index=2, name="until-opening", kind=StepKind.SLEEP_UNTIL, wake_at_ms=NOW_MS),),
        "output": '{"receipt":"r_1"}',
        "error": ERROR,
    }
    values.update(changes)
    return RunState(**values)  # type: ignore[arg-type]


# Keyed by golden file stem: "<Type>.<case>". "full" sets every optional field, "minimal" none.
# These files were written by the first shape of each schema; where a record changed since (see the
# stepstream.<Name>.v1.avsc files), "full" no longer sets the fields added later: NEW_SAMPLES does.
FIRST_SAMPLES: dict[str, object] = {
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
    "RunState.minimal": run_state(label=None, steps=(), in_flight=(), waiting=(), output=None, error=None, headers=()),
    "RunState.failed": run_state(status=RunStatus.FAILED, in_flight=(), waiting=(), output=None),
    "Delivery.full": DELIVERY,
    # Written with flow_key "tenant:acme", a field since removed: it reads as no flow control.
    "DeliveryRequested.full": DeliveryRequested(
        request_id=f"{RUN_ID}/4#2", not_before_ms=NOW_MS + 2_000, delivery=DELIVERY
    ),
    "DeliveryRequested.minimal": DeliveryRequested(request_id=f"{RUN_ID}/4#2", not_before_ms=NOW_MS, delivery=DELIVERY),
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


# ---------------------------------------------------------------------------------------------
# Written by the current shapes: every record type added with call, wait/notify, invoke, cancel,
# the failure handler and dead-letter recovery, and the fields added to the records above.

CHILD_RUN_ID = f"{RUN_ID}.7"
CHILD_URL = "https://orders.internal.example/api/workflows/ship"
EVENT_ID = "order:ord_7731:paid"
CALL_SPEC = CallSpec(
    method="POST",
    url="https://payments.example/v1/charges?expand=card",
    headers=(
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "ch-ord_7731"),
        ("X-Trace", "a"),
        ("X-Trace", "b"),
    ),
    body='{"amount":1299,"currency":"EUR","memo":"✓"}',
    timeout_ms=10_000,
    retries=3,
    retry_delay="1000 * pow(2, retried)",
)
CALL_SPEC_MINIMAL = CallSpec(
    method="GET", url="https://inventory.example/v1/sku/SKU-1", headers=(), body=None, timeout_ms=5_000, retries=0
)
# A step of every kind, as recorded once it has a result.
ALL_KIND_STEPS = (
    *STEPS,
    RecordedStep(
        index=3,
        name="charge",
        kind=StepKind.CALL,
        output='{"status":201,"headers":{"content-type":"application/json"},"body":{"id":"ch_9"},"error":null}',
    ),
    RecordedStep(
        index=4, name="await-payment", kind=StepKind.WAIT_FOR_EVENT, output='{"timeout":false,"data":{"ok":1}}'
    ),
    RecordedStep(index=5, name="tell-warehouse", kind=StepKind.NOTIFY, output=f'["{RUN_ID}"]'),
    RecordedStep(index=6, name="ship", kind=StepKind.INVOKE, output='{"status":"completed","output":{"parcel":"p_1"}}'),
)
# Every kind of pending step, as a run waits on several started in parallel.
ALL_PENDING = (
    PendingSleep(step_index=7, name="cool-down", kind=StepKind.SLEEP, wake_at_ms=NOW_MS + 60_000),
    PendingBranch(step_index=8, name="reserve-more"),
    PendingCall(step_index=9, name="charge-again", call=CALL_SPEC, attempt=2, deadline_ms=NOW_MS + 40_000),
    PendingCall(step_index=10, name="lookup", call=CALL_SPEC_MINIMAL, attempt=1, deadline_ms=NOW_MS + 5_000),
    PendingWait(step_index=11, name="await-refund", event_id=EVENT_ID, timeout_at_ms=NOW_MS + 86_400_000),
    PendingNotify(step_index=12, name="tell-billing", event_id="billing:ord_7731"),
    PendingInvoke(step_index=13, name="ship", child_run_id=f"{RUN_ID}.13"),
)
# Every kind of planned step, as a delivery suspends on several at once.
ALL_PLANS = (
    PlanRun(index=7, name="reserve-more"),
    PlanSleep(index=8, name="cool-down", kind=StepKind.SLEEP, duration_ms=60_000),
    PlanSleep(index=9, name="until-opening", kind=StepKind.SLEEP_UNTIL, wake_at_ms=NOW_MS + 7_200_000),
    PlanCall(index=10, name="charge", call=CALL_SPEC),
    PlanCall(index=11, name="lookup", call=CALL_SPEC_MINIMAL),
    PlanWait(index=12, name="await-payment", event_id=EVENT_ID, timeout_ms=3_600_000),
    PlanNotify(index=13, name="tell-warehouse", event_id="warehouse:ord_7731", data='{"sku":"SKU-1","quantity":2}'),
    PlanInvoke(
        index=14,
        name="ship",
        workflow="ship",
        url=CHILD_URL,
        payload='{"order_id":"ord_7731"}',
        headers=(("X-Child", "1"),),
        label="ship-ord_7731",
        retries=2,
        retry_delay="500 * (retried + 1)",
    ),
    PlanInvoke(index=15, name="invoice", workflow="invoice", url=None, payload="null"),
)
DELIVERY_EXECUTE_ONE = dataclasses.replace(
    DELIVERY, delivery_id=f"{RUN_ID}/5", attempt=1, step_index=7, execute_index=7
)
DELIVERY_FAILURE = dataclasses.replace(DELIVERY, delivery_id=f"{RUN_ID}/6", url=f"{URL}/on-failure", failure=ERROR)
CALL_DELIVERY = CallDelivery(run_id=RUN_ID, step_index=9, attempt=2, call=CALL_SPEC)


def current_run_state(**changes: object) -> RunState:
    """A run state in today's shape, nothing pending and no option set, with ``changes``."""
    values: dict[str, object] = {
        "run_id": RUN_ID,
        "seq": 1,
        "workflow": "checkout",
        "url": URL,
        "payload": "{}",
        "headers": (),
        "label": None,
        "retries": 3,
        "retry_base_ms": 1_000,
        "status": RunStatus.RUNNING,
        "created_at_ms": NOW_MS,
        "updated_at_ms": NOW_MS,
        "steps": (),
        "deliveries": 0,
        "in_flight": (),
        "waiting": (),
        "output": None,
        "error": None,
    }
    values.update(changes)
    return RunState(**values)  # type: ignore[arg-type]


NEW_SAMPLES: dict[str, object] = {
    # triggers
    "TriggerRequest.every_option": TriggerRequest(
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
        retry_delay="1000 * pow(2, retried)",
        failure_url=f"{URL}/on-failure",
    ),
    "NotifyRequest.full": NotifyRequest(event_id=EVENT_ID, data='{"paid":true,"amount":1299}', requested_at_ms=NOW_MS),
    "NotifyRequest.minimal": NotifyRequest(event_id=EVENT_ID, data="null"),
    "CancelRequest.full": CancelRequest(run_id=RUN_ID, reason="customer withdrew the order", requested_at_ms=NOW_MS),
    "CancelRequest.minimal": CancelRequest(run_id=RUN_ID),
    "RecoverRequest.full": RecoverRequest(run_id=RUN_ID, action=Recovery.RESUME, requested_at_ms=NOW_MS),
    "RecoverRequest.minimal": RecoverRequest(run_id=RUN_ID, action=Recovery.RESTART),
    # run commands
    "TriggerRun.child": TriggerRun(
        run_id=CHILD_RUN_ID,
        workflow="ship",
        url=CHILD_URL,
        payload='{"order_id":"ord_7731"}',
        now_ms=NOW_MS,
        headers=HEADERS,
        label="ship-ord_7731",
        retries=2,
        retry_base_ms=500,
        not_before_ms=NOW_MS,
        retry_delay="500 * (retried + 1)",
        failure_url=f"{CHILD_URL}/on-failure",
        parent_run_id=RUN_ID,
        parent_step_index=7,
        depth=1,
    ),
    "ReportDelivery.suspend_parallel": report(Suspend(steps=ALL_PLANS), steps=2),
    "ReportDelivery.suspend_one": report(
        Suspend(steps=(PlanWait(index=4, name="await", event_id=EVENT_ID, timeout_ms=0),))
    ),
    "ReportDelivery.cancel_full": report(Cancel(reason="order withdrawn")),
    "ReportDelivery.cancel_minimal": report(Cancel(), steps=0),
    "ReportCall.answered": ReportCall(
        run_id=RUN_ID,
        step_index=9,
        attempt=2,
        now_ms=NOW_MS,
        status=201,
        headers=(("Content-Type", "application/json"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")),
        body='{"id":"ch_9","status":"succeeded"}',
    ),
    "ReportCall.no_answer": ReportCall(
        run_id=RUN_ID,
        step_index=9,
        attempt=1,
        now_ms=NOW_MS,
        status=0,
        headers=(),
        body="null",
        error="ConnectTimeout: no answer within 10000 ms",
    ),
    "ReceiveEvent.full": ReceiveEvent(
        run_id=RUN_ID, step_index=11, event_id=EVENT_ID, data='{"paid":true,"note":"✓"}', now_ms=NOW_MS
    ),
    "ReportNotify.full": ReportNotify(
        run_id=RUN_ID, step_index=12, notified=(f"{RUN_ID}.3", "run_other"), now_ms=NOW_MS
    ),
    "ReportNotify.nobody_waiting": ReportNotify(run_id=RUN_ID, step_index=12, notified=(), now_ms=NOW_MS),
    "ChildFinished.completed": ChildFinished(
        run_id=RUN_ID,
        step_index=13,
        child_run_id=f"{RUN_ID}.13",
        status="completed",
        output='{"parcel":"p_1"}',
        error=None,
        now_ms=NOW_MS,
    ),
    "ChildFinished.failed": ChildFinished(
        run_id=RUN_ID,
        step_index=13,
        child_run_id=f"{RUN_ID}.13",
        status="failed",
        output=None,
        error=ERROR,
        now_ms=NOW_MS,
    ),
    "CancelRun.full": CancelRun(run_id=f"{RUN_ID}.13", reason=f"parent run {RUN_ID} ended", now_ms=NOW_MS),
    "CancelRun.minimal": CancelRun(run_id=RUN_ID, reason=None, now_ms=NOW_MS),
    "RecoverRun.full": RecoverRun(run_id=RUN_ID, action=Recovery.DELETE, now_ms=NOW_MS),
    # waiter commands
    "RegisterWaiter.full": RegisterWaiter(
        event_id=EVENT_ID, run_id=RUN_ID, step_index=11, timeout_at_ms=NOW_MS + 86_400_000, now_ms=NOW_MS
    ),
    "UnregisterWaiter.full": UnregisterWaiter(event_id=EVENT_ID, run_id=RUN_ID, step_index=11, now_ms=NOW_MS),
    "NotifyEvent.full": NotifyEvent(
        event_id=EVENT_ID, data='{"paid":true}', now_ms=NOW_MS, reply_run_id=RUN_ID, reply_step_index=12
    ),
    "NotifyEvent.minimal": NotifyEvent(event_id=EVENT_ID, data="null", now_ms=NOW_MS),
    # events
    "RunStarted.child": RunStarted(
        run_id=CHILD_RUN_ID,
        seq=1,
        at_ms=NOW_MS,
        workflow="ship",
        url=CHILD_URL,
        payload='{"order_id":"ord_7731"}',
        headers=HEADERS,
        label="ship-ord_7731",
        retries=2,
        retry_base_ms=500,
        retry_delay="500 * (retried + 1)",
        failure_url=f"{CHILD_URL}/on-failure",
        parent_run_id=RUN_ID,
        parent_step_index=7,
        depth=1,
    ),
    "StepScheduled.execute_only": StepScheduled(
        run_id=RUN_ID,
        seq=12,
        at_ms=NOW_MS,
        step_index=8,
        delivery_id=f"{RUN_ID}/5",
        attempt=1,
        not_before_ms=NOW_MS,
        execute_only=True,
        name="reserve-more",
    ),
    "StepCompleted.call": StepCompleted(
        run_id=RUN_ID,
        seq=14,
        at_ms=NOW_MS,
        step_index=3,
        name="charge",
        kind=StepKind.CALL,
        output=ALL_KIND_STEPS[3].output,
        delivery_id=f"{RUN_ID}/call/3#1",
    ),
    "CallStarted.full": CallStarted(
        run_id=RUN_ID, seq=13, at_ms=NOW_MS, step_index=9, name="charge", call=CALL_SPEC, deadline_ms=NOW_MS + 40_000
    ),
    "CallStarted.minimal": CallStarted(
        run_id=RUN_ID,
        seq=13,
        at_ms=NOW_MS,
        step_index=10,
        name="lookup",
        call=CALL_SPEC_MINIMAL,
        deadline_ms=NOW_MS + 5_000,
    ),
    "CallRetried.full": CallRetried(
        run_id=RUN_ID,
        seq=15,
        at_ms=NOW_MS,
        step_index=9,
        attempt=1,
        status=503,
        error="HTTP 503: upstream unavailable",
        retry_at_ms=NOW_MS + 1_000,
        deadline_ms=NOW_MS + 41_000,
    ),
    "WaitStarted.full": WaitStarted(
        run_id=RUN_ID,
        seq=16,
        at_ms=NOW_MS,
        step_index=11,
        name="await-refund",
        event_id=EVENT_ID,
        timeout_at_ms=NOW_MS + 86_400_000,
    ),
    "EventReceived.full": EventReceived(
        run_id=RUN_ID, seq=17, at_ms=NOW_MS, step_index=11, event_id=EVENT_ID, data='{"paid":true}'
    ),
    "WaitTimedOut.full": WaitTimedOut(run_id=RUN_ID, seq=17, at_ms=NOW_MS, step_index=11, event_id=EVENT_ID),
    "NotifyStarted.full": NotifyStarted(
        run_id=RUN_ID,
        seq=18,
        at_ms=NOW_MS,
        step_index=12,
        name="tell-billing",
        event_id="billing:ord_7731",
        data='{"amount":1299}',
    ),
    "InvokeStarted.full": InvokeStarted(
        run_id=RUN_ID,
        seq=19,
        at_ms=NOW_MS,
        step_index=13,
        name="ship",
        child_run_id=f"{RUN_ID}.13",
        workflow="ship",
        url=CHILD_URL,
        payload='{"order_id":"ord_7731"}',
        headers=(*HEADERS, ("X-Child", "1")),
        label="ship-ord_7731",
        retries=2,
        retry_delay="500 * (retried + 1)",
    ),
    "InvokeStarted.minimal": InvokeStarted(
        run_id=RUN_ID,
        seq=19,
        at_ms=NOW_MS,
        step_index=15,
        name="invoice",
        child_run_id=f"{RUN_ID}.15",
        workflow="invoice",
        url="https://orders.internal.example/api/workflows/invoice",
        payload="null",
        headers=(),
        label=None,
        retries=None,
        retry_delay=None,
    ),
    "RunCancelled.full": RunCancelled(run_id=RUN_ID, seq=20, at_ms=NOW_MS, reason="customer withdrew the order"),
    "RunCancelled.minimal": RunCancelled(run_id=RUN_ID, seq=20, at_ms=NOW_MS, reason=None),
    "ResultIgnored.full": ResultIgnored(
        run_id=RUN_ID, seq=21, at_ms=NOW_MS, what=f"report of delivery {RUN_ID}/5 attempt 1"
    ),
    "FailureHandlerScheduled.full": FailureHandlerScheduled(
        run_id=RUN_ID,
        seq=11,
        at_ms=NOW_MS,
        delivery_id=f"{RUN_ID}/6",
        attempt=1,
        not_before_ms=NOW_MS,
        url=f"{URL}/on-failure",
    ),
    "FailureHandled.gave_up": FailureHandled(
        run_id=RUN_ID,
        seq=12,
        at_ms=NOW_MS,
        delivery_id=f"{RUN_ID}/6",
        attempt=3,
        error=ERROR,
        retry_at_ms=NOW_MS + 4_000,
    ),
    "FailureHandled.answered": FailureHandled(
        run_id=RUN_ID, seq=12, at_ms=NOW_MS, delivery_id=f"{RUN_ID}/6", attempt=1, error=None, retry_at_ms=None
    ),
    "RunRecovered.full": RunRecovered(run_id=RUN_ID, seq=13, at_ms=NOW_MS, action=Recovery.RESUME),
    # run state
    "RunState.started": current_run_state(),
    "RunState.parallel": current_run_state(
        run_id=CHILD_RUN_ID,
        seq=30,
        headers=HEADERS,
        label="ship-ord_7731",
        status=RunStatus.WAITING,
        updated_at_ms=NOW_MS + 1_000,
        steps=ALL_KIND_STEPS,
        deliveries=6,
        in_flight=(
            PendingDelivery(
                delivery_id=f"{RUN_ID}/5", step_index=8, attempt=1, not_before_ms=NOW_MS, execute_only=True
            ),
            PendingDelivery(delivery_id=f"{RUN_ID}/6", step_index=14, attempt=2, not_before_ms=NOW_MS + 2_000),
        ),
        waiting=ALL_PENDING,
        retry_delay="500 * (retried + 1)",
        failure_url=f"{CHILD_URL}/on-failure",
        parent_run_id=RUN_ID,
        parent_step_index=7,
        depth=1,
    ),
    "RunState.sleeping": current_run_state(status=RunStatus.SLEEPING, waiting=ALL_PENDING[:1], seq=3),
    "RunState.completed": current_run_state(status=RunStatus.COMPLETED, steps=STEPS, output='{"receipt":"r_1"}'),
    "RunState.failure_handler": current_run_state(
        status=RunStatus.FAILED,
        steps=STEPS,
        deliveries=6,
        error=ERROR,
        failure_url=f"{URL}/on-failure",
        failure_delivery=PendingDelivery(delivery_id=f"{RUN_ID}/6", step_index=3, attempt=1, not_before_ms=NOW_MS),
        dead_letter=True,
    ),
    "RunState.cancelled": current_run_state(status=RunStatus.CANCELLED, steps=STEPS[:1]),
    "WaiterState.full": WaiterState(
        event_id=EVENT_ID,
        waiters=(
            Waiter(run_id=RUN_ID, step_index=11, timeout_at_ms=NOW_MS + 86_400_000),
            Waiter(run_id="run_other", step_index=0, timeout_at_ms=NOW_MS + 1_000),
        ),
        buffered=(
            BufferedNotification(
                data='{"paid":true}', at_ms=NOW_MS - 500, expires_at_ms=NOW_MS + 29_500, delivered_to=(RUN_ID, "run_b")
            ),
            BufferedNotification(data="null", at_ms=NOW_MS, expires_at_ms=NOW_MS + 30_000, delivered_to=()),
        ),
    ),
    "WaiterState.minimal": WaiterState(event_id=EVENT_ID, waiters=(), buffered=()),
    # schedule, deliveries, timers
    "Delivery.execute_one": DELIVERY_EXECUTE_ONE,
    "Delivery.failure_handler": DELIVERY_FAILURE,
    # Written with flow_key "tenant:acme", a field since removed: it reads as no flow control.
    "DeliveryRequested.failure_handler": DeliveryRequested(
        request_id=f"{RUN_ID}/6#1", not_before_ms=NOW_MS, delivery=DELIVERY_FAILURE
    ),
    "CallDelivery.full": CALL_DELIVERY,
    "CallDelivery.minimal": CallDelivery(run_id=RUN_ID, step_index=10, attempt=1, call=CALL_SPEC_MINIMAL),
    # Written with flow_key "host:payments", a field since removed: it reads as no flow control.
    "CallRequested.full": CallRequested(
        request_id=CALL_DELIVERY.request_id, not_before_ms=NOW_MS + 1_000, call=CALL_DELIVERY
    ),
    "CallRequested.minimal": CallRequested(
        request_id=f"{RUN_ID}/call/10#1",
        not_before_ms=NOW_MS,
        call=CallDelivery(run_id=RUN_ID, step_index=10, attempt=1, call=CALL_SPEC_MINIMAL),
    ),
    "ScheduleCancelled.full": ScheduleCancelled(
        run_id=RUN_ID, request_ids=(f"{RUN_ID}/4#2", f"{RUN_ID}/sleep/7", f"{RUN_ID}/deadline/9#2")
    ),
    "ScheduleCancelled.minimal": ScheduleCancelled(run_id=RUN_ID, request_ids=()),
}


# ---------------------------------------------------------------------------------------------
# Written by the shapes flow control brought: a flow (key and limits) on runs, calls and child runs,
# the flow key on deliveries and cancellations, and the scheduler's and executor's flow records.

FLOW = FlowControl(key="tenant:acme", rate=10, period_ms=60_000, parallelism=3)
FLOW_RATE = FlowControl(key="host:payments.example", rate=50)
FLOW_PARALLEL = FlowControl(key="warehouse:eu-1", parallelism=1)
CALL_SPEC_FLOW = dataclasses.replace(CALL_SPEC, flow=FLOW_RATE)
CALL_DELIVERY_FLOW = CallDelivery(run_id=RUN_ID, step_index=9, attempt=2, call=CALL_SPEC_FLOW, flow_key=FLOW_RATE.key)
DELIVERY_FLOW = dataclasses.replace(DELIVERY, delivery_id=f"{RUN_ID}/7", attempt=1, flow_key=FLOW.key)
PLAN_INVOKE_FLOW = PlanInvoke(
    index=11, name="ship", workflow="ship", url=CHILD_URL, payload='{"order_id":"ord_7731"}', flow=FLOW_PARALLEL
)

FLOW_SAMPLES: dict[str, object] = {
    "TriggerRequest.flow": TriggerRequest(workflow="checkout", url=URL, payload=PAYLOAD, run_id=RUN_ID, flow=FLOW),
    "TriggerRun.flow": TriggerRun(
        run_id=RUN_ID, workflow="checkout", url=URL, payload=PAYLOAD, now_ms=NOW_MS, flow=FLOW
    ),
    "ReportDelivery.suspend_flow": report(
        Suspend(steps=(PlanCall(index=10, name="charge", call=CALL_SPEC_FLOW), PLAN_INVOKE_FLOW))
    ),
    "RunStarted.flow": RunStarted(
        run_id=RUN_ID,
        seq=1,
        at_ms=NOW_MS,
        workflow="checkout",
        url=URL,
        payload=PAYLOAD,
        headers=(),
        label=None,
        retries=3,
        retry_base_ms=1_000,
        flow=FLOW,
    ),
    "CallStarted.flow": CallStarted(
        run_id=RUN_ID,
        seq=13,
        at_ms=NOW_MS,
        step_index=9,
        name="charge",
        call=CALL_SPEC_FLOW,
        deadline_ms=NOW_MS + 40_000,
    ),
    "InvokeStarted.flow": InvokeStarted(
        run_id=RUN_ID,
        seq=19,
        at_ms=NOW_MS,
        step_index=11,
        name="ship",
        child_run_id=f"{RUN_ID}.11",
        workflow="ship",
        url=CHILD_URL,
        payload='{"order_id":"ord_7731"}',
        headers=HEADERS,
        label=None,
        retries=None,
        retry_delay=None,
        flow=FLOW_PARALLEL,
    ),
    "RunState.flow": current_run_state(
        seq=6,
        status=RunStatus.WAITING,
        steps=STEPS,
        deliveries=4,
        in_flight=(
            PendingDelivery(
                delivery_id=f"{RUN_ID}/4", step_index=8, attempt=1, not_before_ms=NOW_MS, execute_only=True
            ),
        ),
        waiting=(
            PendingCall(step_index=9, name="charge", call=CALL_SPEC_FLOW, attempt=2, deadline_ms=NOW_MS + 40_000),
            PendingInvoke(step_index=11, name="ship", child_run_id=f"{RUN_ID}.11"),
        ),
        flow=FLOW,
    ),
    "Delivery.flow": DELIVERY_FLOW,
    "CallDelivery.flow": CALL_DELIVERY_FLOW,
    "DeliveryRequested.flow": DeliveryRequested(
        request_id=DELIVERY_FLOW.request_id, not_before_ms=NOW_MS + 2_000, delivery=DELIVERY_FLOW, flow=FLOW
    ),
    "CallRequested.flow": CallRequested(
        request_id=CALL_DELIVERY_FLOW.request_id,
        not_before_ms=NOW_MS + 1_000,
        call=CALL_DELIVERY_FLOW,
        flow=FLOW_RATE,
        lease_ms=39_000,
    ),
    "ScheduleCancelled.flow": ScheduleCancelled(
        run_id=RUN_ID, request_ids=(f"{RUN_ID}/7#1", f"{RUN_ID}/8#2"), flow_key=FLOW.key
    ),
    "FlowSettled.full": FlowSettled(
        request_id=CALL_DELIVERY_FLOW.request_id,
        flow_key=FLOW_RATE.key,
        started_ms=NOW_MS + 15,
        settled_ms=NOW_MS + 420,
    ),
    "FlowSlot.emitted": FlowSlot(request_id=DELIVERY_FLOW.request_id, flow=FLOW, run_id=RUN_ID, emitted_ms=NOW_MS),
    "FlowSlot.call_settled": FlowSlot(
        request_id=CALL_DELIVERY_FLOW.request_id,
        flow=FLOW_RATE,
        run_id=RUN_ID,
        emitted_ms=NOW_MS,
        started_ms=NOW_MS + 15,
        settled_ms=NOW_MS + 420,
        call_step_index=9,
        lease_until_ms=NOW_MS + 39_000,
    ),
    "FlowKeyState.busy": FlowKeyState(
        key=FLOW.key,
        queued=42,
        in_flight=3,
        starts_in_window=10,
        rate=10,
        period_ms=60_000,
        parallelism=3,
        updated_ms=NOW_MS,
    ),
    "FlowKeyState.idle": FlowKeyState(
        key=FLOW_RATE.key,
        queued=0,
        in_flight=0,
        starts_in_window=0,
        rate=None,
        period_ms=1_000,
        parallelism=None,
        updated_ms=NOW_MS,
    ),
}

# ---------------------------------------------------------------------------------------------
# Written by the shapes the hot path brought: a report of the steps a delivery has done so far, which
# the executor goes on with.

HOT_PATH_SAMPLES: dict[str, object] = {
    "ReportDelivery.continuing": report(Continuing(), steps=1),
    "DeliveryCancelled.full": DeliveryCancelled(run_id=RUN_ID),
    # A step's result on its own, as the projector writes a run's snapshot in parts.
    "RecordedStep.full": RecordedStep(index=3, name="charge", kind=StepKind.RUN, output='{"charge_id":"ch_1"}'),
}

# ---------------------------------------------------------------------------------------------
# Written by the shapes scale brought: a delivery whose results travel apart (core.apart).

SCALE_SAMPLES: dict[str, object] = {
    "Delivery.steps_apart": dataclasses.replace(DELIVERY, steps=DELIVERY.steps[1:], steps_apart=1),
    # Held by the scheduler without its results; the projector adds them when it is let through.
    "DeliveryRequested.steps_apart": DeliveryRequested(
        request_id=DELIVERY_FLOW.request_id,
        not_before_ms=NOW_MS + 2_000,
        delivery=dataclasses.replace(DELIVERY_FLOW, steps=(), steps_apart=len(STEPS)),
        flow=FLOW,
    ),
    "DeliverySteps.full": DeliverySteps(
        run_id=RUN_ID, delivery_id=DELIVERY.delivery_id, attempt=DELIVERY.attempt, steps=DELIVERY.steps[:1]
    ),
}

# Who asked for an operator's action, and why (issue 15's audit trail): ``actor`` on the requests,
# the commands and the events they become; ``reason`` on the recoveries too.
OPERATOR = "client 10.0.0.7"
AUDIT_SAMPLES: dict[str, object] = {
    "NotifyRequest.actor": NotifyRequest(event_id=EVENT_ID, data="null", requested_at_ms=NOW_MS, actor=OPERATOR),
    "CancelRequest.actor": CancelRequest(run_id=RUN_ID, reason="duplicate order", actor=OPERATOR),
    "RecoverRequest.actor": RecoverRequest(
        run_id=RUN_ID, action=Recovery.RESUME, actor=OPERATOR, reason="the card processor is back"
    ),
    "CancelRun.actor": CancelRun(run_id=RUN_ID, reason="duplicate order", now_ms=NOW_MS, actor=OPERATOR),
    "RecoverRun.actor": RecoverRun(
        run_id=RUN_ID, action=Recovery.RESTART, now_ms=NOW_MS, actor=OPERATOR, reason="fixed the payload"
    ),
    "NotifyEvent.actor": NotifyEvent(
        event_id=EVENT_ID, data="null", now_ms=NOW_MS, reply_run_id=RUN_ID, reply_step_index=12, actor=f"run {RUN_ID}"
    ),
    "ReceiveEvent.actor": ReceiveEvent(
        run_id=RUN_ID, step_index=11, event_id=EVENT_ID, data="true", now_ms=NOW_MS, actor=OPERATOR
    ),
    "EventReceived.actor": EventReceived(
        run_id=RUN_ID, seq=17, at_ms=NOW_MS, step_index=11, event_id=EVENT_ID, data="true", actor=OPERATOR
    ),
    "RunCancelled.actor": RunCancelled(run_id=RUN_ID, seq=20, at_ms=NOW_MS, reason="duplicate order", actor=OPERATOR),
    "RunRecovered.actor": RunRecovered(
        run_id=RUN_ID, seq=13, at_ms=NOW_MS, action=Recovery.DELETE, actor=OPERATOR, reason="refunded by hand"
    ),
    "WaiterState.actor": WaiterState(
        event_id=EVENT_ID,
        waiters=(),
        buffered=(
            BufferedNotification(
                data="true", at_ms=NOW_MS, expires_at_ms=NOW_MS + 30_000, delivered_to=(), actor=OPERATOR
            ),
        ),
    ),
}

# Whether a failure was retryable (a 4xx is not), the failure handler's failed attempt as its own event,
# and a run whose start was put off.
FAILURE_SAMPLES: dict[str, object] = {
    "RunState.scheduled": current_run_state(status=RunStatus.SCHEDULED, steps=(), waiting=(), seq=2),
    "StepFailed.not_retryable": StepFailed(
        run_id=RUN_ID,
        seq=9,
        at_ms=NOW_MS,
        step_index=2,
        name="charge",
        delivery_id=f"{RUN_ID}/3",
        attempt=1,
        error=ErrorInfo(type="HTTP404", message="endpoint answered 404: no workflow here"),
        retry_at_ms=None,
        retryable=False,
    ),
    "FailureHandlerFailed.retry": FailureHandlerFailed(
        run_id=RUN_ID,
        seq=14,
        at_ms=NOW_MS,
        delivery_id=f"{RUN_ID}/6",
        attempt=1,
        error=ERROR,
        retry_at_ms=NOW_MS + 2_000,
        retryable=True,
    ),
    "FailureHandlerFailed.gave_up": FailureHandlerFailed(
        run_id=RUN_ID,
        seq=16,
        at_ms=NOW_MS,
        delivery_id=f"{RUN_ID}/8",
        attempt=3,
        error=ERROR,
        retry_at_ms=None,
        retryable=False,
    ),
}

# Every sample: the golden file of each decodes to it.
SAMPLES: dict[str, object] = {
    **FIRST_SAMPLES,
    **NEW_SAMPLES,
    **FLOW_SAMPLES,
    **HOT_PATH_SAMPLES,
    **SCALE_SAMPLES,
    **AUDIT_SAMPLES,
    **FAILURE_SAMPLES,
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
