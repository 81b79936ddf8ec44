"""The long-running processes' garbage-collection settings (decision 48).

Run in a child interpreter: freezing the test runner's own objects would change how every
later test's memory is collected."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from mission_ledger.gc_tuning import YOUNG_THRESHOLD


def test_settling_freezes_what_startup_built_and_collects_young_objects_less_often() -> None:
    script = textwrap.dedent(
        """
        import gc, json
        from mission_ledger.gc_tuning import settle_after_startup

        built = [{"n": i} for i in range(5000)]  # long-lived state made at startup
        before = gc.get_threshold()
        cycle = []
        cycle.append(cycle)  # garbage in a cycle: only the collector frees it
        del cycle
        settle_after_startup()
        frozen = gc.get_freeze_count()
        young = []
        young.append(young)
        del young
        found = gc.collect()  # cycles made after settling are still collected
        print(json.dumps({
            "before": before, "after": gc.get_threshold(), "frozen": frozen,
            "found": found, "built": len(built),
        }))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    result = json.loads(done.stdout)
    assert result["before"][0] == 700  # CPython's default, for contrast
    assert result["after"] == [YOUNG_THRESHOLD, *result["before"][1:]]
    assert result["frozen"] >= result["built"]  # startup's objects are never walked again
    assert result["found"] >= 1
