"""Nodes run with EHC_AUTH_REQUIRED=false (local experiments): the federation's own calls still use node tokens
and signed assertions, so registration reaches the national index, one card holds nationwide and a QR code from
one province verifies at another; an unregistered caller is still refused at /federation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.integration.federation_helpers import (
    ID_SYSTEM,
    Node,
    card_of,
    database_names,
    new_id_number,
    patient_body,
    trusted,
    wait_for,
)

JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}


@pytest.fixture(scope="module")
def open_nodes(mongo_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Node]]:
    uris = database_names(mongo_server, "open")
    national = Node("00", uris["00"], tmp_path_factory.mktemp("open00"), auth_required=False).start()
    nodes = {"00": national}
    for p in ("11", "31"):
        nodes[p] = Node(p, uris[p], tmp_path_factory.mktemp(f"open{p}"), national_url=national.base,
                        auth_required=False).start()
    try:
        for p in ("11", "31"):
            assert national.ehc("nodes", "add", "--province", p, "--url", nodes[p].base).exit_code == 0
            assert nodes[p].ehc("nodes", "add", "--province", "00").exit_code == 0
        assert wait_for(lambda: trusted(national) == ["11", "31"] and trusted(nodes["31"]) == ["00"], timeout=10)
        yield nodes
    finally:
        for n in nodes.values():
            n.close()


def post(node: Node, path: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{node.base}/{path}", json=body, headers=JSON, timeout=20)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def test_index_one_card_and_qr_codes_without_client_tokens(open_nodes: dict[str, Node]) -> None:
    number = new_id_number()
    at11 = post(open_nodes["11"], "Patient", patient_body(number, "冯", "博"))

    def pix() -> Any:
        r = requests.get(f"{open_nodes['00'].base}/Patient/$ihe-pix", headers=JSON, timeout=10,
                         params={"sourceIdentifier": f"{ID_SYSTEM}|{number}"})
        ok = r.status_code == 200 and any(p["name"] == "targetId" for p in r.json()["parameter"])
        return r.json() if ok else None

    found = wait_for(pix, timeout=10)
    assert found and {"name": "targetId", "valueReference": {
        "reference": f"{open_nodes['11'].base}/Patient/{at11['id']}", "display": "province 11"}} in found["parameter"]
    at31 = post(open_nodes["31"], "Patient", patient_body(number, "冯", "博"))
    assert card_of(at31) == card_of(at11)
    qr = post(open_nodes["11"], f"Patient/{at11['id']}/$ehc-qrcode",
              {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": "dynamic"}]})
    code = next(p["valueString"] for p in qr["parameter"] if p["name"] == "token")
    union = open_nodes["31"].svc.extensions["federation"].union
    assert wait_for(lambda: union.key(code.split(":")[1]) is not None, timeout=30)
    out = post(open_nodes["31"], "$ehc-verify", {"resourceType": "Parameters",
                                                 "parameter": [{"name": "token", "valueString": code}]})
    assert {"name": "valid", "valueBoolean": True} in out["parameter"]


def test_federation_endpoints_still_need_a_node_token(open_nodes: dict[str, Node]) -> None:
    r = requests.post(f"{open_nodes['00'].url}/federation/claim", json={"idNumber": new_id_number(), "card": "A" * 64},
                      timeout=10)
    assert r.status_code in (401, 403)
    r = requests.post(f"{open_nodes['00'].url}/federation/query", json={"resourceType": "Observation", "params": []},
                      timeout=10)
    assert r.status_code in (401, 403)
