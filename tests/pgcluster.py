"""A PostgreSQL cluster of the test's own, which the test may stop and start (a real restart).

The shared test server cannot be restarted under the other tests, so a test that needs a
PostgreSQL restart starts a throwaway cluster from the machine's binaries (the newest
``/usr/lib/postgresql/*/bin``, else ``initdb`` on ``PATH``, as ``scripts/test`` finds them) on
a free port, in a temporary directory, with trust authentication; as root it runs the server
as the ``postgres`` system user (``initdb`` refuses root). Without binaries the test is
skipped, or fails when ``MISSION_LEDGER_REQUIRE_POSTGRES`` is set (CI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _bindir() -> Path | None:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda d: [int(p) if p.isdigit() else 0 for p in Path(d).parent.name.split(".")],
        reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(str(Path(initdb).parent))
    for directory in candidates:
        if (Path(directory) / "initdb").is_file() and (Path(directory) / "pg_ctl").is_file():
            return Path(directory)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ThrowawayCluster:
    """``start()`` → ``url`` answers; ``restart()`` stops it (fast shutdown: every session is
    cut) and starts it again on the same port; ``close()`` stops it and deletes its files."""

    def __init__(self) -> None:
        bindir = _bindir()
        if bindir is None:
            message = "no PostgreSQL binaries (initdb, pg_ctl) for a throwaway cluster"
            if os.environ.get("MISSION_LEDGER_REQUIRE_POSTGRES"):
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        self.bindir = bindir
        # Not under pytest's tmp_path: the server's user must be able to reach its directory.
        self.root = root = Path(tempfile.mkdtemp(prefix="mission-ledger-pg-restart-"))
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            self.prefix = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, *args],
            cwd=self.root,
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
        )

    def start(self) -> ThrowawayCluster:
        data = self.root / "data"
        if not data.exists():
            self._run(
                str(self.bindir / "initdb"),
                *("-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"),
            )
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(
            str(self.bindir / "pg_ctl"),
            *("-D", str(data), "-l", str(self.root / "server.log"), "-w", "-t", "60"),
            *("-o", options, "start"),
        )
        return self

    def stop(self) -> None:
        data = str(self.root / "data")
        self._run(str(self.bindir / "pg_ctl"), "-D", data, "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
