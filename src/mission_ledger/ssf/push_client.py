"""The push deliverer's HTTP client: one pooled HTTP/1.1 ``POST`` per SET, SSRF-guarded.

RFC 8935 delivery is one request shape repeated many times: ``POST`` a few hundred bytes to a
handful of endpoints over kept-alive connections, read the status line, a couple of headers
and, for a 400, a small JSON body. :class:`PushClient` does exactly that, on asyncio's
transports with `httptools` (the llhttp parser) reading the answers, at a third of the CPU a
general-purpose client spends per request (decision 47) — a 100-receiver fan-out is 100 of them
per event, on the server's event loop.

**What it sends.** ``POST <path?query> HTTP/1.1`` with ``Host`` (the URL's, port included when
not the default), ``Content-Length``, and the caller's headers; no cookies, no proxy (the
environment's proxy settings are never read), no ``Expect``, no compression. Header names that
are not HTTP tokens and values with CR, LF or NUL are refused (:class:`ValueError`) before
anything is sent.

**What it answers.** A :class:`PushAnswer`: the status, the reason phrase, ``Retry-After`` and
``Location`` as sent, and up to :data:`MAX_ANSWER_BODY` bytes of a non-2xx body (a 2xx body is
read and dropped). Interim 1xx answers are skipped. Redirects are never followed: a 3xx is just
an answer (the caller refuses it).

**Where the SSRF guard sits** (see :mod:`.ssrf`): every request's URL passes
:func:`~.ssrf.check_url` (scheme, userinfo, host syntax, IP-literal hosts) under the operator's
:class:`~.ssrf.PushTargetPolicy`; host names resolve through :class:`~.ssrf.GuardedResolver`,
which returns an answer only if every address in it is allowed, and the client connects to
those very addresses (no second lookup, so DNS rebinding between check and connect cannot
work); each address is checked again just before its connect, and the connected peer once
more. Checked answers are cached for ``dns_ttl`` seconds; a refusal is never cached.

**Connections.** Kept alive per origin (scheme, host, port) and reused most-recent first; a
connection idle for ``idle_timeout`` is closed (a timer sweeps the idle ones), and one the
receiver closed is dropped. An answer must end as its head says (``Content-Length``, chunked,
or — with neither — the close); an answer cut short is an error, and a connection that sent
bytes beyond its answer is not reused; a head over :data:`MAX_ANSWER_HEAD` bytes is an error.
If a reused connection turns out to be closed before any byte of the answer arrived (the
receiver dropped it while it was idle), the request is sent once more on a new connection:
delivery is at least once and receivers de-duplicate by ``jti`` (RFC 8935 §2), so a second copy
is harmless.
TLS certificates are verified (``ssl.create_default_context()`` unless a context is given); the
SNI and certificate name are the URL's host.

**Timeouts.** ``connect_timeout`` bounds resolving plus the TCP and TLS handshakes of one
connection; ``total_timeout`` bounds the whole request, connect and answer included. Both raise
:class:`PushTimeout` (a :class:`TimeoutError`) saying which one expired.

Errors::

    ForbiddenPushTarget   (from .ssrf) the URL or an address is refused by the policy
    PushTimeout           connect or total timeout
    PushConnectError      no connection: DNS failure, refused, unreachable, TLS failure (OSError)
    PushProtocolError     the answer is not HTTP/1.x, or the connection closed before it ended
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import ssl
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

import httptools
from aiohttp.abc import AbstractResolver
from yarl import URL

from ..domain.errors import InvalidInput
from .ssrf import (
    ForbiddenPushTarget,
    GuardedResolver,
    PushTargetPolicy,
    check_url,
    is_forbidden_address,
)

__all__ = [
    "MAX_ANSWER_BODY",
    "PushAnswer",
    "PushClient",
    "PushConnectError",
    "PushProtocolError",
    "PushTimeout",
]

MAX_ANSWER_BODY: Final = 64 * 1024  # bytes of a non-2xx body kept (a 400's {"err", ...})
MAX_ANSWER_HEAD: Final = 64 * 1024  # bytes of status line and headers accepted
_FORBIDDEN_IN_VALUES: Final = frozenset("\r\n\x00")
_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2


@dataclass(frozen=True, slots=True)
class PushAnswer:
    """The receiver's final answer to one push."""

    status: int
    reason: str
    body: bytes = b""  # the first MAX_ANSWER_BODY bytes of a non-2xx answer's body
    retry_after: str | None = None  # the Retry-After header as sent
    location: str | None = None  # the Location header as sent (never followed)


class PushTimeout(TimeoutError):
    """The connect or the total timeout expired; ``phase`` says which."""

    def __init__(self, phase: str, seconds: float) -> None:
        super().__init__(f"{phase} timeout ({seconds:g} s) expired")
        self.phase = phase
        self.seconds = seconds


class PushConnectError(ConnectionError):
    """No connection could be made (DNS failure, refused, unreachable, TLS handshake)."""


class PushProtocolError(Exception):
    """The receiver's answer is not valid HTTP/1.x, or it closed the connection mid-answer."""


@dataclass(frozen=True, slots=True)
class _Target:
    scheme: str
    host: str  # ASCII (IDNA) host, IPv6 without brackets: what is resolved, SNI
    port: int
    head: bytes  # b"POST /path HTTP/1.1\r\nHost: host[:port]\r\n"


@lru_cache(maxsize=4096)
def _target(url: str) -> _Target:
    parsed = URL(url)
    host = parsed.raw_host
    port = parsed.port
    assert host, "check_url accepted the URL"
    assert port, "check_url accepted the URL"
    authority = parsed.host_port_subcomponent
    head = f"POST {parsed.raw_path_qs or '/'} HTTP/1.1\r\nHost: {authority}\r\n"
    return _Target(parsed.scheme, host, port, head.encode("ascii"))


@lru_cache(maxsize=64)
def _valid_name(name: str) -> bool:
    return _TOKEN.fullmatch(name) is not None


def _header_lines(headers: Iterable[tuple[str, str]]) -> bytes:
    lines = []
    for name, value in headers:
        if not _valid_name(name):
            raise ValueError(f"header name {name!r} is not an HTTP token; nothing was sent")
        if _FORBIDDEN_IN_VALUES.intersection(value):
            raise ValueError(f"header {name!r} has a CR, LF or NUL character; nothing was sent")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class _Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: PushClient) -> None:
        self._loop = loop
        self._client = client
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.idle_since = time.monotonic()
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[PushAnswer] | None = None
        self._answered = False  # the current request's final answer has ended
        self._extra = False  # bytes followed the final answer: the connection is out of step
        self._any_byte = False  # a byte of the current request's answer arrived
        self._reset_message()

    def _reset_message(self) -> None:
        self._head_bytes = 0  # bytes received while the head was incomplete
        self._head_size = 0  # the head's size, as parsed
        self._status = 0
        self._reason = b""
        self._headers_done = False
        self._delimited = False  # Content-Length or chunked: the close does not end the body
        self._body: list[bytes] = []
        self._body_size = 0
        self._retry_after: bytes | None = None
        self._location: bytes | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._client._live.add(self)

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():
            self.close()  # unsolicited bytes: the connection cannot be trusted any more
            return
        self._any_byte = True
        head_incomplete = not self._headers_done
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(PushProtocolError("the receiver answered with a protocol upgrade"))
            return
        except httptools.HttpParserError as exc:
            self._fail(PushProtocolError(f"the answer is not valid HTTP/1.x ({exc})"))
            return
        if head_incomplete and not self._headers_done:
            self._head_bytes += len(data)
        if self._head_size > MAX_ANSWER_HEAD or (
            not self._headers_done and self._head_bytes > MAX_ANSWER_HEAD
        ):
            self._fail(PushProtocolError(f"the answer's head exceeds {MAX_ANSWER_HEAD} bytes"))
            return
        if self._extra:
            self.close()  # the answer is kept; the connection is not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._client._live.discard(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and not self._delimited:  # the close ends this answer's body
            self._complete(keep_alive=False)
        elif not self._any_byte:
            waiter.set_exception(_Unanswered(exc))
        else:
            waiter.set_exception(PushProtocolError("the receiver closed the connection mid-answer"))

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._head_size += 15  # "HTTP/1.1 nnn " and CRLF
        if self._answered:
            self._extra = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        self._head_size += len(reason)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        lowered = name.lower()
        if lowered == b"retry-after":
            self._retry_after = value
        elif lowered == b"location":
            self._location = value
        elif lowered in (b"content-length", b"transfer-encoding"):
            self._delimited = True

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = self._status >= 200

    def on_body(self, body: bytes) -> None:
        if not 200 <= self._status < 300 and self._body_size < MAX_ANSWER_BODY:
            self._body.append(body)
            self._body_size += len(body)

    def on_message_complete(self) -> None:
        if self._answered or self._head_size > MAX_ANSWER_HEAD:
            return  # a second answer (flagged as extra), or one data_received refuses
        if self._status < 200:  # 100 Continue, 103 Early Hints…: the final answer follows
            self._reset_message()
            return
        self._answered = True
        self._complete(keep_alive=self._parser.should_keep_alive())

    # -- requests --------------------------------------------------------------------------------

    def _complete(self, *, keep_alive: bool) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        waiter.set_result(
            PushAnswer(
                status=self._status,
                reason=self._reason.decode("latin-1"),
                body=b"".join(self._body)[:MAX_ANSWER_BODY],
                retry_after=_text(self._retry_after),
                location=_text(self._location),
            )
        )
        if not keep_alive:
            self.close()

    def _fail(self, error: Exception) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(error)
        self.close()

    async def request(self, data: bytes) -> PushAnswer:
        assert self.transport is not None
        assert self._waiter is None
        self._reset_message()
        self._answered = self._extra = self._any_byte = False
        self._waiter = self._loop.create_future()
        try:
            self.transport.write(data)
            return await self._waiter
        finally:
            done = self._waiter.done() and not self._waiter.cancelled()
            self._waiter = None
            self.idle_since = time.monotonic()
            if not done:  # cancelled (a timeout) mid-request: the stream is out of step
                self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Unanswered(Exception):
    """The connection closed before any byte of the answer (on a kept-alive connection: the
    receiver dropped it while it was idle, and the request is sent again on a new one)."""

    def __init__(self, cause: Exception | None) -> None:
        super().__init__("the receiver closed the connection without answering")
        self.cause = cause


class PushClient:
    """Pooled, SSRF-guarded HTTP/1.1 ``POST`` for RFC 8935 push (see the module doc).

    Create and use it on one event loop; :meth:`close` it when done.

    :param policy: the operator's :class:`~.ssrf.PushTargetPolicy`.
    :param connect_timeout: seconds to resolve and open one connection (TCP and TLS).
    :param total_timeout: seconds for a whole request, connect and answer included.
    :param ssl_context: the TLS context for ``https`` (default: system trust, verification on).
    :param resolver: the DNS lookup behind the guard (default: ``getaddrinfo`` in a thread);
        tests inject one.
    :param dns_ttl: seconds a checked DNS answer is reused for new connections.
    :param idle_timeout: seconds a kept-alive connection may stay unused before it is closed.
    """

    def __init__(
        self,
        policy: PushTargetPolicy,
        *,
        connect_timeout: float = 5.0,
        total_timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        dns_ttl: float = 10.0,
        idle_timeout: float = 15.0,
    ) -> None:
        self.policy = policy
        self.connect_timeout = connect_timeout
        self.total_timeout = total_timeout
        self.dns_ttl = dns_ttl
        self.idle_timeout = idle_timeout
        self._ssl = ssl_context
        self._resolver = GuardedResolver(policy, resolver)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._live: set[_Connection] = set()  # every connection not yet closed, idle or in use
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[str, int]]]] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def post(self, url: str, body: bytes, headers: Iterable[tuple[str, str]]) -> PushAnswer:
        """POST ``body`` to ``url`` with ``headers`` (besides ``Host`` and ``Content-Length``).

        :raise ForbiddenPushTarget: the policy refuses the URL or its addresses.
        :raise PushTimeout: the connect or the total timeout expired.
        :raise PushConnectError: no connection could be made.
        :raise PushProtocolError: the answer was malformed or cut short.
        :raise ValueError: a header carries CR, LF or NUL (nothing was sent).
        """
        if self._closed:
            raise RuntimeError("the push client is closed")
        try:
            check_url(url, self.policy)
        except ForbiddenPushTarget:
            raise
        except InvalidInput as exc:  # scheme, userinfo, syntax: the target is refused
            raise ForbiddenPushTarget(exc.description, host=None, reason="url") from None
        target = _target(url)
        data = b"".join(
            (target.head, _header_lines(headers), b"Content-Length: %d\r\n\r\n" % len(body), body)
        )
        try:
            async with asyncio.timeout(self.total_timeout):
                return await self._send(target, data)
        except TimeoutError as exc:
            if isinstance(exc, PushTimeout):
                raise
            raise PushTimeout("total", self.total_timeout) from None

    async def _send(self, target: _Target, data: bytes) -> PushAnswer:
        origin = (target.scheme, target.host, target.port)
        connection = self._reuse(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, data)
            except _Unanswered:
                pass  # dropped while idle: once more, on a new connection
        connection = await self._connect(target)
        try:
            return await self._exchange(origin, connection, data)
        except _Unanswered as exc:
            raise PushProtocolError(str(exc)) from exc.cause

    async def _exchange(
        self, origin: tuple[str, str, int], connection: _Connection, data: bytes
    ) -> PushAnswer:
        answer = await connection.request(data)
        if self._closed:
            connection.close()
        elif not connection.closed:
            self._idle.setdefault(origin, []).append(connection)
            if self._sweeper is None:
                self._sweeper = asyncio.get_running_loop().call_later(
                    self.idle_timeout, self._sweep
                )
        return answer

    def _sweep(self) -> None:
        """Close the connections idle for ``idle_timeout``; again later while any stay idle."""
        self._sweeper = None
        deadline = time.monotonic() - self.idle_timeout
        for origin, pool in list(self._idle.items()):
            keep = [c for c in pool if not c.closed and c.idle_since > deadline]
            for connection in pool:
                if connection not in keep:
                    connection.close()
            if keep:
                self._idle[origin] = keep
            else:
                del self._idle[origin]
        if self._idle and not self._closed:
            self._sweeper = asyncio.get_running_loop().call_later(self.idle_timeout, self._sweep)

    def _reuse(self, origin: tuple[str, str, int]) -> _Connection | None:
        pool = self._idle.get(origin)
        now = time.monotonic()
        while pool:
            connection = pool.pop()
            if not connection.closed and now - connection.idle_since < self.idle_timeout:
                return connection
            connection.close()
        return None

    async def _connect(self, target: _Target) -> _Connection:
        if self._closed:
            raise RuntimeError("the push client is closed")
        try:
            async with asyncio.timeout(self.connect_timeout):
                addresses = await self._addresses(target.host, target.port)
                return await self._open(target, addresses)
        except TimeoutError:
            raise PushTimeout("connect", self.connect_timeout) from None

    async def _addresses(self, host: str, port: int) -> list[tuple[str, int]]:
        """The checked ``(address, family)`` pairs for ``host`` (cached for ``dns_ttl``)."""
        key = (host, port)
        cached = self._dns.get(key)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        if len(self._dns) >= 1024:  # forget expired answers of endpoints no longer pushed to
            self._dns = {k: v for k, v in self._dns.items() if v[0] > now}
        try:
            answer = await self._resolver.resolve(host, port, socket.AF_UNSPEC)
        except ForbiddenPushTarget:
            raise
        except OSError as exc:
            raise PushConnectError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
        addresses = list(dict.fromkeys((record["host"], record["family"]) for record in answer))
        self._dns[key] = (now + self.dns_ttl, addresses)
        return addresses

    async def _open(self, target: _Target, addresses: list[tuple[str, int]]) -> _Connection:
        loop = asyncio.get_running_loop()
        context: ssl.SSLContext | None = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        failures: list[str] = []
        for address, family in addresses:
            reason = is_forbidden_address(address, self.policy)  # the guard's last line
            if reason is not None:
                raise ForbiddenPushTarget(
                    f"push connection to {address} refused ({reason})",
                    host=target.host,
                    address=address,
                    reason=reason,
                )
            connection = _Connection(loop, self)
            try:
                transport, _ = await loop.create_connection(
                    lambda connection=connection: connection,
                    host=address,
                    port=target.port,
                    family=family,
                    ssl=context,
                    server_hostname=target.host if context is not None else None,
                )
            except ssl.SSLCertVerificationError as exc:
                failures.append(f"{address}: TLS: {exc.verify_message or exc.reason or exc}")
                continue
            except ssl.SSLError as exc:
                failures.append(f"{address}: TLS: {exc.reason or exc}")
                continue
            except OSError as exc:
                failures.append(f"{address}: {os.strerror(exc.errno) if exc.errno else exc}")
                continue
            peer = transport.get_extra_info("peername")
            if peer is None or is_forbidden_address(str(peer[0]), self.policy) is not None:
                connection.close()
                raise ForbiddenPushTarget(
                    f"push connection to {peer and peer[0]} refused",
                    host=target.host,
                    address=str(peer[0]) if peer else None,
                    reason="peer address",
                )
            with contextlib.suppress(OSError):
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return connection
        raise PushConnectError("; ".join(failures) or f"{target.host!r} has no address")

    async def close(self) -> None:
        """Close every connection (requests in flight fail); later posts raise
        ``RuntimeError``."""
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self._live):
            connection.close()
        self._live.clear()
        self._idle.clear()
        await self._resolver.close()

    async def __aenter__(self) -> PushClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
