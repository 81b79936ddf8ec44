"""The Shared Signals profile: Mission event types and their compatibility outputs.

Pure mapping only (no signing, no streams, no HTTP); the transmitter builds on it.
"""

from .mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    MISSION_EVENT_TYPES,
    NAMESPACE,
    PROFILE_EVENT_TYPES,
    PROPOSAL_EVENT_TYPES,
    CaepEvent,
    caep_events,
    initiating_entity,
    lifecycle_change_body,
    mission_event,
    mission_subject,
    mission_subject_forms,
    needs_authority_changed_capability,
    proposal_event,
    proposal_subject,
)

__all__ = [
    "CAEP_SESSION_REVOKED",
    "CAEP_TOKEN_CLAIMS_CHANGE",
    "LIFECYCLE_CHANGE",
    "MISSION_EVENT_TYPES",
    "NAMESPACE",
    "PROFILE_EVENT_TYPES",
    "PROPOSAL_EVENT_TYPES",
    "CaepEvent",
    "caep_events",
    "initiating_entity",
    "lifecycle_change_body",
    "mission_event",
    "mission_subject",
    "mission_subject_forms",
    "needs_authority_changed_capability",
    "proposal_event",
    "proposal_subject",
]
