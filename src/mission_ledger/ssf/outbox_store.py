"""The SSF outbox's tables as an API: the durable queue of signed SETs, and what drains it.

The outbox is a tracked projection of the ledger (:mod:`.outbox`) whose rows are **delivery
state**, not a view: each queued row is a Security Event Token that was signed once, with a
``jti`` a receiver may already have seen, and is re-sent byte-identical until acknowledged.
It can therefore never be rebuilt from the ledger (a replay would re-send history under new
jtis): ``mission-ledger rebuild`` neither drops nor replays it
(:data:`~mission_ledger.projections.contracts.NOT_REBUILDABLE_TABLES`). Where the tables live and
how a transaction is taken: :mod:`.outbox_tables`.

Tables (DDL in ``projections/ssf_outbox.<backend>.sql``; see ``projections/README.md``):
``ssf_streams`` (streams as the worker folds them), ``ssf_missions`` (each Mission's scope facts
from its approval), ``ssf_queue`` (the SETs, with their push retry state), ``ssf_set_errors``
(``setErrs`` and push errors receivers reported) and ``ssf_push_secrets`` (push streams'
``authorization_header``; never logged).

Writers. Only the worker writes a page of the ledger (:meth:`OutboxStore.write_page`): in ONE
transaction it compares the tracking row with the position it started from (under the write
lock), writes the rows, and records the new position through the library's tracking upsert.
The HTTP layer and the CLI call :meth:`OutboxStore.poll` (acknowledge, record errors, offer),
the statistics, and the push-secret methods; the push deliverer and the operator's dead-letter
commands use :attr:`OutboxStore.push` (:mod:`.push_queue`, where the retry columns are
described); none of them touches the tracking row. Every
method is thread-safe (the library's connection pools).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from eventsourcing.persistence import IntegrityError

from ..config import Settings
from ..domain.canonical import canonicalize
from ..domain.errors import InvalidInput
from ..domain.timefmt import format_rfc3339
from ..projections.errors import ProjectionMismatch
from ..projections.views import store_errors
from .outbox_tables import (
    WHERE,
    OutboxBackend,
    OutboxTx,
    from_db_time,
    open_backend,
    signed_prefix,
)
from .push_queue import PushQueue

__all__ = [
    "MAX_POLL_EVENTS",
    "FoldedStream",
    "MissionScope",
    "OutboxPage",
    "OutboxStore",
    "QueuedSet",
    "Signature",
    "Unsigned",
]

MAX_POLL_EVENTS = 1000  # the most SETs one poll response carries, whatever maxEvents says
KEPT_ERRORS = 100  # setErrs kept per stream (newest)
REPORTED_ERRORS = 10  # setErrs shown by the statistics (newest first)
_MAX_ERR = 255
_MAX_DESCRIPTION = 1024


# -- the rows -------------------------------------------------------------------------------------


@dataclass
class FoldedStream:
    """One SSF stream as the outbox folds it from the ``Stream*`` events (a ``ssf_streams`` row).

    ``resources`` / ``all_missions`` are the receiver's scope as recorded when the stream was
    created; ``receiver_revoked`` turns when the receiver principal is revoked."""

    stream_id: str
    receiver_id: str
    aud: str
    resources: list[str]
    all_missions: bool
    status: str
    reason: str | None
    events_delivered: list[str]
    mission_capabilities: list[str]
    signing_alg: str
    delivery_method: str
    subject_operations: list[dict[str, Any]]
    deleted: bool
    receiver_revoked: bool
    version: int
    created_at: datetime
    updated_at: datetime
    position: int
    endpoint_url: str | None = None  # push streams: where SETs are POSTed

    @property
    def live(self) -> bool:
        """Not deleted and its receiver not revoked: it may still get SETs of some kind."""
        return not self.deleted and not self.receiver_revoked


@dataclass(frozen=True)
class MissionScope:
    """A Mission's scope facts, from its approval (a ``ssf_missions`` row)."""

    mission_id: str
    user: str
    agent: str
    authority_set: list[dict[str, Any]]
    position: int


@dataclass(frozen=True)
class QueuedSet:
    """One SET to enqueue (a new ``ssf_queue`` row; ``seq`` is assigned on insert).

    ``signed`` False: ``set_jwt`` is the SET's JWS Signing Input, signed later
    (:meth:`OutboxStore.store_signatures`); until then the row is neither offered nor pushed."""

    stream_id: str
    jti: str
    txn: str
    event_type: str
    kid: str
    set_jwt: str
    position: int
    mission_id: str | None
    mission_version: int | None
    control: bool
    created_at: datetime
    signed: bool = True


@dataclass(frozen=True)
class Unsigned:
    """A queued SET still to be signed: its ``jti`` and JWS Signing Input."""

    jti: str
    stream_id: str
    signing_input: str


@dataclass(frozen=True)
class Signature:
    """A signed SET for an :class:`Unsigned` row: the compact JWS and the key that signed it."""

    jti: str
    stream_id: str
    kid: str
    set_jwt: str


@dataclass
class OutboxPage:
    """What one page of the ledger changes in the outbox (written in one transaction).

    ``drops``: stream id → True to delete every queued SET of the stream (deleted stream,
    revoked receiver), False for its non-control ones only (disabled). Drops apply to rows
    queued BEFORE this page; the page's own ``sets`` are already filtered by the fold.
    ``deleted``: streams deleted in this page (their push secret and errors go as well)."""

    streams: list[FoldedStream] = field(default_factory=list)
    missions: list[MissionScope] = field(default_factory=list)
    drops: dict[str, bool] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    sets: list[QueuedSet] = field(default_factory=list)


_STREAM_COLUMNS = (
    "stream_id",
    "receiver_id",
    "aud",
    "resources",
    "all_missions",
    "status",
    "reason",
    "events_delivered",
    "mission_capabilities",
    "signing_alg",
    "delivery_method",
    "subject_operations",
    "deleted",
    "receiver_revoked",
    "version",
    "created_at",
    "updated_at",
    "position",
    "endpoint_url",
)
_JSON_STREAM_COLUMNS = frozenset(
    {"resources", "events_delivered", "mission_capabilities", "subject_operations"}
)
_QUEUE_COLUMNS = (
    "stream_id",
    "jti",
    "txn",
    "event_type",
    "kid",
    "set_jwt",
    "position",
    "mission_id",
    "mission_version",
    "control",
    "created_at",
    "signed",
)


def _json(value: Any) -> str:
    return canonicalize(value).decode("utf-8")


# -- the store ------------------------------------------------------------------------------------


def _check_now(now: datetime) -> None:
    if now.tzinfo is None:
        raise InvalidInput("now must be timezone-aware", field="now")


_QUEUE_FIGURES = (
    "SUM(CASE WHEN dead_at IS NULL THEN 1 ELSE 0 END) AS depth, "
    "COUNT(CASE WHEN dead_at IS NULL THEN offered_at END) AS offered, "
    "MIN(CASE WHEN dead_at IS NULL THEN created_at END) AS oldest, "
    "COUNT(dead_at) AS dead"
)
_EMPTY_QUEUE: dict[str, Any] = {"depth": 0, "offered": 0, "oldest": None, "dead": 0}
# The live head of each stream's queue (the SET a push stream delivers next, paused or not).
_HEADS = (
    "SELECT q.stream_id, q.attempts, q.next_attempt_at, q.last_error FROM {{queue}} q "
    "JOIN (SELECT stream_id, MIN(seq) AS seq FROM {{queue}} WHERE dead_at IS NULL{where} "
    "GROUP BY stream_id) h ON q.seq = h.seq"
)


def _time(value: Any) -> str | None:
    return None if value is None else format_rfc3339(from_db_time(value))


def _stats(
    queue: dict[str, Any],
    head: dict[str, Any] | None,
    errors: list[dict[str, Any]],
    now: datetime,
) -> dict[str, Any]:
    age = None
    if queue["oldest"] is not None:
        age = max(0.0, (now - from_db_time(queue["oldest"])).total_seconds())
    return {
        "queue_depth": int(queue["depth"] or 0),
        "offered_unacked": int(queue["offered"] or 0),
        "oldest_undelivered_age_seconds": age,
        "dead_letters": int(queue["dead"] or 0),
        "head_attempts": int(head["attempts"]) if head else 0,
        "next_attempt_at": _time(head["next_attempt_at"]) if head else None,
        "head_last_error": head["last_error"] if head else None,
        "last_errors": [
            {
                "jti": e["jti"],
                "err": e["err"],
                "description": e["description"],
                "recorded_at": format_rfc3339(from_db_time(e["recorded_at"])),
            }
            for e in errors
        ],
    }


class OutboxStore:
    """The SSF outbox's tables (see the module docstring); thread-safe, one per process."""

    def __init__(self, backend: OutboxBackend) -> None:
        self._b = backend

    @classmethod
    def open(cls, settings: Settings, *, pool_size: int | None = None) -> OutboxStore:
        """Open (and, if missing, create) the outbox of ``settings``' store."""
        size = pool_size if pool_size is not None else max(1, settings.postgres_pool_size)
        return cls(open_backend(settings, size))

    def __enter__(self) -> OutboxStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        """``sqlite`` or ``postgres`` (the in-memory ledger's outbox is a SQLite file)."""
        return self._b.backend_name()

    @property
    def push(self) -> PushQueue:
        """The push deliverer's and the operator's operations on the queue
        (:mod:`.push_queue`: heads, batches, outcomes, dead letters, redelivery)."""
        return PushQueue(self._b)

    def position(self) -> int:
        """The ledger position the outbox reflects (0 before anything was applied)."""
        with store_errors(WHERE):
            return self._b.max_tracking() or 0

    def close(self) -> None:
        self._b.factory.close()

    # -- the poll endpoint (RFC 8936) ------------------------------------------------------------

    def poll(
        self,
        stream_id: str,
        *,
        max_events: int | None,
        ack: Sequence[str],
        set_errs: Mapping[str, Mapping[str, str]],
        deliver: bool,
        reoffer_after: float,
        now: datetime,
    ) -> tuple[dict[str, str], bool]:
        """One RFC 8936 poll of ``stream_id``, in ONE transaction; returns ``(sets, more)``.

        1. ``ack``: this stream's SETs with these jtis are deleted (unknown jtis are ignored);
        2. ``set_errs`` (``{jti: {"err", "description"}}``): for each jti queued on this stream,
           the error is recorded (newest 100 kept per stream) and the SET leaves the queue;
           other jtis are ignored;
        3. unless ``max_events == 0`` (acknowledge only): the offerable SETs — never offered, or
           offered at least ``reoffer_after`` seconds before ``now`` — in queue order, at most
           ``max_events`` (``None``: no limit; never more than :data:`MAX_POLL_EVENTS`), are
           marked offered and returned as ``{jti: compact JWS}``. With ``deliver`` False (the
           stream is paused or disabled) only control SETs (stream-updated) are offerable.
           Dead letters (left by push delivery before a switch to poll) are never offered.

        ``more`` says whether offerable SETs remain after this response.
        """
        _check_now(now)
        if max_events is not None and max_events < 0:
            raise InvalidInput("maxEvents must not be negative", field="maxEvents")
        if reoffer_after < 0:
            raise InvalidInput("reoffer_after must not be negative", field="reoffer_after")
        limit = MAX_POLL_EVENTS if max_events is None else min(max_events, MAX_POLL_EVENTS)
        b = self._b
        cutoff = b.time_to_db(now - timedelta(seconds=reoffer_after))
        offerable = (
            "FROM {queue} WHERE stream_id = ? AND dead_at IS NULL "
            "AND (offered_at IS NULL OR offered_at <= ?)" + ("" if deliver else " AND control")
        )
        with store_errors(WHERE), b.writing() as tx:
            acked = list(dict.fromkeys(j for j in ack if isinstance(j, str)))
            tx.executemany(
                b.sql("DELETE FROM {queue} WHERE stream_id = ? AND jti = ?"),
                [(stream_id, jti) for jti in acked],
            )
            if set_errs:
                self._record_errors(tx, stream_id, set_errs, now)
            if limit == 0:
                found = tx.execute(
                    b.sql(f"SELECT signed {offerable} ORDER BY seq LIMIT 1"), [stream_id, cutoff]
                )
                return {}, bool(found and found[0]["signed"])
            select = (
                f"SELECT seq, jti, set_jwt, signed {offerable} ORDER BY seq LIMIT ?{b.lock_rows}"
            )
            rows = signed_prefix(tx.execute(b.sql(select), [stream_id, cutoff, limit + 1]))
            offered = rows[:limit]
            tx.executemany(
                b.sql(
                    "UPDATE {queue} SET offered_at = ?, offer_count = offer_count + 1 WHERE seq = ?"
                ),
                [(b.time_to_db(now), row["seq"]) for row in offered],
            )
        return {row["jti"]: row["set_jwt"] for row in offered}, len(rows) > limit

    def _record_errors(
        self, tx: OutboxTx, stream_id: str, set_errs: Mapping[str, Mapping[str, str]], now: datetime
    ) -> None:
        b = self._b
        jtis = [j for j in set_errs if isinstance(j, str)]
        known: set[str] = set()
        for start in range(0, len(jtis), 500):
            chunk = jtis[start : start + 500]
            marks = ", ".join("?" * len(chunk))
            rows = tx.execute(
                b.sql(f"SELECT jti FROM {{queue}} WHERE stream_id = ? AND jti IN ({marks})"),  # noqa: S608
                [stream_id, *chunk],
            )
            known.update(row["jti"] for row in rows)
        reported = [j for j in jtis if j in known]
        if not reported:
            return
        inserts: list[tuple[Any, ...]] = []
        for jti in reported:
            error = set_errs[jti]
            err = error.get("err") if isinstance(error, Mapping) else None
            description = error.get("description") if isinstance(error, Mapping) else None
            inserts.append(
                (
                    stream_id,
                    jti,
                    str(err)[:_MAX_ERR] if err is not None else "unspecified",
                    str(description)[:_MAX_DESCRIPTION] if description is not None else None,
                    b.time_to_db(now),
                )
            )
        tx.executemany(
            b.sql(
                "INSERT INTO {errors} (stream_id, jti, err, description, recorded_at) "
                "VALUES (?, ?, ?, ?, ?)"
            ),
            inserts,
        )
        tx.executemany(
            b.sql("DELETE FROM {queue} WHERE stream_id = ? AND jti = ?"),
            [(stream_id, jti) for jti in reported],
        )
        tx.execute(
            b.sql(
                "DELETE FROM {errors} WHERE stream_id = ? AND id NOT IN "
                "(SELECT id FROM {errors} WHERE stream_id = ? ORDER BY id DESC LIMIT ?)"
            ),
            [stream_id, stream_id, KEPT_ERRORS],
        )

    def has_offerable(
        self, stream_id: str, deliver: bool, reoffer_after: float, now: datetime
    ) -> bool:
        """Whether a poll now would return a SET (a cheap check for the long-poll loop)."""
        _check_now(now)
        b = self._b
        statement = (
            "SELECT signed FROM {queue} WHERE stream_id = ? AND dead_at IS NULL "  # noqa: S608
            "AND (offered_at IS NULL OR offered_at <= ?)"
            + ("" if deliver else " AND control")
            + " ORDER BY seq LIMIT 1"
        )
        cutoff = b.time_to_db(now - timedelta(seconds=reoffer_after))
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(b.sql(statement), [stream_id, cutoff])
        return bool(rows and rows[0]["signed"])

    # -- statistics (operators, /metrics) ---------------------------------------------------------

    def stream_stats(self, stream_id: str, now: datetime) -> dict[str, Any]:
        """The delivery figures of one stream:

        - ``queue_depth``, ``offered_unacked`` (poll), ``oldest_undelivered_age_seconds`` (None
          when the queue is empty): of the live queue, dead letters excluded;
        - push: ``dead_letters`` (their count), and of the queue's head (the next SET to push)
          ``head_attempts`` (failed attempts so far), ``next_attempt_at`` (RFC 3339; None: at
          once) and ``head_last_error``;
        - ``last_errors``: what the receiver reported (poll ``setErrs``, push error answers),
          newest first, up to 10."""
        _check_now(now)
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            (row,) = fetch(
                b.sql(f"SELECT {_QUEUE_FIGURES} FROM {{queue}} WHERE stream_id = ?"),  # noqa: S608
                [stream_id],
            )
            heads = fetch(b.sql(_HEADS.format(where=" AND stream_id = ?")), [stream_id])
            errors = fetch(
                b.sql(
                    "SELECT jti, err, description, recorded_at FROM {errors} "
                    "WHERE stream_id = ? ORDER BY id DESC LIMIT ?"
                ),
                [stream_id, REPORTED_ERRORS],
            )
        return _stats(row, heads[0] if heads else None, errors, now)

    def all_stream_stats(self, now: datetime) -> dict[str, dict[str, Any]]:
        """:meth:`stream_stats` of every stream that is not deleted, by stream id."""
        _check_now(now)
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            streams = fetch(b.sql("SELECT stream_id FROM {streams} WHERE NOT deleted"), [])
            queues = fetch(
                b.sql(f"SELECT stream_id, {_QUEUE_FIGURES} FROM {{queue}} GROUP BY stream_id"),  # noqa: S608
                [],
            )
            heads = fetch(b.sql(_HEADS.format(where="")), [])
            errors = fetch(
                b.sql(
                    "SELECT stream_id, jti, err, description, recorded_at FROM ("
                    "SELECT stream_id, jti, err, description, recorded_at, id, ROW_NUMBER() "
                    "OVER (PARTITION BY stream_id ORDER BY id DESC) AS n FROM {errors}) ranked "
                    "WHERE n <= ? ORDER BY stream_id, id DESC"
                ),
                [REPORTED_ERRORS],
            )
        by_queue = {row["stream_id"]: row for row in queues}
        by_head = {row["stream_id"]: row for row in heads}
        by_errors: dict[str, list[dict[str, Any]]] = {}
        for error in errors:
            by_errors.setdefault(error["stream_id"], []).append(error)
        result: dict[str, dict[str, Any]] = {}
        for stream_id in [row["stream_id"] for row in streams]:
            result[stream_id] = _stats(
                by_queue.get(stream_id, _EMPTY_QUEUE),
                by_head.get(stream_id),
                by_errors.get(stream_id, []),
                now,
            )
        return result

    def queued_kids(self) -> set[str]:
        """The ``kid`` of every key that signed a SET still queued (such keys stay published)."""
        with store_errors(WHERE), self._b.reading() as fetch:
            rows = fetch(self._b.sql("SELECT DISTINCT kid FROM {queue}"), [])
        return {row["kid"] for row in rows}

    # -- push secrets -----------------------------------------------------------------------------

    def put_push_secret(self, stream_id: str, header: str | None) -> None:
        """Keep (or, with None, forget) a push stream's ``authorization_header``. The value is
        a secret: it is never logged and never part of any error message."""
        b = self._b
        with store_errors(WHERE), b.writing() as tx:
            if header is None:
                tx.execute(b.sql("DELETE FROM {secrets} WHERE stream_id = ?"), [stream_id])
            else:
                tx.execute(
                    b.sql(
                        "INSERT INTO {secrets} (stream_id, authorization_header, updated_at) "
                        "VALUES (?, ?, ?) ON CONFLICT (stream_id) DO UPDATE SET "
                        "authorization_header = excluded.authorization_header, "
                        "updated_at = excluded.updated_at"
                    ),
                    [stream_id, header, b.time_to_db(datetime.now(UTC))],
                )

    def push_secret(self, stream_id: str) -> str | None:
        """The ``authorization_header`` to send to a push stream's endpoint, if any."""
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(
                b.sql("SELECT authorization_header FROM {secrets} WHERE stream_id = ?"),
                [stream_id],
            )
        return str(rows[0]["authorization_header"]) if rows else None

    # -- the worker's side ------------------------------------------------------------------------

    def unsigned(self) -> list[Unsigned]:
        """Every queued SET still to be signed, in queue order (after a restart: the worker
        signs them before it folds on)."""
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(
                b.sql("SELECT jti, stream_id, set_jwt FROM {queue} WHERE NOT signed ORDER BY seq"),
                [],
            )
        return [Unsigned(row["jti"], row["stream_id"], row["set_jwt"]) for row in rows]

    def store_signatures(self, signatures: Sequence[Signature]) -> None:
        """Replace the Signing Inputs of these rows by their compact JWS, in ONE transaction.
        Rows gone meanwhile (a stream deleted) or already signed are left alone."""
        b = self._b
        with store_errors(WHERE), b.writing() as tx:
            tx.lock_queue_rows("jti", [s.jti for s in signatures])
            tx.executemany(
                b.sql(
                    "UPDATE {queue} SET set_jwt = ?, kid = ?, signed = ? "
                    "WHERE jti = ? AND NOT signed"
                ),
                [(s.set_jwt, s.kid, True, s.jti) for s in signatures],
            )

    def load_streams(self) -> dict[str, FoldedStream]:
        """Every stream row (deleted ones included), by stream id."""
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(b.sql("SELECT * FROM {streams}"), [])
        return {row["stream_id"]: _stream_from_row(row) for row in rows}

    def mission_scope(self, mission_id: str) -> MissionScope | None:
        """The scope facts recorded from a Mission's approval, if the outbox has seen it."""
        b = self._b
        with store_errors(WHERE), b.reading() as fetch:
            rows = fetch(b.sql("SELECT * FROM {missions} WHERE mission_id = ?"), [mission_id])
        if not rows:
            return None
        row = rows[0]
        return MissionScope(
            mission_id=row["mission_id"],
            user=row["user_id"],
            agent=row["agent"],
            authority_set=json.loads(row["authority_set"]),
            position=int(row["position"]),
        )

    def write_page(self, page: OutboxPage, expected: int, new_position: int) -> None:
        """Write one folded page and record ``new_position``, in ONE transaction.

        Raises :class:`AnotherWorkerActive` when the tracking row is not at ``expected`` (or
        already at ``new_position``) and :class:`ProjectionMismatch` when the queue already
        holds a SET of this page (the ``UNIQUE (stream_id, txn, event_type)`` last line);
        either way nothing of the page is written."""
        b = self._b
        with store_errors(WHERE), b.writing() as tx:
            tx.expect_position(expected)
            self._write_streams(tx, page.streams)
            tx.executemany(
                b.sql(
                    "INSERT INTO {missions} (mission_id, user_id, agent, authority_set, position) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (mission_id) DO NOTHING"
                ),
                [
                    (m.mission_id, m.user, m.agent, _json(m.authority_set), m.position)
                    for m in page.missions
                ],
            )
            tx.lock_queue_rows("stream_id", list(page.drops))  # in seq order, as the deliverer
            for stream_id, everything in page.drops.items():
                held = "" if everything else " AND NOT control"
                delete = "DELETE FROM {queue} WHERE stream_id = ?" + held  # noqa: S608
                tx.execute(b.sql(delete), [stream_id])
            for stream_id in page.deleted:
                tx.execute(b.sql("DELETE FROM {secrets} WHERE stream_id = ?"), [stream_id])
                tx.execute(b.sql("DELETE FROM {errors} WHERE stream_id = ?"), [stream_id])
            self._insert_sets(tx, page.sets)
            tx.advance(new_position)

    def _write_streams(self, tx: OutboxTx, streams: Sequence[FoldedStream]) -> None:
        b = self._b
        columns = ", ".join(_STREAM_COLUMNS)
        marks = ", ".join("?" * len(_STREAM_COLUMNS))
        updates = ", ".join(f"{c} = excluded.{c}" for c in _STREAM_COLUMNS if c != "stream_id")
        statement = b.sql(
            f"INSERT INTO {{streams}} ({columns}) VALUES ({marks}) "  # noqa: S608
            f"ON CONFLICT (stream_id) DO UPDATE SET {updates}"
        )
        tx.executemany(statement, [self._stream_row(s) for s in streams])

    def _stream_row(self, stream: FoldedStream) -> tuple[Any, ...]:
        values = []
        for column in _STREAM_COLUMNS:
            value = getattr(stream, column)
            if column in _JSON_STREAM_COLUMNS:
                value = _json(value)
            elif isinstance(value, datetime):
                value = self._b.time_to_db(value)
            values.append(value)
        return tuple(values)

    def _insert_sets(self, tx: OutboxTx, sets: Sequence[QueuedSet]) -> None:
        b = self._b
        columns = ", ".join(_QUEUE_COLUMNS)
        marks = ", ".join("?" * len(_QUEUE_COLUMNS))
        times: dict[datetime, Any] = {}  # a page's rows share their created_at

        def db(value: Any) -> Any:
            if not isinstance(value, datetime):
                return value
            if value not in times:
                times[value] = b.time_to_db(value)
            return times[value]

        rows = [tuple(db(getattr(s, column)) for column in _QUEUE_COLUMNS) for s in sets]
        try:
            insert = f"INSERT INTO {{queue}} ({columns}) VALUES ({marks})"  # noqa: S608
            tx.executemany(b.sql(insert), rows)
        except IntegrityError as error:
            raise ProjectionMismatch(
                "the SSF outbox already holds a SET this page would enqueue (the same stream, "
                "ledger event and event type): the outbox does not match its tracking position. "
                "Nothing of the page was written; stop every outbox worker and inspect the "
                "ssf_queue table before restarting.",
            ) from error


def _stream_from_row(row: Mapping[str, Any]) -> FoldedStream:
    return FoldedStream(
        stream_id=row["stream_id"],
        receiver_id=row["receiver_id"],
        aud=row["aud"],
        resources=json.loads(row["resources"]),
        all_missions=bool(row["all_missions"]),
        status=row["status"],
        reason=row["reason"],
        events_delivered=json.loads(row["events_delivered"]),
        mission_capabilities=json.loads(row["mission_capabilities"]),
        signing_alg=row["signing_alg"],
        delivery_method=row["delivery_method"],
        subject_operations=json.loads(row["subject_operations"]),
        deleted=bool(row["deleted"]),
        receiver_revoked=bool(row["receiver_revoked"]),
        version=int(row["version"]),
        created_at=from_db_time(row["created_at"]),
        updated_at=from_db_time(row["updated_at"]),
        position=int(row["position"]),
        endpoint_url=row["endpoint_url"],
    )
