"""Where the executor may send a signed delivery, and the URL it signs. Pure but for parsing.

The executor is the only holder of the signing keys, so it is where the allow-list really holds: the
api refuses a trigger for a host that is not allowed, but anyone who can write to ``triggers`` can
skip the api, and an endpoint's answer names a child run's url. A delivery to a URL that is not
allowed is neither signed nor sent; it fails at once, not retried, with the reason in the run's
history. Engine-side calls (``ctx.call``) are not signed and go to third parties: not checked here.

The URL signed is the one the HTTP client sends, as aiohttp (through yarl) normalises it: a
lower-case host, no default port, no fragment, dot segments resolved. Signing the URL as given
would make an endpoint refuse a delivery whose URL the client had rewritten.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from yarl import URL

from stepstream.core import AllowedHosts, ErrorInfo, Fail

NOT_ALLOWED = "UrlNotAllowed"


def destination(url: str, allowed: AllowedHosts) -> str | Fail:
    """The URL to sign and POST a delivery for ``url`` to, or the failure to report instead."""
    problem = allowed.url_problem(url)
    if problem is not None:
        return _refused(problem)
    try:
        parsed = URL(url)
    except ValueError as error:
        return _refused(f"Expected a url the HTTP client can send, but it refuses {url[:100]!r}: {error}")
    split = urlsplit(url)
    # The allow-list read the host with urllib; the client connects where yarl reads it. Any
    # disagreement is a URL crafted to pass one and reach another.
    if parsed.raw_host != split.hostname or parsed.explicit_port != split.port:
        return _refused(
            f"Expected a url every parser reads alike, but {url[:100]!r} names host {split.hostname!r} "
            f"port {split.port} to the allow-list and host {parsed.raw_host!r} port {parsed.explicit_port} "
            "to the HTTP client"
        )
    return str(parsed.with_fragment(None))


def _refused(message: str) -> Fail:
    return Fail(error=ErrorInfo(type=NOT_ALLOWED, message=message[:2_000]), retryable=False)
