"""The receiver SDK: what a Service imports to receive Mission events from an SSF 1.0 transmitter.

Five pieces, used together (``docs/receiver-sdk.md`` walks through them)::

    metadata = await discover(issuer, session)                      # SSF §7
    client = StreamClient(metadata, token, session)                 # SSF §8
    stream = await client.create(events_requested=[...])            # poll by default
    verifier = SetVerifier(issuer, stream.audiences[0], metadata.jwks_uri, session)
    tracker = MissionTracker(http_mission_reader(issuer, token, session))
    await poll_forever(client, stream.stream_id, verifier, tracker.apply, stop_event=stop)
    # or, for push: app.router.add_post(path, push_handler(verifier, tracker.apply, ...))
    tracker.is_active(mission_id)

Only aiohttp, pydantic and PyJWT (through :mod:`mission_ledger.ssf.rfc8417_set`) are needed.
"""

from ..errors import (
    InvalidSetAudience,
    InvalidSetIssuer,
    InvalidSetKey,
    InvalidSetRequest,
    InvalidSetSignature,
    SetVerificationError,
)
from ..ssf.mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    MISSION_EVENT_TYPES,
    NAMESPACE,
)
from .discovery import (
    POLL,
    PUSH,
    WELL_KNOWN,
    AuthorizationScheme,
    TransmitterMetadata,
    discover,
    well_known_url,
)
from .errors import (
    DiscoveryError,
    InsecureUrl,
    InvalidResponse,
    InvalidSetState,
    IssuerMismatch,
    JwksUnavailable,
    ReceiverError,
    StreamNotFound,
    TransmitterBadRequest,
    TransmitterConflict,
    TransmitterError,
    TransmitterForbidden,
    TransmitterRateLimited,
    TransmitterServerError,
    TransmitterUnauthorized,
    TransmitterUnavailable,
)
from .poll import Backoff, PollStats, poll_forever
from .push import SET_CONTENT_TYPE, EventHandler, push_handler
from .streams import Delivery, PollResponse, StreamClient, StreamConfig, StreamStatus
from .tracker import (
    STREAM_UPDATED,
    TERMINAL_STATES,
    VERIFICATION,
    MissionReader,
    MissionState,
    MissionTracker,
    Outcome,
    StreamEvent,
    http_mission_reader,
)
from .verifier import SetVerifier, VerifiedSet

#: Every event type of our Mission profile (``ssf/README.md``).
MISSION_EVENTS: tuple[str, ...] = tuple(MISSION_EVENT_TYPES.values())

__all__ = [
    "CAEP_SESSION_REVOKED",
    "CAEP_TOKEN_CLAIMS_CHANGE",
    "LIFECYCLE_CHANGE",
    "MISSION_EVENTS",
    "NAMESPACE",
    "POLL",
    "PUSH",
    "SET_CONTENT_TYPE",
    "STREAM_UPDATED",
    "TERMINAL_STATES",
    "VERIFICATION",
    "WELL_KNOWN",
    "AuthorizationScheme",
    "Backoff",
    "Delivery",
    "DiscoveryError",
    "EventHandler",
    "InsecureUrl",
    "InvalidResponse",
    "InvalidSetAudience",
    "InvalidSetIssuer",
    "InvalidSetKey",
    "InvalidSetRequest",
    "InvalidSetSignature",
    "InvalidSetState",
    "IssuerMismatch",
    "JwksUnavailable",
    "MissionReader",
    "MissionState",
    "MissionTracker",
    "Outcome",
    "PollResponse",
    "PollStats",
    "ReceiverError",
    "SetVerificationError",
    "SetVerifier",
    "StreamClient",
    "StreamConfig",
    "StreamEvent",
    "StreamNotFound",
    "StreamStatus",
    "TransmitterBadRequest",
    "TransmitterConflict",
    "TransmitterError",
    "TransmitterForbidden",
    "TransmitterMetadata",
    "TransmitterRateLimited",
    "TransmitterServerError",
    "TransmitterUnauthorized",
    "TransmitterUnavailable",
    "VerifiedSet",
    "discover",
    "http_mission_reader",
    "poll_forever",
    "push_handler",
    "well_known_url",
]
