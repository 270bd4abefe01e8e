"""The audit trail without a database: AuditEvent shape (IHE BALP), canonical JSON, SM3 links, and the
verification walk over an in-memory copy of the three collections."""

from __future__ import annotations

import base64
import copy
import hashlib
from datetime import datetime
from typing import Any

import pytest

from app.audit.chain import CHAIN, EVENTS, GENESIS, HEAD_ID, PENDING, STATE, canonical, digest, key, link, verify
from app.audit.events import (
    Node,
    add_patients,
    build_audit_event,
    interaction_for,
    outcome_for,
    patient_refs,
    query_patients,
    unresolved_refs,
)
from app.core.access import AccessRecord, Principal
from app.fhir.validation import Validator
from app.services import PROFILES_DIR

NODE = Node("11", "https://ehc.example.cn/fhir")
WHEN = datetime(2024, 5, 6, 7, 8, 9, 123000)


def event(record: AccessRecord, **kw: Any) -> dict[str, Any]:
    return build_audit_event(record, event_id="ev-7", recorded=WHEN, node=NODE, **kw)


def entity_roles(ev: dict[str, Any]) -> dict[str, str]:
    return {e["what"]["reference"]: e["role"]["code"] for e in ev.get("entity", []) if "what" in e}


# -- the AuditEvent --------------------------------------------------------------------------------------

def test_read_by_practitioner_is_balp_shaped_and_valid_r4():
    who = Principal(client_id="his-01", user="Practitioner/doc1", organization="org-9", province="31",
                    token_id="tok-1")
    rec = AccessRecord("read", "Observation", ["obs1"], "0", 200, who, consent="Consent/c1",
                       patient_ids=["p1"], remote_addr="10.0.0.8")
    ev = event(rec)
    assert Validator(PROFILES_DIR).issues(ev, "AuditEvent") == []
    assert ev["type"]["code"] == "rest"
    assert ev["subtype"] == [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}]
    assert ev["action"] == "R" and ev["outcome"] == "0" and "outcomeDesc" not in ev
    assert ev["recorded"] == "2024-05-06T07:08:09.123Z"
    assert ev["id"] == "ev-7"
    client, user, org, province, server = ev["agent"]
    assert client["who"]["identifier"] == {"system": "urn:ehc:client", "value": "his-01"}
    assert client["network"] == {"address": "10.0.0.8", "type": "2"}
    assert client["requestor"] is False and user["requestor"] is True
    assert user["who"] == {"reference": "Practitioner/doc1"} and user["policy"] == ["tok-1"]
    assert user["purposeOfUse"][0]["coding"][0]["code"] == "TREAT"
    assert org["who"]["identifier"]["value"] == "org-9"
    assert province["who"]["identifier"] == {"system": "urn:ehc:province", "value": "31"}
    assert server["who"]["identifier"]["value"] == "11"
    assert ev["source"]["site"] == "11"
    assert entity_roles(ev) == {"Patient/p1": "1", "Observation/obs1": "4", "Consent/c1": "13"}


def test_search_carries_the_query_in_base64_the_patient_and_withheld_count():
    rec = AccessRecord("search", "Observation", ["o1", "o2"], query="subject=Patient%2Fp9&code=1234-5",
                       withheld=3, principal=Principal(client_id="app", break_glass=True))
    ev = event(rec)
    assert ev["action"] == "E" and ev["subtype"][0]["code"] == "search-type"
    assert ev["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert ev["agent"][0]["requestor"] is True  # no user: the client is the requestor
    query = next(e for e in ev["entity"] if e["role"]["code"] == "24")
    assert base64.b64decode(query["query"]).decode() == "subject=Patient%2Fp9&code=1234-5"
    assert query["detail"] == [{"type": "withheld", "valueString": "3"}]
    assert entity_roles(ev) == {"Patient/p9": "1", "Observation/o1": "4", "Observation/o2": "4"}
    assert unresolved_refs(ev) == []
    assert Validator(PROFILES_DIR).issues(ev, "AuditEvent") == []


@pytest.mark.parametrize("interaction,code,action", [
    ("create", "create", "C"), ("update", "update", "U"), ("patch", "patch", "U"), ("delete", "delete", "D"),
    ("vread", "vread", "R"), ("history", "history", "R"), ("transaction", "transaction", "E"),
    ("operation", "operation", "E"),
])
def test_actions(interaction, code, action):
    ev = event(AccessRecord(interaction, "Patient", ["p1"]))
    assert (ev["subtype"][0]["code"], ev["action"]) == (code, action)
    assert entity_roles(ev) == {"Patient/p1": "1"}


def test_refusal_names_the_attempted_interaction():
    rec = AccessRecord("refused", "Observation", [], "4", 403, Principal(client_id="x", province="44"),
                       description="no consent covers this client")
    ev = event(rec, method="DELETE", path="Observation/o1")
    assert ev["action"] == "D" and ev["outcome"] == "4" and ev["subtype"][0]["code"] == "delete"
    assert ev["outcomeDesc"] == "no consent covers this client"


def test_interaction_and_outcome_from_http():
    assert interaction_for("GET", "Patient/1") == "read"
    assert interaction_for("GET", "Patient") == "search-type"
    assert interaction_for("POST", "Patient/_search") == "search-type"
    assert interaction_for("GET", "Patient/1/_history/2") == "vread"
    assert interaction_for("GET", "Patient/1/_history") == "history"
    assert interaction_for("POST", "Patient/$validate") == "operation"
    assert interaction_for("POST", "") == "transaction"
    assert interaction_for("PUT", "Patient/1") == "update"
    assert [outcome_for(s) for s in (200, 304, 404, 422, 500)] == ["0", "0", "4", "4", "8"]


def test_patients_from_resources_and_queries():
    assert patient_refs("Observation", {"subject": {"reference": "Patient/a"},
                                        "performer": [{"reference": "Practitioner/x"}]}) == {"Patient/a"}
    assert patient_refs("Patient", None, "z") == {"Patient/z"}
    assert query_patients("Observation", "patient=p1,Patient/p2&code=x") == {"Patient/p1", "Patient/p2"}
    assert query_patients("Observation", "subject=http://h/fhir/Patient/p3") == {"Patient/p3"}
    assert query_patients("Observation", "subject=Group/g") == set()
    assert query_patients("Patient", "_id=p4") == {"Patient/p4"}


def test_broad_search_is_resolved_later():
    ev = event(AccessRecord("search", "Observation", ["o1"], query="code=x"))
    assert unresolved_refs(ev) == ["Observation/o1"]
    after = add_patients(ev, ["Patient/q"])
    assert entity_roles(after) == {"Patient/q": "1", "Observation/o1": "4"}
    assert "Patient/q" not in entity_roles(ev)  # the original is untouched


# -- hashing ---------------------------------------------------------------------------------------------

def test_canonical_json_is_sorted_compact_utf8():
    doc = {"_id": "x", "res": {"b": "张", "a": 1}, "vid": 1, "del": False, "prov": "11", "ix": {"q": 1}}
    assert canonical(doc) == '{"del":false,"prov":"11","res":{"a":1,"b":"张"},"vid":1}'.encode()
    assert canonical({**doc, "ix": {"other": 2}, "ts": WHEN}) == canonical(doc)  # derived fields not hashed


def test_sm3_link_vector():
    # GB/T 32905 appendix A: SM3("abc")
    abc = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert link(b"a", b"bc").hex() == abc
    assert hashlib.new("sm3", GENESIS + digest({"vid": 1})).digest() == link(GENESIS, digest({"vid": 1}))


# -- verification over an in-memory database ------------------------------------------------------------

class FakeCollection:
    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}

    def find(self, _flt: dict[str, Any], _proj: Any = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(d) for d in self.docs.values()]

    def find_one(self, flt: dict[str, Any]) -> dict[str, Any] | None:
        d = self.docs.get(flt["_id"])
        return copy.deepcopy(d) if d else None


def eid(seq: int) -> str:
    return f"ev-{seq}"


def sealed_db(n: int) -> dict[str, FakeCollection]:
    db = {EVENTS: FakeCollection(), CHAIN: FakeCollection(), STATE: FakeCollection(), PENDING: FakeCollection()}
    prev = GENESIS
    for seq in range(1, n + 1):
        doc = {"_id": eid(seq), "vid": 1, "del": False, "prov": "11",
               "res": {"resourceType": "AuditEvent", "id": eid(seq), "action": "R", "outcome": "0"}}
        db[EVENTS].docs[eid(seq)] = doc
        d = digest(doc)
        prev = link(prev, d)
        db[CHAIN].docs[key(seq)] = {"_id": key(seq), "seq": seq, "ev": eid(seq), "d": d.hex(), "h": prev.hex()}
    db[STATE].docs[HEAD_ID] = {"_id": HEAD_ID, "seq": n, "h": prev.hex()}
    return db


def test_intact_chain_verifies():
    db = sealed_db(5)
    report = verify(db)
    assert report.ok and report.sealed == 5 and report.head == db[STATE].docs[HEAD_ID]["h"]


def test_edit_is_named():
    db = sealed_db(5)
    db[EVENTS].docs[eid(3)]["res"]["outcome"] = "4"
    report = verify(db)
    assert not report.ok
    assert (report.first.seq, report.first.kind) == (3, "edited")
    assert len(report.problems) == 1  # the walk resynchronises: later events are not blamed


def test_removal_is_named():
    db = sealed_db(5)
    del db[EVENTS].docs[eid(2)]
    assert (verify(db).first.seq, verify(db).first.kind) == (2, "removed")
    del db[CHAIN].docs[key(2)]
    first = verify(db).first
    assert (first.seq, first.kind) == (2, "removed") and "chain entry" in first.detail


def test_swap_is_named_reordered():
    db = sealed_db(5)
    ev = db[EVENTS].docs
    ev[eid(2)], ev[eid(4)] = {**ev[eid(4)], "_id": eid(2)}, {**ev[eid(2)], "_id": eid(4)}
    report = verify(db)
    assert [(p.seq, p.kind) for p in report.problems] == [(2, "reordered"), (4, "reordered")]


def test_rewritten_chain_hash_and_foreign_event_are_named():
    db = sealed_db(4)
    db[CHAIN].docs[key(3)]["h"] = "00" * 32
    assert (verify(db).first.seq, verify(db).first.kind) == (3, "chain-edited")
    db = sealed_db(2)
    db[EVENTS].docs["forged"] = {"_id": "forged", "res": {}}
    assert verify(db).first.kind == "not-chained"
    db = sealed_db(3)
    db[CHAIN].docs[key(4)] = {**db[CHAIN].docs[key(3)], "_id": key(4), "seq": 4}
    db[CHAIN].docs[key(4)]["h"] = link(bytes.fromhex(db[CHAIN].docs[key(3)]["h"]),
                                       bytes.fromhex(db[CHAIN].docs[key(3)]["d"])).hex()
    assert [(p.seq, p.kind) for p in verify(db).problems] == [(4, "duplicate")]


def test_unsealed_events_are_pending_not_errors():
    db = sealed_db(3)
    db[EVENTS].docs["new"] = {"_id": "new", "res": {}}
    db[PENDING].docs["new"] = {"_id": "new"}
    report = verify(db)
    assert report.ok and report.pending == 1 and report.sealed == 3
