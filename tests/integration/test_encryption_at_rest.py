"""Resident ID numbers and phone numbers are stored SM4-GCM encrypted with an SM3-HMAC blind index:
exact searches work, reads show the clear values, and a scan of the raw database finds neither."""

from __future__ import annotations

import json

from bson import json_util
from pymongo import MongoClient

from app.crypto import FieldCipher
from app.store.protect import rotate_field_key

FJ = "application/fhir+json"
ID_NUMBER = "11010519491231002X"
PHONE = "13912345678"


def patient():
    return {"resourceType": "Patient", "name": [{"family": "钱", "given": ["学森"]}], "gender": "female",
            "birthDate": "1949-12-31",
            "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": ID_NUMBER},
                           {"system": "urn:ehc:mrn:org-9", "value": "Q-1"}],
            "telecom": [{"system": "phone", "value": PHONE}]}


def raw_dump(db_uri: str) -> str:
    db = MongoClient(db_uri).get_default_database()
    parts = []
    for name in db.list_collection_names():
        parts.extend(json_util.dumps(doc, ensure_ascii=False) for doc in db[name].find({}))
    return "\n".join(parts)


def test_protected_values_are_searchable_and_never_in_clear(client, db_uri):
    r = client.post("/fhir/Patient", data=json.dumps(patient()), content_type=FJ)
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    assert r.json["identifier"][0]["value"] == ID_NUMBER
    got = client.get(f"/fhir/Patient/{pid}").json
    assert ID_NUMBER in json.dumps(got) and PHONE in json.dumps(got)
    for query in (f"identifier=urn:oid:2.16.156.10011.1.3|{ID_NUMBER}", f"identifier={ID_NUMBER}",
                  f"phone={PHONE}", f"telecom=phone|{PHONE}", "identifier=urn:ehc:mrn:org-9|Q-1"):
        b = client.get(f"/fhir/Patient?{query}").json
        assert [e["resource"]["id"] for e in b["entry"] if e["search"]["mode"] == "match"] == [pid], query
        assert ID_NUMBER in json.dumps(b["entry"][0]["resource"])
    assert client.get("/fhir/Patient?phone=13900000000").json["total"] == 0
    # a second version puts the first into history: still nothing in clear
    upd = {**got, "active": True}
    assert client.put(f"/fhir/Patient/{pid}", data=json.dumps(upd), content_type=FJ).status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/1").json["telecom"][0]["value"] == PHONE
    dump = raw_dump(db_uri)
    assert ID_NUMBER not in dump and ID_NUMBER.lower() not in dump
    assert PHONE not in dump
    assert "enc:" in dump  # the values are there, encrypted


def test_field_key_rotation(client, services, db_uri):
    r = client.post("/fhir/Patient", data=json.dumps({**patient(), "identifier": [
        {"system": "urn:oid:2.16.156.10011.1.3", "value": "110101194912310024"}]}), content_type=FJ)
    pid = r.json["id"]
    protector = services.repo.protector
    old = protector.cipher
    new = FieldCipher(bytes(range(16)), old._index_key, key_id="k2", old_keys={old.key_id: old._keys[old.key_id]})
    assert rotate_field_key(services.repo, protector, new) >= 1
    db = MongoClient(db_uri).get_default_database()
    stored = db["Patient"].find_one({"_id": pid})["res"]["identifier"][0]["value"]
    assert stored.startswith("enc:k2:")
    assert client.get(f"/fhir/Patient/{pid}").json["identifier"][0]["value"] == "110101194912310024"
    # after rotation the old key is no longer needed
    protector.cipher = FieldCipher(bytes(range(16)), old._index_key, key_id="k2")
    assert client.get(f"/fhir/Patient/{pid}").json["identifier"][0]["value"] == "110101194912310024"
    found = client.get("/fhir/Patient?identifier=110101194912310024").json
    assert found["total"] == 1
