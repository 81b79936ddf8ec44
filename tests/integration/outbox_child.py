"""Run an SSF outbox worker until SIGTERM (or SIGKILL): the crash-safety test's child process.

    python tests/integration/outbox_child.py (--data DIR | --database-url URL) --keys DIR
        [--page-size N] [--sign-chunk N]

It imports only ``mission_ledger`` (never ``tests``), so it runs from any working directory. A
worker that finds the outbox claimed retries for up to a minute: on PostgreSQL the session of a
predecessor that was just killed may hold the advisory lock for a moment longer.
"""

from __future__ import annotations

import argparse
import signal
import threading
import time
from pathlib import Path

from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.projections.errors import AnotherWorkerActive
from mission_ledger.ssf.keys import FileKeyStore
from mission_ledger.ssf.outbox import OutboxWorker


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--keys", required=True)
    parser.add_argument("--page-size", type=int, default=7)
    parser.add_argument("--sign-chunk", type=int, default=3)  # kills land between chunks too
    args = parser.parse_args(argv)
    settings = Settings(data_dir=Path(args.data), database_url=args.database_url)
    ledger = open_ledger(settings)
    keys = FileKeyStore(Path(args.keys), rsa_bits=2048)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    deadline = time.monotonic() + 60
    try:
        while not stop.is_set():
            worker = OutboxWorker(
                ledger, settings, keys, page_size=args.page_size, sign_chunk=args.sign_chunk
            )
            try:
                worker.run_forever(stop)
            except AnotherWorkerActive:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
            finally:
                worker.close()
    finally:
        ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
