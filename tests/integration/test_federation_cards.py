"""QR codes across provinces: the national node publishes the union of card keys and revocations, a code issued
at node 11 verifies at node 31 from keys node 31 got through the national node, a one-time code is spent
nationwide, and a card suspended at node 11 verifies as suspended at node 31 within 60 s."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import Node, card_of, h, new_id_number, patient_body, wait_for


@pytest.fixture(scope="module")
def tokens(nodes: dict[str, Node]) -> dict[str, str]:
    return {p: nodes[p].token(nodes[p].client("system/Patient.cruds", organization=f"org-{p}"))
            for p in ("11", "31")}


def register(node: Node, token: str, number: str) -> dict[str, Any]:
    r = requests.post(f"{node.base}/Patient", json=patient_body(number, "周", "杰"), headers=h(token), timeout=20)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def qrcode(node: Node, token: str, pid: str, kind: str = "dynamic") -> str:
    body = {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": kind}]}
    r = requests.post(f"{node.base}/Patient/{pid}/$ehc-qrcode", json=body, headers=h(token), timeout=10)
    assert r.status_code == 200, r.text
    return str(next(p["valueString"] for p in r.json()["parameter"] if p["name"] == "token"))


def verify(node: Node, token: str, code: str) -> dict[str, Any]:
    body = {"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": code}]}
    r = requests.post(f"{node.base}/$ehc-verify", json=body, headers=h(token), timeout=10)
    assert r.status_code == 200, r.text
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in r.json()["parameter"]}


def published(node: Node) -> dict[str, Any]:
    return {"keys": requests.get(f"{node.url}/ehc/keys", timeout=10).json()["keys"],
            "cards": requests.get(f"{node.url}/ehc/revocations", timeout=10).json()["cards"]}


def knows_kid(node: Node, kid: str) -> bool:
    return node.svc.extensions["federation"].union.key(kid) is not None


def test_the_national_node_publishes_the_union_of_province_keys(nodes: dict[str, Node]) -> None:
    union = wait_for(lambda: {"11", "31"} <= {k["province"] for k in published(nodes["00"])["keys"]}, timeout=30)
    assert union, published(nodes["00"])
    own11 = published(nodes["11"])["keys"]
    assert own11 and {k["province"] for k in own11} == {"11"}
    at_national = {k["kid"] for k in published(nodes["00"])["keys"]}
    assert {k["kid"] for k in own11} <= at_national


def test_a_dynamic_code_from_node_11_verifies_at_node_31_and_is_then_spent_everywhere(
        nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    number = new_id_number()
    patient = register(nodes["11"], tokens["11"], number)  # known at node 11 only
    code = qrcode(nodes["11"], tokens["11"], patient["id"])
    kid = code.split(":")[1]
    assert kid not in {k["kid"] for k in published(nodes["31"])["keys"]}  # not node 31's own key
    assert wait_for(lambda: knows_kid(nodes["31"], kid), timeout=30), "node 31 never got node 11's key"
    out = verify(nodes["31"], tokens["31"], code)
    assert out["valid"] is True and out["ehcId"] == card_of(patient) and out["type"] == "dynamic"
    again = verify(nodes["11"], tokens["11"], code)
    assert again["valid"] is False and again["reason"] == "replayed"
    assert verify(nodes["31"], tokens["31"], code)["reason"] == "replayed"


def test_a_code_used_at_its_home_node_is_replayed_at_another(nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    number = new_id_number()
    patient = register(nodes["11"], tokens["11"], number)
    register(nodes["31"], tokens["31"], number)  # also known at node 31 now (the same card)
    code = qrcode(nodes["11"], tokens["11"], patient["id"])
    assert wait_for(lambda: knows_kid(nodes["31"], code.split(":")[1]), timeout=30)
    assert verify(nodes["11"], tokens["11"], code)["valid"] is True
    out = verify(nodes["31"], tokens["31"], code)
    assert out["valid"] is False and out["reason"] == "replayed"


def test_a_card_suspended_at_node_11_verifies_as_suspended_at_node_31_within_60_seconds(
        nodes: dict[str, Node], tokens: dict[str, str]) -> None:
    number = new_id_number()
    patient = register(nodes["11"], tokens["11"], number)
    at31 = register(nodes["31"], tokens["31"], number)
    assert card_of(at31) == card_of(patient)
    static = qrcode(nodes["11"], tokens["11"], patient["id"], "static")
    assert wait_for(lambda: knows_kid(nodes["31"], static.split(":")[1]), timeout=30)
    before = verify(nodes["31"], tokens["31"], static)
    assert before["valid"] is True and before["requiresConfirmation"] is True
    body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"},
                                                        {"name": "reason", "valueString": "挂失"}]}
    r = requests.post(f"{nodes['11'].base}/Patient/{patient['id']}/$ehc-status", json=body, headers=h(tokens["11"]),
                      timeout=10)
    assert r.status_code == 200, r.text
    t0 = time.monotonic()
    seen = wait_for(lambda: verify(nodes["31"], tokens["31"], static).get("reason") == "suspended", timeout=60,
                    every=1.0)
    elapsed = time.monotonic() - t0
    assert seen and elapsed < 60
    revoked = {c["ehcId"]: c["status"] for c in published(nodes["00"])["cards"]}
    assert revoked.get(card_of(patient)) == "suspended"
