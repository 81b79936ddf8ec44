"""Request bodies and query strings, checked at the boundary (pydantic v2, ``extra="forbid"``).

The models check shape and JSON types (strict: ``"5"`` is not an integer, ``5`` is not a
string); the domain still checks meaning (URIs, Authority Set rules, states) and names the field
itself. Handlers hand the ledger the *raw* JSON values that passed the model, so what the domain
validates and stores is exactly what the client sent (no defaults filled in).

Errors: a body that is not JSON → 400 ``invalid_json``; a body in another media type → 415; a
body over the limit → 413; a value of the wrong type, a missing or an unknown member → 400
``invalid_request`` whose ``field`` is the member's dotted path (``authority_set.0.actions``).
"""

from __future__ import annotations

import json
from typing import Any, Literal, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..domain.errors import InvalidInput
from .problems import InvalidJson, PayloadTooLarge, UnsupportedMediaType
from .state import OPTIONS

M = TypeVar("M", bound=BaseModel)


class Body(BaseModel):
    """A request body: unknown members are refused, types are strict."""

    model_config = ConfigDict(extra="forbid", strict=True)


class Query(BaseModel):
    """A query string: unknown parameters are refused; numbers are parsed from text."""

    model_config = ConfigDict(extra="forbid")


# -- documents ------------------------------------------------------------------------------------


class Task(Body):
    """The AgentPass task the Mission serves."""

    id: str
    description: str


class Intent(Body):
    """The drafts' Mission Intent."""

    goal: str
    resources: list[str]
    expires_at: str = Field(description="RFC 3339 instant")
    goal_lang: str | None = None
    constraints: Any = None
    success_criteria: Any = None
    purpose: Any = None
    controls: Any = None


class AuthorityEntry(Body):
    """One ``mission_resource_access`` entry of an Authority Set."""

    type: Literal["mission_resource_access"]
    resource: str = Field(description="absolute URI, or a prefix pattern ending in *")
    actions: list[str]
    constraints: dict[str, Any] | None = Field(
        default=None, description="not_before, not_after, stage, max_calls"
    )
    delegation: dict[str, Any] | None = Field(
        default=None,
        description="max_depth, allowed_delegates?, children? "
        "{max_children, max_child_depth, allowed_child_actors}",
    )


class HolderKey(Body):
    jwk: dict[str, Any]


class SuccessorDocument(Body):
    """A proposal document; for a successor the route itself sets ``predecessor``."""

    user: str
    agent: str
    task: Task
    intent: Intent
    authority_set: list[AuthorityEntry]
    stages: list[str] | None = None
    cnf: HolderKey | None = None
    attestations: list[dict[str, Any]] | None = None


class ProposalDocument(SuccessorDocument):
    """What an agent's harness proposes (the CLI's ``propose --file`` document)."""

    predecessor: str | None = Field(
        default=None, description="mission_id of the Mission this proposal widens"
    )


# -- commands -------------------------------------------------------------------------------------


class ApproveBody(Body):
    authority_set: list[AuthorityEntry] | None = Field(
        default=None, description="grant this instead of the proposed Authority Set"
    )
    evidence: Any = None
    method: Literal["manual", "template", "policy"] = "manual"
    template_id: str | None = None
    template_version: str | None = None
    rule_ids: list[str] = Field(default_factory=list)
    allow_wildcard: bool = False
    wildcard_reason: str | None = None
    expires_at: str | None = Field(default=None, description="end earlier than proposed")


class ReasonBody(Body):
    reason: str | None = None


class SuspendBody(Body):
    reason: str | None = None
    until: str | None = Field(default=None, description="deadline of the suspension (RFC 3339)")
    on_expiry: Literal["resume", "revoke"] | None = None


class NarrowBody(Body):
    authority_set: list[AuthorityEntry]
    reason: str | None = None


class StageBody(Body):
    to: str | None = Field(default=None, description="the stage to move to (default: next)")
    reason: str | None = None


class DelegationBody(Body):
    agent: str
    authority_set: list[AuthorityEntry]
    expires_at: str | None = None


# -- queries --------------------------------------------------------------------------------------


class ProposalListQuery(Query):
    state: str | None = None


class MissionListQuery(Query):
    state: str | None = None
    user: str | None = None
    agent: str | None = None
    parent: str | None = None
    limit: int = Field(default=100, ge=1, le=500)
    after: str | None = Field(default=None, description="the cursor of the previous page")
    min_position: int | None = Field(
        default=None,
        ge=0,
        description="wait (at most 2 s) until the index reflects this ledger position "
        "(a command's ledger_position): read your own writes",
    )


class MissionReadQuery(Query):
    as_of: str | None = Field(default=None, description="RFC 3339 instant")
    version: int | None = Field(default=None, ge=1)


class NoQuery(Query):
    pass


# -- SSF (the management API's bodies are checked by StreamService; see routes_ssf) -------------


class SsfBody(BaseModel):
    """An SSF request body as documented: SSF tells transmitters to ignore what they do not
    understand, so unknown members are allowed (and ignored)."""

    model_config = ConfigDict(extra="allow", strict=True)


class SsfDelivery(SsfBody):
    method: Literal["urn:ietf:rfc:8935", "urn:ietf:rfc:8936"] = Field(
        description="urn:ietf:rfc:8936 (poll; the transmitter assigns endpoint_url) or "
        "urn:ietf:rfc:8935 (push to the receiver's endpoint_url)"
    )
    endpoint_url: str | None = Field(
        default=None, description="push: the receiver's URL; poll: omit (or the assigned URL)"
    )
    authorization_header: str | None = Field(
        default=None,
        description="push: the Authorization header value to send, verbatim (never returned)",
    )


class StreamCreateBody(SsfBody):
    """The receiver-supplied members of a Stream Configuration (SSF §8.1.1.1)."""

    delivery: SsfDelivery | None = Field(default=None, description="absent: poll")
    events_requested: list[str] | None = None
    description: str | None = None
    mission_capabilities_supported: list[str] | None = Field(
        default=None,
        description='extension: the Mission drafts\' capabilities, e.g. ["authority_changed"]',
    )
    set_signing_alg: Literal["RS256", "ES256"] | None = Field(
        default=None, description="extension: the stream's SET signing algorithm (RS256 default)"
    )


class StreamUpdateBody(StreamCreateBody):
    """PATCH / PUT (SSF §8.1.1.3–4): ``stream_id`` plus receiver-supplied members;
    transmitter-supplied members may be sent only with their current values."""

    stream_id: str


class StreamStatusBody(SsfBody):
    stream_id: str
    status: Literal["enabled", "paused", "disabled"]
    reason: str | None = None


class SubjectBody(SsfBody):
    stream_id: str
    subject: dict[str, Any] = Field(
        description="an RFC 9493 / SSF subject identifier, e.g. "
        '{"format": "opaque", "id": MISSION_ID}'
    )
    verified: bool | None = Field(default=None, description="add only; absent means true")


class VerificationBody(SsfBody):
    stream_id: str
    state: str | None = Field(default=None, description="echoed in the verification SET")


class SetError(BaseModel):
    """One ``setErrs`` entry (RFC 8936 §2.4)."""

    model_config = ConfigDict(extra="ignore", strict=True)

    err: str = Field(min_length=1, max_length=256, description="an RFC 8935 §2.4 error code")
    description: str = Field(default="", max_length=4096)


class PollBody(BaseModel):
    """An RFC 8936 §2.2 poll request; ``{}`` is a valid (long) poll, unknown members are
    ignored, wrong types are 400."""

    model_config = ConfigDict(extra="ignore", strict=True, populate_by_name=True)

    max_events: int | None = Field(
        default=None,
        ge=0,
        alias="maxEvents",
        description="at most this many SETs (0: acknowledge only); absent: no limit",
    )
    return_immediately: bool = Field(
        default=False,
        alias="returnImmediately",
        description="false (default): long poll, wait until a SET is available or the "
        "server's poll timeout passes",
    )
    ack: list[str] = Field(default_factory=list, description="jti values received and kept")
    set_errs: dict[str, SetError] = Field(
        default_factory=dict,
        alias="setErrs",
        description="jti → {err, description} for SETs that failed validation",
    )


class StreamIdQuery(Query):
    stream_id: str | None = Field(default=None, description="the stream (32 hex digits)")


# -- parsing --------------------------------------------------------------------------------------


def _field(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "body"


def invalid_from(error: ValidationError, *, where: str = "body") -> InvalidInput:
    """The first pydantic error as :class:`InvalidInput` naming its field (all in ``errors``)."""
    problems = []
    for item in error.errors(include_url=False, include_context=False, include_input=False):
        loc = tuple(item["loc"])
        field = _field(loc) if loc else where
        if item["type"] == "extra_forbidden":
            message = f"unknown {'parameter' if where == 'query' else 'member'} {field!r}"
        elif item["type"] == "missing":
            message = f"{field} is required"
        else:
            message = f"{field}: {item['msg']}"
        problems.append({"field": field, "message": message})
    first = problems[0]
    detail = first["message"]
    if len(problems) > 1:
        detail += f" (and {len(problems) - 1} more; see errors)"
    return InvalidInput(detail, field=first["field"], errors=problems)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request, *, required: bool) -> Any:
    """The request's JSON body, ``None`` when empty and not required; 400/413/415 otherwise."""
    limit = request.app[OPTIONS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the request body has {request.content_length} bytes; this server accepts at "
            f"most {limit}",
            field="body",
            max_body_bytes=limit,
        )
    raw = await request.read()  # aiohttp enforces client_max_size (= limit) → 413
    if not raw.strip():
        if required:
            raise InvalidInput("this request needs a JSON body", field="body")
        return None
    if not _is_json(request.content_type):
        raise UnsupportedMediaType(
            f"request bodies must be application/json, not {request.content_type}",
            field="Content-Type",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidJson("the request body is not UTF-8 text", field="body") from None
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidJson(
            f"the request body is not valid JSON: {error.msg} "
            f"(line {error.lineno}, column {error.colno})",
            field="body",
        ) from None
    except (ValueError, RecursionError) as error:
        raise InvalidJson(f"the request body is not valid JSON: {error}", field="body") from None


async def parse_body(
    request: web.Request, model: type[M], *, required: bool = False
) -> tuple[M, dict[str, Any]]:
    """Validate the body against ``model``; returns the model and the raw JSON object."""
    raw = await read_json(request, required=required)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"the request body must be a JSON object, not {type(raw).__name__}", field="body"
        )
    try:
        return model.model_validate(raw), raw
    except ValidationError as error:
        raise invalid_from(error) from None


def parse_query(request: web.Request, model: type[M]) -> M:
    """Validate the query string against ``model`` (a repeated parameter is refused)."""
    values: dict[str, str] = {}
    for key, value in request.query.items():
        if key in values:
            raise InvalidInput(f"query parameter {key!r} is given twice", field=key)
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise invalid_from(error, where="query") from None
