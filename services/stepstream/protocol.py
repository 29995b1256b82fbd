"""The native delivery protocol, version 1: what the executor sends a workflow endpoint and what the
SDK answers. Both sides import these types; ``docs/protocol.md`` describes them for other languages.

A delivery is ``POST <endpoint url>`` with a :class:`DeliveryRequest` as JSON and the headers below.
The endpoint answers ``200`` with a :class:`DeliveryResponse`, or a 4xx/5xx with an :class:`ErrorBody`.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

PROTOCOL_VERSION: Final = 1

# Request headers.
SIGNATURE_HEADER = "Stepstream-Signature"  # "t=<unix seconds>,v1=<hex hmac>[,v1=<hex hmac>]"
PROTOCOL_HEADER = "Stepstream-Protocol"  # "1"
RUN_ID_HEADER = "Stepstream-Run-Id"
DELIVERY_ID_HEADER = "Stepstream-Delivery-Id"  # stable across redeliveries: the idempotency key
ATTEMPT_HEADER = "Stepstream-Attempt"


# Bounds on numbers an endpoint sends, so that every answer fits the engine's records (Avro longs)
# even after the engine adds the current time: a step index, and a delay or a time of at most about
# a hundred years.
MAX_STEP_INDEX = 1_000_000
MAX_DELAY_MS = 100 * 366 * 86_400_000
MAX_EPOCH_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z


class _Model(BaseModel):
    # Unknown fields are ignored, not refused: within a protocol version new fields are additive, and
    # an endpoint deployed before a field existed must keep working when the engine starts sending it.
    model_config = ConfigDict(frozen=True, extra="ignore")


class RecordedStep(_Model):
    """A step the run has already completed; ``output`` is its JSON value."""

    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str
    kind: Literal["run", "sleep", "sleep_until"]
    output: Any = None


class DeliveryRequest(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    run_id: str
    workflow: str
    delivery_id: str
    attempt: int = Field(ge=1)
    payload: Any = None
    steps: list[RecordedStep] = []
    # The SDK may run consecutive `run` steps in this delivery until this budget is spent; 0 means
    # one step per delivery.
    budget_ms: int = Field(default=0, ge=0)


class CompletedStep(_Model):
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str
    kind: Literal["run"] = "run"
    output: Any = None


class ContinueNext(_Model):
    """More steps remain; deliver again at once."""

    type: Literal["continue"] = "continue"


class SleepNext(_Model):
    """The next step sleeps: for ``duration_ms`` from now, or until ``wake_at_ms`` (epoch ms)."""

    type: Literal["sleep"] = "sleep"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str
    duration_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    wake_at_ms: int | None = Field(default=None, ge=0, le=MAX_EPOCH_MS)


class CompleteNext(_Model):
    """The workflow returned ``output``."""

    type: Literal["complete"] = "complete"
    output: Any = None


class ErrorDetail(_Model):
    type: str
    message: str


class FailNext(_Model):
    """The workflow raised. ``retryable`` false fails the run now; ``retry_after_ms`` sets the delay."""

    type: Literal["fail"] = "fail"
    error: ErrorDetail
    retryable: bool = True
    retry_after_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    index: int | None = Field(default=None, ge=0, le=MAX_STEP_INDEX)
    name: str | None = None


Next = Annotated[ContinueNext | SleepNext | CompleteNext | FailNext, Field(discriminator="type")]


class DeliveryResponse(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    steps: list[CompletedStep] = []
    next: Next


class ErrorBody(_Model):
    """The body of a 4xx/5xx answer from the SDK."""

    error: str
    message: str
