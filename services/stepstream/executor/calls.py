"""What the answer to an engine-side HTTP call (a ``call`` step) is reported as. Pure.

Whatever the third party answers, the report says it: any status is a result (whether to try again
is the projector's decision, from the status and the step's retry settings). Only "no answer at
all" (status 0) carries an ``error``, and an answer the engine cannot record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace

from stepstream.core import CallDelivery, ReportCall
from stepstream.executor.outcome import json_text

# The largest answer body the executor reads; a larger one is reported as an error, not stored.
MAX_CALL_BODY_BYTES = 10 * 1024 * 1024
_MAX_ERROR = 2_000


def answered(
    call: CallDelivery, *, now_ms: int, status: int, raw_headers: Iterable[tuple[bytes, bytes]], body: bytes
) -> ReportCall:
    """The report of an attempt that got an HTTP answer: its status, headers and body as JSON text."""
    headers = _decode_headers(raw_headers)
    return ReportCall(
        run_id=call.run_id,
        step_index=call.step_index,
        attempt=call.attempt,
        now_ms=now_ms,
        status=status,
        headers=headers,
        body=body_json(body, _content_type(headers)),
    )


def unanswered(
    call: CallDelivery,
    *,
    now_ms: int,
    error: str,
    status: int = 0,
    raw_headers: Iterable[tuple[bytes, bytes]] = (),
) -> ReportCall:
    """The report of an attempt without a usable answer: status 0 (or the status of an answer that
    could not be read), no body, and ``error`` saying why, like ``"Timeout: …"``."""
    return ReportCall(
        run_id=call.run_id,
        step_index=call.step_index,
        attempt=call.attempt,
        now_ms=now_ms,
        status=status,
        headers=_decode_headers(raw_headers),
        body="null",
        error=error[:_MAX_ERROR],
    )


def unrecordable(report: ReportCall, reason: str) -> ReportCall:
    """``report`` in a form that can always be written, for an answer the records cannot hold."""
    error = f"UnrecordableResponse: the answer cannot be recorded: {reason}"
    return replace(report, status=0, headers=(), body="null", error=error[:_MAX_ERROR])


def body_json(body: bytes, content_type: str | None) -> str:
    """``body`` as JSON text: its JSON value if it is JSON, else a JSON string of its text.

    The text is decoded with the charset of ``content_type`` (UTF-8 when it names none or one Python
    does not know), undecodable bytes replaced. NaN and Infinity are not JSON: such a body is text.
    """
    text = _decode(body, _charset(content_type))
    try:
        return json_text(json.loads(text, parse_constant=_not_json))
    except (ValueError, RecursionError):  # not JSON, or nested too deep to handle: keep it as text
        return json.dumps(text)


def _not_json(constant: str) -> object:
    raise ValueError(f"{constant} is not JSON")


def _decode_headers(raw_headers: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    # Header bytes are not always UTF-8; replacing what is not keeps every report encodable.
    return tuple(
        (name.decode("utf-8", errors="replace"), value.decode("utf-8", errors="replace")) for name, value in raw_headers
    )


def _content_type(headers: tuple[tuple[str, str], ...]) -> str | None:
    return next((value for name, value in headers if name.lower() == "content-type"), None)


def _charset(content_type: str | None) -> str | None:
    for parameter in (content_type or "").split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip() or None
    return None


def _decode(body: bytes, charset: str | None) -> str:
    if charset is not None:
        try:
            return body.decode(charset, errors="replace")
        except (LookupError, ValueError):  # a charset Python does not know, or not a text encoding
            pass
    return body.decode("utf-8", errors="replace")
