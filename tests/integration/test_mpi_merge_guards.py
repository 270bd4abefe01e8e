"""What only Patient/$merge may do, and a merge done whole or not at all.

Links of type replaced-by / replaces record a Patient/$merge, and the master index follows them: an ID number of
the merged source leads to the target. A client wrote them as it liked, a merge that skipped every rule of $merge
(both records one resident, lifelong documents agreeing), so that one person's ID number led to another, and a
foreign province could block a resident's registration at home. Only $merge writes them now."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.integration.auth_helpers import *  # noqa: F403 - the svc and web fixtures
from tests.integration.auth_helpers import FJ, bearer, create, observation, stored_token, victim_world
from tests.integration.test_mpi_registration import ID_SYS, id_number


@pytest.fixture(scope="module")
def world(svc: Any) -> dict[str, Any]:
    return victim_world(svc)


def _post(web: Any, body: dict[str, Any], token: str) -> Any:
    return web.post("/fhir/Patient", data=json.dumps(body), content_type=FJ, headers=bearer(token))


def _pix_target(web: Any, number: str, token: str) -> str | None:
    r = web.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={ID_SYS}|{number}", headers=bearer(token))
    if r.status_code != 200:
        return None
    return next((p["valueReference"]["reference"] for p in r.get_json()["parameter"] if p["name"] == "targetId"), None)


def _linked(other: str) -> list[dict[str, Any]]:
    return [{"other": {"reference": f"Patient/{other}"}, "type": "replaced-by"}]


def test_a_client_cannot_write_a_merge_link(web: Any, svc: Any, world: dict[str, Any]) -> None:
    home = stored_token(svc, "system/*.cruds", province="11", organization=world["org11"])
    number = id_number("110101", "1991-01-01", 53)
    r = _post(web, {"resourceType": "Patient", "name": [{"text": "乙某"}], "birthDate": "1991-01-01",
                    "identifier": [{"system": ID_SYS, "value": number}], "link": _linked(world["victim"])}, home)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["issue"][0]["expression"] == ["Patient.link[0]"]
    assert _pix_target(web, number, home) is None  # nothing was registered
    mine = _post(web, {"resourceType": "Patient", "name": [{"text": "乙某"}], "birthDate": "1991-01-01",
                       "identifier": [{"system": ID_SYS, "value": number}]}, home).get_json()
    for kind in ("replaced-by", "replaces"):
        body = {**mine, "link": [{"other": {"reference": f"Patient/{world['victim']}"}, "type": kind}]}
        r = web.put(f"/fhir/Patient/{mine['id']}", data=json.dumps(body), content_type=FJ, headers=bearer(home))
        assert r.status_code == 422, (kind, r.get_json())
    assert _pix_target(web, number, home) == f"Patient/{mine['id']}"
    seealso = {**mine, "link": [{"other": {"reference": f"Patient/{world['victim']}"}, "type": "seealso"}]}
    r = web.put(f"/fhir/Patient/{mine['id']}", data=json.dumps(seealso), content_type=FJ, headers=bearer(home))
    assert r.status_code == 200, r.get_json()  # other link types are the client's


def test_a_foreign_province_cannot_take_an_id_number_to_another_resident(web: Any, svc: Any,
                                                                          world: dict[str, Any]) -> None:
    """Province 31 registered an unknown ID number as 'replaced by' a province-11 resident: the number then led to
    that resident, and its true holder's registration at home was refused (409) as contradicting them."""
    p31 = stored_token(svc, "system/*.cruds", province="31", organization=world["org31"])
    home = stored_token(svc, "system/*.cruds", province="11", organization=world["org11"])
    number = id_number("110101", "1994-02-02", 61)
    r = _post(web, {"resourceType": "Patient", "name": [{"text": "冒名"}], "identifier": [{"system": ID_SYS,
                    "value": number}], "link": _linked(world["victim"])}, p31)
    assert r.status_code == 422, r.get_json()
    holder = _post(web, {"resourceType": "Patient", "name": [{"text": "真主"}],
                         "identifier": [{"system": ID_SYS, "value": number}]}, home)
    assert holder.status_code == 201, holder.get_json()
    assert holder.get_json()["id"] != world["victim"]


def test_a_resident_cannot_link_their_record_to_another_resident(web: Any, svc: Any, world: dict[str, Any]) -> None:
    tok = stored_token(svc, "patient/*.cruds", patient=world["me"])
    me = web.get(f"/fhir/Patient/{world['me']}", headers=bearer(tok)).get_json()
    r = web.put(f"/fhir/Patient/{world['me']}", data=json.dumps({**me, "link": _linked(world["victim"])}),
                content_type=FJ, headers=bearer(tok))
    assert r.status_code in (403, 422), r.get_json()


def test_a_merge_that_may_not_re_point_a_record_writes_nothing(web: Any, svc: Any, world: dict[str, Any]) -> None:
    """A record of another province names the duplicate, and the merging hospital may not rewrite it: the merge
    answered 403 after the target was updated and the source retired (a retry then said "already merged"), with
    some of the records re-pointed. Every re-pointing is judged before anything is written."""
    home = stored_token(svc, "system/*.cruds", province="11", organization=world["org11"])
    src = create(svc, {"resourceType": "Patient", "name": [{"text": "重复者"}], "gender": "male",
                       "identifier": [{"system": f"urn:ehc:mrn:{world['org11']}", "value": "DUP-1"}]})
    tgt = create(svc, {"resourceType": "Patient", "name": [{"text": "重复者"}], "gender": "male",
                       "birthDate": "1960-01-01"})
    mine = observation(svc, src, province="11")
    observation(svc, src, province="31")  # written by a province-31 hospital
    before = {pid: svc.repo.get_doc("Patient", pid)["vid"] for pid in (src, tgt)}
    r = web.post("/fhir/Patient/$merge", content_type=FJ, headers=bearer(home), data=json.dumps({
        "resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": {"reference": f"Patient/{src}"}},
            {"name": "target-patient", "valueReference": {"reference": f"Patient/{tgt}"}}]}))
    assert r.status_code == 403, r.get_json()
    assert "nothing was merged" in r.get_json()["issue"][0]["diagnostics"]
    assert {pid: svc.repo.get_doc("Patient", pid)["vid"] for pid in (src, tgt)} == before
    assert svc.repo.get_doc("Observation", mine)["res"]["subject"]["reference"] == f"Patient/{src}"
