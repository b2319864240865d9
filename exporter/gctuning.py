"""The garbage collector's settings for a long-running exporter.

A scrape round of 1,000 targets makes some 300,000 container objects (rows, samples, lines)
that live until the answer is written. With CPython's defaults the youngest generation is
collected every 700 allocations and the survivors, promoted, bring on collections of the whole
heap: 0.6 s of a round's ~5 s of CPU at 1,000 targets (benchmarks/fleet_profile.py). The
exporter makes next to no reference cycles, so collecting less often frees nothing later that
matters: what is alive once serving starts (modules, the config, connections) is frozen out of
every collection, and the youngest generation is collected every 10,000 allocations.
"""

from __future__ import annotations

import gc

YOUNGEST_THRESHOLD = 10_000


def tune_for_serving() -> None:
    """Call once, when set up and about to serve."""
    import os

    if os.environ.get("PGCE_TMP_NO_GC_TUNING"):
        return
    gc.collect()
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNGEST_THRESHOLD, middle, oldest)
