"""The SSF outbox on SQLite and PostgreSQL: which SETs are queued, polling, exactly-once, crashes.

Every test builds a real ledger history — receiver principals through ``PrincipalRegistry``,
streams by committing ``Stream.create(...)`` aggregates, Missions through the ledger's commands —
then runs the :class:`OutboxWorker` and reads the queue. SETs are decoded with joserfc against
the key store's JWKS. The reference the queue is compared with (:func:`reference`) is computed
from the notification log independently of the outbox's fold: its own scope rule, the Mission
documents from ``ledger.mission_as_of`` and the published mapping functions.
"""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast
from uuid import UUID, uuid4

import pytest
from joserfc import jws
from joserfc.jwk import KeySet, KeySetSerialization

from mission_ledger.bootstrap import open_ledger
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import InvalidInput
from mission_ledger.domain.mission import Mission
from mission_ledger.domain.proposal import Proposal
from mission_ledger.domain.stream import POLL, PUSH, Stream
from mission_ledger.ledger import MISSION_TOPICS, MissionLedger
from mission_ledger.principals import Principal, PrincipalRegistry
from mission_ledger.projections import (
    AnotherWorkerActive,
    ProjectionMismatch,
    ProjectionWorker,
    rebuild,
)
from mission_ledger.projections.contracts import (
    NOT_REBUILDABLE_TABLES,
    SSF_OUTBOX,
    ddl_statements,
    resolve_projections,
)
from mission_ledger.ssf import outbox
from mission_ledger.ssf.keys import FileKeyStore
from mission_ledger.ssf.mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    MISSION_APPROVED,
    MISSION_EVENT_TYPES,
    MISSION_RESUMED,
    MISSION_REVOKED,
    MISSION_SCOPE_CHANGED,
    MISSION_SUSPENDED,
    PROFILE_EVENT_TYPES,
    PROPOSAL_DENIED,
    PROPOSAL_EVENT_TYPES,
    PROPOSAL_SUBMITTED,
    caep_events,
    lifecycle_change_body,
    needs_authority_changed_capability,
)
from mission_ledger.ssf.outbox import STREAM_UPDATED, VERIFICATION, OutboxWorker
from mission_ledger.ssf.outbox_store import OutboxPage, OutboxStore, QueuedSet, Signature
from tests.integration.contract_fixtures import (
    APPROVER,
    ERP,
    HOUR,
    MAIL,
    OPERATOR,
    T0,
    delegating_entry,
    entry,
    open_child,
    open_mission,
    propose,
)
from tests.pgtarget import PgTarget

CAEP_TYPES = [CAEP_SESSION_REVOKED, CAEP_TOKEN_CLAIMS_CHANGE]
MISSION_TYPES = list(MISSION_EVENT_TYPES.values())
EVERYTHING = [*PROFILE_EVENT_TYPES, LIFECYCLE_CHANGE, *CAEP_TYPES]
TRANSMITTER = "operator:olga"
CHILD = Path(__file__).with_name("outbox_child.py")

# ---------------------------------------------------------------------------------------------
# Backends and builders
# ---------------------------------------------------------------------------------------------


@dataclass
class Env:
    """A ledger on a fixed clock, its keys and principals, and what a test opened on them."""

    name: str
    settings: Settings
    clock: FixedClock
    ledger: MissionLedger
    keys: FileKeyStore
    keys_dir: Path
    registry: PrincipalRegistry
    opened: list[Any] = field(default_factory=list)

    def worker(self, **options: Any) -> OutboxWorker:
        worker = OutboxWorker(self.ledger, self.settings, self.keys, **options)
        self.opened.append(worker)
        return worker

    def store(self) -> OutboxStore:
        store = OutboxStore.open(self.settings)
        self.opened.append(store)
        return store

    def close(self, thing: Any) -> None:
        thing.close()
        self.opened.remove(thing)

    def receiver(
        self, name: str, *, resources: Sequence[str] = (), all_missions: bool = False
    ) -> Principal:
        principal, _ = self.registry.create(
            role="receiver",
            name=name,
            actor=TRANSMITTER,
            audience=f"https://{name}.example.com",
            resources=list(resources),
            all_missions=all_missions,
        )
        return principal

    def stream(self, receiver: Principal, **options: Any) -> str:
        return create_stream(self.ledger, self.clock, receiver, **options)

    def on_stream(self, stream_id: str, operation: str, **arguments: Any) -> None:
        """Run a Stream command (``set_status``, ``add_subject``, …) and commit it."""
        stream: Any = self.ledger.repository.get(UUID(stream_id))
        getattr(stream, operation)(now=self.clock.now(), **arguments)
        self.ledger._commit([stream])

    def status(self, stream_id: str, status: str, *, by: str, reason: str | None = None) -> None:
        self.on_stream(
            stream_id,
            "set_status",
            status=status,
            reason=reason,
            initiator=by,
            actor=TRANSMITTER if by == "transmitter" else "receiver:someone",
        )


def create_stream(
    ledger: MissionLedger,
    clock: FixedClock,
    receiver: Principal,
    *,
    events: Sequence[str] = tuple(EVERYTHING),
    capabilities: Sequence[str] = ("authority_changed",),
    alg: str = "RS256",
    push: bool = False,
) -> str:
    """Commit a new stream of ``receiver`` (what the stream service does after validating)."""
    assert receiver.audience is not None
    stream = Stream.create(
        stream_id=uuid4(),
        receiver_id=receiver.principal_id,
        receiver_name=receiver.name,
        aud=receiver.audience,
        resources=list(receiver.resources),
        all_missions=receiver.all_missions,
        delivery_method=PUSH if push else POLL,
        endpoint_url="https://hooks.example.com/ssf" if push else None,
        authorization_fingerprint=None,
        events_requested=list(events),
        events_delivered=list(events),
        description=None,
        signing_alg=alg,
        mission_capabilities=list(capabilities),
        min_verification_interval=0,
        actor=receiver.actor,
        now=clock.now(),
    )
    ledger._commit([stream])
    return stream.stream_id


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(data_dir=tmp_path / "data", database_url=target.ledger_url)
    clock = FixedClock(T0)
    ledger = open_ledger(settings, clock=clock)
    keys = FileKeyStore(tmp_path / "keys", rsa_bits=2048)
    keys.ensure_keys()
    opened = Env(
        request.param, settings, clock, ledger, keys, tmp_path / "keys", PrincipalRegistry(ledger)
    )
    try:
        yield opened
    finally:
        for thing in reversed(opened.opened):
            thing.close()
        ledger.close()


def queued(store: OutboxStore, stream_id: str | None = None) -> list[dict[str, Any]]:
    """The queue's rows (of one stream, or all), in ``seq`` order, read directly."""
    backend = store._b
    where, params = (" WHERE stream_id = ?", [stream_id]) if stream_id else ("", [])
    with backend.reading() as fetch:
        statement = "SELECT * FROM {queue}" + where + " ORDER BY seq"  # noqa: S608
        return fetch(backend.sql(statement), params)


def decode(env: Env, token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, claims) of a SET, its signature checked by joserfc against the JWKS."""
    keyset = KeySet.import_key_set(cast("KeySetSerialization", env.keys.jwks()))
    signed = jws.deserialize_compact(token, keyset, algorithms=["RS256", "ES256"])
    return dict(signed.protected), json.loads(signed.payload)


def event_types(store: OutboxStore, stream_id: str) -> list[str]:
    return [row["event_type"] for row in queued(store, stream_id)]


def poll(
    store: OutboxStore,
    stream_id: str,
    env: Env,
    *,
    max_events: int | None = None,
    ack: Sequence[str] = (),
    set_errs: dict[str, dict[str, str]] | None = None,
    deliver: bool = True,
    reoffer_after: float = 60.0,
) -> tuple[dict[str, str], bool]:
    return store.poll(
        stream_id,
        max_events=max_events,
        ack=list(ack),
        set_errs=set_errs or {},
        deliver=deliver,
        reoffer_after=reoffer_after,
        now=env.clock.now(),
    )


def offered_types(env: Env, sets: dict[str, str]) -> list[str]:
    return [next(iter(decode(env, token)[1]["events"])) for token in sets.values()]


# ---------------------------------------------------------------------------------------------
# The reference (independent of the outbox's fold)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscriber:
    """What the reference needs to know of a stream that never changes after creation."""

    stream_id: str
    created_at: int  # ledger position of its StreamCreated
    resources: tuple[str, ...]
    all_missions: bool
    events: frozenset[str]
    capabilities: frozenset[str]

    def sees(self, authority_set: list[dict[str, Any]]) -> bool:
        if self.all_missions:
            return True
        for e in authority_set:
            body = e["resource"].rstrip("*")
            if any(e["resource"].startswith(p) or p.startswith(body) for p in self.resources):
                return True
        return False


def subscriber(env: Env, stream_id: str) -> Subscriber:
    stream: Any = env.ledger.repository.get(UUID(stream_id))
    created = [
        n.id
        for n in env.ledger.recorder.select_notifications(1, 10**9, topics=[Stream.Created.TOPIC])
        if n.originator_id == UUID(stream_id)
    ]
    return Subscriber(
        stream_id,
        created[0],
        tuple(stream.resources),
        stream.all_missions,
        frozenset(stream.events_delivered),
        frozenset(stream.mission_capabilities),
    )


def reference(ledger: MissionLedger, subscribers: Sequence[Subscriber]) -> Counter[tuple[str, ...]]:
    """(stream_id, txn, event_type) of every SET the history should have queued."""
    expected: Counter[tuple[str, ...]] = Counter()
    approved: dict[str, list[dict[str, Any]]] = {}
    topics = (*MISSION_TOPICS, Proposal.Submitted.TOPIC, Proposal.Denied.TOPIC)
    for n in ledger.recorder.select_notifications(1, 10**9, topics=topics):
        event: Any = ledger.mapper.to_domain_event(n)
        live = [s for s in subscribers if s.created_at < n.id]
        if isinstance(event, Proposal.Event):
            uri = PROPOSAL_EVENT_TYPES[type(event)]
            for s in live:
                if s.all_missions and uri in s.events:
                    expected[(s.stream_id, event.event_id, uri)] += 1
            continue
        mission_id = str(event.originator_id)
        if isinstance(event, Mission.Approved):
            approved[mission_id] = event.authority_set
        document = ledger.mission_as_of(mission_id, version=event.originator_version)
        lifecycle = lifecycle_change_body(event, document)
        uris = [
            MISSION_EVENT_TYPES[type(event)],
            LIFECYCLE_CHANGE,
            *(c.uri for c in caep_events(event, document)),
        ]
        for s in live:
            if not s.sees(approved[mission_id]):
                continue
            for uri in uris:
                gated = uri == LIFECYCLE_CHANGE and needs_authority_changed_capability(lifecycle)
                if uri in s.events and not (gated and "authority_changed" not in s.capabilities):
                    expected[(s.stream_id, event.event_id, uri)] += 1
    return expected


def actual(store: OutboxStore) -> Counter[tuple[str, ...]]:
    return Counter((r["stream_id"], r["txn"], r["event_type"]) for r in queued(store))


def history(env: Env) -> dict[str, str]:
    """Every kind of Mission event, two proposal events, and Missions of different scopes."""
    ledger, clock = env.ledger, env.clock
    ids: dict[str, str] = {}
    ids["root"] = open_mission(ledger)
    ids["child"] = open_child(ledger, ids["root"])
    clock.advance(timedelta(minutes=5))
    ledger.suspend(ids["root"], actor=OPERATOR, reason="incident")  # the child follows
    ledger.resume(ids["root"], actor=OPERATOR)
    narrower = [delegating_entry(("invoices.read",)), entry(["mail.send"], resource=MAIL)]
    ledger.narrow(ids["root"], narrower, actor=OPERATOR, reason="least privilege")
    ids["staged"] = open_mission(
        ledger,
        agent="agent-5",
        stages=["plan", "execute"],
        authority_set=[
            entry(["invoices.read"]),
            entry(["invoices.write"], constraints={"stage": "execute"}),
        ],
    )
    ledger.advance_stage(ids["staged"], actor="agent-5")
    ids["mail_only"] = open_mission(
        ledger, agent="agent-6", authority_set=[entry(["mail.send"], resource=MAIL)]
    )
    ledger.revoke(ids["root"], actor=OPERATOR, reason="done")  # the child is cascaded
    ids["completed"] = open_mission(ledger, agent="agent-7")
    ledger.complete(ids["completed"], actor="agent-7")
    ids["old"] = open_mission(ledger, agent="agent-8")
    successor = propose(ledger, agent="agent-8", predecessor=ids["old"])
    ids["successor"] = str(ledger.approve(successor, actor=APPROVER).document["mission_id"])
    ids["swept"] = open_mission(ledger, agent="agent-9", expires_at=clock.now() + HOUR)
    clock.advance(2 * HOUR)
    ledger.expire_due()
    ids["denied"] = propose(ledger, agent="agent-4")
    ledger.deny(ids["denied"], actor=APPROVER, reason="not now")
    return ids


# ---------------------------------------------------------------------------------------------
# Which SETs, and what is in them
# ---------------------------------------------------------------------------------------------


def test_one_set_per_event_output_and_stream_with_the_right_claims(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    erp = env.receiver("erp", resources=[f"{ERP}/"])
    mailer = env.receiver("mailer", resources=[MAIL])
    other = env.receiver("other", resources=["https://other.example.com/"])
    owners = {
        "siem": (siem, env.stream(siem, events=[*EVERYTHING, PROPOSAL_SUBMITTED, PROPOSAL_DENIED])),
        "siem_es256": (siem, env.stream(siem, events=MISSION_TYPES, alg="ES256")),
        "erp_drafts": (erp, env.stream(erp, events=[LIFECYCLE_CHANGE], capabilities=())),
        "erp_caep": (erp, env.stream(erp, events=CAEP_TYPES)),
        "erp_proposals": (erp, env.stream(erp, events=[*MISSION_TYPES, PROPOSAL_SUBMITTED])),
        "mailer": (mailer, env.stream(mailer)),
        "other": (other, env.stream(other)),
    }
    streams = {name: stream_id for name, (_, stream_id) in owners.items()}
    audiences = {stream_id: receiver.audience for receiver, stream_id in owners.values()}
    ids = history(env)
    worker = env.worker(page_size=5)
    queued_count = worker.run_once()
    store = env.store()
    subscribers = [subscriber(env, s) for s in streams.values()]
    expected = reference(env.ledger, subscribers)
    assert actual(store) == expected
    assert set(expected.values()) == {1}
    assert queued_count == sum(expected.values())
    assert worker.lag() == 0

    rows = queued(store)
    assert len({r["jti"] for r in rows}) == len(rows)
    assert not queued(store, streams["other"])  # a receiver scoped to other resources: nothing
    assert set(event_types(store, streams["erp_drafts"])) == {LIFECYCLE_CHANGE}
    assert set(event_types(store, streams["erp_caep"])) == set(CAEP_TYPES)
    assert PROPOSAL_SUBMITTED not in event_types(store, streams["erp_proposals"])
    assert {PROPOSAL_SUBMITTED, PROPOSAL_DENIED} <= set(event_types(store, streams["siem"]))
    mail_only = {r["mission_id"] for r in queued(store, streams["mailer"])}
    assert ids["mail_only"] in mail_only
    assert ids["mail_only"] not in {r["mission_id"] for r in queued(store, streams["erp_caep"])}

    kids = {alg: env.keys.active(alg).kid for alg in ("RS256", "ES256")}
    for row in rows:
        header, claims = decode(env, row["set_jwt"])
        alg = "ES256" if row["stream_id"] == streams["siem_es256"] else "RS256"
        assert header == {"alg": alg, "kid": kids[alg], "typ": "secevent+jwt"}
        assert row["kid"] == kids[alg]
        assert claims["iss"] == env.ledger.issuer
        assert claims["aud"] == audiences[row["stream_id"]]
        assert claims["jti"] == row["jti"]
        assert claims["txn"] == row["txn"]
        assert claims["iat"] == int(env.clock.now().timestamp())
        assert "sub" not in claims
        assert "exp" not in claims
        ((uri, body),) = claims["events"].items()
        assert uri == row["event_type"]
        if uri in PROPOSAL_EVENT_TYPES.values():
            assert claims["sub_id"] == {"format": "opaque", "id": body["proposal_id"]}
        elif uri in CAEP_TYPES:
            session = {"format": "opaque", "id": row["mission_id"]}
            assert claims["sub_id"] == {"format": "complex", "session": session}
        else:
            assert claims["sub_id"] == {"format": "opaque", "id": row["mission_id"]}
            assert body["version"] == row["mission_version"]
    # one ledger event → one txn, shared by all its outputs on every stream
    siem_rows = queued(store, streams["siem"])
    by_txn: dict[str, set[str]] = {}
    for row in siem_rows:
        by_txn.setdefault(row["txn"], set()).add(row["event_type"])
    revoked_txn = next(r["txn"] for r in siem_rows if r["event_type"] == MISSION_REVOKED)
    assert by_txn[revoked_txn] == {MISSION_REVOKED, LIFECYCLE_CHANGE, CAEP_SESSION_REVOKED}
    notifications = env.ledger.recorder.select_notifications(1, 10**9)
    event_ids = {n.id: env.ledger.mapper.to_domain_event(n).event_id for n in notifications}
    assert all(row["txn"] == event_ids[row["position"]] for row in rows)


def test_queue_order_follows_the_ledger_per_stream(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem)
    history(env)
    env.worker(page_size=3).run_once()
    rows = queued(env.store(), stream_id)
    positions = [r["position"] for r in rows]
    assert positions == sorted(positions)
    versions: dict[str, list[int]] = {}
    for row in rows:
        if row["mission_id"] is not None:
            versions.setdefault(row["mission_id"], []).append(row["mission_version"])
    assert versions
    for seen in versions.values():
        assert seen == sorted(seen)
    sets, more = poll(env.store(), stream_id, env)
    assert list(sets) == [r["jti"] for r in rows]
    assert not more


def test_subjects_removed_are_excluded_and_re_added_included(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=[MISSION_APPROVED, MISSION_SUSPENDED])
    first = open_mission(env.ledger)
    second = open_mission(env.ledger, agent="agent-2")
    env.on_stream(
        stream_id, "remove_subject", subject={"format": "opaque", "id": first}, actor=siem.actor
    )
    env.ledger.suspend(first, actor=OPERATOR)  # excluded
    env.ledger.suspend(second, actor=OPERATOR)  # still included
    env.on_stream(
        stream_id,
        "add_subject",
        subject={"format": "opaque", "id": first},
        verified=True,
        actor=siem.actor,
    )
    env.ledger.resume(first, actor=OPERATOR)
    env.ledger.suspend(first, actor=OPERATOR)  # included again
    alice = {"format": "complex", "user": {"format": "opaque", "id": "alice"}}
    env.on_stream(stream_id, "remove_subject", subject=alice, actor=siem.actor)
    third = open_mission(env.ledger, agent="agent-3")  # alice's: excluded by the complex subject
    bob = open_mission(env.ledger, user="bob", agent="agent-4")
    env.worker().run_once()
    got = [(r["mission_id"], r["mission_version"]) for r in queued(env.store(), stream_id)]
    assert got == [(first, 1), (second, 1), (second, 2), (first, 4), (bob, 1)]
    assert third not in {m for m, _ in got}


def test_authority_changed_lifecycle_change_only_to_streams_declaring_it(env: Env) -> None:
    erp = env.receiver("erp", resources=[f"{ERP}/"])
    capable = env.stream(erp, events=[LIFECYCLE_CHANGE, MISSION_SCOPE_CHANGED])
    plain = env.stream(erp, events=[LIFECYCLE_CHANGE, MISSION_SCOPE_CHANGED], capabilities=())
    mission = open_mission(env.ledger)
    narrower = [delegating_entry(("invoices.read",)), entry(["mail.send"], resource=MAIL)]
    env.ledger.narrow(mission, narrower, actor=OPERATOR)
    env.worker().run_once()
    store = env.store()
    assert event_types(store, capable) == [  # per event: our profile first, then the drafts'
        LIFECYCLE_CHANGE,
        MISSION_SCOPE_CHANGED,
        LIFECYCLE_CHANGE,
    ]
    assert event_types(store, plain) == [LIFECYCLE_CHANGE, MISSION_SCOPE_CHANGED]
    (narrowed,) = [r for r in queued(store, capable) if r["mission_version"] == 2][1:]
    body = decode(env, narrowed["set_jwt"])[1]["events"][LIFECYCLE_CHANGE]
    assert body["authority_changed"] is True
    assert body["state"] == body["prior_state"]


# ---------------------------------------------------------------------------------------------
# Stream status, verification, deletion, revocation
# ---------------------------------------------------------------------------------------------


def test_paused_holds_then_enabled_delivers_in_order(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    worker = env.worker()
    store = env.store()
    mission = open_mission(env.ledger)
    env.status(stream_id, "paused", by="receiver", reason="maintenance")
    env.ledger.suspend(mission, actor=OPERATOR)
    env.ledger.resume(mission, actor=OPERATOR)
    worker.run_once()
    assert poll(store, stream_id, env, deliver=False) == ({}, False)  # held, none dropped
    assert [r["mission_version"] for r in queued(store, stream_id)] == [1, 2, 3]
    assert not any(r["control"] for r in queued(store, stream_id))  # receiver-initiated: none
    env.status(stream_id, "enabled", by="receiver")
    worker.run_once()
    sets, more = poll(store, stream_id, env, deliver=True)
    bodies = [decode(env, token)[1]["events"] for token in sets.values()]
    assert [next(iter(b)) for b in bodies] == [MISSION_APPROVED, MISSION_SUSPENDED, MISSION_RESUMED]
    assert [next(iter(b.values()))["version"] for b in bodies] == [1, 2, 3]
    assert not more


def test_disabled_drops_the_queue_and_later_events(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    kept = env.stream(siem, events=MISSION_TYPES)
    worker = env.worker()
    store = env.store()
    mission = open_mission(env.ledger)
    worker.run_once()
    assert len(queued(store, stream_id)) == 1
    env.status(stream_id, "disabled", by="receiver")
    env.ledger.suspend(mission, actor=OPERATOR)  # dropped: never queued
    worker.run_once()
    assert queued(store, stream_id) == []
    assert poll(store, stream_id, env, deliver=False) == ({}, False)
    env.status(stream_id, "enabled", by="receiver")
    env.ledger.resume(mission, actor=OPERATOR)
    worker.run_once()
    assert [r["mission_version"] for r in queued(store, stream_id)] == [3]
    assert [r["mission_version"] for r in queued(store, kept)] == [1, 2, 3]


def test_a_disable_and_a_re_enable_in_one_page_keep_only_what_came_after(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    mission = open_mission(env.ledger)
    env.status(stream_id, "disabled", by="transmitter", reason="abuse")
    env.status(stream_id, "enabled", by="transmitter")
    env.ledger.suspend(mission, actor=OPERATOR)
    env.worker().run_once()  # one page
    rows = queued(env.store(), stream_id)
    assert [(r["event_type"], r["control"]) for r in rows] == [
        (STREAM_UPDATED, True),
        (STREAM_UPDATED, True),
        (MISSION_SUSPENDED, False),
    ]


def test_transmitter_status_changes_queue_stream_updated_control_sets(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    worker = env.worker()
    store = env.store()
    open_mission(env.ledger)
    env.status(stream_id, "paused", by="receiver")  # receiver-initiated: no SET
    env.status(stream_id, "disabled", by="transmitter", reason="receiver unreachable")
    worker.run_once()
    rows = queued(store, stream_id)
    assert [(r["event_type"], r["control"]) for r in rows] == [(STREAM_UPDATED, True)]
    sets, more = poll(store, stream_id, env, deliver=False)  # control SETs pass while stopped
    ((token,),) = [list(sets.values())]
    claims = decode(env, token)[1]
    assert claims["sub_id"] == {"format": "opaque", "id": stream_id}
    assert claims["events"] == {
        STREAM_UPDATED: {"status": "disabled", "reason": "receiver unreachable"}
    }
    assert claims["aud"] == siem.audience
    assert not more
    env.status(stream_id, "enabled", by="transmitter")
    worker.run_once()
    last = decode(env, queued(store, stream_id)[-1]["set_jwt"])[1]
    assert last["events"] == {STREAM_UPDATED: {"status": "enabled"}}  # no reason: no member


def test_verification_sets_echo_state_held_while_paused_dropped_while_disabled(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    worker = env.worker()
    store = env.store()
    env.on_stream(stream_id, "request_verification", state="c3RhdGU", actor=siem.actor)
    env.on_stream(stream_id, "request_verification", state=None, actor=siem.actor)
    env.status(stream_id, "paused", by="receiver")
    env.on_stream(stream_id, "request_verification", state="held", actor=siem.actor)
    worker.run_once()
    assert poll(store, stream_id, env, deliver=False) == ({}, False)
    env.status(stream_id, "disabled", by="receiver")
    env.on_stream(stream_id, "request_verification", state="dropped", actor=siem.actor)
    worker.run_once()
    assert queued(store, stream_id) == []  # disabling dropped the held ones too
    env.status(stream_id, "enabled", by="receiver")
    env.on_stream(stream_id, "request_verification", state="c3RhdGU", actor=siem.actor)
    env.on_stream(stream_id, "request_verification", state=None, actor=siem.actor)
    worker.run_once()
    sets, _ = poll(store, stream_id, env)
    claims = [decode(env, token)[1] for token in sets.values()]
    assert [c["events"] for c in claims] == [
        {VERIFICATION: {"state": "c3RhdGU"}},
        {VERIFICATION: {}},
    ]
    assert all(c["sub_id"] == {"format": "opaque", "id": stream_id} for c in claims)


def test_deleting_a_stream_drops_its_queue_secret_and_errors(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES, push=True)
    worker = env.worker()
    store = env.store()
    store.put_push_secret(stream_id, "Bearer s3cr3t")
    mission = open_mission(env.ledger)
    env.ledger.suspend(mission, actor=OPERATOR)
    worker.run_once()
    sets, _ = poll(store, stream_id, env)
    first = next(iter(sets))
    poll(store, stream_id, env, max_events=0, set_errs={first: {"err": "invalid_key"}})
    assert store.stream_stats(stream_id, env.clock.now())["last_errors"]
    env.on_stream(stream_id, "delete", actor=siem.actor)
    env.ledger.resume(mission, actor=OPERATOR)
    worker.run_once()
    assert queued(store, stream_id) == []
    assert store.push_secret(stream_id) is None
    assert store.stream_stats(stream_id, env.clock.now())["last_errors"] == []
    assert stream_id not in store.all_stream_stats(env.clock.now())


def test_revoking_the_receiver_drops_its_streams_queues(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    other = env.receiver("other-siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    kept = env.stream(other, events=MISSION_TYPES)
    worker = env.worker()
    mission = open_mission(env.ledger)
    worker.run_once()
    env.registry.revoke(siem.principal_id, actor=TRANSMITTER)
    env.ledger.suspend(mission, actor=OPERATOR)
    env.on_stream(stream_id, "request_verification", state="x", actor=siem.actor)
    worker.run_once()
    store = env.store()
    assert queued(store, stream_id) == []
    assert [r["mission_version"] for r in queued(store, kept)] == [1, 2]
    # a stream whose receiver is already revoked (or is no receiver at all) gets nothing
    late = env.stream(siem, events=MISSION_TYPES)
    env.ledger.resume(mission, actor=OPERATOR)
    worker.run_once()
    assert queued(store, late) == []


# ---------------------------------------------------------------------------------------------
# The poll API (RFC 8936 semantics)
# ---------------------------------------------------------------------------------------------


def five_sets(env: Env) -> tuple[str, OutboxStore, list[str]]:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    mission = open_mission(env.ledger)
    for _ in range(2):
        env.ledger.suspend(mission, actor=OPERATOR)
        env.ledger.resume(mission, actor=OPERATOR)
    env.worker().run_once()
    store = env.store()
    return stream_id, store, [r["jti"] for r in queued(store, stream_id)]


def test_poll_acks_reoffers_and_pages_with_max_events(env: Env) -> None:
    stream_id, store, jtis = five_sets(env)
    assert len(jtis) == 5
    sets, more = poll(store, stream_id, env, max_events=2)
    assert (list(sets), more) == (jtis[:2], True)
    sets, more = poll(store, stream_id, env, max_events=2)  # offered ones wait reoffer_after
    assert (list(sets), more) == (jtis[2:4], True)
    sets, more = poll(store, stream_id, env, max_events=2)
    assert (list(sets), more) == (jtis[4:], False)
    assert poll(store, stream_id, env) == ({}, False)
    assert store.has_offerable(stream_id, True, 60.0, env.clock.now()) is False
    env.clock.advance(timedelta(seconds=61))
    assert store.has_offerable(stream_id, True, 60.0, env.clock.now()) is True
    sets, more = poll(store, stream_id, env, ack=[jtis[0], "unknown-jti"])
    assert (list(sets), more) == (jtis[1:], False)  # unacked ones come back, same bytes
    assert sets == {r["jti"]: r["set_jwt"] for r in queued(store, stream_id)}
    assert [r["offer_count"] for r in queued(store, stream_id)] == [2, 2, 2, 2]
    assert poll(store, stream_id, env, ack=jtis[1:4], reoffer_after=0) == (
        {jtis[4]: queued(store, stream_id)[0]["set_jwt"]},
        False,
    )
    assert [r["jti"] for r in queued(store, stream_id)] == [jtis[4]]


def test_poll_max_events_zero_only_acknowledges(env: Env) -> None:
    stream_id, store, jtis = five_sets(env)
    assert poll(store, stream_id, env, max_events=0, ack=jtis[:2]) == ({}, True)
    rows = queued(store, stream_id)
    assert [r["jti"] for r in rows] == jtis[2:]
    assert all(r["offered_at"] is None for r in rows)
    assert poll(store, stream_id, env, max_events=0, ack=jtis[2:]) == ({}, False)
    with pytest.raises(InvalidInput):
        poll(store, stream_id, env, max_events=-1)


def test_poll_never_touches_another_streams_sets(env: Env) -> None:
    stream_id, store, jtis = five_sets(env)
    other = env.stream(env.receiver("other", all_missions=True), events=MISSION_TYPES)
    assert poll(store, other, env, ack=jtis, set_errs={jtis[0]: {"err": "x"}}) == ({}, False)
    assert [r["jti"] for r in queued(store, stream_id)] == jtis
    assert store.stream_stats(other, env.clock.now())["last_errors"] == []


def test_set_errors_are_recorded_removed_and_reported(env: Env) -> None:
    stream_id, store, jtis = five_sets(env)
    poll(store, stream_id, env)
    env.clock.advance(timedelta(seconds=5))
    sets, more = poll(
        store,
        stream_id,
        env,
        ack=[jtis[0]],
        set_errs={
            jtis[1]: {"err": "invalid_key", "description": "unknown kid"},
            jtis[2]: {"err": "invalid_issuer", "description": "wrong iss"},
            "never-queued": {"err": "invalid_request", "description": "ignored"},
        },
        reoffer_after=0,
    )
    assert (list(sets), more) == (jtis[3:], False)
    stats = store.stream_stats(stream_id, env.clock.now())
    assert stats["queue_depth"] == 2
    assert stats["offered_unacked"] == 2
    assert stats["oldest_undelivered_age_seconds"] == pytest.approx(5.0)
    assert [(e["jti"], e["err"], e["description"]) for e in stats["last_errors"]] == [
        (jtis[2], "invalid_issuer", "wrong iss"),
        (jtis[1], "invalid_key", "unknown kid"),
    ]
    assert stats["last_errors"][0]["recorded_at"].endswith("Z")
    everything = store.all_stream_stats(env.clock.now())
    assert everything == {stream_id: stats}
    empty = store.stream_stats("0" * 32, env.clock.now())
    assert empty == {
        "queue_depth": 0,
        "offered_unacked": 0,
        "oldest_undelivered_age_seconds": None,
        "dead_letters": 0,
        "head_attempts": 0,
        "next_attempt_at": None,
        "head_last_error": None,
        "last_errors": [],
    }


def test_push_secrets_are_kept_replaced_and_forgotten(env: Env) -> None:
    store = env.store()
    assert store.push_secret("a" * 32) is None
    store.put_push_secret("a" * 32, "Bearer one")
    store.put_push_secret("a" * 32, "Bearer two")
    assert store.push_secret("a" * 32) == "Bearer two"
    store.put_push_secret("a" * 32, None)
    assert store.push_secret("a" * 32) is None


# ---------------------------------------------------------------------------------------------
# Exactly once: rerun, racing workers, crashes
# ---------------------------------------------------------------------------------------------


def test_a_history_committed_without_a_worker_is_queued_exactly_once(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    erp = env.receiver("erp", resources=[f"{ERP}/"])
    streams = [
        env.stream(siem, events=[*EVERYTHING, PROPOSAL_SUBMITTED, PROPOSAL_DENIED]),
        env.stream(erp, capabilities=()),
    ]
    history(env)
    store = env.store()
    assert store.position() == 0
    worker = env.worker(page_size=4)
    assert worker.lag() > 0
    worker.run_once()
    expected = reference(env.ledger, [subscriber(env, s) for s in streams])
    assert actual(store) == expected
    assert set(expected.values()) == {1}
    before = queued(store)
    assert worker.run_once() == 0
    env.close(worker)
    assert env.worker().run_once() == 0  # a fresh worker resumes from the tracking row
    assert queued(store) == before
    assert store.position() == env.ledger.recorder.max_notification_id()


def test_a_worker_dying_inside_its_transaction_leaves_nothing_and_resumes(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mission_ledger.ssf import outbox_tables

    siem = env.receiver("siem", all_missions=True)
    streams = [env.stream(siem), env.stream(siem, events=MISSION_TYPES, alg="ES256")]
    history(env)
    real_advance = outbox_tables.OutboxTx.advance
    calls: list[int] = []

    def advance(self: Any, position: int) -> None:
        calls.append(position)
        if len(calls) == 3:  # the rows of the third page are written; then the process "dies"
            raise RuntimeError("killed")
        real_advance(self, position)

    monkeypatch.setattr(outbox_tables.OutboxTx, "advance", advance)
    crashing = env.worker(page_size=3)
    with pytest.raises(RuntimeError, match="killed"):
        crashing.run_once()
    env.close(crashing)
    monkeypatch.setattr(outbox_tables.OutboxTx, "advance", real_advance)
    store = env.store()
    assert store.position() == calls[1]
    partial = actual(store)
    assert set(partial.values()) == {1}
    env.worker(page_size=3).run_once()
    expected = reference(env.ledger, [subscriber(env, s) for s in streams])
    assert actual(store) == expected
    assert set(expected.values()) == {1}


def test_a_second_worker_refuses(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    env.stream(siem, events=MISSION_TYPES)
    first, second = env.worker(), env.worker()
    open_mission(env.ledger)
    assert first.run_once() == 1
    if env.name == "postgres":  # the advisory lock refuses the second worker up front
        with pytest.raises(AnotherWorkerActive, match="advisory lock"):
            second.run_once()
    else:
        assert second.run_once() == 0  # it reads the position the first one recorded
    # The second line, with no lock: a page another worker applied is refused before writing.
    second._position = first.position
    second._streams = second.store.load_streams()
    open_mission(env.ledger, agent="agent-7")
    assert first.run_once() == 1
    with pytest.raises(AnotherWorkerActive, match="another outbox worker"):
        second._step()
    store = env.store()
    assert len(queued(store)) == 2
    # … and without the compare-and-set, the library's tracking guard, then the UNIQUE constraint.
    head = store.position()
    with pytest.raises(AnotherWorkerActive, match="already recorded"):
        store.write_page(OutboxPage(), head, head)
    row = queued(store)[-1]
    duplicate = QueuedSet(
        stream_id=row["stream_id"],
        jti="another-jti",
        txn=row["txn"],
        event_type=row["event_type"],
        kid=row["kid"],
        set_jwt=row["set_jwt"],
        position=row["position"],
        mission_id=row["mission_id"],
        mission_version=row["mission_version"],
        control=False,
        created_at=env.clock.now(),
    )
    with pytest.raises(ProjectionMismatch, match="already holds a SET"):
        store.write_page(OutboxPage(sets=[duplicate]), head, head + 1)
    assert store.position() == head
    assert len(queued(store)) == 2


def _wait_for(condition: Any, what: str, log: Path, timeout: float = 90.0) -> None:
    """Poll ``condition`` (a generous bound for a loaded machine; not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{log.read_text()}"
        time.sleep(0.05)


def _child(env: Env, log: Path) -> subprocess.Popen[bytes]:
    """Start a worker process; its stderr goes to ``log`` (read when it fails)."""
    command = [sys.executable, str(CHILD), "--data", str(env.settings.data_dir)]
    command += ["--keys", str(env.keys_dir)]
    if env.settings.database_url:
        command += ["--database-url", env.settings.database_url]
    with log.open("ab") as stderr:
        return subprocess.Popen(command, stderr=stderr)


def _commands(env: Env, rng: random.Random, count: int) -> None:
    for _ in range(count):
        agent = rng.choice(["agent-1", "agent-2", "agent-3"])
        if rng.random() < 0.3:
            authority = [entry(["mail.send"], resource=MAIL)]
            mission = open_mission(env.ledger, agent=agent, authority_set=authority)
        else:
            mission = open_mission(env.ledger, agent=agent)
        env.ledger.suspend(mission, actor=OPERATOR, reason="check")
        if rng.random() < 0.5:
            env.ledger.resume(mission, actor=OPERATOR)
        env.ledger.revoke(mission, actor=OPERATOR)


def test_a_worker_process_killed_repeatedly_queues_every_set_exactly_once(env: Env) -> None:
    rng = random.Random(8417)
    siem = env.receiver("siem", all_missions=True)
    erp = env.receiver("erp", resources=[f"{ERP}/"])
    streams = [
        env.stream(siem),
        env.stream(erp, events=[*MISSION_TYPES, LIFECYCLE_CHANGE]),
        env.stream(siem, events=[*MISSION_TYPES, *CAEP_TYPES], alg="ES256"),
    ]
    store = env.store()
    log = env.keys_dir.parent / "children.log"
    for _ in range(4):
        child = _child(env, log)
        try:
            before = store.position()
            _commands(env, rng, 4)
            _wait_for(lambda b=before: store.position() > b, "the child to write a page", log)
            _commands(env, rng, 3)
            time.sleep(rng.random() * 0.02)  # most kills land while the child is mid-page
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(timeout=30)
    _commands(env, rng, 3)  # committed with no worker running
    child = _child(env, log)
    try:
        head = env.ledger.recorder.max_notification_id()
        _wait_for(lambda: store.position() == head, "the last child to catch up", log)
        child.send_signal(signal.SIGTERM)  # a clean stop this time
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, log.read_text()
    expected = reference(env.ledger, [subscriber(env, s) for s in streams])
    rows = queued(store)
    assert actual(store) == expected
    assert set(expected.values()) == {1}
    assert len({r["jti"] for r in rows}) == len(rows)
    for stream_id in streams:
        positions = [r["position"] for r in queued(store, stream_id)]
        assert positions == sorted(positions)


# ---------------------------------------------------------------------------------------------
# Signing in chunks: a page commits unsigned rows, the worker signs them right after
# ---------------------------------------------------------------------------------------------


def _revocation_for_many_streams(
    env: Env, streams: int, *, alg: str = "RS256", push: bool = False
) -> list[str]:
    """``streams`` streams of one all-Missions receiver, then a Mission opened (and so
    approved) and revoked: one page of the outbox with a SET per stream and event."""
    siem = env.receiver("siem", all_missions=True)
    ids = [env.stream(siem, events=[MISSION_REVOKED], alg=alg, push=push) for _ in range(streams)]
    mission = open_mission(env.ledger)
    env.ledger.revoke(mission, actor=OPERATOR, reason="done")
    return ids


def _claims_of(token_or_input: str) -> dict[str, Any]:
    payload = token_or_input.split(".")[1]
    return cast(dict[str, Any], json.loads(base64.urlsafe_b64decode(payload + "==")))


def test_a_big_page_commits_unsigned_rows_and_signs_them_in_queue_order(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = _revocation_for_many_streams(env, 7)
    store = env.store()
    seen: list[list[tuple[int, bool]]] = []
    offered_while_signing: list[int] = []
    real = OutboxStore.store_signatures
    heard: list[set[str]] = []

    def spy(self: OutboxStore, signatures: Any) -> None:
        rows = queued(store)
        seen.append([(r["seq"], bool(r["signed"])) for r in rows])
        for row in rows:  # an unsigned row is never offered: a poll returns signed ones only
            sets, _ = poll(store, row["stream_id"], env, reoffer_after=0.0)
            offered_while_signing.append(len(sets))
            assert all(token.count(".") == 2 for token in sets.values())
            assert bool(sets) == bool(row["signed"])
        real(self, signatures)

    monkeypatch.setattr(OutboxStore, "store_signatures", spy)
    monkeypatch.setattr(outbox, "STORE_EVERY", 3)
    worker = env.worker(sign_chunk=2)
    worker.add_listener(heard.append)
    offered: list[list[Signature]] = []
    worker.add_signature_listener(offered.append)
    assert worker.run_once() == 7
    # The page (7 SETs, more than a chunk of 2) committed unsigned and its streams heard of it;
    # then chunks of 2, 2, 2 and 1 were signed and offered at once, and stored when 3 or more
    # had piled up, and at the end (the streams heard of them again).
    assert [[s.jti for s in chunk] for chunk in offered] == [
        [r["jti"] for r in queued(store)[0:2]],
        [r["jti"] for r in queued(store)[2:4]],
        [r["jti"] for r in queued(store)[4:6]],
        [r["jti"] for r in queued(store)[6:]],
    ]
    assert [[signed for _, signed in snapshot] for snapshot in seen] == [
        [False] * 7,
        [True] * 4 + [False] * 3,
    ]
    assert [len(h) for h in heard] == [7, 4, 3]
    assert set().union(*heard) == set(streams)
    stored = {r["jti"]: r["set_jwt"] for r in queued(store)}
    assert all(stored[s.jti] == s.set_jwt for chunk in offered for s in chunk)  # the same bytes
    rows = queued(store)
    assert all(r["signed"] for r in rows)
    assert worker.retire_keys() == []
    for row in rows:
        header, claims = decode(env, row["set_jwt"])
        assert header == {"alg": "RS256", "kid": row["kid"], "typ": "secevent+jwt"}
        assert claims["jti"] == row["jti"]
        assert claims["aud"] == "https://siem.example.com"
        assert list(claims["events"]) == [MISSION_REVOKED]


def test_a_crash_before_the_signatures_are_stored_keeps_the_jtis_and_signs_on_restart(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams = _revocation_for_many_streams(env, 5, alg="ES256", push=True)
    store = env.store()

    def crash(self: OutboxStore, signatures: Any) -> None:
        raise RuntimeError("killed between the page and its signatures")

    monkeypatch.setattr(OutboxStore, "store_signatures", crash)
    crashing = env.worker(sign_chunk=2)
    with pytest.raises(RuntimeError, match="killed"):
        crashing.run_once()
    env.close(crashing)
    monkeypatch.undo()
    before = queued(store)
    assert [bool(r["signed"]) for r in before] == [False] * 5  # 5 > a chunk: committed unsigned
    assert store.position() == env.ledger.recorder.max_notification_id()
    unsigned = {r["jti"]: r["set_jwt"] for r in before if not r["signed"]}
    assert {u.jti for u in store.unsigned()} == set(unsigned)
    # Polls stop at a stream's first unsigned row; push batches flag it (the deliverer sends
    # only a signature the worker offered it, and stops there otherwise).
    batches = store.push.batches(streams, 10)
    heads = {h.stream_id: h.seq for h in store.push.heads()}
    for row in before:
        _, more = poll(store, row["stream_id"], env, max_events=0)
        assert more == bool(row["signed"])
        batch = batches[row["stream_id"]]
        assert batch is not None
        assert [(i.jti, i.signed) for i in batch.items] == [(row["jti"], bool(row["signed"]))]
        assert heads[row["stream_id"]] == row["seq"]  # the deliverer resolves it (or waits)
    # A rotation meanwhile: the rest is signed with the active key, its claims unchanged.
    old = env.keys.active("ES256").kid
    new = env.keys.rotate("ES256").kid
    assert env.worker().run_once() == 0
    after = {r["jti"]: r for r in queued(store)}
    assert set(after) == {r["jti"] for r in before}  # the same jtis, nothing added
    for jti, row in after.items():
        header, claims = decode(env, row["set_jwt"])
        assert row["signed"]
        assert header["kid"] == row["kid"]
        if jti in unsigned:
            assert row["kid"] == new
            assert claims == _claims_of(unsigned[jti])
        else:
            assert row["kid"] == old
    assert sorted(r["stream_id"] for r in after.values()) == sorted(streams)


def test_an_outbox_from_before_the_signed_column_is_upgraded(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    open_mission(env.ledger)
    worker = env.worker()
    worker.run_once()
    store = worker.store
    with store._b.writing() as tx:
        tx.execute(store._b.sql("ALTER TABLE {queue} DROP COLUMN signed"))
    assert "signed" not in store._b.existing_columns("ssf_queue")
    env.close(worker)
    upgraded = env.store()  # opening adds the column; the rows there are signed SETs
    assert "signed" in upgraded._b.existing_columns("ssf_queue")
    sets, more = poll(upgraded, stream_id, env)
    assert len(sets) == 1
    assert not more
    assert decode(env, next(iter(sets.values())))[1]["events"]


# ---------------------------------------------------------------------------------------------
# Keys, listeners, the loop, rebuild, the contract
# ---------------------------------------------------------------------------------------------


def test_a_rotated_key_is_retired_once_no_queued_set_needs_it(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    worker = env.worker()
    store = env.store()
    mission = open_mission(env.ledger)
    worker.run_once()
    old = env.keys.active("RS256").kid
    assert store.queued_kids() == {old}
    new = env.keys.rotate("RS256").kid
    env.ledger.suspend(mission, actor=OPERATOR)
    worker.run_once()
    assert [r["kid"] for r in queued(store, stream_id)] == [old, new]
    assert worker.retire_keys() == []  # a queued SET still needs the old key
    sets, _ = poll(store, stream_id, env)
    poll(store, stream_id, env, max_events=0, ack=list(sets)[:1])
    assert store.queued_kids() == {new}
    assert worker.retire_keys() == [old]
    status = {k["kid"]: k["status"] for k in env.keys.list()}
    assert status[old] == "retired"
    assert status[new] == "active"
    assert old not in {k["kid"] for k in env.keys.jwks()["keys"]}
    assert worker.retire_keys() == []


def test_listeners_hear_which_streams_got_sets_and_run_forever_follows(env: Env) -> None:
    siem = env.receiver("siem", all_missions=True)
    stream_id = env.stream(siem, events=MISSION_TYPES)
    quiet = env.stream(siem, events=[PROPOSAL_DENIED])
    worker = env.worker()
    heard: list[set[str]] = []
    woke = threading.Event()

    def listener(stream_ids: set[str]) -> None:
        heard.append(stream_ids)
        woke.set()

    def broken(_: set[str]) -> None:
        raise RuntimeError("a broken listener must not stop the worker")

    worker.add_listener(broken)
    worker.add_listener(listener)
    open_mission(env.ledger)
    worker.run_once()
    assert heard == [{stream_id}]
    assert quiet not in heard[0]
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    woke.clear()
    thread.start()
    try:
        open_mission(env.ledger, agent="agent-2")
        assert woke.wait(60), "run_forever did not queue the new Mission's SET"
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert heard[-1] == {stream_id}
    assert worker.lag() == 0
    assert worker.enqueued == 2


def test_rebuild_leaves_the_outbox_alone(env: Env) -> None:
    with pytest.raises(InvalidInput, match="delivery queue"):
        resolve_projections(SSF_OUTBOX)
    siem = env.receiver("siem", all_missions=True)
    env.stream(siem, events=MISSION_TYPES)
    open_mission(env.ledger)
    views = ProjectionWorker(env.ledger, env.settings)
    env.opened.append(views)
    views.run_once()
    env.close(views)
    env.worker().run_once()
    store = env.store()
    before, position = queued(store), store.position()
    rebuild(env.ledger, env.settings)
    assert queued(store) == before
    assert store.position() == position


def test_ddl_files_create_the_outbox_tables(tmp_path: Path) -> None:
    import sqlite3

    for backend in ("sqlite", "postgres"):
        statements = ddl_statements(SSF_OUTBOX, backend)
        tables = {s.split()[5] for s in statements if s.upper().startswith("CREATE TABLE")}
        assert tables == set(NOT_REBUILDABLE_TABLES[SSF_OUTBOX]), backend
    conn = sqlite3.connect(tmp_path / "ddl.sqlite3")
    for statement in ddl_statements(SSF_OUTBOX, "sqlite"):
        conn.execute(statement)
    conn.close()


def test_the_in_memory_ledger_keeps_its_outbox_in_a_sqlite_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url="memory:")
    ledger = open_ledger(settings, clock=FixedClock(T0))
    keys = FileKeyStore(tmp_path / "keys", rsa_bits=2048)
    try:
        receiver, _ = PrincipalRegistry(ledger).create(
            role="receiver", name="siem", actor=TRANSMITTER, audience="https://s", all_missions=True
        )
        stream_id = create_stream(ledger, ledger.clock, receiver, events=MISSION_TYPES)  # type: ignore[arg-type]
        open_mission(ledger)
        with OutboxWorker(ledger, settings, keys) as worker:
            assert worker.run_once() == 1
            assert worker.store.backend == "sqlite"
            assert [r["stream_id"] for r in queued(worker.store)] == [stream_id]
        assert (tmp_path / "data" / "ssf.sqlite3").is_file()
    finally:
        ledger.close()
