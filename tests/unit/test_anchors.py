"""Unit tests of the Mission integrity anchors."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from mission_ledger.domain.anchors import (
    KNOWN_TYPS,
    MISSION_AUTHORITY_ENTRY,
    MISSION_AUTHORITY_SET,
    MISSION_INTENT,
    MISSION_PROPOSED_AUTHORITY,
    anchor,
    sha256_b64url,
)

ISS = "https://as.example.com"
ANCHOR_RE = re.compile(r"sha-256:[A-Za-z0-9_-]{43}")


def test_known_typs() -> None:
    assert KNOWN_TYPS == (
        MISSION_INTENT,
        MISSION_AUTHORITY_SET,
        MISSION_PROPOSED_AUTHORITY,
        MISSION_AUTHORITY_ENTRY,
    )
    assert MISSION_AUTHORITY_ENTRY == "mission-authority-entry"


@pytest.mark.parametrize("typ", [*KNOWN_TYPS, "x-custom"])
def test_format(typ: str) -> None:
    value = anchor(typ, ISS, {"goal": "g"})
    assert ANCHOR_RE.fullmatch(value)
    assert "=" not in value


def test_is_sha256_of_the_canonical_envelope() -> None:
    envelope = b'{"iss":"https://as.example.com","typ":"mission-intent","value":{"a":1,"b":[]}}'
    digest = base64.urlsafe_b64encode(hashlib.sha256(envelope).digest()).rstrip(b"=").decode()
    assert anchor(MISSION_INTENT, ISS, {"b": [], "a": 1}) == "sha-256:" + digest


def test_sha256_b64url() -> None:
    assert sha256_b64url(b"") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert len(sha256_b64url(b"x" * 1000)) == 43


def test_typ_and_iss_are_committed() -> None:
    value = [{"type": "mission_resource_access"}]
    hashes = {anchor(typ, ISS, value) for typ in KNOWN_TYPS}
    assert len(hashes) == len(KNOWN_TYPS)
    assert anchor(MISSION_INTENT, ISS, value) != anchor(MISSION_INTENT, ISS + "/", value)


@pytest.mark.parametrize(("typ", "iss"), [(MISSION_INTENT, ""), ("", ISS)])
def test_empty_typ_or_iss_refused(typ: str, iss: str) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        anchor(typ, iss, {})
