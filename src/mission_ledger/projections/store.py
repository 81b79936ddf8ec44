"""The read side: queries over the projection views (one :class:`ProjectionStore` per process).

Rows are plain dicts with RFC 3339 timestamps. The SQL column ``user_id`` is the key ``user``
(``USER`` is reserved in SQL). ``list_missions`` filters on the EFFECTIVE state, in SQL, with the
stored state and ``expires_at`` (a live Mission whose ``expires_at`` has passed is expired; the
``mission_index_state`` index on ``(state, expires_at)`` serves all three forms):

- ``expired``:  ``state = 'expired' OR (state IN ('active', 'suspended') AND expires_at <= now)``
- ``active`` / ``suspended``: ``state = S AND expires_at > now``
- any other state: ``state = S`` (terminal states do not change with time).
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from ..config import Settings
from ..domain.errors import InvalidInput
from ..domain.mission import ACTIVE, EXPIRED, LIVE_STATES, SUSPENDED
from ..domain.timefmt import format_rfc3339, parse_rfc3339
from .views import APPLICATION_NAME, Views, open_views, store_errors, time_text

MAX_LIMIT = 1000
_LIVE = tuple(sorted(LIVE_STATES))


def _moment(value: Any) -> datetime:
    """A stored timestamp (SQLite text or PostgreSQL datetime) as an aware datetime."""
    text = time_text(value)
    assert text is not None
    return parse_rfc3339(text, field="timestamp")


def _encode_cursor(created_at: str, mission_id: str) -> str:
    raw = json.dumps([created_at, mission_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    problem = InvalidInput(
        "after is not a cursor this server issued; pass back the `next` value of a previous page",
        field="after",
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, mission_id = json.loads(raw)
        if not isinstance(mission_id, str):
            raise problem
        return parse_rfc3339(created_at, field="after"), mission_id
    except (ValueError, TypeError, binascii.Error, InvalidInput):
        raise problem from None


class ProjectionStore:
    """Reads the views; thread-safe (the library's connection pools), one per process."""

    def __init__(self, views: Views) -> None:
        self._views = views
        self._ph = views.ph

    @classmethod
    def open(cls, settings: Settings) -> ProjectionStore:
        """Open (and, if missing, create) the views of ``settings``' store."""
        return cls(open_views(settings, pool_size=max(1, settings.postgres_pool_size)))

    def __enter__(self) -> ProjectionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _t(self, name: str) -> str:
        return self._views.table(name)

    def position(self) -> int:
        """The ledger position the views reflect (0 before anything was applied)."""
        with store_errors():
            return self._views.position()

    def list_missions(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        agent: str | None = None,
        parent: str | None = None,
        limit: int = 100,
        after: str | None = None,
        now: datetime,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Missions ordered by (created_at, mission_id), filtered; returns (rows, next cursor).

        ``state`` filters on the effective state at ``now``; each row carries ``state``
        (effective) and ``stored_state``. The cursor is ``None`` on the last page.
        """
        if now.tzinfo is None:
            raise InvalidInput("now must be timezone-aware", field="now")
        if not 1 <= limit <= MAX_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", field="limit")
        ph, to_db = self._ph, self._views.to_db
        where: list[str] = []
        params: list[Any] = []
        if state is not None:
            at = to_db("expires_at", now)
            if state == EXPIRED:
                where.append(f"(state = {ph} OR (state IN ({ph}, {ph}) AND expires_at <= {ph}))")
                params += [EXPIRED, *_LIVE, at]
            elif state in (ACTIVE, SUSPENDED):
                where.append(f"state = {ph} AND expires_at > {ph}")
                params += [state, at]
            else:
                where.append(f"state = {ph}")
                params.append(state)
        for column, value in (("user_id", user), ("agent", agent), ("parent_id", parent)):
            if value is not None:
                where.append(f"{column} = {ph}")
                params.append(value)
        if after is not None:
            created_at, mission_id = _decode_cursor(after)
            where.append(f"(created_at, mission_id) > ({ph}, {ph})")
            params += [to_db("created_at", created_at), mission_id]
        statement = (
            f"SELECT * FROM {self._t('mission_index')}"  # noqa: S608
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY created_at, mission_id LIMIT {ph}"
        )
        params.append(limit + 1)
        with store_errors(), self._views.reading() as fetch:
            found = fetch(statement, params)
        rows = [self._mission_row(r, now) for r in found[:limit]]
        cursor = None
        if len(found) > limit:
            last = rows[-1]
            cursor = _encode_cursor(last["created_at"], last["mission_id"])
        return rows, cursor

    @staticmethod
    def _mission_row(row: dict[str, Any], now: datetime) -> dict[str, Any]:
        stored = row["state"]
        expires_at = _moment(row["expires_at"])
        live_past_expiry = stored in LIVE_STATES and now >= expires_at
        return {
            "mission_id": row["mission_id"],
            "state": EXPIRED if live_past_expiry else stored,
            "stored_state": stored,
            "version": row["version"],
            "user": row["user_id"],
            "agent": row["agent"],
            "parent_id": row["parent_id"],
            "expires_at": format_rfc3339(expires_at),
            "suspend_until": time_text(row["suspend_until"]),
            "on_expiry": row["on_expiry"],
            "created_at": time_text(row["created_at"]),
            "updated_at": time_text(row["updated_at"]),
            "position": row["position"],
        }

    def children(self, mission_id: str) -> list[dict[str, Any]]:
        """The delegation edges from ``mission_id``, oldest first."""
        statement = (
            "SELECT parent_id, child_id, child_agent, justifying_entry, created_at "  # noqa: S608
            f"FROM {self._t('delegation_graph')} WHERE parent_id = {self._ph} "
            "ORDER BY created_at, child_id"
        )
        with store_errors(), self._views.reading() as fetch:
            found = fetch(statement, [mission_id])
        return [{**row, "created_at": time_text(row["created_at"])} for row in found]

    def authorization_rows(self) -> tuple[dict[str, dict[str, Any]], int]:
        """Every authorization row (by mission_id) and the position they reflect, read on one
        snapshot. ``state`` is the stored state (a check evaluates ``expires_at`` first);
        ``authority_set`` is decoded from its canonical JSON text."""
        ph = self._ph
        rows_sql = f"SELECT * FROM {self._t('mission_authorization')}"  # noqa: S608
        tracking = (
            f"SELECT notification_id FROM {self._views.tracking_table()} "  # noqa: S608
            f"WHERE application_name = {ph}"
        )
        with store_errors(), self._views.reading() as fetch:
            found = fetch(rows_sql, [])
            marks = fetch(tracking, [APPLICATION_NAME])
        position = int(marks[0]["notification_id"]) if marks else 0
        rows = {
            row["mission_id"]: {
                "mission_id": row["mission_id"],
                "state": row["state"],
                "version": row["version"],
                "expires_at": time_text(row["expires_at"]),
                "suspend_until": time_text(row["suspend_until"]),
                "agent": row["agent"],
                "user": row["user_id"],
                "parent_id": row["parent_id"],
                "stage": row["stage"],
                "authority_set": json.loads(row["authority_set"]),
                "authority_hash": row["authority_hash"],
                "position": row["position"],
            }
            for row in found
        }
        return rows, position

    def close(self) -> None:
        self._views.close()


__all__ = ["MAX_LIMIT", "ProjectionStore"]
