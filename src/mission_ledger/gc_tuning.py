"""Garbage collection for the long-running processes (``serve``, ``worker``; decision 48).

CPython's cyclic collector stops the whole process while it runs (it holds the GIL). Its full
collections walk every tracked object, and a started server holds hundreds of thousands of
them that live as long as the process — modules, the OpenAPI document, the event store's and
aiohttp's machinery, the views — so each full collection stalled every thread for tens of
milliseconds, which was the tail of a revocation's propagation to a hundred receivers.

:func:`settle_after_startup` collects once, then freezes what startup built (``gc.freeze``:
those objects are never walked again; they stay alive as they would anyway), and makes the
youngest generation collect every 10,000 allocations instead of 700, so that objects of one
request or one push — dead within milliseconds — rarely survive into older generations, and
full collections come seldom and find little to walk. Cycles are still collected; memory
grows by at most the young generation's few thousand objects.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle_after_startup"]

YOUNG_THRESHOLD = 10_000  # allocations (net of deallocations) between young collections


def settle_after_startup() -> None:
    """Collect, freeze everything alive now, and collect the young generation less often.

    Call once the process has built its long-lived state (the server after binding, the
    worker before following the ledger); calling it again freezes what was built since."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
