"""The SSRF guard for push endpoint URLs (RFC 8935 push delivery).

**Threat model.** A receiver registers ``delivery.endpoint_url`` and the transmitter POSTs SETs to
it from inside the operator's network. Without a guard, any receiver could make the transmitter
send requests to hosts only the transmitter can reach: the cloud metadata service
(``169.254.169.254``, which hands out credentials), the ledger's own admin ports on loopback,
databases on RFC 1918 addresses. The receiver controls the URL *and* the DNS records of its host,
so it can also answer with a public address when the URL is checked and a private one when the
transmitter connects (DNS rebinding), mix public and private answers, or hide an IPv4 address
inside an IPv6 one (``::ffff:127.0.0.1``, NAT64 ``64:ff9b::a9fe:a9fe``, 6to4 ``2002:7f00:1::``).

**What is refused** (:func:`is_forbidden_address` returns the reason):

- always, whatever the operator says: unspecified (``0.0.0.0/8``, ``::``; on Linux ``0.0.0.0``
  reaches the local host), multicast, broadcast, the reserved ``240.0.0.0/4``, and the deprecated
  IPv4-compatible IPv6 form ``::a.b.c.d``;
- unless the operator starts the server with ``--allow-private-push-targets``
  (``PushTargetPolicy(allow_private=True)``, meant for tests and demos on one machine): loopback,
  RFC 1918 private, link-local (and the cloud metadata addresses ``169.254.169.254``,
  ``169.254.170.2``, ``fd00:ec2::254`` by name), CGNAT ``100.64.0.0/10``, IETF protocol
  assignments, documentation, benchmarking and 6to4-relay ranges, ULA ``fc00::/7``, IPv6
  link-local and site-local, discard-only, Teredo, ORCHID, SRv6 and NAT64 local-use prefixes, and
  anything else Python's :mod:`ipaddress` does not call globally reachable;
- IPv4-mapped, IPv4-translated, NAT64 (``64:ff9b::/96``) and 6to4 (``2002::/16``) addresses are
  judged by the IPv4 address they embed (``::ffff:10.0.0.1`` → "IPv4-mapped private");
- in the URL itself (:func:`check_url`): schemes other than ``https`` (``http`` only with
  ``--allow-insecure-push``, ``PushTargetPolicy(allow_insecure=True)``), userinfo, fragments,
  control characters, URLs over 2048 characters, port 0, IPv6 zone identifiers, host names that
  are not valid DNS names (IDNA names are checked in their ASCII ``xn--`` form, the form that is
  resolved), numeric forms such as ``127.1`` or ``0x7f000001`` (a host name's last label must
  start with a letter), and (unless private targets are allowed) ``localhost``, ``*.localhost``
  and single-label names, which resolve through local search domains. Non-default ports are fine.

A host name is refused if **any** of its A/AAAA records is forbidden: the attacker controls the
DNS answer, so a mixed answer is refused rather than filtered.

**How rebinding is defeated.** Checking a name and then letting an HTTP client resolve it again
checks the wrong answer. The push deliverer's client (:class:`~.push_client.PushClient`) instead
resolves through :class:`GuardedResolver`, which returns an answer only when every address in it
passed the check, and connects to exactly those addresses, with no second lookup in between (its
DNS cache holds only checked answers). Around that, the client checks every request's URL with
:func:`check_url` (scheme, userinfo, host syntax, and IP-literal hosts, which need no lookup),
checks each address again just before connecting to it and the connected peer after, never
uses a proxy, and never follows a redirect (a 3xx is a failed attempt).

The check at stream creation/update (:func:`check_endpoint`) is the early, friendly refusal; the
check at connect time is the one that counts, because DNS can change at any moment after
creation, and because the operator may have restarted the server with other flags since.

**Operator flags.** ``serve --allow-insecure-push`` (``allow_insecure``) accepts ``http://``
endpoints; ``serve --allow-private-push-targets`` (``allow_private``) accepts loopback, private
and the other non-public ranges above. Both exist for tests and the demo, which push to a
receiver on ``http://127.0.0.1``; neither belongs in production. The same
:class:`PushTargetPolicy` must reach both the stream service and the push deliverer.

**Using it.** At registration: ``check_endpoint`` (async) or ``check_endpoint_blocking`` (from
an executor thread) on the receiver's URL. For delivery: one
:class:`~.push_client.PushClient` per process, created with the same policy; a forbidden target
surfaces from its ``post`` as :class:`ForbiddenPushTarget`.

Errors, all with ``field="delivery.endpoint_url"``::

    InvalidInput (400)               check_url: malformed URL, disallowed scheme, userinfo, …
    ├── ForbiddenPushTarget (400)    code forbidden_push_target: the target (address) is refused;
    │                                details ``host``, ``address``, ``reason``
    └── UnresolvablePushTarget (400) code unresolvable_push_target: the name has no address
                                     (at registration; at connect time the client's
                                     PushConnectError)

The resolvers are ``aiohttp``'s (:class:`~aiohttp.abc.AbstractResolver`): its
``ThreadedResolver`` (``getaddrinfo``) by default, and tests inject scripted ones.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from ..domain.errors import InvalidInput

__all__ = [
    "FIELD",
    "INSECURE_FLAG",
    "MAX_URL_LENGTH",
    "PRIVATE_FLAG",
    "ForbiddenPushTarget",
    "GuardedResolver",
    "PushTargetPolicy",
    "UnresolvablePushTarget",
    "check_endpoint",
    "check_endpoint_blocking",
    "check_url",
    "is_forbidden_address",
    "resolve_and_check",
]

FIELD: Final = "delivery.endpoint_url"
MAX_URL_LENGTH: Final = 2048
INSECURE_FLAG: Final = "--allow-insecure-push"
PRIVATE_FLAG: Final = "--allow-private-push-targets"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class PushTargetPolicy:
    """What the operator allows beyond the secure default (both flags are for tests and demos).

    :param allow_insecure: accept ``http://`` endpoints (``serve --allow-insecure-push``).
    :param allow_private: accept loopback, private, link-local and other non-public addresses
        (``serve --allow-private-push-targets``); unspecified, multicast, broadcast and reserved
        addresses stay refused.
    """

    allow_insecure: bool = False
    allow_private: bool = False


class ForbiddenPushTarget(InvalidInput):
    """The push target is refused: it is, or resolves to, an address the policy forbids."""

    code = "forbidden_push_target"

    def __init__(
        self,
        description: str,
        *,
        host: str | None = None,
        address: str | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(description, field=FIELD, host=host, address=address, reason=reason)
        self.host = host
        self.address = address
        self.reason = reason


class UnresolvablePushTarget(InvalidInput):
    """The push target's host name does not resolve (or has no A/AAAA record) at registration."""

    code = "unresolvable_push_target"

    def __init__(self, description: str, *, host: str) -> None:
        super().__init__(description, field=FIELD, host=host)
        self.host = host


# -- classification -------------------------------------------------------------------------------

_ALWAYS = True  # refused whatever the policy
_PRIVATE = False  # refused unless allow_private


def _table(*rows: tuple[str, str, bool]) -> tuple[tuple[str, IPNetwork, bool], ...]:
    return tuple((reason, ipaddress.ip_network(net), always) for reason, net, always in rows)


# First match wins: specific entries (metadata, broadcast) come before their enclosing ranges.
_V4_RULES: Final = _table(
    ("unspecified", "0.0.0.0/8", _ALWAYS),
    ("broadcast", "255.255.255.255/32", _ALWAYS),
    ("multicast", "224.0.0.0/4", _ALWAYS),
    ("reserved", "240.0.0.0/4", _ALWAYS),
    ("loopback", "127.0.0.0/8", _PRIVATE),
    ("private", "10.0.0.0/8", _PRIVATE),
    ("private", "172.16.0.0/12", _PRIVATE),
    ("private", "192.168.0.0/16", _PRIVATE),
    ("link-local (cloud metadata)", "169.254.169.254/32", _PRIVATE),
    ("link-local (cloud metadata)", "169.254.170.2/32", _PRIVATE),
    ("link-local", "169.254.0.0/16", _PRIVATE),
    ("CGNAT", "100.64.0.0/10", _PRIVATE),
    ("IETF protocol assignments", "192.0.0.0/24", _PRIVATE),
    ("documentation", "192.0.2.0/24", _PRIVATE),
    ("documentation", "198.51.100.0/24", _PRIVATE),
    ("documentation", "203.0.113.0/24", _PRIVATE),
    ("6to4 relay anycast", "192.88.99.0/24", _PRIVATE),
    ("benchmarking", "198.18.0.0/15", _PRIVATE),
)
_V6_RULES: Final = _table(
    ("unspecified", "::/128", _ALWAYS),
    ("multicast", "ff00::/8", _ALWAYS),
    ("loopback", "::1/128", _PRIVATE),
    ("link-local", "fe80::/10", _PRIVATE),
    ("site-local", "fec0::/10", _PRIVATE),
    ("ULA (cloud metadata)", "fd00:ec2::254/128", _PRIVATE),
    ("ULA", "fc00::/7", _PRIVATE),
    ("discard-only", "100::/64", _PRIVATE),
    ("NAT64 local-use", "64:ff9b:1::/48", _PRIVATE),
    ("Teredo", "2001::/32", _PRIVATE),
    ("benchmarking", "2001:2::/48", _PRIVATE),
    ("ORCHID", "2001:10::/28", _PRIVATE),
    ("ORCHIDv2", "2001:20::/28", _PRIVATE),
    ("documentation", "2001:db8::/32", _PRIVATE),
    ("documentation", "3fff::/20", _PRIVATE),
    ("SRv6 SIDs", "5f00::/16", _PRIVATE),
)
_IPV4_TRANSLATED: Final = ipaddress.IPv6Network("::ffff:0:0:0/96")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE: Final = ipaddress.IPv6Network("::/96")


def _low32(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address, bool] | None:
    """``(form, embedded IPv4, public embedding allowed)`` for IPv6 forms that carry IPv4."""
    if ip.ipv4_mapped is not None:
        return "IPv4-mapped", ip.ipv4_mapped, True
    if ip in _IPV4_TRANSLATED:
        return "IPv4-translated", _low32(ip), True
    if ip in _NAT64:
        return "NAT64", _low32(ip), True
    if ip in _IPV4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are not IPv4-compatible
        return "IPv4-compatible", _low32(ip), False
    if ip.sixtofour is not None:
        return "6to4", ip.sixtofour, True
    return None


def _classify(ip: IPAddress) -> tuple[str, bool] | None:
    """``(reason, always)`` when ``ip`` is not a public unicast address, else ``None``."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            form, inner, public_ok = embedded
            verdict = _classify(inner)
            if verdict is not None:
                return f"{form} {verdict[0]}", verdict[1] or not public_ok
            return None if public_ok else (f"{form} (deprecated)", _ALWAYS)
        rules = _V6_RULES
    else:
        rules = _V4_RULES
    for reason, network, always in rules:
        if ip in network:
            return reason, always
    if not ip.is_global:
        return "not globally reachable", _PRIVATE
    return None


def _parse_ip(value: str | IPAddress) -> IPAddress:
    """An address without IPv6 zone (``fe80::1%eth0`` → ``fe80::1``); ``ValueError`` if none."""
    if isinstance(value, ipaddress.IPv6Address):
        return ipaddress.IPv6Address(value.packed) if value.scope_id else value
    if isinstance(value, ipaddress.IPv4Address):
        return value
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    return ipaddress.ip_address(text.partition("%")[0])


def _refusal(ip: str | IPAddress, policy: PushTargetPolicy | None) -> tuple[str, bool] | None:
    """``(reason, always)`` when ``policy`` forbids ``ip``; ``always``: no flag lifts it."""
    try:
        address = _parse_ip(ip)
    except ValueError:
        return "not an IP address", _ALWAYS
    verdict = _classify(address)
    if verdict is None:
        return None
    always = verdict[1]
    lifted = not always and policy is not None and policy.allow_private
    return None if lifted else verdict


def is_forbidden_address(ip: str | IPAddress, policy: PushTargetPolicy | None = None) -> str | None:
    """Why a push may not connect to ``ip`` (e.g. ``"loopback"``, ``"IPv4-mapped private"``).

    :param ip: an address object or its text (brackets and an IPv6 zone are accepted).
    :param policy: ``None`` means the strict default, :class:`PushTargetPolicy()`.
    :return: the reason, or ``None`` when the address is allowed. Text that is not an IP
        address is refused (``"not an IP address"``): the guard fails closed.
    """
    refusal = _refusal(ip, policy)
    return None if refusal is None else refusal[0]


# -- the URL -------------------------------------------------------------------------------------

_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


def _invalid(message: str) -> InvalidInput:
    return InvalidInput(message, field=FIELD)


def _hint(always: bool) -> str:
    return "" if always else f" (for tests and demos only, start the server with {PRIVATE_FLAG})"


def _refuse_address(
    host: str, address: str, refusal: tuple[str, bool], *, literal: bool
) -> ForbiddenPushTarget:
    reason, always = refusal
    where = (
        f"{FIELD} points at {address}"
        if literal
        else f"{FIELD}'s host {host!r} resolves to {address}"
    )
    return ForbiddenPushTarget(
        f"{where}, which is refused ({reason}): push targets must be publicly reachable "
        f"addresses{_hint(always)}",
        host=host,
        address=address,
        reason=reason,
    )


def _ip_literal(host: str) -> IPAddress | None:
    """The address when ``host`` is an IP literal (IPv6 with or without brackets)."""
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in text:
        if "%" in text:
            raise _invalid(f"{FIELD} must not carry an IPv6 zone identifier; got host {host!r}")
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            raise _invalid(f"{FIELD} has a malformed IPv6 address {host!r}") from None
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return None


def _check_literal(host: str, ip: IPAddress, policy: PushTargetPolicy) -> None:
    refusal = _refusal(ip, policy)
    if refusal is not None:
        raise _refuse_address(host, str(ip), refusal, literal=True)


def _check_hostname(host: str, policy: PushTargetPolicy) -> str:
    """Validate a DNS host name in its ASCII (IDNA) form; returns it."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        not name
        or len(name) > 253
        or not all(_LABEL.fullmatch(label) for label in labels)
        or not labels[-1][0].isalpha()
    ):
        raise _invalid(
            f"{FIELD} must name its host with a valid DNS name or IP address; got {host!r} "
            "(labels of letters, digits and hyphens; numeric forms such as 127.1 are refused)"
        )
    if not policy.allow_private:
        if labels[-1] == "localhost":
            raise ForbiddenPushTarget(
                f"{FIELD}'s host {host!r} is a loopback name (RFC 6761), which is refused: "
                f"push targets must be publicly reachable{_hint(_PRIVATE)}",
                host=host,
                reason="loopback",
            )
        if len(labels) == 1:
            raise ForbiddenPushTarget(
                f"{FIELD}'s host {host!r} is a single-label name, resolved through local search "
                f"domains: use the receiver's fully qualified public name{_hint(_PRIVATE)}",
                host=host,
                reason="single-label name",
            )
    return host


def _check_host(host: str, policy: PushTargetPolicy) -> None:
    literal = _ip_literal(host)
    if literal is not None:
        _check_literal(host, literal, policy)
    else:
        _check_hostname(host, policy)


def check_url(url: object, policy: PushTargetPolicy) -> str:
    """Check a push ``endpoint_url`` without any DNS lookup; returns it unchanged.

    IP-literal hosts are checked against the policy here; host names are checked for syntax
    only (use :func:`check_endpoint` to resolve them as well). The URL is parsed with ``yarl``,
    the parser the push client builds its request from, so the host checked is the host
    connected to.

    :raise InvalidInput: (``field="delivery.endpoint_url"``) the URL is malformed or not
        allowed; :class:`ForbiddenPushTarget` when its host is a forbidden address.
    """
    return _target(url, policy)[0]


def _target(url: object, policy: PushTargetPolicy) -> tuple[str, str, int]:
    """:func:`check_url`'s work; returns ``(url, host in ASCII form, port)``.

    A pure function of its arguments (no DNS): the answers for URLs that pass are remembered,
    since the push deliverer checks the same few endpoints on every request."""
    if not isinstance(url, str) or not url:
        raise _invalid(f"push delivery needs {FIELD}, the receiver's absolute https URL")
    return _checked_target(url, policy)


@lru_cache(maxsize=4096)  # only successes are cached (a refusal raises, and is checked again)
def _checked_target(url: str, policy: PushTargetPolicy) -> tuple[str, str, int]:
    if len(url) > MAX_URL_LENGTH:
        raise _invalid(f"{FIELD} must be at most {MAX_URL_LENGTH} characters")
    if not url.isprintable() or any(ch.isspace() for ch in url):
        raise _invalid(f"{FIELD} must not contain spaces or control characters")
    if "#" in url:
        raise _invalid(f"{FIELD} must not have a fragment (#…); remove it")
    try:
        parsed = URL(url)
        port = parsed.port
    except (ValueError, TypeError) as exc:
        raise _invalid(f"{FIELD} is not a valid URL ({exc}); got {url!r}") from None
    scheme = parsed.scheme
    if scheme == "http":
        if not policy.allow_insecure:
            raise _invalid(
                f"{FIELD} uses http: use https, or start the server with {INSECURE_FLAG} "
                "(tests and demos only)"
            )
    elif scheme != "https":
        raise _invalid(f"{FIELD} must be an https URL; got scheme {scheme!r}")
    host = parsed.raw_host
    if not parsed.is_absolute() or not host:
        raise _invalid(f"{FIELD} must be an absolute URL with a host, like https://host/path")
    raw_authority = re.split(r"[/?\\]", url.partition("://")[2], maxsplit=1)[0]
    if "@" in (parsed.raw_authority or "") or "@" in raw_authority:  # yarl drops an empty "@"
        raise _invalid(
            f"{FIELD} must not carry credentials (user:password@); use "
            "delivery.authorization_header"
        )
    if not port:  # 0, or None (only for schemes refused above)
        raise _invalid(f"{FIELD} must not use port 0")
    _check_host(host, policy)
    return url, host, port


# -- resolution ----------------------------------------------------------------------------------


def _ascii_host(host: str) -> str:
    if host.isascii():
        return host.lower()
    try:
        encoded = URL.build(scheme="https", host=host).raw_host
    except (ValueError, UnicodeError):
        encoded = None
    if not encoded:
        raise _invalid(f"{FIELD} has a host name that is not valid IDNA: {host!r}")
    return encoded


def _numeric(host: str, ip: IPAddress, port: int) -> ResolveResult:
    family = socket.AF_INET6 if isinstance(ip, ipaddress.IPv6Address) else socket.AF_INET
    return ResolveResult(
        hostname=host,
        host=str(ip),
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


def _check_answer(host: str, answer: Iterable[ResolveResult], policy: PushTargetPolicy) -> None:
    """Refuse the whole answer if any address in it is forbidden (mixed answers included)."""
    for record in answer:
        refusal = _refusal(record["host"], policy)
        if refusal is not None:
            raise _refuse_address(host, record["host"], refusal, literal=False)


class GuardedResolver(AbstractResolver):
    """A resolver that returns only answers whose every address passed the check.

    The push client connects to exactly the addresses this resolver returns, so checking inside
    the resolver checks the addresses actually connected to (no second lookup: DNS rebinding
    between check and connect is impossible).

    :param policy: the operator's :class:`PushTargetPolicy`.
    :param inner: the resolver that does the lookup; default a ``ThreadedResolver``
        (``getaddrinfo``), created on first use. An ``inner`` passed in is closed by its owner.
    :raise ForbiddenPushTarget: from :meth:`resolve`, when any address is forbidden.
    :raise OSError: from :meth:`resolve`, when the name does not resolve or has no address
        (the push client reports it as ``PushConnectError``).
    """

    def __init__(self, policy: PushTargetPolicy, inner: AbstractResolver | None = None) -> None:
        self.policy = policy
        self._inner = inner
        self._owns_inner = inner is None

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` with the inner resolver and return the answer only if all of it is
        allowed."""
        literal = _ip_literal(host)
        if literal is not None:  # checked without a lookup
            _check_literal(host, literal, self.policy)
            return [_numeric(host, literal, port)]
        if self._inner is None:
            self._inner = ThreadedResolver()
        answer = await self._inner.resolve(host, port, family)
        if not answer:
            raise OSError(errno.ENOENT, f"{host!r} has no addresses")
        _check_answer(host, answer, self.policy)
        return answer

    async def close(self) -> None:
        """Close the inner resolver if this resolver created it."""
        if self._owns_inner and self._inner is not None:
            await self._inner.close()
            self._inner = None


async def resolve_and_check(
    host: str,
    port: int,
    policy: PushTargetPolicy,
    resolver: AbstractResolver | None = None,
) -> list[str]:
    """Resolve ``host`` (all A and AAAA records) and check every address.

    :param host: the URL's host: a name (Unicode names are IDNA-encoded) or an IP literal, which
        is checked directly without any lookup.
    :param resolver: the resolver to use (default: ``aiohttp``'s ``ThreadedResolver``, closed
        afterwards); tests inject one.
    :return: the distinct addresses, in the resolver's order.
    :raise ForbiddenPushTarget: when any address is forbidden (an attacker controls the DNS
        answer, so a mixed answer is refused, not filtered).
    :raise UnresolvablePushTarget: when the name does not resolve or has no address.
    :raise InvalidInput: when the host name is malformed.
    """
    literal = _ip_literal(host)
    if literal is not None:
        _check_literal(host, literal, policy)
        return [str(literal)]
    name = _check_hostname(_ascii_host(host), policy)
    lookup = resolver if resolver is not None else ThreadedResolver()
    try:
        answer = await lookup.resolve(name, port, socket.AF_UNSPEC)
    except OSError as exc:
        raise UnresolvablePushTarget(
            f"{FIELD}'s host {name!r} does not resolve ({exc}); check the name, or publish its "
            "DNS records before registering the stream",
            host=name,
        ) from None
    finally:
        if resolver is None:
            await lookup.close()
    if not answer:
        raise UnresolvablePushTarget(f"{FIELD}'s host {name!r} has no A or AAAA record", host=name)
    _check_answer(name, answer, policy)
    return list(dict.fromkeys(record["host"] for record in answer))


async def check_endpoint(
    url: object, policy: PushTargetPolicy, resolver: AbstractResolver | None = None
) -> list[str]:
    """:func:`check_url`, then :func:`resolve_and_check` on its host: the stream create/update
    check. Returns the checked addresses.

    :raise InvalidInput: as :func:`check_url` and :func:`resolve_and_check`;
        :class:`ForbiddenPushTarget` for forbidden addresses.
    """
    _url, host, port = _target(url, policy)
    return await resolve_and_check(host, port, policy, resolver)


def check_endpoint_blocking(
    url: object, policy: PushTargetPolicy, resolver: AbstractResolver | None = None
) -> list[str]:
    """:func:`check_endpoint` for synchronous code (an executor thread, the CLI).

    Runs its own event loop, so it must not be called from a coroutine.
    """
    return asyncio.run(check_endpoint(url, policy, resolver))
