"""Signing deliveries: given a body, a url, a nonce and keys, when signed and verified, then only fresh,
genuine ones for the url they name pass."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest

from stepstream.errors import StepstreamError
from stepstream.signing import SignatureError, Signed, legacy_signature, new_nonce, sign, verify

BODY = b'{"run_id":"run_1","workflow":"orders","delivery_id":"run_1/1","attempt":1}'
URL = "https://app.example.com/workflows/orders"
NONCE = "5f0c6a1e9b2d4c7f8a3e1d0b6c9f2a4e"
NOW = 1_700_000_000
DOCS = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def signed(
    body: bytes = BODY, keys: list[str] | None = None, timestamp: int = NOW, nonce: str = NONCE, url: str = URL
) -> str:
    return sign(body, keys or ["current"], timestamp=timestamp, nonce=nonce, url=url)


def test_a_signed_request_verifies_with_the_same_key_and_says_what_it_vouches_for() -> None:
    header = signed()

    result = verify(BODY, header, ["current"], url=URL, now=NOW)

    assert result == Signed(timestamp=NOW, nonce=NONCE, url=URL)


def test_the_header_is_the_timestamp_the_nonce_and_an_hmac_over_all_four_parts() -> None:
    header = signed()

    message = f"v2\n{NOW}\n{NONCE}\n{URL}\n".encode() + BODY
    expected = hmac.new(b"current", message, hashlib.sha256).hexdigest()
    assert header == f"t={NOW},n={NONCE},v2={expected}"


def test_every_request_gets_a_new_nonce_that_the_signature_accepts() -> None:
    nonces = {new_nonce() for _ in range(1_000)}

    assert len(nonces) == 1_000
    for nonce in list(nonces)[:3]:
        assert re.fullmatch(r"[0-9a-f]{32}", nonce)
        verify(BODY, signed(nonce=nonce), ["current"], url=URL, now=NOW)


def test_the_same_delivery_signed_twice_differs_only_by_its_nonce() -> None:
    first, second = signed(nonce=new_nonce()), signed(nonce=new_nonce())

    assert first != second
    assert first.split(",")[0] == second.split(",")[0]


def test_signing_with_two_keys_gives_one_signature_per_key_in_order() -> None:
    header = signed(keys=["current", "next"])

    parts = header.split(",")
    assert parts[:2] == [f"t={NOW}", f"n={NONCE}"]
    assert [part.split("=")[0] for part in parts[2:]] == ["v2", "v2"]
    assert parts[2] == signed(keys=["current"]).split(",")[2]
    assert parts[3] == signed(keys=["next"]).split(",")[2]


@pytest.mark.parametrize("verifier_keys", [["current"], ["next"], ["next", "current"], ["old", "next"]])
def test_during_rotation_an_endpoint_knowing_either_key_accepts(verifier_keys: list[str]) -> None:
    header = signed(keys=["current", "next"])

    verify(BODY, header, verifier_keys, url=URL, now=NOW)


def test_a_signature_by_an_unknown_key_is_rejected() -> None:
    header = signed(keys=["attacker"])

    with pytest.raises(SignatureError, match="none of the 1 v2 signature"):
        verify(BODY, header, ["current", "next"], url=URL, now=NOW)


def test_a_signature_for_another_url_is_rejected() -> None:
    # The executor signed a delivery for a listener; the listener replays it naming the real app.
    header = signed(url="https://listener.example.net/capture")

    with pytest.raises(SignatureError, match="none of the 1 v2 signature"):
        verify(BODY, header, ["current"], url=URL, now=NOW)


@pytest.mark.parametrize(
    ("body", "url", "header"),
    [
        pytest.param(BODY.replace(b"orders", b"refund"), URL, signed(), id="body"),
        pytest.param(BODY, URL.replace("orders", "refunds"), signed(), id="url"),
        pytest.param(BODY, URL + "?x=1", signed(), id="url-query"),
        pytest.param(BODY, URL, signed().replace(f"n={NONCE}", f"n={NONCE[::-1]}"), id="nonce"),
        pytest.param(BODY, URL, signed(timestamp=NOW - 3600).replace(f"t={NOW - 3600}", f"t={NOW}"), id="timestamp"),
    ],
)
def test_a_tampered_part_is_rejected(body: bytes, url: str, header: str) -> None:
    with pytest.raises(SignatureError, match="matches"):
        verify(body, header, ["current"], url=url, now=NOW)


def test_moving_bytes_between_the_url_and_the_body_breaks_the_signature() -> None:
    header = signed(body=b"b{}", url="https://a.example/x")

    with pytest.raises(SignatureError, match="matches"):
        verify(b"{}", header, ["current"], url="https://a.example/xb", now=NOW)


def test_a_request_without_the_url_header_is_rejected() -> None:
    with pytest.raises(SignatureError, match="Stepstream-Url header"):
        verify(BODY, signed(), ["current"], url=None, now=NOW)


@pytest.mark.parametrize("url", ["ftp://app.example.com/x", "https://app.example.com/a b", "https://bücher.example/"])
def test_a_url_that_is_not_visible_ascii_http_is_neither_signed_nor_accepted(url: str) -> None:
    with pytest.raises(ValueError, match="http\\(s\\) url of visible ASCII"):
        sign(BODY, ["current"], timestamp=NOW, nonce=NONCE, url=url)
    with pytest.raises(SignatureError, match="in the Stepstream-Url header"):
        verify(BODY, signed(), ["current"], url=url, now=NOW)


def test_a_stale_signature_is_rejected_and_the_message_says_how_old() -> None:
    header = signed(timestamp=NOW - 301)

    with pytest.raises(SignatureError, match="301 s old"):
        verify(BODY, header, ["current"], url=URL, now=NOW, tolerance_s=300)


def test_a_signature_from_the_future_beyond_tolerance_is_rejected() -> None:
    header = signed(timestamp=NOW + 301)

    with pytest.raises(SignatureError, match="301 s in the future"):
        verify(BODY, header, ["current"], url=URL, now=NOW, tolerance_s=300)


def test_a_signature_at_the_edge_of_the_tolerance_is_accepted() -> None:
    header = signed(timestamp=NOW - 300)

    verify(BODY, header, ["current"], url=URL, now=NOW, tolerance_s=300)


@pytest.mark.parametrize("header", [None, "", "   "])
def test_a_missing_header_is_rejected(header: str | None) -> None:
    with pytest.raises(SignatureError, match="the request has none"):
        verify(BODY, header, ["current"], url=URL, now=NOW)


V2 = "v2=" + "a" * 64
N = f"n={NONCE}"


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ("garbage", "not a name=value pair"),
        (f"{N},{V2}", "no t"),
        (f"t={NOW},{N}", "no v2 signature"),
        (f"t={NOW},{V2}", "no n (nonce)"),
        (f"t=yesterday,{N},{V2}", "not unix seconds"),
        (f"t=-5,{N},{V2}", "not unix seconds"),
        (f"t={NOW},t={NOW},{N},{V2}", "more than one t"),
        (f"t={NOW},{N},{N},{V2}", "more than one n"),
        (f"t={NOW},n=short,{V2}", "is not 16 to 64 letters"),
        (f"t={NOW},n={'x' * 65},{V2}", "is not 16 to 64 letters"),
        (f"t={NOW},n={NONCE[:-2]}+/,{V2}", "is not 16 to 64 letters"),
        (f"t={NOW},{N},v2=not-hex", "is not hex"),
        (f"t={NOW},{N},v2={'a' * 10}", "has 5 bytes, not 32"),
    ],
)
def test_a_malformed_header_is_rejected_with_the_reason(header: str, reason: str) -> None:
    with pytest.raises(SignatureError, match="Expected a signature header like") as raised:
        verify(BODY, header, ["current"], url=URL, now=NOW)

    assert reason in str(raised.value)


def test_a_header_with_only_the_legacy_scheme_is_rejected_saying_why() -> None:
    header = f"t={NOW},v1={legacy_signature(BODY, 'current', NOW)}"

    with pytest.raises(SignatureError, match="only v1, which binds neither the url nor a nonce"):
        verify(BODY, header, ["current"], url=URL, now=NOW)


def test_the_legacy_scheme_can_be_signed_too_for_endpoints_on_an_older_sdk() -> None:
    header = sign(BODY, ["current", "next"], timestamp=NOW, nonce=NONCE, url=URL, legacy=True)

    parts = header.split(",")
    assert [part.split("=")[0] for part in parts] == ["t", "n", "v2", "v2", "v1", "v1"]
    # what an older SDK checks: the hmac of "t." + body, by either key
    assert parts[4] == "v1=" + hmac.new(b"current", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert parts[5] == f"v1={legacy_signature(BODY, 'next', NOW)}"
    # and a new one still checks v2, whatever the v1 parts say
    verify(BODY, header, ["next"], url=URL, now=NOW)
    with pytest.raises(SignatureError, match="matches"):
        verify(BODY, header, ["next"], url=URL + "x", now=NOW)


def test_unknown_schemes_are_ignored_so_signers_can_add_one() -> None:
    header = signed() + ",v3=whatever"

    verify(BODY, header, ["current"], url=URL, now=NOW)


def test_signature_errors_derive_from_the_stepstream_root() -> None:
    assert issubclass(SignatureError, StepstreamError)


def test_signing_or_verifying_without_keys_or_with_a_bad_nonce_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least one signing key"):
        sign(BODY, [], timestamp=NOW, nonce=NONCE, url=URL)
    with pytest.raises(ValueError, match="at least one signing key"):
        verify(BODY, f"t={NOW},{N},{V2}", [], url=URL, now=NOW)
    with pytest.raises(ValueError, match="Expected a nonce"):
        sign(BODY, ["current"], timestamp=NOW, nonce="a,b", url=URL)


def test_the_worked_example_in_the_protocol_docs_is_what_the_code_computes() -> None:
    docs = DOCS.read_text()
    example = docs[docs.index("Worked example") :]
    body = re.search(r"```json\n(.*?)\n```", example, re.DOTALL)
    assert body is not None
    headers = re.findall(r"^Stepstream-Signature: (.*)$", example, re.MULTILINE)
    urls = re.findall(r"^Stepstream-Url: (.*)$", example, re.MULTILINE)

    one_key = sign(
        body.group(1).encode(),
        ["current-secret"],
        timestamp=1_700_000_000,
        nonce="9f1c2e7a4b6d8f0a1c3e5b7d9f2a4c6e",
        url=urls[0],
    )
    rotating = sign(
        body.group(1).encode(),
        ["current-secret", "next-secret"],
        timestamp=1_700_000_000,
        nonce="9f1c2e7a4b6d8f0a1c3e5b7d9f2a4c6e",
        url=urls[0],
    )

    assert urls == ["https://shop.example.com/workflows/orders"] * 2
    assert headers == [one_key, rotating]
