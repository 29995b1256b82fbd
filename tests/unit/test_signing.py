"""Signing deliveries: given a body and keys, when signed and verified, then only fresh, genuine ones pass."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from stepstream.errors import StepstreamError
from stepstream.signing import SignatureError, sign, verify

BODY = b'{"run_id":"run_1","workflow":"orders"}'
NOW = 1_700_000_000


def test_a_signed_body_verifies_with_the_same_key() -> None:
    header = sign(BODY, ["current"], timestamp=NOW)

    verify(BODY, header, ["current"], now=NOW)


def test_the_header_is_the_timestamp_and_an_hmac_of_timestamp_dot_body() -> None:
    header = sign(BODY, ["current"], timestamp=NOW)

    expected = hmac.new(b"current", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},v1={expected}"


def test_signing_with_two_keys_gives_one_signature_per_key_in_order() -> None:
    header = sign(BODY, ["current", "next"], timestamp=NOW)

    parts = header.split(",")
    assert parts[0] == f"t={NOW}"
    assert [part.split("=")[0] for part in parts[1:]] == ["v1", "v1"]
    assert parts[1] == sign(BODY, ["current"], timestamp=NOW).split(",")[1]
    assert parts[2] == sign(BODY, ["next"], timestamp=NOW).split(",")[1]


@pytest.mark.parametrize("verifier_keys", [["current"], ["next"], ["next", "current"], ["old", "next"]])
def test_during_rotation_an_endpoint_knowing_either_key_accepts(verifier_keys: list[str]) -> None:
    header = sign(BODY, ["current", "next"], timestamp=NOW)

    verify(BODY, header, verifier_keys, now=NOW)


def test_a_signature_by_an_unknown_key_is_rejected() -> None:
    header = sign(BODY, ["attacker"], timestamp=NOW)

    with pytest.raises(SignatureError, match="none of the 1 v1 signature"):
        verify(BODY, header, ["current", "next"], now=NOW)


def test_a_tampered_body_is_rejected() -> None:
    header = sign(BODY, ["current"], timestamp=NOW)

    with pytest.raises(SignatureError, match="matches"):
        verify(BODY.replace(b"orders", b"refund"), header, ["current"], now=NOW)


def test_a_refreshed_timestamp_on_an_old_signature_is_rejected() -> None:
    old = sign(BODY, ["current"], timestamp=NOW - 3600)
    forged = old.replace(f"t={NOW - 3600}", f"t={NOW}")

    with pytest.raises(SignatureError, match="matches"):
        verify(BODY, forged, ["current"], now=NOW)


def test_a_stale_signature_is_rejected_and_the_message_says_how_old() -> None:
    header = sign(BODY, ["current"], timestamp=NOW - 301)

    with pytest.raises(SignatureError, match="301 s old"):
        verify(BODY, header, ["current"], now=NOW, tolerance_s=300)


def test_a_signature_from_the_future_beyond_tolerance_is_rejected() -> None:
    header = sign(BODY, ["current"], timestamp=NOW + 301)

    with pytest.raises(SignatureError, match="301 s in the future"):
        verify(BODY, header, ["current"], now=NOW, tolerance_s=300)


def test_a_signature_at_the_edge_of_the_tolerance_is_accepted() -> None:
    header = sign(BODY, ["current"], timestamp=NOW - 300)

    verify(BODY, header, ["current"], now=NOW, tolerance_s=300)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_rejected(header: str | None) -> None:
    with pytest.raises(SignatureError, match="the request has none"):
        verify(BODY, header, ["current"], now=NOW)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "not a name=value pair"),
        (f"v1={'a' * 64}", "no t"),
        (f"t={NOW}", "no v1 signature"),
        (f"t=yesterday,v1={'a' * 64}", "not unix seconds"),
        (f"t=-5,v1={'a' * 64}", "not unix seconds"),
        (f"t={NOW},t={NOW},v1={'a' * 64}", "more than one t"),
        (f"t={NOW},v1=not-hex", "is not hex"),
        (f"t={NOW},v1={'a' * 10}", "has 5 bytes, not 32"),
    ],
)
def test_a_malformed_header_is_rejected_with_the_reason(header: str, reason: str) -> None:
    with pytest.raises(SignatureError, match="Expected a signature header like") as raised:
        verify(BODY, header, ["current"], now=NOW)

    assert reason in str(raised.value)


def test_unknown_schemes_are_ignored_so_signers_can_add_one() -> None:
    header = sign(BODY, ["current"], timestamp=NOW) + ",v2=whatever"

    verify(BODY, header, ["current"], now=NOW)


def test_signature_errors_derive_from_the_stepstream_root() -> None:
    assert issubclass(SignatureError, StepstreamError)


def test_signing_or_verifying_without_keys_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        sign(BODY, [], timestamp=NOW)
    with pytest.raises(ValueError, match="at least one signing key"):
        verify(BODY, f"t={NOW},v1={'a' * 64}", [], now=NOW)


def test_the_worked_example_in_the_protocol_docs_is_what_the_code_computes() -> None:
    body = (
        b'{"protocol":1,"run_id":"run_01J9Z3K8Q4","workflow":"orders","delivery_id":"dlv_01J9Z3K8R2",'
        b'"attempt":1,"payload":{"order_id":"o_1","amount":250},'
        b'"steps":[{"index":0,"name":"charge","kind":"run","output":"ch_81"}],"budget_ms":200}'
    )

    header = sign(body, ["current-secret", "next-secret"], timestamp=1_700_000_000)

    assert len(body) == 229
    assert header == (
        "t=1700000000,v1=4d4f8304139115d7f281bc1f38330758f56b0174edcdf93f0b95f66c23c1ec4b,"
        "v1=6f6c6082bca21eb8a79293e382ae194f6002b1058586574e8b5d3a5f181c2f8a"
    )
