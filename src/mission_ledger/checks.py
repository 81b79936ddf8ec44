"""The pull side of the Authority: "may this Mission do this action on this resource now?".

Three wire shapes answer the same question from the same rules:

* the native check (``POST /missions/{id}/check``): :meth:`LiveAuthorizationView.check`, or
  :func:`check_at` for a past instant;
* OpenID AuthZEN Authorization API 1.0 (``/access/v1/evaluation`` and ``/evaluations``):
  :func:`authzen_evaluate` and :func:`authzen_evaluations`;
* AgentPass continuous authorization (``authorization_check``): :func:`agentpass_scope`.

**The rules** (one function, :func:`_judge`, for live and historical checks), in order:

1. unknown Mission → ``not_found``;
2. the Mission's effective state at the instant (expiry is evaluated before the stored state,
   decision #10): ``expired`` → ``expired``; anything but ``active`` → ``mission_inactive``;
3. every ancestor (the ``parent`` chain) must be effectively active, else ``ancestor_inactive``
   naming the first one that is not (a parent's suspension or end normally reaches its children
   in the same transaction; this walk keeps the answer right while the view has folded only part
   of it, and fails closed on an ancestor it does not know);
4. the Mission's own Authority Set (:func:`~.domain.authority.evaluate`, in its current stage):
   ``out_of_authority``, ``stage_not_active``, ``not_yet_valid`` or ``expired`` (the entry's
   ``not_after`` passed);
5. every ancestor's *current* Authority Set must allow the request too (decision #12: a narrowed
   parent bounds its children, which are not rewritten), else ``out_of_authority`` naming it;
6. ``max_calls``: live checks count the allowed checks per (Mission, granting entry index) and
   deny ``quota_exceeded`` once the count reaches the entry's ``max_calls``.

**The quota is counted per process, in memory**: a restart resets it, two server processes each
count their own, and an entry's count follows its *index* (a narrowing that reorders entries
moves counts with the index). A durable, ledger-backed count comes later. Historical checks
(:func:`check_at`) neither consult nor consume it.

**The live view** (:class:`LiveAuthorizationView`) keeps one :class:`MissionRow` per Mission in
memory, loaded at :meth:`~LiveAuthorizationView.start` (from the tracked ``authorization``
projection table when the server has one: :func:`load_rows_from_views`) and kept current by a
daemon thread that tails the notification log. A check never touches the store: it takes one
lock, reads a few rows and evaluates (a few microseconds). The view fails closed: when its
tailer is dead or has not completed a poll within ``max_lag_seconds``, every check answers
``view_unavailable``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from eventsourcing.persistence import InterfaceError, OperationalError

from .domain.authority import AuthoritySet, action_covers, evaluate, parse_authority_set
from .domain.errors import InvalidInput, NotFound
from .domain.mission import ACTIVE, EXPIRED, LIVE_STATES, SUSPENDED, Mission
from .domain.timefmt import parse_rfc3339
from .errors import Unavailable
from .ledger import MISSION_TOPICS, MissionLedger

__all__ = [
    "AGENTPASS_VERSION",
    "REASONS",
    "AuthzenQuery",
    "CheckResult",
    "LiveAuthorizationView",
    "MissionRow",
    "agentpass_configuration",
    "agentpass_scope",
    "answer_authzen",
    "authzen_evaluate",
    "authzen_evaluations",
    "check_at",
    "evaluate_authzen_batch",
    "fold_mission_event",
    "load_rows_from_log",
    "load_rows_from_views",
    "mission_row_from_view",
    "parse_authzen_evaluation",
    "parse_authzen_evaluations",
]

log = logging.getLogger(__name__)

REASONS = (
    "allowed",
    "mission_inactive",
    "expired",
    "ancestor_inactive",
    "out_of_authority",
    "stage_not_active",
    "not_yet_valid",
    "not_found",
    "quota_exceeded",
    "view_unavailable",
)
ALLOW, DENY = "allow", "deny"
SUBJECT_MISMATCH = "subject_mismatch"
PAGE_SIZE = 500
ERROR_BACKOFF_SECONDS = 0.1
IDLE_AFTER_SECONDS = 1.0  # poll every poll_interval until other processes were quiet this long
AGENTPASS_VERSION = "0.1"
EVALUATIONS_SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")


# ---------------------------------------------------------------------------------------------
# Results and rows
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckResult:
    """The answer to one check; :meth:`to_dict` is the native wire form (None members omitted).

    ``ledger_position`` is the notification id the answer reflects: every event up to it was
    folded (live view) or stored (historical check). ``detail`` refines a reason (AuthZEN's
    ``subject_mismatch``). Treat a result as read-only: a live ``grant["entry"]`` is the view's
    own copy of the entry JSON.
    """

    decision: str  # "allow" | "deny"
    reason: str
    mission_id: str
    mission_version: int | None
    ledger_position: int
    state: str | None = None
    grant: dict[str, Any] | None = None
    ancestor: str | None = None
    rests_on: list[dict[str, Any]] | None = None
    detail: str | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == ALLOW

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None
        }


@dataclass
class MissionRow:
    """What a check needs to know about one Mission (its stored state, not the effective one)."""

    mission_id: str
    version: int
    state: str
    expires_at: datetime
    suspend_until: datetime | None
    agent: str
    user: str
    parent_id: str | None
    stage: str | None
    authority: AuthoritySet  # parsed once, when the row is folded
    authority_json: list[dict[str, Any]]
    position: int  # the notification id of the last event folded into this row

    def effective_state(self, at: datetime) -> str:
        """Expiry before stored state (decision #10)."""
        if self.state in LIVE_STATES and at >= self.expires_at:
            return EXPIRED
        return self.state


def _instant(value: object, name: str) -> datetime:
    if isinstance(value, datetime):
        _require_aware(value, name)
        return value.astimezone(UTC)
    return parse_rfc3339(value, field=name)


def mission_row_from_view(row: Mapping[str, Any]) -> MissionRow:
    """The :class:`MissionRow` of one row of the ``authorization`` projection.

    ``row`` is a :meth:`ProjectionStore.authorization_rows` value: ``state`` is the STORED
    state, timestamps are RFC 3339 text (or aware datetimes), ``authority_set`` is the decoded
    Authority Set (or its canonical JSON text). The Authority Set is parsed here, once, as
    :func:`fold_mission_event` parses it from an event, so both give equal rows.
    """
    authority_json = row["authority_set"]
    if isinstance(authority_json, str | bytes):
        authority_json = json.loads(authority_json)
    if not isinstance(authority_json, list):
        raise InvalidInput("authority_set must be a JSON array", field="authority_set")
    suspend_until = row.get("suspend_until")
    parent_id = row.get("parent_id")
    return MissionRow(
        mission_id=str(row["mission_id"]),
        version=int(row["version"]),
        state=str(row["state"]),
        expires_at=_instant(row["expires_at"], "expires_at"),
        suspend_until=None if suspend_until is None else _instant(suspend_until, "suspend_until"),
        agent=str(row["agent"]),
        user=str(row["user"]),
        parent_id=None if parent_id is None else str(parent_id),
        stage=row.get("stage"),
        authority=parse_authority_set(authority_json, allow_wildcard=True),
        authority_json=authority_json,
        position=int(row["position"]),
    )


def fold_mission_event(rows: dict[str, MissionRow], event: Any, position: int) -> None:
    """Apply one decoded Mission event (stored at notification id ``position``) to ``rows``.

    Events of a Mission whose approval was never folded are ignored (a loader that starts from
    a projection hands the rows over; the tail only ever sees later events).
    """
    key = str(event.originator_id)
    if isinstance(event, Mission.Approved):
        rows[key] = MissionRow(
            mission_id=key,
            version=event.originator_version,
            state=ACTIVE,
            expires_at=parse_rfc3339(event.expires_at, field="expires_at"),
            suspend_until=None,
            agent=event.agent,
            user=event.user,
            parent_id=str(event.parent["id"]) if event.parent else None,
            stage=event.stage,
            authority=parse_authority_set(event.authority_set, allow_wildcard=True),
            authority_json=event.authority_set,
            position=position,
        )
        return
    row = rows.get(key)
    if row is None:
        return
    row.version = event.originator_version
    row.position = position
    if isinstance(event, Mission.Suspended):
        row.state = SUSPENDED
        row.suspend_until = (
            parse_rfc3339(event.suspend_until, field="suspend_until")
            if event.suspend_until
            else None
        )
    elif isinstance(event, Mission.Resumed):
        row.state, row.suspend_until = ACTIVE, None
    elif isinstance(event, Mission.Ended):
        row.state, row.suspend_until = event.NEW_STATE, None
    elif isinstance(event, Mission.AuthorityNarrowed):
        row.authority = parse_authority_set(event.authority_set, allow_wildcard=True)
        row.authority_json = event.authority_set
    elif isinstance(event, Mission.StageAdvanced):
        row.stage = event.to_stage


def load_rows_from_log(ledger: MissionLedger) -> tuple[dict[str, MissionRow], int]:
    """The default loader: fold every Mission event of the notification log (a full scan)."""
    rows: dict[str, MissionRow] = {}
    high = ledger.recorder.max_notification_id() or 0  # read first: see LiveAuthorizationView
    start, last = 1, 0
    while True:
        page = ledger.recorder.select_notifications(start, PAGE_SIZE, topics=MISSION_TOPICS)
        for notification in page:
            fold_mission_event(rows, ledger.mapper.to_domain_event(notification), notification.id)
        if page:
            last = page[-1].id
            start = last + 1
        if len(page) < PAGE_SIZE:
            return rows, max(last, high)


ViewRows = tuple[Mapping[str, Mapping[str, Any]], int]


def load_rows_from_views(
    read_rows: Callable[[], ViewRows], ledger: MissionLedger
) -> tuple[dict[str, MissionRow], int]:
    """A loader that starts from the tracked ``authorization`` projection table.

    ``read_rows`` is :meth:`ProjectionStore.authorization_rows`: every row and the tracking
    position they reflect, read in one transaction. The rows are converted with
    :func:`mission_row_from_view`; the view then tails the ledger from that position (its
    :meth:`~LiveAuthorizationView.start` catches up synchronously, so a table behind the ledger
    costs only the events it lacks). Falls back to :func:`load_rows_from_log` when the table
    cannot serve: never projected (position 0: a fresh store, or views never built), unreadable
    (:class:`Unavailable`), or ahead of the ledger's head (views of another ledger).
    """
    try:
        rows, position = read_rows()
    except Unavailable as error:
        log.warning(
            "authorization view: the projection table is unreadable (%s); loading from the log",
            error.description,
        )
        return load_rows_from_log(ledger)
    if position <= 0:
        return load_rows_from_log(ledger)
    head = ledger.recorder.max_notification_id() or 0
    if position > head:
        log.warning(
            "authorization view: the projection table is at position %d, beyond the ledger's "
            "head %d (views of another ledger?); loading from the log",
            position,
            head,
        )
        return load_rows_from_log(ledger)
    return {key: mission_row_from_view(row) for key, row in rows.items()}, position


# ---------------------------------------------------------------------------------------------
# The rules
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Verdict:
    reason: str
    entry_index: int | None = None
    ancestor: str | None = None
    state: str | None = None


def _judge(
    row: MissionRow,
    lookup: Callable[[str], MissionRow | None],
    *,
    action: str,
    resource: str,
    at: datetime,
) -> _Verdict:
    """Rules 2–5 of the module docstring (quota is the live view's, rule 6)."""
    state = row.effective_state(at)
    if state == EXPIRED:
        return _Verdict(EXPIRED, state=state)
    if state != ACTIVE:
        return _Verdict("mission_inactive", state=state)
    ancestors: list[MissionRow] = []
    seen = {row.mission_id}
    parent_id = row.parent_id
    while parent_id is not None:
        parent = None if parent_id in seen else lookup(parent_id)
        if parent is None or parent.effective_state(at) != ACTIVE:
            return _Verdict("ancestor_inactive", ancestor=parent_id)
        seen.add(parent_id)
        ancestors.append(parent)
        parent_id = parent.parent_id
    own = evaluate(row.authority, action=action, resource=resource, at=at, stage=row.stage)
    if not own.allowed:
        return _Verdict(own.reason, entry_index=own.entry_index)
    for ancestor in ancestors:
        bound = evaluate(
            ancestor.authority, action=action, resource=resource, at=at, stage=ancestor.stage
        )
        if not bound.allowed:
            return _Verdict("out_of_authority", ancestor=ancestor.mission_id)
    return _Verdict("allowed", entry_index=own.entry_index)


def _require_aware(at: datetime, name: str) -> None:
    if not isinstance(at, datetime) or at.tzinfo is None or at.utcoffset() is None:
        raise InvalidInput(f"{name} must be a timezone-aware instant", field=name)


# ---------------------------------------------------------------------------------------------
# The live view
# ---------------------------------------------------------------------------------------------


def _foreign(previous: tuple[int, int], now: tuple[int, int]) -> bool:
    """Whether events a poll found must have come from another process: no commit of this
    process began since the previous poll, and none was in flight then (``(begun, count)``
    of the ledger's :class:`~.ledger.CommitSignal` at each poll)."""
    return now[0] == previous[0] and previous[0] == previous[1]


class LiveAuthorizationView:
    """Every Mission's check-relevant state in memory, tailing the ledger's notification log.

    Start: ``loader()`` returns the initial rows and the ledger position they reflect; the view
    then tails the log from the next position. The server passes
    :func:`load_rows_from_views` — the tracked ``authorization`` table (rows and tracking
    position read in one transaction), as the architecture prescribes ("rebuilt from its table
    at start, then fed live"), so a restart reads one row per Mission instead of every event.
    The default, and the fallback when the table was never projected (position 0: a fresh store
    or views never built), cannot be read, or is ahead of the ledger, is
    :func:`load_rows_from_log`, a full scan of the log's Mission events. :meth:`start` catches
    up synchronously to the ledger's head before it returns, so a table that lags the ledger
    (the worker was down, a rebuild is under way) never makes the first checks stale: the tail
    covers the rest before any check is answered.

    Freshness: each poll reads ``max_notification_id()`` *before* selecting new notifications,
    so a poll that returns a partial page proves the view current up to that id even when no
    Mission event arrived (ids of other aggregates, and PostgreSQL's rolled-back ids, are gaps).
    :attr:`position` is that proven position; :meth:`wait_for` blocks on a condition variable
    until it reaches a given one (a writer's ``CommandResult.position``).

    Polling: a commit in this process wakes the view at once (the ledger's
    :class:`~.ledger.CommitSignal`); otherwise it polls every ``poll_interval`` (2 ms) while
    other processes write to the log (a poll found events that no commit here announced in the
    last second) and every ``idle_interval`` (20 ms) otherwise. So neither an idle server nor
    one busy with its own commands spends a tenth of a core polling, and a write by another
    process (a CLI command, another server on the same PostgreSQL) is seen within 2 ms while
    such writes keep coming, 20 ms when it is the first in a second.
    """

    def __init__(
        self,
        ledger: MissionLedger,
        *,
        poll_interval: float = 0.002,
        idle_interval: float = 0.02,
        max_lag_seconds: float = 2.0,
        loader: Callable[[], tuple[dict[str, MissionRow], int]] | None = None,
    ) -> None:
        self._ledger = ledger
        self._poll_interval = poll_interval
        self._idle_interval = max(idle_interval, poll_interval)
        self._max_lag = max_lag_seconds
        self._loader = loader or (lambda: load_rows_from_log(ledger))
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._rows: dict[str, MissionRow] = {}
        self._calls: dict[tuple[str, int], int] = {}
        self._position = 0
        self._last_poll = float("-inf")  # time.monotonic() of the last successful poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Load the initial state and catch up to the ledger's head (synchronously), then
        tail the log on a daemon thread."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the authorization view is already running")
        started = time.monotonic()
        rows, position = self._loader()
        with self._cond:
            self._rows = rows
            self._position = max(self._position, position)
            self._last_poll = started
            self._cond.notify_all()
        while self._poll_once() == PAGE_SIZE:  # the loader's position may lag the ledger
            pass
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name="mission-ledger-authorization-view", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop tailing; every later check answers ``view_unavailable``."""
        self._stop.set()
        self._ledger.commits.wake()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    def _run(self) -> None:
        failing = False
        active = float("-inf")  # when a poll last found events no commit here can explain
        commits = self._ledger.commits
        previous = (-1, -1)  # (begun, count) of this process's commits at the previous poll
        while not self._stop.is_set():
            seen = commits.count  # before polling: a commit after it wakes the wait
            marks = (commits.begun, seen)
            try:
                got_any = self._poll_once() > 0
            except Exception:
                if not failing:
                    log.exception("authorization view: polling the notification log failed")
                failing = True
                self._stop.wait(ERROR_BACKOFF_SECONDS)
                continue
            if failing:
                log.info("authorization view: polling recovered at position %d", self._position)
                failing = False
            now = time.monotonic()
            if got_any and _foreign(previous, marks):  # another process wrote: poll briskly
                active = now
            previous = marks
            if not got_any:  # commits in this process wake it at once; others are polled for
                idle = now - active >= IDLE_AFTER_SECONDS
                commits.wait(seen, self._idle_interval if idle else self._poll_interval)

    def _poll_once(self) -> int:
        """Fold one page of new Mission notifications; returns how many it had (a full page,
        ``PAGE_SIZE``, means more may follow)."""
        started = time.monotonic()
        recorder = self._ledger.recorder
        high = recorder.max_notification_id() or 0  # before selecting: see the class docstring
        if high <= self._position:  # nothing new: one statement, not two (an idle server)
            with self._cond:
                self._last_poll = started
            return 0
        page = recorder.select_notifications(
            start=self._position + 1, limit=PAGE_SIZE, topics=MISSION_TOPICS
        )
        decoded = [(n.id, self._ledger.mapper.to_domain_event(n)) for n in page]
        with self._cond:
            for notification_id, event in decoded:
                fold_mission_event(self._rows, event, notification_id)
            position = decoded[-1][0] if decoded else self._position
            if len(page) < PAGE_SIZE:  # a full page may stop short of ``high``
                position = max(position, high)
            self._position = max(self._position, position)
            self._last_poll = started
            self._cond.notify_all()
        return len(page)

    # -- state ------------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """The ledger position the view is proven current up to."""
        return self._position

    def healthy(self) -> bool:
        """The tailer is alive and completed a poll within ``max_lag_seconds``."""
        thread = self._thread
        return (
            thread is not None
            and thread.is_alive()
            and not self._stop.is_set()
            and time.monotonic() - self._last_poll <= self._max_lag
        )

    def wait_for(self, position: int, timeout: float) -> bool:
        """Block until the view reached ``position`` (True) or ``timeout`` seconds passed."""
        with self._cond:
            return self._cond.wait_for(lambda: self._position >= position, max(timeout, 0.0))

    def _row(self, mission_id: object) -> MissionRow | None:
        """Lookup under the lock, tolerant of non-canonical UUID spellings and odd values."""
        if not isinstance(mission_id, str):
            return None
        row = self._rows.get(mission_id)
        if row is None and mission_id:
            try:
                canonical = str(UUID(mission_id))
            except ValueError:
                return None
            row = self._rows.get(canonical)
        return row

    def row(self, mission_id: str) -> MissionRow | None:
        """A copy of the Mission's row, or None."""
        with self._lock:
            row = self._row(mission_id)
            return replace(row) if row is not None else None

    def lineage(self, mission_id: str) -> list[MissionRow] | None:
        """Copies of the Mission's row and its ancestors' (nearest first), read atomically;
        None when the Mission, or an ancestor, is unknown to the view."""
        with self._lock:
            row = self._row(mission_id)
            chain: list[MissionRow] = []
            seen: set[str] = set()
            while row is not None:
                chain.append(replace(row))
                seen.add(row.mission_id)
                if row.parent_id is None:
                    return chain
                if row.parent_id in seen:
                    return None
                row = self._rows.get(row.parent_id)
            return None

    # -- the check --------------------------------------------------------------------------------

    def check(self, mission_id: str, *, action: str, resource: str, now: datetime) -> CheckResult:
        """Decide one request at ``now`` from memory (see the module docstring for the rules)."""
        return self._check(mission_id, action=action, resource=resource, now=now, agent=None)

    def _check(
        self,
        mission_id: str,
        *,
        action: str,
        resource: str,
        now: datetime,
        agent: str | None,
    ) -> CheckResult:
        _require_aware(now, "now")
        shown_id = mission_id if isinstance(mission_id, str) else str(mission_id)
        if not self.healthy():
            return CheckResult(DENY, "view_unavailable", shown_id, None, self._position)
        with self._lock:
            position = self._position
            row = self._row(mission_id)
            if row is None:
                return CheckResult(DENY, "not_found", shown_id, None, position)
            version = row.version
            if agent is not None and agent != row.agent:
                return CheckResult(
                    DENY,
                    "out_of_authority",
                    row.mission_id,
                    version,
                    position,
                    detail=SUBJECT_MISMATCH,
                )
            if not isinstance(action, str) or not isinstance(resource, str):
                return CheckResult(DENY, "out_of_authority", row.mission_id, version, position)
            verdict = _judge(row, self._rows.get, action=action, resource=resource, at=now)
            if verdict.reason != "allowed":
                return CheckResult(
                    DENY,
                    verdict.reason,
                    row.mission_id,
                    version,
                    position,
                    state=verdict.state,
                    ancestor=verdict.ancestor,
                )
            assert verdict.entry_index is not None
            entry = row.authority.entries[verdict.entry_index]
            if entry.max_calls is not None:
                key = (row.mission_id, verdict.entry_index)
                used = self._calls.get(key, 0)
                if used >= entry.max_calls:
                    return CheckResult(DENY, "quota_exceeded", row.mission_id, version, position)
                self._calls[key] = used + 1
            # the row's own entry JSON, not a copy (a copy would double the cost of a check):
            # results are read-only, and a narrowing replaces the row's list, never edits it
            grant = {
                "entry_index": verdict.entry_index,
                "entry": row.authority_json[verdict.entry_index],
            }
        return CheckResult(ALLOW, "allowed", row.mission_id, version, position, grant=grant)


# ---------------------------------------------------------------------------------------------
# Historical checks
# ---------------------------------------------------------------------------------------------


def _row_from_document(document: Mapping[str, Any]) -> MissionRow:
    parent = document.get("parent")
    return MissionRow(
        mission_id=str(document["mission_id"]),
        version=int(document["version"]),
        state=str(document["stored_state"]),
        expires_at=parse_rfc3339(document["expires_at"], field="expires_at"),
        suspend_until=(
            parse_rfc3339(document["suspend_until"], field="suspend_until")
            if document.get("suspend_until")
            else None
        ),
        agent=str(document["agent"]),
        user=str(document["user"]),
        parent_id=str(parent["id"]) if parent else None,
        stage=document.get("stage"),
        authority=parse_authority_set(document["authority_set"], allow_wildcard=True),
        authority_json=list(document["authority_set"]),
        position=0,
    )


def check_at(
    ledger: MissionLedger, mission_id: str, *, action: str, resource: str, at: datetime
) -> CheckResult:
    """Decide a request as the Authority would have at ``at``, from the stored events.

    The Mission and each ancestor are rebuilt as of ``at`` (:meth:`MissionLedger.mission_as_of`)
    and judged by the same rules as live checks, without the call quota. ``rests_on`` lists every
    event (Mission first, then each ancestor consulted) the answer was built from.
    ``ledger_position`` is the newest stored notification id, read before the Missions.
    Store failures raise :class:`~mission_ledger.errors.Unavailable`.
    """
    _require_aware(at, "at")
    try:
        position = ledger.recorder.max_notification_id() or 0
    except (OperationalError, InterfaceError) as error:
        raise Unavailable(f"the event store is unavailable ({type(error).__name__})") from error
    shown_id = mission_id if isinstance(mission_id, str) else str(mission_id)
    rests_on: list[dict[str, Any]] = []

    def load(mid: str) -> MissionRow | None:
        try:
            document = ledger.mission_as_of(mid, as_of=at)
        except NotFound:
            return None
        rests_on.extend(
            {
                "mission_id": str(document["mission_id"]),
                "event_id": e["event_id"],
                "version": e["version"],
                "type": e["type"],
                "timestamp": e["timestamp"],
            }
            for e in document["rests_on"]
        )
        return _row_from_document(document)

    row = load(mission_id)
    if row is None:
        return CheckResult(DENY, "not_found", shown_id, None, position)
    if not isinstance(action, str) or not isinstance(resource, str):
        verdict = _Verdict("out_of_authority")
    else:
        verdict = _judge(row, load, action=action, resource=resource, at=at)
    grant = None
    if verdict.reason == "allowed":
        assert verdict.entry_index is not None
        grant = {
            "entry_index": verdict.entry_index,
            "entry": row.authority.entries[verdict.entry_index].to_json(),
        }
    return CheckResult(
        ALLOW if grant is not None else DENY,
        verdict.reason,
        row.mission_id,
        row.version,
        position,
        state=verdict.state,
        grant=grant,
        ancestor=verdict.ancestor,
        rests_on=rests_on,
    )


# ---------------------------------------------------------------------------------------------
# OpenID AuthZEN Authorization API 1.0
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuthzenQuery:
    """One validated AuthZEN evaluation, mapped onto a check."""

    mission_id: str
    action: str
    resource: str
    subject_type: str
    subject_id: str


_AUTHZEN_PARTS = ("subject", "action", "resource", "context")


def _object(value: object, path: str, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"{what} must be a JSON object", field=path)
    return value


def _member(obj: Mapping[str, Any], name: str, path: str, *, non_empty: bool = False) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or (non_empty and not value):
        need = "a non-empty string" if non_empty else "a string"
        raise InvalidInput(f"{path}.{name} is required and must be {need}", field=f"{path}.{name}")
    return value


def _entity(parts: Mapping[str, Any], key: str, path: str, names: tuple[str, ...]) -> list[str]:
    if key not in parts:
        raise InvalidInput(f"{path} is required", field=path)
    obj = _object(parts[key], path, path)
    values = [_member(obj, name, path) for name in names]
    if "properties" in obj:
        _object(obj["properties"], f"{path}.properties", f"{path}.properties")
    return values


def _parse_parts(parts: Mapping[str, Any], paths: Mapping[str, str]) -> AuthzenQuery:
    subject_type, subject_id = _entity(parts, "subject", paths["subject"], ("type", "id"))
    _, resource = _entity(parts, "resource", paths["resource"], ("type", "id"))
    (action,) = _entity(parts, "action", paths["action"], ("name",))
    context_path = paths["context"]
    if "context" not in parts:
        raise InvalidInput(
            f"{context_path}.mission_id is required: name the Mission the request is made under",
            field=f"{context_path}.mission_id",
        )
    context = _object(parts["context"], context_path, context_path)
    mission_id = _member(context, "mission_id", context_path, non_empty=True)
    return AuthzenQuery(mission_id, action, resource, subject_type, subject_id)


def parse_authzen_evaluation(request: object) -> AuthzenQuery:
    """Validate an Access Evaluation request; raise :class:`InvalidInput` naming the field."""
    body = _object(request, "body", "the request body")
    return _parse_parts(body, {key: key for key in _AUTHZEN_PARTS})


def parse_authzen_evaluations(request: object) -> tuple[list[AuthzenQuery], str]:
    """Validate an Access Evaluations (batch) request: the queries and the semantic.

    Top-level ``subject``/``action``/``resource``/``context`` are defaults; a member given on
    an item replaces the default as a whole. An empty or missing ``evaluations`` list evaluates
    the top-level request alone. ``options.evaluations_semantic`` is ``execute_all`` (default),
    ``deny_on_first_deny`` or ``permit_on_first_permit``.
    """
    body = _object(request, "body", "the request body")
    semantic = "execute_all"
    if "options" in body:
        options = _object(body["options"], "options", "options")
        if "evaluations_semantic" in options:
            semantic = options["evaluations_semantic"]
            if semantic not in EVALUATIONS_SEMANTICS:
                raise InvalidInput(
                    "options.evaluations_semantic must be one of "
                    + ", ".join(EVALUATIONS_SEMANTICS),
                    field="options.evaluations_semantic",
                )
    items = body.get("evaluations")
    if items is None or items == []:
        return [parse_authzen_evaluation(body)], semantic
    if not isinstance(items, list):
        raise InvalidInput("evaluations must be a JSON array", field="evaluations")
    queries: list[AuthzenQuery] = []
    for index, item in enumerate(items):
        item_path = f"evaluations[{index}]"
        item_obj = _object(item, item_path, item_path)
        merged = {key: body[key] for key in _AUTHZEN_PARTS if key in body}
        merged.update({key: item_obj[key] for key in _AUTHZEN_PARTS if key in item_obj})
        paths = {key: f"{item_path}.{key}" if key in item_obj else key for key in _AUTHZEN_PARTS}
        queries.append(_parse_parts(merged, paths))
    return queries, semantic


def _authzen_response(result: CheckResult) -> dict[str, Any]:
    context: dict[str, Any] = {
        "reason": result.reason,
        "mission_version": result.mission_version,
        "ledger_position": result.ledger_position,
    }
    for name in ("detail", "state", "ancestor", "grant"):
        value = getattr(result, name)
        if value is not None:
            context[name] = value
    return {"decision": result.allowed, "context": context}


def answer_authzen(
    view: LiveAuthorizationView, query: AuthzenQuery, *, now: datetime
) -> tuple[dict[str, Any], CheckResult]:
    """Decide one query: the AuthZEN response and the check it came from.

    An ``agent`` subject must be the Mission's agent (else ``out_of_authority`` with
    ``detail: subject_mismatch``); other subject types are not matched against the Mission.
    """
    agent = query.subject_id if query.subject_type == "agent" else None
    result = view._check(
        query.mission_id, action=query.action, resource=query.resource, now=now, agent=agent
    )
    return _authzen_response(result), result


def authzen_evaluate(
    view: LiveAuthorizationView, request: dict[str, Any], *, now: datetime
) -> dict[str, Any]:
    """AuthZEN Access Evaluation: ``{"decision": bool, "context": {"reason", …}}``."""
    response, _ = answer_authzen(view, parse_authzen_evaluation(request), now=now)
    return response


def evaluate_authzen_batch(
    view: LiveAuthorizationView,
    queries: list[AuthzenQuery],
    semantic: str,
    *,
    now: datetime,
    hidden: Collection[str] = (),
) -> tuple[dict[str, Any], list[CheckResult]]:
    """Decide validated queries in order, honouring the semantic's short circuit.

    Queries on Missions in ``hidden`` (the caller may not see them) answer ``not_found``
    without consulting the view, exactly like an unknown Mission.
    """
    answers: list[dict[str, Any]] = []
    results: list[CheckResult] = []
    for query in queries:
        if query.mission_id in hidden:
            result = CheckResult(DENY, "not_found", query.mission_id, None, view.position)
            answer = _authzen_response(result)
        else:
            answer, result = answer_authzen(view, query, now=now)
        answers.append(answer)
        results.append(result)
        if (semantic == "deny_on_first_deny" and not result.allowed) or (
            semantic == "permit_on_first_permit" and result.allowed
        ):
            break
    return {"evaluations": answers}, results


def authzen_evaluations(
    view: LiveAuthorizationView, request: dict[str, Any], *, now: datetime
) -> dict[str, Any]:
    """AuthZEN Access Evaluations: ``{"evaluations": [{"decision", "context"}, …]}``."""
    queries, semantic = parse_authzen_evaluations(request)
    response, _ = evaluate_authzen_batch(view, queries, semantic, now=now)
    return response


# ---------------------------------------------------------------------------------------------
# AgentPass
# ---------------------------------------------------------------------------------------------


def agentpass_scope(
    view: LiveAuthorizationView, authorization_id: str, *, now: datetime
) -> list[str] | None:
    """The current approved scopes of an AgentPass ``authorization_id`` (a Mission id).

    The sorted, unique actions of the Mission's Authority Set while the Mission and every
    ancestor are effectively active, keeping only actions every ancestor's current Set still
    grants (decision #12; resources are not compared, AgentPass scopes carry none). None for
    unknown, suspended, revoked, expired or otherwise inactive Missions: AgentPass answers all
    of them with the same 404. Raises :class:`Unavailable` when the view is not current, so a
    stale view never tells a Service to drop a live delegation.
    """
    _require_aware(now, "now")
    if not view.healthy():
        raise Unavailable("the authorization view is not current; retry shortly")
    chain = view.lineage(authorization_id)
    if chain is None or any(row.effective_state(now) != ACTIVE for row in chain):
        return None
    own, ancestors = chain[0], chain[1:]
    actions = {action for entry in own.authority.entries for action in entry.actions}
    bounds = [[g for e in a.authority.entries for g in e.actions] for a in ancestors]
    return sorted(
        action
        for action in actions
        if all(any(action_covers(granted, action) for granted in bound) for bound in bounds)
    )


def agentpass_configuration(issuer: str) -> dict[str, Any]:
    """The AgentPass Authority configuration document of this Authority.

    Only the endpoints this Authority implements are listed: ``authorization_check``.
    ``issuance`` / ``issuance_status`` and ``validate`` are absent because this Authority does
    not (yet) issue or validate AgentPasses: Missions are created by proposal and approval, and
    an AgentPass issuer in front of it would call ``authorization_check`` with the Mission id as
    ``authorization_id``. ``jwks_uri`` points at ``{issuer}/jwks.json``, which will serve the
    keys of the SSF transmitter (the Authority's signing keys) once that exists.
    """
    base = issuer.rstrip("/")
    return {
        "version": AGENTPASS_VERSION,
        "authority": issuer,
        "trust_mode": "enterprise",
        "jwks_uri": f"{base}/jwks.json",
        "endpoints": {"authorization_check": f"{base}/agentpass/authorization-check"},
    }
