"""Reliable push delivery (RFC 8935 as SSF 1.0 §6.1.1 profiles it): the deliverer.

:class:`PushDeliverer` runs on the server's event loop (``serve`` starts it with the embedded
workers) and drains the SSF outbox's queue (:mod:`.push_queue`) into the receivers' endpoints.

**Order and isolation.** Each push stream is delivered by its own task, strictly in queue order
(``seq``, the ledger's order): the head is pushed, and the next SET only after the head was
accepted (any 2xx; the row is deleted) or dead-lettered. A failing head therefore blocks only its
own stream. Requests across streams share one semaphore (``concurrency``, default 64) and ONE
pooled, SSRF-guarded :class:`~.push_client.PushClient` with separate connect and total timeouts
(2 s / 10 s), so a slow or black-holed receiver holds at most one slot for at most the total
timeout, and never delays the other streams while slots remain. A stream's task exists only
while it has something to deliver; a task waiting for a retry holds no slot.

**Status.** ``enabled``: every SET. ``paused``: held, except control SETs (stream-updated), which
are delivered at once. ``disabled``: the outbox already dropped the queue; only control SETs are
left to deliver. Deleted streams (and streams whose receiver was revoked) have no queue left; a
stream switched to poll leaves the deliverer.

**Outcomes** (:mod:`.rfc8935_push` classifies them): any 2xx — delivered. A permanent error
(400 ``invalid_request``, ``invalid_issuer``, ``invalid_audience``, ``invalid_state``, unknown
codes) — dead letter at once, the error recorded. Transient failures (network, timeouts, 5xx,
429, …) — retried on the *fast* schedule; ``invalid_key``, ``authentication_failed``,
``access_denied``, 401/403, other 4xx, refused redirects and SSRF refusals — on the *slow*
schedule (the fix is on the receiver's side, or DNS, or the operator's flags). A schedule is
exponential backoff with FULL jitter: before retry ``n`` the deliverer waits a uniformly random
time in ``[0, min(cap, base · 2^(n-1))]``, at least ``Retry-After`` when the receiver sent one
(at most ``retry_after_cap``). A SET whose fast or slow failures reach that schedule's
``attempts`` becomes a dead letter: it no longer blocks the stream, it stays in the queue for
``mission-ledger streams dead-letters`` and ``streams redeliver``.

**Crash safety.** Attempts, the next attempt time and the last error are written to the queue
row after every failed attempt (outcomes of all streams are written together, one transaction
per batch), and a row is deleted only after its 2xx. After a crash or restart delivery resumes
from the rows: the same SETs, the same jtis. A SET whose 2xx was lost (a crash between the
answer and the delete, a timeout after the receiver stored it) is delivered again with the SAME
jti: receivers de-duplicate by jti (RFC 8935 §2: "the same SET may be transmitted more than
once"). Delivery is at least once, and in order within a stream.

**Wake-ups.** The embedded outbox worker's listener (:meth:`PushDeliverer.notify_threadsafe`,
from its thread, via ``call_soon_threadsafe``) starts delivery of new SETs at once; a stream
waiting for a retry sleeps on a timer; and a scan every ``scan_interval`` (0.5 s) sees SETs
written by a separately running ``mission-ledger worker``, status changes, new or changed
endpoints and dead letters an operator redelivered.

**Signatures before they are stored.** A big page's SETs are committed unsigned and signed just
after (:mod:`.outbox`); the worker offers the signatures here as they come
(:meth:`PushDeliverer.offer_threadsafe`) before it stores them, and a stream task sends such a
row with the offered bytes. That is safe because the row — its claims and ``jti`` — is
committed, and signing is deterministic: if the process dies before the store, the worker signs
the row again to the same bytes. A stream task that reaches a row whose signature is neither
stored nor offered holds the rest of its batch and waits for the offer (up to
``scan_interval``, then it reads the rows again), so a page costs each stream one read, not one
per offer; a task whose batch was complete and all sent ends without another read unless new
SETs were queued meanwhile.

**One deliverer per store.** A deliverer claims the queue before delivering — a PostgreSQL
session advisory lock (checked every few seconds, taken again after a lost connection), or an
exclusive lock on ``<data_dir>/ssf-push.lock`` for SQLite — so two servers never push the same
stream concurrently; the other one waits on standby and takes over when the first stops.

**Store outages** (PostgreSQL restarting, SQLite locked) make reads and writes fail with
``Unavailable``: each stream task backs off (up to 5 s) and re-reads its head; nothing is lost,
at worst a SET delivered during the outage is delivered again (same jti).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import IO, Any, ParamSpec, TypeVar

import psycopg

from ..config import Settings
from ..domain.errors import InvalidInput
from ..errors import Unavailable, first_line
from ..projections.errors import AnotherWorkerActive
from ..projections.runner import advisory_lock_key, release_session_locks
from .outbox_store import OutboxStore, Signature
from .push_client import PushClient
from .push_queue import Delivered, Failed, Outcome, PushBatch, PushHead, PushItem, PushTarget
from .rfc8935_push import Attempt, Kind, push_once
from .ssrf import PushTargetPolicy

__all__ = [
    "PUSH_CLAIM",
    "PushClaim",
    "PushDeliverer",
    "PushOptions",
    "RetrySchedule",
]

LOG = logging.getLogger("mission_ledger.ssf.push")

PUSH_CLAIM = "ssf_push"  # the advisory lock's projection name (one deliverer per store)
SQLITE_LOCK_FILE = "ssf-push.lock"
CLAIM_CHECK_INTERVAL = 2.0  # seconds between checks that the claim still holds
STANDBY_INTERVAL = 2.0  # seconds between attempts to take a claim another deliverer holds
MAX_STORE_BACKOFF = 5.0  # seconds: the longest wait before re-reading after a store error
MIN_SCAN_GAP = 0.05  # seconds between two scans (wake-ups for unknown streams are coalesced)
FRESH_FOR = 30.0  # seconds an offered (signed, not yet stored) signature is kept at most

P = ParamSpec("P")
R = TypeVar("R")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with full jitter: retry ``n`` (1-based) waits a uniformly random time
    in ``[0, min(cap, base · 2^(n-1))]``; after ``attempts`` failures the SET is dead-lettered."""

    base: float
    cap: float
    attempts: int

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.attempts >= 1):
            raise InvalidInput(
                "a retry schedule needs base > 0, cap >= base and at least 1 attempt; got "
                f"base {self.base:g}, cap {self.cap:g}, attempts {self.attempts}",
                field="retry_schedule",
            )

    def ceiling(self, failures: int) -> float:
        """The longest wait after ``failures`` failed attempts (the jitter's upper bound)."""
        exponent = min(max(failures, 1) - 1, 62)
        return float(min(self.cap, self.base * (2**exponent)))

    def delay(self, failures: int, rng: random.Random) -> float:
        return rng.uniform(0.0, self.ceiling(failures))

    @classmethod
    def parse(cls, text: str) -> RetrySchedule:
        """``"BASE,CAP,ATTEMPTS"`` (seconds, seconds, count), e.g. ``"0.5,60,20"``."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 3:
            raise InvalidInput(
                f"a retry schedule is BASE,CAP,ATTEMPTS (e.g. 0.5,60,20); got {text!r}",
                field="retry_schedule",
            )
        try:
            return cls(float(parts[0]), float(parts[1]), int(parts[2]))
        except ValueError:
            raise InvalidInput(
                f"a retry schedule is BASE,CAP,ATTEMPTS with numbers; got {text!r}",
                field="retry_schedule",
            ) from None


FAST_SCHEDULE = RetrySchedule(base=0.5, cap=60.0, attempts=20)
SLOW_SCHEDULE = RetrySchedule(base=30.0, cap=900.0, attempts=12)


@dataclass(frozen=True)
class PushOptions:
    """How the push deliverer runs (``serve`` flags; tests shrink the schedules)."""

    policy: PushTargetPolicy = field(default_factory=PushTargetPolicy)
    concurrency: int = 64  # requests in flight across all streams
    connect_timeout: float = 2.0  # seconds for one TCP connect
    total_timeout: float = 10.0  # seconds for a whole request, answer included
    fast: RetrySchedule = FAST_SCHEDULE  # network errors, timeouts, 5xx, 429
    slow: RetrySchedule = SLOW_SCHEDULE  # invalid_key, auth, 401/403, redirects, SSRF refusals
    retry_after_cap: float = 900.0  # the most a receiver's Retry-After can make us wait
    scan_interval: float = 0.5  # seconds between scans of the queue
    batch_size: int = 32  # SETs a stream task reads at once
    drain_timeout: float = 5.0  # on stop: seconds in-flight requests may take to finish

    def __post_init__(self) -> None:
        checks = (
            ("concurrency", self.concurrency >= 1),
            ("connect_timeout", self.connect_timeout > 0),
            ("total_timeout", self.total_timeout > 0),  # it bounds the connect too
            ("retry_after_cap", self.retry_after_cap >= 0),
            ("scan_interval", self.scan_interval > 0),
            ("batch_size", self.batch_size >= 1),
            ("drain_timeout", self.drain_timeout >= 0),
        )
        for name, ok in checks:
            if not ok:
                raise InvalidInput(
                    f"invalid push option {name} (concurrency and batch_size at least 1, "
                    "timeouts and intervals positive)",
                    field=name,
                )


# -- the claim ------------------------------------------------------------------------------------


class PushClaim:
    """The deliverer's exclusive claim on the push queue of a store (see the module doc):
    a PostgreSQL session advisory lock, or ``flock`` on ``<data_dir>/ssf-push.lock``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._conn: psycopg.Connection[Any] | None = None
        self._file: IO[bytes] | None = None

    @property
    def postgres(self) -> bool:
        return self.settings.backend() == "postgres"

    def acquire(self) -> None:
        """Take the claim (again, after a lost session); AnotherWorkerActive when another
        deliverer holds it, Unavailable when the store cannot be reached."""
        if self.postgres:
            self._acquire_postgres()
        else:
            self._acquire_file()

    def _acquire_postgres(self) -> None:
        if self._conn is not None and not self._conn.closed:
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
            key = advisory_lock_key(target.schema, PUSH_CLAIM)
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()
        except psycopg.Error as error:
            conn.close()
            raise Unavailable(f"cannot take the SSF push lock ({first_line(error)})") from None
        if not (row and row[0]):
            conn.close()
            raise AnotherWorkerActive(
                f"another SSF push deliverer (another server) holds the push lock of schema "
                f"{target.schema!r} on {target.where}; this one waits on standby",
                schema=target.schema,
            )
        self._conn = conn

    def _acquire_file(self) -> None:
        if self._file is not None:
            return
        path = self.settings.data_dir / SQLITE_LOCK_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = path.open("ab")
        except OSError as error:
            raise Unavailable(f"cannot open the push lock file {path}: {error}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise AnotherWorkerActive(
                f"another SSF push deliverer (another server on {self.settings.data_dir}) holds "
                f"{path}; this one waits on standby",
                path=str(path),
            ) from None
        self._file = handle

    def holds(self) -> None:
        """Check that the claim still holds; a lost PostgreSQL session (a restart, a killed
        backend) is taken again if free. Raises as :meth:`acquire` does."""
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT 1")
                return
            except psycopg.Error:
                self.release()
        self.acquire()

    def release(self) -> None:
        if self._conn is not None:
            release_session_locks(self._conn)
            self._conn = None
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# -- the deliverer --------------------------------------------------------------------------------


@dataclass
class _Lane:
    """One stream's delivery task and what the scan compares with."""

    stream_id: str
    task: asyncio.Task[None] | None = None
    refresh: asyncio.Event = field(default_factory=asyncio.Event)  # re-read the head now
    new_sets: bool = False  # the outbox queued SETs since the last read started
    status: str | None = None
    endpoint_url: str | None = None
    secret_updated_at: datetime | None = None
    # the head's last failure here: (seq, endpoint, authorization) it failed with
    failed: tuple[int, str, str | None] | None = field(default=None, repr=False)
    current_seq: int | None = None
    sent: set[int] = field(default_factory=set)  # delivered in this batch (deletes pending)
    waiting: bool = False  # sleeping until the head's next attempt
    wake: asyncio.Event = field(default_factory=asyncio.Event)  # an offer, new SETs, a refresh

    def reread(self) -> None:
        """Re-read the head now (wakes the task if it sleeps or holds)."""
        self.refresh.set()
        self.wake.set()

    def observe(self, head: PushHead) -> None:
        """The scan's view of the stream: re-read when something that matters changed (the
        status or endpoint; a head before the current one, e.g. redelivered dead letters; the
        head this task waits for is gone)."""
        changed = (head.status, head.endpoint_url, head.secret_updated_at) != (
            self.status,
            self.endpoint_url,
            self.secret_updated_at,
        )
        earlier = (
            head.seq is not None
            and self.current_seq is not None
            and head.seq < self.current_seq
            and head.seq not in self.sent
        )
        moved = self.waiting and head.seq != self.current_seq
        if changed or earlier or moved:
            self.reread()


class _Writer:
    """Collects attempt outcomes from every stream task and writes them in one transaction per
    flush (so 64 streams delivering cost one write, not 64)."""

    def __init__(self, deliverer: PushDeliverer) -> None:
        self._deliverer = deliverer
        self._pending: list[tuple[Outcome, asyncio.Future[bool]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ssf-push-writer")

    def submit(self, outcome: Outcome) -> asyncio.Future[bool]:
        """Queue an outcome; the future turns True once it is written, False if the write
        failed (the row is then as before: the SET is attempted again, same jti)."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((outcome, future))
        self._ready.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self.flush()

    async def flush(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        outcomes = [outcome for outcome, _ in pending]
        written = True
        try:
            await self._deliverer._call(
                self._deliverer.store.push.record, outcomes, self._deliverer.now()
            )
        except Exception as error:  # Unavailable, mostly: the tasks re-read and retry
            LOG.warning("SSF push: cannot record %d outcome(s): %s", len(outcomes), error)
            written = False
        for _, future in pending:
            if not future.done():
                future.set_result(written)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()  # what finished before the stop is recorded


class _Reader:
    """Reads the stream tasks' next batches together: every read asked for while one runs (or
    in the same turn of the loop) joins the next one, a single snapshot for all those streams
    (:meth:`.push_queue.PushQueue.batches`), so a revocation that wakes a hundred streams
    costs one read, not a hundred."""

    def __init__(self, deliverer: PushDeliverer) -> None:
        self._deliverer = deliverer
        self._waiting: dict[str, list[asyncio.Future[PushBatch | None]]] = {}
        self._task: asyncio.Task[None] | None = None

    async def read(self, stream_id: str) -> PushBatch | None:
        """The stream's next batch (None: not a live push stream); raises what the read
        raised (``Unavailable``: the caller backs off)."""
        future: asyncio.Future[PushBatch | None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(stream_id, []).append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="ssf-push-reader")
        return await future

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # the tasks woken in this turn ask too
                waiting, self._waiting = self._waiting, {}
                try:
                    batches = await self._deliverer._call(
                        self._deliverer.store.push.batches,
                        list(waiting),
                        self._deliverer.options.batch_size,
                    )
                except Exception as error:
                    for futures in waiting.values():
                        for future in futures:
                            if not future.done():
                                future.set_exception(error)
                    continue
                for stream_id, futures in waiting.items():
                    for future in futures:
                        if not future.done():
                            future.set_result(batches.get(stream_id))
        except asyncio.CancelledError:
            for futures in self._waiting.values():
                for future in futures:
                    future.cancel()
            self._waiting.clear()
            raise


class PushDeliverer:
    """Delivers push streams' SETs (see the module docstring). Lives on one event loop:
    :meth:`start` and :meth:`stop` there; :meth:`notify_threadsafe` from any thread."""

    def __init__(
        self,
        settings: Settings,
        options: PushOptions | None = None,
        *,
        store: OutboxStore | None = None,
        now: Callable[[], datetime] = _utcnow,
        user_agent: str = "mission-ledger (SSF transmitter)",
    ) -> None:
        self.settings = settings
        self.options = options or PushOptions()
        self.now = now
        self.user_agent = user_agent
        self._store = store
        self._owns_store = store is None
        self._claim = PushClaim(settings)
        self._executor: ThreadPoolExecutor | None = None
        self._client: PushClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._writer: _Writer | None = None
        self._reader: _Reader | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._lanes: dict[str, _Lane] = {}
        self._push_streams: set[str] = set()
        # jti -> (compact JWS, stream id, time.monotonic() offered): signed, not yet stored
        self._fresh: dict[str, tuple[str, str, float]] = {}
        self._scan_now = asyncio.Event()
        self._stopping = False
        self._rng = random.SystemRandom()
        self.claimed = False  # whether this deliverer holds the claim (is delivering)
        self.standby = False  # another deliverer held the claim at the last try
        self.delivered = 0  # SETs accepted since start
        self.failed = 0  # failed attempts since start
        self.dead_lettered = 0  # SETs dead-lettered since start

    @property
    def store(self) -> OutboxStore:
        assert self._store is not None, "start() opens the store"
        return self._store

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the store (unless given) and the HTTP client; start delivering in the background."""
        self._loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="ssf-push")
        if self._store is None:
            self._store = await self._call(OutboxStore.open, self.settings, pool_size=4)
        o = self.options
        self._client = PushClient(
            o.policy, connect_timeout=o.connect_timeout, total_timeout=o.total_timeout
        )
        self._slots = asyncio.Semaphore(o.concurrency)
        self._writer = _Writer(self)
        self._writer.start()
        self._reader = _Reader(self)
        self._main = asyncio.create_task(self._run(), name="ssf-push")

    async def stop(self) -> None:
        """Stop: no new attempt starts; in-flight requests get ``drain_timeout`` to finish
        (their outcomes are recorded), then everything is cancelled and closed. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        for lane in list(self._lanes.values()):
            lane.reread()  # waiting tasks end now; sending ones after their request
        tasks = [lane.task for lane in self._lanes.values() if lane.task is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=self.options.drain_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._main
            self._main = None
        if self._reader is not None:
            await self._reader.stop()
        if self._writer is not None:
            await self._writer.stop()
        if self._client is not None:
            await self._client.close()
        if self._executor is not None:
            await self._call(self._claim.release)
            if self._owns_store and self._store is not None:
                await self._call(self._store.close)
            self._executor.shutdown(wait=True)
        self.claimed = False

    def offer_threadsafe(self, signatures: list[Signature]) -> None:
        """SETs the outbox just signed, whose signatures are not stored yet (call from any
        thread): their streams are delivered now, with these bytes."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and here
            loop.call_soon_threadsafe(self._on_signed, signatures)

    def _on_signed(self, signatures: list[Signature]) -> None:
        if self._stopping or not self.claimed:
            return
        now = time.monotonic()
        idle: set[str] = set()
        for signature in signatures:
            self._fresh[signature.jti] = (signature.set_jwt, signature.stream_id, now)
            lane = self._lanes.get(signature.stream_id)
            if lane is None:
                idle.add(signature.stream_id)
            else:  # it holds its rows (or is sending): it goes on with this signature
                lane.wake.set()
        if idle:
            self._on_new_sets(frozenset(idle))

    def _signed(self, batch: PushBatch) -> PushBatch:
        """The batch up to its first SET whose signature is neither stored nor offered."""
        items = []
        for item in batch.items:
            if item.signed:
                self._fresh.pop(item.jti, None)
            else:
                fresh = self._fresh.get(item.jti)
                if fresh is None:
                    break
                item = replace(item, set_jwt=fresh[0], signed=True)
            items.append(item)
        return replace(batch, items=items)

    def _forget_offers(self, scanned_at: float) -> None:
        """Drop offered signatures no stream task will use: of streams that a scan begun after
        the offer did not find among the live push streams (poll streams, deleted ones), and
        any older than ``FRESH_FOR``."""
        stale = time.monotonic() - FRESH_FOR
        for jti in [
            jti
            for jti, (_, stream_id, at) in self._fresh.items()
            if at < stale or (at < scanned_at and stream_id not in self._push_streams)
        ]:
            del self._fresh[jti]

    def notify_threadsafe(self, stream_ids: set[str]) -> None:
        """The outbox worker queued SETs for ``stream_ids`` (call from any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop closed between the check and here
            loop.call_soon_threadsafe(self._on_new_sets, frozenset(stream_ids))

    def lanes(self) -> int:
        """Streams with a delivery task now (delivering or waiting for a retry)."""
        return len(self._lanes)

    # -- the loop of scans -------------------------------------------------------------------------

    async def _call(self, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        loop = asyncio.get_running_loop()
        assert self._executor is not None
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    async def _run(self) -> None:
        reported_standby = False
        while not self._stopping:
            try:
                await self._call(self._claim.acquire)
            except AnotherWorkerActive as error:
                self.standby = True
                if not reported_standby:
                    LOG.info("SSF push delivery on standby: %s", error.description)
                    reported_standby = True
                await asyncio.sleep(STANDBY_INTERVAL)
                continue
            except Unavailable as error:
                LOG.warning("SSF push delivery cannot take its claim: %s", error.description)
                await asyncio.sleep(STANDBY_INTERVAL)
                continue
            reported_standby = self.standby = False
            self.claimed = True
            LOG.info("SSF push delivery started")
            try:
                await self._scan_loop()
            except Exception:  # a bug: log it, start over (never stop delivering silently)
                LOG.exception("SSF push delivery failed; restarting in %.0f s", MAX_STORE_BACKOFF)
                await asyncio.sleep(MAX_STORE_BACKOFF)
            finally:
                self.claimed = False
                await self._close_lanes()

    async def _scan_loop(self) -> None:
        """Scan until the claim is lost (then return: ``_run`` stands by and tries again)."""
        backoff = 0.0
        checked = last = time.monotonic()
        while not self._stopping:
            gap = MIN_SCAN_GAP - (time.monotonic() - last)
            if gap > 0:  # woken by SETs of unknown streams: at most one scan per gap
                await asyncio.sleep(gap)
            last = time.monotonic()
            self._scan_now.clear()
            try:
                heads = await self._call(self.store.push.heads)
                backoff = 0.0
            except Unavailable as error:
                backoff = min(MAX_STORE_BACKOFF, max(0.1, backoff * 2))
                LOG.warning("SSF push scan: %s; retrying in %.1f s", error.description, backoff)
                await asyncio.sleep(backoff)
                continue
            self._apply_scan(heads)
            self._forget_offers(last)
            if time.monotonic() - checked >= CLAIM_CHECK_INTERVAL:
                checked = time.monotonic()
                try:
                    await self._call(self._claim.holds)
                except AnotherWorkerActive as error:
                    LOG.warning("SSF push delivery lost its claim: %s", error.description)
                    return
                except Unavailable as error:  # cannot tell; the store is down for everyone
                    LOG.warning("SSF push delivery cannot check its claim: %s", error.description)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._scan_now.wait(), self.options.scan_interval)

    def _apply_scan(self, heads: list[PushHead]) -> None:
        self._push_streams = {head.stream_id for head in heads}
        for head in heads:
            lane = self._lanes.get(head.stream_id)
            if lane is not None:
                lane.observe(head)
            elif head.seq is not None:
                self._spawn(head.stream_id)
        for stream_id, lane in self._lanes.items():
            if stream_id not in self._push_streams:
                lane.reread()  # deleted, revoked or switched to poll: it re-reads and ends

    def _on_new_sets(self, stream_ids: frozenset[str]) -> None:
        if self._stopping or not self.claimed:
            return
        unknown = False
        for stream_id in stream_ids:
            lane = self._lanes.get(stream_id)
            if lane is not None:
                lane.new_sets = True
                lane.wake.set()
            elif stream_id in self._push_streams:
                self._spawn(stream_id)
            else:
                unknown = True  # a new stream, or a poll stream: the scan will tell
        if unknown:
            self._scan_now.set()

    def _spawn(self, stream_id: str) -> None:
        if self._stopping:
            return
        lane = _Lane(stream_id)
        self._lanes[stream_id] = lane
        lane.task = asyncio.create_task(self._deliver(lane), name=f"ssf-push-{stream_id}")

    async def _close_lanes(self) -> None:
        lanes = list(self._lanes.values())
        for lane in lanes:
            if lane.task is not None:
                lane.task.cancel()
        await asyncio.gather(*(lane.task for lane in lanes if lane.task), return_exceptions=True)
        self._lanes.clear()

    # -- one stream --------------------------------------------------------------------------------

    async def _deliver(self, lane: _Lane) -> None:
        """Deliver the stream's SETs in order until nothing is deliverable (or stop)."""
        backoff = 0.0
        try:
            while not self._stopping:
                lane.refresh.clear()
                lane.new_sets = False
                try:
                    assert self._reader is not None
                    batch = await self._reader.read(lane.stream_id)
                    if batch is None or not batch.items:
                        if lane.refresh.is_set() or lane.new_sets:
                            continue
                        return  # nothing deliverable now: the scan or the listener restarts it
                    lane.status = batch.target.status
                    lane.endpoint_url = batch.target.endpoint_url
                    lane.secret_updated_at = batch.secret_updated_at
                    complete = await self._deliver_held(lane, batch)
                    backoff = 0.0
                    whole = len(batch.items) < self.options.batch_size  # the queue had no more
                    if complete and whole and not (lane.refresh.is_set() or lane.new_sets):
                        return  # all sent, nothing queued since: new SETs start a task again
                except Unavailable as error:
                    backoff = min(MAX_STORE_BACKOFF, max(0.1, backoff * 2))
                    LOG.warning(
                        "SSF push to stream %s: %s; retrying in %.1f s",
                        lane.stream_id,
                        error.description,
                        backoff,
                    )
                    await self._sleep(lane, backoff)
                except Exception:  # a bug: log it and retry later rather than lose the stream
                    LOG.exception("SSF push to stream %s failed", lane.stream_id)
                    await self._sleep(lane, MAX_STORE_BACKOFF)
        finally:
            if self._lanes.get(lane.stream_id) is lane:
                del self._lanes[lane.stream_id]

    async def _sleep(self, lane: _Lane, seconds: float) -> bool:
        """Sleep up to ``seconds``; True when woken early (``refresh``)."""
        if seconds <= 0:
            return lane.refresh.is_set()
        try:
            await asyncio.wait_for(lane.refresh.wait(), seconds)
        except TimeoutError:
            return False
        return True

    async def _deliver_held(self, lane: _Lane, batch: PushBatch) -> bool:
        """Deliver the batch in order; an unsigned row (its signature neither stored nor
        offered yet) is held, and the task waits up to ``scan_interval`` for its offer instead
        of reading the rows again (a separately running worker's signatures are only stored:
        they are read then). True when every row of the batch was delivered; False on a
        failure, a refresh, new SETs or a signature not offered in time (the caller re-reads)."""
        while True:
            lane.wake.clear()
            ready = self._signed(batch)
            if ready.items:
                await self._deliver_batch(lane, ready)
                if len(lane.sent) < len(ready.items):
                    return False  # a failure, a refresh or stop: the next read says what now
            held = batch.items[len(ready.items) :]
            if not held:
                return True
            if self._stopping or lane.refresh.is_set():
                return False
            batch = replace(batch, items=held)
            if held[0].jti in self._fresh:
                continue  # offered while the rows before it were sent
            try:
                await asyncio.wait_for(lane.wake.wait(), self.options.scan_interval)
            except TimeoutError:
                return False
            if held[0].jti not in self._fresh:
                return False  # new SETs or a refresh woke it, not this offer: read again

    async def _deliver_batch(self, lane: _Lane, batch: PushBatch) -> None:
        """Push the batch's SETs one after the other; stop at the first failure (its new state
        is read back with the next batch), a refresh, or stop. Raises Unavailable when the
        outcomes could not be written (the caller backs off and re-reads)."""
        assert self._slots is not None
        assert self._writer is not None
        writes: list[asyncio.Future[bool]] = []
        lane.sent.clear()
        for item in batch.items:
            if self._stopping or lane.refresh.is_set() or not item.signed:
                break  # (an unsigned item never reaches here: _signed cut the batch before it)
            lane.current_seq = item.seq
            if item.next_attempt_at is not None and not _reconfigured(lane, batch.target, item):
                wait = (item.next_attempt_at - self.now()).total_seconds()
                if wait > 0:
                    lane.waiting = True
                    try:
                        woken = await self._sleep(lane, wait)
                    finally:
                        lane.waiting = False
                    if woken or self._stopping:
                        break
            async with self._slots:
                if self._stopping:
                    break
                attempt = await self._attempt(batch.target, item)
            if attempt.kind is Kind.DELIVERED:
                self.delivered += 1
                lane.sent.add(item.seq)
                self._fresh.pop(item.jti, None)  # its row goes: nobody reads it again
                writes.append(self._writer.submit(Delivered(item.seq)))
                continue
            writes.append(self._writer.submit(self._failed(batch.target, item, attempt)))
            target = batch.target
            lane.failed = (item.seq, target.endpoint_url, target.authorization)
            break  # the head's new state (retry later, or dead letter) is read back
        if writes and not all(await asyncio.gather(*writes)):
            raise Unavailable("the outcomes of push attempts could not be written")

    async def _attempt(self, target: PushTarget, item: PushItem) -> Attempt:
        assert self._client is not None
        return await push_once(
            self._client,
            target.endpoint_url,
            item.set_jwt,
            target.authorization,
            user_agent=self.user_agent,
        )

    def _failed(self, target: PushTarget, item: PushItem, attempt: Attempt) -> Failed:
        """The row's new retry state after a failed attempt (and the log line saying so)."""
        self.failed += 1
        o = self.options
        now = self.now()
        attempts = item.attempts + 1
        slow_attempts = item.slow_attempts + (1 if attempt.kind is Kind.SLOW else 0)
        error = attempt.error or "failed"
        next_at: datetime | None = None
        if attempt.kind is Kind.PERMANENT:
            dead = True
        else:
            schedule = o.slow if attempt.kind is Kind.SLOW else o.fast
            failures = slow_attempts if attempt.kind is Kind.SLOW else attempts - slow_attempts
            dead = failures >= schedule.attempts
            if not dead:
                delay = schedule.delay(failures, self._rng)
                if attempt.retry_after is not None:
                    delay = max(delay, min(attempt.retry_after, o.retry_after_cap))
                next_at = now + timedelta(seconds=delay)
        if dead:
            self.dead_lettered += 1
            LOG.warning(
                "SSF push: SET %s of stream %s dead-lettered after %d attempt(s): %s",
                item.jti,
                target.stream_id,
                attempts,
                error,
                extra={"stream_id": target.stream_id, "jti": item.jti, "attempts": attempts},
            )
        else:
            assert next_at is not None
            LOG.info(
                "SSF push: SET %s of stream %s failed (%s, attempt %d, %s schedule); next "
                "attempt in %.1f s",
                item.jti,
                target.stream_id,
                error,
                attempts,
                attempt.kind.value,
                (next_at - now).total_seconds(),
                extra={"stream_id": target.stream_id, "jti": item.jti, "attempts": attempts},
            )
        return Failed(
            seq=item.seq,
            stream_id=target.stream_id,
            jti=item.jti,
            attempts=attempts,
            slow_attempts=slow_attempts,
            next_attempt_at=next_at,
            last_error=error,
            dead=dead,
            attempted_at=now,
            reported=attempt.reported,
        )


def _reconfigured(lane: _Lane, target: PushTarget, item: PushItem) -> bool:
    """Whether the receiver changed its endpoint or authorization_header since the head failed
    here: then it is retried at once instead of at its scheduled time."""
    if lane.failed is None or lane.failed[0] != item.seq:
        return False
    return lane.failed[1:] != (target.endpoint_url, target.authorization)
