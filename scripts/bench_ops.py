#!/usr/bin/env python3
"""Operations benchmark: the card and index operations against the real server, with the targets of the
performance issue; writes docs/benchmarks/ops.md and the "Operations" section of docs/benchmarks.md.

1. `ehc serve` with its defaults on a fresh embedded FerretDB (or EHC_MONGODB_URI), auth on (a
   `system/*.cruds` client-credentials token) and audit on; residents seeded in bulk (`ehc seed`'s code path);
2. with the load driver (scripts/load/drive.mjs) at --vus clients: `$ehc-verify` over fresh dynamic tokens
   signed with the node's own key (each accepted once, so every request spends its nonce) and `$ehc-qrcode` (with and
   without the image) on random residents;
3. `$ihe-pix` latency at one client (sequential requests, a hospital record number each);
4. `ehc import` of new CSV rows (a small file, then the large one: the peaks of both show whether memory is
   flat) and the large file again, which must change nothing (every row "unchanged").

    python3 scripts/bench_ops.py [--residents 2000] [--seconds 30] [--vus 8] [--import-rows 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from bench_load import SCOPES, Server, drive, find_node, fmt, loadavg, splice  # noqa: E402
from bench_mpi import (  # noqa: E402
    TARGETS,
    pix_latency,
    run_import,
    sample_residents,
    seed_residents,
    services,
    write_import_file,
)

SECTION = "Operations"
BEGIN, END = "<!-- ops:begin -->", "<!-- ops:end -->"


def driver_run(node: str, server: Server, scenario: str, items: list[str], args: argparse.Namespace, tmp: Path,
               *options: str) -> dict[str, Any]:
    """One run of the load driver's `verify` or `qrcode` scenario over `items`; its figures, with the CPU per
    request of the server (all its processes) and of the database: what bounds throughput on a machine shared
    with other work, less bent than req/s by the share of the cores the run got (not immune to a busy host)."""
    source = tmp / f"{scenario}-input.json"
    source.write_text(json.dumps(items), encoding="utf-8")
    cpu = server.cpu_seconds()
    run = drive(node, server.base, scenario, args.vus, f"{args.seconds}s", tmp / f"{scenario}-summary.json",
                f"--token={server.token()}", f"--input={source}", *options)
    used = [b - a for a, b in zip(cpu, server.cpu_seconds(), strict=True)]
    return {"rps": run["total_rps"], "requests": run["total_requests"], "failures": run["errors"],
            "p50": run["latency_ms"]["p50"], "p95": run["latency_ms"]["p95"],
            "load": (run["load_before"][0], run["load_after"][0]),
            "cpu_ms": [1000 * x / max(run["total_requests"], 1) for x in used]}


def wait_for_sealer(server: Server, limit: float = 180.0) -> float:
    """Seconds until the server's audit backlog (`_audit_pending`) is empty, at most `limit`."""
    started = time.monotonic()
    while time.monotonic() - started < limit and (server.audit_pending() or 0) > 0:
        time.sleep(1.0)
    return time.monotonic() - started


def fresh_tokens(cards: Any, residents: list[dict[str, Any]], n: int) -> list[str]:
    """Dynamic tokens of the longest validity, signed with the node's current key as $ehc-qrcode would."""
    return [cards.issue(residents[i % len(residents)], "dynamic", 300)[0] for i in range(n)]


def import_figures(server: Server, tmp: Path, rows: int, workers: int) -> list[dict[str, Any]]:
    """A quarter-size file, the full file, the full file again: rows/s, peak RSS and the outcome counts."""
    small, large = tmp / "import-small.csv", tmp / "import-large.csv"
    write_import_file(small, max(rows // 4, 1), 7_000_000)
    write_import_file(large, rows, 8_000_000)
    out: list[dict[str, Any]] = []
    for label, src in (("new rows", small), ("new rows", large), ("the same file again", large)):
        size = max(rows // 4, 1) if src is small else rows
        elapsed, rss, counts = run_import(server.env, src, tmp / f"report-{len(out)}.csv", workers)
        out.append({"label": label, "rows": size, "seconds": elapsed, "rss": rss, "counts": counts})
        print(f"import {size} ({label}): {size / elapsed:,.0f} rows/s, peak RSS {rss:.0f} MiB {counts}", flush=True)
    return out


def mark(ok: bool) -> str:
    return "met" if ok else "**missed**"


def write_report(args: argparse.Namespace, server: Server, r: dict[str, Any]) -> str:
    loads = [x for k in ("verify", "qrcode", "qrcode_noimage") if k in r for x in r[k]["load"]]
    lines = [f"# {SECTION}", "",
             f"`python3 scripts/bench_ops.py --residents {args.residents} --seconds {args.seconds} --vus {args.vus} "
             f"--import-rows {args.import_rows}` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: {platform.node()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}. This server: {server.description}, "
             f"{server.database} on 127.0.0.1, auth on (a `{SCOPES}` client-credentials token) and audit on; "
             f"{args.residents:,} residents seeded in bulk. Load from the load driver (`scripts/load/drive.mjs`) at "
             f"{args.vus} clients on the same machine; one run of each; latencies are that run's p50 / p95.", "",
             "| measure | result | target | |", "|---|---|---|---|"]

    def driven_row(key: str, what: str, target: float, unit: str) -> None:
        s = r.get(key)
        if s:
            server_ms, db_ms = s["cpu_ms"]
            lines.append(f"| {what} | {fmt(s['rps'])}/s (p50 {fmt(s['p50'], 1)} ms, p95 {fmt(s['p95'], 1)} ms; "
                         f"{s['requests']:,} requests, {s['failures']} failed; CPU per request: server "
                         f"{server_ms:.1f} ms, database {db_ms:.1f} ms, so at most "
                         f"{1000 * (os.cpu_count() or 1) / (server_ms + db_ms):,.0f}/s on {os.cpu_count()} idle cores) "
                         f"| >= {target:,.0f}/s{unit} | {mark(s['rps'] >= target and not s['failures'])} |")

    driven_row("verify", "`$ehc-verify`, fresh dynamic tokens (every nonce recorded before `valid`)",
               TARGETS["verify"], "")
    driven_row("qrcode", "`$ehc-qrcode` with the image (the default)", TARGETS["qrcode"], "")
    driven_row("qrcode_noimage", "`$ehc-qrcode` with `image` = false", TARGETS["qrcode"], "")
    if "pix" in r:
        p50, p95, bad = r["pix"]
        lines.append(f"| `$ihe-pix` latency, 1 client, {args.pix:,} requests (started once the audit backlog of the "
                     f"runs before it was sealed: {r.get('pix_waited', 0):.0f} s) | p50 {p50:.1f} ms, p95 {p95:.1f} ms "
                     f"({bad} errors) | p95 <= {TARGETS['pix_p95_ms']:.0f} ms | {mark(p95 <= TARGETS['pix_p95_ms'])} |")
    for imp in r.get("imports", []):
        c = imp["counts"]
        rate = imp["rows"] / imp["seconds"]
        outcome = ", ".join(f"{c[k]:,} {k}" for k in ("created", "linked", "unchanged", "rejected") if c.get(k))
        lines.append(f"| `ehc import` {imp['rows']:,} rows, {imp['label']} (`--workers {args.import_workers}`) | "
                     f"{rate:,.0f} rows/s in {imp['seconds']:.1f} s, peak RSS {imp['rss']:.0f} MiB ({outcome}) | "
                     f">= {TARGETS['import']:,.0f} rows/s | {mark(rate >= TARGETS['import'])} |")
    imports = r.get("imports", [])
    if len(imports) >= 2:
        low, high = imports[0]["rss"], imports[1]["rss"]
        flat = high - low < 0.15 * low
        again = imports[-1]["counts"]
        lines += ["", f"Memory of the import: peak RSS {low:.0f} MiB for {imports[0]['rows']:,} rows, {high:.0f} MiB "
                      f"for {imports[1]['rows']:,}: {'flat' if flat else '**not flat**'}. The rerun of the same file "
                      + ("changed nothing (every row unchanged)." if again.get("unchanged") == imports[-1]["rows"] -
                         again.get("rejected", 0) and not again.get("created") and not again.get("linked")
                         else f"**wrote again**: {again}.")]
    if loads:
        lines += ["", f"Machine load (1-minute load average before and after each driver run): "
                      f"{', '.join(fmt(x, 2) for x in loads)} on {os.cpu_count()} CPUs."]
    text = "\n".join(lines) + "\n"
    existing = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
    notes = existing.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in existing else "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n<!-- notes -->" + notes, encoding="utf-8")
    splice(args.doc, text, BEGIN, END)
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--residents", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30, help="length of each driver run")
    ap.add_argument("--vus", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=30_000, help="fresh tokens for the $ehc-verify run")
    ap.add_argument("--pix", type=int, default=2000, help="$ihe-pix requests for the latency figures")
    ap.add_argument("--import-rows", type=int, default=20_000)
    ap.add_argument("--import-workers", type=int, default=4)
    ap.add_argument("--only", default="verify,qrcode,pix,import")
    ap.add_argument("--node", default=None, help="the Node that runs the load driver")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "ops.md")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    only = set(args.only.split(","))
    node = find_node(args.node)
    tmp = Path(tempfile.mkdtemp(prefix="ehc-ops-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its server and database
    server = Server(argparse.Namespace(server="ehc", port=0, workers=0, threads=0), tmp)
    results: dict[str, Any] = {}
    try:
        server.start()
        server.description = server.describe()
        svc, hooks, cards = services(server.env["EHC_MONGODB_URI"], Path(server.env["EHC_DATA_DIR"]))
        seed_residents(svc, hooks, cards, args.residents)
        residents = sample_residents(svc, min(args.residents, 2000))
        print(f"server: {server.base} ({server.description}); load average {loadavg()}", flush=True)
        if "verify" in only:
            t0 = time.monotonic()
            tokens = fresh_tokens(cards, residents, args.tokens)
            print(f"{len(tokens):,} tokens signed in {time.monotonic() - t0:.0f} s", flush=True)
            results["verify"] = driver_run(node, server, "verify", tokens, args, tmp)
        if "qrcode" in only:
            ids = [res["id"] for res in residents]
            results["qrcode"] = driver_run(node, server, "qrcode", ids, args, tmp)
            results["qrcode_noimage"] = driver_run(node, server, "qrcode", ids, args, tmp, "--image=false")
        if "pix" in only:
            # one client's latency, not the sealing of the driver runs' backlog before it
            results["pix_waited"] = wait_for_sealer(server)
            results["pix"] = pix_latency(server.base, residents, args.pix,
                                         {"Authorization": f"Bearer {server.token()}"})
            print(f"pix: p50 {results['pix'][0]:.1f} ms, p95 {results['pix'][1]:.1f} ms", flush=True)
        write_report(args, server, results)  # the HTTP figures, before the long imports
        if "import" in only:
            results["imports"] = import_figures(server, tmp, args.import_rows, args.import_workers)
    finally:
        server.stop()
    print(write_report(args, server, results))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
