"""The national cross-domain index: registration at a province node makes the resident known nationally,
one card nationwide (also under parallel registrations), and the durable outbox when the national node is
down."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest
import requests
from pymongo import MongoClient

from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import (
    EHC_SYSTEM,
    ID_SYSTEM,
    Node,
    card_of,
    h,
    new_id_number,
    patient_body,
    trusted,
    wait_for,
)


@pytest.fixture(scope="module")
def tokens(nodes: dict[str, Node]) -> dict[str, str]:
    out = {}
    for p in ("11", "31"):
        out[p] = nodes[p].token(nodes[p].client("system/Patient.cruds system/Observation.cruds",
                                                organization=f"org-{p}"))
    out["00"] = nodes["00"].token(nodes["00"].client("system/Patient.rs"))
    return out


def register(node: Node, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{node.base}/Patient", json=body, headers=h(token), timeout=20)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def pix(nodes: dict[str, Node], tokens: dict[str, str], number: str) -> requests.Response:
    return requests.get(f"{nodes['00'].base}/Patient/$ihe-pix", params={"sourceIdentifier": f"{ID_SYSTEM}|{number}"},
                        headers=h(tokens["00"]), timeout=10)


def known(nodes: dict[str, Node], tokens: dict[str, str], number: str, refs: int = 1) -> dict[str, Any] | None:
    r = pix(nodes, tokens, number)
    if r.status_code != 200:
        return None
    params = r.json()["parameter"]
    return r.json() if len([p for p in params if p["name"] == "targetId"]) >= refs else None


def test_registration_at_a_province_node_is_known_nationally_within_seconds(nodes: dict[str, Node],
                                                                              tokens: dict[str, str]) -> None:
    number = new_id_number()
    assert pix(nodes, tokens, number).status_code == 404
    t0 = time.monotonic()
    patient = register(nodes["11"], tokens["11"], patient_body(number, "李", "娜"))
    found = wait_for(lambda: known(nodes, tokens, number), timeout=10)
    assert found, "the national node did not learn the resident"
    assert time.monotonic() - t0 < 10
    params = found["parameter"]
    assert {"name": "targetIdentifier", "valueIdentifier": {"system": EHC_SYSTEM, "value": card_of(patient)}} in params
    refs = [p["valueReference"]["reference"] for p in params if p["name"] == "targetId"]
    assert refs == [f"{nodes['11'].base}/Patient/{patient['id']}"]


def test_the_national_node_answers_a_posted_pix_query_as_it_answers_the_get(nodes: dict[str, Node],
                                                                          tokens: dict[str, str]) -> None:
    """POST Patient/$ihe-pix with a Parameters body at the national node: the national index answers it, as the
    GET (not the national node's own, empty, master index), with the same errors."""
    number = new_id_number()
    patient = register(nodes["11"], tokens["11"], patient_body(number, "王", "POST"))
    assert wait_for(lambda: known(nodes, tokens, number), timeout=10)

    def posted(*parameters: dict[str, Any], token: str | None = None, query: str = "") -> requests.Response:
        return requests.post(f"{nodes['00'].base}/Patient/$ihe-pix{query}", headers=h(token or tokens["00"]),
                             json={"resourceType": "Parameters", "parameter": list(parameters)}, timeout=10)

    by_identifier = {"name": "sourceIdentifier", "valueIdentifier": {"system": ID_SYSTEM, "value": number}}
    by_string = {"name": "sourceIdentifier", "valueString": f"{ID_SYSTEM}|{number}"}
    got = pix(nodes, tokens, number)
    assert got.status_code == 200
    for source in (by_identifier, by_string):
        r = posted(source)
        assert r.status_code == 200 and r.json() == got.json(), r.text
    card = {"name": "sourceIdentifier", "valueIdentifier": {"system": EHC_SYSTEM, "value": card_of(patient)}}
    r = posted(card)
    assert r.status_code == 200
    assert [p["valueReference"]["reference"] for p in r.json()["parameter"] if p["name"] == "targetId"] \
        == [f"{nodes['11'].base}/Patient/{patient['id']}"]
    r = posted(by_identifier, {"name": "targetSystem", "valueUri": "urn:ehc:mrn:"})  # not the card's system
    assert r.status_code == 200 and [p["name"] for p in r.json()["parameter"]] == ["targetId"]
    # the errors of the GET
    r = posted({"name": "sourceIdentifier", "valueString": f"urn:ehc:mrn:h1|{number}"})
    assert r.status_code == 400 and r.json()["issue"][0]["code"] == "code-invalid"
    r = posted({"name": "sourceIdentifier", "valueIdentifier": {"system": ID_SYSTEM, "value": new_id_number()}})
    assert r.status_code == 404 and r.json()["issue"][0]["code"] == "not-found"
    r = posted({"name": "sourceIdentifier", "valueIdentifier": {"system": ID_SYSTEM}})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["sourceIdentifier"]
    r = posted(by_identifier, query=f"?targetSystem={EHC_SYSTEM}")
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["targetSystem"]
    reader = nodes["00"].token(nodes["00"].client("system/Observation.rs", organization="org-nhc-stats"))
    r = posted(by_identifier, token=reader)
    assert r.status_code == 403 and number not in r.text and patient["id"] not in r.text
    r = requests.post(f"{nodes['00'].base}/Patient/$ihe-pix", json={"resourceType": "Parameters", "parameter": [
        by_identifier]}, headers={"Accept": "application/fhir+json"}, timeout=10)
    assert r.status_code == 401


def test_the_national_node_keeps_no_clear_id_number_no_name_and_no_records(nodes: dict[str, Node],
                                                                          tokens: dict[str, str]) -> None:
    number = new_id_number()
    register(nodes["11"], tokens["11"], patient_body(number, "欧阳", "修远"))
    assert wait_for(lambda: known(nodes, tokens, number))
    client: MongoClient = MongoClient(nodes["00"].db_uri)
    try:
        db = client.get_default_database()
        dump = "".join(json.dumps(list(db[c].find({})), default=str, ensure_ascii=False)
                       for c in db.list_collection_names())
        entry = db["fed_index"].find_one({"card": {"$exists": True}, "refs.ref": {"$regex": "/Patient/"}})
        assert entry is not None and set(entry) == {"_id", "card", "home", "refs", "claimed", "at"}
        assert db["fed_index"].count_documents({}) >= 1
        for name in ("Patient", "Observation", "DocumentReference"):
            assert db[name].count_documents({}) == 0
    finally:
        client.close()
    assert number not in dump and number.lower() not in dump
    assert "欧阳" not in dump and "修远" not in dump


def test_one_card_nationwide_the_second_node_learns_the_card(nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    number = new_id_number()
    at11 = register(nodes["11"], tokens["11"], patient_body(number, "王", "芳", mrn="BJ-1"))
    assert wait_for(lambda: known(nodes, tokens, number))
    at31 = register(nodes["31"], tokens["31"], patient_body(number, "王", "芳", mrn="SH-1"))
    assert card_of(at31) == card_of(at11)
    assert [i["value"] for i in at31["identifier"] if i["system"] == EHC_SYSTEM] == [card_of(at11)]
    found = wait_for(lambda: known(nodes, tokens, number, refs=2))
    assert found, "node 31's Patient was not indexed"
    refs = sorted(p["valueReference"]["reference"] for p in found["parameter"] if p["name"] == "targetId")
    assert refs == sorted([f"{nodes['11'].base}/Patient/{at11['id']}", f"{nodes['31'].base}/Patient/{at31['id']}"])
    cards = [p for p in found["parameter"] if p["name"] == "targetIdentifier"]
    assert len(cards) == 1


def test_parallel_registrations_at_two_nodes_get_one_card(nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    for _ in range(3):
        number = new_id_number()
        out: dict[str, dict[str, Any]] = {}
        barrier = threading.Barrier(2)

        def go(p: str, number: str = number, out: dict[str, Any] = out,
               barrier: threading.Barrier = barrier) -> None:
            barrier.wait()
            out[p] = register(nodes[p], tokens[p], patient_body(number, "陈", "静"))

        threads = [threading.Thread(target=go, args=(p,)) for p in ("11", "31")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert card_of(out["11"]) == card_of(out["31"])
        found = wait_for(lambda number=number: known(nodes, tokens, number, refs=2))
        assert found
        assert [p["valueIdentifier"]["value"] for p in found["parameter"] if p["name"] == "targetIdentifier"] == \
            [card_of(out["11"])]


def test_national_node_down_registration_works_and_the_index_entries_arrive_later_once(
        nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    fed = nodes["11"].svc.extensions["federation"]
    nodes["00"].stop()
    try:
        numbers = [new_id_number() for _ in range(4)]
        created = []
        for number in numbers:
            t0 = time.monotonic()
            created.append(register(nodes["11"], tokens["11"], patient_body(number, "赵", "磊")))
            assert time.monotonic() - t0 < 5
        time.sleep(1.5)  # the worker tries, fails and keeps them
        assert fed.outbox.size() >= len(numbers)
    finally:
        nodes["00"].start()
    for number, patient in zip(numbers, created, strict=True):
        found = wait_for(lambda number=number: known(nodes, tokens, number), timeout=20)
        assert found, f"{number} never reached the national index"
        assert [p["valueReference"]["reference"] for p in found["parameter"] if p["name"] == "targetId"] == \
            [f"{nodes['11'].base}/Patient/{patient['id']}"]
    assert wait_for(lambda: fed.outbox.size() == 0, timeout=10)
    # a second delivery of the same entries (a crash between the answer and the delete) changes nothing
    for patient in created:
        fed.outbox.enqueue(patient["id"])
    assert wait_for(lambda: fed.outbox.size() == 0, timeout=10)
    for number in numbers:
        refs = [p for p in pix(nodes, tokens, number).json()["parameter"] if p["name"] == "targetId"]
        assert len(refs) == 1


def test_residents_registered_before_the_national_node_was_added_are_indexed_when_it_is(
        nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    assert nodes["31"].ehc("nodes", "remove", "--province", "00").exit_code == 0
    assert wait_for(lambda: "00" not in trusted(nodes["31"]), timeout=5)
    try:
        number = new_id_number()
        patient = register(nodes["31"], tokens["31"], patient_body(number, "吴", "敏"))
        time.sleep(2.5)
        assert pix(nodes, tokens, number).status_code == 404
    finally:
        r = nodes["31"].ehc("nodes", "add", "--province", "00")
        assert r.exit_code == 0, r.output
    found = wait_for(lambda: known(nodes, tokens, number), timeout=15)
    assert found, "the earlier registration was never indexed"
    assert [p["valueReference"]["reference"] for p in found["parameter"] if p["name"] == "targetId"] == \
        [f"{nodes['31'].base}/Patient/{patient['id']}"]


def test_a_resident_registered_at_two_nodes_while_the_national_node_was_down_ends_with_one_card(
        nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    number = new_id_number()
    nodes["00"].stop()
    try:
        at11 = register(nodes["11"], tokens["11"], patient_body(number, "郑", "强"))
        at31 = register(nodes["31"], tokens["31"], patient_body(number, "郑", "强"))
        assert card_of(at11) != card_of(at31)  # each node derived its own while it could not ask
    finally:
        nodes["00"].start()

    def current(p: str, pid: str) -> str:
        r = requests.get(f"{nodes[p].base}/Patient/{pid}", headers=h(tokens[p]), timeout=10)
        return card_of(r.json())

    assert wait_for(lambda: current("11", at11["id"]) == current("31", at31["id"]), timeout=20)
    card = current("11", at11["id"])
    found = wait_for(lambda: known(nodes, tokens, number, refs=2), timeout=20)
    assert found and [p["valueIdentifier"]["value"] for p in found["parameter"]
                      if p["name"] == "targetIdentifier"] == [card]
    loser, loser_card = ("31", card_of(at31)) if card == card_of(at11) else ("11", card_of(at11))
    cards = nodes[loser].svc.extensions["ehc"].cards
    assert cards.status(loser_card) == "cancelled"
