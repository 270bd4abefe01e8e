"""The core R4 invariants table and its evaluation (app/fhir/invariants.py): every expression runs in fhirpathpy,
the left-out ones say why, the shortcuts and proofs never answer "holds" where fhirpathpy answers "fails", and
the representative resources of scripts/bench_validation.py never reach fhirpathpy."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.invocations import invocation_registry
from fhirpathpy.engine.nodes import ResourceNode

from app.fhir.invariants import _OPTIONS, _R4, Invariant, Invariants
from app.fhir.structure import load_structure
from app.fhir.validation import Validator, _Out
from tests.fhir_factory import STRUCTURE, minimal

PROFILES = Path(__file__).resolve().parents[2] / "fhir_profiles"
TABLE: dict[str, Any] = json.loads((PROFILES / "invariants.json").read_text(encoding="utf-8"))
HAND_CHECKED = {"ele-1", "ext-1", "dom-2", "dom-4", "dom-5", "txt-1", "txt-2", "ref-1"}
ROWS = [(t, *row) for t, rows in TABLE["invariants"].items() for row in rows]


@pytest.fixture(scope="module")
def validator() -> Validator:
    return Validator(PROFILES)


def test_the_table_leaves_out_the_hand_checked_and_says_why_for_each_left_out() -> None:
    keys = {row[1] for row in ROWS}
    assert not keys & set(TABLE["excluded"])
    assert HAND_CHECKED <= set(TABLE["excluded"])
    assert all(len(reason) > 20 for reason in TABLE["excluded"].values())
    assert len(ROWS) > 150 and all(t in STRUCTURE.types for t, *_ in ROWS)


@pytest.mark.parametrize("row", ROWS, ids=[f"{r[0]}:{r[1]}" for r in ROWS])
def test_every_expression_compiles_and_uses_only_functions_fhirpathpy_has(row: list[str]) -> None:
    expression = row[3]
    fhirpath_compile(expression, _R4, _OPTIONS)
    known = set(invocation_registry) | set(_OPTIONS["userInvocationTable"])  # type: ignore[arg-type]
    used = set(re.findall(r"\.([a-zA-Z]+)\(", " " + expression)) | set(re.findall(r"(?<![.\w])([a-z][a-zA-Z]*)\(",
                                                                                     expression))
    assert used <= known, used - known


def _pending(validator: Validator, resource: dict[str, Any]) -> list[tuple[dict[str, Any], str, str, dict[str, Any]]]:
    out = _Out()
    validator._resource(resource, resource["resourceType"], resource["resourceType"], out, contained=False)
    assert not out.issues, out.issues[0].diagnostics
    return out.pending


def _fhirpath(inv: Invariant, node: dict[str, Any], resource: dict[str, Any]) -> list[Any]:
    run = fhirpath_compile(inv.evaluated or inv.expression, _R4, _OPTIONS)
    target = node if "resourceType" in node else ResourceNode.create_node(node, inv.base)
    result: list[Any] = run(target, {"resource": resource})
    return result


def _variants(validator: Validator) -> list[dict[str, Any]]:
    """The minimal instance of every type, and some richer ones whose elements switch shortcuts on and off."""
    out = [minimal(rt, "p1") for rt in sorted(STRUCTURE.resources)]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    ucum = "http://unitsofmeasure.org"
    out += [
        {**obs, "valueQuantity": {"value": 1, "code": "mg"}, "dataAbsentReason": {"text": "x"}},
        {**obs, "valueQuantity": {"value": 1, "system": ucum, "code": "mg"},
         "component": [{"code": {"text": "x"}, "valueString": "y"}], "referenceRange": [{"text": "x"}]},
        {**obs, "code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}, "valueString": "x",
         "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}}]},
        {"resourceType": "Patient", "contact": [{"gender": "male"}, {"name": {"text": "x"}}],
         "telecom": [{"value": "1"}, {"system": "phone", "value": "1"}]},
        {"resourceType": "Bundle", "type": "collection", "total": 1, "entry": [
            {"fullUrl": "http://x.org/Patient/1/_history/1", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": "http://x.org/Patient/1/_history/1", "resource": {"resourceType": "Patient"}}]},
        {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Patient"}, "response": {"status": "200"}}]},
    ]
    return out


def test_shortcuts_and_proofs_only_ever_answer_holds_where_fhirpathpy_does(validator: Validator) -> None:
    checked = 0
    for resource in _variants(validator):
        for obj, tname, _path, res in _pending(validator, resource):
            for inv in validator.invariants.by_type[tname]:
                if inv.element:
                    continue
                decided = any(s.holds(obj) for s in inv.shortcuts) or (inv.proof is not None and inv.proof(obj))
                if decided:
                    checked += 1
                    assert _fhirpath(inv, obj, res) in ([True], []), (inv.key, obj)
    assert checked > 60


@pytest.mark.parametrize(("key", "bundle"), [
    ("bdl-3", {"type": "collection", "entry": [{"request": {"method": "GET", "url": "x"}}]}),
    ("bdl-3", {"type": "transaction", "entry": [{"request": {"method": "GET", "url": "x"}}, {"fullUrl": "x"}]}),
    ("bdl-4", {"type": "batch-response", "entry": [{"response": {"status": "200"}}, {"fullUrl": "x"}]}),
    ("bdl-7", {"type": "collection", "entry": [{"fullUrl": "a", "resource": {"resourceType": "Basic",
                                                                            "meta": {"versionId": "1"}}},
                                               {"fullUrl": "a1", "resource": {"resourceType": "Basic"}}]}),
])
def test_a_proof_that_does_not_hold_leaves_the_decision_to_fhirpathpy(validator: Validator, key: str,
                                                                      bundle: dict[str, Any]) -> None:
    inv = next(i for i in validator.invariants.by_type["Bundle"] if i.key == key)
    body = {"resourceType": "Bundle", **copy.deepcopy(bundle)}
    assert inv.proof is not None and not inv.proof(body)
    assert not inv.holds(body, body)


@pytest.mark.parametrize(("start", "end", "ok"), [
    ("2024-05-02", "2024-05-01", False), ("2024-05-01", "2024-05-02", True), ("2024-05-01", "2024-05-01", True),
    ("2024-05-01T10:00:00+08:00", "2024-05-01T09:00:00Z", True),  # 02:00Z before 09:00Z
    ("2024-05-01T10:00:00Z", "2024-05-01T09:00:00+08:00", False),  # 10:00Z after 01:00Z
    ("2024-05-01T10:00:00.500Z", "2024-05-01T10:00:00Z", False),
    ("2024-06", "2024", True), ("2024", "2024-01-01", True), ("2024-05-01T10:00:00+08:00", "2024-05-01", True),
    ("2024-05-01", "2024-05-01T00:00:00+08:00", True), ("2025", "2024-12-31", False),
    ("2024-01-02", "2024-01-03T03:04:05+08:00", True), ("2024-01-03", "2024-01-02T23:00:00Z", False),
])
def test_period_start_and_end_compare_as_instants_and_by_precision(validator: Validator, start: str, end: str,
                                                                   ok: bool) -> None:
    inv = next(i for i in validator.invariants.by_type["Period"] if i.key == "per-1")
    assert inv.holds({"start": start, "end": end}, {}) is ok


def test_the_bench_resources_never_reach_fhirpathpy() -> None:
    """Patient, Observation and a transaction Bundle of them (scripts/bench_validation.py): every invariant on
    them is decided by a shortcut or a proof, so their validation costs dictionary lookups."""
    import sys

    sys.path.insert(0, str(PROFILES.parent / "scripts"))
    from bench_validation import OBSERVATION_TEXT, PATIENT, bundle  # type: ignore[import-not-found]

    from app.core.fhirjson import loads

    validator = Validator(PROFILES)
    fresh = Invariants(TABLE, load_structure(PROFILES))
    issues: list[str] = []
    for resource in (PATIENT, loads(OBSERVATION_TEXT), bundle(20)):
        fresh.check(_pending(validator, resource), lambda path, msg: issues.append(msg))
    assert not issues
    assert all(inv._run is None for invs in fresh.by_type.values() for inv in invs)


def test_evaluation_leaves_the_resource_as_it_was(validator: Validator) -> None:
    """fhirpathpy runs on the very dicts that are then stored: it must not add anything to them."""
    body = {"resourceType": "Observation", "status": "final", "valueString": "x",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1"}]},
            "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}, "valueString": "y"}],
            "effectivePeriod": {"start": "2024-01-02", "end": "2024-01-01"}}
    before = copy.deepcopy(body)
    keys = [i.diagnostics.rsplit("(", 1)[-1] for i in validator.issues(body)]
    assert keys == ["per-1)", "obs-7)"] and body == before
