"""The Proposal aggregate: an agent's request for a Mission, awaiting a human decision.

A Proposal carries the drafts' Intent (``goal``, ``resources``, ``expires_at`` …), the proposed
Authority Set and their anchors (``intent_hash``, ``proposal_hash``). States::

    pending ──approve──▶ approved      (closes in the same transaction that opens the Mission)
       ├─────deny─────▶ denied
       ├───withdraw───▶ withdrawn
       └───(clock)────▶ expired        (the Intent's ``expires_at`` passed before a decision)

The proposal *document* accepted here is the same JSON body ``POST /proposals`` takes.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .anchors import MISSION_INTENT, MISSION_PROPOSED_AUTHORITY, anchor
from .authority import AuthoritySet, parse_authority_set
from .canonical import canonicalize
from .chain import ChainedAggregate, ChainedCreated, ChainedEvent
from .errors import IllegalTransition, InvalidAuthority, InvalidProposal
from .timefmt import format_rfc3339, parse_rfc3339

PENDING, APPROVED, DENIED, WITHDRAWN, EXPIRED = (
    "pending",
    "approved",
    "denied",
    "withdrawn",
    "expired",
)
_DOCUMENT_MEMBERS = {
    "user",
    "agent",
    "task",
    "intent",
    "authority_set",
    "stages",
    "cnf",
    "attestations",
    "predecessor",
}
_INTENT_REQUIRED = ("goal", "resources", "expires_at")
_INTENT_OPTIONAL = {"goal_lang", "constraints", "success_criteria", "purpose", "controls"}
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_MAX_GOAL = 4096
_THUMBPRINT_MEMBERS = {
    "EC": ("crv", "kty", "x", "y"),
    "RSA": ("e", "kty", "n"),
    "OKP": ("crv", "kty", "x"),
}


@dataclass(frozen=True)
class ProposalDocument:
    """A validated proposal document (what ``propose`` and ``POST /proposals`` accept)."""

    user: str
    agent: str
    task: dict[str, str]
    intent: dict[str, Any]
    authority: AuthoritySet
    expires_at: datetime
    stages: list[str] | None
    holder_key: dict[str, Any] | None
    holder_key_thumbprint: str | None
    attestations: list[Any]
    predecessor: str | None


def _text(value: object, field: str, *, max_len: int = 1024) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidProposal(f"{field} must be a non-empty string", field=field)
    if len(value) > max_len:
        raise InvalidProposal(f"{field} is longer than {max_len} characters", field=field)
    return value


def _object(value: object, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidProposal(f"{field} must be a JSON object", field=field)
    return value


def _closed(obj: dict[str, Any], allowed: set[str] | frozenset[str], field: str) -> None:
    unknown = sorted(set(obj) - set(allowed))
    if unknown:
        where = f"{field}." if field else ""
        raise InvalidProposal(
            f"unknown member {where}{unknown[0]}; allowed members are {', '.join(sorted(allowed))}",
            field=f"{where}{unknown[0]}",
        )


def parse_stages(value: object, field: str = "stages") -> list[str] | None:
    """An optional ordered list of unique, non-empty stage names."""
    if value is None:
        return None
    if not isinstance(value, list) or not value:
        raise InvalidProposal(f"{field} must be a non-empty array of stage names", field=field)
    names = [_text(v, f"{field}[{i}]", max_len=128) for i, v in enumerate(value)]
    if len(set(names)) != len(names):
        raise InvalidProposal(f"{field} must not repeat a stage name", field=field)
    return names


def _intent(value: object, now: datetime) -> tuple[dict[str, Any], datetime]:
    intent = _object(value, "intent")
    _closed(intent, set(_INTENT_REQUIRED) | _INTENT_OPTIONAL, "intent")
    for member in _INTENT_REQUIRED:
        if member not in intent:
            raise InvalidProposal(
                f"intent.{member} is required (the Intent needs goal, resources and expires_at)",
                field=f"intent.{member}",
            )
    _text(intent["goal"], "intent.goal", max_len=_MAX_GOAL)
    resources = intent["resources"]
    if not isinstance(resources, list) or not resources:
        raise InvalidProposal(
            "intent.resources must be a non-empty array of absolute URIs",
            field="intent.resources",
        )
    for i, uri in enumerate(resources):
        if not isinstance(uri, str) or not _URI.match(uri):
            raise InvalidProposal(
                f"intent.resources[{i}] must be an absolute URI such as https://erp.example.com",
                field=f"intent.resources[{i}]",
            )
    expires_at = parse_rfc3339(intent["expires_at"], field="intent.expires_at")
    if expires_at <= now:
        raise InvalidProposal(
            f"intent.expires_at ({intent['expires_at']}) is already in the past; "
            "propose a Mission that ends in the future",
            field="intent.expires_at",
        )
    for member in ("constraints", "success_criteria"):
        if member in intent and not isinstance(intent[member], list):
            raise InvalidProposal(f"intent.{member} must be an array", field=f"intent.{member}")
    if "purpose" in intent and (
        not isinstance(intent["purpose"], str) or not _URI.match(intent["purpose"])
    ):
        raise InvalidProposal("intent.purpose must be an absolute URI", field="intent.purpose")
    if "goal_lang" in intent:
        _text(intent["goal_lang"], "intent.goal_lang", max_len=35)
    if "controls" in intent:
        _object(intent["controls"], "intent.controls")
    return intent, expires_at


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url without padding)."""
    kty = jwk.get("kty")
    members = _THUMBPRINT_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise InvalidProposal("cnf.jwk.kty must be one of EC, RSA or OKP", field="cnf.jwk.kty")
    required: dict[str, Any] = {}
    for name in members:
        if not isinstance(jwk.get(name), str) or not jwk[name]:
            raise InvalidProposal(
                f"cnf.jwk.{name} is required for a {kty} key", field=f"cnf.jwk.{name}"
            )
        required[name] = jwk[name]
    if "d" in jwk or "p" in jwk:
        raise InvalidProposal(
            "cnf.jwk must be a public key; never send private key members",
            field="cnf.jwk",
        )
    digest = hashlib.sha256(canonicalize(required)).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def check_stage_constraints(authority: AuthoritySet, stages: list[str] | None) -> None:
    """Refuse entries limited to a stage the Mission does not declare."""
    for i, entry in enumerate(authority.entries):
        if entry.stage is not None and (stages is None or entry.stage not in stages):
            known = ", ".join(stages) if stages else "none: the Mission has no stages"
            raise InvalidAuthority(
                f"authority_set[{i}] is limited to stage {entry.stage!r}, which the Mission "
                f"does not have (stages: {known})",
                field=f"authority_set[{i}].constraints.stage",
            )


def parse_proposal_document(raw: object, *, now: datetime) -> ProposalDocument:
    """Validate a proposal document; raise :class:`InvalidProposal` naming the field."""
    doc = _object(raw, "proposal")
    _closed(doc, _DOCUMENT_MEMBERS, "")
    for member in ("user", "agent", "task", "intent", "authority_set"):
        if member not in doc:
            raise InvalidProposal(f"{member} is required in a proposal document", field=member)
    user = _text(doc["user"], "user")
    agent = _text(doc["agent"], "agent")
    task = _object(doc["task"], "task")
    _closed(task, {"id", "description"}, "task")
    task_out = {
        "id": _text(task.get("id"), "task.id"),
        "description": _text(task.get("description"), "task.description", max_len=_MAX_GOAL),
    }
    intent, expires_at = _intent(doc["intent"], now)
    authority = parse_authority_set(doc["authority_set"], allow_wildcard=True)
    stages = parse_stages(doc.get("stages"))
    check_stage_constraints(authority, stages)
    holder_key: dict[str, Any] | None = None
    thumbprint: str | None = None
    if "cnf" in doc:
        cnf = _object(doc["cnf"], "cnf")
        _closed(cnf, {"jwk"}, "cnf")
        holder_key = _object(cnf.get("jwk"), "cnf.jwk")
        thumbprint = jwk_thumbprint(holder_key)
    attestations = doc.get("attestations", [])
    if not isinstance(attestations, list) or not all(isinstance(a, dict) for a in attestations):
        raise InvalidProposal("attestations must be an array of objects", field="attestations")
    predecessor = doc.get("predecessor")
    if predecessor is not None:
        try:
            predecessor = str(UUID(_text(predecessor, "predecessor")))
        except ValueError:
            raise InvalidProposal(
                "predecessor must be the mission_id of the Mission to widen",
                field="predecessor",
            ) from None
    return ProposalDocument(
        user=user,
        agent=agent,
        task=task_out,
        intent=intent,
        authority=authority,
        expires_at=expires_at,
        stages=stages,
        holder_key=holder_key,
        holder_key_thumbprint=thumbprint,
        attestations=attestations,
        predecessor=predecessor,
    )


class Proposal(ChainedAggregate):
    """A request for a Mission, pending a decision."""

    TOPIC = "mission_ledger.Proposal"

    if TYPE_CHECKING:  # state attributes, set by the events (not constructor fields)
        issuer: str
        user: str
        agent: str
        task: dict[str, str]
        intent: dict[str, Any]
        intent_hash: str
        authority_set: list[dict[str, Any]]
        proposal_hash: str
        stages: list[str] | None
        holder_key: dict[str, Any] | None
        holder_key_thumbprint: str | None
        attestations: list[Any]
        predecessor: str | None
        expires_at: str
        submitted_by: str
        submitted_at: str
        state: str
        decided_by: str | None
        decided_at: str | None
        decision_reason: str | None
        mission_id: str | None

    class Event(ChainedEvent):
        TOPIC = "mission_ledger.Proposal.Event"

    class Created(Event, ChainedCreated):
        TOPIC = "mission_ledger.Proposal.Created"

    class Submitted(Event, ChainedCreated):
        """The agent (or its harness) submitted the proposal."""

        TOPIC = "mission_ledger.ProposalSubmitted.v1"
        issuer: str
        user: str
        agent: str
        task: dict[str, str]
        intent: dict[str, Any]
        intent_hash: str
        authority_set: list[dict[str, Any]]
        proposal_hash: str
        stages: list[str] | None
        holder_key: dict[str, Any] | None
        holder_key_thumbprint: str | None
        attestations: list[Any]
        predecessor: str | None
        expires_at: str

        def apply_to(self, p: Proposal) -> None:
            for name in [
                "issuer",
                "user",
                "agent",
                "task",
                "intent",
                "intent_hash",
                "authority_set",
                "proposal_hash",
                "stages",
                "holder_key",
                "holder_key_thumbprint",
                "attestations",
                "predecessor",
                "expires_at",
            ]:
                setattr(p, name, getattr(self, name))
            p.submitted_by = self.actor
            p.submitted_at = format_rfc3339(self.timestamp)
            p.state = PENDING
            p.decided_by = p.decided_at = p.decision_reason = p.mission_id = None

    class Decided(Event):
        """Base of the events that close a proposal."""

        TOPIC = "mission_ledger.Proposal.Decided"
        reason: str | None
        NEW_STATE = ""

        def apply_to(self, p: Proposal) -> None:
            p.state = self.NEW_STATE
            p.decided_by = self.actor
            p.decided_at = format_rfc3339(self.timestamp)
            p.decision_reason = self.reason

    class Approved(Decided):
        TOPIC = "mission_ledger.ProposalApproved.v1"
        NEW_STATE = APPROVED
        mission_id: str

        def apply_to(self, p: Proposal) -> None:
            super().apply_to(p)
            p.mission_id = self.mission_id

    class Denied(Decided):
        TOPIC = "mission_ledger.ProposalDenied.v1"
        NEW_STATE = DENIED

    class Withdrawn(Decided):
        TOPIC = "mission_ledger.ProposalWithdrawn.v1"
        NEW_STATE = WITHDRAWN

    class Expired(Decided):
        TOPIC = "mission_ledger.ProposalExpired.v1"
        NEW_STATE = EXPIRED

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def submit(
        cls,
        document: ProposalDocument,
        *,
        proposal_id: UUID,
        issuer: str,
        actor: str,
        now: datetime,
    ) -> Proposal:
        authority_json = document.authority.to_json()
        return cls._open(
            cls.Submitted,
            aggregate_id=proposal_id,
            timestamp=now,
            actor=actor,
            issuer=issuer,
            user=document.user,
            agent=document.agent,
            task=document.task,
            intent=document.intent,
            intent_hash=anchor(MISSION_INTENT, issuer, document.intent),
            authority_set=authority_json,
            proposal_hash=anchor(MISSION_PROPOSED_AUTHORITY, issuer, authority_json),
            stages=document.stages,
            holder_key=document.holder_key,
            holder_key_thumbprint=document.holder_key_thumbprint,
            attestations=document.attestations,
            predecessor=document.predecessor,
            expires_at=format_rfc3339(document.expires_at),
        )

    # -- queries ----------------------------------------------------------------------------------

    def effective_state(self, at: datetime) -> str:
        """The state as of ``at``: a pending proposal past its expiry reads as ``expired``."""
        if self.state == PENDING and at >= parse_rfc3339(self.expires_at, field="expires_at"):
            return EXPIRED
        return self.state

    def authority(self) -> AuthoritySet:
        return parse_authority_set(self.authority_set, allow_wildcard=True)

    # -- commands -------------------------------------------------------------------------------

    def _require_pending(self, operation: str, now: datetime) -> None:
        state = self.effective_state(now)
        if state != PENDING:
            raise IllegalTransition(
                f"cannot {operation} proposal {self.id}: it is {state}, "
                "and only pending proposals can be decided",
                current_state=state,
            )

    def mark_approved(self, *, mission_id: UUID, actor: str, now: datetime) -> None:
        self._require_pending("approve", now)
        self._record(
            self.Approved, timestamp=now, actor=actor, reason=None, mission_id=str(mission_id)
        )

    def deny(self, *, actor: str, reason: str | None, now: datetime) -> bool:
        """Deny; returns False (no event) when the proposal is already denied."""
        if self.state == DENIED:
            return False
        self._require_pending("deny", now)
        self._record(self.Denied, timestamp=now, actor=actor, reason=reason)
        return True

    def withdraw(self, *, actor: str, reason: str | None, now: datetime) -> bool:
        """Withdraw; returns False (no event) when the proposal is already withdrawn."""
        if self.state == WITHDRAWN:
            return False
        self._require_pending("withdraw", now)
        self._record(self.Withdrawn, timestamp=now, actor=actor, reason=reason)
        return True

    def expire(self, *, actor: str, now: datetime) -> bool:
        """Record the expiry of a pending proposal whose deadline passed."""
        if self.state != PENDING or self.effective_state(now) != EXPIRED:
            return False
        self._record(self.Expired, timestamp=now, actor=actor, reason="intent expires_at reached")
        return True

    def to_dict(self, at: datetime) -> dict[str, Any]:
        """The proposal as the CLI and HTTP API show it."""
        return {
            "proposal_id": str(self.id),
            "state": self.effective_state(at),
            "version": self.version,
            "issuer": self.issuer,
            "user": self.user,
            "agent": self.agent,
            "task": self.task,
            "intent": self.intent,
            "intent_hash": self.intent_hash,
            "authority_set": self.authority_set,
            "proposal_hash": self.proposal_hash,
            "stages": self.stages,
            "holder_key_thumbprint": self.holder_key_thumbprint,
            "predecessor": self.predecessor,
            "expires_at": self.expires_at,
            "submitted_by": self.submitted_by,
            "submitted_at": self.submitted_at,
            "decided_by": self.decided_by,
            "decided_at": self.decided_at,
            "decision_reason": self.decision_reason,
            "mission_id": self.mission_id,
        }
