"""The RFC 8935 push endpoint: an aiohttp handler for the SETs a transmitter POSTs.

:func:`push_handler` answers, in this order:

1. ``401`` (empty) when ``expected_authorization`` is set and the ``Authorization`` header is not
   exactly that value (compared in constant time) — the transmitter sends the stream's
   ``delivery.authorization_header`` verbatim (SSF §6.1.1);
2. ``415`` when the ``Content-Type`` is not ``application/secevent+jwt`` (RFC 8935 §2);
3. ``400`` with ``Content-Type: application/json``, ``Content-Language: en`` and
   ``{"err": CODE, "description": TEXT}`` (RFC 8935 §2.3) when the SET is refused — by the
   verifier (``invalid_request``, ``invalid_key``, ``invalid_issuer``, ``invalid_audience``,
   ``authentication_failed``) or by ``on_event`` raising a
   :class:`~mission_ledger.errors.SetVerificationError` (e.g. ``invalid_state``);
4. ``503`` (``Retry-After``) when the transmitter's JWKS cannot be fetched: not the SET's fault,
   the transmitter retries;
5. ``500`` when ``on_event`` fails otherwise (the transmitter may retry; the SET was not lost);
6. ``202`` with an empty body once the SET is verified and ``on_event`` (the persistence hook:
   record or queue the SET; keep it short, the transmitter waits) has returned. A duplicate
   ``jti`` is answered exactly like the first delivery (RFC 8935 §2).
"""

from __future__ import annotations

import hmac
import inspect
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from ..errors import InvalidSetRequest, SetVerificationError
from ._http import read_limited
from .errors import JwksUnavailable
from .verifier import SetVerifier, VerifiedSet

__all__ = ["SET_CONTENT_TYPE", "EventHandler", "push_handler", "set_error_response"]

log = logging.getLogger("mission_ledger.receiver")

SET_CONTENT_TYPE = "application/secevent+jwt"
MAX_SET_BYTES = 64 * 1024
JWKS_RETRY_AFTER = "30"
_UNSUPPORTED_MEDIA_TYPE = json.dumps({"error": f"Content-Type must be {SET_CONTENT_TYPE}"})

#: ``on_event(verified_set)``, sync or async. Raising a SetVerificationError refuses the SET.
EventHandler = Callable[[VerifiedSet], Awaitable[object] | object]


async def call_handler(on_event: EventHandler, verified: VerifiedSet) -> None:
    result = on_event(verified)
    if result is not None and inspect.isawaitable(result):
        await result


def set_error_response(error: SetVerificationError) -> web.Response:
    """The RFC 8935 §2.3 error response for a refused SET."""
    body = {"err": error.code, "description": error.description}
    return web.Response(
        status=400,
        text=json.dumps(body),
        content_type="application/json",
        headers={"Content-Language": "en"},
    )


def push_handler(
    verifier: SetVerifier,
    on_event: EventHandler,
    *,
    expected_authorization: str | None = None,
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An aiohttp handler for ``POST`` SET deliveries (see the module doc)::

    app.router.add_post("/ssf/events", push_handler(verifier, tracker.apply,
                                                    expected_authorization=secret))
    """
    expected = expected_authorization.encode("utf-8") if expected_authorization else None

    async def handle(request: web.Request) -> web.StreamResponse:
        if expected is not None:
            given = request.headers.get("Authorization", "").encode("utf-8")
            if not hmac.compare_digest(given, expected):
                return web.Response(status=401)
        if request.content_type != SET_CONTENT_TYPE:
            return web.Response(
                status=415,
                text=_UNSUPPORTED_MEDIA_TYPE,
                content_type="application/json",
                headers={"Accept": SET_CONTENT_TYPE},
            )
        raw = await read_limited(request.content, MAX_SET_BYTES)
        try:
            if len(raw) > MAX_SET_BYTES:
                raise InvalidSetRequest(f"the SET is larger than {MAX_SET_BYTES} bytes")
            try:
                token = raw.decode("ascii").strip()
            except UnicodeDecodeError:
                raise InvalidSetRequest("the body is not a compact JWS (ASCII)") from None
            verified = await verifier.verify(token)
            await call_handler(on_event, verified)
        except SetVerificationError as error:
            log.warning(
                "refused a pushed SET",
                extra={"err": error.code, "description": error.description},
            )
            return set_error_response(error)
        except JwksUnavailable as error:
            log.warning("cannot verify a pushed SET now", extra={"error": error.description})
            return web.Response(status=503, headers={"Retry-After": JWKS_RETRY_AFTER})
        except Exception:
            log.exception("the push event handler failed")
            return web.Response(status=500)
        return web.Response(status=202)

    return handle
