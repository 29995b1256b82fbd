"""The HTTP request of a delivery: its JSON body and its headers, signed for where it goes. Pure but
for the clock and the nonce the signature takes."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from stepstream import protocol, signing
from stepstream.config import ExecutorSettings
from stepstream.core import Delivery


def new_session_id() -> str:
    return uuid.uuid4().hex


def request_body(delivery: Delivery, budget_ms: int, *, session: str | None = None, resume: bool = False) -> bytes:
    """The JSON body of a request of ``delivery``. ``session``: the executor goes on with it across
    requests; ``resume``: this one resumes the session the SDK keeps, and carries neither the payload
    nor the steps, which the SDK has (so a step's request stays small however long the run)."""
    request: dict[str, Any] = {
        "protocol": protocol.PROTOCOL_VERSION,
        "run_id": delivery.run_id,
        "workflow": delivery.workflow,
        "delivery_id": delivery.delivery_id,
        "attempt": delivery.attempt,
        "budget_ms": budget_ms,
    }
    if session is not None:
        request["session"] = session
    if resume:
        request["resume"] = True
    else:
        request["payload"] = json.loads(delivery.payload)
        request["steps"] = [
            {"index": step.index, "name": step.name, "kind": step.kind.value, "output": json.loads(step.output)}
            for step in delivery.steps
        ]
    if delivery.execute_index is not None:
        request["execute_index"] = delivery.execute_index
    if delivery.failure is not None:
        request["failure"] = {"type": delivery.failure.type, "message": delivery.failure.message}
    return json.dumps(request, separators=(",", ":")).encode()


def budget_ms_for(delivery: Delivery, configured_ms: int) -> int:
    """The time the SDK may run further steps in ``delivery``: none under a flow-control key, whose
    limits count every step start, so the SDK must not start several steps in one delivery."""
    return 0 if delivery.flow_key is not None else configured_ms


def signed_request(
    delivery: Delivery, url: str, settings: ExecutorSettings, *, session: str | None = None, resume: bool = False
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the POST of ``delivery`` to ``url``, signed for that url with a new nonce."""
    body = request_body(delivery, budget_ms_for(delivery, settings.budget_ms), session=session, resume=resume)
    # The run's credential headers are sealed in its records: opened here, to be sent (SealError if not).
    headers = dict(settings.sealer.open(delivery.headers))
    headers.update(
        {
            "Content-Type": "application/json",
            protocol.PROTOCOL_HEADER: str(protocol.PROTOCOL_VERSION),
            protocol.RUN_ID_HEADER: delivery.run_id,
            protocol.DELIVERY_ID_HEADER: delivery.delivery_id,
            protocol.ATTEMPT_HEADER: str(delivery.attempt),
        }
    )
    if settings.signing_keys:
        headers[protocol.URL_HEADER] = url
        headers[protocol.SIGNATURE_HEADER] = signing.sign(
            body,
            settings.signing_keys,
            timestamp=int(time.time()),
            nonce=signing.new_nonce(),  # per request: a redelivery is a new request, with a new nonce
            url=url,
            legacy=settings.sign_v1,
        )
    return body, headers
