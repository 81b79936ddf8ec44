"""The SSF transmitter. This package exports the Mission event profile (the pure mapping from
ledger events to our event types and the two compatibility outputs); the other parts are
imported from their modules:

- ``streams``: stream management (SSF §7–8 rules, metadata) over the ``Stream`` aggregate;
- ``outbox``, ``outbox_fold``, ``outbox_store``, ``outbox_tables``: the tracked projection that
  signs and stores one SET per (ledger event, type, stream), and its queue;
- ``push``, ``rfc8935_push``, ``push_queue``: push delivery with retries and dead letters;
- ``ssrf``: the push target guard; ``keys``: signing keys and the JWKS;
  ``rfc8417_set``: building, signing and verifying SETs.
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
