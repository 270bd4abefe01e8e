"""SearchRequest -> MongoDB filter: the exact filters per type, and FHIR semantics checked end to end
(extract_index -> stored document -> parse -> compile -> matches), with a fake resolve for chains and _has."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from app.core.errors import FhirError
from app.search.compile import compile_filter, compile_sort
from app.search.compilers.date import range_condition
from app.search.extract import extract_index
from app.search.matcher import lower_for_database, matches
from app.search.parser import parse_search
from app.search.registry import SearchRegistry
from app.search.request import Filter, FilterValue, SearchRequest, SortRule

REG = SearchRegistry.from_profiles(Path(__file__).resolve().parents[2] / "fhir_profiles")
BASE = "https://ehc.example.cn/fhir"
UCUM = "http://unitsofmeasure.org"
ID_CARD = "urn:oid:2.16.156.10011.1.3"


def _patient(pid: str, family: str, given: str, birth: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth,
        **extra,
    }


def _obs(
    oid: str, subject: str, code: str, value: float | None = None, unit: str = "mg", **extra: Any
) -> dict:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "subject": {"reference": subject},
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        **extra,
    }
    if value is not None:
        obs["valueQuantity"] = {"value": value, "system": UCUM, "code": unit, "unit": unit}
    return obs


PATIENTS = [
    _patient(
        "p1",
        "张",
        "伟",
        "1990-05-01",
        gender="male",
        active=True,
        identifier=[{"system": ID_CARD, "value": "11010519900501001X"}],
        telecom=[{"system": "phone", "value": "138-0013-8000"}],
        managingOrganization={"reference": "Organization/o1"},
        meta={"profile": ["http://ehc.cn/StructureDefinition/patient"]},
    ),
    _patient(
        "p2",
        "Zhang",
        "Wei",
        "1990",
        gender="female",
        active=False,
        identifier=[{"system": "urn:ehc:mrn:o1", "value": "M2"}],
    ),
    _patient(
        "p3",
        "Lǐ",
        "Nà",
        "2001-02-03",
        deceasedDateTime="2020-01-01T10:00:00+08:00",
        managingOrganization={"reference": f"{BASE}/Organization/o2"},
    ),
    {"resourceType": "Patient", "id": "p4"},
]
OBSERVATIONS = [
    _obs("o1", "Patient/p1", "8867-4", 72, "/min", effectiveDateTime="2024-01-15T08:00:00Z"),
    _obs(
        "o2",
        "Patient/p2",
        "8867-4",
        120,
        "/min",
        effectivePeriod={"start": "2024-01-01", "end": "2024-02-01"},
    ),
    _obs("o3", "Patient/p1", "2339-0", 5.4, "mmol/L", effectiveDateTime="2023"),
    _obs("o4", "Group/g1", "2339-0", 0.0054, "mol/L"),
]


def _doc(res: dict[str, Any]) -> dict[str, Any]:
    ix, so = extract_index(res, REG, base_url=BASE)
    return {"_id": res["id"], "vid": 1, "del": False, "res": res, "ix": ix, "so": so}


DOCS = {"Patient": [_doc(r) for r in PATIENTS], "Observation": [_doc(r) for r in OBSERVATIONS]}


def resolve(rt: str, sub: SearchRequest) -> list[str]:
    """What the store does: run the sub-search; return ids, or the ix[collect] values for _has."""
    flt = compile_filter(sub, REG, resolve, base_url=BASE)
    hits = [d for d in DOCS[rt] if matches(flt, d)]
    if sub.collect:
        return [v for d in hits for v in d["ix"].get(sub.collect, [])]
    return [d["_id"] for d in hits]


def search(rt: str, params: list[tuple[str, str]]) -> list[str]:
    req = parse_search(rt, params, REG, strict=True, default_count=20, max_count=500)
    exact = compile_filter(req, REG, resolve, base_url=BASE)
    lowered = lower_for_database(exact)
    assert "$elemMatch" not in json.dumps(lowered, default=str).replace('"$elemMatch": {"$', "")
    hits = [d["_id"] for d in DOCS[rt] if matches(exact, d)]
    wide = [d["_id"] for d in DOCS[rt] if matches(lowered, d)]
    assert set(hits) <= set(wide)
    return hits


# --- exact filter shapes --------------------------------------------------------------------------------
def compiled(rt: str, params: list[tuple[str, str]]) -> dict[str, Any]:
    req = parse_search(rt, params, REG, strict=True, default_count=20, max_count=500)
    return compile_filter(req, REG, resolve, base_url=BASE)


def test_filter_shapes() -> None:
    assert compiled("Patient", []) == {}
    assert compiled("Patient", [("gender", "male")]) == {"ix.gender": "male"}
    assert compiled("Patient", [("gender", "male,female")]) == {"ix.gender": {"$in": ["male", "female"]}}
    assert compiled("Patient", [("gender:not", "male")]) == {"ix.gender": {"$nin": ["male"]}}
    assert compiled("Patient", [("gender:missing", "true")]) == {"ix.gender": {"$exists": False}}
    assert compiled("Patient", [("name", "Zhāng")]) == {"ix.name": {"$regex": "^zhang"}}
    assert compiled("Patient", [("name:contains", "a.b")]) == {"ix.name": {"$regex": "a\\.b"}}
    assert compiled("Patient", [("name:exact", "Zhang")]) == {"ix.name:exact": "Zhang"}
    assert compiled("Patient", [("gender", "male"), ("active", "true")]) == {
        "$and": [{"ix.gender": "male"}, {"ix.active": "true"}]
    }
    assert compiled("Patient", [("_id", "p1,p2")]) == {"_id": {"$in": ["p1", "p2"]}}
    assert compiled("Observation", [("subject:Patient", "p1")]) == {"ix.subject": "Patient/p1"}
    assert compiled("Observation", [("subject", f"{BASE}/Patient/p1")]) == {"ix.subject": "Patient/p1"}
    assert compiled("Observation", [("value-quantity", "gt5")]) == {
        "ix.value-quantity": {"$elemMatch": {"v": {"$gt": 5.0}}}
    }
    assert compiled("Patient", [("birthdate", "1990")]) == {
        "ix.birthdate": {
            "$elemMatch": {"lo": {"$gte": datetime(1989, 12, 31, 16)}, "hi": {"$lte": datetime(1990, 12, 31, 16)}}
        }
    }
    assert compiled("Patient", [("birthdate", "lt1990")]) == {
        "ix.birthdate.lo": {"$lt": datetime(1989, 12, 31, 16)}  # 1990 began at 16:00 UTC in China
    }


def test_injection_attempts_stay_data() -> None:
    flt = compiled("Patient", [("name", "^.*"), ("family", '{"$gt": ""}'), ("gender", "$where")])
    assert flt == {
        "$and": [
            {"ix.name": {"$regex": "^\\^\\.\\*"}},
            {"ix.family": {"$regex": "^" + re.escape('{"$gt": ""}')}},
            {"ix.gender": "$where"},
        ]
    }
    assert search("Patient", [("name", "^.*")]) == []
    assert search("Patient", [("name", ".*")]) == []
    with pytest.raises(FhirError):
        compiled("Patient", [("name[$ne]", "x")])
    # hand-built requests that bypass the parser are refused too
    with pytest.raises(FhirError):
        compile_filter(
            SearchRequest("Patient", [Filter("$where", None, [FilterValue(None, "1")])]), REG, resolve
        )
    with pytest.raises(FhirError):
        compile_sort(SearchRequest("Patient", sort=[SortRule("$where")]))


def _keys(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in _keys(v)}
    if isinstance(node, list):
        return {k for v in node for k in _keys(v)}
    return set()


def test_no_key_comes_from_a_value() -> None:
    nasty = '$gt"}{|\\,.$where'
    for rt, code in [("Patient", c) for c in REG.params("Patient")] + [("Observation", "value-quantity")]:
        p = REG.get(rt, code)
        if p.type in ("date", "number", "quantity"):
            continue
        flt = compiled(rt, [(code, nasty)])
        for key in _keys(flt):
            assert key in {"$in", "$regex", "$or", "$and"} or key == "_id" or key.startswith("ix."), (
                code,
                key,
            )


# --- semantics end to end ---------------------------------------------------------------------------------
def test_token_search() -> None:
    assert search("Patient", [("identifier", f"{ID_CARD}|11010519900501001X")]) == ["p1"]
    assert search("Patient", [("identifier", "11010519900501001X")]) == ["p1"]
    assert search("Patient", [("identifier", f"{ID_CARD}|")]) == ["p1"]
    assert search("Patient", [("identifier", "urn:ehc:mrn:o1|11010519900501001X")]) == []
    assert search("Patient", [("gender", "male,female")]) == ["p1", "p2"]
    assert search("Patient", [("gender:not", "male")]) == ["p2", "p3", "p4"]  # absent counts as 'not male'
    assert search("Patient", [("gender:missing", "true")]) == ["p3", "p4"]
    assert search("Patient", [("gender:missing", "false")]) == ["p1", "p2"]
    assert search("Patient", [("active", "false")]) == ["p2"]
    assert search("Patient", [("deceased", "true")]) == ["p3"]
    assert search("Patient", [("phone", "13800138000")]) == ["p1"]
    assert search("Patient", [("phone", "138 0013 8000")]) == ["p1"]
    assert search("Patient", [("telecom", "phone|138-0013-8000")]) == ["p1"]
    assert search("Patient", [("telecom", "email|138-0013-8000")]) == []
    assert search("Observation", [("code", "http://loinc.org|8867-4")]) == ["o1", "o2"]
    assert search("Observation", [("code", "8867-4"), ("code", "2339-0")]) == []  # AND
    assert search("Patient", [("_id", "p2,p3")]) == ["p2", "p3"]
    assert search("Patient", [("_id:not", "p1")]) == ["p2", "p3", "p4"]


def test_token_text() -> None:
    docs = [
        _doc(
            {
                "resourceType": "Observation",
                "id": "t1",
                "code": {"coding": [{"code": "x", "display": "Heart Rate"}], "text": "心率"},
            }
        )
    ]
    flt = compiled("Observation", [("code:text", "heart")])
    assert [d["_id"] for d in docs if matches(flt, d)] == ["t1"]
    assert not matches(compiled("Observation", [("code:text", "rate")]), docs[0])
    assert matches(compiled("Observation", [("code:text", "心")]), docs[0])


def test_string_search() -> None:
    assert search("Patient", [("name", "张")]) == ["p1"]
    assert search("Patient", [("name", "张伟")]) == ["p1"]
    assert search("Patient", [("name", "zhang wei")]) == ["p2"]
    assert search("Patient", [("name", "WEI ZHANG")]) == ["p2"]
    assert search("Patient", [("name", "zhangw")]) == ["p2"]
    assert search("Patient", [("family", "li")]) == ["p3"]  # accents and case ignored
    assert search("Patient", [("family", "i")]) == []  # starts-with, not contains
    assert search("Patient", [("family:contains", "i")]) == ["p3"]
    assert search("Patient", [("family:exact", "Lǐ")]) == ["p3"]
    assert search("Patient", [("family:exact", "li")]) == []
    assert search("Patient", [("given", "na,wei")]) == ["p2", "p3"]
    assert search("Patient", [("name:missing", "true")]) == ["p4"]
    # phonetic: Chinese names also by pinyin
    assert search("Patient", [("phonetic", "zhangwei")]) == ["p1", "p2"]
    assert search("Patient", [("phonetic", "li na")]) == ["p3"]
    assert search("Patient", [("name", "zhangwei")]) == ["p2"]  # name itself does not transliterate


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1990", ["p1", "p2"]),
        ("1990-05", ["p1"]),
        ("eq1990-05-01", ["p1"]),
        ("ne1990", ["p3"]),
        ("gt1990", ["p3"]),
        ("gt1990-05-01", ["p2", "p3"]),  # 1990 (the whole year) reaches beyond May 1st
        ("ge1990-05-01", ["p1", "p2", "p3"]),
        ("lt1990-05-01", ["p2"]),
        ("le1990-05-01", ["p1", "p2"]),
        ("lt1990", []),
        ("sa1990-05-01", ["p3"]),
        ("eb2001", ["p1", "p2"]),
        ("eb1990-06", ["p1"]),
        ("eb1990-05-01", []),
        ("2001-02-03T00:00:00+08:00", []),
    ],
)
def test_date_prefixes(value: str, expected: list[str]) -> None:
    assert search("Patient", [("birthdate", value)]) == expected


def test_date_ranges_periods_and_time_zones() -> None:
    # o2's period ends on 2024-02-01 (the whole day): it is not within January, but within 2024
    assert search("Observation", [("date", "2024-01")]) == ["o1"]
    assert search("Observation", [("date", "2024")]) == ["o1", "o2"]
    assert search("Observation", [("date", "2024-01-15")]) == ["o1"]  # a Period within a day is not 'eq'
    assert search("Observation", [("date", "gt2024-01-20")]) == ["o2"]
    assert search("Observation", [("date", "ge2024-01-01"), ("date", "lt2024-01-02")]) == ["o2"]
    assert search("Observation", [("date", "2024-01-15T16:00:00+08:00")]) == ["o1"]
    assert search("Patient", [("death-date", "2020-01-01T02:00:00Z")]) == ["p3"]
    assert search("Observation", [("date:missing", "true")]) == ["o4"]


def test_date_ap_and_multiple_ranges() -> None:
    now = datetime(2024, 1, 1)
    flt = range_condition("ix.d", "ap", datetime(2023, 12, 1), datetime(2023, 12, 2), now)
    near = {"ix": {"d": [{"lo": datetime(2023, 12, 3), "hi": datetime(2023, 12, 4)}]}}
    far = {"ix": {"d": [{"lo": datetime(2023, 9, 1), "hi": datetime(2023, 9, 2)}]}}
    assert matches(flt, near) and not matches(flt, far)
    # eq must hold for one range: [1990, 1990-12] and [2000, ...] together do not 'eq' 1995
    eq = range_condition("ix.d", "eq", datetime(1995, 1, 1), datetime(1996, 1, 1))
    split = {
        "ix": {
            "d": [
                {"lo": datetime(1990, 1, 1), "hi": datetime(1990, 2, 1)},
                {"lo": datetime(1995, 3, 1), "hi": datetime(2005, 1, 1)},
            ]
        }
    }
    assert not matches(eq, split)
    assert matches(lower_for_database(eq), split)  # the lowered filter is wider: the store re-checks
    inside = {"ix": {"d": [{"lo": datetime(1995, 3, 1), "hi": datetime(1995, 3, 1) + timedelta(days=1)}]}}
    assert matches(eq, inside)


def test_quantity_search() -> None:
    assert search("Observation", [("value-quantity", "72")]) == ["o1"]
    assert search("Observation", [("value-quantity", "72.0")]) == ["o1"]
    assert search("Observation", [("value-quantity", "72.1")]) == []
    assert search("Observation", [("value-quantity", "gt72")]) == ["o2"]
    assert search("Observation", [("value-quantity", "le72")]) == ["o1", "o3", "o4"]
    assert search("Observation", [("value-quantity", "ne72")]) == ["o2", "o3", "o4"]
    assert search("Observation", [("value-quantity", "ap5")]) == ["o3"]
    assert search("Observation", [("value-quantity", f"5.4|{UCUM}|mmol/L")]) == ["o3"]
    assert search("Observation", [("value-quantity", f"5.4|{UCUM}|mol/L")]) == []
    assert search("Observation", [("value-quantity", "lt200||/min")]) == ["o1", "o2"]
    assert search("Observation", [("value-quantity", "lt200|http://other|/min")]) == []
    assert search("Observation", [("value-quantity", "100,5.4")]) == ["o3"]


def test_number_search() -> None:
    p = REG.get("Observation", "value-quantity")  # any parameter; number compiles over a scalar list
    from app.search.compilers.number import compile_number

    doc = {"ix": {p.code: [99.7, 250.0]}}
    assert matches(compile_number(p, Filter(p.code, None, [FilterValue(None, "100")])), doc)
    assert not matches(compile_number(p, Filter(p.code, None, [FilterValue(None, "100.0")])), doc)
    assert matches(compile_number(p, Filter(p.code, None, [FilterValue("gt", "200")])), doc)
    assert not matches(compile_number(p, Filter(p.code, None, [FilterValue("lt", "99")])), doc)
    assert matches(compile_number(p, Filter(p.code, None, [FilterValue("ne", "100")])), doc)
    assert not matches(compile_number(p, Filter(p.code, None, [FilterValue(None, "150")])), doc)


def test_reference_search() -> None:
    assert search("Observation", [("subject", "Patient/p1")]) == ["o1", "o3"]
    assert search("Observation", [("subject", "p1")]) == ["o1", "o3"]
    assert search("Observation", [("subject:Patient", "p2")]) == ["o2"]
    assert search("Observation", [("patient", "g1")]) == []  # patient = subject where it is a Patient
    assert search("Observation", [("subject", "Group/g1")]) == ["o4"]
    assert search("Patient", [("organization", f"{BASE}/Organization/o2")]) == ["p3"]
    assert search("Patient", [("organization", "Organization/o1/_history/4")]) == ["p1"]
    assert search("Patient", [("organization:missing", "true")]) == ["p2", "p4"]
    docs = [
        _doc(
            {
                "resourceType": "Observation",
                "id": "i1",
                "performer": [{"identifier": {"system": "urn:lic", "value": "L1"}}],
            }
        )
    ]
    flt = compiled("Observation", [("performer:identifier", "urn:lic|L1")])
    assert flt == {"ix.performer:identifier": "urn:lic|L1"}
    assert matches(flt, docs[0])


def test_uri_search() -> None:
    assert search("Patient", [("_profile", "http://ehc.cn/StructureDefinition/patient")]) == ["p1"]
    assert search("Patient", [("_profile", "http://ehc.cn/StructureDefinition")]) == []
    assert search("Patient", [("_profile:below", "http://ehc.cn/Struct")]) == ["p1"]
    assert search("Patient", [("_profile:above", "http://ehc.cn/StructureDefinition/patient/v2")]) == ["p1"]


def test_chain_with_fake_resolve() -> None:
    assert search("Observation", [("subject:Patient.identifier", "11010519900501001X")]) == ["o1", "o3"]
    assert search("Observation", [("subject:Patient.name", "zhang")]) == ["o2"]
    assert search("Observation", [("subject.birthdate", "ge1990-05-01"), ("code", "8867-4")]) == ["o1", "o2"]
    assert search("Observation", [("patient.gender", "other")]) == []
    calls: list[tuple[str, SearchRequest]] = []

    def spy(rt: str, sub: SearchRequest) -> list[str]:
        calls.append((rt, sub))
        return ["x1", "x2"]

    req = parse_search(
        "Observation", [("subject:Patient.name", "li")], REG, strict=True, default_count=20, max_count=500
    )
    assert compile_filter(req, REG, spy) == {"ix.subject": {"$in": ["Patient/x1", "Patient/x2"]}}
    assert calls[0][0] == "Patient" and calls[0][1].filters[0].code == "name" and calls[0][1].collect is None


def test_has_with_fake_resolve() -> None:
    assert search("Patient", [("_has:Observation:patient:code", "8867-4")]) == ["p1", "p2"]
    assert search("Patient", [("_has:Observation:subject:code", "2339-0")]) == ["p1"]
    assert search("Patient", [("_has:Observation:patient:value-quantity", "gt100")]) == ["p2"]
    assert search("Patient", [("_has:Observation:patient:code", "nope")]) == []
    req = parse_search(
        "Patient", [("_has:Observation:patient:code", "x")], REG, strict=True, default_count=20, max_count=500
    )
    flt = compile_filter(req, REG, lambda rt, sub: ["Patient/a", "b", "Group/c", "Patient/a"])
    assert flt == {"_id": {"$in": ["a"]}}


def test_sort() -> None:
    req = parse_search(
        "Observation",
        [("_sort", "-date,code,_id,-_lastUpdated")],
        REG,
        strict=True,
        default_count=20,
        max_count=500,
    )
    assert compile_sort(req) == [("so.date", -1), ("so.code", 1), ("_id", 1), ("so._lastUpdated", -1)]
    assert compile_sort(SearchRequest("Patient")) == []
