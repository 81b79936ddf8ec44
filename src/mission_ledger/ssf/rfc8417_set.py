"""Security Event Tokens (RFC 8417) as OpenID SSF 1.0 §4 profiles them: build, sign, verify.

A SET is a compact JWS (RFC 7515) whose header is exactly ``{"alg", "kid", "typ":
"secevent+jwt"}`` (RFC 8417 §2.3 explicit typing; SSF §4.1.1) and whose claims are exactly
``iss``, ``aud`` (the stream's, one string), ``iat``, ``jti`` (unique), ``txn`` (the ledger event
id, shared by every SET one event causes; SSF §4.1.9), top-level ``sub_id`` (SSF §4.1.2) and
``events`` with exactly one member (SSF §4.2.1; CAEP Interoperability Profile §2.8.1). ``sub``
(SSF §4.1.3) and ``exp`` (SSF §4.1.7) never appear.

:func:`verify_set` is our own verifier, for the receiver SDK. It parses the compact JWS itself,
once and strictly (three parts, each unpadded base64url, RFC 7515 §2), pins algorithms (never
``none``, never HMAC), checks ``typ`` explicitly, refuses ``crit``, selects the key by ``kid``
(parsed public keys are cached per published JWK), verifies the signature with ``cryptography``
over the signing input, and only then checks claims. Its errors carry RFC 8935 §2.4 ``err``
values as ``code``::

    MissionLedgerError
    └── SetVerificationError        400  a SET was refused
        ├── InvalidSetRequest           invalid_request: not a SET, wrong typ/alg, bad claims
        ├── InvalidSetKey               invalid_key: unknown kid, unacceptable or mismatched key
        ├── InvalidSetSignature         authentication_failed: the signature does not verify
        ├── InvalidSetIssuer            invalid_issuer
        └── InvalidSetAudience          invalid_audience
"""

from __future__ import annotations

import base64
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeAlias

import jwt
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from ..errors import (
    InvalidSetAudience,
    InvalidSetIssuer,
    InvalidSetKey,
    InvalidSetRequest,
    InvalidSetSignature,
    SetVerificationError,
)
from .keys import MIN_RSA_BITS, SUPPORTED_ALGORITHMS, SigningKey

__all__ = [
    "SET_TYP",
    "InvalidSetAudience",
    "InvalidSetIssuer",
    "InvalidSetKey",
    "InvalidSetRequest",
    "InvalidSetSignature",
    "SetVerificationError",
    "build_set_claims",
    "check_set_claims",
    "payload_signing_input",
    "resign_header",
    "set_payload",
    "set_signing_input",
    "sign_set",
    "sign_signing_input",
    "signing_input_header",
    "verify_set",
]

SET_TYP = "secevent+jwt"
FORBIDDEN_CLAIMS = ("sub", "exp")
_KTY = {"RS256": "RSA", "ES256": "EC"}


# --- Building and signing ---------------------------------------------------------------------


def check_set_claims(claims: Mapping[str, Any], *, require_txn: bool = True) -> None:
    """Raise ``ValueError`` unless ``claims`` follow the SSF profile of RFC 8417 (see above).

    ``txn`` is a SHOULD in SSF 1.0 §4.1.9: every SET we build carries it (``require_txn``), but a
    receiver verifying another transmitter's SETs accepts one without it (the spec's own
    verification and stream-updated examples have none)."""
    present = [c for c in FORBIDDEN_CLAIMS if c in claims]
    if present:
        raise ValueError(
            f"a SET must not carry {' or '.join(present)} (SSF 1.0 §4.1.3, §4.1.7); "
            "put the subject in sub_id and leave expiry to the receiver"
        )
    for name in ("iss", "aud", "jti", "txn"):
        if name == "txn" and not require_txn and "txn" not in claims:
            continue
        if not isinstance(claims.get(name), str) or not claims[name]:
            raise ValueError(f"a SET needs a non-empty string {name!r}")
    iat = claims.get("iat")
    if not isinstance(iat, int) or isinstance(iat, bool) or iat < 0:
        raise ValueError("a SET needs 'iat' as a NumericDate (non-negative integer seconds)")
    sub_id = claims.get("sub_id")
    if not isinstance(sub_id, Mapping) or not isinstance(sub_id.get("format"), str):
        raise ValueError("a SET needs a top-level 'sub_id' object with a 'format' (SSF 1.0 §4.1.2)")
    events = claims.get("events")
    if not isinstance(events, Mapping) or len(events) != 1:
        count = len(events) if isinstance(events, Mapping) else "no"
        raise ValueError(
            f"a SET's 'events' must hold exactly one event, got {count} "
            "(SSF 1.0 §4.2.1; CAEP interop §2.8.1): issue one SET per event"
        )
    ((event_type, event),) = events.items()
    if not isinstance(event_type, str) or not event_type or not isinstance(event, Mapping):
        raise ValueError("the event must be keyed by its event-type URI and be a JSON object")


def build_set_claims(
    *,
    iss: str,
    aud: str,
    event_type: str,
    event: Mapping[str, Any],
    sub_id: Mapping[str, Any],
    txn: str,
    iat: int | None = None,
    jti: str | None = None,
) -> dict[str, Any]:
    """The claims of one SET: exactly iss, aud, iat, jti, txn, sub_id and one event.

    ``jti`` defaults to a fresh uuid4 hex string; ``iat`` to the current time. ``event`` must not
    itself be an event map (pass one event type and its payload). Raises ``ValueError``.
    """
    if iat is None:
        iat = int(time.time())
    claims: dict[str, Any] = {
        "iss": iss,
        "aud": aud,
        "iat": iat,
        "jti": jti if jti is not None else uuid.uuid4().hex,
        "txn": txn,
        "sub_id": dict(sub_id),
        "events": {event_type: dict(event)},
    }
    check_set_claims(claims)
    return claims


def sign_set(claims: Mapping[str, Any], key: SigningKey) -> str:
    """The compact JWS of ``claims``, header ``{"alg", "kid", "typ": "secevent+jwt"}``.

    CPU-bound (RSA): async callers run it off the event loop. Raises ``ValueError`` for claims
    that break the profile.
    """
    return sign_signing_input(set_signing_input(claims, key), key)


def set_signing_input(claims: Mapping[str, Any], key: SigningKey) -> str:
    """The JWS Signing Input of ``claims`` (RFC 7515 §5.1): ``BASE64URL(header) "."
    BASE64URL(payload)``, header ``{"alg", "kid", "typ": "secevent+jwt"}`` for ``key``.

    Cheap (no private-key operation): the outbox stores it and signs it later
    (:func:`sign_signing_input`). Raises ``ValueError`` for claims that break the profile."""
    return payload_signing_input(set_payload(claims), key)


def set_payload(claims: Mapping[str, Any]) -> str:
    """The JWS Payload of a SET, ``BASE64URL(claims)``; ``ValueError`` for claims that break
    the profile."""
    check_set_claims(claims)
    return _b64_json(claims)


def payload_signing_input(payload: str, key: SigningKey) -> str:
    """The JWS Signing Input of a payload from :func:`set_payload`, header naming ``key``."""
    return f"{_header_b64(key.alg, key.kid)}.{payload}"


@lru_cache(maxsize=64)
def _header_b64(alg: str, kid: str) -> str:
    """The encoded JOSE header of SETs signed by key ``kid`` (one per key: computed once)."""
    if alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported SET signing algorithm {alg!r}")
    return _b64_json({"alg": alg, "kid": kid, "typ": SET_TYP})


def sign_signing_input(signing_input: str, key: SigningKey) -> str:
    """The compact JWS: ``signing_input`` (from :func:`set_signing_input`, header naming
    ``key``) "." the signature (RS256: RSASSA-PKCS1-v1_5 with SHA-256; ES256: ECDSA P-256 with
    SHA-256 as the 64-byte ``R || S``, RFC 7518 §3.3-3.4). CPU-bound; raises ``ValueError``
    when the input's header does not name ``key``.

    Deterministic: the same key and input always give the same bytes (PKCS #1 v1.5 is; ECDSA
    takes its nonce from RFC 6979 instead of a random source), so a SET signed again after a
    crash is byte-identical to one that may already have been sent."""
    header_b64, _, payload_b64 = signing_input.partition(".")
    if not payload_b64 or "." in payload_b64:
        raise ValueError("a JWS Signing Input is two base64url parts joined by one '.'")
    if key.alg not in SUPPORTED_ALGORITHMS or header_b64 != _header_b64(key.alg, key.kid):
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
        if header.get("alg") != key.alg or header.get("kid") != key.kid:
            raise ValueError(
                f"the signing input's header names {header.get('alg')} key "
                f"{header.get('kid')!r}, not {key.alg} key {key.kid!r}"
            )
    data = signing_input.encode("ascii")
    private = key.private_key
    if isinstance(private, rsa.RSAPrivateKey) and key.alg == "RS256":
        signature = private.sign(data, _PKCS1V15, _SHA256)
    elif isinstance(private, ec.EllipticCurvePrivateKey) and key.alg == "ES256":
        der = private.sign(data, _DETERMINISTIC_ECDSA)
        r, s = decode_dss_signature(der)
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        raise ValueError(f"key {key.kid!r} is not an {key.alg} key")
    return f"{signing_input}.{_b64(signature)}"


def resign_header(signing_input: str, key: SigningKey) -> str:
    """``signing_input`` with its header replaced by one naming ``key`` (same payload): for a
    SET queued unsigned whose key was rotated out before it was signed."""
    return payload_signing_input(signing_input.partition(".")[2], key)


def signing_input_header(signing_input: str) -> dict[str, Any]:
    """The decoded JOSE header of a JWS Signing Input (or of a compact JWS)."""
    header_b64 = signing_input.partition(".")[0]
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    if not isinstance(header, dict):
        raise ValueError("a JOSE header is a JSON object")
    return header


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64_json(value: Mapping[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":"), sort_keys=True).encode("utf-8"))


# --- Verifying --------------------------------------------------------------------------------

_PublicKey: TypeAlias = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

# RFC 7515 §2 / RFC 4648 §5: unpadded, URL-safe alphabet only. A length ≡ 1 (mod 4) encodes no
# whole byte; for ≡ 2 or 3 the bits the last character carries past the data must be zero
# (RFC 4648 §3.5: exactly one encoding per byte string), so it is one of these characters.
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_CANONICAL_LAST = ("", "", "AQgw", "AEIMQUYcgkosw048")
_PADDING = ("", "", "==", "=")
_PKCS1V15 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()
_ECDSA_SHA256 = ec.ECDSA(_SHA256)
_DETERMINISTIC_ECDSA = ec.ECDSA(_SHA256, deterministic_signing=True)  # RFC 6979 nonces
_ES256_SIGNATURE_BYTES = 64  # R || S, 32 bytes each (RFC 7518 §3.4)

# Parsed public keys by (kid, alg), each with a copy of the JWK it was parsed from: a JWKS that
# publishes another JWK under that kid is parsed afresh. Only published keys get here, so the
# size bound is a backstop, not a defence against callers.
_KEY_CACHE_SIZE = 128
_key_cache: dict[tuple[str, str], tuple[dict[str, Any], _PublicKey]] = {}
_key_cache_lock = threading.Lock()


def _b64url_decode(segment: str, part: str) -> bytes:
    """Decode one part of a compact JWS, strictly (see ``_BASE64URL``)."""
    rest = len(segment) % 4
    if (
        rest == 1
        or _BASE64URL.fullmatch(segment) is None
        or (rest and segment[-1] not in _CANONICAL_LAST[rest])
    ):
        raise InvalidSetRequest(
            f"the SET's {part} is not unpadded base64url (RFC 7515 §2): not a compact JWS"
        )
    return base64.urlsafe_b64decode(segment + _PADDING[rest])


def _parse_public_jwk(jwk: dict[str, Any], alg: str) -> _PublicKey:
    """The public key of ``jwk`` if it is an acceptable ``alg`` signing key (no private
    members, matching ``kty``/``alg``/``use``, RSA ≥ ``MIN_RSA_BITS``, EC on P-256)."""
    if "d" in jwk:
        raise InvalidSetKey("the JWKS publishes a private key; refusing it", kid=jwk.get("kid"))
    if jwk.get("kty") != _KTY[alg] or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        raise InvalidSetKey(f"key {jwk.get('kid')!r} is not an {alg} signing key")
    try:
        key = RSAAlgorithm.from_jwk(jwk) if alg == "RS256" else ECAlgorithm.from_jwk(jwk)
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
        raise InvalidSetKey(f"key {jwk.get('kid')!r} is not a valid {alg} JWK") from None
    if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidSetKey(f"key {jwk.get('kid')!r} has fewer than {MIN_RSA_BITS} bits")
        return key
    if (
        alg == "ES256"
        and isinstance(key, ec.EllipticCurvePublicKey)
        and isinstance(key.curve, ec.SECP256R1)
    ):
        return key
    raise InvalidSetKey(f"key {jwk.get('kid')!r} is not an {alg} public key")


def _find_key(jwks: Mapping[str, Any], kid: str) -> dict[str, Any]:
    keys = jwks.get("keys")
    if isinstance(keys, list):
        for jwk in keys:
            if isinstance(jwk, dict) and jwk.get("kid") == kid:
                return jwk
    raise InvalidSetKey(f"no published key has kid {kid!r}", kid=kid)


def _public_key(jwks: Mapping[str, Any], kid: str, alg: str) -> _PublicKey:
    """The ``alg`` public key published as ``kid``, parsed once per distinct JWK."""
    jwk = _find_key(jwks, kid)
    cached = _key_cache.get((kid, alg))
    if cached is not None and cached[0] == jwk:
        return cached[1]
    key = _parse_public_jwk(jwk, alg)
    with _key_cache_lock:
        _key_cache.pop((kid, alg), None)
        while len(_key_cache) >= _KEY_CACHE_SIZE:
            del _key_cache[next(iter(_key_cache))]
        _key_cache[kid, alg] = (copy.deepcopy(jwk), key)
    return key


def _verify_signature(
    key: _PublicKey, alg: str, signature: bytes, signing_input: bytes, kid: str
) -> None:
    """Raise :class:`InvalidSetSignature` unless ``signature`` is ``alg``'s over the input."""
    try:
        if alg == "RS256" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, signing_input, _PKCS1V15, _SHA256)
            return
        if alg == "ES256" and isinstance(key, ec.EllipticCurvePublicKey):
            if len(signature) != _ES256_SIGNATURE_BYTES:
                raise InvalidSignature
            r = int.from_bytes(signature[:32], "big")
            s = int.from_bytes(signature[32:], "big")
            key.verify(encode_dss_signature(r, s), signing_input, _ECDSA_SHA256)
            return
    except InvalidSignature:
        raise InvalidSetSignature("the SET's signature does not verify", kid=kid) from None
    raise InvalidSetKey(f"key {kid!r} is not an {alg} public key", kid=kid)  # never: parsed per alg


def verify_set(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    algorithms: Iterable[str] = SUPPORTED_ALGORITHMS,
) -> dict[str, Any]:
    """The claims of ``token`` once header, key, signature and then claims all check out.

    ``token`` must be a compact JWS: three parts, each unpadded base64url (RFC 7515 §2), the
    header a JSON object. ``algorithms`` narrows the pinned set (RS256, ES256); anything else
    is a ``ValueError``. Raises a :class:`SetVerificationError` subclass naming what failed.
    """
    pinned = tuple(algorithms)
    unsupported = [a for a in pinned if a not in SUPPORTED_ALGORITHMS]
    if unsupported or not pinned:
        raise ValueError(f"SET algorithms are pinned to {SUPPORTED_ALGORITHMS}, got {pinned}")

    # 1. Compact JWS, parsed once; then the header: pin alg, explicit typ, no crit, kid.
    parts = token.split(".", 3) if isinstance(token, str) else ()
    if len(parts) != 3:
        raise InvalidSetRequest("a SET must be a compact JWS (three dot-separated parts)")
    header_b64, payload_b64, signature_b64 = parts
    header_json = _b64url_decode(header_b64, "JOSE header")
    payload_json = _b64url_decode(payload_b64, "payload")
    signature = _b64url_decode(signature_b64, "signature")
    try:
        header = json.loads(header_json)
    except (ValueError, RecursionError):
        raise InvalidSetRequest("the SET's JOSE header cannot be parsed") from None
    if not isinstance(header, dict):
        raise InvalidSetRequest("the SET's JOSE header cannot be parsed (not a JSON object)")
    alg = header.get("alg")
    if alg not in pinned:
        raise InvalidSetRequest(
            f"SET algorithm {alg!r} is not accepted (expected one of {', '.join(pinned)})",
            field="alg",
        )
    if header.get("typ") != SET_TYP:
        raise InvalidSetRequest(
            f"SET header typ must be {SET_TYP!r}, got {header.get('typ')!r}", field="typ"
        )
    if "crit" in header:
        raise InvalidSetRequest("SET headers with 'crit' are not supported", field="crit")
    if header.get("b64", True) is False:
        raise InvalidSetRequest("SETs with an unencoded payload are not supported", field="b64")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidSetKey("the SET header names no kid", field="kid")

    # 2. Key by kid, then the signature over the ASCII signing input (RFC 7515 §5.2).
    public_key = _public_key(jwks, kid, alg)
    signing_input = token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
    _verify_signature(public_key, alg, signature, signing_input, kid)

    # 3. Claims, apart from the signature.
    try:
        claims = json.loads(payload_json)
    except (ValueError, RecursionError):
        raise InvalidSetRequest("the SET payload is not JSON") from None
    if not isinstance(claims, dict):
        raise InvalidSetRequest("the SET payload is not a JSON object")
    if claims.get("iss") != issuer:
        raise InvalidSetIssuer(f"SET issuer {claims.get('iss')!r} is not {issuer!r}")
    aud = claims.get("aud")
    if not (aud == audience or (isinstance(aud, list) and audience in aud)):
        raise InvalidSetAudience(f"SET audience {aud!r} does not include {audience!r}")
    try:
        check_set_claims({**claims, "aud": audience}, require_txn=False)
    except ValueError as error:
        raise InvalidSetRequest(str(error)) from None
    return claims
