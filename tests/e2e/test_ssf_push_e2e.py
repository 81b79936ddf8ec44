"""SSF push delivery (RFC 8935) end to end, through the real server process.

The server runs with ``--allow-insecure-push --allow-private-push-targets`` (its receivers are on
http://127.0.0.1) and retry schedules of milliseconds. Receivers create push streams through the
SSF API (:class:`tests.e2e.ssf_receiver.Receiver`), Missions and verification requests go
through the API, and an aiohttp endpoint in the test verifies every pushed SET as a receiver
must (signature against the served JWKS, ``typ``, ``iss``, ``aud``, the profile's schemas)
while misbehaving on purpose: refusing connections, 500, 429, a 400 ``invalid_request``, hanging
while the transmitter is SIGKILLed, the PostgreSQL sessions dropped under it.

Every test checks (:meth:`Endpoint.check`) that nothing is lost and nothing is delivered twice
under different jtis: each jti received stands for exactly one expected SET (a Mission version
by its ledger event id, or a verification by its ``state``), each expected SET arrives, and the
first arrivals come in ledger order. No timing assertions: waits are bounded generously.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web

from mission_ledger.config import Settings
from mission_ledger.ssf.outbox_store import OutboxStore
from tests.e2e.conftest import SSF_ISSUER, Server, ssf_principals, start_server
from tests.e2e.ssf_receiver import (
    PROFILE_TYPE,
    PUSH,
    VERIFICATION,
    WAIT,
    ReceivedSet,
    Receiver,
    history,
)
from tests.e2e.test_http_api import Client, _mission, run
from tests.pgtarget import PgTarget

PUSH_FLAGS = (
    "--issuer",
    SSF_ISSUER,
    "--allow-insecure-push",
    "--allow-private-push-targets",
    "--min-verification-interval",
    "0",
    "--push-retry",
    "0.01,0.05,1000",
    "--push-slow-retry",
    "0.01,0.05,3",
    "--push-timeout",
    "5",
)
Key = tuple[str, ...]  # ("mission", mission_id, version) or ("verify", state)


# -- the receiving end ----------------------------------------------------------------------------


def _unverified_jti(token: str) -> str:
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


@dataclass
class Arrival:
    """One push request, its SET verified."""

    key: Key
    item: ReceivedSet
    authorization: str | None
    content_type: str | None


Behaviour = Callable[[Arrival, int], Awaitable[web.StreamResponse]]


async def accept(arrival: Arrival, nth: int) -> web.StreamResponse:
    return web.Response(status=202)


@dataclass
class Endpoint:
    """The receiver's push endpoint: one URL per stream (``/push/{name}``), SETs verified by
    ``receiver``; ``behaviour(arrival, nth)`` answers (``nth``: arrivals of this jti so far)."""

    receiver: Receiver
    behaviour: Behaviour = accept
    arrivals: dict[str, list[Arrival]] = field(default_factory=dict)
    streams: dict[str, str] = field(default_factory=dict)  # name → stream_id
    expected: dict[str, list[Key]] = field(default_factory=dict)  # name → keys in ledger order
    txns: dict[str, Key] = field(default_factory=dict)  # Mission event id → key
    rejected: list[str] = field(default_factory=list)  # SETs that failed verification
    port: int = 0
    _runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> Endpoint:
        app = web.Application()
        app.router.add_post("/push/{name}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def url(self, name: str, port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/push/{name}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        token = (await request.read()).decode()
        try:
            item = self.receiver.verify(self.streams[name], _unverified_jti(token), token)
        except (AssertionError, KeyError, ValueError) as error:  # a SET we must refuse
            self.rejected.append(f"{name}: {error!r}")
            return web.json_response({"err": "invalid_request", "description": "bad"}, status=400)
        if item.event_type == VERIFICATION:
            key: Key = ("verify", str(item.event.get("state")))
        else:
            key = ("mission", str(item.subject_id), str(item.event["version"]))
        arrival = Arrival(
            key, item, request.headers.get("Authorization"), request.headers.get("Content-Type")
        )
        arrivals = self.arrivals.setdefault(name, [])
        arrivals.append(arrival)
        return await self.behaviour(arrival, sum(1 for a in arrivals if a.item.jti == item.jti))

    async def create(self, name: str, events: list[str], **delivery: Any) -> str:
        config = await self.receiver.create(
            {
                "events_requested": events,
                "delivery": {"method": PUSH, "endpoint_url": self.url(name), **delivery},
            }
        )
        assert config["delivery"]["endpoint_url"] == self.url(name)
        self.streams[name] = config["stream_id"]
        self.expected[name] = []
        return str(config["stream_id"])

    async def verification(self, name: str, state: str) -> None:
        reply = await self.receiver.call(
            "POST",
            self.receiver.endpoint("verification_endpoint"),
            {"stream_id": self.streams[name], "state": state},
        )
        assert reply.status == 204, reply.text
        self.expected[name].append(("verify", state))

    async def mission_events(self, client: Client, mission_id: str, *names: str) -> None:
        """Expect the Mission's events not seen yet, on ``names``, in version order."""
        for event in await history(client, mission_id):
            key: Key = ("mission", mission_id, str(event["version"]))
            if event["event_id"] in self.txns:
                continue
            self.txns[event["event_id"]] = key
            for name in names:
                self.expected[name].append(key)

    def got(self, name: str) -> set[Key]:
        return {a.key for a in self.arrivals.get(name, [])}

    def complete(self, *names: str) -> bool:
        return all(set(self.expected[n]) <= self.got(n) for n in names)

    def check(self, name: str) -> None:
        """Nothing lost, nothing twice under another jti, first arrivals in ledger order."""
        assert self.rejected == []
        arrivals = self.arrivals.get(name, [])
        by_jti: dict[str, Key] = {}
        by_key: dict[Key, str] = {}
        for arrival in arrivals:
            jti = arrival.item.jti
            assert by_jti.setdefault(jti, arrival.key) == arrival.key, jti
            assert by_key.setdefault(arrival.key, jti) == jti, f"{arrival.key} under two jtis"
            if arrival.key[0] == "mission":
                assert self.txns[arrival.item.claims["txn"]] == arrival.key
                assert arrival.item.event_type in PROFILE_TYPE.values()
        first = list(dict.fromkeys(a.key for a in arrivals))
        assert first == self.expected[name]


async def until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.05)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _cli(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_LEDGER_")}
    return subprocess.run(
        [sys.executable, "-m", "mission_ledger", *args, *server.storage],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def _queue(settings: Settings, stream_id: str) -> dict[str, Any]:
    """The stream's delivery figures, read from the running server's store."""
    with OutboxStore.open(settings, pool_size=1) as store:
        return store.stream_stats(stream_id, datetime.now(UTC))


MISSION_TYPES = list(PROFILE_TYPE.values())


def _restart(old: Server, tmp: Path) -> Server:
    """Start the server again on the same store (after a SIGKILL), with the same tokens."""
    server = start_server(tmp, old.storage, *PUSH_FLAGS)
    server.tokens.update(old.tokens)
    return server


# -- SQLite ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def push_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("push-server")
    server = start_server(tmp, ["--data", str(tmp / "var")], *PUSH_FLAGS)
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(ssf_principals())
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def _settings(server: Server) -> Settings:
    storage = server.storage
    if storage[0] == "--data":
        return Settings(data_dir=Path(storage[1]))
    return Settings(database_url=storage[1])


def test_refused_500_and_429_then_everything_arrives_in_order_with_the_header(
    push_server: Server,
) -> None:
    answers: dict[str, int] = {"count": 0}

    async def flaky(arrival: Arrival, nth: int) -> web.StreamResponse:
        answers["count"] += 1
        if answers["count"] == 1:
            return web.Response(status=500)
        if answers["count"] == 2:
            return web.Response(status=429, headers={"Retry-After": "1"})
        return web.Response(status=202)

    async def scenario(c: Client) -> None:
        receiver = Receiver(c, "receiver", SSF_ISSUER)
        await receiver.discover()
        port = _free_port()  # the endpoint is down at first: connections are refused
        endpoint = Endpoint(receiver, flaky)
        endpoint.port = port
        secret = "Bearer e2e-push-secret"
        stream_id = await endpoint.create("secured", MISSION_TYPES, authorization_header=secret)
        await endpoint.create("plain", MISSION_TYPES)
        await endpoint.verification("secured", "s1")
        first = await _mission(c)
        await endpoint.mission_events(c, first, "secured", "plain")
        for name in ("suspend", "resume"):
            reply = await c.post(f"/missions/{first}/{name}", {}, as_="operator")
            assert reply.status == 200, reply.text
        await endpoint.mission_events(c, first, "secured", "plain")
        second = await _mission(c)
        await endpoint.mission_events(c, second, "secured", "plain")
        await endpoint.verification("secured", "s2")
        settings = _settings(push_server)
        await until(
            lambda: _queue(settings, stream_id)["head_attempts"] >= 2, "refused connections"
        )
        assert "cannot connect" in _queue(settings, stream_id)["head_last_error"]
        await endpoint.start(port)
        try:
            await until(lambda: endpoint.complete("secured", "plain"), "every SET")
        finally:
            await endpoint.stop()
        endpoint.check("secured")
        endpoint.check("plain")
        assert {a.authorization for a in endpoint.arrivals["secured"]} == {secret}
        assert {a.authorization for a in endpoint.arrivals["plain"]} == {None}
        assert {a.content_type for a in endpoint.arrivals["plain"]} == {"application/secevent+jwt"}
        assert len(endpoint.expected["secured"]) == 6  # 4 Mission events + 2 verifications

    run(push_server, scenario)


def test_a_revocation_to_more_streams_than_a_signing_chunk_reaches_all_in_order(
    push_server: Server,
) -> None:
    """24 streams: each Mission event is one outbox page of 24 SETs, of which 16 are signed
    before the page commits and 8 after it (handed to the deliverer, then stored)."""

    async def scenario(c: Client) -> None:
        receiver = Receiver(c, "receiver", SSF_ISSUER)
        await receiver.discover()
        endpoint = await Endpoint(receiver).start()
        names = [f"many{n}" for n in range(24)]
        try:
            for name in names:
                await endpoint.create(name, MISSION_TYPES)
            mission = await _mission(c)
            for name in ("suspend", "resume", "revoke"):
                reply = await c.post(f"/missions/{mission}/{name}", {}, as_="operator")
                assert reply.status == 200, reply.text
            await endpoint.mission_events(c, mission, *names)
            await until(lambda: endpoint.complete(*names), "every stream's SETs")
        finally:
            await endpoint.stop()
        for name in names:
            endpoint.check(name)
            assert len(endpoint.expected[name]) == 4  # approved, suspended, resumed, revoked
        settings = _settings(push_server)
        with OutboxStore.open(settings, pool_size=1) as store:
            assert store.unsigned() == []  # every signature was stored too

    run(push_server, scenario)


def test_invalid_request_is_dead_lettered_then_redelivered_with_the_cli(
    push_server: Server,
) -> None:
    refuse = {"on": True}

    async def picky(arrival: Arrival, nth: int) -> web.StreamResponse:
        if refuse["on"] and arrival.key == ("verify", "bad"):
            return web.json_response(
                {"err": "invalid_request", "description": "cannot use this one"}, status=400
            )
        return web.Response(status=202)

    async def scenario(c: Client) -> None:
        receiver = Receiver(c, "receiver", SSF_ISSUER)
        await receiver.discover()
        endpoint = await Endpoint(receiver, picky).start()
        try:
            stream_id = await endpoint.create("picky", [])
            for state in ("ok1", "bad", "ok2"):
                await endpoint.verification("picky", state)
            await until(lambda: len(endpoint.got("picky")) == 3, "three SETs")
            settings = _settings(push_server)
            await until(lambda: _queue(settings, stream_id)["dead_letters"] == 1, "dead letter")
            listed = _cli(push_server, "streams", "dead-letters", stream_id, "--json")
            assert listed.returncode == 0, listed.stderr
            (dead,) = json.loads(listed.stdout)
            bad = [a for a in endpoint.arrivals["picky"] if a.key == ("verify", "bad")]
            assert dead["jti"] == bad[0].item.jti
            assert dead["attempts"] == 1
            assert dead["last_error"].endswith("invalid_request: cannot use this one")
            shown = _cli(push_server, "streams", "show", stream_id, "--json")
            assert json.loads(shown.stdout)["queue"]["last_errors"][0]["err"] == "invalid_request"
            metrics = (await c.get("/metrics", as_="operator")).text
            assert "\nmission_ledger_ssf_push_dead_letters 1\n" in metrics
            refuse["on"] = False
            again = _cli(push_server, "streams", "redeliver", stream_id, "--all")
            assert again.returncode == 0, again.stderr
            assert dead["jti"] in again.stdout
            await until(
                lambda: (
                    sum(1 for a in endpoint.arrivals["picky"] if a.key == ("verify", "bad")) == 2
                ),
                "the redelivered SET",
            )
            await until(lambda: _queue(settings, stream_id)["dead_letters"] == 0, "no dead letter")
        finally:
            await endpoint.stop()
        keys = [a.key for a in endpoint.arrivals["picky"]]
        assert keys == [("verify", "ok1"), ("verify", "bad"), ("verify", "ok2"), ("verify", "bad")]
        assert len({a.item.jti for a in endpoint.arrivals["picky"]}) == 3  # the same jti again

    run(push_server, scenario)


def test_one_black_holed_receiver_does_not_hold_up_nineteen_others(push_server: Server) -> None:
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # handshakes complete in the kernel; nothing is ever read or answered

    async def scenario(c: Client) -> None:
        receiver = Receiver(c, "receiver", SSF_ISSUER)
        await receiver.discover()
        endpoint = await Endpoint(receiver).start()
        try:
            names = [f"healthy{n}" for n in range(19)]
            black = await receiver.create(
                {
                    "delivery": {
                        "method": PUSH,
                        "endpoint_url": f"http://127.0.0.1:{hole.getsockname()[1]}/push/x",
                    }
                }
            )
            endpoint.streams["black"] = black["stream_id"]
            endpoint.expected["black"] = []
            for name in names:
                await endpoint.create(name, [])
            for state in ("one", "two"):
                await endpoint.verification("black", state)
                for name in names:
                    await endpoint.verification(name, state)
            await until(lambda: endpoint.complete(*names), "the nineteen healthy streams")
            held = _queue(_settings(push_server), black["stream_id"])
            assert held["queue_depth"] == 2  # still pending: nothing was delivered
            assert held["dead_letters"] == 0
        finally:
            await endpoint.stop()
            hole.close()
        for name in names:
            endpoint.check(name)
        reply = await receiver.call(
            "DELETE",
            receiver.endpoint("configuration_endpoint") + f"?stream_id={black['stream_id']}",
        )
        assert reply.status == 204

    run(push_server, scenario)


def test_the_transmitter_sigkilled_mid_delivery_resumes_with_the_same_jtis(
    tmp_path: Path,
) -> None:
    _sigkill_scenario(tmp_path, ["--data", str(tmp_path / "var")], pg=None)


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_push_on_postgres_survives_dropped_sessions_and_a_sigkill(
    postgres_schema_url: PgTarget,
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    app_name = f"mlpush_e2e_{postgres_schema_url.schema}"
    monkeypatch.setenv("PGAPPNAME", app_name)  # the server's sessions carry this name
    _sigkill_scenario(
        tmp_path,
        ["--database-url", postgres_schema_url.ledger_url],
        pg=(postgres_url, app_name),
    )


def _terminate(admin_url: str, app_name: str) -> int:
    """What a PostgreSQL restart looks like to the transmitter, limited to its own sessions
    (the server is shared by other test runs)."""
    with psycopg.connect(admin_url, autocommit=True, application_name="mlpush_admin") as conn:
        row = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            [app_name],
        ).fetchone()
    assert row is not None
    return int(row[0])


def _sigkill_scenario(tmp: Path, storage: list[str], pg: tuple[str, str] | None) -> None:
    """Deliver; (PostgreSQL: drop every session mid-request); SIGKILL the server while a
    request is in flight; restart it; everything arrives, the interrupted SETs with the same
    jtis."""
    server = start_server(tmp / "first", storage, *PUSH_FLAGS)
    assert server.operator_token is not None, server.logs()
    server.tokens["operator"] = server.operator_token
    server.mint(ssf_principals())
    holding: dict[str, Any] = {"state": None, "gate": None, "seen": None}

    async def held(arrival: Arrival, nth: int) -> web.StreamResponse:
        if arrival.key == ("verify", holding["state"]) and nth == 1:
            holding["seen"].set()
            await holding["gate"].wait()  # the transmitter dies (or loses its store) meanwhile
        return web.Response(status=202)

    servers = [server]
    try:

        async def before(c: Client) -> None:
            receiver = Receiver(c, "receiver", SSF_ISSUER)
            await receiver.discover()
            endpoint = await Endpoint(receiver, held).start()
            holding["endpoint"] = endpoint
            await endpoint.create("main", MISSION_TYPES)
            mission = await _mission(c)
            await endpoint.mission_events(c, mission, "main")
            if pg is not None:
                holding.update(state="pg", gate=asyncio.Event(), seen=asyncio.Event())
                await endpoint.verification("main", "pg")
                await asyncio.wait_for(holding["seen"].wait(), WAIT)
                assert _terminate(*pg) >= 2  # pools, the outbox worker's and the push claim
                holding["gate"].set()
                reply = await c.post(f"/missions/{mission}/suspend", {}, as_="operator")
                assert reply.status == 200, reply.text
                await endpoint.mission_events(c, mission, "main")
                await until(lambda: endpoint.complete("main"), "delivery after the drop")
            holding.update(state="kill", gate=asyncio.Event(), seen=asyncio.Event())
            for state in ("a", "kill", "b", "c"):
                await endpoint.verification("main", state)
            await asyncio.wait_for(holding["seen"].wait(), WAIT)
            server.process.send_signal(signal.SIGKILL)  # mid-request: no 202 ever seen
            server.process.wait(timeout=30)
            holding["gate"].set()
            await endpoint.stop()  # down until the restart: the new server meets refusals

        run(server, before)
        restarted = _restart(server, tmp / "second")
        servers.append(restarted)

        async def after(c: Client) -> None:
            endpoint: Endpoint = holding["endpoint"]
            endpoint.receiver.client = c
            await endpoint.start(endpoint.port)
            try:
                await endpoint.verification("main", "after")
                await until(lambda: endpoint.complete("main"), "delivery after the restart")
            finally:
                await endpoint.stop()
            endpoint.check("main")
            killed = [a for a in endpoint.arrivals["main"] if a.key == ("verify", "kill")]
            assert len(killed) >= 2  # held when the process died, delivered again after
            assert len({a.item.jti for a in killed}) == 1  # with the same jti

        run(restarted, after)
    finally:
        for running in servers:
            if running.process.poll() is None:
                running.stop()
