#!/usr/bin/env python3
"""Where the database's CPU goes: the embedded FerretDB's own CPU time per operation, for the operations a read
request and its audit event cost (the request's `find` by `_id`, the pending audit record, and the sealer's
AuditEvent, chain entry, pending delete and posting-list update). CPU time of the database process, so a busy
machine bends it less than wall time. Writes docs/benchmarks/db-cost.md.

    python3 scripts/bench_db_cost.py [--ops 2000] [--batch 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import DeleteOne, MongoClient, UpdateOne

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.audit.pending import batches as batches_of  # noqa: E402
from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def shapes() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """A stored Patient, a pending audit record and a stored AuditEvent, shaped as the server stores them."""
    patient = json.loads((ROOT / "tests" / "samples" / "patient-zhang.json").read_text(encoding="utf-8"))
    ref = f"Patient/{uuid.uuid4()}"
    stored_patient = {"res": patient, "vid": 3, "prov": "11", "ts": datetime.now(UTC),
                      "ix": {"name": ["zhang san"], "gender": ["male"], "birthdate": ["1980-01-01"],
                             "identifier": ["urn:oid:2.16.156.10011.1.3|#" + "a" * 64]}, "so": {"_lastUpdated": 1}}
    pending = {"kind": "event", "interaction": "read", "resource_type": "Patient", "resource_ids": [ref[8:]],
               "status": 200, "principal": {"client_id": "c" * 24, "province": "11"}, "at": datetime.now(UTC)}
    event = {"res": {"resourceType": "AuditEvent",
                     "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
                     "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
                     "action": "R", "recorded": "2026-11-30T00:00:00.000Z", "outcome": "0",
                     "agent": [{"who": {"identifier": {"system": "urn:ehc:client", "value": "c" * 24}},
                                "requestor": True},
                               {"who": {"identifier": {"system": "urn:ehc:node", "value": "11"}}, "requestor": False}],
                     "source": {"observer": {"display": "province node 11"}},
                     "entity": [{"what": {"reference": ref}}]},
             "vid": 1, "prov": "11", "ts": datetime.now(UTC),
             "ix": {"patient": [ref], "entity": [ref], "date": ["2026-11-30"], "subtype": ["read"]},
             "so": {"date": "2026-11-30T00:00:00.000Z"}}
    return stored_patient, pending, event


Row = tuple[str, float, float]  # operation, database CPU ms, wall ms (per document)


def measure_build(binary: Path | None, n: int, b: int, env: dict[str, str] | None = None) -> list[Row]:
    """Every operation n times against a fresh database served by this FerretDB build (None: ours), started
    with `env` added to the environment (e.g. GOGC=100)."""
    tmp = Path(tempfile.mkdtemp(prefix="ehc-dbcost-"))
    db_server = EmbeddedDatabase(tmp / "db", free_port(), binary=binary)
    saved = dict(os.environ)
    os.environ.update(env or {})
    try:
        db_server.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    pid = db_server.running_pid()
    assert pid is not None
    patient, pending, event = shapes()
    ids = [str(uuid.uuid4()) for _ in range(n)]
    rows: list[Row] = []
    try:
        client: MongoClient[dict[str, Any]]
        with MongoClient(db_server.uri) as client:
            db: Any = client["cost"]

            def measure(what: str, run: Callable[[], object]) -> None:
                started, cpu = time.perf_counter(), process_cpu(pid)
                run()
                rows.append((what, 1000 * (process_cpu(pid) - cpu) / n, 1000 * (time.perf_counter() - started) / n))

            batches = [ids[i:i + b] for i in range(0, n, b)]
            db.Patient.insert_many([dict(patient, _id=i) for i in ids])
            db.AuditEvent.insert_one({"_id": "warm-up"})
            measure("request: `find` Patient by `_id`",
                    lambda: [db.Patient.find_one({"_id": i}) for i in ids])
            # pending records travel in batches (app.audit.pending): one document carries b of them
            measure(f"request: pending audit records, `insert` of one batch of {b} (group commit)",
                    lambda: [db["_audit_pending"].insert_many(batches_of([dict(pending, _id=i) for i in c], f"b{j}"))
                             for j, c in enumerate(batches)])
            measure("sealer: read the pending window (`find().limit(1)`: one batch)",
                    lambda: [list(db["_audit_pending"].find({}).limit(1)) for _ in batches])
            measure(f"sealer: AuditEvent, `insert` of {b}",
                    lambda: [db.AuditEvent.insert_many([dict(event, _id=i) for i in c]) for c in batches])
            measure(f"sealer: chain entry, `insert` of {b}",
                    lambda: [db["_audit_chain"].insert_many([{"_id": f"{k:012d}", "seq": k, "ev": i, "d": "ab" * 32,
                                                           "h": "cd" * 32, "done": [i], "at": datetime.now(UTC)}
                                                          for k, i in enumerate(c, start=j * b)])
                             for j, c in enumerate(batches)])
            measure(f"sealer: posting list, `$addToSet` of {b} ids to one key",
                    lambda: [db["_keys"].bulk_write([UpdateOne({"_id": f"AuditEvent|r|Patient/{c[0]}"},
                                                            {"$addToSet": {"ids": {"$each": c}}}, upsert=True)])
                             for c in batches])
            measure(f"sealer: pending records, `delete` of their batch of {b} by `_id`",
                    lambda: [db["_audit_pending"].bulk_write([DeleteOne({"_id": f"b{j}.0"})])
                             for j in range(len(batches))])
    finally:
        db_server.stop(timeout=5)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ops", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8, help="documents per batched insert or delete (group commit)")
    ap.add_argument("--compare", type=Path, help="another FerretDB binary to measure beside ours")
    ap.add_argument("--compare-env", action="append", default=[], metavar="NAME=VALUE",
                    help="environment of the compared database (with or without --compare), e.g. GOGC=100")
    ap.add_argument("--compare-label", default="the other build")
    ap.add_argument("--rounds", type=int, default=3, help="with --compare: alternating rounds per build")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "db-cost.md")
    args = ap.parse_args()
    n, b = args.ops, args.batch
    builds: list[tuple[str, Path | None, dict[str, str]]] = [("this build", None, {})]
    if args.compare or args.compare_env:
        builds.append((args.compare_label, args.compare, dict(e.split("=", 1) for e in args.compare_env)))
    runs: dict[str, list[list[Row]]] = {label: [] for label, _, _ in builds}
    for _ in range(args.rounds if len(builds) > 1 else 1):
        for label, binary, env in builds:
            runs[label].append(measure_build(binary, n, b, env))
    table = {label: [(rs[0][i][0], statistics.median(r[i][1] for r in rs), statistics.median(r[i][2] for r in rs))
                     for i in range(len(rs[0]))] for label, rs in runs.items()}
    rows = table["this build"]
    other = table.get(args.compare_label)
    total = sum(cpu for _, cpu, _ in rows)
    head = "| operation | database CPU ms | wall ms |" + (f" {args.compare_label}: CPU ms |" if other else "")
    lines = ["# Database CPU per operation", "",
             f"`python3 scripts/bench_db_cost.py --ops {n} --batch {b}"
             + (" --compare ..." if args.compare else "")
             + "".join(f" --compare-env {e}" for e in args.compare_env)
             + (f" --rounds {args.rounds}" if other else "")
             + f"` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC: "
             f"{platform.node()}, {os.cpu_count()} CPUs. The embedded FerretDB v1.24 (SQLite), fresh; {n:,} of each "
             "operation; CPU time of the database process per document (user + system), and wall time per "
             "document. Documents shaped as the server stores them (a Patient of about 1 KB with its index "
             "values; a pending audit record; an AuditEvent)."
             + (f" Beside it, {args.compare_label}, measured alternately with this build, {args.rounds} rounds "
                "each; medians of the rounds." if other else ""), "",
             head, "|---|---:|---:|" + ("---:|" if other else ""),
             *[f"| {what} | {cpu:.3f} | {wall:.3f} |" + (f" {other[i][1]:.3f} |" if other else "")
               for i, (what, cpu, wall) in enumerate(rows)],
             f"| **a read request with its audit event** (the sum) | **{total:.3f}** | |"
             + (f" **{sum(c for _, c, _ in other):.3f}** |" if other else ""), "",
             f"The request's own `find` is {rows[0][1] / total:.0%} of that: FerretDB v1 decodes the stored JSON "
             "value by value on every read. Of the audit path, the AuditEvent insert costs most. Pending records "
             "travel in batches (app.audit.pending: one document per group-commit batch or spool shipment), so "
             "their insert, the sealer's read and its delete are paid once per batch, not once per record."]
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
