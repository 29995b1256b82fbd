"""Request bodies: read no further than their limit, then validated as the route's pydantic model (the
models are in :mod:`stepstream.api.inputs`); and a value of a body as the JSON text the engine records.

The routes read their bodies themselves, through the ``parse`` the app makes with :func:`body_parser`,
rather than through FastAPI's body parameters: so a body too large is refused before it is read whole,
and :mod:`stepstream.api.openapi` describes the bodies in ``/openapi.json`` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError

from stepstream.api.errors import ApiError, invalid

BodyT = TypeVar("BodyT", bound=BaseModel)

# What a trigger may hold besides its payload, as JSON: its other fields, headers among them. With the
# payload's limit it keeps a trigger within one Kafka record.
ENVELOPE_BYTES = 65_536
# A body may send each character of a payload as \uXXXX, as Python's json does by default: "é" is 6
# bytes sent and 2 recorded, "🙂" 12 and 4. So the body is read up to three times the payload's limit
# (and the envelope) before it is refused unread; the payload's limit holds on the text as recorded.
ESCAPED_GROWTH = 3


class Parse(Protocol):
    """``parse`` as the app hands it to its routes (:func:`body_parser`)."""

    async def __call__(self, request: Request, model: type[BodyT], *, optional: bool = False) -> BodyT: ...


def body_parser(max_payload_bytes: int) -> Parse:
    """``parse`` for bodies whose payload may take ``max_payload_bytes`` (STEPSTREAM_MAX_PAYLOAD_BYTES)."""

    async def read_body(request: Request) -> bytes:
        """The raw body, read no further than a payload at its limit, escaped, and the envelope need."""
        limit = ESCAPED_GROWTH * max_payload_bytes + ENVELOPE_BYTES
        expected = (
            f"Expected a request body of at most {limit} bytes ({ESCAPED_GROWTH} times STEPSTREAM_MAX_PAYLOAD_BYTES "
            f"for a payload's escaped characters, and {ENVELOPE_BYTES} for the other fields)"
        )
        length = request.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > limit:
            raise ApiError(413, "payload_too_large", f"{expected}, but its content-length is {length}")
        raw = bytearray()
        async for chunk in request.stream():
            raw.extend(chunk)
            if len(raw) > limit:
                raise ApiError(413, "payload_too_large", f"{expected}, but it is longer")
        return bytes(raw)

    async def parse(request: Request, model: type[BodyT], *, optional: bool = False) -> BodyT:
        """The request's JSON body as ``model``; an empty body is the model's defaults if ``optional``."""
        raw = await read_body(request)
        if optional and not raw.strip():
            return model()
        try:
            return model.model_validate_json(raw)
        except ValidationError as error:
            if any(problem["type"] == "json_invalid" for problem in error.errors()):
                raise ApiError(400, "bad_request", describe(error.errors())) from None
            raise invalid(describe(error.errors())) from None

    return parse


def describe(problems: Sequence[Any]) -> str:
    """Pydantic's validation problems as one line: ``field.path: what is wrong; …``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or 'body'}: {problem['msg']}" for problem in problems
    )


def json_text(value: Any, name: str, limit: int) -> str:
    """``value`` as the JSON text the engine records: refused with 422 if it holds a number JSON has no
    text for (NaN, Infinity, or 1e400, which reads as Infinity), with 413 if it is over ``limit`` bytes."""
    try:
        # Not ASCII-escaped: "é" is 2 bytes of UTF-8 as it is and 6 as \u00e9, and the limit is in bytes.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise invalid(
            f"Expected {name} to be JSON, but it holds NaN, Infinity or a number too large for JSON (such as 1e400)"
        ) from None
    size = len(text.encode())
    if size > limit:
        raise ApiError(
            413,
            "payload_too_large",
            f"Expected {name} of at most {limit} bytes as JSON (STEPSTREAM_MAX_PAYLOAD_BYTES), but it has {size}",
        )
    return text
