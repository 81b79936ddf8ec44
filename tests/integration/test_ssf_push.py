"""SSF push delivery (RFC 8935) at the store and deliverer level, on SQLite and PostgreSQL.

Each test builds a real ledger history (a receiver principal, push streams committed as
``Stream`` aggregates, verification requests as the SETs to deliver), queues the SETs with the
real :class:`OutboxWorker`, then runs a real :class:`PushDeliverer` against real aiohttp
receivers on 127.0.0.1 that misbehave on purpose. Retry schedules are shrunk to milliseconds
through :class:`PushOptions`; waits are bounded generously and nothing asserts on timing.

Every delivery check (:func:`check_delivered`) asserts that nothing is lost and nothing is
delivered twice under different jtis: every jti received is a queued SET of that stream, with
that SET's ``txn`` and event type and its exact bytes; every queued SET arrives; the first
arrivals come in queue (ledger) order; and no ``(txn, event type)`` arrives under two jtis.
"""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from aiohttp import web
from eventsourcing.persistence import InterfaceError, OperationalError

from mission_ledger.bootstrap import open_ledger
from mission_ledger.cli import main as cli_main
from mission_ledger.config import Settings
from mission_ledger.domain.errors import InvalidInput
from mission_ledger.domain.stream import PUSH, Stream
from mission_ledger.errors import Unavailable
from mission_ledger.ledger import MissionLedger
from mission_ledger.principals import Principal, PrincipalRegistry
from mission_ledger.ssf.keys import FileKeyStore
from mission_ledger.ssf.outbox import STREAM_UPDATED, VERIFICATION, OutboxWorker
from mission_ledger.ssf.outbox_store import OutboxStore
from mission_ledger.ssf.push import PushDeliverer, PushOptions, RetrySchedule
from mission_ledger.ssf.push_queue import Delivered, PushQueue
from mission_ledger.ssf.rfc8417_set import sign_signing_input
from mission_ledger.ssf.ssrf import PushTargetPolicy
from mission_ledger.ssf.streams import authorization_fingerprint
from tests.pgcluster import ThrowawayCluster
from tests.pgtarget import PgTarget

LOCAL = PushTargetPolicy(allow_insecure=True, allow_private=True)  # receivers on loopback
TINY = RetrySchedule(base=0.01, cap=0.05, attempts=1000)  # retries within milliseconds
WAIT = 60.0  # seconds: a generous bound for a loaded machine (never an assertion on speed)
ACTOR = "operator:olga"


def options(**changes: Any) -> PushOptions:
    base: dict[str, Any] = {
        "policy": LOCAL,
        "fast": TINY,
        "slow": TINY,
        "connect_timeout": 2.0,
        "total_timeout": 10.0,
        "scan_interval": 0.1,
        "drain_timeout": 1.0,
    }
    base.update(changes)
    return PushOptions(**base)


# ---------------------------------------------------------------------------------------------
# The ledger, the streams, the queue
# ---------------------------------------------------------------------------------------------


@dataclass
class Env:
    name: str
    settings: Settings
    ledger: MissionLedger
    keys: FileKeyStore
    receiver: Principal
    app_name: str | None  # PostgreSQL: the application_name of every session of this test
    admin_url: str | None
    opened: list[Any] = field(default_factory=list)

    def store(self) -> OutboxStore:
        store = OutboxStore.open(self.settings)
        self.opened.append(store)
        return store

    def stream(self, url: str, *, authorization: str | None = None, alg: str = "ES256") -> str:
        """Commit a push stream to ``url`` (what the stream service does after validating)."""
        receiver = self.receiver
        assert receiver.audience is not None
        stream = Stream.create(
            stream_id=uuid4(),
            receiver_id=receiver.principal_id,
            receiver_name=receiver.name,
            aud=receiver.audience,
            resources=list(receiver.resources),
            all_missions=receiver.all_missions,
            delivery_method=PUSH,
            endpoint_url=url,
            authorization_fingerprint=authorization_fingerprint(authorization),
            events_requested=[],
            events_delivered=[],
            description=None,
            signing_alg=alg,
            mission_capabilities=[],
            min_verification_interval=0,
            actor=receiver.actor,
            now=self.ledger.clock.now(),
        )
        self.ledger._commit([stream])
        if authorization is not None:
            with OutboxStore.open(self.settings) as store:
                store.put_push_secret(stream.stream_id, authorization)
        return stream.stream_id

    def on_stream(self, stream_id: str, method: str, /, **arguments: Any) -> None:
        """Run a Stream command (``request_verification``, ``configure``, …) and commit it."""
        stream: Any = self.ledger.repository.get(UUID(stream_id))
        getattr(stream, method)(now=self.ledger.clock.now(), **arguments)
        self.ledger._commit([stream])

    def verify(self, stream_id: str, count: int) -> None:
        """``count`` verification requests: one verification SET each (state v0, v1, …)."""
        for n in range(count):
            self.on_stream(stream_id, "request_verification", state=f"v{n}", actor=ACTOR)

    def status(self, stream_id: str, status: str, *, by: str = "receiver") -> None:
        self.on_stream(
            stream_id, "set_status", status=status, reason=None, initiator=by, actor=ACTOR
        )

    def outbox(self) -> None:
        """Turn everything committed so far into queued SETs."""
        with OutboxWorker(self.ledger, self.settings, self.keys) as worker:
            worker.run_once()


def queued(store: OutboxStore, stream_id: str, *, dead: bool | None = None) -> list[dict[str, Any]]:
    """The stream's queue rows in ``seq`` order, read directly (all, only live, only dead)."""
    b = store._b
    where = {None: "", True: " AND dead_at IS NOT NULL", False: " AND dead_at IS NULL"}[dead]
    statement = "SELECT * FROM {queue} WHERE stream_id = ?" + where + " ORDER BY seq"  # noqa: S608
    with b.reading() as fetch:
        return fetch(b.sql(statement), [stream_id])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Env]:
    app_name = admin_url = None
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        admin_url = request.getfixturevalue("postgres_url")
        app_name = f"mlpush_{target.schema}"
        monkeypatch.setenv("PGAPPNAME", app_name)  # libpq names every session of this test
        settings = Settings(data_dir=tmp_path / "data", database_url=target.ledger_url)
    yield from _open_env(request.param, settings, tmp_path, app_name, admin_url)


def _open_env(
    name: str, settings: Settings, tmp_path: Path, app_name: str | None, admin_url: str | None
) -> Iterator[Env]:
    ledger = open_ledger(settings)
    keys = FileKeyStore(tmp_path / "keys", rsa_bits=2048)
    keys.ensure_keys()
    receiver, _ = PrincipalRegistry(ledger).create(
        role="receiver",
        name="hooks",
        actor=ACTOR,
        audience="https://hooks.example.com",
        resources=[],
        all_missions=True,
    )
    opened = Env(name, settings, ledger, keys, receiver, app_name, admin_url)
    try:
        yield opened
    finally:
        for thing in reversed(opened.opened):
            thing.close()
        ledger.close()


@pytest.fixture
def restartable_env(tmp_path: Path) -> Iterator[tuple[Env, ThrowawayCluster]]:
    """An Env on a PostgreSQL cluster of this test's own, which it may restart."""
    cluster = ThrowawayCluster().start()
    try:
        settings = Settings(data_dir=tmp_path / "data", database_url=f"{cluster.url}?schema=ml")
        for env in _open_env("postgres", settings, tmp_path, None, cluster.url):
            yield env, cluster
    finally:
        cluster.close()


# ---------------------------------------------------------------------------------------------
# A receiver on loopback
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One push request as the receiver saw it."""

    path: str
    jti: str
    txn: str
    event_type: str
    event: dict[str, Any]
    authorization: str | None
    content_type: str | None
    accept: str | None
    body: bytes


def _claims(token: bytes) -> dict[str, Any]:
    payload = token.split(b".")[1]
    claims: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4))
    )
    return claims


Behaviour = Callable[[Hit, int], Awaitable[web.StreamResponse]]


async def accept(hit: Hit, nth: int) -> web.StreamResponse:
    return web.Response(status=202)


def rfc8935_error(err: str, description: str = "refused by the test receiver") -> web.Response:
    return web.json_response(
        {"err": err, "description": description},
        status=400,
        headers={"Content-Language": "en"},
    )


class Receiver:
    """An RFC 8935 receiver on 127.0.0.1 recording every request; ``behaviour(hit, nth)``
    answers (``nth``: how many times this jti has arrived, 1 the first time)."""

    def __init__(self, behaviour: Behaviour = accept) -> None:
        self.behaviour = behaviour
        self.hits: list[Hit] = []
        self.other_requests: list[str] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        claims = _claims(body)
        ((event_type, event),) = claims["events"].items()
        hit = Hit(
            path=request.path,
            jti=claims["jti"],
            txn=claims["txn"],
            event_type=event_type,
            event=event,
            authorization=request.headers.get("Authorization"),
            content_type=request.headers.get("Content-Type"),
            accept=request.headers.get("Accept"),
            body=body,
        )
        self.hits.append(hit)
        nth = sum(1 for h in self.hits if h.jti == hit.jti)
        return await self.behaviour(hit, nth)

    async def _other(self, request: web.Request) -> web.StreamResponse:
        self.other_requests.append(request.path)
        return web.Response(status=202)

    async def start(self, port: int = 0) -> Receiver:
        app = web.Application()
        app.router.add_post("/ssf/{name}", self._handle)
        app.router.add_route("*", "/elsewhere", self._other)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    def url(self, name: str = "events", port: int | None = None) -> str:
        return f"http://127.0.0.1:{port or self.port}/ssf/{name}"

    def of(self, stream_url: str) -> list[Hit]:
        path = stream_url.split(str(self.port), 1)[1]
        return [h for h in self.hits if h.path == path]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def check_delivered(hits: Sequence[Hit], expected: Sequence[dict[str, Any]]) -> None:
    """Nothing lost, nothing twice under another jti, first arrivals in queue order."""
    rows = {row["jti"]: row for row in expected}
    for hit in hits:
        assert hit.jti in rows, f"an unknown jti arrived: {hit.jti}"
        row = rows[hit.jti]
        assert (hit.txn, hit.event_type) == (row["txn"], row["event_type"])
        assert hit.body == row["set_jwt"].encode()  # byte-identical on every attempt
    first = list(dict.fromkeys(hit.jti for hit in hits))
    assert first == [row["jti"] for row in expected]
    assert len({(hit.txn, hit.event_type) for hit in hits}) == len(first)


async def until(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = WAIT
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        await asyncio.sleep(0.02)


async def store_says(store: OutboxStore, fn: Callable[[OutboxStore], bool]) -> bool:
    """``fn(store)`` in a thread; False while the store is unreachable (its sessions dropped)."""
    try:
        return await asyncio.to_thread(fn, store)
    except (OperationalError, InterfaceError, Unavailable):
        return False


def drained(store: OutboxStore, *stream_ids: str) -> Callable[[], Awaitable[bool]]:
    """True once the streams' live queues are empty."""
    return lambda: store_says(
        store, lambda s: all(not queued(s, sid, dead=False) for sid in stream_ids)
    )


async def running(env: Env, push: PushOptions) -> PushDeliverer:
    deliverer = PushDeliverer(env.settings, push)
    await deliverer.start()
    return deliverer


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------
# Transient failures: all SETs arrive, in order
# ---------------------------------------------------------------------------------------------


def test_a_receiver_refusing_connections_then_recovering_gets_everything_in_order(
    env: Env,
) -> None:
    port = free_port()  # nothing listens there yet: connections are refused
    url = f"http://127.0.0.1:{port}/ssf/events"
    stream_id = env.stream(url)
    env.verify(stream_id, 6)
    env.outbox()
    store = env.store()
    expected = queued(store, stream_id)
    assert len(expected) == 6

    async def scenario() -> None:
        deliverer = await running(env, options())
        receiver = Receiver()
        try:
            await until(
                lambda: store_says(store, lambda s: queued(s, stream_id)[0]["attempts"] >= 3),
                "three refused attempts",
            )
            head = queued(store, stream_id)[0]
            assert head["jti"] == expected[0]["jti"]
            assert "cannot connect" in head["last_error"]
            assert head["dead_at"] is None
            await receiver.start(port)
            await until(drained(store, stream_id), "the recovered receiver to get every SET")
        finally:
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(url), expected)

    run(scenario)


def test_5xx_and_429_with_retry_after_are_retried_then_delivered(env: Env) -> None:
    store = env.store()
    gate = asyncio.Event()
    first_jti: list[str] = []

    async def flaky(hit: Hit, nth: int) -> web.StreamResponse:
        if not first_jti:
            first_jti.append(hit.jti)
        if hit.jti != first_jti[0]:
            return web.Response(status=202)
        if nth == 1:
            return web.Response(status=500)
        if nth == 2:
            return web.Response(
                status=503, headers={"Retry-After": format_datetime(datetime.now(UTC), usegmt=True)}
            )
        if nth == 3:
            return web.Response(status=429, headers={"Retry-After": "2"})
        await gate.wait()  # held until the test has looked at the stored retry state
        return web.Response(status=202)

    async def scenario() -> None:
        receiver = await Receiver(flaky).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 5)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options())
        try:
            await until(
                lambda: store_says(store, lambda s: queued(s, stream_id)[0]["attempts"] == 3),
                "the 429",
            )
            head = queued(store, stream_id)[0]
            assert head["last_error"] == "HTTP 429 Too Many Requests"
            waited = _time(head["next_attempt_at"]) - _time(head["last_attempt_at"])
            assert waited.total_seconds() >= 2  # Retry-After honoured (TINY alone is < 0.05 s)
            assert [h.jti for h in receiver.hits] == [expected[0]["jti"]] * 3  # the head blocks
            gate.set()
            await until(drained(store, stream_id), "every SET")
        finally:
            gate.set()
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(url), expected)
        assert sum(1 for h in receiver.hits if h.jti == expected[0]["jti"]) == 4

    run(scenario)


def _time(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value


def test_a_receiver_hanging_past_the_total_timeout_gets_the_same_jti_again(env: Env) -> None:
    store = env.store()
    release = asyncio.Event()

    async def hangs_once(hit: Hit, nth: int) -> web.StreamResponse:
        if len(hit.event) and hit.event.get("state") == "v1" and nth == 1:
            await release.wait()  # stored, but the 202 never comes in time ("lost")
        return web.Response(status=202)

    async def scenario() -> None:
        receiver = await Receiver(hangs_once).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 4)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options(total_timeout=0.5))
        try:
            await until(drained(store, stream_id), "every SET despite the hang")
        finally:
            release.set()
            await deliverer.stop()
            await receiver.stop()
        hits = receiver.of(url)
        check_delivered(hits, expected)
        again = [h.jti for h in hits if h.event.get("state") == "v1"]
        assert len(again) >= 2
        assert set(again) == {expected[1]["jti"]}  # the retry carries the SAME jti
        head_errors = [h for h in hits if h.jti == expected[2]["jti"]]
        assert head_errors  # and the next SET only after it

    run(scenario)


# ---------------------------------------------------------------------------------------------
# Errors the receiver reports
# ---------------------------------------------------------------------------------------------


def test_invalid_request_is_dead_lettered_at_once_recorded_and_redelivered(env: Env) -> None:
    store = env.store()
    refuse = {"on": True}

    async def picky(hit: Hit, nth: int) -> web.StreamResponse:
        if hit.event.get("state") == "v1" and refuse["on"]:
            return rfc8935_error("invalid_request", "the event does not parse")
        return web.Response(status=202)

    async def scenario() -> None:
        receiver = await Receiver(picky).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 4)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options())
        try:
            await until(drained(store, stream_id), "the live queue to drain")
            dead = store.push.dead_letters(stream_id)
            assert [d["jti"] for d in dead] == [expected[1]["jti"]]
            assert dead[0]["attempts"] == 1  # permanent: never retried
            assert dead[0]["event_type"] == VERIFICATION
            assert (
                dead[0]["last_error"]
                == "HTTP 400 Bad Request: invalid_request: the event does not parse"
            )
            assert dead[0]["dead_lettered_at"] is not None
            stats = store.stream_stats(stream_id, datetime.now(UTC))
            assert stats["dead_letters"] == 1
            assert stats["queue_depth"] == 0
            assert stats["last_errors"][0]["jti"] == expected[1]["jti"]
            assert stats["last_errors"][0]["err"] == "invalid_request"
            assert stats["last_errors"][0]["description"] == "the event does not parse"
            # the dead letter did not block the SETs after it
            assert [h.jti for h in receiver.of(url)] == [e["jti"] for e in expected]
            # an operator redelivers it (after the receiver was fixed)
            refuse["on"] = False
            assert store.push.redeliver(stream_id, None) == [expected[1]["jti"]]
            await until(drained(store, stream_id), "the redelivered SET")
            assert store.push.dead_letters(stream_id) == []
        finally:
            await deliverer.stop()
            await receiver.stop()
        hits = receiver.of(url)
        assert [h.jti for h in hits] == [e["jti"] for e in expected] + [expected[1]["jti"]]
        assert len({(h.txn, h.event_type) for h in hits}) == len(expected)

    run(scenario)


def test_invalid_key_redirects_and_refused_targets_use_the_slow_schedule(env: Env) -> None:
    store = env.store()

    async def answers(hit: Hit, nth: int) -> web.StreamResponse:
        if hit.path == "/ssf/key":
            return rfc8935_error("invalid_key", "kid unknown")
        if hit.path == "/ssf/moved":
            raise web.HTTPFound("/elsewhere")
        if hit.path == "/ssf/auth":
            return web.Response(status=401)
        return web.Response(status=202)

    async def scenario() -> None:
        receiver = await Receiver(answers).start()
        streams = {name: env.stream(receiver.url(name)) for name in ("key", "moved", "auth")}
        for stream_id in streams.values():
            env.verify(stream_id, 2)
        env.outbox()
        slow = RetrySchedule(base=0.01, cap=0.02, attempts=3)
        fast_never = RetrySchedule(base=60, cap=60, attempts=1)  # a fast retry would stall
        deliverer = await running(env, options(slow=slow, fast=fast_never))
        try:
            await until(
                lambda: store_says(
                    store,
                    lambda s: all(not queued(s, sid, dead=False) for sid in streams.values()),
                ),
                "every SET of the refusing streams to be dead-lettered",
            )
        finally:
            await deliverer.stop()
        # a deliverer whose policy refuses http:// and loopback (the secure default)
        refused = env.stream(receiver.url("refused"))
        env.verify(refused, 2)
        env.outbox()
        strict = PushDeliverer(
            env.settings, options(slow=slow, fast=fast_never, policy=PushTargetPolicy())
        )
        await strict.start()
        try:
            await until(drained(store, refused), "the refused target's SETs to be dead-lettered")
        finally:
            await strict.stop()
            await receiver.stop()
        for name, stream_id in {**streams, "refused": refused}.items():
            dead = store.push.dead_letters(stream_id)
            assert len(dead) == 2, name
            rows = queued(store, stream_id)
            assert all(r["attempts"] == 3 and r["slow_attempts"] == 3 for r in rows), name
        key_error = store.push.dead_letters(streams["key"])[0]["last_error"]
        assert key_error == "HTTP 400 Bad Request: invalid_key: kid unknown"
        assert "redirect" in store.push.dead_letters(streams["moved"])[0]["last_error"]
        assert receiver.other_requests == []  # the redirect was never followed
        assert store.push.dead_letters(streams["auth"])[0]["last_error"] == "HTTP 401 Unauthorized"
        assert "refused" in store.push.dead_letters(refused)[0]["last_error"]
        assert not [h for h in receiver.hits if h.path == "/ssf/refused"]  # never connected
        stats = store.stream_stats(streams["key"], datetime.now(UTC))
        assert {e["err"] for e in stats["last_errors"]} == {"invalid_key"}
        assert len(stats["last_errors"]) == 6  # each answer of the receiver, recorded
        assert (
            store.stream_stats(streams["auth"], datetime.now(UTC))["last_errors"][0]["err"]
            == "http_401"
        )

    run(scenario)


def test_authorization_is_sent_verbatim_when_configured_and_absent_when_not(env: Env) -> None:
    store = env.store()

    async def scenario() -> None:
        receiver = await Receiver().start()
        with_secret = receiver.url("secret")
        without = receiver.url("open")
        secret = "pushToken abc.DEF_123=="  # not a Bearer: sent exactly as configured
        a = env.stream(with_secret, authorization=secret)
        b = env.stream(without)
        env.verify(a, 2)
        env.verify(b, 2)
        env.outbox()
        expected_a, expected_b = queued(store, a), queued(store, b)
        deliverer = await running(env, options())
        try:
            await until(drained(store, a, b), "both streams")
        finally:
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(with_secret), expected_a)
        check_delivered(receiver.of(without), expected_b)
        for hit in receiver.hits:
            assert hit.content_type == "application/secevent+jwt"
            assert hit.accept == "application/json"
        assert {h.authorization for h in receiver.of(with_secret)} == {secret}
        assert {h.authorization for h in receiver.of(without)} == {None}

    run(scenario)


# ---------------------------------------------------------------------------------------------
# Status, isolation, the claim
# ---------------------------------------------------------------------------------------------


def test_paused_streams_hold_except_control_sets_and_deliver_in_order_when_enabled(
    env: Env,
) -> None:
    store = env.store()

    async def scenario() -> None:
        receiver = await Receiver().start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.status(stream_id, "paused")  # the receiver's own pause: no stream-updated
        env.verify(stream_id, 3)
        env.status(stream_id, "enabled", by="transmitter")  # stream-updated "enabled"
        env.status(stream_id, "paused", by="transmitter")  # stream-updated "paused"
        env.verify(stream_id, 2)
        env.outbox()
        expected = queued(store, stream_id)
        assert [r["event_type"] for r in expected] == [
            *[VERIFICATION] * 3,
            STREAM_UPDATED,
            STREAM_UPDATED,
            *[VERIFICATION] * 2,
        ]
        controls = [r for r in expected if r["control"]]
        deliverer = await running(env, options())
        try:
            await until(
                lambda: store_says(store, lambda s: len(queued(s, stream_id)) == 5),
                "the two control SETs",
            )
            assert [h.jti for h in receiver.of(url)] == [r["jti"] for r in controls]
            assert [r["jti"] for r in queued(store, stream_id)] == [  # held while paused
                r["jti"] for r in expected if not r["control"]
            ]
            env.status(stream_id, "enabled")
            env.outbox()
            await until(drained(store, stream_id), "the held SETs")
        finally:
            await deliverer.stop()
            await receiver.stop()
        hits = receiver.of(url)
        held = [r for r in expected if not r["control"]]
        check_delivered(hits[2:], held)  # then in queue order

    run(scenario)


def test_batches_read_many_streams_at_once_each_from_its_head(env: Env) -> None:
    store = env.store()
    url = "https://hooks.example.com/ssf"
    busy, paused, deleted, idle = (env.stream(f"{url}/{n}") for n in range(4))
    env.verify(busy, 5)
    env.verify(paused, 2)
    env.verify(deleted, 1)
    env.status(paused, "paused", by="transmitter")  # queues a stream-updated control SET
    env.outbox()
    env.on_stream(deleted, "delete", actor=ACTOR)
    env.outbox()
    batches = store.push.batches([busy, paused, deleted, idle, "no-such-stream", busy], 3)
    assert list(batches) == [busy, paused, deleted, idle, "no-such-stream"]
    assert batches[deleted] is None
    assert batches["no-such-stream"] is None
    busy_batch, paused_batch, idle_batch = batches[busy], batches[paused], batches[idle]
    assert busy_batch is not None
    assert paused_batch is not None
    assert idle_batch is not None
    assert [i.jti for i in busy_batch.items] == [r["jti"] for r in queued(store, busy)][:3]
    assert busy_batch.target.endpoint_url == f"{url}/0"
    assert busy_batch.target.status == "enabled"
    assert [i.event_type for i in paused_batch.items] == [STREAM_UPDATED]  # held but control
    assert paused_batch.target.status == "paused"
    assert idle_batch.items == []
    with pytest.raises(InvalidInput):
        store.push.batches([busy], 0)


def test_offered_signatures_are_pushed_before_they_are_stored_and_re_signed_alike(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = env.store()

    async def scenario() -> None:
        receiver = await Receiver().start()
        urls = [receiver.url(f"s{n}") for n in range(12)]
        streams = [env.stream(url) for url in urls]
        for stream_id in streams:
            env.verify(stream_id, 1)  # one page of 12 SETs, more than 4: committed unsigned
        deliverer = await running(env, options())
        worker = OutboxWorker(env.ledger, env.settings, env.keys, sign_chunk=4)
        worker.add_listener(deliverer.notify_threadsafe, offered=True)
        worker.add_signature_listener(deliverer.offer_threadsafe)
        offered: dict[str, str] = {}
        worker.add_signature_listener(lambda sigs: offered.update({s.jti: s.set_jwt for s in sigs}))

        def killed(self: OutboxStore, signatures: Any) -> None:
            raise RuntimeError("killed before the signatures were stored")

        monkeypatch.setattr(OutboxStore, "store_signatures", killed)
        try:
            with pytest.raises(RuntimeError, match="killed"):
                await asyncio.to_thread(worker.run_once)
            worker.close()
            assert len(offered) == 12  # all signed and offered; none stored
            await until(lambda: {h.jti for h in receiver.hits} >= set(offered), "the offered 12")
            rows = {r["jti"]: r for s in streams for r in queued(store, s)}
            unsigned = {j: r for j, r in rows.items() if not r["signed"]}
            assert set(unsigned) <= set(offered)  # never stored, yet delivered
            for hit in receiver.hits:
                if hit.jti in offered:
                    assert hit.body == offered[hit.jti].encode()
            key = env.keys.active("ES256")  # signing again gives the bytes that were sent
            for jti, row in unsigned.items():
                assert sign_signing_input(row["set_jwt"], key) == offered[jti]
            # A new worker signs what is still unsigned (rows delivered meanwhile are gone).
            monkeypatch.undo()
            again: dict[str, str] = {}
            with OutboxWorker(env.ledger, env.settings, env.keys) as restarted:
                restarted.add_signature_listener(
                    lambda sigs: again.update({s.jti: s.set_jwt for s in sigs})
                )
                await asyncio.to_thread(restarted.run_once)
            assert set(again) <= set(unsigned)
            assert all(again[jti] == offered[jti] for jti in again)
            await until(drained(store, *streams), "every stream")
            assert deliverer._fresh == {}  # offered signatures are let go once delivered
        finally:
            await deliverer.stop()
            await receiver.stop()
        assert len({h.jti for h in receiver.hits}) == 12
        for url in urls:
            ((hit, *more),) = [receiver.of(url)]
            assert all(h.body == hit.body for h in more)

    run(scenario)


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_stream_tasks_read_their_rows_once_and_send_held_ones_as_signatures_come(
    env: Env, monkeypatch: pytest.MonkeyPatch, alg: str
) -> None:
    """A page bigger than a chunk commits unsigned and every stream hears of it: each stream's
    task reads its rows then, holds the unsigned ones, and sends each as its signature is
    offered — no read per offer, and none after the last SET (nothing was queued since).
    ES256 is signed in the worker, a chunk per offer; RS256 in the pool (12 SETs), offered as
    soon as the next signature is not ready yet."""
    store = env.store()
    reads: list[str] = []
    real = PushQueue.batches

    def counting(self: PushQueue, stream_ids: Sequence[str], limit: int) -> Any:
        reads.extend(stream_ids)
        return real(self, stream_ids, limit)

    monkeypatch.setattr(PushQueue, "batches", counting)

    async def scenario() -> None:
        receiver = await Receiver().start()
        streams = [env.stream(receiver.url(f"s{n}"), alg=alg) for n in range(12)]
        worker = OutboxWorker(env.ledger, env.settings, env.keys, sign_chunk=4, sign_threads=2)
        assert await asyncio.to_thread(worker.run_once) == 0  # the outbox knows the streams
        deliverer = await running(env, options(scan_interval=30.0))  # no scan meanwhile
        await until(lambda: deliverer._push_streams >= set(streams), "the first scan")
        for stream_id in streams:
            env.verify(stream_id, 1)  # one page of 12 SETs, more than the chunk of 4
        worker.add_listener(deliverer.notify_threadsafe, offered=True)
        worker.add_signature_listener(deliverer.offer_threadsafe)
        offers: list[int] = []
        worker.add_signature_listener(lambda sigs: offers.append(len(sigs)))
        try:
            assert await asyncio.to_thread(worker.run_once) == 12
            await until(drained(store, *streams), "every stream")
        finally:
            worker.close()
            await deliverer.stop()
            await receiver.stop()
        assert sum(offers) == 12
        assert max(offers) <= 4
        if alg == "ES256":
            assert offers == [4, 4, 4]
        assert sorted(reads) == sorted(streams)  # one read per stream
        assert len(receiver.hits) == len({hit.jti for hit in receiver.hits}) == 12

    run(scenario)


def test_one_black_holed_receiver_does_not_hold_up_nineteen_others(env: Env) -> None:
    store = env.store()
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
    hole_url = f"http://127.0.0.1:{hole.getsockname()[1]}/ssf/events"

    async def scenario() -> None:
        receiver = await Receiver().start()
        urls = [receiver.url(f"s{n}") for n in range(19)]
        streams = [env.stream(url) for url in urls]
        black = env.stream(hole_url)
        for stream_id in [black, *streams]:
            env.verify(stream_id, 3)
        env.outbox()
        expected = {sid: queued(store, sid) for sid in streams}
        held = queued(store, black)
        deliverer = await running(env, options(total_timeout=WAIT, drain_timeout=0.1))
        try:
            await until(drained(store, *streams), "the nineteen healthy streams")
            black_rows = queued(store, black)
            assert [r["jti"] for r in black_rows] == [r["jti"] for r in held]  # still pending
            assert all(r["dead_at"] is None for r in black_rows)
        finally:
            await deliverer.stop()
            await receiver.stop()
            hole.close()
        for url, stream_id in zip(urls, streams, strict=True):
            check_delivered(receiver.of(url), expected[stream_id])

    run(scenario)


def test_a_second_deliverer_stands_by_and_takes_over(env: Env) -> None:
    store = env.store()

    async def scenario() -> None:
        receiver = await Receiver().start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 2)
        env.outbox()
        first = await running(env, options())
        second = PushDeliverer(env.settings, options())
        try:
            await until(lambda: first.claimed, "the first claim")
            await second.start()
            await until(lambda: second.standby, "the second on standby")
            assert not second.claimed
            await until(drained(store, stream_id), "the first batch")
            await first.stop()
            await until(lambda: second.claimed, "the take-over")
            env.verify(stream_id, 2)
            env.outbox()
            await until(drained(store, stream_id), "the second batch")
            assert second.delivered == 2
        finally:
            await first.stop()
            await second.stop()
            await receiver.stop()
        assert len({h.jti for h in receiver.of(url)}) == 4

    run(scenario)


def test_a_deleted_stream_stops_and_a_stopped_deliverer_resumes_with_the_same_jtis(
    env: Env,
) -> None:
    store = env.store()
    port = free_port()
    gone = env.stream(f"http://127.0.0.1:{port}/ssf/gone")
    env.verify(gone, 2)
    env.outbox()

    async def scenario() -> None:
        receiver = Receiver()
        deliverer = await running(env, options())
        try:
            await until(
                lambda: store_says(store, lambda s: queued(s, gone)[0]["attempts"] >= 2),
                "failed attempts",
            )
            env.on_stream(gone, "delete", actor=ACTOR)
            env.outbox()
            await until(lambda: deliverer.lanes() == 0, "the deleted stream's task to end")
            assert queued(store, gone) == []
            # a stream whose receiver is down when the deliverer stops: after a restart the
            # same rows (same jtis) are delivered
            url = f"http://127.0.0.1:{port}/ssf/back"
            stream_id = env.stream(url)
            env.verify(stream_id, 3)
            env.outbox()
            expected = queued(store, stream_id)
            await until(
                lambda: store_says(store, lambda s: queued(s, stream_id)[0]["attempts"] >= 1),
                "an attempt",
            )
            await deliverer.stop()
            await receiver.start(port)
            deliverer = await running(env, options())
            await until(drained(store, stream_id), "delivery after the restart")
        finally:
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(url), expected)

    run(scenario)


def test_a_new_endpoint_or_authorization_is_tried_at_once_not_at_the_scheduled_time(
    env: Env,
) -> None:
    store = env.store()
    dead_port = free_port()
    never = RetrySchedule(base=3600, cap=3600, attempts=100)  # the schedule alone would wait

    async def wants_token(hit: Hit, nth: int) -> web.StreamResponse:
        if hit.authorization != "Bearer fixed":
            return rfc8935_error("authentication_failed", "who are you?")
        return web.Response(status=202)

    async def scenario() -> None:
        receiver = await Receiver(wants_token).start()
        stream_id = env.stream(f"http://127.0.0.1:{dead_port}/ssf/old", authorization="Bearer old")
        env.verify(stream_id, 2)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options(fast=never, slow=never))
        try:
            await until(
                lambda: store_says(store, lambda s: queued(s, stream_id)[0]["attempts"] == 1),
                "the refused connection",
            )
            url = receiver.url("new")  # the receiver moves its endpoint (PATCH delivery)
            env.on_stream(
                stream_id,
                "configure",
                operation="update",
                delivery_method=PUSH,
                endpoint_url=url,
                authorization_fingerprint=authorization_fingerprint("Bearer old"),
                events_requested=[],
                events_delivered=[],
                description=None,
                signing_alg="ES256",
                mission_capabilities=[],
                actor=ACTOR,
            )
            env.outbox()
            await until(lambda: len(receiver.hits) == 1, "the attempt at the new endpoint")
            await until(
                lambda: store_says(store, lambda s: queued(s, stream_id)[0]["slow_attempts"] == 1),
                "the authentication failure",
            )
            store.put_push_secret(stream_id, "Bearer fixed")  # and then its credentials
            await until(drained(store, stream_id), "delivery with the new credentials")
        finally:
            await deliverer.stop()
            await receiver.stop()
        hits = receiver.of(url)
        check_delivered(hits, expected)
        assert [h.authorization for h in hits] == ["Bearer old", "Bearer fixed", "Bearer fixed"]

    run(scenario)


def holding_v2(gate: asyncio.Event, seen: asyncio.Event) -> Behaviour:
    """Accept every SET, but hold the first arrival of verification ``v2`` (setting ``seen``)
    until ``gate`` opens: the store is disrupted while that request is in flight."""

    async def held(hit: Hit, nth: int) -> web.StreamResponse:
        if hit.event.get("state") == "v2" and nth == 1:
            seen.set()
            await gate.wait()
        return web.Response(status=202)

    return held


@pytest.mark.postgres
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_delivery_recovers_when_postgres_drops_every_session(env: Env) -> None:
    store = env.store()
    gate, seen = asyncio.Event(), asyncio.Event()

    async def scenario() -> None:
        receiver = await Receiver(holding_v2(gate, seen)).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 6)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options())
        try:
            await asyncio.wait_for(seen.wait(), WAIT)
            dropped = _terminate_sessions(env)
            assert dropped >= 2  # at least the deliverer's pool and its claim
            gate.set()
            await until(drained(store, stream_id), "every SET after the sessions dropped")
            await until(lambda: deliverer.claimed, "the claim taken again")
        finally:
            gate.set()
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(url), expected)

    run(scenario)


@pytest.mark.postgres
def test_delivery_resumes_after_postgres_restarts_mid_delivery(
    restartable_env: tuple[Env, ThrowawayCluster],
) -> None:
    env, cluster = restartable_env
    store = env.store()
    gate, seen = asyncio.Event(), asyncio.Event()

    async def scenario() -> None:
        receiver = await Receiver(holding_v2(gate, seen)).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 6)
        env.outbox()
        before = queued(store, stream_id)
        deliverer = await running(env, options())
        try:
            await asyncio.wait_for(seen.wait(), WAIT)
            await asyncio.to_thread(cluster.restart)  # fast shutdown: every session is cut
            gate.set()
            await until(drained(store, stream_id), "every SET after the restart")
            env.verify(stream_id, 2)  # the ledger and the outbox work on the restarted server
            env.outbox()
            after = [
                r for r in queued(store, stream_id) if r["jti"] not in {b["jti"] for b in before}
            ]
            assert len(after) == 2
            await until(drained(store, stream_id), "the SETs queued after the restart")
            await until(lambda: deliverer.claimed, "the claim taken again")
        finally:
            gate.set()
            await deliverer.stop()
            await receiver.stop()
        check_delivered(receiver.of(url), [*before, *after])

    run(scenario)


@pytest.mark.postgres
@pytest.mark.parametrize("env", ["postgres"], indirect=True)
def test_push_outcomes_and_stored_signatures_lock_rows_in_one_order(env: Env) -> None:
    """Two writers changing the same queue rows in opposite orders would deadlock (PostgreSQL
    cancels one after ``deadlock_timeout``: an outcome lost, a SET pushed again). Both take
    their row locks in ``seq`` order, so one simply waits for the other."""
    store, other = env.store(), env.store()
    stream_id = env.stream("https://hooks.example.com/ssf")
    env.verify(stream_id, 3)
    env.outbox()
    first, second, third = (row["seq"] for row in queued(store, stream_id))
    errors: list[BaseException] = []
    recorded = threading.Event()

    def record() -> None:  # outcomes in completion order: the later row first
        try:
            store.push.record([Delivered(third), Delivered(second)], datetime.now(UTC))
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            recorded.set()

    b = other._b
    with b.writing() as tx:
        tx.lock_queue_rows("seq", [second])  # held while the outcomes are being written
        thread = threading.Thread(target=record)
        thread.start()
        time.sleep(0.3)  # the writer now waits for `second`, holding nothing else
        tx.execute(b.sql("UPDATE {queue} SET attempts = attempts WHERE seq = ?"), [third])
    thread.join(timeout=WAIT)
    assert recorded.is_set()
    assert errors == []
    assert [row["seq"] for row in queued(store, stream_id)] == [first]


def test_rows_dropped_with_their_streams_are_locked_in_the_deliverers_order(env: Env) -> None:
    """A page that deletes streams drops their queued rows. Deleting them stream by stream
    would lock rows out of ``seq`` order: with another stream's outcome write between them,
    PostgreSQL found a deadlock and cancelled the outcomes (a SET pushed again). The page
    locks the rows in ``seq`` order first, so the outcome write just waits."""
    store, other = env.store(), env.store()
    a = env.stream("https://hooks.example.com/a")
    b = env.stream("https://hooks.example.com/b")
    for _ in range(2):  # a1 < b1 < a2 < b2 in seq order
        env.verify(a, 1)
        env.verify(b, 1)
        env.outbox()
    a1, a2 = (row["seq"] for row in queued(store, a))
    b1, b2 = (row["seq"] for row in queued(store, b))
    assert a1 < b1 < a2 < b2
    env.on_stream(a, "delete", actor=ACTOR)
    env.on_stream(b, "delete", actor=ACTOR)
    errors: list[BaseException] = []
    folded = threading.Event()

    def fold() -> None:  # the page that drops both streams' rows
        try:
            env.outbox()
        except BaseException as error:  # reported by the assertion below
            errors.append(error)
        finally:
            folded.set()

    tx_backend = other._b
    with tx_backend.writing() as tx:  # the deliverer's outcome write, holding b1 first
        tx.lock_queue_rows("seq", [b1])
        thread = threading.Thread(target=fold)
        thread.start()
        time.sleep(0.3)  # the page now waits for b1 (holding only a1, or nothing)
        tx.lock_queue_rows("seq", [a2])  # the outcome write's next row
    thread.join(timeout=WAIT)
    assert folded.is_set()
    assert errors == []
    assert queued(store, a) == []
    assert queued(store, b) == []


def _terminate_sessions(env: Env) -> int:
    """What a PostgreSQL restart looks like to the transmitter: every session of THIS test
    (named by PGAPPNAME) is terminated; other test runs sharing the server are untouched."""
    assert env.admin_url is not None
    assert env.app_name is not None
    with psycopg.connect(env.admin_url, autocommit=True, application_name="mlpush_admin") as c:
        row = c.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            [env.app_name],
        ).fetchone()
    assert row is not None
    return int(row[0])


# ---------------------------------------------------------------------------------------------
# The operator's commands
# ---------------------------------------------------------------------------------------------


def test_streams_dead_letters_and_redeliver_on_the_command_line(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    store = env.store()
    refuse = {"on": True}

    async def picky(hit: Hit, nth: int) -> web.StreamResponse:
        if refuse["on"] and hit.event.get("state") in ("v0", "v2"):
            return rfc8935_error("invalid_audience", "not for us")
        return web.Response(status=202)

    if env.settings.database_url is not None:
        storage = ["--database-url", env.settings.database_url]
    else:
        storage = ["--data", str(env.settings.data_dir)]

    def cli(*args: str) -> tuple[int, str]:
        code = cli_main([*args, *storage])
        return code, capsys.readouterr().out

    async def scenario() -> None:
        receiver = await Receiver(picky).start()
        url = receiver.url()
        stream_id = env.stream(url)
        env.verify(stream_id, 4)
        env.outbox()
        expected = queued(store, stream_id)
        deliverer = await running(env, options())
        try:
            await until(drained(store, stream_id), "the live queue")
            code, out = await asyncio.to_thread(cli, "streams", "dead-letters", stream_id, "--json")
            assert code == 0, out
            listed = json.loads(out)
            assert [d["jti"] for d in listed] == [expected[0]["jti"], expected[2]["jti"]]
            assert listed[0]["last_error"].endswith("invalid_audience: not for us")
            assert listed[0]["attempts"] == 1
            code, text = await asyncio.to_thread(cli, "streams", "dead-letters", stream_id)
            assert code == 0
            assert expected[0]["jti"] in text
            assert "invalid_audience" in text
            code, out = await asyncio.to_thread(
                cli, "streams", "redeliver", stream_id, "--jti", uuid.uuid4().hex
            )
            assert code == 3, out  # not a dead letter of this stream: nothing changes
            refuse["on"] = False
            code, out = await asyncio.to_thread(
                cli, "streams", "redeliver", stream_id, "--jti", expected[2]["jti"], "--json"
            )
            assert code == 0, out
            assert json.loads(out)["redelivered"] == [expected[2]["jti"]]
            await until(drained(store, stream_id), "the first redelivery")
            code, out = await asyncio.to_thread(cli, "streams", "redeliver", stream_id, "--all")
            assert code == 0, out
            await until(drained(store, stream_id), "the second redelivery")
            assert store.push.dead_letters(stream_id) == []
        finally:
            await deliverer.stop()
            await receiver.stop()
        jtis = [h.jti for h in receiver.of(url)]
        assert jtis == [e["jti"] for e in expected] + [expected[2]["jti"], expected[0]["jti"]]

    run(scenario)
