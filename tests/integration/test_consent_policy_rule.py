"""Core invariant ppc-1 on Consent (a policy or a policyRule): a Consent with neither is refused 400 naming ppc-1
and nothing is stored; the server's own Consents (the portal's grants, relative bindings) carry the policyRule
OPTIN (app.auth.consent.policy_rule); Consents stored before ppc-1 was checked, without one, still count, and
the portal's revocation and unbinding write their next version with the policyRule."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import requests

from app.auth.bindings import bind, unbind
from app.auth.consent import POLICY_RULE_CODE, POLICY_RULE_SYSTEM, add_policy_rule, policy_rule
from app.auth.plugin import auth_state
from tests.integration.auth_helpers import *  # noqa: F403
from tests.integration.auth_helpers import FJ, account, bearer, create, csrf_of, observation, stored_token
from tests.integration.portal_helpers import grant_province_44, portal_login, resident

PASSWORD = "policy rule pass 1"
OPTIN = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}]}
PROVINCE_31 = {"identifier": {"system": "urn:ehc:province", "value": "31"}}


def consent_without_policy(pid: str, actor: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Consent as this server and its documented clients wrote them before ppc-1: no policy, no policyRule."""
    return {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{pid}"},
        "provision": {"type": "permit", "actor": [{
            "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                 "code": "IRCP"}]}, "reference": actor or PROVINCE_31}],
            "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction",
                                    "code": "access"}]}]},
    }


def stored_consents(svc: Any, pid: str) -> int:
    return int(svc.repo.db["Consent"].count_documents({"res.patient.reference": f"Patient/{pid}"}))


def ppc_1(r: Any, path: str) -> None:
    """A 400 OperationOutcome with an invariant issue on `path` naming ppc-1."""
    assert r.status_code == 400, r.get_data(as_text=True)[:400]
    oo = r.get_json()
    assert oo["resourceType"] == "OperationOutcome"
    hits = [i for i in oo["issue"] if i.get("expression") == [path] and "(ppc-1)" in i["diagnostics"]]
    assert hits and hits[0]["code"] == "invariant" and hits[0]["severity"] == "error", oo["issue"]
    assert "Either a Policy or PolicyRule" in hits[0]["diagnostics"]


def test_the_policy_rule_is_one_constant():
    assert policy_rule() == OPTIN and (POLICY_RULE_SYSTEM, POLICY_RULE_CODE) == (
        OPTIN["coding"][0]["system"], "OPTIN")
    rule = policy_rule()
    rule["coding"].append({"code": "changed"})
    assert policy_rule() == OPTIN  # a fresh object each time
    with_policy = {"policy": [{"uri": "https://ehc.example.cn/consent-policy"}]}
    assert add_policy_rule(dict(with_policy)) == with_policy  # a policy is enough
    other = {"policyRule": {"text": "own rule"}}
    assert add_policy_rule(dict(other)) == other  # another rule is kept
    assert add_policy_rule({"status": "inactive"}) == {"status": "inactive", "policyRule": OPTIN}


def test_a_consent_without_policy_or_policy_rule_is_refused_and_nothing_stored(web, svc):
    pid = create(svc, {"resourceType": "Patient", "name": [{"family": "策", "given": ["一"]}]})
    token = stored_token(svc, "system/Consent.cruds")
    headers = bearer(token, **{"Content-Type": FJ})
    bad = consent_without_policy(pid)
    ppc_1(web.post("/fhir/Consent", data=json.dumps(bad), headers=headers), "Consent")
    assert stored_consents(svc, pid) == 0
    # $validate says the same; in a transaction the path names the entry, and nothing of it is stored
    r = web.post("/fhir/Consent/$validate", data=json.dumps(bad), headers=headers)
    assert any("(ppc-1)" in i["diagnostics"] for i in r.get_json()["issue"]), r.get_json()
    tx = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:00000000-0000-4000-8000-000000000001", "resource": bad,
         "request": {"method": "POST", "url": "Consent"}}]}
    ppc_1(web.post("/fhir", data=json.dumps(tx), headers=headers), "Bundle.entry[0].resource")
    assert stored_consents(svc, pid) == 0
    # the valid counterparts: the server's policyRule, or a policy
    for good in ({**bad, "policyRule": policy_rule()},
                 {**bad, "policy": [{"uri": "https://ehc.example.cn/consent-policy"}]}):
        r = web.post("/fhir/Consent", data=json.dumps(good), headers=headers)
        assert r.status_code == 201, r.get_data(as_text=True)[:400]
    assert stored_consents(svc, pid) == 2


def test_an_old_consent_without_policy_rule_still_counts_and_its_update_must_add_one(web, svc):
    """Stored before ppc-1 was checked (written here straight to the store): another province's read under it
    is allowed as before; writing it back unchanged but for its status is refused, with the policyRule it is
    stored."""
    pid = create(svc, {"resourceType": "Patient", "name": [{"family": "旧", "given": ["授"]}]})
    obs = observation(svc, pid)
    cid = create(svc, consent_without_policy(pid))
    p31 = stored_token(svc, "system/Observation.rs", province="31")
    assert web.get(f"/fhir/Observation/{obs}", headers=bearer(p31)).status_code == 200
    home = stored_token(svc, "system/Consent.cruds")
    headers = bearer(home, **{"Content-Type": FJ})
    old = web.get(f"/fhir/Consent/{cid}", headers=bearer(home)).get_json()
    assert "policyRule" not in old and "policy" not in old
    revoked = {**copy.deepcopy(old), "status": "inactive"}
    ppc_1(web.put(f"/fhir/Consent/{cid}", data=json.dumps(revoked), headers=headers), "Consent")
    assert web.get(f"/fhir/Observation/{obs}", headers=bearer(p31)).status_code == 200  # still granted
    r = web.put(f"/fhir/Consent/{cid}", data=json.dumps(add_policy_rule(revoked)), headers=headers)
    assert r.status_code == 200, r.get_data(as_text=True)[:400]
    assert r.get_json()["policyRule"] == OPTIN and r.get_json()["meta"]["versionId"] == "2"
    assert web.get(f"/fhir/Observation/{obs}", headers=bearer(p31)).status_code == 403


def test_the_portal_grants_with_the_policy_rule_and_revokes_an_old_consent(live, svc):
    me, _ = resident(svc, "策", "民", "1971-02-03", "611")
    account(svc, "13811116161", PASSWORD, me)
    old = create(svc, consent_without_policy(me))
    s, _ = portal_login(live, "13811116161", PASSWORD)
    grant_province_44(s, live)
    token = stored_token(svc, "system/Consent.rs")
    bundle = requests.get(f"{live}/fhir/Consent", params={"patient": me}, headers=bearer(token), timeout=10).json()
    granted = [e["resource"] for e in bundle["entry"] if e["resource"]["id"] != old]
    assert len(granted) == 1 and granted[0]["policyRule"] == OPTIN
    # the old one (no policyRule) is listed and revoked from the page: version 2 carries the policyRule
    page = s.get(f"{live}/portal/consents", timeout=10)
    item = re.search(r'<li class="consent" data-id="' + old + r'".*?</li>', page.text, re.S)
    assert item, page.text[-3000:]
    version = re.search(r'name="version" value="([^"]+)"', item.group(0))
    assert version is not None
    r = s.post(f"{live}/portal/consents/{old}/revoke", data={"csrf": csrf_of(page.text), "version": version.group(1)},
               timeout=10)
    assert "已撤销授权" in r.text, r.text[-1500:]
    again = requests.get(f"{live}/fhir/Consent/{old}", headers=bearer(token), timeout=10).json()
    assert again["status"] == "inactive" and again["meta"]["versionId"] == "2" and again["policyRule"] == OPTIN


def test_a_relative_binding_records_the_policy_rule_and_unbinding_an_old_one_works(svc):
    st = auth_state(svc)
    me, _ = resident(svc, "策", "父", "1970-03-04", "621")
    mother, _ = resident(svc, "策", "母", "1945-05-06", "622")
    father, _ = resident(svc, "策", "祖", "1944-07-08", "623")
    acct = account(svc, "13811116262", PASSWORD, me)
    new = bind(svc, st.store, acct, mother, "CHILD")
    assert svc.repo.read("Consent", new.consent).resource["policyRule"] == OPTIN
    # a binding recorded before ppc-1 was checked: its Consent has no policyRule
    old = bind(svc, st.store, acct, father, "CHILD")
    stored = svc.repo.read("Consent", old.consent)
    without = {k: v for k, v in stored.resource.items() if k != "policyRule"}
    svc.repo.update("Consent", old.consent, without, if_match=stored.vid)
    assert "policyRule" not in svc.repo.read("Consent", old.consent).resource
    unbind(svc, st.store, acct, father)
    ended = svc.repo.read("Consent", old.consent).resource
    assert ended["status"] == "inactive" and ended["policyRule"] == OPTIN
    assert father not in st.store.get(type(acct), acct.phone_key).patients
    assert mother in st.store.get(type(acct), acct.phone_key).patients
