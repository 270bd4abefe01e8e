"""The gates attacked again (second review, 2026-11-30): a hospital client of another province (P31,
`system/*.cruds`), a resident's app (patient/*.cruds, bound to another resident of province 11) and the home
province's own client. Each test names the finding it reproduces; each failed before its fix."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.auth.consent import policy_rule
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    FJ,
    VICTIM_ID_NUMBER,
    bearer,
    create,
    observation,
    stored_token,
    victim_world,
)

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"



@pytest.fixture(scope="module")
def data(svc: Any) -> dict[str, Any]:
    return victim_world(svc)


@pytest.fixture(scope="module")
def tokens(svc: Any, data: dict[str, Any]) -> dict[str, str]:
    return {"home": stored_token(svc, "system/*.cruds", province="11", organization=data["org11"]),
            "p31": stored_token(svc, "system/*.cruds", province="31", organization=data["org31"]),
            "app": stored_token(svc, "patient/*.cruds", patient=data["me"])}


def call(web: Any, method: str, path: str, token: str, body: Any = None, content_type: str = FJ) -> Any:
    return web.open(f"/fhir/{path}", method=method, headers=bearer(token), content_type=content_type,
                    data=None if body is None else json.dumps(body, ensure_ascii=False))


# -- a write over a deleted record is a change of that record, not a create -----------------------------------

@pytest.mark.parametrize("who", ["p31", "app"])
def test_a_deleted_record_stays_its_home_provinces_and_its_patients(web, svc, data, tokens, who):
    """A PUT over a deletion was judged as a create: another province, or a resident naming themselves as its
    subject, wrote a new version of the victim's deleted record (stored, though the answer said 403)."""
    oid = observation(svc, data["victim"])
    assert call(web, "DELETE", f"Observation/{oid}", tokens["home"]).status_code in (200, 204)
    subject = data["victim"] if who == "p31" else data["me"]
    body = {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": f"by {who}"},
            "subject": {"reference": f"Patient/{subject}"}}
    r = call(web, "PUT", f"Observation/{oid}", tokens[who], body)
    assert r.status_code == 403, r.get_json()
    stored = svc.repo.get_raw("Observation", oid)
    assert stored["del"] and stored["vid"] == 2  # nothing written over the deletion
    again = call(web, "PUT", f"Observation/{oid}", tokens["home"], {**body, "subject": {
        "reference": f"Patient/{data['victim']}"}})
    assert again.status_code in (200, 201) and svc.repo.get_raw("Observation", oid)["vid"] == 3  # the home may


# -- a resident's token writes only records that are theirs alone ------------------------------------------------

CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"


def test_a_resident_cannot_write_into_another_residents_chart(web, svc, data, tokens):
    """A record belongs to every patient its compartment elements name: naming oneself as the recorder of the
    victim's AllergyIntolerance (or the performer of their Observation) let a resident's app write into the
    victim's chart. Reading such a record stays open to both (R4 compartments); writing it is refused."""
    theirs = {"resourceType": "AllergyIntolerance", "patient": {"reference": f"Patient/{data['victim']}"},
              "recorder": {"reference": f"Patient/{data['me']}"}, "code": {"text": "青霉素"},
              "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]}}  # ait-1
    r = call(web, "POST", "AllergyIntolerance", tokens["app"], theirs)
    assert r.status_code == 403, r.get_json()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "血压"},
           "subject": {"reference": f"Patient/{data['victim']}"}, "performer": [{"reference": f"Patient/{data['me']}"}]}
    assert call(web, "POST", "Observation", tokens["app"], obs).status_code == 403
    written_by_hospital = create(svc, obs)  # a record of both: the resident reads it, but does not change it
    assert call(web, "GET", f"Observation/{written_by_hospital}", tokens["app"]).status_code == 200
    changed = {**obs, "id": written_by_hospital, "status": "amended"}
    assert call(web, "PUT", f"Observation/{written_by_hospital}", tokens["app"], changed).status_code == 403
    mine = {**theirs, "patient": {"reference": f"Patient/{data['me']}"}}
    assert call(web, "POST", "AllergyIntolerance", tokens["app"], mine).status_code == 201  # their own stays open


# -- error texts are scrubbed like answers --------------------------------------------------------------------

def test_error_texts_do_not_name_records_the_caller_may_not_see(web, data, tokens):
    """Raised errors left without the gate's scrubbing: a 409 told a resident, or another province, which Patient
    holds an ID number (and so its id, which the searches then use)."""
    mine = call(web, "GET", f"Patient/{data['me']}", tokens["app"]).get_json()
    ops = [{"op": "add", "path": "/identifier", "value": (mine.get("identifier") or []) + [
        {"system": ID_SYSTEM, "value": VICTIM_ID_NUMBER}]},
        {"op": "replace", "path": "/gender", "value": "male"},
        {"op": "replace", "path": "/birthDate", "value": "1990-01-01"}]
    r = call(web, "PATCH", f"Patient/{data['me']}", tokens["app"], ops, "application/json-patch+json")
    assert r.status_code == 409 and data["victim"] not in r.get_data(as_text=True), r.get_json()
    assert "Patient/(withheld)" in r.get_data(as_text=True)
    impostor = {"resourceType": "Patient", "name": [{"family": "冒名"}], "gender": "male", "birthDate": "1990-01-01",
                "identifier": [{"system": ID_SYSTEM, "value": VICTIM_ID_NUMBER}]}
    r = call(web, "POST", "Patient", tokens["p31"], impostor)
    assert r.status_code == 409 and data["victim"] not in r.get_data(as_text=True), r.get_json()
    r = call(web, "POST", "Patient", tokens["home"], impostor)  # the home province may see whose it is
    assert r.status_code == 409 and data["victim"] in r.get_data(as_text=True), r.get_json()


# -- $validate tells whether an ID number is registered only to whoever may register it -----------------------

def test_validate_is_not_a_registration_oracle(web, svc, data, tokens):
    """$validate ran the master index's rules for any token: "the resident is registered already" for a known ID
    number, "valid" for an unknown one. Those rules now run only for a caller the create (or, at instance level,
    the update) would be admitted for."""
    obs_reader = stored_token(svc, "patient/Observation.rs", patient=data["me"])
    ghost = "110101199002020012"

    def answer(token: str, number: str, birth: str, path: str = "Patient/$validate") -> str:
        r = call(web, "POST", path, token, {"resourceType": "Patient", "gender": "male", "birthDate": birth,
                                            "identifier": [{"system": ID_SYSTEM, "value": number}]})
        assert r.status_code == 200, r.get_json()
        return str(r.get_json()["issue"][0]["diagnostics"])

    victims = f"Patient/{data['victim']}/$validate"
    for resident in (tokens["app"], obs_reader):  # may register nobody, and may not update the victim
        assert answer(resident, VICTIM_ID_NUMBER, "1990-01-01") == answer(resident, ghost, "1990-02-02")
        assert answer(resident, VICTIM_ID_NUMBER, "1990-01-01", victims) == answer(resident, ghost, "1990-02-02",
                                                                                  victims)
    # another province's hospital registers residents (a create would tell it too), but does not update the victim
    assert answer(tokens["p31"], VICTIM_ID_NUMBER, "1990-01-01", victims) == answer(tokens["p31"], ghost,
                                                                                    "1990-02-02", victims)
    assert "registered already" in answer(tokens["home"], VICTIM_ID_NUMBER, "1990-01-01")


# -- a record that names a resident is theirs, whether or not R4's compartment lists its type --------------------

@pytest.mark.parametrize("rtype,body,param", [
    ("Device", {"deviceName": [{"name": "心脏起搏器", "type": "user-friendly-name"}], "patient": "ONE"}, "patient"),
    ("Contract", {"status": "executed", "subject": "MANY"}, "subject"),
    ("GuidanceResponse", {"status": "success", "moduleUri": "http://x", "subject": "ONE"}, "subject"),
    ("MessageHeader", {"eventCoding": {"code": "x"}, "source": {"endpoint": "http://x"}, "focus": "MANY"}, "focus"),
    ("VerificationResult", {"status": "attested", "target": "MANY"}, "target"),
])
def test_records_naming_a_resident_are_not_directory_data(web, svc, data, tokens, rtype, body, param):
    """Types outside R4's patient compartment were nobody's records, so anyone could read the victim's pacemaker
    (Device.patient) or search for it by their name. They are the named patient's records now."""
    ref = {"reference": f"Patient/{data['victim']}"}
    resource = {"resourceType": rtype, **{k: (ref if v == "ONE" else [ref] if v == "MANY" else v)
                                          for k, v in body.items()}}
    rid = create(svc, resource)
    for who in ("p31", "app"):
        assert call(web, "GET", f"{rtype}/{rid}", tokens[who]).status_code == 403, who
        found = call(web, "GET", f"{rtype}?{param}={data['victim']}", tokens[who])
        assert rid not in found.get_data(as_text=True), who
    assert call(web, "GET", f"{rtype}/{rid}", tokens["home"]).status_code == 200
    inventory = create(svc, {k: v for k, v in resource.items() if k != param and k != "patient"})
    assert call(web, "GET", f"{rtype}/{inventory}", tokens["p31"]).status_code == 200  # naming nobody: directory


# -- another province needs the consent of every resident a record names ------------------------------------------

def test_one_patients_consent_does_not_open_records_that_name_other_residents(web, svc, data, tokens):
    """A Consent of one resident opened, to another province, every record that also named them: a follow-up
    Group of province 11 listing the victim, read by P31 with the consent of its own resident."""
    theirs = create(svc, {"resourceType": "Patient", "name": [{"family": "沪民"}], "gender": "male",
                          "birthDate": "1970-01-01"}, province="31")
    grant = {"resourceType": "Consent", "status": "active",
             "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                                   "code": "patient-privacy"}]},
             "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
             "patient": {"reference": f"Patient/{theirs}"}, "policyRule": policy_rule(),
             "provision": {"type": "permit", "actor": [{"role": {"text": "r"}, "reference": {
                 "identifier": {"system": "urn:ehc:province", "value": "31"}}}],
                 "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                         "code": "access"}]}]}}
    assert call(web, "POST", "Consent", tokens["p31"], grant).status_code == 201
    both = create(svc, {"resourceType": "Group", "type": "person", "actual": True, "name": "随访队列", "member": [
        {"entity": {"reference": f"Patient/{data['victim']}"}}, {"entity": {"reference": f"Patient/{theirs}"}}]})
    only_theirs = create(svc, {"resourceType": "Group", "type": "person", "actual": True, "name": "沪随访",
                               "member": [{"entity": {"reference": f"Patient/{theirs}"}}]})
    r = call(web, "GET", f"Group/{both}", tokens["p31"])
    assert r.status_code == 403 and data["victim"] not in r.get_data(as_text=True)
    assert "every patient it names" in r.get_json()["issue"][0]["diagnostics"]
    assert call(web, "GET", f"Group/{only_theirs}", tokens["p31"]).status_code == 200  # its own consent suffices
    found = call(web, "GET", f"Group?member={theirs}", tokens["p31"]).get_data(as_text=True)
    assert only_theirs in found and both not in found


# -- a resident does not claim records by giving themselves an identifier -----------------------------------------

def test_a_resident_cannot_claim_records_by_adding_an_identifier(web, svc, data, tokens):
    """Records elsewhere may name a patient by an identifier (a hospital's record number): a resident who added
    that number to their own Patient became the owner of those records and read them."""
    system = f"urn:ehc:mrn:{data['org11']}"
    named = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "病理"},
                         "subject": {"type": "Patient", "identifier": {"system": system, "value": "MRN-777"}}})
    ops = [{"op": "add", "path": "/identifier", "value": [{"system": system, "value": "MRN-777"}]}]
    r = call(web, "PATCH", f"Patient/{data['me']}", tokens["app"], ops, "application/json-patch+json")
    assert r.status_code == 403 and "identifiers" in r.get_json()["issue"][0]["diagnostics"], r.get_json()
    assert call(web, "GET", f"Observation/{named}", tokens["app"]).status_code == 403
    phone = [{"op": "add", "path": "/telecom", "value": [{"system": "phone", "value": "13800138000"}]}]
    r = call(web, "PATCH", f"Patient/{data['me']}", tokens["app"], phone, "application/json-patch+json")
    assert r.status_code == 200, r.get_json()  # the rest of their own record stays theirs to keep up to date


def test_a_refused_write_leaves_no_claim_on_its_identifiers(web, svc, data, tokens):
    """The master index claims a Patient's new identifiers before the write is judged. A write refused after
    that (403, 412 ...) left the claims naming the Patient: it held, for every lookup, identifiers it was refused,
    and the records naming a patient by them became its records."""
    system = f"urn:ehc:mrn:{data['org11']}"
    named = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "病理"},
                         "subject": {"type": "Patient", "identifier": {"system": system, "value": "MRN-888"}}})
    ops = [{"op": "add", "path": "/identifier", "value": [{"system": system, "value": "MRN-888"}]}]
    refused = call(web, "PATCH", f"Patient/{data['me']}", tokens["app"], ops, "application/json-patch+json")
    assert refused.status_code == 403
    assert call(web, "GET", f"Observation/{named}", tokens["app"]).status_code == 403
    stale = web.open(f"/fhir/Patient/{data['me']}", method="PATCH", content_type="application/json-patch+json",
                     data=json.dumps(ops), headers=bearer(tokens["home"], **{"If-Match": 'W/"999"'}))
    assert stale.status_code == 412  # the home province's own write, refused for its version
    free = call(web, "POST", "Patient", tokens["home"], {
        "resourceType": "Patient", "name": [{"family": "病案"}], "gender": "female", "birthDate": "1970-01-01",
        "identifier": [{"system": system, "value": "MRN-888"}]})
    assert free.status_code == 201, free.get_json()  # the number was nobody's, and is the new resident's now


# -- chains and _has see only what the caller may see ----------------------------------------------------------

def test_chains_and_has_answer_only_from_records_the_caller_may_see(web, svc, data, tokens):
    """A chain or a `_has` ran its inner search over every record: a token without Patient scope learned names
    (`Observation?subject:Patient.name=...` matched or not), one without Observation scope learned diagnoses
    (`Patient?_has:Observation:subject:code=...`), and another province learned where a resident is registered
    (`Organization?_has:Patient:organization:identifier=<ID number>`)."""
    observation(svc, data["victim"], code="B20-probe")
    obs_only = stored_token(svc, "system/Observation.rs", province="11", organization=data["org11"])
    patient_only = stored_token(svc, "system/Patient.rs system/Organization.rs", province="11",
                                organization=data["org11"])

    def total(token: str, query: str) -> int:
        r = call(web, "GET", query, token)
        assert r.status_code == 200, r.get_json()
        return sum(1 for e in r.get_json().get("entry", []) if e["search"]["mode"] == "match")

    chain = "Observation?subject:Patient.name=受害者"
    has = "Patient?_has:Observation:subject:code=B20-probe"
    where = f"Organization?_has:Patient:organization:identifier={ID_SYSTEM}|{VICTIM_ID_NUMBER}"
    assert total(tokens["home"], chain) >= 1 and total(tokens["home"], has) == 1  # what the searches find
    assert total(tokens["home"], where) == 1
    assert total(obs_only, chain) == 0  # it may not read Patients: their names are not its to test
    assert total(patient_only, has) == 0  # nor may this one read Observations
    for who in ("p31", "app"):  # another province, another resident: the victim's records are not theirs
        assert total(tokens[who], chain) == 0 and total(tokens[who], has) == 0, who
        assert total(tokens[who], where) == 0, who


# -- the count of withheld records answers no question but whose they are ------------------------------------

def test_the_withheld_count_answers_no_criterion_but_the_patient(web, svc, data, tokens):
    """Another province searching `Condition?patient.identifier=<ID number>&code=B20` was told "1 withheld" (and
    nothing for `code=J45`): a diagnosis, without consent. The count is given for the patient alone."""
    create(svc, {"resourceType": "Condition", "subject": {"reference": f"Patient/{data['victim']}"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "B20"}]}})

    def outcome(query: str) -> list[str]:
        r = call(web, "GET", query, tokens["p31"])
        assert r.status_code == 200, r.get_json()
        return [i["diagnostics"] for e in r.get_json().get("entry", []) if e["search"]["mode"] == "outcome"
                for i in e["resource"]["issue"]]

    whose = f"Condition?patient.identifier={ID_SYSTEM}|{VICTIM_ID_NUMBER}"
    assert outcome(f"{whose}&code=B20") == outcome(f"{whose}&code=J45") == []
    assert outcome(f"Condition?patient={data['victim']}&_lastUpdated=gt2000-01-01") == []
    assert any("withheld" in d for d in outcome(whose))  # whose records: the clinician learns to ask for consent
    assert any("withheld" in d for d in outcome(f"Condition?patient={data['victim']}"))


# -- conditional interactions match only what the caller may see ---------------------------------------------------

def test_conditional_interactions_answer_no_criterion_about_unseen_records(web, svc, data, tokens):
    """A conditional create matched records the caller may not see: another province learned, from a 403 where a
    create was expected, that the victim has a B20 Condition. Unseen records are not matches: the caller's own
    record is created, and the victim's stays as it was."""
    create(svc, {"resourceType": "Condition", "subject": {"reference": f"Patient/{data['victim']}"},
                 "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "B20"}],
                          "text": "conditional-probe"}})
    whose = f"patient.identifier={ID_SYSTEM}|{VICTIM_ID_NUMBER}"
    body = {"resourceType": "Condition", "subject": {"reference": f"Patient/{data['victim']}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "Z00"}]}}

    def answer(code: str) -> int:
        r = web.post("/fhir/Condition", data=json.dumps(body), content_type=FJ,
                     headers=bearer(tokens["p31"], **{"If-None-Exist": f"{whose}&code={code}"}))
        return r.status_code

    assert answer("B20") == answer("J45") == 201  # nothing it may see matched either: its own record each time
    gone = web.delete(f"/fhir/Condition?{whose}&code=B20", headers=bearer(tokens["p31"]))
    assert gone.status_code in (200, 204, 404)
    found = call(web, "GET", f"Condition?{whose}&code=B20", tokens["home"]).get_json()
    assert any(e["resource"]["code"].get("text") == "conditional-probe" for e in found.get("entry", [])
               if e["search"]["mode"] == "match")  # the victim's record was not deleted


# -- a Binary is not taken by pointing at it ------------------------------------------------------------------

def test_pointing_a_record_at_a_binary_does_not_open_it(web, svc, data, tokens):
    """A Binary without a securityContext belongs to the records whose attachment points at it: a resident's app
    (or another province, with a record and a Consent of its own) pointed a DocumentReference of its own at the
    victim's Binary and read it. A new link is refused unless the caller may read the Binary already."""
    import base64

    blob = create(svc, {"resourceType": "Binary", "contentType": "text/plain",
                        "data": base64.b64encode("出院小结".encode()).decode()})
    create(svc, {"resourceType": "DocumentReference", "status": "current",
                 "subject": {"reference": f"Patient/{data['victim']}"},
                 "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{blob}"}}]})
    mine = {"resourceType": "DocumentReference", "status": "current", "subject": {"reference": f"Patient/{data['me']}"},
            "content": [{"attachment": {"contentType": "text/plain", "url": f"Binary/{blob}"}}]}
    r = call(web, "POST", "DocumentReference", tokens["app"], mine)
    assert r.status_code == 403 and "Binary/" in r.get_json()["issue"][0]["diagnostics"], r.get_json()
    assert call(web, "GET", f"Binary/{blob}", tokens["app"]).status_code == 403
    theirs = create(svc, {"resourceType": "Patient", "name": [{"family": "沪链"}], "gender": "male",
                          "birthDate": "1971-01-01"}, province="31")
    r = call(web, "POST", "DocumentReference", tokens["p31"], {**mine, "subject": {"reference": f"Patient/{theirs}"}})
    assert r.status_code == 403, r.get_json()
    assert call(web, "GET", f"Binary/{blob}", tokens["p31"]).status_code == 403
    r = call(web, "POST", "DocumentReference", tokens["home"], {**mine, "subject": {
        "reference": f"Patient/{data['victim']}"}})
    assert r.status_code == 201, r.get_json()  # the home province links its own documents as before


def test_a_hospital_record_number_is_assigned_only_by_its_hospital_or_province(web, svc, data, tokens):
    """Another province registered a new Patient holding a province-11 hospital's record number, gave itself the
    Consent of that Patient, and read the records that name a patient by that number."""
    system = f"urn:ehc:mrn:{data['org11']}"
    named = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "病理"},
                         "subject": {"type": "Patient", "identifier": {"system": system, "value": "MRN-999"}}})
    body = {"resourceType": "Patient", "name": [{"family": "沪新"}], "gender": "male", "birthDate": "1971-01-01",
            "identifier": [{"system": system, "value": "MRN-999"}]}
    r = call(web, "POST", "Patient", tokens["p31"], body)
    assert r.status_code == 403 and "record numbers" in r.get_json()["issue"][0]["diagnostics"], r.get_json()
    assert call(web, "GET", f"Observation/{named}", tokens["p31"]).status_code == 403
    own = {**body, "identifier": [{"system": f"urn:ehc:mrn:{data['org31']}", "value": "SH-999"}]}
    assert call(web, "POST", "Patient", tokens["p31"], own).status_code == 201  # its own hospital's numbers
    assert call(web, "POST", "Patient", tokens["home"], body).status_code == 201  # the hospital's own province


# -- found by a second probe of these rules ------------------------------------------------------------------

def _condition(pid: str, code: str) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": f"Patient/{pid}"},
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": code}], "text": code}}


def _outcomes(r: Any) -> list[str]:
    return [i.get("diagnostics", "") for e in r.get_json().get("entry", []) if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def test_the_withheld_count_does_not_depend_on_the_order_asked(web, svc, data, tokens):
    """The count was of the rows withheld while a page was read: with `_sort=code&_count=1` and Conditions of its
    own as markers (A00, B19, B21), another province learned whether a hidden code sorts between two of them."""
    create(svc, _condition(data["victim"], "B20"))  # the home province's: hidden from P31
    for marker in ("A00", "B19", "B21"):
        assert call(web, "POST", "Condition", tokens["p31"], _condition(data["victim"], marker)).status_code == 201
    base = f"Condition?patient={data['victim']}"
    ascending = _outcomes(call(web, "GET", f"{base}&_sort=code&_count=1", tokens["p31"]))
    descending = _outcomes(call(web, "GET", f"{base}&_sort=-code&_count=1", tokens["p31"]))
    assert ascending == descending, (ascending, descending)  # a page of several says nothing of hidden rows
    whole = [_outcomes(call(web, "GET", f"{base}&_sort={order}&_count=50", tokens["p31"])) for order in ("code",
                                                                                                        "-code")]
    assert whole[0] == whole[1] and any("withheld" in d for d in whole[0]), whole


def test_include_iterate_does_not_walk_through_records_the_caller_may_not_see(web, svc, data, tokens):
    """`_revinclude` reached a hidden Patient, and `_include:iterate` went on from it to its GP: another province
    learned who the family doctor of a resident of org11 is."""
    doctor = create(svc, {"resourceType": "Practitioner", "name": [{"family": "家庭医生"}]})
    create(svc, {"resourceType": "Patient", "name": [{"family": "隐藏"}], "gender": "male", "birthDate": "1960-01-01",
                 "generalPractitioner": [{"reference": f"Practitioner/{doctor}"}],
                 "managingOrganization": {"reference": f"Organization/{data['org11']}"}})
    query = (f"Organization?_id={data['org11']}&_revinclude=Patient:organization"
             f"&_include:iterate=Patient:general-practitioner")
    r = call(web, "GET", query, tokens["p31"])
    assert r.status_code == 200 and doctor not in r.get_data(as_text=True), r.get_json()
    assert doctor in call(web, "GET", query, tokens["home"]).get_data(as_text=True)  # the home province's answer


def test_a_resident_does_not_learn_whose_an_id_number_is_through_a_chain(web, svc, data, tokens):
    """A chain that finds a Patient by an identifier is not judged for a hospital (the national index tells it as
    much), but it was not judged for a resident either: on a record of both, the victim's ID number matched and
    another did not."""
    shared = create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": "共同"},
                          "subject": {"reference": f"Patient/{data['victim']}"},
                          "performer": [{"reference": f"Patient/{data['me']}"}]})
    chain = f"Observation?subject:Patient.identifier={ID_SYSTEM}|"
    right = call(web, "GET", chain + VICTIM_ID_NUMBER, tokens["app"]).get_data(as_text=True)
    wrong = call(web, "GET", chain + "110101199002020012", tokens["app"]).get_data(as_text=True)
    assert shared not in right and shared not in wrong
    assert shared in call(web, "GET", chain + VICTIM_ID_NUMBER, tokens["home"]).get_data(as_text=True)


def test_a_registration_by_another_provinces_record_number_is_no_oracle(web: Any, svc: Any, data: dict[str, Any],
                                                                        tokens: dict[str, str]) -> None:
    """Third review (2026-12-01): a province-31 client POSTing a Patient with only a province-11 hospital's record
    number got 200 with the resident's id and card (whose legacy static code is `<card>:1`) when the number was
    registered, and 403 when it was not; $ihe-pix hides both (404). Now both are 403, alike."""
    from app.store.repository import WriteContext

    system = f"urn:ehc:mrn:{data['org11']}"
    victim = svc.repo.get_doc("Patient", data["victim"])["res"]
    if not any(i.get("system") == system for i in victim.get("identifier") or []):
        victim["identifier"] = [*(victim.get("identifier") or []), {"system": system, "value": "V-0001"}]
        svc.repo.update("Patient", data["victim"], victim, context=WriteContext(province="11"))
    answers = [call(web, "POST", "Patient", tokens["p31"], {"resourceType": "Patient",
                                                             "identifier": [{"system": system, "value": value}]})
               for value in ("V-0001", "NOBODY-0001")]
    assert [a.status_code for a in answers] == [403, 403], [a.get_json() for a in answers]
    assert answers[0].get_json()["issue"][0]["diagnostics"] == answers[1].get_json()["issue"][0]["diagnostics"]
    assert data["victim"] not in answers[0].get_data(as_text=True)
    own = call(web, "POST", "Patient", tokens["home"], {"resourceType": "Patient",
                                                         "identifier": [{"system": system, "value": "V-0001"}]})
    assert own.status_code == 200 and own.get_json()["id"] == data["victim"]  # the home province registers by it
