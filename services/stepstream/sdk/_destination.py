"""Whether a delivery was signed for this endpoint: the signed URL against where the app is served.

A signature says where the engine sent a request. Whoever received it can send the same bytes on,
so the SDK accepts a delivery only if its signed URL names this endpoint: the same host, port and
path (see ``target``). Where the app is served comes from its public base URL(s), configured
(``Workflows(base_url=...)``, ``STEPSTREAM_BASE_URL``), plus the path the request arrived at (mount
point and workflow name). Without a base URL it comes from the request's own ``Host`` header, which
a replayer controls: that still refuses a delivery signed for another path or host replayed with
this one's ``Host``, but not one whose ``Host`` was forged to match its signature.

The scheme is not compared. Behind a TLS-terminating proxy a request the engine sent to ``https://``
arrives as plain ``http``, so the app cannot know the scheme it was sent with; and it is the host,
port and path, not the scheme, that route a request to this app rather than another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
_MAX_ECHO = 200


@dataclass(frozen=True, slots=True)
class BaseUrl:
    """A public base URL of the app: where the engine reaches it, before the mount point."""

    text: str  # as configured
    prefix: str  # host[:port] and path, without a trailing slash: what a signed url starts with

    @classmethod
    def parse(cls, text: str, *, name: str) -> BaseUrl:
        """``ValueError`` naming ``name`` if ``text`` is not ``http(s)://host[:port][/path]``."""
        stripped = text.strip()
        parts = urlsplit(stripped)
        try:
            prefix = target(stripped).rstrip("/")
        except ValueError as error:
            raise ValueError(
                f"Expected {name} to be like https://app.example.com[/prefix], but got {text!r}: {error}"
            ) from None
        if parts.query or parts.fragment or "@" in parts.netloc:
            raise ValueError(
                f"Expected {name} to be like https://app.example.com[/prefix], without user, query or fragment, "
                f"but got {text!r}"
            )
        return cls(stripped, prefix)


def target(url: str) -> str:
    """``host[:port]/path`` of an http(s) URL, as compared: the host in lower case without a trailing
    dot, the port only if it is not its scheme's default, the path percent-decoded (``/`` if empty).

    ``ValueError`` for a URL that is not http(s) or names no host.
    """
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = 0
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or port == 0:
        raise ValueError(
            f"Expected an http(s) url with a host (and a port from 1 to 65535), but got {url[:_MAX_ECHO]!r}"
        )
    return _origin(parts.hostname, port, parts.scheme) + (unquote(parts.path) or "/")


def destination_problem(signed_url: str, scope: Mapping[str, Any], base_urls: Sequence[BaseUrl]) -> str | None:
    """Why a delivery signed for ``signed_url`` is not for the endpoint ``scope`` reached, or None."""
    try:
        signed = target(signed_url)
    except ValueError as error:
        return str(error)
    path = served_path(scope)
    if base_urls:
        expected = [base.prefix + path for base in base_urls]
        where = "this endpoint at its base url"
    else:
        host = _host_header(scope)
        try:
            if host is None:
                raise ValueError("none")
            origin = _origin_of_host(host, str(scope.get("scheme", "http")))
        except ValueError:
            return (
                "Expected a Host header to check the signed url against (or a configured base url), "
                f"but got {str(host)[:_MAX_ECHO]!r}"
            )
        expected = [origin + path]
        where = "this endpoint (from the request's Host; set a base url to not trust it)"
    if signed in expected:
        return None
    return (
        f"Expected a delivery signed for {where}, {' or '.join(expected)}, but it was signed for {signed[:_MAX_ECHO]}"
    )


def served_path(scope: Mapping[str, Any]) -> str:
    """The full path the request arrived at: the mount point (``root_path``) and the path below it.

    Starlette (since 0.33) keeps the mount point in ``path`` as well as in ``root_path``; other servers
    hand a mounted app only its own part. Both are handled, as in ``_asgi._workflow_name``.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and (path == root_path or path.startswith(root_path + "/")):
        return path
    return root_path + path


def _host_header(scope: Mapping[str, Any]) -> str | None:
    for name, value in scope["headers"]:
        if bytes(name).lower() == b"host":
            return bytes(value).decode("latin-1")
    return None


def _origin_of_host(host: str, scheme: str) -> str:
    if not host or any(character in host for character in "/@?#\\ "):
        raise ValueError(host)
    parts = urlsplit(f"//{host}")
    if not parts.hostname:
        raise ValueError(host)
    return _origin(parts.hostname, parts.port, scheme)


def _origin(hostname: str, port: int | None, scheme: str) -> str:
    host = hostname.lower().removesuffix(".")
    host = f"[{host}]" if ":" in host else host
    return host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
