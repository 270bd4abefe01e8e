"""Benchmark of the master patient index and the card (issue 3): writes docs/benchmarks/mpi.md.

1. seeds N synthetic residents in bulk (`ehc seed`'s code path; default 100,000) into a fresh database
   (EHC_MONGODB_URI when set, else a private embedded FerretDB);
2. starts `gunicorn -w 2` on 127.0.0.1 with EHC_AUTH_REQUIRED=false and measures over HTTP:
   - POST /fhir/$ehc-verify per second: 2 load processes, each a requests.Session loop over fresh dynamic tokens
     (each token is accepted once, so every request does the whole check including the nonce insert);
   - POST Patient/{id}/$ehc-qrcode with image=false per second: 2 load processes;
   - GET Patient/$ihe-pix latency p50 / p95: one client, sequential;
3. runs `ehc import` on CSV files of 10,000 and 100,000 new rows: rows per second and the peak RSS of the
   importing process (flat memory means the same peak for both sizes).
With --profile, pyinstrument profiles of an in-process import and of in-process verifies are written next to
the report. Targets: verify >= 1,000/s, qrcode >= 500/s, pix p95 <= 10 ms, import >= 2,000 rows/s.

    python3 scripts/bench_mpi.py [--residents 100000] [--seconds 15] [--import-sizes 10000,100000] [--profile]
"""

from __future__ import annotations

import argparse
import csv
import json
import multiprocessing as mp
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGETS = {"verify": 1000.0, "qrcode": 500.0, "pix_p95_ms": 10.0, "import": 2000.0}
JSON = {"Content-Type": "application/fhir+json"}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_database(tmp: Path) -> tuple[str, Any]:
    if os.environ.get("EHC_MONGODB_URI"):
        base = os.environ["EHC_MONGODB_URI"].rsplit("/", 1)[0] if os.environ["EHC_MONGODB_URI"].count("/") > 2 \
            else os.environ["EHC_MONGODB_URI"]
        return base.rstrip("/") + f"/bench_mpi_{os.getpid()}", None
    from app.store.embedded import EmbeddedDatabase

    db = EmbeddedDatabase(tmp / "db", free_port())
    db.start()
    return db.uri.rstrip("/") + "/bench_mpi", db


def env_for(uri: str, data_dir: Path) -> dict[str, str]:
    return dict(os.environ, EHC_MONGODB_URI=uri, EHC_DATA_DIR=str(data_dir), EHC_AUTH_REQUIRED="false",
                EHC_PROVINCE="11", PYTHONPATH=str(ROOT))


def services(uri: str, data_dir: Path) -> tuple[Any, Any, Any]:
    os.environ.update(EHC_MONGODB_URI=uri, EHC_DATA_DIR=str(data_dir), EHC_AUTH_REQUIRED="false")
    from app.cli.imports import services_with_index

    svc, hooks = services_with_index()
    return svc, hooks, svc.extensions["ehc"]


# -- load processes ---------------------------------------------------------------------------------------------

def _verify_worker(base: str, tokens: list[str], seconds: float, out: Any) -> None:
    import requests

    s = requests.Session()
    done = bad = 0
    deadline = time.monotonic() + seconds
    for token in tokens:
        if time.monotonic() > deadline:
            break
        r = s.post(f"{base}/$ehc-verify", headers=JSON, data=json.dumps(
            {"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": token}]}))
        done += 1
        if r.status_code != 200 or '"valueBoolean":true' not in r.text.replace(" ", ""):
            bad += 1
    out.put((done, bad))


def _qrcode_worker(base: str, ids: list[str], seconds: float, out: Any) -> None:
    import requests

    s = requests.Session()
    body = json.dumps({"resourceType": "Parameters", "parameter": [{"name": "image", "valueBoolean": False}]})
    done = bad = 0
    deadline = time.monotonic() + seconds
    rng = random.Random(os.getpid())
    while time.monotonic() < deadline:
        r = s.post(f"{base}/Patient/{rng.choice(ids)}/$ehc-qrcode", headers=JSON, data=body)
        done += 1
        bad += r.status_code != 200
    out.put((done, bad))


def run_load(target: Any, args_per_proc: list[tuple[Any, ...]]) -> tuple[float, int, int]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, q)) for a in args_per_proc]
    t0 = time.monotonic()
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    elapsed = time.monotonic() - t0
    done = sum(r[0] for r in results)
    return done / elapsed, done, sum(r[1] for r in results)


# -- the measurements ----------------------------------------------------------------------------------------

def seed_residents(svc: Any, hooks: Any, cards: Any, n: int) -> float:
    from app.cli.seed import seed

    t0 = time.monotonic()
    out = seed(svc, hooks, cards, n, 0, start=0, progress=True)
    print(f"seeded {out}", file=sys.stderr)
    return time.monotonic() - t0


def sample_residents(svc: Any, k: int) -> list[dict[str, Any]]:
    col = svc.repo.current("Patient")
    docs = list(col.aggregate([{"$sample": {"size": k}}])) if not svc.handle.is_ferretdb else \
        list(col.find({}, {"res": 1}).limit(k))
    return [svc.repo.decode(d)["res"] for d in docs]


def start_gunicorn(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    import requests

    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
                             "--log-level", "warning", "app.wsgi:app"], env=env, cwd=ROOT)
    for _ in range(300):
        try:
            if requests.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("gunicorn did not start")


def pix_latency(base: str, residents: list[dict[str, Any]], n: int,
                headers: dict[str, str] | None = None) -> tuple[float, float, int]:
    import requests

    s = requests.Session()
    s.headers.update(headers or {})
    times, bad = [], 0
    for i in range(n):
        ident = residents[i % len(residents)]["identifier"][1]  # the hospital record number
        t0 = time.perf_counter()
        r = s.get(f"{base}/Patient/$ihe-pix", params={"sourceIdentifier": f"{ident['system']}|{ident['value']}"})
        times.append((time.perf_counter() - t0) * 1000)
        bad += r.status_code != 200
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.95) - 1], bad


def write_import_file(path: Path, rows: int, offset: int) -> None:
    from app.synthetic import REGIONS, resident_id

    rng = random.Random(offset)
    from datetime import date, timedelta

    with open(path, "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["source_system", "mrn", "name", "gender", "birth_date", "id_type", "id_number", "phone",
                    "address"])
        for i in range(offset, offset + rows):
            male = rng.random() < 0.5
            born = date(1940, 1, 1) + timedelta(days=rng.randrange(80 * 365))
            number = resident_id(REGIONS[(i // 500) % len(REGIONS)], born, i, male)
            w.writerow([f"import-{offset}", f"R{i:09d}", "张" + "伟芳娜敏静丽强"[i % 7] + "明",
                        "男" if male else "女", born.isoformat(), "01", number, f"139{rng.randrange(10**8):08d}",
                        "北京市东城区和平里"])


def run_import(env: dict[str, str], src: Path, report: Path, workers: int) -> tuple[float, float, dict[str, int]]:
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "import", str(src), "--report", str(report),
                             "--no-progress", "--workers", str(workers)], env=env, cwd=ROOT, stdout=subprocess.PIPE)
    # Peak RSS: VmHWM of the process's own memory, polled (ru_maxrss would count the parent's pages the
    # child had between fork and exec).
    peak_kb = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as fh:
                for line in fh:
                    if line.startswith("VmHWM:"):
                        peak_kb = max(peak_kb, int(line.split()[1]))
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
        time.sleep(0.2)
    status = proc.returncode
    elapsed = time.monotonic() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    if status != 0:
        raise SystemExit(f"ehc import failed: {out}")
    counts = json.loads(out.strip().splitlines()[-1])
    return elapsed, peak_kb / 1024, counts


def profile_import(svc: Any, hooks: Any, tmp: Path, out: Path) -> None:
    from pyinstrument import Profiler

    from app.mpi.importer import Importer

    src = tmp / "profile.csv"
    write_import_file(src, 1000, 9_000_000)
    prof = Profiler()
    prof.start()
    Importer(svc, hooks).run(src, tmp / "profile-report.csv", progress=False)
    prof.stop()
    out.write_text(prof.output_text(unicode=False, color=False, show_all=False), encoding="utf-8")


def profile_http(cards: Any, residents: list[dict[str, Any]], out: Path) -> None:
    """pyinstrument of $ehc-verify, $ehc-qrcode and $ihe-pix through the whole app (Flask test client)."""
    from pyinstrument import Profiler

    from app import create_app

    client = create_app().test_client()
    tokens = [cards.issue(residents[i % len(residents)], "dynamic", 300)[0] for i in range(500)]
    body = json.dumps({"resourceType": "Parameters", "parameter": [{"name": "image", "valueBoolean": False}]})
    prof = Profiler()
    prof.start()
    for i, token in enumerate(tokens):
        client.post("/fhir/$ehc-verify", headers=JSON, data=json.dumps(
            {"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": token}]}))
        client.post(f"/fhir/Patient/{residents[i % len(residents)]['id']}/$ehc-qrcode", headers=JSON, data=body)
        ident = residents[i % len(residents)]["identifier"][1]
        client.get("/fhir/Patient/$ihe-pix", query_string={"sourceIdentifier": f"{ident['system']}|{ident['value']}"})
    prof.stop()
    out.write_text(prof.output_text(unicode=False, color=False), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--residents", type=int, default=100_000)
    ap.add_argument("--seconds", type=float, default=15.0, help="duration of each throughput run")
    ap.add_argument("--pix", type=int, default=2000, help="$ihe-pix requests for the latency figures")
    ap.add_argument("--import-sizes", default="10000,100000")
    ap.add_argument("--import-workers", type=int, default=4)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "mpi.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-mpi-"))
    uri, db = start_database(tmp)
    data_dir = tmp / "data"
    env = env_for(uri, data_dir)
    results: dict[str, Any] = {"residents": args.residents}
    gunicorn = None
    try:
        svc, hooks, cards = services(uri, data_dir)
        results["seed_s"] = seed_residents(svc, hooks, cards, args.residents)
        residents = sample_residents(svc, 2000)
        port = free_port()
        gunicorn = start_gunicorn(env, port)
        base = f"http://127.0.0.1:{port}/fhir"
        # verify: fresh dynamic tokens, signed here with the node's key file (the server's own keys)
        per_proc = 40_000
        tokens = [cards.issue(residents[i % len(residents)], "dynamic", 300)[0] for i in range(2 * per_proc)]
        rate, done, bad = run_load(_verify_worker, [(base, tokens[:per_proc], args.seconds),
                                                     (base, tokens[per_proc:], args.seconds)])
        results["verify"] = (rate, done, bad)
        ids = [r["id"] for r in residents]
        results["qrcode"] = run_load(_qrcode_worker, [(base, ids, args.seconds), (base, ids, args.seconds)])
        results["pix"] = pix_latency(base, residents, args.pix)
        results["ferretdb"] = svc.handle.is_ferretdb
        results["imports"] = []
        write_report(Path(args.out), results, args)  # the HTTP figures, before the long imports
        gunicorn.terminate()
        gunicorn.wait(20)
        gunicorn = None
        if args.profile:
            out_dir = Path(args.out).parent
            profile_import(svc, hooks, tmp, out_dir / "mpi-import-profile.txt")
            profile_http(cards, residents, out_dir / "mpi-http-profile.txt")
        imports = []
        for k, size in enumerate(int(s) for s in args.import_sizes.split(",") if s):
            src = tmp / f"import-{size}.csv"
            write_import_file(src, size, 1_000_000 * (k + 1))
            elapsed, rss, counts = run_import(env, src, tmp / f"import-{size}-report.csv", args.import_workers)
            imports.append((size, elapsed, rss, counts))
            results["imports"] = imports
            write_report(Path(args.out), results, args)
            print(f"import {size}: {size / elapsed:.0f} rows/s, peak RSS {rss:.0f} MiB {counts}", file=sys.stderr)
    finally:
        if gunicorn is not None:
            gunicorn.terminate()
        if db is not None:
            db.stop()


def write_report(out: Path, r: dict[str, Any], args: Any) -> None:
    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    v_rate, v_done, v_bad = r["verify"]
    q_rate, q_done, q_bad = r["qrcode"]
    p50, p95, p_bad = r["pix"]
    lines = [
        "# Benchmark: master patient index and electronic health card",
        "",
        f"`python3 scripts/bench_mpi.py --residents {args.residents}` on {platform.node()} "
        f"({os.cpu_count()} CPUs, Python {platform.python_version()}), "
        f"database {'FerretDB v1 on SQLite (embedded)' if r['ferretdb'] else 'MongoDB'}, "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Server: `gunicorn -w 2` on 127.0.0.1, EHC_AUTH_REQUIRED=false; "
        "load from 2 client processes on the same machine (they compete with the server for the CPUs).",
        "",
        f"Seeded {r['residents']:,} residents in bulk in {r['seed_s']:.0f} s.",
        "",
        "| measure | result | target | |",
        "|---|---|---|---|",
        f"| `$ehc-verify` (fresh dynamic tokens, nonce recorded) | {v_rate:,.0f}/s ({v_done:,} requests, "
        f"{v_bad} not valid) | >= 1,000/s | {mark(v_rate >= TARGETS['verify'])} |",
        f"| `$ehc-qrcode` without image | {q_rate:,.0f}/s ({q_done:,} requests, {q_bad} errors) | >= 500/s "
        f"| {mark(q_rate >= TARGETS['qrcode'])} |",
        f"| `$ihe-pix` latency, one client | p50 {p50:.1f} ms, p95 {p95:.1f} ms ({p_bad} errors) | p95 <= 10 ms "
        f"| {mark(p95 <= TARGETS['pix_p95_ms'])} |",
    ]
    for size, elapsed, rss, counts in r.get("imports", []):
        rate = size / elapsed
        lines.append(f"| `ehc import` {size:,} rows | {rate:,.0f} rows/s, peak RSS {rss:.0f} MiB "
                     f"({counts['created']:,} created, {counts['rejected']} rejected) | >= 2,000 rows/s, flat memory "
                     f"| {mark(rate >= TARGETS['import'])} |")
    rss = [x[2] for x in r.get("imports", [])]
    if len(rss) >= 2:
        flat = max(rss) - min(rss) < 0.15 * min(rss)
        lines += ["", f"Memory of the import is {'flat' if flat else 'NOT flat'}: peak RSS {min(rss):.0f} MiB to "
                      f"{max(rss):.0f} MiB for a {r['imports'][-1][0] // r['imports'][0][0]}x larger file."]
    out.parent.mkdir(parents=True, exist_ok=True)
    existing = out.read_text(encoding="utf-8") if out.exists() else ""
    notes = existing.split("<!-- notes -->", 1)[1] if "<!-- notes -->" in existing else "\n"
    out.write_text("\n".join(lines) + "\n\n<!-- notes -->" + notes, encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
