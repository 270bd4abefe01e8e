"""Strict validation from the R4 StructureDefinitions: primitives, cardinality, choices, nulls, unknown elements,
primitive extensions, contained resources, bindings. Each refusal names the exact path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from app.core.errors import FhirError
from app.core.fhirjson import loads
from app.fhir.validation import Validator

V = Validator(Path(__file__).resolve().parents[2] / "fhir_profiles")
OBS = '{"resourceType":"Observation","status":"final","code":{"text":"glucose"},'


def paths(text: str) -> list[str]:
    return [e for i in V.issues(loads(text)) for e in i.expression]


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"resourceType":"Patient","active":"true"}', "Patient.active"),
        ('{"resourceType":"Patient","active":1}', "Patient.active"),
        (OBS + '"valueQuantity":{"value":"5.5"}}', "Observation.valueQuantity.value"),
        (OBS + '"valueInteger":5.5}', "Observation.valueInteger"),
        (OBS + '"valueInteger":2147483648}', "Observation.valueInteger"),
        ('{"resourceType":"Patient","photo":[{"size":-1}]}', "Patient.photo[0].size"),
        ('{"resourceType":"Patient","name":[{"family":""}]}', "Patient.name[0].family"),
        ('{"resourceType":"Patient","name":[{"given":[5]}]}', "Patient.name[0].given[0]"),
        ('{"resourceType":"Patient","id":"a b"}', "Patient.id"),
        ('{"resourceType":"Patient","birthDate":"1990-13-01"}', "Patient.birthDate"),
        ('{"resourceType":"Patient","birthDate":"2023-02-30"}', "Patient.birthDate"),
        ('{"resourceType":"Patient","deceasedDateTime":"2020-01-01T10:00"}', "Patient.deceasedDateTime"),
        ('{"resourceType":"Patient","meta":{"lastUpdated":"2020-01-01"}}', "Patient.meta.lastUpdated"),
        ('{"resourceType":"Patient","implicitRules":"has space"}', "Patient.implicitRules"),
        ('{"resourceType":"Patient","language":" en"}', "Patient.language"),
    ],
)
def test_primitive_json_representation(body: str, path: str) -> None:
    assert path in paths(body)


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ('{"resourceType":"Patient","name":null}', "Patient.name"),
        ('{"resourceType":"Patient","name":[]}', "Patient.name"),
        ('{"resourceType":"Patient","name":[{}]}', "Patient.name[0]"),
        ('{"resourceType":"Patient","name":[null]}', "Patient.name[0]"),
        ('{"resourceType":"Patient","maritalStatus":{}}', "Patient.maritalStatus"),
        ('{"resourceType":"Patient","active":null}', "Patient.active"),
    ],
)
def test_null_empty_array_and_empty_object_refused(body: str, path: str) -> None:
    assert paths(body) == [path]


def test_cardinality_and_array_shape() -> None:
    assert paths('{"resourceType":"Patient","name":{"family":"Zhang"}}') == ["Patient.name"]
    assert paths('{"resourceType":"Patient","gender":["male"]}') == ["Patient.gender"]
    # Observation.status and .code are 1..1
    assert set(paths('{"resourceType":"Observation"}')) == {"Observation.status", "Observation.code"}


def test_choice_types() -> None:
    assert paths(OBS + '"valueQuantity":{"value":1},"valueString":"x"}') == ["Observation.valueString"]
    assert paths(OBS + '"valueMoney":{"value":1}}') == ["Observation.valueMoney"]
    assert paths(OBS + '"value":{"value":1}}') == ["Observation.value"]
    assert paths(OBS + '"effectivePeriod":{"start":"2024-01-01"}}') == []


def test_unknown_elements_refused_at_every_level() -> None:
    assert paths('{"resourceType":"Patient","foo":1}') == ["Patient.foo"]
    assert paths('{"resourceType":"Patient","name":[{"nickname":"x"}]}') == ["Patient.name[0].nickname"]
    assert paths('{"resourceType":"Patient","contact":[{"foo":"x"}]}') == ["Patient.contact[0].foo"]
    assert paths('{"resourceType":"Patient","_foo":{"id":"x"}}') == ["Patient._foo"]
    assert paths('{"resourceType":"Patient","_name":{"id":"x"}}') == ["Patient._name"]  # not a primitive


def test_primitive_extensions() -> None:
    ext = '{"extension":[{"url":"http://example.org/why","valueString":"unknown"}]}'
    assert paths('{"resourceType":"Patient","_birthDate":' + ext + "}") == []
    assert paths('{"resourceType":"Patient","birthDate":"1990","_birthDate":' + ext + "}") == []
    assert paths('{"resourceType":"Patient","name":[{"given":["A",null],"_given":[null,' + ext + "]}]}") == []
    # misaligned arrays, null on both sides, a non-Element member
    assert paths('{"resourceType":"Patient","name":[{"given":["A","B"],"_given":[' + ext + "]}]}") == [
        "Patient.name[0]._given"]
    assert "Patient.name[0].given[1]" in paths(
        '{"resourceType":"Patient","name":[{"given":["A",null],"_given":[' + ext + ",null]}]}")
    assert paths('{"resourceType":"Patient","_birthDate":{"value":"x"}}') == ["Patient._birthDate.value"]
    assert paths('{"resourceType":"Patient","_birthDate":{}}') == ["Patient._birthDate"]


def test_extensions() -> None:
    assert paths('{"resourceType":"Patient","extension":[{"valueString":"x"}]}') == ["Patient.extension[0].url"]
    assert paths('{"resourceType":"Patient","extension":[{"url":"http://x"}]}') == ["Patient.extension[0]"]
    both = '{"url":"http://x","valueString":"a","extension":[{"url":"http://y","valueBoolean":true}]}'
    assert paths('{"resourceType":"Patient","extension":[' + both + "]}") == ["Patient.extension[0]"]
    assert paths('{"resourceType":"Patient","extension":[{"url":"http://x","valueBoolean":"yes"}]}') == [
        "Patient.extension[0].valueBoolean"]


def test_contained_and_nested_resources() -> None:
    org = '{"resourceType":"Organization","id":"o1","name":"Clinic"}'
    assert paths('{"resourceType":"Patient","contained":[' + org + "]}") == []
    assert paths('{"resourceType":"Patient","contained":[{"resourceType":"Organization","active":"y"}]}') == [
        "Patient.contained[0].active"]
    assert paths('{"resourceType":"Patient","contained":[{"resourceType":"Nope"}]}') == [
        "Patient.contained[0].resourceType"]
    assert paths('{"resourceType":"Patient","contained":[{"resourceType":"Organization","meta":'
                 '{"versionId":"1"}}]}') == ["Patient.contained[0].meta.versionId"]
    nested = '{"resourceType":"Organization","contained":[' + org + "]}"
    assert paths('{"resourceType":"Patient","contained":[' + nested + "]}") == ["Patient.contained[0].contained"]
    bundle = '{"resourceType":"Bundle","type":"collection","entry":[{"resource":{"resourceType":"Patient",' \
             '"active":"no"}}]}'
    assert paths(bundle) == ["Bundle.entry[0].resource.active"]


def test_required_bindings() -> None:
    assert paths('{"resourceType":"Patient","gender":"M"}') == ["Patient.gender"]
    assert paths('{"resourceType":"Observation","status":"done","code":{"text":"x"}}') == ["Observation.status"]
    assert paths('{"resourceType":"Patient","gender":"female"}') == []


@pytest.mark.parametrize(
    ("div", "ok"),
    [
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>张伟 <b>1990</b></p></div>', True),
        ('<div xmlns="http://www.w3.org/1999/xhtml" xml:lang="zh"><img src="x.png" alt="x"/></div>', True),
        ("<div>no namespace</div>", False),
        ('<p xmlns="http://www.w3.org/1999/xhtml">not a div</p>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script>x</div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">x</p></div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><a href="javascript:x()">x</a></div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><form>x</form></div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml">   </div>', False),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>unclosed</div>', False),
        ('<!DOCTYPE x [<!ENTITY a "b">]><div xmlns="http://www.w3.org/1999/xhtml">&a;</div>', False),
    ],
)
def test_narrative_xhtml(div: str, ok: bool) -> None:
    res: dict[str, Any] = {"resourceType": "Patient", "text": {"status": "generated", "div": div}}
    issues = V.issues(res)
    assert (issues == []) == ok, issues
    if not ok:
        assert issues[0].expression == ["Patient.text.div"]


def test_every_type_and_resource_type_checks() -> None:
    assert V.issues({"resourceType": "Patient"}, "Observation")[0].expression == ["resourceType"]
    assert V.issues({"resourceType": "Nope"})[0].code == "not-supported"
    assert V.issues({"active": True})[0].expression == ["resourceType"]


def test_validate_raises_400_with_every_issue() -> None:
    with pytest.raises(FhirError) as info:
        V.validate(loads('{"resourceType":"Patient","active":"true","gender":"x"}'), "Patient")
    assert info.value.status == 400
    outcome = info.value.outcome()
    assert [i["expression"] for i in outcome["issue"]] == [["Patient.active"], ["Patient.gender"]]


def test_valid_resources_of_many_types_pass() -> None:
    samples = Path(__file__).resolve().parents[1] / "samples"
    for f in sorted(samples.glob("*.json")):
        assert V.issues(loads(f.read_bytes())) == [], f.name
    assert paths('{"resourceType":"Encounter","status":"finished","class":{"code":"AMB"}}') == []
    assert paths('{"resourceType":"MedicationRequest","status":"active","intent":"order",'
                 '"medicationCodeableConcept":{"text":"x"},"subject":{"reference":"Patient/1"},'
                 '"dosageInstruction":[{"doseAndRate":[{"doseQuantity":{"value":0.50,"unit":"g"}}]}]}') == []
    assert paths('{"resourceType":"Questionnaire","status":"draft","item":[{"linkId":"1","type":"group",'
                 '"item":[{"linkId":"1.1","type":"string","foo":1}]}]}') == ["Questionnaire.item[0].item[0].foo"]
