"""Who may use the api: bearer tokens, each with a name and roles (checked by ``stepstream.api.auth``).

Three roles, each a kind of request (docs/security.md):

- ``read``: every ``GET`` under ``/v1/`` (runs, histories, states, waiters, flow control, the
  dashboard's data);
- ``write``: starting runs (``POST /v1/runs``) and notifying events (``POST /v1/events/…/notify``);
- ``operate``: cancelling runs and acting on the dead-letter list.

Tokens are configured hashed, one per line of ``STEPSTREAM_API_TOKENS`` (or of the file
``STEPSTREAM_API_TOKENS_FILE``, a Kubernetes Secret mounted)::

    # name     roles               SHA-256 of the token
    deploy-bot write               sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    oncall     read,write,operate  sha256:…

``stepstream token new NAME --roles …`` makes a token and prints its line. A token is 32 random
bytes, so a plain SHA-256 keeps it safe at rest (a slow password hash guards guessable secrets, which
these are not); a presented token is hashed and compared with every configured hash in constant time.
The health, metrics and documentation pages and the dashboard's static files stay open: they show no
run. The dashboard sends the token it is given with every request; the browser's ``EventSource``
cannot send headers, so a ``GET`` may carry it in the ``stepstream_token`` cookie instead (read only:
a cookie never authorises a change, so another site cannot make a browser change anything).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

ROLES = ("read", "write", "operate")
COOKIE = "stepstream_token"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,99}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
# Under /v1/: what each request needs. Anything else there (an unknown route too) needs at least a token.
_WRITES = re.compile(r"^/v1/(runs|events/.+/notify)$")


@dataclass(frozen=True, slots=True)
class Token:
    name: str
    roles: frozenset[str]
    digest: bytes  # SHA-256 of the token


def new_token() -> str:
    """A fresh token: 32 random bytes, URL-safe, with a prefix that says what it is (secret scanners)."""
    return "ssk_" + secrets.token_urlsafe(32)


def token_line(name: str, roles: Iterable[str], token: str) -> str:
    """The line that configures ``token`` (hashed) as ``name`` with ``roles``."""
    return f"{name} {','.join(roles)} sha256:{hashlib.sha256(token.encode()).hexdigest()}"


def parse_tokens(text: str, source: str) -> tuple[Token, ...]:
    """The tokens configured in ``text`` (lines of ``name roles sha256:hex``; ``#`` starts a comment).

    Raises ``ValueError`` naming the line that does not fit (the settings make it a ``ConfigurationError``)."""
    tokens: list[Token] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        where = f"{source}, line {number}"
        if len(parts) != 3:
            raise ValueError(f"Expected 'name roles sha256:<hex>' in {where}, but got {len(parts)} fields")
        name, roles_text, digest = parts
        roles = frozenset(role.strip() for role in roles_text.split(",") if role.strip())
        if not _NAME.match(name):
            raise ValueError(f"Expected a token name of letters, digits and _.@- in {where}, but got {name!r}")
        if not roles or not roles <= set(ROLES):
            raise ValueError(
                f"Expected roles among {', '.join(ROLES)} (comma-separated) in {where}, but got {roles_text!r}"
            )
        if not _DIGEST.match(digest):
            raise ValueError(
                f"Expected the token's hash as sha256:<64 hex digits> in {where} (`stepstream token new` prints it), "
                "but got something else"  # never echo what may be a token pasted by mistake
            )
        if any(token.name == name for token in tokens):
            raise ValueError(f"Expected each token name once, but {name!r} appears again in {where}")
        tokens.append(Token(name, roles, bytes.fromhex(digest.removeprefix("sha256:"))))
    return tuple(tokens)


def needed_role(method: str, path: str) -> str | None:
    """The role a request needs; ``None``: open to anyone (health, metrics, docs, the dashboard's files)."""
    if not path.startswith("/v1/"):
        return None
    if method in ("GET", "HEAD"):
        return "read"
    if method == "POST" and _WRITES.match(path):
        return "write"
    return "operate"
