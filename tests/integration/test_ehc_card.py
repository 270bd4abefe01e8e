"""The electronic health card: $ehc-qrcode, $ehc-verify (every reason), $ehc-status, /ehc/keys,
/ehc/revocations, key rotation, and verifying a token offline with gmssl and the published keys only."""

from __future__ import annotations

import base64
import secrets
import time

import pytest

from app.crypto import SM2PrivateKey
from app.ehc.token import TokenClaims, issue_token
from tests.integration.test_mpi_registration import EHC_SYS, id_number, patient, post

ALNUM = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


def params(resource: dict) -> dict:
    return {p["name"]: p for p in resource["parameter"]}


def qrcode(client, pid, **p):
    body = {"resourceType": "Parameters", "parameter": [{"name": k, **v} for k, v in p.items()]}
    return post(client, f"Patient/{pid}/$ehc-qrcode", body)


def verify(client, token) -> dict:
    r = post(client, "$ehc-verify", {"resourceType": "Parameters",
                                     "parameter": [{"name": "token", "valueString": token}]})
    assert r.status_code == 200, r.json
    return params(r.json)


@pytest.fixture(scope="module")
def resident(app):
    client = app.test_client()
    r = post(client, "Patient", patient(id_number("110101", "1990-03-03", 33), name="卫一", born="1990-03-03"))
    assert r.status_code == 201
    return r.json


def card_of(res):
    return next(i["value"] for i in res["identifier"] if i["system"] == EHC_SYS and i.get("use") != "old")


def test_dynamic_qrcode_and_one_time_verify(client, resident):
    r = qrcode(client, resident["id"], type={"valueCode": "dynamic"}, validity={"valueInteger": 30})
    assert r.status_code == 200, r.json
    p = params(r.json)
    token = p["token"]["valueString"]
    assert token.startswith("EHC1:") and set(token) <= ALNUM
    assert "卫一" not in token and "110101" not in token
    image = p["image"]["valueAttachment"]
    assert image["contentType"] == "image/svg+xml"
    assert base64.b64decode(image["data"]).lstrip().startswith(b"<svg")
    first = verify(client, token)
    assert first["valid"]["valueBoolean"] is True
    assert first["patient"]["valueReference"]["reference"] == f"Patient/{resident['id']}"
    assert first["ehcId"]["valueString"] == card_of(resident)
    assert first["expires"]["valueInstant"] == p["expires"]["valueInstant"]
    assert "requiresConfirmation" not in first
    again = verify(client, token)
    assert again["valid"]["valueBoolean"] is False and again["reason"]["valueCode"] == "replayed"


def test_qrcode_without_image_and_validity_bounds(client, resident):
    r = qrcode(client, resident["id"], image={"valueBoolean": False})
    assert r.status_code == 200 and "image" not in params(r.json)
    exp = params(r.json)["expires"]["valueInstant"]
    assert abs(time.mktime(time.strptime(exp, "%Y-%m-%dT%H:%M:%SZ")) - time.mktime(time.gmtime()) - 60) < 5
    for bad in (4, 301):
        r = qrcode(client, resident["id"], validity={"valueInteger": bad})
        assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["validity"]
    r = qrcode(client, resident["id"], type={"valueCode": "weekly"})
    assert r.status_code == 400 and r.json["issue"][0]["expression"] == ["type"]
    assert qrcode(client, "nope").status_code == 404


def test_static_code_needs_confirmation_every_time(client, resident):
    token = params(qrcode(client, resident["id"], type={"valueCode": "static"}).json)["token"]["valueString"]
    for _ in range(2):
        out = verify(client, token)
        assert out["valid"]["valueBoolean"] is True and out["requiresConfirmation"]["valueBoolean"] is True
    legacy = verify(client, card_of(resident).lower() + ":1:H0001")
    assert legacy["valid"]["valueBoolean"] is True and legacy["requiresConfirmation"]["valueBoolean"] is True
    assert legacy["patient"]["valueReference"]["reference"] == f"Patient/{resident['id']}"


def test_verify_reasons(client, services, resident):
    from app.ehc.plugin import card_service

    cards = card_service(services)
    assert verify(client, "hello")["reason"]["valueCode"] == "malformed"
    assert verify(client, card_of(resident) + ":0")["reason"]["valueCode"] == "malformed"  # legacy dynamic
    assert verify(client, "AB" * 32 + ":1")["reason"]["valueCode"] == "unknown-card"
    token = params(qrcode(client, resident["id"]).json)["token"]["valueString"]
    head, sig = token.rsplit(":", 1)
    forged = head + ":" + ("A" if sig[0] != "A" else "B") + sig[1:]
    assert verify(client, forged)["reason"]["valueCode"] == "bad-signature"
    stranger = issue_token(TokenClaims("dynamic", card_of(resident), int(time.time()), int(time.time()) + 60,
                                       secrets.token_bytes(8)), "ZZ00TEST", SM2PrivateKey.generate())
    assert verify(client, stranger)["reason"]["valueCode"] == "unknown-key"
    old, _, _ = cards.issue(resident, "dynamic", 60, now=int(time.time()) - 120)
    out = verify(client, old)
    assert out["valid"]["valueBoolean"] is False and out["reason"]["valueCode"] == "expired"


def test_status_suspend_reactivate_cancel(client):
    res = post(client, "Patient", patient(id_number("310104", "1972-12-12", 72), name="蒋二")).json
    pid, card = res["id"], card_of(res)
    token = params(qrcode(client, pid).json)["token"]["valueString"]

    def status(value):
        return post(client, f"Patient/{pid}/$ehc-status", {"resourceType": "Parameters",
                                                           "parameter": [{"name": "status", "valueCode": value}]})

    r = status("suspended")
    assert r.status_code == 200 and params(r.json)["status"]["valueCode"] == "suspended"
    assert verify(client, token)["reason"]["valueCode"] == "suspended"
    assert qrcode(client, pid).status_code == 409
    revoked = {c["ehcId"]: c["status"] for c in client.get("/ehc/revocations").json["cards"]}
    assert revoked[card] == "suspended"
    assert status("active").status_code == 200
    assert verify(client, token)["valid"]["valueBoolean"] is True
    assert card not in {c["ehcId"] for c in client.get("/ehc/revocations").json["cards"]}
    assert status("cancelled").status_code == 200
    assert verify(client, f"{card}:1")["reason"]["valueCode"] == "cancelled"
    r = status("active")
    assert r.status_code == 409
    assert status("lost").status_code == 400
    body = client.get("/ehc/revocations").json
    assert body["generatedAt"].endswith("Z") and {"ehcId": card, "status": "cancelled"}.items() <= next(
        c for c in body["cards"] if c["ehcId"] == card).items()


def test_a_suspension_cut_short_leaves_the_card_refused(client, services, monkeypatch):
    """A status change writes the revocation list (what $ehc-verify and terminals read) on the refusing side
    first: when the second write fails, the card is refused rather than accepted. Before, the record was
    written first, and a suspension (挂失) cut short there left the lost card verifying as valid."""
    from pymongo.errors import PyMongoError

    from app.ehc.plugin import card_service

    res = post(client, "Patient", patient(id_number("310104", "1981-01-01", 81), name="韩三")).json
    pid, card = res["id"], card_of(res)
    token = params(qrcode(client, pid).json)["token"]["valueString"]
    cards = card_service(services).cards
    cards = getattr(cards, "local", cards)  # the card store itself under a federation wrapper

    class Refusing:
        def __getattr__(self, name):
            return getattr(real, name)

        def update_one(self, *args, **kwargs):
            raise PyMongoError("refused")

    real = cards.col
    monkeypatch.setattr(cards, "col", Refusing())
    r = post(client, f"Patient/{pid}/$ehc-status", {"resourceType": "Parameters",
                                                    "parameter": [{"name": "status", "valueCode": "suspended"}]})
    assert r.status_code == 500, r.json
    monkeypatch.setattr(cards, "col", real)
    assert verify(client, token)["reason"]["valueCode"] == "suspended"
    assert card in {c["ehcId"] for c in client.get("/ehc/revocations").json["cards"]}


def _gmssl_verify(jwk: dict, token: str) -> bool:
    """What a terminal does offline: base32-decode, SM2-verify with gmssl against a key from /ehc/keys."""
    from gmssl import sm2

    def unb64(s):
        return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))

    def unb32(s):
        return base64.b32decode(s + "=" * (-len(s) % 8))

    signed, sig = token.rsplit(":", 1)
    crypt = sm2.CryptSM2(private_key="", public_key="00" * 64)
    crypt.public_key = (unb64(jwk["x"]) + unb64(jwk["y"])).hex()
    return bool(crypt.verify_with_sm3(unb32(sig).hex(), signed.encode("ascii")))


def test_offline_verification_with_gmssl_and_published_keys(client, resident):
    keys = client.get("/ehc/keys").json["keys"]
    assert keys and all(k["kty"] == "EC" and k["crv"] == "SM2" and k["alg"] == "SM2SM3" for k in keys)
    for k in keys:
        assert len(base64.urlsafe_b64decode(k["x"] + "==")) == 32 and "=" not in k["x"] + k["y"]
    token = params(qrcode(client, resident["id"]).json)["token"]["valueString"]
    kid = token.split(":")[1]
    jwk = next(k for k in keys if k["kid"] == kid)
    assert _gmssl_verify(jwk, token)
    payload = base64.b32decode(token.split(":")[2])  # 50 bytes: 80 characters, no padding
    assert payload[0] == 1 and payload[1] == 1 and payload[2:34].hex().upper() == card_of(resident)
    head, sig = token.rsplit(":", 1)
    assert not _gmssl_verify(jwk, head[:-1] + ("A" if head[-1] != "A" else "B") + ":" + sig)


def test_rotation_keeps_old_tokens_verifying(client, services, resident):
    from app.ehc.plugin import card_service

    signing = card_service(services).signing
    before = params(qrcode(client, resident["id"], type={"valueCode": "static"}).json)["token"]["valueString"]
    old_kid = before.split(":")[1]
    new = signing.rotate()
    assert new.kid != old_kid
    after = params(qrcode(client, resident["id"]).json)["token"]["valueString"]
    assert after.split(":")[1] == new.kid
    assert verify(client, before)["valid"]["valueBoolean"] is True
    assert verify(client, after)["valid"]["valueBoolean"] is True
    keys = {k["kid"]: k for k in client.get("/ehc/keys").json["keys"]}
    assert {old_kid, new.kid} <= set(keys)
    assert keys[old_kid]["exp"] <= int(time.time()) + 366 * 86400
    assert keys[new.kid]["exp"] > keys[old_kid]["exp"]


def test_a_resident_recorded_as_deceased_has_a_suspended_card_until_that_is_withdrawn(client):
    """A Patient marked deceased still verified as valid at every terminal, and still got new codes. The card is
    suspended with the record of death (not cancelled: a death recorded by mistake is withdrawn, and the card
    works again); a card suspended for another reason stays suspended."""
    res = post(client, "Patient", patient(id_number("310104", "1940-02-02", 41), name="韦故")).json
    pid = res["id"]
    token = params(qrcode(client, pid, type={"valueCode": "static"}).json)["token"]["valueString"]  # reusable
    assert verify(client, token)["valid"]["valueBoolean"] is True
    dead = {k: v for k, v in res.items() if k != "meta"}
    r = client.put(f"/fhir/Patient/{pid}", json={**dead, "deceasedDateTime": "2026-11-29T23:10:00+08:00"},
                   headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.json
    assert verify(client, token)["reason"]["valueCode"] == "suspended"
    assert qrcode(client, pid).status_code == 409
    r = client.put(f"/fhir/Patient/{pid}", json=dead, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.json
    assert verify(client, token)["valid"]["valueBoolean"] is True  # the mistake withdrawn: the card works again
    lost = post(client, f"Patient/{pid}/$ehc-status", {"resourceType": "Parameters",
                                                        "parameter": [{"name": "status", "valueCode": "suspended"}]})
    assert lost.status_code == 200  # reported lost (挂失) ...
    client.put(f"/fhir/Patient/{pid}", json={**dead, "deceasedBoolean": True},
               headers={"Content-Type": "application/fhir+json"})
    client.put(f"/fhir/Patient/{pid}", json=dead, headers={"Content-Type": "application/fhir+json"})
    assert verify(client, token)["reason"]["valueCode"] == "suspended"  # ... stays suspended


def _static_code(client, pid) -> str:
    r = qrcode(client, pid, type={"valueCode": "static"})
    assert r.status_code == 200, r.json
    return params(r.json)["token"]["valueString"]


def test_a_corrected_id_number_cancels_the_card_of_the_wrong_number_and_its_true_holder_gets_another(client):
    """The card was derived from a mistyped ID number and stayed after the correction, so the codes on the
    resident's phone and the card the true holder of that number would be given were one card."""
    typed, right = id_number("320102", "1977-07-07", 71), id_number("320102", "1977-07-07", 73)
    res = post(client, "Patient", patient(typed, name="柯正", born="1977-07-07")).json
    old_card, old_code = card_of(res), _static_code(client, res["id"])
    fixed = {k: v for k, v in res.items() if k != "meta"}
    fixed["identifier"] = [i for i in res["identifier"] if i.get("value") != typed] + \
        [{"system": "urn:oid:2.16.156.10011.1.3", "value": right}]
    r = client.put(f"/fhir/Patient/{res['id']}", json=fixed, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 200, r.json
    assert card_of(r.json) != old_card
    assert any(i["value"] == old_card and i.get("use") == "old" for i in r.json["identifier"])
    assert verify(client, old_code)["reason"]["valueCode"] == "cancelled"
    assert verify(client, _static_code(client, res["id"]))["valid"]["valueBoolean"] is True
    holder = post(client, "Patient", patient(typed, name="石真", born="1977-07-07"))
    assert holder.status_code == 201, holder.json
    assert card_of(holder.json) not in (old_card, card_of(r.json))
    assert verify(client, _static_code(client, holder.json["id"]))["valid"]["valueBoolean"] is True
    assert verify(client, old_code)["reason"]["valueCode"] == "cancelled"  # not the true holder's


def test_a_resident_deleted_and_registered_again_gets_a_card_that_works(client):
    """Deleting the Patient cancels its card; registering the resident again derived that same cancelled card, so
    no code could ever be issued to them again (409)."""
    number = id_number("330106", "1966-06-06", 61)
    first = post(client, "Patient", patient(number, name="任复", born="1966-06-06")).json
    old_code = _static_code(client, first["id"])
    assert client.delete(f"/fhir/Patient/{first['id']}").status_code in (200, 204)
    again = post(client, "Patient", patient(number, name="任复", born="1966-06-06"))
    assert again.status_code == 201, again.json
    assert card_of(again.json) != card_of(first)
    assert verify(client, _static_code(client, again.json["id"]))["valid"]["valueBoolean"] is True
    assert verify(client, old_code)["reason"]["valueCode"] == "cancelled"
