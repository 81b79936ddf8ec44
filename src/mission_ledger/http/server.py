"""Run the HTTP server: bootstrap the first operator, bind, serve, stop cleanly on a signal.

``serve`` prints ``listening on http://HOST:PORT`` (the bound port, also for ``--port 0``) on
stdout once connections are accepted. SIGTERM and SIGINT stop it gracefully: the listening
socket closes, in-flight requests finish (up to ``shutdown_timeout``), then the app's cleanup
stops the projection worker and the live view and shuts the executor down. Logs are JSON lines
on stderr.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from ..config import Settings
from ..errors import Unavailable
from ..gc_tuning import settle_after_startup
from ..ledger import MissionLedger
from ..principals import PrincipalRegistry
from .app import create_app
from .state import ServerOptions

log = logging.getLogger("mission_ledger.http")

_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("mission_ledger")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    aiohttp_log = logging.getLogger("aiohttp")
    aiohttp_log.handlers[:] = [handler]
    aiohttp_log.setLevel(logging.WARNING)
    aiohttp_log.propagate = False


def bootstrap_operator(ledger: MissionLedger) -> None:
    """On an empty store, create the first operator and print its token once (stderr)."""
    token = PrincipalRegistry(ledger).bootstrap_operator()
    if token is None:
        return
    print(
        "\n".join(
            [
                "=" * 78,
                "No principal existed, so a bootstrap operator was created. Its bearer token:",
                "",
                f"    {token}",
                "",
                "Store it now; only its hash is kept and it is never shown again. Use it as",
                "'Authorization: Bearer <token>', and mint more tokens with",
                "`mission-ledger tokens create --role ROLE --name NAME`.",
                "=" * 78,
            ]
        ),
        file=sys.stderr,
        flush=True,
    )


async def run_app(app: web.Application, options: ServerOptions) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, then shut down gracefully."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=options.shutdown_timeout,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.host, options.port)
        try:
            await site.start()
        except OSError as error:
            raise Unavailable(
                f"cannot listen on {options.host}:{options.port}: {error.strerror or error}; "
                "choose another --host/--port (--port 0 picks a free one)"
            ) from None
        settle_after_startup()  # workers, view and routes are built: freeze them (decision 48)
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        print(f"listening on http://{shown}:{port}", flush=True)
        log.info("listening", extra={"host": host, "port": port})
        await stop.wait()
        log.info("stopping: finishing in-flight requests")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await runner.cleanup()
    log.info("stopped")


def serve(
    ledger: MissionLedger,
    settings: Settings,
    options: ServerOptions,
    *,
    log_level: str = "info",
) -> None:
    """Run the server on an open ledger (the caller closes it after this returns)."""
    configure_logging(log_level)
    bootstrap_operator(ledger)
    app = create_app(settings, options=options, ledger=ledger)
    asyncio.run(run_app(app, options))
