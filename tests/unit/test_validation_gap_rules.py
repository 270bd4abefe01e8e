"""Validation gaps found in review (2026-12): each case was accepted before and is refused now naming the element
(or, for the valid shapes at the end of each group, was refused before and is accepted now). Pure functions and the
Validator on dicts; the HTTP side is tests/integration/test_validation_gaps.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import FhirError
from app.fhir.structure import load_structure
from app.fhir.validation import Validator, xhtml_problem
from app.fhir.xml import from_xml

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
V = Validator(PROFILES)
S = load_structure(PROFILES)
NS = 'xmlns="http://hl7.org/fhir"'
OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
PAT = {"resourceType": "Patient", "active": True}
CS = "http://terminology.hl7.org/CodeSystem/"


def paths(resource: dict[str, Any]) -> list[str]:
    return [e for i in V.issues(resource) for e in i.expression]


def xml_error(xml: str) -> str:
    with pytest.raises(FhirError) as err:
        from_xml(S, xml.encode())
    return err.value.issues[0].expression[0]


def _obs_xml(inner: str) -> str:
    return f'<Observation {NS}><status value="final"/><code><text value="x"/></code>{inner}</Observation>'


# -- 1. XML lexical forms of decimals and integers; attributes in other namespaces -----------------------------

@pytest.mark.parametrize("text", [".5", "+1.5", "1.", "01.5", "1_000.5", "\u0661.5", " 1.5 ", "1.5e", "-.5"])
def test_xml_decimal_must_have_the_decimal_lexical_form(text: str) -> None:
    xml = _obs_xml(f'<valueQuantity><value value="{text}"/></valueQuantity>')
    assert xml_error(xml) == "Observation.valueQuantity.value"


@pytest.mark.parametrize("text", ["0.5", "-1.50", "1e3", "0"])
def test_xml_decimal_in_its_lexical_form_is_read_as_written(text: str) -> None:
    res = from_xml(S, _obs_xml(f'<valueQuantity><value value="{text}"/></valueQuantity>').encode())
    assert res["valueQuantity"]["value"].text == text


@pytest.mark.parametrize("text", ["007", "\uff11\uff12", "\u0661\u0662", "+5", " 5", "-0x1"])
def test_xml_integer_must_have_the_integer_lexical_form(text: str) -> None:
    assert xml_error(_obs_xml(f'<valueInteger value="{text}"/>')) == "Observation.valueInteger"


def test_xml_paths_of_repeating_elements_have_indexes() -> None:
    xml = (f'<Patient {NS}><name><given value="a"/></name><name><given value="a"/><given value="007"/></name>'
           f'<photo><size value="01"/></photo></Patient>')
    assert xml_error(xml) == "Patient.photo[0].size"


@pytest.mark.parametrize(("xml", "path"), [
    (f'<Patient {NS} xmlns:x="urn:x"><birthDate x:value="2024-01-01"/></Patient>', "Patient.birthDate.@{urn:x}value"),
    (f'<Patient {NS} xmlns:x="urn:x"><extension x:url="http://e.org/a"><valueString value="v"/></extension></Patient>',
     "Patient.extension[0].@{urn:x}url"),
    (f'<Patient {NS} xmlns:x="urn:x"><active value="true" x:id="a"/></Patient>', "Patient.active.@{urn:x}id"),
    (f'<Patient {NS} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><active value="true" '
     'xsi:schemaLocation="x"/></Patient>', "Patient.active.@{http://www.w3.org/2001/XMLSchema-instance}schemaLocation"),
])
def test_xml_attribute_in_another_namespace_is_not_fhir(xml: str, path: str) -> None:
    assert xml_error(xml) == path


def test_xml_schema_location_on_the_root_is_ignored() -> None:
    xml = (f'<Patient {NS} xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
           'xsi:schemaLocation="http://hl7.org/fhir ../../schema/patient.xsd"><active value="true"/></Patient>')
    assert from_xml(S, xml.encode()) == {"resourceType": "Patient", "active": True}


# -- 2, 3. base64Binary: linear, and RFC 4648 ------------------------------------------------------------------

def test_base64_check_is_linear_on_spaced_quads() -> None:
    started = time.monotonic()
    assert paths({"resourceType": "Binary", "contentType": "text/plain", "data": "AAAA  " * 5000 + "!"}) \
        == ["Binary.data"]
    assert time.monotonic() - started < 0.5


@pytest.mark.parametrize("data", ["A=BC", "====", "AA==AAAA", "A===", "AAA", "AAAA!", "AA=A", " ", "AAAA\u3000"])
def test_invalid_base64_is_refused(data: str) -> None:
    assert paths({"resourceType": "Binary", "contentType": "text/plain", "data": data}) == ["Binary.data"]


@pytest.mark.parametrize("data", ["aGVsbG8=", "aGk=", "AAAA", "AAAA BBBB", "AA==", "aGVs\nbG8=", " AAAA "])
def test_valid_base64_is_accepted(data: str) -> None:
    assert paths({"resourceType": "Binary", "contentType": "text/plain", "data": data}) == []


# -- 4. a choice given twice through its primitive-extension twin; ext-1 ----------------------------------------

@pytest.mark.parametrize(("body", "path"), [
    ({**OBS, "valueQuantity": {"value": 1}, "_valueString": {"extension": [{"url": "http://e.org/y",
                                                                             "valueString": "b"}]}},
     "Observation._valueString"),
    ({**OBS, "_valueString": {"id": "a", "extension": [{"url": "http://e.org/y", "valueString": "b"}]},
      "_valueBoolean": {"extension": [{"url": "http://e.org/y", "valueString": "b"}]}}, "Observation._valueBoolean"),
    ({**OBS, "valueBoolean": True, "_valueString": {"extension": [{"url": "http://e.org/y", "valueString": "b"}]}},
     "Observation._valueString"),
    ({**PAT, "extension": [{"url": "http://e.org/x", "_valueString": {"extension": [
        {"url": "http://e.org/y", "valueString": "b"}]},
        "extension": [{"url": "http://e.org/a", "valueString": "b"}]}]},
     "Patient.extension[0]"),
])
def test_a_choice_twice_through_its_primitive_extension_is_refused(body: dict[str, Any], path: str) -> None:
    assert path in paths(body)


@pytest.mark.parametrize("body", [
    {**PAT, "extension": [{"url": "http://e.org/x", "_valueString": {"extension": [
        {"url": "http://e.org/y", "valueString": "b"}]}}]},
    {**OBS, "valueString": "a", "_valueString": {"id": "v1"}},
    {**OBS, "_valueString": {"extension": [{"url": "http://e.org/y", "valueString": "b"}]}},
])
def test_a_choice_with_its_own_primitive_extension_is_accepted(body: dict[str, Any]) -> None:
    assert paths(body) == []


# -- 5. ele-1: a primitive with only an id -----------------------------------------------------------------------

@pytest.mark.parametrize(("body", "path"), [
    ({**PAT, "_birthDate": {"id": "b1"}}, "Patient._birthDate"),
    ({**PAT, "name": [{"family": "x", "given": [None], "_given": [{"id": "g1"}]}]}, "Patient.name[0]._given[0]"),
    ({**PAT, "name": [{"family": "x", "given": ["a"], "_given": [{"id": "g1"}, {"id": "g2"}]}]},
     "Patient.name[0]._given[1]"),
])
def test_a_primitive_with_only_an_id_is_refused(body: dict[str, Any], path: str) -> None:
    assert path in paths(body)


def test_a_primitive_with_a_value_and_an_id_is_accepted() -> None:
    assert paths({**PAT, "birthDate": "2000-01-01", "_birthDate": {"id": "b1"},
                  "name": [{"given": ["a", None], "_given": [{"id": "g1"}, {"extension": [
                      {"url": "http://e.org/y", "valueString": "b"}]}]}]}) == []


def test_xml_primitive_with_only_an_id_is_refused() -> None:
    assert xml_error(f'<Patient {NS}><birthDate id="b1"/></Patient>') == "Patient.birthDate"


# -- 6. required bindings: CodeableConcept, and R4's code bindings ---------------------------------------------

@pytest.mark.parametrize(("body", "path"), [
    ({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
      "clinicalStatus": {"coding": [{"system": CS + "condition-clinical", "code": "bogus"}]}},
     "Condition.clinicalStatus"),
    ({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
      "clinicalStatus": {"coding": [{"system": CS + "condition-ver-status", "code": "active"}]}},
     "Condition.clinicalStatus"),
    ({"resourceType": "Condition", "subject": {"reference": "Patient/1"},
      "verificationStatus": {"coding": [{"system": CS + "condition-ver-status", "code": "maybe"}]}},
     "Condition.verificationStatus"),
    ({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/1"},
      "clinicalStatus": {"coding": [{"system": CS + "allergyintolerance-clinical", "code": "bogus"}]}},
     "AllergyIntolerance.clinicalStatus"),
    ({"resourceType": "Composition", "status": "final", "type": {"text": "x"}, "date": "2024-01-01",
      "author": [{"display": "x"}], "title": "t", "confidentiality": "X"}, "Composition.confidentiality"),
    ({"resourceType": "ChargeItem", "status": "billable", "code": {"text": "x"}, "subject": {"reference": "Patient/1"},
      "priceOverride": {"value": 1, "currency": "yuan"}}, "ChargeItem.priceOverride.currency"),
    ({"resourceType": "EvidenceVariable", "status": "active",
      "characteristic": [{"definitionCodeableConcept": {"text": "x"}, "groupMeasure": "bogus"}]},
     "EvidenceVariable.characteristic[0].groupMeasure"),
    ({"resourceType": "DetectedIssue", "status": "mitigated"}, "DetectedIssue.status"),
])
def test_code_outside_a_required_value_set_is_refused(body: dict[str, Any], path: str) -> None:
    assert path in paths(body)


@pytest.mark.parametrize("body", [
    {"resourceType": "Condition", "subject": {"reference": "Patient/1"},
     "clinicalStatus": {"coding": [{"system": "http://example.org/local", "code": "x"},
                                   {"system": CS + "condition-clinical", "code": "active"}]},
     "verificationStatus": {"coding": [{"system": CS + "condition-ver-status", "code": "confirmed"}]}},
    {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"text": "active"}},
    {"resourceType": "Composition", "status": "final", "type": {"text": "x"}, "date": "2024-01-01",
     "author": [{"display": "x"}], "title": "t", "confidentiality": "N"},
    {"resourceType": "ChargeItem", "status": "billable", "code": {"text": "x"}, "subject": {"reference": "Patient/1"},
     "priceOverride": {"value": 1, "currency": "CNY"}},
    *({"resourceType": "DetectedIssue", "status": s} for s in
      ["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"]),
])
def test_codes_of_the_r4_value_sets_are_accepted(body: dict[str, Any]) -> None:
    assert paths(body) == []


# -- 7, 8. reference targets -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "path"), [
    ({**OBS, "contained": [{"resourceType": "Medication", "id": "m1"}], "subject": {"reference": "#m1"}},
     "Observation.subject.reference"),
    ({**OBS, "subject": {"reference": "Patient/1", "type": "Group"}}, "Observation.subject.type"),
    ({**OBS, "subject": {"type": "Medication", "identifier": {"value": "1"}}}, "Observation.subject.type"),
    ({**OBS, "contained": [{"resourceType": "Patient", "id": "c1"}, {"resourceType": "Patient", "id": "c1",
                                                                      "active": True}],
      "subject": {"reference": "#c1"}}, "Observation.contained[1].id"),
    ({**OBS, "subject": {"reference": "#nope"}}, "Observation.subject.reference"),
    ({"resourceType": "MeasureReport", "status": "complete", "type": "individual", "measure": "http://x.org/m",
      "period": {"start": "2024-01-01"}, "subject": {"reference": "Organization/1"}},
     "MeasureReport.subject.reference"),
    ({"resourceType": "ResearchStudy", "status": "active", "site": [{"reference": "Organization/1"}]},
     "ResearchStudy.site[0].reference"),
    ({"resourceType": "EvidenceVariable", "status": "active",
      "characteristic": [{"definitionReference": {"reference": "Patient/1"}}]},
     "EvidenceVariable.characteristic[0].definitionReference.reference"),
])
def test_reference_to_a_type_the_element_does_not_allow_is_refused(body: dict[str, Any], path: str) -> None:
    assert path in paths(body)


@pytest.mark.parametrize("body", [
    {**OBS, "contained": [{"resourceType": "Patient", "id": "p1", "active": True}], "subject": {"reference": "#p1"}},
    {**OBS, "subject": {"reference": "Patient/1", "type": "Patient"}},
    {**OBS, "subject": {"reference": "Patient/1", "type": "http://hl7.org/fhir/StructureDefinition/Patient"}},
    {**OBS, "contained": [{"resourceType": "Patient", "id": "p1", "active": True,
                           "managingOrganization": {"reference": "#o1"}},
                          {"resourceType": "Organization", "id": "o1", "name": "o"}], "subject": {"reference": "#p1"}},
    {"resourceType": "EvidenceVariable", "status": "active",
     "characteristic": [{"definitionReference": {"reference": "Group/1"}}]},
    {"resourceType": "ResearchStudy", "status": "active", "site": [{"reference": "Location/1"}]},
])
def test_references_r4_allows_are_accepted(body: dict[str, Any]) -> None:
    assert paths(body) == []


# -- 9. uri and url ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "path"), [
    ({**PAT, "identifier": [{"system": "abc", "value": "1"}]}, "Patient.identifier[0].system"),
    ({**PAT, "identifier": [{"system": "urn:uuid:8C4C0E5A-1111-4A4A-8A8A-000000000001", "value": "1"}]},
     "Patient.identifier[0].system"),
    ({**PAT, "identifier": [{"system": "urn:oid:1.02.3", "value": "1"}]}, "Patient.identifier[0].system"),
    ({**PAT, "maritalStatus": {"coding": [{"system": "local", "code": "M"}]}},
     "Patient.maritalStatus.coding[0].system"),
    ({**PAT, "extension": [{"url": "foo", "valueString": "x"}]}, "Patient.extension[0].url"),
    ({**PAT, "_active": {"extension": [{"url": "foo", "valueString": "x"}]}}, "Patient._active.extension[0].url"),
    ({**PAT, "meta": {"profile": ["urn:uuid:8c4c0e5a-1111-4a4a-8a8a-00000000000G"]}}, "Patient.meta.profile[0]"),
])
def test_invalid_uri_is_refused(body: dict[str, Any], path: str) -> None:
    assert path in paths(body)


def test_relative_url_of_a_nested_extension_and_valid_urns_are_accepted() -> None:
    assert paths({**PAT, "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": "1"},
                                        {"system": "urn:uuid:8c4c0e5a-1111-4a4a-8a8a-000000000001", "value": "2"}],
                  "extension": [{"url": "http://e.org/x", "extension": [{"url": "part", "valueString": "y"}]}]}) == []


@pytest.mark.parametrize("href", ["java&#9;script:alert(1)", "java&#10;script:alert(1)", "&#9;javascript:x",
                                  " JavaScript:x", "vb&#13;script:x", "javascript&#9;:x"])
def test_narrative_script_url_with_ignored_characters_is_refused(href: str) -> None:
    problem = xhtml_problem(f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{href}">x</a></div>')
    assert problem is not None and "script URL" in problem


def test_narrative_ordinary_link_is_accepted() -> None:
    assert xhtml_problem('<div xmlns="http://www.w3.org/1999/xhtml"><a href="https://x.org/a b">x</a></div>') is None

