"""`ehc seed` (the bulk path of scripts/bench_scale.py) writes exactly what the API writes, and the server
serves bulk-seeded residents like registered ones: identifier search, Observation?patient&code, $ihe-pix,
$match, QR codes, card status; the audit trail stays intact; seeding twice adds nobody."""

from __future__ import annotations

import json
import random
import uuid
from datetime import datetime
from typing import Any

import pytest

from app.cli.imports import attach_index
from app.cli.seed import BATCH, LOINC, seed
from app.synthetic import observation, patient
from tests.sealing import seal_everything

FJ = "application/fhir+json"
ID_SYS = "urn:oid:2.16.156.10011.1.3"
MRN_SYS = "urn:ehc:mrn:bench"
EHC_SYS = "urn:oid:2.16.156.10011.1.19"
SEED = 7  # app.cli.seed.seed's default seed_value


def post(client, path: str, body: dict[str, Any]):
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)


def synthetic(start: int, n: int, per: int) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """The residents and observations `seed(..., n, per, start)` generates (the same random sequence: the
    residents of a batch first, then their observations; n within one batch, nobody skipped); the observations'
    subject is a placeholder."""
    assert n <= BATCH
    rng = random.Random(SEED + start)
    residents = [patient(i, rng)[0] for i in range(start, start + n)]
    return [(res, [observation("PID", rng.choice(LOINC), rng) for _ in range(per)]) for res in residents]


def pid_by_mrn(client, i: int) -> str:
    r = client.get(f"/fhir/Patient?identifier={MRN_SYS}|M{i:08d}")
    assert r.status_code == 200, r.json
    ids = [e["resource"]["id"] for e in r.json.get("entry", [])]
    assert len(ids) == 1, ids
    return ids[0]


# -- the stored footprint of a resident, compared across the two paths ------------------------------------

def _mask(node: Any, names: dict[str, str]) -> Any:
    """Ids replaced by stable names, times and ciphertexts (random nonce) by placeholders."""
    if isinstance(node, dict):
        return {k: _mask(v, names) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask(x, names) for x in node]
    if isinstance(node, datetime):
        return "<time>"
    if isinstance(node, str):
        if node.startswith("enc:"):
            return "enc:<ciphertext>"
        for real, name in names.items():
            node = node.replace(real, name)
        return node
    return node


def footprint(db, pid: str) -> dict[str, Any]:
    """Everything stored about one resident and their observations (small test databases: scans are fine)."""
    obs = sorted((d for d in db["Observation"].find({}) if d["res"]["subject"]["reference"] == f"Patient/{pid}"),
                 key=lambda d: (d["res"]["code"]["coding"][0]["code"], d["res"]["effectiveDateTime"]))
    names = {pid: "<patient>"} | {d["_id"]: f"<obs{n}>" for n, d in enumerate(obs)}
    ids = list(names)
    doc = db["Patient"].find_one({"_id": pid})
    doc["res"]["meta"]["lastUpdated"] = "<time>"
    for o in obs:
        o["res"]["meta"]["lastUpdated"] = "<time>"
    keys = sorted((_mask(d["_id"], names), sorted(_mask(x, names) for x in d["ids"] if x in ids))
                  for d in db["_keys"].find({}) if set(d["ids"]) & set(ids))
    return {
        "patient": _mask(doc, names),
        "observations": [_mask(o, names) for o in obs],
        "claims": sorted(d["_id"] for d in db["mpi_claims"].find({}) if d["p"] == pid),
        "names": sorted(d["_id"] for d in db["mpi_names"].find({}) if pid in d["ids"]),
        "cards": [_mask(d, names) for d in db["ehc_cards"].find({}) if d["patient"] == pid],
        "keys": keys,
    }


@pytest.fixture(scope="module")
def seeded_db(mongo_server, settings):
    """Services on a database of their own (the same keys as the app's), filled by the bulk path."""
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_seed_" + uuid.uuid4().hex[:8]
    svc = build_services(settings.with_overrides(mongodb_uri=uri))
    hooks = attach_index(svc)
    out = seed(svc, hooks, svc.extensions["ehc"], 4, 3, start=900, progress=False)
    assert out == {"patients": 4, "skipped": 0, "observations": 12}
    yield svc
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


def test_seeded_documents_are_exactly_what_the_api_writes(client, services, seeded_db):
    """The same synthetic residents written once by the API and once by the bulk path, with the same keys:
    every stored document (Patient, Observations, claims, name postings, card, posting lists) is the same but
    for ids, times and ciphertexts; the ID and phone numbers are encrypted in both."""
    for n, (res, observations) in enumerate(synthetic(900, 4, 3)):
        r = post(client, "Patient", res)
        assert r.status_code == 201, r.json
        api_pid = r.json["id"]
        for o in observations:
            o["subject"]["reference"] = f"Patient/{api_pid}"
            assert post(client, "Observation", o).status_code == 201
        api = footprint(services.handle.db, api_pid)
        bulk = footprint(seeded_db.handle.db, seeded_db.extensions["mpi"].find(MRN_SYS, f"M{900 + n:08d}")["_id"])
        for part in api:
            assert bulk[part] == api[part], part
        assert len(api["observations"]) == 3 and len(api["claims"]) == 2 and api["cards"] and api["names"]
        stored = {i["system"]: i["value"] for i in api["patient"]["res"]["identifier"]}
        assert stored[ID_SYS] == "enc:<ciphertext>"
        assert res["identifier"][0]["value"] not in json.dumps(bulk, default=str)


# -- served like registered residents ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fifty(app, services):
    hooks = attach_index(services)
    out = seed(services, hooks, services.extensions["ehc"], 50, 3, start=0, progress=False)
    assert out["patients"] + out["skipped"] == 50 and out["observations"] == 3 * out["patients"]
    return synthetic(0, 50, 3)


def test_identifier_and_observation_searches_find_seeded_residents(client, fifty):
    for i in (0, 17, 49):
        res, observations = fifty[i]
        pid = pid_by_mrn(client, i)
        r = client.get(f"/fhir/Patient?identifier={ID_SYS}|{res['identifier'][0]['value']}")
        assert [e["resource"]["id"] for e in r.json["entry"]] == [pid]
        assert r.json["entry"][0]["resource"]["identifier"][0]["value"] == res["identifier"][0]["value"]
        code = observations[0]["code"]["coding"][0]["code"]
        r = client.get(f"/fhir/Observation?patient={pid}&code=http://loinc.org|{code}")
        got = sorted(e["resource"]["effectiveDateTime"] for e in r.json["entry"])
        assert got == sorted(o["effectiveDateTime"] for o in observations if o["code"]["coding"][0]["code"] == code)
        assert all(e["resource"]["subject"]["reference"] == f"Patient/{pid}" for e in r.json["entry"])
        r = client.get(f"/fhir/Patient/{pid}/$everything")
        assert sum(e["resource"]["resourceType"] == "Observation" for e in r.json["entry"]) == 3


def test_master_index_operations_and_registration_see_seeded_residents(client, fifty):
    res, _ = fifty[5]
    pid = pid_by_mrn(client, 5)
    number = res["identifier"][0]["value"]
    r = client.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={ID_SYS}|{number}&targetSystem={MRN_SYS}")
    assert r.status_code == 200, r.json
    params = {p["name"]: p for p in r.json["parameter"]}
    assert params["targetId"]["valueReference"]["reference"] == f"Patient/{pid}"
    assert params["targetIdentifier"]["valueIdentifier"]["value"] == "M00000005"
    r = post(client, "Patient/$match", {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": {"resourceType": "Patient", "name": res["name"],
                                          "birthDate": res["birthDate"], "gender": res["gender"]}}]})
    assert pid in [e["resource"]["id"] for e in r.json.get("entry", [])]
    # registering the same resident at another hospital links to the seeded record: 200, no second Patient
    again = {**res, "identifier": [res["identifier"][0], {"system": "urn:ehc:mrn:org-2", "value": "H5"}]}
    r = post(client, "Patient", again)
    assert r.status_code == 200 and r.json["id"] == pid
    assert client.get("/fhir/Patient?identifier=urn:ehc:mrn:org-2|H5").json["entry"][0]["resource"]["id"] == pid


def qr_token(client, pid: str) -> str:
    r = post(client, f"Patient/{pid}/$ehc-qrcode", {"resourceType": "Parameters", "parameter": []})
    assert r.status_code == 200, r.json
    return next(p["valueString"] for p in r.json["parameter"] if p["name"] == "token")


def verified(client, token: str) -> dict[str, Any]:
    r = post(client, "$ehc-verify", {"resourceType": "Parameters",
                                     "parameter": [{"name": "token", "valueString": token}]})
    assert r.status_code == 200, r.json
    return {p["name"]: p for p in r.json["parameter"]}


def test_seeded_card_gives_a_qr_code_that_verifies_and_can_be_suspended(client, fifty):
    pid = pid_by_mrn(client, 8)
    card = next(i["value"] for i in client.get(f"/fhir/Patient/{pid}").json["identifier"] if i["system"] == EHC_SYS)
    first, second = qr_token(client, pid), qr_token(client, pid)
    out = verified(client, first)
    assert out["valid"]["valueBoolean"] is True
    assert out["patient"]["valueReference"]["reference"] == f"Patient/{pid}"
    assert out["ehcId"]["valueString"] == card
    r = post(client, f"Patient/{pid}/$ehc-status", {"resourceType": "Parameters",
                                                    "parameter": [{"name": "status", "valueCode": "suspended"}]})
    assert r.status_code == 200, r.json
    assert verified(client, second)["reason"]["valueCode"] == "suspended"
    assert {"ehcId": card, "status": "suspended"}.items() <= next(
        c for c in client.get("/ehc/revocations").json["cards"] if c["ehcId"] == card).items()


def test_seeding_again_adds_nobody_and_the_audit_trail_stays_intact(client, services, fifty):
    from app.audit.chain import verify

    hooks = attach_index(services)
    out = seed(services, hooks, services.extensions["ehc"], 50, 3, start=0, progress=False)
    assert out == {"patients": 0, "skipped": 50, "observations": 0}
    pid = pid_by_mrn(client, 3)  # still one Patient per record number
    client.get(f"/fhir/Patient/{pid}")
    seal_everything(services.extensions["audit"].sealer)
    report = verify(services.handle.db)
    assert report.ok, report.problems
    events = [d["res"] for d in services.handle.db["AuditEvent"].find({})]
    assert any(f"Patient/{pid}" in json.dumps(e) and e["action"] == "R" for e in events)
