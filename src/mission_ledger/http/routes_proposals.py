"""``/proposals``: submit, the approvers' queue, read, approve, deny, withdraw.

Each handler: authenticate and check the role → parse → one executor hop that loads the
proposal, applies the per-object rule (not visible → the same 404 as a missing proposal; visible
but not allowed → 403) and runs the ledger command as the principal's ``actor``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from aiohttp import web

from ..domain.errors import Forbidden, NotFound
from ..domain.principal import HARNESS
from ..ledger import CommandResult, MissionLedger
from ..principals import Principal, may_act_on_proposal, may_view_proposal
from .auth import PROPOSAL_OPERATION_ROLES, READ_PROPOSAL_ROLES, require
from .models import (
    ApproveBody,
    NoQuery,
    ProposalDocument,
    ProposalListQuery,
    ReasonBody,
    parse_body,
    parse_query,
)
from .problems import not_found
from .routes_missions import load_visible
from .spec import Route, command_response, idempotency_key, json_response
from .state import LEDGER, run_sync


def _load_visible(ledger: MissionLedger, principal: Principal, proposal_id: str) -> dict[str, Any]:
    try:
        document = ledger.get_proposal(proposal_id).to_dict(ledger.clock.now())
    except NotFound:
        raise not_found("proposal") from None
    if not may_view_proposal(principal, document):
        raise not_found("proposal")
    return document


def _guarded(
    ledger: MissionLedger,
    principal: Principal,
    proposal_id: str,
    operation: str,
    command: Callable[[], CommandResult],
) -> CommandResult:
    """Visibility (404) and permission (403) on the current proposal, then the command."""
    document = _load_visible(ledger, principal, proposal_id)
    if not may_act_on_proposal(principal, operation, document):
        raise Forbidden(
            f"{principal.actor} may not {operation} proposal {proposal_id}",
            operation=operation,
            role=principal.role,
        )
    try:
        return command()
    except NotFound:
        raise not_found("proposal") from None


def _submit(
    ledger: MissionLedger, principal: Principal, document: dict[str, Any], key: str | None
) -> CommandResult:
    """Propose; a ``predecessor`` the caller may not see is the same 404 as a missing one."""
    predecessor = document.get("predecessor")
    if isinstance(predecessor, str):
        load_visible(ledger, principal, predecessor)
    try:
        return ledger.propose(document, actor=principal.actor, idempotency_key=key)
    except NotFound:
        raise not_found("Mission") from None


async def submit(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *PROPOSAL_OPERATION_ROLES["submit"])
    _, raw = await parse_body(request, ProposalDocument, required=True)
    if not may_act_on_proposal(principal, "submit", raw):
        raise Forbidden(
            f"a harness proposes only for its own agent ({principal.agent}); "
            f"this proposal is for {raw.get('agent')!r}",
            field="agent",
        )
    result = await run_sync(
        request, _submit, request.app[LEDGER], principal, raw, idempotency_key(request)
    )
    location = f"/proposals/{result.document['proposal_id']}"
    return command_response(result, status=201, location=location)


def _queue(ledger: MissionLedger, principal: Principal, state: str | None) -> list[dict[str, Any]]:
    now = ledger.clock.now()
    rows = []
    for summary in ledger.list_proposals(state=state):
        if principal.role == HARNESS and summary.agent != principal.agent:
            continue
        row = asdict(summary)
        row["stored_state"], row["state"] = summary.state, summary.effective_state(now)
        rows.append(row)
    return rows


async def list_proposals(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *READ_PROPOSAL_ROLES)
    query = parse_query(request, ProposalListQuery)
    ledger = request.app[LEDGER]
    rows = await run_sync(request, _queue, ledger, principal, query.state)
    return json_response({"proposals": rows})


async def get_proposal(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *READ_PROPOSAL_ROLES)
    parse_query(request, NoQuery)
    ledger = request.app[LEDGER]
    document = await run_sync(request, _load_visible, ledger, principal, request.match_info["id"])
    return json_response(document, headers={"ETag": f'"{document["version"]}"'})


async def approve(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *PROPOSAL_OPERATION_ROLES["approve"])
    body, raw = await parse_body(request, ApproveBody)
    ledger = request.app[LEDGER]
    proposal_id = request.match_info["id"]
    key = idempotency_key(request)

    def command() -> CommandResult:
        return ledger.approve(
            proposal_id,
            actor=principal.actor,
            authority_set=raw.get("authority_set"),
            evidence=body.evidence,
            method=body.method,
            template_id=body.template_id,
            template_version=body.template_version,
            rule_ids=body.rule_ids,
            allow_wildcard=body.allow_wildcard,
            wildcard_reason=body.wildcard_reason,
            expires_at=body.expires_at,
            idempotency_key=key,
        )

    result = await run_sync(request, _guarded, ledger, principal, proposal_id, "approve", command)
    location = f"/missions/{result.document['mission_id']}"
    return command_response(result, status=201, location=location)


def _decision(operation: str) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        principal = await require(request, *PROPOSAL_OPERATION_ROLES[operation])
        body, _ = await parse_body(request, ReasonBody)
        ledger = request.app[LEDGER]
        proposal_id = request.match_info["id"]
        key = idempotency_key(request)
        decide = ledger.deny if operation == "deny" else ledger.withdraw

        def command() -> CommandResult:
            return decide(
                proposal_id, actor=principal.actor, reason=body.reason, idempotency_key=key
            )

        result = await run_sync(
            request, _guarded, ledger, principal, proposal_id, operation, command
        )
        return command_response(result)

    handler.__name__ = operation
    return handler


deny = _decision("deny")
withdraw = _decision("withdraw")

_KEY_HEADER = ("Idempotency-Key",)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/proposals",
        submit,
        "submitProposal",
        "Submit a proposal (the agent's request for a Mission)",
        "proposals",
        {201: "ProposalResult"},
        body=ProposalDocument,
        body_required=True,
        headers=_KEY_HEADER,
        roles=PROPOSAL_OPERATION_ROLES["submit"],
        description="A harness may propose only for its own agent. Returns the pending "
        "proposal with its intent_hash and proposal_hash; Location names it.",
    ),
    Route(
        "GET",
        "/proposals",
        list_proposals,
        "listProposals",
        "The approvers' queue: proposals, oldest first (a harness sees its agent's)",
        "proposals",
        {200: "ProposalList"},
        query=ProposalListQuery,
        roles=READ_PROPOSAL_ROLES,
    ),
    Route(
        "GET",
        "/proposals/{id}",
        get_proposal,
        "getProposal",
        "Read a proposal",
        "proposals",
        {200: "Proposal"},
        roles=READ_PROPOSAL_ROLES,
    ),
    Route(
        "POST",
        "/proposals/{id}/approve",
        approve,
        "approveProposal",
        "Approve a pending proposal: a new active Mission (superseding its predecessor)",
        "proposals",
        {201: "MissionResult"},
        body=ApproveBody,
        headers=_KEY_HEADER,
        roles=PROPOSAL_OPERATION_ROLES["approve"],
        description="Location names the new Mission. The body is optional (grant the proposed "
        "Authority Set as is).",
    ),
    Route(
        "POST",
        "/proposals/{id}/deny",
        deny,
        "denyProposal",
        "Deny a pending proposal",
        "proposals",
        {200: "ProposalResult"},
        body=ReasonBody,
        headers=_KEY_HEADER,
        roles=PROPOSAL_OPERATION_ROLES["deny"],
    ),
    Route(
        "POST",
        "/proposals/{id}/withdraw",
        withdraw,
        "withdrawProposal",
        "Withdraw a pending proposal (its harness, or an operator)",
        "proposals",
        {200: "ProposalResult"},
        body=ReasonBody,
        headers=_KEY_HEADER,
        roles=PROPOSAL_OPERATION_ROLES["withdraw"],
    ),
)
