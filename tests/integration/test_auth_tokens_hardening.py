"""Token rules found missing by the attack of issue 7: introspection only for the token's own client or a
registered resource server (finding 17); refresh tokens used once even under parallel use, and a reused one
revoking its whole family (finding 18); revoking a refresh token revoking the access tokens of its grant, at
once in this process and within the 2-second cache bound in another (finding 29); clients registered with a
JWKS getting no client secret."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from urllib.parse import urlencode

import pytest
import requests
from click.testing import CliRunner

from app.auth.models import AuthStore
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import (
    REDIRECT,
    account,
    backend_token,
    bearer,
    login_and_approve,
    patient,
    public_jwks,
    redirect_params,
    register,
    rsa_key,
    secret_token,
)

PASSWORD = "correct horse 7"
PHONE = "13900139017"
RSA = rsa_key()


@pytest.fixture(scope="module")
def world(svc):
    me = patient(svc, "赵", "六")
    account(svc, PHONE, PASSWORD, me)
    app = register(svc, "launch/patient offline_access patient/*.rs", redirect_uris=[REDIRECT], public=True,
                   name="家庭医生 App")
    return {"me": me, "app": app}


@pytest.fixture(scope="module")
def other_process(auth_settings):
    """A second app on the same database: its own in-process token cache, as another worker process has."""
    from app import create_app

    other = create_app(auth_settings)
    other.testing = True
    yield other.test_client()
    other.extensions["ehc"].handle.close()


def _grant(live: str, world: dict) -> dict:
    """An authorization-code grant with offline_access: access and refresh token."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    params = {"response_type": "code", "client_id": world["app"]["client_id"], "redirect_uri": REDIRECT,
              "scope": "launch/patient offline_access patient/*.rs", "state": "s", "aud": f"{live}/fhir",
              "code_challenge": challenge, "code_challenge_method": "S256"}
    code = redirect_params(login_and_approve(f"{live}/oauth/authorize?{urlencode(params)}", PHONE, PASSWORD,
                                             patient_id=world["me"]))["code"]
    r = requests.post(f"{live}/oauth/token", data={"grant_type": "authorization_code", "code": code,
                                                   "redirect_uri": REDIRECT, "client_id": world["app"]["client_id"],
                                                   "code_verifier": verifier}, timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["refresh_token"]
    return body


def _refresh(live: str, world: dict, refresh_token: str) -> requests.Response:
    return requests.post(f"{live}/oauth/token", data={"grant_type": "refresh_token", "refresh_token": refresh_token,
                                                      "client_id": world["app"]["client_id"]}, timeout=30)


def _reads(live: str, world: dict, access_token: str) -> int:
    return requests.get(f"{live}/fhir/Patient/{world['me']}", headers=bearer(access_token), timeout=10).status_code


# -- finding 17: introspection ------------------------------------------------------------------------------

def test_introspection_answers_only_own_client_or_resource_server(live, svc, auth_settings, monkeypatch):
    owner = register(svc, "user/Patient.rs", name="token owner")
    nosy = register(svc, "user/Patient.rs", name="another hospital")
    tok = secret_token(live, owner, "user/Patient.rs").json()["access_token"]

    def introspect(client: dict) -> dict:
        r = requests.post(f"{live}/oauth/introspect", data={"token": tok},
                          auth=(client["client_id"], client["client_secret"]), timeout=10)
        assert r.status_code == 200, r.text
        return dict(r.json())

    # any other client learns nothing, not even that the token exists (RFC 7662 §2.2)
    assert introspect(nosy) == {"active": False}
    own = introspect(owner)
    assert own["active"] is True and own["client_id"] == owner["client_id"] and own["scope"] == "user/Patient.rs"
    rs = register(svc, "system/Patient.r", name="resource server", resource_server=True)
    seen = introspect(rs)
    assert seen["active"] is True and seen["client_id"] == owner["client_id"]
    assert rs["resource_server"] is True and owner["resource_server"] is False
    # the operator command registers resource servers
    from app.cli import main

    monkeypatch.setenv("EHC_MONGODB_URI", auth_settings.mongodb_uri)
    monkeypatch.setenv("EHC_DATA_DIR", str(auth_settings.data_dir))
    out = CliRunner().invoke(main, ["clients", "add", "--name", "gateway", "--scopes", "system/Patient.r",
                                    "--province", "11", "--resource-server"])
    assert out.exit_code == 0, out.output
    gateway = json.loads(out.output)
    assert gateway["resource_server"] is True
    assert introspect(gateway)["client_id"] == owner["client_id"]


# -- finding 18: refresh tokens are single use -----------------------------------------------------------

def test_parallel_refresh_gives_exactly_one_success(live, world):
    grant = _grant(live, world)
    n = 8
    barrier = threading.Barrier(n)
    codes: list[int] = []
    lock = threading.Lock()

    def use() -> None:
        barrier.wait(10)
        r = _refresh(live, world, grant["refresh_token"])
        with lock:
            codes.append(r.status_code)

    threads = [threading.Thread(target=use) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(codes) == [200] + [400] * (n - 1), codes


def test_reusing_a_spent_refresh_token_revokes_the_family(live, world):
    first = _grant(live, world)
    second = _refresh(live, world, first["refresh_token"]).json()
    third = _refresh(live, world, second["refresh_token"]).json()
    for tok in (first, second, third):
        assert _reads(live, world, tok["access_token"]) == 200
    # someone replays the first refresh token: refused, and every token of the grant dies with it
    replay = _refresh(live, world, first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    for tok in (first, second, third):
        assert _reads(live, world, tok["access_token"]) == 401
    latest = _refresh(live, world, third["refresh_token"])
    assert latest.status_code == 400 and latest.json()["error"] == "invalid_grant"


# -- finding 29: revoking a refresh token revokes its access tokens -----------------------------------------

def test_revoking_a_refresh_token_revokes_the_access_tokens_of_its_grant(live, world, other_process):
    first = _grant(live, world)
    second = _refresh(live, world, first["refresh_token"]).json()
    url = f"/fhir/Patient/{world['me']}"
    for tok in (first, second):
        assert _reads(live, world, tok["access_token"]) == 200  # cached in this process
        assert other_process.get(url, headers=bearer(tok["access_token"])).status_code == 200  # and in the other
    r = requests.post(f"{live}/oauth/revoke", data={"token": second["refresh_token"],
                                                    "token_type_hint": "refresh_token",
                                                    "client_id": world["app"]["client_id"]}, timeout=10)
    assert r.status_code == 200, r.text
    revoked_at = time.monotonic()
    # in this process: at once
    for tok in (first, second):
        assert _reads(live, world, tok["access_token"]) == 401
    assert _refresh(live, world, second["refresh_token"]).json()["error"] == "invalid_grant"
    # in another process: within the documented bound of the token cache
    bound = AuthStore.TOKEN_CACHE_SECONDS
    pending = [first["access_token"], second["access_token"]]
    while pending and time.monotonic() - revoked_at < bound + 1.0:
        pending = [t for t in pending if other_process.get(url, headers=bearer(t)).status_code != 401]
        time.sleep(0.1)
    assert pending == [], f"still accepted by another process {bound + 1.0} s after revocation"


# -- JWKS clients get no secret -------------------------------------------------------------------------

def test_clients_registered_with_a_jwks_get_no_secret(live, svc, auth_settings, tmp_path, monkeypatch):
    backend = register(svc, "system/Patient.rs", jwks=public_jwks(RSA), name="HIS backend")
    assert "client_secret" not in backend
    assert backend["token_endpoint_auth_methods"] == ["private_key_jwt"]
    assert backend_token(live, backend["client_id"], RSA, "system/Patient.rs").status_code == 200
    # no secret, however guessed, authenticates it
    for guess in ("", "None", "null"):
        r = requests.post(f"{live}/oauth/token", data={"grant_type": "client_credentials",
                                                       "scope": "system/Patient.rs"},
                          auth=(backend["client_id"], guess), timeout=10)
        assert r.status_code == 401 and r.json()["error"] == "invalid_client"
    # the same through the operator command
    from app.cli import main

    monkeypatch.setenv("EHC_MONGODB_URI", auth_settings.mongodb_uri)
    monkeypatch.setenv("EHC_DATA_DIR", str(auth_settings.data_dir))
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(public_jwks(RSA)))
    out = CliRunner().invoke(main, ["clients", "add", "--name", "HIS 2", "--scopes", "system/Patient.rs",
                                    "--province", "11", "--jwks", str(jwks)])
    assert out.exit_code == 0, out.output
    assert "client_secret" not in json.loads(out.output)
