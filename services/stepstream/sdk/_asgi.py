"""The ASGI shell: HTTP in, one delivery through the replay machine, HTTP out.

A plain ASGI app, so it mounts in FastAPI, Starlette or any ASGI server without depending on them.
Checks run cheapest and least revealing first: nobody learns which workflows exist, or how a
request should look, without a valid signature for this endpoint; and a signed request is run
at most once (within this process), however often it is sent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from stepstream.protocol import (
    SIGNATURE_HEADER,
    UNKNOWN_SESSION,
    URL_HEADER,
    DeliveryRequest,
    DeliveryResponse,
    ErrorBody,
)
from stepstream.sdk import _tracing
from stepstream.sdk._destination import destination_problem
from stepstream.sdk._machine import history_problem
from stepstream.sdk._sessions import resume
from stepstream.signing import SignatureError, verify

if TYPE_CHECKING:
    from stepstream.sdk._workflows import Workflows

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger("stepstream.sdk")

_SIGNATURE_HEADER = SIGNATURE_HEADER.lower().encode("latin-1")
_URL_HEADER = URL_HEADER.lower().encode("latin-1")


class _ClientDisconnected(Exception):
    """The caller went away before sending the whole body: there is nobody to answer."""


class _Reply(Exception):
    """An HTTP answer decided before the workflow runs (an error status)."""

    def __init__(self, status: int, error: str, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status = status
        self.body = ErrorBody(error=error, message=message).model_dump_json().encode()
        self.headers = headers or []


class WorkflowsApp:
    """Serves ``POST /<workflow name>`` (relative to where it is mounted) for a :class:`Workflows`."""

    def __init__(
        self,
        workflows: Workflows,
        *,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.workflows = workflows
        self._wall_clock = wall_clock
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            # Only plain HTTP is served; refuse anything else (websockets) at once.
            await send({"type": "websocket.close", "code": 1003})
            return
        started_at = self._clock()
        try:
            body = await self._handle(scope, receive, started_at)
        except _ClientDisconnected:
            return
        except _Reply as reply:
            await _send(send, reply.status, reply.body, reply.headers)
            return
        except Exception:
            logger.exception("Stepstream SDK failed to handle a delivery")
            failed = ErrorBody(error="internal_error", message="The SDK failed; see the server log")
            await _send(send, 500, failed.model_dump_json().encode(), [])
            return
        await _send(send, 200, body, [])

    async def _handle(self, scope: Scope, receive: Receive, started_at: float) -> bytes:
        if scope["method"] != "POST":
            raise _Reply(
                405,
                "method_not_allowed",
                f"Expected POST, but got {scope['method']}: deliveries are POSTed by the Stepstream executor",
                [(b"allow", b"POST")],
            )
        signature = _header(scope, _SIGNATURE_HEADER)
        verifying = not self.workflows.allow_unsigned
        if verifying and signature is None:
            raise _Reply(401, "unauthorized", f"Expected a {SIGNATURE_HEADER} header, but the request has none")
        body = await self._read_body(scope, receive)
        if verifying:
            self._authenticate(scope, body, signature)
        try:
            request = DeliveryRequest.model_validate_json(body)
        except ValidationError as exc:
            raise _Reply(400, "bad_request", str(exc)) from None
        name = _workflow_name(scope)
        try:
            definition = self.workflows.definition(name)
        except LookupError as exc:
            raise _Reply(404, "unknown_workflow", str(exc)) from None
        if request.workflow != name:
            raise _Reply(
                400,
                "bad_request",
                f"Expected the body's workflow to match the path's '{name}', but it is '{request.workflow}'",
            )
        if request.resume:
            with _tracing.delivery(scope["headers"]):
                return await self._resume(request)
        problem = history_problem(request)
        if problem is not None:
            raise _Reply(400, "bad_request", problem)
        try:
            payload = definition.parse_payload(request.payload)
        except ValidationError as exc:
            raise _Reply(422, "invalid_payload", str(exc)) from None
        # In the trace context the executor sent (if the app has OpenTelemetry): its steps' spans join it.
        with _tracing.delivery(scope["headers"]):
            response = await definition.execute(
                request,
                payload,
                clock=self._clock,
                started_at=started_at,
                sessions=self.workflows.sessions,
                max_output_bytes=self.workflows.max_output_bytes,
            )
        _log_delivery(request, response)
        return _json(response)

    async def _resume(self, request: DeliveryRequest) -> bytes:
        sessions = self.workflows.sessions
        response = None if sessions is None or request.session is None else await resume(request, sessions)
        if response is None:
            raise _Reply(
                409,
                UNKNOWN_SESSION,
                f"Expected a session this process keeps, but it has no session {request.session!r} for delivery "
                f"{request.delivery_id} (served elsewhere, or expired): send the whole delivery",
            )
        _log_delivery(request, response)
        return _json(response)

    def _authenticate(self, scope: Scope, body: bytes, signature: str | None) -> None:
        """Return if the request is signed by the engine, for this endpoint, and new; else reply
        401 (not the engine's, or not for here) or 409 (sent before)."""
        workflows = self.workflows
        now = int(self._wall_clock())
        try:
            signed = verify(
                body,
                signature,
                workflows.signing_keys,
                url=_header(scope, _URL_HEADER),
                now=now,
                tolerance_s=workflows.signature_tolerance_s,
            )
        except SignatureError as exc:
            raise _Reply(401, "unauthorized", str(exc)) from None
        problem = destination_problem(signed.url, scope, workflows.base_urls)
        if problem is not None:
            raise _Reply(401, "unauthorized", problem)
        # Checked and remembered with no await in between, so two copies arriving together cannot both pass.
        if not workflows.nonces.accept(
            signed.nonce, expires_at=signed.timestamp + workflows.signature_tolerance_s, now=now
        ):
            raise _Reply(
                409,
                "replayed",
                f"Expected each signed request once, but one with nonce {signed.nonce} was accepted already "
                f"within the last {workflows.signature_tolerance_s} s: a replay, or a request repeated on the way; "
                "nothing was run",
            )

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        limit = self.workflows.max_body_bytes
        too_large = _Reply(413, "payload_too_large", f"Expected a body of at most {limit} bytes, but it is larger")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_large
        # Counted while reading, so a body without (or lying about) its length cannot fill memory.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientDisconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _log_delivery(request: DeliveryRequest, response: DeliveryResponse) -> None:
    """One line per delivery the app served: which run, what it recorded, what comes next. The names
    go in ``extra`` too, for a JSON log formatter to pick up (Stepstream's own names them so)."""
    logger.info(
        "run %s (%s) delivery %s attempt %d: %d steps recorded, then %s",
        request.run_id,
        request.workflow,
        request.delivery_id,
        request.attempt,
        len(response.steps),
        response.next.type,
        extra={
            "run_id": request.run_id,
            "workflow": request.workflow,
            "delivery_id": request.delivery_id,
            "step": len(request.steps),  # the first step this delivery could record
        },
    )


def _json(response: DeliveryResponse) -> bytes:
    # ``session`` only when a session is kept: an answer to an engine that never asked stays as it was.
    return response.model_dump_json(exclude=None if response.session else {"session"}).encode()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _workflow_name(scope: Scope) -> str:
    """The path below the mount point, without its leading slash.

    Starlette (since 0.33) keeps the full ``path`` and puts the mount point in ``root_path``; other
    servers hand a mounted app only its own part. Both are handled, as Starlette's own routes do.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path) and path[len(root_path) : len(root_path) + 1] in ("/", ""):
        path = path[len(root_path) :]
    return path.removeprefix("/")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    # Served alone (uvicorn module:app), the app gets lifespan events; it has nothing to set up.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
