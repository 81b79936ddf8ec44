"""Integrity anchors of the Mission drafts (``draft-mcguinness-oauth-mission``, integrity-anchors).

An anchor commits to a value under a type and an issuer:

1. build the envelope ``{"typ": typ, "iss": iss, "value": value}``;
2. canonicalize it with JCS (RFC 8785, :mod:`.canonical`);
3. hash the bytes with SHA-256;
4. write ``sha-256:`` followed by the unpadded base64url digest (43 characters).

``intent_hash`` uses :data:`MISSION_INTENT`, ``authority_hash`` :data:`MISSION_AUTHORITY_SET`,
``proposal_hash`` :data:`MISSION_PROPOSED_AUTHORITY`, and one Authority Set entry's digest
:data:`MISSION_AUTHORITY_ENTRY`. Provenance (such as the approval basis) is not folded in.
"""

from __future__ import annotations

import base64
import hashlib

from .canonical import canonicalize

__all__ = [
    "ANCHOR_PREFIX",
    "KNOWN_TYPS",
    "MISSION_AUTHORITY_ENTRY",
    "MISSION_AUTHORITY_SET",
    "MISSION_INTENT",
    "MISSION_PROPOSED_AUTHORITY",
    "anchor",
    "sha256_b64url",
]

MISSION_INTENT = "mission-intent"
MISSION_AUTHORITY_SET = "mission-authority-set"
MISSION_PROPOSED_AUTHORITY = "mission-proposed-authority"
MISSION_AUTHORITY_ENTRY = "mission-authority-entry"

KNOWN_TYPS: tuple[str, ...] = (
    MISSION_INTENT,
    MISSION_AUTHORITY_SET,
    MISSION_PROPOSED_AUTHORITY,
    MISSION_AUTHORITY_ENTRY,
)

ANCHOR_PREFIX = "sha-256:"


def sha256_b64url(data: bytes) -> str:
    """Return the SHA-256 digest of ``data`` as unpadded base64url (43 characters, no prefix)."""
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def anchor(typ: str, iss: str, value: object) -> str:
    """Return the ``sha-256:<base64url>`` integrity anchor of ``value`` under ``typ`` and ``iss``.

    Any non-empty ``typ`` is accepted (see :data:`KNOWN_TYPS` for the drafts' own); ``iss``
    must be non-empty. ``value`` must be a JSON value :func:`.canonical.canonicalize` accepts.
    """
    if not isinstance(typ, str) or not typ:
        raise ValueError("anchor typ must be a non-empty string")
    if not isinstance(iss, str) or not iss:
        raise ValueError("anchor iss must be a non-empty string (the issuer URL)")
    envelope = {"typ": typ, "iss": iss, "value": value}
    return ANCHOR_PREFIX + sha256_b64url(canonicalize(envelope))
