"""The records that exist only on the wire, and which record types each topic carries.

The core's commands, events, run state and schedule records travel as they are; the two records
here belong to the adapters: a trigger as any service may publish it (it has no ``now_ms`` and may
leave the run id to the engine), and a dead letter, which wraps input that could not be applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from stepstream.core.apart import DeliverySteps
from stepstream.core.commands import (
    CancelRun,
    ChildFinished,
    FireTimer,
    ReceiveEvent,
    RecoverRun,
    Recovery,
    ReportCall,
    ReportDelivery,
    ReportNotify,
    TriggerRun,
)
from stepstream.core.effects import (
    CallDelivery,
    CallRequested,
    Delivery,
    DeliveryCancelled,
    DeliveryRequested,
    ScheduleCancelled,
    TimerRequested,
)
from stepstream.core.events import (
    CallRetried,
    CallStarted,
    EventReceived,
    FailureHandled,
    FailureHandlerFailed,
    FailureHandlerScheduled,
    InvokeStarted,
    NotifyStarted,
    ResultIgnored,
    RunCancelled,
    RunCompleted,
    RunFailed,
    RunRecovered,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    WaitStarted,
    WaitTimedOut,
)
from stepstream.core.flow import FlowKeyState, FlowSettled, FlowSlot
from stepstream.core.messages import FlowControl
from stepstream.core.state import RecordedStep, RunState
from stepstream.core.waiters import NotifyEvent, RegisterWaiter, UnregisterWaiter, WaiterState


@dataclass(frozen=True, slots=True, kw_only=True)
class TriggerRequest:
    """A request to start a run, published to the ``triggers`` topic by any service or by the api.

    The projector turns it into a :class:`~stepstream.core.TriggerRun`, stamping its own clock and,
    when ``run_id`` is None, a new run id.
    """

    workflow: str
    url: str
    payload: str  # JSON text
    run_id: str | None = None  # None: the engine assigns one
    headers: tuple[tuple[str, str], ...] = ()
    label: str | None = None
    retries: int | None = None  # None: the projector's default
    retry_base_ms: int | None = None  # None: the projector's default
    not_before_ms: int | None = None
    requested_at_ms: int | None = None  # the caller's clock, for tracing only
    retry_delay: str | None = None  # a delay rule such as "1000 * pow(2, retried)"; None: exponential backoff
    failure_url: str | None = None  # where the failure handler is called; None: the workflow's own url
    flow: FlowControl | None = None  # every delivery of the run under this key and these limits


@dataclass(frozen=True, slots=True, kw_only=True)
class NotifyRequest:
    """Notify an event id: every run waiting on it wakes with ``data``; a run that starts waiting
    within the projector's buffer window receives it too. Keyed by event id on ``triggers``."""

    event_id: str
    data: str  # JSON text
    requested_at_ms: int | None = None
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class CancelRequest:
    """Cancel a run. Keyed by run id on ``triggers``."""

    run_id: str
    reason: str | None = None
    requested_at_ms: int | None = None
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverRequest:
    """Act on a failed run in the dead-letter list: ``action`` resume, restart or delete. Keyed by run id."""

    run_id: str
    action: Recovery
    requested_at_ms: int | None = None
    actor: str | None = None  # who asked: an api caller, a run ("run <id>"); None: the engine, or written before
    reason: str | None = None  # why, as the operator gave it


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetter:
    """A record a consumer could not decode or apply, kept byte for byte with the reason."""

    source_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None  # None: the record was a tombstone
    reason: str
    consumer: str  # the service that gave up on it
    at_ms: int


EVENT_TYPES: Final = (
    RunStarted,
    StepScheduled,
    StepCompleted,
    StepFailed,
    SleepStarted,
    CallStarted,
    CallRetried,
    WaitStarted,
    EventReceived,
    WaitTimedOut,
    NotifyStarted,
    InvokeStarted,
    RunCompleted,
    RunFailed,
    RunCancelled,
    ResultIgnored,
    FailureHandlerScheduled,
    FailureHandled,
    FailureHandlerFailed,
    RunRecovered,
)
RUN_COMMAND_TYPES: Final = (
    TriggerRun,
    ReportDelivery,
    FireTimer,
    ReportCall,
    ReceiveEvent,
    ReportNotify,
    ChildFinished,
    CancelRun,
    RecoverRun,
)
WAITER_COMMAND_TYPES: Final = (RegisterWaiter, UnregisterWaiter, NotifyEvent)

# Keyed by topic role, the names in ``stepstream.kafka.topics.TopicNames`` (without the prefix).
# A consumer passes its topic's tuple to ``Codec.decode(..., expected=...)`` so a record written to
# the wrong topic is refused (and dead-lettered) instead of being applied as something else.
TOPIC_TYPES: Final[Mapping[str, tuple[type, ...]]] = MappingProxyType(
    {
        "triggers": (TriggerRequest, NotifyRequest, CancelRequest, RecoverRequest),
        # Run commands are keyed by run id; waiter commands by event id.
        # And a delivery the scheduler let through without its results, for the projector to add them.
        "commands": RUN_COMMAND_TYPES + WAITER_COMMAND_TYPES + (Delivery,),
        "events": EVENT_TYPES,
        "runs": (RunState, RecordedStep),  # a run's state without results, and each result (deltas)
        "waiters": (WaiterState,),
        # Keyed by flow key where flow control sets one, else by run id; the executor's settlements too.
        "schedule": (DeliveryRequested, CallRequested, TimerRequested, ScheduleCancelled, FlowSettled),
        # A delivery's results that do not fit on it come first, in DeliverySteps (core.apart).
        "deliveries": (Delivery, DeliverySteps, CallDelivery, DeliveryCancelled),
        # The scheduler's changelog, keyed by request id: its requests and its flow-control slots.
        "timers": (DeliveryRequested, CallRequested, TimerRequested, FlowSlot),  # a null value is a tombstone
        "flow": (FlowKeyState,),  # compacted: the latest state of each flow-control key
        "deadletter": (DeadLetter,),
    }
)

# Every type the codec encodes: each is a top-level schema in ``schemas/``.
RECORD_TYPES: Final[tuple[type, ...]] = tuple(
    dict.fromkeys(record_type for types in TOPIC_TYPES.values() for record_type in types)
)
