"""The disclosure gate, the change gate and the owner function, attacked the way the security review did:
a hospital client of another province (P31, `system/*.cruds`, province 31) and a resident's app (patient/*.cruds,
bound to another resident of province 11). Each test names the finding of the review it reproduces."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import pytest

from app.auth.consent import policy_rule
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    FJ,
    VICTIM_ID_NUMBER,
    VICTIM_NAME,
    VICTIM_PHONE,
    bearer,
    consent,
    create,
    observation,
    stored_token,
    victim_world,
)
from tests.sealing import seal_everything

OBS_CODE = "2345-7"



@pytest.fixture(scope="module")
def data(svc: Any) -> dict[str, Any]:
    world: dict[str, Any] = victim_world(svc)
    victim, me = world["victim"], world["me"]
    obs = [observation(svc, victim) for _ in range(3)]
    mine = observation(svc, me)
    return {**world, "obs": obs, "mine": mine}


@pytest.fixture(scope="module")
def p31(svc: Any, data: dict[str, Any]) -> str:
    return stored_token(svc, "system/*.cruds", province="31", organization=data["org31"])


@pytest.fixture(scope="module")
def app_token(svc: Any, data: dict[str, Any]) -> str:
    return stored_token(svc, "patient/*.cruds", patient=data["me"])


@pytest.fixture(scope="module")
def home(svc: Any, data: dict[str, Any]) -> str:
    return stored_token(svc, "system/*.cruds", province="11", organization=data["org11"])


def text(r: Any) -> str:
    return r.get_data(as_text=True)


def leaks(r: Any, data: dict[str, Any], asked: str = "") -> list[str]:
    """What of the victim's record is in the answer (ids the request itself named are not a leak)."""
    body = text(r)
    marks = [VICTIM_NAME, VICTIM_ID_NUMBER, VICTIM_PHONE, *data["obs"]]
    return [m for m in marks if m in body and m not in asked]


def post(web: Any, path: str, body: dict[str, Any], token: str, **headers: str) -> Any:
    return web.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ, headers=bearer(token, **headers))


# -- finding 1: system and type history ---------------------------------------------------------------------

def test_history_of_all_leaves_out_other_provinces_records(web, data, p31, home):
    for path in ("/fhir/_history?_count=500", "/fhir/Patient/_history?_count=500",
                 "/fhir/Observation/_history?_count=500"):
        r = web.get(path, headers=bearer(p31))
        assert r.status_code == 200 and not leaks(r, data), path
    r = web.get("/fhir/Patient/_history?_count=500", headers=bearer(home))
    assert VICTIM_NAME in text(r)  # the home province sees its own records


# -- finding 2: If-None-Exist ------------------------------------------------------------------------------

def test_if_none_exist_match_does_not_leave_to_a_foreign_client(web, data, p31, app_token):
    body = {"resourceType": "Patient", "name": [{"family": "X"}]}
    # A record the client may not see is no match (the answer would tell it exists): its own Patient is created,
    # exactly as for a number nobody holds.
    for number in (VICTIM_ID_NUMBER, "110101199002020012"):
        r = post(web, "Patient", body, p31, **{"If-None-Exist": f"identifier=urn:oid:2.16.156.10011.1.3|{number}"})
        assert r.status_code == 201 and not leaks(r, data), text(r)
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "subject": {"reference": f"Patient/{data['me']}"}}
    # A resident's app searches its own compartment only: the other resident's record is no match, so the
    # Observation is created in the app's own chart, and nothing of the other record shows.
    r = post(web, "Observation", obs, app_token, **{"If-None-Exist": f"_id={data['obs'][0]}"})
    assert r.status_code == 201 and not leaks(r, data), text(r)
    assert r.json["id"] != data["obs"][0] and r.json["subject"]["reference"] == f"Patient/{data['me']}"


# -- finding 3: registration of a known resident from another province --------------------------------------

def test_foreign_registration_gets_only_what_it_sent_and_does_not_move_the_record(web, svc, data, p31, home):
    sent = {"resourceType": "Patient", "name": [{"family": VICTIM_NAME, "given": ["甲"]}], "gender": "male",
            "birthDate": "1990-01-01",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER},
                           {"system": f"urn:ehc:mrn:{data['org31']}", "value": "SH-001"}]}
    r = post(web, "Patient", sent, p31)
    assert r.status_code == 200, text(r)
    got = r.json
    assert got["id"] == data["victim"]
    assert "telecom" not in got and "managingOrganization" not in got  # nothing the hospital did not send
    systems = {i["system"] for i in got["identifier"]}
    assert "urn:oid:2.16.156.10011.1.19" in systems  # the card identifier it needs
    assert svc.repo.get_raw("Patient", data["victim"])["prov"] == "11"  # the home province did not move
    assert web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(home)).status_code == 200
    assert web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(p31)).status_code == 403


def test_foreign_registration_adds_identifiers_and_nothing_else(web, svc, data, p31):
    """The policy says a registration of a known resident from another province adds identifiers, nothing more;
    it also added phones and any element the record lacked (a contact: the phone that binds a child in the
    portal). Only the home province changes the record's content."""
    before = svc.repo.get_doc("Patient", data["victim"])["res"]
    sent = {"resourceType": "Patient", "name": [{"family": VICTIM_NAME, "given": ["甲"]}], "gender": "male",
            "birthDate": "1990-01-01", "telecom": [{"system": "phone", "value": "13900001111"}],
            "contact": [{"telecom": [{"system": "phone", "value": "13900002222"}]}], "maritalStatus": {"text": "x"},
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER},
                           {"system": f"urn:ehc:mrn:{data['org31']}", "value": "SH-002"}]}
    r = post(web, "Patient", sent, p31)
    assert r.status_code == 200, text(r)
    after = svc.repo.get_doc("Patient", data["victim"])["res"]
    assert {"system": f"urn:ehc:mrn:{data['org31']}", "value": "SH-002"} in after["identifier"]
    assert after.get("telecom") == before.get("telecom") and "contact" not in after
    assert "maritalStatus" not in after


# -- finding 4: cascading delete ---------------------------------------------------------------------------

def test_cascade_delete_cannot_reach_other_residents_records(web, svc, data, p31, app_token, home):
    for token in (app_token, p31):
        r = web.delete(f"/fhir/Organization/{data['org11']}?_cascade=delete", headers=bearer(token))
        assert r.status_code == 403, text(r)
    # a province-31 organization that province-11 records point to: the cascade is refused as a whole
    target = create(svc, {"resourceType": "Organization", "name": "上海中转"}, province="31")
    pid = create(svc, {"resourceType": "Patient", "name": [{"family": "级联"}], "gender": "male",
                       "birthDate": "1970-01-01", "managingOrganization": {"reference": f"Organization/{target}"}})
    r = web.delete(f"/fhir/Organization/{target}?_cascade=delete", headers=bearer(p31))
    assert r.status_code == 403 and pid not in text(r)
    assert web.get(f"/fhir/Patient/{pid}", headers=bearer(home)).status_code == 200
    assert web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(home)).status_code == 200


def test_a_transaction_delete_names_referrers_only_to_who_may_delete(web, data, p31, app_token, home):
    """A transaction's DELETE entry is refused while records refer to its target (409 naming them); the change
    gate judges it first, so a caller who may not delete the record learns nothing of what refers to it."""
    entry = {"request": {"method": "DELETE", "url": f"Patient/{data['victim']}"}}
    for token in (p31, app_token):
        r = post(web, "", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}, token)
        assert r.status_code == 403, text(r)
        assert not leaks(r, data, data["victim"]), leaks(r, data, data["victim"])
    r = post(web, "", {"resourceType": "Bundle", "type": "transaction", "entry": [entry]}, home)
    assert r.status_code == 409 and data["obs"][0] in text(r), text(r)
    assert web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(home)).status_code == 200


# -- finding 5: deleted records --------------------------------------------------------------------------------

def test_vread_and_history_of_a_deleted_record_are_judged(web, svc, data, p31, home):
    oid = observation(svc, data["victim"])
    assert web.delete(f"/fhir/Observation/{oid}", headers=bearer(home)).status_code == 200
    for path in (f"/fhir/Observation/{oid}/_history/1", f"/fhir/Observation/{oid}/_history",
                 f"/fhir/Observation/{oid}"):
        r = web.get(path, headers=bearer(p31))
        assert r.status_code == 403, (path, r.status_code)
        assert VICTIM_NAME not in text(r)
    assert web.get(f"/fhir/Observation/{oid}/_history/1", headers=bearer(home)).status_code == 200


# -- findings 6 and 7: consent belongs to the resident ------------------------------------------------------

def test_a_client_cannot_grant_itself_consent(web, data, p31):
    grant = {"resourceType": "Consent", "status": "active",
             "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                   "code": "patient-privacy"}]},
             "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
             "patient": {"reference": f"Patient/{data['victim']}"}, "policyRule": policy_rule(),
             "provision": {"type": "permit", "actor": [{"role": {"text": "recipient"}, "reference": {
                 "identifier": {"system": "urn:ehc:province", "value": "31"}}}],
                 "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                         "code": "access"}]}]}}
    r = post(web, "Consent", grant, p31)
    assert r.status_code == 403
    assert web.get(f"/fhir/Observation/{data['obs'][0]}", headers=bearer(p31)).status_code == 403


def test_editing_an_organization_does_not_widen_a_consent(web, svc, data, home):
    grantee = create(svc, {"resourceType": "Organization", "name": "某合作医院"})
    consent(svc, data["victim"], {"reference": f"Organization/{grantee}"})
    other31 = create(svc, {"resourceType": "Organization", "name": "上海另一医院"}, province="31")
    token = stored_token(svc, "system/*.rs", province="31", organization=other31)
    assert web.get(f"/fhir/Observation/{data['obs'][1]}", headers=bearer(token)).status_code == 403
    org = web.get(f"/fhir/Organization/{grantee}", headers=bearer(home)).json
    org["identifier"] = [{"system": "urn:ehc:province", "value": "31"}]
    assert web.put(f"/fhir/Organization/{grantee}", data=json.dumps(org), content_type=FJ,
                   headers=bearer(home)).status_code == 200
    assert web.get(f"/fhir/Observation/{data['obs'][1]}", headers=bearer(token)).status_code == 403


def test_a_consent_granted_by_the_home_province_is_frozen_to_its_grantee(web, svc, data, home):
    sh = create(svc, {"resourceType": "Organization", "name": "上海卫健委",
                      "identifier": [{"system": "urn:ehc:province", "value": "31"}]}, province="31")
    pid = create(svc, {"resourceType": "Patient", "name": [{"family": "授权"}], "gender": "female",
                       "birthDate": "1960-01-01"})
    oid = observation(svc, pid)
    token = stored_token(svc, "system/*.rs", province="31")
    assert web.get(f"/fhir/Observation/{oid}", headers=bearer(token)).status_code == 403
    consent(svc, pid, {"reference": f"Organization/{sh}"})
    assert web.get(f"/fhir/Observation/{oid}", headers=bearer(token)).status_code == 200


# -- finding 8: every way of naming the patient --------------------------------------------------------------

def test_records_naming_the_patient_indirectly_stay_in_their_province(web, svc, data, p31, home):
    by_identifier = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "a"},
                                 "subject": {"type": "Patient", "identifier": {
                                     "system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER}}})
    absolute = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "b"},
                            "subject": {"reference": f"http://localhost/fhir/Patient/{data['victim']}"}})
    loose = create(svc, {"resourceType": "Binary", "contentType": "text/plain", "data": "5L2g5aW9"})
    for rtype, rid in (("Observation", by_identifier), ("Observation", absolute), ("Binary", loose)):
        assert web.get(f"/fhir/{rtype}/{rid}", headers=bearer(p31)).status_code == 403, rtype
        assert web.get(f"/fhir/{rtype}/{rid}", headers=bearer(home)).status_code == 200, rtype
    # the identifier is not stored in clear in the reference either
    raw = svc.repo.get_raw("Observation", by_identifier)
    assert VICTIM_ID_NUMBER not in json.dumps(raw, default=str)


def test_a_binary_belongs_to_the_patient_of_the_document_pointing_to_it(web, svc, data, app_token):
    blob = create(svc, {"resourceType": "Binary", "contentType": "text/plain", "data": "5L2g5aW9"})
    create(svc, {"resourceType": "DocumentReference", "status": "current",
                 "subject": {"reference": f"Patient/{data['me']}"},
                 "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{blob}"}}]})
    other = create(svc, {"resourceType": "Binary", "contentType": "text/plain", "data": "5L2g5aW9"})
    assert web.get(f"/fhir/Binary/{blob}", headers=bearer(app_token)).status_code == 200
    assert web.get(f"/fhir/Binary/{other}", headers=bearer(app_token)).status_code == 403


# -- findings 9 and 10: PATCH ------------------------------------------------------------------------------------

def test_patch_cannot_move_a_record_into_another_chart(web, data, app_token, home):
    ops = [{"op": "replace", "path": "/subject/reference", "value": f"Patient/{data['victim']}"}]
    r = web.patch(f"/fhir/Observation/{data['mine']}", data=json.dumps(ops),
                  content_type="application/json-patch+json", headers=bearer(app_token))
    assert r.status_code == 403
    got = web.get(f"/fhir/Observation/{data['mine']}", headers=bearer(home)).json
    assert got["subject"]["reference"] == f"Patient/{data['me']}"


def test_transaction_patch_goes_through_the_master_patient_index(web, svc, data, home):
    ops = [{"op": "add", "path": "/identifier", "value": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER}]}]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                     "data": base64.b64encode(json.dumps(ops).encode()).decode()},
        "request": {"method": "PATCH", "url": f"Patient/{data['me']}"}}]}
    r = post(web, "", bundle, home)
    assert r.status_code in (409, 422), text(r)  # the index refuses it, as it refuses the same PUT
    me = svc.repo.get_doc("Patient", data["me"])["res"]
    assert VICTIM_ID_NUMBER not in json.dumps(me)


# -- findings 13, 14, 15: counts, cursors, conditional delete ------------------------------------------------

def test_counts_and_totals_leave_out_withheld_records(web, svc, data, p31, home):
    for _ in range(3):
        observation(svc, data["victim"], code="COUNT-1")
    mine = web.get("/fhir/Observation?code=COUNT-1&_summary=count", headers=bearer(home)).json["total"]
    theirs = web.get("/fhir/Observation?code=COUNT-1&_summary=count", headers=bearer(p31)).json["total"]
    assert mine == 3 and theirs == 0
    r = web.get("/fhir/Observation?code=COUNT-1&_total=accurate&_count=1", headers=bearer(p31))
    assert r.json.get("total", 0) == 0 and not leaks(r, data)


def test_cursors_carry_nothing_of_withheld_rows(web, svc, data):
    token = stored_token(svc, "system/*.rs", province="31")
    observation(svc, data["me"], province="31")
    observation(svc, data["me"], province="31")
    url = f"/fhir/Observation?code={OBS_CODE}&_count=1"
    seen = 0
    while url and seen < 20:
        r = web.get(url, headers=bearer(token))
        assert r.status_code == 200 and not leaks(r, data)
        nxt = [link["url"] for link in r.json.get("link", []) if link["relation"] == "next"]
        for link in nxt:
            cursor = link.split("_cursor=")[1].split("&")[0]
            decoded = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
            assert not any(o in decoded for o in data["obs"])
        url = nxt[0].split("/fhir", 1)[1] if nxt else None
        url = f"/fhir{url}" if url else None
        seen += 1


def test_conditional_delete_refuses_without_naming_records(web, svc, data, p31, home):
    code = f"cd-{uuid.uuid4().hex[:8]}"  # the victim's records only: other tests write province 31's own
    victims = [observation(svc, data["victim"], code=code) for _ in range(2)]
    r = web.delete(f"/fhir/Observation?code={code}", headers=bearer(p31, **{"X-Delete-Multiple": "true"}))
    nothing = web.delete("/fhir/Observation?code=no-such-code", headers=bearer(p31, **{"X-Delete-Multiple": "true"}))
    # Records it may not see are no matches (the answer for criteria that match nothing); records a Consent lets it
    # read (another test of this module may grant one) are its home province's to delete, not its own (403).
    assert (r.status_code, r.json) == (nothing.status_code, nothing.json) or r.status_code == 403, r.json
    assert not leaks(r, data) and not any(v in r.get_data(as_text=True) for v in victims)
    for oid in victims:
        assert web.get(f"/fhir/Observation/{oid}", headers=bearer(home)).status_code == 200


# -- finding 16: residents do not write directory data ---------------------------------------------------------

def test_resident_app_cannot_write_organizations(web, data, app_token):
    r = post(web, "Organization", {"resourceType": "Organization", "name": "假医院"}, app_token)
    assert r.status_code == 403
    r = web.delete(f"/fhir/Organization/{data['org11']}", headers=bearer(app_token))
    assert r.status_code == 403


# -- findings 12 and 21: every disclosure and refusal is in the resident's audit trail -------------------------

def test_refusals_are_in_the_residents_audit_trail(web, svc, data, p31, home):
    r = web.get(f"/fhir/Observation/{data['obs'][2]}", headers=bearer(p31))
    assert r.status_code == 403
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Observation/{data['obs'][2]}"}}]}
    r = post(web, "", bundle, p31)
    assert r.status_code == 200 and r.json["entry"][0]["response"]["status"].startswith("403")
    events = web.get(f"/fhir/AuditEvent?patient=Patient/{data['victim']}&_count=500", headers=bearer(home)).json
    refused = [e["resource"] for e in events.get("entry", []) if e["search"]["mode"] == "match"
               and e["resource"].get("outcome") == "4"
               and any(data["obs"][2] in json.dumps(x) for x in e["resource"].get("entity", []))]
    assert len(refused) >= 2  # the read and the batch entry, each naming the record


# -- finding 23: break-the-glass names one patient -----------------------------------------------------------

def test_a_residents_audit_trail_shows_nothing_of_the_other_residents_an_access_concerned(web, svc, data, home):
    """A search or batch that concerns several residents leaves one AuditEvent naming them all, their records and
    the query. Each resident reads that event in their trail ("who read my records"), and read the others' ids,
    their records' ids and a query naming them. A reader confined to one patient now sees the access (who, when,
    what kind, how many withheld), its own entity, the other records' types, and nothing else of the others."""
    web.get(f"/fhir/Patient?_id={data['victim']},{data['me']}", headers=bearer(home))
    web.get(f"/fhir/Observation?patient={data['victim']},{data['me']}", headers=bearer(home))
    seal_everything(svc.extensions["audit"].sealer)
    mine = stored_token(svc, "patient/*.rs", patient=data["me"])
    r = web.get(f"/fhir/AuditEvent?patient={data['me']}&_count=500", headers=bearer(mine))
    assert r.status_code == 200
    shared = [e["resource"] for e in r.json["entry"] if e["search"]["mode"] == "match"
              and e["resource"].get("agent", [{}])[0].get("who", {}).get("identifier", {}).get("value") == "direct"
              and any(x.get("role", {}).get("code") == "24" for x in e["resource"].get("entity", []))]
    assert len(shared) >= 2, r.json  # the two searches are in the resident's trail
    body = text(r)
    assert data["victim"] not in body and not any(o in body for o in data["obs"]), leaks(r, data)
    assert f"Patient/{data['me']}" in body and "Observation" in body  # its own entity; what kind of records
    # the hospital's own view of the same events is whole
    full = web.get(f"/fhir/AuditEvent?patient={data['victim']}&_count=500", headers=bearer(home))
    assert data["me"] in text(full) and data["victim"] in text(full)


def test_break_glass_reaches_one_named_patient_only(web, svc, data):
    token = stored_token(svc, "system/*.rs", province="31", break_glass=True, purpose="ETREAT")
    r = web.get(f"/fhir/Observation?code={OBS_CODE}", headers=bearer(token))
    assert not leaks(r, data)
    r = web.get(f"/fhir/Observation?patient=Patient/{data['victim']}", headers=bearer(token))
    ids = [e["resource"]["id"] for e in r.json["entry"] if e["search"]["mode"] == "match"]
    assert set(data["obs"]) <= set(ids)
    expired = stored_token(svc, "system/*.rs", province="31", break_glass=True, purpose="ETREAT")
    from app.auth.models import Token, digest
    from app.auth.plugin import auth_state

    auth_state(svc).store.collection(Token).update_one({"_id": digest(expired)},
                                                       {"$set": {"issued_at": 1}})
    r = web.get(f"/fhir/Observation/{data['obs'][0]}", headers=bearer(expired))
    assert r.status_code == 403  # time-limited


# -- findings 25 and 26: operations --------------------------------------------------------------------------

def test_pix_answers_alike_for_unknown_and_forbidden(web, svc, data):
    token = stored_token(svc, "system/Patient.rs", province="31")
    known = web.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier=urn:oid:2.16.156.10011.1.3|{VICTIM_ID_NUMBER}",
                    headers=bearer(token))
    unknown = web.get("/fhir/Patient/$ihe-pix?sourceIdentifier=urn:oid:2.16.156.10011.1.3|11010119900307001X",
                      headers=bearer(token))
    assert known.status_code == unknown.status_code == 404
    assert known.json["issue"][0]["code"] == unknown.json["issue"][0]["code"]


def _pix(web: Any, method: str, number: str, token: str) -> Any:
    source = {"system": "urn:oid:2.16.156.10011.1.3", "value": number}
    if method == "GET":
        return web.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={source['system']}|{number}", headers=bearer(token))
    return post(web, "Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        {"name": "sourceIdentifier", "valueIdentifier": source}]}, token)


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_pix_by_get_or_post_answers_alike_for_unknown_and_forbidden(web, svc, data, p31, app_token, home, method):
    """POST Patient/$ihe-pix (a Parameters body) is judged as the GET is: the same scopes, the same province and
    compartment rules, the same 404 for a number the caller may not see as for one nobody holds."""
    reader31 = stored_token(svc, "system/Patient.rs", province="31")
    for token in (reader31, p31, app_token):  # another province's clients; another resident's app
        known, unknown = _pix(web, method, VICTIM_ID_NUMBER, token), _pix(web, method, "11010119900307001X", token)
        assert known.status_code == unknown.status_code == 404, (known.json, unknown.json)
        assert known.json["issue"][0]["code"] == unknown.json["issue"][0]["code"] == "not-found"
        assert known.json["issue"][0]["diagnostics"].replace(VICTIM_ID_NUMBER, "N") \
            == unknown.json["issue"][0]["diagnostics"].replace("11010119900307001X", "N")
        assert not leaks(known, data, VICTIM_ID_NUMBER) and data["victim"] not in text(known)
    no_patients = stored_token(svc, "system/Observation.rs", province="11")  # the home province, no Patient scope
    r = _pix(web, method, VICTIM_ID_NUMBER, no_patients)
    assert r.status_code == 403 and data["victim"] not in text(r)
    r = _pix(web, method, VICTIM_ID_NUMBER, home)
    assert r.status_code == 200, r.json
    assert [p["valueReference"]["reference"] for p in r.json["parameter"] if p["name"] == "targetId"] \
        == [f"Patient/{data['victim']}"]


def test_merge_answers_alike_for_unknown_and_forbidden_identifiers(web, data, p31, app_token, home):
    """$merge by identifier must not tell a caller who may not see the record whether the number is registered."""
    def merge(number: str, token: str) -> Any:
        return post(web, "Patient/$merge", {"resourceType": "Parameters", "parameter": [
            {"name": "source-patient-identifier",
             "valueIdentifier": {"system": "urn:oid:2.16.156.10011.1.3", "value": number}},
            {"name": "target-patient", "valueReference": {"reference": f"Patient/{data['me']}"}}]}, token)

    def refused_operations() -> int:
        trail = web.get(f"/fhir/AuditEvent?patient=Patient/{data['victim']}&_count=500", headers=bearer(home)).json
        return sum(1 for e in trail.get("entry", []) if e["resource"].get("outcome") == "4"
                   and e["resource"]["subtype"][0]["code"] == "operation")

    before = refused_operations()
    for token in (p31, app_token):
        known, unknown = merge(VICTIM_ID_NUMBER, token), merge("11010119900307001X", token)
        assert known.status_code == unknown.status_code == 422, (known.json, unknown.json)
        assert known.json["issue"][0]["code"] == unknown.json["issue"][0]["code"]
        assert known.json["issue"][0]["diagnostics"].replace(VICTIM_ID_NUMBER, "N") \
            == unknown.json["issue"][0]["diagnostics"].replace("11010119900307001X", "N")
        assert not leaks(known, data, VICTIM_ID_NUMBER)
    assert refused_operations() == before + 2  # each attempt on the victim's record is in the victim's trail


def test_resident_apps_cannot_spend_qr_codes(web, data, app_token):
    params = {"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": "EHC1:X:Y:Z"}]}
    assert post(web, "$ehc-verify", params, app_token).status_code == 403


# -- answers that differ by what the caller may not see ------------------------------------------------------

def test_a_registration_that_contradicts_a_resident_does_not_quote_the_resident(web, data, p31, app_token):
    """A registration naming a registered ID number with another name is refused (409); the refusal once quoted
    the registered resident's name, so any client that may create Patients could look up a name by ID number."""
    body = {"resourceType": "Patient", "name": [{"family": "冒名", "given": ["者"]}], "gender": "male",
            "birthDate": "1990-01-01",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER}]}
    for token, status in ((p31, 409), (app_token, 403)):  # a resident's app may not register into it at all
        r = post(web, "Patient", body, token)
        assert r.status_code == status, text(r)
        assert not leaks(r, data, VICTIM_ID_NUMBER), leaks(r, data, VICTIM_ID_NUMBER)


def _conditional_answers(web: Any, token: str, id_number: str, name: str) -> list[tuple[int, str]]:
    criteria = f"identifier=urn:oid:2.16.156.10011.1.3|{id_number}"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "血糖"},
                     "subject": {"reference": f"Patient?{criteria}"}},
        "request": {"method": "POST", "url": "Observation"}}]}
    answers = []
    for method, path, body in (("DELETE", f"Patient?name={name}", None), ("DELETE", f"Patient?{criteria}", None),
                               ("PUT", f"Patient?{criteria}", {"resourceType": "Patient", "gender": "male"}),
                               ("POST", "", transaction)):
        r = web.open(f"/fhir/{path}".rstrip("/"), method=method, headers=bearer(token), content_type=FJ,
                     data=json.dumps(body) if body is not None else None)
        answers.append((r.status_code, text(r).replace(id_number, "<id>").replace(name, "<name>")))
    return answers


def test_conditional_interactions_of_a_resident_app_see_what_its_search_sees(web, data, app_token, home):
    """Conditional delete, update and references searched every record, so a resident's app told a registered
    name or ID number from an unknown one by the answer (403 against 200 or 412), where its search shows
    neither. They now search as the caller's search does: the same answers for both."""
    from app.synthetic import check_char
    unknown = "11010119900202001"
    unknown += check_char(unknown)
    assert _conditional_answers(web, app_token, VICTIM_ID_NUMBER, VICTIM_NAME) == \
        _conditional_answers(web, app_token, unknown, "无此人")
    got = web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(home))
    assert got.status_code == 200 and got.json["name"][0]["family"] == VICTIM_NAME


def test_a_resident_app_cannot_tell_a_registered_id_number_by_registering_it(web, data, app_token):
    """A resident's app that POSTed a Patient with somebody's ID number got 409 (the name contradicts the
    registered resident) or 403 "before the change" for a registered number, and 403 "after the change" for an
    unknown one. The change gate now judges the registration before the master index compares it, and says
    which side failed only to a caller the version before was open to: one answer for all three."""
    from app.synthetic import check_char
    unknown = "11010119900303001"
    unknown += check_char(unknown)

    def register(number: str, name: str) -> tuple[int, str]:
        body = {"resourceType": "Patient", "name": [{"family": name}], "gender": "male",
                "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}]}
        r = post(web, "Patient", body, app_token)
        return r.status_code, text(r).replace(number, "<id>").replace(name, "<name>")

    answers = {register(VICTIM_ID_NUMBER, "冒名"), register(VICTIM_ID_NUMBER, VICTIM_NAME), register(unknown, "某")}
    assert len(answers) == 1 and next(iter(answers))[0] == 403, answers


def test_conditional_interactions_need_the_search_permission(web, svc, data):
    """A conditional interaction is a search: without `s` its answer (a match, several, none) would be a search
    the token may not make."""
    token = stored_token(svc, "system/Patient.cud", province="11", organization=data["org11"])
    r = web.delete(f"/fhir/Patient?identifier=urn:oid:2.16.156.10011.1.3|{VICTIM_ID_NUMBER}", headers=bearer(token))
    assert r.status_code == 403 and "insufficient scope" in text(r), text(r)
    assert web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(stored_token(
        svc, "system/*.rs", province="11", organization=data["org11"]))).status_code == 200


# -- the class behind them: every route, both attackers ------------------------------------------------------

def _paths(data: dict[str, Any]) -> list[tuple[str, str, dict[str, Any] | None]]:
    from app.fhir import ROUTER
    from app.fhir.operations import OPERATIONS

    victim, obs = data["victim"], data["obs"][0]
    ids = {"Patient": victim, "Observation": obs}
    out: list[tuple[str, str, dict[str, Any] | None]] = []
    for route in ROUTER.routes:
        for rtype in ("Patient", "Observation"):
            segs = []
            for p in route.pattern:
                segs.append({"{type}": rtype, "{id}": ids[rtype], "{vid}": "1"}.get(p, p))
            if "{op}" in route.pattern:
                continue
            body = None
            if route.method in ("POST", "PUT"):
                body = {"resourceType": rtype, "id": ids[rtype]} if "{id}" in route.pattern else \
                    {"resourceType": "Bundle", "type": "batch", "entry": []}
            if route.method == "PATCH":  # a FHIRPath Patch that applies to any resource
                body = {"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
                    {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": rtype},
                    {"name": "name", "valueString": "language"}, {"name": "value", "valueCode": "zh"}]}]}
            path = "/".join(segs)
            if route.method in ("GET", "DELETE", "PATCH") and route.pattern in (("{type}",), ()):
                path += f"?_id={ids[rtype]}" if route.pattern else ""
            out.append((route.method, path, body))
    for name, spec in OPERATIONS.items():
        for level in spec["levels"]:
            path = {"system": f"${name}", "type": f"Patient/${name}",
                    "instance": f"Patient/{victim}/${name}"}[level]
            for method in spec["methods"]:
                body = {"resourceType": "Parameters", "parameter": [
                    {"name": "sourceIdentifier", "valueString": f"urn:oid:2.16.156.10011.1.3|{VICTIM_ID_NUMBER}"}]}
                asked = path
                if name == "ihe-pix" and method == "GET":  # a POST takes it in the body (no query on a POST)
                    asked = f"Patient/$ihe-pix?sourceIdentifier=urn:oid:2.16.156.10011.1.3|{VICTIM_ID_NUMBER}"
                out.append((method, asked, body if method == "POST" else None))
    return out


def test_no_route_discloses_or_changes_a_foreign_record(web, data, p31, app_token, home):
    targets = (("Patient", data["victim"]), ("Observation", data["obs"][0]))
    versions = {rid: web.get(f"/fhir/{rtype}/{rid}", headers=bearer(home)).json["meta"]["versionId"]
                for rtype, rid in targets}
    for token in (p31, app_token):
        for method, path, body in _paths(data):
            r = web.open(f"/fhir/{path}".rstrip("/"), method=method, headers=bearer(token),
                         data=json.dumps(body) if body is not None else None, content_type=FJ)
            assert r.status_code < 500, (method, path, text(r))
            # the number a POSTed $ihe-pix sent is echoed in its 404, as a GET's is (in its path): no leak
            asked = path + (json.dumps(body) if path.endswith("$ihe-pix") else "")
            assert not leaks(r, data, asked), (method, path, r.status_code, leaks(r, data, asked))
    for rtype, rid in targets:  # nothing was changed
        got = web.get(f"/fhir/{rtype}/{rid}", headers=bearer(home))
        assert got.status_code == 200 and got.json["meta"]["versionId"] == versions[rid], (rtype, got.status_code)
