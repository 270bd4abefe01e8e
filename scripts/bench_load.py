#!/usr/bin/env python3
"""Load benchmark: the CRUD and read scenarios of the load driver (scripts/load/drive.mjs) against this server
(gunicorn, auth and audit on, a client-credentials token), optionally interleaved with a peer FHIR server given
by its base URL; medians of the rounds go to docs/benchmarks/load.md and the "Load" section of
docs/benchmarks.md.

    python3 scripts/bench_load.py [--rounds 3] [--duration 60s] [--vus 8] [--peer-base http://127.0.0.1:8090/fhir]

The server runs on a fresh embedded FerretDB in a temporary directory (or EHC_MONGODB_URI, in a new database),
started by this script and stopped at the end. The driver runs on Node 18 or later (`node` on PATH, or --node).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.audit import pending  # noqa: E402
from app.audit.chain import PENDING  # noqa: E402
from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402

DRIVER = ROOT / "scripts" / "load" / "drive.mjs"
SCOPES = "system/*.cruds"
SECTION = "Load"
BEGIN, END = "<!-- load:begin -->", "<!-- load:end -->"


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = Path("/proc/loadavg").read_text().split()[:3]
    return float(one), float(five), float(fifteen)


def find_node(given: str | None) -> str:
    """The Node that runs the load driver: --node, or `node` on PATH (Debian's `nodejs`, 18 or later)."""
    found = given or shutil.which("node")
    if not found:
        raise SystemExit("the load driver needs Node 18 or later: apt-get install nodejs, or pass --node")
    return found


def drive(node: str, base: str, scenario: str, vus: int, duration: str, out: Path, *options: str) -> dict[str, Any]:
    """One run of the load driver; its JSON summary (scripts/load/drive.mjs) with the machine load before and
    after. `options`: more of the driver's flags, such as --token=T or --input=FILE (a client id or secret may
    start with "-", so values go after "=")."""
    before = loadavg()
    out.unlink(missing_ok=True)
    cmd = [node, str(DRIVER), f"--base={base}", f"--scenario={scenario}", f"--vus={vus}", f"--duration={duration}",
           f"--summary={out}", *options]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise SystemExit(f"load driver failed ({proc.returncode}): {proc.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["load_before"], summary["load_after"] = before, loadavg()
    print(proc.stdout.strip(), flush=True)
    return summary


class Server:
    """This server under gunicorn on a fresh database, with a registered client for the token grant."""

    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.tmp = tmp
        self.port = args.port or free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.embedded: EmbeddedDatabase | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        uri = os.environ.get("EHC_MONGODB_URI")
        self.db_name = f"ehc_load_{uuid.uuid4().hex[:8]}"
        if uri:
            root = uri.rsplit("/", 1)[0] if uri.count("/") > 2 else uri.rstrip("/")
            self.database = "EHC_MONGODB_URI"
        else:
            self.embedded = EmbeddedDatabase(tmp / "db", free_port())
            self.embedded.start()
            root = self.embedded.uri.rstrip("/")
            self.database = "embedded FerretDB v1.24 (SQLite)"
        self.root_uri = root
        self.env = dict(os.environ, EHC_MONGODB_URI=f"{root}/{self.db_name}", EHC_DATA_DIR=str(tmp / "data"),
                        EHC_AUTH_REQUIRED="true", EHC_PROVINCE="11")
        self.client_id = self.secret = ""
        self.description = ""

    def register_client(self) -> None:
        out = subprocess.run([sys.executable, "-m", "app.cli", "clients", "add", "--name", "load driver",
                              "--scopes", SCOPES, "--province", "11"], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, check=True).stdout
        reg = json.loads(out[out.index("{"):])
        self.client_id, self.secret = reg["client_id"], reg["client_secret"]

    def command(self) -> list[str]:
        if self.args.server == "ehc":
            return [sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.args.server == "granian":  # the alternative measured against gunicorn (docs/architecture.md)
            if importlib.util.find_spec("granian") is None:
                raise SystemExit("--server granian needs granian: pip install granian")
            return [sys.executable, "-m", "granian", "--interface", "wsgi", "--workers", str(self.args.workers),
                    "--blocking-threads", str(self.args.threads), "--host", "127.0.0.1", "--port", str(self.port),
                    "--no-ws", "--log-level", "warning", "app.wsgi:app"]
        cmd = [sys.executable, "-m", "gunicorn", "-w", str(self.args.workers), "-b", f"127.0.0.1:{self.port}",
               "--timeout", "120", "--graceful-timeout", "5"]
        if self.args.threads > 1:
            cmd += ["-k", "gthread", "--threads", str(self.args.threads)]
        return cmd + ["app.wsgi:app"]

    def describe(self) -> str:
        if self.args.server == "ehc":
            log = self.tmp / "server.log"
            found = re.search(r"gunicorn, \d+ workers x \d+ threads \(gthread\)", log.read_text(errors="replace")) \
                if log.exists() else None
            return "`ehc serve` with its defaults" + (f" ({found.group(0)})" if found else "")
        if self.args.server == "granian":
            return f"granian (WSGI), {self.args.workers} workers x {self.args.threads} blocking threads"
        kind = f"gthread, {self.args.threads} threads each" if self.args.threads > 1 else "sync"
        return f"gunicorn, {self.args.workers} {kind} workers"

    def start(self) -> None:
        self.register_client()
        # One first start in a single process, as a deployment's first boot: the keys the app creates on first
        # use (auth secret, card signing key) are written once, not raced by gunicorn workers booting together.
        subprocess.run([sys.executable, "-c", "from app import create_app; create_app()"], cwd=ROOT, env=self.env,
                       check=True, capture_output=True)
        log = (self.tmp / "server.log").open("ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                     start_new_session=True)
        wait_until_up(self.base, self.proc, self.tmp / "server.log", 120)

    def token(self) -> str:
        r = requests.post(f"http://127.0.0.1:{self.port}/oauth/token",
                          data={"grant_type": "client_credentials", "scope": SCOPES},
                          auth=(self.client_id, self.secret), timeout=30)
        r.raise_for_status()
        return str(r.json()["access_token"])

    def audit_pending(self) -> int | None:
        from pymongo import MongoClient

        try:
            client: MongoClient[dict[str, Any]]
            with MongoClient(f"{self.root_uri}/", serverSelectionTimeoutMS=5000) as client:
                return pending.count(client[self.db_name][PENDING])
        except Exception:  # noqa: BLE001 - a figure for the report, not a check
            return None

    def rss_mb(self) -> float:
        """Resident memory of the server's processes (master, workers and, under `ehc serve`, the sealer)."""
        return tree_rss_mb(self.proc.pid) if self.proc else 0.0

    def db_rss_mb(self) -> float | None:
        """Resident memory of the embedded database, which runs in a session of its own (None with
        EHC_MONGODB_URI)."""
        pid = self.embedded.running_pid() if self.embedded else None
        return tree_rss_mb(pid) if pid else None

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time (user + system) used so far by the server's processes and by the embedded database."""
        db_pid = self.embedded.running_pid() if self.embedded else None
        return (tree_cpu_seconds(self.proc.pid) if self.proc else 0.0,
                tree_cpu_seconds(db_pid) if db_pid else 0.0)

    def stop(self) -> None:
        if self.proc:
            stop_group(self.proc, 15)
        if self.embedded:
            self.embedded.stop(timeout=5)


def stop_group(proc: subprocess.Popen[bytes], seconds: float) -> None:
    """Stop a server started in its own session: SIGTERM to its process group, SIGKILL after `seconds`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def wait_until_up(base: str, proc: subprocess.Popen[bytes], log: Path, seconds: float) -> None:
    """Until the server's /metadata answers 200; SystemExit with its log when it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/metadata", timeout=10).status_code == 200:
                return
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    raise SystemExit(f"server did not answer within {seconds:.0f} s")


def tree_stats(root: int) -> list[list[str]]:
    """/proc/PID/stat fields after the command name, of process `root` and all its descendants. By parentage,
    not process group: `ehc serve` runs its audit sealer in a session of its own."""
    procs: dict[int, list[str]] = {}
    for status in Path("/proc").glob("[0-9]*/stat"):
        try:
            procs[int(status.parent.name)] = status.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError, ValueError):
            continue
    tree, grown = {root} & procs.keys(), True
    while grown:
        children = {pid for pid, fields in procs.items() if int(fields[1]) in tree} - tree
        tree |= children
        grown = bool(children)
    return [procs[pid] for pid in tree]


def tree_rss_mb(root: int) -> float:
    return sum(int(f[21]) for f in tree_stats(root)) * os.sysconf("SC_PAGE_SIZE") / 2**20


def tree_cpu_seconds(root: int) -> float:
    return sum(int(f[11]) + int(f[12]) for f in tree_stats(root)) / os.sysconf("SC_CLK_TCK")


def fmt(x: float | None, digits: int = 0) -> str:
    return "-" if x is None else f"{x:,.{digits}f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    lat = [r["latency_ms"] for r in runs]
    return {"rps": median([r["total_rps"] for r in runs]), "p50": median([x["p50"] for x in lat if x["p50"]]),
            "p95": median([x["p95"] for x in lat if x["p95"]]), "errors": sum(r["errors"] for r in runs),
            "requests": sum(r["total_requests"] for r in runs), "each": [r["total_rps"] for r in runs]}


def per_op(runs: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    ops: dict[str, dict[str, list[float]]] = {}
    for r in runs:
        for o in r["ops"]:
            d = ops.setdefault(o["op"], {"rps": [], "p50": [], "p95": []})
            for k in ("rps", "p50", "p95"):
                if o.get(k) is not None:
                    d[k].append(o[k])
    return {op: {k: median(v) for k, v in d.items()} for op, d in ops.items()}


def write_report(args: argparse.Namespace, server: Server, results: dict[str, dict[str, list[dict[str, Any]]]],
                 notes: dict[str, Any]) -> str:
    peer = bool(args.peer_base)
    done = int(notes.get("rounds_done", args.rounds))
    when = datetime.now(UTC)
    loads = [x for runs in results.values() for rs in runs.values() for r in rs
             for x in (r["load_before"][0], r["load_after"][0])]
    lines = [f"# {SECTION}", "",
             f"`python3 scripts/bench_load.py --server {args.server} --rounds {args.rounds} --duration {args.duration} "
             f"--vus {args.vus}"
             + (" --peer-base ..." if peer else "") + f"` on {when:%Y-%m-%d %H:%M} UTC: {platform.node()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}. The load driver `scripts/load/drive.mjs` "
             f"at {args.vus} VUs, {args.duration} per run, {done} round{'s' if done != 1 else ''}"
             + (f" (of {args.rounds} planned)" if done != args.rounds else "")
             + (", each round running this server and the peer back to back (interleaved)" if peer else "")
             + "; figures are the medians of the rounds. "
             f"This server: {server.description}, {server.database} on 127.0.0.1, auth on (a `{SCOPES}` "
             "client-credentials token) and audit on."
             + (f" Peer: {args.peer_name} at {args.peer_base}, no auth, no audit." if peer else ""), ""]
    lines += ["| scenario | server | req/s | p50 ms | p95 ms | errors | req/s of each round |",
              "|---|---|---:|---:|---:|---:|---|"]
    for scenario in ("crud", "read"):
        for who in ("ehc", "peer"):
            runs = results.get(who, {}).get(scenario)
            if not runs:
                continue
            s = summarise(runs)
            name = "this server" if who == "ehc" else args.peer_name
            lines.append(f"| {scenario} | {name} | {fmt(s['rps'])} | {fmt(s['p50'], 1)} | {fmt(s['p95'], 1)} | "
                         f"{s['errors']} of {s['requests']:,} | {', '.join(fmt(x) for x in s['each'])} |")
    if args.reference:
        lines.append(f"| crud | reference: {args.peer_name} measured earlier on this machine | 139 | 48 | 133 | | |")
        lines.append(f"| read | reference: {args.peer_name} measured earlier on this machine | 760 | 7 | 25 | | |")
    cpu_rows = [(scenario, [r["cpu_ms"] for r in results.get("ehc", {}).get(scenario, []) if "cpu_ms" in r])
                for scenario in ("crud", "read")]
    if any(rows for _, rows in cpu_rows):
        cores = os.cpu_count() or 1
        lines += ["", "CPU time per request of this server (all its processes, the audit sealer included) and of the "
                  "embedded database, medians of the rounds, and the request rate those would allow on idle cores "
                  "(the load generator and any other work on the machine left out: an upper bound). Less bent by "
                  "other work than req/s, but not immune: on 2026-12-01 the same code measured 5.0-5.6 ms of server "
                  "CPU a read at 05:00 UTC and 2.95 ms at 06:14, on a busier and then a quieter host):", "",
                  "| scenario | server CPU ms/request | database CPU ms/request | req/s on "
                  f"{cores} idle cores |", "|---|---:|---:|---:|"]
        for scenario, rows in cpu_rows:
            if rows:
                server_ms, db_ms = median([r[0] for r in rows]), median([r[1] for r in rows])
                total = (server_ms or 0) + (db_ms or 0)
                lines.append(f"| {scenario} | {fmt(server_ms, 2)} | {fmt(db_ms, 2)} | "
                             f"{fmt(1000 * cores / total if total else None)} |")
    lines += ["", "Per operation (this server, medians of the rounds):", "",
              "| scenario | operation | req/s | p50 ms | p95 ms |", "|---|---|---:|---:|---:|"]
    for scenario in ("crud", "read"):
        for op, d in per_op(results.get("ehc", {}).get(scenario, [])).items():
            lines.append(f"| {scenario} | {op} | {fmt(d['rps'], 1)} | {fmt(d['p50'], 1)} | {fmt(d['p95'], 1)} |")
    lines += ["", f"Machine load (1-minute load average at the start and end of each run): min {fmt(min(loads), 2)}, "
              f"median {fmt(median(loads), 2)}, max {fmt(max(loads), 2)}"
              + (f" on {os.cpu_count()} CPUs" if os.cpu_count() else "") + ". " + notes.get("noise", ""),
              f"Audit backlog (`_audit_pending` after each CRUD run of this server): "
              f"{', '.join(str(x) for x in notes.get('pending', [])) or '-'}. "
              f"Server resident memory after the runs: {fmt(notes.get('rss_mb'))} MB "
              "(master, workers and audit sealer).",
              "", "Database commands per request of this scenario: `docs/benchmarks/round-trips.md`; "
              "the embedded database candidates: `docs/benchmarks/backends.md`."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    splice(args.doc, text)
    return text


def splice(doc: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put the section into docs/benchmarks.md between its markers (appended the first time)."""
    block = f"{begin}\n{section.strip()}\n{end}"
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if begin in text and end in text:
        text = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def report(args: argparse.Namespace, server: Server, results: dict[str, dict[str, list[dict[str, Any]]]],
           notes: dict[str, Any]) -> str:
    spread = {sc: (min(r["total_rps"] for r in rs), max(r["total_rps"] for r in rs))
              for sc, rs in results["ehc"].items() if rs}
    notes["noise"] = ("Spread of this server's rounds (min-max req/s): " + "; ".join(
        f"{sc} {fmt(lo)}-{fmt(hi)} ({fmt(100 * (hi - lo) / hi if hi else 0)}%)" for sc, (lo, hi) in spread.items()
    ) + ".") if spread else ""
    return write_report(args, server, results, notes)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", default="60s", help="per run, e.g. 60s")
    ap.add_argument("--vus", type=int, default=8)
    ap.add_argument("--scenarios", default="crud,read")
    ap.add_argument("--server", choices=("gunicorn", "ehc", "granian"), default="gunicorn",
                    help="gunicorn or granian with --workers/--threads, or `ehc serve` with its own defaults")
    ap.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1))
    ap.add_argument("--threads", type=int, default=1,
                    help="> 1: gunicorn's gthread worker; granian's blocking threads per worker")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--peer-base", default=None, help="FHIR base URL of a peer server to interleave with")
    ap.add_argument("--peer-name", default="HAPI FHIR JPA starter 8.8.0 (PostgreSQL 15)")
    ap.add_argument("--reference", action="store_true",
                    help="also list the peer's reference figures measured earlier on this machine")
    ap.add_argument("--pause", type=float, default=5.0, help="seconds between runs")
    ap.add_argument("--node", default=None, help="the Node that runs the load driver")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "load.md")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    node = find_node(args.node)
    scenarios = [s for s in args.scenarios.split(",") if s]
    tmp = Path(tempfile.mkdtemp(prefix="ehc-load-"))
    server = Server(args, tmp)
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"ehc": {}, "peer": {}}
    notes: dict[str, Any] = {"pending": []}
    try:
        server.start()
        server.description = server.describe()
        print(f"server: {server.base} ({server.description}); load average {loadavg()}", flush=True)
        for rnd in range(1, args.rounds + 1):
            for scenario in scenarios:
                targets = [("ehc", server.base)] + ([("peer", args.peer_base)] if args.peer_base else [])
                if rnd % 2 == 0:
                    targets.reverse()  # alternate who goes first
                for who, base in targets:
                    auth = [f"--token={server.token()}"] if who == "ehc" else []
                    out = tmp / f"{rnd}-{scenario}-{who}.json"
                    print(f"round {rnd} {scenario} {who}", flush=True)
                    cpu_before = server.cpu_seconds()
                    run = drive(node, base, scenario, args.vus, args.duration, out, *auth)
                    if who == "ehc":  # CPU per request: a figure the other work on a shared machine does not bend
                        run["cpu_ms"] = [1000 * (b - a) / max(run["total_requests"], 1)
                                         for a, b in zip(cpu_before, server.cpu_seconds(), strict=True)]
                    results[who].setdefault(scenario, []).append(run)
                    if who == "ehc" and scenario == "crud":
                        notes["pending"].append(server.audit_pending())
                    time.sleep(args.pause)
            notes["rss_mb"] = server.rss_mb()
            notes["rounds_done"] = rnd
            report(args, server, results, notes)  # after every round: a run cut short still leaves its figures
    finally:
        server.stop()
    print(report(args, server, results, notes))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
