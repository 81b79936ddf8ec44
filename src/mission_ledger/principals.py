"""Principals, their bearer tokens, and who may see and do what.

**Tokens.** ``mlt_<principal id as 32 hex digits>_<43 characters of secrets.token_urlsafe(32)>``.
Only the hex SHA-256 of the secret part is stored (on the ``PrincipalRegistered`` event);
:meth:`PrincipalRegistry.create` returns the token once. :meth:`PrincipalRegistry.authenticate`
parses the id, finds the principal in an in-memory cache and compares hashes with
:func:`hmac.compare_digest`. The cache follows the notification log (Principal topics only): it
reads new events at most every :data:`REFRESH_INTERVAL` seconds, and on a cache miss, so a
revocation written by another process takes effect within about a second.

**Access matrix** (the HTTP layer answers 404 — exactly as for a missing object — when a
``may_view_*`` function is False, and 403 when the caller may view but not act):

=========================  ========  ========  ====================  =======  ======================
what                       operator  approver  harness               auditor  receiver
=========================  ========  ========  ====================  =======  ======================
view a Mission             all       all       its agent's           all      its resources' (or all
                                                                              with ``all_missions``)
view a proposal            all       all       its agent's           all      never
suspend, resume, revoke,   yes       no        no                    no       no
stage
delegate, narrow,          yes       no        own Missions only     no       no
complete, successor
submit a proposal          yes       no        for its agent only    no       no
approve, deny a proposal   yes       yes       no                    no       no
withdraw a proposal        yes       no        its agent's only      no       no
principals (tokens)        yes       no        no                    no       no
=========================  ========  ========  ====================  =======  ======================

Approvers approve and deny proposals only: they take no lifecycle action on a Mission (an
approval that supersedes a predecessor is a proposal decision, not a Mission operation). A
harness acts for exactly one agent id and only on Missions and proposals whose ``agent`` is that
id. ``successor`` is proposing a successor (a widening) of an existing Mission. Operation names
this module does not know raise :class:`ValueError`: that is a programming error, never a
silent yes or no.

Commands record :attr:`Principal.actor` (``"<role>:<name>"``) as the event's actor.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid4, uuid5

from eventsourcing.persistence import IntegrityError

from .domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from .domain.principal import (
    APPROVER,
    AUDITOR,
    HARNESS,
    OPERATOR,
    RECEIVER,
    ROLES,
    prefix_body,
)
from .domain.principal import Principal as PrincipalAggregate
from .ledger import MissionLedger, _store_errors

__all__ = [
    "MISSION_OPERATIONS",
    "PRINCIPAL_TOPICS",
    "PROPOSAL_OPERATIONS",
    "ROLES",
    "Principal",
    "PrincipalRegistry",
    "may_act_on_mission",
    "may_act_on_proposal",
    "may_view_mission",
    "may_view_proposal",
    "require_role",
    "scope_sees_authority",
]

PRINCIPAL_TOPICS: tuple[str, ...] = (
    PrincipalAggregate.Registered.TOPIC,
    PrincipalAggregate.Revoked.TOPIC,
)
TOKEN_PREFIX = "mlt_"  # noqa: S105 (a format marker, not a secret)
_TOKEN = re.compile(r"mlt_([0-9a-f]{32})_([A-Za-z0-9_-]{43})")
_TOKEN_LENGTH = len(TOKEN_PREFIX) + 32 + 1 + 43
REFRESH_INTERVAL = 0.5  # seconds between reads of the log on the authentication hot path
MISS_REFRESH_INTERVAL = 0.05  # a flood of unknown ids reads the log at most this often
BOOTSTRAP_NAME = "bootstrap-operator"
BOOTSTRAP_ACTOR = "system:bootstrap"
_BOOTSTRAP_ID = uuid5(NAMESPACE_URL, "urn:mission-ledger:principal:bootstrap-operator")
_DUMMY_HASH = hashlib.sha256(b"mission-ledger: no such principal").hexdigest()

VIEW_ALL_ROLES = frozenset({OPERATOR, APPROVER, AUDITOR})
MISSION_OPERATIONS: tuple[str, ...] = (
    "suspend",
    "resume",
    "revoke",
    "complete",
    "narrow",
    "stage",
    "delegate",
    "successor",
)
HARNESS_MISSION_OPERATIONS = frozenset({"delegate", "narrow", "complete", "successor"})
PROPOSAL_OPERATIONS: tuple[str, ...] = ("submit", "approve", "deny", "withdraw")


def _hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _under(value: str, prefix: str) -> bool:
    """``value`` lies under the registered ``prefix``.

    A prefix registered with a trailing ``*`` matches any continuation; otherwise the match must
    end at a boundary (end of value, ``/``, ``?`` or ``#``, or a prefix that itself ends in
    ``/``), so ``https://erp.example.com`` does not reach ``https://erp.example.com.evil.org``.
    """
    body = prefix_body(prefix)
    if not value.startswith(body):
        return False
    if prefix.endswith("*") or body.endswith("/") or len(value) == len(body):
        return True
    return value[len(body)] in "/?#"


def _prefix_sees(prefix: str, resource: str) -> bool:
    """Whether a receiver registered for ``prefix`` may see an entry on ``resource``.

    Yes when the entry's resource (or pattern) lies under the prefix, and also when the entry is
    a pattern broader than the prefix: such a Mission can touch the receiver's resources.
    """
    if resource.endswith("*"):
        entry = resource[:-1]
        return _under(entry, prefix) or prefix_body(prefix).startswith(entry)
    return _under(resource, prefix)


def scope_sees_authority(
    resources: Sequence[str], all_missions: bool, authority_set: Sequence[Any]
) -> bool:
    """Whether a receiver scope (resource prefixes, or ``all_missions``) sees a Mission with this
    Authority Set: always with ``all_missions``; otherwise when some entry's resource lies under
    one of the prefixes, or is a pattern broader than one of them.

    The one rule for every receiver-facing decision: what a receiver may view, and which SSF
    streams hear about a Mission (the outbox applies it with the scope a stream was created
    with)."""
    if all_missions:
        return True
    for entry in authority_set:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(resource, str) and any(
            _prefix_sees(prefix, resource) for prefix in resources
        ):
            return True
    return False


@dataclass(frozen=True)
class Principal:
    """A principal as the Authority's access checks see it (the read model; no secrets)."""

    principal_id: str
    name: str
    role: str
    agent: str | None
    audience: str | None
    resources: tuple[str, ...]
    all_missions: bool
    revoked: bool
    created_at: str

    @property
    def actor(self) -> str:
        """What commands record as the event's actor."""
        return f"{self.role}:{self.name}"

    def may_see_authority(self, authority_set: list[dict[str, Any]]) -> bool:
        """Whether this principal may see a Mission with this Authority Set.

        Receivers: with ``all_missions`` always; otherwise when some entry's resource lies under
        one of its prefixes, or is a pattern broader than one of them. Other roles: always (their
        own rules are in :func:`may_view_mission`).
        """
        if self.role != RECEIVER:
            return True
        return scope_sees_authority(self.resources, self.all_missions, authority_set)

    def to_dict(self) -> dict[str, Any]:
        """The principal as JSON (no token, no token hash)."""
        return {
            "principal_id": self.principal_id,
            "name": self.name,
            "role": self.role,
            "actor": self.actor,
            "agent": self.agent,
            "audience": self.audience,
            "resources": list(self.resources),
            "all_missions": self.all_missions,
            "revoked": self.revoked,
            "created_at": self.created_at,
        }


def _read_model(aggregate: PrincipalAggregate) -> Principal:
    return Principal(
        principal_id=str(aggregate.id),
        name=aggregate.name,
        role=aggregate.role,
        agent=aggregate.agent,
        audience=aggregate.audience,
        resources=tuple(aggregate.resources),
        all_missions=aggregate.all_missions,
        revoked=aggregate.revoked,
        created_at=aggregate.created_at,
    )


class NeedsStore:
    """The type of :data:`NEEDS_STORE`."""


NEEDS_STORE = NeedsStore()


def _parse_token(token: object) -> tuple[str, str] | None:
    """``(principal id, SHA-256 of the secret)`` of a well-formed token, else None."""
    if not isinstance(token, str) or len(token) != _TOKEN_LENGTH:
        return None
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    return str(UUID(hex=match.group(1))), _hash_secret(match.group(2))


def _verify(entry: tuple[str, Principal] | None, presented: str) -> Principal | None:
    """Constant-time check of a presented secret hash against a cache entry (or a dummy)."""
    expected, principal = entry if entry is not None else (_DUMMY_HASH, None)
    matches = hmac.compare_digest(presented, expected)
    if principal is None or not matches or principal.revoked:
        return None
    return principal


class PrincipalRegistry:
    """Create, list, revoke and authenticate principals stored in the ledger.

    Safe to share between threads. Each instance keeps its own cache of the principals; several
    instances (or processes) on one store see each other's writes through the notification log.
    """

    def __init__(self, ledger: MissionLedger) -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[str, Principal]] = {}  # id → (token hash, read model)
        self._position = 0  # the last notification id folded into the cache
        self._refreshed_at = float("-inf")  # time.monotonic() of the last completed read

    # -- the cache --------------------------------------------------------------------------------

    def _refresh(self, max_age: float) -> None:
        """Read new Principal events unless the cache was refreshed less than ``max_age`` ago."""
        started = time.monotonic()
        if started - self._refreshed_at < max_age:
            return
        with self._lock:
            if self._refreshed_at >= started or time.monotonic() - self._refreshed_at < max_age:
                return  # another thread read the log while this one waited
            read_at = time.monotonic()
            with _store_errors():
                self._read_log()
            self._refreshed_at = read_at

    def _read_log(self) -> None:
        recorder = self.ledger.recorder
        while True:
            page = recorder.select_notifications(self._position + 1, 500, topics=PRINCIPAL_TOPICS)
            for notification in page:
                self._fold(self.ledger.mapper.to_domain_event(notification))
                self._position = notification.id
            if len(page) < 500:
                return

    def _fold(self, event: Any) -> None:
        key = str(event.originator_id)
        if isinstance(event, PrincipalAggregate.Registered):
            known = self._entries.get(key)
            if known is not None and known[1].revoked:
                return  # revoked by this instance before the log caught up: keep it revoked
            self._entries[key] = (
                event.token_hash,
                Principal(
                    principal_id=key,
                    name=event.name,
                    role=event.role,
                    agent=event.agent,
                    audience=event.audience,
                    resources=tuple(event.resources),
                    all_missions=event.all_missions,
                    revoked=False,
                    created_at=event.created_at,
                ),
            )
        elif isinstance(event, PrincipalAggregate.Revoked) and key in self._entries:
            token_hash, principal = self._entries[key]
            self._entries[key] = (token_hash, replace(principal, revoked=True))

    def _remember(self, token_hash: str, principal: Principal) -> None:
        with self._lock:
            current = self._entries.get(principal.principal_id)
            if current is not None and current[1].revoked and not principal.revoked:
                return  # never resurrect a revocation already read from the log
            self._entries[principal.principal_id] = (token_hash, principal)

    def _current(self) -> list[Principal]:
        self._refresh(0.0)
        return [principal for _, principal in list(self._entries.values())]

    # -- commands ---------------------------------------------------------------------------------

    def create(
        self,
        *,
        role: str,
        name: str,
        actor: str,
        agent: str | None = None,
        audience: str | None = None,
        resources: Sequence[str] = (),
        all_missions: bool = False,
    ) -> tuple[Principal, str]:
        """Register a principal; returns it and its bearer token (shown this once only)."""
        return self._create(
            principal_id=uuid4(),
            role=role,
            name=name,
            actor=actor,
            agent=agent,
            audience=audience,
            resources=resources,
            all_missions=all_missions,
        )

    def _create(
        self,
        *,
        principal_id: UUID,
        role: str,
        name: str,
        actor: str,
        agent: str | None,
        audience: str | None,
        resources: Sequence[str],
        all_missions: bool,
    ) -> tuple[Principal, str]:
        if isinstance(resources, str):
            raise InvalidInput("resources must be a list of resource prefixes", field="resources")
        secret = secrets.token_urlsafe(32)
        token_hash = _hash_secret(secret)
        aggregate = PrincipalAggregate.register(
            principal_id=principal_id,
            role=role,
            name=name,
            token_hash=token_hash,
            actor=actor,
            now=self.ledger.clock.now(),
            agent=agent,
            audience=audience,
            resources=list(resources),
            all_missions=all_missions,
        )
        for existing in self._current():
            if existing.name == aggregate.name and not existing.revoked:
                raise Conflict(
                    f"a principal named {aggregate.name!r} already exists "
                    f"({existing.principal_id}, role {existing.role}); choose another name or "
                    "revoke that principal first",
                    principal_id=existing.principal_id,
                )
        with _store_errors():
            try:
                self.ledger._commit([aggregate])
            except IntegrityError:
                raise Conflict(
                    f"principal {principal_id} already exists; nothing was created",
                    principal_id=str(principal_id),
                ) from None
        principal = _read_model(aggregate)
        self._remember(token_hash, principal)
        return principal, f"{TOKEN_PREFIX}{principal_id.hex}_{secret}"

    def revoke(self, principal_id: str, *, actor: str, reason: str | None = None) -> Principal:
        """Revoke a principal (its token stops authenticating); revoking twice is a no-op."""
        pid = self._parse_id(principal_id)
        for _attempt in range(3):
            aggregate = self.ledger._get(PrincipalAggregate, pid, "principal", short=True)
            changed = aggregate.revoke(actor=actor, now=self.ledger.clock.now(), reason=reason)
            if changed:
                try:
                    with _store_errors():
                        self.ledger._commit([aggregate])
                except IntegrityError:
                    continue  # someone revoked it at the same moment: reload, it is a no-op
            principal = _read_model(aggregate)
            self._remember(aggregate.token_hash, principal)
            return principal
        raise Conflict(f"principal {pid} is being changed concurrently; try again")

    def bootstrap_operator(self) -> str | None:
        """With no principal at all, create the first operator and return its token; else None.

        The bootstrap operator has a fixed id, so two processes bootstrapping the same empty
        store at once collide and exactly one of them creates it (the other gets None).
        """
        if self.has_any():
            return None
        try:
            _, token = self._create(
                principal_id=_BOOTSTRAP_ID,
                role=OPERATOR,
                name=BOOTSTRAP_NAME,
                actor=BOOTSTRAP_ACTOR,
                agent=None,
                audience=None,
                resources=(),
                all_missions=False,
            )
        except Conflict:
            return None
        return token

    # -- reads ------------------------------------------------------------------------------------

    def list(self, *, include_revoked: bool = False) -> list[Principal]:
        """Every principal (live ones only unless ``include_revoked``), oldest first."""
        rows = [p for p in self._current() if include_revoked or not p.revoked]
        return sorted(rows, key=lambda p: (p.created_at, p.principal_id))

    def get(self, principal_id: str) -> Principal:
        """The principal with this id (revoked ones included); NotFound otherwise."""
        pid = str(self._parse_id(principal_id))
        self._refresh(0.0)
        entry = self._entries.get(pid)
        if entry is None:
            raise NotFound(f"no principal {pid}")
        return entry[1]

    def has_any(self) -> bool:
        """Whether any principal was ever registered (revoked ones count)."""
        return bool(self._current())

    def authenticate(self, token: str) -> Principal | None:
        """The live principal a bearer token belongs to, or None (malformed, unknown, revoked,
        wrong secret — deliberately indistinguishable). May read the store (cache refresh)."""
        parsed = _parse_token(token)
        if parsed is None:
            return None
        key, presented = parsed
        self._refresh(REFRESH_INTERVAL)
        entry = self._entries.get(key)
        if entry is None:
            self._refresh(MISS_REFRESH_INTERVAL)
            entry = self._entries.get(key)
        return _verify(entry, presented)

    def authenticate_in_memory(self, token: str) -> Principal | NeedsStore | None:
        """:meth:`authenticate` without touching the store: the answer when the cache is fresh
        and knows the token's principal (an event loop may call this), else ``NEEDS_STORE``."""
        parsed = _parse_token(token)
        if parsed is None:
            return None
        if time.monotonic() - self._refreshed_at >= REFRESH_INTERVAL:
            return NEEDS_STORE
        key, presented = parsed
        entry = self._entries.get(key)
        if entry is None:
            return NEEDS_STORE
        return _verify(entry, presented)

    @staticmethod
    def _parse_id(principal_id: str) -> UUID:
        try:
            return UUID(str(principal_id))
        except ValueError:
            raise NotFound(
                f"no principal {principal_id!r}: principal ids are UUIDs "
                "(see `mission-ledger tokens list`)"
            ) from None


# -- access rules ---------------------------------------------------------------------------------


def require_role(principal: Principal, *roles: str) -> None:
    """Raise :class:`Forbidden` unless the principal has one of ``roles``."""
    if principal.role in roles:
        return
    needed = " or ".join(roles) if roles else "(no role may do this)"
    raise Forbidden(
        f"this needs the role {needed}; {principal.name} is a {principal.role}",
        required_roles=list(roles),
        role=principal.role,
    )


def _own(principal: Principal, document: dict[str, Any] | None) -> bool:
    return (
        principal.role == HARNESS
        and principal.agent is not None
        and document is not None
        and document.get("agent") == principal.agent
    )


def may_view_mission(principal: Principal, mission_doc: dict[str, Any]) -> bool:
    """Whether the principal may see this Mission (``Mission.to_dict()``) at all."""
    if principal.role in VIEW_ALL_ROLES:
        return True
    if principal.role == HARNESS:
        return _own(principal, mission_doc)
    if principal.role == RECEIVER:
        authority = mission_doc.get("authority_set")
        return principal.may_see_authority(authority if isinstance(authority, list) else [])
    return False


def may_view_proposal(principal: Principal, proposal_doc: dict[str, Any]) -> bool:
    """Whether the principal may see this proposal; receivers never see proposals."""
    if principal.role in VIEW_ALL_ROLES:
        return True
    return _own(principal, proposal_doc)


def may_act_on_mission(principal: Principal, operation: str, mission_doc: dict[str, Any]) -> bool:
    """Whether the principal may perform ``operation`` (one of :data:`MISSION_OPERATIONS`)."""
    if operation not in MISSION_OPERATIONS:
        raise ValueError(
            f"unknown Mission operation {operation!r}; known: {', '.join(MISSION_OPERATIONS)}"
        )
    if principal.role == OPERATOR:
        return True
    if principal.role == HARNESS:
        return operation in HARNESS_MISSION_OPERATIONS and _own(principal, mission_doc)
    return False  # approvers decide proposals only; auditors and receivers only read


def may_act_on_proposal(
    principal: Principal, operation: str, proposal_doc: dict[str, Any] | None
) -> bool:
    """Whether the principal may perform ``operation`` (one of :data:`PROPOSAL_OPERATIONS`).

    For ``submit`` pass the submitted document as ``proposal_doc`` (its ``agent`` decides).
    """
    if operation not in PROPOSAL_OPERATIONS:
        raise ValueError(
            f"unknown proposal operation {operation!r}; known: {', '.join(PROPOSAL_OPERATIONS)}"
        )
    if principal.role == OPERATOR:
        return True
    if operation in ("approve", "deny"):
        return principal.role == APPROVER
    return _own(principal, proposal_doc)  # submit, withdraw
