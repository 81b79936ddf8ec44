"""The view tables and their tracking row, on SQLite or PostgreSQL.

Each backend is a subclass of the library's tracking recorder (``SQLiteTrackingRecorder`` /
``PostgresTrackingRecorder``), so the view rows and the tracking position commit in ONE
transaction and the library's single-row tracking upsert (``… WHERE notification_id < new``)
refuses a position that was already recorded. All three views share one projection name,
``mission_views``, and so one tracking row, keyed by the ledger's application name:

- SQLite: one database file, ``<data_dir>/views.sqlite3``, with the library's ``tracking`` table
  (its name is fixed, hence one file for this one tracking recorder);
- PostgreSQL: the configured schema, tracking table ``mission_views_tracking``.

A write transaction first reads the tracking row under a write lock (``BEGIN IMMEDIATE`` on
SQLite, ``SELECT … FOR UPDATE`` on PostgreSQL) and compares it with the position the writer
started from (compare-and-set), then writes the rows, then records the new position through the
library's ``_insert_tracking``. A writer that raced another one therefore fails before writing.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any

import psycopg
from eventsourcing.persistence import (
    BaseInfrastructureFactory,
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    Tracking,
)
from eventsourcing.postgres import PostgresFactory, PostgresTrackingRecorder
from eventsourcing.sqlite import (
    SQLiteCursor,
    SQLiteDatastore,
    SQLiteFactory,
    SQLiteTrackingRecorder,
)
from eventsourcing.utils import Environment

from ..config import Settings
from ..domain.timefmt import format_rfc3339
from ..errors import Unavailable, first_line
from ..ledger import MissionLedger
from .contracts import PROJECTION_TABLES, ddl_statements
from .errors import AnotherWorkerActive, ProjectionMismatch
from .fold import EDGE_COLUMNS, TABLE_COLUMNS, TIME_COLUMNS, PageFold

PROJECTION_NAME = "mission_views"  # env prefix MISSION_VIEWS_*, PG table mission_views_tracking
APPLICATION_NAME = MissionLedger.name  # the tracking row's key: the upstream application
SQLITE_VIEWS_FILE = "views.sqlite3"
_SQLITE_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"

#: ``fetch(statement, params)`` → rows as dicts, all on one snapshot (see ``Views.reading``)
Fetch = Callable[[str, Sequence[Any]], list[dict[str, Any]]]


def sqlite_views_path(settings: Settings) -> str:
    return str(settings.data_dir / SQLITE_VIEWS_FILE)


@contextmanager
def store_errors(what: str = "the store (ledger or projection views)") -> Iterator[None]:
    """Operational failures (server gone, file locked) → :class:`Unavailable` (retryable)."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        raise Unavailable(f"{what} is unavailable ({first_line(error)}); retry") from error


class ViewTx(ABC):
    """One write transaction on the views (see the module docstring for the protocol)."""

    ph = "?"

    @abstractmethod
    def table(self, name: str) -> str: ...

    @abstractmethod
    def tracking_table(self) -> str: ...

    @abstractmethod
    def to_db(self, column: str, value: Any) -> Any: ...

    @abstractmethod
    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    @abstractmethod
    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> int: ...

    @abstractmethod
    def _lock_tracking_row(self) -> int | None: ...

    @abstractmethod
    def _record_tracking(self, tracking: Tracking) -> None: ...

    @abstractmethod
    def _use_schema(self) -> None: ...

    @abstractmethod
    def backend(self) -> str: ...

    def tracked_position(self) -> int:
        """The recorded position, read under the write lock (held until commit)."""
        return self._lock_tracking_row() or 0

    def expect_position(self, expected: int) -> None:
        current = self.tracked_position()
        if current != expected:
            raise AnotherWorkerActive(
                f"the projection views moved from position {expected} to {current} under this "
                "worker: another projection worker (or a rebuild) is writing them; this one "
                "stopped without writing. Run only one worker per store.",
                expected_position=expected,
                current_position=current,
            )

    def advance(self, position: int) -> None:
        """Record ``position`` through the library (IntegrityError if not beyond the current)."""
        try:
            self._record_tracking(Tracking(APPLICATION_NAME, position))
        except IntegrityError as error:
            raise AnotherWorkerActive(
                f"position {position} was already recorded in the views' tracking table: "
                "another projection worker applied it; this worker's transaction was rolled "
                "back. Run only one worker per store.",
                position=position,
            ) from error

    def reset_tracking(self) -> None:
        delete = f"DELETE FROM {self.tracking_table()} WHERE application_name = {self.ph}"  # noqa: S608
        self.execute(delete, [APPLICATION_NAME])
        self.seed_tracking()

    def seed_tracking(self) -> None:
        self.execute(
            f"INSERT INTO {self.tracking_table()} (application_name, notification_id) "  # noqa: S608
            f"VALUES ({self.ph}, 0) ON CONFLICT (application_name) DO NOTHING",
            [APPLICATION_NAME],
        )

    def create(self, projections: Sequence[str], *, drop: bool) -> None:
        """Apply the projections' DDL files (after dropping their tables, with ``drop``)."""
        self._use_schema()
        for projection in projections:
            if drop:
                for table in PROJECTION_TABLES[projection]:
                    self.execute(f"DROP TABLE IF EXISTS {self.table(table)}")
            for statement in ddl_statements(projection, self.backend()):
                self.execute(statement)

    def write(self, page: PageFold, tables: Collection[str]) -> None:
        """Insert the page's new rows and edges, and patch the rows it changed."""
        ph = self.ph
        for table in tables:
            qualified = self.table(table)
            if table == "delegation_graph":
                rows = [tuple(self.to_db(c, e[c]) for c in EDGE_COLUMNS) for e in page.edges]
                marks = ", ".join([ph] * len(EDGE_COLUMNS))
                self._insert(
                    f"INSERT INTO {qualified} ({', '.join(EDGE_COLUMNS)}) VALUES ({marks})",  # noqa: S608
                    rows,
                    table,
                )
                continue
            columns = TABLE_COLUMNS[table]
            rows = [tuple(self.to_db(c, r[c]) for c in columns) for r in page.created.values()]
            marks = ", ".join([ph] * len(columns))
            self._insert(
                f"INSERT INTO {qualified} ({', '.join(columns)}) VALUES ({marks})",  # noqa: S608
                rows,
                table,
            )
            groups: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for key, patch in page.patches.items():
                names = tuple(c for c in columns if c in patch and c != "mission_id")
                values = tuple(self.to_db(c, patch[c]) for c in names)
                groups.setdefault(names, []).append((*values, key))
            for names, group in groups.items():
                assignments = ", ".join(f"{c} = {ph}" for c in names)
                changed = self.executemany(
                    f"UPDATE {qualified} SET {assignments} WHERE mission_id = {ph}",  # noqa: S608
                    group,
                )
                if changed != len(group):
                    raise ProjectionMismatch(
                        f"the view table {table} lacks {len(group) - changed} of the Missions "
                        "this page changes: the views do not match the ledger; rebuild them "
                        "(mission-ledger rebuild)",
                        table=table,
                    )

    def _insert(self, statement: str, rows: list[tuple[Any, ...]], table: str) -> None:
        if not rows:
            return
        try:
            self.executemany(statement, rows)
        except IntegrityError as error:
            raise ProjectionMismatch(
                f"the view table {table} already holds a row this page inserts: the views do "
                "not match their tracking position; rebuild them (mission-ledger rebuild)",
                table=table,
            ) from error


class Views(ABC):
    """The views of one store (a tracking recorder plus reads)."""

    ph = "?"
    factory: BaseInfrastructureFactory[Any]

    @abstractmethod
    def backend(self) -> str: ...

    @abstractmethod
    def writing(self) -> Any:
        """A context manager yielding a :class:`ViewTx` (committed on success)."""

    @abstractmethod
    def reading(self) -> Any:
        """A context manager yielding a :data:`Fetch` whose statements share one snapshot."""

    @abstractmethod
    def table(self, name: str) -> str: ...

    @abstractmethod
    def tracking_table(self) -> str: ...

    @abstractmethod
    def to_db(self, column: str, value: Any) -> Any: ...

    @abstractmethod
    def _create_tracking_table(self) -> None: ...

    @abstractmethod
    def _max_tracking(self) -> int | None: ...

    @abstractmethod
    def existing_tables(self) -> set[str]:
        """Which of the view tables exist."""

    def ensure_tables(self) -> None:
        """Create the tracking table, the view tables (idempotent DDL) and the tracking row.

        Only what is missing is written, so opening a store never takes locks that a running
        worker's transaction could wait on."""
        self._create_tracking_table()
        existing = self.existing_tables()
        missing = [
            name for name, tables in PROJECTION_TABLES.items() if not set(tables) <= existing
        ]
        if missing or self._max_tracking() is None:
            with self.writing() as tx:
                tx.create(missing, drop=False)
                tx.seed_tracking()

    def position(self) -> int:
        return self._max_tracking() or 0

    def close(self) -> None:
        self.factory.close()


def time_text(value: Any) -> str | None:
    """A stored timestamp (SQLite fixed-width text or PostgreSQL datetime) → RFC 3339."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.strptime(value, _SQLITE_TIME).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return format_rfc3339(value)


# -- SQLite ---------------------------------------------------------------------------------------


def _sqlite_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime(_SQLITE_TIME)


class _SQLiteTx(ViewTx):
    def __init__(self, recorder: SQLiteViews, cursor: SQLiteCursor) -> None:
        self.recorder = recorder
        self.cursor = cursor

    def backend(self) -> str:
        return "sqlite"

    def table(self, name: str) -> str:
        return name

    def tracking_table(self) -> str:
        return "tracking"

    def to_db(self, column: str, value: Any) -> Any:
        return self.recorder.to_db(column, value)

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.cursor.execute(statement, params)
        return [dict(row) for row in self.cursor.fetchall()]

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> int:
        with _sqlite_errors():
            self.cursor.executemany(statement, rows)
        return int(self.cursor.sqlite_cursor.rowcount)

    def _lock_tracking_row(self) -> int | None:
        rows = self.execute(
            "SELECT notification_id FROM tracking WHERE application_name = ?", [APPLICATION_NAME]
        )
        return int(rows[0]["notification_id"]) if rows else None

    def _record_tracking(self, tracking: Tracking) -> None:
        self.recorder._insert_tracking(self.cursor, tracking)

    def _use_schema(self) -> None:
        pass


@contextmanager
def _sqlite_errors() -> Iterator[None]:
    """sqlite3's exceptions → the library's (as its own transactions map them)."""
    try:
        yield
    except sqlite3.IntegrityError as error:
        raise IntegrityError(error) from error
    except sqlite3.OperationalError as error:
        raise OperationalError(error) from error
    except sqlite3.InterfaceError as error:
        raise InterfaceError(error) from error
    except sqlite3.ProgrammingError as error:
        raise ProgrammingError(error) from error
    except sqlite3.DatabaseError as error:
        raise DatabaseError(error) from error
    except sqlite3.Error as error:
        raise PersistenceError(error) from error


@contextmanager
def immediate_transaction(datastore: SQLiteDatastore) -> Iterator[SQLiteCursor]:
    """A SQLite write transaction begun with ``BEGIN IMMEDIATE`` (the database's write lock
    taken before anything is read), committed when the block ends, rolled back if it raises;
    failures to begin or commit raise as :func:`_sqlite_errors` maps them."""
    with datastore.get_connection(commit=True) as conn:
        cursor: SQLiteCursor = conn.cursor()
        try:
            with _sqlite_errors():
                cursor.execute("BEGIN IMMEDIATE")
            try:
                yield cursor
                with _sqlite_errors():
                    conn.commit()
            except BaseException:
                with suppress(sqlite3.Error):
                    conn.rollback()
                raise
        finally:
            cursor.sqlite_cursor.close()


class SQLiteViews(SQLiteTrackingRecorder, Views):
    """The views in ``<data_dir>/views.sqlite3`` (library table ``tracking`` + the view tables)."""

    def backend(self) -> str:
        return "sqlite"

    def table(self, name: str) -> str:
        return name

    def tracking_table(self) -> str:
        return "tracking"  # the library's fixed name on SQLite

    def to_db(self, column: str, value: Any) -> Any:
        if column in TIME_COLUMNS and isinstance(value, datetime):
            return _sqlite_time(value)
        return value

    def _create_tracking_table(self) -> None:
        SQLiteTrackingRecorder.create_table(self)

    def existing_tables(self) -> set[str]:
        with self.reading() as fetch:
            rows = fetch("SELECT name FROM sqlite_master WHERE type = 'table'", [])
        return {row["name"] for row in rows}

    def _max_tracking(self) -> int | None:
        value = self.max_tracking_id(APPLICATION_NAME)
        return None if value is None else int(value)

    @contextmanager
    def writing(self) -> Iterator[ViewTx]:
        # BEGIN IMMEDIATE takes the write lock before the tracking row is read, so the
        # compare-and-set cannot interleave with another writer (a deferred BEGIN could).
        with immediate_transaction(self.datastore) as cursor, _sqlite_errors():
            yield _SQLiteTx(self, cursor)

    @contextmanager
    def reading(self) -> Iterator[Fetch]:
        with self.datastore.transaction(commit=False) as cursor:

            def fetch(statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
                cursor.execute(statement, params)
                return [dict(row) for row in cursor.fetchall()]

            yield fetch


# -- PostgreSQL -----------------------------------------------------------------------------------


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class _PostgresTx(ViewTx):
    ph = "%s"

    def __init__(self, recorder: PostgresViews, cursor: Any) -> None:
        self.recorder = recorder
        self.cursor = cursor

    def backend(self) -> str:
        return "postgres"

    def table(self, name: str) -> str:
        return self.recorder.table(name)

    def tracking_table(self) -> str:
        return self.recorder.tracking_table()

    def to_db(self, column: str, value: Any) -> Any:
        return value

    def execute(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        self.cursor.execute(statement, params or None)
        if self.cursor.description is None:
            return []
        return [dict(row) for row in self.cursor.fetchall()]

    def executemany(self, statement: str, rows: list[tuple[Any, ...]]) -> int:
        try:
            self.cursor.executemany(statement, rows)
        except psycopg.IntegrityError as error:  # the library maps it only at the end
            raise IntegrityError(str(error)) from error
        return int(self.cursor.rowcount)

    def _lock_tracking_row(self) -> int | None:
        rows = self.execute(
            f"SELECT notification_id FROM {self.tracking_table()} "  # noqa: S608
            "WHERE application_name = %s FOR UPDATE",
            [APPLICATION_NAME],
        )
        return int(rows[0]["notification_id"]) if rows else None

    def _record_tracking(self, tracking: Tracking) -> None:
        self.recorder._insert_tracking(self.cursor, tracking)

    def _use_schema(self) -> None:
        self.cursor.execute(f"SET LOCAL search_path TO {_quote(self.recorder.datastore.schema)}")


class PostgresViews(PostgresTrackingRecorder, Views):
    """The views in the configured schema (``mission_views_tracking`` + the view tables)."""

    ph = "%s"

    def backend(self) -> str:
        return "postgres"

    def table(self, name: str) -> str:
        return f"{_quote(self.datastore.schema)}.{_quote(name)}"

    def tracking_table(self) -> str:
        return self.table(self.tracking_table_name)

    def to_db(self, column: str, value: Any) -> Any:
        return value

    def _create_tracking_table(self) -> None:
        PostgresTrackingRecorder.create_table(self)

    def existing_tables(self) -> set[str]:
        with self.reading() as fetch:
            rows = fetch(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                [self.datastore.schema],
            )
        return {row["table_name"] for row in rows}

    def _max_tracking(self) -> int | None:
        value = self.max_tracking_id(APPLICATION_NAME)
        return None if value is None else int(value)

    @contextmanager
    def writing(self) -> Iterator[ViewTx]:
        with self.datastore.transaction(commit=True) as cursor:
            yield _PostgresTx(self, cursor)

    @contextmanager
    def reading(self) -> Iterator[Fetch]:
        with self.datastore.transaction(commit=False) as cursor:
            # one snapshot for every statement of this read (rows and position agree)
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")

            def fetch(statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
                cursor.execute(statement, params or None)
                return [dict(row) for row in cursor.fetchall()]

            yield fetch


# -- opening --------------------------------------------------------------------------------------


def tracking_env(settings: Settings, *, name: str, sqlite_path: str, pool_size: int) -> Environment:
    """The library environment of a tracked store named ``name``: the ledger's, with its own
    pool on PostgreSQL, and redirected to ``sqlite_path`` for SQLite and the in-memory ledger
    (whose views and outbox still need a file: see README)."""
    env = dict(settings.eventsourcing_env())
    prefix = name.upper() + "_"
    env[prefix + "CREATE_TABLE"] = "n"  # ensure_tables() creates them (DDL from the files)
    if settings.backend() == "postgres":
        env[prefix + "POSTGRES_POOL_SIZE"] = str(pool_size)
        env[prefix + "POSTGRES_MAX_OVERFLOW"] = str(pool_size)
    else:
        env[prefix + "PERSISTENCE_MODULE"] = "eventsourcing.sqlite"
        env[prefix + "SQLITE_DBNAME"] = sqlite_path
        env.setdefault(prefix + "SQLITE_LOCK_TIMEOUT", env.get("SQLITE_LOCK_TIMEOUT", "30"))
    return Environment(name=name, env=env)


def views_env(settings: Settings, *, pool_size: int) -> Environment:
    """The library environment of the views."""
    return tracking_env(
        settings,
        name=PROJECTION_NAME,
        sqlite_path=sqlite_views_path(settings),
        pool_size=pool_size,
    )


def open_tracking_store(
    settings: Settings,
    env: Environment,
    *,
    postgres_class: type[PostgresTrackingRecorder],
    sqlite_class: type[SQLiteTrackingRecorder],
    what: str,
    where: str | None = None,
) -> Any:
    """Construct a tracking recorder (a subclass of the library's PostgreSQL or SQLite one,
    with ``factory`` and ``ensure_tables()``) for ``settings`` and make sure its tables exist.
    ``what`` names the store in "cannot open …"; ``where`` in outage messages.

    Table creation is serialised across processes by the schema lock; two processes creating
    the same PostgreSQL tables at once can still collide in the catalog (a unique violation on
    pg_type), and the second attempt then finds them."""
    from ..bootstrap import prepare_storage, schema_lock  # bootstrap imports the ledger: lazy

    prepare_storage(settings)  # the data directory, or the PostgreSQL schema
    if settings.backend() == "memory":
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise Unavailable(f"cannot create the data directory {settings.data_dir}") from error
    with store_errors() if where is None else store_errors(where):
        factory: BaseInfrastructureFactory[Any]
        store: Any
        try:
            if settings.backend() == "postgres":
                factory = PostgresFactory(env)
                store = factory.tracking_recorder(postgres_class)
            else:
                factory = SQLiteFactory(env)
                store = factory.tracking_recorder(sqlite_class)
        except OSError as error:  # the library reports unusable settings as OSError
            raise Unavailable(f"cannot open {what} ({error})") from error
        store.factory = factory
        try:
            with schema_lock(settings):
                try:
                    store.ensure_tables()
                except IntegrityError:
                    store.ensure_tables()
        except BaseException:
            factory.close()
            raise
    return store


def open_views(settings: Settings, *, pool_size: int = 2) -> Views:
    """Construct the views recorder for ``settings`` and make sure its tables exist."""
    views: Views = open_tracking_store(
        settings,
        views_env(settings, pool_size=pool_size),
        postgres_class=PostgresViews,
        sqlite_class=SQLiteViews,
        what="the projection store",
    )
    return views
