"""Principals and bearer tokens on SQLite and PostgreSQL, through the registry and the CLI.

Two ledger instances on one store stand for two processes (an HTTP server and an operator's
``mission-ledger tokens`` command): what one writes, the other's cache must notice — a
revocation within about a second.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pytest

from mission_ledger import audit
from mission_ledger.bootstrap import open_ledger
from mission_ledger.cli import main
from mission_ledger.config import Settings
from mission_ledger.domain.errors import Conflict, NotFound
from mission_ledger.ledger import MissionLedger
from mission_ledger.principals import Principal, PrincipalRegistry
from tests.pgtarget import PgTarget

ERP = "https://erp.example.com"


@dataclass
class Store:
    """One store, opened as many times as a test needs (each open = another process)."""

    name: str
    settings: Settings
    cli_args: list[str]
    opened: list[MissionLedger]

    def open(self) -> MissionLedger:
        ledger = open_ledger(self.settings)
        self.opened.append(ledger)
        return ledger


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        data = tmp_path / "data"
        opened = Store("sqlite", Settings(data_dir=data), ["--data", str(data)], [])
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        opened = Store(
            "postgres",
            Settings(database_url=target.ledger_url),
            ["--database-url", target.ledger_url],
            [],
        )
    try:
        yield opened
    finally:
        for ledger in opened.opened:
            ledger.close()


@pytest.fixture
def registry(store: Store) -> PrincipalRegistry:
    return PrincipalRegistry(store.open())


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@pytest.fixture
def cli(store: Store, capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    def run(*argv: str) -> Run:
        capsys.readouterr()
        code = main([*store.cli_args, *argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def eventually(check: Callable[[], bool], *, within: float) -> float:
    """Poll ``check`` until it holds; returns the seconds it took (fails after ``within``)."""
    start = time.monotonic()
    while not check():
        elapsed = time.monotonic() - start
        assert elapsed < within, f"not true within {within} s"
        time.sleep(0.02)
    return time.monotonic() - start


# -- the registry ---------------------------------------------------------------------------------


def test_create_list_get_revoke(registry: PrincipalRegistry) -> None:
    operator, _ = registry.create(role="operator", name="olga", actor="operator:root")
    approver, _ = registry.create(role="approver", name="bob@example.com", actor=operator.actor)
    harness, _ = registry.create(
        role="harness", name="invoice-bot", agent="agent:invoice-bot", actor=operator.actor
    )
    receiver, _ = registry.create(
        role="receiver",
        name="erp",
        audience=ERP,
        resources=[f"{ERP}/invoices/", f"{ERP}/payments/*"],
        actor=operator.actor,
    )
    assert harness.agent == "agent:invoice-bot"
    assert receiver.resources == (f"{ERP}/invoices/", f"{ERP}/payments/*")
    assert [p.name for p in registry.list()] == ["olga", "bob@example.com", "invoice-bot", "erp"]
    assert registry.get(receiver.principal_id) == receiver

    revoked = registry.revoke(approver.principal_id, actor=operator.actor)
    assert revoked.revoked
    assert registry.revoke(approver.principal_id, actor=operator.actor) == revoked
    assert [p.name for p in registry.list()] == ["olga", "invoice-bot", "erp"]
    everyone = registry.list(include_revoked=True)
    assert [(p.name, p.revoked) for p in everyone][1] == ("bob@example.com", True)
    with pytest.raises(NotFound):
        registry.get(str(uuid4()))
    with pytest.raises(Conflict):
        registry.create(role="auditor", name="olga", actor=operator.actor)


def test_state_survives_reopening(store: Store) -> None:
    first = PrincipalRegistry(store.open())
    created, token = first.create(role="auditor", name="audit", actor="operator:root")
    second = PrincipalRegistry(store.open())
    assert second.list() == [created]
    assert second.authenticate(token) == created
    events = second.ledger.history  # principals are not Missions: history refuses them
    with pytest.raises(NotFound):
        events(created.principal_id)


def test_authenticate_ok_wrong_secret_revoked_malformed(registry: PrincipalRegistry) -> None:
    p, token = registry.create(role="harness", name="bot", agent="agent-1", actor="operator:root")
    assert registry.authenticate(token) == p
    assert registry.authenticate(token).actor == "harness:bot"  # type: ignore[union-attr]
    flipped = "A" if token[-1] != "A" else "B"
    assert registry.authenticate(token[:-1] + flipped) is None
    assert registry.authenticate(f"mlt_{uuid4().hex}_{token[37:]}") is None
    for malformed in ("", "mlt_", token[:-1], token + "=", token.replace("mlt_", "mlt-"), "x" * 80):
        assert registry.authenticate(malformed) is None
    registry.revoke(p.principal_id, actor="operator:root")
    assert registry.authenticate(token) is None


def test_a_revocation_by_another_instance_takes_effect_within_a_second(store: Store) -> None:
    server = PrincipalRegistry(store.open())
    admin = PrincipalRegistry(store.open())
    p, token = admin.create(role="approver", name="bob", actor="operator:root")
    # created elsewhere: the server finds it on its first cache miss
    eventually(lambda: server.authenticate(token) == p, within=1.0)
    for _ in range(50):  # the hot path: served from the cache
        assert server.authenticate(token) == p
    admin.revoke(p.principal_id, actor="operator:root")
    took = eventually(lambda: server.authenticate(token) is None, within=1.0)
    assert took < 1.0
    assert server.get(p.principal_id).revoked


def test_the_hot_path_does_not_read_the_store_every_time(
    registry: PrincipalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, token = registry.create(role="auditor", name="audit", actor="operator:root")
    assert registry.authenticate(token) == p
    reads: list[int] = []
    recorder = registry.ledger.recorder
    real = recorder.select_notifications

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(recorder, "select_notifications", counting)
    start = time.monotonic()
    count = 0
    while time.monotonic() - start < 0.2:
        assert registry.authenticate(token) == p
        count += 1
    assert count > 100
    assert len(reads) <= 1  # at most one refresh per REFRESH_INTERVAL (0.5 s)


def test_bootstrap_operator_only_once(store: Store) -> None:
    registry = PrincipalRegistry(store.open())
    assert not registry.has_any()
    token = registry.bootstrap_operator()
    assert token is not None
    operator = registry.authenticate(token)
    assert operator is not None
    assert (operator.role, operator.name) == ("operator", "bootstrap-operator")
    assert registry.has_any()
    assert registry.bootstrap_operator() is None
    assert PrincipalRegistry(store.open()).bootstrap_operator() is None
    registry.revoke(operator.principal_id, actor="operator:root")
    assert registry.bootstrap_operator() is None  # a revoked principal still counts


def test_racing_bootstraps_create_one_operator(store: Store) -> None:
    registries = [PrincipalRegistry(store.open()) for _ in range(4)]
    results: list[str | None] = []
    barrier = threading.Barrier(len(registries))

    def boot(registry: PrincipalRegistry) -> None:
        barrier.wait()
        results.append(registry.bootstrap_operator())

    threads = [threading.Thread(target=boot, args=(r,)) for r in registries]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    tokens = [t for t in results if t is not None]
    assert len(tokens) == 1
    assert [p.name for p in registries[0].list()] == ["bootstrap-operator"]


def test_audit_verifies_with_principal_events(store: Store, tmp_path: Path) -> None:
    ledger = store.open()
    registry = PrincipalRegistry(ledger)
    p, _ = registry.create(role="approver", name="bob", actor="operator:root")
    registry.create(role="receiver", name="erp", audience=ERP, all_missions=True, actor="op")
    registry.revoke(p.principal_id, actor="operator:root")
    audit_dir = tmp_path / "audit"
    report = audit.verify(ledger, audit_dir=audit_dir)
    assert report.ok, report.problems
    assert report.events >= 3
    checkpoint = audit.checkpoint(ledger, audit_dir=audit_dir)
    assert str(UUID(p.principal_id)) in checkpoint["checkpoint"]["streams"]
    assert audit.verify(ledger, audit_dir=audit_dir).ok


# -- the command line -----------------------------------------------------------------------------


def test_cli_create_prints_the_token_alone(cli: Callable[..., Run], store: Store) -> None:
    run = cli("tokens", "create", "--role", "approver", "--name", "bob@example.com")
    assert run.code == 0, run.err
    token = run.out.strip()
    assert run.out == token + "\n"
    assert token.startswith("mlt_")
    assert "shown only this once" in run.err
    found = PrincipalRegistry(store.open()).authenticate(token)
    assert found is not None
    assert (found.role, found.name) == ("approver", "bob@example.com")


def test_cli_create_json_list_revoke(cli: Callable[..., Run], store: Store) -> None:
    run = cli(
        "--json",
        "--actor",
        "operator:olga",
        "tokens",
        "create",
        "--role",
        "receiver",
        "--name",
        "erp",
        "--audience",
        ERP,
        "--resource",
        f"{ERP}/invoices/",
        "--resource",
        f"{ERP}/payments/*",
    )
    assert run.code == 0, run.err
    created = run.json()
    assert created["token"].startswith("mlt_")
    assert created["name"] == "erp"
    assert created["role"] == "receiver"
    assert created["resources"] == [f"{ERP}/invoices/", f"{ERP}/payments/*"]
    assert created["revoked"] is False
    pid = created["principal_id"]
    assert UUID(created["token"][4:36]) == UUID(pid)

    harness = cli(
        "tokens", "create", "--role", "harness", "--name", "bot", "--agent", "agent-1", "--json"
    ).json()

    listed = cli("tokens", "list", "--json")
    assert listed.code == 0
    rows = listed.json()
    assert isinstance(rows, list)
    assert [r["name"] for r in rows] == ["erp", "bot"]
    assert all("token" not in r and "token_hash" not in r for r in rows)
    table = cli("tokens", "list").out
    assert "PRINCIPAL_ID" in table
    assert pid in table
    assert f"{ERP}/invoices/" in table

    revoked = cli("tokens", "revoke", pid, "--reason", "decommissioned", "--json")
    assert revoked.code == 0, revoked.err
    assert revoked.json()["revoked"] is True
    again = cli("tokens", "revoke", pid)
    assert again.code == 0
    assert "revoked" in again.out
    assert [r["name"] for r in cli("tokens", "list", "--json").json()] == ["bot"]
    everyone = cli("tokens", "list", "--all", "--json").json()
    assert [(r["name"], r["revoked"]) for r in everyone] == [("erp", True), ("bot", False)]

    registry = PrincipalRegistry(store.open())
    assert registry.authenticate(created["token"]) is None
    assert registry.authenticate(harness["token"]) is not None
    events = list(registry.ledger.events.get(UUID(pid)))
    assert [e.actor for e in events] == ["operator:olga", "operator"]
    assert events[1].reason == "decommissioned"


def test_cli_errors_and_exit_codes(cli: Callable[..., Run]) -> None:
    missing = cli("tokens", "create", "--role", "receiver", "--name", "erp", "--audience", ERP)
    assert missing.code == 2
    assert "all_missions" in missing.err
    assert missing.out == ""
    bad_role = cli("tokens", "create", "--role", "admin", "--name", "x")
    assert bad_role.code == 2
    assert cli("tokens", "create", "--role", "auditor", "--name", "a").code == 0
    duplicate = cli("tokens", "create", "--role", "auditor", "--name", "a", "--json")
    assert duplicate.code == 4
    assert json.loads(duplicate.err)["error"]["code"] == "conflict"
    assert cli("tokens", "revoke", str(uuid4())).code == 3
    assert cli("tokens", "revoke", "nope").code == 3
    assert cli("tokens").code == 2  # an action is required
    empty = cli("tokens", "list")
    assert empty.code == 0
    assert "a" in empty.out


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("create", "list", "revoke", "--all-missions", "receiver"):
        assert word in text
    assert main(["tokens", "create", "--help"]) == 0
    assert "matched at a path boundary" in capsys.readouterr().out


def test_principal_read_model_is_what_the_cli_shows(cli: Callable[..., Run], store: Store) -> None:
    doc = cli(
        "tokens", "create", "--role", "receiver", "--name", "siem", "--audience",
        "https://siem.example.com", "--all-missions", "--json",
    ).json()  # fmt: skip
    token = doc.pop("token")
    found = PrincipalRegistry(store.open()).authenticate(token)
    assert isinstance(found, Principal)
    assert found.to_dict() == doc
    assert found.all_missions
