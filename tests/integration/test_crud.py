"""Create, read, vread, update, patch, delete: statuses, headers and stored state (FHIR http.html)."""

from __future__ import annotations

import json
import uuid

from tests.conftest import sample

FJ = "application/fhir+json"


def new_patient() -> dict:
    """The sample resident with a record number of its own (the same one twice is the same resident)."""
    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    return pat


def post(client, path, body, **headers):
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=headers)


def put(client, path, body, **headers):
    return client.put(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=headers)


def test_create_read_headers(client):
    r = post(client, "Patient", new_patient())
    assert r.status_code == 201, r.json
    body = r.json
    assert body["meta"]["versionId"] == "1"
    assert r.headers["ETag"] == 'W/"1"'
    assert r.headers["Location"] == f"http://localhost/fhir/Patient/{body['id']}/_history/1"
    assert r.headers["Content-Type"].startswith("application/fhir+json")
    assert "Last-Modified" in r.headers
    got = client.get(f"/fhir/Patient/{body['id']}")
    assert got.status_code == 200
    assert got.json["name"][0]["family"] == "张"
    assert got.headers["ETag"] == 'W/"1"'


def test_create_ignores_client_id_and_sets_meta(client):
    r = post(client, "Patient", {**new_patient(), "id": "mine"})
    assert r.status_code == 201
    assert r.json["id"] != "mine"
    assert r.json["meta"]["lastUpdated"].endswith("Z")


def test_update_versions_and_vread(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    pat = client.get(f"/fhir/Patient/{pid}").json
    pat["active"] = False
    r = put(client, f"Patient/{pid}", pat)
    assert r.status_code == 200
    assert r.json["meta"]["versionId"] == "2"
    assert r.headers["ETag"] == 'W/"2"'
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.json["active"] is True
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2")
    assert v2.json["active"] is False
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404


def test_update_as_create_with_client_id(client):
    body = {**new_patient(), "id": "client-chosen-1"}
    r = put(client, "Patient/client-chosen-1", body)
    assert r.status_code == 201
    assert r.headers["Location"].endswith("/Patient/client-chosen-1/_history/1")
    assert client.get("/fhir/Patient/client-chosen-1").status_code == 200


def test_update_id_mismatch_is_400(client):
    r = put(client, "Patient/abc", {**new_patient(), "id": "xyz"})
    assert r.status_code == 400
    assert r.json["resourceType"] == "OperationOutcome"
    assert r.json["issue"][0]["expression"] == ["id"]


def test_if_match_and_if_none_match(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    pat = client.get(f"/fhir/Patient/{pid}").json
    pat["active"] = False  # a change: a PUT that changes nothing makes no version (test_unchanged_writes.py)
    assert put(client, f"Patient/{pid}", pat, **{"If-Match": 'W/"1"'}).status_code == 200
    stale = put(client, f"Patient/{pid}", pat, **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.json["resourceType"] == "OperationOutcome"
    r = client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"2"'})
    assert r.status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 200


def test_prefer_return(client):
    r = post(client, "Patient", new_patient(), Prefer="return=minimal")
    assert r.status_code == 201 and r.data == b"" and "Location" in r.headers
    r = post(client, "Patient", new_patient(), Prefer="return=OperationOutcome")
    assert r.json["resourceType"] == "OperationOutcome"


def test_delete_then_gone_and_history(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 200
    g = client.get(f"/fhir/Patient/{pid}")
    assert g.status_code == 410
    assert g.json["issue"][0]["code"] == "deleted"
    h = client.get(f"/fhir/Patient/{pid}/_history").json
    assert h["type"] == "history"
    assert [e["request"]["method"] for e in h["entry"]] == ["DELETE", "POST"]
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    # deleting again is not an error
    assert client.delete(f"/fhir/Patient/{pid}").status_code == 200


def test_unknown_resource_and_id(client):
    assert client.get("/fhir/Patient/does-not-exist").status_code == 404
    r = client.get("/fhir/Spaceship/1")
    assert r.status_code == 404 and r.json["resourceType"] == "OperationOutcome"


def test_json_patch(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    ops = [{"op": "replace", "path": "/gender", "value": "female"}, {"op": "add", "path": "/active", "value": False}]
    r = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(ops), content_type="application/json-patch+json")
    assert r.status_code == 200, r.json
    assert r.json["gender"] == "female" and r.json["meta"]["versionId"] == "2"
    bad = client.patch(f"/fhir/Patient/{pid}", data=json.dumps([{"op": "test", "path": "/gender", "value": "male"}]),
                       content_type="application/json-patch+json")
    assert bad.status_code == 422
    wrong = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(ops), content_type=FJ)
    assert wrong.status_code == 415
    robot = [{"op": "replace", "path": "/gender", "value": "robot"}]
    invalid = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(robot),
                           content_type="application/json-patch+json")
    assert invalid.status_code == 400
    assert client.get(f"/fhir/Patient/{pid}").json["gender"] == "female"


def test_reference_to_missing_patient_refused(client):
    obs = {**sample("observation-glucose.json"), "subject": {"reference": "Patient/nobody"}}
    r = post(client, "Observation", obs)
    assert r.status_code == 422
    assert r.json["issue"][0]["expression"] == ["Observation.subject.reference"]
    # references are checked after the write (a delete of the target at once must see it): nothing stays
    assert client.get("/fhir/Observation?subject=Patient/nobody").json["total"] == 0
    pid = post(client, "Patient", new_patient()).json["id"]
    good = post(client, "Observation", {**obs, "subject": {"reference": f"Patient/{pid}"}}).json
    r = client.put(f"/fhir/Observation/{good['id']}", data=json.dumps({**good, "subject": obs["subject"]}),
                   content_type=FJ)
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Observation.subject.reference"]
    kept = client.get(f"/fhir/Observation/{good['id']}").json
    assert kept["meta"]["versionId"] == "1" and kept["subject"] == {"reference": f"Patient/{pid}"}
    assert client.get(f"/fhir/Observation/{good['id']}/_history").json["total"] == 1
    assert client.get("/fhir/Observation?subject=Patient/nobody").json["total"] == 0
    r = client.put("/fhir/Observation/made-up-1", data=json.dumps({**obs, "id": "made-up-1"}), content_type=FJ)
    assert r.status_code == 422 and client.get("/fhir/Observation/made-up-1").status_code == 404
    # the version slot of the refused update is free again: the next update goes through
    r = client.put(f"/fhir/Observation/{good['id']}", data=json.dumps({**good, "status": "amended"}),
                   content_type=FJ)
    assert r.status_code == 200 and r.json["meta"]["versionId"] == "2"


def test_delete_referenced_patient_conflict_and_cascade(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    obs = {**sample("observation-glucose.json"), "subject": {"reference": f"Patient/{pid}"}}
    oid = post(client, "Observation", obs).json["id"]
    r = client.delete(f"/fhir/Patient/{pid}")
    assert r.status_code == 409
    assert f"Observation/{oid}" in r.json["issue"][0]["diagnostics"]
    assert client.delete(f"/fhir/Patient/{pid}?_cascade=delete").status_code == 200
    assert client.get(f"/fhir/Observation/{oid}").status_code == 410


def test_invalid_resource_names_field(client):
    r = post(client, "Patient", {"resourceType": "Patient", "birthDate": "1990-13-01"})
    assert r.status_code == 400
    assert r.json["issue"][0]["expression"] == ["Patient.birthDate"]
    r = post(client, "Patient", {"resourceType": "Patient", "gender": "robot"})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["Patient.gender"]
    r = post(client, "Patient", {"resourceType": "Observation", "status": "final"})
    assert r.status_code == 400


def test_media_types_and_body_errors(client):
    # XML is served (tests/integration/test_xml.py); XML outside the FHIR namespace is a 400, other types 415
    r = client.post("/fhir/Patient", data="<Patient/>", content_type="application/fhir+xml")
    assert r.status_code == 400 and r.json["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient", data="name=x", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 415
    r = client.get("/fhir/metadata", headers={"Accept": "application/fhir+xml"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/fhir+xml")
    r = client.get("/fhir/metadata", headers={"Accept": "text/html"})
    assert r.status_code == 406
    r = client.get("/fhir/metadata?_format=xml")
    assert r.status_code == 200 and r.data.startswith(b"<?xml")
    r = client.post("/fhir/Patient", data="{not json", content_type=FJ)
    assert r.status_code == 400 and r.json["resourceType"] == "OperationOutcome"
    r = client.post("/fhir/Patient", data=b"{" + b" " * (2 * 1024 * 1024) + b"}", content_type=FJ)
    assert r.status_code == 413 and r.json["resourceType"] == "OperationOutcome"
    r = client.get("/fhir/metadata", headers={"Accept": "application/json"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert client.get("/fhir/metadata?_pretty=true").data.startswith(b"{\n")


def test_method_not_allowed(client):
    r = client.put("/fhir/metadata", data="{}", content_type=FJ)
    assert r.status_code == 405
    assert r.json["resourceType"] == "OperationOutcome"


def test_metadata_lists_what_is_implemented(client):
    cs = client.get("/fhir/metadata").json
    assert cs["fhirVersion"] == "4.0.1"
    types = {r["type"]: r for r in cs["rest"][0]["resource"]}
    assert {"Patient", "Observation", "DocumentReference", "Binary"} <= set(types)
    names = {p["name"] for p in types["Patient"]["searchParam"]}
    assert {"identifier", "name", "birthdate", "gender"} <= names
    assert {"code": "read"} in types["AuditEvent"]["interaction"]
    assert {"code": "create"} not in types["AuditEvent"]["interaction"]


def test_validate_operation(client):
    ok = post(client, "Patient/$validate", new_patient())
    assert ok.status_code == 200 and ok.json["issue"][0]["severity"] == "information"
    bad = post(client, "Patient/$validate", {"resourceType": "Patient", "gender": "robot"})
    assert bad.status_code == 200 and bad.json["issue"][0]["severity"] == "error"
