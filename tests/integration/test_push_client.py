"""The push deliverer's HTTP/1.1 client, :class:`PushClient`, on real loopback sockets.

Most receivers here are raw ``asyncio.start_server`` servers that record the exact bytes they
get and answer with exact bytes (interim answers, chunked bodies, close-delimited answers,
garbage); the TLS tests run an ``aiohttp`` server with a certificate from a throw-away CA made
here with ``cryptography``. Nothing leaves loopback. The SSRF guard at connect time is tested in
``test_ssrf_connect.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mission_ledger.ssf.push_client import (
    MAX_ANSWER_BODY,
    MAX_ANSWER_HEAD,
    PushAnswer,
    PushClient,
    PushConnectError,
    PushProtocolError,
    PushTimeout,
)
from mission_ledger.ssf.ssrf import PushTargetPolicy
from tests.unit.test_ssrf import ScriptedResolver

LOCAL = PushTargetPolicy(allow_insecure=True, allow_private=True)  # the demo's flags
SET = b"eyJ0eXAiOiJzZWNldmVudCtqd3QifQ.e30.c2ln"
HEADERS = [("Content-Type", "application/secevent+jwt"), ("Accept", "application/json")]
ACCEPTED = b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
ERROR_JSON = b'{"err":"invalid_request","description":"the SET is not a signed JWT"}'


# -- a raw loopback receiver ---------------------------------------------------------------------


@dataclass
class RawServer:
    """What a raw receiver saw: connections accepted, requests (by connection), client EOFs."""

    port: int = 0
    connections: int = 0
    requests: list[tuple[int, bytes]] = field(default_factory=list)  # (connection, bytes)
    eof: dict[int, asyncio.Event] = field(default_factory=dict)  # set when the client closed
    errors: list[BaseException] = field(default_factory=list)  # the handlers' own failures

    def url(self, path: str = "/events", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    @property
    def bodies(self) -> list[bytes]:
        return [raw.partition(b"\r\n\r\n")[2] for _, raw in self.requests]

    async def wait_eof(self, connection: int, timeout: float = 2.0) -> None:
        await asyncio.wait_for(self.eof[connection].wait(), timeout)


@dataclass
class Conn:
    """One accepted connection, as the handler sees it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server: RawServer

    async def request(self) -> bytes:
        """Read one request (head and Content-Length body) and record it."""
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        raw = head + await self.reader.readexactly(length)
        self.server.requests.append((self.index, raw))
        return raw

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        for piece in pieces:
            self.writer.write(piece)
            await self.writer.drain()
            if pause:
                await asyncio.sleep(pause)

    async def until_eof(self) -> None:
        """Wait for the client to close the connection (bytes meanwhile are an error)."""
        with contextlib.suppress(ConnectionError):
            extra = await self.reader.read()
            assert extra == b"", f"unexpected bytes from the client: {extra!r}"
        self.server.eof[self.index].set()


Handler = Callable[[Conn], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[RawServer]:
    state = RawServer()
    tasks: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        index = state.connections
        state.connections += 1
        state.eof[index] = asyncio.Event()
        try:
            await handler(Conn(index, reader, writer, state))
        except (asyncio.IncompleteReadError, ConnectionError):
            state.eof[index].set()  # the client went away mid-request
        except asyncio.CancelledError:
            pass  # the test is over
        except Exception as exc:  # an assertion in a handler: fail the test, not just a log line
            state.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let the client's end see the closes before the loop ends
    assert not state.errors, state.errors


def answering(*answers: bytes) -> Handler:
    """A keep-alive receiver: answers each request on a connection with the next answer (the
    last repeats), until the client closes."""

    async def handler(conn: Conn) -> None:
        for number in range(1_000):
            try:
                await conn.request()
            except asyncio.IncompleteReadError as eof:
                if eof.partial:
                    raise AssertionError(f"a request cut short: {eof.partial!r}") from None
                conn.server.eof[conn.index].set()
                return
            await conn.send(answers[min(number, len(answers) - 1)])

    return handler


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


async def post_once(handler: Handler) -> PushAnswer:
    """One push to a fresh raw receiver running ``handler``."""
    async with raw_server(handler) as server, PushClient(LOCAL) as client:
        return await client.post(server.url(), SET, HEADERS)


def refused_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- what is sent --------------------------------------------------------------------------------


def test_the_request_is_exactly_the_request_line_host_headers_length_and_body(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing is added: no User-Agent, Accept-Encoding, Connection, Expect or cookies, and the
    environment's proxy settings are ignored (the proxies named here do not exist)."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{refused_port()}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    headers = [*HEADERS, ("Authorization", "Bearer t0k3n"), ("X-Trace", "café")]

    async def scenario() -> None:
        async with raw_server(answering(ACCEPTED)) as server, PushClient(LOCAL) as client:
            path = "/ssf/events/stream-1?tenant=a%20b&x=1"
            assert (await client.post(server.url(path), SET, headers)).status == 202
            assert (await client.post(f"http://127.0.0.1:{server.port}", b"", [])).status == 202
        host = f"127.0.0.1:{server.port}"
        assert server.requests == [
            (
                0,
                b"POST /ssf/events/stream-1?tenant=a%20b&x=1 HTTP/1.1\r\n"
                + f"Host: {host}\r\n".encode()
                + b"Content-Type: application/secevent+jwt\r\n"
                b"Accept: application/json\r\n"
                b"Authorization: Bearer t0k3n\r\n"
                + "X-Trace: café\r\n".encode()
                + b"Content-Length: %d\r\n\r\n" % len(SET)
                + SET,
            ),
            (0, f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\n\r\n".encode()),
        ]

    run(scenario)


@pytest.mark.parametrize(
    ("header", "refusal"),
    [
        (("Authorization", "Bearer x\r\nX-Injected: 1"), "CR, LF or NUL"),
        (("Authorization", "Bearer x\nX-Injected: 1"), "CR, LF or NUL"),
        (("Authorization", "Bearer x\x00"), "CR, LF or NUL"),
        (("X-Injected: 1\r\nX-Other", "1"), "not an HTTP token"),
        (("X Injected", "1"), "not an HTTP token"),
        (("", "1"), "not an HTTP token"),
    ],
)
def test_a_header_with_cr_lf_or_nul_or_a_bad_name_is_refused_before_anything_is_sent(
    header: tuple[str, str], refusal: str
) -> None:
    async def scenario() -> None:
        async with raw_server(answering(ACCEPTED)) as server, PushClient(LOCAL) as client:
            with pytest.raises(ValueError, match=refusal):
                await client.post(server.url(), SET, [*HEADERS, header])
            await asyncio.sleep(0.05)
            assert server.connections == 0  # not even a connection
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
        assert len(server.requests) == 1
        assert b"X-Injected" not in server.requests[0][1]

    run(scenario)


# -- connections ---------------------------------------------------------------------------------


def test_posts_to_one_origin_reuse_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        async with raw_server(answering(ACCEPTED)) as server, PushClient(LOCAL) as client:
            for path in ("/events", "/events", "/other?x=1"):
                assert (await client.post(server.url(path), SET, HEADERS)).status == 202
        assert server.connections == 1
        assert [connection for connection, _ in server.requests] == [0, 0, 0]

    run(scenario)


def test_a_connection_the_receiver_closed_while_idle_is_replaced() -> None:
    """The receiver closes after each answer, without ``Connection: close``; the next post
    still succeeds, on a new connection, and each SET arrives once."""

    async def once_then_close(conn: Conn) -> None:
        await conn.request()
        await conn.send(ACCEPTED)

    async def scenario() -> None:
        async with raw_server(once_then_close) as server, PushClient(LOCAL) as client:
            first = await client.post(server.url(), SET + b"1", HEADERS)
            second = await client.post(server.url(), SET + b"2", HEADERS)
        assert (first.status, second.status) == (202, 202)
        assert server.connections == 2
        assert server.bodies == [SET + b"1", SET + b"2"]

    run(scenario)


def test_a_reused_connection_closed_without_an_answer_is_retried_once_on_a_new_one() -> None:
    """The receiver reads the second request on the kept-alive connection and closes it without
    a byte of answer: the client sends it once more on a new connection (at least once)."""

    async def drop_the_second(conn: Conn) -> None:
        if conn.index == 0:
            await conn.request()
            await conn.send(ACCEPTED)
            await conn.request()  # then close, unanswered
        else:
            await answering(ACCEPTED)(conn)

    async def scenario() -> None:
        async with raw_server(drop_the_second) as server, PushClient(LOCAL) as client:
            assert (await client.post(server.url(), SET + b"1", HEADERS)).status == 202
            assert (await client.post(server.url(), SET + b"2", HEADERS)).status == 202
        assert server.connections == 2
        assert [connection for connection, _ in server.requests] == [0, 0, 1]
        assert server.bodies == [SET + b"1", SET + b"2", SET + b"2"]

    run(scenario)


def test_a_new_connection_closed_without_an_answer_is_a_protocol_error() -> None:
    async def read_and_close(conn: Conn) -> None:
        await conn.request()

    async def scenario() -> None:
        async with raw_server(read_and_close) as server, PushClient(LOCAL) as client:
            with pytest.raises(PushProtocolError, match="without answering"):
                await client.post(server.url(), SET, HEADERS)
        assert server.connections == 1  # no second attempt on a fresh connection
        assert server.bodies == [SET]

    run(scenario)


def test_a_connection_close_answer_is_not_reused() -> None:
    """The receiver keeps its end open: only the client's respect for ``Connection: close``
    makes the second post open a new connection."""
    close = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    async def scenario() -> None:
        async with raw_server(answering(close)) as server, PushClient(LOCAL) as client:
            for _ in range(2):
                assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await server.wait_eof(0)  # the client closed the first connection itself
        assert server.connections == 2
        assert [connection for connection, _ in server.requests] == [0, 1]

    run(scenario)


def test_an_http_1_0_answer_is_not_reused() -> None:
    async def scenario() -> None:
        answer = b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        async with raw_server(answering(answer)) as server, PushClient(LOCAL) as client:
            for _ in range(2):
                assert (await client.post(server.url(), SET, HEADERS)).status == 202
        assert server.connections == 2

    run(scenario)


def test_unsolicited_bytes_on_an_idle_connection_retire_it() -> None:
    async def answer_then_chatter(conn: Conn) -> None:
        await conn.request()
        await conn.send(ACCEPTED)
        await asyncio.sleep(0.05)  # the client has put the connection back in its pool
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")  # answers nothing
        await conn.until_eof()

    async def scenario() -> None:
        async with raw_server(answer_then_chatter) as server, PushClient(LOCAL) as client:
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await server.wait_eof(0)  # the client dropped the connection
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
        assert server.connections == 2

    run(scenario)


def test_a_connection_idle_longer_than_idle_timeout_is_closed_not_reused() -> None:
    async def scenario() -> None:
        async with (
            raw_server(answering(ACCEPTED)) as server,
            PushClient(LOCAL, idle_timeout=0.1) as client,
        ):
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await asyncio.sleep(0.2)
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await server.wait_eof(0)
        assert server.connections == 2

    run(scenario)


def test_idle_connections_are_swept_by_a_timer_without_another_post() -> None:
    async def scenario() -> None:
        async with (
            raw_server(answering(ACCEPTED)) as server,
            PushClient(LOCAL, idle_timeout=0.1) as client,
        ):
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await server.wait_eof(0, timeout=2.0)  # closed by the client, nothing posted since
        assert server.connections == 1

    run(scenario)


def test_a_reused_connection_closed_after_an_interim_answer_is_not_sent_again() -> None:
    """A ``100 Continue`` is a byte of answer: the receiver had the request, so a close after it
    is an error (retried later by the deliverer), not a stale connection to resend on."""

    async def continue_then_close(conn: Conn) -> None:
        await conn.request()
        await conn.send(ACCEPTED)
        await conn.request()
        await conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

    async def scenario() -> None:
        async with raw_server(continue_then_close) as server, PushClient(LOCAL) as client:
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            with pytest.raises(PushProtocolError, match="mid-answer"):
                await client.post(server.url(), SET, HEADERS)
        assert server.connections == 1

    run(scenario)


def test_close_closes_kept_alive_connections_and_refuses_later_posts() -> None:
    async def scenario() -> None:
        async with raw_server(answering(ACCEPTED)) as server:
            client = PushClient(LOCAL)
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            assert not server.eof[0].is_set()  # kept alive
            await client.close()
            await server.wait_eof(0)
            with pytest.raises(RuntimeError, match="closed"):
                await client.post(server.url(), SET, HEADERS)
            assert server.connections == 1

    run(scenario)


def test_a_checked_dns_answer_is_reused_for_dns_ttl() -> None:
    close = b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    async def scenario(dns_ttl: float) -> int:
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.1"]]})
        async with (
            raw_server(answering(close)) as server,
            PushClient(LOCAL, resolver=resolver, dns_ttl=dns_ttl) as client,
        ):
            url = f"http://receiver.example.com:{server.port}/events"
            for _ in range(3):
                assert (await client.post(url, SET, HEADERS)).status == 202
        assert server.connections == 3  # a new connection each time: Connection: close
        return len(resolver.calls)

    assert asyncio.run(scenario(dns_ttl=10.0)) == 1
    assert asyncio.run(scenario(dns_ttl=0.0)) == 3


# -- what is answered ----------------------------------------------------------------------------


def test_a_chunked_400_answer_body_is_returned_and_the_connection_reused() -> None:
    half = len(ERROR_JSON) // 2
    chunked = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"
        % (half, ERROR_JSON[:half], len(ERROR_JSON) - half, ERROR_JSON[half:])
    )

    async def scenario() -> None:
        async with raw_server(answering(chunked, ACCEPTED)) as server, PushClient(LOCAL) as c:
            answer = await c.post(server.url(), SET, HEADERS)
            assert (answer.status, answer.reason, answer.body) == (400, "Bad Request", ERROR_JSON)
            assert (await c.post(server.url(), SET, HEADERS)).status == 202
        assert server.connections == 1  # the chunked body was read to its end

    run(scenario)


def test_a_content_length_400_answer_body_is_returned() -> None:
    answer_bytes = (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ERROR_JSON), ERROR_JSON)
    )
    answer = asyncio.run(post_once(answering(answer_bytes)))
    assert answer == PushAnswer(status=400, reason="Bad Request", body=ERROR_JSON)


def test_an_error_body_longer_than_the_limit_is_truncated_and_the_rest_read() -> None:
    body = bytes(range(256)) * (MAX_ANSWER_BODY // 256 + 40)
    head = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def big_then_accepted(conn: Conn) -> None:
        await conn.request()
        # the head on its own, then the body (see the xfail test below for the two together)
        await conn.send(head, body[:50_000], body[50_000:], pause=0.02)
        await answering(ACCEPTED)(conn)

    async def scenario() -> None:
        async with raw_server(big_then_accepted) as server, PushClient(LOCAL) as client:
            answer = await client.post(server.url(), SET, HEADERS)
            assert answer.status == 500
            assert answer.body == body[:MAX_ANSWER_BODY]
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
        assert server.connections == 1

    run(scenario)


@pytest.mark.parametrize("status", [200, 202, 204])
def test_a_success_body_is_dropped(status: int) -> None:
    body = b"" if status == 204 else b'{"ok":true,"note":"ignored"}'
    success = b"HTTP/1.1 %d OK\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)
    if status == 204:
        success = b"HTTP/1.1 204 No Content\r\n\r\n"

    async def scenario() -> None:
        async with raw_server(answering(success)) as server, PushClient(LOCAL) as client:
            for _ in range(2):
                answer = await client.post(server.url(), SET, HEADERS)
                assert (answer.status, answer.body) == (status, b"")
        assert server.connections == 1

    run(scenario)


def test_an_answer_delimited_by_the_connection_close_is_returned() -> None:
    async def http_1_0(conn: Conn) -> None:
        await conn.request()
        await conn.send(b"HTTP/1.0 400 Bad Request\r\nContent-Type: application/json\r\n\r\n")
        await conn.send(ERROR_JSON[:10], ERROR_JSON[10:], pause=0.01)

    async def scenario() -> None:
        async with raw_server(http_1_0) as server, PushClient(LOCAL) as client:
            answer = await client.post(server.url(), SET, HEADERS)
            assert (answer.status, answer.body) == (400, ERROR_JSON)
            second = await client.post(server.url(), SET, HEADERS)
            assert (second.status, second.body) == (400, ERROR_JSON)
        assert server.connections == 2

    run(scenario)


@pytest.mark.parametrize(
    "interim",
    [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nLocation: /no\r\n\r\n",
    ],
)
@pytest.mark.parametrize("separately", [False, True])
def test_interim_answers_are_skipped(interim: bytes, separately: bool) -> None:
    async def interim_then_final(conn: Conn) -> None:
        for _ in range(2):
            await conn.request()
            if separately:
                await conn.send(interim, ACCEPTED, pause=0.02)
            else:
                await conn.send(interim + ACCEPTED)
        await conn.until_eof()

    async def scenario() -> None:
        async with raw_server(interim_then_final) as server, PushClient(LOCAL) as client:
            for _ in range(2):
                answer = await client.post(server.url(), SET, HEADERS)
                assert answer == PushAnswer(status=202, reason="Accepted")
        assert server.connections == 1

    run(scenario)


def test_retry_after_location_and_reason_are_surfaced_verbatim() -> None:
    answers = [
        b"HTTP/1.1 503 Slow Down, Please\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 307 Temporary Redirect\r\nLOCATION: https://other.example/in?x=1&y=%20\r\n"
        b"Content-Length: 0\r\n\r\n",
        ACCEPTED,
    ]

    async def scenario() -> list[PushAnswer]:
        async with raw_server(answering(*answers)) as server, PushClient(LOCAL) as client:
            return [await client.post(server.url(), SET, HEADERS) for _ in answers]

    assert asyncio.run(scenario()) == [
        PushAnswer(503, "Slow Down, Please", retry_after="120"),
        PushAnswer(429, "Too Many Requests", retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),
        PushAnswer(307, "Temporary Redirect", location="https://other.example/in?x=1&y=%20"),
        PushAnswer(202, "Accepted"),
    ]


def test_an_answer_arriving_a_few_bytes_at_a_time_is_parsed() -> None:
    answer_bytes = (
        b"HTTP/1.1 400 Bad Request\r\nRetry-After: 30\r\nLocation: https://r.example/x\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(ERROR_JSON), ERROR_JSON)
    )

    async def dribble(conn: Conn) -> None:
        await conn.request()
        pieces = [answer_bytes[i : i + 3] for i in range(0, len(answer_bytes), 3)]
        await conn.send(*pieces, pause=0.001)
        await conn.until_eof()

    answer = asyncio.run(post_once(dribble))
    assert answer == PushAnswer(
        400, "Bad Request", ERROR_JSON, retry_after="30", location="https://r.example/x"
    )


# -- what is not HTTP ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer_bytes", "message"),
    [
        (b"hello\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 202 Acc", "mid-answer"),  # then the receiver closes, mid-headers
        (b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", "not valid HTTP"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "upgrade",
        ),
        (b"HTTP/1.1 400 Bad\r\nX-Pad: " + b"a" * MAX_ANSWER_HEAD + b"\r\n\r\n", "exceeds"),
    ],
    ids=["garbage", "closed-mid-headers", "bad-status", "upgrade", "head-too-large"],
)
def test_an_answer_that_is_not_http_1_x_is_a_protocol_error(
    answer_bytes: bytes, message: str
) -> None:
    async def bad(conn: Conn) -> None:
        await conn.request()
        await conn.send(answer_bytes)

    async def scenario() -> None:
        async with raw_server(bad) as server, PushClient(LOCAL) as client:
            with pytest.raises(PushProtocolError, match=message):
                await client.post(server.url(), SET, HEADERS)
        assert server.connections == 1

    run(scenario)


# -- timeouts and connection failures ------------------------------------------------------------


def test_a_receiver_that_never_answers_hits_the_total_timeout() -> None:
    async def silent(conn: Conn) -> None:
        await conn.request()
        await conn.until_eof()

    async def scenario() -> None:
        async with raw_server(silent) as server, PushClient(LOCAL, total_timeout=0.3) as client:
            started = time.monotonic()
            with pytest.raises(PushTimeout) as expired:
                await client.post(server.url(), SET, HEADERS)
            assert 0.25 < time.monotonic() - started < 2.0
            await server.wait_eof(0)  # the out-of-step connection was dropped
        assert (expired.value.phase, expired.value.seconds) == ("total", 0.3)
        assert isinstance(expired.value, TimeoutError)
        assert server.bodies == [SET]

    run(scenario)


class SlowResolver(AbstractResolver):
    """A resolver that takes ``delay`` seconds to answer 127.0.0.1."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        await asyncio.sleep(self.delay)
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        pass


def test_a_slow_lookup_hits_the_connect_timeout() -> None:
    async def scenario() -> None:
        async with (
            raw_server(answering(ACCEPTED)) as server,
            PushClient(
                LOCAL, connect_timeout=0.2, total_timeout=5.0, resolver=SlowResolver(3.0)
            ) as client,
        ):
            started = time.monotonic()
            with pytest.raises(PushTimeout) as expired:
                await client.post(f"http://slow.example.com:{server.port}/", SET, HEADERS)
            assert time.monotonic() - started < 1.0
        assert (expired.value.phase, expired.value.seconds) == ("connect", 0.2)
        assert server.connections == 0

    run(scenario)


def test_a_tls_handshake_that_never_completes_hits_the_connect_timeout() -> None:
    async def silent(conn: Conn) -> None:
        await conn.reader.read()  # the ClientHello, then nothing
        conn.server.eof[conn.index].set()

    async def scenario() -> None:
        async with (
            raw_server(silent) as server,
            PushClient(LOCAL, connect_timeout=0.3, total_timeout=5.0) as client,
        ):
            with pytest.raises(PushTimeout) as expired:
                await client.post(server.url(scheme="https"), SET, HEADERS)
            await server.wait_eof(0)
        assert expired.value.phase == "connect"
        assert server.requests == []

    run(scenario)


def test_a_refused_connection_is_a_connect_error() -> None:
    async def scenario() -> None:
        async with PushClient(LOCAL) as client:
            with pytest.raises(PushConnectError, match=r"127\.0\.0\.1: Connection refused"):
                await client.post(f"http://127.0.0.1:{refused_port()}/events", SET, HEADERS)

    run(scenario)


# -- TLS -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate (PEM)
    cert: Path  # the receiver's certificate: localhost, receiver.example.com, 127.0.0.1
    key: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push client test CA")])
    usage = dict.fromkeys(
        (
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names = [
        x509.DNSName("localhost"),
        x509.DNSName("receiver.example.com"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = Pki(ca=directory / "ca.pem", cert=directory / "cert.pem", key=directory / "key.pem")
    paths.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@dataclass
class TlsReceiver:
    port: int = 0
    hits: list[str] = field(default_factory=list)  # Host headers of requests handled
    sni: list[str | None] = field(default_factory=list)  # server names of TLS handshakes


@asynccontextmanager
async def tls_receiver(pki: Pki) -> AsyncIterator[TlsReceiver]:
    state = TlsReceiver()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)

    def record_sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        state.sni.append(name)

    context.sni_callback = record_sni

    async def events(request: web.Request) -> web.Response:
        state.hits.append(request.headers.get("Host", ""))
        assert await request.read() == SET
        return web.Response(status=202)

    app = web.Application()
    app.router.add_post("/events", events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        state.port = runner.addresses[0][1]
        yield state
    finally:
        await runner.cleanup()


def test_tls_with_a_trusted_ca_delivers_and_names_the_url_host(pki: Pki) -> None:
    async def scenario() -> None:
        trusting = ssl.create_default_context(cafile=str(pki.ca))
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.1"]]})
        async with (
            tls_receiver(pki) as receiver,
            PushClient(LOCAL, ssl_context=trusting, resolver=resolver) as client,
        ):
            by_ip = f"https://127.0.0.1:{receiver.port}/events"
            by_name = f"https://receiver.example.com:{receiver.port}/events"
            assert (await client.post(by_ip, SET, HEADERS)).status == 202
            assert (await client.post(by_ip, SET, HEADERS)).status == 202  # kept alive
            assert (await client.post(by_name, SET, HEADERS)).status == 202
        assert receiver.hits == [
            f"127.0.0.1:{receiver.port}",
            f"127.0.0.1:{receiver.port}",
            f"receiver.example.com:{receiver.port}",
        ]
        # two handshakes; no SNI for an IP address, the URL's host name otherwise
        assert receiver.sni == [None, "receiver.example.com"]

    run(scenario)


def test_tls_with_an_untrusted_certificate_is_a_connect_error(pki: Pki) -> None:
    async def scenario() -> None:
        async with tls_receiver(pki) as receiver, PushClient(LOCAL) as client:
            url = f"https://127.0.0.1:{receiver.port}/events"
            with pytest.raises(
                PushConnectError, match="TLS: unable to get local issuer certificate"
            ):
                await client.post(url, SET, HEADERS)
        assert receiver.hits == []  # the handler never ran

    run(scenario)


def test_tls_with_a_certificate_for_another_name_is_a_connect_error(pki: Pki) -> None:
    async def scenario() -> None:
        trusting = ssl.create_default_context(cafile=str(pki.ca))
        resolver = ScriptedResolver({"impostor.example.net": [["127.0.0.1"]]})
        async with (
            tls_receiver(pki) as receiver,
            PushClient(LOCAL, ssl_context=trusting, resolver=resolver) as client,
        ):
            url = f"https://impostor.example.net:{receiver.port}/events"
            with pytest.raises(PushConnectError, match="TLS: Hostname mismatch"):
                await client.post(url, SET, HEADERS)
        assert receiver.hits == []
        assert receiver.sni == ["impostor.example.net"]

    run(scenario)


# -- where answers end, and closing mid-request -------------------------------------------------


@pytest.mark.parametrize("status", [202, 400])
def test_a_small_head_followed_by_a_large_body_in_one_read_is_an_answer(status: int) -> None:
    body = b"x" * (MAX_ANSWER_HEAD + 1_000)
    whole = b"HTTP/1.1 %d Whatever\r\nContent-Length: %d\r\n\r\n%s" % (status, len(body), body)

    answer = asyncio.run(post_once(answering(whole)))
    assert answer.status == status
    assert answer.body == (b"" if status == 202 else body[:MAX_ANSWER_BODY])


@pytest.mark.parametrize(
    "cut_short",
    [
        b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n%s"
        % (len(ERROR_JSON), ERROR_JSON[:20]),
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["content-length", "chunked"],
)
def test_an_answer_cut_short_by_the_close_is_a_protocol_error(cut_short: bytes) -> None:
    async def cut(conn: Conn) -> None:
        await conn.request()
        await conn.send(cut_short)

    async def scenario() -> None:
        async with raw_server(cut) as server, PushClient(LOCAL) as client:
            with pytest.raises(PushProtocolError, match="mid-answer"):
                await client.post(server.url(), SET, HEADERS)

    run(scenario)


def test_bytes_after_the_answer_in_the_same_read_retire_the_connection() -> None:
    async def answer_and_more(conn: Conn) -> None:
        await conn.request()
        await conn.send(ACCEPTED + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        await conn.until_eof()

    async def scenario() -> None:
        async with raw_server(answer_and_more) as server, PushClient(LOCAL) as client:
            assert (await client.post(server.url(), SET, HEADERS)).status == 202
            await server.wait_eof(0, timeout=0.5)

    run(scenario)


def test_close_during_a_post_fails_it_and_closes_its_connection() -> None:
    async def scenario() -> None:
        release = asyncio.Event()

        async def answer_when_released(conn: Conn) -> None:
            await conn.request()
            await release.wait()
            await conn.until_eof()

        async with raw_server(answer_when_released) as server:
            client = PushClient(LOCAL)
            posting = asyncio.create_task(client.post(server.url(), SET, HEADERS))
            while not server.requests:
                await asyncio.sleep(0.01)
            await client.close()
            release.set()
            with pytest.raises(PushProtocolError):
                await posting
            await server.wait_eof(0, timeout=2.0)
            with pytest.raises(RuntimeError, match="closed"):
                await client.post(server.url(), SET, HEADERS)

    run(scenario)
