"""The receiver SDK against the real Authority server on loopback: discovery, stream management,
the poll loop feeding a MissionTracker through a Mission's lifecycle, verification, the re-read
of a Mission first seen beyond version 1, and (once the transmitter pushes) push delivery.

The server's issuer is its own loopback URL (``http://127.0.0.1:PORT``, a port chosen before
start), so the SDK discovers it exactly as a Service would, with no URL rewriting. Waits are
bounded generously; nothing asserts a duration.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mission_ledger.receiver import (
    CAEP_SESSION_REVOKED,
    MISSION_EVENTS,
    POLL,
    PUSH,
    MissionTracker,
    Outcome,
    PollStats,
    SetVerifier,
    StreamClient,
    StreamConfig,
    StreamNotFound,
    TransmitterForbidden,
    TransmitterMetadata,
    TransmitterRateLimited,
    TransmitterUnauthorized,
    VerifiedSet,
    discover,
    http_mission_reader,
    poll_forever,
    push_handler,
)
from tests.e2e.conftest import Server, ssf_principals, start_server
from tests.e2e.test_http_api import Client, _mission

pytest.importorskip("mission_ledger.http.routes_ssf")

WAIT = 60.0  # seconds: a generous bound for the outbox on a loaded machine
ERP_AUDIENCE = "https://erp.example.com"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start(tmp: Path, *extra: str) -> Server:
    """A server whose issuer is its own loopback URL (retried if the chosen port was taken)."""
    failure: AssertionError | None = None
    for attempt in range(3):
        port = _free_port()
        try:
            return start_server(
                tmp / f"try-{attempt}",
                ["--data", str(tmp / f"var-{attempt}")],
                "--port",
                str(port),
                "--issuer",
                f"http://127.0.0.1:{port}",
                "--poll-timeout",
                "2",
                "--poll-reoffer-after",
                "2",
                "--min-verification-interval",
                "30",
                *extra,
            )
        except AssertionError as error:
            failure = error
    assert failure is not None
    raise failure


@pytest.fixture(scope="module")
def sdk_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = _start(tmp_path_factory.mktemp("receiver-sdk"))
    try:
        assert server.url == server.url.rstrip("/")
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(ssf_principals())
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


@dataclass
class Service:
    """What a Service holds: the session, the discovered metadata and the SDK objects."""

    server: Server
    session: aiohttp.ClientSession
    metadata: TransmitterMetadata
    client: StreamClient
    api: Client
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def token(self) -> str:
        return self.server.tokens["receiver"]

    def verifier(self, config: StreamConfig) -> SetVerifier:
        return SetVerifier(
            self.metadata.issuer, config.audiences[0], self.metadata.jwks_uri, self.session
        )

    def tracker(self) -> MissionTracker:
        return MissionTracker(http_mission_reader(self.metadata.issuer, self.token, self.session))


@asynccontextmanager
async def service(server: Server) -> AsyncIterator[Service]:
    async with aiohttp.ClientSession() as session:
        metadata = await discover(server.url, session)
        client = StreamClient(metadata, server.tokens["receiver"], session)
        yield Service(server, session, metadata, client, Client(session, server))


def run(server: Server, scenario: Callable[[Service], Any]) -> None:
    async def main() -> None:
        async with service(server) as s:
            await scenario(s)

    asyncio.run(main())


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def polling(
    s: Service, config: StreamConfig, tracker: MissionTracker
) -> AsyncIterator[asyncio.Task[PollStats]]:
    async def on_event(verified: VerifiedSet) -> None:
        s.outcomes.append(await tracker.apply(verified))

    stop = asyncio.Event()
    task = asyncio.create_task(
        poll_forever(s.client, config.stream_id, s.verifier(config), on_event, stop_event=stop)
    )
    try:
        yield task
    finally:
        stop.set()
        if not task.done():
            await asyncio.wait_for(asyncio.shield(task), WAIT)


async def command(s: Service, mission_id: str, name: str, body: Any = None) -> None:
    reply = await s.api.post(f"/missions/{mission_id}/{name}", body or {}, as_="operator")
    assert reply.status == 200, reply.text


# -- discovery and management ---------------------------------------------------------------------


def test_discovery_and_stream_management(sdk_server: Server) -> None:
    async def scenario(s: Service) -> None:
        m = s.metadata
        assert m.issuer == sdk_server.url
        assert m.jwks_uri == sdk_server.url + "/jwks.json"
        assert m.supports(POLL)
        assert m.supports(PUSH)
        assert m.spec_version == "1_0"

        config = await s.client.create(list(MISSION_EVENTS), description="ERP revocations")
        assert config.iss == sdk_server.url
        assert config.audiences == (ERP_AUDIENCE,)
        assert config.events_delivered == MISSION_EVENTS
        assert config.poll_url is not None
        sid = config.stream_id
        assert sid in [c.stream_id for c in await s.client.list()]
        assert (await s.client.get(sid)).description == "ERP revocations"

        updated = await s.client.update(sid, description="ERP, updated")
        assert updated.description == "ERP, updated"
        assert updated.events_delivered == MISSION_EVENTS
        replaced = await s.client.replace(sid, events_requested=[CAEP_SESSION_REVOKED])
        assert replaced.description is None  # PUT removes what it does not repeat
        assert replaced.events_delivered == (CAEP_SESSION_REVOKED,)
        assert replaced.poll_url == config.poll_url

        assert (await s.client.get_status(sid)).status == "enabled"
        paused = await s.client.set_status(sid, "paused", "maintenance")
        assert (paused.status, paused.reason) == ("paused", "maintenance")
        assert (await s.client.set_status(sid, "enabled")).status == "enabled"

        subject = {"format": "opaque", "id": "00000000-0000-4000-8000-000000000001"}
        await s.client.add_subject(sid, subject)
        await s.client.remove_subject(sid, subject)

        await s.client.request_verification(sid)
        with pytest.raises(TransmitterRateLimited) as too_soon:
            await s.client.request_verification(sid)
        assert too_soon.value.retry_after is not None
        assert too_soon.value.retry_after > 0

        await s.client.delete(sid)
        with pytest.raises(StreamNotFound):
            await s.client.get(sid)

        wrong = StreamClient(m, "mlt_" + "0" * 32 + "_" + "A" * 43, s.session)
        with pytest.raises(TransmitterUnauthorized) as unauthorized:
            await wrong.list()
        assert unauthorized.value.www_authenticate is not None
        assert unauthorized.value.www_authenticate.startswith("Bearer")
        operator = StreamClient(m, sdk_server.tokens["operator"], s.session)
        with pytest.raises(TransmitterForbidden):
            await operator.create()

    run(sdk_server, scenario)


# -- the poll loop and the tracker --------------------------------------------------------------


def test_a_mission_lifecycle_polled_into_the_tracker(sdk_server: Server) -> None:
    async def scenario(s: Service) -> None:
        config = await s.client.create(list(MISSION_EVENTS))
        tracker = s.tracker()
        async with polling(s, config, tracker) as task:
            mid = await _mission(s.api)
            await eventually(lambda: tracker.is_active(mid), "the approval")
            state = tracker.mission(mid)
            assert state is not None
            assert state.version == 1
            assert state.authority_set is not None

            await command(s, mid, "suspend", {"reason": "unexpected volume"})
            await eventually(lambda: not tracker.is_active(mid), "the suspension")
            assert (tracker.mission(mid) or state).state == "suspended"
            await command(s, mid, "resume")
            await eventually(lambda: tracker.is_active(mid), "the resumption")

            verification = await tracker.request_verification(s.client, config.stream_id)
            await asyncio.wait_for(tracker.wait_verified(verification), WAIT)

            await command(s, mid, "revoke", {"reason": "done"})
            await eventually(
                lambda: (tracker.mission(mid) or state).state == "revoked", "the revocation"
            )
            assert not tracker.is_active(mid)
            assert not task.done()
        stats = task.result()
        assert stats.refused == 0, stats.set_errs
        applied = [o for o in s.outcomes if o.kind == "applied" and o.mission_id == mid]
        assert [o.mission.version for o in applied if o.mission] == [1, 2, 3, 4]
        assert all(o.resynced is None for o in applied)  # no gap: nothing re-read
        await s.client.delete(config.stream_id)

    run(sdk_server, scenario)


def test_a_mission_first_seen_beyond_version_1_is_read_back(sdk_server: Server) -> None:
    async def scenario(s: Service) -> None:
        mid = await _mission(s.api)
        await command(s, mid, "suspend", {"reason": "before the stream existed"})
        config = await s.client.create(list(MISSION_EVENTS))
        tracker = s.tracker()
        async with polling(s, config, tracker):
            await command(s, mid, "resume")
            await eventually(lambda: tracker.is_active(mid), "the resumption")
        state = tracker.mission(mid)
        assert state is not None
        assert state.version == 3
        assert state.authority_set is not None  # from GET /missions/{id} with the token
        resumed = [o for o in s.outcomes if o.mission_id == mid and o.kind == "applied"]
        assert resumed[0].resynced is True
        await s.client.delete(config.stream_id)

    run(sdk_server, scenario)


# -- push ----------------------------------------------------------------------------------------


def _serve_supports(flag: str) -> bool:
    done = subprocess.run(
        [sys.executable, "-m", "mission_ledger", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return flag in done.stdout


def test_push_delivery_into_the_tracker(tmp_path: Path) -> None:
    flags = ("--allow-insecure-push", "--allow-private-push-targets")
    if not all(_serve_supports(flag) for flag in flags):
        pytest.skip("the transmitter does not push yet (no --allow-insecure-push)")
    server = _start(tmp_path, *flags)
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(ssf_principals())

        async def scenario(s: Service) -> None:
            tracker = s.tracker()
            secret = "Bearer push-secret-42"
            holder: dict[str, Callable[[web.Request], Any]] = {}

            async def on_event(verified: VerifiedSet) -> None:
                s.outcomes.append(await tracker.apply(verified))

            async def handle(request: web.Request) -> web.StreamResponse:
                response: web.StreamResponse = await holder["handler"](request)
                return response

            app = web.Application()
            app.router.add_post("/ssf/events", handle)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            try:
                port = runner.addresses[0][1]
                config = await s.client.create(
                    list(MISSION_EVENTS),
                    endpoint_url=f"http://127.0.0.1:{port}/ssf/events",
                    authorization_header=secret,
                )
                holder["handler"] = push_handler(
                    s.verifier(config), on_event, expected_authorization=secret
                )
                mid = await _mission(s.api)
                await eventually(lambda: tracker.is_active(mid), "the pushed approval")
                await command(s, mid, "revoke", {"reason": "done"})
                await eventually(lambda: not tracker.is_active(mid), "the pushed revocation")
                state = await tracker.request_verification(s.client, config.stream_id)
                await asyncio.wait_for(tracker.wait_verified(state), WAIT)
                await s.client.delete(config.stream_id)
            finally:
                await runner.cleanup()

        run(server, scenario)
    finally:
        server.stop()


# -- the example Service --------------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "erp_service.py"


def test_the_example_erp_service_follows_a_mission(sdk_server: Server, tmp_path: Path) -> None:
    out = tmp_path / "erp.out"
    env = {
        **os.environ,
        "MISSION_LEDGER_RECEIVER_TOKEN": sdk_server.tokens["receiver"],
        "PYTHONUNBUFFERED": "1",
    }
    with out.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, str(EXAMPLE), "--issuer", sdk_server.url, "--mode", "poll"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:

        def printed(text: str) -> bool:
            return text in out.read_text(errors="replace")

        async def scenario(s: Service) -> None:
            await eventually(lambda: printed("verification requested"), "the stream")
            await eventually(lambda: printed("state matched"), "the verification SET")
            mid = await _mission(s.api)
            await eventually(lambda: printed(f"mission={mid} state=active"), "the approval")
            await command(s, mid, "suspend", {"reason": "audit"})
            await eventually(lambda: printed(f"mission={mid} state=suspended"), "the suspension")
            await command(s, mid, "revoke", {"reason": "done"})
            await eventually(lambda: printed(f"mission={mid} state=revoked"), "the revocation")

        run(sdk_server, scenario)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0, out.read_text()
        text = out.read_text()
        assert "stream " in text
        assert "deleted" in text
        assert "active_missions=0" in text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
