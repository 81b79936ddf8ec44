"""``mission-ledger worker`` and ``mission-ledger rebuild``: keep and recreate the read-side views.

``worker`` applies the ledger's events to the projection views (``mission_index``,
``delegation_graph``, ``authorization``) and, in a second thread, runs the SSF outbox (signed
SETs for every stream, exactly once) until SIGTERM or SIGINT, then finishes the page in hand and
exits 0; it logs one progress line per minute on stderr. Only one worker may run per store:
a second one exits 4 saying another worker is active. ``worker --once`` applies what is there
and exits. ``rebuild [PROJECTION]`` drops and recreates view tables and replays the ledger into
them, with a progress bar on stderr when stderr is a terminal.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

from .cli import PROG, Output, add_command, positive_int, render_fields
from .config import Settings
from .gc_tuning import settle_after_startup
from .ledger import MissionLedger
from .projections import PROJECTIONS, ProjectionWorker, WorkerProgress, rebuild

if TYPE_CHECKING:
    from .ssf.outbox import OutboxWorker

WORKER_EPILOG = f"""\
examples:
  {PROG} worker                       # until SIGTERM/SIGINT (Ctrl-C); one line a minute
  {PROG} worker --once --json         # apply what is there, print the position, exit

The worker keeps the views AND the SSF outbox (the signed SETs streams receive); every `serve`
process delivers push streams from that outbox (one at a time holds the delivery lock).
Run one worker per store (`{PROG} serve` runs one itself unless --no-worker). A second one
exits with code 4: on PostgreSQL it cannot take the views' advisory lock; on SQLite it finds the
views' position moved under it at its first write."""

REBUILD_EPILOG = f"""\
examples:
  {PROG} rebuild                      # every view, replayed from the first event
  {PROG} rebuild mission_index        # one view, in one transaction, up to the current position

Stop the worker first (on PostgreSQL the rebuild refuses while it runs; on SQLite a running
worker stops itself when the views change under it). Rebuild after changing projections/*.sql."""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _log(line: str) -> None:
    print(f"{_stamp()} worker: {line}", file=sys.stderr, flush=True)


# -- worker ---------------------------------------------------------------------------------------


def cmd_worker(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    from .ssf.keys import open_key_store  # the SSF outbox runs beside the views
    from .ssf.outbox import OutboxWorker

    keys = open_key_store(s)
    try:
        keys.ensure_keys()
        with (
            ProjectionWorker(
                ledger, s, page_size=args.page_size, poll_interval=args.poll_interval
            ) as worker,
            OutboxWorker(ledger, s, keys) as outbox,
        ):
            return _work(worker, outbox, args)
    finally:
        keys.close()


def _work(worker: ProjectionWorker, outbox: OutboxWorker, args: argparse.Namespace) -> Output:
    if args.once:
        applied = worker.run_once()
        queued = outbox.run_once()
        document = {
            "applied": applied,
            "position": worker.position,
            "lag": worker.lag(),
            "sets_queued": queued,
            "outbox_lag": outbox.lag(),
        }
        return Output(document, render_fields(list(document.items())))
    stop = threading.Event()
    failure: list[BaseException] = []

    def run_outbox() -> None:
        try:
            outbox.run_forever(stop)
        except BaseException as error:  # reported below; the views stop with it
            failure.append(error)
            stop.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    thread = threading.Thread(target=run_outbox, name="mission-ledger-outbox", daemon=True)
    try:
        settle_after_startup()  # decision 48
        lag = worker.lag()
        _log(
            f"started: {lag:,} ledger events to catch up; then following the ledger "
            "(views and the SSF outbox; SIGTERM or Ctrl-C stops)"
        )
        thread.start()
        worker.run_forever(stop, on_progress=_report, progress_interval=args.report_every)
    finally:
        stop.set()
        thread.join(timeout=30)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    document = {"applied": worker.applied, "position": worker.position, "lag": worker.lag()}
    _log(
        f"stopped: applied {worker.applied:,} events in this run; "
        f"views at position {worker.position:,}"
    )
    return Output(document, "")


def _report(progress: WorkerProgress) -> None:
    rate = progress.applied / progress.seconds if progress.seconds > 0 else 0.0
    _log(
        f"applied {progress.applied:,} events in the last {progress.seconds:.0f} s "
        f"({rate:,.0f} ev/s); position {progress.position:,}, "
        f"lag {max(progress.head - progress.position, 0):,}"
    )


# -- rebuild --------------------------------------------------------------------------------------


class ProgressBar:
    """``[#####.....] 12,345/50,000 events  8,100 ev/s`` redrawn in place (a terminal)."""

    width = 30

    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.started = time.monotonic()
        self.drawn = 0.0
        self.last = (0, 0)

    def update(self, done: int, total: int) -> None:
        self.last = (done, total)
        now = time.monotonic()
        if now - self.drawn >= 0.1 or done >= total:
            self.drawn = now
            self.out.write("\r" + self.line(done, total, now - self.started))
            self.out.flush()

    def line(self, done: int, total: int, seconds: float) -> str:
        filled = self.width if total <= 0 else min(self.width, self.width * done // total)
        rate = done / seconds if seconds > 0 else 0.0
        bar = "#" * filled + "." * (self.width - filled)
        return f"[{bar}] {done:,}/{total:,} events  {rate:,.0f} ev/s"

    def finish(self) -> None:
        done, total = self.last
        self.out.write("\r" + self.line(done, total, time.monotonic() - self.started) + "\n")
        self.out.flush()


def cmd_rebuild(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    bar = ProgressBar(sys.stderr) if sys.stderr.isatty() else None
    reached = [0]

    def progress(done: int, total: int) -> None:
        reached[0] = done
        if bar is not None:
            bar.update(done, total)

    started = time.monotonic()
    try:
        applied = rebuild(
            ledger, s, page_size=args.page_size, progress=progress, projection=args.projection
        )
    finally:
        if bar is not None:
            bar.finish()
    seconds = time.monotonic() - started
    rate = applied / seconds if seconds > 0 else 0.0
    document = {
        "projection": args.projection,
        "applied": applied,
        "position": reached[0],
        "seconds": round(seconds, 3),
        "events_per_second": round(rate),
    }
    summary = (
        f"rebuilt {args.projection}: {applied:,} Mission events applied in {seconds:.1f} s "
        f"({rate:,.0f} ev/s); views at position {reached[0]:,}"
    )
    if bar is None and getattr(args, "json", False):
        print(summary, file=sys.stderr)  # stdout holds the JSON document
    return Output(document, summary)


# -- parsers --------------------------------------------------------------------------------------


def add_projection_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``worker`` and ``rebuild`` on the top-level subparsers."""
    summary = (
        "Apply the ledger's events to the projection views (mission_index, delegation_graph, "
        "authorization), exactly once, until SIGTERM/SIGINT; --once applies what is there."
    )
    p: argparse.ArgumentParser = add_command(sub, "worker", summary, WORKER_EPILOG, common)
    p.add_argument("--once", action="store_true", help="apply what is there, then exit")
    p.add_argument(
        "--page-size",
        type=positive_int,
        default=1000,
        metavar="N",
        help="events folded per transaction (default 1000)",
    )
    p.add_argument(
        "--poll-interval",
        type=_seconds,
        default=0.005,
        metavar="SECONDS",
        help="how often to look for new events when caught up (default 0.005; PostgreSQL is "
        "also woken by the ledger's NOTIFY)",
    )
    p.add_argument(
        "--report-every",
        type=_seconds,
        default=60.0,
        metavar="SECONDS",
        help="seconds between progress lines on stderr (default 60)",
    )
    p.set_defaults(handler=cmd_worker)

    summary = (
        "Drop and recreate projection view tables and replay the ledger into them in batches: "
        "every view (default), or only the one named."
    )
    p = add_command(sub, "rebuild", summary, REBUILD_EPILOG, common)
    p.add_argument(
        "projection",
        nargs="?",
        default="all",
        choices=(*PROJECTIONS, "all"),
        metavar="PROJECTION",
        help=f"one of {', '.join(PROJECTIONS)}, or all (default)",
    )
    p.add_argument(
        "--page-size",
        type=positive_int,
        default=5000,
        metavar="N",
        help="events folded per batch (default 5000)",
    )
    p.set_defaults(handler=cmd_rebuild)
