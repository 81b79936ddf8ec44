"""Benchmark the Authority's read side: checks, revocation-to-deny lag and projection rebuild.

Run through ``scripts/bench-check``, which prepares the virtualenv and a PostgreSQL database and
passes its URL in ``MISSION_LEDGER_BENCH_CHECK_DATABASE_URL``. Four measurements, each against a
baseline measured in the same run, printed as one table with a verdict per target:

1. **HTTP checks**: the native ``POST /missions/{id}/check`` of a real ``mission-ledger serve``
   subprocess (SQLite) against a trivial aiohttp endpoint that parses a JSON body and answers
   ``{"decision": "allow"}``, also in its own process. The server under test is pinned to one
   core, the load generator (aiohttp, keep-alive, N connections) to another; servers not under
   test are paused (SIGSTOP) so their background threads take no CPU. Target: native >= 60%.
2. **In-process checks**: ``LiveAuthorizationView.check`` in a loop against a naive check that
   loads the Mission aggregate from the event store per call (SQLite). Target: >= 100x.
3. **Revocation-to-deny lag**: from ``ledger.revoke`` returning to the first ``deny`` of a live
   view following the store, probed from another thread. Target: p99 <= 10 ms, SQLite and
   PostgreSQL.
4. **Rebuild**: ``mission_ledger.projections.rebuild`` against the library's per-event catch-up
   (an ``eventsourcing.projection.ProjectionRunner`` with a minimal ``Projection`` writing one
   row and its tracking position per event) over the same ~10k Mission events on PostgreSQL.
   Target: >= 10x.

The machine is shared and noisy: read the ratios, not the absolute figures. The script also
runs itself as the trivial server (``--trivial-server``) and the load generator (``--loadgen``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_ledger import (
    _machine_busy,
    _url_without_schema,
    fresh_settings,
    progress,
    proposal_document,
)

ENV_URL = "MISSION_LEDGER_BENCH_CHECK_DATABASE_URL"
ROOT = Path(__file__).resolve().parent.parent
TARGET_HTTP_RATIO = 0.60
TARGET_INPROCESS_RATIO = 100.0
TARGET_LAG_P99_MS = 10.0
TARGET_REBUILD_RATIO = 10.0
ACTION, RESOURCE = "invoices.read", "https://erp.example.com/invoices"
CHECK_BODY = json.dumps({"action": ACTION, "resource": RESOURCE})
HTTP_MISSIONS = 8  # connections spread over this many Missions
PARTS = ("http", "inprocess", "lag", "rebuild")
TOKEN_LINE = re.compile(r"^ {4}(\S+)\s*$", re.MULTILINE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the same rule as bench_ledger)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def process_cpu(pid: int) -> float | None:
    """CPU seconds used so far by process ``pid`` (all its threads), from ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


# -- the table -----------------------------------------------------------------------------------


@dataclass
class Row:
    part: str
    variant: str
    rate: float | None = None  # per second
    unit: str = "/s"
    p50_ms: float | None = None
    p99_ms: float | None = None
    ratio: float | None = None
    note: str = ""


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_table(rows: list[Row]) -> list[str]:
    header = (
        f"{'measurement':<26} {'variant':<40} {'rate':>14} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'vs base':>8}  note"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        rate = "-" if r.rate is None else f"{r.rate:,.0f} {r.unit}"
        ratio = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        lines.append(
            f"{r.part:<26} {r.variant:<40} {rate:>14} {_num(r.p50_ms, '8.2f'):>8} "
            f"{_num(r.p99_ms, '8.2f'):>8} {ratio:>8}  {r.note}"
        )
    return lines


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    verdicts: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# 1. HTTP checks
# ------------------------------------------------------------------------------------------------


def _pin(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def _cores() -> tuple[int | None, int | None]:
    """(server core, load-generator core), or (None, None) with fewer than two cores."""
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]


@dataclass
class ServerProcess:
    """A server subprocess with its stdout/stderr in files (a full pipe would block it)."""

    name: str
    proc: subprocess.Popen[bytes]
    url: str
    stderr_path: Path
    stopped: bool = False

    @classmethod
    def start(cls, name: str, argv: list[str], workdir: Path, core: int | None) -> ServerProcess:
        out, err = workdir / f"{name}.out", workdir / f"{name}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen(
                argv, stdout=stdout, stderr=stderr, cwd=ROOT, preexec_fn=_pin(core)
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            match = re.search(r"listening on (http://\S+)", out.read_text())
            if match:
                return cls(name, proc, match.group(1), err)
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        proc.kill()
        raise RuntimeError(f"{name} did not start:\n{err.read_text()[-2000:]}")

    def token(self) -> str:
        match = TOKEN_LINE.search(self.stderr_path.read_text())
        if match is None:
            raise RuntimeError(f"{self.name}: no bootstrap operator token on stderr")
        return match.group(1)

    def pause(self) -> None:
        if not self.stopped:
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def resume(self) -> None:
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
            self.stopped = False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _http_setup(url: str, token: str, count: int) -> list[str]:
    """Propose and approve ``count`` Missions over HTTP; returns their ids."""
    import aiohttp

    headers = {"Authorization": f"Bearer {token}"}
    ids = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for n in range(count):
            async with session.post(f"{url}/proposals", json=proposal_document(0, n)) as resp:
                body = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"POST /proposals: {resp.status} {body}")
            pid = body["proposal_id"]
            async with session.post(f"{url}/proposals/{pid}/approve", json={}) as resp:
                body = await resp.json()
                if resp.status != 201:
                    raise RuntimeError(f"approve: {resp.status} {body}")
            ids.append(body["mission_id"])
        # one check, to fail early with a readable message
        check = json.loads(CHECK_BODY)
        async with session.post(f"{url}/missions/{ids[0]}/check", json=check) as resp:
            body = await resp.json(content_type=None)
            if resp.status != 200 or body.get("decision") != "allow":
                raise RuntimeError(f"check: {resp.status} {body}")
    return ids


@dataclass
class HttpCell:
    variant: str
    count: int
    seconds: float
    latencies_ms: list[float]
    errors: int
    first_error: str
    client_cpu: float
    server_cpu: float
    machine_cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.seconds


def run_loadgen(
    server: ServerProcess,
    paths: list[str],
    token: str | None,
    connections: int,
    warmup: float,
    seconds: float,
    core: int | None,
    variant: str,
) -> HttpCell:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--loadgen",
        json.dumps(
            {
                "urls": [server.url + p for p in paths],
                "token": token,
                "body": CHECK_BODY,
                "connections": connections,
                "warmup": warmup,
                "seconds": seconds,
                "server_pid": server.proc.pid,
            }
        ),
    ]
    done = subprocess.run(
        argv, capture_output=True, check=False, preexec_fn=_pin(core), timeout=warmup + seconds + 60
    )
    if done.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{done.stderr.decode()[-2000:]}")
    out = json.loads(done.stdout)
    return HttpCell(
        variant=variant,
        count=out["count"],
        seconds=out["seconds"],
        latencies_ms=out["latencies_ms"],
        errors=out["errors"],
        first_error=out["first_error"],
        client_cpu=out["client_cpu"],
        server_cpu=out["server_cpu"],
        machine_cpu=out["machine_cpu"],
    )


HTTP_VARIANTS = {
    "trivial": "trivial aiohttp JSON endpoint",
    "native": "native POST /missions/{id}/check",
    "native-quiet": "  same, --log-level warning",
}


def measure_http(args: argparse.Namespace, report: Report) -> None:
    server_core, client_core = _cores()
    workdir = Path(tempfile.mkdtemp(prefix="ml-bench-check-"))
    servers: dict[str, ServerProcess] = {}
    paths: dict[str, list[str]] = {}
    tokens: dict[str, str | None] = {}
    try:
        progress("http: starting the trivial server and the real server(s)")
        servers["trivial"] = ServerProcess.start(
            "trivial",
            [sys.executable, str(Path(__file__).resolve()), "--trivial-server"],
            workdir,
            server_core,
        )
        paths["trivial"], tokens["trivial"] = ["/check"], None
        for variant in args.http_variants:
            if variant == "trivial":
                continue
            level = "warning" if variant == "native-quiet" else "info"
            argv = [
                str(Path(sys.executable).with_name("mission-ledger")),
                "serve",
                "--port",
                "0",
                "--data",
                str(workdir / f"{variant}-data"),
                "--log-level",
                level,
            ]
            server = servers[variant] = ServerProcess.start(variant, argv, workdir, server_core)
            tokens[variant] = server.token()
            ids = asyncio.run(_http_setup(server.url, server.token(), HTTP_MISSIONS))
            paths[variant] = [f"/missions/{mid}/check" for mid in ids]
        for server in servers.values():
            server.pause()
        cells: dict[str, list[HttpCell]] = {}
        variants = list(args.http_variants)
        order = [
            (n, v) for n in range(args.rounds) for v in (variants if n % 2 == 0 else variants[::-1])
        ]
        for index, (n, variant) in enumerate(order, 1):
            server = servers[variant]
            server.resume()
            try:
                cell = run_loadgen(
                    server,
                    paths[variant],
                    tokens[variant],
                    args.connections,
                    args.warmup,
                    args.seconds,
                    client_core,
                    variant,
                )
            finally:
                server.pause()
            cells.setdefault(variant, []).append(cell)
            progress(
                f"http [{index}/{len(order)}] round {n + 1}, {variant}: {cell.rate:,.0f} req/s, "
                f"p99 {percentile(cell.latencies_ms, 0.99):.1f} ms, server "
                f"{cell.server_cpu:.2f} / client {cell.client_cpu:.2f} cores"
                + (f", {cell.errors} errors: {cell.first_error}" if cell.errors else "")
            )
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rates = {v: statistics.median(c.rate for c in cells[v]) for v in cells}
    base = rates.get("trivial")
    pinned = (
        f"server on core {server_core}, client on core {client_core}"
        if server_core is not None
        else "not pinned (fewer than 2 cores)"
    )
    part = f"HTTP, {args.connections} connections"
    for variant in args.http_variants:
        pooled = [ms for c in cells[variant] for ms in c.latencies_ms]
        errors = sum(c.errors for c in cells[variant])
        server_cpu = statistics.mean(c.server_cpu for c in cells[variant])
        client_cpu = statistics.mean(c.client_cpu for c in cells[variant])
        note = f"server {server_cpu:.2f} / client {client_cpu:.2f} cores"
        if errors:
            note += f"; {errors} errors ({cells[variant][0].first_error[:50]})"
        report.rows.append(
            Row(
                part,
                HTTP_VARIANTS[variant],
                rates[variant],
                "req/s",
                percentile(pooled, 0.50),
                percentile(pooled, 0.99),
                rates[variant] / base if base else None,
                note,
            )
        )
        machine = statistics.mean(c.machine_cpu for c in cells[variant])
        report.cpu.append(
            f"HTTP {variant}: server {server_cpu:.2f}, load generator {client_cpu:.2f}, whole "
            f"machine {machine:.2f} of {os.cpu_count()} cores ({pinned})"
        )
    if base and "native" in rates:
        ratio = rates["native"] / base
        ok = ratio >= TARGET_HTTP_RATIO and not any(c.errors for c in cells["native"])
        report.verdicts.append(
            f"HTTP native check >= {TARGET_HTTP_RATIO:.0%} of trivial endpoint: "
            f"{'PASS' if ok else 'MISS'} -- {ratio:.0%} ({rates['native']:,.0f} vs "
            f"{base:,.0f} req/s)"
        )


# -- the two helper processes --------------------------------------------------------------------


def trivial_server() -> int:
    """A tiny aiohttp app: POST /check parses the JSON body and answers an allow."""
    from aiohttp import web

    async def check(request: web.Request) -> web.Response:
        await request.json()
        return web.json_response({"decision": "allow"})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/check", check)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        print(f"listening on http://{host}:{port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(main())
    return 0


def loadgen(spec_json: str) -> int:
    """Drive ``connections`` keep-alive connections for warm-up + seconds; print JSON."""
    import aiohttp

    spec = json.loads(spec_json)
    urls: list[str] = spec["urls"]
    warmup, seconds = float(spec["warmup"]), float(spec["seconds"])
    headers = {"Content-Type": "application/json"}
    if spec["token"]:
        headers["Authorization"] = f"Bearer {spec['token']}"
    body = spec["body"].encode()
    samples: list[tuple[float, float]] = []
    failures: list[str] = []

    async def main() -> dict[str, Any]:
        connector = aiohttp.TCPConnector(limit=spec["connections"], force_close=False)
        async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
            t_start = time.perf_counter() + warmup
            t_end = t_start + seconds

            async def worker(n: int) -> None:
                url = urls[n % len(urls)]
                while True:
                    t0 = time.perf_counter()
                    if t0 >= t_end:
                        return
                    try:
                        async with session.post(url, data=body) as resp:
                            payload = await resp.read()
                        if resp.status != 200 or b'"allow"' not in payload:
                            failures.append(f"{resp.status} {payload[:80]!r}")
                            continue
                    except aiohttp.ClientError as error:
                        failures.append(f"{type(error).__name__}: {error}")
                        continue
                    t1 = time.perf_counter()
                    if t_start <= t1 <= t_end:
                        samples.append((t1, (t1 - t0) * 1000.0))

            async def meter() -> tuple[float, float, float]:
                await asyncio.sleep(max(0.0, t_start - time.perf_counter()))
                c0, s0, m0 = time.process_time(), process_cpu(spec["server_pid"]), _machine_busy()
                failures.clear()  # count failures in the measured window only
                await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
                c1, s1, m1 = time.process_time(), process_cpu(spec["server_pid"]), _machine_busy()
                server = (s1 - s0) if s0 is not None and s1 is not None else float("nan")
                machine = (m1[0] - m0[0]) if m0 is not None and m1 is not None else float("nan")
                return (c1 - c0) / seconds, server / seconds, machine / seconds

            metered = asyncio.ensure_future(meter())
            await asyncio.gather(*(worker(n) for n in range(spec["connections"])))
            client, server, machine = await metered
        return {
            "count": len(samples),
            "seconds": seconds,
            "latencies_ms": [round(ms, 4) for _, ms in samples],
            "errors": len(failures),
            "first_error": failures[0] if failures else "",
            "client_cpu": client,
            "server_cpu": server,
            "machine_cpu": machine,
        }

    print(json.dumps(asyncio.run(main())))
    return 0


# ------------------------------------------------------------------------------------------------
# shared: Missions in a ledger, CPU accounting of this process
# ------------------------------------------------------------------------------------------------


def new_missions(ledger: Any, count: int) -> tuple[list[str], int]:
    """Propose and approve ``count`` Missions; returns their ids and the last position."""
    ids, position = [], 0
    for n in range(count):
        doc = proposal_document(0, n)
        pid = ledger.propose(doc, actor=doc["agent"]).document["proposal_id"]
        result = ledger.approve(pid, actor="human:approver")
        ids.append(str(result.document["mission_id"]))
        position = max(position, result.position or 0)
    return ids, position


@contextlib.contextmanager
def own_cpu(report: Report, what: str) -> Iterator[None]:
    t0, c0, m0 = time.perf_counter(), time.process_time(), _machine_busy()
    yield
    t1, c1, m1 = time.perf_counter(), time.process_time(), _machine_busy()
    wall = t1 - t0
    machine = f"{(m1[0] - m0[0]) / wall:.2f}" if m0 is not None and m1 is not None else "?"
    report.cpu.append(
        f"{what}: this process {(c1 - c0) / wall:.2f}, whole machine {machine} of "
        f"{os.cpu_count()} cores ({wall:.1f} s)"
    )


# ------------------------------------------------------------------------------------------------
# 2. In-process checks
# ------------------------------------------------------------------------------------------------


def _loop_rate(step: Callable[[int], None], seconds: float) -> float:
    """Calls of ``step`` per second over ``seconds`` (the clock read every 64 calls)."""
    calls, t0 = 0, time.perf_counter()
    end = t0 + seconds
    while True:
        for _ in range(64):
            step(calls)
            calls += 1
        now = time.perf_counter()
        if now >= end:
            return calls / (now - t0)


def _naive_step(ledger: Any, ids: list[str]) -> Callable[[int], None]:
    """The check without a view: load the Mission aggregate, then its state and Authority Set."""
    from mission_ledger.domain.mission import ACTIVE

    def naive(n: int) -> None:
        mission = ledger.get_mission(ids[n % len(ids)])
        now = ledger.clock.now()
        allowed = (
            mission.effective_state(now) == ACTIVE
            and mission.evaluate(action=ACTION, resource=RESOURCE, at=now).allowed
        )
        if not allowed:
            raise RuntimeError("naive check denied")

    return naive


def _rounds(
    steps: dict[str, Callable[[int], None]], args: argparse.Namespace, label: str
) -> dict[str, float]:
    """Median calls/s per step over ``args.rounds`` rounds, alternating (order flipped)."""
    rates: dict[str, list[float]] = {name: [] for name in steps}
    names = list(steps)
    for n in range(args.rounds):
        for name in names if n % 2 == 0 else names[::-1]:
            _loop_rate(steps[name], min(0.2, args.inprocess_seconds / 4))  # warm
            rates[name].append(_loop_rate(steps[name], args.inprocess_seconds))
            progress(f"in-process round {n + 1}, {label} {name}: {rates[name][-1]:,.0f}/s")
    return {name: statistics.median(r) for name, r in rates.items()}


def measure_inprocess(args: argparse.Namespace, report: Report) -> None:
    from mission_ledger.bootstrap import open_ledger
    from mission_ledger.checks import LiveAuthorizationView

    with fresh_settings("sqlite", None) as settings:
        ledger = open_ledger(settings)
        view = LiveAuthorizationView(ledger)  # its tailer polls the store meanwhile, as in use
        try:
            view.start()
            ids, position = new_missions(ledger, 100)
            if not view.wait_for(position, 10):
                raise RuntimeError("the live view did not catch up")
            clock = ledger.clock

            def live(n: int) -> None:
                result = view.check(ids[n % 100], action=ACTION, resource=RESOURCE, now=clock.now())
                if not result.allowed:
                    raise RuntimeError(f"live check denied: {result.reason}")

            with own_cpu(report, "in-process checks, SQLite"):
                rates = _rounds({"naive": _naive_step(ledger, ids), "live": live}, args, "sqlite")
        finally:
            view.stop()
            ledger.close()
    pg_naive = None
    if args.database_url and "postgres" in args.backends:  # for the reading, not the verdict
        with fresh_settings("postgres", args.database_url) as settings:
            ledger = open_ledger(settings)
            try:
                ids, _ = new_missions(ledger, 100)
                with own_cpu(report, "in-process naive check, PostgreSQL"):
                    pg_naive = _rounds({"naive": _naive_step(ledger, ids)}, args, "postgres")
            finally:
                ledger.close()
    naive_rate, live_rate = rates["naive"], rates["live"]
    ratio = live_rate / naive_rate
    part = "in-process, SQLite"
    report.rows.append(
        Row(
            part,
            "naive: get_mission + evaluate per call",
            naive_rate,
            "/s",
            ratio=1.0,
            note=f"{1e6 / naive_rate:.0f} us/check (Missions at version 1)",
        )
    )
    report.rows.append(
        Row(
            part,
            "LiveAuthorizationView.check",
            live_rate,
            "/s",
            ratio=ratio,
            note=f"{1e6 / live_rate:.1f} us/check",
        )
    )
    if pg_naive is not None:
        report.rows.append(
            Row(
                "in-process, PostgreSQL",
                "naive (for comparison, no target)",
                pg_naive["naive"],
                "/s",
                note=f"{1e6 / pg_naive['naive']:.0f} us/check; the live view is "
                f"{live_rate / pg_naive['naive']:,.0f}x this",
            )
        )
    report.verdicts.append(
        f"in-process live view >= {TARGET_INPROCESS_RATIO:.0f}x naive check (SQLite): "
        f"{'PASS' if ratio >= TARGET_INPROCESS_RATIO else 'MISS'} -- {ratio:,.0f}x "
        f"({live_rate:,.0f} vs {naive_rate:,.0f} checks/s)"
    )


# ------------------------------------------------------------------------------------------------
# 3. Revocation-to-deny lag
# ------------------------------------------------------------------------------------------------


class Prober(threading.Thread):
    """Checks ``target`` over and over; records the instant of the first deny.

    Between two checks it sleeps ``pause`` seconds (50 us), which releases the GIL: a probe
    that never released it would starve the view's tailer thread in the same process (it
    waits up to the 5 ms switch interval for every reacquisition), and measure the harness.
    """

    def __init__(self, view: Any, clock: Any, pause: float = 0.00005) -> None:
        super().__init__(name="bench-prober", daemon=True)
        self.view, self.clock, self.pause = view, clock, pause
        self.target: str | None = None
        self.allowed = threading.Event()
        self.denied = threading.Event()
        self.denied_at = 0.0
        self.reason = ""
        self.halt = threading.Event()

    def aim(self, mission_id: str) -> None:
        self.allowed.clear()
        self.denied.clear()
        self.target = mission_id

    def run(self) -> None:
        while not self.halt.is_set():
            target = self.target
            if target is None:
                time.sleep(0.0005)
                continue
            result = self.view.check(target, action=ACTION, resource=RESOURCE, now=self.clock.now())
            if result.allowed:
                self.allowed.set()
            else:
                self.denied_at = time.perf_counter()
                self.reason = result.reason
                self.target = None
                self.denied.set()
            time.sleep(self.pause)


def measure_lag_on(backend: str, args: argparse.Namespace) -> tuple[list[float], list[str]]:
    from mission_ledger.bootstrap import open_ledger
    from mission_ledger.checks import LiveAuthorizationView

    lags: list[float] = []
    odd: list[str] = []
    with fresh_settings(backend, args.database_url) as settings:
        ledger = open_ledger(settings)
        view = LiveAuthorizationView(ledger)
        prober = Prober(view, ledger.clock)
        try:
            view.start()
            progress(f"lag on {backend}: approving {args.revocations} Missions")
            ids, position = new_missions(ledger, args.revocations)
            if not view.wait_for(position, 10):
                raise RuntimeError("the live view did not catch up")
            prober.start()
            progress(f"lag on {backend}: revoking them one by one")
            for mid in ids:
                prober.aim(mid)
                if not prober.allowed.wait(5):
                    odd.append(f"{mid}: never allowed ({prober.reason})")
                    continue
                ledger.revoke(mid, actor="human:operator", reason="bench")
                committed = time.perf_counter()
                if not prober.denied.wait(5):
                    odd.append(f"{mid}: no deny within 5 s")
                    continue
                if prober.reason != "mission_inactive":
                    odd.append(f"{mid}: denied for {prober.reason}")
                # <= 0: the view folded the revocation before revoke() had returned
                lags.append(max(0.0, (prober.denied_at - committed) * 1000.0))
        finally:
            prober.halt.set()
            if prober.is_alive():
                prober.join(timeout=5)
            view.stop()
            ledger.close()
    return lags, odd


def measure_lag(args: argparse.Namespace, report: Report) -> None:
    for backend in args.backends:
        with own_cpu(report, f"revocation lag, {backend}"):
            lags, odd = measure_lag_on(backend, args)
        p50, p99 = percentile(lags, 0.50), percentile(lags, 0.99)
        note = f"n={len(lags)}, max {max(lags):.2f} ms" if lags else "no samples"
        if odd:
            note += f"; {len(odd)} anomalies ({odd[0][:60]})"
        label = "PostgreSQL" if backend == "postgres" else "SQLite"
        report.rows.append(
            Row(f"revoke->deny, {label}", "LiveAuthorizationView (polls every 2 ms)", None, "",
                p50, p99, None, note)
        )  # fmt: skip
        ok = bool(lags) and p99 <= TARGET_LAG_P99_MS and not odd
        report.verdicts.append(
            f"revocation-to-deny p99 <= {TARGET_LAG_P99_MS:g} ms on {label}: "
            f"{'PASS' if ok else 'MISS'} -- p99 {p99:.2f} ms, p50 {p50:.2f} ms over "
            f"{len(lags)} revocations"
        )
        progress(f"lag on {backend}: p50 {p50:.2f} ms, p99 {p99:.2f} ms")


# ------------------------------------------------------------------------------------------------
# 4. Rebuild vs the library's per-event catch-up (PostgreSQL)
# ------------------------------------------------------------------------------------------------


def build_history(ledger: Any, events: int) -> int:
    """About ``events`` Mission events: Missions of 100 events each (approved, suspend/resume
    alternately, revoked), hash-chained by the domain and saved one Mission at a time.
    Returns the number of Mission events written."""
    missions = max(1, events // 100)
    ids, _ = new_missions(ledger, missions)
    for mid in ids:
        mission = ledger.get_mission(mid)
        while mission.version < 99:
            now = ledger.clock.now()
            if mission.version % 2 == 1:
                mission.suspend(actor="human:operator", now=now, reason="bench")
            else:
                mission.resume(actor="human:operator", now=now, reason="bench")
        mission.revoke(actor="human:operator", now=ledger.clock.now(), reason="bench")
        ledger.save(mission)
    return missions * 100


def catch_up_classes(settings: Any) -> tuple[type, type, type]:
    """The library's normal pattern: Application + Projection + PostgresTrackingRecorder."""
    from eventsourcing.persistence import Tracking
    from eventsourcing.postgres import PostgresTrackingRecorder
    from eventsourcing.projection import Projection
    from psycopg.sql import SQL, Identifier

    from mission_ledger.ledger import MISSION_TOPICS, MissionLedger

    class CatchUpLedger(MissionLedger):
        """The ledger as ProjectionRunner constructs applications: from ``env`` alone."""

        name = MissionLedger.name  # the same events table (the name derives the table)

        def __init__(self, env: Any = None) -> None:
            super().__init__(settings, env=env)

    class CatchUpView(PostgresTrackingRecorder):
        """One row per Mission (upserted per event) plus the tracking row, one transaction."""

        def __init__(self, datastore: Any, **kwargs: Any) -> None:
            super().__init__(datastore, **kwargs)
            table = self.tracking_table_name.removesuffix("_tracking")
            ident = SQL("{}.{}").format(Identifier(datastore.schema), Identifier(table))
            self.sql_create_statements.append(
                SQL(
                    "CREATE TABLE IF NOT EXISTS {} (mission_id uuid PRIMARY KEY, "
                    "version bigint NOT NULL, last_topic text NOT NULL)"
                ).format(ident)
            )
            self._upsert = SQL(
                "INSERT INTO {} VALUES (%s, %s, %s) ON CONFLICT (mission_id) "
                "DO UPDATE SET version = EXCLUDED.version, last_topic = EXCLUDED.last_topic"
            ).format(ident)

        def record(self, event: Any, tracking: Tracking) -> None:
            with self.datastore.transaction(commit=True) as curs:
                self._insert_tracking(curs, tracking)
                curs.execute(
                    self._upsert,
                    (event.originator_id, event.originator_version, type(event).TOPIC),
                    prepare=True,
                )

    class CatchUpProjection(Projection[CatchUpView]):
        name = "bench_catchup"
        topics = MISSION_TOPICS

        def process_event(self, domain_event: Any, tracking: Tracking) -> None:
            self.view.record(domain_event, tracking)

    return CatchUpLedger, CatchUpProjection, CatchUpView


def measure_rebuild(args: argparse.Namespace, report: Report) -> None:
    from eventsourcing.projection import ProjectionRunner

    from mission_ledger.bootstrap import open_ledger
    from mission_ledger.projections import rebuild

    with fresh_settings("postgres", args.database_url) as settings:
        ledger = open_ledger(settings)
        try:
            progress(f"rebuild: writing ~{args.events:,} Mission events to PostgreSQL")
            events = build_history(ledger, args.events)
            head = ledger.recorder.max_notification_id() or 0
            rebuild_times = []
            with own_cpu(report, "rebuild (3 runs)"):
                for n in range(3):
                    t0 = time.perf_counter()
                    applied = rebuild(ledger, settings)
                    rebuild_times.append(time.perf_counter() - t0)
                    if applied != events:
                        raise RuntimeError(f"rebuild applied {applied} of {events} events")
                    progress(f"rebuild run {n + 1}: {events / rebuild_times[-1]:,.0f} events/s")
            app_class, projection_class, view_class = catch_up_classes(settings)
            env = settings.eventsourcing_env()
            progress("rebuild: the library's per-event catch-up (ProjectionRunner) from 0")
            with own_cpu(report, "per-event catch-up"):
                t0 = time.perf_counter()
                with ProjectionRunner(
                    application_class=app_class,
                    projection_class=projection_class,
                    view_class=view_class,
                    env=env,
                ) as runner:
                    runner.wait(head, timeout=300)
                    catch_up_seconds = time.perf_counter() - t0
                    tracked = runner.view.max_tracking_id(ledger.name)
            if tracked != head:
                raise RuntimeError(f"catch-up stopped at {tracked}, head is {head}")
        finally:
            ledger.close()
    rebuild_rate = events / statistics.median(rebuild_times)
    base_rate = events / catch_up_seconds
    ratio = rebuild_rate / base_rate
    part = f"rebuild, PG, {events:,} events"
    report.rows.append(
        Row(
            part,
            "library per-event catch-up",
            base_rate,
            "ev/s",
            ratio=1.0,
            note=f"{catch_up_seconds:.1f} s; ProjectionRunner, 1 row + tracking/txn",
        )
    )
    report.rows.append(
        Row(
            part,
            "projections.rebuild (3 views)",
            rebuild_rate,
            "ev/s",
            ratio=ratio,
            note=f"median of 3: {statistics.median(rebuild_times):.2f} s",
        )
    )
    report.verdicts.append(
        f"rebuild >= {TARGET_REBUILD_RATIO:.0f}x the library's per-event catch-up on PostgreSQL: "
        f"{'PASS' if ratio >= TARGET_REBUILD_RATIO else 'MISS'} -- {ratio:.1f}x "
        f"({rebuild_rate:,.0f} vs {base_rate:,.0f} events/s)"
    )


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench-check", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per HTTP cell")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured s per HTTP cell")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (median taken)")
    parser.add_argument("--connections", type=int, default=32, help="HTTP connections")
    parser.add_argument(
        "--http-variants",
        default="trivial,native,native-quiet",
        help="trivial,native,native-quiet (native with --log-level warning)",
    )
    parser.add_argument("--inprocess-seconds", type=float, default=2.0, help="per cell")
    parser.add_argument("--revocations", type=int, default=300, help="revocations per backend")
    parser.add_argument("--events", type=int, default=10_000, help="Mission events to rebuild")
    parser.add_argument("--backends", default="sqlite,postgres", help="lag: sqlite,postgres")
    parser.add_argument("--parts", default=",".join(PARTS), help=",".join(PARTS))
    parser.add_argument("--quick", action="store_true", help="a smoke run (~1 minute)")
    parser.add_argument(
        "--database-url", default=os.environ.get(ENV_URL), help=f"PostgreSQL URL (${ENV_URL})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.rounds = min(args.seconds, 1.0), 0.5, 1
        args.inprocess_seconds = min(args.inprocess_seconds, 0.5)
        args.revocations, args.events = min(args.revocations, 50), min(args.events, 2000)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.http_variants = [v.strip() for v in args.http_variants.split(",") if v.strip()]
    for part in args.parts:
        if part not in PARTS:
            parser.error(f"unknown part {part!r}: use {', '.join(PARTS)}")
    for variant in args.http_variants:
        if variant not in HTTP_VARIANTS:
            parser.error(f"unknown HTTP variant {variant!r}: use {', '.join(HTTP_VARIANTS)}")
    if "trivial" not in args.http_variants:
        args.http_variants.insert(0, "trivial")  # the baseline is always measured
    for backend in args.backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    needs_pg = "rebuild" in args.parts or ("lag" in args.parts and "postgres" in args.backends)
    if needs_pg and not args.database_url:
        parser.error(f"PostgreSQL needs --database-url or ${ENV_URL} (scripts/bench-check sets it)")
    if args.database_url:
        args.database_url = _url_without_schema(args.database_url)
    if args.revocations < 1 or args.events < 100 or args.rounds < 1:
        parser.error("--revocations >= 1, --events >= 100 and --rounds >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--trivial-server"]:
        return trivial_server()
    if argv[:1] == ["--loadgen"] and len(argv) == 2:
        return loadgen(argv[1])
    args = parse_args(argv)
    report = Report()
    started = time.perf_counter()
    if "http" in args.parts:
        measure_http(args, report)
    if "inprocess" in args.parts:
        measure_inprocess(args, report)
    if "lag" in args.parts:
        measure_lag(args, report)
    if "rebuild" in args.parts:
        measure_rebuild(args, report)

    print()
    print(
        f"bench-check: HTTP {args.rounds} round(s) x {args.seconds:g} s per cell after "
        f"{args.warmup:g} s warm-up, rate = median over rounds, latencies pooled (client-side, "
        f"{args.connections} connections in flight); in-process {args.rounds} round(s) x "
        f"{args.inprocess_seconds:g} s; lag over {args.revocations} revocations per backend."
    )
    for line in format_table(report.rows):
        print(line)
    print()
    for line in report.verdicts:
        print(line)
    print()
    print("CPU used (cores, averaged over the measured windows):")
    for line in report.cpu:
        print(f"  {line}")
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
