"""Cross-province queries: a Shanghai hospital (node 31) searches a Beijing resident's records (node 11) by ID
number. Without the resident's consent at node 11 it gets nothing from there and an outcome says how many were
withheld; with it, node 11's entries unchanged, fullUrl at node 11, paged across the boundary; revoking stops it.
Both nodes audit; a down node or national node costs a warning, not a hang."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import (
    ID_SYSTEM,
    Node,
    consent_body,
    h,
    new_id_number,
    observation_body,
    patient_body,
)

SH_ORG = "org-sh-ruijin"


@pytest.fixture(scope="module")
def world(nodes: dict[str, Node]) -> dict[str, Any]:
    bj = nodes["11"].client("system/Patient.cruds system/Observation.cruds system/DocumentReference.cruds "
                            "system/Consent.cruds system/AuditEvent.rs system/Organization.cruds",
                            organization="org-bj-xiehe")
    sh = nodes["31"].client("system/Patient.cruds system/Observation.cruds system/DocumentReference.rs "
                            "system/AuditEvent.rs", organization=SH_ORG)
    t11, t31 = nodes["11"].token(bj), nodes["31"].token(sh)
    number = new_id_number()
    p11 = _post(nodes["11"], t11, patient_body(number, "孙", "丽"))
    p31 = _post(nodes["31"], t31, patient_body(number, "孙", "丽"))
    obs11 = [_post(nodes["11"], t11, observation_body(p11["id"], value=v))["id"] for v in (4.1, 5.2, 6.3)]
    doc11 = _post(nodes["11"], t11, {"resourceType": "DocumentReference", "status": "current",
                                     "subject": {"reference": f"Patient/{p11['id']}"},
                                     "content": [{"attachment": {"contentType": "text/plain", "data": "5Ye66Zmi"}}]})
    # The Shanghai hospital in node 11's directory (a consent names an Organization the home node knows).
    r = requests.put(f"{nodes['11'].base}/Organization/{SH_ORG}", headers=h(t11), timeout=10,
                     json={"resourceType": "Organization", "id": SH_ORG, "name": "上海瑞金医院",
                           "identifier": [{"system": "urn:ehc:province", "value": "31"}]})
    assert r.status_code in (200, 201), r.text
    obs31 = _post(nodes["31"], t31, observation_body(p31["id"], value=7.4))["id"]
    return {"t11": t11, "t31": t31, "sh": sh, "number": number, "p11": p11, "p31": p31, "obs11": obs11,
            "doc11": doc11["id"], "obs31": obs31}


def _post(node: Node, token: str, body: dict[str, Any]) -> dict[str, Any]:
    r = requests.post(f"{node.base}/{body['resourceType']}", json=body, headers=h(token), timeout=20)
    assert r.status_code in (200, 201), r.text
    return dict(r.json())


def search(node: Node, token: str, rtype: str, number: str, **params: str) -> requests.Response:
    query = {"subject:Patient.identifier": f"{ID_SYSTEM}|{number}", **params}
    return requests.get(f"{node.base}/{rtype}", params=query, headers=h(token), timeout=30)


def matches(bundle: dict[str, Any]) -> list[str]:
    return [e["fullUrl"] for e in bundle.get("entry") or [] if e["search"]["mode"] == "match"]


def issues(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for e in bundle.get("entry") or [] if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def grant(nodes: dict[str, Node], world: dict[str, Any], actor: dict[str, Any]) -> str:
    return str(_post(nodes["11"], world["t11"], consent_body(world["p11"]["id"], actor))["id"])


def revoke(nodes: dict[str, Node], world: dict[str, Any], consent_id: str) -> None:
    r = requests.delete(f"{nodes['11'].base}/Consent/{consent_id}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204), r.text


def test_without_consent_nothing_crosses_and_the_outcome_counts_what_was_withheld(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    r = search(nodes["31"], world["t31"], "Observation", world["number"])
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert matches(bundle) == [f"{nodes['31'].base}/Observation/{world['obs31']}"]
    withheld = [i for i in issues(bundle) if "province 11" in i["diagnostics"]]
    assert withheld and withheld[0]["diagnostics"].startswith("3 matching resource(s) withheld at province 11")
    docs = search(nodes["31"], world["t31"], "DocumentReference", world["number"]).json()
    assert matches(docs) == []
    assert any(i["diagnostics"].startswith("1 matching resource(s) withheld at province 11") for i in issues(docs))


def test_consent_to_the_hospital_at_home_lets_its_records_through_unchanged_and_revoking_stops_it(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    consent = grant(nodes, world, {"reference": f"Organization/{SH_ORG}"})
    try:
        bundle = search(nodes["31"], world["t31"], "Observation", world["number"]).json()
        remote = sorted(f"{nodes['11'].base}/Observation/{i}" for i in world["obs11"])
        assert sorted(matches(bundle)) == sorted(remote + [f"{nodes['31'].base}/Observation/{world['obs31']}"])
        assert bundle["total"] == 4
        assert not [i for i in issues(bundle) if "withheld at province 11" in i["diagnostics"]]
        for entry in bundle["entry"]:
            if entry["fullUrl"].startswith(nodes["11"].base):
                at_home = requests.get(entry["fullUrl"], headers=h(world["t11"]), timeout=10).json()
                assert entry["resource"] == at_home
    finally:
        revoke(nodes, world, consent)
    after = search(nodes["31"], world["t31"], "Observation", world["number"]).json()
    assert matches(after) == [f"{nodes['31'].base}/Observation/{world['obs31']}"]
    assert any("3 matching resource(s) withheld at province 11" in i["diagnostics"] for i in issues(after))


def test_paging_crosses_the_node_boundary(nodes: dict[str, Node], world: dict[str, Any]) -> None:
    consent = grant(nodes, world, {"reference": f"Organization/{SH_ORG}"})
    try:
        r = search(nodes["31"], world["t31"], "Observation", world["number"], _count="2")
        seen: list[str] = []
        pages = 0
        while True:
            assert r.status_code == 200, r.text
            bundle = r.json()
            seen += matches(bundle)
            pages += 1
            nxt = next((lk["url"] for lk in bundle["link"] if lk["relation"] == "next"), None)
            if nxt is None or pages > 6:
                break
            r = requests.get(nxt, headers=h(world["t31"]), timeout=30)
        assert pages >= 2
        expected = [f"{nodes['11'].base}/Observation/{i}" for i in world["obs11"]]
        expected.append(f"{nodes['31'].base}/Observation/{world['obs31']}")
        assert sorted(seen) == sorted(expected) and len(seen) == len(set(seen))
    finally:
        revoke(nodes, world, consent)


def test_consent_to_province_31_as_a_whole_and_the_audit_on_both_sides(nodes: dict[str, Node],
                                                                        world: dict[str, Any]) -> None:
    consent = grant(nodes, world, {"identifier": {"system": "urn:ehc:province", "value": "31"}})
    try:
        bundle = search(nodes["31"], world["t31"], "DocumentReference", world["number"]).json()
        assert matches(bundle) == [f"{nodes['11'].base}/DocumentReference/{world['doc11']}"]
    finally:
        revoke(nodes, world, consent)
    # node 11: the disclosure, with the original requester, visible through AuditEvent?patient=
    time.sleep(1.0)
    events = requests.get(f"{nodes['11'].base}/AuditEvent", params={"patient": f"Patient/{world['p11']['id']}",
                                                                    "_count": "100"},
                          headers=h(world["t11"]), timeout=20).json()
    agents = [[(a.get("who") or {}).get("identifier", {}).get("value") for a in e["resource"].get("agent", [])]
              + [str(a.get("policy")) for a in e["resource"].get("agent", [])] for e in events.get("entry") or []
              if e["search"]["mode"] == "match"]
    mine = [a for a in agents if world["sh"]["client_id"] in a]
    assert mine, agents
    assert any(SH_ORG in a for a in mine)
    assert any(any("node-31" in str(x) for x in a) for a in mine)
    # node 31: its query, and both chains verify
    local = requests.get(f"{nodes['31'].base}/AuditEvent", params={"_count": "200"}, headers=h(world["t31"]),
                         timeout=20).json()
    texts = [str(e["resource"]) for e in local.get("entry") or []]
    assert any("cross-province query" in t for t in texts)
    for p in ("00", "11", "31"):
        result = nodes[p].ehc("audit", "verify")
        assert result.exit_code == 0, (p, result.output)


def test_a_province_node_cannot_go_to_another_province_directly(nodes: dict[str, Node]) -> None:
    fed31 = nodes["31"].svc.extensions["federation"]
    from app.federation.registry import Node as Peer

    beijing = Peer("11", nodes["11"].base, {}, "", 0)
    r = requests.post(f"{nodes['11'].url}/oauth/token", timeout=10, data={
        "grant_type": "client_credentials", "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": fed31.peers.client_assertion(beijing)})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


@pytest.mark.parametrize(("down", "says"), [("11", "province 11"), ("00", "national node (province 00)")])
def test_a_down_node_costs_a_warning_naming_it_within_5_seconds(nodes: dict[str, Node], world: dict[str, Any],
                                                                 down: str, says: str) -> None:
    """The home node (11) or the national node (00) is down: node 31 answers with what it has, and says so."""
    nodes[down].stop()
    try:
        t0 = time.monotonic()
        r = search(nodes["31"], world["t31"], "Observation", world["number"])
        elapsed = time.monotonic() - t0
    finally:
        nodes[down].start()
    assert r.status_code == 200 and elapsed < 5, (r.status_code, elapsed)
    bundle = r.json()
    assert matches(bundle) == [f"{nodes['31'].base}/Observation/{world['obs31']}"]
    assert any(i["severity"] == "warning" and says in i["diagnostics"] and "unreachable" in i["diagnostics"]
               for i in issues(bundle))
