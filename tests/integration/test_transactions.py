"""batch and transaction Bundles: urn:uuid references, conditional references, ordering, atomicity."""

from __future__ import annotations

import base64
import json
import re
import time

import pytest
import requests
from pymongo import MongoClient

from tests.live import LiveServer

FJ = "application/fhir+json"


def bundle(kind, entries):
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def post_bundle(client, b):
    return client.post("/fhir", data=json.dumps(b), content_type=FJ)


def patient_entry(uuid, family, mrn, system="urn:ehc:mrn:tx"):
    return {"fullUrl": f"urn:uuid:{uuid}",
            "resource": {"resourceType": "Patient", "name": [{"family": family}],
                         "identifier": [{"system": system, "value": mrn}]},
            "request": {"method": "POST", "url": "Patient"}}


def obs_entry(subject_ref, code="2339-0"):
    return {"resource": {"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                         "subject": {"reference": subject_ref}},
            "request": {"method": "POST", "url": "Observation"}}


def test_transaction_resolves_urn_uuid(client):
    u = "11111111-1111-4111-8111-111111111111"
    b = bundle("transaction", [obs_entry(f"urn:uuid:{u}"), patient_entry(u, "Wang", "T1")])
    r = post_bundle(client, b)
    assert r.status_code == 200, r.json
    out = r.json
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created", "201 Created"]
    pid = out["entry"][1]["resource"]["id"]
    assert out["entry"][0]["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert client.get(f"/fhir/Observation?patient={pid}").json["total"] == 1


def test_transaction_is_all_or_nothing(client):
    u = "22222222-2222-4222-8222-222222222222"
    b = bundle("transaction", [patient_entry(u, "Li", "T2"), obs_entry(f"urn:uuid:{u}"),
                               obs_entry("Patient/does-not-exist")])
    r = post_bundle(client, b)
    assert r.status_code == 422
    assert r.json["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient?identifier=urn:ehc:mrn:tx|T2").json["total"] == 0


def test_transaction_invalid_entry_names_it(client):
    b = bundle("transaction", [{"resource": {"resourceType": "Patient", "gender": "robot"},
                                "request": {"method": "POST", "url": "Patient"}}])
    r = post_bundle(client, b)
    assert r.status_code == 400
    assert r.json["issue"][0]["expression"][0].startswith("Bundle.entry[0].resource")


def test_transaction_order_conditional_refs_and_update(client):
    first = post_bundle(client, bundle("transaction", [patient_entry("33333333-3333-4333-8333-333333333333",
                                                                     "Zhao", "T3")])).json
    pid = first["entry"][0]["resource"]["id"]
    b = bundle("transaction", [
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        obs_entry("Patient?identifier=urn:ehc:mrn:tx|T3"),
        {"resource": {"resourceType": "Patient", "id": pid, "name": [{"family": "Zhao2"}]},
         "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'}},
    ])
    r = post_bundle(client, b)
    assert r.status_code == 200, r.json
    statuses = [e["response"]["status"] for e in r.json["entry"]]
    assert statuses == ["200", "201 Created", "200 OK"]
    # GET is processed last, so it sees the update of the same transaction
    assert r.json["entry"][0]["resource"]["name"][0]["family"] == "Zhao2"
    assert r.json["entry"][1]["resource"]["subject"]["reference"] == f"Patient/{pid}"


def test_transaction_stale_if_match_changes_nothing(client):
    pid = post_bundle(client, bundle("transaction", [patient_entry("44444444-4444-4444-8444-444444444444",
                                                                   "Sun", "T4")])).json["entry"][0]["resource"]["id"]
    b = bundle("transaction", [
        obs_entry(f"Patient/{pid}"),
        {"resource": {"resourceType": "Patient", "id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}",
                                                                        "ifMatch": 'W/"7"'}}])
    assert post_bundle(client, b).status_code == 412
    assert client.get(f"/fhir/Observation?patient={pid}").json["total"] == 0


def test_conditional_creates_with_the_same_criteria_make_one_resource(client):
    """Two entries with the same ifNoneExist in one transaction are one resource: the first creates it, the
    second is that resource (200, its location), and references to either fullUrl point to it. Before, each
    searched before either was written, found nothing, and created its own."""
    def org(name: str, uuid: str) -> dict:
        return {"fullUrl": f"urn:uuid:{uuid}",
                "resource": {"resourceType": "Organization", "name": name,
                             "identifier": [{"system": "urn:test:tx-org", "value": "one"}]},
                "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:test:tx-org|one"}}

    a, b = "11111111-0000-4000-8000-000000000001", "11111111-0000-4000-8000-000000000002"
    loc = {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000003",
           "resource": {"resourceType": "Location", "name": "门诊部",
                        "managingOrganization": {"reference": f"urn:uuid:{b}"}},
           "request": {"method": "POST", "url": "Location"}}
    r = post_bundle(client, bundle("transaction", [org("甲", a), org("乙", b), loc]))
    assert r.status_code == 200, r.json
    first, second, location = (e["response"] for e in r.json["entry"])
    assert first["status"] == "201 Created" and second["status"] == "200 OK"
    oid = first["location"].split("/")[-3]
    assert second["location"].endswith(f"/Organization/{oid}")
    assert client.get("/fhir/Organization?identifier=urn:test:tx-org|one").json["total"] == 1
    lid = location["location"].split("/")[-3]
    assert client.get(f"/fhir/Location/{lid}").json["managingOrganization"]["reference"] == f"Organization/{oid}"


def test_a_conditional_patch_entry_without_a_match_is_404_naming_the_entry(client):
    patch = base64.b64encode(json.dumps([{"op": "add", "path": "/active", "value": True}]).encode()).decode()
    r = post_bundle(client, bundle("transaction", [{
        "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch},
        "request": {"method": "PATCH", "url": "Organization?identifier=urn:test:tx-org|nobody"}}]))
    assert r.status_code == 404, r.json
    assert r.json["issue"][0]["expression"] == ["Bundle.entry[0]"]
    assert "matches the conditional URL" in r.json["issue"][0]["diagnostics"]  # not an id it never sent


def test_a_transaction_cannot_delete_what_is_still_referenced(client):
    """DELETE Patient/x answers 409 while records refer to it; a transaction's DELETE entry deleted it anyway and
    left them pointing at a deleted Patient. It is refused the same way now, unless the transaction deletes or
    changes those records too."""
    def new(body: dict) -> str:
        return client.post(f"/fhir/{body['resourceType']}", data=json.dumps(body), content_type=FJ).json["id"]

    def obs(pid: str) -> dict:
        return {"resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
                "subject": {"reference": f"Patient/{pid}"}}

    pid, other = new({"resourceType": "Patient"}), new({"resourceType": "Patient"})
    oid = new(obs(pid))
    r = post_bundle(client, bundle("transaction", [{"request": {"method": "DELETE", "url": f"Patient/{pid}"}}]))
    assert r.status_code == 409 and f"Observation/{oid}" in r.json["issue"][0]["diagnostics"], r.json
    assert client.get(f"/fhir/Patient/{pid}").status_code == 200
    moved = {**obs(other), "id": oid}
    r = post_bundle(client, bundle("transaction", [
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
        {"resource": moved, "request": {"method": "PUT", "url": f"Observation/{oid}"}}]))
    assert r.status_code == 200, r.json  # the record that referred to it now refers to another
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    oid2 = new(obs(other))
    r = post_bundle(client, bundle("transaction", [
        {"request": {"method": "DELETE", "url": f"Patient/{other}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{oid}"}},
        {"request": {"method": "DELETE", "url": f"Observation/{oid2}"}}]))
    assert r.status_code == 200, r.json
    last = new({"resourceType": "Patient"})
    r = post_bundle(client, bundle("transaction", [  # a record created referring to what the transaction deletes
        {"request": {"method": "DELETE", "url": f"Patient/{last}"}},
        {"resource": obs(last), "request": {"method": "POST", "url": "Observation"}}]))
    assert r.status_code in (409, 422), r.json
    assert client.get(f"/fhir/Patient/{last}").status_code == 200
    assert client.get(f"/fhir/Observation?subject=Patient/{last}").json["total"] == 0


def test_a_resource_written_twice_in_one_transaction_fails_it(client):
    """http.html#trules: a resource may appear in a transaction once. Two writes of one resource (two PUTs, a
    PUT and a DELETE, two conditional updates that would create from the same criteria) are refused with 400
    naming both entries, and nothing is stored. Before, two PUTs answered 409 "changed by another request",
    and a PUT with a DELETE of the same resource stored the PUT."""
    org = {"resourceType": "Organization", "id": "tx-twice", "name": "两次"}
    cases = [
        [{"resource": org, "request": {"method": "PUT", "url": "Organization/tx-twice"}},
         {"resource": {**org, "name": "又一次"}, "request": {"method": "PUT", "url": "Organization/tx-twice"}}],
        [{"resource": org, "request": {"method": "PUT", "url": "Organization/tx-twice"}},
         {"request": {"method": "DELETE", "url": "Organization/tx-twice"}}],
        [{"resource": {"resourceType": "Organization", "name": n,
                       "identifier": [{"system": "urn:test:tx-org", "value": "twice"}]},
          "request": {"method": "PUT", "url": "Organization?identifier=urn:test:tx-org|twice"}} for n in ("甲", "乙")],
    ]
    for entries in cases:
        r = post_bundle(client, bundle("transaction", entries))
        assert r.status_code == 400, r.json
        issue = r.json["issue"][0]
        assert {"Bundle.entry[0]", "Bundle.entry[1]"} <= set(re.findall(r"Bundle\.entry\[\d\]", issue["diagnostics"]))
        assert "once" in issue["diagnostics"] and issue["expression"][0] in issue["diagnostics"], issue
    assert client.get("/fhir/Organization/tx-twice").status_code == 404
    assert client.get("/fhir/Organization?identifier=urn:test:tx-org|twice").json["total"] == 0


def test_batch_entries_independent(client):
    b = bundle("batch", [patient_entry("55555555-5555-4555-8555-555555555555", "Zhou", "B1"),
                         {"request": {"method": "GET", "url": "Patient/nope"}},
                         {"resource": {"resourceType": "Patient", "gender": "robot"},
                          "request": {"method": "POST", "url": "Patient"}}])
    r = post_bundle(client, b)
    assert r.status_code == 200
    codes = [e["response"]["status"][:3] for e in r.json["entry"]]
    assert codes == ["201", "404", "400"]
    assert r.json["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_bundle_type_and_request_checked(client):
    assert post_bundle(client, bundle("collection", [])).status_code == 400
    r = post_bundle(client, bundle("transaction", [{"resource": {"resourceType": "Patient"}}]))
    assert r.status_code == 400 and "request" in r.json["issue"][0]["diagnostics"]


KILL = "urn:ehc:mrn:kill"
KILLED = ",".join(f"{KILL}|K{i}" for i in range(6))


@pytest.mark.slow
def test_kill_mid_transaction_leaves_nothing_after_restart(db_uri, tmp_path):
    """kill -9 the server while it applies a transaction; after restart nothing of it is visible."""
    entries = [patient_entry(f"66666666-6666-4666-8666-{i:012d}", f"Kill{i}", f"K{i}", KILL) for i in range(6)]
    slow = LiveServer(db_uri, tmp_path, workers=1, env={"EHC_FAULT_TXN_PAUSE": "3:30"}).start()
    try:
        sent = None
        try:
            sent = requests.post(slow.base, data=json.dumps(bundle("transaction", entries)),
                                 headers={"Content-Type": FJ}, timeout=3)
        except requests.ReadTimeout:
            pass
        assert sent is None, "the transaction should still be in progress"
        db = MongoClient(db_uri).get_default_database()
        deadline = time.monotonic() + 10
        partial = 0
        while time.monotonic() < deadline:
            partial = db["Patient"].count_documents({"res.identifier.system": KILL})
            if partial >= 3:
                break
            time.sleep(0.1)
        assert partial == 3, "three entries applied before the kill: a partial state exists"
        slow.kill()
    finally:
        slow.kill()
    restarted = LiveServer(db_uri, tmp_path, workers=1).start()
    try:
        # undone once the killed process's heartbeat is stale (5 s), at start-up or by the next heartbeat
        deadline = time.monotonic() + 20
        while db["_journal"].count_documents({}) and time.monotonic() < deadline:
            time.sleep(0.2)
        found = requests.get(f"{restarted.base}/Patient?identifier={KILLED}").json()
        assert found.get("total") == 0, found
        assert db["Patient"].count_documents({"res.identifier.system": KILL}) == 0
        assert db["_journal"].count_documents({}) == 0
        # the same transaction now succeeds completely
        ok = requests.post(restarted.base, data=json.dumps(bundle("transaction", entries)),
                           headers={"Content-Type": FJ}, timeout=30)
        assert ok.status_code == 200, ok.json()
        again = requests.get(f"{restarted.base}/Patient?identifier={KILLED}").json()
        assert again["total"] == 6
    finally:
        restarted.stop()


def test_transaction_patch_entry_as_binary(client):
    import base64

    pid = post_bundle(client, bundle("transaction", [patient_entry("77777777-7777-4777-8777-777777777777",
                                                                   "Qian", "T7")])).json["entry"][0]["resource"]["id"]
    patch = [{"op": "add", "path": "/active", "value": False}]
    data = base64.b64encode(json.dumps(patch).encode()).decode()
    b = bundle("transaction", [{"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                             "data": data},
                                "request": {"method": "PATCH", "url": f"Patient/{pid}"}}])
    r = post_bundle(client, b)
    assert r.status_code == 200, r.json
    assert r.json["entry"][0]["response"]["status"] == "200 OK"
    got = client.get(f"/fhir/Patient/{pid}").json
    assert got["active"] is False and got["meta"]["versionId"] == "2"


def test_a_bundle_beyond_the_entry_limit_is_413_and_changes_nothing(client, services, monkeypatch):
    """A 10 MB body holds some 200,000 entries, each a request's work (2,000 reads took 4.6 s here): one client
    could hold a worker for minutes. Above EHC_MAX_BUNDLE_ENTRIES (1,000) the whole Bundle is refused up front."""
    from dataclasses import replace

    reads = [{"request": {"method": "GET", "url": "metadata"}}] * 1001
    r = post_bundle(client, bundle("batch", reads))
    assert r.status_code == 413 and r.json["issue"][0]["code"] == "too-costly"
    assert r.json["issue"][0]["expression"] == ["Bundle.entry"] and "1001" in r.json["issue"][0]["diagnostics"]
    monkeypatch.setattr(services, "settings", replace(services.settings, max_bundle_entries=3))
    creates = [patient_entry(f"5b1c0d7e-0000-4000-8000-00000000000{i}", "限量", f"LIMIT-{i}") for i in range(4)]
    assert post_bundle(client, bundle("transaction", creates)).status_code == 413
    assert client.get("/fhir/Patient?identifier=urn:ehc:mrn:tx|LIMIT-0").json["total"] == 0
    assert post_bundle(client, bundle("transaction", creates[:3])).status_code == 200  # at the limit: served
