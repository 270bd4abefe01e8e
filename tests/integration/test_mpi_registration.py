"""POST/PUT Patient through the master patient index: validation (422), one Patient per resident
(200 + Location), conflicts (409), cards issued in the same version, temporary cards made formal, and every
code of a resident (insurance, citizen card, social security, payment code) finding the same Patient."""

from __future__ import annotations

import json

from app.mpi.documents import mod11_2

FJ = "application/fhir+json"
ID_SYS = "urn:oid:2.16.156.10011.1.3"
EHC_SYS = "urn:oid:2.16.156.10011.1.19"
MID_SYS = "urn:ehc:id:master-index"


def id_number(region: str, born: str, seq: int) -> str:
    body = f"{region}{born.replace('-', '')}{seq:03d}"
    return body + mod11_2(body)


def patient(number: str | None, *, name: str = "张三", gender: str | None = None, born: str | None = None,
            extra: list[dict] | None = None) -> dict:
    idents = ([{"system": ID_SYS, "value": number}] if number else []) + (extra or [])
    res = {"resourceType": "Patient", "identifier": idents, "name": [{"text": name}]}
    if gender:
        res["gender"] = gender
    if born:
        res["birthDate"] = born
    return res


def post(client, path, body):
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)


def put(client, path, body):
    return client.put(f"/fhir/{path}", data=json.dumps(body), content_type=FJ)


def idents(res: dict, system: str) -> list[dict]:
    return [i for i in res.get("identifier", []) if i["system"] == system]


def test_check_digit_422_names_the_value(client):
    r = post(client, "Patient", patient("110101200001010011"))
    assert r.status_code == 422
    issue = r.json["issue"][0]
    assert issue["expression"] == ["Patient.identifier[0].value"]
    assert "校验码" in issue["diagnostics"]


def test_gender_and_birth_date_contradicting_the_number_422(client):
    number = id_number("110101", "1990-05-06", 12)  # even sequence: female
    r = post(client, "Patient", patient(number, gender="male"))
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Patient.gender"]
    r = post(client, "Patient", patient(number, born="1990-05-07"))
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Patient.birthDate"]


def test_client_cannot_submit_a_card_id(client):
    r = post(client, "Patient", patient(None, extra=[{"system": EHC_SYS, "value": "AB" * 32}]))
    assert r.status_code == 422
    assert r.json["issue"][0]["expression"] == ["Patient.identifier[0]"]
    r = post(client, "Patient", patient(None, extra=[{"system": MID_SYS, "value": "AB" * 32}]))
    assert r.status_code == 422


def test_second_registration_links_to_the_resident(client):
    number = id_number("440305", "1985-03-04", 31)
    first = post(client, "Patient", patient(number.lower(), name="李四", born="1985-03-04",
                                            extra=[{"system": "urn:ehc:mrn:hosp-a", "value": "A-1"}]))
    assert first.status_code == 201, first.json
    pid = first.json["id"]
    assert idents(first.json, ID_SYS)[0]["value"] == number  # normalised upper-case X / as stored
    card = idents(first.json, EHC_SYS)
    assert len(card) == 1 and card[0]["type"]["coding"][0]["code"] == "formal"
    assert len(idents(first.json, MID_SYS)[0]["value"]) == 64
    second = post(client, "Patient", patient(number, name="李四",
                                             extra=[{"system": "urn:ehc:mrn:hosp-b", "value": "B-9"},
                                                    {"system": "urn:oid:2.16.156.10011.1.15", "value": "YB123"}]))
    assert second.status_code == 200, second.json
    assert second.json["id"] == pid
    assert second.headers["Location"].endswith(f"/Patient/{pid}/_history/2")
    systems = {i["system"] for i in second.json["identifier"]}
    assert {"urn:ehc:mrn:hosp-a", "urn:ehc:mrn:hosp-b", "urn:oid:2.16.156.10011.1.15"} <= systems
    assert idents(second.json, EHC_SYS) == card  # the card did not change
    found = client.get("/fhir/Patient?identifier=urn:ehc:mrn:hosp-b|B-9").json
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [pid]


def test_same_number_different_name_409(client):
    number = id_number("510107", "1970-01-02", 55)
    assert post(client, "Patient", patient(number, name="张伟")).status_code == 201
    r = post(client, "Patient", patient(number, name="章伟"))  # same pinyin, other characters
    assert r.status_code == 409
    assert r.json["issue"][0]["expression"] == ["Patient.name"]


def test_identifier_of_another_resident_409(client):
    a = post(client, "Patient", patient(id_number("110101", "1960-02-03", 70), name="王五",
                                        extra=[{"system": "urn:ehc:mrn:hosp-c", "value": "C-1"}]))
    b = post(client, "Patient", patient(id_number("110101", "1961-02-03", 71), name="赵六"))
    assert a.status_code == 201 and b.status_code == 201
    # Resident B's record claims hospital C's number of resident A.
    res = b.json
    res["identifier"].append({"system": "urn:ehc:mrn:hosp-c", "value": "C-1"})
    r = put(client, f"Patient/{res['id']}", res)
    assert r.status_code == 409
    assert "urn:ehc:mrn:hosp-c|C-1" in r.json["issue"][0]["diagnostics"]
    # A new registration carrying identifiers of both residents.
    r = post(client, "Patient", patient(id_number("110101", "1961-02-03", 71), name="赵六",
                                        extra=[{"system": "urn:ehc:mrn:hosp-c", "value": "C-1"}]))
    assert r.status_code == 409
    # The MRN of resident A with another ID number: a different resident.
    r = post(client, "Patient", patient(id_number("110101", "1962-02-03", 73), name="王五",
                                        extra=[{"system": "urn:ehc:mrn:hosp-c", "value": "C-1"}]))
    assert r.status_code == 409


def test_put_keeps_the_card_and_refuses_edits(client):
    r = post(client, "Patient", patient(id_number("320102", "1999-09-09", 1), name="孙七"))
    res = r.json
    card = idents(res, EHC_SYS)[0]["value"]
    res["identifier"] = [i for i in res["identifier"] if i["system"] not in (EHC_SYS, MID_SYS)]
    res["telecom"] = [{"system": "phone", "value": "13800000000"}]
    r2 = put(client, f"Patient/{res['id']}", res)
    assert r2.status_code == 200
    assert idents(r2.json, EHC_SYS)[0]["value"] == card
    res = r2.json
    idents(res, EHC_SYS)[0]["value"] = "CD" * 32
    assert put(client, f"Patient/{res['id']}", res).status_code == 422


def test_temporary_card_becomes_formal_when_a_document_is_added(client):
    r = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "无名氏"}],
                                 "identifier": [{"system": "urn:ehc:mrn:er", "value": "E-77"}]})
    assert r.status_code == 201
    temp = idents(r.json, EHC_SYS)
    assert len(temp) == 1 and temp[0]["type"]["coding"][0]["code"] == "temporary"
    assert not idents(r.json, MID_SYS)
    res = r.json
    res["identifier"].append({"system": ID_SYS, "value": id_number("370102", "2001-01-01", 5)})
    r2 = put(client, f"Patient/{res['id']}", res)
    assert r2.status_code == 200, r2.json
    cards = idents(r2.json, EHC_SYS)
    current = [c for c in cards if c.get("use") != "old"]
    old = [c for c in cards if c.get("use") == "old"]
    assert len(current) == 1 and current[0]["type"]["coding"][0]["code"] == "formal"
    assert [c["value"] for c in old] == [temp[0]["value"]] and old[0]["period"]["end"]
    revoked = client.get("/ehc/revocations").json
    assert {"ehcId": temp[0]["value"], "status": "cancelled"}.items() <= next(
        c for c in revoked["cards"] if c["ehcId"] == temp[0]["value"]).items()


def test_same_document_same_card_at_every_registration(client, services):
    from app.ehc.card_id import derive_card
    from app.keyring import keyring_for

    number = id_number("610113", "1988-08-08", 88)
    r = post(client, "Patient", patient(number, name="周八"))
    ring = keyring_for(services)
    card = derive_card(ring.card_root_key, ring.index_key, "01", number)
    assert idents(r.json, EHC_SYS)[0]["value"] == card.card_id
    assert idents(r.json, MID_SYS)[0]["value"] == card.master_index_id.hex().upper()


def test_multi_code_fusion(client):
    number = id_number("330106", "1975-07-07", 17)
    codes = [("urn:oid:2.16.156.10011.1.15", "YB-330106-01"), ("urn:ehc:id:citizen-card", "CC0001"),
             ("urn:ehc:id:social-security-card", number), ("urn:ehc:id:payment-code", "PAY-77")]
    r = post(client, "Patient", patient(number, name="吴九", extra=[{"system": s, "value": v} for s, v in codes]))
    assert r.status_code == 201, r.json
    pid = r.json["id"]
    card = idents(r.json, EHC_SYS)[0]["value"]
    for system, value in codes:
        found = client.get(f"/fhir/Patient?identifier={system}|{value}").json
        assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [pid]
        pix = client.get(f"/fhir/Patient/$ihe-pix?sourceIdentifier={system}|{value}")
        assert pix.status_code == 200
        assert {"name": "targetId", "valueReference": {"reference": f"Patient/{pid}"}} in pix.json["parameter"]
    verify = post(client, "$ehc-verify", {"resourceType": "Parameters",
                                          "parameter": [{"name": "token", "valueString": f"{card}:1"}]}).json
    params = {p["name"]: p for p in verify["parameter"]}
    assert params["valid"]["valueBoolean"] is True
    assert params["patient"]["valueReference"]["reference"] == f"Patient/{pid}"
    assert params["requiresConfirmation"]["valueBoolean"] is True


def test_claims_hold_no_identifier_in_clear(client, services):
    # its own registration: under pytest-xdist this test may run before the module's others, on a fresh database
    assert post(client, "Patient", patient(id_number("110101", "1981-08-08", 45), name="冯九")).status_code == 201
    col = services.repo.db["mpi_claims"]
    docs = list(col.find({}))
    assert docs
    for doc in docs:
        assert len(doc["_id"]) == 64 and set(doc) == {"_id", "p"}
    dump = json.dumps(docs, default=str)
    assert "urn:" not in dump and "110101" not in dump


def test_identifiers_added_by_a_second_registration_belong_to_the_resident(client):
    number = id_number("320102", "1977-07-07", 41)
    first = post(client, "Patient", patient(number, name="钱七"))
    assert first.status_code == 201
    # A known resident registered again with a new hospital number: the number is now the resident's ...
    again = post(client, "Patient", patient(number, name="钱七", extra=[{"system": "urn:ehc:mrn:hosp-e",
                                                                         "value": "E-5"}]))
    assert again.status_code == 200 and again.json["id"] == first.json["id"]
    # ... so another resident cannot take it.
    other = post(client, "Patient", patient(id_number("320102", "1978-07-07", 43), name="孙八",
                                            extra=[{"system": "urn:ehc:mrn:hosp-e", "value": "E-5"}]))
    assert other.status_code == 409
    found = client.get("/fhir/Patient?identifier=urn:ehc:mrn:hosp-e|E-5").json
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [first.json["id"]]


def test_a_refused_registration_leaves_its_new_identifiers_free(client):
    number = id_number("320102", "1979-08-08", 45)
    assert post(client, "Patient", patient(number, name="周九")).status_code == 201
    # The same ID number under another name is refused; the hospital number it carried stays unclaimed.
    refused = post(client, "Patient", patient(number, name="吴十", extra=[{"system": "urn:ehc:mrn:hosp-f",
                                                                          "value": "F-3"}]))
    assert refused.status_code == 409
    other = post(client, "Patient", patient(id_number("320102", "1980-08-08", 47), name="郑一",
                                            extra=[{"system": "urn:ehc:mrn:hosp-f", "value": "F-3"}]))
    assert other.status_code == 201, other.json
    found = client.get("/fhir/Patient?identifier=urn:ehc:mrn:hosp-f|F-3").json
    assert [e["resource"]["id"] for e in found["entry"] if e["search"]["mode"] == "match"] == [other.json["id"]]


def test_an_id_number_in_other_digits_is_refused_not_a_500(client):
    """Python's \\d takes full-width (１) and Arabic-Indic (٠) digits, and int() reads them, but the check
    character is computed on ASCII: a registration or $ihe-pix with such a number ended in a 500."""
    number = id_number("110101", "1990-01-01", 41)
    for shown in (number[:6] + number[6:].translate(str.maketrans("0123456789", "０１２３４５６７８９")),
                  number[:2] + "٠" + number[3:]):
        r = post(client, "Patient", patient(shown, name="数字"))
        assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Patient.identifier[0].value"], r.json
        r = client.get("/fhir/Patient/$ihe-pix", query_string={"sourceIdentifier": f"{ID_SYS}|{shown}"})
        assert r.status_code == 404, r.json


def test_two_current_id_numbers_on_one_patient_are_two_people_422(client):
    """One resident, one number: a Patient carrying two different current resident ID numbers (a mother's and her
    child's on one record, say) was stored, and each number then led to that one record. It is refused, as $merge
    refuses two such residents; a number kept with use 'old' may stay."""
    mother, child = id_number("110101", "1970-03-03", 51), id_number("110101", "2010-04-04", 53)
    body = {"resourceType": "Patient", "name": [{"text": "母子"}],
            "identifier": [{"system": ID_SYS, "value": mother}, {"system": ID_SYS, "value": child}]}
    r = post(client, "Patient", body)
    assert r.status_code == 422 and r.json["issue"][0]["expression"] == ["Patient.identifier[1].value"], r.json
    assert client.get("/fhir/Patient", query_string={"identifier": f"{ID_SYS}|{child}"}).json["total"] == 0
    body["identifier"][1]["use"] = "old"
    body["identifier"][1]["value"] = id_number("110101", "1970-03-03", 55)  # a corrected number, kept as old
    assert post(client, "Patient", body).status_code == 201


def test_a_birth_date_after_today_is_refused_naming_it(client):
    """Only a birth date inside an ID number was checked against today; `birthDate: 2999-01-01` was stored."""
    from app.core.timeutil import today_in_china

    for born in ("2999-01-01", "2999-01", "2999"):
        r = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "未生"}], "birthDate": born})
        assert r.status_code == 422, (born, r.json)
        assert r.json["issue"][0]["expression"] == ["Patient.birthDate"]
    newborn = post(client, "Patient", {"resourceType": "Patient", "name": [{"text": "新生"}],
                                       "birthDate": today_in_china().isoformat()})
    assert newborn.status_code == 201, newborn.json
