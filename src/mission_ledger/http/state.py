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
from dataclasses import dataclass, field
from typing import ParamSpec, TypeVar

from aiohttp import web

from ..checks import LiveAuthorizationView
from ..clock import Clock
from ..config import Settings
from ..domain.errors import InvalidInput
from ..errors import Unavailable
from ..ledger import MissionLedger
from ..principals import PrincipalRegistry
from ..projections import ProjectionStore, ProjectionWorker
from ..ssf.keys import KeyStore
from ..ssf.outbox import OutboxWorker
from ..ssf.outbox_store import OutboxStore
from ..ssf.push import PushOptions
from ..ssf.streams import DEFAULT_MIN_VERIFICATION_INTERVAL, StreamService

P = ParamSpec("P")
R = TypeVar("R")

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
AUTH_TIMEOUT = 2.0  # seconds: authentication may refresh the principal cache from the store
HEALTH_TIMEOUT = 2.0  # seconds: /healthz reads the ledger and projection positions
DEFAULT_POLL_TIMEOUT = 10.0  # seconds an SSF long poll waits for a SET (RFC 8936 §2.3)
MAX_POLL_TIMEOUT = 25.0  # well under the ~30 s after which receivers' HTTP clients give up
DEFAULT_POLL_REOFFER_AFTER = 30.0  # seconds before an unacknowledged SET is offered again
POLL_RECHECK_INTERVAL = 0.25  # seconds between a long poll's looks at the outbox


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
    # SSF (RFC 8936 poll delivery and the management API)
    poll_timeout: float = DEFAULT_POLL_TIMEOUT  # long-poll bound, at most MAX_POLL_TIMEOUT
    poll_reoffer_after: float = DEFAULT_POLL_REOFFER_AFTER
    poll_recheck_interval: float = POLL_RECHECK_INTERVAL  # also sees a separate worker's SETs
    min_verification_interval: int = DEFAULT_MIN_VERIFICATION_INTERVAL  # seconds
    # SSF push delivery (RFC 8935): target policy (SSRF flags), timeouts, retry schedules
    push: PushOptions = field(default_factory=PushOptions)

    def __post_init__(self) -> None:
        if not 0 < self.poll_timeout <= MAX_POLL_TIMEOUT:
            raise InvalidInput(
                f"the long-poll timeout must be more than 0 and at most {MAX_POLL_TIMEOUT:g} "
                f"seconds (receivers' HTTP clients give up near 30 s); got {self.poll_timeout:g}",
                field="poll_timeout",
            )
        if not self.poll_reoffer_after > 0:
            raise InvalidInput(
                "the re-offer interval of unacknowledged SETs must be more than 0 seconds",
                field="poll_reoffer_after",
            )
        if not self.poll_recheck_interval > 0:
            raise InvalidInput(
                "the long poll's recheck interval must be more than 0 seconds",
                field="poll_recheck_interval",
            )
        if self.min_verification_interval < 0:
            raise InvalidInput(
                "min_verification_interval must not be negative",
                field="min_verification_interval",
            )


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
STREAMS = web.AppKey("ssf_streams", StreamService)  # SSF stream management
OUTBOX = web.AppKey("ssf_outbox", OutboxStore)  # the queue of signed SETs (poll reads it)
# The embedded SSF outbox worker (signs and queues SETs); None with --no-worker.
OUTBOX_WORKER: web.AppKey[OutboxWorker | None] = web.AppKey("ssf_outbox_worker")


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
