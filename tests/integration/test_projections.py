"""The tracked projections on SQLite and PostgreSQL: views, exactly-once, crashes, races, rebuild.

Every test gets a ledger on a :class:`FixedClock` and the views of the same store (SQLite: the
ledger in ``<tmp>/data/ledger.sqlite3``, the views in ``<tmp>/data/views.sqlite3``; PostgreSQL: a
throwaway schema). The reference the views are compared with is computed independently of the
projection code: ``mission_index`` from ``ledger.catalog()`` plus each Mission's last event,
``authorization`` and ``delegation_graph`` from the Mission aggregates themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from mission_ledger.bootstrap import open_ledger
from mission_ledger.cli import main
from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import InvalidInput
from mission_ledger.domain.timefmt import format_rfc3339, parse_rfc3339
from mission_ledger.ledger import MISSION_TOPICS, MissionLedger
from mission_ledger.projections import (
    PROJECTION_TABLES,
    PROJECTIONS,
    AnotherWorkerActive,
    ProjectionMismatch,
    ProjectionStore,
    ProjectionWorker,
    projections_dir,
    rebuild,
)
from mission_ledger.projections.contracts import ddl_statements
from mission_ledger.projections.fold import TABLE_COLUMNS, PageFold
from tests.integration.contract_fixtures import (
    APPROVER,
    DAY,
    HOUR,
    MAIL,
    OPERATOR,
    T0,
    delegating_entry,
    entry,
    open_child,
    open_mission,
    open_tree,
    propose,
)
from tests.pgtarget import PgTarget

STAGED = [
    entry(["invoices.read"]),
    entry(["invoices.write"], constraints={"stage": "execute"}),
]

# ---------------------------------------------------------------------------------------------
# The reference fold (independent of mission_ledger.projections)
# ---------------------------------------------------------------------------------------------


def _key(created_at: str, mission_id: str) -> tuple[datetime, str]:
    return parse_rfc3339(created_at, field="created_at"), mission_id


def reference_views(
    ledger: MissionLedger, now: datetime
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]]]:
    """(mission_index rows in list order, children by parent, authorization rows by id)."""
    missions, _ = ledger.catalog()
    last: dict[str, int] = {}
    for notification in ledger.recorder.select_notifications(1, 10**9, topics=MISSION_TOPICS):
        last[str(notification.originator_id)] = notification.id
    index: list[dict[str, Any]] = []
    children: dict[str, list[dict[str, Any]]] = {}
    authorization: dict[str, dict[str, Any]] = {}
    for m in sorted(missions.values(), key=lambda m: _key(m.created_at, m.mission_id)):
        mission = ledger.get_mission(m.mission_id)
        index.append(
            {
                "mission_id": m.mission_id,
                "state": m.effective_state(now),
                "stored_state": m.state,
                "version": m.version,
                "user": m.user,
                "agent": m.agent,
                "parent_id": m.parent,
                "expires_at": m.expires_at,
                "suspend_until": m.suspend_until,
                "on_expiry": m.on_expiry,
                "created_at": m.created_at,
                "updated_at": ledger.history(m.mission_id)[-1]["timestamp"],
                "position": last[m.mission_id],
            }
        )
        authorization[m.mission_id] = {
            "mission_id": m.mission_id,
            "state": mission.state,
            "version": mission.version,
            "expires_at": mission.expires_at,
            "suspend_until": mission.suspend_until,
            "agent": mission.agent,
            "user": mission.user,
            "parent_id": mission.parent["id"] if mission.parent else None,
            "stage": mission.stage,
            "authority_set": mission.authority_set,
            "authority_hash": mission.authority_hash,
            "position": last[m.mission_id],
        }
        children[m.mission_id] = sorted(
            (
                {
                    "parent_id": m.mission_id,
                    "child_id": c["mission_id"],
                    "child_agent": c["agent"],
                    "justifying_entry": c["justifying_entry"],
                    "created_at": c["delegated_at"],
                }
                for c in mission.children
            ),
            key=lambda e: _key(e["created_at"], e["child_id"]),
        )
    return index, children, authorization


def all_pages(store: ProjectionStore, now: datetime, **filters: Any) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    after: str | None = None
    while True:
        page, after = store.list_missions(now=now, limit=3, after=after, **filters)
        rows.extend(page)
        if after is None:
            return rows


def view_snapshot(
    store: ProjectionStore, now: datetime
) -> tuple[list[dict[str, Any]], dict[str, list[dict[str, Any]]], dict[str, dict[str, Any]], int]:
    index, _ = store.list_missions(now=now, limit=1000)
    children = {row["mission_id"]: store.children(row["mission_id"]) for row in index}
    authorization, position = store.authorization_rows()
    return index, children, authorization, position


def assert_views_match(ledger: MissionLedger, store: ProjectionStore, now: datetime) -> None:
    index, children, authorization, position = view_snapshot(store, now)
    expected_index, expected_children, expected_authorization = reference_views(ledger, now)
    assert index == expected_index
    assert children == expected_children
    assert authorization == expected_authorization
    assert position == (ledger.recorder.max_notification_id() or 0)


def mission_event_count(ledger: MissionLedger) -> int:
    return len(ledger.recorder.select_notifications(1, 10**9, topics=MISSION_TOPICS))


# ---------------------------------------------------------------------------------------------
# Backends
# ---------------------------------------------------------------------------------------------


@dataclass
class Store:
    """A ledger, its settings and clock, and what the test opened on them (closed at teardown)."""

    name: str
    settings: Settings
    clock: FixedClock
    ledger: MissionLedger
    opened: list[Any] = field(default_factory=list)

    def worker(self, **options: Any) -> ProjectionWorker:
        worker = ProjectionWorker(self.ledger, self.settings, **options)
        self.opened.append(worker)
        return worker

    def store(self) -> ProjectionStore:
        store = ProjectionStore.open(self.settings)
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    if request.param == "sqlite":
        settings = Settings(data_dir=tmp_path / "data")
    else:
        target: PgTarget = request.getfixturevalue("postgres_schema_url")
        settings = Settings(data_dir=tmp_path / "data", database_url=target.ledger_url)
    clock = FixedClock(T0)
    ledger = open_ledger(settings, clock=clock)
    opened = Store(request.param, settings, clock, ledger)
    try:
        yield opened
    finally:
        for thing in reversed(opened.opened):
            thing.close()
        ledger.close()


def scripted_history(
    ledger: MissionLedger, clock: FixedClock, worker: ProjectionWorker | None = None
) -> dict[str, str]:
    """Every kind of Mission event (``worker.run_once()`` between steps, when given)."""

    def tick() -> None:
        clock.advance(timedelta(minutes=7, microseconds=250_000))
        if worker is not None:
            worker.run_once()

    ids: dict[str, str] = {}
    ids["root"], ids["child"], ids["grandchild"] = open_tree(ledger)
    tick()
    ids["staged"] = open_mission(
        ledger, user="bob", agent="agent-5", stages=["plan", "execute"], authority_set=STAGED
    )
    ledger.advance_stage(ids["staged"], actor="agent-5")
    tick()
    ledger.suspend(
        ids["root"],
        actor=OPERATOR,
        reason="incident",
        until=format_rfc3339(clock.now() + DAY),
        on_expiry="resume",
    )
    tick()
    ledger.resume(ids["root"], actor=OPERATOR)
    narrower = [delegating_entry(("invoices.read",)), entry(["mail.send"], resource=MAIL)]
    ledger.narrow(ids["root"], narrower, actor=OPERATOR, reason="least privilege")
    tick()
    ids["revoked"] = open_mission(ledger, agent="agent-6")
    ids["cascaded"] = open_child(ledger, ids["revoked"])
    ledger.revoke(ids["revoked"], actor=OPERATOR, reason="done")
    tick()
    ids["completed"] = open_mission(ledger, agent="agent-7")
    ledger.complete(ids["completed"], actor="agent-7")
    ids["old"] = open_mission(ledger, agent="agent-8")
    successor = propose(ledger, agent="agent-8", predecessor=ids["old"])
    ids["successor"] = str(ledger.approve(successor, actor=APPROVER).document["mission_id"])
    tick()
    ids["swept"] = open_mission(ledger, agent="agent-9", expires_at=clock.now() + HOUR)
    ids["swept_child"] = open_child(ledger, ids["swept"], agent="agent-2")
    ids["lapsed"] = open_mission(ledger, agent="agent-4", expires_at=clock.now() + 3 * HOUR)
    ledger.suspend(ids["lapsed"], actor=OPERATOR)
    clock.advance(2 * HOUR)
    report = ledger.expire_due()
    assert ids["swept"] in report.expired_missions
    tick()
    ids["paused"] = open_mission(ledger, agent="agent-3")
    ledger.suspend(ids["paused"], actor=OPERATOR, reason="review")
    clock.advance(2 * HOUR)  # "lapsed" is now past expires_at, never swept: stored suspended
    return ids


# ---------------------------------------------------------------------------------------------
# The views equal the reference fold
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4, 1000])
def test_views_equal_the_reference_fold(env: Store, page_size: int) -> None:
    worker = env.worker(page_size=page_size)
    scripted_history(env.ledger, env.clock)
    applied = worker.run_once()
    assert applied == mission_event_count(env.ledger)
    assert worker.lag() == 0
    assert_views_match(env.ledger, env.store(), env.clock.now())


def test_incremental_application_equals_one_pass(env: Store) -> None:
    worker = env.worker(page_size=3)
    ids = scripted_history(env.ledger, env.clock, worker)
    worker.run_once()
    store = env.store()
    assert_views_match(env.ledger, store, env.clock.now())
    index = {row["mission_id"]: row for row in store.list_missions(now=env.clock.now())[0]}
    assert index[ids["lapsed"]]["state"] == "expired"
    assert index[ids["lapsed"]]["stored_state"] == "suspended"
    assert index[ids["swept_child"]]["stored_state"] == "expired"  # its own expiry came too
    assert index[ids["cascaded"]]["stored_state"] == "cascaded"
    assert index[ids["old"]]["stored_state"] == "superseded"
    auth, _ = store.authorization_rows()
    assert auth[ids["staged"]]["stage"] == "execute"
    assert [e["actions"] for e in auth[ids["root"]]["authority_set"]] == [
        ["invoices.read"],
        ["mail.send"],
    ]


# ---------------------------------------------------------------------------------------------
# Exactly once
# ---------------------------------------------------------------------------------------------


def test_rerunning_applies_nothing_and_a_redelivered_page_is_refused(env: Store) -> None:
    worker = env.worker(page_size=5)
    scripted_history(env.ledger, env.clock)
    worker.run_once()
    store = env.store()
    before = view_snapshot(store, env.clock.now())
    assert worker.run_once() == 0
    assert view_snapshot(store, env.clock.now()) == before

    # Redeliver the last page: the compare-and-set refuses it before writing anything …
    runner = worker._runner
    head = runner.position or 0
    with pytest.raises(AnotherWorkerActive):
        runner.write(PageFold(), head - 1, head)

    # … and without it, the library's tracking guard (… WHERE notification_id < new) does.
    def redeliver() -> None:
        with worker._views.writing() as tx:
            tx.write(PageFold(), runner.tables)
            tx.advance(head)

    with pytest.raises(AnotherWorkerActive, match="already recorded"):
        redeliver()
    assert view_snapshot(store, env.clock.now()) == before


def test_a_worker_killed_between_pages_resumes_without_loss_or_duplicates(env: Store) -> None:
    scripted_history(env.ledger, env.clock)
    crashing = env.worker(page_size=4)
    real_write = crashing._runner.write
    pages: list[int] = []

    def write(page: PageFold, expected: int, new_position: int) -> None:
        if len(pages) == 3:
            with crashing._views.writing() as tx:  # dies inside the transaction, after writing
                tx.expect_position(expected)
                tx.write(page, crashing._runner.tables)
                raise RuntimeError("killed")
        real_write(page, expected, new_position)
        pages.append(page.applied)

    crashing._runner.write = write  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="killed"):
        crashing.run_once()
    crashing.close()
    env.opened.remove(crashing)
    store = env.store()
    assert store.position() == crashing._runner.position  # the last committed page
    assert sum(pages) == 12

    resumed = env.worker(page_size=4)
    assert resumed.run_once() == mission_event_count(env.ledger) - sum(pages)
    assert_views_match(env.ledger, store, env.clock.now())


def test_two_racing_workers_one_wins_and_the_other_reports_another_worker(env: Store) -> None:
    first, second = env.worker(), env.worker()
    open_mission(env.ledger)
    assert first.run_once() == 1
    if env.name == "postgres":  # the advisory lock refuses the second worker up front
        with pytest.raises(AnotherWorkerActive, match="advisory lock"):
            second.run_once()
    else:
        assert second.run_once() == 0  # it reads the position the first one recorded
    # The second line, with no lock: a page another worker applied is refused before writing.
    second._runner.position = first._runner.position
    open_mission(env.ledger, agent="agent-7")
    assert first.run_once() == 1
    with pytest.raises(AnotherWorkerActive, match="another projection worker"):
        second._runner.step()
    assert_views_match(env.ledger, env.store(), env.clock.now())


def test_threads_racing_on_sqlite_apply_each_event_once(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    clock = FixedClock(T0)
    ledger = open_ledger(settings, clock=clock)
    workers = [ProjectionWorker(ledger, settings, page_size=2) for _ in range(3)]
    try:
        for w in workers:
            w.run_once()
        for i in range(6):
            open_mission(ledger, agent=f"agent-{i}")
        barrier = threading.Barrier(len(workers))
        outcome: dict[int, Any] = {}

        def run(n: int) -> None:
            barrier.wait()
            try:
                outcome[n] = workers[n].run_once()
            except AnotherWorkerActive as error:
                outcome[n] = error

        threads = [threading.Thread(target=run, args=(n,)) for n in range(len(workers))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        failed = [o for o in outcome.values() if isinstance(o, AnotherWorkerActive)]
        assert failed, "every worker applied: no race was detected"
        with ProjectionStore.open(settings) as store:
            assert_views_match(ledger, store, clock.now())
    finally:
        for w in workers:
            w.close()
        ledger.close()


# ---------------------------------------------------------------------------------------------
# Rebuild
# ---------------------------------------------------------------------------------------------


def test_rebuild_gives_identical_rows(env: Store) -> None:
    worker = env.worker(page_size=2)
    scripted_history(env.ledger, env.clock, worker)
    worker.run_once()
    worker.close()
    env.opened.remove(worker)
    store = env.store()
    before = view_snapshot(store, env.clock.now())
    seen: list[tuple[int, int]] = []
    applied = rebuild(
        env.ledger, env.settings, page_size=5, progress=lambda d, t: seen.append((d, t))
    )
    assert applied == mission_event_count(env.ledger)
    assert seen[-1][0] == seen[-1][1] == before[3]
    assert view_snapshot(store, env.clock.now()) == before
    for projection in PROJECTIONS:
        assert rebuild(env.ledger, env.settings, projection=projection, page_size=3) == applied
        assert view_snapshot(store, env.clock.now()) == before


def test_rebuilding_one_view_repairs_it_and_keeps_the_position(env: Store) -> None:
    worker = env.worker()
    scripted_history(env.ledger, env.clock)
    worker.run_once()
    store = env.store()
    before = view_snapshot(store, env.clock.now())
    with worker._views.writing() as tx:  # damage the index behind the worker's back
        tx.execute(f"UPDATE {tx.table('mission_index')} SET state = 'bogus'")  # noqa: S608
        tx.execute(f"DELETE FROM {tx.table('delegation_graph')}")  # noqa: S608
    assert view_snapshot(store, env.clock.now()) != before
    worker.close()
    env.opened.remove(worker)
    rebuild(env.ledger, env.settings, projection="mission_index")
    rebuild(env.ledger, env.settings, projection="delegation_graph")
    assert view_snapshot(store, env.clock.now()) == before


def test_views_that_disagree_with_their_position_are_refused_not_patched(env: Store) -> None:
    worker = env.worker()
    ids = scripted_history(env.ledger, env.clock)
    worker.run_once()
    store = env.store()
    before = view_snapshot(store, env.clock.now())
    with worker._views.writing() as tx:  # a Mission row lost behind the worker's back
        tx.execute(
            f"DELETE FROM {tx.table('mission_index')} WHERE mission_id = {tx.ph}",  # noqa: S608
            [ids["paused"]],
        )
    env.ledger.resume(ids["paused"], actor=OPERATOR)
    with pytest.raises(ProjectionMismatch, match="lacks 1 of the Missions"):
        worker.run_once()
    with worker._views.writing() as tx:  # the position reset behind the views' back
        tx.reset_tracking()
    replay = env.worker()
    worker.close()
    env.opened.remove(worker)
    with pytest.raises(ProjectionMismatch, match="already holds a row"):
        replay.run_once()
    assert store.position() == 0  # nothing of the refused pages was written
    replay.close()
    env.opened.remove(replay)
    rebuild(env.ledger, env.settings)
    after = view_snapshot(store, env.clock.now())
    assert after != before
    assert_views_match(env.ledger, store, env.clock.now())


@pytest.mark.postgres
def test_rebuild_refuses_while_a_worker_runs_on_postgres(postgres_schema_url: PgTarget) -> None:
    settings = Settings(database_url=postgres_schema_url.ledger_url)
    ledger = open_ledger(settings, clock=FixedClock(T0))
    try:
        with ProjectionWorker(ledger, settings) as worker:
            worker.run_once()
            with pytest.raises(AnotherWorkerActive):
                rebuild(ledger, settings)
        assert rebuild(ledger, settings) == 0
    finally:
        ledger.close()


def test_views_of_another_ledger_are_refused(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path, database_url="memory:")
    first = MissionLedger(settings, clock=FixedClock(T0))
    open_mission(first)
    open_mission(first)
    with ProjectionWorker(first, settings) as worker:
        worker.run_once()
    second = MissionLedger(settings, clock=FixedClock(T0))  # a new, emptier in-memory ledger
    with ProjectionWorker(second, settings) as worker, pytest.raises(ProjectionMismatch):
        worker.run_once()
    rebuild(second, settings)
    with ProjectionStore.open(settings) as store:
        assert store.position() == 0
        assert store.list_missions(now=T0) == ([], None)


# ---------------------------------------------------------------------------------------------
# Reads
# ---------------------------------------------------------------------------------------------


def test_list_missions_filters_pages_and_reads_expiry(env: Store) -> None:
    worker = env.worker()
    ids = scripted_history(env.ledger, env.clock)
    worker.run_once()
    store = env.store()
    now = env.clock.now()
    expected, _, _ = reference_views(env.ledger, now)

    assert all_pages(store, now) == expected
    for state in ("active", "suspended", "expired", "revoked", "cascaded", "superseded"):
        rows = all_pages(store, now, state=state)
        assert rows == [r for r in expected if r["state"] == state], state
        assert rows, f"the scripted history has a {state} Mission"
    assert ids["lapsed"] in {r["mission_id"] for r in all_pages(store, now, state="expired")}
    assert ids["lapsed"] not in {r["mission_id"] for r in all_pages(store, now, state="suspended")}
    earlier = now - 3 * HOUR  # before "lapsed" expired: suspended, not expired
    assert ids["lapsed"] in {r["mission_id"] for r in all_pages(store, earlier, state="suspended")}
    assert all_pages(store, now, state="no-such-state") == []

    assert all_pages(store, now, user="bob") == [r for r in expected if r["user"] == "bob"]
    assert [r["mission_id"] for r in all_pages(store, now, agent="agent-2")] == [
        r["mission_id"] for r in expected if r["agent"] == "agent-2"
    ]
    assert [r["mission_id"] for r in all_pages(store, now, parent=ids["root"])] == [ids["child"]]
    both = all_pages(store, now, parent=ids["root"], state="active", agent="agent-2")
    assert [r["mission_id"] for r in both] == [ids["child"]]

    first, cursor = store.list_missions(now=now, limit=2)
    assert first == expected[:2]
    assert cursor is not None
    second, _ = store.list_missions(now=now, limit=2, after=cursor)
    assert second == expected[2:4]
    last, end = store.list_missions(now=now, limit=len(expected))
    assert (last, end) == (expected, None)

    with pytest.raises(InvalidInput) as bad:
        store.list_missions(now=now, after="not-a-cursor")
    assert bad.value.field == "after"
    with pytest.raises(InvalidInput):
        store.list_missions(now=now, limit=0)
    with pytest.raises(InvalidInput):
        store.list_missions(now=now.replace(tzinfo=None))


def test_children_and_authorization_rows(env: Store) -> None:
    worker = env.worker()
    ids = scripted_history(env.ledger, env.clock)
    worker.run_once()
    store = env.store()
    kids = store.children(ids["root"])
    assert [(k["child_id"], k["child_agent"], k["justifying_entry"]) for k in kids] == [
        (ids["child"], "agent-2", 0)
    ]
    assert store.children(ids["grandchild"]) == []
    assert store.children("not-a-mission") == []
    rows, position = store.authorization_rows()
    head = env.ledger.recorder.max_notification_id()
    assert position == store.position() == worker.position == head
    assert set(rows) == {r["mission_id"] for r in store.list_missions(now=env.clock.now())[0]}
    assert max(r["position"] for r in rows.values()) <= position
    assert rows[ids["cascaded"]]["parent_id"] == ids["revoked"]


def test_run_forever_follows_new_commands(env: Store) -> None:
    worker = env.worker(poll_interval=0.002)
    store = env.store()
    stop = threading.Event()
    reports: list[Any] = []
    thread = threading.Thread(
        target=worker.run_forever,
        args=(stop,),
        kwargs={"on_progress": reports.append, "progress_interval": 0.05},
    )
    thread.start()
    try:
        for agent in ("agent-2", "agent-3", "agent-4"):
            mission = open_mission(env.ledger, agent=agent)
            target = env.ledger.recorder.max_notification_id() or 0
            deadline = time.monotonic() + 10
            while store.position() < target:
                assert time.monotonic() < deadline, "the worker did not follow the ledger"
                time.sleep(0.002)
            assert mission in store.authorization_rows()[0]
        time.sleep(0.1)  # at least one progress report
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert worker.applied == 3  # one MissionApproved per approval
    assert reports
    assert sum(r.applied for r in reports) <= 3
    assert reports[-1].position <= store.position()


def test_a_commit_in_this_process_wakes_a_worker_however_slowly_it_polls(env: Store) -> None:
    worker = env.worker(poll_interval=60.0)  # PostgreSQL: NOTIFY wakes it; else the ledger
    store = env.store()
    stop = threading.Event()
    thread = threading.Thread(target=worker.run_forever, args=(stop,))
    thread.start()
    try:
        time.sleep(0.05)  # it has caught up and waits (60 s unless woken)
        mission = open_mission(env.ledger)
        target = env.ledger.recorder.max_notification_id() or 0
        deadline = time.monotonic() + 20  # a bound for a loaded machine, far below 60 s
        while store.position() < target:
            assert time.monotonic() < deadline, "the commit did not wake the worker"
            time.sleep(0.01)
        assert mission in store.authorization_rows()[0]
    finally:
        stop.set()
        open_mission(env.ledger, agent="agent-9")  # a commit wakes it to see the stop
        thread.join(timeout=70)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------------------------
# The DDL contract and the command line
# ---------------------------------------------------------------------------------------------


def test_ddl_files_create_the_tables_and_columns_the_code_writes(tmp_path: Any) -> None:
    import sqlite3

    assert projections_dir().name == "projections"
    for backend in ("sqlite", "postgres"):
        for projection in PROJECTIONS:
            statements = ddl_statements(projection, backend)
            tables = {s.split()[5] for s in statements if s.upper().startswith("CREATE TABLE")}
            assert tables == set(PROJECTION_TABLES[projection]), (backend, projection)
    conn = sqlite3.connect(tmp_path / "ddl.sqlite3")
    for projection in PROJECTIONS:
        for statement in ddl_statements(projection, "sqlite"):
            conn.execute(statement)
        for table in PROJECTION_TABLES[projection]:
            columns = tuple(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            assert columns == TABLE_COLUMNS[table]
    conn.close()


def test_cli_worker_once_and_rebuild(env: Store, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    scripted_history(env.ledger, env.clock)
    where = (
        ["--data", str(env.settings.data_dir)]
        if env.name == "sqlite"
        else ["--database-url", str(env.settings.database_url)]
    )
    assert main([*where, "--json", "worker", "--once", "--page-size", "7"]) == 0
    done = json.loads(capsys.readouterr().out)
    assert done["applied"] == mission_event_count(env.ledger)
    assert done["lag"] == 0

    assert main([*where, "rebuild", "authorization", "--json"]) == 0
    captured = capsys.readouterr()
    rebuilt = json.loads(captured.out)
    assert (rebuilt["projection"], rebuilt["applied"]) == ("authorization", done["applied"])
    assert "rebuilt authorization:" in captured.err  # stderr is not a terminal: a summary line
    assert main([*where, "rebuild"]) == 0
    assert "rebuilt all:" in capsys.readouterr().out
    assert_views_match(env.ledger, env.store(), env.clock.now())

    holder = env.worker()
    holder.run_once()
    open_mission(env.ledger, agent="agent-7")
    if env.name == "postgres":
        assert main([*where, "worker", "--once"]) == 4
        assert "another projection worker" in capsys.readouterr().err


def test_cli_worker_stops_on_sigterm(tmp_path: Any) -> None:
    import os
    import signal
    import subprocess
    import sys

    data = tmp_path / "data"
    ledger = open_ledger(Settings(data_dir=data))
    open_mission(ledger)
    ledger.close()
    command = [sys.executable, "-m", "mission_ledger", "--data", str(data), "worker"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        with ProjectionStore.open(Settings(data_dir=data)) as store:
            while store.position() == 0:
                assert time.monotonic() < deadline, "the worker did not apply the ledger"
                time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        _, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert "stopped:" in err
