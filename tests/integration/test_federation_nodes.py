"""Federation trust: `ehc nodes add|list|remove|key`, node-to-node Backend Services tokens and the signed
requester assertion, refused when forged, replayed, or sent by a node that is not registered."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import requests
from joserfc import jwt
from joserfc.jwk import ECKey

from app.federation import assertions
from app.federation.assertions import HEADER, Requester
from app.federation.registry import NATIONAL
from tests.integration.federation_helpers import *  # noqa: F403 - the nodes fixture
from tests.integration.federation_helpers import FJ, Node, trusted, wait_for

OBS = "system/Observation.rs system/DocumentReference.rs system/Patient.rs"


def _fed(node: Node) -> Any:
    return node.svc.extensions["federation"]


def _national_as_seen_by(node: Node) -> Any:
    return _fed(node).registry.get(NATIONAL)


def _query(node31: Node, national: Node, requester_header: str | None, token: str | None = None) -> Any:
    fed = _fed(node31)
    target = _national_as_seen_by(node31)
    token = token or fed.peers.token(target)
    headers = {"Authorization": f"Bearer {token}", "Accept": FJ}
    if requester_header is not None:
        headers[HEADER] = requester_header
    body = {"resourceType": "Observation",
            "params": [["subject:Patient.identifier", "urn:oid:2.16.156.10011.1.3|110101199001010011"]]}
    return requests.post(f"{national.url}/federation/query", json=body, headers=headers, timeout=10)


def _requester(province: str = "31") -> Requester:
    return Requester("sh-hospital", "org-sh", province, "TREAT", OBS.split())


def test_nodes_list_shows_each_peer_with_the_fingerprint_its_operator_sees(nodes: dict[str, Node]) -> None:
    listed = [json.loads(line) for line in nodes["00"].ehc("nodes", "list").stdout.splitlines()]
    assert [n["province"] for n in listed] == ["11", "31"]
    for entry in listed:
        own = json.loads(nodes[entry["province"]].ehc("nodes", "key").stdout)
        assert own == {"province": entry["province"], "role": "province", "fingerprint": entry["fingerprint"]}
        assert entry["url"] == nodes[entry["province"]].base
    on31 = [json.loads(line) for line in nodes["31"].ehc("nodes", "list").stdout.splitlines()]
    assert [(n["province"], n["fingerprint"]) for n in on31] == \
        [("00", json.loads(nodes["00"].ehc("nodes", "key").stdout)["fingerprint"])]


def test_a_province_node_trusts_only_the_national_node(nodes: dict[str, Node]) -> None:
    r = nodes["31"].ehc("nodes", "add", "--province", "11", "--url", nodes["11"].base)
    assert r.exit_code == 2 and "only the national node" in r.output


def test_the_national_url_on_a_province_node_must_agree_with_the_one_added(nodes: dict[str, Node]) -> None:
    r = nodes["11"].ehc("nodes", "add", "--province", "00", "--url", nodes["31"].base)
    assert r.exit_code == 2 and "EHC_NATIONAL_URL" in r.output
    assert [json.loads(line)["url"] for line in nodes["11"].ehc("nodes", "list").stdout.splitlines()] == \
        [nodes["00"].base]


def test_add_refuses_a_wrong_fingerprint_and_a_node_that_is_another_province(nodes: dict[str, Node]) -> None:
    r = nodes["00"].ehc("nodes", "add", "--province", "11", "--url", nodes["11"].base, "--fingerprint", "AAAA")
    assert r.exit_code == 2 and "fingerprint mismatch" in r.output
    r = nodes["00"].ehc("nodes", "add", "--province", "44", "--url", nodes["11"].base)
    assert r.exit_code == 2 and "says it is province '11'" in r.output
    assert [json.loads(line)["province"] for line in nodes["00"].ehc("nodes", "list").stdout.splitlines()] == \
        ["11", "31"]


def test_a_node_that_is_not_registered_gets_no_token(nodes: dict[str, Node]) -> None:
    stranger = ECKey.generate_key("P-384", {"alg": "ES384", "use": "sig"})
    stranger.ensure_kid()
    fed = _fed(nodes["31"])
    t = int(time.time())
    forged = jwt.encode({"alg": "ES384", "kid": stranger.kid, "typ": "JWT"},
                        {"iss": "node-31", "sub": "node-31", "aud": f"{nodes['00'].url}/oauth/token", "iat": t,
                         "exp": t + 60, "jti": uuid.uuid4().hex}, stranger, algorithms=["ES384"])
    r = requests.post(f"{nodes['00'].url}/oauth/token", timeout=10, data={  # node 31's client id, another key
        "grant_type": "client_credentials", "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": forged})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"
    from app.federation.peers import Peers
    from app.federation.registry import Node as Peer

    other = Peers("44", fed.peers.key)  # a province nobody registered
    target = Peer("00", nodes["00"].base, {}, "", 0)
    r = requests.post(f"{nodes['00'].url}/oauth/token", timeout=10, data={
        "grant_type": "client_credentials", "scope": "system/*.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": other.client_assertion(target)})
    assert r.status_code in (400, 401) and r.json()["error"] == "invalid_client"


def test_a_replayed_node_client_assertion_is_refused(nodes: dict[str, Node]) -> None:
    fed = _fed(nodes["31"])
    signed = fed.peers.client_assertion(_national_as_seen_by(nodes["31"]), jti=uuid.uuid4().hex)
    form = {"grant_type": "client_credentials", "scope": "system/*.rs",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": signed}
    first = requests.post(f"{nodes['00'].url}/oauth/token", data=form, timeout=10)
    assert first.status_code == 200 and first.json()["expires_in"] <= 300
    again = requests.post(f"{nodes['00'].url}/oauth/token", data=form, timeout=10)
    assert again.status_code in (400, 401) and "replay" in again.json()["error_description"]


def test_requester_assertion_forged_replayed_missing_or_for_another_province_is_refused(
        nodes: dict[str, Node]) -> None:
    fed = _fed(nodes["31"])
    national = _national_as_seen_by(nodes["31"])
    good = fed.sign_for(national, _requester())
    ok = _query(nodes["31"], nodes["00"], good)
    assert ok.status_code == 200, ok.text
    replay = _query(nodes["31"], nodes["00"], good)
    assert replay.status_code == 401 and "used before" in replay.json()["issue"][0]["diagnostics"]

    forger = ECKey.generate_key("P-384", {"alg": "ES384", "use": "sig"})
    forger.ensure_kid()
    forged = assertions.sign(forger, "31", national.url, _requester())
    r = _query(nodes["31"], nodes["00"], forged)
    assert r.status_code == 401 and "signature" in r.json()["issue"][0]["diagnostics"]

    tampered = good.split(".")
    claims = json.loads(_b64d(tampered[1]))
    claims["ehc_req"]["province"] = "11"
    claims["jti"] = uuid.uuid4().hex
    tampered[1] = _b64e(json.dumps(claims).encode())
    r = _query(nodes["31"], nodes["00"], ".".join(tampered))
    assert r.status_code == 401

    r = _query(nodes["31"], nodes["00"], None)
    assert r.status_code == 401 and HEADER in r.json()["issue"][0]["diagnostics"]

    other_province = fed.sign_for(national, _requester("11"))  # node 31 speaking for a Beijing client
    r = _query(nodes["31"], nodes["00"], other_province)
    assert r.status_code == 403 and "own province" in r.json()["issue"][0]["diagnostics"]

    wrong_audience = assertions.sign(fed.key.key, "31", nodes["11"].base, _requester())
    r = _query(nodes["31"], nodes["00"], wrong_audience)
    assert r.status_code == 401 and "addressed" in r.json()["issue"][0]["diagnostics"]


def test_a_node_token_cannot_write_or_read_without_an_assertion(nodes: dict[str, Node]) -> None:
    fed = _fed(nodes["00"])
    node11 = fed.registry.get("11")
    token = fed.peers.token(node11)
    r = requests.get(f"{nodes['11'].base}/Observation", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 401 and HEADER in r.json()["issue"][0]["diagnostics"]
    r = requests.post(f"{nodes['11'].base}/Patient", headers={"Authorization": f"Bearer {token}",
                                                             "Content-Type": FJ},
                      json={"resourceType": "Patient"}, timeout=10)
    assert r.status_code == 403


def test_a_malformed_nonce_from_a_registered_node_is_refused_with_400(nodes: dict[str, Node]) -> None:
    """JSON's 1e400 reads as infinity and 1e300 as a time datetime cannot hold: both ended in a 500."""
    national = nodes["00"]
    token = _fed(nodes["31"]).peers.token(_national_as_seen_by(nodes["31"]))
    for exp, field in (("1e400", "nonce"), ("1e300", "exp"), ("-5", "exp"), ('"soon"', "nonce")):
        r = requests.post(f"{national.url}/federation/nonce", timeout=10,
                          headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                          data=f'{{"province": "31", "kid": "k1", "nonce": "00ff", "exp": {exp}}}')
        assert r.status_code == 400, (exp, r.status_code, r.text[:300])
        assert r.json()["issue"][0]["expression"] == [field], exp


def test_a_removed_node_is_refused_at_once_even_with_a_live_token(nodes: dict[str, Node]) -> None:
    fed = _fed(nodes["31"])
    national = _national_as_seen_by(nodes["31"])
    token = fed.peers.token(national, fresh=True)
    assert nodes["00"].ehc("nodes", "remove", "--province", "31").exit_code == 0
    try:
        assert wait_for(lambda: "31" not in trusted(nodes["00"]), timeout=5)  # re-read every second
        r = _query(nodes["31"], nodes["00"], fed.sign_for(national, _requester()), token=token)
        assert r.status_code == 401 and "not registered" in r.json()["issue"][0]["diagnostics"]
    finally:
        r = nodes["00"].ehc("nodes", "add", "--province", "31", "--url", nodes["31"].base)
        assert r.exit_code == 0, r.output
        assert wait_for(lambda: "31" in trusted(nodes["00"]), timeout=5)
        fed.peers.token(national, fresh=True)


def _b64d(text: str) -> bytes:
    import base64

    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")
