"""The SSF transmitter's HTTP surface: discovery (SSF §7) and the stream management API (§8).

Routes (paths relative to the issuer; :func:`routes` builds the table for one issuer):

=======================================  =====================================================
``GET  /.well-known/ssf-configuration``  Transmitter Configuration Metadata, public; also at
                                         every other path :func:`well_known_paths` names
``POST /ssf/stream``                     create a stream → 201 + the configuration
``GET  /ssf/stream[?stream_id=]``        one configuration, or (no ``stream_id``) an array
``PATCH|PUT /ssf/stream``                update / replace → 200 + the configuration
``DELETE /ssf/stream?stream_id=``        → 204
``GET  /ssf/status?stream_id=``          → 200 ``{stream_id, status, reason?}``
``POST /ssf/status``                     → 200 (the body's ``stream_id`` decides; a
                                         ``?stream_id`` in the query is tolerated)
``POST /ssf/subjects:add``               → 200, empty body
``POST /ssf/subjects:remove``            → 204
``POST /ssf/verify``                     → 204 (429 + ``Retry-After`` too soon after the last)
``POST /ssf/poll/{stream_id}``           RFC 8936 poll (:mod:`.rfc8936_poll`)
=======================================  =====================================================

Every /ssf route needs a receiver's bearer token in the Authorization header
(:func:`~.auth.require_receiver`: 401 with an RFC 6750 challenge, 403 ``insufficient_scope``
for other roles, a token in the URI query is never accepted). Responses carry
``Cache-Control: no-store``. Bodies must be ``application/json`` (else 415); malformed JSON or
invalid members are 400 problem+json naming the ``field`` (SSF defines no error body). The
handlers only authenticate, read JSON and hop into the executor: every SSF rule is
:class:`~mission_ledger.ssf.streams.StreamService`'s, which validates the raw JSON itself,
because SSF makes transmitters ignore members they do not understand (so the pydantic models
in :mod:`.models` document these bodies rather than police them). An unknown stream and
another receiver's give the same 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel

from ..domain.stream import POLL, PUSH
from ..principals import Principal
from ..ssf.streams import (
    ADD_SUBJECT_PATH,
    CONFIGURATION_PATH,
    REMOVE_SUBJECT_PATH,
    STATUS_PATH,
    VERIFICATION_PATH,
    ssf_configuration,
    well_known_paths,
)
from . import rfc8936_poll
from .auth import require_receiver
from .models import (
    StreamCreateBody,
    StreamIdQuery,
    StreamStatusBody,
    StreamUpdateBody,
    SubjectBody,
    VerificationBody,
    parse_query,
    read_json,
)
from .openapi import NO_CONTENT
from .rfc8936_poll import NO_STORE
from .spec import Handler, Route, json_response
from .state import STREAMS, run_sync

METADATA_CACHE = {"Cache-Control": "public, max-age=300"}
RECEIVER = ("receiver",)
SSF_ERRORS = (400, 401, 403, 404, 413, 415, 503)


# -- discovery ------------------------------------------------------------------------------------


def metadata_handler(issuer: str) -> Handler:
    document = ssf_configuration(issuer)

    async def metadata(request: web.Request) -> web.StreamResponse:
        """The Transmitter Configuration Metadata (SSF §7.1): public, cacheable."""
        return json_response(document, headers=METADATA_CACHE)

    return metadata


# -- helpers --------------------------------------------------------------------------------------


def _stream_id(request: web.Request) -> str | None:
    """``?stream_id`` (the only query parameter the SSF routes take)."""
    return parse_query(request, StreamIdQuery).stream_id


async def _json_object(request: web.Request, *, required: bool) -> Any:
    """The request's JSON body (``{}`` when empty and not required); the service checks it."""
    body = await read_json(request, required=required)
    return {} if body is None else body


def _no_content(status: int) -> web.Response:
    return web.Response(status=status, headers=NO_STORE)


async def _call(
    request: web.Request, method: Callable[..., Any], principal: Principal, *args: Any
) -> Any:
    return await run_sync(request, method, principal, *args)


# -- stream configuration (SSF §8.1.1) -----------------------------------------------------------


async def create_stream(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)  # tolerated, meaningless here
    body = await _json_object(request, required=False)
    config = await _call(request, request.app[STREAMS].create, principal, body)
    headers = {**NO_STORE, "Location": f"{CONFIGURATION_PATH}?stream_id={config['stream_id']}"}
    return json_response(config, status=201, headers=headers)


async def read_stream(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    stream_id = _stream_id(request)
    document = await _call(request, request.app[STREAMS].read, principal, stream_id)
    return json_response(document, headers=NO_STORE)


async def _update(request: web.Request, *, replace: bool) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)  # the body's stream_id decides
    body = await _json_object(request, required=True)
    service = request.app[STREAMS]
    config = await run_sync(request, service.update, principal, body, replace=replace)
    return json_response(config, headers=NO_STORE)


async def update_stream(request: web.Request) -> web.StreamResponse:
    return await _update(request, replace=False)


async def replace_stream(request: web.Request) -> web.StreamResponse:
    return await _update(request, replace=True)


async def delete_stream(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    stream_id = _stream_id(request)
    await _call(request, request.app[STREAMS].delete, principal, stream_id)
    return _no_content(204)


# -- status (SSF §8.1.2) --------------------------------------------------------------------------


async def read_status(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    stream_id = _stream_id(request)
    document = await _call(request, request.app[STREAMS].status, principal, stream_id)
    return json_response(document, headers=NO_STORE)


async def update_status(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)  # conformance clients append it; the body's stream_id decides
    body = await _json_object(request, required=True)
    document = await _call(request, request.app[STREAMS].set_status, principal, body)
    return json_response(document, headers=NO_STORE)


# -- subjects (SSF §8.1.3) and verification (§8.1.4) ----------------------------------------------


async def add_subject(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)
    body = await _json_object(request, required=True)
    await _call(request, request.app[STREAMS].add_subject, principal, body)
    return _no_content(200)  # SSF §8.1.3.2: 200 with an empty body


async def remove_subject(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)
    body = await _json_object(request, required=True)
    await _call(request, request.app[STREAMS].remove_subject, principal, body)
    return _no_content(204)


async def verify(request: web.Request) -> web.StreamResponse:
    principal = await require_receiver(request)
    _stream_id(request)
    body = await _json_object(request, required=True)
    await _call(request, request.app[STREAMS].verify, principal, body)
    return _no_content(204)


# -- the route table ------------------------------------------------------------------------------


def _route(
    method: str,
    path: str,
    handler: Handler,
    operation_id: str,
    summary: str,
    responses: dict[int, str],
    *,
    body: type[BaseModel] | None = None,
    body_required: bool = True,
    query: type[BaseModel] | None = StreamIdQuery,
    errors: tuple[int, ...] = SSF_ERRORS,
    description: str = "",
) -> Route:
    return Route(
        method,
        path,
        handler,
        operation_id,
        summary,
        "ssf",
        responses,
        body=body,
        body_required=body_required,
        query=query,
        roles=RECEIVER,
        errors=errors,
        description=description,
    )


def routes(issuer: str) -> tuple[Route, ...]:
    """The SSF routes of a transmitter whose issuer is ``issuer`` (the metadata is served at
    every path :func:`well_known_paths` names for it)."""
    handler = metadata_handler(issuer)
    discovery = tuple(
        Route(
            "GET",
            path,
            handler,
            "ssf_configuration" if index == 0 else f"ssf_configuration_{index + 1}",
            "SSF Transmitter Configuration Metadata (SSF 1.0 §7)"
            if index == 0
            else "The same metadata at the path a proxy that strips the issuer path forwards",
            "ssf",
            {200: "SsfConfiguration"},
            public=True,
            errors=(),
        )
        for index, path in enumerate(well_known_paths(issuer))
    )
    return (
        *discovery,
        _route(
            "POST",
            CONFIGURATION_PATH,
            create_stream,
            "ssf_create_stream",
            "Create a stream (SSF §8.1.1.1); no delivery → poll at a per-stream URL",
            {201: "StreamConfiguration"},
            body=StreamCreateBody,
            body_required=False,
            description="Location names the new stream. Several streams per receiver are "
            "allowed. Members other than the receiver-supplied ones are ignored.",
        ),
        _route(
            "GET",
            CONFIGURATION_PATH,
            read_stream,
            "ssf_read_stream",
            "Read a stream's configuration, or (without stream_id) an array of all yours",
            {200: "StreamConfigurationOrList"},
        ),
        _route(
            "PATCH",
            CONFIGURATION_PATH,
            update_stream,
            "ssf_update_stream",
            "Update a stream (SSF §8.1.1.3): present receiver-supplied members change",
            {200: "StreamConfiguration"},
            body=StreamUpdateBody,
            description="Transmitter-supplied members may be sent only with their current "
            "values (else 400). A poll delivery of just {method} keeps the assigned URL.",
        ),
        _route(
            "PUT",
            CONFIGURATION_PATH,
            replace_stream,
            "ssf_replace_stream",
            "Replace a stream (SSF §8.1.1.4): absent receiver-supplied members are removed",
            {200: "StreamConfiguration"},
            body=StreamUpdateBody,
            description="Without delivery the stream is reset to poll at its assigned URL.",
        ),
        _route(
            "DELETE",
            CONFIGURATION_PATH,
            delete_stream,
            "ssf_delete_stream",
            "Delete a stream (SSF §8.1.1.5); its queued SETs are dropped",
            {204: NO_CONTENT},
        ),
        _route(
            "GET",
            STATUS_PATH,
            read_status,
            "ssf_read_status",
            "A stream's status (SSF §8.1.2.1): enabled, paused or disabled",
            {200: "StreamStatus"},
        ),
        _route(
            "POST",
            STATUS_PATH,
            update_status,
            "ssf_update_status",
            "Change a stream's status (SSF §8.1.2.2): paused holds SETs, disabled drops them",
            {200: "StreamStatus"},
            body=StreamStatusBody,
        ),
        _route(
            "POST",
            ADD_SUBJECT_PATH,
            add_subject,
            "ssf_add_subject",
            "Include a subject again (SSF §8.1.3.2); never beyond the receiver's scope",
            {200: NO_CONTENT},
            body=SubjectBody,
        ),
        _route(
            "POST",
            REMOVE_SUBJECT_PATH,
            remove_subject,
            "ssf_remove_subject",
            "Exclude a subject, e.g. {format: opaque, id: MISSION_ID} (SSF §8.1.3.3)",
            {204: NO_CONTENT},
            body=SubjectBody,
        ),
        _route(
            "POST",
            VERIFICATION_PATH,
            verify,
            "ssf_verify",
            "Request a verification SET echoing state (SSF §8.1.4.2)",
            {204: NO_CONTENT},
            body=VerificationBody,
            errors=(*SSF_ERRORS, 429),
            description="429 with Retry-After when asked again within the stream's "
            "min_verification_interval.",
        ),
        *rfc8936_poll.ROUTES,
    )


# -- response documents (OpenAPI components) ------------------------------------------------------

_STRINGS: dict[str, Any] = {"type": "array", "items": {"type": "string"}}
_URL: dict[str, Any] = {"type": "string", "format": "uri"}

SCHEMAS: dict[str, Any] = {
    "SsfConfiguration": {
        "type": "object",
        "description": "Transmitter Configuration Metadata (SSF 1.0 §7.1).",
        "required": ["issuer"],
        "properties": {
            "spec_version": {"type": "string", "const": "1_0"},
            "issuer": _URL,
            "jwks_uri": _URL,
            "delivery_methods_supported": _STRINGS,
            "configuration_endpoint": _URL,
            "status_endpoint": _URL,
            "add_subject_endpoint": _URL,
            "remove_subject_endpoint": _URL,
            "verification_endpoint": _URL,
            "authorization_schemes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["spec_urn"],
                    "properties": {"spec_urn": {"type": "string"}},
                },
            },
            "default_subjects": {"type": "string", "enum": ["ALL", "NONE"]},
        },
        "additionalProperties": True,
    },
    "StreamConfiguration": {
        "type": "object",
        "description": "A Stream Configuration (SSF 1.0 §8.1.1) with this transmitter's two "
        "extensions, mission_capabilities_supported and set_signing_alg.",
        "required": ["stream_id", "iss", "aud", "delivery", "events_delivered"],
        "properties": {
            "stream_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
            "iss": _URL,
            "aud": {"type": "string"},
            "delivery": {
                "type": "object",
                "required": ["method", "endpoint_url"],
                "properties": {
                    "method": {"type": "string", "enum": [PUSH, POLL]},
                    "endpoint_url": _URL,
                },
            },
            "events_supported": _STRINGS,
            "events_requested": _STRINGS,
            "events_delivered": _STRINGS,
            "description": {"type": "string"},
            "min_verification_interval": {"type": "integer", "minimum": 0},
            "mission_capabilities_supported": _STRINGS,
            "set_signing_alg": {"type": "string", "enum": ["RS256", "ES256"]},
        },
        "additionalProperties": True,
    },
    "StreamConfigurationOrList": {
        "description": "With stream_id: that stream's configuration; without: an array of "
        "every stream of the caller ([] when none).",
        "oneOf": [
            {"$ref": "#/components/schemas/StreamConfiguration"},
            {"type": "array", "items": {"$ref": "#/components/schemas/StreamConfiguration"}},
        ],
    },
    "StreamStatus": {
        "type": "object",
        "required": ["stream_id", "status"],
        "properties": {
            "stream_id": {"type": "string"},
            "status": {"type": "string", "enum": ["enabled", "paused", "disabled"]},
            "reason": {"type": "string"},
        },
    },
    "PollResponse": {
        "type": "object",
        "description": "RFC 8936 §2.3: SETs by jti (compact JWS), and whether more wait.",
        "required": ["sets", "moreAvailable"],
        "properties": {
            "sets": {"type": "object", "additionalProperties": {"type": "string"}},
            "moreAvailable": {"type": "boolean"},
        },
    },
}


__all__ = ["NO_STORE", "SCHEMAS", "routes"]
