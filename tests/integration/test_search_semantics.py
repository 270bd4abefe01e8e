"""Search semantics against FHIR R4 search.html, each test a defect found by probing: sorting on _id, the
approximate prefix on numbers, the self link of a count-only search, the characters of a date, Timing values."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

from tests.integration.test_search import ids, search

FJ = "application/fhir+json"
CODE = "urn:ehc:test:semantics|sort"


def put(client, path, body):
    r = client.put(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)
    assert r.status_code in (200, 201), r.json
    return r.json


def pages(client, query):
    """The matches of every page, following the next links."""
    bundle = search(client, query)
    out = [ids(bundle)]
    for _ in range(20):
        nxt = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        if nxt is None:
            return out
        bundle = search(client, nxt.split("/fhir/", 1)[1])
        out.append(ids(bundle))
    raise AssertionError(f"more than 20 pages for {query}")


@pytest.fixture(scope="module")
def data(app):
    client = app.test_client()
    put(client, "Patient/sem-p", {"resourceType": "Patient", "id": "sem-p", "name": [{"family": "Semantics"}]})
    system, code = CODE.split("|")
    for i, status in enumerate(["final", "amended", "final", "amended", "final"]):
        put(client, f"Observation/sem-o{i}", {
            "resourceType": "Observation", "id": f"sem-o{i}", "status": status,
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": "Patient/sem-p"}})
    for rid, p in (("sem-r0", 0), ("sem-r1", 0.05), ("sem-r2", 60)):
        put(client, f"RiskAssessment/{rid}", {
            "resourceType": "RiskAssessment", "id": rid, "status": "final", "subject": {"reference": "Patient/sem-p"},
            "prediction": [{"probabilityDecimal": p}]})
    put(client, "ServiceRequest/sem-events", {
        "resourceType": "ServiceRequest", "id": "sem-events", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/sem-p"},
        "occurrenceTiming": {"event": ["2024-02-01T09:00:00+08:00", "2024-02-10T09:00:00+08:00"]}})
    put(client, "ServiceRequest/sem-bounds", {
        "resourceType": "ServiceRequest", "id": "sem-bounds", "status": "active", "intent": "order",
        "subject": {"reference": "Patient/sem-p"},
        "occurrenceTiming": {"repeat": {"boundsPeriod": {"start": "2013-01-31", "end": "2013-03-24"},
                                        "frequency": 1, "period": 2, "periodUnit": "d"}}})
    return client


def test_descending_id_sort_pages_in_order(client, data):
    """_sort=-_id: each match once, in descending order of id, across pages (the store's _id tie-breaker
    overrode the descending key in the database's sort, so pages came ascending and repeated)."""
    every = [f"sem-o{i}" for i in range(5)]
    assert pages(client, f"Observation?code={CODE}&_sort=-_id&_count=2") == [every[4:2:-1], every[2:0:-1], every[:1]]
    by_status = pages(client, f"Observation?code={CODE}&_sort=status,-_id&_count=2")
    assert [i for page in by_status for i in page] == ["sem-o3", "sem-o1", "sem-o4", "sem-o2", "sem-o0"]
    assert ids(search(client, f"Observation?code={CODE}&_sort=_id")) == every


@pytest.mark.parametrize("value", ["0", "1e2"])
def test_number_ap_is_never_narrower_than_eq(client, data, value):
    """ap ("approximately the same") matches at least what eq matches: eq honours the value's implicit
    precision (0 is [-0.5, 0.5)), so ap0 must not shrink to 0 exactly."""
    eq = set(ids(search(client, f"RiskAssessment?subject=Patient/sem-p&probability={value}")))
    ap = set(ids(search(client, f"RiskAssessment?subject=Patient/sem-p&probability=ap{value}")))
    assert eq and eq <= ap


@pytest.mark.parametrize("query", ["Patient?_count=0&nope=1", "Patient?_summary=count&nope=1"])
def test_count_only_search_reports_ignored_parameters(client, data, query):
    """The self link SHALL hold the parameters actually used (search.html): an unknown parameter the server
    ignored is left out of it, and said so in an OperationOutcome, as on a search that returns matches."""
    bundle = search(client, query)
    self_link = next(link["url"] for link in bundle["link"] if link["relation"] == "self")
    assert "nope" not in self_link
    outcome = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]
    assert outcome and outcome[0]["issue"][0]["expression"] == ["nope"]
    assert bundle["total"] >= 1


def test_date_with_non_ascii_digits_is_400(client, data):
    """FHIR dates are ASCII digits; full-width ones ('１９９０') were read as a year."""
    r = client.get("/fhir/Patient?birthdate=" + quote("１９９０"))
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["birthdate"]


def test_timing_is_matched_by_its_outer_limits(client, data):
    """search.html#date: for a Timing "the specified scheduling details are ignored and only the outer limits
    matter" (its events, its repeat's bounding Period). A Timing was not indexed at all: never found by date,
    and counted as :missing."""
    base = "ServiceRequest?subject=Patient/sem-p&occurrence"
    assert ids(search(client, f"{base}=2024-02")) == ["sem-events"]
    assert ids(search(client, f"{base}=ge2024-02-05")) == ["sem-events"]
    assert ids(search(client, f"{base}=2013")) == ["sem-bounds"]
    assert ids(search(client, f"{base}=lt2013-02-01")) == ["sem-bounds"]
    assert ids(search(client, f"{base}:missing=true")) == []


def test_a_chain_with_too_many_matches_is_refused_not_cut_short(client, data, monkeypatch):
    """A chain's inner search is bounded (MAX_CHAIN_IDS): cut short there, the outer search silently missed the
    matches beyond the bound. Past the bound it is refused (too-costly); within it, every match is found."""
    from app.store import searcher

    for i in range(4):
        put(client, f"Patient/sem-many{i}", {"resourceType": "Patient", "id": f"sem-many{i}",
                                             "name": [{"family": "Semmany"}]})
    put(client, "Observation/sem-last", {"resourceType": "Observation", "id": "sem-last", "status": "final",
                                         "code": {"text": "x"}, "subject": {"reference": "Patient/sem-many3"}})
    monkeypatch.setattr(searcher, "MAX_CHAIN_IDS", 3)
    for query in ("Observation?subject:Patient.family=Semmany", "Patient?_has:Observation:subject:status=final"):
        r = client.get(f"/fhir/{query}")
        assert r.status_code == 400 and r.json["issue"][0]["code"] == "too-costly", query
    monkeypatch.setattr(searcher, "MAX_CHAIN_IDS", 4)
    assert ids(search(client, "Observation?subject:Patient.family=Semmany")) == ["sem-last"]


def test_a_type_modifier_restricts_the_reference(client, data):
    """subject:Patient=<id> (search.html#reference): only references to a Patient of that id; a Group with
    the same id does not match, and a value naming a Group contradicts the modifier (it matched the Group)."""
    put(client, "Group/sem-p", {"resourceType": "Group", "id": "sem-p", "type": "person", "actual": True})
    put(client, "Observation/sem-group", {"resourceType": "Observation", "id": "sem-group", "status": "final",
                                          "code": {"text": "x"}, "subject": {"reference": "Group/sem-p"}})
    assert "sem-group" not in ids(search(client, "Observation?subject:Patient=sem-p"))
    r = client.get("/fhir/Observation?subject:Patient=Group/sem-p")
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["subject"]
    assert ids(search(client, "Observation?subject:Group=Group/sem-p")) == ["sem-group"]
    assert ids(search(client, "Observation?subject:Group=sem-p")) == ["sem-group"]


def test_links_carry_the_count_used(client, data):
    """_count beyond the server's maximum is lowered to it; the links say the count the pages really have."""
    bundle = search(client, "Observation?subject=Patient/sem-p&_count=100000")
    assert [link["url"].split("?", 1)[1] for link in bundle["link"]] == ["subject=Patient%2Fsem-p&_count=500"]
