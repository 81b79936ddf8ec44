"""Tamper evidence, end to end: edit stored rows with raw SQL and show ``audit.verify`` notices.

Every test builds its own small ledger (propose → approve → delegate → suspend → resume →
revoke, with ``snapshot_interval=5`` so the parent Mission gets a snapshot at version 5) in its own
temporary directory or PostgreSQL schema, then plays the attacker with write access to the
event store. The report must name the aggregate, version and event id of the first break.

Documented limitation, asserted below: dropping the newest event of a stream (or rewriting a
stream with every hash recomputed) is invisible to the chain alone; it takes a signed checkpoint.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from eventsourcing.persistence import StoredEvent
from psycopg import sql

from mission_ledger import audit
from mission_ledger.bootstrap import open_ledger
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.anchors import sha256_b64url
from mission_ledger.domain.canonical import canonicalize
from mission_ledger.domain.chain import HASH_PREFIX, compute_hash, event_id_for
from mission_ledger.domain.errors import MissionLedgerError
from mission_ledger.ledger import MissionLedger
from tests.pgtarget import PgTarget

ERP = "https://erp.example.com"
START = datetime(2030, 1, 1, tzinfo=UTC)
SEED = 20300101


@dataclass(frozen=True)
class Row:
    position: int
    aggregate_id: UUID
    version: int
    topic: str
    state: bytes


class RawStore:
    """The attacker's view: plain SQL on the ledger's tables (subclasses per backend)."""

    events = ""
    snapshots = ""
    placeholder = "?"

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def ident(self, aggregate_id: UUID) -> Any:
        raise NotImplementedError

    def _q(self, statement: str) -> str:
        return statement.format(events=self.events, snapshots=self.snapshots).replace(
            "?", self.placeholder
        )

    def rows(self) -> list[Row]:
        pos = self.position_column
        found = self.run(
            self._q(
                f"SELECT {pos}, originator_id, originator_version, topic, state FROM {{events}} "  # noqa: S608
                f"ORDER BY {pos}"
            )
        )
        return [Row(int(p), UUID(str(i)), int(v), t, bytes(s)) for p, i, v, t, s in found]

    position_column = "rowid"

    def row(self, aggregate_id: UUID, version: int) -> Row:
        return next(
            r for r in self.rows() if r.aggregate_id == aggregate_id and r.version == version
        )

    def set_state(self, aggregate_id: UUID, version: int, state: bytes) -> None:
        self.run(
            self._q("UPDATE {events} SET state=? WHERE originator_id=? AND originator_version=?"),
            (state, self.ident(aggregate_id), version),
        )

    def set_topic(self, aggregate_id: UUID, version: int, topic: str) -> None:
        self.run(
            self._q("UPDATE {events} SET topic=? WHERE originator_id=? AND originator_version=?"),
            (topic, self.ident(aggregate_id), version),
        )

    def set_version(self, aggregate_id: UUID, version: int, new_version: int) -> None:
        self.run(
            self._q(
                "UPDATE {events} SET originator_version=? "
                "WHERE originator_id=? AND originator_version=?"
            ),
            (new_version, self.ident(aggregate_id), version),
        )

    def delete(self, aggregate_id: UUID, version: int) -> None:
        self.run(
            self._q("DELETE FROM {events} WHERE originator_id=? AND originator_version=?"),
            (self.ident(aggregate_id), version),
        )

    def snapshot_state(self, aggregate_id: UUID, version: int) -> bytes:
        found = self.run(
            self._q("SELECT state FROM {snapshots} WHERE originator_id=? AND originator_version=?"),
            (self.ident(aggregate_id), version),
        )
        return bytes(found[0][0])

    def set_snapshot_state(self, aggregate_id: UUID, version: int, state: bytes) -> None:
        self.run(
            self._q(
                "UPDATE {snapshots} SET state=? WHERE originator_id=? AND originator_version=?"
            ),
            (state, self.ident(aggregate_id), version),
        )

    def close(self) -> None:
        raise NotImplementedError


class SQLiteStore(RawStore):
    events = "stored_events"
    snapshots = "stored_snapshots"

    def __init__(self, path: Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None)

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return self.conn.execute(statement, params).fetchall()

    def ident(self, aggregate_id: UUID) -> Any:
        return aggregate_id.hex

    def close(self) -> None:
        self.conn.close()


class PostgresStore(RawStore):
    placeholder = "%s"
    position_column = "notification_id"

    def __init__(self, target: PgTarget) -> None:
        self.conn = psycopg.connect(target.url, autocommit=True)
        quote = sql.Identifier(target.schema).as_string(self.conn)
        self.events = f"{quote}.missionledger_events"
        self.snapshots = f"{quote}.missionledger_snapshots"

    def run(self, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        cursor = self.conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []

    def ident(self, aggregate_id: UUID) -> Any:
        return aggregate_id

    def close(self) -> None:
        self.conn.close()


@dataclass
class World:
    ledger: MissionLedger
    store: RawStore
    audit_dir: Path
    clock: FixedClock
    proposal: UUID
    mission: UUID
    child: UUID

    def verify(self, audit_dir: Path | None = None) -> audit.VerifyReport:
        return audit.verify(self.ledger, audit_dir=audit_dir or self.audit_dir)

    def checkpoint(self) -> dict[str, Any]:
        return audit.checkpoint(self.ledger, audit_dir=self.audit_dir)


def _entry(actions: list[str], **extra: Any) -> dict[str, Any]:
    return {"type": "mission_resource_access", "resource": ERP, "actions": actions, **extra}


def proposal_document() -> dict[str, Any]:
    delegation = {
        "max_depth": 2,
        "children": {"max_children": 3, "allowed_child_actors": [{"sub": "agent-2"}]},
    }
    return {
        "user": "alice",
        "agent": "agent-1",
        "task": {"id": "t-1", "description": "pay the March invoices"},
        "intent": {
            "goal": "pay invoices",
            "resources": [ERP],
            "expires_at": "2099-01-01T00:00:00Z",
        },
        "authority_set": [_entry(["invoices.read", "invoices.pay"], delegation=delegation)],
    }


def build(ledger: MissionLedger, clock: FixedClock) -> tuple[UUID, UUID, UUID]:
    """propose → approve → delegate → suspend → resume → revoke (a minute apart)."""
    proposal = ledger.propose(proposal_document(), actor="alice").document["proposal_id"]
    clock.advance(timedelta(minutes=1))
    mission = ledger.approve(proposal, actor="bob").document["mission_id"]
    clock.advance(timedelta(minutes=1))
    child = ledger.delegate(
        mission, agent="agent-2", authority_set=[_entry(["invoices.read"])], actor="alice"
    ).document["mission_id"]
    clock.advance(timedelta(minutes=1))
    ledger.suspend(mission, actor="bob", reason="suspicious payee")
    clock.advance(timedelta(minutes=1))
    ledger.resume(mission, actor="bob", reason="payee confirmed")
    clock.advance(timedelta(minutes=1))
    ledger.revoke(mission, actor="bob", reason="task finished")
    return UUID(proposal), UUID(mission), UUID(child)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    clock = FixedClock(START)
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data", snapshot_interval=5)
        ledger = open_ledger(settings, clock=clock)
        store: RawStore = SQLiteStore(settings.sqlite_path())
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=target.ledger_url,
            snapshot_interval=5,
            postgres_pool_size=2,
        )
        ledger = open_ledger(settings, clock=clock)
        store = PostgresStore(target)
    try:
        ids = build(ledger, clock)
        yield World(ledger, store, tmp_path / "audit", clock, *ids)
    finally:
        store.close()
        ledger.close()


def assert_first_break(
    report: audit.VerifyReport, aggregate_id: UUID, version: int, *kinds: str
) -> audit.Problem:
    assert not report.ok
    first = report.problems[0]
    assert (first.aggregate_id, first.version) == (str(aggregate_id), version), report.summary()
    assert first.event_id == event_id_for(aggregate_id, version)
    if kinds:
        assert first.kind in kinds, report.summary()
    assert report.to_dict()["first_break"] == dataclasses.asdict(first)
    summary = report.summary()
    assert str(aggregate_id) in summary
    assert f"version {version}" in summary
    assert first.event_id in summary
    return first


# -- a clean ledger -------------------------------------------------------------------------------


def test_clean_ledger_verifies_and_checkpoints(world: World) -> None:
    rows = world.store.rows()
    report = world.verify()
    assert report.ok, report.summary()
    assert (report.streams, report.events) == (3, 11)
    assert report.position == max(r.position for r in rows)
    assert report.checkpoint is None
    assert report.problems == []
    assert "No checkpoint yet" in report.summary()
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True

    record = world.checkpoint()
    body = record["checkpoint"]
    assert record["alg"] == "EdDSA"
    assert body["position"] == report.position
    assert (body["stream_count"], body["event_count"]) == (3, 11)
    assert body["streams"][str(world.mission)]["version"] == 5
    head = world.store.row(world.mission, 5)
    assert body["streams"][str(world.mission)]["hash"] == json.loads(head.state)["hash"]

    private = world.audit_dir / audit.PRIVATE_KEY_FILE
    assert private.stat().st_mode & 0o777 == 0o600
    public = serialization.load_pem_public_key(
        (world.audit_dir / audit.PUBLIC_KEY_FILE).read_bytes()
    )
    assert isinstance(public, Ed25519PublicKey)
    signature = base64.urlsafe_b64decode(record["signature"] + "==")
    public.verify(signature, canonicalize(body))  # raises if the signature is wrong

    again = world.verify()
    assert again.ok, again.summary()
    assert again.checkpoint is not None
    assert again.checkpoint["position"] == report.position
    assert "consistent with the checkpoint" in again.summary()

    world.clock.advance(timedelta(minutes=1))
    world.ledger.propose(proposal_document(), actor="carol")  # history moves on
    second = world.checkpoint()
    assert second["checkpoint"]["stream_count"] == 4
    lines = (world.audit_dir / audit.CHECKPOINTS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [record, second]
    assert world.verify().ok


# -- edits to stored events -----------------------------------------------------------------------


def test_changing_any_byte_of_a_stored_event_is_detected(world: World) -> None:
    rng = random.Random(SEED)
    rows = world.store.rows()
    letters = b'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_:.,{}[]" '
    for trial in range(30):
        row = rng.choice(rows)
        offset = rng.randrange(len(row.state))
        original = row.state[offset]
        pool = letters if trial % 2 else bytes(range(256))
        replacement = rng.choice([b for b in pool if b != original])
        tampered = row.state[:offset] + bytes([replacement]) + row.state[offset + 1 :]
        world.store.set_state(row.aggregate_id, row.version, tampered)
        try:
            report = world.verify()
            context = (
                f"byte {offset} of {row.aggregate_id} v{row.version}: {original!r}→{replacement!r}"
            )
            assert not report.ok, context
            assert_first_break(report, row.aggregate_id, row.version)
        finally:
            world.store.set_state(row.aggregate_id, row.version, row.state)
    assert world.verify().ok


def test_valid_character_edits_that_still_decode_are_detected(world: World) -> None:
    row = world.store.row(world.mission, 3)  # MissionSuspended, actor "bob"
    assert b'"actor":"bob"' in row.state
    world.store.set_state(world.mission, 3, row.state.replace(b'"actor":"bob"', b'"actor":"bot"'))
    first = assert_first_break(world.verify(), world.mission, 3, "hash_mismatch")
    assert "MissionSuspended" in first.description

    # Same value, different bytes: 'T' → 't' in the ISO timestamp decodes to the same instant.
    marker = b'"_type_":"datetime_iso","_data_":"2030-01-01T'
    assert marker in row.state
    tampered = row.state.replace(marker, marker[:-1] + b"t")
    world.store.set_state(world.mission, 3, tampered)
    report = world.verify()
    assert_first_break(report, world.mission, 3, "noncanonical_state")
    assert [p.kind for p in report.problems] == ["noncanonical_state"]


def test_changed_topic_is_detected(world: World) -> None:
    delegated = world.store.row(world.mission, 2)
    assert delegated.topic == "mission_ledger.MissionDelegated.v1"
    world.store.set_topic(world.mission, 2, "mission_ledger.MissionSuspended.v1")
    assert_first_break(world.verify(), world.mission, 2, "hash_mismatch", "undecodable")

    world.store.set_topic(world.mission, 2, "mission_ledger.NoSuchEvent.v1")
    assert_first_break(world.verify(), world.mission, 2, "undecodable")

    # An alias that resolves to the very same class: the hash still matches, the topic does not.
    world.store.set_topic(world.mission, 2, "mission_ledger.domain.mission:Mission.Delegated")
    report = world.verify()
    assert_first_break(report, world.mission, 2, "topic_mismatch")


def test_deleting_a_middle_event_is_detected(world: World) -> None:
    world.store.delete(world.mission, 3)
    report = world.verify()
    assert_first_break(report, world.mission, 3, "missing_version")
    assert [p.kind for p in report.problems] == ["missing_version"]  # v4's link is not re-blamed


def test_deleting_the_first_event_is_detected(world: World) -> None:
    world.store.delete(world.child, 1)
    assert_first_break(world.verify(), world.child, 1, "missing_version")


def test_swapping_two_events_is_detected(world: World) -> None:
    world.store.set_version(world.mission, 2, 1000)
    world.store.set_version(world.mission, 3, 2)
    world.store.set_version(world.mission, 1000, 3)
    report = world.verify()
    assert_first_break(report, world.mission, 2)
    kinds = {(p.kind, p.version) for p in report.problems}
    assert {("event_id_mismatch", 2), ("event_id_mismatch", 3), ("out_of_order", 3)} <= kinds


def test_deleting_the_newest_event_is_detected_only_with_a_checkpoint(world: World) -> None:
    rows = world.store.rows()
    newest = rows[-1]
    assert (newest.aggregate_id, newest.version) == (world.child, 4)  # the cascade
    world.checkpoint()
    world.store.delete(world.child, 4)

    # Without a checkpoint the chain alone cannot tell: the stream simply ends one event earlier.
    blind = world.verify(audit_dir=world.audit_dir.parent / "no-checkpoints")
    assert blind.ok, blind.summary()
    assert blind.events == 10

    report = world.verify()
    first = assert_first_break(report, world.child, 4, "truncated")
    assert "version 3" in first.description
    ledger_wide = [p for p in report.problems if p.aggregate_id == ""]
    assert [p.kind for p in ledger_wide] == ["truncated"]  # the position went backwards too
    with pytest.raises(audit.CheckpointRefused) as refused:
        world.checkpoint()
    assert isinstance(refused.value, MissionLedgerError)
    assert str(world.child) in refused.value.description


def test_deleting_a_whole_checkpointed_stream_is_detected(world: World) -> None:
    world.checkpoint()
    for version in (1, 2):
        world.store.delete(world.proposal, version)
    report = world.verify()
    assert_first_break(report, world.proposal, 2, "truncated")
    assert "gone" in report.problems[0].description


def test_consistent_rewrite_is_detected_only_with_a_checkpoint(world: World) -> None:
    world.checkpoint()
    row = world.store.row(world.child, 4)
    mapper = world.ledger.mapper
    event: Any = mapper.to_domain_event(StoredEvent(row.aggregate_id, 4, row.topic, row.state))
    forged: Any = dataclasses.replace(event, actor="mallory")
    forged = dataclasses.replace(forged, hash=compute_hash(forged))
    world.store.set_state(world.child, 4, mapper.to_stored_event(forged).state)

    blind = world.verify(audit_dir=world.audit_dir.parent / "no-checkpoints")
    assert blind.ok, blind.summary()  # every hash was recomputed: the chain is unkeyed
    assert_first_break(world.verify(), world.child, 4, "rewritten")


# -- snapshots and checkpoints --------------------------------------------------------------------


def test_tampered_snapshot_is_detected(world: World) -> None:
    original = world.store.snapshot_state(world.mission, 5)
    assert b'"state":"revoked"' in original
    forged = original.replace(b'"state":"revoked"', b'"state":"active"')
    world.store.set_snapshot_state(world.mission, 5, forged)
    assert world.ledger.get_mission(world.mission).state == "active"  # why snapshots matter
    first = assert_first_break(world.verify(), world.mission, 5, "snapshot_mismatch")
    assert "state" in first.description

    head = json.loads(original)["state"]["head_hash"].encode()
    other = HASH_PREFIX.encode() + b"A" * (len(head) - len(HASH_PREFIX))
    world.store.set_snapshot_state(world.mission, 5, original.replace(head, other))
    first = assert_first_break(world.verify(), world.mission, 5, "snapshot_mismatch")
    assert "head_hash" in first.description

    world.store.set_snapshot_state(world.mission, 5, original)
    assert world.verify().ok


def test_forged_checkpoint_lines_are_detected(world: World) -> None:
    record = world.checkpoint()
    log = world.audit_dir / audit.CHECKPOINTS_FILE

    edited = json.loads(json.dumps(record))
    edited["checkpoint"]["position"] = 10**6  # keep the genuine signature
    with log.open("a") as handle:
        handle.write(json.dumps(edited) + "\n")
    report = world.verify()
    assert not report.ok
    assert [(p.kind, p.aggregate_id) for p in report.problems] == [("bad_checkpoint_signature", "")]
    assert "line 2" in report.problems[0].description
    assert report.checkpoint is not None
    assert report.checkpoint["line"] == 1  # the genuine checkpoint is still the reference
    assert "bad_checkpoint_signature" in report.summary()
    with pytest.raises(audit.CheckpointRefused):
        world.checkpoint()

    # A well-formed checkpoint signed by another key (the attacker's) is refused too.
    mallory = Ed25519PrivateKey.generate()
    body = edited["checkpoint"]
    raw = mallory.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    forged = {
        "checkpoint": body,
        "signature": base64.urlsafe_b64encode(mallory.sign(canonicalize(body)))
        .rstrip(b"=")
        .decode(),
        "public_key_thumbprint": sha256_b64url(
            canonicalize({"crv": "Ed25519", "kty": "OKP", "x": x})
        ),
        "alg": "EdDSA",
    }
    log.write_text(json.dumps(record) + "\n" + json.dumps(forged) + "\n")
    report = world.verify()
    assert [p.kind for p in report.problems] == ["bad_checkpoint_signature"]
    assert "another key" in report.problems[0].description


def test_checkpoint_is_refused_for_a_broken_ledger(world: World) -> None:
    world.store.delete(world.mission, 2)
    with pytest.raises(audit.CheckpointRefused) as refused:
        world.checkpoint()
    assert refused.value.code == "checkpoint_refused"
    assert "missing_version" in refused.value.description
    assert not (world.audit_dir / audit.CHECKPOINTS_FILE).exists()


# -- export ---------------------------------------------------------------------------------------


def _recompute(line: dict[str, Any]) -> str:
    """The chain hash from an export line alone (what an external auditor would do)."""
    timestamp = datetime.fromisoformat(line["timestamp"].replace("Z", "+00:00"))
    fields = {
        **line["fields"],
        "event_id": line["event_id"],
        "actor": line["actor"],
        "prev_hash": line["prev_hash"],
    }
    payload = {
        "aggregate_id": line["aggregate_id"],
        "version": line["version"],
        "topic": line["topic"],
        "timestamp": timestamp.isoformat(),
        "fields": fields,
    }
    return HASH_PREFIX + sha256_b64url(canonicalize(payload))


def test_export_round_trip(world: World) -> None:
    world.checkpoint()
    rows = world.store.rows()
    out = io.StringIO()
    count = audit.export(world.ledger, out, audit_dir=world.audit_dir)
    lines = [json.loads(text) for text in out.getvalue().splitlines()]
    events = [line for line in lines if line["kind"] == "event"]
    checkpoints = [line for line in lines if line["kind"] == "checkpoint"]
    assert count == len(events) == len(rows) == 11
    assert len(checkpoints) == 1
    assert checkpoints[0]["checkpoint"]["position"] == rows[-1].position
    assert [e["position"] for e in events] == [r.position for r in rows]
    for event, row in zip(events, rows, strict=True):
        assert (event["aggregate_id"], event["version"]) == (str(row.aggregate_id), row.version)
        assert event["hash"] == json.loads(row.state)["hash"]
        assert event["event_id"] == event_id_for(row.aggregate_id, row.version)
        assert _recompute(event) == event["hash"]
    assert events[0]["type"] == "ProposalSubmitted"
    assert events[-1]["type"] == "MissionCascaded"

    since = START + timedelta(minutes=3)  # the suspension and what followed it
    out = io.StringIO()
    recent = audit.export(world.ledger, out, audit_dir=world.audit_dir, since=since)
    kept = [json.loads(t) for t in out.getvalue().splitlines()]
    kept_events = [k for k in kept if k["kind"] == "event"]
    expected = [e for e in events if e["timestamp"] >= "2030-01-01T00:03:00Z"]
    assert recent == len(kept_events) == len(expected) == 6
    assert kept_events == expected
    naive = audit.export(
        world.ledger, io.StringIO(), audit_dir=world.audit_dir, since=since.replace(tzinfo=None)
    )
    assert naive == recent


# -- the in-memory backend ------------------------------------------------------------------------


def test_memory_backend_is_verified_from_the_recorder(tmp_path: Path) -> None:
    clock = FixedClock(START)
    ledger = open_ledger(
        Settings(data_dir=tmp_path, database_url="memory:", snapshot_interval=5), clock=clock
    )
    try:
        _, mission, _ = build(ledger, clock)
        assert audit.verify(ledger, audit_dir=tmp_path / "audit").ok
        audit.checkpoint(ledger, audit_dir=tmp_path / "audit")
        recorder: Any = ledger.recorder
        stored = recorder._stored_events
        index = next(
            i
            for i, s in enumerate(stored)
            if s.originator_id == mission and s.originator_version == 3
        )
        original = stored[index]
        stored[index] = dataclasses.replace(
            original, state=original.state.replace(b'"actor":"bob"', b'"actor":"eve"')
        )
        report = audit.verify(ledger, audit_dir=tmp_path / "audit")
        assert_first_break(report, mission, 3, "hash_mismatch")
    finally:
        ledger.close()
