"""The error hierarchy of the Mission ledger.

Every error the product raises on purpose derives from :class:`MissionLedgerError` and carries a
short machine ``code`` and a human ``description`` saying what was wrong and what to do. The
entry points map each branch once: to an HTTP status with a problem+json body, and to a CLI exit
code (0 success, 2 invalid input, 3 not found, 4 conflict or illegal transition).

    MissionLedgerError                      (code, description)
    ├── InvalidInput              400  exit 2   the request itself is wrong; retrying cannot help
    │   ├── InvalidProposal                     a proposal document is malformed
    │   ├── InvalidAuthority                    an Authority Set entry is malformed or unenforceable
    │   └── DelegationDenied                    a child Mission was refused (mission_denial_reason)
    ├── NotFound                  404  exit 3   no such Proposal or Mission (or not yours)
    ├── Forbidden                 403  exit 4   the actor may not do this (separation of duty, …)
    ├── TooManyRequests           429  exit 4   too soon; ``retry_after`` says how many seconds
    └── Conflict                  409  exit 4   the current state forbids the operation
        ├── IllegalTransition                   the lifecycle table has no such move from here
        ├── MissionConflict                     a concurrent command won; carries current_version
        └── IdempotencyKeyReused                the same key was used for a different command

This module is pure (standard library only) so the domain can raise these errors.
"""

from __future__ import annotations

from typing import Any


class MissionLedgerError(Exception):
    """Root of every error the Mission ledger raises on purpose."""

    code: str = "error"
    http_status: int = 500
    exit_code: int = 1

    def __init__(self, description: str, **details: Any) -> None:
        super().__init__(description)
        self.description = description
        self.details: dict[str, Any] = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """The machine-readable form: ``code``, ``description`` and any details."""
        return {"code": self.code, "description": self.description, **self.details}


class InvalidInput(MissionLedgerError):
    """The input is malformed or violates a rule; the same input will always fail."""

    code = "invalid_request"
    http_status = 400
    exit_code = 2

    def __init__(self, description: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(description, field=field, **details)
        self.field = field


class InvalidProposal(InvalidInput):
    """A proposal document (or its Intent) is malformed."""

    code = "invalid_mission_intent"


class InvalidAuthority(InvalidInput):
    """An Authority Set is malformed, or names a constraint this Authority cannot enforce."""

    code = "invalid_authority"


class DelegationDenied(InvalidInput):
    """A child Mission was refused; ``reason`` is the drafts' ``mission_denial_reason``."""

    code = "delegation_denied"

    def __init__(self, reason: str, description: str, **details: Any) -> None:
        super().__init__(description, mission_denial_reason=reason, **details)
        self.reason = reason
        if reason in ("parent_not_active", "parent_mismatch"):
            self.exit_code = 4
            self.http_status = 409


class NotFound(MissionLedgerError):
    """No such Proposal or Mission; deliberately identical for 'not yours'."""

    code = "not_found"
    http_status = 404
    exit_code = 3


class Forbidden(MissionLedgerError):
    """The actor is known but may not perform this operation."""

    code = "forbidden"
    http_status = 403
    exit_code = 4


class TooManyRequests(MissionLedgerError):
    """The request came sooner than a rate rule allows (e.g. ``min_verification_interval``)."""

    code = "too_many_requests"
    http_status = 429
    exit_code = 4

    def __init__(self, description: str, *, retry_after: int, **details: Any) -> None:
        super().__init__(description, retry_after=retry_after, **details)
        self.retry_after = retry_after


class Conflict(MissionLedgerError):
    """The current state of the ledger forbids the operation."""

    code = "conflict"
    http_status = 409
    exit_code = 4


class IllegalTransition(Conflict):
    """The lifecycle table has no such operation from the current state."""

    code = "illegal_transition"

    def __init__(self, description: str, *, current_state: str, **details: Any) -> None:
        super().__init__(description, current_state=current_state, **details)
        self.current_state = current_state


class MissionConflict(Conflict):
    """A concurrent command changed the aggregate first; reload and decide again."""

    code = "stale_version"

    def __init__(self, description: str, *, current_version: int | None, **details: Any) -> None:
        super().__init__(description, current_version=current_version, **details)
        self.current_version = current_version


class IdempotencyKeyReused(Conflict):
    """The idempotency key was first used for a different command or body."""

    code = "idempotency_key_reused"
