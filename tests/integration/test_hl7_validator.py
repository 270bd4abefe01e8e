"""The HL7 validator stage: HAPI FHIR 8.4.0's FhirInstanceValidator (tools/validator, one JVM for the module)
checks every conformance resource in fhir_profiles and what the server answers for every resource type
(create, read, update, history, search, XML, transaction, errors, audit events, the CapabilityStatement);
HAPI's strict parser checks that our JSON -> XML -> JSON round trip is lossless. Target: zero errors
(warnings, such as missing narrative, are allowed)."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.core.fhirjson import dumps, loads
from app.fhir.xml import from_xml
from tests.conftest import sample
from tests.fhir_factory import STRUCTURE, minimal
from tests.hl7_validator import ROOT, HL7Validator, errors

pytestmark = pytest.mark.skipif(shutil.which("java") is None or shutil.which("mvn") is None,
                                reason="the HL7 validator stage needs Java 17 and Maven")
FJ = "application/fhir+json"
TYPES = json.loads((ROOT / "fhir_profiles" / "resource-types.json").read_text(encoding="utf-8"))["resourceTypes"]
WRITABLE = sorted(t for t, conf in TYPES.items() if "create" in conf["interactions"])


@pytest.fixture(scope="module")
def hl7() -> Iterator[HL7Validator]:
    v = HL7Validator.start()
    yield v
    v.close()


@pytest.fixture(scope="module")
def served(app: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Responses of the server for a representative set of interactions on every resource type."""
    client = app.test_client()
    out = tmp_path_factory.mktemp("served")
    n = 0

    def keep(name: str, data: bytes, ext: str = "json") -> None:
        nonlocal n
        n += 1
        (out / f"{n:04d}-{name}.{ext}").write_bytes(data)

    def send(method: str, path: str, body: Any = None) -> Any:
        r = client.open(f"/fhir/{path}", method=method, data=dumps(body) if body is not None else None,
                        content_type=FJ)
        return r

    pat = sample("patient-zhang.json")
    pat["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
    r = send("POST", "Patient", pat)
    assert r.status_code == 201
    pid = r.json["id"]
    for rtype in WRITABLE:
        r = send("POST", rtype, minimal(rtype, pid))
        assert r.status_code == 201, (rtype, r.json)
        keep(f"{rtype}-created", r.data)
        rid = r.json["id"]
        body = loads(r.data)
        body["meta"] = {"tag": [{"system": "http://example.org/tags", "code": "v2"}]}
        keep(f"{rtype}-updated", send("PUT", f"{rtype}/{rid}", body).data)
        keep(f"{rtype}-history", send("GET", f"{rtype}/{rid}/_history").data)
        keep(f"{rtype}-search", send("GET", f"{rtype}?_id={rid}&_total=accurate").data)
        keep(f"{rtype}-read", client.get(f"/fhir/{rtype}/{rid}?_format=xml").data, "xml")
    keep("Patient-history-xml", client.get(f"/fhir/Patient/{pid}/_history?_format=xml").data, "xml")
    keep("Observation-type-history", send("GET", "Observation/_history?_count=5").data)
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:22222222-2222-4222-8222-222222222222",
         "resource": minimal("Encounter", pid), "request": {"method": "POST", "url": "Encounter"}},
        {"resource": {**minimal("Condition", pid),
                      "encounter": {"reference": "urn:uuid:22222222-2222-4222-8222-222222222222"}},
         "request": {"method": "POST", "url": "Condition"}}]}
    r = send("POST", "", tx)
    assert r.status_code == 200, r.json
    keep("transaction-response", r.data)
    keep("AuditEvent-search", send("GET", "AuditEvent?_count=20").data)  # the server's own audit trail
    keep("CapabilityStatement", send("GET", "metadata").data)
    keep("OperationDefinition-search", send("GET", "OperationDefinition").data)  # the server's own
    keep("OperationDefinition-read-xml", client.get("/fhir/OperationDefinition/ehc-status?_format=xml").data, "xml")
    keep("CapabilityStatement-xml", client.get("/fhir/metadata?_format=xml").data, "xml")
    keep("error-400", client.post("/fhir/Patient", data=b'{"resourceType":"Patient","active":"true"}',
                                  content_type=FJ).data)
    keep("error-404", send("GET", "Patient/nobody").data)
    keep("error-xml", client.get("/fhir/Patient/nobody?_format=xml").data, "xml")
    return out


def test_fhir_profiles_have_no_errors(hl7: HL7Validator, tmp_path: Path) -> None:
    count = 0
    for path in sorted((ROOT / "fhir_profiles").rglob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(doc, dict) and "resourceType" in doc:  # not the server's own configuration files
            count += 1
            shutil.copy(path, tmp_path / f"{path.parent.name}-{path.name}")
    results = hl7.validate(tmp_path)
    assert len(results) == count and count > 15
    found = errors(results)
    assert not found, "\n".join(found)


def test_server_responses_have_no_errors(hl7: HL7Validator, served: Path) -> None:
    results = hl7.validate(served)
    assert len(results) == len(list(served.iterdir())) > 5 * len(WRITABLE)
    found = errors(results)
    assert not found, "\n".join(found)


def _normal(res: dict[str, Any]) -> dict[str, Any]:
    """HAPI writes the narrative div with its own spacing; everything else must be identical."""
    out = json.loads(dumps(res))
    if isinstance(out.get("text"), dict) and "div" in out["text"]:
        out["text"]["div"] = "".join(out["text"]["div"].split())
    return out


@pytest.mark.parametrize("rtype", ["Patient", "Observation", "Questionnaire", "Bundle", "Claim"])
def test_round_trip_through_hapi_is_lossless(hl7: HL7Validator, client: Any, tmp_path: Path,
                                             rtype: str) -> None:
    res = loads(dumps(minimal(rtype)))
    if rtype == "Patient":
        res = loads((ROOT / "tests" / "samples" / "patient-zhang.json").read_bytes())
        res["identifier"] = [{"system": "urn:ehc:mrn:org-1", "value": uuid.uuid4().hex}]
        res["_birthDate"] = {"extension": [{"url": "http://example.org/x", "valueDecimal": loads(b"1.50")}]}
    r = client.post(f"/fhir/{rtype}", data=dumps(res), content_type=FJ)
    assert r.status_code == 201, r.json
    ours_json = loads(r.data)
    ours_xml = client.get(f"/fhir/{rtype}/{ours_json['id']}?_format=xml").data
    (tmp_path / "ours.xml").write_bytes(ours_xml)
    (tmp_path / "ours.json").write_bytes(dumps(ours_json))
    from_xml_by_hapi = hl7.convert(tmp_path / "ours.xml")
    assert "error" not in from_xml_by_hapi, from_xml_by_hapi
    # our XML, read by HAPI's strict parser, is our JSON
    assert _normal(loads(from_xml_by_hapi["json"])) == _normal(ours_json)
    # HAPI's XML of our JSON, read by our parser, is our JSON
    from_json_by_hapi = hl7.convert(tmp_path / "ours.json")
    assert "error" not in from_json_by_hapi, from_json_by_hapi
    assert _normal(from_xml(STRUCTURE, from_json_by_hapi["xml"].encode())) == _normal(ours_json)


def test_every_type_round_trips_through_hapi(hl7: HL7Validator, tmp_path: Path) -> None:
    """For each R4 type: HAPI reads our XML into our JSON, and our parser reads HAPI's XML into our JSON."""
    from app.fhir.xml import to_xml

    problems = []
    for rtype in sorted(STRUCTURE.resources):
        res = loads(dumps(minimal(rtype, "p1")))
        res["id"] = "x1"
        (tmp_path / f"{rtype}.xml").write_bytes(to_xml(STRUCTURE, res))
        (tmp_path / f"{rtype}.json").write_bytes(dumps(res))
        by_hapi = hl7.convert(tmp_path / f"{rtype}.xml")
        if "error" in by_hapi or _normal(loads(by_hapi["json"])) != _normal(res):
            problems.append(f"{rtype}: our XML read by HAPI: {by_hapi.get('error') or by_hapi['json']}")
            continue
        hapi_xml = hl7.convert(tmp_path / f"{rtype}.json")
        if "error" in hapi_xml or _normal(from_xml(STRUCTURE, hapi_xml["xml"].encode())) != _normal(res):
            problems.append(f"{rtype}: HAPI's XML read by us: {hapi_xml.get('error') or hapi_xml['xml']}")
    assert not problems, "\n".join(problems)
