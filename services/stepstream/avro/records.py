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

from stepstream.core.effects import Delivery, DeliveryRequested, TimerRequested
from stepstream.core.messages import (
    FireTimer,
    ReportDelivery,
    RunCompleted,
    RunFailed,
    RunStarted,
    SleepStarted,
    StepCompleted,
    StepFailed,
    StepScheduled,
    TriggerRun,
)
from stepstream.core.state import RunState


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


EVENT_TYPES: Final = (RunStarted, StepScheduled, StepCompleted, StepFailed, SleepStarted, RunCompleted, RunFailed)

# Keyed by topic role, the names in ``stepstream.kafka.topics.TopicNames`` (without the prefix).
# A consumer passes its topic's tuple to ``Codec.decode(..., expected=...)`` so a record written to
# the wrong topic is refused (and dead-lettered) instead of being applied as something else.
TOPIC_TYPES: Final[Mapping[str, tuple[type, ...]]] = MappingProxyType(
    {
        "triggers": (TriggerRequest,),
        "commands": (TriggerRun, ReportDelivery, FireTimer),
        "events": EVENT_TYPES,
        "runs": (RunState,),
        "schedule": (DeliveryRequested, TimerRequested),
        "deliveries": (Delivery,),
        "timers": (DeliveryRequested, TimerRequested),  # a null value is a tombstone, never decoded
        "deadletter": (DeadLetter,),
    }
)

# Every type the codec encodes: each is a top-level schema in ``schemas/``.
RECORD_TYPES: Final[tuple[type, ...]] = tuple(
    dict.fromkeys(record_type for types in TOPIC_TYPES.values() for record_type in types)
)
