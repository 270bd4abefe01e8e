"""The audit trail attacked (third review, 2026-12-01): what a resident sees of who read their records, what the
resident's own view of events lets slip, and what a client can make an event say. Each test names the finding it
reproduces; each failed before its fix."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from app.auth.models import Token, digest, now
from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403 - the svc and web fixtures
from tests.integration.auth_helpers import VICTIM_ID_NUMBER, bearer, observation, victim_world
from tests.sealing import seal_everything


def tok(svc: Any, scope: str, province: str = "11", organization: str | None = None, patient: str | None = None,
        break_glass: bool = False) -> tuple[str, str]:
    """A stored access token of a client of its own (so its events can be told apart): (token, client id)."""
    value, cid = uuid.uuid4().hex + uuid.uuid4().hex, f"c-{uuid.uuid4().hex[:10]}"
    auth_state(svc).store.save(Token(token_hash=digest(value), kind="access", client_id=cid, scope=scope,
                                     patient=patient, province=province, organization=organization,
                                     break_glass=break_glass, issued_at=now(), expires_at=now() + 600), insert=True)
    return value, cid


def trail(web: Any, svc: Any, pid: str, token: str) -> list[dict[str, Any]]:
    """The resident's own view ("who read my records")."""
    seal_everything(svc.extensions["audit"].sealer)
    r = web.get(f"/fhir/AuditEvent?patient=Patient/{pid}&_count=500", headers=bearer(token))
    assert r.status_code == 200, r.get_data(as_text=True)
    return [e["resource"] for e in r.get_json().get("entry", []) if e["search"]["mode"] == "match"]


def of_client(events: list[dict[str, Any]], cid: str) -> list[dict[str, Any]]:
    return [e for e in events if any((a.get("who") or {}).get("identifier", {}).get("value") == cid
                                     for a in e.get("agent", []))]


def stored_events(svc: Any, cid: str) -> list[dict[str, Any]]:
    """Every sealed event of a client, as stored (not as anyone's view)."""
    seal_everything(svc.extensions["audit"].sealer)
    return of_client([d.get("res") or {} for d in svc.handle.db["AuditEvent"].find({})], cid)


@pytest.fixture(scope="module")
def data(svc: Any) -> dict[str, Any]:
    w: dict[str, Any] = victim_world(svc)
    w["obs"] = [observation(svc, w["victim"]) for _ in range(3)]
    w["mine"] = observation(svc, w["me"])
    w["victimtok"] = tok(svc, "patient/*.rs", patient=w["victim"])[0]
    w["mytok"] = tok(svc, "patient/*.rs", patient=w["me"])[0]
    return w


# -- searches about a resident that never reached the resident's trail ---------------------------------------

ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"
SEARCHES = {  # (province of the searching hospital, the search)
    "compartment, all withheld": ("31", "Patient/{victim}/Observation"),
    "compartment, nothing found": ("11", "Patient/{victim}/Condition"),
    "subject by bare id, withheld": ("31", "Observation?subject={victim}"),
    "ID number, withheld": ("31", f"Patient?identifier={ID_SYSTEM}|{VICTIM_ID_NUMBER}"),
    "chain to the ID number, withheld": ("31", f"Observation?patient.identifier={ID_SYSTEM}|{VICTIM_ID_NUMBER}"),
    "_summary=count over a record": ("11", "Observation?_id={obs}&code=2345-7&_summary=count"),
    "_count=0 over a record": ("11", "Observation?_id={obs}&code=2345-7&_count=0"),
}


@pytest.mark.parametrize("case", list(SEARCHES))
def test_a_search_about_a_resident_is_in_their_trail(web: Any, svc: Any, data: dict[str, Any], case: str) -> None:
    """The event named a patient only from `patient=`, `subject=Patient/...` or `_id` in the query, or from the
    records the answer disclosed: a search whose rows were all withheld (another province, no consent), or only
    counted, or that found nothing in a compartment, was in no resident's trail, so the resident could not see
    that province 31 had looked for their records, or that a count had answered a question about one."""
    province, search = SEARCHES[case]
    org = data["org31"] if province == "31" else data["org11"]
    t, c = tok(svc, "system/*.cruds", province, org)
    r = web.get("/fhir/" + search.format(victim=data["victim"], obs=data["obs"][0]), headers=bearer(t))
    assert r.status_code == 200, r.get_json()
    assert of_client(trail(web, svc, data["victim"], data["victimtok"]), c), case
    assert not of_client(trail(web, svc, data["me"], data["mytok"]), c), "and in nobody else's"


# -- what a client can make an event say ---------------------------------------------------------------------


def test_a_stated_purpose_of_use_is_a_code_and_etreat_is_for_break_the_glass_clients(web: Any, svc: Any,
                                                                                     data: dict[str, Any]) -> None:
    """X-Purpose-Of-Use was recorded verbatim (2,000 characters of anything), and ETREAT from a client not registered
    for break-the-glass was recorded as an emergency access nobody reviews."""
    t, c = tok(svc, "system/*.cruds", "11", data["org11"])
    junk = web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(t, **{"X-Purpose-Of-Use": "X" * 2000}))
    assert junk.status_code == 400, junk.get_json()
    assert junk.get_json()["issue"][0]["expression"] == ["X-Purpose-Of-Use"]
    emergency = web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(t, **{"X-Purpose-Of-Use": "ETREAT"}))
    assert emergency.status_code == 403, emergency.get_json()
    assert "break-the-glass" in emergency.get_json()["issue"][0]["diagnostics"]
    stated = web.get(f"/fhir/Patient/{data['victim']}", headers=bearer(t, **{"X-Purpose-Of-Use": "HPAYMT"}))
    assert stated.status_code == 200
    codes = [[cd["code"] for p in e.get("purposeOfEvent", []) for cd in p["coding"]] for e in stored_events(svc, c)]
    assert ["HPAYMT"] in codes and not any("ETREAT" in x or "X" * 50 in json.dumps(x) for x in codes), codes


def test_the_token_endpoint_takes_a_purpose_of_use_code_only(web: Any) -> None:
    r = web.post("/oauth/token", data={"grant_type": "client_credentials", "purpose_of_use": "<script>"})
    assert r.status_code == 400 and r.get_json()["error"] == "invalid_request", r.get_json()


# -- what the resident's own view of events lets slip --------------------------------------------------------


def test_elements_does_not_bypass_the_residents_view_of_events(web: Any, svc: Any, data: dict[str, Any]) -> None:
    """The victim's app tries to read my Observation (403), and the refusal's text names Patient/<victim>. My view
    hid it, but decided who the others were from the entities, which `_elements=outcomeDesc` had removed."""
    me, victim = data["me"], data["victim"]
    assert web.get(f"/fhir/Observation/{data['mine']}", headers=bearer(data["victimtok"])).status_code == 403
    trail(web, svc, me, data["mytok"])  # sealed
    for extra in ("", "&_elements=outcomeDesc", "&_elements=outcomeDesc,entity"):
        r = web.get(f"/fhir/AuditEvent?patient={me}&_count=500{extra}", headers=bearer(data["mytok"]))
        assert r.status_code == 200 and victim not in r.get_data(as_text=True), extra


def test_a_long_query_naming_another_patient_is_not_shown_to_the_resident(web: Any, svc: Any,
                                                                          data: dict[str, Any]) -> None:
    """The query was dropped when its description (cut at 1,000 characters) named another patient; the base64
    `query` beside it holds the whole query."""
    me, victim = data["me"], data["victim"]
    t, c = tok(svc, "system/*.cruds", "11", data["org11"])
    pad = "&_elements=" + ",".join(["status"] * 300)
    assert web.get(f"/fhir/Observation?code=2345-7{pad}&patient={me},{victim}", headers=bearer(t)).status_code == 200
    (event,) = of_client(trail(web, svc, me, data["mytok"]), c)
    assert victim not in json.dumps(event)
    assert all("query" not in e for e in event["entity"])


def test_a_resident_cannot_tell_which_of_their_events_also_concerned_someone_else(web: Any, svc: Any,
                                                                                  data: dict[str, Any]) -> None:
    """`AuditEvent?patient=<another>` (or `entity=<another's record>`) with a resident's token was ANDed with their
    own compartment, and matched the parts of each event their view hides: it answered exactly which events
    concerned both. It now answers as for an id nobody has; the resident's own records still match."""
    me, victim = data["me"], data["victim"]
    t, c = tok(svc, "system/*.cruds", "11", data["org11"])
    assert web.get(f"/fhir/Observation?patient={me},{victim}", headers=bearer(t)).status_code == 200
    assert web.get(f"/fhir/Observation/{data['mine']}", headers=bearer(t)).status_code == 200  # mine alone
    trail(web, svc, me, data["mytok"])  # sealed

    def total(query: str) -> int:
        r = web.get(f"/fhir/AuditEvent?{query}&_summary=count", headers=bearer(data["mytok"]))
        assert r.status_code == 200, r.get_json()
        return int(r.get_json()["total"])

    nobody = str(uuid.uuid4())
    assert total(f"patient={victim}") == total(f"patient={nobody}") == 0
    assert total(f"entity=Observation/{data['obs'][0]}") == total(f"entity=Observation/{nobody}") == 0
    assert total(f"entity=Observation/{data['mine']}") >= 1  # who read my own record (alone): still found
    r = web.get(f"/fhir/AuditEvent?patient={victim}", headers=bearer(data["mytok"]))
    assert not [e for e in r.get_json().get("entry", []) if e["search"]["mode"] == "match"]


def test_each_entry_of_a_batch_is_recorded_as_what_it_attempted_and_names_only_its_patients(
        web: Any, svc: Any, data: dict[str, Any]) -> None:
    """The patients the request's storage events named added up over a batch's entries, so the event of the second
    entry named the first entry's patient too (a read the resident never had); and a refused GET entry was
    recorded as the outer request was, a `transaction` (action E), not as the read it attempted."""
    t, c = tok(svc, "system/*.cruds", "11", data["org11"])
    read, refused = data["obs"][0], data["obs"][2]
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": f"Patient/{data['me']}"}},
        {"request": {"method": "GET", "url": f"Observation/{read}"}}]}
    r = web.post("/fhir", data=json.dumps(bundle), content_type="application/fhir+json", headers=bearer(t))
    assert r.status_code == 200, r.get_json()
    (event,) = [e for e in stored_events(svc, c)
                if any(x.get("what", {}).get("reference") == f"Observation/{read}" for x in e.get("entity", []))]
    named = {x["what"]["reference"] for x in event["entity"] if x.get("role", {}).get("code") == "1"}
    assert named == {f"Patient/{data['victim']}"}, named
    t31, c31 = tok(svc, "system/*.cruds", "31", data["org31"])
    bundle = {"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET",
                                                                                "url": f"Observation/{refused}"}}]}
    r = web.post("/fhir", data=json.dumps(bundle), content_type="application/fhir+json", headers=bearer(t31))
    assert r.get_json()["entry"][0]["response"]["status"].startswith("403")
    (event,) = of_client(trail(web, svc, data["victim"], data["victimtok"]), c31)
    assert (event["subtype"][0]["code"], event["action"], event["outcome"]) == ("read", "R", "4"), event


def test_an_unauthenticated_attempt_on_a_record_is_in_its_patients_trail(web: Any, svc: Any,
                                                                          data: dict[str, Any]) -> None:
    """A 401 on `GET Observation/<the victim's>` was recorded naming no record, so its patient never saw it."""
    bogus = "bogus-" + uuid.uuid4().hex
    r = web.get(f"/fhir/Observation/{data['obs'][2]}?probe={bogus}", headers=bearer(bogus))
    assert r.status_code == 401
    seen = [e for e in trail(web, svc, data["victim"], data["victimtok"]) if bogus in json.dumps(e)
            or any(bogus in str(x.get("description")) for x in e.get("entity", []))]
    assert seen and all(e["outcome"] == "4" for e in seen), "the attempt is not in the victim's trail"


def test_a_forged_code_of_a_residents_card_is_in_their_trail(web: Any, svc: Any, data: dict[str, Any]) -> None:
    """The answer to a forged code names the card (ehcId); the event named no patient."""
    home, _ = tok(svc, "system/*.cruds", "11", data["org11"])
    params = {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "dynamic"}]}
    r = web.post(f"/fhir/Patient/{data['victim']}/$ehc-qrcode", data=json.dumps(params),
                 content_type="application/fhir+json", headers=bearer(home))
    assert r.status_code == 200, r.get_json()
    token = next(p["valueString"] for p in r.get_json()["parameter"] if p["name"] == "token")
    head, signature = token.rsplit(":", 1)
    forged = head + ":" + ("A" if signature[0] != "A" else "B") + signature[1:]
    terminal, c = tok(svc, "system/Patient.rs", "11", data["org11"])
    r = web.post("/fhir/$ehc-verify", content_type="application/fhir+json", headers=bearer(terminal),
                 data=json.dumps({"resourceType": "Parameters", "parameter": [{"name": "token",
                                                                               "valueString": forged}]}))
    assert "bad-signature" in r.get_data(as_text=True)
    (event,) = of_client(trail(web, svc, data["victim"], data["victimtok"]), c)
    assert event["outcome"] == "4"


def test_an_event_says_which_province_the_reader_is_of(web: Any, svc: Any, data: dict[str, Any]) -> None:
    """A province-31 client without an organization read under a Consent given to province 31: its event named the
    client id only, so the resident could not tell from where the record was read."""
    from tests.integration.auth_helpers import consent

    consent(svc, data["victim"], {"identifier": {"system": "urn:ehc:province", "value": "31"}})
    t, c = tok(svc, "system/*.rs", "31", None)
    r = web.get(f"/fhir/Observation/{data['obs'][1]}", headers=bearer(t))
    assert r.status_code == 200, r.get_json()
    (event,) = of_client(trail(web, svc, data["victim"], data["victimtok"]), c)
    assert {"system": "urn:ehc:province", "value": "31"} in [a["who"].get("identifier") for a in event["agent"]]
