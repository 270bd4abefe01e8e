"""SMART App Launch 2.0 EHR launch against the server on 127.0.0.1: an EHR (client_credentials token)
creates a launch context at /oauth/launch; the app authorizes with `launch` + PKCE; the token carries the
launch's patient and encounter and reaches that patient only. Refusals: unknown, expired, reused or
another app's launch id, the launch scope without a launch id, a patient the resident is not bound to,
and launch creation without a suitable EHR token."""

from __future__ import annotations

import base64
import hashlib
import secrets
from urllib.parse import urlencode

import pytest
import requests

from app.auth.launch import create_launch
from app.auth.models import Launch, Token, digest, now
from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    REDIRECT,
    account,
    bearer,
    csrf_of,
    login_and_approve,
    patient,
    redirect_params,
    register,
    secret_token,
    stored_token,
)

PASSWORD = "ehr launch pw 7"
PHONE = "13900139000"
APP_SCOPES = "launch launch/patient openid fhirUser patient/*.rs"


@pytest.fixture(scope="module")
def world(svc, live):
    me = patient(svc, "赵", "一")
    child = patient(svc, "赵", "小一", birth="2019-01-02")
    stranger = patient(svc, "钱", "二")
    account(svc, PHONE, PASSWORD, me, child)
    app = register(svc, APP_SCOPES, redirect_uris=[REDIRECT], public=True, name="EHR app")
    other_app = register(svc, APP_SCOPES, redirect_uris=[REDIRECT], public=True, name="other app")
    ehr = register(svc, "system/*.rs", name="HIS")
    r = secret_token(live, ehr, "system/*.rs")
    assert r.status_code == 200, r.text
    return {"me": me, "child": child, "stranger": stranger, "app": app, "other_app": other_app,
            "ehr_token": r.json()["access_token"]}


def new_launch(live, token, **form):
    return requests.post(f"{live}/oauth/launch", data=form, headers={"Authorization": f"Bearer {token}"},
                         timeout=10)


def authorize_url(live, client_id, scope, launch=None):
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    q = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT, "scope": scope,
         "state": "st", "aud": f"{live}/fhir", "code_challenge": challenge, "code_challenge_method": "S256"}
    if launch is not None:
        q["launch"] = launch
    return f"{live}/oauth/authorize?{urlencode(q)}", verifier


def exchange(live, client_id, code, verifier):
    return requests.post(f"{live}/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                      "redirect_uri": REDIRECT, "client_id": client_id,
                                                      "code_verifier": verifier}, timeout=10)


def refused(live, client_id, scope, launch):
    """The error redirect the authorization endpoint answers (before any login page)."""
    url, _ = authorize_url(live, client_id, scope, launch)
    return redirect_params(requests.get(url, allow_redirects=False, timeout=10))


def test_discovery_lists_ehr_launch(live):
    conf = requests.get(f"{live}/.well-known/smart-configuration", timeout=10).json()
    assert {"launch-ehr", "context-ehr-patient", "launch-standalone"} <= set(conf["capabilities"])
    assert "launch" in conf["scopes_supported"]


def test_ehr_launch_full_flow(live, world, svc):
    r = new_launch(live, world["ehr_token"], patient=world["child"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["expires_in"] == 300 and len(body["launch"]) >= 32
    launch_id = body["launch"]
    client_id = world["app"]["client_id"]
    url, verifier = authorize_url(live, client_id, "launch openid fhirUser patient/*.rs", launch_id)
    # two bound patients, yet no picker: login_and_approve fails if the server asks for a patient
    params = redirect_params(login_and_approve(url, PHONE, PASSWORD))
    assert params["state"] == "st" and "code" in params
    t = exchange(live, client_id, params["code"], verifier)
    assert t.status_code == 200, t.text
    tok = t.json()
    assert tok["patient"] == world["child"] and "encounter" not in tok
    assert auth_state(svc).store.raw(Token, digest(tok["access_token"]))["patient"] == world["child"]
    assert set(tok["scope"].split()) == {"launch", "openid", "fhirUser", "patient/*.rs"}
    assert "id_token" in tok
    access = tok["access_token"]
    ok = requests.get(f"{live}/fhir/Patient/{world['child']}", headers=bearer(access), timeout=10)
    assert ok.status_code == 200 and ok.json()["id"] == world["child"]
    for other in (world["me"], world["stranger"]):
        no = requests.get(f"{live}/fhir/Patient/{other}", headers=bearer(access), timeout=10)
        assert no.status_code == 403, no.text
    # the launch was used: a second authorization with it is refused
    again = refused(live, client_id, "launch patient/*.rs", launch_id)
    assert again["error"] == "invalid_request" and "launch" in again["error_description"]
    assert auth_state(svc).store.get(Launch, digest(launch_id)) is None


def test_unknown_and_expired_launch_refused(live, world, svc):
    client_id = world["app"]["client_id"]
    params = refused(live, client_id, "launch patient/*.rs", "no-such-launch")
    assert params["error"] == "invalid_request" and params["state"] == "st"
    store = auth_state(svc).store
    expired = create_launch(store, world["child"], "HIS")
    store.set(Launch, digest(expired), expires_at=now() - 1)
    assert refused(live, client_id, "launch patient/*.rs", expired)["error"] == "invalid_request"


def test_launch_scope_and_parameter_go_together(live, world):
    client_id = world["app"]["client_id"]
    params = refused(live, client_id, "launch patient/*.rs", None)
    assert params["error"] == "invalid_request" and "launch parameter" in params["error_description"]
    launch_id = new_launch(live, world["ehr_token"], patient=world["child"]).json()["launch"]
    assert refused(live, client_id, "launch/patient patient/*.rs", launch_id)["error"] == "invalid_request"


def test_launch_for_another_app_or_unbound_patient_refused(live, world):
    launch_id = new_launch(live, world["ehr_token"], patient=world["child"],
                           client_id=world["other_app"]["client_id"]).json()["launch"]
    assert refused(live, world["app"]["client_id"], "launch patient/*.rs", launch_id)["error"] == "invalid_request"
    stranger = new_launch(live, world["ehr_token"], patient=world["stranger"]).json()["launch"]
    url, _ = authorize_url(live, world["app"]["client_id"], "launch patient/*.rs", stranger)
    params = redirect_params(login_and_approve(url, PHONE, PASSWORD))
    assert params["error"] == "access_denied"


def test_launch_is_taken_once_when_two_approvals_race(live, world):
    launch_id = new_launch(live, world["ehr_token"], patient=world["me"]).json()["launch"]
    url, _ = authorize_url(live, world["app"]["client_id"], "launch patient/*.rs", launch_id)
    pages = []
    for _ in range(2):  # two browsers reach the approval page with the same launch
        s = requests.Session()
        page = s.get(url, timeout=10)
        page = s.post(url, data={"csrf": csrf_of(page.text), "phone": PHONE, "password": PASSWORD,
                                 "step": "login"}, timeout=10)
        assert 'value="approve"' in page.text and 'name="patient" value="pick"' not in page.text
        pages.append((s, csrf_of(page.text)))
    results = [redirect_params(s.post(url, data={"csrf": c, "step": "approve", "decision": "approve"},
                                      timeout=10, allow_redirects=False)) for s, c in pages]
    assert "code" in results[0]
    assert results[1]["error"] == "invalid_request"


def test_creating_a_launch_needs_an_ehr_token(live, world, svc):
    assert new_launch(live, "not-a-token", patient=world["me"]).status_code == 401
    resident = stored_token(svc, "patient/*.rs", patient=world["me"])
    assert new_launch(live, resident, patient=world["me"]).status_code == 403
    obs_only = stored_token(svc, "system/Observation.rs")
    r = new_launch(live, obs_only, patient=world["me"])
    assert r.status_code == 403 and r.json()["error"] == "insufficient_scope"
    r = new_launch(live, world["ehr_token"], patient="does-not-exist")
    assert r.status_code == 400 and r.json()["error"] == "invalid_request"
    r = new_launch(live, world["ehr_token"], patient=world["me"], encounter="e1")
    assert r.status_code == 400 and "Encounter" in r.json()["error_description"]  # no Encounter type here
