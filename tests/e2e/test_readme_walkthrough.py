"""The README's walk-through is executable documentation: run it as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Walk-through", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "the README's walk-through has no bash block"
    return match.group(1)


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = _walkthrough().replace("ledger-export.jsonl", str(tmp_path / "export.jsonl"))
    script += (
        '\nml --json show "$C" > "$OUT/child.json"\nml --json show "$M" > "$OUT/parent.json"\n'
    )
    env = {
        **os.environ,
        "MISSION_LEDGER_DATA": str(tmp_path / "var"),
        "OUT": str(tmp_path),
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env.pop("MISSION_LEDGER_DATABASE_URL", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"walk-through failed:\n{done.stdout}\n{done.stderr}"
    assert "state:          cascaded" in done.stdout
    assert '"state": "cascaded"' in (tmp_path / "child.json").read_text()
    assert '"state": "revoked"' in (tmp_path / "parent.json").read_text()
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    assert sum('"kind": "event"' in line or '"kind":"event"' in line for line in lines) >= 9
