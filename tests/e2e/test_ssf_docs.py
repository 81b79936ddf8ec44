"""docs/ssf-receivers.md is executable documentation: its curl walk-through runs as written, and
its Python receiver verifies, acknowledges and reports SETs against the real server."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ROOT, run_readme_script, start_server

GUIDE = ROOT / "docs" / "ssf-receivers.md"


def _block(language: str, heading: str) -> str:
    section = GUIDE.read_text(encoding="utf-8").split(heading, 1)[1]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"no {language} block after {heading!r}"
    return match.group(1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def guide_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A server whose issuer is its own loopback URL, so the URLs in its metadata work."""
    tmp_path = tmp_path_factory.mktemp("guide")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(
        tmp_path,
        ["--data", str(tmp_path / "var")],
        "--port",
        str(port),
        "--issuer",
        base,
        "--poll-timeout",
        "2",
    )
    try:
        yield server, base
    finally:
        assert server.stop() == 0, server.logs()


def test_the_curl_walkthrough_runs_as_written(guide_server: Any) -> None:
    server, base = guide_server
    assert server.url == base
    script = _block("bash", "## 2. Walk-through with curl")
    script = re.sub(r"^B=.*$", f"B={base}", script, count=1, flags=re.MULTILINE)
    out = run_readme_script(script, Path(server.storage[1])).stdout
    assert f'"issuer": "{base}"' in out
    assert '"events_delivered": [' in out
    assert '"state": "hello"' in out  # the decoded verification SET
    assert '"status": "paused"' in out
    assert '"status": "enabled"' in out


def test_the_python_receiver_verifies_acknowledges_and_reports(guide_server: Any) -> None:
    server, base = guide_server
    (token,) = server.mint(
        {
            "svc": [
                "receiver",
                "svc",
                "--audience",
                "https://svc.example.com",
                "--all-missions",
            ]
        }
    ).values()
    namespace: dict[str, Any] = {}
    exec(compile(_block("python", "## 5. Verifying a SET"), str(GUIDE), "exec"), namespace)  # noqa: S102
    call, verifier_class, poll_once = (
        namespace["call"],
        namespace["SetVerifier"],
        namespace["poll_once"],
    )

    metadata = call(base + "/.well-known/ssf-configuration", token)
    stream = call(metadata["configuration_endpoint"], token, {})
    poll_url = stream["delivery"]["endpoint_url"]
    assert (
        call(
            metadata["verification_endpoint"],
            token,
            {"stream_id": stream["stream_id"], "state": "py"},
        )
        is None
    )
    raw: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while not raw:  # long polls; the first may time out empty on a loaded machine
        raw = call(poll_url, token, {"maxEvents": 10})["sets"]
        assert time.monotonic() < deadline
    ((jti, token_value),) = raw.items()

    verifier = verifier_class(metadata, stream)
    claims = verifier.verify(token_value)
    assert claims["jti"] == jti
    assert claims["events"] == {
        "https://schemas.openid.net/secevent/ssf/event-type/verification": {"state": "py"}
    }
    wrong_audience = verifier_class(metadata, {**stream, "aud": "https://other.example.com"})
    with pytest.raises(ValueError, match="invalid_audience"):
        wrong_audience.verify(token_value)

    handled: list[dict[str, Any]] = []
    stored, more = poll_once(stream, token, verifier, [jti], handled.append)  # acknowledges
    assert (stored, more, handled) == ([], False, [])
    assert call(poll_url, token, {"returnImmediately": True}) == {
        "sets": {},
        "moreAvailable": False,
    }

    # A SET that fails verification is reported in setErrs and leaves the queue.
    other = call(metadata["configuration_endpoint"], token, {"set_signing_alg": "ES256"})
    call(metadata["verification_endpoint"], token, {"stream_id": other["stream_id"]})
    pinned_wrong = verifier_class(metadata, {**other, "set_signing_alg": "RS256"})
    deadline = time.monotonic() + 60
    ack_only = {"returnImmediately": True, "maxEvents": 0}
    while not call(other["delivery"]["endpoint_url"], token, ack_only)["moreAvailable"]:
        assert time.monotonic() < deadline  # until the verification SET is queued
        time.sleep(0.05)
    stored, _ = poll_once(other, token, pinned_wrong, [], handled.append)
    assert stored == []
    assert handled == []
    answer = call(other["delivery"]["endpoint_url"], token, {"returnImmediately": True})
    assert answer == {"sets": {}, "moreAvailable": False}
