"""``python -m mission_ledger``: the same command line as the ``mission-ledger`` script."""

from __future__ import annotations

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
