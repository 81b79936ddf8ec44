"""Security Event Tokens (RFC 8417) as OpenID SSF 1.0 §4 profiles them: build, sign, verify.

A SET is a compact JWS (RFC 7515) whose header is exactly ``{"alg", "kid", "typ":
"secevent+jwt"}`` (RFC 8417 §2.3 explicit typing; SSF §4.1.1) and whose claims are exactly
``iss``, ``aud`` (the stream's, one string), ``iat``, ``jti`` (unique), ``txn`` (the ledger event
id, shared by every SET one event causes; SSF §4.1.9), top-level ``sub_id`` (SSF §4.1.2) and
``events`` with exactly one member (SSF §4.2.1; CAEP Interoperability Profile §2.8.1). ``sub``
(SSF §4.1.3) and ``exp`` (SSF §4.1.7) never appear.

:func:`verify_set` is our own verifier, for the receiver SDK. It pins algorithms (never ``none``,
never HMAC), checks ``typ`` explicitly, selects the key by ``kid``, verifies the signature, and
only then checks claims. Its errors carry RFC 8935 §2.4 ``err`` values as ``code``::

    MissionLedgerError
    └── SetVerificationError        400  a SET was refused
        ├── InvalidSetRequest           invalid_request: not a SET, wrong typ/alg, bad claims
        ├── InvalidSetKey               invalid_key: unknown kid, unacceptable or mismatched key
        ├── InvalidSetSignature         authentication_failed: the signature does not verify
        ├── InvalidSetIssuer            invalid_issuer
        └── InvalidSetAudience          invalid_audience
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
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
    "sign_set",
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
    check_set_claims(claims)
    if key.alg not in SUPPORTED_ALGORITHMS:
        raise ValueError(f"unsupported SET signing algorithm {key.alg!r}")
    return jwt.encode(
        dict(claims),
        key.private_key,
        algorithm=key.alg,
        headers={"kid": key.kid, "typ": SET_TYP},
    )


# --- Verifying --------------------------------------------------------------------------------


@lru_cache(maxsize=128)
def _parse_public_jwk(jwk_json: str, alg: str) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    """Parse a public JWK once; cached by its canonical JSON (which includes its ``kid``)."""
    jwk = json.loads(jwk_json)
    if "d" in jwk:
        raise InvalidSetKey("the JWKS publishes a private key; refusing it", kid=jwk.get("kid"))
    if jwk.get("kty") != _KTY[alg] or jwk.get("alg", alg) != alg or jwk.get("use", "sig") != "sig":
        raise InvalidSetKey(f"key {jwk.get('kid')!r} is not an {alg} signing key")
    try:
        key = RSAAlgorithm.from_jwk(jwk) if alg == "RS256" else ECAlgorithm.from_jwk(jwk)
    except (jwt.InvalidKeyError, ValueError, KeyError, TypeError):
        raise InvalidSetKey(f"key {jwk.get('kid')!r} is not a valid {alg} JWK") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            raise InvalidSetKey(f"key {jwk.get('kid')!r} has fewer than {MIN_RSA_BITS} bits")
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    raise InvalidSetKey(f"key {jwk.get('kid')!r} is not an {alg} public key")


def _find_key(jwks: Mapping[str, Any], kid: str) -> dict[str, Any]:
    keys = jwks.get("keys")
    if isinstance(keys, list):
        for jwk in keys:
            if isinstance(jwk, dict) and jwk.get("kid") == kid:
                return jwk
    raise InvalidSetKey(f"no published key has kid {kid!r}", kid=kid)


def verify_set(
    token: str,
    jwks: Mapping[str, Any],
    *,
    issuer: str,
    audience: str,
    algorithms: Iterable[str] = SUPPORTED_ALGORITHMS,
) -> dict[str, Any]:
    """The claims of ``token`` once header, key, signature and then claims all check out.

    ``algorithms`` narrows the pinned set (RS256, ES256); anything else is a ``ValueError``.
    Raises a :class:`SetVerificationError` subclass naming what failed.
    """
    pinned = tuple(algorithms)
    unsupported = [a for a in pinned if a not in SUPPORTED_ALGORITHMS]
    if unsupported or not pinned:
        raise ValueError(f"SET algorithms are pinned to {SUPPORTED_ALGORITHMS}, got {pinned}")

    # 1. Header: parse, pin alg, explicit typ (pyjwt checks neither), kid.
    if not isinstance(token, str) or token.count(".") != 2:
        raise InvalidSetRequest("a SET must be a compact JWS (three dot-separated parts)")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.DecodeError:
        raise InvalidSetRequest("the SET's JOSE header cannot be parsed") from None
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
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidSetKey("the SET header names no kid", field="kid")

    # 2. Key by kid, then the signature alone (no claim checks inside the JOSE library).
    jwk = _find_key(jwks, kid)
    public_key = _parse_public_jwk(json.dumps(jwk, sort_keys=True), alg)
    try:
        signed = jwt.PyJWS().decode_complete(token, key=public_key, algorithms=[alg])
    except jwt.InvalidSignatureError:
        raise InvalidSetSignature("the SET's signature does not verify", kid=kid) from None
    except jwt.PyJWTError:
        raise InvalidSetRequest("the SET is not a well-formed compact JWS") from None

    # 3. Claims, apart from the signature.
    try:
        claims = json.loads(signed["payload"])
    except ValueError:
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
