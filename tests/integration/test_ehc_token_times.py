"""The issue time and lifetime of a QR token at $ehc-verify (docs/terminal-vendors.md, "Times").

The tokens here are signed with the node's real signing key, as a buggy or compromised issuing node, or a tool
holding the key file, would sign them: the signature verifies, the times are what must refuse them. A refused
dynamic token must not spend its nonce.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import pytest

from app.crypto import SM2PrivateKey
from app.ehc.signing import SigningKey
from app.ehc.token import CLOCK_SKEW, MAX_LIFETIME, VERIFY_REASONS, TokenClaims, issue_token
from app.ops.metrics import QR_RESULTS
from tests.integration.test_ehc_card import card_of, params, qrcode, verify
from tests.integration.test_mpi_registration import id_number, patient, post
from tests.integration.test_ops import metric

YEAR = 365 * 86400


@pytest.fixture(scope="module")
def resident(app: Any) -> dict[str, Any]:
    r = post(app.test_client(), "Patient", patient(id_number("110101", "1988-08-08", 47), name="时一",
                                                    born="1988-08-08"))
    assert r.status_code == 201, r.json
    return r.json


@pytest.fixture(scope="module")
def key(services: Any) -> SigningKey:
    from app.ehc.plugin import card_service

    return card_service(services).signing.current()


def _token(key: SigningKey, card: str, kind: str, iat: int, exp: int, nonce: bytes | None = None) -> str:
    return issue_token(TokenClaims(kind, card, iat, exp, nonce or secrets.token_bytes(8)), key.kid, key.private)


def _nonce_spent(services: Any, token: str) -> bool:
    from app.ehc.token import parse_token

    parsed = parse_token(token)
    return services.repo.db["ehc_nonces"].find_one({"_id": f"{parsed.kid}:{parsed.claims.nonce.hex()}"}) is not None


def _refused(client: Any, token: str, reason: str) -> None:
    out = verify(client, token)
    assert out["valid"]["valueBoolean"] is False, out
    assert out["reason"]["valueCode"] == reason, out
    assert "patient" not in out and "requiresConfirmation" not in out, out


def test_a_token_issued_in_the_future_is_refused(client, services, resident, key):
    now, card = int(time.time()), card_of(resident)
    for kind, life in (("dynamic", 60), ("static", 3600)):
        for ahead in (CLOCK_SKEW + 5, 3600, 30 * 86400):
            token = _token(key, card, kind, now + ahead, now + ahead + life)
            _refused(client, token, "issued-in-future")
            assert not _nonce_spent(services, token)
    # within the clock-skew allowance (the issuing node's clock a little ahead): accepted
    near = _token(key, card, "dynamic", now + CLOCK_SKEW // 2, now + CLOCK_SKEW // 2 + 60)
    assert verify(client, near)["valid"]["valueBoolean"] is True
    assert _nonce_spent(services, near)


def test_a_lifetime_longer_than_the_type_allows_is_refused_though_correctly_signed(client, services, resident,
                                                                                  key):
    from app.ehc.plugin import DYNAMIC_VALIDITY, STATIC_VALIDITY
    from app.ehc.signing import MAX_TOKEN_LIFETIME

    now, card = int(time.time()), card_of(resident)
    assert MAX_LIFETIME == {"dynamic": 300, "static": YEAR}
    too_long = [("dynamic", now, now + 301), ("dynamic", now - 10, now + 3600), ("dynamic", now - 10, 2**32 - 1),
                ("dynamic", 0, 2**32 - 1), ("static", now, now + YEAR + 1), ("static", now - 10, 2**32 - 1),
                ("static", 0, now + 3600)]
    for kind, iat, exp in too_long:
        token = _token(key, card, kind, iat, exp)
        _refused(client, token, "bad-lifetime")
        assert not _nonce_spent(services, token)
    # the longest of each type, as the issuer gives them, still verify
    longest_dynamic = _token(key, card, "dynamic", now, now + 300)
    assert verify(client, longest_dynamic)["valid"]["valueBoolean"] is True
    longest_static = verify(client, _token(key, card, "static", now, now + YEAR))
    assert longest_static["valid"]["valueBoolean"] is True
    assert longest_static["requiresConfirmation"]["valueBoolean"] is True
    # the issuer's limits are the verifier's: its longest codes verify
    assert DYNAMIC_VALIDITY[1] == MAX_LIFETIME["dynamic"] and STATIC_VALIDITY[1] == MAX_LIFETIME["static"]
    assert MAX_TOKEN_LIFETIME == max(MAX_LIFETIME.values())
    for kind, validity in (("dynamic", 300), ("static", YEAR)):
        r = qrcode(client, resident["id"], type={"valueCode": kind}, validity={"valueInteger": validity},
                   image={"valueBoolean": False})
        assert r.status_code == 200, r.json
        assert verify(client, params(r.json)["token"]["valueString"])["valid"]["valueBoolean"] is True


def test_an_expiry_at_or_before_the_issue_time_is_refused(client, services, resident, key):
    now, card = int(time.time()), card_of(resident)
    for kind in ("dynamic", "static"):
        for iat, exp in ((now, now - 1), (now, now), (now + 10, now + 5), (now, 0), (2**32 - 1, 0),
                         (now - 100, now - 200)):
            token = _token(key, card, kind, iat, exp)
            _refused(client, token, "bad-lifetime")
            assert not _nonce_spent(services, token)


def test_a_refused_token_does_not_spend_its_nonce(client, services, resident, key):
    """Were the nonce spent by a refusal, whoever saw a resident's code could first send a refused token of the
    same nonce (he has no key: this is what a refused token of a leaked key would do) and burn it."""
    now, card, nonce = int(time.time()), card_of(resident), secrets.token_bytes(8)
    for iat, exp, reason in ((now + 3600, now + 3660, "issued-in-future"), (now, now + 301, "bad-lifetime"),
                             (now, now - 1, "bad-lifetime"), (now - 400, now - 100, "expired")):
        _refused(client, _token(key, card, "dynamic", iat, exp, nonce), reason)
    good = _token(key, card, "dynamic", now, now + 60, nonce)
    assert not _nonce_spent(services, good)
    assert verify(client, good)["valid"]["valueBoolean"] is True
    assert _nonce_spent(services, good)
    assert verify(client, good)["reason"]["valueCode"] == "replayed"


def test_a_token_outside_its_keys_signing_period_is_refused(client, services, resident):
    """A key signs from its nbf until it is retired; a token it signed lives until the key's exp at the latest.
    A token dated after the key's retirement is one minted with a key that no longer signs (taken from an old
    key file, or the key that was rotated because it leaked)."""
    from app.ehc.plugin import card_service

    signing, card = card_service(services).signing, card_of(resident)
    now = int(time.time())
    old = SigningKey("ZZ00RETIRED", SM2PrivateKey.generate(), now - 30 * 86400, now + 86400, "11",
                     retired=now - 3600)
    signing._modify(lambda keys: ([*keys, old], old), now)
    try:
        before = _token(old, card, "static", now - 7200, now + 3600)  # signed while it was current
        assert verify(client, before)["valid"]["valueBoolean"] is True
        dyn_before = _token(old, card, "dynamic", old.retired - 10, old.retired + 290)
        _refused(client, dyn_before, "expired")
        after = [_token(old, card, "dynamic", now, now + 60),  # minted after the rotation
                 _token(old, card, "static", now, now + 3600),
                 _token(old, card, "static", old.nbf - 86400, now + 3600),  # before the key existed
                 _token(old, card, "static", now - 7200, old.exp + 3600)]  # outliving its key
        for token in after:
            _refused(client, token, "bad-lifetime")
            assert not _nonce_spent(services, token)
    finally:
        signing._modify(lambda keys: ([k for k in keys if k.kid != old.kid], None), now)


def test_the_new_reasons_are_counted_documented_and_declared(client, resident, key):
    assert {"issued-in-future", "bad-lifetime"} <= set(VERIFY_REASONS)
    assert QR_RESULTS == {"valid", *VERIFY_REASONS}
    now, card = int(time.time()), card_of(resident)
    text = client.get("/metrics").get_data(as_text=True)
    before = {r: metric(text, "ehc_qr_verifications_total", result=r) or 0 for r in ("issued-in-future",
                                                                                       "bad-lifetime")}
    _refused(client, _token(key, card, "dynamic", now + 3600, now + 3660), "issued-in-future")
    _refused(client, _token(key, card, "dynamic", now, now + 3600), "bad-lifetime")
    text = client.get("/metrics").get_data(as_text=True)
    for reason, count in before.items():
        assert metric(text, "ehc_qr_verifications_total", result=reason) == count + 1, reason
    definition = client.get("/fhir/OperationDefinition/ehc-verify").json
    documented = next(p["documentation"] for p in definition["parameter"] if p["name"] == "reason")
    assert all(reason in documented for reason in VERIFY_REASONS), documented


def test_a_nonce_is_kept_past_its_exp_by_the_clock_skew_allowance(services):
    """A process whose clock is behind still takes a token as live for up to CLOCK_SKEW after its exp: the nonce
    must still be there then, or a replay would be accepted again."""
    from datetime import timedelta

    from app.core.timeutil import utcnow
    from app.ehc.plugin import card_service

    nonces = card_service(services).nonces
    col = services.repo.db["ehc_nonces"]
    now = int(time.time())
    recent, old = secrets.token_bytes(8), secrets.token_bytes(8)
    assert nonces.use("ZZ00SKEW", recent, now - CLOCK_SKEW // 2)
    assert nonces.use("ZZ00SKEW", old, now - CLOCK_SKEW - 5)
    nonces.purge(utcnow() + timedelta(seconds=1))
    assert col.find_one({"_id": f"ZZ00SKEW:{recent.hex()}"}) is not None
    assert not nonces.use("ZZ00SKEW", recent, now - CLOCK_SKEW // 2)  # still a replay
    assert col.find_one({"_id": f"ZZ00SKEW:{old.hex()}"}) is None
