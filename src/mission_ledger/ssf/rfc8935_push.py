"""One RFC 8935 push attempt, as SSF 1.0 §6.1.1 profiles it, and what its answer means.

The request (:func:`push_once`): ``POST endpoint_url`` with the stored SET as the body (the same
bytes, so the same ``jti``, on every attempt), ``Content-Type: application/secevent+jwt``,
``Accept: application/json`` and — only when the receiver configured one — ``Authorization:``
its ``authorization_header`` verbatim. Never logged: the header, the SET.

The answer, classified into an :class:`Attempt` (the retry policy is a match on its ``kind``)::

    DELIVERED   any 2xx (RFC 8935 says 202; any 2xx means the receiver has it)
    PERMANENT   400 with err invalid_request, invalid_issuer, invalid_audience, invalid_state,
                an unknown err, or no RFC 8935 error body: retrying cannot help → dead letter
    SLOW        400 with err invalid_key, authentication_failed, access_denied; 401, 403 and
                the other 4xx (the receiver's configuration or keys may be fixed); a redirect
                (3xx, never followed: the receiver must update delivery.endpoint_url); a
                target the SSRF guard refuses (DNS or the operator's flags may change)
    FAST        network errors (refused, reset, DNS failure), timeouts (connect, total), 5xx,
                408, 425, 429 and anything else: transient → exponential backoff with jitter

``retry_after`` carries the ``Retry-After`` answer (seconds, or an HTTP-date turned into seconds
from now) of any non-2xx answer; the deliverer honours it within a cap. ``reported`` is the
receiver's own ``(err, description)`` for 400/401/403, recorded for the operator.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .push_client import PushClient, PushConnectError, PushProtocolError, PushTimeout
from .ssrf import ForbiddenPushTarget

__all__ = [
    "PERMANENT_ERRORS",
    "SET_CONTENT_TYPE",
    "SLOW_ERRORS",
    "Attempt",
    "Kind",
    "classify_answer",
    "parse_retry_after",
    "push_once",
]

SET_CONTENT_TYPE = "application/secevent+jwt"
#: RFC 8935 §2.4 / SSF errors that retrying the same SET cannot fix (unknown codes join them)
PERMANENT_ERRORS = frozenset(
    {"invalid_request", "invalid_issuer", "invalid_audience", "invalid_state"}
)
#: errors a receiver-side fix (a refreshed key, new credentials, a grant) may clear
SLOW_ERRORS = frozenset({"invalid_key", "authentication_failed", "access_denied"})
FAST_STATUSES = frozenset({408, 425, 429})
_MAX_DESCRIPTION = 300  # characters of a receiver's description kept in last_error


class Kind(enum.Enum):
    DELIVERED = "delivered"
    FAST = "fast"  # transient: the fast schedule
    SLOW = "slow"  # needs a fix on the receiver's side (or DNS, or flags): the slow schedule
    PERMANENT = "permanent"  # dead letter at once


@dataclass(frozen=True)
class Attempt:
    """What one push attempt came to."""

    kind: Kind
    error: str | None = None  # for the operator (last_error); never the SET or the header
    status: int | None = None  # the HTTP status, when there was an answer
    retry_after: float | None = None  # seconds the receiver asked us to wait
    reported: tuple[str, str | None] | None = None  # the receiver's (err, description)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP-date (RFC 9110 §10.2.3);
    None when absent or malformed; a date in the past is 0."""
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(int(text))
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:  # "-0000": UTC per RFC 5322
        moment = moment.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    return max(0.0, (moment - reference).total_seconds())


def _error_body(body: bytes) -> tuple[str, str | None] | None:
    """``(err, description)`` of an RFC 8935 error body, or None if it is not one."""
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(document, dict):
        return None
    err = document.get("err")
    if not isinstance(err, str) or not err:
        return None
    description = document.get("description")
    return err[:255], description[:1024] if isinstance(description, str) else None


def _describe(err: str, description: str | None) -> str:
    text = f"{err}: {description}" if description else err
    return text if len(text) <= _MAX_DESCRIPTION else text[: _MAX_DESCRIPTION - 1] + "…"


def classify_answer(
    status: int, body: bytes, retry_after: float | None, reason: str | None = None
) -> Attempt:
    """Classify an HTTP answer (``body``: what was read of it; only a 400's matters)."""
    if 200 <= status < 300:
        return Attempt(Kind.DELIVERED, status=status)
    label = f"HTTP {status}" + (f" {reason[:100]}" if reason else "")
    if status == 400:
        reported = _error_body(body)
        if reported is None:
            return Attempt(
                Kind.PERMANENT,
                f"{label} without an RFC 8935 error body",
                status,
                retry_after,
                ("http_400", None),
            )
        err, description = reported
        kind = Kind.SLOW if err in SLOW_ERRORS else Kind.PERMANENT
        return Attempt(
            kind, f"{label}: {_describe(err, description)}", status, retry_after, reported
        )
    if status in (401, 403):
        return Attempt(Kind.SLOW, label, status, retry_after, (f"http_{status}", reason))
    if status in FAST_STATUSES or status >= 500 or status < 400:
        return Attempt(Kind.FAST, label, status, retry_after)
    return Attempt(Kind.SLOW, label, status, retry_after)


def _failure(error: BaseException, client: PushClient) -> Attempt:
    """Classify what :meth:`PushClient.post` raised."""
    if isinstance(error, ForbiddenPushTarget):
        return Attempt(Kind.SLOW, f"push target refused: {error.description}")
    if isinstance(error, PushTimeout):
        return Attempt(
            Kind.FAST, f"timed out ({error.phase} timeout; total {client.total_timeout:g} s)"
        )
    if isinstance(error, PushConnectError):
        return Attempt(Kind.FAST, f"cannot connect: {error}"[:300])
    if isinstance(error, PushProtocolError | OSError):
        text = str(error) or type(error).__name__
        return Attempt(Kind.FAST, f"network error: {type(error).__name__}: {text}"[:300])
    if isinstance(error, ValueError):  # a header the client refuses to send
        return Attempt(Kind.SLOW, f"not sent: {error}"[:300])
    return Attempt(Kind.FAST, f"unexpected error: {type(error).__name__}")


async def push_once(
    client: PushClient,
    endpoint_url: str,
    set_jwt: str,
    authorization: str | None,
    *,
    user_agent: str,
) -> Attempt:
    """POST one SET to ``endpoint_url`` and classify the outcome (never raises for the
    receiver's behaviour; cancellation propagates)."""
    headers = [
        ("Content-Type", SET_CONTENT_TYPE),
        ("Accept", "application/json"),
        ("User-Agent", user_agent),
    ]
    if authorization is not None:
        headers.append(("Authorization", authorization))  # verbatim (SSF §6.1.1); a secret
    try:
        answer = await client.post(endpoint_url, set_jwt.encode("ascii"), headers)
    except Exception as error:  # classified: the receiver's or the network's doing
        return _failure(error, client)
    status = answer.status
    if 300 <= status < 400:
        return Attempt(
            Kind.SLOW,
            f"HTTP {status} redirect to {answer.location!r} refused (never followed): the "
            "receiver must update delivery.endpoint_url",
            status,
            parse_retry_after(answer.retry_after),
        )
    retry_after = None if 200 <= status < 300 else parse_retry_after(answer.retry_after)
    return classify_answer(status, answer.body, retry_after, answer.reason)
