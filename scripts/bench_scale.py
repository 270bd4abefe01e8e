#!/usr/bin/env python3
"""Scale benchmark: seed N residents and 10 x N Observations through the bulk path (`ehc seed`) into a fresh
embedded FerretDB (SQLite), time it and measure the database on disk; then start the real server (`ehc serve`
defaults, auth and audit on) and measure p50/p95 of `Patient?identifier=<ID card system>|<number>` and
`Observation?patient=<id>&code=<loinc>` for randomly chosen residents, at 1 client (and 8).

    python3 scripts/bench_scale.py --patients 10000
    python3 scripts/bench_scale.py --patients 1000000 --max-seed-minutes 80 --data-dir /tmp/ehc-scale

Each run adds its figures to docs/benchmarks/scale.json (keyed by the size reached) and rewrites
docs/benchmarks/scale.md and the "Scale" section of docs/benchmarks.md from all runs, with the ratio of each
p95 to that of the smallest run. The seeding runs under `nice -n 19` (the database too while it seeds), stops
after the batch in hand when --max-seed-minutes pass or the disk reaches --max-disk-percent (SIGTERM to the
seeder), and the size reached is what is reported: nothing is extrapolated. The data dir is removed at the
end unless --keep.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench_load import stop_group, wait_until_up  # noqa: E402

from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
MRN_SYSTEM = "urn:ehc:mrn:bench"  # the synthetic residents' record numbers: M<i:08d> (app.synthetic)
LOINC = "http://loinc.org"
SCOPES = "system/*.cruds"
SECTION = "Scale"
BEGIN, END = "<!-- scale:begin -->", "<!-- scale:end -->"
DB_NAME = "ehc_scale"


def loadavg() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def disk_percent(path: Path) -> float:
    u = shutil.disk_usage(path)
    return 100.0 * u.used / (u.used + u.free)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def renice(pid: int | None, value: int) -> None:
    if pid:
        subprocess.run(["renice", "-n", str(value), "-p", str(pid)], capture_output=True)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


class Bench:
    def __init__(self, args: argparse.Namespace, data_dir: Path, fresh: bool = True) -> None:
        self.args = args
        self.dir = data_dir
        if fresh and self.dir.exists() and any(self.dir.iterdir()):
            raise SystemExit(f"{self.dir} is not empty: give a fresh --data-dir")
        if not fresh and not (self.dir / "db").is_dir():
            raise SystemExit(f"{self.dir} holds no seeded database")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.db = EmbeddedDatabase(self.dir / "db", free_port())
        self.env: dict[str, str] = {}
        self.server: subprocess.Popen[bytes] | None = None
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.notes: dict[str, Any] = {}

    # -- seeding ---------------------------------------------------------------------------------------

    def start_db(self) -> None:
        self.db.start(timeout=300)
        self.env = dict(os.environ, EHC_MONGODB_URI=f"{self.db.uri.rstrip('/')}/{DB_NAME}",
                        EHC_DATA_DIR=str(self.dir / "data"), EHC_AUTH_REQUIRED="true", EHC_PROVINCE="11")

    def seed(self) -> dict[str, Any]:
        a = self.args
        self.start_db()
        cmd = ["nice", "-n", "19", sys.executable, "-m", "app.cli", "seed", "--patients", str(a.patients),
               "--observations", str(a.observations), "--start", "0", "--no-progress"]
        if a.max_seed_minutes:
            cmd += ["--max-seconds", str(a.max_seed_minutes * 60)]
        print(f"seeding: {' '.join(cmd[3:])}; disk {disk_percent(self.dir):.0f}% used", flush=True)
        renice(self.db.running_pid(), 19)
        log = (self.dir / "seed.log").open("wb")
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=log)
        rss: list[float] = []  # resident memory of the seeder, sampled every 2 s
        stopped = ""
        last = 0.0
        while proc.poll() is None:
            time.sleep(2)
            if rss_mb(proc.pid):
                rss.append(rss_mb(proc.pid))
            if not stopped and disk_percent(self.dir) >= a.max_disk_percent:
                stopped = f"disk reached {a.max_disk_percent:.0f}%"
                proc.send_signal(signal.SIGTERM)  # the seeder finishes its batch and writes the name postings
            if time.monotonic() - last >= 60:
                last = time.monotonic()
                print(f"  {time.monotonic() - t0:7.0f} s  db {du(self.dir / 'db') / 2**30:6.2f} GiB  "
                      f"seeder {rss[-1]:5.0f} MB  disk {disk_percent(self.dir):.0f}%  load {loadavg():.1f}",
                      flush=True)
        seconds = time.monotonic() - t0
        renice(self.db.running_pid(), 0)
        out = proc.stdout.read().decode() if proc.stdout else ""
        if proc.returncode != 0:
            raise SystemExit(f"ehc seed failed ({proc.returncode}): {(self.dir / 'seed.log').read_text()[-3000:]}")
        result: dict[str, Any] = json.loads(out[out.index("{"):])
        if not stopped and result["patients"] + result["skipped"] < a.patients:
            stopped = f"the {a.max_seed_minutes:g}-minute seeding budget ran out"
        result.update(seconds=round(seconds, 1), stopped=stopped, seeder_rss_mb=[round(min(rss or [0])),
                      round(statistics.median(rss or [0])), round(max(rss or [0]))])
        result["db_bytes"] = du(self.dir / "db")
        print(f"seeded {result}", flush=True)
        return result

    # -- the server --------------------------------------------------------------------------------------

    def start_server(self) -> None:
        out = subprocess.run([sys.executable, "-m", "app.cli", "clients", "add", "--name", "scale bench",
                              "--scopes", SCOPES, "--province", "11"], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, check=True).stdout
        reg = json.loads(out[out.index("{"):])
        self.client = (reg["client_id"], reg["client_secret"])
        subprocess.run([sys.executable, "-c", "from app import create_app; create_app()"], cwd=ROOT, env=self.env,
                       check=True, capture_output=True)
        log = (self.dir / "server.log").open("ab")
        self.server = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--host", "127.0.0.1", "--port",
                                        str(self.port)], cwd=ROOT, env=self.env, stdout=log, stderr=log,
                                       start_new_session=True)
        wait_until_up(self.base, self.server, self.dir / "server.log", 300)
        found = re.search(r"gunicorn, \d+ workers x \d+ threads \(gthread\)",
                          (self.dir / "server.log").read_text(errors="replace"))
        self.notes["server"] = "`ehc serve` with its defaults" + (f" ({found.group(0)})" if found else "")

    def session(self) -> requests.Session:
        r = requests.post(f"http://127.0.0.1:{self.port}/oauth/token",
                          data={"grant_type": "client_credentials", "scope": SCOPES}, auth=self.client, timeout=30)
        r.raise_for_status()
        s = requests.Session()
        s.headers.update({"Authorization": f"Bearer {r.json()['access_token']}", "Accept": "application/fhir+json"})
        return s

    def db_commands(self) -> tuple[float, float]:
        """(database commands, seconds spent in them) so far, summed over the server's workers (/metrics)."""
        try:
            text = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30).text
        except requests.RequestException:
            return 0.0, 0.0
        count = sum(float(m) for m in re.findall(r"^ehc_db_commands_total\{[^}]*\} (\S+)$", text, re.M))
        secs = sum(float(m) for m in re.findall(r"^ehc_db_command_duration_seconds_sum\{[^}]*\} (\S+)$", text, re.M))
        return count, secs

    def stop(self) -> None:
        if self.server:
            stop_group(self.server, 30)
        self.db.stop(timeout=30)

    # -- measuring ---------------------------------------------------------------------------------------

    def residents(self, s: requests.Session, seeded: int, want: int) -> list[tuple[str, str, str]]:
        """(ID number, patient id, a LOINC code the resident has) of `want` residents chosen at random among
        those seeded, found by their record numbers (untimed)."""
        rng = random.Random(self.args.sample_seed)
        out: list[tuple[str, str, str]] = []
        tries = 0
        while len(out) < want and tries < want * 3:
            tries += 1
            i = rng.randrange(seeded)
            bundle = s.get(f"{self.base}/Patient", params={"identifier": f"{MRN_SYSTEM}|M{i:08d}"}, timeout=60).json()
            entries = bundle.get("entry") or []
            if not entries:
                continue  # a synthetic duplicate ID number: that resident was skipped by the seeder
            res = entries[0]["resource"]
            idno = next(x["value"] for x in res["identifier"] if x["system"] == ID_SYSTEM)
            obs = s.get(f"{self.base}/Observation", params={"patient": res["id"], "_count": "50"}, timeout=60).json()
            codes = sorted({c["code"] for e in obs.get("entry") or [] for c in e["resource"]["code"]["coding"]})
            out.append((idno, res["id"], rng.choice(codes) if codes else "718-7"))
        return out

    def measure(self, sample: list[tuple[str, str, str]], clients: int) -> dict[str, Any]:
        """Each client goes through its share of the residents: identifier search, then observation search."""
        times: dict[str, list[float]] = {"identifier": [], "observation": []}
        errors: list[str] = []
        lock = threading.Lock()
        warm = self.args.warmup

        def work(part: list[tuple[str, str, str]]) -> None:
            s = self.session()
            for n, (idno, pid, code) in enumerate(part):
                t0 = time.perf_counter()
                r = s.get(f"{self.base}/Patient", params={"identifier": f"{ID_SYSTEM}|{idno}"}, timeout=120)
                t1 = time.perf_counter()
                ok = r.status_code == 200 and [e["resource"]["id"] for e in r.json().get("entry") or []] == [pid]
                r2 = s.get(f"{self.base}/Observation", params={"patient": pid, "code": f"{LOINC}|{code}"},
                           timeout=120)
                t2 = time.perf_counter()
                entries = r2.json().get("entry") or [] if r2.status_code == 200 else []
                ok2 = bool(entries) and all(e["resource"]["subject"]["reference"] == f"Patient/{pid}"
                                            and e["resource"]["code"]["coding"][0]["code"] == code for e in entries)
                with lock:
                    if not ok:
                        errors.append(f"identifier {r.status_code}")
                    if not ok2:
                        errors.append(f"observation {r2.status_code}")
                    if n >= warm // clients:
                        times["identifier"].append((t1 - t0) * 1000)
                        times["observation"].append((t2 - t1) * 1000)

        parts = [sample[k::clients] for k in range(clients)]
        commands0 = self.db_commands()
        load0 = loadavg()
        t0 = time.monotonic()
        threads = [threading.Thread(target=work, args=(p,)) for p in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        commands1 = self.db_commands()
        n = 2 * len(sample)
        out: dict[str, Any] = {"clients": clients, "errors": len(errors), "error_kinds": sorted(set(errors)),
                               "requests": n, "rps": round(n / wall, 1), "load": [load0, loadavg()],
                               "db_commands_per_request": round((commands1[0] - commands0[0]) / n, 2),
                               "db_ms_per_request": round(1000 * (commands1[1] - commands0[1]) / n, 2)}
        for kind, values in times.items():
            out[kind] = {"n": len(values), "p50": round(pct(values, 0.5), 1), "p95": round(pct(values, 0.95), 1)}
        print(f"  {clients} client(s): {out}", flush=True)
        return out


def fmt_size(n: int) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def write_report(results: dict[str, Any], out: Path, doc: Path) -> str:
    runs = sorted(results.values(), key=lambda r: r["seed"]["patients"])
    base = runs[0]
    lines = [f"# {SECTION}", "",
             "`python3 scripts/bench_scale.py --patients N`: N synthetic residents (valid ID numbers, formal cards) "
             "with 10 lab Observations each, written by the bulk path `ehc seed` (the documents, encrypted ID "
             "numbers, blind-index claims, cards, name and reference posting lists the API writes; "
             "tests/integration/test_seed.py compares them with API-written ones) into a fresh embedded FerretDB "
             "v1.24 (SQLite), under `nice -n 19`. Then the real server (`ehc serve` defaults, auth and audit on, a "
             f"`{SCOPES}` client-credentials token) answers `Patient?identifier={ID_SYSTEM}|<number>` and "
             "`Observation?patient=<id>&code=http://loinc.org|<code>` for residents chosen at random (the code "
             "one of theirs), one client and then 8 in parallel, every answer checked (the one resident; only "
             "their observations of that code). Latencies are client-side, in ms, after a warm-up.", ""]
    lines += ["| residents | observations | seeding | seeding rate | database on disk | seeder memory (min/median/max) "
              "| stopped early | run |", "|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in runs:
        sd = r["seed"]
        docs = sd["patients"] + sd["observations"]
        lines.append(f"| {sd['patients']:,} | {sd['observations']:,} | {sd['seconds'] / 60:,.1f} min | "
                     f"{docs / sd['seconds']:,.0f} documents/s | {fmt_size(sd['db_bytes'])} "
                     f"({sd['db_bytes'] / max(docs, 1) / 1024:.1f} KiB a document) | "
                     f"{'/'.join(str(x) for x in sd['seeder_rss_mb'])} MB | {sd['stopped'] or 'no'} | {r['when']} |")
    lines += ["", "| residents | clients | search | p50 ms | p95 ms | p95 / p95 at "
              f"{base['seed']['patients']:,} | searches timed | errors | database commands / search | "
              "database ms / search | load average |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        for m in r["measure"]:
            ref = next((b for b in base["measure"] if b["clients"] == m["clients"]), None)
            for kind, label in (("identifier", "Patient?identifier"), ("observation", "Observation?patient&code")):
                ratio = f"{m[kind]['p95'] / ref[kind]['p95']:.2f}" if ref else "-"
                lines.append(f"| {r['seed']['patients']:,} | {m['clients']} | `{label}` | {m[kind]['p50']} | "
                             f"{m[kind]['p95']} | {ratio} | {m[kind]['n']} | {m['errors']} | "
                             f"{m.get('db_commands_per_request', '-')} | {m.get('db_ms_per_request', '-')} | "
                             f"{m['load'][0]:.1f} -> {m['load'][1]:.1f} |")
    lines += ["", "Database commands and milliseconds are per search, both kinds together, from the server's "
              "`/metrics` (`ehc_db_commands_total`, `ehc_db_command_duration_seconds`: every worker, background "
              "jobs such as the audit sealer included)."]
    for r in runs:
        if r.get("measured"):
            lines.append(f"{r['seed']['patients']:,} residents measured {r['measured']} (medians of the rounds).  ")
    lines += ["", f"Machine: {platform.node()}, {os.cpu_count()} CPUs shared with other work, Python "
              f"{platform.python_version()}; server: {base.get('server', '`ehc serve`')}."]
    for r in runs:
        if r.get("note"):
            lines.append(f"\n{r['seed']['patients']:,} residents: {r['note']}")
    text = "\n".join(lines) + "\n"
    out.write_text(text, encoding="utf-8")
    block = f"{BEGIN}\n{text.strip()}\n{END}"
    body = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if BEGIN in body and END in body:
        body = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _m: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    doc.write_text(body, encoding="utf-8")
    return text


def measure_interleaved(args: argparse.Namespace) -> int:
    """Servers on kept data dirs, measured in turn (the order alternating each round): the machine's load,
    which other work changes from minute to minute, falls on every size alike. Figures: medians of the rounds."""
    results = json.loads(args.results.read_text())
    benches: list[tuple[str, Bench, list[tuple[str, str, str]]]] = []
    try:
        for spec in args.measure:
            size, path = spec.split("=", 1)
            seeded = results[size]["seed"]
            bench = Bench(args, Path(path), fresh=False)
            benches.append((size, bench, []))
            bench.start_db()
            bench.port = free_port()
            bench.base = f"http://127.0.0.1:{bench.port}/fhir"
            bench.start_server()
            sample = bench.residents(bench.session(), seeded["patients"] + seeded["skipped"],
                                     args.samples + args.warmup)
            benches[-1] = (size, bench, sample)
            print(f"{size}: {len(sample)} residents sampled", flush=True)
        rounds: dict[str, list[dict[str, Any]]] = {size: [] for size, _, _ in benches}
        for rnd in range(args.rounds):
            order = benches if rnd % 2 == 0 else list(reversed(benches))
            for size, bench, sample in order:
                print(f"round {rnd + 1}: {size}", flush=True)
                rounds[size] += [bench.measure(sample, int(c)) for c in args.clients.split(",") if c]
    finally:
        for _, bench, _ in benches:
            bench.stop()
    for size, runs in rounds.items():
        merged = []
        for clients in sorted({m["clients"] for m in runs}):
            ms = [m for m in runs if m["clients"] == clients]
            entry: dict[str, Any] = {"clients": clients, "rounds": len(ms), "errors": sum(m["errors"] for m in ms),
                                     "requests": sum(m["requests"] for m in ms),
                                     "load": [min(m["load"][0] for m in ms), max(m["load"][1] for m in ms)]}
            for key in ("rps", "db_commands_per_request", "db_ms_per_request"):
                entry[key] = round(statistics.median(m[key] for m in ms), 2)
            for kind in ("identifier", "observation"):
                entry[kind] = {"n": sum(m[kind]["n"] for m in ms),
                               "p50": round(statistics.median(m[kind]["p50"] for m in ms), 1),
                               "p95": round(statistics.median(m[kind]["p95"] for m in ms), 1),
                               "p95_rounds": [m[kind]["p95"] for m in ms]}
            merged.append(entry)
        results[size]["measure"] = merged
        others = ", ".join(f"{int(s):,}" for s in rounds if s != size)
        results[size]["measured"] = (f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, interleaved with {others} residents "
                                     f"in {args.rounds} rounds")
        if args.note:
            results[size]["note"] = args.note
    args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(write_report(results, args.out, args.doc))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=10_000)
    ap.add_argument("--observations", type=int, default=10, help="per resident")
    ap.add_argument("--max-seed-minutes", type=float, default=0, help="0: no limit")
    ap.add_argument("--max-disk-percent", type=float, default=78.0)
    ap.add_argument("--data-dir", type=Path, default=None, help="default: a new directory under /tmp")
    ap.add_argument("--samples", type=int, default=400, help="residents measured (each: one search of each kind)")
    ap.add_argument("--warmup", type=int, default=40, help="first searches per run left out of the figures")
    ap.add_argument("--clients", default="1,8")
    ap.add_argument("--sample-seed", type=int, default=12)
    ap.add_argument("--note", default="", help="a sentence for the report about this run")
    ap.add_argument("--measure", nargs="+", default=None, metavar="SIZE=DIR",
                    help="no seeding: measure data dirs kept by earlier runs (--keep), interleaved in --rounds, "
                    "SIZE being the residents they were reported with")
    ap.add_argument("--rounds", type=int, default=3, help="with --measure")
    ap.add_argument("--report", action="store_true", help="only rewrite the report from --results")
    ap.add_argument("--keep", action="store_true", help="keep the data dir")
    ap.add_argument("--results", type=Path, default=ROOT / "docs" / "benchmarks" / "scale.json")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "scale.md")
    ap.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = ap.parse_args()
    if args.report:
        print(write_report(json.loads(args.results.read_text()), args.out, args.doc))
        return 0
    if args.measure:
        return measure_interleaved(args)
    if args.data_dir is None:
        args.data_dir = Path(f"/tmp/ehc-scale-{args.patients}-{os.getpid()}")
    bench = Bench(args, args.data_dir)
    try:
        seeded = bench.seed()
        bench.start_server()
        s = bench.session()
        sample = bench.residents(s, seeded["patients"] + seeded["skipped"], args.samples + args.warmup)
        print(f"measuring {len(sample)} residents; load {loadavg():.1f}", flush=True)
        measures = [bench.measure(sample, int(c)) for c in args.clients.split(",") if c]
        seeded["db_bytes_after"] = du(args.data_dir / "db")
    finally:
        bench.stop()
    results = json.loads(args.results.read_text()) if args.results.exists() else {}
    results[str(seeded["patients"])] = {"seed": seeded, "measure": measures, "server": bench.notes.get("server"),
                                        "when": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", "note": args.note}
    args.results.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    print(write_report(results, args.out, args.doc))
    size = du(args.data_dir)
    if args.keep:
        print(f"kept {args.data_dir} ({fmt_size(size)})")
    else:
        shutil.rmtree(args.data_dir, ignore_errors=True)
        print(f"removed {args.data_dir} ({fmt_size(size)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
