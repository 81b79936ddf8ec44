"""The ``mission-ledger`` command line, end to end against real storage.

Most tests run the CLI in-process through :func:`mission_ledger.cli.main` (fast, with ``capsys``);
a few run ``python -m mission_ledger`` in a subprocess to prove the entry point and exit codes.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from mission_ledger.cli import main
from mission_ledger.domain.timefmt import format_rfc3339, parse_rfc3339
from mission_ledger.ledger import DEFAULT_SYSTEM_ACTOR
from tests.integration.conftest import LEDGER_ENV_VARS
from tests.pgtarget import PgTarget

ERP = "https://erp.example.com"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


class Cli:
    """Runs ``main`` in-process against one storage option, capturing the output."""

    def __init__(self, capsys: pytest.CaptureFixture[str], storage: Sequence[str], tmp: Path):
        self.capsys = capsys
        self.storage = list(storage)
        self.tmp = tmp
        self._files = 0

    def __call__(self, *argv: str, storage: bool = True) -> Run:
        self.capsys.readouterr()
        code = main([*(self.storage if storage else []), *argv])
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def ok(self, *argv: str) -> Any:
        """Run with ``--json``, expect exit 0, return the parsed document."""
        run = self(*argv, "--json")
        assert run.code == 0, run.err
        return run.json()

    def file(self, value: Any, *, raw: str | None = None) -> str:
        self._files += 1
        path = self.tmp / f"input-{self._files}.json"
        path.write_text(raw if raw is not None else json.dumps(value), encoding="utf-8")
        return str(path)


def future(**delta: float) -> str:
    return format_rfc3339(datetime.now(UTC).replace(microsecond=0) + timedelta(**delta))


def proposal(
    *, user: str = "alice", agent: str = "agent-1", expires_at: str | None = None
) -> dict[str, Any]:
    return {
        "user": user,
        "agent": agent,
        "task": {"id": "T-1", "description": "Reconcile the Q3 invoices"},
        "intent": {
            "goal": "Reconcile Q3 invoices",
            "resources": [ERP],
            "expires_at": expires_at or future(days=30),
        },
        "authority_set": [
            {
                "type": "mission_resource_access",
                "resource": f"{ERP}/invoices/*",
                "actions": ["invoices.read", "invoices.update"],
                "delegation": {
                    "max_depth": 1,
                    "children": {"max_children": 2, "allowed_child_actors": [{"sub": "agent-7"}]},
                },
            }
        ],
    }


CHILD_AUTHORITY = [
    {
        "type": "mission_resource_access",
        "resource": f"{ERP}/invoices/*",
        "actions": ["invoices.read"],
    }
]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Cli:
    return Cli(capsys, ["--data", str(tmp_path / "data")], tmp_path)


def approved_mission(cli: Cli, **kwargs: Any) -> dict[str, Any]:
    proposed = cli.ok("propose", "--file", cli.file(proposal(**kwargs)))
    mission: dict[str, Any] = cli.ok("approve", proposed["proposal_id"], "--actor", "bob")
    return mission


def walkthrough(cli: Cli) -> None:
    """propose → approve → delegate → suspend → resume → revoke, checking every step."""
    proposed = cli.ok("propose", "--file", cli.file(proposal()), "--actor", "agent-1")
    assert proposed["state"] == "pending"
    assert proposed["intent_hash"].startswith("sha-256:")
    assert proposed["proposal_hash"].startswith("sha-256:")
    assert proposed["submitted_by"] == "agent-1"

    mission = cli.ok("approve", proposed["proposal_id"], "--actor", "bob")
    assert (mission["state"], mission["version"]) == ("active", 1)
    assert mission["proposal_id"] == proposed["proposal_id"]
    assert mission["authority_hash"].startswith("sha-256:")
    mid = mission["mission_id"]

    child = cli.ok(
        "delegate",
        mid,
        "--agent",
        "agent-7",
        "--authority-file",
        cli.file(CHILD_AUTHORITY),
        "--actor",
        "agent-1",
    )
    cid = child["mission_id"]
    assert cid != mid
    assert child["agent"] == "agent-7"
    assert child["parent"]["id"] == mid
    assert child["authority_set"] == CHILD_AUTHORITY

    suspended = cli.ok("suspend", mid, "--reason", "incident 42", "--expected-version", "2")
    assert (suspended["state"], suspended["version"], suspended["changed"]) == (
        "suspended",
        3,
        True,
    )
    child_now = cli.ok("show", cid)
    assert child_now["state"] == "suspended"
    assert child_now["suspended_by"] == mid

    resumed = cli.ok("resume", mid)
    assert resumed["state"] == "active"
    assert cli.ok("show", cid)["state"] == "active"

    revoked = cli.ok("revoke", mid, "--reason", "done")
    assert revoked["state"] == "revoked"
    assert cli.ok("show", cid)["state"] == "cascaded"

    listed = cli.ok("list", "--parent", mid)["missions"]
    assert [(m["mission_id"], m["state"]) for m in listed] == [(cid, "cascaded")]
    types = [e["type"] for e in cli.ok("history", mid)["events"]]
    assert types == [
        "MissionApproved",
        "MissionDelegated",
        "MissionSuspended",
        "MissionResumed",
        "MissionRevoked",
    ]


def test_walkthrough_on_sqlite(cli: Cli) -> None:
    walkthrough(cli)


@pytest.mark.postgres
def test_walkthrough_on_postgres(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, postgres_schema_url: PgTarget
) -> None:
    url = postgres_schema_url.ledger_url
    cli = Cli(capsys, ["--database-url", url], tmp_path)
    walkthrough(cli)
    assert len(cli.ok("list")["missions"]) == 2


def test_global_options_before_and_after_the_command(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path / "data")
    doc = cli.file(proposal())
    before = cli(
        "--data",
        data,
        "--issuer",
        "https://as.example.com",
        "--actor",
        "agent-1",
        "--json",
        "propose",
        "--file",
        doc,
        storage=False,
    )
    assert before.code == 0, before.err
    after = cli(
        "propose",
        "--file",
        doc,
        "--data",
        data,
        "--issuer",
        "https://as.example.com",
        "--actor",
        "agent-1",
        "--json",
        storage=False,
    )
    assert after.code == 0, after.err
    for run in (before, after):
        document = run.json()
        assert document["issuer"] == "https://as.example.com"
        assert document["submitted_by"] == "agent-1"
    # both landed in the same --data directory
    mixed = cli("--data", data, "list", "--proposals", "--json", storage=False)
    assert mixed.code == 0
    assert len(mixed.json()["proposals"]) == 2
    # the environment supplies defaults; flags win
    # an explicit --data beats a database URL from the environment
    monkeypatch.setenv("MISSION_LEDGER_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/nowhere")
    assert len(cli.ok("list", "--proposals")["proposals"]) == 2
    monkeypatch.setenv("MISSION_LEDGER_ACTOR", "carol")
    assert cli.ok("propose", "--file", doc)["submitted_by"] == "carol"
    assert cli.ok("propose", "--file", doc, "--actor", "dave")["submitted_by"] == "dave"


def test_data_and_database_url_are_mutually_exclusive(cli: Cli, tmp_path: Path) -> None:
    run = cli(
        "--data",
        str(tmp_path),
        "list",
        "--database-url",
        "postgresql://x@127.0.0.1/db",
        storage=False,
    )
    assert run.code == 2
    assert "mutually exclusive" in run.err
    assert run.out == ""


def test_human_output_and_no_change(cli: Cli) -> None:
    proposed = cli.ok("propose", "--file", cli.file(proposal()))
    run = cli("approve", proposed["proposal_id"], "--actor", "bob")
    assert run.code == 0, run.err
    lines = dict(line.split(":", 1) for line in run.out.splitlines())
    assert lines["state"].strip() == "active"
    assert lines["version"].strip() == "1"
    assert lines["authority_hash"].strip().startswith("sha-256:")
    mid = lines["mission_id"].strip()
    assert cli("suspend", mid).code == 0
    again = cli("suspend", mid)
    assert again.code == 0
    assert "(no change: already suspended)" in again.out
    as_json = cli.ok("suspend", mid)
    assert as_json["changed"] is False
    assert (as_json["mission_id"], as_json["state"], as_json["version"]) == (mid, "suspended", 2)


def test_invalid_input_exits_2(cli: Cli) -> None:
    malformed = proposal()
    del malformed["intent"]
    run = cli("propose", "--file", cli.file(malformed))
    assert run.code == 2
    assert run.err.startswith("error: intent is required")
    assert "field: intent" in run.err
    assert run.out == ""

    bad_json = cli("propose", "--file", cli.file(None, raw='{"user": "alice",'), "--json")
    assert bad_json.code == 2
    error = json.loads(bad_json.err)["error"]
    assert error["code"] == "invalid_request"
    assert "not valid JSON" in error["description"]

    missing_file = cli("propose")
    assert missing_file.code == 2
    assert "--file" in missing_file.err

    unreadable = cli("propose", "--file", str(cli.tmp / "no-such-file.json"))
    assert unreadable.code == 2
    assert "cannot read --file" in unreadable.err

    bad_time = cli("show", UNKNOWN_ID, "--as-of", "yesterday")
    assert bad_time.code == 2
    assert "RFC 3339" in bad_time.err

    assert cli("no-such-command").code == 2
    assert "Traceback" not in bad_json.err + missing_file.err


def test_not_found_exits_3(cli: Cli) -> None:
    for argv in (("show", UNKNOWN_ID), ("suspend", UNKNOWN_ID), ("history", UNKNOWN_ID)):
        run = cli(*argv)
        assert run.code == 3, argv
        assert run.err.startswith("error: no "), run.err
    as_json = cli("revoke", "not-a-uuid", "--json")
    assert as_json.code == 3
    assert json.loads(as_json.err)["error"]["code"] == "not_found"


def test_conflicts_exit_4(cli: Cli) -> None:
    mission = approved_mission(cli)
    run = cli("resume", mission["mission_id"])
    assert run.code == 4
    assert "only a suspended Mission can be resumed" in run.err
    assert "current_state: active" in run.err

    stale = cli("suspend", mission["mission_id"], "--expected-version", "7", "--json")
    assert stale.code == 4
    assert json.loads(stale.err)["error"]["current_version"] == 1

    proposed = cli.ok("propose", "--file", cli.file(proposal(agent="agent-1")))
    own = cli("approve", proposed["proposal_id"], "--actor", "agent-1")
    assert own.code == 4
    assert "separation of duty" in own.err
    assert cli.ok("show", proposed["proposal_id"])["state"] == "pending"


def test_idempotency_key_replays_the_same_mission(cli: Cli) -> None:
    proposed = cli.ok("propose", "--file", cli.file(proposal()))
    argv = ("approve", proposed["proposal_id"], "--actor", "bob", "--idempotency-key", "k-1")
    first = cli.ok(*argv)
    second = cli.ok(*argv)
    assert first["changed"] is True
    assert (second["changed"], second["replayed"]) == (False, True)
    strip = {"changed", "replayed"}
    assert {k: v for k, v in second.items() if k not in strip} == {
        k: v for k, v in first.items() if k not in strip
    }
    human = cli(*argv)
    assert first["mission_id"] in human.out
    assert "no change" in human.out
    assert len(cli.ok("list")["missions"]) == 1
    reused = cli("deny", proposed["proposal_id"], "--idempotency-key", "k-1")
    assert reused.code == 4


def test_show_at_a_version_and_as_of(cli: Cli) -> None:
    mission = approved_mission(cli)
    mid = mission["mission_id"]
    time.sleep(0.01)
    cli.ok("suspend", mid, "--reason", "pause")
    latest = cli.ok("show", mid)
    assert (latest["state"], latest["version"]) == ("suspended", 2)
    assert [e["version"] for e in latest["rests_on"]] == [1, 2]

    v1 = cli.ok("show", mid, "--version", "1")
    assert (v1["state"], v1["version"]) == ("active", 1)
    assert [(e["version"], e["type"]) for e in v1["rests_on"]] == [(1, "MissionApproved")]
    assert v1["rests_on"][0]["event_id"]

    approved_at = v1["rests_on"][0]["timestamp"]
    as_of = cli.ok("show", mid, "--as-of", approved_at)
    assert (as_of["state"], as_of["version"]) == ("active", 1)
    before = format_rfc3339(parse_rfc3339(approved_at, field="t") - timedelta(seconds=1))
    assert cli("show", mid, "--as-of", before).code == 3
    assert cli("show", mid, "--version", "9").code == 3

    human = cli("show", mid, "--version", "1")
    assert "rests on:" in human.out
    assert "MissionApproved" in human.out

    shown = cli.ok("show", mission["proposal_id"])
    assert (shown["proposal_id"], shown["state"], shown["mission_id"]) == (
        mission["proposal_id"],
        "approved",
        mid,
    )


def test_history(cli: Cli) -> None:
    mission = approved_mission(cli)
    mid = mission["mission_id"]
    cli.ok("suspend", mid, "--reason", "incident 42", "--actor", "erin")
    events = cli.ok("history", mid)["events"]
    assert [(e["version"], e["type"], e["actor"]) for e in events] == [
        (1, "MissionApproved", "bob"),
        (2, "MissionSuspended", "erin"),
    ]
    assert events[1]["reason"] == "incident 42"
    assert events[1]["prev_hash"] == events[0]["hash"]
    table = cli("history", mid).out.splitlines()
    assert table[0].split() == ["VERSION", "TYPE", "TIMESTAMP", "ACTOR", "REASON", "HASH"]
    assert table[2].split()[:4] == ["2", "MissionSuspended", events[1]["timestamp"], "erin"]
    assert events[1]["hash"] in table[2]
    proposal_events = cli.ok("history", mission["proposal_id"])["events"]
    assert [e["type"] for e in proposal_events] == ["ProposalSubmitted", "ProposalApproved"]


def test_list_filters(cli: Cli) -> None:
    a = approved_mission(cli, user="alice", agent="agent-1")
    b = approved_mission(cli, user="bert", agent="agent-2")
    cli.ok("suspend", b["mission_id"])
    pending = cli.ok("propose", "--file", cli.file(proposal(user="alice", agent="agent-3")))

    def ids(*argv: str) -> list[str]:
        return [m["mission_id"] for m in cli.ok("list", *argv)["missions"]]

    assert ids() == [a["mission_id"], b["mission_id"]]
    assert ids("--user", "alice") == [a["mission_id"]]
    assert ids("--agent", "agent-2") == [b["mission_id"]]
    assert ids("--state", "suspended") == [b["mission_id"]]
    assert ids("--state", "revoked") == []
    assert ids("--parent", a["mission_id"]) == []

    proposals = cli.ok("list", "--proposals", "--state", "pending")["proposals"]
    assert [p["proposal_id"] for p in proposals] == [pending["proposal_id"]]
    by_agent = cli.ok("list", "--proposals", "--agent", "agent-2")["proposals"]
    assert [p["mission_id"] for p in by_agent] == [b["mission_id"]]

    table = cli("list", "--user", "bert").out.splitlines()
    assert table[0].split()[:3] == ["MISSION_ID", "STATE", "VERSION"]
    assert table[1].split()[:3] == [b["mission_id"], "suspended", "2"]
    assert cli("list", "--state", "completed").out.strip() == "(no Missions)"


INTENT_VECTOR = {
    "goal": "Reconcile Q3 invoices",
    "resources": ["https://erp.example.com"],
    "expires_at": "2026-12-31T23:59:59Z",
}
INTENT_ANCHOR = "sha-256:6mIFoCz79uCHNzKLfBpBwqFjoFXdpmpuc65486IqimQ"


def test_hash_reproduces_the_drafts_vector(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from_file = cli(
        "hash",
        "mission-intent",
        "--iss",
        "https://as.example.com",
        "--file",
        cli.file(INTENT_VECTOR),
        storage=False,
    )
    assert (from_file.code, from_file.out.strip()) == (0, INTENT_ANCHOR)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(INTENT_VECTOR, indent=4)))
    from_stdin = cli("hash", "mission-intent", "--iss", "https://as.example.com", "--json")
    assert from_stdin.code == 0
    assert from_stdin.json() == {
        "typ": "mission-intent",
        "iss": "https://as.example.com",
        "anchor": INTENT_ANCHOR,
    }
    other_iss = cli(
        "hash",
        "mission-intent",
        "--iss",
        "https://other.example.com",
        "--file",
        cli.file(INTENT_VECTOR),
    )
    assert other_iss.out.strip() != INTENT_ANCHOR
    assert cli("hash", "mission-intent").code == 2  # --iss is required


def test_expire_due_records_expiry(cli: Cli) -> None:
    proposed = cli.ok("propose", "--file", cli.file(proposal()))
    deadline = datetime.now(UTC) + timedelta(seconds=1.2)
    mission = cli.ok(
        "approve",
        proposed["proposal_id"],
        "--actor",
        "bob",
        "--expires-at",
        format_rfc3339(deadline),
    )
    mid = mission["mission_id"]
    early = cli.ok("expire-due")
    assert early["expired_missions"] == []
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.1)
    assert cli.ok("list", "--state", "expired")["missions"][0]["mission_id"] == mid
    report = cli.ok("expire-due")
    assert report["expired_missions"] == [mid]
    last = cli.ok("history", mid)["events"][-1]
    assert (last["type"], last["actor"]) == ("MissionExpired", DEFAULT_SYSTEM_ACTOR)
    human = cli("expire-due")
    assert human.code == 0
    assert "(nothing was due)" in human.out
    assert cli("suspend", mid).code == 4


def test_suspend_until_narrow_stage_and_complete(cli: Cli) -> None:
    staged = {**proposal(), "stages": ["draft", "review", "post"]}
    proposed = cli.ok("propose", "--file", cli.file(staged))
    mid = cli.ok("approve", proposed["proposal_id"], "--actor", "bob")["mission_id"]
    until = future(days=1)
    paused = cli.ok("suspend", mid, "--until", until, "--on-expiry", "revoke")
    assert (paused["suspend_until"], paused["on_expiry"]) == (until, "revoke")
    cli.ok("resume", mid, "--idempotency-key", "r-1")
    assert cli.ok("resume", mid, "--idempotency-key", "r-1")["replayed"] is True

    narrowed = cli.ok("narrow", mid, "--authority-file", cli.file(CHILD_AUTHORITY))
    assert narrowed["authority_set"] == CHILD_AUTHORITY
    assert narrowed["authority_hash"] != paused["authority_hash"]
    wider = cli("narrow", mid, "--authority-file", cli.file(proposal()["authority_set"]))
    assert wider.code == 2
    assert "must not widen" in wider.err

    assert cli.ok("stage", mid)["stage"] == "review"
    assert cli.ok("stage", mid, "--to", "post")["stage"] == "post"
    completed = cli.ok("complete", mid, "--reason", "reconciled")
    assert (completed["state"], completed["reason"]) == ("completed", "reconciled")
    assert cli("revoke", mid).code == 4


def test_deny_and_withdraw(cli: Cli) -> None:
    first = cli.ok("propose", "--file", cli.file(proposal()))
    denied = cli.ok("deny", first["proposal_id"], "--reason", "too broad", "--actor", "bob")
    assert (denied["state"], denied["decision_reason"]) == ("denied", "too broad")
    assert cli("approve", first["proposal_id"], "--actor", "bob").code == 4
    second = cli.ok("propose", "--file", cli.file(proposal()))
    assert cli.ok("withdraw", second["proposal_id"])["state"] == "withdrawn"
    assert cli.ok("withdraw", second["proposal_id"])["changed"] is False


def test_storage_unavailable_exits_1(cli: Cli) -> None:
    run = cli("list", "--database-url", "postgresql://postgres@127.0.0.1:1/nowhere", storage=False)
    assert run.code == 1
    assert run.err.startswith("error: cannot reach PostgreSQL")


def test_help_teaches_the_walkthrough(cli: Cli) -> None:
    top = cli("--help", storage=False)
    assert top.code == 0
    order = ["propose", "approve", "delegate", "suspend", "resume", "revoke", "audit verify"]
    walk = top.out[top.out.index("walk-through") :]
    positions = [walk.index(f"mission-ledger {step}") for step in order]
    assert positions == sorted(positions)
    sub = cli("delegate", "--help", storage=False)
    assert sub.code == 0
    assert "example:\n  mission-ledger delegate MISSION_ID --agent" in sub.out


def test_audit_verify_checkpoint_export_and_a_break(cli: Cli) -> None:
    """The audit commands on a real store: verify, checkpoint, export, then a tampered row."""
    approved_mission(cli)
    intact = cli("audit", "verify")
    assert intact.code == 0, intact.err
    report = cli.ok("audit", "verify", "--json")
    assert report["ok"] is True
    assert report["problems"] == []

    signed = cli.ok("audit", "checkpoint")
    assert signed["alg"] == "EdDSA"
    assert signed["signature"]
    assert (cli.tmp / "data" / "audit" / "checkpoints.jsonl").exists()

    target = cli.tmp / "events.jsonl"
    exported = cli.ok("audit", "export", "--since", "2026-01-01T00:00:00Z", "--output", str(target))
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    events = [line for line in lines if line["kind"] == "event"]
    assert exported["exported"] == len(events) >= 3
    assert any(line["kind"] == "checkpoint" for line in lines)
    elsewhere = cli.tmp / "elsewhere"
    assert cli("audit", "verify", "--audit-dir", str(elsewhere)).code == 0  # no checkpoint there

    with sqlite3.connect(cli.tmp / "data" / "ledger.sqlite3") as db:
        rowid, state = db.execute(
            "SELECT rowid, state FROM stored_events ORDER BY rowid DESC LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE stored_events SET state = ? WHERE rowid = ?",
            (bytes(state).replace(b"alice", b"mallory", 1), rowid),
        )
    broken = cli("audit", "verify", "--json")
    assert broken.code == 5
    assert broken.json()["ok"] is False
    assert broken.json()["first_break"]["version"] >= 1
    human = cli("audit", "verify")
    assert human.code == 5
    assert "version" in human.out


# -- the real entry point ---------------------------------------------------------------------


def run_module(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in LEDGER_ENV_VARS}
    return subprocess.run(
        [sys.executable, "-m", "mission_ledger", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


def test_module_entry_point_hash_and_not_found(tmp_path: Path) -> None:
    hashed = run_module(
        "hash",
        "mission-intent",
        "--iss",
        "https://as.example.com",
        stdin=json.dumps(INTENT_VECTOR),
    )
    assert (hashed.returncode, hashed.stdout.strip()) == (0, INTENT_ANCHOR), hashed.stderr

    missing = run_module("--data", str(tmp_path / "data"), "show", UNKNOWN_ID)
    assert missing.returncode == 3
    assert missing.stderr.startswith(f"error: no Mission or proposal {UNKNOWN_ID}")
    assert "Traceback" not in missing.stderr


def test_module_entry_point_invalid_input_and_conflict(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    invalid = run_module("--data", data, "propose", "--file", str(bad))
    assert invalid.returncode == 2
    assert "not valid JSON" in invalid.stderr

    proposed = run_module(
        "--data", data, "--json", "propose", "--file", "-", stdin=json.dumps(proposal())
    )
    assert proposed.returncode == 0, proposed.stderr
    pid = json.loads(proposed.stdout)["proposal_id"]
    own = run_module("approve", pid, "--data", data, "--actor", "agent-1", "--json")
    assert own.returncode == 4
    assert json.loads(own.stderr)["error"]["code"] == "forbidden"
    assert "Traceback" not in own.stderr
