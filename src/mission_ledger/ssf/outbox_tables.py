"""Where the SSF outbox's tables live, and what differs between SQLite and PostgreSQL.

The outbox (projection name ``ssf_outbox``) has its OWN tracking row, keyed like the views' by
the ledger's application name, next to its tables:

- SQLite (and the in-memory ledger): ``<data_dir>/ssf.sqlite3``, with the library's ``tracking``
  table (its name is fixed on SQLite, hence a file of its own);
- PostgreSQL: the configured schema, tracking table ``ssf_outbox_tracking``.

Each backend is a subclass of the library's tracking recorder (``SQLiteTrackingRecorder`` /
``PostgresTrackingRecorder``), so the outbox rows and the tracking position commit in ONE
transaction (:class:`OutboxTx`), and the library's single-row tracking upsert (``… WHERE
notification_id < new``) refuses a position that was already recorded. A write transaction
takes the write lock first (``BEGIN IMMEDIATE`` on SQLite; on PostgreSQL the worker's
``SELECT … FOR UPDATE`` of the tracking row), so the worker's compare-and-set of the tracking
row cannot interleave with another writer. The DDL comes from
``projections/ssf_outbox.<backend>.sql`` (:func:`~..projections.contracts.ddl_statements`).
"""

from __future__ import annotations

import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import psycopg
from eventsourcing.persistence import IntegrityError, Tracking
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment

from ..config import Settings
from ..ledger import MissionLedger
from ..projections.contracts import NOT_REBUILDABLE_TABLES, SSF_OUTBOX, ddl_statements
from ..projections.errors import AnotherWorkerActive
from ..projections.views import (
    _quote,
    _sqlite_errors,
    immediate_transaction,
    open_tracking_store,
    tracking_env,
)

__all__ = [
    "APPLICATION_NAME",
    "PROJECTION_NAME",
    "SQLITE_OUTBOX_FILE",
    "TABLES",
    "Fetch",
    "OutboxBackend",
    "OutboxTx",
    "from_db_time",
    "open_backend",
    "outbox_env",
    "signed_prefix",
]

PROJECTION_NAME = SSF_OUTBOX  # env prefix SSF_OUTBOX_*, PostgreSQL table ssf_outbox_tracking
APPLICATION_NAME = MissionLedger.name  # the tracking row's key: the upstream application
SQLITE_OUTBOX_FILE = "ssf.sqlite3"
TABLES: tuple[str, ...] = NOT_REBUILDABLE_TABLES[SSF_OUTBOX]
_SQLITE_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"
WHERE = "the SSF outbox store"

#: Columns added to the DDL after its first release: (table, column, declaration) per backend
#: (:meth:`OutboxBackend.ensure_tables` adds the missing ones to an existing outbox).
ADDED_COLUMNS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "sqlite": (("ssf_queue", "signed", "INTEGER NOT NULL DEFAULT 1"),),
    "postgres": (("ssf_queue", "signed", "boolean NOT NULL DEFAULT TRUE"),),
}

#: ``fetch(statement, params)`` → rows as dicts, all on one snapshot (see ``reading``)
Fetch = Callable[[str, Sequence[Any]], list[dict[str, Any]]]


class OutboxTx:
    """One write transaction (see the module docstring for the worker's protocol)."""

    def __init__(self, backend: OutboxBackend, cursor: Any) -> None:
        self.backend = backend
        self.cursor = cursor

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return self.backend.run(self.cursor, statement, params)

    def executemany(self, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.backend.run_many(self.cursor, statement, rows)

    def lock_queue_rows(self, column: str, values: Sequence[Any]) -> None:
        """Lock the queue rows whose ``column`` is in ``values``, in ``seq`` order, before
        changing them. Every writer that changes several queue rows of other writers' streams
        (the push outcomes, the stored signatures, the rows a page drops for deleted or disabled
        streams) takes its row locks in that one order, so on
        PostgreSQL they wait for one another instead of deadlocking (and being cancelled after
        ``deadlock_timeout``). SQLite locks the whole database: nothing to do."""
        if values and self.backend.backend_name() == "postgres":
            self.execute(
                self.backend.sql(
                    f"SELECT seq FROM {{queue}} WHERE {column} = ANY(?) ORDER BY seq FOR UPDATE"  # noqa: S608
                ),
                [list(values)],
            )

    def expect_position(self, expected: int) -> None:
        current = self.backend.lock_tracking_row(self.cursor) or 0
        if current != expected:
            raise AnotherWorkerActive(
                f"the SSF outbox moved from position {expected} to {current} under this worker: "
                "another outbox worker is writing it; this one stopped without writing. Run "
                "only one outbox worker per store.",
                expected_position=expected,
                current_position=current,
            )

    def advance(self, position: int) -> None:
        try:
            self.backend.record_tracking(self.cursor, Tracking(APPLICATION_NAME, position))
        except IntegrityError as error:
            raise AnotherWorkerActive(
                f"position {position} was already recorded in the SSF outbox's tracking table: "
                "another outbox worker applied it; this worker's transaction was rolled back. "
                "Run only one outbox worker per store.",
                position=position,
            ) from error

    def seed_tracking(self) -> None:
        self.execute(
            self.backend.sql(
                "INSERT INTO {tracking} (application_name, notification_id) VALUES (?, 0) "
                "ON CONFLICT (application_name) DO NOTHING"
            ),
            [APPLICATION_NAME],
        )


class OutboxBackend(ABC):
    """What differs between SQLite and PostgreSQL (placeholders, names, types, locking)."""

    ph = "?"
    lock_rows = ""  # appended to the poll's SELECT (PostgreSQL: skip rows another poll holds)
    factory: Any

    @abstractmethod
    def table(self, name: str) -> str: ...

    @abstractmethod
    def tracking_table(self) -> str: ...

    @abstractmethod
    def backend_name(self) -> str: ...

    @abstractmethod
    def time_to_db(self, value: datetime) -> Any: ...

    @abstractmethod
    def run(self, cursor: Any, statement: str, params: Sequence[Any]) -> list[dict[str, Any]]: ...

    @abstractmethod
    def run_many(self, cursor: Any, statement: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abstractmethod
    def lock_tracking_row(self, cursor: Any) -> int | None: ...

    @abstractmethod
    def record_tracking(self, cursor: Any, tracking: Tracking) -> None: ...

    @abstractmethod
    def use_schema(self, cursor: Any) -> None: ...

    @abstractmethod
    def writing(self) -> Any:
        """A context manager yielding a :class:`OutboxTx` (committed on success)."""

    @abstractmethod
    def reading(self) -> Any:
        """A context manager yielding a :data:`Fetch` whose statements share one snapshot."""

    @abstractmethod
    def create_tracking_table(self) -> None: ...

    @abstractmethod
    def max_tracking(self) -> int | None: ...

    @abstractmethod
    def existing_tables(self) -> set[str]: ...

    @abstractmethod
    def existing_columns(self, table: str) -> set[str]: ...

    def sql(self, statement: str) -> str:
        """``{queue}``-style table names qualified, ``?`` placeholders in this backend's form."""
        names = {
            "streams": self.table("ssf_streams"),
            "missions": self.table("ssf_missions"),
            "queue": self.table("ssf_queue"),
            "errors": self.table("ssf_set_errors"),
            "secrets": self.table("ssf_push_secrets"),
            "tracking": self.tracking_table(),
        }
        text = statement.format(**names)
        return text if self.ph == "?" else text.replace("?", self.ph)

    def ensure_tables(self) -> None:
        """Create the tracking table, the outbox tables (idempotent DDL) and the tracking row."""
        self.create_tracking_table()
        if not set(TABLES) <= self.existing_tables() or self.max_tracking() is None:
            with self.writing() as tx:
                self.use_schema(tx.cursor)
                for statement in ddl_statements(SSF_OUTBOX, self.backend_name()):
                    tx.execute(statement)
                tx.seed_tracking()
        self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        """Bring an outbox created by an earlier release up to the DDL: columns added since
        are added (with their defaults, which describe the rows already there)."""
        missing = [
            (table, column, declaration)
            for table, column, declaration in ADDED_COLUMNS[self.backend_name()]
            if column not in self.existing_columns(table)
        ]
        if missing:
            with self.writing() as tx:
                for table, column, declaration in missing:
                    tx.execute(f"ALTER TABLE {self.table(table)} ADD COLUMN {column} {declaration}")


def signed_prefix(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (one stream's, in ``seq`` order) up to the first one not yet signed: a SET is
    never delivered before an earlier one of its stream."""
    for index, row in enumerate(rows):
        if not row["signed"]:
            return rows[:index]
    return rows


def from_db_time(value: Any) -> datetime:
    if isinstance(value, str):
        return datetime.strptime(value, _SQLITE_TIME).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _sqlite_write_lock(db_name: str) -> threading.Lock:
    """The lock this process's writers of the SQLite file ``db_name`` take in turn (one per
    file, whatever path names it)."""
    lock = _WRITE_LOCKS.get(db_name)
    if lock is None:
        with _WRITE_LOCKS_GUARD:
            real = os.path.realpath(db_name)
            lock = _WRITE_LOCKS.get(real) or threading.Lock()
            _WRITE_LOCKS[real] = _WRITE_LOCKS[db_name] = lock
    return lock


class _SQLiteOutbox(SQLiteTrackingRecorder, OutboxBackend):
    """The outbox in ``<data_dir>/ssf.sqlite3`` (library table ``tracking`` + ``ssf_*``)."""

    def table(self, name: str) -> str:
        return name

    def tracking_table(self) -> str:
        return "tracking"  # the library's fixed name on SQLite

    def backend_name(self) -> str:
        return "sqlite"

    def time_to_db(self, value: datetime) -> Any:
        return value.astimezone(UTC).strftime(_SQLITE_TIME)

    def run(self, cursor: Any, statement: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        with _sqlite_errors():
            cursor.execute(statement, params)
            return [dict(row) for row in cursor.fetchall()]

    def run_many(self, cursor: Any, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        with _sqlite_errors():
            cursor.executemany(statement, rows)

    def lock_tracking_row(self, cursor: Any) -> int | None:
        # BEGIN IMMEDIATE (see writing) already holds the database's write lock.
        rows = self.run(
            cursor,
            "SELECT notification_id FROM tracking WHERE application_name = ?",
            [APPLICATION_NAME],
        )
        return int(rows[0]["notification_id"]) if rows else None

    def record_tracking(self, cursor: Any, tracking: Tracking) -> None:
        self._insert_tracking(cursor, tracking)

    def use_schema(self, cursor: Any) -> None:
        pass

    def create_tracking_table(self) -> None:
        SQLiteTrackingRecorder.create_table(self)

    def max_tracking(self) -> int | None:
        value = self.max_tracking_id(APPLICATION_NAME)
        return None if value is None else int(value)

    def existing_tables(self) -> set[str]:
        with self.reading() as fetch:
            rows = fetch("SELECT name FROM sqlite_master WHERE type = 'table'", [])
        return {row["name"] for row in rows}

    def existing_columns(self, table: str) -> set[str]:
        with self.reading() as fetch:
            rows = fetch("SELECT name FROM pragma_table_info(?)", [table])
        return {row["name"] for row in rows}

    @contextmanager
    def writing(self) -> Iterator[OutboxTx]:
        # BEGIN IMMEDIATE takes the write lock before anything is read, so the worker's
        # compare-and-set and a poll's select-then-mark cannot interleave with another writer.
        # Writers of this process queue on a lock first: SQLite's own busy handler would make
        # them sleep 1, 2, 5, 10, 15… ms between attempts, and the outbox worker's, the push
        # deliverer's and the poll endpoint's short transactions would stall one another.
        with (
            _sqlite_write_lock(self.datastore.pool.db_name),
            immediate_transaction(self.datastore) as cursor,
        ):
            yield OutboxTx(self, cursor)

    @contextmanager
    def reading(self) -> Iterator[Fetch]:
        with self.datastore.transaction(commit=False) as cursor:

            def fetch(statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
                return self.run(cursor, statement, params)

            yield fetch


class _PostgresOutbox(PostgresTrackingRecorder, OutboxBackend):
    """The outbox in the configured schema (``ssf_outbox_tracking`` + ``ssf_*``)."""

    ph = "%s"
    lock_rows = " FOR UPDATE SKIP LOCKED"

    def table(self, name: str) -> str:
        return f"{_quote(self.datastore.schema)}.{_quote(name)}"

    def tracking_table(self) -> str:
        return self.table(self.tracking_table_name)

    def backend_name(self) -> str:
        return "postgres"

    def time_to_db(self, value: datetime) -> Any:
        return value

    def run(self, cursor: Any, statement: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cursor.execute(statement, list(params) or None)
        if cursor.description is None:
            return []
        return [dict(row) for row in cursor.fetchall()]

    def run_many(self, cursor: Any, statement: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            cursor.executemany(statement, rows)
        except psycopg.IntegrityError as error:  # the library maps it only at the end
            raise IntegrityError(str(error)) from error

    def lock_tracking_row(self, cursor: Any) -> int | None:
        rows = self.run(
            cursor,
            f"SELECT notification_id FROM {self.tracking_table()} "  # noqa: S608
            "WHERE application_name = %s FOR UPDATE",
            [APPLICATION_NAME],
        )
        return int(rows[0]["notification_id"]) if rows else None

    def record_tracking(self, cursor: Any, tracking: Tracking) -> None:
        self._insert_tracking(cursor, tracking)

    def use_schema(self, cursor: Any) -> None:
        cursor.execute(f"SET LOCAL search_path TO {_quote(self.datastore.schema)}")

    def create_tracking_table(self) -> None:
        PostgresTrackingRecorder.create_table(self)

    def max_tracking(self) -> int | None:
        value = self.max_tracking_id(APPLICATION_NAME)
        return None if value is None else int(value)

    def existing_tables(self) -> set[str]:
        with self.reading() as fetch:
            rows = fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [self.datastore.schema],
            )
        return {row["table_name"] for row in rows}

    def existing_columns(self, table: str) -> set[str]:
        with self.reading() as fetch:
            rows = fetch(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = %s",
                [self.datastore.schema, table],
            )
        return {row["column_name"] for row in rows}

    @contextmanager
    def writing(self) -> Iterator[OutboxTx]:
        with self.datastore.transaction(commit=True) as cursor:
            yield OutboxTx(self, cursor)

    @contextmanager
    def reading(self) -> Iterator[Fetch]:
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def fetch(statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
                return self.run(cursor, statement, params)

            yield fetch


def outbox_env(settings: Settings, *, pool_size: int) -> Environment:
    """The library environment of the outbox: the ledger's, redirected for SQLite/memory."""
    return tracking_env(
        settings,
        name=PROJECTION_NAME,
        sqlite_path=str(settings.data_dir / SQLITE_OUTBOX_FILE),
        pool_size=pool_size,
    )


def open_backend(settings: Settings, pool_size: int) -> OutboxBackend:
    """Construct the outbox's tracking recorder and make sure its tables exist."""
    backend: OutboxBackend = open_tracking_store(
        settings,
        outbox_env(settings, pool_size=pool_size),
        postgres_class=_PostgresOutbox,
        sqlite_class=_SQLiteOutbox,
        what=WHERE,
        where=WHERE,
    )
    return backend
