"""``/missions``: list, read (now, ``as_of``, ``version``), history, lifecycle, delegation,
successor proposals.

Each command handler: authenticate and check the role → parse → one executor hop that loads the
Mission, applies the per-object rule (not visible → the same 404 as a missing Mission; visible
but not allowed → 403) and runs the ledger command as the principal's ``actor`` with the
``If-Match`` version and the ``Idempotency-Key``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from ..domain.errors import Forbidden, InvalidInput, NotFound
from ..domain.principal import OPERATOR
from ..domain.timefmt import parse_rfc3339
from ..ledger import CommandResult, MissionLedger
from ..principals import Principal, may_act_on_mission, may_view_mission
from .auth import MISSION_OPERATION_ROLES, READ_MISSION_ROLES, require
from .listing import list_visible_missions
from .models import (
    DelegationBody,
    MissionListQuery,
    MissionReadQuery,
    NarrowBody,
    NoQuery,
    ReasonBody,
    StageBody,
    SuccessorDocument,
    SuspendBody,
    parse_body,
    parse_query,
)
from .problems import not_found
from .spec import (
    Route,
    command_response,
    expected_version,
    idempotency_key,
    json_response,
)
from .state import LEDGER, PROJECTIONS, VIEW, run_sync

Command = Callable[[], CommandResult]


# -- the guard ------------------------------------------------------------------------------------


def load_visible(ledger: MissionLedger, principal: Principal, mission_id: str) -> dict[str, Any]:
    """The current Mission document, or the one 404 for "missing" and "not yours"."""
    try:
        document = ledger.get_mission(mission_id).to_dict(ledger.clock.now())
    except NotFound:
        raise not_found("Mission") from None
    if not may_view_mission(principal, document):
        raise not_found("Mission")
    return document


def _guarded(
    ledger: MissionLedger,
    principal: Principal,
    mission_id: str,
    operation: str,
    command: Command,
) -> CommandResult:
    if principal.role != OPERATOR:  # an operator sees and acts on every Mission: no pre-load
        document = load_visible(ledger, principal, mission_id)
        if not may_act_on_mission(principal, operation, document):
            raise Forbidden(
                f"{principal.actor} may not {operation} Mission {mission_id}",
                operation=operation,
                role=principal.role,
            )
    try:
        return command()
    except NotFound as error:
        if str(error).startswith("no Mission "):  # unknown or malformed id: the one 404
            raise not_found("Mission") from None
        raise


async def _run_guarded(
    request: web.Request, principal: Principal, operation: str, command: Command
) -> CommandResult:
    return await run_sync(
        request,
        _guarded,
        request.app[LEDGER],
        principal,
        request.match_info["id"],
        operation,
        command,
    )


# -- reads ----------------------------------------------------------------------------------------


async def list_missions(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *READ_MISSION_ROLES)
    query = parse_query(request, MissionListQuery)
    document = await run_sync(
        request,
        list_visible_missions,
        request.app[LEDGER],
        request.app[PROJECTIONS],
        request.app[VIEW],
        principal,
        query,
    )
    return json_response(document)


def _read(
    ledger: MissionLedger, principal: Principal, mission_id: str, query: MissionReadQuery
) -> dict[str, Any]:
    as_of = parse_rfc3339(query.as_of, field="as_of") if query.as_of is not None else None
    if as_of is None and query.version is None:
        try:
            document = ledger.mission_as_of(mission_id)
        except NotFound:
            raise not_found("Mission") from None
        if not may_view_mission(principal, document):
            raise not_found("Mission")
        return document
    load_visible(ledger, principal, mission_id)
    return ledger.mission_as_of(mission_id, as_of=as_of, version=query.version)


async def get_mission(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *READ_MISSION_ROLES)
    query = parse_query(request, MissionReadQuery)
    if query.as_of is not None and query.version is not None:
        raise InvalidInput("give as_of or version, not both", field="version")
    document = await run_sync(
        request, _read, request.app[LEDGER], principal, request.match_info["id"], query
    )
    return json_response(document, headers={"ETag": f'"{document["version"]}"'})


def _history(ledger: MissionLedger, principal: Principal, mission_id: str) -> dict[str, Any]:
    document = load_visible(ledger, principal, mission_id)
    return {"mission_id": document["mission_id"], "events": ledger.history(mission_id)}


async def get_events(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *READ_MISSION_ROLES)
    parse_query(request, NoQuery)
    document = await run_sync(
        request, _history, request.app[LEDGER], principal, request.match_info["id"]
    )
    return json_response(document)


# -- lifecycle ------------------------------------------------------------------------------------


async def suspend(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *MISSION_OPERATION_ROLES["suspend"])
    body, _ = await parse_body(request, SuspendBody)
    key, version, ledger = idempotency_key(request), expected_version(request), request.app[LEDGER]

    def command() -> CommandResult:
        return ledger.suspend(
            request.match_info["id"],
            actor=principal.actor,
            reason=body.reason,
            until=body.until,
            on_expiry=body.on_expiry,
            idempotency_key=key,
            expected_version=version,
        )

    return command_response(await _run_guarded(request, principal, "suspend", command))


def _simple(operation: str) -> Callable[[web.Request], Any]:
    """resume, revoke, complete: ``{reason?}``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        principal = await require(request, *MISSION_OPERATION_ROLES[operation])
        body, _ = await parse_body(request, ReasonBody)
        key, version = idempotency_key(request), expected_version(request)
        ledger = request.app[LEDGER]
        method = {"resume": ledger.resume, "revoke": ledger.revoke, "complete": ledger.complete}[
            operation
        ]

        def command() -> CommandResult:
            return method(
                request.match_info["id"],
                actor=principal.actor,
                reason=body.reason,
                idempotency_key=key,
                expected_version=version,
            )

        return command_response(await _run_guarded(request, principal, operation, command))

    handler.__name__ = operation
    return handler


resume = _simple("resume")
revoke = _simple("revoke")
complete = _simple("complete")


async def narrow(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *MISSION_OPERATION_ROLES["narrow"])
    body, raw = await parse_body(request, NarrowBody, required=True)
    key, version, ledger = idempotency_key(request), expected_version(request), request.app[LEDGER]

    def command() -> CommandResult:
        return ledger.narrow(
            request.match_info["id"],
            raw["authority_set"],
            actor=principal.actor,
            reason=body.reason,
            idempotency_key=key,
            expected_version=version,
        )

    return command_response(await _run_guarded(request, principal, "narrow", command))


async def stage(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *MISSION_OPERATION_ROLES["stage"])
    body, _ = await parse_body(request, StageBody)
    key, version, ledger = idempotency_key(request), expected_version(request), request.app[LEDGER]

    def command() -> CommandResult:
        return ledger.advance_stage(
            request.match_info["id"],
            actor=principal.actor,
            to_stage=body.to,
            reason=body.reason,
            idempotency_key=key,
            expected_version=version,
        )

    return command_response(await _run_guarded(request, principal, "stage", command))


async def delegate(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *MISSION_OPERATION_ROLES["delegate"])
    body, raw = await parse_body(request, DelegationBody, required=True)
    key, version, ledger = idempotency_key(request), expected_version(request), request.app[LEDGER]

    def command() -> CommandResult:
        return ledger.delegate(
            request.match_info["id"],
            agent=body.agent,
            authority_set=raw["authority_set"],
            actor=principal.actor,
            expires_at=body.expires_at,
            idempotency_key=key,
            expected_version=version,
        )

    result = await _run_guarded(request, principal, "delegate", command)
    location = f"/missions/{result.document['mission_id']}"
    return command_response(result, status=201, location=location)


async def successor(request: web.Request) -> web.StreamResponse:
    principal = await require(request, *MISSION_OPERATION_ROLES["successor"])
    _, raw = await parse_body(request, SuccessorDocument, required=True)
    key, ledger = idempotency_key(request), request.app[LEDGER]
    mission_id = request.match_info["id"]
    document = {**raw, "predecessor": mission_id}

    def command() -> CommandResult:
        return ledger.propose(document, actor=principal.actor, idempotency_key=key)

    result = await _run_guarded(request, principal, "successor", command)
    location = f"/proposals/{result.document['proposal_id']}"
    return command_response(result, status=201, location=location)


# -- the table ------------------------------------------------------------------------------------

_COMMAND_HEADERS = ("If-Match", "Idempotency-Key")
_MISSION_OPS = "missions"


def _op(
    name: str,
    handler: Callable[[web.Request], Any],
    body: Any,
    summary: str,
    *,
    operation: str | None = None,
    required: bool = False,
    status: int = 200,
    result: str = "MissionResult",
    headers: tuple[str, ...] = _COMMAND_HEADERS,
    description: str = "",
) -> Route:
    """A ``POST /missions/{id}/<name>`` command route."""
    operation = operation or name
    return Route(
        "POST",
        f"/missions/{{id}}/{name}",
        handler,
        f"{operation}Mission",
        summary,
        _MISSION_OPS,
        {status: result},
        body=body,
        body_required=required,
        headers=headers,
        roles=MISSION_OPERATION_ROLES[operation],
        description=description,
    )


ROUTES: tuple[Route, ...] = (
    Route(
        "GET",
        "/missions",
        list_missions,
        "listMissions",
        "List Missions visible to the caller (filters and cursor paging)",
        _MISSION_OPS,
        {200: "MissionList"},
        query=MissionListQuery,
        roles=READ_MISSION_ROLES,
        description="Reads the mission index projection; ledger_position is the position the "
        "answer reflects. A harness sees its agent's Missions, a receiver those in its scope.",
    ),
    Route(
        "GET",
        "/missions/{id}",
        get_mission,
        "getMission",
        "Read a Mission: now, as it was at as_of, or at a version (with the events it rests on)",
        _MISSION_OPS,
        {200: "Mission"},
        query=MissionReadQuery,
        roles=READ_MISSION_ROLES,
    ),
    Route(
        "GET",
        "/missions/{id}/events",
        get_events,
        "getMissionEvents",
        "A Mission's events, oldest first, with their hashes",
        _MISSION_OPS,
        {200: "EventList"},
        roles=READ_MISSION_ROLES,
    ),
    _op(
        "suspend",
        suspend,
        SuspendBody,
        "Suspend a Mission (and, reversibly, its live descendants)",
    ),
    _op(
        "resume",
        resume,
        ReasonBody,
        "Resume a suspended Mission and the descendants its suspension suspended",
    ),
    _op("revoke", revoke, ReasonBody, "Revoke a Mission; live descendants are cascaded"),
    _op("complete", complete, ReasonBody, "Complete a Mission; live descendants are cascaded"),
    _op(
        "narrow",
        narrow,
        NarrowBody,
        "Replace the Authority Set with a subset of it",
        required=True,
    ),
    _op("stage", stage, StageBody, "Advance to the next (or the named later) stage"),
    _op(
        "delegations",
        delegate,
        DelegationBody,
        "Delegate a child Mission to another agent (a subset of this Mission's authority)",
        operation="delegate",
        required=True,
        status=201,
        description="Location names the child Mission; If-Match applies to the parent.",
    ),
    _op(
        "successor",
        successor,
        SuccessorDocument,
        "Propose a successor (a widening) of this Mission; its approval supersedes it",
        required=True,
        status=201,
        result="ProposalResult",
        headers=("Idempotency-Key",),
        description="The body is a proposal document without predecessor (the route sets it). "
        "The proposal is pending; If-Match does not apply (nothing changes on this Mission "
        "until the approval, which supersedes it).",
    ),
)
