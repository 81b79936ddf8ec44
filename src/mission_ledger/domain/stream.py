"""The SSF Stream aggregate: one receiver's subscription to this Authority's events (SSF §8).

A stream is event-sourced like a Mission, in the same hash-chained ledger, so who subscribed to
what, when they paused it, which subjects they removed and when they asked for verification is
auditable history. The events:

=================================  ===============================================================
``StreamCreated.v1``               the stream exists: its receiver (id, name, the ``aud`` fixed
                                   for its life, and the receiver's scope at creation), delivery,
                                   requested and delivered event types, signing algorithm
``StreamConfigured.v1``            PATCH or PUT: the receiver-supplied configuration after it
``StreamStatusChanged.v1``         ``enabled`` / ``paused`` / ``disabled``, with ``reason`` and who
                                   initiated it (``receiver`` or ``transmitter``)
``StreamSubjectAdded.v1``          add subject (a statement of interest, never beyond the scope)
``StreamSubjectRemoved.v1``        remove subject
``StreamVerificationRequested.v1`` a verification request; the transmitter answers it with a
                                   verification SET echoing ``state``
``StreamDeleted.v1``               the stream is gone; its queued SETs are dropped
=================================  ===============================================================

**Subjects** (SSF §8.1.3.1). Streams default to ``ALL`` subjects within the receiver's scope.
Add and remove operations are kept in order, one per distinct subject (a later operation on an
identical subject replaces the earlier one); for an event, the **latest** operation whose subject
matches one of the event's subject forms decides (add → delivered, remove → not); with none, the
default (``ALL``) delivers it. Simple subjects match when identical; complex subjects match when
every member present in both is identical (absent members are wildcards).

This module is pure: the transmitter (:mod:`mission_ledger.ssf.streams`) computes what depends on
the profile (``events_delivered``) and hands the aggregate plain values.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from uuid import UUID

from .canonical import canonicalize
from .chain import ChainedAggregate, ChainedCreated, ChainedEvent
from .errors import InvalidInput, TooManyRequests
from .timefmt import format_rfc3339, parse_rfc3339

PUSH = "urn:ietf:rfc:8935"
POLL = "urn:ietf:rfc:8936"
DELIVERY_METHODS: tuple[str, ...] = (PUSH, POLL)

ENABLED, PAUSED, DISABLED = "enabled", "paused", "disabled"
STATUSES: tuple[str, ...] = (ENABLED, PAUSED, DISABLED)
RECEIVER_INITIATED, TRANSMITTER_INITIATED = "receiver", "transmitter"

SIGNING_ALGS: tuple[str, ...] = ("RS256", "ES256")
DEFAULT_SIGNING_ALG = "RS256"  # the CAEP interoperability profile's requirement
MISSION_CAPABILITIES: tuple[str, ...] = ("authority_changed",)

MAX_SUBJECT_OPERATIONS = 10_000  # distinct subjects a stream keeps add/remove decisions for
MAX_TEXT = 1024
MAX_DESCRIPTION = 1024
MAX_STATE = 1024
MAX_EVENT_TYPES = 100

# RFC 9493 and SSF §3.5 simple formats → their required string members.
SIMPLE_FORMATS: dict[str, tuple[str, ...]] = {
    "account": ("uri",),
    "email": ("email",),
    "iss_sub": ("iss", "sub"),
    "opaque": ("id",),
    "phone_number": ("phone_number",),
    "did": ("url",),
    "uri": ("uri",),
    "jwt_id": ("iss", "jti"),
    "saml_assertion_id": ("issuer", "assertion_id"),
}
ALIASES, IP_ADDRESSES, COMPLEX = "aliases", "ip-addresses", "complex"
KNOWN_FORMATS: tuple[str, ...] = (*SIMPLE_FORMATS, ALIASES, IP_ADDRESSES, COMPLEX)


# -- subjects -------------------------------------------------------------------------------------


def _subject_error(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"{field}: {message}", field=field)


def _check_simple(value: object, field: str, *, allow_aliases: bool = True) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _subject_error(field, "a subject identifier is a JSON object with a format member")
    fmt = value.get("format")
    if not isinstance(fmt, str):
        raise _subject_error(field, "a subject identifier needs a format member (RFC 9493)")
    if fmt in SIMPLE_FORMATS:
        for member in SIMPLE_FORMATS[fmt]:
            text = value.get(member)
            if not isinstance(text, str) or not text or len(text) > MAX_TEXT:
                raise _subject_error(
                    f"{field}.{member}",
                    f"format {fmt!r} needs the member {member!r} as a non-empty string "
                    f"(at most {MAX_TEXT} characters)",
                )
        return value
    if fmt == ALIASES:
        if not allow_aliases:
            raise _subject_error(field, "an aliases identifier cannot be nested in aliases")
        identifiers = value.get("identifiers")
        if not isinstance(identifiers, list) or not identifiers or len(identifiers) > 20:
            raise _subject_error(
                f"{field}.identifiers", "aliases needs 1–20 subject identifiers in identifiers"
            )
        for index, item in enumerate(identifiers):
            _check_simple(item, f"{field}.identifiers[{index}]", allow_aliases=False)
        return value
    if fmt == IP_ADDRESSES:
        addresses = value.get(IP_ADDRESSES)
        if not isinstance(addresses, list) or not addresses or len(addresses) > 20:
            raise _subject_error(
                f"{field}.ip-addresses", "ip-addresses needs 1–20 IP addresses as strings"
            )
        for index, address in enumerate(addresses):
            try:
                ipaddress.ip_address(address)
            except (ValueError, TypeError):
                raise _subject_error(
                    f"{field}.ip-addresses[{index}]", f"{address!r} is not an IP address"
                ) from None
        return value
    if fmt == COMPLEX:
        raise _subject_error(field, "a complex subject cannot be nested in another subject")
    raise _subject_error(
        field,
        f"unsupported subject format {fmt!r}; this transmitter understands "
        f"{', '.join(KNOWN_FORMATS)}",
    )


def check_subject(value: object, field: str = "subject") -> dict[str, Any]:
    """A subject identifier (RFC 9493 simple formats, SSF §3.5 formats, or SSF complex)."""
    if isinstance(value, dict) and value.get("format") == COMPLEX:
        members = {k: v for k, v in value.items() if k != "format"}
        if not members:
            raise _subject_error(field, "a complex subject needs at least one member")
        if len(members) > 20:
            raise _subject_error(field, "a complex subject has at most 20 members")
        for name, member in members.items():
            _check_simple(member, f"{field}.{name}")
        subject = value
    else:
        subject = _check_simple(value, field)
    if len(canonicalize(subject)) > 8 * MAX_TEXT:
        raise _subject_error(field, "the subject is too large")
    return subject


def subject_matches(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """SSF §8.1.3.1: simple subjects match when identical; two complex subjects match when every
    member present in both is identical (a member absent from either is a wildcard)."""
    if a.get("format") == COMPLEX and b.get("format") == COMPLEX:
        shared = (set(a) & set(b)) - {"format"}
        return all(a[name] == b[name] for name in shared) and bool(shared)
    return a == b


def subject_key(subject: Mapping[str, Any]) -> str:
    """A stable key for an identical-subject comparison (canonical JSON)."""
    return canonicalize(dict(subject)).decode()


def subject_included(
    operations: Sequence[Mapping[str, Any]], event_subjects: Iterable[Mapping[str, Any]]
) -> bool:
    """Whether a stream with these add/remove ``operations`` (oldest first, each
    ``{"subject": …, "included": bool}``) delivers an event with these subject forms.

    The latest operation whose subject matches any of the forms decides; none → ``ALL``.
    """
    forms = list(event_subjects)
    for operation in reversed(operations):
        if any(subject_matches(operation["subject"], form) for form in forms):
            return bool(operation["included"])
    return True


# -- configuration values ------------------------------------------------------------------------


def _text(value: object, field: str, *, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise InvalidInput(f"{field} must be a string of at most {limit} characters", field=field)
    return value


def check_uri_list(value: object, field: str) -> list[str]:
    """A list of event-type URIs (strings); duplicates dropped, order kept."""
    if not isinstance(value, list):
        raise InvalidInput(f"{field} must be a JSON array of event-type URIs", field=field)
    if len(value) > MAX_EVENT_TYPES:
        raise InvalidInput(f"{field} lists at most {MAX_EVENT_TYPES} event types", field=field)
    seen: list[str] = []
    for index, item in enumerate(value):
        uri = _text(item, f"{field}[{index}]", limit=2048)
        if uri not in seen:
            seen.append(uri)
    return seen


def check_status(value: object, field: str = "status") -> str:
    if value not in STATUSES:
        raise InvalidInput(
            f"{field} must be one of {', '.join(STATUSES)}; got {value!r}", field=field
        )
    assert isinstance(value, str)
    return value


def check_signing_alg(value: object, field: str = "set_signing_alg") -> str:
    if value not in SIGNING_ALGS:
        raise InvalidInput(
            f"{field} must be one of {', '.join(SIGNING_ALGS)} (default "
            f"{DEFAULT_SIGNING_ALG}); got {value!r}",
            field=field,
        )
    assert isinstance(value, str)
    return value


def check_capabilities(value: object, field: str = "mission_capabilities_supported") -> list[str]:
    """The Mission drafts' receiver capabilities; unknown values are ignored (kept out)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInput(f"{field} must be a JSON array of strings", field=field)
    return [c for c in MISSION_CAPABILITIES if c in value]


#: The receiver-supplied configuration a stream keeps (set at creation, replaced by PATCH/PUT).
CONFIGURATION_FIELDS: tuple[str, ...] = (
    "delivery_method",
    "endpoint_url",
    "authorization_fingerprint",
    "events_requested",
    "events_delivered",
    "description",
    "signing_alg",
    "mission_capabilities",
)


def _apply_configuration(stream: Any, event: Any) -> None:
    """Copy the configuration fields of a Created or Configured event onto the stream (lists
    copied, so the stream never shares them with the event)."""
    for name in CONFIGURATION_FIELDS:
        value = getattr(event, name)
        setattr(stream, name, list(value) if isinstance(value, list) else value)


# -- the aggregate --------------------------------------------------------------------------------


class Stream(ChainedAggregate):
    """One SSF stream (see the module docstring)."""

    TOPIC = "mission_ledger.Stream"

    if TYPE_CHECKING:  # state attributes, set by the events
        receiver_id: str
        receiver_name: str
        aud: str
        resources: list[str]
        all_missions: bool
        delivery_method: str
        endpoint_url: str | None
        authorization_fingerprint: str | None
        events_requested: list[str] | None
        events_delivered: list[str]
        description: str | None
        signing_alg: str
        mission_capabilities: list[str]
        min_verification_interval: int
        status: str
        reason: str | None
        subject_operations: list[dict[str, Any]]
        last_verification_at: str | None
        deleted: bool
        created_at: str
        updated_at: str

    class Event(ChainedEvent):
        TOPIC = "mission_ledger.Stream.Event"

        def apply_to(self, s: Stream) -> None:
            s.updated_at = format_rfc3339(self.timestamp)
            self.evolve(s)

        def evolve(self, s: Stream) -> None:
            """The event's own change (overridden)."""

    class Created(Event, ChainedCreated):
        """Version 1: the stream exists, enabled."""

        TOPIC = "mission_ledger.StreamCreated.v1"
        receiver_id: str
        receiver_name: str
        aud: str
        resources: list[str]
        all_missions: bool
        delivery_method: str
        endpoint_url: str | None
        authorization_fingerprint: str | None
        events_requested: list[str] | None
        events_delivered: list[str]
        description: str | None
        signing_alg: str
        mission_capabilities: list[str]
        min_verification_interval: int

        def evolve(self, s: Stream) -> None:
            s.receiver_id, s.receiver_name, s.aud = self.receiver_id, self.receiver_name, self.aud
            s.resources = list(self.resources)
            s.all_missions = self.all_missions
            _apply_configuration(s, self)
            s.min_verification_interval = self.min_verification_interval
            s.status, s.reason = ENABLED, None
            s.subject_operations = []
            s.last_verification_at = None
            s.deleted = False
            s.created_at = format_rfc3339(self.timestamp)

    class Configured(Event):
        """PATCH (``operation: update``) or PUT (``replace``): the receiver-supplied values now."""

        TOPIC = "mission_ledger.StreamConfigured.v1"
        operation: str
        delivery_method: str
        endpoint_url: str | None
        authorization_fingerprint: str | None
        events_requested: list[str] | None
        events_delivered: list[str]
        description: str | None
        signing_alg: str
        mission_capabilities: list[str]

        def evolve(self, s: Stream) -> None:
            _apply_configuration(s, self)

    class StatusChanged(Event):
        TOPIC = "mission_ledger.StreamStatusChanged.v1"
        status: str
        prior_status: str
        reason: str | None
        initiator: str

        def evolve(self, s: Stream) -> None:
            s.status, s.reason = self.status, self.reason

    class SubjectAdded(Event):
        TOPIC = "mission_ledger.StreamSubjectAdded.v1"
        subject: dict[str, Any]
        verified: bool

        def evolve(self, s: Stream) -> None:
            s._note_subject(self.subject, included=True)

    class SubjectRemoved(Event):
        TOPIC = "mission_ledger.StreamSubjectRemoved.v1"
        subject: dict[str, Any]

        def evolve(self, s: Stream) -> None:
            s._note_subject(self.subject, included=False)

    class VerificationRequested(Event):
        """The transmitter answers with a verification SET echoing ``state`` (absent: none)."""

        TOPIC = "mission_ledger.StreamVerificationRequested.v1"
        state: str | None

        def evolve(self, s: Stream) -> None:
            s.last_verification_at = format_rfc3339(self.timestamp)

    class Deleted(Event):
        TOPIC = "mission_ledger.StreamDeleted.v1"

        def evolve(self, s: Stream) -> None:
            s.deleted = True

    # -- state helpers ----------------------------------------------------------------------------

    def _note_subject(self, subject: dict[str, Any], *, included: bool) -> None:
        key = subject_key(subject)
        kept = [op for op in self.subject_operations if subject_key(op["subject"]) != key]
        kept.append({"subject": subject, "included": included})
        self.subject_operations = kept

    @property
    def stream_id(self) -> str:
        """The SSF ``stream_id``: the aggregate id as 32 lowercase hex digits."""
        return self.id.hex

    def includes(self, event_subjects: Iterable[Mapping[str, Any]]) -> bool:
        """Whether the stream's subject operations let an event with these forms through."""
        return subject_included(self.subject_operations, event_subjects)

    # -- commands ---------------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        *,
        stream_id: UUID,
        receiver_id: str,
        receiver_name: str,
        aud: str,
        resources: Sequence[str],
        all_missions: bool,
        delivery_method: str,
        endpoint_url: str | None,
        authorization_fingerprint: str | None,
        events_requested: list[str] | None,
        events_delivered: list[str],
        description: str | None,
        signing_alg: str,
        mission_capabilities: list[str],
        min_verification_interval: int,
        actor: str,
        now: datetime,
    ) -> Stream:
        """Open a stream (pending, not saved). Values were validated by the transmitter."""
        if delivery_method not in DELIVERY_METHODS:
            raise InvalidInput(
                f"delivery.method must be {PUSH} (push) or {POLL} (poll)", field="delivery.method"
            )
        if (delivery_method == PUSH) != (endpoint_url is not None):
            raise InvalidInput(
                "push delivery needs delivery.endpoint_url; poll endpoints are assigned by the "
                "transmitter",
                field="delivery.endpoint_url",
            )
        check_signing_alg(signing_alg)
        if min_verification_interval < 0:
            raise InvalidInput("min_verification_interval must not be negative")
        return cls._open(
            cls.Created,
            aggregate_id=stream_id,
            timestamp=now,
            actor=actor,
            receiver_id=receiver_id,
            receiver_name=receiver_name,
            aud=aud,
            resources=list(resources),
            all_missions=all_missions,
            delivery_method=delivery_method,
            endpoint_url=endpoint_url,
            authorization_fingerprint=authorization_fingerprint,
            events_requested=events_requested,
            events_delivered=list(events_delivered),
            description=description,
            signing_alg=signing_alg,
            mission_capabilities=list(mission_capabilities),
            min_verification_interval=min_verification_interval,
        )

    def configure(
        self,
        *,
        operation: str,
        delivery_method: str,
        endpoint_url: str | None,
        authorization_fingerprint: str | None,
        events_requested: list[str] | None,
        events_delivered: list[str],
        description: str | None,
        signing_alg: str,
        mission_capabilities: list[str],
        actor: str,
        now: datetime,
    ) -> bool:
        """Record the receiver-supplied configuration after a PATCH/PUT; False if unchanged."""
        if operation not in ("update", "replace"):
            raise ValueError(f"unknown stream configuration operation {operation!r}")
        check_signing_alg(signing_alg)
        new = (
            delivery_method,
            endpoint_url,
            authorization_fingerprint,
            events_requested,
            events_delivered,
            description,
            signing_alg,
            mission_capabilities,
        )
        if new == tuple(getattr(self, name) for name in CONFIGURATION_FIELDS):
            return False
        self._record(
            self.Configured,
            timestamp=now,
            actor=actor,
            operation=operation,
            delivery_method=delivery_method,
            endpoint_url=endpoint_url,
            authorization_fingerprint=authorization_fingerprint,
            events_requested=events_requested,
            events_delivered=list(events_delivered),
            description=description,
            signing_alg=signing_alg,
            mission_capabilities=list(mission_capabilities),
        )
        return True

    def set_status(
        self, *, status: str, reason: str | None, initiator: str, actor: str, now: datetime
    ) -> bool:
        """Change the status (and reason); False when both are already so."""
        check_status(status)
        if reason is not None:
            _text(reason, "reason")
        if initiator not in (RECEIVER_INITIATED, TRANSMITTER_INITIATED):
            raise ValueError(f"unknown initiator {initiator!r}")
        if status == self.status and reason == self.reason:
            return False
        self._record(
            self.StatusChanged,
            timestamp=now,
            actor=actor,
            status=status,
            prior_status=self.status,
            reason=reason,
            initiator=initiator,
        )
        return True

    def add_subject(
        self, *, subject: dict[str, Any], verified: bool, actor: str, now: datetime
    ) -> bool:
        """Include ``subject`` again (within the receiver's scope); False if already so."""
        return self._subject(self.SubjectAdded, subject, True, actor, now, verified=verified)

    def remove_subject(self, *, subject: dict[str, Any], actor: str, now: datetime) -> bool:
        """Exclude ``subject``; False if its latest operation already removed it."""
        return self._subject(self.SubjectRemoved, subject, False, actor, now)

    def _subject(
        self,
        event_class: type[ChainedEvent],
        subject: dict[str, Any],
        included: bool,
        actor: str,
        now: datetime,
        **fields: Any,
    ) -> bool:
        subject = check_subject(subject)
        key = subject_key(subject)
        ops = self.subject_operations
        latest = next((op for op in reversed(ops) if subject_key(op["subject"]) == key), None)
        if latest is not None and latest["included"] == included and latest is ops[-1]:
            return False  # nothing newer could have overridden it: a repeat changes nothing
        if latest is None and len(ops) >= MAX_SUBJECT_OPERATIONS:
            raise InvalidInput(
                f"this stream already holds {MAX_SUBJECT_OPERATIONS} subject decisions; remove "
                "broader subjects instead of many narrow ones, or create a new stream",
                field="subject",
            )
        self._record(event_class, timestamp=now, actor=actor, subject=subject, **fields)
        return True

    def request_verification(self, *, state: str | None, actor: str, now: datetime) -> None:
        """Record a verification request; TooManyRequests within ``min_verification_interval``."""
        if state is not None:
            _text(state, "state", limit=MAX_STATE)
        if self.last_verification_at is not None and self.min_verification_interval > 0:
            last = parse_rfc3339(self.last_verification_at, field="last_verification_at")
            waited = (now - last).total_seconds()
            if waited < self.min_verification_interval:
                wait = max(1, int(self.min_verification_interval - waited + 0.999))
                raise TooManyRequests(
                    f"verification was requested {waited:.1f} s ago; this stream's "
                    f"min_verification_interval is {self.min_verification_interval} s: retry in "
                    f"{wait} s",
                    retry_after=wait,
                )
        self._record(self.VerificationRequested, timestamp=now, actor=actor, state=state)

    def delete(self, *, actor: str, now: datetime) -> None:
        self._record(self.Deleted, timestamp=now, actor=actor)


STREAM_TOPICS: tuple[str, ...] = (
    Stream.Created.TOPIC,
    Stream.Configured.TOPIC,
    Stream.StatusChanged.TOPIC,
    Stream.SubjectAdded.TOPIC,
    Stream.SubjectRemoved.TOPIC,
    Stream.VerificationRequested.TOPIC,
    Stream.Deleted.TOPIC,
)
