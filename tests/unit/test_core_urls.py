"""The allow-list of hosts the engine signs deliveries for: given entries, then exactly the URLs on
those hosts pass, and a malformed entry is refused with the reason."""

from __future__ import annotations

import pytest

from stepstream.core import AllowedHosts, HostPattern, url_shape_problem

ALLOWED = AllowedHosts.parse(["app.internal", "api.example.com:8443", "*.apps.example.com", "[::1]:8000"])


@pytest.mark.parametrize(
    "url",
    [
        "http://app.internal/workflows/a",
        "https://app.internal:9000/workflows/a",  # a bare host: any port
        "http://APP.Internal./workflows/a",  # case and a trailing dot do not matter
        "https://api.example.com:8443/w",
        "https://shop.apps.example.com/w",
        "https://a.b.apps.example.com/w",  # a suffix pattern: any depth
        "http://[::1]:8000/w",
    ],
)
def test_a_url_on_an_allowed_host_is_allowed(url: str) -> None:
    assert ALLOWED.url_problem(url) is None


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://listener.attacker.net/capture", "listener.attacker.net:443"),
        ("https://api.example.com/w", "api.example.com:443"),  # host:port: that port only
        ("http://api.example.com:8444/w", "api.example.com:8444"),
        ("https://apps.example.com/w", "apps.example.com:443"),  # *.x is subdomains, not x itself
        ("https://evilapps.example.com/w", "evilapps.example.com:443"),
        ("https://app.internal.attacker.net/w", "app.internal.attacker.net:443"),
        ("http://[::1]:8001/w", "[::1]:8001"),
    ],
)
def test_a_url_on_another_host_is_refused_naming_the_host_and_the_variable(url: str, shown: str) -> None:
    problem = ALLOWED.url_problem(url, name="failure_url")

    assert problem is not None
    assert problem.startswith("Expected failure_url to be on a host allowed by STEPSTREAM_ALLOWED_URL_HOSTS")
    assert problem.endswith(f"but {shown} is not allowed")


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://evil.example\\@app.internal/", "without backslashes"),
        ("http://user@app.internal/", "without user information"),
        ("http://user:pw@app.internal/", "without user information"),
        ("http://app.internal/a b", "visible ASCII"),
        ("http://bücher.internal/", "visible ASCII"),
        ("ftp://app.internal/", "http(s) url"),
        ("http:///nohost", "to name a host"),
        ("http://app.internal:99999/", "is not"),
        ("http://app.internal:0/", "port from 1 to 65535"),
    ],
)
def test_a_url_parsers_could_read_differently_is_refused_even_with_any_host_allowed(url: str, reason: str) -> None:
    problem = AllowedHosts.parse(["*"]).url_problem(url)

    assert problem is not None
    assert reason in problem
    assert url_shape_problem(url) == problem


def test_a_star_alone_allows_any_host() -> None:
    hosts = AllowedHosts.parse(["*"])

    assert hosts.url_problem("https://anything.example.org:1234/x") is None
    assert str(hosts) == "*"


def test_nothing_allowed_refuses_everything_and_is_falsy() -> None:
    hosts = AllowedHosts.parse([" ", ""])

    assert not hosts
    assert hosts.url_problem("http://127.0.0.1/w") is not None


def test_the_default_is_the_hosts_of_the_registered_workflows_on_any_port() -> None:
    hosts = AllowedHosts.of_urls(
        ["http://127.0.0.1:8000/workflows/onboarding", "http://127.0.0.1:8000/workflows/order", "https://[::1]/w"]
    )

    assert hosts.patterns == (HostPattern("127.0.0.1"), HostPattern("::1"))
    # the integration tests start apps on other ports of the same host: covered
    assert hosts.url_problem("http://127.0.0.1:41234/workflows/steady?tag=x") is None
    assert hosts.url_problem("http://localhost:8000/workflows/onboarding") is not None


def test_entries_print_as_they_are_written() -> None:
    assert str(ALLOWED) == "app.internal,api.example.com:8443,*.apps.example.com,[::1]:8000"


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("https://app.example.com", "it is not a url"),
        ("app.example.com/path", "it is not a url"),
        ("user@app.example.com", "it is not a url"),
        ("*app.example.com", "'*' may only start an entry"),
        ("app.*.example.com", "'*' may only start an entry"),
        ("*.*.example.com", "'*' may only start an entry"),
        ("app.example.com:http", "is not a port"),
        ("app.example.com:0", "is not a port"),
        ("app.example.com:", "is not a port"),
        ("::1", "not a host name"),
        ("[::1", "IPv6 address goes in brackets"),
        ("*.[::1]", "IPv6 address goes in brackets"),
        ("[::1]8000", "after ']'"),
        ("bad host", "not a host name"),
    ],
)
def test_a_malformed_entry_is_refused_naming_the_variable_and_why(entry: str, reason: str) -> None:
    with pytest.raises(ValueError, match="Expected STEPSTREAM_ALLOWED_URL_HOSTS entries like") as raised:
        AllowedHosts.parse([entry])

    assert reason in str(raised.value)
