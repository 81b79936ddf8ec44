"""Properties of attenuation: ⊆ is a preorder, and a subset never allows what its parent refuses.

Authority Sets are drawn from small alphabets so that coverage between entries is common. Child
Sets are drawn independently (and filtered), by narrowing a parent entry by entry, or by
narrowing and then redrawing one aspect of one entry, so that pairs just inside and just outside
the subset relation are both common. Pattern coverage is checked against ``fnmatch`` as an
oracle that shares no code with the module under test.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta, timezone
from fnmatch import fnmatchcase
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
from mission_ledger.domain.errors import DelegationDenied, InvalidAuthority

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
PROBE_TIMES = (
    datetime(2025, 12, 25, tzinfo=UTC),
    *(t + d for t in TIMES for d in (timedelta(0), -timedelta(microseconds=1))),
    datetime(2026, 1, 25, tzinfo=UTC),
)


def _stamp(t: datetime, *, shifted: bool) -> str:
    """The instant as RFC 3339, in UTC ("Z") or at +02:00: the same instant either way."""
    if shifted:
        return t.astimezone(timezone(timedelta(hours=2))).isoformat()
    return t.isoformat().replace("+00:00", "Z")


def _subsequence(items: tuple[Any, ...], *, min_size: int = 0) -> st.SearchStrategy[list[Any]]:
    """Distinct items (by position, so unhashable dicts work), each a fresh copy."""
    if not items:
        return st.just([])
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
    starts = [t for t in options if high is None or t < high]
    nb: datetime | None = low
    if starts and (low is not None or draw(st.booleans())):
        nb = draw(st.sampled_from(starts))
    na: datetime | None = high
    ends = [t for t in options if nb is None or t > nb]
    if ends and (high is not None or draw(st.booleans())):
        na = draw(st.sampled_from(ends))
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
    if bool(constraints) or draw(st.booleans()):
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


def _perturbed(draw: st.DrawFn, raw: dict[str, Any]) -> dict[str, Any]:
    """``raw`` with one aspect redrawn at random, which may or may not widen it."""
    entry = copy.deepcopy(raw)
    constraints = entry.setdefault("constraints", {})
    aspect = draw(
        st.sampled_from(
            ("resource", "actions", "not_before", "not_after", "stage", "max_calls", "delegation")
        )
    )
    if aspect == "resource":
        entry["resource"] = draw(st.sampled_from(RESOURCES))
    elif aspect == "actions":
        entry["actions"] = draw(_subsequence(ACTIONS, min_size=1))
    elif aspect in ("not_before", "not_after"):
        constraints.pop(aspect, None)
        if draw(st.booleans()):
            constraints[aspect] = _stamp(draw(st.sampled_from(TIMES)), shifted=False)
    elif aspect == "stage":
        constraints.pop("stage", None)
        if draw(st.booleans()):
            constraints["stage"] = draw(st.sampled_from(STAGES))
    elif aspect == "max_calls":
        constraints.pop("max_calls", None)
        if draw(st.booleans()):
            constraints["max_calls"] = draw(st.integers(1, 5))
    elif "delegation" in entry and draw(st.booleans()):
        entry["delegation"]["max_depth"] += 1
    else:
        entry["delegation"] = draw(_delegation())
    return entry


@st.composite
def narrowed(
    draw: st.DrawFn, parent: AuthoritySet, *, delegating: bool = False, perturb: bool = False
) -> AuthoritySet:
    """A child Set whose every entry narrows some (randomly chosen) parent entry; with
    ``perturb``, one entry then has one aspect redrawn, so it may fall just outside."""
    raws = [
        draw(_narrowed_entry(draw(st.sampled_from(parent.entries)), delegating=delegating))
        for _ in range(draw(st.integers(1, 3)))
    ]
    if perturb:
        index = draw(st.integers(0, len(raws) - 1))
        changed = [*raws[:index], _perturbed(draw, raws[index]), *raws[index + 1 :]]
        try:
            return parse_authority_set(changed, allow_wildcard=True)
        except InvalidAuthority:  # e.g. not_before now after not_after: keep the narrowing
            pass
    return parse_authority_set(raws, allow_wildcard=True)


def children_of(parent: AuthoritySet, *, delegating: bool = False) -> Any:
    """Child candidates: narrowed (1/4), narrowed then perturbed (1/2), or unrelated (1/4)."""
    perturbed = narrowed(parent, delegating=delegating, perturb=True)
    return st.one_of(
        narrowed(parent, delegating=delegating), perturbed, perturbed, authority_sets()
    )


def _concrete(value: str) -> str:
    """A concrete value a pattern covers (itself if it is not a pattern)."""
    return value[:-1] + "x" if value.endswith("*") else value


@st.composite
def requests(draw: st.DrawFn, s: AuthoritySet) -> tuple[str, str, datetime, str | None]:
    """A request: random over the probes, or aimed at one entry of ``s`` so it often matches."""
    if draw(st.booleans()):
        return (
            draw(st.sampled_from(PROBE_ACTIONS)),
            draw(st.sampled_from(PROBE_RESOURCES)),
            draw(st.sampled_from(PROBE_TIMES)),
            draw(st.sampled_from((None, *STAGES))),
        )
    e = draw(st.sampled_from(s.entries))
    at = e.not_before or draw(st.sampled_from(PROBE_TIMES))
    return (
        _concrete(draw(st.sampled_from(e.actions))),
        _concrete(e.resource),
        at,
        e.stage or draw(st.sampled_from((None, *STAGES))),
    )


@st.composite
def delegating_parents(draw: st.DrawFn, agent: str) -> AuthoritySet:
    """A Set in which at least one entry lets ``agent`` (and maybe others) create children."""
    raws = draw(st.lists(raw_entries(), min_size=1, max_size=3))
    for raw in raws[: draw(st.integers(1, len(raws)))]:
        delegation = raw.setdefault("delegation", {"max_depth": draw(st.integers(1, 3))})
        children = delegation.setdefault("children", {})
        actors = children.setdefault("allowed_child_actors", [])
        if {"sub": agent} not in actors and draw(st.integers(0, 4)) > 0:
            actors.append({"sub": agent})
    return parse_authority_set(raws, allow_wildcard=True)


# ----------------------------------------------------------------------------------- properties


def _patterns() -> st.SearchStrategy[str]:
    """Short strings over a tiny alphabet, half of them prefix patterns (``""+"*"`` is ``*``)."""
    return st.builds(
        lambda body, star: body + ("*" if star else ""), st.text("ab.", max_size=3), st.booleans()
    )


def _witnesses(value: str) -> list[str]:
    """Concrete strings ``value`` covers, enough to tell any pattern that misses some apart."""
    if not value.endswith("*"):
        return [value]
    return [value[:-1] + tail for tail in ("", "#", "~")]


@SETTINGS
@given(_patterns(), _patterns())
def test_pattern_coverage_matches_an_independent_oracle(pattern: str, value: str) -> None:
    """``covers(p, v)`` holds exactly when every concrete string ``v`` names matches ``p`` as a
    shell glob (fnmatch, independent of the code under test; ``*`` only ever trails)."""
    for covers in (resource_covers, action_covers):
        semantic = all(fnmatchcase(w, pattern) for w in _witnesses(value))
        assert covers(pattern, value) is semantic, (covers.__name__, pattern, value)


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


def _grid(s: AuthoritySet) -> list[tuple[str, str, datetime, str | None]]:
    """Every request aimed at an entry of ``s``: each of its actions and its resource (made
    concrete), at every probe instant, in every stage."""
    return [
        (_concrete(action), _concrete(e.resource), at, stage)
        for e in s.entries
        for action in e.actions
        for at in PROBE_TIMES
        for stage in (None, *STAGES)
    ]


def _assert_sound(
    parent: AuthoritySet, child: AuthoritySet, probes: list[tuple[str, str, datetime, str | None]]
) -> None:
    for action, resource, at, stage in probes:
        by_child = evaluate(child, action=action, resource=resource, at=at, stage=stage)
        if by_child.allowed:
            by_parent = evaluate(parent, action=action, resource=resource, at=at, stage=stage)
            assert by_parent.allowed, (action, resource, at, stage, by_child, by_parent)


@SETTINGS
@given(st.data(), authority_sets(), st.booleans())
def test_sound(data: st.DataObject, parent: AuthoritySet, delegating: bool) -> None:
    """A subset never allows a request its parent refuses."""
    child = data.draw(children_of(parent, delegating=delegating))
    assume(subset_violation(parent, child, delegating=delegating) is None)
    probes = data.draw(st.lists(requests(child), min_size=1, max_size=10))
    _assert_sound(parent, child, probes + _grid(child))


@SETTINGS
@given(st.data(), raw_entries())
def test_sound_against_single_perturbations(data: st.DataObject, raw: dict[str, Any]) -> None:
    """One parent entry, a child that narrows it and then redraws one aspect: whenever the
    redraw widened what the child allows, subset_violation must have noticed."""
    parent = parse_authority_set([raw], allow_wildcard=True)
    child = data.draw(narrowed(parent, perturb=True))
    if subset_violation(parent, child) is None:
        _assert_sound(parent, child, _grid(child))


@SETTINGS
@given(
    st.data(),
    st.sampled_from(AGENTS),
    st.booleans(),
    st.dictionaries(st.integers(0, 2), st.integers(0, 4)),
)
def test_planned_delegation_is_attenuated(
    data: st.DataObject, agent: str, biased: bool, live: dict[int, int]
) -> None:
    """Whenever a child is planned it is a delegating subset, its actor is allowed by name
    under the justifying entry, and that entry has room for one more child."""
    parent = data.draw(delegating_parents(agent) if biased else authority_sets())
    child = data.draw(children_of(parent, delegating=True))
    denied: str | None = None
    try:
        plan = plan_delegation(parent, child, child_agent=agent, live_children_per_entry=live)
    except DelegationDenied as exc:
        denied = exc.reason
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


@SETTINGS
@given(st.data(), st.sampled_from(AGENTS))
def test_delegation_chains_are_bounded(data: st.DataObject, agent: str) -> None:
    """However children are chosen, a chain of planned delegations never grows deeper than the
    root's largest max_depth, and no descendant's fan-out or actors exceed the root's."""
    root = data.draw(delegating_parents(agent))
    depth_cap = max(e.delegation.max_depth for e in root.entries if e.delegation)
    root_actors = {
        a for e in root.entries if e.delegation and e.delegation.children
        for a in e.delegation.children.allowed_child_actors
    }  # fmt: skip
    current, depth = root, 0
    for _ in range(depth_cap + 2):
        # the boldest candidate is the parent's own Set; in-place narrowings keep max_depth too
        child = data.draw(
            st.one_of(
                st.just(current),
                narrowed(current, perturb=True),
                children_of(current, delegating=True),
            )
        )
        try:
            plan_delegation(current, child, child_agent=agent, live_children_per_entry={})
        except DelegationDenied:
            continue
        depth += 1
        assert depth <= depth_cap, (depth, root.to_json(), child.to_json())
        for e in child.entries:
            if e.delegation and e.delegation.children:
                assert set(e.delegation.children.allowed_child_actors) <= root_actors
        current = child
