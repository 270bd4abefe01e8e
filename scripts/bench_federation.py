"""Benchmark a cross-province search against a local one (three nodes on loopback).

Three nodes (00 national, 11 Beijing, 31 Shanghai) as in-process apps served by threaded werkzeug servers on
127.0.0.1, each its own database on one database server (the embedded FerretDB, or EHC_MONGODB_URI). A
resident registered at both province nodes has OBS Observations at node 11 and OBS at node 31; the Shanghai
hospital has the resident's consent at node 11. Timed over real HTTP, rounds interleaved:

- local, by reference:  node 31, Observation?subject=Patient/<node 31 id>     (no federation involved)
- local, by ID number:  node 11, Observation?subject:Patient.identifier=<ID>  for a resident known at node 11
                        only (the national index is asked, and has nothing to forward)
- cross-province:       node 31, Observation?subject:Patient.identifier=<ID>  (node 31's records, plus node
                        11's forwarded through the national node under node 11's consent decision)

Writes docs/benchmarks/federation.md.

    python3 scripts/bench_federation.py [--requests 60] [--obs 10] [--output docs/benchmarks/federation.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import date
from pathlib import Path
from typing import Any

import requests
from click.testing import CliRunner
from werkzeug.serving import make_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import create_app  # noqa: E402
from app.auth.plugin import auth_state  # noqa: E402
from app.auth.registration import register_client  # noqa: E402
from app.cli import main as ehc  # noqa: E402
from app.config import Settings  # noqa: E402
from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402
from app.synthetic import resident_id  # noqa: E402

ID = "urn:oid:2.16.156.10011.1.3"
FJ = "application/fhir+json"


class Node:
    def __init__(self, province: str, uri: str, data: Path) -> None:
        self.province, self.uri, self.data = province, uri, data
        self.app = create_app(Settings(mongodb_uri=uri, province=province, data_dir=data, auth_required=True))
        self.svc = self.app.extensions["ehc"]
        auth_state(self.svc).token_limiter.limit.burst = 10_000
        self.server = make_server("127.0.0.1", free_port(), self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.base = self.url + "/fhir"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ehc(self, *args: str) -> None:
        env = {"EHC_PROVINCE": self.province, "EHC_MONGODB_URI": self.uri, "EHC_DATA_DIR": str(self.data)}
        out = CliRunner().invoke(ehc, list(args), env=env)
        assert out.exit_code == 0, out.output

    def token(self, scopes: str, org: str) -> str:
        c = register_client(auth_state(self.svc).store, name="bench", scopes=scopes, province=self.province,
                            organization=org)
        r = requests.post(f"{self.url}/oauth/token", data={"grant_type": "client_credentials", "scope": scopes},
                          auth=(c["client_id"], c["client_secret"]), timeout=10)
        return str(r.json()["access_token"])


def post(node: Node, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{node.base}/{body['resourceType']}", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {token}", "Content-Type": FJ})
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--obs", type=int, default=10)
    ap.add_argument("--output", type=Path, default=Path("docs/benchmarks/federation.md"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    db = None
    server = os.environ.get("EHC_MONGODB_URI", "").rsplit("/", 1)[0]
    if not server:
        db = EmbeddedDatabase(tmp / "db", free_port())
        db.start()
        server = db.uri.rstrip("/")
    stamp = int(time.time())
    nodes = {p: Node(p, f"{server}/benchfed_{stamp}_{p}", tmp / p) for p in ("00", "11", "31")}
    for p in ("11", "31"):
        nodes["00"].ehc("nodes", "add", "--province", p, "--url", nodes[p].base)
        nodes[p].ehc("nodes", "add", "--province", "00", "--url", nodes["00"].base)
    scopes = "system/Patient.cruds system/Observation.cruds system/Consent.cruds system/Organization.cruds"
    t11, t31 = nodes["11"].token(scopes, "org-bj"), nodes["31"].token(scopes, "org-sh")
    both = resident_id("110101", date(1980, 3, 3), stamp % 400, True)
    only11 = resident_id("110101", date(1981, 4, 4), stamp % 400 + 1, True)

    def person(n: str) -> dict[str, Any]:
        return {"resourceType": "Patient", "identifier": [{"system": ID, "value": n}],
                "name": [{"family": "钱", "given": ["程"]}], "gender": "male",
                "birthDate": f"{n[6:10]}-{n[10:12]}-{n[12:14]}"}

    def obs(pid: str) -> dict[str, Any]:
        return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{pid}"},
                "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                "valueQuantity": {"value": 5.0, "unit": "mmol/L"}}

    p11 = post(nodes["11"], t11, person(both))
    p31 = post(nodes["31"], t31, person(both))
    q11 = post(nodes["11"], t11, person(only11))
    for _ in range(args.obs):
        post(nodes["11"], t11, obs(p11["id"]))
        post(nodes["31"], t31, obs(p31["id"]))
        post(nodes["11"], t11, obs(q11["id"]))
    requests.put(f"{nodes['11'].base}/Organization/org-sh", timeout=10,
                 headers={"Authorization": f"Bearer {t11}", "Content-Type": FJ},
                 json={"resourceType": "Organization", "id": "org-sh", "name": "上海"})
    post(nodes["11"], t11, {
        "resourceType": "Consent", "status": "active", "patient": {"reference": f"Patient/{p11['id']}"},
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]},
        "provision": {"type": "permit", "actor": [{"role": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
            "reference": {"reference": "Organization/org-sh"}}],
                      "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                              "code": "access"}]}]}})
    time.sleep(3)  # index entries delivered
    cases = {
        "local, by reference (node 31)": (nodes["31"], t31, {"subject": f"Patient/{p31['id']}"}, args.obs),
        "local, by ID number (node 11, resident known at node 11 only)":
            (nodes["11"], t11, {"subject:Patient.identifier": f"{ID}|{only11}"}, args.obs),
        "cross-province (node 31 + node 11 through the national node)":
            (nodes["31"], t31, {"subject:Patient.identifier": f"{ID}|{both}"}, 2 * args.obs),
    }
    times: dict[str, list[float]] = {k: [] for k in cases}
    for name, (node, token, params, expected) in cases.items():  # warm-up, and check what each returns
        r = requests.get(f"{node.base}/Observation", params={**params, "_count": "50"}, timeout=30,
                         headers={"Authorization": f"Bearer {token}", "Accept": FJ})
        got = [e for e in r.json().get("entry", []) if e["search"]["mode"] == "match"]
        assert len(got) == expected, (name, len(got), r.text[:500])
    for _ in range(args.requests):
        for name, (node, token, params, _) in cases.items():
            t0 = time.perf_counter()
            r = requests.get(f"{node.base}/Observation", params={**params, "_count": "50"}, timeout=30,
                             headers={"Authorization": f"Bearer {token}", "Accept": FJ})
            times[name].append((time.perf_counter() - t0) * 1000)
            assert r.status_code == 200
    base = statistics.median(times["local, by reference (node 31)"])
    rows = []
    for name, values in times.items():
        values.sort()
        p50, p95 = statistics.median(values), values[int(0.95 * (len(values) - 1))]
        rows.append(f"| {name} | {cases[name][3]} | {p50:.1f} | {p95:.1f} | {p50 - base:+.1f} |")
    text = f"""# Federation: a cross-province search against a local one

Measured by `scripts/bench_federation.py` on {dt.date.today().isoformat()} ({platform.machine()}, {os.cpu_count()} cores
shared with other work, Python {platform.python_version()}): three nodes in one process, each served by a threaded
werkzeug server on 127.0.0.1 with its own FerretDB database on one FerretDB v1.24.2 (SQLite) server; one client,
{args.requests} requests per case, cases interleaved, `_count=50`, {args.obs} Observations per node.

| search (GET Observation) | entries | p50 ms | p95 ms | p50 over local |
|---|---:|---:|---:|---:|
{chr(10).join(rows)}

What the cross-province search adds: one request to the national node (a node token, cached; a requester
assertion signed ES384 and verified, its jti recorded), a national-index lookup, the forwarded request to
node 11 (the national node's envelope signed and verified, the origin's assertion verified again, two jti
records), node 11's own search under its disclosure gate (consent lookup per row), node 11's audit event,
and node 31's extra audit event. A search by ID number pays the national round trip even when the resident
lives only at the node asked (second row). Tokens are cached for 270 s, so no token request is in these
figures. The machine is shared: absolute figures vary by 2x between runs; the differences are what to read.
"""
    args.output.write_text(text, encoding="utf-8")
    print(text)
    for n in nodes.values():
        n.server.shutdown()
    if db is not None:
        db.stop(timeout=2)


if __name__ == "__main__":
    main()
