"""The composition root of the HTTP server: ``create_app(settings)`` builds everything.

Built here, at creation: the ledger (unless the caller passes one it owns), the bounded executor,
the principal registry, the live authorization view, the projection store and worker, the SSF
stream service, outbox store and outbox worker, and the long-poll hub. Started on app startup, in
order: the view (it loads its rows from the tracked ``authorization`` table — or from the log
when that table was never projected — and catches up to the ledger's head), the embedded
projection worker thread, the embedded SSF outbox worker thread (it signs and queues SETs and
tells the poll hub and the push deliverer which streams got new ones), then, with the embedded
workers only, the SSF push deliverer on the event loop (:mod:`..ssf.push`; its SSRF policy is
the stream service's too). On shutdown the poll hub answers every waiting long poll at once.
Stopped on cleanup in reverse: the push deliverer (in-flight pushes finish, bounded), workers,
view, stores, executor, and the ledger if this app opened it.

Middlewares, outermost first: metrics (counts, times and logs every request with its final
status), errors (every exception → problem+json; only bugs become 500).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any

from aiohttp import web

from ..bootstrap import open_ledger
from ..checks import LiveAuthorizationView, load_rows_from_views
from ..clock import Clock
from ..config import Settings
from ..domain.errors import NotFound
from ..errors import Unavailable
from ..ledger import MissionLedger
from ..principals import PrincipalRegistry, may_view_mission
from ..projections import ProjectionStore, ProjectionWorker
from ..ssf.keys import open_key_store
from ..ssf.outbox import OutboxWorker
from ..ssf.outbox_store import OutboxStore
from ..ssf.push import PushDeliverer
from ..ssf.streams import StreamService, resolving_endpoint_check
from . import routes_missions, routes_proposals, routes_ssf
from .auth import CHECK_ROLES, require
from .check_routes import CHECK_OPENAPI_PATHS, add_check_routes
from .metrics import CONTENT_TYPE, METRICS, HttpMetrics, metrics_middleware
from .openapi import TEXT_PLAIN, build_document
from .problems import error_middleware, not_found
from .rfc8936_poll import POLL_HUB, PollHub
from .spec import Route, json_response
from .state import (
    CLOCK,
    EXECUTOR,
    HEALTH_TIMEOUT,
    KEYS,
    LEDGER,
    OPTIONS,
    OUTBOX,
    OUTBOX_WORKER,
    PROJECTIONS,
    REGISTRY,
    SETTINGS,
    STREAMS,
    VIEW,
    WORKER,
    ServerOptions,
    run_bounded,
    run_sync,
)

log = logging.getLogger("mission_ledger.http")

VIEW_ALL_ROLES = ("operator", "approver", "auditor")
OPENAPI = web.AppKey("openapi_document", dict)
RUNTIME = web.AppKey("runtime", dict)  # mutable holder: worker thread and stop event
# The SSF push deliverer (RFC 8935; on the event loop); None with --no-worker.
PUSH_DELIVERER: web.AppKey[PushDeliverer | None] = web.AppKey("ssf_push_deliverer")


def _version() -> str:
    try:
        return package_version("mission-ledger")
    except PackageNotFoundError:  # running from a source tree without an install
        return "0.0.0"


# -- operations routes ----------------------------------------------------------------------------


def _health(app: web.Application) -> tuple[int, dict[str, Any]]:
    ledger = app[LEDGER]
    view = app[VIEW]
    store = app[PROJECTIONS]
    runtime = app[RUNTIME]
    problems: list[str] = []
    try:
        ledger_position = ledger.recorder.max_notification_id() or 0
    except Exception as error:  # the store is down: report, do not raise
        log.warning("healthz: cannot read the ledger position: %s", error)
        ledger_position = -1
        problems.append("event store unreachable")
    view_healthy = view.healthy()
    if not view_healthy:
        problems.append("authorization view is not current")
    thread = runtime.get("worker_thread")
    worker_alive: bool | None = None
    if app[WORKER] is not None:
        worker_alive = thread is not None and thread.is_alive()
        if not worker_alive:
            problems.append("projection worker is not running")
    outbox_thread = runtime.get("outbox_thread")
    outbox_alive: bool | None = None
    if app[OUTBOX_WORKER] is not None:
        outbox_alive = outbox_thread is not None and outbox_thread.is_alive()
        if not outbox_alive:
            problems.append("SSF outbox worker is not running")
    projection_lag: int | None = None
    if ledger_position >= 0:
        try:
            projection_lag = max(ledger_position - int(store.position()), 0)
        except Exception as error:
            log.warning("healthz: cannot read the projection position: %s", error)
            problems.append("projection store unreachable")
    outbox_lag: int | None = None
    if ledger_position >= 0:
        try:
            outbox_lag = max(ledger_position - app[OUTBOX].position(), 0)
        except Exception as error:
            log.warning("healthz: cannot read the SSF outbox position: %s", error)
            problems.append("SSF outbox store unreachable")
    body: dict[str, Any] = {
        "status": "ok" if not problems else "unavailable",
        "ledger_position": ledger_position,
        "view_position": view.position,
        "view_healthy": view_healthy,
        "worker_alive": worker_alive,
        "projection_lag": projection_lag,
        "outbox_worker_alive": outbox_alive,
        "outbox_lag": outbox_lag,
        "ssf_polls_waiting": app[POLL_HUB].waiting(),
    }
    if problems:
        body["problems"] = problems
    return (200 if not problems else 503), body


async def healthz(request: web.Request) -> web.StreamResponse:
    try:
        status, body = await run_bounded(
            request, HEALTH_TIMEOUT, "the health probe", _health, request.app
        )
    except Unavailable as error:
        status, body = (
            503,
            {
                "status": "unavailable",
                "ledger_position": -1,
                "view_position": request.app[VIEW].position,
                "view_healthy": request.app[VIEW].healthy(),
                "projection_lag": None,
                "problems": [error.description],
            },
        )
    return json_response(body, status=status, headers={"Cache-Control": "no-store"})


async def openapi_json(request: web.Request) -> web.StreamResponse:
    return json_response(request.app[OPENAPI])


async def jwks(request: web.Request) -> web.StreamResponse:
    """The public signing keys (active and retiring): the ``jwks_uri`` of this Authority."""
    document = await run_sync(request, request.app[KEYS].jwks)
    return json_response(document, headers={"Cache-Control": "public, max-age=300"})


def _gauges(app: web.Application) -> list[tuple[str, str, float]]:
    _, health = _health(app)
    gauges = [
        (
            "mission_ledger_ledger_position",
            "The newest notification id in the event store.",
            float(health["ledger_position"]),
        ),
        (
            "mission_ledger_authorization_view_position",
            "The ledger position the live authorization view is current up to.",
            float(health["view_position"]),
        ),
        (
            "mission_ledger_authorization_view_healthy",
            "1 when the live authorization view is current (checks are served), else 0.",
            1.0 if health["view_healthy"] else 0.0,
        ),
    ]
    lag = health["projection_lag"]
    if lag is None:  # no projection store: the view is what lags
        lag = max(health["ledger_position"] - health["view_position"], 0)
    gauges.append(
        (
            "mission_ledger_projection_lag_events",
            "Ledger events not yet applied to the mission index projection.",
            float(lag),
        )
    )
    if health["outbox_lag"] is not None:
        gauges.append(
            (
                "mission_ledger_ssf_outbox_lag_events",
                "Ledger events the SSF outbox has not yet turned into SETs.",
                float(health["outbox_lag"]),
            )
        )
    gauges.append(
        (
            "mission_ledger_ssf_polls_waiting",
            "SSF long polls (RFC 8936) waiting for a SET now.",
            float(health["ssf_polls_waiting"]),
        )
    )
    try:
        queued, dead = app[OUTBOX].push.totals()
    except Exception as error:  # the store is down: /healthz says so; leave these out
        log.warning("metrics: cannot read the SSF push queue: %s", error)
    else:
        gauges.append(
            (
                "mission_ledger_ssf_push_queued_sets",
                "SETs queued for SSF push streams (RFC 8935), not yet delivered.",
                float(queued),
            )
        )
        gauges.append(
            (
                "mission_ledger_ssf_push_dead_letters",
                "SSF push SETs dead-lettered (`mission-ledger streams redeliver` sends them).",
                float(dead),
            )
        )
    return gauges


async def metrics(request: web.Request) -> web.StreamResponse:
    await require(request, "operator", "approver", "harness", "auditor", "receiver")
    gauges = await run_bounded(request, HEALTH_TIMEOUT, "the metrics probe", _gauges, request.app)
    text = request.app[METRICS].render(gauges)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


OPERATIONS_ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/healthz",
        healthz,
        "health",
        "Liveness and freshness: 503 when the view is not current or the worker is down",
        "operations",
        {200: "Health", 503: "Health"},
        public=True,
        errors=(),
    ),
    Route(
        "GET",
        "/openapi.json",
        openapi_json,
        "openapi",
        "This OpenAPI 3.1 document",
        "operations",
        {200: "OpenApiDocument"},
        public=True,
        errors=(),
    ),
    Route(
        "GET",
        "/jwks.json",
        jwks,
        "jwks",
        "The public keys that sign Security Event Tokens (RS256 and ES256), by kid",
        "operations",
        {200: "JwkSet"},
        public=True,
        errors=(),
    ),
    Route(
        "GET",
        "/metrics",
        metrics,
        "metrics",
        "Prometheus metrics (text exposition format)",
        "operations",
        {200: TEXT_PLAIN},
        roles=("operator", "approver", "harness", "auditor", "receiver"),
        errors=(401,),
    ),
)

ROUTES: tuple[Route, ...] = (
    *OPERATIONS_ROUTES,
    *routes_proposals.ROUTES,
    *routes_missions.ROUTES,
)


# -- check authorization --------------------------------------------------------------------------


def _mission_facts(ledger: MissionLedger, mission_id: str) -> dict[str, Any]:
    try:
        mission = ledger.get_mission(mission_id)
    except NotFound:
        raise not_found("Mission") from None
    return {"agent": mission.agent, "authority_set": mission.authority_set}


async def authorize_check(request: web.Request, mission_id: str | None) -> None:
    """Who may check a Mission: operator/approver/auditor any; a harness its agent's; a
    receiver those in its scope. Decided from the live view's row (memory), or from the ledger
    when the view has not seen the Mission yet; not visible → the same 404 as unknown."""
    principal = await require(request, *CHECK_ROLES)
    if mission_id is None or principal.role in VIEW_ALL_ROLES:
        return
    row = request.app[VIEW].row(mission_id)
    if row is not None:
        facts: dict[str, Any] = {"agent": row.agent, "authority_set": row.authority_json}
    else:
        facts = await run_sync(request, _mission_facts, request.app[LEDGER], mission_id)
    if not may_view_mission(principal, facts):
        raise not_found("Mission")


# -- lifecycle ------------------------------------------------------------------------------------


def _start(app: web.Application) -> None:
    app[KEYS].ensure_keys()  # one active RS256 and ES256 key from the first start on
    app[VIEW].start()
    worker = app[WORKER]
    if worker is not None:
        _spawn(app, "worker", "projection worker", worker.run_forever)
    outbox_worker = app[OUTBOX_WORKER]
    if outbox_worker is not None:
        _spawn(app, "outbox", "SSF outbox worker", outbox_worker.run_forever)


def _spawn(
    app: web.Application, key: str, what: str, run_forever: Callable[[threading.Event], None]
) -> None:
    """Run a worker's ``run_forever(stop)`` in a daemon thread; ``RUNTIME`` keeps
    ``<key>_stop`` and ``<key>_thread``."""
    stop = threading.Event()

    def run() -> None:
        try:
            run_forever(stop)
        except Exception:
            log.exception("the %s stopped on an error", what)

    name = f"mission-ledger-{what.replace(' ', '-').lower()}"
    thread = threading.Thread(target=run, name=name, daemon=True)
    app[RUNTIME].update({f"{key}_stop": stop, f"{key}_thread": thread})
    thread.start()


def _stop(app: web.Application, owned_ledger: bool) -> None:
    runtime = app[RUNTIME]
    for key in ("outbox", "worker"):  # signal both, then wait for both
        stop = runtime.get(f"{key}_stop")
        if stop is not None:
            stop.set()
    for key in ("outbox", "worker"):
        thread = runtime.get(f"{key}_thread")
        if thread is not None:
            thread.join(timeout=10)
    for worker in (app[OUTBOX_WORKER], app[WORKER]):
        if worker is not None:
            worker.close()
    app[VIEW].stop()
    app[OUTBOX].close()
    app[PROJECTIONS].close()
    app[KEYS].close()
    if owned_ledger:
        app[LEDGER].close()


def _lifecycle(owned_ledger: bool) -> Any:
    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        executor = app[EXECUTOR]
        loop = asyncio.get_running_loop()
        app[POLL_HUB].bind(loop)
        await loop.run_in_executor(executor, _start, app)
        deliverer = app[PUSH_DELIVERER]
        if deliverer is not None:
            await deliverer.start()
        try:
            yield
        finally:
            if deliverer is not None:
                await deliverer.stop()  # in-flight pushes finish (bounded), outcomes recorded
            await loop.run_in_executor(executor, _stop, app, owned_ledger)
            executor.shutdown(wait=True)

    return lifecycle


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    options: ServerOptions | None = None,
    ledger: MissionLedger | None = None,
) -> web.Application:
    """Build the Authority's aiohttp application from one Settings object.

    ``ledger``: an already open ledger the caller owns (and closes); by default the app opens
    its own from ``settings`` and closes it on cleanup.
    """
    options = options or ServerOptions()
    owned = ledger is None
    ledger = ledger if ledger is not None else open_ledger(settings, clock=clock)
    try:
        app = _build(settings, ledger, options, owned)
    except BaseException:
        if owned:
            ledger.close()
        raise
    return app


def _build(
    settings: Settings, ledger: MissionLedger, options: ServerOptions, owned: bool
) -> web.Application:
    app = web.Application(
        client_max_size=options.max_body_bytes,
        middlewares=[metrics_middleware, error_middleware],
    )
    workers = options.executor_workers or (
        2 * settings.postgres_pool_size if settings.backend() == "postgres" else 8
    )
    view_options: dict[str, Any] = {}
    if options.check_max_lag is not None:
        view_options["max_lag_seconds"] = options.check_max_lag
    store = ProjectionStore.open(settings)
    try:
        worker = ProjectionWorker(ledger, settings) if options.embedded_worker else None
    except BaseException:
        store.close()
        raise
    try:
        outbox = OutboxStore.open(settings)
    except BaseException:
        if worker is not None:
            worker.close()
        store.close()
        raise
    app[SETTINGS] = settings
    app[OPTIONS] = options
    app[LEDGER] = ledger
    app[CLOCK] = ledger.clock
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ml-http")
    app[REGISTRY] = PrincipalRegistry(ledger)
    if settings.backend() != "memory":  # a memory ledger is new each run; its views file is not
        view_options["loader"] = functools.partial(
            load_rows_from_views, store.authorization_rows, ledger
        )
    app[VIEW] = LiveAuthorizationView(ledger, **view_options)
    app[PROJECTIONS] = store
    app[KEYS] = open_key_store(settings)
    app[WORKER] = worker
    app[OUTBOX] = outbox
    app[STREAMS] = StreamService(
        ledger,
        secret_sink=outbox.put_push_secret,
        min_verification_interval=options.min_verification_interval,
        endpoint_check=resolving_endpoint_check(options.push.policy),
    )
    app[POLL_HUB] = PollHub()
    try:
        outbox_worker = (
            OutboxWorker(ledger, settings, app[KEYS]) if options.embedded_worker else None
        )
    except BaseException:
        if worker is not None:
            worker.close()
        outbox.close()
        store.close()
        raise
    # Every server runs a deliverer: one per store holds the delivery lock, the others stand by
    # and take over (so `serve --no-worker` beside `mission-ledger worker` pushes too; it sees
    # the worker's SETs through its periodic scan).
    deliverer = PushDeliverer(
        settings, options.push, user_agent=f"mission-ledger/{_version()} (SSF transmitter)"
    )
    if outbox_worker is not None:
        outbox_worker.add_listener(app[POLL_HUB].notify_threadsafe)
        outbox_worker.add_listener(deliverer.notify_threadsafe, offered=True)
        outbox_worker.add_signature_listener(deliverer.offer_threadsafe)
    app[OUTBOX_WORKER] = outbox_worker
    app[PUSH_DELIVERER] = deliverer
    app[RUNTIME] = {}
    app[METRICS] = HttpMetrics()
    routes = (*ROUTES, *routes_ssf.routes(settings.issuer))
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler, name=route.operation_id)
    add_check_routes(app, authorize=authorize_check)
    app[OPENAPI] = build_document(
        routes,
        issuer=settings.issuer,
        version=_version(),
        extra_paths=CHECK_OPENAPI_PATHS,
        extra_schemas=routes_ssf.SCHEMAS,
    )
    app.on_shutdown.append(_close_polls)
    app.cleanup_ctx.append(_lifecycle(owned))
    return app


async def _close_polls(app: web.Application) -> None:
    """Shutdown begins: waiting long polls answer now instead of holding the drain."""
    app[POLL_HUB].close()


__all__ = ["ROUTES", "ServerOptions", "create_app"]
