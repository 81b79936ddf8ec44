"""The README's HTTP walk-through runs as written against the real server."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from tests.e2e.conftest import ROOT, start_server


def _http_walkthrough() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## The HTTP API in five minutes", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, "the README's HTTP walk-through has no bash block"
    return match.group(1)


def test_readme_http_walkthrough_runs_as_written(tmp_path: Path) -> None:
    data = tmp_path / "var"
    server = start_server(tmp_path, ["--data", str(data)])
    try:
        assert server.operator_token is not None, server.logs()
        script = _http_walkthrough()
        script = re.sub(r"^B=.*$", f"B={server.url}", script, count=1, flags=re.MULTILINE)
        script = re.sub(
            r"^OP=.*$", f"OP={server.operator_token}", script, count=1, flags=re.MULTILINE
        )
        env = {
            **os.environ,
            "MISSION_LEDGER_DATA": str(data),
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
        out = done.stdout
        assert out.index('"decision": "allow"') < out.index('"decision": "deny"')
        assert '"decision": true' in out
        assert '"scope": [' in out
        assert "agentpass: 404" in out
        assert '"state": "revoked"' in out
        assert '"type": "MissionRevoked"' in out
    finally:
        assert server.stop() == 0
