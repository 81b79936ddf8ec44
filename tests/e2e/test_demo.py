"""``scripts/demo`` end to end: the driver the script runs (``scripts/demo.py``, with this venv's
Python), its outcome as it reports it (``--report FILE``) and as it prints it.

Asserted: exit 0; both Services received the revocation and the cascade; checks allowed before
and deny after, with the reason code; ``audit verify`` passed; positive latency figures in the
summary; every process it started is gone; the temporary directory is removed unless kept. No
timing assertions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DRIVER = ROOT / "scripts" / "demo.py"
SCRIPT = ROOT / "scripts" / "demo"
RUN_TIMEOUT = 240  # seconds: generous for a loaded machine (the demo takes ~10 s)
EVENTS = ("mission-revoked (parent)", "mission-cascaded (child)")
CAEP = ("session-revoked (parent)", "session-revoked (child)")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_LEDGER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("NO_COLOR", None)
    return env


def run_demo(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    report = tmp / "report.json"
    done = subprocess.run(
        [sys.executable, str(DRIVER), "--report", str(report), *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"the demo failed:\n{done.stdout}\n{done.stderr}"
    return done, json.loads(report.read_text(encoding="utf-8"))


def _alive(pid: int) -> bool:
    """Whether ``pid`` is still one of the demo's processes (a live, non-zombie Python)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = stat.rsplit(")", 1)[1].split()[0]
    return state != "Z" and (b"erp_service" in cmdline or b"mission_ledger" in cmdline)


def assert_story(done: subprocess.CompletedProcess[str], report: dict[str, Any]) -> None:
    out = done.stdout
    assert report["ok"] is True, report
    assert report["failure"] is None
    assert "\033[" not in out  # not a terminal: no colour

    # Both Services, one push and one poll, received the revocation and the cascade.
    services = report["services"]
    assert sorted(s["delivery"] for s in services.values()) == ["poll", "push"]
    for name, service in services.items():
        for event in EVENTS:
            assert event in service["received"], (name, service)
            assert service["latency_ms"][event] > 0, (name, service)
    parent, child = report["parent"], report["child"]
    assert f"mission-revoked   parent {parent[:8]}" in out
    assert f"mission-cascaded  child  {child[:8]}" in out

    # Checks: allowed (the narrower child refuses what it was not delegated), then denied.
    before = {(c["mission"], c["action"]): c for c in report["checks"]["before"]}
    assert before["parent", "invoices.read"]["decision"] == "allow"
    assert before["child", "invoices.read"]["decision"] == "allow"
    assert before["child", "invoices.flag"]["reason"] == "out_of_authority"
    after = {c["mission"]: c for c in report["checks"]["after"]}
    assert after["parent"]["decision"] == "deny"
    assert (after["parent"]["reason"], after["parent"]["state"]) == ("mission_inactive", "revoked")
    assert after["child"]["decision"] == "deny"
    assert (after["child"]["reason"], after["child"]["state"]) == ("mission_inactive", "cascaded")
    assert "→ deny (mission_inactive, state revoked)" in out
    assert "→ deny (mission_inactive, state cascaded)" in out

    # audit verify passed.
    assert report["audit"]["ok"] is True
    assert report["audit"]["exit_code"] == 0
    assert report["audit"]["first_break"] is None
    assert "mission-ledger audit verify → ok" in out

    # The summary table prints a positive latency per Service and event.
    summary = out.split("Summary: revoke-to-receiver latency", 1)[1]
    for name, service in services.items():
        row = re.search(rf"^  {re.escape(name)}\s+(push|poll) \(RFC 893[56]\)(.*)$", summary, re.M)
        assert row, summary
        figures = [float(f) for f in re.findall(r"(\d+(?:\.\d+)?) ms", row.group(2))]
        assert len(figures) == len(service["latency_ms"]), row.group(0)
        assert all(f > 0 for f in figures), row.group(0)

    # Every process it started is gone.
    assert set(report["processes"]) == {*services, "authority"}
    assert not [pid for pid in report["processes"].values() if _alive(pid)], report["processes"]


def test_the_demo_tells_the_story(tmp_path: Path) -> None:
    done, report = run_demo(tmp_path, "--no-colour")
    assert_story(done, report)
    assert set(next(iter(report["services"].values()))["received"]) == set(EVENTS)
    assert report["operator"] == "bootstrap"  # a fresh store: the server's first-start token
    assert report["kept"] is False
    assert not Path(report["work_dir"]).exists()  # the temporary store and logs are removed


def test_the_demo_on_a_used_store_with_caep(tmp_path: Path) -> None:
    """``--data DIR`` on a store that already has principals (no bootstrap token is printed:
    the demo mints its operator and suffixes its principals' names), with ``--caep``."""
    data = tmp_path / "store"
    seeded = subprocess.run(
        [
            *(sys.executable, "-m", "mission_ledger", "tokens", "create"),
            *("--role", "approver", "--name", "bob@example.com", "--data", str(data)),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert seeded.returncode == 0, seeded.stderr
    done, report = run_demo(tmp_path, "--data", str(data), "--caep", "--keep")
    assert_story(done, report)
    for service in report["services"].values():
        assert set(service["received"]) == {*EVENTS, *CAEP}
        assert all(service["latency_ms"][event] > 0 for event in CAEP)
    assert report["operator"] == "minted"
    assert data.is_dir()
    assert report["kept"] is True
    work = Path(report["work_dir"])
    try:
        assert (work / "logs" / "authority.err").is_file()
        for name in report["services"]:
            assert (work / "logs" / f"{name}.out").is_file()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_help_explains_the_demo() -> None:
    """``--help``, through the script itself when ``.venv`` is already set up for this
    ``pyproject.toml`` (its ``ensure_venv`` is then a no-op), else through the driver."""
    stamp = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    venv_ready = (ROOT / ".venv" / f".installed-{stamp}").exists()
    if venv_ready and Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
        pytest.skip("the tests run outside this checkout's .venv")
    command = [str(SCRIPT)] if venv_ready else [sys.executable, str(DRIVER)]
    done = subprocess.run(
        [*command, "--help"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for words in ("scripts/demo", "push", "poll", "revokes the parent", "--data", "--keep"):
        assert words in done.stdout, words


def test_the_script_parses_and_is_executable() -> None:
    """(``tests/unit/test_scripts.py`` lists the other entry points.)"""
    parsed = subprocess.run(
        ["bash", "-n", str(SCRIPT)], capture_output=True, text=True, check=False
    )
    assert parsed.returncode == 0, parsed.stderr
    assert os.access(SCRIPT, os.X_OK), "scripts/demo is not executable (chmod +x)"
