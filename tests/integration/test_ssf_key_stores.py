"""The SET signing-key stores that outlive a process, held to one contract: files and PostgreSQL.

Two store instances on one backing stand for two processes (a server and an operator's
``mission-ledger keys rotate``). The PostgreSQL store is also raced from two threads with their
own connections, from two real processes, and across a held advisory lock; it is made
unreachable (``Unavailable``, no password in the message) and has its connection dropped by the
server under it.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from psycopg import sql
from psycopg.types.json import Jsonb

from mission_ledger.config import Settings
from mission_ledger.errors import Conflict, InvalidInput, KeyStoreError, NotFound, Unavailable
from mission_ledger.ssf.keys import (
    PG_TABLE,
    FileKeyStore,
    KeyStore,
    MemoryKeyStore,
    PostgresKeyStore,
    jwk_thumbprint,
    key_store_location,
    open_key_store,
    signing_keys_lock_key,
)
from mission_ledger.ssf.rfc8417_set import InvalidSetKey, build_set_claims, sign_set, verify_set
from tests.pgtarget import PgTarget

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}
ROOT = Path(__file__).resolve().parents[2]
ISS = "https://as.example.com"
AUD = "https://erp.example.com"
WAIT = 60.0  # seconds a bounded wait may take before the test fails (not a timing assertion)


class Ticks:
    """A clock that moves one minute per reading: creation order is visible in ``created_at``."""

    def __init__(self) -> None:
        self.at = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            self.at += timedelta(minutes=1)
            return self.at


@dataclass
class Backend:
    """One key storage, opened as often as a test needs (each instance = another process)."""

    kind: str
    directory: Path | None = None
    pg: PgTarget | None = None
    opened: list[KeyStore] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        assert self.pg is not None
        return Settings(database_url=self.pg.ledger_url)

    def open(self, now: Callable[[], datetime] | None = None) -> KeyStore:
        store: KeyStore
        if self.kind == "file":
            assert self.directory is not None
            store = FileKeyStore(self.directory, rsa_bits=2048, now=now)
        else:
            store = PostgresKeyStore(self.settings, rsa_bits=2048, now=now)
        self.opened.append(store)
        return store

    @property
    def records_rotation(self) -> bool:
        """Whether ``rotated_at`` is kept (PostgreSQL; the file index format predates it)."""
        return self.kind == "postgres"

    def sql(self, query: sql.Composable, params: list[Any] | None = None) -> list[Any]:
        assert self.pg is not None
        with psycopg.connect(self.pg.url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def private_key_stored(self, kid: str) -> bool:
        if self.kind == "file":
            assert self.directory is not None
            return (self.directory / f"{kid}.pem").exists()
        rows = self.sql(
            sql.SQL("SELECT private_key_pem IS NOT NULL FROM {} WHERE kid = %s").format(
                sql.Identifier(PG_TABLE)
            ),
            [kid],
        )
        return bool(rows[0][0])

    def damage_private_key(self, kid: str) -> None:
        """Garble the stored PEM (as a bad disk or a bad hand would)."""
        if self.kind == "file":
            assert self.directory is not None
            pem = self.directory / f"{kid}.pem"
            pem.write_text(pem.read_text().replace("A", "B", 5))
            return
        self.sql(
            sql.SQL("UPDATE {} SET private_key_pem = replace(private_key_pem, 'A', 'B')").format(
                sql.Identifier(PG_TABLE)
            )
        )


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        opened = Backend("file", directory=tmp_path / "ssf-keys")
    else:
        opened = Backend("postgres", pg=request.getfixturevalue("postgres_schema_url"))
    try:
        yield opened
    finally:
        for store in opened.opened:
            store.close()


@pytest.fixture
def pg(postgres_schema_url: PgTarget) -> Iterator[Backend]:
    opened = Backend("postgres", pg=postgres_schema_url)
    try:
        yield opened
    finally:
        for store in opened.opened:
            store.close()


def kids(store: KeyStore) -> set[str]:
    return {k["kid"] for k in store.jwks()["keys"]}


def states(store: KeyStore) -> dict[str, str]:
    return {r["kid"]: r["status"] for r in store.list()}


def active_per_alg(store: KeyStore) -> list[tuple[str, str]]:
    return sorted((r["alg"], r["kid"]) for r in store.list() if r["status"] == "active")


def claims() -> dict[str, Any]:
    return build_set_claims(
        iss=ISS,
        aud=AUD,
        event_type="https://schemas.openid.net/secevent/ssf/event-type/verification",
        event={},
        sub_id={"format": "opaque", "id": "stream-1"},
        txn="t-1",
    )


# -- the contract ---------------------------------------------------------------------------------


def test_ensure_keys_makes_one_active_key_per_algorithm_shared_by_every_instance(
    backend: Backend,
) -> None:
    first = backend.open()
    first.ensure_keys()
    first.ensure_keys()
    second = backend.open()
    second.ensure_keys()  # another process finds them: nothing new
    rows = second.list()
    assert sorted((r["alg"], r["status"]) for r in rows) == [
        ("ES256", "active"),
        ("RS256", "active"),
    ]
    for alg in ("RS256", "ES256"):
        assert second.active(alg).kid == first.active(alg).kid
        assert second.active(alg).public_jwk() == first.active(alg).public_jwk()
    assert second.jwks() == first.jwks()
    rs, es = first.active("RS256").private_key, first.active("ES256").private_key
    assert isinstance(rs, rsa.RSAPrivateKey)
    assert rs.key_size == 2048
    assert isinstance(es, ec.EllipticCurvePrivateKey)
    assert es.curve.name == "secp256r1"


def test_active_creates_one_key_on_first_use_and_refuses_unknown_algorithms(
    backend: Backend,
) -> None:
    store = backend.open()
    key = store.active("ES256")
    assert [(r["alg"], r["kid"]) for r in store.list()] == [("ES256", key.kid)]
    assert backend.open().active("ES256").kid == key.kid
    for alg in ("HS256", "none", "RS512"):
        with pytest.raises(InvalidInput, match="unsupported signing algorithm"):
            store.active(alg)
        with pytest.raises(InvalidInput):
            store.rotate(alg)


def test_jwks_has_public_members_only_and_rfc7638_kids(backend: Backend) -> None:
    store = backend.open()
    store.ensure_keys()
    by_alg = {k["alg"]: k for k in store.jwks()["keys"]}
    assert set(by_alg["RS256"]) == {"kty", "kid", "alg", "use", "n", "e"}
    assert set(by_alg["ES256"]) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    for jwk in by_alg.values():
        assert jwk["use"] == "sig"
        assert not PRIVATE_MEMBERS & set(jwk)
        public = {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}
        assert jwk["kid"] == jwk_thumbprint(public)


def test_rotate_keeps_the_old_key_published_as_retiring_and_others_see_it_at_once(
    backend: Backend,
) -> None:
    server, operator = backend.open(), backend.open()
    server.ensure_keys()
    old = server.active("RS256")
    es256 = server.active("ES256").kid
    token = sign_set(claims(), old)

    new = operator.rotate("RS256")  # `mission-ledger keys rotate --alg RS256`
    assert new.kid != old.kid
    assert server.active("RS256").kid == new.kid  # the running server signs with the new key
    assert server.active("ES256").kid == es256  # the other algorithm is untouched
    assert {old.kid, new.kid, es256} == kids(server)
    assert states(server) == {old.kid: "retiring", new.kid: "active", es256: "active"}
    # A SET signed before the rotation still verifies against what is published.
    assert verify_set(token, server.jwks(), issuer=ISS, audience=AUD)

    rows = {r["kid"]: r for r in server.list()}
    assert rows[new.kid]["rotated_at"] is None
    assert rows[es256]["rotated_at"] is None
    if backend.records_rotation:
        assert rows[old.kid]["rotated_at"] is not None
        assert rows[old.kid]["rotated_at"] >= rows[old.kid]["created_at"]


def test_retire_unpublishes_the_key_and_deletes_its_private_key(backend: Backend) -> None:
    server, outbox = backend.open(), backend.open()
    old = server.active("ES256")
    token = sign_set(claims(), old)
    new = server.rotate("ES256")
    assert backend.private_key_stored(old.kid)

    outbox.retire(old.kid)  # the outbox, once no queued SET signed with it remains
    assert old.kid not in kids(server)
    assert new.kid in kids(server)
    assert states(server)[old.kid] == "retired"
    assert not backend.private_key_stored(old.kid)
    assert backend.private_key_stored(new.kid)
    with pytest.raises(InvalidSetKey):
        verify_set(token, server.jwks(), issuer=ISS, audience=AUD)
    outbox.retire(old.kid)  # idempotent
    assert states(backend.open())[old.kid] == "retired"


def test_retire_refuses_active_and_unknown_keys(backend: Backend) -> None:
    store = backend.open()
    key = store.active("ES256")
    with pytest.raises(Conflict, match="rotate ES256 first"):
        store.retire(key.kid)
    with pytest.raises(NotFound):
        store.retire("no-such-kid")
    assert states(store) == {key.kid: "active"}


def test_list_is_oldest_first_with_state_and_times(backend: Backend) -> None:
    store = backend.open(now=Ticks())
    made = [store.active("RS256"), store.active("ES256"), store.rotate("RS256")]
    third = store.rotate("RS256")
    store.retire(made[0].kid)
    rows = store.list()
    assert [r["kid"] for r in rows] == [*(k.kid for k in made), third.kid]
    assert [r["status"] for r in rows] == ["retired", "active", "retiring", "active"]
    assert [r["alg"] for r in rows] == ["RS256", "ES256", "RS256", "RS256"]
    for row in rows:
        assert set(row) >= {"kid", "alg", "status", "created_at", "rotated_at"}
        assert datetime.fromisoformat(row["created_at"]).tzinfo is not None
    assert rows == sorted(rows, key=lambda r: r["created_at"])
    assert rows == backend.open().list()


def test_two_threads_ensuring_keys_at_once_end_with_one_active_key_per_algorithm(
    backend: Backend,
) -> None:
    # PostgreSQL: two instances, two connections (as two processes would be). The file store
    # coordinates the threads of one instance (its lock); across processes it does not (see
    # FileKeyStore), which is why PostgreSQL deployments keep their keys in the database.
    shared = backend.open()
    stores = [backend.open(), backend.open()] if backend.kind == "postgres" else [shared, shared]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []
    seen: list[tuple[str, str]] = []

    def ensure(store: KeyStore) -> None:
        try:
            barrier.wait(timeout=WAIT)
            store.ensure_keys()
            seen.extend((alg, store.active(alg).kid) for alg in ("RS256", "ES256"))
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=ensure, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    rows = shared.list()
    assert len(rows) == 2  # no extra key was made and thrown away into the store
    assert active_per_alg(shared) == sorted(set(seen))


def test_private_keys_stay_out_of_reprs_lists_and_jwks(backend: Backend) -> None:
    store = backend.open()
    store.ensure_keys()
    for alg in ("RS256", "ES256"):
        key = store.active(alg)
        if isinstance(key.private_key, rsa.RSAPrivateKey):
            secret = str(key.private_key.private_numbers().d)
        else:
            assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
            secret = str(key.private_key.private_numbers().private_value)
        text = " ".join(
            [repr(store), str(store), repr(key), str(key), repr(store.list()), repr(store.jwks())]
        )
        assert secret not in text
        assert "PRIVATE KEY" not in text
        assert "private_key=" not in text
        assert key.kid in repr(key)


def test_a_damaged_private_key_is_a_key_store_error_that_quotes_no_key_material(
    backend: Backend,
) -> None:
    kid = backend.open().active("ES256").kid
    backend.damage_private_key(kid)
    with pytest.raises(KeyStoreError) as caught:
        backend.open().active("ES256")  # a fresh instance: nothing cached
    message = str(caught.value)
    assert kid in message
    assert "BEGIN" not in message
    assert "PRIVATE" not in message
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


# -- PostgreSQL only ------------------------------------------------------------------------------


def _waiting_for_lock(pg: Backend, key: int) -> int:
    rows = pg.sql(
        sql.SQL(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
            "AND classid = %s AND objid = %s AND objsubid = 1"
        ),
        [(key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF],
    )
    return int(rows[0][0])


@pytest.mark.postgres
def test_ensure_keys_racing_behind_the_lock_creates_each_key_once(pg: Backend) -> None:
    assert pg.pg is not None
    key = signing_keys_lock_key(pg.pg.schema)
    stores = [pg.open(), pg.open()]
    stores[0].list()  # creates the table, so both racers go straight to the lock
    errors: list[BaseException] = []
    made: list[str] = []

    def ensure(store: KeyStore) -> None:
        try:
            store.ensure_keys()
            made.append(store.active("RS256").kid)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    with psycopg.connect(pg.pg.url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        threads = [threading.Thread(target=ensure, args=(s,)) for s in stores]
        for thread in threads:
            thread.start()
        # Both have found no key and generated their own; both now wait for the lock.
        deadline = time.monotonic() + WAIT
        while _waiting_for_lock(pg, key) < 2:
            assert time.monotonic() < deadline, "the two stores never both waited for the lock"
            assert all(t.is_alive() for t in threads), errors
            time.sleep(0.02)
        holder.execute("SELECT pg_advisory_unlock(%s)", [key])
    for thread in threads:
        thread.join()
    assert not errors
    assert len(made) == 2
    assert len(set(made)) == 1  # the loser adopted the winner's key
    assert len(stores[0].list()) == 2
    assert [alg for alg, _ in active_per_alg(stores[0])] == ["ES256", "RS256"]


@pytest.mark.postgres
def test_two_processes_ensuring_keys_at_once_agree_on_the_keys(pg: Backend) -> None:
    code = (
        "import sys\n"
        "from mission_ledger.config import Settings\n"
        "from mission_ledger.ssf.keys import PostgresKeyStore\n"
        "store = PostgresKeyStore(Settings(database_url=sys.argv[1]), rsa_bits=2048)\n"
        "store.ensure_keys()\n"
        "print(store.active('RS256').kid, store.active('ES256').kid)\n"
        "store.close()\n"
    )
    assert pg.pg is not None
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", code, pg.pg.ledger_url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(2)
    ]
    outputs = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        outputs.append(out.split())
    assert outputs[0] == outputs[1]
    store = pg.open()
    assert len(store.list()) == 2
    assert active_per_alg(store) == sorted(zip(("RS256", "ES256"), outputs[0], strict=True))


@pytest.mark.postgres
def test_one_active_key_per_algorithm_is_a_database_invariant(pg: Backend) -> None:
    store = pg.open()
    store.ensure_keys()
    with pytest.raises(psycopg.errors.UniqueViolation):
        pg.sql(
            sql.SQL(
                "INSERT INTO {} (kid, alg, state, created_at, public_jwk, private_key_pem) "
                "SELECT 'x', alg, 'active', now(), public_jwk, private_key_pem FROM {} LIMIT 1"
            ).format(sql.Identifier(PG_TABLE), sql.Identifier(PG_TABLE))
        )


@pytest.mark.postgres
def test_a_tampered_row_never_publishes_private_members_or_a_foreign_key(pg: Backend) -> None:
    store = pg.open()
    key = store.active("ES256")
    table = sql.Identifier(PG_TABLE)
    pg.sql(sql.SQL('UPDATE {} SET public_jwk = public_jwk || \'{{"d": "secret"}}\'').format(table))
    (published,) = store.jwks()["keys"]
    assert "d" not in published
    assert published == key.public_jwk()

    other = MemoryKeyStore().active("ES256")
    foreign = {k: v for k, v in other.public_jwk().items() if k not in ("kid", "alg", "use")}
    pg.sql(sql.SQL("UPDATE {} SET public_jwk = %s").format(table), [Jsonb(foreign)])
    with pytest.raises(KeyStoreError, match="has another kid"):
        store.jwks()


@pytest.mark.postgres
def test_a_private_key_stored_under_another_kid_is_refused(pg: Backend) -> None:
    first = pg.open()
    es = first.active("ES256")
    rs_pem_of_es = sql.SQL(
        "UPDATE {t} SET private_key_pem = (SELECT private_key_pem FROM {t} WHERE alg = 'RS256') "
        "WHERE kid = %s"
    ).format(t=sql.Identifier(PG_TABLE))
    first.active("RS256")
    pg.sql(rs_pem_of_es, [es.kid])
    with pytest.raises(KeyStoreError, match="has another kid"):
        pg.open().active("ES256")


@pytest.mark.postgres
def test_an_unreachable_database_is_unavailable_naming_the_server_not_the_password() -> None:
    settings = Settings(
        database_url="postgresql://ledger:hunter2-secret@127.0.0.1:1/nowhere?schema=keys"
    )
    store = open_key_store(settings)  # opens nothing yet
    assert isinstance(store, PostgresKeyStore)
    assert "hunter2" not in repr(store)
    calls: list[Callable[[], object]] = [
        store.ensure_keys,
        lambda: store.active("RS256"),
        lambda: store.rotate("ES256"),
        lambda: store.retire("some-kid"),
        store.jwks,
        store.list,
    ]
    for call in calls:
        with pytest.raises(Unavailable) as caught:
            call()
        assert "127.0.0.1:1/nowhere" in caught.value.description
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in repr(caught.value.to_dict())
        assert caught.value.exit_code == 1
        assert caught.value.http_status == 503
        assert caught.value.__cause__ is None
    store.close()


@pytest.mark.postgres
def test_the_store_recovers_when_the_server_drops_its_connection(pg: Backend) -> None:
    store = pg.open()
    store.ensure_keys()
    before = store.jwks()

    def drop() -> None:
        conn = store._slot.conn  # type: ignore[attr-defined]  # the store's one connection
        pid = conn.info.backend_pid
        pg.sql(sql.SQL("SELECT pg_terminate_backend(%s)"), [pid])
        deadline = time.monotonic() + WAIT  # until the backend is really gone
        while pg.sql(sql.SQL("SELECT 1 FROM pg_stat_activity WHERE pid = %s"), [pid]):
            assert time.monotonic() < deadline, "the terminated backend did not go away"
            time.sleep(0.02)

    drop()
    assert store.jwks() == before  # reads retry once on a fresh connection
    drop()
    old = store.active("ES256").kid
    drop()
    new = store.rotate("ES256")  # checks the connection before its one-shot transaction
    assert states(store)[old] == "retiring"
    assert states(store)[new.kid] == "active"
    drop()
    store.retire(old)
    assert old not in kids(store)


@pytest.mark.postgres
def test_constructing_the_store_needs_a_postgres_url(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"postgresql://"):
        PostgresKeyStore(Settings(data_dir=tmp_path))


# -- choosing the store ---------------------------------------------------------------------------


def test_open_key_store_follows_the_backend(tmp_path: Path) -> None:
    memory = Settings(database_url="memory:")
    assert isinstance(open_key_store(memory), MemoryKeyStore)
    assert key_store_location(memory) == "memory (this process only)"

    sqlite = Settings(data_dir=tmp_path / "var")
    files = open_key_store(sqlite, rsa_bits=2048)
    assert isinstance(files, FileKeyStore)
    assert repr(files) == f"FileKeyStore({str(tmp_path / 'var' / 'ssf-keys')!r})"
    assert key_store_location(sqlite) == str(tmp_path / "var" / "ssf-keys")
    files.ensure_keys()
    assert len(list((tmp_path / "var" / "ssf-keys").glob("*.pem"))) == 2

    postgres = Settings(database_url="postgresql://ml:pw@db.example:6543/ledger?schema=auth")
    store = open_key_store(postgres)
    assert isinstance(store, PostgresKeyStore)
    assert key_store_location(postgres) == (
        "PostgreSQL db.example:6543/ledger, table auth.ssf_signing_keys"
    )
    assert "pw" not in key_store_location(postgres)


@pytest.mark.postgres
def test_open_key_store_on_postgres_shares_keys_through_the_database(pg: Backend) -> None:
    first = open_key_store(pg.settings, rsa_bits=2048)
    second = open_key_store(pg.settings, rsa_bits=2048)
    pg.opened.extend([first, second])
    first.ensure_keys()
    assert second.jwks() == first.jwks()
    assert len(pg.sql(sql.SQL("SELECT kid FROM {}").format(sql.Identifier(PG_TABLE)))) == 2
