#!/usr/bin/env python3
"""Database round trips per request of the load scenario's CRUD iteration, with the commands of each, written to
docs/benchmarks/round-trips.md (the same counting as tests/integration/test_round_trips.py).

Usage: python3 scripts/bench_round_trips.py [--rounds 5] [--out docs/benchmarks/round-trips.md]
Database: EHC_MONGODB_URI (a throwaway database is created in it and dropped), else an embedded FerretDB on a
free port in a temporary directory. Auth and audit are on; audit writes and background threads are not counted.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
import tempfile
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402
from tests.integration.test_round_trips import CEILINGS  # noqa: E402
from tests.round_trips import OPERATIONS, counter, measure_crud, steady  # noqa: E402

NOTES = "<!-- notes -->"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/benchmarks/round-trips.md")
    args = ap.parse_args()
    counter()
    from pymongo import MongoClient

    from app import create_app
    from app.auth.plugin import auth_state
    from app.auth.registration import register_client
    from app.config import Settings

    tmp = Path(tempfile.mkdtemp(prefix="ehc-rt-"))
    embedded = None
    base = os.environ.get("EHC_MONGODB_URI")
    if base:
        base = base.rsplit("/", 1)[0] if base.count("/") > 2 else base.rstrip("/")
        backend = "EHC_MONGODB_URI"
    else:
        embedded = EmbeddedDatabase(tmp / "db", free_port())
        embedded.start()
        base = embedded.uri.rstrip("/")
        backend = "embedded FerretDB v1.24 on SQLite"
    name = f"rt_{uuid.uuid4().hex[:8]}"
    app = create_app(Settings(mongodb_uri=f"{base}/{name}", province="11", data_dir=tmp / "data",
                              auth_required=True))
    try:
        svc = app.extensions["ehc"]
        client = app.test_client()
        reg = register_client(auth_state(svc).store, name="round trips", scopes="system/*.cruds", province="11")
        basic = base64.b64encode(f"{reg['client_id']}:{reg['client_secret']}".encode()).decode()
        tok = client.post("/oauth/token", data={"grant_type": "client_credentials", "scope": "system/*.cruds"},
                          headers={"Authorization": f"Basic {basic}"})
        headers = {"Authorization": f"Bearer {tok.get_json()['access_token']}", "Accept": "application/fhir+json"}
        seen = measure_crud(client, headers, name, rounds=args.rounds)
    finally:
        app.extensions["ehc"].handle.close()
        MongoClient(base + "/").drop_database(name)
        if embedded:
            embedded.stop(timeout=2)

    lines = ["# Database round trips per request", "",
             f"`python3 scripts/bench_round_trips.py` ({backend}): the load scenario's CRUD iteration through the app "
             f"in process, auth (a `system/*.cruds` client-credentials token) and audit on, {args.rounds} "
             "iterations after one warm-up. Counted with pymongo command monitoring on the thread that serves "
             "the request, on both the store's client and the auth store's; the audit collections "
             "(`_audit_*`, `AuditEvent*`, the sealer's lease and AuditEvent posting lists) are left out. "
             "Steady state = the cheapest of the runs. Enforced by `tests/integration/test_round_trips.py`.",
             "", "| request | steady | runs | ceiling tested | budget |", "|---|---:|---|---:|---:|"]
    for op in OPERATIONS:
        ceiling, budget = CEILINGS[op]
        runs = ", ".join(str(len(r)) for r in seen[op])
        lines.append(f"| {op} | {len(steady(seen[op]))} | {runs} | {ceiling} | {budget if budget else '-'} |")
    lines += ["", "Commands of the steady-state run of each request, in order:", ""]
    for op in OPERATIONS:
        cheapest = steady(seen[op])
        lines.append(f"- **{op}** ({len(cheapest)}): " + "; ".join(f"`{c}`" for c in cheapest))
    lines += ["", "Command totals per request type over all runs:", ""]
    for op in OPERATIONS:
        total = Counter(str(c) for run in seen[op] for c in run)
        lines.append(f"- {op}: " + ", ".join(f"`{k}` x{v}" for k, v in total.most_common()))
    # Hand-written notes below the marker (what was reduced, what is left) survive a re-run.
    notes = ""
    if args.out.exists() and NOTES in args.out.read_text(encoding="utf-8"):
        notes = NOTES + args.out.read_text(encoding="utf-8").split(NOTES, 1)[1]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n" + ("\n" + notes if notes else ""), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
