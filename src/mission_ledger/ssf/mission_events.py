"""Map stored ledger events to the Mission SSF profile and its two compatibility outputs.

Input, chosen once for every function here: the **domain event object** as the event store returns
it (``ledger.events.get(aggregate_id)``), plus, for Mission events, the **Mission document as of
that event's version** (``ledger.mission_as_of(mission_id, version=event.originator_version)``),
which supplies what the event itself does not carry (issuer, ``expires_at``, the state and
Authority Set after the commit). Passing a document of another version is a programming error and
raises ``ValueError``.

Outputs (see ``ssf/README.md``, the normative description):

* :func:`mission_event` / :func:`proposal_event` → ``(event_type_uri, event_object)`` of our
  profile; the SET's ``sub_id`` is :func:`mission_subject` / :func:`proposal_subject`;
* :func:`lifecycle_change_body` → the Mission drafts' ``lifecycle-change`` body;
* :func:`caep_events` → zero or one CAEP 1.0 event with its complex subject.

Nothing here signs, queues or knows about streams; the SET envelope (``iss``, ``aud``, ``iat``,
``jti``, ``txn`` = ``event.event_id``) is the transmitter's.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..domain.mission import Mission
from ..domain.proposal import Proposal
from ..domain.timefmt import format_rfc3339

NAMESPACE = "https://schemas.mission-ledger.dev/secevent/mission/event-type/"

MISSION_APPROVED = NAMESPACE + "mission-approved"
MISSION_SUSPENDED = NAMESPACE + "mission-suspended"
MISSION_RESUMED = NAMESPACE + "mission-resumed"
MISSION_SCOPE_CHANGED = NAMESPACE + "mission-scope-changed"
MISSION_STAGE_ADVANCED = NAMESPACE + "mission-stage-advanced"
MISSION_DELEGATED = NAMESPACE + "mission-delegated"
MISSION_REVOKED = NAMESPACE + "mission-revoked"
MISSION_EXPIRED = NAMESPACE + "mission-expired"
MISSION_COMPLETED = NAMESPACE + "mission-completed"
MISSION_CASCADED = NAMESPACE + "mission-cascaded"
MISSION_SUPERSEDED = NAMESPACE + "mission-superseded"
PROPOSAL_SUBMITTED = NAMESPACE + "proposal-submitted"
PROPOSAL_DENIED = NAMESPACE + "proposal-denied"

LIFECYCLE_CHANGE = "https://schemas.karlmcguinness.com/mission/lifecycle-change"
_CAEP = "https://schemas.openid.net/secevent/caep/event-type/"
CAEP_SESSION_REVOKED = _CAEP + "session-revoked"
CAEP_TOKEN_CLAIMS_CHANGE = _CAEP + "token-claims-change"

#: Ledger event class → our event-type URI.
MISSION_EVENT_TYPES: dict[type[Mission.Event], str] = {
    Mission.Approved: MISSION_APPROVED,
    Mission.Suspended: MISSION_SUSPENDED,
    Mission.Resumed: MISSION_RESUMED,
    Mission.AuthorityNarrowed: MISSION_SCOPE_CHANGED,
    Mission.StageAdvanced: MISSION_STAGE_ADVANCED,
    Mission.Delegated: MISSION_DELEGATED,
    Mission.Revoked: MISSION_REVOKED,
    Mission.Expired: MISSION_EXPIRED,
    Mission.Completed: MISSION_COMPLETED,
    Mission.Cascaded: MISSION_CASCADED,
    Mission.Superseded: MISSION_SUPERSEDED,
}
PROPOSAL_EVENT_TYPES: dict[type[Proposal.Event], str] = {
    Proposal.Submitted: PROPOSAL_SUBMITTED,
    Proposal.Denied: PROPOSAL_DENIED,
}
#: Every URI of our own profile (the compatibility URIs are listed separately).
PROFILE_EVENT_TYPES: tuple[str, ...] = (
    *MISSION_EVENT_TYPES.values(),
    *PROPOSAL_EVENT_TYPES.values(),
)

# Role of the actor (``"<role>:<name>"``) → CAEP ``initiating_entity``.
_ROLE_ENTITY = {
    "operator": "admin",
    "approver": "admin",
    "auditor": "admin",
    "harness": "user",
    "system": "system",
}
# Ledger events that end a CAEP "session" (the Mission stops deriving authority).
_SESSION_ENDING = (
    Mission.Suspended,
    Mission.Revoked,
    Mission.Expired,
    Mission.Cascaded,
    Mission.Superseded,
)


@dataclass(frozen=True)
class CaepEvent:
    """A CAEP event to send for a ledger event: its URI, its ``sub_id`` and its event object."""

    uri: str
    sub_id: dict[str, Any]
    event: dict[str, Any]


def mission_subject(mission_id: str) -> dict[str, Any]:
    """The ``sub_id`` of every SET of our profile about a Mission."""
    return {"format": "opaque", "id": mission_id}


def mission_subject_forms(mission_id: str, user: str, agent: str) -> list[dict[str, Any]]:
    """Every subject form a Mission answers to, for stream subject matching (SSF §8.1.3.1).

    The simple ``{"format": "opaque", "id": MISSION_ID}`` (our profile's and the drafts'
    ``sub_id``) and the complex ``session`` / ``user`` / ``application`` subject (the CAEP
    ``sub_id`` is its ``session`` member alone), so a receiver may add or remove one Mission, or
    every Mission of a user or of an agent (complex subjects match on their shared members).
    """
    return [
        mission_subject(mission_id),
        {
            "format": "complex",
            "session": mission_subject(mission_id),
            "user": {"format": "opaque", "id": user},
            "application": {"format": "opaque", "id": agent},
        },
    ]


def proposal_subject(proposal_id: str) -> dict[str, Any]:
    """The ``sub_id`` of the proposal event types."""
    return {"format": "opaque", "id": proposal_id}


def _numeric_date(moment: datetime) -> int:
    return int(moment.timestamp())


def initiating_entity(event: Any) -> str:
    """CAEP ``initiating_entity`` for a ledger event.

    Clock-driven commits (expiry, a ``suspend_until`` deadline) are ``system``; commits a
    delegation tree propagates (a cascade, a suspension or resumption inherited from an ancestor)
    are ``policy``; otherwise the actor's role decides: operator/approver/auditor → ``admin``,
    harness (the agent acting on the user's delegation) → ``user``, ``system:*`` → ``system``.
    An actor without a role prefix (a local command-line operator) is ``admin``.
    """
    if isinstance(event, Mission.Expired) or getattr(event, "trigger", None) == "suspend_until":
        return "system"
    if isinstance(event, Mission.Cascaded) or (
        isinstance(event, Mission.Suspended | Mission.Resumed) and event.cause is not None
    ):
        return "policy"
    actor: str = event.actor
    role, sep, _ = actor.partition(":")
    return _ROLE_ENTITY.get(role, "admin") if sep else "admin"


def _reason(event: Any) -> str | None:
    reason = getattr(event, "reason", None)
    return reason if isinstance(reason, str) and reason.strip() else None


def _check(event: Any, mission: dict[str, Any]) -> None:
    if not isinstance(event, Mission.Event) or type(event) not in MISSION_EVENT_TYPES:
        raise ValueError(f"not a Mission lifecycle event: {type(event).__name__}")
    if mission.get("mission_id") != str(event.originator_id):
        raise ValueError("the Mission document is of another Mission")
    if mission.get("version") != event.originator_version:
        raise ValueError(
            f"the Mission document is version {mission.get('version')}, the event is version "
            f"{event.originator_version}; pass mission_as_of(..., version=event version)"
        )


def _prior_state(event: Any, mission: dict[str, Any]) -> str | None:
    if isinstance(event, Mission.Approved):
        return None
    prior = getattr(event, "prior_state", None)
    if isinstance(prior, str):
        return prior
    stored: str = mission["stored_state"]  # narrowing, stage, delegation keep the state
    return stored


def mission_event(event: Any, mission: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Our profile's ``(event_type_uri, event_object)`` for a stored Mission event."""
    _check(event, mission)
    uri = MISSION_EVENT_TYPES[type(event)]
    body: dict[str, Any] = {
        "mission_id": str(event.originator_id),
        "state": mission["stored_state"],
        "version": event.originator_version,
        "event_timestamp": _numeric_date(event.timestamp),
        "initiating_entity": initiating_entity(event),
        "authority_hash": mission["authority_hash"],
        "expires_at": mission["expires_at"],
    }
    prior = _prior_state(event, mission)
    if prior is not None:
        body["prior_state"] = prior
    reason = _reason(event)
    if reason is not None:
        body["reason_admin"] = {"en": reason}
    if isinstance(event, Mission.Approved):
        body["authority_set"] = event.authority_set
        body["agent"] = event.agent
        if event.parent is not None:
            body["parent_mission_id"] = event.parent["id"]
        if event.predecessor is not None:
            body["predecessor"] = event.predecessor
        if event.stage is not None:
            body["stage"] = event.stage
    elif isinstance(event, Mission.Suspended):
        if event.suspend_until is not None and event.on_expiry is not None:
            body["suspend_until"] = event.suspend_until
            body["on_expiry"] = event.on_expiry
        if event.cause is not None:
            body["suspended_by"] = event.cause["mission_id"]
    elif isinstance(event, Mission.Resumed):
        body["trigger"] = event.trigger
    elif isinstance(event, Mission.AuthorityNarrowed):
        body["authority_set"] = event.authority_set
        body["previous_authority_hash"] = event.previous_authority_hash
        body["authority_changed"] = True
    elif isinstance(event, Mission.StageAdvanced):
        if event.from_stage is not None:
            body["from_stage"] = event.from_stage
        body["to_stage"] = event.to_stage
    elif isinstance(event, Mission.Delegated):
        body["child_mission_id"] = event.child_mission_id
        body["child_agent"] = event.child_agent
        body["child_authority_hash"] = event.child_authority_hash
        body["child_expires_at"] = event.child_expires_at
    elif isinstance(event, Mission.Revoked):
        body["trigger"] = event.trigger
    elif isinstance(event, Mission.Cascaded):
        body["cause_mission_id"] = event.cause["mission_id"]
        body["cause_state"] = event.cause["state"]
    elif isinstance(event, Mission.Superseded):
        body["successor"] = event.successor
    return uri, body


def proposal_event(event: Any) -> tuple[str, dict[str, Any]]:
    """Our profile's ``(event_type_uri, event_object)`` for a submitted or denied proposal."""
    uri = PROPOSAL_EVENT_TYPES.get(type(event))
    if uri is None:
        raise ValueError(f"not a published proposal event: {type(event).__name__}")
    body: dict[str, Any] = {
        "proposal_id": str(event.originator_id),
        "version": event.originator_version,
        "event_timestamp": _numeric_date(event.timestamp),
        "initiating_entity": initiating_entity(event),
    }
    if isinstance(event, Proposal.Submitted):
        body.update(
            state="pending",
            agent=event.agent,
            user=event.user,
            expires_at=event.expires_at,
            authority_set=event.authority_set,
            proposal_hash=event.proposal_hash,
        )
        if event.predecessor is not None:
            body["predecessor"] = event.predecessor
    else:
        body.update(state="denied", prior_state="pending")
        reason = _reason(event)
        if reason is not None:
            body["reason_admin"] = {"en": reason}
    return uri, body


def lifecycle_change_body(event: Any, mission: dict[str, Any]) -> dict[str, Any]:
    """The Mission drafts' ``lifecycle-change`` body, member for member.

    Emitted for every Mission version, so a drafts receiver sees no gap: a stage advance or a
    delegation keeps ``state`` = ``prior_state``; a narrowing also sets ``authority_changed``
    (such an event goes only to streams declaring that capability, see
    :func:`needs_authority_changed_capability`).
    """
    _check(event, mission)
    body: dict[str, Any] = {
        "mission": {"id": str(event.originator_id), "issuer": mission["issuer"]},
        "state": mission["stored_state"],
        "version": event.originator_version,
        "committed_at": format_rfc3339(event.timestamp),
        "expires_at": mission["expires_at"],
        "authority_hash": mission["authority_hash"],
    }
    prior = _prior_state(event, mission)
    if prior is not None:
        body["prior_state"] = prior
    if (
        isinstance(event, Mission.Suspended)
        and event.suspend_until is not None
        and event.on_expiry is not None
    ):
        body["suspend_until"] = event.suspend_until
        body["on_expiry"] = event.on_expiry
    reason = _reason(event)
    if reason is not None:
        body["reason"] = reason
    if isinstance(event, Mission.Superseded):
        body["successor"] = event.successor
    if isinstance(event, Mission.AuthorityNarrowed):
        body["authority_changed"] = True
    return body


def needs_authority_changed_capability(body: dict[str, Any]) -> bool:
    """True when a lifecycle-change body carries its narrowing only in ``authority_changed``.

    Such a SET goes only to streams listing ``"authority_changed"`` in
    ``mission_capabilities_supported`` (the drafts' delivery gate).
    """
    return body.get("authority_changed") is True and body.get("state") == body.get("prior_state")


def _scope(authority_set: list[dict[str, Any]]) -> str:
    actions = {a for entry in authority_set for a in entry.get("actions", [])}
    return " ".join(sorted(actions))


def caep_events(event: Any, mission: dict[str, Any]) -> list[CaepEvent]:
    """The CAEP 1.0 events a Mission event causes (none, or one).

    ``session-revoked`` when the Mission stops deriving authority (suspended from ``active``,
    revoked, expired, cascaded, superseded); ``token-claims-change`` with ``claims.scope`` (the
    space-separated actions still granted) on a narrowing. The subject is the complex subject
    ``{"format": "complex", "session": {"format": "opaque", "id": MISSION_ID}}``.
    """
    _check(event, mission)
    sub_id = {"format": "complex", "session": mission_subject(str(event.originator_id))}
    common: dict[str, Any] = {
        "event_timestamp": _numeric_date(event.timestamp),
        "initiating_entity": initiating_entity(event),
    }
    if isinstance(event, _SESSION_ENDING):
        if isinstance(event, Mission.Suspended) and event.prior_state != "active":
            return []  # a deadline change on an already suspended Mission ends nothing new
        reason = _reason(event) or f"Mission {mission['stored_state']}"
        return [CaepEvent(CAEP_SESSION_REVOKED, sub_id, {**common, "reason_admin": {"en": reason}})]
    if isinstance(event, Mission.AuthorityNarrowed):
        body = {**common, "claims": {"scope": _scope(event.authority_set)}}
        narrowing_reason = _reason(event)
        if narrowing_reason is not None:
            body["reason_admin"] = {"en": narrowing_reason}
        return [CaepEvent(CAEP_TOKEN_CLAIMS_CHANGE, sub_id, body)]
    return []
