"""Map every event a real in-memory ledger stores to the SSF profile and validate it."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from jsonschema import (  # type: ignore[import-untyped]
    Draft202012Validator,
    FormatChecker,
)

from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.mission import Mission
from mission_ledger.domain.proposal import Proposal
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import MissionLedger
from mission_ledger.ssf import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    MISSION_EVENT_TYPES,
    NAMESPACE,
    caep_events,
    lifecycle_change_body,
    mission_event,
    needs_authority_changed_capability,
    proposal_event,
)
from tests.integration.contract_fixtures import (
    APPROVER,
    HOUR,
    OPERATOR,
    T0,
    child_authority,
    entry,
    open_child,
    open_mission,
    propose,
)

SCHEMAS = Path(__file__).resolve().parents[2] / "ssf" / "schemas"
DRAFT_MEMBERS = {
    "mission",
    "state",
    "prior_state",
    "version",
    "committed_at",
    "expires_at",
    "suspend_until",
    "on_expiry",
    "tenant",
    "reason",
    "successor",
    "containment_version",
    "authority_hash",
    "authority_changed",
}


def _validator(name: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{name}.json").read_text(encoding="utf-8"))
    return Draft202012Validator(schema, format_checker=FormatChecker())


def _validate(name: str, body: dict[str, Any]) -> None:
    errors = [f"{list(e.path)}: {e.message}" for e in _validator(name).iter_errors(body)]
    assert errors == [], (name, body)


@pytest.fixture
def ledger() -> MissionLedger:
    return MissionLedger(Settings(database_url="memory:"), clock=FixedClock(T0))


def _scenario(ledger: MissionLedger) -> list[str]:
    """Drive every Mission transition; return the ids of every Mission involved."""
    clock = ledger.clock
    assert isinstance(clock, FixedClock)
    staged = open_mission(ledger, stages=["collect", "reconcile"])
    ledger.advance_stage(staged, actor=OPERATOR, to_stage=None, reason="collected")
    ledger.complete(staged, actor="harness:agent-1")

    root = open_mission(ledger)
    child = open_child(ledger, root, authority_set=child_authority(delegable_to=["agent-3"]))
    grandchild = open_child(ledger, child, agent="agent-3")
    until = format_rfc3339(clock.now() + HOUR)
    ledger.suspend(root, actor="operator:olga", reason="check", until=until, on_expiry="resume")
    ledger.resume(root, actor="operator:olga")
    ledger.narrow(
        root,
        actor=OPERATOR,
        authority_set=[entry(["invoices.read"], delegation=None)],
        reason="read only",
    )
    ledger.revoke(root, actor="operator:olga", reason="done")  # cascades to the tree

    old = open_mission(ledger)
    successor_proposal = propose(ledger, predecessor=old)
    successor = ledger.approve(successor_proposal, actor=APPROVER).document["mission_id"]

    short = open_mission(ledger)
    ledger.suspend(short, actor=OPERATOR)
    clock.advance(timedelta(days=31))
    ledger.expire_due()
    return [staged, root, child, grandchild, old, str(successor), short]


def test_every_mission_event_maps_and_validates(ledger: MissionLedger) -> None:
    ids = _scenario(ledger)
    seen: set[str] = set()
    for mission_id in ids:
        last_version = 0
        for event in ledger.events.get(UUID(mission_id)):
            doc = ledger.mission_as_of(mission_id, version=event.originator_version)
            uri, body = mission_event(event, doc)
            assert isinstance(event, Mission.Event)
            assert uri == MISSION_EVENT_TYPES[type(event)]
            name = uri.removeprefix(NAMESPACE)
            seen.add(name)
            _validate(name, body)
            assert body["version"] == last_version + 1  # no gaps per Mission
            last_version = body["version"]
            assert ("prior_state" in body) == (not isinstance(event, Mission.Approved))

            drafts = lifecycle_change_body(event, doc)
            _validate("lifecycle-change", drafts)
            assert set(drafts) <= DRAFT_MEMBERS
            assert drafts["mission"] == {"id": mission_id, "issuer": ledger.issuer}
            assert ("prior_state" in drafts) == (not isinstance(event, Mission.Approved))
            deadline = isinstance(event, Mission.Suspended) and event.suspend_until is not None
            assert ("suspend_until" in drafts) == deadline == ("on_expiry" in drafts)
            assert ("successor" in drafts) == isinstance(event, Mission.Superseded)
            narrowing = isinstance(event, Mission.AuthorityNarrowed)
            assert drafts.get("authority_changed", False) is narrowing
            assert needs_authority_changed_capability(drafts) is narrowing

            caep = caep_events(event, doc)
            ending = (Mission.Revoked, Mission.Expired, Mission.Cascaded, Mission.Superseded)
            if isinstance(event, ending) or (
                isinstance(event, Mission.Suspended) and event.prior_state == "active"
            ):
                assert [c.uri for c in caep] == [CAEP_SESSION_REVOKED]
                assert caep[0].event["reason_admin"]["en"]
            elif narrowing:
                assert [c.uri for c in caep] == [CAEP_TOKEN_CLAIMS_CHANGE]
                assert caep[0].event["claims"] == {"scope": "invoices.read"}
            else:
                assert caep == []
            for c in caep:
                assert c.sub_id == {
                    "format": "complex",
                    "session": {"format": "opaque", "id": mission_id},
                }
                assert c.event["initiating_entity"] in {"admin", "user", "policy", "system"}
    assert seen == {n.removeprefix(NAMESPACE) for n in MISSION_EVENT_TYPES.values()}


def test_initiating_entity_and_specific_members(ledger: MissionLedger) -> None:
    ids = _scenario(ledger)
    bodies: dict[str, list[dict[str, Any]]] = {}
    for mission_id in ids:
        for event in ledger.events.get(UUID(mission_id)):
            doc = ledger.mission_as_of(mission_id, version=event.originator_version)
            uri, body = mission_event(event, doc)
            bodies.setdefault(uri.removeprefix(NAMESPACE), []).append(body)
    assert {b["initiating_entity"] for b in bodies["mission-cascaded"]} == {"policy"}
    assert {b["initiating_entity"] for b in bodies["mission-expired"]} == {"system"}
    assert {b["initiating_entity"] for b in bodies["mission-completed"]} == {"user"}
    assert bodies["mission-revoked"][0]["initiating_entity"] == "admin"
    assert bodies["mission-revoked"][0]["reason_admin"] == {"en": "done"}
    scope = bodies["mission-scope-changed"][0]
    assert scope["authority_set"] == [entry(["invoices.read"])]
    assert scope["authority_hash"] != scope["previous_authority_hash"]
    superseded = bodies["mission-superseded"][0]
    assert superseded["successor"] == ids[5]
    approved_successor = [b for b in bodies["mission-approved"] if b["mission_id"] == ids[5]]
    assert approved_successor[0]["predecessor"] == ids[4]
    children = [b for b in bodies["mission-approved"] if "parent_mission_id" in b]
    assert {b["mission_id"] for b in children} == {ids[2], ids[3]}


def test_a_document_of_another_version_is_refused(ledger: MissionLedger) -> None:
    mission_id = open_mission(ledger)
    ledger.suspend(mission_id, actor=OPERATOR)
    first = next(iter(ledger.events.get(UUID(mission_id))))
    with pytest.raises(ValueError, match="version"):
        mission_event(first, ledger.mission_as_of(mission_id))


def test_proposal_events_map_and_validate(ledger: MissionLedger) -> None:
    proposal_id = propose(ledger)
    ledger.deny(proposal_id, actor="approver:bob", reason="too broad")
    events = list(ledger.events.get(UUID(proposal_id)))
    assert isinstance(events[0], Proposal.Submitted)
    assert isinstance(events[1], Proposal.Denied)
    assert len(events) == 2
    names = []
    for event in events:
        uri, body = proposal_event(event)
        names.append(uri.removeprefix(NAMESPACE))
        _validate(uri.removeprefix(NAMESPACE), body)
    assert names == ["proposal-submitted", "proposal-denied"]
    assert proposal_event(events[1])[1]["initiating_entity"] == "admin"
