"""SMART App Launch (standalone, authorization code + PKCE) driven by the fhirclient library against the
server on 127.0.0.1: discovery from the CapabilityStatement, the login / patient picker / approval pages,
the token response (patient, id_token, refresh only with offline_access), and the refusals (PKCE missing
or plain, wrong aud, denied approval, a client asking for more than its registered scopes)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    FJ,
    REDIRECT,
    account,
    bearer,
    login_and_approve,
    observation,
    patient,
    redirect_params,
    register,
    smart_client,
)

PASSWORD = "correct horse 9"


@pytest.fixture(scope="module")
def world(svc):
    me = patient(svc, "李", "明")
    child = patient(svc, "李", "小明", birth="2018-03-02")
    stranger = patient(svc, "王", "五")
    obs_me = observation(svc, me)
    obs_child = observation(svc, child)
    obs_stranger = observation(svc, stranger)
    account(svc, "13800138000", PASSWORD, me, child)
    app = register(svc, "launch/patient openid fhirUser offline_access patient/*.rs patient/Observation.cruds",
                   redirect_uris=[REDIRECT], public=True, name="健康助手 App")
    return {"me": me, "child": child, "stranger": stranger, "obs_me": obs_me, "obs_child": obs_child,
            "obs_stranger": obs_stranger, "app": app}


def test_capability_statement_advertises_smart(live):
    cap = requests.get(f"{live}/fhir/metadata", headers={"Accept": FJ}, timeout=10).json()
    ext = cap["rest"][0]["security"]["extension"][0]
    assert ext["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    uris = {e["url"]: e["valueUri"] for e in ext["extension"]}
    assert uris["authorize"] == f"{live}/oauth/authorize"
    assert uris["token"] == f"{live}/oauth/token"
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        conf = requests.get(live + path, timeout=10).json()
        assert conf["code_challenge_methods_supported"] == ["S256"]
        assert conf["token_endpoint"] == f"{live}/oauth/token"
        assert "permission-v2" in conf["capabilities"] and "context-standalone-patient" in conf["capabilities"]


def test_fhirclient_standalone_launch_reads_own_records(live, world, svc):
    smart = smart_client(live, world["app"]["client_id"], "openid fhirUser offline_access patient/*.rs")
    url = smart.authorize_url  # fhirclient found /oauth/authorize in the CapabilityStatement
    assert url.startswith(f"{live}/oauth/authorize?") and "code_challenge_method=S256" in url
    resp = login_and_approve(url, "13800138000", PASSWORD, patient_id=world["child"])
    smart.handle_callback(resp.headers["Location"])  # fhirclient exchanges the code (with its PKCE verifier)
    assert smart.patient_id == world["child"]
    ctx = smart.launch_context
    assert ctx["patient"] == world["child"]
    assert "patient/*.rs" in ctx["scope"].split()
    # the id_token is RS256-signed by the key published at jwks_uri and names the fhirUser
    jwks = requests.get(f"{live}/oauth/jwks", timeout=10).json()
    claims = jwt.decode(ctx["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"]).claims
    assert claims["aud"] == world["app"]["client_id"]
    assert claims["fhirUser"] == f"{live}/fhir/Patient/{world['me']}"
    assert smart.server.auth.refresh_token  # offline_access granted
    # fhirclient reads the chosen patient with the token
    from fhirclient.models.observation import Observation
    from fhirclient.models.patient import Patient

    assert Patient.read(world["child"], smart.server).id == world["child"]
    assert Observation.read(world["obs_child"], smart.server).id == world["obs_child"]
    # another bound patient is outside this token's launch context, a stranger all the more
    token = smart.server.auth.access_token
    for pid in (world["me"], world["stranger"]):
        r = requests.get(f"{live}/fhir/Patient/{pid}", headers=bearer(token), timeout=10)
        assert r.status_code == 403
        assert f"Patient/{world['child']}" in r.json()["issue"][0]["diagnostics"]
    r = requests.get(f"{live}/fhir/Observation/{world['obs_stranger']}", headers=bearer(token), timeout=10)
    assert r.status_code == 403
    # search stays inside the compartment
    bundle = requests.get(f"{live}/fhir/Observation", headers=bearer(token), timeout=10).json()
    assert [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"] == [world["obs_child"]]
    # a refresh (rotated) keeps the patient context
    assert smart.reauthorize() is True
    assert smart.launch_context["patient"] == world["child"]
    assert smart.server.auth.access_token != token


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def _authorize_url(live, client_id, scope, **over):
    verifier, challenge = _pkce()
    params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
              "state": "s1", "aud": f"{live}/fhir", "code_challenge": challenge, "code_challenge_method": "S256"}
    params.update(over)
    return f"{live}/oauth/authorize?" + urlencode({k: v for k, v in params.items() if v is not None}), verifier


def _exchange(live, client_id, code, verifier):
    return requests.post(f"{live}/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                      "redirect_uri": REDIRECT, "client_id": client_id,
                                                      "code_verifier": verifier}, timeout=10)


def test_no_refresh_token_without_offline_access_and_patient_in_response(live, world):
    url, verifier = _authorize_url(live, world["app"]["client_id"], "launch/patient patient/Observation.rs")
    params = redirect_params(login_and_approve(url, "13800138000", PASSWORD, patient_id=world["me"]))
    assert params["state"] == "s1"
    r = _exchange(live, world["app"]["client_id"], params["code"], verifier)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["patient"] == world["me"]
    assert "refresh_token" not in body and "id_token" not in body
    assert r.headers["Cache-Control"] == "no-store"
    # the code is single use
    again = _exchange(live, world["app"]["client_id"], params["code"], verifier)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_pkce_missing_or_plain_is_refused(live, world):
    for over in ({"code_challenge": None, "code_challenge_method": None},
                 {"code_challenge_method": "plain"}, {"code_challenge_method": None}):
        url, _ = _authorize_url(live, world["app"]["client_id"], "patient/Observation.rs", **over)
        r = requests.get(url, allow_redirects=False, timeout=10)
        params = redirect_params(r)
        assert params["error"] == "invalid_request", over
        assert "S256" in params["error_description"] or "PKCE" in params["error_description"]


def test_wrong_verifier_is_refused(live, world):
    url, _ = _authorize_url(live, world["app"]["client_id"], "launch/patient patient/Observation.rs")
    params = redirect_params(login_and_approve(url, "13800138000", PASSWORD, patient_id=world["me"]))
    r = _exchange(live, world["app"]["client_id"], params["code"], secrets.token_urlsafe(48))
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"


def test_wrong_aud_is_refused(live, world):
    url, _ = _authorize_url(live, world["app"]["client_id"], "patient/Observation.rs",
                            aud="https://other.example/fhir")
    params = redirect_params(requests.get(url, allow_redirects=False, timeout=10))
    assert params["error"] == "invalid_request" and "aud" in params["error_description"]


def test_an_unsupported_response_type_is_refused_whatever_its_characters(live, world):
    """authlib raised (a 500) when the response_type it quotes in its error held a character that an OAuth
    error_description may not: a control character, a quote, a backslash, any non-ASCII letter."""
    for response_type in ("token", "\x00", 'co"de', "code\\", "代码"):
        url, _ = _authorize_url(live, world["app"]["client_id"], "patient/Observation.rs",
                                response_type=response_type)
        r = requests.get(url, allow_redirects=False, timeout=10)
        assert r.status_code in (302, 400), (response_type, r.status_code)
        error = redirect_params(r)["error"] if r.status_code == 302 else r.text
        assert "unsupported_response_type" in error, response_type


def test_denied_approval_redirects_access_denied(live, world):
    url, _ = _authorize_url(live, world["app"]["client_id"], "launch/patient patient/Observation.rs")
    params = redirect_params(login_and_approve(url, "13800138000", PASSWORD, patient_id=world["me"],
                                               decision="deny"))
    assert params["error"] == "access_denied"


def test_wrong_password_stays_on_login(live, world):
    url, _ = _authorize_url(live, world["app"]["client_id"], "patient/Observation.rs")
    with pytest.raises(AssertionError, match="login failed"):
        login_and_approve(url, "13800138000", "wrong password")


def test_client_never_gets_more_than_registered(live, world, svc):
    narrow_app = register(svc, "launch/patient patient/Observation.rs", redirect_uris=[REDIRECT], public=True)
    url, verifier = _authorize_url(live, narrow_app["client_id"],
                                   "launch/patient patient/*.cruds offline_access user/*.rs")
    params = redirect_params(login_and_approve(url, "13800138000", PASSWORD, patient_id=world["me"]))
    body = _exchange(live, narrow_app["client_id"], params["code"], verifier).json()
    assert body["scope"].split() == ["launch/patient", "patient/Observation.rs"]
    assert "refresh_token" not in body
    r = requests.get(f"{live}/fhir/Patient/{world['me']}", headers=bearer(body["access_token"]), timeout=10)
    assert r.status_code == 403 and "Patient.r" in r.json()["issue"][0]["diagnostics"]
    # asking only for what was never registered: invalid_scope
    url, _ = _authorize_url(live, narrow_app["client_id"], "user/*.cruds")
    params = redirect_params(requests.get(url, allow_redirects=False, timeout=10))
    assert params["error"] == "invalid_scope"


def test_sms_code_login(live, world, svc):
    sent = []
    svc.extensions["sms_sender"] = lambda phone, text: sent.append((phone, text))
    try:
        url, verifier = _authorize_url(live, world["app"]["client_id"], "launch/patient patient/Observation.rs")
        s = requests.Session()
        from tests.integration.auth_helpers import csrf_of, wait_until

        page = s.get(url, timeout=10)
        page = s.post(url, data={"csrf": csrf_of(page.text), "phone": "13800138000", "step": "sms"}, timeout=10)
        assert wait_until(lambda: len(sent) == 1) and sent[0][0] == "13800138000"  # sent in the background
        again = s.post(url, data={"csrf": csrf_of(page.text), "phone": "13800138000", "step": "sms"}, timeout=10)
        assert not wait_until(lambda: len(sent) > 1, seconds=1.0)  # one code a minute: no flood of a number
        page = again
        code = sent[0][1].split("验证码 ")[1][:6]
        bad = s.post(url, data={"csrf": csrf_of(page.text), "phone": "13800138000", "sms_code": "000000"
                                if code != "000000" else "111111", "step": "login"}, timeout=10)
        assert 'name="phone"' in bad.text
        page = s.post(url, data={"csrf": csrf_of(bad.text), "phone": "13800138000", "sms_code": code,
                                 "step": "login"}, timeout=10)
        assert 'value="pick"' in page.text  # logged in: two bound patients, the picker is shown
        final = login_and_approve(url, "", "", patient_id=world["me"], session=s)
        assert "code" in redirect_params(final)
    finally:
        svc.extensions.pop("sms_sender", None)


def test_login_page_is_bilingual_and_protected(live, world):
    url, _ = _authorize_url(live, world["app"]["client_id"], "patient/Observation.rs")
    r = requests.get(url, timeout=10)
    assert "手机号" in r.text and "Mobile phone number" in r.text and "健康助手 App" in r.text
    assert r.headers["X-Frame-Options"] == "DENY"
    assert r.headers["Cache-Control"] == "no-store"
    assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
    post = requests.post(url, data={"csrf": "forged", "phone": "13800138000", "password": PASSWORD,
                                    "step": "login"}, timeout=10)
    assert post.status_code == 400


def test_openid_connect_discovery_under_the_issuer(live):
    """`sso-openid-connect` is declared and the issuer is {base}/fhir: OpenID Connect Discovery finds the
    issuer's configuration at {issuer}/.well-known/openid-configuration, without a token (it answered 401)."""
    for path in ("/fhir/.well-known/openid-configuration", "/.well-known/openid-configuration"):
        r = requests.get(live + path, timeout=10)
        assert r.status_code == 200, (path, r.text)
        conf = r.json()
        assert conf["issuer"] == f"{live}/fhir" and conf["jwks_uri"] == f"{live}/oauth/jwks"
        assert conf["id_token_signing_alg_values_supported"] == ["RS256"] and "openid" in conf["scopes_supported"]
        assert {"public"} == set(conf["subject_types_supported"]) and "fhirUser" in conf["claims_supported"]
    assert requests.get(conf["jwks_uri"], timeout=10).json()["keys"]


def test_openid_without_fhiruser_still_gets_an_id_token(live, world):
    """OpenID Connect Core 3.1.3.3: a grant of `openid` returns an id_token; without the fhirUser scope it
    names no fhirUser (it returned no id_token at all)."""
    url, verifier = _authorize_url(live, world["app"]["client_id"], "launch/patient openid patient/Observation.rs")
    params = redirect_params(login_and_approve(url, "13800138000", PASSWORD, patient_id=world["me"]))
    r = _exchange(live, world["app"]["client_id"], params["code"], verifier)
    assert r.status_code == 200, r.text
    jwks = requests.get(f"{live}/oauth/jwks", timeout=10).json()
    claims = jwt.decode(r.json()["id_token"], KeySet.import_key_set(jwks), algorithms=["RS256"]).claims
    assert claims["iss"] == f"{live}/fhir" and claims["aud"] == world["app"]["client_id"]
    assert "fhirUser" not in claims
