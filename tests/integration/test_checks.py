"""The live authorization view and the check routes on the durable stores (SQLite, PostgreSQL).

A second :class:`MissionLedger` on the same store writes, as another process would; the view,
tailing its own ledger instance, must reflect the write within a bounded wait. The aiohttp routes
run on a real :class:`~aiohttp.test_utils.TestServer`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from mission_ledger.bootstrap import open_ledger
from mission_ledger.checks import (
    LiveAuthorizationView,
    check_at,
    load_rows_from_log,
    load_rows_from_views,
)
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.http import check_routes
from mission_ledger.http.check_routes import add_check_routes
from mission_ledger.http.problems import error_middleware
from mission_ledger.http.state import EXECUTOR, LEDGER, OPTIONS, VIEW, ServerOptions
from mission_ledger.ledger import MissionLedger
from mission_ledger.projections import ProjectionStore, ProjectionWorker
from tests.integration.contract_fixtures import (
    AGENT,
    ERP,
    HOUR,
    OPERATOR,
    T0,
    open_mission,
    position,
)
from tests.pgtarget import PgTarget

INVOICE = f"{ERP}/invoices/7"
ISSUER = "https://authority.example.com"
Authorize = Callable[[web.Request, str | None], Awaitable[None]]


@dataclass
class Store:
    """Two ledgers on one store: ``writer`` commands, ``reader`` feeds the view."""

    writer: MissionLedger
    reader: MissionLedger
    clock: FixedClock
    view: LiveAuthorizationView
    settings: Settings
    opened: list[MissionLedger] = field(default_factory=list)


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data", issuer=ISSUER)
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(database_url=target.ledger_url, issuer=ISSUER)
    clock = FixedClock(T0)
    writer = open_ledger(settings, clock=clock)
    reader = open_ledger(settings, clock=clock)
    view = LiveAuthorizationView(reader)
    view.start()
    try:
        yield Store(writer, reader, clock, view, settings)
    finally:
        view.stop()
        reader.close()
        writer.close()


def test_a_revoke_by_another_ledger_reaches_the_view_promptly(store: Store) -> None:
    mid = open_mission(store.writer)
    assert store.view.wait_for(position(store.writer), timeout=5.0)
    now = store.clock.now()
    assert store.view.check(mid, action="invoices.read", resource=INVOICE, now=now).allowed
    revoked = store.writer.revoke(mid, actor=OPERATOR)
    assert revoked.position is not None
    started = time.monotonic()
    assert store.view.wait_for(revoked.position, timeout=5.0)
    assert time.monotonic() - started < 5.0
    result = store.view.check(mid, action="invoices.read", resource=INVOICE, now=now)
    assert (result.decision, result.reason, result.state) == ("deny", "mission_inactive", "revoked")
    assert result.ledger_position >= revoked.position
    assert store.view.healthy()


def test_a_view_started_on_existing_history_loads_it(store: Store) -> None:
    kept = open_mission(store.writer)
    ended = open_mission(store.writer)
    store.writer.suspend(ended, actor=OPERATOR)
    late = LiveAuthorizationView(store.reader)
    late.start()
    try:
        assert late.position == position(store.writer)
        now = store.clock.now()
        assert late.check(kept, action="invoices.read", resource=INVOICE, now=now).allowed
        assert late.check(ended, action="invoices.read", resource=INVOICE, now=now).reason == (
            "mission_inactive"
        )
    finally:
        late.stop()


def test_the_authorization_table_gives_the_view_the_rows_the_log_gives(store: Store) -> None:
    """On each durable backend (stored timestamps, canonical JSON text): the projection's rows
    converted by mission_row_from_view equal the rows folded from the log."""
    root = open_mission(store.writer)
    child = store.writer.delegate(
        root,
        agent="agent-2",
        authority_set=[
            {
                "type": "mission_resource_access",
                "resource": f"{ERP}/*",
                "actions": ["invoices.read"],
            }
        ],
        actor=AGENT,
    ).document["mission_id"]
    suspended = open_mission(store.writer)
    store.writer.suspend(
        suspended, actor=OPERATOR, until=format_rfc3339(T0 + HOUR), on_expiry="revoke"
    )
    store.writer.narrow(
        root,
        authority_set=[
            {
                "type": "mission_resource_access",
                "resource": f"{ERP}/*",
                "actions": ["invoices.read"],
            }
        ],
        actor=OPERATOR,
    )
    with ProjectionWorker(store.writer, store.settings) as worker:
        worker.run_once()
    with ProjectionStore.open(store.settings) as views:
        rows, at = load_rows_from_views(views.authorization_rows, store.reader)
        assert at == position(store.writer)
        assert (rows, at) == load_rows_from_log(store.reader)
        assert set(rows) == {root, child, suspended}
        assert rows[suspended].suspend_until == T0 + HOUR


# ---------------------------------------------------------------------------------------------
# Routes
# ---------------------------------------------------------------------------------------------


async def allow_all(request: web.Request, mission_id: str | None) -> None:
    return None


def deny_these(hidden: set[str]) -> Authorize:
    async def authorize(request: web.Request, mission_id: str | None) -> None:
        if mission_id in hidden:
            raise web.HTTPNotFound()

    return authorize


async def deny_all(request: web.Request, mission_id: str | None) -> None:
    raise web.HTTPNotFound()


def make_app(store: Store, authorize: Authorize) -> web.Application:
    """The check routes alone, on what the server gives them: its state keys, its bounded
    executor and body limit, and its problem+json middleware."""
    app = web.Application(middlewares=[error_middleware])
    app[VIEW] = store.view
    app[LEDGER] = store.reader
    app[OPTIONS] = ServerOptions(max_body_bytes=4096)
    app[EXECUTOR] = ThreadPoolExecutor(max_workers=2, thread_name_prefix="test-checks")

    async def shutdown(app: web.Application) -> None:
        app[EXECUTOR].shutdown(wait=True)

    app.on_cleanup.append(shutdown)
    add_check_routes(app, authorize=authorize)
    return app


def run(
    store: Store, authorize: Authorize, scenario: Callable[[TestClient[Any, Any]], Any]
) -> None:
    async def main() -> None:
        async with TestClient(TestServer(make_app(store, authorize))) as client:
            await scenario(client)

    asyncio.run(main())


def authzen(mission_id: str, action: str = "invoices.read") -> dict[str, Any]:
    return {
        "subject": {"type": "agent", "id": AGENT},
        "resource": {"type": "invoice", "id": INVOICE},
        "action": {"name": action},
        "context": {"mission_id": mission_id},
    }


def test_the_check_routes(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check_routes, "MAX_MIN_POSITION_WAIT", 0.1)
    mid = open_mission(store.writer)
    opened_at = position(store.writer)
    store.clock.advance(HOUR)
    check = {"action": "invoices.read", "resource": INVOICE}

    async def scenario(client: TestClient[Any, Any]) -> None:
        url = f"/missions/{mid}/check"
        resp = await client.post(url, json={**check, "min_position": opened_at})
        assert resp.status == 200
        body = await resp.json()
        assert (body["decision"], body["reason"], body["mission_version"]) == (
            "allow",
            "allowed",
            1,
        )
        assert body["grant"]["entry_index"] == 0

        resp = await client.post(url, json={**check, "min_position": 10**9})
        assert resp.status == 503
        assert resp.content_type == "application/problem+json"
        assert resp.headers["Retry-After"] == "1"
        problem = await resp.json()
        assert (problem["code"], problem["field"]) == ("stale_view", "min_position")
        assert problem["ledger_position"] >= opened_at

        for bad, name in [
            ({**check, "extra": 1}, "extra"),
            ({"resource": INVOICE}, "action"),
            ({**check, "at": "yesterday"}, "at"),
            ({**check, "min_position": -1}, "min_position"),
            ({**check, "min_position": True}, "min_position"),
        ]:
            resp = await client.post(url, json=bad)
            assert resp.status == 400, bad
            assert resp.content_type == "application/problem+json"
            problem = await resp.json()
            assert (problem["type"], problem["status"], problem["field"]) == (
                "about:blank",
                400,
                name,
            )
        as_json = {"Content-Type": "application/json"}
        resp = await client.post(url, data=b"{not json", headers=as_json)
        problem = await resp.json()
        assert (resp.status, problem["code"], problem["field"]) == (400, "invalid_json", "body")
        resp = await client.post(url, data=b"[1, 2]", headers=as_json)
        assert (resp.status, (await resp.json())["field"]) == (400, "body")
        resp = await client.post(url, headers=as_json)
        assert (resp.status, (await resp.json())["field"]) == (400, "body")
        resp = await client.post(url, data=b'{"action": "invoices.read"}')  # no Content-Type
        problem = await resp.json()
        assert (resp.status, resp.content_type, problem["code"], problem["field"]) == (
            415,
            "application/problem+json",
            "unsupported_media_type",
            "Content-Type",
        )
        resp = await client.post(url, json={**check, "resource": "x" * 5000})
        assert (resp.status, (await resp.json())["code"]) == (413, "payload_too_large")

        revoked = store.writer.revoke(mid, actor=OPERATOR)
        assert revoked.position is not None
        resp = await client.post(url, json={**check, "min_position": revoked.position})
        body = await resp.json()
        assert (resp.status, body["reason"], body["state"]) == (200, "mission_inactive", "revoked")

        historical = {**check, "at": format_rfc3339(T0 + HOUR / 2)}
        resp = await client.post(url, json=historical)
        body = await resp.json()
        assert (resp.status, body["decision"]) == (200, "allow")
        assert [e["type"] for e in body["rests_on"]] == ["MissionApproved"]

        resp = await client.post("/missions/not-a-mission/check", json=check)
        assert (resp.status, (await resp.json())["reason"]) == (200, "not_found")

        resp = await client.post("/access/v1/evaluation", json=authzen(mid))
        body = await resp.json()
        assert resp.status == 200
        assert body["decision"] is False
        assert body["context"]["reason"] == "mission_inactive"
        resp = await client.post("/access/v1/evaluation", json={"subject": {}})
        assert (resp.status, (await resp.json())["field"]) == (400, "subject.type")

        resp = await client.post("/agentpass/authorization-check", json={"authorization_id": mid})
        assert (resp.status, await resp.json()) == (404, {"error": "not_found"})
        resp = await client.post("/agentpass/authorization-check", json={})
        assert (resp.status, (await resp.json())["field"]) == (400, "authorization_id")

        resp = await client.get("/agentpass/configuration")
        config = await resp.json()
        assert config["authority"] == ISSUER
        assert config["endpoints"] == {
            "authorization_check": f"{ISSUER}/agentpass/authorization-check"
        }

    run(store, allow_all, scenario)


def test_blocking_check_work_runs_on_the_apps_bounded_executor(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    mid = open_mission(store.writer)
    threads: list[str] = []
    real_check_at = check_at

    def recording_check_at(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real_check_at(*args, **kwargs)

    monkeypatch.setattr(check_routes, "check_at", recording_check_at)
    check = {"action": "invoices.read", "resource": INVOICE}

    async def scenario(client: TestClient[Any, Any]) -> None:
        historical = {**check, "at": format_rfc3339(T0)}
        resp = await client.post(f"/missions/{mid}/check", json=historical)
        assert (resp.status, (await resp.json())["decision"]) == (200, "allow")
        resp = await client.post(
            f"/missions/{mid}/check", json={**check, "min_position": position(store.writer)}
        )
        assert (resp.status, (await resp.json())["decision"]) == (200, "allow")

    run(store, allow_all, scenario)
    assert len(threads) == 1
    assert threads[0].startswith("test-checks")


def test_authzen_and_agentpass_routes_answer_active_missions(store: Store) -> None:
    visible = open_mission(store.writer)
    hidden = open_mission(store.writer)
    assert store.view.wait_for(position(store.writer), timeout=5.0)

    async def scenario(client: TestClient[Any, Any]) -> None:
        resp = await client.post("/access/v1/evaluation", json=authzen(visible))
        body = await resp.json()
        assert (resp.status, body["decision"], body["context"]["reason"]) == (200, True, "allowed")

        batch = {
            **authzen(visible),
            "evaluations": [
                {},
                {"action": {"name": "invoices.delete"}},
                {"context": {"mission_id": hidden}},
            ],
        }
        resp = await client.post("/access/v1/evaluations", json=batch)
        answers = (await resp.json())["evaluations"]
        assert resp.status == 200
        assert [(a["decision"], a["context"]["reason"]) for a in answers] == [
            (True, "allowed"),
            (False, "out_of_authority"),
            (False, "not_found"),  # the caller may not see it: answered as unknown
        ]

        resp = await client.post(
            "/agentpass/authorization-check", json={"authorization_id": visible}
        )
        assert (resp.status, await resp.json()) == (
            200,
            {"scope": ["invoices.read", "invoices.write", "mail.send"]},
        )
        resp = await client.post(
            "/agentpass/authorization-check", json={"authorization_id": hidden}
        )
        assert resp.status == 404

    run(store, deny_these({hidden}), scenario)


def test_a_caller_who_may_not_check_the_mission_gets_404(store: Store) -> None:
    mid = open_mission(store.writer)

    async def scenario(client: TestClient[Any, Any]) -> None:
        check = {"action": "invoices.read", "resource": INVOICE}
        assert (await client.post(f"/missions/{mid}/check", json=check)).status == 404
        assert (await client.post("/access/v1/evaluation", json=authzen(mid))).status == 404
        resp = await client.post("/agentpass/authorization-check", json={"authorization_id": mid})
        assert resp.status == 404
        # a malformed body still authenticates first
        assert (await client.post(f"/missions/{mid}/check", json={"x": 1})).status == 404

    run(store, deny_all, scenario)


def test_routes_fail_closed_when_the_view_is_down(store: Store) -> None:
    mid = open_mission(store.writer)
    store.view.stop()

    async def scenario(client: TestClient[Any, Any]) -> None:
        check = {"action": "invoices.read", "resource": INVOICE}
        resp = await client.post(f"/missions/{mid}/check", json=check)
        body = await resp.json()
        assert (resp.status, body["decision"], body["reason"]) == (
            503,
            "deny",
            "view_unavailable",
        )
        resp = await client.post("/access/v1/evaluation", json=authzen(mid))
        body = await resp.json()
        assert (resp.status, body["decision"], body["context"]["reason"]) == (
            503,
            False,
            "view_unavailable",
        )
        resp = await client.post("/access/v1/evaluations", json=authzen(mid))
        assert resp.status == 503
        resp = await client.post("/agentpass/authorization-check", json={"authorization_id": mid})
        assert resp.status == 503
        assert (await resp.json())["code"] == "view_unavailable"
        # a historical check reads the store, not the view
        historical = {**check, "at": format_rfc3339(T0)}
        resp = await client.post(f"/missions/{mid}/check", json=historical)
        assert (resp.status, (await resp.json())["decision"]) == (200, "allow")

    run(store, allow_all, scenario)


def test_openapi_fragment_describes_the_five_routes() -> None:
    paths = check_routes.CHECK_OPENAPI_PATHS
    assert set(paths) == {
        "/missions/{id}/check",
        "/access/v1/evaluation",
        "/access/v1/evaluations",
        "/agentpass/authorization-check",
        "/agentpass/configuration",
    }
    assert set(paths["/agentpass/configuration"]) == {"get"}
    for path, item in paths.items():
        for operation in item.values():
            assert "200" in operation["responses"], path
