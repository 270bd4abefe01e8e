"""The type a reference points to (FHIR R4 references.html): one reading, app.core.ids.reference_type, for the
validator (a reference's target among the element's targets, Reference.type agreeing with it), the search index
(`resolve() is T`, the bare id of `Type/id`), reference search (the `:Type` modifier) and the owner function.

The validator had a copy of its own before (2026-12): the two disagreed on conditional references (`Type?query`,
neither saw the type, and the validator read `hospital.example` out of `Patient?identifier=http://hospital.example/mrn|7`),
on `Patient//1` and on absolute URLs that do not end in Type/id (the validator took the segment before the last)."""

from __future__ import annotations

from typing import Any

import pytest

from app.core import ids
from app.core.ids import reference_type, split_reference
from app.fhir import validation
from app.search import fhirpath
from app.search.compilers import reference as reference_search

CASES: list[tuple[str, str | None]] = [
    # relative, and versioned
    ("Patient/1", "Patient"),
    ("MedicationRequest/a-1.b", "MedicationRequest"),
    ("Patient/1/_history/2", "Patient"),
    # absolute URLs whose last segments are Type/id, optionally /_history/vid
    ("https://x.org/fhir/Patient/1", "Patient"),
    ("http://x.org/Patient/1", "Patient"),
    ("https://x.org/fhir/Patient/1/_history/2", "Patient"),
    ("https://x.org:8443/fhir/r4/Observation/o-1", "Observation"),
    # contained, and entries of the same Bundle: the text does not say the type
    ("#p1", None),
    ("#", None),
    ("urn:uuid:4f1c1b0e-6a3e-4a4c-9b1e-0d5b8c9f2a11", None),
    ("urn:oid:1.2.3", None),
    # conditional references (transactions): the type before the query, whatever the query holds
    ("Patient?identifier=urn:oid:2.16.156.10011.1.3|110101200001010010", "Patient"),
    ("Patient?identifier=http://hospital.example/mrn|7", "Patient"),
    ("Observation?subject=Patient/1", "Observation"),
    ("Patient?", "Patient"),
    ("?identifier=x", None),
    ("https://x.org/fhir/Patient?identifier=1", None),  # a conditional reference is relative only
    ("Patient/1?_format=json", "Patient"),  # a query after Type/id is ignored
    # no type to be read
    ("", None),
    ("Patient", None),
    ("Patient/", None),
    ("Patient//1", None),
    ("Patient/1/", None),
    ("Patient/1/_history", None),
    ("Patient/1/_history/", None),
    ("patient/1", None),
    ("Foo-Bar/1", None),
    ("https://x.org/some/document", None),
    ("https://x.org/", None),
]


@pytest.mark.parametrize(("text", "expected"), CASES)
def test_the_type_a_reference_points_to(text: str, expected: str | None) -> None:
    assert reference_type(text) == expected
    assert reference_type({"reference": text}) == expected  # a Reference object reads as its text


@pytest.mark.parametrize("value", [None, 5, {}, {"type": "Patient"}, {"reference": 5}, ["Patient/1"]])
def test_anything_but_reference_text_names_no_type(value: Any) -> None:
    assert reference_type(value) is None  # Reference.type alone is the validator's to weigh, not the text's


def test_every_caller_uses_the_one_reading() -> None:
    assert fhirpath.reference_type is ids.reference_type
    assert validation.reference_type is ids.reference_type
    assert reference_search.reference_type is ids.reference_type
    assert not hasattr(validation, "_reference_type")


@pytest.mark.parametrize(("text", "expected"), [c for c in CASES if c[1] is not None])
def test_split_reference_agrees_on_the_type_of_a_local_record(text: str, expected: str) -> None:
    """split_reference answers another question (which record of this server; None for another server's URL or a
    conditional reference) and reads more loosely (`Patient/1/` is Patient/1 to it), but never another type."""
    local = split_reference(text, "https://x.org/fhir")
    assert local is None or local[0] == expected


# -- what the validator makes of it ------------------------------------------------------------------------

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}


@pytest.fixture(scope="module")
def validator() -> validation.Validator:
    from pathlib import Path

    return validation.Validator(Path(__file__).resolve().parents[2] / "fhir_profiles")


def _paths(v: validation.Validator, resource: dict[str, Any]) -> list[str]:
    return [e for i in v.issues(resource) for e in i.expression]


@pytest.mark.parametrize(("subject", "refused"), [
    ({"reference": "Medication?code=x"}, "Observation.subject.reference"),  # not a target of subject
    ({"reference": "Patient?identifier=a|b", "type": "Group"}, "Observation.subject.type"),
    ({"reference": "Patient?identifier=http://hospital.example/mrn|7"}, None),
    ({"reference": "Group?identifier=http://x/y|1", "type": "Group"}, None),
    ({"reference": "https://x.org/fhir/Medication/1"}, "Observation.subject.reference"),
    ({"reference": "https://x.org/some/document"}, None),  # no type to judge
])
def test_the_validator_judges_a_conditional_reference_by_its_type(validator: validation.Validator,
                                                                   subject: dict[str, Any],
                                                                   refused: str | None) -> None:
    paths = [p for p in _paths(validator, {**OBS, "subject": subject}) if p.startswith("Observation.subject")]
    assert paths == ([refused] if refused else []), paths
