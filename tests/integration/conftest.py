"""Integration tests use explicit storage only: no ledger settings leak in from the shell."""

from __future__ import annotations

import pytest

LEDGER_ENV_VARS = (
    "MISSION_LEDGER_DATABASE_URL",
    "MISSION_LEDGER_DATA",
    "MISSION_LEDGER_ISSUER",
    "MISSION_LEDGER_ACTOR",
)


@pytest.fixture(autouse=True)
def _clean_ledger_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in LEDGER_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
