"""``mission-ledger keys list|rotate`` on SQLite and PostgreSQL, and what a running server makes
of a rotation: two servers on one PostgreSQL store publish the same keys, before and after."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mission_ledger.config import Settings
from mission_ledger.ssf.keys import FileKeyStore, KeyStore, PostgresKeyStore, key_store_location
from tests.e2e.conftest import start_server
from tests.integration.test_cli import Cli
from tests.pgtarget import PgTarget


@dataclass
class Store:
    """A store for the CLI, and a key store on it standing for a running server."""

    name: str
    cli: Cli
    location: str
    server_keys: KeyStore


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Store]:
    keys: KeyStore
    if request.param == "sqlite":
        data = tmp_path / "data"
        cli = Cli(capsys, ["--data", str(data)], tmp_path)
        keys = FileKeyStore(data / "ssf-keys")
        opened = Store("sqlite", cli, str(data / "ssf-keys"), keys)
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        cli = Cli(capsys, ["--database-url", target.ledger_url], tmp_path)
        settings = Settings(database_url=target.ledger_url)
        keys = PostgresKeyStore(settings)
        opened = Store("postgres", cli, key_store_location(settings), keys)
        assert opened.location.endswith(f", table {target.schema}.ssf_signing_keys")
    try:
        yield opened
    finally:
        opened.server_keys.close()


def test_keys_list_before_any_key_exists_says_how_keys_come_about(store: Store) -> None:
    run = store.cli("keys", "list")
    assert run.code == 0, run.err
    assert "no signing keys yet" in run.out
    assert "keys rotate" in run.out
    assert f"keys in: {store.location}" in run.out
    assert store.cli.ok("keys", "list") == {"location": store.location, "keys": []}


def test_rotate_without_alg_rotates_both_and_the_old_keys_stay_published(store: Store) -> None:
    first = store.cli.ok("keys", "rotate")
    assert [(r["alg"], r["previous_kid"]) for r in first["rotated"]] == [
        ("RS256", None),
        ("ES256", None),
    ]
    initial = {r["alg"]: r["kid"] for r in first["rotated"]}
    # A running server (another process on the same store) signs with them at once.
    assert {alg: store.server_keys.active(alg).kid for alg in initial} == initial

    second = store.cli.ok("keys", "rotate")
    for entry in second["rotated"]:
        assert entry["previous_kid"] == initial[entry["alg"]]
        assert entry["previous_state"] == "retiring"
        assert store.server_keys.active(entry["alg"]).kid == entry["kid"]
    published = {k["kid"] for k in store.server_keys.jwks()["keys"]}
    assert published == set(initial.values()) | {e["kid"] for e in second["rotated"]}
    rows = store.cli.ok("keys", "list")["keys"]
    assert {r["kid"]: r["state"] for r in rows} == {
        **dict.fromkeys(initial.values(), "retiring"),
        **{e["kid"]: "active" for e in second["rotated"]},
    }
    assert all(set(r) == {"kid", "alg", "state", "created_at", "rotated_at"} for r in rows)


def test_rotate_one_algorithm_prints_the_new_kid_and_the_fate_of_the_old_one(
    store: Store,
) -> None:
    store.server_keys.ensure_keys()  # the server's first start
    old = {alg: store.server_keys.active(alg).kid for alg in ("RS256", "ES256")}
    run = store.cli("keys", "rotate", "--alg", "ES256")
    assert run.code == 0, run.err
    new = store.server_keys.active("ES256").kid
    assert new != old["ES256"]
    assert store.server_keys.active("RS256").kid == old["RS256"]
    assert f"ES256: new active key {new}" in run.out
    assert f"previous key {old['ES256']} is now retiring" in run.out
    assert "/jwks.json" in run.out
    assert "outbox retires it" in run.out
    assert "RS256" not in run.out

    listed = store.cli("keys", "list")
    assert listed.code == 0, listed.err
    table, footer = listed.out.split("\n\n")
    header, *lines = table.splitlines()
    assert header.split() == ["KID", "ALG", "STATE", "CREATED_AT", "ROTATED_AT"]
    by_kid = {line.split()[0]: line.split() for line in lines}
    assert set(by_kid) == {old["RS256"], old["ES256"], new}
    assert footer.startswith("keys in: ")
    assert by_kid[old["ES256"]][1:3] == ["ES256", "retiring"]
    assert by_kid[new][1:3] == ["ES256", "active"]
    assert by_kid[old["RS256"]][1:3] == ["RS256", "active"]
    rows = {r["kid"]: r for r in store.cli.ok("keys", "list")["keys"]}
    if store.name == "postgres":  # the file index does not record rotation times
        assert rows[old["ES256"]]["rotated_at"] is not None
        assert len(by_kid[old["ES256"]]) == 5  # the ROTATED_AT column is filled in
    assert rows[new]["rotated_at"] is None


def test_keys_output_never_contains_private_keys(store: Store) -> None:
    for argv in (("keys", "rotate"), ("keys", "list"), ("keys", "rotate", "--alg", "RS256")):
        for json_flag in ((), ("--json",)):
            run = store.cli(*argv, *json_flag)
            assert run.code == 0, run.err
            assert "PRIVATE" not in run.out + run.err
            assert '"d"' not in run.out


def test_keys_refuse_a_memory_store_and_unknown_algorithms(store: Store) -> None:
    memory = store.cli("--database-url", "memory:", "keys", "list", storage=False)
    assert memory.code == 2
    assert "live and die with the server process" in memory.err
    bad = store.cli("keys", "rotate", "--alg", "HS256")
    assert bad.code == 2
    assert "invalid choice" in bad.err
    missing = store.cli("keys")
    assert missing.code == 2


def test_keys_on_an_unreachable_database_exit_1_without_the_password(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(capsys, [], tmp_path)
    url = "postgresql://ml:hunter2-secret@127.0.0.1:1/ledger"
    for argv in (("keys", "list"), ("keys", "rotate")):
        run = cli("--database-url", url, *argv)
        assert run.code == 1
        assert "127.0.0.1:1/ledger" in run.err
        assert "hunter2" not in run.out + run.err


def test_keys_help_teaches_kids_storage_and_rotation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cli = Cli(capsys, [], tmp_path)
    top = cli("--help")
    assert top.code == 0
    assert "keys" in top.out
    for argv in (("keys", "--help"), ("keys", "rotate", "--help"), ("keys", "list", "--help")):
        run = cli(*argv)
        assert run.code == 0
        text = " ".join(run.out.split())
        assert "RFC 7638 thumbprint" in text
        assert "DIR/ssf-keys" in text
        assert "ssf_signing_keys" in text
        assert "retiring until no queued SET signed with it remains" in text
    rotate = " ".join(cli("keys", "rotate", "--help").out.split())
    assert "default: both" in rotate


def _jwks(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url}/jwks.json", timeout=30) as reply:  # noqa: S310
        document: dict[str, Any] = json.load(reply)
    return document


@pytest.mark.postgres
def test_two_servers_on_one_postgres_store_publish_the_same_keys_through_a_rotation(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_schema_url: PgTarget
) -> None:
    storage = ["--database-url", postgres_schema_url.ledger_url]
    first = start_server(tmp_path / "a", storage)
    try:
        second = start_server(tmp_path / "b", storage, "--no-worker")
        try:
            before = _jwks(first.url)
            assert sorted(k["alg"] for k in before["keys"]) == ["ES256", "RS256"]
            assert _jwks(second.url) == before  # one set of keys, whichever host answers

            cli = Cli(capsys, storage, tmp_path)
            rotated = cli.ok("keys", "rotate", "--alg", "RS256")["rotated"][0]
            after = [_jwks(first.url), _jwks(second.url)]
            assert after[0] == after[1]
            published = {k["kid"] for k in after[0]["keys"]}
            assert published == {k["kid"] for k in before["keys"]} | {rotated["kid"]}
            assert rotated["previous_kid"] in published  # retiring, still published
        finally:
            assert second.stop() == 0, second.logs()
    finally:
        assert first.stop() == 0, first.logs()
