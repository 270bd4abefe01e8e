"""Benchmark the cost of access control and the Backend Services token endpoint.

1. p50 latency of a read (GET Patient/{id}) and a search (GET Observation?patient=...) with enforcement
   off (auth_required=False) and on (a system/*.rs bearer token; same province), in the same run, on the
   same database, rounds interleaved. Target: at most 25% added.
2. client_credentials grants per second with private_key_jwt (RS384 assertions signed beforehand; the
   server verifies each, records its jti, stores the token). Target: at least 300/s.

Requests go through the WSGI app in-process (Flask test client), so the figures are the server's own
work, not a network stack's; grants are measured with one requester and with --threads concurrent ones
(the database round trips overlap). Writes docs/benchmarks/auth.md.

    python3 scripts/bench_auth.py [--requests 400] [--grants 1500] [--output docs/benchmarks/auth.md]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from joserfc import jwt  # noqa: E402
from joserfc.jwk import RSAKey  # noqa: E402

from app import create_app  # noqa: E402
from app.auth.plugin import auth_state  # noqa: E402
from app.auth.registration import register_client  # noqa: E402
from app.config import Settings  # noqa: E402
from app.store.embedded import EmbeddedDatabase, free_port  # noqa: E402
from app.store.repository import WriteContext  # noqa: E402

READ_TARGET = 0.25
GRANT_TARGET = 300.0


def p50(samples: list[float]) -> float:
    return statistics.median(samples) * 1000.0


def timed(client: Any, url: str, headers: dict[str, str]) -> float:
    t = time.perf_counter()
    r = client.get(url, headers=headers)
    elapsed = time.perf_counter() - t
    assert r.status_code == 200, (url, r.status_code, r.get_data(as_text=True)[:300])
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400, help="reads and searches per mode")
    ap.add_argument("--grants", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=4, help="concurrent token requests (the second figure)")
    ap.add_argument("--output", default=str(ROOT / "docs" / "benchmarks" / "auth.md"))
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ehc-bench-auth-"))
    uri = os.environ.get("EHC_MONGODB_URI")
    db = None
    if not uri:
        db = EmbeddedDatabase(tmp / "db", free_port())
        db.start()
        uri = db.uri
    uri = uri.rstrip("/") + f"/bench_auth_{uuid.uuid4().hex[:6]}" if uri.count("/") <= 3 else uri
    base = Settings(mongodb_uri=uri, province="11", data_dir=tmp / "data", auth_required=False)
    try:
        open_app = create_app(base)
        auth_app = create_app(replace(base, auth_required=True))
        svc = auth_app.extensions["ehc"]
        st = auth_state(svc)
        st.token_limiter.limit.rate = st.token_limiter.limit.burst = 10**9  # measure, not limit
        ctx = WriteContext(province="11")
        pid = svc.repo.create("Patient", {"resourceType": "Patient", "name": [{"family": "张", "given": ["三"]}],
                                          "gender": "male", "birthDate": "1980-01-01"}, ctx).id
        for i in range(20):
            svc.repo.create("Observation", {"resourceType": "Observation", "status": "final",
                                            "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                                            "subject": {"reference": f"Patient/{pid}"},
                                            "valueQuantity": {"value": 5 + i / 10, "unit": "mmol/L"}}, ctx)
        key = RSAKey.generate_key(2048, {"alg": "RS384"})
        key.ensure_kid()
        client = register_client(st.store, name="bench", scopes="system/*.rs", province="11",
                                 jwks={"keys": [key.as_dict(private=False)]})
        token_url = "http://localhost/oauth/token"

        def form() -> dict[str, str]:
            now = int(time.time())
            claims = {"iss": client["client_id"], "sub": client["client_id"], "aud": token_url, "iat": now,
                      "exp": now + 280, "jti": uuid.uuid4().hex}
            return {"grant_type": "client_credentials", "scope": "system/*.rs",
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": jwt.encode({"alg": "RS384", "kid": key.kid}, claims, key,
                                                   algorithms=["RS384"])}

        web_open, web_auth = open_app.test_client(), auth_app.test_client()
        token = (web_auth.post("/oauth/token", data=form()).json or {})["access_token"]
        h_open = {"Accept": "application/fhir+json"}
        h_auth = {**h_open, "Authorization": f"Bearer {token}"}
        urls = {"read": f"/fhir/Patient/{pid}", "search": f"/fhir/Observation?patient=Patient/{pid}&_count=10"}
        samples: dict[tuple[str, str], list[float]] = {(k, m): [] for k in urls for m in ("off", "on")}
        for _ in range(20):  # warm up
            for url in urls.values():
                timed(web_open, url, h_open)
                timed(web_auth, url, h_auth)
        for _ in range(args.requests):
            for kind, url in urls.items():
                samples[(kind, "off")].append(timed(web_open, url, h_open))
                samples[(kind, "on")].append(timed(web_auth, url, h_auth))

        def grant_rate(threads: int) -> float:
            forms = [form() for _ in range(args.grants)]  # signing is the client's cost, done beforehand
            chunks = [forms[i::threads] for i in range(threads)]

            def run(chunk: list[dict[str, str]]) -> None:
                web = auth_app.test_client()
                for f in chunk:
                    r = web.post("/oauth/token", data=f)
                    assert r.status_code == 200, r.get_data(as_text=True)

            t = time.perf_counter()
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, chunks))
            return len(forms) / (time.perf_counter() - t)

        grant_rate(1)  # warm up
        rates = {n: grant_rate(n) for n in (1, args.threads)}
        grants_per_s = max(rates.values())
    finally:
        if db is not None:
            db.stop()

    rows = []
    ok = True
    for kind in urls:
        off, on = p50(samples[(kind, "off")]), p50(samples[(kind, "on")])
        added = (on - off) / off
        ok &= added <= READ_TARGET
        rows.append(f"| {kind} | {off:.2f} | {on:.2f} | {added * 100:+.1f}% | ≤ {READ_TARGET * 100:.0f}% |")
    ok &= grants_per_s >= GRANT_TARGET
    backend = "FerretDB (embedded, SQLite)" if db is not None else "EHC_MONGODB_URI"
    text = "\n".join([
        "# Access control: cost and token throughput",
        "",
        f"Measured {dt.date.today().isoformat()} with `python3 scripts/bench_auth.py --requests {args.requests} "
        f"--grants {args.grants} --threads {args.threads}` on {platform.machine()} / "
        f"Python {platform.python_version()}, database: {backend}. In-process WSGI requests (Flask test client).",
        "",
        "## p50 latency with enforcement off and on (same run, interleaved)",
        "",
        "On: a `system/*.rs` bearer token of the node's own province (token looked up by hash, scope check,",
        "province check per result). Off: `auth_required=False`. The token is looked up by the hash of its",
        "value through a 2-second in-process cache (revocation in the same process clears it at once).",
        "",
        "| request | off (ms) | on (ms) | added | target |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Backend Services grants",
        "",
        "`client_credentials` with a `private_key_jwt` RS384 assertion (verified, jti recorded, token stored):",
        "",
        f"- one thread: **{rates[1]:.0f} grants/s**",
        f"- {args.threads} concurrent requesters: **{rates[args.threads]:.0f} grants/s**",
        f"- target ≥ {GRANT_TARGET:.0f}/s (per process; gunicorn workers multiply it).",
        "",
        f"All targets met: {'yes' if ok else 'NO'}.",
        "",
    ])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
