"""The api as the command line speaks to it: one request, its JSON, and every failure said on stderr
with exit code 2 (the CLI's contract, ``stepstream.cli``). The commands of ``stepstream.cli`` use it."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, NoReturn

from stepstream.config import default_home
from stepstream.durations import parse_duration

API_URL_DEFAULT = "http://127.0.0.1:8080"
API_TOKEN_FILE = "api-token"  # in the local stack's home: the token `stepstream dev` made


def fail(message: str, code: int = 2) -> NoReturn:
    print(f"stepstream: {message}", file=sys.stderr)
    raise SystemExit(code)


def base() -> str:
    return os.environ.get("STEPSTREAM_API_URL", API_URL_DEFAULT).rstrip("/")


def api(method: str, path: str, **kwargs: Any) -> Any:
    """The api's JSON answer; on an error answer or no answer, the reason on stderr and exit code 2."""
    return request(method, path, **kwargs).json()


def token() -> str | None:
    """The token to send: ``STEPSTREAM_API_TOKEN``, else, for the local api (``STEPSTREAM_API_URL``
    unset), the one ``stepstream dev`` made in its home (``.stepstream/api-token``)."""
    given = os.environ.get("STEPSTREAM_API_TOKEN", "").strip()
    if given:
        return given
    if os.environ.get("STEPSTREAM_API_URL"):
        return None  # another api: never send it the local stack's token
    local = default_home() / API_TOKEN_FILE
    return local.read_text(encoding="utf-8").strip() if local.is_file() else None


def auth_headers() -> dict[str, str]:
    found = token()
    return {"Authorization": f"Bearer {found}"} if found else {}


def request(method: str, path: str, *, timeout: float = 10, **kwargs: Any) -> Any:
    """The api's answer, one of success; on an error answer or no answer, the reason and exit code 2."""
    import httpx

    url = base()
    headers = {**auth_headers(), **kwargs.pop("headers", {})}
    try:
        response = httpx.request(method, url + path, timeout=timeout, headers=headers, **kwargs)
    except httpx.HTTPError as error:
        fail(f"cannot reach the api at {url}: {error} (is `stepstream dev` or `stepstream api` running?)")
    if response.status_code == 401:
        fail(f"401: {detail(response)}; set STEPSTREAM_API_TOKEN to a token of the api (docs/security.md)")
    if response.status_code >= 400:
        fail(f"{response.status_code}: {detail(response)}")
    return response


def detail(response: Any) -> str:
    try:
        return str(response.json().get("message", response.text))
    except ValueError:
        return str(response.text)


def segment(value: str) -> str:
    """A run id or event id as one URL path segment."""
    from urllib.parse import quote

    return quote(value, safe="")


def json_option(value: str | None, option: str) -> Any:
    if value is None:
        return None
    try:
        return json.loads(value)
    except ValueError as error:
        fail(f"{option} is not valid JSON: {error}")


def instant(value: str, option: str, *, ago: bool = False) -> int:
    """Epoch milliseconds from ``value``: epoch ms, an ISO-8601 time (local time if it names no zone),
    or, if ``ago``, a duration such as ``2h`` meaning that long before now."""
    from datetime import datetime

    text = value.strip()
    if text.isdigit():
        return int(text)
    if ago:
        try:
            ago_ms = parse_duration(text)
        except ValueError:  # longer than any duration
            ago_ms = None
        if ago_ms is not None:
            return int(time.time() * 1000) - ago_ms
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        durations = "a duration such as '2h' (that long ago), " if ago else ""
        fail(
            f"{option}: expected {durations}epoch milliseconds or an ISO-8601 time such as "
            f"'2026-01-31T09:00' or '2026-01-31T09:00:00Z', but got {value!r}"
        )
    if moment.tzinfo is None:
        moment = moment.astimezone()  # the machine's local time zone, as a person at a terminal means it
    return int(moment.timestamp() * 1000)
