"""The group committer under real threads, against a recording fake store."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID, uuid4

import pytest
from eventsourcing.persistence import IntegrityError, Notification, Recording

from mission_ledger.groupcommit import GroupCommitter


@dataclass(frozen=True)
class FakeEvent:
    originator_id: UUID
    originator_version: int


class FakeStore:
    """Saves batches atomically, refusing duplicate (id, version) like the event store's key."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.rows: dict[tuple[UUID, int], int] = {}
        self.batches: list[list[FakeEvent]] = []
        self.lock = threading.Lock()
        self.delay = delay
        self.fail_next: BaseException | None = None

    def save(self, events: Any) -> list[Recording[Any]]:
        time.sleep(self.delay)  # hold the "transaction" so callers pile up
        with self.lock:
            if self.fail_next is not None:
                error, self.fail_next = self.fail_next, None
                raise error
            keys = [(e.originator_id, e.originator_version) for e in events]
            if len(set(keys)) != len(keys) or any(k in self.rows for k in keys):
                raise IntegrityError("duplicate key")
            self.batches.append(list(events))
            recordings = []
            for event in events:
                position = len(self.rows) + 1
                self.rows[(event.originator_id, event.originator_version)] = position
                notification = Notification(
                    id=position,
                    originator_id=event.originator_id,
                    originator_version=event.originator_version,
                    topic="t",
                    state=b"",
                )
                recordings.append(Recording(domain_event=event, notification=notification))
            return recordings


def _run_threads(count: int, work: Any) -> list[Any]:
    results: list[Any] = [None] * count
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # collected and asserted by the test
            results[i] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def test_disjoint_commands_share_transactions_and_each_gets_its_own_recordings() -> None:
    store = FakeStore(delay=0.002)
    committer = GroupCommitter(store.save, max_batch=64)
    ids = [uuid4() for _ in range(32)]

    def work(i: int) -> list[Recording[Any]]:
        events = [FakeEvent(ids[i], 1), FakeEvent(ids[i], 2)]
        return committer.commit(events)

    results = _run_threads(32, work)
    for i, recordings in enumerate(results):
        assert not isinstance(recordings, BaseException), recordings
        assert [r.domain_event for r in recordings] == [FakeEvent(ids[i], 1), FakeEvent(ids[i], 2)]
        assert [r.notification.id for r in recordings] == [
            store.rows[(ids[i], 1)],
            store.rows[(ids[i], 2)],
        ]
    assert len(store.rows) == 64
    assert committer.units == 32
    assert len(store.batches) == committer.batches
    for batch in store.batches:  # a command's events are never split across transactions
        per_id: dict[UUID, int] = {}
        for e in batch:
            per_id[e.originator_id] = per_id.get(e.originator_id, 0) + 1
        assert set(per_id.values()) == {2}


def test_commands_on_one_aggregate_never_share_a_batch_and_conflicts_stay_isolated() -> None:
    store = FakeStore(delay=0.001)
    committer = GroupCommitter(store.save, max_batch=64)
    hot = uuid4()
    others = [uuid4() for _ in range(12)]

    def work(i: int) -> Any:
        if i < 12:  # twelve racing writers of version 1 of the same aggregate
            return committer.commit([FakeEvent(hot, 1)])
        return committer.commit([FakeEvent(others[i - 12], 1)])

    results = _run_threads(24, work)
    hot_results = results[:12]
    winners = [r for r in hot_results if not isinstance(r, BaseException)]
    losers = [r for r in hot_results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 11
    assert all(isinstance(r, IntegrityError) for r in losers)
    assert all(not isinstance(r, BaseException) for r in results[12:])
    for batch in store.batches:
        assert sum(e.originator_id == hot for e in batch) <= 1
    assert len(store.rows) == 13


def test_a_store_failure_reaches_every_caller_in_the_batch() -> None:
    store = FakeStore(delay=0.003)
    committer = GroupCommitter(store.save, max_batch=64)
    store.fail_next = ConnectionError("database went away")
    results = _run_threads(8, lambda i: committer.commit([FakeEvent(uuid4(), 1)]))
    failed = [r for r in results if isinstance(r, ConnectionError)]
    assert failed, "the injected failure must reach at least the callers of that transaction"
    assert len(store.rows) == 8 - len(failed)
    # the committer is not left wedged: a later command still commits
    assert committer.commit([FakeEvent(uuid4(), 1)])


def test_random_mixes_commit_every_successful_command_exactly_once() -> None:
    rng = random.Random(7)
    store = FakeStore(delay=0.0005)
    committer = GroupCommitter(store.save, max_batch=8)
    pool = [uuid4() for _ in range(6)]
    versions = dict.fromkeys(pool, 0)
    lock = threading.Lock()

    def work(_: int) -> Any:
        aid = rng.choice(pool)
        with lock:
            version = versions[aid] + 1  # what a command that loaded the aggregate would write
        recordings = committer.commit([FakeEvent(aid, version)])
        with lock:
            versions[aid] = max(versions[aid], version)
        return recordings

    results = _run_threads(40, work)
    committed = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, IntegrityError) for r in results if isinstance(r, BaseException))
    assert len(store.rows) == len(committed)
    for aid in pool:  # per aggregate, versions are contiguous: nothing skipped or doubled
        stored = sorted(v for (a, v) in store.rows if a == aid)
        assert stored == list(range(1, len(stored) + 1))


@pytest.mark.parametrize("enabled", [True, False])
def test_a_single_caller_commits_at_once(enabled: bool) -> None:
    store = FakeStore()
    committer = GroupCommitter(store.save, enabled=enabled)
    aid = uuid4()
    recordings = committer.commit([FakeEvent(aid, 1)])
    assert recordings[0].notification.id == 1
    assert committer.commit([]) == []
