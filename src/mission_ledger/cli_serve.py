"""``mission-ledger serve``: run the Authority's HTTP server on the configured store.

The storage options are the global ones (``--data DIR`` | ``--database-url URL``, ``--issuer``).
The server prints ``listening on http://HOST:PORT`` on stdout once it accepts connections (with
``--port 0`` the port the system chose), and stops cleanly on SIGTERM or SIGINT: it stops
accepting, lets in-flight requests finish, stops the projection worker and the live view, and
the ledger is closed. On first start against an empty store it creates the bootstrap operator and
prints its token once on stderr.
"""

from __future__ import annotations

import argparse
from typing import Any

from .cli import PROG, Output, add_command, positive_int
from .config import Settings
from .domain.errors import InvalidInput
from .ledger import MissionLedger

SERVE_EPILOG = f"""\
examples:
  {PROG} serve                                   # SQLite in ./var, http://127.0.0.1:8080
  {PROG} serve --port 0 --data /tmp/ml           # any free port (printed on stdout)
  {PROG} serve --database-url postgresql://postgres@127.0.0.1/ml --no-worker

On first start against an empty store the bootstrap operator's token is printed once on
stderr: store it, only its hash is kept. Mint more with `{PROG} tokens create`."""


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0–65535 (0: any free port), got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def cmd_serve(ledger: MissionLedger, args: argparse.Namespace, s: Settings) -> Output:
    from .http.server import serve  # aiohttp is only imported by the command that needs it
    from .http.state import ServerOptions

    if args.host.strip() == "":
        raise InvalidInput("--host must name an interface, e.g. 127.0.0.1", field="host")
    options = ServerOptions(
        host=args.host,
        port=args.port,
        max_body_bytes=args.max_body_bytes,
        check_max_lag=args.check_max_lag,
        embedded_worker=not args.no_worker,
    )
    serve(ledger, s, options, log_level=args.log_level)
    return Output(None, "")


def add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``serve`` on the top-level subparsers (``sub`` is argparse's private action)."""
    summary = (
        "Run the Authority's HTTP API (proposals, Missions, checks, OpenAPI, health, metrics) "
        "with the projection worker and the live authorization view in the same process."
    )
    p: argparse.ArgumentParser = add_command(sub, "serve", summary, SERVE_EPILOG, common)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument(
        "--port", type=_port, default=8080, help="TCP port (default 8080; 0: any free port)"
    )
    p.add_argument(
        "--max-body-bytes",
        type=positive_int,
        default=1024 * 1024,
        metavar="N",
        help="largest request body accepted, larger ones get 413 (default 1048576)",
    )
    p.add_argument(
        "--check-max-lag",
        type=_seconds,
        metavar="SECONDS",
        help="checks fail closed when the authorization view lags more than this",
    )
    p.add_argument(
        "--no-worker",
        action="store_true",
        help="do not run the projection worker here (PostgreSQL deployments that run "
        f"`{PROG} worker` in its own process)",
    )
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level of the JSON logs on stderr (default info: one line per request)",
    )
    p.set_defaults(handler=cmd_serve)
