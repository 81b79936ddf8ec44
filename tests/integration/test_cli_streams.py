"""``mission-ledger streams list|show|pause|enable|disable`` on SQLite and PostgreSQL.

Streams are created the way a receiver creates them (the stream service, as the SSF API calls
it); the outbox worker runs in-process to fill the queue the commands report on.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.domain.stream import Stream
from mission_ledger.principals import PrincipalRegistry
from mission_ledger.ssf.keys import open_key_store
from mission_ledger.ssf.outbox import OutboxWorker
from mission_ledger.ssf.outbox_store import OutboxStore
from mission_ledger.ssf.streams import STREAM_UPDATED, VERIFICATION, StreamService
from tests.integration.test_cli import Cli
from tests.pgtarget import PgTarget


@dataclass
class Store:
    cli: Cli
    settings: Settings

    def receiver_stream(self, name: str = "erp") -> str:
        """Register a receiver with the CLI and create a poll stream as it would."""
        principal_id = self.cli.ok(
            "tokens",
            "create",
            "--role",
            "receiver",
            "--name",
            name,
            "--audience",
            f"https://{name}.example.com",
            "--resource",
            f"https://{name}.example.com/",
        )["principal_id"]
        ledger = open_ledger(self.settings)
        try:
            principal = PrincipalRegistry(ledger).get(principal_id)
            return str(StreamService(ledger).create(principal, {})["stream_id"])
        finally:
            ledger.close()

    def verify(self, stream_id: str, state: str) -> None:
        ledger = open_ledger(self.settings)
        try:
            service = StreamService(ledger, min_verification_interval=0)
            stream = service.stream(stream_id)
            principal = PrincipalRegistry(ledger).get(stream.receiver_id)
            service.verify(principal, {"stream_id": stream_id, "state": state})
        finally:
            ledger.close()

    def run_outbox(self) -> int:
        ledger = open_ledger(self.settings)
        keys = open_key_store(self.settings, rsa_bits=2048)
        try:
            keys.ensure_keys()
            worker = OutboxWorker(ledger, self.settings, keys)
            try:
                return worker.run_once()
            finally:
                worker.close()
        finally:
            keys.close()
            ledger.close()

    def poll(self, stream_id: str, **kwargs: Any) -> dict[str, str]:
        store = OutboxStore.open(self.settings)
        try:
            options: dict[str, Any] = {
                "max_events": None,
                "ack": [],
                "set_errs": {},
                "deliver": True,
                "reoffer_after": 30.0,
                "now": datetime.now(UTC),
                **kwargs,
            }
            sets, _ = store.poll(stream_id, **options)
            return sets
        finally:
            store.close()

    def events(self, stream_id: str) -> list[Any]:
        ledger = open_ledger(self.settings)
        try:
            return list(ledger.events.get(StreamService(ledger).stream(stream_id).id))
        finally:
            ledger.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> Iterator[Store]:
    if request.param == "sqlite":
        data = tmp_path / "data"
        yield Store(Cli(capsys, ["--data", str(data)], tmp_path), Settings(data_dir=data))
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        yield Store(
            Cli(capsys, ["--database-url", target.ledger_url], tmp_path),
            Settings(database_url=target.ledger_url, postgres_pool_size=2),
        )


def test_list_without_streams_says_where_they_come_from(store: Store) -> None:
    run = store.cli("streams", "list")
    assert run.code == 0, run.err
    assert "no streams" in run.out
    assert store.cli.ok("streams", "list") == []


def test_list_and_show_report_status_and_queue(store: Store) -> None:
    stream_id = store.receiver_stream()
    store.verify(stream_id, "s-1")
    assert store.run_outbox() == 1
    listed = store.cli.ok("streams", "list")
    assert [d["stream_id"] for d in listed] == [stream_id]
    assert listed[0]["status"] == "enabled"
    assert listed[0]["receiver"]["name"] == "erp"
    assert listed[0]["queue"]["queue_depth"] == 1
    table = store.cli("streams", "list")
    assert stream_id in table.out
    assert "enabled" in table.out
    shown = store.cli.ok("streams", "show", stream_id)
    assert shown["queue"]["queue_depth"] == 1
    assert shown["queue"]["oldest_undelivered_age_seconds"] is not None
    assert shown["scope"] == ["https://erp.example.com/"]
    assert shown["delivery"]["endpoint_url"].endswith(f"/ssf/poll/{stream_id}")
    text = store.cli("streams", "show", stream_id).out
    assert "queue_depth" in text
    assert "oldest_undelivered" in text


def test_show_lists_the_errors_the_receiver_reported(store: Store) -> None:
    stream_id = store.receiver_stream()
    store.verify(stream_id, "s-1")
    store.run_outbox()
    (jti,) = store.poll(stream_id)
    store.poll(
        stream_id,
        max_events=0,
        set_errs={jti: {"err": "invalid_state", "description": "state does not match"}},
    )
    shown = store.cli.ok("streams", "show", stream_id)
    assert shown["queue"]["queue_depth"] == 0
    assert [(e["jti"], e["err"]) for e in shown["queue"]["last_errors"]] == [(jti, "invalid_state")]
    text = store.cli("streams", "show", stream_id).out
    assert "last errors reported by the receiver" in text
    assert "invalid_state" in text


def test_pause_is_transmitter_initiated_and_sends_stream_updated(store: Store) -> None:
    stream_id = store.receiver_stream()
    run = store.cli("streams", "pause", stream_id, "--reason", "maintenance")
    assert run.code == 0, run.err
    assert "now paused" in run.out
    again = store.cli.ok("streams", "pause", stream_id, "--reason", "maintenance")
    assert again == {
        "stream_id": stream_id,
        "status": "paused",
        "reason": "maintenance",
        "changed": False,
    }
    event = store.events(stream_id)[-1]
    assert isinstance(event, Stream.StatusChanged)
    assert (event.status, event.initiator, event.reason) == ("paused", "transmitter", "maintenance")
    store.verify(stream_id, "held")
    assert store.run_outbox() == 2  # the stream-updated SET and the (held) verification SET
    # paused: only the control SET is offered; it tells the receiver why
    held = store.poll(stream_id, deliver=False)
    assert len(held) == 1
    enabled = store.cli.ok("streams", "enable", stream_id)
    assert enabled["status"] == "enabled"
    assert enabled["changed"] is True
    store.run_outbox()
    types = _event_types(store.poll(stream_id))
    assert types.count(STREAM_UPDATED) == 1  # the one for "enabled"
    assert VERIFICATION in types  # held while paused, delivered now


def test_disable_drops_the_queue(store: Store) -> None:
    stream_id = store.receiver_stream()
    store.verify(stream_id, "dropped")
    store.run_outbox()
    assert store.cli.ok("streams", "disable", stream_id)["status"] == "disabled"
    store.run_outbox()
    assert _event_types(store.poll(stream_id, deliver=False)) == [STREAM_UPDATED]


def test_unknown_stream_is_exit_3(store: Store) -> None:
    for argv in (("streams", "show", "0" * 32), ("streams", "pause", "nope")):
        run = store.cli(*argv)
        assert run.code == 3
        assert "no such stream" in run.err


def _event_types(sets: dict[str, str]) -> list[str]:
    types = []
    for token in sets.values():
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        (event_type,) = claims["events"]
        types.append(event_type)
    return types


def test_the_worker_command_runs_the_outbox_too(store: Store) -> None:
    """Scale-out deployments (`worker` + `serve --no-worker`) still get their SETs signed."""
    stream_id = store.receiver_stream()
    store.verify(stream_id, "from-the-worker")
    document = store.cli.ok("worker", "--once")
    assert document["sets_queued"] == 1
    assert document["outbox_lag"] == 0
    assert _event_types(store.poll(stream_id)) == [VERIFICATION]
