"""The resident portal of a province node in headless Chromium (360x780), with records kept at another province:
three real nodes on loopback (national 00, Beijing 11, Shanghai 31; tests/integration/federation_helpers.py).
A resident signed in at Shanghai's portal sees that Beijing holds records they have not consented to share
with Shanghai, and why; after their consent at Beijing, the Beijing results appear beside Shanghai's, marked
"from Beijing", the Beijing document opens inline, and "who read my records" lists the accesses recorded in
Beijing. A suspended card shows the reason recorded with the suspension. Each page is screenshot (into
docs/portal/ with EHC_SCREENSHOTS=docs) and checked like the others (lang, axe-core, focus order, 360 px)."""

from __future__ import annotations

import base64
import io
from typing import Any

import requests
import segno

from tests.browser.conftest import SHOTS
from tests.browser.pages import check_page, wait_for
from tests.browser.test_portal_journeys import _by_id, _click, _css
from tests.integration.auth_helpers import account
from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import (
    Node,
    consent_body,
    glucose,
    h,
    new_id_number,
    patient_body,
    post_resource,
)
from tests.integration.federation_helpers import wait_for as poll

PHONE, PASSWORD = "13900031777", "a long password 31"


def _world(nodes: dict[str, Node]) -> dict[str, Any]:
    bj = nodes["11"].client("system/Patient.cruds system/Observation.cruds system/DocumentReference.cruds "
                            "system/Consent.cruds system/Organization.cruds", organization="org-bj-xiehe")
    sh = nodes["31"].client("system/Patient.cruds system/Observation.cruds", organization="org-sh-ruijin")
    t11, t31 = nodes["11"].token(bj), nodes["31"].token(sh)
    number = new_id_number()
    p11 = post_resource(nodes["11"], t11, patient_body(number, "周", "敏"))
    p31 = post_resource(nodes["31"], t31, patient_body(number, "周", "敏"))
    for value, day in ((7.9, "2026-02-11T08:00:00+08:00"), (8.6, "2026-05-20T08:00:00+08:00")):
        post_resource(nodes["11"], t11, glucose(p11["id"], value, day, reference_range=True))
    post_resource(nodes["31"], t31, glucose(p31["id"], 6.2, "2026-10-08T08:00:00+08:00", reference_range=True))
    buf = io.BytesIO()
    segno.make("北京协和医院 出院小结").save(buf, kind="png", scale=6)
    doc = post_resource(nodes["11"], t11, {
        "resourceType": "DocumentReference", "status": "current", "description": "北京出院小结 Discharge summary",
        "date": "2026-05-22T10:00:00+08:00", "subject": {"reference": f"Patient/{p11['id']}"},
        "content": [{"attachment": {"contentType": "image/png", "title": "出院小结",
                                    "data": base64.b64encode(buf.getvalue()).decode()}}]})
    account(nodes["31"].svc, PHONE, PASSWORD, p31["id"])
    fed = nodes["00"].svc.extensions["federation"]
    assert poll(lambda: (d := fed.index.find(number)) and {r["province"] for r in fed.index.refs(d)} >= {"11", "31"},
                timeout=20)
    return {"t11": t11, "t31": t31, "p11": p11, "p31": p31, "doc": doc["id"], "sh": sh}


def _login(drv: Any, url: str) -> None:
    drv.get(f"{url}/portal/login")
    _click(drv, _by_id(drv, "start-login"))
    wait_for(lambda: _css(drv, "input[name=password]"), what="the OAuth login page")
    _by_id(drv, "phone").send_keys(PHONE)
    _by_id(drv, "password").send_keys(PASSWORD)
    _click(drv, _css(drv, "button[name=step][value=login]")[0])
    wait_for(lambda: "/portal/card" in drv.current_url or _css(drv, "button[name=decision][value=approve]"),
             what="the approval page")
    if "/portal/card" not in drv.current_url:
        _click(drv, _css(drv, "button[name=decision][value=approve]")[0])
    wait_for(lambda: drv.current_url.endswith("/portal/card"), what="the card page after login")


def test_records_of_another_province(browser, nodes):
    drv = browser
    world = _world(nodes)
    url = nodes["31"].url
    problems: list[str] = []
    _login(drv, url)

    # -- without consent at Beijing: nothing from there, and why -----------------------------------------------
    drv.get(f"{url}/portal/records")
    note = wait_for(lambda: _css(drv, ".remote-withheld[data-province='11']"), 60, "the withheld note")[0]
    assert "3 条记录" in note.text and "授权" in note.text and "上海（31）" in note.text, note.text
    assert not _css(drv, ".badge.prov") and "8.6" not in drv.page_source
    check_page(drv, "12-records-other-province-withheld", problems)

    # -- the resident consents at Beijing (there, for province 31): Beijing's records appear, marked --------------
    consent = post_resource(nodes["11"], world["t11"], consent_body(
        world["p11"]["id"], {"identifier": {"system": "urn:ehc:province", "value": "31"}, "display": "上海"}))
    drv.get(f"{url}/portal/records")
    wait_for(lambda: _css(drv, ".remote-shown[data-province='11']"), 60, "the Beijing records")
    rows = [r.text for r in _css(drv, "table tbody tr")]
    assert any("8.6" in r and "来自 北京（11）" in r for r in rows), rows
    assert any("6.2" in r and "北京" not in r for r in rows), rows  # Shanghai's own result, unmarked
    assert _css(drv, "figure.chart svg")  # one trend across both provinces
    check_page(drv, "13-records-other-province", problems)
    # and further down: the results table, each Beijing row marked (shot() always shows the top of the page)
    drv.execute_script("arguments[0].scrollIntoView({block: 'start'})", _css(drv, "table")[0])
    drv.save_screenshot(str(SHOTS / "13-records-other-province-results.png"))
    link = next(a for a in _css(drv, "a") if "北京出院小结" in a.text)
    _click(drv, link)
    img = wait_for(lambda: _css(drv, "#attachment-0"), 60, "the Beijing document")[0]
    wait_for(lambda: drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img), 30,
             "the image to load")
    assert "来自 北京（11）" in drv.page_source
    check_page(drv, "14-document-other-province", problems)

    # -- who read my records: Beijing's accesses, marked ---------------------------------------------------------
    drv.get(f"{url}/portal/accesses")
    items = wait_for(lambda: [li for li in _css(drv, "#accesses li") if "北京（11）" in li.text], 60,
                     "the Beijing accesses")
    assert any("org-bj-xiehe" in li.text for li in items), [li.text for li in items]
    check_page(drv, "15-who-read-other-province", problems)
    r = requests.delete(f"{nodes['11'].base}/Consent/{consent['id']}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204)

    # -- a suspended card says why (the reason recorded with the suspension) -------------------------------------
    counter = nodes["31"].token(world["sh"])
    status = f"{nodes['31'].base}/Patient/{world['p31']['id']}/$ehc-status"
    why = "手机丢失，本人于12320挂失"
    body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"},
                                                         {"name": "reason", "valueString": why}]}
    assert requests.post(status, json=body, headers=h(counter), timeout=10).status_code == 200
    try:
        drv.get(f"{url}/portal/card")
        reason = wait_for(lambda: _css(drv, "#card-reason"), 20, "the reason")[0]
        assert why in reason.text and not _css(drv, "#qr")
        check_page(drv, "16-card-suspended-reason", problems)
    finally:
        body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "active"}]}
        requests.post(status, json=body, headers=h(counter), timeout=10)
    assert not problems, "\n".join(problems)
