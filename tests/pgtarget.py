"""Where a PostgreSQL-backed test should put its tables (see ``postgres_schema_url``)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class PgTarget:
    """A throwaway schema in the test database.

    ``url`` is a ``postgresql://`` URL whose ``options`` set ``search_path`` to ``schema``, so a
    plain connection lands there; ``schema`` is the bare name, for code that takes it separately
    (e.g. eventsourcing's ``POSTGRES_SCHEMA``).
    """

    url: str
    schema: str

    @property
    def ledger_url(self) -> str:
        """The ledger's own URL form (``--database-url``): the same database plus ``?schema=``."""
        parts = urlsplit(self.url)
        return f"postgresql://{parts.netloc}{parts.path}?schema={self.schema}"
