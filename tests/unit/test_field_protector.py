"""The stored form of protected values (app/store/protect.py): encryption leaves the caller's document as it was,
decryption gives the clear values back, and a stored document shares only what it did not change."""

import copy
from pathlib import Path

from app.crypto import FieldCipher
from app.store.protect import PREFIX, FieldProtector

ROOT = Path(__file__).resolve().parents[2]
ID_SYSTEM = "urn:oid:2.16.156.10011.1.3"


def protector() -> FieldProtector:
    return FieldProtector.from_profiles(FieldCipher(bytes(range(16)), bytes(range(32))), ROOT / "fhir_profiles")


def patient() -> dict:
    return {"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": ID_SYSTEM, "value": "11010519491231002X"},
                           {"system": "urn:example:mrn", "value": "M-1"}],
            "telecom": [{"system": "phone", "value": "13912345678"}],
            "name": [{"family": "张", "given": ["伟"]}],
            "contained": [{"resourceType": "RelatedPerson", "id": "r",
                           "identifier": [{"system": ID_SYSTEM, "value": "110105194912310038"}]}]}


def test_encode_encrypts_every_protected_value_and_leaves_the_given_document_alone():
    fp = protector()
    doc = {"_id": "p1", "res": patient(), "ix": {"identifier": [f"{ID_SYSTEM}|11010519491231002X"]}}
    before = copy.deepcopy(doc)
    stored = fp.encode(doc)
    assert doc == before
    ident, mrn = stored["res"]["identifier"]
    assert ident["value"].startswith(PREFIX) and "11010519491231002X" not in str(stored)
    assert stored["res"]["telecom"][0]["value"].startswith(PREFIX)
    assert stored["res"]["contained"][0]["identifier"][0]["value"].startswith(PREFIX)
    assert mrn == {"system": "urn:example:mrn", "value": "M-1"}
    assert stored["ix"]["identifier"] == [f"{ID_SYSTEM}|" + fp.blind("11010519491231002X")]
    # what did not change is shared, not copied; what did is a new object
    assert stored["res"]["name"] is doc["res"]["name"] and mrn is doc["res"]["identifier"][1]
    assert stored["res"]["identifier"] is not doc["res"]["identifier"]


def test_decode_gives_the_clear_document_back_copied_or_in_place():
    fp = protector()
    stored = fp.encode({"_id": "p1", "res": patient()})
    kept = copy.deepcopy(stored)
    assert fp.decode(stored)["res"] == patient()
    assert stored == kept  # not owned: the stored document is not touched
    assert fp.decode(stored, owned=True)["res"] == patient()
    assert stored["res"] == patient()  # owned: decrypted in place


def test_reencrypt_moves_every_value_to_the_current_key():
    stored = protector().encode({"_id": "p1", "res": patient()})
    rotated = FieldProtector.from_profiles(
        FieldCipher(bytes(range(16, 32)), bytes(range(32)), key_id="k2", old_keys={"k1": bytes(range(16))}),
        ROOT / "fhir_profiles")
    again = rotated.reencrypt(stored)
    values = [again["res"]["identifier"][0]["value"], again["res"]["telecom"][0]["value"],
              again["res"]["contained"][0]["identifier"][0]["value"]]
    assert all(v.startswith(PREFIX + "k2:") for v in values), values
    assert stored["res"]["identifier"][0]["value"].startswith(PREFIX + "k1:")  # the given document unchanged
    assert rotated.decode(again)["res"] == patient()
