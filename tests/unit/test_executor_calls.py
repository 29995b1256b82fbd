"""The executor's report of an engine-side call, given → when → then; and which offsets it may commit."""

from __future__ import annotations

import json

import pytest

from stepstream.core import CallDelivery, CallSpec, ReportCall
from stepstream.core.state import call_output
from stepstream.executor.calls import MAX_CALL_BODY_BYTES, answered, body_json, unanswered, unrecordable
from stepstream.executor.offsets import PartitionProgress

T0 = 1_700_000_000_000

CALL = CallDelivery(
    run_id="run_01",
    step_index=4,
    attempt=2,
    call=CallSpec(
        method="POST",
        url="https://maps.example/geocode",
        headers=(("Authorization", "Bearer t"),),
        body='{"q":"Berlin"}',
        timeout_ms=15_000,
        retries=3,
    ),
)


def report_of(
    body: bytes, content_type: str | None = None, *, status: int = 200, extra: tuple[tuple[bytes, bytes], ...] = ()
) -> ReportCall:
    headers = ((b"Content-Type", content_type.encode("latin-1")),) if content_type is not None else ()
    return answered(CALL, now_ms=T0, status=status, raw_headers=headers + extra, body=body)


# ---------------------------------------------------------------------------------------------
# An answer: whatever its status, it is the attempt's result


def test_an_answer_is_reported_for_the_run_step_and_attempt_with_its_status_headers_and_body() -> None:
    report = report_of(b'{"lat": 52.52, "lon": 13.40}', "application/json", extra=((b"X-Request-Id", b"abc"),))

    assert report == ReportCall(
        run_id="run_01",
        step_index=4,
        attempt=2,
        now_ms=T0,
        status=200,
        headers=(("Content-Type", "application/json"), ("X-Request-Id", "abc")),
        body='{"lat":52.52,"lon":13.4}',
        error=None,
    )


@pytest.mark.parametrize("status", [201, 204, 301, 404, 429, 500, 503])
def test_an_answer_of_any_status_is_a_result_not_an_error(status: int) -> None:
    report = report_of(b'{"message": "nope"}', "application/json", status=status)

    assert report.status == status
    assert report.error is None
    assert json.loads(report.body) == {"message": "nope"}


def test_repeated_headers_are_all_kept_in_the_order_they_came() -> None:
    report = report_of(b"", extra=((b"Set-Cookie", b"a=1"), (b"Vary", b"Accept"), (b"Set-Cookie", b"b=2")))

    assert report.headers == (("Set-Cookie", "a=1"), ("Vary", "Accept"), ("Set-Cookie", "b=2"))


def test_header_bytes_that_are_not_utf8_are_replaced_not_refused() -> None:
    report = report_of(b"", extra=((b"X-Name", b"caf\xe9"),))

    assert report.headers == (("X-Name", "caf\ufffd"),)


# ---------------------------------------------------------------------------------------------
# The body as JSON text: its JSON value if it is JSON, else a JSON string of its text


@pytest.mark.parametrize(
    ("body", "value"),
    [
        (b'{"a": [1, 2.5, null, true]}', {"a": [1, 2.5, None, True]}),
        (b"[]", []),
        (b"42", 42),
        (b'"quoted"', "quoted"),
        (b"null", None),
        (b' \n {"padded": 1} \n', {"padded": 1}),
        (b'{"big": 123456789012345678901234567890}', {"big": 123456789012345678901234567890}),
    ],
)
def test_a_json_body_is_reported_as_its_json_value(body: bytes, value: object) -> None:
    report = report_of(body, "application/json")

    assert json.loads(report.body) == value


def test_a_json_body_is_json_whatever_its_content_type_says() -> None:
    assert json.loads(report_of(b'{"ok": true}', "text/plain").body) == {"ok": True}
    assert json.loads(report_of(b'{"ok": true}').body) == {"ok": True}


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"<html>Bad Gateway</html>", "<html>Bad Gateway</html>"),
        (b"OK", "OK"),
        (b"", ""),
        (b'{"unclosed": ', '{"unclosed": '),
        (b"true false", "true false"),
    ],
    ids=["html", "word", "empty", "broken-json", "two-values"],
)
def test_a_body_that_is_not_json_is_reported_as_a_json_string_of_its_text(body: bytes, text: str) -> None:
    report = report_of(body, "text/html; charset=utf-8")

    assert json.loads(report.body) == text


@pytest.mark.parametrize("body", [b"NaN", b"Infinity", b"-Infinity", b'{"x": NaN}', b"[1, Infinity]"])
def test_a_body_with_nan_or_infinity_is_text_since_json_has_neither(body: bytes) -> None:
    report = report_of(body, "application/json")

    assert json.loads(report.body) == body.decode()


def test_a_json_body_nested_too_deep_to_handle_is_kept_as_text() -> None:
    body = b"[" * 200_000 + b"]" * 200_000

    report = report_of(body, "application/json")

    assert json.loads(report.body) == body.decode()


@pytest.mark.parametrize(
    "content_type",
    ["text/plain; charset=latin-1", "text/plain; charset=ISO-8859-1", 'text/plain;charset="latin-1"'],
)
def test_text_is_decoded_with_the_charset_its_content_type_names(content_type: str) -> None:
    report = report_of("Grüße, café".encode("latin-1"), content_type)

    assert json.loads(report.body) == "Grüße, café"


def test_json_in_another_charset_is_decoded_with_it() -> None:
    report = report_of('{"name": "Zoë"}'.encode("utf-16"), "application/json; charset=utf-16")

    assert json.loads(report.body) == {"name": "Zoë"}


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain; charset=no-such-charset", "text/plain; charset=base64", "text/plain; charset="],
    ids=["no-content-type", "no-charset", "unknown-charset", "not-a-text-encoding", "empty-charset"],
)
def test_without_a_charset_python_knows_text_is_decoded_as_utf8(content_type: str | None) -> None:
    report = report_of("naïve".encode(), content_type)

    assert json.loads(report.body) == "naïve"


def test_bytes_that_do_not_decode_are_replaced_not_refused() -> None:
    report = report_of(b"ok \xff\xfe done", "text/plain")

    assert json.loads(report.body) == "ok \ufffd\ufffd done"


def test_the_body_is_always_ascii_so_every_report_can_be_encoded() -> None:
    # a charset that can yield lone surrogates, which UTF-8 (and so Avro) cannot hold
    body = body_json(b"\\ud800 and \\u00e9", "text/plain; charset=unicode_escape")

    assert body.isascii()
    assert json.loads(body) == "\ud800 and \u00e9"


@pytest.mark.parametrize(
    "body",
    [b'{"a": 1}', b"plain", b"", b"NaN", b"\xff", b'"\\ud800"'],
    ids=["json", "text", "empty", "nan", "not-utf8", "json-lone-surrogate"],
)
def test_the_steps_recorded_result_is_json_with_the_answer_in_it(body: bytes) -> None:
    report = report_of(body, "application/json", extra=((b"X-A", b"1"),))

    result = json.loads(call_output(status=report.status, headers=report.headers, body=report.body, error=report.error))

    assert result["status"] == 200
    assert result["headers"]["X-A"] == "1"
    assert result["body"] == json.loads(report.body)
    assert result["error"] is None


# ---------------------------------------------------------------------------------------------
# No answer, or one that cannot be kept


@pytest.mark.parametrize(
    "error",
    ["Timeout: no answer within 15000 ms", "ConnectionError: ClientConnectorError: Cannot connect to host x:443"],
)
def test_no_answer_is_status_zero_with_the_reason_and_a_null_body(error: str) -> None:
    report = unanswered(CALL, now_ms=T0, error=error)

    assert report == ReportCall(
        run_id="run_01", step_index=4, attempt=2, now_ms=T0, status=0, headers=(), body="null", error=error
    )


def test_an_answer_too_large_to_keep_says_so_with_its_status_and_headers() -> None:
    report = unanswered(
        CALL,
        now_ms=T0,
        status=200,
        raw_headers=((b"Content-Type", b"video/mp4"),),
        error=f"ResponseTooLarge: the answer's body is larger than {MAX_CALL_BODY_BYTES} bytes",
    )

    assert (report.status, report.headers, report.body) == (200, (("Content-Type", "video/mp4"),), "null")
    assert report.error is not None
    assert report.error.startswith("ResponseTooLarge")


def test_a_long_error_is_truncated() -> None:
    report = unanswered(CALL, now_ms=T0, error="ConnectionError: " + "x" * 10_000)

    assert report.error is not None
    assert len(report.error) == 2_000


def test_an_answer_that_cannot_be_recorded_becomes_no_answer_saying_why() -> None:
    report = report_of(b'{"huge": "answer"}', "application/json", extra=((b"X-A", b"1"),))

    replaced = unrecordable(report, "its report of 2000000 bytes is larger than Kafka accepts")

    assert (replaced.run_id, replaced.step_index, replaced.attempt, replaced.now_ms) == ("run_01", 4, 2, T0)
    assert (replaced.status, replaced.headers, replaced.body) == (0, (), "null")
    assert replaced.error == (
        "UnrecordableResponse: the answer cannot be recorded: its report of 2000000 bytes is larger than Kafka accepts"
    )


def test_the_reason_an_answer_cannot_be_recorded_is_truncated() -> None:
    replaced = unrecordable(report_of(b"{}"), "y" * 50_000)

    assert replaced.error is not None
    assert len(replaced.error) == 2_000


# ---------------------------------------------------------------------------------------------
# Offsets: a delivery holds back its partition's commits until it is reported; a call does not


def test_a_delivery_in_flight_holds_back_the_commit_of_later_offsets() -> None:
    progress = PartitionProgress()
    progress.start(10)
    progress.start(11)

    assert progress.committable() == 10

    progress.finish(10)
    assert progress.committable() == 11

    progress.finish(11)
    assert progress.committable() == 12


def test_a_call_in_flight_does_not_hold_back_the_commit_of_later_offsets() -> None:
    progress = PartitionProgress()
    progress.start(10, hold=False)  # a call that may take an hour
    progress.start(11)  # a delivery after it
    progress.finish(11)

    assert progress.committable() == 12


def test_a_call_behind_a_delivery_in_flight_is_committed_with_it() -> None:
    progress = PartitionProgress()
    progress.start(10)
    progress.start(11, hold=False)

    assert progress.committable() == 10
    progress.finish(10)
    assert progress.committable() == 12
