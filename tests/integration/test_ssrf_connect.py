"""The SSRF guard at connect time, on real loopback sockets.

A real ``aiohttp`` server on 127.0.0.1 plays the receiver and records every request it gets; the
guarded session pushes to it. Names resolve through :class:`ScriptedResolver` (a real
``AbstractResolver``), never through public DNS: nothing here leaves loopback.

Every refusal is shown two ways: the error the caller sees, and a receiver that got nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from mission_ledger.ssf.ssrf import (
    BlockedPushConnection,
    ForbiddenPushTarget,
    PushRedirectRefused,
    PushTargetPolicy,
    guarded_session,
    resolve_and_check,
)
from tests.unit.test_ssrf import PUBLIC_V4, ScriptedResolver

LOCAL = PushTargetPolicy(allow_insecure=True, allow_private=True)  # the demo's flags
PUBLIC_ONLY = PushTargetPolicy(allow_insecure=True, allow_private=False)
SET = b"eyJ0eXAiOiJzZWNldmVudCtqd3QifQ.e30.c2ln"
HEADERS = {"Content-Type": "application/secevent+jwt", "Accept": "application/json"}


@dataclass
class Receiver:
    """A loopback push receiver: ``/events`` answers 202, ``/moved?to=URL`` answers 302."""

    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)

    def url(self, path: str = "/events", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(port=0)

    async def events(request: web.Request) -> web.Response:
        state.hits.append((request.path, request.headers.get("Host", "")))
        await request.read()
        return web.Response(status=202)

    async def moved(request: web.Request) -> web.Response:
        state.hits.append((request.path, request.headers.get("Host", "")))
        raise web.HTTPFound(request.query["to"])

    app = web.Application()
    app.router.add_post("/events", events)
    app.router.add_post("/moved", moved)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        state.port = runner.addresses[0][1]
        yield state
    finally:
        await runner.cleanup()


def run(scenario: Callable[[Receiver], Awaitable[None]]) -> None:
    async def main() -> None:
        async with receiver() as target:
            await scenario(target)

    asyncio.run(main())


async def push(session: aiohttp.ClientSession, url: str, **kwargs: object) -> int:
    async with session.post(url, data=SET, headers=HEADERS, **kwargs) as response:  # type: ignore[arg-type]
        return response.status


# -- IP literals: aiohttp connects to them without asking the resolver ---------------------------


def test_an_ip_literal_url_is_checked_even_though_no_resolver_is_asked() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({})
        async with guarded_session(PUBLIC_ONLY, resolver=resolver) as session:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(session, target.url())
        assert refused.value.reason == "loopback"
        assert target.hits == []
        async with guarded_session(LOCAL, resolver=resolver) as session:
            assert await push(session, target.url()) == 202
        assert target.hits == [("/events", f"127.0.0.1:{target.port}")]
        assert resolver.calls == []  # literals never reach the resolver

    run(scenario)


@pytest.mark.parametrize(
    "host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]"]
)
def test_ipv6_literals_embedding_loopback_are_refused(host: str) -> None:
    async def scenario(target: Receiver) -> None:
        async with guarded_session(PUBLIC_ONLY) as session:
            with pytest.raises(ForbiddenPushTarget):
                await push(session, target.url(host=host))
        assert target.hits == []

    run(scenario)


def test_the_socket_factory_refuses_even_a_request_that_skips_the_middleware() -> None:
    async def scenario(target: Receiver) -> None:
        async with guarded_session(PUBLIC_ONLY) as session:
            with pytest.raises(aiohttp.ClientConnectorError) as refused:
                await push(session, target.url(), middlewares=())
        assert isinstance(refused.value.os_error, BlockedPushConnection)
        assert "loopback" in str(refused.value)
        assert target.hits == []

    run(scenario)


def test_http_is_refused_at_connect_time_unless_allowed() -> None:
    async def scenario(target: Receiver) -> None:
        async with guarded_session(PushTargetPolicy(allow_private=True)) as session:
            with pytest.raises(ForbiddenPushTarget, match="allow-insecure-push"):
                await push(session, target.url())
        assert target.hits == []

    run(scenario)


# -- names: the answer checked is the answer connected to ------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.1"]]})
        url = target.url(host="receiver.example.com")
        async with guarded_session(PUBLIC_ONLY, resolver=resolver) as session:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(session, url)
        assert (refused.value.host, refused.value.address) == ("receiver.example.com", "127.0.0.1")
        assert target.hits == []
        async with guarded_session(LOCAL, resolver=resolver) as session:
            assert await push(session, url) == 202
        assert target.hits == [("/events", f"receiver.example.com:{target.port}")]

    run(scenario)


def test_dns_rebinding_between_check_and_connect_is_refused() -> None:
    """The name passes the registration check with a public answer, then answers 127.0.0.1.

    The guarded session does not trust the earlier check: it resolves through its own guarded
    resolver and connects only to what that resolver checked, so the rebound answer is refused
    and the loopback receiver is never reached.
    """

    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
        url = target.url(host="rebind.example.com")
        checked = await resolve_and_check("rebind.example.com", target.port, PUBLIC_ONLY, resolver)
        assert checked == [PUBLIC_V4]  # the registration check passed
        async with guarded_session(PUBLIC_ONLY, resolver=resolver) as session:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(session, url)
        assert refused.value.address == "127.0.0.1"
        assert [call[0] for call in resolver.calls] == ["rebind.example.com"] * 2
        assert target.hits == []

    run(scenario)


def test_the_session_connects_to_the_address_its_own_resolver_checked() -> None:
    """With private targets allowed, the same rebinding script reaches the loopback receiver:
    the connection went to the second (connect-time) answer, the one the guard checked, and not
    to the public address of the earlier check."""

    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
        await resolve_and_check("rebind.example.com", target.port, LOCAL, resolver)
        async with guarded_session(LOCAL, resolver=resolver) as session:
            assert await push(session, target.url(host="rebind.example.com")) == 202
            assert await push(session, target.url(host="rebind.example.com")) == 202
        assert len(target.hits) == 2
        assert len(resolver.calls) == 2  # one check, one connect-time lookup (then cached)

    run(scenario)


def test_a_mixed_answer_is_refused_at_connect_time() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"mixed.example.com": [[PUBLIC_V4, "127.0.0.1"]]})
        async with guarded_session(PUBLIC_ONLY, resolver=resolver) as session:
            with pytest.raises(ForbiddenPushTarget, match=r"127\.0\.0\.1"):
                await push(session, target.url(host="mixed.example.com"))
        assert target.hits == []

    run(scenario)


def test_a_name_that_does_not_resolve_is_a_dns_error() -> None:
    async def scenario(target: Receiver) -> None:
        async with guarded_session(LOCAL, resolver=ScriptedResolver({})) as session:
            with pytest.raises(aiohttp.ClientConnectorDNSError):
                await push(session, target.url(host="missing.example.com"))
        assert target.hits == []

    run(scenario)


# -- redirects are never followed ----------------------------------------------------------------


@pytest.mark.parametrize("allow_redirects", [False, True])
def test_a_redirect_to_the_metadata_service_is_not_followed(allow_redirects: bool) -> None:
    """Even with private targets allowed (so 169.254.169.254 would pass the address check) and
    even if a caller forgets ``allow_redirects=False``, the 302 is a failure and the session
    never connects to the Location."""

    async def scenario(target: Receiver) -> None:
        location = "http://169.254.169.254/latest/meta-data/"
        url = target.url(f"/moved?to={location}")
        async with guarded_session(LOCAL) as session:
            with pytest.raises(PushRedirectRefused) as refused:
                await push(session, url, allow_redirects=allow_redirects)
        assert refused.value.status == 302
        assert refused.value.location == location
        assert isinstance(refused.value, aiohttp.ClientResponseError)
        assert target.hits == [("/moved", f"127.0.0.1:{target.port}")]

    run(scenario)


@pytest.mark.parametrize("allow_redirects", [False, True])
def test_a_redirect_to_another_reachable_server_is_not_followed(allow_redirects: bool) -> None:
    async def scenario(target: Receiver) -> None:
        async with receiver() as other:
            url = target.url(f"/moved?to={other.url()}")
            async with guarded_session(LOCAL) as session:
                with pytest.raises(PushRedirectRefused):
                    await push(session, url, allow_redirects=allow_redirects)
            assert other.hits == []  # the Location was never requested
        assert [path for path, _host in target.hits] == ["/moved"]

    run(scenario)
