#!/usr/bin/env python3
"""The embedded database candidates measured with pymongo alone: N documents of about 2 KB, then for a few
seconds each, on 1 and on 8 threads: `_id` lookups, `_id` updates, equality on an indexed scalar field and on
an indexed array element (as the posting lists and search keys use them), and a count. Every timed phase is
bounded (--seconds; a single query slower than that is reported as such), so a full scan cannot hang it.

    python3 scripts/bench_db.py --uri mongodb://127.0.0.1:27018/ --label "FerretDB/SQLite" [--docs 100000]

Run it against each server in turn (interleave the runs on a busy machine); it prints one Markdown table row
block per run and, with --out, appends it to that file.
"""

from __future__ import annotations

import argparse
import random
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymongo import MongoClient
from pymongo.collection import Collection

PAD = "x" * 1900


def doc(i: int) -> dict[str, Any]:
    return {"_id": f"d{i:08d}", "g": i % 1000, "k": [f"a{i % 5000}", f"b{i}"], "n": i, "pad": PAD}


def seed(col: Collection, n: int) -> float:
    col.drop()
    col.create_index("g")
    col.create_index("k")
    t = time.monotonic()
    batch = 1000
    for start in range(0, n, batch):
        col.insert_many([doc(i) for i in range(start, min(n, start + batch))], ordered=False)
    return time.monotonic() - t


def timed(op: Callable[[random.Random], None], threads: int, seconds: float) -> tuple[float, float, int]:
    """(ops/s, median latency ms, ops); stops starting new operations after `seconds`."""
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed_: int) -> None:
        rng = random.Random(seed_)
        mine = []
        while time.monotonic() < stop:
            t = time.perf_counter()
            op(rng)
            mine.append(time.perf_counter() - t)
        with lock:
            lat.extend(mine)

    started = time.monotonic()
    ts = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - started
    return len(lat) / elapsed, 1000 * statistics.median(lat) if lat else 0.0, len(lat)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--uri", required=True)
    ap.add_argument("--label", required=True)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--db", default="ehc_bench_db")
    ap.add_argument("--keep", action="store_true", help="reuse the seeded collection when it has --docs documents")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    client: MongoClient = MongoClient(args.uri, maxPoolSize=32, socketTimeoutMS=900_000)
    col = client[args.db]["docs"]
    n = args.docs
    seeded = None
    if not (args.keep and col.estimated_document_count() == n):
        seeded = seed(col, n)
    rows: list[tuple[str, str]] = []
    if seeded is not None:
        rows.append(("insert (batches of 1,000)", f"{n / seeded:,.0f} docs/s ({seeded:,.0f} s for {n:,})"))

    wrong: list[str] = []  # wrong answers are reported, not raised: a benchmark finishes

    def by_id(rng: random.Random) -> None:
        i = rng.randrange(n)
        if col.find_one({"_id": f"d{i:08d}"}) is None:
            wrong.append(f"_id d{i:08d}: not found")

    def update(rng: random.Random) -> None:
        col.update_one({"_id": f"d{rng.randrange(n):08d}"}, {"$inc": {"n": 1}})

    def scalar(rng: random.Random) -> None:
        g = rng.randrange(1000)
        got = len(list(col.find({"g": g}, {"_id": 1})))
        if got != n // 1000:
            wrong.append(f"g={g}: {got} documents")

    def element(rng: random.Random) -> None:
        i = rng.randrange(n)
        got = [d["_id"] for d in col.find({"k": f"b{i}"}, {"_id": 1})]
        if got != [f"d{i:08d}"]:
            wrong.append(f"k=b{i}: {got[:3]}")

    for name, op, may_scan in (("`_id` lookup", by_id, False), ("`_id` update ($inc)", update, False),
                               ("equality, indexed scalar (100 matches)", scalar, True),
                               ("equality, indexed array element (1 match)", element, True)):
        cells = []
        if may_scan:  # one query first: a full scan is reported once, not run on 8 threads for minutes
            t = time.monotonic()
            op(random.Random(0))
            first = time.monotonic() - t
            if first > args.seconds / 4:
                rows.append((name, f"{first:,.1f} s for one query (full scan); not repeated"))
                continue
        for threads in (1, 8):
            rate, p50, _count = timed(op, threads, args.seconds)
            cells.append(f"{threads} thr: {rate:,.0f}/s, p50 {p50:.1f} ms")
        rows.append((name, "; ".join(cells)))
    for name, call in (("estimated_document_count", col.estimated_document_count),
                       ("count_documents({g: 7})", lambda: col.count_documents({"g": 7}))):
        t = time.monotonic()
        call()
        rows.append((name, f"{time.monotonic() - t:,.2f} s"))
    if wrong:
        rows.append(("wrong answers", f"{len(wrong)}, e.g. {'; '.join(wrong[:3])}"))
    text = [f"### {args.label}", "", f"{n:,} documents of about 2 KB, {args.seconds:g} s per figure, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average "
            f"{Path('/proc/loadavg').read_text().split()[0]}", "", "| measure | result |", "|---|---|"]
    text += [f"| {a} | {b} |" for a, b in rows]
    out = "\n".join(text) + "\n"
    print(out)
    if args.out:
        with args.out.open("a", encoding="utf-8") as f:
            f.write(out + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
