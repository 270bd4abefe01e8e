"""$ihe-pix, $match, $merge and $everything on the master patient index: answers and every error status."""

from __future__ import annotations

import json

import pytest

from tests.integration.test_mpi_registration import EHC_SYS, ID_SYS, id_number, patient, post

MATCH_GRADE = "http://hl7.org/fhir/StructureDefinition/match-grade"


def params(resource: dict) -> dict:
    return {p["name"]: p for p in resource["parameter"]}


def register(client, number, name, **kw):
    r = post(client, "Patient", patient(number, name=name, **kw))
    assert r.status_code in (200, 201), r.json
    return r.json


# -- $ihe-pix ------------------------------------------------------------------------------------------------
# GET with the parameters in the URL, POST with a Parameters body (R4 operations.html: every operation takes POST),
# sourceIdentifier a valueIdentifier or a valueString system|value: the same answers and errors every way.

PIX_WAYS = ("GET", "POST valueIdentifier", "POST valueString")


def pix(client, way: str, source: str, *targets: str):
    if way == "GET":
        query = [("sourceIdentifier", source), *(("targetSystem", t) for t in targets)]
        return client.get("/fhir/Patient/$ihe-pix", query_string=query)
    system, _, value = source.partition("|")
    first = ({"name": "sourceIdentifier", "valueIdentifier": {"system": system, "value": value}}
             if way == "POST valueIdentifier" else {"name": "sourceIdentifier", "valueString": source})
    return post(client, "Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        first, *({"name": "targetSystem", "valueUri": t} for t in targets)]})


@pytest.mark.parametrize("way", PIX_WAYS)
def test_pix_answers_other_identifiers(client, way):
    number = id_number("110101", "1991-01-01", 11)
    res = register(client, number, "钱一", extra=[{"system": "urn:ehc:mrn:h1", "value": "X1"},
                                                  {"system": "urn:ehc:mrn:h2", "value": "Y2"}])
    r = pix(client, way, "urn:ehc:mrn:h1|X1")
    assert r.status_code == 200
    targets = [(p["valueIdentifier"]["system"], p["valueIdentifier"]["value"])
               for p in r.json["parameter"] if p["name"] == "targetIdentifier"]
    assert (ID_SYS, number) in targets and ("urn:ehc:mrn:h2", "Y2") in targets
    assert ("urn:ehc:mrn:h1", "X1") not in targets
    assert params(r.json)["targetId"]["valueReference"]["reference"] == f"Patient/{res['id']}"
    r = pix(client, way, f"{ID_SYS}|{number}", "urn:ehc:mrn:h2")
    targets = [p["valueIdentifier"] for p in r.json["parameter"] if p["name"] == "targetIdentifier"]
    assert targets == [{"system": "urn:ehc:mrn:h2", "value": "Y2"}]
    r = pix(client, way, f"{ID_SYS}|{number}", EHC_SYS)
    targets = [p["valueIdentifier"] for p in r.json["parameter"] if p["name"] == "targetIdentifier"]
    assert len(targets) == 1 and targets[0]["system"] == EHC_SYS
    r = pix(client, way, f"{ID_SYS}|{number}", "urn:ehc:mrn:h1", "urn:ehc:mrn:h2")  # targetSystem repeats
    targets = [p["valueIdentifier"] for p in r.json["parameter"] if p["name"] == "targetIdentifier"]
    assert targets == [{"system": "urn:ehc:mrn:h1", "value": "X1"}, {"system": "urn:ehc:mrn:h2", "value": "Y2"}]
    if way != "GET":  # the same answer as the GET, to the letter
        r_get = pix(client, "GET", f"{ID_SYS}|{number}", "urn:ehc:mrn:")
        assert pix(client, way, f"{ID_SYS}|{number}", "urn:ehc:mrn:").json == r_get.json


def test_a_posted_pix_query_is_audited_as_a_read_without_a_write_intent(client, services):
    committer = services.extensions["audit"].writer.committer
    before = committer.stats.records
    assert pix(client, "POST valueString", "urn:ehc:mrn:h1|NOPE").status_code == 404
    assert committer.stats.records == before + 1  # its event only: a query stores nothing, so no intent first


@pytest.mark.parametrize("way", PIX_WAYS)
def test_pix_errors(client, way):
    r = pix(client, way, "urn:ehc:mrn:h1|NOPE")
    assert r.status_code == 404 and r.json["issue"][0]["code"] == "not-found"
    r = pix(client, way, "urn:unknown:sys|1")
    assert r.status_code == 400 and r.json["issue"][0]["code"] == "code-invalid"
    number = id_number("110101", "1991-01-01", 11)
    r = pix(client, way, f"{ID_SYS}|{number}", "urn:nope")
    assert r.status_code == 403 and r.json["issue"][0]["code"] == "code-invalid"
    r = pix(client, way, f"{ID_SYS}|")  # no value
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["sourceIdentifier"]
    if way != "POST valueIdentifier":  # a text without the bar
        r = pix(client, way, ID_SYS)
        assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["sourceIdentifier"]


def test_pix_without_a_source_is_refused_by_get_and_post(client):
    assert client.get("/fhir/Patient/$ihe-pix").status_code == 400
    r = post(client, "Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": []})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["sourceIdentifier"]


def test_a_posted_pix_query_is_read_from_its_parameters_body_only(client):
    number = id_number("110101", "1991-01-01", 11)
    register(client, number, "钱一")
    ident = {"name": "sourceIdentifier", "valueIdentifier": {"system": ID_SYS, "value": number}}

    def refused(path: str, body) -> list[str]:
        r = client.post(f"/fhir/{path}", data=json.dumps(body), content_type="application/fhir+json")
        assert r.status_code == 400 and r.json["resourceType"] == "OperationOutcome", r.json
        return r.json["issue"][0].get("expression")

    assert refused("Patient/$ihe-pix", {}) == ["Parameters"]
    assert refused("Patient/$ihe-pix", {"resourceType": "Patient"}) == ["Parameters"]
    assert refused("Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        {"name": "sourceIdentifier", "valueCode": f"{ID_SYS}|{number}"}]}) == ["Parameters.parameter[0]"]
    assert refused("Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        {"name": "sourceIdentifier", "valueIdentifier": {"system": ID_SYS}}]}) == ["sourceIdentifier"]
    assert refused("Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        ident, {"name": "targetSystem", "valueString": EHC_SYS}]}) == ["Parameters.parameter[1]"]
    assert refused("Patient/$ihe-pix", {"resourceType": "Parameters", "parameter": [
        ident, {"name": "targetSystem", "valueUri": ""}]}) == ["Parameters.parameter[1].valueUri"]
    # a parameter in the URL of a POST is refused, not ignored (a targetSystem ignored would widen the answer)
    body = {"resourceType": "Parameters", "parameter": [ident]}
    assert refused(f"Patient/$ihe-pix?targetSystem={EHC_SYS}", body) == ["targetSystem"]
    assert refused(f"Patient/$ihe-pix?sourceIdentifier={ID_SYS}|{number}", body) == ["sourceIdentifier"]
    r = client.post("/fhir/Patient/$ihe-pix", content_type="application/fhir+json")  # no body at all
    assert r.status_code == 400
    r = client.post("/fhir/Patient/$ihe-pix?_format=json", data=json.dumps(body),
                    content_type="application/fhir+json")
    assert r.status_code == 200  # other URL parameters (_format, _pretty) are as on any request


# -- $match --------------------------------------------------------------------------------------------------

def match(client, query, **extra):
    body = {"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": query}]}
    for k, v in extra.items():
        body["parameter"].append({"name": k, **v})
    return post(client, "Patient/$match", body)


def test_match_scores_and_grades(client):
    number = id_number("440305", "1980-10-10", 21)
    res = register(client, number, "陈小明", born="1980-10-10", gender="male")
    register(client, id_number("440305", "1980-10-10", 23), "陈晓明", born="1980-10-10", gender="male")
    # By identifier: certain.
    r = match(client, {"resourceType": "Patient", "identifier": [{"system": ID_SYS, "value": number}]})
    assert r.status_code == 200
    first = r.json["entry"][0]
    assert first["resource"]["id"] == res["id"] and first["search"]["score"] == 1.0
    assert first["search"]["extension"] == [{"url": MATCH_GRADE, "valueCode": "certain"}]
    # By demographics only: found through the name postings, graded below certain.
    r = match(client, {"resourceType": "Patient", "name": [{"text": "陈小明"}], "birthDate": "1980-10-10",
                       "gender": "male"})
    assert r.status_code == 200
    ids = [e["resource"]["id"] for e in r.json["entry"]]
    assert res["id"] in ids
    grades = {e["resource"]["id"]: e["search"]["extension"][0]["valueCode"] for e in r.json["entry"]}
    assert grades[res["id"]] in ("probable", "possible")
    scores = [e["search"]["score"] for e in r.json["entry"]]
    assert scores == sorted(scores, reverse=True)
    r = match(client, {"resourceType": "Patient", "name": [{"text": "陈小明"}], "birthDate": "1980-10-10"},
              onlyCertainMatches={"valueBoolean": True})
    assert r.json["entry"] == []
    r = match(client, {"resourceType": "Patient", "name": [{"text": "陈小明"}], "birthDate": "1980-10-10"},
              count={"valueInteger": 1})
    assert len(r.json["entry"]) == 1


def test_match_errors(client):
    assert post(client, "Patient/$match", {"resourceType": "Patient"}).status_code == 400
    r = match(client, {"resourceType": "Observation"})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["resource"]
    r = match(client, {"resourceType": "Patient", "name": [{"text": "x"}]}, count={"valueInteger": 0})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["count"]
    assert match(client, {"resourceType": "Patient", "gender": "male"}).status_code == 400


# -- $merge and $everything ----------------------------------------------------------------------------------

def merge_body(source, target, preview=False):
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}]}
    if preview:
        body["parameter"].append({"name": "preview", "valueBoolean": True})
    return body


def observation(pid):
    return {"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}]},
            "subject": {"reference": f"Patient/{pid}"}, "valueQuantity": {"value": 5.4, "unit": "mmol/L"}}


def test_merge_repoints_and_retires_the_source(client):
    number = id_number("420102", "1966-06-06", 61)
    target = register(client, number, "郑十", extra=[{"system": "urn:ehc:mrn:h9", "value": "T-1"}])
    source = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "郑十"}],
                                      "identifier": [{"system": "urn:ehc:mrn:h8", "value": "S-1"}]}).json
    obs = post(client, "Observation", observation(source["id"])).json
    preview = post(client, "Patient/$merge", merge_body(source["id"], target["id"], preview=True))
    assert preview.status_code == 200
    assert client.get(f"/fhir/Observation/{obs['id']}").json["meta"]["versionId"] == "1"
    r = post(client, "Patient/$merge", merge_body(source["id"], target["id"]))
    assert r.status_code == 200, r.json
    p = params(r.json)
    assert p["outcome"]["resource"]["resourceType"] == "OperationOutcome"
    result = p["result"]["resource"]
    assert result["id"] == target["id"]
    assert {"urn:ehc:mrn:h8", "urn:ehc:mrn:h9"} <= {i["system"] for i in result["identifier"]}
    assert {"other": {"reference": f"Patient/{source['id']}"}, "type": "replaces"} in result["link"]
    current = [i for i in result["identifier"] if i["system"] == EHC_SYS and i.get("use") != "old"]
    assert len(current) == 1 and current[0]["type"]["coding"][0]["code"] == "formal"
    src = client.get(f"/fhir/Patient/{source['id']}").json
    assert src["active"] is False
    assert {"other": {"reference": f"Patient/{target['id']}"}, "type": "replaced-by"} in src["link"]
    moved = client.get(f"/fhir/Observation/{obs['id']}").json
    assert moved["subject"]["reference"] == f"Patient/{target['id']}"
    assert moved["meta"]["versionId"] == "2"
    # The source's identifier now leads to the target.
    pix = client.get("/fhir/Patient/$ihe-pix?sourceIdentifier=urn:ehc:mrn:h8|S-1").json
    assert params(pix)["targetId"]["valueReference"]["reference"] == f"Patient/{target['id']}"
    # A registration with the source's identifier links to the target.
    again = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "郑十"}],
                                     "identifier": [{"system": "urn:ehc:mrn:h8", "value": "S-1"}]})
    assert again.status_code == 200 and again.json["id"] == target["id"]
    # $everything of the target holds the observation.
    every = client.get(f"/fhir/Patient/{target['id']}/$everything").json
    assert every["type"] == "searchset"
    found = {(e["resource"]["resourceType"], e["resource"]["id"]) for e in every["entry"]}
    assert ("Patient", target["id"]) in found and ("Observation", obs["id"]) in found
    assert every["entry"][0]["resource"]["id"] == target["id"]
    # Merging the merged source again is refused.
    r = post(client, "Patient/$merge", merge_body(source["id"], target["id"]))
    assert r.status_code == 409
    r = post(client, "Patient/$merge", merge_body(target["id"], source["id"]))
    assert r.status_code == 422


def test_a_record_written_for_a_merged_patient_is_refused_naming_the_target(client):
    """After a merge every record follows the resident, but a hospital that still used the retired Patient's id
    created Observations under it (201), where neither the resident's $everything nor a search by the target found
    them. Such a write is refused now (422 naming the Patient to refer to); the target's own link to the source
    stays writable."""
    number = id_number("420102", "1966-06-08", 65)
    target = register(client, number, "郑十二", extra=[{"system": "urn:ehc:mrn:h9", "value": "T-3"}])
    source = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "郑十二"}],
                                      "identifier": [{"system": "urn:ehc:mrn:h8", "value": "S-3"}]}).json
    assert post(client, "Patient/$merge", merge_body(source["id"], target["id"])).status_code == 200
    r = post(client, "Observation", observation(source["id"]))
    assert r.status_code == 422, r.json
    assert r.json["issue"][0]["expression"] == ["Observation.subject.reference"]
    assert f"merged into Patient/{target['id']}" in r.json["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Observation?patient={source['id']}").json["total"] == 0
    assert post(client, "Observation", observation(target["id"])).status_code == 201
    merged = client.get(f"/fhir/Patient/{target['id']}").json  # its link 'replaces' names the source
    r = client.put(f"/fhir/Patient/{target['id']}", data=json.dumps({**merged, "active": True}),
                   content_type="application/fhir+json")
    assert r.status_code == 200, r.json
    # Nor can the retired record be revived by a write (it would split the resident again); it is read-only.
    retired = client.get(f"/fhir/Patient/{source['id']}").json
    revived = {k: v for k, v in retired.items() if k != "link"}
    r = client.put(f"/fhir/Patient/{source['id']}", data=json.dumps({**revived, "active": True}),
                   content_type="application/fhir+json")
    assert r.status_code == 409 and f"merged into Patient/{target['id']}" in r.json["issue"][0]["diagnostics"]
    r = client.patch(f"/fhir/Patient/{source['id']}", data=json.dumps([{"op": "replace", "path": "/active",
                                                                         "value": True}]),
                     content_type="application/json-patch+json")
    assert r.status_code == 409, r.json
    assert client.get(f"/fhir/Patient/{source['id']}").json["meta"]["versionId"] == retired["meta"]["versionId"]


def test_a_record_that_already_names_a_merged_patient_stays_editable(client, services):
    """Only a new reference to a merged Patient is refused: a record written before the rule, which still names
    one (the merge re-points every record it finds, so this is older data), can be edited as it is."""
    from app.store.repository import WriteContext

    pid = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "旧档"}]}).json["id"]
    into = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "新档"}]}).json["id"]
    obs = post(client, "Observation", observation(pid)).json
    old = client.get(f"/fhir/Patient/{pid}").json  # retired as a merge would, its records left as they were
    old["link"] = [{"other": {"reference": f"Patient/{into}"}, "type": "replaced-by"}]
    services.repo.update("Patient", pid, old, context=WriteContext(extra={"mpi_trusted": True}))
    r = client.put(f"/fhir/Observation/{obs['id']}", data=json.dumps({**obs, "status": "amended"}),
                   content_type="application/fhir+json")
    assert r.status_code == 200, r.json
    assert post(client, "Observation", observation(pid)).status_code == 422


def test_merge_by_identifier_and_errors(client):
    a = register(client, id_number("500103", "1955-05-05", 51), "冯一")
    b = register(client, id_number("500103", "1956-05-05", 53), "冯一")
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": a["identifier"][0]},
        {"name": "target-patient-identifier", "valueIdentifier": b["identifier"][0]}]}
    r = post(client, "Patient/$merge", body)
    assert r.status_code == 422  # two residents: different ID numbers
    assert post(client, "Patient/$merge", merge_body(a["id"], a["id"])).status_code == 422
    assert post(client, "Patient/$merge", merge_body("nope", a["id"])).status_code == 404
    r = post(client, "Patient/$merge", {"resourceType": "Parameters", "parameter": []})
    assert r.status_code == 400
    body["parameter"][0]["valueIdentifier"] = {"system": "urn:ehc:mrn:zz", "value": "none"}
    assert post(client, "Patient/$merge", body).status_code == 422


def test_everything_errors(client):
    assert client.get("/fhir/Patient/nope/$everything").status_code == 404
    res = register(client, None, "褚二", extra=[{"system": "urn:ehc:mrn:h7", "value": "E-2"}])
    assert client.get(f"/fhir/Patient/{res['id']}/$everything?_count=0").status_code == 400
    client.delete(f"/fhir/Patient/{res['id']}")
    assert client.get(f"/fhir/Patient/{res['id']}/$everything").status_code == 410
