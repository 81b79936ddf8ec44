"""``GET /openapi.json``: the OpenAPI 3.1 document, built from the same route table the router
registers (:class:`~.spec.Route`), the request models' JSON Schemas (pydantic), and the check
routes' own paths (``CHECK_OPENAPI_PATHS``). A test asserts that its paths and methods equal the
app's routes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from .problems import PROBLEM_JSON
from .spec import Route

REF = "#/components/schemas/{model}"
TEXT_PLAIN = "text/plain"
NO_CONTENT = ""  # a response without a body (Route.responses)
_PATH_PARAMETER = re.compile(r"\{(\w+)\}")

_ANY_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
_NULLABLE_STRING: dict[str, Any] = {"type": ["string", "null"]}
_COMMAND_MEMBERS: dict[str, Any] = {
    "changed": {"type": "boolean", "description": "False: nothing was written (a no-op)."},
    "replayed": {
        "type": "boolean",
        "description": "True: the first result of this Idempotency-Key, replayed.",
    },
    "ledger_position": {
        "type": ["integer", "null"],
        "description": "The position of the command's last event (send it as min_position to "
        "a check to read your write); null when nothing was written.",
    },
}

STATIC_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details; code is stable, detail says what to do.",
        "required": ["type", "title", "status", "code", "detail"],
        "properties": {
            "type": {"type": "string", "const": "about:blank"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "code": {"type": "string"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "The offending member (dotted path)."},
            "current_version": {"type": ["integer", "null"]},
            "current_state": {"type": "string"},
            "mission_denial_reason": {"type": "string"},
            "errors": {"type": "array", "items": _ANY_OBJECT},
        },
        "additionalProperties": True,
    },
    "Proposal": {
        "type": "object",
        "required": ["proposal_id", "state", "version", "intent_hash", "proposal_hash"],
        "properties": {
            "proposal_id": {"type": "string", "format": "uuid"},
            "state": {
                "type": "string",
                "enum": ["pending", "approved", "denied", "withdrawn", "expired"],
            },
            "version": {"type": "integer"},
            "issuer": {"type": "string"},
            "user": {"type": "string"},
            "agent": {"type": "string"},
            "task": _ANY_OBJECT,
            "intent": _ANY_OBJECT,
            "intent_hash": {"type": "string"},
            "authority_set": {"type": "array", "items": _ANY_OBJECT},
            "proposal_hash": {"type": "string"},
            "predecessor": _NULLABLE_STRING,
            "expires_at": {"type": "string", "format": "date-time"},
            "mission_id": _NULLABLE_STRING,
        },
        "additionalProperties": True,
    },
    "Mission": {
        "type": "object",
        "required": ["mission_id", "state", "version", "authority_set", "authority_hash"],
        "properties": {
            "mission_id": {"type": "string", "format": "uuid"},
            "state": {
                "type": "string",
                "enum": [
                    "active",
                    "suspended",
                    "revoked",
                    "completed",
                    "expired",
                    "cascaded",
                    "superseded",
                ],
            },
            "stored_state": {"type": "string"},
            "version": {"type": "integer"},
            "issuer": {"type": "string"},
            "user": {"type": "string"},
            "agent": {"type": "string"},
            "intent_hash": {"type": "string"},
            "authority_set": {"type": "array", "items": _ANY_OBJECT},
            "authority_hash": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "stage": _NULLABLE_STRING,
            "parent": {"type": ["object", "null"]},
            "children": {"type": "array", "items": _ANY_OBJECT},
            "predecessor": _NULLABLE_STRING,
            "successor": _NULLABLE_STRING,
            "head_hash": {"type": "string"},
            "as_of": {"type": "string", "format": "date-time"},
            "rests_on": {"type": "array", "items": _ANY_OBJECT},
        },
        "additionalProperties": True,
    },
    "ProposalResult": {
        "allOf": [
            {"$ref": "#/components/schemas/Proposal"},
            {"type": "object", "properties": _COMMAND_MEMBERS},
        ]
    },
    "MissionResult": {
        "allOf": [
            {"$ref": "#/components/schemas/Mission"},
            {"type": "object", "properties": _COMMAND_MEMBERS},
        ]
    },
    "ProposalList": {
        "type": "object",
        "required": ["proposals"],
        "properties": {"proposals": {"type": "array", "items": _ANY_OBJECT}},
    },
    "MissionList": {
        "type": "object",
        "required": ["missions", "next", "ledger_position"],
        "properties": {
            "missions": {"type": "array", "items": _ANY_OBJECT},
            "next": {
                "type": ["string", "null"],
                "description": "Pass as `after` for the next page; null on the last page.",
            },
            "ledger_position": {"type": "integer"},
        },
    },
    "EventList": {
        "type": "object",
        "required": ["mission_id", "events"],
        "properties": {
            "mission_id": {"type": "string"},
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["event_id", "version", "type", "timestamp", "hash", "prev_hash"],
                    "properties": {
                        "event_id": {"type": "string"},
                        "aggregate_id": {"type": "string"},
                        "version": {"type": "integer"},
                        "type": {"type": "string"},
                        "topic": {"type": "string"},
                        "timestamp": {"type": "string", "format": "date-time"},
                        "actor": {"type": "string"},
                        "hash": {"type": "string"},
                        "prev_hash": {"type": "string"},
                    },
                    "additionalProperties": True,
                },
            },
        },
    },
    "Health": {
        "type": "object",
        "required": ["status", "ledger_position", "view_position", "projection_lag"],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "ledger_position": {"type": "integer"},
            "view_position": {"type": "integer"},
            "view_healthy": {"type": "boolean"},
            "worker_alive": {"type": ["boolean", "null"]},
            "projection_lag": {"type": ["integer", "null"]},
            "outbox_worker_alive": {"type": ["boolean", "null"]},
            "outbox_lag": {"type": ["integer", "null"]},
            "ssf_polls_waiting": {"type": "integer"},
            "problems": {"type": "array", "items": {"type": "string"}},
        },
    },
    "OpenApiDocument": _ANY_OBJECT,
    "JwkSet": {
        "type": "object",
        "description": "RFC 7517 JWK Set: the public keys that sign this Authority's SETs.",
        "required": ["keys"],
        "properties": {
            "keys": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["kty", "kid", "alg", "use"],
                    "properties": {
                        "kty": {"type": "string"},
                        "kid": {"type": "string"},
                        "alg": {"type": "string", "enum": ["RS256", "ES256"]},
                        "use": {"type": "string", "enum": ["sig"]},
                    },
                    "additionalProperties": True,
                },
            }
        },
    },
}


def _problem_ref(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


ERROR_DESCRIPTIONS = {
    400: "Invalid input: malformed JSON, an unknown member, a wrong type (field names it).",
    401: "No or an invalid bearer token (WWW-Authenticate says which).",
    403: "The caller's role may not do this.",
    404: "No such object, or one the caller may not see (indistinguishable).",
    409: "Conflict: stale If-Match version (current_version), illegal transition "
    "(current_state), or an Idempotency-Key reused for another request.",
    413: "The body is larger than the server accepts.",
    415: "The body is not application/json.",
    429: "Too many requests; Retry-After says how many seconds to wait.",
    503: "The store or the read side is unavailable; retry.",
}


def _headers(route: Route) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    if "If-Match" in route.headers:
        params.append(
            {
                "name": "If-Match",
                "in": "header",
                "required": False,
                "description": 'The version you decided on, as an ETag ("3"); a mismatch is '
                "409 stale_version.",
                "schema": {"type": "string"},
            }
        )
    if "Idempotency-Key" in route.headers:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "Makes the command safe to retry: the same key and body replay "
                "the first result (and write nothing).",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    return params


def _query(model: type[BaseModel] | None, defs: Mapping[str, Any]) -> list[dict[str, Any]]:
    if model is None:
        return []
    schema = defs.get(model.__name__, {})
    required = set(schema.get("required", []))
    params = []
    for name, prop in schema.get("properties", {}).items():
        param: dict[str, Any] = {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": {k: v for k, v in prop.items() if k not in ("title", "description")},
        }
        if "description" in prop:
            param["description"] = prop["description"]
        params.append(param)
    return params


def _response(schema_name: str, status: int) -> dict[str, Any]:
    if schema_name == NO_CONTENT:
        return {"description": "No Content" if status == 204 else "OK, with an empty body."}
    if schema_name == TEXT_PLAIN:
        return {
            "description": "Prometheus text exposition format 0.0.4.",
            "content": {TEXT_PLAIN: {"schema": {"type": "string"}}},
        }
    headers: dict[str, Any] = {}
    if schema_name in ("Mission", "MissionResult", "Proposal", "ProposalResult"):
        headers["ETag"] = {
            "description": 'The version of the returned object ("3"); send it as If-Match.',
            "schema": {"type": "string"},
        }
    if status == 201:
        headers["Location"] = {
            "description": "The created object.",
            "schema": {"type": "string"},
        }
    response: dict[str, Any] = {
        "description": "OK" if status < 300 else "See the schema.",
        "content": {"application/json": {"schema": {"$ref": REF.format(model=schema_name)}}},
    }
    if status == 201:
        response["description"] = "Created"
    if headers:
        response["headers"] = headers
    return response


def _operation(route: Route, defs: Mapping[str, Any]) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _PATH_PARAMETER.findall(route.path)
    ]
    parameters += _query(route.query, defs)
    parameters += _headers(route)
    operation: dict[str, Any] = {
        "operationId": route.operation_id,
        "summary": route.summary,
        "tags": [route.tag],
        "responses": {
            str(status): _response(name, status) for status, name in route.responses.items()
        },
    }
    description = route.description
    if route.roles and not route.public:
        description = (description + "\n\n" if description else "") + (
            "Roles: " + ", ".join(route.roles) + "."
        )
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": {
                "application/json": {"schema": {"$ref": REF.format(model=route.body.__name__)}}
            },
        }
    errors = route.errors
    if route.public:
        operation["security"] = []
        errors = tuple(e for e in errors if e not in (401, 403))
    for status in errors:
        if str(status) not in operation["responses"]:
            operation["responses"][str(status)] = _problem_ref(ERROR_DESCRIPTIONS[status])
    return operation


def _model_schemas(routes: Iterable[Route]) -> dict[str, Any]:
    models: dict[str, type[BaseModel]] = {}
    for route in routes:
        for model in (route.body, route.query):
            if model is not None:
                models[model.__name__] = model
    _, top = models_json_schema(
        [(model, "validation") for model in models.values()], ref_template=REF
    )
    defs: dict[str, Any] = top.get("$defs", {})
    return defs


def build_document(
    routes: Iterable[Route],
    *,
    issuer: str,
    version: str,
    extra_paths: Mapping[str, Any] | None = None,
    extra_schemas: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``routes`` plus ``extra_paths`` (the check routes) and
    ``extra_schemas`` (response components other modules define, e.g. the SSF documents)."""
    routes = list(routes)
    schemas = _model_schemas(routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, schemas)
    for path, item in (extra_paths or {}).items():
        merged = paths.setdefault(path, {})
        for method, operation in item.items():
            operation = dict(operation)
            if path == "/agentpass/configuration":
                operation.setdefault("security", [])
            merged[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Mission ledger — the Authority for AI-agent delegation",
            "version": version,
            "description": "Proposals, Missions (bounded delegations of authority to AI "
            "agents), their hash-chained history, authorization checks (native, OpenID "
            "AuthZEN 1.0, AgentPass), and an OpenID Shared Signals Framework 1.0 transmitter "
            "(discovery, stream management, RFC 8936 poll delivery). Every route except "
            "/healthz, /openapi.json, /jwks.json, /agentpass/configuration and "
            "/.well-known/ssf-configuration needs `Authorization: Bearer <token>` "
            "(`mission-ledger tokens create`); /metrics accepts a token of any role; the /ssf "
            "routes need a receiver's. Errors are application/problem+json with a stable `code`.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": issuer}],
        "security": [{"bearer": []}],
        "tags": [
            {"name": "proposals", "description": "An agent's requests for a Mission."},
            {"name": "missions", "description": "Missions: reads, lifecycle, delegation."},
            {"name": "checks", "description": "Authorization checks (native and AuthZEN)."},
            {"name": "agentpass", "description": "AgentPass continuous authorization."},
            {"name": "operations", "description": "Health, metrics and this document."},
            {
                "name": "ssf",
                "description": "OpenID Shared Signals Framework 1.0 transmitter: discovery, "
                "stream management, poll delivery (RFC 8936) of Mission events.",
            },
        ],
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "A principal's token from `mission-ledger tokens create`.",
                }
            },
            "schemas": {
                **STATIC_SCHEMAS,
                **dict(extra_schemas or {}),
                **dict(sorted(schemas.items())),
            },
        },
    }
