"""The federation as an attacker sees it, on one set of three nodes (national 00, Beijing 11, Shanghai 31).

- Consent: a Shanghai client searches a Beijing resident's records by ID number; every Consent at node 11 that
  does not cover it (no consent, period in the future or past, not active, another actor, another province,
  deny, another action, another resource class, another resident's) lets nothing through, and an organization
  id that collides with the grantee's is no way in when the grantee is of another province.
- Node assertions: expired, too long-lived, issued in the future, issued under another node's name, and the
  national node's envelope with a requester that differs from the origin's, an origin assertion it did not
  sign, replayed, expired or addressed elsewhere, or no origin at all (the national node speaking for a
  province) are refused before any record is read.
- QR codes across nodes: tampered, truncated, wrong key, unknown key, expired, replayed; a static code;
  a legacy code; a province publishing a key under another province's kid.
- Cards of deleted residents, the national index's answers, the outbox after a refusal, and bad input to the
  /federation endpoints: an OperationOutcome with a 4xx, never a 500.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from app.crypto import SM2PrivateKey
from app.ehc.token import TokenClaims, issue_token
from app.federation.assertions import HEADER, Requester
from app.federation.keys import ALG
from app.federation.registry import NATIONAL
from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import (
    EHC_SYSTEM,
    FJ,
    ID_SYSTEM,
    Node,
    card_of,
    consent_body,
    h,
    new_id_number,
    observation_body,
    patient_body,
    post_resource,
    wait_for,
)

SH_ORG = "org-sh-huashan"  # a Shanghai hospital, in node 11's directory without a province identifier
GD_ORG = "org-gd-zhongshan"  # a Guangdong hospital, in node 11's directory as province 44's
OBS_SCOPES = "system/Observation.rs system/DocumentReference.rs system/Patient.rs"


# -- the world -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(nodes: dict[str, Node]) -> dict[str, Any]:
    bj = nodes["11"].client("system/Patient.cruds system/Observation.cruds system/DocumentReference.cruds "
                            "system/Consent.cruds system/Organization.cruds", organization="org-bj-tiantan")
    sh = nodes["31"].client(OBS_SCOPES + " system/Patient.cruds", organization=SH_ORG)
    # A Shanghai client whose organization id is the Guangdong hospital's id at node 11 (ids are per node).
    collider = nodes["31"].client(OBS_SCOPES, organization=GD_ORG, name="collider")
    t11 = nodes["11"].token(bj)
    for org, ident in ((SH_ORG, None), (GD_ORG, "44"), ("org-bj-tiantan", "11")):
        body: dict[str, Any] = {"resourceType": "Organization", "id": org, "name": org}
        if ident:
            body["identifier"] = [{"system": "urn:ehc:province", "value": ident}]
        r = requests.put(f"{nodes['11'].base}/Organization/{org}", json=body, headers=h(t11), timeout=10)
        assert r.status_code in (200, 201), r.text
    number, other = new_id_number(), new_id_number()
    p11 = post_resource(nodes["11"], t11, patient_body(number, "钱", "坤"))
    o11 = post_resource(nodes["11"], t11, patient_body(other, "孔", "明"))
    obs = [post_resource(nodes["11"], t11, observation_body(p11["id"], value=v))["id"] for v in (4.4, 5.5)]
    national = nodes["00"].client("system/Patient.rs", organization="org-nhc")
    out = {"t11": t11, "t31": nodes["31"].token(sh), "t31_collider": nodes["31"].token(collider),
           "t00": nodes["00"].token(national), "sh": sh, "number": number, "p11": p11, "other": o11, "obs": obs}
    assert wait_for(lambda: _pix(nodes, out, number).status_code == 200, timeout=20), "never indexed"
    return out


def _pix(nodes: dict[str, Node], world: dict[str, Any], value: str, system: str = ID_SYSTEM,
         token: str | None = None) -> requests.Response:
    return requests.get(f"{nodes['00'].base}/Patient/$ihe-pix", params={"sourceIdentifier": f"{system}|{value}"},
                        headers=h(token or world["t00"]), timeout=10)


def _fed(node: Node) -> Any:
    return node.svc.extensions["federation"]


def _search(nodes: dict[str, Node], token: str, number: str, rtype: str = "Observation") -> dict[str, Any]:
    r = requests.get(f"{nodes['31'].base}/{rtype}", params={"subject:Patient.identifier": f"{ID_SYSTEM}|{number}"},
                     headers=h(token), timeout=30)
    assert r.status_code == 200, r.text
    return dict(r.json())


def _from_beijing(nodes: dict[str, Node], bundle: dict[str, Any]) -> list[str]:
    return [e["fullUrl"] for e in bundle.get("entry") or []
            if e["search"]["mode"] == "match" and e["fullUrl"].startswith(nodes["11"].base)]


def _diagnostics(bundle: dict[str, Any]) -> list[str]:
    return [str(i.get("diagnostics")) for e in bundle.get("entry") or [] if e["search"]["mode"] == "outcome"
            for i in e["resource"]["issue"]]


def _grant(nodes: dict[str, Node], world: dict[str, Any], body: dict[str, Any]) -> str:
    return str(post_resource(nodes["11"], world["t11"], body)["id"])


def _revoke(nodes: dict[str, Node], world: dict[str, Any], consent_id: str) -> None:
    r = requests.delete(f"{nodes['11'].base}/Consent/{consent_id}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204), r.text


def _search_granted(nodes: dict[str, Node], world: dict[str, Any], body: dict[str, Any],
                    token: str = "t31") -> dict[str, Any]:
    """The Shanghai client's search of the resident while the Consent `body` stands at node 11 (revoked after)."""
    consent = _grant(nodes, world, body)
    try:
        return _search(nodes, world[token], world["number"])
    finally:
        _revoke(nodes, world, consent)


# -- consent -------------------------------------------------------------------------------------------------

SH = {"reference": f"Organization/{SH_ORG}"}
PROVINCE_31 = {"identifier": {"system": "urn:ehc:province", "value": "31"}}


def _consent(pid: str, actor: dict[str, Any], **change: Any) -> dict[str, Any]:
    body = consent_body(pid, actor)
    prov = body["provision"]
    for key, value in change.items():
        if key == "status":
            body["status"] = value
        elif key == "action":
            prov["action"] = [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                           "code": value}]}]
        elif key == "nested_deny":
            prov["provision"] = [{"type": "deny", "actor": prov["actor"]}]
        else:
            prov[key] = value
    return body


NOT_COVERING = {
    "period-in-the-future": {"period": {"start": "2099-01-01"}},
    "period-over": {"period": {"start": "2020-01-01", "end": "2021-01-01"}},
    "draft": {"status": "draft"},
    "proposed": {"status": "proposed"},
    "inactive": {"status": "inactive"},
    "rejected": {"status": "rejected"},
    "deny": {"type": "deny"},
    "action-collect": {"action": "collect"},
    "class-other-type": {"class": [{"system": "http://hl7.org/fhir/resource-types", "code": "DocumentReference"}]},
    "nested-deny-for-the-same-actor": {"nested_deny": True},
}


@pytest.mark.parametrize("case", sorted(NOT_COVERING))
def test_a_consent_that_does_not_cover_the_access_lets_nothing_cross(nodes: dict[str, Node], world: dict[str, Any],
                                                                     case: str) -> None:
    bundle = _search_granted(nodes, world, _consent(world["p11"]["id"], SH, **NOT_COVERING[case]))
    assert _from_beijing(nodes, bundle) == [], case
    assert any("2 matching resource(s) withheld at province 11" in d for d in _diagnostics(bundle)), case


@pytest.mark.parametrize("actor", [
    {"reference": "Organization/org-bj-tiantan"},  # another hospital
    {"identifier": {"system": "urn:ehc:province", "value": "11"}},  # the home province itself
    {"identifier": {"system": "urn:ehc:province", "value": "44"}},  # another province
    {"identifier": {"system": "urn:ehc:organization", "value": SH_ORG}},  # the right name, a system nobody reads
], ids=["other-organization", "province-11", "province-44", "unknown-identifier-system"])
def test_a_consent_for_another_actor_lets_nothing_cross(nodes: dict[str, Node], world: dict[str, Any],
                                                        actor: dict[str, Any]) -> None:
    bundle = _search_granted(nodes, world, _consent(world["p11"]["id"], actor))
    assert _from_beijing(nodes, bundle) == []


def test_another_residents_consent_lets_nothing_cross(nodes: dict[str, Node], world: dict[str, Any]) -> None:
    bundle = _search_granted(nodes, world, _consent(world["other"]["id"], PROVINCE_31))
    assert _from_beijing(nodes, bundle) == []


def test_the_covering_consent_lets_the_records_through_and_revoking_by_status_stops_them(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """The positive control of the cases above: the same search, with a consent that covers it."""
    consent = _grant(nodes, world, _consent(world["p11"]["id"], SH, period={"start": "2020-01-01"}))
    try:
        assert len(_from_beijing(nodes, _search(nodes, world["t31"], world["number"]))) == 2
        stored = requests.get(f"{nodes['11'].base}/Consent/{consent}", headers=h(world["t11"]), timeout=10).json()
        stored["status"] = "inactive"
        r = requests.put(f"{nodes['11'].base}/Consent/{consent}", json=stored, headers=h(world["t11"]), timeout=10)
        assert r.status_code == 200, r.text
        assert _from_beijing(nodes, _search(nodes, world["t31"], world["number"])) == []
    finally:
        _revoke(nodes, world, consent)


def test_an_organization_id_that_collides_with_a_grantee_of_another_province_is_no_way_in(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """The resident consents to a Guangdong hospital (province 44 in node 11's directory). A Shanghai client whose
    organization id happens to be that hospital's id (organization ids are each node's own) is not it."""
    to_guangdong = _consent(world["p11"]["id"], {"reference": f"Organization/{GD_ORG}"})
    bundle = _search_granted(nodes, world, to_guangdong, token="t31_collider")
    assert _from_beijing(nodes, bundle) == []


# -- node assertions -----------------------------------------------------------------------------------------


def _requester(province: str = "31", organization: str = SH_ORG) -> Requester:
    return Requester("sh-terminal", organization, province, "TREAT", OBS_SCOPES.split())


def _signed(key: ECKey, issuer: str, audience: str, requester: Requester, *, iat: int | None = None,
            life: int = 60, origin: dict[str, Any] | None = None) -> str:
    t = int(time.time()) if iat is None else iat
    claims: dict[str, Any] = {"iss": f"node-{issuer}", "aud": audience, "iat": t, "exp": t + life,
                              "jti": uuid.uuid4().hex, "ehc_req": requester.__dict__}
    if origin is not None:
        claims["ehc_origin"] = origin
    return jwt.encode({"alg": ALG, "kid": key.kid, "typ": "JWT"}, claims, key, algorithms=[ALG])


def _to_national(nodes: dict[str, Node], world: dict[str, Any], assertion: str) -> requests.Response:
    """node 31's token at the national node, with a requester assertion: the cross-province query."""
    fed = _fed(nodes["31"])
    token = fed.peers.token(fed.registry.get(NATIONAL))
    body = {"resourceType": "Observation", "params": [["subject:Patient.identifier", f"{ID_SYSTEM}|{world['number']}"]]}
    return requests.post(f"{nodes['00'].url}/federation/query", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {token}", HEADER: assertion, "Accept": FJ})


def _to_beijing(nodes: dict[str, Node], world: dict[str, Any], assertion: str | None) -> requests.Response:
    """The national node's token at node 11, with a requester assertion: the forwarded search."""
    fed = _fed(nodes["00"])
    headers = {"Authorization": f"Bearer {fed.peers.token(fed.registry.get('11'))}", "Accept": FJ}
    if assertion is not None:
        headers[HEADER] = assertion
    return requests.get(f"{nodes['11'].base}/Observation", timeout=10, headers=headers,
                        params={"subject:Patient.identifier": f"{ID_SYSTEM}|{world['number']}"})


def _refused(r: requests.Response, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:400])
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome" and words in outcome["issue"][0]["diagnostics"], outcome


def test_requester_assertions_out_of_their_time_or_in_another_nodes_name_are_refused(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    key31 = _fed(nodes["31"]).key.key
    aud = _fed(nodes["31"]).registry.get(NATIONAL).url
    now = int(time.time())
    assert _to_national(nodes, world, _signed(key31, "31", aud, _requester())).status_code == 200  # control
    _refused(_to_national(nodes, world, _signed(key31, "31", aud, _requester(), iat=now - 200)), 401, "expired")
    _refused(_to_national(nodes, world, _signed(key31, "31", aud, _requester(), life=3600)), 401, "at most 120 s")
    _refused(_to_national(nodes, world, _signed(key31, "31", aud, _requester(), iat=now + 300)), 401,
             "at most 120 s")
    # node 31's own key, but in the national node's name or Beijing's
    _refused(_to_national(nodes, world, _signed(key31, "00", aud, _requester())), 401, "issued by 'node-00'")
    _refused(_to_national(nodes, world, _signed(key31, "11", aud, _requester("11"))), 401, "issued by 'node-11'")
    # an origin claimed inside a province's own assertion is not read: node 31 cannot pose as a forwarder
    fake_origin = {"province": "11", "assertion": "x.y.z", "jwk": _fed(nodes["11"]).key.public_jwks()["keys"][0]}
    _refused(_to_national(nodes, world, _signed(key31, "31", aud, _requester("11"), origin=fake_origin)), 403,
             "speaks only for its own province")


def test_the_national_nodes_envelope_must_carry_the_origins_own_signed_requester(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    fed00, fed31 = _fed(nodes["00"]), _fed(nodes["31"])
    key00, key31 = fed00.key.key, fed31.key.key
    beijing = fed00.registry.get("11").url
    national = fed31.registry.get(NATIONAL).url
    jwk31 = fed31.key.public_jwks()["keys"][0]

    def envelope(inner: str, requester: Requester | None = None, jwk: dict[str, Any] | None = None,
                 aud: str = beijing, origin: str = "31") -> str:
        return _signed(key00, "00", aud, requester or _requester(),
                       origin={"province": origin, "assertion": inner, "jwk": jwk or jwk31})

    good = _to_beijing(nodes, world, envelope(_signed(key31, "31", national, _requester())))
    assert good.status_code == 200 and good.json()["resourceType"] == "Bundle", good.text  # the control
    # the national node speaking for a Shanghai client without node 31's signature
    _refused(_to_beijing(nodes, world, _signed(key00, "00", beijing, _requester())), 403,
             "speaks only for its own province")
    _refused(_to_beijing(nodes, world, None), 401, HEADER)
    # the envelope's requester is not the one node 31 signed (another organization)
    _refused(_to_beijing(nodes, world, envelope(_signed(key31, "31", national, _requester()),
                                                requester=_requester(organization=GD_ORG))), 401, "differs")
    # an origin assertion signed by a key that is not the one the national node vouches for
    stranger = ECKey.generate_key("P-384", {"alg": ALG, "use": "sig"})
    stranger.ensure_kid()
    _refused(_to_beijing(nodes, world, envelope(_signed(stranger, "31", national, _requester()))), 401, "signature")
    # expired, or addressed to another node
    _refused(_to_beijing(nodes, world, envelope(_signed(key31, "31", national, _requester(),
                                                        iat=int(time.time()) - 300))), 401, "expired")
    _refused(_to_beijing(nodes, world, envelope(_signed(key31, "31", nodes["31"].base, _requester()))), 401,
             "addressed")
    # one origin assertion in two envelopes
    inner = _signed(key31, "31", national, _requester())
    assert _to_beijing(nodes, world, envelope(inner)).status_code == 200
    _refused(_to_beijing(nodes, world, envelope(inner)), 401, "used before")
    # the envelope addressed to another node, or signed by node 31 instead of the national node
    _refused(_to_beijing(nodes, world, envelope(_signed(key31, "31", national, _requester()),
                                                aud=nodes["31"].base)), 401, "addressed")
    forged = _signed(key31, "00", beijing, _requester(), origin={
        "province": "31", "assertion": _signed(key31, "31", national, _requester()), "jwk": jwk31})
    _refused(_to_beijing(nodes, world, forged), 401, "signature")
    # an origin that names Beijing itself, with a Beijing requester: the national node cannot vouch for it
    _refused(_to_beijing(nodes, world, envelope(_signed(key31, "31", national, _requester()), origin="11")), 401,
             "issued by 'node-31', not 'node-11'")


# -- QR codes across nodes -----------------------------------------------------------------------------------


def _qrcode(node: Node, token: str, pid: str, kind: str = "dynamic") -> str:
    body = {"resourceType": "Parameters", "parameter": [{"name": "type", "valueCode": kind},
                                                        {"name": "image", "valueBoolean": False}]}
    r = requests.post(f"{node.base}/Patient/{pid}/$ehc-qrcode", json=body, headers=h(token), timeout=10)
    assert r.status_code == 200, r.text
    return str(next(p["valueString"] for p in r.json()["parameter"] if p["name"] == "token"))


def _verify(node: Node, token: str, code: Any, kind: str = "valueString") -> dict[str, Any]:
    body = {"resourceType": "Parameters", "parameter": [{"name": "token", kind: code}]}
    r = requests.post(f"{node.base}/$ehc-verify", json=body, headers=h(token), timeout=10)
    assert r.status_code == 200, r.text
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in r.json()["parameter"]}


def _signing_key(node: Node) -> Any:
    return node.svc.extensions["ehc"].signing.local.current()


def _knows_kid(node: Node, kid: str) -> bool:
    return _fed(node).union.key(kid) is not None


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _unb32(text: str) -> bytes:
    return base64.b32decode(text + "=" * (-len(text) % 8))


@pytest.fixture(scope="module")
def card(nodes: dict[str, Node], world: dict[str, Any]) -> str:
    """The Beijing resident's card; node 31 has node 11's card keys (through the national node)."""
    kid = _signing_key(nodes["11"]).kid
    assert wait_for(lambda: _knows_kid(nodes["31"], kid), timeout=40), "node 31 never got node 11's key"
    return card_of(world["p11"])


def test_a_card_of_node_11_verifies_and_resolves_at_node_31(nodes: dict[str, Node], world: dict[str, Any],
                                                             card: str) -> None:
    static = _qrcode(nodes["11"], world["t11"], world["p11"]["id"], "static")
    for code, kind in ((static, "static"), (f"{card.lower()}:1", "legacy-static")):
        out = _verify(nodes["31"], world["t31"], code)
        assert out["valid"] is True and out["ehcId"] == card and out["type"] == kind, out
        assert out["requiresConfirmation"] is True
    assert _verify(nodes["31"], world["t31"], static)["valid"] is True  # a static code is shown many times
    found = _pix(nodes, world, card, EHC_SYSTEM).json()
    assert [p["valueReference"]["reference"] for p in found["parameter"] if p["name"] == "targetId"] == \
        [f"{nodes['11'].base}/Patient/{world['p11']['id']}"]


def test_tampered_truncated_wrongly_signed_unknown_and_expired_codes_are_refused_at_both_nodes(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    code = _qrcode(nodes["11"], world["t11"], world["p11"]["id"])
    prefix, kid, payload, signature = code.split(":")
    raw = bytearray(_unb32(payload))
    other = bytes.fromhex(card_of(world["other"]))
    raw[2:34] = other  # another resident's card, the original signature
    swapped = f"{prefix}:{kid}:{_b32(bytes(raw))}:{signature}"
    sig = bytearray(_unb32(signature))
    sig[10] ^= 0x01
    flipped = f"{prefix}:{kid}:{payload}:{_b32(bytes(sig))}"
    now = int(time.time())
    key = _signing_key(nodes["11"])
    wrong_key = issue_token(TokenClaims("dynamic", card, now, now + 60, b"\x01" * 8), kid, SM2PrivateKey.generate())
    unknown_kid = issue_token(TokenClaims("dynamic", card, now, now + 60, b"\x02" * 8), "11ZZZZZZZZ", key.private)
    expired = issue_token(TokenClaims("dynamic", card, now - 400, now - 100, b"\x03" * 8), kid, key.private)
    expected = {
        swapped: "bad-signature", flipped: "bad-signature", wrong_key: "bad-signature",
        unknown_kid: "unknown-key", expired: "expired",
        code[:-1]: "malformed", code[:120]: "malformed", f"{prefix}:{kid}:{payload}": "malformed",
        code.lower(): "malformed", code + ":00": "malformed", " ": "malformed",
        f"{card}:0": "malformed",  # the old dynamic form carries nothing that can be checked
    }
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        for text, reason in expected.items():
            out = _verify(node, token, text)
            assert out["valid"] is False and out["reason"] == reason, (node.province, text[:40], out)
            assert "patient" not in out, out  # a code that does not verify names nobody
    out = _verify(nodes["31"], world["t31"], code)  # the untouched code is still good, once
    assert out["valid"] is True and out["ehcId"] == card


def test_a_dynamic_code_is_accepted_once_at_the_node_that_does_not_know_the_resident(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    code = _qrcode(nodes["11"], world["t11"], world["p11"]["id"])
    first = _verify(nodes["31"], world["t31"], code)
    assert first["valid"] is True and first["type"] == "dynamic" and "requiresConfirmation" not in first or \
        first["requiresConfirmation"] is False
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        again = _verify(node, token, code)
        assert again["valid"] is False and again["reason"] == "replayed", (node.province, again)


def test_a_code_for_a_card_nobody_issued_answers_as_an_unknown_card_at_both_nodes(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    nobody = uuid.uuid4().hex + uuid.uuid4().hex
    now = int(time.time())
    signed = issue_token(TokenClaims("static", nobody.upper(), now, now + 3600, b"\x04" * 8),
                         _signing_key(nodes["11"]).kid, _signing_key(nodes["11"]).private)
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        for code in (signed, f"{nobody}:1"):
            out = _verify(node, token, code)
            assert out["valid"] is False and out["reason"] == "unknown-card" and "patient" not in out, out


def test_a_token_parameter_of_another_type_is_a_400_naming_it(nodes: dict[str, Node], world: dict[str, Any]) -> None:
    for node, token in ((nodes["31"], world["t31"]), (nodes["00"], world["t00"])):
        body = {"resourceType": "Parameters", "parameter": [{"name": "token", "valueInteger": 7}]}
        r = requests.post(f"{node.base}/$ehc-verify", json=body, headers=h(token), timeout=10)
        assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome", (node.province, r.text)


def test_a_province_cannot_publish_a_key_under_another_provinces_kid(nodes: dict[str, Node], world: dict[str, Any],
                                                                       card: str) -> None:
    """Node 31 (its operator, or whoever took its key file) publishes an SM2 key under node 11's kid. The national
    node must not take it: codes signed with it would pass as Beijing's everywhere, and Beijing's as forged."""
    from app.ehc.signing import SigningKey

    kid11 = _signing_key(nodes["11"]).kid
    local31 = nodes["31"].svc.extensions["ehc"].signing.local
    now = int(time.time())
    impostor = SigningKey(kid11, SM2PrivateKey.generate(), now - 10, now + 86400, "31", retired=now - 5)
    local31._modify(lambda keys: ([*keys, impostor], impostor), now)
    try:
        assert any(k["kid"] == kid11 for k in requests.get(f"{nodes['31'].url}/ehc/keys", timeout=10).json()["keys"])
        union = _fed(nodes["00"])
        union.refresh_union()  # what the national node's worker does every 10 s
        published = [k for k in requests.get(f"{nodes['00'].url}/ehc/keys", timeout=10).json()["keys"]
                     if k["kid"] == kid11]
        assert [k["province"] for k in published] == ["11"], published
        assert published[0]["x"] == _signing_key(nodes["11"]).jwk()["x"]
        forged = issue_token(TokenClaims("static", card, now, now + 3600, b"\x05" * 8), kid11, impostor.private)
        out = _verify(nodes["00"], world["t00"], forged)  # node 31 itself signs with its own key file, of course
        assert out["valid"] is False and out["reason"] == "bad-signature", out
    finally:
        local31._modify(lambda keys: ([k for k in keys if k.kid != kid11], None), now)
        _fed(nodes["00"]).refresh_union()


# -- cards of residents who are gone -------------------------------------------------------------------------


def _union_now(nodes: dict[str, Node]) -> None:
    """What the workers do every 10 s: the national node gathers the provinces' lists, then each province fetches
    it (node 11 too: a test run alone must not depend on an earlier test having refreshed it)."""
    _fed(nodes["00"]).refresh_union()
    for province in sorted(nodes.keys() - {"00"}):
        _fed(nodes[province]).refresh_union()


def test_the_card_of_a_resident_deleted_at_their_only_node_is_cancelled_at_the_other(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    gone = post_resource(nodes["11"], world["t11"], patient_body(new_id_number(), "汪", "洋"))
    static = _qrcode(nodes["11"], world["t11"], gone["id"], "static")
    assert _verify(nodes["31"], world["t31"], static)["valid"] is True
    r = requests.delete(f"{nodes['11'].base}/Patient/{gone['id']}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204), r.text
    # Node 11's outbox withdraws the card from the national index, which cancels it: no node holds the resident.
    assert wait_for(lambda: (_union_now(nodes), _verify(nodes["31"], world["t31"], static))[1].get("reason")
                    == "cancelled", timeout=10)
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        for code in (static, f"{card_of(gone)}:1"):
            out = _verify(node, token, code)
            assert out["valid"] is False and out["reason"] == "cancelled", (node.province, out)


def test_a_suspended_card_is_named_so_only_for_a_code_whose_signature_verifies(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    """Online verification checks the signature and the time before the card's status: a forged or tampered code
    of a suspended card says nothing of it."""
    lost = post_resource(nodes["11"], world["t11"], patient_body(new_id_number(), "柳", "青"))
    code = _qrcode(nodes["11"], world["t11"], lost["id"], "static")
    body = {"resourceType": "Parameters", "parameter": [{"name": "status", "valueCode": "suspended"}]}
    r = requests.post(f"{nodes['11'].base}/Patient/{lost['id']}/$ehc-status", json=body, headers=h(world["t11"]),
                      timeout=10)
    assert r.status_code == 200, r.text
    _union_now(nodes)
    prefix, kid, payload, signature = code.split(":")
    sig = bytearray(_unb32(signature))
    sig[3] ^= 0x80
    now = int(time.time())
    key = _signing_key(nodes["11"])
    expired = issue_token(TokenClaims("static", card_of(lost), now - 7200, now - 3600, b"\x06" * 8), kid, key.private)
    for text, reason in ((code, "suspended"), (f"{prefix}:{kid}:{payload}:{_b32(bytes(sig))}", "bad-signature"),
                         (expired, "expired"), (f"{card_of(lost)}:1", "suspended")):
        out = _verify(nodes["31"], world["t31"], text)
        assert out["valid"] is False and out["reason"] == reason, (reason, out)


def test_the_temporary_card_of_a_resident_merged_at_node_11_is_cancelled_at_node_31(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    unnamed = post_resource(nodes["11"], world["t11"], {
        "resourceType": "Patient", "name": [{"text": "钱坤"}],
        "identifier": [{"system": "urn:ehc:mrn:hosp", "value": "ER-" + uuid.uuid4().hex[:8]}]})
    temporary = card_of(unnamed)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{unnamed['id']}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{world['p11']['id']}"}}]}
    r = requests.post(f"{nodes['11'].base}/Patient/$merge", json=body, headers=h(world["t11"]), timeout=20)
    assert r.status_code == 200, r.text
    _union_now(nodes)
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        out = _verify(node, token, f"{temporary}:1")
        assert out["valid"] is False and out["reason"] == "cancelled", (node.province, out)
    assert _verify(nodes["31"], world["t31"], f"{card}:1")["valid"] is True  # the resident's own card is untouched

# -- the national index --------------------------------------------------------------------------------------


def _node_call(nodes: dict[str, Node], frm: str, to: str, method: str, path: str, body: Any = None,
               raw: str | None = None) -> requests.Response:
    """A call of node `frm` to node `to` with its node token (what a peer, or whoever holds its key, can send)."""
    fed = _fed(nodes[frm])
    headers = {"Authorization": f"Bearer {fed.peers.token(fed.registry.get(to))}", "Content-Type": "application/json"}
    data = raw if raw is not None else json.dumps(body) if body is not None else None
    return requests.request(method, f"{nodes[to].url}{path}", headers=headers, data=data, timeout=15)


def test_a_province_cannot_claim_another_residents_card_or_a_card_that_is_not_one(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """Claims set the card every later registration of the resident gets, at every node: a card already the
    national index's for another resident, or text that is no card, would give a resident someone else's card
    or none."""
    number = new_id_number()
    taken = card_of(world["p11"])
    r = _node_call(nodes, "31", "00", "POST", "/federation/claim", {"idNumber": number, "card": taken})
    _refused(r, 409, "another resident")
    for body, field in (({"idNumber": number, "card": "not a card"}, "card"),
                        ({"idNumber": number, "card": "AB" * 33}, "card"),
                        ({"idNumber": number[:-1] + ("0" if number[-1] != "0" else "1"), "card": "AB" * 32},
                         "idNumber"),
                        ({"idNumber": "x" * 5000, "card": "AB" * 32}, "idNumber")):
        for path in ("/federation/claim", "/federation/index"):
            r = _node_call(nodes, "31", "00", "POST", path, {**body, "patient": "p1"})
            assert r.status_code == 400 and r.json()["issue"][0]["expression"] == [field], (path, body, r.text)
    assert _pix(nodes, world, number).status_code == 404  # nothing was stored
    # the resident's own card, claimed again, is still theirs
    r = _node_call(nodes, "31", "00", "POST", "/federation/claim", {"idNumber": world["number"], "card": "CD" * 32})
    assert r.status_code == 200 and r.json() == {"card": taken}


def test_a_province_cannot_withdraw_or_take_a_card_it_does_not_hold(nodes: dict[str, Node],
                                                                     world: dict[str, Any]) -> None:
    """/federation/withdraw cancels a card at the national node when its last holder lets go: a province that never
    held the card (another province's resident, or a temporary card of node 11) changes nothing, and cannot index
    node 11's temporary card as its own."""
    unnamed = post_resource(nodes["11"], world["t11"], {"resourceType": "Patient", "name": [{"text": "无名"}]})
    static = _qrcode(nodes["11"], world["t11"], unnamed["id"], "static")
    assert wait_for(lambda: _verify(nodes["31"], world["t31"], static)["valid"] is True, timeout=10)
    for card, ref in ((card_of(world["p11"]), world["p11"]["id"]), (card_of(unnamed), unnamed["id"])):
        r = _node_call(nodes, "31", "00", "POST", "/federation/withdraw", {"card": card, "patient": ref})
        assert r.status_code == 200, r.text
    assert r.json() == {"held": False, "released": False, "indexed": True}  # node 11's card was never 31's
    r = _node_call(nodes, "31", "00", "POST", "/federation/index", {"card": card_of(unnamed), "patient": "p31"})
    _refused(r, 409, "another node's")
    _union_now(nodes)
    assert _verify(nodes["31"], world["t31"], static)["valid"] is True
    assert _verify(nodes["31"], world["t31"], f"{card_of(world['p11'])}:1")["valid"] is True
    assert _pix(nodes, world, world["number"]).status_code == 200


def test_bad_input_to_the_federation_endpoints_is_a_4xx_outcome_never_a_500(nodes: dict[str, Node]) -> None:
    cases: list[tuple[str, str, str, Any, str | None]] = [
        ("00", "POST", "/federation/claim", None, "not json"),
        ("00", "POST", "/federation/claim", None, "[1, 2]"),
        ("00", "POST", "/federation/claim", {"idNumber": 5, "card": "A"}, None),
        ("00", "POST", "/federation/index", {"idNumber": new_id_number(), "card": "C" * 64, "patient": {"a": 1}}, None),
        ("00", "POST", "/federation/query", {"resourceType": "Nope", "params": []}, None),
        ("00", "POST", "/federation/withdraw", {"card": "not a card", "patient": "p1"}, None),
        ("00", "POST", "/federation/withdraw", {"card": "A" * 64}, None),
        ("00", "POST", "/federation/index", {"card": "A" * 64, "patient": ["p1"]}, None),
        ("00", "POST", "/federation/nonce", {"province": ["11"], "kid": "K", "nonce": "00", "exp": 2000000000}, None),
        ("00", "POST", "/federation/nonce", {"province": "11", "kid": "K", "nonce": "zz", "exp": 5}, None),
        ("00", "GET", "/federation/card/%00", None, None),
        ("00", "PUT", "/federation/claim", {}, None),
        ("11", "POST", "/federation/claim", {"idNumber": "1", "card": "2"}, None),  # national-only, at a province
        ("11", "GET", "/federation/card/" + "A" * 64, None, None),
    ]
    for to, method, path, body, raw in cases:
        frm = "31" if to == "00" else "00"
        r = _node_call(nodes, frm, to, method, path, body, raw)
        assert 400 <= r.status_code < 500, (path, body, raw, r.status_code, r.text[:300])
        assert r.json()["resourceType"] == "OperationOutcome", (path, r.text[:300])
    # the national node cannot spend node 31's codes at node 11
    r = _node_call(nodes, "00", "11", "POST", "/federation/nonce",
                   {"province": "31", "kid": "31ABC", "nonce": "00", "exp": 2000000000})
    _refused(r, 403, "spends only its own codes")


def test_the_national_index_answers_node_tokens_and_patient_readers_only(nodes: dict[str, Node],
                                                                         world: dict[str, Any]) -> None:
    national = nodes["00"]
    reader = national.token(national.client("system/Observation.rs", organization="org-nhc-stats"))
    _refused(_pix(nodes, world, world["number"], token=reader), 403, "insufficient scope")
    r = requests.get(f"{national.base}/Patient/$ihe-pix", params={"sourceIdentifier": f"{ID_SYSTEM}|{world['number']}"},
                     headers={"Accept": FJ}, timeout=10)
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    for path in ("/federation/card/" + card_of(world["p11"]), "/federation/claim", "/federation/query"):
        method = "GET" if "card/" in path else "POST"
        r = requests.request(method, f"{national.url}{path}", json={}, headers=h(world["t00"]), timeout=10)
        assert r.status_code == 403 and r.json()["resourceType"] == "OperationOutcome", (path, r.text)


def test_an_id_number_with_a_lower_case_x_is_one_resident_and_one_card_nationwide(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    from datetime import date

    from app.synthetic import resident_id

    number = next(n for n in (resident_id("110101", date(1975, 5, 5), s, True) for s in range(500))
                  if n.endswith("X"))
    at11 = post_resource(nodes["11"], world["t11"], patient_body(number, "何", "平"))
    obs = post_resource(nodes["11"], world["t11"], observation_body(at11["id"]))
    at31 = post_resource(nodes["31"], world["t31"], patient_body(number[:-1] + "x", "何", "平"))
    assert card_of(at31) == card_of(at11)
    consent = _grant(nodes, world, _consent(at11["id"], PROVINCE_31))
    try:
        for spelled in (number, number[:-1] + "x"):
            assert _from_beijing(nodes, _search(nodes, world["t31"], spelled)) == \
                [f"{nodes['11'].base}/Observation/{obs['id']}"], spelled
    finally:
        _revoke(nodes, world, consent)


# -- the outbox ----------------------------------------------------------------------------------------------


def test_index_entries_refused_by_the_national_node_stay_queued_and_arrive_once_when_it_takes_them(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """The national node stops trusting node 11 (401 on the index, no token): node 11's registrations stay in its
    outbox, and reach the index once after the national node trusts it again."""
    fed11 = _fed(nodes["11"])
    assert nodes["00"].ehc("nodes", "remove", "--province", "11").exit_code == 0
    try:
        assert wait_for(lambda: "11" not in _fed(nodes["00"]).registry.nodes(), timeout=5)
        numbers = [new_id_number() for _ in range(2)]
        created = [post_resource(nodes["11"], world["t11"], patient_body(n, "葛", "优")) for n in numbers]
        time.sleep(2.0)  # the worker has tried and been refused
        pending = {d["_id"] for d in fed11.outbox.col.find({})}
        assert {p["id"] for p in created} <= pending
        assert all(_pix(nodes, world, n).status_code == 404 for n in numbers)
    finally:
        r = nodes["00"].ehc("nodes", "add", "--province", "11", "--url", nodes["11"].base)
        assert r.exit_code == 0, r.output
    for number, patient in zip(numbers, created, strict=True):
        found = wait_for(lambda n=number: _pix(nodes, world, n).status_code == 200, timeout=20)
        assert found, f"{number} never reached the national index"
        refs = [p["valueReference"]["reference"] for p in _pix(nodes, world, number).json()["parameter"]
                if p["name"] == "targetId"]
        assert refs == [f"{nodes['11'].base}/Patient/{patient['id']}"]
    assert wait_for(lambda: not {p["id"] for p in created} & {d["_id"] for d in fed11.outbox.col.find({})},
                    timeout=10)


def test_deleting_the_resident_at_one_node_leaves_their_card_at_the_other(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """The card is the resident's, nationwide: a Patient deleted at node 11 cancelled it, and node 31, which holds
    the same resident, refused its codes (and $ehc-qrcode answered 409 there for ever)."""
    number = new_id_number()
    at11 = post_resource(nodes["11"], world["t11"], patient_body(number, "严", "格"))
    at31 = post_resource(nodes["31"], world["t31"], patient_body(number, "严", "格"))
    assert card_of(at31) == card_of(at11)
    r = requests.delete(f"{nodes['11'].base}/Patient/{at11['id']}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204), r.text
    assert wait_for(lambda: _fed(nodes["11"]).outbox.size() == 0, timeout=10)  # the withdrawal delivered
    _union_now(nodes)
    static = _qrcode(nodes["31"], world["t31"], at31["id"], "static")
    for node, token in ((nodes["31"], world["t31"]), (nodes["11"], world["t11"])):
        out = _verify(node, token, static)
        assert out["valid"] is True, (node.province, out)
    assert _verify(nodes["31"], world["t31"], f"{card_of(at31)}:1")["valid"] is True


def test_a_temporary_card_of_node_11_verifies_at_node_31(nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """A card without an ID number (临时卡) was not in the national index, so its codes were unknown-card at every
    other node; it is indexed by its ID alone, and cancelled everywhere when its Patient is deleted."""
    unnamed = post_resource(nodes["11"], world["t11"], {
        "resourceType": "Patient", "name": [{"text": "无名氏"}],
        "identifier": [{"system": "urn:ehc:mrn:hosp", "value": "ER-" + uuid.uuid4().hex[:8]}]})
    static = _qrcode(nodes["11"], world["t11"], unnamed["id"], "static")
    assert wait_for(lambda: _verify(nodes["31"], world["t31"], static)["valid"] is True, timeout=10)
    assert _verify(nodes["31"], world["t31"], _qrcode(nodes["11"], world["t11"], unnamed["id"]))["valid"] is True
    r = requests.delete(f"{nodes['11'].base}/Patient/{unnamed['id']}", headers=h(world["t11"]), timeout=10)
    assert r.status_code in (200, 204), r.text
    assert wait_for(lambda: (_union_now(nodes), _verify(nodes["31"], world["t31"], static))[1].get("reason")
                    == "cancelled", timeout=10)


def _two_numbers() -> tuple[str, str]:
    """Two new ID numbers of the same sex digit parity: a correction from one to the other changes only the number."""
    first, second = new_id_number(), new_id_number()
    while (int(first[16]) - int(second[16])) % 2:
        second = new_id_number()
    return first, second


def _correct(node: Node, token: str, patient: dict[str, Any], number: str) -> dict[str, Any]:
    """PUT the Patient with its ID number replaced by `number` (and the birth date it carries); the new version."""
    fixed = dict(patient, identifier=[i for i in patient["identifier"] if i["system"] != ID_SYSTEM] +
                 [{"system": ID_SYSTEM, "value": number}], birthDate=patient_body(number)["birthDate"])
    r = requests.put(f"{node.base}/Patient/{patient['id']}", json=fixed, headers=h(token), timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_corrected_id_number_does_not_leave_its_card_to_the_true_holder_of_the_wrong_one(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """The card derived from a mistyped ID number stayed after the correction, so the true holder of that number,
    registered at another node, was given the card whose codes the first resident holds."""
    typed, right = _two_numbers()
    a = post_resource(nodes["11"], world["t11"], patient_body(typed, "甲", "一"))
    old_code = _qrcode(nodes["11"], world["t11"], a["id"], "static")
    fixed = _correct(nodes["11"], world["t11"], a, right)
    assert card_of(fixed) != card_of(a)
    assert wait_for(lambda: _fed(nodes["11"]).outbox.size() == 0, timeout=10)  # the old card withdrawn
    b = post_resource(nodes["31"], world["t31"], patient_body(typed, "乙", "二"))  # the true holder of `typed`
    assert card_of(b) not in (card_of(fixed), card_of(a))
    _union_now(nodes)
    assert _verify(nodes["31"], world["t31"], _qrcode(nodes["31"], world["t31"], b["id"], "static"))["valid"] is True
    out = _verify(nodes["31"], world["t31"], old_code)
    assert out["valid"] is False and out["reason"] == "cancelled", out


def test_a_correction_at_one_node_leaves_the_card_another_node_holds(nodes: dict[str, Node],
                                                                      world: dict[str, Any]) -> None:
    """Node 31 registered the resident of node 11 (their card, nationwide), then changed the ID number on its
    record: the card it retired was cancelled at node 31 at once, so that node 11's resident, whose number it is,
    lost their card at every node."""
    number, other = _two_numbers()
    at11 = post_resource(nodes["11"], world["t11"], patient_body(number, "丙", "三"))
    at31 = post_resource(nodes["31"], world["t31"], patient_body(number, "丙", "三"))
    assert card_of(at31) == card_of(at11)
    assert card_of(_correct(nodes["31"], world["t31"], at31, other)) != card_of(at11)
    assert wait_for(lambda: _fed(nodes["31"]).outbox.size() == 0, timeout=10)  # the old card withdrawn
    _union_now(nodes)
    _fed(nodes["11"]).refresh_union()
    static = _qrcode(nodes["11"], world["t11"], at11["id"], "static")
    for node, token in ((nodes["11"], world["t11"]), (nodes["31"], world["t31"])):
        out = _verify(node, token, static)
        assert out["valid"] is True, (node.province, out)


def test_the_card_keys_of_a_province_the_national_node_stops_trusting_stop_verifying(
        nodes: dict[str, Node], world: dict[str, Any], card: str) -> None:
    """`ehc nodes remove --province 31` at the national node cuts node 31 off: its card keys leave the union, so
    codes signed with them (by node 31, or whoever took its key file) are unknown-key at every other node."""
    shanghai = post_resource(nodes["31"], world["t31"], patient_body(new_id_number(), "石", "磊"))
    code = _qrcode(nodes["31"], world["t31"], shanghai["id"], "static")
    _fed(nodes["00"]).refresh_union()
    _fed(nodes["11"]).refresh_union()
    assert _verify(nodes["11"], world["t11"], code)["valid"] is True
    assert nodes["00"].ehc("nodes", "remove", "--province", "31").exit_code == 0
    try:
        assert wait_for(lambda: "31" not in _fed(nodes["00"]).registry.nodes(), timeout=5)
        _fed(nodes["00"]).refresh_union()
        _fed(nodes["11"]).refresh_union()
        kid31 = code.split(":")[1]
        assert kid31 not in [k["kid"] for k in requests.get(f"{nodes['00'].url}/ehc/keys", timeout=10).json()["keys"]]
        out = _verify(nodes["11"], world["t11"], code)
        assert out["valid"] is False and out["reason"] == "unknown-key", out
    finally:
        r = nodes["00"].ehc("nodes", "add", "--province", "31", "--url", nodes["31"].base)
        assert r.exit_code == 0, r.output
        assert wait_for(lambda: "31" in _fed(nodes["00"]).registry.nodes(), timeout=5)
        _fed(nodes["00"]).refresh_union()
        _fed(nodes["11"]).refresh_union()
    assert _verify(nodes["11"], world["t11"], code)["valid"] is True


# -- the card's life across nodes, attacked again (2026-12-01) -----------------------------------------------


def _delivered(node: Node, *ids: str) -> bool:
    """The outbox of `node` holds none of these Patients' entries any more."""
    return bool(wait_for(lambda: not ({d["_id"] for d in _fed(node).outbox.col.find({}, {"_id": 1})} & set(ids)),
                         timeout=30))


def _union_everywhere(nodes: dict[str, Node]) -> None:
    for p in ("00", "31", "11"):
        _fed(nodes[p]).refresh_union()


def _delete(node: Node, token: str, pid: str) -> None:
    r = requests.delete(f"{node.base}/Patient/{pid}", headers=h(token), timeout=10)
    assert r.status_code in (200, 204), r.text


def _merge(node: Node, token: str, source: str, target: str) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}},
        {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}]}
    r = requests.post(f"{node.base}/Patient/$merge", json=body, headers=h(token), timeout=20)
    assert r.status_code == 200, r.text


def _passport() -> str:
    return "E" + str(10_000_000 + uuid.uuid4().int % 89_999_999)


def test_a_registration_refused_after_its_claim_keeps_no_card_alive(nodes: dict[str, Node],
                                                                   world: dict[str, Any]) -> None:
    """Node 31 claimed the card at the national node before its write, which was then refused (422), and the claim
    stayed: when the resident's only Patient (node 11) was deleted, the national node kept the card for node 31,
    and the deleted Patient's codes went on verifying. The claims of refused writes are withdrawn."""
    number = new_id_number()
    p11 = post_resource(nodes["11"], world["t11"], patient_body(number, "冯", "远"))
    static = _qrcode(nodes["11"], world["t11"], p11["id"], "static")
    assert _delivered(nodes["11"], p11["id"])
    bad = dict(patient_body(number, "冯", "远"), managingOrganization={"reference": "Organization/nowhere"})
    r = requests.post(f"{nodes['31'].base}/Patient", json=bad, headers=h(world["t31"]), timeout=20)
    assert r.status_code == 422, r.text
    assert wait_for(lambda: _fed(nodes["31"]).outbox.size() == 0, timeout=30)  # the claim withdrawn
    _delete(nodes["11"], world["t11"], p11["id"])
    assert _delivered(nodes["11"], p11["id"])
    _union_everywhere(nodes)
    for node, token in ((nodes["11"], world["t11"]), (nodes["31"], world["t31"])):
        out = _verify(node, token, static)
        assert out["valid"] is False and out["reason"] == "cancelled", (node.province, out)
    assert _pix(nodes, world, number).status_code == 404


def test_a_withdrawal_delivered_twice_cancels_nothing_another_node_holds(nodes: dict[str, Node],
                                                                        world: dict[str, Any]) -> None:
    """The outbox delivers at least once (a crash between the national node's answer and the entry's delete sends
    it again): the second delivery found nothing of node 11's left, was answered 'not held', and node 11 cancelled
    the card node 31's resident holds."""
    number = new_id_number()
    p11 = post_resource(nodes["11"], world["t11"], patient_body(number, "卫", "青"))
    p31 = post_resource(nodes["31"], world["t31"], patient_body(number, "卫", "青"))
    assert _delivered(nodes["11"], p11["id"]) and _delivered(nodes["31"], p31["id"])
    _delete(nodes["11"], world["t11"], p11["id"])
    assert _delivered(nodes["11"], p11["id"])
    _fed(nodes["11"]).outbox.enqueue(p11["id"], withdraw=[card_of(p11)])  # the same withdrawal once more
    assert _delivered(nodes["11"], p11["id"])
    _union_everywhere(nodes)
    code = _qrcode(nodes["31"], world["t31"], p31["id"], "static")
    assert _verify(nodes["31"], world["t31"], code)["valid"] is True


def test_a_resident_deleted_and_registered_again_while_the_national_node_is_down_keeps_a_working_card(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """P1 deleted and the resident registered again as P2 while the national node was down: P2 derived the same
    card. When the national node came back, P1's withdrawal (delivered first) found no ref left, the card was
    cancelled nationally and at node 11, and P2 had no working card."""
    number = new_id_number()
    p1 = post_resource(nodes["11"], world["t11"], patient_body(number, "蒙", "恬"))
    assert _delivered(nodes["11"], p1["id"])
    nodes["00"].stop()
    try:
        _delete(nodes["11"], world["t11"], p1["id"])
        p2 = post_resource(nodes["11"], world["t11"], patient_body(number, "蒙", "恬"))  # the claim times out
    finally:
        nodes["00"].start()
    assert _delivered(nodes["11"], p1["id"], p2["id"])
    _union_everywhere(nodes)
    assert _verify(nodes["11"], world["t11"], _qrcode(nodes["11"], world["t11"], p2["id"], "static"))["valid"]
    refs = [p["valueReference"]["reference"] for p in _pix(nodes, world, number).json().get("parameter", [])
            if p["name"] == "targetId"]
    assert refs == [f"{nodes['11'].base}/Patient/{p2['id']}"], refs


def test_codes_of_a_card_left_by_a_correction_do_not_verify_as_the_corrected_resident(
        nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """X registered at node 11 under T's number (T at node 31) was given T's card, then corrected: node 11
    released the card (T holds it), but found X again through the card's old identifier, so X's codes of T's card
    verified at node 11 naming X."""
    typed, right = _two_numbers()
    t = post_resource(nodes["31"], world["t31"], patient_body(typed, "丁", "四"))
    x = post_resource(nodes["11"], world["t11"], patient_body(typed, "戊", "五"))
    assert card_of(x) == card_of(t)
    code = _qrcode(nodes["11"], world["t11"], x["id"], "static")
    _correct(nodes["11"], world["t11"], x, right)
    assert _delivered(nodes["11"], x["id"])
    _union_everywhere(nodes)
    out = _verify(nodes["11"], world["t11"], code)
    assert out.get("patient", {}).get("reference") != f"Patient/{x['id']}", out
    assert _verify(nodes["31"], world["t31"], _qrcode(nodes["31"], world["t31"], t["id"], "static"))["valid"]


def test_an_id_number_added_to_a_passport_resident_reaches_the_national_index(nodes: dict[str, Node],
                                                                             world: dict[str, Any]) -> None:
    """The passport card, indexed by its ID alone, made the national node refuse (409, every 5 s for ever) the
    entry with the ID number added later: the resident was not findable nationally, and given a second card at
    node 31."""
    number = new_id_number()
    body = dict(patient_body(number, "孙", "立"), identifier=[{"system": "urn:ehc:id:passport", "value": _passport()}])
    p = post_resource(nodes["11"], world["t11"], body)
    assert _delivered(nodes["11"], p["id"])
    p["identifier"].append({"system": ID_SYSTEM, "value": number})
    r = requests.put(f"{nodes['11'].base}/Patient/{p['id']}", json=p, headers=h(world["t11"]), timeout=10)
    assert r.status_code == 200 and card_of(r.json()) == card_of(p), r.text
    assert _delivered(nodes["11"], p["id"])
    assert _pix(nodes, world, number).status_code == 200
    assert card_of(post_resource(nodes["31"], world["t31"], patient_body(number, "孙", "立"))) == card_of(p)


def test_a_merged_source_keeps_its_card_nationwide(nodes: dict[str, Node], world: dict[str, Any]) -> None:
    """After a merge the source's formal card stays valid and points to the target (docs/mpi.md); at a federated
    node the source's write withdrew it as replaced, and it was cancelled everywhere."""
    number = new_id_number()
    target = post_resource(nodes["11"], world["t11"], patient_body(number, "韩", "信"))
    source = post_resource(nodes["11"], world["t11"], dict(
        patient_body(number, "韩", "信"), identifier=[{"system": "urn:ehc:id:passport", "value": _passport()}]))
    code = _qrcode(nodes["11"], world["t11"], source["id"], "static")
    assert _delivered(nodes["11"], source["id"], target["id"])
    _union_everywhere(nodes)
    assert _verify(nodes["31"], world["t31"], code)["valid"] is True
    _merge(nodes["11"], world["t11"], source["id"], target["id"])
    assert _delivered(nodes["11"], source["id"], target["id"])
    _union_everywhere(nodes)
    for node, token in ((nodes["11"], world["t11"]), (nodes["31"], world["t31"])):
        assert _verify(node, token, code)["valid"] is True, node.province


def test_a_code_of_a_province_that_is_no_node_is_refused_not_retried(nodes: dict[str, Node]) -> None:
    r = _node_call(nodes, "31", "00", "POST", "/federation/nonce",
                   {"province": "99", "kid": "99K", "nonce": "00", "exp": 2000000000})
    assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome", r.text


def test_a_province_cannot_cancel_a_card_it_does_not_hold_by_listing_it(nodes: dict[str, Node],
                                                                        world: dict[str, Any]) -> None:
    """The national node took every revocation a province published: node 31 (its operator, or whoever can write
    its database) listing node 11's resident's card as cancelled made it refused at every node, node 11 included.
    A card node 31 holds too is still suspended from there (挂失 at any node where the resident is registered)."""
    only11 = post_resource(nodes["11"], world["t11"], patient_body(new_id_number(), "季", "布"))
    code = _qrcode(nodes["11"], world["t11"], only11["id"], "static")
    assert _delivered(nodes["11"], only11["id"])
    nodes["31"].svc.extensions["ehc"].cards.local.set_status(card_of(only11), "cancelled", None, "not ours")
    _union_everywhere(nodes)
    assert _verify(nodes["11"], world["t11"], code)["valid"] is True
    number = new_id_number()
    both = post_resource(nodes["11"], world["t11"], patient_body(number, "栾", "布"))
    at31 = post_resource(nodes["31"], world["t31"], patient_body(number, "栾", "布"))
    assert _delivered(nodes["31"], at31["id"])
    code = _qrcode(nodes["11"], world["t11"], both["id"], "static")
    nodes["31"].svc.extensions["ehc"].cards.local.set_status(card_of(at31), "suspended", at31["id"], "lost")
    _union_everywhere(nodes)
    out = _verify(nodes["11"], world["t11"], code)
    assert out["valid"] is False and out["reason"] == "suspended", out
