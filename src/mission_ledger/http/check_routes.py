"""HTTP routes of the authorization checks (thin: parse, authorize, call :mod:`..checks`).

    POST /missions/{id}/check          native check (``at`` → historical, from the store)
    POST /access/v1/evaluation         OpenID AuthZEN 1.0 Access Evaluation
    POST /access/v1/evaluations        OpenID AuthZEN 1.0 Access Evaluations (batch)
    POST /agentpass/authorization-check  AgentPass continuous authorization
    GET  /agentpass/configuration      AgentPass Authority configuration (public)

The routes read the app's ledger and live view (:data:`~.state.LEDGER`, :data:`~.state.VIEW`)
and run every blocking call (a historical check, a wait for ``min_position``) in the app's
bounded executor (:func:`~.state.run_sync`). Bodies are read like every other route's
(:func:`~.models.read_json`): not ``application/json`` → 415, over the limit → 413, malformed →
400 ``invalid_json``; a missing, unknown or mistyped member → 400 naming it in ``field``.

``authorize(request, mission_id)`` comes from the server: it authenticates the caller and raises
(an aiohttp HTTP error or a :class:`~mission_ledger.errors.MissionLedgerError`) when the caller
may not check that Mission; a Mission outside the caller's scope is a 404, like an unknown one.
It is called with ``None`` only on the path to a 4xx for the body, so an unauthenticated caller
learns nothing about validation. In a batch, a per-item 404 answers that item ``not_found``; any
other refusal fails the whole request.

When the live view is not current, checks answer ``deny`` / ``view_unavailable`` with HTTP 503
(a body a PEP can act on) and AgentPass answers a 503 problem ``view_unavailable``. Every error
is raised, and the server's :func:`~.problems.error_middleware` turns it into
``application/problem+json`` (the one mapping of the error hierarchy, :mod:`.problems`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..checks import (
    CheckResult,
    agentpass_configuration,
    agentpass_scope,
    answer_authzen,
    check_at,
    evaluate_authzen_batch,
    parse_authzen_evaluation,
    parse_authzen_evaluations,
)
from ..domain.errors import InvalidInput, NotFound
from ..domain.timefmt import parse_rfc3339
from ..errors import Unavailable
from .models import read_json
from .problems import PROBLEM_JSON, StaleView, ViewUnavailable
from .spec import json_response
from .state import LEDGER, VIEW, run_sync

__all__ = ["CHECK_OPENAPI_PATHS", "MAX_MIN_POSITION_WAIT", "add_check_routes"]

Authorize = Callable[[web.Request, str | None], Awaitable[None]]

MAX_MIN_POSITION_WAIT = 2.0  # seconds a check may wait for the view to reach min_position
CHECK_MEMBERS = ("action", "resource", "at", "min_position")


async def _body(request: web.Request) -> dict[str, Any]:
    """The body as a JSON object (the shared reader: 400/413/415), or :class:`InvalidInput`."""
    body = await read_json(request, required=True)
    if not isinstance(body, dict):
        raise InvalidInput(
            f"the request body must be a JSON object, not {type(body).__name__}", field="body"
        )
    return body


def _answer(body: Any, status: int = 200) -> web.Response:
    """A check's JSON answer; a 503 (``view_unavailable``) says when to retry, as problems do."""
    return json_response(
        body, status=status, headers={"Retry-After": "1"} if status == 503 else None
    )


def _check_status(result: CheckResult) -> int:
    return 503 if result.reason == "view_unavailable" else 200


def _parse_check_body(body: dict[str, Any]) -> tuple[str, str, Any, int | None]:
    for name in body:
        if name not in CHECK_MEMBERS:
            raise InvalidInput(
                f"unknown member {name!r}; a check takes {', '.join(CHECK_MEMBERS)}",
                field=name,
            )
    action, resource = body.get("action"), body.get("resource")
    if not isinstance(action, str) or not action:
        raise InvalidInput("action is required and must be a non-empty string", field="action")
    if not isinstance(resource, str) or not resource:
        raise InvalidInput(
            "resource is required and must be a non-empty string (a URI)", field="resource"
        )
    at = parse_rfc3339(body["at"], field="at") if "at" in body else None
    min_position = body.get("min_position")
    if min_position is not None and (
        isinstance(min_position, bool) or not isinstance(min_position, int) or min_position < 0
    ):
        raise InvalidInput("min_position must be a non-negative integer", field="min_position")
    return action, resource, at, min_position


def _context_min_position(body: dict[str, Any]) -> int | None:
    """AuthZEN requests carry read-your-writes in ``context.min_position`` (open member)."""
    context = body.get("context")
    value = context.get("min_position") if isinstance(context, dict) else None
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise InvalidInput(
            "context.min_position must be a non-negative integer", field="context.min_position"
        )
    return value


async def _reach(request: web.Request, min_position: int | None, field: str) -> None:
    """Wait (bounded) until the live view reflects ``min_position``; 503 ``stale_view`` if not."""
    view = request.app[VIEW]
    if min_position is None or view.position >= min_position or not view.healthy():
        return  # an unhealthy view answers view_unavailable by itself
    if not await run_sync(request, view.wait_for, min_position, MAX_MIN_POSITION_WAIT):
        raise StaleView(
            f"the authorization view has not reached ledger position {min_position} "
            f"within {MAX_MIN_POSITION_WAIT:g} s (it is at {view.position}); retry",
            field=field,
            ledger_position=view.position,
        )


def add_check_routes(app: web.Application, *, authorize: Authorize) -> None:
    """Register the five check routes on ``app``.

    The app must carry :data:`~.state.LEDGER`, :data:`~.state.VIEW`, :data:`~.state.EXECUTOR`
    and :data:`~.state.OPTIONS` (the body limit), and :func:`~.problems.error_middleware`.
    """

    async def mission_check(request: web.Request) -> web.StreamResponse:
        mission_id = request.match_info["id"]
        try:
            body = await _body(request)
            action, resource, at, min_position = _parse_check_body(body)
        except InvalidInput:
            await authorize(request, None)
            raise
        await authorize(request, mission_id)
        ledger = request.app[LEDGER]
        if at is not None:
            result = await run_sync(
                request, check_at, ledger, mission_id, action=action, resource=resource, at=at
            )
            return _answer(result.to_dict())
        view = request.app[VIEW]
        await _reach(request, min_position, "min_position")
        result = view.check(mission_id, action=action, resource=resource, now=ledger.clock.now())
        return _answer(result.to_dict(), _check_status(result))

    async def evaluation(request: web.Request) -> web.StreamResponse:
        try:
            raw = await _body(request)
            query = parse_authzen_evaluation(raw)
            min_position = _context_min_position(raw)
        except InvalidInput:
            await authorize(request, None)
            raise
        await authorize(request, query.mission_id)
        await _reach(request, min_position, "context.min_position")
        now = request.app[LEDGER].clock.now()
        response, result = answer_authzen(request.app[VIEW], query, now=now)
        return _answer(response, _check_status(result))

    async def evaluations(request: web.Request) -> web.StreamResponse:
        try:
            raw = await _body(request)
            queries, semantic = parse_authzen_evaluations(raw)
            min_position = _context_min_position(raw)
        except InvalidInput:
            await authorize(request, None)
            raise
        hidden: set[str] = set()
        for mission_id in dict.fromkeys(q.mission_id for q in queries):
            try:
                await authorize(request, mission_id)
            except (web.HTTPNotFound, NotFound):
                hidden.add(mission_id)
        await _reach(request, min_position, "context.min_position")
        now = request.app[LEDGER].clock.now()
        response, results = evaluate_authzen_batch(
            request.app[VIEW], queries, semantic, now=now, hidden=hidden
        )
        status = 503 if any(r.reason == "view_unavailable" for r in results) else 200
        return _answer(response, status)

    async def authorization_check(request: web.Request) -> web.StreamResponse:
        try:
            authorization_id = (await _body(request)).get("authorization_id")
            if not isinstance(authorization_id, str) or not authorization_id:
                raise InvalidInput(
                    "authorization_id is required and must be a non-empty string",
                    field="authorization_id",
                )
        except InvalidInput:
            await authorize(request, None)
            raise
        await authorize(request, authorization_id)
        now = request.app[LEDGER].clock.now()
        try:
            scope = agentpass_scope(request.app[VIEW], authorization_id, now=now)
        except Unavailable as error:
            raise ViewUnavailable(error.description) from None
        if scope is None:
            return _answer({"error": "not_found"}, 404)
        return _answer({"scope": scope})

    async def configuration(request: web.Request) -> web.StreamResponse:
        return _answer(agentpass_configuration(request.app[LEDGER].issuer))

    app.router.add_post("/missions/{id}/check", mission_check)
    app.router.add_post("/access/v1/evaluation", evaluation)
    app.router.add_post("/access/v1/evaluations", evaluations)
    app.router.add_post("/agentpass/authorization-check", authorization_check)
    app.router.add_get("/agentpass/configuration", configuration)


# ---------------------------------------------------------------------------------------------
# OpenAPI 3.1
# ---------------------------------------------------------------------------------------------


def _string(description: str, **extra: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **extra}


def _problem_response(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            PROBLEM_JSON: {
                "schema": {
                    "type": "object",
                    "required": ["type", "title", "status", "code", "detail"],
                    "properties": {
                        "type": {"type": "string", "const": "about:blank"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "code": {"type": "string"},
                        "detail": {"type": "string"},
                        "field": {"type": "string"},
                    },
                }
            }
        },
    }


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASON = {
    "type": "string",
    "enum": [
        "allowed",
        "mission_inactive",
        "expired",
        "ancestor_inactive",
        "out_of_authority",
        "stage_not_active",
        "not_yet_valid",
        "not_found",
        "quota_exceeded",
        "view_unavailable",
    ],
}
_GRANT = {
    "type": "object",
    "description": "The Authority Set entry that allowed the request.",
    "required": ["entry_index", "entry"],
    "properties": {"entry_index": {"type": "integer"}, "entry": {"type": "object"}},
}
_CHECK_RESULT = {
    "type": "object",
    "required": ["decision", "reason", "mission_id", "ledger_position"],
    "properties": {
        "decision": {"type": "string", "enum": ["allow", "deny"]},
        "reason": _REASON,
        "mission_id": {"type": "string"},
        "mission_version": {"type": "integer"},
        "ledger_position": {
            "type": "integer",
            "description": "The ledger position (notification id) the answer reflects.",
        },
        "state": _string("The Mission's effective state (with mission_inactive / expired)."),
        "grant": _GRANT,
        "ancestor": _string("The ancestor Mission that is inactive or does not allow it."),
        "rests_on": {
            "type": "array",
            "description": "Historical checks: the events the answer was rebuilt from.",
            "items": {
                "type": "object",
                "properties": {
                    "mission_id": {"type": "string"},
                    "event_id": {"type": "string"},
                    "version": {"type": "integer"},
                    "type": {"type": "string"},
                    "timestamp": {"type": "string", "format": "date-time"},
                },
            },
        },
    },
}
_ENTITY_PROPERTIES = {"type": "object", "additionalProperties": True}
_SUBJECT = {
    "type": "object",
    "required": ["type", "id"],
    "properties": {
        "type": _string('"agent" is matched against the Mission\'s agent.'),
        "id": {"type": "string"},
        "properties": _ENTITY_PROPERTIES,
    },
}
_RESOURCE = {
    "type": "object",
    "required": ["type", "id"],
    "properties": {
        "type": {"type": "string"},
        "id": _string("The resource URI checked against the Authority Set."),
        "properties": _ENTITY_PROPERTIES,
    },
}
_ACTION = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": {"type": "string"}, "properties": _ENTITY_PROPERTIES},
}
_CONTEXT = {
    "type": "object",
    "required": ["mission_id"],
    "properties": {"mission_id": _string("The Mission the request is made under.")},
}
_AUTHZEN_DECISION = {
    "type": "object",
    "required": ["decision", "context"],
    "properties": {
        "decision": {"type": "boolean"},
        "context": {
            "type": "object",
            "required": ["reason", "mission_version", "ledger_position"],
            "properties": {
                "reason": _REASON,
                "detail": _string("Refines the reason, e.g. subject_mismatch."),
                "mission_version": {"type": ["integer", "null"]},
                "ledger_position": {"type": "integer"},
                "state": {"type": "string"},
                "ancestor": {"type": "string"},
                "grant": _GRANT,
            },
        },
    },
}
_AUTHZEN_REQUEST = {
    "type": "object",
    "required": ["subject", "resource", "action", "context"],
    "properties": {
        "subject": _SUBJECT,
        "resource": _RESOURCE,
        "action": _ACTION,
        "context": _CONTEXT,
    },
}
_AUTHZEN_BATCH = {
    "type": "object",
    "description": (
        "Top-level subject/action/resource/context are defaults; a member on an item replaces "
        "the default. An empty or missing evaluations list evaluates the top-level request."
    ),
    "properties": {
        "subject": _SUBJECT,
        "resource": _RESOURCE,
        "action": _ACTION,
        "context": _CONTEXT,
        "evaluations": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "subject": _SUBJECT,
                    "resource": _RESOURCE,
                    "action": _ACTION,
                    "context": _CONTEXT,
                },
            },
        },
        "options": {
            "type": "object",
            "properties": {
                "evaluations_semantic": {
                    "type": "string",
                    "enum": ["execute_all", "deny_on_first_deny", "permit_on_first_permit"],
                    "default": "execute_all",
                }
            },
        },
    },
}

CHECK_OPENAPI_PATHS: dict[str, Any] = {
    "/missions/{id}/check": {
        "post": {
            "summary": "May this Mission do this action on this resource (now, or at `at`)?",
            "operationId": "checkMission",
            "tags": ["checks"],
            "parameters": [
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["action", "resource"],
                            "properties": {
                                "action": {"type": "string", "minLength": 1},
                                "resource": {"type": "string", "minLength": 1},
                                "at": _string(
                                    "A past instant: answer from the stored history.",
                                    format="date-time",
                                ),
                                "min_position": {
                                    "type": "integer",
                                    "minimum": 0,
                                    "description": "Wait (at most 2 s) until the live view "
                                    "reflects this ledger position (read-your-writes).",
                                },
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json_body(_CHECK_RESULT, "The decision (allow or deny, with a reason)."),
                "400": _problem_response("Malformed body or unknown member."),
                "404": _problem_response("The caller may not check this Mission."),
                "503": {
                    "description": "The live view is not current (deny / view_unavailable), or "
                    "min_position was not reached in time (problem stale_view).",
                    "content": {
                        "application/json": {"schema": _CHECK_RESULT},
                        PROBLEM_JSON: _problem_response("")["content"][PROBLEM_JSON],
                    },
                },
            },
        }
    },
    "/access/v1/evaluation": {
        "post": {
            "summary": "OpenID AuthZEN 1.0 Access Evaluation",
            "operationId": "authzenEvaluation",
            "tags": ["checks"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _AUTHZEN_REQUEST}},
            },
            "responses": {
                "200": _json_body(_AUTHZEN_DECISION, "The decision and its reason."),
                "400": _problem_response("Malformed request (field names the member)."),
                "404": _problem_response("The caller may not check this Mission."),
                "503": _json_body(_AUTHZEN_DECISION, "Deny: view_unavailable."),
            },
        }
    },
    "/access/v1/evaluations": {
        "post": {
            "summary": "OpenID AuthZEN 1.0 Access Evaluations (batch)",
            "operationId": "authzenEvaluations",
            "tags": ["checks"],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _AUTHZEN_BATCH}},
            },
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["evaluations"],
                        "properties": {
                            "evaluations": {"type": "array", "items": _AUTHZEN_DECISION}
                        },
                    },
                    "One decision per evaluation, in order (fewer when a semantic "
                    "short-circuits). Missions the caller may not see answer not_found.",
                ),
                "400": _problem_response("Malformed request (field names the member)."),
                "503": {"description": "The live view is not current (view_unavailable)."},
            },
        }
    },
    "/agentpass/authorization-check": {
        "post": {
            "summary": "AgentPass continuous authorization: the current approved scopes",
            "operationId": "agentpassAuthorizationCheck",
            "tags": ["agentpass"],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["authorization_id"],
                            "properties": {
                                "authorization_id": _string("The Mission id.", minLength=1)
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["scope"],
                        "properties": {"scope": {"type": "array", "items": {"type": "string"}}},
                    },
                    "The delegation is active; these are its current scopes.",
                ),
                "400": _problem_response("Malformed request."),
                "404": _json_body(
                    {
                        "type": "object",
                        "required": ["error"],
                        "properties": {"error": {"type": "string", "const": "not_found"}},
                    },
                    "Revoked, suspended, expired, otherwise inactive or unknown: invalidate "
                    "sessions and tokens of this delegation.",
                ),
                "503": _problem_response("The live view is not current; retry."),
            },
        }
    },
    "/agentpass/configuration": {
        "get": {
            "summary": "AgentPass Authority configuration document",
            "operationId": "agentpassConfiguration",
            "tags": ["agentpass"],
            "responses": {
                "200": _json_body(
                    {
                        "type": "object",
                        "required": ["version", "authority", "trust_mode", "jwks_uri", "endpoints"],
                        "properties": {
                            "version": {"type": "string"},
                            "authority": {"type": "string"},
                            "trust_mode": {"type": "string", "const": "enterprise"},
                            "jwks_uri": {"type": "string", "format": "uri"},
                            "endpoints": {
                                "type": "object",
                                "properties": {
                                    "authorization_check": {"type": "string", "format": "uri"}
                                },
                            },
                        },
                    },
                    "Only implemented endpoints are listed.",
                )
            },
        }
    },
}


def _add_common_post_errors(paths: dict[str, Any]) -> None:
    """What every POST check route may also answer, as the other routes do (401 before the
    body is judged; 413/415 from the shared body reader, :func:`~.models.read_json`)."""
    common = {
        "401": "No or an invalid bearer token (WWW-Authenticate says which).",
        "413": "The body is larger than the server accepts.",
        "415": "The body is not application/json.",
    }
    for item in paths.values():
        if "post" in item:
            for status, description in common.items():
                item["post"]["responses"].setdefault(status, _problem_response(description))


_add_common_post_errors(CHECK_OPENAPI_PATHS)
