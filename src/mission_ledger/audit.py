"""Tamper evidence for the event store: verify the hash chains, sign checkpoints, export.

Threat model
============

The adversary can write to the event store (the SQLite file or the PostgreSQL schema): a DBA, a
compromised host, a careless migration, a restore of an old backup. They cannot read or write the
audit directory's *private* signing key (keep it on another volume or host), and the verifier
holds the *public* key and the checkpoint log from a place the adversary does not control.

:func:`verify` reads the stored rows directly with SQL (for the in-memory backend, the recorder's
list), never through the repository, the aggregate cache or the snapshots, in one read
transaction (a consistent snapshot) and one ordered, streamed pass; it recomputes every chain.
It detects, with no checkpoint at all:

* a changed byte in an event's stored state — the state no longer decodes (``undecodable``), or
  decodes to different values than the event's own ``hash`` covers (``hash_mismatch``), or to the
  same values through bytes the writer would never have produced, such as ``T`` → ``t`` in an ISO
  timestamp (``noncanonical_state``), or breaks the next event's link (``broken_link``), or moves
  the event to another id (``event_id_mismatch``);
* a changed topic: another event class changes the hashed payload (``hash_mismatch``), an alias of
  the same class is flagged (``topic_mismatch``), an unknown one does not decode;
* a deleted event in the middle or at the start of a stream (``missing_version``);
* swapped or renumbered events (``event_id_mismatch`` and ``hash_mismatch``; ``out_of_order``
  when the notification order disagrees with the version order);
* a snapshot whose ``head_hash`` is not the hash of the event at its version, that points at a
  missing event, or whose state differs from replaying the stream (``snapshot_mismatch``); this
  matters because ``repository.get`` starts from the snapshot.

The chain is *unkeyed*: anyone who can write the store can also recompute hashes. So three things
are detected only against a signed checkpoint (:func:`checkpoint`; Ed25519, key outside the
store), for the history the checkpoint covers:

* dropping the newest events of a stream, or a whole stream, or rolling the store back to an
  older backup (``truncated``; also when the store's highest notification id falls below the
  checkpointed position);
* rewriting a stream consistently, every hash recomputed (``rewritten``);
* an edited or forged checkpoint line (``bad_checkpoint_signature``).

Not detected:

* anything newer than the latest checkpoint: its newest events can be dropped or consistently
  rewritten, and new streams with valid chains appended. The chain proves that history was not
  edited since it was checkpointed, not who wrote an event. Checkpoint often.
* deletion of checkpoint lines or of the whole log, or replacing both the public key and the log.
  Ship each checkpoint line (``export`` includes them) and the public key to a separate,
  append-only place; anyone holding the private key can sign anything.
* other tables (tracking, projections) and the group-commit boundaries; wrong but consistently
  recorded timestamps (the writer's clock is trusted).

Should event classes ever gain ``class_version`` upcasters, ``noncanonical_state`` must compare
against the stored version's encoding; today no event class is versioned.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic
from psycopg import sql

from .config import Settings
from .domain.anchors import sha256_b64url
from .domain.canonical import canonicalize
from .domain.chain import ChainedEvent, compute_hash, event_id_for, genesis_hash
from .domain.errors import Conflict, MissionLedgerError
from .domain.idempotency import IdempotencyRecord
from .domain.mission import Mission
from .domain.proposal import Proposal
from .domain.timefmt import format_rfc3339
from .ledger import MissionLedger, event_type_name

__all__ = [
    "ALG",
    "CHECKPOINTS_FILE",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "AuditError",
    "CheckpointRefused",
    "Problem",
    "VerifyReport",
    "checkpoint",
    "export",
    "verify",
]

CHECKPOINTS_FILE = "checkpoints.jsonl"
PRIVATE_KEY_FILE = "checkpoint-signing-key.pem"
PUBLIC_KEY_FILE = "checkpoint-signing-key.pub.pem"
ALG = "EdDSA"
PAGE_SIZE = 500
_SUMMARY_LIMIT = 10
_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_HEADLINE = frozenset(
    {"originator_id", "originator_version", "timestamp", "event_id", "actor", "prev_hash", "hash"}
)


class AuditError(MissionLedgerError):
    """The audit itself cannot run: unreadable store, unusable signing key, bad audit dir."""

    code = "audit_error"
    http_status = 500
    exit_code = 1


class CheckpointRefused(Conflict):
    """A checkpoint was asked for while the ledger does not verify cleanly."""

    code = "checkpoint_refused"


@dataclass(frozen=True)
class Problem:
    """One integrity break. ``aggregate_id`` is ``""`` for breaks of the checkpoint log itself."""

    kind: str
    aggregate_id: str
    version: int | None
    event_id: str | None
    description: str


@dataclass
class VerifyReport:
    """What :func:`verify` found; ``problems`` is ordered so that the first one is the first break.

    Problems of one stream are in version order; streams are ordered by the notification position
    of their earliest broken row; breaks found only against the checkpoint come last.
    ``checkpoint`` summarises the checkpoint compared against (not its full list of heads).
    """

    ok: bool
    streams: int
    events: int
    position: int | None
    checkpoint: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "streams": self.streams,
            "events": self.events,
            "position": self.position,
            "checkpoint": self.checkpoint,
            "first_break": asdict(self.problems[0]) if self.problems else None,
            "problems": [asdict(p) for p in self.problems],
        }

    def summary(self) -> str:
        """Human text: the verdict, the first break (id, version, event id), then a few more."""
        scope = f"{self.streams} streams, {self.events} events, position {self.position or 0}"
        if self.ok:
            if self.checkpoint is None:
                return (
                    f"ledger verified: {scope}. No checkpoint yet, so dropping the newest "
                    "events cannot be detected; run `audit checkpoint`."
                )
            return (
                f"ledger verified: {scope}; consistent with the checkpoint of "
                f"{self.checkpoint['created_at']} (position {self.checkpoint['position']}, "
                f"{self.checkpoint['stream_count']} streams)."
            )
        lines = [
            f"LEDGER INTEGRITY BROKEN: {len(self.problems)} problem(s) in {scope}.",
            f"First break: {_headline(self.problems[0])}",
        ]
        rest = self.problems[1 : 1 + _SUMMARY_LIMIT]
        lines.extend(f"  also: {_headline(p)}" for p in rest)
        if len(self.problems) > 1 + _SUMMARY_LIMIT:
            lines.append(f"  … and {len(self.problems) - 1 - _SUMMARY_LIMIT} more")
        return "\n".join(lines)


def _headline(problem: Problem) -> str:
    """``kind [event id]: description`` (the description names the aggregate and version)."""
    event = f" [event {problem.event_id}]" if problem.event_id else ""
    return f"{problem.kind}{event}: {problem.description}"


# -- reading stored rows --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    position: int | None
    raw_id: Any  # as stored: hex text (SQLite), UUID (PostgreSQL, memory)
    version: Any  # an int unless the row was tampered with
    topic: Any
    state: Any


class _Source(Protocol):
    def max_position(self) -> int | None: ...

    def event_rows(self) -> Iterator[_Row]:
        """Every event row, ordered by originator id then version, streamed."""
        ...

    def snapshot_keys(self) -> Iterator[tuple[Any, Any]]: ...

    def snapshot_row(self, raw_id: Any, version: int) -> _Row | None: ...


def _sqlite_identifier(name: str) -> str:
    if not _SQL_IDENTIFIER.match(name):
        raise AuditError(f"unexpected table name {name!r}")
    return name


class _SQLiteSource:
    """One read transaction on the SQLite file (WAL: a consistent snapshot of the store)."""

    def __init__(self, path: Path, events_table: str, snapshots_table: str | None) -> None:
        if not path.is_file():
            raise AuditError(f"no event store at {path}; check --data")
        self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=30)
        try:
            self.conn.execute("PRAGMA query_only = ON")
            self.conn.execute("BEGIN")
            self.events = _sqlite_identifier(events_table)
            self.snapshots = (
                _sqlite_identifier(snapshots_table)
                if snapshots_table and self._has_table(snapshots_table)
                else None
            )
            if not self._has_table(events_table):
                raise AuditError(f"{path} has no {events_table} table; is it a ledger store?")
        except BaseException:
            self.conn.close()
            raise

    def _has_table(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (name,)
        ).fetchone()
        return row is not None

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.conn.execute("ROLLBACK")
        self.conn.close()

    def max_position(self) -> int | None:
        row = self.conn.execute(f"SELECT MAX(rowid) FROM {self.events}").fetchone()  # noqa: S608
        return None if row is None or row[0] is None else int(row[0])

    def event_rows(self) -> Iterator[_Row]:
        cursor = self.conn.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "  # noqa: S608
            f"FROM {self.events} ORDER BY originator_id, originator_version"
        )
        try:
            for rowid, raw_id, version, topic, state in cursor:
                yield _Row(int(rowid), raw_id, version, topic, state)
        finally:
            cursor.close()

    def snapshot_keys(self) -> Iterator[tuple[Any, Any]]:
        if self.snapshots is None:
            return
        cursor = self.conn.execute(
            f"SELECT originator_id, originator_version FROM {self.snapshots}"  # noqa: S608
        )
        try:
            yield from cursor
        finally:
            cursor.close()

    def snapshot_row(self, raw_id: Any, version: int) -> _Row | None:
        if self.snapshots is None:
            return None
        row = self.conn.execute(
            f"SELECT topic, state FROM {self.snapshots} "  # noqa: S608
            "WHERE originator_id=? AND originator_version=?",
            (raw_id, version),
        ).fetchone()
        return None if row is None else _Row(None, raw_id, version, row[0], row[1])


class _PostgresSource:
    """One REPEATABLE READ, read-only transaction; events come through a server-side cursor."""

    def __init__(self, settings: Settings, events_table: str, snapshots_table: str | None) -> None:
        target = settings.postgres_target()
        try:
            self.conn = psycopg.connect(
                host=target.host,
                port=target.port,
                dbname=target.dbname,
                user=target.user,
                password=target.password or None,
                connect_timeout=10,
            )
        except psycopg.Error as error:
            raise AuditError(
                f"cannot read PostgreSQL at {target.host}:{target.port}/{target.dbname}: "
                f"{str(error).strip().splitlines()[0] if str(error).strip() else 'error'}"
            ) from None
        self.conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        self.conn.read_only = True
        self.schema = target.schema
        self.events = sql.Identifier(target.schema, events_table)
        self.snapshots = (
            sql.Identifier(target.schema, snapshots_table)
            if snapshots_table and self._has_table(snapshots_table)
            else None
        )
        if not self._has_table(events_table):
            self.close()
            raise AuditError(f"schema {target.schema} has no {events_table} table")

    def _has_table(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM information_schema.tables WHERE table_schema=%s AND table_name=%s",
            (self.schema, name),
        ).fetchone()
        return row is not None

    def close(self) -> None:
        with contextlib.suppress(psycopg.Error):
            self.conn.rollback()
        self.conn.close()

    def max_position(self) -> int | None:
        query = sql.SQL("SELECT MAX(notification_id) FROM {}").format(self.events)
        row = self.conn.execute(query).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def event_rows(self) -> Iterator[_Row]:
        query = sql.SQL(
            "SELECT notification_id, originator_id, originator_version, topic, state FROM {} "
            "ORDER BY originator_id, originator_version"
        ).format(self.events)
        with self.conn.cursor(name="mission_ledger_audit_events") as cursor:
            cursor.itersize = PAGE_SIZE
            cursor.execute(query)
            for position, raw_id, version, topic, state in cursor:
                yield _Row(int(position), raw_id, version, topic, state)

    def snapshot_keys(self) -> Iterator[tuple[Any, Any]]:
        if self.snapshots is None:
            return
        query = sql.SQL("SELECT originator_id, originator_version FROM {}").format(self.snapshots)
        with self.conn.cursor(name="mission_ledger_audit_snapshots") as cursor:
            cursor.itersize = PAGE_SIZE
            cursor.execute(query)
            yield from cursor

    def snapshot_row(self, raw_id: Any, version: int) -> _Row | None:
        if self.snapshots is None:
            return None
        query = sql.SQL(
            "SELECT topic, state FROM {} WHERE originator_id=%s AND originator_version=%s"
        ).format(self.snapshots)
        row = self.conn.execute(query, (raw_id, version)).fetchone()
        return None if row is None else _Row(None, raw_id, version, row[0], row[1])


class _MemorySource:
    """The POPO recorders' lists (``memory:``), copied under their locks."""

    def __init__(self, ledger: MissionLedger) -> None:
        self.events = self._copy(ledger.recorder)
        self.snapshots = self._copy(ledger.snapshots.recorder) if ledger.snapshots else []

    @staticmethod
    def _copy(recorder: Any) -> list[StoredEvent]:
        stored = getattr(recorder, "_stored_events", None)
        if stored is None:
            raise AuditError(f"cannot read the in-memory store ({type(recorder).__name__})")
        with recorder._database_lock:
            return list(stored)

    def close(self) -> None:
        self.events = []

    def max_position(self) -> int | None:
        return len(self.events) or None

    def event_rows(self) -> Iterator[_Row]:
        order = sorted(
            range(len(self.events)),
            key=lambda i: (str(self.events[i].originator_id), self.events[i].originator_version),
        )
        for index in order:
            s = self.events[index]
            yield _Row(index + 1, s.originator_id, s.originator_version, s.topic, s.state)

    def snapshot_keys(self) -> Iterator[tuple[Any, Any]]:
        for s in self.snapshots:
            yield s.originator_id, s.originator_version

    def snapshot_row(self, raw_id: Any, version: int) -> _Row | None:
        for s in reversed(self.snapshots):
            if s.originator_id == raw_id and s.originator_version == version:
                return _Row(None, raw_id, version, s.topic, s.state)
        return None


@contextlib.contextmanager
def _open_source(ledger: MissionLedger) -> Iterator[_Source]:
    settings = ledger.settings
    backend = settings.backend()
    source: _SQLiteSource | _PostgresSource | _MemorySource
    if backend == "memory":
        source = _MemorySource(ledger)
    else:
        postgres = backend == "postgres"
        events_table = str(
            getattr(ledger.recorder, "events_table_name", "")
            or ("missionledger_events" if postgres else "stored_events")
        )
        snapshots_table: str | None = None
        if ledger.snapshots is not None:
            snapshots_table = str(
                getattr(ledger.snapshots.recorder, "events_table_name", "")
                or ("missionledger_snapshots" if postgres else "stored_snapshots")
            )
        if postgres:
            source = _PostgresSource(settings, events_table, snapshots_table)
        else:
            source = _SQLiteSource(settings.sqlite_path(), events_table, snapshots_table)
    try:
        yield source
    finally:
        source.close()


# -- checking one stream at a time ----------------------------------------------------------------


def _as_uuid(raw: Any) -> UUID | None:
    if isinstance(raw, UUID):
        return raw
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return UUID(raw)
    return None


def _key(raw: Any) -> str:
    uid = _as_uuid(raw)
    return str(uid) if uid is not None else str(raw)


def _label(event: Any) -> str:
    if isinstance(event, Mission.Event):
        return "Mission"
    if isinstance(event, Proposal.Event):
        return "Proposal"
    if isinstance(event, IdempotencyRecord.Event):
        return "idempotency record"
    return "aggregate"


def _plaintext(mapper: Mapper[Any], state: bytes) -> bytes:
    if mapper.cipher is not None:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor is not None:
        state = mapper.compressor.decompress(state)
    return state


def _writer_encoding(mapper: Mapper[Any], event: Any) -> bytes:
    """The bytes ``Mapper.to_stored_event`` writes for ``event``, before any cipher."""
    state = dict(vars(event))
    state.pop("originator_id", None)
    state.pop("originator_version", None)
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return mapper.transcoder.encode(state)


def _aggregate_state(aggregate: Any) -> dict[str, Any]:
    """What ``Snapshot.take`` stores for ``aggregate``."""
    state = dict(vars(aggregate))
    for private in ("_id", "_version", "_pending_events"):
        state.pop(private, None)
    class_version = getattr(type(aggregate), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return state


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


@dataclass
class _Stream:
    raw_id: Any
    key: str
    uid: UUID | None
    label: str = "aggregate"
    next_version: int = 1
    prev_hash: str | None = None  # stored hash of version next_version - 1, if readable
    prev_position: int | None = None
    head: tuple[int, str] | None = None
    problems: list[Problem] = field(default_factory=list)
    first_position: int | None = None
    snapshots: dict[int, Any] = field(default_factory=dict)  # version → raw id to query with
    aggregate: Any = None
    replaying: bool = True
    checkpointed: tuple[int, str] | None = None
    checkpoint_seen: bool = False


class _Verifier:
    def __init__(
        self,
        ledger: MissionLedger,
        source: _Source,
        checkpointed: dict[str, tuple[int, str]],
        collect_heads: bool,
    ) -> None:
        self.ledger = ledger
        self.mapper: Mapper[Any] = ledger.mapper
        self.snapshot_mapper: Mapper[Any] = (
            ledger.snapshots.mapper if ledger.snapshots is not None else ledger.mapper
        )
        self.source = source
        self.checkpointed = dict(checkpointed)
        self.collect_heads = collect_heads
        self.heads: dict[str, dict[str, Any]] = {}
        self.streams = 0
        self.events = 0
        self.groups: list[tuple[int | None, int, list[Problem]]] = []
        self.snapshot_index: dict[str, dict[int, Any]] = {}

    # one pass ------------------------------------------------------------------------------------

    def run(self) -> None:
        for raw_id, version in self.source.snapshot_keys():
            self.snapshot_index.setdefault(_key(raw_id), {})[version] = raw_id
        stream: _Stream | None = None
        for row in self.source.event_rows():
            self.events += 1
            if stream is None or row.raw_id != stream.raw_id:
                if stream is not None:
                    self._finish(stream)
                stream = self._start(row.raw_id)
            self._check(stream, row)
        if stream is not None:
            self._finish(stream)
        for key, versions in self.snapshot_index.items():  # snapshots of streams with no events
            orphan = _Stream(raw_id=None, key=key, uid=_as_uuid(key))
            for version in sorted(versions, key=str):
                self._add(
                    orphan,
                    "snapshot_mismatch",
                    _int_or_none(version),
                    None,
                    f"a snapshot at version {version} exists but the stream has no events",
                )
            self._close_group(orphan)
        for key, (version, _) in sorted(self.checkpointed.items()):  # checkpointed, now gone
            gone = _Stream(raw_id=None, key=key, uid=_as_uuid(key))
            self._add(
                gone,
                "truncated",
                version,
                None,
                f"the stream is gone; the checkpoint recorded it at version {version}",
            )
            self._close_group(gone, last=True)

    def _start(self, raw_id: Any) -> _Stream:
        self.streams += 1
        key = _key(raw_id)
        stream = _Stream(raw_id=raw_id, key=key, uid=_as_uuid(raw_id))
        stream.snapshots = self.snapshot_index.pop(key, {})
        stream.replaying = bool(stream.snapshots)
        stream.checkpointed = self.checkpointed.pop(key, None)
        return stream

    def _add(
        self, stream: _Stream, kind: str, version: int | None, position: int | None, text: str
    ) -> None:
        event_id = (
            event_id_for(stream.uid, version)
            if stream.uid is not None and version is not None
            else None
        )
        where = f"{stream.label} {stream.key}"
        if version is not None:
            where += f" version {version}"
        stream.problems.append(Problem(kind, stream.key, version, event_id, f"{where}: {text}"))
        stream.replaying = False
        if position is not None and (
            stream.first_position is None or position < stream.first_position
        ):
            stream.first_position = position

    def _close_group(self, stream: _Stream, *, last: bool = False) -> None:
        if stream.problems:
            rank = 2 if last else (0 if stream.first_position is not None else 1)
            self.groups.append((stream.first_position, rank, stream.problems))

    def _check(self, stream: _Stream, row: _Row) -> None:
        position = row.position
        if not isinstance(row.version, int) or row.version < 1:
            self._add(
                stream,
                "out_of_order",
                None,
                position,
                f"a row has the invalid version {row.version!r}",
            )
            return
        version = row.version
        if version != stream.next_version:
            first, last = stream.next_version, version - 1
            missing = f"version {first}" if first == last else f"versions {first}–{last}"
            self._add(
                stream,
                "missing_version",
                first,
                position,
                f"{missing} missing: the stream jumps to version {version}",
            )
            stream.prev_hash = None
        stream.next_version = version + 1
        if (
            position is not None
            and stream.prev_position is not None
            and position < stream.prev_position
        ):
            self._add(
                stream,
                "out_of_order",
                version,
                position,
                f"stored at position {position}, before the previous version's position "
                f"{stream.prev_position}: events were renumbered or swapped",
            )
        stream.prev_position = position
        expected_prev = stream.prev_hash
        stream.prev_hash = None
        event = self._decode(stream, row, version)
        if event is None:
            return
        state = vars(event)
        if stream.label == "aggregate":
            stream.label = _label(event)
        kind_name = event_type_name(get_topic(type(event)))
        if get_topic(type(event)) != row.topic:
            self._add(
                stream,
                "topic_mismatch",
                version,
                position,
                f"stored topic {row.topic!r} is not the event class's topic "
                f"{get_topic(type(event))!r}",
            )
        try:
            canonical = _writer_encoding(self.mapper, event) == _plaintext(self.mapper, row.state)
        except Exception:  # any failure here means the bytes are not canonical
            canonical = False
        if not canonical:
            self._add(
                stream,
                "noncanonical_state",
                version,
                position,
                f"the stored bytes of this {kind_name} event are not the encoding the "
                "ledger writes for the values they decode to (edited bytes)",
            )
        stored_hash = state.get("hash")
        try:
            recomputed: str | None = compute_hash(event)
        except Exception as error:  # a tampered field may not be hashable
            recomputed = None
            reason = f"its content cannot be hashed ({type(error).__name__}: {error})"
        else:
            reason = f"its content hashes to {recomputed}"
        if not isinstance(stored_hash, str) or recomputed != stored_hash:
            self._add(
                stream,
                "hash_mismatch",
                version,
                position,
                f"the {kind_name} event carries hash {_short(stored_hash)} but {reason}",
            )
        if stream.uid is not None:
            if version == 1:
                expected_prev = genesis_hash(stream.uid)
            if expected_prev is not None and state.get("prev_hash") != expected_prev:
                previous = "the genesis hash" if version == 1 else f"version {version - 1}'s hash"
                self._add(
                    stream,
                    "broken_link",
                    version,
                    position,
                    f"prev_hash {_short(state.get('prev_hash'))} is not {previous} {expected_prev}",
                )
            expected_id = event_id_for(stream.uid, version)
            if state.get("event_id") != expected_id:
                self._add(
                    stream,
                    "event_id_mismatch",
                    version,
                    position,
                    f"event_id {_short(state.get('event_id'))} should be {expected_id} "
                    "(the event belongs to another position)",
                )
        if not isinstance(stored_hash, str):
            return
        stream.prev_hash = stored_hash
        stream.head = (version, stored_hash)
        if stream.checkpointed is not None and stream.checkpointed[0] == version:
            stream.checkpoint_seen = True
            if stream.checkpointed[1] != stored_hash:
                self._add(
                    stream,
                    "rewritten",
                    version,
                    position,
                    f"the checkpoint recorded hash {stream.checkpointed[1]} for this "
                    f"version, the store now has {stored_hash}: history was rewritten",
                )
        if stream.replaying:
            try:
                stream.aggregate = event.mutate(stream.aggregate)
            except Exception:  # replay is only needed to compare snapshots
                stream.replaying = False
        if version in stream.snapshots:
            self._check_snapshot(stream, version, stored_hash, position)

    def _decode(self, stream: _Stream, row: _Row, version: int) -> Any:
        position = row.position
        if stream.uid is None:
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"the originator id {row.raw_id!r} is not a UUID",
            )
            return None
        if not isinstance(row.state, bytes) or not isinstance(row.topic, str):
            self._add(
                stream,
                "undecodable",
                version,
                position,
                "the stored state is not a byte string (or the topic not text)",
            )
            return None
        stored = StoredEvent(
            originator_id=stream.uid, originator_version=version, topic=row.topic, state=row.state
        )
        try:
            event = self.mapper.to_domain_event(stored)
        except Exception as error:  # any decode failure is a finding
            cause = error.__cause__ or error  # the mapper wraps the transcoder's error
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"the stored event (topic {row.topic!r}) does not decode: "
                f"{type(cause).__name__}: {str(cause)[:160]}",
            )
            return None
        if not isinstance(event, ChainedEvent):
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"topic {row.topic!r} is not a hash-chained ledger event",
            )
            return None
        return event

    def _check_snapshot(
        self, stream: _Stream, version: int, event_hash: str, position: int | None
    ) -> None:
        raw_id = stream.snapshots.pop(version)
        row = self.source.snapshot_row(raw_id, version)
        if row is None:
            return
        where = f"the snapshot at version {version}"
        try:
            if not isinstance(row.state, bytes) or not isinstance(row.topic, str):
                raise TypeError("the stored snapshot is not bytes")
            snapshot: Any = self.snapshot_mapper.to_domain_event(
                StoredEvent(
                    originator_id=stream.uid or raw_id,
                    originator_version=version,
                    topic=row.topic,
                    state=row.state,
                )
            )
            state = snapshot.state
            if not isinstance(state, dict):
                raise TypeError("the snapshot has no state")
        except Exception as error:  # an unreadable snapshot is a finding
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} does not decode ({type(error).__name__}: {str(error)[:120]})",
            )
            return
        if state.get("head_hash") != event_hash:
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} has head_hash {_short(state.get('head_hash'))}, but the event at "
                f"that version has hash {event_hash}",
            )
            return
        if not stream.replaying or stream.aggregate is None:
            return
        transcoder = self.snapshot_mapper.transcoder
        expected = transcoder.decode(transcoder.encode(_aggregate_state(stream.aggregate)))
        expected_topic = get_topic(type(stream.aggregate))
        if getattr(snapshot, "topic", None) != expected_topic or expected != state:
            differing = sorted(
                k for k in set(expected) | set(state) if expected.get(k) != state.get(k)
            )
            detail = ", ".join(differing[:5]) or f"topic {getattr(snapshot, 'topic', None)!r}"
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} differs from replaying the events (in: {detail}); loading the "
                "aggregate would start from forged state",
            )

    def _finish(self, stream: _Stream) -> None:
        for version in sorted(stream.snapshots):
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                None,
                f"a snapshot at version {version} exists but the event at that version is "
                "missing or unreadable",
            )
        if stream.checkpointed is not None and not stream.checkpoint_seen:
            cp_version = stream.checkpointed[0]
            now = stream.next_version - 1
            self._add(
                stream,
                "truncated",
                cp_version,
                None,
                f"the checkpoint recorded version {cp_version}, the store now ends at version {now}"
                if now < cp_version
                else f"the checkpointed event at version {cp_version} is missing or unreadable",
            )
        self._close_group(stream)
        if self.collect_heads and stream.head is not None:
            self.heads[stream.key] = {"version": stream.head[0], "hash": stream.head[1]}

    def problems(self) -> list[Problem]:
        ordered = sorted(
            enumerate(self.groups),
            key=lambda item: (item[1][1], item[1][0] if item[1][0] is not None else 0, item[0]),
        )
        return [p for _, (_, _, problems) in ordered for p in problems]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None


# -- checkpoints ----------------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _thumbprint(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint of the Ed25519 key (``{"crv","kty","x"}``)."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return sha256_b64url(canonicalize({"crv": "Ed25519", "kty": "OKP", "x": _b64url(raw)}))


def _public_pem(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_public_key(audit_dir: Path) -> Ed25519PublicKey | None:
    path = audit_dir / PUBLIC_KEY_FILE
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise AuditError(f"cannot read the checkpoint public key {path}: {error}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} is not an Ed25519 public key")
    return key


def _create_exclusive(path: Path, data: bytes, mode: int) -> bool:
    """Write ``data`` to ``path`` only if it does not exist (atomically); ``False`` if it did."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        return True
    finally:
        temp.unlink(missing_ok=True)


def _signing_key(audit_dir: Path) -> Ed25519PrivateKey:
    """Load the private key, creating the pair (mode 0600 / 0644) on first use."""
    try:
        audit_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as error:
        raise AuditError(f"cannot create the audit directory {audit_dir}: {error}") from None
    private_path = audit_dir / PRIVATE_KEY_FILE
    public_path = audit_dir / PUBLIC_KEY_FILE
    if not private_path.exists():
        if public_path.exists():
            raise AuditError(
                f"{public_path} exists but its private key {private_path} does not; restore the "
                "private key (or move both away to start a new key and checkpoint log)"
            )
        fresh = Ed25519PrivateKey.generate()
        pem = fresh.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        try:
            _create_exclusive(private_path, pem, 0o600)
        except OSError as error:
            raise AuditError(f"cannot create the signing key {private_path}: {error}") from None
    try:
        key = serialization.load_pem_private_key(private_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as error:
        raise AuditError(
            f"cannot read the checkpoint signing key {private_path}: {error}"
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{private_path} is not an Ed25519 private key")
    try:
        _create_exclusive(public_path, _public_pem(key.public_key()), 0o644)
    except OSError as error:
        raise AuditError(f"cannot write the public key {public_path}: {error}") from None
    public = _load_public_key(audit_dir)
    if public is None or _thumbprint(public) != _thumbprint(key.public_key()):
        raise AuditError(f"{public_path} does not belong to the signing key {private_path}")
    return key


@dataclass
class _Checkpoints:
    body: dict[str, Any] | None = None
    line: int = 0
    thumbprint: str | None = None
    problems: list[Problem] = field(default_factory=list)

    def heads(self) -> dict[str, tuple[int, str]]:
        if self.body is None:
            return {}
        return {k: (v["version"], v["hash"]) for k, v in self.body["streams"].items()}

    def summary(self) -> dict[str, Any] | None:
        if self.body is None:
            return None
        return {
            "line": self.line,
            "issuer": self.body["issuer"],
            "created_at": self.body["created_at"],
            "position": self.body["position"],
            "stream_count": self.body["stream_count"],
            "event_count": self.body["event_count"],
            "public_key_thumbprint": self.thumbprint,
        }


def _valid_body(body: Any) -> bool:
    if not isinstance(body, dict):
        return False
    if not all(isinstance(body.get(k), str) for k in ("issuer", "created_at")):
        return False
    if not all(
        isinstance(body.get(k), int) and not isinstance(body.get(k), bool)
        for k in ("position", "stream_count", "event_count")
    ):
        return False
    streams = body.get("streams")
    return isinstance(streams, dict) and all(
        isinstance(head, dict)
        and isinstance(head.get("version"), int)
        and isinstance(head.get("hash"), str)
        for head in streams.values()
    )


def _read_checkpoints(audit_dir: Path) -> _Checkpoints:
    """Check every line's signature; keep the latest valid checkpoint."""
    result = _Checkpoints()
    path = audit_dir / CHECKPOINTS_FILE
    if not path.exists():
        return result
    public = _load_public_key(audit_dir)
    thumbprint = _thumbprint(public) if public is not None else None

    def bad(number: int, why: str) -> None:
        text = f"{CHECKPOINTS_FILE} line {number}: {why}"
        result.problems.append(Problem("bad_checkpoint_signature", "", None, None, text))

    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                bad(number, "not a JSON checkpoint record")
                continue
            if not isinstance(record, dict) or not isinstance(record.get("signature"), str):
                bad(number, "not a checkpoint record (no signature)")
                continue
            if public is None:
                bad(number, f"cannot be checked: the public key {PUBLIC_KEY_FILE} is missing")
                continue
            if record.get("alg") != ALG:
                bad(number, f"algorithm {record.get('alg')!r} is not {ALG}")
                continue
            if record.get("public_key_thumbprint") != thumbprint:
                bad(number, "signed by another key than the audit directory's public key")
                continue
            body = record.get("checkpoint")
            try:
                public.verify(_b64url_decode(record["signature"]), canonicalize(body))
            except (InvalidSignature, ValueError, TypeError):
                bad(number, "the signature does not match the checkpoint (edited or forged)")
                continue
            if not _valid_body(body):
                bad(number, "signed, but not a well-formed checkpoint body")
                continue
            result.body, result.line, result.thumbprint = body, number, thumbprint
    return result


# -- the API --------------------------------------------------------------------------------------


def _verify(
    ledger: MissionLedger, audit_dir: Path, *, collect_heads: bool
) -> tuple[VerifyReport, dict[str, dict[str, Any]]]:
    checkpoints = _read_checkpoints(audit_dir)
    with _open_source(ledger) as source:
        position = source.max_position()
        verifier = _Verifier(ledger, source, checkpoints.heads(), collect_heads)
        verifier.run()
    problems = verifier.problems()
    if checkpoints.body is not None and (position or 0) < checkpoints.body["position"]:
        problems.append(
            Problem(
                "truncated",
                "",
                None,
                None,
                f"the store's highest notification id is {position or 0}, below the "
                f"checkpointed position {checkpoints.body['position']}: events were deleted or "
                "an older backup was restored",
            )
        )
    problems += checkpoints.problems
    report = VerifyReport(
        ok=not problems,
        streams=verifier.streams,
        events=verifier.events,
        position=position,
        checkpoint=checkpoints.summary(),
        problems=problems,
    )
    return report, verifier.heads


def verify(ledger: MissionLedger, *, audit_dir: Path) -> VerifyReport:
    """Recompute every chain from the stored rows and compare with the latest checkpoint."""
    report, _ = _verify(ledger, audit_dir, collect_heads=False)
    return report


def checkpoint(ledger: MissionLedger, *, audit_dir: Path) -> dict[str, Any]:
    """Sign the current heads of every stream and append the record to the checkpoint log.

    Refused (:class:`CheckpointRefused`) unless the ledger verifies cleanly: a checkpoint vouches
    for the history it covers.
    """
    report, heads = _verify(ledger, audit_dir, collect_heads=True)
    if not report.ok:
        first = report.problems[0]
        raise CheckpointRefused(
            f"refusing to checkpoint a ledger that does not verify: {len(report.problems)} "
            f"problem(s), first {_headline(first)}. Run `audit verify` and "
            "investigate before checkpointing.",
            problems=len(report.problems),
            first_problem=asdict(first),
        )
    key = _signing_key(audit_dir)
    body = {
        "issuer": ledger.issuer,
        "created_at": format_rfc3339(ledger.clock.now()),
        "position": report.position or 0,
        "streams": heads,
        "stream_count": report.streams,
        "event_count": report.events,
    }
    record = {
        "checkpoint": body,
        "signature": _b64url(key.sign(canonicalize(body))),
        "public_key_thumbprint": _thumbprint(key.public_key()),
        "alg": ALG,
    }
    line = canonicalize(record) + b"\n"
    path = audit_dir / CHECKPOINTS_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        with os.fdopen(fd, "ab") as log:
            fcntl.flock(log.fileno(), fcntl.LOCK_EX)
            log.write(line)
            log.flush()
            os.fsync(log.fileno())
    except OSError as error:
        raise AuditError(f"cannot append to {path}: {error}") from None
    return record


def _json_default(value: object) -> Any:
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, datetime):
        return format_rfc3339(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _dumps(document: dict[str, Any]) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":"), default=_json_default)


def export(
    ledger: MissionLedger, out: TextIO, *, audit_dir: Path, since: datetime | None = None
) -> int:
    """Write every event (notification order) and then every checkpoint as JSON Lines.

    Each event line carries what its ``hash`` covers, so an auditor can recompute the chains
    offline: ``fields`` holds every field but the headline ones (``originator_topic`` included,
    which :func:`mission_ledger.ledger.event_document` leaves out), ``topic`` is the hashed topic
    and ``timestamp`` parses back to the hashed instant. A row that does not decode is written as
    ``{"kind": "undecodable", …}`` with its raw state, and not counted. Returns the number of
    event lines.
    """
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    count = 0
    start = 1
    while True:
        page = ledger.recorder.select_notifications(start, PAGE_SIZE)
        if not page:
            break
        for notification in page:
            try:
                event: Any = ledger.mapper.to_domain_event(notification)
            except Exception as error:  # evidence is exported, not dropped
                out.write(
                    _dumps(
                        {
                            "kind": "undecodable",
                            "position": notification.id,
                            "aggregate_id": str(notification.originator_id),
                            "version": notification.originator_version,
                            "topic": notification.topic,
                            "state_b64": base64.b64encode(notification.state).decode("ascii"),
                            "error": f"{type(error).__name__}: {error}",
                        }
                    )
                    + "\n"
                )
                continue
            if since is not None and event.timestamp < since:
                continue
            state = vars(event)
            topic = get_topic(type(event))
            document = {
                "kind": "event",
                "position": notification.id,
                "aggregate_id": str(event.originator_id),
                "version": event.originator_version,
                "type": event_type_name(topic),
                "topic": topic,
                "timestamp": format_rfc3339(event.timestamp),
                "event_id": state.get("event_id"),
                "actor": state.get("actor"),
                "prev_hash": state.get("prev_hash"),
                "hash": state.get("hash"),
                "fields": {k: v for k, v in state.items() if k not in _HEADLINE},
            }
            out.write(_dumps(document) + "\n")
            count += 1
        start = page[-1].id + 1
    path = audit_dir / CHECKPOINTS_FILE
    if path.exists():
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    out.write(_dumps({"kind": "checkpoint", **record}) + "\n")
    return count
