"""Records on the public ``triggers`` topic, as the core commands they ask for. Pure but for new run ids.

Any producer may write ``triggers``: a record is checked here against the bounds the api enforces
(``stepstream.core.limits``), and one the engine cannot carry out is refused with the reason (the
projector dead-letters it) before it can break a delivery.
"""

from __future__ import annotations

import json

from ulid import ULID

from stepstream.avro import CancelRequest, NotifyRequest, RecoverRequest, TriggerRequest
from stepstream.core import CancelRun, Command, NotifyEvent, RecoverRun, TriggerRun, WaiterCommand, trigger_problem


def new_run_id() -> str:
    return f"run_{ULID()}"


def trigger_command(request: TriggerRequest, now_ms: int) -> TriggerRun:
    """A trigger from the public topic as a core command; the engine names runs the caller did not."""
    return TriggerRun(
        run_id=request.run_id or new_run_id(),
        workflow=request.workflow,
        url=request.url,
        payload=request.payload,
        now_ms=now_ms,
        headers=request.headers,
        label=request.label,
        retries=request.retries,
        retry_base_ms=request.retry_base_ms,
        not_before_ms=request.not_before_ms,
        retry_delay=request.retry_delay,
        failure_url=request.failure_url,
        flow=request.flow,
    )


def _not_json(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON value")


def _check_json(field_name: str, text: str) -> None:
    try:
        # Strictly JSON: Python's parser takes NaN and Infinity, which no other reader (nor the SDK's) does.
        json.loads(text, parse_constant=_not_json)
    except ValueError as error:
        raise ValueError(f"Expected {field_name} to be JSON text, but it is not ({error}): {text[:100]!r}") from None


PublicRequest = TriggerRequest | NotifyRequest | CancelRequest | RecoverRequest
PUBLIC_TYPES = (TriggerRequest, NotifyRequest, CancelRequest, RecoverRequest)


def public_command(request: PublicRequest, now_ms: int) -> Command | WaiterCommand:
    """A record from the public ``triggers`` topic as the core command it asks for.

    Raises ``ValueError`` saying why for a record the engine cannot carry out (user data that is not
    JSON text, a value out of the bounds the api enforces), so it is dead-lettered before it can
    break a delivery.
    """
    if isinstance(request, TriggerRequest):
        _check_json("payload", request.payload)
    elif isinstance(request, NotifyRequest):
        _check_json("data", request.data)
    match request:
        case TriggerRequest():
            trigger = trigger_command(request, now_ms)
            if (problem := trigger_problem(trigger)) is not None:
                raise ValueError(problem)
            return trigger
        case NotifyRequest():
            return NotifyEvent(event_id=request.event_id, data=request.data, now_ms=now_ms, actor=request.actor)
        case CancelRequest():
            return CancelRun(run_id=request.run_id, reason=request.reason, now_ms=now_ms, actor=request.actor)
        case RecoverRequest():
            return RecoverRun(
                run_id=request.run_id, action=request.action, now_ms=now_ms, actor=request.actor, reason=request.reason
            )
