"""Search registry, FHIRPath evaluation and index extraction (the ix/so storage contract)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.core.ids import reference_type
from app.search.extract import extract_index, local_reference, sort_value
from app.search.fhirpath import compile_expression, restrict_to_type
from app.search.registry import SearchRegistry
from app.search.values import DATE_MAX, date_range, decimal_range, normalize

CST = timedelta(hours=8)  # a value without a zone is read in China's time

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
REG = SearchRegistry.from_profiles(PROFILES)
BASE = "https://ehc.example.cn/fhir"
UCUM = "http://unitsofmeasure.org"

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "lastUpdated": "2024-01-02T03:04:05.678Z",
        "tag": [{"system": "urn:t", "code": "x"}],
        "profile": ["http://example.cn/StructureDefinition/ehc-patient"],
    },
    "identifier": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": "11010519491231002X"},
        {"value": "NOSYS"},
    ],
    "active": True,
    "name": [{"family": "张", "given": ["伟"]}, {"family": "Zhang", "given": ["Wei"], "prefix": ["Dr."]}],
    "telecom": [{"system": "phone", "value": "138-0013-8000"}, {"system": "email", "value": "a@b.cn"}],
    "gender": "male",
    "birthDate": "1949-12-31",
    "deceasedBoolean": False,
    "address": [{"line": ["建国路1号"], "city": "北京市", "district": "朝阳区", "postalCode": "100000"}],
    "managingOrganization": {"reference": f"{BASE}/Organization/o1"},
    "generalPractitioner": [
        {"reference": "Practitioner/pr1/_history/3"},
        {"reference": "http://other/Practitioner/9"},
    ],
}

OBSERVATION = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {
        "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}],
        "text": "心率",
    },
    "subject": {"reference": "Patient/p1"},
    "performer": [{"reference": "Organization/o1"}, {"identifier": {"system": "urn:lic", "value": "L1"}}],
    "effectivePeriod": {"start": "2024-01-01T08:00:00+08:00"},
    "valueQuantity": {"value": 72, "unit": "beats/minute", "system": UCUM, "code": "/min"},
}


def test_registry_has_the_resource_types_and_common_parameters() -> None:
    # every R4 resource type but Parameters (which has no RESTful endpoint)
    assert len(REG.resource_types()) == 145 and "Parameters" not in REG.resource_types()
    for rt in ("Patient", "Observation", "DocumentReference", "Binary", "Organization", "Practitioner",
               "RelatedPerson", "Consent", "AuditEvent", "Encounter", "MedicationRequest", "Claim",
               "ExplanationOfBenefit", "Location", "Immunization", "AllergyIntolerance", "Composition"):
        assert rt in REG.resource_types()
    for rt in REG.resource_types():
        for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security"):
            assert REG.get(rt, code) is not None, (rt, code)
    assert REG.get("Binary", "_lastUpdated").expression == "Binary.meta.lastUpdated"
    assert REG.get("Patient", "nonsense") is None
    assert REG.get("Patient", "code-value-quantity") is None  # composites are not generated
    assert "code-value-quantity" not in REG.params("Observation")


def test_registry_expressions_are_cut_to_the_resource_type() -> None:
    p = REG.get("Practitioner", "address-city")
    assert p.expression == "Practitioner.address.city"
    assert p.base == ["Practitioner"] and p.type == "string"
    obs_patient = REG.get("Observation", "patient")
    assert obs_patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert obs_patient.target == ["Patient"]


def test_registry_loads_single_search_parameter_files(tmp_path: Path) -> None:
    (tmp_path / "SearchParameter").mkdir()
    sp = {
        "resourceType": "SearchParameter",
        "code": "mrn",
        "base": ["Patient"],
        "type": "token",
        "expression": "Patient.identifier.where(system='urn:mrn')",
    }
    (tmp_path / "SearchParameter" / "mrn.json").write_text(json.dumps(sp))
    reg = SearchRegistry.from_profiles(tmp_path)
    assert reg.resource_types() == ["Patient"]
    assert reg.get("Patient", "mrn").type == "token"
    bad = dict(sp, code="x.$where")
    (tmp_path / "SearchParameter" / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="safe field name"):
        SearchRegistry.from_profiles(tmp_path)


def test_restrict_to_type_and_resolve_rewrite() -> None:
    expr = "Patient.address.city | Person.address.city | (Practitioner.address.city)"
    assert restrict_to_type(expr, "Practitioner") == "(Practitioner.address.city)"
    assert restrict_to_type("Resource.meta.tag", "Binary") == "Binary.meta.tag"
    assert restrict_to_type(expr, "Observation") == ""
    fn = compile_expression("Observation.subject.where(resolve() is Patient)")
    assert fn({"resourceType": "Observation", "subject": {"reference": "Group/1"}}) == []
    ref = {"reference": "Patient/1"}
    assert fn({"resourceType": "Observation", "subject": ref}) == [ref]
    assert fn({"resourceType": "Patient"}) == []
    assert reference_type("http://x/fhir/Patient/1/_history/2") == "Patient"
    assert reference_type("#contained") is None


def test_fhirpathpy_fallback_handles_resolve() -> None:
    # A shape the fast path does not take (a function other than where/ofType) goes to fhirpathpy.
    fn = compile_expression("Observation.subject.where(resolve() is Patient).first()")
    assert not getattr(fn, "fast", False)
    obs = {"resourceType": "Observation", "subject": {"reference": "Patient/7"}}
    assert fn(obs) == [{"reference": "Patient/7"}]
    assert fn({"resourceType": "Observation", "subject": {"reference": "Group/7"}}) == []


def test_every_registered_expression_takes_the_fast_path() -> None:
    slow = [
        (rt, c)
        for rt in REG.resource_types()
        for c, p in REG.params(rt).items()
        if not getattr(p.evaluator(), "fast", False)
    ]
    # Bundle.composition and Bundle.message read Bundle.entry[0].resource: evaluated, but not on the fast path
    assert slow == [("Bundle", "composition"), ("Bundle", "message")]


def test_values_normalise_dates_and_numbers() -> None:
    assert normalize("  Zhāng   WEI ") == "zhang wei"
    assert normalize("ＺＨＡＮＧ") == "zhang"
    assert date_range("1990") == (datetime(1990, 1, 1) - CST, datetime(1991, 1, 1) - CST)
    assert date_range("2020-02") == (datetime(2020, 2, 1) - CST, datetime(2020, 3, 1) - CST)
    assert date_range("2020-02-01T08:00") == (datetime(2020, 2, 1), datetime(2020, 2, 1, 0, 1))
    assert date_range("2020-02-01T08:00Z") == (datetime(2020, 2, 1, 8), datetime(2020, 2, 1, 8, 1))
    assert date_range("0001")[0] == datetime(1, 1, 1)  # before the calendar in UTC: held to its start
    lo, hi = date_range("2020-12-31T23:30:00+08:00")
    assert (lo, hi) == (datetime(2020, 12, 31, 15, 30), datetime(2020, 12, 31, 15, 30, 1))
    assert date_range("2020-01-01T00:00:00.1234Z")[1] == datetime(2020, 1, 1, 0, 0, 0, 124000)
    assert date_range("9999")[1] == DATE_MAX
    for bad in ("2020-13", "20", "2020-01-01T10", "tomorrow", "2020-02-30"):
        with pytest.raises(ValueError):
            date_range(bad)
    assert decimal_range("100") == (100.0, 99.5, 100.5)
    assert decimal_range("5.4") == (5.4, 5.35, 5.45)
    with pytest.raises(ValueError):
        decimal_range("abc")


def test_patient_index() -> None:
    ix, so = extract_index(PATIENT, REG, base_url=BASE)
    assert ix["identifier"] == [
        "urn:oid:2.16.156.10011.1.3|11010519491231002X",
        "11010519491231002X",
        "urn:oid:2.16.156.10011.1.3|",
        "|NOSYS",
        "NOSYS",
    ]
    assert ix["active"] == ["true"]
    assert ix["deceased"] == ["false"]
    assert "male" in ix["gender"]
    assert ix["birthdate"] == [{"lo": datetime(1949, 12, 31) - CST, "hi": datetime(1950, 1, 1) - CST}]
    assert ix["_lastUpdated"][0]["lo"] == datetime(2024, 1, 2, 3, 4, 5, 678000)
    assert ix["_tag"] == ["urn:t|x", "x", "urn:t|"]
    assert ix["_profile"] == ["http://example.cn/StructureDefinition/ehc-patient"]
    assert "_id" not in ix
    # names: parts, family+given in both orders with and without a space, normalised and raw
    for value in ("张", "伟", "张伟", "zhang", "wei", "zhang wei", "wei zhang", "zhangwei", "dr."):
        assert value in ix["name"], value
    assert "Zhang Wei" in ix["name:exact"] and "zhang wei" not in ix["name:exact"]
    assert ix["family"] == ["张", "zhang"]
    assert "zhangwei" in ix["phonetic"] and "wei zhang" in ix["phonetic"]
    assert ix["phonetic"].count("zhangwei") == 1
    # telecom: value, and the digits of phone numbers
    assert "138-0013-8000" in ix["phone"] and "13800138000" in ix["phone"]
    assert ix["email"] == ["email|a@b.cn", "a@b.cn", "email|"]
    assert "phone|138-0013-8000" in ix["telecom"]
    assert set(ix["address"]) == {"建国路1号", "北京市", "朝阳区", "100000"}
    assert ix["address-city"] == ["北京市"]
    # references: base URL removed, versions dropped, foreign absolute URLs kept
    assert ix["organization"] == ["Organization/o1", "o1"]
    assert ix["general-practitioner"] == ["Practitioner/pr1", "pr1", "http://other/Practitioner/9"]
    assert so["birthdate"] == datetime(1949, 12, 31) - CST
    # several values: [smallest, largest] of the element's own values (not the joined or matching-only forms)
    assert so["name"] == ["dr.", "张"] and so["given"] == ["wei", "伟"] and so["phonetic"] == ["dr.", "张"]
    assert so["identifier"] == ["11010519491231002X", "NOSYS"]
    assert so["phone"] == "138-0013-8000"  # its digits only help to match it
    assert so["general-practitioner"] == ["Practitioner/pr1", "http://other/Practitioner/9"]  # not the bare id
    assert so["organization"] == "Organization/o1"
    assert so["_lastUpdated"] == datetime(2024, 1, 2, 3, 4, 5, 678000)


def test_observation_index() -> None:
    ix, so = extract_index(OBSERVATION, REG)
    assert ix["code"] == ["http://loinc.org|8867-4", "8867-4", "http://loinc.org|"]
    assert ix["code:text"] == ["heart rate", "心率"]
    assert ix["subject"] == ["Patient/p1", "p1"] and ix["patient"] == ["Patient/p1", "p1"]
    assert ix["value-quantity"] == [{"v": 72.0, "s": UCUM, "c": "/min", "u": "beats/minute"}]
    assert ix["date"] == [{"lo": datetime(2024, 1, 1), "hi": DATE_MAX}]  # a Period without end
    assert ix["performer"] == ["Organization/o1", "o1"]
    assert ix["performer:identifier"] == ["urn:lic|L1", "L1", "urn:lic|"]
    assert so["value-quantity"] == 72.0 and so["code"] == "8867-4" and so["date"] == datetime(2024, 1, 1)
    assert "value-string" not in ix and "value-string" not in so


def test_sort_keys_of_several_values() -> None:
    """so[code] is the value when there is one, else [smallest, largest]; sort_value takes the end a direction
    uses (MongoDB's and FerretDB's order of arrays), and a scalar stored by an older release is both ends."""
    goal = {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
            "target": [{"dueDate": "2024-05-01"}, {"dueDate": "2021-01-01"}, {"dueDate": "2024-05-01"}]}
    _, so = extract_index(goal, REG)
    assert so["target-date"] == [datetime(2021, 1, 1) - CST, datetime(2024, 5, 1) - CST]
    _, so = extract_index({**goal, "target": [{"dueDate": "2024-05-01"}, {"dueDate": "2024-05-01"}]}, REG)
    assert so["target-date"] == datetime(2024, 5, 1) - CST
    _, so = extract_index({"resourceType": "Patient", "name": [{"family": "Wu", "given": ["Mia", "Anna"]}]}, REG)
    assert so["given"] == ["anna", "mia"] and so["family"] == "wu" and so["name"] == ["anna", "wu"]
    assert sort_value(["mia", "anna"], descending=False) == "anna"
    assert sort_value(["mia", "anna"], descending=True) == "mia"
    assert sort_value("ben", descending=True) == "ben" and sort_value(None, descending=False) is None


def test_choice_types_and_absent_values() -> None:
    obs = {"resourceType": "Observation", "valueString": "阳性", "effectiveDateTime": "2024"}
    ix, _ = extract_index(obs, REG)
    assert ix["value-string"] == ["阳性"]
    assert "value-quantity" not in ix
    assert ix["date"] == [{"lo": datetime(2024, 1, 1) - CST, "hi": datetime(2025, 1, 1) - CST}]
    bad = {"resourceType": "Observation", "effectiveDateTime": "not a date"}
    assert "date" not in extract_index(bad, REG)[0]
    assert extract_index({"resourceType": "Binary", "contentType": "text/plain"}, REG) == ({}, {})
    assert extract_index({"resourceType": "Unknown"}, REG) == ({}, {})


def test_local_reference() -> None:
    assert local_reference(f"{BASE}/Patient/1", BASE) == "Patient/1"
    assert local_reference("Patient/1/_history/2", None) == "Patient/1"
    assert local_reference("urn:uuid:abc", BASE) == "urn:uuid:abc"
    assert local_reference("http://elsewhere/Patient/1", BASE) == "http://elsewhere/Patient/1"
