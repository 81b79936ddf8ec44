"""Start the real server (``python -m mission_ledger serve --port 0``) on loopback, in a subprocess.

:func:`start_server` waits for the ``listening on http://…`` line on stdout and reads the
bootstrap operator's token from stderr; both streams go to files, so a chatty server can never
block on a full pipe. :meth:`Server.create_token` mints principals with
``mission-ledger tokens create`` against the same store, as an operator would.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

LISTENING = re.compile(r"listening on (http://\S+)")
TOKEN = re.compile(r"\b(mlt_[0-9a-f]{32}_[A-Za-z0-9_-]{43})\b")
START_TIMEOUT = 30.0
SERVE = (sys.executable, "-m", "mission_ledger", "serve")
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MISSION_LEDGER_DATABASE_URL", "MISSION_LEDGER_DATA", "MISSION_LEDGER_ACTOR"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class Server:
    """A running server subprocess and what a test needs to talk to it."""

    url: str
    storage: list[str]
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    operator_token: str | None
    tokens: dict[str, str] = field(default_factory=dict)

    def create_token(self, role: str, name: str, *extra: str) -> subprocess.Popen[str]:
        """Start ``mission-ledger tokens create`` (collect it with :meth:`collect_token`)."""
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mission_ledger",
                "tokens",
                "create",
                "--role",
                role,
                "--name",
                name,
                *extra,
                *self.storage,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )

    @staticmethod
    def collect_token(process: subprocess.Popen[str]) -> str:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, f"tokens create failed: {err}"
        token = out.strip()
        assert TOKEN.fullmatch(token), f"unexpected token output {out!r}"
        return token

    def mint(self, specs: dict[str, Sequence[str]]) -> dict[str, str]:
        """Create principals, ``{key: [role, name, *options]}``, with ``tokens create`` run
        in this process against the server's store (the same command an operator runs, without
        paying a Python start-up per token; :meth:`create_token` runs it as a process)."""
        minted = {key: self.create_token_in_process(*spec) for key, spec in specs.items()}
        self.tokens.update(minted)
        return minted

    def create_token_in_process(self, role: str, name: str, *extra: str) -> str:
        from mission_ledger.cli import main  # the CLI, in-process

        out, err = io.StringIO(), io.StringIO()
        argv = ["tokens", "create", "--role", role, "--name", name, *extra, *self.storage]
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
        assert code == 0, f"tokens create failed: {err.getvalue()}"
        token = out.getvalue().strip()
        assert TOKEN.fullmatch(token), f"unexpected token output {token!r}"
        return token

    def stop(self, signum: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Signal the server and wait for it to exit; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            raise AssertionError(f"the server did not stop within {timeout} s") from None

    def logs(self) -> str:
        return self.stderr.read_text(errors="replace")


def start_server(
    tmp: Path, storage: Sequence[str], *args: str, command: Sequence[str] | None = None
) -> Server:
    """Start ``serve --port 0`` with ``storage`` (``--data DIR`` or ``--database-url URL``);
    ``command`` replaces ``python -m mission_ledger serve`` (e.g. ``scripts/serve``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    stdout, stderr = tmp / "server.out", tmp / "server.err"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        process = subprocess.Popen(
            [*(command or SERVE), "--port", "0", *storage, *args],
            stdout=out,
            stderr=err,
            env=_env(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    url = None
    while time.monotonic() < deadline:
        match = LISTENING.search(stdout.read_text(errors="replace"))
        if match:
            url = match.group(1)
            break
        if process.poll() is not None:
            break
        time.sleep(0.05)
    if url is None:
        process.kill()
        process.wait(timeout=10)
        raise AssertionError(
            f"the server did not start (exit {process.returncode}):\n"
            f"{stdout.read_text(errors='replace')}\n{stderr.read_text(errors='replace')}"
        )
    token = TOKEN.search(stderr.read_text(errors="replace"))
    return Server(
        url=url,
        storage=list(storage),
        process=process,
        stdout=stdout,
        stderr=stderr,
        operator_token=token.group(1) if token else None,
    )


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server on a fresh SQLite store for the module, with a principal of every kind."""
    tmp = tmp_path_factory.mktemp("server")
    server = start_server(tmp, ["--data", str(tmp / "var")], "--max-body-bytes", "65536")
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(
            {
                "approver": ["approver", "bob@example.com"],
                "harness": ["harness", "invoice-bot", "--agent", "agent:invoice-bot"],
                "other_harness": ["harness", "crm-bot", "--agent", "agent:crm-bot"],
                "auditor": ["auditor", "audit-team"],
                "receiver": [
                    "receiver",
                    "erp",
                    "--audience",
                    "https://erp.example.com",
                    "--resource",
                    "https://erp.example.com/invoices/",
                ],
                "foreign_receiver": [
                    "receiver",
                    "crm",
                    "--audience",
                    "https://crm.example.com",
                    "--resource",
                    "https://crm.example.com/",
                ],
            }
        )
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


SSF_ISSUER = "https://ledger.example.com/tenant-a"  # a path: the inserted well-known form


def ssf_principals() -> dict[str, list[str]]:
    """The principals the SSF tests use: Mission actors and receivers of several scopes."""
    return {
        "approver": ["approver", "bob@example.com"],
        "harness": ["harness", "invoice-bot", "--agent", "agent:invoice-bot"],
        "other_harness": ["harness", "crm-bot", "--agent", "agent:crm-bot"],
        "receiver": [
            "receiver",
            "erp",
            "--audience",
            "https://erp.example.com",
            "--resource",
            "https://erp.example.com/invoices/",
        ],
        "foreign_receiver": [
            "receiver",
            "crm",
            "--audience",
            "https://crm.example.com",
            "--resource",
            "https://crm.example.com/",
        ],
        "fresh_receiver": [
            "receiver",
            "erp-archive",
            "--audience",
            "https://archive.example.com",
            "--resource",
            "https://erp.example.com/invoices/",
        ],
    }


@pytest.fixture(scope="module")
def ssf_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server for the SSF tests: issuer with a path (receivers map it to loopback), short
    long polls (2 s) and re-offers (2 s), so idle polls and redelivery stay quick."""
    tmp = tmp_path_factory.mktemp("ssf-server")
    server = start_server(
        tmp,
        ["--data", str(tmp / "var")],
        "--issuer",
        SSF_ISSUER,
        "--poll-timeout",
        "2",
        "--poll-reoffer-after",
        "2",
        "--min-verification-interval",
        "30",
    )
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(ssf_principals())
        yield server
    finally:
        if server.process.poll() is None:
            server.stop()


def readme_block(heading: str) -> str:
    """The first bash block of the README section that starts with ``heading``."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(heading, 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.DOTALL)
    assert match, f"the README's {heading!r} section has no bash block"
    return match.group(1)


def run_readme_script(script: str, data: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a README block as written (bash -euo pipefail, from the checkout, on store ``data``)
    and assert it succeeded."""
    environ = {
        **os.environ,
        **env,
        "MISSION_LEDGER_DATA": str(data),
        "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    environ.pop("MISSION_LEDGER_DATABASE_URL", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, f"walk-through failed:\n{done.stdout}\n{done.stderr}"
    return done
