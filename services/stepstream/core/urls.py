"""Where the engine may send signed deliveries: the allow-list of URL hosts. Pure.

The executor signs every delivery, so whoever chooses a delivery's URL chooses who receives a
request the engine vouches for. Any api caller names a trigger's ``url``, any Kafka producer writes
``triggers``, and an endpoint's answer names a child run's ``url``; so the engine signs only for
hosts an operator allowed (``STEPSTREAM_ALLOWED_URL_HOSTS``), by default the hosts of the workflows
it registers (``STEPSTREAM_WORKFLOWS``). The api refuses a trigger for another host; the executor,
which alone holds the keys, refuses to sign one, whoever wrote it.

An entry is a host (any port), ``host:port``, a suffix pattern ``*.example.com`` (any subdomain of
``example.com``, at any depth, but not ``example.com`` itself; ``*.example.com:8443`` with a port),
an IPv6 address in brackets (``[::1]``, ``[::1]:8000``), or ``*`` alone: any host, the check off.
Hosts compare case-insensitively, without a trailing dot; a URL's port is its explicit one or its
scheme's default.

The URL must also be one that every parser reads the same way: visible ASCII, ``http`` or
``https``, a host, no user information and no backslash, since a URL that the allow-list reads as
one host and an HTTP client as another would let it through.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

VARIABLE: Final = "STEPSTREAM_ALLOWED_URL_HOSTS"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# A host name's characters (letters, digits, '-', '_', '.'); IPv6 addresses go in brackets.
_NAME = re.compile(r"[a-z0-9_\-]+(\.[a-z0-9_\-]+)*")
_IPV6 = re.compile(r"[0-9a-f:.]+")
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class HostPattern:
    """One entry of the allow-list: a host or, with ``suffix``, any host ending in ``.<host>``; on
    ``port``, or any port when it is None."""

    host: str
    port: int | None = None
    suffix: bool = False

    def matches(self, host: str, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        return host.endswith("." + self.host) if self.suffix else host == self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        host = f"*.{host}" if self.suffix else host
        return host if self.port is None else f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class AllowedHosts:
    """The hosts the engine may sign deliveries for; ``any_host`` turns the check off."""

    patterns: tuple[HostPattern, ...] = ()
    any_host: bool = False

    @classmethod
    def parse(cls, entries: Iterable[str], *, name: str = VARIABLE) -> AllowedHosts:
        """The allow-list from ``host``, ``host:port``, ``*.suffix`` and ``*`` entries; ``ValueError``
        naming ``name`` for a malformed one."""
        patterns: list[HostPattern] = []
        any_host = False
        for raw in entries:
            entry = raw.strip()
            if entry == "*":
                any_host = True
            elif entry:
                patterns.append(_pattern(entry, name))
        return cls(tuple(dict.fromkeys(patterns)), any_host)

    @classmethod
    def of_urls(cls, urls: Iterable[str]) -> AllowedHosts:
        """The hosts (any port) of ``urls``: the default, from the registered workflows' URLs."""
        patterns: list[HostPattern] = []
        for url in urls:
            try:
                host = urlsplit(url).hostname
            except ValueError:
                continue
            if host:
                patterns.append(HostPattern(_normal_host(host)))
        return cls(tuple(dict.fromkeys(patterns)))

    def __bool__(self) -> bool:
        """False when nothing at all is allowed."""
        return self.any_host or bool(self.patterns)

    def __str__(self) -> str:
        if self.any_host:
            return "*"
        return ",".join(str(pattern) for pattern in self.patterns)

    def allows(self, host: str, port: int) -> bool:
        host = _normal_host(host)
        return self.any_host or any(pattern.matches(host, port) for pattern in self.patterns)

    def url_problem(self, url: str, *, name: str = "url") -> str | None:
        """Why the engine may not sign a delivery to ``url`` ("Expected …, but …"), or None if it may."""
        shape = url_shape_problem(url, name=name)
        if shape is not None:
            return shape
        parts = urlsplit(url)
        host = _normal_host(parts.hostname or "")
        port = parts.port or _DEFAULT_PORTS[parts.scheme]
        if self.allows(host, port):
            return None
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return (
            f"Expected {name} to be on a host allowed by {VARIABLE} (default: the hosts of the workflows in "
            f"STEPSTREAM_WORKFLOWS), but {shown} is not allowed"
        )


def url_shape_problem(url: str, *, name: str = "url") -> str | None:
    """Why ``url`` is not one every parser reads alike (see the module's docstring), or None."""
    shown = url[:100]
    if not _VISIBLE_ASCII.fullmatch(url) or "\\" in url:
        return (
            f"Expected {name} to be visible ASCII without backslashes (percent-encode the rest, punycode for "
            f"hosts), but got {shown!r}"
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"Expected {name} to be a url, but {shown!r} is not: {error}"
    if parts.scheme not in _DEFAULT_PORTS:
        return f"Expected {name} to be an http(s) url, but got {shown!r}"
    if "@" in parts.netloc:
        return f"Expected {name} without user information (user@ or user:password@), but got {shown!r}"
    if not parts.hostname:
        return f"Expected {name} to name a host, but got {shown!r}"
    if port == 0:
        return f"Expected {name} to have a port from 1 to 65535, but got {shown!r}"
    return None


def _normal_host(host: str) -> str:
    return host.lower().removesuffix(".")


def _pattern(entry: str, name: str) -> HostPattern:
    def malformed(reason: str) -> ValueError:
        return ValueError(
            f"Expected {name} entries like host, host:port, *.example.com or [::1]:8000 (or * alone), "
            f"but got {entry[:100]!r}: {reason}"
        )

    text = entry.lower()
    if "/" in text or "@" in text:
        raise malformed("a host has no scheme, path or user (it is not a url)")
    suffix = text.startswith("*.")
    if suffix:
        text = text[2:]
    if "*" in text:
        raise malformed("'*' may only start an entry, as '*.', or stand alone")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if suffix or not bracket or ":" not in host or not _IPV6.fullmatch(host):
            raise malformed("an IPv6 address goes in brackets, like [::1], without '*.'")
        if rest and not rest.startswith(":"):
            raise malformed("after ']' comes nothing or ':<port>'")
        port_text = rest[1:] if rest else None
    else:
        host, colon, after = text.partition(":")
        port_text = after if colon else None
        host = host.removesuffix(".")
        if not _NAME.fullmatch(host):
            raise malformed("not a host name (an IPv6 address goes in brackets)")
    port = None
    if port_text is not None:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65_535:
            raise malformed(f"{port_text!r} is not a port from 1 to 65535")
        port = int(port_text)
    return HostPattern(host, port, suffix)
