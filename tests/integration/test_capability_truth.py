"""What GET /metadata declares against what the server does: conformance suites (Inferno, Touchstone, the HL7
validator) read the CapabilityStatement and test each claim, so a claim the routes do not keep fails them, and
a capability the server has but does not declare is never tested or used."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from app.profiles import PROFILES_DIR
from tests.integration.auth_helpers import *  # noqa: F403  (the auth-on app, `live`, `svc`)
from tests.integration.auth_helpers import (
    REDIRECT,
    account,
    create,
    login_and_approve,
    patient,
    redirect_params,
    register,
    secret_token,
)

FJ = "application/fhir+json"
STRICT = {"Prefer": "handling=strict"}
PATIENT_COMPARTMENT = "http://hl7.org/fhir/CompartmentDefinition/patient"


@pytest.fixture(scope="module")
def cap(app: Any) -> dict[str, Any]:
    return dict(app.test_client().get("/fhir/metadata").json)


def by_type(cap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in cap["rest"][0]["resource"]}


def post(client: Any, path: str, body: dict[str, Any]) -> Any:
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)


def new_patient(client: Any) -> str:
    r = post(client, "Patient", {"resourceType": "Patient", "name": [{"family": "王", "given": ["一"]}]})
    assert r.status_code == 201, r.json
    return str(r.json["id"])


# AuditEvent's 81 revincludes are left out: after the module's other requests (each one audited) they took 76 s.
@pytest.mark.parametrize("rtype, revinclude", [("Patient", True), ("Observation", True), ("AuditEvent", False)])
def test_every_declared_include_and_revinclude_is_accepted(client, cap, rtype, revinclude):
    """searchInclude used to declare "*", which `_include=*` refuses (400): the wildcard is `Type:*`."""
    entry = by_type(cap)[rtype]
    asked = [("_include", v) for v in entry.get("searchInclude", [])]
    asked += [("_revinclude", v) for v in entry.get("searchRevInclude", []) if revinclude]
    refused = []
    for name, value in asked:
        r = client.get(f"/fhir/{rtype}", query_string={name: value, "_count": "1"}, headers=STRICT)
        if r.status_code != 200:
            refused.append((name, value, r.status_code))
    assert not refused, refused[:10]


def test_local_reference_policy_is_not_claimed_while_other_servers_references_are_stored(client, cap):
    """referencePolicy `local` says the server does not support references to other servers (R4
    ReferenceHandlingPolicy); it stores them."""
    r = post(client, "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                     "subject": {"reference": "http://other.example/fhir/Patient/1"}})
    assert r.status_code == 201, r.json
    claims = {p for entry in cap["rest"][0]["resource"] for p in entry["referencePolicy"]}
    assert "local" not in claims


def test_every_accepted_patch_format_is_declared(client, cap):
    """A FHIRPath Patch in XML is applied, so patchFormat must name application/fhir+xml."""
    pid = new_patient(client)
    xml = ('<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>'
           '<part><name value="type"/><valueCode value="add"/></part>'
           '<part><name value="path"/><valueString value="Patient"/></part>'
           '<part><name value="name"/><valueString value="active"/></part>'
           '<part><name value="value"/><valueBoolean value="true"/></part></parameter></Parameters>')
    r = client.patch(f"/fhir/Patient/{pid}", data=xml, content_type="application/fhir+xml")
    assert r.status_code == 200 and r.json["active"] is True
    assert {"application/json-patch+json", "application/fhir+json", "application/fhir+xml"} <= set(cap["patchFormat"])


def test_the_patient_compartment_search_is_declared(client, cap):
    """Patient/{id}/{type} answers, so rest.compartment names the patient CompartmentDefinition."""
    pid = new_patient(client)
    assert client.get(f"/fhir/Patient/{pid}/Observation").status_code == 200
    assert PATIENT_COMPARTMENT in cap["rest"][0].get("compartment", [])


def test_has_is_declared_for_every_type(client, cap):
    r = client.get("/fhir/Patient", query_string={"_has:Observation:patient:code": "x"}, headers=STRICT)
    assert r.status_code == 200, r.json
    assert "_has" in {p["name"] for p in cap["rest"][0]["searchParam"]}


def test_compartment_parameter_is_declared_exactly_where_it_is_accepted(client, cap):
    types = by_type(cap)
    for rtype in ("Observation", "Coverage", "Encounter", "Organization", "Medication", "CodeSystem"):
        accepted = client.get(f"/fhir/{rtype}", query_string={"_compartment": "Patient/x", "_count": "1"},
                              headers=STRICT).status_code == 200
        declared = "_compartment" in {p["name"] for p in types[rtype].get("searchParam", [])}
        assert accepted == declared, (rtype, accepted, declared)


def test_every_declared_search_parameter_names_its_definition(cap):
    """Each searchParam (resource and rest level) with a SearchParameter behind it names it, with the same code and
    type; the rest level's _id, _lastUpdated ... named none."""
    known: dict[str, dict[str, Any]] = {}
    for path in (PROFILES_DIR / "SearchParameter").glob("*.json"):
        doc = json.loads(path.read_text(encoding="utf-8"))
        for sp in [e["resource"] for e in doc.get("entry", [])] if doc["resourceType"] == "Bundle" else [doc]:
            known[sp["url"]] = sp
    by_code = {sp["code"]: url for url, sp in known.items() if "Resource" in sp.get("base", [])}
    rest = cap["rest"][0]
    wrong = []
    for owner, params in [("rest", rest["searchParam"])] + [(r["type"], r.get("searchParam", []))
                                                           for r in rest["resource"]]:
        for p in params:
            sp = known.get(p.get("definition", ""))
            if sp is None:
                if p["name"] in by_code:
                    wrong.append((owner, p["name"], "no definition"))
                continue
            if (sp["code"], sp["type"]) != (p["name"], p["type"]):
                wrong.append((owner, p["name"], sp["code"], sp["type"]))
    assert not wrong, wrong[:10]


def test_the_implementation_guides_operations_are_the_ones_routed(client, cap):
    """ehc-node.json (which the server's CapabilityStatement instantiates) names each Patient operation as it is
    invoked; `patient-merge` was the OperationDefinition's id, but the operation is $merge."""
    ig = json.loads((PROFILES_DIR / "CapabilityStatement" / "ehc-node.json").read_text(encoding="utf-8"))
    served = {o["name"]: o["definition"] for o in by_type(cap)["Patient"]["operation"]}
    served_system = {o["name"]: o["definition"] for o in cap["rest"][0].get("operation", [])}
    ig_rest = ig["rest"][0]
    for op in ig_rest["resource"][0]["operation"]:
        assert served.get(op["name"]) == op["definition"], op
    for op in ig_rest.get("operation", []):
        assert served_system.get(op["name"]) == op["definition"], op
    r = client.post("/fhir/Patient/$merge", data=json.dumps({"resourceType": "Parameters"}), content_type=FJ)
    assert r.status_code != 404


# -- SMART configuration ---------------------------------------------------------------------------------------

PASSWORD = "correct horse 9"


def code_flow(live: str, app_id: str, phone: str, scope: str, **extra: str) -> dict[str, Any]:
    """The authorization-code flow with PKCE, the resident approving: the token response."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    query = {"response_type": "code", "client_id": app_id, "redirect_uri": REDIRECT, "state": "st", "scope": scope,
             "aud": f"{live}/fhir", "code_challenge": challenge, "code_challenge_method": "S256", **extra}
    code = redirect_params(login_and_approve(f"{live}/oauth/authorize?{urlencode(query)}", phone, PASSWORD))["code"]
    tok = requests.post(f"{live}/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                      "redirect_uri": REDIRECT, "client_id": app_id,
                                                      "code_verifier": verifier}, timeout=10)
    assert tok.status_code == 200, tok.text
    return dict(tok.json())


def smart_configuration(live: str) -> dict[str, Any]:
    return dict(requests.get(f"{live}/fhir/.well-known/smart-configuration", timeout=10).json())


def test_ehr_launch_with_an_encounter_is_declared(live, svc):
    """An EHR launch may carry an encounter (/oauth/launch), and the token then names it: that is the SMART
    capability context-ehr-encounter, which the configuration did not list."""
    pid = patient(svc, "孙", "三")
    eid = create(svc, {"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pid}"},
                       "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}})
    account(svc, "13900139001", PASSWORD, pid)
    app_id = register(svc, "launch openid fhirUser patient/*.rs", redirect_uris=[REDIRECT], public=True)["client_id"]
    ehr = secret_token(live, register(svc, "system/*.rs", name="HIS"), "system/*.rs").json()["access_token"]
    made = requests.post(f"{live}/oauth/launch", data={"patient": pid, "encounter": eid},
                         headers={"Authorization": f"Bearer {ehr}"}, timeout=10)
    assert made.status_code == 200, made.text
    tok = code_flow(live, app_id, "13900139001", "launch openid fhirUser patient/*.rs", launch=made.json()["launch"])
    assert tok["encounter"] == eid
    assert "context-ehr-encounter" in smart_configuration(live)["capabilities"]


def test_online_access_is_not_offered_while_it_gives_no_refresh_token(live, svc):
    """SMART's online_access asks for a refresh token usable while the user is online; the server issues refresh
    tokens for offline_access only, so scopes_supported must not offer online_access."""
    pid = patient(svc, "周", "四")
    account(svc, "13900139002", PASSWORD, pid)
    app_id = register(svc, "online_access offline_access patient/*.rs", redirect_uris=[REDIRECT],
                      public=True)["client_id"]
    assert "refresh_token" in code_flow(live, app_id, "13900139002", "offline_access patient/*.rs")
    assert "refresh_token" not in code_flow(live, app_id, "13900139002", "online_access patient/*.rs")
    assert "online_access" not in smart_configuration(live)["scopes_supported"]


def test_metadata_honours_summary_and_elements(client):
    """GET metadata with _summary=true or _elements answers that subset (it always answered the whole ~640 KB
    statement); a _summary value that is no mode is a 400, as on any read."""
    full = client.get("/fhir/metadata").json
    short = client.get("/fhir/metadata?_summary=true").json
    assert short["resourceType"] == "CapabilityStatement" and short["fhirVersion"] == full["fhirVersion"]
    assert short["meta"]["tag"][0]["code"] == "SUBSETTED" and "description" not in short  # not a summary element
    # rest and rest.resource are summary elements, rest.resource.searchParam is not (R4 isSummary)
    patient = next(r for r in short["rest"][0]["resource"] if r["type"] == "Patient")
    assert "searchParam" not in patient and "searchParam" in full["rest"][0]["resource"][0]
    assert len(json.dumps(short)) < len(json.dumps(full)) / 4
    picked = client.get("/fhir/metadata?_elements=format,patchFormat").json
    assert set(picked) - {"resourceType", "id", "meta"} == {"format", "patchFormat"}
    assert client.get("/fhir/metadata?_summary=bogus").status_code == 400


def test_summary_true_keeps_the_summary_elements_of_every_type(client):
    """_summary=true keeps what R4 marks isSummary, for every type and inside backbone elements (a hand list
    covered eight types: a Condition kept only its id)."""
    client.put("/fhir/Patient/sum-p", data=json.dumps({"resourceType": "Patient", "id": "sum-p"}),
               content_type="application/fhir+json")
    cid = client.post("/fhir/Condition", data=json.dumps({
        "resourceType": "Condition", "code": {"text": "头痛"}, "subject": {"reference": "Patient/sum-p"},
        "note": [{"text": "not a summary element"}]}), content_type="application/fhir+json")
    assert cid.status_code == 201, cid.json
    got = client.get(f"/fhir/Condition/{cid.json['id']}?_summary=true").json
    assert got["code"] == {"text": "头痛"} and got["subject"] == {"reference": "Patient/sum-p"} and "note" not in got
    oid = client.post("/fhir/Observation", data=json.dumps({
        "resourceType": "Observation", "status": "final", "code": {"text": "血压"},
        "component": [{"code": {"text": "收缩压"}, "valueQuantity": {"value": 120},
                       "interpretation": [{"text": "正常"}]}]}), content_type="application/fhir+json").json["id"]
    bundle = client.get(f"/fhir/Observation?_id={oid}&_summary=true").json
    assert bundle["entry"][0]["resource"]["component"] == [{"code": {"text": "收缩压"},
                                                           "valueQuantity": {"value": 120}}]
