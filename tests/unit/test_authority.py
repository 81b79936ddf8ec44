"""Unit tests of Authority Sets: parsing, matching, attenuation, delegation planning, diffs."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from mission_ledger.domain.anchors import MISSION_AUTHORITY_SET, anchor
from mission_ledger.domain.authority import (
    ENTRY_TYPE,
    SUPPORTED_CONSTRAINTS,
    AuthorityEntry,
    AuthoritySet,
    ChildrenPolicy,
    DelegationPolicy,
    Evaluation,
    action_covers,
    authority_diff,
    entry_covers,
    evaluate,
    parse_authority_set,
    parse_entry,
    plan_delegation,
    resource_covers,
    subset_violation,
)
from mission_ledger.domain.errors import DelegationDenied, InvalidAuthority

ERP = "https://erp.example.com"
T0 = datetime(2026, 6, 1, tzinfo=UTC)

# The drafts' authority_hash test vector (mission-drafts-wire.md §1), copied exactly.
VECTOR_JSON = (
    '[{"type":"mission_resource_access","resource":"https://erp.example.com",'
    '"actions":["invoices.read"]},{"type":"mission_resource_access",'
    '"resource":"https://erp.example.com","actions":["journal-entries.write"],'
    '"constraints":{"max_amount":{"amount":"500.00","currency":"USD"}}}]'
)
VECTOR_HASH = "sha-256:vUCCfjGulit9u0qJ0Z6pQSNerZtXMqRlfJNCr4PzLro"


def entry(
    resource: Any = ERP,
    actions: Any = None,
    constraints: dict[str, Any] | None = None,
    delegation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    e: dict[str, Any] = {
        "type": ENTRY_TYPE,
        "resource": resource,
        "actions": ["invoices.read"] if actions is None else actions,
    }
    if constraints is not None:
        e["constraints"] = constraints
    if delegation is not None:
        e["delegation"] = delegation
    return e


def aset(*entries: dict[str, Any], allow_wildcard: bool = False) -> AuthoritySet:
    return parse_authority_set(list(entries), allow_wildcard=allow_wildcard)


def one(**kwargs: Any) -> AuthorityEntry:
    return parse_entry(entry(**kwargs), allow_wildcard=True, field="e")


def refused(raw: object, **kwargs: Any) -> InvalidAuthority:
    with pytest.raises(InvalidAuthority) as info:
        parse_authority_set(raw, **kwargs)
    assert info.value.code == "invalid_authority"
    return info.value


# ------------------------------------------------------------------------------------ parsing


def test_drafts_vector_is_refused_only_for_max_amount() -> None:
    value = json.loads(VECTOR_JSON)
    # the vector text is copied right: it hashes to the drafts' expected authority_hash
    assert anchor(MISSION_AUTHORITY_SET, "https://as.example.com", value) == VECTOR_HASH
    err = refused(value)
    assert err.field == "authority_set[1].constraints.max_amount"
    assert "cannot enforce constraint 'max_amount'" in err.description
    assert "not_before/not_after/stage/max_calls" in err.description

    del value[1]["constraints"]
    parsed = parse_authority_set(value)
    assert parsed.to_json() == value
    assert [e.actions for e in parsed.entries] == [("invoices.read",), ("journal-entries.write",)]
    assert json.dumps(parsed.to_json(), separators=(",", ":")) == VECTOR_JSON.replace(
        ',"constraints":{"max_amount":{"amount":"500.00","currency":"USD"}}', ""
    )


def test_parse_full_entry() -> None:
    raw = entry(
        resource=f"{ERP}/invoices/*",
        actions=["invoices.*", "journal.read"],
        constraints={
            "not_before": "2026-01-01T00:00:00Z",
            "not_after": "2026-12-31T23:59:59.5+02:00",
            "stage": "review",
            "max_calls": 10,
        },
        delegation={
            "max_depth": 2,
            "allowed_delegates": [{"sub_profile": "ai_agent"}, {"sub": "agent-9"}],
            "children": {
                "max_children": 5,
                "max_child_depth": 2,
                "allowed_child_actors": [{"sub": "agent-7"}, {"sub_profile": "ai_agent"}],
            },
        },
    )
    e = parse_entry(raw, allow_wildcard=False, field="x")
    assert e.resource == f"{ERP}/invoices/*"
    assert e.actions == ("invoices.*", "journal.read")
    assert e.not_before == datetime(2026, 1, 1, tzinfo=UTC)
    assert e.not_after == datetime(
        2026, 12, 31, 23, 59, 59, 500000, tzinfo=timezone(timedelta(hours=2))
    )
    assert e.stage == "review"
    assert e.max_calls == 10
    assert e.delegation == DelegationPolicy(
        max_depth=2,
        allowed_delegates=('{"sub_profile":"ai_agent"}', '{"sub":"agent-9"}'),
        children=ChildrenPolicy(
            max_children=5,
            max_child_depth=2,
            allowed_child_actors=("agent-7",),
            allowed_child_profiles=("ai_agent",),
        ),
    )
    assert not e.wildcard
    assert e.to_json() == raw


def test_raw_keeps_member_order_and_is_a_private_copy() -> None:
    raw: dict[str, Any] = {
        "actions": ["b", "a"],
        "constraints": {"stage": "s", "max_calls": 3},
        "resource": ERP,
        "type": ENTRY_TYPE,
    }
    parsed = parse_authority_set([raw])
    out = parsed.to_json()
    assert list(out[0]) == ["actions", "constraints", "resource", "type"]
    assert list(out[0]["constraints"]) == ["stage", "max_calls"]
    assert out[0]["actions"] == ["b", "a"]
    # mutating the input or an output changes nothing inside the parsed Set
    raw["actions"].append("c")
    out[0]["constraints"]["max_calls"] = 99
    again = parsed.to_json()
    assert again[0]["actions"] == ["b", "a"]
    assert again[0]["constraints"]["max_calls"] == 3
    assert again is not parsed.to_json()


def test_entries_from_tuples_and_mappings_come_back_as_json() -> None:
    parsed = parse_authority_set(({"type": ENTRY_TYPE, "resource": ERP, "actions": ("r",)},))
    assert parsed.to_json() == [{"type": ENTRY_TYPE, "resource": ERP, "actions": ["r"]}]


@pytest.mark.parametrize(
    ("raw", "field", "phrase"),
    [
        ({"type": ENTRY_TYPE}, "authority_set", "must be a JSON array"),
        ([], "authority_set", "is empty"),
        (["x"], "authority_set[0]", "must be a JSON object"),
        ([entry(), {1: 2}], "authority_set[1]", "must be a JSON object"),
        ([{**entry(), "extra": 1}], "authority_set[0].extra", "unknown member 'extra'"),
        ([{"type": ENTRY_TYPE, "actions": ["a"]}], "authority_set[0].resource", "is required"),
        ([{"type": ENTRY_TYPE, "resource": ERP}], "authority_set[0].actions", "is required"),
        ([{"resource": ERP, "actions": ["a"]}], "authority_set[0].type", "is required"),
        ([{**entry(), "type": "payment"}], "authority_set[0].type", "not supported"),
        ([entry(resource="")], "authority_set[0].resource", "non-empty string"),
        ([entry(resource=5)], "authority_set[0].resource", "not a number"),
        ([entry(resource="erp.example.com")], "authority_set[0].resource", "absolute URI"),
        ([entry(resource="/invoices")], "authority_set[0].resource", "absolute URI"),
        ([entry(resource="https://x/ a")], "authority_set[0].resource", "whitespace"),
        ([entry(resource="https://*.example.com")], "authority_set[0].resource", "before its"),
        ([entry(resource="https://x/**")], "authority_set[0].resource", "before its end"),
        ([entry(actions=[])], "authority_set[0].actions", "grants nothing"),
        ([entry(actions="read")], "authority_set[0].actions", "JSON array"),
        ([entry(actions=["read", ""])], "authority_set[0].actions[1]", "non-empty string"),
        ([entry(actions=["read", 3])], "authority_set[0].actions[1]", "non-empty"),
        ([entry(actions=["in*voices"])], "authority_set[0].actions[0]", "before its end"),
        ([entry(actions=["*.read"])], "authority_set[0].actions[0]", "before its end"),
        ([entry(actions=["a", "b", "a"])], "authority_set[0].actions[2]", "listed twice"),
        ([entry(), entry(actions=["r", "*"])], "authority_set[1].actions[1]", "allow_wildcard"),
        ([entry(actions=["\ud800"])], "authority_set[0].actions[0]", "lone surrogate"),
    ],
)
def test_structural_refusals(raw: object, field: str, phrase: str) -> None:
    err = refused(raw)
    assert err.field == field
    assert phrase in err.description


def test_custom_field_prefix() -> None:
    with pytest.raises(InvalidAuthority) as info:
        parse_authority_set([entry(actions=[])], field="proposal.authority")
    assert info.value.field == "proposal.authority[0].actions"
    with pytest.raises(InvalidAuthority) as info:
        parse_entry(entry(resource="x"), allow_wildcard=False, field="granted[3]")
    assert info.value.field == "granted[3].resource"


def test_wildcard_only_with_allow_wildcard() -> None:
    err = refused([entry(actions=["*"])])
    assert "set allow_wildcard with a reason" in err.description
    s = aset(entry(actions=["*"]), allow_wildcard=True)
    assert s.entries[0].wildcard
    assert s.has_wildcard
    narrow = aset(entry(actions=["invoices.*"]), entry(resource=f"{ERP}/*"))
    assert not narrow.has_wildcard
    assert not narrow.entries[0].wildcard


@pytest.mark.parametrize(
    ("constraints", "field", "phrase"),
    [
        ({"time_window": {}}, "constraints.time_window", "cannot enforce constraint"),
        ({"stage": "a", "tenant": "t"}, "constraints.tenant", "'tenant'"),
        ([], "constraints", "must be a JSON object"),
        ({"not_before": "2026-01-01T00:00:00"}, "constraints.not_before", "no timezone"),
        ({"not_after": "2026-01-01"}, "constraints.not_after", "not an RFC 3339"),
        ({"not_after": "2026-01-01 00:00:00Z"}, "constraints.not_after", "not an RFC 3339"),
        ({"not_after": "2026-02-30T00:00:00Z"}, "constraints.not_after", "not a valid"),
        ({"not_after": "2026-01-01T00:00:00.1234567Z"}, "constraints.not_after", "6 fractional"),
        ({"not_after": 1767225600}, "constraints.not_after", "non-empty string"),
        (
            {"not_before": "2026-02-01T00:00:00Z", "not_after": "2026-02-01T01:00:00+01:00"},
            "constraints.not_after",
            "earlier than not_after",
        ),
        ({"stage": ""}, "constraints.stage", "non-empty string"),
        ({"max_calls": 0}, "constraints.max_calls", "out of range"),
        ({"max_calls": True}, "constraints.max_calls", "not a boolean"),
        ({"max_calls": 2.0}, "constraints.max_calls", "must be an integer"),
        ({"max_calls": 2**53 + 1}, "constraints.max_calls", "out of range"),
    ],
)
def test_constraint_refusals(constraints: Any, field: str, phrase: str) -> None:
    err = refused([entry(constraints=constraints)])
    assert err.field == f"authority_set[0].{field}"
    assert phrase in err.description


def test_time_constraints_accept_z_lowercase_and_offsets() -> None:
    e = one(
        constraints={"not_before": "2026-01-01t10:00:00z", "not_after": "2026-01-01T12:00:00+01:00"}
    )
    assert e.not_before == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert e.not_after == datetime(2026, 1, 1, 11, tzinfo=UTC)
    assert e.not_after is not None
    assert e.not_after.utcoffset() == timedelta(hours=1)
    assert e.to_json()["constraints"]["not_before"] == "2026-01-01t10:00:00z"


@pytest.mark.parametrize(
    ("delegation", "field", "phrase"),
    [
        ("yes", "delegation", "JSON object"),
        ({}, "delegation.max_depth", "is required"),
        ({"max_depth": 0}, "delegation.max_depth", "out of range"),
        ({"max_depth": "1"}, "delegation.max_depth", "integer"),
        ({"max_depth": 1, "scope": "x"}, "delegation.scope", "unknown member"),
        ({"max_depth": 1, "allowed_delegates": {}}, "delegation.allowed_delegates", "array"),
        (
            {"max_depth": 1, "allowed_delegates": [{"sub": "a", "sub_profile": "b"}]},
            "delegation.allowed_delegates[0]",
            "exactly one member",
        ),
        (
            {"max_depth": 1, "allowed_delegates": [{"iss": "a"}]},
            "delegation.allowed_delegates[0]",
            "exactly one member",
        ),
        (
            {"max_depth": 1, "allowed_delegates": [{"sub": 7}]},
            "delegation.allowed_delegates[0].sub",
            "non-empty string",
        ),
        ({"max_depth": 1, "children": []}, "delegation.children", "JSON object"),
        (
            {"max_depth": 1, "children": {"max_children": -1}},
            "delegation.children.max_children",
            "out of range",
        ),
        (
            {"max_depth": 1, "children": {"max_child_depth": 0}},
            "delegation.children.max_child_depth",
            "out of range",
        ),
        (
            {"max_depth": 1, "children": {"max_fanout": 3}},
            "delegation.children.max_fanout",
            "unknown member",
        ),
        (
            {"max_depth": 1, "children": {"allowed_child_actors": [{"sub_profile": ""}]}},
            "delegation.children.allowed_child_actors[0].sub_profile",
            "non-empty string",
        ),
        (
            {"max_depth": 1, "children": {"allowed_child_actors": ["agent-7"]}},
            "delegation.children.allowed_child_actors[0]",
            "JSON object",
        ),
    ],
)
def test_delegation_refusals(delegation: Any, field: str, phrase: str) -> None:
    err = refused([entry(delegation=delegation)])
    assert err.field == f"authority_set[0].{field}"
    assert phrase in err.description


def test_delegation_defaults() -> None:
    e = one(delegation={"max_depth": 1, "children": {}})
    assert e.delegation == DelegationPolicy(
        max_depth=1,
        allowed_delegates=(),
        children=ChildrenPolicy(max_children=None, max_child_depth=None, allowed_child_actors=()),
    )
    assert one(delegation={"max_depth": 3}).delegation == DelegationPolicy(3, (), None)


def test_entries_are_hashable_and_compare_by_value() -> None:
    a = one(constraints={"stage": "s"})
    b = one(constraints={"stage": "s"})
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != one(constraints={"stage": "t"})


# ----------------------------------------------------------------------------------- matching


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("https://r/a", "https://r/a", True),
        ("https://r/a", "https://r/a/b", False),
        ("https://r/a", "https://r/ab", False),
        ("https://r/a/*", "https://r/a/b", True),
        ("https://r/a/*", "https://r/a/", True),
        ("https://r/a/*", "https://r/a", False),
        ("https://r/a*", "https://r/a", True),
        ("https://r/a*", "https://r/ab/c", True),
        ("https://r/*", "https://r/a/*", True),
        ("https://r/a/*", "https://r/a/*", True),
        ("https://r/a/*", "https://r/*", False),
        ("https://r/a", "https://r/a*", False),
        ("https://r/a/b/*", "https://r/a/*", False),
    ],
)
def test_resource_covers(pattern: str, value: str, expected: bool) -> None:
    assert resource_covers(pattern, value) is expected


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("invoices.read", "invoices.read", True),
        ("invoices.read", "invoices.write", False),
        ("invoices.*", "invoices.read", True),
        ("invoices.*", "invoices.x.*", True),
        ("invoices.*", "invoices.*", True),
        ("invoices.*", "invoices", False),
        ("invoices.*", "journal.read", False),
        ("invoices.*", "*", False),
        ("invoices.read", "invoices.*", False),
        ("*", "anything", True),
        ("*", "invoices.*", True),
        ("*", "*", True),
        ("inv*", "invoices.read", True),
    ],
)
def test_action_covers(pattern: str, value: str, expected: bool) -> None:
    assert action_covers(pattern, value) is expected


def test_evaluate_exact_prefix_and_out_of_authority() -> None:
    s = aset(
        entry(resource=f"{ERP}/invoices", actions=["invoices.read"]),
        entry(resource=f"{ERP}/journal/*", actions=["journal.*"]),
    )

    def ev(action: str, resource: str) -> Evaluation:
        return evaluate(s, action=action, resource=resource, at=T0, stage=None)

    assert ev("invoices.read", f"{ERP}/invoices") == Evaluation(True, "allowed", 0)
    assert ev("journal.post", f"{ERP}/journal/2026/7") == Evaluation(True, "allowed", 1)
    assert ev("journal.post.reverse", f"{ERP}/journal/x") == Evaluation(True, "allowed", 1)
    assert ev("invoices.write", f"{ERP}/invoices") == Evaluation(False, "out_of_authority", None)
    assert ev("invoices.read", f"{ERP}/invoices/1") == Evaluation(False, "out_of_authority", None)
    assert ev("journal.post", f"{ERP}/journal") == Evaluation(False, "out_of_authority", None)
    assert ev("invoices.read", f"{ERP}/journal/1") == Evaluation(False, "out_of_authority", None)


def test_evaluate_wildcard_action() -> None:
    s = aset(entry(resource=f"{ERP}/*", actions=["*"]), allow_wildcard=True)
    for action in ("invoices.read", "delete", "x.*"):
        got = evaluate(s, action=action, resource=f"{ERP}/a", at=T0, stage=None)
        assert got == Evaluation(True, "allowed", 0)
    got = evaluate(s, action="read", resource="https://other.example.com/a", at=T0, stage=None)
    assert got == Evaluation(False, "out_of_authority", None)


def test_evaluate_time_window_is_half_open() -> None:
    s = aset(
        entry(
            constraints={"not_before": "2026-06-01T00:00:00Z", "not_after": "2026-06-02T00:00:00Z"}
        )
    )

    def at(t: datetime) -> Evaluation:
        return evaluate(s, action="invoices.read", resource=ERP, at=t, stage=None)

    assert at(T0 - timedelta(microseconds=1)) == Evaluation(False, "not_yet_valid", 0)
    assert at(T0) == Evaluation(True, "allowed", 0)
    assert at(T0 + timedelta(hours=23, minutes=59)) == Evaluation(True, "allowed", 0)
    assert at(T0 + timedelta(days=1)) == Evaluation(False, "expired", 0)
    # offsets compare as instants: 02:00+02:00 is midnight UTC
    plus2 = datetime(2026, 6, 1, 2, tzinfo=timezone(timedelta(hours=2)))
    assert at(plus2) == Evaluation(True, "allowed", 0)


def test_evaluate_stage() -> None:
    s = aset(entry(constraints={"stage": "review"}))
    got = evaluate(s, action="invoices.read", resource=ERP, at=T0, stage="review")
    assert got == Evaluation(True, "allowed", 0)
    for stage in ("draft", None):
        got = evaluate(s, action="invoices.read", resource=ERP, at=T0, stage=stage)
        assert got == Evaluation(False, "stage_not_active", 0)
    unconstrained = aset(entry())
    got = evaluate(unconstrained, action="invoices.read", resource=ERP, at=T0, stage="any")
    assert got.allowed


def test_evaluate_picks_first_valid_then_first_refusal() -> None:
    s = aset(
        entry(constraints={"stage": "review"}),
        entry(constraints={"not_after": "2026-01-01T00:00:00Z"}),
        entry(constraints={"not_before": "2026-03-01T00:00:00Z"}),
        entry(actions=["other"]),
    )
    got = evaluate(s, action="invoices.read", resource=ERP, at=T0, stage="draft")
    assert got == Evaluation(True, "allowed", 2)
    early = datetime(2025, 6, 1, tzinfo=UTC)
    got = evaluate(s, action="invoices.read", resource=ERP, at=early, stage="draft")
    assert got == Evaluation(True, "allowed", 1)
    gap = datetime(2026, 2, 1, tzinfo=UTC)  # between entry 1's end and entry 2's start
    got = evaluate(s, action="invoices.read", resource=ERP, at=gap, stage="draft")
    assert got == Evaluation(False, "stage_not_active", 0)
    got = evaluate(s, action="invoices.read", resource=ERP, at=gap, stage="review")
    assert got == Evaluation(True, "allowed", 0)
    later = aset(*[e.to_json() for e in s.entries[1:]])
    got = evaluate(later, action="invoices.read", resource=ERP, at=gap, stage=None)
    assert got == Evaluation(False, "expired", 0)


def test_evaluate_ignores_max_calls_and_needs_aware_time() -> None:
    s = aset(entry(constraints={"max_calls": 1}))
    assert evaluate(s, action="invoices.read", resource=ERP, at=T0, stage=None).allowed
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(s, action="invoices.read", resource=ERP, at=datetime(2026, 1, 1), stage=None)


# -------------------------------------------------------------------------------- attenuation

DELEG: dict[str, Any] = {
    "max_depth": 3,
    "allowed_delegates": [{"sub": "a"}, {"sub_profile": "p"}],
    "children": {
        "max_children": 4,
        "max_child_depth": 2,
        "allowed_child_actors": [{"sub": "agent-7"}, {"sub": "agent-8"}, {"sub_profile": "p"}],
    },
}


def with_children(**changes: Any) -> dict[str, Any]:
    d = copy.deepcopy(DELEG)
    d["children"].update(changes)
    for name, value in changes.items():
        if value is None:
            del d["children"][name]
    return d


@pytest.mark.parametrize(
    ("parent", "child", "phrase"),
    [
        # resource
        ({"resource": f"{ERP}/*"}, {"resource": f"{ERP}/a"}, None),
        ({"resource": f"{ERP}/*"}, {"resource": f"{ERP}/a/*"}, None),
        ({"resource": f"{ERP}/a"}, {"resource": f"{ERP}/a/*"}, "resource"),
        ({"resource": f"{ERP}/a/*"}, {"resource": f"{ERP}/*"}, "resource"),
        ({"resource": f"{ERP}/a"}, {"resource": f"{ERP}/b"}, "resource"),
        # actions
        ({"actions": ["inv.*"]}, {"actions": ["inv.read", "inv.x.*"]}, None),
        ({"actions": ["inv.read", "inv.write"]}, {"actions": ["inv.write"]}, None),
        ({"actions": ["inv.read"]}, {"actions": ["inv.read", "inv.write"]}, "'inv.write'"),
        ({"actions": ["inv.read"]}, {"actions": ["inv.*"]}, "'inv.*'"),
        ({"actions": ["*"]}, {"actions": ["anything", "*"]}, None),
        ({"actions": ["inv.*"]}, {"actions": ["*"]}, "'*'"),
        # not_before
        (
            {"constraints": {"not_before": "2026-01-01T00:00:00Z"}},
            {"constraints": {"not_before": "2026-01-01T01:00:00+01:00"}},
            None,
        ),
        ({"constraints": {"not_before": "2026-01-01T00:00:00Z"}}, {}, "not_before"),
        (
            {"constraints": {"not_before": "2026-01-01T00:00:00Z"}},
            {"constraints": {"not_before": "2025-12-31T23:59:59Z"}},
            "not_before",
        ),
        ({}, {"constraints": {"not_before": "2025-12-31T23:59:59Z"}}, None),
        # not_after
        (
            {"constraints": {"not_after": "2026-01-01T00:00:00Z"}},
            {"constraints": {"not_after": "2025-06-01T00:00:00Z"}},
            None,
        ),
        ({"constraints": {"not_after": "2026-01-01T00:00:00Z"}}, {}, "not_after"),
        (
            {"constraints": {"not_after": "2026-01-01T00:00:00Z"}},
            {"constraints": {"not_after": "2026-01-01T00:00:00.000001Z"}},
            "not_after",
        ),
        # stage
        ({"constraints": {"stage": "s"}}, {"constraints": {"stage": "s"}}, None),
        ({"constraints": {"stage": "s"}}, {"constraints": {"stage": "t"}}, "stage"),
        ({"constraints": {"stage": "s"}}, {}, "stage"),
        ({}, {"constraints": {"stage": "t"}}, None),
        # max_calls
        ({"constraints": {"max_calls": 5}}, {"constraints": {"max_calls": 5}}, None),
        ({"constraints": {"max_calls": 5}}, {"constraints": {"max_calls": 6}}, "max_calls"),
        ({"constraints": {"max_calls": 5}}, {}, "max_calls"),
        ({}, {"constraints": {"max_calls": 1}}, None),
        # delegation presence
        ({}, {"delegation": {"max_depth": 1}}, "parent entry has none"),
        ({"delegation": DELEG}, {}, None),
        # allowed_delegates
        ({"delegation": DELEG}, {"delegation": {"max_depth": 2}}, None),
        (
            {"delegation": DELEG},
            {"delegation": {"max_depth": 2, "allowed_delegates": [{"sub_profile": "p"}]}},
            None,
        ),
        (
            {"delegation": DELEG},
            {"delegation": {"max_depth": 2, "allowed_delegates": [{"sub": "b"}]}},
            "allowed_delegates",
        ),
        (
            {"delegation": DELEG},
            {"delegation": {"max_depth": 2, "allowed_delegates": [{"sub": "p"}]}},
            "allowed_delegates",
        ),
        (
            {"delegation": {"max_depth": 2}},
            {"delegation": {"max_depth": 1, "allowed_delegates": [{"sub": "a"}]}},
            "allowed_delegates",
        ),
        # children
        (
            {"delegation": {"max_depth": 2}},
            {"delegation": {"max_depth": 1, "children": {}}},
            "may not",
        ),
        ({"delegation": DELEG}, {"delegation": with_children(max_children=4)}, None),
        ({"delegation": DELEG}, {"delegation": with_children(max_children=5)}, "max_children"),
        ({"delegation": DELEG}, {"delegation": with_children(max_children=None)}, "unlimited"),
        (
            {"delegation": with_children(max_children=None)},
            {"delegation": with_children(max_children=1000)},
            None,
        ),
        (
            {"delegation": DELEG},
            {"delegation": with_children(max_child_depth=3)},
            "max_child_depth",
        ),
        (
            {"delegation": DELEG},
            {"delegation": with_children(max_child_depth=None)},
            "max_child_depth",
        ),
        (
            {"delegation": DELEG},
            {"delegation": with_children(allowed_child_actors=[{"sub": "agent-8"}])},
            None,
        ),
        (
            {"delegation": DELEG},
            {"delegation": with_children(allowed_child_actors=[{"sub": "agent-9"}])},
            "'agent-9'",
        ),
        (
            {"delegation": DELEG},
            {"delegation": with_children(allowed_child_actors=[{"sub_profile": "q"}])},
            "sub_profile 'q'",
        ),
    ],
)
def test_entry_covers_in_place(
    parent: dict[str, Any], child: dict[str, Any], phrase: str | None
) -> None:
    p, c = one(**parent), one(**child)
    reason = entry_covers(p, c)
    if phrase is None:
        assert reason is None
    else:
        assert reason is not None
        assert phrase in reason


def test_max_depth_in_place_versus_delegating() -> None:
    p = one(delegation={"max_depth": 2})
    same = one(delegation={"max_depth": 2})
    lower = one(delegation={"max_depth": 1})
    none = one()
    assert entry_covers(p, same) is None
    assert entry_covers(p, lower) is None
    assert entry_covers(p, one(delegation={"max_depth": 3})) == (
        "delegation.max_depth 3 exceeds the allowed 2"
    )
    assert entry_covers(p, same, delegating=True) == "delegation.max_depth 2 exceeds the allowed 1"
    assert entry_covers(p, lower, delegating=True) is None
    assert entry_covers(p, none, delegating=True) is None
    leaf = one(delegation={"max_depth": 1})
    reason = entry_covers(leaf, lower, delegating=True)
    assert reason is not None
    assert "max_depth is 1, so a child may hold no delegation" in reason
    assert entry_covers(leaf, none, delegating=True) is None


def test_subset_violation_is_entrywise_and_not_positional() -> None:
    parent = aset(
        entry(resource=f"{ERP}/invoices/*", actions=["invoices.*"]),
        entry(resource=f"{ERP}/journal", actions=["journal.read", "journal.write"]),
    )
    child = aset(
        entry(resource=f"{ERP}/journal", actions=["journal.read"]),
        entry(resource=f"{ERP}/invoices/7", actions=["invoices.read"]),
        entry(resource=f"{ERP}/invoices/*", actions=["invoices.pay"]),
    )
    assert subset_violation(parent, child) is None
    assert subset_violation(parent, parent) is None
    bad = aset(entry(resource=f"{ERP}/journal", actions=["journal.read"]), entry(resource=ERP))
    reason = subset_violation(parent, bad)
    assert reason is not None
    assert reason.startswith("entry 1 is not within the parent's authority")
    assert "parent entry 0" in reason
    # the closest parent entry is the one whose resource covers the child's
    wrong_action = aset(entry(resource=f"{ERP}/journal", actions=["journal.delete"]))
    reason = subset_violation(parent, wrong_action)
    assert reason is not None
    assert "closest is parent entry 1: action 'journal.delete'" in reason
    assert subset_violation(child, parent) is not None


def test_subset_violation_delegating_flag() -> None:
    s = aset(entry(delegation={"max_depth": 1}))
    assert subset_violation(s, s) is None
    reason = subset_violation(s, s, delegating=True)
    assert reason is not None
    assert "max_depth is 1" in reason


# ----------------------------------------------------------------------------- plan_delegation


def parent_set() -> AuthoritySet:
    return aset(
        entry(resource=f"{ERP}/journal", actions=["journal.read"]),  # no delegation
        entry(
            resource=f"{ERP}/archive/*",
            actions=["archive.*"],
            delegation={"max_depth": 2, "children": {"allowed_child_actors": [{"sub": "other"}]}},
        ),
        entry(
            resource=f"{ERP}/invoices/*",
            actions=["invoices.read"],
            delegation={
                "max_depth": 2,
                "children": {
                    "max_children": 2,
                    "allowed_child_actors": [{"sub": "agent-7"}, {"sub_profile": "ai_agent"}],
                },
            },
        ),
        entry(
            resource=f"{ERP}/invoices/*",
            actions=["*"],
            delegation={
                "max_depth": 1,
                "children": {"allowed_child_actors": [{"sub": "agent-7"}]},
            },
        ),
        allow_wildcard=True,
    )


def plan(
    parent: AuthoritySet, child: AuthoritySet, agent: str = "agent-7", **live: int
) -> DelegationDenied | int:
    counts = {int(k[1:]): v for k, v in live.items()}
    try:
        return plan_delegation(
            parent, child, child_agent=agent, live_children_per_entry=counts
        ).justifying_entry
    except DelegationDenied as exc:
        return exc


def denial(result: DelegationDenied | int, reason: str) -> DelegationDenied:
    assert isinstance(result, DelegationDenied), f"expected a denial, got plan {result}"
    assert result.reason == reason
    assert result.code == "delegation_denied"
    assert result.to_dict()["mission_denial_reason"] == reason
    return result


def test_delegation_not_permitted() -> None:
    parent = aset(entry(), entry(delegation={"max_depth": 3}))
    err = denial(plan(parent, aset(entry())), "delegation_not_permitted")
    assert "delegation.children" in err.description


def test_child_actor_not_allowed() -> None:
    parent = aset(entry(delegation={"max_depth": 2, "children": {}}))
    denial(plan(parent, aset(entry())), "child_actor_not_allowed")  # missing list denies
    parent = aset(
        entry(
            delegation={
                "max_depth": 2,
                "children": {"allowed_child_actors": [{"sub_profile": "ai_agent"}]},
            }
        )
    )
    err = denial(plan(parent, aset(entry()), agent="ai_agent"), "child_actor_not_allowed")
    assert "sub_profile is never honoured" in err.description
    denial(plan(parent_set(), aset(entry()), agent="agent-99"), "child_actor_not_allowed")
    # checked before the subset rule: an out-of-scope child by a stranger is an actor denial
    denial(
        plan(parent_set(), aset(entry(resource="https://x/")), agent="z"), "child_actor_not_allowed"
    )


def test_not_strict_subset() -> None:
    parent = parent_set()
    # covered by entry 0 only, but entry 0 permits no children
    err = denial(
        plan(parent, aset(entry(resource=f"{ERP}/journal", actions=["journal.read"]))),
        "not_strict_subset",
    )
    assert err.details["child_entry"] == 0
    # child entry 1 is covered by entry 1 only, which does not list agent-7
    child = aset(
        entry(resource=f"{ERP}/invoices/1"),
        entry(resource=f"{ERP}/archive/1", actions=["archive.read"]),
    )
    assert subset_violation(parent, child) is None
    err = denial(plan(parent, child), "not_strict_subset")
    assert err.details["child_entry"] == 1
    assert "child entry 1 is not within any parent entry that permits children" in err.description
    # the same delegation depth as the parent entry is not a strict subset
    err = denial(
        plan(parent, aset(entry(resource=f"{ERP}/invoices/1", delegation={"max_depth": 2}))),
        "not_strict_subset",
    )
    assert "closest is parent entry 2: delegation.max_depth 2 exceeds the allowed 1" in (
        err.description
    )
    # a max_depth 1 entry lets children hold no delegation at all
    leaf = aset(
        entry(
            delegation={"max_depth": 1, "children": {"allowed_child_actors": [{"sub": "agent-7"}]}}
        )
    )
    err = denial(plan(leaf, aset(entry(delegation={"max_depth": 1}))), "not_strict_subset")
    assert "may hold no delegation" in err.description
    assert plan(leaf, aset(entry())) == 0


def test_plan_justifying_entry_and_fanout() -> None:
    parent = parent_set()
    reader = aset(entry(resource=f"{ERP}/invoices/1", actions=["invoices.read"]))
    assert plan(parent, reader) == 2
    # entry 2 is full, but it is the justifying entry: the child counts against it alone
    denial(plan(parent, reader, e2=2), "fanout_exceeded")
    assert plan(parent, reader, e2=1) == 2
    assert plan(parent, reader, e3=100) == 2
    err = denial(plan(parent, reader, e2=5), "fanout_exceeded")
    assert err.details["parent_entry"] == 2
    assert "already has 5 live child Missions of the 2" in err.description
    # a child only entry 3 covers is justified by entry 3 (unlimited)
    payer = aset(entry(resource=f"{ERP}/invoices/1", actions=["invoices.pay"]))
    assert plan(parent, payer, e2=2) == 3
    # mixed: the first candidate covering any child entry justifies it
    mixed = aset(
        entry(resource=f"{ERP}/invoices/1", actions=["invoices.pay"]),
        entry(resource=f"{ERP}/invoices/2", actions=["invoices.read"]),
    )
    assert plan(parent, mixed) == 2
    denial(plan(parent, mixed, e2=2), "fanout_exceeded")
    zero = aset(entry(delegation={"max_depth": 2, "children": {"max_children": 0,
        "allowed_child_actors": [{"sub": "agent-7"}]}}))  # fmt: skip
    denial(plan(zero, aset(entry())), "fanout_exceeded")


def test_plan_allows_delegation_one_level_down() -> None:
    parent = aset(
        entry(
            resource=f"{ERP}/*",
            actions=["invoices.*"],
            delegation={
                "max_depth": 3,
                "allowed_delegates": [{"sub": "agent-8"}],
                "children": {"max_children": 3, "allowed_child_actors": [{"sub": "agent-7"}]},
            },
        )
    )
    child = aset(
        entry(
            resource=f"{ERP}/invoices/*",
            actions=["invoices.read"],
            delegation={
                "max_depth": 2,
                "allowed_delegates": [{"sub": "agent-8"}],
                "children": {"max_children": 1, "allowed_child_actors": [{"sub": "agent-7"}]},
            },
        )
    )
    assert plan(parent, child, e0=2) == 0
    err = denial(plan(parent, child, e0=3), "fanout_exceeded")
    assert err.details["parent_entry"] == 0


# -------------------------------------------------------------------------------------- diff


def test_diff_identical() -> None:
    s = aset(entry(), entry(resource=f"{ERP}/x", actions=["a", "b"]))
    reordered_members = aset(
        {"actions": ["invoices.read"], "resource": ERP, "type": ENTRY_TYPE},
        entry(resource=f"{ERP}/x", actions=["a", "b"]),
    )
    expected = {"identical": True, "removed": [], "added": [], "narrowed": [], "widened": []}
    assert authority_diff(s, s) == expected
    assert authority_diff(s, reordered_members) == expected


def test_diff_narrowed_removed_added_widened() -> None:
    requested = aset(
        entry(resource=f"{ERP}/invoices/*", actions=["invoices.*"]),
        entry(resource=f"{ERP}/journal", actions=["journal.write"]),
        entry(resource=f"{ERP}/reports", actions=["reports.read"]),
    )
    granted = aset(
        entry(resource=f"{ERP}/reports", actions=["reports.read"]),  # kept
        entry(resource=f"{ERP}/invoices/*", actions=["invoices.read"]),  # narrowed from 0
        entry(resource=f"{ERP}/journal", actions=["journal.write", "journal.read"]),  # widened
        entry(
            resource=f"{ERP}/invoices/*",
            actions=["invoices.*"],
            constraints={"max_calls": 10},
        ),  # narrowed from 0 by a constraint
    )
    diff = authority_diff(requested, granted)
    assert diff == {
        "identical": False,
        "removed": [requested.to_json()[0], requested.to_json()[1]],
        "added": [granted.to_json()[1], granted.to_json()[2], granted.to_json()[3]],
        "narrowed": [
            {"requested_index": 0, "granted_index": 1},
            {"requested_index": 0, "granted_index": 3},
        ],
        "widened": [{"granted_index": 2}],
    }
    json.dumps(diff)  # JSON-able
    assert authority_diff(requested, granted) == diff  # deterministic


def test_diff_reorder_and_equivalent_rewrite() -> None:
    a = entry(resource=f"{ERP}/a", actions=["r", "w"])
    b = entry(resource=f"{ERP}/b")
    diff = authority_diff(aset(a, b), aset(b, a))
    assert diff == {"identical": False, "removed": [], "added": [], "narrowed": [], "widened": []}
    rewritten = entry(resource=f"{ERP}/a", actions=["w", "r"])  # same authority, other JSON
    diff = authority_diff(aset(a), aset(rewritten))
    assert diff["removed"] == [a]
    assert diff["added"] == [rewritten]
    assert diff["narrowed"] == []
    assert diff["widened"] == []


def test_diff_narrowed_prefers_a_strictly_larger_requested_entry() -> None:
    narrow = entry(resource=f"{ERP}/a", actions=["r"])
    rewritten = entry(resource=f"{ERP}/a", actions=["r"], constraints={})
    wide = entry(resource=f"{ERP}/*", actions=["r"])
    diff = authority_diff(aset(narrow, wide), aset(rewritten))
    assert diff["narrowed"] == [{"requested_index": 1, "granted_index": 0}]


def test_supported_constraints_constant() -> None:
    assert frozenset({"not_before", "not_after", "stage", "max_calls"}) == SUPPORTED_CONSTRAINTS
