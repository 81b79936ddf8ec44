"""What callers see when the event store fails underneath the ledger."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.errors import Unavailable
from mission_ledger.ledger import MissionLedger
from tests.pgtarget import PgTarget

ROOT = Path(__file__).resolve().parents[2]


def _proposal() -> dict[str, object]:
    document: dict[str, object] = json.loads((ROOT / "examples" / "proposal.json").read_text())
    return document


def _mission(ledger: MissionLedger) -> str:
    pid = ledger.propose(_proposal(), actor="agent:invoice-bot").document["proposal_id"]
    mission_id: str = ledger.approve(pid, actor="bob").document["mission_id"]
    return mission_id


def test_a_locked_sqlite_store_is_unavailable_and_nothing_is_written(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, extra_env={"SQLITE_LOCK_TIMEOUT": "1"})
    ledger = open_ledger(settings)
    try:
        mission = _mission(ledger)
        before = ledger.get_mission(mission).version
        blocker = sqlite3.connect(settings.sqlite_path(), isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(Unavailable) as caught:
                ledger.suspend(mission, actor="op", reason="check")
            assert caught.value.code == "unavailable"
            assert caught.value.exit_code == 1
            assert caught.value.http_status == 503
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert ledger.get_mission(mission).version == before
        assert ledger.suspend(mission, actor="op", reason="check").changed
    finally:
        ledger.close()


def test_commands_recover_after_postgres_drops_every_connection(
    postgres_schema_url: PgTarget,
) -> None:
    # Connections are not pinged before use (a round trip per command); after the server drops
    # them, the library's retries discard the dead ones and the next command goes through.
    ledger = open_ledger(Settings(database_url=postgres_schema_url.ledger_url))
    try:
        missions = [_mission(ledger) for _ in range(3)]
        errors: list[BaseException] = []

        def suspend(mission_id: str) -> None:
            try:
                ledger.suspend(mission_id, actor="op")
            except BaseException as error:  # collected and asserted below
                errors.append(error)

        threads = [threading.Thread(target=suspend, args=(m,)) for m in missions]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        with psycopg.connect(postgres_schema_url.url, autocommit=True) as admin:
            dropped = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        assert dropped is not None
        assert dropped[0] >= 1
        for mission_id in missions:
            result = ledger.resume(mission_id, actor="op")
            assert result.changed
            assert result.document["state"] == "active"
    finally:
        ledger.close()
