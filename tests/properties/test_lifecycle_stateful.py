"""The Mission lifecycle against a pure reference model (a Hypothesis state machine).

Rules propose and approve root Missions, delegate children (random attenuations of the parent's
entries, random agents and expiries), suspend (with or without a deadline), resume, revoke,
complete, narrow, try to widen, and move the clock before running the expiry sweep. The model
below is a handful of dicts that predict, for every command, either its outcome (the state and
version of every Mission) or the exact error; the ledger (in-memory store, :class:`FixedClock`)
must agree after every step, and a refused command must leave the store unchanged.

Invariants checked after every step:

* every Mission's effective state and version equal the model's, and its version equals the
  number of its stored events;
* a Mission that reached a terminal state never leaves it;
* a live child never has a terminal parent, and the child of a suspended parent is never active;
* a child's Authority Set is within its parent's as delegated (``subset_violation``), and within
  the parent's current one as long as the parent has not been narrowed since (decision 12:
  narrowing a parent does not rewrite its children).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.authority import parse_authority_set, subset_violation
from mission_ledger.domain.errors import (
    Conflict,
    DelegationDenied,
    IllegalTransition,
    InvalidAuthority,
    InvalidInput,
    MissionLedgerError,
)
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import MissionLedger

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
LIVE = frozenset({"active", "suspended"})
TERMINAL = frozenset({"revoked", "completed", "expired", "cascaded", "superseded"})
ENTRY = "mission_resource_access"
INVOICES = "https://erp.example.com/invoices"
MAIL = "https://mail.example.com/outbox"
AGENTS = ("agent-2", "agent-3", "agent-9")  # agent-9 is never an allowed child actor
ROOT_AUTHORITY: list[dict[str, Any]] = [
    {
        "type": ENTRY,
        "resource": INVOICES,
        "actions": ["read", "write", "approve"],
        "delegation": {
            "max_depth": 3,
            "children": {
                "max_children": 2,
                "allowed_child_actors": [{"sub": "agent-2"}, {"sub": "agent-3"}],
            },
        },
    },
    {"type": ENTRY, "resource": MAIL, "actions": ["send", "draft"]},
]


@dataclass
class Model:
    """What the reference model knows about one Mission."""

    parent: str | None
    expires_at: datetime
    authority: list[dict[str, Any]]
    state: str = "active"
    version: int = 1
    suspended_by: str | None = None
    suspend_until: str | None = None
    on_expiry: str | None = None
    children: list[str] = field(default_factory=list)
    agent: str = "agent-1"
    parent_authority: list[dict[str, Any]] | None = None  # the parent's, when delegated


class Refused(Exception):
    """The model's prediction that a command fails (with this error type and details)."""

    def __init__(self, error: type[MissionLedgerError], **details: Any) -> None:
        super().__init__(error.__name__)
        self.error = error
        self.details = details


def _children_policy(entry: dict[str, Any]) -> dict[str, Any] | None:
    delegation = entry.get("delegation")
    return delegation.get("children") if delegation else None


def _allowed(entry: dict[str, Any], agent: str) -> bool:
    policy = _children_policy(entry)
    return policy is not None and {"sub": agent} in policy["allowed_child_actors"]


def _within_for_child(parent: dict[str, Any], child: dict[str, Any]) -> bool:
    """Child entry ⊆ parent entry, one delegation level down (exact resources and actions)."""
    if child["resource"] != parent["resource"]:
        return False
    if not set(child["actions"]) <= set(parent["actions"]):
        return False
    if "delegation" not in child:
        return True
    if "delegation" not in parent:
        return False
    below = parent["delegation"]["max_depth"] - 1
    return child["delegation"]["max_depth"] <= below and child["delegation"].get(
        "children"
    ) == parent["delegation"].get("children")


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FixedClock(T0)
        self.ledger = MissionLedger(Settings(database_url="memory:"), clock=self.clock)
        self.missions: dict[str, Model] = {}  # in creation order, like the catalog
        self.ended: dict[str, str] = {}
        self.roots = 0
        self.refusals: dict[str, int] = {}
        self.delegated = 0

    def teardown(self) -> None:
        for name in self.refusals:
            event(f"refused: {name}")
        event(f"missions: {len(self.missions)}")
        event(f"children: {min(self.delegated, 5)}")
        event(f"deepest: {max((self.depth(m) for m in self.missions), default=0)}")
        event(f"terminal: {len(self.ended)}")
        self.ledger.close()

    # -- the model ----------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.clock.now()

    def effective(self, mission_id: str) -> str:
        m = self.missions[mission_id]
        if m.state in LIVE and self.now >= m.expires_at:
            return "expired"
        return m.state

    def descendants(self, mission_id: str) -> list[str]:
        queue, found = list(self.missions[mission_id].children), []
        while queue:
            child = queue.pop(0)
            found.append(child)
            queue.extend(self.missions[child].children)
        return found

    def suspended_ancestor(self, mission_id: str) -> str | None:
        parent = self.missions[mission_id].parent
        while parent is not None:
            if self.effective(parent) == "suspended":
                return parent
            parent = self.missions[parent].parent
        return None

    def record(self, mission_id: str, state: str, **fields: Any) -> None:
        m = self.missions[mission_id]
        m.state = state
        m.version += 1
        m.suspended_by = fields.get("suspended_by")
        m.suspend_until = fields.get("suspend_until")
        m.on_expiry = fields.get("on_expiry")

    def model_suspend(self, mission_id: str, until: str | None, on_expiry: str | None) -> None:
        m, state = self.missions[mission_id], self.effective(mission_id)
        if state == "suspended":
            if (until, on_expiry) != (m.suspend_until, m.on_expiry):
                self.record(mission_id, "suspended", suspend_until=until, on_expiry=on_expiry)
            return
        if state != "active":
            raise Refused(IllegalTransition, current_state=state)
        self.record(mission_id, "suspended", suspend_until=until, on_expiry=on_expiry)
        for child in self.descendants(mission_id):
            if self.effective(child) == "active":
                self.record(child, "suspended", suspended_by=mission_id)

    def model_resume(self, mission_id: str) -> None:
        state = self.effective(mission_id)
        if state != "suspended":
            raise Refused(IllegalTransition, current_state=state)
        if self.suspended_ancestor(mission_id) is not None:
            raise Refused(Conflict, current_state=state)
        self.record(mission_id, "active")
        queue = list(self.missions[mission_id].children)
        while queue:
            child = queue.pop(0)
            if self.effective(child) == "suspended":
                if self.missions[child].suspended_by is None:
                    continue  # suspended on its own: it and its subtree stay suspended
                self.record(child, "active")
            queue.extend(self.missions[child].children)

    def model_end(self, mission_id: str, target: str) -> None:
        state = self.effective(mission_id)
        if state == target:
            return
        if state not in LIVE:
            raise Refused(IllegalTransition, current_state=state)
        self.record(mission_id, target)
        self.cascade(mission_id)

    def cascade(self, mission_id: str) -> None:
        for child in self.descendants(mission_id):
            c = self.missions[child]
            if c.state in LIVE:
                self.record(child, "expired" if self.now >= c.expires_at else "cascaded")

    def model_delegate(
        self, parent_id: str, agent: str, child: list[dict[str, Any]], expiry: datetime
    ) -> None:
        """Raise :class:`Refused` unless the child is allowed."""
        parent = self.missions[parent_id]
        if self.effective(parent_id) != "active":
            raise Refused(DelegationDenied, mission_denial_reason="parent_not_active")
        if expiry > parent.expires_at:
            raise Refused(DelegationDenied, mission_denial_reason="not_strict_subset")
        if expiry <= self.now:
            raise Refused(InvalidInput, field="expires_at")
        entries = parent.authority
        if not any(_children_policy(e) for e in entries):
            raise Refused(DelegationDenied, mission_denial_reason="delegation_not_permitted")
        candidates = [i for i, e in enumerate(entries) if _allowed(e, agent)]
        if not candidates:
            raise Refused(DelegationDenied, mission_denial_reason="child_actor_not_allowed")
        for c in child:
            if not any(_within_for_child(entries[i], c) for i in candidates):
                raise Refused(DelegationDenied, mission_denial_reason="not_strict_subset")
        justifying = next(
            i for i in candidates if any(_within_for_child(entries[i], c) for c in child)
        )
        # live siblings count against the parent's *current* entries: each against the first
        # entry admitting its agent that still covers one of its entries (else the first one)
        live = 0
        for sibling in parent.children:
            model = self.missions[sibling]
            admitting = [i for i, e in enumerate(entries) if _allowed(e, model.agent)]
            if not admitting or self.effective(sibling) not in LIVE:
                continue
            counted = next(
                (
                    i
                    for i in admitting
                    if any(_within_for_child(entries[i], c) for c in model.authority)
                ),
                admitting[0],
            )
            live += counted == justifying
        policy = _children_policy(entries[justifying])
        assert policy is not None
        if live >= policy.get("max_children", live + 1):
            raise Refused(DelegationDenied, mission_denial_reason="fanout_exceeded")

    def model_expire_due(self) -> None:
        for mission_id, m in self.missions.items():
            if m.state in LIVE and self.now >= m.expires_at:
                self.record(mission_id, "expired")
        for mission_id, m in self.missions.items():
            if m.state != "suspended" or m.suspend_until is None:
                continue
            if self.now < datetime.fromisoformat(m.suspend_until):
                continue
            if m.on_expiry == "resume":
                if self.suspended_ancestor(mission_id) is None:
                    self.model_resume(mission_id)
            else:
                self.record(mission_id, "revoked")
                self.cascade(mission_id)

    # -- running a command against both ---------------------------------------------------------

    def run(self, predict: Any, command: Any) -> Any:
        """Apply ``predict`` to the model, run ``command`` on the ledger, compare the outcomes.

        A predicted refusal restores the model and expects exactly that error type (and its
        details) from the ledger, with nothing written.
        """
        snapshot = copy.deepcopy(self.missions)
        before = self.ledger.recorder.max_notification_id()
        refusal: Refused | None = None
        try:
            predict()
        except Refused as predicted:
            refusal = predicted
        if refusal is None:
            try:
                return command()
            except MissionLedgerError as error:
                raise AssertionError(
                    f"the model accepts what the ledger refused: {error!r}"
                ) from error
        self.missions = snapshot
        with pytest.raises(refusal.error) as caught:
            command()
        error = caught.value
        assert type(error) is refusal.error, (error, refusal.details)
        for name, value in refusal.details.items():
            assert error.to_dict()[name] == value, (name, error)
        assert self.ledger.recorder.max_notification_id() == before
        label = error.to_dict().get("mission_denial_reason", type(error).__name__)
        self.refusals[label] = self.refusals.get(label, 0) + 1
        return None

    # -- rules ---------------------------------------------------------------------------------

    @initialize(days=st.integers(3, 8), shape=st.sampled_from(["root", "chain", "fan", "tree"]))
    def first_tree(self, days: int, shape: str) -> None:
        """Start from a small tree, so that cascades have descendants to reach."""
        self.open_root(days)
        root = next(iter(self.missions))
        if shape in ("chain", "tree"):
            child = self.grow(root, "agent-2")
            grandchild = self.grow(child, "agent-3")
            if shape == "chain":
                self.grow(grandchild, "agent-2")
        if shape in ("fan", "tree"):
            self.grow(root, "agent-3")

    def grow(self, parent_id: str, agent: str) -> str:
        """A child with the parent's delegable entry, one delegation level down."""
        entry = copy.deepcopy(self.missions[parent_id].authority[0])
        entry["delegation"]["max_depth"] -= 1
        if entry["delegation"]["max_depth"] < 1:
            del entry["delegation"]
        child = self.delegate_child(parent_id, agent, [entry], 0)
        assert child is not None
        return child

    @precondition(lambda self: self.roots < 2)
    @rule(days=st.integers(1, 8))
    def open_root(self, days: int) -> None:
        self.roots += 1
        expires_at = self.now + days * DAY
        doc = {
            "user": f"user-{self.roots}",
            "agent": "agent-1",
            "task": {"id": f"t-{self.roots}", "description": "property run"},
            "intent": {
                "goal": "exercise the lifecycle",
                "resources": [INVOICES],
                "expires_at": format_rfc3339(expires_at),
            },
            "authority_set": ROOT_AUTHORITY,
        }
        proposal = self.ledger.propose(doc, actor="agent-1").document["proposal_id"]
        mission = self.ledger.approve(proposal, actor="approver").document["mission_id"]
        self.missions[mission] = Model(None, expires_at, copy.deepcopy(ROOT_AUTHORITY))

    def pick(self, data: st.DataObject, *states: str) -> str:
        """A Mission: usually one in ``states``, often one with children (where cascades
        happen), sometimes any at all (so that refusals are exercised too)."""
        focus = [m for m in self.missions if self.effective(m) in states]
        inner = [m for m in focus if self.missions[m].children]
        choice = data.draw(st.integers(0, 3), label="focus")
        pool = inner if choice >= 2 and inner else focus if choice >= 1 and focus else None
        return data.draw(st.sampled_from(pool or list(self.missions)), label="mission")

    def attenuate(
        self, data: st.DataObject, authority: list[dict[str, Any]], *, plausible: bool = False
    ) -> list[dict[str, Any]]:
        """A random attenuation: some entries, some of their actions, delegation cut, one level
        down, or kept verbatim. ``plausible`` draws what a well-behaved delegating agent would
        send (only delegable entries, delegation never verbatim), so more children get created.
        """
        indices = range(len(authority))
        if plausible and any("delegation" in e for e in authority):
            indices = [i for i in indices if "delegation" in authority[i]]
        keep = data.draw(st.sets(st.sampled_from(list(indices)), min_size=1), label="entries")
        modes = ["cut", "down"] if plausible else ["cut", "down", "keep"]
        out = []
        for index in sorted(keep):
            entry = authority[index]
            actions = data.draw(
                st.lists(st.sampled_from(entry["actions"]), min_size=1, unique=True),
                label="actions",
            )
            narrowed = {"type": ENTRY, "resource": entry["resource"], "actions": actions}
            if "delegation" in entry:
                mode = data.draw(st.sampled_from(modes), label="delegation")
                delegation = copy.deepcopy(entry["delegation"])
                if mode == "down":
                    delegation["max_depth"] -= 1
                if mode != "cut" and delegation["max_depth"] >= 1:
                    narrowed["delegation"] = delegation
            out.append(narrowed)
        return out

    @precondition(lambda self: self.missions)
    @rule(
        data=st.data(),
        agent=st.sampled_from(AGENTS),
        expiry=st.one_of(st.just(0), st.integers(-48, 2)),
        plausible=st.booleans(),
    )
    def delegate(self, data: st.DataObject, agent: str, expiry: int, plausible: bool) -> None:
        parent_id = self.pick(data, "active")
        child = self.attenuate(data, self.missions[parent_id].authority, plausible=plausible)
        self.delegate_child(parent_id, agent, child, expiry)

    def delegate_child(
        self, parent_id: str, agent: str, child: list[dict[str, Any]], expiry: int
    ) -> str | None:
        """Delegate (model and ledger); ``expiry`` 0 is the parent's (the default), > 0 hours
        later than the parent's, < 0 hours earlier. Returns the child, or None if refused."""
        parent = self.missions[parent_id]
        child_expiry = parent.expires_at + expiry * HOUR
        given = None if expiry == 0 else format_rfc3339(child_expiry)

        def predict() -> None:
            self.model_delegate(parent_id, agent, child, child_expiry)

        result = self.run(
            predict,
            lambda: self.ledger.delegate(
                parent_id, agent=agent, authority_set=child, actor="agent-1", expires_at=given
            ),
        )
        if result is None:
            return None
        self.delegated += 1
        child_id = str(result.document["mission_id"])
        parent.children.append(child_id)
        parent.version += 1
        self.missions[child_id] = Model(
            parent_id,
            child_expiry,
            child,
            agent=agent,
            parent_authority=copy.deepcopy(parent.authority),
        )
        assert result.document["parent"]["depth"] == self.depth(child_id)
        return child_id

    def depth(self, mission_id: str) -> int:
        parent, depth = self.missions[mission_id].parent, 0
        while parent is not None:
            depth += 1
            parent = self.missions[parent].parent
        return depth

    @precondition(lambda self: self.missions)
    @rule(
        data=st.data(),
        until=st.one_of(st.none(), st.integers(1, 72)),
        on_expiry=st.sampled_from(["resume", "revoke"]),
    )
    def suspend(self, data: st.DataObject, until: int | None, on_expiry: str) -> None:
        mission_id = self.pick(data, "active", "suspended")
        until_text = format_rfc3339(self.now + until * HOUR) if until is not None else None
        policy = on_expiry if until is not None else None
        self.run(
            lambda: self.model_suspend(mission_id, until_text, policy),
            lambda: self.ledger.suspend(
                mission_id, actor="operator", until=until_text, on_expiry=policy
            ),
        )

    @precondition(lambda self: any(self.effective(m) == "suspended" for m in self.missions))
    @rule(
        data=st.data(),
        until=st.integers(1, 72),
        on_expiry=st.sampled_from(["resume", "revoke"]),
    )
    def reschedule(self, data: st.DataObject, until: int, on_expiry: str) -> None:
        """Give a suspended Mission (often one suspended by an ancestor) its own deadline."""
        mission_id = self.pick(data, "suspended")
        until_text = format_rfc3339(self.now + until * HOUR)
        self.run(
            lambda: self.model_suspend(mission_id, until_text, on_expiry),
            lambda: self.ledger.suspend(
                mission_id, actor="operator", until=until_text, on_expiry=on_expiry
            ),
        )

    @precondition(lambda self: self.missions)
    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        # often the top of a suspended subtree: the resume that cascades
        tops = [
            m
            for m, model in self.missions.items()
            if self.effective(m) == "suspended" and model.suspended_by is None and model.children
        ]
        if tops and data.draw(st.booleans(), label="top"):
            mission_id = data.draw(st.sampled_from(tops), label="mission")
        else:
            mission_id = self.pick(data, "suspended")
        self.run(
            lambda: self.model_resume(mission_id),
            lambda: self.ledger.resume(mission_id, actor="operator"),
        )

    @precondition(lambda self: self.missions)
    @rule(data=st.data(), operation=st.sampled_from(["revoke", "complete"]))
    def end(self, data: st.DataObject, operation: str) -> None:
        mission_id = self.pick(data, "active", "suspended")
        target = {"revoke": "revoked", "complete": "completed"}[operation]
        self.run(
            lambda: self.model_end(mission_id, target),
            lambda: getattr(self.ledger, operation)(mission_id, actor="operator"),
        )

    @precondition(lambda self: self.missions)
    @rule(data=st.data(), widen=st.integers(0, 3))
    def narrow(self, data: st.DataObject, widen: int) -> None:
        """Narrow in place; one time in four try to widen instead (always refused)."""
        mission_id = self.pick(data, "active", "suspended")
        m = self.missions[mission_id]
        if widen == 0:
            proposed = copy.deepcopy(m.authority)
            proposed[0]["actions"] = [*proposed[0]["actions"], "delete"]
        else:
            proposed = self.attenuate(data, m.authority)

        def predict() -> None:
            state = self.effective(mission_id)
            if state not in LIVE:
                raise Refused(IllegalTransition, current_state=state)
            if widen == 0:
                raise Refused(InvalidAuthority, field="authority_set")
            if proposed != m.authority:
                m.authority = proposed
                m.version += 1

        self.run(predict, lambda: self.ledger.narrow(mission_id, proposed, actor="agent-1"))

    @rule(hours=st.integers(1, 36))
    def advance_clock_and_sweep(self, hours: int) -> None:
        self.clock.advance(hours * HOUR)
        self.run(self.model_expire_due, self.ledger.expire_due)

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def states_and_versions_match_the_model(self) -> None:
        for mission_id, m in self.missions.items():
            mission = self.ledger.get_mission(mission_id)
            state = mission.effective_state(self.now)
            assert state == self.effective(mission_id), mission_id
            assert mission.version == m.version, mission_id
            assert len(list(self.ledger.events.get(mission.id))) == mission.version
            if mission_id in self.ended:
                assert mission.state == self.ended[mission_id], "left a terminal state"
            elif mission.state in TERMINAL:
                self.ended[mission_id] = mission.state

    @invariant()
    def children_follow_their_parents(self) -> None:
        now = self.now
        for mission_id, m in self.missions.items():
            if m.parent is None:
                continue
            child = self.ledger.get_mission(mission_id)
            parent = self.ledger.get_mission(m.parent)
            child_state, parent_state = child.effective_state(now), parent.effective_state(now)
            if child_state in LIVE:
                assert parent_state not in TERMINAL, "a live child of a terminal parent"
            if parent_state == "suspended":
                assert child_state != "active", "an active child of a suspended parent"
            assert m.parent_authority is not None
            delegated = parse_authority_set(m.parent_authority, allow_wildcard=True)
            assert subset_violation(delegated, child.authority(), delegating=True) is None
            assert child.parent is not None
            if parent.authority_hash == child.parent["authority_hash"]:
                assert subset_violation(parent.authority(), child.authority()) is None


LifecycleMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestLifecycle = LifecycleMachine.TestCase
