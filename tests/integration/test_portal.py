"""The resident portal as a SMART client, driven with requests (the browser journeys are in tests/browser):
login through /oauth/authorize with PKCE, the card and its codes, records, consents, family, audit, security
headers, CSRF and logout."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import requests

from app.auth.models import Client
from app.auth.plugin import auth_state
from app.portal.registration import CLIENT_ID
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import account, bearer, create, csrf_of, stored_token
from tests.integration.portal_helpers import glucose, grant_province_44, portal_login, resident

PASSWORD = "portal pass 1"


@pytest.fixture(scope="module")
def world(svc):
    me, me_id = resident(svc, "王", "芳", "1960-04-12", "101")
    for value, day in ((5.6, "2026-01-10"), (7.2, "2026-04-02"), (6.4, "2026-09-15")):
        glucose(svc, me, value, day)
    account(svc, "13811112222", PASSWORD, me)
    return {"me": me, "me_id": me_id}


def test_portal_client_is_registered_at_startup(svc):
    client = auth_state(svc).store.get(Client, CLIENT_ID)
    assert client is not None and client.public
    assert "patient/Consent.cru" in client.scopes.split() and "user/" not in client.scopes


def test_login_card_records_logout(live, world):
    s, r = portal_login(live, "13811112222", PASSWORD)
    assert r.url == f"{live}/portal/card", r.text[:500]
    assert "王芳" in r.text and 'id="qr"' in r.text
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    cookie = next(c for c in s.cookies if c.name == "ehc_portal")
    assert cookie.has_nonstandard_attr("HttpOnly") and cookie.path == "/portal"
    records = s.get(f"{live}/portal/records", timeout=10)
    assert records.status_code == 200 and "<svg" in records.text and "7.2" in records.text
    # a POST without the CSRF token is refused
    assert s.post(f"{live}/portal/card/qr", timeout=10).status_code == 400
    out = s.post(f"{live}/portal/logout", data={"csrf": csrf_of(r.text)}, timeout=10)
    assert out.url.startswith(f"{live}/portal/login")
    assert s.get(f"{live}/portal/card", timeout=10, allow_redirects=False).status_code == 302


def test_pages_render(live, world):
    s, r = portal_login(live, "13811112222", PASSWORD)
    for path in ("family", "consents", "accesses"):
        page = s.get(f"{live}/portal/{path}", timeout=10)
        assert page.status_code == 200, page.text[:3000]


def test_consent_grant_and_revoke_are_consent_versions(live, world, svc):
    s, r = portal_login(live, "13811112222", PASSWORD)
    grant_province_44(s, live)
    token = stored_token(svc, "system/Consent.rs")
    bundle = requests.get(f"{live}/fhir/Consent", params={"patient": world["me"]}, headers=bearer(token),
                          timeout=10).json()
    consent = bundle["entry"][0]["resource"]
    assert consent["provision"]["actor"][0]["reference"]["identifier"] == {"system": "urn:ehc:province",
                                                                          "value": "44"}
    assert consent["meta"]["versionId"] == "1"
    page = s.get(f"{live}/portal/consents", timeout=10)
    r = s.post(f"{live}/portal/consents/{consent['id']}/revoke", data={"csrf": csrf_of(page.text), "version": "1"},
               timeout=10)
    assert "已撤销" in r.text
    again = requests.get(f"{live}/fhir/Consent/{consent['id']}", headers=bearer(token), timeout=10).json()
    assert again["status"] == "inactive" and again["meta"]["versionId"] == "2"


def test_a_grant_sent_twice_is_one_consent(live, svc):
    """A double click on "grant" (or a reload of the answer) sent the form twice and stored two identical
    Consents: revoking the one the resident saw left the other granting access. The form carries a one-time
    grant id, and the grant is a conditional create on it."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.portal_helpers import form_of

    me, _ = resident(svc, "卫", "授", "1982-03-04", "321")
    account(svc, "13811117771", PASSWORD, me)
    s, _ = portal_login(live, "13811117771", PASSWORD)
    form = {**form_of(s.get(f"{live}/portal/consents", timeout=10).text, "/portal/consents"),
            "target": "province", "province": "44", "class": ["Observation"], "start": "2026-01-01",
            "end": "2027-01-01"}
    assert form["grant"]

    with ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda _: s.post(f"{live}/portal/consents", data=form, timeout=30).text, range(3)))
    assert all("已授权" in a for a in answers)
    token = stored_token(svc, "system/Consent.rs")
    found = requests.get(f"{live}/fhir/Consent", params={"patient": me, "status": "active"}, headers=bearer(token),
                         timeout=10).json()
    assert found["total"] == 1, found["total"]


def test_every_portal_form_needs_its_csrf_token(live, world, auth_app):
    s, r = portal_login(live, "13811112222", PASSWORD)
    posts = [rule.rule for rule in auth_app.url_map.iter_rules()
             if rule.rule.startswith("/portal/") and "POST" in (rule.methods or ())]
    assert len(posts) >= 10
    for path in posts:
        path = path.replace("<cid>", "x")
        for data in ({}, {"csrf": "forged"}):
            resp = s.post(f"{live}{path}", data=data, timeout=10, allow_redirects=False)
            assert resp.status_code == 400, (path, resp.status_code)
    # the session is still good after the refusals
    assert s.get(f"{live}/portal/card", timeout=10, allow_redirects=False).status_code == 200


def test_cookie_is_secure_behind_tls_and_csp_is_strict(auth_app):
    client = auth_app.test_client()
    resp = client.get("/portal/login", base_url="https://ehc.example.cn")
    cookie = resp.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/portal" in cookie
    plain = auth_app.test_client().get("/portal/login").headers["Set-Cookie"]
    assert "Secure" not in plain
    csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
    html = resp.get_data(as_text=True)
    assert "<script>" not in html and 'lang="zh-CN"' in html and "onclick" not in html


def test_session_is_shorter_than_the_refresh_token_and_expires(live, world, svc):
    from app.auth.server import ACCESS_TTL, REFRESH_TTL
    from app.portal import session as portal_session

    assert portal_session.IDLE_SECONDS < portal_session.MAX_SECONDS < REFRESH_TTL
    assert portal_session.IDLE_SECONDS <= ACCESS_TTL
    s, r = portal_login(live, "13811112222", PASSWORD)
    # the server keeps no usable token: the stored state is encrypted with a key only the cookie holds
    sid = next(c.value for c in s.cookies if c.name == "ehc_portal")
    col = svc.handle.db[portal_session.COLLECTION]
    import hashlib

    doc = col.find_one({"_id": hashlib.sha256(sid.encode()).hexdigest()})
    assert doc is not None and "access" not in str(doc) and sid not in str(doc)
    col.update_one({"_id": doc["_id"]}, {"$set": {"expires_at": 0}})  # idle too long
    resp = s.get(f"{live}/portal/card", timeout=10, allow_redirects=False)
    assert resp.status_code == 302 and "/portal/login" in resp.headers["Location"]


def test_suspended_card_explains_and_shows_no_code(live, world, svc):
    from app.ehc.cards import EHC_SYSTEM
    from app.ehc.plugin import card_service

    s, r = portal_login(live, "13811112222", PASSWORD)
    res = svc.repo.read("Patient", world["me"]).resource
    card = next(i["value"] for i in res["identifier"] if i["system"] == EHC_SYSTEM and i.get("use") != "old")
    service = card_service(svc)
    service.cards.set_status(card, "suspended", world["me"], "lost phone")
    try:
        page = s.get(f"{live}/portal/card", timeout=10)
        assert page.status_code == 200
        assert "已挂失" in page.text and "解除挂失" in page.text and 'id="qr"' not in page.text
        assert card[:4] in page.text and card not in page.text  # masked
    finally:
        service.cards.set_status(card, "active", world["me"])


def _params(body):
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in body["parameter"]}


def test_card_status_reason_flows_to_the_api_and_the_portal(live, world, svc):
    """Why a card is suspended is recorded when it is set ($ehc-status POST), answered by the status API (POST
    and GET, for the resident's own token too), and shown by the portal; the public revocation list has no
    reason."""
    me = world["me"]
    counter = stored_token(svc, "system/Patient.cruds", province="11")
    mine = stored_token(svc, "patient/*.rs", patient=me, province="11")
    other, _ = resident(svc, "郑", "某", "1971-01-01", "151")
    theirs = stored_token(svc, "patient/*.rs", patient=other, province="11")
    url = f"{live}/fhir/Patient/{me}/$ehc-status"
    why = "手机丢失（本人来电挂失）"
    body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"},
                                                         {"name": "reason", "valueString": why}]}
    too_long = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"},
                                                             {"name": "reason", "valueString": "x" * 501}]}
    bad = requests.post(url, json=too_long, headers=bearer(counter, **{"Content-Type": "application/fhir+json"}),
                        timeout=10)
    assert bad.status_code == 400 and bad.json()["issue"][0]["expression"] == ["reason"]
    r = requests.post(url, json=body, headers=bearer(counter, **{"Content-Type": "application/fhir+json"}),
                      timeout=10)
    assert r.status_code == 200, r.text
    out = _params(r.json())
    assert out["status"] == "suspended" and out["reason"] == why and out["since"].endswith("Z")
    card = out["ehcId"]
    try:
        got = requests.get(url, headers=bearer(mine), timeout=10)  # the resident reads their own card's status
        assert got.status_code == 200, got.text
        assert _params(got.json()) | {"patient": None} == out | {"patient": None}
        # the resident may read, not set; another resident may not even read
        assert requests.post(url, json=body, headers=bearer(mine, **{"Content-Type": "application/fhir+json"}),
                             timeout=10).status_code == 403
        assert requests.get(url, headers=bearer(theirs), timeout=10).status_code in (403, 404)
        public = requests.get(f"{live}/ehc/revocations", timeout=10).json()
        listed = next(c for c in public["cards"] if c["ehcId"] == card)
        assert listed["status"] == "suspended" and why not in json.dumps(public, ensure_ascii=False)
        s, _ = portal_login(live, "13811112222", PASSWORD)
        page = s.get(f"{live}/portal/card", timeout=10)
        reason = re.search(r'<p id="card-reason">(.*?)</p>', page.text, re.S)
        assert reason and why in reason.group(1), page.text[-3000:]
        assert 'id="qr"' not in page.text
    finally:
        again = requests.post(url, json={"resourceType": "Parameters", "parameter": [
            {"name": "status", "valueCode": "active"}]},
            headers=bearer(counter, **{"Content-Type": "application/fhir+json"}), timeout=10)
    assert again.status_code == 200 and "reason" not in _params(again.json())
    assert "reason" not in _params(requests.get(url, headers=bearer(mine), timeout=10).json())
    page = s.get(f"{live}/portal/card", timeout=10)
    assert 'id="qr"' in page.text and 'id="card-reason"' not in page.text


def test_a_child_registered_with_the_id_number_alone_is_bound_by_the_parent(live, svc):
    """Hospitals often send a child's ID number without Patient.birthDate. The age came from birthDate alone, so
    such a child counted as an adult: the binding waited for the child's own login, which a child does not have.
    The number embeds the birth date."""
    from app.auth.accounts import find_account
    from tests.integration.portal_helpers import id_number

    parent, _ = resident(svc, "孙", "父", "1985-05-05", "303")
    number = id_number("2020-06-06", "304")
    child = create(svc, {"resourceType": "Patient", "name": [{"family": "孙", "given": ["小"]}],
                         "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": number}],
                         "contact": [{"relationship": [{"coding": [{"code": "FTH"}]}],
                                      "telecom": [{"system": "phone", "value": "+86 139-7777-8888"}]}]})
    account(svc, "13977778888", PASSWORD, parent)
    s, _ = portal_login(live, "13977778888", PASSWORD)
    page = s.get(f"{live}/portal/family", timeout=10)
    r = s.post(f"{live}/portal/family/bind", data={"csrf": csrf_of(page.text), "name": "孙小", "id_number": number,
                                                   "relationship": "FTH"}, timeout=10)
    assert "已绑定" in r.text, r.text[-1500:]
    st = auth_state(svc)
    assert child in find_account(st.store, st.keys, "13977778888").patients


def test_a_child_is_bound_only_by_an_account_whose_number_the_childs_record_gives(live, svc):
    """A child's name and ID number are known to many (a school, a clinic), and a child cannot confirm with a
    login of its own: anyone who knew them was bound at once and read the child's records. The binding now
    needs the child's record to give the account's phone number (the guardian's contact the hospital recorded)."""
    from app.auth.accounts import find_account

    child, number = resident(svc, "周", "小", "2019-03-03", "305", guardian_phone="13922221111")
    st = auth_state(svc)

    def bind_as(phone: str, family: str, birth: str, seq: str) -> tuple[Any, Any]:
        """A resident with an account on `phone` binds the child as its mother: (the session, the answer)."""
        holder, _ = resident(svc, family, "某", birth, seq)
        account(svc, phone, PASSWORD, holder)
        s, _ = portal_login(live, phone, PASSWORD)
        page = s.get(f"{live}/portal/family", timeout=10)
        return s, s.post(f"{live}/portal/family/bind", timeout=10, data={
            "csrf": csrf_of(page.text), "name": "周小", "id_number": number, "relationship": "MTH"})

    s, r = bind_as("13944445555", "吴", "1980-08-08", "306")  # a stranger who knows the name and the number
    assert "未登记您的手机号" in r.text, r.text[-1500:]
    assert child not in find_account(st.store, st.keys, "13944445555").patients
    assert "周小" not in s.get(f"{live}/portal/family", timeout=10).text  # not listed as a relative either
    s, r = bind_as("13922221111", "周", "1988-09-09", "307")  # the mother, whose number the hospital recorded
    assert child in find_account(st.store, st.keys, "13922221111").patients, r.text[-1500:]


def test_adult_relative_confirms_with_own_login_then_unbind(live, world, svc):
    from app.auth.accounts import find_account

    son, _ = resident(svc, "赵", "子", "1990-02-03", "301")
    mother, mother_id = resident(svc, "钱", "母", "1950-07-08", "302")
    account(svc, "13933334444", PASSWORD, son)
    account(svc, "13955556666", PASSWORD, mother)
    st = auth_state(svc)
    s, r = portal_login(live, "13933334444", PASSWORD)
    page = s.get(f"{live}/portal/family", timeout=10)
    wrong = s.post(f"{live}/portal/family/bind", data={"csrf": csrf_of(page.text), "name": "钱某",
                                                       "id_number": mother_id, "relationship": "CHILD"}, timeout=10)
    assert wrong.status_code == 400 and "不匹配" in wrong.text  # a wrong name reveals nothing
    typed = mother_id.translate(str.maketrans("0123456789X", "０１２３４５６７８９Ｘ"))  # an input method's digits
    asked = s.post(f"{live}/portal/family/bind", data={"csrf": csrf_of(page.text), "name": "钱母",
                                                       "id_number": typed, "relationship": "CHILD"}, timeout=10)
    assert "已发送绑定请求" in asked.text
    assert mother not in find_account(st.store, st.keys, "13933334444").patients  # not yet
    # the mother signs in herself and accepts
    m, r = portal_login(live, "13955556666", PASSWORD)
    fam = m.get(f"{live}/portal/family", timeout=10)
    assert "139****4444" in fam.text and "子女" in fam.text
    from tests.integration.portal_helpers import form_of

    form = form_of(fam.text, "/portal/family/requests")
    done = m.post(f"{live}/portal/family/requests", data={**form, "decision": "accept"}, timeout=10)
    assert "已同意绑定" in done.text
    assert find_account(st.store, st.keys, "13933334444").patients == [son, mother]
    # the son now acts for his mother (the authorization server asks which patient)
    page = s.get(f"{live}/portal/family", timeout=10)
    assert "钱母" in page.text
    from tests.integration.portal_helpers import oauth_pages

    act = s.post(f"{live}/portal/family/act", data={"csrf": csrf_of(page.text), "patient": mother}, timeout=10)
    card = oauth_pages(s, act, "13933334444", PASSWORD, mother)
    assert card.url.endswith("/portal/card") and "正在为家人办理" in card.text and "钱母" in card.text
    # unbind: the account loses the patient, the portal its token
    page = s.get(f"{live}/portal/family", timeout=10)
    gone = s.post(f"{live}/portal/family/unbind", data={"csrf": csrf_of(page.text), "patient": mother}, timeout=10)
    assert "已解除绑定" in gone.text
    assert find_account(st.store, st.keys, "13933334444").patients == [son]
    assert "本人" in s.get(f"{live}/portal/card", timeout=10).text


def test_a_request_under_way_does_not_bring_back_a_session_signed_out(auth_app):
    """A request of the same browser (or of someone holding its cookie) still under way when the resident signs
    out wrote the session back when it ended, tokens included: signed out, the session lived on. Only a new
    session is inserted now; an existing one is replaced only while it still exists."""
    import secrets
    import time

    from app.portal.session import PortalSession, _load

    with auth_app.test_request_context("/portal/card"):
        signed_in = PortalSession(secrets.token_urlsafe(32), {"account": "k", "tokens": {"p1": "t"}},
                                  int(time.time()), True)
        signed_in.store()
        under_way = _load(signed_in.sid)
        under_way.set("acting", "p1")  # it changed the session, so it writes it when it ends
        _load(signed_in.sid).end()  # meanwhile: sign out
        under_way.store()
        after = _load(signed_in.sid)
        assert not after.logged_in and after.sid != signed_in.sid


def test_an_acceptance_sent_twice_binds_once(live, svc):
    """A double click on "accept" sends the form twice at once: the binding is made once, with one
    RelatedPerson and one Consent. Before, both submissions found the request pending and bound, leaving a
    second active Consent that recorded no binding: revoking it from the consents page ended nothing."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.integration.portal_helpers import form_of

    son, _ = resident(svc, "冯", "子", "1991-02-03", "311")
    mother, mother_id = resident(svc, "陈", "母", "1951-07-08", "312")
    account(svc, "13933334455", PASSWORD, son)
    account(svc, "13955556677", PASSWORD, mother)
    s, _ = portal_login(live, "13933334455", PASSWORD)
    page = s.get(f"{live}/portal/family", timeout=10)
    asked = s.post(f"{live}/portal/family/bind", data={"csrf": csrf_of(page.text), "name": "陈母",
                                                       "id_number": mother_id, "relationship": "CHILD"}, timeout=10)
    assert "已发送绑定请求" in asked.text
    m, _ = portal_login(live, "13955556677", PASSWORD)
    form = form_of(m.get(f"{live}/portal/family", timeout=10).text, "/portal/family/requests")

    def accept(_: int) -> str:
        return m.post(f"{live}/portal/family/requests", data={**form, "decision": "accept"}, timeout=30).text

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(accept, range(4)))
    assert sum("已同意绑定" in a for a in answers) == 1, [("已同意绑定" in a, "已处理" in a) for a in answers]
    consents = svc.repo.db["Consent"].find({"res.patient.reference": f"Patient/{mother}", "res.status": "active"})
    related = svc.repo.db["RelatedPerson"].find({"res.patient.reference": f"Patient/{mother}"})
    assert len(list(consents)) == 1 and len(list(related)) == 1


def test_a_relative_ends_a_binding_from_her_own_consents(live, svc):
    """Only the account holder could unbind: the bound relative saw the binding among her consents and could
    not end it. Revoking it there now ends the binding (the holder's account loses her, its tokens for her are
    revoked)."""
    from app.auth.accounts import find_account
    from app.auth.bindings import bind

    st = auth_state(svc)
    son, _ = resident(svc, "何", "子", "1979-04-04", "311")
    mother, _ = resident(svc, "何", "母", "1949-05-05", "312")
    holder = account(svc, "13911112233", PASSWORD, son)
    binding = bind(svc, st.store, holder, mother, "CHILD")
    account(svc, "13911114455", PASSWORD, mother)
    m, _ = portal_login(live, "13911114455", PASSWORD)
    page = m.get(f"{live}/portal/consents", timeout=10)
    item = re.search(r'<li class="consent" data-id="' + binding.consent + r'".*?</li>', page.text, re.S)
    assert item and "绑定的家人" in item.group(0) and "撤销授权" in item.group(0), page.text[-3000:]
    version = re.search(r'name="version" value="([^"]+)"', item.group(0)).group(1)  # type: ignore[union-attr]
    r = m.post(f"{live}/portal/consents/{binding.consent}/revoke", timeout=10,
               data={"csrf": csrf_of(page.text), "version": version})
    assert "已撤销授权" in r.text, r.text[-1500:]
    assert mother not in find_account(st.store, st.keys, "13911112233").patients


def test_acting_for_a_relative_whose_binding_ended_returns_to_oneself(live, svc):
    """The son acts for his mother; she revokes the binding's consent. His next page sent him to the sign-in page
    as if his own session had expired, with the banner still saying he acted for her. He now stays signed in,
    back to himself, told why."""
    from app.auth.bindings import bind
    from tests.integration.portal_helpers import oauth_pages

    son, _ = resident(svc, "韩", "子", "1979-04-04", "321")
    mother, _ = resident(svc, "韩", "母", "1949-05-05", "332")
    binding = bind(svc, auth_state(svc).store, account(svc, "13911116677", PASSWORD, son), mother, "CHILD")
    s, _ = portal_login(live, "13911116677", PASSWORD, son)
    page = s.get(f"{live}/portal/family", timeout=10)
    act = s.post(f"{live}/portal/family/act", data={"csrf": csrf_of(page.text), "patient": mother}, timeout=10)
    assert "正在为家人办理" in oauth_pages(s, act, "13911116677", PASSWORD, mother).text
    herself = stored_token(svc, "patient/Consent.cru", patient=mother)
    consent = requests.get(f"{live}/fhir/Consent/{binding.consent}", headers=bearer(herself), timeout=10).json()
    r = requests.put(f"{live}/fhir/Consent/{binding.consent}", json={**consent, "status": "inactive"},
                     headers=bearer(herself, **{"Content-Type": "application/fhir+json"}), timeout=10)
    assert r.status_code == 200, r.text
    r = s.get(f"{live}/portal/card", timeout=10)  # one process here: the revocation cleared its token cache
    assert r.url.startswith(f"{live}/portal/family") and "已切换回本人" in r.text, (r.url, r.text[-1500:])
    assert "正在为家人办理" not in r.text
    assert "韩子" in s.get(f"{live}/portal/card", timeout=10).text  # his own card


def test_portal_has_no_back_door_to_records():
    """The portal reads and writes records only through the FHIR API (app.portal.fhirclient)."""
    from pathlib import Path

    import app.portal as portal

    for path in Path(portal.__file__).parent.glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert ".repo." not in text and "get_doc(" not in text and "searcher" not in text, path.name


def test_trend_chart_svg_is_static_and_describes_every_value():
    from datetime import datetime

    from app.portal.charts import Point, trend_svg

    svg = trend_svg([Point(datetime(2026, 1, 1), 5.5), Point(datetime(2026, 2, 1), 7.25),
                     Point(datetime(2026, 3, 1), 4.0)], "葡萄糖趋势图", "mmol/L", 3.9, 6.1)
    assert svg.startswith("<svg") and "<script" not in svg and "style=" not in svg
    assert svg.count("<circle") == 3 and svg.count('fill="#a11b1b"') == 1  # 7.25 is above the range
    assert "2026-01-01 5.5 mmol/L; 2026-02-01 7.2 mmol/L; 2026-03-01 4 mmol/L" in svg
    assert 'role="img"' in svg and "<title>葡萄糖趋势图</title>" in svg


def test_records_page_answers_for_results_a_float_axis_cannot_step_through(live, svc):
    """Two results of 1e17 and 1e17 + 16 (valid FHIR decimals, which a resident's app with Observation write
    access can store) made the chart's gridline loop spin forever: the records page never answered, and its
    worker thread stayed busy. Equal results of 1e20 ended in a 500."""
    me, _ = resident(svc, "极", "值", "1970-07-07", "102")
    account(svc, "13811113333", PASSWORD, me)
    for code, value, day in (("2345-7", 1e17, "2026-01-10"), ("2345-7", 1e17 + 16, "2026-02-10"),
                             ("2093-3", 1e20, "2026-03-10"), ("2093-3", 1e20, "2026-04-10")):
        create(svc, {"resourceType": "Observation", "status": "final", "effectiveDateTime": day,
                     "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                     "subject": {"reference": f"Patient/{me}"}, "valueQuantity": {"value": value, "unit": "mmol/L"}})
    s, _ = portal_login(live, "13811113333", PASSWORD)
    r = s.get(f"{live}/portal/records", timeout=10)
    assert r.status_code == 200 and "1e+20" in r.text and "1e+17" in r.text  # the table still lists them


def test_document_attachments_open_inline_only_for_safe_types(live, world, svc):
    import base64

    from tests.integration.auth_helpers import create

    me = world["me"]
    pdf = base64.b64encode(b"%PDF-1.4\n% a tiny test file\n").decode()
    svg = base64.b64encode(b"<svg xmlns='http://www.w3.org/2000/svg'><script>alert(1)</script></svg>").decode()
    doc = create(svc, {"resourceType": "DocumentReference", "status": "current",
                       "subject": {"reference": f"Patient/{me}"}, "description": "检查报告",
                       "content": [{"attachment": {"contentType": "application/pdf", "data": pdf}},
                                   {"attachment": {"contentType": "image/svg+xml", "data": svg}}]})
    stranger, _ = resident(svc, "孙", "某", "1970-01-01", "401")
    other = create(svc, {"resourceType": "DocumentReference", "status": "current",
                         "subject": {"reference": f"Patient/{stranger}"},
                         "content": [{"attachment": {"contentType": "application/pdf", "data": pdf}}]})
    s, r = portal_login(live, "13811112222", PASSWORD)
    page = s.get(f"{live}/portal/records/document/{doc}", timeout=10)
    assert page.status_code == 200 and "<iframe" in page.text
    first = s.get(f"{live}/portal/records/document/{doc}/0", timeout=10)
    assert first.headers["Content-Type"] == "application/pdf" and first.content.startswith(b"%PDF")
    assert first.headers["Content-Disposition"].startswith("inline")
    assert first.headers["X-Frame-Options"] == "SAMEORIGIN"
    second = s.get(f"{live}/portal/records/document/{doc}/1", timeout=10)
    assert second.headers["Content-Type"] == "application/octet-stream"
    assert second.headers["Content-Disposition"].startswith("attachment")
    # another resident's document: the API refuses the portal's token, the portal answers 404
    assert s.get(f"{live}/portal/records/document/{other}", timeout=10).status_code == 404
    assert s.get(f"{live}/portal/records/document/{other}/0", timeout=10).status_code == 404


def test_break_the_glass_and_refusals_are_highlighted(live, world, svc):
    me = world["me"]
    obs = glucose(svc, me, 9.9, "2026-11-01T08:00:00+08:00")
    glass = stored_token(svc, "user/Observation.rs", province="31", break_glass=True, purpose="ETREAT")
    plain = stored_token(svc, "user/Observation.rs", province="31")
    assert requests.get(f"{live}/fhir/Observation/{obs}", headers=bearer(glass), timeout=10).status_code == 200
    assert requests.get(f"{live}/fhir/Observation/{obs}", headers=bearer(plain), timeout=10).status_code == 403
    s, r = portal_login(live, "13811112222", PASSWORD)

    def shown() -> str | None:
        page = s.get(f"{live}/portal/accesses", timeout=10).text
        return page if "紧急调阅" in page and "已拒绝" in page else None

    from tests.integration.auth_helpers import wait_until

    assert wait_until(shown, 10)
    page = shown() or ""
    assert 'class="glass"' in page and 'class="refused"' in page
    # the date filter: nothing before 2000
    old = s.get(f"{live}/portal/accesses", params={"to": "2000-01-01"}, timeout=10).text
    assert "没有符合条件的记录" in old
    bad = s.get(f"{live}/portal/accesses", params={"from": "yesterday"}, timeout=10).text
    assert "日期格式" in bad


def test_language_switch_returns_to_the_page(live, world):
    s, r = portal_login(live, "13811112222", PASSWORD)
    page = s.get(f"{live}/portal/records", timeout=10)
    en = s.post(f"{live}/portal/prefs", data={"csrf": csrf_of(page.text), "lang": "en", "next": "/portal/records"},
                timeout=10)
    assert en.url == f"{live}/portal/records" and '<html lang="en"' in en.text and "Lab results" in en.text
    big = s.post(f"{live}/portal/prefs", data={"csrf": csrf_of(en.text), "large": "1", "next": "/portal/card/print"},
                 timeout=10)  # a POST-only page: back to the start page instead
    assert big.url == f"{live}/portal/card" and 'class="large"' in big.text
    away = s.post(f"{live}/portal/prefs", data={"csrf": csrf_of(big.text), "lang": "zh", "next": "https://evil.example/"},
                  timeout=10)
    assert away.url == f"{live}/portal/card" and '<html lang="zh-CN"' in away.text
