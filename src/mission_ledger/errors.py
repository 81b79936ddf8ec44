"""The one error hierarchy of the Mission ledger, in full.

The domain's branch lives in :mod:`mission_ledger.domain.errors` (the domain may import nothing
else); this module re-exports it and adds the errors of the infrastructure around it. Every entry
point maps an error once, by its attributes: ``code`` (machine), ``description`` (human, says what
to do), ``http_status`` and ``exit_code`` (CLI: 0 ok, 1 unavailable, 2 invalid input, 3 not found,
4 conflict or refused).

    MissionLedgerError
    ├── InvalidInput (400, 2) ── InvalidProposal, InvalidAuthority, DelegationDenied
    ├── NotFound (404, 3)
    ├── Forbidden (403, 4)
    ├── TooManyRequests (429, 4)
    ├── Conflict (409, 4) ── IllegalTransition, MissionConflict, IdempotencyKeyReused,
    │                        CheckpointRefused
    ├── Unavailable (503, 1)  the store (or another dependency) cannot be reached: retryable
    ├── AuditError (500, 1)   the audit itself cannot run (unreadable store, unusable key)
    ├── KeyStoreError (500, 1)  the SSF signing keys cannot be read or written
    └── SetVerificationError (400, 2)  a Security Event Token was refused; ``code`` is the
        RFC 8935 ``err``: InvalidSetRequest (invalid_request), InvalidSetKey (invalid_key),
        InvalidSetSignature (authentication_failed), InvalidSetIssuer (invalid_issuer),
        InvalidSetAudience (invalid_audience)
"""

from __future__ import annotations

from .domain.errors import (
    Conflict,
    DelegationDenied,
    Forbidden,
    IdempotencyKeyReused,
    IllegalTransition,
    InvalidAuthority,
    InvalidInput,
    InvalidProposal,
    MissionConflict,
    MissionLedgerError,
    NotFound,
    TooManyRequests,
)

__all__ = [
    "AuditError",
    "CheckpointRefused",
    "Conflict",
    "DelegationDenied",
    "Forbidden",
    "IdempotencyKeyReused",
    "IllegalTransition",
    "InvalidAuthority",
    "InvalidInput",
    "InvalidProposal",
    "InvalidSetAudience",
    "InvalidSetIssuer",
    "InvalidSetKey",
    "InvalidSetRequest",
    "InvalidSetSignature",
    "KeyStoreError",
    "MissionConflict",
    "MissionLedgerError",
    "NotFound",
    "SetVerificationError",
    "TooManyRequests",
    "Unavailable",
    "first_line",
]


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (drivers add multi-line context), or its type."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Unavailable(MissionLedgerError):
    """A dependency (the event store) cannot be reached or prepared; retrying may help."""

    code = "unavailable"
    http_status = 503
    exit_code = 1


class AuditError(MissionLedgerError):
    """The audit itself cannot run: unreadable store, unusable signing key, bad audit dir."""

    code = "audit_error"
    http_status = 500
    exit_code = 1


class CheckpointRefused(Conflict):
    """A checkpoint was asked for while the ledger does not verify cleanly."""

    code = "checkpoint_refused"


class KeyStoreError(MissionLedgerError):
    """The key store cannot be read or written (unreadable index or key file, bad permissions)."""

    code = "key_store_error"
    http_status = 500
    exit_code = 1


# -- SSF: Security Event Tokens (codes are RFC 8935 §2.4 `err` values) --------------------------


class SetVerificationError(MissionLedgerError):
    """A SET was refused; ``code`` is the RFC 8935 §2.4 ``err`` value to report."""

    code = "invalid_request"
    http_status = 400
    exit_code = 2


class InvalidSetRequest(SetVerificationError):
    """Not a compact JWS SET, a wrong ``typ`` or ``alg``, or claims that break the profile."""

    code = "invalid_request"


class InvalidSetKey(SetVerificationError):
    """No published key has this ``kid``, or the key is unacceptable for the header's ``alg``."""

    code = "invalid_key"


class InvalidSetSignature(SetVerificationError):
    """The signature does not verify: the transmitter is not authenticated (RFC 8935 §2.4)."""

    code = "authentication_failed"


class InvalidSetIssuer(SetVerificationError):
    code = "invalid_issuer"


class InvalidSetAudience(SetVerificationError):
    code = "invalid_audience"
