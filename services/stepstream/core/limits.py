"""The bounds on what a run may be given, checked wherever a value enters the engine. Pure.

The api checks them on a request and answers 4xx; the projector checks the same on a record that
arrives on ``triggers`` from any producer and dead-letters one that breaks them. One set of numbers
serves both, so a trigger the api accepts is one the projector applies, and one written straight to
Kafka meets the same rules.

Why bound at all: every number ends in an Avro ``long`` (a value past 2^63 cannot be written, and a
sum such as ``now + delay`` must not pass it either), every string in a Kafka record (about 1 MB in
all by default), and a header ends on an HTTP request line, where a line break would split it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from stepstream.core.commands import TriggerRun
from stepstream.core.messages import flow_control_problem
from stepstream.core.retry import check_delay_rule

MAX_LONG: Final = 2**63 - 1  # Avro's long, and Kafka's timestamps
MAX_EPOCH_MS: Final = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: any later instant is a mistake
MAX_DELAY_MS: Final = 3_650 * 86_400_000  # ten years: a trigger's delay, later than that is a mistake
MAX_RETRIES: Final = 100
MAX_RETRY_BASE_MS: Final = 86_400_000  # a day
MAX_SEQ: Final = 2**31 - 1  # a run's event numbers: far more events than any run records

MAX_RUN_ID_LENGTH: Final = 200
RUN_ID_PATTERN: Final = r"^[A-Za-z0-9_.:\-]+$"
MAX_WORKFLOW_LENGTH: Final = 200
MAX_LABEL_LENGTH: Final = 200
MAX_URL_LENGTH: Final = 2_000
MAX_REASON_LENGTH: Final = 1_000

MAX_HEADERS: Final = 64
MAX_HEADERS_BYTES: Final = 65_536  # all names and values together: they ride along on every delivery
MAX_HEADER_NAME_LENGTH: Final = 256
MAX_HEADER_VALUE_LENGTH: Final = 8_192
# A credential header's value as the engine keeps it, sealed (stepstream.sealing): base64url of a nonce,
# the value and a tag, so about a third longer than the value, which the limit above bounds.
SEALED_PREFIX: Final = "sealed:v1:"
MAX_SEALED_VALUE_LENGTH: Final = len(SEALED_PREFIX) + 9 + (12 + MAX_HEADER_VALUE_LENGTH + 16) * 4 // 3 + 4

_RUN_ID: Final = re.compile(RUN_ID_PATTERN)
# RFC 9110 5.1: a field name is a token; 5.5: a field value is visible characters, spaces and tabs
# (and obs-text, bytes 0x80-0xFF, which HTTP/1.1 carries as Latin-1), never CR, LF or NUL.
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE: Final = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def header_problem(name: str, value: str, *, characters: bool = True) -> str | None:
    """Why a request header cannot be sent as given ("Expected …, but …"), or None if it can.

    The executor refuses to send such a header (the delivery fails, not retried, with this reason)
    and the api refuses a trigger that carries one, so a header never splits an HTTP request.
    ``characters`` False checks the sizes only.
    """
    if not 1 <= len(name) <= MAX_HEADER_NAME_LENGTH:
        return f"Expected a header name of 1 to {MAX_HEADER_NAME_LENGTH} characters, but got {len(name)}"
    most = MAX_SEALED_VALUE_LENGTH if value.startswith(SEALED_PREFIX) else MAX_HEADER_VALUE_LENGTH
    if len(value) > most:
        return f"Expected header {name[:100]!r} to have at most {most} characters, but got {len(value)}"
    if not characters:
        return None
    if not _TOKEN.fullmatch(name):
        return f"Expected a header name made of letters, digits and !#$%&'*+-.^_`|~ (RFC 9110), but got {name!r}"
    if not _FIELD_VALUE.fullmatch(value):
        bad = next(character for character in value if not _FIELD_VALUE.fullmatch(character))
        return (
            f"Expected header {name!r} to hold visible characters, spaces and tabs only (RFC 9110), "
            f"but it holds {bad!r}"
        )
    return None


def headers_problem(headers: Sequence[tuple[str, str]], *, characters: bool = True) -> str | None:
    """Why a set of request headers cannot be sent (too many, or one that cannot), or None."""
    if len(headers) > MAX_HEADERS:
        return f"Expected at most {MAX_HEADERS} headers, but got {len(headers)}"
    size = sum(len(name) + len(value) for name, value in headers)
    if size > MAX_HEADERS_BYTES:
        return f"Expected headers of at most {MAX_HEADERS_BYTES} characters in all, but got {size}"
    for name, value in headers:
        problem = header_problem(name, value, characters=characters)
        if problem is not None:
            return problem
    return None


def run_id_problem(run_id: str) -> str | None:
    if not 1 <= len(run_id) <= MAX_RUN_ID_LENGTH:
        return f"Expected a run id of 1 to {MAX_RUN_ID_LENGTH} characters, but got {len(run_id)}"
    if not _RUN_ID.fullmatch(run_id):
        return f"Expected a run id of letters, digits and _.:- only, but got {run_id[:MAX_RUN_ID_LENGTH]!r}"
    return None


def trigger_problem(trigger: TriggerRun) -> str | None:
    """Why the engine cannot start ``trigger`` as given, or None if it can.

    Checks what would break the engine rather than one delivery: sizes, ranges and settings. Header
    *characters* are the executor's to refuse (the run then fails with the reason), so a trigger
    from any producer starts a run whose history says what was wrong with it.
    """
    checks = (
        run_id_problem(trigger.run_id),
        _length("workflow", trigger.workflow, MAX_WORKFLOW_LENGTH, minimum=1),
        _url("url", trigger.url),
        None if trigger.failure_url is None else _url("failure_url", trigger.failure_url),
        None if trigger.label is None else _length("label", trigger.label, MAX_LABEL_LENGTH),
        _range("retries", trigger.retries, MAX_RETRIES),
        _range("retry_base_ms", trigger.retry_base_ms, MAX_RETRY_BASE_MS),
        _not_before_problem(trigger.not_before_ms, trigger.now_ms),
        headers_problem(trigger.headers, characters=False),
        None if trigger.flow is None else flow_control_problem(trigger.flow),
        None if trigger.retry_delay is None else _rule_problem(trigger.retry_delay),
    )
    return next((problem for problem in checks if problem is not None), None)


def _length(name: str, value: str, maximum: int, *, minimum: int = 0) -> str | None:
    if not minimum <= len(value) <= maximum:
        return f"Expected {name} of {minimum} to {maximum} characters, but got {len(value)}"
    return None


def _url(name: str, value: str) -> str | None:
    if len(value) > MAX_URL_LENGTH:
        return f"Expected {name} of at most {MAX_URL_LENGTH} characters, but got {len(value)}"
    if not value.startswith(("http://", "https://")):
        return f"Expected {name} to be an http(s) url, but got {value[:100]!r}"
    return None


def _range(name: str, value: int | None, maximum: int) -> str | None:
    if value is not None and not 0 <= value <= maximum:
        return f"Expected {name} from 0 to {maximum}, but got {value}"
    return None


def _not_before_problem(not_before_ms: int | None, now_ms: int) -> str | None:
    if not_before_ms is not None and not 0 <= not_before_ms <= now_ms + MAX_DELAY_MS:
        return (
            f"Expected not_before_ms within {MAX_DELAY_MS // 86_400_000} days from now ({now_ms}), "
            f"but got {not_before_ms}"
        )
    return None


def _rule_problem(rule: str) -> str | None:
    try:
        check_delay_rule(rule)
    except ValueError as error:
        return f"retry_delay: {error}"
    return None
