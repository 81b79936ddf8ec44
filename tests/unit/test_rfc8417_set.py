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
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jws
from joserfc.jwk import KeySet, KeySetSerialization
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

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
    payload_signing_input,
    resign_header,
    set_payload,
    sign_set,
    sign_signing_input,
    verify_set,
)
from tests.unit.test_receiver_common import b64, b64json, sign_input

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


# --- strict compact JWS parsing (RFC 7515 §2, §7.1) -------------------------------------------


def forge_raw(header: object, payload: object, key: SigningKey) -> str:
    """A compact JWS over any JSON header and payload (not only objects), signed by ``key``."""
    return sign_input(f"{b64json(header)}.{b64json(payload)}", key)


def set_header(key: SigningKey, **changes: Any) -> dict[str, Any]:
    return {"alg": key.alg, "kid": key.kid, "typ": "secevent+jwt", **changes}


def replace_part(token: str, index: int, new: str) -> str:
    parts = token.split(".")
    parts[index] = new
    return ".".join(parts)


def decode_leniently(segment: str) -> bytes:
    """What a lenient decoder makes of a segment (padding and junk ignored)."""
    return base64.urlsafe_b64decode(segment.rstrip("=") + "=" * (-len(segment.rstrip("=")) % 4))


PARTS = [0, 1, 2]


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("index", PARTS)
def test_refuses_padding_in_any_part(store: MemoryKeyStore, alg: str, index: int) -> None:
    token = sign_set(claims(), store.active(alg))
    part = token.split(".")[index]
    for pad in ("=", "==", "=" * (-len(part) % 4) or "===="):
        padded = replace_part(token, index, part + pad)
        with pytest.raises(InvalidSetRequest, match="base64url") as caught:
            verify_set(padded, store.jwks(), issuer=ISS, audience=AUD)
        assert caught.value.code == "invalid_request"


def test_a_padded_signature_is_refused_though_pyjwt_would_accept_it(store: MemoryKeyStore) -> None:
    """RFC 7515 §2 leaves padding out; PyJWT tolerates it (some issuers add it), we do not."""
    key = store.active("RS256")
    token = sign_set(claims(), key)
    padded = token + "=" * (-len(token.split(".")[2]) % 4)
    assert padded != token  # 256 bytes: 342 characters, "==" to pad
    public_key = key.private_key.public_key()
    jwt.PyJWS().decode_complete(padded, key=public_key, algorithms=["RS256"])
    with pytest.raises(InvalidSetRequest, match="signature is not unpadded base64url"):
        verify_set(padded, store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("index", PARTS)
@pytest.mark.parametrize("junk", ["+", "/", " ", "\n", "\t", "\r\n", "!", "é", "\x00"])
def test_refuses_non_base64url_characters_in_any_part(
    store: MemoryKeyStore, index: int, junk: str
) -> None:
    token = sign_set(claims(), store.active("ES256"))
    part = token.split(".")[index]
    for changed in (
        junk + part[1:],  # replaced (the length stays a valid one)
        part[:8] + junk + part[8:],  # inserted: a lenient decoder skips whitespace
    ):
        with pytest.raises(InvalidSetRequest, match="base64url"):
            verify_set(replace_part(token, index, changed), store.jwks(), issuer=ISS, audience=AUD)


def test_a_signature_with_whitespace_would_verify_if_it_were_skipped(store: MemoryKeyStore) -> None:
    """So the refusals above are the parser's doing, not the signature's."""
    token = sign_set(claims(), store.active("RS256"))
    head, body, signature = token.split(".")
    spaced = signature[:8] + "\n" + signature[8:]
    assert base64.urlsafe_b64decode(spaced + "=" * (-len(signature) % 4)) == decode_leniently(
        signature
    )
    with pytest.raises(InvalidSetRequest, match="signature is not unpadded base64url"):
        verify_set(f"{head}.{body}.{spaced}", store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("index", PARTS)
def test_refuses_a_part_whose_length_is_1_mod_4(store: MemoryKeyStore, index: int) -> None:
    token = sign_set(claims(), store.active("RS256"))
    part = token.split(".")[index]
    longer = part + "A" * ((1 - len(part)) % 4)
    assert len(longer) % 4 == 1
    with pytest.raises(InvalidSetRequest, match="base64url"):
        verify_set(replace_part(token, index, longer), store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_non_canonical_trailing_bits(store: MemoryKeyStore) -> None:
    """RFC 4648 §3.5: the ES256 signature (64 bytes: 86 characters) decodes the same with the
    unused low bits of its last character set, but that is a second encoding of it."""
    token = sign_set(claims(), store.active("ES256"))
    signature = token.split(".")[2]
    assert len(signature) % 4 == 2
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = signature[:-1] + alphabet[alphabet.index(signature[-1]) + 1]
    assert decode_leniently(other) == decode_leniently(signature)
    with pytest.raises(InvalidSetRequest, match="signature is not unpadded base64url"):
        verify_set(replace_part(token, 2, other), store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("shape", ["two", "four", "five", "one", "empty-parts"])
def test_refuses_anything_but_three_parts(store: MemoryKeyStore, shape: str) -> None:
    token = sign_set(claims(), store.active("RS256"))
    head, body, signature = token.split(".")
    bad = {
        "two": f"{head}.{body}",
        "four": f"{token}.{signature}",
        "five": f"{token}..",
        "one": head,
        "empty-parts": "..",
    }[shape]
    with pytest.raises(InvalidSetRequest) as caught:
        verify_set(bad, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "invalid_request"
    if shape != "empty-parts":
        assert "three dot-separated parts" in caught.value.description


def test_refuses_a_token_that_is_not_a_string(store: MemoryKeyStore) -> None:
    token = sign_set(claims(), store.active("RS256"))
    with pytest.raises(InvalidSetRequest, match="compact JWS"):
        verify_set(token.encode(), store.jwks(), issuer=ISS, audience=AUD)  # type: ignore[arg-type]


@pytest.mark.parametrize("header", [["RS256"], "RS256", 1, None])
def test_refuses_a_header_that_is_not_a_json_object(store: MemoryKeyStore, header: object) -> None:
    with pytest.raises(InvalidSetRequest, match="JOSE header"):
        verify_set(
            forge_raw(header, claims(), store.active("RS256")),
            store.jwks(),
            issuer=ISS,
            audience=AUD,
        )


def test_refuses_a_header_that_is_not_json(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    token = sign_input(f"{b64(b'{not json')}.{b64json(claims())}", key)
    with pytest.raises(InvalidSetRequest, match="JOSE header cannot be parsed"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
@pytest.mark.parametrize("payload", [[claims()], "a string", 42, None])
def test_refuses_a_signed_payload_that_is_not_a_json_object(
    store: MemoryKeyStore, alg: str, payload: object
) -> None:
    key = store.active(alg)
    with pytest.raises(InvalidSetRequest, match="not a JSON object"):
        verify_set(forge_raw(set_header(key), payload, key), store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_a_signed_payload_that_is_not_json(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    for raw in (b"{not json", b"", b"\xff\xfe", b"[" * 100_000):
        token = sign_input(f"{b64json(set_header(key))}.{b64(raw)}", key)
        with pytest.raises(InvalidSetRequest, match="payload is not JSON"):
            verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_crit_and_an_unencoded_payload(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    token = forge_raw(set_header(key, crit=["exp"], exp=1), claims(), key)
    with pytest.raises(InvalidSetRequest, match="crit") as caught:
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.details == {"field": "crit"}
    token = forge_raw(set_header(key, b64=False), claims(), key)
    with pytest.raises(InvalidSetRequest, match="unencoded payload"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("kid", [None, "", 7, ["x"], {"kid": "x"}])
def test_refuses_a_missing_or_non_string_kid(store: MemoryKeyStore, kid: object) -> None:
    key = store.active("ES256")
    header = {k: v for k, v in set_header(key, kid=kid).items() if v is not None}
    with pytest.raises(InvalidSetKey, match="names no kid") as caught:
        verify_set(forge_raw(header, claims(), key), store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.details == {"field": "kid"}


# --- the signature, checked with cryptography directly ---------------------------------------


@pytest.mark.parametrize("length", [0, 32, 63, 65, 66, 72, 96, 256])
def test_refuses_an_es256_signature_of_the_wrong_length(store: MemoryKeyStore, length: int) -> None:
    key = store.active("ES256")
    head, body, signature = sign_set(claims(), key).split(".")
    raw = decode_leniently(signature)
    wrong = (raw * 5)[:length]
    with pytest.raises(InvalidSetSignature) as caught:
        verify_set(f"{head}.{body}.{b64(wrong)}", store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "authentication_failed"
    assert caught.value.details == {"kid": key.kid}


def test_refuses_a_der_encoded_es256_signature(store: MemoryKeyStore) -> None:
    """RFC 7518 §3.4: R || S, not the DER that ``cryptography`` itself produces."""
    key = store.active("ES256")
    assert isinstance(key.private_key, ec.EllipticCurvePrivateKey)
    head, body, _ = sign_set(claims(), key).split(".")
    der = key.private_key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    with pytest.raises(InvalidSetSignature):
        verify_set(f"{head}.{body}.{b64(der)}", store.jwks(), issuer=ISS, audience=AUD)


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_refuses_a_zeroed_or_empty_signature(store: MemoryKeyStore, alg: str) -> None:
    key = store.active(alg)
    head, body, signature = sign_set(claims(), key).split(".")
    zeroed = b64(bytes(len(decode_leniently(signature))))
    for bad in (zeroed, ""):
        with pytest.raises(InvalidSetSignature):
            verify_set(f"{head}.{body}.{bad}", store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_an_rs256_signature_under_a_header_claiming_es256(store: MemoryKeyStore) -> None:
    """Key confusion: the header says ES256 but names the RSA key (and was signed by it)."""
    rsa_key = store.active("RS256")
    token = forge_raw(set_header(rsa_key, alg="ES256"), claims(), rsa_key)
    with pytest.raises(InvalidSetKey, match="not an ES256 signing key") as caught:
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)
    assert caught.value.code == "invalid_key"
    # The same with the JWK's own "alg" and "use" left out: its kty still decides.
    bare = {
        "keys": [
            {k: v for k, v in jwk.items() if k not in ("alg", "use")}
            for jwk in store.jwks()["keys"]
        ]
    }
    with pytest.raises(InvalidSetKey, match="not an ES256 signing key"):
        verify_set(token, bare, issuer=ISS, audience=AUD)
    # And the other way round: an ES256 signature under a header claiming RS256.
    ec_key = store.active("ES256")
    token = forge_raw(set_header(ec_key, alg="RS256"), claims(), ec_key)
    with pytest.raises(InvalidSetKey, match="not an RS256 signing key"):
        verify_set(token, store.jwks(), issuer=ISS, audience=AUD)


def test_refuses_a_jwk_whose_kty_lies_about_its_members(store: MemoryKeyStore) -> None:
    key = store.active("RS256")
    token = sign_set(claims(), key)
    (jwk,) = (k for k in store.jwks()["keys"] if k["kid"] == key.kid)
    for bad in (
        {**jwk, "kty": "EC"},
        {**jwk, "alg": "ES256"},
        {**jwk, "use": "enc"},
        {**jwk, "n": "not base64url!"},
        {k: v for k, v in jwk.items() if k != "n"},
        {**jwk, "d": "AQAB"},
    ):
        with pytest.raises(InvalidSetKey):
            verify_set(token, {"keys": [bad]}, issuer=ISS, audience=AUD)


def test_refuses_a_small_rsa_key_and_a_non_p256_curve() -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (on purpose)
    p384 = ec.generate_private_key(ec.SECP384R1())
    for alg, jwk in (
        ("RS256", RSAAlgorithm.to_jwk(small.public_key(), as_dict=True)),
        ("ES256", ECAlgorithm.to_jwk(p384.public_key(), as_dict=True)),
    ):
        jwk.update(kid="k", alg=alg)
        header = {"alg": alg, "kid": "k", "typ": "secevent+jwt"}
        token = f"{b64json(header)}.{b64json(claims())}.{b64(bytes(64))}"
        with pytest.raises(InvalidSetKey, match=r"fewer than 2048 bits|not an ES256 public key"):
            verify_set(token, {"keys": [jwk]}, issuer=ISS, audience=AUD)


# --- the key cache ------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_new_jwk_under_a_cached_kid_is_parsed_afresh(store: MemoryKeyStore, alg: str) -> None:
    key = store.active(alg)
    token = sign_set(claims(), key)
    (mine,) = (k for k in store.jwks()["keys"] if k["kid"] == key.kid)
    theirs = MemoryKeyStore(rsa_bits=2048).active(alg).public_jwk()
    impostor = {**theirs, "kid": key.kid}  # another key published under the same kid
    assert verify_set(token, {"keys": [mine]}, issuer=ISS, audience=AUD)["txn"] == "evt-1"
    with pytest.raises(InvalidSetSignature):
        verify_set(token, {"keys": [impostor]}, issuer=ISS, audience=AUD)
    assert verify_set(token, {"keys": [mine]}, issuer=ISS, audience=AUD)["txn"] == "evt-1"
    # A JWKS changed in place is seen too (the cache keeps its own copy of the JWK).
    jwks = {"keys": [dict(mine)]}
    assert verify_set(token, jwks, issuer=ISS, audience=AUD)
    jwks["keys"][0].update({k: v for k, v in impostor.items() if k != "kid"})
    with pytest.raises(InvalidSetSignature):
        verify_set(token, jwks, issuer=ISS, audience=AUD)
    # A cached key that became unacceptable is refused, not served from the cache.
    with pytest.raises(InvalidSetKey):
        verify_set(token, {"keys": [{**mine, "use": "enc"}]}, issuer=ISS, audience=AUD)


def test_many_kids_keep_verifying_past_the_cache_size(store: MemoryKeyStore) -> None:
    key = store.active("ES256")
    (jwk,) = (k for k in store.jwks()["keys"] if k["kid"] == key.kid)
    for n in range(300):
        kid = f"{key.kid}-{n}"
        signed = SigningKey(kid=kid, alg="ES256", private_key=key.private_key)
        token = sign_set(claims(), signed)
        assert verify_set(token, {"keys": [{**jwk, "kid": kid}]}, issuer=ISS, audience=AUD)


# --- signing a stored Signing Input -------------------------------------------------------------


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_a_signing_input_signs_deterministically_and_only_with_the_key_it_names(
    store: MemoryKeyStore, alg: str
) -> None:
    key = store.active(alg)
    other = store.active("ES256" if alg == "RS256" else "RS256")
    signing_input = payload_signing_input(set_payload(claims()), key)
    token = sign_signing_input(signing_input, key)
    assert token == sign_signing_input(signing_input, key)  # the same bytes every time
    assert token.rpartition(".")[0] == signing_input
    assert verify_set(token, store.jwks(), issuer=ISS, audience=AUD)["aud"] == AUD
    with pytest.raises(ValueError, match=f"names {alg} key"):
        sign_signing_input(signing_input, other)  # the header names another key
    again = resign_header(signing_input, other)
    assert again.partition(".")[2] == signing_input.partition(".")[2]  # the same payload
    assert sign_signing_input(again, other).startswith(again + ".")
    with pytest.raises(ValueError, match="two base64url parts"):
        sign_signing_input(token, key)  # a compact JWS is not a Signing Input
