"""The SSF outbox worker: ledger events in, signed Security Event Tokens queued, exactly once.

A tracked projection of the ledger (the same machinery as the views, :mod:`..projections`). The
worker reads the notification log in pages (``select_notifications(start, limit, stop=head,
topics=OUTBOX_TOPICS)``: every Mission event, ``ProposalSubmitted`` and ``ProposalDenied``, every
``Stream*`` event, ``PrincipalRevoked``), folds a page into rows and SET drafts
(:mod:`.outbox_fold`, which states the rules per ledger event), signs the drafts, and writes
rows, SETs and the new tracking position in ONE transaction
(:meth:`.outbox_store.OutboxStore.write_page`). The position recorded is the page's last
notification id, or the ledger's head when the page reached it (or, when a page caused more
than 2,000 SETs, the last event folded: signing work per transaction stays bounded).

**Exactly once.** A SET exists for (ledger event, event type, stream) iff the page holding the
event committed, and a page commits only together with the position after it. A crash anywhere
before the commit loses the page's signatures and rows alike — none of them ever left the
process — and the next run folds the same page again from the recorded position. A crash after
the commit re-reads the position and continues after the page. Two writers cannot both commit a
page: the worker holds a PostgreSQL session advisory lock (its own key, distinct from the views'
worker's) and, on every backend, the tracking row is compared with the position the writer
started from under the write lock; the library's tracking upsert refuses a position already
recorded, and ``UNIQUE (stream_id, txn, event_type)`` on the queue is the last line. The fold
reads only the page, the immutable ledger and rows of earlier (committed) pages, so a re-done
page yields the same rows. After any failure the worker forgets its cached position and
streams and re-reads them (the page may or may not have committed).

**Signing** runs in the worker thread, never on an event loop, with ``keys.active(alg)`` of each
stream's ``signing_alg`` (RS256 by default, ES256 per stream). A page with at least 8 RS256 SETs
is signed in a small thread pool: RSA signing (≈0.8 ms per 2048-bit signature here, the
default; ≈3 ms per 3072-bit one; 90% of the worker's time in a profile) runs in OpenSSL without
the GIL, so on this 2-core machine the worker queued ≈500 RS256 (3072-bit) SETs/s with two
signing threads against ≈280/s with one (measured end to end, SQLite, 1,350 SETs; on a machine
loaded by other processes the two were within noise). ES256 signs an order of magnitude faster
and is not worth the hand-off. ``iat`` and the queue's ``created_at`` come from the ledger's
clock.

**Wake-ups.** PostgreSQL: the worker's lock connection LISTENs on the ledger's NOTIFY channel,
so a commit wakes it at once; SQLite: it polls every ``poll_interval``. After every committed
page that queued SETs, listeners (:meth:`OutboxWorker.add_listener`) hear which streams got
them — the long-poll endpoint uses that to answer at once.

**Key retirement.** A rotated-out key stays published (``retiring``) until no queued SET signed
with it remains. While idle, at most every 30 s, the worker retires (unpublishes) every
``retiring`` key whose ``kid`` no queued row carries, and logs it at INFO.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from ..config import Settings
from ..domain.errors import Conflict, InvalidInput, NotFound
from ..domain.principal import Principal as PrincipalAggregate
from ..domain.proposal import Proposal
from ..domain.stream import STREAM_TOPICS
from ..errors import KeyStoreError, Unavailable
from ..ledger import MISSION_TOPICS, MissionLedger
from ..projections.errors import ProjectionMismatch
from ..projections.runner import WorkerClaim
from ..projections.views import store_errors
from .keys import KeyStore, SigningKey
from .outbox_fold import STREAM_UPDATED, VERIFICATION, Draft, LedgerFacts, PageFold
from .outbox_store import FoldedStream, OutboxStore, QueuedSet
from .outbox_tables import PROJECTION_NAME
from .rfc8417_set import sign_set

__all__ = [
    "OUTBOX_TOPICS",
    "STREAM_UPDATED",
    "VERIFICATION",
    "Listener",
    "OutboxWorker",
]

LOG = logging.getLogger("mission_ledger.ssf.outbox")

OUTBOX_TOPICS: tuple[str, ...] = (
    *MISSION_TOPICS,
    Proposal.Submitted.TOPIC,
    Proposal.Denied.TOPIC,
    *STREAM_TOPICS,
    PrincipalAggregate.Revoked.TOPIC,
)
RETIRE_INTERVAL = 30.0  # seconds between key-retirement checks while idle
MAX_PAGE_SETS = 2000  # a page stops folding once it caused this many SETs (bounded signing work)
PARALLEL_SIGNING_MIN = 8  # RS256 SETs in a page from which signing uses the thread pool
MAX_BACKOFF = 5.0
_WHERE = "the SSF outbox (ledger or outbox store)"

#: ``callback(stream_ids)``: the streams a committed page queued SETs for
Listener = Callable[[set[str]], None]


class OutboxWorker:
    """Keeps the SSF outbox up to date with the ledger (one per store; see the module doc).

    ``run_once`` / ``run_forever`` are for one thread at a time (the worker's); ``lag`` and
    ``add_listener`` may be called from any thread."""

    def __init__(
        self,
        ledger: MissionLedger,
        settings: Settings,
        keys: KeyStore,
        *,
        page_size: int = 500,
        poll_interval: float = 0.005,
        sign_threads: int | None = None,
    ) -> None:
        if page_size < 1:
            raise InvalidInput("page_size must be at least 1", field="page_size")
        if poll_interval <= 0:
            raise InvalidInput("poll_interval must be positive", field="poll_interval")
        self.ledger = ledger
        self.settings = settings
        self.keys = keys
        self.page_size = page_size
        self.poll_interval = poll_interval
        self.sign_threads = (
            sign_threads if sign_threads is not None else min(4, os.cpu_count() or 1)
        )
        self._store = OutboxStore.open(settings, pool_size=1)
        self._claim = WorkerClaim(
            settings,
            ledger,
            listen=True,
            projection=PROJECTION_NAME,
            holder="another SSF outbox worker",
            tables="the SSF outbox's",
        )
        self._listeners: list[Listener] = []
        self._listeners_lock = threading.Lock()
        self._position: int | None = None  # None: read the tracking row on the next step
        self._streams: dict[str, FoldedStream] | None = None  # None: load on the next step
        self._facts = LedgerFacts(ledger, self._store)
        self._pool: ThreadPoolExecutor | None = None
        self._last_retire = float("-inf")
        self.head = 0  # the ledger's last notification id seen
        self.applied = 0  # ledger events folded by this worker since it started
        self.enqueued = 0  # SETs queued by this worker since it started

    def __enter__(self) -> OutboxWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def store(self) -> OutboxStore:
        """The worker's own store (reads for tests and the CLI; writes are the worker's)."""
        return self._store

    @property
    def position(self) -> int:
        """The position this worker last wrote (or read); 0 before its first run."""
        return self._position or 0

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(stream_ids)`` after every committed page that queued SETs, with the
        streams that got new ones (from the worker thread: keep it short, e.g. wake pollers)."""
        with self._listeners_lock:
            self._listeners.append(callback)

    # -- running ----------------------------------------------------------------------------------

    def run_once(self) -> int:
        """Fold everything committed so far; returns the number of SETs queued."""
        queued = 0
        with store_errors(_WHERE):
            self._claim.acquire()
            more = True
            while more:
                count, more = self._step()
                queued += count
        return queued

    def run_forever(self, stop: threading.Event) -> None:
        """Fold new events as they are committed until ``stop`` is set.

        Store and key-store outages are retried with backoff (up to 5 s between attempts);
        another worker (``AnotherWorkerActive``) or an outbox that does not match the ledger
        (``ProjectionMismatch``) stop the loop by raising. While idle, retiring keys that no
        queued SET needs are retired, at most every 30 s."""
        backoff = 0.0
        while not stop.is_set():
            try:
                with store_errors(_WHERE):
                    self._claim.acquire()
                    _, more = self._step()
                    backoff = 0.0
                    if not more:
                        if time.monotonic() - self._last_retire >= RETIRE_INTERVAL:
                            self.retire_keys()
                        self._claim.wait(self.poll_interval, stop)
            except (Unavailable, KeyStoreError) as error:
                backoff = min(MAX_BACKOFF, max(0.1, backoff * 2))
                LOG.warning("SSF outbox worker: %s; retrying in %.1f s", error.description, backoff)
                stop.wait(backoff)

    def lag(self) -> int:
        """The ledger's last notification id minus the outbox's tracking position."""
        with store_errors(_WHERE):
            head = self.ledger.recorder.max_notification_id() or 0
            return head - self._store.position()

    def retire_keys(self) -> list[str]:
        """Retire every ``retiring`` key that signed no queued SET; returns their kids."""
        self._last_retire = time.monotonic()
        with store_errors(_WHERE):
            self._claim.acquire()
            queued = self._store.queued_kids()
        retired: list[str] = []
        for key in self.keys.list():
            if key["status"] == "retiring" and key["kid"] not in queued:
                try:
                    self.keys.retire(key["kid"])
                except (Conflict, NotFound) as error:  # changed by an operator meanwhile
                    LOG.warning("not retiring SSF signing key %s: %s", key["kid"], error)
                    continue
                LOG.info(
                    "retired SSF signing key %s (%s): no queued SET was signed with it",
                    key["kid"],
                    key["alg"],
                )
                retired.append(key["kid"])
        return retired

    def close(self) -> None:
        self._claim.release()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._store.close()

    # -- one page ---------------------------------------------------------------------------------

    def _step(self) -> tuple[int, bool]:
        """Fold, sign and write the next page; returns (SETs queued, whether more is due).

        Any failure forgets the cached position and streams (re-read on the next step): the
        page may or may not have committed, and the cache may hold its uncommitted changes."""
        try:
            return self._fold_and_write()
        except BaseException:
            self._position = None
            self._streams = None
            raise

    def _fold_and_write(self) -> tuple[int, bool]:
        if self._position is None:
            self._position = self._store.position()
        if self._streams is None:
            self._streams = self._store.load_streams()
        position = self._position
        self.head = head = self.ledger.recorder.max_notification_id() or 0
        if position > head:
            raise ProjectionMismatch(
                f"the SSF outbox is at ledger position {position} but the ledger ends at {head}: "
                "it was built from another ledger (or the ledger was restored from an older "
                "backup). The outbox cannot be rebuilt (it would re-send history): move "
                "ssf.sqlite3 / the ssf_* tables aside after draining them.",
                position=position,
                head=head,
            )
        if position == head:
            return 0, False
        notifications = self.ledger.recorder.select_notifications(
            position + 1, self.page_size, stop=head, topics=OUTBOX_TOPICS
        )
        fold = PageFold(self._facts, self._streams, self.ledger.issuer, self.ledger.clock.now())
        new_position = notifications[-1].id if len(notifications) == self.page_size else head
        folded = 0
        for notification in notifications:
            fold.apply(notification.id, self.ledger.mapper.to_domain_event(notification))
            folded += 1
            if len(fold.drafts) >= MAX_PAGE_SETS and notification.id < new_position:
                new_position = notification.id  # the rest waits for the next page
                break
        page = fold.page
        page.streams = list(fold.dirty.values())
        page.sets = self._sign(fold.drafts, fold.now)
        self._store.write_page(page, position, new_position)
        self._position = new_position
        self.applied += folded
        self.enqueued += len(page.sets)
        if page.sets:
            self._notify({s.stream_id for s in page.sets})
        return len(page.sets), new_position < head

    def _sign(self, drafts: Sequence[Draft], now: datetime) -> list[QueuedSet]:
        keys: dict[str, SigningKey] = {
            alg: self.keys.active(alg) for alg in {d.alg for d in drafts}
        }

        def sign(draft: Draft) -> QueuedSet:
            key = keys[draft.alg]
            return QueuedSet(
                stream_id=draft.stream_id,
                jti=draft.claims["jti"],
                txn=draft.txn,
                event_type=draft.event_type,
                kid=key.kid,
                set_jwt=sign_set(draft.claims, key),
                position=draft.position,
                mission_id=draft.mission_id,
                mission_version=draft.mission_version,
                control=draft.control,
                created_at=now,
            )

        rsa = sum(1 for d in drafts if d.alg == "RS256")
        if self.sign_threads > 1 and rsa >= PARALLEL_SIGNING_MIN:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.sign_threads, thread_name_prefix="ssf-sign")
            return list(self._pool.map(sign, drafts))
        return [sign(d) for d in drafts]

    def _notify(self, stream_ids: set[str]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(set(stream_ids))
            except Exception:
                LOG.exception("an SSF outbox listener failed (ignored)")
