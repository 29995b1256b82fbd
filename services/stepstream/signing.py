"""Signing deliveries: HMAC-SHA256 over the timestamp, a nonce, the destination URL and the body, pure
standard library.

The executor signs every delivery; the SDK verifies it before reading a byte of it as JSON. The
header value is ``t=<unix seconds>,n=<nonce>,v2=<hex>[,v2=<hex>...]``: one ``v2`` signature per
signing key, so that during a key rotation the executor signs with the current and the next key and
an endpoint that knows either accepts the request. Each signature is
``hex(HMAC-SHA256(key, "v2\\n" + t + "\\n" + nonce + "\\n" + url + "\\n" + body))``, and the URL
travels, unchanged, in the ``Stepstream-Url`` header.

Why each part is in the message:

- the timestamp, so that ``verify`` can refuse a request older (or newer) than ``tolerance_s``;
- the URL the executor sent the request to, so that a delivery captured at one endpoint (any api
  caller can point a run at a listener of their own) does not verify as one meant for another: the
  verifier checks the signed URL against where it is served (``stepstream.sdk`` does);
- a nonce, new for every request the executor sends (a redelivery after a crash too), so that an
  endpoint can remember the nonces it accepted within the tolerance and refuse the same request
  played again;
- the body, which holds the run, the delivery and the attempt.

The fields are separated by line feeds, which none of the first four may contain, so no two
(timestamp, nonce, URL, body) give the same message; the leading ``v2`` keeps the message apart from
the older scheme's. ``v1`` (``hex(HMAC-SHA256(key, t + "." + body))``, neither URL nor nonce) can
still be *signed* alongside ``v2``, so endpoints on an older SDK keep working while they are upgraded;
``verify`` no longer accepts it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from stepstream.errors import StepstreamError

SCHEME: Final = "v2"
LEGACY_SCHEME: Final = "v1"
NONCE_PATTERN: Final = r"[A-Za-z0-9_-]{16,64}"
MAX_URL_LENGTH: Final = 2_000  # as a trigger's url (stepstream.core.limits)
_DIGEST_BYTES = hashlib.sha256().digest_size
_NONCE = re.compile(NONCE_PATTERN)
# Visible ASCII only: a URL with a line break could not be told apart from the body in the message,
# and one with other bytes could not travel in a header unchanged.
_URL = re.compile(r"https?://[\x21-\x7e]+")
# Echoing an attacker's header back in full could make log lines and error bodies arbitrarily long.
_MAX_ECHO = 80


class SignatureError(StepstreamError):
    """A request's signature is missing, malformed, stale or forged; the message says which."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Signed:
    """What a verified signature vouches for: when it was made, its nonce, and the URL it was made for."""

    timestamp: int
    nonce: str
    url: str


def new_nonce() -> str:
    """A nonce for one request: 128 random bits, as 32 hex digits."""
    return secrets.token_hex(16)


def signature(body: bytes, key: str, *, timestamp: int, nonce: str, url: str) -> str:
    """The hex ``v2`` signature of a request with one key."""
    message = f"{SCHEME}\n{timestamp}\n{nonce}\n{url}\n".encode() + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def legacy_signature(body: bytes, key: str, timestamp: int) -> str:
    """The hex ``v1`` signature of ``body`` at ``timestamp`` with one key: no URL, no nonce."""
    message = f"{timestamp}.".encode() + body
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def sign(body: bytes, keys: Sequence[str], *, timestamp: int, nonce: str, url: str, legacy: bool = False) -> str:
    """The signature header value for a request of ``body`` to ``url``: one ``v2`` signature per key,
    in the order given, then (``legacy``) one ``v1`` per key for endpoints on an older SDK."""
    if not keys:
        raise ValueError("Expected at least one signing key, but got none")
    if timestamp < 0:
        raise ValueError(f"Expected a timestamp in unix seconds, but got {timestamp}")
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"Expected a nonce of 16 to 64 letters, digits, '-' and '_', but got {nonce[:_MAX_ECHO]!r}")
    problem = url_problem(url)
    if problem is not None:
        raise ValueError(problem)
    parts = [f"t={timestamp}", f"n={nonce}"]
    parts += [f"{SCHEME}={signature(body, key, timestamp=timestamp, nonce=nonce, url=url)}" for key in keys]
    if legacy:
        parts += [f"{LEGACY_SCHEME}={legacy_signature(body, key, timestamp)}" for key in keys]
    return ",".join(parts)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be signed (it must be an http(s) URL of visible ASCII characters), or None."""
    if len(url) > MAX_URL_LENGTH:
        return f"Expected a url of at most {MAX_URL_LENGTH} characters, but got {len(url)}"
    if not _URL.fullmatch(url):
        return (
            "Expected an http(s) url of visible ASCII characters (percent-encode the rest, punycode for "
            f"hosts), but got {url[:_MAX_ECHO]!r}"
        )
    return None


def verify(
    body: bytes, header: str | None, keys: Sequence[str], *, url: str | None, now: int, tolerance_s: int = 300
) -> Signed:
    """What ``header`` vouches for, if it holds a fresh signature of ``body`` sent to ``url`` by one of
    ``keys``; else raise.

    ``url`` is the request's ``Stepstream-Url`` header: the URL the signer says it sent the request
    to. This checks only that the signature covers it; whether it names this endpoint, and whether
    the nonce was seen before, are for the caller to judge from the :class:`Signed` returned.

    Raises :class:`SignatureError` when the header or the URL is missing or malformed, when its
    timestamp is more than ``tolerance_s`` seconds from ``now`` (either way: a skewed clock is as
    suspect as an old request), or when no ``v2`` signature matches any key.
    """
    if not keys:
        raise ValueError("Expected at least one signing key to verify with, but got none")
    if header is None or not header.strip():
        raise SignatureError("Expected a signature header, but the request has none")
    timestamp, nonce, candidates = _parse(header)
    if url is None:
        raise SignatureError(
            "Expected a Stepstream-Url header naming the url the request was signed for, but the request has none"
        )
    problem = url_problem(url)
    if problem is not None:
        raise SignatureError(f"{problem} in the Stepstream-Url header")
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
        expected = bytes.fromhex(signature(body, key, timestamp=timestamp, nonce=nonce, url=url))
        for candidate in candidates:
            # No early exit: every comparison runs, each in constant time.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError(
            f"Expected a signature of this body, nonce and url made with one of the {len(keys)} signing key(s), "
            f"but none of the {len(candidates)} {SCHEME} signature(s) matches"
        )
    return Signed(timestamp=timestamp, nonce=nonce, url=url)


def _parse(header: str) -> tuple[int, str, list[bytes]]:
    timestamp: int | None = None
    nonce: str | None = None
    candidates: list[bytes] = []
    legacy = False
    for part in header.split(","):
        name, separator, value = part.strip().partition("=")
        if not separator:
            raise _malformed(header, f"{part.strip()!r} is not a name=value pair")
        if name == "t":
            if timestamp is not None:
                raise _malformed(header, "it has more than one t")
            if not value.isascii() or not value.isdigit():
                raise _malformed(header, f"t={value[:_MAX_ECHO]!r} is not unix seconds")
            timestamp = int(value)
        elif name == "n":
            if nonce is not None:
                raise _malformed(header, "it has more than one n")
            if not _NONCE.fullmatch(value):
                raise _malformed(header, f"n={value[:_MAX_ECHO]!r} is not 16 to 64 letters, digits, '-' and '_'")
            nonce = value
        elif name == SCHEME:
            try:
                digest = bytes.fromhex(value)
            except ValueError:
                raise _malformed(header, f"{SCHEME}={value[:_MAX_ECHO]!r} is not hex") from None
            if len(digest) != _DIGEST_BYTES:
                raise _malformed(header, f"a {SCHEME} signature has {len(digest)} bytes, not {_DIGEST_BYTES}")
            candidates.append(digest)
        elif name == LEGACY_SCHEME:
            legacy = True
        # Other names are later schemes: ignored, so a signer can add one without breaking verifiers.
    if timestamp is None:
        raise _malformed(header, "it has no t")
    if not candidates:
        reason = f"it has no {SCHEME} signature"
        if legacy:
            reason += (
                f", only {LEGACY_SCHEME}, which binds neither the url nor a nonce and is no longer accepted: "
                "upgrade the engine's executor"
            )
        raise _malformed(header, reason)
    if nonce is None:
        raise _malformed(header, "it has no n (nonce)")
    return timestamp, nonce, candidates


def _malformed(header: str, reason: str) -> SignatureError:
    shown = header if len(header) <= _MAX_ECHO else header[:_MAX_ECHO] + "…"
    return SignatureError(
        f"Expected a signature header like 't=<unix seconds>,n=<nonce>,{SCHEME}=<hex>', but got {shown!r}: {reason}"
    )
