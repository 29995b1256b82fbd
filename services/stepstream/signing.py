"""Signing deliveries: HMAC-SHA256 over the timestamp and the body, pure standard library.

The executor signs every delivery; the SDK verifies it before reading a byte of it as JSON. The
header value is ``t=<unix seconds>,v1=<hex>[,v1=<hex>...]``: one ``v1`` signature per signing key, so
that during a key rotation the executor signs with the current and the next key and an endpoint
that knows either accepts the request. Each signature is
``hex(HMAC-SHA256(key, f"{t}.".encode() + body))``.

The timestamp is inside the signed message, so an attacker cannot refresh it; ``verify`` rejects
timestamps further than ``tolerance_s`` from now, which bounds how long a captured request can be
replayed.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from stepstream.errors import StepstreamError

SCHEME = "v1"
_DIGEST_BYTES = hashlib.sha256().digest_size
# Echoing an attacker's header back in full could make log lines and error bodies arbitrarily long.
_MAX_ECHO = 80


class SignatureError(StepstreamError):
    """A request's signature is missing, malformed, stale or forged; the message says which."""


def signature(body: bytes, key: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``body`` at ``timestamp`` with one key."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, keys: Sequence[str], timestamp: int) -> str:
    """The signature header value for ``body``: one ``v1`` signature per key, in the order given."""
    if not keys:
        raise ValueError("Expected at least one signing key, but got none")
    if timestamp < 0:
        raise ValueError(f"Expected a timestamp in unix seconds, but got {timestamp}")
    return ",".join([f"t={timestamp}", *(f"{SCHEME}={signature(body, key, timestamp)}" for key in keys)])


def verify(body: bytes, header: str | None, keys: Sequence[str], now: int, tolerance_s: int = 300) -> None:
    """Return if ``header`` holds a fresh signature of ``body`` by one of ``keys``; else raise.

    Raises :class:`SignatureError` when the header is missing or malformed, when its timestamp is more
    than ``tolerance_s`` seconds from ``now`` (either way: a skewed clock is as suspect as an old
    request), or when no ``v1`` signature matches any key.
    """
    if not keys:
        raise ValueError("Expected at least one signing key to verify with, but got none")
    if header is None or not header.strip():
        raise SignatureError("Expected a signature header, but the request has none")
    timestamp, candidates = _parse(header)
    age = now - timestamp
    if age > tolerance_s:
        raise SignatureError(
            f"Expected a signature timestamp within {tolerance_s} s of now, but it is {age} s old (t={timestamp})"
        )
    if -age > tolerance_s:
        raise SignatureError(
            f"Expected a signature timestamp within {tolerance_s} s of now, "
            f"but it is {-age} s in the future (t={timestamp})"
        )
    matched = False
    for key in keys:
        expected = bytes.fromhex(signature(body, key, timestamp))
        for candidate in candidates:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(
            f"Expected a signature made with one of the {len(keys)} signing key(s), "
            f"but none of the {len(candidates)} {SCHEME} signature(s) matches"
        )


def _parse(header: str) -> tuple[int, list[bytes]]:
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        name, separator, value = part.strip().partition("=")
        if not separator:
            raise _malformed(header, f"{part.strip()!r} is not a name=value pair")
        if name == "t":
            if timestamp is not None:
                raise _malformed(header, "it has more than one t")
            if not value.isascii() or not value.isdigit():
                raise _malformed(header, f"t={value!r} is not unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            try:
                digest = bytes.fromhex(value)
            except ValueError:
                raise _malformed(header, f"{SCHEME}={value[:_MAX_ECHO]!r} is not hex") from None
            if len(digest) != _DIGEST_BYTES:
                raise _malformed(header, f"a {SCHEME} signature has {len(digest)} bytes, not {_DIGEST_BYTES}")
            candidates.append(digest)
        # Other names are later schemes: ignored, so a signer can add one without breaking verifiers.
    if timestamp is None:
        raise _malformed(header, "it has no t")
    if not candidates:
        raise _malformed(header, f"it has no {SCHEME} signature")
    return timestamp, candidates


def _malformed(header: str, reason: str) -> SignatureError:
    shown = header if len(header) <= _MAX_ECHO else header[:_MAX_ECHO] + "…"
    return SignatureError(
        f"Expected a signature header like 't=<unix seconds>,{SCHEME}=<hex>', but got {shown!r}: {reason}"
    )
