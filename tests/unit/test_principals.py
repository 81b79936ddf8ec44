"""Principals on their own: registration rules, the access matrix, tokens and authentication.

The aggregate is exercised without a store; the registry runs on the in-memory store. The access
matrix is checked exhaustively over roles × operations × (own | someone else's) documents against
a table written out independently of the implementation.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from mission_ledger import principals as principals_module
from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.domain.chain import compute_hash, event_id_for, genesis_hash
from mission_ledger.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from mission_ledger.domain.principal import Principal as PrincipalAggregate
from mission_ledger.ledger import MissionLedger
from mission_ledger.principals import (
    MISSION_OPERATIONS,
    NEEDS_STORE,
    PROPOSAL_OPERATIONS,
    REFRESH_INTERVAL,
    ROLES,
    Principal,
    PrincipalRegistry,
    may_act_on_mission,
    may_act_on_proposal,
    may_view_mission,
    may_view_proposal,
    require_role,
)

NOW = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
HASH = hashlib.sha256(b"secret").hexdigest()
ERP = "https://erp.example.com"
AGENT = "agent:invoice-bot"


def register(**overrides: Any) -> PrincipalAggregate:
    fields: dict[str, Any] = {
        "principal_id": uuid4(),
        "role": "operator",
        "name": "olga",
        "token_hash": HASH,
        "actor": "operator:root",
        "now": NOW,
        **overrides,
    }
    return PrincipalAggregate.register(**fields)


def principal(role: str, **overrides: Any) -> Principal:
    fields: dict[str, Any] = {
        "principal_id": str(uuid4()),
        "name": f"{role}-1",
        "role": role,
        "agent": AGENT if role == "harness" else None,
        "audience": ERP if role == "receiver" else None,
        "resources": (f"{ERP}/invoices/",) if role == "receiver" else (),
        "all_missions": False,
        "revoked": False,
        "created_at": "2026-04-01T12:00:00Z",
        **overrides,
    }
    return Principal(**fields)


def entry(resource: str) -> dict[str, Any]:
    return {"type": "mission_resource_access", "resource": resource, "actions": ["x.read"]}


# -- the aggregate --------------------------------------------------------------------------------


def test_registered_event_is_chained_and_carries_the_registration() -> None:
    pid = uuid4()
    agg = register(
        principal_id=pid,
        role="receiver",
        name="erp",
        audience=ERP,
        resources=[f"{ERP}/invoices/", f"{ERP}/payments/*"],
    )
    (event,) = agg.collect_events()
    assert type(event).TOPIC == "mission_ledger.PrincipalRegistered.v1"
    assert PrincipalAggregate.TOPIC == "mission_ledger.Principal"
    assert event.originator_version == 1
    assert event.prev_hash == genesis_hash(pid)
    assert event.hash == compute_hash(event)
    assert event.event_id == event_id_for(pid, 1)
    assert event.actor == "operator:root"
    assert (event.name, event.role, event.agent, event.audience) == ("erp", "receiver", None, ERP)
    assert event.resources == [f"{ERP}/invoices/", f"{ERP}/payments/*"]
    assert event.all_missions is False
    assert event.token_hash == HASH
    assert event.created_at == "2026-04-01T12:00:00Z"
    assert not agg.revoked
    assert "token" not in vars(event)


def test_revoke_records_once_and_chains() -> None:
    agg = register()
    first = agg.collect_events()[0]
    assert agg.revoke(actor="operator:root", now=NOW, reason="left the company") is True
    assert agg.revoke(actor="operator:root", now=NOW) is False
    (event,) = agg.collect_events()
    assert type(event).TOPIC == "mission_ledger.PrincipalRevoked.v1"
    assert event.originator_version == 2
    assert event.prev_hash == first.hash
    assert event.hash == compute_hash(event)
    assert event.reason == "left the company"
    assert agg.revoked
    assert agg.revoked_at == "2026-04-01T12:00:00Z"


@pytest.mark.parametrize(
    "name", ["a", "alice@example.com", "agent:invoice-bot", "A.b_c-d", "x" * 64]
)
def test_valid_names(name: str) -> None:
    assert register(name=name).name == name


@pytest.mark.parametrize("name", ["", "x" * 65, "has space", "slash/no", "é", "tab\t", None, 7])
def test_invalid_names_are_refused(name: Any) -> None:
    with pytest.raises(InvalidInput) as caught:
        register(name=name)
    assert caught.value.field == "name"
    assert "1–64" in caught.value.description


def test_unknown_role_is_refused_naming_the_roles() -> None:
    with pytest.raises(InvalidInput) as caught:
        register(role="admin")
    assert caught.value.field == "role"
    assert all(role in caught.value.description for role in ROLES)


def test_harness_needs_an_agent() -> None:
    assert register(role="harness", agent=AGENT).agent == AGENT
    for agent in (None, "", "   "):
        with pytest.raises(InvalidInput) as caught:
            register(role="harness", agent=agent)
        assert caught.value.field == "agent"


@pytest.mark.parametrize("role", ["operator", "approver", "auditor", "receiver"])
def test_only_a_harness_takes_an_agent(role: str) -> None:
    extra = {"audience": ERP, "all_missions": True} if role == "receiver" else {}
    with pytest.raises(InvalidInput) as caught:
        register(role=role, agent=AGENT, **extra)
    assert caught.value.field == "agent"


@pytest.mark.parametrize("role", ["operator", "approver", "harness", "auditor"])
@pytest.mark.parametrize(
    ("option", "value"),
    [("audience", ERP), ("resources", [f"{ERP}/"]), ("all_missions", True)],
)
def test_only_a_receiver_takes_receiver_options(role: str, option: str, value: Any) -> None:
    extra = {"agent": AGENT} if role == "harness" else {}
    with pytest.raises(InvalidInput) as caught:
        register(role=role, **{option: value}, **extra)
    assert caught.value.field == option
    assert "receiver" in caught.value.description


def test_receiver_needs_an_audience() -> None:
    with pytest.raises(InvalidInput) as caught:
        register(role="receiver", all_missions=True)
    assert caught.value.field == "audience"


def test_receiver_must_choose_resources_or_all_missions() -> None:
    with pytest.raises(InvalidInput) as caught:
        register(role="receiver", audience=ERP)
    assert caught.value.field == "resources"
    assert "all_missions" in caught.value.description
    assert "resource prefix" in caught.value.description
    with pytest.raises(InvalidInput) as both:
        register(role="receiver", audience=ERP, resources=[f"{ERP}/"], all_missions=True)
    assert "either" in both.value.description
    assert register(role="receiver", audience=ERP, all_missions=True).all_missions


def test_receiver_prefixes_are_kept_in_order_without_duplicates() -> None:
    agg = register(
        role="receiver",
        audience=ERP,
        resources=[f"{ERP}/b/", f"{ERP}/a*", f"{ERP}/b/", "urn:example:erp:"],
    )
    assert agg.resources == [f"{ERP}/b/", f"{ERP}/a*", "urn:example:erp:"]


@pytest.mark.parametrize(
    ("prefix", "complaint"),
    [
        ("erp.example.com/invoices", "absolute URI"),
        ("/invoices", "absolute URI"),
        (f"{ERP}/*/x", "before its end"),
        (f"{ERP}/in voices", "whitespace"),
        ("https://", "whole URI scheme"),
        ("https://*", "whole URI scheme"),
        ("urn:", "whole URI scheme"),
        ("", "resource prefix"),
        (42, "resource prefix"),
    ],
)
def test_bad_resource_prefixes_are_refused(prefix: Any, complaint: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        register(role="receiver", audience=ERP, resources=[f"{ERP}/ok/", prefix])
    assert caught.value.field == "resources[1]"
    assert complaint in caught.value.description


def test_resources_must_be_a_list_and_all_missions_a_bool() -> None:
    with pytest.raises(InvalidInput) as caught:
        register(role="receiver", audience=ERP, resources=f"{ERP}/")
    assert caught.value.field == "resources"
    with pytest.raises(InvalidInput) as flag:
        register(role="receiver", audience=ERP, all_missions="yes")
    assert flag.value.field == "all_missions"


@pytest.mark.parametrize("token_hash", ["", "abc", HASH.upper(), HASH + "0", "g" * 64])
def test_token_hash_must_be_hex_sha256(token_hash: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        register(token_hash=token_hash)
    assert caught.value.field == "token_hash"


def test_actor_is_required() -> None:
    with pytest.raises(InvalidInput) as caught:
        register(actor=" ")
    assert caught.value.field == "actor"


# -- the read model -------------------------------------------------------------------------------


def test_actor_and_to_dict_hold_no_secret() -> None:
    p = principal("harness", name="bot")
    assert p.actor == "harness:bot"
    doc = p.to_dict()
    assert doc["actor"] == "harness:bot"
    assert doc["resources"] == []
    assert not {"token", "token_hash", "secret"} & set(doc)
    assert set(doc) >= {
        "principal_id",
        "name",
        "role",
        "agent",
        "audience",
        "resources",
        "all_missions",
        "revoked",
        "created_at",
    }


@pytest.mark.parametrize(
    ("prefixes", "resource", "visible"),
    [
        # the entry's resource lies under a prefix
        ((f"{ERP}/invoices/",), f"{ERP}/invoices/42", True),
        ((f"{ERP}/invoices/",), f"{ERP}/invoices/*", True),
        ((f"{ERP}/invoices/",), f"{ERP}/invoices/2026/*", True),
        ((f"{ERP}/invoices/*",), f"{ERP}/invoices/42", True),  # a trailing * changes nothing
        ((f"{ERP}/",), f"{ERP}/payments/7", True),  # the host path covers everything under it
        # the entry is a broader pattern: the Mission can touch the receiver's resources
        ((f"{ERP}/invoices",), f"{ERP}/*", True),
        ((f"{ERP}/invoices/",), "https://*", True),
        ((f"{ERP}/invoices/",), f"{ERP}/inv*", True),
        # unrelated
        ((f"{ERP}/invoices/",), f"{ERP}/payments/7", False),
        ((f"{ERP}/invoices/",), f"{ERP}/payments/*", False),
        ((f"{ERP}/invoices/",), f"{ERP}/invoices", False),  # exact resource above the prefix
        ((f"{ERP}/invoices/",), "https://mail.example.com/*", False),
        # the second prefix matches
        (("https://mail.example.com/", f"{ERP}/payments/"), f"{ERP}/payments/7", True),
        # without a trailing / or *, a prefix matches at a boundary only
        ((ERP,), f"{ERP}/payments/7", True),
        ((ERP,), ERP, True),
        ((ERP,), "https://erp.example.com.evil.org/x", False),
        ((ERP,), "https://erp.example.com.evil.org/*", False),
        ((f"{ERP}/invoices",), f"{ERP}/invoices-archive/1", False),
        ((f"{ERP}/invoices",), f"{ERP}/invoices?year=2026", True),
        ((f"{ERP}/inv*",), f"{ERP}/inventory/3", True),
    ],
)
def test_may_see_authority(prefixes: tuple[str, ...], resource: str, visible: bool) -> None:
    receiver = principal("receiver", resources=prefixes)
    assert receiver.may_see_authority([entry(resource)]) is visible
    other = entry("https://unrelated.example.org/x")
    assert receiver.may_see_authority([other, entry(resource)]) is visible


def test_may_see_authority_all_missions_and_other_roles() -> None:
    everything = principal("receiver", resources=(), all_missions=True)
    assert everything.may_see_authority([entry("https://anything.example/x")])
    assert principal("receiver").may_see_authority([]) is False
    for role in ("operator", "approver", "harness", "auditor"):
        assert principal(role).may_see_authority([entry("https://x.example/")])


def test_may_see_authority_ignores_malformed_entries() -> None:
    receiver = principal("receiver")
    malformed: list[Any] = [{"resource": 7}, {}, "not an entry"]
    assert receiver.may_see_authority(malformed) is False


# -- the access matrix ----------------------------------------------------------------------------

# Written out independently of the implementation: role → operations allowed (own | any).
MISSION_MATRIX: dict[str, dict[str, set[str]]] = {
    "operator": {"own": set(MISSION_OPERATIONS), "other": set(MISSION_OPERATIONS)},
    "approver": {"own": set(), "other": set()},
    "harness": {"own": {"delegate", "narrow", "complete", "successor"}, "other": set()},
    "auditor": {"own": set(), "other": set()},
    "receiver": {"own": set(), "other": set()},
}
PROPOSAL_MATRIX: dict[str, dict[str, set[str]]] = {
    "operator": {"own": set(PROPOSAL_OPERATIONS), "other": set(PROPOSAL_OPERATIONS)},
    "approver": {"own": {"approve", "deny"}, "other": {"approve", "deny"}},
    "harness": {"own": {"submit", "withdraw"}, "other": set()},
    "auditor": {"own": set(), "other": set()},
    "receiver": {"own": set(), "other": set()},
}


def test_operation_lists_are_the_documented_ones() -> None:
    assert set(MISSION_OPERATIONS) == {
        "suspend",
        "resume",
        "revoke",
        "complete",
        "narrow",
        "stage",
        "delegate",
        "successor",
    }
    assert set(PROPOSAL_OPERATIONS) == {"submit", "approve", "deny", "withdraw"}
    assert ROLES == ("operator", "approver", "harness", "auditor", "receiver")


def _docs() -> Iterator[tuple[str, dict[str, Any]]]:
    yield "own", {"agent": AGENT, "authority_set": [entry(f"{ERP}/invoices/1")]}
    yield "other", {"agent": "agent:someone-else", "authority_set": [entry(f"{ERP}/invoices/1")]}


@pytest.mark.parametrize(("role", "operation"), list(itertools.product(ROLES, MISSION_OPERATIONS)))
def test_mission_matrix(role: str, operation: str) -> None:
    p = principal(role)
    for whose, doc in _docs():
        expected = operation in MISSION_MATRIX[role][whose]
        assert may_act_on_mission(p, operation, doc) is expected, (role, operation, whose)


@pytest.mark.parametrize(("role", "operation"), list(itertools.product(ROLES, PROPOSAL_OPERATIONS)))
def test_proposal_matrix(role: str, operation: str) -> None:
    p = principal(role)
    for whose, doc in _docs():
        expected = operation in PROPOSAL_MATRIX[role][whose]
        assert may_act_on_proposal(p, operation, doc) is expected, (role, operation, whose)


@pytest.mark.parametrize("role", ROLES)
def test_view_matrix(role: str) -> None:
    p = principal(role)
    own, other = (doc for _, doc in _docs())
    unrelated = {"agent": AGENT, "authority_set": [entry("https://mail.example.com/x")]}
    sees_all = role in ("operator", "approver", "auditor")
    assert may_view_mission(p, own) is (sees_all or role in ("harness", "receiver"))
    assert may_view_mission(p, other) is (sees_all or role == "receiver")
    assert may_view_mission(p, unrelated) is (sees_all or role == "harness")
    assert may_view_proposal(p, own) is (sees_all or role == "harness")
    assert may_view_proposal(p, other) is sees_all


def test_receiver_with_all_missions_sees_every_mission_but_no_proposal() -> None:
    p = principal("receiver", resources=(), all_missions=True)
    doc = {"agent": AGENT, "authority_set": [entry("https://mail.example.com/x")]}
    assert may_view_mission(p, doc)
    assert not may_view_proposal(p, doc)
    assert not any(may_act_on_mission(p, op, doc) for op in MISSION_OPERATIONS)


def test_harness_without_matching_agent_or_document() -> None:
    harness = principal("harness")
    assert not may_act_on_proposal(harness, "submit", None)
    assert not may_act_on_proposal(harness, "withdraw", None)
    assert not may_view_mission(harness, {"authority_set": []})
    assert may_act_on_proposal(principal("operator"), "submit", None)
    assert may_act_on_proposal(principal("approver"), "approve", None)


def test_unknown_operations_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="unknown Mission operation"):
        may_act_on_mission(principal("operator"), "approve", {})
    with pytest.raises(ValueError, match="unknown proposal operation"):
        may_act_on_proposal(principal("operator"), "suspend", {})


def test_require_role() -> None:
    require_role(principal("auditor"), "auditor", "operator")
    with pytest.raises(Forbidden) as caught:
        require_role(principal("harness", name="bot"), "operator", "approver")
    assert caught.value.http_status == 403
    assert "operator or approver" in caught.value.description
    assert caught.value.details["required_roles"] == ["operator", "approver"]
    assert caught.value.details["role"] == "harness"


# -- tokens and authentication (in-memory store) --------------------------------------------------


@pytest.fixture
def ledger() -> Iterator[MissionLedger]:
    opened = open_ledger(Settings(database_url="memory:"))
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def registry(ledger: MissionLedger) -> PrincipalRegistry:
    return PrincipalRegistry(ledger)


def test_token_format_and_stored_hash(registry: PrincipalRegistry, ledger: MissionLedger) -> None:
    p, token = registry.create(role="auditor", name="audit", actor="operator:root")
    prefix, hex_id, secret = token[:4], token[4:36], token[37:]
    assert prefix == "mlt_"
    assert token[36] == "_"
    assert hex_id == UUID(p.principal_id).hex
    assert len(secret) == 43
    assert set(secret) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    (event,) = ledger.events.get(UUID(p.principal_id))
    assert event.token_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in repr(vars(event))
    assert registry.authenticate(token) == p
    other_principal, other = registry.create(role="auditor", name="audit-2", actor="x")
    assert other[37:] != secret
    assert other_principal.principal_id != p.principal_id


def test_authenticate_refuses_malformed_tokens(registry: PrincipalRegistry) -> None:
    p, token = registry.create(role="operator", name="olga", actor="operator:root")
    hex_id = UUID(p.principal_id).hex
    secret = token[37:]
    malformed = [
        "",
        token + "x",
        token[:-1],
        token.upper(),
        "mlt-" + token[4:],
        f"mlt_{hex_id}-{secret}",
        f"mlt_{hex_id.upper()}_{secret}",
        f"mlt_{hex_id}_{secret[:-1]}!",
        f"Bearer {token}",
        " " + token[1:],
    ]
    for candidate in malformed:
        assert registry.authenticate(candidate) is None, candidate
    assert registry.authenticate(None) is None  # type: ignore[arg-type]
    assert registry.authenticate(token) == p


def test_every_well_formed_token_goes_through_compare_digest(
    registry: PrincipalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, token = registry.create(role="operator", name="olga", actor="operator:root")
    calls: list[tuple[str, str]] = []
    real = principals_module.hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(principals_module.hmac, "compare_digest", spy)
    wrong_secret = token[:37] + ("A" if token[37] != "A" else "B") + token[38:]
    unknown_id = f"mlt_{uuid4().hex}_{token[37:]}"
    assert registry.authenticate(token) == p
    assert registry.authenticate(wrong_secret) is None
    assert registry.authenticate(unknown_id) is None  # compared against a dummy hash
    assert len(calls) == 3
    assert all(len(a) == len(b) == 64 for a, b in calls)
    registry.revoke(p.principal_id, actor="operator:root")
    assert registry.authenticate(token) is None
    assert len(calls) == 4


def test_names_are_unique_among_live_principals(registry: PrincipalRegistry) -> None:
    first, _ = registry.create(role="approver", name="bob", actor="operator:root")
    with pytest.raises(Conflict) as caught:
        registry.create(role="auditor", name="bob", actor="operator:root")
    assert first.principal_id in caught.value.description
    registry.revoke(first.principal_id, actor="operator:root")
    again, _ = registry.create(role="auditor", name="bob", actor="operator:root")
    assert again.principal_id != first.principal_id


def test_revoke_is_idempotent_and_get_finds_revoked(
    registry: PrincipalRegistry, ledger: MissionLedger
) -> None:
    p, _ = registry.create(role="approver", name="bob", actor="operator:root")
    assert registry.revoke(p.principal_id, actor="operator:root").revoked
    assert registry.revoke(p.principal_id, actor="operator:root").revoked
    assert len(list(ledger.events.get(UUID(p.principal_id)))) == 2
    assert registry.get(p.principal_id).revoked
    with pytest.raises(NotFound):
        registry.get(str(uuid4()))
    with pytest.raises(NotFound):
        registry.get("not-a-uuid")
    with pytest.raises(NotFound):
        registry.revoke(str(uuid4()), actor="operator:root")


def test_create_validates_before_writing(
    registry: PrincipalRegistry, ledger: MissionLedger
) -> None:
    with pytest.raises(InvalidInput):
        registry.create(role="receiver", name="erp", actor="operator:root", audience=ERP)
    with pytest.raises(InvalidInput):
        registry.create(role="harness", name="bot", actor="operator:root")
    assert ledger.recorder.max_notification_id() is None
    assert not registry.has_any()


def test_authenticate_in_memory_answers_only_from_a_fresh_cache(
    registry: PrincipalRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    p, token = registry.create(role="auditor", name="reader", actor="operator:root")
    assert registry.authenticate(token) == p  # fills and refreshes the cache
    assert registry.authenticate_in_memory(token) == p
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    assert registry.authenticate_in_memory(flipped) is None  # known principal, wrong secret
    assert registry.authenticate_in_memory("mlt_nonsense") is None  # malformed: no store needed
    unknown = f"mlt_{uuid4().hex}_{token[37:]}"
    assert registry.authenticate_in_memory(unknown) is NEEDS_STORE  # maybe created elsewhere
    stale = time.monotonic() + REFRESH_INTERVAL + 1
    monkeypatch.setattr(time, "monotonic", lambda: stale)
    assert registry.authenticate_in_memory(token) is NEEDS_STORE  # revocations may be pending
