"""MissionTracker: de-duplication, ordering by version, gaps and re-reads, the compatibility
event types, verification state and stream-updated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from mission_ledger.receiver import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    STREAM_UPDATED,
    InvalidSetRequest,
    InvalidSetState,
    MissionTracker,
    http_mission_reader,
)
from mission_ledger.ssf.mission_events import NAMESPACE
from tests.unit.test_receiver_common import (
    APPROVED,
    MISSION,
    RESUMED,
    REVOKED,
    SUSPENDED,
    TOKEN,
    VERIFICATION,
    mission_event,
    run,
    serve,
    verified,
)

AUTHORITY = [{"type": "mission_resource_access", "resource": "https://erp/*", "actions": ["r"]}]
SESSION_SUBJECT = {"format": "complex", "session": {"format": "opaque", "id": MISSION}}


class Reader:
    """A pluggable re-read that answers from a dict and records who was read."""

    def __init__(self, documents: dict[str, dict[str, Any]] | None = None) -> None:
        self.documents = documents if documents is not None else {}
        self.calls: list[str] = []
        self.fail = False

    async def __call__(self, mission_id: str) -> Mapping[str, Any] | None:
        self.calls.append(mission_id)
        if self.fail:
            raise ConnectionError("the Authority is down")
        return self.documents.get(mission_id)


def approved(jti: str = "j1", **kw: Any) -> Any:
    return verified(
        APPROVED, mission_event(1, "active", authority_set=AUTHORITY, **kw), jti=jti, txn="t1"
    )


def test_a_duplicate_jti_is_not_reapplied() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        first = await tracker.apply(approved())
        assert first.kind == "applied"
        again = await tracker.apply(approved())
        assert again.kind == "duplicate"
        assert tracker.is_active(MISSION)
        assert tracker.seen("https://ledger.example.com", "j1")

    run(main)


def test_jti_memory_is_bounded_and_least_recently_seen_first_out() -> None:
    async def main() -> None:
        tracker = MissionTracker(max_jtis=2)
        for i, jti in enumerate(["a", "b", "c"], start=1):
            await tracker.apply(verified(SUSPENDED, mission_event(i, "active"), jti=jti))
        assert not tracker.seen("https://ledger.example.com", "a")
        assert tracker.seen("https://ledger.example.com", "c")
        # Forgotten, so processed again — and then ordering makes it harmless.
        outcome = await tracker.apply(verified(SUSPENDED, mission_event(1, "active"), jti="a"))
        assert outcome.kind == "stale"

    run(main)


def test_an_older_event_never_overrides_a_newer_one() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        await tracker.apply(verified(SUSPENDED, mission_event(2, "suspended"), jti="j2"))
        await tracker.apply(verified(RESUMED, mission_event(3, "active"), jti="j3"))
        assert tracker.is_active(MISSION)
        # The suspension again, under another jti (a replay or a late copy): ignored.
        late = await tracker.apply(verified(SUSPENDED, mission_event(2, "suspended"), jti="j2b"))
        assert late.kind == "stale"
        assert "2 ≤ last applied 3" in late.detail
        assert tracker.is_active(MISSION)
        # A revocation, then an old "active" event: it never reactivates.
        await tracker.apply(verified(REVOKED, mission_event(4, "revoked"), jti="j4"))
        old = await tracker.apply(verified(RESUMED, mission_event(3, "active"), jti="j3b"))
        assert old.kind == "stale"
        assert not tracker.is_active(MISSION)
        state = tracker.mission(MISSION)
        assert state is not None
        assert (state.state, state.version, state.terminal) == ("revoked", 4, True)

    run(main)


def test_a_terminal_state_never_comes_back_even_with_a_higher_version() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        await tracker.apply(verified(REVOKED, mission_event(2, "revoked"), jti="j2"))
        outcome = await tracker.apply(verified(RESUMED, mission_event(3, "active"), jti="j3"))
        assert outcome.kind == "ignored"
        assert "terminal" in outcome.detail
        assert not tracker.is_active(MISSION)

    run(main)


def test_a_gap_triggers_a_re_read_and_the_read_is_merged() -> None:
    async def main() -> None:
        narrowed = [{**AUTHORITY[0], "actions": []}]
        reader = Reader(
            {
                MISSION: {
                    "mission_id": MISSION,
                    "state": "active",
                    "version": 3,
                    "authority_set": narrowed,
                    "authority_hash": "sha-256:bbbb",
                }
            }
        )
        tracker = MissionTracker(reader)
        await tracker.apply(approved())
        assert reader.calls == []  # version 1 first: nothing to re-read
        # Version 2 (a narrowing) was lost; version 3 arrives.
        outcome = await tracker.apply(
            verified(
                NAMESPACE + "mission-stage-advanced",
                mission_event(3, "active", authority_hash="sha-256:bbbb"),
                jti="j3",
            )
        )
        assert reader.calls == [MISSION]
        assert outcome.kind == "applied"
        assert outcome.resynced is True
        state = tracker.mission(MISSION)
        assert state is not None
        assert state.authority_set == narrowed
        assert not state.needs_resync
        assert tracker.is_active(MISSION)

    run(main)


def test_a_first_event_beyond_version_1_bootstraps_from_a_read() -> None:
    async def main() -> None:
        reader = Reader({MISSION: {"state": "suspended", "version": 5, "authority_set": AUTHORITY}})
        tracker = MissionTracker(reader)
        outcome = await tracker.apply(verified(SUSPENDED, mission_event(5, "suspended"), jti="x"))
        assert reader.calls == [MISSION]
        assert outcome.resynced is True
        state = tracker.mission(MISSION)
        assert state is not None
        assert (state.state, state.version, state.authority_set) == ("suspended", 5, AUTHORITY)

    run(main)


def test_without_a_reader_an_unresolved_gap_fails_closed() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        outcome = await tracker.apply(verified(RESUMED, mission_event(4, "active"), jti="x"))
        assert outcome.resynced is False
        state = tracker.mission(MISSION)
        assert state is not None
        assert state.state == "active"
        assert state.needs_resync
        assert not tracker.is_active(MISSION)
        assert tracker.active_missions() == set()

    run(main)


def test_a_failing_reader_leaves_the_mission_unconfirmed_until_a_later_resync() -> None:
    async def main() -> None:
        reader = Reader({MISSION: {"state": "active", "version": 4}})
        reader.fail = True
        tracker = MissionTracker(reader)
        outcome = await tracker.apply(verified(RESUMED, mission_event(4, "active"), jti="x"))
        assert outcome.resynced is False
        assert not tracker.is_active(MISSION)
        reader.fail = False
        assert await tracker.resync(MISSION)
        assert tracker.is_active(MISSION)

    run(main)


def test_a_read_older_than_what_was_applied_is_not_merged() -> None:
    async def main() -> None:
        reader = Reader({MISSION: {"state": "active", "version": 2}})
        tracker = MissionTracker(reader)
        await tracker.apply(verified(REVOKED, mission_event(3, "revoked"), jti="x"))
        state = tracker.mission(MISSION)
        assert state is not None
        assert (state.state, state.version, state.needs_resync) == ("revoked", 3, True)
        assert not tracker.is_active(MISSION)

    run(main)


def test_a_scope_change_replaces_the_known_authority_set() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        narrowed = [{**AUTHORITY[0], "actions": []}]
        await tracker.apply(
            verified(
                NAMESPACE + "mission-scope-changed",
                mission_event(
                    2,
                    "active",
                    authority_set=narrowed,
                    authority_hash="sha-256:cccc",
                    previous_authority_hash="sha-256:aaaa",
                    authority_changed=True,
                ),
                jti="j2",
            )
        )
        state = tracker.mission(MISSION)
        assert state is not None
        assert state.authority_set == narrowed
        assert state.authority_hash == "sha-256:cccc"
        assert tracker.is_active(MISSION)

    run(main)


def lifecycle(version: int, state: str, jti: str, **members: Any) -> Any:
    body = {
        "mission": {"id": MISSION, "issuer": "https://ledger.example.com"},
        "state": state,
        "version": version,
        "committed_at": "2026-03-02T09:00:00Z",
        "expires_at": "2026-04-01T09:00:00Z",
        "authority_hash": members.pop("authority_hash", "sha-256:aaaa"),
        **members,
    }
    if version > 1:
        body.setdefault("prior_state", "active")
    return verified(LIFECYCLE_CHANGE, body, jti=jti, txn=f"t{version}")


def test_the_drafts_lifecycle_change_is_ordered_by_version() -> None:
    async def main() -> None:
        reader = Reader({MISSION: {"state": "active", "version": 2, "authority_set": []}})
        tracker = MissionTracker(reader)
        await tracker.apply(lifecycle(1, "active", "l1"))
        assert tracker.is_active(MISSION)
        assert reader.calls == []
        await tracker.apply(lifecycle(3, "suspended", "l3"))
        assert not tracker.is_active(MISSION)
        assert (await tracker.apply(lifecycle(2, "active", "l2"))).kind == "stale"
        assert not tracker.is_active(MISSION)
        # authority_changed without the set: the known set is dropped and re-read.
        outcome = await tracker.apply(
            lifecycle(4, "suspended", "l4", authority_changed=True, authority_hash="sha-256:dd")
        )
        assert outcome.kind == "applied"
        assert reader.calls == [MISSION, MISSION]  # the gap at 3, the narrowing at 4

    run(main)


def test_a_malformed_mission_event_is_invalid_request() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        for event in (
            {"mission_id": MISSION, "state": "active"},
            {"mission_id": MISSION, "state": "active", "version": "2"},
            {"mission_id": MISSION, "state": "active", "version": True},
            {"mission_id": MISSION, "version": 2},
            {"state": "active", "version": 2},
        ):
            with pytest.raises(InvalidSetRequest) as caught:
                await tracker.apply(verified(SUSPENDED, event, jti="bad"))
            assert caught.value.code == "invalid_request"
        with pytest.raises(InvalidSetRequest, match="not the sub_id"):
            await tracker.apply(
                verified(
                    SUSPENDED,
                    mission_event(2, "suspended"),
                    jti="bad",
                    sub_id={"format": "opaque", "id": "another"},
                )
            )
        assert not tracker.seen("https://ledger.example.com", "bad")  # refused: not remembered

    run(main)


def test_caep_session_revoked_stops_reliance_until_its_versioned_twin() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        revoked = verified(
            CAEP_SESSION_REVOKED,
            {"event_timestamp": 1, "reason_admin": {"en": "x"}},
            jti="c1",
            sub_id=SESSION_SUBJECT,
            txn="t2",
        )
        outcome = await tracker.apply(revoked)
        assert outcome.kind == "session_revoked"
        assert outcome.mission_id == MISSION
        assert not tracker.is_active(MISSION)
        # An unrelated active event (not the revocation's twin) does not clear it...
        await tracker.apply(
            verified(NAMESPACE + "mission-delegated", mission_event(2, "active"), jti="p2")
        )
        assert not tracker.is_active(MISSION)
        # ...the twin (same txn) says what happened.
        await tracker.apply(verified(SUSPENDED, mission_event(3, "suspended"), jti="p3", txn="t2"))
        state = tracker.mission(MISSION)
        assert state is not None
        assert not state.session_revoked
        assert state.state == "suspended"
        await tracker.apply(verified(RESUMED, mission_event(4, "active"), jti="p4", txn="t4"))
        assert tracker.is_active(MISSION)

    run(main)


def test_caep_after_its_twin_is_a_no_op_and_a_reader_resolves_a_lone_one() -> None:
    async def main() -> None:
        reader = Reader({MISSION: {"state": "active", "version": 3}})
        tracker = MissionTracker(reader)
        await tracker.apply(approved())
        await tracker.apply(verified(SUSPENDED, mission_event(2, "suspended"), jti="p2", txn="t2"))
        await tracker.apply(verified(RESUMED, mission_event(3, "active"), jti="p3", txn="t3"))
        late = verified(CAEP_SESSION_REVOKED, {}, jti="c2", sub_id=SESSION_SUBJECT, txn="t2")
        outcome = await tracker.apply(late)
        assert outcome.detail == "already applied (same txn)"
        assert tracker.is_active(MISSION)
        assert reader.calls == []
        # A CAEP SET whose twin is unknown: the read (version 3, active) settles it.
        lone = verified(CAEP_SESSION_REVOKED, {}, jti="c9", sub_id=SESSION_SUBJECT, txn="t9")
        outcome = await tracker.apply(lone)
        assert outcome.resynced is True
        assert tracker.is_active(MISSION)

    run(main)


def test_caep_token_claims_change_drops_the_known_authority_set() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        outcome = await tracker.apply(
            verified(
                CAEP_TOKEN_CLAIMS_CHANGE,
                {"claims": {"scope": "r"}},
                jti="c1",
                sub_id=SESSION_SUBJECT,
                txn="t5",
            )
        )
        assert outcome.kind == "claims_changed"
        state = tracker.mission(MISSION)
        assert state is not None
        assert state.authority_set is None
        assert tracker.is_active(MISSION)  # still active; only the scope narrowed

    run(main)


def test_caep_about_something_else_is_ignored() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        outcome = await tracker.apply(
            verified(
                CAEP_SESSION_REVOKED,
                {},
                jti="c1",
                sub_id={"format": "email", "email": "alice@example.com"},
            )
        )
        assert outcome.kind == "ignored"
        assert tracker.missions() == {}

    run(main)


def test_verification_matches_the_state_the_service_sent() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        state = tracker.expect_verification()
        stream = {"format": "opaque", "id": "f" * 32}
        outcome = await tracker.apply(
            verified(VERIFICATION, {"state": state}, jti="v1", sub_id=stream)
        )
        assert outcome.kind == "verification"
        assert tracker.is_verified(state)
        await tracker.wait_verified(state)  # already set: returns at once
        unsolicited = await tracker.apply(verified(VERIFICATION, {}, jti="v2", sub_id=stream))
        assert unsolicited.detail == "unsolicited"
        with pytest.raises(InvalidSetState) as caught:
            await tracker.apply(
                verified(VERIFICATION, {"state": "forged"}, jti="v3", sub_id=stream)
            )
        assert caught.value.code == "invalid_state"
        assert not tracker.seen("https://ledger.example.com", "v3")

    run(main)


def test_request_verification_registers_the_state_before_asking() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        asked: list[tuple[str, str]] = []

        class Client:
            async def request_verification(self, stream_id: str, state: str | None = None) -> str:
                assert state is not None
                assert state in tracker._expected  # registered first: the SET may be quick
                asked.append((stream_id, state))
                return state

        state = await tracker.request_verification(Client(), "s1")
        assert asked == [("s1", state)]
        assert not tracker.is_verified(state)

    run(main)


def test_stream_disabled_makes_every_mission_unconfirmed_and_enabled_re_reads() -> None:
    async def main() -> None:
        reader = Reader()
        tracker = MissionTracker(reader)
        await tracker.apply(approved())
        other = "00000000-0000-4000-8000-000000000002"
        await tracker.apply(
            verified(APPROVED, mission_event(1, "active", mission_id=other), jti="o1")
        )
        stream = {"format": "opaque", "id": "s" * 32}
        disabled = await tracker.apply(
            verified(
                STREAM_UPDATED,
                {"status": "disabled", "reason": "maintenance"},
                jti="u1",
                sub_id=stream,
            )
        )
        assert disabled.kind == "stream_updated"
        assert tracker.streams["s" * 32].status == "disabled"
        assert tracker.active_missions() == set()
        reader.documents = {
            MISSION: {"state": "active", "version": 1},
            other: {"state": "revoked", "version": 2},
        }
        await tracker.apply(
            verified(STREAM_UPDATED, {"status": "enabled"}, jti="u2", sub_id=stream)
        )
        assert sorted(reader.calls) == sorted([MISSION, other])
        assert tracker.active_missions() == {MISSION}

    run(main)


def test_unknown_and_proposal_types_are_ignored() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        for i, event_type in enumerate(
            (NAMESPACE + "proposal-submitted", "urn:example:other", VERIFICATION + "-x")
        ):
            outcome = await tracker.apply(verified(event_type, {"version": 1}, jti=f"i{i}"))
            assert outcome.kind == "ignored"
        assert tracker.missions() == {}

    run(main)


def test_the_snapshots_are_copies() -> None:
    async def main() -> None:
        tracker = MissionTracker()
        await tracker.apply(approved())
        copy = tracker.mission(MISSION)
        assert copy is not None
        copy.state = "revoked"
        assert tracker.is_active(MISSION)

    run(main)


def test_http_mission_reader_gets_the_mission_with_the_token() -> None:
    async def main() -> None:
        seen: list[tuple[str, str | None]] = []

        async def mission(request: web.Request) -> web.Response:
            seen.append((request.path, request.headers.get("Authorization")))
            if request.match_info["id"] != MISSION:
                return web.json_response({"code": "not_found"}, status=404)
            return web.json_response({"mission_id": MISSION, "state": "active", "version": 7})

        app = web.Application()
        app.router.add_get("/issuer/missions/{id}", mission)
        async with serve(app) as url, aiohttp.ClientSession() as session:
            read = http_mission_reader(url + "/issuer/", TOKEN, session)
            document = await read(MISSION)
            assert document is not None
            assert document["version"] == 7
            assert await read("unknown") is None
            assert seen[0] == (f"/issuer/missions/{MISSION}", f"Bearer {TOKEN}")

    run(main)
