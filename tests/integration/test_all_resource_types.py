"""Every R4 resource type is served the same way: create, read, update, vread, history, search, delete;
strict validation refuses what R4 refuses and stores nothing; decimals come back exactly as written."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from app.core.fhirjson import dumps, loads
from tests.conftest import sample
from tests.fhir_factory import STRUCTURE, minimal, patient_linked

FJ = "application/fhir+json"
TYPES = json.loads((STRUCTURE_DIR := __import__("pathlib").Path(__file__).resolve().parents[2]
                    / "fhir_profiles" / "resource-types.json").read_text())["resourceTypes"]
WRITABLE = sorted(t for t, conf in TYPES.items() if "create" in conf["interactions"])


def send(client: Any, method: str, path: str, body: Any = None) -> Any:
    data = dumps(body) if body is not None else None
    return client.open(f"/fhir/{path}", method=method, data=data, content_type=FJ)


@pytest.fixture(scope="module")
def patient_id(app: Any) -> str:
    client = app.test_client()
    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    r = send(client, "POST", "Patient", pat)
    assert r.status_code == 201, r.json
    return str(r.json["id"])


def test_every_r4_type_but_parameters_is_declared() -> None:
    assert set(TYPES) == set(STRUCTURE.resources) - {"Parameters"}
    assert TYPES["AuditEvent"]["interactions"] == ["read", "vread", "search-type"]
    # the server's own OperationDefinitions are made from its operation table (app/fhir/conformance.py)
    assert TYPES["OperationDefinition"]["interactions"] == ["read", "search-type"]
    assert len(WRITABLE) == 143


@pytest.mark.parametrize("rtype", WRITABLE)
def test_crud_history_search_delete(client: Any, patient_id: str, rtype: str) -> None:
    body = minimal(rtype, patient_id)
    r = send(client, "POST", rtype, body)
    assert r.status_code == 201, r.json
    rid = r.json["id"]
    assert r.headers["Location"].endswith(f"/fhir/{rtype}/{rid}/_history/1")
    has_decimal = "extension" in body  # DomainResources carry an extension with the decimal 0.50
    assert (b'"valueDecimal":0.50' in send(client, "GET", f"{rtype}/{rid}").data) == has_decimal
    updated = loads(send(client, "GET", f"{rtype}/{rid}").data)
    updated["meta"] = {"tag": [{"system": "http://example.org/tags", "code": "updated"}]}
    r = send(client, "PUT", f"{rtype}/{rid}", updated)
    assert r.status_code == 200 and r.json["meta"]["versionId"] == "2", r.json
    hist = send(client, "GET", f"{rtype}/{rid}/_history").json
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    assert (b'"valueDecimal":0.50' in send(client, "GET", f"{rtype}/{rid}/_history/1").data) == has_decimal
    found = send(client, "GET", f"{rtype}?_id={rid}").json
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [rid]
    tagged = send(client, "GET", f"{rtype}?_tag=http://example.org/tags|updated&_id={rid}").json
    assert tagged["total"] == 1
    link = patient_linked(rtype)
    if link is not None:
        # the patient reference is checked and searchable through the type's own parameter where R4 has one
        bad = minimal(rtype, "does-not-exist")
        assert send(client, "POST", rtype, bad).status_code == 422
    assert send(client, "DELETE", f"{rtype}/{rid}").status_code in (200, 204)
    assert send(client, "GET", f"{rtype}/{rid}").status_code == 410
    assert send(client, "GET", f"{rtype}/{rid}/_history/2").status_code == 200


def test_audit_event_stays_read_only(client: Any) -> None:
    r = send(client, "POST", "AuditEvent", minimal("AuditEvent"))
    assert r.status_code == 405
    assert r.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("rtype", "text", "path"),
    [
        ("Patient", '{"resourceType":"Patient","active":"true"}', "Patient.active"),
        ("Patient", '{"resourceType":"Patient","active":1}', "Patient.active"),
        ("Observation", '{"resourceType":"Observation","status":"final","code":{"text":"x"},'
                        '"valueQuantity":{"value":"5.5"}}', "Observation.valueQuantity.value"),
        ("Patient", '{"resourceType":"Patient","name":null}', "Patient.name"),
        ("Patient", '{"resourceType":"Patient","name":[]}', "Patient.name"),
        ("Patient", '{"resourceType":"Patient","name":[{}]}', "Patient.name[0]"),
        ("Patient", '{"resourceType":"Patient","text":{"status":"generated","div":"<div>x</div>"}}',
         "Patient.text.div"),
        ("Encounter", '{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"},"foo":1}',
         "Encounter.foo"),
        ("Claim", '{"resourceType":"Claim","status":"active"}', "Claim.type"),
    ],
)
def test_invalid_resources_are_400_naming_the_path_and_not_stored(client: Any, rtype: str, text: str,
                                                                  path: str) -> None:
    before = send(client, "GET", f"{rtype}/_history").json.get("total")
    r = client.post(f"/fhir/{rtype}", data=text.encode(), content_type=FJ)
    assert r.status_code == 400
    assert r.json["resourceType"] == "OperationOutcome"
    assert path in [e for i in r.json["issue"] for e in i.get("expression", [])]
    r = client.put(f"/fhir/{rtype}/strict-1", data=text[:-1].encode() + b',"id":"strict-1"}', content_type=FJ)
    assert r.status_code == 400
    assert send(client, "GET", f"{rtype}/strict-1").status_code == 404
    assert send(client, "GET", f"{rtype}/_history").json.get("total") == before


def test_decimals_keep_their_precision_everywhere(client: Any, patient_id: str) -> None:
    text = ('{"resourceType":"Observation","status":"final","code":{"text":"glucose"},'
            f'"subject":{{"reference":"Patient/{patient_id}"}},'
            '"valueQuantity":{"value":1.50,"unit":"mmol/L"},'
            '"referenceRange":[{"low":{"value":3.90},"high":{"value":6.100}}]}')
    r = client.post("/fhir/Observation", data=text.encode(), content_type=FJ)
    assert r.status_code == 201, r.json
    oid = r.json["id"]
    for path in (f"Observation/{oid}", f"Observation/{oid}/_history/1",
                 f"Observation?_id={oid}", "Observation?value-quantity=1.5&_count=500"):
        data = send(client, "GET", path).data
        assert b'"value":1.50' in data and b'"value":3.90' in data and b'"value":6.100' in data, path
    # patched (JSON Patch values keep their text too) and the old version still says 1.50
    patch = b'[{"op":"replace","path":"/valueQuantity/value","value":2.250}]'
    r = client.patch(f"/fhir/Observation/{oid}", data=patch, content_type="application/json-patch+json")
    assert r.status_code == 200 and b'"value":2.250' in r.data
    assert b'"value":1.50' in send(client, "GET", f"Observation/{oid}/_history/1").data
    hist = send(client, "GET", f"Observation/{oid}/_history").data
    assert b'"value":2.250' in hist and b'"value":1.50' in hist
    assert send(client, "GET", "Observation?value-quantity=2.25").json["total"] >= 1


def test_references_are_checked_for_every_type(client: Any, patient_id: str) -> None:
    enc = {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
           "subject": {"reference": "Patient/nobody"}}
    r = send(client, "POST", "Encounter", enc)
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Encounter.subject.reference"]
    enc["subject"] = {"reference": f"Patient/{patient_id}"}
    eid = send(client, "POST", "Encounter", enc).json["id"]
    med = {"resourceType": "MedicationRequest", "status": "active", "intent": "order",
           "medicationCodeableConcept": {"text": "aspirin"}, "subject": {"reference": f"Patient/{patient_id}"},
           "encounter": {"reference": f"Encounter/{eid}"}}
    assert send(client, "POST", "MedicationRequest", med).status_code == 201
    # the Encounter is now referenced: deleting it is refused
    assert send(client, "DELETE", f"Encounter/{eid}").status_code == 409
    found = send(client, "GET", f"MedicationRequest?encounter=Encounter/{eid}").json
    assert found["total"] == 1


def test_validate_against_the_published_ehc_patient_profile(client: Any) -> None:
    profile = "https://ehc.example.cn/fhir/StructureDefinition/ehc-patient"
    bad = {"resourceType": "Patient", "gender": "male",
           "identifier": [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]}  # no name
    r = send(client, "POST", f"Patient/$validate?profile={profile}", bad)
    assert r.status_code == 200
    errors = [i for i in r.json["issue"] if i["severity"] == "error"]
    assert [i["expression"] for i in errors] == [["Patient.name"]]
    # the same through a Parameters body, and without the profile the base R4 Patient is valid
    params = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": bad},
                                                          {"name": "profile", "valueUri": profile}]}
    assert any(i["severity"] == "error" for i in send(client, "POST", "Patient/$validate", params).json["issue"])
    assert not any(i["severity"] == "error" for i in send(client, "POST", "Patient/$validate", bad).json["issue"])
    unknown = send(client, "POST", "Patient/$validate?profile=http://example.org/nope", bad).json
    assert unknown["issue"][0]["code"] == "not-supported"
