"""The SET signing key stores: lifecycle, persistence, file modes, JWKS shape, RFC 7638 kids."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import KeySet, KeySetSerialization, thumbprint

from mission_ledger.errors import Conflict, InvalidInput, NotFound
from mission_ledger.ssf.keys import (
    FileKeyStore,
    KeyStore,
    KeyStoreError,
    MemoryKeyStore,
    jwk_thumbprint,
)

PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi", "oth", "k"}


def stores(tmp_path: Path) -> list[KeyStore]:
    return [MemoryKeyStore(rsa_bits=2048), FileKeyStore(tmp_path / "ssf-keys", rsa_bits=2048)]


@pytest.fixture(params=["memory", "file"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> KeyStore:
    if request.param == "memory":
        return MemoryKeyStore(rsa_bits=2048)
    return FileKeyStore(tmp_path / "ssf-keys", rsa_bits=2048)


def kids(jwks: dict[str, object]) -> set[str]:
    keys = jwks["keys"]
    assert isinstance(keys, list)
    return {k["kid"] for k in keys}


def test_ensure_keys_makes_one_active_key_per_algorithm(store: KeyStore) -> None:
    store.ensure_keys()
    store.ensure_keys()
    rows = store.list()
    assert sorted((r["alg"], r["status"]) for r in rows) == [
        ("ES256", "active"),
        ("RS256", "active"),
    ]
    rs, es = store.active("RS256"), store.active("ES256")
    assert isinstance(rs.private_key, rsa.RSAPrivateKey)
    assert rs.private_key.key_size == 2048
    assert isinstance(es.private_key, ec.EllipticCurvePrivateKey)
    assert es.private_key.curve.name == "secp256r1"
    assert {rs.kid, es.kid} == {r["kid"] for r in rows}


def test_active_creates_on_first_use_and_refuses_unknown_algorithms(store: KeyStore) -> None:
    key = store.active("ES256")
    assert store.active("ES256").kid == key.kid
    for alg in ("HS256", "none", "RS512"):
        with pytest.raises(InvalidInput, match="unsupported signing algorithm"):
            store.active(alg)


def test_jwks_members_and_no_private_members(store: KeyStore) -> None:
    store.ensure_keys()
    jwks = store.jwks()
    by_alg = {k["alg"]: k for k in jwks["keys"]}
    assert set(by_alg["RS256"]) == {"kty", "kid", "alg", "use", "n", "e"}
    assert set(by_alg["ES256"]) == {"kty", "kid", "alg", "use", "crv", "x", "y"}
    assert by_alg["RS256"]["kty"] == "RSA"
    assert by_alg["ES256"]["crv"] == "P-256"
    for jwk in jwks["keys"]:
        assert jwk["use"] == "sig"
        assert not PRIVATE_MEMBERS & set(jwk)
    # An independent library accepts it as a public key set.
    imported = KeySet.import_key_set(cast("KeySetSerialization", jwks))
    assert all(not key.is_private for key in imported.keys)


def test_kid_is_the_rfc7638_thumbprint(store: KeyStore) -> None:
    store.ensure_keys()
    for jwk in store.jwks()["keys"]:
        public = {k: v for k, v in jwk.items() if k not in ("kid", "alg", "use")}
        assert jwk["kid"] == jwk_thumbprint(public) == thumbprint(public)


def test_rfc7638_section_3_1_example() -> None:
    jwk = {
        "kty": "RSA",
        "n": (
            "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6"
            "tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5"
            "v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD0"
            "8qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU"
            "8awapJzKnqDKgw"
        ),
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29",
    }
    assert jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_rotate_keeps_the_old_key_published_until_retired(store: KeyStore) -> None:
    old = store.active("RS256")
    new = store.rotate("RS256")
    assert new.kid != old.kid
    assert store.active("RS256").kid == new.kid
    assert {old.kid, new.kid} <= kids(store.jwks())
    statuses = {r["kid"]: r["status"] for r in store.list()}
    assert statuses[old.kid] == "retiring"
    assert statuses[new.kid] == "active"

    store.retire(old.kid)
    assert old.kid not in kids(store.jwks())
    assert new.kid in kids(store.jwks())
    assert {r["kid"]: r["status"] for r in store.list()}[old.kid] == "retired"
    store.retire(old.kid)  # idempotent


def test_retire_refuses_active_and_unknown_keys(store: KeyStore) -> None:
    key = store.active("ES256")
    with pytest.raises(Conflict, match="rotate ES256 first"):
        store.retire(key.kid)
    with pytest.raises(NotFound):
        store.retire("no-such-kid")


def test_rsa_keys_need_2048_bits(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="at least 2048"):
        MemoryKeyStore(rsa_bits=1024)
    with pytest.raises(InvalidInput, match="at least 2048"):
        FileKeyStore(tmp_path, rsa_bits=1024)


def test_default_rsa_size_is_2048_and_larger_keys_on_request(tmp_path: Path) -> None:
    key = FileKeyStore(tmp_path / "ssf-keys").active("RS256")
    assert isinstance(key.private_key, rsa.RSAPrivateKey)
    assert key.private_key.key_size == 2048
    larger = FileKeyStore(tmp_path / "larger", rsa_bits=3072).active("RS256")
    assert isinstance(larger.private_key, rsa.RSAPrivateKey)
    assert larger.private_key.key_size == 3072


def test_file_store_persists_across_instances_with_private_files_0600(tmp_path: Path) -> None:
    directory = tmp_path / "ssf-keys"
    first = FileKeyStore(directory, rsa_bits=2048)
    first.ensure_keys()
    rotated_out = first.active("RS256")
    first.rotate("RS256")

    second = FileKeyStore(directory, rsa_bits=2048)
    assert second.jwks() == first.jwks()
    assert second.list() == first.list()
    assert second.active("ES256").kid == first.active("ES256").kid
    assert second.active("RS256").public_jwk() == first.active("RS256").public_jwk()

    pems = sorted(directory.glob("*.pem"))
    assert len(pems) == 3
    for pem in pems:
        assert stat.S_IMODE(pem.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700

    index = json.loads((directory / "index.json").read_text())
    assert set(index["keys"]) == {p.stem for p in pems}
    row = index["keys"][rotated_out.kid]
    assert row["status"] == "retiring"
    assert set(row) == {"alg", "created_at", "status"}
    assert "PRIVATE" not in (directory / "index.json").read_text()

    # Retiring deletes the private key; another instance sees it unpublished.
    second.retire(rotated_out.kid)
    assert not (directory / f"{rotated_out.kid}.pem").exists()
    assert rotated_out.kid not in kids(FileKeyStore(directory).jwks())


def test_private_keys_stay_out_of_repr(tmp_path: Path) -> None:
    for store in stores(tmp_path):
        key = store.active("RS256")
        assert isinstance(key.private_key, rsa.RSAPrivateKey)
        d = str(key.private_key.private_numbers().d)
        text = repr(key) + repr(store)
        assert "private_key=" not in text
        assert d not in text
        assert key.kid in repr(key)


def test_unreadable_key_file_error_names_no_key_material(tmp_path: Path) -> None:
    directory = tmp_path / "ssf-keys"
    kid = FileKeyStore(directory, rsa_bits=2048).active("ES256").kid
    pem = directory / f"{kid}.pem"
    pem.write_text(pem.read_text().replace("A", "B", 5))
    with pytest.raises(KeyStoreError) as caught:
        FileKeyStore(directory).active("ES256")
    assert "BEGIN" not in str(caught.value)
    assert caught.value.__cause__ is None
