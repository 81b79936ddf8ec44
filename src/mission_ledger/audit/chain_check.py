"""Recompute every stream's hash chain from stored rows, one ordered pass."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ..domain.chain import ChainedEvent, compute_hash, event_id_for, genesis_hash
from ..domain.idempotency import IdempotencyRecord
from ..domain.mission import Mission
from ..domain.proposal import Proposal
from ..ledger import MissionLedger, event_type_name
from .report import Problem
from .stored_rows import _Row, _Source

# -- checking one stream at a time ----------------------------------------------------------------


def _as_uuid(raw: Any) -> UUID | None:
    if isinstance(raw, UUID):
        return raw
    if isinstance(raw, str):
        with contextlib.suppress(ValueError):
            return UUID(raw)
    return None


def _key(raw: Any) -> str:
    uid = _as_uuid(raw)
    return str(uid) if uid is not None else str(raw)


def _label(event: Any) -> str:
    if isinstance(event, Mission.Event):
        return "Mission"
    if isinstance(event, Proposal.Event):
        return "Proposal"
    if isinstance(event, IdempotencyRecord.Event):
        return "idempotency record"
    return "aggregate"


def _plaintext(mapper: Mapper[Any], state: bytes) -> bytes:
    if mapper.cipher is not None:
        state = mapper.cipher.decrypt(state)
    if mapper.compressor is not None:
        state = mapper.compressor.decompress(state)
    return state


def _writer_encoding(mapper: Mapper[Any], event: Any) -> bytes:
    """The bytes ``Mapper.to_stored_event`` writes for ``event``, before any cipher."""
    state = dict(vars(event))
    state.pop("originator_id", None)
    state.pop("originator_version", None)
    class_version = getattr(type(event), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return mapper.transcoder.encode(state)


def _aggregate_state(aggregate: Any) -> dict[str, Any]:
    """What ``Snapshot.take`` stores for ``aggregate``."""
    state = dict(vars(aggregate))
    for private in ("_id", "_version", "_pending_events"):
        state.pop(private, None)
    class_version = getattr(type(aggregate), "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return state


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "…"


@dataclass
class _Stream:
    raw_id: Any
    key: str
    uid: UUID | None
    label: str = "aggregate"
    next_version: int = 1
    prev_hash: str | None = None  # stored hash of version next_version - 1, if readable
    prev_position: int | None = None
    head: tuple[int, str] | None = None
    problems: list[Problem] = field(default_factory=list)
    first_position: int | None = None
    snapshots: dict[int, Any] = field(default_factory=dict)  # version → raw id to query with
    aggregate: Any = None
    replaying: bool = True
    checkpointed: tuple[int, str] | None = None
    checkpoint_seen: bool = False


class _Verifier:
    def __init__(
        self,
        ledger: MissionLedger,
        source: _Source,
        checkpointed: dict[str, tuple[int, str]],
        collect_heads: bool,
    ) -> None:
        self.ledger = ledger
        self.mapper: Mapper[Any] = ledger.mapper
        self.snapshot_mapper: Mapper[Any] = (
            ledger.snapshots.mapper if ledger.snapshots is not None else ledger.mapper
        )
        self.source = source
        self.checkpointed = dict(checkpointed)
        self.collect_heads = collect_heads
        self.heads: dict[str, dict[str, Any]] = {}
        self.streams = 0
        self.events = 0
        self.groups: list[tuple[int | None, int, list[Problem]]] = []
        self.snapshot_index: dict[str, dict[int, Any]] = {}

    # one pass ------------------------------------------------------------------------------------

    def run(self) -> None:
        for raw_id, version in self.source.snapshot_keys():
            self.snapshot_index.setdefault(_key(raw_id), {})[version] = raw_id
        stream: _Stream | None = None
        for row in self.source.event_rows():
            self.events += 1
            if stream is None or row.raw_id != stream.raw_id:
                if stream is not None:
                    self._finish(stream)
                stream = self._start(row.raw_id)
            self._check(stream, row)
        if stream is not None:
            self._finish(stream)
        for key, versions in self.snapshot_index.items():  # snapshots of streams with no events
            orphan = _Stream(raw_id=None, key=key, uid=_as_uuid(key))
            for version in sorted(versions, key=str):
                self._add(
                    orphan,
                    "snapshot_mismatch",
                    _int_or_none(version),
                    None,
                    f"a snapshot at version {version} exists but the stream has no events",
                )
            self._close_group(orphan)
        for key, (version, _) in sorted(self.checkpointed.items()):  # checkpointed, now gone
            gone = _Stream(raw_id=None, key=key, uid=_as_uuid(key))
            self._add(
                gone,
                "truncated",
                version,
                None,
                f"the stream is gone; the checkpoint recorded it at version {version}",
            )
            self._close_group(gone, last=True)

    def _start(self, raw_id: Any) -> _Stream:
        self.streams += 1
        key = _key(raw_id)
        stream = _Stream(raw_id=raw_id, key=key, uid=_as_uuid(raw_id))
        stream.snapshots = self.snapshot_index.pop(key, {})
        stream.replaying = bool(stream.snapshots)
        stream.checkpointed = self.checkpointed.pop(key, None)
        return stream

    def _add(
        self, stream: _Stream, kind: str, version: int | None, position: int | None, text: str
    ) -> None:
        event_id = (
            event_id_for(stream.uid, version)
            if stream.uid is not None and version is not None
            else None
        )
        where = f"{stream.label} {stream.key}"
        if version is not None:
            where += f" version {version}"
        stream.problems.append(Problem(kind, stream.key, version, event_id, f"{where}: {text}"))
        stream.replaying = False
        if position is not None and (
            stream.first_position is None or position < stream.first_position
        ):
            stream.first_position = position

    def _close_group(self, stream: _Stream, *, last: bool = False) -> None:
        if stream.problems:
            rank = 2 if last else (0 if stream.first_position is not None else 1)
            self.groups.append((stream.first_position, rank, stream.problems))

    def _check(self, stream: _Stream, row: _Row) -> None:
        position = row.position
        if not isinstance(row.version, int) or row.version < 1:
            self._add(
                stream,
                "out_of_order",
                None,
                position,
                f"a row has the invalid version {row.version!r}",
            )
            return
        version = row.version
        if version != stream.next_version:
            first, last = stream.next_version, version - 1
            missing = f"version {first}" if first == last else f"versions {first}–{last}"
            self._add(
                stream,
                "missing_version",
                first,
                position,
                f"{missing} missing: the stream jumps to version {version}",
            )
            stream.prev_hash = None
        stream.next_version = version + 1
        if (
            position is not None
            and stream.prev_position is not None
            and position < stream.prev_position
        ):
            self._add(
                stream,
                "out_of_order",
                version,
                position,
                f"stored at position {position}, before the previous version's position "
                f"{stream.prev_position}: events were renumbered or swapped",
            )
        stream.prev_position = position
        expected_prev = stream.prev_hash
        stream.prev_hash = None
        event = self._decode(stream, row, version)
        if event is None:
            return
        state = vars(event)
        if stream.label == "aggregate":
            stream.label = _label(event)
        kind_name = event_type_name(get_topic(type(event)))
        if get_topic(type(event)) != row.topic:
            self._add(
                stream,
                "topic_mismatch",
                version,
                position,
                f"stored topic {row.topic!r} is not the event class's topic "
                f"{get_topic(type(event))!r}",
            )
        try:
            canonical = _writer_encoding(self.mapper, event) == _plaintext(self.mapper, row.state)
        except Exception:  # any failure here means the bytes are not canonical
            canonical = False
        if not canonical:
            self._add(
                stream,
                "noncanonical_state",
                version,
                position,
                f"the stored bytes of this {kind_name} event are not the encoding the "
                "ledger writes for the values they decode to (edited bytes)",
            )
        stored_hash = state.get("hash")
        try:
            recomputed: str | None = compute_hash(event)
        except Exception as error:  # a tampered field may not be hashable
            recomputed = None
            reason = f"its content cannot be hashed ({type(error).__name__}: {error})"
        else:
            reason = f"its content hashes to {recomputed}"
        if not isinstance(stored_hash, str) or recomputed != stored_hash:
            self._add(
                stream,
                "hash_mismatch",
                version,
                position,
                f"the {kind_name} event carries hash {_short(stored_hash)} but {reason}",
            )
        if stream.uid is not None:
            if version == 1:
                expected_prev = genesis_hash(stream.uid)
            if expected_prev is not None and state.get("prev_hash") != expected_prev:
                previous = "the genesis hash" if version == 1 else f"version {version - 1}'s hash"
                self._add(
                    stream,
                    "broken_link",
                    version,
                    position,
                    f"prev_hash {_short(state.get('prev_hash'))} is not {previous} {expected_prev}",
                )
            expected_id = event_id_for(stream.uid, version)
            if state.get("event_id") != expected_id:
                self._add(
                    stream,
                    "event_id_mismatch",
                    version,
                    position,
                    f"event_id {_short(state.get('event_id'))} should be {expected_id} "
                    "(the event belongs to another position)",
                )
        if not isinstance(stored_hash, str):
            return
        stream.prev_hash = stored_hash
        stream.head = (version, stored_hash)
        if stream.checkpointed is not None and stream.checkpointed[0] == version:
            stream.checkpoint_seen = True
            if stream.checkpointed[1] != stored_hash:
                self._add(
                    stream,
                    "rewritten",
                    version,
                    position,
                    f"the checkpoint recorded hash {stream.checkpointed[1]} for this "
                    f"version, the store now has {stored_hash}: history was rewritten",
                )
        if stream.replaying:
            try:
                stream.aggregate = event.mutate(stream.aggregate)
            except Exception:  # replay is only needed to compare snapshots
                stream.replaying = False
        if version in stream.snapshots:
            self._check_snapshot(stream, version, stored_hash, position)

    def _decode(self, stream: _Stream, row: _Row, version: int) -> Any:
        position = row.position
        if stream.uid is None:
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"the originator id {row.raw_id!r} is not a UUID",
            )
            return None
        if not isinstance(row.state, bytes) or not isinstance(row.topic, str):
            self._add(
                stream,
                "undecodable",
                version,
                position,
                "the stored state is not a byte string (or the topic not text)",
            )
            return None
        stored = StoredEvent(
            originator_id=stream.uid, originator_version=version, topic=row.topic, state=row.state
        )
        try:
            event = self.mapper.to_domain_event(stored)
        except Exception as error:  # any decode failure is a finding
            cause = error.__cause__ or error  # the mapper wraps the transcoder's error
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"the stored event (topic {row.topic!r}) does not decode: "
                f"{type(cause).__name__}: {str(cause)[:160]}",
            )
            return None
        if not isinstance(event, ChainedEvent):
            self._add(
                stream,
                "undecodable",
                version,
                position,
                f"topic {row.topic!r} is not a hash-chained ledger event",
            )
            return None
        return event

    def _check_snapshot(
        self, stream: _Stream, version: int, event_hash: str, position: int | None
    ) -> None:
        raw_id = stream.snapshots.pop(version)
        row = self.source.snapshot_row(raw_id, version)
        if row is None:
            return
        where = f"the snapshot at version {version}"
        try:
            if not isinstance(row.state, bytes) or not isinstance(row.topic, str):
                raise TypeError("the stored snapshot is not bytes")
            snapshot: Any = self.snapshot_mapper.to_domain_event(
                StoredEvent(
                    originator_id=stream.uid or raw_id,
                    originator_version=version,
                    topic=row.topic,
                    state=row.state,
                )
            )
            state = snapshot.state
            if not isinstance(state, dict):
                raise TypeError("the snapshot has no state")
        except Exception as error:  # an unreadable snapshot is a finding
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} does not decode ({type(error).__name__}: {str(error)[:120]})",
            )
            return
        if state.get("head_hash") != event_hash:
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} has head_hash {_short(state.get('head_hash'))}, but the event at "
                f"that version has hash {event_hash}",
            )
            return
        if not stream.replaying or stream.aggregate is None:
            return
        transcoder = self.snapshot_mapper.transcoder
        expected = transcoder.decode(transcoder.encode(_aggregate_state(stream.aggregate)))
        expected_topic = get_topic(type(stream.aggregate))
        if getattr(snapshot, "topic", None) != expected_topic or expected != state:
            differing = sorted(
                k for k in set(expected) | set(state) if expected.get(k) != state.get(k)
            )
            detail = ", ".join(differing[:5]) or f"topic {getattr(snapshot, 'topic', None)!r}"
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                position,
                f"{where} differs from replaying the events (in: {detail}); loading the "
                "aggregate would start from forged state",
            )

    def _finish(self, stream: _Stream) -> None:
        for version in sorted(stream.snapshots):
            self._add(
                stream,
                "snapshot_mismatch",
                version,
                None,
                f"a snapshot at version {version} exists but the event at that version is "
                "missing or unreadable",
            )
        if stream.checkpointed is not None and not stream.checkpoint_seen:
            cp_version = stream.checkpointed[0]
            now = stream.next_version - 1
            self._add(
                stream,
                "truncated",
                cp_version,
                None,
                f"the checkpoint recorded version {cp_version}, the store now ends at version {now}"
                if now < cp_version
                else f"the checkpointed event at version {cp_version} is missing or unreadable",
            )
        self._close_group(stream)
        if self.collect_heads and stream.head is not None:
            self.heads[stream.key] = {"version": stream.head[0], "hash": stream.head[1]}

    def problems(self) -> list[Problem]:
        ordered = sorted(
            enumerate(self.groups),
            key=lambda item: (item[1][1], item[1][0] if item[1][0] is not None else 0, item[0]),
        )
        return [p for _, (_, _, problems) in ordered for p in problems]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) else None
