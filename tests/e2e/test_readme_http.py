"""The README's HTTP walk-through runs as written against the real server."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.conftest import readme_block, run_readme_script, start_server


def test_readme_http_walkthrough_runs_as_written(tmp_path: Path) -> None:
    data = tmp_path / "var"
    server = start_server(tmp_path, ["--data", str(data)])
    try:
        assert server.operator_token is not None, server.logs()
        script = readme_block("## The HTTP API in five minutes")
        script = re.sub(r"^B=.*$", f"B={server.url}", script, count=1, flags=re.MULTILINE)
        script = re.sub(
            r"^OP=.*$", f"OP={server.operator_token}", script, count=1, flags=re.MULTILINE
        )
        done = run_readme_script(script, data)
        out = done.stdout
        assert out.index('"decision": "allow"') < out.index('"decision": "deny"')
        assert '"decision": true' in out
        assert '"scope": [' in out
        assert "agentpass: 404" in out
        assert '"state": "revoked"' in out
        assert '"type": "MissionRevoked"' in out
    finally:
        assert server.stop() == 0
