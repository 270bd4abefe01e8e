#!/usr/bin/env python3
"""Soak benchmark (issue #12, "no decay"): the load driver's CRUD scenario against `ehc serve` (auth and audit on,
embedded FerretDB) for --minutes without a pause, throughput and p95 of each whole minute from the driver, the
audit backlog (`_audit_pending`) and the server's resident memory sampled every --every seconds. Targets: the
last minute at least 90 % of the first; the backlog bounded; memory flat. Writes docs/benchmarks/soak.md and
the "Soak" section of docs/benchmarks.md.

    python3 scripts/bench_soak.py [--minutes 10] [--vus 8]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_load import Server, drive, find_node, fmt, loadavg, splice  # noqa: E402

BEGIN, END = "<!-- soak:begin -->", "<!-- soak:end -->"
TARGET = 0.9


def per_minute(summary: dict[str, Any]) -> list[tuple[int, float, float, int]]:
    """(requests answered 2xx, req/s of those, p95 ms, other answers) of each whole minute of the run, from the
    driver's summary (the VUs' own token requests are not measured)."""
    return [(m["ok"], m["ok"] / 60.0, m["p95"] or 0.0, m["other"]) for m in summary["minutes"]]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=int, default=10)
    ap.add_argument("--vus", type=int, default=8)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between backlog and memory samples")
    ap.add_argument("--node", default=None, help="the Node that runs the load driver")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "soak.md")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    node = find_node(args.node)
    tmp = Path(tempfile.mkdtemp(prefix="ehc-soak-"))
    server = Server(argparse.Namespace(port=0, server="ehc", workers=0, threads=1), tmp)
    samples: list[tuple[float, int | None, float, float | None]] = []  # seconds, backlog, server MB, database MB
    started = datetime.now(UTC)
    load_before = loadavg()
    try:
        server.start()
        server.description = server.describe()
        print(f"soak: {args.minutes} min of CRUD at {args.vus} VUs against {server.base}", flush=True)
        t0 = time.monotonic()
        with ThreadPoolExecutor(1) as pool:  # the run in a thread; the backlog and memory sampled meanwhile
            run = pool.submit(drive, node, server.base, "crud", args.vus, f"{args.minutes * 60}s", tmp / "soak.json",
                              f"--token-url=http://127.0.0.1:{server.port}/oauth/token",
                              f"--client-id={server.client_id}", f"--client-secret={server.secret}")
            while True:
                try:
                    driven = run.result(timeout=args.every)
                    break
                except FutureTimeout:
                    samples.append((time.monotonic() - t0, server.audit_pending(), server.rss_mb(),
                                    server.db_rss_mb()))
                    print(f"  {samples[-1][0]:5.0f} s: backlog {samples[-1][1]}, RSS {samples[-1][2]:.0f} MB, "
                          f"database {fmt(samples[-1][3])} MB", flush=True)
        minutes = per_minute(driven)
    finally:
        server.stop()
    load_after = loadavg()
    first, last = minutes[0][1], minutes[-1][1]
    errors = sum(m[3] for m in minutes)
    ratio = last / first if first else 0.0
    backlogs = [b for _, b, _, _ in samples if b is not None]
    rss = [m for _, _, m, _ in samples]
    db_rss = [m for _, _, _, m in samples if m is not None]
    lines = [
        "# Soak (CRUD, no pause)", "",
        f"`python3 scripts/bench_soak.py --minutes {args.minutes} --vus {args.vus}` on {started:%Y-%m-%d %H:%M} UTC: "
        f"{platform.node() or 'this machine'}, {os.cpu_count()} CPUs, Python {platform.python_version()}. "
        f"This server: {server.description}, {server.database}, auth on (a `system/*.cruds` client-credentials "
        f"token), audit on. The load driver `scripts/load/drive.mjs` (CRUD: 7 requests per iteration) at "
        f"{args.vus} VUs for {args.minutes} minutes in one run; the figures of each whole minute from the driver.", "",
        "| minute | requests answered 2xx | req/s | p95 ms | other answers |", "|---:|---:|---:|---:|---:|",
        *[f"| {i + 1} | {n:,} | {fmt(rps, 1)} | {fmt(p95, 1)} | {bad} |"
          for i, (n, rps, p95, bad) in enumerate(minutes)], "",
        "Each VU renews its client-credentials token a minute before it expires (tokens live 5 minutes); only "
        "2xx answers count.", "",
        f"Last whole minute / first: **{ratio:.0%}** (target at least {TARGET:.0%}: "
        f"{'met' if ratio >= TARGET and not errors else 'not met'}). Audit backlog (`_audit_pending`, sampled every "
        f"{args.every:.0f} s): max {fmt(max(backlogs) if backlogs else None)}, "
        f"last {fmt(backlogs[-1] if backlogs else None)}. "
        "Server resident memory (master, workers and audit sealer): "
        f"first sample {fmt(rss[0] if rss else None)} MB, max "
        f"{fmt(max(rss) if rss else None)} MB, last {fmt(rss[-1] if rss else None)} MB. "
        + (f"Database resident memory: first {fmt(db_rss[0])} MB, max {fmt(max(db_rss))} MB, last "
           f"{fmt(db_rss[-1])} MB. " if db_rss else "")
        + "1-minute load average "
        f"before {load_before[0]:.2f}, after {load_after[0]:.2f} on {os.cpu_count()} CPUs. Answers other than 2xx: "
        f"{errors:,}.",
    ]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    summary = (f"## Soak\n\n{args.minutes} minutes of the CRUD scenario at {args.vus} VUs, {started:%Y-%m-%d}: "
               f"first minute {fmt(first, 1)} req/s, last {fmt(last, 1)} req/s (**{ratio:.0%}**, target "
               f"{TARGET:.0%}); audit backlog max {fmt(max(backlogs) if backlogs else None)}; server memory "
               f"{fmt(rss[0] if rss else None)} -> {fmt(rss[-1] if rss else None)} MB"
               + (f", database {fmt(db_rss[0])} -> {fmt(db_rss[-1])} MB" if db_rss else "") + ". Details: "
               "`docs/benchmarks/soak.md` (`scripts/bench_soak.py`).")
    splice(args.doc, summary, BEGIN, END)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
