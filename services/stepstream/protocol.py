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
SIGNATURE_HEADER = "Stepstream-Signature"  # "t=<unix seconds>,n=<nonce>,v2=<hex hmac>[,v2=<hex hmac>]"
URL_HEADER = "Stepstream-Url"  # the url the request was sent to, as signed
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
MAX_EVENT_ID_LENGTH = 256
MAX_NAME_LENGTH = 256
MAX_RETRIES = 100
MAX_FLOW_KEY_LENGTH = 200
MAX_FLOW_PERIOD_MS = 7 * 86_400_000  # a week, as the engine's flow control allows
MAX_FLOW_LIMIT = 1_000_000_000  # a rate or a parallelism: far beyond any real limit, and fits every record
MAX_SESSION_LENGTH = 64
UNKNOWN_SESSION = "unknown_session"  # the error of a 409 to a ``resume`` the SDK has no session for
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")

StepKindName = Literal["run", "sleep", "sleep_until", "call", "wait_for_event", "notify", "invoke"]


class _Model(BaseModel):
    # Unknown fields are ignored, not refused: within a protocol version new fields are additive, and
    # an endpoint deployed before a field existed must keep working when the engine starts sending it.
    model_config = ConfigDict(frozen=True, extra="ignore")


class RecordedStep(_Model):
    """A step the run has already completed; ``output`` is its JSON value.

    By kind: ``run`` the function's return value; ``sleep``/``sleep_until`` null; ``call``
    ``{"status", "headers", "body", "error"}``; ``wait_for_event`` ``{"timeout", "data"}``; ``notify``
    the list of run ids that were woken; ``invoke`` ``{"run_id", "status", "output", "error"}``.
    """

    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str
    kind: StepKindName
    output: Any = None


class ErrorDetail(_Model):
    type: str
    message: str


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
    # Set: run only the `run` step at this index (one of several awaited in parallel), report it and
    # answer `continue`; run nothing else.
    execute_index: int | None = Field(default=None, ge=0, le=MAX_STEP_INDEX)
    # Set: the run failed with this error; call the workflow's failure handler instead of the workflow.
    failure: ErrorDetail | None = None
    # Set: the executor goes on with this delivery across requests (the hot path). The SDK may keep
    # the workflow running when it answers ``continue``, waiting at its next step, and say so
    # (``DeliveryResponse.session``); the next request of the session then ``resume``s it, without
    # the payload and the steps, which the SDK has, instead of replaying the run from the top.
    session: str | None = Field(default=None, min_length=1, max_length=MAX_SESSION_LENGTH)
    # True: this request resumes the session ``session``: the steps the SDK answered last are durable
    # now, and the workflow may go on. Without the session (another process, or it expired) the SDK
    # answers 409 ``unknown_session``, and the executor sends the whole delivery again.
    resume: bool = False


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


class FailNext(_Model):
    """The workflow raised. ``retryable`` false fails the run now; ``retry_after_ms`` sets the delay."""

    type: Literal["fail"] = "fail"
    error: ErrorDetail
    retryable: bool = True
    retry_after_ms: int | None = Field(default=None, ge=0, le=MAX_DELAY_MS)
    index: int | None = Field(default=None, ge=0, le=MAX_STEP_INDEX)
    name: str | None = None


class FlowControlSpec(_Model):
    """A flow-control key and its limits, for a planned ``call`` (the request) or ``invoke`` (the child run).

    At most ``rate`` starts in any window of ``period_ms``, and at most ``parallelism`` started and
    not yet finished; an unset limit does not apply. Work over a limit waits; it is never refused.
    """

    key: str = Field(min_length=1, max_length=MAX_FLOW_KEY_LENGTH)
    rate: int | None = Field(default=None, ge=1, le=MAX_FLOW_LIMIT)
    period_ms: int = Field(default=1_000, ge=1, le=MAX_FLOW_PERIOD_MS)
    parallelism: int | None = Field(default=None, ge=1, le=MAX_FLOW_LIMIT)


class PlannedRun(_Model):
    """A `run` step awaited in parallel with others: the engine delivers it on its own (``execute_index``)."""

    kind: Literal["run"] = "run"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)


class PlannedSleep(_Model):
    kind: Literal["sleep"] = "sleep"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    duration_ms: int = Field(ge=0, le=MAX_DELAY_MS)


class PlannedSleepUntil(_Model):
    kind: Literal["sleep_until"] = "sleep_until"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    wake_at_ms: int = Field(ge=0, le=MAX_EPOCH_MS)


class PlannedCall(_Model):
    """An HTTP call the engine makes; the step's result is the answer, whatever its status."""

    kind: Literal["call"] = "call"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    url: str = Field(min_length=1, pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] = "GET"
    headers: list[tuple[str, str]] = []
    body: str | None = None
    timeout_ms: int = Field(default=300_000, ge=1, le=MAX_DELAY_MS)
    retries: int = Field(default=0, ge=0, le=MAX_RETRIES)
    retry_delay: str | None = Field(default=None, max_length=200)
    # Set: the request waits for the limits of its own flow-control key; None: it is not throttled.
    flow_control: FlowControlSpec | None = None


class PlannedWait(_Model):
    kind: Literal["wait_for_event"] = "wait_for_event"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    event_id: str = Field(min_length=1, max_length=MAX_EVENT_ID_LENGTH)
    timeout_ms: int = Field(ge=0, le=MAX_DELAY_MS)


class PlannedNotify(_Model):
    kind: Literal["notify"] = "notify"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    event_id: str = Field(min_length=1, max_length=MAX_EVENT_ID_LENGTH)
    data: Any = None


class PlannedInvoke(_Model):
    """A child run of ``workflow``; ``url`` None: the same app's route for it."""

    kind: Literal["invoke"] = "invoke"
    index: int = Field(ge=0, le=MAX_STEP_INDEX)
    name: str = Field(max_length=MAX_NAME_LENGTH)
    workflow: str = Field(min_length=1, max_length=200)
    url: str | None = Field(default=None, pattern=r"^https?://")
    payload: Any = None
    headers: list[tuple[str, str]] = []
    label: str | None = Field(default=None, max_length=200)
    retries: int | None = Field(default=None, ge=0, le=MAX_RETRIES)
    retry_delay: str | None = Field(default=None, max_length=200)
    # Set: every delivery of the child run waits for the limits of this key; None: none.
    flow_control: FlowControlSpec | None = None


PlannedStep = Annotated[
    PlannedRun | PlannedSleep | PlannedSleepUntil | PlannedCall | PlannedWait | PlannedNotify | PlannedInvoke,
    Field(discriminator="kind"),
]


class SuspendNext(_Model):
    """The workflow is blocked on these steps (one, or several awaited in parallel): start them all,
    and deliver again when every one has a result."""

    type: Literal["suspend"] = "suspend"
    steps: list[PlannedStep] = Field(min_length=1)


class CancelNext(_Model):
    """The workflow cancelled its own run."""

    type: Literal["cancel"] = "cancel"
    reason: str | None = Field(default=None, max_length=2_000)


Next = Annotated[
    ContinueNext | SleepNext | CompleteNext | FailNext | SuspendNext | CancelNext, Field(discriminator="type")
]


class DeliveryResponse(_Model):
    protocol: Literal[1] = PROTOCOL_VERSION
    steps: list[CompletedStep] = []
    next: Next
    # "kept": the SDK answered ``continue`` and keeps the workflow waiting for the session's next
    # request (``resume``); None: it kept nothing, and the next request must carry the whole delivery.
    session: Literal["kept"] | None = None


class ErrorBody(_Model):
    """The body of a 4xx/5xx answer from the SDK."""

    error: str
    message: str
