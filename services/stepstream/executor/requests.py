"""One HTTP request of the executor, built and sent: a delivery's (its JSON body and its headers,
signed for where it goes; building it is pure but for the clock and the nonce the signature takes) or
one attempt of an engine-side call's (exactly as the step asked), each with its timeout, the
credential headers sealed in the run's records opened just before it goes out, its answer read, and
the request counted in the metrics.

Apart from the service so that what goes out on the wire and what comes back is in one place: the
service's loop hands a request over and reports what this module makes of the answer (a
:class:`~stepstream.executor.outcome.Reply`, a ``ReportCall``), and never touches HTTP itself.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from stepstream import metrics, protocol, signing
from stepstream.clock import Clock
from stepstream.config import ExecutorSettings
from stepstream.core import CallDelivery, Delivery, ErrorInfo, Fail, ReportCall, headers_problem
from stepstream.executor import calls
from stepstream.executor.outcome import Reply, from_transport_error, parse_retry_after, reply_of
from stepstream.sealing import Sealer, SealError


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


async def post_delivery(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str], *, timeout_ms: int
) -> Reply:
    """POST one request of a delivery (:func:`signed_request`) to ``url`` and read the answer: what the
    SDK answered, or the failure to report when there is no answer, or no request that can be sent."""
    problem = headers_problem(tuple(headers.items()))
    if problem is not None:
        # The same request would be refused on every attempt: the run fails with the reason.
        return Reply((), Fail(error=ErrorInfo(type="InvalidRequest", message=problem), retryable=False))
    timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
    try:
        async with (
            measured("delivery") as outcome,
            session.post(url, data=body, headers=headers, timeout=timeout) as response,
        ):
            outcome.status = response.status
            answer = await response.read()
            return reply_of(response.status, answer, parse_retry_after(response.headers.get("Retry-After")))
    except TimeoutError:
        message = f"endpoint did not answer within {timeout_ms} ms"
        return Reply((), from_transport_error("Timeout", message))
    except aiohttp.ClientError as error:
        return Reply((), from_transport_error("ConnectionError", f"{type(error).__name__}: {error}"))
    except ValueError as error:  # a request aiohttp will not send (a url it cannot parse, say): no retry mends it
        return Reply((), Fail(error=ErrorInfo(type="InvalidRequest", message=f"{error}"[:2_000]), retryable=False))


async def send_call(session: aiohttp.ClientSession, call: CallDelivery, sealer: Sealer, clock: Clock) -> ReportCall:
    """Make one attempt of a call, exactly as the step asked: not signed, no Stepstream headers."""
    spec = call.call
    try:
        headers = sealer.open(spec.headers)  # the step's credentials, sealed in its records
    except SealError as problem:
        return calls.unanswered(call, now_ms=clock.now_ms(), error=f"SealError: {problem}")
    try:
        async with (
            measured("call") as outcome,
            session.request(
                spec.method,
                spec.url,
                headers=headers,  # a sequence of pairs: a repeated name is sent repeated
                data=None if spec.body is None else spec.body.encode(),
                timeout=aiohttp.ClientTimeout(total=spec.timeout_ms / 1000),
                skip_auto_headers=("Content-Type",),  # the step's headers say what the body is, or nothing does
            ) as response,
        ):
            outcome.status = response.status
            body = await _read_at_most(response, calls.MAX_CALL_BODY_BYTES)
            if body is None:
                return calls.unanswered(
                    call,
                    now_ms=clock.now_ms(),
                    status=response.status,
                    raw_headers=response.raw_headers,
                    error=f"ResponseTooLarge: the answer's body is larger than {calls.MAX_CALL_BODY_BYTES} bytes",
                )
            return calls.answered(
                call,
                now_ms=clock.now_ms(),
                status=response.status,
                raw_headers=response.raw_headers,
                body=body,
            )
    except TimeoutError:
        error = f"Timeout: no answer within {spec.timeout_ms} ms"
    except (aiohttp.ClientError, OSError) as problem:
        error = f"ConnectionError: {type(problem).__name__}: {problem}"
    except ValueError as problem:  # a request aiohttp will not send, such as a header with a line break
        error = f"InvalidRequest: {problem}"
    return calls.unanswered(call, now_ms=clock.now_ms(), error=error)


class _Outcome:
    status = 0  # no answer yet, or none at all


@contextlib.asynccontextmanager
async def measured(kind: str) -> AsyncIterator[_Outcome]:
    """One HTTP request of ``kind`` (delivery, call) in the metrics: in flight while it lasts, then
    counted by the status class of its answer (the caller sets it), or as ``error`` without one."""
    outcome = _Outcome()
    metrics.IN_FLIGHT.labels(kind).inc()
    began = time.perf_counter()
    try:
        yield outcome
    finally:
        metrics.IN_FLIGHT.labels(kind).dec()
        metrics.REQUESTS.labels(kind, metrics.status_class(outcome.status)).inc()
        metrics.REQUEST_DURATION.labels(kind).observe(time.perf_counter() - began)


async def _read_at_most(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The answer's body, or None if it is longer than ``limit`` bytes (then it is not read to the end)."""
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)
