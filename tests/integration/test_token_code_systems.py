"""Token search on a `code` element: "the system is implied by the value set binding" (R4 search.html#token).

`Patient?gender=http://hl7.org/fhir/administrative-gender|male` finds what `gender=male` finds; `gender=|male` (a
code without a system) finds nothing, nor does another system. The systems come from
fhir_profiles/token-systems.json (scripts/gen_token_systems.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.profiles import PROFILES_DIR

FJ = "application/fhir+json"
GENDER = "http://hl7.org/fhir/administrative-gender"
OBS_STATUS = "http://hl7.org/fhir/observation-status"


def post(client: Any, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)
    assert r.status_code == 201, r.json
    return dict(r.json)


def found(client: Any, query: str) -> set[str]:
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.json
    return {e["resource"]["id"] for e in r.json.get("entry", []) if e.get("search", {}).get("mode") == "match"}


@pytest.fixture(scope="module")
def data(app: Any) -> dict[str, str]:
    client = app.test_client()
    tag = "http://example.org/t|token-systems"
    meta = {"tag": [{"system": "http://example.org/t", "code": "token-systems"}]}
    male = post(client, "Patient", {"resourceType": "Patient", "gender": "male", "meta": meta})["id"]
    female = post(client, "Patient", {"resourceType": "Patient", "gender": "female", "meta": meta})["id"]
    none = post(client, "Patient", {"resourceType": "Patient", "meta": meta})["id"]
    final = post(client, "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                                         "subject": {"reference": f"Patient/{male}"}})["id"]
    return {"male": male, "female": female, "none": none, "final": final, "tag": tag}


def test_system_and_code_finds_what_the_code_finds(client, data):
    tag = data["tag"]
    assert found(client, f"Patient?_tag={tag}&gender=male") == {data["male"]}
    assert found(client, f"Patient?_tag={tag}&gender={GENDER}|male") == {data["male"]}
    assert found(client, f"Patient?_tag={tag}&gender={GENDER}|male,{GENDER}|female") == {data["male"], data["female"]}
    assert found(client, f"Observation?status={OBS_STATUS}|final&_id={data['final']}") == {data["final"]}


def test_no_system_and_another_system_find_nothing(client, data):
    tag = data["tag"]
    assert found(client, f"Patient?_tag={tag}&gender=|male") == set()
    assert found(client, f"Patient?_tag={tag}&gender=http://example.org/other|male") == set()
    assert found(client, f"Observation?status=|final&_id={data['final']}") == set()


def test_the_system_alone_finds_every_coded_value(client, data):
    assert found(client, f"Patient?_tag={data['tag']}&gender={GENDER}|") == {data["male"], data["female"]}
    assert found(client, f"Patient?_tag={data['tag']}&gender=http://example.org/other|") == set()


def test_not_with_a_system(client, data):
    tag = data["tag"]
    assert found(client, f"Patient?_tag={tag}&gender:not={GENDER}|male") == {data["female"], data["none"]}
    assert found(client, f"Patient?_tag={tag}&gender:not=|male") == {data["male"], data["female"], data["none"]}
    assert found(client, f"Patient?_tag={tag}&gender:not={GENDER}|") == {data["none"]}


def test_a_chain_and_a_conditional_create_use_the_implied_system(client, data):
    assert found(client, f"Observation?subject:Patient.gender={GENDER}|male&_id={data['final']}") == {data["final"]}
    r = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient", "gender": "male"}),
                    content_type=FJ, headers={"If-None-Exist": f"_id={data['male']}&gender={GENDER}|male"})
    assert r.status_code == 200 and r.json["id"] == data["male"], r.json


def test_documents_indexed_before_are_found(services, client, data):
    """A document whose stored index holds the values written before this rule (`male`, `|male`) is found by
    `system|code` without `ehc reindex`: the query asks for the code, which both forms hold."""
    col = services.repo.current("Patient")
    col.update_one({"_id": data["male"]}, {"$set": {"ix.gender": ["male", "|male"]}})
    assert found(client, f"Patient?_tag={data['tag']}&gender={GENDER}|male") == {data["male"]}
    assert found(client, f"Patient?_tag={data['tag']}&gender=|male") == set()


def test_the_table_covers_the_declared_code_parameters(client):
    """Every token parameter the CapabilityStatement declares that is a single-system `code` is in the table,
    among them Patient.gender and the status of the clinical types."""
    systems = json.loads((PROFILES_DIR / "token-systems.json").read_text(encoding="utf-8"))["systems"]
    assert systems["Patient"]["gender"] == GENDER
    assert systems["Observation"]["status"] == OBS_STATUS
    assert systems["DocumentReference"]["contenttype"] == "urn:ietf:bcp:13"
    cap = client.get("/fhir/metadata").json
    declared = {(r["type"], p["name"]) for r in cap["rest"][0]["resource"] for p in r.get("searchParam", [])
                if p["type"] == "token"}
    listed = {(t, c) for t, params in systems.items() for c in params}
    assert listed <= declared
