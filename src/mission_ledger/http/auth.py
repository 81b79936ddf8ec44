"""Bearer tokens → principals, and the role each operation needs.

Every route needs ``Authorization: Bearer <token>`` except the public ones in
:data:`PUBLIC_ROUTES` (health, the OpenAPI document, the AgentPass configuration document).
A missing or malformed header is a 401 with ``WWW-Authenticate: Bearer realm="mission-ledger"``;
a token that does not authenticate adds ``error="invalid_token"``. ``/metrics`` needs a token of
any role: request counts and ledger positions describe the Authority's traffic.

The SSF routes (:func:`require_receiver`) speak RFC 6750 to the letter, as SSF receivers expect:
a token in the URI query (``?access_token=``) is never accepted (401, ``error="invalid_request"``),
and a valid token of another role gets 403 with ``error="insufficient_scope"``.

The access matrix itself (who may view and act on what) lives in
:mod:`mission_ledger.principals`; this module only decides *which* role set an operation needs
before anything is loaded, so that a role that can never do it gets 403 at once.
"""

from __future__ import annotations

from aiohttp import web

from ..domain.principal import APPROVER, AUDITOR, HARNESS, OPERATOR, RECEIVER
from ..principals import NeedsStore, Principal, require_role
from .problems import InsufficientScope, Unauthorized
from .state import AUTH_TIMEOUT, REGISTRY, run_bounded

PRINCIPAL = web.RequestKey("principal", Principal)  # request-local: the authenticated caller

PUBLIC_ROUTES = frozenset(
    {
        ("GET", "/healthz"),
        ("GET", "/openapi.json"),
        ("GET", "/agentpass/configuration"),
    }
)

# The roles that may ever perform an operation; the per-object rule comes after.
MISSION_OPERATION_ROLES: dict[str, tuple[str, ...]] = {
    "suspend": (OPERATOR,),
    "resume": (OPERATOR,),
    "revoke": (OPERATOR,),
    "stage": (OPERATOR,),
    "complete": (OPERATOR, HARNESS),
    "narrow": (OPERATOR, HARNESS),
    "delegate": (OPERATOR, HARNESS),
    "successor": (OPERATOR, HARNESS),
}
PROPOSAL_OPERATION_ROLES: dict[str, tuple[str, ...]] = {
    "submit": (OPERATOR, HARNESS),
    "approve": (OPERATOR, APPROVER),
    "deny": (OPERATOR, APPROVER),
    "withdraw": (OPERATOR, HARNESS),
}
READ_MISSION_ROLES = (OPERATOR, APPROVER, HARNESS, AUDITOR, RECEIVER)
READ_PROPOSAL_ROLES = (OPERATOR, APPROVER, HARNESS, AUDITOR)
CHECK_ROLES = (OPERATOR, APPROVER, HARNESS, AUDITOR, RECEIVER)


def bearer_token(request: web.Request) -> str:
    """The bearer token of the request, or :class:`Unauthorized`."""
    header = request.headers.get("Authorization")
    if header is None:
        raise Unauthorized(
            "this endpoint needs a bearer token: send 'Authorization: Bearer <token>' "
            "(tokens come from `mission-ledger tokens create`)",
            token_given=False,
        )
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(
            "the Authorization header must be 'Bearer <token>'", token_given=bool(token)
        )
    return token


async def authenticate(request: web.Request) -> Principal:
    """The authenticated principal of this request (cached on the request), or 401."""
    cached = request.get(PRINCIPAL)
    if isinstance(cached, Principal):
        return cached
    token = bearer_token(request)
    registry = request.app[REGISTRY]
    known = registry.authenticate_in_memory(token)  # the hot path: no thread hop, no store
    if isinstance(known, NeedsStore):
        principal = await run_bounded(
            request, AUTH_TIMEOUT, "authentication", registry.authenticate, token
        )
    else:
        principal = known
    if principal is None:
        raise Unauthorized(
            "the bearer token is not valid (unknown, revoked or malformed)", token_given=True
        )
    request[PRINCIPAL] = principal
    return principal


async def require(request: web.Request, *roles: str) -> Principal:
    """Authenticate, then 403 unless the principal has one of ``roles``."""
    principal = await authenticate(request)
    require_role(principal, *roles)
    return principal


async def require_receiver(request: web.Request) -> Principal:
    """Authenticate an SSF receiver (a ``receiver`` token in the Authorization header).

    A token in the URI query is refused before anything else (RFC 6750 §2.3: it leaks into logs
    and histories; the CAEP interoperability profile forbids accepting it); another role is
    403 ``insufficient_scope``."""
    if "access_token" in request.query:
        raise Unauthorized(
            "bearer tokens are accepted only in the Authorization header, never in the URI "
            "(RFC 6750 §2.3): send 'Authorization: Bearer <token>' and revoke a token that was "
            "put in a URL",
            token_given=True,
            error="invalid_request",
        )
    principal = await authenticate(request)
    if principal.role != RECEIVER:
        raise InsufficientScope(
            "the SSF endpoints are for receivers: use a token created with "
            "`mission-ledger tokens create --role receiver`",
            required_roles=[RECEIVER],
            role=principal.role,
        )
    return principal
