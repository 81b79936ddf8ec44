"""The composition root: build a ready-to-use ledger from one Settings object.

**Opening one PostgreSQL store from several processes at once.** The library creates its tables,
composite types and insert function when an application is constructed, and PostgreSQL's DDL is
not safe to race: two sessions creating the same schema, type or table (even ``IF NOT EXISTS``)
or replacing the same function collide in the catalog (``duplicate key value violates unique
constraint "pg_type_typname_nsp_index"``, ``relation … already exists``, ``tuple concurrently
updated``). :func:`schema_lock` serialises that work across processes: a session-level
``pg_advisory_lock`` on a key derived from the schema name, held on its own connection while the
tables are created (the ledger here, the projection views in
:func:`mission_ledger.projections.views.open_views`). As a second line, :func:`open_ledger`
retries construction once when it still fails with such a catalog collision (e.g. against a
process of an older version that does not take the lock).
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
from eventsourcing.persistence import IntegrityError, InternalError, ProgrammingError
from psycopg import sql

from .clock import Clock
from .config import Settings
from .errors import MissionLedgerError, Unavailable, first_line
from .ledger import MissionLedger

__all__ = [
    "SCHEMA_LOCK_TIMEOUT",
    "is_ddl_race",
    "open_ledger",
    "prepare_storage",
    "schema_lock",
    "schema_lock_key",
]

log = logging.getLogger(__name__)

SCHEMA_LOCK_TIMEOUT = 60.0  # seconds to wait for another process to finish creating the tables
_held = threading.local()  # the schema lock keys this thread holds (the lock is re-entrant)


def schema_lock_key(schema: str) -> int:
    """The signed 64-bit advisory lock key that serialises DDL in ``schema``.

    Stable across processes and versions (SHA-256 of a fixed prefix and the schema name);
    distinct from the projection worker's key (:func:`..projections.runner.advisory_lock_key`).
    Advisory locks are per database, so the schema name is all the key needs.
    """
    digest = hashlib.sha256(f"mission_ledger/schema-ddl/{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def schema_lock(settings: Settings, *, timeout: float = SCHEMA_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the store's schema lock while creating tables (PostgreSQL; a no-op otherwise).

    Takes ``pg_advisory_lock(schema_lock_key(schema))`` on a separate autocommit connection and
    releases it (``pg_advisory_unlock``, then closes the connection) when the block ends. The
    lock is re-entrant within a thread, so nested openings do not wait on themselves. Waiting
    longer than ``timeout`` seconds, or not reaching the server, is :class:`Unavailable`.
    """
    if settings.backend() != "postgres":
        yield
        return
    target = settings.postgres_target()
    key = schema_lock_key(target.schema)
    held: set[int] = _held.__dict__.setdefault("keys", set())
    if key in held:
        yield
        return
    try:
        conn = target.connect(autocommit=True)
    except psycopg.Error as error:
        raise Unavailable(
            f"cannot reach PostgreSQL at {target.where} ({first_line(error)}); check --database-url"
        ) from None
    try:
        try:
            conn.execute(
                sql.SQL("SET lock_timeout = {}").format(sql.Literal(f"{int(timeout * 1000)}ms"))
            )
            conn.execute("SELECT pg_advisory_lock(%s)", [key])
        except psycopg.errors.LockNotAvailable:
            raise Unavailable(
                f"another process has been creating the tables of schema {target.schema!r} on "
                f"{target.where} for over {timeout:g} s (it holds the schema lock); retry"
            ) from None
        except psycopg.Error as error:
            raise Unavailable(
                f"cannot take the schema lock on {target.where} ({first_line(error)})"
            ) from None
        held.add(key)
        try:
            yield
        finally:
            held.discard(key)
            with suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", [key])
    finally:
        conn.close()  # ends the session: the lock is released even if the unlock failed


def prepare_storage(settings: Settings) -> None:
    """Create what the store needs and the library does not: the data dir, the PG schema."""
    backend = settings.backend()
    if backend == "sqlite":
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise Unavailable(
                f"cannot create the data directory {settings.data_dir}: {error.strerror}; "
                "choose another with --data DIR"
            ) from None
    elif backend == "postgres":
        target = settings.postgres_target()
        with schema_lock(settings):  # CREATE SCHEMA IF NOT EXISTS races like any other DDL
            try:
                with target.connect(autocommit=True) as conn:
                    conn.execute(
                        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                            sql.Identifier(target.schema)
                        )
                    )
            except psycopg.Error as error:
                raise Unavailable(
                    f"cannot reach PostgreSQL at {target.where} ({first_line(error)}); "
                    "check --database-url"
                ) from None


def is_ddl_race(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL's answer to two sessions creating the same objects."""
    text = str(error)
    if isinstance(error, InternalError | psycopg.InternalError):
        return "tuple concurrently updated" in text
    if isinstance(error, IntegrityError | psycopg.IntegrityError):
        return "pg_type_typname_nsp_index" in text or "pg_namespace_nspname_index" in text
    if isinstance(error, ProgrammingError | psycopg.ProgrammingError):
        return "already exists" in text
    return False


def _construct(settings: Settings, clock: Clock | None) -> MissionLedger:
    try:
        return MissionLedger(settings, clock=clock)
    except MissionLedgerError:
        raise
    except Exception as error:
        if not is_ddl_race(error):
            raise
        log.warning("opening the event store raced another process (%s); retrying once", error)
        return MissionLedger(settings, clock=clock)


def open_ledger(settings: Settings, *, clock: Clock | None = None) -> MissionLedger:
    """Prepare storage and construct the ledger application, both under :func:`schema_lock`
    (construction is retried once on a DDL race: see the module docstring)."""
    try:
        with schema_lock(settings):
            prepare_storage(settings)  # re-enters the lock this thread holds
            return _construct(settings, clock)
    except MissionLedgerError:
        raise
    except Exception as error:  # the library reports connection problems in many shapes
        raise Unavailable(
            f"cannot open the event store ({type(error).__name__}: {error})"
        ) from error
