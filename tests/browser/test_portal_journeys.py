"""The resident portal in headless Chromium at 360x780, one browser session through every journey:

log in with an SMS code → see the QR code, refresh it, and verify the shown code with $ehc-verify (valid) →
print the paper code (a static code that verifies, asking for confirmation) → switch to English and large text →
bind a child and act for them (whose card is shown is plain; the calls are audited with the parent as
requestor) → grant consent to a province and see the cross-province read succeed, revoke it and see it refused,
both in "who read my records" (filtered by organization) → the lab trend chart and a document opened inline →
log out. Every page is screenshot (into docs/portal/ with EHC_SCREENSHOTS=docs) and checked: lang, axe-core
(labels, contrast ...), the keyboard focus order, and no horizontal scrolling at 360 px.

All journeys are one test function: they share the signed-in browser, and pytest-xdist must not split them.
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
import segno

from app.auth.models import Token
from app.auth.plugin import auth_state
from app.fhir.operations.ehc_qrcode import qr_svg
from app.portal.registration import CLIENT_ID
from tests.browser.pages import check_page, shot, wait_for
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import account, bearer, create, register, secret_token, stored_token
from tests.integration.portal_helpers import glucose, resident

PHONE = "13822223333"
FJ = "application/fhir+json"
FAIL_DIR = Path(tempfile.gettempdir())


def _by_id(drv: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By

    return drv.find_element(By.ID, element_id)


def _css(drv: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return list(drv.find_elements(By.CSS_SELECTOR, selector))


def _click(drv: Any, element: Any) -> None:
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def _lang(drv: Any) -> str:
    return str(drv.execute_script("return document.documentElement.lang"))


def _select(drv: Any, element_id: str, value: str) -> None:
    """Choose an option (by script: a native select popup under mobile emulation would swallow the next click)."""
    element = _by_id(drv, element_id)
    drv.execute_script("arguments[0].value = arguments[1];"
                       "arguments[0].dispatchEvent(new Event('change', {bubbles: true}));", element, value)
    assert element.get_attribute("value") == value


def _verify(live: str, system_token: str, code: str) -> dict[str, Any]:
    r = requests.post(f"{live}/fhir/$ehc-verify", headers={**bearer(system_token), "Content-Type": FJ},
                      json={"resourceType": "Parameters", "parameter": [{"name": "token", "valueString": code}]},
                      timeout=10)
    assert r.status_code == 200, r.text
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in r.json()["parameter"]}


def _world(svc: Any) -> dict[str, Any]:
    me, _ = resident(svc, "王", "芳", "1960-04-12", "201")
    child, child_id = resident(svc, "王", "小宝", "2018-05-06", "202", guardian_phone=PHONE)
    for value, day in ((5.6, "2026-01-10T08:00:00+08:00"), (7.4, "2026-04-02T08:00:00+08:00"),
                       (6.3, "2026-09-15T08:00:00+08:00")):
        glucose(svc, me, value, day)
    buf = io.BytesIO()
    segno.make("discharge summary 出院小结").save(buf, kind="png", scale=6)
    binary = create(svc, {"resourceType": "Binary", "contentType": "image/png",
                          "securityContext": {"reference": f"Patient/{me}"},
                          "data": base64.b64encode(buf.getvalue()).decode()})
    doc = create(svc, {"resourceType": "DocumentReference", "status": "current",
                       "subject": {"reference": f"Patient/{me}"}, "description": "出院小结 Discharge summary",
                       "date": "2026-10-01T10:00:00+08:00",
                       "content": [{"attachment": {"contentType": "image/png", "url": f"Binary/{binary}",
                                                   "title": "出院小结"}}]})
    org = create(svc, {"resourceType": "Organization", "name": "上海某医院",
                       "identifier": [{"system": "urn:ehc:province", "value": "31"}]}, province="31")
    create(svc, {"resourceType": "Encounter", "status": "finished",
                  "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                  "type": [{"text": "内分泌科门诊 Endocrinology clinic"}], "subject": {"reference": f"Patient/{me}"},
                  "period": {"start": "2026-09-15T09:00:00+08:00", "end": "2026-09-15T09:30:00+08:00"}})
    shanghai = register(svc, "system/*.rs", province="31", organization=org, name="上海某医院 HIS")
    account(svc, PHONE, "a long password 1", me)
    return {"me": me, "child": child, "child_id": child_id, "doc": doc, "org": org, "shanghai": shanghai}


def _oauth_login_with_sms(drv: Any, sent: list[tuple[str, str]]) -> None:
    """The authorization server's own login page (the same one every SMART app uses): ask for a code, type it."""
    wait_for(lambda: _css(drv, "input[name=phone]"), what="the OAuth login page")
    _by_id(drv, "phone").send_keys(PHONE)
    _click(drv, _css(drv, "button[name=step][value=sms]")[0])
    wait_for(lambda: sent, what="the SMS code")
    code = sent[-1][1].split("验证码 ")[1][:6]
    wait_for(lambda: _css(drv, "input[name=sms_code]"), what="the code field")
    phone = _by_id(drv, "phone")
    phone.clear()
    phone.send_keys(PHONE)
    _by_id(drv, "sms_code").send_keys(code)
    _click(drv, _css(drv, "button[name=step][value=login]")[0])


def _approve(drv: Any, patient: str | None = None) -> None:
    wait_for(lambda: "/oauth/authorize" in drv.current_url and _css(
        drv, "button[name=step][value=pick], button[name=decision][value=approve]"), what="the authorization page")
    if patient and _css(drv, "button[name=step][value=pick]"):
        _click(drv, _css(drv, f"input[name=patient][value='{patient}']")[0])
        _click(drv, _css(drv, "button[name=step][value=pick]")[0])
    wait_for(lambda: _css(drv, "button[name=decision][value=approve]"), what="the approval page")
    _click(drv, _css(drv, "button[name=decision][value=approve]")[0])


def test_resident_journeys(browser, live, svc):  # noqa: PLR0915 - one session through all journeys
    drv = browser
    world = _world(svc)
    me, child = world["me"], world["child"]
    problems: list[str] = []
    system = stored_token(svc, "system/Patient.rs system/AuditEvent.rs")
    sent: list[tuple[str, str]] = []
    svc.extensions["sms_sender"] = lambda phone, text: sent.append((phone, text))
    try:
        # -- log in with an SMS code ---------------------------------------------------------------------------
        drv.get(f"{live}/portal/login")
        check_page(drv, "01-login", problems)
        _click(drv, _by_id(drv, "start-login"))
        _oauth_login_with_sms(drv, sent)
        _approve(drv)
        wait_for(lambda: drv.current_url.endswith("/portal/card"), what="the card page after login")
        assert "王芳" in _by_id(drv, "whose").text

        # -- my card: the QR code, its countdown and refresh; the shown code verifies --------------------------
        qr = _by_id(drv, "qr")
        first = qr.get_attribute("data-token")
        assert qr.get_attribute("src") == "data:image/svg+xml;base64," + base64.b64encode(qr_svg(first)).decode()
        assert "****" in _by_id(drv, "card-number").text and len(_by_id(drv, "card-number").text) < 30
        left = int(_by_id(drv, "countdown").text)
        assert 10 <= left <= 60
        wait_for(lambda: int(_by_id(drv, "countdown").text) < left, 5, "the countdown to tick")
        check_page(drv, "02-card", problems)
        _click(drv, _by_id(drv, "refresh-qr"))
        second = wait_for(lambda: (v := _by_id(drv, "qr").get_attribute("data-token")) != first and v,
                          what="a new QR code")
        shown = _verify(live, system, second)
        assert shown["valid"] is True and shown["patient"] == {"reference": f"Patient/{me}"}, shown
        assert _verify(live, system, second)["reason"] == "replayed"  # a dynamic code is good once

        # -- print the paper code ------------------------------------------------------------------------------
        _click(drv, _by_id(drv, "print-code"))
        paper = wait_for(lambda: _css(drv, "#static-qr"), what="the paper code")[0].get_attribute("data-token")
        check_page(drv, "03-paper-code", problems)
        verified = _verify(live, system, paper)
        assert verified["valid"] is True and verified["type"] == "static" and verified["requiresConfirmation"] is True
        drv.get(f"{live}/portal/card")

        # -- English and large text -------------------------------------------------------------------------------
        _click(drv, _css(drv, "button[name=lang][value=en]")[0])
        wait_for(lambda: _lang(drv) == "en", what="the English page")
        _click(drv, wait_for(lambda: _css(drv, "button[name=large][value='1']"), what="large text")[0])
        wait_for(lambda: "large" in drv.find_element("tag name", "html").get_attribute("class"), what="large mode")
        assert drv.execute_script("return document.documentElement.lang") == "en"
        assert "My electronic health card" in drv.page_source
        assert drv.execute_script("return parseFloat(getComputedStyle(document.documentElement).fontSize)") >= 22
        check_page(drv, "04-card-english-large-text", problems)
        _click(drv, _css(drv, "button[name=lang][value=zh]")[0])
        wait_for(lambda: _lang(drv) == "zh-CN", what="the Chinese page")
        _click(drv, wait_for(lambda: _css(drv, "button[name=large][value='0']"), what="normal text")[0])
        wait_for(lambda: "large" not in (drv.find_element("tag name", "html").get_attribute("class") or ""),
                 what="normal text")

        # -- family: bind a child (under 14: by the guardian) and act for them --------------------------------------
        drv.get(f"{live}/portal/family")
        _by_id(drv, "name").send_keys("王小宝")
        _by_id(drv, "id_number").send_keys(world["child_id"])
        _select(drv, "relationship", "MTH")
        _click(drv, _by_id(drv, "bind"))
        wait_for(lambda: "王小宝" in _by_id(drv, "relatives").text, what="the bound child")
        check_page(drv, "05-family", problems)
        _click(drv, _css(drv, f"button.act[data-patient='{child}']")[0])
        _approve(drv, child)  # the authorization server asks which bound patient; the portal's token is for the child
        wait_for(lambda: drv.current_url.endswith("/portal/card"), what="the child's card")
        banner = _by_id(drv, "whose")
        assert "正在为家人办理" in banner.text and "王小宝" in banner.text
        assert "proxy" in banner.get_attribute("class")
        assert _by_id(drv, "card-holder").text == "王小宝"
        check_page(drv, "06-card-acting-for-child", problems)
        # the proxy's calls are audited as proxy: requestor the parent, patient the child
        def proxy_events() -> list[Any]:
            events = requests.get(f"{live}/fhir/AuditEvent", params={"patient": child, "_count": 200},
                                  headers=bearer(system), timeout=10).json()
            return [e["resource"] for e in events.get("entry", [])
                    if any(a.get("requestor") and (a.get("who") or {}).get("reference") == f"Patient/{me}"
                           for a in e["resource"].get("agent", []))]

        proxy = wait_for(proxy_events, 15, "the proxy's AuditEvents")
        assert proxy, "no AuditEvent of the child's record names the parent as requestor"
        _click(drv, _css(drv, "#whose button")[0])  # back to myself
        wait_for(lambda: "本人" in _by_id(drv, "whose").text, what="the resident's own card")

        # -- consent to a province: the cross-province read succeeds, then after revoking is refused -------------
        sh = secret_token(live, world["shanghai"], "system/Observation.rs system/Patient.rs").json()["access_token"]
        obs = requests.get(f"{live}/fhir/Observation", params={"patient": me}, headers=bearer(sh), timeout=10).json()
        assert not [e for e in obs.get("entry", []) if e["search"]["mode"] == "match"]  # withheld without consent
        one = glucose(svc, me, 6.0, "2026-10-20T08:00:00+08:00")
        assert requests.get(f"{live}/fhir/Observation/{one}", headers=bearer(sh), timeout=10).status_code == 403
        drv.get(f"{live}/portal/consents")
        _click(drv, _by_id(drv, "target-province"))
        _select(drv, "province", "31")
        _click(drv, _by_id(drv, "grant"))
        wait_for(lambda: _css(drv, "li.consent[data-status=active]"), what="the new consent")
        item = _css(drv, "li.consent[data-status=active]")[0]
        assert "上海" in item.text and "检验检查" in item.text
        check_page(drv, "07-consents", problems)
        assert requests.get(f"{live}/fhir/Observation/{one}", headers=bearer(sh), timeout=10).status_code == 200
        consent_id = item.get_attribute("data-id")
        _click(drv, _css(drv, "li.consent[data-status=active] button.revoke")[0])
        wait_for(lambda: _css(drv, f"li.consent[data-id='{consent_id}'][data-status=inactive]"), what="revoked")
        assert requests.get(f"{live}/fhir/Observation/{one}", headers=bearer(sh), timeout=10).status_code == 403
        versions = requests.get(f"{live}/fhir/Consent/{consent_id}/_history", headers=bearer(system), timeout=10)
        if versions.status_code == 200:
            assert versions.json()["total"] == 2  # granted (1), revoked (2): each change a Consent version

        # -- who read my records: the read under consent and the refusal, by organization --------------------------
        def shanghai_entries() -> list[Any]:
            drv.get(f"{live}/portal/accesses?org={world['org']}")
            items = _css(drv, "#accesses li[data-org]")
            ok = [i for i in items if "refused" not in (i.get_attribute("class") or "")]
            refused = [i for i in items if "refused" in (i.get_attribute("class") or "")]
            return [ok, refused] if ok and refused else []

        ok, refused = wait_for(shanghai_entries, 15, "the Shanghai accesses in the audit trail")
        assert all("上海某医院" in i.text for i in ok + refused)
        assert any("查看了您的" in i.text and "检验检查" in i.text for i in ok), [i.text for i in ok]
        assert any("已拒绝" in i.text for i in refused)
        assert all(i.get_attribute("data-org") == world["org"] for i in ok + refused)
        check_page(drv, "08-who-read-my-records", problems)

        # -- my records: the lab table, the trend chart, a document opened inline --------------------------------
        drv.get(f"{live}/portal/records")
        chart = wait_for(lambda: _css(drv, "article.lab figure.chart svg"), what="the trend chart")[0]
        assert len(chart.find_elements("css selector", "circle")) == 4
        assert "葡萄糖" in chart.get_attribute("aria-label")
        rows = _css(drv, "article.lab tbody tr")
        assert len(rows) == 4 and "7.4" in drv.page_source
        assert "内分泌科门诊" in _by_id(drv, "visits").text
        check_page(drv, "09-records", problems)
        _click(drv, _css(drv, f"a[href='/portal/records/document/{world['doc']}']")[0])
        image = wait_for(lambda: _css(drv, "#attachment-0"), what="the attachment")[0]
        wait_for(lambda: drv.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image),
                 what="the image to load")
        check_page(drv, "10-document", problems)

        # -- log out --------------------------------------------------------------------------------------------
        drv.get(f"{live}/portal/card")
        _click(drv, _by_id(drv, "logout"))
        wait_for(lambda: "/portal/login" in drv.current_url, what="the login page after logout")
        assert "您已安全退出" in drv.page_source
        drv.get(f"{live}/portal/card")
        wait_for(lambda: "/portal/login" in drv.current_url, what="a redirect to login")
        live_refresh = auth_state(svc).store.collection(Token).count_documents(
            {"client_id": CLIENT_ID, "kind": "refresh", "revoked": {"$ne": True}, "expires_at": {"$gt": time.time()}})
        assert live_refresh == 0, "logout must revoke the portal's refresh tokens"
        shot(drv, "11-logged-out")
    except Exception:
        (FAIL_DIR / "portal-failed-page.html").write_text(drv.page_source, encoding="utf-8")
        drv.save_screenshot(str(FAIL_DIR / "portal-failed-page.png"))
        print(f"the page at the failure: {FAIL_DIR}/portal-failed-page.html, .png")  # noqa: T201
        raise
    finally:
        svc.extensions.pop("sms_sender", None)
    assert not problems, "\n".join(problems)
