"""The api's door: a request under ``/v1/`` needs a known token with the role it asks for
(``stepstream.tokens`` says which, and how tokens are configured); and who asks (:func:`actor`), as a
run's history records it beside an operator's action."""

from __future__ import annotations

import hashlib
import hmac
import json
from http.cookies import SimpleCookie

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from stepstream.tokens import COOKIE, Token, needed_role


class TokenAuth:
    """ASGI middleware: 401 without a known token, 403 without the role; the token's name in the
    request's scope (``scope["state"]["token"]``), which the api records as the actor."""

    def __init__(self, app: ASGIApp, tokens: tuple[Token, ...]) -> None:
        self.app = app
        self.tokens = tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method: str = scope["method"]
        role = needed_role(method, scope["path"])
        if role is None:
            await self.app(scope, receive, send)
            return
        presented = _presented(scope, cookie_allowed=method in ("GET", "HEAD"))
        if presented is None:
            await _refuse(send, 401, "unauthorized", "Expected a token (Authorization: Bearer <token>), but got none")
            return
        token = self.find(presented)
        if token is None:
            await _refuse(send, 401, "unauthorized", "Expected a known token, but this one is not (or was revoked)")
            return
        if role not in token.roles:
            have = ", ".join(sorted(token.roles))
            await _refuse(
                send, 403, "forbidden", f"Expected a token with the {role} role, but token {token.name!r} has {have}"
            )
            return
        scope.setdefault("state", {})["token"] = token.name
        await self.app(scope, receive, send)

    def find(self, presented: str) -> Token | None:
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for token in self.tokens:  # every one compared, in constant time: no early exit to time
            if hmac.compare_digest(digest, token.digest):
                found = token
        return found


def _presented(scope: Scope, *, cookie_allowed: bool) -> str | None:
    headers: dict[bytes, bytes] = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if cookie_allowed and b"cookie" in headers:
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers[b"cookie"].decode("latin-1"))
        except Exception:  # a malformed Cookie header: no token there
            return None
        morsel = cookie.get(COOKIE)
        if morsel is not None and morsel.value:
            return str(morsel.value)
    return None


async def _refuse(send: Send, status: int, error: str, message: str) -> None:
    body = json.dumps({"error": error, "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="stepstream"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def actor(request: Request) -> str | None:
    """Who asks, as the run's history keeps it beside an operator's action: the token's name, or the
    client's address where the api runs without tokens."""
    token = request.scope.get("state", {}).get("token")
    if token is not None:
        return f"token {token}"
    return f"client {request.client.host}" if request.client is not None else None
