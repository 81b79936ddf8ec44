"""The benchmark scripts run: a smoke run of ``scripts/bench_propagation.py`` on SQLite.

It starts the real server and the receiver process, so it stays tiny (one ES256 receiver, two
revocations, half a second of fan-out, one polling Service) and checks only that the table and
the verdicts are printed, never the figures.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_propagation_quick_prints_the_table() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MISSION_LEDGER_")}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_propagation.py"),
            "--quick",
            "--backends",
            "sqlite",
            "--algs",
            "ES256",
            "--receivers",
            "1",
            "--revocations",
            "2",
            "--seconds",
            "0.5",
            "--pollers",
            "1",
            "--blackhole",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr[-3000:]}"
    out = done.stdout
    for row in (
        "baseline: sign_set, 1 thread",
        "baseline: poll every 1 s, measured",
        "baseline: poll every 30 s, model",
        "revoke -> receiver 202, each delivery",
        "revoke -> all 1 receivers' 202",
        "sustained fan-out, SETs delivered",
        "revoke -> all 2 healthy, alone",
        "revoke -> all 2 healthy, +1 black-holed",
        "one black-holed receiver among 3 leaves the other 2's p99 within noise",
    ):
        assert row in out, f"no {row!r} row in:\n{out}"
    assert "p50 ms" in out
    assert "targets are stated for RS256" in out
