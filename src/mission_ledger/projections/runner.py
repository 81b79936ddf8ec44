"""The batched projection runner: the worker (catch-up and live) and ``rebuild``.

The library's ``Projection`` applies one event per transaction (about 1k events/s catch-up on
PostgreSQL). This runner reads the ledger's notification log in pages
(``select_notifications(start, limit, stop=head, topics=MISSION_TOPICS)``), folds a page into row
inserts and patches in memory (:mod:`.fold`), and writes all of them plus ONE tracking position
in one transaction (:mod:`.views`). The position recorded is the page's last notification id,
or — when the page reached the ledger's head — the head itself, so ``lag()`` reaches 0 even when
the newest events are not Mission events. Ids up to the head are final: the library inserts
under a table lock on PostgreSQL (insert order = commit order) and SQLite has one writer.

One worker per store. On PostgreSQL a worker takes ``pg_try_advisory_lock`` for the views'
schema up front and refuses to start while another session holds it (``rebuild`` takes the same
lock); the lock's connection also LISTENs on the ledger's NOTIFY channel
(``ledger.recorder.channel_name``, ``missionledger_events``) to wake up as soon as a command
commits. On SQLite there is no session lock: every write transaction compares the tracking row
with the position the worker started from (under ``BEGIN IMMEDIATE``), so a second worker — or a
worker whose views were rebuilt under it — fails before writing anything, and the library's
tracking upsert guard (``IntegrityError``) is the last line. Either way the loser raises
:class:`AnotherWorkerActive` and stops; the ``worker`` command exits non-zero with that message.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from eventsourcing.persistence import OperationalError
from psycopg import sql

from ..config import Settings
from ..domain.errors import InvalidInput
from ..errors import Unavailable, first_line
from ..ledger import MISSION_TOPICS, MissionLedger
from .contracts import PROJECTION_TABLES, PROJECTIONS, resolve_projections
from .errors import AnotherWorkerActive, ProjectionMismatch
from .fold import PageFold, fold_page
from .views import PROJECTION_NAME, Views, open_views, store_errors

LOG = logging.getLogger("mission_ledger.projections")
ALL_TABLES: tuple[str, ...] = tuple(t for p in PROJECTIONS for t in PROJECTION_TABLES[p])
LISTEN_WAIT = 0.1  # PostgreSQL: longest sleep between polls while LISTENing (stop latency)
MAX_BACKOFF = 5.0


@dataclass(frozen=True)
class WorkerProgress:
    """What ``run_forever`` reports every ``progress_interval`` seconds."""

    applied: int  # events applied since the previous report
    position: int  # the tracking position now
    head: int  # the ledger's last notification id seen
    seconds: float  # since the previous report


def advisory_lock_key(schema: str, projection: str = PROJECTION_NAME) -> int:
    """The 64-bit advisory lock key of ``projection`` (default: the views) in ``schema``.

    Locks are per database, so the schema and the projection name are all the key needs; each
    projection with a worker of its own (the views, the SSF outbox) has its own key."""
    digest = hashlib.sha256(f"mission_ledger/{projection}/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


#: seconds between two looks at a SQLite log when nothing in this process committed (a CLI
#: command writing the same file is seen within this; the process's own commits at once)
SQLITE_FOLLOW_INTERVAL = 0.02


class WorkerClaim:
    """A worker's exclusive claim on its tables: a PostgreSQL session lock (no-op on SQLite).

    ``projection`` selects the lock key (:func:`advisory_lock_key`); ``holder`` and ``tables``
    word the refusal (defaults: the views' worker)."""

    def __init__(
        self,
        settings: Settings,
        ledger: MissionLedger,
        *,
        listen: bool,
        projection: str = PROJECTION_NAME,
        holder: str = "another projection worker (or a rebuild)",
        tables: str = "the views'",
    ) -> None:
        self.settings = settings
        channel = getattr(ledger.recorder, "channel_name", None)  # PostgreSQL recorders only
        self.channel = channel if listen and isinstance(channel, str) else None
        self.conn: psycopg.Connection[Any] | None = None
        self.projection = projection
        self.holder = holder
        self.tables = tables
        self._commits = ledger.commits
        self._seen = 0  # the ledger's commit count when the worker last looked at the log

    @property
    def postgres(self) -> bool:
        return self.settings.backend() == "postgres"

    def acquire(self) -> None:
        """Take the lock (again, if its connection was lost); AnotherWorkerActive if held.

        Called before each look at the log: it also notes the ledger's commit count, so that
        :meth:`wait` returns at once for a commit made meanwhile."""
        self._seen = self._commits.count
        if not self.postgres or (self.conn is not None and not self.conn.closed):
            return
        self.release()
        target = self.settings.postgres_target()
        try:
            conn = target.connect(autocommit=True)
        except psycopg.Error as error:
            raise Unavailable(
                f"cannot reach PostgreSQL at {target.where} ({first_line(error)})"
            ) from None
        try:
            key = advisory_lock_key(target.schema, self.projection)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
            if not (row and row[0]):
                raise AnotherWorkerActive(
                    f"{self.holder} is running for schema {target.schema!r} on {target.where}: "
                    f"it holds {self.tables} advisory lock. Run only one worker per store; stop "
                    "the other one first.",
                    schema=target.schema,
                )
            if self.channel:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
        except psycopg.Error as error:
            conn.close()
            raise Unavailable(
                f"cannot take {self.tables} lock on {target.where} ({first_line(error)})"
            ) from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Sleep until ``seconds`` pass, ``stop`` is set or the ledger commits: PostgreSQL
        NOTIFYs every commit; elsewhere a commit in this process wakes the worker at once, and
        other processes' commits are polled for at least every ``SQLITE_FOLLOW_INTERVAL``."""
        conn = self.conn
        if conn is None or not self.channel:
            if not stop.is_set():
                self._commits.wait(self._seen, max(seconds, SQLITE_FOLLOW_INTERVAL))
            return
        try:
            for _ in conn.notifies(timeout=max(seconds, LISTEN_WAIT), stop_after=1):
                pass
        except psycopg.Error as error:
            self.release()  # acquire() reconnects and takes the lock again (or refuses)
            raise OperationalError(str(error)) from error

    def release(self) -> None:
        if self.conn is not None:
            release_session_locks(self.conn)
            self.conn = None


def release_session_locks(conn: psycopg.Connection[Any]) -> None:
    """Release the session's advisory locks, then close it. Closing alone would release them
    too, but only once the server has seen the session end: a successor asking right after
    could find the lock still held."""
    with contextlib.suppress(psycopg.Error):
        if not conn.closed:
            conn.execute("SELECT pg_advisory_unlock_all()")
    with contextlib.suppress(psycopg.Error):
        conn.close()


class _Runner:
    """Pages the notification log into the views, compare-and-setting the tracking row."""

    def __init__(
        self,
        ledger: MissionLedger,
        views: Views,
        page_size: int,
        *,
        position: int | None = None,
        tables: Sequence[str] = ALL_TABLES,
    ) -> None:
        self.ledger = ledger
        self.views = views
        self.page_size = page_size
        self.position = position  # None: read it from the tracking row on the first step
        self.head = 0
        self.tables = tuple(tables)

    def read_head(self) -> int:
        return self.ledger.recorder.max_notification_id() or 0

    def step(self) -> tuple[int, bool]:
        """Apply the next page; returns (events applied, whether more pages are due)."""
        if self.position is None:
            self.position = self.views.position()
        position = self.position
        self.head = head = self.read_head()
        if position > head:
            raise ProjectionMismatch(
                f"the views are at ledger position {position} but the ledger ends at {head}: "
                "they were built from another ledger (or the ledger was restored from an older "
                "backup); rebuild them (mission-ledger rebuild)",
                position=position,
                head=head,
            )
        if position == head:
            return 0, False
        notifications = self.ledger.recorder.select_notifications(
            position + 1, self.page_size, stop=head, topics=MISSION_TOPICS
        )
        full = len(notifications) == self.page_size
        new_position = notifications[-1].id if full else head
        mapper = self.ledger.mapper
        page = fold_page((n.id, mapper.to_domain_event(n)) for n in notifications)
        self.write(page, position, new_position)
        self.position = new_position
        return page.applied, new_position < head

    def write(self, page: PageFold, expected: int, new_position: int) -> None:
        """One transaction: check the position, write the rows, record the new position."""
        with self.views.writing() as tx:
            tx.expect_position(expected)
            tx.write(page, self.tables)
            tx.advance(new_position)


class ProjectionWorker:
    """Keeps the three views up to date with the ledger (one per store; see the module doc)."""

    def __init__(
        self,
        ledger: MissionLedger,
        settings: Settings,
        *,
        page_size: int = 1000,
        poll_interval: float = 0.005,
    ) -> None:
        if page_size < 1:
            raise InvalidInput("page_size must be at least 1", field="page_size")
        if poll_interval <= 0:
            raise InvalidInput("poll_interval must be positive", field="poll_interval")
        self.ledger = ledger
        self.settings = settings
        self.poll_interval = poll_interval
        self._views = open_views(settings, pool_size=1)
        self._claim = WorkerClaim(settings, ledger, listen=True)
        self._runner = _Runner(ledger, self._views, page_size)
        self.applied = 0  # events applied by this worker since it started

    def __enter__(self) -> ProjectionWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def position(self) -> int:
        """The position this worker last applied (or read); 0 before its first run."""
        return self._runner.position or 0

    def run_once(self) -> int:
        """Apply everything committed so far; returns the number of Mission events applied."""
        applied = 0
        with store_errors():
            self._claim.acquire()
            more = True
            while more:
                count, more = self._runner.step()
                applied += count
        self.applied += applied
        return applied

    def run_forever(
        self,
        stop: threading.Event,
        *,
        on_progress: Callable[[WorkerProgress], None] | None = None,
        progress_interval: float = 60.0,
    ) -> None:
        """Apply new events as they are committed until ``stop`` is set.

        Store outages are retried with backoff (up to 5 s between attempts); another worker
        (:class:`AnotherWorkerActive`) or views that do not match the ledger
        (:class:`ProjectionMismatch`) stop the loop by raising.
        """
        backoff = 0.0
        since = time.monotonic()
        applied = 0
        while not stop.is_set():
            try:
                with store_errors():
                    self._claim.acquire()
                    count, more = self._runner.step()
                self.applied += count
                applied += count
                backoff = 0.0
                if not more:
                    with store_errors():
                        self._claim.wait(self.poll_interval, stop)
            except Unavailable as error:
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))
                LOG.warning("projection worker: %s; retrying in %.1f s", error.description, backoff)
                stop.wait(backoff)
            now = time.monotonic()
            if on_progress is not None and now - since >= progress_interval:
                on_progress(WorkerProgress(applied, self.position, self._runner.head, now - since))
                since, applied = now, 0

    def lag(self) -> int:
        """The ledger's last notification id minus the views' tracking position."""
        with store_errors():
            return self._runner.read_head() - self._views.position()

    def close(self) -> None:
        self._claim.release()
        self._views.close()


def rebuild(
    ledger: MissionLedger,
    settings: Settings,
    *,
    page_size: int = 5000,
    progress: Callable[[int, int], None] | None = None,
    projection: str | None = None,
) -> int:
    """Drop and recreate view tables, then replay the ledger into them; returns events applied.

    ``projection`` ``None``/``"all"``: every table and the tracking row are recreated in one
    transaction, then the ledger is replayed in pages of ``page_size``, each committed with its
    position like the worker's (an interrupted rebuild is resumed by the worker). One named
    projection: its tables are dropped, recreated and replayed up to the current tracking
    position in ONE transaction, so the other views and the position stay valid throughout.
    ``progress(position, head)`` is called after every page (ledger positions, not counts).
    No worker may run meanwhile: on PostgreSQL the rebuild takes the worker's advisory lock
    (AnotherWorkerActive if held); on SQLite a running worker stops itself at its next write.
    """
    if page_size < 1:
        raise InvalidInput("page_size must be at least 1", field="page_size")
    names = resolve_projections(projection)
    views = open_views(settings, pool_size=1)
    claim = WorkerClaim(settings, ledger, listen=False)
    try:
        with store_errors():
            claim.acquire()
            if names == PROJECTIONS:
                return _rebuild_all(ledger, views, page_size, progress)
            return _rebuild_in_place(ledger, views, names, page_size, progress)
    finally:
        claim.release()
        views.close()


def _rebuild_all(
    ledger: MissionLedger,
    views: Views,
    page_size: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    with views.writing() as tx:
        tx.create(PROJECTIONS, drop=True)
        tx.reset_tracking()
    runner = _Runner(ledger, views, page_size, position=0)
    total, more = 0, True
    while more:
        count, more = runner.step()
        total += count
        if progress is not None:
            progress(runner.position or 0, runner.head)
    return total


def _rebuild_in_place(
    ledger: MissionLedger,
    views: Views,
    names: Sequence[str],
    page_size: int,
    progress: Callable[[int, int], None] | None,
) -> int:
    tables = [t for name in names for t in PROJECTION_TABLES[name]]
    total = 0
    with views.writing() as tx:
        target = tx.tracked_position()  # locked until commit: no worker moves it meanwhile
        tx.create(names, drop=True)
        position = 0
        while position < target:
            notifications = ledger.recorder.select_notifications(
                position + 1, page_size, stop=target, topics=MISSION_TOPICS
            )
            page = fold_page((n.id, ledger.mapper.to_domain_event(n)) for n in notifications)
            tx.write(page, tables)
            total += page.applied
            position = notifications[-1].id if len(notifications) == page_size else target
            if progress is not None:
                progress(position, target)
    return total


__all__ = [
    "ProjectionWorker",
    "WorkerClaim",
    "WorkerProgress",
    "advisory_lock_key",
    "rebuild",
]
