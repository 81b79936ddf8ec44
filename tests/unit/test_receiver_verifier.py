"""SetVerifier: our pinned verifier plus a JWKS served by a real loopback server — tampered
SETs refused with the right RFC 8935 code, unknown kids refreshing the JWKS once, rate-limited."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

import aiohttp
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from mission_ledger.receiver import (
    InvalidSetAudience,
    InvalidSetIssuer,
    InvalidSetKey,
    InvalidSetRequest,
    InvalidSetSignature,
    JwksUnavailable,
    SetVerificationError,
    SetVerifier,
)
from mission_ledger.ssf.keys import MemoryKeyStore, SigningKey
from tests.unit.test_receiver_common import (
    AUD,
    MISSION,
    REVOKED,
    Transmitter,
    alg_none,
    b64,
    b64json,
    bad_signature,
    claims,
    hs256_with_public_key,
    key_store,
    make_set,
    run,
    sign_input,
    signed_with_header,
    transmitter,
)


class Clock:
    """Monotonic seconds that move only when told (no sleeping, no timing assertions)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def verifier_for(
    t: Transmitter, session: aiohttp.ClientSession, clock: Clock | None = None, **kw: Any
) -> SetVerifier:
    return SetVerifier(t.issuer, AUD, t.url + "/jwks.json", session, clock=clock or Clock(), **kw)


def test_valid_sets_verify_with_rs256_and_es256() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session)
            for alg in ("RS256", "ES256"):
                token = make_set(key_store().active(alg), iss=t.issuer, jti=f"jti-{alg}")
                result = await verifier.verify(token)
                assert result.jti == f"jti-{alg}"
                assert result.iss == t.issuer
                assert result.event_type == REVOKED
                assert result.event["state"] == "revoked"
                assert result.sub_id == {"format": "opaque", "id": MISSION}
                assert result.txn == "txn-1"
                assert result.token == token
            assert t.jwks_fetches == 1  # fetched once, then cached

    run(main)


def test_an_audience_array_containing_ours_is_accepted() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            body = claims(iss=t.issuer)
            body["aud"] = ["https://other.example.com", AUD]
            key = key_store().active("RS256")
            token = signed_with_header(key, body, typ="secevent+jwt")
            assert (await verifier_for(t, session).verify(token)).claims["aud"] == body["aud"]

    run(main)


def _refused(make: Any, error: type[SetVerificationError], code: str, match: str) -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            token = make(t)
            with pytest.raises(error, match=match) as caught:
                await verifier_for(t, session).verify(token)
            assert caught.value.code == code

    run(main)


RSA = key_store().active("RS256")


def test_a_bad_signature_is_authentication_failed() -> None:
    _refused(
        lambda t: bad_signature(make_set(RSA, iss=t.issuer)),
        InvalidSetSignature,
        "authentication_failed",
        "signature",
    )


def test_a_wrong_typ_is_invalid_request() -> None:
    for typ in ("JWT", "application/secevent+jwt", None):
        _refused(
            lambda t, typ=typ: signed_with_header(RSA, claims(iss=t.issuer), typ=typ),
            InvalidSetRequest,
            "invalid_request",
            "typ",
        )


def test_alg_none_is_invalid_request() -> None:
    _refused(
        lambda t: alg_none(RSA, claims(iss=t.issuer)), InvalidSetRequest, "invalid_request", "none"
    )


def test_hs256_keyed_with_the_public_key_is_invalid_request() -> None:
    _refused(
        lambda t: hs256_with_public_key(RSA, claims(iss=t.issuer)),
        InvalidSetRequest,
        "invalid_request",
        "HS256",
    )


def test_a_wrong_audience_is_invalid_audience() -> None:
    _refused(
        lambda t: make_set(RSA, iss=t.issuer, aud="https://crm.example.com"),
        InvalidSetAudience,
        "invalid_audience",
        "audience",
    )


def test_a_wrong_issuer_is_invalid_issuer() -> None:
    _refused(
        lambda t: make_set(RSA, iss=t.issuer + "/"),
        InvalidSetIssuer,
        "invalid_issuer",
        "issuer",
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sub": "alice"}, "sub"),
        ({"exp": 2_000_000_000}, "exp"),
        ({"events": {REVOKED: {}, REVOKED + "-2": {}}}, "exactly one event"),
    ],
)
def test_sub_exp_and_two_events_are_invalid_request(change: dict[str, Any], match: str) -> None:
    _refused(
        lambda t: signed_with_header(RSA, {**claims(iss=t.issuer), **change}, typ="secevent+jwt"),
        InvalidSetRequest,
        "invalid_request",
        match,
    )


def test_garbage_is_invalid_request() -> None:
    for token in ("", "not-a-jws", "a.b.c", "a.b"):
        _refused(lambda t, token=token: token, InvalidSetRequest, "invalid_request", "SET|JWS")


def test_algorithms_are_pinned_and_can_be_narrowed() -> None:
    async def main() -> None:
        async with transmitter() as t, aiohttp.ClientSession() as session:
            for algorithms in (("HS256",), ("none",), ("RS256", "HS512"), ()):
                with pytest.raises(ValueError, match="pinned"):
                    verifier_for(t, session, algorithms=algorithms)
            es_only = verifier_for(t, session, algorithms=("ES256",))
            with pytest.raises(InvalidSetRequest, match="'RS256' is not accepted"):
                await es_only.verify(make_set(RSA, iss=t.issuer))
            await es_only.verify(make_set(key_store().active("ES256"), iss=t.issuer))

    run(main)


def test_an_unknown_kid_refreshes_once_then_fails_with_invalid_key() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock)
            await verifier.verify(make_set(RSA, iss=t.issuer))
            assert t.jwks_fetches == 1

            clock.now += 61  # past the refresh interval: one refresh is allowed
            with pytest.raises(InvalidSetKey) as caught:
                await verifier.verify(make_set(foreign, iss=t.issuer))
            assert caught.value.code == "invalid_key"
            assert caught.value.details == {"kid": foreign.kid, "refreshed": True}
            assert t.jwks_fetches == 2  # exactly one refresh

            # Within the interval: refused without fetching again, and says so.
            for _ in range(3):
                with pytest.raises(InvalidSetKey) as caught:
                    await verifier.verify(make_set(foreign, iss=t.issuer))
                assert caught.value.details["refreshed"] is False
            assert t.jwks_fetches == 2

    run(main)


def test_the_first_fetch_counts_against_the_refresh_interval() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("ES256")
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session)
            with pytest.raises(InvalidSetKey):
                await verifier.verify(make_set(foreign, iss=t.issuer))
            assert t.jwks_fetches == 1  # the JWKS was fresh: no second fetch

    run(main)


def test_a_rotated_key_is_found_by_the_refresh_once_the_rate_limit_allows() -> None:
    async def main() -> None:
        store = MemoryKeyStore(rsa_bits=2048)
        store.ensure_keys()
        clock = Clock()
        async with transmitter(store) as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock, refresh_interval=30)
            await verifier.verify(make_set(store.active("RS256"), iss=t.issuer))
            rotated = store.rotate("RS256")
            token = make_set(rotated, iss=t.issuer)
            clock.now += 29
            with pytest.raises(InvalidSetKey):
                await verifier.verify(token)
            assert t.jwks_fetches == 1
            clock.now += 1
            assert (await verifier.verify(token)).jti
            assert t.jwks_fetches == 2
            assert (await verifier.verify(make_set(rotated, iss=t.issuer))).jti
            assert t.jwks_fetches == 2  # the new key is cached now

    run(main)


def test_concurrent_unknown_kids_share_one_refresh() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock)
            await verifier.jwks()
            clock.now += 120
            tokens = [make_set(foreign, iss=t.issuer) for _ in range(10)]
            results = await asyncio.gather(
                *(verifier.verify(token) for token in tokens), return_exceptions=True
            )
            assert all(isinstance(r, InvalidSetKey) for r in results)
            assert t.jwks_fetches == 2

    run(main)


def test_alg_none_or_a_wrong_typ_with_an_unknown_kid_never_triggers_a_refresh() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock)
            await verifier.jwks()
            clock.now += 120
            for token in (
                alg_none(foreign, claims(iss=t.issuer)),
                signed_with_header(foreign, claims(iss=t.issuer), typ="JWT"),
            ):
                with pytest.raises(InvalidSetRequest):
                    await verifier.verify(token)
            assert t.jwks_fetches == 1

    run(main)


def test_an_unreachable_or_malformed_jwks_is_jwks_unavailable_not_a_refusal() -> None:
    async def main() -> None:
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            t.jwks_status = 503
            verifier = verifier_for(t, session, clock)
            token = make_set(RSA, iss=t.issuer)
            with pytest.raises(JwksUnavailable, match="HTTP 503"):
                await verifier.verify(token)
            with pytest.raises(JwksUnavailable):
                await verifier.verify(token)  # within the retry pause: not fetched again
            assert t.jwks_fetches == 1
            t.jwks_status = 200
            clock.now += 5
            assert (await verifier.verify(token)).jti
            assert t.jwks_fetches == 2

            t.metadata["keys"] = "x"  # (metadata, not the JWKS: unchanged)
            other = SetVerifier(t.issuer, AUD, t.url + "/.well-known/ssf-configuration", session)
            with pytest.raises(JwksUnavailable, match="not a JWK Set"):
                await other.verify(token)

    run(main)


# -- the compact JWS parsed strictly, keys cached per published JWK ---------------------------


def forge(header: dict[str, Any], body: object, key: SigningKey) -> str:
    """A compact JWS with exactly ``header`` and ``body`` (any JSON), signed by ``key`` with its
    own algorithm whatever the header says (ES256 as the 64-byte R || S)."""
    return sign_input(f"{b64json(header)}.{b64json(body)}", key)


def test_malformed_sets_naming_an_unknown_kid_never_trigger_a_refresh() -> None:
    async def main() -> None:
        foreign = key_store("foreign").active("RS256")
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock)
            await verifier.jwks()
            clock.now += 120
            token = make_set(foreign, iss=t.issuer)
            head, body, signature = token.split(".")
            for bad in (
                token + "==",  # padded (342 characters: 256 bytes)
                f"{head}.{body}.+{signature[1:]}",
                f"{head}.{body}\n.{signature}",
                f"{head}.{body}",
                f"{token}.{signature}",
                forge(
                    {"alg": "RS256", "kid": foreign.kid, "typ": "secevent+jwt", "crit": ["x"]},
                    claims(iss=t.issuer),
                    foreign,
                ),
            ):
                with pytest.raises(InvalidSetRequest) as caught:
                    await verifier.verify(bad)
                assert caught.value.code == "invalid_request"
            assert t.jwks_fetches == 1

    run(main)


def test_signature_and_key_type_refusals_with_a_known_kid_never_trigger_a_refresh() -> None:
    async def main() -> None:
        es = key_store().active("ES256")
        clock = Clock()
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session, clock)
            await verifier.jwks()
            clock.now += 120
            head, body, _ = make_set(es, iss=t.issuer).split(".")
            assert isinstance(es.private_key, ec.EllipticCurvePrivateKey)
            der = b64(es.private_key.sign(f"{head}.{body}".encode(), ec.ECDSA(hashes.SHA256())))
            with pytest.raises(InvalidSetSignature) as bad_length:
                await verifier.verify(f"{head}.{body}.{der}")  # DER, not R || S
            assert bad_length.value.code == "authentication_failed"
            confused = forge(
                {"alg": "ES256", "kid": RSA.kid, "typ": "secevent+jwt"}, claims(iss=t.issuer), RSA
            )
            with pytest.raises(InvalidSetKey, match="not an ES256 signing key") as mismatched:
                await verifier.verify(confused)
            assert mismatched.value.code == "invalid_key"
            assert t.jwks_fetches == 1

    run(main)


def test_a_payload_that_is_not_a_json_object_is_invalid_request() -> None:
    header = {"alg": "RS256", "kid": RSA.kid, "typ": "secevent+jwt"}
    _refused(
        lambda t: forge(header, [claims(iss=t.issuer)], RSA),
        InvalidSetRequest,
        "invalid_request",
        "not a JSON object",
    )


def test_another_key_republished_under_a_cached_kid_is_not_served_from_the_cache() -> None:
    async def main() -> None:
        key = key_store().active("ES256")
        async with transmitter() as t, aiohttp.ClientSession() as session:
            verifier = verifier_for(t, session)
            token = make_set(key, iss=t.issuer)
            assert (await verifier.verify(token)).jti
            # The JWKS now publishes another key under that kid (a botched rotation, or worse).
            impostor = {**key_store("foreign").active("ES256").public_jwk(), "kid": key.kid}
            t.store = cast("MemoryKeyStore", SimpleNamespace(jwks=lambda: {"keys": [impostor]}))
            await verifier.refresh()
            with pytest.raises(InvalidSetSignature):
                await verifier.verify(token)
            t.store = key_store()
            await verifier.refresh()
            assert (await verifier.verify(token)).jti

    run(main)
