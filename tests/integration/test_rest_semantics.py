"""REST semantics a FHIR client relies on (R4 http.html, search.html, fhirpatch.html): history and $everything
paging, _include:iterate and wildcards, the CapabilityStatement against what answers, Binary in its own content
type, FHIRPath Patch, If-Modified-Since, Prefer inside bundles, fhirVersion negotiation, raw UTF-8 query strings,
re-registration without a new version, $validate's business rules, compartment search."""

from __future__ import annotations

import base64
import json
import socket
import uuid
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import sample
from tests.live import serve_in_thread

FJ = "application/fhir+json"


def post(client: Any, path: str, body: dict[str, Any], **headers: str) -> Any:
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=headers)


def new_patient(**extra: Any) -> dict[str, Any]:
    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    return {**pat, **extra}


def obs(pid: str, code: str = "2345-7", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 5.4, "unit": "mmol/L"}, **extra}


def follow(client: Any, url: str) -> Any:
    parts = urlsplit(url)
    return client.get(parts.path + ("?" + parts.query if parts.query else ""))


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle.get("link", []) if link["relation"] == "next"), None)


# -- history ------------------------------------------------------------------------------------------------

def test_instance_history_pages_with_a_true_total(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    for i in range(4):
        pat = client.get(f"/fhir/Patient/{pid}").json
        pat["active"] = bool(i % 2)
        client.put(f"/fhir/Patient/{pid}", data=json.dumps(pat), content_type=FJ)
    first = client.get(f"/fhir/Patient/{pid}/_history?_count=2").json
    assert first["total"] == 5 and [e["response"]["etag"] for e in first["entry"]] == ['W/"5"', 'W/"4"']
    versions = [e["response"]["etag"] for e in first["entry"]]
    url = next_link(first)
    while url:
        page = follow(client, url).json
        versions += [e["response"]["etag"] for e in page["entry"]]
        url = next_link(page)
    assert versions == [f'W/"{v}"' for v in (5, 4, 3, 2, 1)]


def test_type_and_system_history_page_past_the_default(client):
    for _ in range(25):
        post(client, "Organization", {"resourceType": "Organization", "name": f"org {uuid.uuid4().hex[:6]}"})
    for path in ("/fhir/Organization/_history", "/fhir/_history"):
        first = client.get(path).json
        assert len(first["entry"]) == 20 and next_link(first), path
        seen = {(e["fullUrl"], e["response"]["etag"]) for e in first["entry"]}
        second = follow(client, next_link(first)).json
        again = {(e["fullUrl"], e["response"]["etag"]) for e in second["entry"]}
        assert second["entry"] and not seen & again, path


# -- $everything -------------------------------------------------------------------------------------------

def test_everything_pages_and_counts_the_whole_result(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    for _ in range(5):
        post(client, "Observation", obs(pid))
    first = client.get(f"/fhir/Patient/{pid}/$everything?_count=2").json
    assert first["total"] == 6 and len(first["entry"]) == 2
    assert any(link["relation"] == "self" for link in first["link"])
    ids = [e["resource"]["id"] for e in first["entry"]]
    url = next_link(first)
    while url:
        page = follow(client, url).json
        ids += [e["resource"]["id"] for e in page["entry"] if e["search"]["mode"] != "outcome"]
        url = next_link(page)
    assert len(ids) == len(set(ids)) == 6 and ids[0] == pid


# -- includes ------------------------------------------------------------------------------------------------

def test_include_iterate_follows_plainly_included_resources_and_wildcards_work(client):
    org = post(client, "Organization", {"resourceType": "Organization", "name": "协和"}).json["id"]
    pid = post(client, "Patient", new_patient(managingOrganization={"reference": f"Organization/{org}"})).json["id"]
    oid = post(client, "Observation", obs(pid, code="INC-1")).json["id"]
    r = client.get("/fhir/Observation?code=INC-1&_include=Observation:patient"
                   "&_include:iterate=Patient:organization")
    got = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in r.json["entry"]}
    assert {("Observation", "match"), ("Patient", "include"), ("Organization", "include")} <= got
    assert "_include%3Aiterate" in r.json["link"][0]["url"] or "_include:iterate" in r.json["link"][0]["url"]
    r = client.get("/fhir/Observation?code=INC-1&_include=Observation:*")
    assert r.status_code == 200
    assert {e["resource"]["id"] for e in r.json["entry"]} >= {oid, pid}


# -- CapabilityStatement ---------------------------------------------------------------------------------------

def test_capability_statement_says_only_what_answers(client):
    cs = client.get("/fhir/metadata").json
    rest = cs["rest"][0]
    assert rest.get("operation") != []
    by_type = {r["type"]: r for r in rest["resource"]}
    audit = by_type["AuditEvent"]
    assert audit["conditionalDelete"] == "not-supported" and audit["readHistory"] is False
    assert by_type["Patient"]["conditionalRead"] == "full-support"
    assert "Observation:patient" in by_type["Patient"]["searchRevInclude"]
    assert client.delete("/fhir/AuditEvent?_id=x").status_code == 405
    for r in rest["resource"]:
        for key, value in r.items():
            assert value != [], (r["type"], key)


TYPE_VALUES = {"token": "x", "string": "x", "date": "2020", "reference": "Patient/x", "quantity": "5",
               "number": "5", "uri": "http://x.example"}


def test_every_declared_search_parameter_is_accepted(client):
    cs = client.get("/fhir/metadata").json
    refused = []
    for r in cs["rest"][0]["resource"]:
        for p in r.get("searchParam", []):
            value = TYPE_VALUES.get(p["type"])
            if value is None:
                continue
            resp = client.get(f"/fhir/{r['type']}", query_string={p["name"]: value, "_count": "1"},
                              headers={"Prefer": "handling=strict"})
            if resp.status_code != 200:
                refused.append((r["type"], p["name"], resp.status_code))
    assert not refused, refused[:20]


# -- Binary ------------------------------------------------------------------------------------------------------

def test_binary_in_its_own_content_type(client):
    pdf = b"%PDF-1.4\n% fake but bytes\n"
    r = client.post("/fhir/Binary", data=pdf, content_type="application/pdf")
    assert r.status_code == 201, r.json
    bid = r.json["id"]
    raw = client.get(f"/fhir/Binary/{bid}", headers={"Accept": "application/pdf"})
    assert raw.status_code == 200 and raw.data == pdf and raw.mimetype == "application/pdf"
    res = client.get(f"/fhir/Binary/{bid}", headers={"Accept": FJ}).json
    assert res["contentType"] == "application/pdf" and base64.b64decode(res["data"]) == pdf
    # Accept is read by quality value, not by order: the first type listed is not the one most wanted
    raw = client.get(f"/fhir/Binary/{bid}", headers={"Accept": f"{FJ};q=0.5, application/pdf"})
    assert raw.status_code == 200 and raw.data == pdf, raw.data[:100]
    res = client.get(f"/fhir/Binary/{bid}", headers={"Accept": f"application/pdf;q=0.1, {FJ}"}).json
    assert res["resourceType"] == "Binary"
    raw = client.get(f"/fhir/Binary/{bid}", headers={"Accept": "image/png, application/pdf;q=0.8"})
    assert raw.status_code == 200 and raw.data == pdf  # the second choice, which the Binary is
    refused = client.get(f"/fhir/Binary/{bid}", headers={"Accept": "image/png, application/pdf;q=0"})
    assert refused.status_code == 406, refused.json


# -- PATCH ---------------------------------------------------------------------------------------------------------

def test_patch_answers_location_and_fhirpath_patch_works(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    ops = [{"op": "add", "path": "/active", "value": False}]  # the sample is active: a change, so version 2
    r = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(ops), content_type="application/json-patch+json")
    assert r.status_code == 200 and r.headers["Location"].endswith(f"/Patient/{pid}/_history/2")
    assert r.headers["Content-Location"] == r.headers["Location"]
    params = {"resourceType": "Parameters", "parameter": [
        {"name": "operation", "part": [{"name": "type", "valueCode": "replace"},
                                       {"name": "path", "valueString": "Patient.active"},
                                       {"name": "value", "valueBoolean": False}]},
        {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
                                       {"name": "path", "valueString": "Patient"},
                                       {"name": "name", "valueString": "telecom"},
                                       {"name": "value", "valueContactPoint": {"system": "email",
                                                                               "value": "a@example.cn"}}]},
    ]}
    r = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(params), content_type=FJ)
    assert r.status_code == 200, r.json
    assert r.json["active"] is False and {"system": "email", "value": "a@example.cn"} in r.json["telecom"]
    bad = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
        {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.name.given.foo()"},
        {"name": "value", "valueString": "x"}]}]}
    r = client.patch(f"/fhir/Patient/{pid}", data=json.dumps(bad), content_type=FJ)
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["Parameters.parameter[0]"]


def test_a_conditional_update_sent_with_if_none_exist_does_not_wait_for_itself(client, services, monkeypatch):
    """A conditional update that matches nothing creates. Sent with an If-None-Exist of the same criteria, it
    waited for the criteria lease it held itself, until the lease expired (10 s) and it took it over."""
    taken_over: list[dict] = []
    monkeypatch.setattr(services.leases, "before_takeover", taken_over.append)
    org = {"resourceType": "Organization", "name": "自等", "identifier": [{"system": "urn:test:cu", "value": "self"}]}
    r = client.put("/fhir/Organization?identifier=urn:test:cu|self", data=json.dumps(org), content_type=FJ,
                   headers={"If-None-Exist": "identifier=urn:test:cu|self"})
    assert r.status_code == 201, r.json
    assert taken_over == []


def test_conditional_patch_patches_the_one_match(client):
    """PATCH [type]?criteria (R4 http.html#patch): the one match is patched; none is 404 and several 412, and
    neither changes anything."""
    def patch(query: str) -> Any:
        ops = [{"op": "add", "path": "/active", "value": True}]
        return client.patch(f"/fhir/Organization?{query}", data=json.dumps(ops),
                            content_type="application/json-patch+json")

    ident = {"system": "urn:test:cp", "value": "only"}
    org = {"resourceType": "Organization", "name": "一家", "identifier": [ident]}
    oid = post(client, "Organization", org).json["id"]
    r = patch("identifier=urn:test:cp|only")
    assert r.status_code == 200 and r.json["id"] == oid and r.json["active"] is True, r.json
    assert r.headers["Location"].endswith(f"/Organization/{oid}/_history/2")
    assert patch("identifier=urn:test:cp|nobody").status_code == 404
    for name in ("两家甲", "两家乙"):
        post(client, "Organization", {"resourceType": "Organization", "name": name,
                                      "identifier": [{"system": "urn:test:cp", "value": "two"}]})
    r = patch("identifier=urn:test:cp|two")
    assert r.status_code == 412 and r.json["resourceType"] == "OperationOutcome", r.json
    assert client.get("/fhir/Organization?identifier=urn:test:cp|two&active=true").json["total"] == 0
    r = client.patch("/fhir/Organization", data="[]", content_type="application/json-patch+json")
    assert r.status_code == 400 and "criteria" in r.json["issue"][0]["diagnostics"]


# -- headers -------------------------------------------------------------------------------------------------------

def test_if_modified_since(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    assert client.get(f"/fhir/Patient/{pid}",
                      headers={"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}",
                      headers={"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"}).status_code == 200


def test_prefer_applies_inside_transactions(client):
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:8a1f0d2e-3c4b-4d5e-9f60-718293a4b5c6", "resource": new_patient(),
         "request": {"method": "POST", "url": "Patient"}}]}
    r = post(client, "", bundle, Prefer="return=minimal")
    entry = r.json["entry"][0]
    assert r.status_code == 200 and "resource" not in entry and entry["response"]["status"].startswith("201")
    r = post(client, "", {**bundle, "entry": [{**bundle["entry"][0], "resource": new_patient()}]},
             Prefer="return=OperationOutcome")
    assert r.json["entry"][0]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_other_fhir_versions_are_refused(client):
    assert client.get("/fhir/Patient", headers={"Accept": "application/fhir+json; fhirVersion=3.0"}
                      ).status_code == 406
    r = client.post("/fhir/Patient", data=json.dumps(new_patient()),
                    content_type="application/fhir+json; fhirVersion=3.0")
    assert r.status_code == 415 and r.json["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/Patient", headers={"Accept": "application/fhir+json; fhirVersion=4.0"}
                      ).status_code == 200


@pytest.fixture(scope="module")
def live_base(app: Any) -> Any:
    with serve_in_thread(app) as base:
        yield base


def test_raw_utf8_in_the_query_string(client, live_base):
    # werkzeug's server splits a request line on U+00A0 and U+0085, so the name avoids UTF-8 bytes A0 and 85
    # (张 is E5 BC A0); what it lets through is read as UTF-8, and what it cannot gets a FHIR OperationOutcome.
    post(client, "Patient", new_patient(name=[{"family": "王", "given": ["伟"]}]))
    host, port = live_base.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall("GET /fhir/Patient?name=伟 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    bundle = json.loads(body)
    assert bundle["resourceType"] == "Bundle" and bundle["total"] >= 1
    self_url = bundle["link"][0]["url"]
    assert parse_qs(urlsplit(self_url).query)["name"] == ["伟"]


# -- registration and $validate ------------------------------------------------------------------------------------

def test_a_re_registration_that_adds_nothing_makes_no_version(client):
    pat = new_patient()
    first = post(client, "Patient", pat)
    again = post(client, "Patient", pat)
    assert first.status_code == 201 and again.status_code == 200
    assert again.json["meta"]["versionId"] == first.json["meta"]["versionId"]


def test_validate_applies_the_business_rules_of_create(client):
    bad = new_patient(identifier=[{"system": "urn:oid:2.16.156.10011.1.3", "value": "110101200001010011"}])
    r = post(client, "Patient/$validate", bad)
    assert r.status_code == 200
    assert any(i["severity"] == "error" and "Patient.identifier" in (i.get("expression") or [""])[0]
               for i in r.json["issue"])
    assert post(client, "Patient", bad).status_code == 422


# -- searchsets ------------------------------------------------------------------------------------------------------

def test_the_compartment_counts_every_compartment_parameter(client):
    """R4's patient compartment: a Coverage is the patient's as beneficiary or payor too, an Observation as
    performer; GET Patient/{id}/{type} finds them all, and only them (issue #8, found by the client matrix)."""
    pid, other = (post(client, "Patient", new_patient()).json["id"] for _ in range(2))
    coverage = {"resourceType": "Coverage", "status": "active", "payor": [{"display": "医保"}]}
    as_beneficiary = post(client, "Coverage", {**coverage, "beneficiary": {"reference": f"Patient/{pid}"}}).json["id"]
    as_payor = post(client, "Coverage", {**coverage, "beneficiary": {"reference": f"Patient/{other}"},
                                         "payor": [{"reference": f"Patient/{pid}"}]}).json["id"]
    foreign = post(client, "Coverage", {**coverage, "beneficiary": {"reference": f"Patient/{other}"}}).json["id"]
    by_subject = post(client, "Observation", obs(pid)).json["id"]
    performed = {**obs(other), "performer": [{"reference": f"Patient/{pid}"}]}
    by_performer = post(client, "Observation", performed).json["id"]
    r = client.get(f"/fhir/Patient/{pid}/Coverage")
    assert sorted(e["resource"]["id"] for e in r.json["entry"]) == sorted([as_beneficiary, as_payor])
    assert r.json["total"] == 2 and foreign not in r.get_data(as_text=True)
    r = client.get(f"/fhir/Patient/{pid}/Observation?_count=1")
    first = [e["resource"]["id"] for e in r.json["entry"]]
    links = {link["relation"]: link["url"] for link in r.json["link"]}
    # the links are the search as asked for: the compartment path, the caller's parameters, no _compartment
    assert links["self"].endswith(f"/fhir/Patient/{pid}/Observation?_count=1"), links["self"]
    assert links["next"].split("?")[0].endswith(f"/fhir/Patient/{pid}/Observation")
    assert "_compartment" not in links["next"] and "_count=1" in links["next"]
    nxt = links["next"]
    second = [e["resource"]["id"] for e in client.get(nxt[nxt.index("/fhir/"):]).json["entry"]]
    assert sorted(first + second) == sorted([by_subject, by_performer])
    # the same constraint as a parameter, combinable with others; refused where it means nothing
    r = client.get(f"/fhir/Coverage?_compartment=Patient/{pid}&status=active&_summary=count")
    assert r.json["total"] == 2
    r = client.get(f"/fhir/Organization?_compartment=Patient/{pid}")
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["_compartment"]
    assert client.get(f"/fhir/Coverage?_compartment=Observation/{pid}").status_code == 400


def test_compartment_search_and_searchset_details(client):
    pid = post(client, "Patient", new_patient()).json["id"]
    oid = post(client, "Observation", obs(pid)).json["id"]
    r = client.get(f"/fhir/Patient/{pid}/Observation")
    assert r.status_code == 200 and [e["resource"]["id"] for e in r.json["entry"]] == [oid]
    r = client.get("/fhir/Patient?unknown-param=1")
    outcome = [e for e in r.json["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["fullUrl"]
    match = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": new_patient()}]}
    r = post(client, "Patient/$match", match)
    assert any(link["relation"] == "self" for link in r.json["link"])
