"""Header values that carry credentials, sealed before they reach Kafka and opened only to be sent.

A trigger's headers ride on every delivery of its run, and a ``ctx.call``'s or an ``invoke``'s headers
on the step's records: all of them are kept in ``events``, for ever by default, where anyone who can
read the topic (Kafka Connect, a mirror, a backup) would read an ``Authorization`` value. So the api
(a trigger's headers) and the executor (a call's or a child run's, as the SDK answers them) seal the
values of credential headers with AES-256-GCM under a key the engine holds, and the executor opens them
only to put them on the HTTP request it sends. The api shows them redacted either way.

A sealed value reads ``sealed:v1:<key id>:<base64url(nonce | ciphertext | tag)>``; the header's name is
the associated data, so a value cannot be moved to another header. ``STEPSTREAM_HEADER_KEYS`` holds the
keys (base64url, 32 bytes each, comma-separated): the first seals, every one opens, so a rotation puts
the new key first and keeps the old one until no run sealed with it is left (docs/security.md).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, replace

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stepstream.core import ErrorInfo, Fail, Outcome, PlanCall, PlanInvoke, Suspend
from stepstream.core.limits import SEALED_PREFIX
from stepstream.errors import StepstreamError

# Headers whose values are credentials by their name; STEPSTREAM_SENSITIVE_HEADERS adds others.
SENSITIVE_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token", "x-access-token"}
)
_NONCE = 12

Headers = tuple[tuple[str, str], ...]


class SealError(StepstreamError):
    """A sealed value this engine cannot open: sealed with a key it no longer has, or altered."""


def new_key() -> str:
    """A fresh key, as ``STEPSTREAM_HEADER_KEYS`` takes it."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def parse_keys(text: str) -> tuple[bytes, ...]:
    """The keys of ``STEPSTREAM_HEADER_KEYS``; raises ``ValueError`` naming the one that is not 32 bytes."""
    keys = []
    for position, part in enumerate((part.strip() for part in text.split(",")), start=1):
        if not part:
            continue
        try:
            key = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        except ValueError:
            key = b""
        if len(key) != 32:
            raise ValueError(
                f"Expected key {position} of STEPSTREAM_HEADER_KEYS to be 32 bytes in base64url "
                "(`python -m stepstream.sealing` prints one), but it is not"  # never echo a key
            )
        keys.append(key)
    return tuple(keys)


def _key_id(key: bytes) -> str:
    return hashlib.sha256(b"stepstream header key" + key).hexdigest()[:8]


@dataclass(frozen=True, slots=True)
class Sealer:
    """Seals the values of sensitive headers with the first key; opens values sealed with any. Without
    keys it seals nothing and refuses to pass a credential on in plaintext (:class:`SealError`)."""

    keys: tuple[bytes, ...] = ()
    sensitive: frozenset[str] = SENSITIVE_HEADERS

    def seal(self, headers: Iterable[tuple[str, str]]) -> Headers:
        """``headers`` with the value of each sensitive one sealed.

        A value that already looks sealed is sealed again: a caller handing in a sealed value copied
        from somewhere must not have the engine open it and send the credential on its behalf.
        Raises :class:`SealError` for a sensitive header when there is no key to seal it with."""
        return tuple(
            (name, self._seal(name, value)) if name.lower() in self.sensitive else (name, value)
            for name, value in headers
        )

    def open(self, headers: Iterable[tuple[str, str]]) -> Headers:
        """``headers`` as they are to be sent: every sealed value opened. Raises :class:`SealError`."""
        return tuple(
            (name, self._open(name, value)) if value.startswith(SEALED_PREFIX) else (name, value)
            for name, value in headers
        )

    def _seal(self, name: str, value: str) -> str:
        if not self.keys:
            raise SealError(
                f"Expected STEPSTREAM_HEADER_KEYS to be set, so that the value of header {name!r} is sealed before it "
                "reaches Kafka (docs/security.md), but it is not: the engine keeps no credential in plaintext"
            )
        key = self.keys[0]
        nonce = os.urandom(_NONCE)
        sealed = AESGCM(key).encrypt(nonce, value.encode("latin-1"), name.lower().encode())
        text = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{SEALED_PREFIX}{_key_id(key)}:{text}"

    def _open(self, name: str, value: str) -> str:
        key_id, _, text = value.removeprefix(SEALED_PREFIX).partition(":")
        key = next((key for key in self.keys if _key_id(key) == key_id), None)
        if key is None:
            raise SealError(
                f"Expected a key for the sealed value of header {name!r} (key id {key_id}) in STEPSTREAM_HEADER_KEYS, "
                "but it is not there: keep an old key in the list until no run sealed with it is left"
            )
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            return AESGCM(key).decrypt(raw[:_NONCE], raw[_NONCE:], name.lower().encode()).decode("latin-1")
        except (InvalidTag, ValueError) as error:
            raise SealError(f"Expected the sealed value of header {name!r} to open, but it is altered") from error


def sealed(outcome: Outcome, sealer: Sealer) -> Outcome:
    """A delivery's outcome with the credential headers of the calls and child runs it starts sealed;
    a failure of the run, not retried, where they cannot be (no key)."""
    if not isinstance(outcome, Suspend):
        return outcome
    steps = []
    for step in outcome.steps:
        try:
            if isinstance(step, PlanCall):
                step = replace(step, call=replace(step.call, headers=sealer.seal(step.call.headers)))
            elif isinstance(step, PlanInvoke):
                step = replace(step, headers=sealer.seal(step.headers))
        except SealError as error:
            error_info = ErrorInfo(type="SealError", message=str(error))
            return Fail(error=error_info, retryable=False, step_index=step.index, step_name=step.name)
        steps.append(step)
    return replace(outcome, steps=tuple(steps))


if __name__ == "__main__":
    print(new_key())
