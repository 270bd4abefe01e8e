"""Search over HTTP: each parameter type and modifier, prefixes, sorting, paging, includes, chains, _has,
and injection attempts (FHIR R4 search.html)."""

from __future__ import annotations

import json
from urllib.parse import quote

import pytest

FJ = "application/fhir+json"
LOINC = "http://loinc.org"


def post(client, path, body):
    r = client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)
    assert r.status_code in (200, 201), r.json
    return r.json


def ids(bundle):
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def search(client, query):
    r = client.get(f"/fhir/{query}")
    assert r.status_code == 200, r.json
    return r.json


@pytest.fixture(scope="module")
def data(app):
    client = app.test_client()
    org = post(client, "Organization", {"resourceType": "Organization", "name": "北京协和医院"})
    p1 = post(client, "Patient", {
        "resourceType": "Patient", "name": [{"family": "张", "given": ["伟"], "text": "张伟"}], "gender": "male",
        "birthDate": "1990-01-15", "identifier": [{"system": "urn:ehc:mrn:org-1", "value": "A001"}],
        "telecom": [{"system": "phone", "value": "13800138000"}], "active": True,
        "address": [{"city": "北京市", "state": "北京", "line": ["东长安街1号"]}],
        "managingOrganization": {"reference": f"Organization/{org['id']}"}})
    p2 = post(client, "Patient", {
        "resourceType": "Patient", "name": [{"family": "Müller", "given": ["José"]}], "gender": "female",
        "birthDate": "1985-06", "identifier": [{"system": "urn:ehc:mrn:org-1", "value": "A002"}],
        "active": False, "address": [{"city": "上海市", "state": "上海"}]})
    p3 = post(client, "Patient", {
        "resourceType": "Patient", "name": [{"family": "李", "given": ["娜"]}], "gender": "female",
        "birthDate": "2001-12-31", "identifier": [{"system": "urn:ehc:mrn:org-2", "value": "A001"}]})
    obs = []
    for i, (pat, code, value, when) in enumerate([
        (p1, "2339-0", 5.6, "2024-03-01T08:30:00+08:00"),
        (p1, "2339-0", 7.9, "2024-04-01T08:30:00+08:00"),
        (p1, "718-7", 130, "2024-03-15"),
        (p2, "2339-0", 4.8, "2023-12-31T23:00:00Z"),
    ]):
        obs.append(post(client, "Observation", {
            "resourceType": "Observation", "status": "final" if i != 2 else "preliminary",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": {"reference": f"Patient/{pat['id']}"}, "effectiveDateTime": when,
            "identifier": [{"system": "urn:lab", "value": f"L{i}"}],
            "valueQuantity": {"value": value, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                              "code": "mmol/L"}}))
    doc = post(client, "DocumentReference", {
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "34133-9"}]},
        "subject": {"reference": f"Patient/{p1['id']}"}, "date": "2024-05-01T00:00:00Z",
        "custodian": {"reference": f"Organization/{org['id']}"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "5L2g5aW9"}}]})
    return {"org": org, "p1": p1, "p2": p2, "p3": p3, "obs": obs, "doc": doc}


def test_token_identifier_and_system_forms(client, data):
    p1, p3 = data["p1"]["id"], data["p3"]["id"]
    assert ids(search(client, "Patient?identifier=urn:ehc:mrn:org-1|A001")) == [p1]
    assert sorted(ids(search(client, "Patient?identifier=A001"))) == sorted([p1, p3])
    assert len(ids(search(client, "Patient?identifier=urn:ehc:mrn:org-1|"))) == 2
    assert ids(search(client, "Patient?identifier=|A001")) == []
    assert ids(search(client, "Patient?gender=female&identifier=A001")) == [p3]


def test_token_not_missing_and_boolean(client, data):
    p2 = data["p2"]["id"]
    assert ids(search(client, "Patient?active=false")) == [p2]
    not_male = ids(search(client, "Patient?gender:not=male"))
    assert data["p1"]["id"] not in not_male and p2 in not_male
    missing = ids(search(client, "Patient?active:missing=true"))
    assert missing == [data["p3"]["id"]]
    assert data["p3"]["id"] not in ids(search(client, "Patient?active:missing=false"))


def test_string_prefix_case_accents_and_chinese(client, data):
    p1, p2 = data["p1"]["id"], data["p2"]["id"]
    assert ids(search(client, "Patient?family=muller")) == [p2]
    assert ids(search(client, "Patient?given=jose")) == [p2]
    assert ids(search(client, "Patient?name=MÜL")) == [p2]
    assert ids(search(client, f"Patient?name={quote('张伟')}")) == [p1]
    assert ids(search(client, f"Patient?family={quote('张')}")) == [p1]
    assert ids(search(client, "Patient?family:exact=muller")) == []
    assert ids(search(client, "Patient?family:exact=Müller")) == [p2]
    assert ids(search(client, "Patient?family:contains=ulle")) == [p2]
    assert ids(search(client, f"Patient?address-city={quote('北京')}")) == [p1]
    assert ids(search(client, f"Patient?address={quote('东长安')}")) == [p1]


def test_or_and_semantics(client, data):
    p1, p2 = data["p1"]["id"], data["p2"]["id"]
    assert sorted(ids(search(client, "Patient?family=muller," + quote("张")))) == sorted([p1, p2])
    assert ids(search(client, f"Patient?family=muller&family={quote('张')}")) == []


def test_date_prefixes(client, data):
    p1, p2, p3 = data["p1"]["id"], data["p2"]["id"], data["p3"]["id"]
    assert ids(search(client, "Patient?birthdate=1990-01-15")) == [p1]
    assert ids(search(client, "Patient?birthdate=1990")) == [p1]
    assert ids(search(client, "Patient?birthdate=1985-06-10")) == []  # 1985-06 is not within one day
    assert ids(search(client, "Patient?birthdate=1985-06")) == [p2]
    assert sorted(ids(search(client, "Patient?birthdate=gt1989-12-31"))) == sorted([p1, p3])
    assert ids(search(client, "Patient?birthdate=lt1986")) == [p2]
    assert sorted(ids(search(client, "Patient?birthdate=ge1990-01-15"))) == sorted([p1, p3])
    assert sorted(ids(search(client, "Patient?birthdate=le1990-01-15"))) == sorted([p1, p2])
    assert ids(search(client, "Patient?birthdate=ne1990-01-15&birthdate=gt1989")) == [p3]
    assert ids(search(client, "Patient?birthdate=sa2000")) == [p3]
    assert ids(search(client, "Patient?birthdate=eb1986")) == [p2]
    assert p1 in ids(search(client, "Patient?birthdate=ap1990-01-20"))


def test_date_with_timezone_on_observation(client, data):
    o = [x["id"] for x in data["obs"]]
    # 2023-12-31T23:00Z is 2024-01-01 07:00 in Beijing. A date without a zone is a day of China (R4 search, date:
    # the server's local zone), so a result of that morning is one of 2024-01-01, not of the UTC day before it.
    assert ids(search(client, "Observation?date=2024-01-01")) == [o[3]]
    assert ids(search(client, "Observation?date=2023-12-31")) == []
    assert ids(search(client, "Observation?date=2023-12-31T23:00:00Z")) == [o[3]]  # a zone given is obeyed
    assert ids(search(client, "Observation?date=2024-03-01T08:30")) == [o[0]]  # a time without one: China's
    assert sorted(ids(search(client, "Observation?date=ge2024-03-01&date=lt2024-04"))) == sorted([o[0], o[2]])


def test_reference_forms_and_type_modifier(client, data):
    p1 = data["p1"]["id"]
    mine = sorted(x["id"] for x in data["obs"][:3])
    assert sorted(ids(search(client, f"Observation?subject=Patient/{p1}"))) == mine
    assert sorted(ids(search(client, f"Observation?patient={p1}"))) == mine
    assert sorted(ids(search(client, f"Observation?subject:Patient={p1}"))) == mine
    assert sorted(ids(search(client, f"Observation?subject=http://localhost/fhir/Patient/{p1}"))) == mine
    assert ids(search(client, f"Observation?patient={p1}&code={LOINC}|718-7")) == [data["obs"][2]["id"]]
    assert ids(search(client, f"DocumentReference?custodian=Organization/{data['org']['id']}")) == [data["doc"]["id"]]
    assert ids(search(client, f"Patient?organization={data['org']['id']}")) == [p1]


def test_quantity_prefixes(client, data):
    o = [x["id"] for x in data["obs"]]
    assert ids(search(client, "Observation?value-quantity=5.6")) == [o[0]]
    assert sorted(ids(search(client, "Observation?value-quantity=gt5&code=2339-0"))) == sorted([o[0], o[1]])
    assert ids(search(client, "Observation?value-quantity=lt5|http://unitsofmeasure.org|mmol/L")) == [o[3]]
    assert ids(search(client, "Observation?value-quantity=5.6||mg")) == []
    assert o[0] in ids(search(client, "Observation?value-quantity=ap5.4"))


def test_observation_params(client, data):
    o = [x["id"] for x in data["obs"]]
    assert ids(search(client, "Observation?status=preliminary")) == [o[2]]
    assert len(ids(search(client, "Observation?category=laboratory"))) == 4
    assert ids(search(client, "Observation?identifier=urn:lab|L1")) == [o[1]]
    assert ids(search(client, "DocumentReference?type=34133-9&status=current")) == [data["doc"]["id"]]
    assert ids(search(client, "DocumentReference?date=2024-05")) == [data["doc"]["id"]]


def test_common_params_id_lastupdated(client, data):
    p1 = data["p1"]["id"]
    assert ids(search(client, f"Patient?_id={p1}")) == [p1]
    assert len(ids(search(client, "Patient?_lastUpdated=gt2000-01-01"))) >= 3
    assert ids(search(client, "Patient?_lastUpdated=lt2000-01-01")) == []


def test_sort_multiple_keys(client, data):
    b = search(client, "Patient?_sort=-birthdate&identifier=A001,A002")
    assert ids(b) == [data["p3"]["id"], data["p1"]["id"], data["p2"]["id"]]
    b = search(client, "Patient?_sort=gender,-birthdate&identifier=A001,A002")
    assert ids(b) == [data["p3"]["id"], data["p2"]["id"], data["p1"]["id"]]


def test_include_and_revinclude(client, data):
    p1 = data["p1"]["id"]
    b = search(client, f"Observation?patient={p1}&code=718-7&_include=Observation:subject")
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in b["entry"]}
    assert modes == {("Observation", "match"), ("Patient", "include")}
    b = search(client, f"Patient?_id={p1}&_revinclude=Observation:subject")
    inc = [e for e in b["entry"] if e["search"]["mode"] == "include"]
    assert len(inc) == 3 and b["total"] == 1


def test_chain_and_has(client, data):
    p1 = data["p1"]["id"]
    mine = sorted(x["id"] for x in data["obs"][:3])
    assert sorted(ids(search(client, "Observation?subject:Patient.identifier=urn:ehc:mrn:org-1|A001"))) == mine
    assert sorted(ids(search(client, "Observation?patient.gender=male"))) == mine
    assert ids(search(client, "Patient?_has:Observation:patient:code=718-7")) == [p1]


def test_summary_elements_total(client, data):
    p1 = data["p1"]["id"]
    b = search(client, f"Patient?_id={p1}&_elements=gender")
    res = b["entry"][0]["resource"]
    assert set(res) <= {"resourceType", "id", "meta", "gender"}
    assert any(t["code"] == "SUBSETTED" for t in res["meta"]["tag"])
    c = search(client, "Patient?_summary=count")
    assert c["total"] >= 3 and "entry" not in c
    assert "total" not in search(client, "Patient?_total=none&_count=1")
    s = search(client, f"Patient?_id={p1}&_summary=true")
    assert "address" in s["entry"][0]["resource"] and "telecom" in s["entry"][0]["resource"]


def test_post_search(client, data):
    r = client.post("/fhir/Patient/_search", data="family=muller", content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200 and ids(r.json) == [data["p2"]["id"]]


def test_unknown_params_lenient_and_strict(client, data):
    b = search(client, "Patient?foo=bar&family=muller")
    assert ids(b) == [data["p2"]["id"]]
    outcome = [e for e in b["entry"] if e["search"]["mode"] == "outcome"]
    assert outcome and "foo" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert "foo" not in b["link"][0]["url"]
    r = client.get("/fhir/Patient?foo=bar", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["foo"]


def test_bad_values_are_400(client):
    for q in ("Patient?birthdate=notadate", "Patient?birthdate=xx1990", "Patient?_count=-1",
              "Patient?_sort=nope", "Patient?gender:bogus=male", "Observation?value-quantity=abc"):
        r = client.get(f"/fhir/{q}")
        assert r.status_code == 400, q
        assert r.json["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("query", [
    "Patient?family=" + quote(".*"), "Patient?family=" + quote("^"), "Patient?family=" + quote('{"$gt": ""}'),
    "Patient?identifier=" + quote("$ne|x"), "Patient?_id=" + quote('{"$gt": ""}'), "Patient?gender=" + quote("$exists"),
])
def test_injected_values_are_data(client, data, query):
    r = client.get(f"/fhir/{query}")
    assert r.status_code in (200, 400), query
    if r.status_code == 200:
        assert ids(r.json) == [], query


@pytest.mark.parametrize("query", ["Patient?name[$ne]=x", "Patient?$where=1", "Patient?_id[$gt]=",
                                   "Patient?ix.gender=male", "Patient?_sort=$where"])
def test_injected_names_are_refused(client, data, query):
    r = client.get(f"/fhir/{query}", headers={"Prefer": "handling=strict"})
    assert r.status_code == 400, query
    lenient = client.get(f"/fhir/{query}")
    if lenient.status_code == 200:  # ignored, said so, and the search ran without it
        outcome = [e for e in lenient.json["entry"] if e["search"]["mode"] == "outcome"]
        assert outcome, query
        assert len(ids(lenient.json)) == len(ids(search(client, "Patient?_count=100")))


def test_forged_cursor_is_400(client, data):
    r = client.get("/fhir/Patient?_cursor=" + quote('{"$gt":1}'))
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["_cursor"]


def test_keyset_paging_stays_correct_while_writing(client, data):
    fam = "Pagetest"
    made = [post(client, "Patient", {"resourceType": "Patient",
                                      "name": [{"family": fam, "given": [f"g{i:02d}"]}]})["id"] for i in range(7)]
    page = search(client, f"Patient?family={fam}&_count=3&_sort=given")
    seen = ids(page)
    assert page["total"] == 7 and len(seen) == 3
    # a new resource sorting before the current position must not shift the next page
    post(client, "Patient", {"resourceType": "Patient", "name": [{"family": fam, "given": ["a-first"]}]})
    while True:
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if not nxt:
            break
        assert nxt.startswith("http://localhost/fhir/Patient?")
        page = client.get(nxt.replace("http://localhost", "")).json
        seen += ids(page)
    assert seen == made  # each exactly once, in order, and the late insert did not shift anything
    prev = next(link["url"] for link in page["link"] if link["relation"] == "previous")
    back = client.get(prev.replace("http://localhost", "")).json
    assert ids(back) == made[3:6]


def test_count_default_and_max(client, services):
    b = search(client, "Patient?_count=100000")
    assert len(ids(b)) <= services.settings.max_count


def test_base_url_from_request_host(client, data):
    b = client.get("/fhir/Patient?_count=1", base_url="http://ehc.example.test:8443").json
    assert b["link"][0]["url"].startswith("http://ehc.example.test:8443/fhir/Patient")
    assert b["entry"][0]["fullUrl"].startswith("http://ehc.example.test:8443/fhir/Patient/")


def test_meta_tag_profile_and_reference_identifier(client, data):
    prof = "http://ehc.example.cn/fhir/StructureDefinition/ehc-patient"
    meta = {"tag": [{"system": "urn:ehc:tag", "code": "vip"}], "profile": [prof]}
    pid = post(client, "Patient", {"resourceType": "Patient", "name": [{"family": "Meta"}], "meta": meta})["id"]
    assert ids(search(client, "Patient?_tag=urn:ehc:tag|vip")) == [pid]
    assert ids(search(client, f"Patient?_profile={prof}")) == [pid]
    assert ids(search(client, "Patient?_tag=urn:ehc:tag|other")) == []
    oid = post(client, "Observation", {
        "resourceType": "Observation", "status": "final", "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
        "subject": {"identifier": {"system": "urn:ehc:mrn:org-7", "value": "X9"}}})["id"]
    assert ids(search(client, "Observation?subject:identifier=urn:ehc:mrn:org-7|X9")) == [oid]
    assert ids(search(client, "Observation?subject:identifier=urn:ehc:mrn:org-7|nope")) == []


def test_dates_at_the_ends_of_the_calendar_are_stored_and_searched(client):
    """'9999-12-31' is the "no end" date of many hospital systems. Its day ends past the last instant Python's
    datetime holds, as '0001-01-01T00:00:00+14:00' begins before the first one in UTC: storing either, or
    searching for it, ended in a 500. So did a number beyond a double's range in a search (a 503)."""
    open_ended = post(client, "Observation", {
        "resourceType": "Observation", "status": "final", "code": {"text": "编码有效期"},
        "effectivePeriod": {"start": "2026-01-01", "end": "9999-12-31"}})
    for when in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00", "9999-12-31"):
        post(client, "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "边界"},
                                     "effectiveDateTime": when})
    assert open_ended["id"] in ids(search(client, "Observation?date=ge2030-06-01&code:text=编码有效期"))
    assert open_ended["id"] in ids(search(client, "Observation?date=gt9999-12-30&code:text=编码有效期"))
    for prefix in ("", "lt", "gt", "ap", "sa", "eb", "ne"):
        for value in ("9999-12-31", "9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
            search(client, f"Observation?date={prefix}{quote(value)}")
            search(client, f"Patient?birthdate={prefix}{quote(value)}")
    for value in ("1e400", "ap1e400", "gt-1e400"):
        r = client.get(f"/fhir/Observation?value-quantity={value}")
        assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["value-quantity"], r.json
    # a leap second (valid FHIR, which datetime cannot hold) is read as the next second
    leap = post(client, "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "闰秒"},
                                        "effectiveDateTime": "2016-12-31T23:59:60Z"})
    assert ids(search(client, "Observation?date=2017-01-01&code:text=闰秒")) == [leap["id"]]
    assert ids(search(client, f"Observation?date={quote('2016-12-31T23:59:60Z')}&code:text=闰秒")) == [leap["id"]]
    # the same instants as _since of a history and as If-Modified-Since of a read
    for since in ("9999-12-31T23:59:59-12:00", "0001-01-01T00:00:00+14:00"):
        assert client.get(f"/fhir/Observation/_history?_since={quote(since)}").status_code == 200, since
    for header in ("Fri, 31 Dec 9999 23:59:59 -1200", "Mon, 01 Jan 0001 00:00:00 +1400"):
        r = client.get(f"/fhir/Observation/{open_ended['id']}", headers={"If-Modified-Since": header})
        assert r.status_code in (200, 304), header
