"""A workflow whose trigger and ``ctx.call`` carry credentials (tests/integration/test_sealed_headers.py).

``/echo`` answers with the SHA-256 of the ``Authorization`` header it received (its answer is the step's
result, which the engine records as it is); ``/seen`` lists the ``Authorization`` headers the
workflow's deliveries arrived with.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from stepstream.sdk import WorkflowContext, Workflows

workflows = Workflows()
seen: list[str] = []


@workflows.workflow("with-secrets")
async def with_secrets(ctx: WorkflowContext[Any]) -> dict[str, Any]:
    """Payload: base (this app's url), pause_s. The call's credential is the app's own (CALL_AUTH), as an
    app keeps its secrets: not in the run's payload, which the engine records as it is."""
    headers = {"Authorization": os.environ["CALL_AUTH"]}
    first = await ctx.call("fetch", f"{ctx.payload['base']}/echo", headers=headers)
    await ctx.sleep("pause", ctx.payload["pause_s"])
    second = await ctx.call("fetch-again", f"{ctx.payload['base']}/echo", headers=headers)
    return {"first": first.body, "second": second.body}


_workflows_app = workflows.asgi()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    path: str = scope.get("path", "")
    if scope["type"] != "http" or path.startswith("/workflows/"):
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            seen.append(headers.get(b"authorization", b"").decode())
            scope = {**scope, "root_path": scope.get("root_path", "") + "/workflows"}
        await _workflows_app(scope, receive, send)
        return
    headers = dict(scope["headers"])
    body: dict[str, Any]
    if path == "/echo":
        body = {"authorization_sha256": hashlib.sha256(headers.get(b"authorization", b"")).hexdigest()}
    elif path == "/seen":
        body = {"seen": seen}
    else:
        body = {"status": "ok"}
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})
