"""Builders shared by the contract suite: proposal documents, Missions, children and probes.

Every builder takes the ledger (and, where time matters, reads the ledger's own clock), so the
same helper works on the in-memory, SQLite and PostgreSQL backends.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from mission_ledger.domain.chain import compute_hash, genesis_hash
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import MissionLedger

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MISSION_LIFETIME = 30 * DAY

USER = "alice"
AGENT = "agent-1"
APPROVER = "approver-bob"
OPERATOR = "operator-olga"

ERP = "https://erp.example.com"
MAIL = "https://mail.example.com/outbox"
ENTRY_TYPE = "mission_resource_access"


def entry(
    actions: Sequence[str] = ("invoices.read",),
    *,
    resource: str = f"{ERP}/*",
    constraints: dict[str, Any] | None = None,
    delegation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One Authority Set entry."""
    out: dict[str, Any] = {"type": ENTRY_TYPE, "resource": resource, "actions": list(actions)}
    if constraints is not None:
        out["constraints"] = constraints
    if delegation is not None:
        out["delegation"] = delegation
    return out


def children_policy(
    agents: Sequence[str] = ("agent-2", "agent-3"),
    *,
    max_depth: int = 2,
    max_children: int | None = 5,
) -> dict[str, Any]:
    """A ``delegation`` member that lets the holder create child Missions for ``agents``."""
    children: dict[str, Any] = {"allowed_child_actors": [{"sub": a} for a in agents]}
    if max_children is not None:
        children["max_children"] = max_children
    return {"max_depth": max_depth, "children": children}


def delegating_entry(
    actions: Sequence[str] = ("invoices.read", "invoices.write"),
    *,
    agents: Sequence[str] = ("agent-2", "agent-3"),
    max_depth: int = 2,
    max_children: int | None = 5,
) -> dict[str, Any]:
    """The ERP entry of the default Authority Set: it may be delegated to ``agents``."""
    return entry(
        actions,
        delegation=children_policy(agents, max_depth=max_depth, max_children=max_children),
    )


def default_authority(**delegation: Any) -> list[dict[str, Any]]:
    """ERP read/write (delegable to agent-2 and agent-3) plus mail.send (not delegable)."""
    return [delegating_entry(**delegation), entry(["mail.send"], resource=MAIL)]


def proposal_document(
    now: datetime,
    *,
    user: str = USER,
    agent: str = AGENT,
    authority_set: list[dict[str, Any]] | None = None,
    expires_at: datetime | str | None = None,
    stages: list[str] | None = None,
    predecessor: str | None = None,
    goal: str = "Reconcile Q1 invoices",
) -> dict[str, Any]:
    """A valid proposal document (the ``POST /proposals`` body) expiring 30 days after ``now``."""
    expiry = expires_at if expires_at is not None else now + MISSION_LIFETIME
    doc: dict[str, Any] = {
        "user": user,
        "agent": agent,
        "task": {"id": "task-42", "description": "Reconcile the quarter's invoices"},
        "intent": {
            "goal": goal,
            "resources": [ERP],
            "expires_at": expiry if isinstance(expiry, str) else format_rfc3339(expiry),
        },
        "authority_set": copy.deepcopy(
            authority_set if authority_set is not None else default_authority()
        ),
    }
    if stages is not None:
        doc["stages"] = stages
    if predecessor is not None:
        doc["predecessor"] = predecessor
    return doc


def propose(ledger: MissionLedger, **doc: Any) -> str:
    """Submit a proposal; returns its id."""
    document = proposal_document(ledger.clock.now(), **doc)
    result = ledger.propose(document, actor=document["agent"])
    return str(result.document["proposal_id"])


def open_mission(ledger: MissionLedger, **doc: Any) -> str:
    """Propose and approve a Mission; returns the mission id."""
    proposal_id = propose(ledger, **doc)
    result = ledger.approve(proposal_id, actor=APPROVER)
    return str(result.document["mission_id"])


def child_authority(
    actions: Sequence[str] = ("invoices.read",),
    *,
    delegable_to: Sequence[str] | None = None,
    max_depth: int = 1,
) -> list[dict[str, Any]]:
    """A child Authority Set within the default ERP entry (optionally delegable one level)."""
    delegation = (
        children_policy(delegable_to, max_depth=max_depth) if delegable_to is not None else None
    )
    return [entry(actions, delegation=delegation)]


def open_child(
    ledger: MissionLedger,
    parent_id: str,
    *,
    agent: str = "agent-2",
    authority_set: list[dict[str, Any]] | None = None,
    expires_at: datetime | None = None,
) -> str:
    """Delegate a child Mission; returns its id."""
    result = ledger.delegate(
        parent_id,
        agent=agent,
        authority_set=authority_set if authority_set is not None else child_authority(),
        actor=AGENT,
        expires_at=format_rfc3339(expires_at) if expires_at is not None else None,
    )
    return str(result.document["mission_id"])


def open_tree(ledger: MissionLedger) -> tuple[str, str, str]:
    """A root Mission, a child (agent-2, may delegate to agent-3) and a grandchild (agent-3)."""
    root = open_mission(ledger)
    child = open_child(ledger, root, authority_set=child_authority(delegable_to=["agent-3"]))
    grandchild = open_child(ledger, child, agent="agent-3")
    return root, child, grandchild


# -- probes -----------------------------------------------------------------------------------


def position(ledger: MissionLedger) -> int:
    """The notification id of the newest stored event (0 for an empty store)."""
    return ledger.recorder.max_notification_id() or 0


def written_since(ledger: MissionLedger, since: int) -> int:
    """How many events were stored after position ``since`` (ids may have gaps on PostgreSQL,
    where a rolled-back insert still consumes its sequence values)."""
    return len(ledger.recorder.select_notifications(since + 1, 10_000))


def state(ledger: MissionLedger, mission_id: str) -> str:
    """The effective state now (expiry evaluated before the stored state)."""
    return ledger.get_mission(mission_id).effective_state(ledger.clock.now())


def version(ledger: MissionLedger, mission_id: str) -> int:
    return ledger.get_mission(mission_id).version


def event_types(ledger: MissionLedger, aggregate_id: str) -> list[str]:
    return [event["type"] for event in ledger.history(aggregate_id)]


def last_event(ledger: MissionLedger, aggregate_id: str) -> dict[str, Any]:
    return ledger.history(aggregate_id)[-1]


def chain_problems(ledger: MissionLedger, aggregate_id: str | UUID) -> list[str]:
    """Every broken link of an aggregate's stored hash chain (empty when intact)."""
    aid = aggregate_id if isinstance(aggregate_id, UUID) else UUID(aggregate_id)
    problems: list[str] = []
    expected_prev = genesis_hash(aid)
    events = list(ledger.events.get(aid))
    if not events:
        return [f"{aid}: no events"]
    for number, event in enumerate(events, start=1):
        if event.originator_version != number:
            problems.append(f"{aid}: version {event.originator_version} at position {number}")
        if event.prev_hash != expected_prev:
            problems.append(f"{aid} v{number}: prev_hash does not link to the previous hash")
        if compute_hash(event) != event.hash:
            problems.append(f"{aid} v{number}: hash does not match the content")
        expected_prev = event.hash
    return problems
