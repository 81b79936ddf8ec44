"""Authorization checks: the live view, historical checks, AuthZEN and AgentPass shapes.

Every test runs a real in-memory ledger on a :class:`FixedClock` and a started
:class:`LiveAuthorizationView` tailing it; commands are followed by ``wait_for`` their position.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mission_ledger import checks
from mission_ledger.checks import (
    REASONS,
    CheckResult,
    LiveAuthorizationView,
    MissionRow,
    agentpass_configuration,
    agentpass_scope,
    authzen_evaluate,
    authzen_evaluations,
    check_at,
    load_rows_from_log,
    load_rows_from_views,
    mission_row_from_view,
)
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import InvalidInput
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.errors import Unavailable
from mission_ledger.ledger import CommandResult, MissionLedger
from mission_ledger.projections import ProjectionStore, ProjectionWorker
from tests.integration.contract_fixtures import (
    AGENT,
    DAY,
    ERP,
    HOUR,
    MAIL,
    OPERATOR,
    T0,
    child_authority,
    children_policy,
    default_authority,
    entry,
    open_child,
    open_mission,
    open_tree,
    position,
    propose,
)

INVOICE = f"{ERP}/invoices/7"


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def ledger(clock: FixedClock) -> Iterator[MissionLedger]:
    app = MissionLedger(Settings(database_url="memory:"), clock=clock)
    yield app
    app.close()


@pytest.fixture
def view(ledger: MissionLedger) -> Iterator[LiveAuthorizationView]:
    live = LiveAuthorizationView(ledger)
    live.start()
    yield live
    live.stop()


def synced(view: LiveAuthorizationView, ledger: MissionLedger) -> LiveAuthorizationView:
    """Wait until the view reflects everything the ledger stored so far."""
    assert view.wait_for(position(ledger), timeout=2.0)
    return view


def applied(view: LiveAuthorizationView, result: CommandResult) -> None:
    assert result.position is not None
    assert view.wait_for(result.position, timeout=2.0)


def check(
    view: LiveAuthorizationView,
    ledger: MissionLedger,
    mission_id: str,
    action: str = "invoices.read",
    resource: str = INVOICE,
) -> CheckResult:
    synced(view, ledger)
    return view.check(mission_id, action=action, resource=resource, now=ledger.clock.now())


# ---------------------------------------------------------------------------------------------
# Reasons
# ---------------------------------------------------------------------------------------------


def test_an_allowed_check_names_the_granting_entry(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    result = check(view, ledger, mid, "mail.send", MAIL)
    assert (result.decision, result.reason) == ("allow", "allowed")
    assert result.grant == {"entry_index": 1, "entry": default_authority()[1]}
    assert result.mission_version == 1
    assert result.ledger_position >= position(ledger)
    body = result.to_dict()
    assert "state" not in body
    assert "ancestor" not in body
    assert "rests_on" not in body
    assert body["grant"]["entry_index"] == 1


def test_reason_codes_are_the_published_ones() -> None:
    assert REASONS == (
        "allowed",
        "mission_inactive",
        "expired",
        "ancestor_inactive",
        "out_of_authority",
        "stage_not_active",
        "not_yet_valid",
        "not_found",
        "quota_exceeded",
        "view_unavailable",
    )


@pytest.mark.parametrize(
    "mission_id", ["00000000-0000-0000-0000-000000000000", "not-a-uuid", "", "../../etc", "\x00"]
)
def test_unknown_and_odd_ids_are_not_found(
    ledger: MissionLedger, view: LiveAuthorizationView, mission_id: str
) -> None:
    open_mission(ledger)
    result = check(view, ledger, mission_id)
    assert (result.decision, result.reason, result.mission_version) == ("deny", "not_found", None)


def test_an_uppercase_uuid_finds_the_mission(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    result = check(view, ledger, mid.upper())
    assert result.reason == "allowed"
    assert result.mission_id == mid


@pytest.mark.parametrize(
    ("action", "resource"),
    [
        ("invoices.delete", INVOICE),
        ("invoices.read", "https://other.example.com/invoices/7"),
        ("invoices.*", INVOICE),  # a pattern request needs a covering pattern
        ("*", INVOICE),
        ("", ""),
        ("invoices.read\x00", "\ud800"),
        ("mail.send", INVOICE),  # the action exists, on another resource
    ],
)
def test_requests_outside_the_authority_set_are_out_of_authority(
    ledger: MissionLedger, view: LiveAuthorizationView, action: str, resource: str
) -> None:
    mid = open_mission(ledger)
    result = check(view, ledger, mid, action, resource)
    assert (result.decision, result.reason, result.grant) == ("deny", "out_of_authority", None)


def test_non_string_requests_are_denied_not_raised(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    synced(view, ledger)
    odd: Any = None
    result = view.check(mid, action=odd, resource=INVOICE, now=ledger.clock.now())
    assert result.reason == "out_of_authority"
    assert view.check(odd, action="x", resource="y", now=ledger.clock.now()).reason == "not_found"


@pytest.mark.parametrize(
    ("operation", "state"),
    [("suspend", "suspended"), ("revoke", "revoked"), ("complete", "completed")],
)
def test_a_mission_not_active_is_mission_inactive_with_its_state(
    ledger: MissionLedger, view: LiveAuthorizationView, operation: str, state: str
) -> None:
    mid = open_mission(ledger)
    assert check(view, ledger, mid).allowed
    applied(view, getattr(ledger, operation)(mid, actor=OPERATOR))
    result = check(view, ledger, mid)
    assert (result.reason, result.state, result.mission_version) == ("mission_inactive", state, 2)


def test_resume_allows_again(ledger: MissionLedger, view: LiveAuthorizationView) -> None:
    mid = open_mission(ledger)
    ledger.suspend(mid, actor=OPERATOR)
    assert check(view, ledger, mid).reason == "mission_inactive"
    ledger.resume(mid, actor=OPERATOR)
    assert check(view, ledger, mid).reason == "allowed"


def test_expiry_is_evaluated_before_stored_state_without_expire_due(
    ledger: MissionLedger, view: LiveAuthorizationView, clock: FixedClock
) -> None:
    mid = open_mission(ledger)
    clock.advance(30 * DAY)  # exactly expires_at: expired (valid on t < expires_at)
    result = check(view, ledger, mid)
    assert (result.reason, result.state) == ("expired", "expired")
    row = view.row(mid)
    assert row is not None
    assert row.state == "active"  # the stored state: nothing recorded the expiry


def test_a_suspended_mission_past_its_expiry_reads_expired(
    ledger: MissionLedger, view: LiveAuthorizationView, clock: FixedClock
) -> None:
    mid = open_mission(ledger)
    ledger.suspend(mid, actor=OPERATOR)
    clock.advance(31 * DAY)
    assert check(view, ledger, mid).reason == "expired"


def test_stages_gate_entries_and_advancing_is_folded(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    authority = [
        entry(["invoices.read"]),
        entry(["invoices.pay"], constraints={"stage": "execute"}),
    ]
    mid = open_mission(ledger, authority_set=authority, stages=["plan", "execute"])
    result = check(view, ledger, mid, "invoices.pay")
    assert (result.reason, result.grant) == ("stage_not_active", None)
    assert check(view, ledger, mid, "invoices.read").allowed
    applied(view, ledger.advance_stage(mid, actor=OPERATOR))
    allowed = check(view, ledger, mid, "invoices.pay")
    assert allowed.reason == "allowed"
    assert allowed.grant is not None
    assert allowed.grant["entry_index"] == 1


def test_not_before_and_not_after_of_an_entry(
    ledger: MissionLedger, view: LiveAuthorizationView, clock: FixedClock
) -> None:
    window = {
        "not_before": format_rfc3339(T0 + HOUR),
        "not_after": format_rfc3339(T0 + 2 * HOUR),
    }
    mid = open_mission(ledger, authority_set=[entry(["invoices.read"], constraints=window)])
    assert check(view, ledger, mid).reason == "not_yet_valid"
    clock.advance(90 * timedelta(minutes=1))
    assert check(view, ledger, mid).reason == "allowed"
    clock.advance(HOUR)
    result = check(view, ledger, mid)
    assert (result.reason, result.state) == ("expired", None)  # the entry, not the Mission


def test_max_calls_is_counted_per_mission_and_entry(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    authority = [
        entry(["invoices.read"], constraints={"max_calls": 2}),
        entry(["mail.send"], resource=MAIL),
    ]
    first = open_mission(ledger, authority_set=authority)
    second = open_mission(ledger, authority_set=authority)
    assert [check(view, ledger, first).reason for _ in range(3)] == [
        "allowed",
        "allowed",
        "quota_exceeded",
    ]
    assert check(view, ledger, first, "mail.send", MAIL).reason == "allowed"  # no budget
    assert check(view, ledger, second).reason == "allowed"  # its own budget
    denied = check(view, ledger, first, "invoices.delete")
    assert denied.reason == "out_of_authority"


def test_the_quota_holds_under_concurrent_checks(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(
        ledger, authority_set=[entry(["invoices.read"], constraints={"max_calls": 50})]
    )
    synced(view, ledger)
    now = ledger.clock.now()
    allowed: list[int] = []

    def worker() -> None:
        n = sum(
            view.check(mid, action="invoices.read", resource=INVOICE, now=now).allowed
            for _ in range(40)
        )
        allowed.append(n)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 50


# ---------------------------------------------------------------------------------------------
# Ancestors
# ---------------------------------------------------------------------------------------------


def test_a_child_is_allowed_within_its_own_and_its_parents_authority(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    _, child, grandchild = open_tree(ledger)
    assert check(view, ledger, grandchild).allowed
    assert check(view, ledger, child, "invoices.write").reason == "out_of_authority"


def test_a_suspended_parent_suspends_the_childs_checks(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    root, child, _ = open_tree(ledger)
    ledger.suspend(root, actor=OPERATOR)
    result = check(view, ledger, child)
    assert (result.reason, result.state) == ("mission_inactive", "suspended")
    ledger.resume(root, actor=OPERATOR)
    assert check(view, ledger, child).allowed


def test_a_revoked_grandparent_ends_the_grandchilds_checks(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    root, _, grandchild = open_tree(ledger)
    assert check(view, ledger, grandchild).allowed
    ledger.revoke(root, actor=OPERATOR)
    result = check(view, ledger, grandchild)
    assert (result.reason, result.state) == ("mission_inactive", "cascaded")


def test_an_inactive_ancestor_the_child_does_not_yet_reflect_is_named(
    ledger: MissionLedger,
) -> None:
    """A view that folded a parent's end but not yet its child's (a page boundary inside one
    transaction, or a projection behind) still denies, naming the ancestor."""
    root, child, grandchild = open_tree(ledger)

    def loader() -> tuple[dict[str, MissionRow], int]:
        rows, pos = load_rows_from_log(ledger)
        rows[root] = replace(rows[root], state="revoked")
        return rows, pos

    live = LiveAuthorizationView(ledger, loader=loader)
    live.start()
    try:
        now = ledger.clock.now()
        for mid in (child, grandchild):
            result = live.check(mid, action="invoices.read", resource=INVOICE, now=now)
            assert (result.reason, result.ancestor, result.state) == (
                "ancestor_inactive",
                root,
                None,
            )
    finally:
        live.stop()


def test_an_ancestor_unknown_to_the_view_fails_closed(ledger: MissionLedger) -> None:
    root, child, _ = open_tree(ledger)

    def loader() -> tuple[dict[str, MissionRow], int]:
        rows, pos = load_rows_from_log(ledger)
        del rows[root]
        return rows, pos

    live = LiveAuthorizationView(ledger, loader=loader)
    live.start()
    try:
        result = live.check(child, action="invoices.read", resource=INVOICE, now=T0)
        assert (result.reason, result.ancestor) == ("ancestor_inactive", root)
        assert live.lineage(child) is None
    finally:
        live.stop()


def test_a_narrowed_parent_bounds_its_child(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    root = open_mission(ledger)
    child = open_child(ledger, root, authority_set=child_authority(["invoices.read"]))
    assert check(view, ledger, child).allowed
    narrowed = [
        entry(["invoices.write"], delegation=children_policy()),
        entry(["mail.send"], resource=MAIL),
    ]
    applied(view, ledger.narrow(root, authority_set=narrowed, actor=OPERATOR))
    result = check(view, ledger, child)
    assert (result.decision, result.reason, result.ancestor) == ("deny", "out_of_authority", root)
    assert check(view, ledger, root, "invoices.read").reason == "out_of_authority"
    assert check(view, ledger, root, "invoices.write").allowed


# ---------------------------------------------------------------------------------------------
# The view: freshness, waiting, failing closed
# ---------------------------------------------------------------------------------------------


def test_position_advances_with_any_write_and_wait_for_blocks_until_then(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    synced(view, ledger)
    before = view.position
    assert before == position(ledger)
    assert view.wait_for(before, timeout=0)  # already there
    assert not view.wait_for(before + 1_000, timeout=0.05)
    # a write with no Mission event (a proposal) still advances the proven position
    propose(ledger)
    assert view.wait_for(position(ledger), timeout=2.0)
    assert view.position == position(ledger) > before
    result = ledger.revoke(mid, actor=OPERATOR)
    assert result.position is not None
    assert view.wait_for(result.position, timeout=2.0)
    row = view.row(mid)
    assert row is not None
    assert (row.state, row.version, row.position) == (
        "revoked",
        2,
        result.position,
    )


def test_wait_for_wakes_when_another_thread_writes(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    open_mission(ledger)
    synced(view, ledger)
    target = view.position + 1
    timer = threading.Timer(0.05, lambda: open_mission(ledger))
    timer.start()
    try:
        assert view.wait_for(target, timeout=2.0)
    finally:
        timer.join()


def test_checks_fail_closed_before_start_and_after_stop(ledger: MissionLedger) -> None:
    mid = open_mission(ledger)
    live = LiveAuthorizationView(ledger)
    assert not live.healthy()
    assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).reason == (
        "view_unavailable"
    )
    live.start()
    assert live.healthy()
    assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).allowed
    live.stop()
    assert not live.healthy()
    result = live.check(mid, action="invoices.read", resource=INVOICE, now=T0)
    assert (result.decision, result.reason) == ("deny", "view_unavailable")
    with pytest.raises(Unavailable):
        agentpass_scope(live, mid, now=T0)


def test_a_view_whose_polls_lag_fails_closed(ledger: MissionLedger) -> None:
    mid = open_mission(ledger)
    live = LiveAuthorizationView(ledger, poll_interval=5.0, max_lag_seconds=0.05)
    live.start()
    try:
        assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).allowed
        threading.Event().wait(0.15)
        assert not live.healthy()
        assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).reason == (
            "view_unavailable"
        )
    finally:
        live.stop()


def test_start_twice_is_refused(view: LiveAuthorizationView) -> None:
    with pytest.raises(RuntimeError):
        view.start()


def test_a_naive_instant_is_refused(ledger: MissionLedger, view: LiveAuthorizationView) -> None:
    mid = open_mission(ledger)
    with pytest.raises(InvalidInput):
        view.check(mid, action="a", resource="b", now=datetime(2026, 3, 2))


# ---------------------------------------------------------------------------------------------
# Historical checks
# ---------------------------------------------------------------------------------------------


def test_check_at_answers_as_of_a_past_instant(ledger: MissionLedger, clock: FixedClock) -> None:
    mid = open_mission(ledger)
    clock.advance(HOUR)
    ledger.revoke(mid, actor=OPERATOR)
    before = check_at(ledger, mid, action="invoices.read", resource=INVOICE, at=T0 + HOUR / 2)
    assert (before.decision, before.reason, before.mission_version) == ("allow", "allowed", 1)
    assert before.grant is not None
    assert before.grant["entry_index"] == 0
    assert before.ledger_position == position(ledger)
    assert before.rests_on is not None
    assert [(e["mission_id"], e["version"], e["type"]) for e in before.rests_on] == [
        (mid, 1, "MissionApproved")
    ]
    after = check_at(ledger, mid, action="invoices.read", resource=INVOICE, at=T0 + 2 * HOUR)
    assert (after.decision, after.reason, after.state, after.mission_version) == (
        "deny",
        "mission_inactive",
        "revoked",
        2,
    )
    assert after.rests_on is not None
    assert [e["type"] for e in after.rests_on] == ["MissionApproved", "MissionRevoked"]
    assert set(after.rests_on[1]) == {"mission_id", "event_id", "version", "type", "timestamp"}
    assert "rests_on" in after.to_dict()


def test_check_at_rests_on_the_ancestors_too(ledger: MissionLedger, clock: FixedClock) -> None:
    root = open_mission(ledger)
    child = open_child(ledger, root)
    clock.advance(HOUR)
    narrowed = [entry(["invoices.write"], delegation=children_policy()), default_authority()[1]]
    ledger.narrow(root, authority_set=narrowed, actor=OPERATOR)
    then = check_at(ledger, child, action="invoices.read", resource=INVOICE, at=T0 + HOUR / 2)
    assert then.allowed
    assert then.rests_on is not None
    assert {e["mission_id"] for e in then.rests_on} == {root, child}
    assert then.rests_on[0]["mission_id"] == child  # the Mission first, then its ancestors
    now = check_at(ledger, child, action="invoices.read", resource=INVOICE, at=T0 + 2 * HOUR)
    assert (now.reason, now.ancestor) == ("out_of_authority", root)


def test_check_at_unknown_or_not_yet_existing(ledger: MissionLedger) -> None:
    mid = open_mission(ledger)
    for mission_id, at in [
        ("nope", T0),
        ("00000000-0000-0000-0000-000000000000", T0),
        (mid, T0 - HOUR),
    ]:
        result = check_at(ledger, mission_id, action="invoices.read", resource=INVOICE, at=at)
        assert (result.reason, result.mission_version, result.rests_on) == ("not_found", None, None)
    with pytest.raises(InvalidInput):
        check_at(ledger, mid, action="a", resource="b", at=datetime(2026, 3, 2))


def test_check_at_evaluates_expiry_at_that_instant(
    ledger: MissionLedger, clock: FixedClock
) -> None:
    mid = open_mission(ledger)
    result = check_at(ledger, mid, action="invoices.read", resource=INVOICE, at=T0 + 31 * DAY)
    assert (result.reason, result.state) == ("expired", "expired")


# ---------------------------------------------------------------------------------------------
# AuthZEN
# ---------------------------------------------------------------------------------------------


def authzen_request(mission_id: str, **overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "subject": {"type": "agent", "id": AGENT},
        "resource": {"type": "invoice", "id": INVOICE},
        "action": {"name": "invoices.read"},
        "context": {"mission_id": mission_id},
    }
    request.update(overrides)
    return request


def test_authzen_evaluation_allows_and_denies(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    synced(view, ledger)
    now = ledger.clock.now()
    allowed = authzen_evaluate(view, authzen_request(mid), now=now)
    assert allowed["decision"] is True
    assert allowed["context"]["reason"] == "allowed"
    assert allowed["context"]["mission_version"] == 1
    assert allowed["context"]["ledger_position"] == view.position
    assert allowed["context"]["grant"]["entry_index"] == 0
    denied = authzen_evaluate(
        view, authzen_request(mid, action={"name": "invoices.delete"}), now=now
    )
    assert denied == {
        "decision": False,
        "context": {
            "reason": "out_of_authority",
            "mission_version": 1,
            "ledger_position": view.position,
        },
    }
    ledger.suspend(mid, actor=OPERATOR)
    synced(view, ledger)
    suspended = authzen_evaluate(view, authzen_request(mid), now=now)
    assert suspended["context"]["reason"] == "mission_inactive"
    assert suspended["context"]["state"] == "suspended"
    unknown = authzen_evaluate(view, authzen_request("nope"), now=now)
    assert unknown["context"] == {
        "reason": "not_found",
        "mission_version": None,
        "ledger_position": view.position,
    }


def test_authzen_subject_must_be_the_missions_agent(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger, authority_set=[entry(constraints={"max_calls": 1})])
    synced(view, ledger)
    now = ledger.clock.now()
    wrong = authzen_request(mid, subject={"type": "agent", "id": "agent-9"})
    mismatch = authzen_evaluate(view, wrong, now=now)
    assert mismatch["decision"] is False
    assert mismatch["context"]["reason"] == "out_of_authority"
    assert mismatch["context"]["detail"] == "subject_mismatch"
    # a mismatched subject consumed no call; a non-agent subject is not matched
    user = authzen_request(mid, subject={"type": "user", "id": "someone", "properties": {}})
    assert authzen_evaluate(view, user, now=now)["decision"] is True
    assert authzen_evaluate(view, authzen_request(mid), now=now)["context"]["reason"] == (
        "quota_exceeded"
    )


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.pop("subject"), "subject"),
        (lambda r: r.update(subject="agent"), "subject"),
        (lambda r: r["subject"].pop("id"), "subject.id"),
        (lambda r: r["subject"].update(type=3), "subject.type"),
        (lambda r: r["resource"].pop("type"), "resource.type"),
        (lambda r: r["resource"].update(properties=[]), "resource.properties"),
        (lambda r: r["action"].pop("name"), "action.name"),
        (lambda r: r.pop("action"), "action"),
        (lambda r: r.pop("context"), "context.mission_id"),
        (lambda r: r.update(context=[]), "context"),
        (lambda r: r.update(context={"mission_id": ""}), "context.mission_id"),
        (lambda r: r.update(context={"mission_id": 7}), "context.mission_id"),
    ],
)
def test_authzen_validation_names_the_field(
    view: LiveAuthorizationView, mutate: Any, field: str
) -> None:
    request = authzen_request("m")
    mutate(request)
    with pytest.raises(InvalidInput) as raised:
        authzen_evaluate(view, request, now=T0)
    assert raised.value.field == field


def test_authzen_body_must_be_an_object(view: LiveAuthorizationView) -> None:
    bad: Any = ["not", "an", "object"]
    with pytest.raises(InvalidInput) as raised:
        authzen_evaluate(view, bad, now=T0)
    assert raised.value.field == "body"


def test_authzen_batch_merges_defaults_into_each_item(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    other = open_mission(ledger, agent="agent-7")
    synced(view, ledger)
    request = {
        "subject": {"type": "agent", "id": AGENT},
        "resource": {"type": "invoice", "id": INVOICE},
        "context": {"mission_id": mid},
        "evaluations": [
            {"action": {"name": "invoices.read"}},
            {"action": {"name": "invoices.delete"}},
            {"action": {"name": "mail.send"}, "resource": {"type": "mail", "id": MAIL}},
            {
                "action": {"name": "invoices.read"},
                "subject": {"type": "agent", "id": "agent-7"},
                "context": {"mission_id": other},
            },
        ],
    }
    answers = authzen_evaluations(view, request, now=ledger.clock.now())["evaluations"]
    assert [a["decision"] for a in answers] == [True, False, True, True]
    assert answers[1]["context"]["reason"] == "out_of_authority"


def test_authzen_batch_semantics_and_empty_lists(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    synced(view, ledger)
    now = ledger.clock.now()
    items = [
        {"action": {"name": "invoices.read"}},
        {"action": {"name": "invoices.delete"}},
        {"action": {"name": "invoices.write"}},
    ]
    base = authzen_request(mid)
    all_three = authzen_evaluations(view, {**base, "evaluations": items}, now=now)
    assert [a["decision"] for a in all_three["evaluations"]] == [True, False, True]
    first_deny = {
        **base,
        "evaluations": items,
        "options": {"evaluations_semantic": "deny_on_first_deny"},
    }
    assert [
        a["decision"] for a in authzen_evaluations(view, first_deny, now=now)["evaluations"]
    ] == [
        True,
        False,
    ]
    first_permit = {**first_deny, "options": {"evaluations_semantic": "permit_on_first_permit"}}
    assert len(authzen_evaluations(view, first_permit, now=now)["evaluations"]) == 1
    for single in (base, {**base, "evaluations": []}):
        answers = authzen_evaluations(view, single, now=now)["evaluations"]
        assert len(answers) == 1
        assert answers[0]["decision"] is True


@pytest.mark.parametrize(
    ("request_body", "field"),
    [
        ({"evaluations": [{"action": {"name": "x"}}]}, "subject"),
        ({"evaluations": "all"}, "evaluations"),
        ({"evaluations": [7]}, "evaluations[0]"),
        ({"options": {"evaluations_semantic": "first"}}, "options.evaluations_semantic"),
        ({"options": 1}, "options"),
    ],
)
def test_authzen_batch_validation(
    view: LiveAuthorizationView, request_body: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput) as raised:
        authzen_evaluations(view, request_body, now=T0)
    assert raised.value.field == field


def test_authzen_batch_item_fields_are_prefixed(view: LiveAuthorizationView) -> None:
    request = {
        **authzen_request("m"),
        "evaluations": [{"action": {"name": "x"}}, {"action": {"verb": "x"}}],
    }
    with pytest.raises(InvalidInput) as raised:
        authzen_evaluations(view, request, now=T0)
    assert raised.value.field == "evaluations[1].action.name"


# ---------------------------------------------------------------------------------------------
# AgentPass
# ---------------------------------------------------------------------------------------------


def test_agentpass_scope_is_the_sorted_union_of_actions(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    mid = open_mission(ledger)
    synced(view, ledger)
    scope = agentpass_scope(view, mid, now=ledger.clock.now())
    assert scope == ["invoices.read", "invoices.write", "mail.send"]


@pytest.mark.parametrize("operation", ["suspend", "revoke", "complete", "expire", "unknown"])
def test_agentpass_scope_is_none_for_any_inactive_delegation(
    ledger: MissionLedger, view: LiveAuthorizationView, clock: FixedClock, operation: str
) -> None:
    mid = open_mission(ledger)
    if operation == "expire":
        clock.advance(31 * DAY)
    elif operation == "unknown":
        mid = "00000000-0000-0000-0000-000000000000"
    else:
        getattr(ledger, operation)(mid, actor=OPERATOR)
    synced(view, ledger)
    assert agentpass_scope(view, mid, now=ledger.clock.now()) is None


def test_agentpass_scope_of_a_child_follows_its_ancestors(
    ledger: MissionLedger, view: LiveAuthorizationView
) -> None:
    root = open_mission(ledger)
    child = open_child(
        ledger, root, authority_set=child_authority(["invoices.read", "invoices.write"])
    )
    synced(view, ledger)
    assert agentpass_scope(view, child, now=T0) == ["invoices.read", "invoices.write"]
    narrowed = [entry(["invoices.write"], delegation=children_policy()), default_authority()[1]]
    ledger.narrow(root, authority_set=narrowed, actor=OPERATOR)
    synced(view, ledger)
    assert agentpass_scope(view, child, now=T0) == ["invoices.write"]
    ledger.suspend(root, actor=OPERATOR)
    synced(view, ledger)
    assert agentpass_scope(view, child, now=T0) is None


def test_agentpass_configuration_lists_only_implemented_endpoints() -> None:
    document = agentpass_configuration("https://authority.example.com/")
    assert document == {
        "version": "0.1",
        "authority": "https://authority.example.com/",
        "trust_mode": "enterprise",
        "jwks_uri": "https://authority.example.com/jwks.json",
        "endpoints": {
            "authorization_check": "https://authority.example.com/agentpass/authorization-check"
        },
    }


# ---------------------------------------------------------------------------------------------
# Paging and store failures
# ---------------------------------------------------------------------------------------------


def test_loading_and_tailing_page_through_the_log(
    ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks, "PAGE_SIZE", 2)
    early = [open_mission(ledger) for _ in range(3)]
    ledger.suspend(early[0], actor=OPERATOR)
    live = LiveAuthorizationView(ledger)
    live.start()
    try:
        assert live.position == position(ledger)
        late = [open_mission(ledger) for _ in range(3)]
        ledger.revoke(early[1], actor=OPERATOR)
        assert live.wait_for(position(ledger), timeout=2.0)
        reasons = [
            live.check(m, action="invoices.read", resource=INVOICE, now=T0).reason
            for m in early + late
        ]
        assert reasons == ["mission_inactive", "mission_inactive", *["allowed"] * 4]
    finally:
        live.stop()


def test_a_failing_store_makes_the_view_fail_closed_until_it_recovers(
    ledger: MissionLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = open_mission(ledger)
    live = LiveAuthorizationView(ledger, max_lag_seconds=0.1)
    live.start()
    try:
        assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).allowed

        def broken() -> int:
            raise OSError("store down")

        with monkeypatch.context() as patch:
            patch.setattr(ledger.recorder, "max_notification_id", broken)
            deadline = time.monotonic() + 2.0
            while live.healthy() and time.monotonic() < deadline:
                time.sleep(0.01)
            result = live.check(mid, action="invoices.read", resource=INVOICE, now=T0)
            assert result.reason == "view_unavailable"
        assert live.wait_for(position(ledger), timeout=2.0)
        deadline = time.monotonic() + 2.0
        while not live.healthy() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert live.check(mid, action="invoices.read", resource=INVOICE, now=T0).allowed
    finally:
        live.stop()


# ---------------------------------------------------------------------------------------------
# Starting from the tracked authorization table
# ---------------------------------------------------------------------------------------------

QUOTA = {"max_calls": 2}
PROBES = [
    ("invoices.read", INVOICE),
    ("invoices.write", INVOICE),
    ("invoices.pay", INVOICE),
    ("invoices.delete", INVOICE),
    ("mail.send", MAIL),
    ("contacts.read", "https://crm.example.com/contacts/1"),
]


@pytest.fixture
def durable(tmp_path: Path, clock: FixedClock) -> Iterator[tuple[MissionLedger, Settings]]:
    """An in-memory ledger whose projection views live in ``tmp_path`` (a SQLite file)."""
    settings = Settings(database_url="memory:", data_dir=tmp_path)
    app = MissionLedger(settings, clock=clock)
    yield app, settings
    app.close()


def scripted_history(ledger: MissionLedger, clock: FixedClock) -> list[str]:
    """Missions in every shape a check distinguishes; returns their ids."""
    root, child, grandchild = open_tree(ledger)  # two delegations (Delegated on the parents)
    narrowed_root = open_mission(ledger)
    narrowed_child = open_child(ledger, narrowed_root, authority_set=child_authority())
    ledger.narrow(
        narrowed_root,
        authority_set=[entry(["invoices.write"], delegation=children_policy()), entry()],
        actor=OPERATOR,
    )
    suspended = open_mission(ledger)
    ledger.suspend(suspended, actor=OPERATOR, until=format_rfc3339(T0 + DAY), on_expiry="resume")
    resumed = open_mission(ledger)
    ledger.suspend(resumed, actor=OPERATOR)
    ledger.resume(resumed, actor=OPERATOR)
    revoked_tree = open_mission(ledger)
    revoked_child = open_child(ledger, revoked_tree)
    ledger.revoke(revoked_tree, actor=OPERATOR)  # cascades to the child
    completed = open_mission(ledger)
    ledger.complete(completed, actor=AGENT)
    staged = open_mission(
        ledger,
        authority_set=[
            entry(["invoices.read"]),
            entry(["invoices.pay"], constraints={"stage": "b"}),
        ],
        stages=["a", "b"],
    )
    ledger.advance_stage(staged, actor=OPERATOR)
    unstaged = open_mission(
        ledger,
        authority_set=[
            entry(["invoices.read"]),
            entry(["invoices.pay"], constraints={"stage": "b"}),
        ],
        stages=["a", "b"],
    )
    quota = open_mission(ledger, authority_set=[entry(["invoices.read"], constraints=QUOTA)])
    short = open_mission(ledger, expires_at=T0 + HOUR)
    suspended_parent = open_mission(ledger)
    under_suspended = open_child(ledger, suspended_parent)
    ledger.suspend(suspended_parent, actor=OPERATOR)
    clock.advance(2 * HOUR)  # `short` is past its expiry, never recorded
    return [
        root,
        child,
        grandchild,
        narrowed_root,
        narrowed_child,
        suspended,
        resumed,
        revoked_tree,
        revoked_child,
        completed,
        staged,
        unstaged,
        quota,
        short,
        suspended_parent,
        under_suspended,
        "00000000-0000-4000-8000-000000000000",
    ]


def answers(view: LiveAuthorizationView, missions: list[str], now: datetime) -> list[CheckResult]:
    """Every probe on every Mission, three rounds (the quota runs out on the third)."""
    return [
        view.check(mid, action=action, resource=resource, now=now)
        for _ in range(3)
        for mid in missions
        for action, resource in PROBES
    ]


def started(ledger: MissionLedger, loader: Any) -> LiveAuthorizationView:
    live = LiveAuthorizationView(ledger, loader=loader)
    live.start()
    return live


def test_mission_row_from_view_reads_text_or_decoded_values() -> None:
    decoded = {
        "mission_id": "m-1",
        "state": "suspended",
        "version": 3,
        "expires_at": "2026-04-01T09:00:00.250000Z",
        "suspend_until": "2026-03-03T09:00:00Z",
        "agent": AGENT,
        "user": "alice",
        "parent_id": None,
        "stage": None,
        "authority_set": default_authority(),
        "authority_hash": "ignored",
        "position": 17,
    }
    row = mission_row_from_view(decoded)
    assert row.expires_at == datetime(2026, 4, 1, 9, 0, 0, 250000, tzinfo=UTC)
    assert row.suspend_until is not None
    assert row.suspend_until.utcoffset() == timedelta(0)
    assert (row.state, row.version, row.position) == ("suspended", 3, 17)
    assert row.authority_json == default_authority()
    assert len(row.authority.entries) == 2
    as_text = {
        **decoded,
        "authority_set": json.dumps(default_authority()),
        "expires_at": row.expires_at,
    }
    assert mission_row_from_view(as_text) == row
    with pytest.raises(InvalidInput):
        mission_row_from_view({**decoded, "expires_at": datetime(2026, 4, 1)})  # naive
    with pytest.raises(InvalidInput):
        mission_row_from_view({**decoded, "authority_set": "{}"})


def test_a_view_started_from_the_table_equals_one_folded_from_the_log(
    durable: tuple[MissionLedger, Settings], clock: FixedClock
) -> None:
    ledger, settings = durable
    missions = scripted_history(ledger, clock)
    with ProjectionWorker(ledger, settings) as worker, ProjectionStore.open(settings) as store:
        worker.run_once()
        table_rows, table_position = store.authorization_rows()
        assert table_position == position(ledger)
        assert len(table_rows) == len(missions) - 1  # all but the unknown id
        from_table = load_rows_from_views(store.authorization_rows, ledger)
        from_log = load_rows_from_log(ledger)
        assert from_table == from_log
        assert from_table[0][missions[0]] is not from_log[0][missions[0]]

        log_view = started(ledger, None)
        table_view = started(
            ledger, functools.partial(load_rows_from_views, store.authorization_rows, ledger)
        )
        try:
            assert table_view.position == log_view.position == position(ledger)
            now = ledger.clock.now()
            expected = answers(log_view, missions, now)
            assert answers(table_view, missions, now) == expected
            reasons = {r.reason for r in expected}
            assert {
                "allowed",
                "mission_inactive",
                "expired",
                "out_of_authority",
                "stage_not_active",
                "not_found",
                "quota_exceeded",
            } <= reasons
            for mid in missions[:-1]:
                assert table_view.row(mid) == log_view.row(mid)
        finally:
            table_view.stop()
            log_view.stop()


def test_a_table_behind_the_ledger_is_caught_up_before_start_returns(
    durable: tuple[MissionLedger, Settings], clock: FixedClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger, settings = durable
    monkeypatch.setattr(checks, "PAGE_SIZE", 2)  # the catch-up spans several pages
    missions = scripted_history(ledger, clock)
    with ProjectionWorker(ledger, settings) as worker, ProjectionStore.open(settings) as store:
        worker.run_once()
        projected = store.position()
        ledger.revoke(missions[0], actor=OPERATOR)  # cascades to child and grandchild
        ledger.narrow(missions[6], authority_set=[entry()], actor=OPERATOR)
        later = open_mission(ledger)
        ledger.suspend(later, actor=OPERATOR)
        assert store.position() == projected < position(ledger)

        loader = functools.partial(load_rows_from_views, store.authorization_rows, ledger)
        view = LiveAuthorizationView(ledger, poll_interval=60.0, loader=loader)
        view.start()  # the tailer sleeps a minute between polls: start itself caught up
        try:
            assert view.position == position(ledger)
            rows, _ = load_rows_from_log(ledger)
            for mid in [*missions[:-1], later]:
                assert view.row(mid) == rows[mid], mid
            now = ledger.clock.now()
            result = view.check(missions[2], action="invoices.read", resource=INVOICE, now=now)
            assert (result.reason, result.state) == ("mission_inactive", "cascaded")
        finally:
            view.stop()


def test_loading_from_views_falls_back_to_the_log(
    durable: tuple[MissionLedger, Settings], clock: FixedClock
) -> None:
    ledger, settings = durable
    missions = scripted_history(ledger, clock)
    expected = load_rows_from_log(ledger)
    with ProjectionStore.open(settings) as store:  # never projected: position 0
        assert store.authorization_rows() == ({}, 0)
        assert load_rows_from_views(store.authorization_rows, ledger) == expected

    def ahead() -> tuple[dict[str, dict[str, Any]], int]:
        return {}, position(ledger) + 1000  # views of another ledger

    def unreadable() -> tuple[dict[str, dict[str, Any]], int]:
        raise Unavailable("the projection store is unavailable (locked); retry")

    assert load_rows_from_views(ahead, ledger) == expected
    assert load_rows_from_views(unreadable, ledger) == expected
    assert missions[0] in expected[0]


# -- following the log: woken by this process's commits, polling slowly when idle -------------


def test_the_commit_signal_counts_commits_and_wakes_waiters(ledger: MissionLedger) -> None:
    signal = ledger.commits
    seen = signal.count
    assert signal.wait(seen, 0.0) == seen  # nothing committed: the timeout, nothing more
    open_mission(ledger)
    assert signal.count > seen
    assert signal.wait(seen, 30.0) == signal.count  # a commit since `seen`: no wait at all
    woken: list[int] = []
    waiter = threading.Thread(target=lambda: woken.append(signal.wait(signal.count, 30.0)))
    waiter.start()
    time.sleep(0.05)
    open_mission(ledger, agent="agent-2")
    waiter.join(timeout=10)
    assert not waiter.is_alive()
    assert woken == [signal.count]


def test_a_commit_in_this_process_wakes_the_view_however_slowly_it_polls(
    ledger: MissionLedger,
) -> None:
    live = LiveAuthorizationView(ledger, poll_interval=60.0, idle_interval=60.0)
    live.start()
    try:
        time.sleep(0.05)  # the view's thread now waits (60 s unless woken)
        mission = open_mission(ledger)
        assert live.wait_for(position(ledger), timeout=10.0)  # long before its next poll
        assert check(live, ledger, mission).decision == "allow"
    finally:
        live.stop()  # stop wakes it too: its thread ends instead of sleeping out the 60 s
    assert live._thread is not None
    assert not live._thread.is_alive()


def test_the_view_polls_briskly_only_while_other_processes_write(
    tmp_path: Path, clock: FixedClock
) -> None:
    """Commits in this process wake the view, so they never make it poll every 2 ms; events that
    no commit here announced (another process on the same store: here a second ledger on the
    same SQLite file) do, until they have been quiet for a while."""
    here = MissionLedger(Settings(data_dir=tmp_path), clock=clock)
    elsewhere = MissionLedger(Settings(data_dir=tmp_path), clock=clock)
    live = LiveAuthorizationView(here, poll_interval=0.002, idle_interval=0.25)
    polls = 0
    poll_once = live._poll_once

    def counted() -> int:
        nonlocal polls
        polls += 1
        return poll_once()

    live._poll_once = counted  # type: ignore[method-assign]
    live.start()
    try:
        mission = open_mission(here)
        assert live.wait_for(position(here), timeout=10.0)
        time.sleep(0.05)
        before = polls
        time.sleep(0.5)
        quiet_after_local = polls - before  # about two idle polls in half a second
        assert quiet_after_local <= 10

        other = open_mission(elsewhere, agent="agent-2")
        assert live.wait_for(position(elsewhere), timeout=10.0)  # seen by a poll, not a signal
        before = polls
        time.sleep(0.3)
        brisk_after_foreign = polls - before  # about 150 at 2 ms
        assert brisk_after_foreign >= 20
        assert check(live, here, mission).decision == "allow"
        assert check(live, elsewhere, other).decision == "allow"
    finally:
        live.stop()
        elsewhere.close()
        here.close()


@pytest.mark.parametrize(
    ("previous", "now", "foreign"),
    [
        ((3, 3), (3, 3), True),  # nothing of ours began or was in flight: another process
        ((3, 3), (4, 3), False),  # ours began since the previous poll
        ((3, 3), (4, 4), False),  # ours began and ended since
        ((4, 3), (4, 4), False),  # ours was in flight at the previous poll (committed, not yet
        # announced): its events may show up now
    ],
)
def test_only_events_no_commit_of_this_process_can_explain_count_as_another_process(
    previous: tuple[int, int], now: tuple[int, int], foreign: bool
) -> None:
    assert checks._foreign(previous, now) is foreign


def test_a_commit_is_in_flight_between_begin_and_notify_even_when_it_fails(
    ledger: MissionLedger,
) -> None:
    signal = ledger.commits
    begun, count = signal.begun, signal.count
    assert begun == count
    open_mission(ledger)
    assert signal.begun > begun
    assert signal.begun == signal.count  # every commit that began has been announced

    def failing(events: Any) -> Any:
        raise Unavailable("the store is down")

    real = ledger.committer.commit
    ledger.committer.commit = failing  # type: ignore[method-assign]
    try:
        with pytest.raises(Unavailable):
            open_mission(ledger, agent="agent-2")
    finally:
        ledger.committer.commit = real  # type: ignore[method-assign]
    assert signal.begun == signal.count  # a failed commit is not left in flight
