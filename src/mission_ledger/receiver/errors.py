"""What the receiver SDK raises.

Two families, both under :class:`~mission_ledger.errors.MissionLedgerError` (``code`` for
machines, ``description`` for people):

**Talking to a transmitter** — discovery, stream management, polling, the JWKS::

    ReceiverError
    ├── DiscoveryError             the metadata could not be fetched or is not valid SSF metadata
    ├── IssuerMismatch             ``issuer``/``iss`` is not the issuer used (SSF §7.2, §8.1.1)
    ├── InsecureUrl                a URL is not https (plain http only to loopback, or when allowed)
    ├── InvalidResponse            a transmitter answer is not the JSON it must be
    ├── TransmitterUnavailable     network error, timeout: retrying may help
    ├── JwksUnavailable            the JWKS cannot be fetched or is not a JWK Set: retrying may help
    └── TransmitterError           the transmitter answered an HTTP error (``status``, ``body``)
        ├── TransmitterBadRequest      400
        ├── TransmitterUnauthorized    401 (``www_authenticate``)
        ├── TransmitterForbidden       403
        ├── StreamNotFound             404
        ├── TransmitterConflict        409
        ├── TransmitterRateLimited     429 (``retry_after`` seconds, when given)
        └── TransmitterServerError     5xx and any other unexpected status

**Refusing a SET** — :class:`~mission_ledger.errors.SetVerificationError` and its subclasses from
:mod:`mission_ledger.ssf.rfc8417_set`, whose ``code`` is the RFC 8935 §2.4 ``err`` value to report
(push: the 400 body; poll: ``setErrs``), plus :class:`InvalidSetState` (SSF §8.1.4.1
``invalid_state``): a verification event echoing a ``state`` this receiver never sent.
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    InvalidSetAudience,
    InvalidSetIssuer,
    InvalidSetKey,
    InvalidSetRequest,
    InvalidSetSignature,
    MissionLedgerError,
    SetVerificationError,
)

__all__ = [
    "DiscoveryError",
    "InsecureUrl",
    "InvalidResponse",
    "InvalidSetAudience",
    "InvalidSetIssuer",
    "InvalidSetKey",
    "InvalidSetRequest",
    "InvalidSetSignature",
    "InvalidSetState",
    "IssuerMismatch",
    "JwksUnavailable",
    "ReceiverError",
    "SetVerificationError",
    "StreamNotFound",
    "TransmitterBadRequest",
    "TransmitterConflict",
    "TransmitterError",
    "TransmitterForbidden",
    "TransmitterRateLimited",
    "TransmitterServerError",
    "TransmitterUnauthorized",
    "TransmitterUnavailable",
    "error_for_status",
]


class ReceiverError(MissionLedgerError):
    """Root of the errors met while talking to a transmitter."""

    code = "receiver_error"
    http_status = 502
    exit_code = 1


class DiscoveryError(ReceiverError):
    """The Transmitter Configuration Metadata could not be fetched or is not valid."""

    code = "discovery_failed"


class IssuerMismatch(ReceiverError):
    """An ``issuer`` (metadata) or ``iss`` (stream configuration) is not the expected issuer."""

    code = "issuer_mismatch"


class InsecureUrl(ReceiverError):
    """A URL the SDK would call (and send a token to) is not https."""

    code = "insecure_url"


class InvalidResponse(ReceiverError):
    """The transmitter answered with a success status, but not with what SSF says it returns."""

    code = "invalid_response"


class TransmitterUnavailable(ReceiverError):
    """The transmitter could not be reached (network error, timeout); retrying may help."""

    code = "transmitter_unavailable"


class JwksUnavailable(ReceiverError):
    """The transmitter's JWKS could not be fetched or is not a JWK Set; retrying may help.

    Not a reason to refuse a SET: push answers 503 (the transmitter retries), poll leaves the SET
    unacknowledged (the transmitter redelivers it).
    """

    code = "jwks_unavailable"


class TransmitterError(ReceiverError):
    """The transmitter answered an HTTP error status."""

    code = "transmitter_error"

    def __init__(
        self, description: str, *, status: int, url: str, body: Any = None, **details: Any
    ) -> None:
        super().__init__(description, status=status, url=url, **details)
        self.status = status
        self.url = url
        self.body = body


class TransmitterBadRequest(TransmitterError):
    code = "bad_request"


class TransmitterUnauthorized(TransmitterError):
    """401: the token is missing, invalid, expired or revoked."""

    code = "unauthorized"

    def __init__(self, description: str, *, www_authenticate: str | None = None, **kw: Any):
        super().__init__(description, www_authenticate=www_authenticate, **kw)
        self.www_authenticate = www_authenticate


class TransmitterForbidden(TransmitterError):
    code = "forbidden"


class StreamNotFound(TransmitterError):
    """404: no such stream for this receiver (or the endpoint does not exist)."""

    code = "not_found"


class TransmitterConflict(TransmitterError):
    """409: e.g. the transmitter allows one stream per receiver and one exists."""

    code = "conflict"


class TransmitterRateLimited(TransmitterError):
    """429: too many requests (e.g. verification within ``min_verification_interval``)."""

    code = "rate_limited"

    def __init__(self, description: str, *, retry_after: float | None = None, **kw: Any):
        super().__init__(description, retry_after=retry_after, **kw)
        self.retry_after = retry_after


class TransmitterServerError(TransmitterError):
    """5xx, or any status the SSF operation does not define."""

    code = "transmitter_server_error"


class InvalidSetState(SetVerificationError):
    """A verification event's ``state`` is not one this receiver asked for (SSF §8.1.4.1)."""

    code = "invalid_state"


_BY_STATUS: dict[int, type[TransmitterError]] = {
    400: TransmitterBadRequest,
    401: TransmitterUnauthorized,
    403: TransmitterForbidden,
    404: StreamNotFound,
    409: TransmitterConflict,
    429: TransmitterRateLimited,
}


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the delay-seconds form; an HTTP date is not parsed)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def _summary(body: Any) -> str:
    """A short human rendering of an error body (problem+json, RFC 8935 or anything)."""
    if isinstance(body, dict):
        for key in ("detail", "description", "error_description", "title", "err", "error"):
            value = body.get(key)
            if isinstance(value, str) and value:
                return value[:300]
        return ""
    if isinstance(body, str):
        return body.strip()[:300]
    return ""


def error_for_status(
    operation: str,
    status: int,
    url: str,
    body: Any,
    headers: Any,
) -> TransmitterError:
    """The typed error for an HTTP error ``status`` of ``operation`` at ``url``."""
    cls = _BY_STATUS.get(status, TransmitterServerError)
    summary = _summary(body)
    description = f"{operation}: the transmitter answered HTTP {status} at {url}"
    if summary:
        description += f": {summary}"
    if cls is TransmitterUnauthorized:
        return TransmitterUnauthorized(
            description + " (check the receiver's bearer token)",
            status=status,
            url=url,
            body=body,
            www_authenticate=headers.get("WWW-Authenticate"),
        )
    if cls is TransmitterRateLimited:
        retry_after = _retry_after(headers.get("Retry-After"))
        return TransmitterRateLimited(
            description, status=status, url=url, body=body, retry_after=retry_after
        )
    return cls(description, status=status, url=url, body=body)
