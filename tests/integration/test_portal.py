"""The resident portal as a SMART client, driven with requests (the browser journeys are in tests/browser):
login through /oauth/authorize with PKCE, the card and its codes, records, consents, family, audit, security
headers, CSRF and logout."""

from __future__ import annotations

import pytest
import requests

from app.auth.models import Client
from app.auth.plugin import auth_state
from app.portal.registration import CLIENT_ID
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import account, bearer, csrf_of, stored_token
from tests.integration.portal_helpers import glucose, portal_login, resident

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
    page = s.get(f"{live}/portal/consents", timeout=10)
    form = {"csrf": csrf_of(page.text), "target": "province", "province": "44", "class": ["Observation"],
            "start": "2026-01-01", "end": "2027-01-01"}
    r = s.post(f"{live}/portal/consents", data=form, timeout=10)
    assert r.status_code == 200 and "已授权" in r.text, r.text[-3000:]
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
