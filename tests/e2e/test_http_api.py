"""The HTTP API end to end: the real server on loopback, driven with ``aiohttp.ClientSession``.

One SQLite-backed server serves the module (``sqlite_server``); the SIGTERM and PostgreSQL tests
start their own. Principals of every role are minted with ``mission-ledger tokens create``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from psycopg import sql

from mission_ledger import checks
from mission_ledger.bootstrap import open_ledger
from mission_ledger.config import Settings
from mission_ledger.http.app import RUNTIME, create_app
from mission_ledger.http.state import ServerOptions
from mission_ledger.ledger import MissionLedger
from mission_ledger.principals import PrincipalRegistry
from mission_ledger.projections import ProjectionStore, ProjectionWorker
from tests.e2e.conftest import Server, start_server
from tests.integration.contract_fixtures import OPERATOR, open_mission, position
from tests.pgtarget import PgTarget

ROOT = Path(__file__).resolve().parents[2]
PROPOSAL: dict[str, Any] = json.loads((ROOT / "examples" / "proposal.json").read_text())
CHILD_AUTHORITY: list[Any] = json.loads((ROOT / "examples" / "child-authority.json").read_text())
UNKNOWN = "00000000-0000-4000-8000-000000000000"
_NO_BODY = object()


@dataclass
class Reply:
    status: int
    headers: Mapping[str, str]
    body: Any
    text: str

    def ok(self, status: int = 200) -> Any:
        """The parsed body, after asserting the status (the body is shown when it differs)."""
        assert self.status == status, (self.status, self.text)
        return self.body

    def problem(self, status: int, code: str) -> dict[str, Any]:
        assert self.status == status, (self.status, self.text)
        assert self.headers["Content-Type"].startswith("application/problem+json"), self.headers
        assert self.body["code"] == code, self.body
        assert self.body["status"] == status
        assert self.body["type"] == "about:blank"
        assert self.body["title"]
        assert self.body["detail"]
        body: dict[str, Any] = self.body
        return body


class Client:
    def __init__(self, session: aiohttp.ClientSession, server: Server) -> None:
        self.session = session
        self.server = server
        self.position = 0  # the ledger position of the last write seen (for min_position)

    async def call(
        self,
        method: str,
        path: str,
        *,
        as_: str | None = None,
        body: Any = _NO_BODY,
        data: bytes | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply:
        sent = dict(headers or {})
        if as_ is not None:
            sent["Authorization"] = f"Bearer {self.server.tokens[as_]}"
        if body is not _NO_BODY:
            data = json.dumps(body)
            sent.setdefault("Content-Type", "application/json")
        async with self.session.request(
            method, self.server.url + path, data=data, headers=sent
        ) as response:
            text = await response.text()
            try:
                parsed = json.loads(text) if text else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("ledger_position"), int):
                self.position = max(self.position, parsed["ledger_position"])
            return Reply(response.status, response.headers, parsed, text)

    async def get(self, path: str, *, as_: str | None = None, **kw: Any) -> Reply:
        return await self.call("GET", path, as_=as_, **kw)

    async def post(self, path: str, body: Any = _NO_BODY, *, as_: str, **kw: Any) -> Reply:
        return await self.call("POST", path, as_=as_, body=body, **kw)


def run(server: Server, scenario: Callable[[Client], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await scenario(Client(session, server))

    asyncio.run(main())


def proposal(agent: str = "agent:invoice-bot", **changes: Any) -> dict[str, Any]:
    document = copy.deepcopy(PROPOSAL)
    document["agent"] = agent
    document.update(changes)
    return document


CRM_AUTHORITY = [
    {
        "type": "mission_resource_access",
        "resource": "https://crm.example.com/contacts/*",
        "actions": ["contacts.read"],
    }
]


async def _mission(client: Client, agent: str = "agent:invoice-bot", **changes: Any) -> str:
    """Propose (as the agent's harness or the operator) and approve; returns the mission_id."""
    proposer = {"agent:invoice-bot": "harness", "agent:crm-bot": "other_harness"}[agent]
    submitted = await client.post("/proposals", proposal(agent, **changes), as_=proposer)
    assert submitted.status == 201, submitted.text
    approved = await client.post(
        f"/proposals/{submitted.body['proposal_id']}/approve", {}, as_="approver"
    )
    assert approved.status == 201, approved.text
    mission_id: str = approved.body["mission_id"]
    return mission_id


# -- authentication -------------------------------------------------------------------------------


def test_public_routes_and_401_with_www_authenticate(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        health = await c.get("/healthz")
        assert health.status == 200, health.text
        assert health.body["status"] == "ok"
        assert {"ledger_position", "view_position", "projection_lag"} <= set(health.body)
        assert (await c.get("/openapi.json")).body["openapi"] == "3.1.0"
        configuration = await c.get("/agentpass/configuration")
        assert configuration.status == 200, configuration.text

        missing = await c.get("/missions")
        missing.problem(401, "unauthorized")
        assert missing.headers["WWW-Authenticate"] == 'Bearer realm="mission-ledger"'
        invalid = await c.get("/missions", headers={"Authorization": "Bearer mlt_nope"})
        invalid.problem(401, "unauthorized")
        assert invalid.headers["WWW-Authenticate"] == (
            'Bearer realm="mission-ledger", error="invalid_token"'
        )
        basic = await c.get("/proposals", headers={"Authorization": "Basic Ym9iOnB3"})
        basic.problem(401, "unauthorized")
        for method, path in (
            ("POST", "/proposals"),
            ("POST", f"/missions/{UNKNOWN}/revoke"),
            ("GET", "/metrics"),
            ("POST", f"/missions/{UNKNOWN}/check"),
        ):
            (await c.call(method, path, body={})).problem(401, "unauthorized")

    run(sqlite_server, scenario)


# -- the lifecycle --------------------------------------------------------------------------------


def test_full_lifecycle_with_cascade(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        submitted = await c.post("/proposals", proposal(), as_="harness")
        assert submitted.status == 201, submitted.text
        pid = submitted.body["proposal_id"]
        assert submitted.headers["Location"] == f"/proposals/{pid}"
        assert submitted.body["state"] == "pending"
        assert submitted.body["intent_hash"].startswith("sha-256:")
        assert submitted.body["submitted_by"] == "harness:invoice-bot"

        queue = await c.get("/proposals?state=pending", as_="approver")
        assert pid in [p["proposal_id"] for p in queue.body["proposals"]]
        assert (await c.get(f"/proposals/{pid}", as_="auditor")).body["state"] == "pending"

        approved = await c.post(
            f"/proposals/{pid}/approve",
            {"evidence": {"ticket": "T-1"}, "method": "manual"},
            as_="approver",
        )
        assert approved.status == 201, approved.text
        mid = approved.body["mission_id"]
        assert approved.headers["Location"] == f"/missions/{mid}"
        assert approved.headers["ETag"] == '"1"'
        assert approved.body["state"] == "active"
        assert approved.body["version"] == 1
        assert (await c.get(f"/proposals/{pid}", as_="harness")).body["state"] == "approved"

        child = await c.post(
            f"/missions/{mid}/delegations",
            {"agent": "agent:ocr-helper", "authority_set": CHILD_AUTHORITY},
            as_="harness",
        )
        assert child.status == 201, child.text
        cid = child.body["mission_id"]
        assert child.headers["Location"] == f"/missions/{cid}"
        assert child.body["parent"]["id"] == mid

        suspended = await c.post(f"/missions/{mid}/suspend", {"reason": "odd"}, as_="operator")
        assert suspended.status == 200, suspended.text
        assert suspended.body["state"] == "suspended"
        assert suspended.body["changed"] is True
        assert suspended.headers["ETag"] == f'"{suspended.body["version"]}"'
        shown = await c.get(f"/missions/{cid}", as_="operator")
        assert shown.body["state"] == "suspended"
        assert shown.body["suspended_by"] == mid

        resumed = await c.post(f"/missions/{mid}/resume", as_="operator")  # no body at all
        assert resumed.status == 200, resumed.text
        assert (await c.get(f"/missions/{cid}", as_="auditor")).body["state"] == "active"

        stage = await c.post(f"/missions/{mid}/stage", {}, as_="operator")
        stage.problem(409, "illegal_transition")  # the Mission has no stages

        narrowed = await c.post(
            f"/missions/{mid}/narrow",
            {"authority_set": [PROPOSAL["authority_set"][0]], "reason": "journal not needed"},
            as_="harness",
        )
        assert narrowed.status == 200, narrowed.text
        assert len(narrowed.body["authority_set"]) == 1

        revoked = await c.post(f"/missions/{mid}/revoke", {"reason": "done"}, as_="operator")
        assert revoked.status == 200
        assert revoked.body["state"] == "revoked"
        assert (await c.get(f"/missions/{cid}", as_="operator")).body["state"] == "cascaded"
        again = await c.post(f"/missions/{mid}/revoke", as_="operator")
        assert again.status == 200
        assert again.body["changed"] is False
        (await c.post(f"/missions/{mid}/resume", as_="operator")).problem(409, "illegal_transition")

        events = await c.get(f"/missions/{mid}/events", as_="auditor")
        assert events.status == 200
        types = [e["type"] for e in events.body["events"]]
        assert types[0] == "MissionApproved"
        assert types[-1] == "MissionRevoked"
        assert all(e["hash"].startswith("sha-256:") for e in events.body["events"])
        actors = {e["type"]: e["actor"] for e in events.body["events"]}
        assert actors["MissionApproved"] == "approver:bob@example.com"
        assert actors["MissionSuspended"] == "operator:bootstrap-operator"
        assert actors["MissionAuthorityNarrowed"] == "harness:invoice-bot"

        first = await c.get(f"/missions/{mid}?version=1", as_="operator")
        assert first.body["state"] == "active"
        assert first.headers["ETag"] == '"1"'
        assert len(first.body["rests_on"]) == 1
        at = next(e for e in events.body["events"] if e["type"] == "MissionSuspended")["timestamp"]
        past = await c.get(f"/missions/{mid}", as_="operator", headers={})
        assert past.body["state"] == "revoked"
        then = await c.get(f"/missions/{mid}?as_of={at}", as_="operator")
        assert then.status == 200, then.text
        assert then.body["state"] == "suspended"
        (await c.get(f"/missions/{mid}?version=99", as_="operator")).problem(404, "not_found")
        (await c.get(f"/missions/{mid}?as_of=yesterday", as_="operator")).problem(
            400, "invalid_request"
        )

    run(sqlite_server, scenario)


def test_deny_withdraw_complete_and_successor(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        denied = await c.post("/proposals", proposal(), as_="harness")
        decision = await c.post(
            f"/proposals/{denied.body['proposal_id']}/deny", {"reason": "no"}, as_="approver"
        )
        assert decision.ok()["state"] == "denied"
        withdrawn = await c.post("/proposals", proposal(), as_="harness")
        decision = await c.post(
            f"/proposals/{withdrawn.body['proposal_id']}/withdraw", as_="harness"
        )
        assert decision.ok()["state"] == "withdrawn"
        (
            await c.post(f"/proposals/{withdrawn.body['proposal_id']}/approve", as_="approver")
        ).problem(409, "illegal_transition")

        mid = await _mission(c)
        wider = proposal()
        wider["authority_set"] = [*PROPOSAL["authority_set"], CRM_AUTHORITY[0]]
        with_predecessor = await c.post(
            f"/missions/{mid}/successor", {**wider, "predecessor": mid}, as_="harness"
        )
        assert with_predecessor.problem(400, "invalid_request")["field"] == "predecessor"
        successor = await c.post(f"/missions/{mid}/successor", wider, as_="harness")
        assert successor.status == 201, successor.text
        assert successor.body["predecessor"] == mid
        sid = successor.body["proposal_id"]
        assert successor.headers["Location"] == f"/proposals/{sid}"
        approved = await c.post(f"/proposals/{sid}/approve", as_="operator")
        assert approved.status == 201, approved.text
        old = await c.get(f"/missions/{mid}", as_="harness")
        assert old.body["state"] == "superseded"
        assert old.body["successor"] == approved.body["mission_id"]
        completed = await c.post(
            f"/missions/{approved.body['mission_id']}/complete", {"reason": "ok"}, as_="harness"
        )
        assert completed.status == 200
        assert completed.body["state"] == "completed"

    run(sqlite_server, scenario)


# -- roles ----------------------------------------------------------------------------------------


def test_roles_and_identical_404(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        mine = await _mission(c)
        theirs = await _mission(c, "agent:crm-bot", authority_set=CRM_AUTHORITY)

        # auditor: reads everything, changes nothing
        assert (await c.get(f"/missions/{theirs}", as_="auditor")).status == 200
        assert (await c.get("/proposals", as_="auditor")).status == 200
        for path in (f"/missions/{mine}/suspend", f"/missions/{mine}/complete"):
            (await c.post(path, {}, as_="auditor")).problem(403, "forbidden")
        (await c.post("/proposals", proposal(), as_="auditor")).problem(403, "forbidden")
        pending = await c.post("/proposals", proposal(), as_="harness")
        pid = pending.body["proposal_id"]
        (await c.post(f"/proposals/{pid}/approve", as_="auditor")).problem(403, "forbidden")

        # approver: decides proposals, takes no lifecycle action
        (await c.post(f"/missions/{mine}/revoke", as_="approver")).problem(403, "forbidden")
        # harness: its own Missions, only some operations; no approvals
        (await c.post(f"/missions/{mine}/suspend", as_="harness")).problem(403, "forbidden")
        (await c.post(f"/proposals/{pid}/approve", as_="harness")).problem(403, "forbidden")
        (await c.post("/proposals", proposal("agent:crm-bot"), as_="harness")).problem(
            403, "forbidden"
        )
        (await c.post(f"/proposals/{pid}/withdraw", as_="other_harness")).problem(404, "not_found")

        # not yours and does not exist: the same 404, byte for byte
        unknown = await c.get(f"/missions/{UNKNOWN}", as_="harness")
        foreign = await c.get(f"/missions/{theirs}", as_="harness")
        unknown.problem(404, "not_found")
        assert foreign.status == 404
        assert foreign.text == unknown.text
        for suffix, body in (
            ("/complete", {}),
            ("/events", None),
            ("/narrow", {"authority_set": []}),
        ):
            method = "GET" if body is None else "POST"
            kw: dict[str, Any] = {} if body is None else {"body": body}
            a = await c.call(method, f"/missions/{UNKNOWN}{suffix}", as_="harness", **kw)
            b = await c.call(method, f"/missions/{theirs}{suffix}", as_="harness", **kw)
            a.problem(404, "not_found")
            assert a.text == b.text, (suffix, a.text, b.text)
        bad_id = await c.get("/missions/not-a-uuid", as_="harness")
        assert bad_id.status == 404
        assert bad_id.text == unknown.text
        # an operator acts without a pre-load: unknown and malformed ids still give the one 404
        for path in (f"/missions/{UNKNOWN}/revoke", "/missions/not-a-uuid/suspend"):
            as_operator = await c.post(path, {}, as_="operator")
            assert as_operator.status == 404
            assert as_operator.text == unknown.text, (path, as_operator.text)
        via_predecessor = await c.post(
            "/proposals", proposal("agent:crm-bot", predecessor=mine), as_="other_harness"
        )
        no_predecessor = await c.post(
            "/proposals", proposal("agent:crm-bot", predecessor=UNKNOWN), as_="other_harness"
        )
        via_predecessor.problem(404, "not_found")
        assert via_predecessor.text == no_predecessor.text
        foreign_proposal = await c.get(f"/proposals/{pid}", as_="other_harness")
        unknown_proposal = await c.get(f"/proposals/{UNKNOWN}", as_="other_harness")
        assert foreign_proposal.status == unknown_proposal.status == 404
        assert foreign_proposal.text == unknown_proposal.text

        # harness lists only its agent's Missions, whatever it asks for
        listed = await c.get(f"/missions?limit=500&min_position={c.position}", as_="harness")
        agents = {m["agent"] for m in listed.body["missions"]}
        assert agents == {"agent:invoice-bot"}, agents
        asked = await c.get("/missions?agent=agent:crm-bot", as_="harness")
        assert asked.body["missions"] == []
        queue = await c.get("/proposals", as_="other_harness")
        assert {p["agent"] for p in queue.body["proposals"]} <= {"agent:crm-bot"}

        # receivers: only Missions whose Authority Set touches their scope; never proposals
        assert (await c.get(f"/missions/{mine}", as_="receiver")).status == 200
        hidden = await c.get(f"/missions/{theirs}", as_="receiver")
        assert hidden.status == 404
        assert hidden.text == unknown.text
        seen = await c.get(f"/missions?limit=500&min_position={c.position}", as_="foreign_receiver")
        ids = {m["mission_id"] for m in seen.body["missions"]}
        assert theirs in ids
        assert mine not in ids
        (await c.get("/proposals", as_="receiver")).problem(403, "forbidden")
        (await c.post(f"/missions/{mine}/revoke", as_="receiver")).problem(403, "forbidden")

        # checks through the server's authorize(): scope applies there too
        check = {"action": "invoices.read", "resource": "https://erp.example.com/invoices/7"}
        allowed = await c.post(f"/missions/{mine}/check", check, as_="receiver")
        assert allowed.ok()["decision"] == "allow"
        (await c.post(f"/missions/{theirs}/check", check, as_="receiver")).problem(404, "not_found")
        (await c.post(f"/missions/{theirs}/check", check, as_="harness")).problem(404, "not_found")
        denied = await c.post(f"/missions/{theirs}/check", check, as_="auditor")
        assert denied.status == 200
        assert denied.body["decision"] == "deny"
        scope = await c.post(
            "/agentpass/authorization-check", {"authorization_id": mine}, as_="harness"
        )
        assert scope.ok()["scope"]

    run(sqlite_server, scenario)


# -- concurrency control and retries --------------------------------------------------------------


def test_if_match_and_idempotency_key(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        stale = await c.post(
            f"/missions/{mid}/suspend", as_="operator", headers={"If-Match": '"7"'}
        )
        assert stale.problem(409, "stale_version")["current_version"] == 1
        ok = await c.post(f"/missions/{mid}/suspend", as_="operator", headers={"If-Match": '"1"'})
        ok.ok()
        assert ok.headers["ETag"] == '"2"'
        no_op = await c.post(
            f"/missions/{mid}/suspend", as_="operator", headers={"If-Match": '"2"'}
        )
        assert no_op.status == 200
        assert no_op.body["changed"] is False
        bad = await c.post(f"/missions/{mid}/resume", as_="operator", headers={"If-Match": "two"})
        assert bad.problem(400, "invalid_request")["field"] == "If-Match"
        illegal = await c.post(f"/missions/{mid}/stage", as_="operator")
        assert illegal.problem(409, "illegal_transition")["current_state"] == "suspended"

        key = {"Idempotency-Key": f"resume-{mid}"}
        first = await c.post(
            f"/missions/{mid}/resume", {"reason": "r"}, as_="operator", headers=key
        )
        retry = await c.post(
            f"/missions/{mid}/resume", {"reason": "r"}, as_="operator", headers=key
        )
        assert first.status == retry.status == 200
        assert first.body["changed"] is True
        assert retry.body["replayed"] is True
        assert retry.body["version"] == first.body["version"] == 3
        reused = await c.post(
            f"/missions/{mid}/resume", {"reason": "x"}, as_="operator", headers=key
        )
        reused.problem(409, "idempotency_key_reused")

        key = {"Idempotency-Key": "submit-once"}
        one = await c.post("/proposals", proposal(), as_="harness", headers=key)
        two = await c.post("/proposals", proposal(), as_="harness", headers=key)
        assert one.status == two.status == 201
        assert one.body["proposal_id"] == two.body["proposal_id"]
        assert two.body["replayed"]
        events = await c.get(f"/missions/{mid}/events", as_="operator")
        assert len(events.body["events"]) == 3  # approved, suspended, resumed: no duplicates

    run(sqlite_server, scenario)


# -- bad input ------------------------------------------------------------------------------------


def test_bad_input_is_400_415_413_never_500(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        unknown = await c.post(f"/missions/{mid}/suspend", {"reasn": "typo"}, as_="operator")
        assert unknown.problem(400, "invalid_request")["field"] == "reasn"
        wrong = await c.post(f"/missions/{mid}/revoke", {"reason": 5}, as_="operator")
        assert wrong.problem(400, "invalid_request")["field"] == "reason"
        nested = proposal()
        nested["authority_set"] = [{**PROPOSAL["authority_set"][1], "actions": "journal.read"}]
        deep = await c.post("/proposals", nested, as_="harness")
        assert deep.problem(400, "invalid_request")["field"] == "authority_set.0.actions"
        member = proposal()
        member["task"] = {**PROPOSAL["task"], "owner": "x"}
        assert (await c.post("/proposals", member, as_="harness")).body["field"] == "task.owner"
        domain = proposal()
        domain["intent"] = {**PROPOSAL["intent"], "resources": ["not a uri"]}
        refused = await c.post("/proposals", domain, as_="harness")
        assert refused.status == 400
        assert refused.body["field"].startswith("intent.resources")
        missing = await c.post(f"/missions/{mid}/delegations", {"agent": "a"}, as_="harness")
        assert missing.problem(400, "invalid_request")["field"] == "authority_set"
        not_object = await c.post("/proposals", [1, 2], as_="harness")
        assert not_object.problem(400, "invalid_request")["field"] == "body"
        empty = await c.post("/proposals", as_="harness")
        assert empty.problem(400, "invalid_request")["field"] == "body"

        for data in ('{"reason": ', "{'reason': 1}", '{"a": NaN}', "[" * 50_000):
            malformed = await c.post(
                f"/missions/{mid}/suspend",
                as_="operator",
                data=data,
                headers={"Content-Type": "application/json"},
            )
            assert malformed.problem(400, "invalid_json")["field"] == "body"
        form = await c.post(
            f"/missions/{mid}/suspend",
            as_="operator",
            data="reason=x",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        form.problem(415, "unsupported_media_type")
        big = proposal()
        big["intent"] = {**PROPOSAL["intent"], "goal": "x" * 70_000}
        (await c.post("/proposals", big, as_="harness")).problem(413, "payload_too_large")
        chunked = await c.call(
            "POST",
            "/proposals",
            as_="harness",
            data=_chunks(b"{" + b" " * 80_000 + b"}"),
            headers={"Content-Type": "application/json"},
        )
        chunked.problem(413, "payload_too_large")

        assert (await c.get("/missions?limit=501", as_="operator")).body["field"] == "limit"
        assert (await c.get("/missions?limit=ten", as_="operator")).body["field"] == "limit"
        assert (await c.get("/missions?colour=red", as_="operator")).body["field"] == "colour"
        assert (await c.get("/missions?after=%25%25", as_="operator")).body["field"] == "after"
        both = await c.get(f"/missions/{mid}?version=1&as_of=2030-01-01T00:00:00Z", as_="operator")
        both.problem(400, "invalid_request")
        (await c.get("/nowhere", as_="operator")).problem(404, "not_found")
        (await c.call("DELETE", f"/missions/{mid}", as_="operator")).problem(
            405, "method_not_allowed"
        )
        metrics = await c.get("/metrics", as_="auditor")
        assert 'status="500"' not in metrics.text

    run(sqlite_server, scenario)


async def _chunks(data: bytes) -> Any:
    for start in range(0, len(data), 8192):
        yield data[start : start + 8192]


def test_check_routes_refuse_bad_input_like_every_route(sqlite_server: Server) -> None:
    """The check routes read bodies with the shared reader and answer through the shared
    problem mapping: 415 for another media type, 400 naming the field, 413 over the limit."""

    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        path = f"/missions/{mid}/check"
        check = {"action": "invoices.read", "resource": "https://erp.example.com/invoices/1"}
        allowed = await c.post(path, {**check, "min_position": c.position}, as_="receiver")
        assert allowed.ok()["decision"] == "allow"

        for route, body in (
            (path, check),
            ("/access/v1/evaluation", {"context": {"mission_id": mid}}),
            ("/access/v1/evaluations", {"evaluations": []}),
            ("/agentpass/authorization-check", {"authorization_id": mid}),
        ):
            for media_type in ("text/plain", "application/x-www-form-urlencoded"):
                wrong = await c.post(
                    route,
                    as_="receiver",
                    data=json.dumps(body),
                    headers={"Content-Type": media_type},
                )
                problem = wrong.problem(415, "unsupported_media_type")
                assert problem["field"] == "Content-Type", route
            anonymous = await c.call(
                "POST", route, data="x=1", headers={"Content-Type": "text/plain"}
            )
            anonymous.problem(401, "unauthorized")  # authentication before the body's verdict
            assert "WWW-Authenticate" in anonymous.headers

        cases: list[tuple[Any, str]] = [
            ({**check, "extra": 1}, "extra"),
            ({"resource": check["resource"]}, "action"),
            ({**check, "action": 5}, "action"),
            ({**check, "at": "yesterday"}, "at"),
            ({**check, "min_position": "3"}, "min_position"),
            ([check], "body"),
        ]
        for body, field in cases:
            bad = await c.post(path, body, as_="receiver")
            assert bad.problem(400, "invalid_request")["field"] == field, body
        malformed = await c.post(
            path, as_="receiver", data='{"action": ', headers={"Content-Type": "application/json"}
        )
        assert malformed.problem(400, "invalid_json")["field"] == "body"
        empty = await c.post(path, as_="receiver", headers={"Content-Type": "application/json"})
        assert empty.problem(400, "invalid_request")["field"] == "body"
        authzen = await c.post("/access/v1/evaluation", {"subject": {}}, as_="receiver")
        assert authzen.problem(400, "invalid_request")["field"] == "subject.type"
        agentpass = await c.post("/agentpass/authorization-check", {}, as_="receiver")
        assert agentpass.problem(400, "invalid_request")["field"] == "authorization_id"
        big = await c.post(path, {**check, "resource": "x" * 70_000}, as_="receiver")
        big.problem(413, "payload_too_large")
        stale = await c.post(path, {**check, "min_position": 10**12}, as_="receiver")
        assert stale.problem(503, "stale_view")["field"] == "min_position"
        assert stale.headers["Retry-After"] == "1"
        historical = await c.post(
            path, {**check, "at": "2020-01-01T00:00:00Z"}, as_="receiver"
        )  # before the Mission existed: answered from the store, on the executor
        assert historical.ok()["reason"] == "not_found"
        metrics = await c.get("/metrics", as_="auditor")
        assert 'status="500"' not in metrics.text

    run(sqlite_server, scenario)


def test_the_check_view_starts_from_the_authorization_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted server's live view loads the tracked ``authorization`` table, not the log,
    and catches up on what the table lacks before it answers."""
    settings = Settings(data_dir=tmp_path / "var")
    ledger = open_ledger(settings)
    try:
        token = PrincipalRegistry(ledger).bootstrap_operator()
        assert token is not None
        kept, ended, tailed = (open_mission(ledger) for _ in range(3))
        with ProjectionWorker(ledger, settings) as worker:
            worker.run_once()
        projected = ProjectionStore.open(settings)
        try:
            assert projected.position() == position(ledger)
        finally:
            projected.close()
        ledger.revoke(ended, actor=OPERATOR)  # after the projection: only the tail has it
        ledger.suspend(tailed, actor=OPERATOR)

        def no_log_scan(_: MissionLedger) -> Any:
            raise AssertionError("the view scanned the log instead of loading the table")

        monkeypatch.setattr(checks, "load_rows_from_log", no_log_scan)
        check = {"action": "invoices.read", "resource": "https://erp.example.com/invoices/1"}
        headers = {"Authorization": f"Bearer {token}"}

        async def main() -> None:
            app = create_app(settings, ledger=ledger, options=ServerOptions(embedded_worker=False))
            async with TestClient(TestServer(app)) as client:
                health = await (await client.get("/healthz")).json()
                assert health["view_position"] == position(ledger)
                reasons = {}
                for mid in (kept, ended, tailed):
                    reply = await client.post(f"/missions/{mid}/check", json=check, headers=headers)
                    assert reply.status == 200, await reply.text()
                    reasons[mid] = (await reply.json())["reason"]
                assert reasons == {
                    kept: "allowed",
                    ended: "mission_inactive",
                    tailed: "mission_inactive",
                }

        asyncio.run(main())
    finally:
        ledger.close()


# -- lists, metrics -------------------------------------------------------------------------------


def test_mission_list_filters_and_paging(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        made = {await _mission(c) for _ in range(3)}
        seen: list[str] = []
        after = None
        while True:
            path = f"/missions?agent=agent:invoice-bot&limit=2&min_position={c.position}"
            page = await c.get(path + (f"&after={after}" if after else ""), as_="operator")
            assert page.status == 200, page.text
            assert len(page.body["missions"]) <= 2
            assert page.body["ledger_position"] > 0
            seen += [m["mission_id"] for m in page.body["missions"]]
            after = page.body["next"]
            if after is None:
                break
        assert made <= set(seen)
        assert len(seen) == len(set(seen))
        active = await c.get("/missions?state=revoked&limit=500", as_="auditor")
        assert all(m["state"] == "revoked" for m in active.body["missions"])

    run(sqlite_server, scenario)


def test_metrics_exposition(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        await c.get("/healthz")
        reply = await c.get("/metrics", as_="receiver")
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = reply.text
        assert (
            'mission_ledger_http_requests_total{method="GET",route="/healthz",status="200"}' in text
        )
        assert "# TYPE mission_ledger_http_request_duration_seconds histogram" in text
        assert (
            'mission_ledger_http_request_duration_seconds_bucket{method="GET",route="/healthz",le="+Inf"}'
            in text
        )
        assert "\nmission_ledger_projection_lag_events " in text
        assert "\nmission_ledger_ledger_position " in text
        assert 'route="/missions/{id}"' in text  # patterns, never raw ids

    run(sqlite_server, scenario)


# -- shutdown and PostgreSQL ----------------------------------------------------------------------


def test_scripts_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    server = start_server(
        tmp_path, ["--data", str(tmp_path / "var")], command=[str(ROOT / "scripts" / "serve")]
    )
    server.tokens["operator"] = server.operator_token or ""

    async def scenario(c: Client) -> None:
        assert (await c.get("/missions", as_="operator")).status == 200

    run(server, scenario)
    assert server.stop(signal.SIGTERM) == 0, server.logs()
    assert "Traceback" not in server.logs()
    restarted = start_server(tmp_path / "again", ["--data", str(tmp_path / "var")])
    assert restarted.operator_token is None  # only the first start creates it
    assert restarted.stop(signal.SIGINT) == 0, restarted.logs()


@pytest.mark.postgres
def test_postgres_server(postgres_schema_url: PgTarget, tmp_path: Path) -> None:
    server = start_server(tmp_path, ["--database-url", postgres_schema_url.ledger_url])
    try:
        assert server.operator_token is not None, server.logs()
        server.tokens["operator"] = server.operator_token
        server.mint(
            {
                "approver": ["approver", "bob@example.com"],
                "harness": ["harness", "invoice-bot", "--agent", "agent:invoice-bot"],
            }
        )

        async def scenario(c: Client) -> None:
            mid = await _mission(c)
            child = await c.post(
                f"/missions/{mid}/delegations",
                {"agent": "agent:ocr-helper", "authority_set": CHILD_AUTHORITY},
                as_="harness",
            )
            assert child.status == 201, child.text
            revoked = await c.post(f"/missions/{mid}/revoke", as_="operator")
            assert revoked.status == 200, revoked.text
            cid = child.body["mission_id"]
            assert (await c.get(f"/missions/{cid}", as_="operator")).body["state"] == "cascaded"
            check = {
                "action": "invoices.read",
                "resource": "https://erp.example.com/invoices/2030-q3/1",
                "min_position": revoked.body["ledger_position"],
            }
            denied = await c.post(f"/missions/{cid}/check", check, as_="operator")
            assert denied.ok()["decision"] == "deny"
            listed = await c.get(f"/missions?min_position={c.position}", as_="operator")
            assert {mid, cid} <= {m["mission_id"] for m in listed.body["missions"]}
            assert (await c.get("/healthz")).status == 200

        run(server, scenario)
    finally:
        assert server.stop() == 0, server.logs()


@pytest.mark.postgres
def test_checks_fail_closed_while_the_event_store_is_locked(
    postgres_schema_url: PgTarget, tmp_path: Path
) -> None:
    """An ACCESS EXCLUSIVE lock on the events table stalls the live view: past
    --check-max-lag checks fail closed (503: deny view_unavailable, or a bounded 503 problem;
    never an allow) and /healthz answers 503; once the lock is gone both recover."""
    server = start_server(
        tmp_path, ["--database-url", postgres_schema_url.ledger_url], "--check-max-lag", "0.1"
    )
    server.tokens["operator"] = server.operator_token or ""
    server.mint(
        {
            "approver": ["approver", "bob@example.com"],
            "harness": ["harness", "invoice-bot", "--agent", "agent:invoice-bot"],
        }
    )
    check: dict[str, Any] = {
        "action": "invoices.read",
        "resource": "https://erp.example.com/invoices/1",
    }

    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        fresh = await c.post(
            f"/missions/{mid}/check", {**check, "min_position": c.position}, as_="operator"
        )
        assert fresh.ok()["decision"] == "allow"
        with psycopg.connect(postgres_schema_url.url) as lock:
            await c.get("/missions?limit=1", as_="harness")  # warm the principal cache
            lock.execute(
                sql.SQL("LOCK TABLE {}.missionledger_events IN ACCESS EXCLUSIVE MODE").format(
                    sql.Identifier(postgres_schema_url.schema)
                )
            )
            await asyncio.sleep(0.25)  # > --check-max-lag: the view has not polled since
            for path, body in (
                (f"/missions/{mid}/check", check),
                ("/agentpass/authorization-check", {"authorization_id": mid}),
            ):
                stalled = await c.post(path, body, as_="harness")
                assert stalled.status == 503, stalled.text  # never an allow
                if "decision" in stalled.body:  # the view answered: deny, view_unavailable
                    assert stalled.body["decision"] == "deny"
                    assert stalled.body["reason"] == "view_unavailable"
                else:  # the view (or authentication, bounded) reported the outage
                    assert stalled.body["code"] in ("view_unavailable", "unavailable")
            health = await c.get("/healthz")
            assert health.status == 503, health.text
            assert health.body["status"] == "unavailable"
            lock.rollback()
        for _ in range(200):
            if (await c.get("/healthz")).status == 200:
                break
            await asyncio.sleep(0.05)
        assert (await c.get("/healthz")).status == 200
        allowed = await c.post(f"/missions/{mid}/check", check, as_="harness")
        assert allowed.ok()["decision"] == "allow"

    try:
        run(server, scenario)
    finally:
        assert server.stop() == 0, server.logs()


def test_healthz_is_503_once_the_embedded_worker_stops(tmp_path: Path) -> None:
    """In process (the real app, aiohttp's test server): stop the worker thread → 503."""

    async def main() -> None:
        app = create_app(Settings(data_dir=tmp_path / "var"))
        async with TestClient(TestServer(app)) as client:
            healthy = await client.get("/healthz")
            assert healthy.status == 200, await healthy.text()
            assert (await healthy.json())["worker_alive"] is True
            runtime = app[RUNTIME]
            runtime["worker_stop"].set()
            runtime["worker_thread"].join(timeout=10)
            stopped = await client.get("/healthz")
            body = await stopped.json()
            assert stopped.status == 503
            assert body["worker_alive"] is False
            assert "projection worker is not running" in body["problems"]

    asyncio.run(main())
