"""SETs (RFC 8417 as SSF 1.0 §4 profiles it): claims shape, signing checked with joserfc, and
our own verifier's refusals."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any, cast

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from joserfc import jws
from joserfc.jwk import KeySet, KeySetSerialization

from mission_ledger.ssf.keys import MemoryKeyStore, SigningKey
from mission_ledger.ssf.rfc8417_set import (
    InvalidSetAudience,
    InvalidSetIssuer,
    InvalidSetKey,
    InvalidSetRequest,
    InvalidSetSignature,
    SetVerificationError,
    build_set_claims,
    check_set_claims,
    sign_set,
    verify_set,
)

ISS = "https://transmitter.example.com"
AUD = "receiver.example.com/web"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"

# SSF 1.0 §4.1.8 (digest §3.4). The spec shows `aud` as an array; our profile sends the
# stream's single audience as a string, so the vector is compared with that one change.
SSF_4_1_8 = {
    "jti": "123456",
    "iss": "https://transmitter.example.com",
    "aud": ["receiver.example.com/web", "receiver.example.com/mobile"],
    "iat": 1493856000,
    "txn": "8675309",
    "sub_id": {"format": "opaque", "id": "72e6991badb44e08a69672960053b342"},
    "events": {
        "https://schemas.openid.net/secevent/ssf/event-type/verification": {
            "state": "VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="
        }
    },
}


@pytest.fixture(scope="module")
def store() -> MemoryKeyStore:
    keys = MemoryKeyStore(rsa_bits=2048)
    keys.ensure_keys()
    return keys


def claims_args(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISS,
        "aud": AUD,
        "event_type": VERIFICATION,
        "event": {"state": "abc"},
        "sub_id": {"format": "opaque", "id": "stream-1"},
        "txn": "evt-1",
    }
    base.update(overrides)
    return base


def claims(**overrides: Any) -> dict[str, Any]:
    return build_set_claims(**claims_args(**overrides))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


# --- claims -----------------------------------------------------------------------------------


def test_canonical_example_round_trips() -> None:
    ((event_type, event),) = SSF_4_1_8["events"].items()  # type: ignore[attr-defined]
    built = build_set_claims(
        iss=SSF_4_1_8["iss"],  # type: ignore[arg-type]
        aud=AUD,
        event_type=event_type,
        event=event,
        sub_id=SSF_4_1_8["sub_id"],  # type: ignore[arg-type]
        txn=SSF_4_1_8["txn"],  # type: ignore[arg-type]
        iat=SSF_4_1_8["iat"],  # type: ignore[arg-type]
        jti=SSF_4_1_8["jti"],  # type: ignore[arg-type]
    )
    assert built == {**SSF_4_1_8, "aud": AUD}
    assert json.loads(json.dumps(built)) == built


def test_defaults_unique_jti_and_integer_iat() -> None:
    first, second = claims(), claims()
    assert set(first) == {"iss", "aud", "iat", "jti", "txn", "sub_id", "events"}
    assert first["jti"] != second["jti"]
    assert len(first["jti"]) == 32
    int(first["jti"], 16)
    assert isinstance(first["iat"], int)


def test_profile_violations_are_refused(store: MemoryKeyStore) -> None:
    with pytest.raises(ValueError, match="keyed by its event-type URI"):
        claims(event_type="")
    good = claims()
    for bad, message in [
        ({**good, "sub": "x"}, "must not carry sub"),
        ({**good, "exp": 1}, "must not carry exp"),
        ({**good, "events": {VERIFICATION: {}, "urn:other": {}}}, "exactly one event, got 2"),
        ({**good, "events": {}}, "exactly one event, got 0"),
        ({**good, "aud": ["a", "b"]}, "'aud'"),
        ({k: v for k, v in good.items() if k != "sub_id"}, "sub_id"),
    ]:
        with pytest.raises(ValueError, match=message):
            sign_set(bad, store.active("RS256"))
    with pytest.raises(ValueError, match="'aud'"):
        claims(aud="")


# --- signing, verified by an independent library -------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_signed_set_verifies_with_joserfc_against_our_jwks(store: MemoryKeyStore, alg: str) -> None:
    key = store.active(alg)
    payload = claims()
    token = sign_set(payload, key)

    keyset = KeySet.import_key_set(cast("KeySetSerialization", store.jwks()))
    decoded = jws.deserialize_compact(token, keyset, algorithms=[alg])
    assert decoded.protected == {"alg": alg, "kid": key.kid, "typ": "secevent+jwt"}
    assert json.loads(decoded.payload) == payload

    assert verify_set(token, store.jwks(), issuer=ISS, audience=AUD) == payload


def test_verify_accepts_an_audience_array(store: MemoryKeyStore) -> None:
    key = store.active("ES256")
    token = jwt.encode(
        {**SSF_4_1_8}, key.private_key, "ES256", headers={"kid": key.kid, "typ": "secevent+jwt"}
    )
    got = verify_set(token, store.jwks(), issuer=ISS, audience="receiver.example.com/mobile")
    assert got == SSF_4_1_8


def test_verify_accepts_a_set_without_txn_but_we_never_build_one(store: MemoryKeyStore) -> None:
    """``txn`` is a SHOULD (SSF 1.0 §4.1.9): the spec's own verification SET has none."""
    key = store.active("RS256")
    without = {k: v for k, v in claims().items() if k != "txn"}
    token = jwt.encode(
        without, key.private_key, "RS256", headers={"kid": key.kid, "typ": "secevent+jwt"}
    )
    assert verify_set(token, store.jwks(), issuer=ISS, audience=AUD) == without
    with pytest.raises(ValueError, match="txn"):
        check_set_claims(without)
    with pytest.raises(ValueError, match="txn"):
        build_set_claims(**{**claims_args(), "txn": ""})


# --- our verifier's refusals ------------------------------------------------------------------


def forge(header: dict[str, Any], payload: dict[str, Any], key: SigningKey) -> str:
    return jwt.encode(payload, key.private_key, key.alg, headers=header)


def test_refuses_tampered_payload(store: MemoryKeyStore) -> None:
    head, _, sig = sign_set(claims(), store.active("RS256")).split(".")
    tampered = f"{head}.{b64json({**claims(), 'txn': 'evt-2'})}.{sig}"
    with pytest.raises(InvalidSetSignature) as caught:
        verify_set(tampered, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "authentication_failed"


@pytest.mark.parametrize("typ", [None, "JWT", "application/secevent+jwt", "SECEVENT+JWT"])
def test_refuses_wrong_typ(store: MemoryKeyStore, typ: str | None) -> None:
    key = store.active("RS256")
    token = forge({"kid": key.kid, "typ": typ}, claims(), key)  # typ None: no typ at all
    assert jwt.get_unverified_header(token).get("typ") == typ
    with pytest.raises(InvalidSetRequest, match="typ") as caught:
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "invalid_request"


def test_refuses_alg_none(store: MemoryKeyStore) -> None:
    kid = store.active("RS256").kid
    token = f"{b64json({'alg': 'none', 'kid': kid, 'typ': 'secevent+jwt'})}.{b64json(claims())}."
    with pytest.raises(InvalidSetRequest, match="'none' is not accepted"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_hs256_signed_with_the_rsa_public_key(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    public_pem = key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': key.kid, 'typ': 'secevent+jwt'})}"
    signing_input += f".{b64json(claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    token = f"{signing_input}.{b64(mac)}"
    with pytest.raises(InvalidSetRequest, match="'HS256' is not accepted"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


def test_algorithms_cannot_be_widened(store: MemoryKeyStore) -> None:
    token = sign_set(claims(), store.active("RS256"))
    for algorithms in (("HS256",), ("none",), ("RS256", "HS256"), ()):
        with pytest.raises(ValueError, match="pinned"):
            verify_set(token, store.jwks(), issuer=ISS, audience=AUD, algorithms=algorithms)
    with pytest.raises(InvalidSetRequest, match="not accepted"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD, algorithms=("ES256",))


def test_refuses_unknown_kid_and_mismatched_key(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    other = MemoryKeyStore(rsa_bits=2048).active("RS256")
    with pytest.raises(InvalidSetKey, match="no published key") as caught:
        verify_set(sign_set(claims(), other), store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "invalid_key"
    # An RS256 header naming the ES256 key's kid.
    es_kid = store.active("ES256").kid
    token = forge({"kid": es_kid, "typ": "secevent+jwt"}, claims(), key)
    with pytest.raises(InvalidSetKey, match="not an RS256 signing key"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_a_retired_key(store: MemoryKeyStore) -> None:
    keys = MemoryKeyStore(rsa_bits=2048)
    old = keys.active("ES256")
    token = sign_set(claims(), old)
    keys.rotate("ES256")
    assert verify_set(token, keys.jwks(), issuer=ISS, audience=AUD)["txn"] == "evt-1"
    keys.retire(old.kid)
    with pytest.raises(InvalidSetKey):
        verify_set(token, keys.jwks(), issuer=ISS, audience=AUD)


def test_refuses_wrong_issuer_and_audience(store: MemoryKeyStore) -> None:
    token = sign_set(claims(), store.active("ES256"))
    with pytest.raises(InvalidSetIssuer) as issuer_error:
        verify_set(token, store.jwks(), issuer="https://evil.example.com", audience=AUD)
    assert issuer_error.value.code == "invalid_issuer"
    with pytest.raises(InvalidSetAudience) as audience_error:
        verify_set(token, store.jwks(), issuer=ISS, audience="receiver.example.com/mobile")
    assert audience_error.value.code == "invalid_audience"


def test_refuses_signed_sets_that_break_the_profile(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    header = {"kid": key.kid, "typ": "secevent+jwt"}
    for bad in ({**claims(), "exp": 2}, {**claims(), "sub": "x"}, {**claims(), "events": {}}):
        with pytest.raises(InvalidSetRequest):
            verify_set(forge(header, bad, key), store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("token", ["", "a.b", "not.a.jws", "a.b.c.d"])
def test_refuses_garbage(store: MemoryKeyStore, token: str) -> None:
    with pytest.raises(SetVerificationError) as caught:
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "invalid_request"
    assert caught.value.http_status == 400
