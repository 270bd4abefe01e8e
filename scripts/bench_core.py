#!/usr/bin/env python3
"""Benchmark of the FHIR core (issue 2): the server under gunicorn (2 workers) driven over HTTP from other
processes, against the raw pymongo cost of the same operations, in the same run and on the same data.

"Raw" is the database work the operation needs, done directly with pymongo: read by id = one find by _id;
patient by identifier = the posting-list lookup + one find by _id; observations by patient and code = the
posting-list lookup + one find per candidate; create = one insert (the server also writes the posting
lists). Prints a table and writes docs/benchmarks/core.md.

    python3 scripts/bench_core.py --patients 100000 --observations 1000000
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings  # noqa: E402
from app.services import build_services  # noqa: E402
from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402
from app.store.keys import keys_for  # noqa: E402
from app.synthetic import observation, patient  # noqa: E402
from tests.live import LiveServer  # noqa: E402

FJ = {"Content-Type": "application/fhir+json"}
CODES = ["2339-0", "718-7", "2093-3", "4548-4", "8480-6", "8462-4", "29463-7", "8302-2"]


def seed(svc: Any, n_patients: int, n_obs: int, batch: int = 2000) -> list[dict[str, Any]]:
    """Bulk-load through the repository's own document builder (same ix/so/posting lists as the API)."""
    repo = svc.repo
    rng = random.Random(7)
    people: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    codes = repo._reference_codes
    for start in range(0, n_patients, batch):
        docs: list[dict[str, Any]] = []
        keys: dict[str, list[str]] = {}
        for i in range(start, min(start + batch, n_patients)):
            res, mrn = patient(i, rng)
            doc = repo.build_doc("Patient", f"p{i}", 1, _now(), res, "11")
            docs.append(doc)
            for k in keys_for("Patient", doc["ix"], codes["Patient"]):
                keys.setdefault(k, []).append(doc["_id"])
            people.append({"id": doc["_id"], "mrn": mrn})
        repo.current("Patient").insert_many(docs, ordered=False)
        _write_keys(repo, keys)
    per_patient = max(1, n_obs // max(1, n_patients))
    made = 0
    for start in range(0, n_patients, max(1, batch // per_patient)):
        docs, keys = [], {}
        for i in range(start, min(start + max(1, batch // per_patient), n_patients)):
            for j in range(per_patient):
                if made >= n_obs:
                    break
                res = observation(f"p{i}", CODES[j % len(CODES)], rng)
                doc = repo.build_doc("Observation", f"o{made}", 1, _now(), res, "11")
                docs.append(doc)
                for k in keys_for("Observation", doc["ix"], codes["Observation"]):
                    keys.setdefault(k, []).append(doc["_id"])
                made += 1
        if docs:
            repo.current("Observation").insert_many(docs, ordered=False)
            _write_keys(repo, keys)
        if made and made % 100000 < batch:
            print(f"  seeded {made} observations ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"seeded {n_patients} patients and {made} observations in {time.perf_counter() - t0:.0f} s",
          file=sys.stderr)
    return people


def _now() -> Any:
    from app.core.timeutil import utcnow

    return utcnow()


def _write_keys(repo: Any, keys: dict[str, list[str]]) -> None:
    """Posting lists of a batch; each key is new (one patient's records are seeded in one batch), so plain
    inserts do (FerretDB v1 can stall on large bulks of updates)."""
    from pymongo.errors import BulkWriteError

    docs = [{"_id": k, "ids": v} for k, v in keys.items()]
    for i in range(0, len(docs), 1000):
        chunk = docs[i:i + 1000]
        try:
            repo.keys.col.insert_many(chunk, ordered=False)
        except BulkWriteError as err:  # a key from an earlier batch (synthetic ID numbers can repeat)
            for e in err.details["writeErrors"]:
                doc = chunk[e["index"]]
                repo.keys.col.update_one({"_id": doc["_id"]}, {"$addToSet": {"ids": {"$each": doc["ids"]}}})


# -- load generation -------------------------------------------------------------------------------------

def _op_request(s: requests.Session, base: str, op: str, rng: random.Random, people: list[dict[str, Any]]) -> int:
    p = people[rng.randrange(len(people))]
    if op == "read":
        return s.get(f"{base}/Patient/{p['id']}").status_code
    if op == "search-identifier":
        return s.get(f"{base}/Patient", params={"identifier": f"urn:ehc:mrn:bench|{p['mrn']}"}).status_code
    if op == "search-observations":
        code = CODES[rng.randrange(3)]
        return s.get(f"{base}/Observation", params={"patient": p["id"], "code": f"http://loinc.org|{code}"}).status_code
    if op == "create":
        res = observation(p["id"], CODES[rng.randrange(len(CODES))], rng)
        return s.post(f"{base}/Observation", data=json.dumps(res), headers=FJ).status_code
    if op == "update":
        res = s.get(f"{base}/Patient/{p['id']}").json()
        res["active"] = not res.get("active", True)
        return s.put(f"{base}/Patient/{p['id']}", data=json.dumps(res), headers=FJ).status_code
    raise ValueError(op)


MIX = ["read"] * 4 + ["search-identifier", "search-observations", "search-identifier"] + ["create"] * 2 + ["update"]


def _client(args: tuple[str, str, list[dict[str, Any]], float, int, Any]) -> list[tuple[str, float, int]]:
    base, op, people, seconds, seed_, barrier = args
    rng = random.Random(seed_)
    s = requests.Session()
    out = []
    barrier.wait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        this = MIX[rng.randrange(len(MIX))] if op == "mixed" else op
        t = time.perf_counter()
        status = _op_request(s, base, this, rng, people)
        out.append((this, time.perf_counter() - t, status))
    return out


def http_load(base: str, op: str, people: list[dict[str, Any]], clients: int, seconds: float) -> dict[str, Any]:
    with mp.Manager() as m:
        barrier = m.Barrier(clients)
        with mp.Pool(clients) as pool:
            results = pool.map(_client, [(base, op, people, seconds, i, barrier) for i in range(clients)])
    flat = [r for part in results for r in part]
    lat = sorted(d for _, d, _ in flat)
    errors = sum(1 for _, _, st in flat if st >= 400)
    return {"n": len(flat), "rps": len(flat) / seconds, "p50": _pct(lat, 50), "p95": _pct(lat, 95), "errors": errors}


def _pct(values: list[float], p: int) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * p / 100))] * 1000


# -- raw pymongo ------------------------------------------------------------------------------------------

def _raw_client(args: tuple[str, str, str, list[dict[str, Any]], float, int, Any]) -> list[float]:
    uri, dbname, op, people, seconds, seed_, barrier = args
    db: Any = MongoClient(uri)[dbname]
    rng = random.Random(seed_)
    lat = []
    barrier.wait()
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        p = people[rng.randrange(len(people))]
        t = time.perf_counter()
        if op == "read":
            db.Patient.find_one({"_id": p["id"]})
        elif op == "search-identifier":
            k = db["_keys"].find_one({"_id": f"Patient|i|urn:ehc:mrn:bench|{p['mrn']}"})
            for rid in (k or {}).get("ids", []):
                db.Patient.find_one({"_id": rid})
        elif op == "search-observations":
            k = db["_keys"].find_one({"_id": f"Observation|r|Patient/{p['id']}"})
            for rid in (k or {}).get("ids", []):
                db.Observation.find_one({"_id": rid})
        elif op == "create":
            n += 1
            db.Observation.insert_one({"_id": f"raw-{seed_}-{n}", "res": observation(p["id"], "2339-0", rng)})
        lat.append(time.perf_counter() - t)
    return lat


def raw_load(uri: str, dbname: str, op: str, people: list[dict[str, Any]], clients: int,
             seconds: float) -> dict[str, Any]:
    with mp.Manager() as m:
        barrier = m.Barrier(clients)
        with mp.Pool(clients) as pool:
            jobs = [(uri, dbname, op, people, seconds, 100 + i, barrier) for i in range(clients)]
            parts = pool.map(_raw_client, jobs)
    lat = sorted(x for part in parts for x in part)
    return {"n": len(lat), "rps": len(lat) / seconds, "p50": _pct(lat, 50), "p95": _pct(lat, 95)}


def worker_rss_mb(server: LiveServer) -> list[float]:
    out = []
    assert server.proc is not None
    for line in os.popen(f"pgrep -P {server.proc.pid}").read().split():
        try:
            status = Path(f"/proc/{line}/status").read_text()
        except FileNotFoundError:
            continue
        kb = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("VmRSS"))
        out.append(kb / 1024)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--observations", type=int, default=1_000_000)
    ap.add_argument("--seconds", type=float, default=10.0, help="per measured operation")
    ap.add_argument("--clients", type=int, default=4, help="load-generating processes")
    ap.add_argument("--out", default="docs/benchmarks/core.md")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ehc-bench-"))
    uri = os.environ.get("EHC_MONGODB_URI")
    embedded = None
    if not uri:
        embedded = EmbeddedDatabase(tmp / "db", free_port())
        embedded.start()
        uri = embedded.uri
    base_uri = uri.rsplit("/", 1)[0] + "/" if uri.count("/") > 2 else uri
    dbname = "ehc_bench"
    MongoClient(base_uri).drop_database(dbname)
    settings = Settings(mongodb_uri=base_uri + dbname, data_dir=tmp, auth_required=False)
    svc = build_services(settings)
    seeding = time.perf_counter()
    people = seed(svc, args.patients, args.observations)
    seeding = time.perf_counter() - seeding
    server = LiveServer(base_uri + dbname, tmp, workers=2).start()
    rows = []
    try:
        for op in ("read", "search-identifier", "search-observations", "create"):
            raw = raw_load(base_uri, dbname, op, people, args.clients, args.seconds)
            http = http_load(server.base, op, people, args.clients, args.seconds)
            rows.append((op, http, raw))
            print(f"{op:22s} server {http['rps']:7.0f}/s p50 {http['p50']:6.2f} ms p95 {http['p95']:6.2f} ms "
                  f"errors {http['errors']} | raw {raw['rps']:7.0f}/s p50 {raw['p50']:6.2f} ms | "
                  f"ratio {http['rps'] / raw['rps']:.0%}", flush=True)
        mixed = http_load(server.base, "mixed", people, args.clients, args.seconds)
        print(f"mixed CRUD (40/30/20/10) {mixed['rps']:.0f} req/s p50 {mixed['p50']:.2f} ms "
              f"p95 {mixed['p95']:.2f} ms errors {mixed['errors']}", flush=True)
        rss = worker_rss_mb(server)
        print(f"worker RSS MB: {', '.join(f'{r:.0f}' for r in rss)}")
    finally:
        server.stop()
        svc.handle.close()
        if embedded:
            embedded.stop(timeout=5)
    write_report(args, rows, mixed, rss, svc.handle.is_ferretdb, seeding)


def write_report(args: Any, rows: list[Any], mixed: dict[str, Any], rss: list[float], ferret: bool,
                 seeding: float) -> None:
    lines = [
        "## FHIR core (scripts/bench_core.py)",
        "",
        f"{args.patients:,} patients, {args.observations:,} observations; server: gunicorn 2 sync workers; "
        f"{args.clients} load processes on the same 2-core machine, {args.seconds:.0f} s per row; database: "
        f"{'FerretDB v1.24.2 (SQLite, patched _id index)' if ferret else 'MongoDB'} on 127.0.0.1. "
        "Raw = the same database work done directly with pymongo by the same number of processes.",
        "",
        "| operation | server req/s | p50 ms | p95 ms | raw pymongo ops/s | raw p50 ms | server/raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for op, http, raw in rows:
        lines.append(f"| {op} | {http['rps']:.0f} | {http['p50']:.2f} | {http['p95']:.2f} | {raw['rps']:.0f} | "
                     f"{raw['p50']:.2f} | {http['rps'] / raw['rps']:.0%} |")
    lines += ["", f"Mixed CRUD load (40% read, 30% search, 20% create, 10% update): **{mixed['rps']:.0f} req/s**, "
              f"p50 {mixed['p50']:.2f} ms, p95 {mixed['p95']:.2f} ms, {mixed['errors']} errors.", "",
              f"Worker resident memory after the run: {', '.join(f'{r:.0f} MB' for r in rss)}.", "",
              f"Seeding {args.patients:,} patients and {args.observations:,} observations through the repository's "
              f"document builder (the documents and posting lists only: no cards, claims or name lists; "
              f"`ehc seed` writes those) took {seeding:,.0f} s ({(args.patients + args.observations) / seeding:,.0f} "
              f"documents/s). Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; 1-minute load average at its end "
              f"{os.getloadavg()[0]:.1f}.", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
