"""Benchmark the Mission ledger's write path against a bare ``eventsourcing`` Application.

Run through ``scripts/bench-ledger``, which prepares the virtualenv and a PostgreSQL database and
passes its URL in ``MISSION_LEDGER_BENCH_DATABASE_URL``. For every backend × number of callers it
measures, each in a fresh schema (PostgreSQL) or data directory (SQLite):

- ``baseline``: a bare ``eventsourcing`` Application whose callers each save one trivial
  aggregate per transaction, in a loop;
- ``ledger``: ``MissionLedger`` with group commit on, each caller doing propose → approve in a
  loop (each of the two is one command; a Mission is two commands);
- ``ledger-nogc``: the same with group commit off, to show what group commit buys.

Each cell runs ``--rounds`` times, the variants alternating (in flipped order every round);
commands/s is the median over rounds and latencies are pooled. It prints commands/s, p50/p99
latency per command and the ratio of commands/s to the baseline of the same backend and callers,
then a PASS/MISS verdict for the target (PostgreSQL, 16 callers: ledger ≥ 2× baseline with
p99 ≤ 50 ms), then the cost of loading a 1,000-event Mission with snapshots, without them, and
in the worst case between two snapshots. The machine is shared and noisy, so read the ratios,
not absolute figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from eventsourcing.application import Application
from eventsourcing.domain import Aggregate
from psycopg import sql

from mission_ledger.bootstrap import open_ledger, prepare_storage
from mission_ledger.config import Settings
from mission_ledger.ledger import MissionLedger

ENV_URL = "MISSION_LEDGER_BENCH_DATABASE_URL"
TARGET_RATIO = 2.0
TARGET_P99_MS = 50.0
TARGET_LOAD_MS = 2.0
VARIANTS = ("baseline", "ledger", "ledger-nogc")
VARIANT_LABELS = {
    "baseline": "baseline (bare app)",
    "ledger": "ledger, group commit",
    "ledger-nogc": "ledger, no group commit",
}


# -- the baseline: a bare eventsourcing Application ----------------------------------------------


class BenchThing(Aggregate):
    """The most trivial aggregate: one ``Created`` event and no state."""


class BenchBaseline(Application):  # type: ignore[type-arg]
    """A bare Application with its own name, hence its own PostgreSQL events table."""

    name = "BenchBaseline"


# -- storage for one cell ------------------------------------------------------------------------


def _with_schema(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    query.append(("schema", schema))
    return urlunsplit(parts._replace(query=urlencode(query)))


@contextmanager
def fresh_settings(backend: str, base_url: str | None, **overrides: Any) -> Iterator[Settings]:
    """Ledger settings on an empty store: a new PG schema or SQLite data dir, removed afterwards."""
    if backend == "sqlite":
        data_dir = Path(tempfile.mkdtemp(prefix="ml-bench-"))
        try:
            yield Settings(data_dir=data_dir, **overrides)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
        return
    assert base_url is not None
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        # open_ledger and baseline_app create the schema (prepare_storage).
        yield Settings(database_url=_with_schema(base_url, schema), **overrides)
    finally:
        with psycopg.connect(base_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def baseline_app(settings: Settings) -> BenchBaseline:
    """The bare app on the same store settings as the ledger (same pool sizes, same PG knobs)."""
    env = settings.eventsourcing_env()
    env.pop("IS_SNAPSHOTTING_ENABLED", None)
    prepare_storage(settings)  # the data dir or the PG schema, as for the ledger
    if settings.backend() == "sqlite":
        env["SQLITE_DBNAME"] = str(settings.data_dir / "baseline.sqlite3")
    return BenchBaseline(env=env)


def _url_without_schema(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "schema"]
    return urlunsplit(parts._replace(query=urlencode(query)))


# -- running one cell ----------------------------------------------------------------------------


@dataclass
class CellResult:
    backend: str
    callers: int
    variant: str
    commands: int
    seconds: float
    latencies_ms: list[float]
    errors: int = 0
    first_error: str = ""
    missions: int = 0
    batches: int = 0  # group commit: transactions written, and commands in them
    units: int = 0
    round_rates: list[float] = field(default_factory=list)
    round_mission_rates: list[float] = field(default_factory=list)
    ratio: float | None = None

    @property
    def rate(self) -> float:
        """Commands/s: the median over rounds (a shared machine has bursts of other load)."""
        if self.round_rates:
            return statistics.median(self.round_rates)
        return self.commands / self.seconds if self.seconds > 0 else 0.0

    @property
    def mission_rate(self) -> float:
        if self.round_mission_rates:
            return statistics.median(self.round_mission_rates)
        return self.missions / self.seconds if self.seconds > 0 else 0.0

    @property
    def note(self) -> str:
        return f"{self.units / self.batches:.1f} commands/txn" if self.batches else ""

    def percentile(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        ordered = sorted(self.latencies_ms)
        index = min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))
        return ordered[index]


@dataclass
class _Recorder:
    """What one caller thread saw: (finish time, latency, command kind) per command."""

    samples: list[tuple[float, float, str]] = field(default_factory=list)
    errors: int = 0
    first_error: str = ""


def _machine_busy() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    hz = os.sysconf("SC_CLK_TCK")
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


@dataclass
class CpuUse:
    """CPU used during measured windows, in cores: this process, and the whole machine."""

    own: float = 0.0
    machine: float = 0.0
    seconds: float = 0.0

    def add(self, own: float, machine: float, seconds: float) -> None:
        self.own += own
        self.machine += machine
        self.seconds += seconds


CPU = CpuUse()


def drive(
    callers: int,
    warmup: float,
    seconds: float,
    step: Callable[[_Recorder], None],
) -> tuple[list[_Recorder], float, float]:
    """Run ``step`` in a loop on ``callers`` threads; return recorders and the measured window."""
    barrier = threading.Barrier(callers + 1)
    stop = threading.Event()
    recorders = [_Recorder() for _ in range(callers)]

    def loop(recorder: _Recorder) -> None:
        barrier.wait()
        while not stop.is_set():
            try:
                step(recorder)
            except Exception as error:  # counted and shown; a benchmark must not hide failures
                recorder.errors += 1
                if not recorder.first_error:
                    recorder.first_error = f"{type(error).__name__}: {error}"

    threads = [threading.Thread(target=loop, args=(r,), daemon=True) for r in recorders]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter() + warmup
    end = start + seconds
    time.sleep(max(0.0, start - time.perf_counter()))
    own0, machine0 = time.process_time(), _machine_busy()
    time.sleep(max(0.0, end - time.perf_counter()))
    own1, machine1 = time.process_time(), _machine_busy()
    stop.set()
    if machine0 is not None and machine1 is not None:
        CPU.add(own1 - own0, machine1[0] - machine0[0], seconds)
    for thread in threads:
        thread.join(timeout=60)
    return recorders, start, end


def _timed(recorder: _Recorder, kind: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    result = fn()
    t1 = time.perf_counter()
    recorder.samples.append((t1, (t1 - t0) * 1000.0, kind))
    return result


def _collect(
    backend: str,
    callers: int,
    variant: str,
    recorders: list[_Recorder],
    start: float,
    end: float,
) -> CellResult:
    inside = [s for r in recorders for s in r.samples if start <= s[0] <= end]
    errors = [r for r in recorders if r.errors]
    return CellResult(
        backend=backend,
        callers=callers,
        variant=variant,
        commands=len(inside),
        seconds=end - start,
        latencies_ms=[s[1] for s in inside],
        errors=sum(r.errors for r in recorders),
        first_error=errors[0].first_error if errors else "",
        missions=sum(1 for s in inside if s[2] == "approve"),
    )


def proposal_document(caller: int, n: int) -> dict[str, Any]:
    return {
        "user": f"user:bench-{caller}",
        "agent": f"agent:bench-{caller}",
        "task": {"id": f"task-{caller}-{n}", "description": "benchmark mission"},
        "intent": {
            "goal": "read the benchmark invoices",
            "resources": ["https://erp.example.com/invoices"],
            "expires_at": "2099-01-01T00:00:00Z",
        },
        "authority_set": [
            {
                "type": "mission_resource_access",
                "resource": "https://erp.example.com/invoices",
                "actions": ["invoices.read"],
            }
        ],
    }


def run_baseline(
    backend: str, callers: int, base_url: str | None, warmup: float, seconds: float
) -> CellResult:
    with fresh_settings(backend, base_url) as settings:
        app = baseline_app(settings)
        try:
            app.save(BenchThing())  # create tables, open the pool

            def step(recorder: _Recorder) -> None:
                _timed(recorder, "save", lambda: app.save(BenchThing()))

            recorders, start, end = drive(callers, warmup, seconds, step)
        finally:
            app.close()
    return _collect(backend, callers, "baseline", recorders, start, end)


def run_ledger(
    backend: str,
    callers: int,
    base_url: str | None,
    warmup: float,
    seconds: float,
    *,
    group_commit: bool,
) -> CellResult:
    variant = "ledger" if group_commit else "ledger-nogc"
    with fresh_settings(backend, base_url, group_commit=group_commit) as settings:
        ledger = open_ledger(settings)
        try:
            ledger.propose(proposal_document(0, 0), actor="agent:warm")  # tables, pool
            counters = [0] * callers
            ids: dict[int, int] = {}
            ids_lock = threading.Lock()

            def step(recorder: _Recorder) -> None:
                ident = threading.get_ident()
                with ids_lock:
                    caller = ids.setdefault(ident, len(ids))
                counters[caller] += 1
                doc = proposal_document(caller, counters[caller])
                proposed = _timed(
                    recorder, "propose", lambda: ledger.propose(doc, actor=doc["agent"])
                )
                pid = proposed.document["proposal_id"]
                _timed(recorder, "approve", lambda: ledger.approve(pid, actor="human:approver"))

            batches0, units0 = ledger.committer.batches, ledger.committer.units
            recorders, start, end = drive(callers, warmup, seconds, step)
            batches = ledger.committer.batches - batches0
            units = ledger.committer.units - units0
        finally:
            ledger.close()
    result = _collect(backend, callers, variant, recorders, start, end)
    if group_commit:
        result.batches, result.units = batches, units
    return result


def merge(rounds: list[CellResult]) -> CellResult:
    """One row from several rounds of the same cell: median rate, pooled latencies."""
    first = rounds[0]
    return CellResult(
        backend=first.backend,
        callers=first.callers,
        variant=first.variant,
        commands=sum(r.commands for r in rounds),
        seconds=sum(r.seconds for r in rounds),
        latencies_ms=[ms for r in rounds for ms in r.latencies_ms],
        errors=sum(r.errors for r in rounds),
        first_error=next((r.first_error for r in rounds if r.first_error), ""),
        missions=sum(r.missions for r in rounds),
        batches=sum(r.batches for r in rounds),
        units=sum(r.units for r in rounds),
        round_rates=[r.rate for r in rounds],
        round_mission_rates=[r.mission_rate for r in rounds],
    )


# -- loading a long Mission ----------------------------------------------------------------------


def _new_mission(ledger: MissionLedger) -> str:
    doc = proposal_document(0, 0)
    pid = ledger.propose(doc, actor=doc["agent"]).document["proposal_id"]
    return str(ledger.approve(pid, actor="human:approver").document["mission_id"])


def _grow_mission(ledger: MissionLedger, mid: str, to_version: int, *, via_commands: bool) -> None:
    """Suspend/resume the Mission until it has ``to_version`` events (odd versions: active)."""
    if via_commands:  # the real write path, so the ledger takes its own snapshots
        for version in range(ledger.get_mission(mid).version + 1, to_version + 1):
            if version % 2 == 0:
                ledger.suspend(mid, actor="human:operator", reason="bench")
            else:
                ledger.resume(mid, actor="human:operator", reason="bench")
        return
    # Without snapshots every command would replay the whole stream (quadratic set-up time), so
    # record the same events on one loaded aggregate and save them in chunks.
    mission = ledger.get_mission(mid)
    while mission.version < to_version:
        now = ledger.clock.now()
        if mission.version % 2 == 1:
            mission.suspend(actor="human:operator", now=now, reason="bench")
        else:
            mission.resume(actor="human:operator", now=now, reason="bench")
        if mission.version % 100 == 0 or mission.version == to_version:
            ledger.save(mission)


def _median_load_ms(ledger: MissionLedger, mid: str, loads: int) -> float:
    for _ in range(min(10, loads)):
        ledger.get_mission(mid)
    timings = []
    for _ in range(loads):
        t0 = time.perf_counter()
        ledger.get_mission(mid)
        timings.append((time.perf_counter() - t0) * 1000.0)
    return statistics.median(timings)


def measure_load(
    backend: str, base_url: str | None, versions: list[int], loads: int, snapshot_interval: int
) -> list[float]:
    """Median ms of ``get_mission`` on one fresh Mission as it grows to each of ``versions``."""
    timings: list[float] = []
    with fresh_settings(backend, base_url, snapshot_interval=snapshot_interval) as settings:
        ledger = open_ledger(settings)
        try:
            mid = _new_mission(ledger)
            for version in versions:
                _grow_mission(ledger, mid, version, via_commands=snapshot_interval > 0)
                assert ledger.get_mission(mid).version == version
                timings.append(_median_load_ms(ledger, mid, loads))
        finally:
            ledger.close()
    return timings


# -- output --------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


HEADER = (
    f"{'backend':<9} {'callers':>7}  {'variant':<24} {'cmds/s':>8} {'missions/s':>10} "
    f"{'p50 ms':>8} {'p99 ms':>8} {'vs base':>8}  note"
)


def format_row(r: CellResult) -> str:
    ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
    missions = f"{r.mission_rate:10.0f}" if r.variant != "baseline" else f"{'-':>10}"
    note = r.note
    if r.errors:
        note = f"{note}; {r.errors} errors ({r.first_error[:60]})".lstrip("; ")
    return (
        f"{r.backend:<9} {r.callers:>7}  {VARIANT_LABELS[r.variant]:<24} {r.rate:8.0f} {missions} "
        f"{r.percentile(0.50):8.2f} {r.percentile(0.99):8.2f} {ratio:>8}  {note}"
    )


def verdict(results: list[CellResult]) -> str:
    cell = next(
        (
            r
            for r in results
            if r.backend == "postgres" and r.callers == 16 and r.variant == "ledger"
        ),
        None,
    )
    if cell is None or cell.ratio is None:
        return "target: not measured (needs --backends postgres --callers 16)"
    p99 = cell.percentile(0.99)
    ok = cell.ratio >= TARGET_RATIO and p99 <= TARGET_P99_MS and not cell.errors
    return (
        f"target (postgres, 16 callers: ledger >= {TARGET_RATIO:.0f}x baseline cmds/s, "
        f"p99 <= {TARGET_P99_MS:.0f} ms): {'PASS' if ok else 'MISS'} "
        f"-- {cell.ratio:.2f}x ({cell.rate:.0f} vs {cell.rate / cell.ratio:.0f} cmds/s), "
        f"p99 {p99:.1f} ms"
    )


# -- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench-ledger", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured seconds per cell")
    parser.add_argument("--callers", default="1,16", help="comma-separated caller counts")
    parser.add_argument("--backends", default="sqlite,postgres", help="sqlite,postgres")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3, help="rounds per cell (median taken)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 1 s cells, few loads")
    parser.add_argument("--events", type=int, default=1000, help="events in the long Mission")
    parser.add_argument("--loads", type=int, default=200, help="loads timed for the median")
    parser.add_argument("--skip-load", action="store_true", help="skip the long-Mission load")
    parser.add_argument(
        "--database-url", default=os.environ.get(ENV_URL), help=f"PostgreSQL URL (${ENV_URL})"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = min(args.seconds, 1.0)
        args.rounds = 1
        args.loads = min(args.loads, 30)
    if args.warmup is None:
        args.warmup = min(1.0, args.seconds / 4)
    args.callers = [int(c) for c in args.callers.split(",") if c.strip()]
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for backend in args.backends:
        if backend not in ("sqlite", "postgres"):
            parser.error(f"unknown backend {backend!r}: use sqlite and/or postgres")
    for variant in args.variants:
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}: use {', '.join(VARIANTS)}")
    if "postgres" in args.backends and not args.database_url:
        parser.error(f"postgres needs --database-url or ${ENV_URL} (scripts/bench-ledger sets it)")
    if args.database_url:
        args.database_url = _url_without_schema(args.database_url)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: dict[tuple[str, int, str], list[CellResult]] = {}
    # Variants alternate within each round, and their order flips every round, so a burst of
    # load from elsewhere on the machine does not always land on the same variant.
    cells = [
        (b, c, n, v)
        for b in args.backends
        for c in args.callers
        for n in range(args.rounds)
        for v in (args.variants if n % 2 == 0 else args.variants[::-1])
    ]
    for index, (backend, callers, n, variant) in enumerate(cells, 1):
        where = f"[{index}/{len(cells)}] {backend}, {callers} callers, round {n + 1}, {variant}"
        if variant == "baseline":
            result = run_baseline(backend, callers, args.database_url, args.warmup, args.seconds)
        else:
            result = run_ledger(
                backend,
                callers,
                args.database_url,
                args.warmup,
                args.seconds,
                group_commit=variant == "ledger",
            )
        rounds.setdefault((backend, callers, variant), []).append(result)
        progress(
            f"{where}: {result.rate:.0f} cmds/s, p99 {result.percentile(0.99):.1f} ms"
            + (f", {result.note}" if result.note else "")
            + (f", {result.errors} errors: {result.first_error}" if result.errors else "")
        )
    results = [
        merge(rounds[(b, c, v)]) for b in args.backends for c in args.callers for v in args.variants
    ]
    for r in results:
        base = next(
            (
                b
                for b in results
                if (b.backend, b.callers, b.variant) == (r.backend, r.callers, "baseline")
            ),
            None,
        )
        if base is not None and base.rate > 0:
            r.ratio = r.rate / base.rate

    print()
    print(
        f"Write throughput: {args.rounds} round(s) of {args.seconds:g} s per cell after "
        f"{args.warmup:g} s warm-up; cmds/s = median over rounds, latencies pooled."
    )
    print("A ledger Mission = propose + approve = 2 commands; approve also reads the proposal.")
    print(HEADER)
    print("-" * len(HEADER))
    for r in results:
        print(format_row(r))
    print()
    print(verdict(results))
    if CPU.seconds:
        print(
            f"CPU in the measured windows: this process {CPU.own / CPU.seconds:.2f} cores, the "
            f"whole machine {CPU.machine / CPU.seconds:.2f} of {os.cpu_count()} (the rest is the "
            "database and whatever else runs on the machine)"
        )

    if args.skip_load:
        return 0
    print()
    interval = Settings().snapshot_interval
    worst = args.events + interval - 1  # the most events replayed on top of a snapshot
    print(
        f"Loading a {args.events:,}-event Mission (get_mission, median of {args.loads} loads; "
        f"snapshots every {interval} events, the ledger's default):"
    )
    print(
        f"  {'backend':<9} {'snapshots':>10} {'no snapshots':>13} {'speed-up':>9}   "
        f"{'v' + format(worst, ','):>10} (worst case: {interval - 1} events after a snapshot)"
    )
    verdicts = []
    for backend in args.backends:
        progress(f"long Mission on {backend}: with snapshots ...")
        with_ms, worst_ms = measure_load(
            backend, args.database_url, [args.events, worst], args.loads, interval
        )
        progress(f"long Mission on {backend}: without snapshots ...")
        (without_ms,) = measure_load(backend, args.database_url, [args.events], args.loads, 0)
        print(
            f"  {backend:<9} {with_ms:7.2f} ms {without_ms:10.2f} ms "
            f"{without_ms / with_ms:8.0f}x   {worst_ms:7.2f} ms"
        )
        verdicts.append(
            f"{backend} {'PASS' if with_ms < TARGET_LOAD_MS else 'MISS'} ({with_ms:.2f} ms; "
            f"worst case {worst_ms:.2f} ms {'PASS' if worst_ms < TARGET_LOAD_MS else 'MISS'})"
        )
    print(f"load target (< {TARGET_LOAD_MS:g} ms with snapshots): " + "; ".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
