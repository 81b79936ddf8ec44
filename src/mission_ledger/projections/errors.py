"""The errors of the read side (both are conflicts: exit code 4, HTTP 409)."""

from __future__ import annotations

from ..domain.errors import Conflict


class AnotherWorkerActive(Conflict):
    """Another projection worker (or a rebuild) holds the views; this one wrote nothing."""

    code = "projection_worker_active"


class ProjectionMismatch(Conflict):
    """The views do not match the ledger (another ledger's views, or a damaged table)."""

    code = "projection_mismatch"
