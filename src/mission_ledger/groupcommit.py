"""Group commit at the application level.

PostgreSQL serialises every insert into one application's events table with a table lock, so
concurrent single-command transactions queue up behind each other (the library measures flat at
roughly 700–800 saves/s however many writers there are). Commands on *different* aggregates do
not need separate transactions, though: this module lets concurrent callers hand their pending
events to whichever caller currently holds the "leader" role, which writes up to ``max_batch``
callers' events in one transaction.

Semantics are unchanged for each caller:

- a caller's events are committed all together or not at all;
- two callers touching the same aggregate never share a batch (the second waits for the next
  one), so per-aggregate ordering and optimistic-concurrency conflicts behave exactly as if each
  command had its own transaction;
- if a batch fails (one caller's event conflicts), every caller in it is retried on its own, so
  only the conflicting caller sees the error.

With a single caller there is no queueing: the caller leads and commits its own events at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from eventsourcing.persistence import IntegrityError, Recording

SaveFn = Callable[[Sequence[Any]], list[Recording[Any]]]


@dataclass
class _Unit:
    events: Sequence[Any]
    keys: frozenset[Any]
    done: threading.Event = field(default_factory=threading.Event)  # finished, or handed the lead
    finished: bool = False
    recordings: list[Recording[Any]] | None = None
    error: BaseException | None = None


class GroupCommitter:
    """Batches concurrent commits of disjoint aggregates into shared transactions."""

    def __init__(self, save: SaveFn, *, max_batch: int = 64, enabled: bool = True) -> None:
        self._save = save
        self._max_batch = max_batch
        self._enabled = enabled
        self._lock = threading.Lock()
        self._queue: list[_Unit] = []
        self._leading = False
        self.batches = 0
        self.units = 0

    def commit(self, events: Sequence[Any]) -> list[Recording[Any]]:
        """Commit ``events`` atomically (possibly alongside other callers'); return recordings."""
        if not events:
            return []
        if not self._enabled:
            return self._save(events)
        unit = _Unit(events=events, keys=frozenset(e.originator_id for e in events))
        with self._lock:
            self._queue.append(unit)
            lead = not self._leading
            if lead:
                self._leading = True
        if lead:
            self._lead(unit)
        while not unit.finished:
            unit.done.wait()
            if not unit.finished:  # the previous leader's commit is done: lead from here
                unit.done.clear()
                self._lead(unit)
        if unit.error is not None:
            raise unit.error
        assert unit.recordings is not None
        return unit.recordings

    def _lead(self, own: _Unit) -> None:
        """Write batches until ``own`` is committed, then hand the lead to the next caller.

        Handing off returns this caller to its own work at once instead of making it write
        everyone else's batches (its latency would grow with the load); the successor's caller
        was blocked waiting anyway.
        """
        while True:
            with self._lock:
                if own.finished and self._queue:
                    self._queue[0].done.set()
                    return
                batch = self._take_batch()
                if not batch:
                    self._leading = False
                    return
            self._write(batch)

    def _take_batch(self) -> list[_Unit]:
        batch: list[_Unit] = []
        seen: set[Any] = set()
        rest: list[_Unit] = []
        for unit in self._queue:
            if len(batch) < self._max_batch and not (unit.keys & seen):
                batch.append(unit)
                seen |= unit.keys
            else:
                rest.append(unit)
        self._queue = rest
        return batch

    def _write(self, batch: list[_Unit]) -> None:
        self.batches += 1
        self.units += len(batch)
        if len(batch) == 1:
            self._write_one(batch[0])
            return
        try:
            recordings = self._save([e for unit in batch for e in unit.events])
        except IntegrityError:
            for unit in batch:  # isolate the conflicting caller(s)
                self._write_one(unit)
            return
        except BaseException as error:  # the store failed: every caller learns why
            for unit in batch:
                unit.error = error
                unit.finished = True
                unit.done.set()
            return
        by_event = {
            (r.domain_event.originator_id, r.domain_event.originator_version): r for r in recordings
        }
        for unit in batch:
            unit.recordings = [
                by_event[(e.originator_id, e.originator_version)] for e in unit.events
            ]
            unit.finished = True
            unit.done.set()

    def _write_one(self, unit: _Unit) -> None:
        try:
            unit.recordings = self._save(unit.events)
        except BaseException as error:
            unit.error = error
        unit.finished = True
        unit.done.set()
