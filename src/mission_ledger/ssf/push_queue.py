"""The push side of the SSF outbox's queue: what the RFC 8935 deliverer reads and writes.

A push stream's SETs are the ``ssf_queue`` rows of that stream, in ``seq`` order (the ledger's
order). The deliverer (:mod:`.push`) delivers the *head* — the live row with the lowest ``seq``
that the stream's status lets through (everything when ``enabled``; only control SETs, i.e.
stream-updated, when ``paused`` or ``disabled``) — and moves on only when the head is accepted
(the row is deleted) or dead-lettered. The retry state lives on the row itself, so it survives a
restart: ``attempts`` (failed attempts, every kind), ``slow_attempts`` (those counted on the
slow schedule), ``next_attempt_at`` (not before; NULL: at once), ``last_attempt_at``,
``last_error`` (a short text: never the SET, never the Authorization header) and ``dead_at``
(NULL: live). A dead letter stays in the queue — its signing key stays published, and its
``seq`` keeps its place — until an operator redelivers it (:meth:`PushQueue.redeliver`: dead
letters become live again, attempts reset, so they go next, in their original order) or the
outbox drops it with the rest of the stream's queue (stream deleted or disabled, receiver
revoked).

Errors the receiver *reported* (a 400 with an RFC 8935 ``err``, a 401 or a 403) are also added
to ``ssf_set_errors``, next to poll ``setErrs``, so ``streams show`` lists them.

All methods are thread-safe (the store's connection pools) and run one transaction each; the
deliverer calls them from its executor, the CLI directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..domain.errors import InvalidInput, NotFound
from ..domain.stream import ENABLED, PUSH
from ..domain.timefmt import format_rfc3339
from ..projections.views import store_errors
from .outbox_tables import WHERE, OutboxBackend, from_db_time

__all__ = [
    "Delivered",
    "Failed",
    "PushBatch",
    "PushHead",
    "PushItem",
    "PushQueue",
    "PushTarget",
]

KEPT_ERRORS = 100  # receiver-reported errors kept per stream (as for poll setErrs)
MAX_ERROR_TEXT = 1024


@dataclass(frozen=True)
class PushHead:
    """One live push stream as the periodic scan sees it."""

    stream_id: str
    status: str
    endpoint_url: str | None
    seq: int | None  # the deliverable head (None: nothing to deliver now)
    next_attempt_at: datetime | None
    secret_updated_at: datetime | None = None  # when the authorization_header last changed


@dataclass(frozen=True)
class PushTarget:
    """Where and how a push stream's SETs go (``authorization`` is a secret: no repr)."""

    stream_id: str
    endpoint_url: str
    status: str
    authorization: str | None = field(repr=False)


@dataclass(frozen=True)
class PushItem:
    """One queued SET to push (``set_jwt`` is sent byte-identical on every attempt).

    ``signed`` False: ``set_jwt`` is still the SET's JWS Signing Input (its signature may be
    known to the deliverer before it is stored; else the stream waits here)."""

    seq: int
    jti: str
    event_type: str
    set_jwt: str = field(repr=False)
    control: bool
    attempts: int
    slow_attempts: int
    next_attempt_at: datetime | None
    signed: bool = True


@dataclass(frozen=True)
class PushBatch:
    """A push stream's target and its next deliverable SETs, read on one snapshot."""

    target: PushTarget
    items: list[PushItem]
    secret_updated_at: datetime | None = None  # when the authorization_header last changed


@dataclass(frozen=True)
class Delivered:
    """The receiver accepted the SET (any 2xx): the row goes."""

    seq: int


@dataclass(frozen=True)
class Failed:
    """An attempt failed: the row's new retry state (``dead``: dead-lettered now).

    ``reported``: ``(err, description)`` when the receiver itself reported the error (400 with
    an ``err``, 401, 403); it is added to the stream's errors."""

    seq: int
    stream_id: str
    jti: str
    attempts: int
    slow_attempts: int
    next_attempt_at: datetime | None
    last_error: str
    dead: bool
    attempted_at: datetime  # last_attempt_at (and dead_at when dead)
    reported: tuple[str, str | None] | None = None


Outcome = Delivered | Failed


def _clip(text: str | None, limit: int = MAX_ERROR_TEXT) -> str | None:
    return None if text is None else text[:limit]


class PushQueue:
    """The deliverer's and the operator's operations on the queue's push rows."""

    def __init__(self, backend: OutboxBackend) -> None:
        self._b = backend

    # -- the deliverer -----------------------------------------------------------------------------

    def heads(self) -> list[PushHead]:
        """Every live push stream (not deleted, receiver not revoked) with its deliverable head.

        One statement; each head is found through the live-rows index ``(stream_id, seq)``."""
        b = self._b
        statement = (
            "SELECT h.stream_id, h.status, h.endpoint_url, h.head, q.next_attempt_at, "
            "k.updated_at AS secret_updated_at FROM ("
            "SELECT s.stream_id, s.status, s.endpoint_url, ("
            "SELECT q2.seq FROM {queue} q2 WHERE q2.stream_id = s.stream_id "
            "AND q2.dead_at IS NULL AND (q2.control OR s.status = ?) ORDER BY q2.seq LIMIT 1"
            ") AS head FROM {streams} s WHERE s.delivery_method = ? AND NOT s.deleted "
            "AND NOT s.receiver_revoked) h LEFT JOIN {queue} q ON q.seq = h.head "
            "LEFT JOIN {secrets} k ON k.stream_id = h.stream_id"
        )
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(b.sql(statement), [ENABLED, PUSH])
        return [
            PushHead(
                stream_id=row["stream_id"],
                status=row["status"],
                endpoint_url=row["endpoint_url"],
                seq=None if row["head"] is None else int(row["head"]),
                next_attempt_at=_maybe_time(row["next_attempt_at"]),
                secret_updated_at=_maybe_time(row["secret_updated_at"]),
            )
            for row in rows
        ]

    def batches(self, stream_ids: Sequence[str], limit: int) -> dict[str, PushBatch | None]:
        """For each stream: its target and up to ``limit`` deliverable SETs from its head, in
        order (those not yet signed included, flagged); None when it is not a live push stream
        (deleted, revoked, switched to poll). One snapshot, three statements for all of them
        (``IN`` lists of at most 500 ids), so waking a hundred streams costs one read."""
        if limit < 1:
            raise InvalidInput("limit must be at least 1", field="limit")
        ids = list(dict.fromkeys(stream_ids))
        streams: list[dict[str, Any]] = []
        secrets: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                marks = ", ".join("?" * len(chunk))
                streams += fetch(
                    b.sql(
                        "SELECT stream_id, status, delivery_method, endpoint_url, deleted, "  # noqa: S608
                        f"receiver_revoked FROM {{streams}} WHERE stream_id IN ({marks})"
                    ),
                    chunk,
                )
                secrets += fetch(
                    b.sql(
                        "SELECT stream_id, authorization_header, updated_at FROM {secrets} "  # noqa: S608
                        f"WHERE stream_id IN ({marks})"
                    ),
                    chunk,
                )
                # Each stream's first `limit` live rows its status lets through, in order.
                rows += fetch(
                    b.sql(
                        "SELECT stream_id, seq, jti, event_type, set_jwt, signed, control, "  # noqa: S608
                        "attempts, slow_attempts, next_attempt_at FROM ("
                        "SELECT q.*, ROW_NUMBER() OVER (PARTITION BY q.stream_id ORDER BY q.seq) "
                        "AS n FROM {queue} q JOIN {streams} s ON s.stream_id = q.stream_id "
                        f"WHERE q.stream_id IN ({marks}) AND q.dead_at IS NULL "
                        "AND (q.control OR s.status = ?)) ranked "
                        "WHERE n <= ? ORDER BY stream_id, seq"
                    ),
                    [*chunk, ENABLED, limit],
                )
        by_secret = {row["stream_id"]: row for row in secrets}
        by_rows: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            by_rows.setdefault(row["stream_id"], []).append(row)
        result: dict[str, PushBatch | None] = dict.fromkeys(ids)
        for stream in streams:
            if (
                stream["delivery_method"] != PUSH
                or not stream["endpoint_url"]
                or stream["deleted"]
                or stream["receiver_revoked"]
            ):
                continue
            stream_id = stream["stream_id"]
            secret = by_secret.get(stream_id)
            target = PushTarget(
                stream_id=stream_id,
                endpoint_url=str(stream["endpoint_url"]),
                status=str(stream["status"]),
                authorization=str(secret["authorization_header"]) if secret else None,
            )
            items = [
                PushItem(
                    seq=int(row["seq"]),
                    jti=row["jti"],
                    event_type=row["event_type"],
                    set_jwt=row["set_jwt"],
                    control=bool(row["control"]),
                    attempts=int(row["attempts"]),
                    slow_attempts=int(row["slow_attempts"]),
                    next_attempt_at=_maybe_time(row["next_attempt_at"]),
                    signed=bool(row["signed"]),
                )
                for row in by_rows.get(stream_id, [])
            ]
            updated = _maybe_time(secret["updated_at"]) if secret else None
            result[stream_id] = PushBatch(target, items, updated)
        return result

    def record(self, outcomes: Sequence[Outcome], now: datetime) -> None:
        """Write the outcomes of several attempts (any streams) in ONE transaction.

        A delivered row is deleted; a failed one gets its new retry state — only if it is still
        live (the outbox may have dropped it meanwhile, an operator cannot have touched it)."""
        if not outcomes:
            return
        b = self._b
        at = b.time_to_db(now)
        delivered = [(o.seq,) for o in outcomes if isinstance(o, Delivered)]
        failed = [o for o in outcomes if isinstance(o, Failed)]
        with store_errors(WHERE), b.writing() as tx:
            tx.lock_queue_rows("seq", [o.seq for o in outcomes])
            tx.executemany(b.sql("DELETE FROM {queue} WHERE seq = ?"), delivered)
            tx.executemany(
                b.sql(
                    "UPDATE {queue} SET attempts = ?, slow_attempts = ?, next_attempt_at = ?, "
                    "last_attempt_at = ?, last_error = ?, dead_at = ? "
                    "WHERE seq = ? AND dead_at IS NULL"
                ),
                [
                    (
                        o.attempts,
                        o.slow_attempts,
                        None if o.next_attempt_at is None else b.time_to_db(o.next_attempt_at),
                        b.time_to_db(o.attempted_at),
                        _clip(o.last_error),
                        b.time_to_db(o.attempted_at) if o.dead else None,
                        o.seq,
                    )
                    for o in failed
                ],
            )
            reported = [o for o in failed if o.reported is not None]
            tx.executemany(
                b.sql(
                    "INSERT INTO {errors} (stream_id, jti, err, description, recorded_at) "
                    "SELECT ?, ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM {queue} WHERE seq = ?)"
                ),
                [
                    (
                        o.stream_id,
                        o.jti,
                        _clip(o.reported[0], 255),
                        _clip(o.reported[1]),
                        at,
                        o.seq,
                    )
                    for o in reported
                    if o.reported is not None
                ],
            )
            tx.executemany(
                b.sql(
                    "DELETE FROM {errors} WHERE stream_id = ? AND id NOT IN "
                    "(SELECT id FROM {errors} WHERE stream_id = ? ORDER BY id DESC LIMIT ?)"
                ),
                [(s, s, KEPT_ERRORS) for s in sorted({o.stream_id for o in reported})],
            )

    def totals(self) -> tuple[int, int]:
        """(SETs queued for live push streams, dead letters) across every stream."""
        b = self._b
        statement = (
            "SELECT COUNT(CASE WHEN q.dead_at IS NULL THEN 1 END) AS queued, "
            "COUNT(q.dead_at) AS dead FROM {queue} q JOIN {streams} s "
            "ON s.stream_id = q.stream_id WHERE s.delivery_method = ?"
        )
        with store_errors(WHERE), b.reading() as fetch:
            (row,) = fetch(b.sql(statement), [PUSH])
        return int(row["queued"] or 0), int(row["dead"] or 0)

    # -- the operator ------------------------------------------------------------------------------

    def dead_letters(self, stream_id: str) -> list[dict[str, Any]]:
        """The stream's dead letters, in queue order: ``jti``, ``event_type``, ``txn``,
        ``attempts``, ``last_error``, ``last_attempt_at``, ``dead_lettered_at``, ``created_at``
        (times in RFC 3339)."""
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(
                b.sql(
                    "SELECT jti, event_type, txn, attempts, last_error, last_attempt_at, dead_at, "
                    "created_at FROM {queue} WHERE stream_id = ? AND dead_at IS NOT NULL "
                    "ORDER BY seq"
                ),
                [stream_id],
            )
        return [
            {
                "jti": row["jti"],
                "event_type": row["event_type"],
                "txn": row["txn"],
                "attempts": int(row["attempts"]),
                "last_error": row["last_error"],
                "last_attempt_at": _rfc3339(row["last_attempt_at"]),
                "dead_lettered_at": _rfc3339(row["dead_at"]),
                "created_at": _rfc3339(row["created_at"]),
            }
            for row in rows
        ]

    def redeliver(self, stream_id: str, jtis: Sequence[str] | None) -> list[str]:
        """Make dead letters live again (attempts reset, due at once); returns their jtis in
        queue order. ``jtis`` None: every dead letter of the stream. They keep their ``seq``, so
        they are pushed next, in their original order, before the SETs queued after them.

        :raise NotFound: a jti given is not a dead letter of this stream (nothing changes)."""
        b = self._b
        wanted = None if jtis is None else list(dict.fromkeys(jtis))
        with store_errors(WHERE), b.writing() as tx:
            rows = tx.execute(
                b.sql(
                    "SELECT seq, jti FROM {queue} WHERE stream_id = ? AND dead_at IS NOT NULL "
                    "ORDER BY seq"
                ),
                [stream_id],
            )
            if wanted is not None:
                dead = {row["jti"] for row in rows}
                missing = [j for j in wanted if j not in dead]
                if missing:
                    raise NotFound(
                        f"not a dead letter of stream {stream_id}: {', '.join(missing)} "
                        "(see `streams dead-letters`); nothing was redelivered",
                        stream_id=stream_id,
                        jtis=missing,
                    )
                rows = [row for row in rows if row["jti"] in set(wanted)]
            tx.executemany(
                b.sql(
                    "UPDATE {queue} SET dead_at = NULL, attempts = 0, slow_attempts = 0, "
                    "next_attempt_at = NULL, last_error = NULL WHERE seq = ?"
                ),
                [(row["seq"],) for row in rows],
            )
        return [row["jti"] for row in rows]


def _maybe_time(value: Any) -> datetime | None:
    return None if value is None else from_db_time(value)


def _rfc3339(value: Any) -> str | None:
    return None if value is None else format_rfc3339(from_db_time(value))
