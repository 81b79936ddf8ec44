"""The shell entry points at least parse, and the executable ones are executable."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "script",
    [
        "scripts/test",
        "scripts/_lib.sh",
        ".ci/run",
        "scripts/bench-ledger",
        "scripts/bench-check",
        "scripts/bench-propagation",
    ],
)
def test_shell_script_parses(script: str) -> None:
    result = subprocess.run(
        ["bash", "-n", str(ROOT / script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"bash -n {script} failed:\n{result.stderr}"


@pytest.mark.parametrize(
    "script",
    [
        "scripts/test",
        ".ci/run",
        "scripts/bench-ledger",
        "scripts/bench-check",
        "scripts/bench-propagation",
    ],
)
def test_entry_point_is_executable(script: str) -> None:
    assert os.access(ROOT / script, os.X_OK), f"{script} is not executable (chmod +x)"
