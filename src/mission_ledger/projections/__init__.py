"""Tracked projections: the read side of the Authority (see ``projections/README.md``).

Three views — ``mission_index``, ``delegation_graph`` and ``authorization`` (table
``mission_authorization``) — kept by a batched, exactly-once :class:`ProjectionWorker` and read
through :class:`ProjectionStore`; :func:`rebuild` recreates them from the ledger.
"""

from __future__ import annotations

from .contracts import PROJECTION_TABLES, PROJECTIONS, projections_dir
from .errors import AnotherWorkerActive, ProjectionMismatch
from .runner import ProjectionWorker, WorkerProgress, rebuild
from .store import ProjectionStore

__all__ = [
    "PROJECTIONS",
    "PROJECTION_TABLES",
    "AnotherWorkerActive",
    "ProjectionMismatch",
    "ProjectionStore",
    "ProjectionWorker",
    "WorkerProgress",
    "projections_dir",
    "rebuild",
]
