"""Idempotency records: the first result of a command, kept under its idempotency key.

A command that carries an idempotency key saves one of these in the same transaction as its
events. Repeating the command with the same key finds the record and returns the stored result
without writing anything; the same key with a different command or body is refused. The record's
id derives from the key, so two racing first attempts collide on the event store's primary key and
exactly one of them commits.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import NAMESPACE_URL, UUID, uuid5

from .chain import ChainedAggregate, ChainedCreated, ChainedEvent
from .errors import IdempotencyKeyReused, InvalidInput

_NAMESPACE = uuid5(NAMESPACE_URL, "urn:mission-ledger:idempotency-key")
MAX_KEY_LENGTH = 255


def idempotency_record_id(key: str) -> UUID:
    """The aggregate id under which ``key``'s record is stored."""
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"an idempotency key must be 1–{MAX_KEY_LENGTH} printable characters",
            field="idempotency_key",
        )
    return uuid5(_NAMESPACE, key)


class IdempotencyRecord(ChainedAggregate):
    """The outcome of the first command sent with one idempotency key."""

    TOPIC = "mission_ledger.IdempotencyRecord"

    if TYPE_CHECKING:  # state attributes, set by the events (not constructor fields)
        key: str
        command: str
        fingerprint: str
        result: dict[str, Any]

    class Event(ChainedEvent):
        TOPIC = "mission_ledger.IdempotencyRecord.Event"

    class Created(Event, ChainedCreated):
        TOPIC = "mission_ledger.IdempotencyRecord.Created"

    class Recorded(Event, ChainedCreated):
        TOPIC = "mission_ledger.IdempotencyKeyRecorded.v1"
        key: str
        command: str
        fingerprint: str
        result: dict[str, Any]

        def apply_to(self, r: IdempotencyRecord) -> None:
            r.key, r.command, r.fingerprint = self.key, self.command, self.fingerprint
            r.result = self.result

    @classmethod
    def record(
        cls,
        *,
        key: str,
        command: str,
        fingerprint: str,
        result: dict[str, Any],
        actor: str,
        now: datetime,
    ) -> IdempotencyRecord:
        return cls._open(
            cls.Recorded,
            aggregate_id=idempotency_record_id(key),
            timestamp=now,
            actor=actor,
            key=key,
            command=command,
            fingerprint=fingerprint,
            result=result,
        )

    def replay(self, *, command: str, fingerprint: str) -> dict[str, Any]:
        """The first result, if this is the same command with the same body."""
        if command != self.command or fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(
                f"idempotency key {self.key!r} was already used for a different "
                f"{self.command} request; use a new key for a new request",
                first_command=self.command,
            )
        return self.result
