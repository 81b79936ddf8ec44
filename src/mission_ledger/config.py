"""One typed settings object, read from flags and environment; no import-time side effects.

Storage is chosen by ``database_url``:

- unset (the default): embedded SQLite files in ``data_dir`` (``./var``);
- ``postgresql://user:password@host:port/dbname[?schema=NAME]``: PostgreSQL (the optional
  ``schema`` query parameter selects a schema, created if missing);
- ``memory:``: an in-memory store that lives as long as the process (tests, experiments).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg

from .domain.errors import InvalidInput

DEFAULT_ISSUER = "http://127.0.0.1:8080"
DEFAULT_DATA_DIR = Path("var")
ENV_DATABASE_URL = "MISSION_LEDGER_DATABASE_URL"
ENV_DATA_DIR = "MISSION_LEDGER_DATA"
ENV_ISSUER = "MISSION_LEDGER_ISSUER"
ENV_ACTOR = "MISSION_LEDGER_ACTOR"


@dataclass(frozen=True)
class PostgresTarget:
    host: str
    port: int
    dbname: str
    user: str
    password: str
    schema: str

    @property
    def where(self) -> str:
        """``host:port/dbname``, for messages (never the password)."""
        return f"{self.host}:{self.port}/{self.dbname}"

    def connect(self, **options: Any) -> psycopg.Connection[Any]:
        """A direct connection (outside the library's pool), e.g. for DDL or audits."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            dbname=self.dbname,
            user=self.user,
            password=self.password or None,
            connect_timeout=10,
            **options,
        )


@dataclass(frozen=True)
class Settings:
    """Everything the ledger needs to know about its deployment."""

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    issuer: str = DEFAULT_ISSUER
    actor: str = "operator"
    group_commit: bool = True
    snapshot_interval: int = 100
    postgres_pool_size: int = 4
    extra_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``MISSION_LEDGER_*`` variables, then explicit overrides (flags)."""
        env = os.environ if environ is None else environ
        base = cls(
            data_dir=Path(env.get(ENV_DATA_DIR, str(DEFAULT_DATA_DIR))),
            database_url=env.get(ENV_DATABASE_URL) or None,
            issuer=env.get(ENV_ISSUER, DEFAULT_ISSUER),
            actor=env.get(ENV_ACTOR, "operator"),
        )
        given = {k: v for k, v in overrides.items() if v is not None}
        settings = replace(base, **given)  # type: ignore[arg-type]
        settings.validate()
        return settings

    def validate(self) -> None:
        if not self.issuer.startswith(("https://", "http://")):
            raise InvalidInput(
                f"issuer must be an http(s) URL, got {self.issuer!r}", field="issuer"
            )
        if not self.actor.strip():
            raise InvalidInput("actor must not be empty", field="actor")
        if self.database_url is not None:
            self.backend()  # raises on a malformed URL

    def backend(self) -> str:
        """``sqlite``, ``postgres`` or ``memory``."""
        url = self.database_url
        if url is None:
            return "sqlite"
        if url == "memory:":
            return "memory"
        if url.startswith(("postgresql://", "postgres://")):
            return "postgres"
        raise InvalidInput(
            "database URL must start with postgresql:// (or be 'memory:'); "
            f"got {url.split(':', 1)[0]}:…",
            field="database_url",
        )

    def postgres_target(self) -> PostgresTarget:
        assert self.database_url is not None
        parts = urlsplit(self.database_url)
        query = parse_qs(parts.query)
        dbname = unquote(parts.path.lstrip("/"))
        if not dbname:
            raise InvalidInput(
                "the database URL must name a database, e.g. postgresql://postgres@127.0.0.1/ml",
                field="database_url",
            )
        return PostgresTarget(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            dbname=dbname,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password or ""),
            schema=query.get("schema", ["public"])[0],
        )

    def sqlite_path(self) -> Path:
        return self.data_dir / "ledger.sqlite3"

    def audit_dir(self) -> Path:
        """Where checkpoints and their signing key live: outside the event store."""
        return self.data_dir / "audit"

    def eventsourcing_env(self) -> dict[str, str]:
        """The environment for the ``eventsourcing`` Application (persistence settings)."""
        backend = self.backend()
        env: dict[str, str] = {"IS_SNAPSHOTTING_ENABLED": "y"}
        if backend == "memory":
            env["PERSISTENCE_MODULE"] = "eventsourcing.popo"
        elif backend == "sqlite":
            env.update(
                PERSISTENCE_MODULE="eventsourcing.sqlite",
                SQLITE_DBNAME=str(self.sqlite_path()),
                SQLITE_LOCK_TIMEOUT="30",
            )
        else:
            target = self.postgres_target()
            env.update(
                PERSISTENCE_MODULE="eventsourcing.postgres",
                POSTGRES_HOST=target.host,
                POSTGRES_PORT=str(target.port),
                POSTGRES_DBNAME=target.dbname,
                POSTGRES_USER=target.user,
                POSTGRES_PASSWORD=target.password,
                POSTGRES_SCHEMA=target.schema,
                POSTGRES_POOL_SIZE=str(self.postgres_pool_size),
                POSTGRES_MAX_OVERFLOW=str(self.postgres_pool_size),
                POSTGRES_LOCK_TIMEOUT="5",
                POSTGRES_CONNECT_TIMEOUT="10",
                POSTGRES_PRE_PING="n",
                # Never enable POSTGRES_ENABLE_DB_FUNCTIONS: on eventsourcing 9.5.6 it skips the
                # table lock (readers miss events) and shares one insert function per schema.
                POSTGRES_ENABLE_DB_FUNCTIONS="n",
            )
        env.update(self.extra_env)
        return env
