"""``mission-ledger serve``: run the Authority's HTTP server on the configured store.

The storage options are the global ones (``--data DIR`` | ``--database-url URL``, ``--issuer``).
The server prints ``listening on http://HOST:PORT`` on stdout once it accepts connections (with
``--port 0`` the port the system chose), and stops cleanly on SIGTERM or SIGINT: it stops
accepting, answers waiting SSF long polls, lets in-flight requests finish, stops the projection
and SSF outbox workers and the live view, and the ledger is closed. On first start against an
empty store it creates the bootstrap operator and prints its token once on stderr. The SSF
options (``--poll-timeout``, ``--poll-reoffer-after``, ``--min-verification-interval``, and for
push delivery ``--allow-insecure-push``, ``--allow-private-push-targets`` and ``--push-*``) are
described in ``docs/ssf-receivers.md``.
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


def _whole_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
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
        poll_timeout=args.poll_timeout,
        poll_reoffer_after=args.poll_reoffer_after,
        min_verification_interval=args.min_verification_interval,
        push=_push_options(args),
    )
    serve(ledger, s, options, log_level=args.log_level)
    return Output(None, "")


def add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``serve`` on the top-level subparsers (``sub`` is argparse's private action)."""
    summary = (
        "Run the Authority's HTTP API (proposals, Missions, checks, the SSF transmitter, "
        "OpenAPI, health, metrics) with the projection and SSF outbox workers and the live "
        "authorization view in the same process."
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
        help="do not run the projection and SSF outbox workers here (PostgreSQL deployments "
        f"that run `{PROG} worker` in its own process)",
    )
    p.add_argument(
        "--poll-timeout",
        type=_seconds,  # the server refuses more than 25 (ServerOptions)
        default=10.0,
        metavar="SECONDS",
        help="how long an SSF long poll (RFC 8936) waits for a SET before answering empty "
        "(default 10, at most 25)",
    )
    p.add_argument(
        "--poll-reoffer-after",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="offer an unacknowledged polled SET again after this long (default 30)",
    )
    p.add_argument(
        "--min-verification-interval",
        type=_whole_seconds,
        default=30,
        metavar="SECONDS",
        help="an SSF stream's min_verification_interval: sooner verification requests get 429 "
        "(default 30; applies to streams created from now on)",
    )
    _add_push_arguments(p)
    p.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="log level of the JSON logs on stderr (default info: one line per request)",
    )
    p.set_defaults(handler=cmd_serve)


# -- SSF push delivery (RFC 8935; mission_ledger.ssf.push) ----------------------------------------


def _schedule(text: str) -> Any:
    from .ssf.push import RetrySchedule  # imports aiohttp: only when the flag is given

    try:
        return RetrySchedule.parse(text)
    except InvalidInput as error:
        raise argparse.ArgumentTypeError(error.description) from None


def _push_options(args: argparse.Namespace) -> Any:
    from .ssf.push import PushOptions
    from .ssf.ssrf import PushTargetPolicy

    given: dict[str, Any] = {
        "concurrency": args.push_concurrency,
        "connect_timeout": args.push_connect_timeout,
        "total_timeout": args.push_timeout,
        "fast": args.push_retry,
        "slow": args.push_slow_retry,
    }
    return PushOptions(
        policy=PushTargetPolicy(
            allow_insecure=args.allow_insecure_push,
            allow_private=args.allow_private_push_targets,
        ),
        **{name: value for name, value in given.items() if value is not None},
    )


def _add_push_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-insecure-push",
        action="store_true",
        help="accept http:// push endpoint URLs (tests and demos only; never in production)",
    )
    p.add_argument(
        "--allow-private-push-targets",
        action="store_true",
        help="let push endpoints be loopback, private or link-local addresses (tests and demos "
        "on one machine only; the SSRF guard refuses them by default)",
    )
    p.add_argument(
        "--push-concurrency",
        type=positive_int,
        metavar="N",
        help="SSF push requests in flight across all streams (default 64)",
    )
    p.add_argument(
        "--push-connect-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="seconds for one TCP connect to a push endpoint (default 2)",
    )
    p.add_argument(
        "--push-timeout",
        type=_seconds,
        metavar="SECONDS",
        help="seconds for a whole push request, answer included (default 10)",
    )
    p.add_argument(
        "--push-retry",
        type=_schedule,
        metavar="BASE,CAP,ATTEMPTS",
        help="retries of network errors, timeouts, 5xx, 429: exponential backoff with full "
        "jitter from BASE to CAP seconds, dead letter after ATTEMPTS (default 0.5,60,20)",
    )
    p.add_argument(
        "--push-slow-retry",
        type=_schedule,
        metavar="BASE,CAP,ATTEMPTS",
        help="retries of invalid_key, authentication_failed, access_denied, 401/403, redirects "
        "and refused targets (default 30,900,12)",
    )
