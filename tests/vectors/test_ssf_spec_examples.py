"""The specs' own examples (``tests/vectors/ssf/``) against what the transmitter has today.

Sources: OpenID SSF 1.0 Final, OpenID CAEP 1.0 Final, RFC 9493 (subject identifiers), RFC 8417
(SETs), RFC 8935 (push) and RFC 8936 (poll); ``tests/vectors/ssf/README.md`` lists every file.

* every vector file parses (no duplicate members) and re-serialises to an equal object;
* ``check_subject`` accepts every spec subject and refuses the derived invalid ones;
  ``subject_matches`` reproduces SSF §8.1.3.1;
* ``check_set_claims`` accepts the SSF-profiled example SETs (our profile is stricter in two
  declared ways: one string ``aud``, ``txn`` always) and refuses the RFC 8417 ones and every
  variant with ``sub``, ``exp``, two events or no ``sub_id``; signed with our keys, each verifies
  with joserfc (an independent JOSE library) to the same claims and ``typ: secevent+jwt``;
* CAEP: one validation function checks the spec's event objects and the ones our mapper emits;
* the management-API and delivery examples are checked for the rules they illustrate, so they
  are ready to be pushed through the stream service once it exists (see the README).
"""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from functools import cache
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import pytest
from joserfc import jws
from joserfc.jwk import KeySet, KeySetSerialization

from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.canonical import canonicalize
from mission_ledger.domain.errors import InvalidInput, MissionLedgerError
from mission_ledger.domain.stream import (
    DELIVERY_METHODS,
    STATUSES,
    check_status,
    check_subject,
    subject_included,
    subject_matches,
)
from mission_ledger.ledger import MissionLedger
from mission_ledger.ssf import CaepEvent, caep_events
from mission_ledger.ssf.keys import SUPPORTED_ALGORITHMS, MemoryKeyStore
from mission_ledger.ssf.rfc8417_set import (
    SET_TYP,
    InvalidSetRequest,
    SetVerificationError,
    check_set_claims,
    sign_set,
    verify_set,
)
from tests.integration.contract_fixtures import OPERATOR, T0, entry, open_child, open_mission

VECTORS = Path(__file__).resolve().parent / "ssf"
FILES = sorted(VECTORS.rglob("*.json"))
SOURCES = (
    "OpenID SSF 1.0 Final §",
    "OpenID CAEP 1.0 Final §",
    "RFC 9493 §",
    "RFC 8417 §",
    "RFC 8935 §",
    "RFC 8936 §",
    "derived from ",
)
KINDS = {
    "discovery-request",
    "fragment",
    "http-exchange",
    "invalid-subject",
    "jose-header",
    "registry",
    "set",
    "subject",
    "subject-match",
}
CAEP_URI = "https://schemas.openid.net/secevent/caep/event-type/"
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"


# --- loading -----------------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    names = [name for name, _ in pairs]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"duplicate members {duplicated}")
    return dict(pairs)


def _parse(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_no_duplicates)
    assert isinstance(doc, dict), path
    return doc


@cache
def _doc(relative: str) -> dict[str, Any]:
    return _parse(VECTORS / relative)


def _rel(path: Path) -> str:
    return path.relative_to(VECTORS).as_posix()


def _examples(kind: str) -> list[dict[str, Any]]:
    """Every example of every file of ``kind``, in file order."""
    found: list[dict[str, Any]] = []
    for path in FILES:
        doc = _doc(_rel(path))
        if doc["kind"] == kind:
            found.extend(doc["examples"])
    return found


def _example(example_id: str) -> dict[str, Any]:
    for path in FILES:
        for example in _doc(_rel(path))["examples"]:
            if example["id"] == example_id:
                return cast("dict[str, Any]", example)
    raise KeyError(example_id)


def _ids(examples: list[dict[str, Any]]) -> list[str]:
    return [e["id"] for e in examples]


SET_EXAMPLES = _examples("set")
PROFILED = [e for e in SET_EXAMPLES if not e["ssf_profile_violations"]]
NOT_PROFILED = [e for e in SET_EXAMPLES if e["ssf_profile_violations"]]


def _b64json(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def _decode(token: str) -> dict[str, Any]:
    header, payload, _ = token.split(".")
    return {"header": _b64json(header), "claims": _b64json(payload)}


# --- 1. every file: sourced, well-formed, round-trips -----------------------------------------


def test_every_vector_file_and_example_names_its_source() -> None:
    assert len(FILES) >= 30
    readme = (VECTORS / "README.md").read_text(encoding="utf-8")
    seen: set[str] = set()
    for path in FILES:
        doc = _doc(_rel(path))
        assert doc["source"].startswith(SOURCES), path
        assert doc["kind"] in KINDS, path
        assert doc["examples"], path
        assert f"`{_rel(path)}`" in readme, f"{_rel(path)} is not listed in the README"
        for example in doc["examples"]:
            assert example["id"] not in seen, example["id"]
            seen.add(example["id"])
            assert example["source"].startswith(SOURCES), example["id"]


@pytest.mark.parametrize("path", FILES, ids=_rel)
def test_vector_file_round_trips(path: Path) -> None:
    doc = _parse(path)
    assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc
    assert json.loads(canonicalize(doc)) == doc  # RFC 8785 form: same value, no float surprises
    # The files are kept in one layout, so a diff shows only content changes.
    assert path.read_text(encoding="utf-8") == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


# --- 2. subjects (RFC 9493, SSF §3, SSF §8.1.3.1) ---------------------------------------------


def _sub_ids_of_profiled_sets() -> Iterator[tuple[str, dict[str, Any]]]:
    for example in SET_EXAMPLES:
        claims = example["claims"]
        if not example["ssf_profile_violations"] and claims["sub_id"]["format"] != "catalog_item":
            yield example["id"], claims["sub_id"]


def _spec_subjects() -> list[tuple[str, dict[str, Any]]]:
    subjects = [(e["id"], e["subject"]) for e in _examples("subject")]
    subjects += list(_sub_ids_of_profiled_sets())
    for match in _examples("subject-match"):
        subjects.append((match["id"] + "/receiver", match["receiver_subject"]))
        subjects.append((match["id"] + "/event", match["event_subject"]))
    add = _example("ssf-8.1.3.2-add-subject")
    subjects.append((add["id"], add["request"]["body"]["subject"]))
    remove = _example("ssf-8.1.3.3-remove-subject")
    subjects.append((remove["id"] + "/corrected", remove["corrected_subject"]))
    return subjects


SPEC_SUBJECTS = _spec_subjects()


@pytest.mark.parametrize(("name", "subject"), SPEC_SUBJECTS, ids=[n for n, _ in SPEC_SUBJECTS])
def test_check_subject_accepts_every_spec_subject(name: str, subject: dict[str, Any]) -> None:
    assert check_subject(copy.deepcopy(subject)) == subject


def test_the_spec_subjects_cover_every_format() -> None:
    formats = {s["format"] for _, s in SPEC_SUBJECTS}
    assert formats == {
        "account",
        "email",
        "iss_sub",
        "opaque",
        "phone_number",
        "did",
        "uri",
        "aliases",
        "jwt_id",
        "saml_assertion_id",
        "ip-addresses",
        "complex",
    }


# Where each derived invalid subject must be refused, and why (field, message fragment).
REFUSALS: dict[str, tuple[str, str]] = {
    "invalid-not-an-object": ("subject", "is a JSON object"),
    "invalid-no-format": ("subject", "needs a format member"),
    "invalid-unknown-format": ("subject", "unsupported subject format 'catalog_item'"),
    "invalid-spec-slip-phone": ("subject", "unsupported subject format 'phone'"),
    "invalid-email-missing-member": ("subject.email", "needs the member 'email'"),
    "invalid-email-empty-member": ("subject.email", "non-empty string"),
    "invalid-iss-sub-missing-sub": ("subject.sub", "needs the member 'sub'"),
    "invalid-opaque-id-not-string": ("subject.id", "as a non-empty string"),
    "invalid-phone-number-missing-member": ("subject.phone_number", "needs the member"),
    "invalid-did-uses-uri-member": ("subject.url", "needs the member 'url'"),
    "invalid-account-missing-uri": ("subject.uri", "needs the member 'uri'"),
    "invalid-jwt-id-missing-jti": ("subject.jti", "needs the member 'jti'"),
    "invalid-saml-missing-assertion-id": ("subject.assertion_id", "needs the member"),
    "invalid-ip-addresses-empty": ("subject.ip-addresses", "1–20 IP addresses"),
    "invalid-ip-addresses-invalid": ("subject.ip-addresses[0]", "is not an IP address"),
    "invalid-aliases-empty": ("subject.identifiers", "1–20 subject identifiers"),
    "invalid-aliases-nested": ("subject.identifiers[1]", "cannot be nested in aliases"),
    "invalid-aliases-invalid-member": ("subject.identifiers[0].email", "needs the member"),
    "invalid-complex-empty": ("subject", "needs at least one member"),
    "invalid-complex-nested": ("subject.user", "cannot be nested"),
    "invalid-complex-in-aliases": ("subject.identifiers[0]", "cannot be nested"),
    "invalid-complex-member-not-object": ("subject.user", "is a JSON object"),
    "invalid-complex-member-invalid": ("subject.user.email", "needs the member 'email'"),
}
INVALID_SUBJECTS = _examples("invalid-subject")


@pytest.mark.parametrize("example", INVALID_SUBJECTS, ids=_ids(INVALID_SUBJECTS))
def test_check_subject_refuses_invalid_subjects(example: dict[str, Any]) -> None:
    field, fragment = REFUSALS[example["id"]]
    with pytest.raises(InvalidInput, match=re.escape(fragment)) as refused:
        check_subject(copy.deepcopy(example["subject"]))
    assert refused.value.field == field
    assert refused.value.http_status == 400


def test_every_invalid_subject_has_an_expected_refusal() -> None:
    assert set(REFUSALS) == set(_ids(INVALID_SUBJECTS))


def test_a_proprietary_format_is_refused_without_an_agreement() -> None:
    """SSF §3.4 allows formats agreed between the parties; we have agreed none, so §5's
    ``catalog_item`` example is refused as a subject (the SET itself is well formed)."""
    claims = _example("ssf-5-proprietary-subject-format")["claims"]
    with pytest.raises(InvalidInput, match="unsupported subject format 'catalog_item'"):
        check_subject(claims["sub_id"])
    check_set_claims(claims)


def test_the_remove_subject_example_uses_a_format_that_does_not_exist() -> None:
    """SSF §8.1.3.3 writes ``"format": "phone"``; RFC 9493 registers ``phone_number``."""
    example = _example("ssf-8.1.3.3-remove-subject")
    subject = example["request"]["body"]["subject"]
    assert subject == {"format": "phone", "phone_number": "+12065550123"}
    with pytest.raises(InvalidInput, match="unsupported subject format 'phone'"):
        check_subject(subject)
    corrected = example["corrected_subject"]
    assert corrected == {**subject, "format": "phone_number"}
    assert check_subject(corrected) == corrected


MATCHES = _examples("subject-match")


@pytest.mark.parametrize("example", MATCHES, ids=_ids(MATCHES))
def test_subject_matching_reproduces_ssf_8_1_3_1(example: dict[str, Any]) -> None:
    receiver, event = example["receiver_subject"], example["event_subject"]
    assert subject_matches(receiver, event) is example["match"]
    assert subject_matches(event, receiver) is example["match"]  # symmetric
    # Our rule needs a shared member; every spec example has one, so nothing contradicts it.
    assert (set(receiver) & set(event)) - {"format"}
    # A stream (default ALL subjects) where the receiver removed its subject: the event is
    # dropped exactly when the subjects match; re-adding it lets the event through again.
    removed = [{"subject": receiver, "included": False}]
    assert subject_included(removed, [event]) is not example["match"]
    readded = [*removed, {"subject": receiver, "included": True}]
    assert subject_included(readded, [event]) is True


def test_simple_subjects_match_only_when_identical() -> None:
    simple = [s for _, s in SPEC_SUBJECTS if s["format"] != "complex"]
    for a in simple:
        for b in simple:
            assert subject_matches(a, b) is (a == b)


def test_complex_subjects_sharing_no_member_do_not_match_by_our_rule() -> None:
    """SSF §8.1.3.1 read literally makes two complex subjects with disjoint members match (every
    member is absent from one side). No spec example shows that case; our rule deliberately
    requires at least one shared, identical member, so a subject about a device never matches
    one about a user."""
    user = {"format": "complex", "user": {"format": "email", "email": "jdoe@example.com"}}
    device = {"format": "complex", "device": {"format": "ip-addresses", "ip-addresses": ["::1"]}}
    assert subject_matches(user, device) is False


# --- 3. SETs: the SSF profile, our profile, signing ---------------------------------------------


# Where our transmitter's profile (``check_set_claims``) is stricter than SSF, per example:
# ``aud``: SSF §4.1.8 allows an array, we send the stream's one audience as a string;
# ``txn``: SSF §4.1.9 says SHOULD, our SETs always carry the ledger event id.
OUR_PROFILE_DEVIATIONS: dict[str, set[str]] = {
    "ssf-4.1.8-aud-array": {"aud"},
    "ssf-8.1.4.2-verification-set": {"txn"},
    "ssf-8.1.5-stream-updated-set": {"txn"},
}


def _ssf_violations(claims: Mapping[str, Any]) -> set[str]:
    """SSF 1.0 §3–4 rules, written independently of ``check_set_claims``."""
    found: set[str] = set()
    if "sub" in claims:
        found.add("sub")  # §4.1.2
    if "exp" in claims:
        found.add("exp")  # §4.1.7
    sub_id = claims.get("sub_id")
    if not isinstance(sub_id, dict) or not isinstance(sub_id.get("format"), str):
        found.add("no_sub_id")  # §3.1
    events = claims.get("events")
    if not isinstance(events, dict) or len(events) != 1:
        found.add("events_count")  # §4.2.1 (a MUST for CAEP interop)
    if not all(name in claims for name in ("iss", "iat", "jti")):
        found.add("rfc8417_claims")
    return found


def _our_profile(example: Mapping[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """The example with our two declared deviations applied, and which ones were needed."""
    claims = copy.deepcopy(dict(example["claims"]))
    needed: set[str] = set()
    if isinstance(claims["aud"], list):
        needed.add("aud")
        claims["aud"] = claims["aud"][0]
    if "txn" not in claims:
        needed.add("txn")
        claims["txn"] = f"txn-{claims['jti']}"
    return claims, needed


@pytest.mark.parametrize("example", SET_EXAMPLES, ids=_ids(SET_EXAMPLES))
def test_declared_ssf_profile_violations_are_right(example: dict[str, Any]) -> None:
    assert _ssf_violations(example["claims"]) == set(example["ssf_profile_violations"])


@pytest.mark.parametrize("example", PROFILED, ids=_ids(PROFILED))
def test_check_set_claims_accepts_the_ssf_example_sets(example: dict[str, Any]) -> None:
    claims, needed = _our_profile(example)
    assert needed == OUR_PROFILE_DEVIATIONS.get(example["id"], set())
    check_set_claims(claims)
    for deviation in needed:  # as published, only our stricter rule refuses it
        with pytest.raises(ValueError, match=f"'{deviation}'"):
            check_set_claims({**claims, deviation: example["claims"].get(deviation)})


@pytest.mark.parametrize("example", NOT_PROFILED, ids=_ids(NOT_PROFILED))
def test_check_set_claims_refuses_the_sets_that_predate_ssf(example: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="a SET"):
        check_set_claims(example["claims"])
    claims, _ = _our_profile(example)  # still refused once aud/txn are made ours
    with pytest.raises(ValueError, match="a SET"):
        check_set_claims(claims)


def _variants(claims: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    ((event_type, _),) = claims["events"].items()
    other = STREAM_UPDATED if event_type == VERIFICATION else VERIFICATION
    yield "sub", "must not carry sub", {**claims, "sub": claims["sub_id"].get("id", "someone")}
    yield "exp", "must not carry exp", {**claims, "exp": claims["iat"] + 3600}
    two = {**claims["events"], other: {"state": "x"} if other == VERIFICATION else {}}
    yield "events_count", "exactly one event, got 2", {**claims, "events": two}
    no_sub_id = {k: v for k, v in claims.items() if k != "sub_id"}
    yield "no_sub_id", "'sub_id'", no_sub_id


@pytest.mark.parametrize("example", PROFILED, ids=_ids(PROFILED))
def test_check_set_claims_refuses_variants_that_break_the_profile(
    example: dict[str, Any],
) -> None:
    claims, _ = _our_profile(example)
    for violation, message, variant in _variants(claims):
        assert _ssf_violations(variant) == {violation}
        with pytest.raises(ValueError, match=re.escape(message)):
            check_set_claims(variant)


@pytest.fixture(scope="module")
def keys() -> MemoryKeyStore:
    store = MemoryKeyStore(rsa_bits=2048)
    store.ensure_keys()
    return store


@pytest.mark.parametrize("example", PROFILED, ids=_ids(PROFILED))
def test_example_sets_signed_with_our_keys_verify_with_joserfc(
    keys: MemoryKeyStore, example: dict[str, Any]
) -> None:
    claims, _ = _our_profile(example)
    keyset = KeySet.import_key_set(cast("KeySetSerialization", keys.jwks()))
    for alg in SUPPORTED_ALGORITHMS:
        key = keys.active(alg)
        token = sign_set(claims, key)
        decoded = jws.deserialize_compact(token, keyset, algorithms=[alg])
        assert decoded.protected == {"alg": alg, "kid": key.kid, "typ": "secevent+jwt"}
        assert json.loads(decoded.payload) == claims
        assert verify_set(token, keys.jwks(), issuer=claims["iss"], audience=claims["aud"]) == (
            claims
        )


def test_the_explicit_typing_header_is_ours() -> None:
    """SSF §4.1.1's header shows ``typ`` with HS256; we keep the ``typ`` and pin the alg."""
    header = _example("ssf-4.1.1-explicit-typing-header")["header"]
    assert header["typ"] == SET_TYP == "secevent+jwt"
    assert header["alg"] not in SUPPORTED_ALGORITHMS


def test_rfc8417_unsecured_example_decodes_to_its_claims_and_is_refused(
    keys: MemoryKeyStore,
) -> None:
    example = _example("rfc8417-2.4-scim-create")
    token = example["compact"]
    assert _decode(token) == {"header": example["header"], "claims": example["claims"]}
    assert token.endswith(".")  # unsecured: empty signature
    with pytest.raises(InvalidSetRequest, match="'none' is not accepted"):
        verify_set(token, keys.jwks(), issuer="https://scim.example.com", audience="x")


# --- 4. management API examples: the rules they illustrate (ready for the stream service) ----

TRANSMITTER_SUPPLIED = (
    "stream_id",
    "iss",
    "aud",
    "events_supported",
    "events_delivered",
    "min_verification_interval",
    "inactivity_timeout",
)
RECEIVER_SUPPLIED = ("events_requested", "delivery", "description")
REQUIRED_CONFIG = ("stream_id", "iss", "aud", "events_delivered", "delivery")


def _query(target: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(target).query)


def _check_configuration(config: Mapping[str, Any]) -> None:
    for member in REQUIRED_CONFIG:
        assert member in config, member
    assert UUID(hex=config["stream_id"]).hex == config["stream_id"]  # our stream_id form
    assert config["delivery"]["method"] in DELIVERY_METHODS
    supported, requested = config["events_supported"], config["events_requested"]
    assert config["events_delivered"] == [e for e in requested if e in supported]
    assert set(config) <= {*TRANSMITTER_SUPPLIED, *RECEIVER_SUPPLIED}


def test_metadata_example() -> None:
    example = _example("ssf-7.2.3-metadata-response")
    assert example["request"]["target"] == "/.well-known/ssf-configuration"
    response = example["response"]
    assert response["status"] == 200
    assert response["headers"]["Content-Type"] == "application/json"
    metadata = response["body"]
    created = _example("ssf-8.1.1.1-create-stream")["response"]["body"]
    assert (
        metadata["issuer"] == created["iss"] == f"https://{example['request']['headers']['Host']}"
    )
    endpoints = [v for k, v in metadata.items() if k == "jwks_uri" or k.endswith("_endpoint")]
    assert len(endpoints) == 6
    assert all(urlsplit(url).scheme == "https" for url in [metadata["issuer"], *endpoints])
    assert all(value != [] for value in metadata.values())  # empty arrays are omitted
    assert metadata["delivery_methods_supported"] == list(DELIVERY_METHODS)
    assert metadata["default_subjects"] in ("ALL", "NONE")
    assert all(set(s) == {"spec_urn"} for s in metadata["authorization_schemes"])
    spec_version = _example("ssf-7.1-spec-version")["fragment"]
    assert spec_version == {"spec_version": metadata["spec_version"]} == {"spec_version": "1_0"}
    assert _example("ssf-7.1.1-spec-urn")["fragment"] in metadata["authorization_schemes"]


def _well_known(issuer: str, name: str = "ssf-configuration") -> tuple[str, str]:
    """SSF §7.2: insert the well-known path between host and (trailing-slash-free) path."""
    parts = urlsplit(issuer)
    return parts.netloc, f"/.well-known/{name}" + parts.path.rstrip("/")


DISCOVERY = _examples("discovery-request")


@pytest.mark.parametrize("example", DISCOVERY, ids=_ids(DISCOVERY))
def test_well_known_request_examples(example: dict[str, Any]) -> None:
    name = "risc-configuration" if example.get("legacy") else "ssf-configuration"
    host, path = _well_known(example["issuer"], name)
    assert example["request"]["headers"]["Host"] == host
    assert example["request"]["target"] == path
    assert example["request"]["method"] == "GET"


def test_create_stream_example() -> None:
    example = _example("ssf-8.1.1.1-create-stream")
    request, response = example["request"], example["response"]
    assert (request["method"], response["status"]) == ("POST", 201)
    assert set(request["body"]) <= set(RECEIVER_SUPPLIED)
    config = response["body"]
    _check_configuration(config)
    for member, value in request["body"].items():
        assert config[member] == value
    # type_4 requested but not supported: ignored; type_1 supported but not requested.
    assert "urn:example:secevent:events:type_4" not in config["events_delivered"]
    assert "urn:example:secevent:events:type_1" not in config["events_delivered"]


def test_read_stream_examples() -> None:
    created = _example("ssf-8.1.1.1-create-stream")["response"]["body"]
    one = _example("ssf-8.1.1.2-read-stream")
    assert _query(one["request"]["target"]) == {"stream_id": [created["stream_id"]]}
    assert one["response"]["body"] == created
    listings = {
        "ssf-8.1.1.2-read-streams-many": 2,
        "ssf-8.1.1.2-read-streams-one": 1,
        "ssf-8.1.1.2-read-streams-none": 0,
    }
    for example_id, count in listings.items():
        example = _example(example_id)
        assert _query(example["request"]["target"]) == {}
        body = example["response"]["body"]
        assert isinstance(body, list)
        assert len(body) == count
        for config in body:
            _check_configuration(config)
        assert len({c["stream_id"] for c in body}) == count


def test_update_stream_example_is_a_merge() -> None:
    before = _example("ssf-8.1.1.1-create-stream")["response"]["body"]
    example = _example("ssf-8.1.1.3-update-stream")
    request, response = example["request"], example["response"]
    assert (request["method"], response["status"]) == ("PATCH", 200)
    assert request["body"]["stream_id"] == before["stream_id"]
    changes = {k: v for k, v in request["body"].items() if k in RECEIVER_SUPPLIED}
    assert response["body"] == {**before, **changes}  # absent members unchanged
    _check_configuration(response["body"])


def test_replace_stream_example_is_a_replacement() -> None:
    before = _example("ssf-8.1.1.1-create-stream")["response"]["body"]
    example = _example("ssf-8.1.1.4-replace-stream")
    request, response = example["request"], example["response"]
    assert (request["method"], response["status"]) == ("PUT", 200)
    kept = {k: v for k, v in before.items() if k in TRANSMITTER_SUPPLIED}
    supplied = {k: v for k, v in request["body"].items() if k in RECEIVER_SUPPLIED}
    assert response["body"] == {**kept, **supplied}  # absent receiver members would be gone
    _check_configuration(response["body"])


def test_delete_stream_example() -> None:
    example = _example("ssf-8.1.1.5-delete-stream")
    assert example["request"]["method"] == "DELETE"
    assert _query(example["request"]["target"]) == {
        "stream_id": ["f67e39a0a4d34d56b3aa1bc4cff0069f"]
    }
    assert example["response"]["status"] == 204
    assert "body" not in example["response"]


def test_status_examples() -> None:
    read = _example("ssf-8.1.2.1-read-status")
    assert _query(read["request"]["target"]) == {
        "stream_id": [read["response"]["body"]["stream_id"]]
    }
    assert check_status(read["response"]["body"]["status"]) in STATUSES
    assert set(read["response"]["body"]) == {"stream_id", "status", "reason"}
    bare = _example("ssf-8.1.2.2-update-status-without-reason")["request"]["body"]
    assert set(bare) == {"stream_id", "status"}
    update = _example("ssf-8.1.2.2-update-status-with-reason")
    assert check_status(update["request"]["body"]["status"]) == "paused"
    assert update["response"]["status"] == 200
    assert update["response"]["body"] == update["request"]["body"]  # the same fields echoed


def test_subject_request_examples() -> None:
    add = _example("ssf-8.1.3.2-add-subject")
    assert set(add["request"]["body"]) == {"stream_id", "subject", "verified"}
    assert add["request"]["body"]["verified"] is True
    assert check_subject(add["request"]["body"]["subject"])
    assert (add["response"]["status"], "body" in add["response"]) == (200, False)
    remove = _example("ssf-8.1.3.3-remove-subject")
    assert set(remove["request"]["body"]) == {"stream_id", "subject"}
    assert (remove["response"]["status"], "body" in remove["response"]) == (204, False)


def test_verification_request_and_its_set_agree() -> None:
    stream_id = _example("ssf-8.1.1.1-create-stream")["response"]["body"]["stream_id"]
    request = _example("ssf-8.1.4.2-verification-request")
    assert request["response"]["status"] == 204
    body = request["request"]["body"]
    verification = _example(request["resulting_set"])["claims"]
    assert body["stream_id"] == stream_id
    assert verification["sub_id"] == {"format": "opaque", "id": stream_id}
    assert verification["events"] == {VERIFICATION: {"state": body["state"]}}
    updated = _example("ssf-8.1.5-stream-updated-set")["claims"]
    assert updated["sub_id"] == {"format": "opaque", "id": stream_id}
    assert check_status(updated["events"][STREAM_UPDATED]["status"]) in STATUSES


# --- 5. delivery examples (RFC 8935 push, RFC 8936 poll) ----------------------------------------


def _error_codes() -> set[str]:
    return {e["err"] for e in _examples("registry")}


def _subclasses(cls: type[MissionLedgerError]) -> Iterator[type[MissionLedgerError]]:
    yield cls
    for sub in cls.__subclasses__():
        yield from _subclasses(sub)


def test_error_bodies_use_registered_codes_and_so_do_our_set_errors() -> None:
    codes = _error_codes()
    assert "invalid_state" in codes  # registered by SSF §11
    push = _example_list("delivery/rfc8935-push.json")
    bodies = [e["response"]["body"] for e in push if "body" in e.get("response", {})]
    assert len(bodies) == 3
    for body in bodies:
        assert set(body) == {"err", "description"}
        assert body["err"] in codes
        assert isinstance(body["description"], str)
    for cls in _subclasses(SetVerificationError):
        assert cls.code in codes, cls


def _example_list(relative: str) -> list[dict[str, Any]]:
    return cast("list[dict[str, Any]]", _doc(relative)["examples"])


def test_push_transmission_example(keys: MemoryKeyStore) -> None:
    example = _example("rfc8935-2.1-transmission-request")
    request = example["request"]
    assert request["headers"]["Content-Type"] == "application/secevent+jwt"
    assert request["headers"]["Accept"] == "application/json"
    assert _decode(request["body_text"]) == example["decoded"]
    assert example["decoded"]["header"]["typ"] == SET_TYP
    assert _ssf_violations(example["decoded"]["claims"]) == set(example["ssf_profile_violations"])
    with pytest.raises(InvalidSetRequest) as refused:  # HS256: never accepted
        verify_set(
            request["body_text"], keys.jwks(), issuer="https://idp.example.com/", audience="a"
        )
    assert refused.value.code in _error_codes()
    success = _example("rfc8935-2.2-success-response")["response"]
    assert success == {"status": 202, "reason": "Accepted"}  # no body


def test_poll_request_examples() -> None:
    response = _example("rfc8936-2.5-poll-response")
    delivered = set(response["response"]["body"]["sets"])
    variants = set()
    for example in _example_list("delivery/rfc8936-poll.json"):
        if "request" not in example:
            continue
        body, headers = example["request"]["body"], example["request"]["headers"]
        variants.add(example["variant"])
        assert example["request"]["method"] == "POST"
        assert headers["Content-Type"] == "application/json"
        assert set(body) <= {"maxEvents", "returnImmediately", "ack", "setErrs"}
        if "maxEvents" in body:
            assert isinstance(body["maxEvents"], int)
            assert body["maxEvents"] >= 0
        assert isinstance(body.get("returnImmediately", False), bool)
        assert set(body.get("ack", [])) <= delivered
        errors = body.get("setErrs", {})
        assert set(errors) <= delivered
        assert not set(errors) & set(body.get("ack", []))
        for error in errors.values():
            assert set(error) == {"err", "description"}
            assert error["err"] in _error_codes()
        if errors:
            assert "Content-Language" in headers  # RFC 8936 §2.6
        if example["variant"] == "acknowledge-only":
            assert body["maxEvents"] == 0
            assert body["returnImmediately"] is True  # else it would still long-poll
    assert variants == {"poll-only", "acknowledge-only", "combined"}


def test_poll_response_examples(keys: MemoryKeyStore) -> None:
    example = _example("rfc8936-2.5-poll-response")
    sets = example["response"]["body"]["sets"]
    assert set(sets) == set(example["decoded"]) == set(example["same_claims_as"])
    for jti, token in sets.items():
        decoded = _decode(token)
        assert decoded == example["decoded"][jti]
        assert decoded["claims"]["jti"] == jti  # member name = the SET's jti
        assert decoded["claims"] == _example(example["same_claims_as"][jti])["claims"]
        with pytest.raises(InvalidSetRequest):  # unsecured, no typ
            verify_set(token, keys.jwks(), issuer="https://scim.example.com", audience="a")
    empty = _example("rfc8936-2.5-no-sets-response")["response"]["body"]
    assert empty == {"sets": {}}
    assert "body" not in _example("rfc8936-2.5.1-poll-error-response")["response"]


# --- 6. CAEP 1.0: one validator for the spec's events and ours ---------------------------------

INITIATING_ENTITIES = ("admin", "user", "policy", "system")
LANGUAGE_TAG = re.compile(r"[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*")
Check = tuple[bool, Callable[[Any], bool], str]  # required, check, what it must be


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value)


def _one_of(*values: str) -> Callable[[Any], bool]:
    return lambda value: value in values


def _language_map(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and bool(value)
        and all(LANGUAGE_TAG.fullmatch(tag) and _text(text) for tag, text in value.items())
    )


def _claims(value: Any) -> bool:
    return isinstance(value, dict) and bool(value)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(_text(v) for v in value)


OPTIONAL_TEXT: Check = (False, _text, "a non-empty string")
COMMON_MEMBERS: dict[str, Check] = {  # CAEP §2
    "event_timestamp": (False, _number, "a JSON number (seconds since the epoch)"),
    "initiating_entity": (False, _one_of(*INITIATING_ENTITIES), "admin, user, policy or system"),
    "reason_admin": (False, _language_map, "an object of language tag → message"),
    "reason_user": (False, _language_map, "an object of language tag → message"),
}
LEVELS = ("LOW", "MEDIUM", "HIGH")
COMPLIANCE = ("compliant", "not-compliant")
EVENT_MEMBERS: dict[str, dict[str, Check]] = {  # CAEP §3.x.1
    "session-revoked": {},
    "token-claims-change": {"claims": (True, _claims, "an object of one or more claims")},
    "credential-change": {
        "credential_type": (True, _text, "a credential type string"),
        "change_type": (True, _one_of("create", "revoke", "update", "delete"), "a change type"),
        "friendly_name": OPTIONAL_TEXT,
        "x509_issuer": OPTIONAL_TEXT,
        "x509_serial": OPTIONAL_TEXT,
        "fido2_aaguid": OPTIONAL_TEXT,
    },
    "assurance-level-change": {
        "namespace": (True, _text, "a namespace string"),
        "current_level": (True, _text, "a level string"),
        "previous_level": OPTIONAL_TEXT,
        "change_direction": (False, _one_of("increase", "decrease"), "increase or decrease"),
    },
    "device-compliance-change": {
        "previous_status": (True, _one_of(*COMPLIANCE), "compliant or not-compliant"),
        "current_status": (True, _one_of(*COMPLIANCE), "compliant or not-compliant"),
    },
    "session-established": {
        "fp_ua": OPTIONAL_TEXT,
        "acr": OPTIONAL_TEXT,
        "amr": (False, _strings, "an array of strings"),
        "ext_id": OPTIONAL_TEXT,
    },
    "session-presented": {"fp_ua": OPTIONAL_TEXT, "ext_id": OPTIONAL_TEXT},
    "risk-level-change": {
        "principal": (True, _text, "a principal string"),
        "current_level": (True, _one_of(*LEVELS), "LOW, MEDIUM or HIGH"),
        "previous_level": (False, _one_of(*LEVELS), "LOW, MEDIUM or HIGH"),
        "risk_reason": OPTIONAL_TEXT,
    },
}


def caep_event_problems(event_type: str, event: Mapping[str, Any]) -> list[str]:
    """What is wrong with a CAEP 1.0 event object (empty when it is right).

    Required members present, every member of the type CAEP defines for it, and no member CAEP
    does not define for this event type (receivers would ignore one; we must not send one).
    """
    name = event_type.removeprefix(CAEP_URI)
    if name == event_type or name not in EVENT_MEMBERS:
        return [f"{event_type} is not a CAEP 1.0 event type"]
    members = {**COMMON_MEMBERS, **EVENT_MEMBERS[name]}
    problems = []
    for member, (required, check, expected) in members.items():
        if member not in event:
            if required:
                problems.append(f"{name}: {member} is required")
        elif not check(event[member]):
            problems.append(f"{name}: {member} must be {expected}, got {event[member]!r}")
    problems += [f"{name}: {m} is not a CAEP member" for m in event if m not in members]
    return problems


def _caep_sets() -> list[dict[str, Any]]:
    return [e for e in SET_EXAMPLES if next(iter(e["claims"]["events"])).startswith(CAEP_URI)]


CAEP_SETS = _caep_sets()


@pytest.mark.parametrize("example", CAEP_SETS, ids=_ids(CAEP_SETS))
def test_caep_spec_examples_carry_what_caep_requires(example: dict[str, Any]) -> None:
    ((event_type, event),) = example["claims"]["events"].items()
    assert caep_event_problems(event_type, event) == []
    assert not example["ssf_profile_violations"]


def test_every_caep_event_type_has_spec_examples() -> None:
    files = [d for d in map(_doc, [_rel(p) for p in FILES]) if "event_type" in d]
    assert {d["event_type"].removeprefix(CAEP_URI) for d in files} == set(EVENT_MEMBERS)
    for doc in files:
        for example in doc["examples"]:
            assert list(example["claims"]["events"]) == [doc["event_type"]]
    assert len(CAEP_SETS) == 17  # 13 in CAEP §3, and 4 of the 6 SETs of SSF §5


def test_caep_optional_claim_examples() -> None:
    fragments = [e["fragment"] for e in _examples("fragment") if e["id"].startswith("caep-")]
    assert [set(f) for f in fragments] == [{"reason_admin"}, {"reason_user"}]
    for fragment in fragments:
        assert caep_event_problems(CAEP_URI + "session-revoked", fragment) == []


def test_the_caep_validator_is_not_vacuous() -> None:
    revoked = _example("caep-3.1.2-session-revoked-2")["claims"]["events"]
    ((uri, event),) = revoked.items()
    broken = {
        "initiating_entity": "robot",
        "reason_admin": "Landspeed Policy Violation",
        "reason_user": {"": "no language"},
        "event_timestamp": "1615304991",
    }
    for member, value in broken.items():
        assert caep_event_problems(uri, {**event, member: value}), member
    assert caep_event_problems(uri, {**event, "event_timestamp": True})
    assert caep_event_problems(uri, {**event, "subject_type": "x"})
    claims_change = CAEP_URI + "token-claims-change"
    assert caep_event_problems(claims_change, {"event_timestamp": 1}) == [
        "token-claims-change: claims is required"
    ]
    assert caep_event_problems(claims_change, {"claims": {}})
    assert caep_event_problems("https://example.com/other", {})


def _shape(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if _number(value):
        return "number"
    return {str: "string", list: "array", dict: "object"}[type(value)]


def _deep_shape(value: Any) -> tuple[str, tuple[str, ...]]:
    """The JSON type, and for objects and arrays the sorted types of their values."""
    if isinstance(value, dict):
        return "object", tuple(sorted({_shape(v) for v in value.values()}))
    if isinstance(value, list):
        return "array", tuple(sorted({_shape(v) for v in value}))
    return _shape(value), ()


@pytest.fixture(scope="module")
def emitted() -> list[CaepEvent]:
    """The CAEP events our mapper emits for a real in-memory ledger history."""
    ledger = MissionLedger(Settings(database_url="memory:"), clock=FixedClock(T0))
    clock = ledger.clock
    assert isinstance(clock, FixedClock)
    root = open_mission(ledger)
    child = open_child(ledger, root)
    ledger.suspend(root, actor="operator:olga", reason="check")  # + the child, by policy
    ledger.resume(root, actor="operator:olga")
    ledger.narrow(
        root,
        [entry(["invoices.read"], delegation=None)],
        actor=OPERATOR,
        reason="read only",
    )
    ledger.revoke(root, actor="operator:olga", reason="done")  # the child cascades
    short = open_mission(ledger)
    clock.advance(timedelta(days=31))
    ledger.expire_due()
    found: list[CaepEvent] = []
    for mission_id in (root, child, short):
        for event in ledger.events.get(UUID(mission_id)):
            doc = ledger.mission_as_of(mission_id, version=event.originator_version)
            found.extend(caep_events(event, doc))
    return found


def test_our_caep_events_have_the_spec_examples_member_types(emitted: list[CaepEvent]) -> None:
    assert {c.uri.removeprefix(CAEP_URI) for c in emitted} == {
        "session-revoked",
        "token-claims-change",
    }
    assert {c.event["initiating_entity"] for c in emitted} >= {"admin", "policy", "system"}
    for caep in emitted:
        assert caep_event_problems(caep.uri, caep.event) == []
        spec_events = [
            e["claims"]["events"][caep.uri] for e in CAEP_SETS if caep.uri in e["claims"]["events"]
        ]
        for member, value in caep.event.items():
            spec_values = [e[member] for e in spec_events if member in e]
            assert spec_values, f"no spec example of {caep.uri} shows {member}"
            assert {_shape(v) for v in spec_values} == {_shape(value)}, member
            assert _deep_shape(value) in {_deep_shape(v) for v in spec_values}, member


def test_our_caep_subjects_have_the_spec_examples_member_formats(emitted: list[CaepEvent]) -> None:
    spec_members = {
        (name, member["format"])
        for e in CAEP_SETS
        if e["claims"]["sub_id"]["format"] == "complex"
        for name, member in e["claims"]["sub_id"].items()
        if name != "format"
    }
    for caep in emitted:
        assert check_subject(caep.sub_id) == caep.sub_id
        assert caep.sub_id["format"] == "complex"
        for name, member in caep.sub_id.items():
            if name != "format":
                assert (name, member["format"]) in spec_members
