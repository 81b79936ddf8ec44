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
    ├── Conflict (409, 4) ── IllegalTransition, MissionConflict, IdempotencyKeyReused,
    │                        CheckpointRefused
    ├── Unavailable (503, 1)  the store (or another dependency) cannot be reached: retryable
    └── AuditError (500, 1)   the audit itself cannot run (unreadable store, unusable key)
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
    "MissionConflict",
    "MissionLedgerError",
    "NotFound",
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
