"""The collector's settings for a long-running process once its start-up is done (`ehc serve` workers,
`ehc import`, `ehc seed`).

Start-up leaves a few hundred thousand objects that live as long as the process (the search registry, the
structure tables, the pinyin dictionary). CPython's collector scans all of them in every full collection (up to
95 ms in a server worker, measured in process) and runs a young collection every 700 allocations. Freezing them
(`gc.freeze`) takes them out of every scan; a first threshold of 20,000 makes young collections rarer. Figures:
docs/architecture.md ("Running it").
"""

from __future__ import annotations

import gc

GC_FIRST_THRESHOLD = 20_000  # allocations between young collections (CPython's default: 700)


def settle_heap() -> None:
    """What start-up made is kept for good, so the collector stops scanning it; young collections run less
    often. Only the objects made afterwards are collected."""
    gc.collect()
    gc.freeze()
    _, second, third = gc.get_threshold()
    gc.set_threshold(GC_FIRST_THRESHOLD, second, third)
