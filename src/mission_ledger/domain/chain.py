"""Hash-chained aggregates: every stored event commits to its predecessor.

Each event of a chained aggregate carries ``prev_hash`` and ``hash``, where

    hash = "sha-256:" + base64url(SHA-256(JCS(payload)))
    payload = {"aggregate_id": str(originator_id), "version": originator_version,
               "topic": <the event class's stable topic>, "timestamp": <ISO 8601>,
               "fields": {every other field of the event except ``hash``}}

``prev_hash`` of version 1 is the *genesis* hash derived from the aggregate id, so a stream cannot
be grafted onto another id. Because the payload includes the topic, the version and every domain
field, changing any of them, dropping an event or swapping two is visible to a verifier that
recomputes the chain (see :mod:`mission_ledger.audit`). The payload is built from the event object
itself, so the writer and the verifier share one function and cannot drift.

Events are built here rather than through ``Aggregate.trigger_event`` because the hash has to be
computed from the finished event before it is applied and queued.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar
from uuid import NAMESPACE_URL, UUID, uuid5

from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from .anchors import sha256_b64url
from .canonical import canonicalize

HASH_PREFIX = "sha-256:"
_EXCLUDED = frozenset({"originator_id", "originator_version", "timestamp", "hash"})
_EVENT_ID_NAMESPACE = uuid5(NAMESPACE_URL, "urn:mission-ledger:event")

TAggregate = TypeVar("TAggregate", bound="ChainedAggregate")


def genesis_hash(aggregate_id: UUID) -> str:
    """The ``prev_hash`` of an aggregate's first event."""
    genesis = {"genesis": "mission-ledger", "aggregate_id": str(aggregate_id)}
    return HASH_PREFIX + sha256_b64url(canonicalize(genesis))


def event_id_for(aggregate_id: UUID, version: int) -> str:
    """The stable id of the event at ``version`` of ``aggregate_id`` (a UUID, as text)."""
    return str(uuid5(_EVENT_ID_NAMESPACE, f"{aggregate_id}/{version}"))


def chain_payload(event: Any) -> dict[str, Any]:
    """The JSON object an event's ``hash`` covers (everything but the hash itself)."""
    fields = {k: v for k, v in vars(event).items() if k not in _EXCLUDED}
    timestamp: datetime = event.timestamp
    return {
        "aggregate_id": str(event.originator_id),
        "version": event.originator_version,
        "topic": get_topic(type(event)),
        "timestamp": timestamp.isoformat(),
        "fields": fields,
    }


def compute_hash(event: Any) -> str:
    """The hash an event should carry, recomputed from its content."""
    return HASH_PREFIX + sha256_b64url(canonicalize(chain_payload(event)))


class ChainedEvent(Aggregate.Event):
    """Base of every stored event: who did it, its id, and its place in the chain."""

    event_id: str
    actor: str
    prev_hash: str
    hash: str

    def apply(self, aggregate: Any) -> None:
        aggregate.head_hash = self.hash
        self.apply_to(aggregate)

    def apply_to(self, aggregate: Any) -> None:
        """Evolve the aggregate's state; overridden by each event type."""


class ChainedCreated(ChainedEvent, Aggregate.Created):
    """Base of every stream-opening event."""


class ChainedAggregate(Aggregate):
    """An aggregate whose events form a hash chain (``head_hash`` is the newest link)."""

    if TYPE_CHECKING:  # set by every event
        head_hash: str

    @classmethod
    def _open(
        cls: type[TAggregate],
        event_class: type[ChainedCreated],
        *,
        aggregate_id: UUID,
        timestamp: datetime,
        actor: str,
        **fields: Any,
    ) -> TAggregate:
        """Create the aggregate with its first, chained event."""
        draft = event_class(  # type: ignore[call-arg]
            originator_id=aggregate_id,
            originator_version=cls.INITIAL_VERSION,
            timestamp=timestamp,
            originator_topic=get_topic(cls),
            event_id=event_id_for(aggregate_id, cls.INITIAL_VERSION),
            actor=actor,
            prev_hash=genesis_hash(aggregate_id),
            hash="",
            **fields,
        )
        event = dataclasses.replace(draft, hash=compute_hash(draft))  # type: ignore[call-arg]
        aggregate = event.mutate(None)
        assert isinstance(aggregate, cls)
        aggregate.pending_events.append(event)
        return aggregate

    def _record(
        self,
        event_class: type[ChainedEvent],
        *,
        timestamp: datetime,
        actor: str,
        **fields: Any,
    ) -> ChainedEvent:
        """Append the next chained event to this aggregate and apply it."""
        version = self.version + 1
        draft = event_class(  # type: ignore[call-arg]
            originator_id=self.id,
            originator_version=version,
            timestamp=timestamp,
            event_id=event_id_for(self.id, version),
            actor=actor,
            prev_hash=self.head_hash,
            hash="",
            **fields,
        )
        event = dataclasses.replace(draft, hash=compute_hash(draft))  # type: ignore[call-arg]
        event.mutate(self)
        self.pending_events.append(event)
        return event
