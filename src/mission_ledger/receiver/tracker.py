"""Apply verified SETs to what a Service knows about Missions (``ssf/README.md``, "What a
receiver must do").

:class:`MissionTracker` keeps, per Mission, the last applied ``version``, its ``state`` and (when
known) its ``authority_set``, and answers :meth:`~MissionTracker.is_active`. Rules:

- **De-duplication.** A SET whose ``jti`` (per issuer) was already applied is acknowledged again
  but not reprocessed (RFC 8935 §2, RFC 8936 §2: transmitters redeliver). Memory is bounded: the
  last ``max_jtis`` (default 100 000) are remembered, least recently seen forgotten first;
  forgetting one is harmless because of the next rule.
- **Ordering by version.** An event whose ``version`` is ≤ the last applied one is a duplicate or
  an old event and is ignored: an old event never reactivates a Mission, and a terminal state
  (``revoked`` ``expired`` ``completed`` ``cascaded`` ``superseded``) never comes back.
- **Gaps.** An event more than one version ahead, or the first event seen for a Mission with
  ``version`` > 1, is applied (it carries the state after its commit) but marks the Mission
  ``needs_resync``: the events in between (a narrowing, say) are unknown. The tracker then awaits
  its ``reader`` (pluggable; :func:`http_mission_reader` does ``GET {issuer}/missions/{id}`` with
  the Service's token) and merges the document if it is at least as new. Until a read succeeds
  the Mission is not active for :meth:`~MissionTracker.is_active` (fail closed).
- **Event types.** Our profile's ``mission-*`` types (``mission_id``, ``state``, ``version``,
  ``authority_set`` when present, ``authority_hash``); the Mission drafts' ``lifecycle-change``
  (``mission.id``, ``state``, ``version``, ``authority_changed``); CAEP ``session-revoked`` with
  the complex subject ``{"session": {"format": "opaque", "id": MISSION_ID}}``: it has no
  version, so the Mission stops being active until its versioned twin (the profile or drafts
  event with the same ``txn``) or a read says otherwise; a CAEP SET whose ``txn`` an applied
  versioned event already carried is a no-op. ``token-claims-change``: the Authority Set
  narrowed (known set dropped, re-read). SSF ``verification`` (the ``state`` must be
  one this receiver asked for via :meth:`~MissionTracker.expect_verification`, else
  :class:`~.errors.InvalidSetState`; no ``state`` = unsolicited, fine) and ``stream-updated`` (a
  ``disabled`` stream drops events, so every known Mission needs a re-read; on ``enabled`` they
  are re-read). Proposal types and types this SDK does not know are ignored (SETs are not
  commands, RFC 8935 §3).
- A profile or drafts event without a usable ``mission_id``/``version``/``state`` is refused with
  :class:`~mission_ledger.errors.InvalidSetRequest` (``invalid_request``: the payload does not
  conform to its event definition).

The tracker is for one asyncio event loop; it holds no locks because every state change happens
between two ``await`` points. It keeps one small record per Mission ever seen (terminal ones are
the tombstones that stop old events from resurrecting them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol
from urllib.parse import quote

import aiohttp

from ..errors import InvalidSetRequest
from ..ssf.mission_events import (
    CAEP_SESSION_REVOKED,
    CAEP_TOKEN_CLAIMS_CHANGE,
    LIFECYCLE_CHANGE,
    NAMESPACE,
)
from ._http import DEFAULT_TIMEOUT, check_url, request
from .errors import InvalidResponse, InvalidSetState, StreamNotFound
from .verifier import VerifiedSet

__all__ = [
    "STREAM_UPDATED",
    "TERMINAL_STATES",
    "VERIFICATION",
    "MissionReader",
    "MissionState",
    "MissionTracker",
    "Outcome",
    "StreamEvent",
    "http_mission_reader",
]

log = logging.getLogger("mission_ledger.receiver")

# SSF 1.0 §8.1.4.1 and §8.1.5 (the transmitter's copies live in mission_ledger.ssf.streams,
# which this SDK does not import: it would pull in the whole ledger).
VERIFICATION = "https://schemas.openid.net/secevent/ssf/event-type/verification"
STREAM_UPDATED = "https://schemas.openid.net/secevent/ssf/event-type/stream-updated"
TERMINAL_STATES = frozenset({"revoked", "expired", "completed", "cascaded", "superseded"})
ACTIVE = "active"
DEFAULT_MAX_JTIS = 100_000
MAX_PENDING_STATES = 1_000
RESYNC_CONCURRENCY = 8
RECENT_TXNS = 8  # per Mission: a CAEP SET with one of these txns is already reflected

#: ``await reader(mission_id)`` → the Mission document (at least ``state`` and ``version``;
#: ``authority_set``/``authority_hash`` when known), or ``None`` when it cannot be read.
MissionReader = Callable[[str], Awaitable[Mapping[str, Any] | None]]

OutcomeKind = Literal[
    "applied",
    "duplicate",
    "stale",
    "session_revoked",
    "claims_changed",
    "verification",
    "stream_updated",
    "ignored",
]


class VerificationRequester(Protocol):
    """What :meth:`MissionTracker.request_verification` calls: a :class:`~.streams.StreamClient`."""

    async def request_verification(self, stream_id: str, state: str | None = None) -> str: ...


@dataclass
class MissionState:
    """What is known about one Mission (a copy: changing it changes nothing)."""

    mission_id: str
    state: str | None = None
    version: int = 0
    authority_set: list[Any] | None = None
    authority_hash: str | None = None
    needs_resync: bool = False
    session_revoked: bool = False
    revoked_txn: str | None = None
    last_event_type: str | None = None
    recent_txns: tuple[str, ...] = ()

    @property
    def last_txn(self) -> str | None:
        return self.recent_txns[-1] if self.recent_txns else None

    @property
    def active(self) -> bool:
        """``state`` is ``active``, confirmed (no unresolved gap), and no session revocation
        is pending: the only condition under which a Service may rely on the Mission."""
        return self.state == ACTIVE and not self.needs_resync and not self.session_revoked

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True)
class StreamEvent:
    """The last ``stream-updated`` seen for a stream (a transmitter-initiated status change)."""

    stream_id: str
    status: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What :meth:`MissionTracker.apply` did with one SET."""

    kind: OutcomeKind
    jti: str
    event_type: str
    mission: MissionState | None = None
    resynced: bool | None = None  # a re-read was needed: did it succeed?
    detail: str = ""

    @property
    def mission_id(self) -> str | None:
        return self.mission.mission_id if self.mission is not None else None


def http_mission_reader(
    issuer: str,
    token: str,
    session: aiohttp.ClientSession,
    *,
    allow_http: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> MissionReader:
    """A reader doing ``GET {issuer}/missions/{id}`` with ``token`` (our Authority's API; a
    ``receiver`` token may read the Missions in its scope). 404 → ``None``."""
    base = check_url(issuer.rstrip("/"), "the issuer", allow_http=allow_http)

    async def read(mission_id: str) -> Mapping[str, Any] | None:
        url = f"{base}/missions/{quote(mission_id, safe='')}"
        try:
            reply = await request(
                session, "GET", url, operation="re-read Mission", token=token, timeout=timeout
            )
        except StreamNotFound:
            return None
        document = reply.json()
        if not isinstance(document, dict):
            raise InvalidResponse(f"the Mission at {url} is not a JSON object", url=url)
        return document

    return read


def _versioned(verified: VerifiedSet) -> tuple[str, int, str] | None:
    """``(mission_id, version, state)`` of a profile ``mission-*`` or drafts event, else None."""
    event_type, event = verified.event_type, verified.event
    if event_type == LIFECYCLE_CHANGE:
        mission = event.get("mission")
        mission_id = mission.get("id") if isinstance(mission, dict) else None
    elif event_type.startswith(NAMESPACE + "mission-"):
        mission_id = event.get("mission_id")
        sub_id = verified.sub_id
        if (
            isinstance(mission_id, str)
            and sub_id.get("format") == "opaque"
            and sub_id.get("id") != mission_id
        ):
            raise InvalidSetRequest(
                f"{event_type}: mission_id {mission_id!r} is not the sub_id {sub_id.get('id')!r}"
            )
    else:
        return None
    version, state = event.get("version"), event.get("state")
    if not isinstance(mission_id, str) or not mission_id:
        raise InvalidSetRequest(f"{event_type}: the event names no Mission id")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidSetRequest(f"{event_type}: version must be a positive integer")
    if not isinstance(state, str) or not state:
        raise InvalidSetRequest(f"{event_type}: state must be a non-empty string")
    return mission_id, version, state


def _session_mission(verified: VerifiedSet) -> str | None:
    """The Mission id of a CAEP event: its complex subject's ``session`` (opaque) member."""
    sub_id = verified.sub_id
    session = sub_id.get("session") if sub_id.get("format") == "complex" else None
    if isinstance(session, dict) and session.get("format") == "opaque":
        value = session.get("id")
        if isinstance(value, str) and value:
            return value
    return None


class MissionTracker:
    """Per-Mission state from verified SETs (see the module doc).

    ``reader``: how to re-read a Mission after a gap (``None``: gaps stay unresolved and those
    Missions are never active until a contiguous history is re-established by a read).
    """

    def __init__(
        self,
        reader: MissionReader | None = None,
        *,
        max_jtis: int = DEFAULT_MAX_JTIS,
    ) -> None:
        if max_jtis < 1:
            raise ValueError("max_jtis must be at least 1")
        self.reader = reader
        self.max_jtis = max_jtis
        self._missions: dict[str, MissionState] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._expected: OrderedDict[str, asyncio.Event] = OrderedDict()
        self.streams: dict[str, StreamEvent] = {}

    # -- queries -------------------------------------------------------------------------------

    def mission(self, mission_id: str) -> MissionState | None:
        known = self._missions.get(mission_id)
        return dataclasses.replace(known) if known is not None else None

    def missions(self) -> dict[str, MissionState]:
        return {mid: dataclasses.replace(m) for mid, m in self._missions.items()}

    def is_active(self, mission_id: str) -> bool:
        """Whether the Service may rely on ``mission_id`` now (unknown Missions: False)."""
        known = self._missions.get(mission_id)
        return known is not None and known.active

    def active_missions(self) -> set[str]:
        return {mid for mid, m in self._missions.items() if m.active}

    def seen(self, issuer: str, jti: str) -> bool:
        return (issuer, jti) in self._seen

    # -- verification --------------------------------------------------------------------------

    def expect_verification(self, state: str | None = None) -> str:
        """Register ``state`` (a fresh random one by default) as one this receiver asked a
        transmitter to echo; returns it. The last 1000 are remembered."""
        if state is None:
            state = secrets.token_urlsafe(24)
        self._expected[state] = self._expected.get(state) or asyncio.Event()
        self._expected.move_to_end(state)
        while len(self._expected) > MAX_PENDING_STATES:
            self._expected.popitem(last=False)
        return state

    def is_verified(self, state: str) -> bool:
        event = self._expected.get(state)
        return event is not None and event.is_set()

    async def wait_verified(self, state: str) -> None:
        """Wait until the verification SET echoing ``state`` has been applied (wrap it in
        ``asyncio.timeout``)."""
        event = self._expected.get(state)
        if event is None:
            raise KeyError(f"state {state!r} was never registered with expect_verification")
        await event.wait()

    async def request_verification(self, client: VerificationRequester, stream_id: str) -> str:
        """Register a fresh state, then ask ``client`` (a :class:`~.streams.StreamClient`) for
        a verification SET echoing it; returns the state."""
        state = self.expect_verification()
        try:
            await client.request_verification(stream_id, state)
        except BaseException:
            self._expected.pop(state, None)
            raise
        return state

    # -- applying ------------------------------------------------------------------------------

    def _remember(self, key: tuple[str, str]) -> None:
        self._seen[key] = None
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_jtis:
            self._seen.popitem(last=False)

    async def apply(self, verified: VerifiedSet) -> Outcome:
        """Apply one verified SET; returns what happened. Raises
        :class:`~mission_ledger.errors.SetVerificationError` subclasses for SETs to refuse
        (``invalid_request``, ``invalid_state``); any other error leaves the ``jti`` unseen, so
        a redelivery is processed again."""
        key = (verified.iss, verified.jti)
        if key in self._seen:
            self._seen.move_to_end(key)
            return Outcome("duplicate", verified.jti, verified.event_type)
        self._remember(key)  # before any await: a concurrent redelivery is a duplicate
        try:
            return await self._apply(verified)
        except BaseException:
            self._seen.pop(key, None)
            raise

    async def _apply(self, verified: VerifiedSet) -> Outcome:
        event_type = verified.event_type
        versioned = _versioned(verified)
        if versioned is not None:
            return await self._apply_versioned(verified, *versioned)
        if event_type in (CAEP_SESSION_REVOKED, CAEP_TOKEN_CLAIMS_CHANGE):
            return await self._apply_caep(verified)
        if event_type == VERIFICATION:
            return self._apply_verification(verified)
        if event_type == STREAM_UPDATED:
            return await self._apply_stream_updated(verified)
        return Outcome("ignored", verified.jti, event_type, detail="not a Mission event")

    async def _apply_versioned(
        self, verified: VerifiedSet, mission_id: str, version: int, state: str
    ) -> Outcome:
        event = verified.event
        known = self._missions.get(mission_id)
        if known is not None and known.version >= version:
            return Outcome(
                "stale",
                verified.jti,
                verified.event_type,
                dataclasses.replace(known),
                detail=f"version {version} ≤ last applied {known.version}",
            )
        if known is not None and known.terminal and state not in TERMINAL_STATES:
            log.warning(
                "ignoring an event that would revive a terminal Mission",
                extra={"mission_id": mission_id, "state": state, "version": version},
            )
            return Outcome(
                "ignored",
                verified.jti,
                verified.event_type,
                dataclasses.replace(known),
                detail=f"{known.state} is terminal; {state} at version {version} ignored",
            )
        mission = known if known is not None else MissionState(mission_id)
        gap = version > mission.version + 1
        txn = verified.txn
        mission.state = state
        mission.version = version
        mission.last_event_type = verified.event_type
        if txn is not None:
            mission.recent_txns = (*mission.recent_txns, txn)[-RECENT_TXNS:]
            if mission.session_revoked and txn == mission.revoked_txn:
                mission.session_revoked = False  # the revocation's twin: it says it all
                mission.revoked_txn = None
        new_hash = event.get("authority_hash")
        changed = event.get("authority_changed") is True or (
            isinstance(new_hash, str)
            and mission.authority_hash is not None
            and new_hash != mission.authority_hash
        )
        if isinstance(event.get("authority_set"), list):
            mission.authority_set = list(event["authority_set"])
            changed = False
        elif changed:
            mission.authority_set = None  # changed, and this event does not carry it
        if isinstance(new_hash, str):
            mission.authority_hash = new_hash
        if gap:
            mission.needs_resync = True
        self._missions[mission_id] = mission
        resynced = None
        if mission.needs_resync or mission.session_revoked or changed:
            resynced = await self.resync(mission_id) if self.reader is not None else False
        return Outcome(
            "applied",
            verified.jti,
            verified.event_type,
            self.mission(mission_id),
            resynced=resynced,
        )

    async def _apply_caep(self, verified: VerifiedSet) -> Outcome:
        mission_id = _session_mission(verified)
        kind: OutcomeKind = (
            "session_revoked" if verified.event_type == CAEP_SESSION_REVOKED else "claims_changed"
        )
        if mission_id is None:
            return Outcome(
                "ignored", verified.jti, verified.event_type, detail="subject is not a Mission"
            )
        mission = self._missions.setdefault(mission_id, MissionState(mission_id))
        if verified.txn is not None and verified.txn in mission.recent_txns:
            # The versioned event of the same ledger commit is already applied: it says it all.
            return Outcome(
                kind,
                verified.jti,
                verified.event_type,
                self.mission(mission_id),
                detail="already applied (same txn)",
            )
        if kind == "session_revoked":
            mission.session_revoked = True
            mission.revoked_txn = verified.txn
        else:
            mission.authority_set = None
        mission.last_event_type = verified.event_type
        resynced = await self.resync(mission_id) if self.reader is not None else None
        return Outcome(
            kind, verified.jti, verified.event_type, self.mission(mission_id), resynced=resynced
        )

    def _apply_verification(self, verified: VerifiedSet) -> Outcome:
        state = verified.event.get("state")
        if state is None:
            detail = "unsolicited"
        else:
            pending = self._expected.get(state) if isinstance(state, str) else None
            if pending is None:
                raise InvalidSetState(
                    "the verification event's state is not one this receiver requested"
                )
            pending.set()
            detail = "state matched"
        return Outcome("verification", verified.jti, verified.event_type, detail=detail)

    async def _apply_stream_updated(self, verified: VerifiedSet) -> Outcome:
        status = verified.event.get("status")
        reason = verified.event.get("reason")
        stream_id = verified.sub_id.get("id")
        if not isinstance(status, str):
            raise InvalidSetRequest("stream-updated: status is required (a string)")
        if isinstance(stream_id, str):
            self.streams[stream_id] = StreamEvent(
                stream_id, status, reason if isinstance(reason, str) else None
            )
        detail = f"stream {stream_id} is {status}" + (f" ({reason})" if reason else "")
        if status == "disabled":
            # A disabled stream drops events: nothing known may be relied on any longer.
            for mission in self._missions.values():
                if not mission.terminal:
                    mission.needs_resync = True
        elif status == "enabled" and self.reader is not None:
            await self.resync_all()
        return Outcome("stream_updated", verified.jti, verified.event_type, detail=detail)

    # -- re-reading ----------------------------------------------------------------------------

    async def resync(self, mission_id: str) -> bool:
        """Re-read ``mission_id`` with the reader and merge it if at least as new as what is
        known; whether the Mission is now confirmed. Reader errors are logged, not raised."""
        if self.reader is None:
            return False
        try:
            document = await self.reader(mission_id)
        except Exception as error:
            log.warning(
                "could not re-read a Mission; it stays unconfirmed",
                extra={"mission_id": mission_id, "error": str(error)},
            )
            return False
        if document is None:
            return False
        return self._merge(mission_id, document)

    async def resync_all(self) -> int:
        """Re-read every Mission that needs it (a few at a time); how many are confirmed."""
        todo = [mid for mid, m in self._missions.items() if m.needs_resync and not m.terminal]
        limit = asyncio.Semaphore(RESYNC_CONCURRENCY)

        async def one(mission_id: str) -> bool:
            async with limit:
                return await self.resync(mission_id)

        results = await asyncio.gather(*(one(mid) for mid in todo))
        return sum(results)

    def _merge(self, mission_id: str, document: Mapping[str, Any]) -> bool:
        version, state = document.get("version"), document.get("state")
        if (
            not isinstance(version, int)
            or isinstance(version, bool)
            or not isinstance(state, str)
            or not state
        ):
            log.warning(
                "a re-read Mission has no usable version/state", extra={"mission_id": mission_id}
            )
            return False
        mission = self._missions.setdefault(mission_id, MissionState(mission_id))
        if version < mission.version:
            return False  # an older view than what was applied; keep ours
        if mission.terminal and state not in TERMINAL_STATES:
            return False
        mission.state = state
        mission.version = version
        authority_set = document.get("authority_set")
        mission.authority_set = list(authority_set) if isinstance(authority_set, list) else None
        authority_hash = document.get("authority_hash")
        mission.authority_hash = authority_hash if isinstance(authority_hash, str) else None
        mission.needs_resync = False
        mission.session_revoked = False
        mission.revoked_txn = None
        return True
