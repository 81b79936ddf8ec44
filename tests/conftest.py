"""Shared database plumbing for the whole suite: nothing but PostgreSQL fixtures.

``scripts/test`` provisions the server and exports ``MISSION_LEDGER_TEST_DATABASE_URL``. Without
it PostgreSQL tests are skipped, unless ``MISSION_LEDGER_REQUIRE_POSTGRES`` is set (CI), where
they fail instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from tests.pgtarget import PgTarget


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the test database, or skip (fail when PostgreSQL is required)."""
    url = os.environ.get("MISSION_LEDGER_TEST_DATABASE_URL")
    if url:
        return url
    if os.environ.get("MISSION_LEDGER_REQUIRE_POSTGRES"):
        pytest.fail(
            "MISSION_LEDGER_REQUIRE_POSTGRES is set but MISSION_LEDGER_TEST_DATABASE_URL is not: "
            "this run must exercise PostgreSQL. Run the suite through scripts/test, which "
            "provisions a server, or export MISSION_LEDGER_TEST_DATABASE_URL.",
            pytrace=False,
        )
    pytest.skip("PostgreSQL not configured: MISSION_LEDGER_TEST_DATABASE_URL is unset")


def _with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query.append(("options", f"-c search_path={schema}"))
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@pytest.fixture
def postgres_schema_url(postgres_url: str) -> Iterator[PgTarget]:
    """A fresh, uniquely named schema for one test, dropped (CASCADE) afterwards."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield PgTarget(url=_with_search_path(postgres_url, schema), schema=schema)
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
