"""The SSF transmitter's management side: metadata, streams, status, subjects, verification.

:class:`StreamService` turns SSF 1.0 management requests (already authenticated as a receiver
principal, already parsed as JSON) into commands on the event-sourced :class:`Stream` aggregate
and renders the Stream Configuration objects the receiver sees. Everything here is synchronous
and may read the store: the HTTP layer calls it from its executor.

Rules (SSF 1.0 §7–8; the choices the spec leaves open are marked *ours*):

- **Ownership.** A receiver sees and changes only its own streams; an unknown ``stream_id`` and
  another receiver's give the same 404. Several streams per receiver are allowed.
- **Create** (201): receiver-supplied members are ``delivery``, ``events_requested``,
  ``description`` and two extensions: ``mission_capabilities_supported`` (the Mission drafts'
  capability list, e.g. ``["authority_changed"]``) and ``set_signing_alg`` (``RS256`` default,
  ``ES256``). No ``delivery`` ⇒ poll with a transmitter-assigned per-stream URL. *Ours:* other
  members (including transmitter-supplied ones) are ignored on create, as SSF tells transmitters
  to ignore what they do not understand.
- ``aud`` is the receiver's registered audience, fixed at creation. ``events_delivered`` =
  ``events_requested`` ∩ ``events_supported`` (requested order; unknown URIs ignored; *ours:*
  nothing requested ⇒ nothing delivered, exactly as SSF's intersection says), recomputed on every
  update. ``events_supported`` lists the profile, the drafts' ``lifecycle-change`` and the two
  CAEP types; the proposal types only for receivers registered with ``all_missions``.
- **PATCH** (200): ``stream_id`` required; receiver-supplied members present replace their
  values, absent ones stay; transmitter-supplied members may be present but must equal the
  current values (``events_delivered``: the value before the update), else 400 naming the field.
  A poll ``delivery`` of just ``{"method": POLL}`` keeps the assigned URL.
- **PUT** (200): as PATCH, but absent receiver-supplied members are removed; *ours:* a PUT
  without ``delivery`` resets delivery to poll (the create default).
- **DELETE** (204): the stream is gone; the outbox drops its queued SETs.
- **Status**: ``enabled``, ``paused`` (SETs held in order, delivered on re-enable), ``disabled``
  (dropped). A receiver's change sends nothing; a transmitter-initiated change (an operator)
  queues a stream-updated SET.
- **Subjects**: add (200, empty) and remove (204), RFC 9493 simple, SSF §3.5 and complex
  subjects. *Ours:* adding a subject the receiver cannot see is accepted silently (no probing,
  SSF §9.1) and never widens its scope (SSF §9.2): the outbox checks scope per event.
- **Verification** (204): the outbox answers with a verification SET echoing ``state``; a second
  request within ``min_verification_interval`` → 429 with ``Retry-After``.
- The ``authorization_header`` of a push stream is a secret: the ledger records only its
  SHA-256 fingerprint, the value goes to ``secret_sink`` (the outbox store), and it is never
  returned in a Stream Configuration.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID, uuid4

from eventsourcing.persistence import IntegrityError

from ..domain.anchors import sha256_b64url
from ..domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from ..domain.principal import RECEIVER
from ..domain.stream import (
    DEFAULT_SIGNING_ALG,
    POLL,
    PUSH,
    RECEIVER_INITIATED,
    TRANSMITTER_INITIATED,
    Stream,
    check_capabilities,
    check_signing_alg,
    check_status,
    check_subject,
    check_uri_list,
)
from ..ledger import MissionLedger, _store_errors
from ..principals import Principal
from .mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    MISSION_EVENT_TYPES,
    PROPOSAL_EVENT_TYPES,
)
from .ssrf import PushTargetPolicy, check_endpoint_blocking, check_url

SPEC_VERSION = "1_0"
SSF = "https://schemas.openid.net/secevent/ssf/event-type/"
VERIFICATION = SSF + "verification"
STREAM_UPDATED = SSF + "stream-updated"
WELL_KNOWN = "/.well-known/ssf-configuration"

#: Paths of the management API and the poll endpoints, relative to the issuer.
CONFIGURATION_PATH = "/ssf/stream"
STATUS_PATH = "/ssf/status"
ADD_SUBJECT_PATH = "/ssf/subjects:add"
REMOVE_SUBJECT_PATH = "/ssf/subjects:remove"
VERIFICATION_PATH = "/ssf/verify"
POLL_PATH = "/ssf/poll/"
JWKS_PATH = "/jwks.json"

MISSION_TYPES: tuple[str, ...] = tuple(MISSION_EVENT_TYPES.values())
PROPOSAL_TYPES: tuple[str, ...] = tuple(PROPOSAL_EVENT_TYPES.values())
COMPATIBILITY_TYPES: tuple[str, ...] = (
    LIFECYCLE_CHANGE,
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
)
DEFAULT_MIN_VERIFICATION_INTERVAL = 30  # seconds
MAX_AUTHORIZATION_HEADER = 4096
MAX_ENDPOINT_URL = 2048
TRANSMITTER_MEMBERS: tuple[str, ...] = (
    "iss",
    "aud",
    "events_supported",
    "events_delivered",
    "min_verification_interval",
    "inactivity_timeout",
)

SecretSink = Callable[[str, str | None], None]
#: Vets a push ``endpoint_url`` and returns it (raises InvalidInput / ForbiddenPushTarget).
EndpointCheck = Callable[[str], str]


def default_endpoint_check(url: str) -> str:
    """The strictest policy (https, public addresses), without resolving: ``serve`` passes a
    resolving check built from its ``--allow-insecure-push`` / ``--allow-private-push-targets``."""
    return check_url(url, PushTargetPolicy())


def resolving_endpoint_check(policy: PushTargetPolicy) -> EndpointCheck:
    """The check ``serve`` uses: :func:`~.ssrf.check_endpoint_blocking` under the operator's
    ``policy`` (the URL, then every address its host resolves to); returns the URL. It runs its
    own event loop, so call it from an executor thread (the HTTP handlers do)."""

    def check(url: str) -> str:
        check_endpoint_blocking(url, policy)
        return url

    return check


def issuer_base(issuer: str) -> str:
    """The issuer without a trailing ``/``: every endpoint URL starts with it."""
    return issuer.rstrip("/")


def well_known_paths(issuer: str) -> tuple[str, ...]:
    """Where the metadata is served (paths on this server).

    SSF §7.2 inserts ``/.well-known/ssf-configuration`` between host and path:
    ``https://a.example/tenant`` → ``/.well-known/ssf-configuration/tenant``. With an issuer
    path we also answer the appended form's path as this server sees it behind a proxy that
    strips the issuer path (``/.well-known/ssf-configuration``), which some receivers try.
    """
    path = urlsplit(issuer).path.rstrip("/")
    return (WELL_KNOWN + path, WELL_KNOWN) if path else (WELL_KNOWN,)


def ssf_configuration(issuer: str) -> dict[str, Any]:
    """The Transmitter Configuration Metadata (SSF §7.1); no empty arrays."""
    base = issuer_base(issuer)
    return {
        "spec_version": SPEC_VERSION,
        "issuer": issuer,
        "jwks_uri": base + JWKS_PATH,
        "delivery_methods_supported": [PUSH, POLL],
        "configuration_endpoint": base + CONFIGURATION_PATH,
        "status_endpoint": base + STATUS_PATH,
        "add_subject_endpoint": base + ADD_SUBJECT_PATH,
        "remove_subject_endpoint": base + REMOVE_SUBJECT_PATH,
        "verification_endpoint": base + VERIFICATION_PATH,
        "authorization_schemes": [{"spec_urn": "urn:ietf:rfc:6749"}],
        "default_subjects": "ALL",
    }


def events_supported(principal_all_missions: bool) -> list[str]:
    """The event types this transmitter supports for a receiver (proposal types only for
    receivers that may see every Mission: the others never see proposals)."""
    types = [*MISSION_TYPES, *COMPATIBILITY_TYPES]
    if principal_all_missions:
        types[len(MISSION_TYPES) : len(MISSION_TYPES)] = PROPOSAL_TYPES
    return types


def authorization_fingerprint(header: str | None) -> str | None:
    """What the ledger keeps of a push ``authorization_header``: its SHA-256, never the value."""
    if header is None:
        return None
    return "sha-256:" + sha256_b64url(header.encode("utf-8"))


def _parse_stream_id(value: object) -> UUID:
    """A ``stream_id`` (32 lowercase hex digits) → its UUID; anything else is a 404."""
    if isinstance(value, str) and len(value) == 32:
        try:
            parsed = UUID(hex=value)
        except ValueError:
            pass
        else:
            if parsed.hex == value:
                return parsed
    raise NotFound("no such stream")


def _body(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("the request body must be a JSON object")
    return value


def _required_stream_id(body: Mapping[str, Any]) -> str:
    value = body.get("stream_id")
    if not isinstance(value, str) or not value:
        raise InvalidInput("stream_id is required (a string)", field="stream_id")
    return value


def _description(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.isprintable():
        raise InvalidInput("description must be a printable string", field="description")
    return value[:1024]  # SSF lets the transmitter truncate it


class _Delivery:
    """A validated receiver-supplied ``delivery`` (the poll URL is assigned elsewhere)."""

    def __init__(self, method: str, endpoint_url: str | None, authorization: str | None) -> None:
        self.method = method
        self.endpoint_url = endpoint_url
        self.authorization = authorization


def _delivery(
    value: object, *, assigned_poll_url: str | None, endpoint_check: EndpointCheck
) -> _Delivery:
    """Parse ``delivery``; ``assigned_poll_url``: the stream's current poll URL (updates);
    ``endpoint_check`` vets a push ``endpoint_url`` (the SSRF guard)."""
    if value is None:
        return _Delivery(POLL, None, None)
    if not isinstance(value, dict):
        raise InvalidInput("delivery must be a JSON object with a method", field="delivery")
    method = value.get("method")
    if method == POLL:
        url = value.get("endpoint_url")
        if url is not None and url != assigned_poll_url:
            raise InvalidInput(
                "a poll stream's delivery.endpoint_url is assigned by the transmitter; omit it "
                "(or send the assigned value)",
                field="delivery.endpoint_url",
            )
        if value.get("authorization_header") is not None:
            raise InvalidInput(
                "delivery.authorization_header is only for push delivery",
                field="delivery.authorization_header",
            )
        return _Delivery(POLL, None, None)
    if method == PUSH:
        given = value.get("endpoint_url")
        if not isinstance(given, str) or not given:
            raise InvalidInput(
                "push delivery needs delivery.endpoint_url, the receiver's absolute https URL",
                field="delivery.endpoint_url",
            )
        url = endpoint_check(given)
        header = value.get("authorization_header")
        if header is not None and (
            not isinstance(header, str)
            or not header
            or len(header) > MAX_AUTHORIZATION_HEADER
            or not header.isprintable()
        ):
            raise InvalidInput(
                "delivery.authorization_header must be the printable value of the Authorization "
                f"header to send (at most {MAX_AUTHORIZATION_HEADER} characters)",
                field="delivery.authorization_header",
            )
        return _Delivery(PUSH, url, header)
    raise InvalidInput(
        f"delivery.method must be {PUSH} (push) or {POLL} (poll); got {method!r}",
        field="delivery.method",
    )


class StreamService:
    """SSF stream management for receivers, and the operator's view of every stream."""

    def __init__(
        self,
        ledger: MissionLedger,
        *,
        secret_sink: SecretSink | None = None,
        min_verification_interval: int = DEFAULT_MIN_VERIFICATION_INTERVAL,
        endpoint_check: EndpointCheck = default_endpoint_check,
    ) -> None:
        if min_verification_interval < 0:
            raise InvalidInput("min_verification_interval must not be negative")
        self.ledger = ledger
        self.issuer = ledger.issuer
        self.base = issuer_base(ledger.issuer)
        self.min_verification_interval = min_verification_interval
        self._secret_sink = secret_sink
        self._endpoint_check = endpoint_check
        self._lock = threading.Lock()
        self._owners: dict[str, str] = {}  # stream_id → receiver principal id (live streams)
        self._position = 0

    # -- the index of streams (follows the log: Created and Deleted topics only) --------------

    def _refresh(self) -> None:
        topics = (Stream.Created.TOPIC, Stream.Deleted.TOPIC)
        recorder = self.ledger.recorder
        with self._lock, _store_errors():
            while True:
                page = recorder.select_notifications(self._position + 1, 500, topics=topics)
                for notification in page:
                    event = self.ledger.mapper.to_domain_event(notification)
                    key = event.originator_id.hex
                    if isinstance(event, Stream.Created):
                        self._owners[key] = event.receiver_id
                    else:
                        self._owners.pop(key, None)
                    self._position = notification.id
                if len(page) < 500:
                    return

    def _stream_ids(self, receiver_id: str | None) -> list[str]:
        self._refresh()
        return [s for s, owner in self._owners.items() if receiver_id in (None, owner)]

    # -- loading and rendering ---------------------------------------------------------------

    def poll_url(self, stream_id: str) -> str:
        return self.base + POLL_PATH + stream_id

    def _load(self, stream_id: object) -> Stream:
        sid = _parse_stream_id(stream_id)
        try:
            stream = self.ledger._get(Stream, sid, "stream")
        except NotFound:
            raise NotFound("no such stream") from None
        if stream.deleted:
            raise NotFound("no such stream")
        return stream

    def _own(self, principal: Principal, stream_id: object) -> Stream:
        """The caller's stream; unknown and foreign ids give the same 404."""
        stream = self._load(stream_id)
        if stream.receiver_id != principal.principal_id:
            raise NotFound("no such stream")
        return stream

    def render(self, stream: Stream) -> dict[str, Any]:
        """The Stream Configuration object (SSF §8.1.1) the receiver sees."""
        delivery: dict[str, Any] = {"method": stream.delivery_method}
        delivery["endpoint_url"] = (
            stream.endpoint_url
            if stream.delivery_method == PUSH
            else self.poll_url(stream.stream_id)
        )
        config: dict[str, Any] = {
            "stream_id": stream.stream_id,
            "iss": self.issuer,
            "aud": stream.aud,
            "delivery": delivery,
            "events_supported": events_supported(stream.all_missions),
        }
        if stream.events_requested is not None:
            config["events_requested"] = list(stream.events_requested)
        config["events_delivered"] = list(stream.events_delivered)
        if stream.description is not None:
            config["description"] = stream.description
        config["min_verification_interval"] = stream.min_verification_interval
        if stream.mission_capabilities:
            config["mission_capabilities_supported"] = list(stream.mission_capabilities)
        config["set_signing_alg"] = stream.signing_alg
        return config

    @staticmethod
    def status_of(stream: Stream) -> dict[str, Any]:
        document: dict[str, Any] = {"stream_id": stream.stream_id, "status": stream.status}
        if stream.reason is not None:
            document["reason"] = stream.reason
        return document

    # -- commands ------------------------------------------------------------------------------

    def _commit(self, stream: Stream) -> None:
        with _store_errors():
            self.ledger._commit([stream])

    def _change(
        self,
        principal: Principal | None,
        stream_id: object,
        act: Callable[[Stream], Any],
    ) -> Stream:
        """Load, act, commit; a concurrent writer's commit makes us reload and act again."""
        for _attempt in range(5):
            stream = self._own(principal, stream_id) if principal else self._load(stream_id)
            act(stream)
            try:
                self._commit(stream)
            except IntegrityError:
                continue
            return stream
        raise Conflict("this stream is being changed concurrently; try again")

    @staticmethod
    def _receiver(principal: Principal) -> None:
        if principal.role != RECEIVER or principal.audience is None:
            raise Forbidden(
                "stream management is for receivers (tokens created with --role receiver)",
                required_roles=[RECEIVER],
                role=principal.role,
            )

    def _delivered(self, requested: list[str] | None, all_missions: bool) -> list[str]:
        supported = events_supported(all_missions)
        return [uri for uri in requested or [] if uri in supported]

    def _sink(self, stream_id: str, delivery: _Delivery) -> None:
        if self._secret_sink is not None:
            self._secret_sink(stream_id, delivery.authorization)

    def create(self, principal: Principal, body: object) -> dict[str, Any]:
        """Create a stream for the calling receiver; returns its configuration (201)."""
        self._receiver(principal)
        request = _body(body)
        delivery = _delivery(
            request.get("delivery"), assigned_poll_url=None, endpoint_check=self._endpoint_check
        )
        requested = (
            None
            if request.get("events_requested") is None
            else check_uri_list(request["events_requested"], "events_requested")
        )
        capabilities = check_capabilities(request.get("mission_capabilities_supported", []))
        alg = check_signing_alg(request.get("set_signing_alg", DEFAULT_SIGNING_ALG))
        stream_uuid = uuid4()
        assert principal.audience is not None
        stream = Stream.create(
            stream_id=stream_uuid,
            receiver_id=principal.principal_id,
            receiver_name=principal.name,
            aud=principal.audience,
            resources=list(principal.resources),
            all_missions=principal.all_missions,
            delivery_method=delivery.method,
            endpoint_url=delivery.endpoint_url,
            authorization_fingerprint=authorization_fingerprint(delivery.authorization),
            events_requested=requested,
            events_delivered=self._delivered(requested, principal.all_missions),
            description=_description(request.get("description")),
            signing_alg=alg,
            mission_capabilities=capabilities,
            min_verification_interval=self.min_verification_interval,
            actor=principal.actor,
            now=self.ledger.clock.now(),
        )
        if delivery.authorization is not None:  # poll streams have no secret to keep
            self._sink(stream_uuid.hex, delivery)
        self._commit(stream)
        with self._lock:
            self._owners[stream.stream_id] = principal.principal_id
        return self.render(stream)

    def read(self, principal: Principal, stream_id: str | None) -> dict[str, Any] | list[Any]:
        """One stream's configuration, or (no ``stream_id``) a list of all the caller's."""
        self._receiver(principal)
        if stream_id is not None:
            return self.render(self._own(principal, stream_id))
        configs = []
        for sid in self._stream_ids(principal.principal_id):
            try:
                configs.append(self.render(self._own(principal, sid)))
            except NotFound:
                continue  # deleted meanwhile
        return configs

    def update(self, principal: Principal, body: object, *, replace: bool) -> dict[str, Any]:
        """PATCH (``replace=False``) or PUT (``replace=True``) a stream's configuration."""
        self._receiver(principal)
        request = _body(body)
        stream_id = _required_stream_id(request)
        pending: dict[str, _Delivery] = {}

        def act(stream: Stream) -> None:
            current = self.render(stream)
            for member in TRANSMITTER_MEMBERS:
                if member in request and request[member] != current.get(member):
                    raise InvalidInput(
                        f"{member} is set by the transmitter and cannot be changed (it is "
                        f"{current.get(member)!r}); omit it or send the current value",
                        field=member,
                    )
            poll_url = self.poll_url(stream.stream_id)
            if "delivery" in request or replace:
                delivery = _delivery(
                    request.get("delivery"),
                    assigned_poll_url=poll_url,
                    endpoint_check=self._endpoint_check,
                )
                fingerprint = authorization_fingerprint(delivery.authorization)
            else:
                delivery = _Delivery(stream.delivery_method, stream.endpoint_url, None)
                fingerprint = stream.authorization_fingerprint
            requested = stream.events_requested
            if "events_requested" in request or replace:
                given = request.get("events_requested")
                requested = None if given is None else check_uri_list(given, "events_requested")
            description = stream.description
            if "description" in request or replace:
                description = _description(request.get("description"))
            capabilities = stream.mission_capabilities
            if "mission_capabilities_supported" in request or replace:
                capabilities = check_capabilities(request.get("mission_capabilities_supported", []))
            alg = stream.signing_alg
            if "set_signing_alg" in request or replace:
                alg = check_signing_alg(request.get("set_signing_alg", DEFAULT_SIGNING_ALG))
            if "delivery" in request or replace:
                pending["delivery"] = delivery
            stream.configure(
                operation="replace" if replace else "update",
                delivery_method=delivery.method,
                endpoint_url=delivery.endpoint_url,
                authorization_fingerprint=fingerprint,
                events_requested=requested,
                events_delivered=self._delivered(requested, stream.all_missions),
                description=description,
                signing_alg=alg,
                mission_capabilities=capabilities,
                actor=principal.actor,
                now=self.ledger.clock.now(),
            )
            if "delivery" in pending:
                self._sink(stream.stream_id, pending["delivery"])

        return self.render(self._change(principal, stream_id, act))

    def delete(self, principal: Principal, stream_id: str | None) -> None:
        """Delete the caller's stream (204); its queued SETs are dropped by the outbox."""
        self._receiver(principal)
        if stream_id is None:
            raise InvalidInput("stream_id is required (a query parameter)", field="stream_id")
        now = self.ledger.clock.now()
        self._change(principal, stream_id, lambda s: s.delete(actor=principal.actor, now=now))
        with self._lock:
            self._owners.pop(stream_id, None)
        if self._secret_sink is not None:
            self._secret_sink(stream_id, None)

    def status(self, principal: Principal, stream_id: str | None) -> dict[str, Any]:
        self._receiver(principal)
        if stream_id is None:
            raise InvalidInput("stream_id is required (a query parameter)", field="stream_id")
        return self.status_of(self._own(principal, stream_id))

    def set_status(self, principal: Principal, body: object) -> dict[str, Any]:
        """A receiver's status update (no stream-updated SET: the receiver asked for it)."""
        self._receiver(principal)
        request = _body(body)
        stream_id = _required_stream_id(request)
        status = check_status(request.get("status"))
        reason = request.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise InvalidInput("reason must be a string", field="reason")
        now = self.ledger.clock.now()
        stream = self._change(
            principal,
            stream_id,
            lambda s: s.set_status(
                status=status,
                reason=reason,
                initiator=RECEIVER_INITIATED,
                actor=principal.actor,
                now=now,
            ),
        )
        return self.status_of(stream)

    def add_subject(self, principal: Principal, body: object) -> None:
        self._subject(principal, body, add=True)

    def remove_subject(self, principal: Principal, body: object) -> None:
        self._subject(principal, body, add=False)

    def _subject(self, principal: Principal, body: object, *, add: bool) -> None:
        self._receiver(principal)
        request = _body(body)
        stream_id = _required_stream_id(request)
        if "subject" not in request:
            raise InvalidInput("subject is required (a subject identifier)", field="subject")
        subject = check_subject(request["subject"])
        verified = request.get("verified", True)
        if not isinstance(verified, bool):
            raise InvalidInput("verified must be true or false", field="verified")
        now = self.ledger.clock.now()

        def act(stream: Stream) -> None:
            if add:
                stream.add_subject(
                    subject=subject, verified=verified, actor=principal.actor, now=now
                )
            else:
                stream.remove_subject(subject=subject, actor=principal.actor, now=now)

        self._change(principal, stream_id, act)

    def verify(self, principal: Principal, body: object) -> None:
        """Record a verification request (204); 429 within ``min_verification_interval``."""
        self._receiver(principal)
        request = _body(body)
        stream_id = _required_stream_id(request)
        state = request.get("state")
        if state is not None and not isinstance(state, str):
            raise InvalidInput("state must be a string", field="state")
        now = self.ledger.clock.now()
        self._change(
            principal,
            stream_id,
            lambda s: s.request_verification(state=state, actor=principal.actor, now=now),
        )

    def stream_for_poll(self, principal: Principal, stream_id: str) -> Stream:
        """The caller's poll stream (404 for unknown, foreign and push streams)."""
        self._receiver(principal)
        stream = self._own(principal, stream_id)
        if stream.delivery_method != POLL:
            raise NotFound("no such stream")
        return stream

    # -- the operator's side --------------------------------------------------------------------

    def all_streams(self) -> list[Stream]:
        """Every live stream, oldest first."""
        streams = []
        for sid in self._stream_ids(None):
            try:
                streams.append(self._load(sid))
            except NotFound:
                continue
        return sorted(streams, key=lambda s: (s.created_at, s.stream_id))

    def stream(self, stream_id: str) -> Stream:
        """Any live stream by id (operators)."""
        return self._load(stream_id)

    def set_status_as_transmitter(
        self, stream_id: str, *, status: str, reason: str | None, actor: str
    ) -> tuple[Stream, bool]:
        """An operator's status change: the outbox queues a stream-updated SET for it."""
        check_status(status)
        changed: list[bool] = []
        now = self.ledger.clock.now()

        def act(stream: Stream) -> None:
            changed.append(
                stream.set_status(
                    status=status,
                    reason=reason,
                    initiator=TRANSMITTER_INITIATED,
                    actor=actor,
                    now=now,
                )
            )

        stream = self._change(None, stream_id, act)
        return stream, changed[-1]


def fingerprint_matches(header: str | None, fingerprint: str | None) -> bool:
    """Whether a stored push secret is the one the ledger recorded (an integrity check)."""
    if header is None or fingerprint is None:
        return header is None and fingerprint is None
    return authorization_fingerprint(header) == fingerprint


__all__ = [
    "ADD_SUBJECT_PATH",
    "CONFIGURATION_PATH",
    "JWKS_PATH",
    "POLL_PATH",
    "REMOVE_SUBJECT_PATH",
    "SPEC_VERSION",
    "STATUS_PATH",
    "STREAM_UPDATED",
    "VERIFICATION",
    "VERIFICATION_PATH",
    "WELL_KNOWN",
    "StreamService",
    "authorization_fingerprint",
    "events_supported",
    "fingerprint_matches",
    "resolving_endpoint_check",
    "ssf_configuration",
    "well_known_paths",
]
