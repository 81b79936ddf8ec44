"""The Mission ledger application: commands in, hash-chained events out.

One ``eventsourcing`` Application holds every Proposal, Mission and idempotency record. Each
command loads the aggregates it needs, lets the domain validate and record events, and commits
all of them in one transaction (through :class:`~mission_ledger.groupcommit.GroupCommitter`, so
concurrent commands on different Missions share transactions). Cascades (suspend → children,
terminal → descendants cascaded) and supersession happen inside the same command and commit.

Optimistic concurrency: a command that loses a race on an aggregate raises
:class:`~mission_ledger.domain.errors.MissionConflict` carrying the current version; nothing of it
is written. An idempotency key makes a command safe to retry: the first result is stored with the
command's events and returned again for the same key and body.
"""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar
from uuid import UUID, uuid4

from eventsourcing.application import (
    AggregateNotFoundError,
    Application,
    ProcessingEvent,
    project_aggregate,
)
from eventsourcing.domain import Snapshot
from eventsourcing.persistence import IntegrityError, InterfaceError, OperationalError, Recording

from .clock import Clock, SystemClock
from .config import Settings
from .domain.authority import parse_authority_set
from .domain.canonical import canonicalize
from .domain.chain import ChainedAggregate
from .domain.errors import InvalidInput, MissionConflict, MissionLedgerError, NotFound
from .domain.idempotency import IdempotencyRecord, idempotency_record_id
from .domain.mission import (
    ACTIVE,
    LIVE_STATES,
    SUSPENDED,
    ApprovalRequest,
    Mission,
)
from .domain.proposal import PENDING, Proposal, parse_proposal_document
from .domain.stream import Stream  # noqa: F401 (defining the class registers its event topics)
from .domain.timefmt import format_rfc3339, parse_rfc3339
from .errors import Unavailable, first_line
from .groupcommit import GroupCommitter

T = TypeVar("T", bound=ChainedAggregate)
P = ParamSpec("P")
R = TypeVar("R")

MISSION_TOPICS = tuple(
    cls.TOPIC
    for cls in (
        Mission.Approved,
        Mission.Suspended,
        Mission.Resumed,
        Mission.AuthorityNarrowed,
        Mission.StageAdvanced,
        Mission.Delegated,
        Mission.Revoked,
        Mission.Completed,
        Mission.Expired,
        Mission.Cascaded,
        Mission.Superseded,
    )
)
PROPOSAL_TOPICS = tuple(
    cls.TOPIC
    for cls in (
        Proposal.Submitted,
        Proposal.Approved,
        Proposal.Denied,
        Proposal.Withdrawn,
        Proposal.Expired,
    )
)
DEFAULT_SYSTEM_ACTOR = "system:expiry-clock"


def event_type_name(topic: str) -> str:
    """``mission_ledger.MissionSuspended.v1`` → ``MissionSuspended``."""
    parts = topic.split(".")
    return parts[1] if len(parts) == 3 else topic


@dataclass(frozen=True)
class CommandResult:
    """What a command returns: the document to show, whether it wrote, and where."""

    document: dict[str, Any]
    changed: bool
    position: int | None = None
    replayed: bool = False


@dataclass
class MissionSummary:
    """A row of the ledger's catalog (folded from the notification log)."""

    mission_id: str
    state: str = ACTIVE
    user: str = ""
    agent: str = ""
    parent: str | None = None
    expires_at: str = ""
    suspend_until: str | None = None
    on_expiry: str | None = None
    version: int = 0
    created_at: str = ""

    def effective_state(self, at: datetime) -> str:
        if self.state in LIVE_STATES and at >= parse_rfc3339(self.expires_at, field="expires_at"):
            return "expired"
        return self.state


@dataclass
class ProposalSummary:
    proposal_id: str
    state: str = PENDING
    user: str = ""
    agent: str = ""
    expires_at: str = ""
    version: int = 0
    created_at: str = ""
    mission_id: str | None = None

    def effective_state(self, at: datetime) -> str:
        if self.state == PENDING and at >= parse_rfc3339(self.expires_at, field="expires_at"):
            return "expired"
        return self.state


@dataclass
class ExpiryReport:
    """What one ``expire_due`` sweep did."""

    expired_missions: list[str] = field(default_factory=list)
    expired_proposals: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    revoked: list[str] = field(default_factory=list)
    cascaded: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "expired_missions": self.expired_missions,
            "expired_proposals": self.expired_proposals,
            "resumed": self.resumed,
            "revoked": self.revoked,
            "cascaded": self.cascaded,
            "skipped": self.skipped,
        }


def _parse_id(value: str | UUID, kind: str) -> UUID:
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except (ValueError, AttributeError, TypeError):
        raise NotFound(f"no {kind} {value!r}: {kind} ids are UUIDs") from None


@contextmanager
def _store_errors() -> Iterator[None]:
    """Turn the event store's operational failures into :class:`Unavailable` (retryable)."""
    try:
        yield
    except (OperationalError, InterfaceError) as error:
        raise Unavailable(
            f"the event store is unavailable ({first_line(error)}); nothing was changed by this "
            "request unless it reports success, so retry it (with the same idempotency key)"
        ) from error


def _reads_store(method: Callable[P, R]) -> Callable[P, R]:
    """Decorate a read so store failures surface as :class:`Unavailable`."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with _store_errors():
            return method(*args, **kwargs)

    return wrapper


def _fingerprint(command: str, args: dict[str, Any]) -> str:
    return hashlib.sha256(canonicalize({"command": command, "args": args})).hexdigest()


class CommitSignal:
    """Wakes this process's log followers when the ledger commits here.

    The authorization view and the embedded workers follow the notification log by polling it;
    commits made in this process (every HTTP command) wake them at once through this signal,
    so they can poll slowly while nothing happens. Writers in other processes (a CLI command on
    the same SQLite file, another server on the same PostgreSQL) are still seen by the polls."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0
        self._begun = 0

    @property
    def count(self) -> int:
        """How many commits this process has signalled (compare with :meth:`wait`'s answer)."""
        return self._count

    @property
    def begun(self) -> int:
        """How many commits this process has begun: ``begun - count`` are in flight (their
        events may be visible in the store before :meth:`notify`)."""
        return self._begun

    def begin(self) -> None:
        """A commit starts (call :meth:`notify` when it ends, whether or not it succeeded)."""
        with self._cond:
            self._begun += 1

    def notify(self) -> None:
        with self._cond:
            self._count += 1
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter without a commit (a follower stopping)."""
        with self._cond:
            self._cond.notify_all()

    def wait(self, seen: int, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for a commit after ``seen`` (a :attr:`count` read
        before the caller last looked at the log); returns the count now."""
        with self._cond:
            if self._count == seen:
                self._cond.wait(max(timeout, 0.0))
            return self._count


class MissionLedger(Application[UUID]):
    """The write side of the Authority."""

    name = "MissionLedger"  # fixes the PostgreSQL table names; never change it
    is_snapshotting_enabled = True

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        clock: Clock | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock: Clock = clock or SystemClock()
        app_env = self.settings.eventsourcing_env()
        app_env.update(env or {})
        super().__init__(env=app_env)
        self.committer = GroupCommitter(self._save_events, enabled=self.settings.group_commit)
        self.commits = CommitSignal()

    @property
    def issuer(self) -> str:
        return self.settings.issuer

    # -- infrastructure ---------------------------------------------------------------------------

    def _save_events(self, events: Sequence[Any]) -> list[Recording[UUID]]:
        # Application.save() minus its per-object runtime-protocol checks (costly, and we hand
        # it events only) and its interval snapshots (see _snapshot_if_due).
        processing = ProcessingEvent[UUID]()
        processing.events.extend(events)
        recordings = self._record(processing)
        self._notify(recordings)
        return recordings

    def _commit(self, aggregates: Sequence[ChainedAggregate]) -> int | None:
        """Commit every pending event of ``aggregates`` in one transaction; return the position."""
        events = [e for agg in aggregates for e in agg.collect_events()]
        if not events:
            return None
        self.commits.begin()
        try:
            recordings = self.committer.commit(events)
        finally:
            self.commits.notify()
        self._snapshot_if_due(aggregates, recordings)
        return max(r.notification.id for r in recordings)

    def _snapshot_if_due(
        self, aggregates: Sequence[ChainedAggregate], recordings: list[Recording[UUID]]
    ) -> None:
        interval = self.settings.snapshot_interval
        if self.snapshots is None or interval <= 0:
            return
        crossed = {
            r.domain_event.originator_id
            for r in recordings
            if r.domain_event.originator_version % interval == 0
        }
        for agg in aggregates:
            if agg.id in crossed:
                self.snapshots.put([Snapshot.take(agg)])

    def _get(self, cls: type[T], aggregate_id: UUID, kind: str, *, short: bool = False) -> T:
        """Load an aggregate; ``short`` streams (a few events) skip the snapshot lookup."""
        with _store_errors():
            return self._load(cls, aggregate_id, kind, short=short)

    def _load(self, cls: type[T], aggregate_id: UUID, kind: str, *, short: bool) -> T:
        try:
            if short:  # one query instead of two: a snapshot could never save a replay here
                agg: Any = project_aggregate(None, self.events.get(aggregate_id))
                if agg is None:
                    raise AggregateNotFoundError(aggregate_id)
            else:
                agg = self.repository.get(aggregate_id)
        except AggregateNotFoundError:
            raise NotFound(f"no {kind} {aggregate_id}") from None
        if not isinstance(agg, cls):
            raise NotFound(f"no {kind} {aggregate_id}")
        return agg

    def get_mission(self, mission_id: str | UUID) -> Mission:
        return self._get(Mission, _parse_id(mission_id, "Mission"), "Mission")

    def get_proposal(self, proposal_id: str | UUID) -> Proposal:
        # A proposal has at most two events (submitted, decided).
        return self._get(Proposal, _parse_id(proposal_id, "proposal"), "proposal", short=True)

    def _run(
        self,
        command: str,
        args: dict[str, Any],
        idempotency_key: str | None,
        actor: str,
        conflict_target: tuple[UUID, str] | None,
        body: Callable[[datetime], tuple[list[ChainedAggregate], dict[str, Any], bool]],
    ) -> CommandResult:
        """Run one command: idempotency check → domain → one commit → result."""
        with _store_errors():
            return self._run_command(command, args, idempotency_key, actor, conflict_target, body)

    def _run_command(
        self,
        command: str,
        args: dict[str, Any],
        idempotency_key: str | None,
        actor: str,
        conflict_target: tuple[UUID, str] | None,
        body: Callable[[datetime], tuple[list[ChainedAggregate], dict[str, Any], bool]],
    ) -> CommandResult:
        # Only an idempotent command needs the fingerprint (JCS + SHA-256 of every argument).
        fingerprint = _fingerprint(command, args) if idempotency_key is not None else ""
        if idempotency_key is not None:
            replay = self._replay(idempotency_key, command, fingerprint)
            if replay is not None:
                return replay
        now = self.clock.now()
        try:
            aggregates, document, changed = body(now)
        except MissionLedgerError:
            # A retry racing its own first attempt can see that attempt's effect (and be
            # refused, e.g. resume on a now-active Mission) after missing its record above.
            if idempotency_key is not None:
                replay = self._replay(idempotency_key, command, fingerprint)
                if replay is not None:
                    return replay
            raise
        if idempotency_key is not None:
            aggregates = [
                *aggregates,
                IdempotencyRecord.record(
                    key=idempotency_key,
                    command=command,
                    fingerprint=fingerprint,
                    result={"document": document, "changed": changed},
                    actor=actor,
                    now=now,
                ),
            ]
        try:
            position = self._commit(aggregates)
        except IntegrityError:
            if idempotency_key is not None:
                replay = self._replay(idempotency_key, command, fingerprint)
                if replay is not None:
                    return replay
            raise self._conflict(conflict_target) from None
        return CommandResult(document=document, changed=changed, position=position)

    def _replay(self, key: str, command: str, fingerprint: str) -> CommandResult | None:
        try:
            record: Any = self.repository.get(idempotency_record_id(key))
        except AggregateNotFoundError:
            return None
        assert isinstance(record, IdempotencyRecord)
        result = record.replay(command=command, fingerprint=fingerprint)
        return CommandResult(document=result["document"], changed=False, replayed=True)

    def _conflict(self, target: tuple[UUID, str] | None) -> MissionConflict:
        current: int | None = None
        what = "the ledger"
        if target is not None:
            aggregate_id, kind = target
            what = f"{kind} {aggregate_id}"
            try:
                current = self.repository.get(aggregate_id).version
            except AggregateNotFoundError:
                current = None
        return MissionConflict(
            f"{what} was changed by a concurrent command; reload it and try again",
            current_version=current,
        )

    @staticmethod
    def _expect(agg: ChainedAggregate, expected_version: int | None, kind: str) -> None:
        if expected_version is not None and agg.version != expected_version:
            raise MissionConflict(
                f"{kind} {agg.id} is at version {agg.version}, not {expected_version}; "
                "reload it and decide again",
                current_version=agg.version,
            )

    # -- proposals --------------------------------------------------------------------------------

    def propose(
        self, document: object, *, actor: str, idempotency_key: str | None = None
    ) -> CommandResult:
        """Submit a proposal document; returns the pending proposal."""

        def body(now: datetime) -> tuple[list[ChainedAggregate], dict[str, Any], bool]:
            doc = parse_proposal_document(document, now=now)
            if doc.predecessor is not None:
                predecessor = self.get_mission(doc.predecessor)
                if (predecessor.user, predecessor.agent) != (doc.user, doc.agent):
                    raise InvalidInput(
                        "a successor proposal must be for the same user and agent as its "
                        f"predecessor Mission {doc.predecessor}",
                        field="predecessor",
                    )
                if predecessor.effective_state(now) != ACTIVE:
                    raise InvalidInput(
                        f"predecessor Mission {doc.predecessor} is "
                        f"{predecessor.effective_state(now)}; only an active Mission can be "
                        "widened by a successor",
                        field="predecessor",
                    )
            proposal = Proposal.submit(
                doc, proposal_id=uuid4(), issuer=self.issuer, actor=actor, now=now
            )
            return [proposal], proposal.to_dict(now), True

        return self._run("propose", {"document": document}, idempotency_key, actor, None, body)

    def approve(
        self,
        proposal_id: str | UUID,
        *,
        actor: str,
        authority_set: object | None = None,
        evidence: Any = None,
        method: str = "manual",
        template_id: str | None = None,
        template_version: str | None = None,
        rule_ids: Sequence[str] = (),
        allow_wildcard: bool = False,
        wildcard_reason: str | None = None,
        expires_at: str | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        """Approve a pending proposal: a new active Mission (superseding its predecessor)."""
        pid = _parse_id(proposal_id, "proposal")
        args = {
            "proposal_id": str(pid),
            "authority_set": authority_set,
            "evidence": evidence,
            "method": method,
            "template_id": template_id,
            "template_version": template_version,
            "rule_ids": list(rule_ids),
            "allow_wildcard": allow_wildcard,
            "wildcard_reason": wildcard_reason,
            "expires_at": expires_at,
        }

        def body(now: datetime) -> tuple[list[ChainedAggregate], dict[str, Any], bool]:
            proposal = self.get_proposal(pid)
            granted = (
                parse_authority_set(authority_set, allow_wildcard=True)
                if authority_set is not None
                else None
            )
            request = ApprovalRequest(
                approver=actor,
                granted=granted,
                evidence=evidence,
                method=method,
                template_id=template_id,
                template_version=template_version,
                rule_ids=tuple(rule_ids),
                allow_wildcard=allow_wildcard,
                wildcard_reason=wildcard_reason,
                expires_at=parse_rfc3339(expires_at, field="expires_at") if expires_at else None,
            )
            mission_id = uuid4()
            changed: list[ChainedAggregate] = []
            if proposal.predecessor is not None:
                predecessor = self.get_mission(proposal.predecessor)
                mission = Mission.approve(proposal, request, mission_id=mission_id, now=now)
                predecessor.supersede(
                    successor=mission_id,
                    actor=actor,
                    now=now,
                    reason=f"superseded by Mission {mission_id}",
                )
                changed = [predecessor, *self._cascade_terminal(predecessor, actor, now)]
            else:
                mission = Mission.approve(proposal, request, mission_id=mission_id, now=now)
            return [proposal, mission, *changed], mission.to_dict(now), True

        return self._run("approve", args, idempotency_key, actor, (pid, "proposal"), body)

    def _decide(
        self,
        operation: str,
        proposal_id: str | UUID,
        actor: str,
        reason: str | None,
        idempotency_key: str | None,
    ) -> CommandResult:
        pid = _parse_id(proposal_id, "proposal")

        def body(now: datetime) -> tuple[list[ChainedAggregate], dict[str, Any], bool]:
            proposal = self.get_proposal(pid)
            decide = proposal.deny if operation == "deny" else proposal.withdraw
            changed = decide(actor=actor, reason=reason, now=now)
            return [proposal], proposal.to_dict(now), changed

        args = {"proposal_id": str(pid), "reason": reason}
        return self._run(operation, args, idempotency_key, actor, (pid, "proposal"), body)

    def deny(
        self,
        proposal_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        return self._decide("deny", proposal_id, actor, reason, idempotency_key)

    def withdraw(
        self,
        proposal_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
    ) -> CommandResult:
        return self._decide("withdraw", proposal_id, actor, reason, idempotency_key)

    # -- Mission lifecycle ------------------------------------------------------------------------

    def _mission_command(
        self,
        command: str,
        mission_id: str | UUID,
        args: dict[str, Any],
        actor: str,
        idempotency_key: str | None,
        expected_version: int | None,
        act: Callable[[Mission, datetime], list[ChainedAggregate]],
    ) -> CommandResult:
        mid = _parse_id(mission_id, "Mission")

        def body(now: datetime) -> tuple[list[ChainedAggregate], dict[str, Any], bool]:
            mission = self.get_mission(mid)
            self._expect(mission, expected_version, "Mission")
            before = mission.version
            others = act(mission, now)
            return [mission, *others], mission.to_dict(now), mission.version != before

        full_args = {"mission_id": str(mid), "expected_version": expected_version, **args}
        return self._run(command, full_args, idempotency_key, actor, (mid, "Mission"), body)

    def suspend(
        self,
        mission_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        until: str | None = None,
        on_expiry: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Suspend a Mission (and, reversibly, its live descendants)."""

        def act(mission: Mission, now: datetime) -> list[ChainedAggregate]:
            prior = mission.effective_state(now)
            until_dt = parse_rfc3339(until, field="suspend_until") if until else None
            if (
                not mission.suspend(
                    actor=actor, now=now, reason=reason, until=until_dt, on_expiry=on_expiry
                )
                or prior != ACTIVE
            ):
                return []
            cause = {"mission_id": str(mission.id), "event_id": self._head_event_id(mission)}
            suspended: list[ChainedAggregate] = []
            for child in self._descendants(mission):
                if child.effective_state(now) == ACTIVE:
                    child.suspend(
                        actor=actor,
                        now=now,
                        reason=f"ancestor {mission.id} suspended",
                        cause=cause,
                    )
                    suspended.append(child)
            return suspended

        args = {"reason": reason, "until": until, "on_expiry": on_expiry}
        return self._mission_command(
            "suspend", mission_id, args, actor, idempotency_key, expected_version, act
        )

    def resume(
        self,
        mission_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Resume a suspended Mission and exactly the descendants its suspension suspended."""

        def act(mission: Mission, now: datetime) -> list[ChainedAggregate]:
            return self._resume_tree(mission, actor, now, reason, trigger="operator")

        return self._mission_command(
            "resume", mission_id, {"reason": reason}, actor, idempotency_key, expected_version, act
        )

    def _resume_tree(
        self, mission: Mission, actor: str, now: datetime, reason: str | None, trigger: str
    ) -> list[ChainedAggregate]:
        blocked = self._suspended_ancestor(mission, now)
        mission.resume(
            actor=actor, now=now, reason=reason, trigger=trigger, suspended_ancestor=blocked
        )
        cause = {"mission_id": str(mission.id), "event_id": self._head_event_id(mission)}
        resumed: list[ChainedAggregate] = []
        # Walk down, but not below a descendant that stays suspended: its subtree must stay
        # suspended with it. Every ancestor of a Mission reached here is live and unsuspended
        # after this command, so a descendant suspended by an ancestor (``suspended_by`` set,
        # usually to ``mission``) resumes; one suspended on its own stays suspended.
        queue = [entry["mission_id"] for entry in mission.children]
        while queue:
            child = self.get_mission(queue.pop(0))
            if child.effective_state(now) == SUSPENDED:
                if child.suspended_by is None:
                    continue
                child.resume(
                    actor=actor,
                    now=now,
                    reason=f"ancestor {mission.id} resumed",
                    trigger="cascade",
                    cause=cause,
                )
                resumed.append(child)
            queue.extend(entry["mission_id"] for entry in child.children)
        return resumed

    def _end(
        self,
        command: str,
        mission_id: str | UUID,
        actor: str,
        reason: str | None,
        idempotency_key: str | None,
        expected_version: int | None,
    ) -> CommandResult:
        def act(mission: Mission, now: datetime) -> list[ChainedAggregate]:
            if command == "revoke":
                changed = mission.revoke(actor=actor, now=now, reason=reason)
            else:
                changed = mission.complete(actor=actor, now=now, reason=reason)
            return [*self._cascade_terminal(mission, actor, now)] if changed else []

        return self._mission_command(
            command, mission_id, {"reason": reason}, actor, idempotency_key, expected_version, act
        )

    def revoke(
        self,
        mission_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Revoke a Mission; every live descendant is cascaded in the same transaction."""
        return self._end("revoke", mission_id, actor, reason, idempotency_key, expected_version)

    def complete(
        self,
        mission_id: str | UUID,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Mark a Mission completed; every live descendant is cascaded."""
        return self._end("complete", mission_id, actor, reason, idempotency_key, expected_version)

    def narrow(
        self,
        mission_id: str | UUID,
        authority_set: object,
        *,
        actor: str,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Replace the Mission's Authority Set with a subset of it."""

        def act(mission: Mission, now: datetime) -> list[ChainedAggregate]:
            authority = parse_authority_set(authority_set, allow_wildcard=True)
            mission.narrow(authority, actor=actor, now=now, reason=reason)
            return []

        args = {"authority_set": authority_set, "reason": reason}
        return self._mission_command(
            "narrow", mission_id, args, actor, idempotency_key, expected_version, act
        )

    def advance_stage(
        self,
        mission_id: str | UUID,
        *,
        actor: str,
        to_stage: str | None = None,
        reason: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Move the Mission to its next (or the named later) stage."""

        def act(mission: Mission, now: datetime) -> list[ChainedAggregate]:
            mission.advance_stage(to_stage, actor=actor, now=now, reason=reason)
            return []

        args = {"to_stage": to_stage, "reason": reason}
        return self._mission_command(
            "stage", mission_id, args, actor, idempotency_key, expected_version, act
        )

    def delegate(
        self,
        mission_id: str | UUID,
        *,
        agent: str,
        authority_set: object,
        actor: str,
        expires_at: str | None = None,
        idempotency_key: str | None = None,
        expected_version: int | None = None,
    ) -> CommandResult:
        """Create a child Mission for ``agent``; returns the child."""
        pid = _parse_id(mission_id, "Mission")
        args = {
            "mission_id": str(pid),
            "agent": agent,
            "authority_set": authority_set,
            "expires_at": expires_at,
            "expected_version": expected_version,
        }

        def body(now: datetime) -> tuple[list[ChainedAggregate], dict[str, Any], bool]:
            if not isinstance(agent, str) or not agent.strip():
                raise InvalidInput("agent must name the child agent", field="agent")
            parent = self.get_mission(pid)
            self._expect(parent, expected_version, "Mission")
            authority = parse_authority_set(authority_set, allow_wildcard=True)
            live = [
                (child.agent, child.authority())
                for child in (self.get_mission(e["mission_id"]) for e in parent.children)
                if child.effective_state(now) in LIVE_STATES
            ]
            child = parent.delegate(
                child_id=uuid4(),
                child_agent=agent,
                authority=authority,
                expires_at=parse_rfc3339(expires_at, field="expires_at") if expires_at else None,
                live_children=live,
                actor=actor,
                now=now,
            )
            return [parent, child], child.to_dict(now), True

        return self._run("delegate", args, idempotency_key, actor, (pid, "Mission"), body)

    # -- cascades ---------------------------------------------------------------------------------

    @staticmethod
    def _head_event_id(agg: ChainedAggregate) -> str:
        pending = agg.pending_events
        return str(pending[-1].event_id) if pending else ""  # type: ignore[attr-defined]

    def _descendants(self, mission: Mission) -> Iterator[Mission]:
        """Every descendant, breadth first (each loaded once)."""
        queue = [entry["mission_id"] for entry in mission.children]
        while queue:
            child = self.get_mission(queue.pop(0))
            yield child
            queue.extend(entry["mission_id"] for entry in child.children)

    def _suspended_ancestor(self, mission: Mission, now: datetime) -> str | None:
        parent = mission.parent
        while parent is not None:
            ancestor = self.get_mission(parent["id"])
            if ancestor.effective_state(now) == SUSPENDED:
                return str(ancestor.id)
            parent = ancestor.parent
        return None

    def _cascade_terminal(self, mission: Mission, actor: str, now: datetime) -> list[Mission]:
        """Move every live descendant of a now-terminal Mission to ``cascaded``."""
        cause = {
            "mission_id": str(mission.id),
            "event_id": self._head_event_id(mission),
            "state": mission.state,
        }
        return [
            child
            for child in self._descendants(mission)
            if child.cascade(actor=actor, now=now, cause=cause)
        ]

    # -- the clock --------------------------------------------------------------------------------

    @_reads_store
    def expire_due(self, *, actor: str = DEFAULT_SYSTEM_ACTOR) -> ExpiryReport:
        """Record every expiry and ``suspend_until`` deadline that has passed."""
        report = ExpiryReport()
        now = self.clock.now()
        missions, proposals = self.catalog()
        due = sorted(
            (m for m in missions.values() if m.state in LIVE_STATES),
            key=lambda m: (m.expires_at, -len(m.mission_id)),
        )
        for summary in due:
            if now < parse_rfc3339(summary.expires_at, field="expires_at"):
                continue
            self._sweep(report, summary.mission_id, actor, "expire")
        for summary in missions.values():
            if (
                summary.state == SUSPENDED
                and summary.suspend_until is not None
                and now >= parse_rfc3339(summary.suspend_until, field="suspend_until")
                and now < parse_rfc3339(summary.expires_at, field="expires_at")
            ):
                self._sweep(report, summary.mission_id, actor, "deadline")
        for p in proposals.values():
            if p.effective_state(now) == "expired" and p.state == PENDING:
                proposal = self.get_proposal(p.proposal_id)
                if proposal.expire(actor=actor, now=now):
                    try:
                        self._commit([proposal])
                        report.expired_proposals.append(p.proposal_id)
                    except IntegrityError:
                        report.skipped.append({"id": p.proposal_id, "why": "concurrent change"})
        return report

    def _sweep(self, report: ExpiryReport, mission_id: str, actor: str, kind: str) -> None:
        now = self.clock.now()
        mission = self.get_mission(mission_id)
        changed: list[ChainedAggregate] = []
        if kind == "expire":
            if not mission.expire(actor=actor, now=now):
                return
            cascaded = self._cascade_terminal(mission, actor, now)
            changed = [mission, *cascaded]
            outcome = report.expired_missions
        else:
            if mission.state != SUSPENDED or mission.suspend_until is None:
                return
            if now < parse_rfc3339(mission.suspend_until, field="suspend_until"):
                return
            try:
                if mission.on_expiry == "resume":
                    changed = [
                        mission,
                        *self._resume_tree(
                            mission, actor, now, "suspend_until reached", "suspend_until"
                        ),
                    ]
                    outcome = report.resumed
                else:
                    mission.revoke(
                        actor=actor,
                        now=now,
                        reason="suspend_until reached",
                        trigger="suspend_until",
                    )
                    changed = [mission, *self._cascade_terminal(mission, actor, now)]
                    outcome = report.revoked
            except Exception as error:  # e.g. an ancestor is still suspended
                report.skipped.append({"id": mission_id, "why": str(error)})
                return
        try:
            self._commit(changed)
        except IntegrityError:
            report.skipped.append({"id": mission_id, "why": "concurrent change; run again"})
            return
        outcome.append(mission_id)
        report.cascaded.extend(
            str(m.id) for m in changed[1:] if isinstance(m, Mission) and m.state == "cascaded"
        )
        # a descendant whose own expiry had passed is recorded as expired, not cascaded
        report.expired_missions.extend(
            str(m.id) for m in changed[1:] if isinstance(m, Mission) and m.state == "expired"
        )

    # -- reads ------------------------------------------------------------------------------------

    @_reads_store
    def catalog(self) -> tuple[dict[str, MissionSummary], dict[str, ProposalSummary]]:
        """Fold the notification log into a summary of every Mission and Proposal.

        The HTTP server reads projections instead; this full scan serves the CLI and the expiry
        sweep, which must work against the store alone.
        """
        missions: dict[str, MissionSummary] = {}
        proposals: dict[str, ProposalSummary] = {}
        topics = (*MISSION_TOPICS, *PROPOSAL_TOPICS)
        start = 1
        while True:
            page = self.recorder.select_notifications(start, 500, topics=topics)
            if not page:
                break
            for notification in page:
                event = self.mapper.to_domain_event(notification)
                self._fold(event, missions, proposals)
            start = page[-1].id + 1
        return missions, proposals

    @staticmethod
    def _fold(
        event: Any,
        missions: dict[str, MissionSummary],
        proposals: dict[str, ProposalSummary],
    ) -> None:
        key = str(event.originator_id)
        when = format_rfc3339(event.timestamp)
        if isinstance(event, Proposal.Event):
            if isinstance(event, Proposal.Submitted):
                proposals[key] = ProposalSummary(
                    key, PENDING, event.user, event.agent, event.expires_at, created_at=when
                )
            p = proposals[key]
            p.version = event.originator_version
            if isinstance(event, Proposal.Decided):
                p.state = event.NEW_STATE
                if isinstance(event, Proposal.Approved):
                    p.mission_id = event.mission_id
            return
        if isinstance(event, Mission.Approved):
            missions[key] = MissionSummary(
                key,
                ACTIVE,
                event.user,
                event.agent,
                event.parent["id"] if event.parent else None,
                event.expires_at,
                created_at=when,
            )
        m = missions[key]
        m.version = event.originator_version
        if isinstance(event, Mission.Suspended):
            m.state, m.suspend_until, m.on_expiry = SUSPENDED, event.suspend_until, event.on_expiry
        elif isinstance(event, Mission.Resumed):
            m.state, m.suspend_until, m.on_expiry = ACTIVE, None, None
        elif isinstance(event, Mission.Ended):
            m.state, m.suspend_until, m.on_expiry = event.NEW_STATE, None, None

    def list_missions(
        self,
        *,
        state: str | None = None,
        user: str | None = None,
        agent: str | None = None,
        parent: str | None = None,
    ) -> list[MissionSummary]:
        now = self.clock.now()
        missions, _ = self.catalog()
        rows = [
            m
            for m in missions.values()
            if (state is None or m.effective_state(now) == state)
            and (user is None or m.user == user)
            and (agent is None or m.agent == agent)
            and (parent is None or m.parent == parent)
        ]
        return sorted(rows, key=lambda m: (m.created_at, m.mission_id))

    def list_proposals(self, *, state: str | None = None) -> list[ProposalSummary]:
        now = self.clock.now()
        _, proposals = self.catalog()
        rows = [p for p in proposals.values() if state is None or p.effective_state(now) == state]
        return sorted(rows, key=lambda p: (p.created_at, p.proposal_id))

    @_reads_store
    def history(self, mission_or_proposal_id: str | UUID) -> list[dict[str, Any]]:
        """Every event of a Mission (or Proposal), oldest first, with its hashes."""
        aggregate_id = _parse_id(mission_or_proposal_id, "Mission")
        events = list(self.events.get(aggregate_id))
        if not events or not isinstance(events[0], Mission.Event | Proposal.Event):
            raise NotFound(f"no Mission or proposal {aggregate_id}")
        return [event_document(e) for e in events]

    @_reads_store
    def mission_as_of(
        self,
        mission_id: str | UUID,
        *,
        as_of: datetime | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        """The Mission as it was at ``as_of`` (or at ``version``), with the events it rests on."""
        mid = _parse_id(mission_id, "Mission")
        self.get_mission(mid)  # NotFound for unknown ids and for proposals
        events: list[Any] = list(self.events.get(mid))
        if version is not None:
            if version < 1 or version > len(events):
                raise NotFound(f"Mission {mid} has no version {version} (latest is {len(events)})")
            upto = version
        elif as_of is not None:
            upto = sum(1 for e in events if e.timestamp <= as_of)
            if upto == 0:
                raise NotFound(
                    f"Mission {mid} did not exist yet at {format_rfc3339(as_of)}; it was "
                    f"approved at {format_rfc3339(events[0].timestamp)}"
                )
        else:
            upto = len(events)
        mission: Any = self.repository.get(mid, version=upto)
        assert isinstance(mission, Mission)
        if as_of is not None:
            at = as_of
        elif version is not None:
            at = events[upto - 1].timestamp  # the instant that version was committed
        else:
            at = self.clock.now()  # the current view: expiry is evaluated now
        document = mission.to_dict(at)
        document["as_of"] = format_rfc3339(at)
        document["rests_on"] = [
            {
                "event_id": e.event_id,
                "version": e.originator_version,
                "type": event_type_name(type(e).TOPIC),
                "timestamp": format_rfc3339(e.timestamp),
                "hash": e.hash,
            }
            for e in events[:upto]
        ]
        return document


def event_document(event: Any) -> dict[str, Any]:
    """A stored event as JSON: identity, type, chain links and every field."""
    skip = {"originator_id", "originator_version", "timestamp", "originator_topic"}
    return {
        "event_id": event.event_id,
        "aggregate_id": str(event.originator_id),
        "version": event.originator_version,
        "type": event_type_name(type(event).TOPIC),
        "topic": type(event).TOPIC,
        "timestamp": format_rfc3339(event.timestamp),
        **{k: v for k, v in vars(event).items() if k not in skip and k != "event_id"},
    }
