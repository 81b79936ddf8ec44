"""The Mission aggregate: one bounded delegation of authority from a user to an agent.

State machine (the Mission drafts' consolidated table)::

    (approval) ──▶ active ⇄ suspended        suspend / resume, optional suspend_until + on_expiry
                   active|suspended ──▶ revoked | completed | expired | cascaded
                   active ──▶ superseded      a successor (widening) Mission was approved

Terminal states admit nothing. An operation whose target equals the current state succeeds with
no event, except ``resume``, which is a conflict anywhere but ``suspended``. A Mission past its
``expires_at`` reads as ``expired`` before the sweeper records it. ``version`` is the aggregate
version: the approval is 1, and every committed change adds one.

Operations that span Missions (cascades, delegation, supersession) are orchestrated by the ledger
application, which loads every Mission involved and saves them in one transaction; each method
here changes exactly one aggregate and validates before it records anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .anchors import MISSION_AUTHORITY_SET, anchor
from .authority import (
    AuthoritySet,
    Evaluation,
    authority_diff,
    evaluate,
    live_children_per_entry,
    parse_authority_set,
    plan_delegation,
    subset_violation,
)
from .chain import ChainedAggregate, ChainedCreated, ChainedEvent
from .errors import (
    Conflict,
    DelegationDenied,
    Forbidden,
    IllegalTransition,
    InvalidAuthority,
    InvalidInput,
)
from .proposal import Proposal, check_stage_constraints
from .timefmt import format_rfc3339, parse_rfc3339

ACTIVE, SUSPENDED = "active", "suspended"
REVOKED, COMPLETED, EXPIRED, CASCADED, SUPERSEDED = (
    "revoked",
    "completed",
    "expired",
    "cascaded",
    "superseded",
)
LIVE_STATES = frozenset({ACTIVE, SUSPENDED})
TERMINAL_STATES = frozenset({REVOKED, COMPLETED, EXPIRED, CASCADED, SUPERSEDED})
COMPILATION_METHODS = ("manual", "template", "policy")
ON_EXPIRY = ("resume", "revoke")


@dataclass(frozen=True)
class ApprovalRequest:
    """What an approver decides on top of a proposal."""

    approver: str
    granted: AuthoritySet | None = None
    evidence: Any = None
    method: str = "manual"
    template_id: str | None = None
    template_version: str | None = None
    rule_ids: tuple[str, ...] = ()
    allow_wildcard: bool = False
    wildcard_reason: str | None = None
    expires_at: datetime | None = None


def _authority_hash(issuer: str, authority: list[dict[str, Any]]) -> str:
    return anchor(MISSION_AUTHORITY_SET, issuer, authority)


class Mission(ChainedAggregate):
    """A Mission and its lifecycle."""

    TOPIC = "mission_ledger.Mission"

    if TYPE_CHECKING:  # state attributes, set by the events (not constructor fields)
        issuer: str
        proposal_id: str | None
        user: str
        agent: str
        task: dict[str, str]
        intent: dict[str, Any]
        intent_hash: str
        authority_set: list[dict[str, Any]]
        authority_hash: str
        expires_at: str
        approval: dict[str, Any]
        compilation_basis: dict[str, Any]
        stages: list[str] | None
        stage: str | None
        holder_key_thumbprint: str | None
        parent: dict[str, Any] | None
        depth: int
        predecessor: str | None
        successor: str | None
        children: list[dict[str, Any]]
        state: str
        suspend_until: str | None
        on_expiry: str | None
        suspended_by: str | None
        state_reason: str | None

    class Event(ChainedEvent):
        TOPIC = "mission_ledger.Mission.Event"

    class Created(Event, ChainedCreated):
        TOPIC = "mission_ledger.Mission.Created"

    class Approved(Event, ChainedCreated):
        """Version 1: the Mission exists and is active."""

        TOPIC = "mission_ledger.MissionApproved.v1"
        issuer: str
        proposal_id: str | None
        user: str
        agent: str
        task: dict[str, str]
        intent: dict[str, Any]
        intent_hash: str
        authority_set: list[dict[str, Any]]
        authority_hash: str
        expires_at: str
        approval: dict[str, Any]
        compilation_basis: dict[str, Any]
        stages: list[str] | None
        stage: str | None
        holder_key_thumbprint: str | None
        parent: dict[str, Any] | None
        predecessor: str | None

        def apply_to(self, m: Mission) -> None:
            for name in [
                "issuer",
                "proposal_id",
                "user",
                "agent",
                "task",
                "intent",
                "intent_hash",
                "authority_set",
                "authority_hash",
                "expires_at",
                "approval",
                "compilation_basis",
                "stages",
                "stage",
                "holder_key_thumbprint",
                "parent",
                "predecessor",
            ]:
                setattr(m, name, getattr(self, name))
            m.depth = int(self.parent["depth"]) if self.parent else 0
            m.successor = None
            m.children = []
            m.state = ACTIVE
            m.suspend_until = m.on_expiry = m.suspended_by = m.state_reason = None

    class Suspended(Event):
        """Suspended (or, when already suspended, its deadline changed)."""

        TOPIC = "mission_ledger.MissionSuspended.v1"
        reason: str | None
        prior_state: str
        suspend_until: str | None
        on_expiry: str | None
        cause: dict[str, Any] | None

        def apply_to(self, m: Mission) -> None:
            m.state = SUSPENDED
            m.suspend_until = self.suspend_until
            m.on_expiry = self.on_expiry
            m.suspended_by = self.cause["mission_id"] if self.cause else None
            m.state_reason = self.reason

    class Resumed(Event):
        TOPIC = "mission_ledger.MissionResumed.v1"
        reason: str | None
        prior_state: str
        trigger: str
        cause: dict[str, Any] | None

        def apply_to(self, m: Mission) -> None:
            m.state = ACTIVE
            m.suspend_until = m.on_expiry = m.suspended_by = None
            m.state_reason = self.reason

    class AuthorityNarrowed(Event):
        TOPIC = "mission_ledger.MissionAuthorityNarrowed.v1"
        reason: str | None
        authority_set: list[dict[str, Any]]
        authority_hash: str
        previous_authority_hash: str

        def apply_to(self, m: Mission) -> None:
            m.authority_set = self.authority_set
            m.authority_hash = self.authority_hash

    class StageAdvanced(Event):
        TOPIC = "mission_ledger.MissionStageAdvanced.v1"
        reason: str | None
        from_stage: str | None
        to_stage: str

        def apply_to(self, m: Mission) -> None:
            m.stage = self.to_stage

    class Delegated(Event):
        """A child Mission was created under this one."""

        TOPIC = "mission_ledger.MissionDelegated.v1"
        child_mission_id: str
        child_agent: str
        child_authority_hash: str
        child_expires_at: str
        justifying_entry: int

        def apply_to(self, m: Mission) -> None:
            m.children = [
                *m.children,
                {
                    "mission_id": self.child_mission_id,
                    "agent": self.child_agent,
                    "justifying_entry": self.justifying_entry,
                    "delegated_at": format_rfc3339(self.timestamp),
                },
            ]

    class Ended(Event):
        """Base of the events that move a Mission to a terminal state."""

        TOPIC = "mission_ledger.Mission.Ended"
        reason: str | None
        prior_state: str
        NEW_STATE = ""

        def apply_to(self, m: Mission) -> None:
            m.state = self.NEW_STATE
            m.state_reason = self.reason
            m.suspend_until = m.on_expiry = m.suspended_by = None

    class Revoked(Ended):
        TOPIC = "mission_ledger.MissionRevoked.v1"
        NEW_STATE = REVOKED
        trigger: str

    class Completed(Ended):
        TOPIC = "mission_ledger.MissionCompleted.v1"
        NEW_STATE = COMPLETED

    class Expired(Ended):
        TOPIC = "mission_ledger.MissionExpired.v1"
        NEW_STATE = EXPIRED

    class Cascaded(Ended):
        """An ancestor reached a terminal state; this Mission ends with it."""

        TOPIC = "mission_ledger.MissionCascaded.v1"
        NEW_STATE = CASCADED
        cause: dict[str, Any]

    class Superseded(Ended):
        """A successor Mission (a widening) was approved in this one's place."""

        TOPIC = "mission_ledger.MissionSuperseded.v1"
        NEW_STATE = SUPERSEDED
        successor: str

        def apply_to(self, m: Mission) -> None:
            super().apply_to(m)
            m.successor = self.successor

    # -- creation ---------------------------------------------------------------------------------

    @classmethod
    def approve(
        cls,
        proposal: Proposal,
        request: ApprovalRequest,
        *,
        mission_id: UUID,
        now: datetime,
    ) -> Mission:
        """Create the Mission from a pending proposal and close the proposal (both pending)."""
        if request.approver == proposal.agent:
            raise Forbidden(
                f"separation of duty: {request.approver!r} proposed this Mission as its agent "
                "and cannot approve it; ask an approver or operator",
                actor=request.approver,
            )
        state = proposal.effective_state(now)
        if state != "pending":
            raise IllegalTransition(
                f"cannot approve proposal {proposal.id}: it is {state}",
                current_state=state,
            )
        if request.method not in COMPILATION_METHODS:
            raise InvalidInput(
                f"method must be one of {', '.join(COMPILATION_METHODS)}", field="method"
            )
        if request.method == "template" and not request.template_id:
            raise InvalidInput("a template-based approval needs a template id", field="template_id")
        if request.method == "policy" and not request.rule_ids:
            raise InvalidInput("a policy-based approval needs the rule ids", field="rule_ids")
        requested = proposal.authority()
        granted = request.granted if request.granted is not None else requested
        if granted.has_wildcard and not (request.allow_wildcard and request.wildcard_reason):
            raise InvalidAuthority(
                'the granted Authority Set contains the "*" action; grant explicit actions, or '
                "approve with allow_wildcard and a reason (the Mission is then flagged)",
                field="authority_set",
            )
        if request.allow_wildcard and not (request.wildcard_reason or "").strip():
            raise InvalidInput("allow_wildcard needs a reason", field="wildcard_reason")
        check_stage_constraints(granted, proposal.stages)
        proposal_expiry = parse_rfc3339(proposal.expires_at, field="expires_at")
        expires_at = request.expires_at or proposal_expiry
        if expires_at > proposal_expiry:
            raise InvalidInput(
                "an approval may shorten the Mission but not extend it past the proposal's "
                f"expires_at ({proposal.expires_at})",
                field="expires_at",
            )
        if expires_at <= now:
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        granted_json = granted.to_json()
        flags = ["wildcard"] if granted.has_wildcard else []
        basis: dict[str, Any] = {
            "method": request.method,
            "template_id": request.template_id,
            "template_version": request.template_version,
            "rule_ids": list(request.rule_ids),
            "requested_authority_hash": anchor(
                MISSION_AUTHORITY_SET, proposal.issuer, proposal.authority_set
            ),
            "diff": authority_diff(requested, granted),
        }
        mission = cls._open(
            cls.Approved,
            aggregate_id=mission_id,
            timestamp=now,
            actor=request.approver,
            issuer=proposal.issuer,
            proposal_id=str(proposal.id),
            user=proposal.user,
            agent=proposal.agent,
            task=proposal.task,
            intent=proposal.intent,
            intent_hash=proposal.intent_hash,
            authority_set=granted_json,
            authority_hash=_authority_hash(proposal.issuer, granted_json),
            expires_at=format_rfc3339(expires_at),
            approval={
                "approvers": [request.approver],
                "approved_at": format_rfc3339(now),
                "evidence": request.evidence,
                "allow_wildcard": request.allow_wildcard,
                "wildcard_reason": request.wildcard_reason,
                "flags": flags,
            },
            compilation_basis=basis,
            stages=proposal.stages,
            stage=proposal.stages[0] if proposal.stages else None,
            holder_key_thumbprint=proposal.holder_key_thumbprint,
            parent=None,
            predecessor=proposal.predecessor,
        )
        proposal.mark_approved(mission_id=mission_id, actor=request.approver, now=now)
        return mission

    def delegate(
        self,
        *,
        child_id: UUID,
        child_agent: str,
        authority: AuthoritySet,
        expires_at: datetime | None,
        live_children: Sequence[tuple[str, AuthoritySet]],
        actor: str,
        now: datetime,
    ) -> Mission:
        """Create a child Mission for ``child_agent`` and record the delegation here."""
        state = self.effective_state(now)
        if state != ACTIVE:
            raise DelegationDenied(
                "parent_not_active",
                f"Mission {self.id} is {state}; only an active Mission can delegate",
            )
        own_expiry = self.expires_at_dt
        child_expiry = expires_at or own_expiry
        if child_expiry > own_expiry:
            raise DelegationDenied(
                "not_strict_subset",
                f"the child's expires_at must not be later than the parent's ({self.expires_at})",
            )
        if child_expiry <= now:
            raise InvalidInput("expires_at must be in the future", field="expires_at")
        if authority.has_wildcard and not self.authority().has_wildcard:
            raise DelegationDenied("not_strict_subset", 'the "*" action cannot be delegated')
        plan = plan_delegation(
            self.authority(),
            authority,
            child_agent=child_agent,
            live_children_per_entry=live_children_per_entry(self.authority(), live_children),
        )
        check_stage_constraints(authority, self.stages)
        child_json = authority.to_json()
        child_hash = _authority_hash(self.issuer, child_json)
        child = Mission._open(
            Mission.Approved,
            aggregate_id=child_id,
            timestamp=now,
            actor=actor,
            issuer=self.issuer,
            proposal_id=None,
            user=self.user,
            agent=child_agent,
            task=self.task,
            intent=self.intent,
            intent_hash=self.intent_hash,
            authority_set=child_json,
            authority_hash=child_hash,
            expires_at=format_rfc3339(child_expiry),
            approval={
                "approvers": [actor],
                "approved_at": format_rfc3339(now),
                "evidence": None,
                "allow_wildcard": False,
                "wildcard_reason": None,
                "flags": [],
            },
            compilation_basis={
                "method": "delegation",
                "parent_mission_id": str(self.id),
                "justifying_entry": plan.justifying_entry,
                "diff": authority_diff(self.authority(), authority),
            },
            stages=self.stages,
            stage=self.stage,
            holder_key_thumbprint=None,
            parent={
                "id": str(self.id),
                "issuer": self.issuer,
                "authority_hash": self.authority_hash,
                "depth": self.depth + 1,
                "cascade_mode": "cascade",
                "created_at": format_rfc3339(now),
            },
            predecessor=None,
        )
        self._record(
            self.Delegated,
            timestamp=now,
            actor=actor,
            child_mission_id=str(child_id),
            child_agent=child_agent,
            child_authority_hash=child_hash,
            child_expires_at=format_rfc3339(child_expiry),
            justifying_entry=plan.justifying_entry,
        )
        return child

    # -- queries ----------------------------------------------------------------------------------

    @property
    def expires_at_dt(self) -> datetime:
        return parse_rfc3339(self.expires_at, field="expires_at")

    def effective_state(self, at: datetime) -> str:
        """The state as of ``at``: expiry is evaluated before the stored state."""
        if self.state in LIVE_STATES and at >= self.expires_at_dt:
            return EXPIRED
        return self.state

    def authority(self) -> AuthoritySet:
        return parse_authority_set(self.authority_set, allow_wildcard=True)

    def evaluate(self, *, action: str, resource: str, at: datetime) -> Evaluation:
        """Does this Mission's own Authority Set allow the request (ignoring its state)?"""
        return evaluate(self.authority(), action=action, resource=resource, at=at, stage=self.stage)

    def to_dict(self, at: datetime) -> dict[str, Any]:
        """The Mission as the CLI and HTTP API show it."""
        return {
            "mission_id": str(self.id),
            "state": self.effective_state(at),
            "stored_state": self.state,
            "version": self.version,
            "issuer": self.issuer,
            "user": self.user,
            "agent": self.agent,
            "task": self.task,
            "intent": self.intent,
            "intent_hash": self.intent_hash,
            "authority_set": self.authority_set,
            "authority_hash": self.authority_hash,
            "expires_at": self.expires_at,
            "stages": self.stages,
            "stage": self.stage,
            "suspend_until": self.suspend_until,
            "on_expiry": self.on_expiry,
            "suspended_by": self.suspended_by,
            "reason": self.state_reason,
            "approval": self.approval,
            "compilation_basis": self.compilation_basis,
            "proposal_id": self.proposal_id,
            "parent": self.parent,
            "children": self.children,
            "predecessor": self.predecessor,
            "successor": self.successor,
            "holder_key_thumbprint": self.holder_key_thumbprint,
            "head_hash": self.head_hash,
        }

    # -- lifecycle commands -----------------------------------------------------------------------
    # Each returns True when it recorded an event, False for an idempotent no-op.

    def _illegal(self, operation: str, state: str) -> IllegalTransition:
        hint = (
            "a terminal Mission admits no further operation"
            if state in TERMINAL_STATES
            else f"{operation} is not allowed from {state}"
        )
        return IllegalTransition(
            f"cannot {operation} Mission {self.id}: it is {state} ({hint})", current_state=state
        )

    def suspend(
        self,
        *,
        actor: str,
        now: datetime,
        reason: str | None = None,
        until: datetime | None = None,
        on_expiry: str | None = None,
        cause: dict[str, Any] | None = None,
    ) -> bool:
        if (until is None) != (on_expiry is None):
            raise InvalidInput(
                "suspend_until and on_expiry go together: give both or neither",
                field="on_expiry" if until is not None else "suspend_until",
            )
        if on_expiry is not None and on_expiry not in ON_EXPIRY:
            raise InvalidInput("on_expiry must be 'resume' or 'revoke'", field="on_expiry")
        if until is not None and until <= now:
            raise InvalidInput("suspend_until must be in the future", field="suspend_until")
        state = self.effective_state(now)
        until_text = format_rfc3339(until) if until is not None else None
        if state == SUSPENDED:
            if (until_text, on_expiry) == (self.suspend_until, self.on_expiry):
                return False
        elif state != ACTIVE:
            raise self._illegal("suspend", state)
        self._record(
            self.Suspended,
            timestamp=now,
            actor=actor,
            reason=reason,
            prior_state=state,
            suspend_until=until_text,
            on_expiry=on_expiry,
            cause=cause,
        )
        return True

    def resume(
        self,
        *,
        actor: str,
        now: datetime,
        reason: str | None = None,
        trigger: str = "operator",
        cause: dict[str, Any] | None = None,
        suspended_ancestor: str | None = None,
    ) -> bool:
        state = self.effective_state(now)
        if state != SUSPENDED:
            raise IllegalTransition(
                f"cannot resume Mission {self.id}: it is {state}, and only a suspended Mission "
                "can be resumed",
                current_state=state,
            )
        if suspended_ancestor is not None:
            raise Conflict(
                f"cannot resume Mission {self.id} while its ancestor {suspended_ancestor} is "
                "suspended; resume the ancestor instead",
                current_state=state,
            )
        self._record(
            self.Resumed,
            timestamp=now,
            actor=actor,
            reason=reason,
            prior_state=state,
            trigger=trigger,
            cause=cause,
        )
        return True

    def _end(
        self, operation: str, event_class: type[Ended], *, actor: str, now: datetime, **fields: Any
    ) -> bool:
        state = self.effective_state(now)
        if state == event_class.NEW_STATE:
            return False
        if state not in LIVE_STATES:
            raise self._illegal(operation, state)
        self._record(event_class, timestamp=now, actor=actor, prior_state=state, **fields)
        return True

    def revoke(
        self, *, actor: str, now: datetime, reason: str | None = None, trigger: str = "operator"
    ) -> bool:
        return self._end(
            "revoke", self.Revoked, actor=actor, now=now, reason=reason, trigger=trigger
        )

    def complete(self, *, actor: str, now: datetime, reason: str | None = None) -> bool:
        return self._end("complete", self.Completed, actor=actor, now=now, reason=reason)

    def expire(self, *, actor: str, now: datetime) -> bool:
        """Record the expiry of a live Mission whose ``expires_at`` passed."""
        if self.state not in LIVE_STATES or now < self.expires_at_dt:
            return False
        self._record(
            self.Expired,
            timestamp=now,
            actor=actor,
            reason="expires_at reached",
            prior_state=self.state,
        )
        return True

    def cascade(self, *, actor: str, now: datetime, cause: dict[str, Any]) -> bool:
        """End with a terminal ancestor (or by expiry, if this Mission's own came first)."""
        if self.state not in LIVE_STATES:
            return False
        if now >= self.expires_at_dt:
            return self.expire(actor=actor, now=now)
        self._record(
            self.Cascaded,
            timestamp=now,
            actor=actor,
            reason=f"ancestor {cause['mission_id']} became {cause['state']}",
            prior_state=self.state,
            cause=cause,
        )
        return True

    def supersede(
        self, *, successor: UUID, actor: str, now: datetime, reason: str | None = None
    ) -> bool:
        state = self.effective_state(now)
        if state != ACTIVE:
            raise IllegalTransition(
                f"cannot supersede Mission {self.id}: it is {state}, and only an active Mission "
                "can be replaced by a successor",
                current_state=state,
            )
        self._record(
            self.Superseded,
            timestamp=now,
            actor=actor,
            reason=reason,
            prior_state=state,
            successor=str(successor),
        )
        return True

    def narrow(
        self, authority: AuthoritySet, *, actor: str, now: datetime, reason: str | None = None
    ) -> bool:
        """Replace the Authority Set with a subset of it (widening needs a successor)."""
        state = self.effective_state(now)
        if state not in LIVE_STATES:
            raise self._illegal("narrow", state)
        new_json = authority.to_json()
        if new_json == self.authority_set:
            return False
        problem = subset_violation(self.authority(), authority)
        if problem is not None:
            raise InvalidAuthority(
                f"narrowing must not widen the Mission: {problem}; to widen, submit a successor "
                "proposal naming this Mission as predecessor",
                field="authority_set",
            )
        check_stage_constraints(authority, self.stages)
        self._record(
            self.AuthorityNarrowed,
            timestamp=now,
            actor=actor,
            reason=reason,
            authority_set=new_json,
            authority_hash=_authority_hash(self.issuer, new_json),
            previous_authority_hash=self.authority_hash,
        )
        return True

    def advance_stage(
        self, to_stage: str | None, *, actor: str, now: datetime, reason: str | None = None
    ) -> bool:
        """Move to ``to_stage`` (default: the next one); stages only move forward."""
        state = self.effective_state(now)
        if state not in LIVE_STATES:
            raise self._illegal("advance the stage of", state)
        if not self.stages:
            raise IllegalTransition(
                f"Mission {self.id} has no stages to advance through", current_state=state
            )
        current = self.stages.index(self.stage) if self.stage in self.stages else -1
        if to_stage is None:
            if current + 1 >= len(self.stages):
                raise IllegalTransition(
                    f"Mission {self.id} is already at its last stage {self.stage!r}",
                    current_state=state,
                )
            to_stage = self.stages[current + 1]
        if to_stage not in self.stages:
            raise InvalidInput(
                f"unknown stage {to_stage!r}; the Mission's stages are {', '.join(self.stages)}",
                field="stage",
            )
        target = self.stages.index(to_stage)
        if target == current:
            return False
        if target < current:
            raise IllegalTransition(
                f"stages only move forward: Mission {self.id} is at {self.stage!r}, "
                f"which comes after {to_stage!r}",
                current_state=state,
            )
        self._record(
            self.StageAdvanced,
            timestamp=now,
            actor=actor,
            reason=reason,
            from_stage=self.stage,
            to_stage=to_stage,
        )
        return True
