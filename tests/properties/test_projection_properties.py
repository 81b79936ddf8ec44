"""Projections against the reference fold, for random command sequences (Hypothesis).

Each example runs a random sequence of commands (open, delegate, suspend with or without a
deadline, resume, revoke, complete, narrow, advance the stage, move the clock and sweep) on an
in-memory ledger with its views in a temporary SQLite file, applying the projections at random
points with random page sizes. Refused commands are part of the game (they write nothing).
Afterwards the views must equal the reference computed from the ledger itself
(``tests/integration/test_projections.py``), and a full rebuild must give the same rows.
"""

from __future__ import annotations

import contextlib
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mission_ledger.clock import FixedClock
from mission_ledger.config import Settings
from mission_ledger.domain.errors import MissionLedgerError
from mission_ledger.domain.timefmt import format_rfc3339
from mission_ledger.ledger import MissionLedger
from mission_ledger.projections import ProjectionStore, ProjectionWorker, rebuild
from tests.integration.contract_fixtures import (
    MAIL,
    OPERATOR,
    child_authority,
    delegating_entry,
    entry,
    open_child,
    open_mission,
)
from tests.integration.test_projections import assert_views_match, view_snapshot

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
STAGED = [entry(["invoices.read"]), entry(["invoices.write"], constraints={"stage": "execute"})]

OPEN = st.tuples(st.just("open"), st.integers(1, 72), st.booleans())
commands = st.lists(
    st.one_of(
        OPEN,
        OPEN,
        st.tuples(st.just("delegate"), st.integers(0, 50), st.sampled_from(["agent-2", "agent-3"])),
        st.tuples(st.just("suspend"), st.integers(0, 50), st.sampled_from([None, 2, 30])),
        st.tuples(st.just("resume"), st.integers(0, 50)),
        st.tuples(st.just("revoke"), st.integers(0, 50)),
        st.tuples(st.just("complete"), st.integers(0, 50)),
        st.tuples(st.just("narrow"), st.integers(0, 50)),
        st.tuples(st.just("stage"), st.integers(0, 50)),
        st.tuples(st.just("clock"), st.integers(1, 40)),
        st.tuples(st.just("project"), st.integers(1, 6)),
    ),
    min_size=8,
    max_size=30,
)


def _run(
    ledger: MissionLedger, clock: FixedClock, ids: list[str], command: tuple[Any, ...]
) -> None:
    kind = command[0]
    pick = ids[command[1] % len(ids)] if ids and kind not in ("open", "clock") else None
    if kind == "open":
        staged = command[2]
        ids.append(
            open_mission(
                ledger,
                expires_at=clock.now() + command[1] * HOUR,
                stages=["plan", "execute"] if staged else None,
                authority_set=STAGED if staged else None,
            )
        )
    elif kind == "clock":
        clock.advance(command[1] * HOUR)
        ledger.expire_due()
    elif pick is None:
        return
    elif kind == "delegate":
        ids.append(open_child(ledger, pick, agent=command[2], authority_set=child_authority()))
    elif kind == "suspend":
        hours = command[2]
        until = format_rfc3339(clock.now() + hours * HOUR) if hours is not None else None
        ledger.suspend(
            pick, actor=OPERATOR, until=until, on_expiry="resume" if until is not None else None
        )
    elif kind == "resume":
        ledger.resume(pick, actor=OPERATOR)
    elif kind == "revoke":
        ledger.revoke(pick, actor=OPERATOR)
    elif kind == "complete":
        ledger.complete(pick, actor=OPERATOR)
    elif kind == "narrow":
        narrower = [delegating_entry(("invoices.read",)), entry(["mail.send"], resource=MAIL)]
        ledger.narrow(pick, narrower, actor=OPERATOR)
    elif kind == "stage":
        ledger.advance_stage(pick, actor=OPERATOR)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(commands=commands, final_page=st.integers(1, 9))
def test_views_equal_the_reference_fold_for_random_histories(
    commands: list[tuple[Any, ...]], final_page: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = Settings(data_dir=Path(tmp), database_url="memory:")
        clock = FixedClock(T0)
        ledger = MissionLedger(config, clock=clock)
        ids: list[str] = [open_mission(ledger, expires_at=clock.now() + 48 * HOUR)]
        try:
            for command in commands:
                if command[0] == "project":
                    with ProjectionWorker(ledger, config, page_size=command[1]) as worker:
                        worker.run_once()
                    continue
                with contextlib.suppress(MissionLedgerError):  # refused: nothing was written
                    _run(ledger, clock, ids, command)
            with ProjectionWorker(ledger, config, page_size=final_page) as worker:
                worker.run_once()
                assert worker.lag() == 0
            with ProjectionStore.open(config) as store:
                assert_views_match(ledger, store, clock.now())
                rows, _ = store.list_missions(now=clock.now(), limit=1000)
                event(f"Missions: {min(len(rows), 10)}+" if len(rows) >= 10 else "Missions: <10")
                for state in sorted({r["stored_state"] for r in rows}):
                    event(f"stored state reached: {state}")
                before = view_snapshot(store, clock.now())
                rebuild(ledger, config, page_size=final_page)
                assert view_snapshot(store, clock.now()) == before
        finally:
            ledger.close()
