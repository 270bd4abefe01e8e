"""The server's own OperationDefinitions: every operation the CapabilityStatement names by a canonical of this
server resolves on it (`GET OperationDefinition?url=<canonical>`, `GET OperationDefinition/{id}`), without a
token as /metadata, read-only, valid R4, and saying what the route table really does (levels, methods)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.fhir.operations import OPERATIONS
from app.fhir.operations.definition import CANONICAL_BASE, operation_definition
from app.fhir.validation import Validator
from app.profiles import PROFILES_DIR
from tests.integration.auth_helpers import *  # noqa: F403  (the auth-on app: `web`, `svc`)
from tests.integration.auth_helpers import bearer, stored_token

FJ = "application/fhir+json"
HL7_EVERYTHING = "http://hl7.org/fhir/OperationDefinition/Patient-everything"


@pytest.fixture(scope="module")
def cap(app: Any) -> dict[str, Any]:
    return dict(app.test_client().get("/fhir/metadata").json)


def declared(cap: dict[str, Any]) -> list[tuple[str | None, str, str]]:
    """(resource type or None for the system level, operation name, definition) of every declared operation."""
    rest = cap["rest"][0]
    out = [(None, o["name"], o["definition"]) for o in rest.get("operation", [])]
    out += [(r["type"], o["name"], o["definition"]) for r in rest["resource"] for o in r.get("operation", [])]
    return out


def one(client: Any, query: str) -> dict[str, Any]:
    r = client.get(f"/fhir/OperationDefinition?{query}")
    assert r.status_code == 200, r.json
    entries = [e for e in r.json.get("entry", []) if e["search"]["mode"] == "match"]
    assert len(entries) == 1 and r.json["total"] == 1, (query, r.json)
    return dict(entries[0]["resource"])


def test_every_own_canonical_of_the_capability_statement_resolves(client, cap):
    own = [(t, n, d) for t, n, d in declared(cap) if d.startswith(CANONICAL_BASE)]
    assert {n for _, n, _ in own} >= {"ehc-qrcode", "ehc-status", "ehc-verify", "merge", "everything", "validate"}
    for rtype, name, url in own:
        od = one(client, f"url={url}")
        assert od["url"] == url and od["code"] == name
        levels = {lvl for lvl in ("system", "type", "instance") if od[lvl]}
        assert levels == set(OPERATIONS[name]["levels"]), name
        if rtype is not None:
            assert rtype in od["resource"] or od["resource"] == ["Resource"], (name, rtype)
        r = client.get(f"/fhir/OperationDefinition/{od['id']}")
        assert r.status_code == 200 and r.json["url"] == url
        assert r.headers["ETag"] == f'W/"{r.json["meta"]["versionId"]}"'
        assert client.get(f"/fhir/OperationDefinition/{od['id']}",
                          headers={"If-None-Match": r.headers["ETag"]}).status_code == 304


def test_everything_points_to_the_servers_own_instance_level_definition(client, cap):
    """HL7's Patient-everything allows type-level calls; this server answers Patient/{id}/$everything only."""
    patient_ops = {n: d for t, n, d in declared(cap) if t == "Patient"}
    assert patient_ops["everything"] != HL7_EVERYTHING
    od = one(client, f"url={patient_ops['everything']}")
    assert (od["system"], od["type"], od["instance"]) == (False, False, True)
    assert od["base"] == HL7_EVERYTHING and od["affectsState"] is False
    assert client.get("/fhir/Patient/$everything").status_code == 404  # indeed not served at type level


def test_ehc_status_is_described_as_affecting_state_and_says_what_get_does(client, cap):
    od = one(client, "code=ehc-status")
    assert od["affectsState"] is True
    assert "GET" in od["description"] and "changes nothing" in od["description"]


def test_affects_state_false_operations_with_primitive_parameters_accept_get(client):
    """R4 OperationDefinition.affectsState: servers SHALL support GET when the operation does not affect state and
    all its parameters are primitive; an operation that affects state is not invoked with GET (but $ehc-status)."""
    primitive = {"code", "string", "integer", "boolean", "uri", "instant", "date", "dateTime", "decimal", "id"}
    for name, spec in OPERATIONS.items():
        od = operation_definition(name, spec)
        if od is None:
            continue
        ins = [p for p in od.get("parameter", []) if p["use"] == "in"]
        if not od["affectsState"] and all(p.get("type") in primitive for p in ins):
            assert "GET" in spec["methods"], name
        assert "POST" in spec["methods"], name  # SHALL for every operation


def test_every_operation_accepts_post_also_those_implementing_a_published_definition():
    """R4 operations.html: a server SHALL accept POST for every operation, whichever definition it names
    ($ihe-pix, IHE PIXm's, took GET only until 2026-12)."""
    assert [name for name, spec in OPERATIONS.items() if "POST" not in spec["methods"]] == []


def test_served_definitions_are_valid_r4_and_are_the_published_ones(client):
    bundle = client.get("/fhir/OperationDefinition").json
    served = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    assert bundle["total"] == len(served) >= 6
    v = Validator(PROFILES_DIR)
    for od in served:
        assert v.issues(od, "OperationDefinition") == [], od["id"]
        published = json.loads((PROFILES_DIR / "OperationDefinition" / f"{od['id']}.json").read_text("utf-8"))
        assert {k: x for k, x in od.items() if k != "meta"} == published, od["id"]
    files = {p.stem for p in (PROFILES_DIR / "OperationDefinition").glob("*.json")}
    assert files == {od["id"] for od in served}  # nothing published that the server does not serve


def test_search_parameters_work_on_the_served_definitions(client):
    assert one(client, "code=merge")["id"] == "patient-merge"
    assert one(client, "_id=ehc-verify")["system"] is True
    r = client.get("/fhir/OperationDefinition?url=http://example.org/nothing")
    assert r.status_code == 200 and r.json["total"] == 0
    r = client.get("/fhir/OperationDefinition?_summary=count")
    assert r.status_code == 200 and r.json["total"] >= 6 and "entry" not in r.json
    r = client.get("/fhir/OperationDefinition?instance=true&_elements=code")
    codes = {e["resource"]["code"] for e in r.json["entry"] if e["search"]["mode"] == "match"}
    assert {"ehc-qrcode", "ehc-status", "everything", "validate"} <= codes and "ehc-verify" not in codes
    r = client.get("/fhir/OperationDefinition?_count=2")
    assert len([e for e in r.json["entry"] if e["search"]["mode"] == "match"]) == 2
    nxt = next(link["url"] for link in r.json["link"] if link["relation"] == "next")
    assert client.get(nxt[nxt.index("/fhir/"):]).status_code == 200
    assert client.get("/fhir/OperationDefinition/nothing").status_code == 404
    r = client.get("/fhir/OperationDefinition/ehc-status?_format=xml")
    assert r.status_code == 200 and b"<OperationDefinition" in r.data
    r = client.post("/fhir/OperationDefinition/_search", data="code=ehc-status",
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200 and r.json["total"] == 1


def test_writes_are_refused_and_store_nothing(client, services):
    od = client.get("/fhir/OperationDefinition/ehc-status").json
    body = json.dumps({**od, "id": "x", "url": "http://example.org/x"})
    for method, path in (("POST", "OperationDefinition"), ("PUT", "OperationDefinition/ehc-status"),
                         ("PUT", "OperationDefinition/x"), ("DELETE", "OperationDefinition/ehc-status"),
                         ("PATCH", "OperationDefinition/ehc-status"), ("DELETE", "OperationDefinition?code=merge")):
        r = client.open(f"/fhir/{path}", method=method, data=body if method != "DELETE" else None,
                        content_type=FJ if method != "PATCH" else "application/json-patch+json")
        assert r.status_code == 405, (method, path, r.json)
        assert r.headers["Allow"] == "GET, HEAD", (method, path)
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {**od, "id": None, "url": "http://example.org/y"}, "request": {"method": "POST",
                                                                                   "url": "OperationDefinition"}}]}
    assert client.post("/fhir", data=json.dumps(tx), content_type=FJ).status_code == 405
    assert services.repo.current("OperationDefinition").count_documents({}) == 0
    assert one(client, "code=ehc-status") == od


def test_read_without_a_token_as_metadata_is(web, svc):
    """Conformance resources are public as /metadata is (the web edge's one list of public requests); the
    records are not."""
    r = web.get("/fhir/OperationDefinition/ehc-verify")
    assert r.status_code == 200 and r.json["code"] == "ehc-verify"
    r = web.get(f"/fhir/OperationDefinition?url={CANONICAL_BASE}ehc-status")
    assert r.status_code == 200 and r.json["total"] == 1
    assert web.get("/fhir/metadata").status_code == 200
    assert web.get("/fhir/Patient").status_code == 401
    assert web.get("/fhir/Observation/x").status_code == 401
    # writing is no more public than before: without a token 401, with one 405
    body = json.dumps({"resourceType": "OperationDefinition", "status": "draft", "kind": "operation", "name": "X",
                       "code": "x", "system": True, "type": False, "instance": False})
    assert web.post("/fhir/OperationDefinition", data=body, content_type=FJ).status_code == 401
    token = stored_token(svc, "system/*.cruds")
    r = web.post("/fhir/OperationDefinition", data=body, headers=bearer(token), content_type=FJ)
    assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD"
    # an authenticated client without any OperationDefinition scope reads them too
    r = web.get("/fhir/OperationDefinition/ehc-status", headers=bearer(stored_token(svc, "system/Patient.rs")))
    assert r.status_code == 200


def test_public_reads_leave_nothing_in_the_audit_trail_and_refusals_do(web, svc):
    """Anyone may read the conformance resources, so their reads are not audited (as /metadata's): nobody can
    fill the trail with them. A request that is not public (a write without a token) is recorded as before."""
    committer = svc.extensions["audit"].writer.committer
    before = committer.stats.records
    for path in ("OperationDefinition/ehc-verify", "OperationDefinition?code=ehc-status", "metadata"):
        assert web.get(f"/fhir/{path}").status_code == 200
        assert web.head(f"/fhir/{path}").status_code == 200
    assert committer.stats.records == before
    assert web.post("/fhir/OperationDefinition", data="{}", content_type=FJ).status_code == 401
    assert web.delete("/fhir/metadata").status_code == 401
    assert committer.stats.records == before + 2


def test_sort_on_the_served_definitions(client):
    r = client.get("/fhir/OperationDefinition?_sort=-code&_elements=code")
    codes = [e["resource"]["code"] for e in r.json["entry"] if e["search"]["mode"] == "match"]
    assert codes == sorted(codes, reverse=True) and len(codes) >= 6


# -- the operations do what their definitions say -----------------------------------------------------------

def test_ehc_qrcode_is_also_invoked_with_get(client):
    """It stores nothing (affectsState false) and its parameters are primitive: R4 says a server SHALL accept GET."""
    from tests.integration.test_mpi_registration import id_number, patient

    r = client.post("/fhir/Patient", data=json.dumps(patient(id_number("110101", "1991-04-04", 41), name="卫二",
                                                             born="1991-04-04")), content_type=FJ)
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    r = client.get(f"/fhir/Patient/{pid}/$ehc-qrcode?type=static&image=false")
    assert r.status_code == 200, r.json
    out = {p["name"]: p for p in r.json["parameter"]}
    assert out["type"]["valueCode"] == "static" and "image" not in out and out["token"]["valueString"]
    assert client.get(f"/fhir/Patient/{pid}/$ehc-qrcode?validity=30").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/$ehc-qrcode?validity=abc").status_code == 400
    assert client.get(f"/fhir/Patient/{pid}/$ehc-qrcode?validity=3").status_code == 400  # dynamic: 5 to 300 s


def test_everything_takes_its_parameters_from_a_posted_parameters_body(client, services):
    pid = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient"}), content_type=FJ).json["id"]
    for i in range(3):
        r = client.post("/fhir/Observation", content_type=FJ, data=json.dumps(
            {"resourceType": "Observation", "status": "final", "code": {"text": f"o{i}"},
             "subject": {"reference": f"Patient/{pid}"}}))
        assert r.status_code == 201
    r = client.post("/fhir/Encounter", content_type=FJ, data=json.dumps(
        {"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pid}"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}))
    assert r.status_code == 201
    body = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueCode": "Observation"},
                                                        {"name": "_count", "valueInteger": 2}]}
    committer = services.extensions["audit"].writer.committer
    before = committer.stats.records
    r = client.post(f"/fhir/Patient/{pid}/$everything", data=json.dumps(body), content_type=FJ)
    assert r.status_code == 200, r.json
    assert committer.stats.records == before + 1  # its event; a POST that stores nothing leaves no write intent
    assert r.json["total"] == 4  # the Patient and its three Observations, not the Encounter
    assert len(r.json["entry"]) == 2
    nxt = next(link["url"] for link in r.json["link"] if link["relation"] == "next")
    page = client.get(nxt[nxt.index("/fhir/"):]).json
    assert [e["resource"]["resourceType"] for e in page["entry"]] == ["Observation", "Observation"]
    r = client.get(f"/fhir/Patient/{pid}/$everything?_type=Encounter")
    assert {e["resource"]["resourceType"] for e in r.json["entry"]} == {"Patient", "Encounter"}
