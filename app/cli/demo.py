"""`ehc seed --demo`: a ready demo on this node.

- Organization/demo-hospital (演示医院);
- one resident, 张三, with a valid resident ID number, the hospital's record number DEMO-0001, a formal
  electronic health card and three lab Observations;
- a resident account (phone 13800138000, password demo-password) bound to that Patient, for the SMART login;
- an OAuth client of the hospital (client_credentials, scopes system/*.cruds) whose id and secret are printed.

Running it again adds nothing but a new client (a secret is shown only once).
"""

from __future__ import annotations

import json
import random
from datetime import date
from typing import Any

import click

ORG_ID = "demo-hospital"
PHONE = "13800138000"
PASSWORD = "demo-password"
SCOPES = "system/*.cruds"


def make_demo(svc: Any) -> dict[str, Any]:
    from app.auth.accounts import create_account, find_account
    from app.auth.bindings import bind
    from app.auth.plugin import auth_state
    from app.auth.registration import register_client
    from app.store.repository import WriteContext
    from app.synthetic import observation, resident_id

    settings = svc.settings
    ctx = WriteContext(province=settings.province, client_id="ehc-seed-demo", organization=ORG_ID)
    repo = svc.repo
    if not repo.exists("Organization", ORG_ID):
        repo.update("Organization", ORG_ID, {"resourceType": "Organization", "id": ORG_ID, "active": True,
                                             "name": "演示医院 Demo Hospital"}, context=ctx)
    number = resident_id("110101", date(1990, 3, 7), 5, True)
    patient = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number},
                       {"system": f"urn:ehc:mrn:{ORG_ID}", "value": "DEMO-0001"}],
        "name": [{"family": "张", "given": ["三"], "text": "张三"}],
        "gender": "male",
        "birthDate": "1990-03-07",
        "telecom": [{"system": "phone", "value": PHONE, "use": "mobile"}],
        "managingOrganization": {"reference": f"Organization/{ORG_ID}"},
        "active": True,
    }
    stored = repo.create("Patient", patient, ctx)  # a rerun finds the resident: no second Patient
    pid = stored.id
    observations = []
    if stored.vid == 1:
        rng = random.Random(7)
        for code in ("2339-0", "718-7", "8480-6"):
            observations.append(repo.create("Observation", observation(pid, code, rng), ctx).id)
    st = auth_state(svc)
    account = find_account(st.store, st.keys, PHONE)
    if account is None:
        account = create_account(st.store, st.keys, PHONE, PASSWORD)
        bind(svc, st.store, account, pid, "SELF")
    client = register_client(st.store, name="演示医院 HIS (demo)", scopes=SCOPES, province=settings.province,
                             organization=ORG_ID)
    root = (settings.base_url or "http://127.0.0.1:8080/fhir").removesuffix("/fhir")
    out = {"organization": f"Organization/{ORG_ID}", "patient": f"Patient/{pid}", "id_number": number,
           "observations": observations, "account": {"phone": PHONE, "password": PASSWORD},
           "client_id": client["client_id"], "client_secret": client.get("client_secret"), "scopes": SCOPES,
           "token_url": f"{root}/oauth/token"}
    click.echo(json.dumps(out, ensure_ascii=False, indent=2))
    click.echo("\n".join([
        f"ehc seed --demo: Organization/{ORG_ID}, Patient/{pid} (张三, {len(observations)} new observations), "
        f"resident account {PHONE} / {PASSWORD}, client {client['client_id']}. Get a token and read:",
        f"  TOKEN=$(curl -s -u '{client['client_id']}:{client.get('client_secret')}' -d grant_type=client_credentials"
        f" -d scope='{SCOPES}' {root}/oauth/token | python3 -c 'import json,sys; print(json.load(sys.stdin)"
        "[\"access_token\"])')",
        f"  curl -s -H \"Authorization: Bearer $TOKEN\" {root}/fhir/Patient/{pid}/\\$everything",
    ]), err=True)
    return out
