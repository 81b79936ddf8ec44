"""Properties of attenuation: ⊆ is a preorder, and a subset never allows what its parent refuses.

Authority Sets are drawn from small alphabets so that coverage between entries is common. Child
Sets are drawn either independently (and filtered) or by narrowing a parent entry by entry, so
that both "obviously a subset" and "subset by coincidence" pairs are exercised.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from mission_ledger.domain.authority import (
    ENTRY_TYPE,
    AuthorityEntry,
    AuthoritySet,
    action_covers,
    evaluate,
    parse_authority_set,
    plan_delegation,
    resource_covers,
    subset_violation,
)
from mission_ledger.domain.errors import DelegationDenied

SETTINGS = settings(max_examples=200, deadline=None)
DENIALS = {
    "delegation_not_permitted",
    "child_actor_not_allowed",
    "not_strict_subset",
    "fanout_exceeded",
}

RESOURCES = (
    "https://r.example/a",
    "https://r.example/a/*",
    "https://r.example/*",
    "https://r.example/a/b",
    "https://r.example/b",
    "https://s.example/*",
)
ACTIONS = ("read", "write", "inv.*", "inv.read", "inv.write", "*")
STAGES = ("s1", "s2")
TIMES = tuple(datetime(2026, 1, day, tzinfo=UTC) for day in (1, 5, 10, 15, 20))
PRINCIPALS = ({"sub": "a"}, {"sub": "b"}, {"sub_profile": "p"})
AGENTS = ("a", "b", "p")

# Requests probe concrete values around every pattern and instants around every bound.
PROBE_RESOURCES = (
    *RESOURCES,
    "https://r.example/",
    "https://r.example/ab",
    "https://r.example/a/c/d",
    "https://s.example/x",
    "https://t.example/a",
)
PROBE_ACTIONS = (*ACTIONS, "inv.x", "inv", "inv.read.more", "other")
PROBE_TIMES = tuple(t + d for t in TIMES for d in (timedelta(0), -timedelta(microseconds=1)))


def _stamp(t: datetime, *, shifted: bool) -> str:
    """The instant as RFC 3339, in UTC ("Z") or at +02:00: the same instant either way."""
    if shifted:
        return t.astimezone(timezone(timedelta(hours=2))).isoformat()
    return t.isoformat().replace("+00:00", "Z")


def _subsequence(items: tuple[Any, ...], *, min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    """Distinct items (by position, so unhashable dicts work), each a fresh copy."""
    indices = st.lists(
        st.integers(0, len(items) - 1), min_size=min_size, max_size=len(items), unique=True
    )
    return indices.map(lambda picked: [copy.deepcopy(items[i]) for i in picked])


@st.composite
def _window(
    draw: st.DrawFn, low: datetime | None = None, high: datetime | None = None
) -> dict[str, Any]:
    """Optional not_before/not_after within [low, high] (a bound present is always kept)."""
    constraints: dict[str, Any] = {}
    options = [t for t in TIMES if (low is None or t >= low) and (high is None or t <= high)]
    nb: datetime | None = low
    if low is not None or draw(st.booleans()):
        nb = draw(st.sampled_from(options[:-1] or options))
    na: datetime | None = high
    later = [t for t in options if nb is None or t > nb]
    if (high is not None or draw(st.booleans())) and later:
        na = draw(st.sampled_from(later))
    if nb is not None:
        constraints["not_before"] = _stamp(nb, shifted=draw(st.booleans()))
    if na is not None:
        constraints["not_after"] = _stamp(na, shifted=draw(st.booleans()))
    return constraints


@st.composite
def _delegation(draw: st.DrawFn) -> dict[str, Any]:
    delegation: dict[str, Any] = {"max_depth": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        delegation["allowed_delegates"] = draw(_subsequence(PRINCIPALS))
    if draw(st.booleans()):
        children: dict[str, Any] = {}
        if draw(st.booleans()):
            children["max_children"] = draw(st.integers(0, 3))
        if draw(st.booleans()):
            children["max_child_depth"] = draw(st.integers(1, 3))
        if draw(st.booleans()):
            children["allowed_child_actors"] = draw(_subsequence(PRINCIPALS))
        delegation["children"] = children
    return delegation


@st.composite
def raw_entries(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": ENTRY_TYPE,
        "resource": draw(st.sampled_from(RESOURCES)),
        "actions": draw(_subsequence(ACTIONS, min_size=1)),
    }
    constraints = draw(_window())
    if draw(st.booleans()):
        constraints["stage"] = draw(st.sampled_from(STAGES))
    if draw(st.booleans()):
        constraints["max_calls"] = draw(st.integers(1, 5))
    if constraints or draw(st.booleans()):
        entry["constraints"] = constraints
    if draw(st.booleans()):
        entry["delegation"] = draw(_delegation())
    return entry


def authority_sets() -> st.SearchStrategy[AuthoritySet]:
    return st.lists(raw_entries(), min_size=1, max_size=3).map(
        lambda raw: parse_authority_set(raw, allow_wildcard=True)
    )


def _limit(draw: st.DrawFn, parent: int | None, low: int) -> int | None:
    """A limit no larger than ``parent`` (None = unlimited, only under an unlimited parent)."""
    if parent is None:
        return draw(st.none() | st.integers(low, 3))
    return draw(st.integers(low, parent))


@st.composite
def _narrowed_entry(draw: st.DrawFn, parent: AuthorityEntry, *, delegating: bool) -> Any:
    """A raw entry built to lie within ``parent``; ``None`` when narrowing cannot keep it valid."""
    resources = [r for r in RESOURCES if resource_covers(parent.resource, r)]
    actions = tuple(a for a in ACTIONS if any(action_covers(p, a) for p in parent.actions))
    entry: dict[str, Any] = {
        "type": ENTRY_TYPE,
        "resource": draw(st.sampled_from(resources)),
        "actions": draw(_subsequence(actions, min_size=1)),
    }
    constraints = draw(_window(parent.not_before, parent.not_after))
    stage = parent.stage or draw(st.none() | st.sampled_from(STAGES))
    if stage is not None:
        constraints["stage"] = stage
    calls = parent.max_calls
    max_calls = draw(st.integers(1, calls)) if calls else draw(st.none() | st.integers(1, 5))
    if max_calls is not None:
        constraints["max_calls"] = max_calls
    if constraints:
        entry["constraints"] = constraints
    policy = parent.delegation
    depth_cap = 0 if policy is None else policy.max_depth - (1 if delegating else 0)
    if policy is not None and depth_cap >= 1 and draw(st.booleans()):
        delegation: dict[str, Any] = {"max_depth": draw(st.integers(1, depth_cap))}
        delegates = [p for p in PRINCIPALS if _key(p) in policy.allowed_delegates]
        if delegates:
            delegation["allowed_delegates"] = draw(_subsequence(tuple(delegates)))
        if policy.children is not None and draw(st.booleans()):
            pc = policy.children
            children: dict[str, Any] = {}
            for name, value in (
                ("max_children", _limit(draw, pc.max_children, 0)),
                ("max_child_depth", _limit(draw, pc.max_child_depth, 1)),
            ):
                if value is not None:
                    children[name] = value
            allowed = tuple(
                p
                for p in PRINCIPALS
                if p.get("sub") in pc.allowed_child_actors
                or p.get("sub_profile") in pc.allowed_child_profiles
            )
            children["allowed_child_actors"] = draw(_subsequence(allowed))
            delegation["children"] = children
        entry["delegation"] = delegation
    return entry


def _key(principal: dict[str, str]) -> str:
    ((kind, name),) = principal.items()
    return f'{{"{kind}":"{name}"}}'


@st.composite
def narrowed(draw: st.DrawFn, parent: AuthoritySet, *, delegating: bool = False) -> AuthoritySet:
    """A child Set whose every entry narrows some (randomly chosen) parent entry."""
    raws = [
        draw(_narrowed_entry(draw(st.sampled_from(parent.entries)), delegating=delegating))
        for _ in range(draw(st.integers(1, 3)))
    ]
    return parse_authority_set(raws, allow_wildcard=True)


def children_of(parent: AuthoritySet, *, delegating: bool = False) -> Any:
    return st.one_of(narrowed(parent, delegating=delegating), authority_sets())


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, datetime, str | None]:
    return (
        draw(st.sampled_from(PROBE_ACTIONS)),
        draw(st.sampled_from(PROBE_RESOURCES)),
        draw(st.sampled_from(PROBE_TIMES)),
        draw(st.sampled_from((None, *STAGES))),
    )


# ----------------------------------------------------------------------------------- properties


@SETTINGS
@given(st.sampled_from(RESOURCES + ACTIONS), st.sampled_from(RESOURCES + ACTIONS))
def test_pattern_order_is_semantic(broad: str, narrow: str) -> None:
    """``covers(p, q)`` implies every probe ``q`` covers is covered by ``p``."""
    if resource_covers(broad, narrow):
        for probe in (*PROBE_RESOURCES, *PROBE_ACTIONS):
            if resource_covers(narrow, probe):
                assert resource_covers(broad, probe), (broad, narrow, probe)


@SETTINGS
@given(authority_sets())
def test_reflexive(s: AuthoritySet) -> None:
    assert subset_violation(s, s) is None
    assert subset_violation(s, parse_authority_set(s.to_json(), allow_wildcard=True)) is None


@SETTINGS
@given(st.data(), authority_sets(), st.booleans())
def test_narrowing_generator_yields_subsets(
    data: st.DataObject, parent: AuthoritySet, delegating: bool
) -> None:
    child = data.draw(narrowed(parent, delegating=delegating))
    assert subset_violation(parent, child, delegating=delegating) is None


@SETTINGS
@given(st.data(), authority_sets(), st.booleans())
def test_transitive(data: st.DataObject, a: AuthoritySet, delegating: bool) -> None:
    b = data.draw(children_of(a, delegating=delegating))
    assume(subset_violation(a, b, delegating=delegating) is None)
    c = data.draw(children_of(b, delegating=delegating))
    assume(subset_violation(b, c, delegating=delegating) is None)
    assert subset_violation(a, c, delegating=delegating) is None


@SETTINGS
@given(st.data(), authority_sets())
def test_delegating_is_stricter_than_in_place(data: st.DataObject, parent: AuthoritySet) -> None:
    child = data.draw(children_of(parent))
    if subset_violation(parent, child, delegating=True) is None:
        assert subset_violation(parent, child) is None


@SETTINGS
@given(st.data(), authority_sets(), st.booleans())
def test_sound(data: st.DataObject, parent: AuthoritySet, delegating: bool) -> None:
    """A subset never allows a request its parent refuses."""
    child = data.draw(children_of(parent, delegating=delegating))
    assume(subset_violation(parent, child, delegating=delegating) is None)
    for action, resource, at, stage in data.draw(st.lists(requests(), min_size=1, max_size=20)):
        by_child = evaluate(child, action=action, resource=resource, at=at, stage=stage)
        if by_child.allowed:
            by_parent = evaluate(parent, action=action, resource=resource, at=at, stage=stage)
            assert by_parent.allowed, (action, resource, at, stage, by_child, by_parent)


@SETTINGS
@given(
    st.data(),
    authority_sets(),
    st.sampled_from(AGENTS),
    st.dictionaries(st.integers(0, 2), st.integers(0, 4)),
)
def test_planned_delegation_is_attenuated(
    data: st.DataObject, parent: AuthoritySet, agent: str, live: dict[int, int]
) -> None:
    """Whenever a child is planned it is a delegating subset, its actor is allowed by name
    under the justifying entry, and that entry has room for one more child."""
    child = data.draw(children_of(parent, delegating=True))
    try:
        plan = plan_delegation(parent, child, child_agent=agent, live_children_per_entry=live)
    except DelegationDenied as exc:
        denied = exc.reason
    else:
        denied = None
    if denied is not None:
        assert denied in DENIALS
        return
    assert subset_violation(parent, child, delegating=True) is None
    policy = parent.entries[plan.justifying_entry].delegation
    assert policy is not None
    assert policy.children is not None
    assert agent in policy.children.allowed_child_actors
    limit = policy.children.max_children
    assert limit is None or live.get(plan.justifying_entry, 0) < limit
