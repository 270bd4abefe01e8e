"""Query parameters -> SearchRequest: values, prefixes, modifiers, chains, _has, control parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.core.errors import FhirError
from app.search.parser import parse_search
from app.search.registry import SearchRegistry
from app.search.request import Filter, FilterValue, HasFilter, Include, SortRule

REG = SearchRegistry.from_profiles(Path(__file__).resolve().parents[2] / "fhir_profiles")


def parse(rt: str, params: list[tuple[str, str]], strict: bool = False, **kw: object):  # noqa: ANN201
    return parse_search(rt, params, REG, strict=strict, default_count=20, max_count=500, **kw)


def error(rt: str, params: list[tuple[str, str]], strict: bool = False) -> FhirError:
    with pytest.raises(FhirError) as info:
        parse(rt, params, strict)
    assert info.value.status == 400
    return info.value


def test_or_within_a_value_and_across_repetitions() -> None:
    req = parse("Observation", [("code", "a,b\\,c"), ("code", "d")])
    assert req.filters == [
        Filter("code", None, [FilterValue(None, "a"), FilterValue(None, "b\\,c")]),
        Filter("code", None, [FilterValue(None, "d")]),
    ]
    assert req.count == 20 and req.resource_type == "Observation"


def test_prefixes_only_for_ordered_types() -> None:
    req = parse(
        "Observation",
        [("date", "ge2020-01-01"), ("value-quantity", "lt5.4|http://u|mg"), ("value-string", "gtx")],
    )
    assert req.filters[0].values == [FilterValue("ge", "2020-01-01")]
    assert req.filters[1].values == [FilterValue("lt", "5.4|http://u|mg")]
    assert req.filters[2].values == [FilterValue(None, "gtx")]  # a string has no prefix
    # '+' in a time zone arrives as a space after form decoding
    req = parse("Patient", [("_lastUpdated", "gt2024-01-01T00:00:00 08:00")])
    assert req.filters[0].values == [FilterValue("gt", "2024-01-01T00:00:00+08:00")]


@pytest.mark.parametrize(
    ("rt", "params", "needle"),
    [
        ("Patient", [("birthdate", "xx2020")], "birthdate"),
        ("Patient", [("birthdate", "2020-13-01")], "not a FHIR date"),
        ("Observation", [("value-quantity", "abc")], "value-quantity"),
        ("Observation", [("value-quantity", "5|a")], "number|system|code"),
        ("Patient", [("name:foo", "x")], "Unknown modifier ':foo'"),
        ("Patient", [("birthdate:exact", "2020")], "Unknown modifier"),
        ("Patient", [("name:missing", "maybe")], "true or false"),
        ("Patient", [("_count", "-1")], "_count"),
        ("Patient", [("_count", "ten")], "non-negative integer"),
        ("Patient", [("_summary", "all")], "_summary"),
        ("Patient", [("_total", "some")], "_total"),
        ("Patient", [("_elements", "name,$where")], "$where"),
        ("Patient", [("_sort", "$where")], "'$where'"),
        ("Patient", [("_sort", "-nosuch")], "nosuch"),
        ("Patient", [("identifier", "a|b|c")], "at most one '|'"),
        ("Observation", [("subject:Organization", "1")], "Unknown modifier"),
        ("Observation", [("code.identifier", "x")], "not a reference"),
        ("Observation", [("subject.organization.name", "x")], "one level"),
        ("Patient", [("_has:Observation:patient:_has:Observation:patient:code", "x")], "one level of _has"),
        ("Patient", [("_has:Nope:patient:code", "x")], "Nope"),
        ("Patient", [("_has:Observation:specimen:code", "x")], "not a reference to Patient"),
        ("Patient", [("_has:Observation", "x")], "_has:Type:reference:parameter"),
        ("Observation", [("_include", "Observation")], "SourceType:parameter"),
        ("Observation", [("_include", "Observation:code")], "not a reference parameter"),
        ("Observation", [("_include", "Patient:organization")], "source type must be Observation"),
        ("Observation", [("_include", "Observation:subject:Organization")], "cannot point to"),
        ("Observation", [("_include:deep", "Observation:subject")], "Unknown modifier"),
    ],
)
def test_invalid_values_are_400_naming_the_parameter(
    rt: str, params: list[tuple[str, str]], needle: str
) -> None:
    err = error(rt, params)
    assert needle in err.diagnostics
    assert err.issues[0].expression == [params[0][0]]


def test_unknown_parameters_strict_and_lenient() -> None:
    err = error("Patient", [("nosuch", "1")], strict=True)
    assert "nosuch" in err.diagnostics and err.issues[0].expression == ["nosuch"]
    req = parse("Patient", [("nosuch", "1"), ("_text", "x"), ("name", "li")])
    assert req.ignored == ["nosuch", "_text"]
    assert [f.code for f in req.filters] == ["name"]


def test_injection_attempts_never_become_fields() -> None:
    req = parse("Patient", [("name[$ne]", "x"), ("$where", "1"), ("name", "^.*"), ("family", '{"$gt": ""}')])
    assert req.ignored == ["name[$ne]", "$where"]
    assert req.filters[0].values == [FilterValue(None, "^.*")]
    assert req.filters[1].values == [FilterValue(None, '{"$gt": ""}')]
    assert error("Patient", [("name[$ne]", "x")], strict=True).issues[0].expression == ["name[$ne]"]


def test_modifiers() -> None:
    req = parse(
        "Patient",
        [
            ("name:exact", "张伟"),
            ("family:contains", "ang"),
            ("identifier:not", "x"),
            ("gender:missing", "true"),
            ("_profile:below", "http://x/"),
        ],
    )
    assert [(f.code, f.modifier) for f in req.filters] == [
        ("name", "exact"),
        ("family", "contains"),
        ("identifier", "not"),
        ("gender", "missing"),
        ("_profile", "below"),
    ]
    req = parse(
        "Observation",
        [
            ("subject:Patient", "123"),
            ("code:text", "heart"),
            ("performer:identifier", "a|b"),
        ],
    )
    assert [(f.code, f.modifier) for f in req.filters] == [
        ("subject", "Patient"),
        ("code", "text"),
        ("performer", "identifier"),
    ]


def test_empty_values_are_ignored() -> None:
    assert parse("Patient", [("name", ""), ("gender", ",")]).filters == []


def test_chains() -> None:
    req = parse("Observation", [("subject:Patient.identifier", "urn:x|1"), ("subject:Patient.name:exact", "张伟")])
    inner = Filter("identifier", None, [FilterValue(None, "urn:x|1")])
    assert req.filters[0] == Filter("subject", "Patient", [], chain=("Patient", inner))
    assert req.filters[1].chain == ("Patient", Filter("name", "exact", [FilterValue(None, "张伟")]))
    # Observation.subject may point to Group, Device, Patient, Location: of those, Patient and Location have
    # a name parameter, so the type must be given; only Patient has birthdate, so there it need not be
    err = error("Observation", [("subject.name:exact", "张伟")])
    assert "subject:" in err.diagnostics and "Location" in err.diagnostics
    assert parse("Observation", [("subject.birthdate", "1990")]).filters[0].chain[0] == "Patient"
    # AuditEvent.agent may point to several served types: the type must be given
    err = error("AuditEvent", [("agent.identifier", "x")])
    assert "agent:" in err.diagnostics and err.issues[0].expression == ["agent.identifier"]
    req = parse("AuditEvent", [("agent:Practitioner.identifier", "x")])
    assert req.filters[0].chain[0] == "Practitioner"
    # an invalid value in the chained parameter is a 400 naming the whole parameter
    err = error("Observation", [("subject.birthdate", "soon")])
    assert err.issues[0].expression == ["subject.birthdate"]
    # an unknown chained parameter is an unknown parameter
    assert parse("Observation", [("subject.nosuch", "x")]).ignored == ["subject.nosuch"]


def test_has() -> None:
    req = parse("Patient", [("_has:Observation:patient:code", "1234-5,999")])
    inner = Filter("code", None, [FilterValue(None, "1234-5"), FilterValue(None, "999")])
    assert req.filters == [Filter("_has", has=HasFilter("Observation", "patient", inner))]
    req = parse("Patient", [("_has:Observation:subject:date", "ge2024")])
    assert req.filters[0].has.filter.values == [FilterValue("ge", "2024")]


def test_control_parameters() -> None:
    req = parse(
        "Observation",
        [
            ("_sort", "-date,code,_id"),
            ("_count", "1000"),
            ("_include", "Observation:subject:Patient"),
            ("_include:iterate", "Patient:organization"),
            ("_revinclude", "Observation:has-member"),
            ("_summary", "count"),
            ("_elements", "code, subject"),
            ("_total", "accurate"),
            ("_offset", "40"),
            ("_format", "json"),
            ("_pretty", "true"),
        ],
    )
    assert req.sort == [SortRule("date", True), SortRule("code", False), SortRule("_id", False)]
    assert req.count == 500  # capped
    assert req.includes == [
        Include("Observation", "subject", "Patient"),
        Include("Patient", "organization", None, True),
    ]
    assert req.revincludes == [Include("Observation", "has-member")]
    assert (req.summary, req.elements, req.total) == ("count", ["code", "subject"], "accurate")
    assert req.offset == 40
    assert req.filters == [] and req.ignored == []
    assert parse("Patient", [("_count", "0")]).count == 0
    req = parse("Patient", [("_cursor", "abc"), ("_page", "2")], skip={"_page"})
    assert req.cursor == "abc" and req.ignored == []


def test_unknown_resource_type() -> None:
    err = error("Nope", [])
    assert "Nope" in err.diagnostics
