"""The resident portal in a federation: a resident signed in to the portal of node 31 (Shanghai) sees their
records kept at node 11 (Beijing), fetched through the server's own FHIR API and the federation path (national
node, node 11's consent decision and audit), marked with their province. Without the resident's consent at
node 11 nothing of node 11 is shown and the page says why; another resident, and tokens of another province,
cannot use the path to reach the records. Driven through the portal's HTTP pages with requests against three
real nodes on loopback (tests/integration/federation_helpers.py); the browser journeys stay on one node."""

from __future__ import annotations

import re
from typing import Any

import pytest
import requests

from tests.integration.auth_helpers import account, stored_token
from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import (
    ID_SYSTEM,
    Node,
    consent_body,
    glucose,
    h,
    new_id_number,
    patient_body,
    post_resource,
    wait_for,
)
from tests.integration.portal_helpers import portal_login

PASSWORD = "fed portal pass 1"
PHONE, OTHER_PHONE = "13900031001", "13900031002"
HOME_PROVINCE = "https://ehc.example.cn/fhir/StructureDefinition/home-province"


@pytest.fixture(scope="module")
def world(nodes: dict[str, Node]) -> dict[str, Any]:
    bj = nodes["11"].client("system/Patient.cruds system/Observation.cruds system/DocumentReference.cruds "
                            "system/Consent.cruds system/AuditEvent.rs", organization="org-bj-xiehe")
    sh = nodes["31"].client("system/Patient.cruds system/Observation.cruds", organization="org-sh-ruijin")
    t11, t31 = nodes["11"].token(bj), nodes["31"].token(sh)
    number, other_number = new_id_number(), new_id_number()
    # The resident was treated in Beijing (records at node 11) and now lives in Shanghai (portal at node 31).
    p11 = post_resource(nodes["11"], t11, patient_body(number, "周", "敏"))
    p31 = post_resource(nodes["31"], t31, patient_body(number, "周", "敏"))
    other31 = post_resource(nodes["31"], t31, patient_body(other_number, "吴", "刚"))
    obs11 = post_resource(nodes["11"], t11, glucose(p11["id"], 8.8, "2026-03-03"))
    doc11 = post_resource(nodes["11"], t11, {
        "resourceType": "DocumentReference", "status": "current", "description": "北京出院小结",
        "subject": {"reference": f"Patient/{p11['id']}"},
        "content": [{"attachment": {"contentType": "text/plain", "data": "5Ye66Zmi5bCP57uT", "title": "出院小结"}}]})
    obs31 = post_resource(nodes["31"], t31, glucose(p31["id"], 5.1, "2026-10-10"))
    account(nodes["31"].svc, PHONE, PASSWORD, p31["id"])
    account(nodes["31"].svc, OTHER_PHONE, PASSWORD, other31["id"])
    # node 11 has indexed the resident at the national node: a search by ID number reaches it
    assert wait_for(lambda: _indexed(nodes, number), timeout=20)
    return {"t11": t11, "t31": t31, "number": number, "p11": p11, "p31": p31, "other31": other31,
            "obs11": obs11["id"], "doc11": doc11["id"], "obs31": obs31["id"], "other_number": other_number}


def _indexed(nodes: dict[str, Node], number: str) -> bool:
    fed = nodes["00"].svc.extensions["federation"]
    doc = fed.index.find(number)
    return bool(doc and {r["province"] for r in fed.index.refs(doc)} >= {"11", "31"})


def _records(nodes: dict[str, Node], phone: str = PHONE) -> tuple[requests.Session, str]:
    s, r = portal_login(nodes["31"].url, phone, PASSWORD)
    assert r.url.endswith("/portal/card"), r.text[:1000]
    page = s.get(f"{nodes['31'].url}/portal/records", timeout=60)
    assert page.status_code == 200, page.text[:3000]
    return s, page.text


def _badges(html: str) -> list[str]:
    return re.findall(r'class="badge prov" data-province="(\d+)"', html)


def test_without_consent_nothing_of_node_11_is_shown_and_the_page_says_why(nodes, world):
    _, html = _records(nodes)
    assert "5.1" in html  # the resident's record at this node
    assert "8.8" not in html and "北京出院小结" not in html and not _badges(html)
    note = re.search(r'<p class="alert remote-withheld" data-province="11">([^<]+)</p>', html)
    assert note, html[:4000]
    assert "2 条记录" in note.group(1) and "授权" in note.group(1) and "北京（11）" in note.group(1)
    assert "上海（31）" in note.group(1)  # for which province the consent would be needed
    s, _ = portal_login(nodes["31"].url, PHONE, PASSWORD)
    page = s.get(f"{nodes['31'].url}/portal/accesses", timeout=60).text
    assert 'class="alert remote-withheld" data-province="11"' in page and not _badges(page)


def test_with_consent_at_node_11_the_records_show_marked_with_their_province(nodes, world):
    actor = {"identifier": {"system": "urn:ehc:province", "value": "31"}}
    consent = post_resource(nodes["11"], world["t11"], consent_body(world["p11"]["id"], actor))
    try:
        s, html = _records(nodes)
        assert "8.8" in html and "5.1" in html  # one trend: Beijing's and Shanghai's glucose together
        assert "<svg" in html
        assert _badges(html).count("11") >= 2 and "31" not in _badges(html)
        assert 'class="note remote-shown" data-province="11"' in html
        assert "remote-withheld" not in html
        # the Beijing document opens through the same federated search; its attachment inline
        link = re.search(r'href="(/portal/records/document/' + world["doc11"] + r'\?province=11)"', html)
        assert link, html[:4000]
        doc = s.get(nodes["31"].url + link.group(1).replace("&amp;", "&"), timeout=60)
        assert doc.status_code == 200 and "北京出院小结" in doc.text and 'data-province="11"' in doc.text
        att = s.get(f"{nodes['31'].url}/portal/records/document/{world['doc11']}/0?province=11", timeout=60)
        assert att.status_code == 200 and att.headers["Content-Type"].startswith("text/plain")
        assert att.content.decode() == "出院小结"
        assert att.headers["Content-Disposition"].startswith("inline")
        # a document id that is not the resident's at that province: not found
        assert s.get(f"{nodes['31'].url}/portal/records/document/nope/0?province=11", timeout=60).status_code == 404
        # node 11 audited the disclosure: the portal client of province 31, through the national node
        events = requests.get(f"{nodes['11'].base}/AuditEvent", headers=h(world["t11"]), timeout=20,
                              params={"entity": f"Observation/{world['obs11']}", "_count": "50"}).json()
        policies = [p for e in events.get("entry") or [] for a in e["resource"].get("agent") or []
                    for p in a.get("policy") or []]
        assert any("for node-31" in p and "province 31" in p for p in policies), policies
        clients = [a["who"]["identifier"]["value"] for e in events.get("entry") or []
                   for a in e["resource"].get("agent") or []
                   if (a.get("who") or {}).get("identifier", {}).get("system") == "urn:ehc:client"]
        assert "ehc-resident-portal" in clients
        # "who read my records" adds node 11's accesses: the Beijing hospital's, and (with "mine") the portal's
        page = s.get(f"{nodes['31'].url}/portal/accesses", timeout=60).text
        items = re.findall(r'<li class="[^"]*" data-org="([^"]*)">(.*?)</li>', page, re.S)
        beijing = [body for org, body in items if 'data-province="11"' in body]
        assert any("org-bj-xiehe" in body for body in beijing), page[-4000:]
        assert "remote-withheld" not in page
        mine = s.get(f"{nodes['31'].url}/portal/accesses?mine=1", timeout=60).text
        portal_at_31 = r"居民门户（经上海（31）平台，您本人或家人）</strong> 查询了您的 (检验检查|文档)"
        assert re.search(portal_at_31, mine), mine[-3000:]
    finally:
        r = requests.delete(f"{nodes['11'].base}/Consent/{consent['id']}", headers=h(world["t11"]), timeout=10)
        assert r.status_code in (200, 204)
    _, html = _records(nodes)  # revoked: gone again, and explained
    assert "8.8" not in html and "remote-withheld" in html


def test_another_resident_and_foreign_tokens_cannot_reach_the_records(nodes, world):
    actor = {"identifier": {"system": "urn:ehc:province", "value": "31"}}
    consent = post_resource(nodes["11"], world["t11"], consent_body(world["p11"]["id"], actor))
    try:
        # another resident of node 31, in the portal: their own page, nothing of the first resident
        _, html = _records(nodes, OTHER_PHONE)
        assert "8.8" not in html and "北京出院小结" not in html and not _badges(html)
        # ... and with a resident token on the API, naming the first resident's ID number, alone or beside theirs
        other = stored_token(nodes["31"].svc, "patient/*.rs", patient=world["other31"]["id"], province="31")
        mine, theirs = f"{ID_SYSTEM}|{world['other_number']}", f"{ID_SYSTEM}|{world['number']}"
        for value in (theirs, f"{mine},{theirs}", f"{theirs},{mine}"):
            bundle = requests.get(f"{nodes['31'].base}/Observation", params={"patient.identifier": value},
                                  headers=h(other), timeout=30).json()
            assert not [e for e in bundle.get("entry") or [] if e.get("extension")], (value, bundle)
            assert world["obs11"] not in str(bundle) and world["obs31"] not in str(bundle)
        # the resident's own token may not widen its search with includes or a second identifier
        own = stored_token(nodes["31"].svc, "patient/*.rs", patient=world["p31"]["id"], province="31")
        bundle = requests.get(f"{nodes['31'].base}/Observation", headers=h(own), timeout=30,
                              params={"patient.identifier": theirs}).json()
        assert world["obs11"] in str(bundle)  # the control: the own token does reach it
        bundle = requests.get(f"{nodes['31'].base}/Observation", headers=h(own), timeout=30,
                              params={"patient.identifier": f"{theirs},{mine}"}).json()
        assert world["obs11"] not in str(bundle)
        # a token of another province's node is not a token here
        t11_resident = stored_token(nodes["11"].svc, "patient/*.rs", patient=world["p11"]["id"], province="11")
        r = requests.get(f"{nodes['31'].base}/Observation", params={"patient.identifier": theirs},
                         headers=h(t11_resident), timeout=30)
        assert r.status_code == 401
        # a client registered at node 31 for another province (44) is refused by node 11: node 31 speaks only
        # for its own province, and the consent names province 31
        foreign = nodes["31"].client("system/Observation.rs", name="province 44 app")
        foreign_token = stored_token(nodes["31"].svc, "system/Observation.rs", province="44")
        del foreign
        bundle = requests.get(f"{nodes['31'].base}/Observation", params={"patient.identifier": theirs},
                              headers=h(foreign_token), timeout=30).json()
        assert world["obs11"] not in str(bundle)
        assert not [e for e in bundle.get("entry") or [] if e.get("extension")]
    finally:
        requests.delete(f"{nodes['11'].base}/Consent/{consent['id']}", headers=h(world["t11"]), timeout=10)
