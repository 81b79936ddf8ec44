"""The server publishes its SET signing keys at the jwks_uri its configuration names."""

from __future__ import annotations

from pathlib import Path

from joserfc import jwt
from joserfc.jwk import KeySet

from mission_ledger.ssf.keys import FileKeyStore
from mission_ledger.ssf.rfc8417_set import build_set_claims, sign_set
from tests.e2e.conftest import Server
from tests.e2e.test_http_api import Client, run


def test_jwks_is_public_and_verifies_sets_signed_with_the_stores_keys(
    sqlite_server: Server,
) -> None:
    async def scenario(c: Client) -> None:
        reply = await c.get("/jwks.json")
        document = reply.ok()
        assert reply.headers["Content-Type"].startswith("application/json")
        keys = document["keys"]
        assert sorted(k["alg"] for k in keys) == ["ES256", "RS256"]
        for key in keys:
            assert key["use"] == "sig"
            assert key["kid"]
            assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys()  # public members only
        configuration = (await c.get("/agentpass/configuration")).ok()
        assert configuration["jwks_uri"].endswith("/jwks.json")

        # A SET signed with the server's active key verifies against what it publishes.
        data = Path(sqlite_server.storage[1])
        store = FileKeyStore(data / "ssf-keys")
        claims = build_set_claims(
            iss="https://issuer.example",
            aud="https://erp.example.com",
            event_type="https://schemas.mission-ledger.dev/secevent/mission/event-type/mission-revoked",
            event={"mission_id": "m"},
            sub_id={"format": "opaque", "id": "m"},
            txn="t",
        )
        for alg in ("RS256", "ES256"):
            token = sign_set(claims, store.active(alg))
            verified = jwt.decode(token, KeySet.import_key_set(document), algorithms=[alg])
            assert verified.header["typ"] == "secevent+jwt"
            assert verified.claims["txn"] == "t"

    run(sqlite_server, scenario)
