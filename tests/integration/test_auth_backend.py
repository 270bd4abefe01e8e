"""SMART Backend Services (client_credentials + private_key_jwt, RS384 and ES384), client_secret_basic,
introspection (RFC 7662), revocation (RFC 7009), token expiry and the rate limit; every refusal path."""

from __future__ import annotations

import requests
from joserfc.jwk import RSAKey

from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    FJ,
    assertion,
    backend_token,
    bearer,
    ec_key,
    patient,
    public_jwks,
    register,
    rsa_key,
    secret_token,
    stored_token,
)

RSA = rsa_key()
EC = ec_key()
PLAIN_RSA = RSAKey.generate_key(2048)  # no "alg": may sign RS256, which the server refuses
PLAIN_RSA.ensure_kid()


def _client(svc, scopes="system/Patient.rs system/Observation.rs", **kw):
    return register(svc, scopes, jwks=public_jwks(RSA, EC, PLAIN_RSA), name="hospital backend", **kw)


def test_rs384_and_es384_assertions_give_short_tokens_without_refresh(live, svc):
    c = _client(svc)
    pid = patient(svc)
    for key, alg in ((RSA, "RS384"), (EC, "ES384")):
        r = backend_token(live, c["client_id"], key, "system/Patient.rs", alg=alg)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs"
        assert 0 < body["expires_in"] <= 300
        assert "refresh_token" not in body
        assert r.headers["Cache-Control"] == "no-store"
        got = requests.get(f"{live}/fhir/Patient/{pid}", headers=bearer(body["access_token"]), timeout=10)
        assert got.status_code == 200 and got.json()["id"] == pid


def test_replayed_assertion_is_refused(live, svc):
    c = _client(svc)
    jwt_text = assertion(c["client_id"], RSA, f"{live}/oauth/token")
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": jwt_text}
    assert requests.post(f"{live}/oauth/token", data=form, timeout=10).status_code == 200
    again = requests.post(f"{live}/oauth/token", data=form, timeout=10)
    assert again.status_code in (400, 401) and again.json()["error"] == "invalid_client"
    # an assertion spent on a refused request (here: a scope never registered) cannot be replayed either
    form["client_assertion"] = assertion(c["client_id"], RSA, f"{live}/oauth/token")
    refused = requests.post(f"{live}/oauth/token", data={**form, "scope": "system/Consent.cud"}, timeout=10)
    assert refused.json()["error"] == "invalid_scope"
    replay = requests.post(f"{live}/oauth/token", data=form, timeout=10)
    assert replay.json()["error"] == "invalid_client"


def test_bad_assertions_are_refused(live, svc):
    c = _client(svc)
    other = rsa_key()
    cases = {
        "too long": dict(key=RSA, lifetime=600),
        "unknown key": dict(key=other),
        "RS256": dict(key=PLAIN_RSA, alg="RS256"),
        "expired": dict(key=RSA, lifetime=-120),
    }
    for name, kw in cases.items():
        key = kw.pop("key")
        r = backend_token(live, c["client_id"], key, "system/Patient.rs", **kw)
        assert r.status_code in (400, 401), name
        assert r.json()["error"] == "invalid_client", name
    control = backend_token(live, c["client_id"], PLAIN_RSA, "system/Patient.rs", alg="RS384")
    assert control.status_code == 200  # the same key with RS384 is fine: RS256 itself was refused
    wrong_aud = {"grant_type": "client_credentials", "scope": "system/Patient.rs",
                 "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                 "client_assertion": assertion(c["client_id"], RSA, "https://elsewhere.example/token")}
    assert requests.post(f"{live}/oauth/token", data=wrong_aud, timeout=10).json()["error"] == "invalid_client"


def test_more_than_registered_is_narrowed_or_refused(live, svc):
    c = _client(svc, scopes="system/Observation.rs")
    r = backend_token(live, c["client_id"], RSA, "system/Observation.rs system/Patient.rs system/*.cruds")
    assert r.status_code == 200
    token = r.json()
    assert token["scope"].split() == ["system/Observation.rs"]
    pid = patient(svc)
    denied = requests.get(f"{live}/fhir/Patient/{pid}", headers=bearer(token["access_token"]), timeout=10)
    assert denied.status_code == 403
    assert "Patient.r" in denied.json()["issue"][0]["diagnostics"]
    assert "insufficient_scope" in denied.headers["WWW-Authenticate"]
    only_unregistered = backend_token(live, c["client_id"], RSA, "system/Patient.rs")
    assert only_unregistered.status_code == 400 and only_unregistered.json()["error"] == "invalid_scope"
    patient_scope = backend_token(live, c["client_id"], RSA, "patient/Observation.rs")
    assert patient_scope.json()["error"] == "invalid_scope"


def test_client_secret_basic_for_operator_clients(live, svc):
    c = register(svc, "user/*.cruds", name="operator script")
    assert "client_secret" in c
    r = secret_token(live, c, "user/Patient.rs")
    assert r.status_code == 200 and r.json()["scope"] == "user/Patient.rs"
    bad = requests.post(f"{live}/oauth/token", data={"grant_type": "client_credentials", "scope": "user/Patient.rs"},
                        auth=(c["client_id"], "not-the-secret"), timeout=10)
    assert bad.status_code == 401 and bad.json()["error"] == "invalid_client"
    public = register(svc, "patient/*.rs", public=True, redirect_uris=["http://127.0.0.1:9/cb"])
    r = requests.post(f"{live}/oauth/token", data={"grant_type": "client_credentials", "scope": "patient/*.rs",
                                                   "client_id": public["client_id"]}, timeout=10)
    assert r.status_code in (400, 401)


def test_missing_bad_expired_and_revoked_tokens_get_401(live, svc):
    pid = patient(svc)
    url = f"{live}/fhir/Patient/{pid}"
    r = requests.get(url, headers={"Accept": FJ}, timeout=10)
    assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
    assert r.json()["resourceType"] == "OperationOutcome"
    r = requests.get(url, headers=bearer("made-up"), timeout=10)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    expired = stored_token(svc, "system/*.rs", expires_in=-1)
    r = requests.get(url, headers=bearer(expired), timeout=10)
    assert r.status_code == 401 and "expired" in r.json()["issue"][0]["diagnostics"]
    # revocation takes effect on the next request
    c = _client(svc)
    tok = backend_token(live, c["client_id"], RSA, "system/Patient.rs").json()["access_token"]
    assert requests.get(url, headers=bearer(tok), timeout=10).status_code == 200
    form = {"token": tok, "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion(c["client_id"], RSA, f"{live}/oauth/token")}
    assert requests.post(f"{live}/oauth/revoke", data=form, timeout=10).status_code == 200
    r = requests.get(url, headers=bearer(tok), timeout=10)
    assert r.status_code == 401 and "revoked" in r.json()["issue"][0]["diagnostics"]
    # metadata needs no token
    assert requests.get(f"{live}/fhir/metadata", timeout=10).status_code == 200


def test_introspection(live, svc):
    rs = register(svc, "system/Patient.r", name="resource server", resource_server=True)
    c = _client(svc)
    tok = backend_token(live, c["client_id"], RSA, "system/Patient.rs").json()["access_token"]
    r = requests.post(f"{live}/oauth/introspect", data={"token": tok}, auth=(rs["client_id"], rs["client_secret"]),
                      timeout=10)
    body = r.json()
    assert body["active"] is True and body["client_id"] == c["client_id"] and body["scope"] == "system/Patient.rs"
    assert body["exp"] > body["iat"]
    assert r.headers["Cache-Control"] == "no-store"
    pat = stored_token(svc, "patient/*.rs", patient="p-42")
    body = requests.post(f"{live}/oauth/introspect", data={"token": pat}, auth=(rs["client_id"], rs["client_secret"]),
                         timeout=10).json()
    assert body["active"] is True and body["patient"] == "p-42"
    dead = stored_token(svc, "system/*.rs", expires_in=-5)
    assert requests.post(f"{live}/oauth/introspect", data={"token": dead},
                         auth=(rs["client_id"], rs["client_secret"]), timeout=10).json() == {"active": False}
    unauth = requests.post(f"{live}/oauth/introspect", data={"token": tok}, timeout=10)
    assert unauth.status_code == 401


def test_token_endpoint_rate_limit(live, svc):
    c = register(svc, "user/Patient.rs", name="noisy")
    limiter = auth_state(svc).token_limiter
    rate, burst = limiter.limit.rate, limiter.limit.burst
    limiter.limit.rate, limiter.limit.burst = 0.01, 3
    try:
        codes = [secret_token(live, c, "user/Patient.rs").status_code for _ in range(5)]
    finally:
        limiter.limit.rate, limiter.limit.burst = rate, burst
    assert codes[:3] == [200, 200, 200] and codes[3:] == [429, 429]
