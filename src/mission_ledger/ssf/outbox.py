"""The SSF outbox worker: ledger events in, signed Security Event Tokens queued, exactly once.

A tracked projection of the ledger (the same machinery as the views, :mod:`..projections`). The
worker reads the notification log in pages (``select_notifications(start, limit, stop=head,
topics=OUTBOX_TOPICS)``: every Mission event, ``ProposalSubmitted`` and ``ProposalDenied``, every
``Stream*`` event, ``PrincipalRevoked``), folds a page into rows and SET drafts
(:mod:`.outbox_fold`, which states the rules per ledger event), and writes rows, SETs and the
new tracking position in ONE transaction (:meth:`.outbox_store.OutboxStore.write_page`). The
position recorded is the page's last notification id, or the ledger's head when the page
reached it (or, when a page caused more than 2,000 SETs, the last event folded: the work per
page stays bounded).

**Exactly once.** A SET exists for (ledger event, event type, stream) iff the page holding the
event committed, and a page commits only together with the position after it. A crash anywhere
before the commit loses the page's rows — none of them ever left the process — and the next
run folds the same page again from the recorded position. A crash after the commit re-reads
the position and continues after the page. Two writers cannot both commit a page: the worker
holds a PostgreSQL session advisory lock (its own key, distinct from the views' worker's) and,
on every backend, the tracking row is compared with the position the writer started from
under the write lock; the library's tracking upsert refuses a position already recorded, and
``UNIQUE (stream_id, txn, event_type)`` on the queue is the last line. The fold reads only the
page, the immutable ledger and rows of earlier (committed) pages, so a re-done page yields the
same rows. After any failure the worker forgets its cached position, streams and unsigned
rows and re-reads them (the page may or may not have committed).

**Signing after the commit.** Every row's claims, ``jti`` and key are fixed when its page
commits; the signature may come just after. A page of at most ``sign_chunk`` (16) SETs is signed
before its commit (one transaction). A bigger page starts signing as soon as it is folded —
all of it at once, in the thread pool — and is written unsigned meanwhile (``set_jwt`` holding
the JWS Signing Input, ``signed`` false); its streams hear of it at the commit (the push
deliverer's stream tasks read their rows then and hold the unsigned ones). The signatures are
handed to the signature listeners in queue order as they come — whatever is ready whenever
the next one is not, at most ``sign_chunk`` at a time — so the push deliverer sends each SET
as soon as it is signed, and they are stored
(:meth:`.outbox_store.OutboxStore.store_signatures`) every 256 and at the end, after which the
listeners hear of their streams again (the poll endpoint reads them then; the deliverer, which
had them already, is not told). So a revocation that reaches a hundred streams is on its way
to the first receivers after its first signatures, not 100, and costs two or three
transactions, not one per chunk. Sending a signature before it is stored is safe because
signing is deterministic (RFC 6979 nonces for ES256): a crash between the commit and the store
leaves unsigned rows, which the next step reads back
(:meth:`.outbox_store.OutboxStore.unsigned`) and signs again, to the same bytes, before
folding on — the same jtis, the same claims, the same SETs; a key rotated out meanwhile is
replaced in the header by the active one. Polls never offer an unsigned row; the deliverer
sends one only with the signature it was offered (:mod:`.push`).

Signing runs in the worker thread (never on an event loop), with ``keys.active(alg)`` of each
stream's ``signing_alg`` (RS256 by default, ES256 per stream); a batch with at least 8 RS256
SETs is signed in a small thread pool, 4 SETs per task (RSA signing runs in OpenSSL without
the GIL: ≈0.3–0.4 ms per 2048-bit signature on this machine). ES256 signs an order of magnitude
faster and is not worth the hand-off. ``iat`` and the queue's ``created_at`` come from the
ledger's clock.

**Wake-ups.** PostgreSQL: the worker's lock connection LISTENs on the ledger's NOTIFY channel,
so a commit wakes it at once; SQLite: a commit in this process wakes it at once (the
ledger's ``CommitSignal``), other processes' commits are polled for (``poll_interval``, at
least every 20 ms: ``runner.SQLITE_FOLLOW_INTERVAL``). After every committed
page and stored chunk of signatures, listeners (:meth:`OutboxWorker.add_listener`) hear
which streams got SETs — the long-poll endpoint and the push deliverer use that to act at
once.

**Key retirement.** A rotated-out key stays published (``retiring``) until no queued SET signed
with it remains. While idle, at most every 30 s, the worker retires (unpublishes) every
``retiring`` key whose ``kid`` no queued row carries, and logs it at INFO.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
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
from .keys import SUPPORTED_ALGORITHMS, KeyStore, SigningKey
from .outbox_fold import STREAM_UPDATED, VERIFICATION, Draft, LedgerFacts, PageFold
from .outbox_store import FoldedStream, OutboxStore, QueuedSet, Signature, Unsigned
from .outbox_tables import PROJECTION_NAME
from .rfc8417_set import (
    payload_signing_input,
    resign_header,
    sign_signing_input,
    signing_input_header,
)

__all__ = [
    "OUTBOX_TOPICS",
    "STREAM_UPDATED",
    "VERIFICATION",
    "Listener",
    "OutboxWorker",
    "SignatureListener",
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
PARALLEL_SIGNING_MIN = 8  # RS256 SETs in a chunk from which signing uses the thread pool
POOL_TASK = 4  # SETs signed per task in the pool
SIGN_CHUNK = 16  # pages up to this many SETs commit signed; at most this many per offer
STORE_EVERY = 256  # signatures of a page stored per transaction (and at its end)
MAX_BACKOFF = 5.0
_WHERE = "the SSF outbox (ledger or outbox store)"

#: ``callback(stream_ids)``: the streams a committed page queued SETs for
Listener = Callable[[set[str]], None]
#: ``callback(signatures)``: SETs of committed rows, signed, their signatures not yet stored
SignatureListener = Callable[[list[Signature]], None]


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
        sign_chunk: int = SIGN_CHUNK,
    ) -> None:
        if page_size < 1:
            raise InvalidInput("page_size must be at least 1", field="page_size")
        if sign_chunk < 1:
            raise InvalidInput("sign_chunk must be at least 1", field="sign_chunk")
        if poll_interval <= 0:
            raise InvalidInput("poll_interval must be positive", field="poll_interval")
        self.ledger = ledger
        self.settings = settings
        self.keys = keys
        self.page_size = page_size
        self.sign_chunk = sign_chunk
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
        self._listeners: list[tuple[Listener, bool]] = []
        self._signature_listeners: list[SignatureListener] = []
        self._listeners_lock = threading.Lock()
        self._position: int | None = None  # None: read the tracking row on the next step
        self._streams: dict[str, FoldedStream] | None = None  # None: load on the next step
        self._facts = LedgerFacts(ledger, self._store)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: list[Unsigned] | None = None  # None: read the unsigned rows next step
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

    def add_signature_listener(self, callback: SignatureListener) -> None:
        """Call ``callback(signatures)`` as soon as a chunk of SETs written unsigned is signed,
        before the signatures are stored (from the worker thread: keep it short). Their rows
        are committed; a crash before the store makes the worker sign them again, to the same
        bytes (see :func:`~.rfc8417_set.sign_signing_input`)."""
        with self._listeners_lock:
            self._signature_listeners.append(callback)

    def add_listener(self, callback: Listener, *, offered: bool = False) -> None:
        """Call ``callback(stream_ids)`` after every committed page that queued SETs and every
        stored chunk of signatures, with their streams (from the worker thread: keep it
        short, e.g. wake pollers). ``offered``: the callback's owner also takes the signatures
        as they are made (:meth:`add_signature_listener`), so it is not called again when they
        are stored."""
        with self._listeners_lock:
            self._listeners.append((callback, offered))

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
        """Sign what an earlier page left unsigned, then fold, sign and write the next page;
        returns (SETs queued, whether more is due).

        Any failure forgets the cached position, streams and unsigned rows (re-read on the next
        step): the page may or may not have committed, and the cache may hold its uncommitted
        changes."""
        try:
            self._sign_pending()
            return self._fold_and_write()
        except BaseException:
            self._position = None
            self._streams = None
            self._pending = None
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
        keys = {alg: self.keys.active(alg) for alg in {d.alg for d in fold.drafts}}
        signers = [keys[draft.alg] for draft in fold.drafts]
        rows = [_queued(d, key, fold.now) for d, key in zip(fold.drafts, signers, strict=True)]
        unsigned = [Unsigned(r.jti, r.stream_id, r.set_jwt) for r in rows]
        jobs = [(key, row.set_jwt) for key, row in zip(signers, rows, strict=True)]
        signing: _Signing | None = None
        if len(rows) <= self.sign_chunk:  # a small page commits signed: one transaction
            for index, signature in enumerate(self._start_signing(unsigned, jobs).all()):
                rows[index] = replace(rows[index], set_jwt=signature.set_jwt, signed=True)
            unsigned = []
        else:  # signing starts now, in the pool, while the page is written unsigned
            signing = self._start_signing(unsigned, jobs)
        page.sets = rows
        try:
            self._store.write_page(page, position, new_position)
        except BaseException:
            if signing is not None:
                signing.cancel()
            raise
        self._position = new_position
        self._pending = unsigned
        self.applied += folded
        self.enqueued += len(rows)
        if rows:  # stream tasks read their rows now, and wait there for unsigned ones' offers
            self._notify({r.stream_id for r in rows})
        self._sign_pending(signing)
        return len(rows), new_position < head

    def _sign_pending(self, signing: _Signing | None = None) -> None:
        """Sign the queued SETs written unsigned (``signing``: already started for them), in
        queue order, handing them to the signature listeners as they come: whatever is ready
        whenever the next one is not (at most ``sign_chunk`` at a time), so the push
        deliverer sends each SET as soon as it is signed, before it is stored (signatures are
        deterministic: a SET signed again after a crash has the same bytes). The signatures
        are stored every ``STORE_EVERY`` and at the end, in one transaction each; then the
        listeners hear of their streams (the poll endpoint reads them), except those that
        were offered the signatures already."""
        if self._pending is None:
            self._pending = self._store.unsigned()
        if not self._pending:
            return
        if signing is None:
            keys = {alg: self.keys.active(alg) for alg in SUPPORTED_ALGORITHMS}
            signing = self._start_signing(self._pending, _jobs(self._pending, keys))
        ready: list[Signature] = []  # signed, not yet offered
        offered: list[Signature] = []  # offered, not yet stored
        try:
            for index in range(len(signing)):
                if ready and (len(ready) >= self.sign_chunk or signing.waits(index)):
                    self._offer(ready)
                    offered += ready
                    ready = []
                    if len(offered) >= STORE_EVERY:
                        self._store_signed(offered)
                        offered = []
                ready.append(signing.result(index))
            self._offer(ready)
            self._store_signed(offered + ready)
        finally:
            signing.cancel()

    def _store_signed(self, signatures: list[Signature]) -> None:
        self._store.store_signatures(signatures)
        assert self._pending is not None
        self._pending = self._pending[len(signatures) :]
        self._notify({s.stream_id for s in signatures}, offered=True)

    def _start_signing(
        self, unsigned: Sequence[Unsigned], jobs: Sequence[tuple[SigningKey, str]]
    ) -> _Signing:
        """Start signing ``unsigned`` (``jobs``: the key and Signing Input of each): RS256-heavy
        batches all at once in the thread pool; the rest (ES256, a few RS256) one by one as
        the signatures are asked for."""
        rsa = sum(1 for key, _ in jobs if key.alg == "RS256")
        pool = None
        if self.sign_threads > 1 and rsa >= PARALLEL_SIGNING_MIN:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.sign_threads, thread_name_prefix="ssf-sign")
            pool = self._pool
        return _Signing(unsigned, jobs, pool)

    def _offer(self, signatures: list[Signature]) -> None:
        with self._listeners_lock:
            listeners = list(self._signature_listeners)
        for listener in listeners:
            try:
                listener(list(signatures))
            except Exception:
                LOG.exception("an SSF outbox signature listener failed (ignored)")

    def _notify(self, stream_ids: set[str], *, offered: bool = False) -> None:
        with self._listeners_lock:
            listeners = [cb for cb, took_offers in self._listeners if not (offered and took_offers)]
        for listener in listeners:
            try:
                listener(set(stream_ids))
            except Exception:
                LOG.exception("an SSF outbox listener failed (ignored)")


def _jobs(
    unsigned: Sequence[Unsigned], keys: Mapping[str, SigningKey]
) -> list[tuple[SigningKey, str]]:
    """The key and Signing Input for each row read back unsigned: the active key of the row's
    algorithm, its header rewritten if that key was rotated in since the page was folded."""
    jobs: list[tuple[SigningKey, str]] = []
    for item in unsigned:
        signing_input = item.signing_input
        header = signing_input_header(signing_input)
        key = keys[header["alg"]]
        if header.get("kid") != key.kid:
            signing_input = resign_header(signing_input, key)
        jobs.append((key, signing_input))
    return jobs


def _sign_all(jobs: Sequence[tuple[SigningKey, str]]) -> list[str]:
    return [sign_signing_input(text, key) for key, text in jobs]


class _Signing:
    """The signatures of some unsigned SETs, in order: computed in the thread pool (all
    submitted at once, so its threads never wait for the worker) or, without a pool, here
    when asked for."""

    def __init__(
        self,
        unsigned: Sequence[Unsigned],
        jobs: Sequence[tuple[SigningKey, str]],
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self._unsigned = unsigned
        self._jobs = jobs
        self._futures: list[Future[list[str]]] | None = None
        if pool is not None:  # a few per task: a task per SET cost more than a quarter of one
            self._futures = [
                pool.submit(_sign_all, jobs[start : start + POOL_TASK])
                for start in range(0, len(jobs), POOL_TASK)
            ]

    def __len__(self) -> int:
        return len(self._jobs)

    def waits(self, index: int) -> bool:
        """Whether asking for signature ``index`` now would wait for the pool (never without
        one: it is computed when asked for)."""
        return self._futures is not None and not self._futures[index // POOL_TASK].done()

    def result(self, index: int) -> Signature:
        """Signature ``index``, waiting for it (or computing it) if need be."""
        key, text = self._jobs[index]
        token = (
            self._futures[index // POOL_TASK].result()[index % POOL_TASK]
            if self._futures is not None
            else sign_signing_input(text, key)
        )
        item = self._unsigned[index]
        return Signature(item.jti, item.stream_id, key.kid, token)

    def all(self) -> list[Signature]:
        try:
            return [self.result(index) for index in range(len(self))]
        finally:
            self.cancel()

    def cancel(self) -> None:
        """Drop the signing not yet begun (after a failure, or once all were taken)."""
        for future in self._futures or ():
            future.cancel()


def _queued(draft: Draft, key: SigningKey, now: datetime) -> QueuedSet:
    """The queue row of ``draft``, unsigned: ``set_jwt`` holds its JWS Signing Input."""
    return QueuedSet(
        stream_id=draft.stream_id,
        jti=draft.jti,
        txn=draft.txn,
        event_type=draft.event_type,
        kid=key.kid,
        set_jwt=payload_signing_input(draft.payload, key),
        position=draft.position,
        mission_id=draft.mission_id,
        mission_version=draft.mission_version,
        control=draft.control,
        created_at=now,
        signed=False,
    )
