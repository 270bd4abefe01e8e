"""A token on a `code` element implies its value set's system (search.html#token), in memory as in the store:
the compiled filter, evaluated by app.search.matcher (scope queries, the disclosure gate, OperationDefinition
searches), answers `system|code`, `|code`, `system|` and `:not` as the database does."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.search.compile import compile_filter
from app.search.matcher import lower_for_database, resource_matches
from app.search.parser import parse_search
from app.search.registry import SearchRegistry

REG = SearchRegistry.from_profiles(Path(__file__).resolve().parents[2] / "fhir_profiles")
GENDER = "http://hl7.org/fhir/administrative-gender"


def hit(resource: dict, name: str, value: str) -> bool:
    request = parse_search(resource["resourceType"], [(name, value)], REG)
    flt = compile_filter(request, REG, lambda *_: [])
    assert lower_for_database(flt) == flt  # nothing the database would answer differently
    return resource_matches(flt, resource, resource["resourceType"], REG)


MALE = {"resourceType": "Patient", "id": "m", "gender": "male"}
NONE = {"resourceType": "Patient", "id": "n"}


@pytest.mark.parametrize(("value", "male", "none"), [
    ("male", True, False),
    (f"{GENDER}|male", True, False),
    (f"{GENDER}|female", False, False),
    ("|male", False, False),
    ("http://example.org/x|male", False, False),
    (f"{GENDER}|", True, False),
    (f"{GENDER}|female,{GENDER}|male", True, False),
])
def test_gender(value: str, male: bool, none: bool) -> None:
    assert hit(MALE, "gender", value) is male
    assert hit(NONE, "gender", value) is none


@pytest.mark.parametrize(("value", "male", "none"), [
    (f"{GENDER}|male", False, True),
    ("|male", True, True),
    (f"{GENDER}|", False, True),
])
def test_gender_not(value: str, male: bool, none: bool) -> None:
    assert hit(MALE, "gender:not", value) is male
    assert hit(NONE, "gender:not", value) is none


def test_parameters_over_codings_keep_their_systems() -> None:
    obs = {"resourceType": "Observation", "id": "o", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]}}
    assert REG.get("Observation", "code") is not None and REG.get("Observation", "code").system == ""
    assert REG.get("Observation", "status").system == "http://hl7.org/fhir/observation-status"
    assert hit(obs, "code", "http://loinc.org|718-7") and not hit(obs, "code", "|718-7")
    assert hit(obs, "status", "http://hl7.org/fhir/observation-status|final")
