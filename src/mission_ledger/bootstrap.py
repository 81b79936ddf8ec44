"""The composition root: build a ready-to-use ledger from one Settings object."""

from __future__ import annotations

import psycopg
from psycopg import sql

from .clock import Clock
from .config import Settings
from .errors import MissionLedgerError, Unavailable, first_line
from .ledger import MissionLedger


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
        try:
            with target.connect(autocommit=True) as conn:
                conn.execute(
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(target.schema))
                )
        except psycopg.Error as error:
            raise Unavailable(
                f"cannot reach PostgreSQL at {target.where} ({first_line(error)}); "
                "check --database-url"
            ) from None


def open_ledger(settings: Settings, *, clock: Clock | None = None) -> MissionLedger:
    """Prepare storage and construct the ledger application."""
    prepare_storage(settings)
    try:
        return MissionLedger(settings, clock=clock)
    except MissionLedgerError:
        raise
    except Exception as error:  # the library reports connection problems in many shapes
        raise Unavailable(
            f"cannot open the event store ({type(error).__name__}: {error})"
        ) from error
