"""The SSF Stream aggregate on its own: subjects, matching, status, verification, the chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import uuid4

import pytest

from mission_ledger.domain.chain import compute_hash, genesis_hash
from mission_ledger.domain.errors import InvalidInput, TooManyRequests
from mission_ledger.domain.stream import (
    MAX_SUBJECT_OPERATIONS,
    POLL,
    PUSH,
    Stream,
    check_capabilities,
    check_subject,
    check_uri_list,
    subject_included,
    subject_matches,
)

T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
M1 = {"format": "opaque", "id": "m1"}
M2 = {"format": "opaque", "id": "m2"}


def stream(**overrides: Any) -> Stream:
    fields: dict[str, Any] = {
        "stream_id": uuid4(),
        "receiver_id": str(uuid4()),
        "receiver_name": "erp",
        "aud": "https://erp.example.com",
        "resources": ["https://erp.example.com/"],
        "all_missions": False,
        "delivery_method": POLL,
        "endpoint_url": None,
        "authorization_fingerprint": None,
        "events_requested": ["urn:a"],
        "events_delivered": ["urn:a"],
        "description": None,
        "signing_alg": "RS256",
        "mission_capabilities": [],
        "min_verification_interval": 30,
        "actor": "receiver:erp",
        "now": T0,
    }
    fields.update(overrides)
    return Stream.create(**fields)


def complex_subject(**members: dict[str, str]) -> dict[str, Any]:
    return {"format": "complex", **members}


def test_created_stream_is_enabled_chained_and_has_a_hex_id() -> None:
    s = stream()
    assert s.status == "enabled"
    assert s.reason is None
    assert not s.deleted
    assert len(s.stream_id) == 32
    assert s.stream_id == s.id.hex
    (event,) = s.pending_events
    assert event.prev_hash == genesis_hash(s.id)
    assert event.hash == compute_hash(event)
    assert type(event).TOPIC == "mission_ledger.StreamCreated.v1"


def test_push_needs_an_endpoint_and_poll_refuses_one() -> None:
    with pytest.raises(InvalidInput) as error:
        stream(delivery_method=PUSH)
    assert error.value.field == "delivery.endpoint_url"
    with pytest.raises(InvalidInput):
        stream(endpoint_url="https://receiver.example.com/events")
    assert stream(delivery_method=PUSH, endpoint_url="https://r.example/ev").endpoint_url


def test_unknown_method_and_alg_are_refused() -> None:
    with pytest.raises(InvalidInput) as error:
        stream(delivery_method="urn:example:smoke-signals")
    assert error.value.field == "delivery.method"
    with pytest.raises(InvalidInput) as error:
        stream(signing_alg="HS256")
    assert error.value.field == "set_signing_alg"


@pytest.mark.parametrize(
    "subject",
    [
        {"format": "account", "uri": "acct:example.user@service.example.com"},
        {"format": "email", "email": "user@example.com"},
        {"format": "iss_sub", "iss": "https://issuer.example.com/", "sub": "145234573"},
        {"format": "opaque", "id": "11112222333344445555"},
        {"format": "phone_number", "phone_number": "+12065550100"},
        {"format": "did", "url": "did:example:123456"},
        {"format": "uri", "uri": "https://user.example.com/"},
        {
            "format": "aliases",
            "identifiers": [
                {"format": "email", "email": "user@example.com"},
                {"format": "phone_number", "phone_number": "+12065550100"},
            ],
        },
        {"format": "jwt_id", "iss": "https://idp.example.com", "jti": "abc"},
        {"format": "saml_assertion_id", "issuer": "https://idp", "assertion_id": "_8e8dc5f6"},
        {"format": "ip-addresses", "ip-addresses": ["10.29.37.75", "2001:db8::1"]},
        complex_subject(
            user={"format": "email", "email": "bar@example.com"},
            tenant={"format": "iss_sub", "iss": "https://example.com/idp1", "sub": "1234"},
        ),
    ],
)
def test_subject_formats_are_accepted(subject: dict[str, Any]) -> None:
    assert check_subject(subject) == subject


@pytest.mark.parametrize(
    ("subject", "field"),
    [
        ("m1", "subject"),
        ({"id": "m1"}, "subject"),
        ({"format": "opaque"}, "subject.id"),
        ({"format": "opaque", "id": ""}, "subject.id"),
        ({"format": "email", "email": 5}, "subject.email"),
        ({"format": "phone", "phone": "+1"}, "subject"),
        ({"format": "aliases", "identifiers": []}, "subject.identifiers"),
        (
            {"format": "aliases", "identifiers": [{"format": "aliases", "identifiers": [M1]}]},
            "subject.identifiers[0]",
        ),
        ({"format": "ip-addresses", "ip-addresses": ["not-an-ip"]}, "subject.ip-addresses[0]"),
        (complex_subject(), "subject"),
        (complex_subject(user={"format": "complex", "session": M1}), "subject.user"),
        (complex_subject(user={"format": "opaque"}), "subject.user.id"),
    ],
)
def test_malformed_subjects_are_refused_naming_the_member(subject: Any, field: str) -> None:
    with pytest.raises(InvalidInput) as error:
        check_subject(subject)
    assert error.value.field == field


def test_matching_follows_ssf_8_1_3_1() -> None:
    user = {"format": "email", "email": "u@example.com"}
    tenant = {"format": "opaque", "id": "T"}
    device = {"format": "opaque", "id": "D"}
    g1, g2 = {"format": "opaque", "id": "G1"}, {"format": "opaque", "id": "G2"}
    assert subject_matches(M1, dict(M1))
    assert not subject_matches(M1, M2)
    assert not subject_matches(M1, complex_subject(session=M1))  # simple vs complex: not identical
    assert subject_matches(
        complex_subject(tenant=tenant), complex_subject(tenant=tenant, user=user)
    )
    assert subject_matches(complex_subject(user=user, device=device), complex_subject(user=user))
    assert not subject_matches(
        complex_subject(user=user, group=g1), complex_subject(user=user, group=g2)
    )
    # ours: two complex subjects with no member in common do not match
    assert not subject_matches(complex_subject(user=user), complex_subject(session=M1))


def test_latest_matching_operation_decides_and_default_is_all() -> None:
    forms = [M1, complex_subject(session=M1, user={"format": "opaque", "id": "alice"})]
    assert subject_included([], forms)
    removed_user = {"subject": complex_subject(user={"format": "opaque", "id": "alice"})}
    ops = [{**removed_user, "included": False}]
    assert not subject_included(ops, forms)
    ops.append({"subject": M1, "included": True})  # re-include this Mission only
    assert subject_included(ops, forms)
    assert not subject_included(
        ops, [M2, complex_subject(user={"format": "opaque", "id": "alice"})]
    )


def test_add_and_remove_record_events_and_repeat_is_a_no_op() -> None:
    s = stream()
    assert s.remove_subject(subject=M1, actor="receiver:erp", now=T0)
    assert not s.remove_subject(subject=dict(M1), actor="receiver:erp", now=T0)
    assert not s.includes([M1])
    assert s.includes([M2])
    assert s.add_subject(subject=M1, verified=True, actor="receiver:erp", now=T0)
    assert s.includes([M1])
    assert [op["included"] for op in s.subject_operations] == [True]  # one entry per subject
    topics = [type(e).TOPIC for e in s.pending_events]
    assert topics[-2:] == [
        "mission_ledger.StreamSubjectRemoved.v1",
        "mission_ledger.StreamSubjectAdded.v1",
    ]


def test_re_adding_after_a_broader_removal_is_recorded() -> None:
    s = stream()
    alice = complex_subject(user={"format": "opaque", "id": "alice"})
    mission = complex_subject(session=M1, user={"format": "opaque", "id": "alice"})
    s.add_subject(subject=mission, verified=True, actor="receiver:erp", now=T0)
    s.remove_subject(subject=alice, actor="receiver:erp", now=T0)
    assert not s.includes([mission])
    assert s.add_subject(subject=mission, verified=True, actor="receiver:erp", now=T0)
    assert s.includes([mission])


def test_subject_operations_are_bounded() -> None:
    s = stream()
    s.subject_operations = [
        {"subject": {"format": "opaque", "id": str(i)}, "included": False}
        for i in range(MAX_SUBJECT_OPERATIONS)
    ]
    with pytest.raises(InvalidInput):
        s.remove_subject(subject=M1, actor="receiver:erp", now=T0)
    # an operation on a subject already tracked still works
    assert s.add_subject(subject={"format": "opaque", "id": "0"}, verified=True, actor="r", now=T0)


def test_status_changes_keep_reason_and_initiator() -> None:
    s = stream()
    assert s.set_status(
        status="paused", reason="maintenance", initiator="receiver", actor="r", now=T0
    )
    assert (s.status, s.reason) == ("paused", "maintenance")
    assert not s.set_status(
        status="paused", reason="maintenance", initiator="receiver", actor="r", now=T0
    )
    assert s.set_status(status="disabled", reason=None, initiator="transmitter", actor="o", now=T0)
    event = s.pending_events[-1]
    assert isinstance(event, Stream.StatusChanged)
    assert (event.prior_status, event.status, event.initiator) == (
        "paused",
        "disabled",
        "transmitter",
    )
    with pytest.raises(InvalidInput) as error:
        s.set_status(status="stopped", reason=None, initiator="receiver", actor="r", now=T0)
    assert error.value.field == "status"


def test_verification_respects_min_interval() -> None:
    s = stream(min_verification_interval=30)
    s.request_verification(state="abc", actor="r", now=T0)
    with pytest.raises(TooManyRequests) as error:
        s.request_verification(state=None, actor="r", now=T0 + timedelta(seconds=10))
    assert error.value.retry_after == 20
    assert error.value.http_status == 429
    s.request_verification(state=None, actor="r", now=T0 + timedelta(seconds=30))
    states = [e.state for e in s.pending_events if isinstance(e, Stream.VerificationRequested)]
    assert states == ["abc", None]


def test_zero_interval_allows_back_to_back_verification() -> None:
    s = stream(min_verification_interval=0)
    s.request_verification(state="1", actor="r", now=T0)
    s.request_verification(state="2", actor="r", now=T0)
    assert s.version == 3


def test_configure_records_only_changes() -> None:
    s = stream()
    same = {
        "delivery_method": POLL,
        "endpoint_url": None,
        "authorization_fingerprint": None,
        "events_requested": ["urn:a"],
        "events_delivered": ["urn:a"],
        "description": None,
        "signing_alg": "RS256",
        "mission_capabilities": [],
    }
    assert not s.configure(operation="update", actor="r", now=T0, **same)
    assert s.configure(operation="replace", actor="r", now=T0, **{**same, "signing_alg": "ES256"})
    assert s.signing_alg == "ES256"


def test_every_event_extends_the_chain() -> None:
    s = stream()
    s.set_status(status="paused", reason=None, initiator="receiver", actor="r", now=T0)
    s.remove_subject(subject=M1, actor="r", now=T0)
    s.request_verification(state="x", actor="r", now=T0)
    s.delete(actor="r", now=T0)
    assert s.deleted
    for previous, event in zip(s.pending_events, s.pending_events[1:], strict=False):
        assert event.prev_hash == previous.hash
        assert event.hash == compute_hash(event)


def test_value_checks() -> None:
    assert check_uri_list(["urn:a", "urn:b", "urn:a"], "events_requested") == ["urn:a", "urn:b"]
    with pytest.raises(InvalidInput):
        check_uri_list("urn:a", "events_requested")
    with pytest.raises(InvalidInput):
        check_uri_list([1], "events_requested")
    assert check_capabilities(["authority_changed", "teleport"]) == ["authority_changed"]
    with pytest.raises(InvalidInput):
        check_capabilities("authority_changed")
