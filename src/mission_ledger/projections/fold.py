"""The pure fold: a page of Mission events → the row changes of the three views.

Every Mission event sets the fields it touches to absolute values (``Suspended`` sets the state
and the deadline, ``AuthorityNarrowed`` the Authority Set and its hash, …), so a page folds into

- ``created``: a full row for each Mission approved within the page (later events of the page
  merged in), to be inserted;
- ``patches``: for each Mission approved before the page, the merged column values its events
  set, to be applied with one ``UPDATE`` — no read of the current row is needed;
- ``edges``: the delegation edges recorded in the page.

Rows carry both views' columns (``mission_index`` and ``mission_authorization`` share the key and
most columns); the writer keeps the columns of the tables it writes. Values are backend-neutral:
timestamps are aware ``datetime``s, the Authority Set is its RFC 8785 canonical JSON text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..domain.canonical import dumps
from ..domain.mission import ACTIVE, SUSPENDED, Mission
from ..domain.timefmt import parse_rfc3339

MISSION_INDEX_COLUMNS = (
    "mission_id",
    "state",
    "version",
    "user_id",
    "agent",
    "parent_id",
    "expires_at",
    "suspend_until",
    "on_expiry",
    "created_at",
    "updated_at",
    "position",
)
AUTHORIZATION_COLUMNS = (
    "mission_id",
    "state",
    "version",
    "expires_at",
    "suspend_until",
    "agent",
    "user_id",
    "parent_id",
    "stage",
    "authority_set",
    "authority_hash",
    "position",
)
EDGE_COLUMNS = ("parent_id", "child_id", "child_agent", "justifying_entry", "created_at")
TIME_COLUMNS = frozenset({"expires_at", "suspend_until", "created_at", "updated_at"})
#: table → its columns, in DDL order (``mission_id`` first for the Mission tables)
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "mission_index": MISSION_INDEX_COLUMNS,
    "mission_authorization": AUTHORIZATION_COLUMNS,
    "delegation_graph": EDGE_COLUMNS,
}


@dataclass
class PageFold:
    """The view changes of one page of events."""

    created: dict[str, dict[str, Any]] = field(default_factory=dict)
    patches: dict[str, dict[str, Any]] = field(default_factory=dict)
    edges: list[dict[str, Any]] = field(default_factory=list)
    applied: int = 0


def _when(value: str | None, name: str) -> datetime | None:
    return None if value is None else parse_rfc3339(value, field=name)


def event_changes(event: Any) -> dict[str, Any]:
    """The columns one Mission event sets (bookkeeping columns excluded)."""
    if isinstance(event, Mission.Approved):
        return {
            "mission_id": str(event.originator_id),
            "state": ACTIVE,
            "user_id": event.user,
            "agent": event.agent,
            "parent_id": event.parent["id"] if event.parent else None,
            "expires_at": _when(event.expires_at, "expires_at"),
            "suspend_until": None,
            "on_expiry": None,
            "created_at": event.timestamp,
            "stage": event.stage,
            "authority_set": dumps(event.authority_set),
            "authority_hash": event.authority_hash,
        }
    if isinstance(event, Mission.Suspended):
        return {
            "state": SUSPENDED,
            "suspend_until": _when(event.suspend_until, "suspend_until"),
            "on_expiry": event.on_expiry,
        }
    if isinstance(event, Mission.Resumed):
        return {"state": ACTIVE, "suspend_until": None, "on_expiry": None}
    if isinstance(event, Mission.Ended):
        return {"state": event.NEW_STATE, "suspend_until": None, "on_expiry": None}
    if isinstance(event, Mission.AuthorityNarrowed):
        return {"authority_set": dumps(event.authority_set), "authority_hash": event.authority_hash}
    if isinstance(event, Mission.StageAdvanced):
        return {"stage": event.to_stage}
    return {}  # Delegated (an edge), or a type this fold does not know: bookkeeping only


def fold_page(events: Iterable[tuple[int, Any]]) -> PageFold:
    """Fold ``(notification id, Mission event)`` pairs, in ledger order, into view changes."""
    page = PageFold()
    for position, event in events:
        key = str(event.originator_id)
        changes = event_changes(event)
        changes["version"] = event.originator_version
        changes["updated_at"] = event.timestamp
        changes["position"] = position
        if isinstance(event, Mission.Approved):
            page.created[key] = changes
        elif key in page.created:
            page.created[key].update(changes)
        else:
            page.patches.setdefault(key, {}).update(changes)
        if isinstance(event, Mission.Delegated):
            page.edges.append(
                {
                    "parent_id": key,
                    "child_id": event.child_mission_id,
                    "child_agent": event.child_agent,
                    "justifying_entry": event.justifying_entry,
                    "created_at": event.timestamp,
                }
            )
        page.applied += 1
    return page
