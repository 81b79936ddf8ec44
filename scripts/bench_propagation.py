"""Benchmark how fast a revocation reaches SSF push receivers, against polling the Authority.

Run through ``scripts/bench-propagation``, which prepares the virtualenv and a PostgreSQL database
and passes its URL in ``MISSION_LEDGER_BENCH_PROPAGATION_DATABASE_URL``. For every backend it
starts the real server (``python -m mission_ledger serve --port 0 --allow-insecure-push
--allow-private-push-targets``, on a fresh SQLite data directory or a fresh PostgreSQL schema)
and ONE separate receiver process (this script with ``--receiver-process``) that hosts a push
endpoint per receiver (``/r/{alg}/{i}``), verifies every SET with the receiver SDK
(:class:`~mission_ledger.receiver.SetVerifier` against the server's JWKS, algorithm pinned) and
records, just before it answers 202, the wall-clock time (``time.time_ns``) with the SET's
Mission and event type (by jti: a SET delivered twice counts once). Then, for each signing
algorithm × number of receivers N:

1. **Revoke → receiver 202**: N receiver principals each create a push stream (``mission-revoked``,
   ``-suspended``, ``-resumed``) through the SSF API; Missions are revoked one at a time over
   HTTP, each after the previous one reached all N receivers. Latency = receipt time minus the
   ``MissionRevoked`` event's timestamp from ``GET /missions/{id}/events`` (taken by the ledger
   when the command built the event, just before its transaction committed: the figure slightly
   overstates the commit → 202 time). Reported per delivery ("each") and per revocation until
   the last of the N receivers had it ("all").
2. **Sustained fan-out**: suspend/resume commands over HTTP (4 concurrent clients) for
   ``--seconds``, each command causing N SETs, while at most ``max(8 N, 256)`` SETs are
   outstanding (issued but not yet received, so the transmitter always has work and the backlog
   stays bounded); SETs/s received in the window after a warm-up.

Once per backend (RS256), **one black-holed receiver among** ``--blackhole`` (20): N-1 healthy
streams are measured as in 1. (150 revocations each way, or three times ``--revocations`` if
that is fewer), in five blocks alone alternating with five blocks where
receiver N-1's stream points at a socket that accepts connections and never reads or answers
(each push to it holds a delivery slot until the 10 s total timeout); the healthy receivers' p99
with the black hole is judged against their p99 without it (within 1.25x, or within the highest
p99 of a single block without it: how much a p99 of this size varies anyway here).

Baselines measured in the same run: ``sign_set`` of the example ``mission-revoked`` SET with a
key of the default size (RS256: ``keys.DEFAULT_RSA_BITS``) in 1 and 2 threads, for the
configuration's algorithm, just before each fan-out window (the machine's speed drifts: a
fan-out is compared with the signing rate of the same minute); and the staleness a Service sees
when it polls the AgentPass authorization-check (``POST /agentpass/authorization-check``) every
1 s: measured (pollers with random phases, Missions revoked while they poll; staleness =
first 404 received minus the revocation's event timestamp), and for 1 s and 30 s computed by a
model (a uniform phase plus a response time drawn from the measured polls).

Targets: with 100 receivers and RS256, revoke → every receiver p99 <= 50 ms on both backends;
sustained fan-out >= 80% of the machine's RS256 signing rate (the better of 1 and 2 threads).
The machine is shared and noisy: read the ratios, not the absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import bisect
import json
import os
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench_check import ServerProcess, percentile, process_cpu
from bench_ledger import _machine_busy, _url_without_schema, fresh_settings, progress

ENV_URL = "MISSION_LEDGER_BENCH_PROPAGATION_DATABASE_URL"
ISSUER = "https://authority.bench.example"  # serve --issuer; every SET's iss
ROOT = Path(__file__).resolve().parent.parent
NS = "https://schemas.mission-ledger.dev/secevent/mission/event-type/"
EVENTS_REQUESTED = [NS + "mission-revoked", NS + "mission-suspended", NS + "mission-resumed"]
PUSH_METHOD = "urn:ietf:rfc:8935"
RESOURCE = "https://erp.example.com/invoices"  # every benchmark Mission's one resource
ALGS = ("RS256", "ES256")
TARGET_RECEIVERS = 100
TARGET_P99_MS = 50.0
TARGET_FANOUT_RATIO = 0.80
FANOUT_CLIENTS = 4  # concurrent HTTP clients issuing lifecycle commands
FANOUT_MISSIONS = 16  # Missions the commands cycle over (4 per client)
WARMUP_REVOCATIONS = 2  # unmeasured revocations before each latency series
BLACKHOLE_REVOCATIONS = 150  # per side of the black-hole comparison (fewer with --revocations)
POLL_INTERVAL = 1.0  # seconds: the measured polling baseline
MODEL_INTERVALS = (1.0, 30.0)  # seconds: the polling intervals computed by the model
MODEL_DRAWS = 100_000
WAIT_TIMEOUT = 60.0  # seconds one revocation may take to reach every receiver


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def wall_ns(text: str) -> int:
    """An RFC 3339 timestamp (the ledger's, microseconds) as wall-clock nanoseconds."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000


def proposal(tag: str, n: int) -> dict[str, Any]:
    """A Mission proposal whose one resource is under every benchmark receiver's prefix."""
    return {
        "user": f"user:bench-{tag}",
        "agent": f"agent:bench-{tag}",
        "task": {"id": f"task-{tag}-{n}", "description": "propagation benchmark mission"},
        "intent": {
            "goal": "read the benchmark invoices",
            "resources": [RESOURCE],
            "expires_at": "2099-01-01T00:00:00Z",
        },
        "authority_set": [
            {"type": "mission_resource_access", "resource": RESOURCE, "actions": ["invoices.read"]}
        ],
    }


# ------------------------------------------------------------------------------------------------
# The receiver process: N push endpoints, every SET verified, receipts recorded
# ------------------------------------------------------------------------------------------------


class Receipts:
    """What the receiver process saw: receipt times by (Mission, event type), waiters on counts."""

    def __init__(self) -> None:
        self.times: list[int] = []  # time.time_ns() of every first delivery, in arrival order
        self.by_key: dict[tuple[str, str], list[tuple[int, int]]] = {}  # → [(receiver, t_ns)]
        self.jtis: set[str] = set()
        self.duplicates = 0
        self.refused = 0  # answers other than 202 (a SET that failed verification, …)
        self.first_refusal = ""
        self.by_type: dict[str, int] = {}  # first deliveries per event type (short name)
        self._waiters: list[tuple[tuple[str, str], int, asyncio.Future[None]]] = []

    def record(self, receiver: int, verified: Any) -> None:
        t_ns = time.time_ns()
        if verified.jti in self.jtis:
            self.duplicates += 1  # at-least-once delivery: the same SET again
            return
        self.jtis.add(verified.jti)
        self.times.append(t_ns)
        short = verified.event_type.rsplit("/", 1)[-1]
        subject = verified.sub_id.get("id")
        self.by_type[short] = self.by_type.get(short, 0) + 1
        keys = [("*", short)]
        if isinstance(subject, str):
            keys.append((subject, short))
        for key in keys:
            self.by_key.setdefault(key, []).append((receiver, t_ns))
        if self._waiters:
            self._wake(keys)

    def _wake(self, keys: list[tuple[str, str]]) -> None:
        still = []
        for key, count, future in self._waiters:
            if key in keys and len(self.by_key.get(key, ())) >= count and not future.done():
                future.set_result(None)
            elif not future.done():
                still.append((key, count, future))
        self._waiters = still

    async def wait(self, key: tuple[str, str], count: int, timeout: float) -> bool:
        if len(self.by_key.get(key, ())) >= count:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((key, count, future))
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        return True

    def between(self, start_ns: int, end_ns: int) -> int:
        ordered = sorted(self.times)
        return bisect.bisect_right(ordered, end_ns) - bisect.bisect_left(ordered, start_ns)


def receiver_process(config_json: str) -> int:
    """Serve ``/r/{alg}/{i}`` push endpoints (the SDK's push_handler, one SetVerifier pinned to
    ``alg`` per receiver audience) and ``/_bench/*`` for the orchestrator; stop on SIGTERM."""
    import aiohttp
    from aiohttp import web

    from mission_ledger.receiver import SetVerifier, push_handler

    config = json.loads(config_json)
    receipts = Receipts()

    def recorder(receiver: int) -> Callable[[Any], None]:
        return lambda verified: receipts.record(receiver, verified)

    async def main() -> None:
        session = aiohttp.ClientSession()
        handlers: dict[tuple[str, str], Callable[[web.Request], Any]] = {}
        for alg in config["algs"]:
            for i, audience in enumerate(config["audiences"]):
                verifier = SetVerifier(
                    config["issuer"],
                    audience,
                    config["jwks_uri"],
                    session,
                    algorithms=(alg,),
                    allow_http=True,
                )
                handlers[(alg, str(i))] = push_handler(verifier, recorder(i))

        async def push(request: web.Request) -> web.StreamResponse:
            handler = handlers.get((request.match_info["alg"], request.match_info["i"]))
            if handler is None:
                raise web.HTTPNotFound()
            response: web.StreamResponse = await handler(request)
            if response.status != 202:
                receipts.refused += 1
                receipts.first_refusal = receipts.first_refusal or (
                    f"{response.status} {getattr(response, 'text', '')}"
                )
            return response

        async def wait(request: web.Request) -> web.StreamResponse:
            q = request.query
            key = (q.get("mission", "*"), q["type"])
            ok = await receipts.wait(key, int(q["count"]), float(q["timeout"]))
            records = receipts.by_key.get(key, []) if key[0] != "*" else []
            return web.json_response({"ok": ok, "records": records})

        async def stats(request: web.Request) -> web.StreamResponse:
            q = request.query
            body: dict[str, Any] = {
                "received": len(receipts.times),
                "duplicates": receipts.duplicates,
                "refused": receipts.refused,
                "first_refusal": receipts.first_refusal,
                "by_type": receipts.by_type,
            }
            if "from_ns" in q:
                body["between"] = receipts.between(int(q["from_ns"]), int(q["to_ns"]))
            return web.json_response(body)

        app = web.Application()
        app.router.add_post("/r/{alg}/{i}", push)
        app.router.add_get("/_bench/wait", wait)
        app.router.add_get("/_bench/stats", stats)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        print(f"listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()
        await session.close()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------------------------------------
# The signing baseline
# ------------------------------------------------------------------------------------------------


def signing_rate(alg: str, threads: int, seconds: float) -> float:
    """``sign_set`` calls/s of the example ``mission-revoked`` SET with a default ``alg`` key."""
    from mission_ledger.ssf.keys import MemoryKeyStore
    from mission_ledger.ssf.rfc8417_set import sign_set

    example = json.loads((ROOT / "ssf" / "examples" / "mission-revoked.json").read_text())
    claims = example["claims"]
    key = MemoryKeyStore().active(alg)  # the default size (keys.DEFAULT_RSA_BITS), as served
    sign_set(claims, key)
    counts = [0] * threads
    start = threading.Barrier(threads + 1)
    end = [0.0]

    def run(slot: int) -> None:
        start.wait()
        n = 0
        while time.perf_counter() < end[0]:
            sign_set(claims, key)
            n += 1
        counts[slot] = n

    workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    t0 = time.perf_counter()
    end[0] = t0 + seconds
    start.wait()
    for worker in workers:
        worker.join()
    return sum(counts) / (time.perf_counter() - t0)


# ------------------------------------------------------------------------------------------------
# Talking to the server and the receiver process
# ------------------------------------------------------------------------------------------------


class Api:
    """JSON over HTTP to one base URL; the operator's token unless another is given."""

    def __init__(self, session: Any, base: str, token: str | None) -> None:
        self.session = session
        self.base = base
        self.token = token

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
    ) -> Any:
        headers = {}
        bearer = token or self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        async with self.session.request(
            method, self.base + path, json=body, headers=headers
        ) as resp:
            text = await resp.text()
            if resp.status not in ok:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:300]}")
            return json.loads(text) if text else None


async def bounded(count: int, step: Callable[[int], Any], parallel: int = 8) -> None:
    """``await step(i)`` for i in 0..count-1, ``parallel`` at a time."""
    queue = list(range(count))

    async def worker() -> None:
        while queue:
            await step(queue.pop(0))

    await asyncio.gather(*(worker() for _ in range(min(parallel, count))))


async def create_missions(api: Api, count: int, tag: str) -> list[str]:
    """Propose and approve ``count`` Missions (8 at a time); their ids, in order."""
    ids: list[str] = [""] * count

    async def one(n: int) -> None:
        made = await api.call("POST", "/proposals", proposal(tag, n))
        approved = await api.call("POST", f"/proposals/{made['proposal_id']}/approve", {})
        ids[n] = approved["mission_id"]

    await bounded(count, one)
    return ids


async def revoked_at(api: Api, mission_id: str) -> int:
    """Wall-clock ns of the Mission's ``MissionRevoked`` event (the ledger's timestamp)."""
    history = await api.call("GET", f"/missions/{mission_id}/events")
    for event in reversed(history["events"]):
        if event["type"] == "MissionRevoked":
            return wall_ns(event["timestamp"])
    raise RuntimeError(f"Mission {mission_id} has no MissionRevoked event")


def mint_principals(settings: Any, count: int) -> tuple[list[str], str]:
    """``count`` receiver principals (receiver i: audience ``https://receiver-i.bench.example``)
    and one Service principal for the polling baseline, created as ``tokens create`` does, in
    this process against the running server's store; their tokens."""
    from mission_ledger.bootstrap import open_ledger
    from mission_ledger.principals import PrincipalRegistry

    ledger = open_ledger(settings)
    try:
        registry = PrincipalRegistry(ledger)

        def create(name: str, audience: str) -> str:
            _, token = registry.create(
                role="receiver",
                name=name,
                actor="operator:bench-propagation",
                audience=audience,
                resources=["https://erp.example.com/"],
            )
            return token

        tokens = [
            create(f"bench-receiver-{i}", f"https://receiver-{i}.bench.example")
            for i in range(count)
        ]
        service = create("bench-service", "https://service.bench.example")
    finally:
        ledger.close()
    return tokens, service


@dataclass
class Bench:
    """One backend's running pieces."""

    backend: str
    api: Api  # the server, operator token
    receiver: Api  # the receiver process's /_bench endpoints
    receiver_url: str
    tokens: list[str]  # receiver principals
    service_token: str
    server: ServerProcess
    receiver_proc: ServerProcess
    series: int = 0  # Mission series created so far (each gets its own proposal tag)

    def tag(self, what: str) -> str:
        self.series += 1
        return f"{self.backend}-{what}-{self.series}"

    async def stats(self, query: str = "") -> dict[str, Any]:
        result: dict[str, Any] = await self.receiver.call("GET", "/_bench/stats" + query)
        return result


async def open_streams(b: Bench, alg: str, n: int) -> dict[int, str]:
    """N push streams (receiver i → ``/r/{alg}/{i}``); then a verification SET each, waited for:
    it warms the connections, the receivers' JWKS caches and the delivery lanes."""
    streams: dict[int, str] = {}

    async def create(i: int) -> None:
        config = await b.api.call(
            "POST",
            "/ssf/stream",
            {
                "description": f"bench-propagation receiver {i}",
                "events_requested": EVENTS_REQUESTED,
                "delivery": {
                    "method": PUSH_METHOD,
                    "endpoint_url": f"{b.receiver_url}/r/{alg}/{i}",
                },
                "set_signing_alg": alg,
            },
            token=b.tokens[i],
        )
        streams[i] = config["stream_id"]

    await bounded(n, create)
    before = (await b.stats())["by_type"].get("verification", 0)

    async def verify(i: int) -> None:
        body = {"stream_id": streams[i], "state": f"warm-{streams[i]}"}
        await b.api.call("POST", "/ssf/verify", body, token=b.tokens[i])

    await bounded(n, verify)
    done = await b.receiver.call(
        "GET", f"/_bench/wait?type=verification&count={before + n}&timeout={WAIT_TIMEOUT}"
    )
    if not done["ok"]:
        raise RuntimeError(f"{n} verification SETs did not all arrive: {await b.stats()}")
    return streams


async def close_streams(b: Bench, streams: dict[int, str]) -> None:
    """Delete the streams (their queued SETs are dropped)."""

    async def delete(i: int) -> None:
        await b.api.call("DELETE", f"/ssf/stream?stream_id={streams[i]}", token=b.tokens[i])

    await bounded(len(streams), delete)


async def open_blackhole_stream(b: Bench, alg: str, i: int, url: str) -> str:
    """Receiver i's push stream to ``url`` (a socket that accepts and never answers)."""
    config = await b.api.call(
        "POST",
        "/ssf/stream",
        {
            "description": f"bench-propagation black-holed receiver {i}",
            "events_requested": EVENTS_REQUESTED,
            "delivery": {"method": PUSH_METHOD, "endpoint_url": url},
            "set_signing_alg": alg,
        },
        token=b.tokens[i],
    )
    return str(config["stream_id"])


BLACKHOLE_BLOCKS = 5  # alternating blocks with and without the black-holed stream, each


@dataclass
class Blackhole:
    """The healthy receivers' latency without and with a black-holed one, measured in
    alternating blocks (so the machine's drift falls on both alike)."""

    healthy: int
    alone: Latency  # every block without it, merged
    holed: Latency  # every block with it, merged
    alone_blocks_p99: list[float]  # each block's p99 without it: how much p99 varies anyway

    @property
    def bound(self) -> float:
        """Beyond noise: over 1.25 x the p99 without it, and over every block's p99 without it."""
        return max(1.25 * percentile(self.alone.all_ms, 0.99), *self.alone_blocks_p99)

    @property
    def within_noise(self) -> bool:
        return self.holed.missing == 0 and percentile(self.holed.all_ms, 0.99) <= self.bound


def _merge(parts: list[Latency]) -> Latency:
    return Latency(
        [x for p in parts for x in p.each_ms],
        [x for p in parts for x in p.all_ms],
        [x for p in parts for x in p.response_ms],
        sum(p.missing for p in parts),
    )


async def measure_blackhole(b: Bench, alg: str, n: int, revocations: int) -> Blackhole:
    """N-1 healthy streams, measured as in 1. in blocks that alternate between the healthy
    streams alone and with receiver N-1's stream pointing at a black hole (a socket that
    accepts connections and never reads or answers: each push to it holds a delivery slot
    until the total timeout)."""
    healthy = n - 1
    per_block = max(10, min(3 * revocations, BLACKHOLE_REVOCATIONS) // BLACKHOLE_BLOCKS)
    streams = await open_streams(b, alg, healthy)
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/ssf/events"
    alone: list[Latency] = []
    holed: list[Latency] = []
    try:
        for _ in range(BLACKHOLE_BLOCKS):
            alone.append(await measure_latency(b, healthy, per_block))
            holed_stream = await open_blackhole_stream(b, alg, healthy, url)
            holed.append(await measure_latency(b, healthy, per_block))
            await b.api.call(
                "DELETE", f"/ssf/stream?stream_id={holed_stream}", token=b.tokens[healthy]
            )
    finally:
        hole.close()
        await close_streams(b, streams)
    blocks_p99 = [percentile(block.all_ms, 0.99) for block in alone]
    return Blackhole(healthy, _merge(alone), _merge(holed), blocks_p99)


# -- 1. revoke → every receiver's 202 -----------------------------------------------------------


@dataclass
class Latency:
    each_ms: list[float]  # every delivery: receipt − the revocation's event timestamp
    all_ms: list[float]  # every revocation: the last of the N receipts − the event timestamp
    response_ms: list[float]  # the revoke's HTTP response received − the event timestamp
    missing: int  # deliveries that did not arrive within WAIT_TIMEOUT


async def measure_latency(b: Bench, n: int, revocations: int) -> Latency:
    count = revocations + WARMUP_REVOCATIONS
    missions = await create_missions(b.api, count, b.tag("latency"))
    rng = random.Random(count * 7919 + n)
    samples: list[tuple[str, int, list[list[int]]]] = []
    for k, mission in enumerate(missions):
        await b.api.call("POST", f"/missions/{mission}/revoke", {"reason": "benchmark"})
        t_response = time.time_ns()
        got = await b.receiver.call(
            "GET",
            f"/_bench/wait?mission={mission}&type=mission-revoked&count={n}&timeout={WAIT_TIMEOUT}",
        )
        if k >= WARMUP_REVOCATIONS:
            samples.append((mission, t_response, got["records"]))
        await asyncio.sleep(rng.uniform(0.01, 0.03))  # spaced; no phase-lock with pollers
    result = Latency([], [], [], 0)
    for mission, t_response, records in samples:
        t_commit = await revoked_at(b.api, mission)
        times = [t_ns for _, t_ns in records]
        result.each_ms.extend((t - t_commit) / 1e6 for t in times)
        result.response_ms.append((t_response - t_commit) / 1e6)
        if len(times) >= n:
            result.all_ms.append((max(times) - t_commit) / 1e6)
        else:
            result.missing += n - len(times)
    return result


# -- 2. sustained fan-out -----------------------------------------------------------------------


@dataclass
class Fanout:
    rate: float  # SETs/s received in the measured window
    window: int  # the most SETs outstanding (issued, not yet received)
    fill: float  # mean outstanding SETs over the window, as a share of ``window``
    commands_rate: float  # lifecycle commands/s completed in the window
    command_p50_ms: float  # their latency (the HTTP command, answered)
    server_cpu: float  # cores
    receiver_cpu: float
    client_cpu: float  # this script: the command clients and the receipt counter
    machine_cpu: float
    backlog: int  # SETs issued but not received when the commands stopped
    errors: int
    window_sets: int

    @property
    def transmitter_bound(self) -> bool:
        """The backlog stayed mostly full: the transmitter, not the commands, set the pace."""
        return self.fill >= 0.5


@dataclass
class _Snapshot:
    wall_ns: int
    server: float | None
    receiver: float | None
    own: float
    machine: tuple[float, float] | None

    @classmethod
    def take(cls, b: Bench) -> _Snapshot:
        return cls(
            time.time_ns(),
            process_cpu(b.server.proc.pid),
            process_cpu(b.receiver_proc.proc.pid),
            time.process_time(),
            _machine_busy(),
        )


def _cores(a: float | None, b: float | None, seconds: float) -> float:
    return float("nan") if a is None or b is None else (b - a) / seconds


async def measure_fanout(b: Bench, n: int, seconds: float) -> Fanout:
    missions = await create_missions(b.api, FANOUT_MISSIONS, b.tag("fanout"))
    window = max(8 * n, 256)
    base = int((await b.stats())["received"])
    state = {"received": base, "issued": 0, "errors": 0}
    fill: list[int] = []  # outstanding SETs, sampled in the window
    command_ms: list[float] = []  # commands finished in the window
    done = asyncio.Event()
    warmup = min(1.0, seconds / 4)
    t0 = time.monotonic()
    t_warm, t_end = t0 + warmup, t0 + seconds

    def outstanding() -> int:
        return state["issued"] - (state["received"] - base)

    async def follow() -> None:
        while not done.is_set():
            state["received"] = (await b.stats())["received"]
            if t_warm <= time.monotonic() <= t_end:
                fill.append(outstanding())
            await asyncio.sleep(0.01)

    async def client(mine: list[str]) -> None:
        active = dict.fromkeys(mine, True)
        k = 0
        while time.monotonic() < t_end:
            if outstanding() >= window:
                await asyncio.sleep(0.005)
                continue
            mission = mine[k % len(mine)]
            k += 1
            op = "suspend" if active[mission] else "resume"
            state["issued"] += n  # before the request: its SETs may arrive before the answer
            sent = time.monotonic()
            try:
                await b.api.call("POST", f"/missions/{mission}/{op}", {})
            except RuntimeError:
                state["issued"] -= n
                state["errors"] += 1
                continue
            active[mission] = not active[mission]
            if t_warm <= time.monotonic() <= t_end:
                command_ms.append((time.monotonic() - sent) * 1000)

    async def meter() -> tuple[_Snapshot, _Snapshot]:
        await asyncio.sleep(max(0.0, t_warm - time.monotonic()))
        first = _Snapshot.take(b)
        await asyncio.sleep(max(0.0, t_end - time.monotonic()))
        return first, _Snapshot.take(b)

    follower = asyncio.ensure_future(follow())
    metered = asyncio.ensure_future(meter())
    await asyncio.gather(*(client(missions[c::FANOUT_CLIENTS]) for c in range(FANOUT_CLIENTS)))
    s0, s1 = await metered
    done.set()
    await follower
    stats = await b.stats(f"?from_ns={s0.wall_ns}&to_ns={s1.wall_ns}")
    span = (s1.wall_ns - s0.wall_ns) / 1e9
    machine = (
        (s1.machine[0] - s0.machine[0]) / span
        if s0.machine is not None and s1.machine is not None
        else float("nan")
    )
    if stats["refused"]:
        raise RuntimeError(f"the receivers refused SETs: {stats['first_refusal']}")
    return Fanout(
        rate=stats["between"] / span,
        window=window,
        fill=(sum(fill) / len(fill) / window) if fill else 0.0,
        commands_rate=len(command_ms) / span,
        command_p50_ms=percentile(command_ms, 0.5),
        server_cpu=_cores(s0.server, s1.server, span),
        receiver_cpu=_cores(s0.receiver, s1.receiver, span),
        client_cpu=_cores(s0.own, s1.own, span),
        machine_cpu=machine,
        backlog=state["issued"] - (stats["received"] - base),
        errors=state["errors"],
        window_sets=stats["between"],
    )


# -- the baseline: polling the AgentPass authorization-check ------------------------------------


async def measure_polling(b: Bench, pollers: int) -> tuple[list[float], list[float]]:
    """Pollers (one Mission each, independent uniformly random phases: a fresh seed per run)
    call the AgentPass check every POLL_INTERVAL; the Missions are revoked one by one while they
    poll. Returns (staleness ms, response ms)."""
    missions = await create_missions(b.api, pollers, b.tag("poll"))
    rng = random.SystemRandom()
    responses: list[float] = []
    first_404: dict[str, int] = {}
    t_start = time.monotonic() + 0.1
    deadline = [float("inf")]

    async def poll(mission: str) -> None:
        next_at = t_start + rng.uniform(0.0, POLL_INTERVAL)
        body = {"authorization_id": mission}
        while time.monotonic() < deadline[0]:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            t_send = time.perf_counter()
            answer = await b.api.call(
                "POST", "/agentpass/authorization-check", body, token=b.service_token, ok=(200, 404)
            )
            responses.append((time.perf_counter() - t_send) * 1000)
            if "scope" not in answer:
                first_404[mission] = time.time_ns()
                return
            next_at += POLL_INTERVAL

    tasks = [asyncio.ensure_future(poll(m)) for m in missions]
    await asyncio.sleep(0.1 + POLL_INTERVAL + 0.2)  # every poller has seen its Mission active
    for mission in missions:
        await b.api.call("POST", f"/missions/{mission}/revoke", {"reason": "benchmark"})
        await asyncio.sleep(POLL_INTERVAL / pollers)
    deadline[0] = time.monotonic() + 3 * POLL_INTERVAL
    await asyncio.gather(*tasks)
    staleness = [
        (first_404[m] - await revoked_at(b.api, m)) / 1e6 for m in missions if m in first_404
    ]
    if len(staleness) < len(missions):
        raise RuntimeError(f"{len(missions) - len(staleness)} pollers never saw their revocation")
    return staleness, responses


def polling_model(interval: float, responses_ms: list[float], draws: int) -> list[float]:
    """Staleness of a poll every ``interval`` s: the revocation lands at a uniformly random
    phase of the poll cycle, and the next poll's answer takes a measured response time."""
    rng = random.Random(int(interval * 1000))
    return [rng.uniform(0.0, interval * 1000) + rng.choice(responses_ms) for _ in range(draws)]


# ------------------------------------------------------------------------------------------------
# The table
# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    alg: str
    receivers: str
    what: str
    p50: float | None = None
    p99: float | None = None
    max: float | None = None
    rate: float | None = None
    ratio: float | None = None
    note: str = ""


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}"


def format_table(rows: list[Row]) -> list[str]:
    header = (
        f"{'backend':<9}{'alg':<7}{'N':>4}  {'measurement':<38}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'max ms':>9}{'SETs/s':>9}{'vs base':>9}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rate = "-" if r.rate is None else f"{r.rate:,.0f}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x" if r.ratio >= 0.01 else "<0.01x"
        lines.append(
            f"{r.backend:<9}{r.alg:<7}{r.receivers:>4}  {r.what:<38}{_ms(r.p50):>9}"
            f"{_ms(r.p99):>9}{_ms(r.max):>9}{rate:>9}{ratio:>9}  {r.note}".rstrip()
        )
    return lines


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)
    # (backend, alg, N) → results, for the verdicts
    latency: dict[tuple[str, str, int], Latency] = field(default_factory=dict)
    fanout: dict[tuple[str, str, int], Fanout] = field(default_factory=dict)
    # (backend, alg, N) → {threads: sign_set/s}, measured just before that config's fan-out
    signing: dict[tuple[str, str, int], dict[int, float]] = field(default_factory=dict)
    rsa_bits: dict[str, list[int]] = field(default_factory=dict)  # the server's RSA key sizes


def machine_rate(rates: dict[int, float]) -> float:
    """The machine's signing rate: the better of one thread and two."""
    return max(rates.values())


# ------------------------------------------------------------------------------------------------
# One backend
# ------------------------------------------------------------------------------------------------


def _server_argv(storage: list[str], args: argparse.Namespace) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "mission_ledger",
        "serve",
        "--port",
        "0",
        *storage,
        "--issuer",
        ISSUER,
        "--allow-insecure-push",
        "--allow-private-push-targets",
        "--min-verification-interval",
        "0",
        "--log-level",
        "warning",
    ]
    if args.push_concurrency:
        argv += ["--push-concurrency", str(args.push_concurrency)]
    return argv


def run_backend(backend: str, args: argparse.Namespace, report: Report) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="ml-bench-propagation-"))
    with fresh_settings(backend, args.database_url) as settings:
        if backend == "sqlite":
            storage = ["--data", str(settings.data_dir)]
        else:
            assert settings.database_url is not None
            storage = ["--database-url", settings.database_url]
        progress(f"{backend}: starting the server")
        server = ServerProcess.start("server", _server_argv(storage, args), workdir, None)
        receiver: ServerProcess | None = None
        try:
            token = server.token()
            most = max(*args.receivers, args.blackhole)
            progress(f"{backend}: {most} receiver principals and a Service principal")
            tokens, service = mint_principals(settings, most)
            config = {
                "issuer": ISSUER,
                "jwks_uri": f"{server.url}/jwks.json",
                "audiences": [f"https://receiver-{i}.bench.example" for i in range(most)],
                "algs": args.algs,
            }
            receiver = ServerProcess.start(
                "receiver",
                [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--receiver-process",
                    json.dumps(config),
                ],
                workdir,
                None,
            )
            asyncio.run(
                _run_backend(backend, args, report, server, receiver, token, tokens, service)
            )
        finally:
            if receiver is not None:
                receiver.close()
            server.close()
            shutil.rmtree(workdir, ignore_errors=True)


async def _run_backend(
    backend: str,
    args: argparse.Namespace,
    report: Report,
    server: ServerProcess,
    receiver: ServerProcess,
    token: str,
    tokens: list[str],
    service: str,
) -> None:
    import aiohttp

    connector = aiohttp.TCPConnector(limit=64)
    timeout = aiohttp.ClientTimeout(total=WAIT_TIMEOUT + 30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        b = Bench(
            backend=backend,
            api=Api(session, server.url, token),
            receiver=Api(session, receiver.url, None),
            receiver_url=receiver.url,
            tokens=tokens,
            service_token=service,
            server=server,
            receiver_proc=receiver,
        )
        first_row = len(report.rows)
        jwks = await b.api.call("GET", "/jwks.json")
        report.rsa_bits[backend] = sorted(
            {len(_b64(k["n"])) * 8 for k in jwks["keys"] if k.get("kty") == "RSA"}
        )
        progress(f"{backend}: polling baseline, {args.pollers} Services every {POLL_INTERVAL:g} s")
        staleness, responses = await measure_polling(b, args.pollers)
        poll_p50 = percentile(staleness, 0.50)
        report.rows.append(
            Row(
                backend,
                "-",
                "-",
                f"baseline: poll every {POLL_INTERVAL:g} s, measured",
                percentile(staleness, 0.50),
                percentile(staleness, 0.99),
                max(staleness),
                ratio=1.0,
                note=f"measured, n={len(staleness)}; poll answered in p50 "
                f"{percentile(responses, 0.5):.1f} ms",
            )
        )
        for interval in MODEL_INTERVALS:
            modelled = polling_model(interval, responses, args.model_draws)
            report.rows.append(
                Row(
                    backend,
                    "-",
                    "-",
                    f"baseline: poll every {interval:g} s, model",
                    percentile(modelled, 0.50),
                    percentile(modelled, 0.99),
                    max(modelled),
                    ratio=percentile(modelled, 0.50) / poll_p50,
                    note="computed: uniform phase + measured response time",
                )
            )
        for alg in args.algs:
            for n in args.receivers:
                progress(f"{backend} {alg} N={n}: {n} push streams")
                streams = await open_streams(b, alg, n)
                progress(f"{backend} {alg} N={n}: {args.revocations} revocations, one at a time")
                latency = await measure_latency(b, n, args.revocations)
                progress(
                    f"{backend} {alg} N={n}: revoke -> all {n}: p50 "
                    f"{percentile(latency.all_ms, 0.5):.1f} ms, p99 "
                    f"{percentile(latency.all_ms, 0.99):.1f} ms"
                )
                progress(f"{backend} {alg} N={n}: sign_set {alg} in 1 and 2 threads")
                report.signing[(backend, alg, n)] = {
                    threads: signing_rate(alg, threads, args.sign_seconds) for threads in (1, 2)
                }
                progress(f"{backend} {alg} N={n}: sustained fan-out for {args.seconds:g} s")
                fanout = await measure_fanout(b, n, args.seconds)
                progress(
                    f"{backend} {alg} N={n}: {fanout.rate:,.0f} SETs/s, "
                    f"{fanout.commands_rate:,.0f} commands/s"
                )
                await close_streams(b, streams)
                report.latency[(backend, alg, n)] = latency
                report.fanout[(backend, alg, n)] = fanout
                _config_rows(report, backend, alg, n, latency, fanout, poll_p50)
        if args.blackhole:
            alg = "RS256" if "RS256" in args.algs else args.algs[0]
            progress(f"{backend} {alg}: one black-holed receiver among {args.blackhole}")
            blackhole = await measure_blackhole(b, alg, args.blackhole, args.revocations)
            _blackhole_rows(report, backend, alg, blackhole)
        report.rows[first_row:first_row] = _signing_rows(report, backend, args)
        final = await b.stats()
        if final["refused"] or final["duplicates"]:
            report.cpu.append(
                f"{backend}: the receivers refused {final['refused']} SETs"
                + (f" (first: {final['first_refusal']})" if final["refused"] else "")
                + f"; {final['duplicates']} SETs were delivered again (same jti: at least once)"
            )


def _signing_rows(report: Report, backend: str, args: argparse.Namespace) -> list[Row]:
    """Per algorithm: the median over the backend's configs of the rates measured before each
    fan-out, in 1 and 2 threads (the ratio: 2 threads / 1 thread)."""
    rows = []
    for alg in args.algs:
        measured = [r for (be, a, _), r in report.signing.items() if (be, a) == (backend, alg)]
        one = statistics.median(r[1] for r in measured)
        for threads in (1, 2):
            rates = [r[threads] for r in measured]
            rate = statistics.median(rates)
            rows.append(
                Row(
                    backend,
                    alg,
                    "-",
                    f"baseline: sign_set, {threads} thread{'s' if threads > 1 else ''}",
                    rate=rate,
                    ratio=rate / one,
                    note=f"median of {len(rates)} ({min(rates):,.0f}-{max(rates):,.0f}), one "
                    f"before each fan-out; {1000 * threads / rate:.2f} ms/signature/thread",
                )
            )
    return rows


def _config_rows(
    report: Report,
    backend: str,
    alg: str,
    n: int,
    latency: Latency,
    fanout: Fanout,
    poll_p50: float,
) -> None:
    each, every = latency.each_ms, latency.all_ms
    missing = f"; {latency.missing} MISSING" if latency.missing else ""
    report.rows.append(
        Row(
            backend,
            alg,
            str(n),
            "revoke -> receiver 202, each delivery",
            percentile(each, 0.5),
            percentile(each, 0.99),
            max(each, default=None),
            ratio=percentile(each, 0.5) / poll_p50,
            note=f"n={len(each)}{missing}",
        )
    )
    report.rows.append(
        Row(
            backend,
            alg,
            str(n),
            f"revoke -> all {n} receivers' 202",
            percentile(every, 0.5),
            percentile(every, 0.99),
            max(every, default=None),
            ratio=percentile(every, 0.5) / poll_p50,
            note=f"n={len(every)} revocations; revoke answered at +"
            f"{percentile(latency.response_ms, 0.5):.1f} ms (p50)",
        )
    )
    sign = machine_rate(report.signing[(backend, alg, n)])
    bound = "transmitter-bound" if fanout.transmitter_bound else "command-bound"
    errors = f"; {fanout.errors} command errors" if fanout.errors else ""
    report.rows.append(
        Row(
            backend,
            alg,
            str(n),
            "sustained fan-out, SETs delivered",
            rate=fanout.rate,
            ratio=fanout.rate / sign,
            note=f"vs {sign:,.0f} sig/s just before; {bound}: backlog {fanout.fill:.0%} of "
            f"{fanout.window}; "
            f"{fanout.commands_rate:,.0f} cmds/s (p50 {fanout.command_p50_ms:,.0f} ms){errors}",
        )
    )
    rest = fanout.machine_cpu - fanout.server_cpu - fanout.receiver_cpu - fanout.client_cpu
    report.cpu.append(
        f"{backend} {alg} N={n} fan-out: server {fanout.server_cpu:.2f}, receivers "
        f"{fanout.receiver_cpu:.2f}, command clients {fanout.client_cpu:.2f}, whole machine "
        f"{fanout.machine_cpu:.2f} of {os.cpu_count()} cores (the rest, {rest:.2f}: PostgreSQL, "
        f"other users' jobs); {fanout.window_sets:,} SETs in the window, "
        f"{fanout.backlog:,} outstanding at the end"
    )
    if fanout.rate > 0:
        server_ms = 1000 * fanout.server_cpu / fanout.rate
        receiver_ms = 1000 * fanout.receiver_cpu / fanout.rate
        cores = os.cpu_count() or 1
        floor = n * (server_ms + receiver_ms) / cores
        ceiling = cores * 1000 / (server_ms + receiver_ms)
        report.cpu.append(
            f"  per SET delivered in that window: {server_ms:.2f} ms of server CPU (signing "
            f"and the commands' own work included), {receiver_ms:.2f} ms of receiver CPU; at "
            f"that cost one event to all {n} receivers takes "
            f"{n * (server_ms + receiver_ms):.0f} ms of CPU, >= {floor:.0f} ms on these "
            f"{cores} cores however it is scheduled, and these cores deliver at most "
            f"{ceiling:,.0f} SETs/s ({ceiling / sign:.0%} of the signing rate)"
        )


def _blackhole_rows(report: Report, backend: str, alg: str, bh: Blackhole) -> None:
    n = bh.healthy + 1
    base = percentile(bh.alone.all_ms, 0.99)
    blocks = ", ".join(f"{p:.1f}" for p in bh.alone_blocks_p99)
    for label, latency, note in (
        ("alone", bh.alone, f"each block's p99: {blocks} ms"),
        ("+1 black-holed", bh.holed, "vs base: p99 / the p99 alone"),
    ):
        missing = f"; {latency.missing} MISSING" if latency.missing else ""
        report.rows.append(
            Row(
                backend,
                alg,
                str(n),
                f"revoke -> all {bh.healthy} healthy, {label}",
                percentile(latency.all_ms, 0.5),
                percentile(latency.all_ms, 0.99),
                max(latency.all_ms, default=None),
                ratio=percentile(latency.all_ms, 0.99) / base if base else None,
                note=f"n={len(latency.all_ms)} revocations in {BLACKHOLE_BLOCKS} blocks, "
                f"alternating{missing}; {note}",
            )
        )
    report.verdicts.append(
        f"{backend}: one black-holed receiver among {n} leaves the other {bh.healthy}'s p99 "
        f"within noise: {'PASS' if bh.within_noise else 'MISS'} -- p99 "
        f"{percentile(bh.holed.all_ms, 0.99):.1f} ms with it, {base:.1f} ms without (bound "
        f"{bh.bound:.1f} ms: 1.25 x that, or the highest p99 of a block without it)"
    )


def verdicts(args: argparse.Namespace, report: Report) -> None:
    if "RS256" not in args.algs:
        report.verdicts.append("targets are stated for RS256: not measured (--algs)")
        return
    n = TARGET_RECEIVERS if TARGET_RECEIVERS in args.receivers else max(args.receivers)
    smoke = "" if n == TARGET_RECEIVERS else f" [measured with {n}: not the target's N]"
    for backend in args.backends:
        latency = report.latency.get((backend, "RS256", n))
        fanout = report.fanout.get((backend, "RS256", n))
        if latency is None or fanout is None:
            continue
        p99 = percentile(latency.all_ms, 0.99)
        ok = p99 <= TARGET_P99_MS and latency.missing == 0
        report.verdicts.append(
            f"{backend}: revoke -> every one of {TARGET_RECEIVERS} receivers p99 <= "
            f"{TARGET_P99_MS:.0f} ms (RS256){smoke}: {'PASS' if ok else 'MISS'} -- p99 "
            f"{p99:.1f} ms until the last receiver (each delivery: p50 "
            f"{percentile(latency.each_ms, 0.5):.1f}, p99 {percentile(latency.each_ms, 0.99):.1f}"
            " ms)"
        )
        rates = report.signing[(backend, "RS256", n)]
        sign = machine_rate(rates)
        ratio = fanout.rate / sign
        report.verdicts.append(
            f"{backend}: sustained fan-out >= {TARGET_FANOUT_RATIO:.0%} of the machine's RS256 "
            f"signing rate ({TARGET_RECEIVERS} receivers){smoke}: "
            f"{'PASS' if ratio >= TARGET_FANOUT_RATIO else 'MISS'} -- {ratio:.0%} "
            f"({fanout.rate:,.0f} SETs/s vs {sign:,.0f} signatures/s measured just before: "
            f"1 thread {rates[1]:,.0f}, 2 threads {rates[2]:,.0f})"
        )


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench-propagation", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--algs", default="RS256,ES256", help="SET signing: RS256,ES256")
    parser.add_argument(
        "--receivers", default=None, help="numbers of push receivers (default 1,10,100)"
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="fan-out window per config")
    parser.add_argument(
        "--revocations",
        type=int,
        default=200,
        help="measured revocations per config (a p99 needs a few hundred samples: of 50 it is "
        "the slowest one)",
    )
    parser.add_argument("--pollers", type=int, default=50, help="Services in the polling baseline")
    parser.add_argument(
        "--sign-seconds", type=float, default=1.0, help="per signing cell (before each fan-out)"
    )
    parser.add_argument("--model-draws", type=int, default=MODEL_DRAWS, help=argparse.SUPPRESS)
    parser.add_argument(
        "--push-concurrency", type=int, default=None, help="serve --push-concurrency"
    )
    parser.add_argument(
        "--blackhole",
        type=int,
        default=None,
        help="receivers in the black-hole cell, one of them black-holed (default 20; 0: skip)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run (small N, short cells)")
    parser.add_argument(
        "--database-url", default=os.environ.get(ENV_URL), help=f"PostgreSQL URL (${ENV_URL})"
    )
    args = parser.parse_args(argv)
    if args.receivers is None:
        args.receivers = "1,4" if args.quick else "1,10,100"
    if args.blackhole is None:
        args.blackhole = 4 if args.quick else 20
    if args.blackhole == 1 or args.blackhole < 0:
        parser.error("--blackhole takes 0 (skip) or at least 2 receivers")
    if args.quick:
        args.seconds = min(args.seconds, 1.5)
        args.revocations = min(args.revocations, 5)
        args.pollers = min(args.pollers, 4)
        args.sign_seconds = min(args.sign_seconds, 0.3)
        args.model_draws = min(args.model_draws, 10_000)
    args.backends = _list(args.backends)
    args.algs = [a.upper() for a in _list(args.algs)]
    try:
        args.receivers = sorted({int(n) for n in _list(args.receivers)})
    except ValueError:
        parser.error("--receivers takes numbers, e.g. 1,10,100")
    for backend in args.backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    for alg in args.algs:
        if alg not in ALGS:
            parser.error(f"unknown algorithm {alg!r}: use RS256 and/or ES256")
    if not args.backends or not args.algs or not args.receivers or min(args.receivers) < 1:
        parser.error("--backends, --algs and --receivers (>= 1) must not be empty")
    if args.revocations < 1 or args.pollers < 1 or args.seconds <= 0:
        parser.error("--revocations >= 1, --pollers >= 1 and --seconds > 0")
    if "postgres" in args.backends and not args.database_url:
        parser.error(
            f"PostgreSQL needs --database-url or ${ENV_URL} (scripts/bench-propagation sets it)"
        )
    if args.database_url:
        args.database_url = _url_without_schema(args.database_url)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--receiver-process"] and len(argv) == 2:
        return receiver_process(argv[1])
    args = parse_args(argv)
    report = Report()
    started = time.perf_counter()
    for backend in args.backends:
        run_backend(backend, args, report)
    verdicts(args, report)

    from mission_ledger.ssf.keys import DEFAULT_RSA_BITS

    served = ", ".join(f"{be} {'/'.join(map(str, bits))}" for be, bits in report.rsa_bits.items())
    print()
    print(
        f"bench-propagation: receivers {','.join(map(str, args.receivers))}; "
        f"{args.revocations} revocations per config (one at a time, after "
        f"{WARMUP_REVOCATIONS} unmeasured); fan-out {args.seconds:g} s per config "
        f"({FANOUT_CLIENTS} command clients); latency = receiver's receipt after verification "
        "- the MissionRevoked event's timestamp; vs base: latency p50 / the 1 s poll's p50, "
        "SETs/s / the machine's signing rate for that alg (the better of 1 and 2 threads, "
        "measured just before that fan-out)."
    )
    print(
        f"RS256 keys: {DEFAULT_RSA_BITS}-bit (keys.DEFAULT_RSA_BITS, the signing baseline's); "
        f"the servers' JWKS: {served or '-'} bits."
    )
    for line in format_table(report.rows):
        print(line)
    print()
    for line in report.verdicts:
        print(line)
    print()
    print("CPU used (cores, averaged over the fan-out windows):")
    for line in report.cpu:
        print(f"  {line}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
