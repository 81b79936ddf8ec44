"""``GET /missions``: the mission index projection, narrowed to what the caller may see.

A harness sees only its agent's Missions (its ``agent`` filter is forced). A receiver sees only
Missions whose Authority Set touches its scope: the index has no Authority Sets, so each row is
judged from the live authorization view's row (memory), or the ledger when the view has not seen
it yet; that filter runs after the page is read, so a receiver's page may hold fewer rows than
``limit`` while ``next`` still leads on.

Freshness: the answer carries ``ledger_position``, the position the index reflects. A client
that needs its own write in the list sends ``min_position`` (a command's ``ledger_position``);
the request then waits, at most :data:`MAX_MIN_POSITION_WAIT` seconds, for the index to get
there, and answers 503 ``stale_view`` if it does not.
"""

from __future__ import annotations

import time
from typing import Any

from ..checks import LiveAuthorizationView
from ..domain.principal import HARNESS, RECEIVER
from ..ledger import MissionLedger
from ..principals import Principal, may_view_mission
from ..projections import ProjectionStore
from .models import MissionListQuery
from .problems import StaleView

MAX_MIN_POSITION_WAIT = 2.0
POLL_SECONDS = 0.01


def wait_for_index(store: ProjectionStore, position: int, timeout: float) -> int:
    """Block until the index reflects ``position``; returns the index position, or 503."""
    deadline = time.monotonic() + timeout
    current = store.position()
    while current < position:
        if time.monotonic() >= deadline:
            raise StaleView(
                f"the mission index has not reached ledger position {position} within "
                f"{timeout:g} s (it is at {current}); retry",
                field="min_position",
                ledger_position=current,
            )
        time.sleep(POLL_SECONDS)
        current = store.position()
    return current


def _authority(
    ledger: MissionLedger, view: LiveAuthorizationView, mission_id: str
) -> list[dict[str, Any]]:
    row = view.row(mission_id)
    if row is not None:
        return row.authority_json
    return ledger.get_mission(mission_id).authority_set


def list_visible_missions(
    ledger: MissionLedger,
    store: ProjectionStore,
    view: LiveAuthorizationView,
    principal: Principal,
    query: MissionListQuery,
) -> dict[str, Any]:
    """The page of Missions the caller may see (blocking: run it in the executor)."""
    if query.min_position is not None:
        position = wait_for_index(store, query.min_position, MAX_MIN_POSITION_WAIT)
    else:
        position = store.position()
    agent = query.agent
    if principal.role == HARNESS:
        if agent is not None and agent != principal.agent:
            return {"missions": [], "next": None, "ledger_position": position}
        agent = principal.agent
    rows, cursor = store.list_missions(
        state=query.state,
        user=query.user,
        agent=agent,
        parent=query.parent,
        limit=query.limit,
        after=query.after,
        now=ledger.clock.now(),
    )
    if principal.role == RECEIVER:
        rows = [
            row
            for row in rows
            if may_view_mission(
                principal, {**row, "authority_set": _authority(ledger, view, row["mission_id"])}
            )
        ]
    return {"missions": rows, "next": cursor, "ledger_position": position}
