"""Opening one fresh PostgreSQL store from several processes at the same instant.

Without :func:`mission_ledger.bootstrap.schema_lock` this fails most of the time: the processes
collide in PostgreSQL's catalog while the library creates the schema, types, tables and insert
function (``duplicate key value violates unique constraint "pg_type_typname_nsp_index"``,
``relation … already exists``, ``tuple concurrently updated``). The processes are real ones,
released together from a file barrier after their imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from eventsourcing.persistence import InternalError
from psycopg import sql

from mission_ledger import bootstrap
from mission_ledger.bootstrap import (
    is_ddl_race,
    open_ledger,
    schema_lock,
    schema_lock_key,
)
from mission_ledger.config import Settings
from mission_ledger.errors import Unavailable
from mission_ledger.ledger import MissionLedger
from mission_ledger.projections.runner import advisory_lock_key

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
BARRIER_TIMEOUT = 60.0

# One process: import everything, report ready, wait for "go", then open the store (the ledger,
# then the projection views) and run one command; print the proposal id as JSON.
CHILD = r"""
import json, sys, time
from pathlib import Path
from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.projections import ProjectionStore
from tests.integration.contract_fixtures import propose

url, barrier, name = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
(barrier / f"ready-{name}").touch()
deadline = time.monotonic() + 60
while not (barrier / "go").exists():
    if time.monotonic() > deadline:
        sys.exit("no go signal")
    time.sleep(0.001)
settings = Settings(database_url=url)
ledger = open_ledger(settings)
try:
    store = ProjectionStore.open(settings)
    store.close()
    proposal_id = propose(ledger, goal=f"race {name}")
finally:
    ledger.close()
print(json.dumps({"proposal_id": proposal_id}))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_LEDGER_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


@pytest.fixture
def fresh_schema(postgres_url: str) -> Iterator[tuple[str, str]]:
    """A schema name nobody created yet (the processes race to create it), and the ledger URL
    for it; dropped afterwards."""
    schema = f"race_{uuid.uuid4().hex[:12]}"
    parts = urlsplit(postgres_url)
    try:
        yield schema, f"postgresql://{parts.netloc}{parts.path}?schema={schema}"
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _release_together(processes: list[subprocess.Popen[str]], barrier: Path) -> None:
    deadline = time.monotonic() + BARRIER_TIMEOUT
    while len(list(barrier.glob("ready-*"))) < len(processes):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            for process in processes:
                process.kill()
            outputs = [process.communicate() for process in processes]
            raise AssertionError(f"the processes did not all get ready: {outputs}")
        time.sleep(0.005)
    (barrier / "go").touch()


@pytest.mark.postgres
def test_processes_opening_one_fresh_store_at_once_all_succeed(
    fresh_schema: tuple[str, str], tmp_path: Path
) -> None:
    _, url = fresh_schema
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, url, str(tmp_path), str(index)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=_env(),
        )
        for index in range(PROCESSES)
    ]
    _release_together(processes, tmp_path)
    results: list[dict[str, Any]] = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "Traceback" not in err, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    ledger = open_ledger(Settings(database_url=url))
    try:
        stored = {proposal.proposal_id for proposal in ledger.list_proposals()}
    finally:
        ledger.close()
    assert {r["proposal_id"] for r in results} == stored
    assert len(stored) == PROCESSES


@pytest.mark.postgres
def test_the_schema_lock_serialises_and_is_reentrant(
    fresh_schema: tuple[str, str],
) -> None:
    schema, url = fresh_schema
    settings = Settings(database_url=url)
    entered = threading.Event()
    inside: list[float] = []

    def other() -> None:
        with schema_lock(settings):
            inside.append(time.monotonic())

    with schema_lock(settings):
        with schema_lock(settings):  # the same thread again: no self-deadlock
            entered.set()
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        assert inside == []  # the other thread waits for this one
        released = time.monotonic()
    thread.join(timeout=10)
    assert len(inside) == 1
    assert inside[0] >= released

    assert entered.is_set()
    with settings.postgres_target().connect(autocommit=True) as conn:  # nothing left behind
        free = conn.execute("SELECT pg_try_advisory_lock(%s)", [schema_lock_key(schema)])
        assert free.fetchone() == (True,)


@pytest.mark.postgres
def test_a_schema_lock_held_too_long_is_unavailable(fresh_schema: tuple[str, str]) -> None:
    schema, url = fresh_schema
    settings = Settings(database_url=url)
    with settings.postgres_target().connect(autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [schema_lock_key(schema)])
        started = time.monotonic()
        with pytest.raises(Unavailable, match="schema lock"), schema_lock(settings, timeout=0.2):
            pass
        assert time.monotonic() - started < 5


def test_schema_lock_keys_are_stable_and_distinct() -> None:
    assert schema_lock_key("public") == schema_lock_key("public")
    assert schema_lock_key("public") != schema_lock_key("other")
    assert schema_lock_key("public") != advisory_lock_key("public")  # not the worker's lock
    assert -(2**63) <= schema_lock_key("public") < 2**63


def test_schema_lock_is_a_no_op_without_postgres(tmp_path: Path) -> None:
    with schema_lock(Settings(data_dir=tmp_path)), schema_lock(Settings(database_url="memory:")):
        pass


def test_a_ddl_race_is_retried_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = MissionLedger
    failures = [InternalError("tuple concurrently updated")]
    attempts: list[int] = []

    def flaky(settings: Settings, **kwargs: Any) -> Any:
        attempts.append(1)
        if failures:
            raise failures.pop()
        return real(settings, **kwargs)

    monkeypatch.setattr(bootstrap, "MissionLedger", flaky)
    ledger = open_ledger(Settings(data_dir=tmp_path))
    ledger.close()
    assert len(attempts) == 2

    attempts.clear()
    failures[:] = [InternalError("tuple concurrently updated")] * 2
    with pytest.raises(Unavailable, match="tuple concurrently updated"):
        open_ledger(Settings(data_dir=tmp_path))
    assert len(attempts) == 2  # once, not forever

    attempts.clear()
    failures[:] = [InternalError("something else broke")]
    with pytest.raises(Unavailable, match="something else"):
        open_ledger(Settings(data_dir=tmp_path))
    assert len(attempts) == 1  # not a race: no retry


def test_what_counts_as_a_ddl_race() -> None:
    assert is_ddl_race(InternalError("tuple concurrently updated"))
    assert is_ddl_race(
        psycopg.errors.UniqueViolation(
            'duplicate key value violates unique constraint "pg_type_typname_nsp_index"'
        )
    )
    assert is_ddl_race(psycopg.errors.DuplicateTable('relation "x" already exists'))
    assert not is_ddl_race(InternalError("out of shared memory"))
    assert not is_ddl_race(psycopg.errors.UniqueViolation('duplicate key "stored_events_pkey"'))
    assert not is_ddl_race(ValueError("already exists"))
