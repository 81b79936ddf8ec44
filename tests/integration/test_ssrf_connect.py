"""The SSRF guard at connect time, on real loopback sockets.

A real ``aiohttp`` server on 127.0.0.1 plays the receiver and records every request it gets; the
push deliverer's :class:`~mission_ledger.ssf.push_client.PushClient` pushes to it. Names resolve
through :class:`ScriptedResolver` (a real ``AbstractResolver``), never through public DNS:
nothing here leaves loopback.

Every refusal is shown two ways: the error the caller sees, and a receiver that got nothing.
The HTTP/1.1 behaviour of the client itself (request bytes, keep-alive, answers, timeouts, TLS)
is tested in ``test_push_client.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from mission_ledger.ssf import push_client
from mission_ledger.ssf.push_client import PushClient, PushConnectError
from mission_ledger.ssf.ssrf import (
    ForbiddenPushTarget,
    PushTargetPolicy,
    is_forbidden_address,
    resolve_and_check,
)
from tests.unit.test_ssrf import PUBLIC_V4, ScriptedResolver

LOCAL = PushTargetPolicy(allow_insecure=True, allow_private=True)  # the demo's flags
PUBLIC_ONLY = PushTargetPolicy(allow_insecure=True, allow_private=False)
SET = b"eyJ0eXAiOiJzZWNldmVudCtqd3QifQ.e30.c2ln"
HEADERS = [("Content-Type", "application/secevent+jwt"), ("Accept", "application/json")]


@dataclass
class Receiver:
    """A loopback push receiver: ``/events`` answers 202, ``/moved?to=URL`` answers 302."""

    port: int
    hits: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    peers: set[tuple[str, int]] = field(default_factory=set)  # client (address, port) seen

    def url(self, path: str = "/events", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver(port=0)

    def record(request: web.Request) -> None:
        state.hits.append((request.path, request.headers.get("Host", "")))
        peer = request.transport.get_extra_info("peername") if request.transport else None
        if peer is not None:
            state.peers.add((peer[0], peer[1]))

    async def events(request: web.Request) -> web.Response:
        record(request)
        await request.read()
        return web.Response(status=202)

    async def moved(request: web.Request) -> web.Response:
        record(request)
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


async def push(client: PushClient, url: str) -> int:
    answer = await client.post(url, SET, HEADERS)
    return answer.status


# -- IP literals: checked from the URL, without asking the resolver -------------------------------


def test_an_ip_literal_url_is_checked_even_though_no_resolver_is_asked() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({})
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(client, target.url())
        assert refused.value.reason == "loopback"
        assert target.hits == []
        async with PushClient(LOCAL, resolver=resolver) as client:
            assert await push(client, target.url()) == 202
        assert target.hits == [("/events", f"127.0.0.1:{target.port}")]
        assert resolver.calls == []  # literals never reach the resolver

    run(scenario)


@pytest.mark.parametrize(
    "host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::127.0.0.1]", "[2002:7f00:1::]"]
)
def test_ipv6_literals_embedding_loopback_are_refused(host: str) -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({})
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget):
                await push(client, target.url(host=host))
        assert target.hits == []
        assert resolver.calls == []

    run(scenario)


def test_http_is_refused_at_connect_time_unless_allowed() -> None:
    async def scenario(target: Receiver) -> None:
        async with PushClient(PushTargetPolicy(allow_private=True)) as client:
            with pytest.raises(ForbiddenPushTarget, match="allow-insecure-push"):
                await push(client, target.url())
        assert target.hits == []

    run(scenario)


# -- every address is checked, whatever path it comes by -----------------------------------------


def test_every_address_is_checked_literal_or_resolved() -> None:
    """The policy is applied to each address the client would connect to: an IPv4-mapped
    loopback literal (no lookup at all) and a name whose only address is loopback are both
    refused, with the reason :func:`is_forbidden_address` gives."""

    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.1"]]})
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget) as literal:
                await push(client, target.url(host="[::ffff:127.0.0.1]"))
            with pytest.raises(ForbiddenPushTarget) as resolved:
                await push(client, target.url(host="receiver.example.com"))
        assert literal.value.reason == is_forbidden_address("::ffff:127.0.0.1", PUBLIC_ONLY)
        assert literal.value.reason == "IPv4-mapped loopback"
        assert resolved.value.reason == is_forbidden_address("127.0.0.1", PUBLIC_ONLY)
        assert resolved.value.reason == "loopback"
        assert resolved.value.address == "127.0.0.1"
        assert [call[0] for call in resolver.calls] == ["receiver.example.com"]
        assert target.hits == []

    run(scenario)


def test_each_address_is_checked_again_before_its_connect_and_the_peer_after(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With an answer of two addresses where the first refuses the connection, the client
    checks the first, fails over to the second, checks it, and checks the connected peer."""
    checked: list[str] = []

    def spy(ip: str, policy: PushTargetPolicy | None = None) -> str | None:
        checked.append(str(ip))
        return is_forbidden_address(ip, policy)

    monkeypatch.setattr(push_client, "is_forbidden_address", spy)

    async def scenario(target: Receiver) -> None:
        # the receiver listens on 127.0.0.1 only: 127.0.0.2 on its port refuses the connection
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.2", "127.0.0.1"]]})
        async with PushClient(LOCAL, resolver=resolver) as client:
            assert await push(client, target.url(host="receiver.example.com")) == 202
        assert checked == ["127.0.0.2", "127.0.0.1", "127.0.0.1"]
        assert {address for address, _port in target.peers} == {"127.0.0.1"}

    run(scenario)


# -- names: the answer checked is the answer connected to ------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_at_connect_time() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"receiver.example.com": [["127.0.0.1"]]})
        url = target.url(host="receiver.example.com")
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(client, url)
        assert (refused.value.host, refused.value.address) == ("receiver.example.com", "127.0.0.1")
        assert target.hits == []
        async with PushClient(LOCAL, resolver=resolver) as client:
            assert await push(client, url) == 202
        assert target.hits == [("/events", f"receiver.example.com:{target.port}")]

    run(scenario)


def test_dns_rebinding_between_check_and_connect_is_refused() -> None:
    """The name passes the registration check with a public answer, then answers 127.0.0.1.

    The client does not trust the earlier check: it resolves through its own guarded resolver
    and connects only to what that resolver checked, so the rebound answer is refused and the
    loopback receiver is never reached.
    """

    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
        url = target.url(host="rebind.example.com")
        checked = await resolve_and_check("rebind.example.com", target.port, PUBLIC_ONLY, resolver)
        assert checked == [PUBLIC_V4]  # the registration check passed
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget) as refused:
                await push(client, url)
        assert refused.value.address == "127.0.0.1"
        assert [call[0] for call in resolver.calls] == ["rebind.example.com"] * 2
        assert target.hits == []

    run(scenario)


def test_the_client_connects_to_the_address_its_own_resolver_checked() -> None:
    """With private targets allowed, the same rebinding script reaches the loopback receiver:
    the connection went to the second (connect-time) answer, the one the guard checked, and not
    to the public address of the earlier check. The second push reuses the kept-alive
    connection, so there is no third lookup."""

    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"rebind.example.com": [[PUBLIC_V4], ["127.0.0.1"]]})
        await resolve_and_check("rebind.example.com", target.port, LOCAL, resolver)
        async with PushClient(LOCAL, resolver=resolver) as client:
            assert await push(client, target.url(host="rebind.example.com")) == 202
            assert await push(client, target.url(host="rebind.example.com")) == 202
        assert len(target.hits) == 2
        assert len(target.peers) == 1  # one connection, kept alive
        assert len(resolver.calls) == 2  # one check, one connect-time lookup

    run(scenario)


def test_a_mixed_answer_is_refused_at_connect_time() -> None:
    async def scenario(target: Receiver) -> None:
        resolver = ScriptedResolver({"mixed.example.com": [[PUBLIC_V4, "127.0.0.1"]]})
        async with PushClient(PUBLIC_ONLY, resolver=resolver) as client:
            with pytest.raises(ForbiddenPushTarget, match=r"127\.0\.0\.1"):
                await push(client, target.url(host="mixed.example.com"))
        assert target.hits == []

    run(scenario)


def test_a_name_that_does_not_resolve_is_a_connect_error() -> None:
    async def scenario(target: Receiver) -> None:
        async with PushClient(LOCAL, resolver=ScriptedResolver({})) as client:
            with pytest.raises(PushConnectError, match=r"missing\.example\.com"):
                await push(client, target.url(host="missing.example.com"))
        assert target.hits == []

    run(scenario)


# -- redirects are never followed ----------------------------------------------------------------


def test_a_redirect_to_the_metadata_service_is_not_followed() -> None:
    """Even with private targets allowed (so 169.254.169.254 would pass the address check), the
    client returns the 302 as the answer and never connects to the Location."""

    async def scenario(target: Receiver) -> None:
        location = "http://169.254.169.254/latest/meta-data/"
        url = target.url(f"/moved?to={location}")
        async with PushClient(LOCAL) as client:
            answer = await client.post(url, SET, HEADERS)
        assert answer.status == 302
        assert answer.location == location
        assert target.hits == [("/moved", f"127.0.0.1:{target.port}")]

    run(scenario)


def test_a_redirect_to_another_reachable_server_is_not_followed() -> None:
    async def scenario(target: Receiver) -> None:
        async with receiver() as other:
            url = target.url(f"/moved?to={other.url()}")
            async with PushClient(LOCAL) as client:
                answer = await client.post(url, SET, HEADERS)
            assert (answer.status, answer.location) == (302, other.url())
            assert other.hits == []  # the Location was never requested
        assert [path for path, _host in target.hits] == ["/moved"]

    run(scenario)
