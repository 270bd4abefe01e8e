"""Attacks on the resident portal and the OAuth2/SMART authorization server, as an outsider, another app, another
resident or a former proxy would try them, against a real HTTP server on 127.0.0.1 (requests sessions where
cookies matter)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any
from urllib.parse import urlencode

import pytest
import requests

from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    REDIRECT,
    account,
    bearer,
    csrf_of,
    login_and_approve,
    redirect_params,
    register,
)
from tests.integration.portal_helpers import portal_login, resident

PASSWORD = "attack pass 1"
SCOPES = "launch/patient openid fhirUser offline_access patient/*.rs"


@pytest.fixture(scope="module")
def world(svc: Any) -> dict[str, Any]:
    me, _ = resident(svc, "攻", "甲", "1981-01-01", "501")
    other, _ = resident(svc, "攻", "乙", "1982-02-02", "502")
    account(svc, "13700001111", PASSWORD, me)
    account(svc, "13700002222", PASSWORD, other)
    a = register(svc, SCOPES, redirect_uris=[REDIRECT], public=True, name="App A")
    b = register(svc, SCOPES, redirect_uris=[REDIRECT], public=True, name="App B")
    return {"me": me, "other": other, "a": a["client_id"], "b": b["client_id"]}


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    return verifier, base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")


def authorize_url(live: str, client_id: str, challenge: str, redirect_uri: str = REDIRECT, **extra: str) -> str:
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": redirect_uri, "scope": SCOPES,
              "state": "st", "aud": f"{live}/fhir", "code_challenge": challenge, "code_challenge_method": "S256",
              **extra}
    return f"{live}/oauth/authorize?{urlencode(params)}"


def code_for(live: str, world: dict[str, Any], client: str = "a", phone: str = "13700001111",
             patient: str | None = None) -> tuple[str, str]:
    verifier, challenge = pkce()
    resp = login_and_approve(authorize_url(live, world[client], challenge), phone, PASSWORD,
                             patient_id=patient or world["me"])
    return redirect_params(resp)["code"], verifier


def redeem(live: str, client_id: str, code: str, verifier: str | None, redirect_uri: str = REDIRECT) -> Any:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri, "client_id": client_id}
    if verifier is not None:
        form["code_verifier"] = verifier
    return requests.post(f"{live}/oauth/token", data=form, timeout=10)


# -- redirect_uri ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("uri", [
    REDIRECT.upper(), REDIRECT + "/", REDIRECT + "/x", REDIRECT + "?x=1", REDIRECT + "#x", REDIRECT + "%2F..",
    "http://127.0.0.1:9@evil.example/callback", "http://evil.example@127.0.0.1:9/callback",
    "http://localhost:9/callback", "http://127.0.0.1/callback", "http://[::1]:9/callback", "http://127.1:9/callback",
    "https://127.0.0.1:9/callback", "//evil.example/callback", "http://127.0.0.1:9/callback%0d%0aX:%20y",
])
def test_a_redirect_uri_not_registered_exactly_is_never_redirected_to(live, world, uri):
    _, challenge = pkce()
    r = requests.get(authorize_url(live, world["a"], challenge, redirect_uri=uri), allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "Location" not in r.headers, (uri, r.status_code, r.headers.get("Location"))


def test_errors_after_the_redirect_uri_is_checked_go_to_the_registered_one_only(live, world):
    _, challenge = pkce()
    r = requests.get(authorize_url(live, world["a"], challenge, aud="https://evil.example/fhir"),
                     allow_redirects=False, timeout=10)
    assert r.status_code == 302 and r.headers["Location"].startswith(REDIRECT + "?")


# -- codes and PKCE --------------------------------------------------------------------------------------------

def test_a_code_is_used_once(live, world):
    code, verifier = code_for(live, world)
    first = redeem(live, world["a"], code, verifier)
    assert first.status_code == 200, first.text
    second = redeem(live, world["a"], code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"


def test_a_code_needs_its_verifier_and_its_redirect_uri(live, world):
    code, verifier = code_for(live, world)
    assert redeem(live, world["a"], code, None).status_code == 400
    code, verifier = code_for(live, world)
    assert redeem(live, world["a"], code, verifier, redirect_uri="http://127.0.0.1:9/other").status_code == 400
    code, verifier = code_for(live, world)
    assert redeem(live, world["a"], code, verifier[:-1]).status_code == 400


def test_a_code_of_app_a_is_not_redeemed_by_app_b(live, world):
    code, verifier = code_for(live, world)
    r = redeem(live, world["b"], code, verifier)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant", r.text


# -- refresh tokens --------------------------------------------------------------------------------------------

def grant(live: str, world: dict[str, Any], client: str = "a") -> dict[str, Any]:
    code, verifier = code_for(live, world, client)
    r = redeem(live, world[client], code, verifier)
    assert r.status_code == 200, r.text
    return r.json()


def refresh(live: str, client_id: str, token: str, **extra: str) -> Any:
    return requests.post(f"{live}/oauth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                      "client_id": client_id, **extra}, timeout=10)


def test_refresh_asks_no_more_than_was_granted(live, world):
    body = grant(live, world)
    wider = refresh(live, world["a"], body["refresh_token"], scope=SCOPES + " patient/*.cruds")
    assert wider.status_code == 400 and wider.json()["error"] == "invalid_scope", wider.text
    # the refusal did not spend it
    assert refresh(live, world["a"], body["refresh_token"]).status_code == 200


def test_refresh_token_of_app_a_is_useless_to_app_b(live, world):
    body = grant(live, world)
    assert refresh(live, world["b"], body["refresh_token"]).status_code == 400
    assert refresh(live, world["a"], body["refresh_token"]).status_code == 200


def test_app_b_cannot_revoke_or_introspect_app_as_tokens(live, world):
    body = grant(live, world)
    r = requests.post(f"{live}/oauth/revoke", data={"token": body["refresh_token"], "client_id": world["b"]},
                      timeout=10)
    assert r.status_code in (200, 400)
    assert requests.get(f"{live}/fhir/Patient/{world['me']}", headers=bearer(body["access_token"]),
                        timeout=10).status_code == 200
    assert refresh(live, world["a"], body["refresh_token"]).status_code == 200
    r = requests.post(f"{live}/oauth/introspect", data={"token": body["access_token"], "client_id": world["b"]},
                      timeout=10)
    assert r.status_code in (400, 401) or r.json() == {"active": False}, r.text


# -- the authorization server's login session ------------------------------------------------------------------

def test_login_form_without_its_csrf_token_signs_nobody_in(live, world):
    _, challenge = pkce()
    url = authorize_url(live, world["a"], challenge)
    s = requests.Session()
    r = s.post(url, data={"step": "login", "phone": "13700001111", "password": PASSWORD}, timeout=10,
               allow_redirects=False)
    assert r.status_code == 400
    r = s.get(url, timeout=10)
    assert 'name="phone"' in r.text  # still signed out


def test_patient_not_bound_cannot_be_chosen_at_approval(live, world):
    _, challenge = pkce()
    url = authorize_url(live, world["a"], challenge)
    s = requests.Session()
    page = s.get(url, timeout=10)
    page = s.post(url, data={"csrf": csrf_of(page.text), "step": "login", "phone": "13700001111",
                             "password": PASSWORD}, timeout=10)
    r = s.post(url, data={"csrf": csrf_of(page.text), "step": "approve", "decision": "approve",
                          "patient": world["other"]}, timeout=10, allow_redirects=False)
    assert r.status_code == 400 and "Location" not in r.headers
    r = s.post(url, data={"csrf": csrf_of(page.text), "step": "approve", "decision": "approve",
                          "patient": world["me"]}, timeout=10, allow_redirects=False)
    assert r.status_code == 302


# -- the portal's session ------------------------------------------------------------------------------------------

def test_a_session_id_planted_before_login_is_not_the_one_signed_in(live, world):
    s = requests.Session()
    s.get(f"{live}/portal/login", timeout=10)
    planted = s.cookies.get("ehc_portal")
    s, r = portal_login(live, "13700001111", PASSWORD, session=s)
    assert r.url.endswith("/portal/card")
    assert s.cookies.get("ehc_portal") != planted
    assert requests.get(f"{live}/portal/card", headers={"Cookie": f"ehc_portal={planted}"}, allow_redirects=False,
                        timeout=10).status_code == 302


def test_a_portal_cookie_copied_before_logout_is_dead_after_it(live, world):
    s, r = portal_login(live, "13700001111", PASSWORD)
    copied = s.cookies.get("ehc_portal")
    s.post(f"{live}/portal/logout", data={"csrf": csrf_of(r.text)}, timeout=10)
    assert requests.get(f"{live}/portal/card", headers={"Cookie": f"ehc_portal={copied}"}, allow_redirects=False,
                        timeout=10).status_code == 302


def test_nobody_else_is_unbound_acted_for_or_accepted(live, world):
    s, r = portal_login(live, "13700001111", PASSWORD)
    for path, data in (("family/unbind", {"patient": world["other"]}), ("family/act", {"patient": world["other"]}),
                       ("family/requests", {"request": f"x|{world['other']}", "decision": "accept"})):
        r = s.post(f"{live}/portal/{path}", data={"csrf": csrf_of(r.text), **data}, timeout=10)
        assert r.url.startswith(f"{live}/portal/family?m="), (path, r.url)
        assert "攻甲" in r.text  # still oneself


# -- names that are markup -----------------------------------------------------------------------------------------

MARKUP = '<script>alert(1)</script>"><img src=x onerror=alert(2)>'


def test_names_holding_markup_are_shown_as_text_in_the_portal_and_the_login_pages(live, svc):
    from app.auth.bindings import bind
    from tests.integration.auth_helpers import consent, create
    from tests.integration.portal_helpers import id_number, oauth_pages

    me = create(svc, {"resourceType": "Patient", "name": [{"text": MARKUP}], "gender": "male",
                      "birthDate": "1970-01-01",
                      "identifier": [{"system": "urn:oid:2.16.156.10011.1.3",
                                      "value": id_number("1970-01-01", "701")}]})
    kid = create(svc, {"resourceType": "Patient", "name": [{"family": "<b>", "given": ["<i onmouseover=x>"]}],
                       "gender": "male", "birthDate": "2019-01-01"})
    holder = account(svc, "13700004444", PASSWORD, me)
    bind(svc, auth_state(svc).store, holder, kid, "FTH")
    org = create(svc, {"resourceType": "Organization", "name": MARKUP})
    consent(svc, me, {"reference": f"Organization/{org}"})
    for day, value in (("2026-01-01", 1), ("2026-02-01", 2)):
        create(svc, {"resourceType": "Observation", "status": "final", "code": {"text": MARKUP},
                     "subject": {"reference": f"Patient/{me}"}, "effectiveDateTime": day,
                     "valueQuantity": {"value": value, "unit": MARKUP}, "referenceRange": [{"text": MARKUP}]})
    doc = create(svc, {"resourceType": "DocumentReference", "status": "current", "description": MARKUP,
                       "subject": {"reference": f"Patient/{me}"},
                       "content": [{"attachment": {"contentType": "text/html", "title": MARKUP,
                                                   "data": base64.b64encode(MARKUP.encode()).decode()}}]})
    s, r = portal_login(live, "13700004444", PASSWORD, me)
    pages = {"card": r.text}
    for path in ("family", "records", "consents", "accesses", f"records/document/{doc}"):
        pages[path] = s.get(f"{live}/portal/{path}", timeout=10).text
    attachment = s.get(f"{live}/portal/records/document/{doc}/0", timeout=10)
    assert attachment.headers["Content-Type"] == "application/octet-stream"  # text/html is never rendered
    act = s.post(f"{live}/portal/family/act", data={"csrf": csrf_of(pages["family"]), "patient": kid}, timeout=10)
    pages["picker"] = act.text  # the authorization server's patient picker lists both names
    pages["child's card"] = oauth_pages(s, act, "13700004444", PASSWORD, kid).text
    for name, html in pages.items():
        assert not [m for m in ("<script>alert", "<img src=x", "<b>", "<i onmouseover") if m in html], name
    assert "&lt;script&gt;" in pages["card"] and "&lt;script&gt;" in pages["picker"]


# -- who read my records ---------------------------------------------------------------------------------------

def test_who_read_my_records_shows_no_access_to_another_resident_alone(live, svc, world):
    from tests.integration.auth_helpers import secret_token

    hospital = register(svc, "system/*.rs", name="窥探测试医院")
    token = secret_token(live, hospital, "system/*.rs").json()["access_token"]
    assert requests.get(f"{live}/fhir/Patient/{world['other']}", headers=bearer(token), timeout=10).status_code == 200
    s, r = portal_login(live, "13700001111", PASSWORD)
    page = s.get(f"{live}/portal/accesses", timeout=10).text
    assert "窥探测试医院" not in page and world["other"] not in page
    requests.get(f"{live}/fhir/Patient", params={"_id": f"{world['me']},{world['other']}"}, headers=bearer(token),
                 timeout=10)
    page = s.get(f"{live}/portal/accesses", timeout=10).text
    assert page.count("窥探测试医院") == 1 and world["other"] not in page and "攻乙" not in page


# -- account enumeration by the answers ----------------------------------------------------------------------

def _login_message(live: str, world: dict[str, Any], phone: str, step: str) -> str:
    _, challenge = pkce()
    url = authorize_url(live, world["a"], challenge)
    s = requests.Session()
    page = s.get(url, timeout=10)
    r = s.post(url, data={"csrf": csrf_of(page.text), "step": step, "phone": phone, "password": "wrong password"},
               timeout=10)
    return r.text.split('<p class="msg">', 1)[1].split("<", 1)[0]


def test_login_and_sms_answer_alike_for_registered_and_unknown_numbers(live, svc, world):
    from app.auth import accounts

    st = auth_state(svc)
    for step in ("sms", "login"):
        known = _login_message(live, world, "13700002222", step)
        unknown = _login_message(live, world, "13799990000", step)
        assert known == unknown, (step, known, unknown)
    for phone in ("13700002222", "13799990000"):
        accounts.clear_failures(st.store, accounts.lock_key(st.keys, phone))


# == what the probe of 2026-11-30 found, each fixed since =============================================================
# Each test states the secure behaviour; each failed before its fix (they were strict xfails until then).

def _bound_pair(svc: Any, phone: str, seq: str) -> tuple[Any, str, str]:
    """(account, holder's patient, relative's patient): an adult son bound to his mother."""
    from app.auth.bindings import bind

    son, _ = resident(svc, "解", "子", "1980-01-01", seq)
    mother, _ = resident(svc, "解", "母", "1950-01-01", str(int(seq) + 1))
    holder = account(svc, phone, PASSWORD, son)
    bind(svc, auth_state(svc).store, holder, mother, "CHILD")
    return holder, son, mother


@pytest.mark.parametrize("uri", ["https://app.example.cn/回调", 'https://app.example.cn/"', "http://127.0.0.1:9/a\r\nb"])
def test_an_unregistered_redirect_uri_with_any_character_is_a_400_page(live, world, uri):
    _, challenge = pkce()
    r = requests.get(authorize_url(live, world["a"], challenge, redirect_uri=uri), allow_redirects=False, timeout=10)
    assert r.status_code == 400 and "Location" not in r.headers


def test_a_code_issued_before_unbinding_gives_nothing_after_it(live, svc, world):
    """A code (or a refresh token) issued while a relative was bound gave her records after the binding ended:
    the token endpoint never asked whether the account still acts for her."""
    from app.auth.bindings import bind, unbind

    holder, _, mother = _bound_pair(svc, "13700003333", "601")
    code, verifier = code_for(live, world, phone="13700003333", patient=mother)
    tokens = redeem(live, world["a"], *code_for(live, world, phone="13700003333", patient=mother)).json()
    unbind(svc, auth_state(svc).store, holder, mother)  # or the mother revokes the binding's Consent
    late = redeem(live, world["a"], code, verifier)
    assert late.status_code == 400 and late.json()["error"] == "invalid_grant", late.text
    assert refresh(live, world["a"], tokens["refresh_token"]).status_code == 400
    assert requests.get(f"{live}/fhir/Patient/{mother}", headers=bearer(tokens["access_token"]),
                        timeout=10).status_code == 401
    bind(svc, auth_state(svc).store, holder, mother, "CHILD")  # bound again: a new login works again
    again = redeem(live, world["a"], *code_for(live, world, phone="13700003333", patient=mother))
    assert again.status_code == 200, again.text


def test_a_forged_host_header_cannot_add_a_redirect_uri_to_the_portal_client(auth_app, live, svc, world):
    from app.auth.models import Client

    forged = auth_app.test_client()  # what a TLS front that passes Host on (deploy/nginx.conf) hands the app
    page = forged.get("/portal/login", base_url="https://evil.example")
    forged.post("/portal/login", base_url="https://evil.example", data={"csrf": csrf_of(page.get_data(as_text=True))})
    # the attacker's link to the real server, with the attacker's PKCE; the resident sees the portal's own name
    verifier, challenge = pkce()
    params = {"response_type": "code", "client_id": "ehc-resident-portal", "state": "s", "aud": f"{live}/fhir",
              "redirect_uri": "https://evil.example/portal/callback", "code_challenge": challenge,
              "code_challenge_method": "S256", "scope": "launch/patient openid fhirUser offline_access patient/*.rs"}
    resp = requests.get(f"{live}/oauth/authorize?{urlencode(params)}", allow_redirects=False, timeout=10)
    uris = auth_state(svc).store.get(Client, "ehc-resident-portal").redirect_uris
    try:
        assert "https://evil.example/portal/callback" not in uris
        assert resp.status_code == 400 and "Location" not in resp.headers  # no login page leads there
    finally:
        client = auth_state(svc).store.get(Client, "ehc-resident-portal")
        client.redirect_uris = [u for u in client.redirect_uris if "evil.example" not in u]
        auth_state(svc).store.save(client)
        auth_state(svc).server._clients.clear()  # its 5-second client cache holds the forged list


def test_a_login_cookie_copied_before_logout_approves_nothing_after_it(live, world):
    s, r = portal_login(live, "13700001111", PASSWORD)
    copied = s.cookies.get("ehc_session")
    s.post(f"{live}/portal/logout", data={"csrf": csrf_of(r.text)}, timeout=10)
    _, challenge = pkce()
    url = authorize_url(live, world["a"], challenge)
    thief = requests.Session()
    thief.cookies.set("ehc_session", copied)
    page = thief.get(url, timeout=10)
    assert 'value="approve"' not in page.text and 'name="phone"' in page.text


def test_the_login_cookie_is_secure_on_https(auth_app, world):
    _, challenge = pkce()
    params = {"response_type": "code", "client_id": world["a"], "redirect_uri": REDIRECT, "scope": SCOPES, "state": "s",
              "aud": "https://ehc.example.cn/fhir", "code_challenge": challenge, "code_challenge_method": "S256"}
    r = auth_app.test_client().get(f"/oauth/authorize?{urlencode(params)}", base_url="https://ehc.example.cn")
    assert r.status_code == 200 and "Secure" in r.headers["Set-Cookie"]


def test_other_peoples_failed_logins_through_the_front_do_not_block_a_resident(auth_settings, svc, world):
    """Behind the TLS front every request came from the front's address (nothing read X-Forwarded-For): the
    per-address login limit was one bucket for every resident. With EHC_TRUSTED_PROXIES=1 (docker-compose.yml)
    each client's own address counts; with the default 0 a client cannot choose its address by a header."""
    from dataclasses import replace

    from app import create_app
    from app.auth.ratelimit import Limit, RateLimiter

    def attempts(trusted: int) -> str:
        app = create_app(replace(auth_settings, trusted_proxies=trusted))
        auth_state(app.extensions["ehc"]).login_limiter = RateLimiter(Limit(rate=0.2, burst=10))  # the defaults
        front = {"REMOTE_ADDR": "127.0.0.1"}  # every request arrives from the front
        _, challenge = pkce()
        url = authorize_url("http://localhost", world["a"], challenge)
        for i in range(11):  # ten people elsewhere (or one attacker) fail through the front, then a resident
            web = app.test_client()
            page = web.get(url, environ_base=front)
            phone, password = (f"1360000{i:04d}", "guess") if i < 10 else ("13700001111", PASSWORD)
            r = web.post(url, data={"csrf": csrf_of(page.get_data(as_text=True)), "step": "login", "phone": phone,
                                    "password": password}, environ_base=front,
                         headers={"X-Forwarded-For": f"203.0.113.{i + 1}"})
        app.extensions["ehc"].handle.close()
        return r.get_data(as_text=True)

    assert 'value="approve"' in attempts(1)  # the resident's own address: not blocked by the others'
    assert 'value="approve"' not in attempts(0)  # a header believed from nobody: one bucket, as before


def test_the_sms_step_takes_as_long_for_an_unknown_number(live, svc, world):
    import statistics
    import time

    from app.auth import accounts

    st = auth_state(svc)
    svc.extensions["sms_sender"] = lambda phone, text: time.sleep(0.2)  # an SMS gateway answering in 200 ms
    try:
        def median(phone: str) -> float:
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                _login_message(live, world, phone, "sms")
                times.append(time.perf_counter() - t0)
            return statistics.median(times)

        known, unknown = median("13700002222"), median("13799990000")
    finally:
        svc.extensions.pop("sms_sender", None)
        accounts.clear_failures(st.store, accounts.lock_key(st.keys, "13700002222"))
    assert abs(known - unknown) < 0.1, (known, unknown)


def test_acting_for_a_relative_does_not_end_another_relatives_binding(live, svc):
    import re

    from app.auth.accounts import find_account
    from app.auth.bindings import bind
    from tests.integration.portal_helpers import oauth_pages

    st = auth_state(svc)
    mother, _ = resident(svc, "兄", "母", "1950-03-03", "801")
    elder, _ = resident(svc, "兄", "甲", "1975-03-03", "802")
    younger, _ = resident(svc, "兄", "乙", "1977-03-03", "803")
    bind(svc, st.store, account(svc, "13700005555", PASSWORD, elder), mother, "CHILD")
    theirs = bind(svc, st.store, account(svc, "13700006666", PASSWORD, younger), mother, "CHILD")
    s, _ = portal_login(live, "13700005555", PASSWORD, elder)
    page = s.get(f"{live}/portal/family", timeout=10)
    act = s.post(f"{live}/portal/family/act", data={"csrf": csrf_of(page.text), "patient": mother}, timeout=10)
    oauth_pages(s, act, "13700005555", PASSWORD, mother)
    page = s.get(f"{live}/portal/consents", timeout=10)
    item = re.search(r'<li class="consent" data-id="' + str(theirs.consent) + r'".*?</li>', page.text, re.S)
    version = re.search(r'name="version" value="([^"]+)"', item.group(0)) if item else None
    if version:
        s.post(f"{live}/portal/consents/{theirs.consent}/revoke", timeout=10,
               data={"csrf": csrf_of(page.text), "version": version.group(1)})
    assert mother in find_account(st.store, st.keys, "13700006666").patients


def test_the_portal_says_only_its_own_messages(live, world):
    s, _ = portal_login(live, "13700001111", PASSWORD)
    for path in ("family", "consents"):
        page = s.get(f"{live}/portal/{path}", params={"m": "账户异常，请致电 400-000-0000"}, timeout=10)
        said = page.text.split('<p class="note" role="status">', 1)[1].split("</p>", 1)[0] \
            if '<p class="note" role="status">' in page.text else ""
        assert "400-000-0000" not in said, path


def test_a_missing_portal_page_is_a_portal_page(live, world):
    s, _ = portal_login(live, "13700001111", PASSWORD)
    r = s.get(f"{live}/portal/records/document/nonexistent/0", timeout=10)
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")


def test_a_grant_form_replayed_after_revoking_does_not_say_granted(live, svc):
    import re

    from tests.integration.portal_helpers import form_of

    me, _ = resident(svc, "重", "放", "1983-03-03", "811")
    account(svc, "13700007777", PASSWORD, me)
    s, _ = portal_login(live, "13700007777", PASSWORD)
    form = {**form_of(s.get(f"{live}/portal/consents", timeout=10).text, "/portal/consents"), "target": "province",
            "province": "44", "class": ["Observation"], "start": "2026-01-01", "end": "2027-01-01"}
    page = s.post(f"{live}/portal/consents", data=form, timeout=10).text
    item = re.search(r'<li class="consent" data-id="([^"]+)".*?name="version" value="([^"]+)"', page, re.S)
    assert item
    s.post(f"{live}/portal/consents/{item.group(1)}/revoke", data={"csrf": csrf_of(page), "version": item.group(2)},
           timeout=10)
    again = s.post(f"{live}/portal/consents", data=form, timeout=10)
    said = again.text.split('<p class="note" role="status">', 1)[-1].split("<", 1)[0]
    assert said and said != "已授权", said


def test_a_grant_ends_30_days_after_the_login_however_often_it_is_refreshed(live, svc, world):
    import time

    from app.auth.models import Token, digest

    body = grant(live, world)
    store = auth_state(svc).store
    first = store.raw(Token, digest(body["refresh_token"]))
    time.sleep(1.1)
    rotated = refresh(live, world["a"], body["refresh_token"]).json()
    assert store.raw(Token, digest(rotated["refresh_token"]))["expires_at"] == first["expires_at"]
