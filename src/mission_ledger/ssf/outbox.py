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

**Signing in chunks.** Every row's claims, ``jti`` and key are fixed when its page commits; the
signature may come just after. The page's first ``sign_chunk`` (16) SETs are signed before the
commit; the others are written unsigned — ``set_jwt`` holding the JWS Signing Input,
``signed`` false — and signed right after the commit, ``sign_chunk`` at a time, in queue
order, the next chunk signing while the current one is handed over: each chunk goes at once to
the signature listeners (the push deliverer sends it), and the signatures are stored
(:meth:`.outbox_store.OutboxStore.store_signatures`) every 256 and at the end, after which the
listeners hear of their streams (the poll endpoint reads them then). So a revocation that
reaches a hundred streams is on its way to the first receivers after 16 signatures, not 100,
and costs two or three transactions, not one per chunk. Sending a signature before it is
stored is safe because signing is deterministic (RFC 6979 nonces for ES256): a crash between
the commit and the store leaves unsigned rows, which the next step reads back
(:meth:`.outbox_store.OutboxStore.unsigned`) and signs again, to the same bytes, before
folding on — the same jtis, the same claims, the same SETs; a key rotated out meanwhile is
replaced in the header by the active one. Polls never offer an unsigned row; the deliverer
sends one only with the signature it was offered (:mod:`.push`).

Signing runs in the worker thread (never on an event loop), with ``keys.active(alg)`` of each
stream's ``signing_alg`` (RS256 by default, ES256 per stream); a chunk with at least 8 RS256
SETs is signed in a small thread pool (RSA signing runs in OpenSSL without the GIL: ≈0.4 ms
per 2048-bit signature on this machine). ES256 signs an order of magnitude faster and is not
worth the hand-off. ``iat`` and the queue's ``created_at`` come from the ledger's clock.

**Wake-ups.** PostgreSQL: the worker's lock connection LISTENs on the ledger's NOTIFY channel,
so a commit wakes it at once; SQLite: a commit in this process wakes it at once (the
ledger's ``CommitSignal``), other processes' commits are polled for (``poll_interval``, at
least every 20 ms: ``runner.SQLITE_FOLLOW_INTERVAL``). After every committed
page or chunk that made SETs deliverable, listeners (:meth:`OutboxWorker.add_listener`) hear
which streams got them — the long-poll endpoint and the push deliverer use that to act at
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
from concurrent.futures import ThreadPoolExecutor
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
SIGN_CHUNK = 16  # SETs signed before a page commits, then handed over at a time after it
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
        self._listeners: list[Listener] = []
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

    def add_listener(self, callback: Listener) -> None:
        """Call ``callback(stream_ids)`` after every committed page or signature chunk that made
        SETs deliverable, with their streams (from the worker thread: keep it short, e.g. wake
        pollers)."""
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
        rows = [_queued(draft, keys[draft.alg], fold.now) for draft in fold.drafts]
        first = self.sign_chunk
        signed = self._sign([Unsigned(r.jti, r.stream_id, r.set_jwt) for r in rows[:first]], keys)
        for index, signature in enumerate(signed):
            rows[index] = replace(rows[index], set_jwt=signature.set_jwt, signed=True)
        page.sets = rows
        self._store.write_page(page, position, new_position)
        self._position = new_position
        self._pending = [Unsigned(r.jti, r.stream_id, r.set_jwt) for r in rows[first:]]
        self.applied += folded
        self.enqueued += len(rows)
        if signed:
            self._notify({s.stream_id for s in signed})
        self._sign_pending()
        return len(rows), new_position < head

    def _sign_pending(self) -> None:
        """Sign the queued SETs written unsigned, ``sign_chunk`` at a time, in queue order, the
        next chunk signing (in the pool) while the current one is handed over. Each chunk goes
        to the signature listeners at once (the push deliverer sends it before it is stored:
        signatures are deterministic, so a SET signed again after a crash has the same bytes);
        the signatures are stored every ``STORE_EVERY`` and at the end, in one transaction
        each, and then the listeners hear of their streams (the poll endpoint reads them)."""
        if self._pending is None:
            self._pending = self._store.unsigned()
        if not self._pending:
            return
        keys = {alg: self.keys.active(alg) for alg in SUPPORTED_ALGORITHMS}
        chunk = self.sign_chunk
        signed: list[Signature] = []
        rest = self._pending
        ahead = self._sign_async(rest[:chunk], keys)
        while rest:
            signatures = ahead()
            rest = rest[chunk:]
            ahead = self._sign_async(rest[:chunk], keys)
            self._offer(signatures)
            signed += signatures
            if len(signed) >= STORE_EVERY or not rest:
                self._store.store_signatures(signed)
                self._pending = rest
                self._notify({s.stream_id for s in signed})
                signed = []

    def _sign(
        self, unsigned: Sequence[Unsigned], keys: Mapping[str, SigningKey]
    ) -> list[Signature]:
        return self._sign_async(unsigned, keys)()

    def _sign_async(
        self, unsigned: Sequence[Unsigned], keys: Mapping[str, SigningKey]
    ) -> Callable[[], list[Signature]]:
        """Start signing ``unsigned`` (in the thread pool when it holds enough RS256 work); the
        returned function waits for the signatures, in order."""
        jobs: list[tuple[str, str]] = []
        used: dict[str, SigningKey] = {}
        for item in unsigned:
            signing_input = item.signing_input
            header = signing_input_header(signing_input)
            key = keys[header["alg"]]
            if header.get("kid") != key.kid:  # rotated since the page was folded
                signing_input = resign_header(signing_input, key)
            jobs.append((key.kid, signing_input))
            used[key.kid] = key

        def signatures(tokens: list[str]) -> list[Signature]:
            return [
                Signature(item.jti, item.stream_id, kid, token)
                for item, (kid, _), token in zip(unsigned, jobs, tokens, strict=True)
            ]

        rsa = sum(1 for kid, _ in jobs if used[kid].alg == "RS256")
        if self.sign_threads > 1 and rsa >= PARALLEL_SIGNING_MIN:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.sign_threads, thread_name_prefix="ssf-sign")
            futures = [
                self._pool.submit(sign_signing_input, signing_input, used[kid])
                for kid, signing_input in jobs
            ]

            def wait() -> list[Signature]:
                try:
                    return signatures([future.result() for future in futures])
                finally:
                    for future in futures:
                        future.cancel()

            return wait
        tokens = [sign_signing_input(signing_input, used[kid]) for kid, signing_input in jobs]
        return lambda: signatures(tokens)

    def _offer(self, signatures: list[Signature]) -> None:
        with self._listeners_lock:
            listeners = list(self._signature_listeners)
        for listener in listeners:
            try:
                listener(list(signatures))
            except Exception:
                LOG.exception("an SSF outbox signature listener failed (ignored)")

    def _notify(self, stream_ids: set[str]) -> None:
        with self._listeners_lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(set(stream_ids))
            except Exception:
                LOG.exception("an SSF outbox listener failed (ignored)")


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
