"""The access decision at the FHIR edge: scopes (v1, v2, granular), the patient compartment, user/ and
system/ scopes, cross-province records and consent (granted, revoked, expired, limited to classes, by
province organization), break-the-glass, CORS and security headers."""

from __future__ import annotations

import json

import pytest

from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    FJ,
    bearer,
    consent,
    create,
    observation,
    patient,
    register,
    stored_token,
)


@pytest.fixture(scope="module")
def data(svc):
    org = create(svc, {"resourceType": "Organization", "name": "北京协和医院"})
    gd_org = create(svc, {"resourceType": "Organization", "name": "广东省卫健委",
                          "identifier": [{"system": "urn:ehc:province", "value": "44"}]}, province="44")
    local = patient(svc, "赵", "一")
    remote = patient(svc, "钱", "二", province="44")  # written in Guangdong
    lab = observation(svc, local, category="laboratory")
    vital = observation(svc, local, category="vital-signs", code="8867-4")
    remote_lab = observation(svc, remote, province="44")
    return {"org": org, "gd_org": gd_org, "local": local, "remote": remote, "lab": lab, "vital": vital,
            "remote_lab": remote_lab}


def diag(r):
    return r.json["issue"][0]["diagnostics"]


def test_wrong_scope_names_the_missing_scope(web, svc, data):
    tok = stored_token(svc, "patient/Observation.rs", patient=data["local"])
    r = web.get(f"/fhir/Patient/{data['local']}", headers=bearer(tok))
    assert r.status_code == 403
    assert "patient/Patient.r" in diag(r) and r.json["issue"][0]["code"] == "forbidden"
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
           "subject": {"reference": f"Patient/{data['local']}"}}
    r = web.post("/fhir/Observation", data=json.dumps(obs), content_type=FJ, headers=bearer(tok))
    assert r.status_code == 403 and "Observation.c" in diag(r)


def test_v1_scopes_work_as_v2(web, svc, data):
    tok = stored_token(svc, "patient/*.read", patient=data["local"])
    assert web.get(f"/fhir/Patient/{data['local']}", headers=bearer(tok)).status_code == 200
    assert web.get(f"/fhir/Observation?patient={data['local']}", headers=bearer(tok)).status_code == 200
    r = web.delete(f"/fhir/Observation/{data['lab']}", headers=bearer(tok))
    assert r.status_code == 403 and "Observation.d" in diag(r)


def test_patient_scope_is_confined_to_the_compartment(web, svc, data):
    other = patient(svc, "孙", "三")
    tok = stored_token(svc, "patient/*.cruds", patient=data["local"])
    assert web.get(f"/fhir/Patient/{other}", headers=bearer(tok)).status_code == 403
    bundle = web.get("/fhir/Patient", headers=bearer(tok)).json
    assert [e["resource"]["id"] for e in bundle["entry"]] == [data["local"]]
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "体温"},
           "subject": {"reference": f"Patient/{other}"}}
    r = web.post("/fhir/Observation", data=json.dumps(obs), content_type=FJ, headers=bearer(tok))
    assert r.status_code == 403 and "compartment" in diag(r)
    obs["subject"]["reference"] = f"Patient/{data['local']}"
    r = web.post("/fhir/Observation", data=json.dumps(obs), content_type=FJ, headers=bearer(tok))
    assert r.status_code == 201
    # a patient's own record from another province needs no consent
    tok_remote = stored_token(svc, "patient/*.rs", patient=data["remote"])
    assert web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok_remote)).status_code == 200
    # the compartment through any of its parameters: a Coverage naming the patient as beneficiary is theirs,
    # one naming someone else is not (searched, counted or read)
    mine = create(svc, {"resourceType": "Coverage", "status": "active", "payor": [{"display": "医保"}],
                        "beneficiary": {"reference": f"Patient/{data['local']}"}})
    theirs = create(svc, {"resourceType": "Coverage", "status": "active", "payor": [{"display": "医保"}],
                          "beneficiary": {"reference": f"Patient/{other}"}})
    bundle = web.get("/fhir/Coverage?_count=5", headers=bearer(tok)).json
    assert [e["resource"]["id"] for e in bundle["entry"]] == [mine] and bundle["total"] == 1
    # the confinement is the server's: applied to every page, not written into the links
    assert [link["url"].split("/fhir/", 1)[1] for link in bundle["link"]] == ["Coverage?_count=5"]
    assert web.get(f"/fhir/Coverage/{theirs}", headers=bearer(tok)).status_code == 403
    r = web.get(f"/fhir/Coverage?_compartment=Patient/{other}", headers=bearer(tok))
    assert r.status_code == 200 and r.json["total"] == 0  # their own constraint still applies
    # patient scopes without a launch patient see nothing
    orphan = stored_token(svc, "patient/*.rs")
    assert web.get(f"/fhir/Patient/{data['local']}", headers=bearer(orphan)).status_code == 403


def test_granular_scope(web, svc, data):
    tok = stored_token(svc, "patient/Observation.rs?category=laboratory", patient=data["local"])
    assert web.get(f"/fhir/Observation/{data['lab']}", headers=bearer(tok)).status_code == 200
    r = web.get(f"/fhir/Observation/{data['vital']}", headers=bearer(tok))
    assert r.status_code == 403 and "granular" in diag(r) or "category" in diag(r)
    ids = [e["resource"]["id"] for e in web.get("/fhir/Observation", headers=bearer(tok)).json["entry"]
           if e["search"]["mode"] == "match"]
    assert data["lab"] in ids and data["vital"] not in ids


def test_system_scope_same_province(web, svc, data):
    tok = stored_token(svc, "system/*.rs", province="11")
    assert web.get(f"/fhir/Observation/{data['vital']}", headers=bearer(tok)).status_code == 200


def test_other_province_needs_consent(web, svc, data):
    tok = stored_token(svc, "user/*.rs", province="11", organization=data["org"])
    r = web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok))
    assert r.status_code == 403 and "Consent" in diag(r) and "province 44" in diag(r)
    bundle = web.get(f"/fhir/Observation?patient={data['remote']}", headers=bearer(tok)).json
    assert not [e for e in bundle["entry"] if e["search"]["mode"] == "match"]
    outcome = [e for e in bundle["entry"] if e["search"]["mode"] == "outcome"][0]["resource"]
    assert "1 matching resource(s) withheld" in outcome["issue"][-1]["diagnostics"]
    # the patient consents to the client's organization
    cid = consent(svc, data["remote"], {"reference": f"Organization/{data['org']}"}, province="44")
    assert web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok)).status_code == 200
    bundle = web.get(f"/fhir/Observation?patient={data['remote']}", headers=bearer(tok)).json
    assert [e["resource"]["id"] for e in bundle["entry"]] == [data["remote_lab"]]
    # revoked: the next request is refused
    res = svc.repo.read("Consent", cid).resource
    svc.repo.update("Consent", cid, {**res, "status": "inactive"})
    assert web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok)).status_code == 403
    # a consent whose period has ended counts for nothing
    consent(svc, data["remote"], {"reference": f"Organization/{data['org']}"},
            period={"start": "2020-01-01", "end": "2021-01-01"})
    assert web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok)).status_code == 403
    # one for another province's organization neither
    consent(svc, data["remote"], {"reference": f"Organization/{data['gd_org']}"})
    assert web.get(f"/fhir/Observation/{data['remote_lab']}", headers=bearer(tok)).status_code == 403


def test_consent_to_a_province_and_limited_classes(web, svc):
    remote = patient(svc, "周", "四", province="44")
    obs = observation(svc, remote, province="44")
    org11 = create(svc, {"resourceType": "Organization", "name": "北京市卫健委",
                         "identifier": [{"system": "urn:ehc:province", "value": "11"}]})
    tok = stored_token(svc, "system/*.rs", province="11", organization="someone-else")
    consent(svc, remote, {"reference": f"Organization/{org11}"}, classes=["Observation"])
    assert web.get(f"/fhir/Observation/{obs}", headers=bearer(tok)).status_code == 200
    assert web.get(f"/fhir/Patient/{remote}", headers=bearer(tok)).status_code == 403
    # a logical reference to the province works too
    consent(svc, remote, {"identifier": {"system": "urn:ehc:province", "value": "11"}}, classes=["Patient"])
    assert web.get(f"/fhir/Patient/{remote}", headers=bearer(tok)).status_code == 200


def test_a_consent_period_with_a_leap_second_is_read_not_ignored(web, svc):
    """23:59:60 is a valid FHIR time (a leap second: 2016-12-31T23:59:60Z happened). Python's datetime cannot
    read it, and a period bound it could not read was taken as no bound at all: a consent that ended in 2016, or
    that starts in 2999, let the client in."""
    org = create(svc, {"resourceType": "Organization", "name": "跨省医院"})
    tok = stored_token(svc, "system/*.rs", province="11", organization=org)
    for period in ({"start": "2016-01-01T00:00:00Z", "end": "2016-12-31T23:59:60Z"},
                   {"start": "2999-12-31T23:59:60Z"}):
        remote = patient(svc, "闰", "秒", province="44")
        obs = observation(svc, remote, province="44")
        consent(svc, remote, {"reference": f"Organization/{org}"}, period=period, province="44")
        assert web.get(f"/fhir/Observation/{obs}", headers=bearer(tok)).status_code == 403, period
    remote = patient(svc, "闰", "秒", province="44")  # and one that ends at the next leap second lets it in
    obs = observation(svc, remote, province="44")
    consent(svc, remote, {"reference": f"Organization/{org}"}, period={"end": "2999-06-30T23:59:60Z"}, province="44")
    assert web.get(f"/fhir/Observation/{obs}", headers=bearer(tok)).status_code == 200


def test_break_the_glass(web, svc, data):
    seen = []
    svc.access_listeners.append(lambda rec: seen.append(rec))
    try:
        url = f"/fhir/Patient/{patient(svc, '吴', '五', province='44')}"
        eligible = stored_token(svc, "system/*.rs", province="11", break_glass=True)
        assert web.get(url, headers=bearer(eligible)).status_code == 403  # no purpose given
        r = web.get(url, headers=bearer(eligible, **{"X-Purpose-Of-Use": "ETREAT"}))
        assert r.status_code == 200
        rec = [x for x in seen if x.interaction == "read" and x.status == 200][-1]
        assert rec.principal.break_glass is True and rec.principal.purpose_of_use == "ETREAT"
        claimed = stored_token(svc, "system/*.rs", province="11", break_glass=True, purpose="ETREAT")
        assert web.get(url, headers=bearer(claimed)).status_code == 200
        not_registered = stored_token(svc, "system/*.rs", province="11", purpose="ETREAT")
        assert web.get(url, headers=bearer(not_registered)).status_code == 403
    finally:
        svc.access_listeners.pop()


def test_cors_only_for_registered_origins_and_security_headers(web, svc, data):
    register(svc, "patient/*.rs", public=True, redirect_uris=["https://app.example.cn/cb"])
    from app.auth.plugin import auth_state

    auth_state(svc)._origins = (0.0, frozenset())  # re-read now
    r = web.options("/fhir/Patient", headers={"Origin": "https://app.example.cn",
                                               "Access-Control-Request-Method": "GET"})
    assert r.headers["Access-Control-Allow-Origin"] == "https://app.example.cn"
    assert "Authorization" in r.headers["Access-Control-Allow-Headers"]
    r = web.options("/fhir/Patient", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    r = web.get("/fhir/metadata")
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Referrer-Policy"] == "no-referrer"
