"""SSF delivery end to end: Mission commands through the API, SETs polled (RFC 8936) by a real
HTTP receiver, verified with joserfc against the served JWKS and validated against the
published schemas.

Every assertion about *absence* (a dropped, excluded or out-of-scope event) is made only after
``/healthz`` reports ``outbox_lag`` 0, i.e. after the outbox has folded every event committed so
far; presence is awaited by polling with a generous bound. No timing assertions.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mission_ledger.config import Settings
from mission_ledger.http.app import create_app
from mission_ledger.http.rfc8936_poll import POLL_HUB
from mission_ledger.http.state import LEDGER, OUTBOX, ServerOptions
from mission_ledger.principals import PrincipalRegistry
from mission_ledger.ssf import LIFECYCLE_CHANGE, NAMESPACE
from mission_ledger.ssf.outbox_store import OutboxStore
from tests.e2e.conftest import SSF_ISSUER, Server, ssf_principals, start_server
from tests.e2e.ssf_receiver import (
    PROFILE_TYPE,
    SESSION_REVOKED,
    TOKEN_CLAIMS_CHANGE,
    VERIFICATION,
    WAIT,
    ReceivedSet,
    Receiver,
    by_type,
    history,
    outbox_caught_up,
    server_data,
    versions,
)
from tests.e2e.test_http_api import CHILD_AUTHORITY, PROPOSAL, Client, _mission, run
from tests.pgtarget import PgTarget


async def _receivers(c: Client) -> tuple[Receiver, Receiver]:
    erp = Receiver(c, "receiver", SSF_ISSUER)
    crm = Receiver(c, "foreign_receiver", SSF_ISSUER)
    await erp.discover()
    await crm.discover()
    return erp, crm


def _profile(config: dict[str, Any]) -> list[str]:
    return [uri for uri in config["events_supported"] if uri.startswith(NAMESPACE)]


async def _profile_stream(receiver: Receiver, **extra: Any) -> str:
    """A poll stream requesting every event type of our profile the receiver may get."""
    probe = await receiver.create()
    await receiver.call(
        "DELETE", receiver.endpoint("configuration_endpoint") + f"?stream_id={probe['stream_id']}"
    )
    config = await receiver.create({"events_requested": _profile(probe), **extra})
    assert config["events_delivered"] == _profile(probe)
    return str(config["stream_id"])


async def _command(c: Client, mission_id: str, name: str, as_: str, body: Any = None) -> None:
    reply = await c.post(f"/missions/{mission_id}/{name}", {} if body is None else body, as_=as_)
    assert reply.status == 200, reply.text


def _about(received: list[ReceivedSet], *missions: str) -> list[ReceivedSet]:
    return [item for item in received if item.subject_id in missions]


def _check_profile_sets(
    received: list[ReceivedSet], mission_id: str, events: list[dict[str, Any]]
) -> None:
    """Our profile's SETs about one Mission: one per ledger event, in version order, with the
    ledger event's id as txn and the right type, subject and version."""
    mine = [
        r for r in received if r.subject_id == mission_id and r.event_type in PROFILE_TYPE.values()
    ]
    assert [r.event["version"] for r in mine] == [e["version"] for e in events]
    for item, event in zip(mine, events, strict=True):
        assert item.event_type == PROFILE_TYPE[event["type"]], (item.event_type, event["type"])
        assert item.claims["txn"] == event["event_id"]
        assert item.claims["sub_id"] == {"format": "opaque", "id": mission_id}
        assert item.event["mission_id"] == mission_id


# -- the whole lifecycle --------------------------------------------------------------------------


def test_every_transition_arrives_once_in_version_order(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, crm = await _receivers(c)
        profile = await _profile_stream(erp)
        compat_config = await erp.create(
            {
                "events_requested": [LIFECYCLE_CHANGE, SESSION_REVOKED, TOKEN_CLAIMS_CHANGE],
                "mission_capabilities_supported": ["authority_changed"],
                "set_signing_alg": "ES256",
            }
        )
        compat = compat_config["stream_id"]
        assert compat_config["events_delivered"] == [
            LIFECYCLE_CHANGE,
            SESSION_REVOKED,
            TOKEN_CLAIMS_CHANGE,
        ]
        drafts = (await erp.create({"events_requested": [LIFECYCLE_CHANGE]}))["stream_id"]
        foreign = await _profile_stream(crm)
        assert erp.streams[profile]["aud"] == "https://erp.example.com"

        # The lifecycle, through the API, as harness, approver and operator.
        mid = await _mission(c)
        child = await c.post(
            f"/missions/{mid}/delegations",
            {"agent": "agent:ocr-helper", "authority_set": CHILD_AUTHORITY},
            as_="harness",
        )
        assert child.status == 201, child.text
        cid = child.body["mission_id"]
        await _command(c, mid, "suspend", "operator", {"reason": "unexpected volume"})
        await _command(c, mid, "resume", "operator")
        narrowed = {"authority_set": [PROPOSAL["authority_set"][0]], "reason": "no journal"}
        await _command(c, mid, "narrow", "harness", narrowed)
        await _command(c, mid, "revoke", "operator", {"reason": "done"})
        parent_events, child_events = await history(c, mid), await history(c, cid)
        assert [e["type"] for e in parent_events] == [
            "MissionApproved",
            "MissionDelegated",
            "MissionSuspended",
            "MissionResumed",
            "MissionAuthorityNarrowed",
            "MissionRevoked",
        ]
        assert [e["type"] for e in child_events] == [
            "MissionApproved",
            "MissionSuspended",
            "MissionResumed",
            "MissionCascaded",
        ]
        txn = {
            e["event_id"]: (m, e)
            for m, es in ((mid, parent_events), (cid, child_events))
            for e in es
        }
        await outbox_caught_up(c)

        # Our profile: every transition of both Missions, once, in version order.
        got = await erp.collect(profile, lambda r: len(_about(r, mid, cid)) >= 10)
        await erp.expect_nothing(profile)
        assert len(_about(got, mid, cid)) == 10
        assert len({r.jti for r in got}) == len(got)
        _check_profile_sets(got, mid, parent_events)
        _check_profile_sets(got, cid, child_events)
        revoked = next(r for r in got if r.event_type == PROFILE_TYPE["MissionRevoked"])
        assert revoked.event["state"] == "revoked"
        assert revoked.event["prior_state"] == "active"
        assert revoked.event["reason_admin"] == {"en": "done"}
        cascaded = next(r for r in got if r.event_type == PROFILE_TYPE["MissionCascaded"])
        assert cascaded.event["cause_mission_id"] == mid
        assert cascaded.claims["txn"] != revoked.claims["txn"]  # each Mission has its own event

        # The drafts' lifecycle-change and CAEP, only where requested, ES256, the same txns.
        compat_sets = await erp.collect(compat, lambda r: len(_about(r, mid, cid)) >= 15)
        await erp.expect_nothing(compat)
        assert all(r.header["alg"] == "ES256" for r in compat_sets)
        assert not [r for r in compat_sets if r.event_type.startswith(NAMESPACE)]
        assert versions(compat_sets, mid, LIFECYCLE_CHANGE) == [1, 2, 3, 4, 5, 6]
        assert versions(compat_sets, cid, LIFECYCLE_CHANGE) == [1, 2, 3, 4]
        for item in by_type(compat_sets, LIFECYCLE_CHANGE):
            mission, event = txn[item.claims["txn"]]
            assert item.event["mission"] == {"id": mission, "issuer": SSF_ISSUER}
            assert item.event["version"] == event["version"]
        narrowing = [
            r for r in by_type(compat_sets, LIFECYCLE_CHANGE) if r.event.get("authority_changed")
        ]
        assert [r.event["version"] for r in narrowing] == [5]
        revocations = by_type(compat_sets, SESSION_REVOKED)
        assert sorted(
            (txn[r.claims["txn"]][0], txn[r.claims["txn"]][1]["version"]) for r in revocations
        ) == sorted([(mid, 3), (mid, 6), (cid, 2), (cid, 4)])
        for item in revocations:
            assert item.claims["sub_id"] == {
                "format": "complex",
                "session": {"format": "opaque", "id": txn[item.claims["txn"]][0]},
            }
            assert item.event["reason_admin"]["en"]
            assert isinstance(item.event["event_timestamp"], int)
            assert item.event["initiating_entity"] in {"admin", "user", "policy", "system"}
        (claims_change,) = by_type(compat_sets, TOKEN_CLAIMS_CHANGE)
        assert txn[claims_change.claims["txn"]][1]["type"] == "MissionAuthorityNarrowed"
        assert claims_change.event["claims"] == {"scope": "invoices.flag invoices.read"}
        # One ledger event, one txn, whichever output carries it.
        profile_txns = {r.claims["txn"] for r in _about(got, mid, cid)}
        assert {r.claims["txn"] for r in _about(compat_sets, mid, cid)} <= profile_txns

        # Without the authority_changed capability the narrowing body is not delivered.
        plain = await erp.collect(drafts, lambda r: len(_about(r, mid, cid)) >= 9)
        await erp.expect_nothing(drafts)
        assert all(r.header["alg"] == "RS256" for r in plain)
        assert versions(plain, mid, LIFECYCLE_CHANGE) == [1, 2, 3, 4, 6]
        assert versions(plain, cid, LIFECYCLE_CHANGE) == [1, 2, 3, 4]

        # A receiver scoped to other resources hears nothing of these Missions.
        await crm.expect_nothing(foreign)

    run(ssf_server, scenario)


# -- status ---------------------------------------------------------------------------------------


def test_paused_holds_in_order_and_disabled_drops(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, _ = await _receivers(c)
        sid = await _profile_stream(erp)
        mid = await _mission(c)
        first = await erp.collect(sid, lambda r: versions(r, mid) == [1])
        assert versions(first, mid) == [1]

        await erp.status(sid, "paused", "maintenance")
        await _command(c, mid, "suspend", "operator")
        await _command(c, mid, "resume", "operator")
        verify = await erp.call(
            "POST", erp.endpoint("verification_endpoint"), {"stream_id": sid, "state": "held"}
        )
        assert verify.status == 204, verify.text  # accepted while paused; the SET is held
        await outbox_caught_up(c)
        await erp.expect_nothing(sid)  # paused: nothing is transmitted
        idle = await erp.poll(sid, maxEvents=0)  # acknowledge-only: answers at once
        assert idle.ok()["sets"] == {}

        await erp.status(sid, "enabled")
        held = await erp.collect(sid, lambda r: len(r) >= 3)
        assert [(r.event_type, r.event.get("version")) for r in held] == [
            (PROFILE_TYPE["MissionSuspended"], 2),
            (PROFILE_TYPE["MissionResumed"], 3),
            (VERIFICATION, None),
        ]  # held SETs are delivered in the order they were generated
        assert held[2].event == {"state": "held"}
        assert held[2].claims["sub_id"] == {"format": "opaque", "id": sid}

        await erp.status(sid, "disabled")
        await _command(c, mid, "suspend", "operator")  # version 4: dropped
        await outbox_caught_up(c)
        await erp.expect_nothing(sid)
        await erp.status(sid, "enabled")
        await _command(c, mid, "resume", "operator")  # version 5: delivered
        after = await erp.collect(sid, lambda r: versions(r, mid) == [5])
        assert versions(after, mid) == [5]
        await outbox_caught_up(c)
        await erp.expect_nothing(sid)

    run(ssf_server, scenario)


def test_verification_round_trip(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, _ = await _receivers(c)
        sid = await _profile_stream(erp)
        url = erp.endpoint("verification_endpoint")
        state = "VGhpcyBpcyBhbiBleGFtcGxlIHN0YXRlIHZhbHVlLgo="
        assert (await erp.call("POST", url, {"stream_id": sid, "state": state})).status == 204
        (item,) = await erp.collect(sid, lambda r: len(r) >= 1)
        assert item.event_type == VERIFICATION
        assert item.event == {"state": state}
        assert item.claims["sub_id"] == {"format": "opaque", "id": sid}
        assert item.claims["aud"] == "https://erp.example.com"
        again = await erp.call("POST", url, {"stream_id": sid, "state": "again"})
        problem = again.problem(429, "too_many_requests")
        assert int(again.headers["Retry-After"]) >= 1
        assert problem["retry_after"] == int(again.headers["Retry-After"])
        await outbox_caught_up(c)
        await erp.expect_nothing(sid)  # the refused request queued nothing

    run(ssf_server, scenario)


# -- subjects -------------------------------------------------------------------------------------


def test_subjects_exclude_and_reinclude_but_never_widen_scope(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, crm = await _receivers(c)
        sid = await _profile_stream(erp)
        foreign = await _profile_stream(crm)
        one, two = await _mission(c), await _mission(c)
        await erp.collect(sid, lambda r: versions(r, one) == [1] and versions(r, two) == [1])

        subject = {"stream_id": sid, "subject": {"format": "opaque", "id": one}}
        removed = await erp.call("POST", erp.endpoint("remove_subject_endpoint"), subject)
        assert removed.status == 204, removed.text
        await _command(c, one, "suspend", "operator")  # excluded
        await _command(c, two, "suspend", "operator")
        added = await erp.call("POST", erp.endpoint("add_subject_endpoint"), subject)
        assert added.status == 200, added.text
        await _command(c, one, "resume", "operator")  # included again
        await _command(c, two, "resume", "operator")
        await outbox_caught_up(c)
        got = await erp.collect(sid, lambda r: len(r) >= 3)
        await erp.expect_nothing(sid)
        assert versions(got, one) == [3]
        assert versions(got, two) == [2, 3]

        # Adding a subject outside the receiver's scope is accepted silently and changes nothing.
        outside = {"stream_id": foreign, "subject": {"format": "opaque", "id": one}}
        accepted = await crm.call("POST", crm.endpoint("add_subject_endpoint"), outside)
        assert accepted.status == 200, accepted.text
        await _command(c, one, "revoke", "operator")
        await outbox_caught_up(c)
        await crm.expect_nothing(foreign)
        assert versions(await erp.collect(sid, lambda r: len(r) >= 1), one) == [4]

    run(ssf_server, scenario)


# -- the poll protocol ----------------------------------------------------------------------------


def test_long_poll_waits_for_the_next_set(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, _ = await _receivers(c)
        sid = await _profile_stream(erp)
        idle = await erp.poll(sid)  # {} is a long poll; nothing comes within the server's 2 s
        assert idle.ok() == {"sets": {}, "moreAvailable": False}
        assert idle.headers["Cache-Control"] == "no-store"

        async def long_poll() -> dict[str, str]:
            deadline = time.monotonic() + WAIT
            while True:  # a loaded machine may let one long poll time out first
                sets: dict[str, str] = (await erp.poll(sid, maxEvents=10)).ok()["sets"]
                if sets:
                    return sets
                assert time.monotonic() < deadline

        waiting = asyncio.create_task(long_poll())
        await asyncio.sleep(0.2)
        mid = await _mission(c)
        sets = await asyncio.wait_for(waiting, WAIT)
        received = [erp.verify(sid, jti, token) for jti, token in sets.items()]
        assert versions(received, mid) == [1]
        ack = await erp.poll(sid, ack=list(sets), maxEvents=0)  # no returnImmediately: ack only
        assert ack.ok()["sets"] == {}
        await outbox_caught_up(c)
        await erp.expect_nothing(sid)

    run(ssf_server, scenario)


def test_max_events_redelivery_set_errs_and_bad_requests(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, _ = await _receivers(c)
        sid = await _profile_stream(erp)
        mid = await _mission(c)
        await _command(c, mid, "suspend", "operator")
        await _command(c, mid, "resume", "operator")
        await outbox_caught_up(c)

        def one(reply: Any) -> tuple[str, str, bool]:
            body = reply.ok()
            ((jti, token),) = body["sets"].items()
            assert erp.verify(sid, jti, token).event["version"] == len(seen) + 1
            seen.append(jti)
            return jti, token, body["moreAvailable"]

        seen: list[str] = []
        first, _, more = one(await erp.poll(sid, maxEvents=1, returnImmediately=True))
        assert more is True
        second, _, more = one(await erp.poll(sid, maxEvents=1, returnImmediately=True, ack=[first]))
        assert more is True
        third, token, more = one(
            await erp.poll(sid, maxEvents=5, returnImmediately=True, ack=[second])
        )
        assert more is False

        # Not acknowledged: offered again (byte-identical) after the server's re-offer interval.
        deadline = time.monotonic() + WAIT
        while True:
            sets = (await erp.poll(sid, returnImmediately=True)).ok()["sets"]
            if sets:
                assert sets == {third: token}
                break
            assert time.monotonic() < deadline
            await asyncio.sleep(0.2)

        # setErrs: recorded for the operator's statistics; the SET leaves the queue.
        errs = {third: {"err": "invalid_key", "description": "kid not trusted here"}}
        reported = await erp.poll(sid, setErrs=errs, maxEvents=0, returnImmediately=True)
        assert reported.ok()["sets"] == {}
        with OutboxStore.open(Settings(data_dir=server_data(ssf_server))) as store:
            stats = store.stream_stats(sid, datetime.now(UTC))
        assert stats["queue_depth"] == 0
        assert stats["last_errors"][0]["jti"] == third
        assert stats["last_errors"][0]["err"] == "invalid_key"
        assert stats["last_errors"][0]["description"] == "kid not trusted here"
        await erp.expect_nothing(sid)

        # Unknown members are ignored (caep.dev clients send stream_id); wrong types are 400.
        tolerant = await erp.poll(sid, stream_id=sid, returnImmediately=True, ack=["unknown-jti"])
        assert tolerant.ok() == {"sets": {}, "moreAvailable": False}
        for body, field in (
            ({"maxEvents": -1}, "maxEvents"),
            ({"maxEvents": "5"}, "maxEvents"),
            ({"maxEvents": True}, "maxEvents"),
            ({"returnImmediately": "yes"}, "returnImmediately"),
            ({"ack": "jti"}, "ack"),
            ({"ack": [1]}, "ack.0"),
            ({"setErrs": {"jti": "bad"}}, "setErrs.jti"),
            ({"setErrs": {"jti": {"description": "no err"}}}, "setErrs.jti.err"),
        ):
            problem = (await erp.poll(sid, **body)).problem(400, "invalid_request")
            assert problem["field"] == field, (body, problem)
        url = erp.streams[sid]["delivery"]["endpoint_url"]
        (await erp.call("POST", url, [])).problem(400, "invalid_request")
        json_header = {"Content-Type": "application/json"}
        (await erp.call("POST", url, data="{", headers=json_header)).problem(400, "invalid_json")
        text = await erp.call("POST", url, data="{}", headers={"Content-Type": "text/plain"})
        text.problem(415, "unsupported_media_type")
        empty = await erp.call("POST", url, data=b"", headers=json_header)  # no body: a poll
        assert empty.ok() == {"sets": {}, "moreAvailable": False}

    run(ssf_server, scenario)


def test_deleting_a_stream_drops_its_queue(ssf_server: Server) -> None:
    async def scenario(c: Client) -> None:
        erp, _ = await _receivers(c)
        sid = await _profile_stream(erp)
        await _mission(c)
        await outbox_caught_up(c)
        data = server_data(ssf_server)
        with OutboxStore.open(Settings(data_dir=data)) as store:
            assert store.stream_stats(sid, datetime.now(UTC))["queue_depth"] == 1
        url = erp.endpoint("configuration_endpoint") + f"?stream_id={sid}"
        assert (await erp.call("DELETE", url)).status == 204
        (await erp.call("GET", url)).problem(404, "not_found")
        (await erp.poll(sid, returnImmediately=True)).problem(404, "not_found")
        await outbox_caught_up(c)
        with OutboxStore.open(Settings(data_dir=data)) as store:
            assert store.stream_stats(sid, datetime.now(UTC))["queue_depth"] == 0

    run(ssf_server, scenario)


# -- shutdown and PostgreSQL ----------------------------------------------------------------------


async def _waiting_polls(c: Client, count: int) -> None:
    deadline = time.monotonic() + WAIT
    while (await c.get("/healthz")).body.get("ssf_polls_waiting") != count:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


def test_a_stopping_server_answers_waiting_long_polls(tmp_path: Path) -> None:
    """In process, the real app on a loopback TCP site: the shutdown drain (1 s) is far shorter
    than the long-poll timeout (25 s), so a poll the shutdown did not answer would be cut off;
    it is answered, 200 with no SETs."""

    async def main() -> None:
        settings = Settings(data_dir=tmp_path / "var", issuer=SSF_ISSUER)
        app = create_app(settings, options=ServerOptions(poll_timeout=25))
        runner = web.AppRunner(app, shutdown_timeout=1.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            host, port = runner.addresses[0][:2]
            base = f"http://{host}:{port}"
            _, token = PrincipalRegistry(app[LEDGER]).create(
                role="receiver",
                name="erp",
                actor="operator:test",
                audience="https://erp.example.com",
                resources=["https://erp.example.com/invoices/"],
            )
            auth = {"Authorization": f"Bearer {token}"}
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{base}/ssf/stream", json={}, headers=auth) as created:
                    assert created.status == 201, await created.text()
                    poll_url = (await created.json())["delivery"]["endpoint_url"]
                path = poll_url.removeprefix(SSF_ISSUER)

                async def long_poll() -> tuple[int, Any]:
                    async with session.post(base + path, json={}, headers=auth) as answer:
                        return answer.status, await answer.json()

                waiting = asyncio.create_task(long_poll())
                deadline = time.monotonic() + WAIT
                while app[POLL_HUB].waiting() != 1:
                    assert time.monotonic() < deadline
                    assert not waiting.done(), waiting.result()
                    await asyncio.sleep(0.02)
                await runner.cleanup()
                status, body = await asyncio.wait_for(waiting, WAIT)
                assert (status, body) == (200, {"sets": {}, "moreAvailable": False})
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_the_embedded_outbox_worker_wakes_waiting_polls(tmp_path: Path) -> None:
    """In process: the worker's listener reaches the poll hub, so a waiting poll is woken by the
    commit itself, not only by its periodic recheck."""

    async def main() -> None:
        app = create_app(Settings(data_dir=tmp_path / "var", issuer=SSF_ISSUER))
        async with TestClient(TestServer(app)) as client:
            _, token = PrincipalRegistry(app[LEDGER]).create(
                role="receiver",
                name="erp",
                actor="operator:test",
                audience="https://erp.example.com",
                all_missions=True,
            )
            auth = {"Authorization": f"Bearer {token}"}
            created = await client.post("/ssf/stream", json={}, headers=auth)
            sid = (await created.json())["stream_id"]
            with app[POLL_HUB].subscribe(sid) as woken:
                verify = await client.post("/ssf/verify", json={"stream_id": sid}, headers=auth)
                assert verify.status == 204, await verify.text()
                await asyncio.wait_for(woken.wait(), WAIT)  # set by the worker's listener only
            assert app[OUTBOX].has_offerable(sid, True, 30.0, datetime.now(UTC))

    asyncio.run(main())


@pytest.mark.postgres
def test_ssf_delivery_on_postgres(postgres_schema_url: PgTarget, tmp_path: Path) -> None:
    server = start_server(
        tmp_path,
        ["--database-url", postgres_schema_url.ledger_url],
        "--issuer",
        SSF_ISSUER,
        "--poll-timeout",
        "2",
    )
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        principals = ssf_principals()
        server.mint(
            {k: principals[k] for k in ("approver", "harness", "receiver", "foreign_receiver")}
        )

        async def scenario(c: Client) -> None:
            erp, crm = await _receivers(c)
            sid = await _profile_stream(erp)
            compat = (
                await erp.create(
                    {"events_requested": [SESSION_REVOKED], "set_signing_alg": "ES256"}
                )
            )["stream_id"]
            foreign = await _profile_stream(crm)

            async def long_poll() -> dict[str, str]:
                deadline = time.monotonic() + WAIT
                while True:
                    sets: dict[str, str] = (await erp.poll(sid)).ok()["sets"]
                    if sets:
                        return sets
                    assert time.monotonic() < deadline

            waiting = asyncio.create_task(long_poll())
            mid = await _mission(c)
            first = await asyncio.wait_for(waiting, WAIT)
            assert versions([erp.verify(sid, j, t) for j, t in first.items()], mid) == [1]
            await erp.poll(sid, ack=list(first), maxEvents=0)
            child = await c.post(
                f"/missions/{mid}/delegations",
                {"agent": "agent:ocr-helper", "authority_set": CHILD_AUTHORITY},
                as_="harness",
            )
            assert child.status == 201, child.text
            cid = child.body["mission_id"]
            await _command(c, mid, "revoke", "operator", {"reason": "done"})
            parent_events, child_events = await history(c, mid), await history(c, cid)
            await outbox_caught_up(c)
            got = await erp.collect(sid, lambda r: len(_about(r, mid, cid)) >= 4)
            _check_profile_sets(got, mid, parent_events[1:])
            _check_profile_sets(got, cid, child_events)
            revocations = await erp.collect(compat, lambda r: len(r) >= 2)
            assert sorted(r.claims["txn"] for r in revocations) == sorted(
                [parent_events[-1]["event_id"], child_events[-1]["event_id"]]
            )
            assert all(r.header["alg"] == "ES256" for r in revocations)
            await crm.expect_nothing(foreign)

            url = erp.endpoint("verification_endpoint")
            assert (await erp.call("POST", url, {"stream_id": sid, "state": "pg"})).status == 204
            (verification,) = await erp.collect(sid, lambda r: len(r) >= 1)
            assert verification.event == {"state": "pg"}
            (await erp.call("POST", url, {"stream_id": sid})).problem(429, "too_many_requests")

            config_url = erp.endpoint("configuration_endpoint") + f"?stream_id={sid}"
            assert (await erp.call("DELETE", config_url)).status == 204
            (await erp.poll(sid, returnImmediately=True)).problem(404, "not_found")

        run(server, scenario)
    finally:
        assert server.stop() == 0, server.logs()
