"""What the handlers share: typed app keys and the hop into the bounded executor.

``eventsourcing`` 9.5.6 is synchronous, so every ledger call (and every other call that may
touch the store) runs in one bounded :class:`~concurrent.futures.ThreadPoolExecutor`, never on
the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

from aiohttp import web

from ..checks import LiveAuthorizationView
from ..clock import Clock
from ..config import Settings
from ..errors import Unavailable
from ..ledger import MissionLedger
from ..principals import PrincipalRegistry
from ..projections import ProjectionStore, ProjectionWorker
from ..ssf.keys import KeyStore

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
AUTH_TIMEOUT = 2.0  # seconds: authentication may refresh the principal cache from the store
HEALTH_TIMEOUT = 2.0  # seconds: /healthz reads the ledger and projection positions


@dataclass(frozen=True)
class ServerOptions:
    """How the HTTP server runs (the storage itself is in :class:`Settings`)."""

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    check_max_lag: float | None = None  # seconds; None: the check view's own default
    embedded_worker: bool = True  # run the projection worker in this process
    executor_workers: int | None = None  # default: the store's connection budget
    shutdown_timeout: float = 30.0


LEDGER = web.AppKey("ledger", MissionLedger)
SETTINGS = web.AppKey("settings", Settings)
OPTIONS = web.AppKey("options", ServerOptions)
CLOCK = web.AppKey("clock", Clock)
EXECUTOR = web.AppKey("executor", ThreadPoolExecutor)
REGISTRY = web.AppKey("registry", PrincipalRegistry)
VIEW = web.AppKey("authorization_view", LiveAuthorizationView)
PROJECTIONS = web.AppKey("projection_store", ProjectionStore)
KEYS = web.AppKey("ssf_keys", KeyStore)
# The embedded projection worker; None with --no-worker (`mission-ledger worker` runs it).
WORKER: web.AppKey[ProjectionWorker | None] = web.AppKey("projection_worker")


async def run_sync(
    request: web.Request, fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs
) -> R:
    """Run a blocking call in the app's executor and await its result."""
    loop = asyncio.get_running_loop()
    executor = request.app[EXECUTOR]
    return await loop.run_in_executor(executor, functools.partial(fn, *args, **kwargs))


async def run_bounded(
    request: web.Request,
    timeout: float,
    what: str,
    fn: Callable[P, R],
    *args: P.args,
    **kwargs: P.kwargs,
) -> R:
    """Like :func:`run_sync`, but answer 503 after ``timeout`` seconds instead of waiting on a
    stalled store (the thread finishes on its own; its result is dropped)."""
    try:
        return await asyncio.wait_for(run_sync(request, fn, *args, **kwargs), timeout)
    except TimeoutError:
        raise Unavailable(
            f"{what} did not answer within {timeout:g} s (the event store is slow or "
            "unreachable); nothing was decided, retry"
        ) from None
