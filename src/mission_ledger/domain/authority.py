"""Authority Sets: parsing, request matching, attenuation, delegation planning and diffs.

**Model.** An Authority Set (``draft-mcguinness-oauth-mission``) is a non-empty JSON array of
RFC 9396-shaped entries ``{"type": "mission_resource_access", "resource", "actions",
"constraints"?, "delegation"?}``. An entry grants every listed action on its resource while its
constraints hold. Our extensions (ARCHITECTURE.md §3):

* ``resource`` is an absolute URI, or a *prefix pattern* ending in ``*`` that names every URI
  starting with what precedes the ``*``. A ``*`` anywhere else is refused.
* an action is an exact name, a prefix pattern ending in ``*`` (``"invoices.*"``), or the bare
  ``"*"`` (every action), which is refused unless the caller passes ``allow_wildcard=True``
  (an approver's explicit, reasoned policy); such entries are flagged by ``wildcard``.
* the only constraints are :data:`SUPPORTED_CONSTRAINTS`: ``not_before`` / ``not_after``
  (RFC 3339 with a timezone; the entry is valid on ``not_before ≤ t < not_after``), ``stage``
  (valid only while the Mission is in that stage) and ``max_calls`` (a call budget, counted and
  enforced by the caller that records calls; :func:`evaluate` ignores it). The drafts' other
  constraints (``max_amount``, ``time_window``, ``tenant`` …) are refused, because a deployment
  must not present as enforced what it cannot enforce.
* ``delegation`` = ``{max_depth, allowed_delegates?, children?}``: ``max_depth`` levels of
  delegation are allowed below the Mission holding the entry; ``children`` permits child
  Missions without a human (``max_children``, ``max_child_depth``, ``allowed_child_actors``).
  Principals are ``{"sub": id}`` or ``{"sub_profile": profile}``. A ``sub_profile`` is
  self-asserted and this Authority has no registry it trusts, so ``sub_profile`` entries are
  kept in the JSON and in subset checks but never *match* an agent: only ``{"sub": id}`` does.

Every parse refusal is an :class:`~.errors.InvalidAuthority` naming a JSON-path-like ``field``
(``authority_set[1].actions[0]``) and saying what to do. An entry's ``raw`` JSON is kept exactly
as given, member order included, because hashes are computed over it.

**Matching.** A pattern covers a value when they are equal, or the pattern ends in ``*`` and the
value starts with the pattern's prefix; a value that is itself a pattern (ends in ``*``) is
covered only when its own prefix starts with the pattern's prefix, i.e. only by a broader or
equal pattern. ``"*"`` has the empty prefix and so covers everything. :func:`evaluate` allows a
request when some entry covers its resource and action and is valid at that instant and stage.

**Attenuation** (``child ⊆ parent``, :func:`entry_covers`, :func:`subset_violation`). A child
entry is within a parent entry when: its resource is covered; each of its actions is covered by
some parent action; no constraint is weaker (a parent ``not_before`` needs a child one ≥ it, a
parent ``not_after`` a child one ≤ it, a parent ``stage`` the same stage, a parent
``max_calls`` a child one ≤ it); and its delegation is no wider: none when the parent has none;
otherwise ``max_depth`` ≤ the parent's, ``allowed_delegates`` ⊆ the parent's, and ``children``
only if the parent has it, with ``max_children`` and ``max_child_depth`` ≤ the parent's (absent
= unlimited) and ``allowed_child_actors`` ⊆ the parent's. A child *Set* is within a parent Set
when every child entry is within at least one parent entry (any of them, not positionally).

Two modes differ only in ``max_depth``. For in-place narrowing and comparison (the default,
``delegating=False``) the child stays at the parent's level, so ``max_depth`` ≤ the parent's;
this makes ⊆ reflexive and transitive. For delegation (``delegating=True``, what
:func:`plan_delegation` uses) the child sits one level lower, so ``max_depth`` ≤ the parent's − 1:
a ``max_depth: 1`` entry lets children hold no delegation at all, which bounds chains.

**Delegation planning** (:func:`plan_delegation`) applies the drafts' ``mission_denial_reason``
codes in order: ``delegation_not_permitted``, ``child_actor_not_allowed``,
``not_strict_subset``, ``fanout_exceeded``. ``parent_not_active`` and the expiry bound are
the Mission aggregate's to check. :func:`authority_diff` records how a granted Set differs
from a requested one.

This module is pure: standard library and :mod:`.errors` only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import DelegationDenied, InvalidAuthority

__all__ = [
    "ALLOWED",
    "ENTRY_TYPE",
    "EXPIRED",
    "NOT_YET_VALID",
    "OUT_OF_AUTHORITY",
    "STAGE_NOT_ACTIVE",
    "SUPPORTED_CONSTRAINTS",
    "AuthorityEntry",
    "AuthoritySet",
    "ChildrenPolicy",
    "DelegationPlan",
    "DelegationPolicy",
    "Evaluation",
    "action_covers",
    "authority_diff",
    "entry_covers",
    "evaluate",
    "parse_authority_set",
    "parse_entry",
    "plan_delegation",
    "resource_covers",
    "subset_violation",
]

ENTRY_TYPE = "mission_resource_access"
SUPPORTED_CONSTRAINTS: frozenset[str] = frozenset({"not_before", "not_after", "stage", "max_calls"})

_ENTRY_MEMBERS = ("type", "resource", "actions", "constraints", "delegation")
_DELEGATION_MEMBERS = ("max_depth", "allowed_delegates", "children")
_CHILDREN_MEMBERS = ("max_children", "max_child_depth", "allowed_child_actors")
_PRINCIPAL_KINDS = ("sub", "sub_profile")

#: Integers must be exact IEEE-754 doubles, or JCS (RFC 8785) cannot hash the entry.
_MAX_INT = 2**53

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")
_URI_FORBIDDEN = re.compile(r"[\s\x00-\x1f\x7f]")
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}"
    r"(?:\.(?P<frac>[0-9]+))?(?P<tz>[Zz]|[+-][0-9]{2}:[0-9]{2})?"
)


# --------------------------------------------------------------------------------------------
# The parsed model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChildrenPolicy:
    """``delegation.children``: whether child Missions may be created without a human.

    ``allowed_child_actors`` holds the agent ids of the ``{"sub": id}`` principals; an empty
    tuple denies every child. ``{"sub_profile": …}`` principals are self-asserted and never
    match (this Authority trusts no profile registry); they are kept in the entry's raw JSON and
    in ``allowed_child_profiles`` so subset checks still see them.
    """

    max_children: int | None  # None = unlimited
    max_child_depth: int | None  # None = unlimited
    allowed_child_actors: tuple[str, ...]
    allowed_child_profiles: tuple[str, ...] = ()


@dataclass(frozen=True)
class DelegationPolicy:
    """``delegation`` on an entry.

    ``allowed_delegates`` holds each principal as canonical JSON (``'{"sub":"agent-7"}'``,
    ``'{"sub_profile":"ai_agent"}'``), deduplicated in first-seen order, for subset checks.
    """

    max_depth: int
    allowed_delegates: tuple[str, ...]
    children: ChildrenPolicy | None


@dataclass(frozen=True)
class AuthorityEntry:
    """One validated ``mission_resource_access`` entry; ``raw`` is its JSON exactly as given."""

    resource: str
    actions: tuple[str, ...]
    not_before: datetime | None
    not_after: datetime | None
    stage: str | None
    max_calls: int | None
    delegation: DelegationPolicy | None
    raw: Mapping[str, Any] = field(hash=False, repr=False)

    @property
    def wildcard(self) -> bool:
        """True if the bare ``"*"`` action (every action) is among ``actions``."""
        return "*" in self.actions

    def to_json(self) -> dict[str, Any]:
        """A fresh deep copy of the entry's JSON, member order kept (what gets hashed)."""
        return _copy_object(self.raw)


@dataclass(frozen=True)
class AuthoritySet:
    """A validated Authority Set: its entries in the order given."""

    entries: tuple[AuthorityEntry, ...]

    def to_json(self) -> list[dict[str, Any]]:
        """A fresh deep copy of the Set's JSON, entry and member order kept."""
        return [entry.to_json() for entry in self.entries]

    @property
    def has_wildcard(self) -> bool:
        """True if any entry grants the bare ``"*"`` action."""
        return any(entry.wildcard for entry in self.entries)


def _copy_json(value: Any) -> Any:
    if isinstance(value, Mapping):
        return _copy_object(value)
    if isinstance(value, list | tuple):
        return [_copy_json(item) for item in value]
    return value


def _copy_object(value: Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        try:  # the C json module deep-copies a plain JSON object several times faster
            copied: dict[str, Any] = json.loads(json.dumps(value, ensure_ascii=False))
        except (TypeError, ValueError):
            pass
        else:
            return copied
    return {name: _copy_json(member) for name, member in value.items()}


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_authority_set(
    raw: object, *, allow_wildcard: bool = False, field: str = "authority_set"
) -> AuthoritySet:
    """Validate a JSON Authority Set; raise :class:`InvalidAuthority` naming the bad field."""
    if not isinstance(raw, list | tuple):
        raise InvalidAuthority(
            f"the Authority Set must be a JSON array of entries, not {_kind(raw)}; "
            f'send [{{"type": "{ENTRY_TYPE}", "resource": …, "actions": […]}}, …]',
            field=field,
        )
    if not raw:
        raise InvalidAuthority(
            "the Authority Set is empty; a Mission needs at least one entry granting something",
            field=field,
        )
    entries = tuple(
        parse_entry(item, allow_wildcard=allow_wildcard, field=f"{field}[{index}]")
        for index, item in enumerate(raw)
    )
    return AuthoritySet(entries)


def parse_entry(raw: object, *, allow_wildcard: bool, field: str) -> AuthorityEntry:
    """Validate one Authority Set entry; ``field`` is its path (``authority_set[1]``)."""
    obj = _object(raw, field, "an Authority Set entry")
    _check_members(obj, field, _ENTRY_MEMBERS, required=("type", "resource", "actions"))
    kind = obj["type"]
    if kind != ENTRY_TYPE:
        raise InvalidAuthority(
            f"entry type {kind!r} is not supported; this Authority grants only "
            f'"{ENTRY_TYPE}" entries',
            field=f"{field}.type",
        )
    resource = _parse_resource(obj["resource"], f"{field}.resource")
    actions = _parse_actions(obj["actions"], f"{field}.actions", allow_wildcard=allow_wildcard)
    not_before = not_after = None
    stage: str | None = None
    max_calls: int | None = None
    if "constraints" in obj:
        path = f"{field}.constraints"
        constraints = _object(obj["constraints"], path, "constraints")
        for name in constraints:
            if name not in SUPPORTED_CONSTRAINTS:
                raise InvalidAuthority(
                    f"this Authority cannot enforce constraint {name!r}; remove it or express "
                    "it with not_before/not_after/stage/max_calls",
                    field=f"{path}.{name}",
                )
        if "not_before" in constraints:
            not_before = _parse_instant(constraints["not_before"], f"{path}.not_before")
        if "not_after" in constraints:
            not_after = _parse_instant(constraints["not_after"], f"{path}.not_after")
        if not_before is not None and not_after is not None and not_before >= not_after:
            raise InvalidAuthority(
                "not_before must be earlier than not_after, or the entry is never valid; "
                "fix the time window",
                field=f"{path}.not_after",
            )
        if "stage" in constraints:
            stage = _string(constraints["stage"], f"{path}.stage", "stage")
        if "max_calls" in constraints:
            max_calls = _integer(constraints["max_calls"], f"{path}.max_calls", minimum=1)
    delegation = None
    if "delegation" in obj:
        delegation = _parse_delegation(obj["delegation"], f"{field}.delegation")
    return AuthorityEntry(
        resource=resource,
        actions=actions,
        not_before=not_before,
        not_after=not_after,
        stage=stage,
        max_calls=max_calls,
        delegation=delegation,
        raw=_copy_object(obj),
    )


def _parse_resource(value: object, path: str) -> str:
    resource = _string(value, path, "resource")
    if _URI_FORBIDDEN.search(resource):
        raise InvalidAuthority(
            f"resource {resource!r} contains whitespace or control characters, which a URI "
            "cannot; percent-encode them",
            field=path,
        )
    if not _SCHEME.match(resource):
        raise InvalidAuthority(
            f"resource {resource!r} is not an absolute URI; give it a scheme, e.g. "
            "https://erp.example.com/invoices",
            field=path,
        )
    if "*" in resource[:-1]:
        raise InvalidAuthority(
            f"resource {resource!r} has a '*' before its end; '*' is allowed only as the last "
            "character, making a prefix pattern (https://erp.example.com/invoices/*)",
            field=path,
        )
    return resource


def _parse_actions(value: object, path: str, *, allow_wildcard: bool) -> tuple[str, ...]:
    items = _array(value, path, "actions")
    if not items:
        raise InvalidAuthority(
            "actions is empty, so the entry grants nothing; list the actions it grants or "
            "remove the entry",
            field=path,
        )
    actions: list[str] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        action = _string(item, item_path, "an action")
        if "*" in action[:-1]:
            raise InvalidAuthority(
                f"action {action!r} has a '*' before its end; '*' is allowed only as a whole "
                "action or as the last character of a prefix pattern (invoices.*)",
                field=item_path,
            )
        if action == "*" and not allow_wildcard:
            raise InvalidAuthority(
                "the '*' action grants every action on the resource and is refused by default; "
                "list the actions needed, or have the approver set allow_wildcard with a reason",
                field=item_path,
            )
        if action in actions:
            raise InvalidAuthority(
                f"action {action!r} is listed twice; list each action once",
                field=item_path,
            )
        actions.append(action)
    return tuple(actions)


def _parse_instant(value: object, path: str) -> datetime:
    text = _string(value, path, "an RFC 3339 date-time")
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidAuthority(
            f"{text!r} is not an RFC 3339 date-time; write e.g. 2026-12-31T23:59:59Z",
            field=path,
        )
    if match["tz"] is None:
        raise InvalidAuthority(
            f"{text!r} has no timezone, so the instant is ambiguous; add Z or an offset such "
            "as +02:00",
            field=path,
        )
    if match["frac"] is not None and len(match["frac"]) > 6:
        raise InvalidAuthority(
            f"{text!r} is more precise than a microsecond, which this Authority cannot "
            "represent exactly; use at most 6 fractional digits",
            field=path,
        )
    normalized = text[:-1] + "+00:00" if text[-1] in "Zz" else text
    try:
        return datetime.fromisoformat(normalized.replace("t", "T"))
    except ValueError as exc:
        raise InvalidAuthority(
            f"{text!r} is not a valid date-time ({exc}); check the date and time fields",
            field=path,
        ) from None


def _parse_delegation(value: object, path: str) -> DelegationPolicy:
    obj = _object(value, path, "delegation")
    _check_members(obj, path, _DELEGATION_MEMBERS, required=("max_depth",))
    max_depth = _integer(obj["max_depth"], f"{path}.max_depth", minimum=1)
    delegates: tuple[str, ...] = ()
    if "allowed_delegates" in obj:
        pairs = _parse_principals(obj["allowed_delegates"], f"{path}.allowed_delegates")
        delegates = tuple(dict.fromkeys(_principal_key(kind, name) for kind, name in pairs))
    children = None
    if "children" in obj:
        children = _parse_children(obj["children"], f"{path}.children")
    return DelegationPolicy(max_depth=max_depth, allowed_delegates=delegates, children=children)


def _parse_children(value: object, path: str) -> ChildrenPolicy:
    obj = _object(value, path, "delegation.children")
    _check_members(obj, path, _CHILDREN_MEMBERS, required=())
    max_children = max_child_depth = None
    if "max_children" in obj:
        max_children = _integer(obj["max_children"], f"{path}.max_children", minimum=0)
    if "max_child_depth" in obj:
        max_child_depth = _integer(obj["max_child_depth"], f"{path}.max_child_depth", minimum=1)
    subs: list[str] = []
    profiles: list[str] = []
    if "allowed_child_actors" in obj:
        for kind, name in _parse_principals(
            obj["allowed_child_actors"], f"{path}.allowed_child_actors"
        ):
            target = subs if kind == "sub" else profiles
            if name not in target:
                target.append(name)
    return ChildrenPolicy(
        max_children=max_children,
        max_child_depth=max_child_depth,
        allowed_child_actors=tuple(subs),
        allowed_child_profiles=tuple(profiles),
    )


def _parse_principals(value: object, path: str) -> list[tuple[str, str]]:
    principals: list[tuple[str, str]] = []
    for index, item in enumerate(_array(value, path, "a list of principals")):
        item_path = f"{path}[{index}]"
        obj = _object(item, item_path, 'a principal ({"sub": …} or {"sub_profile": …})')
        names = list(obj)
        if len(names) != 1 or names[0] not in _PRINCIPAL_KINDS:
            raise InvalidAuthority(
                f"a principal must have exactly one member, sub or sub_profile, not {names}; "
                'write {"sub": "agent-7"} or {"sub_profile": "ai_agent"}',
                field=item_path,
            )
        kind = names[0]
        principals.append((kind, _string(obj[kind], f"{item_path}.{kind}", kind)))
    return principals


def _principal_key(kind: str, name: str) -> str:
    return json.dumps({kind: name}, separators=(",", ":"), ensure_ascii=False)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _object(value: object, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise InvalidAuthority(
            f"{what} must be a JSON object, not {_kind(value)}; send {{…}}", field=path
        )
    return value


def _array(value: object, path: str, what: str) -> Sequence[Any]:
    if not isinstance(value, list | tuple):
        raise InvalidAuthority(
            f"{what} must be a JSON array, not {_kind(value)}; send […]", field=path
        )
    return value


def _check_members(
    obj: Mapping[str, Any], path: str, allowed: tuple[str, ...], *, required: tuple[str, ...]
) -> None:
    for name in obj:
        if name not in allowed:
            raise InvalidAuthority(
                f"unknown member {name!r}; only {', '.join(allowed)} are allowed here, "
                "so remove it",
                field=f"{path}.{name}",
            )
    for name in required:
        if name not in obj:
            raise InvalidAuthority(f"member {name!r} is required; add it", field=f"{path}.{name}")


def _string(value: object, path: str, what: str) -> str:
    if not isinstance(value, str) or not value:
        shown = "an empty string" if value == "" else _kind(value)
        raise InvalidAuthority(f"{what} must be a non-empty string, not {shown}", field=path)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidAuthority(
            f"{what} contains a lone surrogate, which JSON cannot carry; send valid Unicode",
            field=path,
        ) from None
    return value


def _integer(value: object, path: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidAuthority(
            f"must be an integer ≥ {minimum}, not {_kind(value)}; send a whole number",
            field=path,
        )
    if not minimum <= value <= _MAX_INT:
        raise InvalidAuthority(
            f"{value} is out of range; send an integer from {minimum} to 2**53", field=path
        )
    return value


# --------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------


def _pattern_covers(pattern: str, value: str) -> bool:
    if not pattern.endswith("*"):
        return value == pattern
    body = value[:-1] if value.endswith("*") else value
    return body.startswith(pattern[:-1])


def resource_covers(pattern: str, resource: str) -> bool:
    """Whether ``pattern`` covers ``resource``: equal, or a prefix match when ``pattern`` ends
    in ``*``. A ``resource`` that is itself a pattern is covered only by a broader or equal
    pattern (``https://x/*`` covers ``https://x/a/*``; ``https://x/a`` covers no pattern)."""
    return _pattern_covers(pattern, resource)


def action_covers(pattern: str, action: str) -> bool:
    """Whether ``pattern`` covers ``action``, by the same rule as :func:`resource_covers`:
    ``"*"`` covers everything; ``"invoices.*"`` covers ``"invoices.read"`` and
    ``"invoices.x.*"`` but not ``"invoices"`` or ``"*"``."""
    return _pattern_covers(pattern, action)


ALLOWED = "allowed"
OUT_OF_AUTHORITY = "out_of_authority"
STAGE_NOT_ACTIVE = "stage_not_active"
NOT_YET_VALID = "not_yet_valid"
EXPIRED = "expired"


@dataclass(frozen=True)
class Evaluation:
    """The answer to "may this action on this resource happen now, in this stage?".

    ``reason`` is ``allowed``, ``out_of_authority``, ``stage_not_active``, ``not_yet_valid`` or
    ``expired``; ``entry_index`` is the granting entry, or the first covering entry that
    refused, or None when no entry covers the request.
    """

    allowed: bool
    reason: str
    entry_index: int | None


def _refusal(entry: AuthorityEntry, at: datetime, stage: str | None) -> str | None:
    if entry.not_before is not None and at < entry.not_before:
        return NOT_YET_VALID
    if entry.not_after is not None and at >= entry.not_after:
        return EXPIRED
    if entry.stage is not None and entry.stage != stage:
        return STAGE_NOT_ACTIVE
    return None


def evaluate(
    authority: AuthoritySet, *, action: str, resource: str, at: datetime, stage: str | None
) -> Evaluation:
    """Decide one request against ``authority`` at the aware instant ``at`` in ``stage``.

    The first entry (in order) that covers ``resource`` and ``action`` and is valid
    (``not_before ≤ at < not_after``, stage constraint absent or equal to ``stage``) allows it.
    Otherwise the first covering entry's failure is reported (checked as ``not_yet_valid``,
    ``expired``, then ``stage_not_active``), or ``out_of_authority`` if nothing covers it. A
    request string ending in ``*`` is read as the set it names, so only a pattern covering that
    whole set allows it. ``max_calls`` is not consulted: the caller that counts calls enforces it.
    """
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError("evaluate() needs a timezone-aware instant; pass e.g. a UTC datetime")
    first_refusal: tuple[str, int] | None = None
    for index, entry in enumerate(authority.entries):
        if not resource_covers(entry.resource, resource):
            continue
        if not any(action_covers(granted, action) for granted in entry.actions):
            continue
        refusal = _refusal(entry, at, stage)
        if refusal is None:
            return Evaluation(allowed=True, reason=ALLOWED, entry_index=index)
        if first_refusal is None:
            first_refusal = (refusal, index)
    if first_refusal is None:
        return Evaluation(allowed=False, reason=OUT_OF_AUTHORITY, entry_index=None)
    return Evaluation(allowed=False, reason=first_refusal[0], entry_index=first_refusal[1])


# --------------------------------------------------------------------------------------------
# Attenuation
# --------------------------------------------------------------------------------------------


def _limit_violation(name: str, parent: int | None, child: int | None) -> str | None:
    """None = unlimited on either side."""
    if parent is None or (child is not None and child <= parent):
        return None
    shown = "unlimited" if child is None else str(child)
    return f"{name} {shown} exceeds the parent's {parent}"


def _children_violation(parent: ChildrenPolicy | None, child: ChildrenPolicy | None) -> str | None:
    if child is None:
        return None
    if parent is None:
        return "the child may create child Missions but the parent entry may not"
    for name, p_limit, c_limit in (
        ("children.max_children", parent.max_children, child.max_children),
        ("children.max_child_depth", parent.max_child_depth, child.max_child_depth),
    ):
        violation = _limit_violation(name, p_limit, c_limit)
        if violation is not None:
            return violation
    extra = [
        f"sub {s!r}" for s in child.allowed_child_actors if s not in parent.allowed_child_actors
    ]
    extra += [
        f"sub_profile {p!r}"
        for p in child.allowed_child_profiles
        if p not in parent.allowed_child_profiles
    ]
    if extra:
        return f"children.allowed_child_actors adds {', '.join(extra)}, which the parent lacks"
    return None


def _delegation_violation(
    parent: DelegationPolicy | None, child: DelegationPolicy | None, *, delegating: bool
) -> str | None:
    if child is None:
        return None
    if parent is None:
        return "the child carries delegation rights but the parent entry has none"
    limit = parent.max_depth - 1 if delegating else parent.max_depth
    if child.max_depth > limit:
        if limit == 0:
            return (
                "the parent entry's delegation.max_depth is 1, so a child may hold no "
                "delegation; remove it"
            )
        return f"delegation.max_depth {child.max_depth} exceeds the allowed {limit}"
    extra = [d for d in child.allowed_delegates if d not in parent.allowed_delegates]
    if extra:
        return f"delegation.allowed_delegates adds {', '.join(extra)}, which the parent lacks"
    return _children_violation(parent.children, child.children)


def entry_covers(
    parent: AuthorityEntry, child: AuthorityEntry, *, delegating: bool = False
) -> str | None:
    """None if ``child`` ⊆ ``parent`` (see the module docstring), else a human reason.

    ``delegating=True`` checks a child Mission one level down (``max_depth`` ≤ parent's − 1);
    the default checks in-place narrowing (``max_depth`` ≤ parent's).
    """
    if not resource_covers(parent.resource, child.resource):
        return f"resource {child.resource!r} is not within {parent.resource!r}"
    for action in child.actions:
        if not any(action_covers(granted, action) for granted in parent.actions):
            return f"action {action!r} is not granted by {list(parent.actions)}"
    if parent.not_before is not None and (
        child.not_before is None or child.not_before < parent.not_before
    ):
        return f"not_before must be at or after the parent's {parent.not_before.isoformat()}"
    if parent.not_after is not None and (
        child.not_after is None or child.not_after > parent.not_after
    ):
        return f"not_after must be at or before the parent's {parent.not_after.isoformat()}"
    if parent.stage is not None and child.stage != parent.stage:
        return f"stage must be the parent's {parent.stage!r}"
    if parent.max_calls is not None and (
        child.max_calls is None or child.max_calls > parent.max_calls
    ):
        return f"max_calls must be at most the parent's {parent.max_calls}"
    return _delegation_violation(parent.delegation, child.delegation, delegating=delegating)


def _uncovered(
    parents: Sequence[tuple[int, AuthorityEntry]], child: AuthorityEntry, *, delegating: bool
) -> str | None:
    """None if some parent covers ``child``; else the reason against the closest parent entry
    (the first whose resource covers the child's, or the first one)."""
    reasons: list[tuple[int, str]] = []
    for index, parent in parents:
        reason = entry_covers(parent, child, delegating=delegating)
        if reason is None:
            return None
        reasons.append((index, reason))
    if not reasons:
        return "the parent has no entry it could be within"
    closest = next(
        (
            (i, r)
            for (i, r), (_, p) in zip(reasons, parents, strict=True)
            if resource_covers(p.resource, child.resource)
        ),
        reasons[0],
    )
    return f"closest is parent entry {closest[0]}: {closest[1]}"


def subset_violation(
    parent: AuthoritySet, child: AuthoritySet, *, delegating: bool = False
) -> str | None:
    """None if every child entry is within at least one parent entry, else a human reason
    naming the first child entry that is not."""
    parents = list(enumerate(parent.entries))
    for index, entry in enumerate(child.entries):
        reason = _uncovered(parents, entry, delegating=delegating)
        if reason is not None:
            return f"entry {index} is not within the parent's authority ({reason})"
    return None


# --------------------------------------------------------------------------------------------
# Delegation planning
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DelegationPlan:
    """A permitted child Mission: the parent entry whose ``max_children`` it counts against."""

    justifying_entry: int


def _candidates(parent: AuthoritySet, child_agent: str) -> list[tuple[int, AuthorityEntry]]:
    """The parent entries whose ``delegation.children`` admit ``child_agent``, in order."""
    return [
        (i, entry)
        for i, entry in enumerate(parent.entries)
        if entry.delegation is not None
        and entry.delegation.children is not None
        and child_agent in entry.delegation.children.allowed_child_actors
    ]


def _first_covering(candidates: Sequence[tuple[int, AuthorityEntry]], child: AuthoritySet) -> int:
    """The first candidate covering at least one child entry (the drafts' justifying entry)."""
    return next(
        (
            i
            for i, parent_entry in candidates
            if any(entry_covers(parent_entry, c, delegating=True) is None for c in child.entries)
        ),
        candidates[0][0],  # a child the parent no longer covers counts against the first
    )


def live_children_per_entry(
    parent: AuthoritySet, live_children: Iterable[tuple[str, AuthoritySet]]
) -> dict[int, int]:
    """How many live children count against each entry of the parent's *current* Set.

    Each live child (its agent and Authority Set) counts against exactly one justifying entry,
    found as :func:`plan_delegation` finds it, so the count stays right after the parent has been
    narrowed and its entries have moved. A child no entry admits any more is not counted.
    """
    counts: dict[int, int] = {}
    for agent, child in live_children:
        candidates = _candidates(parent, agent)
        if candidates:
            index = _first_covering(candidates, child)
            counts[index] = counts.get(index, 0) + 1
    return counts


def plan_delegation(
    parent: AuthoritySet,
    child: AuthoritySet,
    *,
    child_agent: str,
    live_children_per_entry: Mapping[int, int],
) -> DelegationPlan:
    """Decide whether the parent's agent may create a child Mission for ``child_agent``.

    ``live_children_per_entry`` maps a parent entry index to its non-terminal children. Raises
    :class:`DelegationDenied` with ``delegation_not_permitted``, ``child_actor_not_allowed``,
    ``not_strict_subset`` or ``fanout_exceeded``, checked in that order.
    """
    children_of = {
        i: e.delegation.children
        for i, e in enumerate(parent.entries)
        if e.delegation is not None and e.delegation.children is not None
    }
    if not children_of:
        raise DelegationDenied(
            "delegation_not_permitted",
            "no entry of the parent's Authority Set carries delegation.children, so it may not "
            "create child Missions; ask an approver for a Mission that permits children",
        )
    candidates = _candidates(parent, child_agent)
    if not candidates:
        raise DelegationDenied(
            "child_actor_not_allowed",
            f"no parent entry lists {_principal_key('sub', child_agent)} in "
            "delegation.children.allowed_child_actors (sub_profile is never honoured); "
            "choose an allowed agent or ask an approver to add this one",
        )
    for index, entry in enumerate(child.entries):
        reason = _uncovered(candidates, entry, delegating=True)
        if reason is not None:
            raise DelegationDenied(
                "not_strict_subset",
                f"child entry {index} is not within any parent entry that permits children "
                f"for {child_agent!r} ({reason}); narrow it",
                child_entry=index,
            )
    justifying = _first_covering(candidates, child)
    limit = children_of[justifying].max_children
    live = live_children_per_entry.get(justifying, 0)
    if limit is not None and live >= limit:
        raise DelegationDenied(
            "fanout_exceeded",
            f"parent entry {justifying} already has {live} live child Missions of the "
            f"{limit} its children.max_children allows; end one before creating another",
            parent_entry=justifying,
        )
    return DelegationPlan(justifying_entry=justifying)


# --------------------------------------------------------------------------------------------
# Diff
# --------------------------------------------------------------------------------------------


def authority_diff(requested: AuthoritySet, granted: AuthoritySet) -> dict[str, Any]:
    """How ``granted`` differs from ``requested``, as a deterministic JSON-able record.

    * ``identical``: both Sets have the same entries in the same order (member order inside an
      entry is ignored, as the JCS hash ignores it);
    * ``removed``: requested entries (JSON) with no identical granted entry, in requested order;
    * ``added``: granted entries (JSON) with no identical requested entry, in granted order;
    * ``narrowed``: ``{"requested_index", "granted_index"}`` for each *added* granted entry that
      is a strict subset of a requested entry (the first such, in-place semantics);
    * ``widened``: ``{"granted_index"}`` for each granted entry within no requested entry.

    Entries are compared as sets, so a duplicated or reordered entry is neither removed nor
    added (but ``identical`` is False when the order differs). An added entry that is merely
    rewritten (equivalent, not narrower) appears in ``added`` and in neither of the last two.
    """
    req_json = requested.to_json()
    gr_json = granted.to_json()
    narrowed: list[dict[str, int]] = []
    widened: list[dict[str, int]] = []
    for j, g_entry in enumerate(granted.entries):
        covering = [i for i, r in enumerate(requested.entries) if entry_covers(r, g_entry) is None]
        if not covering:
            widened.append({"granted_index": j})
        elif gr_json[j] not in req_json:
            strict = next(
                (i for i in covering if entry_covers(g_entry, requested.entries[i]) is not None),
                None,
            )
            if strict is not None:
                narrowed.append({"requested_index": strict, "granted_index": j})
    return {
        "identical": req_json == gr_json,
        "removed": [e for e in req_json if e not in gr_json],
        "added": [e for e in gr_json if e not in req_json],
        "narrowed": narrowed,
        "widened": widened,
    }
