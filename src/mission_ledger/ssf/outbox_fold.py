"""The SSF outbox's fold: one page of ledger events → stream rows, scope facts, drops, SET drafts.

The rules per ledger event (a stream is *live* when neither deleted nor its receiver revoked; it
*accepts* events when live and not ``disabled``: a disabled stream drops, a paused one holds):

- **Mission event** (version ``v``): the Mission document as of ``v`` (``to_dict`` at the
  event's timestamp), from an LRU of aggregates: one at ``v - 1`` is advanced with the event
  itself, anything else is loaded at ``v`` from the event store. Eligible: accepting streams
  whose receiver scope sees the Mission's approved Authority Set (``all_missions``, or the
  resource-prefix rule of :func:`..principals.scope_sees_authority`; the Authority Set at
  approval is the widest it ever is) and whose subject operations include one of
  :func:`.mission_events.mission_subject_forms`. Per eligible stream, each output whose URI is
  in its ``events_delivered``: our profile event (``sub_id`` the opaque Mission id), the drafts'
  ``lifecycle-change`` (same ``sub_id``; skipped when ``needs_authority_changed_capability``
  and the stream lacks the ``authority_changed`` capability), the CAEP events (their own
  complex ``sub_id``). ``MissionApproved`` also records the Mission's scope facts
  (``ssf_missions``). The document is only built when some eligible stream wants an output, so
  catching up on a history without streams is cheap.
- **ProposalSubmitted / ProposalDenied**: accepting streams of ``all_missions`` receivers only
  (receivers otherwise never see proposals), ``sub_id`` ``{"format": "opaque", "id":
  PROPOSAL_ID}``; subject forms: that, and the complex ``user`` / ``application`` subject.
- **StreamCreated / Configured / SubjectAdded / SubjectRemoved**: the folded stream row changes
  (``Configured``: ``events_delivered``, capabilities, signing algorithm, delivery method and
  push ``endpoint_url``). A stream whose receiver is not a live receiver principal is created
  ``receiver_revoked``.
- **StreamStatusChanged**: to ``disabled`` drops the stream's queued non-control SETs (disabled
  drops; paused holds); a ``transmitter``-initiated change queues a control ``stream-updated``
  SET ``{"status", "reason"?}`` with ``sub_id`` the opaque stream id (control SETs are offered
  even while paused or disabled: they tell the receiver why delivery stopped).
- **StreamVerificationRequested**: a ``verification`` SET ``{"state": …}`` (``{}`` without a
  state), ``sub_id`` the opaque stream id, unless the stream is disabled (dropped); held while
  paused like any SET.
- **StreamDeleted**: every queued SET of the stream is dropped (and its push secret and errors);
  **PrincipalRevoked** of a receiver: its streams are marked ``receiver_revoked`` and their
  queues dropped.

Every SET one ledger event causes carries ``txn`` = the event's ``event_id`` (shared by all its
outputs on every stream), ``iss`` = the ledger's issuer, ``aud`` = the stream's, a fresh uuid4
``jti`` and ``iat`` = the page's clock reading. Drafts are built in ledger order, so the queue's
``seq`` follows the ledger within a stream. A drop in the middle of a page removes the page's own
earlier drafts at once, and the rows of earlier pages when the page is written.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError

from ..domain.mission import Mission
from ..domain.principal import RECEIVER
from ..domain.principal import Principal as PrincipalAggregate
from ..domain.proposal import Proposal
from ..domain.stream import (
    DISABLED,
    ENABLED,
    TRANSMITTER_INITIATED,
    Stream,
    subject_included,
    subject_key,
)
from ..ledger import MissionLedger
from ..principals import scope_sees_authority
from ..projections.errors import ProjectionMismatch
from .mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    MISSION_EVENT_TYPES,
    PROPOSAL_EVENT_TYPES,
    caep_events,
    lifecycle_change_body,
    mission_event,
    mission_subject,
    mission_subject_forms,
    needs_authority_changed_capability,
    proposal_event,
    proposal_subject,
)
from .outbox_store import FoldedStream, MissionScope, OutboxPage, OutboxStore
from .rfc8417_set import build_set_claims, set_payload

__all__ = [
    "STREAM_UPDATED",
    "VERIFICATION",
    "Draft",
    "LedgerFacts",
    "PageFold",
]

_SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
STREAM_UPDATED = _SSF + "stream-updated"
VERIFICATION = _SSF + "verification"
CAEP_TYPES = frozenset({CAEP_SESSION_REVOKED, CAEP_TOKEN_CLAIMS_CHANGE})
AUTHORITY_CHANGED = "authority_changed"
MISSION_CACHE_SIZE = 1024  # Mission aggregates kept to advance event by event
SCOPE_CACHE_SIZE = 16_384  # Missions' scope facts kept in memory

K = TypeVar("K")
V = TypeVar("V")


class Lru(Generic[K, V]):
    """A small least-recently-used map (the worker thread alone uses it)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def discard(self, key: K) -> None:
        self._items.pop(key, None)


@dataclass
class Draft:
    """A SET the page causes, before signing."""

    stream_id: str
    alg: str
    jti: str
    payload: str  # the JWS Payload, BASE64URL(claims): a snapshot later events cannot change
    event_type: str
    txn: str
    position: int
    mission_id: str | None
    mission_version: int | None
    control: bool


class PageFold:
    """Folds one page into an :class:`OutboxPage` and the drafts to sign (see the module doc).

    Mutates the worker's stream cache in place; the worker throws the cache away if the page
    does not commit."""

    def __init__(
        self, facts: LedgerFacts, streams: dict[str, FoldedStream], issuer: str, now: datetime
    ) -> None:
        self.facts = facts
        self.issuer = issuer
        self.streams = streams
        self.now = now
        self.iat = int(now.timestamp())
        self.page = OutboxPage()
        self.drafts: list[Draft] = []
        self.dirty: dict[str, FoldedStream] = {}

    # -- helpers ----------------------------------------------------------------------------------

    def _accepting(self) -> list[FoldedStream]:
        return [s for s in self.streams.values() if s.live and s.status != DISABLED]

    def _draft(
        self,
        stream: FoldedStream,
        event_type: str,
        body: dict[str, Any],
        sub_id: dict[str, Any],
        *,
        txn: str,
        position: int,
        mission: tuple[str, int] | None = None,
        control: bool = False,
    ) -> None:
        claims = build_set_claims(
            iss=self.issuer,
            aud=stream.aud,
            event_type=event_type,
            event=body,
            sub_id=sub_id,
            txn=txn,
            iat=self.iat,
        )
        self.drafts.append(
            Draft(
                stream_id=stream.stream_id,
                alg=stream.signing_alg,
                jti=claims["jti"],
                payload=set_payload(claims),
                event_type=event_type,
                txn=txn,
                position=position,
                mission_id=mission[0] if mission else None,
                mission_version=mission[1] if mission else None,
                control=control,
            )
        )

    def _drop(self, stream_id: str, *, everything: bool) -> None:
        """Drop the stream's queued SETs: this page's drafts now, earlier ones at write time."""
        self.drafts = [
            d for d in self.drafts if d.stream_id != stream_id or not (everything or not d.control)
        ]
        self.page.drops[stream_id] = everything or self.page.drops.get(stream_id, False)

    def _touch(self, stream: FoldedStream, event: Any, position: int) -> None:
        stream.version = event.originator_version
        stream.updated_at = event.timestamp
        stream.position = position
        self.dirty[stream.stream_id] = stream

    # -- the fold ---------------------------------------------------------------------------------

    def apply(self, position: int, event: Any) -> None:
        if isinstance(event, Mission.Event):
            self._mission(position, event)
        elif isinstance(event, Proposal.Event):
            self._proposal(position, event)
        elif isinstance(event, Stream.Event):
            self._stream(position, event)
        elif isinstance(event, PrincipalAggregate.Revoked):
            self._principal_revoked(position, event)

    def _mission(self, position: int, event: Any) -> None:
        facts = self.facts
        mission_id = str(event.originator_id)
        if isinstance(event, Mission.Approved):
            scope = MissionScope(
                mission_id=mission_id,
                user=event.user,
                agent=event.agent,
                authority_set=copy.deepcopy(event.authority_set),
                position=position,
            )
            self.page.missions.append(scope)
            facts.remember(scope)
        cached = facts.advance_cached(event)
        candidates = self._accepting()
        if not candidates:
            return
        scope = facts.scope(mission_id)
        forms = mission_subject_forms(mission_id, scope.user, scope.agent)
        targets = [
            s
            for s in candidates
            if scope_sees_authority(s.resources, s.all_missions, scope.authority_set)
            and subject_included(s.subject_operations, forms)
        ]
        wanted = {uri for s in targets for uri in s.events_delivered}
        profile_uri = MISSION_EVENT_TYPES[type(event)]
        if not wanted & {profile_uri, LIFECYCLE_CHANGE, *CAEP_TYPES}:
            return
        mission = cached if cached is not None else facts.mission_at(event)
        document = mission.to_dict(event.timestamp)
        outputs: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = []
        if profile_uri in wanted:
            _, body = mission_event(event, document)
            outputs.append((profile_uri, mission_subject(mission_id), body, False))
        if LIFECYCLE_CHANGE in wanted:
            body = lifecycle_change_body(event, document)
            gated = needs_authority_changed_capability(body)
            outputs.append((LIFECYCLE_CHANGE, mission_subject(mission_id), body, gated))
        if wanted & CAEP_TYPES:
            for caep in caep_events(event, document):
                outputs.append((caep.uri, caep.sub_id, caep.event, False))
        for stream in targets:
            for uri, sub_id, body, gated in outputs:
                if uri not in stream.events_delivered:
                    continue
                if gated and AUTHORITY_CHANGED not in stream.mission_capabilities:
                    continue
                self._draft(
                    stream,
                    uri,
                    body,
                    sub_id,
                    txn=event.event_id,
                    position=position,
                    mission=(mission_id, event.originator_version),
                )

    def _proposal(self, position: int, event: Any) -> None:
        uri = PROPOSAL_EVENT_TYPES.get(type(event))
        if uri is None:
            return
        candidates = [s for s in self._accepting() if s.all_missions and uri in s.events_delivered]
        if not candidates:
            return
        proposal_id = str(event.originator_id)
        if isinstance(event, Proposal.Submitted):
            user, agent = event.user, event.agent
        else:
            user, agent = self.facts.proposal_parties(event.originator_id)
        forms = [
            proposal_subject(proposal_id),
            {
                "format": "complex",
                "user": {"format": "opaque", "id": user},
                "application": {"format": "opaque", "id": agent},
            },
        ]
        _, body = proposal_event(event)
        for stream in candidates:
            if subject_included(stream.subject_operations, forms):
                sub_id = proposal_subject(proposal_id)
                self._draft(stream, uri, body, sub_id, txn=event.event_id, position=position)

    def _stream(self, position: int, event: Any) -> None:
        stream_id = event.originator_id.hex
        if isinstance(event, Stream.Created):
            stream = FoldedStream(
                stream_id=stream_id,
                receiver_id=event.receiver_id,
                aud=event.aud,
                resources=list(event.resources),
                all_missions=event.all_missions,
                status=ENABLED,
                reason=None,
                events_delivered=list(event.events_delivered),
                mission_capabilities=list(event.mission_capabilities),
                signing_alg=event.signing_alg,
                delivery_method=event.delivery_method,
                endpoint_url=event.endpoint_url,
                subject_operations=[],
                deleted=False,
                receiver_revoked=not self.facts.receiver_live(event.receiver_id),
                version=0,
                created_at=event.timestamp,
                updated_at=event.timestamp,
                position=position,
            )
            self.streams[stream_id] = stream
            self._touch(stream, event, position)
            return
        found = self.streams.get(stream_id)
        if found is None or event.originator_version != found.version + 1:
            raise ProjectionMismatch(
                f"stream {stream_id} event version {event.originator_version} does not follow "
                f"the outbox's folded version "
                f"{'(none)' if found is None else found.version}: the outbox does not match "
                "the ledger; stop the outbox worker and inspect the ssf_streams table",
                stream_id=stream_id,
            )
        stream = found
        self._touch(stream, event, position)
        if isinstance(event, Stream.Configured):
            stream.events_delivered = list(event.events_delivered)
            stream.mission_capabilities = list(event.mission_capabilities)
            stream.signing_alg = event.signing_alg
            stream.delivery_method = event.delivery_method
            stream.endpoint_url = event.endpoint_url
        elif isinstance(event, Stream.StatusChanged):
            stream.status, stream.reason = event.status, event.reason
            if event.status == DISABLED:
                self._drop(stream_id, everything=False)
            if event.initiator == TRANSMITTER_INITIATED and stream.live:
                body: dict[str, Any] = {"status": event.status}
                if event.reason is not None:
                    body["reason"] = event.reason
                self._draft(
                    stream,
                    STREAM_UPDATED,
                    body,
                    {"format": "opaque", "id": stream_id},
                    txn=event.event_id,
                    position=position,
                    control=True,
                )
        elif isinstance(event, Stream.SubjectAdded | Stream.SubjectRemoved):
            included = isinstance(event, Stream.SubjectAdded)
            key = subject_key(event.subject)
            kept = [op for op in stream.subject_operations if subject_key(op["subject"]) != key]
            kept.append({"subject": copy.deepcopy(event.subject), "included": included})
            stream.subject_operations = kept
        elif isinstance(event, Stream.VerificationRequested):
            if stream.live and stream.status != DISABLED:
                body = {} if event.state is None else {"state": event.state}
                sub_id = {"format": "opaque", "id": stream_id}
                self._draft(
                    stream, VERIFICATION, body, sub_id, txn=event.event_id, position=position
                )
        elif isinstance(event, Stream.Deleted):
            stream.deleted = True
            self._drop(stream_id, everything=True)
            self.page.deleted.append(stream_id)

    def _principal_revoked(self, position: int, event: Any) -> None:
        principal_id = str(event.originator_id)
        for stream in self.streams.values():
            if stream.receiver_id == principal_id and not stream.receiver_revoked:
                stream.receiver_revoked = True
                stream.position = position
                self.dirty[stream.stream_id] = stream
                self._drop(stream.stream_id, everything=True)


class LedgerFacts:
    """What the fold reads besides the page: Missions as of a version, their scope facts, a
    proposal's parties, whether a receiver is live. Caches (LRUs) in front of the event store
    and the outbox store; used by the worker thread alone.

    The caches may run ahead of the committed outbox (a page that failed to commit had advanced
    them): that is harmless, because what they hold are facts of the immutable ledger and a
    Mission aggregate is only reused at exactly the version asked for, or the one before."""

    def __init__(self, ledger: MissionLedger, store: OutboxStore) -> None:
        self.ledger = ledger
        self.store = store
        self._missions: Lru[UUID, Mission] = Lru(MISSION_CACHE_SIZE)
        self._scopes: Lru[str, MissionScope] = Lru(SCOPE_CACHE_SIZE)

    def remember(self, scope: MissionScope) -> None:
        self._scopes.put(scope.mission_id, scope)

    def advance_cached(self, event: Any) -> Mission | None:
        """The cached Mission aggregate brought to the event's version, if that is cheap."""
        version = event.originator_version
        if isinstance(event, Mission.Approved):
            mission = event.mutate(None)
            assert isinstance(mission, Mission)
            self._missions.put(event.originator_id, mission)
            return mission
        cached = self._missions.get(event.originator_id)
        if cached is None:
            return None
        if cached.version == version - 1:
            event.mutate(cached)
            return cached
        if cached.version == version:
            return cached
        self._missions.discard(event.originator_id)  # ahead (an uncommitted page) or behind
        return None

    def mission_at(self, event: Any) -> Mission:
        """The Mission as of the event's version, from the event store."""
        mission: Any = self.ledger.repository.get(
            event.originator_id, version=event.originator_version
        )
        assert isinstance(mission, Mission)
        self._missions.put(event.originator_id, mission)
        return mission

    def scope(self, mission_id: str) -> MissionScope:
        scope = self._scopes.get(mission_id)
        if scope is None:
            scope = self.store.mission_scope(mission_id)
        if scope is None:  # not recorded (the outbox reads every approval): from the ledger
            first: Any = self.ledger.repository.get(UUID(mission_id), version=1)
            scope = MissionScope(
                mission_id, first.user, first.agent, copy.deepcopy(first.authority_set), 0
            )
        self._scopes.put(mission_id, scope)
        return scope

    def proposal_parties(self, proposal_id: UUID) -> tuple[str, str]:
        proposal: Any = self.ledger.repository.get(proposal_id, version=1)
        return str(proposal.user), str(proposal.agent)

    def receiver_live(self, receiver_id: str) -> bool:
        """Whether a stream's receiver is a live receiver principal (fail closed otherwise)."""
        try:
            principal_id = UUID(receiver_id)
        except ValueError:
            return False
        try:
            principal: Any = self.ledger.repository.get(principal_id)
        except AggregateNotFoundError:
            return False
        return (
            isinstance(principal, PrincipalAggregate)
            and principal.role == RECEIVER
            and not principal.revoked
        )
