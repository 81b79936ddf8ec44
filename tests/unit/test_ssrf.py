"""The SSRF guard for push endpoints: address classes, URL checks, resolution (no sockets).

Name resolution goes through :class:`ScriptedResolver`, a real ``aiohttp`` ``AbstractResolver``
that answers from a script; nothing here touches the network. The connect-time tests, on real
loopback sockets, are in ``tests/integration/test_ssrf_connect.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import Sequence

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from mission_ledger.errors import InvalidInput
from mission_ledger.ssf.ssrf import (
    FIELD,
    ForbiddenPushTarget,
    GuardedResolver,
    PushTargetPolicy,
    UnresolvablePushTarget,
    check_endpoint,
    check_endpoint_blocking,
    check_url,
    is_forbidden_address,
    resolve_and_check,
)

STRICT = PushTargetPolicy()
PRIVATE_OK = PushTargetPolicy(allow_private=True)
INSECURE_OK = PushTargetPolicy(allow_insecure=True)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:4700:4700::1111"


class ScriptedResolver(AbstractResolver):
    """Answers each lookup with the next answer of its script (the last one repeats).

    ``answers`` maps a host name to a list of answers; an answer is a list of address strings,
    or an ``OSError`` to raise. Every call is recorded in ``calls`` as ``(host, port, family)``.
    """

    def __init__(self, answers: dict[str, Sequence[Sequence[str] | OSError]]) -> None:
        self.answers = {host: list(script) for host, script in answers.items()}
        self.calls: list[tuple[str, int, int]] = []
        self.closed = False

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        script = self.answers.get(host)
        if not script:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answer = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(answer, OSError):
            raise answer
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for address in answer
        ]

    async def close(self) -> None:
        self.closed = True


# -- address classes -----------------------------------------------------------------------------

REFUSED_UNLESS_PRIVATE_ALLOWED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.1", "private"),
    ("172.16.5.4", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.169.254", "link-local (cloud metadata)"),
    ("169.254.170.2", "link-local (cloud metadata)"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.254", "CGNAT"),
    ("fd00::1", "ULA"),
    ("fc00::1", "ULA"),
    ("fd00:ec2::254", "ULA (cloud metadata)"),
    ("192.0.0.9", "IETF protocol assignments"),
    ("192.0.2.10", "documentation"),
    ("198.51.100.10", "documentation"),
    ("203.0.113.10", "documentation"),
    ("2001:db8::1", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("100::1", "discard-only"),
    ("2001::1", "Teredo"),
    ("64:ff9b:1::a00:1", "NAT64 local-use"),
    # IPv6 forms embedding a forbidden IPv4 address are judged by what they embed
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local (cloud metadata)"),
    ("::ffff:100.64.0.1", "IPv4-mapped CGNAT"),
    ("::ffff:0:10.0.0.1", "IPv4-translated private"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local (cloud metadata)"),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::c0a8:101", "NAT64 private"),
    ("2002:7f00:1::", "6to4 loopback"),
    ("2002:a00:1::1", "6to4 private"),
    ("2002:a9fe:a9fe::", "6to4 link-local (cloud metadata)"),
]

REFUSED_ALWAYS = [
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an address under test, not a bind
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("[::]", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("::ffff:0.0.0.0", "IPv4-mapped unspecified"),
    ("::ffff:224.0.0.1", "IPv4-mapped multicast"),
    ("64:ff9b::e000:1", "NAT64 multicast"),
    ("::127.0.0.1", "IPv4-compatible loopback"),
    ("::10.0.0.1", "IPv4-compatible private"),
    ("::8.8.8.8", "IPv4-compatible (deprecated)"),
]

ALLOWED = [
    PUBLIC_V4,
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_V6,
    "2a00:1450:4001:800::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public
    "64:ff9b::808:808",  # NAT64 of a public address (DNS64 networks)
    "2002:808:808::1",  # 6to4 of a public address
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_UNLESS_PRIVATE_ALLOWED)
def test_non_public_addresses_are_refused_by_default(address: str, reason: str) -> None:
    assert is_forbidden_address(address) == reason
    assert is_forbidden_address(address, STRICT) == reason
    assert is_forbidden_address(address, INSECURE_OK) == reason


@pytest.mark.parametrize(("address", "reason"), REFUSED_UNLESS_PRIVATE_ALLOWED)
def test_allow_private_lifts_the_private_range_rule(address: str, reason: str) -> None:
    assert is_forbidden_address(address, PRIVATE_OK) is None


@pytest.mark.parametrize(("address", "reason"), REFUSED_ALWAYS)
def test_unspecified_multicast_broadcast_reserved_are_refused_whatever_the_policy(
    address: str, reason: str
) -> None:
    assert is_forbidden_address(address) == reason
    assert is_forbidden_address(address, PushTargetPolicy(True, True)) == reason


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_are_allowed(address: str) -> None:
    assert is_forbidden_address(address) is None
    assert is_forbidden_address(address, PRIVATE_OK) is None


def test_address_objects_and_bracketed_text_are_accepted() -> None:
    assert is_forbidden_address(ipaddress.ip_address("127.0.0.1")) == "loopback"
    assert is_forbidden_address(ipaddress.ip_address("::ffff:10.0.0.1")) == "IPv4-mapped private"
    assert is_forbidden_address(ipaddress.IPv6Address("fe80::1%eth0")) == "link-local"
    assert is_forbidden_address("[::1]") == "loopback"
    assert is_forbidden_address(ipaddress.ip_address(PUBLIC_V4)) is None


@pytest.mark.parametrize("text", ["", "junk", "127.1", "2130706433", "0x7f000001", "1.2.3.4.5"])
def test_text_that_is_not_an_ip_address_fails_closed(text: str) -> None:
    assert is_forbidden_address(text) == "not an IP address"
    assert is_forbidden_address(text, PushTargetPolicy(True, True)) == "not an IP address"


def test_policy_is_a_frozen_dataclass_with_secure_defaults() -> None:
    assert PushTargetPolicy(allow_insecure=False, allow_private=False) == STRICT
    with pytest.raises(dataclasses.FrozenInstanceError):
        STRICT.allow_private = True  # type: ignore[misc]


# -- check_url -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://receiver.example.com/events",
        "https://receiver.example.com:8443/ssf/events?tenant=7",
        "HTTPS://Receiver.Example.COM/events",
        "https://receiver.example.com./events",
        "https://bücher.example/events",  # IDNA
        "https://xn--bcher-kva.example/events",
        "https://r-1.example.io/",
        f"https://{PUBLIC_V4}:8443/events",
        f"https://[{PUBLIC_V6}]/events",
    ],
)
def test_good_https_urls_pass_unchanged(url: str) -> None:
    assert check_url(url, STRICT) == url


def test_http_is_refused_unless_the_operator_allows_it() -> None:
    url = "http://receiver.example.com/events"
    with pytest.raises(InvalidInput) as refused:
        check_url(url, STRICT)
    assert refused.value.field == FIELD
    assert "use https, or start the server with --allow-insecure-push" in refused.value.description
    assert check_url(url, INSECURE_OK) == url
    with pytest.raises(InvalidInput):
        check_url(url, PRIVATE_OK)  # allow_private does not imply allow_insecure


@pytest.mark.parametrize(
    "url",
    [
        "ftp://receiver.example.com/events",
        "file:///etc/passwd",
        "gopher://receiver.example.com/",
        "ws://receiver.example.com/",
        "wss://receiver.example.com/",
        "javascript:alert(1)",
        "receiver.example.com/events",
        "//receiver.example.com/events",
    ],
)
def test_other_schemes_and_relative_urls_are_refused(url: str) -> None:
    for policy in (STRICT, PushTargetPolicy(True, True)):
        with pytest.raises(InvalidInput) as refused:
            check_url(url, policy)
        assert refused.value.field == FIELD


@pytest.mark.parametrize(
    "url",
    [
        "https://user@receiver.example.com/events",
        "https://user:secret@receiver.example.com/events",
        "https://:secret@receiver.example.com/events",
        "https://@receiver.example.com/events",
        "https://receiver.example.com@127.0.0.1/events",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="credentials") as refused:
        check_url(url, PushTargetPolicy(True, True))
    assert refused.value.field == FIELD


@pytest.mark.parametrize(
    "url", ["https://receiver.example.com/events#frag", "https://receiver.example.com/#"]
)
def test_fragments_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="fragment"):
        check_url(url, STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "",
        "https://",
        "https:///events",
        "https://receiver.example.com/ev ents",
        "https://receiver.example.com/\nevents",
        "https://receiver.example.com/events\x00",
        "https://receiver.example.com:0/events",
        "https://receiver.example.com:99999/events",
        "https://receiver.example.com\\@evil.example/",
        "https://" + "a" * 2040 + ".example/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_url(url, STRICT)
    assert refused.value.field == FIELD
    assert not isinstance(refused.value, ForbiddenPushTarget)


@pytest.mark.parametrize("value", [None, 42, b"https://receiver.example.com/", ["https://x.y/"]])
def test_non_strings_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput, match="absolute https URL"):
        check_url(value, STRICT)


@pytest.mark.parametrize(
    "host",
    [
        "127.1",  # legacy numeric forms getaddrinfo would map onto 127.0.0.1
        "0x7f000001",
        "2130706433",
        "017700000001",
        "010.0.0.1",
        "1.2.3.4.5",
        "a..example",
        "-a.example",
        "a-.example",
        "under_score.example",
        "%31%32%37.0.0.1",
        "a" * 64 + ".example",
        "example.123",
    ],
)
def test_invalid_host_names_are_refused(host: str) -> None:
    with pytest.raises(InvalidInput, match="valid DNS name") as refused:
        check_url(f"https://{host}/events", PushTargetPolicy(True, True))
    assert not isinstance(refused.value, ForbiddenPushTarget)


@pytest.mark.parametrize(
    ("host", "address", "reason"),
    [
        ("127.0.0.1", "127.0.0.1", "loopback"),
        ("[::1]", "::1", "loopback"),
        ("[::ffff:127.0.0.1]", "::ffff:7f00:1", "IPv4-mapped loopback"),
        ("[::ffff:10.0.0.1]", "::ffff:a00:1", "IPv4-mapped private"),
        ("[64:ff9b::a9fe:a9fe]", "64:ff9b::a9fe:a9fe", "NAT64 link-local (cloud metadata)"),
        ("[2002:7f00:1::]", "2002:7f00:1::", "6to4 loopback"),
        ("169.254.169.254", "169.254.169.254", "link-local (cloud metadata)"),
        ("100.64.0.1", "100.64.0.1", "CGNAT"),
        ("10.1.2.3", "10.1.2.3", "private"),
        ("[fd00::1]", "fd00::1", "ULA"),
        ("[fe80::1]", "fe80::1", "link-local"),
        ("0.0.0.0", "0.0.0.0", "unspecified"),  # noqa: S104 - an address under test
        ("[::]", "::", "unspecified"),
    ],
)
def test_ip_literal_hosts_are_checked_directly(host: str, address: str, reason: str) -> None:
    with pytest.raises(ForbiddenPushTarget) as refused:
        check_url(f"https://{host}:8443/events", STRICT)
    error = refused.value
    assert (error.code, error.field, error.address, error.reason) == (
        "forbidden_push_target",
        FIELD,
        address,
        reason,
    )
    assert error.to_dict()["reason"] == reason
    assert error.http_status == 400
    assert isinstance(error, InvalidInput)


def test_allow_private_lifts_literal_refusals_except_the_unspecified_address() -> None:
    assert check_url("https://127.0.0.1:8443/events", PRIVATE_OK)
    assert check_url("https://[::ffff:10.0.0.1]/events", PRIVATE_OK)
    assert check_url("https://169.254.169.254/events", PRIVATE_OK)
    with pytest.raises(ForbiddenPushTarget, match="unspecified"):
        check_url("https://0.0.0.0/events", PRIVATE_OK)
    with pytest.raises(ForbiddenPushTarget, match="unspecified"):
        check_url("https://[::]/events", PRIVATE_OK)


def test_the_refusal_says_what_to_do() -> None:
    with pytest.raises(ForbiddenPushTarget) as private:
        check_url("https://10.0.0.1/events", STRICT)
    assert "--allow-private-push-targets" in private.value.description
    with pytest.raises(ForbiddenPushTarget) as never:
        check_url("https://0.0.0.0/events", STRICT)
    assert "--allow-private-push-targets" not in never.value.description  # no flag helps


def test_ipv6_zone_identifiers_are_refused() -> None:
    with pytest.raises(InvalidInput, match="zone"):
        check_url("https://[fe80::1%25eth0]/events", PushTargetPolicy(True, True))


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST", "api.localhost", "localhost."])
def test_localhost_names_are_loopback(host: str) -> None:
    with pytest.raises(ForbiddenPushTarget, match="loopback") as refused:
        check_url(f"https://{host}/events", STRICT)
    assert refused.value.reason == "loopback"
    assert check_url(f"https://{host}/events", PRIVATE_OK)


def test_single_label_names_are_refused_unless_private_targets_are_allowed() -> None:
    with pytest.raises(ForbiddenPushTarget, match="single-label"):
        check_url("https://metadata/computeMetadata/v1/", STRICT)
    assert check_url("https://receiver:8443/events", PRIVATE_OK)


# -- resolve_and_check / check_endpoint ------------------------------------------------------------


def test_a_name_resolving_to_public_addresses_passes() -> None:
    resolver = ScriptedResolver({"receiver.example.com": [[PUBLIC_V4, PUBLIC_V6, PUBLIC_V4]]})
    addresses = asyncio.run(resolve_and_check("receiver.example.com", 443, STRICT, resolver))
    assert addresses == [PUBLIC_V4, PUBLIC_V6]
    assert resolver.calls == [("receiver.example.com", 443, socket.AF_UNSPEC)]  # A and AAAA
    assert not resolver.closed  # an injected resolver belongs to its caller


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
        ("64:ff9b::a9fe:a9fe", "NAT64 link-local (cloud metadata)"),
        ("fd00::1", "ULA"),
    ],
)
def test_a_mixed_answer_is_refused_not_filtered(bad: str, reason: str) -> None:
    resolver = ScriptedResolver({"receiver.example.com": [[PUBLIC_V4, bad, PUBLIC_V6]]})
    with pytest.raises(ForbiddenPushTarget) as refused:
        asyncio.run(resolve_and_check("receiver.example.com", 443, STRICT, resolver))
    assert (refused.value.host, refused.value.address, refused.value.reason) == (
        "receiver.example.com",
        bad,
        reason,
    )
    assert "resolves to" in refused.value.description
    allowed = asyncio.run(resolve_and_check("receiver.example.com", 443, PRIVATE_OK, resolver))
    assert bad in allowed


def test_ip_literals_are_checked_without_a_lookup() -> None:
    resolver = ScriptedResolver({})
    assert asyncio.run(resolve_and_check(PUBLIC_V4, 443, STRICT, resolver)) == [PUBLIC_V4]
    assert asyncio.run(resolve_and_check(f"[{PUBLIC_V6}]", 443, STRICT, resolver)) == [PUBLIC_V6]
    with pytest.raises(ForbiddenPushTarget, match="IPv4-mapped loopback"):
        asyncio.run(resolve_and_check("::ffff:127.0.0.1", 443, STRICT, resolver))
    assert resolver.calls == []


def test_unicode_host_names_are_looked_up_in_their_idna_form() -> None:
    resolver = ScriptedResolver({"xn--bcher-kva.example": [[PUBLIC_V4]]})
    assert asyncio.run(resolve_and_check("Bücher.example", 443, STRICT, resolver)) == [PUBLIC_V4]
    assert resolver.calls[0][0] == "xn--bcher-kva.example"


def test_a_name_that_does_not_resolve_is_refused_as_unresolvable() -> None:
    resolver = ScriptedResolver({"empty.example": [[]]})
    for host in ("missing.example", "empty.example"):
        with pytest.raises(UnresolvablePushTarget) as refused:
            asyncio.run(resolve_and_check(host, 443, STRICT, resolver))
        assert isinstance(refused.value, InvalidInput)
        assert refused.value.to_dict() == {
            "code": "unresolvable_push_target",
            "description": refused.value.description,
            "field": FIELD,
            "host": host,
        }


def test_invalid_names_are_refused_before_any_lookup() -> None:
    resolver = ScriptedResolver({})
    for host in ("127.1", "a..b", "localhost"):
        with pytest.raises(InvalidInput):
            asyncio.run(resolve_and_check(host, 443, STRICT, resolver))
    assert resolver.calls == []


def test_check_endpoint_checks_the_url_then_its_addresses() -> None:
    resolver = ScriptedResolver(
        {"good.example.com": [[PUBLIC_V4]], "rebound.example.com": [["10.0.0.7"]]}
    )
    url = "https://good.example.com:8443/events"
    assert asyncio.run(check_endpoint(url, STRICT, resolver)) == [PUBLIC_V4]
    assert resolver.calls == [("good.example.com", 8443, socket.AF_UNSPEC)]
    with pytest.raises(ForbiddenPushTarget, match="private"):
        asyncio.run(check_endpoint("https://rebound.example.com/", STRICT, resolver))
    with pytest.raises(InvalidInput, match="allow-insecure-push"):
        asyncio.run(check_endpoint("http://good.example.com/", STRICT, resolver))


def test_check_endpoint_blocking_runs_the_same_check_for_synchronous_callers() -> None:
    resolver = ScriptedResolver({"good.example.com": [[PUBLIC_V4]], "bad.example.com": [["::1"]]})
    assert check_endpoint_blocking("https://good.example.com/", STRICT, resolver) == [PUBLIC_V4]
    with pytest.raises(ForbiddenPushTarget, match="loopback"):
        check_endpoint_blocking("https://bad.example.com/", STRICT, resolver)


# -- the connect-time pieces, without sockets ------------------------------------------------------


def test_the_guarded_resolver_returns_exactly_the_checked_answer() -> None:
    inner = ScriptedResolver({"receiver.example.com": [[PUBLIC_V4, PUBLIC_V6]]})
    guard = GuardedResolver(STRICT, inner)
    answer = asyncio.run(guard.resolve("receiver.example.com", 443, socket.AF_UNSPEC))
    assert [record["host"] for record in answer] == [PUBLIC_V4, PUBLIC_V6]
    assert inner.calls == [("receiver.example.com", 443, socket.AF_UNSPEC)]
    asyncio.run(guard.close())
    assert not inner.closed  # not ours to close


def test_the_guarded_resolver_refuses_an_answer_with_any_forbidden_address() -> None:
    inner = ScriptedResolver({"receiver.example.com": [[PUBLIC_V4, "169.254.169.254"]]})
    with pytest.raises(ForbiddenPushTarget, match="cloud metadata"):
        asyncio.run(GuardedResolver(STRICT, inner).resolve("receiver.example.com", 443))
    answer = asyncio.run(GuardedResolver(PRIVATE_OK, inner).resolve("receiver.example.com", 443))
    assert [record["host"] for record in answer] == [PUBLIC_V4, "169.254.169.254"]


def test_the_guarded_resolver_reports_lookup_failures_as_os_errors() -> None:
    inner = ScriptedResolver({"empty.example": [[]]})
    for host in ("empty.example", "missing.example"):
        with pytest.raises(OSError):  # noqa: PT011 - aiohttp wraps any OSError as a DNS error
            asyncio.run(GuardedResolver(STRICT, inner).resolve(host, 443))


def test_the_guarded_resolver_checks_literals_it_is_asked_about() -> None:
    inner = ScriptedResolver({})
    guard = GuardedResolver(STRICT, inner)
    answer = asyncio.run(guard.resolve(PUBLIC_V6, 443))
    assert [(r["host"], r["family"]) for r in answer] == [(PUBLIC_V6, socket.AF_INET6)]
    with pytest.raises(ForbiddenPushTarget):
        asyncio.run(guard.resolve("127.0.0.1", 443))
    assert inner.calls == []
