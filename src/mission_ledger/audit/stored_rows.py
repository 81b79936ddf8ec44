"""Read the stored event and snapshot rows directly (SQLite, PostgreSQL, in-memory), bypassing
the repository and its caches."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from ..config import Settings
from ..errors import AuditError, first_line
from ..ledger import MissionLedger

PAGE_SIZE = 500
_SQL_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


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
            self.conn = target.connect()
        except psycopg.Error as error:
            raise AuditError(
                f"cannot read PostgreSQL at {target.where}: {first_line(error)}"
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
