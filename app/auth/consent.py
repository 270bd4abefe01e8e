"""Finding the Consent that lets a client of another province see a patient's records.

A Consent counts when: status = active; provision.type = permit; provision.action has code `access`;
provision.actor has a reference to the client's Organization, or a reference carrying the client's province
as identifier (system PROVINCE_SYSTEM, value the GB/T 2260 code); now is inside provision.period if given; the
resource type is among provision.class codes if any are given. A nested provision of type deny for the same actor
and type wins. Consents are found through the posting lists (Consent → Patient/<id>), an _id lookup, and cached
for the duration of one request by the caller.

Grantees are frozen at grant time (`freeze_grantees`, a pre-write storage hook): an actor naming an Organization
that represents a province gets that province written into the actor's identifier when the Consent is stored. The
decision reads only the Consent itself, never the Organization, so editing a directory resource later cannot
widen what a resident granted.

Every Consent names a policy or a policyRule (core invariant ppc-1, checked on every write). The ones this server
writes (the portal's grants, relative bindings) carry `policy_rule()`: the resident opts in (v3 ActCode OPTIN) to
the access its provision permits. Consents stored before ppc-1 was checked may lack both: the decision never reads
policy or policyRule, so they count as before; whatever here updates one adds the rule (`add_policy_rule`) so the
update validates.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from app.core.access import PROVINCE_SYSTEM
from app.core.timeutil import naive_utc
from app.search.values import date_range
from app.store.keys import reference_key

ConsentDoc = dict[str, Any]
OrgLoader = Callable[[str], dict[str, Any] | None]

POLICY_RULE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
POLICY_RULE_CODE = "OPTIN"  # the resident opts in to sharing: a permit, as every Consent this server writes is


def policy_rule() -> dict[str, Any]:
    """Consent.policyRule of the Consents this server writes (a new object each time: callers may change it)."""
    return {"coding": [{"system": POLICY_RULE_SYSTEM, "code": POLICY_RULE_CODE}]}


def add_policy_rule(consent: dict[str, Any]) -> dict[str, Any]:
    """`consent`, given `policy_rule()` when it names neither a policy nor a policyRule (one stored before ppc-1
    was checked), so that writing it back validates; one that names either is left as it is."""
    if not consent.get("policy") and not consent.get("policyRule"):
        consent["policyRule"] = policy_rule()
    return consent


def freeze_grantees(consent: dict[str, Any], load_org: OrgLoader) -> None:
    """Write, into each actor that references an Organization representing a province, that province."""
    provisions = [consent.get("provision") or {}]
    while provisions:
        prov = provisions.pop()
        if not isinstance(prov, dict):
            continue
        provisions.extend(prov.get("provision") or [])
        for actor in prov.get("actor") or []:
            ref = actor.get("reference") if isinstance(actor, dict) else None
            if not isinstance(ref, dict) or ref.get("identifier"):
                continue
            target = ref.get("reference") or ""
            if not isinstance(target, str) or not target.startswith("Organization/"):
                continue
            org = load_org(target.split("/", 1)[1]) or {}
            for ident in org.get("identifier") or []:
                if isinstance(ident, dict) and ident.get("system") == PROVINCE_SYSTEM and ident.get("value"):
                    ref["identifier"] = {"system": PROVINCE_SYSTEM, "value": ident["value"]}
                    break


def find_consents(repo: Any, patient_id: str) -> list[dict[str, Any]]:
    """Live Consent resources whose patient is Patient/<patient_id>."""
    out = []
    for cid in repo.keys.lookup(reference_key("Consent", f"Patient/{patient_id}")):
        doc = repo.get_doc("Consent", cid)
        if doc and not doc.get("del") and f"Patient/{patient_id}" in (doc.get("ix") or {}).get("patient", ()):
            out.append(doc)
    return out


def _codes(items: list[dict[str, Any]] | None) -> set[str]:
    out = set()
    for item in items or []:
        if "code" in item:  # a Coding (provision.class)
            out.add(item["code"])
        for coding in item.get("coding", []):  # a CodeableConcept (provision.action)
            out.add(coding.get("code"))
    return out


def _actor_matches(actor: dict[str, Any], organization: str | None, province: str | None) -> bool:
    ref = actor.get("reference") or {}
    target = ref.get("reference") or ""
    ident = ref.get("identifier") or {}
    if ident.get("system") == PROVINCE_SYSTEM:
        # A province, or an Organization that represented one when the Consent was written: organization ids are
        # each node's own, so a client of another province whose organization id is the same is not the grantee.
        return bool(province) and ident.get("value") == province
    return bool(organization) and target == f"Organization/{organization}"


def _provision_covers(prov: dict[str, Any], resource_type: str, organization: str | None,
                      province: str | None, at: datetime) -> bool:
    """Whether the provision applies to this access. A period bound that cannot be read is never taken as no
    bound: it fails closed, so a permit then covers nothing and a deny covers everything it names."""
    period = prov.get("period") or {}
    try:
        start = date_range(period["start"])[0] if period.get("start") else None
        stop = date_range(period["end"])[1] if period.get("end") else None
    except (ValueError, TypeError):
        if prov.get("type") != "deny":
            return False
        start = stop = None
    now = naive_utc(at)
    if (start and now < start) or (stop and now >= stop):
        return False
    if prov.get("action") and "access" not in _codes(prov.get("action")):
        return False
    classes = _codes(prov.get("class"))
    if classes and resource_type not in classes:
        return False
    actors = prov.get("actor") or []
    if actors and not any(_actor_matches(a, organization, province) for a in actors):
        return False
    return True


def consent_permits(consent: dict[str, Any], resource_type: str, organization: str | None,
                    province: str | None, at: datetime | None = None) -> bool:
    """Whether one Consent resource lets (organization, province) access a record of resource_type."""
    at = at or datetime.now(UTC)
    if consent.get("status") != "active":
        return False
    prov = consent.get("provision") or {}
    if prov.get("type") != "permit" or not prov.get("actor") or "access" not in _codes(prov.get("action")):
        return False
    if not _provision_covers(prov, resource_type, organization, province, at):
        return False
    for sub in prov.get("provision") or []:
        if sub.get("type") == "deny" and _provision_covers(sub, resource_type, organization, province, at):
            return False
    return True


def covering_consent(consents: list[dict[str, Any]], resource_type: str, organization: str | None,
                     province: str | None) -> str | None:
    """`Consent/<id>` of the first stored Consent document that permits the access, else None."""
    at = datetime.now(UTC)
    for doc in consents:
        if consent_permits(doc.get("res") or {}, resource_type, organization, province, at):
            return f"Consent/{doc['_id']}"
    return None
