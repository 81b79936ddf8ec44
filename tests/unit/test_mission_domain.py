"""The Proposal and Mission aggregates on their own: no Application, no store, no clock.

Aggregates are built with ``Proposal.submit(parse_proposal_document(...))`` and
``Mission.approve(...)``; every command is checked for the events it records (type, version,
chain link, hash), the state it leaves, and the errors it raises before recording anything.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest

from mission_ledger.domain.anchors import MISSION_AUTHORITY_SET, anchor
from mission_ledger.domain.authority import parse_authority_set
from mission_ledger.domain.chain import compute_hash, event_id_for, genesis_hash
from mission_ledger.domain.errors import (
    Conflict,
    DelegationDenied,
    Forbidden,
    IllegalTransition,
    InvalidAuthority,
    InvalidInput,
    InvalidProposal,
)
from mission_ledger.domain.mission import ApprovalRequest, Mission
from mission_ledger.domain.proposal import Proposal, parse_proposal_document
from mission_ledger.domain.timefmt import format_rfc3339

ISSUER = "https://as.example.com"
NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
ERP = "https://erp.example.com/*"


def entry(actions: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "mission_resource_access", "resource": ERP, "actions": actions, **extra}


DELEGABLE = entry(
    ["invoices.read", "invoices.write"],
    delegation={
        "max_depth": 2,
        "children": {"max_children": 1, "allowed_child_actors": [{"sub": "agent-2"}]},
    },
)


def document(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "user": "alice",
        "agent": "agent-1",
        "task": {"id": "t-1", "description": "Reconcile invoices"},
        "intent": {
            "goal": "Reconcile Q1 invoices",
            "resources": ["https://erp.example.com"],
            "expires_at": format_rfc3339(NOW + 10 * DAY),
        },
        "authority_set": [copy.deepcopy(DELEGABLE)],
    }
    doc.update(overrides)
    return doc


def submit(**overrides: Any) -> Proposal:
    parsed = parse_proposal_document(document(**overrides), now=NOW)
    return Proposal.submit(parsed, proposal_id=uuid4(), issuer=ISSUER, actor="agent-1", now=NOW)


def approve(proposal: Proposal | None = None, **request: Any) -> Mission:
    return Mission.approve(
        proposal or submit(),
        ApprovalRequest(approver=request.pop("approver", "bob"), **request),
        mission_id=uuid4(),
        now=NOW,
    )


def assert_chain(aggregate: Proposal | Mission) -> None:
    """The pending events form an intact chain from genesis to the aggregate's head."""
    expected_prev = genesis_hash(aggregate.id)
    for number, event in enumerate(aggregate.pending_events, start=1):
        assert event.originator_version == number
        assert event.event_id == event_id_for(aggregate.id, number)  # type: ignore[attr-defined]
        assert event.prev_hash == expected_prev  # type: ignore[attr-defined]
        assert event.hash == compute_hash(event)  # type: ignore[attr-defined]
        expected_prev = event.hash  # type: ignore[attr-defined]
    assert aggregate.head_hash == expected_prev
    assert aggregate.version == len(aggregate.pending_events)


def types(aggregate: Proposal | Mission) -> list[str]:
    return [type(e).__name__ for e in aggregate.pending_events]


# -- proposals --------------------------------------------------------------------------------


def test_a_submitted_proposal_is_pending_with_its_anchors() -> None:
    proposal = submit()
    assert types(proposal) == ["Submitted"]
    assert_chain(proposal)
    view = proposal.to_dict(NOW)
    assert (view["state"], view["version"], view["submitted_by"]) == ("pending", 1, "agent-1")
    assert view["submitted_at"] == format_rfc3339(NOW)
    assert view["intent_hash"].startswith("sha-256:")
    assert view["proposal_hash"] == anchor("mission-proposed-authority", ISSUER, [DELEGABLE])
    assert view["mission_id"] is None


def test_a_pending_proposal_reads_expired_after_its_expiry() -> None:
    proposal = submit()
    later = NOW + 10 * DAY
    assert proposal.effective_state(later - HOUR) == "pending"
    assert proposal.effective_state(later) == "expired"
    assert proposal.state == "pending"
    assert proposal.expire(actor="clock", now=later - HOUR) is False
    assert proposal.expire(actor="clock", now=later) is True
    assert (proposal.state, types(proposal)) == ("expired", ["Submitted", "Expired"])
    assert_chain(proposal)
    with pytest.raises(IllegalTransition) as caught:
        proposal.deny(actor="bob", reason=None, now=later)
    assert caught.value.current_state == "expired"


def test_deny_and_withdraw_are_idempotent_and_exclusive() -> None:
    proposal = submit()
    assert proposal.deny(actor="bob", reason="too broad", now=NOW) is True
    assert proposal.deny(actor="bob", reason="again", now=NOW) is False
    assert (proposal.state, proposal.decided_by, proposal.decision_reason) == (
        "denied",
        "bob",
        "too broad",
    )
    with pytest.raises(IllegalTransition):
        proposal.withdraw(actor="agent-1", reason=None, now=NOW)
    assert types(proposal) == ["Submitted", "Denied"]
    assert_chain(proposal)


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"intent": {"goal": "g", "resources": ["https://erp.example.com"]}}, InvalidProposal),
        (
            {"cnf": {"jwk": {"kty": "EC", "crv": "P-256", "x": "x", "y": "y", "d": "secret"}}},
            InvalidProposal,
        ),
        ({"predecessor": "not-a-uuid"}, InvalidProposal),
        (
            {"authority_set": [entry(["read"], constraints={"time_window": "9-5"})]},
            InvalidAuthority,
        ),
        ({"authority_set": []}, InvalidAuthority),
    ],
    ids=["no-expiry", "private-key", "bad-predecessor", "time_window", "empty-set"],
)
def test_malformed_documents_are_refused(overrides: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse_proposal_document(document(**overrides), now=NOW)


# -- approval ---------------------------------------------------------------------------------


def test_approval_opens_the_mission_and_closes_the_proposal() -> None:
    proposal = submit()
    mission = approve(proposal)
    assert types(mission) == ["Approved"]
    assert types(proposal) == ["Submitted", "Approved"]
    assert_chain(mission)
    assert_chain(proposal)
    assert proposal.mission_id == str(mission.id)
    view = mission.to_dict(NOW)
    assert (view["state"], view["stored_state"], view["version"]) == ("active", "active", 1)
    assert view["authority_hash"] == anchor(MISSION_AUTHORITY_SET, ISSUER, [DELEGABLE])
    assert view["compilation_basis"]["diff"]["identical"] is True
    assert view["head_hash"] == mission.pending_events[-1].hash  # type: ignore[attr-defined]
    assert (view["parent"], view["children"], view["successor"]) == (None, [], None)


def test_approval_refusals_record_nothing() -> None:
    proposal = submit()
    with pytest.raises(Forbidden):
        approve(proposal, approver="agent-1")
    with pytest.raises(InvalidInput):
        approve(proposal, expires_at=NOW + 11 * DAY)
    with pytest.raises(InvalidAuthority):
        approve(proposal, granted=parse_authority_set([entry(["*"])], allow_wildcard=True))
    assert types(proposal) == ["Submitted"]
    assert proposal.state == "pending"


# -- lifecycle --------------------------------------------------------------------------------


def test_the_lifecycle_records_one_chained_event_per_change() -> None:
    mission = approve()
    until = NOW + 2 * HOUR
    assert mission.suspend(actor="op", now=NOW) is True
    assert mission.suspend(actor="op", now=NOW) is False
    assert mission.suspend(actor="op", now=NOW, until=until, on_expiry="resume") is True
    assert (mission.suspend_until, mission.on_expiry) == (format_rfc3339(until), "resume")
    assert mission.resume(actor="op", now=NOW) is True
    assert (mission.state, mission.suspend_until, mission.on_expiry) == ("active", None, None)
    with pytest.raises(IllegalTransition) as caught:
        mission.resume(actor="op", now=NOW)
    assert caught.value.current_state == "active"
    assert mission.complete(actor="op", now=NOW, reason="done") is True
    assert mission.complete(actor="op", now=NOW) is False
    for command in (mission.revoke, mission.suspend, mission.resume):
        with pytest.raises(IllegalTransition):
            command(actor="op", now=NOW)
    assert types(mission) == ["Approved", "Suspended", "Suspended", "Resumed", "Completed"]
    assert [e.prior_state for e in mission.pending_events[1:]] == [  # type: ignore[attr-defined]
        "active",
        "suspended",
        "suspended",
        "active",
    ]
    assert_chain(mission)
    assert mission.to_dict(NOW)["reason"] == "done"


def test_effective_state_evaluates_expiry_before_the_stored_state() -> None:
    mission = approve()
    expiry = mission.expires_at_dt
    assert mission.effective_state(expiry - timedelta(microseconds=1)) == "active"
    assert mission.effective_state(expiry) == "expired"
    view = mission.to_dict(expiry)
    assert (view["state"], view["stored_state"]) == ("expired", "active")
    with pytest.raises(IllegalTransition) as caught:
        mission.suspend(actor="op", now=expiry)
    assert caught.value.current_state == "expired"
    assert mission.expire(actor="clock", now=expiry - HOUR) is False
    assert mission.expire(actor="clock", now=expiry) is True
    assert mission.expire(actor="clock", now=expiry) is False
    assert types(mission) == ["Approved", "Expired"]
    assert_chain(mission)


def test_resuming_under_a_suspended_ancestor_is_a_conflict() -> None:
    mission = approve()
    mission.suspend(actor="op", now=NOW, cause={"mission_id": "parent", "event_id": "e"})
    assert mission.suspended_by == "parent"
    with pytest.raises(Conflict) as caught:
        mission.resume(actor="op", now=NOW, suspended_ancestor="parent")
    assert not isinstance(caught.value, IllegalTransition)
    assert mission.version == 2


def test_cascade_ends_a_live_mission_and_prefers_its_own_expiry() -> None:
    cause = {"mission_id": "p", "event_id": "e", "state": "revoked"}
    live = approve()
    assert live.cascade(actor="op", now=NOW, cause=cause) is True
    assert (live.state, types(live)[-1]) == ("cascaded", "Cascaded")
    assert live.cascade(actor="op", now=NOW, cause=cause) is False
    late = approve()
    assert late.cascade(actor="op", now=late.expires_at_dt, cause=cause) is True
    assert (late.state, types(late)[-1]) == ("expired", "Expired")


def test_supersede_needs_an_active_mission() -> None:
    successor = uuid4()
    mission = approve()
    mission.suspend(actor="op", now=NOW)
    with pytest.raises(IllegalTransition):
        mission.supersede(successor=successor, actor="bob", now=NOW)
    mission.resume(actor="op", now=NOW)
    assert mission.supersede(successor=successor, actor="bob", now=NOW) is True
    assert (mission.state, mission.successor) == ("superseded", str(successor))
    assert_chain(mission)


def test_narrowing_changes_the_authority_hash_and_never_widens() -> None:
    mission = approve()
    before = mission.authority_hash
    narrower = parse_authority_set([entry(["invoices.read"])])
    assert mission.narrow(narrower, actor="agent-1", now=NOW) is True
    assert mission.authority_hash != before
    assert mission.pending_events[-1].previous_authority_hash == before  # type: ignore[attr-defined]
    assert mission.narrow(narrower, actor="agent-1", now=NOW) is False
    with pytest.raises(InvalidAuthority):
        mission.narrow(parse_authority_set([DELEGABLE]), actor="agent-1", now=NOW)
    assert mission.version == 2


def test_stages_advance_forward_only() -> None:
    proposal = submit(stages=["plan", "run"])
    mission = approve(proposal)
    assert mission.stage == "plan"
    assert mission.advance_stage(None, actor="agent-1", now=NOW) is True
    assert mission.advance_stage("run", actor="agent-1", now=NOW) is False
    with pytest.raises(IllegalTransition):
        mission.advance_stage("plan", actor="agent-1", now=NOW)
    with pytest.raises(IllegalTransition):
        mission.advance_stage(None, actor="agent-1", now=NOW)
    with pytest.raises(InvalidInput):
        mission.advance_stage("ship", actor="agent-1", now=NOW)
    assert types(mission) == ["Approved", "StageAdvanced"]


# -- delegation -------------------------------------------------------------------------------


def delegate(parent: Mission, agent: str = "agent-2", **kwargs: Any) -> Mission:
    defaults: dict[str, Any] = {
        "child_id": uuid4(),
        "child_agent": agent,
        "authority": parse_authority_set([entry(["invoices.read"])]),
        "expires_at": None,
        "live_children": [],
        "actor": "agent-1",
        "now": NOW,
    }
    defaults.update(kwargs)
    return parent.delegate(**defaults)


def test_delegation_creates_a_chained_child_and_records_it_on_the_parent() -> None:
    parent = approve()
    child = delegate(parent, now=NOW + HOUR)
    assert types(child) == ["Approved"]
    assert types(parent) == ["Approved", "Delegated"]
    assert_chain(child)
    assert_chain(parent)
    assert child.parent == {
        "id": str(parent.id),
        "issuer": ISSUER,
        "authority_hash": parent.authority_hash,
        "depth": 1,
        "cascade_mode": "cascade",
        "created_at": format_rfc3339(NOW + HOUR),
    }
    assert (child.depth, child.agent, child.user, child.expires_at) == (
        1,
        "agent-2",
        "alice",
        parent.expires_at,
    )
    assert parent.children == [
        {
            "mission_id": str(child.id),
            "agent": "agent-2",
            "justifying_entry": 0,
            "delegated_at": format_rfc3339(NOW + HOUR),
        }
    ]


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"agent": "agent-9"}, "child_actor_not_allowed"),
        ({"authority": parse_authority_set([entry(["invoices.delete"])])}, "not_strict_subset"),
        ({"expires_at": NOW + 11 * DAY}, "not_strict_subset"),
        (
            {"live_children": [("agent-2", parse_authority_set([entry(["invoices.read"])]))]},
            "fanout_exceeded",
        ),
    ],
    ids=["actor", "action", "expiry", "fanout"],
)
def test_delegation_denials_record_nothing(kwargs: dict[str, Any], reason: str) -> None:
    parent = approve()
    with pytest.raises(DelegationDenied) as caught:
        delegate(parent, **kwargs)
    assert caught.value.reason == reason
    assert types(parent) == ["Approved"]


def test_a_parent_without_children_policy_or_not_active_cannot_delegate() -> None:
    plain = approve(submit(authority_set=[entry(["invoices.read"])]))
    with pytest.raises(DelegationDenied) as caught:
        delegate(plain)
    assert caught.value.reason == "delegation_not_permitted"
    suspended = approve()
    suspended.suspend(actor="op", now=NOW)
    with pytest.raises(DelegationDenied) as caught:
        delegate(suspended)
    assert caught.value.reason == "parent_not_active"
    assert caught.value.http_status == 409


def test_ids_are_uuids_and_event_ids_are_derived() -> None:
    mission = approve()
    assert isinstance(mission.id, UUID)
    first = mission.pending_events[0]
    assert first.event_id == event_id_for(mission.id, 1)  # type: ignore[attr-defined]
    assert first.prev_hash == genesis_hash(mission.id)  # type: ignore[attr-defined]
    assert genesis_hash(mission.id) != genesis_hash(uuid4())
