"""The README's command-line walk-through is executable documentation: run it as written."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import readme_block, run_readme_script


def test_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    script = readme_block("## Walk-through").replace(
        "ledger-export.jsonl", str(tmp_path / "export.jsonl")
    )
    script += (
        '\nml --json show "$C" > "$OUT/child.json"\nml --json show "$M" > "$OUT/parent.json"\n'
    )
    done = run_readme_script(script, tmp_path / "var", OUT=str(tmp_path))
    assert "state:          cascaded" in done.stdout
    assert '"state": "cascaded"' in (tmp_path / "child.json").read_text()
    assert '"state": "revoked"' in (tmp_path / "parent.json").read_text()
    lines = (tmp_path / "export.jsonl").read_text().splitlines()
    assert sum('"kind": "event"' in line or '"kind":"event"' in line for line in lines) >= 9
