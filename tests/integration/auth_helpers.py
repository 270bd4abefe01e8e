"""Fixtures and helpers for the auth tests: an app with auth_required=True served on 127.0.0.1 (werkzeug
make_server in a thread), client registration, signed client assertions (RS384 / ES384), resident
accounts, the SMART authorization-code flow driven by fhirclient + requests, and records written as if by
another province. Import the fixtures into a test module with `from tests.integration.auth_helpers import *`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from app.auth.accounts import create_account
from app.auth.bindings import bind
from app.auth.consent import policy_rule
from app.auth.models import Token, digest, now
from app.auth.plugin import auth_state
from app.auth.registration import register_client
from app.config import Settings
from app.store.repository import WriteContext
from tests.live import serve_in_thread

FJ = "application/fhir+json"
REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect Location


@pytest.fixture(scope="module")
def auth_settings(settings: Settings) -> Settings:
    return replace(settings, auth_required=True)


@pytest.fixture(scope="module")
def auth_app(auth_settings: Settings) -> Any:
    from app import create_app

    flask_app = create_app(auth_settings)
    flask_app.testing = True
    svc = flask_app.extensions["ehc"]
    auth_state(svc).token_limiter.limit.rate = 10_000.0  # tests issue many tokens quickly
    auth_state(svc).token_limiter.limit.burst = 10_000
    auth_state(svc).login_limiter.limit.burst = 1_000
    yield flask_app
    svc.handle.close()


@pytest.fixture(scope="module")
def svc(auth_app: Any) -> Any:
    return auth_app.extensions["ehc"]


@pytest.fixture(scope="module")
def web(auth_app: Any) -> Any:
    """A test client of the app with auth on."""
    return auth_app.test_client()


@pytest.fixture(scope="module")
def live(auth_app: Any) -> Any:
    """Base URL (http://127.0.0.1:<port>) of the app served in a thread."""
    with serve_in_thread(auth_app) as url:
        yield url


# -- clients, keys, tokens ---------------------------------------------------------------------------------

def register(svc: Any, scopes: str, province: str = "11", **kw: Any) -> dict[str, Any]:
    return register_client(auth_state(svc).store, name=kw.pop("name", "test client"), scopes=scopes,
                           province=province, **kw)


def rsa_key() -> RSAKey:
    key = RSAKey.generate_key(2048, {"alg": "RS384", "use": "sig"})
    key.ensure_kid()
    return key


def ec_key() -> ECKey:
    key = ECKey.generate_key("P-384", {"alg": "ES384", "use": "sig"})
    key.ensure_kid()
    return key


def public_jwks(*keys: Any) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def assertion(client_id: str, key: Any, aud: str, alg: str = "RS384", lifetime: int = 240,
              jti: str | None = None, **claims: Any) -> str:
    t = now()
    body = {"iss": client_id, "sub": client_id, "aud": aud, "exp": t + lifetime, "iat": t,
            "jti": jti or uuid.uuid4().hex, **claims}
    return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])


def backend_token(base: str, client_id: str, key: Any, scope: str, alg: str = "RS384", **kw: Any) -> Any:
    form = {"grant_type": "client_credentials", "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(client_id, key, f"{base}/oauth/token", alg, **kw)}
    return requests.post(f"{base}/oauth/token", data=form, timeout=10)


def secret_token(base: str, client: dict[str, Any], scope: str, **extra: str) -> Any:
    return requests.post(f"{base}/oauth/token", data={"grant_type": "client_credentials", "scope": scope, **extra},
                         auth=(client["client_id"], client["client_secret"]), timeout=10)


def stored_token(svc: Any, scope: str, patient: str | None = None, province: str = "11",
                 expires_in: int = 600, organization: str | None = None, break_glass: bool = False,
                 purpose: str | None = None) -> str:
    """An access token written straight into the store (for policy tests that need exact properties)."""
    value = uuid.uuid4().hex + uuid.uuid4().hex
    auth_state(svc).store.save(Token(token_hash=digest(value), kind="access", client_id="direct", scope=scope,
                                     patient=patient, province=province, organization=organization,
                                     break_glass=break_glass, purpose=purpose, issued_at=now(),
                                     expires_at=now() + expires_in), insert=True)
    return value


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": FJ, **headers}


# -- data ----------------------------------------------------------------------------------------------------

def create(svc: Any, resource: dict[str, Any], province: str = "11") -> str:
    stored = svc.repo.create(resource["resourceType"], dict(resource), WriteContext(province=province))
    return str(stored.id)


def patient(svc: Any, family: str = "张", given: str = "三", province: str = "11",
            birth: str = "1980-05-01") -> str:
    return create(svc, {"resourceType": "Patient", "name": [{"family": family, "given": [given]}],
                        "gender": "male", "birthDate": birth}, province)


def observation(svc: Any, pid: str, province: str = "11", category: str = "laboratory",
                code: str = "2345-7") -> str:
    return create(svc, {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "valueQuantity": {"value": 5.4, "unit": "mmol/L"},
    }, province)


def consent(svc: Any, pid: str, actor: dict[str, Any], status: str = "active", period: dict | None = None,
            classes: list[str] | None = None, province: str = "11") -> str:
    provision: dict[str, Any] = {
        "type": "permit",
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP"}]}, "reference": actor}],
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                "code": "access"}]}],
    }
    if period:
        provision["period"] = period
    if classes:
        provision["class"] = [{"system": "http://hl7.org/fhir/resource-types", "code": c} for c in classes]
    return create(svc, {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"}, "policyRule": policy_rule(), "provision": provision,
    }, province)


VICTIM_ID_NUMBER = "110101199001010031"
VICTIM_NAME = "受害者"
VICTIM_PHONE = "13912345678"


def victim_world(svc: Any) -> dict[str, str]:
    """What the access-control attacks are made on: a hospital of province 11 and one of province 31, the victim
    (a resident of province 11, known to the master index by his ID number) and the attacker's own resident."""
    org11 = create(svc, {"resourceType": "Organization", "name": "北京某医院"})
    org31 = create(svc, {"resourceType": "Organization", "name": "上海某医院"}, province="31")
    victim = create(svc, {"resourceType": "Patient", "name": [{"family": VICTIM_NAME, "given": ["甲"]}],
                          "gender": "male", "birthDate": "1990-01-01",
                          "telecom": [{"system": "phone", "value": VICTIM_PHONE}],
                          "identifier": [{"system": "urn:oid:2.16.156.10011.1.3", "value": VICTIM_ID_NUMBER}],
                          "managingOrganization": {"reference": f"Organization/{org11}"}})
    me = create(svc, {"resourceType": "Patient", "name": [{"family": "本人", "given": ["乙"]}], "gender": "female",
                      "birthDate": "1985-03-03"})
    return {"org11": org11, "org31": org31, "victim": victim, "me": me}


def account(svc: Any, phone: str, password: str, *patients: str) -> Any:
    st = auth_state(svc)
    acct = create_account(st.store, st.keys, phone, password)
    for i, pid in enumerate(patients):
        bind(svc, st.store, acct, pid, "SELF" if i == 0 else "CHILD")
    return acct


# -- the SMART authorization-code flow -----------------------------------------------------------------------

def smart_client(base: str, client_id: str, scope: str) -> Any:
    from fhirclient import client as fc

    return fc.FHIRClient(settings={"app_id": client_id, "api_base": f"{base}/fhir/",
                                   "redirect_uri": REDIRECT, "scope": scope})


def csrf_of(html: str) -> str:
    marker = 'name="csrf" value="'
    i = html.index(marker) + len(marker)
    return html[i:html.index('"', i)]


def login_and_approve(url: str, phone: str, password: str, patient_id: str | None = None,
                      decision: str = "approve", session: requests.Session | None = None) -> requests.Response:
    """Walk the server's pages like a browser: login form, patient picker if shown, approval. Returns the
    final response (a 302 to the redirect URI, not followed)."""
    s = session or requests.Session()
    page = s.get(url, timeout=10, allow_redirects=False)
    if page.status_code == 302:
        return page
    assert page.status_code == 200, page.text
    if 'name="phone"' in page.text:
        page = s.post(url, data={"csrf": csrf_of(page.text), "phone": phone, "password": password,
                                 "step": "login"}, timeout=10, allow_redirects=False)
        if page.status_code == 302:
            return page
        assert 'name="phone"' not in page.text, "login failed"
    form: dict[str, str] = {}
    if 'name="patient" value=' in page.text and 'value="pick"' in page.text:
        assert patient_id is not None, "the server asks for a patient"
        page = s.post(url, data={"csrf": csrf_of(page.text), "patient": patient_id, "step": "pick"},
                      timeout=10, allow_redirects=False)
        form["patient"] = patient_id
    elif patient_id:
        form["patient"] = patient_id
    if page.status_code == 302:
        return page
    assert 'value="approve"' in page.text, page.text
    form.update({"csrf": csrf_of(page.text), "step": "approve", "decision": decision})
    return s.post(url, data=form, timeout=10, allow_redirects=False)


def redirect_params(resp: requests.Response) -> dict[str, str]:
    assert resp.status_code == 302, resp.text
    loc = resp.headers["Location"]
    assert loc.startswith(REDIRECT), loc
    return {k: v[0] for k, v in parse_qs(urlsplit(loc).query).items()}


def wait_until(predicate: Any, seconds: float = 3.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())
