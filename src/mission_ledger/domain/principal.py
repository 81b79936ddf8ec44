"""The Principal aggregate: someone (or something) that may call the Authority with a bearer token.

A principal has a ``name`` (unique among live principals; checked by the application), a
``role`` and, depending on the role, what it acts for:

=============  ===========================================================================
role           what it is
=============  ===========================================================================
``operator``   runs the Authority: every Mission operation, principals, the audit
``approver``   a human who approves or denies proposals
``harness``    an agent's harness, bound to one ``agent`` id: proposes, delegates, narrows,
               completes its own Missions
``auditor``    reads everything, changes nothing
``receiver``   a Service (a resource server) that receives Mission state: bound to an
               ``audience`` and sees only the Missions whose Authority Set touches one of its
               ``resources`` prefixes — or every Mission with ``all_missions``
=============  ===========================================================================

**Resource prefixes** (receivers). Each is an absolute URI, optionally ending in ``*``. A prefix
covers the resources under it, matched at a boundary: ``https://erp.example.com/invoices`` covers
``https://erp.example.com/invoices`` and ``…/invoices/42`` (or ``…/invoices?x``), but not
``…/invoices-archive``, and ``https://erp.example.com`` never reaches
``https://erp.example.com.evil.org``. A prefix ending in ``/`` or ``*`` covers any continuation
(``https://erp.example.com/inv*`` covers ``…/invoices`` and ``…/inventory``).

**Tokens.** The aggregate stores only ``token_hash``, the hex SHA-256 of the token's secret part;
the token itself is shown once, at creation, and never stored.

Events: ``PrincipalRegistered.v1`` (version 1) and ``PrincipalRevoked.v1``; both are part of the
ledger's hash chains like every other stored event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING
from uuid import UUID

from .chain import ChainedAggregate, ChainedCreated, ChainedEvent
from .errors import InvalidInput
from .timefmt import format_rfc3339

OPERATOR, APPROVER, HARNESS, AUDITOR, RECEIVER = (
    "operator",
    "approver",
    "harness",
    "auditor",
    "receiver",
)
ROLES: tuple[str, ...] = (OPERATOR, APPROVER, HARNESS, AUDITOR, RECEIVER)

NAME_PATTERN = re.compile(r"[A-Za-z0-9._:@-]{1,64}")
_TOKEN_HASH = re.compile(r"[0-9a-f]{64}")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URI_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
MAX_TEXT = 1024
MAX_RESOURCES = 100


def prefix_body(pattern: str) -> str:
    """A resource prefix or pattern without its trailing ``*`` (``P*`` and ``P`` compare alike)."""
    return pattern[:-1] if pattern.endswith("*") else pattern


def _text(value: object, field: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} must be a non-empty string ({what})", field=field)
    if len(value) > MAX_TEXT or not value.isprintable():
        raise InvalidInput(
            f"{field} must be at most {MAX_TEXT} printable characters ({what})", field=field
        )
    return value


def check_name(name: object) -> str:
    """A principal name: 1–64 characters from ``A–Z a–z 0–9 . _ : @ -``."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidInput(
            "name must be 1–64 characters from A–Z, a–z, 0–9 and . _ : @ - "
            f"(e.g. alice@example.com or erp-receiver); got {name!r}",
            field="name",
        )
    return name


def check_role(role: object) -> str:
    if role not in ROLES:
        raise InvalidInput(
            f"role must be one of {', '.join(ROLES)}; got {role!r}",
            field="role",
        )
    assert isinstance(role, str)
    return role


def check_resource_prefix(value: object, index: int) -> str:
    """One receiver resource prefix: an absolute URI, optionally ending in ``*``."""
    field = f"resources[{index}]"
    if not isinstance(value, str) or not value:
        raise InvalidInput(
            f"{field} must be a resource prefix such as https://erp.example.com/invoices/",
            field=field,
        )
    if len(value) > 2048 or _URI_FORBIDDEN.search(value):
        raise InvalidInput(
            f"resource prefix {value!r} is too long or contains whitespace or control "
            "characters; percent-encode them",
            field=field,
        )
    if not _SCHEME.match(value):
        raise InvalidInput(
            f"resource prefix {value!r} is not an absolute URI; give it a scheme, e.g. "
            "https://erp.example.com/invoices/",
            field=field,
        )
    if "*" in value[:-1]:
        raise InvalidInput(
            f"resource prefix {value!r} has a '*' before its end; a prefix may only end in "
            "'*' (https://erp.example.com/invoices/*)",
            field=field,
        )
    scheme = _SCHEME.match(value)
    assert scheme is not None
    rest = prefix_body(value)[scheme.end() :]
    if rest in ("", "/", "//"):
        raise InvalidInput(
            f"resource prefix {value!r} names a whole URI scheme; name a host "
            "(https://erp.example.com/) or register the receiver with all_missions "
            "(--all-missions) to let it "
            "see every Mission",
            field=field,
        )
    return value


def validate_registration(
    *,
    role: object,
    name: object,
    agent: object = None,
    audience: object = None,
    resources: Sequence[object] = (),
    all_missions: object = False,
) -> tuple[str, str, str | None, str | None, list[str], bool]:
    """Check a registration; returns ``(role, name, agent, audience, resources, all_missions)``.

    Every refusal is an :class:`InvalidInput` naming the field and saying what to do.
    """
    role = check_role(role)
    name = check_name(name)
    if not isinstance(all_missions, bool):
        raise InvalidInput("all_missions must be true or false", field="all_missions")
    if isinstance(resources, str) or not isinstance(resources, Sequence):
        raise InvalidInput("resources must be a list of resource prefixes", field="resources")
    if role == HARNESS:
        agent_id = _text(agent, "agent", "a harness acts for exactly one agent id")
    elif agent is not None:
        raise InvalidInput(
            f"agent is only for the harness role; a{'n' if role[0] in 'aeiou' else ''} "
            f"{role} does not act for an agent",
            field="agent",
        )
    else:
        agent_id = None
    if role != RECEIVER:
        for option, given in (
            ("audience", audience is not None),
            ("resources", bool(resources)),
            ("all_missions", all_missions),
        ):
            if given:
                raise InvalidInput(
                    f"{option} is only for the receiver role (a Service that receives Mission "
                    f"state); a {role} sees Missions by its role",
                    field=option,
                )
        return role, name, agent_id, None, [], False
    aud = _text(audience, "audience", "the receiver's audience, e.g. https://erp.example.com")
    if any(ch.isspace() for ch in aud):
        raise InvalidInput("audience must not contain whitespace", field="audience")
    if len(resources) > MAX_RESOURCES:
        raise InvalidInput(
            f"at most {MAX_RESOURCES} resource prefixes; use broader prefixes",
            field="resources",
        )
    prefixes: list[str] = []
    for index, value in enumerate(resources):
        prefix = check_resource_prefix(value, index)
        if prefix not in prefixes:
            prefixes.append(prefix)
    if all_missions and prefixes:
        raise InvalidInput(
            "choose either resource prefixes or all_missions, not both: all_missions already "
            "lets the receiver see every Mission",
            field="all_missions",
        )
    if not all_missions and not prefixes:
        raise InvalidInput(
            "a receiver must be told which Missions it may see: give at least one resource "
            "prefix (e.g. https://erp.example.com/ for everything on that host) or all_missions "
            "(--all-missions) for every Mission",
            field="resources",
        )
    return role, name, None, aud, prefixes, all_missions


class Principal(ChainedAggregate):
    """A caller of the Authority: its role, what it is bound to, and its token's hash."""

    TOPIC = "mission_ledger.Principal"

    if TYPE_CHECKING:  # state attributes, set by the events (not constructor fields)
        name: str
        role: str
        agent: str | None
        audience: str | None
        resources: list[str]
        all_missions: bool
        token_hash: str
        created_at: str
        revoked: bool
        revoked_at: str | None

    class Event(ChainedEvent):
        TOPIC = "mission_ledger.Principal.Event"

    class Created(Event, ChainedCreated):
        TOPIC = "mission_ledger.Principal.Created"

    class Registered(Event, ChainedCreated):
        """Version 1: the principal exists and its token (by hash) is valid."""

        TOPIC = "mission_ledger.PrincipalRegistered.v1"
        name: str
        role: str
        agent: str | None
        audience: str | None
        resources: list[str]
        all_missions: bool
        token_hash: str
        created_at: str

        def apply_to(self, p: Principal) -> None:
            p.name, p.role, p.agent, p.audience = self.name, self.role, self.agent, self.audience
            p.resources = list(self.resources)
            p.all_missions = self.all_missions
            p.token_hash = self.token_hash
            p.created_at = self.created_at
            p.revoked = False
            p.revoked_at = None

    class Revoked(Event):
        """The principal's token no longer authenticates; the name may be reused."""

        TOPIC = "mission_ledger.PrincipalRevoked.v1"
        reason: str | None

        def apply_to(self, p: Principal) -> None:
            p.revoked = True
            p.revoked_at = format_rfc3339(self.timestamp)

    @classmethod
    def register(
        cls,
        *,
        principal_id: UUID,
        role: str,
        name: str,
        token_hash: str,
        actor: str,
        now: datetime,
        agent: str | None = None,
        audience: str | None = None,
        resources: Sequence[str] = (),
        all_missions: bool = False,
    ) -> Principal:
        """Validate and open a principal (pending, not yet saved)."""
        role, name, agent, audience, prefixes, all_missions = validate_registration(
            role=role,
            name=name,
            agent=agent,
            audience=audience,
            resources=resources,
            all_missions=all_missions,
        )
        if not isinstance(token_hash, str) or not _TOKEN_HASH.fullmatch(token_hash):
            raise InvalidInput(
                "token_hash must be the lowercase hex SHA-256 of the token secret",
                field="token_hash",
            )
        _text(actor, "actor", "who registers the principal")
        return cls._open(
            cls.Registered,
            aggregate_id=principal_id,
            timestamp=now,
            actor=actor,
            name=name,
            role=role,
            agent=agent,
            audience=audience,
            resources=prefixes,
            all_missions=all_missions,
            token_hash=token_hash,
            created_at=format_rfc3339(now),
        )

    def revoke(self, *, actor: str, now: datetime, reason: str | None = None) -> bool:
        """Revoke the principal; False (no event) when it is already revoked."""
        _text(actor, "actor", "who revokes the principal")
        if reason is not None:
            _text(reason, "reason", "why the principal is revoked")
        if self.revoked:
            return False
        self._record(self.Revoked, timestamp=now, actor=actor, reason=reason)
        return True
