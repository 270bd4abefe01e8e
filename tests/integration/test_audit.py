"""The audit trail on a real database: an AuditEvent for every FHIR interaction, residents finding the events
about themselves, the SM3 chain under tampering, concurrent writers, dead processes, and `ehc audit verify`."""

from __future__ import annotations

import base64
import json
import re
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from app.audit import build_trail, pending
from app.audit.chain import CHAIN, EVENTS, HEAD_ID, PENDING, STATE, key, verify
from app.core.access import AccessRecord, Principal
from app.core.timeutil import utcnow
from tests.conftest import sample
from tests.sealing import seal_everything

FJ = "application/fhir+json"


def post(client, path, body):
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)


_SEEN: dict[str, set[str]] = {}


def last_event(services) -> dict[str, Any]:
    """The one event written since the previous call (the test client is sequential)."""
    seal_everything(services.extensions["audit"].sealer)
    db = services.handle.db
    seen = _SEEN.setdefault(db.name, set())
    new = [d for d in db[EVENTS].find({}) if d["_id"] not in seen]
    seen.update(d["_id"] for d in new)
    assert len(new) == 1, [d["res"]["subtype"] for d in new]
    return new[0]["res"]


def seen_all(services) -> None:
    seal_everything(services.extensions["audit"].sealer)
    _SEEN.setdefault(services.handle.db.name, set()).update(d["_id"] for d in services.handle.db[EVENTS].find({}))


def summary(ev: dict[str, Any]) -> tuple[str, str, str]:
    return ev["subtype"][0]["code"], ev["action"], ev["outcome"]


@pytest.fixture(scope="module")
def patient_id(client_module) -> str:
    return post(client_module, "Patient", sample("patient-zhang.json")).json["id"]


@pytest.fixture(scope="module")
def client_module(app):
    return app.test_client()


# -- every interaction leaves an event -------------------------------------------------------------------

def test_every_interaction_is_audited(client, services, patient_id):
    last_event(services)  # what came before
    obs = {**sample("observation-glucose.json"), "subject": {"reference": f"Patient/{patient_id}"}}
    r = post(client, "Observation", obs)
    assert r.status_code == 201
    oid = r.json["id"]
    ev = last_event(services)
    assert summary(ev) == ("create", "C", "0")
    whats = {e["what"]["reference"]: e["role"]["code"] for e in ev["entity"]}
    assert whats == {f"Patient/{patient_id}": "1", f"Observation/{oid}": "4"}

    assert client.get(f"/fhir/Observation/{oid}").status_code == 200
    assert summary(last_event(services)) == ("read", "R", "0")

    assert client.get(f"/fhir/Observation?subject=Patient/{patient_id}").status_code == 200
    ev = last_event(services)
    assert summary(ev) == ("search-type", "E", "0")
    assert f"Observation/{oid}" in [e.get("what", {}).get("reference") for e in ev["entity"]]

    obs2 = client.get(f"/fhir/Observation/{oid}").json
    last_event(services)
    obs2["status"] = "amended"
    assert client.put(f"/fhir/Observation/{oid}", data=json.dumps(obs2), content_type=FJ).status_code == 200
    assert summary(last_event(services)) == ("update", "U", "0")

    assert client.get(f"/fhir/Observation/{oid}/_history/1").status_code == 200
    assert summary(last_event(services)) == ("vread", "R", "0")

    r = client.post("/fhir/Observation/$validate", data=json.dumps(obs), content_type=FJ)
    assert r.status_code == 200
    assert summary(last_event(services)) == ("operation", "E", "0")

    assert client.delete(f"/fhir/Observation/{oid}").status_code in (200, 204)
    ev = last_event(services)
    assert summary(ev) == ("delete", "D", "0")
    assert f"Patient/{patient_id}" in [e.get("what", {}).get("reference") for e in ev["entity"]]

    r = client.get("/fhir/Observation/does-not-exist")
    assert r.status_code == 404
    ev = last_event(services)
    assert summary(ev) == ("read", "R", "4")
    assert "does-not-exist" in ev["outcomeDesc"]

    r = post(client, "Observation", {"resourceType": "Observation", "status": "final"})  # no code: invalid
    assert r.status_code == 400
    assert summary(last_event(services)) == ("create", "C", "4")


def test_refusal_403_is_audited(client, services, patient_id, monkeypatch):
    from app.core.access import Decision

    seen_all(services)
    monkeypatch.setattr(services.policy, "judges_rows", lambda *_a: True)
    monkeypatch.setattr(services.policy, "disclose",
                        lambda *_a, **_k: Decision(False, "no consent covers this client"))
    assert client.get(f"/fhir/Patient/{patient_id}").status_code == 403
    ev = last_event(services)
    assert (ev["action"], ev["outcome"]) == ("R", "4")
    assert ev["outcomeDesc"] == "no consent covers this client"


def test_events_are_read_only_and_searchable_by_the_patient(client, services, patient_id):
    unidentified = {k: v for k, v in sample("patient-zhang.json").items() if k != "identifier"}
    other = post(client, "Patient", unidentified).json["id"]
    client.get(f"/fhir/Patient/{other}")
    seen_all(services)
    client.get(f"/fhir/Patient/{patient_id}")
    read_id = last_event(services)["id"]
    r = client.get(f"/fhir/AuditEvent?patient=Patient/{patient_id}&_count=200")
    assert r.status_code == 200
    ids = [e["resource"]["id"] for e in r.json["entry"] if e["search"]["mode"] == "match"]
    assert read_id in ids
    for e in r.json["entry"]:
        if e["search"]["mode"] == "match":
            refs = [x.get("what", {}).get("reference") for x in e["resource"].get("entity", [])]
            assert f"Patient/{patient_id}" in refs
    r = client.get(f"/fhir/AuditEvent?patient={other}&action=R&outcome=0")
    assert r.json["total"] >= 1
    got = client.get(f"/fhir/AuditEvent/{ids[0]}")
    assert got.status_code == 200 and got.json["resourceType"] == "AuditEvent"
    seen_all(services)
    assert post(client, "AuditEvent", got.json).status_code == 405
    assert summary(last_event(services)) == ("create", "C", "4")  # one event: audit writes are not audited
    assert verify(services.handle.db).ok


def test_broad_search_events_name_the_patients_after_sealing(client, services, patient_id):
    obs = {**sample("observation-glucose.json"), "subject": {"reference": f"Patient/{patient_id}"}}
    oid = post(client, "Observation", obs).json["id"]
    seen_all(services)
    client.get(f"/fhir/Observation?_id={oid}")
    eid = last_event(services)["id"]
    seal_everything(services.extensions["audit"].sealer)
    ev = services.handle.db[EVENTS].find_one({"_id": eid})["res"]
    assert f"Patient/{patient_id}" in [e.get("what", {}).get("reference") for e in ev["entity"]]
    assert verify(services.handle.db).ok


# -- the chain on its own database ---------------------------------------------------------------------

@pytest.fixture()
def fresh(mongo_server, settings):
    """Services on a database of their own, so that tampering stays there."""
    from app.services import build_services

    uri = mongo_server.rstrip("/") + "/t_audit_" + uuid.uuid4().hex[:8]
    svc = build_services(settings.with_overrides(mongodb_uri=uri))
    yield svc
    svc.handle.client.drop_database(svc.handle.db.name)
    svc.handle.close()


def fill(svc, n: int, **sealer: float):
    writer, sealer_ = build_trail(svc, **sealer)
    ids = [writer.write(AccessRecord("read", "Patient", [f"p{i}"], principal=Principal(client_id="c")))
           for i in range(n)]
    sealer_.seal()
    return writer, sealer_, ids


def sealed_id(db, n: int) -> str:
    return db[CHAIN].find_one({"_id": key(n)})["ev"]


def test_tampering_is_named(fresh):
    db = fresh.handle.db
    fill(fresh, 6)
    assert verify(db).ok and verify(db).sealed == 6
    db[EVENTS].update_one({"_id": sealed_id(db, 3)}, {"$set": {"res.outcome": "8"}})
    first = verify(db).first
    assert (first.seq, first.event_id, first.kind) == (3, sealed_id(db, 3), "edited")


def test_removal_is_named(fresh):
    db = fresh.handle.db
    fill(fresh, 5)
    db[EVENTS].delete_one({"_id": sealed_id(db, 4)})
    first = verify(db).first
    assert (first.seq, first.kind) == (4, "removed")
    db[CHAIN].delete_one({"_id": key(4)})
    first = verify(db).first
    assert (first.seq, first.kind) == (4, "removed")


def test_swap_is_named(fresh):
    db = fresh.handle.db
    fill(fresh, 5)
    a, b = db[EVENTS].find_one({"_id": sealed_id(db, 2)}), db[EVENTS].find_one({"_id": sealed_id(db, 3)})
    db[EVENTS].replace_one({"_id": a["_id"]}, {**b, "_id": a["_id"]})
    db[EVENTS].replace_one({"_id": b["_id"]}, {**a, "_id": b["_id"]})
    report = verify(db)
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "reordered"), (3, "reordered")]


def test_concurrent_writers_and_sealers_keep_one_chain(fresh):
    writer, sealer = build_trail(fresh)
    errors: list[BaseException] = []
    written: list[str] = []

    def work(t: int) -> None:
        try:
            for i in range(15):
                written.append(writer.write(AccessRecord("read", "Patient", [f"t{t}-{i}"])))
                if i % 5 == 0:
                    sealer.seal()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    sealer.seal()
    report = verify(fresh.handle.db)
    assert report.ok and report.sealed == 90 and report.pending == 0
    chained = [e["ev"] for e in fresh.handle.db[CHAIN].find({})]
    assert sorted(chained) == sorted(written) and len(set(written)) == 90
    assert fresh.handle.db[PENDING].count_documents({}) == 0


def test_intent_of_a_dead_write_is_recovered_at_start_up(fresh, settings):
    from app import create_app

    writer, _sealer, _ = fill(fresh, 2)
    eid = writer.reserve("PUT", "Patient/p1", None, "10.1.1.1", Principal(client_id="his", user="Practitioner/d"))
    # the process died after the operation, before its event (its spool shipped); it is two minutes later now
    writer.settle()
    col = fresh.handle.db[PENDING]
    [batch] = [b for b in col.find({}) if any(r["_id"] == eid for r in b["recs"])]
    for record in batch["recs"]:
        record["at"] = utcnow() - timedelta(minutes=2)
    col.replace_one({"_id": batch["_id"]}, batch)
    create_app(settings, services=fresh)
    ev = fresh.handle.db[EVENTS].find_one({"_id": eid})["res"]
    assert (ev["action"], ev["outcome"], ev["subtype"][0]["code"]) == ("U", "8", "update")
    assert "stopped" in ev["outcomeDesc"]
    assert ev["agent"][0]["who"]["identifier"]["value"] == "his"
    assert pending.find(fresh.handle.db[PENDING], eid) is None
    assert sealed_id(fresh.handle.db, 3) == eid
    assert verify(fresh.handle.db).ok


def test_running_write_does_not_hold_the_others(fresh):
    writer, sealer, _ = fill(fresh, 1)
    iid = writer.reserve("POST", "Patient", None, None)  # a write in flight
    writer.write(AccessRecord("read", "Patient", ["x"]))
    r = sealer.seal()
    assert (r.sealed, r.head, r.waiting) == (1, 2, 1)
    eid = writer.write(AccessRecord("create", "Patient", ["new"]), intent_id=iid)
    r = sealer.seal()
    assert (r.sealed, r.head, r.waiting, r.recovered) == (1, 3, 0, 0)
    assert sealed_id(fresh.handle.db, 3) == eid
    assert fresh.handle.db[PENDING].count_documents({}) == 0
    assert verify(fresh.handle.db).ok


def test_late_event_after_recovery_is_kept_too(fresh):
    writer, sealer, _ = fill(fresh, 1, intent_grace=0.0)
    iid = writer.reserve("DELETE", "Patient/p9", None, None)
    assert sealer.seal().recovered == 1
    late = writer.write(AccessRecord("delete", "Patient", ["p9"]), intent_id=iid)
    assert late != iid  # the recovered event stays; the real one is added
    sealer.seal()
    report = verify(fresh.handle.db)
    assert report.ok and report.sealed == 3


def test_protected_numbers_never_reach_the_trail_in_clear(fresh):
    writer, sealer = build_trail(fresh)
    writer.write(AccessRecord("search", "Patient", [], query="identifier=urn:oid:2.16.156.10011.1.3|11010519491231002X"
                              "&phone=13912345678", description="13912345678 is not a valid number"))
    sealer.seal()
    dump = json.dumps(list(fresh.handle.db[EVENTS].find({}, {"_id": 0, "ts": 0})), default=str)
    assert "11010519491231002X" not in dump and "13912345678" not in dump
    assert "2.16.156.10011.1.3" in dump  # the system stays readable


def test_formatted_phone_and_id_numbers_never_reach_the_trail_in_clear(fresh):
    """Finding 27: numbers written with dashes, spaces, +86 or a lower-case x are blinded, normalised."""
    writer, sealer = build_trail(fresh)
    query = ("name=139-1234-5678&_content=%2B86%20139%201234%205678&address=110105-19491231-002x"
             "&identifier=urn:ehc:mrn:org-1|138 0013 8000&phone=%2B86-139-1234-5678")
    writer.write(AccessRecord("search", "Patient", [], query=query,
                              description="no resident with 110105 19491231 002X or +86 (139) 1234-5678"))
    iid = writer.reserve("POST", "Patient", "telecom=phone|139.1234.5678", None)
    writer.write(AccessRecord("create", "Patient", ["p1"]), intent_id=iid)
    sealer.seal()
    dump = json.dumps(list(fresh.handle.db[EVENTS].find({}, {"_id": 0, "ts": 0})), default=str, ensure_ascii=False)
    for res in fresh.handle.db[EVENTS].find({}):
        for e in res["res"].get("entity", []):
            if e.get("query"):
                dump += base64.b64decode(e["query"]).decode()
    digits = re.sub(r"\D", "", re.sub(r"#[0-9a-f]{64}", "", dump))  # all digits left once blind indexes go
    for number in ("13912345678", "11010519491231002", "13800138000"):
        assert number not in digits
    blind = fresh.repo.protector.blind
    assert blind("13912345678") in dump and blind("11010519491231002X") in dump  # normalised: searchable


@pytest.mark.parametrize("layout", ["batch", "record alone"])
def test_interrupted_seal_is_completed(fresh, layout):
    db = fresh.handle.db
    writer, sealer, _ = fill(fresh, 2)
    writer.write(AccessRecord("read", "Patient", ["z"]))
    sealer.seal()
    # as if the pass died after appending its entry: head and pending record left behind
    db[STATE].update_one({"_id": HEAD_ID}, {"$set": {"seq": 2, "h": db[CHAIN].find_one({"_id": key(2)})["h"]}})
    record = {"_id": sealed_id(db, 3), "at": utcnow(), "kind": "event", "res": {"resourceType": "AuditEvent"}}
    if layout == "batch":  # in the batch the entry names, beside a record still waiting
        waiting = {"_id": "ffffffff-0000-7000-8000-000000000000", "at": utcnow(), "kind": "intent"}
        db[PENDING].insert_one({"_id": db[CHAIN].find_one({"_id": key(3)})["bat"][0], "recs": [record, waiting]})
    else:  # stored alone, chained by an earlier version (its entry names no batch)
        db[CHAIN].update_one({"_id": key(3)}, {"$unset": {"bat": ""}})
        db[PENDING].insert_one(record)
    assert sealer.seal().head == 3
    if layout == "batch":
        assert [r["_id"] for r in db[PENDING].find_one({})["recs"]] == [waiting["_id"]]
        db[PENDING].delete_many({})
    assert db[PENDING].count_documents({}) == 0
    assert verify(db).ok and verify(db).sealed == 3


# -- ehc audit verify ---------------------------------------------------------------------------------

def test_cli_verify_exit_codes(fresh):
    from app.cli import main

    fill(fresh, 4)
    env = {"EHC_MONGODB_URI": fresh.settings.mongodb_uri, "EHC_PROVINCE": "11"}
    r = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["sealed"] == 4
    bad = sealed_id(fresh.handle.db, 2)
    fresh.handle.db[EVENTS].update_one({"_id": bad}, {"$set": {"res.action": "D"}})
    r = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert r.exit_code == 1
    assert json.loads(r.stdout)["first_bad"].startswith(f"event 2 (AuditEvent/{bad}): edited")
