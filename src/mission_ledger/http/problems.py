"""Errors as ``application/problem+json`` (RFC 9457), mapped once from the error hierarchy.

Every error body is ``{"type": "about:blank", "title", "status", "code", "detail"}`` plus the
error's details (``field``, ``current_version``, ``current_state``, ``mission_denial_reason``,
…). ``code`` is the stable machine code of :mod:`mission_ledger.errors`; the HTTP layer adds a
few errors of its own to that hierarchy here:

    MissionLedgerError
    ├── Unauthorized (401)          no or an invalid bearer token (+ WWW-Authenticate)
    ├── Forbidden (403)
    │   └── InsufficientScope       the role may never use these routes (SSF: + WWW-Authenticate
    │                               error="insufficient_scope", RFC 6750 §3.1)
    ├── TooManyRequests (429)       + Retry-After (seconds)
    ├── Unavailable (503)
    │   ├── StaleView               the read side did not reach min_position in time
    │   └── ViewUnavailable         the live authorization view is not current (fail closed)
    ├── InvalidInput (400)
    │   ├── InvalidJson             the body is not JSON (or not UTF-8)
    │   ├── UnsupportedMediaType    415: a body that is not application/json
    │   └── PayloadTooLarge         413: a body over the configured limit
    └── MethodNotAllowed (405)      a known path with another method

:func:`error_middleware` turns every exception into such a response. Only a genuine bug (an
exception outside the hierarchy) becomes a 500, and it is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import json
import logging
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import (
    Forbidden,
    InvalidInput,
    MissionLedgerError,
    NotFound,
    TooManyRequests,
    Unavailable,
)

PROBLEM_JSON = "application/problem+json"
REALM = "mission-ledger"
log = logging.getLogger("mission_ledger.http")


class Unauthorized(MissionLedgerError):
    """No bearer token, or one that does not authenticate a live principal."""

    code = "unauthorized"
    http_status = 401
    exit_code = 4

    def __init__(self, description: str, *, token_given: bool, error: str | None = None) -> None:
        super().__init__(description)
        self.token_given = token_given
        self.error = error  # an RFC 6750 §3.1 code other than the default invalid_token

    def www_authenticate(self) -> str:
        if self.error is not None:
            return f'Bearer realm="{REALM}", error="{self.error}"'
        if self.token_given:
            return f'Bearer realm="{REALM}", error="invalid_token"'
        return f'Bearer realm="{REALM}"'


class InsufficientScope(Forbidden):
    """A valid token whose role may never use these routes (RFC 6750 §3.1 insufficient_scope);
    the SSF routes answer it with a Bearer challenge, as SSF receivers expect."""

    def www_authenticate(self) -> str:
        return f'Bearer realm="{REALM}", error="insufficient_scope"'


class InvalidJson(InvalidInput):
    """The request body is not well-formed JSON."""

    code = "invalid_json"


class UnsupportedMediaType(InvalidInput):
    """A request body in another media type than ``application/json``."""

    code = "unsupported_media_type"
    http_status = 415


class PayloadTooLarge(InvalidInput):
    """A request body larger than the server's limit (``--max-body-bytes``)."""

    code = "payload_too_large"
    http_status = 413


class StaleView(Unavailable):
    """A read asked for ``min_position`` and the read side did not get there in time."""

    code = "stale_view"


class ViewUnavailable(Unavailable):
    """The live authorization view is not current (its tailer is down or lags): an answer that
    has no check-result body (AgentPass) fails closed with this 503."""

    code = "view_unavailable"


class MethodNotAllowed(MissionLedgerError):
    code = "method_not_allowed"
    http_status = 405
    exit_code = 2


def problem(
    status: int,
    code: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem+json response; ``extra`` members (``field``, …) are added when not None."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "code": code,
        "detail": detail,
    }
    body.update({k: v for k, v in extra.items() if v is not None and k not in body})
    return web.Response(
        status=status,
        text=json.dumps(body, ensure_ascii=False),
        content_type=PROBLEM_JSON,
        headers=headers,
    )


def error_response(error: MissionLedgerError) -> web.Response:
    """The problem response of an error of the hierarchy (its details become members)."""
    headers: dict[str, str] = {}
    if isinstance(error, Unauthorized | InsufficientScope):
        headers["WWW-Authenticate"] = error.www_authenticate()
    if isinstance(error, TooManyRequests):
        headers["Retry-After"] = str(error.retry_after)
    if error.http_status == 503:
        headers["Retry-After"] = "1"
    extra = {k: v for k, v in error.details.items() if k not in ("description", "code")}
    return problem(error.http_status, error.code, error.description, headers=headers, **extra)


def not_found(kind: str) -> NotFound:
    """The one 404 for an object that does not exist *or* that the caller may not see.

    The body is the same for every id, so it cannot tell one case from the other.
    """
    return NotFound(f"no such {kind} (or it is not visible to this principal)")


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    status = exc.status
    if status == 413:
        return error_response(
            PayloadTooLarge(
                f"the request body is larger than this server accepts "
                f"({exc.text or 'see --max-body-bytes'})",
                field="body",
            )
        )
    if status == 405:
        allowed = exc.headers.get("Allow", "")
        return problem(
            405,
            "method_not_allowed",
            f"this path does not accept that method; allowed: {allowed}",
            headers={"Allow": allowed},
        )
    if status == 404:
        return problem(404, "not_found", "no such resource; see /openapi.json for the API")
    code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return problem(status, code, exc.text or HTTPStatus(status).phrase)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map every exception to problem+json; a genuine bug is logged and becomes a 500."""
    try:
        return await handler(request)
    except MissionLedgerError as error:
        return error_response(error)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(
            500,
            "internal_error",
            "the server failed unexpectedly; the error is logged. Nothing was committed "
            "unless a later read shows it.",
        )
