"""The published EHC Patient profile (fhir_profiles/StructureDefinition/ehc-patient.json) applied by the
validator: identifier slices by system with their cardinality, the invariants the server enforces, and
meta.profile declarations."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.fhir.validation import Validator

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
V = Validator(PROFILES)
EHC = "https://ehc.example.cn/fhir/StructureDefinition/ehc-patient"
RID = "urn:oid:2.16.156.10011.1.3"
CARD = "urn:oid:2.16.156.10011.1.19"
CARD_TYPE = "https://ehc.example.cn/fhir/CodeSystem/card-type"


def patient(*identifiers: dict[str, Any], gender: str = "male") -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"text": "张伟"}], "gender": gender, "identifier": list(identifiers)}


def card(value: str = "A" * 64, use: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"system": CARD, "value": value,
                           "type": {"coding": [{"system": CARD_TYPE, "code": "formal"}]}}
    if use:
        out["use"] = use
    return out


def problems(res: dict[str, Any], profile: str | None = EHC) -> list[str]:
    return [i.diagnostics for i in V.issues(res, "Patient", profile=profile) if i.severity == "error"]


def test_a_registered_resident_conforms() -> None:
    res = patient({"system": RID, "value": "11010519900307283X"}, card(),
                  {"system": "urn:ehc:mrn:org-1", "value": "MRN-1"},
                  {"system": "urn:ehc:id:passport", "value": "E12345678"})
    assert problems(res) == []


def test_slice_cardinality_one_resident_id() -> None:
    res = patient({"system": RID, "value": "11010519900307283X"}, {"system": RID, "value": "110105199003072810"})
    assert any("slice residentIdCard" in p for p in problems(res))


def test_invariants() -> None:
    assert any("ehc-pat-4" in p for p in problems(patient({"system": RID, "value": "12345"})))
    assert any("ehc-pat-3" in p for p in problems(patient({"system": RID, "value": "11010519900307283X"},
                                                          gender="female")))
    assert any("ehc-pat-5" in p for p in problems(patient(card("abc"))))
    assert any("ehc-pat-2" in p for p in problems(patient(card("A" * 64), card("B" * 64))))
    assert problems(patient(card("A" * 64), card("B" * 64, use="old"))) == []
    assert any("ehc-pat-1" in p for p in problems(patient({"system": "urn:ehc:mrn:", "value": "1"})))


def test_required_elements_of_the_profile() -> None:
    res = patient({"system": RID, "value": "11010519900307283X"})
    del res["name"]
    assert any("Patient.name" in p for p in problems(res))
    assert V.issues(res, "Patient") == []  # the base R4 Patient does not need a name


def test_declared_profile_is_checked_without_asking_and_unknown_profiles_reported() -> None:
    res = {**patient({"system": RID, "value": "12345"}), "meta": {"profile": [EHC]}}
    assert any("ehc-pat-4" in p for p in problems(res, None))
    res["meta"] = {"profile": ["http://example.org/other"]}  # not ours: nothing to check here
    assert problems(res, None) == []
    assert problems(patient(card()), "http://example.org/nope")[0].startswith("the profile http://example.org/nope")
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert "constrains Patient" in V.issues(obs, "Observation", profile=EHC)[0].diagnostics


def test_published_conformance_resources_are_valid_r4() -> None:
    files = [p for folder in ("StructureDefinition", "CodeSystem", "ValueSet", "OperationDefinition",
                              "NamingSystem", "CompartmentDefinition")
             for p in sorted((PROFILES / folder).glob("*.json"))]
    assert len(files) >= 25
    for f in files:
        assert V.issues(json.loads(f.read_text(encoding="utf-8"))) == [], f.name
    ops = {json.loads(f.read_text())["code"] for f in (PROFILES / "OperationDefinition").glob("*.json")}
    assert {"ehc-qrcode", "ehc-status", "ehc-verify", "merge"} <= ops
