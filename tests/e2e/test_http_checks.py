"""Checks through the real server: time travel, AuthZEN batches, AgentPass configuration."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from tests.e2e.conftest import Server
from tests.e2e.test_http_api import Client, _mission, run

READ = {"action": "invoices.read", "resource": "https://erp.example.com/invoices/2030-q3/9"}


def test_a_check_at_a_past_instant_answers_as_it_was_and_names_its_events(
    sqlite_server: Server,
) -> None:
    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        await asyncio.sleep(0.05)
        before_revoke = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        await asyncio.sleep(0.05)
        revoked = await c.post(f"/missions/{mid}/revoke", {"reason": "done"}, as_="operator")
        assert revoked.ok()["state"] == "revoked"

        # read-your-writes: the revoke answered with its ledger_position; wait for it
        now = await c.post(
            f"/missions/{mid}/check", {**READ, "min_position": c.position}, as_="receiver"
        )
        assert now.ok()["decision"] == "deny"
        assert now.body["reason"] == "mission_inactive"

        then = await c.post(f"/missions/{mid}/check", {**READ, "at": before_revoke}, as_="receiver")
        answer = then.ok()
        assert answer["decision"] == "allow"
        assert answer["mission_version"] == 1
        assert [e["version"] for e in answer["rests_on"]] == [1]
        assert answer["rests_on"][0]["type"] == "MissionApproved"

        history = (await c.get(f"/missions/{mid}/events", as_="auditor")).ok()
        events = history["events"] if isinstance(history, dict) else history
        assert answer["rests_on"][0]["event_id"] == events[0]["event_id"]

    run(sqlite_server, scenario)


def test_authzen_batch_and_agentpass_configuration(sqlite_server: Server) -> None:
    async def scenario(c: Client) -> None:
        mid = await _mission(c)
        batch = {
            "subject": {"type": "agent", "id": "agent:invoice-bot"},
            "context": {"mission_id": mid, "min_position": c.position},
            "evaluations": [
                {
                    "action": {"name": "invoices.read"},
                    "resource": {"type": "url", "id": "https://erp.example.com/invoices/1"},
                },
                {
                    "action": {"name": "invoices.delete"},
                    "resource": {"type": "url", "id": "https://erp.example.com/invoices/1"},
                },
            ],
        }
        answers = (await c.post("/access/v1/evaluations", batch, as_="receiver")).ok()
        decisions = [e["decision"] for e in answers["evaluations"]]
        assert decisions == [True, False]
        assert answers["evaluations"][1]["context"]["reason"] == "out_of_authority"

        config = (await c.get("/agentpass/configuration")).ok()
        check_url = config["endpoints"]["authorization_check"]
        assert check_url.endswith("/agentpass/authorization-check")

    run(sqlite_server, scenario)
