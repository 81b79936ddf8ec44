"""The receiver SDK fed with what a real ledger emits: every Mission event of a lifecycle mapped
by :mod:`mission_ledger.ssf.mission_events`, signed with our key store, pushed over loopback HTTP
to :func:`push_handler`, applied by a :class:`MissionTracker` — in order, shuffled and duplicated.
Whatever the delivery order, the tracker ends where the ledger is (the re-read is the ledger's own
Mission document, as ``GET /missions/{id}`` returns it)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import MissionLedger
from mission_ledger.receiver import (
    LIFECYCLE_CHANGE,
    SET_CONTENT_TYPE,
    MissionTracker,
    SetVerifier,
    push_handler,
)
from mission_ledger.ssf import (
    caep_events,
    lifecycle_change_body,
    mission_event,
    mission_subject,
)
from mission_ledger.ssf.keys import MemoryKeyStore
from mission_ledger.ssf.rfc8417_set import build_set_claims, sign_set
from tests.integration.contract_fixtures import (
    HOUR,
    OPERATOR,
    T0,
    child_authority,
    entry,
    open_child,
    open_mission,
)

AUD = "https://erp.example.com"


@dataclass(frozen=True)
class Emitted:
    mission_id: str
    version: int
    kind: str  # "profile", "drafts" or "caep"
    token: str


def _lifecycle(ledger: MissionLedger) -> list[str]:
    """A lifecycle touching every state a receiver must handle; the ids of its Missions."""
    clock = ledger.clock
    assert isinstance(clock, FixedClock)
    root = open_mission(ledger, stages=["collect", "reconcile"])
    child = open_child(ledger, root, authority_set=child_authority(delegable_to=["agent-3"]))
    until = format_rfc3339(clock.now() + HOUR)
    ledger.suspend(root, actor="operator:olga", reason="check", until=until, on_expiry="resume")
    ledger.resume(root, actor="operator:olga")
    ledger.advance_stage(root, actor=OPERATOR, to_stage=None, reason="collected")
    ledger.narrow(
        root, actor=OPERATOR, authority_set=[entry(["invoices.read"])], reason="read only"
    )
    ledger.suspend(root, actor=OPERATOR, reason="again")
    ledger.resume(root, actor=OPERATOR)
    ledger.revoke(root, actor="operator:olga", reason="done")  # cascades to the child
    survivor = open_mission(ledger)
    ledger.suspend(survivor, actor=OPERATOR, reason="pending review")
    ledger.resume(survivor, actor=OPERATOR)
    paused = open_mission(ledger)
    ledger.suspend(paused, actor=OPERATOR, reason="holiday")
    clock.advance(timedelta(minutes=5))
    return [root, child, survivor, paused]


def _emit(ledger: MissionLedger, missions: list[str], key: Any) -> list[Emitted]:
    out: list[Emitted] = []
    for mission_id in missions:
        for event in ledger.events.get(UUID(mission_id)):
            doc = ledger.mission_as_of(mission_id, version=event.originator_version)
            version = event.originator_version
            uri, body = mission_event(event, doc)
            bodies = [("profile", uri, body, mission_subject(mission_id))]
            bodies.append(
                (
                    "drafts",
                    LIFECYCLE_CHANGE,
                    lifecycle_change_body(event, doc),
                    mission_subject(mission_id),
                )
            )
            bodies += [("caep", c.uri, c.event, c.sub_id) for c in caep_events(event, doc)]
            for kind, event_type, payload, sub_id in bodies:
                claims = build_set_claims(
                    iss=ledger.issuer,
                    aud=AUD,
                    event_type=event_type,
                    event=payload,
                    sub_id=sub_id,
                    txn=str(event.event_id),
                )
                out.append(Emitted(mission_id, version, kind, sign_set(claims, key)))
    return out


@pytest.fixture(scope="module")
def world() -> tuple[MissionLedger, list[str], list[Emitted], MemoryKeyStore]:
    ledger = MissionLedger(Settings(database_url="memory:"), clock=FixedClock(T0))
    missions = _lifecycle(ledger)
    keys = MemoryKeyStore(rsa_bits=2048)
    keys.ensure_keys()
    return ledger, missions, _emit(ledger, missions, keys.active("ES256")), keys


async def _deliver(
    ledger: MissionLedger, keys: MemoryKeyStore, tokens: list[str], tracker: MissionTracker
) -> None:
    async def jwks(request: web.Request) -> web.Response:
        return web.json_response(keys.jwks())

    jwks_app = web.Application()
    jwks_app.router.add_get("/jwks.json", jwks)
    jwks_server = TestServer(jwks_app, host="127.0.0.1", port=0)
    await jwks_server.start_server()
    async with aiohttp.ClientSession() as session:
        verifier = SetVerifier(ledger.issuer, AUD, str(jwks_server.make_url("/jwks.json")), session)
        receiver = web.Application()
        receiver.router.add_post("/events", push_handler(verifier, tracker.apply))
        push_server = TestServer(receiver, host="127.0.0.1", port=0)
        await push_server.start_server()
        try:
            for token in tokens:
                async with session.post(
                    push_server.make_url("/events"),
                    data=token,
                    headers={"Content-Type": SET_CONTENT_TYPE},
                ) as response:
                    assert response.status == 202, await response.text()
        finally:
            await push_server.close()
            await jwks_server.close()


def _ledger_reader(ledger: MissionLedger) -> Any:
    async def read(mission_id: str) -> Mapping[str, Any] | None:
        return ledger.mission_as_of(mission_id)

    return read


def _assert_matches_ledger(
    ledger: MissionLedger, tracker: MissionTracker, missions: list[str]
) -> None:
    for mission_id in missions:
        truth = ledger.mission_as_of(mission_id)
        known = tracker.mission(mission_id)
        assert known is not None, mission_id
        assert (known.state, known.version) == (truth["state"], truth["version"]), mission_id
        assert not known.needs_resync
        assert tracker.is_active(mission_id) == (truth["state"] == "active")
        if known.authority_set is not None:
            assert known.authority_set == truth["authority_set"]


@pytest.mark.parametrize("kind", ["profile", "drafts"])
def test_in_order_delivery_follows_the_ledger_without_re_reads(
    world: tuple[MissionLedger, list[str], list[Emitted], MemoryKeyStore], kind: str
) -> None:
    ledger, missions, emitted, keys = world
    reads: list[str] = []

    async def reader(mission_id: str) -> Mapping[str, Any] | None:
        reads.append(mission_id)
        return ledger.mission_as_of(mission_id)

    tracker = MissionTracker(reader)
    tokens = [e.token for e in emitted if e.kind == kind]
    asyncio.run(_deliver(ledger, keys, tokens, tracker))
    _assert_matches_ledger(ledger, tracker, missions)
    if kind == "profile":
        assert reads == []  # contiguous versions, every change carries its Authority Set
        root = tracker.mission(missions[0])
        assert root is not None
        assert root.authority_set == [entry(["invoices.read"])]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_and_duplicated_delivery_still_ends_where_the_ledger_is(
    world: tuple[MissionLedger, list[str], list[Emitted], MemoryKeyStore], seed: int
) -> None:
    ledger, missions, emitted, keys = world
    tokens = [e.token for e in emitted if e.kind in ("profile", "caep")]
    shuffled = tokens + random.Random(seed).sample(tokens, k=len(tokens) // 3)
    random.Random(seed).shuffle(shuffled)
    tracker = MissionTracker(_ledger_reader(ledger))
    asyncio.run(_deliver(ledger, keys, shuffled, tracker))
    _assert_matches_ledger(ledger, tracker, missions)


def test_caep_only_receivers_fail_closed_and_a_read_settles_the_state(
    world: tuple[MissionLedger, list[str], list[Emitted], MemoryKeyStore],
) -> None:
    ledger, _missions, emitted, keys = world
    caep = [e for e in emitted if e.kind == "caep"]
    blind = MissionTracker()  # no reader: a session revocation just stops reliance
    asyncio.run(_deliver(ledger, keys, [e.token for e in caep], blind))
    for mission_id in {e.mission_id for e in caep}:
        assert not blind.is_active(mission_id)
    reading = MissionTracker(_ledger_reader(ledger))
    asyncio.run(_deliver(ledger, keys, [e.token for e in caep], reading))
    _assert_matches_ledger(ledger, reading, sorted({e.mission_id for e in caep}))
