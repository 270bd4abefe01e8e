"""FHIR XML in and out (application/fhir+xml, _format=xml) for every interaction and resource type; the JSON
-> XML -> JSON round trip is lossless. (HAPI's own parser checks our XML in test_hl7_validator.py.)"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from app.core.fhirjson import dumps, loads
from app.fhir.xml import from_xml, to_xml
from tests.conftest import sample
from tests.fhir_factory import STRUCTURE, minimal

FX = "application/fhir+xml"
WRITABLE = sorted(STRUCTURE.resources - {"Parameters", "AuditEvent"})
RICH = (b'{"resourceType":"Patient","id":"rich-1","meta":{"profile":["http://example.org/p"]},'
        b'"text":{"status":"generated","div":"<div xmlns=\\"http://www.w3.org/1999/xhtml\\">'
        b'<p class=\\"x\\">\xe5\xbc\xa0\xe4\xbc\x9f &amp; <b>co</b><br/></p></div>"},'
        b'"contained":[{"resourceType":"Organization","id":"org","name":"Clinic \\"A\\""}],'
        b'"extension":[{"url":"http://example.org/ext","extension":[{"url":"a","valueDecimal":1.50},'
        b'{"url":"b","valueBoolean":false}]}],'
        b'"identifier":[{"system":"urn:ehc:mrn:org-1","value":"line1\\nline2\\ttab"}],'
        b'"name":[{"family":"\xe5\xbc\xa0","given":["A",null,"C"],"_given":[null,{"extension":'
        b'[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason","valueCode":"unknown"}]},'
        b'{"id":"g3"}]}],'
        b'"_birthDate":{"extension":[{"url":"http://hl7.org/fhir/StructureDefinition/data-absent-reason",'
        b'"valueCode":"masked"}]},"multipleBirthInteger":2,"managingOrganization":{"reference":"#org"}}')


def test_rich_resource_round_trip_is_lossless() -> None:
    res = loads(RICH)
    xml = to_xml(STRUCTURE, res)
    assert xml.startswith(b'<?xml version="1.0" encoding="UTF-8"?><Patient xmlns="http://hl7.org/fhir">')
    assert b'<valueDecimal value="1.50"/>' in xml and b'<extension url="a">' in xml
    assert b'value="line1&#10;line2&#9;tab"' in xml
    assert b'<given id="g3" value="C"/>' in xml
    assert b"<contained><Organization" in xml
    back = from_xml(STRUCTURE, xml)
    assert back == res and dumps(back).count(b"1.50") == 1
    assert from_xml(STRUCTURE, to_xml(STRUCTURE, res, pretty=True)) == res


@pytest.mark.parametrize("rtype", sorted(STRUCTURE.resources))
def test_every_type_round_trips(rtype: str) -> None:
    res = loads(dumps(minimal(rtype, "p1")))
    assert from_xml(STRUCTURE, to_xml(STRUCTURE, res)) == res


@pytest.mark.parametrize(
    ("xml", "expect"),
    [
        (b'<Patient xmlns="http://hl7.org/fhir"><foo value="1"/></Patient>', "Patient.foo"),
        (b'<Patient xmlns="http://hl7.org/fhir"><active value="yes"/></Patient>', "Patient.active"),
        (b'<Patient xmlns="http://hl7.org/fhir"><active>true</active></Patient>', "Patient.active"),
        (b"<Patient><active value=\"true\"/></Patient>", "FHIR namespace"),
        (b'<Nope xmlns="http://hl7.org/fhir"/>', "not a FHIR R4 resource type"),
        (b'<!DOCTYPE p [<!ENTITY x SYSTEM "file:///etc/passwd">]><Patient xmlns="http://hl7.org/fhir">'
         b'<gender value="&x;"/></Patient>', "DOCTYPE"),
        (b'<Patient xmlns="http://hl7.org/fhir"><gender value="male"/><gender value="male"/></Patient>',
         "does not repeat"),
        (b'<Patient xmlns="http://hl7.org/fhir"><active value="true"/>', "well-formed"),
        (b"<a>" * 200 + b"</a>" * 200, "nested"),
    ],
)
def test_bad_xml_is_a_400_naming_the_problem(client: Any, xml: bytes, expect: str) -> None:
    r = client.post("/fhir/Patient", data=xml, content_type=FX, headers={"Accept": FX})
    assert r.status_code == 400
    assert r.headers["Content-Type"].startswith(FX)
    outcome = from_xml(STRUCTURE, r.data)
    assert outcome["resourceType"] == "OperationOutcome"
    text = " ".join(i["diagnostics"] + " ".join(i.get("expression", [])) for i in outcome["issue"])
    assert expect in text


def _patient_xml() -> bytes:
    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    return to_xml(STRUCTURE, pat)


def test_xml_crud_search_history(client: Any) -> None:
    r = client.post("/fhir/Patient", data=_patient_xml(), content_type=FX, headers={"Accept": FX})
    assert r.status_code == 201 and r.headers["Content-Type"].startswith(FX)
    created = from_xml(STRUCTURE, r.data)
    pid = created["id"]
    obs = to_xml(STRUCTURE, loads(
        b'{"resourceType":"Observation","status":"final","code":{"text":"glucose"},'
        b'"subject":{"reference":"Patient/' + pid.encode() + b'"},"valueQuantity":{"value":6.30,"unit":"mmol/L"}}'))
    r = client.post("/fhir/Observation", data=obs, content_type=FX)  # XML in, JSON out (no Accept)
    assert r.status_code == 201 and b'"value":6.30' in r.data
    oid = r.json["id"]
    got = client.get(f"/fhir/Observation/{oid}?_format=xml")
    assert got.headers["Content-Type"].startswith(FX) and b'<value value="6.30"/>' in got.data
    doc = from_xml(STRUCTURE, got.data)
    doc["status"] = "amended"
    r = client.put(f"/fhir/Observation/{oid}", data=to_xml(STRUCTURE, doc), content_type=FX,
                   headers={"Accept": "application/fhir+xml;q=0.9, text/html;q=0.1"})
    assert r.status_code == 200 and b'<status value="amended"/>' in r.data
    for path in (f"Observation?_id={oid}", f"Observation/{oid}/_history", f"Observation/{oid}/_history/1",
                 f"Patient/{pid}"):
        r = client.get(f"/fhir/{path}", headers={"Accept": FX})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith(FX), path
        parsed = from_xml(STRUCTURE, r.data)
        assert parsed["resourceType"] in ("Bundle", "Observation", "Patient")
    bundle = from_xml(STRUCTURE, client.get(f"/fhir/Observation/{oid}/_history?_format=xml").data)
    assert [e["resource"]["status"] for e in bundle["entry"]] == ["amended", "final"]
    assert client.get("/fhir/Observation/nope?_format=xml").status_code == 404


def test_xml_transaction(client: Any) -> None:
    pat = loads(dumps(minimal("Patient")))
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-4111-8111-111111111111", "resource": pat,
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                      "subject": {"reference": "urn:uuid:11111111-1111-4111-8111-111111111111"}},
         "request": {"method": "POST", "url": "Encounter"}}]}
    r = client.post("/fhir", data=to_xml(STRUCTURE, tx), content_type=FX, headers={"Accept": FX})
    assert r.status_code == 200, r.data[:500]
    out = from_xml(STRUCTURE, r.data)
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"][:3] for e in out["entry"]] == ["201", "201"]


def test_what_is_not_a_resource_stays_json(client: Any) -> None:
    r = client.get("/fhir/.well-known/smart-configuration?_format=xml")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    assert r.json is not None


def test_an_xml_answer_quoting_control_characters_of_the_request_is_well_formed(client):
    """Stored resources never hold a character XML 1.0 cannot (the validator refuses them), but an answer can
    quote the request: a 404 naming an id with %01 in it, a self link with such a parameter name. Those answers
    were not well-formed XML; such characters are now written as U+FFFD."""
    from xml.parsers import expat

    for url in ("/fhir/Patient/%01?_format=xml", "/fhir/Patient?zz%01=1&_format=xml",
                "/fhir/Observation/%EF%BF%BF/_history/1?_format=xml"):
        r = client.get(url)
        assert r.headers["Content-Type"].startswith("application/fhir+xml")
        expat.ParserCreate().Parse(r.get_data(), True)  # raises if not well-formed
        assert "\ufffd" in r.get_data(as_text=True), url
