"""The ledger's contract: one suite, run unchanged on the in-memory, SQLite and PostgreSQL stores.

Every test gets a fresh ledger on a :class:`FixedClock` through the parametrised ``ledger``
fixture. The PostgreSQL run uses a throwaway schema (``postgres_schema_url``) and is skipped when
no server is configured (it fails instead where PostgreSQL is required, as in CI).

Sections follow the Mission drafts (``/work/shared/reference/mission-drafts-wire.md`` §2, §4):
proposal validation, the legal-operations table, approval, narrowing and stages, delegation,
cascades, supersession, expiry, optimistic concurrency, idempotency, time travel, snapshots and
the hash chain.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from mission_ledger.bootstrap import open_ledger
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import (
    Conflict,
    DelegationDenied,
    Forbidden,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidAuthority,
    InvalidInput,
    InvalidProposal,
    MissionConflict,
    MissionLedgerError,
    NotFound,
)
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import CommandResult, MissionLedger
from tests.integration.contract_fixtures import (
    AGENT,
    APPROVER,
    DAY,
    ERP,
    HOUR,
    MAIL,
    OPERATOR,
    T0,
    USER,
    chain_problems,
    child_authority,
    default_authority,
    delegating_entry,
    entry,
    event_types,
    last_event,
    open_child,
    open_mission,
    open_tree,
    position,
    proposal_document,
    propose,
    state,
    version,
    written_since,
)
from tests.pgtarget import PgTarget

# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


@dataclass
class Backend:
    """One store for one test; ``open`` gives a ledger on it (closed at teardown)."""

    name: str
    settings: Settings
    clock: FixedClock
    opened: list[MissionLedger] = field(default_factory=list)

    @property
    def shares_store(self) -> bool:
        """Whether a second ledger opened here sees the first one's events."""
        return self.name != "memory"

    def open(self, **overrides: Any) -> MissionLedger:
        ledger = open_ledger(replace(self.settings, **overrides), clock=self.clock)
        self.opened.append(ledger)
        return ledger


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Backend]:
    name: str = request.param
    if name == "memory":
        settings = Settings(database_url="memory:")
    elif name == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(database_url=target.ledger_url, postgres_pool_size=4)
    opened = Backend(name=name, settings=settings, clock=FixedClock(T0))
    try:
        yield opened
    finally:
        for ledger in reversed(opened.opened):
            ledger.close()


@pytest.fixture
def ledger(backend: Backend) -> MissionLedger:
    return backend.open()


@pytest.fixture
def clock(backend: Backend) -> FixedClock:
    return backend.clock


def _raises_unchanged(
    ledger: MissionLedger, error: type[MissionLedgerError], call: Callable[[], Any]
) -> Any:
    """Run ``call``, expect ``error``, and check that nothing was written."""
    before = position(ledger)
    with pytest.raises(error) as caught:
        call()
    assert position(ledger) == before, "a refused command wrote to the store"
    return caught.value


# ---------------------------------------------------------------------------------------------
# Proposal validation
# ---------------------------------------------------------------------------------------------


def _drop_expiry(doc: dict[str, Any], now: datetime) -> None:
    del doc["intent"]["expires_at"]


def _past_expiry(doc: dict[str, Any], now: datetime) -> None:
    doc["intent"]["expires_at"] = format_rfc3339(now - HOUR)


def _unknown_member(doc: dict[str, Any], now: datetime) -> None:
    doc["priority"] = "high"


def _malformed_entry(doc: dict[str, Any], now: datetime) -> None:
    doc["authority_set"][1] = {"type": "mission_resource_access", "resource": "mail outbox"}


def _max_amount(doc: dict[str, Any], now: datetime) -> None:
    doc["authority_set"][0]["constraints"] = {"max_amount": {"amount": "500.00", "currency": "USD"}}


@pytest.mark.parametrize(
    ("mutate", "error", "field_name"),
    [
        (_drop_expiry, InvalidProposal, "intent.expires_at"),
        (_past_expiry, InvalidProposal, "intent.expires_at"),
        (_unknown_member, InvalidProposal, "priority"),
        (_malformed_entry, InvalidAuthority, "authority_set[1]"),
        (_max_amount, InvalidAuthority, "authority_set[0].constraints.max_amount"),
    ],
    ids=["missing-expiry", "past-expiry", "unknown-member", "malformed-entry", "max_amount"],
)
def test_invalid_proposals_are_refused_and_nothing_is_written(
    ledger: MissionLedger,
    mutate: Callable[[dict[str, Any], datetime], None],
    error: type[InvalidInput],
    field_name: str,
) -> None:
    doc = proposal_document(ledger.clock.now())
    mutate(doc, ledger.clock.now())
    refused = _raises_unchanged(ledger, error, lambda: ledger.propose(doc, actor=AGENT))
    assert refused.code == error.code
    assert refused.http_status == 400
    assert refused.field is not None
    assert refused.field.startswith(field_name)
    assert ledger.list_proposals() == []


def test_a_valid_proposal_is_pending_with_its_anchors(ledger: MissionLedger) -> None:
    doc = proposal_document(ledger.clock.now())
    result = ledger.propose(doc, actor=AGENT)
    assert result.changed
    assert result.position == position(ledger)
    proposal = result.document
    assert proposal["state"] == "pending"
    assert proposal["version"] == 1
    assert proposal["intent_hash"].startswith("sha-256:")
    assert proposal["proposal_hash"].startswith("sha-256:")
    assert proposal["authority_set"] == doc["authority_set"]
    assert event_types(ledger, proposal["proposal_id"]) == ["ProposalSubmitted"]


# ---------------------------------------------------------------------------------------------
# The legal-operations table (drafts §4.2)
# ---------------------------------------------------------------------------------------------

STATES = ("active", "suspended", "revoked", "completed", "expired", "cascaded", "superseded")
OPERATIONS = ("suspend", "resume", "revoke", "complete")
NOOP, REFUSED = "no-op", "refused"
LEGAL = {
    ("active", "suspend"): "suspended",
    ("active", "revoke"): "revoked",
    ("active", "complete"): "completed",
    ("suspended", "suspend"): NOOP,
    ("suspended", "resume"): "active",
    ("suspended", "revoke"): "revoked",
    ("suspended", "complete"): "completed",
    ("revoked", "revoke"): NOOP,
    ("completed", "complete"): NOOP,
}
EVENT_OF = {
    "suspend": "MissionSuspended",
    "resume": "MissionResumed",
    "revoke": "MissionRevoked",
    "complete": "MissionCompleted",
}


def _bring_to(ledger: MissionLedger, clock: FixedClock, target: str) -> str:
    """A Mission in ``target`` (the terminal ones reached the way the drafts describe)."""
    if target == "expired":
        mission = open_mission(ledger, expires_at=clock.now() + DAY)
        clock.advance(2 * DAY)
        assert ledger.expire_due().expired_missions == [mission]
        assert event_types(ledger, mission)[-1] == "MissionExpired"
        return mission
    if target == "cascaded":
        parent = open_mission(ledger)
        mission = open_child(ledger, parent)
        ledger.revoke(parent, actor=OPERATOR)
        return mission
    mission = open_mission(ledger)
    if target == "superseded":
        wider = [*default_authority(), entry(["invoices.approve"])]
        open_mission(ledger, predecessor=mission, authority_set=wider)
    elif target != "active":
        operation = {"suspended": "suspend", "revoked": "revoke", "completed": "complete"}[target]
        getattr(ledger, operation)(mission, actor=OPERATOR)
    return mission


def _operate(ledger: MissionLedger, operation: str, mission: str) -> CommandResult:
    result: CommandResult = getattr(ledger, operation)(mission, actor=OPERATOR, reason="table")
    return result


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("start", STATES)
def test_legal_operations_table(
    ledger: MissionLedger, clock: FixedClock, start: str, operation: str
) -> None:
    mission = _bring_to(ledger, clock, start)
    assert state(ledger, mission) == start
    before_version = version(ledger, mission)
    before_events = event_types(ledger, mission)
    outcome = LEGAL.get((start, operation), REFUSED)

    if outcome == REFUSED:
        refused = _raises_unchanged(
            ledger, IllegalTransition, lambda: _operate(ledger, operation, mission)
        )
        assert refused.code == "illegal_transition"
        assert refused.http_status == 409
        assert refused.current_state == start
        assert refused.to_dict()["current_state"] == start
        assert version(ledger, mission) == before_version
        assert state(ledger, mission) == start
        return

    before = position(ledger)
    result = _operate(ledger, operation, mission)
    if outcome == NOOP:
        assert result.changed is False
        assert result.position is None
        assert position(ledger) == before
        assert result.document["state"] == start
        assert result.document["version"] == before_version
        assert event_types(ledger, mission) == before_events
        return

    assert result.changed is True
    assert result.document["state"] == outcome
    assert result.document["version"] == before_version + 1
    assert version(ledger, mission) == before_version + 1
    assert state(ledger, mission) == outcome
    assert result.position == position(ledger) > before
    event = last_event(ledger, mission)
    assert event["type"] == EVENT_OF[operation]
    assert event["prior_state"] == start
    assert event["actor"] == OPERATOR
    assert event["version"] == before_version + 1
    assert event_types(ledger, mission) == [*before_events, EVENT_OF[operation]]


def test_suspend_with_a_new_deadline_is_a_metadata_change(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    mission = open_mission(ledger)
    ledger.suspend(mission, actor=OPERATOR)
    until = format_rfc3339(clock.now() + 2 * HOUR)

    changed = ledger.suspend(mission, actor=OPERATOR, until=until, on_expiry="resume")
    assert changed.changed
    assert changed.document["state"] == "suspended"
    assert changed.document["version"] == 3
    assert (changed.document["suspend_until"], changed.document["on_expiry"]) == (until, "resume")
    event = last_event(ledger, mission)
    assert (event["type"], event["prior_state"]) == ("MissionSuspended", "suspended")

    other = ledger.suspend(mission, actor=OPERATOR, until=until, on_expiry="revoke")
    assert other.changed
    assert other.document["version"] == 4
    assert other.document["on_expiry"] == "revoke"

    same = ledger.suspend(mission, actor=OPERATOR, until=until, on_expiry="revoke")
    assert same.changed is False
    assert same.document["version"] == 4

    cleared = ledger.suspend(mission, actor=OPERATOR)
    assert cleared.changed
    assert cleared.document["version"] == 5
    assert cleared.document["suspend_until"] is None


@pytest.mark.parametrize(
    ("kwargs", "field_name"),
    [
        ({"until": "2026-03-02T12:00:00Z"}, "on_expiry"),
        ({"on_expiry": "resume"}, "suspend_until"),
        ({"until": "2026-03-02T12:00:00Z", "on_expiry": "later"}, "on_expiry"),
        ({"until": "2026-03-01T12:00:00Z", "on_expiry": "resume"}, "suspend_until"),
    ],
    ids=["until-alone", "on-expiry-alone", "bad-on-expiry", "past-until"],
)
def test_malformed_suspensions_are_refused(
    ledger: MissionLedger, kwargs: dict[str, str], field_name: str
) -> None:
    mission = open_mission(ledger)
    refused = _raises_unchanged(
        ledger, InvalidInput, lambda: ledger.suspend(mission, actor=OPERATOR, **kwargs)
    )
    assert refused.field == field_name
    assert version(ledger, mission) == 1


def test_unknown_missions_are_not_found(ledger: MissionLedger) -> None:
    missing = "00000000-0000-4000-8000-000000000000"
    for call in (
        lambda: ledger.suspend(missing, actor=OPERATOR),
        lambda: ledger.revoke("not-a-uuid", actor=OPERATOR),
        lambda: ledger.history(missing),
        lambda: ledger.approve(missing, actor=APPROVER),
    ):
        error = _raises_unchanged(ledger, NotFound, call)
        assert error.code == "not_found"
    proposal = propose(ledger)
    _raises_unchanged(ledger, NotFound, lambda: ledger.suspend(proposal, actor=OPERATOR))


# ---------------------------------------------------------------------------------------------
# Approval: separation of duty, wildcards, compilation basis, expiry
# ---------------------------------------------------------------------------------------------


def test_the_proposing_agent_cannot_approve(ledger: MissionLedger) -> None:
    proposal = propose(ledger)
    refused = _raises_unchanged(ledger, Forbidden, lambda: ledger.approve(proposal, actor=AGENT))
    assert refused.code == "forbidden"
    assert refused.http_status == 403
    assert ledger.get_proposal(proposal).state == "pending"


def test_approval_activates_at_version_one_and_closes_the_proposal(ledger: MissionLedger) -> None:
    proposal = propose(ledger)
    result = ledger.approve(proposal, actor=APPROVER, evidence={"ticket": "CHG-1"})
    mission = result.document
    assert (mission["state"], mission["version"]) == ("active", 1)
    assert (mission["user"], mission["agent"]) == (USER, AGENT)
    assert mission["approval"]["approvers"] == [APPROVER]
    assert mission["approval"]["evidence"] == {"ticket": "CHG-1"}
    assert mission["approval"]["flags"] == []
    assert mission["proposal_id"] == proposal
    assert mission["parent"] is None
    assert mission["compilation_basis"]["diff"]["identical"] is True
    assert event_types(ledger, mission["mission_id"]) == ["MissionApproved"]
    assert event_types(ledger, proposal) == ["ProposalSubmitted", "ProposalApproved"]
    closed = ledger.get_proposal(proposal)
    assert (closed.state, closed.mission_id) == ("approved", mission["mission_id"])
    again = _raises_unchanged(
        ledger, IllegalTransition, lambda: ledger.approve(proposal, actor=APPROVER)
    )
    assert again.current_state == "approved"


def test_wildcard_needs_an_explicit_reasoned_allowance_and_is_flagged(
    ledger: MissionLedger,
) -> None:
    proposal = propose(ledger, authority_set=[entry(["*"])])
    plain = _raises_unchanged(
        ledger, InvalidAuthority, lambda: ledger.approve(proposal, actor=APPROVER)
    )
    assert plain.field == "authority_set"
    _raises_unchanged(
        ledger,
        InvalidAuthority,
        lambda: ledger.approve(proposal, actor=APPROVER, allow_wildcard=True),
    )
    result = ledger.approve(
        proposal, actor=APPROVER, allow_wildcard=True, wildcard_reason="break-glass incident 7"
    )
    approval = result.document["approval"]
    assert approval["flags"] == ["wildcard"]
    assert approval["allow_wildcard"] is True
    assert approval["wildcard_reason"] == "break-glass incident 7"


def test_a_granted_set_different_from_the_proposal_records_its_diff(
    ledger: MissionLedger,
) -> None:
    proposal = propose(ledger)
    requested = ledger.get_proposal(proposal).authority_set
    granted = [delegating_entry(["invoices.read"])]
    result = ledger.approve(proposal, actor=APPROVER, authority_set=granted)
    mission = result.document
    assert mission["authority_set"] == granted
    basis = mission["compilation_basis"]
    assert basis["method"] == "manual"
    assert basis["requested_authority_hash"] != mission["authority_hash"]
    diff = basis["diff"]
    assert diff["identical"] is False
    assert diff["removed"] == requested
    assert diff["added"] == granted
    assert diff["narrowed"] == [{"requested_index": 0, "granted_index": 0}]
    assert diff["widened"] == []


def test_approval_may_shorten_but_not_extend_the_expiry(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    proposal = propose(ledger)
    proposed = ledger.get_proposal(proposal).expires_at
    later = format_rfc3339(clock.now() + 60 * DAY)
    refused = _raises_unchanged(
        ledger, InvalidInput, lambda: ledger.approve(proposal, actor=APPROVER, expires_at=later)
    )
    assert refused.field == "expires_at"
    sooner = format_rfc3339(clock.now() + 7 * DAY)
    result = ledger.approve(proposal, actor=APPROVER, expires_at=sooner)
    assert result.document["expires_at"] == sooner != proposed


def test_template_and_policy_approvals_need_their_basis(ledger: MissionLedger) -> None:
    proposal = propose(ledger)
    for kwargs, field_name in (
        ({"method": "template"}, "template_id"),
        ({"method": "policy"}, "rule_ids"),
        ({"method": "vibes"}, "method"),
    ):
        refused = _raises_unchanged(
            ledger, InvalidInput, lambda kw=kwargs: ledger.approve(proposal, actor=APPROVER, **kw)
        )
        assert refused.field == field_name
    result = ledger.approve(
        proposal, actor=APPROVER, method="template", template_id="tpl-ap", template_version="3"
    )
    basis = result.document["compilation_basis"]
    assert (basis["method"], basis["template_id"], basis["template_version"]) == (
        "template",
        "tpl-ap",
        "3",
    )


# ---------------------------------------------------------------------------------------------
# Narrowing and stages
# ---------------------------------------------------------------------------------------------


def test_narrowing_accepts_a_subset_and_refuses_a_widening(ledger: MissionLedger) -> None:
    mission = open_mission(ledger)
    before = ledger.get_mission(mission)
    subset = [delegating_entry(["invoices.read"])]

    narrowed = ledger.narrow(mission, subset, actor=AGENT, reason="done writing")
    assert narrowed.changed
    assert narrowed.document["version"] == 2
    assert narrowed.document["authority_set"] == subset
    assert narrowed.document["authority_hash"] != before.authority_hash
    event = last_event(ledger, mission)
    assert event["type"] == "MissionAuthorityNarrowed"
    assert event["previous_authority_hash"] == before.authority_hash
    assert event["authority_hash"] == narrowed.document["authority_hash"]

    same = ledger.narrow(mission, subset, actor=AGENT)
    assert same.changed is False
    assert same.document["version"] == 2

    for wider in (
        [entry(["invoices.read", "invoices.delete"])],
        default_authority(),
        [entry(["mail.send"], resource=MAIL)],
    ):
        refused = _raises_unchanged(
            ledger, InvalidAuthority, lambda w=wider: ledger.narrow(mission, w, actor=AGENT)
        )
        assert refused.field == "authority_set"
    unenforceable = [entry(["invoices.read"], constraints={"tenant": "acme"})]
    _raises_unchanged(
        ledger, InvalidAuthority, lambda: ledger.narrow(mission, unenforceable, actor=AGENT)
    )
    assert version(ledger, mission) == 2

    ledger.revoke(mission, actor=OPERATOR)
    refused_terminal = _raises_unchanged(
        ledger,
        IllegalTransition,
        lambda: ledger.narrow(mission, [entry(["invoices.read"])], actor=AGENT),
    )
    assert refused_terminal.current_state == "revoked"


STAGED = [
    entry(["invoices.read"]),
    entry(["invoices.write"], constraints={"stage": "execute"}),
]


def test_stages_only_move_forward(ledger: MissionLedger, clock: FixedClock) -> None:
    mission = open_mission(ledger, stages=["plan", "execute", "report"], authority_set=STAGED)
    loaded = ledger.get_mission(mission)
    assert loaded.stage == "plan"
    write = {"action": "invoices.write", "resource": f"{ERP}/inv-1", "at": clock.now()}
    assert loaded.evaluate(**write).reason == "stage_not_active"
    assert loaded.evaluate(action="invoices.read", resource=f"{ERP}/x", at=clock.now()).allowed

    advanced = ledger.advance_stage(mission, actor=AGENT)
    assert advanced.changed
    assert (advanced.document["stage"], advanced.document["version"]) == ("execute", 2)
    event = last_event(ledger, mission)
    assert (event["type"], event["from_stage"], event["to_stage"]) == (
        "MissionStageAdvanced",
        "plan",
        "execute",
    )
    assert ledger.get_mission(mission).evaluate(**write).allowed

    same = ledger.advance_stage(mission, actor=AGENT, to_stage="execute")
    assert same.changed is False
    backwards = _raises_unchanged(
        ledger,
        IllegalTransition,
        lambda: ledger.advance_stage(mission, actor=AGENT, to_stage="plan"),
    )
    assert backwards.current_state == "active"
    unknown = _raises_unchanged(
        ledger, InvalidInput, lambda: ledger.advance_stage(mission, actor=AGENT, to_stage="deploy")
    )
    assert unknown.field == "stage"

    assert (
        ledger.advance_stage(mission, actor=AGENT, to_stage="report").document["stage"] == "report"
    )
    _raises_unchanged(ledger, IllegalTransition, lambda: ledger.advance_stage(mission, actor=AGENT))
    assert version(ledger, mission) == 3
    assert ledger.get_mission(mission).evaluate(**write).reason == "stage_not_active"


def test_entries_limited_to_an_unknown_stage_are_refused(ledger: MissionLedger) -> None:
    refused = _raises_unchanged(
        ledger, InvalidAuthority, lambda: propose(ledger, stages=["plan"], authority_set=STAGED)
    )
    assert refused.field == "authority_set[1].constraints.stage"
    plain = propose(ledger, stages=["plan"])
    refused = _raises_unchanged(
        ledger,
        InvalidAuthority,
        lambda: ledger.approve(plain, actor=APPROVER, authority_set=STAGED),
    )
    assert refused.field == "authority_set[1].constraints.stage"
    unstaged = open_mission(ledger)
    _raises_unchanged(
        ledger, IllegalTransition, lambda: ledger.advance_stage(unstaged, actor=AGENT)
    )


# ---------------------------------------------------------------------------------------------
# Delegation (child Missions)
# ---------------------------------------------------------------------------------------------


def test_an_allowed_child_records_its_parent(ledger: MissionLedger, clock: FixedClock) -> None:
    parent_id = open_mission(ledger)
    parent = ledger.get_mission(parent_id)
    result = ledger.delegate(
        parent_id, agent="agent-2", authority_set=child_authority(), actor=AGENT
    )
    child = result.document
    assert result.changed
    assert (child["state"], child["version"], child["agent"], child["user"]) == (
        "active",
        1,
        "agent-2",
        USER,
    )
    assert child["parent"] == {
        "id": parent_id,
        "issuer": parent.issuer,
        "authority_hash": parent.authority_hash,
        "depth": 1,
        "cascade_mode": "cascade",
        "created_at": format_rfc3339(clock.now()),
    }
    assert child["expires_at"] == parent.expires_at
    assert child["compilation_basis"]["method"] == "delegation"
    assert child["compilation_basis"]["justifying_entry"] == 0
    assert event_types(ledger, child["mission_id"]) == ["MissionApproved"]

    assert version(ledger, parent_id) == 2
    delegated = last_event(ledger, parent_id)
    assert delegated["type"] == "MissionDelegated"
    assert delegated["child_mission_id"] == child["mission_id"]
    assert delegated["child_agent"] == "agent-2"
    assert delegated["child_authority_hash"] == child["authority_hash"]
    children = ledger.get_mission(parent_id).children
    assert [c["mission_id"] for c in children] == [child["mission_id"]]
    assert [m.mission_id for m in ledger.list_missions(parent=parent_id)] == [child["mission_id"]]


def test_a_grandchild_is_at_depth_two(ledger: MissionLedger) -> None:
    _root, child, grandchild = open_tree(ledger)
    loaded = ledger.get_mission(grandchild)
    assert loaded.parent is not None
    assert (loaded.parent["id"], loaded.parent["depth"], loaded.depth) == (child, 2, 2)
    assert loaded.agent == "agent-3"


@dataclass(frozen=True)
class Denial:
    reason: str
    agent: str = "agent-2"
    authority: list[dict[str, Any]] | None = None
    parent_authority: list[dict[str, Any]] | None = None
    later_expiry: bool = False


DENIALS = {
    "no-children-policy": Denial(
        "delegation_not_permitted", parent_authority=[entry(["invoices.read"])]
    ),
    "agent-not-listed": Denial("child_actor_not_allowed", agent="agent-9"),
    "extra-action": Denial("not_strict_subset", authority=[entry(["invoices.delete"])]),
    "undelegable-entry": Denial(
        "not_strict_subset", authority=[entry(["mail.send"], resource=MAIL)]
    ),
    "same-depth": Denial(
        "not_strict_subset", authority=child_authority(delegable_to=["agent-3"], max_depth=2)
    ),
    "later-expiry": Denial("not_strict_subset", later_expiry=True),
}


@pytest.mark.parametrize("case", DENIALS.values(), ids=DENIALS.keys())
def test_delegation_denials(ledger: MissionLedger, clock: FixedClock, case: Denial) -> None:
    parent = open_mission(ledger, authority_set=case.parent_authority)
    expiry = ledger.get_mission(parent).expires_at_dt + HOUR if case.later_expiry else None
    denied = _raises_unchanged(
        ledger,
        DelegationDenied,
        lambda: ledger.delegate(
            parent,
            agent=case.agent,
            authority_set=case.authority or child_authority(),
            actor=AGENT,
            expires_at=format_rfc3339(expiry) if expiry else None,
        ),
    )
    assert denied.reason == case.reason
    assert denied.to_dict()["mission_denial_reason"] == case.reason
    assert (denied.code, denied.http_status) == ("delegation_denied", 400)
    assert version(ledger, parent) == 1
    assert ledger.get_mission(parent).children == []


def test_fanout_counts_live_children_only(ledger: MissionLedger) -> None:
    parent = open_mission(ledger, authority_set=[delegating_entry(max_children=1)])
    first = open_child(ledger, parent)
    denied = _raises_unchanged(
        ledger, DelegationDenied, lambda: open_child(ledger, parent, agent="agent-3")
    )
    assert denied.reason == "fanout_exceeded"
    ledger.complete(first, actor=AGENT)
    second = open_child(ledger, parent, agent="agent-3")
    assert state(ledger, second) == "active"


@pytest.mark.parametrize("how", ["suspend", "revoke"])
def test_only_an_active_parent_may_delegate(ledger: MissionLedger, how: str) -> None:
    parent = open_mission(ledger)
    getattr(ledger, how)(parent, actor=OPERATOR)
    denied = _raises_unchanged(ledger, DelegationDenied, lambda: open_child(ledger, parent))
    assert denied.reason == "parent_not_active"
    assert (denied.http_status, denied.exit_code) == (409, 4)


# ---------------------------------------------------------------------------------------------
# Cascades
# ---------------------------------------------------------------------------------------------


def test_suspending_a_parent_suspends_every_live_descendant(ledger: MissionLedger) -> None:
    root, child, grandchild = open_tree(ledger)
    versions = {m: version(ledger, m) for m in (root, child, grandchild)}
    result = ledger.suspend(root, actor=OPERATOR, reason="investigation")
    assert result.changed
    for mission in (root, child, grandchild):
        assert state(ledger, mission) == "suspended"
        assert version(ledger, mission) == versions[mission] + 1
        event = last_event(ledger, mission)
        assert (event["type"], event["prior_state"]) == ("MissionSuspended", "active")
    for mission in (child, grandchild):
        assert last_event(ledger, mission)["cause"]["mission_id"] == root
        assert ledger.get_mission(mission).suspended_by == root

    ledger.resume(root, actor=OPERATOR)
    for mission in (root, child, grandchild):
        assert state(ledger, mission) == "active"
        assert version(ledger, mission) == versions[mission] + 2
        assert last_event(ledger, mission)["type"] == "MissionResumed"
    assert last_event(ledger, child)["trigger"] == "cascade"


def test_a_child_suspended_on_its_own_stays_suspended_when_the_parent_resumes(
    ledger: MissionLedger,
) -> None:
    root = open_mission(ledger)
    own = open_child(ledger, root, agent="agent-2")
    other = open_child(ledger, root, agent="agent-3")
    ledger.suspend(own, actor=OPERATOR, reason="its own problem")
    ledger.suspend(root, actor=OPERATOR)
    assert version(ledger, own) == 2, "an already suspended child gets no new event"
    assert (state(ledger, other), version(ledger, other)) == ("suspended", 2)

    ledger.resume(root, actor=OPERATOR)
    assert (state(ledger, own), version(ledger, own)) == ("suspended", 2)
    assert (state(ledger, other), version(ledger, other)) == ("active", 3)
    assert ledger.resume(own, actor=OPERATOR).document["state"] == "active"


def test_a_child_cannot_resume_while_an_ancestor_is_suspended(ledger: MissionLedger) -> None:
    root, child, grandchild = open_tree(ledger)
    ledger.suspend(root, actor=OPERATOR)
    for mission in (child, grandchild):
        refused = _raises_unchanged(
            ledger, Conflict, lambda m=mission: ledger.resume(m, actor=OPERATOR)
        )
        assert not isinstance(refused, IllegalTransition | MissionConflict)
        assert refused.code == "conflict"
        assert refused.to_dict()["current_state"] == "suspended"
    assert state(ledger, child) == "suspended"


def test_a_resumed_parent_leaves_the_subtree_of_a_still_suspended_child_suspended(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    root, child, grandchild = open_tree(ledger)
    ledger.suspend(root, actor=OPERATOR)
    # an operator puts a deadline on the child's suspension: it is now the child's own
    until = format_rfc3339(clock.now() + 5 * HOUR)
    ledger.suspend(child, actor=OPERATOR, until=until, on_expiry="resume")
    ledger.resume(root, actor=OPERATOR)
    assert state(ledger, root) == "active"
    assert state(ledger, child) == "suspended"
    assert state(ledger, grandchild) == "suspended", "a child of a suspended Mission was active"

    ledger.resume(child, actor=OPERATOR)
    assert (state(ledger, child), state(ledger, grandchild)) == ("active", "active")
    assert last_event(ledger, grandchild)["cause"]["mission_id"] == child


def test_narrowing_a_parent_keeps_its_fanout_limit(ledger: MissionLedger) -> None:
    mail = entry(["mail.send"], resource=MAIL)
    parent = open_mission(ledger, authority_set=[mail, delegating_entry(max_children=1)])
    first = open_child(ledger, parent)
    ledger.narrow(parent, [delegating_entry(max_children=1)], actor=AGENT)
    assert state(ledger, first) == "active"
    denied = _raises_unchanged(
        ledger, DelegationDenied, lambda: open_child(ledger, parent, agent="agent-3")
    )
    assert denied.reason == "fanout_exceeded"


@pytest.mark.parametrize(("operation", "ended"), [("revoke", "revoked"), ("complete", "completed")])
def test_a_terminal_parent_cascades_to_every_live_descendant(
    ledger: MissionLedger, operation: str, ended: str
) -> None:
    root, child, grandchild = open_tree(ledger)
    already = open_child(ledger, root, agent="agent-3")
    ledger.revoke(already, actor=OPERATOR)
    ledger.suspend(child, actor=OPERATOR)
    before = position(ledger)

    result = _operate(ledger, operation, root)
    assert result.document["state"] == ended
    root_event = last_event(ledger, root)
    for mission, prior in ((child, "suspended"), (grandchild, "suspended")):
        assert state(ledger, mission) == "cascaded"
        event = last_event(ledger, mission)
        assert (event["type"], event["prior_state"]) == ("MissionCascaded", prior)
        assert event["cause"] == {
            "mission_id": root,
            "event_id": root_event["event_id"],
            "state": ended,
        }
        assert root in event["reason"]
    assert (state(ledger, already), event_types(ledger, already)[-1]) == (
        "revoked",
        "MissionRevoked",
    )
    assert written_since(ledger, before) == 3
    assert result.position == position(ledger)


def test_a_descendant_past_its_own_expiry_expires_instead_of_cascading(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    root = open_mission(ledger)
    short = open_child(ledger, root, expires_at=clock.now() + DAY)
    long = open_child(ledger, root, agent="agent-3")
    clock.advance(2 * DAY)
    assert state(ledger, short) == "expired"
    ledger.revoke(root, actor=OPERATOR)
    assert (state(ledger, short), event_types(ledger, short)[-1]) == ("expired", "MissionExpired")
    assert ledger.get_mission(short).state == "expired"
    assert (state(ledger, long), event_types(ledger, long)[-1]) == ("cascaded", "MissionCascaded")


def test_a_cascade_is_one_transaction(
    ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, child, grandchild = open_tree(ledger)
    saves: list[int] = []
    save = ledger.committer._save

    def counting_save(events: Any) -> Any:
        saves.append(len(events))
        return save(events)

    monkeypatch.setattr(ledger.committer, "_save", counting_save)
    before = position(ledger)
    result = ledger.revoke(root, actor=OPERATOR)
    assert saves == [3]
    assert result.position == position(ledger)
    assert written_since(ledger, before) == 3
    notifications = ledger.recorder.select_notifications(before + 1, 10)
    assert {n.originator_id for n in notifications} == {UUID(root), UUID(child), UUID(grandchild)}


def _interleave(
    ledger: MissionLedger,
    monkeypatch: pytest.MonkeyPatch,
    when_loading: str,
    action: Callable[[], Any],
) -> None:
    """Run ``action`` right after the next command loads ``when_loading`` (a lost race)."""
    original = ledger.get_mission
    fired: list[bool] = []

    def get_mission(mission_id: str | UUID) -> Any:
        loaded = original(mission_id)
        if not fired and str(mission_id) == when_loading:
            fired.append(True)
            action()
        return loaded

    monkeypatch.setattr(ledger, "get_mission", get_mission)


def test_a_failed_cascade_writes_nothing(
    ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, child, grandchild = open_tree(ledger)
    _interleave(ledger, monkeypatch, grandchild, lambda: ledger.suspend(grandchild, actor=OPERATOR))
    before = position(ledger)
    with pytest.raises(MissionConflict) as caught:
        ledger.revoke(root, actor=OPERATOR)
    lost = caught.value
    assert lost.code == "stale_version"
    assert lost.current_version == 2  # the root: approved + delegated, untouched
    assert written_since(ledger, before) == 1  # only the interleaved suspension
    assert (state(ledger, root), version(ledger, root)) == ("active", 2)
    assert (state(ledger, child), version(ledger, child)) == ("active", 2)
    assert (state(ledger, grandchild), version(ledger, grandchild)) == ("suspended", 2)


# ---------------------------------------------------------------------------------------------
# Supersession (widening by a successor)
# ---------------------------------------------------------------------------------------------

WIDER = [*default_authority(), entry(["invoices.approve"])]


def test_a_successor_supersedes_its_predecessor(ledger: MissionLedger) -> None:
    predecessor = open_mission(ledger)
    child = open_child(ledger, predecessor)
    proposal = propose(ledger, predecessor=predecessor, authority_set=WIDER)
    assert ledger.get_proposal(proposal).predecessor == predecessor
    before = position(ledger)

    result = ledger.approve(proposal, actor=APPROVER)
    successor = result.document["mission_id"]
    assert result.document["predecessor"] == predecessor
    assert result.document["state"] == "active"
    assert result.document["authority_set"] == WIDER
    old = ledger.get_mission(predecessor)
    assert (old.state, old.successor, old.version) == ("superseded", successor, 3)
    superseded = last_event(ledger, predecessor)
    assert (superseded["type"], superseded["prior_state"]) == ("MissionSuperseded", "active")
    assert superseded["successor"] == successor
    assert state(ledger, child) == "cascaded"
    assert last_event(ledger, child)["cause"]["state"] == "superseded"
    # proposal closed + successor approved + predecessor superseded + child cascaded: one commit
    assert result.position == position(ledger)
    assert written_since(ledger, before) == 4


def test_a_successor_needs_an_active_predecessor_of_the_same_user_and_agent(
    ledger: MissionLedger,
) -> None:
    predecessor = open_mission(ledger)
    for kwargs in ({"user": "mallory"}, {"agent": "agent-7"}):
        refused = _raises_unchanged(
            ledger,
            InvalidInput,
            lambda kw=kwargs: propose(ledger, predecessor=predecessor, authority_set=WIDER, **kw),
        )
        assert refused.field == "predecessor"
    _raises_unchanged(
        ledger,
        NotFound,
        lambda: propose(ledger, predecessor="00000000-0000-4000-8000-000000000000"),
    )

    proposal = propose(ledger, predecessor=predecessor, authority_set=WIDER)
    ledger.suspend(predecessor, actor=OPERATOR)
    refused_approval = _raises_unchanged(
        ledger, IllegalTransition, lambda: ledger.approve(proposal, actor=APPROVER)
    )
    assert refused_approval.current_state == "suspended"
    assert ledger.get_proposal(proposal).state == "pending"
    refused_proposal = _raises_unchanged(
        ledger, InvalidInput, lambda: propose(ledger, predecessor=predecessor, authority_set=WIDER)
    )
    assert refused_proposal.field == "predecessor"


# ---------------------------------------------------------------------------------------------
# Expiry and the clock
# ---------------------------------------------------------------------------------------------


def test_reads_treat_a_mission_past_expiry_as_expired(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    mission = open_mission(ledger, expires_at=clock.now() + DAY)
    clock.advance(DAY)  # exactly at expires_at: no longer valid
    loaded = ledger.get_mission(mission)
    assert (loaded.state, loaded.effective_state(clock.now())) == ("active", "expired")
    assert loaded.to_dict(clock.now())["state"] == "expired"
    assert [m.mission_id for m in ledger.list_missions(state="expired")] == [mission]
    assert ledger.list_missions(state="active") == []
    assert ledger.mission_as_of(mission, as_of=clock.now())["state"] == "expired"
    for operation in OPERATIONS:
        refused = _raises_unchanged(
            ledger, IllegalTransition, lambda op=operation: _operate(ledger, op, mission)
        )
        assert refused.current_state == "expired"
    assert event_types(ledger, mission) == ["MissionApproved"]


def test_expire_due_records_expiries_cascades_and_expires_proposals(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    root = open_mission(ledger, expires_at=clock.now() + DAY)
    child = open_child(ledger, root)
    survivor = open_mission(ledger)
    pending = propose(ledger, expires_at=clock.now() + HOUR)
    later = propose(ledger)
    clock.advance(DAY + HOUR)
    assert ledger.list_proposals(state="expired")[0].proposal_id == pending
    _raises_unchanged(ledger, IllegalTransition, lambda: ledger.approve(pending, actor=APPROVER))

    report = ledger.expire_due()
    assert sorted(report.expired_missions) == sorted([root, child])
    assert report.expired_proposals == [pending]
    assert report.skipped == []
    for mission in (root, child):
        event = last_event(ledger, mission)
        assert (event["type"], event["actor"]) == ("MissionExpired", "system:expiry-clock")
        assert ledger.get_mission(mission).state == "expired"
    assert event_types(ledger, pending)[-1] == "ProposalExpired"
    assert ledger.get_proposal(pending).state == "expired"
    assert ledger.get_proposal(later).state == "pending"
    assert (state(ledger, survivor), version(ledger, survivor)) == ("active", 1)

    before = position(ledger)
    second = ledger.expire_due()
    assert second.to_dict() == {
        "expired_missions": [],
        "expired_proposals": [],
        "resumed": [],
        "revoked": [],
        "cascaded": [],
        "skipped": [],
    }
    assert position(ledger) == before


@pytest.mark.parametrize(("on_expiry", "ends_as"), [("resume", "active"), ("revoke", "revoked")])
def test_suspend_until_deadlines(
    ledger: MissionLedger, clock: FixedClock, on_expiry: str, ends_as: str
) -> None:
    root = open_mission(ledger)
    child = open_child(ledger, root)
    until = format_rfc3339(clock.now() + 2 * HOUR)
    ledger.suspend(root, actor=OPERATOR, until=until, on_expiry=on_expiry)
    assert state(ledger, child) == "suspended"

    clock.advance(HOUR)
    before = position(ledger)
    assert ledger.expire_due().to_dict()["resumed"] == []
    assert position(ledger) == before

    clock.advance(HOUR)
    report = ledger.expire_due()
    assert (report.resumed, report.revoked) == (
        ([root], []) if on_expiry == "resume" else ([], [root])
    )
    assert state(ledger, root) == ends_as
    event = last_event(ledger, root)
    assert event["trigger"] == "suspend_until"
    assert event["actor"] == "system:expiry-clock"
    if on_expiry == "resume":
        assert state(ledger, child) == "active"
        assert last_event(ledger, child)["trigger"] == "cascade"
    else:
        assert state(ledger, child) == "cascaded"
        assert report.cascaded == [child]
    assert ledger.get_mission(root).suspend_until is None

    before = position(ledger)
    ledger.expire_due()
    assert position(ledger) == before


# ---------------------------------------------------------------------------------------------
# Optimistic concurrency
# ---------------------------------------------------------------------------------------------


def test_a_lost_race_is_a_conflict_with_the_current_version(
    ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    mission = open_mission(ledger)
    _interleave(ledger, monkeypatch, mission, lambda: ledger.suspend(mission, actor="rival"))
    before = position(ledger)
    with pytest.raises(MissionConflict) as caught:
        ledger.revoke(mission, actor=OPERATOR)
    assert caught.value.current_version == 2
    assert caught.value.http_status == 409
    assert written_since(ledger, before) == 1
    assert (state(ledger, mission), last_event(ledger, mission)["actor"]) == ("suspended", "rival")


def test_two_ledgers_racing_on_one_mission(
    backend: Backend, ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not backend.shares_store:
        pytest.skip("two in-memory ledgers do not share a store")
    other = backend.open()
    mission = open_mission(ledger)
    # the other instance commits between this one's load and its commit
    _interleave(ledger, monkeypatch, mission, lambda: other.suspend(mission, actor="rival"))
    with pytest.raises(MissionConflict) as caught:
        ledger.complete(mission, actor=OPERATOR)
    assert caught.value.current_version == 2
    assert (state(ledger, mission), version(ledger, mission)) == ("suspended", 2)
    assert (state(other, mission), version(other, mission)) == ("suspended", 2)
    assert ledger.complete(mission, actor=OPERATOR, expected_version=2).document["version"] == 3
    assert state(other, mission) == "completed"


def test_an_expected_version_mismatch_is_a_conflict(ledger: MissionLedger) -> None:
    mission = open_mission(ledger)
    ledger.suspend(mission, actor=OPERATOR, expected_version=1)
    for call in (
        lambda: ledger.resume(mission, actor=OPERATOR, expected_version=1),
        lambda: ledger.revoke(mission, actor=OPERATOR, expected_version=3),
        lambda: ledger.narrow(mission, child_authority(), actor=AGENT, expected_version=1),
        lambda: ledger.delegate(
            mission,
            agent="agent-2",
            authority_set=child_authority(),
            actor=AGENT,
            expected_version=1,
        ),
    ):
        refused = _raises_unchanged(ledger, MissionConflict, call)
        assert refused.current_version == 2
        assert refused.to_dict()["current_version"] == 2
    assert ledger.resume(mission, actor=OPERATOR, expected_version=2).document["version"] == 3


def test_racing_threads_never_lose_an_update(ledger: MissionLedger) -> None:
    mission = open_mission(ledger)
    threads, rounds = 8, 6
    barrier = threading.Barrier(threads)

    def worker(index: int) -> tuple[int, int, int]:
        applied = conflicts = illegal = 0
        barrier.wait()
        for step in range(rounds):
            operation = "suspend" if (index + step) % 2 == 0 else "resume"
            try:
                result = getattr(ledger, operation)(mission, actor=f"worker-{index}")
            except MissionConflict as error:
                conflicts += int(error.current_version is not None)
            except IllegalTransition:
                illegal += 1
            else:
                applied += int(result.changed)
        return applied, conflicts, illegal

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(worker, range(threads)))
    applied = sum(o[0] for o in outcomes)
    assert sum(sum(o) for o in outcomes) <= threads * rounds
    assert applied >= 1
    assert version(ledger, mission) == 1 + applied
    assert len(ledger.history(mission)) == 1 + applied
    assert chain_problems(ledger, mission) == []


def test_concurrent_commands_on_different_missions_all_commit(ledger: MissionLedger) -> None:
    threads = 16
    barrier = threading.Barrier(threads)

    def worker(index: int) -> str:
        barrier.wait()
        proposal = ledger.propose(
            proposal_document(ledger.clock.now(), user=f"user-{index}"), actor=AGENT
        )
        approved = ledger.approve(proposal.document["proposal_id"], actor=APPROVER)
        return str(approved.document["mission_id"])

    with ThreadPoolExecutor(threads) as pool:
        missions = list(pool.map(worker, range(threads)))
    assert len(set(missions)) == threads
    for mission in missions:
        assert (state(ledger, mission), version(ledger, mission)) == ("active", 1)
    assert len(ledger.list_missions()) == threads
    assert written_since(ledger, 0) == 3 * threads
    assert ledger.committer.batches <= ledger.committer.units


# ---------------------------------------------------------------------------------------------
# Idempotency
# ---------------------------------------------------------------------------------------------


def test_a_repeated_key_replays_the_first_result(ledger: MissionLedger) -> None:
    doc = proposal_document(ledger.clock.now())
    first = ledger.propose(doc, actor=AGENT, idempotency_key="k-propose")
    written = position(ledger)
    assert first.changed
    assert not first.replayed

    again = ledger.propose(doc, actor=AGENT, idempotency_key="k-propose")
    assert again.replayed
    assert not again.changed
    assert again.document == first.document
    assert position(ledger) == written
    assert len(ledger.list_proposals()) == 1

    mission = ledger.approve(first.document["proposal_id"], actor=APPROVER).document["mission_id"]
    suspended = ledger.suspend(mission, actor=OPERATOR, idempotency_key="k-suspend")
    ledger.resume(mission, actor=OPERATOR)
    replay = ledger.suspend(mission, actor=OPERATOR, idempotency_key="k-suspend")
    assert replay.replayed
    assert replay.document == suspended.document
    assert (state(ledger, mission), version(ledger, mission)) == ("active", 3)


def test_a_reused_key_with_another_body_is_refused(ledger: MissionLedger) -> None:
    doc = proposal_document(ledger.clock.now())
    ledger.propose(doc, actor=AGENT, idempotency_key="k-1")
    other = proposal_document(ledger.clock.now(), goal="Something else")
    refused = _raises_unchanged(
        ledger,
        IdempotencyKeyReused,
        lambda: ledger.propose(other, actor=AGENT, idempotency_key="k-1"),
    )
    assert (refused.code, refused.http_status) == ("idempotency_key_reused", 409)
    mission = open_mission(ledger)
    _raises_unchanged(
        ledger,
        IdempotencyKeyReused,
        lambda: ledger.suspend(mission, actor=OPERATOR, idempotency_key="k-1"),
    )
    assert version(ledger, mission) == 1


class _RacingClock:
    """A clock that runs a rival command the first time the ledger reads the time."""

    def __init__(self, inner: FixedClock, rival: Callable[[], Any]) -> None:
        self.inner = inner
        self.rival: Callable[[], Any] | None = rival
        self.rival_result: Any = None

    def now(self) -> datetime:
        rival, self.rival = self.rival, None
        if rival is not None:
            self.rival_result = rival()
        return self.inner.now()


def test_a_key_raced_by_a_rival_is_written_once(
    ledger: MissionLedger, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = proposal_document(clock.now())
    racing = _RacingClock(clock, lambda: ledger.propose(doc, actor=AGENT, idempotency_key="k-race"))
    monkeypatch.setattr(ledger, "clock", racing)
    before = position(ledger)
    loser = ledger.propose(doc, actor=AGENT, idempotency_key="k-race")
    winner: CommandResult = racing.rival_result
    assert not winner.replayed
    assert loser.replayed
    assert loser.document == winner.document
    assert written_since(ledger, before) == 2  # the proposal and the idempotency record
    assert len(ledger.list_proposals()) == 1


def test_a_retry_that_sees_its_first_attempt_replays_it(
    ledger: MissionLedger, clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    mission = open_mission(ledger)
    ledger.suspend(mission, actor=OPERATOR)
    # the first attempt commits after the retry looked for its record but before it loads
    racing = _RacingClock(
        clock, lambda: ledger.resume(mission, actor=OPERATOR, idempotency_key="k-resume")
    )
    monkeypatch.setattr(ledger, "clock", racing)
    before = position(ledger)
    retry = ledger.resume(mission, actor=OPERATOR, idempotency_key="k-resume")
    assert retry.replayed
    assert retry.document == racing.rival_result.document
    assert written_since(ledger, before) == 2  # the resume and its idempotency record
    assert (state(ledger, mission), version(ledger, mission)) == ("active", 3)


def test_threads_racing_with_one_key_write_once(ledger: MissionLedger) -> None:
    mission = open_mission(ledger)
    for round_number in range(4):
        barrier = threading.Barrier(2)
        before = position(ledger)
        operation = "suspend" if round_number % 2 == 0 else "resume"

        def attempt(
            _: int,
            op: str = operation,
            key: str = f"k-{round_number}",
            barrier: threading.Barrier = barrier,
        ) -> CommandResult:
            barrier.wait()
            result: CommandResult = getattr(ledger, op)(
                mission, actor=OPERATOR, idempotency_key=key
            )
            return result

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(attempt, range(2)))
        assert [r.replayed for r in results].count(False) == 1
        assert results[0].document == results[1].document
        assert written_since(ledger, before) == 2  # one lifecycle event and one record
    assert version(ledger, mission) == 5


# ---------------------------------------------------------------------------------------------
# Time travel
# ---------------------------------------------------------------------------------------------


def test_a_mission_as_of_a_time_or_a_version(ledger: MissionLedger, clock: FixedClock) -> None:
    start = clock.now()
    mission = open_mission(ledger, expires_at=start + 2 * DAY)
    clock.advance(HOUR)
    ledger.suspend(mission, actor=OPERATOR)
    clock.advance(HOUR)
    ledger.resume(mission, actor=OPERATOR)
    clock.advance(HOUR)
    ledger.revoke(mission, actor=OPERATOR)
    history = ledger.history(mission)

    for offset, expected_state, expected_version in (
        (timedelta(minutes=30), "active", 1),
        (timedelta(minutes=90), "suspended", 2),
        (2 * HOUR, "active", 3),
        (5 * HOUR, "revoked", 4),
        (3 * DAY, "revoked", 4),
    ):
        view = ledger.mission_as_of(mission, as_of=start + offset)
        assert (view["state"], view["version"]) == (expected_state, expected_version)
        assert view["as_of"] == format_rfc3339(start + offset)
        assert [(r["event_id"], r["version"]) for r in view["rests_on"]] == [
            (e["event_id"], e["version"]) for e in history[:expected_version]
        ]
        assert view["rests_on"][-1]["hash"] == history[expected_version - 1]["hash"]

    by_version = ledger.mission_as_of(mission, version=2)
    assert (by_version["state"], by_version["version"]) == ("suspended", 2)
    assert [r["type"] for r in by_version["rests_on"]] == ["MissionApproved", "MissionSuspended"]

    for kwargs in ({"as_of": start - HOUR}, {"version": 0}, {"version": 5}):
        error = _raises_unchanged(
            ledger, NotFound, lambda kw=kwargs: ledger.mission_as_of(mission, **kw)
        )
        assert error.code == "not_found"


def test_as_of_after_expiry_reads_expired(ledger: MissionLedger, clock: FixedClock) -> None:
    mission = open_mission(ledger, expires_at=clock.now() + DAY)
    view = ledger.mission_as_of(mission, as_of=clock.now() + 2 * DAY)
    assert (view["state"], view["stored_state"], view["version"]) == ("expired", "active", 1)


def test_the_current_view_evaluates_expiry_now(ledger: MissionLedger, clock: FixedClock) -> None:
    mission = open_mission(ledger, expires_at=clock.now() + DAY)
    clock.advance(2 * DAY)
    view = ledger.mission_as_of(mission)
    assert (view["state"], view["stored_state"]) == ("expired", "active")
    assert view["as_of"] == format_rfc3339(clock.now())
    pinned = ledger.mission_as_of(mission, version=1)
    assert pinned["state"] == "active"  # as it was when version 1 was committed


# ---------------------------------------------------------------------------------------------
# Snapshots
# ---------------------------------------------------------------------------------------------


def test_a_long_history_loads_through_its_snapshot(backend: Backend) -> None:
    ledger = backend.open(snapshot_interval=10)
    mission = open_mission(ledger)
    for _ in range(6):
        ledger.suspend(mission, actor=OPERATOR)
        ledger.resume(mission, actor=OPERATOR)
    assert ledger.snapshots is not None
    snapshots = list(ledger.snapshots.get(UUID(mission)))
    assert [s.originator_version for s in snapshots] == [10]

    loaded = ledger.get_mission(mission)
    assert (loaded.version, loaded.state) == (13, "active")
    assert loaded.head_hash == ledger.history(mission)[-1]["hash"]
    assert ledger.mission_as_of(mission, version=12)["state"] == "suspended"
    assert ledger.mission_as_of(mission, version=9)["state"] == "active"

    reader = backend.open(snapshot_interval=10) if backend.shares_store else ledger
    ledger_after = reader.suspend(mission, actor=OPERATOR, reason="after the snapshot")
    assert ledger_after.document["version"] == 14
    assert chain_problems(reader, mission) == []
    assert state(reader, mission) == "suspended"


# ---------------------------------------------------------------------------------------------
# The hash chain
# ---------------------------------------------------------------------------------------------


def test_every_stream_is_a_valid_hash_chain(ledger: MissionLedger, clock: FixedClock) -> None:
    root, child, _grandchild = open_tree(ledger)
    ledger.narrow(child, child_authority(delegable_to=["agent-3"]), actor=AGENT)
    staged = open_mission(ledger, stages=["plan", "execute"], authority_set=STAGED)
    ledger.advance_stage(staged, actor=AGENT)
    ledger.suspend(
        root, actor=OPERATOR, until=format_rfc3339(clock.now() + HOUR), on_expiry="resume"
    )
    clock.advance(2 * HOUR)
    ledger.expire_due()
    ledger.narrow(root, [delegating_entry(["invoices.read", "invoices.write"])], actor=AGENT)
    ledger.revoke(root, actor=OPERATOR, idempotency_key="k-chain")
    propose(ledger)

    missions, proposals = ledger.catalog()
    assert len(missions) == 4
    assert len(proposals) == 3
    for aggregate_id in [*missions, *proposals]:
        assert chain_problems(ledger, aggregate_id) == []
        history = ledger.history(aggregate_id)
        assert history[0]["prev_hash"] != history[0]["hash"]
        assert [e["prev_hash"] for e in history[1:]] == [e["hash"] for e in history[:-1]]
    assert ledger.get_mission(root).head_hash == ledger.history(root)[-1]["hash"]
