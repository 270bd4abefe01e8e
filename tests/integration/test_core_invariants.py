"""The core R4 invariants (constraints of severity error) over HTTP: a resource that breaks one is refused with
400 and an OperationOutcome issue naming the element it sits on and the invariant (key and text), and nothing
is stored; its valid counterpart is stored. app/fhir/invariants.py, fhir_profiles/invariants.json."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

FJ = "application/fhir+json"
OBS: dict[str, Any] = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"}}
PAT: dict[str, Any] = {"resourceType": "Patient", "active": True}
CONSENT: dict[str, Any] = {"resourceType": "Consent", "status": "active", "scope": {"text": "privacy"},
                           "category": [{"text": "consent to share"}]}
UCUM = "http://unitsofmeasure.org"


def post(client: Any, body: dict[str, Any]) -> Any:
    return client.post(f"/fhir/{body['resourceType']}", data=json.dumps(body), content_type=FJ)


def with_(base: dict[str, Any], **elements: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    out.update(elements)
    return out


def refused(r: Any, path: str, key: str) -> dict[str, Any]:
    """A 400 OperationOutcome with an invariant issue on `path` naming `key` and its text; that issue."""
    assert r.status_code == 400, r.get_data(as_text=True)[:400]
    oo = r.json
    assert oo["resourceType"] == "OperationOutcome"
    hits = [i for i in oo["issue"] if i.get("expression") == [path] and f"({key})" in i["diagnostics"]]
    assert hits, oo["issue"]
    assert hits[0]["code"] == "invariant" and hits[0]["severity"] == "error"
    # the text follows the key's element (a transaction prefixes the entry: "Bundle.entry[0].resource: ...")
    assert len(hits[0]["diagnostics"].rsplit(": ", 1)[-1]) > len(key) + 12
    return dict(hits[0])


def tx(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"urn:uuid:00000000-0000-4000-8000-{i:012d}", "resource": r,
         "request": {"method": "POST", "url": r["resourceType"]}} for i, r in enumerate(resources)]}


# (case, bad body, element path, key, valid counterpart)
CASES: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    ("obs-6 value and dataAbsentReason",
     with_(OBS, valueQuantity={"value": 5.2}, dataAbsentReason={"text": "not asked"}), "Observation", "obs-6",
     with_(OBS, dataAbsentReason={"text": "not asked"})),
    ("obs-7 a component with the observation's code",
     with_(OBS, code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, valueString="x",
           component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, "valueString": "y"}]),
     "Observation", "obs-7",
     with_(OBS, code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, valueString="x",
           component=[{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueString": "y"}])),
    ("per-1 end before start",
     with_(OBS, effectivePeriod={"start": "2024-05-02", "end": "2024-05-01"}), "Observation.effectivePeriod", "per-1",
     with_(OBS, effectivePeriod={"start": "2024-05-01", "end": "2024-05-02"})),
    ("per-1 on instants with time zones",
     with_(OBS, effectivePeriod={"start": "2024-05-01T10:00:00Z", "end": "2024-05-01T09:00:00+08:00"}),
     "Observation.effectivePeriod", "per-1",
     with_(OBS, effectivePeriod={"start": "2024-05-01T10:00:00+08:00", "end": "2024-05-01T09:00:00Z"})),
    ("pat-1 an empty contact (backbone element)",
     with_(PAT, contact=[{"name": {"text": "李娜"}}, {"gender": "female"}]), "Patient.contact[1]", "pat-1",
     with_(PAT, contact=[{"name": {"text": "李娜"}}, {"gender": "female", "telecom": [{"system": "phone",
                                                                                      "value": "13800138000"}]}])),
    ("qty-3 a unit code without a system",
     with_(OBS, valueQuantity={"value": 5.2, "code": "mmol/L"}), "Observation.valueQuantity", "qty-3",
     with_(OBS, valueQuantity={"value": 5.2, "system": UCUM, "code": "mmol/L"})),
    ("qty-3 in a backbone element (nested data type)",
     with_(OBS, referenceRange=[{"low": {"value": 3.9, "system": UCUM, "code": "mmol/L"},
                                 "high": {"value": 6.1, "code": "mmol/L"}}]),
     "Observation.referenceRange[0].high", "qty-3",
     with_(OBS, referenceRange=[{"low": {"value": 3.9, "system": UCUM, "code": "mmol/L"},
                                 "high": {"value": 6.1, "system": UCUM, "code": "mmol/L"}}])),
    ("obs-3 a reference range with no bound nor text",
     with_(OBS, referenceRange=[{"type": {"text": "normal"}}]), "Observation.referenceRange[0]", "obs-3",
     with_(OBS, referenceRange=[{"type": {"text": "normal"}, "text": "3.9-6.1"}])),
    ("per-1 in a backbone element (nested data type)",
     with_(PAT, contact=[{"name": {"text": "李娜"}, "period": {"start": "2020", "end": "2019"}}]),
     "Patient.contact[0].period", "per-1",
     with_(PAT, contact=[{"name": {"text": "李娜"}, "period": {"start": "2019", "end": "2020"}}])),
    ("cpt-2 a telecom value without a system",
     with_(PAT, telecom=[{"value": "13800138000"}]), "Patient.telecom[0]", "cpt-2",
     with_(PAT, telecom=[{"system": "phone", "value": "13800138000"}])),
    ("ppc-1 a Consent with neither policy nor policyRule (tests/integration/test_consent_policy_rule.py)",
     CONSENT, "Consent", "ppc-1", with_(CONSENT, policyRule={"text": "opt in"})),
    ("pat-1 in a contained resource",
     with_(OBS, contained=[with_(PAT, id="p", contact=[{"gender": "male"}])], subject={"reference": "#p"}),
     "Observation.contained[0].contact[0]", "pat-1",
     with_(OBS, contained=[with_(PAT, id="p", contact=[{"gender": "male", "name": {"text": "王"}}])],
           subject={"reference": "#p"})),
]


@pytest.mark.parametrize(("case", "bad", "path", "key", "good"), CASES, ids=[c[0] for c in CASES])
def test_a_broken_invariant_is_refused_and_the_valid_counterpart_stored(
        client: Any, case: str, bad: dict[str, Any], path: str, key: str, good: dict[str, Any]) -> None:
    refused(post(client, bad), path, key)
    r = post(client, good)
    assert r.status_code == 201, r.get_data(as_text=True)[:400]


def test_nothing_is_stored_when_refused(client: Any) -> None:
    before = client.get("/fhir/Observation?_summary=count").json["total"]
    refused(post(client, with_(OBS, valueQuantity={"value": 1, "code": "mg"})), "Observation.valueQuantity", "qty-3")
    assert client.get("/fhir/Observation?_summary=count").json["total"] == before


def test_in_a_transaction_the_path_names_the_entry(client: Any) -> None:
    good_obs = with_(OBS, valueQuantity={"value": 5.2, "system": UCUM, "code": "mmol/L"})
    r = client.post("/fhir", data=json.dumps(tx(with_(OBS, valueQuantity={"value": 5.2, "code": "mmol/L"}))),
                    content_type=FJ)
    refused(r, "Bundle.entry[0].resource.valueQuantity", "qty-3")
    r = client.post("/fhir", data=json.dumps(tx(good_obs, with_(PAT, contact=[{"gender": "male"}]))), content_type=FJ)
    refused(r, "Bundle.entry[1].resource.contact[0]", "pat-1")
    good = tx(with_(OBS, valueQuantity={"value": 5.2, "system": UCUM, "code": "mmol/L"}),
              with_(PAT, contact=[{"gender": "male", "name": {"text": "王"}}]))
    r = client.post("/fhir", data=json.dumps(good), content_type=FJ)
    assert r.status_code == 200, r.get_data(as_text=True)[:400]


COLLECTION: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "entry": [
    {"fullUrl": "http://example.org/fhir/Patient/1", "resource": with_(PAT, id="1")},
    {"fullUrl": "http://example.org/fhir/Observation/2", "resource": with_(OBS, id="2")}]}


@pytest.mark.parametrize(("case", "change", "path", "key"), [
    ("bdl-1 total outside a search or history", {"total": 2}, "Bundle", "bdl-1"),
    ("bdl-3 a request in a collection", {"entry[0].request": {"method": "POST", "url": "Patient"}}, "Bundle", "bdl-3"),
    ("bdl-7 the same fullUrl twice", {"entry[1].fullUrl": "http://example.org/fhir/Patient/1"}, "Bundle", "bdl-7"),
    ("bdl-8 a fullUrl with a version", {"entry[0].fullUrl": "http://example.org/fhir/Patient/1/_history/1"},
     "Bundle.entry[0]", "bdl-8"),
], ids=lambda x: x if isinstance(x, str) and x[:3] == "bdl" and " " in x else "")
def test_bundle_invariants(client: Any, case: str, change: dict[str, Any], path: str, key: str) -> None:
    body = copy.deepcopy(COLLECTION)
    for where, value in change.items():
        if where.startswith("entry["):
            index, _, name = where[6:].partition("].")
            body["entry"][int(index)][name] = value
        else:
            body[where] = value
    r = post(client, body)
    assert r.status_code == 400 and "Location" not in r.headers  # nothing stored
    issue = refused(r, path, key)
    assert issue["expression"] == [path] and issue["diagnostics"].endswith(f"({key})")


def test_a_valid_collection_bundle_is_stored(client: Any) -> None:
    r = post(client, COLLECTION)
    assert r.status_code == 201, r.get_data(as_text=True)[:400]


@pytest.mark.parametrize(("start", "end"), [("2024-06", "2024"), ("2024-05-01T10:00:00+08:00", "2024-05-01"),
                                            ("2024-05-01", "2024-05-01T09:00:00+08:00"), ("2024", "2024-01-01")])
def test_dates_of_different_precisions_are_not_refused(client: Any, start: str, end: str) -> None:
    """FHIRPath makes the comparison empty when the common precision cannot decide it: no refusal."""
    r = post(client, with_(OBS, effectivePeriod={"start": start, "end": end}))
    assert r.status_code == 201, r.get_data(as_text=True)[:400]


def test_validate_operation_reports_the_invariant(client: Any) -> None:
    body = with_(OBS, valueQuantity={"value": 5.2}, dataAbsentReason={"text": "x"})
    r = client.post("/fhir/Observation/$validate", data=json.dumps(body), content_type=FJ)
    issues = r.json["issue"]
    assert any(i.get("expression") == ["Observation"] and "(obs-6)" in i["diagnostics"] for i in issues), issues


# -- cost bounds: a body of many objects must not buy minutes of a worker ---------------------------------------

def test_checking_stops_at_the_issue_limit(client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """10,000 contacts that each break pat-1: 100 issues are reported (the validator's limit), and no more
    invariant runs are spent than those (each failure is an interpreter run, about 0.1 ms)."""
    from app.fhir.invariants import Invariant

    runs: list[str] = []
    evaluate = Invariant.evaluate

    def counted(self: Invariant, *args: Any) -> bool:
        runs.append(self.key)
        return evaluate(self, *args)

    monkeypatch.setattr(Invariant, "evaluate", counted)
    r = post(client, with_(PAT, contact=[{"gender": "male"}] * 10_000))
    assert r.status_code == 400 and len(r.json["issue"]) == 100
    assert len(runs) == 100


def test_too_many_objects_for_the_interpreter_are_refused_as_too_costly(client: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """rat-1 has no shortcut: each Ratio is an interpreter run. Past MAX_RUNS the resource is refused (400
    too-costly) instead of checked for as long as its size allows; within it, it is stored."""
    from app.fhir import invariants

    monkeypatch.setattr(invariants, "MAX_RUNS", 5)
    ratio = {"numerator": {"value": 1}, "denominator": {"value": 2}}
    med = {"resourceType": "Medication", "ingredient": [{"itemCodeableConcept": {"text": f"i{i}"}, "strength": ratio}
                                                        for i in range(6)]}
    r = post(client, med)
    assert r.status_code == 400 and r.json["issue"][0]["code"] == "too-costly", r.json
    assert r.json["issue"][0]["expression"] == ["Medication.ingredient[5].strength"]
    assert post(client, {**med, "ingredient": med["ingredient"][:5]}).status_code == 201
